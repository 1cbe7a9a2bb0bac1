//! Cross-process race on a single nats-server: 5 OS processes × 10 tasks append to one actor at
//! the same expected version; exactly one append succeeds in total.

mod support;

use aether::{EventStore, ExpectedVersion, NewEvent, Runtime, StoreConfig};
use support::nats_server::NatsServer;
use support::race;

const TEST: &str = "five_processes_racing_at_one_version_store_exactly_one_commit_on_a_single_node";

#[test]
fn five_processes_racing_at_one_version_store_exactly_one_commit_on_a_single_node() {
    if race::is_worker() {
        race::worker_main();
        return;
    }
    let server = NatsServer::start();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let store = runtime.block_on(async {
        let store = EventStore::open(
            Runtime::system(server.broker().await),
            StoreConfig::new("race1"),
        )
        .await
        .expect("store");
        store
            .append(
                "contested",
                ExpectedVersion::NoStream,
                vec![NewEvent::new("Opened", serde_json::json!({}))],
            )
            .await
            .expect("first event");
        store
    });
    let totals = race::run_race(TEST, &server.url(), "race1", 1, "contested", 1);
    println!("single-node race: {totals:?}");
    assert_eq!(totals.successes, 1, "exactly one winner: {totals:?}");
    assert_eq!(
        totals.successes + totals.conflicts + totals.other,
        (race::PROCESSES * race::TASKS) as u64
    );
    let events = runtime
        .block_on(store.events("contested", 1))
        .expect("events");
    assert_eq!(
        events.iter().map(|e| e.version).collect::<Vec<_>>(),
        [1, 2],
        "one commit on top of version 1"
    );
    assert_eq!(events[1].event_type, "Raced");
}
