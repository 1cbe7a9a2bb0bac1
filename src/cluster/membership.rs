//! Membership: every node keeps a KV entry under its id in the members bucket, written every
//! `heartbeat_interval` with update-at-revision; the bucket's TTL (`member_ttl`) removes the
//! entries of nodes that stop writing. A node's view of the members is the bucket's live keys,
//! kept current by a watch (joins, clean leaves) and a periodic full read (TTL expiry produces no
//! watch event).

use std::collections::BTreeSet;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::node::NodeTask;
use super::shard::NodeId;
use super::view::{ClusterEventKind, StepDownReason};
use super::{ClusterConfig, StartError};
use crate::broker::{Broker, BrokerError, KvEntry, KvOperation};
use crate::clock::Clock;
use crate::runtime::Runtime;
use crate::telemetry;

/// The value of a membership entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MemberRecord {
    /// Random per process start: tells this process's writes from another process that uses
    /// the same node id.
    pub incarnation: String,
}

impl MemberRecord {
    pub fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("member record serialises"))
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

impl<B: Broker, C: Clock> NodeTask<B, C> {
    pub(super) async fn heartbeat(&mut self) {
        let buckets = self.config.buckets();
        let record = MemberRecord {
            incarnation: self.incarnation.clone(),
        }
        .encode();
        let key = self.me.as_str().to_owned();
        let result = self
            .op(
                "heartbeat",
                self.rt.broker().kv_update(
                    &buckets.members,
                    &key,
                    record.clone(),
                    self.member_revision,
                ),
            )
            .await;
        match result {
            Ok(revision) => self.member_revision = revision,
            Err(BrokerError::WrongRevision { .. }) => {
                let current = self
                    .op(
                        "read own member entry",
                        self.rt.broker().kv_get(&buckets.members, &key),
                    )
                    .await;
                match current {
                    Ok(None) => {
                        // Expired (e.g. after a partition longer than the TTL): join again.
                        if let Ok(revision) = self
                            .op(
                                "rejoin",
                                self.rt.broker().kv_create(&buckets.members, &key, record),
                            )
                            .await
                        {
                            self.member_revision = revision;
                        }
                    }
                    Ok(Some(entry)) => {
                        let ours = MemberRecord::decode(&entry.value)
                            .is_some_and(|r| r.incarnation == self.incarnation);
                        if ours {
                            // An earlier, ambiguous heartbeat landed after all.
                            self.member_revision = entry.revision;
                        } else {
                            tracing::error!(node = %self.me, "another process uses this node id");
                            self.emit(ClusterEventKind::DuplicateNodeDetected);
                            self.step_down(StepDownReason::DuplicateNode, self.now());
                            self.member_revision = entry.revision;
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "reading own member entry failed"),
                }
            }
            Err(e) => tracing::debug!(error = %e, "heartbeat failed"),
        }
    }

    pub(super) fn set_members(&mut self, members: BTreeSet<NodeId>) {
        if members == self.members {
            return;
        }
        let joined: Vec<NodeId> = members.difference(&self.members).cloned().collect();
        let left: Vec<NodeId> = self.members.difference(&members).cloned().collect();
        self.members = members;
        self.members_dirty = true;
        self.shared.set_members(&self.members, &self.config.shards);
        metrics::gauge!(telemetry::CLUSTER_MEMBERS, "node" => self.me.to_string())
            .set(self.members.len() as f64);
        for member in joined.into_iter().filter(|m| *m != self.me) {
            self.emit(ClusterEventKind::MemberJoined { member });
        }
        for member in left.into_iter().filter(|m| *m != self.me) {
            self.emit(ClusterEventKind::MemberLeft { member });
        }
    }

    pub(super) fn on_member_entry(&mut self, entry: &KvEntry) {
        let Ok(node) = NodeId::new(entry.key.clone()) else {
            return;
        };
        let mut members = self.members.clone();
        match entry.operation {
            KvOperation::Put => members.insert(node),
            KvOperation::Delete => members.remove(&node),
        };
        self.set_members(members);
    }

    pub(super) async fn refresh_members(&mut self) {
        let bucket = self.config.buckets().members;
        if let Ok(entries) = self
            .op("read members", self.rt.broker().kv_entries(&bucket))
            .await
        {
            let members = entries
                .iter()
                .filter_map(|e| NodeId::new(e.key.clone()).ok())
                .collect();
            self.set_members(members);
        }
    }
}

/// Writes this node's membership entry, refusing an id a live node heartbeats under.
pub(super) async fn join<B: Broker, C: Clock>(
    rt: &Runtime<B, C>,
    config: &ClusterConfig,
    incarnation: &str,
) -> Result<u64, StartError> {
    let bucket = config.buckets().members;
    let key = rt.node_id().as_str();
    let record = MemberRecord {
        incarnation: incarnation.to_owned(),
    }
    .encode();
    let broker = rt.broker();
    match broker.kv_create(&bucket, key, record.clone()).await {
        Ok(revision) => return Ok(revision),
        Err(BrokerError::AlreadyExists { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    // An entry exists: a live node (it keeps heartbeating) or a crashed predecessor (it does
    // not). Watch it for two heartbeats.
    let before = broker.kv_get(&bucket, key).await?;
    rt.clock().sleep(config.heartbeat_interval * 2).await;
    let after = broker.kv_get(&bucket, key).await?;
    let duplicate = || StartError::DuplicateNodeId {
        node: rt.node_id().clone(),
    };
    match (before, after) {
        (_, None) => match broker.kv_create(&bucket, key, record).await {
            Ok(revision) => Ok(revision),
            Err(BrokerError::AlreadyExists { .. }) => Err(duplicate()),
            Err(e) => Err(e.into()),
        },
        (Some(b), Some(a)) if a.revision == b.revision => {
            match broker.kv_update(&bucket, key, record, a.revision).await {
                Ok(revision) => Ok(revision),
                Err(BrokerError::WrongRevision { .. }) => Err(duplicate()),
                Err(e) => Err(e.into()),
            }
        }
        _ => Err(duplicate()),
    }
}
