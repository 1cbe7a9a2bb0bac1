//! Every role of `aether::permissions`, on a real nats-server in operator (JWT) mode, does its
//! work with exactly its generated permissions and is refused the rest with a typed
//! `PermissionDenied` naming the subject; the generated configuration block is enforced by a
//! server configured by file. Each refusal is printed (`REFUSED …`) with the time it took.

mod support;

use std::time::Duration;

use aether::broker::{Broker, BrokerError, PermissionAction};
use aether::permissions::{Role, for_role};
use aether::{
    EventStore, ExpectedVersion, NatsBroker, NatsOptions, Snapshot, StoreConfig, SystemClock,
};
use serde_json::json;
use support::nats_server::{NatsServer, ServerSettings};
use support::tenancy::{A, Tenancy, direct, event, refused, runtime};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_a_reader_and_an_inspector_each_do_their_work_and_are_refused_the_rest() {
    let t = Tenancy::start();
    let reader = t.connect("reader", Some((A, Role::Reader))).await;
    // Before the streams exist a reader cannot create them: it may look, not create.
    refused(
        "reader",
        "open a namespace whose streams do not exist",
        PermissionAction::Publish,
        "$JS.API.STREAM.CREATE.AETHER_EV_shop",
        EventStore::open(runtime(&reader, "r1"), StoreConfig::new(A)),
        |e| match e {
            aether::store::OpenError::Broker(b) => Some(b),
            _ => None,
        },
    )
    .await;

    // The writer creates the streams, appends, reads, snapshots.
    let writer = t.connect("writer", Some((A, Role::StoreWriter))).await;
    let store = EventStore::open(runtime(&writer, "w1"), StoreConfig::new(A))
        .await
        .expect("a writer creates its namespace's streams");
    // Enough commits that a read of the whole stream goes on with an ordered consumer (more
    // than 2,048 left after the first page), written by 50 concurrent actors.
    let actors = 50;
    let per_actor = 46;
    let mut tasks = Vec::new();
    for a in 0..actors {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for v in 0..per_actor {
                store
                    .append(&format!("a{a}"), ExpectedVersion::Exact(v), event(v))
                    .await
                    .expect("a writer appends");
            }
        }));
    }
    for task in tasks {
        task.await.expect("appender");
    }
    assert_eq!(
        store.events("a7", 1).await.unwrap().len(),
        per_actor as usize
    );
    assert_eq!(store.latest_version("a7").await.unwrap(), per_actor);
    store
        .save_snapshot(&Snapshot::new("a7", per_actor, json!({ "n": per_actor })))
        .await
        .expect("a writer saves snapshots");
    let names = store.names().clone();
    let whole = writer
        .read(&names.events_stream(), &names.events_pattern(), 1)
        .await
        .expect("a writer reads the whole stream");
    assert_eq!(whole.len(), (actors * per_actor) as usize);

    // The reader reads all of it, the long way too, and runs a projector.
    let rstore = EventStore::open(runtime(&reader, "r1"), StoreConfig::new(A))
        .await
        .expect("a reader opens existing streams");
    assert_eq!(
        rstore.events("a7", 1).await.unwrap().len(),
        per_actor as usize
    );
    let snapshot = rstore.latest_snapshot("a7").await.expect("reads snapshots");
    assert_eq!(snapshot.map(|s| s.version), Some(per_actor));
    let long = reader
        .read(&names.events_stream(), &names.events_pattern(), 1)
        .await
        .expect("a reader reads the whole stream");
    assert_eq!(long.len(), whole.len());
    let projector = aether::projection::Projector::open::<String>(rstore.clone(), "totals")
        .await
        .expect("a reader creates the projections bucket");
    let handled = projector
        .catch_up(|_page| async { Ok::<(), String>(()) })
        .await
        .expect("a reader moves its checkpoint");
    assert_eq!(handled, whole.len());
    refused(
        "reader",
        "append",
        PermissionAction::Publish,
        "aether.ev.shop.a7",
        rstore.append("a7", ExpectedVersion::Any, event(0)),
        |e| match e {
            aether::store::AppendError::Broker(b) => Some(b),
            _ => None,
        },
    )
    .await;
    refused(
        "reader",
        "save a snapshot",
        PermissionAction::Publish,
        "aether.snap.shop.a8",
        rstore.save_snapshot(&Snapshot::new("a8", 1, json!({}))),
        |e| match e {
            aether::store::SnapshotError::Broker(b) => Some(b),
            _ => None,
        },
    )
    .await;
    // A core publish is fire and forget: the first is dropped by the server, which says so
    // afterwards; the next one to the subject is refused before it is sent.
    reader
        .publish("aether.bus.shop", Default::default(), "x".into())
        .await
        .expect("the first publish leaves before the refusal comes back");
    let mut second = Err(BrokerError::Other {
        reason: "not tried".into(),
    });
    for _ in 0..100 {
        second = reader
            .publish("aether.bus.shop", Default::default(), "x".into())
            .await;
        if second.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    refused(
        "reader",
        "publish on the bus (after the first, dropped one)",
        PermissionAction::Publish,
        "aether.bus.shop",
        std::future::ready(second),
        direct,
    )
    .await;
    assert_eq!(
        store.latest_version("a7").await.unwrap(),
        per_actor,
        "nothing the reader tried was stored"
    );

    // The inspector reads everything and writes nothing.
    let inspector = t
        .connect("inspector", Some((A, Role::Inspector { cluster: None })))
        .await;
    let istore = EventStore::open(runtime(&inspector, "i1"), StoreConfig::new(A))
        .await
        .expect("an inspector opens existing streams");
    let page = istore.read_all(1, 10).await.expect("reads all");
    assert_eq!(page.commits.len(), 10);
    let long = inspector
        .read(&names.events_stream(), &names.events_pattern(), 1)
        .await
        .expect("an inspector reads the whole stream");
    assert_eq!(long.len(), whole.len());
    let checkpoints = aether::projection::Projector::open::<String>(istore.clone(), "totals")
        .await
        .expect("an inspector opens an existing projections bucket");
    let (position, _) = checkpoints
        .checkpoint::<String>()
        .await
        .expect("reads checkpoints");
    assert_eq!(position, whole.len() as u64 + 1, "after every commit");
    refused(
        "inspector",
        "append",
        PermissionAction::Publish,
        "aether.ev.shop.a1",
        istore.append("a1", ExpectedVersion::Any, event(0)),
        |e| match e {
            aether::store::AppendError::Broker(b) => Some(b),
            _ => None,
        },
    )
    .await;
    refused(
        "inspector",
        "move a projection checkpoint",
        PermissionAction::Publish,
        "$KV.aether-projections-shop.totals",
        inspector.kv_put("aether-projections-shop", "totals", "1".into()),
        direct,
    )
    .await;
    assert_eq!(
        t.server.consumer_count(),
        0,
        "long reads deleted their consumers"
    );
}

#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Counter {
    value: u64,
}

#[derive(serde::Serialize, serde::Deserialize)]
enum CounterEvent {
    Added { by: u64 },
}

impl aether::DomainEvent for CounterEvent {}

impl aether::Aggregate for Counter {
    const NAME: &'static str = "counter";
    type Command = u64;
    type Event = CounterEvent;
    type Rejection = String;

    fn handle(
        &self,
        _ctx: &aether::actor::CommandContext<'_>,
        by: &u64,
    ) -> Result<Vec<CounterEvent>, String> {
        Ok(vec![CounterEvent::Added { by: *by }])
    }

    fn apply(&mut self, CounterEvent::Added { by }: &CounterEvent) {
        self.value += by;
    }
}

pub type Node = aether::cluster::Cluster<NatsBroker, SystemClock>;
type Host = aether::ActorHost<Counter, NatsBroker, SystemClock, Node>;

const CLUSTER: &str = "shop-cluster";

async fn node(t: &Tenancy, id: &str) -> (Node, Host) {
    let role = Role::ClusterNode {
        cluster: CLUSTER.into(),
    };
    let broker = t.connect(id, Some((A, role))).await;
    let rt = runtime(&broker, id);
    let config = aether::cluster::ClusterConfig::new().name(CLUSTER);
    let cluster = Node::start(rt.clone(), config)
        .await
        .expect("a node starts its cluster");
    let store = EventStore::open(rt, StoreConfig::new(A))
        .await
        .expect("a node opens its namespace");
    let host = Host::new(store, cluster.clone(), aether::ActorConfig::new());
    host.serve().await.expect("a node serves its commands");
    (cluster, host)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_nodes_elect_assign_and_answer_each_others_commands_with_the_node_role() {
    let t = Tenancy::start();
    let (c1, h1) = node(&t, "n1").await;
    let (c2, h2) = node(&t, "n2").await;
    for _ in 0..200 {
        let epochs = [c1.view().epoch(), c2.view().epoch()];
        let members = c1.view().members.len() == 2 && c2.view().members.len() == 2;
        if members && epochs[0].is_some() && epochs[0] == epochs[1] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(c1.view().epoch().is_some(), "an assignment was published");
    // Commands sent from each node run on the owner, across nodes too (request and reply).
    let mut ran_on = std::collections::BTreeSet::new();
    for i in 0..12 {
        let actor = format!("counter-{i}");
        let sender = if i % 2 == 0 { &h1 } else { &h2 };
        let outcome = sender
            .send(&actor, &1)
            .await
            .expect("a command is answered");
        assert_eq!(Some(outcome.node_id.clone()), c1.owner_of(&actor));
        ran_on.insert(outcome.node_id);
    }
    assert_eq!(ran_on.len(), 2, "both nodes ran commands for the other");

    // The inspector of the cluster reads its buckets and writes nothing.
    let role = Role::Inspector {
        cluster: Some(CLUSTER.into()),
    };
    let inspector = t.connect("inspector", Some((A, role))).await;
    let buckets = aether::names::ClusterBuckets::new(CLUSTER);
    let members = inspector
        .kv_entries(&buckets.members)
        .await
        .expect("an inspector lists the members");
    assert_eq!(members.len(), 2);
    assert!(
        inspector
            .kv_get(&buckets.assignment, "assignment")
            .await
            .expect("an inspector reads the assignment")
            .is_some()
    );
    refused(
        "inspector",
        "write a member entry",
        PermissionAction::Publish,
        "$KV.shop-cluster-members.n9",
        inspector.kv_put(&buckets.members, "n9", "x".into()),
        direct,
    )
    .await;
    h1.leave().await;
    h2.leave().await;
}

/// The `permissions { … }` block the docs show is what a server configured by file enforces:
/// the same set as in the JWT, the same refusals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generated_configuration_block_is_enforced_by_a_server_configured_with_it() {
    let reader = for_role(A, &Role::Reader).unwrap();
    let server = NatsServer::start_with(ServerSettings {
        extra: Some(format!(
            "authorization {{\n  users: [\n    {{ user: admin, password: admin }}\n    \
             {{ user: reader, password: reader\n{}    }}\n  ]\n}}\n",
            reader.to_nats_config()
        )),
        ..Default::default()
    });
    let admin = NatsBroker::connect(NatsOptions::new(server.url()).user_password("admin", "admin"))
        .await
        .expect("admin connects");
    let store = EventStore::open(runtime(&admin, "admin"), StoreConfig::new(A))
        .await
        .unwrap();
    store
        .append("a1", ExpectedVersion::NoStream, event(1))
        .await
        .unwrap();
    let options = NatsOptions::new(server.url())
        .user_password("reader", "reader")
        .inbox_prefix(&reader.inbox_prefix);
    let broker = NatsBroker::connect(options).await.expect("reader connects");
    let rstore = EventStore::open(runtime(&broker, "r1"), StoreConfig::new(A))
        .await
        .expect("a reader opens existing streams");
    assert_eq!(rstore.events("a1", 1).await.unwrap().len(), 1);
    refused(
        "reader (configured by file)",
        "append",
        PermissionAction::Publish,
        "aether.ev.shop.a1",
        rstore.append("a1", ExpectedVersion::Any, event(2)),
        |e| match e {
            aether::store::AppendError::Broker(b) => Some(b),
            _ => None,
        },
    )
    .await;
    assert_eq!(store.latest_version("a1").await.unwrap(), 1);
}
