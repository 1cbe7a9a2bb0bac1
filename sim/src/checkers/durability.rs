//! Invariant 3: every acknowledged append is in the final stream (at the acknowledged sequence),
//! every read sees every append acknowledged before the read began (the broker is one
//! linearizable server), and a definitely failed append left no trace.

use std::collections::BTreeSet;

use super::{CheckInput, Violation};
use crate::history::{OpKind, Outcome};

const INVARIANT: &str = "3 nothing acknowledged is lost";
const FAILED: &str = "3 a definite failure stores nothing";

/// Checks acks against the final streams and the reads.
pub fn check(input: &CheckInput<'_>) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut stored_ids = BTreeSet::new();
    for records in input.streams.values() {
        for record in records {
            if let Ok(commit) = &record.commit {
                stored_ids.extend(commit.events.iter().map(|e| e.id.as_str()));
            }
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
                let found = input.streams.get(actor).is_some_and(|records| {
                    records.iter().any(|r| {
                        r.sequence == *sequence
                            && r.commit.as_ref().is_ok_and(|c| c.commit_id == *commit_id)
                    })
                });
                if !found {
                    out.push(Violation {
                        invariant: INVARIANT,
                        detail: format!(
                            "{actor}: op #{} on {} was acked as commit {commit_id} at seq {sequence}, which is not in the final stream",
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
    // Reads see every earlier ack.
    for read in input.ops {
        let (OpKind::Read { actor }, Outcome::Read { events }) = (&read.kind, &read.outcome) else {
            continue;
        };
        let seen = events.last().map_or(0, |e| e.version);
        for ack in input.ops {
            let (OpKind::Append { actor: a, .. }, Outcome::Appended { events: acked, .. }) =
                (&ack.kind, &ack.outcome)
            else {
                continue;
            };
            let last = acked.last().map_or(0, |e| e.version);
            if a == actor && ack.completed.is_some_and(|c| c < read.invoked) && last > seen {
                out.push(Violation {
                    invariant: INVARIANT,
                    detail: format!(
                        "{actor}: read #{} on {} (invoked {:?}) saw up to v{seen}, but op #{} acked v{last} at {:?}",
                        read.id, read.node, read.invoked, ack.id, ack.completed.unwrap_or_default()
                    ),
                });
                break;
            }
        }
    }
    out
}
