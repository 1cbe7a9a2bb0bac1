//! The cluster scenarios of `tests/cluster.rs` on a real nats-server: one fresh single-node
//! server per test, several nodes in this process, each node with its own connection. Real
//! time, default timings (lease TTL 3 s).

mod support;

use aether::{NatsBroker, NatsOptions};
use support::cluster_scenarios::*;
use support::nats_server::NatsServer;

fn nats_env(server: &NatsServer, name: &str) -> Env<NatsBroker> {
    let url = server.url();
    Env::new(name, move || {
        let url = url.clone();
        Box::pin(async move {
            NatsBroker::connect(NatsOptions::new(url))
                .await
                .expect("connect to the test server")
        })
    })
}

macro_rules! on_nats {
    ($($test:ident => $body:expr;)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                let server = NatsServer::start();
                let env = nats_env(&server, stringify!($test).split('_').next().unwrap());
                let body: &dyn Fn(&Env<NatsBroker>) -> futures::future::BoxFuture<'_, ()> = &$body;
                body(&env).await;
            }
        )*
    };
}

on_nats! {
    one_projector_per_name_runs_and_a_standby_takes_over_after_a_crash =>
        |env| Box::pin(one_projector_per_name_runs_and_a_standby_takes_over(env));
    three_nodes_join_elect_one_leader_and_converge =>
        |env| Box::pin(nodes_join_elect_one_leader_and_converge(env, 3));
    five_nodes_join_elect_one_leader_and_converge =>
        |env| Box::pin(nodes_join_elect_one_leader_and_converge(env, 5));
    a_stopped_leader_is_replaced_by_a_larger_token_at_once =>
        |env| Box::pin(async move { leader_loss_elects_a_larger_token(env, false).await; });
    a_crashed_leader_is_replaced_by_a_larger_token_after_the_lease_ttl =>
        |env| Box::pin(async move { leader_loss_elects_a_larger_token(env, true).await; });
    a_leaving_node_moves_only_its_own_shards =>
        |env| Box::pin(a_leave_moves_only_the_leavers_shards(env));
    a_joining_node_takes_exactly_the_minimum =>
        |env| Box::pin(a_join_moves_the_minimum(env));
    bad_input_and_live_duplicate_ids_are_refused_with_typed_errors =>
        |env| Box::pin(bad_input_and_duplicate_ids_are_refused(env));
    without_a_leader_routing_falls_back_to_the_ring =>
        |env| Box::pin(routing_falls_back_to_the_ring_without_a_leader(env));
    events_record_terms_publications_and_hosting_in_order =>
        |env| Box::pin(events_record_leadership_and_hosting(env));
    an_assignment_with_an_older_epoch_is_never_applied =>
        |env| Box::pin(an_older_epoch_is_never_applied(env));
    a_former_leaders_late_assignment_is_rebuilt_by_the_acting_leader =>
        |env| Box::pin(a_former_leaders_late_assignment_is_rebuilt(env));
}

/// Membership, lease and assignment polls leave nothing behind on the server: three nodes
/// running for 5 s (about 20 polls each) hold only their KV watches — three consumers per node
/// — however long they run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_polls_leave_no_consumer_behind() {
    let server = NatsServer::start();
    let env = nats_env(&server, "polls");
    let nodes = [
        env.start("n1").await,
        env.start("n2").await,
        env.start("n3").await,
    ];
    let refs: Vec<&_> = nodes.iter().collect();
    wait_converged(&env, &refs).await;
    let mut most = 0;
    for _ in 0..10 {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        most = most.max(server.consumer_count());
    }
    println!("POLLS most consumers seen with 3 nodes: {most}");
    assert!(
        most <= 3 * 3,
        "3 nodes hold {most} consumers; their watches need 9"
    );
    for node in &nodes {
        node.stop().await;
    }
}
