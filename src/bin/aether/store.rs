//! The namespace commands: `events`, `tail`, `actors`, `commit`, `snapshot`. All of them read
//! through the library's `EventStore` on a namespace whose streams already exist.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aether::broker::{Broker, BrokerError};
use aether::codec::{self, HEADER_COMMIT_ID};
use aether::names::NamespaceNames;
use aether::store::{Page, ReplayError, check_record};
use aether::{Event, EventStore, NatsBroker, Runtime, StoreConfig};
use serde_json::json;

use crate::output::{CliError, Verdict, clip, preview, print_json, rfc3339};
use crate::verify::{Damage, classify};

/// Commits read per page by `tail`.
const TAIL_PAGE_MAX: usize = 256;

/// An existing namespace, opened for reading.
pub struct Namespace {
    /// The broker.
    pub broker: NatsBroker,
    /// Its names.
    pub names: NamespaceNames,
    /// Its store.
    pub store: EventStore<NatsBroker>,
}

/// A namespace's actors.
pub struct ActorListing {
    /// Actor id → records on its subject.
    pub actors: BTreeMap<String, u64>,
    /// Subjects whose token does not decode to an actor id.
    pub undecodable: Vec<String>,
}

/// Opens `namespace` for reading. Refuses a namespace whose events stream does not exist
/// instead of creating it.
///
/// # Errors
/// An invalid name, a missing namespace, broker failures.
pub async fn open_namespace(broker: &NatsBroker, namespace: &str) -> Result<Namespace, CliError> {
    codec::validate_namespace(namespace)?;
    let names = NamespaceNames::new(namespace);
    match broker.stream_state(&names.events_stream()).await {
        Ok(_) => {}
        Err(BrokerError::NotFound { .. }) => {
            return Err(CliError::NoNamespace(namespace.to_owned()));
        }
        Err(e) => return Err(CliError::broker(format!("reading namespace {namespace:?}"))(e)),
    }
    // The events stream exists, so opening creates nothing (unless the snapshot stream was
    // removed by hand, which it then restores empty).
    let store = EventStore::open(Runtime::system(broker.clone()), StoreConfig::new(namespace))
        .await
        .map_err(CliError::store(format!("opening namespace {namespace:?}")))?;
    Ok(Namespace {
        broker: broker.clone(),
        names,
        store,
    })
}

impl Namespace {
    /// Every actor with at least one record, from the events stream's subjects.
    pub async fn actors(&self) -> Result<ActorListing, CliError> {
        let subjects = self
            .broker
            .subjects(&self.names.events_stream(), &self.names.events_pattern())
            .await
            .map_err(CliError::broker("listing actors"))?;
        let prefix = self.names.events_prefix();
        let mut listing = ActorListing {
            actors: BTreeMap::new(),
            undecodable: Vec::new(),
        };
        for (subject, count) in subjects {
            match subject.strip_prefix(&prefix).map(codec::decode_actor_id) {
                Some(Ok(actor)) => {
                    listing.actors.insert(actor, count);
                }
                _ => listing.undecodable.push(subject),
            }
        }
        Ok(listing)
    }

    /// Actors that have a snapshot.
    pub async fn snapshot_actors(&self) -> Result<BTreeSet<String>, CliError> {
        let subjects = self
            .broker
            .subjects(
                &self.names.snapshots_stream(),
                &self.names.snapshots_pattern(),
            )
            .await
            .map_err(CliError::broker("listing snapshots"))?;
        let prefix = self
            .names
            .snapshots_pattern()
            .trim_end_matches('*')
            .to_owned();
        Ok(subjects
            .keys()
            .filter_map(|s| codec::decode_actor_id(s.strip_prefix(&prefix)?).ok())
            .collect())
    }
}

fn event_json(event: &Event) -> serde_json::Value {
    json!({
        "version": event.version,
        "id": event.id,
        "type": event.event_type,
        "timestamp": rfc3339(event.timestamp),
        "data": event.data,
        "metadata": event.metadata,
    })
}

fn event_line(event: &Event) -> String {
    format!(
        "v{}  {}  {}  {}  {}",
        event.version,
        rfc3339(event.timestamp),
        event.event_type,
        event.id,
        clip(&event.data.to_string(), 200)
    )
}

fn damage_json(d: &Damage) -> serde_json::Value {
    json!({"sequence": d.sequence, "kind": d.kind.name(), "detail": d.detail, "raw": d.raw})
}

/// `events <ns> <actor> --from V`.
pub async fn events(
    broker: &NatsBroker,
    namespace: &str,
    actor: &str,
    from: u64,
    json: bool,
) -> Result<Verdict, CliError> {
    let ns = open_namespace(broker, namespace).await?;
    codec::encode_actor_id(actor)?;
    let replay = ns
        .store
        .events_with_errors(actor, 1)
        .await
        .map_err(CliError::store(format!("reading actor {actor:?}")))?;
    let classified = classify(&replay);
    let events: Vec<&Event> = replay
        .events
        .iter()
        .chain(&classified.recovered)
        .filter(|e| e.version >= from)
        .collect();
    if json {
        print_json(&json!({
            "namespace": namespace,
            "actor": actor,
            "events": events.iter().map(|e| event_json(e)).collect::<Vec<_>>(),
            "expired_before": classified.expired_before,
            "damage": classified.damage.iter().map(damage_json).collect::<Vec<_>>(),
        }));
    } else {
        if let Some(first) = classified.expired_before {
            println!("(versions 1..={} expired)", first - 1);
        }
        for event in &events {
            println!("{}", event_line(event));
        }
        for d in &classified.damage {
            println!(
                "DAMAGED seq {}  {}: {}  [{}]",
                d.sequence,
                d.kind.name(),
                d.detail,
                d.raw
            );
        }
        if events.is_empty() && classified.damage.is_empty() {
            eprintln!("actor {actor:?} has no events from version {from}");
        }
    }
    Ok(Verdict::from_damage(!classified.damage.is_empty()))
}

/// How `tail` follows.
#[derive(Clone, Copy, Debug)]
pub struct Follow {
    /// The first position; `None`: after the current end.
    pub from: Option<u64>,
    /// Stop after this many commits.
    pub max: Option<u64>,
    /// The wait between reads that found nothing new.
    pub poll: Duration,
}

/// `tail <ns>`: pages of `read_all` from the current end, until Ctrl-C or `max` commits.
pub async fn tail(
    broker: &NatsBroker,
    namespace: &str,
    follow: Follow,
    json: bool,
) -> Result<Verdict, CliError> {
    let ns = open_namespace(broker, namespace).await?;
    let stream = ns.names.events_stream();
    let from = match follow.from {
        Some(position) => position.max(1),
        None => {
            broker
                .stream_state(&stream)
                .await
                .map_err(CliError::broker("reading the end of the stream"))?
                .last_sequence
                + 1
        }
    };
    eprintln!("following {stream} from position {from} (Ctrl-C stops)");
    tokio::select! {
        biased;
        _ = tokio::signal::ctrl_c() => Ok(Verdict::Clean),
        result = follow_pages(&ns, from, follow, json) => result,
    }
}

async fn follow_pages(
    ns: &Namespace,
    mut position: u64,
    follow: Follow,
    json: bool,
) -> Result<Verdict, CliError> {
    let mut printed = 0u64;
    let mut damaged = false;
    loop {
        let page = ns
            .store
            .read_all(position, TAIL_PAGE_MAX)
            .await
            .map_err(CliError::store("reading new commits"))?;
        let empty = page.commits.is_empty() && page.errors.is_empty();
        position = page.next_position;
        for line in page_lines(page, json) {
            println!("{}", line.text);
            damaged |= line.damaged;
            printed += u64::from(!line.damaged);
            if follow.max.is_some_and(|max| printed >= max) {
                return Ok(Verdict::from_damage(damaged));
            }
        }
        if empty {
            tokio::time::sleep(follow.poll).await;
        }
    }
}

struct Line {
    position: u64,
    damaged: bool,
    text: String,
}

/// A page's commits and damaged records as printed lines, in position order.
fn page_lines(page: Page, json: bool) -> Vec<Line> {
    let mut lines: Vec<Line> = page
        .commits
        .into_iter()
        .map(|c| {
            let first = c.events.first().map_or(0, |e| e.version);
            let last = c.events.last().map_or(0, |e| e.version);
            let text = if json {
                json!({
                    "position": c.position,
                    "actor": c.actor_id,
                    "commit_id": c.commit_id,
                    "events": c.events.iter().map(event_json).collect::<Vec<_>>(),
                })
                .to_string()
            } else {
                let types: Vec<&str> = c.events.iter().map(|e| e.event_type.as_str()).collect();
                format!(
                    "{}  {}  v{first}..={last}  commit {}  {}",
                    c.position,
                    c.actor_id,
                    c.commit_id,
                    types.join(",")
                )
            };
            Line {
                position: c.position,
                damaged: false,
                text,
            }
        })
        .collect();
    lines.extend(page.errors.into_iter().map(|e: ReplayError| {
        let text = if json {
            json!({"position": e.sequence, "damaged": e.cause.to_string(), "raw": preview(&e.raw)})
                .to_string()
        } else {
            format!(
                "{}  DAMAGED: {}  [{}]",
                e.sequence,
                e.cause,
                preview(&e.raw)
            )
        };
        Line {
            position: e.sequence,
            damaged: true,
            text,
        }
    }));
    lines.sort_by_key(|l| l.position);
    lines
}

/// `actors <ns>`.
pub async fn actors(broker: &NatsBroker, namespace: &str, json: bool) -> Result<Verdict, CliError> {
    let ns = open_namespace(broker, namespace).await?;
    let listing = ns.actors().await?;
    if json {
        print_json(&json!({
            "namespace": namespace,
            "actors": listing.actors.iter().map(|(a, n)| json!({"actor": a, "records": n})).collect::<Vec<_>>(),
            "undecodable_subjects": listing.undecodable,
        }));
    } else {
        for (actor, records) in &listing.actors {
            println!("{actor}  {records}");
        }
        for subject in &listing.undecodable {
            println!("DAMAGED subject {subject:?} does not name an actor");
        }
        eprintln!("{} actors", listing.actors.len());
    }
    Ok(Verdict::from_damage(!listing.undecodable.is_empty()))
}

/// `commit <ns> <actor> <commit-id>`: where the commit is stored, if it is.
pub async fn commit(
    broker: &NatsBroker,
    namespace: &str,
    actor: &str,
    commit_id: &str,
    json: bool,
) -> Result<Verdict, CliError> {
    let ns = open_namespace(broker, namespace).await?;
    let subject = ns.names.event_subject(actor)?;
    let records = broker
        .read(&ns.names.events_stream(), &subject, 1)
        .await
        .map_err(CliError::broker(format!("reading actor {actor:?}")))?;
    let replay = ns
        .store
        .events_with_errors(actor, 1)
        .await
        .map_err(CliError::store(format!("reading actor {actor:?}")))?;
    let damage: BTreeMap<u64, Damage> = classify(&replay)
        .damage
        .into_iter()
        .map(|d| (d.sequence, d))
        .collect();
    // Every record carrying the id, in its body or its commit-id header.
    let mut stored = None;
    let mut damaged = Vec::new();
    for record in &records {
        let decoded = check_record(record, actor).ok();
        let ours = decoded.as_ref().is_some_and(|c| c.commit_id == commit_id)
            || record.headers.get(HEADER_COMMIT_ID).map(String::as_str) == Some(commit_id);
        match (ours, damage.get(&record.sequence), decoded) {
            (false, _, _) => {}
            (true, Some(d), _) => damaged.push(d.clone()),
            (true, None, Some(c)) => {
                stored = stored.or(Some((record.sequence, c.first_version(), c.last_version())));
            }
            // Not decodable, yet not reported as damage: cannot happen (replay checks every
            // record `check_record` checks); shown as damage rather than hidden.
            (true, None, None) => damaged.push(Damage {
                sequence: record.sequence,
                kind: crate::verify::DamageKind::Other,
                detail: "the record carries the id but is not a valid commit".to_owned(),
                raw: preview(&record.payload),
            }),
        }
    }
    if json {
        print_json(&json!({
            "namespace": namespace,
            "actor": actor,
            "commit_id": commit_id,
            "status": if stored.is_some() { "stored" } else { "not_stored" },
            "sequence": stored.map(|s| s.0),
            "first_version": stored.map(|s| s.1),
            "last_version": stored.map(|s| s.2),
            "damaged_copies": damaged.iter().map(damage_json).collect::<Vec<_>>(),
        }));
    } else {
        match stored {
            Some((sequence, first, last)) => {
                println!(
                    "commit {commit_id} of {actor:?} stored at versions {first}..={last} (sequence {sequence})"
                );
            }
            None => println!("commit {commit_id} of {actor:?} not stored"),
        }
        for d in &damaged {
            println!(
                "DAMAGED copy at seq {}  {}: {}",
                d.sequence,
                d.kind.name(),
                d.detail
            );
        }
    }
    Ok(Verdict::from_damage(!damaged.is_empty()))
}

/// `snapshot <ns> <actor>`: the latest snapshot, and the actor's version beside it.
pub async fn snapshot(
    broker: &NatsBroker,
    namespace: &str,
    actor: &str,
    json: bool,
) -> Result<Verdict, CliError> {
    let ns = open_namespace(broker, namespace).await?;
    codec::encode_actor_id(actor)?;
    let latest = ns
        .store
        .latest_version(actor)
        .await
        .map_err(CliError::store(format!("reading actor {actor:?}")))?;
    let snapshot = match ns.store.latest_snapshot(actor).await {
        Ok(s) => s,
        Err(aether::store::SnapshotError::Damaged { sequence, cause }) => {
            if json {
                print_json(&json!({
                    "namespace": namespace,
                    "actor": actor,
                    "damaged": {"sequence": sequence, "detail": cause},
                }));
            } else {
                println!("DAMAGED snapshot of {actor:?} at seq {sequence}: {cause}");
            }
            return Ok(Verdict::Damaged);
        }
        Err(e) => {
            return Err(CliError::store(format!(
                "reading the snapshot of {actor:?}"
            ))(e));
        }
    };
    if json {
        print_json(&json!({
            "namespace": namespace,
            "actor": actor,
            "actor_version": latest,
            "snapshot": snapshot.as_ref().map(|s| json!({
                "version": s.version,
                "timestamp": rfc3339(s.timestamp),
                "state": s.state,
            })),
        }));
    } else {
        match &snapshot {
            Some(s) => {
                println!(
                    "snapshot of {actor:?} at version {} (actor at version {latest}), taken {}",
                    s.version,
                    rfc3339(s.timestamp)
                );
                println!(
                    "{}",
                    serde_json::to_string_pretty(&s.state).unwrap_or_else(|_| s.state.to_string())
                );
            }
            None => println!("no snapshot of {actor:?} (actor at version {latest})"),
        }
    }
    Ok(Verdict::Clean)
}
