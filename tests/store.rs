//! Store and snapshot behaviour on the in-process broker.

mod suite;

use aether::MemoryBroker;

store_suite! { MemoryBroker::new();
    append_assigns_contiguous_versions,
    append_with_stale_version_returns_conflict,
    failed_multi_event_append_stores_nothing,
    stale_hint_in_another_process_costs_a_retry_not_correctness,
    fifty_concurrent_appends_at_one_version_yield_one_success,
    bad_input_gets_typed_errors_and_stores_nothing,
    save_event_requires_the_next_version,
    metadata_round_trips,
    damaged_record_is_reported_not_skipped,
    namespaces_and_odd_actor_ids_stay_isolated,
    snapshots_are_saved_and_guarded,
    event_stored_is_published_after_append_never_after_conflict,
    lost_reply_is_retried_into_exactly_one_commit,
    lost_reply_then_foreign_write_reports_conflict,
}
