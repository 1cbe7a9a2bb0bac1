//! Invariant 7: for one assignment epoch at most one node hosts a shard, and each node applies
//! assignments in increasing epoch order (never going back to an older one).

use std::collections::BTreeMap;

use super::{CheckInput, Violation};
use crate::sim::history::{ClusterObservation, OpKind};

const INVARIANT: &str = "7 one owner per shard per epoch";

/// Checks the assignment observations.
pub fn check(input: &CheckInput<'_>) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut owner: BTreeMap<(u64, u32), &str> = BTreeMap::new();
    let mut applied: BTreeMap<&str, u64> = BTreeMap::new();
    for op in input.ops {
        let OpKind::Cluster(ClusterObservation::Applied { epoch, shards }) = &op.kind else {
            continue;
        };
        if let Some(prev) = applied.get(op.node.as_str())
            && *prev > *epoch
        {
            out.push(Violation {
                invariant: INVARIANT,
                detail: format!(
                    "{} applied epoch {epoch} after epoch {prev} (at {:?})",
                    op.node, op.invoked
                ),
            });
        }
        applied.insert(
            &op.node,
            (*epoch).max(applied.get(op.node.as_str()).copied().unwrap_or(0)),
        );
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
    out
}
