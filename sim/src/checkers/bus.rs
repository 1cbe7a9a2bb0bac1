//! The bus (invariant 12): what each subscriber received, as it recorded it.
//!
//! - Within one origin's numbering (a publishing bus instance's session), a subscriber never
//!   receives a number twice or out of order.
//! - Every gap in that numbering is reported: the events a subscriber was told it missed
//!   (`Lagged`) add up to at least the gaps it saw. (The first number heard from an origin is a
//!   starting point, not a gap.)
//! - Every notification announces an event of the final valid history: the actor, version and
//!   event id it names are stored together.
//! - Once faults have stopped for the liveness bound, a prompt subscriber misses nothing: it
//!   reports no lag and receives every event acknowledged from then until shortly before the
//!   end.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::{CheckInput, Violation};
use crate::history::{OpKind, Outcome, format_time};

const INVARIANT: &str =
    "12 the bus delivers each origin's events in order, once, and reports every gap";
const LIVENESS: &str = "12 once faults stop, the bus loses nothing";

/// Checks every subscriber's record.
pub fn check(input: &CheckInput<'_>) -> Vec<Violation> {
    let mut out = Vec::new();
    let finals = input.final_events();
    #[derive(Default)]
    struct Seen<'a> {
        last: BTreeMap<(&'a str, u64), u64>,
        gaps: u64,
        lagged: u64,
        reported: usize,
        /// Event ids received after the liveness settle point.
        late_ids: BTreeSet<&'a str>,
        active_late: bool,
        lagged_late: u64,
    }
    let settle = input.safety_end + input.liveness_bound;
    let mut subscribers: BTreeMap<&str, Seen<'_>> = BTreeMap::new();
    for op in input.ops {
        let OpKind::BusReceived {
            subscriber,
            deliveries,
            lagged,
        } = &op.kind
        else {
            continue;
        };
        let seen = subscribers.entry(subscriber.as_str()).or_default();
        seen.lagged += lagged;
        let late = op.invoked >= settle;
        if late {
            seen.active_late = true;
            seen.lagged_late += lagged;
        }
        for d in deliveries {
            let key = (d.origin.as_str(), d.session);
            if let Some(last) = seen.last.get(&key).copied() {
                if d.sequence <= last {
                    if seen.reported < 4 {
                        out.push(Violation {
                            invariant: INVARIANT,
                            detail: format!(
                                "{subscriber} received #{} of {}/{} after #{last} (at {})",
                                d.sequence,
                                d.origin,
                                d.session,
                                format_time(op.invoked)
                            ),
                        });
                    }
                    seen.reported += 1;
                    continue;
                }
                seen.gaps += d.sequence - last - 1;
            }
            seen.last.insert(key, d.sequence);
            let stored = finals
                .get(d.actor.as_str())
                .and_then(|events| events.get(&d.version));
            if stored.is_none_or(|e| e.id != d.event_id) {
                out.push(Violation {
                    invariant: INVARIANT,
                    detail: format!(
                        "{subscriber} was told {} v{} is event {:?}, but the history holds {:?}",
                        d.actor,
                        d.version,
                        d.event_id,
                        stored.map(|e| &e.id)
                    ),
                });
            }
            if late {
                seen.late_ids.insert(d.event_id.as_str());
            }
        }
    }
    // Acknowledged events whose notifications every prompt subscriber must see: acked after
    // the settle point, early enough to arrive before the end.
    let due_by = input.end.saturating_sub(Duration::from_secs(2));
    let due: Vec<&str> = input
        .ops
        .iter()
        .filter_map(|op| match (&op.kind, &op.outcome, op.completed) {
            (OpKind::Append { .. }, Outcome::Appended { events, .. }, Some(done))
                if op.invoked >= settle && done <= due_by =>
            {
                Some(events.iter().map(|e| e.id.as_str()))
            }
            _ => None,
        })
        .flatten()
        .collect();
    for (subscriber, seen) in &subscribers {
        if seen.gaps > seen.lagged {
            out.push(Violation {
                invariant: INVARIANT,
                detail: format!(
                    "{subscriber} saw {} events missing from origins' numbering but was told of only {}",
                    seen.gaps, seen.lagged
                ),
            });
        }
        if !subscriber.ends_with(".prompt") || !seen.active_late {
            continue;
        }
        if seen.lagged_late > 0 {
            out.push(Violation {
                invariant: LIVENESS,
                detail: format!(
                    "{subscriber} was told it missed {} events after {}",
                    seen.lagged_late,
                    format_time(settle)
                ),
            });
        }
        let missing: Vec<&&str> = due
            .iter()
            .filter(|id| !seen.late_ids.contains(**id))
            .collect();
        if !missing.is_empty() {
            out.push(Violation {
                invariant: LIVENESS,
                detail: format!(
                    "{subscriber} never received {} of the {} events acknowledged after {} (first: {})",
                    missing.len(),
                    due.len(),
                    format_time(settle),
                    missing[0]
                ),
            });
        }
    }
    out
}
