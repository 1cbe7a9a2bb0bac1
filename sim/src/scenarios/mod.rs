//! Scenarios: a workload, a fault profile and the phases, by name.
//!
//! | name | workload | faults |
//! |---|---|---|
//! | `store` | hot actors: concurrent writers with stale expected versions, retries, readers, one damaged record | all (partitions both ways and one way, holds, latency, crashes, broker bounces, skew, drift, reply loss) |
//! | `cluster` | 3 nodes + a 4th that joins and leaves, each running membership, leader election and shard assignment, owner-based writers (`Exact` versions), counter commands sent through `ActorHost` from every node (adds and refusable takes), and a foreign writer appending counter decisions straight through the store | all, plus leader churn (the leader crashed, partitioned, its link held for about a lease TTL, or slowed — clock down to 0.70–0.76 — and cut off) |
//! | `readside` | 3 nodes appending through stores that publish `EventStored` on a connected bus; on every node a prompt and a slow (4-event queue) bus subscriber, and an instance of one projection whose handler does broker work before recording a page | all |
//! | `retention` | 3 nodes, 2 writers each on 4 long-lived actors, under a store that keeps events 20 s; a snapshot after every acknowledged append (naming its position); loaders loading actors from snapshot + events after it | all |
//! | `policy` | as `cluster`, but the nodes run an order flow: every node hosts `customer`, `ledger` and `shipment` aggregates and runs two policies (`Placed` → `Charge`, `Charged` → `Ship`) with one active instance each; orders are placed under their ids as keys until 2 s after the faults | as `cluster` |
//! | `long-horizon` | 2 simulated days, time-compressed: 40 actors written sparsely under a 6 h retention with snapshots, one dormant most of each day, the cluster layer running on every node; resource use sampled hourly | rare (one every ~10 min) |
//! | `cluster-beyond-margin` | as `cluster` | as `cluster`, but the slowed leader's clock runs at 0.50–0.60: past the lease's margin, **expected to fail** (see [`Scenario::cluster_beyond_margin`]) |

pub mod cluster;
pub mod counter;
pub mod policy;
pub mod readside;
pub mod retention;
pub mod store;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use super::faults::FaultProfile;
use super::workload::NodeContext;

/// The node software of a scenario: called for every (re)start of a node.
pub type NodeSoftware = Pin<Box<dyn Future<Output = crate::engine::HostResult> + 'static>>;

/// A scenario's shape.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Name, as accepted by `AETHER_SIM_SCENARIO` and `--scenario`.
    pub name: &'static str,
    /// Number of nodes (plus the broker host).
    pub nodes: usize,
    /// Length of the safety phase (faults).
    pub safety: Duration,
    /// Length of the fault-free liveness phase that follows.
    pub liveness: Duration,
    /// How soon after the faults stop progress must be visible.
    pub liveness_bound: Duration,
    /// How hard faults hit.
    pub profile: FaultProfile,
    /// The turmoil tick this scenario needs (`None`: the run's, 10 ms by default). A
    /// time-compressed scenario takes a coarser one.
    pub tick: Option<Duration>,
    /// Sample the broker's and every node's resource use this often (`None`: never).
    pub sample_every: Option<Duration>,
    kind: Kind,
}

#[derive(Clone, Debug)]
enum Kind {
    Store(store::StoreWorkload),
    Cluster(cluster::ClusterWorkload),
    Readside(readside::ReadsideWorkload),
    Retention(retention::RetentionWorkload),
    Policy(policy::PolicyWorkload),
}

impl Scenario {
    /// The hot-actor store scenario with the CI durations (20 s of faults, 15 s fault-free).
    pub fn store() -> Self {
        Self {
            name: "store",
            nodes: 3,
            safety: Duration::from_secs(20),
            liveness: Duration::from_secs(15),
            liveness_bound: Duration::from_secs(12),
            profile: FaultProfile::default(),
            tick: None,
            sample_every: None,
            kind: Kind::Store(Default::default()),
        }
    }

    /// The cluster scenario: 3 nodes plus a 4th that joins and leaves, leader churn,
    /// owner-based writers (20 s of faults, 20 s fault-free).
    pub fn cluster() -> Self {
        Self {
            name: "cluster",
            nodes: 4,
            safety: Duration::from_secs(20),
            liveness: Duration::from_secs(20),
            liveness_bound: Duration::from_secs(12),
            profile: FaultProfile {
                leader_churn: true,
                ..FaultProfile::default()
            },
            tick: None,
            sample_every: None,
            kind: Kind::Cluster(Default::default()),
        }
    }

    /// The read-side scenario: writers whose store publishes on a connected bus, a prompt and a
    /// slow bus subscriber and a projector instance on every node (20 s of faults, 15 s
    /// fault-free).
    pub fn readside() -> Self {
        Self {
            name: "readside",
            nodes: 3,
            safety: Duration::from_secs(20),
            liveness: Duration::from_secs(15),
            liveness_bound: Duration::from_secs(8),
            profile: FaultProfile::default(),
            tick: None,
            sample_every: None,
            kind: Kind::Readside(Default::default()),
        }
    }

    /// The retention scenario: events expire after 20 s; actors live on through snapshots (20 s
    /// of faults, 15 s fault-free).
    pub fn retention() -> Self {
        Self {
            name: "retention",
            nodes: 3,
            safety: Duration::from_secs(20),
            liveness: Duration::from_secs(15),
            liveness_bound: Duration::from_secs(12),
            profile: FaultProfile::default(),
            tick: None,
            sample_every: None,
            kind: Kind::Retention(Default::default()),
        }
    }

    /// The policy scenario: the cluster scenario's world running an order flow across three
    /// aggregate types and two policies, each active on one node at a time (20 s of faults,
    /// 20 s fault-free; placements stop 2 s after the faults).
    pub fn policy() -> Self {
        let cluster = Self::cluster();
        Self {
            name: "policy",
            kind: Kind::Policy(policy::PolicyWorkload::new(cluster.safety)),
            ..cluster
        }
    }

    /// Days of sparse activity, time-compressed (a 100 ms tick): a store keeping events 6 h,
    /// 40 actors written every 30 s–3 min per writer with a snapshot after each append, one
    /// actor dormant for 18 h of every day, the cluster layer (library defaults) running on
    /// every node, and rare faults (one every ~10 min). Resource use is sampled every simulated
    /// hour; `resources` checks that nothing grows with time (2 days: 47 h of faults, 1 h
    /// fault-free).
    pub fn long_horizon() -> Self {
        let hour = Duration::from_secs(3600);
        Self {
            name: "long-horizon",
            nodes: 3,
            safety: 47 * hour,
            liveness: hour,
            liveness_bound: Duration::from_secs(600),
            profile: FaultProfile {
                gap_mean: Duration::from_secs(600),
                fault_duration_max: Duration::from_secs(60),
                ..FaultProfile::default()
            },
            tick: Some(Duration::from_millis(100)),
            sample_every: Some(hour),
            kind: Kind::Retention(retention::RetentionWorkload {
                retention: 6 * hour,
                actors: 40,
                writers_per_node: 1,
                think: (Duration::from_secs(30), Duration::from_secs(180)),
                load_every: (Duration::from_secs(60), Duration::from_secs(300)),
                dormancy: (24 * hour, 6 * hour),
                cluster: true,
            }),
        }
    }

    /// How long the scenario's store keeps events (`None`: forever).
    pub fn retention_period(&self) -> Option<Duration> {
        match &self.kind {
            Kind::Retention(w) => Some(w.retention),
            _ => None,
        }
    }

    /// The cluster scenario with the leader's clock slowed past the lease's design margin
    /// (rates 0.50–0.60, where the defaults tolerate down to 2/3): **expected to fail**. It
    /// documents where the lease guarantee ends — two nodes may act as leader at once — and
    /// that what fencing tokens and compare-and-set protect (assignment epochs and tokens, one
    /// owner per shard per epoch, store versions) still holds there.
    pub fn cluster_beyond_margin() -> Self {
        let mut scenario = Self::cluster();
        scenario.name = "cluster-beyond-margin";
        scenario.profile.churn_clock_ppm = (350_000, 600_000);
        scenario
    }

    /// Every scenario whose seeds must all pass.
    pub fn all() -> Vec<Self> {
        vec![
            Self::store(),
            Self::cluster(),
            Self::readside(),
            Self::retention(),
            Self::policy(),
        ]
    }

    /// Scenarios of simulated days: too long for a seed set in CI (one seed of a shortened run
    /// is CI's), swept with fewer seeds.
    pub fn long() -> Vec<Self> {
        vec![Self::long_horizon()]
    }

    /// Scenarios that run past a documented guarantee and are expected to fail some seeds.
    pub fn beyond_guarantees() -> Vec<Self> {
        vec![Self::cluster_beyond_margin()]
    }

    /// The scenario called `name` (of either list).
    pub fn by_name(name: &str) -> Option<Self> {
        Self::all()
            .into_iter()
            .chain(Self::long())
            .chain(Self::beyond_guarantees())
            .find(|s| s.name == name)
    }

    /// The same scenario with the safety phase set to `safety` (the liveness phase unchanged).
    pub fn with_safety(mut self, safety: Duration) -> Self {
        if let Kind::Policy(w) = &mut self.kind {
            w.place_until = safety + w.place_until.saturating_sub(self.safety);
        }
        self.safety = safety;
        self
    }

    /// Total simulated time.
    pub fn duration(&self) -> Duration {
        self.safety + self.liveness
    }

    /// Whether the cluster layer runs.
    pub fn is_cluster(&self) -> bool {
        matches!(self.kind, Kind::Cluster(_) | Kind::Policy(_))
    }

    /// The cluster's shard count (0 without a cluster).
    pub fn shard_count(&self) -> u32 {
        match &self.kind {
            Kind::Cluster(w) => w.shard_count,
            Kind::Policy(w) => w.cluster.shard_count,
            Kind::Store(_) | Kind::Readside(_) | Kind::Retention(_) => 0,
        }
    }

    /// Actors whose streams the checkers read after the run.
    pub fn actors(&self) -> Vec<String> {
        match &self.kind {
            Kind::Store(w) => {
                let mut actors = w.all_actors(self.duration());
                if w.vandal {
                    actors.extend(store::DAMAGED_ACTORS.iter().map(|a| (*a).to_owned()));
                }
                actors
            }
            Kind::Cluster(w) => w
                .actors()
                .into_iter()
                .chain(w.counters())
                .chain(w.user.iter().flat_map(|u| u.actors.iter().cloned()))
                .collect(),
            Kind::Readside(w) => w.actors(),
            Kind::Retention(w) => w.actors(),
            Kind::Policy(w) => w.actors(),
        }
    }

    /// Actors that hold a damaged record on purpose.
    pub fn damaged_actors(&self) -> Vec<String> {
        match &self.kind {
            Kind::Store(w) if w.vandal => store::DAMAGED_ACTORS
                .iter()
                .map(|a| (*a).to_owned())
                .collect(),
            _ => Vec::new(),
        }
    }

    /// A user's aggregate on the simulated cluster ([`crate::harness`]): the cluster scenario's
    /// nodes, leader churn and faults, with the user's actors and commands in place of the
    /// built-in writers and counters.
    pub fn user(part: crate::harness::UserPart) -> Self {
        let mut scenario = Self::cluster();
        scenario.name = "user";
        if let Kind::Cluster(w) = &mut scenario.kind {
            w.actors = 0;
            w.counters = 0;
            w.user = Some(part);
        }
        scenario
    }

    /// The user's own checks of a run's final streams (none outside the harness).
    pub fn user_check(
        &self,
        input: &crate::checkers::CheckInput<'_>,
    ) -> Vec<crate::checkers::Violation> {
        match &self.kind {
            Kind::Cluster(cluster::ClusterWorkload {
                user: Some(user), ..
            }) => (user.check)(input),
            Kind::Policy(w) => policy::check(input, w),
            _ => Vec::new(),
        }
    }

    /// What the policy scenario's order flow did (zero elsewhere).
    pub fn flow_counts(&self, input: &crate::checkers::CheckInput<'_>) -> policy::FlowCounts {
        match &self.kind {
            Kind::Policy(w) => policy::counts(input, w),
            _ => policy::FlowCounts::default(),
        }
    }

    /// The node software for one (re)start.
    pub fn node_software(&self, ctx: NodeContext) -> NodeSoftware {
        match &self.kind {
            Kind::Store(w) => Box::pin(store::store_node(ctx, w.clone())),
            Kind::Cluster(w) => cluster::node(ctx, w.clone(), self.nodes, self.safety),
            Kind::Readside(w) => Box::pin(readside::readside_node(ctx, w.clone())),
            Kind::Retention(w) => Box::pin(retention::retention_node(ctx, w.clone())),
            Kind::Policy(w) => policy::node(ctx, w.clone(), self.nodes, self.safety),
        }
    }
}
