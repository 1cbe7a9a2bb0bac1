//! Bus behaviour, generic over the broker.

use std::time::Duration;

use aether::{Broker, BusConfig, Event, EventBus, Filter, NodeId, RecvError, Runtime};
use serde_json::json;

fn event(actor: &str, kind: &str, version: u64) -> Event {
    Event::new(
        format!("{actor}-{version}"),
        kind,
        actor,
        version,
        json!({}),
    )
}

/// A runtime for node `node` on `broker`.
fn on_node<B: Broker>(broker: B, node: &str) -> Runtime<B> {
    Runtime::system(broker).with_node(NodeId::new(node).expect("a valid node id"))
}

async fn recv(sub: &mut aether::BusSubscription) -> Event {
    tokio::time::timeout(Duration::from_secs(5), sub.recv())
        .await
        .expect("an event within 5 s")
        .expect("an event, not an error")
}

pub async fn subscribers_get_events_by_namespace_and_filter<B: Broker>(broker: B, ns: String) {
    let bus = EventBus::new(&on_node(broker, "n1"), BusConfig::new());
    let mut all = bus.subscribe(&ns, Filter::all()).unwrap();
    let mut typed = bus
        .subscribe(&ns, Filter::all().event_types(["B"]))
        .unwrap();
    let mut actor = bus.subscribe(&ns, Filter::all().actor("x")).unwrap();
    let mut prefix = bus
        .subscribe(&format!("{}*", &ns[..3]), Filter::all())
        .unwrap();
    let mut everything = bus.subscribe("*", Filter::all()).unwrap();
    let mut other = bus.subscribe("elsewhere", Filter::all()).unwrap();
    let events = vec![event("x", "A", 1), event("y", "B", 1)];
    bus.publish(&ns, &events).await.unwrap();
    assert_eq!(recv(&mut all).await, events[0]);
    assert_eq!(recv(&mut all).await, events[1]);
    assert_eq!(recv(&mut typed).await, events[1]);
    assert!(typed.try_recv().is_none());
    assert_eq!(recv(&mut actor).await, events[0]);
    assert!(actor.try_recv().is_none());
    assert_eq!(recv(&mut prefix).await, events[0]);
    assert_eq!(recv(&mut everything).await, events[0]);
    assert!(other.try_recv().is_none());
    let stats = bus.stats();
    assert_eq!(stats.published, 2);
    assert_eq!(stats.delivered, 2 + 1 + 1 + 2 + 2);
    assert_eq!(stats.dropped, 0);
}

pub async fn lagging_subscriber_is_told_how_many_it_missed<B: Broker>(broker: B, ns: String) {
    let mut config = BusConfig::new();
    config.subscriber_queue_max = 2;
    let bus = EventBus::new(&on_node(broker, "n1"), config);
    let mut slow = bus.subscribe(&ns, Filter::all()).unwrap();
    let events: Vec<Event> = (1..=5).map(|v| event("x", "A", v)).collect();
    for e in &events {
        bus.publish(&ns, std::slice::from_ref(e)).await.unwrap(); // never blocks
    }
    assert_eq!(slow.recv().await, Err(RecvError::Lagged(3)));
    assert_eq!(recv(&mut slow).await, events[0]);
    assert_eq!(recv(&mut slow).await, events[1]);
    assert!(slow.try_recv().is_none());
    let stats = bus.stats();
    assert_eq!(
        (
            stats.published,
            stats.delivered,
            stats.dropped,
            stats.received_remote
        ),
        (5, 2, 3, 0)
    );
    // After catching up it receives again.
    bus.publish(&ns, &events[4..]).await.unwrap();
    assert_eq!(recv(&mut slow).await, events[4]);
}

pub async fn other_nodes_receive_once_and_own_publications_are_not_doubled<B: Broker>(
    broker: B,
    ns: String,
) {
    let a = EventBus::connected(&on_node(broker.clone(), "node-a"), BusConfig::new())
        .await
        .unwrap();
    let b = EventBus::connected(&on_node(broker, "node-b"), BusConfig::new())
        .await
        .unwrap();
    let mut on_a = a.subscribe(&ns, Filter::all()).unwrap();
    let mut on_b = b.subscribe(&ns, Filter::all()).unwrap();
    let e1 = event("x", "A", 1);
    a.publish(&ns, std::slice::from_ref(&e1)).await.unwrap();
    assert_eq!(recv(&mut on_a).await, e1);
    assert_eq!(recv(&mut on_b).await, e1);
    let e2 = event("x", "A", 2);
    b.publish(&ns, std::slice::from_ref(&e2)).await.unwrap();
    assert_eq!(recv(&mut on_a).await, e2);
    assert_eq!(recv(&mut on_b).await, e2);
    // Give any duplicate time to arrive, then check there was none.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(on_a.try_recv().is_none(), "node a got a duplicate");
    assert!(on_b.try_recv().is_none(), "node b got a duplicate");
    assert_eq!(a.stats().received_remote, 1);
    assert_eq!(b.stats().received_remote, 1);
}

pub async fn bad_namespace_patterns_are_refused<B: Broker>(broker: B, _ns: String) {
    let bus = EventBus::new(&on_node(broker, "n1"), BusConfig::new());
    for bad in ["a.b", "a b", "", "a*b*", ">"] {
        assert!(
            bus.subscribe(bad, Filter::all()).is_err(),
            "{bad:?} must be refused"
        );
    }
    assert!(bus.publish("a.b", &[event("x", "A", 1)]).await.is_err());
}
