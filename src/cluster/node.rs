//! The node task: one loop per node that heartbeats, watches membership, runs for and renews
//! the lease, publishes assignments while leading, and applies the assignments it sees.
//!
//! Everything happens on one task, in one order, so a node's behaviour is a function of the
//! broker's answers and its clock. `select!` is `biased` (branch order fixed, not random), every
//! broker operation is bounded by `operation_timeout` on the node's clock, and the lease
//! deadline is a wake-up time of its own, so a node steps down on time even while the broker is
//! unreachable.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::assignment::Assignment;
use super::election::{LEASE_KEY, LeaseRecord, OwnLease};
use super::shard::{NodeId, ShardId};
use super::view::{ClusterEventKind, StepDownReason};
use super::{ASSIGNMENT_KEY, ClusterConfig, Shared};
use crate::broker::{Broker, BrokerError, KvEntry, KvWatch};
use crate::clock::Clock;
use crate::runtime::Runtime;

/// Runs `op` for at most `timeout` of `clock`'s time.
pub(crate) async fn bounded<C: Clock, T>(
    clock: &C,
    timeout: Duration,
    operation: &str,
    op: impl Future<Output = Result<T, BrokerError>>,
) -> Result<T, BrokerError> {
    tokio::select! {
        biased;
        r = op => r,
        _ = clock.sleep(timeout) => Err(BrokerError::Timeout { operation: operation.to_owned() }),
    }
}

/// A watch the task can hold while `&self` crosses an await (`KvWatch` is `Send` but not
/// `Sync`; the mutex is only ever accessed through `get_mut`, never locked).
type HeldWatch = std::sync::Mutex<KvWatch>;

/// At most this many waiting watch entries are handled before a round's timers run.
const DRAIN_MAX: usize = 10_000;

async fn next_entry(watch: &mut Option<HeldWatch>) -> Option<KvEntry> {
    match watch {
        Some(w) => w.get_mut().unwrap_or_else(|e| e.into_inner()).next().await,
        None => std::future::pending().await,
    }
}

enum Wake {
    Shutdown,
    Member(Option<KvEntry>),
    Lease(Option<KvEntry>),
    Assignment(Option<KvEntry>),
    Timer,
}

pub(crate) struct NodeTask<B: Broker, C: Clock> {
    pub(super) rt: Runtime<B, C>,
    pub(super) config: Arc<ClusterConfig>,
    pub(super) shared: Arc<Shared>,
    pub(super) me: NodeId,
    pub(super) incarnation: String,
    pub(super) member_revision: u64,
    pub(super) lease: Option<OwnLease>,
    /// The largest token this node ever led under (tokens must grow).
    pub(super) last_own_token: u64,
    /// Latest assignment seen in KV, with its revision (for the leader's update-at-revision).
    pub(super) latest: Option<(Arc<Assignment>, u64)>,
    pub(super) applied: Option<Arc<Assignment>>,
    pub(super) hosted: BTreeSet<ShardId>,
    pub(super) members: BTreeSet<NodeId>,
    pub(super) member_watch: Option<HeldWatch>,
    pub(super) lease_watch: Option<HeldWatch>,
    pub(super) assignment_watch: Option<HeldWatch>,
    /// No watch is (re)created before this: a watch that ends at once (the broker is
    /// unreachable) must not turn the loop into a spin that retries without time passing.
    pub(super) watch_retry_at: Duration,
    pub(super) next_heartbeat: Duration,
    pub(super) next_poll: Duration,
    /// Membership changed since the leader last considered publishing.
    pub(super) members_dirty: bool,
}

impl<B: Broker, C: Clock> NodeTask<B, C> {
    pub fn new(
        rt: Runtime<B, C>,
        config: Arc<ClusterConfig>,
        shared: Arc<Shared>,
        incarnation: String,
        member_revision: u64,
    ) -> Self {
        let me = rt.node_id().clone();
        Self {
            rt,
            config,
            shared,
            me,
            incarnation,
            member_revision,
            lease: None,
            last_own_token: 0,
            latest: None,
            applied: None,
            hosted: BTreeSet::new(),
            members: BTreeSet::new(),
            member_watch: None,
            lease_watch: None,
            assignment_watch: None,
            watch_retry_at: Duration::ZERO,
            next_heartbeat: Duration::ZERO,
            next_poll: Duration::ZERO,
            members_dirty: true,
        }
    }

    pub(super) fn now(&self) -> Duration {
        self.rt.clock().monotonic()
    }

    pub(super) fn emit(&self, kind: ClusterEventKind) {
        self.shared.emit(&self.me, self.now(), kind);
    }

    pub(super) async fn op<T>(
        &self,
        operation: &str,
        op: impl Future<Output = Result<T, BrokerError>>,
    ) -> Result<T, BrokerError> {
        bounded(
            self.rt.clock(),
            self.config.operation_timeout,
            operation,
            op,
        )
        .await
    }

    /// Whether this node may perform a leader action right now.
    pub(super) fn acting(&self) -> Option<OwnLease> {
        let now = self.now();
        self.lease.filter(|l| now < l.deadline)
    }

    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        self.emit(ClusterEventKind::MemberJoined {
            member: self.me.clone(),
        });
        loop {
            if *shutdown.borrow() {
                break;
            }
            self.ensure_watches().await;
            self.enforce_deadline();
            let now = self.now();
            let mut wake_at = self.next_heartbeat.min(self.next_poll);
            if let Some(l) = self.lease {
                wake_at = wake_at.min(l.renew_at).min(l.deadline);
            }
            if self.watches_missing() {
                wake_at = wake_at.min(self.watch_retry_at);
            }
            let clock = self.rt.clock().clone();
            let wake = tokio::select! {
                biased;
                _ = shutdown.changed() => Wake::Shutdown,
                e = next_entry(&mut self.lease_watch) => Wake::Lease(e),
                e = next_entry(&mut self.assignment_watch) => Wake::Assignment(e),
                e = next_entry(&mut self.member_watch) => Wake::Member(e),
                _ = clock.sleep(wake_at.saturating_sub(now)) => Wake::Timer,
            };
            match wake {
                Wake::Shutdown => break,
                Wake::Member(None) => self.watch_ended(|t| &mut t.member_watch),
                Wake::Lease(None) => self.watch_ended(|t| &mut t.lease_watch),
                Wake::Assignment(None) => self.watch_ended(|t| &mut t.assignment_watch),
                Wake::Member(Some(e)) => self.on_member_entry(&e),
                Wake::Lease(Some(e)) => self.on_lease_entry(&e).await,
                Wake::Assignment(Some(e)) => self.on_assignment_entry(&e).await,
                Wake::Timer => {}
            }
            self.drain_watches().await;
            self.on_timers().await;
        }
        self.shut_down().await;
    }

    /// Handles every watch entry that is already waiting before the round's timers run. One
    /// entry per round would let a backlog build whenever a round's broker work (heartbeat,
    /// renewal, polls) takes longer than the entries take to arrive — on a slow link (200 ms
    /// round trips) membership entries queued by the thousand and the task spun through
    /// them, retrying its broker work for each.
    async fn drain_watches(&mut self) {
        use futures::FutureExt as _;
        for _ in 0..DRAIN_MAX {
            if let Some(entry) = next_entry(&mut self.member_watch).now_or_never() {
                match entry {
                    Some(e) => self.on_member_entry(&e),
                    None => self.watch_ended(|t| &mut t.member_watch),
                }
            } else if let Some(entry) = next_entry(&mut self.lease_watch).now_or_never() {
                match entry {
                    Some(e) => self.on_lease_entry(&e).await,
                    None => self.watch_ended(|t| &mut t.lease_watch),
                }
            } else if let Some(entry) = next_entry(&mut self.assignment_watch).now_or_never() {
                match entry {
                    Some(e) => self.on_assignment_entry(&e).await,
                    None => self.watch_ended(|t| &mut t.assignment_watch),
                }
            } else {
                return;
            }
        }
    }

    fn watches_missing(&self) -> bool {
        self.member_watch.is_none() || self.lease_watch.is_none() || self.assignment_watch.is_none()
    }

    /// A watch ended (its connection broke): it is re-created after a pause, and the polls
    /// cover the gap meanwhile.
    fn watch_ended(&mut self, watch: fn(&mut Self) -> &mut Option<HeldWatch>) {
        *watch(self) = None;
        self.watch_retry_at = self
            .watch_retry_at
            .max(self.now() + self.config.heartbeat_interval);
    }

    async fn ensure_watches(&mut self) {
        if !self.watches_missing() || self.now() < self.watch_retry_at {
            return;
        }
        // Whatever happens below, the next attempt waits.
        self.watch_retry_at = self.now() + self.config.heartbeat_interval;
        let buckets = self.config.buckets();
        if self.member_watch.is_none() {
            self.member_watch = self
                .op(
                    "watch members",
                    self.rt.broker().kv_watch(&buckets.members, ">"),
                )
                .await
                .ok()
                .map(HeldWatch::new);
        }
        if self.lease_watch.is_none() {
            self.lease_watch = self
                .op(
                    "watch lease",
                    self.rt.broker().kv_watch(&buckets.leader, LEASE_KEY),
                )
                .await
                .ok()
                .map(HeldWatch::new);
        }
        if self.assignment_watch.is_none() {
            self.assignment_watch = self
                .op(
                    "watch assignment",
                    self.rt
                        .broker()
                        .kv_watch(&buckets.assignment, ASSIGNMENT_KEY),
                )
                .await
                .ok()
                .map(HeldWatch::new);
        }
    }

    async fn on_timers(&mut self) {
        self.enforce_deadline();
        let now = self.now();
        if now >= self.next_heartbeat {
            self.heartbeat().await;
            self.next_heartbeat = self.now() + self.config.heartbeat_interval;
        }
        if self.lease.is_some_and(|l| self.now() >= l.renew_at) {
            self.renew().await;
        }
        if self.now() >= self.next_poll {
            self.refresh_members().await;
            self.poll_lease().await;
            self.poll_assignment().await;
            let jitter = self
                .rt
                .rng()
                .duration_between(Duration::ZERO, self.config.poll_jitter);
            self.next_poll = self.now() + self.config.poll_interval + jitter;
        }
        // Planted bug: trust the lease as checked at the top of the round.
        let stale_ok = crate::planted::planted!(self.rt, leader_publishes_after_deadline);
        if self.members_dirty && (self.acting().is_some() || stale_ok && self.lease.is_some()) {
            self.maybe_publish().await;
        }
        self.enforce_deadline();
    }

    // ---- shutdown ----

    async fn shut_down(&mut self) {
        let buckets = self.config.buckets();
        if let Some(lease) = self.lease {
            self.step_down(StepDownReason::Released, self.now());
            let record = LeaseRecord {
                holder: self.me.clone(),
                incarnation: self.incarnation.clone(),
                token: Some(lease.token),
                released: true,
            }
            .encode();
            let _ = self
                .op(
                    "release lease",
                    self.rt
                        .broker()
                        .kv_update(&buckets.leader, LEASE_KEY, record, lease.revision),
                )
                .await;
        }
        if !self.hosted.is_empty() {
            let shards: Vec<ShardId> = std::mem::take(&mut self.hosted).into_iter().collect();
            self.shared.update(|v| v.hosted.clear());
            self.emit(ClusterEventKind::ShardsReleased {
                epoch: self.applied.as_ref().map_or(0, |a| a.epoch()),
                shards,
            });
        }
        let _ = self
            .op(
                "leave",
                self.rt
                    .broker()
                    .kv_delete(&buckets.members, self.me.as_str()),
            )
            .await;
        self.shared.update(|v| v.running = false);
        self.emit(ClusterEventKind::Stopped);
    }
}
