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

        #[test]
        fn every_conformance_body_is_run() {
            let run: &[&str] = &[$(stringify!($body)),*];
            assert_eq!(run, conformance::BODIES);
        }
    };
}

conformance!(
    expected_last_subject_sequence_accepts_the_tail_and_reports_the_actual_one,
    expected_sequence_zero_means_the_subject_is_empty,
    a_repeated_message_id_is_acknowledged_as_duplicate_and_stored_once,
    last_returns_the_newest_message_of_a_subject_or_none,
    read_returns_one_subject_in_stream_order_from_a_sequence,
    headers_round_trip_and_nats_headers_are_reserved,
    append_to_a_subject_no_stream_captures_is_not_found,
    ensure_stream_is_idempotent_and_refuses_overlaps_and_bad_names,
    max_messages_per_subject_keeps_only_the_newest,
    stream_messages_expire_after_max_age,
    subscriptions_match_wildcards_by_nats_rules,
    request_gets_a_reply_or_no_responders_or_a_timeout,
    kv_create_refuses_a_live_key_but_not_a_deleted_one,
    kv_update_succeeds_only_at_the_latest_revision,
    kv_revisions_grow_across_keys_and_entries_list_live_keys_by_key,
    kv_watch_delivers_current_entries_then_every_put_and_delete,
    kv_entries_expire_after_the_bucket_ttl,
    kv_on_a_missing_bucket_is_not_found,
    messages_over_the_payload_limit_are_refused,
);
