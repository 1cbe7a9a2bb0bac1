//! The cluster layer (work in progress).

pub mod assignment;
pub mod hash;
pub mod ring;
pub mod shard;

pub use assignment::{Assignment, AssignmentDecodeError, Placement};
pub use ring::HashRing;
pub use shard::{ClusterInputError, NodeId, ShardConfig, ShardId, shard_of};
