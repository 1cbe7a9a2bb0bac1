//! Cross-process races: the test binary re-executes itself as worker processes.
//!
//! A test that races calls [`run_race`], which starts [`PROCESSES`] copies of the current test
//! binary running the same test with `AETHER_RACE_ROLE=worker`. That test must start with
//! `if race::is_worker() { race::worker_main(); return; }`. Each worker opens [`TASKS`] stores on
//! one connection, learns the actor's version (so every store holds the same hint), waits for a
//! common start instant, and has every store append at the same expected version at once. Each
//! worker prints one `AETHER_RACE_RESULT` line; the parent adds them up.
#![allow(clippy::disallowed_methods)] // processes agree on a wall-clock start instant

use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aether::{
    AppendError, EventStore, ExpectedVersion, NatsBroker, NatsOptions, NewEvent, Runtime,
    StoreConfig,
};

/// Worker processes per race.
pub const PROCESSES: usize = 5;
/// Concurrent appends per worker process.
pub const TASKS: usize = 10;

const ROLE: &str = "AETHER_RACE_ROLE";

/// Whether this process is a race worker.
pub fn is_worker() -> bool {
    std::env::var(ROLE).as_deref() == Ok("worker")
}

/// What the racers saw, summed over all processes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RaceTotals {
    /// Appends that succeeded.
    pub successes: u64,
    /// Appends refused as a version conflict.
    pub conflicts: u64,
    /// Appends that failed otherwise (indeterminate, contended, broker errors).
    pub other: u64,
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Runs [`PROCESSES`] worker processes (re-running `test_name` of this binary) that each append
/// [`TASKS`] times to `actor` at `ExpectedVersion::Exact(version)`.
pub fn run_race(
    test_name: &str,
    urls: &str,
    namespace: &str,
    replicas: usize,
    actor: &str,
    version: u64,
) -> RaceTotals {
    let exe = std::env::current_exe().expect("current test binary");
    let start_at = unix_millis() + 2_000;
    let children: Vec<_> = (0..PROCESSES)
        .map(|i| {
            Command::new(&exe)
                .args([test_name, "--exact", "--nocapture", "--test-threads", "1"])
                .env(ROLE, "worker")
                .env("AETHER_RACE_WORKER_ID", i.to_string())
                .env("AETHER_RACE_URLS", urls)
                .env("AETHER_RACE_NAMESPACE", namespace)
                .env("AETHER_RACE_REPLICAS", replicas.to_string())
                .env("AETHER_RACE_ACTOR", actor)
                .env("AETHER_RACE_VERSION", version.to_string())
                .env("AETHER_RACE_START_AT", start_at.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn a race worker")
        })
        .collect();
    let mut totals = RaceTotals::default();
    for child in children {
        let output = child.wait_with_output().expect("race worker output");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "race worker failed:\n{stdout}");
        // libtest may print the test name on the same line, so look for the marker anywhere.
        let line = stdout
            .lines()
            .find_map(|l| l.find("AETHER_RACE_RESULT").map(|at| &l[at..]))
            .unwrap_or_else(|| panic!("race worker printed no result:\n{stdout}"));
        for field in line.split_whitespace().skip(1) {
            let (key, value) = field.split_once('=').expect("key=value");
            let value: u64 = value.parse().expect("a count");
            match key {
                "successes" => totals.successes += value,
                "conflicts" => totals.conflicts += value,
                "other" => totals.other += value,
                _ => panic!("unknown race field {key}"),
            }
        }
    }
    totals
}

fn env(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| panic!("race worker needs {key}"))
}

/// The worker side: race, print the result line, return.
pub fn worker_main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let worker = env("AETHER_RACE_WORKER_ID");
        let namespace = env("AETHER_RACE_NAMESPACE");
        let actor = env("AETHER_RACE_ACTOR");
        let replicas: usize = env("AETHER_RACE_REPLICAS").parse().expect("replicas");
        let version: u64 = env("AETHER_RACE_VERSION").parse().expect("version");
        let start_at: u64 = env("AETHER_RACE_START_AT").parse().expect("start");
        let broker = NatsBroker::connect(NatsOptions::new(env("AETHER_RACE_URLS")))
            .await
            .expect("worker connects");
        let mut stores = Vec::new();
        for _ in 0..TASKS {
            let store = EventStore::open(
                Runtime::system(broker.clone()),
                StoreConfig::new(&namespace).replicas(replicas),
            )
            .await
            .expect("worker opens the store");
            // Every store learns the same tip, so all appends carry the same expectation. On R3
            // the tip is a direct get that any replica may answer, a moment behind the leader.
            let mut tip = None;
            for _ in 0..100 {
                match store.latest_version(&actor).await {
                    Ok(v) if v == version => {
                        tip = Some(v);
                        break;
                    }
                    other => {
                        if std::env::var("AETHER_RACE_DEBUG").is_ok() {
                            eprintln!("worker {worker}: {other:?}");
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await
                    }
                }
            }
            assert_eq!(
                tip,
                Some(version),
                "worker {worker} never saw version {version}"
            );
            stores.push(store);
        }
        let wait = start_at.saturating_sub(unix_millis());
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let appends = stores.into_iter().enumerate().map(|(task, store)| {
            let actor = actor.clone();
            let worker = worker.clone();
            tokio::spawn(async move {
                store
                    .append(
                        &actor,
                        ExpectedVersion::Exact(version),
                        vec![NewEvent::new(
                            "Raced",
                            serde_json::json!({ "worker": worker, "task": task }),
                        )],
                    )
                    .await
            })
        });
        let results = futures::future::join_all(appends).await;
        let (mut successes, mut conflicts, mut other) = (0, 0, 0);
        for result in results {
            match result.expect("append task") {
                Ok(_) => successes += 1,
                Err(AppendError::Conflict(_)) => conflicts += 1,
                Err(e) => {
                    eprintln!("race worker {worker}: {e}");
                    other += 1;
                }
            }
        }
        println!("\nAETHER_RACE_RESULT successes={successes} conflicts={conflicts} other={other}");
    });
}
