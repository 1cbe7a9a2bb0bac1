//! aether in one screen, on the embedded memory broker (no server needed): a typed aggregate,
//! commands (one refused), an idempotent retry, an event of an older schema upcast on replay,
//! the plain store underneath (a conflict, replay) and a bus subscription.
//!
//! Run with `cargo run --example quickstart`.

use aether::actor::CommandContext;
use aether::store::EVENT_STORED;
use aether::{
    ActorConfig, ActorHost, Aggregate, AppendError, BusConfig, CommandError, DomainEvent, EventBus,
    EventStore, EventStored, ExpectedVersion, Filter, MemoryBroker, NewEvent, Runtime, SingleNode,
    StoreConfig, Upcasters,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The state: what the events add up to.
#[derive(Default, Serialize, Deserialize)]
struct Account {
    owner: Option<String>,
    balance: i64,
}

/// The events: a serde enum, one variant per stored event type.
#[derive(Debug, Serialize, Deserialize)]
enum AccountEvent {
    Opened { owner: String },
    Deposited { amount: i64 },
    Withdrawn { amount: i64 },
}

impl DomainEvent for AccountEvent {
    /// `Deposited` was first stored as a bare number; since version 2 it is `{"amount": n}`.
    fn schema_version(event_type: &str) -> u32 {
        if event_type == "Deposited" { 2 } else { 1 }
    }
}

#[derive(Serialize, Deserialize)]
enum AccountCommand {
    Open { owner: String },
    Deposit(i64),
    Withdraw(i64),
}

impl Aggregate for Account {
    const NAME: &'static str = "account";
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Rejection = String;

    fn handle(
        &self,
        _: &CommandContext<'_>,
        command: &AccountCommand,
    ) -> Result<Vec<AccountEvent>, String> {
        match command {
            AccountCommand::Open { .. } if self.owner.is_some() => Err("already open".into()),
            AccountCommand::Open { owner } => Ok(vec![AccountEvent::Opened {
                owner: owner.clone(),
            }]),
            _ if self.owner.is_none() => Err("not open".into()),
            AccountCommand::Deposit(amount) => {
                Ok(vec![AccountEvent::Deposited { amount: *amount }])
            }
            AccountCommand::Withdraw(amount) if *amount > self.balance => {
                Err(format!("balance {} cannot cover {amount}", self.balance))
            }
            AccountCommand::Withdraw(amount) => {
                Ok(vec![AccountEvent::Withdrawn { amount: *amount }])
            }
        }
    }

    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Opened { owner } => self.owner = Some(owner.clone()),
            AccountEvent::Deposited { amount } => self.balance += amount,
            AccountEvent::Withdrawn { amount } => self.balance -= amount,
        }
    }

    fn upcasters() -> Upcasters {
        Upcasters::new().event("Deposited", 1, |amount| json!({ "amount": amount }))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rt = Runtime::system(MemoryBroker::new());
    let bus = EventBus::new(&rt, BusConfig::new());
    let mut notifications = bus.subscribe("bank", Filter::all().event_types([EVENT_STORED]))?;
    let store = EventStore::open(rt.clone(), StoreConfig::new("bank"))
        .await?
        .with_bus(bus);
    let host = ActorHost::<Account, _>::new(
        store.clone(),
        SingleNode(rt.node_id().clone()),
        ActorConfig::new(),
    );

    // 1. Commands: decided on the actor's state, stored at the next versions.
    let owner = "ada".to_owned();
    host.execute("account-42", &AccountCommand::Open { owner })
        .await?;
    let deposited = host
        .execute("account-42", &AccountCommand::Deposit(100))
        .await?;
    println!(
        "opened account-42 and deposited 100 -> version {}",
        deposited.version
    );

    // 2. A refusal is a typed answer, and stores nothing.
    match host
        .execute("account-42", &AccountCommand::Withdraw(500))
        .await
    {
        Err(CommandError::Rejected(why)) => println!("refused: {why}"),
        other => return Err(format!("expected a refusal, got {other:?}").into()),
    }

    // 3. An idempotent retry: the same key, the first outcome, nothing run twice.
    let withdraw = AccountCommand::Withdraw(30);
    let first = host
        .execute_keyed("account-42", &withdraw, "atm-7731")
        .await?;
    let retry = host
        .execute_keyed("account-42", &withdraw, "atm-7731")
        .await?;
    println!(
        "withdrew 30 under key atm-7731 at version {}; the retry was deduplicated: {} (version {})",
        first.version, retry.deduplicated, retry.version
    );

    // 4. An event as last year's build stored it (schema version 1, a bare number) is
    //    upcast on replay.
    store
        .append(
            "account-42",
            ExpectedVersion::Exact(3),
            vec![NewEvent::new("Deposited", json!(5)).with_schema_version(1)],
        )
        .await?;
    let state = host.state("account-42").await?;
    println!(
        "an old Deposited(5) was upcast on replay -> balance {} at version {}",
        state.state.balance, state.version
    );

    // 5. Underneath, the plain store: a writer with a stale view is refused, and told the
    //    actual version; replay gives every event as stored.
    match store
        .append(
            "account-42",
            ExpectedVersion::Exact(1),
            vec![NewEvent::new("Withdrawn", json!({ "amount": 1 }))],
        )
        .await
    {
        Err(AppendError::Conflict(conflict)) => println!("conflict: {conflict}"),
        other => return Err(format!("expected a conflict, got {other:?}").into()),
    }
    let events = store.events("account-42", 1).await?;
    let kinds: Vec<String> = events
        .iter()
        .map(|e| {
            format!(
                "v{} {} (schema {})",
                e.version, e.event_type, e.schema_version
            )
        })
        .collect();
    println!("stored: {}", kinds.join(", "));

    // 6. The bus told us about every stored event.
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
