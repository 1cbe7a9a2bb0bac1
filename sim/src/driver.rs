//! One run's world before and while an engine runs it: `Setup` draws everything from the
//! seed (broker host, clocks, history, fault schedule, churn plan); `Driver` applies the
//! faults on either engine; under madsim, `check_determinism` repeats a run inside madsim's
//! own check.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use super::broker::BrokerHost;
use super::broker::replicas::ReplicationConfig;
use super::clock::{ClockControl, SimClock, epoch};
use super::engine::Engine;
#[cfg(madsim)]
use super::engine::MadsimEngine;
use super::faults::{self, BASE_LATENCY_MAX, ChurnPlan, Fault, FaultSchedule};
use super::history::{ClusterObservation, History, format_time};
use super::runner::RunOptions;
use super::scenarios::{NodeSoftware, Scenario};
use super::usage::{NodeUsage, UsageSample};
use super::workload::NodeContext;
use super::{derive_seed, rng_for};
use aether::broker::Now;

/// The KV buckets whose writes the checkers read: the lease, the assignment, checkpoints.
fn recorded_bucket(bucket: &str) -> bool {
    bucket.ends_with("-leader")
        || bucket.ends_with("-assignment")
        || bucket.starts_with("aether-projections-")
}

/// The base latency of every link: between these two, one way.
pub(crate) const BASE_LATENCY: (Duration, Duration) = (faults::BASE_LATENCY_MIN, BASE_LATENCY_MAX);

/// Everything one run is made of before an engine runs it: the broker host, the nodes' clocks,
/// the history, the fault schedule and the churn plan, all drawn from the seed.
pub(crate) struct Setup {
    scenario: Scenario,
    seed: u64,
    options: RunOptions,
    pub(crate) history: History,
    pub(crate) broker: BrokerHost,
    pub(crate) node_names: Vec<String>,
    pub(crate) clocks: Vec<SimClock>,
    controls: Vec<ClockControl>,
    schedule: FaultSchedule,
    churn: ChurnPlan,
    node_usage: NodeUsage,
}

impl Setup {
    pub(crate) fn new(scenario: &Scenario, seed: u64, options: &RunOptions) -> Self {
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
        Self {
            scenario: scenario.clone(),
            seed,
            options: options.clone(),
            history,
            broker,
            node_names,
            clocks,
            controls,
            schedule,
            churn,
            node_usage: NodeUsage::default(),
        }
    }

    /// How long the engine may run before the run counts as stuck.
    pub(crate) fn limit(&self) -> Duration {
        self.scenario.duration() + Duration::from_secs(3600)
    }

    /// Node `index`'s software, started anew at each (re)start.
    pub(crate) fn software(
        &self,
        index: usize,
    ) -> impl Fn() -> NodeSoftware + Send + Sync + 'static {
        let ctx = NodeContext {
            index,
            name: self.node_names[index].clone(),
            seed: derive_seed(self.seed, 100 + index as u64),
            incarnations: Arc::new(AtomicU64::new(0)),
            clock: self.clocks[index].clone(),
            history: self.history.clone(),
            planted: self.options.planted,
            wire: self.broker.wire(),
            usage: self.node_usage.clone(),
        };
        let scenario = self.scenario.clone();
        move || scenario.node_software(ctx.clone())
    }

    pub(crate) fn driver(&self) -> Driver<'_> {
        Driver {
            scenario: &self.scenario,
            history: &self.history,
            node_names: &self.node_names,
            clocks: &self.controls,
            broker: &self.broker,
            node_usage: &self.node_usage,
            schedule: &self.schedule,
            churn: &self.churn,
        }
    }

    /// Creates the hosts in the current madsim runtime and drives the run to its end. Returns
    /// the engine too: the caller shuts it down in a second `block_on`, once this one has let
    /// every task due at the last instant run (killing the hosts from inside the driver would
    /// cut them off: the first 10,000-seed cluster sweep with that lost the last round of
    /// cluster views on most seeds).
    #[cfg(madsim)]
    pub(crate) async fn run_on_madsim(
        &self,
        samples: &mut Vec<UsageSample>,
    ) -> (Result<Duration, String>, MadsimEngine) {
        let mut engine = MadsimEngine::new(self.broker.wire(), rng_for(self.seed, 6));
        let host = self.broker.clone();
        engine.broker(move || host.clone().serve());
        for (index, name) in self.node_names.iter().enumerate() {
            engine.node(name, self.software(index));
        }
        let outcome = self.driver().drive(&mut engine, samples).await;
        (outcome, engine)
    }
}

/// The run [`check_determinism`] repeats (madsim takes the run as a plain `fn`).
#[cfg(madsim)]
static PROBE: std::sync::Mutex<Option<(Scenario, u64, RunOptions)>> = std::sync::Mutex::new(None);

#[cfg(madsim)]
fn probe() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> {
    let (scenario, seed, options) = PROBE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .expect("check_determinism sets the probe");
    Box::pin(async move {
        let setup = Setup::new(&scenario, seed, &options);
        let mut samples = Vec::new();
        // The outcome does not matter here: madsim compares every random draw of both runs.
        let (_, mut engine) = setup.run_on_madsim(&mut samples).await;
        engine.shutdown();
    })
}

/// Runs `seed` twice under madsim's determinism check, which logs every draw of the
/// runtime's generator (task scheduling, latencies, timers) in the first run and panics at the
/// first draw of the second run that differs. `Err` names the seed and what madsim reported.
#[cfg(madsim)]
pub fn check_determinism(
    scenario: &Scenario,
    seed: u64,
    options: &RunOptions,
) -> Result<(), String> {
    *PROBE.lock().unwrap_or_else(|e| e.into_inner()) =
        Some((scenario.clone(), seed, options.clone()));
    std::panic::catch_unwind(|| {
        madsim::runtime::Runtime::check_determinism(
            derive_seed(seed, 0),
            crate::engine::config(BASE_LATENCY),
            probe,
        )
    })
    .map_err(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "non-string panic".to_owned());
        format!(
            "scenario {} seed {seed} is not deterministic under madsim: {message}",
            scenario.name
        )
    })
}

/// The fault injector of one run: applies the schedule, aims leader churn, heals at the end of
/// the safety phase and samples resource use, on either engine.
pub(crate) struct Driver<'a> {
    scenario: &'a Scenario,
    history: &'a History,
    node_names: &'a [String],
    clocks: &'a [ClockControl],
    broker: &'a BrokerHost,
    node_usage: &'a NodeUsage,
    schedule: &'a FaultSchedule,
    churn: &'a ChurnPlan,
}

impl Driver<'_> {
    /// Runs the world to the scenario's end; returns the virtual time it ended at.
    pub(crate) async fn drive(
        &self,
        engine: &mut impl Engine,
        samples: &mut Vec<UsageSample>,
    ) -> Result<Duration, String> {
        let scenario = self.scenario;
        let history = self.history;
        let node_names = self.node_names;
        let broker = self.broker;
        let total = scenario.duration();
        let world = faults::World {
            nodes: node_names,
            clocks: self.clocks,
            broker,
        };
        // Faults still to apply, by (time, order of scheduling).
        let mut pending: BTreeMap<(Duration, usize), Fault> = self
            .schedule
            .events
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, (at, fault))| ((at, i), fault))
            .collect();
        let mut scheduled = pending.len();
        let mut churn = self.churn.events.iter().peekable();
        let mut healed = false;
        let mut next_sample = scenario.sample_every;
        while engine.elapsed() < total {
            let now = engine.elapsed();
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
                    nodes: self.node_usage.snapshot(),
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
                let others_up = (0..node_names.len())
                    .filter(|n| *n != node && engine.is_running(*n))
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
                    && engine.is_running(*node)
                {
                    history.observe(now, &node_names[*node], ClusterObservation::Down);
                }
                faults::apply(engine, &world, now, &fault);
                history.fault(now, fault.to_string());
            }
            if !healed && now >= scenario.safety {
                faults::heal_all(engine, &world, now);
                history.fault(now, "heal everything; liveness phase begins".to_owned());
                healed = true;
            }
            // The next moment something is due (madsim jumps there; turmoil steps one tick).
            let mut until = total;
            if let Some(((at, _), _)) = pending.first_key_value() {
                until = until.min(*at);
            }
            if let Some((at, _)) = churn.peek() {
                until = until.min(*at);
            }
            if let Some(at) = next_sample {
                until = until.min(at);
            }
            if !healed {
                until = until.min(scenario.safety);
            }
            if let Err(e) = engine.advance(until).await {
                return Err(format!("a host failed at {}: {e}", format_time(now)));
            }
        }
        Ok(engine.elapsed())
    }
}
