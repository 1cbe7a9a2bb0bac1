//! Projections (invariant 13): durable consumption through a shared checkpoint.
//!
//! - The checkpoint only moves forward: every write of it the broker applied names a larger
//!   position than the one before (an instance that lost the race must have been refused, not
//!   have moved it back or rewritten it).
//! - At least once: every commit below the final checkpoint was handled by some instance (a
//!   handler records the page only after its own work succeeded), and handlers only ever see
//!   real commits.
//! - Once faults stop, the projection catches up: the final checkpoint is past every commit.

use std::collections::{BTreeMap, BTreeSet};

use super::{CheckInput, Violation};
use crate::history::{OpKind, Outcome, format_time};

const INVARIANT: &str =
    "13 every commit below the checkpoint was handled; checkpoints only move forward";
const LIVENESS: &str = "13 once faults stop, projections catch up";

/// The bucket of the simulation namespace's checkpoints.
fn checkpoint_bucket() -> String {
    aether::names::NamespaceNames::new(crate::workload::NAMESPACE).projections_bucket()
}

/// Checks the projection's history.
pub fn check(input: &CheckInput<'_>) -> Vec<Violation> {
    let mut out = Vec::new();
    let bucket = checkpoint_bucket();
    // projection → positions its handlers recorded (only projections whose handler records)
    let mut handled: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
    let mut any = false;
    // projection → last checkpoint written
    let mut checkpoints: BTreeMap<&str, u64> = BTreeMap::new();
    for op in input.ops {
        match &op.kind {
            OpKind::Handled {
                projection,
                positions,
            } => {
                any = true;
                handled
                    .entry(projection)
                    .or_default()
                    .extend(positions.iter().copied());
            }
            OpKind::KvWrite {
                bucket: b,
                key,
                value,
                ..
            } if *b == bucket => {
                any = true;
                let Ok(position) = value.parse::<u64>() else {
                    out.push(Violation {
                        invariant: INVARIANT,
                        detail: format!("{} wrote checkpoint {key} = {value:?}", op.node),
                    });
                    continue;
                };
                if let Some(previous) = checkpoints.insert(key, position)
                    && position <= previous
                {
                    out.push(Violation {
                        invariant: INVARIANT,
                        detail: format!(
                            "{} moved checkpoint {key} from {previous} to {position} at {}",
                            op.node,
                            format_time(op.invoked)
                        ),
                    });
                }
            }
            _ => {}
        }
    }
    if !any {
        return out;
    }
    let commits: BTreeSet<u64> = input
        .streams
        .values()
        .flatten()
        .filter(|r| r.commit.is_ok())
        .map(|r| r.sequence)
        .collect();
    if let Some(phantom) = handled.values().flatten().find(|p| !commits.contains(p)) {
        out.push(Violation {
            invariant: INVARIANT,
            detail: format!("a handler was given position {phantom}, which holds no commit"),
        });
    }
    for (key, checkpoint) in &checkpoints {
        // A policy's handler records nothing (the policy scenario checks its effects): its
        // checkpoint is checked for its moves only.
        if crate::scenarios::policy::POLICIES.contains(key) {
            continue;
        }
        let handled = handled.get(key).cloned().unwrap_or_default();
        let missing: Vec<u64> = commits
            .range(..*checkpoint)
            .filter(|p| !handled.contains(p))
            .copied()
            .collect();
        if !missing.is_empty() {
            out.push(Violation {
                invariant: INVARIANT,
                detail: format!(
                    "{key}: {} commits below the final checkpoint {checkpoint} were never handled (first at position {})",
                    missing.len(),
                    missing[0]
                ),
            });
        }
        // Everything acknowledged two seconds before the end has been handled.
        let due_by = input.end.saturating_sub(std::time::Duration::from_secs(2));
        let last_due = input
            .ops
            .iter()
            .filter_map(|op| match (&op.kind, &op.outcome, op.completed) {
                (OpKind::Append { .. }, Outcome::Appended { sequence, .. }, Some(done))
                    if done <= due_by =>
                {
                    Some(*sequence)
                }
                _ => None,
            })
            .max();
        if let Some(last) = last_due
            && *checkpoint <= last
        {
            out.push(Violation {
                invariant: LIVENESS,
                detail: format!(
                    "{key}: the final checkpoint {checkpoint} is not past position {last}, acknowledged before {}",
                    format_time(due_by)
                ),
            });
        }
    }
    out
}
