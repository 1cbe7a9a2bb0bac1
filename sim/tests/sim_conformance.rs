//! The broker conformance suite (`tests/support/conformance.rs`, shared with the memory broker
//! and real NATS) run against [`SimBroker`]: each body runs as a turmoil client talking over
//! simulated TCP to a broker host, in virtual time.

#![cfg(feature = "sim")]

#[path = "../../tests/support/conformance.rs"]
mod conformance;

use std::future::Future;
use std::time::Duration;

use aether::clock::SharedRng;
use aether_sim::broker::{BROKER_HOST, BrokerHost, SimBroker, SimBrokerConfig};
use aether_sim::clock::{SimClock, epoch};

/// Runs `body` against a fresh simulated broker, fault-free.
fn in_simulation<F, Fut>(body: F)
where
    F: FnOnce(SimBroker) -> Fut + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let mut sim = turmoil::Builder::new()
        .rng_seed(1)
        .epoch(epoch())
        .tick_duration(Duration::from_millis(1))
        .simulation_duration(Duration::from_secs(600))
        .build();
    let host = BrokerHost::new(SharedRng::from_seed(1));
    let wire = host.wire();
    sim.host(BROKER_HOST, move || host.clone().serve());
    sim.client("n0", async move {
        let (clock, _) = SimClock::new();
        let mut config = SimBrokerConfig::new("n0", 1 << 32, &SharedRng::from_seed(2));
        // The bodies bound their own waits; keep the client's bound above theirs.
        config.op_timeout = Duration::from_secs(10);
        body(SimBroker::new(config, clock, wire)).await;
        Ok(())
    });
    sim.run().expect("the conformance body completes");
}

macro_rules! conformance {
    ($($body:ident),* $(,)?) => {
        $(
            #[test]
            fn $body() {
                in_simulation(conformance::$body);
            }
        )*
    };
}

conformance_bodies!(conformance! {});

/// Found by the cluster simulation (seeds 1830 and 1891): a node's next incarnation numbered
/// its request inboxes from the same counter as the one before, so a late reply to the old
/// incarnation's request answered the new incarnation's request. Inboxes now carry a prefix
/// per client, as a NATS client's do.
#[test]
fn a_late_reply_to_an_earlier_incarnation_never_answers_the_next_one() {
    let mut sim = turmoil::Builder::new()
        .rng_seed(1)
        .epoch(epoch())
        .tick_duration(Duration::from_millis(1))
        .simulation_duration(Duration::from_secs(600))
        .build();
    let host = BrokerHost::new(SharedRng::from_seed(1));
    let wire = host.wire();
    sim.host(BROKER_HOST, move || host.clone().serve());
    sim.client("n0", async move {
        let (clock, _) = SimClock::new();
        let client = |node: &str, incarnation: u64, seed: u64| {
            SimBroker::new(
                SimBrokerConfig::new(node, incarnation << 32, &SharedRng::from_seed(seed)),
                clock.clone(),
                wire.clone(),
            )
        };
        use aether::broker::{Broker, BrokerError, Headers};
        let service = client("svc", 1, 10);
        let mut slow = service.subscribe("svc.slow").await.expect("subscribe");
        let mut fast = service.subscribe("svc.fast").await.expect("subscribe");
        let first = client("n1", 1, 11);
        let err = first
            .request(
                "svc.slow",
                Headers::new(),
                "first".into(),
                Duration::from_millis(200),
            )
            .await
            .expect_err("the slow service does not answer in time");
        assert!(matches!(err, BrokerError::Timeout { .. }), "{err:?}");
        let stale = slow.next().await.expect("request").reply.expect("inbox");
        drop(first); // the incarnation crashes
        let second = client("n1", 2, 12);
        let responder = service.clone();
        let answering = tokio::spawn(async move {
            let request = fast.next().await.expect("request");
            let inbox = request.reply.expect("inbox");
            assert_ne!(inbox, stale, "two incarnations share an inbox");
            responder
                .publish(&stale, Headers::new(), "late answer to the first".into())
                .await
                .expect("late reply");
            tokio::time::sleep(Duration::from_millis(50)).await;
            responder
                .publish(&inbox, Headers::new(), "answer to the second".into())
                .await
                .expect("reply");
        });
        let reply = second
            .request(
                "svc.fast",
                Headers::new(),
                "second".into(),
                Duration::from_secs(5),
            )
            .await
            .expect("reply");
        assert_eq!(&reply.payload[..], b"answer to the second");
        answering.await.expect("responder");
        Ok(())
    });
    sim.run().expect("the scenario completes");
}
