//! Leader election by lease.
//!
//! One key (`leader`) in a bucket whose TTL is `lease_ttl`:
//!
//! - **Acquire**: create the key only if absent (or take it over by update-at-revision when its
//!   holder released it). The revision of that write is the **fencing token**: revisions are
//!   bucket-wide and only grow, so every new term has a larger token than every earlier one.
//! - **Renew**: update-at-revision every `lease_renew_interval`. A renewal that finds another
//!   revision means the lease was lost: step down at once.
//! - **Step down on the node's own clock**: the deadline is `sent + lease_step_down_after`,
//!   measured from *before* the successful write was sent. The server stamps the write later
//!   than that, and keeps the key until `written + lease_ttl`, so with
//!   `lease_step_down_after < lease_ttl` the node stops acting before any other node can
//!   acquire — even if every reply is slow, and with clock drift up to the margin.
//! - **Release** on clean stop: the leader overwrites the key (at its revision) with a
//!   `released` marker, which candidates may take over immediately instead of waiting for the
//!   TTL. (The broker has no delete-at-revision; an unconditional delete could remove a
//!   successor's lease.)

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::node::NodeTask;
use super::shard::NodeId;
use super::view::{ClusterEventKind, LeaderInfo, Leadership, StepDownReason};
use crate::broker::{Broker, BrokerError, KvEntry, KvOperation};
use crate::clock::Clock;

/// The key of the lease in the leader bucket.
pub(crate) const LEASE_KEY: &str = "leader";

/// The value of the lease key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LeaseRecord {
    pub holder: NodeId,
    pub incarnation: String,
    /// The term's token; `None` in the acquiring write itself (whose revision is the token).
    pub token: Option<u64>,
    /// The holder gave the lease up; anyone may take it over.
    pub released: bool,
}

impl LeaseRecord {
    pub fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("lease record serialises"))
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

/// What a lease entry says about leadership.
pub(crate) enum LeaseState {
    /// No live lease: anyone may create it.
    Vacant,
    /// Released (or unreadable): anyone may take it over at this revision.
    TakeOver { revision: u64 },
    /// Held.
    Held {
        leader: LeaderInfo,
        incarnation: String,
        revision: u64,
    },
}

impl LeaseState {
    pub fn of(entry: Option<&KvEntry>) -> Self {
        let Some(entry) = entry.filter(|e| e.operation == KvOperation::Put) else {
            return LeaseState::Vacant;
        };
        match LeaseRecord::decode(&entry.value) {
            Some(r) if !r.released => LeaseState::Held {
                leader: LeaderInfo {
                    node: r.holder,
                    token: r.token.unwrap_or(entry.revision),
                },
                incarnation: r.incarnation,
                revision: entry.revision,
            },
            _ => LeaseState::TakeOver {
                revision: entry.revision,
            },
        }
    }

    pub fn leader(&self) -> Option<&LeaderInfo> {
        match self {
            LeaseState::Held { leader, .. } => Some(leader),
            _ => None,
        }
    }
}

/// This node's lease while it leads.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OwnLease {
    pub token: u64,
    /// Revision of the last successful write, for the next update.
    pub revision: u64,
    pub deadline: Duration,
    pub renew_at: Duration,
}

impl<B: Broker, C: Clock> NodeTask<B, C> {
    pub(super) fn observe_lease(&mut self, state: &LeaseState) {
        let leader = state.leader().cloned();
        if self.shared.set_leader(leader.clone()) {
            self.emit(ClusterEventKind::LeaderObserved { leader });
        }
    }

    /// The deadline for a lease write sent at `sent_at` and acknowledged at `acked_at`.
    pub(super) fn deadline_for(&self, sent_at: Duration, acked_at: Duration) -> Duration {
        if crate::planted::planted!(self.rt, leader_ignores_lease_deadline) {
            // Planted bug: trust the server's TTL, counted from when the reply arrived.
            acked_at + self.config.lease_ttl
        } else {
            sent_at + self.config.lease_step_down_after
        }
    }

    pub(super) fn enforce_deadline(&mut self) {
        if let Some(l) = self.lease
            && self.now() >= l.deadline
        {
            self.step_down(StepDownReason::DeadlineReached, l.deadline);
        }
    }

    pub(super) fn step_down(&mut self, reason: StepDownReason, acted_until: Duration) {
        let Some(l) = self.lease.take() else {
            return;
        };
        let acted_until = acted_until.min(l.deadline);
        self.shared.update(|v| v.leadership = None);
        self.emit(ClusterEventKind::LeadershipEnded {
            token: l.token,
            acted_until,
            reason,
        });
    }

    pub(super) async fn on_lease_entry(&mut self, entry: &KvEntry) {
        let state = LeaseState::of(Some(entry));
        self.observe_lease(&state);
        if self.lease.is_none() {
            self.try_acquire(state).await;
        }
    }

    pub(super) async fn poll_lease(&mut self) {
        if self.lease.is_some() {
            return;
        }
        let bucket = self.config.buckets().leader;
        let Ok(entry) = self
            .op("read lease", self.rt.broker().kv_get(&bucket, LEASE_KEY))
            .await
        else {
            return;
        };
        let state = LeaseState::of(entry.as_ref());
        self.observe_lease(&state);
        self.try_acquire(state).await;
    }

    pub(super) async fn try_acquire(&mut self, state: LeaseState) {
        let bucket = self.config.buckets().leader;
        let record = LeaseRecord {
            holder: self.me.clone(),
            incarnation: self.incarnation.clone(),
            token: None,
            released: false,
        }
        .encode();
        let sent_at = self.now();
        let result = match state {
            LeaseState::Vacant => {
                self.op(
                    "create lease",
                    self.rt.broker().kv_create(&bucket, LEASE_KEY, record),
                )
                .await
            }
            LeaseState::TakeOver { revision } => {
                self.op(
                    "take over lease",
                    self.rt
                        .broker()
                        .kv_update(&bucket, LEASE_KEY, record, revision),
                )
                .await
            }
            // Our own lease from an earlier term (we stepped down on our clock, or a reply was
            // lost): start a new term on it rather than wait for the TTL.
            LeaseState::Held {
                leader,
                incarnation,
                revision,
            } if leader.node == self.me && incarnation == self.incarnation => {
                self.op(
                    "resume lease",
                    self.rt
                        .broker()
                        .kv_update(&bucket, LEASE_KEY, record, revision),
                )
                .await
            }
            LeaseState::Held { .. } => return,
        };
        match result {
            Ok(token) => {
                let acked_at = self.now();
                self.become_leader(token, sent_at, acked_at);
            }
            Err(e) => tracing::debug!(node = %self.me, error = %e, "lease not acquired"),
        }
    }

    pub(super) fn become_leader(&mut self, token: u64, sent_at: Duration, acked_at: Duration) {
        assert!(self.lease.is_none(), "acquired a lease while leading");
        assert!(
            token > self.last_own_token,
            "fencing token did not grow: {token} after {}",
            self.last_own_token
        );
        self.last_own_token = token;
        let deadline = self.deadline_for(sent_at, acked_at);
        if acked_at >= deadline {
            // The reply took so long that the lease may already be someone else's: never act.
            return;
        }
        let lease = OwnLease {
            token,
            revision: token,
            deadline,
            renew_at: sent_at + self.config.lease_renew_interval,
        };
        self.lease = Some(lease);
        let leader = super::view::LeaderInfo {
            node: self.me.clone(),
            token,
        };
        self.shared.update(|v| {
            v.leadership = Some(Leadership {
                token,
                since: acked_at,
                deadline,
            })
        });
        self.emit(ClusterEventKind::LeadershipAcquired { token, deadline });
        if self.shared.set_leader(Some(leader.clone())) {
            self.emit(ClusterEventKind::LeaderObserved {
                leader: Some(leader),
            });
        }
        self.members_dirty = true;
    }

    pub(super) async fn renew(&mut self) {
        // A renewal is a leader action: never sent past the deadline (the work before it in
        // this round may have taken that long). It would extend, on the server, a lease this
        // node no longer acts on.
        self.enforce_deadline();
        let Some(lease) = self.lease else {
            return;
        };
        let bucket = self.config.buckets().leader;
        let record = LeaseRecord {
            holder: self.me.clone(),
            incarnation: self.incarnation.clone(),
            token: Some(lease.token),
            released: false,
        }
        .encode();
        let sent_at = self.now();
        let result = if crate::planted::planted!(self.rt, leader_renews_without_cas) {
            // Planted bug: renew whatever the key holds now.
            self.op(
                "renew lease",
                self.rt.broker().kv_put(&bucket, LEASE_KEY, record),
            )
            .await
        } else {
            self.op(
                "renew lease",
                self.rt
                    .broker()
                    .kv_update(&bucket, LEASE_KEY, record, lease.revision),
            )
            .await
        };
        let acked_at = self.now();
        match result {
            Ok(revision) => {
                assert!(revision > lease.revision, "lease revision did not grow");
                if acked_at >= lease.deadline {
                    // We already stopped acting; a gap must not be papered over. The next poll
                    // resumes the lease under a new token.
                    self.step_down(StepDownReason::DeadlineReached, lease.deadline);
                    return;
                }
                let deadline = self.deadline_for(sent_at, acked_at);
                assert!(deadline >= lease.deadline, "lease deadline moved backwards");
                self.lease = Some(OwnLease {
                    revision,
                    deadline,
                    renew_at: sent_at + self.config.lease_renew_interval,
                    ..lease
                });
                self.shared.update(|v| {
                    if let Some(l) = v.leadership.as_mut() {
                        l.deadline = deadline;
                    }
                });
                self.emit(ClusterEventKind::LeaseRenewed {
                    token: lease.token,
                    deadline,
                    sent_at,
                });
            }
            Err(BrokerError::WrongRevision { .. } | BrokerError::NotFound { .. }) => {
                self.step_down(StepDownReason::LeaseLost, acked_at);
            }
            Err(e) => {
                tracing::debug!(node = %self.me, error = %e, "lease renewal failed; retrying");
                if let Some(l) = self.lease.as_mut() {
                    l.renew_at = acked_at + self.config.lease_renew_interval / 4;
                }
            }
        }
    }
}
