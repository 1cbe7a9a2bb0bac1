//! What every scenario's node software is built from: a node's context and incarnations, the
//! simulated store's configuration, and numbered events the checkers can find again. The
//! workloads themselves live with their scenarios (`scenarios/store.rs`, `scenarios/cluster.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;

use aether::NodeId;
use aether::actor::CommandError;
use aether::broker::Broker;
use aether::clock::{Clock, SharedRng};
use aether::event::NewEvent;
use aether::planted::PlantedBugs;
use aether::runtime::Runtime;
use aether::store::{AppendError, EventStore, StoreConfig};

use super::broker::{SimBroker, SimBrokerConfig, Wire};
use super::clock::{SimClock, sim_now};
use super::history::{History, OpKind, Outcome};

/// The namespace every simulated store uses.
pub const NAMESPACE: &str = "sim";

/// Everything one node incarnation is built from.
#[derive(Clone)]
pub struct NodeContext {
    /// Node index.
    pub index: usize,
    /// Host name (`n0`, `n1`, ...).
    pub name: String,
    /// Seed of this node; each incarnation derives its own generator from it.
    pub seed: u64,
    /// Incarnation counter, shared across restarts.
    pub incarnations: Arc<AtomicU64>,
    /// The node's clock.
    pub clock: SimClock,
    /// The recorder.
    pub history: History,
    /// Planted bugs.
    pub planted: PlantedBugs,
    /// The broker host's wire (frames in flight).
    pub wire: Wire,
    /// Where the node publishes its store handle's memory for resource samples.
    pub usage: crate::usage::NodeUsage,
}

/// One started incarnation of a node.
pub struct Incarnation {
    /// 1 for the first start, 2 after the first restart, ...
    pub number: u64,
    /// The node's runtime bundle.
    pub rt: Runtime<SimBroker, SimClock>,
}

impl NodeContext {
    /// Starts the next incarnation: a fresh broker client and generator.
    pub fn start(&self) -> Incarnation {
        let number = self.incarnations.fetch_add(1, Ordering::SeqCst) + 1;
        let rng = SharedRng::from_seed(self.seed ^ number.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let broker = SimBroker::new(
            SimBrokerConfig::new(self.name.clone(), number << 32, &rng),
            self.clock.clone(),
            self.wire.clone(),
        );
        self.history.note(
            sim_now(),
            format!("{} start incarnation {number}", self.name),
        );
        Incarnation {
            number,
            rt: Runtime::new(broker, self.clock.clone(), rng)
                .with_node(NodeId::new(self.name.clone()).expect("node names are valid ids"))
                .with_planted_bugs(self.planted),
        }
    }
}

/// Where a workload records what it does: the node's name and running incarnation, the
/// [`History`], and the true time (not the node's own clock, which may be skewed). The
/// simulation's [`NodeContext`] is one; the nemesis runner on a real NATS cluster has its own,
/// so that the same workload code and the same checkers run in both places.
pub trait Recorder: Clone + Send + Sync + 'static {
    /// The node's name (`n0`, ...).
    fn name(&self) -> &str;
    /// The history operations go to.
    fn history(&self) -> &History;
    /// The incarnation running now.
    fn incarnation(&self) -> u64;
    /// True time since the run began.
    fn now(&self) -> Duration;

    /// Records the start of an operation of this node's running incarnation, now.
    fn invoke(&self, kind: OpKind) -> usize {
        self.history()
            .invoke_in(self.now(), self.name(), self.incarnation(), kind)
    }

    /// Records how operation `op` ended, now.
    fn complete(&self, op: usize, outcome: Outcome) {
        self.history().complete(self.now(), op, outcome);
    }

    /// Records an instantaneous operation of this node's running incarnation, now.
    fn record(&self, kind: OpKind) {
        self.history()
            .record_in(self.now(), self.name(), self.incarnation(), kind);
    }
}

impl Recorder for NodeContext {
    fn name(&self) -> &str {
        &self.name
    }

    fn history(&self) -> &History {
        &self.history
    }

    /// The incarnation running now (the tasks of earlier ones died with them).
    fn incarnation(&self) -> u64 {
        self.incarnations.load(Ordering::SeqCst)
    }

    /// Simulated time: the engine's, whatever the node's clock says.
    fn now(&self) -> Duration {
        sim_now()
    }
}

/// The store configuration of the simulation.
pub fn store_config() -> StoreConfig {
    StoreConfig::new(NAMESPACE)
}

/// Opens the store, retrying until the broker answers.
pub async fn open_store<B: Broker, C: Clock>(rt: &Runtime<B, C>) -> EventStore<B, C> {
    open_store_with(rt, store_config()).await
}

/// Opens the store with `config`, retrying until the broker answers.
pub async fn open_store_with<B: Broker, C: Clock>(
    rt: &Runtime<B, C>,
    config: StoreConfig,
) -> EventStore<B, C> {
    loop {
        match EventStore::open(rt.clone(), config.clone()).await {
            Ok(store) => return store,
            Err(_) => rt.clock().sleep(Duration::from_millis(200)).await,
        }
    }
}

/// `count` events of `event_type` for a writer's `k`-th append, with ids `<writer>.<k>.<j>` that
/// the checkers can find in the final streams.
pub(crate) fn numbered_events(
    event_type: &str,
    writer_id: &str,
    k: u64,
    count: usize,
) -> (Vec<String>, Vec<NewEvent>) {
    let event_ids: Vec<String> = (0..count).map(|j| format!("{writer_id}.{k}.{j}")).collect();
    let events = event_ids
        .iter()
        .enumerate()
        .map(|(j, id)| {
            NewEvent::new(event_type, json!({ "writer": writer_id, "k": k, "j": j }))
                .with_id(id.clone())
        })
        .collect();
    (event_ids, events)
}

/// The outcome a failed `ActorHost::send` records: `rejected` turns the aggregate's refusal
/// into one; a failure that certainly ran nothing is `Failed`; a timeout, a deadline, an
/// unknown append outcome, a remote failure (which may be one) or a broker failure after the
/// request may have left is `Ambiguous` — the command may have run.
pub fn command_failure<R: std::fmt::Debug>(
    error: CommandError<R>,
    rejected: impl FnOnce(R) -> Outcome,
) -> Outcome {
    match error {
        CommandError::Rejected(refusal) => rejected(refusal),
        e @ (CommandError::NotOwner { .. }
        | CommandError::Unroutable { .. }
        | CommandError::Read(_)
        | CommandError::Snapshot(_)) => Outcome::Failed(e.to_string()),
        CommandError::Append(e) if !matches!(e, AppendError::Indeterminate { .. }) => {
            Outcome::Failed(e.to_string())
        }
        e => Outcome::Ambiguous(e.to_string()),
    }
}

/// A uniformly random index below `n` (0 when `n` is 0).
pub fn below(rng: &SharedRng, n: usize) -> usize {
    (rng.next_u64() % n.max(1) as u64) as usize
}
