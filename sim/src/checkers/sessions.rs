//! Session guarantees (invariant 9) of one store handle — one node incarnation, whose writers
//! and readers share its `EventStore`:
//!
//! - **read your writes**: a read (`events`, `events_with_errors`) or `latest_version` that
//!   began after the handle's append of version `v` was acknowledged reaches at least `v`;
//! - **monotonic reads**: it also reaches at least every version the handle read (or was told
//!   by `latest_version`) before it began;
//! - **damage stays reported**: once a read of the handle reported a damaged record, its later
//!   reads of that actor report it too.
//!
//! A read from version `from` that returns nothing says the tip is below `from`: it then
//! breaks the floor only if the floor is at or above `from`. These hold on replicas too; what
//! other handles acknowledged is not promised there (`reads` checks that on one server).

use std::collections::BTreeMap;
use std::time::Duration;

use super::{CheckInput, Violation};
use crate::history::{Op, OpKind, Outcome};

const INVARIANT: &str = "9 a store handle reads its own writes and never goes back";

/// What a finished op of a session teaches about an actor: (completed at, version floor,
/// damaged sequences reported).
struct Lesson {
    at: Duration,
    version: u64,
    damaged: Vec<u64>,
}

fn lesson(op: &Op) -> Option<(&str, Lesson)> {
    let at = op.completed?;
    let (actor, version, damaged) = match (&op.kind, &op.outcome) {
        (OpKind::Append { actor, .. }, Outcome::Appended { events, .. }) => {
            (actor, events.last()?.version, Vec::new())
        }
        (OpKind::Read { actor, .. }, Outcome::Read { events }) => {
            (actor, events.last().map_or(0, |e| e.version), Vec::new())
        }
        (OpKind::Read { actor, .. }, Outcome::ReadAround { events, damaged }) => (
            actor,
            events.last().map_or(0, |e| e.version),
            damaged.clone(),
        ),
        (OpKind::Read { actor, .. }, Outcome::Damaged { sequence }) => (actor, 0, vec![*sequence]),
        (OpKind::LatestVersion { actor }, Outcome::Version(v)) => (actor, *v, Vec::new()),
        (OpKind::Load { actor }, Outcome::Loaded { snapshot, events }) => (
            actor,
            events
                .last()
                .map(|e| e.version)
                .or(snapshot.map(|(v, _)| v))
                .unwrap_or(0),
            Vec::new(),
        ),
        _ => return None,
    };
    Some((
        actor.as_str(),
        Lesson {
            at,
            version,
            damaged,
        },
    ))
}

/// Checks every read of every session against what the session knew when it began.
pub fn check(input: &CheckInput<'_>) -> Vec<Violation> {
    let mut out = Vec::new();
    // (node, incarnation, actor) → lessons in completion order
    let mut lessons: BTreeMap<(&str, u64, &str), Vec<Lesson>> = BTreeMap::new();
    for op in input.ops.iter().filter(|op| op.incarnation > 0) {
        if let Some((actor, l)) = lesson(op) {
            lessons
                .entry((op.node.as_str(), op.incarnation, actor))
                .or_default()
                .push(l);
        }
    }
    for lessons in lessons.values_mut() {
        lessons.sort_by_key(|l| l.at);
    }
    for op in input.ops.iter().filter(|op| op.incarnation > 0) {
        let (actor, from) = match &op.kind {
            OpKind::Read { actor, from } => (actor, *from),
            OpKind::LatestVersion { actor } | OpKind::Load { actor } => (actor, 0),
            _ => continue,
        };
        let known: Vec<&Lesson> = lessons
            .get(&(op.node.as_str(), op.incarnation, actor.as_str()))
            .into_iter()
            .flatten()
            .take_while(|l| l.at < op.invoked)
            .collect();
        let floor = known.iter().map(|l| l.version).max().unwrap_or(0);
        let problem = match &op.outcome {
            Outcome::Version(v) if *v < floor => Some(format!(
                "latest_version answered v{v} after the handle knew v{floor}"
            )),
            Outcome::Read { events } | Outcome::ReadAround { events, .. } => {
                let tip = events.last().map(|e| e.version);
                match tip {
                    Some(tip) if tip < floor => {
                        Some(format!("read up to v{tip} after the handle knew v{floor}"))
                    }
                    None if from <= floor => Some(format!(
                        "read nothing from v{from} after the handle knew v{floor}"
                    )),
                    _ => None,
                }
            }
            _ => None,
        };
        // Damage the handle saw before must be reported again.
        let seen: Vec<u64> = known
            .iter()
            .flat_map(|l| l.damaged.iter().copied())
            .collect();
        let reported: Vec<u64> = match &op.outcome {
            Outcome::ReadAround { damaged, .. } => damaged.clone(),
            Outcome::Damaged { .. } => seen.clone(), // a plain read stops at the first one
            Outcome::Read { .. } => Vec::new(),
            _ => seen.clone(),
        };
        let forgotten = seen
            .iter()
            .find(|s| !reported.contains(s))
            .map(|s| format!("did not report the damaged record at seq {s} the handle had seen"));
        for problem in problem.into_iter().chain(forgotten) {
            out.push(Violation {
                invariant: INVARIANT,
                detail: format!(
                    "{actor}: op #{} on {} (incarnation {}, invoked {:?}): {problem}",
                    op.id, op.node, op.incarnation, op.invoked
                ),
            });
        }
    }
    out
}
