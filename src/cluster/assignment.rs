//! Assignment: the leader's placement stamped with an epoch and its fencing token, published
//! in KV by update-at-revision; every node applies only newer epochs, stops hosting what goes
//! away before it acknowledges, and acknowledges the epoch it applied.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::node::NodeTask;
pub use super::placement::Placement;
use super::shard::{ShardConfig, ShardId};
use super::view::ClusterEventKind;
use super::{ASSIGNMENT_KEY, ack_key};
use crate::broker::{Broker, KvEntry, KvOperation};
use crate::clock::Clock;

/// A placement stamped with its epoch and the fencing token of the leader that published it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    epoch: u64,
    leader_token: u64,
    pub(super) placement: Placement,
}

/// An assignment read from KV could not be decoded or is malformed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("undecodable shard assignment: {reason}")]
pub struct AssignmentDecodeError {
    /// What is wrong.
    pub reason: String,
}

impl Assignment {
    /// Stamps `placement` with `epoch` (at least 1) and `leader_token`.
    ///
    /// # Panics
    /// When `epoch` is 0.
    pub fn new(epoch: u64, leader_token: u64, placement: Placement) -> Self {
        assert!(epoch > 0, "epochs start at 1");
        Self {
            epoch,
            leader_token,
            placement,
        }
    }

    /// The epoch: assignments published later have larger epochs.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The fencing token of the leader that published it.
    pub fn leader_token(&self) -> u64 {
        self.leader_token
    }

    /// The shard placement.
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// The JSON the assignment travels as.
    pub fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("assignment serialises"))
    }

    /// Reads an assignment written by [`encode`](Self::encode), checking its structure.
    ///
    /// # Errors
    /// [`AssignmentDecodeError`] for invalid JSON or a malformed placement.
    pub fn decode(bytes: &[u8]) -> Result<Self, AssignmentDecodeError> {
        let a: Assignment = serde_json::from_slice(bytes).map_err(|e| AssignmentDecodeError {
            reason: e.to_string(),
        })?;
        if a.epoch == 0 {
            return Err(AssignmentDecodeError {
                reason: "epoch 0".into(),
            });
        }
        a.placement
            .check()
            .map_err(|reason| AssignmentDecodeError { reason })?;
        Ok(a)
    }
}

impl<B: Broker, C: Clock> NodeTask<B, C> {
    pub(super) async fn poll_assignment(&mut self) {
        let bucket = self.config.buckets().assignment;
        if let Ok(Some(entry)) = self
            .op(
                "read assignment",
                self.rt.broker().kv_get(&bucket, ASSIGNMENT_KEY),
            )
            .await
        {
            self.on_assignment_entry(&entry).await;
        }
    }

    pub(super) fn decode_assignment(&self, entry: &KvEntry) -> Option<Arc<Assignment>> {
        if entry.operation != KvOperation::Put {
            return None;
        }
        match Assignment::decode(&entry.value) {
            Ok(a) if a.placement().shard_count() == self.config.shards.shard_count => {
                Some(Arc::new(a))
            }
            Ok(a) => {
                tracing::warn!(
                    theirs = a.placement().shard_count(),
                    ours = self.config.shards.shard_count,
                    "ignoring an assignment with a different shard count"
                );
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "ignoring an undecodable assignment");
                None
            }
        }
    }

    pub(super) async fn on_assignment_entry(&mut self, entry: &KvEntry) {
        let Some(a) = self.decode_assignment(entry) else {
            return;
        };
        match &self.latest {
            Some((l, _)) if a.epoch() < l.epoch() => {
                // KV went back to an older epoch: a leader republishes the newest on top.
                self.members_dirty = true;
            }
            Some((l, _)) if a.epoch() == l.epoch() => {}
            _ => self.latest = Some((a.clone(), entry.revision)),
        }
        // An assignment this leader did not write: a former leader's update, sent inside its
        // lease but delivered after this one took office (the update's revision check passes
        // when this leader has not written yet). The leader rebuilds on top of it; without
        // this it would keep a placement made for a membership it never saw.
        if self
            .acting()
            .is_some_and(|lease| a.leader_token() != lease.token)
        {
            self.members_dirty = true;
        }
        self.apply(a).await;
    }

    pub(super) async fn apply(&mut self, a: Arc<Assignment>) {
        let previous_epoch = self.applied.as_ref().map(|p| p.epoch());
        if previous_epoch == Some(a.epoch()) {
            return;
        }
        if previous_epoch.is_some_and(|p| a.epoch() < p)
            && !crate::planted::planted!(self.rt, apply_assignment_out_of_order)
        {
            tracing::debug!(
                epoch = a.epoch(),
                ?previous_epoch,
                "ignoring an older assignment"
            );
            return;
        }
        let placement = a.placement();
        let hosted: BTreeSet<ShardId> = placement.primaries_of(&self.me).into_iter().collect();
        let released: Vec<ShardId> = self.hosted.difference(&hosted).copied().collect();
        let acquired: Vec<ShardId> = hosted.difference(&self.hosted).copied().collect();
        // Stop hosting what goes away first, under the old epoch; acknowledge only afterwards.
        if !released.is_empty() {
            self.hosted.retain(|s| hosted.contains(s));
            let still = self.hosted.clone();
            self.shared.update(|v| v.hosted = still);
            self.emit(ClusterEventKind::ShardsReleased {
                epoch: previous_epoch.unwrap_or(0),
                shards: released,
            });
        }
        assert!(self.hosted.is_subset(&hosted));
        self.hosted = hosted.clone();
        self.applied = Some(a.clone());
        self.shared.update(|v| {
            v.assignment = Some(a.clone());
            v.hosted = hosted.clone();
        });
        self.emit(ClusterEventKind::AssignmentApplied {
            epoch: a.epoch(),
            previous_epoch,
            leader_token: a.leader_token(),
            hosted: hosted.into_iter().collect(),
            acquired,
            standby: placement.standbys_of(&self.me),
        });
        self.acknowledge(a.epoch()).await;
    }

    pub(super) async fn acknowledge(&mut self, epoch: u64) {
        let bucket = self.config.buckets().assignment;
        let value = bytes::Bytes::from(epoch.to_string());
        let result = self
            .op(
                "acknowledge assignment",
                self.rt.broker().kv_put(&bucket, &ack_key(&self.me), value),
            )
            .await;
        if result.is_ok() {
            self.shared.update(|v| v.acknowledged_epoch = Some(epoch));
            self.emit(ClusterEventKind::AssignmentAcknowledged { epoch });
        }
    }

    pub(super) async fn maybe_publish(&mut self) {
        // Planted bug: act on the lease as held, whatever its deadline.
        let stale_ok = crate::planted::planted!(self.rt, leader_publishes_after_deadline);
        let Some(lease) = self.acting().or(self.lease.filter(|_| stale_ok)) else {
            return;
        };
        let bucket = self.config.buckets().assignment;
        // A fresh read: the update below must be at the latest revision.
        let current = match self
            .op(
                "read assignment",
                self.rt.broker().kv_get(&bucket, ASSIGNMENT_KEY),
            )
            .await
        {
            Ok(entry) => entry.and_then(|e| self.decode_assignment(&e).map(|a| (a, e.revision))),
            Err(_) => return,
        };
        // Build on the newest assignment known, even if KV holds an older one (nodes would
        // ignore an epoch that is not larger than the one they applied).
        let newest: Option<Arc<Assignment>> = [
            current.as_ref().map(|(c, _)| c.clone()),
            self.latest.as_ref().map(|(l, _)| l.clone()),
            self.applied.clone(),
        ]
        .into_iter()
        .flatten()
        .max_by_key(|a| a.epoch());
        if newest
            .as_ref()
            .is_some_and(|n| n.leader_token() > lease.token)
            && !crate::planted::planted!(self.rt, leader_skips_token_check)
        {
            // A newer leader already published: this node's lease must be gone.
            return;
        }
        let mut members = self.members.clone();
        members.insert(self.me.clone());
        let shards = ShardConfig {
            replication_factor: self.config.shards.replication_factor.min(members.len()),
            ..self.config.shards
        };
        let placement = match Placement::compute(
            &shards,
            members.iter().cloned(),
            newest.as_ref().map(|n| n.placement()),
        ) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot compute an assignment");
                return;
            }
        };
        self.members_dirty = false;
        let newest_epoch = newest.as_ref().map(|n| n.epoch());
        if current
            .as_ref()
            .is_some_and(|(c, _)| *c.placement() == placement && Some(c.epoch()) == newest_epoch)
        {
            return;
        }
        let epoch = newest_epoch.map_or(1, |e| e + 1);
        let moved = newest
            .as_ref()
            .map_or(0, |n| placement.primaries_moved_from(n.placement()));
        let assignment = Assignment::new(epoch, lease.token, placement);
        if self.acting().is_none() && !stale_ok {
            return;
        }
        let value = assignment.encode();
        let sent_at = self.now();
        let result = match &current {
            None => {
                self.op(
                    "publish assignment",
                    self.rt.broker().kv_create(&bucket, ASSIGNMENT_KEY, value),
                )
                .await
            }
            Some((_, revision)) => {
                self.op(
                    "publish assignment",
                    self.rt
                        .broker()
                        .kv_update(&bucket, ASSIGNMENT_KEY, value, *revision),
                )
                .await
            }
        };
        match result {
            Ok(revision) => {
                self.emit(ClusterEventKind::AssignmentPublished {
                    epoch,
                    token: lease.token,
                    moved,
                    sent_at,
                });
                let a = Arc::new(assignment);
                self.latest = Some((a.clone(), revision));
                self.apply(a).await;
            }
            Err(e) => {
                tracing::debug!(error = %e, "assignment not published");
                self.members_dirty = true;
            }
        }
    }
}
