//! Network faults between real nats-server processes, through test-controlled TCP proxies
//! (`support/nats_server/route_proxy.rs`, `support/nats_server/route_net.rs`): the proxy itself (hold,
//! release, one direction, cut, delay) against plain sockets, a client cut off its server, and a
//! 3-node JetStream cluster whose every route runs through a proxy — no route around them, an
//! isolated stream leader loses its stream and the meta quorum to the majority and catches up
//! after the heal, a held link delivers late without losing the cluster, a slow link slows what
//! crosses it, and a one-way hold stops only what one side sends.
//!
//! Each cluster test prints what it measured (`-- --nocapture`).
//!
//! Longer than ~600 lines: the proxy's own tests belong with the cluster tests that depend on
//! them (one test target, `required-features = ["nats"]`), and those share their probes
//! (`/jsz`, `/routez`, waits).
#![allow(clippy::disallowed_methods)] // waits, holds and delays run on real time

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use aether::broker::{AppendAck, AppendOptions, Broker, BrokerError, Headers, StreamConfig};
use aether::{NatsBroker, NatsOptions};
use bytes::Bytes;
use support::nats_server::{NatsCluster, NatsServer};
use support::route_proxy::{ClosedPort, Direction, Proxy, ProxyRuntime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Route connections per pair of servers: a pool of 3 plus the system account's own route.
const ROUTES_PER_PAIR: usize = 4;

// ---- the proxy on plain sockets -------------------------------------------------------------

/// The far end of a proxy: reports what it receives, sends what it is given.
struct Far {
    received: mpsc::UnboundedReceiver<Bytes>,
    send: mpsc::UnboundedSender<Bytes>,
}

/// A listener whose every connection is served as a [`Far`] end, handed out in order.
async fn far_ends() -> (SocketAddr, mpsc::UnboundedReceiver<Far>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (ends_tx, ends) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (mut read, mut write) = stream.into_split();
            let (received_tx, received) = mpsc::unbounded_channel();
            let (send, mut to_send) = mpsc::unbounded_channel::<Bytes>();
            tokio::spawn(async move {
                let mut buffer = vec![0_u8; 4096];
                while let Ok(n) = read.read(&mut buffer).await {
                    if n == 0
                        || received_tx
                            .send(Bytes::copy_from_slice(&buffer[..n]))
                            .is_err()
                    {
                        break;
                    }
                }
            });
            tokio::spawn(async move {
                while let Some(bytes) = to_send.recv().await {
                    if write.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
            });
            if ends_tx.send(Far { received, send }).is_err() {
                break;
            }
        }
    });
    (addr, ends)
}

/// Exactly `n` bytes from `rx` within `within`, or what came by then.
async fn take(rx: &mut mpsc::UnboundedReceiver<Bytes>, n: usize, within: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let _ = tokio::time::timeout(within, async {
        while got.len() < n {
            match rx.recv().await {
                Some(bytes) => got.extend_from_slice(&bytes),
                None => break,
            }
        }
    })
    .await;
    got
}

/// Exactly `n` bytes read from `stream` within `within`, or what came by then.
async fn read_n(stream: &mut TcpStream, n: usize, within: Duration) -> Vec<u8> {
    let mut got = vec![0_u8; n];
    let mut filled = 0;
    let _ = tokio::time::timeout(within, async {
        while filled < n {
            match stream.read(&mut got[filled..]).await {
                Ok(0) | Err(_) => break,
                Ok(k) => filled += k,
            }
        }
    })
    .await;
    got.truncate(filled);
    got
}

/// A proxy on its own runtime in front of [`far_ends`], and one connection through it.
struct Proxied {
    proxy: Proxy,
    near: TcpStream,
    far: Far,
    ends: mpsc::UnboundedReceiver<Far>,
    _runtime: ProxyRuntime,
}

async fn proxied() -> Proxied {
    let runtime = ProxyRuntime::new("test");
    let (target, mut ends) = far_ends().await;
    let proxy = Proxy::start(runtime.handle(), "test", target);
    let near = TcpStream::connect(proxy.addr()).await.expect("connect");
    let far = ends.recv().await.expect("far end");
    Proxied {
        proxy,
        near,
        far,
        ends,
        _runtime: runtime,
    }
}

#[tokio::test]
async fn a_held_proxy_delivers_nothing_until_release_then_everything_in_order() {
    let Proxied {
        proxy,
        mut near,
        mut far,
        _runtime,
        ..
    } = proxied().await;
    near.write_all(b"a").await.expect("write");
    assert_eq!(
        take(&mut far.received, 1, Duration::from_secs(2)).await,
        b"a"
    );

    proxy.hold();
    near.write_all(b"bc").await.expect("write");
    near.write_all(b"de").await.expect("write");
    far.send.send(Bytes::from_static(b"XY")).expect("send");
    assert_eq!(
        take(&mut far.received, 4, Duration::from_millis(300)).await,
        b"",
        "a held proxy delivered upstream"
    );
    assert_eq!(
        read_n(&mut near, 2, Duration::from_millis(300)).await,
        b"",
        "a held proxy delivered downstream"
    );

    proxy.release();
    assert_eq!(
        take(&mut far.received, 4, Duration::from_secs(2)).await,
        b"bcde"
    );
    assert_eq!(read_n(&mut near, 2, Duration::from_secs(2)).await, b"XY");
    assert_eq!(proxy.stats().forwarded, 1, "the same connection carried on");
}

#[tokio::test]
async fn holding_one_direction_lets_the_other_flow() {
    let Proxied {
        proxy,
        mut near,
        mut far,
        _runtime,
        ..
    } = proxied().await;

    proxy.direction(Direction::Upstream).hold();
    near.write_all(b"up").await.expect("write");
    far.send.send(Bytes::from_static(b"down")).expect("send");
    assert_eq!(read_n(&mut near, 4, Duration::from_secs(2)).await, b"down");
    assert_eq!(
        take(&mut far.received, 2, Duration::from_millis(300)).await,
        b"",
        "the held direction delivered"
    );
    proxy.direction(Direction::Upstream).release();
    assert_eq!(
        take(&mut far.received, 2, Duration::from_secs(2)).await,
        b"up"
    );

    proxy.direction(Direction::Downstream).hold();
    far.send.send(Bytes::from_static(b"late")).expect("send");
    near.write_all(b"now").await.expect("write");
    assert_eq!(
        take(&mut far.received, 3, Duration::from_secs(2)).await,
        b"now"
    );
    assert_eq!(read_n(&mut near, 4, Duration::from_millis(300)).await, b"");
    proxy.heal();
    assert_eq!(read_n(&mut near, 4, Duration::from_secs(2)).await, b"late");
}

#[tokio::test]
async fn a_cut_closes_open_connections_and_every_new_one_until_heal() {
    let Proxied {
        proxy,
        mut near,
        mut far,
        mut ends,
        _runtime,
        ..
    } = proxied().await;
    near.write_all(b"x").await.expect("write");
    assert_eq!(
        take(&mut far.received, 1, Duration::from_secs(2)).await,
        b"x"
    );

    proxy.cut();
    let mut buffer = [0_u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(2), near.read(&mut buffer))
        .await
        .expect("the cut closes the open connection at once");
    assert!(
        matches!(closed, Ok(0) | Err(_)),
        "read after a cut: {closed:?}"
    );
    let mut again = TcpStream::connect(proxy.addr())
        .await
        .expect("the port stays open");
    let refused = tokio::time::timeout(Duration::from_secs(2), again.read(&mut buffer))
        .await
        .expect("a new connection is closed at once");
    assert!(matches!(refused, Ok(0) | Err(_)), "{refused:?}");
    let stats = proxy.stats();
    assert_eq!((stats.cut, stats.refused), (1, 1), "{stats:?}");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), ends.recv())
            .await
            .is_err(),
        "a connection made while cut reached the target"
    );

    proxy.heal();
    let mut near = TcpStream::connect(proxy.addr()).await.expect("connect");
    let mut far = ends.recv().await.expect("far end");
    near.write_all(b"y").await.expect("write");
    assert_eq!(
        take(&mut far.received, 1, Duration::from_secs(2)).await,
        b"y"
    );
    assert_eq!(proxy.stats().forwarded, 2);
}

#[tokio::test]
async fn a_delay_delivers_every_chunk_no_earlier_than_the_delay_and_in_order() {
    let Proxied {
        proxy,
        mut near,
        mut far,
        _runtime,
        ..
    } = proxied().await;
    let delay = Duration::from_millis(300);
    proxy.set_delay(delay);
    let sent = Instant::now();
    near.write_all(b"12").await.expect("write");
    near.write_all(b"34").await.expect("write");
    let got = take(&mut far.received, 4, Duration::from_secs(3)).await;
    let took = sent.elapsed();
    assert_eq!(got, b"1234");
    assert!(
        took >= delay,
        "delivered after {took:?}, before the {delay:?} delay"
    );
}

#[tokio::test]
async fn a_closed_port_refuses_connections() {
    let closed = ClosedPort::new();
    let result = TcpStream::connect(closed.addr()).await;
    assert_eq!(
        result.map(|_| ()).map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionRefused)
    );
}

// ---- real servers ---------------------------------------------------------------------------

/// The variant name of a broker error (`Timeout`, `Unavailable`, …).
fn kind(error: &BrokerError) -> String {
    let text = format!("{error:?}");
    text.split([' ', '{', '(']).next().unwrap_or("").to_owned()
}

async fn append(broker: &NatsBroker, subject: &str) -> Result<AppendAck, BrokerError> {
    broker
        .append(
            subject,
            Headers::new(),
            Bytes::from_static(b"{}"),
            AppendOptions::default(),
        )
        .await
}

async fn connect(urls: &str, timeout: Duration) -> NatsBroker {
    NatsBroker::connect(NatsOptions::new(urls).request_timeout(timeout))
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cut_off_its_server_fails_and_carries_on_through_the_proxy_after_heal() {
    let server = tokio::task::block_in_place(NatsServer::start);
    let runtime = ProxyRuntime::new("client");
    let proxy = Proxy::start(
        runtime.handle(),
        "client",
        SocketAddr::from(([127, 0, 0, 1], server.port)),
    );
    let broker = connect(&format!("nats://{}", proxy.addr()), Duration::from_secs(1)).await;
    broker
        .ensure_stream(StreamConfig::new("CLIENTCUT", vec!["cc.>".into()]))
        .await
        .expect("stream");
    append(&broker, "cc.a")
        .await
        .expect("append before the cut");

    proxy.cut();
    let during = append(&broker, "cc.a").await;
    assert!(during.is_err(), "an append through a cut proxy: {during:?}");

    proxy.heal();
    let started = Instant::now();
    let after = loop {
        match append(&broker, "cc.a").await {
            Ok(ack) => break ack,
            Err(e) => assert!(
                started.elapsed() < Duration::from_secs(20),
                "no append 20 s after the heal: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "CLIENT CUT: during {:?}; after heal sequence {} in {:?}; proxy {:?}",
        during.map_err(|e| kind(&e)),
        after.sequence,
        started.elapsed(),
        proxy.stats()
    );
    // Reconnected through the proxy: the client knows no other address.
    let stats = proxy.stats();
    assert!(stats.cut >= 1 && stats.forwarded >= 2, "{stats:?}");
}

/// Node `name`.
fn node<'a>(cluster: &'a NatsCluster, name: &str) -> &'a NatsServer {
    cluster
        .nodes
        .iter()
        .find(|n| n.name == name)
        .unwrap_or_else(|| panic!("no node {name}"))
}

/// `/jsz` of `server` (answered from its own state, over HTTP, not through any route).
fn jsz(server: &NatsServer, query: &str) -> Option<serde_json::Value> {
    let (status, body) = server.monitor(&format!("/jsz{query}"))?;
    (status == 200).then(|| serde_json::from_str(&body).ok())?
}

/// The meta leader as `server` sees it (`None`: it knows of none).
fn meta_leader(server: &NatsServer) -> Option<String> {
    jsz(server, "")?["meta_cluster"]["leader"]
        .as_str()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
}

/// The last sequence of `server`'s own replica of `stream`.
fn local_last_seq(server: &NatsServer, stream: &str) -> Option<u64> {
    let jsz = jsz(server, "?accounts=true&streams=true")?;
    jsz["account_details"]
        .as_array()?
        .iter()
        .flat_map(|account| account["stream_detail"].as_array().into_iter().flatten())
        .find(|detail| detail["name"] == stream)?["state"]["last_seq"]
        .as_u64()
}

/// Polls `check` every 100 ms until it returns `Some`, for at most `within`.
async fn eventually<T>(within: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(started.elapsed() < within, "{what} not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A cluster with route proxies, every pair meshed through them.
fn proxied_cluster() -> NatsCluster {
    tokio::task::block_in_place(|| {
        let cluster = NatsCluster::start_with_route_proxies();
        cluster.route_net().wait_full_mesh(
            &cluster.nodes,
            ROUTES_PER_PAIR,
            Duration::from_secs(20),
        );
        cluster
    })
}

/// The ids of the route connections between `a` and `b`, as each of them numbers them
/// (`/routez`): the same ids later mean the same connections.
fn pair_routes(cluster: &NatsCluster, a: &str, b: &str) -> [BTreeSet<u64>; 2] {
    [(a, b), (b, a)].map(|(on, to)| {
        let (_, body) = node(cluster, on).monitor("/routez").expect("/routez");
        let routez: serde_json::Value = serde_json::from_str(&body).expect("/routez is JSON");
        routez["routes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|route| route["remote_name"] == to)
            .filter_map(|route| route["rid"].as_u64())
            .collect()
    })
}

/// An R3 stream `name` on `<prefix>.>` with every replica current.
async fn r3_stream(cluster: &NatsCluster, broker: &NatsBroker, name: &str, prefix: &str) {
    let mut config = StreamConfig::new(name, vec![format!("{prefix}.>")]);
    config.replicas = 3;
    // Just after the start the meta leader may not have every peer's statistics yet (a peer is
    // placeable once it has: `selectable`, server.go:408) and refuses with 10005, "no suitable
    // peers for placement, peer offline".
    let started = Instant::now();
    while let Err(e) = broker.ensure_stream(config.clone()).await {
        assert!(
            e.to_string().contains("peer offline") && started.elapsed() < Duration::from_secs(10),
            "R3 stream: {e}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster
        .wait_replicas_current(broker, name, Duration::from_secs(20))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_runs_through_a_proxy_and_a_cut_link_loses_exactly_its_routes() {
    let started = Instant::now();
    let cluster = proxied_cluster();
    let net = cluster.route_net();
    let seen = net
        .check_routes(&cluster.nodes)
        .expect("no route bypasses the proxies");
    println!(
        "ROUTES via proxies: {seen:?}; implicit dials refused at the advertised closed ports: {:?}",
        net.refused_implicit_dials(&cluster.nodes)
    );
    for (a, b) in [("n1", "n2"), ("n1", "n3"), ("n2", "n3")] {
        assert!(net.link(a, b).bytes() > 0, "link {a}-{b} carried nothing");
    }

    net.link("n1", "n2").cut();
    let after_cut = eventually(
        Duration::from_secs(10),
        "the cut link's routes gone",
        || {
            let seen = net
                .check_routes(&cluster.nodes)
                .expect("no bypass while cut");
            let count = |n: &str, r: &str| seen[n].get(r).copied().unwrap_or(0);
            (count("n1", "n2") == 0 && count("n2", "n1") == 0).then_some(seen)
        },
    )
    .await;
    println!("AFTER CUT n1-n2: {after_cut:?}");
    let count = |n: &str, r: &str| after_cut[n].get(r).copied().unwrap_or(0);
    for (n, r) in [("n1", "n3"), ("n3", "n1"), ("n2", "n3"), ("n3", "n2")] {
        assert_eq!(
            count(n, r),
            ROUTES_PER_PAIR,
            "{n}'s routes to {r} outside the cut"
        );
    }
    // Meanwhile the servers keep dialing: the proxies close every new connection.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let refused = net.proxy("n1", "n2").stats().refused + net.proxy("n2", "n1").stats().refused;
    assert!(refused > 0, "no server re-dialed the cut link");

    net.heal_all();
    tokio::task::block_in_place(|| {
        net.wait_full_mesh(&cluster.nodes, ROUTES_PER_PAIR, Duration::from_secs(20));
    });
    println!(
        "HEALED: {:?}; {refused} dials refused while cut; {:?} in all",
        net.check_routes(&cluster.nodes)
            .expect("no bypass after the heal"),
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_stream_leader_loses_to_the_majority_and_catches_up_after_heal() {
    let started = Instant::now();
    let cluster = proxied_cluster();
    let net = cluster.route_net();
    let stream = "PARTITION";
    let admin = connect(&cluster.urls(), Duration::from_secs(2)).await;
    r3_stream(&cluster, &admin, stream, "part").await;
    for _ in 0..5 {
        append(&admin, "part.before").await.expect("append before");
    }
    let victim = cluster
        .stream_leader(&admin, stream, Duration::from_secs(10))
        .await;
    let majority = net.others(&victim);
    let majority_urls: Vec<String> = majority.iter().map(|n| node(&cluster, n).url()).collect();
    // Connected before the cut: a connect checks JetStream, which the isolated node loses.
    let isolated_client = connect(&node(&cluster, &victim).url(), Duration::from_secs(2)).await;
    let majority_client = connect(&majority_urls.join(","), Duration::from_secs(2)).await;
    let meta_before = meta_leader(node(&cluster, &victim));

    net.isolate(&victim);
    let cut_at = Instant::now();

    // The majority elects a stream leader of its own, then takes writes.
    let new_leader = loop {
        if let Some(leader) = stream_leader_now(&majority_client, stream).await
            && leader != victim
        {
            break leader;
        }
        assert!(
            cut_at.elapsed() < Duration::from_secs(30),
            "no majority stream leader 30 s after the cut"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let elected_after = cut_at.elapsed();
    let mut majority_acks = Vec::new();
    let mut majority_errors: BTreeMap<String, u64> = BTreeMap::new();
    while majority_acks.len() < 3 {
        match append(&majority_client, "part.during").await {
            Ok(ack) => majority_acks.push(ack.sequence),
            Err(e) => {
                *majority_errors.entry(kind(&e)).or_default() += 1;
                assert!(
                    cut_at.elapsed() < Duration::from_secs(40),
                    "the majority takes no writes: {majority_errors:?}"
                );
            }
        }
    }
    assert!(
        !majority.contains(&victim) && majority.contains(&new_leader),
        "new leader {new_leader} is not one of {majority:?}"
    );

    // The isolated server cannot acknowledge anything.
    let mut isolated_kinds: BTreeMap<String, u64> = BTreeMap::new();
    for _ in 0..2 {
        match append(&isolated_client, "part.isolated").await {
            Ok(ack) => panic!("the isolated server acknowledged an append: {ack:?}"),
            Err(e) => *isolated_kinds.entry(kind(&e)).or_default() += 1,
        }
    }

    // The meta layer: the majority agrees on a leader of its own, the isolated node knows none.
    let meta_after = eventually(Duration::from_secs(30), "the meta layer split", || {
        let sides: Vec<Option<String>> = majority
            .iter()
            .map(|n| meta_leader(node(&cluster, n)))
            .collect();
        let agreed = sides[0].clone().filter(|l| majority.contains(l))?;
        (sides.iter().all(|s| s.as_deref() == Some(agreed.as_str()))
            && meta_leader(node(&cluster, &victim)).is_none())
        .then_some(agreed)
    })
    .await;
    let victim_healthz = node(&cluster, &victim).monitor("/healthz");
    let victim_behind = local_last_seq(node(&cluster, &victim), stream);
    println!(
        "ISOLATED {victim}: majority leader {new_leader} after {elected_after:?} (errors before: \
         {majority_errors:?}), acks {majority_acks:?}; isolated appends failed {isolated_kinds:?}; \
         meta leader {meta_before:?} -> {meta_after} (isolated sees none); isolated replica at \
         {victim_behind:?}; isolated /healthz {victim_healthz:?}"
    );
    let last = *majority_acks.last().expect("acks");
    assert!(
        victim_behind.is_some_and(|seq| seq < last),
        "the isolated replica has {victim_behind:?} while the majority acknowledged {last}"
    );

    net.heal_all();
    let healed_at = Instant::now();
    let caught_up = eventually(Duration::from_secs(30), "the healed node caught up", || {
        let seqs: Vec<Option<u64>> = cluster
            .nodes
            .iter()
            .map(|n| local_last_seq(n, stream))
            .collect();
        seqs.iter().all(|s| *s == Some(last)).then_some(seqs)
    })
    .await;
    println!(
        "HEALED: every replica at {caught_up:?} after {:?}; {:?} in all",
        healed_at.elapsed(),
        started.elapsed()
    );
    tokio::task::block_in_place(|| {
        net.wait_full_mesh(&cluster.nodes, ROUTES_PER_PAIR, Duration::from_secs(20));
    });
}

/// The stream leader as `client`'s server hears it (`None` while there is none).
async fn stream_leader_now(client: &NatsBroker, stream: &str) -> Option<String> {
    let mut handle = client.jetstream().get_stream(stream).await.ok()?;
    let info = handle.info().await.ok()?;
    info.cluster.as_ref()?.leader.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_link_delivers_late_without_losing_the_cluster_and_a_slow_one_slows_what_crosses_it()
{
    let started = Instant::now();
    let cluster = proxied_cluster();
    let net = cluster.route_net();
    let stream = "HELD";
    let admin = connect(&cluster.urls(), Duration::from_secs(2)).await;
    r3_stream(&cluster, &admin, stream, "held").await;
    let leader = cluster
        .stream_leader(&admin, stream, Duration::from_secs(10))
        .await;
    let others = net.others(&leader);
    let (follower, other) = (&others[0], &others[1]);
    let on_leader = connect(&node(&cluster, &leader).url(), Duration::from_secs(2)).await;
    let link = net.link(&leader, follower);
    let routes_before = pair_routes(&cluster, &leader, follower);

    // Held for less than the 4 s minimum election timeout: nobody gives up on anybody.
    link.hold();
    let held_at = Instant::now();
    let mut last = 0;
    for _ in 0..20 {
        last = append(&on_leader, "held.x")
            .await
            .expect("the leader and the other follower are a quorum")
            .sequence;
    }
    let behind = local_last_seq(node(&cluster, follower), stream);
    let other_seq = local_last_seq(node(&cluster, other), stream);
    tokio::time::sleep(Duration::from_millis(2000).saturating_sub(held_at.elapsed())).await;
    let behind_at_release = local_last_seq(node(&cluster, follower), stream);
    link.release();
    let released_at = Instant::now();
    eventually(Duration::from_secs(10), "the follower caught up", || {
        (local_last_seq(node(&cluster, follower), stream) == Some(last)).then_some(())
    })
    .await;
    let catch_up = released_at.elapsed();
    let routes_after = pair_routes(&cluster, &leader, follower);
    let leader_after = cluster
        .stream_leader(&admin, stream, Duration::from_secs(10))
        .await;
    println!(
        "HOLD {leader}-{follower}: 20 appends acked up to {last} while held; {follower} at \
         {behind:?} then {behind_at_release:?} at release, {other} at {other_seq:?}; caught up \
         {catch_up:?} after release; route connections (ids on each side) \
         {routes_before:?} -> {routes_after:?}; leader {leader} -> {leader_after}"
    );
    assert!(
        behind_at_release.is_some_and(|seq| seq < last),
        "{follower} had {behind_at_release:?} of {last} before the held link was released"
    );
    assert_eq!(
        routes_after, routes_before,
        "the held link's routes were replaced instead of delivering late"
    );
    assert_eq!(leader_after, leader, "a 2 s hold moved the stream leader");
    net.check_routes(&cluster.nodes)
        .expect("no bypass after the hold");

    // A slow link: an append from a client of the follower crosses it (follower to leader and
    // the acknowledgement back), so it cannot take less than the delay.
    let delay = Duration::from_millis(250);
    let on_follower = connect(&node(&cluster, follower).url(), Duration::from_secs(5)).await;
    let fast_started = Instant::now();
    append(&on_follower, "held.y").await.expect("append");
    let fast = fast_started.elapsed();
    link.set_delay(delay);
    let slow_started = Instant::now();
    let ack = append(&on_follower, "held.y").await.expect("append");
    let slow = slow_started.elapsed();
    link.heal();
    println!(
        "DELAY {delay:?} on {leader}-{follower}: an append from {follower}'s client took {fast:?} \
         before, {slow:?} with the delay; {:?} in all",
        started.elapsed()
    );
    // Both crossings are delayed: the publish (follower to leader) and the acknowledgement.
    assert!(
        slow >= 2 * delay,
        "an append across a {delay:?} link and back took {slow:?}"
    );
    assert_eq!(ack.sequence, last + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_way_hold_stops_only_what_one_side_sends() {
    let started = Instant::now();
    let cluster = proxied_cluster();
    let net = cluster.route_net();
    let stream = "ONEWAY";
    let admin = connect(&cluster.urls(), Duration::from_secs(2)).await;
    r3_stream(&cluster, &admin, stream, "oneway").await;
    let leader = cluster
        .stream_leader(&admin, stream, Duration::from_secs(10))
        .await;
    let follower = net.others(&leader)[0].clone();
    let on_leader = connect(&node(&cluster, &leader).url(), Duration::from_secs(2)).await;
    let routes_before = pair_routes(&cluster, &leader, &follower);
    let append_10 = || async {
        let mut last = 0;
        for _ in 0..10 {
            last = append(&on_leader, "oneway.x")
                .await
                .expect("the leader and the other follower are a quorum")
                .sequence;
        }
        last
    };

    // What the follower sends is held; what the leader sends still arrives: the follower's
    // replica keeps up, though the leader hears none of its replies.
    net.link(&follower, &leader).hold_one_way();
    let first = append_10().await;
    let follower_node = node(&cluster, &follower);
    eventually(Duration::from_secs(3), "the follower keeping up", || {
        (local_last_seq(follower_node, stream) == Some(first)).then_some(())
    })
    .await;
    net.link(&follower, &leader).heal();

    // What the leader sends is held: the follower's replica stops until the release.
    net.link(&leader, &follower).hold_one_way();
    let held_at = Instant::now();
    let second = append_10().await;
    tokio::time::sleep(Duration::from_millis(1500).saturating_sub(held_at.elapsed())).await;
    let stalled = local_last_seq(follower_node, stream);
    net.link(&leader, &follower).heal();
    eventually(Duration::from_secs(10), "the follower caught up", || {
        (local_last_seq(follower_node, stream) == Some(second)).then_some(())
    })
    .await;
    let routes_after = pair_routes(&cluster, &leader, &follower);
    println!(
        "ONE-WAY {leader}/{follower}: with {follower}'s sends held it kept up to {first}; with \
         {leader}'s sends held it stalled at {stalled:?} of {second} and caught up after the \
         heal; routes {routes_before:?} -> {routes_after:?}; {:?} in all",
        started.elapsed()
    );
    assert!(
        stalled.is_some_and(|seq| seq <= first),
        "{follower} got {stalled:?} while what {leader} sends was held (had {first})"
    );
    assert_eq!(
        routes_after, routes_before,
        "a one-way hold replaced routes"
    );
}
