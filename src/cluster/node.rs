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

use super::assignment::{Assignment, Placement};
use super::election::{LEASE_KEY, LeaseRecord, LeaseState, OwnLease};
use super::membership::MemberRecord;
use super::shard::{NodeId, ShardConfig, ShardId};
use super::view::{ClusterEventKind, Leadership, StepDownReason};
use super::{ASSIGNMENT_KEY, ClusterConfig, Shared, ack_key};
use crate::broker::{Broker, BrokerError, KvEntry, KvOperation, KvWatch};
use crate::clock::{Clock, Runtime};

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
    pub rt: Runtime<B, C>,
    pub config: Arc<ClusterConfig>,
    pub shared: Arc<Shared>,
    pub me: NodeId,
    pub incarnation: String,
    pub member_revision: u64,
    lease: Option<OwnLease>,
    /// The largest token this node ever led under (tokens must grow).
    last_own_token: u64,
    /// Latest assignment seen in KV, with its revision (for the leader's update-at-revision).
    latest: Option<(Arc<Assignment>, u64)>,
    applied: Option<Arc<Assignment>>,
    hosted: BTreeSet<ShardId>,
    members: BTreeSet<NodeId>,
    member_watch: Option<HeldWatch>,
    lease_watch: Option<HeldWatch>,
    assignment_watch: Option<HeldWatch>,
    next_heartbeat: Duration,
    next_poll: Duration,
    /// Membership changed since the leader last considered publishing.
    members_dirty: bool,
}

impl<B: Broker, C: Clock> NodeTask<B, C> {
    pub fn new(
        rt: Runtime<B, C>,
        config: Arc<ClusterConfig>,
        shared: Arc<Shared>,
        incarnation: String,
        member_revision: u64,
    ) -> Self {
        let me = config.node_id.clone();
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
            next_heartbeat: Duration::ZERO,
            next_poll: Duration::ZERO,
            members_dirty: true,
        }
    }

    fn now(&self) -> Duration {
        self.rt.clock().monotonic()
    }

    fn emit(&self, kind: ClusterEventKind) {
        self.shared.emit(&self.me, self.now(), kind);
    }

    async fn op<T>(
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
    fn acting(&self) -> Option<OwnLease> {
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
                Wake::Member(None) => self.member_watch = None,
                Wake::Lease(None) => self.lease_watch = None,
                Wake::Assignment(None) => self.assignment_watch = None,
                Wake::Member(Some(e)) => self.on_member_entry(&e),
                Wake::Lease(Some(e)) => self.on_lease_entry(&e).await,
                Wake::Assignment(Some(e)) => self.on_assignment_entry(&e).await,
                Wake::Timer => {}
            }
            self.on_timers().await;
        }
        self.shut_down().await;
    }

    async fn ensure_watches(&mut self) {
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
        if self.members_dirty && self.acting().is_some() {
            self.maybe_publish().await;
        }
        self.enforce_deadline();
    }

    // ---- membership ----

    async fn heartbeat(&mut self) {
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

    fn set_members(&mut self, members: BTreeSet<NodeId>) {
        if members == self.members {
            return;
        }
        let joined: Vec<NodeId> = members.difference(&self.members).cloned().collect();
        let left: Vec<NodeId> = self.members.difference(&members).cloned().collect();
        self.members = members;
        self.members_dirty = true;
        self.shared.set_members(&self.members, &self.config.shards);
        for member in joined.into_iter().filter(|m| *m != self.me) {
            self.emit(ClusterEventKind::MemberJoined { member });
        }
        for member in left.into_iter().filter(|m| *m != self.me) {
            self.emit(ClusterEventKind::MemberLeft { member });
        }
    }

    fn on_member_entry(&mut self, entry: &KvEntry) {
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

    async fn refresh_members(&mut self) {
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

    // ---- leadership ----

    fn observe_lease(&mut self, state: &LeaseState) {
        let leader = state.leader().cloned();
        if self.shared.set_leader(leader.clone()) {
            self.emit(ClusterEventKind::LeaderObserved { leader });
        }
    }

    /// The deadline for a lease write sent at `sent_at` and acknowledged at `acked_at`.
    fn deadline_for(&self, sent_at: Duration, acked_at: Duration) -> Duration {
        if crate::planted!(self.rt, leader_ignores_lease_deadline) {
            // Planted bug: trust the server's TTL, counted from when the reply arrived.
            acked_at + self.config.lease_ttl
        } else {
            sent_at + self.config.lease_step_down_after
        }
    }

    fn enforce_deadline(&mut self) {
        if let Some(l) = self.lease
            && self.now() >= l.deadline
        {
            self.step_down(StepDownReason::DeadlineReached, l.deadline);
        }
    }

    fn step_down(&mut self, reason: StepDownReason, acted_until: Duration) {
        let Some(l) = self.lease.take() else {
            return;
        };
        let acted_until = acted_until.min(l.deadline);
        self.shared.update(|v| v.leadership = None);
        tracing::info!(node = %self.me, token = l.token, ?reason, "stepped down");
        self.emit(ClusterEventKind::LeadershipEnded {
            token: l.token,
            acted_until,
            reason,
        });
    }

    async fn on_lease_entry(&mut self, entry: &KvEntry) {
        let state = LeaseState::of(Some(entry));
        self.observe_lease(&state);
        if self.lease.is_none() {
            self.try_acquire(state).await;
        }
    }

    async fn poll_lease(&mut self) {
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

    async fn try_acquire(&mut self, state: LeaseState) {
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

    fn become_leader(&mut self, token: u64, sent_at: Duration, acked_at: Duration) {
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
        tracing::info!(node = %self.me, token, "became leader");
        self.emit(ClusterEventKind::LeadershipAcquired { token, deadline });
        if self.shared.set_leader(Some(leader.clone())) {
            self.emit(ClusterEventKind::LeaderObserved {
                leader: Some(leader),
            });
        }
        self.members_dirty = true;
    }

    async fn renew(&mut self) {
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
        let result = self
            .op(
                "renew lease",
                self.rt
                    .broker()
                    .kv_update(&bucket, LEASE_KEY, record, lease.revision),
            )
            .await;
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

    // ---- assignment ----

    async fn poll_assignment(&mut self) {
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

    fn decode_assignment(&self, entry: &KvEntry) -> Option<Arc<Assignment>> {
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

    async fn on_assignment_entry(&mut self, entry: &KvEntry) {
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
        self.apply(a).await;
    }

    async fn apply(&mut self, a: Arc<Assignment>) {
        let previous_epoch = self.applied.as_ref().map(|p| p.epoch());
        if previous_epoch == Some(a.epoch()) {
            return;
        }
        if previous_epoch.is_some_and(|p| a.epoch() < p)
            && !crate::planted!(self.rt, apply_assignment_out_of_order)
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

    async fn acknowledge(&mut self, epoch: u64) {
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

    async fn maybe_publish(&mut self) {
        let Some(lease) = self.acting() else {
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
        if self.acting().is_none() {
            return;
        }
        let value = assignment.encode();
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
                tracing::info!(node = %self.me, epoch, moved, "published assignment");
                self.emit(ClusterEventKind::AssignmentPublished {
                    epoch,
                    token: lease.token,
                    moved,
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
