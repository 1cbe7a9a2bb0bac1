//! A 3-node nats-server cluster with R3 streams, shared by the bodies of one test (starting a
//! cluster dominates the cost): a cross-process race has exactly one winner, and continuous
//! appends survive kill -9 of the stream leader and its restart with every acknowledged event
//! present exactly once.
#![allow(clippy::disallowed_methods)] // the failover schedule runs on real time

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aether::broker::Broker;
use aether::codec::{HEADER_COMMIT_ID, encode_actor_id};
use aether::{
    AppendError, EventStore, ExpectedVersion, NatsBroker, NatsOptions, NewEvent, Runtime,
    StoreConfig,
};
use support::nats_server::NatsCluster;
use support::race;

const TEST: &str = "r3_cluster_gives_racing_processes_one_winner_and_keeps_every_acknowledged_event_through_leader_kill";

#[test]
fn r3_cluster_gives_racing_processes_one_winner_and_keeps_every_acknowledged_event_through_leader_kill()
 {
    if race::is_worker() {
        race::worker_main();
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut cluster = NatsCluster::start();
    runtime.block_on(cross_process_race_has_one_winner(&cluster));
    runtime.block_on(leader_kill_loses_and_duplicates_nothing(&mut cluster));
    runtime.block_on(quorum_loss_is_unavailable_never_missing(&mut cluster));
    runtime
        .block_on(losing_stream_and_meta_leader_at_once_is_unavailable_never_missing(&mut cluster));
}

/// The meta leader, as `node` sees it (`/jsz`).
fn meta_leader(cluster: &mut NatsCluster, node: &str) -> Option<String> {
    let (_, body) = cluster.node_mut(node).monitor("/jsz")?;
    let jsz: serde_json::Value = serde_json::from_str(&body).ok()?;
    jsz["meta_cluster"]["leader"].as_str().map(str::to_owned)
}

/// Asks the JetStream API to move a leadership to `preferred` (server 2.11+).
async fn prefer_leader(broker: &NatsBroker, subject: String, preferred: &str) {
    let request = serde_json::json!({ "placement": { "preferred": preferred } });
    let _ = broker
        .client()
        .request(subject, request.to_string().into())
        .await;
}

/// The stream leader is also the meta leader, and it is killed while a client connected to
/// another server appends: for a moment nobody answers for the stream and nobody can say
/// which streams exist. Appends fail with retryable kinds, never `NotFound`.
async fn losing_stream_and_meta_leader_at_once_is_unavailable_never_missing(
    cluster: &mut NatsCluster,
) {
    // The meta leader is moved only with system-account rights: take whichever server holds
    // it, connect the client elsewhere, and move the stream's leadership there too.
    let mut doomed = None;
    for _ in 0..100 {
        doomed = meta_leader(cluster, "n1");
        if doomed.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let doomed = doomed.expect("the cluster has a meta leader");
    let client_node = ["n1", "n2", "n3"]
        .into_iter()
        .find(|n| *n != doomed)
        .expect("another server");
    let broker = NatsBroker::connect(
        NatsOptions::new(cluster.node_mut(client_node).url())
            .request_timeout(Duration::from_secs(2)),
    )
    .await
    .expect("connect");
    let store = r3_store(broker.clone(), "metaloss").await;
    let stream = "AETHER_EV_metaloss";
    cluster
        .wait_replicas_current(&broker, stream, Duration::from_secs(30))
        .await;
    for _ in 0..20 {
        let leader = cluster
            .stream_leader(&broker, stream, Duration::from_secs(10))
            .await;
        if leader == doomed {
            break;
        }
        prefer_leader(
            &broker,
            format!("$JS.API.STREAM.LEADER.STEPDOWN.{stream}"),
            &doomed,
        )
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        cluster
            .wait_replicas_current(&broker, stream, Duration::from_secs(30))
            .await;
    }
    let leader = cluster
        .stream_leader(&broker, stream, Duration::from_secs(10))
        .await;
    assert_eq!(
        (meta_leader(cluster, client_node), leader.clone()),
        (Some(doomed.clone()), doomed.clone()),
        "could not place both leaderships on {doomed}"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..12)
        .map(|i| {
            tokio::spawn(write_until_stopped(
                store.clone(),
                format!("m-{i}"),
                stop.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.node_mut(&doomed).kill();
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut acked = 0;
    for writer in writers {
        let log = writer.await.expect("writer");
        acked += log.acked.len();
        for (kind, n) in log.errors {
            *errors.entry(kind).or_default() += n;
        }
    }
    cluster.node_mut(&doomed).restart();
    let node = cluster.node_mut(&doomed);
    tokio::task::block_in_place(|| node.wait_healthy(Duration::from_secs(30)));
    println!("META+STREAM LEADER KILL: {acked} acknowledged; failures by kind: {errors:?}");
    for kind in errors.keys() {
        assert!(
            ["Unavailable", "Timeout", "Contended", "DeadlineExceeded"].contains(&kind.as_str()),
            "losing the stream and meta leader produced {kind}: {errors:?}"
        );
    }
}

/// With two of three servers down there is no stream leader and no meta leader: appends and
/// reads fail with retryable kinds (`Unavailable`, `Timeout`, `DeadlineExceeded`), never
/// `NotFound` — the stream is there, it just cannot answer — and once the servers are back,
/// the actor carries on where it was.
async fn quorum_loss_is_unavailable_never_missing(cluster: &mut NatsCluster) {
    let broker = NatsBroker::connect(
        NatsOptions::new(cluster.urls()).request_timeout(Duration::from_secs(1)),
    )
    .await
    .expect("connect");
    let mut config = StoreConfig::new("quorum").replicas(3);
    // Each attempt waits out the 1 s request timeout: keep the outage short.
    config.retry_max = 1;
    let store = EventStore::open(Runtime::system(broker.clone()), config)
        .await
        .expect("R3 store");
    let stream = "AETHER_EV_quorum";
    cluster
        .wait_replicas_current(&broker, stream, Duration::from_secs(30))
        .await;
    store
        .append(
            "q",
            ExpectedVersion::NoStream,
            vec![NewEvent::new("Before", serde_json::json!({}))],
        )
        .await
        .expect("append before the outage");
    let names: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
    for name in &names[..2] {
        cluster.node_mut(name).kill();
    }
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    let mut landed = 0;
    for i in 0..3 {
        match store
            .append(
                "q",
                ExpectedVersion::Any,
                vec![NewEvent::new("During", serde_json::json!({ "i": i }))],
            )
            .await
        {
            Ok(_) => landed += 1,
            Err(AppendError::Indeterminate { source, .. }) => {
                *kinds
                    .entry(format!(
                        "Indeterminate/{}",
                        error_kind(&AppendError::Broker(source))
                    ))
                    .or_default() += 1;
            }
            Err(e) => *kinds.entry(error_kind(&e)).or_default() += 1,
        }
        if let Err(e) = store.events("q", 1).await {
            *kinds
                .entry(format!("read/{}", error_kind(&AppendError::Read(e))))
                .or_default() += 1;
        }
    }
    println!("QUORUM LOSS: {landed} appends landed; failures by kind: {kinds:?}");
    assert!(
        !kinds.is_empty(),
        "without a quorum nothing can be acknowledged"
    );
    for kind in kinds.keys() {
        let kind = kind.rsplit('/').next().unwrap_or(kind);
        assert!(
            ["Unavailable", "Timeout", "DeadlineExceeded"].contains(&kind),
            "a quorum loss produced {kind}: {kinds:?}"
        );
    }
    for name in &names[..2] {
        cluster.node_mut(name).restart();
    }
    for name in &names[..2] {
        let node = cluster.node_mut(name);
        tokio::task::block_in_place(|| node.wait_healthy(Duration::from_secs(30)));
    }
    cluster
        .wait_replicas_current(&broker, stream, Duration::from_secs(30))
        .await;
    let mut after = None;
    for _ in 0..50 {
        match store
            .append(
                "q",
                ExpectedVersion::Any,
                vec![NewEvent::new("After", serde_json::json!({}))],
            )
            .await
        {
            Ok(outcome) => {
                after = Some(outcome);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let after = after.expect("appends work again once a quorum is back");
    let events = store.events("q", 1).await.expect("replay");
    assert_eq!(events.last().map(|e| e.version), Some(after.last_version()));
    assert_eq!(events[0].event_type, "Before");
}

async fn r3_store(broker: NatsBroker, namespace: &str) -> EventStore<NatsBroker> {
    EventStore::open(
        Runtime::system(broker),
        StoreConfig::new(namespace).replicas(3),
    )
    .await
    .expect("R3 store")
}

async fn cross_process_race_has_one_winner(cluster: &NatsCluster) {
    let broker = cluster.broker().await;
    let store = r3_store(broker.clone(), "race3").await;
    cluster
        .wait_replicas_current(&broker, "AETHER_EV_race3", Duration::from_secs(30))
        .await;
    store
        .append(
            "contested",
            ExpectedVersion::NoStream,
            vec![NewEvent::new("Opened", serde_json::json!({}))],
        )
        .await
        .expect("first event");
    // Every replica has the first event, so every worker starts from version 1.
    cluster
        .wait_replicas_current(&broker, "AETHER_EV_race3", Duration::from_secs(30))
        .await;
    let totals = tokio::task::block_in_place(|| {
        race::run_race(TEST, &cluster.urls(), "race3", 3, "contested", 1)
    });
    println!("R3 race: {totals:?}");
    assert_eq!(totals.successes, 1, "exactly one winner on R3: {totals:?}");
    let events = store.events("contested", 1).await.expect("events");
    assert_eq!(
        events.iter().map(|e| e.version).collect::<Vec<_>>(),
        [1, 2],
        "exactly one commit on top of version 1"
    );
}

const ACTORS: usize = 12;

#[derive(Default)]
struct WriterLog {
    /// (commit id, first version, last version) of every acknowledged append.
    acked: Vec<(String, u64, u64)>,
    /// Commit ids whose outcome the store could not determine.
    indeterminate: Vec<String>,
    /// Appends that failed definitely (nothing stored) or conflicted after an ambiguity.
    failed: u64,
    /// Errors other than conflicts and unknown outcomes, by kind.
    errors: BTreeMap<String, u64>,
}

/// A failover is transient: an append may fail with a conflict, an unknown outcome or a
/// retryable broker error, never with one that says the stream is gone or the input is bad.
fn error_kind(error: &AppendError) -> String {
    match error {
        AppendError::Broker(e) | AppendError::Read(aether::ReadError::Broker(e)) => {
            let kind = format!("{e:?}");
            kind.split([' ', '{', '(']).next().unwrap_or("").to_owned()
        }
        other => {
            let kind = format!("{other:?}");
            kind.split([' ', '{', '(']).next().unwrap_or("").to_owned()
        }
    }
}

async fn resync(store: &EventStore<NatsBroker>, actor: &str) -> u64 {
    loop {
        match store.latest_version(actor).await {
            Ok(v) => return v,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn write_until_stopped(
    store: EventStore<NatsBroker>,
    actor: String,
    stop: Arc<AtomicBool>,
) -> WriterLog {
    let mut log = WriterLog::default();
    let mut version = 0;
    let mut n = 0i64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        // Alternate one- and two-event commits: a commit is atomic either way.
        let events: Vec<NewEvent> = (0..(1 + n % 2))
            .map(|i| NewEvent::new("Written", serde_json::json!({ "n": n, "i": i })))
            .collect();
        match store
            .append(&actor, ExpectedVersion::Exact(version), events)
            .await
        {
            Ok(outcome) => {
                assert_eq!(outcome.first_version(), version + 1);
                let first = outcome.first_version();
                version = outcome.last_version();
                log.acked.push((outcome.commit_id, first, version));
            }
            Err(AppendError::Indeterminate { commit_id, .. }) => {
                log.indeterminate.push(commit_id);
                version = resync(&store, &actor).await;
            }
            Err(AppendError::Conflict(conflict)) => {
                log.failed += 1;
                version = conflict.actual;
            }
            Err(e) => {
                log.failed += 1;
                *log.errors.entry(error_kind(&e)).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                version = resync(&store, &actor).await;
            }
        }
    }
    log
}

async fn leader_kill_loses_and_duplicates_nothing(cluster: &mut NatsCluster) {
    let namespace = "failover";
    let stream = "AETHER_EV_failover";
    let writer_broker = NatsBroker::connect(
        NatsOptions::new(cluster.urls()).request_timeout(Duration::from_secs(2)),
    )
    .await
    .expect("connect");
    let mut config = StoreConfig::new(namespace).replicas(3);
    config.retry_max = 10;
    let store = EventStore::open(Runtime::system(writer_broker.clone()), config)
        .await
        .expect("store");
    cluster
        .wait_replicas_current(&writer_broker, stream, Duration::from_secs(30))
        .await;
    let leader = cluster
        .stream_leader(&writer_broker, stream, Duration::from_secs(10))
        .await;

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..ACTORS)
        .map(|i| {
            tokio::spawn(write_until_stopped(
                store.clone(),
                format!("actor-{i}"),
                stop.clone(),
            ))
        })
        .collect();
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.node_mut(&leader).kill();
    let killed_at = started.elapsed();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let new_leader = cluster
        .stream_leader(&writer_broker, stream, Duration::from_secs(10))
        .await;
    assert_ne!(new_leader, leader, "leadership moved off the killed node");
    cluster.node_mut(&leader).restart();
    tokio::task::block_in_place(|| {
        cluster
            .node_mut(&leader)
            .wait_healthy(Duration::from_secs(30))
    });
    let restarted_at = started.elapsed();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut logs = Vec::new();
    for writer in writers {
        logs.push(writer.await.expect("writer"));
    }
    cluster
        .wait_replicas_current(&writer_broker, stream, Duration::from_secs(30))
        .await;

    // Check from a fresh connection and fresh store (no hints).
    let checker = cluster.broker().await;
    let check_store = r3_store(checker.clone(), namespace).await;
    let (mut acked_commits, mut acked_events, mut found, mut lost, mut duplicated) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let (mut indeterminate, mut indeterminate_landed, mut failed) = (0u64, 0u64, 0u64);
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for log in &logs {
        for (kind, n) in &log.errors {
            *errors.entry(kind.clone()).or_default() += n;
        }
    }
    println!("FAILOVER errors by kind: {errors:?}");
    for kind in errors.keys() {
        assert!(
            ["Unavailable", "Timeout", "Contended", "DeadlineExceeded"].contains(&kind.as_str()),
            "a failover produced a {kind} error, which callers would take for a permanent one: {errors:?}"
        );
    }
    for (i, log) in logs.iter().enumerate() {
        let actor = format!("actor-{i}");
        let subject = format!("aether.ev.{namespace}.{}", encode_actor_id(&actor).unwrap());
        let records = checker.read(stream, &subject, 1).await.expect("read");
        let mut seen: BTreeMap<String, u64> = BTreeMap::new();
        for record in &records {
            let id = record
                .headers
                .get(HEADER_COMMIT_ID)
                .cloned()
                .expect("every record is a commit");
            *seen.entry(id).or_default() += 1;
        }
        duplicated += seen
            .values()
            .filter(|n| **n > 1)
            .map(|n| n - 1)
            .sum::<u64>();
        for (commit, first, last) in &log.acked {
            acked_commits += 1;
            acked_events += last - first + 1;
            match seen.get(commit) {
                Some(_) => found += 1,
                None => lost += 1,
            }
        }
        indeterminate += log.indeterminate.len() as u64;
        indeterminate_landed += log
            .indeterminate
            .iter()
            .filter(|c| seen.contains_key(*c))
            .count() as u64;
        failed += log.failed;
        // No phantom commits: everything stored was acknowledged or is an unknown outcome.
        for commit in seen.keys() {
            assert!(
                log.acked.iter().any(|(c, _, _)| c == commit) || log.indeterminate.contains(commit),
                "{actor}: commit {commit} was stored but never attempted"
            );
        }
        let replay = check_store
            .events_with_errors(&actor, 1)
            .await
            .expect("replay");
        assert!(replay.errors.is_empty(), "{actor}: {:?}", replay.errors);
        let versions: Vec<u64> = replay.events.iter().map(|e| e.version).collect();
        let expected: Vec<u64> = (1..=versions.len() as u64).collect();
        assert_eq!(versions, expected, "{actor}: versions contiguous from 1");
        if let Some((_, _, last)) = log.acked.last() {
            assert!(
                versions.len() as u64 >= *last,
                "{actor}: acknowledged version {last} missing"
            );
        }
    }
    println!(
        "FAILOVER leader={leader} killed_at={killed_at:?} restarted_at={restarted_at:?} \
         new_leader={new_leader} actors={ACTORS} acknowledged_commits={acked_commits} \
         acknowledged_events={acked_events} found={found} lost={lost} duplicated={duplicated} \
         indeterminate={indeterminate} indeterminate_landed={indeterminate_landed} failed={failed}"
    );
    assert_eq!(lost, 0, "acknowledged commits lost");
    assert_eq!(duplicated, 0, "commits stored twice");
    assert_eq!(found, acked_commits);
    assert!(
        acked_commits >= 100,
        "the writers made too little progress to test anything: {acked_commits}"
    );
}
