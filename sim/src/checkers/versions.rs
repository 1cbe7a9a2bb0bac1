//! Invariant 1: the versions of each actor are contiguous from 1 and increase in stream order.

use super::{CheckInput, Violation};

const INVARIANT: &str = "1 versions contiguous from 1";

/// Checks every final stream.
pub fn check(input: &CheckInput<'_>) -> Vec<Violation> {
    let mut out = Vec::new();
    for (actor, records) in &input.streams {
        if input.damaged_actors.contains(actor) {
            continue;
        }
        let mut next = 1;
        for record in records {
            let commit = match &record.commit {
                Ok(c) => c,
                Err(e) => {
                    out.push(Violation {
                        invariant: INVARIANT,
                        detail: format!(
                            "{actor}: record seq {} is not a commit: {e}",
                            record.sequence
                        ),
                    });
                    continue;
                }
            };
            if commit.actor_id != *actor {
                out.push(Violation {
                    invariant: INVARIANT,
                    detail: format!(
                        "{actor}: seq {} holds a commit of {:?}",
                        record.sequence, commit.actor_id
                    ),
                });
            }
            for event in &commit.events {
                if event.version != next {
                    out.push(Violation {
                        invariant: INVARIANT,
                        detail: format!(
                            "{actor}: seq {} holds version {} where {next} was due (commit {})",
                            record.sequence, event.version, commit.commit_id
                        ),
                    });
                }
                next = event.version.max(next) + 1;
            }
        }
    }
    out
}
