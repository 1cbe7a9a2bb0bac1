//! Commit codec and replay cost without a server: how fast commits decode, and how much the
//! store's replay (decode + checks) costs over reading the raw records from the memory broker.
//!
//! `cargo bench --bench codec`. Figures are rates measured in this run (best of 5); the ratio
//! compares the store's replay with the raw read measured in the same run.

use std::time::Duration;

use aether::broker::Broker;
use aether::codec::{Commit, decode_commit, encode_commit};
use aether::{
    Event, EventStore, ExpectedVersion, MemoryBroker, Metadata, NewEvent, Runtime, StoreConfig,
};
use serde_json::json;

const EVENTS: usize = 10_000;

fn best_rate<F: FnMut() -> usize>(mut f: F) -> f64 {
    (0..5)
        .map(|_| {
            #[allow(clippy::disallowed_methods)] // benchmarks measure real time
            let start = std::time::Instant::now();
            let n = f();
            n as f64 / start.elapsed().max(Duration::from_nanos(1)).as_secs_f64()
        })
        .fold(0.0, f64::max)
}

fn main() {
    let mut metadata = Metadata::new();
    metadata.set_correlation_id("corr-1");
    let records: Vec<Vec<u8>> = (0..EVENTS as u64)
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
        .collect();
    let decode = best_rate(|| {
        records
            .iter()
            .map(|r| decode_commit(r).unwrap().events.len())
            .sum()
    });
    println!(
        "decode_commit: {decode:>12.0} commits/s ({:.2} µs each)",
        1e6 / decode
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let broker = MemoryBroker::new();
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
        let subject = format!(
            "aether.ev.bench.{}",
            aether::codec::encode_actor_id("acc-1").unwrap()
        );
        let mut raw = 0.0f64;
        let mut ours = 0.0f64;
        for _ in 0..5 {
            #[allow(clippy::disallowed_methods)]
            let start = std::time::Instant::now();
            let n = broker
                .read("AETHER_EV_bench", &subject, 1)
                .await
                .unwrap()
                .len();
            raw = raw.max(n as f64 / start.elapsed().as_secs_f64());
            #[allow(clippy::disallowed_methods)]
            let start = std::time::Instant::now();
            let n = store.events("acc-1", 1).await.unwrap().len();
            ours = ours.max(n as f64 / start.elapsed().as_secs_f64());
        }
        println!("memory broker read: {raw:>12.0} records/s");
        println!(
            "store replay:       {ours:>12.0} events/s  (ratio {:.2} of the raw read)",
            ours / raw
        );
    });
}
