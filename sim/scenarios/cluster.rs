//! The cluster scenario: membership, leader election and shard assignment on every node, with
//! owner-based writers. Waits for the cluster layer (`src/cluster`) to expose its runtime API;
//! until then it runs the store workload so that the scenario plumbing stays exercised.

use super::NodeSoftware;
use crate::sim::workload::{NodeContext, StoreWorkload, store_node};

/// Cluster workload settings.
#[derive(Clone, Debug, Default)]
pub struct ClusterWorkload {
    store: StoreWorkload,
}

impl ClusterWorkload {
    /// Actors whose streams are checked.
    pub fn actors(&self, duration: std::time::Duration) -> Vec<String> {
        self.store.all_actors(duration)
    }
}

/// The node software.
pub fn node(ctx: NodeContext, workload: ClusterWorkload) -> NodeSoftware {
    Box::pin(store_node(
        ctx,
        StoreWorkload {
            vandal: false,
            ..workload.store
        },
    ))
}
