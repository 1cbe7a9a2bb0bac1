//! The cluster on the memory broker, several nodes in one process, under tokio's paused clock:
//! time only advances when every task waits, so lease TTLs and failovers take no wall time and
//! every run is the same. The scenario bodies are shared with `tests/cluster_nats.rs`.

mod cluster_scenarios;

use aether::{MemoryBroker, SystemClock};
use cluster_scenarios::*;

fn memory_env(name: &str) -> Env<MemoryBroker> {
    let broker = MemoryBroker::with_clock(SystemClock::new());
    Env::new(name, move || {
        let b = broker.clone();
        Box::pin(async move { b })
    })
}

#[tokio::test(start_paused = true)]
async fn three_nodes_join_elect_one_leader_and_converge() {
    nodes_join_elect_one_leader_and_converge(&memory_env("three"), 3).await;
}

#[tokio::test(start_paused = true)]
async fn five_nodes_join_elect_one_leader_and_converge() {
    nodes_join_elect_one_leader_and_converge(&memory_env("five"), 5).await;
}

#[tokio::test(start_paused = true)]
async fn a_stopped_leader_is_replaced_by_a_larger_token_at_once() {
    leader_loss_elects_a_larger_token(&memory_env("stop"), false).await;
}

#[tokio::test(start_paused = true)]
async fn a_crashed_leader_is_replaced_by_a_larger_token_after_the_lease_ttl() {
    leader_loss_elects_a_larger_token(&memory_env("crash"), true).await;
}

#[tokio::test(start_paused = true)]
async fn a_leaving_node_moves_only_its_own_shards() {
    a_leave_moves_only_the_leavers_shards(&memory_env("leave")).await;
}

#[tokio::test(start_paused = true)]
async fn a_joining_node_takes_exactly_the_minimum() {
    a_join_moves_the_minimum(&memory_env("join")).await;
}

#[tokio::test(start_paused = true)]
async fn bad_input_and_live_duplicate_ids_are_refused_with_typed_errors() {
    bad_input_and_duplicate_ids_are_refused(&memory_env("bad")).await;
}

#[tokio::test(start_paused = true)]
async fn without_a_leader_routing_falls_back_to_the_ring() {
    routing_falls_back_to_the_ring_without_a_leader(&memory_env("ring")).await;
}

#[tokio::test(start_paused = true)]
async fn events_record_terms_publications_and_hosting_in_order() {
    events_record_leadership_and_hosting(&memory_env("events")).await;
}

#[tokio::test(start_paused = true)]
async fn an_assignment_with_an_older_epoch_is_never_applied() {
    an_older_epoch_is_never_applied(&memory_env("stale")).await;
}
