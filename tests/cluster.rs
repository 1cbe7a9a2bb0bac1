//! The cluster on the memory broker, several nodes in one process, under tokio's paused clock:
//! time only advances when every task waits, so lease TTLs and failovers take no wall time and
//! every run is the same. The scenario bodies are shared with `tests/cluster_nats.rs`.

mod support;

use aether::{MemoryBroker, SystemClock};
use support::cluster_scenarios::*;

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

#[tokio::test(start_paused = true)]
async fn a_former_leaders_late_assignment_is_rebuilt_by_the_acting_leader() {
    a_former_leaders_late_assignment_is_rebuilt(&memory_env("late")).await;
}

/// The planted-bug switches change behaviour (the simulation relies on them having teeth).
#[cfg(feature = "sim")]
mod planted {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use aether::cluster::{Cluster, ClusterConfig, ClusterEvent, ClusterEventKind, NodeId};
    use aether::planted::PlantedBugs;
    use aether::{Broker, Clock, MemoryBroker, Runtime, SharedRng, SystemClock};

    async fn node(
        broker: &MemoryBroker,
        bugs: PlantedBugs,
    ) -> (
        Cluster<MemoryBroker, SystemClock>,
        Arc<Mutex<Vec<ClusterEvent>>>,
    ) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        let rt = Runtime::new(broker.clone(), SystemClock::new(), SharedRng::from_seed(1))
            .with_node(NodeId::new("n").unwrap())
            .with_planted_bugs(bugs);
        let config = ClusterConfig::new();
        let node =
            Cluster::start_with_observer(rt, config, move |e| sink.lock().unwrap().push(e.clone()))
                .await
                .unwrap();
        (node, log)
    }

    fn lease_spans(log: &Mutex<Vec<ClusterEvent>>) -> Vec<Duration> {
        log.lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e.kind {
                ClusterEventKind::LeadershipAcquired { deadline, .. } => Some(deadline - e.at),
                _ => None,
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn leader_ignores_lease_deadline_extends_acting_to_the_full_ttl() {
        let config = ClusterConfig::new();
        let (good, good_log) = node(
            &MemoryBroker::with_clock(SystemClock::new()),
            PlantedBugs::default(),
        )
        .await;
        let bugs = PlantedBugs {
            leader_ignores_lease_deadline: true,
            ..PlantedBugs::default()
        };
        let (bad, bad_log) = node(&MemoryBroker::with_clock(SystemClock::new()), bugs).await;
        SystemClock::new().sleep(Duration::from_secs(1)).await;
        assert!(good.is_leader() && bad.is_leader());
        assert!(lease_spans(&good_log)[0] <= config.lease_step_down_after);
        assert!(lease_spans(&bad_log)[0] >= config.lease_ttl);
        good.stop().await;
        bad.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn apply_assignment_out_of_order_goes_back_to_an_older_epoch() {
        let broker = MemoryBroker::with_clock(SystemClock::new());
        let bugs = PlantedBugs {
            apply_assignment_out_of_order: true,
            ..PlantedBugs::default()
        };
        let (n, log) = node(&broker, bugs).await;
        let clock = SystemClock::new();
        while n.view().epoch().is_none() {
            clock.sleep(Duration::from_millis(10)).await;
        }
        let first = n.assignment().unwrap();
        // A second member forces epoch 2; then KV is set back to epoch 1.
        broker
            .kv_put(
                "aether-members",
                "other",
                bytes::Bytes::from_static(b"{\"incarnation\":\"x\"}"),
            )
            .await
            .unwrap();
        while n.view().epoch() == Some(first.epoch()) {
            clock.sleep(Duration::from_millis(10)).await;
        }
        broker
            .kv_put("aether-assignment", "assignment", first.encode())
            .await
            .unwrap();
        clock.sleep(Duration::from_millis(100)).await;
        let went_back = log.lock().unwrap().iter().any(|e| {
            matches!(e.kind, ClusterEventKind::AssignmentApplied { epoch, previous_epoch: Some(p), .. } if epoch < p)
        });
        assert!(went_back, "the planted bug must apply the older epoch");
        n.stop().await;
    }
}

#[tokio::test(start_paused = true)]
async fn one_projector_per_name_runs_and_a_standby_takes_over_after_a_crash() {
    one_projector_per_name_runs_and_a_standby_takes_over(&memory_env("proj")).await;
}
