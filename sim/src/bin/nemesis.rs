//! `aether-nemesis`: the store workload and the simulation's checkers on a real three-server
//! nats-server cluster under real faults (`aether_sim::nemesis`). Exits 1 when a run breaks an
//! invariant, after printing its fault timeline, the per-fault table and the violations.
//!
//! ```text
//! cargo run --release -p aether-sim --features nemesis --bin aether-nemesis -- --seed 7
//! cargo run --release -p aether-sim --features nemesis --bin aether-nemesis -- --seeds 5 --seconds 120
//! cargo run --release -p aether-sim --features nemesis --bin aether-nemesis -- --workload cluster --nodes 4
//! ```

use std::process::ExitCode;
use std::time::Duration;

use aether_sim::nemesis::{NemesisOptions, NemesisWorkload, run};
use aether_sim::runner::parse_planted;
use clap::Parser;

/// Runs the nemesis: faults drawn from a seed against a real nats-server cluster, checked by
/// the simulation's checkers.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// What the aether nodes run: `store` or `cluster` (the simulation's scenarios of those
    /// names).
    #[arg(long, default_value = "store")]
    workload: String,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// How many seeds, one run each (a fresh cluster per run).
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// Seconds of the fault phase.
    #[arg(long, default_value_t = 40)]
    seconds: u64,
    /// Seconds of the fault-free phase after it.
    #[arg(long, default_value_t = 20)]
    liveness: u64,
    /// Aether nodes (client connections running the workload).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Planted bugs to switch on, comma-separated (`aether-sim --help` lists them).
    #[arg(long, default_value = "")]
    planted: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let planted = match parse_planted(&args.planted) {
        Ok(planted) => planted,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let workload = match args.workload.as_str() {
        "store" => NemesisWorkload::Store(Default::default()),
        "cluster" => NemesisWorkload::cluster(),
        other => {
            eprintln!("unknown workload {other:?}: store or cluster");
            return ExitCode::from(2);
        }
    };
    let mut failed = Vec::new();
    for seed in args.seed..args.seed + args.seeds {
        let options = NemesisOptions {
            seed,
            safety: Duration::from_secs(args.seconds),
            liveness: Duration::from_secs(args.liveness),
            nodes: args.nodes,
            planted,
            workload: workload.clone(),
            ..NemesisOptions::default()
        };
        let report = run(&options);
        println!("{report}");
        if !report.passed() {
            println!("replay: {}", report.replay_command(&options));
            failed.push(seed);
        }
    }
    if failed.is_empty() {
        println!("all {} nemesis runs passed", args.seeds);
        ExitCode::SUCCESS
    } else {
        println!("failing seeds: {failed:?}");
        ExitCode::FAILURE
    }
}
