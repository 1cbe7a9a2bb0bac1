//! What reads return (invariants 3 and 9): a read of actor `a` from version `v` returns exactly
//! the valid history's events from `v` on, contiguous, up to some tip — and that tip is no older
//! than any append to `a` acknowledged before the read began (read-your-writes, and no read
//! going back behind an acknowledged write). With damage around, `events_with_errors` returns
//! the same valid events.

use std::collections::BTreeMap;

use super::{CheckInput, Violation};
use crate::history::{OpKind, Outcome};

const INVARIANT: &str = "3/9 a read returns the valid history from its start to a current tip";

/// Checks every successful read against the final valid history and the acknowledgements.
pub fn check(input: &CheckInput<'_>) -> Vec<Violation> {
    let finals = input.final_events();
    let empty = BTreeMap::new();
    // Per actor: (completion time, last version) of every acknowledged append.
    let mut acks: BTreeMap<&str, Vec<(std::time::Duration, u64)>> = BTreeMap::new();
    for op in input.ops {
        let (actor, events) = match (&op.kind, &op.outcome) {
            (OpKind::Append { actor, .. }, Outcome::Appended { events, .. })
            | (OpKind::Command { actor, .. }, Outcome::Commanded { events, .. })
            | (OpKind::UserCommand { actor, .. }, Outcome::Commanded { events, .. }) => {
                (actor, events)
            }
            _ => continue,
        };
        if let (Some(done), Some(last)) = (op.completed, events.last()) {
            acks.entry(actor.as_str())
                .or_default()
                .push((done, last.version));
        }
    }
    let mut out = Vec::new();
    for read in input.ops {
        let (
            OpKind::Read { actor, from },
            Outcome::Read { events } | Outcome::ReadAround { events, .. },
        ) = (&read.kind, &read.outcome)
        else {
            continue;
        };
        let history = finals.get(actor.as_str()).unwrap_or(&empty);
        let mut problem = None;
        // Contiguous from `from`.
        for (i, event) in events.iter().enumerate() {
            let due = from + i as u64;
            if event.version != due {
                problem = Some(format!("returned v{} where v{due} was due", event.version));
                break;
            }
        }
        let tip = events.last().map_or(from.saturating_sub(1), |e| e.version);
        // No newer than the history, and nothing below `from`: exactly the chain's events.
        if problem.is_none()
            && let Some(missing) =
                (*from..=tip).find(|v| !history.contains_key(v) && !input.expired(actor, *v))
        {
            problem = Some(format!(
                "returned v{missing}, which the valid history does not hold"
            ));
        }
        // At least as new as every earlier acknowledgement — on one linearizable server. On
        // replicas a read may miss other handles' writes; `sessions` checks what it promises.
        if problem.is_none()
            && !input.replicated
            && let Some((at, version)) = acks
                .get(actor.as_str())
                .into_iter()
                .flatten()
                .find(|(at, version)| *at < read.invoked && *version > tip && *version >= *from)
        {
            problem = Some(format!(
                "saw up to v{tip}, but v{version} was acknowledged at {at:?}, before the read began"
            ));
        }
        if let Some(problem) = problem {
            out.push(Violation {
                invariant: INVARIANT,
                detail: format!(
                    "{actor}: read #{} on {} from v{from} (invoked {:?}): {problem}",
                    read.id, read.node, read.invoked
                ),
            });
        }
    }
    out
}
