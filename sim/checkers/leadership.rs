//! Invariant 6: at most one node acts as leader under one fencing token, tokens strictly
//! increase, and leadership intervals (from `Leading` to `Stepped`, as each node observed on its
//! own clock) do not overlap in true time.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{CheckInput, Violation};
use crate::sim::history::{ClusterObservation, OpKind};

const INVARIANT: &str = "6 one leader per fencing token";

/// Checks the leadership observations.
pub fn check(input: &CheckInput<'_>) -> Vec<Violation> {
    let mut out = Vec::new();
    // token → (node, start, end)
    let mut terms: BTreeMap<u64, (String, Duration, Option<Duration>)> = BTreeMap::new();
    let mut last_token_of: BTreeMap<&str, u64> = BTreeMap::new();
    for op in input.ops {
        let OpKind::Cluster(observation) = &op.kind else {
            continue;
        };
        match observation {
            ClusterObservation::Leading { token } => {
                if let Some((other, ..)) = terms.get(token)
                    && *other != op.node
                {
                    out.push(Violation {
                        invariant: INVARIANT,
                        detail: format!(
                            "token {token} claimed by {other} and by {} (at {:?})",
                            op.node, op.invoked
                        ),
                    });
                }
                if let Some(prev) = last_token_of.get(op.node.as_str())
                    && *prev > *token
                {
                    out.push(Violation {
                        invariant: INVARIANT,
                        detail: format!("{} led under token {token} after token {prev}", op.node),
                    });
                }
                last_token_of.insert(&op.node, *token);
                terms
                    .entry(*token)
                    .or_insert((op.node.clone(), op.invoked, None));
            }
            ClusterObservation::Stepped { token } => {
                if let Some(term) = terms.get_mut(token)
                    && term.0 == op.node
                {
                    term.2 = Some(op.invoked);
                }
            }
            ClusterObservation::Applied { .. } => {}
        }
    }
    // Terms in token order must not overlap in true time: a newer leader starts only after the
    // older one stopped acting.
    let ordered: Vec<_> = terms.iter().collect();
    for pair in ordered.windows(2) {
        let (old_token, (old_node, _, old_end)) = pair[0];
        let (new_token, (new_node, new_start, _)) = pair[1];
        if old_node == new_node {
            continue;
        }
        let overlapping = match old_end {
            Some(end) => *end > *new_start,
            None => true,
        };
        if overlapping {
            out.push(Violation {
                invariant: INVARIANT,
                detail: format!(
                    "{old_node} still acted as leader (token {old_token}, stopped {}) when {new_node} began leading with token {new_token} at {:?}",
                    old_end.map_or("never".to_owned(), |e| format!("at {e:?}")),
                    new_start
                ),
            });
        }
    }
    out
}
