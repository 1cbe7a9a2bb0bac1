//! Running one seed, many seeds, and reporting a failure so that it replays.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use super::artifacts;
use super::broker::replicas::ReplicationConfig;
use super::broker::{BROKER_HOST, BrokerHost};
use super::checkers::{CheckInput, Violation, check_all};
use super::clock::{SimClock, epoch};
use super::faults::{self, BASE_LATENCY_MAX, ChurnPlan, Fault, FaultSchedule};
use super::history::{ClusterObservation, History, OpKind, Outcome, format_time};
use super::scenarios::Scenario;
use super::usage::{NodeUsage, UsageSample};
use super::workload::{NAMESPACE, NodeContext};
use super::{derive_seed, rng_for};
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

/// The KV buckets whose writes the checkers read: the lease, the assignment, checkpoints.
fn recorded_bucket(bucket: &str) -> bool {
    bucket.ends_with("-leader")
        || bucket.ends_with("-assignment")
        || bucket.starts_with("aether-projections-")
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
    let history = History::new(options.keep_trace);
    let broker = if options.replicated {
        BrokerHost::replicated(rng_for(seed, 1), ReplicationConfig::default())
    } else {
        BrokerHost::new(rng_for(seed, 1))
    };
    broker.record_kv_writes(history.clone(), recorded_bucket);
    let node_names: Vec<String> = (0..scenario.nodes).map(|i| format!("n{i}")).collect();
    let mut clocks = Vec::new();
    let mut controls = Vec::new();
    for _ in 0..scenario.nodes {
        let (clock, control) = SimClock::new();
        clocks.push(clock);
        controls.push(control);
    }
    let mut schedule = FaultSchedule::generate(
        &rng_for(seed, 2),
        scenario.nodes,
        Duration::from_secs(1),
        scenario.safety,
        &scenario.profile,
    );
    if options.replicated {
        let replication = FaultSchedule::replication(
            &rng_for(seed, 4),
            Duration::from_secs(2),
            scenario.safety,
            &scenario.profile,
        );
        schedule.events.extend(replication.events);
        // Stable: equal times keep their order (the main schedule's first).
        schedule.events.sort_by_key(|(at, _)| *at);
    }
    let churn = if scenario.profile.leader_churn {
        ChurnPlan::generate(
            &rng_for(seed, 3),
            Duration::from_secs(3),
            scenario.safety,
            scenario.profile.churn_clock_ppm,
        )
    } else {
        ChurnPlan::default()
    };
    let total = scenario.duration();
    let mut violations = Vec::new();
    let node_usage = NodeUsage::default();
    let mut samples: Vec<UsageSample> = Vec::new();

    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut sim = turmoil::Builder::new()
            .rng_seed(derive_seed(seed, 0))
            .epoch(epoch())
            .tick_duration(scenario.tick.unwrap_or(options.tick))
            .simulation_duration(total + Duration::from_secs(3600))
            .min_message_latency(faults::BASE_LATENCY_MIN)
            .max_message_latency(BASE_LATENCY_MAX)
            .tcp_capacity(1 << 16)
            .build();
        let host = broker.clone();
        sim.host(BROKER_HOST, move || host.clone().serve());
        for (index, name) in node_names.iter().enumerate() {
            let ctx = NodeContext {
                index,
                name: name.clone(),
                seed: derive_seed(seed, 100 + index as u64),
                incarnations: Arc::new(AtomicU64::new(0)),
                clock: clocks[index].clone(),
                history: history.clone(),
                planted: options.planted,
                wire: broker.wire(),
                usage: node_usage.clone(),
            };
            let scenario = scenario.clone();
            sim.host(name.as_str(), move || scenario.node_software(ctx.clone()));
        }
        let world = faults::World {
            nodes: &node_names,
            clocks: &controls,
            broker: &broker,
        };
        // Faults still to apply, by (time, order of scheduling).
        let mut pending: BTreeMap<(Duration, usize), Fault> = schedule
            .events
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, (at, fault))| ((at, i), fault))
            .collect();
        let mut scheduled = pending.len();
        let mut churn = churn.events.iter().peekable();
        let mut healed = false;
        let mut next_sample = scenario.sample_every;
        while sim.elapsed() < total {
            let now = sim.elapsed();
            if let Some(every) = scenario.sample_every
                && let Some(at) = next_sample
                && now >= at
            {
                let broker_now = Now {
                    monotonic: now,
                    wall: epoch() + now,
                };
                samples.push(UsageSample {
                    at: now,
                    broker: broker.with_state(|state| state.usage(broker_now)),
                    nodes: node_usage.snapshot(),
                });
                next_sample = Some(at + every);
            }
            while let Some((at, aimed)) = churn.peek() {
                if *at > now {
                    break;
                }
                churn.next();
                let Some(leader) = history.current_leader() else {
                    history.fault(now, "leader churn: no leader to aim at".to_owned());
                    continue;
                };
                let Some(node) = node_names.iter().position(|n| *n == leader) else {
                    continue;
                };
                let others_up = node_names
                    .iter()
                    .filter(|n| **n != leader && sim.is_host_running(n.as_str()))
                    .count();
                history.fault(now, format!("leader churn aimed at {leader}: {aimed:?}"));
                for (at, fault) in
                    ChurnPlan::faults(aimed, node, node_names.len(), now, others_up >= 2)
                {
                    // The healing at the end of the safety phase ends every fault.
                    if at >= scenario.safety {
                        continue;
                    }
                    pending.insert((at, scheduled), fault);
                    scheduled += 1;
                }
            }
            while let Some(entry) = pending.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                let fault = entry.remove();
                if scenario.is_cluster()
                    && let Fault::Crash { node } = &fault
                    && sim.is_host_running(node_names[*node].as_str())
                {
                    history.observe(now, &node_names[*node], ClusterObservation::Down);
                }
                faults::apply(&mut sim, &world, now, &fault);
                history.fault(now, fault.to_string());
            }
            if !healed && now >= scenario.safety {
                faults::heal_all(&mut sim, &world, now);
                history.fault(now, "heal everything; liveness phase begins".to_owned());
                healed = true;
            }
            if let Err(e) = sim.step() {
                return Err(format!("a host failed at {}: {e}", format_time(now)));
            }
        }
        Ok(sim.elapsed())
    }));
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
        nodes: &node_names,
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
        faults: history.faults(),
        broker: broker.stats(),
        stream_lengths: raw.iter().map(|(a, r)| (a.clone(), r.len())).collect(),
        simulated,
        trace: history.trace(),
        nodes: node_names,
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
