//! What a run reports: outcome counts, violations, the faults applied, resource samples, and how
//! to replay it; and the table of planted bugs by name.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use aether::planted::PlantedBugs;

use crate::artifacts::Artifacts;
use crate::broker::BrokerStats;
use crate::checkers::Violation;
use crate::history::{Op, format_time};
use crate::scenarios::Scenario;
use crate::usage::UsageSample;

/// Counts of operation outcomes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpCounts {
    /// Appends acknowledged.
    pub appends_ok: u64,
    /// Appends that definitely failed (conflicts mostly).
    pub appends_failed: u64,
    /// Appends with unknown outcome (indeterminate, or cut short by a crash).
    pub appends_ambiguous: u64,
    /// Reads that returned events.
    pub reads_ok: u64,
    /// Reads that reported damage.
    pub reads_damaged: u64,
    /// Reads that failed.
    pub reads_failed: u64,
    /// Cluster observations.
    pub observations: u64,
}

/// Counts of actor command outcomes (kept out of [`RunReport::summary`], whose snapshot pins
/// the store scenario).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommandCounts {
    /// Commands answered with an outcome.
    pub ok: u64,
    /// Commands the aggregate refused (a take larger than the counter).
    pub refused: u64,
    /// Commands that definitely failed (not owner, unroutable, conflicts, reads).
    pub failed: u64,
    /// Commands with unknown outcome (timeout, indeterminate append, remote failure, or cut
    /// short by a crash or a leave).
    pub ambiguous: u64,
}

/// Counts of the read side (kept out of [`RunReport::summary`] like [`CommandCounts`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadsideCounts {
    /// Bus deliveries recorded by subscribers.
    pub delivered: u64,
    /// Events subscribers were told they missed.
    pub lagged: u64,
    /// Projector steps that moved the checkpoint.
    pub steps: u64,
    /// Projector steps refused because another instance moved the checkpoint.
    pub fenced: u64,
    /// Projector steps that failed otherwise.
    pub steps_failed: u64,
    /// Commits handed to projection handlers (with repeats).
    pub handled: u64,
}

/// The result of one seed.
#[derive(Clone, Debug)]
pub struct RunReport {
    /// The seed.
    pub seed: u64,
    /// The scenario's name.
    pub scenario: &'static str,
    /// The scenario's total simulated duration (safety plus liveness phase).
    pub duration: Duration,
    /// Planted bugs that were on.
    pub planted: PlantedBugs,
    /// Whether it ran on the replicated broker model.
    pub replicated: bool,
    /// Broken invariants (empty: the run passed).
    pub violations: Vec<Violation>,
    /// Hash of the trace (determinism).
    pub trace_hash: u64,
    /// Outcome counts.
    pub counts: OpCounts,
    /// Actor command outcome counts.
    pub commands: CommandCounts,
    /// Read-side counts.
    pub readside: ReadsideCounts,
    /// The policy scenario's order flow (zero elsewhere).
    pub flow: crate::scenarios::policy::FlowCounts,
    /// Faults applied, with simulated time.
    pub faults: Vec<(Duration, String)>,
    /// Broker host counters.
    pub broker: BrokerStats,
    /// Final number of records per actor.
    pub stream_lengths: BTreeMap<String, usize>,
    /// Simulated time covered.
    pub simulated: Duration,
    /// The full trace, when asked for.
    pub trace: Option<Vec<String>>,
    /// The nodes, in order.
    pub nodes: Vec<String>,
    /// Every operation (cluster observations in true time), kept with the trace.
    pub ops: Option<Vec<Op>>,
    /// Resource use sampled during the run (scenarios with `sample_every`).
    pub usage: Vec<UsageSample>,
    /// The failure's timeline and trace files, when [`RunOptions::artifacts`](crate::RunOptions::artifacts) asked for them
    /// (or why they could not be written).
    pub artifacts: Option<Result<Artifacts, String>>,
}

impl RunReport {
    /// Whether every invariant held.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The one-line command that replays this run with a full trace.
    pub fn replay_command(&self) -> String {
        if self.scenario == "user" {
            return crate::harness::replay_line(self.seed);
        }
        let planted = planted_names(&self.planted);
        let planted = if planted.is_empty() {
            String::new()
        } else {
            format!("AETHER_SIM_PLANTED={} ", planted.join(","))
        };
        // A run of another length than the scenario's default is another run: say which.
        let seconds = match Scenario::by_name(self.scenario) {
            Some(default) if default.duration() == self.duration => String::new(),
            _ => format!("AETHER_SIM_SECONDS={} ", self.duration.as_secs()),
        };
        let replicated = if self.replicated {
            "AETHER_SIM_REPLICATED=1 "
        } else {
            ""
        };
        // A madsim run replays in the madsim build CI makes (its own target directory, the
        // optimised `sim` profile).
        let (engine, cargo) = if crate::engine::NAME == "madsim" {
            (
                "RUSTFLAGS=\"--cfg madsim\" CARGO_TARGET_DIR=target/madsim ",
                "cargo test --profile sim -p aether-sim --features sim",
            )
        } else {
            ("", "cargo test --features sim")
        };
        format!(
            "{engine}{planted}{seconds}{replicated}AETHER_SIM_SCENARIO={} AETHER_SIM_SEED={} {cargo} --test sim replay_seed_from_env -- --nocapture",
            self.scenario, self.seed
        )
    }

    /// A short, deterministic summary (for snapshots).
    pub fn summary(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "scenario: {}\nseed: {}\n",
            self.scenario, self.seed
        ));
        out.push_str(&format!("trace_hash: {:016x}\n", self.trace_hash));
        out.push_str(&format!("simulated: {}\n", format_time(self.simulated)));
        out.push_str(&format!("counts: {:?}\n", self.counts));
        out.push_str(&format!(
            "broker: requests={} connections={} replies_dropped={}\n",
            self.broker.requests, self.broker.connections, self.broker.replies_dropped
        ));
        out.push_str(&format!("streams: {:?}\n", self.stream_lengths));
        out.push_str("faults:\n");
        for (at, fault) in &self.faults {
            out.push_str(&format!("  {:>9} {fault}\n", format_time(*at)));
        }
        out.push_str(&format!("violations: {}\n", self.violations.len()));
        out
    }
}

impl fmt::Display for RunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.passed() {
            return write!(
                f,
                "seed {} ({}) passed: {:?} {:?} {:?} {:?}",
                self.seed, self.scenario, self.counts, self.commands, self.readside, self.flow
            );
        }
        writeln!(
            f,
            "SIMULATION FAILED: scenario {} seed {}{} on {}",
            self.scenario,
            self.seed,
            if self.replicated {
                " (replicated broker)"
            } else {
                ""
            },
            crate::engine::NAME
        )?;
        writeln!(f, "replay: {}", self.replay_command())?;
        match &self.artifacts {
            Some(Ok(written)) => {
                writeln!(f, "timeline: {}", written.timeline.display())?;
                writeln!(f, "trace: {}", written.trace.display())?;
            }
            Some(Err(e)) => writeln!(f, "timeline and trace not written: {e}")?,
            None => {}
        }
        writeln!(f, "faults:")?;
        for (at, fault) in &self.faults {
            writeln!(f, "  {:>9} {fault}", format_time(*at))?;
        }
        writeln!(f, "violated ({}):", self.violations.len())?;
        for v in self.violations.iter().take(8) {
            writeln!(f, "  {v}")?;
        }
        if self.violations.len() > 8 {
            writeln!(f, "  ... and {} more", self.violations.len() - 8)?;
        }
        Ok(())
    }
}

/// Turns one planted bug's switch into a place to set.
pub type Switch = fn(&mut PlantedBugs) -> &mut bool;

/// Every planted bug by name, with its switch.
pub const PLANTED: &[(&str, Switch)] = &[
    ("append_without_expected_sequence", |b| {
        &mut b.append_without_expected_sequence
    }),
    ("retry_with_fresh_commit_id", |b| {
        &mut b.retry_with_fresh_commit_id
    }),
    ("skip_damaged_records", |b| &mut b.skip_damaged_records),
    ("leader_ignores_lease_deadline", |b| {
        &mut b.leader_ignores_lease_deadline
    }),
    ("apply_assignment_out_of_order", |b| {
        &mut b.apply_assignment_out_of_order
    }),
    ("host_retries_without_reload", |b| {
        &mut b.host_retries_without_reload
    }),
    ("host_appends_with_any", |b| &mut b.host_appends_with_any),
    ("host_skips_owner_check", |b| &mut b.host_skips_owner_check),
    ("leader_publishes_after_deadline", |b| {
        &mut b.leader_publishes_after_deadline
    }),
    ("leader_skips_token_check", |b| {
        &mut b.leader_skips_token_check
    }),
    ("leader_renews_without_cas", |b| {
        &mut b.leader_renews_without_cas
    }),
    ("replay_skips_contiguity_check", |b| {
        &mut b.replay_skips_contiguity_check
    }),
    ("read_from_off_by_one", |b| &mut b.read_from_off_by_one),
    ("checkpoint_before_handling", |b| {
        &mut b.checkpoint_before_handling
    }),
    ("projector_skips_fencing", |b| {
        &mut b.projector_skips_fencing
    }),
    ("bus_hides_gaps", |b| &mut b.bus_hides_gaps),
    ("policy_sends_unkeyed", |b| &mut b.policy_sends_unkeyed),
    ("snapshots_expire_with_events", |b| {
        &mut b.snapshots_expire_with_events
    }),
    ("tip_without_floor", |b| &mut b.tip_without_floor),
    ("refusal_after_ambiguity_is_moved", |b| {
        &mut b.refusal_after_ambiguity_is_moved
    }),
    ("refusal_taken_at_its_word", |b| {
        &mut b.refusal_taken_at_its_word
    }),
];

/// Names of the planted bugs that are on.
pub fn planted_names(bugs: &PlantedBugs) -> Vec<&'static str> {
    let mut bugs = *bugs;
    PLANTED
        .iter()
        .filter(|(_, switch)| *switch(&mut bugs))
        .map(|(name, _)| *name)
        .collect()
}

/// Parses a comma-separated list of planted bug names.
///
/// # Errors
/// The first unknown name.
pub fn parse_planted(list: &str) -> Result<PlantedBugs, String> {
    let mut bugs = PlantedBugs::default();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((_, switch)) = PLANTED.iter().find(|(n, _)| *n == name) else {
            return Err(format!("unknown planted bug {name:?}"));
        };
        *switch(&mut bugs) = true;
    }
    Ok(bugs)
}
