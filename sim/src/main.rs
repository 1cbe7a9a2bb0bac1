//! `aether-sim`: sweeps many seeds of a simulation scenario and reports throughput.
//!
//! ```text
//! cargo run --profile sim --features sim --bin aether-sim -- --seeds 10000
//! cargo run --profile sim --features sim --bin aether-sim -- --seed 1234 --trace
//! ```
//!
//! `aether-sim --help` lists the options.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aether::planted::PlantedBugs;
use aether_sim::artifacts;
use aether_sim::runner::parse_planted;
use aether_sim::{RunOptions, Scenario, run};
use clap::Parser;

/// Sweeps seeds of a simulation scenario: each seed is a full run (faults, then a fault-free
/// liveness phase) checked against every invariant; failing seeds print the command that
/// replays them.
#[derive(Parser, Debug)]
#[command(name = "aether-sim", version)]
struct Cli {
    /// How many seeds to run.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// Run exactly this seed (overrides --first and --seeds).
    #[arg(long)]
    seed: Option<u64>,
    /// The scenario.
    #[arg(long, default_value = "store", value_parser = scenario_name)]
    scenario: String,
    /// Simulated seconds per seed: the safety phase is this minus the scenario's liveness phase
    /// [default: 60, or the scenario's own length when longer (long-horizon: 2 days)].
    #[arg(long)]
    seconds: Option<u64>,
    /// Planted bugs to switch on, comma-separated.
    #[arg(long, value_parser = parse_planted, default_value = "")]
    planted: PlantedBugs,
    /// Worker threads (default: all cores).
    #[arg(long)]
    jobs: Option<usize>,
    /// Run every seed twice and fail when the runs differ: under madsim, madsim's own check
    /// (every draw of its generator — task order, latencies, timers — must repeat); under
    /// turmoil, the two runs' trace hashes must be equal. Also on with
    /// `MADSIM_TEST_CHECK_DETERMINISM` set.
    #[arg(long)]
    check_determinism: bool,
    /// turmoil tick in milliseconds (turmoil engine only).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    tick_ms: u64,
    /// Print the full trace of every seed (use with --seed).
    #[arg(long)]
    trace: bool,
    /// Run on the replicated broker model (three replicas: lagging followers answering direct
    /// gets, stream-leader failovers) instead of one linearizable server.
    #[arg(long)]
    replicated: bool,
    /// Write each failing seed's timeline (`<scenario>-<seed>.html`) and full trace
    /// (`<scenario>-<seed>.trace.txt`) into this directory; with --seed, also when it passes.
    /// Default: $AETHER_SIM_ARTIFACTS.
    #[arg(long, value_name = "DIR")]
    artifacts: Option<PathBuf>,
}

fn scenario_name(name: &str) -> Result<String, String> {
    Scenario::by_name(name)
        .map(|_| name.to_owned())
        .ok_or_else(|| {
            let known: Vec<&str> = Scenario::all()
                .iter()
                .chain(&Scenario::long())
                .chain(&Scenario::beyond_guarantees())
                .map(|s| s.name)
                .collect();
            format!("unknown scenario {name:?}; known: {}", known.join(", "))
        })
}

struct Args {
    first: u64,
    count: u64,
    scenario: Scenario,
    options: RunOptions,
    jobs: usize,
    check_determinism: bool,
}

fn parse() -> Args {
    let cli = Cli::parse();
    let scenario = Scenario::by_name(&cli.scenario).expect("checked by the parser");
    let length = cli.seconds.map_or(
        scenario.duration().max(Duration::from_secs(60)),
        Duration::from_secs,
    );
    let safety = length.saturating_sub(scenario.liveness);
    let (first, count) = match cli.seed {
        Some(seed) => (seed, 1),
        None => (cli.first, cli.seeds),
    };
    Args {
        first,
        count,
        scenario: scenario.with_safety(safety),
        options: RunOptions {
            planted: cli.planted,
            tick: Duration::from_millis(cli.tick_ms),
            keep_trace: cli.trace,
            replicated: cli.replicated,
            artifacts: cli.artifacts.or_else(artifacts::dir_from_env),
        },
        check_determinism: cli.check_determinism
            || std::env::var_os("MADSIM_TEST_CHECK_DETERMINISM").is_some(),
        jobs: cli
            .jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1),
    }
}

// Wall-clock time of the harness itself (throughput), never of simulated code.
#[allow(clippy::disallowed_methods)]
fn wall_now() -> std::time::Instant {
    std::time::Instant::now()
}

/// Runs `seed` a second time (under madsim: twice more, inside madsim's check) and compares.
fn determinism(args: &Args, seed: u64, first: &aether_sim::RunReport) -> Result<(), String> {
    #[cfg(madsim)]
    {
        let _ = first;
        aether_sim::runner::check_determinism(&args.scenario, seed, &args.options)
    }
    #[cfg(not(madsim))]
    {
        let again = run(&args.scenario, seed, &args.options);
        if again.trace_hash == first.trace_hash {
            Ok(())
        } else {
            Err(format!(
                "NOT DETERMINISTIC: scenario {} seed {seed}: trace hash {:x} then {:x}",
                args.scenario.name, first.trace_hash, again.trace_hash
            ))
        }
    }
}

/// Stamps log lines with the simulation's virtual time.
struct SimTime;

impl tracing_subscriber::fmt::time::FormatTime for SimTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        match aether_sim::engine::try_sim_elapsed() {
            Some(t) => write!(w, "{:>10.3}", t.as_secs_f64()),
            None => write!(w, "{:>10}", "-"),
        }
    }
}

fn main() {
    // The library's own logs, for debugging one seed: `AETHER_SIM_LOG=aether=debug`.
    if let Ok(filter) = std::env::var("AETHER_SIM_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_timer(SimTime)
            .with_ansi(false)
            .with_writer(std::io::stderr)
            .init();
    }
    let args = parse();
    println!(
        "aether-sim ({}): scenario {} ({} nodes + {}, {:?} simulated per seed), seeds {}..{}, {} jobs{}",
        aether_sim::engine::NAME,
        args.scenario.name,
        args.scenario.nodes,
        if args.options.replicated {
            "a replicated (R3) broker"
        } else {
            "broker"
        },
        args.scenario.duration(),
        args.first,
        args.first + args.count,
        args.jobs,
        if args.check_determinism {
            ", each run twice (determinism check)"
        } else {
            ""
        }
    );
    let started = wall_now();
    let next = AtomicU64::new(args.first);
    let end = args.first + args.count;
    let simulated_nanos = AtomicU64::new(0);
    let failures: Mutex<Vec<u64>> = Mutex::new(Vec::new());
    let done = AtomicU64::new(0);
    std::thread::scope(|scope| {
        for _ in 0..args.jobs {
            scope.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, Ordering::SeqCst);
                    if seed >= end {
                        return;
                    }
                    let report = run(&args.scenario, seed, &args.options);
                    if args.check_determinism
                        && let Err(e) = determinism(&args, seed, &report)
                    {
                        println!("{e}");
                        failures
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(seed);
                    }
                    simulated_nanos.fetch_add(report.simulated.as_nanos() as u64, Ordering::SeqCst);
                    if let Some(trace) = &report.trace {
                        for line in trace {
                            println!("{line}");
                        }
                        println!("{}", report.summary());
                    }
                    // One seed of a sampling scenario: its resource use per simulated day.
                    if args.count == 1 && !report.usage.is_empty() {
                        println!(
                            "resource use (last sample of each simulated day):\n{}",
                            aether_sim::usage::per_day_table(&report.usage)
                        );
                    }
                    // One seed asked for by number: its picture even when it passes.
                    if report.passed()
                        && args.count == 1
                        && let Some(dir) = &args.options.artifacts
                    {
                        match artifacts::write_for(&args.scenario, &args.options, &report, dir) {
                            Ok(files) => println!(
                                "timeline: {}\ntrace: {}",
                                files.timeline.display(),
                                files.trace.display()
                            ),
                            Err(e) => println!("timeline and trace not written: {e}"),
                        }
                    }
                    if !report.passed() {
                        println!("{report}");
                        failures
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(seed);
                    }
                    let finished = done.fetch_add(1, Ordering::SeqCst) + 1;
                    if finished.is_multiple_of(100) {
                        let elapsed = started.elapsed().as_secs_f64();
                        println!(
                            "  {finished} seeds, {:.0} seeds/min",
                            finished as f64 * 60.0 / elapsed
                        );
                    }
                }
            });
        }
    });
    let real = started.elapsed().as_secs_f64();
    let simulated = simulated_nanos.load(Ordering::SeqCst) as f64 / 1e9;
    let mut failures = failures.into_inner().unwrap_or_else(|e| e.into_inner());
    failures.sort_unstable();
    failures.dedup();
    println!(
        "{} seeds in {real:.1} s real: {:.0} seeds/min, simulated/real time {:.0}x ({:.0}x per core)",
        args.count,
        args.count as f64 * 60.0 / real,
        simulated / real,
        simulated / real / args.jobs as f64
    );
    if failures.is_empty() {
        println!("all seeds passed");
    } else {
        println!("{} failing seeds: {failures:?}", failures.len());
        std::process::exit(1);
    }
}
