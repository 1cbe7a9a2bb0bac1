//! The deterministic simulation, as CI runs it: a fixed seed set per scenario, a determinism
//! check, a snapshot of one seed's trace summary, and the planted-bug teeth tests.
//!
//! - `AETHER_SIM_SEED=<n>` runs only that seed (in every scenario test, or in
//!   `replay_seed_from_env`, which also prints the full trace).
//! - `AETHER_SIM_SEEDS=<count>` sweeps that many seeds per scenario.
//! - `AETHER_SIM_SCENARIO=<name>` and `AETHER_SIM_PLANTED=<bug,...>` select what
//!   `replay_seed_from_env` runs.

#![cfg(feature = "sim")]

use std::time::Duration;

use aether::planted::PlantedBugs;
use aether_sim::runner::{parse_planted, scenario_length_from_env, seeds_from_env};
use aether_sim::{RunOptions, RunReport, Scenario, run};

/// Seeds CI runs per scenario.
const CI_SEEDS: u64 = 16;

fn run_seeds(scenario: &Scenario, options: &RunOptions, seeds: &[u64]) -> Vec<RunReport> {
    seeds
        .iter()
        .map(|seed| run(scenario, *seed, options))
        .collect()
}

fn assert_all_pass(reports: &[RunReport]) {
    let failed: Vec<&RunReport> = reports.iter().filter(|r| !r.passed()).collect();
    for report in &failed {
        eprintln!("{report}");
    }
    assert!(
        failed.is_empty(),
        "{} of {} seeds failed; replay with the command printed above",
        failed.len(),
        reports.len()
    );
}

#[test]
fn store_scenario_holds_every_invariant_on_the_ci_seeds() {
    let reports = run_seeds(
        &Scenario::store(),
        &RunOptions::default(),
        &seeds_from_env(0, CI_SEEDS),
    );
    for r in &reports {
        eprintln!("{r}");
    }
    assert_all_pass(&reports);
}

/// Seeds that once failed, with the length of the run that failed: cluster seeds 1830 and 1891
/// of a 60 s sweep answered a command with another command's outcome (replies crossed node
/// incarnations through reused inbox names); seeds 62 and 160 reported a keyed command as
/// definitely failed when the lookup of its key failed after an attempt that had stored it.
const CLUSTER_REGRESSION_SEEDS: [(u64, u64); 4] = [(1830, 60), (1891, 60), (62, 60), (160, 60)];

#[test]
fn cluster_regression_seeds_hold_every_invariant() {
    for (seed, seconds) in CLUSTER_REGRESSION_SEEDS {
        let scenario = Scenario::cluster();
        let safety = Duration::from_secs(seconds) - scenario.liveness;
        let report = run(&scenario.with_safety(safety), seed, &RunOptions::default());
        assert!(report.passed(), "{report}");
    }
}

/// madsim seeds that once failed (scenario, replicated broker model, seed, run length). Cluster
/// seed 6686 on the replicated model: a former leader's assignment update, held on a cut link,
/// landed after the next leader took office; the new leader had nothing to republish for (no
/// membership change) and kept every shard on one node, so three of four nodes stopped
/// writing after the heal.
#[cfg(madsim)]
const MADSIM_REGRESSION_SEEDS: [(&str, bool, u64, u64); 1] = [("cluster", true, 6686, 60)];

#[cfg(madsim)]
#[test]
fn madsim_regression_seeds_hold_every_invariant() {
    for (name, replicated, seed, seconds) in MADSIM_REGRESSION_SEEDS {
        let scenario = Scenario::by_name(name).unwrap();
        let safety = Duration::from_secs(seconds) - scenario.liveness;
        let options = RunOptions {
            replicated,
            ..RunOptions::default()
        };
        let report = run(&scenario.with_safety(safety), seed, &options);
        assert!(report.passed(), "{report}");
    }
}

#[test]
fn cluster_scenario_holds_every_invariant_on_the_ci_seeds() {
    let reports = run_seeds(
        &Scenario::cluster(),
        &RunOptions::default(),
        &seeds_from_env(0, CI_SEEDS),
    );
    for r in &reports {
        eprintln!("{r}");
    }
    assert_all_pass(&reports);
    let observations: u64 = reports.iter().map(|r| r.counts.observations).sum();
    assert!(observations > 0, "the cluster reported what it did");
    let commands_ok: u64 = reports.iter().map(|r| r.commands.ok).sum();
    assert!(commands_ok > 0, "actor commands were answered");
}

#[test]
fn readside_scenario_holds_every_invariant_on_the_ci_seeds() {
    let reports = run_seeds(
        &Scenario::readside(),
        &RunOptions::default(),
        &seeds_from_env(0, CI_SEEDS),
    );
    for r in &reports {
        eprintln!("{r}");
    }
    assert_all_pass(&reports);
    let delivered: u64 = reports.iter().map(|r| r.readside.delivered).sum();
    let handled: u64 = reports.iter().map(|r| r.readside.handled).sum();
    let fenced: u64 = reports.iter().map(|r| r.readside.fenced).sum();
    assert!(delivered > 0 && handled > 0, "the read side ran");
    assert!(fenced > 0, "projector instances fenced each other");
}

#[test]
fn policy_scenario_holds_every_invariant_on_the_ci_seeds() {
    let reports = run_seeds(
        &Scenario::policy(),
        &RunOptions::default(),
        &seeds_from_env(0, CI_SEEDS),
    );
    for r in &reports {
        eprintln!("{r}");
    }
    assert_all_pass(&reports);
    let total = |f: fn(&RunReport) -> u64| -> u64 { reports.iter().map(f).sum() };
    let (placed, declined) = (total(|r| r.flow.placed), total(|r| r.flow.declined));
    let (charged, shipped) = (total(|r| r.flow.charged), total(|r| r.flow.shipped));
    eprintln!("orders: {placed} placed, {declined} declined, {charged} charged, {shipped} shipped");
    assert!(
        placed > 0 && declined > 0,
        "orders were placed, some of a declined amount"
    );
    // Every order charged once unless declined, every charge shipped once (the checkers fail
    // the run otherwise): the totals add up.
    assert_eq!(charged, placed - declined);
    assert_eq!(shipped, charged);
}

#[test]
fn retention_scenario_holds_every_invariant_on_the_ci_seeds() {
    let reports = run_seeds(
        &Scenario::retention(),
        &RunOptions::default(),
        &seeds_from_env(0, CI_SEEDS),
    );
    for r in &reports {
        eprintln!("{r}");
    }
    assert_all_pass(&reports);
}

/// Eight simulated hours of the long-horizon scenario (its sweep runs two days) on both broker
/// models: events expire, leases and TTLs cycle thousands of times, and resource use must not
/// grow (`resources`).
#[test]
fn long_horizon_holds_every_invariant_and_its_resource_use_stays_flat() {
    let scenario = Scenario::long_horizon().with_safety(Duration::from_secs(7 * 3600));
    for replicated in [false, true] {
        let options = RunOptions {
            replicated,
            ..RunOptions::default()
        };
        let reports = run_seeds(&scenario, &options, &seeds_from_env(0, 1));
        for r in &reports {
            eprintln!("{r}");
            eprintln!("{}", aether_sim::usage::per_day_table(&r.usage));
        }
        assert_all_pass(&reports);
        let report = &reports[0];
        assert!(
            report.usage.len() >= 7,
            "resource use was sampled every hour"
        );
        assert!(
            report.counts.appends_ok > 300,
            "the sparse workload appended ({} acknowledged)",
            report.counts.appends_ok
        );
        let last = report.usage.last().expect("samples");
        let events = last
            .broker
            .streams
            .get("AETHER_EV_sim")
            .expect("the events stream was sampled");
        assert!(
            (events.messages as u64) < report.counts.appends_ok,
            "events expired under the 6 h retention ({} stored of {} acknowledged)",
            events.messages,
            report.counts.appends_ok
        );
    }
}

/// Every scenario's CI seeds on the replicated broker model: lagging followers answer direct
/// gets, stream-leader failovers lose uncommitted writes.
#[test]
fn every_scenario_holds_every_invariant_on_the_replicated_model() {
    let options = RunOptions {
        replicated: true,
        ..RunOptions::default()
    };
    for scenario in Scenario::all() {
        let reports = run_seeds(&scenario, &options, &seeds_from_env(0, CI_SEEDS));
        for r in &reports {
            eprintln!("{r}");
        }
        assert_all_pass(&reports);
    }
}

#[test]
fn one_seed_run_twice_gives_the_same_trace() {
    let seed = seeds_from_env(7, 1)[0];
    for scenario in [
        Scenario::store().with_safety(Duration::from_secs(10)),
        Scenario::cluster().with_safety(Duration::from_secs(10)),
        Scenario::readside().with_safety(Duration::from_secs(10)),
        Scenario::policy().with_safety(Duration::from_secs(10)),
    ] {
        let first = run(&scenario, seed, &RunOptions::default());
        let second = run(&scenario, seed, &RunOptions::default());
        let replicated = RunOptions {
            replicated: true,
            ..RunOptions::default()
        };
        let third = run(&scenario, seed, &replicated);
        let fourth = run(&scenario, seed, &replicated);
        assert_eq!(third.trace_hash, fourth.trace_hash, "replicated model");
        assert_eq!(
            first.trace_hash,
            second.trace_hash,
            "seed {seed} of {} is not deterministic:\n{}\n---\n{}",
            scenario.name,
            first.summary(),
            second.summary()
        );
        assert_eq!(first.summary(), second.summary());
    }
}

/// One snapshot per engine: the two schedule tasks and deliver packets differently, so one
/// seed is a different run on each.
#[test]
fn trace_summary_of_seed_42_is_stable() {
    let scenario = Scenario::store().with_safety(Duration::from_secs(10));
    let report = run(&scenario, 42, &RunOptions::default());
    let name = if aether_sim::engine::NAME == "madsim" {
        "store_seed_42_summary_madsim"
    } else {
        "store_seed_42_summary"
    };
    insta::assert_snapshot!(name, report.summary());
}

/// Under madsim, its own check: every draw of the runtime's generator (which task runs next,
/// packet latencies) repeats in a second run of the seed.
#[cfg(madsim)]
#[test]
fn madsim_determinism_check_passes_on_every_scenario() {
    let seed = seeds_from_env(3, 1)[0];
    for scenario in [
        Scenario::store().with_safety(Duration::from_secs(10)),
        Scenario::cluster().with_safety(Duration::from_secs(10)),
        Scenario::readside().with_safety(Duration::from_secs(10)),
        Scenario::retention().with_safety(Duration::from_secs(10)),
    ] {
        for replicated in [false, true] {
            let options = RunOptions {
                replicated,
                ..RunOptions::default()
            };
            aether_sim::runner::check_determinism(&scenario, seed, &options)
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }
}

/// Replays `AETHER_SIM_SEED` (default 0) of `AETHER_SIM_SCENARIO` (default `store`) with
/// `AETHER_SIM_PLANTED` bugs, printing the full trace and the verdict.
#[test]
fn replay_seed_from_env() {
    let name = std::env::var("AETHER_SIM_SCENARIO").unwrap_or_else(|_| "store".to_owned());
    let scenario = scenario_length_from_env(
        Scenario::by_name(&name).unwrap_or_else(|| panic!("unknown scenario {name:?}")),
    );
    let planted = parse_planted(&std::env::var("AETHER_SIM_PLANTED").unwrap_or_default())
        .expect("AETHER_SIM_PLANTED names planted bugs");
    let replaying = std::env::var("AETHER_SIM_SEED").is_ok();
    let seed = seeds_from_env(0, 1)[0];
    let options = RunOptions {
        planted,
        keep_trace: true,
        replicated: std::env::var("AETHER_SIM_REPLICATED").is_ok_and(|v| v == "1"),
        ..RunOptions::default()
    };
    let report = run(&scenario, seed, &options);
    let trace = report.trace.as_ref().expect("trace kept");
    assert!(!trace.is_empty(), "a run records a trace");
    if replaying {
        for line in trace {
            println!("{line}");
        }
        println!("{}", report.summary());
    }
    println!("{report}");
    if planted == PlantedBugs::default() {
        assert!(report.passed(), "{report}");
    }
}

/// The number of seeds that catches a bug failing `per_300` of 300 sweep seeds with
/// probability at least 99.9 % (seeds fail independently): the smallest `k` with
/// `(1 - p)^k <= 0.001`, where `p` is the measured rate less two standard deviations of its
/// count (`2 sqrt(per_300)`), so that a modest drift of the rate does not make the test flaky.
fn budget_for(per_300: u32) -> u64 {
    assert!((1..=300).contains(&per_300), "a sweep rate in 1..=300");
    let count = f64::from(per_300);
    let p = ((count - 2.0 * count.sqrt()) / 300.0).max(0.5 / 300.0);
    ((0.001f64).ln() / (1.0 - p).ln()).ceil().max(1.0) as u64
}

/// Runs seeds from 0 until one breaks an invariant whose name starts with `invariant` (with
/// `""`: any checked invariant — a panic or a stuck run does not count); returns how many it
/// took.
fn seeds_to_catch(
    scenario: &Scenario,
    options: &RunOptions,
    invariant: &str,
    budget: u64,
) -> Option<u64> {
    for seed in 0..budget {
        let report = run(scenario, seed, options);
        if report.violations.iter().any(|v| {
            v.invariant.starts_with(invariant)
                && !matches!(v.invariant, "no panic" | "simulation ran to the end")
        }) {
            eprintln!("{report}");
            return Some(seed + 1);
        }
    }
    None
}

/// Asserts that planted bug `name` is caught by the checker of `invariant` in `scenario` (on
/// the replicated broker model when `replicated`) within the budget its sweep rate calls for:
/// `per_300` is `(turmoil, madsim)`, each engine's rate.
fn assert_caught(
    scenario: Scenario,
    name: &str,
    invariant: &str,
    per_300: (u32, u32),
    replicated: bool,
) {
    let per_300 = if aether_sim::engine::NAME == "madsim" {
        per_300.1
    } else {
        per_300.0
    };
    let options = RunOptions {
        planted: parse_planted(name).expect("a planted bug"),
        replicated,
        ..RunOptions::default()
    };
    let budget = budget_for(per_300);
    let caught = seeds_to_catch(&scenario, &options, invariant, budget);
    assert!(
        caught.is_some(),
        "planted bug {name} survived {budget} seeds of {} (invariant {invariant:?})",
        scenario.name
    );
    eprintln!(
        "caught {name} in {} by {invariant:?} within {} of {budget} seed(s)",
        scenario.name,
        caught.unwrap_or_default()
    );
}

/// One test per planted bug: `name => scenario, invariant prefix, failing seeds per 300 in a
/// sweep of that scenario at its CI length on turmoil / on madsim[, replicated]` (see
/// docs/sim.md for the table and how to re-measure it with `scripts/teeth-sweep.sh`).
macro_rules! teeth {
    (@replicated replicated) => { true };
    (@replicated) => { false };
    ($($test:ident: $name:literal => $scenario:expr, $invariant:literal, $turmoil:literal / $madsim:literal $(, $replicated:ident)?;)*) => {
        $(
            #[test]
            fn $test() {
                assert_caught($scenario, $name, $invariant, ($turmoil, $madsim), teeth!(@replicated $($replicated)?));
            }
        )*
        /// Every planted bug has a teeth test.
        #[test]
        fn every_planted_bug_has_a_teeth_test() {
            let tested = [$($name),*];
            for (name, _) in aether_sim::runner::PLANTED {
                assert!(tested.contains(name), "planted bug {name} has no teeth test");
            }
        }
    };
}

teeth! {
    planted_refusal_after_ambiguity_is_moved_is_caught:
        "refusal_after_ambiguity_is_moved" => Scenario::store(), "3 a definite failure stores nothing", 99 / 98, replicated;
    planted_refusal_taken_at_its_word_is_caught:
        "refusal_taken_at_its_word" => Scenario::store(), "3 a definite failure stores nothing", 92 / 98, replicated;
    planted_tip_without_floor_is_caught:
        "tip_without_floor" => Scenario::store(), "9 ", 273 / 253, replicated;
    planted_append_without_expected_sequence_is_caught:
        "append_without_expected_sequence" => Scenario::store(), "4 ", 300 / 300;
    planted_retry_with_fresh_commit_id_is_caught:
        "retry_with_fresh_commit_id" => Scenario::store(), "", 66 / 64;
    planted_skip_damaged_records_is_caught:
        "skip_damaged_records" => Scenario::store(), "replay never hides damage", 300 / 300;
    planted_replay_skips_contiguity_check_is_caught:
        "replay_skips_contiguity_check" => Scenario::store(), "1 ", 283 / 281;
    planted_read_from_off_by_one_is_caught:
        "read_from_off_by_one" => Scenario::store(), "3/9 ", 300 / 300;
    planted_leader_ignores_lease_deadline_is_caught:
        "leader_ignores_lease_deadline" => Scenario::cluster(), "6 ", 110 / 129;
    planted_leader_publishes_after_deadline_is_caught:
        "leader_publishes_after_deadline" => Scenario::cluster(), "11 a leader acts only inside its own term", 21 / 23;
    planted_leader_renews_without_cas_is_caught:
        "leader_renews_without_cas" => Scenario::cluster(), "11 the lease key moves only by compare-and-set", 17 / 2;
    planted_leader_skips_token_check_is_caught:
        "leader_skips_token_check" => Scenario::cluster_beyond_margin(), "11 assignment writes are fenced", 9 / 1;
    planted_apply_assignment_out_of_order_is_caught:
        "apply_assignment_out_of_order" => Scenario::cluster(), "7 ", 95 / 230;
    planted_host_retries_without_reload_is_caught:
        "host_retries_without_reload" => Scenario::cluster(), "10 ", 300 / 300;
    planted_host_appends_with_any_is_caught:
        "host_appends_with_any" => Scenario::cluster(), "10 ", 300 / 300;
    planted_host_skips_owner_check_is_caught:
        "host_skips_owner_check" => Scenario::cluster(), "10 ", 289 / 298;
    planted_checkpoint_before_handling_is_caught:
        "checkpoint_before_handling" => Scenario::readside(), "13 ", 257 / 273;
    planted_projector_skips_fencing_is_caught:
        "projector_skips_fencing" => Scenario::readside(), "13 ", 300 / 300;
    planted_bus_hides_gaps_is_caught:
        "bus_hides_gaps" => Scenario::readside(), "12 ", 299 / 299;
    planted_policy_sends_unkeyed_is_caught:
        "policy_sends_unkeyed" => Scenario::policy(), "16 every trigger has at most one effect", 118 / 142;
    planted_snapshots_expire_with_events_is_caught:
        "snapshots_expire_with_events" => Scenario::retention(), "", 295 / 296;
}

/// Past the lease's clock margin the guarantee ends, and only it: two nodes can act as leader
/// at once (invariant 6, and leader actions outside their term), while everything fencing
/// tokens and compare-and-set protect — the lease key's moves, assignment epochs and tokens,
/// one owner per shard per epoch, the store's versions and acknowledged writes — still holds.
#[test]
fn beyond_the_clock_margin_only_the_lease_guarantee_breaks() {
    let scenario = Scenario::cluster_beyond_margin();
    let mut overlapping = 0;
    for seed in seeds_from_env(0, 40) {
        let report = run(&scenario, seed, &RunOptions::default());
        let unexpected: Vec<_> = report
            .violations
            .iter()
            .filter(|v| {
                !v.invariant.starts_with("6 ")
                    && !v
                        .invariant
                        .starts_with("11 a leader acts only inside its own term")
            })
            .collect();
        assert!(unexpected.is_empty(), "{report}");
        if !report.passed() {
            overlapping += 1;
        }
    }
    // A sweep fails about 22 % of seeds here; 40 seeds without one would happen with p < 1e-4.
    assert!(
        overlapping > 0,
        "a clock this slow must break the lease guarantee"
    );
    eprintln!("{overlapping} of 40 seeds had two leaders at once");
}
