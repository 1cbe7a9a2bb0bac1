//! Invariant 4: for one (actor, expected version) at most one append succeeds, and a successful
//! `Exact(v)` append stored its events from version v + 1.

use std::collections::BTreeMap;

use super::{CheckInput, Violation};
use crate::history::{OpKind, Outcome};
use aether::event::ExpectedVersion;

const INVARIANT: &str = "4 at most one success per (actor, expected version)";

/// Groups successful appends by (actor, expected version).
pub fn check(input: &CheckInput<'_>) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut winners: BTreeMap<(&str, u64), Vec<usize>> = BTreeMap::new();
    for op in input.ops {
        let (
            OpKind::Append {
                actor, expected, ..
            },
            Outcome::Appended { events, .. },
        ) = (&op.kind, &op.outcome)
        else {
            continue;
        };
        let v = match expected {
            ExpectedVersion::Exact(v) => *v,
            ExpectedVersion::NoStream => 0,
            ExpectedVersion::Any => continue,
        };
        let first = events.first().map_or(0, |e| e.version);
        if first != v + 1 {
            out.push(Violation {
                invariant: INVARIANT,
                detail: format!(
                    "{actor}: op #{} on {} expected v{v} but stored from v{first}",
                    op.id, op.node
                ),
            });
        }
        winners.entry((actor.as_str(), v)).or_default().push(op.id);
    }
    for ((actor, v), ops) in winners {
        if ops.len() > 1 {
            out.push(Violation {
                invariant: INVARIANT,
                detail: format!(
                    "{actor}: {} appends expecting v{v} all succeeded: ops {ops:?}",
                    ops.len()
                ),
            });
        }
    }
    out
}
