//! A read-only look at a cluster from outside it: what its KV buckets hold right now (members,
//! the lease, the published assignment and the nodes' acknowledgements), decoded exactly as the
//! nodes decode them. For tools such as the `aether` CLI; nothing is written.

use std::collections::BTreeMap;

use super::assignment::{Assignment, AssignmentDecodeError};
use super::election::{LEASE_KEY, LeaseState};
use super::view::LeaderInfo;
use super::{ASSIGNMENT_KEY, ClusterConfig, NodeId};
use crate::broker::{Broker, BrokerError};

/// The prefix of the acknowledgement keys in the assignment bucket (see [`super::ack_key`]).
const ACK_PREFIX: &str = "ack.";

/// What a cluster's buckets hold at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterSnapshot {
    /// The cluster's name (prefix of its buckets).
    pub name: String,
    /// Live members (entries of the members bucket not yet expired), by id, with the revision
    /// of their last heartbeat.
    pub members: BTreeMap<NodeId, u64>,
    /// The leader holding the lease, with its fencing token; `None` when the lease is vacant
    /// or was released.
    pub leader: Option<LeaderInfo>,
    /// The published assignment, if one is stored and decodes.
    pub assignment: Option<Assignment>,
    /// Why the stored assignment could not be decoded, if it could not.
    pub assignment_error: Option<AssignmentDecodeError>,
    /// The epoch each node acknowledged (applied) last.
    pub acknowledgements: BTreeMap<NodeId, u64>,
}

/// Primary and standby shard counts of one node under an assignment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShardLoad {
    /// Shards the node is primary for.
    pub primaries: usize,
    /// Shards the node is a standby for.
    pub standbys: usize,
}

impl ClusterSnapshot {
    /// Shards per node under the published assignment (every node it places, live or not);
    /// empty without an assignment.
    pub fn shards_per_node(&self) -> BTreeMap<NodeId, ShardLoad> {
        let Some(assignment) = &self.assignment else {
            return BTreeMap::new();
        };
        let placement = assignment.placement();
        placement
            .members()
            .iter()
            .map(|node| {
                let load = ShardLoad {
                    primaries: placement.primaries_of(node).len(),
                    standbys: placement.standbys_of(node).len(),
                };
                (node.clone(), load)
            })
            .collect()
    }
}

/// Reads the buckets of the cluster `config` names, without joining it.
///
/// # Errors
/// [`BrokerError::NotFound`] when one of the cluster's buckets does not exist (no node of that
/// cluster ever started on this broker); other broker failures.
pub async fn inspect<B: Broker>(
    broker: &B,
    config: &ClusterConfig,
) -> Result<ClusterSnapshot, BrokerError> {
    let buckets = config.buckets();
    let members = broker
        .kv_entries(&buckets.members)
        .await?
        .into_iter()
        .filter_map(|e| Some((NodeId::new(e.key).ok()?, e.revision)))
        .collect();
    let lease = broker.kv_get(&buckets.leader, LEASE_KEY).await?;
    let leader = LeaseState::of(lease.as_ref()).leader().cloned();
    let mut assignment = None;
    let mut assignment_error = None;
    let mut acknowledgements = BTreeMap::new();
    for entry in broker.kv_entries(&buckets.assignment).await? {
        if entry.key == ASSIGNMENT_KEY {
            match Assignment::decode(&entry.value) {
                Ok(a) => assignment = Some(a),
                Err(e) => assignment_error = Some(e),
            }
        } else if let Some(node) = entry.key.strip_prefix(ACK_PREFIX)
            && let Ok(node) = NodeId::new(node)
            && let Some(epoch) = std::str::from_utf8(&entry.value)
                .ok()
                .and_then(|s| s.parse().ok())
        {
            acknowledgements.insert(node, epoch);
        }
    }
    Ok(ClusterSnapshot {
        name: config.name.clone(),
        members,
        leader,
        assignment,
        assignment_error,
        acknowledgements,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Cluster;
    use crate::{MemoryBroker, Runtime};

    /// A single node's cluster, read from outside: the node is the only member, leads, and
    /// holds every shard of the epoch it acknowledged.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_running_cluster_reads_back_from_its_buckets() {
        let broker = MemoryBroker::new();
        let config = ClusterConfig::new().name("inspected");
        assert!(matches!(
            inspect(&broker, &config).await,
            Err(BrokerError::NotFound { .. })
        ));
        let node_id = NodeId::new("n1").unwrap();
        let rt = Runtime::system(broker.clone()).with_node(node_id.clone());
        let node = Cluster::start(rt, config.clone()).await.unwrap();
        while node.acknowledgements().await.unwrap().is_empty() {
            crate::rt::sleep(std::time::Duration::from_millis(50)).await;
        }
        let snapshot = inspect(&broker, &config).await.unwrap();
        assert_eq!(snapshot.members.keys().collect::<Vec<_>>(), vec![&node_id]);
        let leader = snapshot.leader.clone().expect("a leader");
        assert_eq!(leader.node, node_id);
        assert_eq!(Some(leader.clone()), node.leader());
        let assignment = snapshot.assignment.clone().expect("an assignment");
        assert_eq!(assignment.leader_token(), leader.token);
        assert_eq!(
            snapshot.acknowledgements.get(&node_id),
            Some(&assignment.epoch())
        );
        let loads = snapshot.shards_per_node();
        assert_eq!(
            loads[&node_id].primaries,
            config.shards.shard_count as usize
        );
        node.stop().await;
        let stopped = inspect(&broker, &config).await.unwrap();
        assert!(stopped.members.is_empty(), "{stopped:?}");
        assert_eq!(stopped.leader, None, "a released lease has no leader");
    }
}
