//! Generic test bodies for the store and the bus, run against every broker.
//!
//! Each body takes a broker and a namespace no other body uses, so the same bodies run on a fresh
//! `MemoryBroker` per test (`tests/store.rs`, `tests/bus.rs`) and on one shared real nats-server
//! (the NATS test files). Use [`store_suite!`] / [`bus_suite!`] to generate one `#[tokio::test]`
//! per body for a broker constructor.

pub mod bus;
pub mod projection;
pub mod store;
pub mod typed;

/// A namespace for a test body: its name, cut to the 64-character limit.
pub fn namespace_for(body: &str) -> String {
    body.chars().take(64).collect()
}

/// Generates one tokio test per store body. `$make` is an expression yielding a broker.
#[macro_export]
macro_rules! store_suite {
    ($make:expr; $($body:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $body() {
                let broker = $make;
                let ns = $crate::support::bodies::namespace_for(stringify!($body));
                $crate::support::bodies::store::$body(broker, ns).await;
            }
        )*
    };
}

/// Generates one tokio test per bus body.
#[macro_export]
macro_rules! bus_suite {
    ($make:expr; $($body:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $body() {
                let broker = $make;
                let ns = $crate::support::bodies::namespace_for(stringify!($body));
                $crate::support::bodies::bus::$body(broker, ns).await;
            }
        )*
    };
}

/// Calls `$callback! { $prefix... <every store body>, }`: the one list of store bodies, so every
/// broker runs all of them.
#[macro_export]
macro_rules! store_bodies {
    ($callback:ident ! { $($prefix:tt)* }) => {
        $callback! { $($prefix)*
            append_assigns_contiguous_versions,
            append_with_stale_version_returns_conflict,
            failed_multi_event_append_stores_nothing,
            stale_hint_in_another_process_costs_a_retry_not_correctness,
            fifty_concurrent_appends_at_one_version_yield_one_success,
            bad_input_gets_typed_errors_and_stores_nothing,
            save_event_requires_the_next_version,
            metadata_round_trips,
            damaged_record_is_reported_not_skipped,
            a_truncated_commit_with_good_headers_decides_no_version,
            headers_claiming_a_huge_version_decide_no_version,
            headers_disagreeing_with_the_body_mark_the_record_damaged,
            plausible_commits_out_of_place_decide_no_version,
            namespaces_and_odd_actor_ids_stay_isolated,
            snapshots_are_saved_and_guarded,
            event_stored_is_published_after_append_never_after_conflict,
            lost_reply_is_retried_into_exactly_one_commit,
            lost_reply_then_foreign_write_reports_conflict,
            a_write_pending_on_a_cut_off_leader_is_unknown_not_a_conflict,
            a_stale_leaders_refusal_of_a_stored_commit_is_a_success,
            an_unchecked_refusal_is_unknown_not_a_conflict,
            read_all_pages_through_every_actor_in_commit_order,
            projections_see_every_commit_once_per_checkpoint_and_are_fenced,
            loading_after_a_snapshot_reads_only_what_follows_it,
            under_retention_expired_versions_are_a_typed_condition_and_snapshots_carry_on,
            a_keyed_append_called_again_returns_the_original_outcome,
            commit_status_answers_stored_superseded_or_not_yet,
            a_live_projector_catches_up_then_follows_with_no_gap_or_duplicate,
            three_generations_of_an_event_replay_as_the_current_type,
            snapshots_of_an_older_state_version_are_lifted_or_skipped,
            an_event_that_does_not_decode_stops_the_load_with_a_typed_error,
            a_keyed_command_runs_once_however_often_it_is_retried,
            send_returns_the_owners_errors_typed,
            two_aggregate_types_share_a_namespace,
            an_event_stream_yields_what_events_returns_a_page_at_a_time,
            an_event_that_would_not_read_back_is_refused_before_it_is_stored,
            a_live_projector_without_a_bus_follows_by_polling,
            the_lag_counts_what_is_not_yet_projected,
            a_reset_rebuilds_the_projection_from_the_first_record,
            a_standby_instance_takes_over_without_losing_a_commit,
        }
    };
}

/// Calls `$callback! { $prefix... <every bus body>, }`.
#[macro_export]
macro_rules! bus_bodies {
    ($callback:ident ! { $($prefix:tt)* }) => {
        $callback! { $($prefix)*
            subscribers_get_events_by_namespace_and_filter,
            lagging_subscriber_is_told_how_many_it_missed,
            other_nodes_receive_once_and_own_publications_are_not_doubled,
            deliveries_carry_their_origin_and_are_numbered_in_order,
            gaps_in_an_origins_numbering_are_reported_and_repeats_dropped,
            a_publication_too_large_for_one_message_is_refused,
            bad_namespace_patterns_are_refused,
            a_subscription_is_a_stream_that_ends_with_the_bus,
        }
    };
}
