//! What loading an actor costs as its history grows, with and without a snapshot, and what
//! reading one's own write costs: each measured against a baseline from the same run.
//!
//! Run: `cargo bench --all-features --bench load` (starts its own nats-server, found like the
//! tests: `AETHER_NATS_SERVER`, `.tools/nats/bin/nats-server`, or `PATH`).
//!
//! (1) The load-cost curve, on the memory broker and on one real nats-server. A load is what
//!     the actor host does on activation: `latest_snapshot`, then `events_after(&snapshot)`
//!     (or `events(actor, 1)` when there is none). Histories of 10, 1,000, 10,000 and 100,000
//!     events: all but the last 10 in commits of 100 events, the last 10 in commits of one. Each
//!     history once without a snapshot and once with one 10 events before the tip, saved with
//!     the stream position of the commit ending there (`Snapshot::at_sequence`); the 10-event
//!     history's snapshot is at version 0 (it covers nothing, so the whole history is read).
//!     Baseline: loading the 10-event actor without a snapshot. Target: 100,000 events with a
//!     snapshot at 99,990 cost at most 2× the baseline. On NATS the baseline is also paired
//!     with raw async-nats making the same two requests by hand.
//! (2) Read your writes, on NATS: `latest_version` right after an append on the same handle,
//!     against one raw direct get of the subject's last message. Target: ≈ 1 round trip
//!     (ratio ≈ 1). A third read, by hand, is the request `latest_version` sends (a batched
//!     direct get of what follows the append, on a fresh inbox), to tell the request's own
//!     cost from the library's.
//!
//! Pairing: in every round each case runs back to back with a batch of the baseline (which one
//! goes first alternates), and the ratio printed is the median over rounds of (case time /
//! baseline time in that round), so machine noise in one round hits both sides of it. A batch
//! is as many loads as fit in about 40 ms (at least one); the counts are printed. On NATS the
//! requests each call sends are counted on the server (`/connz` `in_msgs` of the benchmark's
//! connection): one request is one round trip. Nothing here asserts a time. (Not criterion,
//! for the reason `benches/nats.rs` gives: the result is a ratio paired within each round.)
#![allow(clippy::disallowed_methods)] // a benchmark reads the clock

#[path = "../tests/support/nats_server.rs"]
#[allow(dead_code)]
mod nats_server;

use std::time::{Duration, Instant};

use aether::broker::{Broker, ReadFrom};
use aether::{EventStore, ExpectedVersion, MemoryBroker, NewEvent, Runtime, Snapshot, StoreConfig};
use futures::StreamExt;
use nats_server::NatsServer;

const ROUNDS: usize = 7;
/// History lengths, in events.
const HISTORIES: [u64; 4] = [10, 1_000, 10_000, 100_000];
/// Events after the snapshot, one commit each (the last commands before the actor went idle).
const TAIL: u64 = 10;
/// Events per commit before the tail (keeps setup short).
const BATCH: u64 = 100;
/// About how long one batch of loads runs.
const BATCH_TIME: Duration = Duration::from_millis(40);
const ITERATIONS_MAX: usize = 500;
/// The target: the longest history with a snapshot at most this many times the baseline.
const TARGET_RATIO: f64 = 2.0;
/// Read your writes: appends (each followed by the three reads) per round.
const RYW_OPS: usize = 300;

fn event(n: u64) -> NewEvent {
    NewEvent::new(
        "Deposited",
        serde_json::json!({ "account": "acc-1", "amount": n, "currency": "EUR" }),
    )
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Human-readable duration of `seconds`.
fn show(seconds: f64) -> String {
    if seconds < 1e-3 {
        format!("{:.1} µs", seconds * 1e6)
    } else if seconds < 1.0 {
        format!("{:.2} ms", seconds * 1e3)
    } else {
        format!("{seconds:.2} s")
    }
}

/// One history to load.
struct Case {
    history: u64,
    /// The snapshot's version, if the actor has one.
    snapshot: Option<u64>,
    actor: String,
    /// Commits a load reads.
    commits_read: u64,
    iterations: usize,
    /// Seconds per load, one per round.
    times: Vec<f64>,
    /// Case time / baseline time, one per round.
    ratios: Vec<f64>,
    /// Requests sent per load (NATS only).
    requests: Option<f64>,
}

impl Case {
    fn label(&self) -> String {
        match self.snapshot {
            None => "none".to_owned(),
            Some(v) => format!("at {v}"),
        }
    }
}

/// Appends `history` events to `actor` (commits of `BATCH`, then `TAIL` single-event commits)
/// and, when asked, saves a snapshot at `history - TAIL` naming the stream position of the
/// commit that ends there. Returns the snapshot's version and position.
async fn populate<B: Broker>(
    store: &EventStore<B>,
    actor: &str,
    history: u64,
    snapshot: bool,
) -> Option<(u64, u64)> {
    let prefix = history - TAIL;
    let (mut version, mut sequence) = (0u64, 0u64);
    while version < history {
        let n = if version < prefix {
            BATCH.min(prefix - version)
        } else {
            1
        };
        let outcome = store
            .append(
                actor,
                ExpectedVersion::Exact(version),
                (version + 1..=version + n).map(event).collect(),
            )
            .await
            .expect("append");
        version = outcome.last_version();
        if version == prefix {
            sequence = outcome.sequence;
        }
    }
    if !snapshot {
        return None;
    }
    let mut s = Snapshot::new(actor, prefix, serde_json::json!({ "balance": prefix }));
    if sequence > 0 {
        s = s.at_sequence(sequence);
    }
    store.save_snapshot(&s).await.expect("save snapshot");
    Some((prefix, sequence))
}

/// Loads `actor` as the actor host does; returns (events read, version reached).
async fn load<B: Broker>(store: &EventStore<B>, actor: &str) -> (u64, u64) {
    let snapshot = store.latest_snapshot(actor).await.expect("latest snapshot");
    let (from, events) = match &snapshot {
        Some(s) => (
            s.version,
            store.events_after(s).await.expect("events after"),
        ),
        None => (0, store.events(actor, 1).await.expect("events")),
    };
    let version = events.last().map_or(from, |e| e.version);
    (events.len() as u64, version)
}

/// Seconds per load over `iterations` loads of `case`'s actor.
async fn time_loads<B: Broker>(store: &EventStore<B>, case: &Case, iterations: usize) -> f64 {
    let start = Instant::now();
    for _ in 0..iterations {
        let (read, version) = load(store, &case.actor).await;
        assert_eq!(version, case.history, "a load reaches the tip");
        assert_eq!(read, case.history - case.snapshot.unwrap_or(0));
    }
    start.elapsed().as_secs_f64() / iterations as f64
}

/// Requests the clients of `server` have sent so far (`/connz`: every client connection's
/// `in_msgs`; the monitoring requests themselves are not client messages).
fn requests_sent(server: &NatsServer) -> u64 {
    let (status, body) = server
        .monitor("/connz")
        .expect("the monitoring port answers");
    assert_eq!(status, 200, "/connz: {body}");
    let connz: serde_json::Value = serde_json::from_str(&body).expect("/connz is JSON");
    connz["connections"]
        .as_array()
        .expect("/connz lists connections")
        .iter()
        .map(|c| c["in_msgs"].as_u64().unwrap_or(0))
        .sum()
}

/// The load-cost curve on `writer`'s broker: populates the histories through `writer` and loads
/// them through `reader` (another handle on the same namespace, as a node activating the actor).
async fn load_curve<B: Broker>(
    name: &str,
    writer: &EventStore<B>,
    reader: &EventStore<B>,
    server: Option<&NatsServer>,
) {
    let setup = Instant::now();
    let mut cases = Vec::new();
    for history in HISTORIES {
        for with_snapshot in [false, true] {
            let actor = format!(
                "load-{history}-{}",
                if with_snapshot { "snap" } else { "plain" }
            );
            let snapshot = populate(writer, &actor, history, with_snapshot).await;
            if let Some((version, sequence)) = snapshot {
                // The snapshot kept its stream position: loading reads only what follows it.
                let stored = reader
                    .latest_snapshot(&actor)
                    .await
                    .expect("latest snapshot")
                    .expect("snapshot saved");
                assert_eq!((stored.version, stored.sequence), (version, sequence));
            }
            let prefix_commits = (history - TAIL).div_ceil(BATCH);
            let commits_read = match snapshot {
                Some((v, _)) if v > 0 => TAIL,
                _ => prefix_commits + TAIL,
            };
            cases.push(Case {
                history,
                snapshot: snapshot.map(|(v, _)| v),
                actor,
                commits_read,
                iterations: 0,
                times: Vec::new(),
                ratios: Vec::new(),
                requests: None,
            });
        }
    }
    let setup = setup.elapsed();

    // Calibration (also warms the reader's caches, as a second activation would find them):
    // the best of three loads decides how many fit in a batch.
    for case in &mut cases {
        let mut best = f64::MAX;
        for _ in 0..3 {
            best = best.min(time_loads(reader, case, 1).await);
        }
        case.iterations = ((BATCH_TIME.as_secs_f64() / best) as usize).clamp(1, ITERATIONS_MAX);
    }
    if let Some(server) = server {
        for case in &mut cases {
            // The server adds a message to its count a little after it handled it.
            let n = case.iterations.min(50);
            tokio::time::sleep(Duration::from_millis(2)).await;
            let before = requests_sent(server);
            time_loads(reader, case, n).await;
            tokio::time::sleep(Duration::from_millis(2)).await;
            case.requests = Some((requests_sent(server) - before) as f64 / n as f64);
        }
    }

    let base = 0; // the 10-event actor without a snapshot
    let base_iterations = cases[base].iterations;
    let start = Instant::now();
    for round in 0..ROUNDS {
        for i in 0..cases.len() {
            let base_first = (round + i) % 2 == 0;
            let mut base_time = 0.0;
            if base_first {
                base_time = time_loads(reader, &cases[base], base_iterations).await;
            }
            let time = time_loads(reader, &cases[i], cases[i].iterations).await;
            if !base_first {
                base_time = time_loads(reader, &cases[base], base_iterations).await;
            }
            cases[i].times.push(time);
            cases[i].ratios.push(time / base_time);
        }
    }
    let measured = start.elapsed();

    println!();
    println!(
        "(1) load = latest_snapshot + events_after / events(actor, 1), {name}: setup {:.1} s, \
         measured {:.1} s",
        setup.as_secs_f64(),
        measured.as_secs_f64()
    );
    println!(
        "{:>8} {:>10} {:>12} {:>10} {:>11} {:>12} {:>16} {:>14}",
        "history",
        "snapshot",
        "commits read",
        "loads/batch",
        "time/load",
        "ratio (med)",
        "ratio (min-max)",
        "requests/load"
    );
    for case in &cases {
        let (lo, hi) = case
            .ratios
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
        println!(
            "{:>8} {:>10} {:>12} {:>10} {:>11} {:>12.2} {:>16} {:>14}",
            case.history,
            case.label(),
            case.commits_read,
            case.iterations,
            show(median(case.times.clone())),
            median(case.ratios.clone()),
            format!("{lo:.2}-{hi:.2}"),
            case.requests.map_or("-".to_owned(), |r| format!("{r:.2}"))
        );
    }
    let last = cases.last().expect("cases");
    let ratio = median(last.ratios.clone());
    println!(
        "target: {} events + snapshot at {} ≤ {TARGET_RATIO:.1}× the 10-event actor: {ratio:.2}× — {}",
        last.history,
        last.snapshot.expect("the last case has a snapshot"),
        if ratio <= TARGET_RATIO {
            "met"
        } else {
            "MISSED"
        }
    );
}

/// Reads every message of `subject` with one batched direct get (no consumer) of up to 1,000
/// messages: the raw async-nats way to read a short subject. Returns how many it read.
async fn raw_direct_batch(
    client: &aether::broker::async_nats::Client,
    stream: &str,
    subject: &str,
    from: u64,
) -> usize {
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.expect("subscribe");
    let request = serde_json::json!({ "seq": from, "next_by_subj": subject, "batch": 1000 });
    client
        .publish_with_reply(
            format!("$JS.API.DIRECT.GET.{stream}"),
            inbox,
            bytes::Bytes::from(request.to_string()),
        )
        .await
        .expect("request");
    let mut count = 0;
    while let Some(m) = replies.next().await {
        match m.status.map(|s| s.as_u16()) {
            None => count += 1,
            Some(204 | 404) => break,
            Some(other) => panic!("direct get answered {other}"),
        }
    }
    count
}

/// The baseline load against the same two round trips done by hand with raw async-nats (a
/// direct get of the missing snapshot, then one batched direct get of the 10 records), paired
/// like the cases of the curve: what aether adds on top of the round trips.
async fn raw_floor(broker: &aether::NatsBroker, reader: &EventStore<aether::NatsBroker>) {
    let actor = "load-10-plain";
    let names = reader.names();
    let events_stream = names.events_stream();
    let events_subject = names.event_subject(actor).expect("actor id");
    let snapshot_subject = names.snapshot_subject(actor).expect("actor id");
    let snapshots = broker
        .jetstream()
        .get_stream_no_info(names.snapshots_stream())
        .await
        .expect("stream");
    let time_raw = async |iterations: usize| {
        let start = Instant::now();
        for _ in 0..iterations {
            let missing = snapshots
                .direct_get_last_for_subject(snapshot_subject.clone())
                .await;
            assert!(missing.is_err(), "the plain actor has no snapshot");
            let read = raw_direct_batch(broker.client(), &events_stream, &events_subject, 1).await;
            assert_eq!(read, 10);
        }
        start.elapsed().as_secs_f64() / iterations as f64
    };
    let case = Case {
        history: 10,
        snapshot: None,
        actor: actor.to_owned(),
        commits_read: 10,
        iterations: 0,
        times: Vec::new(),
        ratios: Vec::new(),
        requests: None,
    };
    let iterations = 150;
    let (mut ours, mut raw, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let mut raw_time = 0.0;
        if round % 2 == 0 {
            raw_time = time_raw(iterations).await;
        }
        let ours_time = time_loads(reader, &case, iterations).await;
        if round % 2 == 1 {
            raw_time = time_raw(iterations).await;
        }
        ours.push(ours_time);
        raw.push(raw_time);
        ratios.push(ours_time / raw_time);
    }
    println!(
        "baseline (10 events, no snapshot) vs raw async-nats in the same 2 round trips, \
         {iterations} loads per batch: aether {}, raw {}, ratio {:.2}",
        show(median(ours)),
        show(median(raw)),
        median(ratios)
    );
}

/// (2) `latest_version` right after an own append vs one raw direct get, on NATS.
async fn read_your_writes(server: &NatsServer, broker: &aether::NatsBroker) {
    let store = EventStore::open(Runtime::system(broker.clone()), StoreConfig::new("ryw"))
        .await
        .expect("store");
    let actor = "ryw";
    let subject = store.names().event_subject(actor).expect("actor id");
    let handle = broker
        .jetstream()
        .get_stream(store.names().events_stream())
        .await
        .expect("stream");
    let mut version = 0u64;
    let append = async |version: &mut u64| {
        let outcome = store
            .append(
                actor,
                ExpectedVersion::Exact(*version),
                vec![event(*version)],
            )
            .await
            .expect("append");
        *version = outcome.last_version();
        outcome.sequence
    };
    let stream = store.names().events_stream();
    // Round trips: requests sent per call, counted by the server. The server adds a message to
    // its count a little after it handled it, so each count waits a moment first.
    let settled = async || {
        tokio::time::sleep(Duration::from_millis(2)).await;
        requests_sent(server)
    };
    let n = 100;
    let mut requests = [0u64; 3];
    for _ in 0..n {
        let sequence = append(&mut version).await;
        let start = settled().await;
        assert_eq!(store.latest_version(actor).await.expect("tip"), version);
        let after_ours = settled().await;
        handle
            .direct_get_last_for_subject(subject.clone())
            .await
            .expect("direct get");
        let after_raw = settled().await;
        raw_direct_batch(broker.client(), &stream, &subject, sequence + 1).await;
        let after_batch = settled().await;
        requests[0] += after_ours - start;
        requests[1] += after_raw - after_ours;
        requests[2] += after_batch - after_raw;
    }

    // Three reads after each append, in rotating order: `latest_version`; the baseline, one
    // direct get of the subject's last message (async-nats' shared request inbox); and the
    // request `latest_version` sends, by hand: a batched direct get of what follows the
    // append, on a fresh inbox subscription (what `NatsBroker::read_each` does).
    let mut times: [Vec<f64>; 3] = Default::default();
    let mut ratios: [Vec<f64>; 3] = Default::default();
    let start = Instant::now();
    for round in 0..ROUNDS {
        let mut total = [Duration::ZERO; 3];
        for i in 0..RYW_OPS {
            let sequence = append(&mut version).await;
            for k in 0..3 {
                let side = (round + i + k) % 3;
                let start = Instant::now();
                match side {
                    0 => {
                        let tip = store.latest_version(actor).await.expect("tip");
                        total[0] += start.elapsed();
                        assert_eq!(tip, version, "the handle reads its own write");
                    }
                    1 => {
                        let last = handle
                            .direct_get_last_for_subject(subject.clone())
                            .await
                            .expect("direct get");
                        total[1] += start.elapsed();
                        assert_eq!(last.sequence, sequence);
                    }
                    _ => {
                        let read =
                            raw_direct_batch(broker.client(), &stream, &subject, sequence + 1)
                                .await;
                        total[2] += start.elapsed();
                        assert_eq!(read, 0, "nothing follows the append");
                    }
                }
            }
        }
        let per_call = total.map(|t| t.as_secs_f64() / RYW_OPS as f64);
        for side in 0..3 {
            times[side].push(per_call[side]);
            ratios[side].push(per_call[side] / per_call[1]);
        }
    }
    let measured = start.elapsed();
    println!();
    println!(
        "(2) read your writes on NATS: {ROUNDS} rounds of {RYW_OPS} appends, each followed by \
         three reads (rotating order), measured {:.1} s",
        measured.as_secs_f64()
    );
    println!(
        "{:<66} {:>11} {:>14} {:>12} {:>10}",
        "call", "time/call", "requests/call", "ratio (med)", "min-max"
    );
    let labels = [
        "latest_version right after an own append",
        "raw direct get of the subject's last message (baseline)",
        "raw batched direct get after the append, fresh inbox",
    ];
    for side in 0..3 {
        let (lo, hi) = ratios[side]
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
        println!(
            "{:<66} {:>11} {:>14} {:>12.2} {:>10}",
            labels[side],
            show(median(times[side].clone())),
            format!("{:.2}", requests[side] as f64 / n as f64),
            median(ratios[side].clone()),
            format!("{lo:.2}-{hi:.2}")
        );
    }
    println!(
        "target: latest_version ≈ 1 round trip (ratio ≈ 1 against the direct get): {:.2}",
        median(ratios[0].clone())
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let total = Instant::now();
    let server = NatsServer::start();
    let broker = server.broker().await;
    println!(
        "environment: nats-server {} (single node, file storage, 127.0.0.1), async-nats 0.51, \
         {} CPUs, {ROUNDS} rounds",
        broker.server_version(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    println!(
        "histories: all but the last {TAIL} events in commits of {BATCH}, the last {TAIL} in \
         commits of 1; snapshot {TAIL} events before the tip, saved with its stream position"
    );

    let memory = MemoryBroker::new();
    let writer = EventStore::open(Runtime::system(memory.clone()), StoreConfig::new("load"))
        .await
        .expect("store");
    let reader = EventStore::open(Runtime::system(memory), StoreConfig::new("load"))
        .await
        .expect("store");
    load_curve("memory broker", &writer, &reader, None).await;

    let writer = EventStore::open(Runtime::system(broker.clone()), StoreConfig::new("load"))
        .await
        .expect("store");
    let reader = EventStore::open(Runtime::system(broker.clone()), StoreConfig::new("load"))
        .await
        .expect("store");
    load_curve("NATS", &writer, &reader, Some(&server)).await;
    raw_floor(&broker, &reader).await;
    // What the records weigh: the first commit of the 1,000-event actor holds 100 events, its
    // last one 1.
    let stream = reader.names().events_stream();
    let subject = reader.names().event_subject("load-1000-plain").expect("id");
    let first = broker
        .next(&stream, &subject, 1, ReadFrom::AnyReplica)
        .await
        .expect("read")
        .expect("stored");
    let last = broker
        .last(&stream, &subject, ReadFrom::AnyReplica)
        .await
        .expect("read")
        .expect("stored");
    println!(
        "record sizes: a commit of {BATCH} events {} bytes, of 1 event {} bytes",
        first.payload.len(),
        last.payload.len()
    );

    read_your_writes(&server, &broker).await;
    println!();
    println!("total {:.1} s", total.elapsed().as_secs_f64());
}
