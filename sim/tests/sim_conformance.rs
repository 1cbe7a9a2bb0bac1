//! The broker conformance suite (`tests/support/conformance.rs`, shared with the memory broker
//! and real NATS) run against [`SimBroker`]: each body runs as a client host talking over
//! simulated TCP to a broker host, in virtual time, on the engine of the build (turmoil, or
//! madsim under `--cfg madsim`).

#![cfg(feature = "sim")]

#[path = "../../tests/support/conformance.rs"]
mod conformance;

use std::future::Future;
use std::time::Duration;

use aether::clock::SharedRng;
#[cfg(not(madsim))]
use aether_sim::broker::BROKER_HOST;
use aether_sim::broker::{BrokerHost, SimBroker, SimBrokerConfig, Wire};
use aether_sim::clock::SimClock;
#[cfg(not(madsim))]
use aether_sim::clock::epoch;

/// Runs `client` (given the broker's wire) on a client host beside a fresh broker host,
/// fault-free, to its end.
#[cfg(not(madsim))]
fn in_world<F, Fut>(client: F)
where
    F: FnOnce(Wire) -> Fut + Send + 'static,
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
        client(wire).await;
        Ok(())
    });
    sim.run().expect("the client completes");
}

/// See the other definition.
#[cfg(madsim)]
fn in_world<F, Fut>(client: F)
where
    F: FnOnce(Wire) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let host = BrokerHost::new(SharedRng::from_seed(1));
    let wire = host.wire();
    let rt = madsim::runtime::Runtime::with_seed_and_config(1, madsim::Config::default());
    rt.block_on(async move {
        let mut engine =
            aether_sim::engine::MadsimEngine::new(wire.clone(), SharedRng::from_seed(3));
        engine.broker(move || host.clone().serve());
        let (done, finished) = tokio::sync::oneshot::channel::<()>();
        // The node's software runs once: the client is not restarted.
        let once = std::sync::Mutex::new(Some((client, done)));
        engine.node("n0", move || {
            let taken = once.lock().unwrap_or_else(|e| e.into_inner()).take();
            let wire = wire.clone();
            async move {
                if let Some((client, done)) = taken {
                    client(wire).await;
                    let _ = done.send(());
                }
                Ok::<(), Box<dyn std::error::Error>>(())
            }
        });
        madsim::time::timeout(Duration::from_secs(600), finished)
            .await
            .expect("the client completes within 600 s")
            .expect("the client ran");
    });
}

/// Runs `body` against a fresh simulated broker, fault-free.
fn in_simulation<F, Fut>(body: F)
where
    F: FnOnce(SimBroker) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    in_world(move |wire| async move {
        let (clock, _) = SimClock::new();
        let mut config = SimBrokerConfig::new("n0", 1 << 32, &SharedRng::from_seed(2));
        // The bodies bound their own waits; keep the client's bound above theirs.
        config.op_timeout = Duration::from_secs(10);
        body(SimBroker::new(config, clock, wire)).await;
    });
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
    in_world(|wire| async move {
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
        let answering = aether::rt::spawn(async move {
            let request = fast.next().await.expect("request");
            let inbox = request.reply.expect("inbox");
            assert_ne!(inbox, stale, "two incarnations share an inbox");
            responder
                .publish(&stale, Headers::new(), "late answer to the first".into())
                .await
                .expect("late reply");
            aether::rt::sleep(Duration::from_millis(50)).await;
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
    });
}
