//! aether on NATS against raw async-nats, measured in the same run on a local nats-server.
//!
//! Run: `cargo bench --features nats --bench nats` (starts its own nats-server, found like the
//! tests: `AETHER_NATS_SERVER`, `.tools/nats/bin/nats-server`, or `PATH`).
//!
//! (a) sequential appends to one actor vs raw publish with expected-last-subject-sequence;
//! (b) appends over 1,000 actors at concurrency 64 vs raw publishes at the same concurrency;
//! (c) replay of a 10,000-event actor vs a raw ordered consumer;
//! (d) `latest_version` vs one raw direct get (one round trip);
//! (e) replay of many 10-event actors (loading on activation, the common case) vs the best raw
//!     async-nats way to read one short subject (a batched direct get, and an ordered consumer
//!     that is deleted afterwards; the faster of the two is the baseline);
//! (f) a projection catching up over a whole namespace of 20,000 commits vs a raw ordered
//!     consumer over the same events (`aether.ev.<namespace>.>`);
//! (g) typed replay vs untyped replay of a 10,000-event actor, on this nats-server and on the
//!     memory broker: the same `events` read, folded by decoding each event into the
//!     aggregate's `DomainEvent` enum (what the actor host does) vs by reading the JSON fields
//!     (what an untyped fold does). The baseline here is the untyped fold, not raw async-nats.
//!
//! `AETHER_BENCH=a,c,e` runs only the named comparisons (default: all).
//!
//! Each comparison runs both sides back to back in every round; the ratio printed is the median
//! over rounds of (aether rate / raw rate in that round), so a noisy neighbour in one round
//! hurts both sides of that round and an outlier round does not decide the result. Ratios are
//! aether / raw (higher is better, 1.0 = parity).
//!
//! Why not criterion (which `benches/codec.rs` and `benches/cluster.rs` use): the result here is
//! the paired ratio against raw async-nats measured back to back in the same round on the same
//! server, with the median taken over rounds. Criterion measures each benchmark on its own and
//! compares a run only with a saved earlier baseline of the same benchmark, so it cannot print
//! these per-round ratios.
#![allow(clippy::disallowed_methods)] // a benchmark reads the clock

#[path = "../tests/support/nats_server.rs"]
#[allow(dead_code)]
mod nats_server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use aether::broker::async_nats::jetstream::{self, consumer};
use aether::broker::{Broker, Headers, ReadFrom};
use aether::codec::encode_actor_id;
use aether::{EventStore, ExpectedVersion, NewEvent, Runtime, StoreConfig};
use bytes::Bytes;
use futures::StreamExt;
use nats_server::NatsServer;

const ROUNDS: usize = 7;

/// Whether comparison `name` was asked for (`AETHER_BENCH`, default all).
fn selected(name: &str) -> bool {
    std::env::var("AETHER_BENCH").map_or(true, |list| list.split(',').any(|n| n.trim() == name))
}

/// Reads every message of `subject` with batched direct gets (server 2.11+, no consumer): one
/// request per page of up to 1,000 messages, answered by the messages and an end-of-batch
/// status. Returns how many messages were read.
async fn raw_direct_batch(
    client: &aether::broker::async_nats::Client,
    stream: &str,
    subject: &str,
) -> usize {
    let mut count = 0;
    let mut from = 1u64;
    loop {
        let inbox = client.new_inbox();
        let mut replies = client.subscribe(inbox.clone()).await.expect("subscribe");
        let request = serde_json::json!({ "seq": from, "next_by_subj": subject, "batch": 1000 });
        client
            .publish_with_reply(
                format!("$JS.API.DIRECT.GET.{stream}"),
                inbox,
                Bytes::from(request.to_string()),
            )
            .await
            .expect("request");
        let mut pending = 0u64;
        while let Some(m) = replies.next().await {
            match m.status.map(|s| s.as_u16()) {
                None => {
                    count += 1;
                    let header = |name: &str| {
                        m.headers
                            .as_ref()
                            .and_then(|h| h.get(name))
                            .and_then(|v| v.as_str().parse::<u64>().ok())
                    };
                    from = header("Nats-Sequence").expect("sequence") + 1;
                }
                Some(204) => {
                    pending = m
                        .headers
                        .as_ref()
                        .and_then(|h| h.get("Nats-Num-Pending"))
                        .and_then(|v| v.as_str().parse().ok())
                        .unwrap_or(0);
                    break;
                }
                Some(404) => break,
                Some(other) => panic!("direct get answered {other}"),
            }
        }
        if pending == 0 {
            return count;
        }
    }
}

/// Reads every message of `subject` with an ordered consumer, deleted afterwards.
async fn raw_ordered(handle: &jetstream::stream::Stream, subject: &str) -> usize {
    let ordered = handle
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: subject.to_owned(),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: 1 },
            ..Default::default()
        })
        .await
        .expect("consumer");
    let name = ordered.cached_info().name.clone();
    let mut count = 0;
    if ordered.cached_info().num_pending > 0 {
        let mut messages = ordered.messages().await.expect("messages");
        while let Some(m) = messages.next().await {
            let m = m.expect("message");
            count += 1;
            if m.info().expect("info").pending == 0 {
                break;
            }
        }
    }
    let _ = handle.delete_consumer(&name).await;
    count
}

fn event(n: u64) -> NewEvent {
    NewEvent::new(
        "Deposited",
        serde_json::json!({ "account": "acc-1", "amount": n, "currency": "EUR" }),
    )
}

fn header_map(headers: &Headers) -> aether::broker::async_nats::HeaderMap {
    let mut map = aether::broker::async_nats::HeaderMap::new();
    for (k, v) in headers {
        map.insert(k.as_str(), v.as_str());
    }
    map
}

/// Rate in operations per second.
fn rate(ops: usize, elapsed: Duration) -> f64 {
    ops as f64 / elapsed.as_secs_f64()
}

/// One comparison: per-round rates of aether and of the raw baseline, measured back to back in
/// the same round so that machine noise hits both alike.
struct Comparison {
    name: &'static str,
    unit: &'static str,
    ours: Vec<f64>,
    raw: Vec<f64>,
    target: f64,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

impl Comparison {
    /// The median over rounds of aether's rate divided by the baseline's rate in that round.
    fn ratio(&self) -> f64 {
        median(
            self.ours
                .iter()
                .zip(&self.raw)
                .map(|(o, r)| o / r)
                .collect(),
        )
    }
}

/// One raw JetStream publish with the commit's headers, a message id and the expected last
/// subject sequence; returns the new sequence.
async fn raw_publish_one(
    js: &jetstream::Context,
    subject: &str,
    headers: &Headers,
    payload: &Bytes,
    id: String,
    last: u64,
) -> u64 {
    let publish = jetstream::message::PublishMessage::build()
        .payload(payload.clone())
        .headers(header_map(headers))
        .message_id(id)
        .expected_last_subject_sequence(last);
    js.send_publish(subject.to_owned(), publish)
        .await
        .expect("raw publish")
        .await
        .expect("raw ack")
        .sequence
}

async fn raw_publish_sequence(
    js: &jetstream::Context,
    subject: &str,
    headers: &Headers,
    payload: &Bytes,
    ops: usize,
    tag: &str,
) -> Duration {
    let mut last = 0u64;
    let start = Instant::now();
    for i in 0..ops {
        last = raw_publish_one(js, subject, headers, payload, format!("{tag}-{i}"), last).await;
    }
    start.elapsed()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let server = NatsServer::start();
    let broker = server.broker().await;
    let js = broker.jetstream().clone();
    let store = EventStore::open(Runtime::system(broker.clone()), StoreConfig::new("bench"))
        .await
        .expect("store");
    let stream = "AETHER_EV_bench";
    let subject_of = |actor: &str| format!("aether.ev.bench.{}", encode_actor_id(actor).unwrap());
    println!(
        "nats-server {} on 127.0.0.1, aether vs raw async-nats 0.51, {ROUNDS} rounds: median rates, median of per-round ratios",
        broker.server_version()
    );

    // A real commit, to give the raw side the same payload and headers.
    store
        .append("sample", ExpectedVersion::NoStream, vec![event(0)])
        .await
        .expect("sample");
    let sample = broker
        .last(stream, &subject_of("sample"), ReadFrom::AnyReplica)
        .await
        .expect("last")
        .expect("sample stored");
    let (payload, headers) = (sample.payload.clone(), sample.headers.clone());

    let mut results = Vec::new();

    if selected("a") {
        // (a) sequential appends to one actor. Latency-bound, so the two sides alternate in chunks
        // of 100 within a round: both see the same moments of machine noise.
        let ops = 2_000;
        let chunk = 100;
        let (mut ours, mut raw) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            let actor = format!("seq-{round}");
            let raw_subject = subject_of(&format!("raw-seq-{round}"));
            let (mut version, mut last) = (0u64, 0u64);
            let (mut ours_time, mut raw_time) = (Duration::ZERO, Duration::ZERO);
            for c in 0..ops / chunk {
                let start = Instant::now();
                for i in 0..chunk {
                    let outcome = store
                        .append(
                            &actor,
                            ExpectedVersion::Exact(version),
                            vec![event((c * chunk + i) as u64)],
                        )
                        .await
                        .expect("append");
                    version = outcome.last_version();
                }
                ours_time += start.elapsed();
                let start = Instant::now();
                for i in 0..chunk {
                    let id = format!("raw-seq-{round}-{}", c * chunk + i);
                    last = raw_publish_one(&js, &raw_subject, &headers, &payload, id, last).await;
                }
                raw_time += start.elapsed();
            }
            ours.push(rate(ops, ours_time));
            raw.push(rate(ops, raw_time));
        }
        results.push(Comparison {
            name: "(a) sequential appends, one actor",
            unit: "appends/s",
            ours,
            raw,
            target: 0.9,
        });
    }
    if selected("b") {
        // (b) 1,000 actors, concurrency 64.
        let actors = 1_000;
        let concurrency = 64;
        let per_actor = 5;
        let ops = actors * per_actor;
        let (mut ours, mut raw) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            let start = Instant::now();
            let tasks: Vec<_> = (0..concurrency)
                .map(|t| {
                    let store = store.clone();
                    tokio::spawn(async move {
                        for a in (t..actors).step_by(concurrency) {
                            let actor = format!("many-{round}-{a}");
                            for v in 0..per_actor as u64 {
                                store
                                    .append(&actor, ExpectedVersion::Exact(v), vec![event(v)])
                                    .await
                                    .expect("append");
                            }
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.expect("task");
            }
            ours.push(rate(ops, start.elapsed()));

            let start = Instant::now();
            let headers = Arc::new(headers.clone());
            let tasks: Vec<_> = (0..concurrency)
                .map(|t| {
                    let (js, headers, payload) = (js.clone(), headers.clone(), payload.clone());
                    tokio::spawn(async move {
                        for a in (t..actors).step_by(concurrency) {
                            let subject = format!("aether.ev.bench.raw-many-{round}-{a}");
                            raw_publish_sequence(
                                &js, &subject, &headers, &payload, per_actor, &subject,
                            )
                            .await;
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.expect("task");
            }
            raw.push(rate(ops, start.elapsed()));
        }
        results.push(Comparison {
            name: "(b) 1,000 actors, concurrency 64",
            unit: "appends/s",
            ours,
            raw,
            target: 0.8,
        });
    }
    if selected("c") || selected("d") {
        // (c) replay of a 10,000-event actor (10,000 commits).
        let replay_events = 10_000;
        let mut outcomes = Vec::new();
        for i in 0..replay_events as u64 {
            outcomes.push(
                store
                    .append("replay", ExpectedVersion::Exact(i), vec![event(i)])
                    .await
                    .expect("append"),
            );
        }
        let handle = js.get_stream(stream).await.expect("stream");
        let replay_subject = subject_of("replay");
        let (mut ours, mut raw, mut read_only) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..if selected("c") { ROUNDS } else { 0 } {
            let start = Instant::now();
            let events = store.events("replay", 1).await.expect("replay");
            assert_eq!(events.len(), replay_events);
            ours.push(rate(replay_events, start.elapsed()));

            let start = Instant::now();
            let ordered = handle
                .create_consumer(consumer::pull::OrderedConfig {
                    filter_subject: replay_subject.clone(),
                    deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: 1 },
                    ..Default::default()
                })
                .await
                .expect("consumer");
            let mut messages = ordered.messages().await.expect("messages");
            let mut count = 0;
            while let Some(m) = messages.next().await {
                let m = m.expect("message");
                count += 1;
                if m.info().expect("info").pending == 0 {
                    break;
                }
            }
            assert_eq!(count, replay_events);
            let ordered = rate(replay_events, start.elapsed());
            let start = Instant::now();
            let count = raw_direct_batch(broker.client(), stream, &replay_subject).await;
            assert_eq!(count, replay_events);
            let direct = rate(replay_events, start.elapsed());
            println!(
                "(c) raw baselines, events/s: ordered consumer {ordered:.0}, batched direct get {direct:.0}"
            );
            raw.push(ordered.max(direct));

            // Where the time goes: the broker's read alone (transport plus conversion, no decoding).
            let start = Instant::now();
            let records = broker.read(stream, &replay_subject, 1).await.expect("read");
            assert_eq!(records.len(), replay_events);
            read_only.push(rate(replay_events, start.elapsed()));
        }
        if selected("c") {
            results.push(Comparison {
                name: "(c') NatsBroker::read alone (no decoding)",
                unit: "events/s",
                ours: read_only,
                raw: raw.clone(),
                target: 0.9,
            });
            results.push(Comparison {
                name: "(c) replay of a 10,000-event actor",
                unit: "events/s",
                ours,
                raw,
                target: 0.9,
            });
        }

        if selected("d") {
            // (d) latest_version vs one raw direct get.
            let ops = 2_000;
            let (mut ours, mut raw) = (Vec::new(), Vec::new());
            for round in 0..2 * ROUNDS {
                // Alternate which side goes first.
                for side in [round % 2, 1 - round % 2] {
                    let start = Instant::now();
                    for _ in 0..ops {
                        if side == 0 {
                            assert_eq!(
                                store.latest_version("replay").await.expect("tip"),
                                replay_events as u64
                            );
                        } else {
                            handle
                                .direct_get_last_for_subject(replay_subject.clone())
                                .await
                                .expect("direct get");
                        }
                    }
                    let r = rate(ops, start.elapsed());
                    if side == 0 {
                        ours.push(r);
                    } else {
                        raw.push(r);
                    }
                }
            }
            results.push(Comparison {
                name: "(d) latest_version vs one direct get",
                unit: "calls/s",
                ours,
                raw,
                target: 0.9,
            });
        }
    }
    if selected("e") {
        results.push(short_replays(&store, &broker, stream, &subject_of).await);
    }
    if selected("f") {
        results.push(projection_catch_up(&broker).await);
    }
    if selected("g") {
        results.push(typed_replay("(g) typed vs untyped replay, NATS", &store).await);
        let memory = EventStore::open(
            Runtime::system(aether::MemoryBroker::new()),
            StoreConfig::new("bench"),
        )
        .await
        .expect("memory store");
        results.push(typed_replay("(g) typed vs untyped replay, memory", &memory).await);
    }
    println!();
    println!(
        "{:<40} {:>14} {:>14} {:>7} {:>7}",
        "comparison", "aether", "raw", "ratio", "target"
    );
    let mut missed = Vec::new();
    for r in &results {
        println!(
            "{:<40} {:>10.0} {:<3} {:>10.0} {:<3} {:>7.2} {:>7.2}",
            r.name,
            median(r.ours.clone()),
            "",
            median(r.raw.clone()),
            "",
            r.ratio(),
            r.target
        );
        if r.ratio() < r.target {
            missed.push(r.name);
        }
    }
    println!(
        "(units: {})",
        results
            .iter()
            .map(|r| r.unit)
            .collect::<Vec<_>>()
            .join(", ")
    );
    if missed.is_empty() {
        println!("all targets met");
    } else {
        println!("targets missed: {}", missed.join("; "));
    }
}

/// (e) Loading short actors: 300 actors of 10 events (10 commits each), each replayed once per
/// round by aether and by both raw readers.
async fn short_replays(
    store: &EventStore<aether::NatsBroker>,
    broker: &aether::NatsBroker,
    stream: &str,
    subject_of: &impl Fn(&str) -> String,
) -> Comparison {
    // `AETHER_BENCH_SHORT_ACTORS` shrinks the set (a read path that leaks a consumer per read
    // runs into the server's 1,000-consumer limit after a few rounds of 300).
    let actors: usize = std::env::var("AETHER_BENCH_SHORT_ACTORS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let events = 10u64;
    for a in 0..actors {
        for v in 0..events {
            store
                .append(
                    &format!("short-{a}"),
                    ExpectedVersion::Exact(v),
                    vec![event(v)],
                )
                .await
                .expect("append");
        }
    }
    let handle = broker.jetstream().get_stream(stream).await.expect("stream");
    let (mut ours, mut raw) = (Vec::new(), Vec::new());
    let (mut direct_rates, mut ordered_rates) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let start = Instant::now();
        for a in 0..actors {
            let read = store
                .events(&format!("short-{a}"), 1)
                .await
                .expect("replay");
            assert_eq!(read.len() as u64, events);
        }
        ours.push(rate(actors, start.elapsed()));
        let start = Instant::now();
        for a in 0..actors {
            let n =
                raw_direct_batch(broker.client(), stream, &subject_of(&format!("short-{a}"))).await;
            assert_eq!(n as u64, events);
        }
        let direct = rate(actors, start.elapsed());
        let start = Instant::now();
        for a in 0..actors {
            let n = raw_ordered(&handle, &subject_of(&format!("short-{a}"))).await;
            assert_eq!(n as u64, events);
        }
        let ordered = rate(actors, start.elapsed());
        direct_rates.push(direct);
        ordered_rates.push(ordered);
        raw.push(direct.max(ordered));
    }
    println!(
        "(e) raw baselines, actors/s: batched direct get {:.0}, ordered consumer {:.0}",
        median(direct_rates),
        median(ordered_rates)
    );
    Comparison {
        name: "(e) replay of 10-event actors",
        unit: "actors/s",
        ours,
        raw,
        target: 0.9,
    }
}

/// (f) A projection catching up over a namespace of 20,000 commits (1,000 actors, 20 each),
/// with a handler that only counts, vs a raw ordered consumer reading the same records.
async fn projection_catch_up(broker: &aether::NatsBroker) -> Comparison {
    use aether::projection::Projector;
    let namespace = "benchproj";
    let store = EventStore::open(Runtime::system(broker.clone()), StoreConfig::new(namespace))
        .await
        .expect("store");
    let (actors, each) = (1_000usize, 20u64);
    let writes = futures::stream::iter(0..actors).for_each_concurrent(64, |a| {
        let store = store.clone();
        async move {
            for v in 0..each {
                store
                    .append(&format!("p-{a}"), ExpectedVersion::Exact(v), vec![event(v)])
                    .await
                    .expect("append");
            }
        }
    });
    writes.await;
    let commits = actors * each as usize;
    let handle = broker
        .jetstream()
        .get_stream(format!("AETHER_EV_{namespace}"))
        .await
        .expect("stream");
    let (mut ours, mut raw) = (Vec::new(), Vec::new());
    // Twice the rounds, alternating which side goes first: a single pass takes about 0.3 s,
    // short enough for scheduling noise on a small machine to swing one round by ±30 %.
    for round in 0..2 * ROUNDS {
        let projector = Projector::open::<String>(store.clone(), &format!("catch-up-{round}"))
            .await
            .expect("projector")
            .page_max(1_000);
        let ours_pass = async {
            let start = Instant::now();
            let mut seen = 0usize;
            let handled = projector
                .catch_up(|page| {
                    seen += page.commits.len();
                    std::future::ready(Ok::<(), String>(()))
                })
                .await
                .expect("catch up");
            assert_eq!((handled, seen), (commits, commits));
            rate(commits, start.elapsed())
        };
        let raw_pass = async {
            let start = Instant::now();
            let n = raw_ordered(&handle, &format!("aether.ev.{namespace}.>")).await;
            assert_eq!(n, commits);
            rate(commits, start.elapsed())
        };
        let (a, r) = if round % 2 == 0 {
            let a = ours_pass.await;
            (a, raw_pass.await)
        } else {
            let r = raw_pass.await;
            (ours_pass.await, r)
        };
        ours.push(a);
        raw.push(r);
        if std::env::var_os("AETHER_BENCH_ROUNDS").is_some() {
            eprintln!("(f) round {round}: aether {a:.0}, raw {r:.0}");
        }
    }
    Comparison {
        name: "(f) projection catch-up, 20,000 commits",
        unit: "commits/s",
        ours,
        raw,
        target: 0.9,
    }
}

/// The bench events as an aggregate declares them.
#[derive(serde::Deserialize, serde::Serialize)]
enum BenchEvent {
    Deposited {
        account: String,
        amount: u64,
        currency: String,
    },
}

impl aether::DomainEvent for BenchEvent {}

/// (g): replay of a 10,000-event actor folded typed (decode into `BenchEvent`, as the actor host
/// does, through the aggregate's upcasters) vs untyped (JSON field access), alternating which
/// goes first.
async fn typed_replay<B: Broker>(name: &'static str, store: &EventStore<B>) -> Comparison {
    let events = 10_000u64;
    for i in 0..events {
        store
            .append("typed", ExpectedVersion::Exact(i), vec![event(i)])
            .await
            .expect("append");
    }
    let expected: u64 = (0..events).sum();
    let upcasters = aether::Upcasters::new();
    let (mut ours, mut raw) = (Vec::new(), Vec::new());
    for round in 0..2 * ROUNDS {
        for side in [round % 2, 1 - round % 2] {
            let start = Instant::now();
            let stored = store.events("typed", 1).await.expect("replay");
            let total: u64 = if side == 0 {
                stored
                    .iter()
                    .map(
                        |e| match upcasters.decode::<BenchEvent>(e).expect("decodes") {
                            BenchEvent::Deposited { amount, .. } => amount,
                        },
                    )
                    .sum()
            } else {
                stored
                    .iter()
                    .map(|e| match e.event_type.as_str() {
                        "Deposited" => e.data["amount"].as_u64().unwrap_or(0),
                        _ => 0,
                    })
                    .sum()
            };
            assert_eq!(total, expected);
            let r = rate(events as usize, start.elapsed());
            if side == 0 {
                ours.push(r);
            } else {
                raw.push(r);
            }
        }
    }
    Comparison {
        name,
        unit: "events/s",
        ours,
        raw,
        target: 0.9,
    }
}
