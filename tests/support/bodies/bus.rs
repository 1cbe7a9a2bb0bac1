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

/// Waits until `sub` has `n` deliveries (or a lag report) queued and returns them.
async fn take_deliveries(
    sub: &mut aether::BusSubscription,
    n: usize,
) -> Vec<Result<aether::Delivery, RecvError>> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let next = tokio::time::timeout(Duration::from_secs(10), sub.recv_delivery())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} deliveries within 10 s", out.len()));
        out.push(next);
    }
    out
}

pub async fn deliveries_carry_their_origin_and_are_numbered_in_order<B: Broker>(
    broker: B,
    ns: String,
) {
    let config = BusConfig::new().subscriber_queue_max(4096);
    let a = EventBus::connected(&on_node(broker.clone(), "node-a"), config.clone())
        .await
        .unwrap();
    let b = EventBus::connected(&on_node(broker, "node-b"), config)
        .await
        .unwrap();
    let mut on_a = a.subscribe(&ns, Filter::all()).unwrap();
    let mut on_b = b.subscribe(&ns, Filter::all()).unwrap();
    // Two thousand events in messages of one to nine events, published back to back.
    let mut published = Vec::new();
    let mut version = 0;
    while published.len() < 2000 {
        let n = 1 + published.len() % 9;
        let batch: Vec<Event> = (0..n)
            .map(|_| {
                version += 1;
                event("x", "A", version)
            })
            .collect();
        a.publish(&ns, &batch).await.unwrap();
        published.extend(batch);
    }
    for (sub, name) in [(&mut on_a, "the publisher"), (&mut on_b, "another node")] {
        let got = take_deliveries(sub, published.len()).await;
        for (i, (delivery, sent)) in got.into_iter().zip(&published).enumerate() {
            let delivery = delivery.unwrap_or_else(|e| panic!("{name}: delivery {i}: {e}"));
            assert_eq!(&delivery.event, sent, "{name}: event {i} in order");
            assert_eq!(delivery.origin.as_str(), "node-a");
            assert_eq!(delivery.session, a.session());
            assert_eq!(delivery.sequence, i as u64 + 1, "{name}: numbered from 1");
        }
    }
    let stats = b.stats();
    assert_eq!(
        (stats.received_remote, stats.missed_remote, stats.duplicates),
        (published.len() as u64, 0, 0)
    );
    assert_eq!(a.stats().unsent, 0);
}

/// Publishes a raw bus message as node `origin`, session `session`, numbered from `first`.
async fn forge<B: Broker>(broker: &B, ns: &str, origin: &str, session: u64, first: u64, n: u64) {
    let events: Vec<Event> = (first..first + n).map(|v| event(origin, "F", v)).collect();
    let mut headers = aether::broker::Headers::new();
    headers.insert(aether::bus::HEADER_ORIGIN.into(), origin.into());
    headers.insert(aether::bus::HEADER_SESSION.into(), session.to_string());
    headers.insert(aether::bus::HEADER_SEQUENCE.into(), first.to_string());
    broker
        .publish(
            &format!("aether.bus.{ns}"),
            headers,
            serde_json::to_vec(&events).unwrap().into(),
        )
        .await
        .unwrap();
}

pub async fn gaps_in_an_origins_numbering_are_reported_and_repeats_dropped<B: Broker>(
    broker: B,
    ns: String,
) {
    let bus = EventBus::connected(&on_node(broker.clone(), "node-b"), BusConfig::new())
        .await
        .unwrap();
    let mut sub = bus.subscribe(&ns, Filter::all()).unwrap();
    let mut only_g = bus
        .subscribe(&ns, Filter::all().event_types(["G"]))
        .unwrap();
    forge(&broker, &ns, "far", 7, 4, 2).await; // first heard: 4, 5 (nothing reported before)
    forge(&broker, &ns, "far", 7, 9, 1).await; // 6..=8 lost
    forge(&broker, &ns, "far", 7, 5, 1).await; // a repeat: dropped
    forge(&broker, &ns, "far", 7, 10, 1).await;
    forge(&broker, &ns, "far", 8, 3, 1).await; // a new session (restarted node) starts afresh
    let got: Vec<String> = take_deliveries(&mut sub, 6)
        .await
        .into_iter()
        .map(|d| match d {
            Ok(d) => format!("{}:{}", d.session, d.sequence),
            Err(e) => e.to_string(),
        })
        .collect();
    assert_eq!(
        got,
        [
            "7:4",
            "7:5",
            "subscriber lagged behind and missed 3 events",
            "7:9",
            "7:10",
            "8:3"
        ]
    );
    // A filter cannot tell what the lost events were: the lag is reported to every subscriber
    // of the namespace.
    assert_eq!(only_g.recv().await, Err(RecvError::Lagged(3)));
    let stats = bus.stats();
    assert_eq!(
        (stats.received_remote, stats.missed_remote, stats.duplicates),
        (5, 3, 1)
    );
}

pub async fn a_publication_too_large_for_one_message_is_refused<B: Broker>(broker: B, ns: String) {
    let bus = EventBus::connected(&on_node(broker, "node-a"), BusConfig::new())
        .await
        .unwrap();
    let mut sub = bus.subscribe(&ns, Filter::all()).unwrap();
    let big = Event::new("big", "A", "x", 1, json!("x".repeat(1_100_000)));
    match bus.publish(&ns, &[big]).await {
        Err(aether::bus::PublishError::TooLarge { size, max }) => assert!(size > max),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(sub.try_recv().is_none(), "nothing was published");
    assert_eq!(bus.stats().published, 0);
}

/// A subscription is a `Stream`: 1,000 events arrive through it in order, and it ends when the
/// bus is dropped.
pub async fn a_subscription_is_a_stream_that_ends_with_the_bus<B: Broker>(broker: B, ns: String) {
    use futures::StreamExt;
    let bus = EventBus::new(&on_node(broker, "n1"), BusConfig::new());
    let sub = bus.subscribe(&ns, Filter::all()).unwrap();
    for batch in 0..10u64 {
        let events: Vec<Event> = (0..100u64)
            .map(|i| event("s", "Tick", batch * 100 + i + 1))
            .collect();
        bus.publish(&ns, &events).await.unwrap();
    }
    drop(bus);
    let versions: Vec<u64> = tokio::time::timeout(
        Duration::from_secs(10),
        sub.map(|e| e.expect("no loss").version).collect::<Vec<_>>(),
    )
    .await
    .expect("the stream ends once the bus is dropped");
    assert_eq!(versions, (1..=1000).collect::<Vec<_>>());
}
