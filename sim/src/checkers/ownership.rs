//! Invariant 7: for one assignment epoch at most one node hosts a shard, and each node (each
//! running instance of it) applies assignments in increasing epoch order, never going back to
//! an older one. The second half of invariant 7 — a stale owner's append is rejected — is
//! checked through the store: owner-based writers append with `Exact` versions, so overlapping
//! owners show up as conflicts, and `expected_version` fails the run on two successes at one
//! version.

use std::collections::BTreeMap;

use super::{CheckInput, Violation};
use crate::history::{ClusterObservation, OpKind, format_time};

const INVARIANT: &str = "7 one owner per shard per epoch";

/// Checks the assignment observations.
pub fn check(input: &CheckInput<'_>) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut owner: BTreeMap<(u64, u32), &str> = BTreeMap::new();
    // node → the epoch its running instance applied last
    let mut applied: BTreeMap<&str, u64> = BTreeMap::new();
    for op in input.ops {
        let OpKind::Cluster(observation) = &op.kind else {
            continue;
        };
        match observation {
            ClusterObservation::Started
            | ClusterObservation::Stopped
            | ClusterObservation::Down => {
                applied.remove(op.node.as_str());
            }
            ClusterObservation::Applied { epoch, shards, .. } => {
                if let Some(prev) = applied.get(op.node.as_str())
                    && *prev > *epoch
                {
                    out.push(Violation {
                        invariant: INVARIANT,
                        detail: format!(
                            "{} applied epoch {epoch} after epoch {prev} (at {})",
                            op.node,
                            format_time(op.invoked)
                        ),
                    });
                }
                let newest = applied.get(op.node.as_str()).copied().unwrap_or(0);
                applied.insert(&op.node, newest.max(*epoch));
                for shard in shards {
                    if let Some(other) = owner.insert((*epoch, *shard), &op.node)
                        && other != op.node
                    {
                        out.push(Violation {
                            invariant: INVARIANT,
                            detail: format!(
                                "shard {shard} hosted by {other} and {} under epoch {epoch}",
                                op.node
                            ),
                        });
                    }
                }
            }
            _ => {}
        }
    }
    out
}
