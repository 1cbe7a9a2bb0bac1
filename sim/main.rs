//! `aether-sim`: sweeps many seeds of a simulation scenario and reports throughput.
//!
//! ```text
//! cargo run --profile sim --features sim --bin aether-sim -- --seeds 10000
//! cargo run --profile sim --features sim --bin aether-sim -- --seed 1234 --trace
//! ```
//!
//! Options: `--seeds <count>` (default 100), `--first <seed>` (default 0), `--seed <n>` (one
//! seed), `--scenario <name>` (default `store`), `--seconds <n>` (simulated seconds per seed,
//! default 60: the safety phase is that minus the scenario's liveness phase), `--planted
//! <bug,...>`, `--jobs <n>` (threads, default: all cores), `--tick-ms <n>` (default 10),
//! `--trace` (print the full trace of every seed; use with `--seed`).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aether::sim::runner::parse_planted;
use aether::sim::{RunOptions, Scenario, run};

struct Args {
    first: u64,
    count: u64,
    scenario: Scenario,
    options: RunOptions,
    jobs: usize,
}

fn usage(problem: &str) -> ! {
    eprintln!("aether-sim: {problem}");
    eprintln!(
        "usage: aether-sim [--seeds N] [--first S | --seed S] [--scenario store|cluster] [--seconds N] [--planted bug,...] [--jobs N] [--tick-ms N] [--trace]"
    );
    std::process::exit(2)
}

fn parse() -> Args {
    let mut first = 0;
    let mut count = 100;
    let mut scenario_name = "store".to_owned();
    let mut seconds = 60;
    let mut options = RunOptions::default();
    let mut jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .unwrap_or_else(|| usage(&format!("{name} needs a value")))
        };
        let number = |name: &str, v: String| -> u64 {
            v.parse()
                .unwrap_or_else(|_| usage(&format!("{name} takes a number")))
        };
        match arg.as_str() {
            "--seeds" => count = number("--seeds", value("--seeds")),
            "--first" => first = number("--first", value("--first")),
            "--seed" => {
                first = number("--seed", value("--seed"));
                count = 1;
            }
            "--scenario" => scenario_name = value("--scenario"),
            "--seconds" => seconds = number("--seconds", value("--seconds")),
            "--planted" => {
                options.planted = parse_planted(&value("--planted")).unwrap_or_else(|e| usage(&e))
            }
            "--jobs" => jobs = number("--jobs", value("--jobs")).max(1) as usize,
            "--tick-ms" => {
                options.tick = Duration::from_millis(number("--tick-ms", value("--tick-ms")).max(1))
            }
            "--trace" => options.keep_trace = true,
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    let scenario = Scenario::by_name(&scenario_name)
        .unwrap_or_else(|| usage(&format!("unknown scenario {scenario_name:?}")));
    let safety = Duration::from_secs(seconds).saturating_sub(scenario.liveness);
    Args {
        first,
        count,
        scenario: scenario.with_safety(safety),
        options,
        jobs,
    }
}

// Wall-clock time of the harness itself (throughput), never of simulated code.
#[allow(clippy::disallowed_methods)]
fn wall_now() -> std::time::Instant {
    std::time::Instant::now()
}

fn main() {
    let args = parse();
    println!(
        "aether-sim: scenario {} ({} nodes + broker, {:?} simulated per seed), seeds {}..{}, {} jobs",
        args.scenario.name,
        args.scenario.nodes,
        args.scenario.duration(),
        args.first,
        args.first + args.count,
        args.jobs
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
                    simulated_nanos.fetch_add(report.simulated.as_nanos() as u64, Ordering::SeqCst);
                    if let Some(trace) = &report.trace {
                        for line in trace {
                            println!("{line}");
                        }
                        println!("{}", report.summary());
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
