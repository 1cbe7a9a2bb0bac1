//! The actor runtime on a real cluster (memory broker, tokio's paused clock): commands sent from
//! any node run on the owner of the actor's shard, and keep being answered when a node leaves
//! and its shards move.

use std::time::Duration;

use aether::actor::CommandContext;
use aether::cluster::{Cluster, ClusterConfig, NodeId};
use aether::{
    ActorConfig, ActorHost, Aggregate, DomainEvent, EventStore, MemoryBroker, Runtime, SharedRng,
    StoreConfig, SystemClock,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Default, Serialize, Deserialize)]
struct Counter {
    value: u64,
}

#[derive(Serialize, Deserialize)]
enum CounterEvent {
    Added {
        by: u64,
        node: String,
        epoch: Option<u64>,
        on: u64,
    },
}

impl DomainEvent for CounterEvent {}

impl Aggregate for Counter {
    const NAME: &'static str = "counter";
    type Command = u64;
    type Event = CounterEvent;
    type Rejection = String;

    /// Records who decided, under which assignment epoch, on which version.
    fn handle(&self, ctx: &CommandContext<'_>, by: &u64) -> Result<Vec<CounterEvent>, String> {
        Ok(vec![CounterEvent::Added {
            by: *by,
            node: ctx.node_id.to_string(),
            epoch: ctx.epoch,
            on: ctx.version,
        }])
    }

    fn apply(&mut self, CounterEvent::Added { by, .. }: &CounterEvent) {
        self.value += by;
    }
}

type Node = Cluster<MemoryBroker, SystemClock>;
type Host = ActorHost<Counter, MemoryBroker, SystemClock, Node>;

/// One node: its id is configured once, in the runtime every component takes.
async fn node(broker: &MemoryBroker, id: &str, seed: u64) -> (Node, Host) {
    let rt = Runtime::new(
        broker.clone(),
        SystemClock::new(),
        SharedRng::from_seed(seed),
    )
    .with_node(NodeId::new(id).unwrap());
    let cluster = Cluster::start(rt.clone(), ClusterConfig::new())
        .await
        .unwrap();
    let store = EventStore::open(rt, StoreConfig::new("counters"))
        .await
        .unwrap();
    let host = ActorHost::new(store, cluster.clone(), ActorConfig::new());
    host.serve().await.unwrap();
    (cluster, host)
}

async fn converge(nodes: &[&Node]) {
    for _ in 0..400 {
        let epochs: Vec<Option<u64>> = nodes.iter().map(|n| n.view().epoch()).collect();
        let members_ok = nodes.iter().all(|n| n.view().members.len() == nodes.len());
        if members_ok && epochs[0].is_some() && epochs.iter().all(|e| *e == epochs[0]) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("cluster did not converge");
}

#[tokio::test(start_paused = true)]
async fn commands_run_on_the_shard_owner_and_survive_a_node_leaving() {
    let broker = MemoryBroker::new();
    let (c1, h1) = node(&broker, "n1", 1).await;
    let (c2, h2) = node(&broker, "n2", 2).await;
    let (c3, h3) = node(&broker, "n3", 3).await;
    converge(&[&c1, &c2, &c3]).await;

    let actors: Vec<String> = (0..30).map(|i| format!("counter-{i}")).collect();
    let mut ran_on = std::collections::BTreeSet::new();
    for (i, actor) in actors.iter().enumerate() {
        let sender = [&h1, &h2, &h3][i % 3];
        let outcome = sender.send(actor, &1).await.unwrap();
        let owner = c1.owner_of(actor).unwrap();
        assert_eq!(outcome.node_id, owner, "ran on the owner of {actor}");
        // The decision saw the owner's node id, the epoch it had applied, and version 0.
        let decided = &outcome.events[0].data;
        assert_eq!(decided["node"], json!(owner.as_str()));
        assert_eq!(decided["epoch"], json!(c1.view().epoch()));
        assert_eq!(decided["on"], json!(0));
        ran_on.insert(outcome.node_id);
    }
    assert_eq!(ran_on.len(), 3, "30 actors spread over all three nodes");

    // n3 leaves cleanly in one call; its shards move to n1 and n2, and commands keep being
    // answered.
    h3.leave().await;
    assert!(
        c3.route("counter-1").is_none(),
        "a node that left routes nothing"
    );
    converge(&[&c1, &c2]).await;
    for actor in &actors {
        let outcome = h1.send(actor, &1).await.unwrap();
        assert_ne!(outcome.node_id.as_str(), "n3");
        assert_eq!(
            outcome.version, 2,
            "{actor}: second command, second version"
        );
    }
    let events = h2.store().events("counter-7", 1).await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![1, 2]
    );
}
