//! What a nemesis run reports: the planned and the real fault timeline, per fault kind the
//! appends acknowledged, found, lost, duplicated and ambiguous, leader changes and their
//! durations, and the checkers' violations by invariant.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use super::NemesisOptions;
use super::leaders::LeaderSample;
use super::schedule::{FaultKind, PlannedFault};
use crate::checkers::{CheckInput, Violation};
use crate::history::{Op, OpKind, Outcome, format_time};

/// Operation outcomes of the appends that began while one kind of fault was on (or while
/// none was).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Faults of this kind injected.
    pub faults: u64,
    /// Appends acknowledged.
    pub acknowledged: u64,
    /// Acknowledged appends whose every event is in the final streams.
    pub found: u64,
    /// Acknowledged appends with an event missing from the final streams.
    pub lost: u64,
    /// Appends with an event stored more than once.
    pub duplicated: u64,
    /// Appends that ended without a definite answer (timeouts, unknown outcomes, a node that
    /// died first).
    pub ambiguous: u64,
    /// Of those, the ones that were stored after all.
    pub ambiguous_stored: u64,
    /// Appends refused for a conflict (another writer had moved the actor on).
    pub conflicts: u64,
    /// Appends that failed definitely with an error: timeouts, an unavailable server.
    pub errors: u64,
    /// Leader changes of the events stream whose leaderless gap began while a fault of this
    /// kind was on (or up to 2 s after it ended).
    pub leader_changes: u64,
    /// The longest of those gaps.
    pub longest_without_leader: Duration,
}

/// The events stream changed leader (as polled every 250 ms).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderChange {
    /// When the new leader was first seen.
    pub at: Duration,
    /// The leader before (None: none was known at the start).
    pub from: Option<String>,
    /// The new leader.
    pub to: String,
    /// How long no leader answered before it.
    pub without_leader: Duration,
}

/// What a nemesis run found.
#[derive(Debug)]
pub struct NemesisReport {
    /// The seed.
    pub seed: u64,
    /// The fault timeline the seed drew.
    pub planned: Vec<PlannedFault>,
    /// What happened, in real time: faults with the server each role resolved to, heals,
    /// node incarnations.
    pub timeline: Vec<(Duration, String)>,
    /// Broken invariants (empty: the run passed).
    pub violations: Vec<Violation>,
    /// Per fault kind (and `"no fault"`), what became of the appends that began under it.
    pub per_kind: BTreeMap<&'static str, FaultStats>,
    /// Leader changes of the events stream.
    pub leader_changes: Vec<LeaderChange>,
    /// Polls (every 250 ms) in which two servers each named themselves the stream's leader.
    pub double_claims: usize,
    /// Operations recorded.
    pub operations: usize,
    /// Hash of this run's interleaving (differs between runs of one seed).
    pub interleaving: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Where the full trace of a failing run was written (every fault, every operation's
    /// invoke and outcome in real time), or why it could not be.
    pub trace_file: Option<Result<std::path::PathBuf, String>>,
}

impl NemesisReport {
    /// Whether every invariant held.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The command that runs this seed again.
    pub fn replay_command(&self, options: &NemesisOptions) -> String {
        let planted = crate::report::planted_names(&options.planted);
        let planted = if planted.is_empty() {
            String::new()
        } else {
            format!(" --planted {}", planted.join(","))
        };
        format!(
            "cargo run --release -p aether-sim --features nemesis --bin aether-nemesis -- \
             --workload {} --seed {} --seconds {} --liveness {} --nodes {}{planted}",
            options.workload.name(),
            self.seed,
            options.safety.as_secs(),
            options.liveness.as_secs(),
            options.nodes
        )
    }

    /// Totals over every fault kind.
    pub fn totals(&self) -> FaultStats {
        let mut t = FaultStats::default();
        for s in self.per_kind.values() {
            t.faults += s.faults;
            t.acknowledged += s.acknowledged;
            t.found += s.found;
            t.lost += s.lost;
            t.duplicated += s.duplicated;
            t.ambiguous += s.ambiguous;
            t.ambiguous_stored += s.ambiguous_stored;
            t.conflicts += s.conflicts;
            t.errors += s.errors;
            t.leader_changes += s.leader_changes;
            t.longest_without_leader = t.longest_without_leader.max(s.longest_without_leader);
        }
        t
    }
}

impl fmt::Display for NemesisReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "NEMESIS seed {}: {} ({} operations, {:.1} s, interleaving {:016x})",
            self.seed,
            if self.passed() {
                "passed".to_owned()
            } else {
                format!("FAILED, {} violations", self.violations.len())
            },
            self.operations,
            self.elapsed.as_secs_f64(),
            self.interleaving
        )?;
        writeln!(f, "fault timeline (drawn from the seed; repeats exactly):")?;
        for p in &self.planned {
            writeln!(
                f,
                "  {:>9}  {:<24} for {}",
                format_time(p.at),
                p.kind.to_string(),
                format_time(p.lasts)
            )?;
        }
        writeln!(
            f,
            "what happened (real time; the interleaving does not repeat):"
        )?;
        for (at, line) in &self.timeline {
            writeln!(f, "  {:>9}  {line}", format_time(*at))?;
        }
        writeln!(
            f,
            "appends by the fault they began under:\n  {:<24} {:>6} {:>6} {:>6} {:>5} {:>5} {:>9} {:>8} {:>9} {:>6}",
            "fault",
            "faults",
            "acked",
            "found",
            "lost",
            "dup",
            "ambiguous",
            "→stored",
            "conflicts",
            "errors"
        )?;
        let totals = self.totals();
        for (kind, s) in self
            .per_kind
            .iter()
            .map(|(k, s)| (*k, s))
            .chain([("total", &totals)])
        {
            writeln!(
                f,
                "  {kind:<24} {:>6} {:>6} {:>6} {:>5} {:>5} {:>9} {:>8} {:>9} {:>6} {:>7} {:>10}",
                s.faults,
                s.acknowledged,
                s.found,
                s.lost,
                s.duplicated,
                s.ambiguous,
                s.ambiguous_stored,
                s.conflicts,
                s.errors,
                s.leader_changes,
                format_time(s.longest_without_leader)
            )?;
        }
        writeln!(
            f,
            "events stream leader changes: {}",
            self.leader_changes.len()
        )?;
        for c in &self.leader_changes {
            writeln!(
                f,
                "  {:>9}  {} -> {} ({} without a leader)",
                format_time(c.at),
                c.from.as_deref().unwrap_or("-"),
                c.to,
                format_time(c.without_leader)
            )?;
        }
        match &self.trace_file {
            Some(Ok(path)) => writeln!(f, "trace: {}", path.display())?,
            Some(Err(e)) => writeln!(f, "trace not written: {e}")?,
            None => {}
        }
        if !self.passed() {
            let mut by_invariant: BTreeMap<&str, usize> = BTreeMap::new();
            for v in &self.violations {
                *by_invariant.entry(v.invariant).or_default() += 1;
            }
            writeln!(f, "violations by invariant:")?;
            for (invariant, count) in &by_invariant {
                writeln!(f, "  {count:>5}  {invariant}")?;
            }
            if std::env::var_os("AETHER_NEMESIS_ALL").is_some() {
                for v in &self.violations {
                    writeln!(f, "  {v}")?;
                }
            }
            writeln!(f, "violated ({}):", self.violations.len())?;
            for v in self.violations.iter().take(12) {
                writeln!(f, "  {v}")?;
            }
            if self.violations.len() > 12 {
                writeln!(f, "  ... and {} more", self.violations.len() - 12)?;
            }
        }
        Ok(())
    }
}

/// Leader changes in the polled samples: a new leader, or the same one again after a stretch
/// in which no server named one (a re-election). The time without a leader runs from the last
/// sample of the old leader to the first of the new.
pub(super) fn leader_changes(samples: &[(Duration, LeaderSample)]) -> Vec<LeaderChange> {
    let mut out = Vec::new();
    let mut current: Option<(String, Duration)> = None;
    let mut gap = false;
    for (at, sample) in samples {
        match (&sample.leader, &mut current) {
            (Some(l), Some((c, last_seen))) if l == c && !gap => *last_seen = *at,
            (Some(l), _) => {
                out.push(LeaderChange {
                    at: *at,
                    from: current.as_ref().map(|(c, _)| c.clone()),
                    to: l.clone(),
                    without_leader: current
                        .as_ref()
                        .map_or(Duration::ZERO, |(_, seen)| *at - *seen),
                });
                current = Some((l.clone(), *at));
                gap = false;
            }
            (None, _) => gap = current.is_some(),
        }
    }
    out
}

/// How many samples saw two servers claim the leadership at once.
pub(super) fn double_claims(samples: &[(Duration, LeaderSample)]) -> usize {
    samples
        .iter()
        .filter(|(_, s)| s.self_claims.len() > 1)
        .count()
}

/// Per fault kind, what became of the appends that began while it was on.
pub(super) fn fault_stats(
    ops: &[Op],
    input: &CheckInput<'_>,
    windows: &[(FaultKind, Duration, Duration)],
) -> BTreeMap<&'static str, FaultStats> {
    let mut stored: BTreeMap<String, u64> = BTreeMap::new();
    for events in input.final_events().into_values() {
        for digest in events.into_values() {
            *stored.entry(digest.id).or_default() += 1;
        }
    }
    let mut out: BTreeMap<&'static str, FaultStats> = BTreeMap::new();
    for (kind, _, _) in windows {
        out.entry(kind.class()).or_default().faults += 1;
    }
    for op in ops {
        let OpKind::Append { event_ids, .. } = &op.kind else {
            continue;
        };
        let kind = windows
            .iter()
            .find(|(_, from, to)| op.invoked >= *from && op.invoked < *to)
            .map_or("no fault", |(k, _, _)| k.class());
        let s = out.entry(kind).or_default();
        let counts: Vec<u64> = event_ids
            .iter()
            .map(|id| stored.get(id).copied().unwrap_or(0))
            .collect();
        let all_stored = counts.iter().all(|c| *c >= 1);
        if counts.iter().any(|c| *c > 1) {
            s.duplicated += 1;
        }
        match &op.outcome {
            Outcome::Appended { .. } => {
                s.acknowledged += 1;
                if all_stored {
                    s.found += 1;
                } else {
                    s.lost += 1;
                }
            }
            Outcome::Failed(e) if e.starts_with("conflict on actor") => s.conflicts += 1,
            Outcome::Failed(_) => s.errors += 1,
            _ => {
                s.ambiguous += 1;
                if all_stored {
                    s.ambiguous_stored += 1;
                }
            }
        }
    }
    out
}
