//! Replay never hides damage: once a damaged record is stored on an actor's subject, every later
//! plain read of that actor reports it instead of returning events. And the store never
//! damages anything itself: on an actor nobody vandalised, no read reports damage and every
//! final record passes the checks replay applies.

use super::{CheckInput, Violation};
use crate::history::{OpKind, Outcome};

const INVARIANT: &str = "replay never hides damage";
const SELF_INFLICTED: &str = "the store never damages a record";

/// Reads that began after a damage was acknowledged must report it.
pub fn check(input: &CheckInput<'_>) -> Vec<Violation> {
    let mut out = Vec::new();
    for (actor, records) in &input.streams {
        if input.damaged_actors.contains(actor) {
            continue;
        }
        for record in records {
            if let Err(e) = &record.commit {
                out.push(Violation {
                    invariant: SELF_INFLICTED,
                    detail: format!(
                        "{actor}: record seq {} would be refused by replay: {e}",
                        record.sequence
                    ),
                });
            }
        }
    }
    for read in input.ops {
        if let (OpKind::Read { actor }, Outcome::Damaged { sequence }) = (&read.kind, &read.outcome)
            && !input.damaged_actors.contains(actor)
        {
            out.push(Violation {
                invariant: SELF_INFLICTED,
                detail: format!(
                    "{actor}: read #{} on {} reported damage at seq {sequence}, but nobody damaged it",
                    read.id, read.node
                ),
            });
        }
    }
    for damage in input.ops {
        let (OpKind::Damage { actor }, Outcome::Damaged { sequence }) =
            (&damage.kind, &damage.outcome)
        else {
            continue;
        };
        let Some(done) = damage.completed else {
            continue;
        };
        for read in input.ops {
            let OpKind::Read { actor: a } = &read.kind else {
                continue;
            };
            if a != actor || read.invoked <= done {
                continue;
            }
            if let Outcome::Read { events } = &read.outcome {
                out.push(Violation {
                    invariant: INVARIANT,
                    detail: format!(
                        "{actor}: read #{} on {} returned {} events without reporting the damaged record at seq {sequence}",
                        read.id, read.node, events.len()
                    ),
                });
            }
        }
    }
    out
}
