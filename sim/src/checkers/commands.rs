//! Actor commands (`ActorHost::send`): an answered command's event is in the final stream with
//! the command's id, at the version the answer reported; a command that definitely failed
//! stored nothing.

use std::collections::BTreeMap;

use super::{CheckInput, Violation};
use crate::history::{OpKind, Outcome};

const INVARIANT: &str = "2/3 an answered command is stored at the version it reported";

/// Compares command answers with the final streams.
pub fn check(input: &CheckInput<'_>) -> Vec<Violation> {
    let finals = input.final_events();
    // Where each event id ended up: (actor, version).
    let mut stored: BTreeMap<&str, (&str, u64)> = BTreeMap::new();
    for (actor, events) in &finals {
        for (version, event) in events {
            stored.entry(event.id.as_str()).or_insert((actor, *version));
        }
    }
    let mut out = Vec::new();
    for op in input.ops {
        let OpKind::Command { actor, id, .. } = &op.kind else {
            continue;
        };
        let at = stored.get(id.as_str()).copied();
        match &op.outcome {
            Outcome::Commanded {
                version,
                node,
                events,
            } => {
                let mut problem = None;
                if events.len() != 1 || events[0].id != *id || events[0].version != *version {
                    problem = Some(format!("answered with events {events:?}"));
                } else if at != Some((actor.as_str(), *version)) {
                    problem = Some(format!("the final stream holds its event at {at:?}"));
                } else if finals.get(actor.as_str()).and_then(|s| s.get(version))
                    != Some(&events[0])
                {
                    problem = Some("the stored event differs from the answer".to_owned());
                }
                if let Some(problem) = problem {
                    out.push(Violation {
                        invariant: INVARIANT,
                        detail: format!(
                            "{actor}: command {id} (op #{} from {}) ran on {node} at v{version}, but {problem}",
                            op.id, op.node
                        ),
                    });
                }
            }
            Outcome::Failed(_) | Outcome::Refused { .. } => {
                let reason = match &op.outcome {
                    Outcome::Failed(reason) => reason.clone(),
                    other => format!("{other:?}"),
                };
                if let Some(at) = at {
                    out.push(Violation {
                        invariant: INVARIANT,
                        detail: format!(
                            "{actor}: command {id} (op #{} from {}) definitely failed ({reason}), yet its event is stored at {at:?}",
                            op.id, op.node
                        ),
                    });
                }
            }
            _ => {}
        }
    }
    out
}
