//! Typed aggregates, generic over the broker: three generations of one event replayed as the
//! current type, snapshots of an older state version lifted or skipped, events that do not
//! decode stopping the load with a typed error, keyed commands running once however often they
//! are retried, the owner's errors arriving typed across `send`, and two aggregate types in one
//! namespace.

use aether::actor::{CommandContext, Ownership};
use aether::schema::DecodeCause;
use aether::{
    ActorConfig, ActorHost, AppendError, Broker, CommandError, DomainEvent, EventStore,
    ExpectedVersion, NewEvent, NodeId, Router, Runtime, SingleNode, Snapshot, StoreConfig,
    Upcasters,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// A wallet. Its state was `{"balance": n}` at state version 1; it is `{"cents": n}` now.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Wallet {
    cents: i64,
}

/// Three generations of the credit event:
/// 1. `Deposited`, data a bare number;
/// 2. `Deposited`, data `{"amount": n}`;
/// 3. `Credited`, data `{"amount": n, "currency": c}` (this build's).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum WalletEvent {
    Credited { amount: i64, currency: String },
    Debited { amount: i64 },
}

impl DomainEvent for WalletEvent {
    fn schema_version(event_type: &str) -> u32 {
        // "Deposited" (versions 1 and 2) is lifted and renamed to "Credited" on replay.
        if event_type == "Credited" { 3 } else { 1 }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum WalletCommand {
    Credit(i64),
    Debit(i64),
}

impl aether::Aggregate for Wallet {
    const NAME: &'static str = "wallet";
    const STATE_VERSION: u32 = 2;
    type Command = WalletCommand;
    type Event = WalletEvent;
    type Rejection = String;

    fn handle(
        &self,
        _: &CommandContext<'_>,
        command: &WalletCommand,
    ) -> Result<Vec<WalletEvent>, String> {
        match *command {
            WalletCommand::Credit(amount) => Ok(vec![WalletEvent::Credited {
                amount,
                currency: "EUR".into(),
            }]),
            WalletCommand::Debit(amount) if amount > self.cents => {
                Err(format!("{} cannot cover {amount}", self.cents))
            }
            WalletCommand::Debit(amount) => Ok(vec![WalletEvent::Debited { amount }]),
        }
    }

    fn apply(&mut self, event: &WalletEvent) {
        match event {
            WalletEvent::Credited { amount, .. } => self.cents += amount,
            WalletEvent::Debited { amount } => self.cents -= amount,
        }
    }

    fn upcasters() -> Upcasters {
        Upcasters::new()
            .event("Deposited", 1, |amount| json!({ "amount": amount }))
            .renamed("Deposited", 2, "Credited", |mut data| {
                data["currency"] = json!("EUR");
                data
            })
            .snapshot(1, |mut state| json!({ "cents": state["balance"].take() }))
    }
}

/// A second aggregate type of the same namespace.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Ledger {
    lines: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum LedgerEvent {
    Line { text: String },
}

impl DomainEvent for LedgerEvent {}

impl aether::Aggregate for Ledger {
    const NAME: &'static str = "ledger";
    type Command = String;
    type Event = LedgerEvent;
    type Rejection = String;

    fn handle(&self, _: &CommandContext<'_>, text: &String) -> Result<Vec<LedgerEvent>, String> {
        Ok(vec![LedgerEvent::Line { text: text.clone() }])
    }

    fn apply(&mut self, _: &LedgerEvent) {
        self.lines += 1;
    }
}

fn node(id: &str) -> NodeId {
    NodeId::new(id).unwrap()
}

async fn store_on<B: Broker>(broker: &B, ns: &str, id: &str) -> EventStore<B> {
    EventStore::open(
        Runtime::system(broker.clone()).with_node(node(id)),
        StoreConfig::new(ns),
    )
    .await
    .expect("store opens")
}

/// Every actor is owned by one node.
#[derive(Clone)]
struct OwnedBy(NodeId);

impl Router for OwnedBy {
    fn owner_of(&self, _: &str) -> Option<NodeId> {
        Some(self.0.clone())
    }

    fn ownership(&self, _: &str) -> Option<Ownership> {
        Some(Ownership::new(self.0.clone(), None))
    }
}

fn raw(event_type: &str, schema: u32, data: serde_json::Value) -> NewEvent {
    NewEvent::new(event_type, data).with_schema_version(schema)
}

pub async fn three_generations_of_an_event_replay_as_the_current_type<B: Broker>(
    broker: B,
    ns: String,
) {
    let store = store_on(&broker, &ns, "n1").await;
    // As three builds of the application stored them, over the years.
    store
        .append(
            "w",
            ExpectedVersion::NoStream,
            vec![
                raw("Deposited", 1, json!(100)),
                raw("Deposited", 2, json!({ "amount": 20 })),
                raw("Credited", 3, json!({ "amount": 3, "currency": "EUR" })),
            ],
        )
        .await
        .unwrap();
    let host = ActorHost::<Wallet, _>::new(store.clone(), SingleNode(node("n1")), {
        let mut config = ActorConfig::new();
        config.snapshot_every = 0;
        config
    });
    let state = host.state("w").await.unwrap();
    assert_eq!((state.state.cents, state.version), (123, 3));
    // This build writes the third generation, and folds all of them.
    let done = host.execute("w", &WalletCommand::Debit(123)).await.unwrap();
    assert_eq!(done.version, 4);
    assert_eq!(
        done.decoded::<Wallet>().unwrap(),
        [WalletEvent::Debited { amount: 123 }]
    );
    host.execute("w", &WalletCommand::Credit(7)).await.unwrap();
    let stored = store.events("w", 1).await.unwrap();
    let generations: Vec<(&str, u32)> = stored
        .iter()
        .map(|e| (e.event_type.as_str(), e.schema_version))
        .collect();
    assert_eq!(
        generations,
        [
            ("Deposited", 1),
            ("Deposited", 2),
            ("Credited", 3),
            ("Debited", 1),
            ("Credited", 3)
        ],
        "stored events keep the form they were written in: upcasting happens on read"
    );
    let upcasters = <Wallet as aether::Aggregate>::upcasters();
    let typed: Vec<WalletEvent> = stored
        .iter()
        .map(|e| upcasters.decode(e).unwrap())
        .collect();
    let credit = |amount| WalletEvent::Credited {
        amount,
        currency: "EUR".into(),
    };
    assert_eq!(
        typed,
        [
            credit(100),
            credit(20),
            credit(3),
            WalletEvent::Debited { amount: 123 },
            credit(7)
        ]
    );
}

pub async fn snapshots_of_an_older_state_version_are_lifted_or_skipped<B: Broker>(
    broker: B,
    ns: String,
) {
    let store = store_on(&broker, &ns, "n1").await;
    for actor in ["lifted", "newer", "broken"] {
        store
            .append(
                actor,
                ExpectedVersion::NoStream,
                vec![raw(
                    "Credited",
                    3,
                    json!({ "amount": 5, "currency": "EUR" }),
                )],
            )
            .await
            .unwrap();
    }
    // A state-version-1 snapshot that disagrees with the events on purpose: a load that uses
    // it (lifted to version 2) shows its figure, a load that skips it shows the events'.
    store
        .save_snapshot(&Snapshot::new("lifted", 1, json!({ "balance": 1000 })))
        .await
        .unwrap();
    store
        .save_snapshot(&Snapshot::new("newer", 1, json!({ "cents": 1000 })).with_schema_version(9))
        .await
        .unwrap();
    store
        .save_snapshot(
            &Snapshot::new("broken", 1, json!({ "cents": "many" })).with_schema_version(2),
        )
        .await
        .unwrap();
    let host = ActorHost::<Wallet, _>::new(store, SingleNode(node("n1")), ActorConfig::new());
    let cents = |actor: &'static str| {
        let host = host.clone();
        async move { host.state(actor).await.unwrap().state.cents }
    };
    assert_eq!(
        cents("lifted").await,
        1000,
        "the snapshot was lifted and used"
    );
    assert_eq!(
        cents("newer").await,
        5,
        "a newer state version is replayed past"
    );
    assert_eq!(
        cents("broken").await,
        5,
        "an undecodable state is replayed past"
    );
}

pub async fn an_event_that_does_not_decode_stops_the_load_with_a_typed_error<B: Broker>(
    broker: B,
    ns: String,
) {
    let store = store_on(&broker, &ns, "n1").await;
    let cases = [
        ("shape", raw("Credited", 3, json!({ "amount": "ten" }))),
        ("unknown", raw("Refunded", 1, json!({ "amount": 1 }))),
        ("newer", raw("Debited", 2, json!({ "amount": 1 }))),
        ("gap", raw("Credited", 1, json!(1))),
    ];
    for (actor, event) in cases.clone() {
        store
            .append(
                actor,
                ExpectedVersion::NoStream,
                vec![
                    raw("Credited", 3, json!({ "amount": 5, "currency": "EUR" })),
                    event,
                ],
            )
            .await
            .unwrap();
    }
    let host = ActorHost::<Wallet, _>::new(store, SingleNode(node("n1")), ActorConfig::new());
    for (actor, event) in cases {
        match host.execute(actor, &WalletCommand::Credit(1)).await {
            Err(CommandError::Replay(e)) => {
                assert_eq!(
                    (e.actor_id.as_str(), e.version, e.event_type.as_str()),
                    (actor, 2, event.event_type.as_str()),
                    "{e}"
                );
                match (actor, &e.cause) {
                    ("shape" | "unknown", DecodeCause::Data(_)) => {}
                    (
                        "newer",
                        DecodeCause::NewerSchema {
                            stored: 2,
                            current: 1,
                        },
                    ) => {}
                    (
                        "gap",
                        DecodeCause::NoUpcaster {
                            from: 1,
                            current: 3,
                            ..
                        },
                    ) => {}
                    other => panic!("unexpected cause {other:?}"),
                }
            }
            other => panic!("{actor}: expected a replay error, got {other:?}"),
        }
    }
}

/// An aggregate deciding a value JSON cannot hold: NaN encodes as `null`, which does not
/// decode as a number.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Gauge;

#[derive(Debug, Serialize, Deserialize)]
pub enum GaugeEvent {
    Measured(f64),
}

impl DomainEvent for GaugeEvent {}

impl aether::Aggregate for Gauge {
    const NAME: &'static str = "gauge";
    type Command = ();
    type Event = GaugeEvent;
    type Rejection = String;

    fn handle(&self, _: &CommandContext<'_>, _: &()) -> Result<Vec<GaugeEvent>, String> {
        Ok(vec![GaugeEvent::Measured(f64::NAN)])
    }

    fn apply(&mut self, _: &GaugeEvent) {}
}

pub async fn an_event_that_would_not_read_back_is_refused_before_it_is_stored<B: Broker>(
    broker: B,
    ns: String,
) {
    let store = store_on(&broker, &ns, "n1").await;
    let host =
        ActorHost::<Gauge, _>::new(store.clone(), SingleNode(node("n1")), ActorConfig::new());
    match host.execute("t", &()).await {
        Err(CommandError::Encode(e)) => assert!(e.0.contains("does not decode"), "{e}"),
        other => panic!("expected an encode error, got {other:?}"),
    }
    assert_eq!(
        store.latest_version("t").await.unwrap(),
        0,
        "nothing stored"
    );
}

pub async fn a_keyed_command_runs_once_however_often_it_is_retried<B: Broker>(
    broker: B,
    ns: String,
) {
    let store = store_on(&broker, &ns, "n1").await;
    let config = || {
        let mut config = ActorConfig::new();
        config.snapshot_every = 3;
        config.recent_commits = 4;
        config.idle_timeout = std::time::Duration::ZERO;
        config
    };
    let host = ActorHost::<Wallet, _>::new(store.clone(), SingleNode(node("n1")), config());
    let first = host
        .execute_keyed("w", &WalletCommand::Credit(10), "pay-1")
        .await
        .unwrap();
    assert!(!first.deduplicated);
    assert_eq!(
        first.events[0].id, "pay-1",
        "a keyed command's event ids come from its key"
    );
    assert_eq!(first.events[0].commit_id, "pay-1");
    // Retried: the same outcome, nothing decided again.
    let again = host
        .execute_keyed("w", &WalletCommand::Credit(10), "pay-1")
        .await
        .unwrap();
    assert!(again.deduplicated);
    assert_eq!(
        (again.version, &again.events),
        (first.version, &first.events)
    );
    // Unkeyed commands in between, a passivation, a snapshot, a fresh host (a restart).
    for _ in 0..3 {
        host.execute("w", &WalletCommand::Credit(1)).await.unwrap();
    }
    host.passivate_idle();
    let restarted = ActorHost::<Wallet, _>::new(store.clone(), SingleNode(node("n1")), config());
    let after_restart = restarted
        .execute_keyed("w", &WalletCommand::Credit(10), "pay-1")
        .await
        .unwrap();
    assert!(after_restart.deduplicated);
    assert_eq!(after_restart.events, first.events);
    // Past the host's window of recent commits, the store still knows the key (the broker's
    // deduplication window): the retry is answered with the first outcome, not run again.
    for n in 0..6 {
        restarted
            .execute_keyed("w", &WalletCommand::Credit(1), &format!("later-{n}"))
            .await
            .unwrap();
    }
    let late = restarted
        .execute_keyed("w", &WalletCommand::Credit(10), "pay-1")
        .await
        .unwrap();
    assert!(late.deduplicated);
    assert_eq!(late.events, first.events);
    let state = restarted.state("w").await.unwrap();
    assert_eq!(
        (state.state.cents, state.version),
        (10 + 3 + 6, 10),
        "pay-1 ran once"
    );
    // A key names one commit in the namespace: on another actor it is refused.
    match restarted
        .execute_keyed("other", &WalletCommand::Credit(1), "pay-1")
        .await
    {
        Err(CommandError::Append(AppendError::InvalidEvent(_))) => {}
        other => panic!("a key reused on another actor must be refused, got {other:?}"),
    }
    match restarted
        .execute_keyed("w", &WalletCommand::Credit(1), "no spaces")
        .await
    {
        Err(CommandError::InvalidKey(key)) => assert_eq!(key, "no spaces"),
        other => panic!("expected InvalidKey, got {other:?}"),
    }
    assert_eq!(store.latest_version("other").await.unwrap(), 0);
}

pub async fn send_returns_the_owners_errors_typed<B: Broker>(broker: B, ns: String) {
    let owner = {
        let mut config = ActorConfig::new();
        config.conflict_retry_max = 0;
        ActorHost::<Wallet, _, _, _>::new(
            store_on(&broker, &ns, "owner").await,
            OwnedBy(node("owner")),
            config,
        )
    };
    owner.serve().await.unwrap();
    let sender = ActorHost::<Wallet, _, _, _>::new(
        store_on(&broker, &ns, "sender").await,
        OwnedBy(node("owner")),
        ActorConfig::new(),
    );
    // A rejection, as on `execute`.
    match sender.send("w", &WalletCommand::Debit(1)).await {
        Err(CommandError::Rejected(why)) => assert_eq!(why, "0 cannot cover 1"),
        other => panic!("expected a rejection, got {other:?}"),
    }
    // A conflict: the owner's state goes stale under a foreign write, and it may not retry.
    let done = sender.send("w", &WalletCommand::Credit(5)).await.unwrap();
    assert_eq!(done.node_id.as_str(), "owner");
    owner
        .store()
        .append(
            "w",
            ExpectedVersion::Exact(1),
            vec![raw(
                "Credited",
                3,
                json!({ "amount": 1, "currency": "EUR" }),
            )],
        )
        .await
        .unwrap();
    match sender.send("w", &WalletCommand::Credit(5)).await {
        Err(CommandError::Append(AppendError::Conflict(c))) => {
            assert_eq!((c.actor.as_str(), c.actual), ("w", 2));
            assert_eq!(c.expected, ExpectedVersion::Exact(1));
        }
        other => panic!("expected a typed conflict from the owner, got {other:?}"),
    }
    // A replay error, with the damaged event's coordinates.
    owner
        .store()
        .append(
            "bad",
            ExpectedVersion::NoStream,
            vec![raw("Credited", 3, json!({ "amount": [] }))],
        )
        .await
        .unwrap();
    match sender.send("bad", &WalletCommand::Credit(5)).await {
        Err(CommandError::Replay(e)) => {
            assert_eq!((e.version, e.event_type.as_str()), (1, "Credited"))
        }
        other => panic!("expected a typed replay error from the owner, got {other:?}"),
    }
    // A keyed send, retried: run once on the owner.
    let first = sender
        .send_keyed("k", &WalletCommand::Credit(2), "send-1")
        .await
        .unwrap();
    let again = sender
        .send_keyed("k", &WalletCommand::Credit(2), "send-1")
        .await
        .unwrap();
    assert!(!first.deduplicated && again.deduplicated);
    assert_eq!(again.events, first.events);
    assert_eq!(owner.store().latest_version("k").await.unwrap(), 1);
    owner.stop_serving().await;
}

pub async fn two_aggregate_types_share_a_namespace<B: Broker>(broker: B, ns: String) {
    let owner_store = store_on(&broker, &ns, "owner").await;
    let wallets = ActorHost::<Wallet, _, _, _>::new(
        owner_store.clone(),
        OwnedBy(node("owner")),
        ActorConfig::new(),
    );
    let ledgers =
        ActorHost::<Ledger, _, _, _>::new(owner_store, OwnedBy(node("owner")), ActorConfig::new());
    wallets.serve().await.unwrap();
    ledgers.serve().await.unwrap();
    let sender_store = store_on(&broker, &ns, "sender").await;
    let to_wallets = ActorHost::<Wallet, _, _, _>::new(
        sender_store.clone(),
        OwnedBy(node("owner")),
        ActorConfig::new(),
    );
    let to_ledgers =
        ActorHost::<Ledger, _, _, _>::new(sender_store, OwnedBy(node("owner")), ActorConfig::new());
    // Many commands of both types, concurrently: each is answered by a host of its type.
    let mut tasks = Vec::new();
    for n in 0..40 {
        let to_wallets = to_wallets.clone();
        let to_ledgers = to_ledgers.clone();
        tasks.push(tokio::spawn(async move {
            let w = to_wallets
                .send(&format!("w{}", n % 4), &WalletCommand::Credit(1))
                .await
                .expect("wallet command");
            assert_eq!(w.events[0].event_type, "Credited");
            let l = to_ledgers
                .send(&format!("l{}", n % 4), &format!("line {n}"))
                .await
                .expect("ledger command");
            assert_eq!(l.events[0].event_type, "Line");
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(wallets.state("w0").await.unwrap().state.cents, 10);
    assert_eq!(ledgers.state("l0").await.unwrap().state.lines, 10);
    // Actor ids are per namespace: a ledger command for a wallet's actor id is refused on
    // replay, never folded from the wallet's events.
    match to_ledgers.send("w0", &"x".to_string()).await {
        Err(CommandError::Replay(e)) => {
            assert!(
                matches!(&e.cause, DecodeCause::OtherAggregate { found, .. } if found == "wallet"),
                "{e}"
            );
        }
        other => panic!("expected the wallet's events refused, got {other:?}"),
    }
    // A node that hosts no ledgers is not sent ledger commands by mistake: nobody answers,
    // the sender re-routes and gives up, and nothing is stored.
    ledgers.stop_serving().await;
    let mut config = ActorConfig::new();
    config.route_retry_max = 1;
    config.route_retry_delay = std::time::Duration::from_millis(1);
    let impatient = ActorHost::<Ledger, _, _, _>::new(
        store_on(&broker, &ns, "sender").await,
        OwnedBy(node("owner")),
        config,
    );
    match impatient.send("l-none", &"x".to_string()).await {
        Err(CommandError::Unroutable { .. }) => {}
        other => panic!("expected Unroutable, got {other:?}"),
    }
    assert_eq!(wallets.store().latest_version("l-none").await.unwrap(), 0);
    wallets.stop_serving().await;
}

pub async fn an_event_stream_yields_what_events_returns_a_page_at_a_time<B: Broker>(
    broker: B,
    ns: String,
) {
    use futures::StreamExt;
    let store = store_on(&broker, &ns, "n1").await;
    // Several pages of commits of one to three events, around another actor's.
    let mut version = 0;
    for n in 0..700u64 {
        let size = 1 + (n % 3) as usize;
        let events = (0..size)
            .map(|i| {
                raw(
                    "Credited",
                    3,
                    json!({ "amount": n, "currency": i.to_string() }),
                )
            })
            .collect();
        store
            .append("long", ExpectedVersion::Exact(version), events)
            .await
            .unwrap();
        version += size as u64;
        if n % 10 == 0 {
            store
                .append(
                    "other",
                    ExpectedVersion::Any,
                    vec![raw("Debited", 1, json!({ "amount": 1 }))],
                )
                .await
                .unwrap();
        }
    }
    assert!(version as usize > 3 * aether::store::STREAM_PAGE);
    for from in [1, 2, 500, version, version + 1] {
        let streamed: Vec<_> = store
            .events_stream("long", from)
            .map(|e| e.expect("no damage"))
            .collect()
            .await;
        assert_eq!(
            streamed,
            store.events("long", from).await.unwrap(),
            "from {from}"
        );
    }
    assert_eq!(store.events_stream("nobody", 1).count().await, 0);
    match std::pin::pin!(store.events_stream("", 1)).next().await {
        Some(Err(aether::ReadError::InvalidName(_))) => {}
        other => panic!("an invalid actor id is a typed error, got {other:?}"),
    }
    // Damage ends the stream with the error replay reports, after the events before it.
    let sequence = super::store::plant_raw_record(&broker, &ns, "long", b"not a commit").await;
    store
        .append(
            "long",
            ExpectedVersion::Exact(version),
            vec![raw("Debited", 1, json!({ "amount": 1 }))],
        )
        .await
        .unwrap();
    let items: Vec<_> = store.events_stream("long", 1).collect().await;
    let (last, events) = items.split_last().unwrap();
    assert_eq!(events.len() as u64, version);
    assert!(events.iter().all(Result::is_ok));
    match last {
        Err(aether::ReadError::Damaged(e)) => assert_eq!(e.sequence, sequence),
        other => panic!("expected the damaged record, got {other:?}"),
    }
}
