//! Invariant 2: an acknowledged event never changes — the same id and data at the same version
//! in every later read and in the final stream. Also applied to every event a read observed.

use super::{CheckInput, Violation};
use crate::history::{OpKind, Outcome};

const INVARIANT: &str = "2 acknowledged events never change";

/// Compares acks and reads with the final streams.
pub fn check(input: &CheckInput<'_>) -> Vec<Violation> {
    let finals = input.final_events();
    let mut out = Vec::new();
    for op in input.ops {
        let (actor, events, what) = match (&op.kind, &op.outcome) {
            (OpKind::Append { actor, .. }, Outcome::Appended { events, .. }) => {
                (actor, events, "acked")
            }
            (OpKind::Read { actor, .. }, Outcome::Read { events })
            | (OpKind::Read { actor, .. }, Outcome::ReadAround { events, .. }) => {
                (actor, events, "read")
            }
            _ => continue,
        };
        let stream = finals.get(actor.as_str());
        for event in events {
            match stream.and_then(|s| s.get(&event.version)) {
                Some(stored) if stored == event => {}
                Some(stored) => out.push(Violation {
                    invariant: INVARIANT,
                    detail: format!(
                        "{actor} v{}: op #{} on {} {what} event {} (data hash {:016x}), the stream now holds {} (data hash {:016x})",
                        event.version, op.id, op.node, event.id, event.data, stored.id, stored.data
                    ),
                }),
                None if input.expired(actor, event.version) => {}
                None => out.push(Violation {
                    invariant: INVARIANT,
                    detail: format!(
                        "{actor} v{}: op #{} on {} {what} event {}, the stream no longer has that version",
                        event.version, op.id, op.node, event.id
                    ),
                }),
            }
        }
    }
    out
}
