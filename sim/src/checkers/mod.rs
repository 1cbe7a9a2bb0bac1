//! Checkers: one file per invariant family of `docs/design.md`, each a pure function from the recorded
//! history and the broker's final state to a list of violations.
//!
//! | file | invariant |
//! |---|---|
//! | `versions` | 1. versions contiguous from 1; on an actor nobody damaged, every record is in the valid chain; on a damaged one, every record outside it was planted |
//! | `immutability` | 2. an acknowledged (or observed) event never changes |
//! | `durability` | 3. nothing acknowledged is lost (every ack is in the valid chain); definite failures leave no trace |
//! | `reads` | 3/9. a read from version `v` returns exactly the chain from `v` to a tip no older than any append acknowledged before it began (on one linearizable server; on replicas, `sessions`) |
//! | `sessions` | 9. per store handle (node incarnation): reads and `latest_version` never go back behind what the handle saw or appended before |
//! | `decisions` | 10. every counter decision was taken on the fold of exactly the events before it, by an owner under an epoch it had applied; every refusal on what the stream held |
//! | `leader_actions` | 11. publications and renewals are sent inside their own term, carry its token; the lease and assignment keys only ever move by compare-and-set to newer terms |
//! | `expected_version` | 4. at most one success per (actor, expected version) |
//! | `commands` | 2/3 for actor commands: an answered command is stored at the version it reported; a definite failure stored nothing |
//! | `commits` | 5. no second copy of a commit (unique commit and event ids) |
//! | `damage` | replay never hides a damaged record; the store never damages one itself |
//! | `leadership` | 6. one leader per fencing token; tokens strictly increase |
//! | `ownership` | 7. one owner per shard per assignment epoch; epochs applied in order |
//! | `liveness` | 8. progress within a bound once faults stop |
//! | `bus` | 12. each origin's events in order and once; every gap reported; notifications name stored events; nothing lost once faults stop |
//! | `retention` | 14. under retention every load works from the snapshot and the events after it, exactly |
//! | `projections` | 13. every commit below the checkpoint handled at least once; checkpoints only move forward; caught up once faults stop |

pub mod bus;
pub mod commands;
pub mod commits;
pub mod damage;
pub mod decisions;
pub mod durability;
pub mod expected_version;
pub mod immutability;
pub mod leader_actions;
pub mod leadership;
pub mod liveness;
pub mod ownership;
pub mod projections;
pub mod reads;
pub mod resources;
pub mod retention;
pub mod sessions;
pub mod versions;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use super::history::{EventDigest, Op};
use aether::broker::StoredMessage;
use aether::codec::{Commit, HEADER_COMMIT_ID};
use aether::store::check_record;

/// A broken invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Which invariant (e.g. `"4 at most one success per expected version"`).
    pub invariant: &'static str,
    /// What exactly happened.
    pub detail: String,
}

impl Violation {
    /// Ids of the operations the detail names, in the checkers' wording: `op #N`, `read #N`
    /// (also `command op #N`), and lists `ops [a, b, ...]`. In order, without repeats.
    pub fn op_ids(&self) -> Vec<usize> {
        let mut ids = Vec::new();
        let words: Vec<&str> = self.detail.split_whitespace().collect();
        for (i, word) in words.iter().enumerate() {
            let keyword = word.trim_matches(|c: char| !c.is_ascii_alphanumeric());
            let rest = &words[i + 1..];
            match keyword {
                "op" | "read" => {
                    if let Some(n) = rest.first().and_then(|w| w.strip_prefix('#')) {
                        ids.extend(leading_number::<usize>(n));
                    }
                }
                "ops" => ids.extend(number_list(rest).into_iter().map(|n| n as usize)),
                _ => {}
            }
        }
        dedup_in_order(ids)
    }

    /// Stream sequences the detail names (`seq N`, `seq [a, b]`): records of the namespace's
    /// events stream, which the timeline maps back to the operations that stored them.
    pub fn stream_sequences(&self) -> Vec<u64> {
        self.numbers_after("seq")
    }

    /// The numbers that follow `keyword` in the detail (`token 7`, `epoch [3, 4]`), in order,
    /// without repeats.
    pub fn numbers_after(&self, keyword: &str) -> Vec<u64> {
        let mut numbers = Vec::new();
        let words: Vec<&str> = self.detail.split_whitespace().collect();
        for (i, word) in words.iter().enumerate() {
            if word.trim_matches(|c: char| !c.is_ascii_alphanumeric()) == keyword {
                numbers.extend(number_list(&words[i + 1..]));
            }
        }
        dedup_in_order(numbers)
    }
}

/// The number a word starts with (`12,` gives 12).
fn leading_number<T: std::str::FromStr>(word: &str) -> Option<T> {
    let end = word
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(word.len());
    word[..end].parse().ok()
}

/// The numbers at the start of `words`: one number, or a bracketed list `[a, b, c]`.
fn number_list(words: &[&str]) -> Vec<u64> {
    let Some(first) = words.first() else {
        return Vec::new();
    };
    let Some(open) = first.strip_prefix('[') else {
        return leading_number(first).into_iter().collect();
    };
    let mut out = Vec::new();
    for (i, word) in words.iter().enumerate() {
        let word = if i == 0 { open } else { word };
        out.extend(leading_number::<u64>(word));
        if word.contains(']') {
            break;
        }
    }
    out
}

fn dedup_in_order<T: Ord + Copy>(items: Vec<T>) -> Vec<T> {
    let mut seen = std::collections::BTreeSet::new();
    items.into_iter().filter(|i| seen.insert(*i)).collect()
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invariant {}: {}", self.invariant, self.detail)
    }
}

/// A final stream record, decoded.
#[derive(Clone, Debug)]
pub struct Record {
    /// Stream sequence.
    pub sequence: u64,
    /// The `Aether-Commit-Id` header, if any.
    pub header_commit_id: Option<String>,
    /// The commit, or why replay would refuse the record (checked exactly as replay does: the
    /// body decodes, names the actor, and the headers agree with it).
    pub commit: Result<Commit, String>,
    /// Whether the record is part of the actor's valid history as replay defines it: a valid
    /// commit that continues the versions of the chain before it.
    pub in_chain: bool,
}

/// Everything checkers look at.
#[derive(Debug)]
pub struct CheckInput<'a> {
    /// The recorded operations.
    pub ops: &'a [Op],
    /// Final records per actor, read from the broker state after the run.
    pub streams: BTreeMap<String, Vec<Record>>,
    /// Actors that hold a damaged record on purpose (excluded from format checks).
    pub damaged_actors: Vec<String>,
    /// Node names.
    pub nodes: &'a [String],
    /// End of the safety (fault) phase.
    pub safety_end: Duration,
    /// End of the run.
    pub end: Duration,
    /// How long after the faults stop progress must be visible.
    pub liveness_bound: Duration,
    /// Whether the scenario runs the cluster layer (enables leadership/ownership liveness).
    pub cluster: bool,
    /// The cluster's shard count (0 without a cluster).
    pub shard_count: u32,
    /// The cluster's lease TTL (how long the server keeps a lease after its last write).
    pub lease_ttl: Duration,
    /// Per actor, the version of its latest snapshot in the broker's final state (0: none).
    pub snapshots: BTreeMap<String, u64>,
    /// The store kept events only this long (`None`: forever).
    pub retention: Option<Duration>,
    /// The broker was the replicated model: direct gets may be answered by a lagging replica,
    /// so reads are checked against each session's guarantees instead of against every
    /// acknowledgement.
    pub replicated: bool,
    /// Resource use sampled during the run (empty unless the scenario samples).
    pub usage: &'a [crate::usage::UsageSample],
}

impl CheckInput<'_> {
    /// Decodes the raw final records of `actor`, in stream order, and marks its valid chain:
    /// the records replay accepts (each a valid commit continuing the versions before it).
    pub fn decode(actor: &str, messages: &[StoredMessage], retention: bool) -> Vec<Record> {
        let mut next = 1u64;
        let mut started = false;
        messages
            .iter()
            .map(|m| {
                let commit = check_record(m, actor).map_err(|e| e.to_string());
                // Under retention the first valid commit may start past 1: what came before
                // expired (as replay sees it).
                if let (true, false, Ok(c)) = (retention, started, &commit) {
                    next = c.first_version();
                }
                started |= commit.is_ok();
                let in_chain = commit.as_ref().is_ok_and(|c| c.first_version() == next);
                if let (true, Ok(c)) = (in_chain, &commit) {
                    next = c.last_version() + 1;
                }
                Record {
                    sequence: m.sequence,
                    header_commit_id: m.headers.get(HEADER_COMMIT_ID).cloned(),
                    commit,
                    in_chain,
                }
            })
            .collect()
    }

    /// Whether version `version` of `actor` is gone from the final stream by design: expired
    /// under retention and covered by the actor's final snapshot.
    pub fn expired(&self, actor: &str, version: u64) -> bool {
        self.retention.is_some() && self.snapshots.get(actor).is_some_and(|s| version <= *s)
    }

    /// The commits of each actor's valid chain, in version order.
    pub fn chain(&self, actor: &str) -> impl Iterator<Item = (u64, &Commit)> {
        self.streams
            .get(actor)
            .into_iter()
            .flatten()
            .filter(|r| r.in_chain)
            .filter_map(|r| r.commit.as_ref().ok().map(|c| (r.sequence, c)))
    }

    /// Final events per actor by version: the valid chain, as a replay after the run returns it.
    pub fn final_events(&self) -> BTreeMap<&str, BTreeMap<u64, EventDigest>> {
        let mut out: BTreeMap<&str, BTreeMap<u64, EventDigest>> = BTreeMap::new();
        for actor in self.streams.keys() {
            let by_version = out.entry(actor.as_str()).or_default();
            for (_, commit) in self.chain(actor) {
                for event in &commit.events {
                    by_version.insert(event.version, EventDigest::of(event));
                }
            }
        }
        out
    }
}

/// Runs every checker.
pub fn check_all(input: &CheckInput<'_>) -> Vec<Violation> {
    let mut out = Vec::new();
    out.extend(versions::check(input));
    out.extend(immutability::check(input));
    out.extend(durability::check(input));
    out.extend(reads::check(input));
    out.extend(sessions::check(input));
    out.extend(decisions::check(input));
    out.extend(leader_actions::check(input));
    out.extend(expected_version::check(input));
    out.extend(commits::check(input));
    out.extend(commands::check(input));
    out.extend(damage::check(input));
    out.extend(leadership::check(input));
    out.extend(ownership::check(input));
    out.extend(liveness::check(input));
    out.extend(bus::check(input));
    out.extend(projections::check(input));
    out.extend(retention::check(input));
    out.extend(resources::check(input));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn violation(detail: &str) -> Violation {
        Violation {
            invariant: "test",
            detail: detail.to_owned(),
        }
    }

    #[test]
    fn op_ids_are_read_from_the_checkers_wording() {
        assert_eq!(
            violation("hot-1: 2 appends expecting v3 all succeeded: ops [12, 345]").op_ids(),
            vec![12, 345]
        );
        assert_eq!(
            violation("a: read #7 on n1 from v2 (invoked 1s): op #9 and (op #7 from n2)").op_ids(),
            vec![7, 9]
        );
        assert_eq!(
            violation("n1: command op #40 sent at 3.000").op_ids(),
            vec![40]
        );
        // Bus numbers are not operations.
        assert!(
            violation("s received #4 of n1/9 after #2")
                .op_ids()
                .is_empty()
        );
    }

    #[test]
    fn stream_sequences_are_read_from_the_checkers_wording() {
        assert_eq!(
            violation("a: seq 221 carries commit x; reported damage at seq [5, 6]")
                .stream_sequences(),
            vec![221, 5, 6]
        );
    }
}
