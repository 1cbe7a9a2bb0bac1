//! The cluster scenario: every node runs the cluster layer (`src/cluster`: KV membership, lease
//! election with fencing tokens, balanced assignment) on the simulated broker, plus an
//! owner-based writer; the last node joins and leaves repeatedly during the safety phase; the
//! fault injector adds leader churn (the current leader is crashed, partitioned, or slowed and
//! then cut off, sometimes with a slow clock) on top of the usual faults.
//!
//! What the nodes report, through the cluster's synchronous observer, becomes
//! [`ClusterObservation`]s in the history, stamped with true time; the node's own clock readings
//! in them (deadlines, `acted_until`, `sent_at`) are turned into true time after the run, when
//! every rate change of the node's clock is known (see [`ClusterObservation::to_true_time`]):
//!
//! - `leadership` (invariant 6) checks that terms never overlap and tokens grow;
//! - `ownership` (invariant 7) checks one owner per shard per epoch and epochs applied in order;
//! - owner-based writers append only to actors whose shard their node hosts, with `Exact`
//!   versions, so a stale owner's append can only fail as a conflict — `expected_version`
//!   (invariant 4) fails the run on two successes at one version;
//! - `liveness` (invariant 8) checks, on view snapshots taken every second of the liveness
//!   phase, that after the bound there is exactly one leader everyone agrees on, one epoch on
//!   every node, every shard hosted by exactly one live node;
//! - every node also hosts a counter aggregate in an [`ActorHost`] routed by its cluster, serves
//!   remote commands, and sends counter commands (`Command` operations) for a few actors through
//!   `ActorHost::send`: `liveness` checks that every command sent once the cluster must have
//!   converged is answered with an outcome within the bound, `commands` that an answered
//!   command's event is in the final stream at the version it reported (and that a definite
//!   failure stored nothing).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::NodeSoftware;
use crate::broker::SimBroker;
use crate::clock::SimClock;
use crate::history::{ClusterObservation, EventDigest, OpKind, Outcome};
use crate::workload::{NodeContext, Recorder, below, open_store};
use aether::actor::{ActorConfig, ActorHost, Router};
use aether::broker::Broker;
use aether::clock::{Clock, SharedRng};
use aether::cluster::{
    Cluster, ClusterConfig, ClusterEvent, ClusterEventKind, NodeId, ShardConfig,
};
use aether::event::ExpectedVersion;
use aether::runtime::Runtime;
use aether::store::{AppendError, EventStore};

/// A cluster node in the simulation.
pub type SimCluster = Cluster<SimBroker, SimClock>;

/// Cluster workload settings.
#[derive(Clone, Debug)]
pub struct ClusterWorkload {
    /// Actors in the pool owner-based writers draw from.
    pub actors: usize,
    /// Shards of the simulated cluster (small, so that ownership moves are frequent and cheap
    /// to check).
    pub shard_count: u32,
    /// Pause between a writer's appends.
    pub think: (Duration, Duration),
    /// Whether the last node joins and leaves during the safety phase (it starts outside).
    pub joiner: bool,
    /// How long the joiner stays a member each time.
    pub member_span: (Duration, Duration),
    /// How long it stays away.
    pub away_span: (Duration, Duration),
    /// Counter actors every node sends commands to through its `ActorHost`.
    pub counters: usize,
    /// Pause between a node's commands.
    pub command_think: (Duration, Duration),
    /// A user's aggregate run by every node next to the counters ([`crate::harness`]).
    pub user: Option<crate::harness::UserPart>,
    /// Replicas of the cluster's KV buckets (1 on the simulated broker; 3 on a real
    /// three-server cluster, the nemesis).
    pub kv_replicas: usize,
}

impl Default for ClusterWorkload {
    fn default() -> Self {
        Self {
            actors: 64,
            shard_count: 64,
            think: (Duration::from_millis(30), Duration::from_millis(250)),
            joiner: true,
            member_span: (Duration::from_secs(2), Duration::from_secs(7)),
            away_span: (Duration::from_secs(1), Duration::from_secs(4)),
            counters: 6,
            command_think: (Duration::from_millis(50), Duration::from_millis(300)),
            user: None,
            kv_replicas: 1,
        }
    }
}

impl ClusterWorkload {
    /// Actors whose streams are checked.
    pub fn actors(&self) -> Vec<String> {
        (0..self.actors).map(|i| format!("acct-{i}")).collect()
    }

    /// Counter actors commands are sent to (hosted by `ActorHost`s).
    pub fn counters(&self) -> Vec<String> {
        (0..self.counters).map(|i| format!("ctr-{i}")).collect()
    }

    /// The cluster configuration (library defaults but the shard count); a node's id is its
    /// runtime's.
    pub fn config(&self) -> ClusterConfig {
        ClusterConfig::new()
            .shards(ShardConfig::with_shard_count(self.shard_count))
            .kv_replicas(self.kv_replicas)
    }
}

/// The node software.
pub fn node(
    ctx: NodeContext,
    workload: ClusterWorkload,
    nodes: usize,
    safety: Duration,
) -> NodeSoftware {
    Box::pin(cluster_node(ctx, workload, nodes, safety))
}

/// Reports a node's cluster events to the history, in true time.
fn observer(ctx: &impl Recorder) -> impl Fn(&ClusterEvent) + Send + Sync + 'static {
    let recorder = ctx.clone();
    move |event: &ClusterEvent| {
        let shards = |s: &[aether::cluster::ShardId]| s.iter().map(|s| s.0).collect::<Vec<_>>();
        let observation = match &event.kind {
            ClusterEventKind::LeadershipAcquired { token, deadline } => {
                ClusterObservation::Leading {
                    token: *token,
                    deadline: *deadline,
                }
            }
            ClusterEventKind::LeaseRenewed {
                token,
                deadline,
                sent_at,
            } => ClusterObservation::Renewed {
                token: *token,
                deadline: *deadline,
                sent_at: *sent_at,
            },
            ClusterEventKind::LeadershipEnded {
                token,
                acted_until,
                reason,
            } => ClusterObservation::Stepped {
                token: *token,
                acted_until: *acted_until,
                reason: format!("{reason:?}"),
            },
            ClusterEventKind::AssignmentPublished {
                epoch,
                token,
                sent_at,
                ..
            } => ClusterObservation::Published {
                epoch: *epoch,
                token: *token,
                sent_at: *sent_at,
            },
            ClusterEventKind::AssignmentApplied {
                epoch,
                previous_epoch,
                hosted,
                ..
            } => ClusterObservation::Applied {
                epoch: *epoch,
                previous: *previous_epoch,
                shards: shards(hosted),
            },
            ClusterEventKind::ShardsReleased { epoch, shards: s } => ClusterObservation::Released {
                epoch: *epoch,
                shards: shards(s),
            },
            ClusterEventKind::Stopped => ClusterObservation::Stopped,
            _ => return,
        };
        recorder
            .history()
            .observe(recorder.now(), recorder.name(), observation);
    }
}

/// Starts a cluster node, retrying until the broker lets it join.
async fn start_cluster<B: Broker, C: Clock>(
    ctx: &impl Recorder,
    rt: &Runtime<B, C>,
    workload: &ClusterWorkload,
) -> Arc<Cluster<B, C>> {
    loop {
        ctx.history()
            .observe(ctx.now(), ctx.name(), ClusterObservation::Started);
        match Cluster::start_with_observer(rt.clone(), workload.config(), observer(ctx)).await {
            Ok(cluster) => return Arc::new(cluster),
            Err(e) => {
                ctx.history().note(
                    ctx.now(),
                    format!("{} cluster start failed: {e}", ctx.name()),
                );
                rt.clock().sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

async fn cluster_node(
    ctx: NodeContext,
    workload: ClusterWorkload,
    nodes: usize,
    safety: Duration,
) -> crate::engine::HostResult {
    let incarnation = ctx.start();
    let rng = incarnation.rt.rng().fork();
    let store = open_store(&incarnation.rt).await;
    let user = workload.user.clone();
    let think = workload.command_think;
    let node = NodeSpec {
        index: ctx.index,
        nodes,
        incarnation: incarnation.number,
        workload,
        safety,
    };
    run_cluster_node(
        ctx.clone(),
        incarnation.rt,
        store,
        rng,
        node,
        move |store, router, rng| {
            // A user's aggregate (the harness): its host and command sender, for this
            // incarnation.
            user.as_ref().map(|user| {
                aether::rt::spawn((user.node)(crate::harness::UserNode {
                    ctx: ctx.clone(),
                    store: store.clone(),
                    router: router.clone(),
                    rng: rng.fork(),
                    think,
                }))
            })
        },
    )
    .await;
    Ok(())
}

/// Which node a cluster node is, and what it runs.
pub struct NodeSpec {
    /// Node index.
    pub index: usize,
    /// Nodes in the run (the last one is the joiner, when the workload has one).
    pub nodes: usize,
    /// This incarnation's number.
    pub incarnation: u64,
    /// The workload.
    pub workload: ClusterWorkload,
    /// End of the safety phase (true time): the joiner stays for good from then on.
    pub safety: Duration,
}

/// One incarnation of a cluster node, over any broker and clock: the counters' actor host, then
/// cluster rounds (membership, owner writer, foreign writer, view recorder, command sender) — one
/// for good, or, for the joiner, join and leave until the safety phase ends. `user` starts a
/// user's aggregate (the simulation's harness) once the store and router exist. `rng` is this
/// incarnation's generator (forked from the runtime's before the store was opened). Runs
/// forever.
pub async fn run_cluster_node<R: Recorder, B: Broker, C: Clock, U: Send>(
    ctx: R,
    rt: Runtime<B, C>,
    store: EventStore<B, C>,
    rng: SharedRng,
    node: NodeSpec,
    user: impl FnOnce(&EventStore<B, C>, &CurrentCluster<B, C>, &SharedRng) -> Option<U>,
) {
    let NodeSpec {
        index,
        nodes,
        incarnation,
        workload,
        safety,
    } = node;
    let joiner = workload.joiner && nodes > 1 && index + 1 == nodes;
    if joiner && incarnation == 1 {
        rt.clock()
            .sleep(rng.duration_between(workload.away_span.0, workload.away_span.1))
            .await;
    }
    // One actor host per incarnation (as a process would have), routed by whichever cluster
    // instance runs now: a host per cluster round would leave the previous one serving on the
    // same subject while its in-flight commands hold it alive (see docs/sim.md).
    let router = CurrentCluster::default();
    // The counters' host, when the workload has counters (a user's aggregate, or the policy
    // scenario's flow, takes their place).
    let host = if workload.counters > 0 && workload.user.is_none() {
        Some(start_host(&ctx, &rt, store.clone(), router.clone()).await)
    } else {
        None
    };
    let _user = user(&store, &router, &rng);
    for round in 0u64.. {
        let cluster = start_cluster(&ctx, &rt, &workload).await;
        let writer = aether::rt::spawn(owner_writer(
            ctx.clone(),
            store.clone(),
            cluster.clone(),
            workload.clone(),
            format!("{}.{incarnation}.{round}", ctx.name()),
            rng.fork(),
        ));
        let foreign = aether::rt::spawn(foreign_writer(
            ctx.clone(),
            store.clone(),
            cluster.clone(),
            workload.clone(),
            format!("{}.{incarnation}.{round}", ctx.name()),
            rng.fork(),
        ));
        let viewer = aether::rt::spawn(view_recorder(ctx.clone(), cluster.clone(), safety));
        router.set(Some(cluster.clone()));
        let sender = host.clone().map(|host| {
            aether::rt::spawn(command_sender(
                ctx.clone(),
                rt.clock().clone(),
                host,
                workload.clone(),
                format!("{}.{incarnation}.{round}", ctx.name()),
                rng.fork(),
            ))
        });
        let stay = rng.duration_between(workload.member_span.0, workload.member_span.1);
        if !joiner || ctx.now() + stay + Duration::from_secs(1) >= safety {
            std::future::pending::<()>().await;
        }
        aether::rt::sleep(stay).await;
        writer.abort();
        foreign.abort();
        viewer.abort();
        if let Some(sender) = sender {
            sender.abort();
        }
        router.set(None);
        cluster.stop().await;
        let away = rng.duration_between(workload.away_span.0, workload.away_span.1);
        aether::rt::sleep(away).await;
    }
}

/// Appends to actors whose shard this node hosts in its current view, with `Exact` versions.
/// An actor is loaded (replayed) when the node starts writing to it, and again after any
/// conflict or unclear outcome; an actor whose shard moved away is forgotten.
async fn owner_writer<B: Broker, C: Clock>(
    ctx: impl Recorder,
    store: EventStore<B, C>,
    cluster: Arc<Cluster<B, C>>,
    workload: ClusterWorkload,
    writer_id: String,
    rng: SharedRng,
) {
    let actors = workload.actors();
    let mut belief: BTreeMap<String, u64> = BTreeMap::new();
    for k in 0u64.. {
        store
            .runtime()
            .clock()
            .sleep(rng.duration_between(workload.think.0, workload.think.1))
            .await;
        let owned: Vec<&String> = actors
            .iter()
            .filter(|a| cluster.hosts(cluster.shard_of(a)))
            .collect();
        belief.retain(|a, _| owned.contains(&a));
        if owned.is_empty() {
            continue;
        }
        let actor = owned[below(&rng, owned.len())].clone();
        let expected = match belief.get(&actor) {
            Some(v) => *v,
            None => {
                let op = ctx.invoke(OpKind::Read {
                    actor: actor.clone(),
                    from: 1,
                });
                match store.events(&actor, 1).await {
                    Ok(events) => {
                        let version = events.last().map_or(0, |e| e.version);
                        ctx.complete(
                            op,
                            Outcome::Read {
                                events: events.iter().map(EventDigest::of).collect(),
                            },
                        );
                        belief.insert(actor.clone(), version);
                        version
                    }
                    Err(e) => {
                        ctx.complete(op, Outcome::Failed(e.to_string()));
                        continue;
                    }
                }
            }
        };
        let count = 1 + below(&rng, 2);
        let (event_ids, events) =
            crate::workload::numbered_events("Deposited", &writer_id, k, count);
        let op = ctx.invoke(OpKind::Append {
            actor: actor.clone(),
            expected: ExpectedVersion::Exact(expected),
            event_ids,
        });
        let outcome = match store
            .append(&actor, ExpectedVersion::Exact(expected), events)
            .await
        {
            Ok(done) => {
                belief.insert(actor.clone(), done.last_version());
                Outcome::Appended {
                    commit_id: done.commit_id.clone(),
                    sequence: done.sequence,
                    events: done.events.iter().map(EventDigest::of).collect(),
                }
            }
            Err(e) => {
                belief.remove(&actor);
                match e {
                    e @ AppendError::Indeterminate { .. } => Outcome::Ambiguous(e.to_string()),
                    e => Outcome::Failed(e.to_string()),
                }
            }
        };
        ctx.complete(op, outcome);
    }
}

/// From the end of the safety phase on, records this node's view at every whole second of true
/// time (all nodes at the same instants, so the liveness checker can compare them).
async fn view_recorder<B: Broker, C: Clock>(
    ctx: impl Recorder,
    cluster: Arc<Cluster<B, C>>,
    safety: Duration,
) {
    let second = Duration::from_secs(1);
    loop {
        let now = ctx.now();
        let next = safety.max(second * (now.as_secs() as u32 + 1));
        aether::rt::sleep(next - now).await;
        let view = cluster.view();
        let epoch = view.epoch();
        ctx.history().observe(
            next,
            ctx.name(),
            ClusterObservation::View {
                leader: view.leader.map(|l| (l.node.to_string(), l.token)),
                leading: cluster.is_leader(),
                members: view.members.iter().map(|m| m.to_string()).collect(),
                epoch,
                hosted: view.hosted.iter().map(|s| s.0).collect(),
            },
        );
    }
}

/// Routes by the cluster instance the node runs now; owns nothing while it runs none (the joiner
/// between its memberships).
pub struct CurrentCluster<B: Broker = SimBroker, C: Clock = SimClock>(Arc<Slot<B, C>>);

/// The cluster instance running now, if any.
type Slot<B, C> = std::sync::Mutex<Option<Arc<Cluster<B, C>>>>;

impl<B: Broker, C: Clock> Clone for CurrentCluster<B, C> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<B: Broker, C: Clock> Default for CurrentCluster<B, C> {
    fn default() -> Self {
        Self(Arc::default())
    }
}

impl<B: Broker, C: Clock> CurrentCluster<B, C> {
    fn set(&self, cluster: Option<Arc<Cluster<B, C>>>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = cluster;
    }

    fn current(&self) -> Option<Arc<Cluster<B, C>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl<B: Broker, C: Clock> Router for CurrentCluster<B, C> {
    fn owner_of(&self, actor_id: &str) -> Option<NodeId> {
        self.current().and_then(|c| Router::owner_of(&c, actor_id))
    }

    fn ownership(&self, actor_id: &str) -> Option<aether::actor::Ownership> {
        self.current().and_then(|c| Router::ownership(&c, actor_id))
    }
}

/// A node's actor host, routed by its current cluster instance.
pub type CounterHost<B, C> = ActorHost<Counter, B, C, CurrentCluster<B, C>>;

/// A node's actor host in the simulation.
pub type SimHost = CounterHost<SimBroker, SimClock>;

pub use super::counter::Counter;
use super::counter::{command_sender, foreign_writer};

/// Builds this node's actor host and serves remote commands, retrying until the broker lets it
/// subscribe.
async fn start_host<B: Broker, C: Clock>(
    ctx: &impl Recorder,
    rt: &Runtime<B, C>,
    store: EventStore<B, C>,
    router: CurrentCluster<B, C>,
) -> CounterHost<B, C> {
    let host = ActorHost::new(store, router, ActorConfig::new());
    while let Err(e) = host.serve().await {
        ctx.history().note(
            ctx.now(),
            format!("{} actor host serve failed: {e}", ctx.name()),
        );
        rt.clock().sleep(Duration::from_millis(500)).await;
    }
    host
}
