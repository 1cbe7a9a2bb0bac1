//! Node ids, shard ids, the shard configuration and the typed errors for bad cluster input.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::hash::stable_hash;
pub use crate::node::{InvalidNodeId, NODE_ID_LEN_MAX, NodeId};

/// Default number of shards.
pub const SHARD_COUNT_DEFAULT: u32 = 1024;
/// Upper bound on the shard count: the assignment is one KV value and must stay well under the
/// server's payload limit.
pub const SHARD_COUNT_MAX: u32 = 65_536;
/// Default replication factor (1: a primary owner and no standbys).
pub const REPLICATION_FACTOR_DEFAULT: usize = 1;
/// Default number of virtual nodes per node on the hash ring.
pub const VIRTUAL_NODES_DEFAULT: usize = 150;
/// Upper bound on virtual nodes per node.
pub const VIRTUAL_NODES_MAX: usize = 4096;

/// Bad input to the cluster: configuration, member lists, node ids.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterInputError {
    /// The shard count was 0.
    #[error("shard count must be at least 1")]
    ZeroShards,
    /// The shard count exceeds [`SHARD_COUNT_MAX`].
    #[error("shard count {count} exceeds the maximum of {max}")]
    TooManyShards {
        /// The requested count.
        count: u32,
        /// The maximum.
        max: u32,
    },
    /// The replication factor was 0.
    #[error("replication factor must be at least 1 (the primary owner)")]
    ZeroReplicationFactor,
    /// More replicas were asked for than there are members to hold them.
    #[error(
        "replication factor {replication_factor} exceeds the {members} member(s) available; \
         every replica needs a distinct node"
    )]
    ReplicationExceedsMembers {
        /// The requested replication factor.
        replication_factor: usize,
        /// The number of members.
        members: usize,
    },
    /// The virtual-node count was 0 or above [`VIRTUAL_NODES_MAX`].
    #[error("virtual nodes per node must be between 1 and {max}, got {count}")]
    BadVirtualNodes {
        /// The requested count.
        count: usize,
        /// The maximum.
        max: usize,
    },
    /// The same node id was listed twice.
    #[error("node id {node} is listed more than once; node ids must be unique")]
    DuplicateNodeId {
        /// The repeated id.
        node: NodeId,
    },
    /// A node id that cannot be used.
    #[error(transparent)]
    InvalidNodeId(#[from] InvalidNodeId),
    /// A placement was asked for with no members.
    #[error("no members: at least one node is needed to place shards")]
    NoMembers,
    /// A cluster name that cannot be part of a KV bucket name.
    #[error("cluster name {name:?} must be non-empty and use only A-Z, a-z, 0-9, '_' and '-'")]
    InvalidClusterName {
        /// The refused name.
        name: String,
    },
    /// Timing settings that cannot work together.
    #[error("invalid cluster timing: {reason}")]
    InvalidTiming {
        /// What is wrong.
        reason: String,
    },
}

/// A shard number, `0..shard_count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ShardId(pub u32);

impl ShardId {
    /// The shard number as an index.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shard {}", self.0)
    }
}

/// The shard an actor belongs to: `stable_hash(actor_id) mod shard_count`
/// (see [`super::hash::stable_hash`]).
///
/// # Panics
/// When `shard_count` is 0 (validated configurations never pass 0).
pub fn shard_of(actor_id: &str, shard_count: u32) -> ShardId {
    assert!(shard_count > 0, "shard_count must be positive");
    ShardId((stable_hash(actor_id.as_bytes()) % u64::from(shard_count)) as u32)
}

/// How actors are split into shards and how shards are placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ShardConfig {
    /// Number of shards (default 1024). Changing it re-shards every actor: all nodes must agree.
    pub shard_count: u32,
    /// Owners per shard: one primary plus `replication_factor - 1` standbys on distinct nodes
    /// (default 1).
    pub replication_factor: usize,
    /// Virtual nodes per node on the fallback hash ring (default 150).
    pub virtual_nodes: usize,
}

impl Default for ShardConfig {
    fn default() -> Self {
        Self {
            shard_count: SHARD_COUNT_DEFAULT,
            replication_factor: REPLICATION_FACTOR_DEFAULT,
            virtual_nodes: VIRTUAL_NODES_DEFAULT,
        }
    }
}

impl ShardConfig {
    /// `shard_count` shards, otherwise the defaults.
    pub fn with_shard_count(shard_count: u32) -> Self {
        Self {
            shard_count,
            ..Self::default()
        }
    }

    /// Sets the replication factor.
    pub fn replication_factor(mut self, replication_factor: usize) -> Self {
        self.replication_factor = replication_factor;
        self
    }

    /// Sets the virtual nodes per node on the hash ring.
    pub fn virtual_nodes(mut self, virtual_nodes: usize) -> Self {
        self.virtual_nodes = virtual_nodes;
        self
    }

    /// Checks the configuration on its own (the replication factor is checked against the
    /// member count when shards are placed).
    ///
    /// # Errors
    /// [`ClusterInputError::ZeroShards`], [`ClusterInputError::TooManyShards`],
    /// [`ClusterInputError::ZeroReplicationFactor`], [`ClusterInputError::BadVirtualNodes`].
    pub fn validate(&self) -> Result<(), ClusterInputError> {
        if self.shard_count == 0 {
            return Err(ClusterInputError::ZeroShards);
        }
        if self.shard_count > SHARD_COUNT_MAX {
            return Err(ClusterInputError::TooManyShards {
                count: self.shard_count,
                max: SHARD_COUNT_MAX,
            });
        }
        if self.replication_factor == 0 {
            return Err(ClusterInputError::ZeroReplicationFactor);
        }
        if self.virtual_nodes == 0 || self.virtual_nodes > VIRTUAL_NODES_MAX {
            return Err(ClusterInputError::BadVirtualNodes {
                count: self.virtual_nodes,
                max: VIRTUAL_NODES_MAX,
            });
        }
        Ok(())
    }

    /// The shard of `actor_id` under this configuration.
    ///
    /// # Panics
    /// When the shard count is 0 (call [`validate`](Self::validate) first).
    pub fn shard_of(&self, actor_id: &str) -> ShardId {
        shard_of(actor_id, self.shard_count)
    }
}

/// Sorts `nodes` and checks they are distinct.
pub(crate) fn sorted_distinct<I: IntoIterator<Item = NodeId>>(
    nodes: I,
) -> Result<Vec<NodeId>, ClusterInputError> {
    let mut sorted: Vec<NodeId> = nodes.into_iter().collect();
    sorted.sort();
    if let Some(pair) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Err(ClusterInputError::DuplicateNodeId {
            node: pair[0].clone(),
        });
    }
    Ok(sorted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_of_is_pinned_for_known_ids() {
        // These values are a compatibility contract: every node of every version must agree.
        let got: Vec<u32> = ["", "a", "account-1", "order/42", "ünïcödé"]
            .iter()
            .map(|id| shard_of(id, 1024).0)
            .collect();
        assert_eq!(got, PINNED_SHARDS);
    }

    const PINNED_SHARDS: [u32; 5] = [294, 603, 71, 745, 286];

    #[test]
    fn bad_shard_configs_are_refused_with_typed_errors() {
        let ok = ShardConfig::default();
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(ok.shard_count, 1024);
        assert_eq!(ok.replication_factor, 1);
        assert_eq!(ok.virtual_nodes, 150);
        let zero = ShardConfig {
            shard_count: 0,
            ..ok
        };
        assert_eq!(zero.validate(), Err(ClusterInputError::ZeroShards));
        let rf0 = ShardConfig {
            replication_factor: 0,
            ..ok
        };
        assert_eq!(
            rf0.validate(),
            Err(ClusterInputError::ZeroReplicationFactor)
        );
        let v0 = ShardConfig {
            virtual_nodes: 0,
            ..ok
        };
        assert!(matches!(
            v0.validate(),
            Err(ClusterInputError::BadVirtualNodes { .. })
        ));
    }

    #[test]
    fn duplicate_node_ids_are_refused() {
        let a = NodeId::new("a").unwrap();
        let b = NodeId::new("b").unwrap();
        assert_eq!(
            sorted_distinct([b.clone(), a.clone(), b.clone()]),
            Err(ClusterInputError::DuplicateNodeId { node: b.clone() })
        );
        assert_eq!(sorted_distinct([b.clone(), a.clone()]), Ok(vec![a, b]));
    }
}
