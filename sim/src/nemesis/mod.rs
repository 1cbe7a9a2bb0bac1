//! # The nemesis: the simulation's workload and checkers on a real NATS cluster
//!
//! A run starts three `nats-server` processes (the project's pinned 2.15.1) as one JetStream
//! cluster on loopback, opens the store with R3 streams, and runs the store scenario's workload
//! — the same [`writer`](crate::scenarios::store::writer), [`reader`](crate::scenarios::store::reader) and [`vandal`](crate::scenarios::store::vandal) code the simulation runs, recording into the
//! same [`History`] — on several aether nodes, while real faults drawn from the seed
//! ([`schedule`](mod@schedule)) hit the servers and the nodes: `kill -9` and restart of the stream leader, a
//! follower or the meta leader, SIGSTOP/SIGCONT of one, and crashes of an aether node in the
//! middle of its appends. After the fault phase everything is healed, the workload runs on
//! fault-free for the liveness phase, and then the same [`check_all`] judges the history against
//! what the servers hold — read from each of the three servers, which must agree.
//!
//! Aether nodes are not separate processes but separate tokio runtimes in this process, each
//! with its own client connection: the checkers need one history with one time line, and a
//! node's crash — [`tokio::runtime::Runtime::shutdown_background`] — drops every task the node
//! ran, the library's detached ones included, mid-step, and closes its connection, which is
//! what the servers and the other nodes see of a `kill -9`. What this cannot show is a node
//! dying between two syscalls of one write (the async-nats client writes a whole frame per
//! publish).
//!
//! Time is real (`Instant`), so the run is not a function of its seed: the fault timeline is
//! (offsets, kinds and durations), the interleaving of operations is not. The report prints both.
//! Clock skew between nodes is out of reach on one machine (every process reads one clock); it
//! stays the simulation's.
//!
//! The run lives here; `world` holds the servers, nodes and proxies and injects the faults,
//! `leaders` polls who leads the events stream, and `report` makes the report.
#![allow(clippy::disallowed_methods)] // real servers, real time: Instant::now is the point here

#[allow(dead_code, unused_imports, clippy::new_without_default)]
#[path = "../../../tests/support/nats_server.rs"]
pub mod servers;

pub mod schedule;

mod leaders;
mod report;
mod world;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aether::broker::Broker;
use aether::clock::{Clock, SystemClock};
use aether::codec::encode_actor_id;
use aether::planted::PlantedBugs;
use aether::rt::TaskSet;
use aether::runtime::Runtime;
use aether::{NatsBroker, NatsOptions};

use crate::checkers::{CheckInput, Violation, check_all};
use crate::history::History;
use crate::rng_for;
use crate::scenarios::cluster::ClusterWorkload;
use crate::scenarios::store::{DAMAGED_ACTORS, StoreWorkload};
use crate::workload::{NAMESPACE, Recorder, open_store_with, store_config};
pub use leaders::LeaderSample;
use leaders::{LeaderSamples, leader_views};
pub use report::{FaultStats, LeaderChange, NemesisReport};
use report::{double_claims, fault_stats, leader_changes};
use schedule::{PlannedFault, schedule};
use servers::NatsCluster;
use world::World;

/// The events stream of the workload's namespace.
fn events_stream() -> String {
    format!("AETHER_EV_{NAMESPACE}")
}

/// The events stream's entry in a server's `/jsz?accounts=true&streams=true` answer.
fn events_stream_detail(jsz_body: &str) -> Option<serde_json::Value> {
    let jsz: serde_json::Value = serde_json::from_str(jsz_body).ok()?;
    let stream = events_stream();
    jsz["account_details"]
        .as_array()?
        .iter()
        .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten())
        .find(|s| s["name"] == stream.as_str())
        .cloned()
}

/// What a nemesis run does.
#[derive(Clone, Debug)]
pub struct NemesisOptions {
    /// Draws the fault timeline and the workload's choices.
    pub seed: u64,
    /// The fault phase.
    pub safety: Duration,
    /// The fault-free phase after it, in which every node must make progress.
    pub liveness: Duration,
    /// How soon after the faults stop each node must have appended again.
    pub liveness_bound: Duration,
    /// Aether nodes (separate client connections).
    pub nodes: usize,
    /// What the nodes run.
    pub workload: NemesisWorkload,
    /// Planted bugs switched on in every node (to show that the checkers catch them here too).
    pub planted: PlantedBugs,
}

impl Default for NemesisOptions {
    fn default() -> Self {
        Self {
            seed: 0,
            safety: Duration::from_secs(40),
            liveness: Duration::from_secs(20),
            liveness_bound: Duration::from_secs(15),
            nodes: 3,
            workload: NemesisWorkload::Store(StoreWorkload::default()),
            planted: PlantedBugs::default(),
        }
    }
}

/// What the aether nodes run: one of the simulation's workloads, the same code.
#[derive(Clone, Debug)]
pub enum NemesisWorkload {
    /// The store scenario's: writers with stale expected versions on hot actors, a reader, and
    /// on node 0 the vandal planting damaged records.
    Store(StoreWorkload),
    /// The cluster scenario's: every node runs the cluster layer (membership, lease election,
    /// assignment — on R3 KV buckets here), an owner-based writer, a foreign writer, the
    /// counters' actor host and a command sender; the last node joins and leaves.
    Cluster(ClusterWorkload),
}

impl NemesisWorkload {
    /// The cluster workload as the nemesis runs it: KV buckets with three replicas.
    pub fn cluster() -> Self {
        Self::Cluster(ClusterWorkload {
            kv_replicas: 3,
            ..ClusterWorkload::default()
        })
    }

    /// `store` or `cluster`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Store(_) => "store",
            Self::Cluster(_) => "cluster",
        }
    }

    /// Every actor whose final stream is checked, for a run of `duration`.
    fn actors(&self, duration: Duration) -> Vec<String> {
        match self {
            Self::Store(w) => {
                let mut a = w.all_actors(duration);
                if w.vandal {
                    a.extend(DAMAGED_ACTORS.iter().map(|s| (*s).to_owned()));
                }
                a
            }
            Self::Cluster(w) => w.actors().into_iter().chain(w.counters()).collect(),
        }
    }

    fn damaged_actors(&self) -> Vec<String> {
        match self {
            Self::Store(w) if w.vandal => DAMAGED_ACTORS.iter().map(|a| (*a).to_owned()).collect(),
            _ => Vec::new(),
        }
    }
}

/// The nemesis's [`Recorder`]: real time since the run began.
///
/// Every node runs on one [`SystemClock`] whose origin is the start of the run, so the clock
/// readings nodes report (lease deadlines, `sent_at`) are already in the history's time.
#[derive(Clone)]
struct RealRecorder {
    name: String,
    incarnations: Arc<AtomicU64>,
    history: History,
    clock: SystemClock,
}

impl Recorder for RealRecorder {
    fn name(&self) -> &str {
        &self.name
    }

    fn history(&self) -> &History {
        &self.history
    }

    fn incarnation(&self) -> u64 {
        self.incarnations.load(Ordering::SeqCst)
    }

    fn now(&self) -> Duration {
        self.clock.monotonic()
    }
}

/// Runs one nemesis run on a fresh three-server cluster (on its own tokio runtime).
///
/// Panics when nats-server cannot be found or the cluster does not start (with the install
/// hint); everything that goes wrong after that is a violation in the report.
pub fn run(options: &NemesisOptions) -> NemesisReport {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(run_async(options))
}

async fn run_async(options: &NemesisOptions) -> NemesisReport {
    let cluster = tokio::task::spawn_blocking(NatsCluster::start_with_route_proxies)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    let urls = cluster.urls();
    let client_proxies = (0..options.nodes)
        .map(|_| {
            let net = cluster.route_net();
            cluster.nodes.iter().map(|s| net.client_proxy(s)).collect()
        })
        .collect();
    let control = NatsBroker::connect(NatsOptions::new(&urls).name("nemesis"))
        .await
        .expect("connect to the nemesis cluster");
    // Streams and buckets exist before the nodes start (R3).
    let rt = Runtime::new(
        control.clone(),
        SystemClock::new(),
        rng_for(options.seed, 1),
    );
    open_store_with(&rt, store_config().replicas(3)).await;

    let clock = SystemClock::new();
    let world = Arc::new(World {
        options: options.clone(),
        cluster: Arc::new(Mutex::new(cluster)),
        client_proxies,
        history: History::new(true),
        clock: clock.clone(),
        nodes: (0..options.nodes).map(|_| Mutex::new(None)).collect(),
        incarnations: (0..options.nodes)
            .map(|_| Arc::new(AtomicU64::new(0)))
            .collect(),
        timeline: Mutex::new(Vec::new()),
    });
    for index in 0..options.nodes {
        world.start_node(index);
    }

    // The events stream's leader, polled.
    let samples: Arc<LeaderSamples> = Arc::default();
    let mut monitor = TaskSet::new();
    {
        let samples = samples.clone();
        let ports = world.monitor_ports();
        monitor.spawn(async move {
            loop {
                let ports = ports.clone();
                let views = tokio::task::spawn_blocking(move || leader_views(&ports))
                    .await
                    .unwrap_or_default();
                samples
                    .lock()
                    .unwrap()
                    .push((clock.monotonic(), LeaderSample::of(&views)));
                aether::rt::sleep(Duration::from_millis(250)).await;
            }
        });
    }

    let cluster_workload = matches!(options.workload, NemesisWorkload::Cluster(_));
    let planned = schedule(
        options.seed,
        options.safety,
        options.nodes,
        cluster_workload,
    );
    let windows = Mutex::new(Vec::new());
    let violations = Mutex::new(Vec::new());
    let rng = rng_for(options.seed, 2);
    for fault in &planned {
        let wait = fault.at.saturating_sub(world.now());
        aether::rt::sleep(wait).await;
        world
            .inject(fault, &control, &rng, &windows, &violations)
            .await;
    }
    aether::rt::sleep(options.safety.saturating_sub(world.now())).await;
    // Heal: every fault above undid itself; say so, and let the workload run on.
    let safety_end = world.now();
    world.log("heal everything; liveness phase begins".into());
    aether::rt::sleep(options.liveness).await;
    let end = world.now();
    // The nodes run on a little past the end, so that what they record at its last instant
    // (the views every node takes at each whole second) is in before they stop: in real time
    // the end and those records race.
    aether::rt::sleep(Duration::from_millis(1500)).await;
    for node in &world.nodes {
        if let Some(runtime) = node.lock().unwrap().take() {
            runtime.shutdown_background();
        }
    }
    drop(monitor);
    let mut violations = violations.into_inner().unwrap();

    // Ground truth: every server's copy, once the replicas are current.
    if let Err(e) = wait_replicas_current(&control, Duration::from_secs(30)).await {
        violations.push(Violation {
            invariant: "replicas current after the heal",
            detail: e,
        });
    }
    let actors = options
        .workload
        .actors(options.safety + options.liveness + Duration::from_secs(5));
    // Each server's own replica, from its monitoring port: after the heal, all three must hold
    // the same messages (count, bytes, first and last sequence).
    let states = world
        .servers(|c| {
            c.nodes
                .iter()
                .map(|n| (n.name.clone(), replica_state(n)))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
    if let Some((first, state)) = states.first() {
        for (name, other) in &states[1..] {
            if other != state {
                violations.push(Violation {
                    invariant: "replicas agree once healed",
                    detail: format!("{first} holds {state:?}, {name} holds {other:?}"),
                });
            }
        }
    }
    let raw = match read_all(&control, &actors).await {
        Ok(raw) => raw,
        Err(e) => {
            violations.push(Violation {
                invariant: "the servers answer after the heal",
                detail: e,
            });
            return finish(
                options,
                planned,
                &world,
                violations,
                BTreeMap::new(),
                &samples,
                end,
            );
        }
    };

    let ops = world.history.take_ops();
    let nodes: Vec<String> = (0..options.nodes).map(|i| format!("n{i}")).collect();
    let input = CheckInput {
        ops: &ops,
        streams: raw
            .iter()
            .map(|(actor, records)| (actor.clone(), CheckInput::decode(actor, records, false)))
            .collect(),
        damaged_actors: options.workload.damaged_actors(),
        nodes: &nodes,
        safety_end,
        end,
        liveness_bound: options.liveness_bound,
        cluster: cluster_workload,
        shard_count: match &options.workload {
            NemesisWorkload::Cluster(w) => w.shard_count,
            NemesisWorkload::Store(_) => 0,
        },
        lease_ttl: match &options.workload {
            NemesisWorkload::Cluster(w) => w.config().lease_ttl,
            NemesisWorkload::Store(_) => aether::cluster::ClusterConfig::new().lease_ttl,
        },
        snapshots: BTreeMap::new(),
        retention: None,
        // Three replicas, reads served by any of them: each session's guarantees, not
        // linearizable reads, are what the store promises there.
        replicated: true,
        usage: &[],
    };
    violations.extend(check_all(&input));
    let report_windows = windows.into_inner().unwrap();
    let per_kind = fault_stats(&ops, &input, &report_windows);
    let mut report = finish(
        options, planned, &world, violations, per_kind, &samples, end,
    );
    if !report.passed() {
        report.trace_file = Some(write_trace(options, &world.history));
    }
    let windows = report_windows;
    for change in report.leader_changes.iter().skip(1) {
        let gap_began = change.at - change.without_leader;
        let kind = windows
            .iter()
            .find(|(_, from, to)| gap_began >= *from && gap_began < *to + Duration::from_secs(2))
            .map_or("no fault", |(k, _, _)| k.class());
        let s = report.per_kind.entry(kind).or_default();
        s.leader_changes += 1;
        s.longest_without_leader = s.longest_without_leader.max(change.without_leader);
    }
    report.operations = ops.len();
    report
}

fn finish(
    options: &NemesisOptions,
    planned: Vec<PlannedFault>,
    world: &World,
    violations: Vec<Violation>,
    per_kind: BTreeMap<&'static str, FaultStats>,
    samples: &LeaderSamples,
    end: Duration,
) -> NemesisReport {
    let samples = samples.lock().unwrap();
    NemesisReport {
        seed: options.seed,
        planned,
        timeline: world.timeline.lock().unwrap().clone(),
        violations,
        per_kind,
        leader_changes: leader_changes(&samples),
        double_claims: double_claims(&samples),
        operations: 0,
        interleaving: world.history.trace_hash(),
        trace_file: None,
        elapsed: end,
    }
}

/// Writes a failing run's full trace to `$AETHER_NEMESIS_ARTIFACTS` (default
/// `target/nemesis`) as `<workload>-<seed>.trace.txt`.
fn write_trace(options: &NemesisOptions, history: &History) -> Result<std::path::PathBuf, String> {
    let dir = std::env::var_os("AETHER_NEMESIS_ARTIFACTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from("target/nemesis"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = dir.join(format!(
        "{}-{}.trace.txt",
        options.workload.name(),
        options.seed
    ));
    let trace = history.trace().unwrap_or_default().join("\n");
    std::fs::write(&path, trace).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// The events stream's info through the control connection, or `None` when it does not answer
/// within 2 s.
async fn events_stream_info(
    control: &NatsBroker,
) -> Option<aether::broker::async_nats::jetstream::stream::Info> {
    aether::rt::timeout(Duration::from_secs(2), async {
        let mut stream = control.jetstream().get_stream(events_stream()).await.ok()?;
        stream.info().await.ok().cloned()
    })
    .await
    .ok()
    .flatten()
}

async fn wait_replicas_current(control: &NatsBroker, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    let mut last = String::new();
    while Instant::now() < deadline {
        let info = events_stream_info(control).await;
        if let Some(cluster) = info.and_then(|i| i.cluster) {
            if cluster.leader.is_some()
                && cluster.replicas.len() == 2
                && cluster.replicas.iter().all(|r| r.current && !r.offline)
            {
                return Ok(());
            }
            last = format!("{cluster:?}");
        }
        aether::rt::sleep(Duration::from_millis(200)).await;
    }
    Err(format!("not within {within:?}: {last}"))
}

/// Every actor's records of the events stream (the replicas are current by now).
async fn read_all(
    broker: &NatsBroker,
    actors: &[String],
) -> Result<BTreeMap<String, Vec<aether::broker::StoredMessage>>, String> {
    let mut out = BTreeMap::new();
    for actor in actors {
        let subject = format!(
            "aether.ev.{NAMESPACE}.{}",
            encode_actor_id(actor).expect("workload actor ids are valid")
        );
        let records = broker
            .read(&events_stream(), &subject, 1)
            .await
            .map_err(|e| format!("{actor}: {e}"))?;
        out.insert(actor.clone(), records);
    }
    Ok(out)
}

/// The events stream's state in `server`'s own replica (`/jsz`): messages, bytes, first and
/// last sequence. `None` when the server does not answer or holds no replica.
fn replica_state(server: &servers::NatsServer) -> Option<(u64, u64, u64, u64)> {
    let (_, body) = server.monitor("/jsz?accounts=true&streams=true")?;
    let detail = events_stream_detail(&body)?;
    let n = |k: &str| detail["state"][k].as_u64().unwrap_or(0);
    Some((n("messages"), n("bytes"), n("first_seq"), n("last_seq")))
}
