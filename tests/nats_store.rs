//! Store, snapshots and bus on a real nats-server: the same generic bodies as on the memory
//! broker (`tests/suite`), one fresh single-node server per test, plus what only a real server
//! with several connections shows.

mod support;

use std::time::Duration;

use aether::{
    AppendError, BusConfig, EventBus, EventStore, ExpectedVersion, Filter, NatsBroker, NatsOptions,
    NewEvent, Runtime, StoreConfig,
};
use support::nats_server::NatsServer;

/// One test per body, each on its own single-node server.
macro_rules! on_nats {
    ($kind:ident; $($body:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $body() {
                let server = NatsServer::start();
                let broker = server.broker().await;
                let ns = support::bodies::namespace_for(stringify!($body));
                support::bodies::$kind::$body(broker, ns).await;
            }
        )*
    };
}

mod store {
    use super::*;
    store_bodies!(on_nats! { store; });
}

mod bus {
    use super::*;
    bus_bodies!(on_nats! { bus; });
}

fn on_node(broker: NatsBroker, node: &str) -> Runtime<NatsBroker> {
    Runtime::system(broker).with_node(aether::NodeId::new(node).unwrap())
}

async fn connect(server: &NatsServer) -> NatsBroker {
    NatsBroker::connect(NatsOptions::new(server.url()).name("aether-test"))
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_nodes_on_separate_connections_see_each_others_events_once() {
    let server = NatsServer::start();
    let a = EventBus::connected(&on_node(connect(&server).await, "node-a"), BusConfig::new())
        .await
        .expect("bus a");
    let b = EventBus::connected(&on_node(connect(&server).await, "node-b"), BusConfig::new())
        .await
        .expect("bus b");
    let mut on_b = b.subscribe("orders", Filter::all()).expect("subscribe");
    let mut on_a = a.subscribe("orders", Filter::all()).expect("subscribe");
    let mut other_ns = b.subscribe("billing", Filter::all()).expect("subscribe");
    // The subscription of the other connection must have reached the server.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let event = aether::Event::new(
        "e1",
        "Placed",
        "order-1",
        1,
        serde_json::json!({"total": 3}),
    );
    a.publish("orders", std::slice::from_ref(&event))
        .await
        .expect("publish");
    let got = tokio::time::timeout(Duration::from_secs(5), on_b.recv())
        .await
        .expect("delivered to the other node in time")
        .expect("event");
    assert_eq!(got, event);
    let local = tokio::time::timeout(Duration::from_secs(5), on_a.recv())
        .await
        .expect("delivered locally")
        .expect("event");
    assert_eq!(local, event);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        on_a.try_recv().is_none(),
        "node a received its own event twice"
    );
    assert!(on_b.try_recv().is_none(), "node b received the event twice");
    assert!(
        other_ns.try_recv().is_none(),
        "another namespace saw the event"
    );
    assert_eq!(b.stats().received_remote, 1);
    assert_eq!(a.stats().received_remote, 0);
}

/// Every read leaves nothing behind on the server: 5,000 replays of one namespace — short
/// actors, and a long one whose reads page past the batched direct gets into an ordered
/// consumer — and the server's consumer count stays at zero throughout (async-nats keeps an
/// abandoned consumer for 30 s, and the server allows 1,000 per stream, so a read path that
/// leaked one per read would show here and fail within ~1,000 reads). A stale append then
/// still reports a conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::disallowed_methods)] // reports how long the replays took (not asserted)
async fn five_thousand_replays_leave_no_consumer_behind() {
    let server = NatsServer::start();
    let store = EventStore::open(
        Runtime::system(server.broker().await),
        StoreConfig::new("replays"),
    )
    .await
    .expect("store");
    let short = 50;
    for a in 0..short {
        for v in 0..10u64 {
            store
                .append(
                    &format!("short-{a}"),
                    ExpectedVersion::Exact(v),
                    vec![NewEvent::new("Ticked", serde_json::json!({ "v": v }))],
                )
                .await
                .expect("append");
        }
    }
    let long_commits = 3_000u64;
    for v in 0..long_commits {
        store
            .append(
                "long",
                ExpectedVersion::Exact(v),
                vec![NewEvent::new("Ticked", serde_json::json!({ "v": v }))],
            )
            .await
            .expect("append");
    }
    let baseline = server.consumer_count();
    assert_eq!(baseline, 0, "no consumer before reading");
    let started = std::time::Instant::now();
    let (mut replays, mut events, mut most) = (0u64, 0u64, 0u64);
    // A fresh handle for every hundred reads: nothing is served from a handle's memory.
    for round in 0..50 {
        let reader = EventStore::open(
            Runtime::system(server.broker().await),
            StoreConfig::new("replays"),
        )
        .await
        .expect("store");
        for i in 0..100 {
            let actor = if i == 0 && round % 10 == 0 {
                "long".to_owned()
            } else {
                format!("short-{}", (round * 100 + i) % short)
            };
            events += reader.events(&actor, 1).await.expect("replay").len() as u64;
            replays += 1;
        }
        let consumers = server.consumer_count();
        most = most.max(consumers);
        assert_eq!(
            consumers, 0,
            "after {replays} replays the server holds {consumers} consumers"
        );
    }
    println!(
        "LEAK {replays} replays ({events} events) in {:.1} s, most consumers seen: {most}, now: {}",
        started.elapsed().as_secs_f64(),
        server.consumer_count()
    );
    assert_eq!(replays, 5_000);
    let err = store
        .append(
            "short-0",
            ExpectedVersion::Exact(3),
            vec![NewEvent::new("Late", serde_json::json!({}))],
        )
        .await
        .expect_err("stale");
    match err {
        AppendError::Conflict(c) => assert_eq!(c.actual, 10),
        other => panic!("a stale append must conflict, got {other:?}"),
    }
}

/// A server resource limit comes back typed: a KV bucket whose stream allows one consumer
/// refuses a second watch with `LimitReached { Consumers }`, not an untyped error, and the
/// first watch keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_limit_is_reported_as_a_typed_error() {
    use aether::broker::{Broker, BrokerError, BrokerLimit, KvConfig};
    let server = NatsServer::start();
    let broker = server.broker().await;
    broker
        .kv_ensure(KvConfig::new("limited"))
        .await
        .expect("bucket");
    let js = broker.jetstream();
    let mut stream = js.get_stream("KV_limited").await.expect("KV stream");
    let mut config = stream.info().await.expect("info").config.clone();
    config.max_consumers = 1;
    js.update_stream(config).await.expect("limit consumers");
    let mut first = broker.kv_watch("limited", ">").await.expect("first watch");
    match broker.kv_watch("limited", ">").await {
        Err(BrokerError::LimitReached {
            limit: BrokerLimit::Consumers,
            reason,
        }) => println!("LIMIT {reason}"),
        other => panic!("a second consumer past the limit: {other:?}"),
    }
    broker
        .kv_put("limited", "k", "v".into())
        .await
        .expect("put");
    let entry = tokio::time::timeout(Duration::from_secs(5), first.next())
        .await
        .expect("the first watch still delivers")
        .expect("entry");
    assert_eq!(entry.key, "k");
}
