//! Store, snapshots and bus on a real nats-server: the same generic bodies as on the memory
//! broker (`tests/suite`), one fresh single-node server per test, plus what only a real server
//! with several connections shows.

mod suite;
mod support;

use std::time::Duration;

use aether::{BusConfig, EventBus, Filter, NatsBroker, NatsOptions};
use support::nats_server::NatsServer;

/// One test per body, each on its own single-node server.
macro_rules! on_nats {
    ($kind:ident; $($body:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $body() {
                let server = NatsServer::start();
                let broker = server.broker().await;
                let ns = suite::namespace_for(stringify!($body));
                suite::$kind::$body(broker, ns).await;
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

async fn connect(server: &NatsServer) -> NatsBroker {
    NatsBroker::connect(NatsOptions::new(server.url()).name("aether-test"))
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_nodes_on_separate_connections_see_each_others_events_once() {
    let server = NatsServer::start();
    let a = EventBus::connected(connect(&server).await, BusConfig::new("node-a"))
        .await
        .expect("bus a");
    let b = EventBus::connected(connect(&server).await, BusConfig::new("node-b"))
        .await
        .expect("bus b");
    let mut on_b = b.subscribe("orders", Filter::all()).expect("subscribe");
    let mut on_a = a.subscribe("orders", Filter::all()).expect("subscribe");
    let mut other_ns = b.subscribe("billing", Filter::all()).expect("subscribe");
    // The subscription of the other connection must have reached the server.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let event = aether::Event {
        id: "e1".into(),
        event_type: "Placed".into(),
        actor_id: "order-1".into(),
        version: 1,
        data: serde_json::json!({"total": 3}),
        timestamp: std::time::UNIX_EPOCH,
        metadata: aether::Metadata::default(),
    };
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
