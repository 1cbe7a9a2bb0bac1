//! Time to error: how long each public store operation, and connecting, takes to return its
//! typed error when the NATS server is dead, frozen, or refuses the credentials.
//!
//! Run: `cargo bench --features nats --bench time_to_error` (starts its own nats-servers on
//! loopback, found like the tests: `AETHER_NATS_SERVER`, `.tools/nats/bin/nats-server`, or
//! `PATH`). Takes about as long as the slowest operation twice over (minutes before deadlines).
//!
//! Faults:
//! - **down**: the server is killed (SIGKILL) after every store handle is open and has read its
//!   actor; connecting then goes to a port where nothing listens.
//! - **paused**: the server is stopped (SIGSTOP) instead; its sockets stay open, so connecting
//!   gets a TCP connection but never an `INFO`. It is continued (SIGCONT) afterwards.
//! - **auth**: a server that requires a password (or an nkey) is given a wrong one (or none).
//!
//! Each operation runs on its own connection and store handle (so they cannot delay one
//! another), all of one fault at once, each timed from its own call to its result, with the
//! library's defaults (`NatsOptions::new`, `StoreConfig::new`; `AETHER_BENCH_DEADLINE_MS=2000`
//! sets `StoreConfig::deadline` to 2 s instead). An operation still running after
//! `CAP` is reported as such. The table prints the error's variant (from its `Debug`) and its
//! `Display`. Nothing here asserts a time: `tests/nats_deadlines.rs` checks the bounds.
#![allow(clippy::disallowed_methods)] // a benchmark measures real time to error

#[path = "../tests/support/nats_server.rs"]
#[allow(dead_code)]
mod nats_server;

use std::fmt::{Debug, Display};
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use aether::{
    EventStore, ExpectedVersion, NatsBroker, NatsOptions, NewEvent, Runtime, Snapshot, StoreConfig,
};
use nats_server::{NatsServer, ServerSettings};

/// The longest an operation is waited for.
const CAP: Duration = Duration::from_secs(240);
const NAMESPACE: &str = "tte";
/// The actor every handle has read before the fault (its tip is known to the handle).
const KNOWN: &str = "known";
/// An actor with events that no handle has read (an append must read its tip first).
const UNREAD: &str = "unread";

type Store = EventStore<NatsBroker>;
type Timed = Pin<Box<dyn Future<Output = (Duration, String, String)> + Send>>;
/// An operation, named, to be started when the fault is in place.
type Op = (&'static str, Box<dyn FnOnce() -> Timed>);

fn event(n: u64) -> Vec<NewEvent> {
    vec![NewEvent::new("Added", serde_json::json!({ "n": n }))]
}

/// The store configuration measured: the defaults, or the deadline `AETHER_BENCH_DEADLINE_MS`.
fn config() -> StoreConfig {
    let config = StoreConfig::new(NAMESPACE);
    match std::env::var("AETHER_BENCH_DEADLINE_MS") {
        Ok(ms) => config.deadline(Duration::from_millis(
            ms.parse()
                .expect("AETHER_BENCH_DEADLINE_MS is a number of milliseconds"),
        )),
        Err(_) => config,
    }
}

/// Times `op` from its call to its result: (time, variant, display).
fn timed<T, E, F>(op: F) -> Timed
where
    E: Display + Debug,
    F: Future<Output = Result<T, E>> + Send + 'static,
{
    Box::pin(async move {
        let started = Instant::now();
        let result = tokio::time::timeout(CAP, op).await;
        let took = started.elapsed();
        match result {
            Ok(Ok(_)) => (took, "-".into(), "succeeded".into()),
            Ok(Err(e)) => (took, variant(&format!("{e:?}")), e.to_string()),
            Err(_) => (took, "-".into(), format!("still running after {CAP:?}")),
        }
    })
}

/// `Broker(Timeout { operation: .. })` → `Broker(Timeout)`: the variant, and the inner one.
fn variant(debug: &str) -> String {
    let cut = |s: &str| s.find(['(', ' ', '{']).map_or(s.len(), |i| i);
    let outer = &debug[..cut(debug)];
    match debug[outer.len()..].strip_prefix('(') {
        Some(rest) if rest.starts_with(|c: char| c.is_ascii_uppercase()) => {
            format!("{outer}({})", &rest[..cut(rest)])
        }
        _ => outer.to_owned(),
    }
}

/// A connection and a store handle that has read `KNOWN` (so its tip is cached).
async fn warm_store(url: &str) -> Store {
    let broker = NatsBroker::connect(NatsOptions::new(url))
        .await
        .expect("connect");
    let store = EventStore::open(Runtime::system(broker), config())
        .await
        .expect("open");
    store.events(KNOWN, 1).await.expect("read the known actor");
    store
        .latest_snapshot(KNOWN)
        .await
        .expect("read its snapshot");
    store
}

/// Every public store operation, each on its own warm handle, plus connecting to `url`.
async fn operations(url: &str) -> Vec<Op> {
    let mut ops: Vec<Op> = Vec::new();
    macro_rules! op {
        ($name:expr, |$s:ident| $body:expr) => {{
            let $s = warm_store(url).await;
            ops.push(($name, Box::new(move || timed(async move { $body.await }))));
        }};
    }
    op!("append (tip known)", |s| s.append(
        KNOWN,
        ExpectedVersion::Any,
        event(100)
    ));
    op!("append (tip read first)", |s| s.append(
        UNREAD,
        ExpectedVersion::Any,
        event(100)
    ));
    op!("events (load)", |s| s.events(KNOWN, 1));
    op!("latest_version", |s| s.latest_version(KNOWN));
    op!("current_version", |s| s.current_version(KNOWN));
    op!("latest_snapshot", |s| s.latest_snapshot(KNOWN));
    op!("save_snapshot", |s| async move {
        s.save_snapshot(&Snapshot::new(KNOWN, 2, serde_json::json!({ "n": 2 })))
            .await
    });
    op!("read_all", |s| s.read_all(1, 100));
    op!("EventStore::open", |s| EventStore::open(
        s.runtime().clone(),
        config()
    ));
    let url = url.to_owned();
    ops.push((
        "NatsBroker::connect",
        Box::new(move || timed(NatsBroker::connect(NatsOptions::new(url)))),
    ));
    ops
}

/// Runs every operation at once; their rows.
async fn run_all(
    fault: &'static str,
    ops: Vec<Op>,
) -> Vec<(String, String, Duration, String, String)> {
    let names: Vec<&str> = ops.iter().map(|(n, _)| *n).collect();
    let futures: Vec<Timed> = ops.into_iter().map(|(_, f)| f()).collect();
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut rows = Vec::new();
    for (name, handle) in names.into_iter().zip(handles) {
        let (took, kind, text) = handle.await.expect("operation task");
        rows.push((fault.to_owned(), name.to_owned(), took, kind, text));
    }
    rows
}

async fn seed(url: &str) {
    let broker = NatsBroker::connect(NatsOptions::new(url))
        .await
        .expect("connect");
    let store = EventStore::open(Runtime::system(broker), config())
        .await
        .expect("open");
    for n in 1..=3 {
        store
            .append(KNOWN, ExpectedVersion::Any, event(n))
            .await
            .expect("append");
        store
            .append(UNREAD, ExpectedVersion::Any, event(n))
            .await
            .expect("append");
    }
    store
        .save_snapshot(&Snapshot::new(KNOWN, 3, serde_json::json!({ "n": 3 })))
        .await
        .expect("snapshot");
}

fn show(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{:.0} µs", d.as_secs_f64() * 1e6)
    } else if d < Duration::from_secs(1) {
        format!("{:.0} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let total = Instant::now();
    let options = NatsOptions::new("nats://127.0.0.1:4222");
    let defaults = config();
    println!(
        "defaults: NatsOptions connection_timeout {:?}, request_timeout {:?}; StoreConfig \
         retry_max {}, retry_delay {:?}, deadline {:?}",
        options.connection_timeout,
        options.request_timeout,
        defaults.retry_max,
        defaults.retry_delay,
        defaults.deadline,
    );
    let mut rows = Vec::new();

    // Down: killed with every handle open and warm.
    let mut server = NatsServer::start();
    println!(
        "environment: nats-server {} (single node, 127.0.0.1), {} CPUs",
        server.broker().await.server_version(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    seed(&server.url()).await;
    let ops = operations(&server.url()).await;
    server.kill();
    rows.extend(run_all("down (kill -9)", ops).await);
    drop(server);

    // Paused: SIGSTOP with every handle open and warm, SIGCONT afterwards.
    let server = NatsServer::start();
    seed(&server.url()).await;
    let ops = operations(&server.url()).await;
    server.pause();
    rows.extend(run_all("paused (SIGSTOP)", ops).await);
    server.resume();
    drop(server);

    // Refused credentials.
    let server = NatsServer::start_with(ServerSettings {
        user_password: Some(("ada".into(), "s3cret".into())),
        ..Default::default()
    });
    let url = server.url();
    let wrong = NatsOptions::new(&url).user_password("ada", "wrong");
    let none = NatsOptions::new(&url);
    let ops: Vec<Op> = vec![
        (
            "NatsBroker::connect, wrong password",
            Box::new(move || timed(NatsBroker::connect(wrong))),
        ),
        (
            "NatsBroker::connect, no credentials",
            Box::new(move || timed(NatsBroker::connect(none))),
        ),
    ];
    rows.extend(run_all("auth refused", ops).await);
    let allowed = nkeys::KeyPair::new_user();
    let server = NatsServer::start_with(ServerSettings {
        nkey_user: Some(allowed.public_key()),
        ..Default::default()
    });
    let stranger = nkeys::KeyPair::new_user().seed().expect("seed");
    let unknown = NatsOptions::new(server.url()).nkey(stranger);
    let ops: Vec<Op> = vec![(
        "NatsBroker::connect, unknown nkey",
        Box::new(move || timed(NatsBroker::connect(unknown))),
    )];
    rows.extend(run_all("auth refused", ops).await);

    println!();
    println!("| fault | operation | time to error | error | Display |");
    println!("|---|---|---|---|---|");
    for (fault, op, took, kind, text) in &rows {
        println!("| {fault} | {op} | {} | `{kind}` | {text} |", show(*took));
    }
    println!();
    println!("total {}", show(total.elapsed()));
}
