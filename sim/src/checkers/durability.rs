//! Invariant 3: every acknowledged append is in the final valid chain (at the acknowledged
//! sequence), and a definitely failed append left no trace. (What reads see is `reads`.)

use std::collections::BTreeSet;

use super::{CheckInput, Violation};
use crate::history::{OpKind, Outcome};

const INVARIANT: &str = "3 nothing acknowledged is lost";
const FAILED: &str = "3 a definite failure stores nothing";

/// Checks acks against the final streams and the reads.
pub fn check(input: &CheckInput<'_>) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut stored_ids = BTreeSet::new();
    for actor in input.streams.keys() {
        for (_, commit) in input.chain(actor) {
            stored_ids.extend(commit.events.iter().map(|e| e.id.as_str()));
        }
    }
    for op in input.ops {
        match (&op.kind, &op.outcome) {
            (
                OpKind::Append { actor, .. },
                Outcome::Appended {
                    commit_id,
                    sequence,
                    ..
                },
            ) => {
                let found = input
                    .chain(actor)
                    .any(|(seq, c)| seq == *sequence && c.commit_id == *commit_id);
                let last = match &op.outcome {
                    Outcome::Appended { events, .. } => events.last().map_or(0, |e| e.version),
                    _ => 0,
                };
                if !found && !input.expired(actor, last) {
                    out.push(Violation {
                        invariant: INVARIANT,
                        detail: format!(
                            "{actor}: op #{} on {} was acked as commit {commit_id} at seq {sequence}, which is not in the final valid history",
                            op.id, op.node
                        ),
                    });
                }
            }
            (
                OpKind::Append {
                    actor, event_ids, ..
                },
                Outcome::Failed(why),
            ) => {
                if let Some(id) = event_ids.iter().find(|id| stored_ids.contains(id.as_str())) {
                    out.push(Violation {
                        invariant: FAILED,
                        detail: format!(
                            "{actor}: op #{} on {} failed definitely ({why}) but its event {id} is stored",
                            op.id, op.node
                        ),
                    });
                }
            }
            _ => {}
        }
    }
    out
}
