//! What an operator sees: the metrics aether records move with the work done, and one trace id
//! joins a command's caller, its owner on another node and the events it stored.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use aether::actor::CommandContext;
use aether::cluster::{Cluster, ClusterConfig, NodeId};
use aether::telemetry;
use aether::trace::{self, TraceContext};
use aether::{
    ActorConfig, ActorHost, Aggregate, BusConfig, EventBus, EventStore, ExpectedVersion, Filter,
    MemoryBroker, NewEvent, Runtime, SharedRng, StoreConfig, SystemClock,
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Default, Serialize, Deserialize)]
struct Account {
    balance: i64,
}

#[derive(Serialize, Deserialize)]
enum AccountEvent {
    Moved { amount: i64 },
}

impl aether::DomainEvent for AccountEvent {
    /// `Moved` once stored a bare amount (version 1); it stores `{"amount": n}` since 2.
    fn schema_version(_: &str) -> u32 {
        2
    }
}

impl Aggregate for Account {
    const NAME: &'static str = "account";
    type Command = i64;
    type Event = AccountEvent;
    type Rejection = String;

    fn handle(&self, _: &CommandContext<'_>, amount: &i64) -> Result<Vec<AccountEvent>, String> {
        if self.balance + amount < 0 {
            return Err("insufficient funds".into());
        }
        Ok(vec![AccountEvent::Moved { amount: *amount }])
    }

    fn apply(&mut self, AccountEvent::Moved { amount }: &AccountEvent) {
        self.balance += amount;
    }

    fn upcasters() -> aether::Upcasters {
        aether::Upcasters::new().event("Moved", 1, |amount| json!({ "amount": amount }))
    }
}

type Node = Cluster<MemoryBroker, SystemClock>;
type Host = ActorHost<Account, MemoryBroker, SystemClock, Node>;

async fn node(broker: &MemoryBroker, id: &str, seed: u64) -> (Node, Host) {
    let rt = Runtime::new(
        broker.clone(),
        SystemClock::new(),
        SharedRng::from_seed(seed),
    )
    .with_node(NodeId::new(id).unwrap());
    let cluster = Cluster::start(rt.clone(), ClusterConfig::new())
        .await
        .unwrap();
    let store = EventStore::open(rt, StoreConfig::new("accounts"))
        .await
        .unwrap();
    let host = ActorHost::new(store, cluster.clone(), ActorConfig::new());
    host.serve().await.unwrap();
    (cluster, host)
}

async fn converge(nodes: &[&Node]) {
    for _ in 0..400 {
        let epochs: Vec<Option<u64>> = nodes.iter().map(|n| n.view().epoch()).collect();
        let members_ok = nodes.iter().all(|n| n.view().members.len() == nodes.len());
        if members_ok && epochs[0].is_some() && epochs.iter().all(|e| *e == epochs[0]) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("cluster did not converge");
}

/// A metric's name, labels and accumulated value.
type Seen = (String, Vec<(String, String)>, DebugValue);

/// What the recorder holds. `DebuggingRecorder`'s snapshots drain counters, histograms and
/// gauges, so this accumulates counters and histograms across snapshots and keeps each gauge's
/// latest value set.
struct Recorded {
    snapshotter: Snapshotter,
    seen: Vec<Seen>,
}

impl Recorded {
    fn new(snapshotter: Snapshotter) -> Self {
        Self {
            snapshotter,
            seen: Vec::new(),
        }
    }

    fn refresh(&mut self) {
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let name = key.key().name().to_owned();
            let labels: Vec<(String, String)> = key
                .key()
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            match self
                .seen
                .iter_mut()
                .find(|(n, l, _)| *n == name && *l == labels)
            {
                Some((_, _, old)) => match (old, value) {
                    (DebugValue::Counter(a), DebugValue::Counter(b)) => *a += b,
                    (DebugValue::Histogram(a), DebugValue::Histogram(b)) => a.extend(b),
                    // A snapshot swaps gauges to 0 as well: a 0 means "not set since".
                    (DebugValue::Gauge(_), DebugValue::Gauge(g)) if g.into_inner() == 0.0 => {}
                    (old, new) => *old = new,
                },
                None => self.seen.push((name, labels, value)),
            }
        }
    }

    fn matching<'a>(
        &'a mut self,
        name: &'a str,
        with: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a DebugValue> + 'a {
        self.refresh();
        self.seen.iter().filter_map(move |(n, labels, value)| {
            let all = with
                .iter()
                .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v));
            (n == name && all).then_some(value)
        })
    }

    /// Sum of a counter over the label sets that include every `(key, value)` of `with`.
    fn counter(&mut self, name: &str, with: &[(&str, &str)]) -> u64 {
        self.matching(name, with)
            .map(|value| match value {
                DebugValue::Counter(n) => *n,
                other => panic!("{name} is not a counter: {other:?}"),
            })
            .sum()
    }

    /// Samples recorded in a histogram.
    fn samples(&mut self, name: &str, with: &[(&str, &str)]) -> usize {
        self.matching(name, with)
            .map(|value| match value {
                DebugValue::Histogram(v) => v.len(),
                other => panic!("{name} is not a histogram: {other:?}"),
            })
            .sum()
    }

    fn gauge(&mut self, name: &str, with: &[(&str, &str)]) -> Option<f64> {
        self.matching(name, with)
            .map(|value| match value {
                DebugValue::Gauge(g) => g.into_inner(),
                other => panic!("{name} is not a gauge: {other:?}"),
            })
            .next()
    }
}

/// The key metrics move with the work: commands by outcome, sends, reroutes, activations,
/// leader changes and shard moves, bus publications and drops, store appends by outcome.
/// (A current-thread runtime: the thread-local recorder sees every task.)
#[tokio::test(start_paused = true)]
async fn key_metrics_move_with_the_work() {
    let recorder = DebuggingRecorder::new();
    let mut m = Recorded::new(recorder.snapshotter());
    let _guard = metrics::set_default_local_recorder(&recorder);
    telemetry::describe();
    log_lines();

    let broker = MemoryBroker::new();
    let (c1, h1) = node(&broker, "n1", 1).await;
    let (c2, h2) = node(&broker, "n2", 2).await;
    converge(&[&c1, &c2]).await;
    assert!(m.counter(telemetry::CLUSTER_LEADER_CHANGES, &[]) >= 1);
    assert!(m.counter(telemetry::CLUSTER_ASSIGNMENTS, &[]) >= 1);
    assert_eq!(
        m.counter(telemetry::CLUSTER_SHARD_MOVES, &[]),
        0,
        "the first assignment places shards; none moves"
    );
    let owned: f64 = ["n1", "n2"]
        .iter()
        .map(|n| {
            m.gauge(telemetry::CLUSTER_SHARDS_OWNED, &[("node", n)])
                .unwrap()
        })
        .sum();
    assert_eq!(owned, 1024.0, "every shard owned by one of the two nodes");
    assert_eq!(
        m.gauge(telemetry::CLUSTER_MEMBERS, &[("node", "n1")]),
        Some(2.0)
    );

    const ACTORS: usize = 200;
    for i in 0..ACTORS {
        let sender = if i % 2 == 0 { &h1 } else { &h2 };
        sender.send(&format!("acct-{i}"), &10).await.unwrap();
    }
    // A refusal, decided by the owner.
    let refused = h1.send("acct-0", &-1_000).await;
    assert!(refused.is_err());

    let ok = m.counter(telemetry::ACTOR_COMMANDS, &[("outcome", "ok")]);
    assert_eq!(
        ok, ACTORS as u64,
        "every command executed once, on its owner"
    );
    assert_eq!(
        m.counter(telemetry::ACTOR_COMMANDS, &[("outcome", "rejected")]),
        1
    );
    assert_eq!(
        m.counter(telemetry::ACTOR_SENDS, &[("outcome", "ok")]),
        ACTORS as u64
    );
    assert_eq!(
        m.samples(
            telemetry::ACTOR_COMMAND_SECONDS,
            &[("namespace", "accounts")]
        ),
        ACTORS + 1
    );
    assert_eq!(
        m.counter(telemetry::ACTOR_ACTIVATIONS, &[]),
        ACTORS as u64,
        "each actor loaded once"
    );

    // A stale append is a conflict; the bus counts what it publishes and what a full queue drops.
    let store = h1.store();
    let conflict = store
        .append(
            "acct-0",
            ExpectedVersion::Exact(0),
            vec![NewEvent::new("Moved", json!({ "amount": 1 }))],
        )
        .await;
    assert!(conflict.is_err());
    let rt = Runtime::system(MemoryBroker::new());
    let bus = EventBus::new(&rt, BusConfig::new());
    let _slow = bus
        .subscribe_with_queue("accounts", Filter::all(), 4)
        .unwrap();
    let events = store.events("acct-1", 1).await.unwrap();
    for _ in 0..10 {
        bus.publish("accounts", &events).await.unwrap();
    }
    assert_eq!(
        m.counter(telemetry::BUS_PUBLISHED, &[]),
        10 * events.len() as u64
    );
    assert_eq!(
        m.counter(telemetry::BUS_LAGGED, &[("reason", "queue_full")]),
        10 * events.len() as u64 - 4,
        "a queue of 4 holds 4; the rest are counted as missed"
    );

    // The active gauge follows what the host holds.
    h1.passivate_idle();
    assert_eq!(
        m.gauge(
            telemetry::ACTOR_ACTIVE,
            &[("namespace", "accounts"), ("node", "n1")]
        ),
        Some(h1.active_actors() as f64)
    );

    // A third node joins: the leader moves about a third of the shards to it.
    let (c3, _h3) = node(&broker, "n3", 3).await;
    converge(&[&c1, &c2, &c3]).await;
    let moved = m.counter(telemetry::CLUSTER_SHARD_MOVES, &[]);
    assert!(
        (200..=500).contains(&moved),
        "about a third of 1024 shards move to the new node, not {moved}"
    );
    assert_eq!(
        m.gauge(telemetry::CLUSTER_MEMBERS, &[("node", "n1")]),
        Some(3.0)
    );
    for c in [c1, c2, c3] {
        c.stop().await;
    }
}

/// Schema evolution is observable: each upcast event is counted by type and version, a
/// snapshot a load could not use is counted and logged with the reason, and keyed commands
/// answered from an earlier outcome are counted.
#[tokio::test(start_paused = true)]
async fn schema_metrics_say_what_was_upcast_and_why_a_snapshot_was_skipped() {
    let recorder = DebuggingRecorder::new();
    let mut m = Recorded::new(recorder.snapshotter());
    let _guard = metrics::set_default_local_recorder(&recorder);
    let lines = log_lines();
    let rt = Runtime::system(MemoryBroker::new());
    let store = EventStore::open(rt.clone(), StoreConfig::new("schemas"))
        .await
        .unwrap();
    let host = |store: &EventStore<MemoryBroker>| {
        ActorHost::<Account, _>::new(
            store.clone(),
            aether::SingleNode(rt.node_id().clone()),
            ActorConfig::new(),
        )
    };
    let old = || NewEvent::new("Moved", json!(5)).with_schema_version(1);
    store
        .append("old", ExpectedVersion::NoStream, vec![old(), old(), old()])
        .await
        .unwrap();
    assert_eq!(host(&store).state("old").await.unwrap().state.balance, 15);
    assert_eq!(
        m.counter(
            telemetry::EVENTS_UPCAST,
            &[("event_type", "Moved"), ("from_version", "1")]
        ),
        3
    );
    for (state, schema, reason) in [
        (json!({ "balance": 100 }), 7, "newer_schema"),
        (json!({ "balance": "many" }), 1, "undecodable"),
    ] {
        store
            .save_snapshot(&aether::Snapshot::new("old", 3, state).with_schema_version(schema))
            .await
            .unwrap();
        let loaded = host(&store).state("old").await.unwrap();
        assert_eq!(
            loaded.state.balance, 15,
            "replayed past the {reason} snapshot"
        );
        assert_eq!(
            m.counter(
                telemetry::ACTOR_SNAPSHOTS_SKIPPED,
                &[("namespace", "schemas"), ("reason", reason)]
            ),
            1
        );
    }
    let logged = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    assert!(
        logged.contains("snapshot skipped") && logged.contains("newer_schema"),
        "the skip is logged with its reason"
    );
    let h = host(&store);
    h.execute_keyed("new", &5, "deposit-1").await.unwrap();
    assert!(
        h.execute_keyed("new", &5, "deposit-1")
            .await
            .unwrap()
            .deduplicated
    );
    assert_eq!(
        m.counter(telemetry::ACTOR_DEDUPLICATED, &[("namespace", "schemas")]),
        1
    );
}

/// A log line buffer for the subscriber below.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every log line of this test binary, at `aether=debug`. A process-wide subscriber: with a
/// thread-local one, callsites first hit by the other test's thread (no subscriber) may stay
/// disabled.
fn log_lines() -> Lines {
    static LINES: OnceLock<Lines> = OnceLock::new();
    LINES
        .get_or_init(|| {
            let lines = Lines::default();
            let writer = lines.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new("aether=debug"))
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .finish();
            tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
            lines
        })
        .clone()
}

/// A command sent from n1 under the application's trace context runs on its owner n2 in the
/// same trace: both nodes' log lines carry the trace id, and the stored event's metadata names
/// it. Without a context, the command starts a trace of its own, also recorded on the event.
#[tokio::test(start_paused = true)]
async fn one_trace_id_joins_the_caller_the_owner_and_the_stored_event() {
    let lines = log_lines();

    let broker = MemoryBroker::new();
    let (c1, h1) = node(&broker, "n1", 1).await;
    let (c2, h2) = node(&broker, "n2", 2).await;
    converge(&[&c1, &c2]).await;
    let actor = (0..)
        .map(|i| format!("acct-{i}"))
        .find(|a| c1.owner_of(a).map(|o| o.as_str() == "n2").unwrap_or(false))
        .unwrap();

    let caller =
        TraceContext::parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").unwrap();
    lines.0.lock().unwrap().clear();
    let outcome = trace::scope(caller, h1.send(&actor, &5)).await.unwrap();
    assert_eq!(outcome.node_id.as_str(), "n2", "ran on the owner");
    let event = &outcome.events[0];
    assert_eq!(event.metadata.trace_id(), Some(caller.trace_id().as_str()));
    let span = event.metadata.span_id().expect("the owner's span id");
    assert_ne!(span, caller.span_id(), "the owner's span is a new span");
    // What the store returns later says the same.
    let stored = h2.store().events(&actor, 1).await.unwrap();
    assert_eq!(
        stored[0].metadata.trace_id(),
        Some(caller.trace_id().as_str())
    );

    let log = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    let with_trace: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&caller.trace_id()))
        .collect();
    assert!(
        with_trace
            .iter()
            .any(|l| l.contains("aether.send") && l.contains("node=n1")),
        "the caller's line carries the trace id:\n{log}"
    );
    assert!(
        with_trace
            .iter()
            .any(|l| l.contains("aether.command") && l.contains("node=n2")),
        "the owner's line carries the trace id:\n{log}"
    );

    // No context: a new trace, still recorded on the event and joined across the hop.
    let outcome = h1.send(&actor, &1).await.unwrap();
    let own = outcome.events[0]
        .metadata
        .trace_id()
        .expect("a new trace")
        .to_owned();
    assert_ne!(own, caller.trace_id());
    let log = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains(&own) && l.contains("node=n1") && l.contains("aether.send")),
        "the sender logged the trace its command started:\n{log}"
    );
    c1.stop().await;
    c2.stop().await;
}
