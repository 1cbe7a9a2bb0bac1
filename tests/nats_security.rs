//! Tenants on a real nats-server in operator (JWT) mode: credentials of one namespace are
//! refused everything in another and write nothing; expired, revoked and unknown credentials
//! are refused at connect; two accounts with the same namespace never meet; every refused
//! subscription is reported. Each refusal is printed (`REFUSED …`) with the time it took.
#![allow(clippy::disallowed_methods)] // measures real time-to-error, never asserts on it

mod support;

use std::time::{Duration, Instant};

use aether::broker::{Broker, BrokerError, KvConfig, NatsConnectError, PermissionAction, ReadFrom};
use aether::cluster::NodeId;
use aether::permissions::{Role, for_role};
use aether::{
    BusConfig, EventBus, EventStore, ExpectedVersion, Filter, NatsBroker, NatsOptions, StoreConfig,
    SystemClock,
};
use support::jwt::{Account, Operator, now, user};
use support::nats_server::{NatsServer, ServerSettings};
use support::tenancy::{A, B, Tenancy, direct, event, refused, runtime};

type Node = aether::cluster::Cluster<NatsBroker, SystemClock>;

/// The cluster of namespace A's nodes.
const CLUSTER: &str = "shop-cluster";

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
    let command = aether::names::command_subject(B, &NodeId::new("n1").unwrap(), "account");
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

/// The server reports a refused subscription only asynchronously, through a connection task
/// that can lag behind the caller: every one of 300 refused subscriptions must still come back
/// as `PermissionDenied` (with one round trip and a few yields, 6 of 300 did not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refused_subscription_is_reported_not_only_most() {
    let t = Tenancy::start();
    let writer = t.connect("writer", Some((A, Role::StoreWriter))).await;
    let mut accepted = Vec::new();
    for i in 0..300 {
        let subject = format!("aether.bus.other{i}");
        match writer.subscribe(&subject).await {
            Err(BrokerError::PermissionDenied { subject: s, .. }) if s == subject => {}
            other => accepted.push((subject, other.map(|_| ()))),
        }
    }
    assert!(accepted.is_empty(), "not reported as refused: {accepted:?}");
}
