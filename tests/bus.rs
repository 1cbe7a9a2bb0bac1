//! Bus behaviour on the in-process broker.

mod suite;

use aether::MemoryBroker;

bus_suite! { MemoryBroker::new();
    subscribers_get_events_by_namespace_and_filter,
    lagging_subscriber_is_told_how_many_it_missed,
    other_nodes_receive_once_and_own_publications_are_not_doubled,
    bad_namespace_patterns_are_refused,
}
