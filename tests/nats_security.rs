//! Securing a deployment, on a real nats-server in operator (JWT) mode: every role of
//! `aether::permissions` does its work with exactly its generated permissions and is refused the
//! rest with a typed `PermissionDenied` naming the subject; credentials of one namespace touch
//! nothing of another; expired and revoked credentials are refused at connect; two accounts
//! are two worlds. Each refusal is printed (`REFUSED …`) with the time it took.
#![allow(clippy::disallowed_methods)] // measures real time-to-error, never asserts on it

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use aether::broker::{Broker, BrokerError, KvConfig, NatsConnectError, PermissionAction, ReadFrom};
use aether::cluster::NodeId;
use aether::permissions::{Role, for_role};
use aether::{
    BusConfig, EventBus, EventStore, ExpectedVersion, Filter, NatsBroker, NatsOptions, NewEvent,
    Runtime, SharedRng, Snapshot, StoreConfig, SystemClock,
};
use serde_json::json;
use support::jwt::{Account, Operator, now, user};
use support::nats_server::{NatsServer, ServerSettings};
use tempfile::TempDir;

/// The namespace tenant A works in, and the one of tenant B.
const A: &str = "shop";
const B: &str = "bank";

/// One server in operator mode with one account, and a directory for `.creds` files.
struct Tenancy {
    server: NatsServer,
    account: Account,
    dir: TempDir,
}

impl Tenancy {
    fn start() -> Self {
        let operator = Operator::new();
        let account = operator.account("tenants");
        let server = NatsServer::start_with(ServerSettings {
            extra: Some(operator.server_config(&[&account])),
            ..Default::default()
        });
        let dir = tempfile::tempdir().expect("temp dir");
        Self {
            server,
            account,
            dir,
        }
    }

    /// A user of the account with `role` in `namespace` (`None`: allowed everything), connected
    /// with the role's inbox prefix.
    async fn connect(&self, name: &str, role: Option<(&str, Role)>) -> NatsBroker {
        let permissions = role.map(|(ns, role)| for_role(ns, &role).expect("valid names"));
        let user = user(
            &self.account,
            name,
            permissions.as_ref(),
            None,
            self.dir.path(),
        );
        let mut options = NatsOptions::new(self.server.url()).credentials_file(&user.creds);
        if let Some(p) = &permissions {
            options = options.inbox_prefix(&p.inbox_prefix);
        }
        NatsBroker::connect(options)
            .await
            .unwrap_or_else(|e| panic!("{name} connects: {e}"))
    }

    fn creds(&self, name: &str, role: Option<(&str, Role)>, expires: Option<i64>) -> PathBuf {
        let permissions = role.map(|(ns, role)| for_role(ns, &role).expect("valid names"));
        user(
            &self.account,
            name,
            permissions.as_ref(),
            expires,
            self.dir.path(),
        )
        .creds
    }
}

fn runtime(broker: &NatsBroker, node: &str) -> Runtime<NatsBroker, SystemClock> {
    Runtime::new(
        broker.clone(),
        SystemClock::new(),
        SharedRng::from_seed(node.len() as u64),
    )
    .with_node(NodeId::new(node).expect("node id"))
}

fn event(n: u64) -> Vec<NewEvent> {
    vec![NewEvent::new("Added", json!({ "n": n }))]
}

/// Runs `operation`, expects a `PermissionDenied` for `action` on `subject`, and prints it with
/// the time it took.
async fn refused<T: std::fmt::Debug, E: std::fmt::Debug>(
    who: &str,
    what: &str,
    action: PermissionAction,
    subject: &str,
    operation: impl std::future::Future<Output = Result<T, E>>,
    broker_error: impl Fn(&E) -> Option<&BrokerError>,
) {
    let started = Instant::now();
    let result = operation.await;
    let took = started.elapsed();
    let error = result.expect_err(&format!("{who}: {what} must be refused"));
    match broker_error(&error) {
        Some(BrokerError::PermissionDenied {
            action: a,
            subject: s,
            ..
        }) if *a == action && s == subject => {
            println!("REFUSED {who}: {what} -> PermissionDenied({a} {s:?}) in {took:?}");
        }
        _ => {
            panic!("{who}: {what}: expected PermissionDenied({action} {subject:?}), got {error:?}")
        }
    }
}

fn direct(e: &BrokerError) -> Option<&BrokerError> {
    Some(e)
}

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

impl aether::Aggregate for Counter {
    type Command = u64;
    type Rejection = String;

    fn handle(
        &self,
        _ctx: &aether::actor::CommandContext<'_>,
        by: &u64,
    ) -> Result<Vec<NewEvent>, String> {
        Ok(vec![NewEvent::new("Added", json!({ "by": by }))])
    }

    fn apply(&mut self, event: &aether::Event) {
        self.value += event.data["by"].as_u64().unwrap_or(0);
    }
}

type Node = aether::cluster::Cluster<NatsBroker, SystemClock>;
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

/// Everything tenant A's node may not do in namespace B, each refused at once with the subject;
/// afterwards B is exactly as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_of_namespace_a_are_refused_everything_in_namespace_b_and_write_nothing() {
    let t = Tenancy::start();
    // Tenant B's namespace, made by a user with every permission of the account.
    let admin = t.connect("admin", None).await;
    let bstore = EventStore::open(runtime(&admin, "admin"), StoreConfig::new(B))
        .await
        .unwrap();
    bstore
        .append("acct", ExpectedVersion::NoStream, event(1))
        .await
        .unwrap();
    let bnames = bstore.names().clone();
    let projections = bnames.projections_bucket();
    admin.kv_ensure(KvConfig::new(&projections)).await.unwrap();
    admin
        .kv_put(&projections, "totals", "7".into())
        .await
        .unwrap();
    let mut bus_b = admin.subscribe(&bnames.bus_subject()).await.unwrap();

    let role = Role::ClusterNode {
        cluster: CLUSTER.into(),
    };
    let a = t.connect("node-a", Some((A, role))).await;
    let who = "node of shop";
    let publish = PermissionAction::Publish;
    let subscribe = PermissionAction::Subscribe;
    let ev = bnames.events_stream();
    let pattern = bnames.events_pattern();
    let bus_subject = bnames.bus_subject();
    refused(
        who,
        "open the store of bank",
        publish,
        "$JS.API.STREAM.INFO.AETHER_EV_bank",
        EventStore::open(runtime(&a, "a1"), StoreConfig::new(B)),
        |e| match e {
            aether::store::OpenError::Broker(b) => Some(b),
            _ => None,
        },
    )
    .await;
    let subject = bnames.event_subject("acct").unwrap();
    let options = aether::broker::AppendOptions {
        expected_last_subject_sequence: Some(1),
        ..Default::default()
    };
    let append = a.append(&subject, Default::default(), "x".into(), options);
    refused(who, "append to bank", publish, &subject, append, direct).await;
    let snapshot = bnames.snapshot_subject("acct").unwrap();
    let append = a.append(
        &snapshot,
        Default::default(),
        "x".into(),
        Default::default(),
    );
    refused(
        who,
        "save a snapshot in bank",
        publish,
        &snapshot,
        append,
        direct,
    )
    .await;
    let last = a.last(&ev, &subject, ReadFrom::AnyReplica);
    let direct_last = format!("$JS.API.DIRECT.GET.AETHER_EV_bank.{subject}");
    refused(
        who,
        "read the last commit",
        publish,
        &direct_last,
        last,
        direct,
    )
    .await;
    let last = a.last(&ev, &subject, ReadFrom::Leader);
    let msg_get = "$JS.API.STREAM.MSG.GET.AETHER_EV_bank";
    refused(who, "read from the leader", publish, msg_get, last, direct).await;
    let next = a.next(&ev, &subject, 1, ReadFrom::AnyReplica);
    let direct_get = "$JS.API.DIRECT.GET.AETHER_EV_bank";
    refused(
        who,
        "read the next commit",
        publish,
        direct_get,
        next,
        direct,
    )
    .await;
    let read = a.read(&ev, &pattern, 1);
    refused(who, "read the stream", publish, direct_get, read, direct).await;
    let read = a.read_batch(&ev, &pattern, 1, 10);
    refused(who, "read a page of all", publish, direct_get, read, direct).await;
    let kv_info = "$JS.API.STREAM.INFO.KV_aether-projections-bank";
    let ensure = a.kv_ensure(KvConfig::new(&projections));
    refused(
        who,
        "open bank's projections",
        publish,
        kv_info,
        ensure,
        direct,
    )
    .await;
    let get = a.kv_get(&projections, "totals");
    refused(who, "read a checkpoint", publish, kv_info, get, direct).await;
    let put = a.kv_put(&projections, "totals", "0".into());
    refused(who, "move a checkpoint", publish, kv_info, put, direct).await;
    let sub = a.subscribe(&bus_subject);
    refused(
        who,
        "subscribe to bank's bus",
        subscribe,
        "aether.bus.bank",
        sub,
        direct,
    )
    .await;
    let sub = a.subscribe("aether.bus.>");
    refused(
        who,
        "subscribe to every bus",
        subscribe,
        "aether.bus.>",
        sub,
        direct,
    )
    .await;
    let sub = a.subscribe("_INBOX_bank.>");
    refused(
        who,
        "subscribe to bank's replies",
        subscribe,
        "_INBOX_bank.>",
        sub,
        direct,
    )
    .await;
    let bus = EventBus::new(&runtime(&a, "a1"), BusConfig::new().namespaces([B]));
    refused(
        who,
        "connect a bus to bank",
        subscribe,
        "aether.bus.bank",
        bus.connect(),
        direct,
    )
    .await;
    let command = aether::names::command_subject(B, &NodeId::new("n1").unwrap());
    let request = a.request(
        &command,
        Default::default(),
        "x".into(),
        Duration::from_secs(5),
    );
    refused(
        who,
        "send a command in bank",
        publish,
        &command,
        request,
        direct,
    )
    .await;
    let config = aether::cluster::ClusterConfig::new().name("bank-cluster");
    refused(
        who,
        "start a node of bank's cluster",
        publish,
        "$JS.API.STREAM.INFO.KV_bank-cluster-members",
        Node::start(runtime(&a, "a1"), config),
        |e| match e {
            aether::cluster::StartError::Broker(b) => Some(b),
            _ => None,
        },
    )
    .await;
    // A core publish leaves before the server refuses it; the next one is refused unsent.
    a.publish(&bus_subject, Default::default(), "forged".into())
        .await
        .expect("the first publish leaves before the refusal comes back");
    let mut again = a
        .publish(&bus_subject, Default::default(), "forged".into())
        .await;
    for _ in 0..100 {
        if again.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        again = a
            .publish(&bus_subject, Default::default(), "forged".into())
            .await;
    }
    let again = std::future::ready(again);
    refused(
        who,
        "publish on bank's bus (again)",
        publish,
        &bus_subject,
        again,
        direct,
    )
    .await;

    // Bank is as it was: one commit, no snapshot, the checkpoint untouched, no bus message
    // but the marker sent after every attempt, no bucket of bank's cluster.
    let commits = admin.read(&ev, &bnames.events_pattern(), 1).await.unwrap();
    assert_eq!(commits.len(), 1);
    let snapshots = admin
        .read(&bnames.snapshots_stream(), ">", 1)
        .await
        .unwrap();
    assert!(snapshots.is_empty());
    let totals = admin.kv_get(&projections, "totals").await.unwrap().unwrap();
    assert_eq!(totals.value, "7");
    admin
        .publish(&bus_subject, Default::default(), "marker".into())
        .await
        .unwrap();
    let first = bus_b.next().await.unwrap();
    assert_eq!(
        first.payload, "marker",
        "no forged bus message reached bank"
    );
    let missing = admin.kv_entries("bank-cluster-members").await;
    assert!(
        matches!(missing, Err(BrokerError::NotFound { .. })),
        "{missing:?}"
    );
}

/// Connects with `creds` and returns the error with the time it took.
async fn refused_at_connect(url: &str, creds: &std::path::Path, what: &str) -> NatsConnectError {
    let started = Instant::now();
    let result = NatsBroker::connect(NatsOptions::new(url).credentials_file(creds)).await;
    let took = started.elapsed();
    let error = result.expect_err(what);
    println!("REFUSED connect with {what} -> {error:?} in {took:?}");
    error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_revoked_and_unknown_credentials_are_refused_at_connect_with_a_typed_error() {
    let operator = Operator::new();
    let account = operator.account("tenants");
    let dir = tempfile::tempdir().expect("temp dir");
    let revoked = user(&account, "revoked", None, None, dir.path());
    // The account as the server knows it revokes that user's JWTs issued so far.
    let account = operator.account_revoking(&account, &[revoked.key.public_key()]);
    let server = NatsServer::start_with(ServerSettings {
        extra: Some(operator.server_config(&[&account])),
        ..Default::default()
    });
    let url = server.url();
    let fresh = user(&account, "fresh", None, Some(now() + 3600), dir.path());
    NatsBroker::connect(NatsOptions::new(&url).credentials_file(&fresh.creds))
        .await
        .expect("unexpired, unrevoked credentials connect");

    let expired = user(&account, "expired", None, Some(now() - 60), dir.path());
    let error = refused_at_connect(&url, &expired.creds, "expired credentials").await;
    assert!(
        matches!(error, NatsConnectError::Authentication { .. }),
        "{error:?}"
    );
    let error = refused_at_connect(&url, &revoked.creds, "revoked credentials").await;
    assert!(
        matches!(error, NatsConnectError::Authentication { .. }),
        "{error:?}"
    );
    let stranger = Operator::new().account("stranger");
    let unknown = user(&stranger, "unknown", None, None, dir.path());
    let error =
        refused_at_connect(&url, &unknown.creds, "an account the server does not know").await;
    assert!(
        matches!(error, NatsConnectError::Authentication { .. }),
        "{error:?}"
    );

    // Credentials that may not ask for JetStream's account info: typed, not a timeout.
    let mut narrow = for_role(A, &Role::StoreWriter).unwrap();
    narrow.publish.allow.retain(|s| s != "$JS.API.INFO");
    let narrow = user(&account, "narrow", Some(&narrow), None, dir.path());
    let started = Instant::now();
    let error = NatsBroker::connect(
        NatsOptions::new(&url)
            .credentials_file(&narrow.creds)
            .inbox_prefix(aether::names::inbox_prefix(A)),
    )
    .await
    .expect_err("no $JS.API.INFO");
    println!(
        "REFUSED connect without $JS.API.INFO -> {error:?} in {:?}",
        started.elapsed()
    );
    match error {
        NatsConnectError::PermissionDenied { action, subject } => {
            assert_eq!(action, PermissionAction::Publish);
            assert_eq!(subject, "$JS.API.INFO");
        }
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
    // Without the role's inbox prefix every reply would be refused: typed too.
    let writer = user(
        &account,
        "default-inbox",
        Some(&for_role(A, &Role::StoreWriter).unwrap()),
        None,
        dir.path(),
    );
    let started = Instant::now();
    let error = NatsBroker::connect(NatsOptions::new(&url).credentials_file(&writer.creds))
        .await
        .expect_err("the default inbox is not the role's");
    println!(
        "REFUSED connect with the default inbox -> {error:?} in {:?}",
        started.elapsed()
    );
    assert!(
        matches!(
            &error,
            NatsConnectError::PermissionDenied { action: PermissionAction::Subscribe, subject }
                if subject.starts_with("_INBOX.")
        ),
        "{error:?}"
    );
}

/// Two accounts using the same namespace name are two worlds: JetStream, KV and subjects are
/// per account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_accounts_with_the_same_namespace_never_see_each_other() {
    let operator = Operator::new();
    let x = operator.account("tenant-x");
    let y = operator.account("tenant-y");
    let server = NatsServer::start_with(ServerSettings {
        extra: Some(operator.server_config(&[&x, &y])),
        ..Default::default()
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let connect = |account: &Account, name: &str| {
        let creds = user(account, name, None, None, dir.path()).creds;
        let url = server.url();
        async move {
            NatsBroker::connect(NatsOptions::new(url).credentials_file(creds))
                .await
                .expect("connect")
        }
    };
    let bx = connect(&x, "x").await;
    let by = connect(&y, "y").await;
    let sx = EventStore::open(runtime(&bx, "x1"), StoreConfig::new(A))
        .await
        .unwrap();
    let sy = EventStore::open(runtime(&by, "y1"), StoreConfig::new(A))
        .await
        .unwrap();
    // Each account creates actor "a" as new, at version 1: neither sees the other's.
    let ox = sx
        .append("a", ExpectedVersion::NoStream, event(1))
        .await
        .unwrap();
    let oy = sy
        .append("a", ExpectedVersion::NoStream, event(2))
        .await
        .unwrap();
    assert_eq!((ox.last_version(), oy.last_version()), (1, 1));
    assert_eq!(sx.events("a", 1).await.unwrap()[0].data["n"], 1);
    assert_eq!(sy.events("a", 1).await.unwrap()[0].data["n"], 2);
    assert_eq!(sx.read_all(1, 10).await.unwrap().commits.len(), 1);
    // Projections and buses are per account too.
    let px = aether::projection::Projector::open::<String>(sx.clone(), "p")
        .await
        .unwrap();
    px.catch_up(|_| async { Ok::<(), String>(()) })
        .await
        .unwrap();
    let py = aether::projection::Projector::open::<String>(sy.clone(), "p")
        .await
        .unwrap();
    assert_eq!(
        py.checkpoint::<String>().await.unwrap(),
        (1, 0),
        "y's checkpoint untouched"
    );
    let bus_y = EventBus::connected(&runtime(&by, "y1"), BusConfig::new())
        .await
        .unwrap();
    let mut heard_y = bus_y.subscribe(A, Filter::all()).unwrap();
    let bus_x = EventBus::connected(&runtime(&bx, "x1"), BusConfig::new())
        .await
        .unwrap();
    bus_x.publish(A, &ox.events).await.unwrap();
    // A publication inside y, after x's, is the first thing y's bus hears.
    let marker = EventBus::connected(&runtime(&by, "y2"), BusConfig::new())
        .await
        .unwrap();
    marker.publish(A, &oy.events).await.unwrap();
    let first = heard_y.recv().await.unwrap();
    assert_eq!(first.data["n"], 2, "x's bus message never reached y");
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
