//! aether in one screen, on the embedded memory broker (no server needed):
//! appends, a conflict, replay, a snapshot and a bus subscription.
//!
//! Run with `cargo run --example quickstart`.

use aether::store::EVENT_STORED;
use aether::{
    AppendError, BusConfig, EventBus, EventStore, EventStored, ExpectedVersion, Filter,
    MemoryBroker, NewEvent, Runtime, Snapshot, StoreConfig,
};
use serde_json::json;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rt = Runtime::system(MemoryBroker::new());
    let bus = EventBus::new(&rt, BusConfig::new());
    let mut notifications = bus.subscribe("bank", Filter::all().event_types([EVENT_STORED]))?;
    let store = EventStore::open(rt, StoreConfig::new("bank"))
        .await?
        .with_bus(bus);

    // 1. Append two events atomically to a new actor.
    let opened = store
        .append(
            "account-42",
            ExpectedVersion::NoStream,
            vec![
                NewEvent::new("AccountOpened", json!({ "owner": "ada" }))
                    .with_metadata("user_id", "ada"),
                NewEvent::new("Deposited", json!({ "amount": 100 })),
            ],
        )
        .await?;
    println!(
        "appended {} events to account-42 -> versions {}..={}",
        opened.events.len(),
        opened.first_version(),
        opened.last_version()
    );

    // 2. A writer with a stale view is refused, and told the actual version.
    let stale = store
        .append(
            "account-42",
            ExpectedVersion::Exact(1),
            vec![NewEvent::new("Withdrawn", json!({ "amount": 30 }))],
        )
        .await;
    match stale {
        Err(AppendError::Conflict(conflict)) => println!("conflict: {conflict}"),
        other => return Err(format!("expected a conflict, got {other:?}").into()),
    }
    store
        .append(
            "account-42",
            ExpectedVersion::Exact(2),
            vec![NewEvent::new("Withdrawn", json!({ "amount": 30 }))],
        )
        .await?;

    // 3. Replay: fold the events into a balance.
    let events = store.events("account-42", 1).await?;
    let balance: i64 = events
        .iter()
        .map(|e| match e.event_type.as_str() {
            "Deposited" => e.data["amount"].as_i64().unwrap_or(0),
            "Withdrawn" => -e.data["amount"].as_i64().unwrap_or(0),
            _ => 0,
        })
        .sum();
    let kinds: Vec<String> = events
        .iter()
        .map(|e| format!("v{} {}", e.version, e.event_type))
        .collect();
    println!(
        "replayed {} events: {} -> balance {balance}",
        events.len(),
        kinds.join(", ")
    );

    // 4. Snapshot the folded state, then read it back.
    let snapshot = Snapshot::new("account-42", 3, json!({ "balance": balance }));
    store.save_snapshot(&snapshot).await?;
    let latest = store
        .latest_snapshot("account-42")
        .await?
        .expect("just saved");
    println!(
        "snapshot at version {} with state {}",
        latest.version, latest.state
    );

    // 5. The bus told us about every stored event.
    let mut seen = Vec::new();
    while let Some(Ok(note)) = notifications.try_recv() {
        let stored = EventStored::from_event(&note).expect("an EventStored notification");
        seen.push(format!("{}@v{}", stored.event_type, stored.version));
    }
    println!(
        "bus delivered {} EventStored notifications: {}",
        seen.len(),
        seen.join(", ")
    );
    Ok(())
}
