//! Retention (invariant 14): with a store that keeps events only for a while, an actor stays
//! loadable from its snapshot and the events after it.
//!
//! - No load fails because versions expired: snapshots cover what expires.
//! - A load reaches at least every version acknowledged before it began (on one linearizable
//!   server; on replicas that is the session checker's, per handle).
//! - A load returns exactly the versions after its snapshot, contiguous, as the final history
//!   holds them (or as an append wrote them, when they have expired since), and its snapshot's state
//!   matches the snapshot's version.
//!
//! (That every acknowledged event is in the final stream or covered by the actor's final
//! snapshot is `durability`'s, with the expired prefix allowed.)

use super::{CheckInput, Violation};
use aether::event::ExpectedVersion;

use crate::history::{OpKind, Outcome};

const INVARIANT: &str = "14 under retention every actor stays loadable from its snapshot";

/// Checks every load.
pub fn check(input: &CheckInput<'_>) -> Vec<Violation> {
    let mut out = Vec::new();
    if input.retention.is_none() {
        return out;
    }
    let finals = input.final_events();
    // Acknowledged versions per actor, by acknowledgement time.
    let mut acked: Vec<(std::time::Duration, &str, u64)> = Vec::new();
    // Events appends may have written (acknowledged or ambiguous): (actor, version, id).
    let mut written: std::collections::BTreeSet<(&str, u64, &str)> = Default::default();
    for op in input.ops {
        if let OpKind::Append {
            actor,
            expected: ExpectedVersion::Exact(expected),
            event_ids,
        } = &op.kind
            && matches!(op.outcome, Outcome::Appended { .. } | Outcome::Ambiguous(_))
        {
            for (i, id) in event_ids.iter().enumerate() {
                written.insert((actor.as_str(), expected + 1 + i as u64, id.as_str()));
            }
        }
        if let (OpKind::Append { actor, .. }, Outcome::Appended { events, .. }, Some(done)) =
            (&op.kind, &op.outcome, op.completed)
            && let Some(last) = events.last()
        {
            acked.push((done, actor.as_str(), last.version));
        }
    }
    for op in input.ops {
        let OpKind::Load { actor } = &op.kind else {
            continue;
        };
        let problem = match &op.outcome {
            Outcome::Failed(why) if why.contains("expired") => {
                Some(format!("the load failed: {why}"))
            }
            Outcome::Loaded { snapshot, events } => {
                let base = snapshot.map_or(0, |(version, _)| version);
                let mut problem =
                    snapshot
                        .filter(|(version, count)| version != count)
                        .map(|(version, count)| {
                            format!("its snapshot at v{version} holds the state of v{count}")
                        });
                for (i, event) in events.iter().enumerate() {
                    let due = base + 1 + i as u64;
                    let stored = finals.get(actor.as_str()).and_then(|f| f.get(&due));
                    if event.version != due {
                        problem = Some(format!("returned v{} where v{due} was due", event.version));
                        break;
                    }
                    if stored.is_some_and(|s| s != event) {
                        problem = Some(format!("returned a v{due} the history does not hold"));
                        break;
                    }
                    if stored.is_none()
                        && !input.expired(actor, due)
                        && !written.contains(&(actor.as_str(), due, event.id.as_str()))
                    {
                        problem = Some(format!("returned v{due}, which was never stored"));
                        break;
                    }
                }
                // On one linearizable server, a load sees every version acknowledged before it
                // began: an actor whose events expired still loads at least that far (from its
                // snapshot), never as new.
                let loaded = events.last().map_or(base, |e| e.version);
                let known = acked
                    .iter()
                    .filter(|(done, a, _)| *a == actor.as_str() && *done < op.invoked)
                    .map(|(_, _, v)| *v)
                    .max()
                    .unwrap_or(0);
                if problem.is_none() && !input.replicated && loaded < known {
                    problem = Some(format!(
                        "loaded v{loaded}, but v{known} was acknowledged before the load began"
                    ));
                }
                problem
            }
            _ => None,
        };
        if let Some(problem) = problem {
            out.push(Violation {
                invariant: INVARIANT,
                detail: format!("{actor}: load #{} on {}: {problem}", op.id, op.node),
            });
        }
    }
    out
}
