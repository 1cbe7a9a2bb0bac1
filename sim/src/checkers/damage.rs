//! Replay never hides damage: once a damaged record is stored on an actor's subject, every later
//! read of that actor reports it — a plain read fails with it, a read around damage lists its
//! sequence. And the store never damages anything itself: on an actor nobody vandalised, no
//! read reports damage and every final record passes the checks replay applies.
//!
//! On the replicated model a read may be answered by a replica that has not stored the damage
//! yet; it must still report every damaged record below the sequence of its handle's own
//! acknowledged appends (the handle's floor).
//!
//! What counts as damage is replay's own definition, taken from the final stream: a record
//! outside the valid chain. A plausible commit the vandal forged can land exactly where the
//! chain continues (writers caught up with the version it forged); it is then a valid commit,
//! not damage, and no read has to report it.

use std::collections::BTreeMap;

use super::{CheckInput, Violation};
use crate::history::{OpKind, Outcome};

const INVARIANT: &str = "replay never hides damage";

/// A store handle's view of one actor: (node, incarnation, actor).
type Session<'a> = (&'a str, u64, &'a str);
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
    // Per session and actor: (completed at, stream sequence) of its acknowledged appends.
    let mut appended: BTreeMap<Session<'_>, Vec<(std::time::Duration, u64)>> = BTreeMap::new();
    for op in input.ops {
        if let (OpKind::Append { actor, .. }, Outcome::Appended { sequence, .. }, Some(done)) =
            (&op.kind, &op.outcome, op.completed)
        {
            appended
                .entry((op.node.as_str(), op.incarnation, actor.as_str()))
                .or_default()
                .push((done, *sequence));
        }
    }
    for read in input.ops {
        let OpKind::Read { actor, from } = &read.kind else {
            continue;
        };
        // On one server a read sees every record stored before it began. On replicas it is
        // sure to see those below the handle's own acknowledged appends (its floor).
        let floor = appended
            .get(&(read.node.as_str(), read.incarnation, actor.as_str()))
            .into_iter()
            .flatten()
            .filter(|(done, _)| *done < read.invoked)
            .map(|(_, sequence)| *sequence)
            .max()
            .unwrap_or(0);
        let before: Vec<u64> = planted
            .get(actor.as_str())
            .into_iter()
            .flatten()
            .filter(|(done, sequence)| {
                *done < read.invoked && (!input.replicated || *sequence < floor)
            })
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
