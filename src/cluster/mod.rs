//! The cluster: membership, leader election with fencing tokens, shards, and the leader's
//! balanced shard assignment — all through broker KV operations, on the injected clock.
//!
//! - **Membership** ([`membership`]): each node heartbeats a KV entry under its [`NodeId`] in
//!   a bucket with a TTL; a node's members are the bucket's live keys.
//! - **Leader election** ([`election`]): a lease key created only if absent and renewed by
//!   update-at-revision; the leader steps down on its own monotonic clock before the server's
//!   TTL can lapse. The lease's KV revision is the **fencing token**; tokens only grow.
//! - **Shards** ([`shard`], [`ring`]): `shard_of(actor) = stable_hash(actor) mod shard_count`
//!   ([`hash`]); a [`HashRing`] with virtual nodes places shards when no assignment exists.
//! - **Placement** ([`placement`]): balanced, minimal-move shard placement.
//! - **Assignment** ([`assignment`]): the leader publishes a [`Placement`] stamped with an
//!   epoch; nodes apply only newer epochs and stop hosting a shard before they acknowledge the
//!   assignment that takes it away.
//! - [`node`](self) runs all of it on one task per node: the loop, its timers and watches.
//! - **Observation** ([`view`]): [`Cluster::view`] snapshots one node's knowledge;
//!   [`ClusterEvent`]s, stamped with the node's clock, record every change. From outside the
//!   cluster, [`inspect`] reads what its buckets hold (members, leader, assignment).
//!
//! ```
//! use aether::cluster::{Cluster, ClusterConfig, NodeId};
//! use aether::{MemoryBroker, Runtime};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = MemoryBroker::new();
//! let rt = Runtime::system(broker.clone()).with_node(NodeId::new("node-1")?);
//! let node = Cluster::start(rt, ClusterConfig::new()).await?;
//! // A single node elects itself and publishes the first assignment.
//! while node.view().epoch().is_none() {
//!     tokio::time::sleep(std::time::Duration::from_millis(50)).await;
//! }
//! assert!(node.is_leader());
//! assert_eq!(node.owner_of("account-1"), Some(NodeId::new("node-1")?));
//! node.stop().await;
//! # Ok(())
//! # }
//! ```
//!
//! A node's id is its [`Runtime`]'s. All nodes of one cluster must share the [`ClusterConfig`]
//! (cluster name, shard config and timings): the buckets are created by the first node with its
//! TTLs, and a node with another shard count ignores the assignment.

pub mod assignment;
pub mod election;
pub mod hash;
mod inspect;
pub mod membership;
mod node;
pub mod placement;
pub mod ring;
pub mod shard;
pub mod view;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::rt::JoinHandle;
use tokio::sync::{broadcast, watch};

pub use crate::node::NodeId;
pub use assignment::{Assignment, AssignmentDecodeError};
pub use inspect::{ClusterSnapshot, ShardLoad, inspect};
pub use placement::Placement;
pub use ring::HashRing;
pub use shard::{ClusterInputError, ShardConfig, ShardId, shard_of};
pub use view::{
    ClusterEvent, ClusterEventKind, ClusterEvents, ClusterView, EVENT_QUEUE_MAX, EventsError,
    LeaderInfo, Leadership, Observer, StepDownReason,
};

use crate::broker::subject::validate_name;
use crate::broker::{Broker, BrokerError, KvConfig, StorageKind};
use crate::clock::Clock;
use crate::names::ClusterBuckets;
use crate::runtime::Runtime;
use crate::telemetry;

/// The key of the published assignment in the assignment bucket.
pub const ASSIGNMENT_KEY: &str = "assignment";

/// The key under which `node` acknowledges the epoch it applied.
pub fn ack_key(node: &NodeId) -> String {
    format!("ack.{node}")
}

/// Default cluster name (prefix of the KV bucket names).
pub const CLUSTER_NAME_DEFAULT: &str = "aether";

/// Configuration of the cluster, the same on every node (a node's id is its
/// [`Runtime`]'s).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterConfig {
    /// Cluster name: the buckets are `<name>-members`, `<name>-leader`, `<name>-assignment`.
    pub name: String,
    /// Shard count, replication factor, virtual nodes.
    pub shards: ShardConfig,
    /// How often a node rewrites its membership entry (default 500 ms).
    pub heartbeat_interval: Duration,
    /// TTL of membership entries: a node silent this long is no longer a member (default 2 s).
    pub member_ttl: Duration,
    /// Server-side TTL of the lease key (default 3 s).
    pub lease_ttl: Duration,
    /// How often the leader renews (default 750 ms).
    pub lease_renew_interval: Duration,
    /// How long after sending its last successful lease write the leader stops acting unless
    /// renewed (default 2 s). Must be below `lease_ttl`; the difference is the margin for clock
    /// drift between this node and the server.
    pub lease_step_down_after: Duration,
    /// How often a node re-reads members, lease and assignment in full (default 250 ms); watches
    /// deliver most changes sooner, but TTL expiry is only seen by reading.
    pub poll_interval: Duration,
    /// Random extra delay added to each poll, up to this (default 50 ms), so nodes do not poll
    /// in lockstep.
    pub poll_jitter: Duration,
    /// Bound on every broker operation (default 1 s).
    pub operation_timeout: Duration,
    /// Replicas of the cluster's KV buckets (3 on a 3-server NATS cluster).
    pub kv_replicas: usize,
}

impl ClusterConfig {
    /// The defaults.
    pub fn new() -> Self {
        Self {
            name: CLUSTER_NAME_DEFAULT.to_owned(),
            shards: ShardConfig::default(),
            heartbeat_interval: Duration::from_millis(500),
            member_ttl: Duration::from_secs(2),
            lease_ttl: Duration::from_secs(3),
            lease_renew_interval: Duration::from_millis(750),
            lease_step_down_after: Duration::from_secs(2),
            poll_interval: Duration::from_millis(250),
            poll_jitter: Duration::from_millis(50),
            operation_timeout: Duration::from_secs(1),
            kv_replicas: 1,
        }
    }

    /// Checks the configuration.
    ///
    /// # Errors
    /// [`ClusterInputError`] for a bad name, shard config or timing.
    pub fn validate(&self) -> Result<(), ClusterInputError> {
        if validate_name("cluster", &self.name).is_err() {
            return Err(ClusterInputError::InvalidClusterName {
                name: self.name.clone(),
            });
        }
        self.shards.validate()?;
        let bad = |reason: &str| {
            Err(ClusterInputError::InvalidTiming {
                reason: reason.to_owned(),
            })
        };
        let min_ttl = Duration::from_millis(100);
        if self.heartbeat_interval.is_zero()
            || self.poll_interval.is_zero()
            || self.operation_timeout.is_zero()
            || self.lease_renew_interval.is_zero()
        {
            return bad("intervals and timeouts must be positive");
        }
        if self.member_ttl < min_ttl || self.lease_ttl < min_ttl {
            return bad("member_ttl and lease_ttl must be at least 100 ms (the server's minimum)");
        }
        if self.member_ttl < self.heartbeat_interval * 2 {
            return bad("member_ttl must be at least twice heartbeat_interval");
        }
        if !(self.lease_renew_interval < self.lease_step_down_after
            && self.lease_step_down_after < self.lease_ttl)
        {
            return bad("need lease_renew_interval < lease_step_down_after < lease_ttl");
        }
        if self.kv_replicas == 0 {
            return bad("kv_replicas must be at least 1");
        }
        Ok(())
    }

    /// The cluster's KV buckets.
    pub fn buckets(&self) -> ClusterBuckets {
        ClusterBuckets::new(&self.name)
    }

    /// Sets the cluster name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the shard configuration.
    pub fn shards(mut self, shards: ShardConfig) -> Self {
        self.shards = shards;
        self
    }

    /// Sets the replicas of the cluster's KV buckets.
    pub fn kv_replicas(mut self, replicas: usize) -> Self {
        self.kv_replicas = replicas;
        self
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// Why a node could not start.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Invalid(#[from] ClusterInputError),
    /// A live node already uses this id.
    #[error("node id {node} is already in use by a live node")]
    DuplicateNodeId {
        /// The id.
        node: NodeId,
    },
    /// The broker failed while creating the buckets or joining.
    #[error("could not join the cluster: {0}")]
    Broker(#[from] BrokerError),
}

/// Where a command for an actor goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The actor's shard.
    pub shard: ShardId,
    /// Primary then standbys.
    pub owners: Vec<NodeId>,
    /// The assignment epoch the route comes from; `None` when it comes from the hash ring
    /// because no assignment has been seen yet.
    pub epoch: Option<u64>,
}

/// State shared between the handle and the node task.
pub(crate) struct Shared {
    view: Mutex<ClusterView>,
    ring: Mutex<Option<Arc<HashRing>>>,
    events: broadcast::Sender<ClusterEvent>,
    observer: Option<Observer>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, ClusterView> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut ClusterView)) {
        f(&mut self.lock());
    }

    /// Sets the observed leader; whether it changed.
    pub(crate) fn set_leader(&self, leader: Option<LeaderInfo>) -> bool {
        let mut v = self.lock();
        if v.leader == leader {
            return false;
        }
        v.leader = leader;
        true
    }

    pub(crate) fn set_members(&self, members: &BTreeSet<NodeId>, shards: &ShardConfig) {
        let ring = HashRing::new(members.iter().cloned(), shards.virtual_nodes)
            .expect("members are distinct and the config is valid");
        *self.ring.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(ring));
        self.lock().members = members.clone();
    }

    pub(crate) fn emit(&self, node: &NodeId, at: Duration, kind: ClusterEventKind) {
        record(node, &kind);
        let event = ClusterEvent {
            node: node.clone(),
            at,
            kind,
        };
        if let Some(observer) = &self.observer {
            observer(&event);
        }
        let _ = self.events.send(event);
    }
}

/// Logs a node's cluster event and records its metrics: changes at `info` (they are rare in
/// steady state), renewals and acknowledgements at `debug`, losing leadership and a duplicate
/// node id at `warn`.
fn record(node: &NodeId, kind: &ClusterEventKind) {
    use ClusterEventKind as K;
    let label = || ("node", node.to_string());
    match kind {
        K::MemberJoined { member } => tracing::info!(%node, %member, "cluster member joined"),
        K::MemberLeft { member } => tracing::info!(%node, %member, "cluster member left"),
        K::LeaderObserved { leader } => match leader {
            Some(l) => tracing::info!(%node, leader = %l.node, term = l.token, "leader observed"),
            None => tracing::info!(%node, "no live leader"),
        },
        K::LeadershipAcquired { token, .. } => {
            tracing::info!(%node, term = token, "leadership acquired");
            metrics::counter!(telemetry::CLUSTER_LEADER_CHANGES, &[label()]).increment(1);
        }
        K::LeaseRenewed { token, .. } => tracing::debug!(%node, term = token, "lease renewed"),
        K::LeadershipEnded { token, reason, .. } => match reason {
            StepDownReason::Released => {
                tracing::info!(%node, term = token, ?reason, "leadership released")
            }
            _ => tracing::warn!(%node, term = token, ?reason, "leadership lost"),
        },
        K::AssignmentPublished {
            epoch,
            token,
            moved,
            ..
        } => {
            tracing::info!(%node, epoch, term = token, moved, "assignment published");
            metrics::counter!(telemetry::CLUSTER_ASSIGNMENTS, &[label()]).increment(1);
            metrics::counter!(telemetry::CLUSTER_SHARD_MOVES, &[label()]).increment(*moved as u64);
        }
        K::ShardsReleased { epoch, shards } => {
            tracing::info!(%node, epoch, shards = shards.len(), "shards released")
        }
        K::AssignmentApplied {
            epoch,
            hosted,
            acquired,
            ..
        } => {
            tracing::info!(
                %node,
                epoch,
                hosted = hosted.len(),
                acquired = acquired.len(),
                "assignment applied"
            );
            metrics::gauge!(telemetry::CLUSTER_SHARDS_OWNED, &[label()]).set(hosted.len() as f64);
        }
        K::AssignmentAcknowledged { epoch } => {
            tracing::debug!(%node, epoch, "assignment acknowledged")
        }
        K::DuplicateNodeDetected => {
            tracing::warn!(%node, "another process uses this node id")
        }
        K::Stopped => tracing::info!(%node, "cluster node stopped"),
    }
}

/// One running cluster node: its background task and a view of the cluster. Cheap to clone;
/// clones share the node.
///
/// Dropping the last handle without [`stop`](Self::stop) aborts the task without cleanup, like
/// a crash: the node's membership and lease expire by TTL.
pub struct Cluster<B: Broker, C: Clock> {
    inner: Arc<ClusterInner<B, C>>,
}

struct ClusterInner<B: Broker, C: Clock> {
    rt: Runtime<B, C>,
    config: Arc<ClusterConfig>,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl<B: Broker, C: Clock> Clone for Cluster<B, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<B: Broker, C: Clock> std::fmt::Debug for Cluster<B, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", self.inner.rt.node_id())
            .finish_non_exhaustive()
    }
}

impl<B: Broker, C: Clock> Cluster<B, C> {
    /// Starts a node: validates the configuration, creates the buckets if needed, joins the
    /// membership and spawns the node's task on the current tokio runtime.
    ///
    /// # Errors
    /// [`StartError::Invalid`] for a bad configuration, [`StartError::DuplicateNodeId`] when a
    /// live node already uses the id, [`StartError::Broker`] when the broker fails.
    ///
    /// # Cancel safety
    /// Not cancel safe: cancelled after joining, the membership entry lingers until its TTL.
    pub async fn start(rt: Runtime<B, C>, config: ClusterConfig) -> Result<Self, StartError> {
        Self::start_inner(rt, config, None).await
    }

    /// Like [`start`](Self::start), with `observer` called synchronously for every event of
    /// this node, from the first one on (see [`view`] for what the events mean). A hook for the
    /// simulation and tests, which record events in their own time; applications subscribe to
    /// [`events`](Self::events).
    ///
    /// # Errors
    /// As [`start`](Self::start).
    #[cfg(feature = "sim")]
    pub async fn start_with_observer(
        rt: Runtime<B, C>,
        config: ClusterConfig,
        observer: impl Fn(&ClusterEvent) + Send + Sync + 'static,
    ) -> Result<Self, StartError> {
        Self::start_inner(rt, config, Some(Arc::new(observer))).await
    }

    async fn start_inner(
        rt: Runtime<B, C>,
        config: ClusterConfig,
        observer: Option<Observer>,
    ) -> Result<Self, StartError> {
        config.validate()?;
        let buckets = config.buckets();
        let broker = rt.broker();
        let bucket = |name: &str, ttl: Option<Duration>| KvConfig {
            ttl,
            replicas: config.kv_replicas,
            storage: StorageKind::File,
            ..KvConfig::new(name)
        };
        broker
            .kv_ensure(bucket(&buckets.members, Some(config.member_ttl)))
            .await?;
        broker
            .kv_ensure(bucket(&buckets.leader, Some(config.lease_ttl)))
            .await?;
        broker.kv_ensure(bucket(&buckets.assignment, None)).await?;

        let incarnation = rt.rng().uuid().to_string();
        let member_revision = membership::join(&rt, &config, &incarnation).await?;

        let (events, _) = broadcast::channel(EVENT_QUEUE_MAX);
        let shared = Arc::new(Shared {
            view: Mutex::new(ClusterView::new(rt.node_id().clone())),
            ring: Mutex::new(None),
            events,
            observer,
        });
        let config = Arc::new(config);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let task = node::NodeTask::new(
            rt.clone(),
            config.clone(),
            shared.clone(),
            incarnation,
            member_revision,
        );
        // Every line the node task logs names the node and its incarnation.
        let span = tracing::info_span!(
            "aether.cluster",
            node = %rt.node_id(),
            cluster = %config.name,
            incarnation = %task.incarnation,
        );
        let handle = crate::rt::spawn(tracing::Instrument::instrument(task.run(shutdown_rx), span));
        Ok(Self {
            inner: Arc::new(ClusterInner {
                rt,
                config,
                shared,
                shutdown,
                task: Mutex::new(Some(handle)),
            }),
        })
    }

    /// Stops the node cleanly: releases the lease if it leads (so another node takes over at
    /// once), stops hosting, deletes its membership entry and ends the task. Idempotent.
    ///
    /// # Cancel safety
    /// Cancel safe: the task finishes its shutdown on its own.
    pub async fn stop(&self) {
        let _ = self.inner.shutdown.send(true);
        let handle = self
            .inner
            .task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(handle) = handle {
            let _ = handle.await;
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> &NodeId {
        self.inner.rt.node_id()
    }

    /// The configuration.
    pub fn config(&self) -> &ClusterConfig {
        &self.inner.config
    }

    /// A snapshot of this node's view.
    pub fn view(&self) -> ClusterView {
        self.inner.shared.lock().clone()
    }

    /// Whether this node may act as leader now (holds the lease and its deadline has not
    /// passed on its clock).
    pub fn is_leader(&self) -> bool {
        self.inner
            .shared
            .lock()
            .is_leader_at(self.inner.rt.clock().monotonic())
    }

    /// The leader as last read from the lease key.
    pub fn leader(&self) -> Option<LeaderInfo> {
        self.inner.shared.lock().leader.clone()
    }

    /// The assignment this node applied.
    pub fn assignment(&self) -> Option<Arc<Assignment>> {
        self.inner.shared.lock().assignment.clone()
    }

    /// The shard of `actor_id`.
    pub fn shard_of(&self, actor_id: &str) -> ShardId {
        self.inner.config.shards.shard_of(actor_id)
    }

    /// Whether this node hosts `shard` (is its primary under the applied assignment).
    pub fn hosts(&self, shard: ShardId) -> bool {
        self.inner.shared.lock().hosted.contains(&shard)
    }

    /// Where commands for `actor_id` go: the applied assignment's owners, or — before any
    /// assignment was seen — the hash ring over the current members. `None` when no member is
    /// known, and after [`stop`](Self::stop).
    pub fn route(&self, actor_id: &str) -> Option<Route> {
        if *self.inner.shutdown.borrow() {
            // A stopped node's view is frozen: routing by it would send commands to owners it
            // no longer tracks.
            return None;
        }
        let shard = self.shard_of(actor_id);
        if let Some(a) = self.assignment() {
            return Some(Route {
                shard,
                owners: a.placement().replicas(shard).cloned().collect(),
                epoch: Some(a.epoch()),
            });
        }
        let ring = self
            .inner
            .shared
            .ring
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        let owners: Vec<NodeId> = ring
            .replicas_of(shard, self.inner.config.shards.replication_factor)
            .into_iter()
            .cloned()
            .collect();
        (!owners.is_empty()).then_some(Route {
            shard,
            owners,
            epoch: None,
        })
    }

    /// The primary owner of `actor_id`'s shard (see [`route`](Self::route)).
    pub fn owner_of(&self, actor_id: &str) -> Option<NodeId> {
        self.route(actor_id).map(|r| r.owners[0].clone())
    }

    /// Subscribes to this node's events from now on (bounded by [`EVENT_QUEUE_MAX`]).
    pub fn events(&self) -> ClusterEvents {
        ClusterEvents {
            inner: self.inner.shared.events.subscribe(),
        }
    }

    /// Epochs acknowledged by each node, as stored in KV.
    ///
    /// # Errors
    /// When the broker fails.
    pub async fn acknowledgements(
        &self,
    ) -> Result<std::collections::BTreeMap<NodeId, u64>, BrokerError> {
        let entries = self
            .inner
            .rt
            .broker()
            .kv_entries(&self.inner.config.buckets().assignment)
            .await?;
        Ok(entries
            .into_iter()
            .filter_map(|e| {
                let node = NodeId::new(e.key.strip_prefix("ack.")?).ok()?;
                let epoch = std::str::from_utf8(&e.value).ok()?.parse().ok()?;
                Some((node, epoch))
            })
            .collect())
    }
}

impl<B: Broker, C: Clock> Drop for ClusterInner<B, C> {
    fn drop(&mut self) {
        if let Some(handle) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            handle.abort();
        }
    }
}

impl<B: Broker, C: Clock> crate::actor::Router for Cluster<B, C> {
    fn owner_of(&self, actor_id: &str) -> Option<NodeId> {
        Cluster::owner_of(self, actor_id)
    }

    /// Only from the assignment this node has applied (never from the ring fallback): a command
    /// is executed by the owner under an epoch the node knows, or not at all.
    fn ownership(&self, actor_id: &str) -> Option<crate::actor::Ownership> {
        if *self.inner.shutdown.borrow() {
            return None;
        }
        let applied = self.assignment()?;
        let owner = applied.placement().owner(self.shard_of(actor_id)).clone();
        Some(crate::actor::Ownership::new(owner, Some(applied.epoch())))
    }

    /// Stops this node (see [`Cluster::stop`]): its shards move to the others.
    fn leave(&self) -> impl std::future::Future<Output = ()> + Send {
        self.stop()
    }
}
