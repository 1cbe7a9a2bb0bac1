//! Store and snapshot behaviour, generic over the broker.
//!
//! Longer than ~600 lines on purpose: one list of store bodies (`store_bodies!`) that every broker
//! runs; each body stands alone and reads top to bottom.

use std::collections::BTreeSet;
use std::sync::Arc;

use aether::broker::{AppendOptions, Broker, Headers};
use aether::codec::encode_actor_id;
use aether::store::{EVENT_STORED, OpenError, ReplayErrorCause};
use aether::{
    AppendError, BusConfig, EventBus, EventStore, EventStored, ExpectedVersion, Filter, NewEvent,
    ReadError, Runtime, Snapshot, SnapshotError, StoreConfig,
};
use bytes::Bytes;
use serde_json::json;
use tokio::sync::Barrier;

#[allow(unused_imports)]
// used through store_suite!, by the test files that run the store bodies
pub use super::projection::*;
#[allow(unused_imports)]
pub use super::typed::*;
use crate::support::lossy::{LossyBroker, RetryAnswer};

pub async fn open<B: Broker>(broker: B, ns: &str) -> EventStore<B> {
    EventStore::open(Runtime::system(broker), StoreConfig::new(ns))
        .await
        .expect("store opens")
}

fn ev(kind: &str, n: i64) -> NewEvent {
    NewEvent::new(kind, json!({ "n": n }))
}

pub async fn append_assigns_contiguous_versions<B: Broker>(broker: B, ns: String) {
    let store = open(broker, &ns).await;
    let first = store
        .append(
            "a1",
            ExpectedVersion::NoStream,
            vec![ev("A", 1), ev("B", 2)],
        )
        .await
        .unwrap();
    assert_eq!((first.first_version(), first.last_version()), (1, 2));
    let second = store
        .append("a1", ExpectedVersion::Exact(2), vec![ev("C", 3)])
        .await
        .unwrap();
    assert_eq!((second.first_version(), second.last_version()), (3, 3));
    let third = store
        .append("a1", ExpectedVersion::Any, vec![ev("D", 4), ev("E", 5)])
        .await
        .unwrap();
    assert_eq!(third.last_version(), 5);
    let events = store.events("a1", 1).await.unwrap();
    let versions: Vec<u64> = events.iter().map(|e| e.version).collect();
    assert_eq!(versions, vec![1, 2, 3, 4, 5]);
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, vec!["A", "B", "C", "D", "E"]);
    assert!(events.iter().all(|e| e.actor_id == "a1"));
    assert_eq!(store.latest_version("a1").await.unwrap(), 5);
    assert_eq!(store.events("a1", 4).await.unwrap().len(), 2);
    assert_eq!(store.events("a1", 6).await.unwrap().len(), 0);
}

pub async fn append_with_stale_version_returns_conflict<B: Broker>(broker: B, ns: String) {
    let store = open(broker, &ns).await;
    store
        .append(
            "a1",
            ExpectedVersion::NoStream,
            vec![ev("A", 1), ev("A", 2)],
        )
        .await
        .unwrap();
    let err = store
        .append("a1", ExpectedVersion::Exact(1), vec![ev("A", 3)])
        .await
        .unwrap_err();
    match err {
        AppendError::Conflict(c) => {
            assert_eq!(c.actor, "a1");
            assert_eq!(c.expected, ExpectedVersion::Exact(1));
            assert_eq!(c.actual, 2);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let err = store
        .append("a1", ExpectedVersion::NoStream, vec![ev("A", 3)])
        .await
        .unwrap_err();
    assert!(
        matches!(err, AppendError::Conflict(ref c) if c.actual == 2),
        "{err:?}"
    );
    let err = store
        .append("new", ExpectedVersion::Exact(3), vec![ev("A", 3)])
        .await
        .unwrap_err();
    assert!(
        matches!(err, AppendError::Conflict(ref c) if c.actual == 0),
        "{err:?}"
    );
    assert_eq!(store.latest_version("a1").await.unwrap(), 2);
}

pub async fn failed_multi_event_append_stores_nothing<B: Broker>(broker: B, ns: String) {
    let store = open(broker, &ns).await;
    store
        .append("a1", ExpectedVersion::NoStream, vec![ev("A", 1)])
        .await
        .unwrap();
    let events: Vec<NewEvent> = (0..10).map(|i| ev("Batch", i)).collect();
    assert!(
        store
            .append("a1", ExpectedVersion::Exact(0), events)
            .await
            .is_err()
    );
    assert_eq!(store.events("a1", 1).await.unwrap().len(), 1);
}

pub async fn stale_hint_in_another_process_costs_a_retry_not_correctness<B: Broker>(
    broker: B,
    ns: String,
) {
    // Two stores = two processes with their own hint caches.
    let a = open(broker.clone(), &ns).await;
    let b = open(broker, &ns).await;
    a.append("x", ExpectedVersion::NoStream, vec![ev("A", 1)])
        .await
        .unwrap();
    assert_eq!(b.latest_version("x").await.unwrap(), 1); // b caches version 1
    a.append("x", ExpectedVersion::Exact(1), vec![ev("A", 2)])
        .await
        .unwrap();
    // b's hint says 1; the broker knows 2.
    let err = b
        .append("x", ExpectedVersion::Exact(1), vec![ev("B", 2)])
        .await
        .unwrap_err();
    assert!(
        matches!(err, AppendError::Conflict(ref c) if c.actual == 2),
        "{err:?}"
    );
    // Any keeps versions contiguous across writers.
    for i in 0..5 {
        a.append("x", ExpectedVersion::Any, vec![ev("A", i)])
            .await
            .unwrap();
        b.append("x", ExpectedVersion::Any, vec![ev("B", i)])
            .await
            .unwrap();
    }
    let versions: Vec<u64> = a
        .events("x", 1)
        .await
        .unwrap()
        .iter()
        .map(|e| e.version)
        .collect();
    assert_eq!(versions, (1..=12).collect::<Vec<_>>());
    // b's hint is 2 versions behind after a's last write; Exact(12) still succeeds.
    b.append("x", ExpectedVersion::Exact(12), vec![ev("B", 13)])
        .await
        .unwrap();
}

pub async fn fifty_concurrent_appends_at_one_version_yield_one_success<B: Broker>(
    broker: B,
    ns: String,
) {
    let store = open(broker.clone(), &ns).await;
    store
        .append("hot", ExpectedVersion::NoStream, vec![ev("Init", 0)])
        .await
        .unwrap();
    let barrier = Arc::new(Barrier::new(50));
    let mut tasks = Vec::new();
    for i in 0..50 {
        // Half share the store (and its hint cache), half are separate "processes".
        let store = if i % 2 == 0 {
            store.clone()
        } else {
            open(broker.clone(), &ns).await
        };
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            store
                .append("hot", ExpectedVersion::Exact(1), vec![ev("Race", i)])
                .await
        }));
    }
    let mut wins = 0;
    let mut conflicts = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(outcome) => {
                assert_eq!(outcome.last_version(), 2);
                wins += 1;
            }
            Err(AppendError::Conflict(c)) => {
                assert_eq!(c.expected, ExpectedVersion::Exact(1));
                assert_eq!(c.actual, 2, "every loser learns the winner's version");
                conflicts += 1;
            }
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }
    assert_eq!((wins, conflicts), (1, 49));
    assert_eq!(store.events("hot", 1).await.unwrap().len(), 2);
}

pub async fn bad_input_gets_typed_errors_and_stores_nothing<B: Broker>(broker: B, ns: String) {
    let err = EventStore::open(Runtime::system(broker.clone()), StoreConfig::new("a.b"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, OpenError::InvalidName(ref n) if n.kind == "namespace"),
        "{err:?}"
    );
    assert!(err.to_string().contains("only A-Z"), "{err}");

    let store = open(broker, &ns).await;
    assert!(matches!(
        store.append("a", ExpectedVersion::Any, vec![]).await,
        Err(AppendError::Empty)
    ));
    assert!(matches!(
        store
            .append("", ExpectedVersion::Any, vec![ev("A", 1)])
            .await,
        Err(AppendError::InvalidName(_))
    ));
    assert!(matches!(
        store
            .append("a", ExpectedVersion::Any, vec![NewEvent::new("", json!(1))])
            .await,
        Err(AppendError::InvalidEvent(_))
    ));
    let huge = NewEvent::new("Huge", json!("x".repeat(1024 * 1024)));
    let err = store
        .append("a", ExpectedVersion::Any, vec![huge])
        .await
        .unwrap_err();
    assert!(
        matches!(err, AppendError::TooLarge { max, .. } if max == 1024 * 1024),
        "{err:?}"
    );
    assert_eq!(store.latest_version("a").await.unwrap(), 0);
    assert!(store.events("a", 1).await.unwrap().is_empty());
}

pub async fn save_event_requires_the_next_version<B: Broker>(broker: B, ns: String) {
    let store = open(broker, &ns).await;
    let first = store
        .append(
            "a",
            ExpectedVersion::NoStream,
            vec![ev("A", 1).with_id("id-1")],
        )
        .await
        .unwrap();
    let mut event = first.events[0].clone();
    event.id = "id-2".into();
    event.version = 2;
    let saved = store.save_event(event.clone()).await.unwrap();
    assert_eq!(saved.events[0].id, "id-2");
    assert_eq!(saved.events[0].timestamp, event.timestamp);
    event.version = 5; // a gap
    assert!(matches!(
        store.save_event(event.clone()).await,
        Err(AppendError::Conflict(ref c)) if c.actual == 2
    ));
    event.version = 0;
    assert!(matches!(
        store.save_event(event).await,
        Err(AppendError::InvalidEvent(_))
    ));
    let ids: Vec<String> = store
        .events("a", 1)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(ids, vec!["id-1", "id-2"]);
}

pub async fn metadata_round_trips<B: Broker>(broker: B, ns: String) {
    let store = open(broker, &ns).await;
    let mut e = ev("A", 1).with_metadata("tenant", "t1");
    e.metadata.set_correlation_id("corr");
    e.metadata.set_trace_id("trace");
    let stored = store
        .append("a", ExpectedVersion::NoStream, vec![e])
        .await
        .unwrap();
    let caused = NewEvent::new("B", json!({})).caused_by(&stored.events[0]);
    store
        .append("a", ExpectedVersion::Exact(1), vec![caused])
        .await
        .unwrap();
    let events = store.events("a", 1).await.unwrap();
    assert_eq!(events[0].metadata.get("tenant"), Some("t1"));
    assert_eq!(events[0].metadata.trace_id(), Some("trace"));
    assert_eq!(events[1].metadata.correlation_id(), Some("corr"));
    assert_eq!(
        events[1].metadata.causation_id(),
        Some(events[0].id.as_str())
    );
    assert_eq!(events[1].metadata.trace_id(), Some("trace"));
}

pub async fn plant_raw_record<B: Broker>(
    broker: &B,
    ns: &str,
    actor: &str,
    payload: &'static [u8],
) -> u64 {
    let subject = format!("aether.ev.{ns}.{}", encode_actor_id(actor).unwrap());
    broker
        .append(
            &subject,
            Headers::new(),
            Bytes::from_static(payload),
            AppendOptions::default(),
        )
        .await
        .expect("raw append")
        .sequence
}

/// Plants a record with the given headers and payload on `actor`'s subject, as something other
/// than the store would write it.
async fn plant_record<B: Broker>(
    broker: &B,
    ns: &str,
    actor: &str,
    headers: &[(&str, &str)],
    payload: Vec<u8>,
) -> u64 {
    let subject = format!("aether.ev.{ns}.{}", encode_actor_id(actor).unwrap());
    let headers: Headers = headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    broker
        .append(
            &subject,
            headers,
            Bytes::from(payload),
            AppendOptions::default(),
        )
        .await
        .expect("raw append")
        .sequence
}

/// A well-formed commit of `actor` holding one event at `version`, as JSON bytes.
fn forged_commit(commit_id: &str, actor: &str, version: u64) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "format": 1,
        "commit_id": commit_id,
        "actor_id": actor,
        "events": [{
            "id": format!("{commit_id}-e"),
            "event_type": "Forged",
            "version": version,
            "timestamp": 0,
            "data": {},
            "metadata": {},
        }],
    }))
    .unwrap()
}

/// Checks, on a fresh handle and on one that knew the actor, that a damaged last record of
/// `a` (whose valid history is version 1) decides nothing: the version stays 1, the next append
/// is acknowledged at 2, and replay returns exactly [1, 2] plus the damaged record.
async fn damaged_tail_decides_nothing<B: Broker>(broker: &B, ns: &str, damaged_sequence: u64) {
    let fresh = open(broker.clone(), ns).await;
    assert_eq!(fresh.latest_version("a").await.unwrap(), 1);
    let outcome = fresh
        .append("a", ExpectedVersion::Any, vec![ev("A", 2)])
        .await
        .unwrap();
    assert_eq!(
        (outcome.first_version(), outcome.last_version()),
        (2, 2),
        "acknowledged at the version after the last valid one"
    );
    for store in [fresh, open(broker.clone(), ns).await] {
        let replay = store.events_with_errors("a", 1).await.unwrap();
        assert_eq!(
            replay.events.iter().map(|e| e.version).collect::<Vec<_>>(),
            vec![1, 2],
            "every acknowledged event is readable"
        );
        assert_eq!(
            replay.errors.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            vec![damaged_sequence]
        );
        assert_eq!(store.latest_version("a").await.unwrap(), 2);
    }
}

/// A truncated body under intact headers claiming version 2: the headers are not trusted.
pub async fn a_truncated_commit_with_good_headers_decides_no_version<B: Broker>(
    broker: B,
    ns: String,
) {
    let store = open(broker.clone(), &ns).await;
    store
        .append("a", ExpectedVersion::NoStream, vec![ev("A", 1)])
        .await
        .unwrap();
    let mut body = forged_commit("c-2", "a", 2);
    body.truncate(body.len() / 2);
    let sequence = plant_record(
        &broker,
        &ns,
        "a",
        &[
            ("Aether-Commit-Id", "c-2"),
            ("Aether-First-Version", "2"),
            ("Aether-Last-Version", "2"),
            ("Aether-Format", "1"),
        ],
        body,
    )
    .await;
    // The handle that wrote version 1 reads past the damaged record too.
    assert_eq!(store.latest_version("a").await.unwrap(), 1);
    damaged_tail_decides_nothing(&broker, &ns, sequence).await;
}

/// Headers claiming the largest version: no wrap-around, no acknowledged event at version 0.
pub async fn headers_claiming_a_huge_version_decide_no_version<B: Broker>(broker: B, ns: String) {
    let store = open(broker.clone(), &ns).await;
    store
        .append("a", ExpectedVersion::NoStream, vec![ev("A", 1)])
        .await
        .unwrap();
    let max = u64::MAX.to_string();
    let sequence = plant_record(
        &broker,
        &ns,
        "a",
        &[
            ("Aether-Commit-Id", "c-max"),
            ("Aether-First-Version", &max),
            ("Aether-Last-Version", &max),
            ("Aether-Format", "1"),
        ],
        b"garbage".to_vec(),
    )
    .await;
    damaged_tail_decides_nothing(&broker, &ns, sequence).await;
    // A well-formed commit at the largest version is damage too: nothing can follow it.
    let store = open(broker.clone(), &ns).await;
    let sequence = plant_record(
        &broker,
        &ns,
        "a",
        &[
            ("Aether-Commit-Id", "c-top"),
            ("Aether-First-Version", &max),
            ("Aether-Last-Version", &max),
            ("Aether-Format", "1"),
        ],
        forged_commit("c-top", "a", u64::MAX),
    )
    .await;
    assert_eq!(store.latest_version("a").await.unwrap(), 2);
    let next = store
        .append("a", ExpectedVersion::Any, vec![ev("A", 3)])
        .await
        .unwrap();
    assert_eq!(next.last_version(), 3);
    let replay = store.events_with_errors("a", 1).await.unwrap();
    assert_eq!(replay.events.len(), 3);
    assert!(replay.errors.iter().any(|e| e.sequence == sequence));
}

/// Headers that disagree with a valid body: the record is damaged, whichever side is right.
pub async fn headers_disagreeing_with_the_body_mark_the_record_damaged<B: Broker>(
    broker: B,
    ns: String,
) {
    let store = open(broker.clone(), &ns).await;
    store
        .append("a", ExpectedVersion::NoStream, vec![ev("A", 1)])
        .await
        .unwrap();
    let sequence = plant_record(
        &broker,
        &ns,
        "a",
        &[
            ("Aether-Commit-Id", "c-2"),
            ("Aether-First-Version", "5"),
            ("Aether-Last-Version", "5"),
            ("Aether-Format", "1"),
        ],
        forged_commit("c-2", "a", 2),
    )
    .await;
    let replay = store.events_with_errors("a", 1).await.unwrap();
    assert!(matches!(
        replay.errors[0].cause,
        ReplayErrorCause::HeaderMismatch {
            header: "Aether-First-Version",
            ..
        }
    ));
    damaged_tail_decides_nothing(&broker, &ns, sequence).await;
}

/// Well-formed commits that do not belong at the tail — a version gap, another actor's commit,
/// a second copy of an earlier commit — never define the next version.
pub async fn plausible_commits_out_of_place_decide_no_version<B: Broker>(broker: B, ns: String) {
    let store = open(broker.clone(), &ns).await;
    let first = store
        .append("a", ExpectedVersion::NoStream, vec![ev("A", 1)])
        .await
        .unwrap();
    let headers = |id: &'static str, version: &'static str| {
        [
            ("Aether-Commit-Id", id),
            ("Aether-First-Version", version),
            ("Aether-Last-Version", version),
            ("Aether-Format", "1"),
        ]
    };
    // A gap: version 7 after version 1.
    let sequence = plant_record(
        &broker,
        &ns,
        "a",
        &headers("c-gap", "7"),
        forged_commit("c-gap", "a", 7),
    )
    .await;
    assert_eq!(store.latest_version("a").await.unwrap(), 1);
    let replay = store.events_with_errors("a", 1).await.unwrap();
    assert_eq!(
        replay.errors[0].cause,
        ReplayErrorCause::VersionGap {
            expected: 2,
            found: 7
        }
    );
    damaged_tail_decides_nothing(&broker, &ns, sequence).await;

    // Another actor's commit on this actor's subject.
    store
        .append("b", ExpectedVersion::NoStream, vec![ev("B", 1)])
        .await
        .unwrap();
    let foreign = plant_record(
        &broker,
        &ns,
        "b",
        &headers("c-foreign", "2"),
        forged_commit("c-foreign", "a", 2),
    )
    .await;
    assert_eq!(store.latest_version("b").await.unwrap(), 1);
    let fresh = open(broker.clone(), &ns).await;
    assert_eq!(fresh.latest_version("b").await.unwrap(), 1);
    let replay = fresh.events_with_errors("b", 1).await.unwrap();
    assert_eq!(replay.errors[0].sequence, foreign);
    assert!(matches!(
        replay.errors[0].cause,
        ReplayErrorCause::WrongActor { .. }
    ));

    // A second copy of `a`'s first commit: the same id and versions, stored again.
    let subject = format!("aether.ev.{ns}.{}", encode_actor_id("a").unwrap());
    let original = broker
        .next(
            &format!("AETHER_EV_{ns}"),
            &subject,
            1,
            aether::broker::ReadFrom::Leader,
        )
        .await
        .unwrap()
        .expect("a's first commit");
    assert_eq!(
        original.headers.get("Aether-Commit-Id"),
        Some(&first.commit_id)
    );
    let copy = broker
        .append(
            &subject,
            original.headers.clone(),
            original.payload.clone(),
            AppendOptions::default(),
        )
        .await
        .unwrap()
        .sequence;
    for store in [store, open(broker.clone(), &ns).await] {
        assert_eq!(store.latest_version("a").await.unwrap(), 2);
        let replay = store.events_with_errors("a", 1).await.unwrap();
        assert_eq!(
            replay.events.iter().map(|e| e.version).collect::<Vec<_>>(),
            vec![1, 2]
        );
        let damage = replay.errors.iter().find(|e| e.sequence == copy).unwrap();
        assert!(
            matches!(&damage.cause, ReplayErrorCause::DuplicateCommit(id) if *id == first.commit_id),
            "{damage:?}"
        );
    }
}

pub async fn damaged_record_is_reported_not_skipped<B: Broker>(broker: B, ns: String) {
    let store = open(broker.clone(), &ns).await;
    store
        .append("a", ExpectedVersion::NoStream, vec![ev("A", 1)])
        .await
        .unwrap();
    let sequence = plant_raw_record(&broker, &ns, "a", b"not a commit").await;
    let replay = store.events_with_errors("a", 1).await.unwrap();
    assert_eq!(replay.events.len(), 1);
    assert_eq!(replay.errors.len(), 1);
    assert_eq!(replay.errors[0].sequence, sequence);
    assert_eq!(&replay.errors[0].raw[..], b"not a commit");
    assert!(matches!(
        replay.errors[0].cause,
        ReplayErrorCause::Decode(_)
    ));
    match store.events("a", 1).await {
        Err(ReadError::Damaged(e)) => assert_eq!(e.sequence, sequence),
        other => panic!("plain events must fail on damage, got {other:?}"),
    }
    // The damaged tail does not lose the version: the next append continues at 2.
    assert_eq!(store.latest_version("a").await.unwrap(), 1);
    let next = open(broker.clone(), &ns)
        .await
        .append("a", ExpectedVersion::Exact(1), vec![ev("A", 2)])
        .await
        .unwrap();
    assert_eq!(next.last_version(), 2);
    let replay = store.events_with_errors("a", 1).await.unwrap();
    assert_eq!(
        replay.events.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(replay.errors.len(), 1);
    // A writer whose cached tip predates a damaged record still appends at the right version:
    // the stream moved, but not its version.
    let hinted = open(broker.clone(), &ns).await;
    assert_eq!(hinted.latest_version("a").await.unwrap(), 2);
    plant_raw_record(&broker, &ns, "a", b"more garbage").await;
    let after = hinted
        .append("a", ExpectedVersion::Exact(2), vec![ev("A", 3)])
        .await
        .unwrap();
    assert_eq!(after.last_version(), 3);
}

pub async fn namespaces_and_odd_actor_ids_stay_isolated<B: Broker>(broker: B, ns: String) {
    let a = open(broker.clone(), &format!("{}-a", &ns[..ns.len().min(60)])).await;
    let b = open(broker, &format!("{}-b", &ns[..ns.len().min(60)])).await;
    let ids = ["x.y", "x_y", "x*", "x>", "x y", "x", "ünï", "x_2Ey", "x.>"];
    for (i, id) in ids.iter().enumerate() {
        a.append(id, ExpectedVersion::NoStream, vec![ev("A", i as i64)])
            .await
            .unwrap();
    }
    for (i, id) in ids.iter().enumerate() {
        let events = a.events(id, 1).await.unwrap();
        assert_eq!(events.len(), 1, "actor {id:?} sees only its own event");
        assert_eq!(events[0].data, json!({ "n": i as i64 }));
        assert_eq!(events[0].actor_id, *id);
        assert!(
            b.events(id, 1).await.unwrap().is_empty(),
            "namespace b sees nothing"
        );
    }
    let snap = Snapshot::new("x.y", 1, json!("a"));
    a.save_snapshot(&snap).await.unwrap();
    assert!(b.latest_snapshot("x.y").await.unwrap().is_none());
    assert!(a.latest_snapshot("x_y").await.unwrap().is_none());
}

pub async fn snapshots_are_saved_and_guarded<B: Broker>(broker: B, ns: String) {
    let store = open(broker, &ns).await;
    assert!(store.latest_snapshot("a").await.unwrap().is_none());
    store
        .append(
            "a",
            ExpectedVersion::NoStream,
            vec![ev("A", 1), ev("A", 2), ev("A", 3)],
        )
        .await
        .unwrap();
    let snap = |version, state| Snapshot::new("a", version, state);
    store
        .save_snapshot(&snap(2, json!({"sum": 3})))
        .await
        .unwrap();
    let saved = store.latest_snapshot("a").await.unwrap().expect("saved");
    assert_eq!(
        (saved.actor_id.as_str(), saved.version, &saved.state),
        ("a", 2, &json!({"sum": 3}))
    );
    assert!(
        saved.timestamp > std::time::UNIX_EPOCH,
        "the store stamps a snapshot when it saves it"
    );
    assert!(matches!(
        store.save_snapshot(&snap(4, json!({}))).await,
        Err(SnapshotError::AheadOfStream {
            version: 4,
            latest: 3,
            ..
        })
    ));
    store
        .save_snapshot(&snap(3, json!({"sum": 6})))
        .await
        .unwrap();
    assert!(matches!(
        store.save_snapshot(&snap(1, json!({}))).await,
        Err(SnapshotError::Stale {
            existing: 3,
            offered: 1
        })
    ));
    let latest = store.latest_snapshot("a").await.unwrap().unwrap();
    assert_eq!(latest.version, 3);
    // Replay after the snapshot.
    assert!(
        store
            .events("a", latest.version + 1)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn event_stored_is_published_after_append_never_after_conflict<B: Broker>(
    broker: B,
    ns: String,
) {
    let bus = EventBus::new(
        &Runtime::system(broker.clone()).with_node(aether::NodeId::new("node-1").unwrap()),
        BusConfig::new(),
    );
    let mut sub = bus
        .subscribe(&ns, Filter::all().event_types([EVENT_STORED]))
        .unwrap();
    let store = open(broker, &ns).await.with_bus(bus.clone());
    let outcome = store
        .append("a", ExpectedVersion::NoStream, vec![ev("A", 1), ev("B", 2)])
        .await
        .unwrap();
    for stored in &outcome.events {
        let note = sub.recv().await.unwrap();
        let parsed = EventStored::from_event(&note).expect("an EventStored notification");
        assert_eq!(parsed.event_id, stored.id);
        assert_eq!(parsed.actor_id, "a");
        assert_eq!(parsed.version, stored.version);
        assert_eq!(parsed.event_type, stored.event_type);
    }
    assert!(
        store
            .append("a", ExpectedVersion::NoStream, vec![ev("C", 3)])
            .await
            .is_err()
    );
    assert!(sub.try_recv().is_none(), "no notification after a conflict");
}

pub async fn lost_reply_is_retried_into_exactly_one_commit<B: Broker>(broker: B, ns: String) {
    for answer in [RetryAnswer::Dedupe, RetryAnswer::SequenceFirst] {
        let lossy = LossyBroker::new(broker.clone(), 1, answer);
        let store = open(lossy.clone(), &ns).await;
        let actor = format!("{answer:?}");
        let outcome = store
            .append(
                &actor,
                ExpectedVersion::NoStream,
                vec![ev("A", 1), ev("A", 2)],
            )
            .await
            .unwrap_or_else(|e| panic!("{answer:?}: {e}"));
        assert_eq!(outcome.last_version(), 2);
        assert!(lossy.appends.load(std::sync::atomic::Ordering::SeqCst) >= 2);
        let events = store.events(&actor, 1).await.unwrap();
        assert_eq!(events.len(), 2, "{answer:?}: exactly one commit stored");
        let commits: BTreeSet<_> = store
            .events_with_errors(&actor, 1)
            .await
            .unwrap()
            .events
            .iter()
            .map(|e| e.id.clone())
            .collect();
        assert_eq!(commits.len(), 2);
    }
}

/// A write proposed on a stream leader cut off from its followers: the caller times out, the
/// retry is refused as if the subject had moved (the leader counts the write in flight) while
/// reads show nothing after the tip, and the write commits later. The outcome is unknown — never
/// a conflict, and never a second commit in a new attempt (the nemesis found both on a real
/// 3-server cluster: a write reported as a conflict was stored).
pub async fn a_write_pending_on_a_cut_off_leader_is_unknown_not_a_conflict<B: Broker>(
    broker: B,
    ns: String,
) {
    let lossy = LossyBroker::new(broker.clone(), 0, RetryAnswer::LateCommit);
    let store = open(lossy.clone(), &ns).await;
    let err = store
        .append("late", ExpectedVersion::NoStream, vec![ev("A", 1)])
        .await
        .unwrap_err();
    assert!(
        matches!(err, AppendError::Indeterminate { .. }),
        "the outcome is unknown, not {err:?}"
    );
    let attempts = lossy.appends.load(std::sync::atomic::Ordering::SeqCst);
    let committed = lossy.release().await.expect("the first attempt was held");
    committed.expect("the held write commits");
    let events = open(broker.clone(), &ns)
        .await
        .events("late", 1)
        .await
        .unwrap();
    assert_eq!(events.len(), 1, "exactly the one commit, stored late");
    assert!(
        attempts >= 2,
        "the append was retried ({attempts} attempts)"
    );
}

/// A refusal from a stream leader that no longer leads, while the real one stored the commit:
/// the append succeeds, once — never a conflict over its own commit (the nemesis saw one on a
/// real 3-server cluster right after a partition healed).
pub async fn a_stale_leaders_refusal_of_a_stored_commit_is_a_success<B: Broker>(
    broker: B,
    ns: String,
) {
    let lossy = LossyBroker::new(broker.clone(), 1, RetryAnswer::StaleLeaderAnswers);
    let store = open(lossy.clone(), &ns).await;
    store
        .append("stale", ExpectedVersion::NoStream, vec![ev("A", 1)])
        .await
        .unwrap();
    let outcome = store
        .append(
            "stale",
            ExpectedVersion::Exact(1),
            vec![ev("B", 2), ev("B", 3)],
        )
        .await
        .unwrap_or_else(|e| panic!("the commit was stored: {e}"));
    assert_eq!(outcome.last_version(), 3);
    let events = open(broker.clone(), &ns)
        .await
        .events("stale", 1)
        .await
        .unwrap();
    assert_eq!(
        events.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![1, 2, 3],
        "one commit of two events after the first"
    );
}

/// A refusal the stream leader cannot be asked about is no conflict: it may be a deposed
/// leader's, for a commit the real one stored (the simulation's replicated model found the
/// store reporting a conflict for a stored commit when an election began right after).
pub async fn an_unchecked_refusal_is_unknown_not_a_conflict<B: Broker>(broker: B, ns: String) {
    let lossy = LossyBroker::new(broker.clone(), 1, RetryAnswer::StaleLeaderThenNoLeader);
    let store = open(lossy.clone(), &ns).await;
    store
        .append("unchecked", ExpectedVersion::NoStream, vec![ev("A", 1)])
        .await
        .unwrap();
    let err = store
        .append("unchecked", ExpectedVersion::Exact(1), vec![ev("B", 2)])
        .await
        .expect_err("the refusal could not be checked");
    assert!(
        matches!(err, AppendError::Indeterminate { .. }),
        "an unchecked refusal is no conflict: {err:?}"
    );
    let events = open(broker.clone(), &ns)
        .await
        .events("unchecked", 1)
        .await
        .unwrap();
    assert_eq!(
        events.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![1, 2],
        "the commit the caller was unsure of is stored"
    );
    // The same under an idempotency key: the key's lookup is what could not be checked.
    let lossy = LossyBroker::new(broker.clone(), 1, RetryAnswer::StaleLeaderThenNoLeader);
    let store = open(lossy, &ns).await;
    store
        .append("keyed", ExpectedVersion::NoStream, vec![ev("A", 1)])
        .await
        .unwrap();
    let err = store
        .append_with_commit_id("keyed", ExpectedVersion::Exact(1), vec![ev("B", 2)], "k-1")
        .await
        .expect_err("the refusal could not be checked");
    assert!(
        matches!(err, AppendError::Indeterminate { .. }),
        "an unchecked keyed refusal is no conflict: {err:?}"
    );
    // Asked again, the key finds its commit.
    let again = open(broker.clone(), &ns)
        .await
        .append_with_commit_id("keyed", ExpectedVersion::Exact(1), vec![ev("B", 2)], "k-1")
        .await
        .unwrap();
    assert_eq!(
        (again.first_version(), again.commit_id.as_str()),
        (2, "k-1")
    );
}

pub async fn lost_reply_then_foreign_write_reports_conflict<B: Broker>(broker: B, ns: String) {
    // The first attempt is lost *before* reaching the broker is indistinguishable from a lost
    // reply; here the broker really stored a competitor's commit in between.
    let store = open(broker.clone(), &ns).await;
    let other = open(broker.clone(), &ns).await;
    store
        .append("a", ExpectedVersion::NoStream, vec![ev("A", 1)])
        .await
        .unwrap();
    other
        .append("a", ExpectedVersion::Exact(1), vec![ev("B", 2)])
        .await
        .unwrap();
    // store's hint says version 1: the conditional append fails and a conflict is reported.
    let err = store
        .append("a", ExpectedVersion::Exact(1), vec![ev("A", 2)])
        .await
        .unwrap_err();
    assert!(matches!(err, AppendError::Conflict(ref c) if c.actual == 2));
}

pub async fn read_all_pages_through_every_actor_in_commit_order<B: Broker>(broker: B, ns: String) {
    let store = open(broker.clone(), &ns).await;
    store
        .append("a", ExpectedVersion::NoStream, vec![ev("A", 1), ev("A", 2)])
        .await
        .unwrap();
    store
        .append("b.b", ExpectedVersion::NoStream, vec![ev("B", 1)])
        .await
        .unwrap();
    let damaged = plant_raw_record(&broker, &ns, "a", b"garbage").await;
    store
        .append("a", ExpectedVersion::Exact(2), vec![ev("A", 3)])
        .await
        .unwrap();

    let first = store.read_all(1, 2).await.unwrap();
    assert_eq!(first.commits.len(), 2);
    assert_eq!(first.commits[0].actor_id, "a");
    assert_eq!(first.commits[0].events.len(), 2);
    assert_eq!(first.commits[1].actor_id, "b.b");
    assert!(first.commits[0].position < first.commits[1].position);
    assert!(first.errors.is_empty());
    let second = store.read_all(first.next_position, 10).await.unwrap();
    assert_eq!(second.errors.len(), 1, "the damaged record is reported");
    assert_eq!(second.errors[0].sequence, damaged);
    assert_eq!(second.commits.len(), 1);
    assert_eq!(second.commits[0].events[0].version, 3);
    let end = store.read_all(second.next_position, 10).await.unwrap();
    assert!(end.commits.is_empty() && end.errors.is_empty());
    assert_eq!(end.next_position, second.next_position);
}

pub async fn projections_see_every_commit_once_per_checkpoint_and_are_fenced<B: Broker>(
    broker: B,
    ns: String,
) {
    use aether::projection::{ProjectionError, Projector};
    use std::sync::Mutex;

    let store = open(broker, &ns).await;
    for i in 0..5 {
        store
            .append(
                &format!("actor-{}", i % 2),
                ExpectedVersion::Any,
                vec![ev("E", i)],
            )
            .await
            .unwrap();
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = |seen: Arc<Mutex<Vec<i64>>>| {
        move |page: aether::Page| {
            let seen = seen.clone();
            async move {
                for commit in page.commits {
                    for e in commit.events {
                        seen.lock().unwrap().push(e.data["n"].as_i64().unwrap());
                    }
                }
                Ok::<(), String>(())
            }
        }
    };
    let projector = Projector::open::<String>(store.clone(), "totals")
        .await
        .unwrap()
        .page_max(2);
    assert_eq!(projector.catch_up(record(seen.clone())).await.unwrap(), 5);
    assert_eq!(*seen.lock().unwrap(), vec![0, 1, 2, 3, 4]);
    assert_eq!(
        projector.catch_up(record(seen.clone())).await.unwrap(),
        0,
        "caught up"
    );

    // A failing handler leaves the checkpoint: the page is offered again.
    store
        .append("actor-0", ExpectedVersion::Any, vec![ev("E", 5)])
        .await
        .unwrap();
    let failed = projector
        .step(|_page| async { Err::<(), String>("db down".into()) })
        .await;
    assert!(matches!(failed, Err(ProjectionError::Handler(ref m)) if m == "db down"));
    assert_eq!(projector.catch_up(record(seen.clone())).await.unwrap(), 1);
    assert_eq!(seen.lock().unwrap().last(), Some(&5));

    // A restarted instance resumes from the checkpoint.
    let restarted = Projector::open::<String>(store.clone(), "totals")
        .await
        .unwrap();
    assert_eq!(restarted.catch_up(record(seen.clone())).await.unwrap(), 0);

    // Two instances of one projection: the one that moves the checkpoint second is fenced.
    store
        .append("actor-1", ExpectedVersion::Any, vec![ev("E", 6)])
        .await
        .unwrap();
    let other = Projector::open::<String>(store.clone(), "totals")
        .await
        .unwrap();
    let fenced = projector
        .step(|_page| async {
            other
                .step(|_page| async { Ok::<(), String>(()) })
                .await
                .unwrap();
            Ok::<(), String>(())
        })
        .await;
    assert!(
        matches!(fenced, Err(ProjectionError::Fenced { .. })),
        "{fenced:?}"
    );
    assert!(Projector::open::<String>(store, "bad name").await.is_err());
}

/// What loading with a snapshot costs: only what follows the snapshot's stream position is
/// read. A damaged record before that position shows it — a full replay reports it, loading
/// after the snapshot never meets it.
pub async fn loading_after_a_snapshot_reads_only_what_follows_it<B: Broker>(broker: B, ns: String) {
    let store = open(broker.clone(), &ns).await;
    let mut sequences = Vec::new();
    for i in 0..50u64 {
        let done = store
            .append(
                "long",
                ExpectedVersion::Exact(2 * i),
                vec![ev("A", 1), ev("A", 2)],
            )
            .await
            .expect("append");
        sequences.push((done.last_version(), done.sequence));
        if i == 10 {
            plant_raw_record(&broker, &ns, "long", b"\0 damaged early").await;
        }
    }
    let damaged = store.events("long", 1).await;
    assert!(
        matches!(damaged, Err(ReadError::Damaged(_))),
        "a full replay meets the damage: {damaged:?}"
    );
    // A snapshot at the tip records the tip's position.
    store
        .save_snapshot(&Snapshot::new("long", 100, json!({ "n": 100 })))
        .await
        .expect("snapshot");
    let snapshot = store
        .latest_snapshot("long")
        .await
        .unwrap()
        .expect("stored");
    assert_eq!(snapshot.sequence, sequences[49].1, "the tip's position");
    assert!(store.events_after(&snapshot).await.unwrap().is_empty());
    store
        .append(
            "long",
            ExpectedVersion::Exact(100),
            vec![ev("B", 1), ev("B", 2), ev("B", 3)],
        )
        .await
        .unwrap();
    let after: Vec<u64> = store
        .events_after(&snapshot)
        .await
        .expect("the damage lies before the snapshot")
        .iter()
        .map(|e| e.version)
        .collect();
    assert_eq!(after, vec![101, 102, 103]);

    // A position the caller names is checked: right, it is kept; wrong, it is dropped and
    // loading falls back to the whole history (still correct).
    for i in 0..10u64 {
        store
            .append("short", ExpectedVersion::Exact(i), vec![ev("A", 1)])
            .await
            .unwrap();
    }
    let history = store.events("short", 1).await.unwrap();
    assert_eq!(history.len(), 10);
    let fifth = store
        .append("other", ExpectedVersion::NoStream, vec![ev("A", 1)])
        .await
        .unwrap()
        .sequence; // a position that belongs to another actor
    let right = store.latest_version("short").await.unwrap();
    assert_eq!(right, 10);
    store
        .save_snapshot(&Snapshot::new("short", 10, json!({})).at_sequence(fifth))
        .await
        .unwrap();
    let kept = store.latest_snapshot("short").await.unwrap().unwrap();
    assert!(
        kept.sequence > 0,
        "at the tip the store knows the position itself"
    );
    let wrong = Snapshot::new("short2", 3, json!({})).at_sequence(fifth);
    for i in 0..5u64 {
        store
            .append("short2", ExpectedVersion::Exact(i), vec![ev("A", 1)])
            .await
            .unwrap();
    }
    store.save_snapshot(&wrong).await.unwrap();
    let dropped = store.latest_snapshot("short2").await.unwrap().unwrap();
    assert_eq!(
        dropped.sequence, 0,
        "a position that is not the record of v3 is dropped"
    );
    let versions: Vec<u64> = store
        .events_after(&dropped)
        .await
        .unwrap()
        .iter()
        .map(|e| e.version)
        .collect();
    assert_eq!(versions, vec![4, 5]);
}

/// Under retention, versions that expired are a typed condition, never damage; an actor
/// whose events all expired continues from its snapshot's version.
pub async fn under_retention_expired_versions_are_a_typed_condition_and_snapshots_carry_on<
    B: Broker,
>(
    broker: B,
    ns: String,
) {
    let retention = std::time::Duration::from_millis(1500);
    let store = EventStore::open(
        Runtime::system(broker.clone()),
        StoreConfig::new(&ns).retention(retention),
    )
    .await
    .expect("store opens");
    // "kept": five events and a snapshot covering them.
    for i in 0..5u64 {
        store
            .append("kept", ExpectedVersion::Exact(i), vec![ev("A", 1)])
            .await
            .unwrap();
    }
    store
        .save_snapshot(&Snapshot::new("kept", 5, json!({ "n": 5 })))
        .await
        .unwrap();
    // "partial": two events now, one later — the first two expire before the third.
    store
        .append(
            "partial",
            ExpectedVersion::NoStream,
            vec![ev("A", 1), ev("A", 2)],
        )
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(900)).await;
    store
        .append("partial", ExpectedVersion::Exact(2), vec![ev("A", 3)])
        .await
        .unwrap();
    // Wait until the first two are gone (a fresh handle, so nothing is remembered).
    let fresh = EventStore::open(
        Runtime::system(broker.clone()),
        StoreConfig::new(&ns).retention(retention),
    )
    .await
    .unwrap();
    let mut partial = None;
    for _ in 0..100 {
        match fresh.events("partial", 1).await {
            Err(ReadError::Expired {
                from,
                first_available,
                ..
            }) => {
                partial = Some((from, first_available));
                break;
            }
            Ok(events) if events.is_empty() => panic!("everything expired before the check"),
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(partial, Some((1, 3)), "versions 1..3 expired, 3 is left");
    let left: Vec<u64> = fresh
        .events("partial", 3)
        .await
        .expect("asking only for what is left is fine")
        .iter()
        .map(|e| e.version)
        .collect();
    assert_eq!(left, vec![3]);
    assert_eq!(fresh.latest_version("partial").await.unwrap(), 3);
    let replay = fresh.events_with_errors("partial", 1).await.unwrap();
    assert!(replay.errors.is_empty(), "an expired prefix is not damage");
    assert_eq!(replay.expired_before, Some(3));
    // "kept" expired completely: its versions go on from the snapshot.
    for _ in 0..100 {
        if fresh.events("kept", 1).await.is_err() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    match fresh.events("kept", 1).await {
        Err(ReadError::Expired {
            first_available, ..
        }) => assert_eq!(first_available, 6),
        other => panic!("expected Expired, got {other:?}"),
    }
    assert_eq!(fresh.latest_version("kept").await.unwrap(), 5);
    let conflict = fresh
        .append("kept", ExpectedVersion::NoStream, vec![ev("A", 1)])
        .await
        .unwrap_err();
    assert!(
        matches!(conflict, AppendError::Conflict(ref c) if c.actual == 5),
        "an actor whose events expired is not new: {conflict:?}"
    );
    let next = fresh
        .append("kept", ExpectedVersion::Exact(5), vec![ev("A", 1)])
        .await
        .unwrap();
    assert_eq!(next.first_version(), 6);
    let snapshot = fresh.latest_snapshot("kept").await.unwrap().unwrap();
    let after: Vec<u64> = fresh
        .events_after(&snapshot)
        .await
        .unwrap()
        .iter()
        .map(|e| e.version)
        .collect();
    assert_eq!(after, vec![6]);
    // The first handle still remembers "partial" at v3, whose record expires too: its next
    // append must go on at v4, not lose "races" against a record that no longer exists.
    for _ in 0..100 {
        if fresh.events("partial", 3).await.is_err() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let after_expiry = store
        .append("partial", ExpectedVersion::Exact(3), vec![ev("A", 4)])
        .await
        .expect("a handle whose remembered tip expired appends at the next version");
    assert_eq!(after_expiry.first_version(), 4);
    assert_eq!(fresh.latest_version("partial").await.unwrap(), 4);
}

/// An append under a caller's commit id, called again after its answer was lost, returns the
/// original outcome — also after 300 other commits moved the actor on — and stores nothing
/// twice; the key is on every event; bad or reused keys are typed errors.
pub async fn a_keyed_append_called_again_returns_the_original_outcome<B: Broker>(
    broker: B,
    ns: String,
) {
    let store = open(broker.clone(), &ns).await;
    let first = store
        .append_with_commit_id(
            "keyed",
            ExpectedVersion::NoStream,
            vec![ev("A", 1)],
            "order-1",
        )
        .await
        .unwrap();
    let again = store
        .append_with_commit_id(
            "keyed",
            ExpectedVersion::NoStream,
            vec![ev("A", 1)],
            "order-1",
        )
        .await
        .expect("the original outcome, not a conflict");
    assert_eq!(again, first);
    let second = store
        .append_with_commit_id(
            "keyed",
            ExpectedVersion::Exact(1),
            vec![ev("B", 2), ev("B", 3)],
            "order-2",
        )
        .await
        .unwrap();
    for i in 0..300 {
        store
            .append("keyed", ExpectedVersion::Any, vec![ev("C", i)])
            .await
            .unwrap();
    }
    // Another process (a fresh handle, no cached tip) retries both.
    let other = open(broker.clone(), &ns).await;
    for (expected, key, original) in [
        (ExpectedVersion::NoStream, "order-1", &first),
        (ExpectedVersion::Exact(1), "order-2", &second),
    ] {
        let retried = other
            .append_with_commit_id("keyed", expected, vec![ev("X", 0)], key)
            .await
            .unwrap_or_else(|e| panic!("{key}: the original outcome: {e}"));
        assert_eq!(&retried, original, "{key}");
    }
    let events = other.events("keyed", 1).await.unwrap();
    assert_eq!(events.len(), 303, "nothing stored twice");
    assert!(events[..1].iter().all(|e| e.commit_id == "order-1"));
    assert!(events[1..3].iter().all(|e| e.commit_id == "order-2"));
    // A new key at a taken version is a conflict.
    let err = other
        .append_with_commit_id(
            "keyed",
            ExpectedVersion::Exact(1),
            vec![ev("Y", 0)],
            "order-3",
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, AppendError::Conflict(ref c) if c.actual == 303),
        "{err:?}"
    );
    // A key naming another actor's commit is refused, and stores nothing.
    let err = other
        .append_with_commit_id(
            "elsewhere",
            ExpectedVersion::Any,
            vec![ev("Z", 0)],
            "order-1",
        )
        .await
        .unwrap_err();
    assert!(matches!(err, AppendError::InvalidEvent(_)), "{err:?}");
    assert_eq!(other.latest_version("elsewhere").await.unwrap(), 0);
    for bad in [
        "",
        "has space",
        &"k".repeat(aether::store::COMMIT_ID_MAX + 1),
    ] {
        let err = other
            .append_with_commit_id("keyed", ExpectedVersion::Any, vec![ev("Z", 0)], bad)
            .await
            .unwrap_err();
        assert!(
            matches!(err, AppendError::InvalidEvent(_)),
            "{bad:?}: {err:?}"
        );
    }
    assert_eq!(other.latest_version("keyed").await.unwrap(), 303);
}

/// `commit_status` finds a commit among 1,000 without reading the actor: stored at its
/// versions, superseded when another commit holds the next version, not (yet) stored past the
/// tip, and found later when it was appended with `Any`.
pub async fn commit_status_answers_stored_superseded_or_not_yet<B: Broker>(broker: B, ns: String) {
    use aether::CommitStatus;
    let store = open(broker, &ns).await;
    for i in 0..1000u64 {
        store
            .append_with_commit_id(
                "many",
                ExpectedVersion::Exact(i),
                vec![ev("E", i as i64)],
                &format!("c-{}", i + 1),
            )
            .await
            .unwrap();
    }
    for v in [1u64, 2, 499, 500, 999, 1000] {
        match store
            .commit_status("many", &format!("c-{v}"), v - 1)
            .await
            .unwrap()
        {
            CommitStatus::Stored {
                first_version,
                last_version,
                ..
            } => assert_eq!((first_version, last_version), (v, v)),
            other => panic!("c-{v}: {other:?}"),
        }
    }
    assert_eq!(
        store.commit_status("many", "nope", 499).await.unwrap(),
        CommitStatus::NotStored { superseded: true }
    );
    assert_eq!(
        store.commit_status("many", "c-1001", 1000).await.unwrap(),
        CommitStatus::NotStored { superseded: false }
    );
    // Asked from an earlier version than its own: found by reading on.
    assert!(matches!(
        store.commit_status("many", "c-700", 10).await.unwrap(),
        CommitStatus::Stored {
            first_version: 700,
            ..
        }
    ));
}
