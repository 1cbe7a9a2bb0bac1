//! Checkers: one file per invariant family of `docs/design.md`, each a pure function from the recorded
//! history and the broker's final state to a list of violations.
//!
//! | file | invariant |
//! |---|---|
//! | `versions` | 1. versions contiguous from 1, increasing in stream order |
//! | `immutability` | 2. an acknowledged (or observed) event never changes |
//! | `durability` | 3. nothing acknowledged is lost; reads see every earlier ack; definite failures leave no trace |
//! | `expected_version` | 4. at most one success per (actor, expected version) |
//! | `commands` | 2/3 for actor commands: an answered command is stored at the version it reported; a definite failure stored nothing |
//! | `commits` | 5. no second copy of a commit (unique commit and event ids) |
//! | `damage` | replay never hides a damaged record; the store never damages one itself |
//! | `leadership` | 6. one leader per fencing token; tokens strictly increase |
//! | `ownership` | 7. one owner per shard per assignment epoch; epochs applied in order |
//! | `liveness` | 8. progress within a bound once faults stop |

pub mod commands;
pub mod commits;
pub mod damage;
pub mod durability;
pub mod expected_version;
pub mod immutability;
pub mod leadership;
pub mod liveness;
pub mod ownership;
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
}

impl CheckInput<'_> {
    /// Decodes the raw final records of `actor`.
    pub fn decode(actor: &str, messages: &[StoredMessage]) -> Vec<Record> {
        messages
            .iter()
            .map(|m| Record {
                sequence: m.sequence,
                header_commit_id: m.headers.get(HEADER_COMMIT_ID).cloned(),
                commit: check_record(m, actor).map_err(|e| e.to_string()),
            })
            .collect()
    }

    /// Final events per actor by version (first occurrence wins).
    pub fn final_events(&self) -> BTreeMap<&str, BTreeMap<u64, EventDigest>> {
        let mut out: BTreeMap<&str, BTreeMap<u64, EventDigest>> = BTreeMap::new();
        for (actor, records) in &self.streams {
            let by_version = out.entry(actor.as_str()).or_default();
            for record in records {
                if let Ok(commit) = &record.commit {
                    for event in &commit.events {
                        by_version
                            .entry(event.version)
                            .or_insert_with(|| EventDigest::of(event));
                    }
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
    out.extend(expected_version::check(input));
    out.extend(commits::check(input));
    out.extend(commands::check(input));
    out.extend(damage::check(input));
    out.extend(leadership::check(input));
    out.extend(ownership::check(input));
    out.extend(liveness::check(input));
    out
}
