//! The broker conformance suite (`tests/support/conformance.rs`, shared with the memory broker
//! and real NATS) run against [`SimBroker`]: each body runs as a turmoil client talking over
//! simulated TCP to a broker host, in virtual time.

#![cfg(feature = "sim")]

#[path = "support/conformance.rs"]
mod conformance;

use std::future::Future;
use std::time::Duration;

use aether::clock::SharedRng;
use aether::sim::broker::{BROKER_HOST, BrokerHost, SimBroker, SimBrokerConfig};
use aether::sim::clock::{SimClock, epoch};

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
        let mut config = SimBrokerConfig::new("n0", 1 << 32);
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
