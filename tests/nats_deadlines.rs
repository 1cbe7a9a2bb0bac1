//! The store's deadline on a real nats-server: against a server killed (kill -9) or frozen
//! (SIGSTOP) after the store was opened, every operation returns its typed error within the
//! deadline plus a margin — never after the chain of request timeouts and retries — and the
//! server, restarted or continued, serves again with nothing acknowledged lost.
//!
//! The client's request timeout is set far above the deadline (10 s against 2 s), so only the
//! deadline can end an operation within the margin: before deadlines existed, a read took one
//! request timeout and an append nine, plus backoff (`benches/time_to_error.rs` measures it).
#![allow(clippy::disallowed_methods)] // measures real time to error against a real server

mod support;

use std::fmt::Debug;
use std::time::{Duration, Instant};

use aether::broker::{BrokerError, NatsConnectError};
use aether::{
    AppendError, EventStore, ExpectedVersion, NatsBroker, NatsOptions, NewEvent, OpenError,
    ReadError, Runtime, Snapshot, SnapshotError, StoreConfig,
};
use serde_json::json;
use support::nats_server::NatsServer;

const DEADLINE: Duration = Duration::from_secs(2);
/// Generous: a loaded 2-core machine, a reconnecting client.
const MARGIN: Duration = Duration::from_secs(3);
/// Far above the deadline: a request that times out does not end an operation in time.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// An operation still running after this fails the test instead of hanging it.
const HANG: Duration = Duration::from_secs(120);
const NAMESPACE: &str = "deadlines";

type Store = EventStore<NatsBroker>;

fn event(n: u64) -> Vec<NewEvent> {
    vec![NewEvent::new("Added", json!({ "n": n }))]
}

async fn store(url: &str) -> Store {
    let broker = NatsBroker::connect(NatsOptions::new(url).request_timeout(REQUEST_TIMEOUT))
        .await
        .expect("connect");
    EventStore::open(
        Runtime::system(broker),
        StoreConfig::new(NAMESPACE).deadline(DEADLINE),
    )
    .await
    .expect("open")
}

/// Runs `op`, expects an error within the deadline plus the margin, and returns it.
async fn fails_in_time<T: Debug, E: Debug + std::fmt::Display>(
    what: &str,
    op: impl Future<Output = Result<T, E>>,
) -> E {
    let started = Instant::now();
    let result = tokio::time::timeout(HANG, op)
        .await
        .unwrap_or_else(|_| panic!("{what} still running after {HANG:?}"));
    let took = started.elapsed();
    let error = match result {
        Ok(value) => panic!("{what} succeeded against a dead server: {value:?}"),
        Err(e) => e,
    };
    println!("{what}: after {took:?}: {error}");
    assert!(
        took < DEADLINE + MARGIN,
        "{what} took {took:?} (deadline {DEADLINE:?}): {error:?}"
    );
    error
}

/// The commits acknowledged before the fault: actor "known" at versions 1-3 (read by the
/// handle under test, so it knows its tip), "unread" at 1-3 (written by another handle), and a
/// snapshot of "known" at version 3.
async fn seed(url: &str, store: &Store) {
    let other = self::store(url).await;
    for n in 1..=3 {
        other
            .append("known", ExpectedVersion::Exact(n - 1), event(n))
            .await
            .expect("append");
        other
            .append("unread", ExpectedVersion::Exact(n - 1), event(n))
            .await
            .expect("append");
    }
    other
        .save_snapshot(&Snapshot::new("known", 3, json!({ "n": 3 })))
        .await
        .expect("snapshot");
    assert_eq!(store.events("known", 1).await.expect("read").len(), 3);
}

/// Every store operation against the faulty server: the typed error, in time. Returns the
/// commit ids of the appends whose outcome is unknown.
async fn every_operation_fails_in_time(store: &Store) -> Vec<String> {
    let mut unknown = Vec::new();
    let append = store.append("known", ExpectedVersion::Exact(3), event(4));
    match fails_in_time("append, tip known", append).await {
        AppendError::Indeterminate {
            commit_id,
            source: BrokerError::Timeout { operation },
        } if operation.contains("deadline") => unknown.push(commit_id),
        other => panic!("the commit was sent: its outcome is unknown, not {other:?}"),
    }
    let append = store.append("unread", ExpectedVersion::Any, event(4));
    let error = fails_in_time("append, tip read first", append).await;
    assert!(
        matches!(error, AppendError::DeadlineExceeded(_)),
        "the tip was being read, nothing was sent: {error:?}"
    );
    let append = store.append("new", ExpectedVersion::NoStream, event(1));
    match fails_in_time("append, new actor", append).await {
        AppendError::Indeterminate { commit_id, .. } => unknown.push(commit_id),
        other => panic!("the commit was sent: its outcome is unknown, not {other:?}"),
    }
    let read =
        |e: &ReadError| matches!(e, ReadError::DeadlineExceeded(d) if d.deadline == DEADLINE);
    let e = fails_in_time("events", store.events("known", 1)).await;
    assert!(read(&e), "{e:?}");
    let e = fails_in_time("latest_version", store.latest_version("known")).await;
    assert!(read(&e), "{e:?}");
    let e = fails_in_time("current_version", store.current_version("known")).await;
    assert!(read(&e), "{e:?}");
    let e = fails_in_time("read_all", store.read_all(1, 100)).await;
    assert!(read(&e), "{e:?}");
    let e = fails_in_time("latest_snapshot", store.latest_snapshot("known")).await;
    assert!(matches!(e, SnapshotError::DeadlineExceeded(_)), "{e:?}");
    let snapshot = Snapshot::new("known", 3, json!({ "n": 3 }));
    let e = fails_in_time("save_snapshot", store.save_snapshot(&snapshot)).await;
    assert!(matches!(e, SnapshotError::DeadlineExceeded(_)), "{e:?}");
    let config = StoreConfig::new(NAMESPACE).deadline(DEADLINE);
    let open = EventStore::open(store.runtime().clone(), config);
    let e = fails_in_time("open", open).await;
    assert!(matches!(e, OpenError::DeadlineExceeded(_)), "{e:?}");
    unknown
}

/// Once the server serves again: appends work, every acknowledged commit is there, each
/// abandoned commit at most once. (An abandoned commit may land late: async-nats keeps what it
/// could not send while disconnected and sends it after reconnecting, so the append with the
/// tip known, abandoned at version 4, may be stored before or after the store serves again.)
async fn serves_again_with_nothing_lost(store: &Store, unknown: &[String]) {
    let started = Instant::now();
    let done = loop {
        match store
            .append("known", ExpectedVersion::Any, event(100))
            .await
        {
            Ok(done) => break done,
            Err(e) => {
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "the store did not serve again within 60 s: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    // Replay checks every record: versions from 1 without a gap, no second copy of a commit.
    let events = store.events("known", 1).await.expect("read");
    let numbers: Vec<u64> = events
        .iter()
        .map(|e| e.data["n"].as_u64().expect("n"))
        .collect();
    assert_eq!(
        numbers[..3],
        [1, 2, 3],
        "acknowledged commits kept: {numbers:?}"
    );
    assert!(
        numbers[3..] == [100] || numbers[3..] == [4, 100] || numbers[3..] == [100, 4],
        "the abandoned commit at most once, after the acknowledged ones: {numbers:?}"
    );
    assert!(events.iter().any(|e| e.version == done.last_version()));
    let unread: Vec<u64> = store
        .events("unread", 1)
        .await
        .expect("read")
        .iter()
        .map(|e| e.data["n"].as_u64().expect("n"))
        .collect();
    assert_eq!(unread, [1, 2, 3], "the append that read first sent nothing");
    let page = store.read_all(1, 100).await.expect("read all");
    assert!(page.errors.is_empty(), "{:?}", page.errors);
    for id in unknown {
        let copies = page.commits.iter().filter(|c| &c.commit_id == id).count();
        println!("abandoned commit {id}: {copies} stored");
        assert!(copies <= 1, "commit {id} stored {copies} times");
    }
    let snapshot = store.latest_snapshot("known").await.expect("snapshot");
    assert_eq!(snapshot.map(|s| s.version), Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn against_a_killed_server_every_operation_fails_typed_within_the_deadline_and_a_restart_loses_nothing()
 {
    let mut server = NatsServer::start();
    let store = store(&server.url()).await;
    seed(&server.url(), &store).await;
    server.kill();

    let unknown = every_operation_fails_in_time(&store).await;
    // Nothing listens on the port now: connecting fails at once.
    let connect = NatsBroker::connect(NatsOptions::new(server.url()));
    let e = fails_in_time("connect", connect).await;
    assert!(matches!(e, NatsConnectError::NoServer { .. }), "{e:?}");

    server.restart();
    server.wait_healthy(Duration::from_secs(20));
    serves_again_with_nothing_lost(&store, &unknown).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn against_a_paused_server_every_operation_fails_typed_within_the_deadline_and_it_serves_again_when_continued()
 {
    let server = NatsServer::start();
    let store = store(&server.url()).await;
    seed(&server.url(), &store).await;
    server.pause();

    let unknown = every_operation_fails_in_time(&store).await;
    // The kernel still accepts the TCP connection; the server never says hello.
    let connect = NatsBroker::connect(
        NatsOptions::new(server.url()).connection_timeout(Duration::from_secs(1)),
    );
    let e = fails_in_time("connect, 1 s connection timeout", connect).await;
    assert!(matches!(e, NatsConnectError::NoServer { .. }), "{e:?}");

    // Continued, the server processes what the client had sent meanwhile: an abandoned commit
    // may land now (that is why its outcome was unknown), but only once.
    server.resume();
    serves_again_with_nothing_lost(&store, &unknown).await;
}
