//! The simulation's replicated broker model (`sim/src/broker/replicas.rs`) held against a real
//! 3-node nats-server cluster with R3 streams. The model assumes: a write is acknowledged once a
//! quorum has it; followers apply it later; a direct get (`ReadFrom::AnyReplica`) may be
//! answered by a follower and be stale, but never holds what was not written; a leader read
//! (`ReadFrom::Leader`) sees every acknowledged write; after a stream-leader failover the new
//! leader holds every acknowledged write, and during the election operations fail with a typed
//! error, never a wrong answer. Each body checks what must hold and prints what it measured
//! (`-- --nocapture`): how often and how far direct gets trail, how long an election takes.
//!
//! Who answers a direct get is observed on the servers themselves: a replica answers once it
//! holds the stream's direct-get queue subscription (`/subsz`), and a node's requests answered
//! elsewhere show in its route traffic (`/routez`).
//!
//! Longer than ~600 lines because one cluster serves the three bodies (starting one dominates
//! the cost) and they share its probes (`direct_responders`, `whole_subject`).
#![allow(clippy::disallowed_methods)] // measures lags and elections in real time

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aether::broker::{AppendOptions, Broker, BrokerError, Headers, ReadFrom, StreamConfig};
use aether::{
    EventStore, ExpectedVersion, NatsBroker, NatsOptions, NewEvent, Runtime, Snapshot, StoreConfig,
};
use bytes::Bytes;
use support::nats_server::NatsCluster;

#[test]
fn r3_streams_behave_as_the_simulations_replica_model_assumes() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut cluster = NatsCluster::start();
    runtime.block_on(
        direct_gets_may_trail_an_ack_but_never_invent_and_leader_reads_never_trail(&mut cluster),
    );
    runtime.block_on(a_store_handle_never_reads_behind_its_own_writes(
        &mut cluster,
    ));
    runtime.block_on(during_a_leader_kill_every_read_is_right_or_a_typed_error(
        &mut cluster,
    ));
}

/// The variant name of a broker error (`Timeout`, `Unavailable`, …).
fn kind(error: &BrokerError) -> String {
    let text = format!("{error:?}");
    text.split([' ', '{', '(']).next().unwrap_or("").to_owned()
}

/// An R3 stream `name` capturing `<prefix>.>`, created through `broker`, with every replica
/// current.
async fn r3_stream(cluster: &NatsCluster, broker: &NatsBroker, name: &str, prefix: &str) {
    let mut config = StreamConfig::new(name, vec![format!("{prefix}.>")]);
    config.replicas = 3;
    broker.ensure_stream(config).await.expect("R3 stream");
    cluster
        .wait_replicas_current(broker, name, Duration::from_secs(30))
        .await;
}

/// A connection to node `name` only (it learns the others from the server, for reconnects).
async fn connect_to(cluster: &mut NatsCluster, name: &str, timeout: Duration) -> NatsBroker {
    NatsBroker::connect(NatsOptions::new(cluster.node_mut(name).url()).request_timeout(timeout))
        .await
        .expect("connect to one node")
}

/// The nodes whose replica of `stream` answers direct gets: they hold its queue subscription
/// (`/subsz`). The leader subscribes when it takes over; a follower only on a 2 s tick after it
/// learns of the leader, once it is (nearly) caught up (`monitorStream` in nats-server).
fn direct_responders(cluster: &mut NatsCluster, stream: &str) -> Vec<String> {
    let path = format!("/subsz?subs=1&acc=$G&test=$JS.API.DIRECT.GET.{stream}.probe");
    let mut nodes = Vec::new();
    for node in ["n1", "n2", "n3"] {
        let Some((200, body)) = cluster.node_mut(node).monitor(&path) else {
            continue;
        };
        let subsz: serde_json::Value = serde_json::from_str(&body).expect("/subsz is JSON");
        let subscribed = subsz["subscriptions_list"]
            .as_array()
            .is_some_and(|subs| subs.iter().any(|s| s["qgroup"].is_string()));
        if subscribed {
            nodes.push(node.to_owned());
        }
    }
    nodes
}

/// Waits until all three replicas of `stream` answer direct gets; how long that took.
async fn wait_direct_responders(cluster: &mut NatsCluster, stream: &str) -> Duration {
    let started = Instant::now();
    loop {
        let nodes = direct_responders(cluster, stream);
        if nodes.len() == 3 {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "only {nodes:?} answer direct gets of {stream} after 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What one connection's direct gets showed.
#[derive(Debug, Default)]
struct Staleness {
    reads: u64,
    stale: u64,
    /// Largest `acknowledged - answered` stream sequence.
    max_lag: u64,
    /// Longest a follower took to answer with the acknowledged write (sequential writes only).
    max_catch_up: Duration,
}

impl Staleness {
    fn percent(&self) -> f64 {
        100.0 * self.stale as f64 / self.reads.max(1) as f64
    }
}

/// Sequential writes on each connection, one subject each: writes through a connection to
/// every node in turn, direct get right after each acknowledgement.
const SEQUENTIAL_WRITES_PER_NODE: u64 = 500;
/// Concurrent writers on one subject, and their writes each.
const CONCURRENT_WRITERS: u64 = 8;
const CONCURRENT_WRITES_EACH: u64 = 100;

/// A direct get right after an acknowledgement may be answered by a replica that has not
/// applied it yet (measured: how often, by how much, for how long); what it returns was written,
/// at that sequence, with that payload. A leader read returns the acknowledged write every
/// time.
async fn direct_gets_may_trail_an_ack_but_never_invent_and_leader_reads_never_trail(
    cluster: &mut NatsCluster,
) {
    let stream = "REPLICAS_STALE";
    let setup = cluster.broker().await;
    r3_stream(cluster, &setup, stream, "stale").await;
    let leader = cluster
        .stream_leader(&setup, stream, Duration::from_secs(10))
        .await;
    let at_first = direct_responders(cluster, stream);
    let joined = wait_direct_responders(cluster, stream).await;
    eprintln!(
        "DIRECT RESPONDERS of a new R3 stream (leader {leader}): {at_first:?} once its \
         replicas are current, all three {} ms later",
        joined.as_millis()
    );
    let mut leader_reads = 0u64;
    for node in ["n1", "n2", "n3"] {
        let broker = connect_to(cluster, node, Duration::from_secs(5)).await;
        let subject = format!("stale.{node}");
        let mut written: BTreeMap<u64, Bytes> = BTreeMap::new();
        let mut seen = Staleness::default();
        for i in 0..SEQUENTIAL_WRITES_PER_NODE {
            let payload = Bytes::from(format!("{node}-{i}"));
            let ack = broker
                .append(
                    &subject,
                    Headers::new(),
                    payload.clone(),
                    AppendOptions::default(),
                )
                .await
                .expect("append");
            written.insert(ack.sequence, payload.clone());
            let answered = direct_get(&broker, stream, &subject, &written).await;
            assert!(
                answered <= ack.sequence,
                "a direct get answered sequence {answered}, newer than anything written ({})",
                ack.sequence
            );
            seen.reads += 1;
            if answered < ack.sequence {
                seen.stale += 1;
                seen.max_lag = seen
                    .max_lag
                    .max(written.range(answered + 1..).count() as u64);
                let started = Instant::now();
                while direct_get(&broker, stream, &subject, &written).await < ack.sequence {
                    assert!(
                        started.elapsed() < Duration::from_secs(10),
                        "a replica still misses sequence {} 10 s after its ack",
                        ack.sequence
                    );
                }
                seen.max_catch_up = seen.max_catch_up.max(started.elapsed());
            }
            let led = broker
                .last(stream, &subject, ReadFrom::Leader)
                .await
                .expect("leader read")
                .map(|m| (m.sequence, m.payload));
            assert_eq!(
                led,
                Some((ack.sequence, payload)),
                "a leader read right after an ack (through {node}) missed it"
            );
            leader_reads += 1;
        }
        let role = if node == leader { "leader" } else { "follower" };
        eprintln!(
            "STALENESS sequential, client on {node} ({role} of {stream}): {} of {} direct gets \
             stale ({:.1} %), max lag {} message(s), longest wait for a direct get to show \
             the ack {:?}",
            seen.stale,
            seen.reads,
            seen.percent(),
            seen.max_lag,
            seen.max_catch_up
        );
    }

    // Writers racing on one subject through a follower: the replica answering a direct get
    // may be several writes behind.
    let follower = ["n1", "n2", "n3"]
        .into_iter()
        .find(|n| *n != leader)
        .expect("a follower");
    let broker = connect_to(cluster, follower, Duration::from_secs(5)).await;
    let subject = "stale.concurrent";
    let tasks: Vec<_> = (0..CONCURRENT_WRITERS)
        .map(|w| {
            let broker = broker.clone();
            tokio::spawn(async move {
                // (acknowledged, direct answer, leader answer) sequences, and every answer.
                let mut rows = Vec::new();
                for i in 0..CONCURRENT_WRITES_EACH {
                    let ack = broker
                        .append(
                            subject,
                            Headers::new(),
                            Bytes::from(format!("c{w}-{i}")),
                            AppendOptions::default(),
                        )
                        .await
                        .expect("append");
                    let direct = broker
                        .last(stream, subject, ReadFrom::AnyReplica)
                        .await
                        .expect("direct get");
                    let led = broker
                        .last(stream, subject, ReadFrom::Leader)
                        .await
                        .expect("leader read");
                    rows.push((ack.sequence, direct, led));
                }
                rows
            })
        })
        .collect();
    let mut rows = Vec::new();
    for task in tasks {
        rows.extend(task.await.expect("writer"));
    }
    let truth = whole_subject(&setup, stream, subject).await;
    assert_eq!(
        truth.len() as u64,
        CONCURRENT_WRITERS * CONCURRENT_WRITES_EACH,
        "every concurrent write is stored once"
    );
    let mut seen = Staleness::default();
    for (acked, direct, led) in &rows {
        for m in direct.iter().chain(led) {
            assert_eq!(
                truth.get(&m.sequence),
                Some(&m.payload),
                "a read answered sequence {} with a payload never written there",
                m.sequence
            );
        }
        let led = led.as_ref().map_or(0, |m| m.sequence);
        assert!(
            led >= *acked,
            "a leader read answered {led} after sequence {acked} was acknowledged"
        );
        leader_reads += 1;
        let answered = direct.as_ref().map_or(0, |m| m.sequence);
        seen.reads += 1;
        if answered < *acked {
            seen.stale += 1;
            seen.max_lag = seen
                .max_lag
                .max(truth.range(answered + 1..=*acked).count() as u64);
        }
    }
    eprintln!(
        "STALENESS {CONCURRENT_WRITERS} concurrent writers, client on {follower} (follower): \
         {} of {} direct gets stale ({:.1} %), max lag {} message(s)",
        seen.stale,
        seen.reads,
        seen.percent(),
        seen.max_lag
    );
    eprintln!(
        "STALENESS {leader_reads} leader reads, every one at or after the acknowledged write"
    );
    who_answers_direct_gets(cluster, stream, &leader).await;
}

/// Direct gets asked per node to see who answers them.
const PROBES_PER_NODE: u64 = 600;

/// Messages a node sent over its routes (`/routez`).
fn routed_out(cluster: &mut NatsCluster, node: &str) -> u64 {
    let (status, body) = cluster
        .node_mut(node)
        .monitor("/routez")
        .expect("the monitoring port answers");
    assert_eq!(status, 200, "/routez: {body}");
    let routez: serde_json::Value = serde_json::from_str(&body).expect("/routez is JSON");
    routez["routes"]
        .as_array()
        .expect("/routez lists routes")
        .iter()
        .map(|r| r["out_msgs"].as_u64().unwrap_or(0))
        .sum()
}

/// Which replica answers a direct get: measured by how many of a node's direct gets it sends
/// over its routes to another server (the simulation picks one of the three replicas at
/// random, which would forward about two thirds). Only quiet-time route traffic (heartbeats)
/// adds to the count.
async fn who_answers_direct_gets(cluster: &mut NatsCluster, stream: &str, leader: &str) {
    for node in ["n1", "n2", "n3"] {
        let broker = connect_to(cluster, node, Duration::from_secs(5)).await;
        let subject = format!("stale.{node}");
        let before = routed_out(cluster, node);
        for _ in 0..PROBES_PER_NODE {
            broker
                .last(stream, &subject, ReadFrom::AnyReplica)
                .await
                .expect("direct get")
                .expect("the subject has messages");
        }
        let forwarded = routed_out(cluster, node) - before;
        let role = if node == leader { "leader" } else { "follower" };
        eprintln!(
            "WHO ANSWERS client on {node} ({role}): {forwarded} route messages out for \
             {PROBES_PER_NODE} direct gets ({:.0} %; a random replica would be ~67 %, \
             always the local one ~0 %)",
            100.0 * forwarded as f64 / PROBES_PER_NODE as f64
        );
    }
}

/// A direct get of `subject`'s last message, checked against what was written: the sequence
/// answered (0: none).
async fn direct_get(
    broker: &NatsBroker,
    stream: &str,
    subject: &str,
    written: &BTreeMap<u64, Bytes>,
) -> u64 {
    let Some(m) = broker
        .last(stream, subject, ReadFrom::AnyReplica)
        .await
        .expect("direct get")
    else {
        return 0;
    };
    assert_eq!(m.subject, subject);
    assert_eq!(
        written.get(&m.sequence),
        Some(&m.payload),
        "a direct get answered sequence {} with a payload never written there",
        m.sequence
    );
    m.sequence
}

const SESSION_ITERATIONS: u64 = 1_500;
const SESSION_ACTORS: u64 = 25;
const SNAPSHOT_EVERY: u64 = 5;

/// A store handle on R3, connected to a follower of the events stream, reads its own appends
/// back at once through every read (`latest_version`, `events`, `save_snapshot`,
/// `latest_snapshot`); a second handle on the other follower sees them through
/// `current_version`. A third one's `latest_version`, which may trail, is measured.
async fn a_store_handle_never_reads_behind_its_own_writes(cluster: &mut NatsCluster) {
    let namespace = "sessions";
    let setup = cluster.broker().await;
    let open = |broker: NatsBroker| async move {
        EventStore::open(
            Runtime::system(broker),
            StoreConfig::new(namespace).replicas(3),
        )
        .await
        .expect("R3 store")
    };
    drop(open(setup.clone()).await);
    for stream in ["AETHER_EV_sessions", "AETHER_SNAP_sessions"] {
        cluster
            .wait_replicas_current(&setup, stream, Duration::from_secs(30))
            .await;
        wait_direct_responders(cluster, stream).await;
    }
    let leader = cluster
        .stream_leader(&setup, "AETHER_EV_sessions", Duration::from_secs(10))
        .await;
    let followers: Vec<&str> = ["n1", "n2", "n3"]
        .into_iter()
        .filter(|n| *n != leader)
        .collect();
    let timeout = Duration::from_secs(5);
    let writer = open(connect_to(cluster, followers[0], timeout).await).await;
    let other = open(connect_to(cluster, followers[1], timeout).await).await;
    let peer = open(connect_to(cluster, followers[1], timeout).await).await;
    let mut versions: BTreeMap<String, u64> = BTreeMap::new();
    let (mut peer_behind, mut snapshots) = (0u64, 0u64);
    for i in 0..SESSION_ITERATIONS {
        let actor = format!("s-{}", i % SESSION_ACTORS);
        let before = versions.get(&actor).copied().unwrap_or(0);
        let own = writer
            .append(
                &actor,
                ExpectedVersion::Exact(before),
                vec![NewEvent::new("Ticked", serde_json::json!({ "i": i }))],
            )
            .await
            .expect("append")
            .last_version();
        assert_eq!(own, before + 1);
        versions.insert(actor.clone(), own);
        // The other handles ask at the same moment, when a replica may still lack the append.
        let (latest, confirmed, peer_version) = tokio::join!(
            writer.latest_version(&actor),
            other.current_version(&actor),
            peer.latest_version(&actor)
        );
        let latest = latest.expect("latest_version");
        assert_eq!(
            confirmed.expect("current_version"),
            own,
            "{actor}: another handle's current_version misses an acknowledged append"
        );
        let peer_version = peer_version.expect("latest_version");
        assert_eq!(
            latest, own,
            "{actor}: latest_version behind the handle's append"
        );
        let events = writer.events(&actor, own).await.expect("events");
        assert_eq!(
            events.iter().map(|e| e.version).collect::<Vec<_>>(),
            [own],
            "{actor}: events from the handle's own version"
        );
        if i % SNAPSHOT_EVERY == 0 {
            let state = serde_json::json!({ "version": own });
            writer
                .save_snapshot(&Snapshot::new(actor.clone(), own, state))
                .await
                .expect("a snapshot at the handle's own version is never ahead of the stream");
            let saved = writer
                .latest_snapshot(&actor)
                .await
                .expect("latest_snapshot")
                .map(|s| s.version);
            assert_eq!(
                saved,
                Some(own),
                "{actor}: latest_snapshot behind the handle's save"
            );
            snapshots += 1;
        }
        assert!(peer_version <= own, "{actor}: a version nobody wrote");
        if peer_version < own {
            peer_behind += 1;
        }
    }
    eprintln!(
        "SESSIONS {SESSION_ITERATIONS} appends through {} (follower; leader {leader}): own \
         latest_version/events right every time, {snapshots} snapshots saved and read back, \
         another handle's current_version right every time; a third handle's latest_version \
         (on {}) behind the acknowledged version {peer_behind} times ({:.1} %)",
        followers[0],
        followers[1],
        100.0 * peer_behind as f64 / SESSION_ITERATIONS as f64
    );
}

/// Every message of `subject`, read until the read reaches the leader's last message (the
/// read may be served by a replica that is still catching up).
async fn whole_subject(broker: &NatsBroker, stream: &str, subject: &str) -> BTreeMap<u64, Bytes> {
    let leader_last = broker
        .last(stream, subject, ReadFrom::Leader)
        .await
        .expect("leader read")
        .map_or(0, |m| m.sequence);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let truth: BTreeMap<u64, Bytes> = broker
            .read(stream, subject, 1)
            .await
            .expect("read the subject")
            .into_iter()
            .map(|m| (m.sequence, m.payload))
            .collect();
        if truth.keys().next_back().copied().unwrap_or(0) >= leader_last {
            return truth;
        }
        assert!(
            Instant::now() < deadline,
            "reads of {subject} stay behind the leader's last message {leader_last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Everything the failover body's tasks saw, with times since its start.
#[derive(Default)]
struct FailoverLog {
    /// Acknowledged writes: (sequence, payload).
    acked: Vec<(u64, Bytes)>,
    /// Answers: (reader, when, sequence, payload, the highest sequence acknowledged before
    /// it was asked).
    answers: Vec<(&'static str, Duration, u64, Bytes, u64)>,
    /// (operation, error kind) → (count, first, last, the first one's message).
    errors: BTreeMap<(&'static str, String), (u64, Duration, Duration, String)>,
    /// Payloads of appends that failed, by error kind.
    failed: BTreeMap<String, Vec<Bytes>>,
    /// Operation → times of its successes, and of its failures.
    successes: BTreeMap<&'static str, Vec<Duration>>,
    failures: BTreeMap<&'static str, Vec<Duration>>,
    /// Leader reads that found nothing while writes were acknowledged.
    leader_none: u64,
}

impl FailoverLog {
    fn error(&mut self, op: &'static str, error: &BrokerError, at: Duration) {
        let entry = self
            .errors
            .entry((op, kind(error)))
            .or_insert_with(|| (0, at, at, error.to_string()));
        entry.0 += 1;
        entry.2 = at;
        self.failures.entry(op).or_default().push(at);
    }
}

/// The writer of the failover body: appends until stopped, recording the highest
/// acknowledged sequence in `floor` (reads issued after see it as their floor).
async fn write_until_stopped(
    broker: NatsBroker,
    log: Arc<Mutex<FailoverLog>>,
    floor: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    start: Instant,
) {
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let payload = Bytes::from(format!("w-{i}"));
        let result = broker
            .append(
                "failover.x",
                Headers::new(),
                payload.clone(),
                AppendOptions::default(),
            )
            .await;
        let at = start.elapsed();
        let failed = {
            let mut log = log.lock().unwrap();
            match result {
                Ok(ack) => {
                    log.acked.push((ack.sequence, payload));
                    log.successes.entry("append").or_default().push(at);
                    floor.fetch_max(ack.sequence, Ordering::SeqCst);
                    false
                }
                Err(e) => {
                    log.error("append", &e, at);
                    log.failed.entry(kind(&e)).or_default().push(payload);
                    true
                }
            }
        };
        if failed {
            // No leader answers at once: do not spin on two cores.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// A reader of the failover body: `last` from `from` until stopped.
async fn read_until_stopped(
    name: &'static str,
    broker: NatsBroker,
    from: ReadFrom,
    log: Arc<Mutex<FailoverLog>>,
    floor: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    start: Instant,
) {
    while !stop.load(Ordering::Relaxed) {
        let before = floor.load(Ordering::SeqCst);
        let result = broker.last("REPLICAS_FAILOVER", "failover.x", from).await;
        let at = start.elapsed();
        let mut log = log.lock().unwrap();
        match result {
            Ok(Some(m)) => {
                log.answers.push((name, at, m.sequence, m.payload, before));
                log.successes.entry(name).or_default().push(at);
            }
            Ok(None) if from == ReadFrom::Leader && before > 0 => log.leader_none += 1,
            Ok(None) => {}
            Err(e) => log.error(name, &e, at),
        }
    }
}

/// The stream leader is killed (SIGKILL) while a writer appends and readers read the subject's
/// last message from the leader and by direct get, through a follower and through the doomed
/// node; later it restarts. Every leader read answers at or after every write acknowledged
/// before it was asked, every answer was written with that payload, every acknowledged write
/// survives, and everything else is a typed error (`Timeout`, `Unavailable`).
async fn during_a_leader_kill_every_read_is_right_or_a_typed_error(cluster: &mut NatsCluster) {
    let stream = "REPLICAS_FAILOVER";
    let setup = cluster.broker().await;
    r3_stream(cluster, &setup, stream, "failover").await;
    wait_direct_responders(cluster, stream).await;
    let doomed = cluster
        .stream_leader(&setup, stream, Duration::from_secs(10))
        .await;
    let survivor = ["n1", "n2", "n3"]
        .into_iter()
        .find(|n| *n != doomed)
        .expect("a follower");
    let timeout = Duration::from_secs(1);
    let log = Arc::new(Mutex::new(FailoverLog::default()));
    let floor = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = vec![tokio::spawn(write_until_stopped(
        connect_to(cluster, survivor, timeout).await,
        log.clone(),
        floor.clone(),
        stop.clone(),
        start,
    ))];
    let readers = [
        ("leader-read via follower", survivor, ReadFrom::Leader),
        ("direct-get via follower", survivor, ReadFrom::AnyReplica),
        ("leader-read via doomed", doomed.as_str(), ReadFrom::Leader),
        (
            "direct-get via doomed",
            doomed.as_str(),
            ReadFrom::AnyReplica,
        ),
    ];
    for (name, node, from) in readers {
        let broker = connect_to(cluster, node, timeout).await;
        tasks.push(tokio::spawn(read_until_stopped(
            name,
            broker,
            from,
            log.clone(),
            floor.clone(),
            stop.clone(),
            start,
        )));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.node_mut(&doomed).kill();
    let killed = start.elapsed();
    let new_leader = cluster
        .stream_leader(&setup, stream, Duration::from_secs(20))
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let restarting = start.elapsed();
    cluster.node_mut(&doomed).restart();
    tokio::task::block_in_place(|| {
        cluster
            .node_mut(&doomed)
            .wait_healthy(Duration::from_secs(30))
    });
    let restarted = start.elapsed();
    // The restarted replica answers direct gets again once it has (nearly) caught up.
    let mut rejoined = None;
    while start.elapsed() < restarted + Duration::from_secs(4) {
        if rejoined.is_none() && direct_responders(cluster, stream).contains(&doomed) {
            rejoined = Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let responders = direct_responders(cluster, stream);
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("task");
    }
    cluster
        .wait_replicas_current(&setup, stream, Duration::from_secs(30))
        .await;

    let log = std::mem::take(&mut *log.lock().unwrap());
    let truth = whole_subject(&setup, stream, "failover.x").await;
    for (sequence, payload) in &log.acked {
        assert_eq!(
            truth.get(sequence),
            Some(payload),
            "acknowledged write at sequence {sequence} lost or changed by the failover"
        );
    }
    // Every stored write was attempted; which failures landed anyway.
    let acked: BTreeMap<&Bytes, u64> = log.acked.iter().map(|(s, p)| (p, *s)).collect();
    let mut landed_after: BTreeMap<&str, u64> = BTreeMap::new();
    for payload in truth.values().filter(|p| !acked.contains_key(p)) {
        let kind = log
            .failed
            .iter()
            .find(|(_, payloads)| payloads.contains(payload))
            .map(|(kind, _)| kind.as_str())
            .unwrap_or_else(|| panic!("stored {payload:?}, which was never written"));
        *landed_after.entry(kind).or_default() += 1;
    }
    let failed: BTreeMap<&str, usize> = log
        .failed
        .iter()
        .map(|(k, v)| (k.as_str(), v.len()))
        .collect();
    // How long after the kill `op` answered again: its first success after its first failure
    // (`None`: it never failed).
    let resumed = |op: &str| {
        let failed = *log.failures.get(op)?.iter().find(|t| **t >= killed)?;
        let success = log.successes.get(op)?.iter().find(|t| **t > failed);
        Some(success.map_or(Duration::MAX, |t| *t - killed))
    };
    let append_outage = resumed("append").expect("appends fail while nobody leads");
    assert!(
        append_outage < Duration::MAX,
        "appends never succeeded again after the kill"
    );
    let writes_resumed = killed + append_outage;
    let phase = |at: Duration| match at {
        at if at < killed => "before the kill",
        at if at < writes_resumed => "election",
        at if at < restarting => "new leader",
        at if at < rejoined.unwrap_or(Duration::MAX) => "old leader restarting",
        _ => "old leader answering again",
    };
    // (reader, phase) → (answers, behind an earlier ack, max lag).
    let mut stale: BTreeMap<(&str, &str), (u64, u64, u64)> = BTreeMap::new();
    for (reader, at, sequence, payload, before) in &log.answers {
        assert_eq!(
            truth.get(sequence),
            Some(payload),
            "{reader} answered sequence {sequence} with a payload never written there"
        );
        let row = stale.entry((reader, phase(*at))).or_default();
        row.0 += 1;
        if sequence < before {
            assert!(
                !reader.starts_with("leader"),
                "{reader} answered {sequence} after {before} was acknowledged"
            );
            row.1 += 1;
            row.2 = row.2.max(before - sequence);
        }
    }
    assert_eq!(log.leader_none, 0, "a leader read found nothing after acks");
    let ms = |d: Option<Duration>| d.map_or("never".to_owned(), |d| d.as_millis().to_string());
    let outage = |op: &str| match resumed(op) {
        None => "no failure".to_owned(),
        Some(Duration::MAX) => "never".to_owned(),
        Some(d) => d.as_millis().to_string(),
    };
    eprintln!(
        "FAILOVER killed {doomed} (stream leader) at {} ms, new leader {new_leader}; answering \
         again after the kill (ms): append {}, leader read via follower {}, via doomed {}, \
         direct get via follower {}, via doomed {}; restart at {} ms, healthy at {} ms; {} \
         appends acknowledged, none lost; failed appends {failed:?}, of which stored all the \
         same {landed_after:?}",
        killed.as_millis(),
        outage("append"),
        outage("leader-read via follower"),
        outage("leader-read via doomed"),
        outage("direct-get via follower"),
        outage("direct-get via doomed"),
        restarting.as_millis(),
        restarted.as_millis(),
        log.acked.len(),
    );
    eprintln!(
        "FAILOVER direct responders at the end: {responders:?}; the restarted {doomed} answers \
         direct gets again from {} ms",
        ms(rejoined)
    );
    for ((reader, phase), (answers, behind, max_lag)) in &stale {
        eprintln!(
            "FAILOVER {reader}, {phase}: {answers} answers, {behind} behind an earlier ack \
             ({:.2} %, max lag {max_lag})",
            100.0 * *behind as f64 / (*answers).max(1) as f64
        );
    }
    for ((op, kind), (count, first, last, message)) in &log.errors {
        eprintln!(
            "FAILOVER {op}: {count} x {kind}, from {} ms to {} ms after the kill (first: \
             {message})",
            first.as_millis() as i128 - killed.as_millis() as i128,
            last.as_millis() as i128 - killed.as_millis() as i128,
        );
    }
    for (op, kind) in log.errors.keys() {
        assert!(
            ["Timeout", "Unavailable"].contains(&kind.as_str()),
            "{op} failed with {kind} during a failover, which callers would take for a \
             permanent answer: {:?}",
            log.errors
        );
    }
    assert!(
        log.acked.len() >= 100,
        "the writer made too little progress to test anything"
    );
}
