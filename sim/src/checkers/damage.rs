//! Replay never hides damage: once a damaged record is stored on an actor's subject, every later
//! read of that actor reports it — a plain read fails with it, a read around damage lists its
//! sequence. And the store never damages anything itself: on an actor nobody vandalised, no
//! read reports damage and every final record passes the checks replay applies.
//!
//! What counts as damage is replay's own definition, taken from the final stream: a record
//! outside the valid chain. A plausible commit the vandal forged can land exactly where the
//! chain continues (writers caught up with the version it forged); it is then a valid commit,
//! not damage, and no read has to report it.

use std::collections::BTreeMap;

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
        let OpKind::Read { actor, .. } = &read.kind else {
            continue;
        };
        let reported = match &read.outcome {
            Outcome::Damaged { sequence } => vec![*sequence],
            Outcome::ReadAround { damaged, .. } => damaged.clone(),
            _ => continue,
        };
        if input.damaged_actors.contains(actor) {
            // Only records outside the valid history may be reported.
            let records = input.streams.get(actor);
            if let Some(valid) = reported.iter().find(|s| {
                records
                    .and_then(|r| r.iter().find(|r| r.sequence == **s))
                    .is_none_or(|r| r.in_chain)
            }) {
                out.push(Violation {
                    invariant: SELF_INFLICTED,
                    detail: format!(
                        "{actor}: read #{} on {} reported seq {valid} as damaged, but it is a valid commit of the history (or not stored at all)",
                        read.id, read.node
                    ),
                });
            }
            continue;
        }
        if !reported.is_empty() {
            out.push(Violation {
                invariant: SELF_INFLICTED,
                detail: format!(
                    "{actor}: read #{} on {} reported damage at seq {reported:?}, but nobody damaged it",
                    read.id, read.node
                ),
            });
        }
    }
    // Per actor: (acknowledged at, stream sequence) of every planted record that is damage.
    let mut planted: BTreeMap<&str, Vec<(std::time::Duration, u64)>> = BTreeMap::new();
    for damage in input.ops {
        let (OpKind::Damage { actor }, Outcome::Damaged { sequence }, Some(done)) =
            (&damage.kind, &damage.outcome, damage.completed)
        else {
            continue;
        };
        let is_damage = input
            .streams
            .get(actor)
            .and_then(|records| records.iter().find(|r| r.sequence == *sequence))
            .is_some_and(|r| !r.in_chain);
        if is_damage {
            planted.entry(actor).or_default().push((done, *sequence));
        }
    }
    for read in input.ops {
        let OpKind::Read { actor, from } = &read.kind else {
            continue;
        };
        let before: Vec<u64> = planted
            .get(actor.as_str())
            .into_iter()
            .flatten()
            .filter(|(done, _)| *done < read.invoked)
            .map(|(_, sequence)| *sequence)
            .collect();
        let hidden = match &read.outcome {
            Outcome::Read { events } => before.first().map(|s| (*s, events.len())),
            Outcome::ReadAround { events, damaged } => before
                .iter()
                .find(|s| !damaged.contains(s))
                .map(|s| (*s, events.len())),
            _ => None,
        };
        if let Some((sequence, returned)) = hidden {
            out.push(Violation {
                invariant: INVARIANT,
                detail: format!(
                    "{actor}: read #{} on {} from v{from} returned {returned} events without reporting the damaged record at seq {sequence}, planted before the read began",
                    read.id, read.node
                ),
            });
        }
    }
    out
}
