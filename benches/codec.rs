//! Commit codec and replay cost without a server: how fast commits decode, and how much the
//! store's replay (decode + checks) costs over reading the raw records from the memory broker.
//!
//! `cargo bench --bench codec` (criterion; e.g. `-- --warm-up-time 1 --measurement-time 2` for a
//! quick run). Reported as time and throughput per element:
//! - `codec/decode_commit`: one commit record decoded (commits/s);
//! - `replay/memory_broker_read` and `replay/store_replay`: a 10,000-event actor read raw from the
//!   memory broker, and replayed by the store (events/s). Both are in one group, measured in the
//!   same run: the store's cost over the raw read is the ratio of their throughputs.

use std::hint::black_box;

use aether::broker::Broker;
use aether::codec::{Commit, decode_commit, encode_commit};
use aether::{
    Event, EventStore, ExpectedVersion, MemoryBroker, Metadata, NewEvent, Runtime, StoreConfig,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;

const EVENTS: usize = 10_000;

/// `EVENTS` encoded one-event commits of one actor.
fn records() -> Vec<Vec<u8>> {
    let mut metadata = Metadata::new();
    metadata.set_correlation_id("corr-1");
    (0..EVENTS as u64)
        .map(|i| {
            encode_commit(&Commit {
                commit_id: format!("commit-{i:08}"),
                actor_id: "acc-1".into(),
                events: vec![{
                    let mut e = Event::new(
                        format!("event-{i:08}"),
                        "Deposited",
                        "acc-1",
                        i + 1,
                        json!({ "account": "acc-1", "amount": i, "currency": "EUR" }),
                    );
                    e.metadata = metadata.clone();
                    e
                }],
            })
        })
        .collect()
}

fn decode(c: &mut Criterion) {
    let records = records();
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(1));
    group.bench_function("decode_commit", |b| {
        let mut next = 0;
        b.iter(|| {
            let record = &records[next % EVENTS];
            next += 1;
            decode_commit(black_box(record)).unwrap().events.len()
        })
    });
    group.finish();
}

fn replay(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let broker = MemoryBroker::new();
    let store = rt.block_on(async {
        let store = EventStore::open(Runtime::system(broker.clone()), StoreConfig::new("bench"))
            .await
            .unwrap();
        for i in 0..EVENTS as u64 {
            store
                .append(
                    "acc-1",
                    ExpectedVersion::Exact(i),
                    vec![NewEvent::new("Deposited", json!({ "amount": i }))],
                )
                .await
                .unwrap();
        }
        store
    });
    let subject = format!(
        "aether.ev.bench.{}",
        aether::codec::encode_actor_id("acc-1").unwrap()
    );

    let mut group = c.benchmark_group("replay");
    // One iteration reads 10,000 records: fewer, longer samples.
    group.sample_size(10);
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.bench_function("memory_broker_read", |b| {
        b.iter(|| {
            let records = rt
                .block_on(broker.read("AETHER_EV_bench", &subject, 1))
                .unwrap();
            assert_eq!(records.len(), EVENTS);
            records.len()
        })
    });
    group.bench_function("store_replay", |b| {
        b.iter(|| {
            let events = rt.block_on(store.events("acc-1", 1)).unwrap();
            assert_eq!(events.len(), EVENTS);
            events.len()
        })
    });
    group.finish();
}

criterion_group!(benches, decode, replay);
criterion_main!(benches);
