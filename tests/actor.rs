//! The actor runtime on the in-process broker: commands, conflicts, snapshots, passivation and
//! routing to the owner.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aether::actor::{AggregateTest, CommandContext, command_subject};
use aether::{
    ActorConfig, ActorHost, Aggregate, CommandError, DomainEvent, EventStore, ExpectedVersion,
    MemoryBroker, NewEvent, NodeId, Router, Runtime, SingleNode, StoreConfig,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Default, Debug, Serialize, Deserialize, PartialEq)]
struct Account {
    open: bool,
    balance: i64,
}

#[derive(Serialize, Deserialize)]
enum AccountCommand {
    Open,
    Deposit(i64),
    Withdraw(i64),
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
enum Refusal {
    NotOpen,
    AlreadyOpen,
    Insufficient { balance: i64 },
}

/// Stored as `Opened` with data `{}`, `Deposited` and `Withdrawn` with a bare amount.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum AccountEvent {
    Opened {},
    Deposited(i64),
    Withdrawn(i64),
}

impl DomainEvent for AccountEvent {}

impl Aggregate for Account {
    const NAME: &'static str = "account";
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Rejection = Refusal;

    fn handle(
        &self,
        _: &CommandContext<'_>,
        command: &AccountCommand,
    ) -> Result<Vec<AccountEvent>, Refusal> {
        match command {
            AccountCommand::Open if self.open => Err(Refusal::AlreadyOpen),
            AccountCommand::Open => Ok(vec![AccountEvent::Opened {}]),
            _ if !self.open => Err(Refusal::NotOpen),
            AccountCommand::Deposit(0) => Ok(vec![]),
            AccountCommand::Deposit(n) => Ok(vec![AccountEvent::Deposited(*n)]),
            AccountCommand::Withdraw(n) if *n > self.balance => Err(Refusal::Insufficient {
                balance: self.balance,
            }),
            AccountCommand::Withdraw(n) => Ok(vec![AccountEvent::Withdrawn(*n)]),
        }
    }

    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Opened {} => self.open = true,
            AccountEvent::Deposited(n) => self.balance += n,
            AccountEvent::Withdrawn(n) => self.balance -= n,
        }
    }
}

fn nid(id: &str) -> NodeId {
    NodeId::new(id).unwrap()
}

/// The bank store as node `node` sees it.
async fn store(broker: &MemoryBroker, node: &str) -> EventStore<MemoryBroker> {
    EventStore::open(
        Runtime::system(broker.clone()).with_node(nid(node)),
        StoreConfig::new("bank"),
    )
    .await
    .unwrap()
}

/// A host on node `node` that owns every actor.
async fn single(
    broker: &MemoryBroker,
    node: &str,
    config: ActorConfig,
) -> ActorHost<Account, MemoryBroker> {
    ActorHost::new(store(broker, node).await, SingleNode(nid(node)), config)
}

#[test]
fn given_when_then_decides_without_a_store() {
    let opened =
        AggregateTest::<Account>::given([AccountEvent::Opened {}, AccountEvent::Deposited(10)]);
    assert_eq!(opened.version(), 2);
    assert_eq!(opened.state().balance, 10);
    assert_eq!(
        opened.when(&AccountCommand::Withdraw(11)).unwrap_err(),
        Refusal::Insufficient { balance: 10 }
    );
    assert_eq!(
        opened.when(&AccountCommand::Withdraw(10)).unwrap(),
        [AccountEvent::Withdrawn(10)]
    );
    assert_eq!(
        AggregateTest::<Account>::given([])
            .when(&AccountCommand::Deposit(1))
            .unwrap_err(),
        Refusal::NotOpen
    );
}

#[test]
fn then_expect_helpers_pass_on_what_was_decided() {
    let opened =
        AggregateTest::<Account>::given([AccountEvent::Opened {}, AccountEvent::Deposited(10)]);
    opened.then_expect_rejection(
        &AccountCommand::Withdraw(11),
        &Refusal::Insufficient { balance: 10 },
    );
    let decided = opened.when(&AccountCommand::Withdraw(10)).unwrap();
    opened.then_expect_events(&AccountCommand::Withdraw(10), &decided);
    opened.then_expect_event_types(&AccountCommand::Withdraw(10), &["Withdrawn"]);
}

#[test]
#[should_panic(expected = "decided event types differ")]
fn then_expect_event_types_fails_on_other_types() {
    AggregateTest::<Account>::given([AccountEvent::Opened {}])
        .then_expect_event_types(&AccountCommand::Deposit(1), &["Withdrawn"]);
}

#[test]
#[should_panic(expected = "decided events differ")]
fn then_expect_events_fails_on_other_data() {
    let opened = AggregateTest::<Account>::given([AccountEvent::Opened {}]);
    let mut decided = opened.when(&AccountCommand::Deposit(1)).unwrap();
    decided[0] = AccountEvent::Deposited(2);
    opened.then_expect_events(&AccountCommand::Deposit(1), &decided);
}

#[test]
#[should_panic(expected = "but rejected")]
fn then_expect_events_fails_on_a_rejection() {
    AggregateTest::<Account>::given([])
        .then_expect_event_types(&AccountCommand::Deposit(1), &["Deposited"]);
}

#[test]
#[should_panic(expected = "but decided")]
fn then_expect_rejection_fails_on_acceptance() {
    AggregateTest::<Account>::given([AccountEvent::Opened {}])
        .then_expect_rejection(&AccountCommand::Deposit(1), &Refusal::NotOpen);
}

#[tokio::test]
async fn commands_append_events_and_rejections_store_nothing() {
    let broker = MemoryBroker::new();
    let host = single(&broker, "n1", ActorConfig::new()).await;
    assert_eq!(
        host.execute("acc", &AccountCommand::Open)
            .await
            .unwrap()
            .version,
        1
    );
    assert_eq!(
        host.execute("acc", &AccountCommand::Deposit(50))
            .await
            .unwrap()
            .version,
        2
    );
    let unchanged = host
        .execute("acc", &AccountCommand::Deposit(0))
        .await
        .unwrap();
    assert_eq!((unchanged.version, unchanged.events.len()), (2, 0));
    match host.execute("acc", &AccountCommand::Withdraw(80)).await {
        Err(CommandError::Rejected(Refusal::Insufficient { balance: 50 })) => {}
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(host.store().latest_version("acc").await.unwrap(), 2);
    let done = host
        .execute("acc", &AccountCommand::Withdraw(20))
        .await
        .unwrap();
    assert_eq!(done.version, 3);
    assert_eq!(done.events[0].event_type, "Withdrawn");
}

#[tokio::test]
async fn a_foreign_write_is_absorbed_by_reloading_on_conflict() {
    let broker = MemoryBroker::new();
    let host = single(&broker, "n1", ActorConfig::new()).await;
    host.execute("acc", &AccountCommand::Open).await.unwrap();
    // Another writer (a stale owner, another process) appends behind the host's back.
    store(&broker, "n1")
        .await
        .append(
            "acc",
            ExpectedVersion::Exact(1),
            vec![NewEvent::new("Deposited", json!(7))],
        )
        .await
        .unwrap();
    // The host's cached version (1) is stale: the append conflicts, it reloads and retries, and
    // the decision is made on the true state (balance 7, so withdrawing 5 is allowed).
    let done = host
        .execute("acc", &AccountCommand::Withdraw(5))
        .await
        .unwrap();
    assert_eq!(done.version, 3);
    let events = host.store().events("acc", 1).await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
}

#[tokio::test]
async fn snapshots_are_taken_every_n_events_and_used_on_load() {
    let broker = MemoryBroker::new();
    let mut config = ActorConfig::new();
    config.snapshot_every = 3;
    let host = single(&broker, "n1", config.clone()).await;
    host.execute("acc", &AccountCommand::Open).await.unwrap();
    for _ in 0..6 {
        host.execute("acc", &AccountCommand::Deposit(10))
            .await
            .unwrap();
    }
    let snapshot = host.store().latest_snapshot("acc").await.unwrap().unwrap();
    assert_eq!(snapshot.version, 6);
    assert_eq!(snapshot.state, json!({"open": true, "balance": 50}));
    // A fresh host (a restart) loads snapshot + the one later event.
    let fresh = single(&broker, "n1", config).await;
    let rejected = fresh.execute("acc", &AccountCommand::Withdraw(61)).await;
    assert!(matches!(
        rejected,
        Err(CommandError::Rejected(Refusal::Insufficient {
            balance: 60
        }))
    ));
}

#[tokio::test(start_paused = true)]
async fn idle_actors_are_passivated_and_reloaded_on_demand() {
    let broker = MemoryBroker::new();
    let mut config = ActorConfig::new();
    config.idle_timeout = Duration::from_secs(60);
    config.actors_max = 2;
    let host = single(&broker, "n1", config).await;
    for actor in ["a", "b", "c"] {
        host.execute(actor, &AccountCommand::Open).await.unwrap();
    }
    host.passivate_idle();
    assert_eq!(host.active_actors(), 2, "bounded by actors_max");
    tokio::time::advance(Duration::from_secs(61)).await;
    host.passivate_idle();
    assert_eq!(host.active_actors(), 0, "idle actors dropped");
    let again = host
        .execute("a", &AccountCommand::Deposit(5))
        .await
        .unwrap();
    assert_eq!(again.version, 2, "reloaded from the store");
}

/// A router with a fixed table, changeable by the test.
#[derive(Clone, Default)]
struct Table(Arc<Mutex<BTreeMap<String, String>>>);

impl Table {
    fn set(&self, actor: &str, node: &str) {
        self.0.lock().unwrap().insert(actor.into(), node.into());
    }
}

impl Router for Table {
    fn owner_of(&self, actor_id: &str) -> Option<NodeId> {
        self.0.lock().unwrap().get(actor_id).map(|n| nid(n))
    }
}

#[tokio::test]
async fn commands_are_routed_to_the_owner_over_the_broker() {
    let broker = MemoryBroker::new();
    let view = Table::default();
    view.set("x", "node-b");
    view.set("y", "node-a");
    let a = ActorHost::<Account, _, _, _>::new(
        store(&broker, "node-a").await,
        view.clone(),
        ActorConfig::new(),
    );
    let b = ActorHost::<Account, _, _, _>::new(
        store(&broker, "node-b").await,
        view.clone(),
        ActorConfig::new(),
    );
    a.serve().await.unwrap();
    b.serve().await.unwrap();
    let remote = a.send("x", &AccountCommand::Open).await.unwrap();
    assert_eq!((remote.node_id.as_str(), remote.version), ("node-b", 1));
    let local = a.send("y", &AccountCommand::Open).await.unwrap();
    assert_eq!(local.node_id.as_str(), "node-a");
    match a.send("x", &AccountCommand::Withdraw(1)).await {
        Err(CommandError::Rejected(Refusal::Insufficient { balance: 0 })) => {}
        other => panic!("the remote rejection comes back typed, got {other:?}"),
    }
    assert!(matches!(
        a.execute("x", &AccountCommand::Deposit(1)).await,
        Err(CommandError::NotOwner { .. })
    ));
    assert_eq!(a.active_actors() + b.active_actors(), 2);
}

/// Node a's view flips from b to a after the first lookup; node b already thinks a owns it.
struct Moving {
    calls: AtomicU32,
}

impl Router for Moving {
    fn owner_of(&self, _actor_id: &str) -> Option<NodeId> {
        let first = self.calls.fetch_add(1, Ordering::SeqCst) == 0;
        Some(nid(if first { "node-b" } else { "node-a" }))
    }
}

#[tokio::test]
async fn a_command_sent_to_a_former_owner_is_rerouted() {
    let broker = MemoryBroker::new();
    let a = ActorHost::<Account, _, _, _>::new(
        store(&broker, "node-a").await,
        Moving {
            calls: AtomicU32::new(0),
        },
        ActorConfig::new(),
    );
    let b = ActorHost::<Account, _, _, _>::new(
        store(&broker, "node-b").await,
        SingleNode(nid("node-a")),
        ActorConfig::new(),
    );
    b.serve().await.unwrap();
    let done = a.send("x", &AccountCommand::Open).await.unwrap();
    assert_eq!(
        done.node_id.as_str(),
        "node-a",
        "b refused (not owner), a re-routed to itself"
    );
    assert_eq!(b.active_actors(), 0);
}

#[tokio::test]
async fn an_unreachable_owner_makes_the_command_unroutable() {
    let broker = MemoryBroker::new();
    let view = Table::default();
    view.set("x", "node-gone");
    let mut config = ActorConfig::new();
    config.route_retry_max = 2;
    config.route_retry_delay = Duration::from_millis(1);
    let a = ActorHost::<Account, _, _, _>::new(store(&broker, "node-a").await, view, config);
    match a.send("x", &AccountCommand::Open).await {
        Err(CommandError::Unroutable { attempts: 3, .. }) => {}
        other => panic!("expected Unroutable after 3 attempts, got {other:?}"),
    }
    assert_eq!(
        command_subject("bank", &nid("node-gone"), Account::NAME),
        "aether.cmd.bank.node-gone.account"
    );
}

#[tokio::test]
async fn a_stopped_host_no_longer_answers_so_a_restarted_node_executes_each_command_once() {
    let broker = MemoryBroker::new();
    let view = Table::default();
    view.set("x", "node-b");
    let sender = ActorHost::<Account, _, _, _>::new(
        store(&broker, "node-a").await,
        view,
        ActorConfig::new(),
    );
    // The old incarnation of node-b: its (frozen) view says another node owns x.
    let old = ActorHost::<Account, _, _, _>::new(
        store(&broker, "node-b").await,
        SingleNode(nid("node-c")),
        ActorConfig::new(),
    );
    old.serve().await.unwrap();
    old.stop_serving().await;
    let new = ActorHost::<Account, _, _, _>::new(
        store(&broker, "node-b").await,
        SingleNode(nid("node-b")),
        ActorConfig::new(),
    );
    new.serve().await.unwrap();
    sender.send("x", &AccountCommand::Open).await.unwrap();
    let mut answered = 0;
    for _ in 0..20 {
        if sender.send("x", &AccountCommand::Deposit(1)).await.is_ok() {
            answered += 1;
        }
    }
    assert_eq!(answered, 20);
    // Every deposit was stored exactly once: no "not the owner" from the stopped incarnation
    // made the sender send a command again that the live one had executed.
    assert_eq!(new.store().latest_version("x").await.unwrap(), 1 + answered);

    // Dropping every handle of a host stops it serving too, even with commands in flight.
    drop(new);
    tokio::time::sleep(Duration::from_millis(10)).await;
    let mut config = ActorConfig::new();
    config.route_retry_max = 1;
    config.route_retry_delay = Duration::from_millis(1);
    let view = Table::default();
    view.set("x", "node-b");
    let impatient =
        ActorHost::<Account, _, _, _>::new(store(&broker, "node-a").await, view, config);
    assert!(matches!(
        impatient.send("x", &AccountCommand::Deposit(1)).await,
        Err(CommandError::Unroutable { .. })
    ));
}

/// Owner of every actor: node-b until node-b leaves, node-a afterwards (a cluster's view after
/// the leaving node's shards moved).
#[derive(Clone, Default)]
struct HandOver {
    left: Arc<std::sync::atomic::AtomicBool>,
}

impl Router for HandOver {
    fn owner_of(&self, _actor_id: &str) -> Option<NodeId> {
        let left = self.left.load(Ordering::SeqCst);
        Some(nid(if left { "node-a" } else { "node-b" }))
    }

    async fn leave(&self) {
        self.left.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_answers_every_command_the_node_was_sent() {
    let broker = MemoryBroker::new();
    let router = HandOver::default();
    let mut config = ActorConfig::new();
    config.route_retry_delay = Duration::from_millis(1);
    config.request_timeout = Duration::from_secs(3);
    let a =
        ActorHost::<Account, _, _, _>::new(store(&broker, "node-a").await, router.clone(), config);
    let mut config = ActorConfig::new();
    // One command at a time: the others wait in b's subscription when it leaves.
    config.inflight_max = 1;
    let b =
        ActorHost::<Account, _, _, _>::new(store(&broker, "node-b").await, router.clone(), config);
    b.serve().await.unwrap();
    let commands = 200;
    let sends: Vec<_> = (0..commands)
        .map(|i| {
            let a = a.clone();
            tokio::spawn(async move { a.send(&format!("x-{i}"), &AccountCommand::Open).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(5)).await;
    b.leave().await;
    let (mut on_a, mut on_b) = (0, 0);
    for send in sends {
        match send.await.unwrap() {
            Ok(done) if done.node_id.as_str() == "node-a" => on_a += 1,
            Ok(_) => on_b += 1,
            Err(e) => panic!("a command sent before the leave was not answered: {e}"),
        }
    }
    println!("answered by b before it left: {on_b}, re-routed to a: {on_a}");
    assert_eq!(on_a + on_b, commands);
    assert!(
        on_a > 0,
        "the leave happened while commands were queued at b"
    );
    for i in 0..commands {
        assert_eq!(
            a.store().latest_version(&format!("x-{i}")).await.unwrap(),
            1,
            "x-{i} opened exactly once"
        );
    }
}

#[tokio::test]
async fn a_reply_naming_another_command_is_never_taken_as_the_answer() {
    let broker = MemoryBroker::new();
    let view = Table::default();
    view.set("x", "node-b");
    let mut config = ActorConfig::new();
    config.route_retry_max = 0;
    let a = ActorHost::<Account, _, _, _>::new(store(&broker, "node-a").await, view, config);
    // A broken node-b that answers with the outcome of some other command.
    use aether::broker::{Broker, Headers};
    let mut inbox = broker
        .subscribe(&command_subject("bank", &nid("node-b"), Account::NAME))
        .await
        .unwrap();
    let responder = broker.clone();
    let forged = tokio::spawn(async move {
        for wrong in [
            json!({ "request_id": "someone-else", "actor_id": "x" }),
            json!({ "request_id": null, "actor_id": "y" }),
        ] {
            let request = inbox.next().await.unwrap();
            let sent: serde_json::Value = serde_json::from_slice(&request.payload).unwrap();
            let mut reply = wrong.clone();
            if reply["request_id"].is_null() {
                // The right request id, but another actor.
                reply["request_id"] = sent["request_id"].clone();
            }
            reply["answer"] = json!({ "Done": {
                "actor_id": reply["actor_id"], "version": 7, "events": [], "node_id": "node-b"
            }});
            responder
                .publish(
                    &request.reply.unwrap(),
                    Headers::new(),
                    serde_json::to_vec(&reply).unwrap().into(),
                )
                .await
                .unwrap();
        }
    });
    for _ in 0..2 {
        match a.send("x", &AccountCommand::Open).await {
            Err(CommandError::Timeout { owner }) => assert_eq!(owner.as_str(), "node-b"),
            other => panic!("a misdirected reply must not answer the command: {other:?}"),
        }
    }
    forged.await.unwrap();
}

#[tokio::test]
async fn the_host_reads_an_actors_state_and_version() {
    let broker = MemoryBroker::new();
    let host = single(&broker, "n1", ActorConfig::new()).await;
    let fresh = host.state("acc").await.unwrap();
    assert_eq!((fresh.state, fresh.version), (Account::default(), 0));
    host.execute("acc", &AccountCommand::Open).await.unwrap();
    host.execute("acc", &AccountCommand::Deposit(30))
        .await
        .unwrap();
    let read = host.state("acc").await.unwrap();
    assert_eq!(read.version, 2);
    assert_eq!(read.state.balance, 30);
    // A write from elsewhere is seen, and reading changes nothing.
    store(&broker, "n1")
        .await
        .append(
            "acc",
            ExpectedVersion::Exact(2),
            vec![NewEvent::new("Deposited", json!(12))],
        )
        .await
        .unwrap();
    let read = host.state("acc").await.unwrap();
    assert_eq!((read.version, read.state.balance), (3, 42));
    // Another node's host reads it too (loading, not activating).
    let other = single(&broker, "n2", ActorConfig::new()).await;
    assert_eq!(other.state("acc").await.unwrap().version, 3);
    assert_eq!(other.active_actors(), 0);
    assert_eq!(host.store().latest_version("acc").await.unwrap(), 3);
}
