//! Replay never hides damage (DESIGN §2): once a damaged record is stored on an actor's subject,
//! every later plain read of that actor reports it instead of returning events.

use super::{CheckInput, Violation};
use crate::sim::history::{OpKind, Outcome};

const INVARIANT: &str = "replay never hides damage";

/// Reads that began after a damage was acknowledged must report it.
pub fn check(input: &CheckInput<'_>) -> Vec<Violation> {
    let mut out = Vec::new();
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
