//! The broker conformance suite (bodies in `tests/support/conformance.rs`) run against the
//! memory broker and, with feature `nats`, against a real nats-server started per test.

mod support;

macro_rules! conformance {
    ($($body:ident),* $(,)?) => {
        /// The embedded memory broker.
        mod memory {
            $(
                #[tokio::test]
                async fn $body() {
                    crate::support::conformance::$body(aether::MemoryBroker::new()).await;
                }
            )*
        }

        /// A real nats-server (single node), one per test.
        #[cfg(feature = "nats")]
        mod nats {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $body() {
                    let server = crate::support::nats_server::NatsServer::start();
                    let broker = server.broker().await;
                    crate::support::conformance::$body(broker).await;
                }
            )*
        }

        #[test]
        fn every_conformance_body_is_run() {
            let run: &[&str] = &[$(stringify!($body)),*];
            assert_eq!(run, crate::support::conformance::BODIES);
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
