//! Running one seed, many seeds, and reporting a failure so that it replays.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::artifacts;
use super::checkers::{CheckInput, Violation, check_all};
use super::clock::epoch;
use super::derive_seed;
#[cfg(madsim)]
pub use super::driver::check_determinism;
use super::driver::{BASE_LATENCY, Setup};
#[cfg(not(madsim))]
use super::engine::TurmoilEngine;
use super::history::{OpKind, Outcome};
use super::scenarios::Scenario;
use super::usage::UsageSample;
use super::workload::NAMESPACE;
pub use crate::report::{
    CommandCounts, OpCounts, PLANTED, ReadsideCounts, RunReport, Switch, parse_planted,
    planted_names,
};
use aether::broker::Now;
use aether::codec::encode_actor_id;
use aether::planted::PlantedBugs;

/// How to run a seed.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Planted bugs switched on in every node.
    pub planted: PlantedBugs,
    /// turmoil tick.
    pub tick: Duration,
    /// Keep the full trace (and every operation) in the report.
    pub keep_trace: bool,
    /// Run on the replicated broker model (three replicas, lagging followers, failovers)
    /// instead of one linearizable server.
    pub replicated: bool,
    /// Where a failing seed writes its timeline (`<scenario>-<seed>.html`) and full trace
    /// (`<scenario>-<seed>.trace.txt`); `None`: nowhere. Default: the directory in
    /// `AETHER_SIM_ARTIFACTS`, if set. Writing them replays the seed with its trace kept
    /// (a run is a pure function of its seed), unless the trace was kept already.
    pub artifacts: Option<PathBuf>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            planted: PlantedBugs::default(),
            tick: Duration::from_millis(10),
            keep_trace: false,
            replicated: false,
            artifacts: artifacts::dir_from_env(),
        }
    }
}

/// Runs `scenario` with `seed`. A failing seed writes its timeline and trace when
/// [`RunOptions::artifacts`] names a directory.
pub fn run(scenario: &Scenario, seed: u64, options: &RunOptions) -> RunReport {
    let mut report = run_seed(scenario, seed, options);
    if !report.passed()
        && let Some(dir) = &options.artifacts
    {
        report.artifacts = Some(artifacts::write_for(scenario, options, &report, dir));
    }
    report
}

/// One run of `scenario` with `seed`, checked.
fn run_seed(scenario: &Scenario, seed: u64, options: &RunOptions) -> RunReport {
    let setup = Setup::new(scenario, seed, options);
    let Setup {
        history,
        broker,
        node_names,
        clocks,
        ..
    } = &setup;
    let total = scenario.duration();
    let mut violations = Vec::new();
    let mut samples: Vec<UsageSample> = Vec::new();

    #[cfg(not(madsim))]
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let tick = scenario.tick.unwrap_or(options.tick);
        let mut engine =
            TurmoilEngine::new(derive_seed(seed, 0), tick, setup.limit(), BASE_LATENCY);
        let host = broker.clone();
        engine.broker(move || host.clone().serve());
        for (index, name) in node_names.iter().enumerate() {
            engine.node(name, setup.software(index));
        }
        futures::FutureExt::now_or_never(setup.driver().drive(&mut engine, &mut samples))
            .expect("the turmoil driver never waits: each step runs to its end")
    }));

    // A fresh thread per seed: thread-locals (std's hash keys, tokio's `select!` generator)
    // start from madsim's seeded entropy, so a seed replays alone as it ran in a sweep.
    #[cfg(madsim)]
    let outcome = std::thread::scope(|threads| {
        threads
            .spawn(|| {
                let mut rt = madsim::runtime::Runtime::with_seed_and_config(
                    derive_seed(seed, 0),
                    crate::engine::config(BASE_LATENCY),
                );
                rt.set_time_limit(setup.limit());
                let (outcome, mut engine) = rt.block_on(setup.run_on_madsim(&mut samples));
                // `block_on` returned with every task due at the last instant run; only now
                // kill the hosts, or madsim keeps their tasks (and all they hold) alive.
                rt.block_on(async move { engine.shutdown() });
                outcome
            })
            .join()
    });
    let simulated = match outcome {
        Ok(Ok(elapsed)) => elapsed,
        Ok(Err(e)) => {
            violations.push(Violation {
                invariant: "simulation ran to the end",
                detail: e,
            });
            total
        }
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "non-string panic".to_owned());
            violations.push(Violation {
                invariant: "no panic",
                detail: message,
            });
            total
        }
    };

    // The broker's final state is the ground truth.
    let now = Now {
        monotonic: simulated,
        wall: epoch() + simulated,
    };
    let stream = format!("AETHER_EV_{NAMESPACE}");
    let mut raw = BTreeMap::new();
    let mut snapshots = BTreeMap::new();
    broker.with_state(|state| {
        for actor in scenario.actors() {
            let subject = format!(
                "aether.snap.{NAMESPACE}.{}",
                encode_actor_id(&actor).expect("scenario actor ids are valid")
            );
            let version = state
                .last(&format!("AETHER_SNAP_{NAMESPACE}"), &subject, now)
                .ok()
                .flatten()
                .and_then(|m| serde_json::from_slice::<aether::event::Snapshot>(&m.payload).ok())
                .map_or(0, |s| s.version);
            snapshots.insert(actor, version);
        }
    });
    broker.with_state(|state| {
        for actor in scenario.actors() {
            let subject = format!(
                "aether.ev.{NAMESPACE}.{}",
                encode_actor_id(&actor).expect("scenario actor ids are valid")
            );
            let records = state.read(&stream, &subject, 1, now).unwrap_or_default();
            raw.insert(actor, records);
        }
    });
    let mut ops = history.take_ops();
    // Nodes report their own clock readings; now that every rate change is known, map them.
    for op in &mut ops {
        if let OpKind::Cluster(observation) = &mut op.kind
            && let Some(node) = node_names.iter().position(|n| *n == op.node)
        {
            observation.to_true_time(|local| clocks[node].true_time_of(local));
        }
    }
    let input = CheckInput {
        ops: &ops,
        streams: raw
            .iter()
            .map(|(actor, records)| {
                let retention = scenario.retention_period().is_some();
                (actor.clone(), CheckInput::decode(actor, records, retention))
            })
            .collect(),
        damaged_actors: scenario.damaged_actors(),
        nodes: node_names,
        safety_end: scenario.safety,
        end: simulated,
        liveness_bound: scenario.liveness_bound,
        cluster: scenario.is_cluster(),
        shard_count: scenario.shard_count(),
        lease_ttl: aether::cluster::ClusterConfig::new().lease_ttl,
        replicated: options.replicated,
        snapshots,
        retention: scenario.retention_period(),
        usage: &samples,
    };
    violations.extend(check_all(&input));
    violations.extend(scenario.user_check(&input));
    let flow = scenario.flow_counts(&input);

    let mut counts = OpCounts::default();
    let mut commands = CommandCounts::default();
    let mut readside = ReadsideCounts::default();
    for op in &ops {
        match (&op.kind, &op.outcome) {
            (
                OpKind::BusReceived {
                    deliveries, lagged, ..
                },
                _,
            ) => {
                readside.delivered += deliveries.len() as u64;
                readside.lagged += lagged;
            }
            (OpKind::ProjectorStep { .. }, Outcome::Stepped { .. }) => readside.steps += 1,
            (OpKind::ProjectorStep { .. }, Outcome::Fenced) => readside.fenced += 1,
            (OpKind::ProjectorStep { .. }, _) => readside.steps_failed += 1,
            (OpKind::Handled { positions, .. }, _) => readside.handled += positions.len() as u64,
            (OpKind::Append { .. }, Outcome::Appended { .. }) => counts.appends_ok += 1,
            (OpKind::Append { .. }, Outcome::Failed(_)) => counts.appends_failed += 1,
            (OpKind::Append { .. }, _) => counts.appends_ambiguous += 1,
            (
                OpKind::Read { .. } | OpKind::LatestVersion { .. } | OpKind::Load { .. },
                Outcome::Read { .. }
                | Outcome::ReadAround { .. }
                | Outcome::Version(_)
                | Outcome::Loaded { .. },
            ) => {
                counts.reads_ok += 1;
            }
            (OpKind::SaveSnapshot { .. }, _) => {}
            (OpKind::Read { .. }, Outcome::Damaged { .. }) => counts.reads_damaged += 1,
            (OpKind::Read { .. } | OpKind::LatestVersion { .. } | OpKind::Load { .. }, _) => {
                counts.reads_failed += 1;
            }
            (OpKind::Cluster(_), _) => counts.observations += 1,
            (OpKind::Damage { .. } | OpKind::KvWrite { .. }, _) => {}
            (OpKind::Command { .. } | OpKind::UserCommand { .. }, Outcome::Commanded { .. }) => {
                commands.ok += 1
            }
            (OpKind::UserCommand { .. }, Outcome::Rejected(_)) => commands.refused += 1,
            (OpKind::UserCommand { .. }, Outcome::Failed(_)) => commands.failed += 1,
            (OpKind::UserCommand { .. }, _) => commands.ambiguous += 1,
            (OpKind::Command { .. }, Outcome::Refused { .. }) => commands.refused += 1,
            (OpKind::Command { .. }, Outcome::Failed(_)) => commands.failed += 1,
            (OpKind::Command { .. }, _) => commands.ambiguous += 1,
        }
    }
    RunReport {
        seed,
        scenario: scenario.name,
        duration: scenario.duration(),
        planted: options.planted,
        replicated: options.replicated,
        violations,
        trace_hash: history.trace_hash(),
        counts,
        commands,
        readside,
        flow,
        faults: history.faults(),
        broker: broker.stats(),
        stream_lengths: raw.iter().map(|(a, r)| (a.clone(), r.len())).collect(),
        simulated,
        trace: history.trace(),
        nodes: node_names.clone(),
        ops: options.keep_trace.then_some(ops),
        artifacts: None,
        usage: samples,
    }
}

/// `scenario` with the total simulated length from `AETHER_SIM_SECONDS`, if set (the safety
/// phase is that minus the scenario's liveness phase, as `aether-sim --seconds` does).
pub fn scenario_length_from_env(scenario: Scenario) -> Scenario {
    match std::env::var("AETHER_SIM_SECONDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        Some(seconds) => {
            let safety = Duration::from_secs(seconds).saturating_sub(scenario.liveness);
            scenario.with_safety(safety)
        }
        None => scenario,
    }
}

/// Seeds from the environment: `AETHER_SIM_SEED=<n>` (one), else `AETHER_SIM_SEEDS=<count>`
/// (a sweep from `first`), else `default_count` seeds from `first`.
pub fn seeds_from_env(first: u64, default_count: u64) -> Vec<u64> {
    if let Some(seed) = std::env::var("AETHER_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![seed];
    }
    let count = std::env::var("AETHER_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_count);
    (first..first + count).collect()
}
