//! `verify`: an fsck of one namespace. Every actor is replayed by the library
//! (`events_with_errors`), and what replay rejects is sorted into damage kinds, with expired
//! prefixes (retention removed an actor's first versions) reported apart from damage. Every
//! actor's latest snapshot is decoded too.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use aether::codec;
use aether::store::{ReplayErrorCause, ReplayResult};
use futures::StreamExt;
use serde_json::json;

use crate::output::{CliError, Verdict, preview, print_json};
use crate::store::{Namespace, open_namespace};

/// Actors replayed at once.
const VERIFY_CONCURRENCY_MAX: usize = 8;

/// A kind of damage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum DamageKind {
    /// A valid commit that does not continue the versions before it.
    VersionGap,
    /// A second copy of a commit.
    DuplicateCommit,
    /// Not a commit at all.
    Undecodable,
    /// A commit of another actor.
    WrongActor,
    /// Store headers that disagree with the body.
    HeaderMismatch,
    /// A commit that leaves no version after it.
    VersionOverflow,
    /// A subject whose token is not an encoded actor id.
    UndecodableSubject,
    /// An actor's latest snapshot cannot be read, or claims a version the actor never reached.
    Snapshot,
    /// A cause this build does not know by name.
    Other,
}

impl DamageKind {
    /// The name printed for it.
    pub fn name(self) -> &'static str {
        match self {
            DamageKind::VersionGap => "version gap",
            DamageKind::DuplicateCommit => "duplicate commit",
            DamageKind::Undecodable => "undecodable record",
            DamageKind::WrongActor => "wrong actor",
            DamageKind::HeaderMismatch => "header mismatch",
            DamageKind::VersionOverflow => "version overflow",
            DamageKind::UndecodableSubject => "undecodable subject",
            DamageKind::Snapshot => "damaged snapshot",
            DamageKind::Other => "damaged record",
        }
    }

    fn of(cause: &ReplayErrorCause) -> Self {
        match cause {
            ReplayErrorCause::VersionGap { .. } => DamageKind::VersionGap,
            ReplayErrorCause::DuplicateCommit(_) => DamageKind::DuplicateCommit,
            ReplayErrorCause::Decode(_) => DamageKind::Undecodable,
            ReplayErrorCause::WrongActor { .. } => DamageKind::WrongActor,
            ReplayErrorCause::HeaderMismatch { .. } => DamageKind::HeaderMismatch,
            ReplayErrorCause::VersionOverflow(_) => DamageKind::VersionOverflow,
            _ => DamageKind::Other,
        }
    }
}

/// One damaged record (or snapshot, or subject).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// Its stream sequence (0 for a snapshot found damaged without one).
    pub sequence: u64,
    /// What kind.
    pub kind: DamageKind,
    /// What replay said.
    pub detail: String,
    /// A preview of the raw record.
    pub raw: String,
}

/// What replay says about one actor, sorted.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Classified {
    /// The first version still stored when the actor's first valid commit does not start at 1:
    /// the versions before it expired (retention removed the prefix).
    pub expired_before: Option<u64>,
    /// The last valid version (0: none).
    pub last_version: u64,
    /// The damaged records, in stream order.
    pub damage: Vec<Damage>,
    /// After an expired prefix: the events of the surviving commits (which replay reports as
    /// gaps), in version order.
    pub recovered: Vec<aether::Event>,
}

/// Sorts one actor's replay (from version 1) into an expired prefix and damage.
///
/// Replay checks versions from 1, so after an expired prefix it reports the first surviving
/// commit and everything after it as version gaps. Such an actor (no valid event at all, and a
/// first well-formed commit starting past version 1) has its gap records re-chained from that
/// commit on, with the same rules replay applies (continue the versions; a repeated commit id
/// is a duplicate). Records rejected for any other reason stay damage.
///
/// The store is getting a typed condition for an expired prefix; when it lands, this function
/// is the one place that switches to it.
pub fn classify(replay: &ReplayResult) -> Classified {
    let mut out = Classified {
        last_version: replay.events.last().map_or(0, |e| e.version),
        ..Classified::default()
    };
    let rechain = replay.events.is_empty();
    let mut next: Option<u64> = None;
    let mut seen = BTreeSet::new();
    for error in &replay.errors {
        let mut cause = error.cause.clone();
        if rechain
            && let ReplayErrorCause::VersionGap { expected: 1, .. } = cause
            && let Ok(commit) = codec::decode_commit(&error.raw)
        {
            let expected = *next.get_or_insert_with(|| {
                out.expired_before = Some(commit.first_version());
                commit.first_version()
            });
            if commit.first_version() == expected
                && let Some(after) = commit.last_version().checked_add(1)
            {
                next = Some(after);
                out.last_version = commit.last_version();
                seen.insert(commit.commit_id);
                out.recovered.extend(commit.events);
                continue;
            }
            cause = if seen.contains(&commit.commit_id) {
                ReplayErrorCause::DuplicateCommit(commit.commit_id)
            } else {
                ReplayErrorCause::VersionGap {
                    expected,
                    found: commit.first_version(),
                }
            };
        }
        out.damage.push(Damage {
            sequence: error.sequence,
            kind: DamageKind::of(&cause),
            detail: cause.to_string(),
            raw: preview(&error.raw),
        });
    }
    out
}

/// One actor's findings.
struct ActorFindings {
    actor: String,
    records: u64,
    classified: Classified,
    /// Version of the latest snapshot, if any.
    snapshot: Option<u64>,
}

/// Runs `verify` on `namespace`.
pub async fn run(
    broker: &aether::NatsBroker,
    namespace: &str,
    json: bool,
) -> Result<Verdict, CliError> {
    let ns = open_namespace(broker, namespace).await?;
    let listing = ns.actors().await?;
    let snapshot_actors = ns.snapshot_actors().await?;
    let mut actors: BTreeMap<String, u64> = listing.actors;
    for actor in &snapshot_actors {
        actors.entry(actor.clone()).or_insert(0);
    }
    let findings: Vec<Result<ActorFindings, CliError>> = futures::stream::iter(actors)
        .map(|(actor, records)| check_actor(&ns, actor, records))
        .buffered(VERIFY_CONCURRENCY_MAX)
        .collect()
        .await;
    let findings = findings.into_iter().collect::<Result<Vec<_>, _>>()?;
    let mut subject_damage = Vec::new();
    for subject in &listing.undecodable {
        subject_damage.push(Damage {
            sequence: 0,
            kind: DamageKind::UndecodableSubject,
            detail: format!("subject {subject:?} does not name an actor"),
            raw: String::new(),
        });
    }
    let damaged =
        !subject_damage.is_empty() || findings.iter().any(|f| !f.classified.damage.is_empty());
    if json {
        print_json(&report_json(namespace, &findings, &subject_damage));
    } else {
        print_report(namespace, &findings, &subject_damage);
    }
    Ok(Verdict::from_damage(damaged))
}

async fn check_actor(
    ns: &Namespace,
    actor: String,
    records: u64,
) -> Result<ActorFindings, CliError> {
    let replay = ns
        .store
        .events_with_errors(&actor, 1)
        .await
        .map_err(CliError::store(format!("replaying actor {actor:?}")))?;
    let mut classified = classify(&replay);
    let no_records = replay.events.is_empty() && replay.errors.is_empty();
    let snapshot = match ns.store.latest_snapshot(&actor).await {
        // Every event expired and the snapshot outlived them: the whole history is an expired
        // prefix that the snapshot covers.
        Ok(Some(s)) if no_records && s.version > 0 => {
            classified.expired_before = Some(s.version + 1);
            classified.last_version = s.version;
            Some(s.version)
        }
        Ok(Some(s)) if s.version > classified.last_version => {
            classified.damage.push(Damage {
                sequence: 0,
                kind: DamageKind::Snapshot,
                detail: format!(
                    "the latest snapshot is at version {}, but the actor's last valid version is {}",
                    s.version, classified.last_version
                ),
                raw: String::new(),
            });
            Some(s.version)
        }
        Ok(s) => s.map(|s| s.version),
        Err(aether::store::SnapshotError::Damaged { sequence, cause }) => {
            classified.damage.push(Damage {
                sequence,
                kind: DamageKind::Snapshot,
                detail: format!("snapshot cannot be read: {cause}"),
                raw: String::new(),
            });
            None
        }
        Err(e) => {
            return Err(CliError::store(format!(
                "reading the snapshot of {actor:?}"
            ))(e));
        }
    };
    Ok(ActorFindings {
        actor,
        records,
        classified,
        snapshot,
    })
}

/// Counts of each damage kind.
fn tally<'a>(damage: impl Iterator<Item = &'a Damage>) -> BTreeMap<DamageKind, usize> {
    let mut counts = BTreeMap::new();
    for d in damage {
        *counts.entry(d.kind).or_insert(0) += 1;
    }
    counts
}

fn expired_text(f: &ActorFindings, first: u64) -> String {
    let covered = match f.snapshot {
        Some(v) if v + 1 >= first => format!("covered by the snapshot at version {v}"),
        _ => "not covered by a snapshot".to_owned(),
    };
    format!(
        "expired prefix: versions 1..={} are gone, {covered}",
        first - 1
    )
}

fn print_report(namespace: &str, findings: &[ActorFindings], subjects: &[Damage]) {
    let records: u64 = findings.iter().map(|f| f.records).sum();
    println!(
        "verify {namespace}: {}, {}",
        plural(findings.len() as u64, "actor"),
        plural(records, "record")
    );
    for d in subjects {
        println!("  {}: {}", d.kind.name(), d.detail);
    }
    let mut expired = 0u64;
    for f in findings {
        if let Some(first) = f.classified.expired_before {
            expired += 1;
            println!("  {}  {}", f.actor, expired_text(f, first));
        }
        for d in &f.classified.damage {
            let at = match (d.kind, d.sequence) {
                (DamageKind::Snapshot, 0) => "snapshot".to_owned(),
                (DamageKind::Snapshot, s) => format!("snapshot seq {s}"),
                (_, s) => format!("seq {s}"),
            };
            print!("  {}  {at}  {}: {}", f.actor, d.kind.name(), d.detail);
            if d.raw.is_empty() {
                println!();
            } else {
                println!("  [{}]", d.raw);
            }
        }
    }
    let all = findings
        .iter()
        .flat_map(|f| &f.classified.damage)
        .chain(subjects);
    let counts = tally(all);
    let total: usize = counts.values().sum();
    let damaged_actors = findings
        .iter()
        .filter(|f| !f.classified.damage.is_empty())
        .count();
    if total == 0 {
        println!("no damage");
    } else {
        let kinds: Vec<String> = counts
            .iter()
            .map(|(kind, n)| format!("{}: {n}", kind.name()))
            .collect();
        println!(
            "DAMAGE: {total} in {} ({})",
            plural(damaged_actors as u64, "actor"),
            kinds.join(", ")
        );
    }
    if expired > 0 {
        println!(
            "{} with an expired prefix (not damage)",
            plural(expired, "actor")
        );
    }
}

/// `1 actor`, `2 actors`.
fn plural(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn report_json(
    namespace: &str,
    findings: &[ActorFindings],
    subjects: &[Damage],
) -> serde_json::Value {
    let damage_json = |d: &Damage| {
        json!({
            "sequence": d.sequence,
            "kind": d.kind.name(),
            "detail": d.detail,
            "raw": d.raw,
        })
    };
    let actors: Vec<serde_json::Value> = findings
        .iter()
        .map(|f| {
            json!({
                "actor": f.actor,
                "records": f.records,
                "last_version": f.classified.last_version,
                "snapshot_version": f.snapshot,
                "expired_before": f.classified.expired_before,
                "damage": f.classified.damage.iter().map(damage_json).collect::<Vec<_>>(),
            })
        })
        .collect();
    let counts: BTreeMap<&str, usize> = tally(
        findings
            .iter()
            .flat_map(|f| &f.classified.damage)
            .chain(subjects),
    )
    .into_iter()
    .map(|(k, n)| (k.name(), n))
    .collect();
    json!({
        "namespace": namespace,
        "damaged": !counts.is_empty(),
        "damage_counts": counts,
        "expired_prefixes": findings.iter().filter(|f| f.classified.expired_before.is_some()).count(),
        "subjects": subjects.iter().map(damage_json).collect::<Vec<_>>(),
        "actors": actors,
    })
}
