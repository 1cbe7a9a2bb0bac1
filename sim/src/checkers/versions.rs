//! Invariant 1: an actor's versions are contiguous from 1 and increase in stream order.
//!
//! Replay keeps the records that continue the versions before them (the valid chain) and
//! reports the rest as damage. So on an actor nobody damaged, every record must be in the
//! chain; on a damaged one, every record outside it must be one the vandal planted (its
//! acknowledged sequences, plus at most one unknown record per planting whose outcome stayed
//! unknown). The store itself never writes a record replay refuses.

use std::collections::{BTreeMap, BTreeSet};

use super::{CheckInput, Violation};
use crate::history::{OpKind, Outcome};

const INVARIANT: &str = "1 versions contiguous from 1";

/// Checks every final stream.
pub fn check(input: &CheckInput<'_>) -> Vec<Violation> {
    let mut out = Vec::new();
    // What the vandal planted: acknowledged sequences, and how many plantings are unknown.
    let mut planted: BTreeMap<&str, (BTreeSet<u64>, usize)> = BTreeMap::new();
    for op in input.ops {
        if let OpKind::Damage { actor } = &op.kind {
            let entry = planted.entry(actor.as_str()).or_default();
            match &op.outcome {
                Outcome::Damaged { sequence } => {
                    entry.0.insert(*sequence);
                }
                Outcome::Ambiguous(_) | Outcome::Pending => entry.1 += 1,
                _ => {}
            }
        }
    }
    for (actor, records) in &input.streams {
        let damaged = input.damaged_actors.contains(actor);
        let (known, mut unknown) = planted.get(actor.as_str()).cloned().unwrap_or_default();
        for record in records.iter().filter(|r| !r.in_chain) {
            if damaged && known.contains(&record.sequence) {
                continue;
            }
            if damaged && unknown > 0 {
                unknown -= 1;
                continue;
            }
            let why = match &record.commit {
                Err(e) => e.clone(),
                Ok(c) => format!(
                    "commit {} (versions {}..={}) does not continue the chain",
                    c.commit_id,
                    c.first_version(),
                    c.last_version()
                ),
            };
            out.push(Violation {
                invariant: INVARIANT,
                detail: format!(
                    "{actor}: record seq {} is outside the valid history and nobody planted it: {why}",
                    record.sequence
                ),
            });
        }
    }
    out
}
