//! Multi-node cluster scenarios, generic over the broker: `tests/cluster.rs` runs them on the
//! memory broker under tokio's paused clock, `tests/cluster_nats.rs` on a real nats-server with
//! one connection per node.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aether::broker::{Broker, KvConfig};
use aether::cluster::{
    Assignment, Cluster, ClusterConfig, ClusterEvent, ClusterEventKind, ClusterInputError,
    HashRing, NodeId, Placement, ShardConfig, ShardId, StartError, StepDownReason,
};
use aether::{Clock, Runtime, SharedRng, SystemClock};
use bytes::Bytes;
use futures::future::BoxFuture;

/// Upper bound on reaching one leader and one acknowledged assignment everywhere.
pub const CONVERGE_MAX: Duration = Duration::from_secs(10);

/// Where a scenario runs: a way to connect a node to the broker, a clock shared by all nodes
/// (so that event times are comparable) and a log of every node's events.
pub struct Env<B: Broker> {
    /// Cluster name (bucket prefix), unique per scenario.
    pub name: String,
    /// A fresh broker handle (its own connection, on NATS) per node.
    pub connect: Arc<dyn Fn() -> BoxFuture<'static, B> + Send + Sync>,
    /// The clock every node runs on.
    pub clock: SystemClock,
    /// Every event of every node, in the order they happened.
    pub log: Arc<Mutex<Vec<ClusterEvent>>>,
}

pub type Node<B> = Cluster<B, SystemClock>;

impl<B: Broker> Env<B> {
    pub fn new(
        name: &str,
        connect: impl Fn() -> BoxFuture<'static, B> + Send + Sync + 'static,
    ) -> Self {
        Self {
            name: name.to_owned(),
            connect: Arc::new(connect),
            clock: SystemClock::new(),
            log: Arc::new(Mutex::new(Vec::new())),
        }
    }

    pub fn config(&self) -> ClusterConfig {
        ClusterConfig::new().name(self.name.clone())
    }

    pub async fn runtime(&self, seed: u64, id: &str) -> Runtime<B, SystemClock> {
        Runtime::new(
            (self.connect)().await,
            self.clock.clone(),
            SharedRng::from_seed(seed),
        )
        .with_node(NodeId::new(id).unwrap())
    }

    pub async fn try_start(&self, id: &str) -> Result<Node<B>, StartError> {
        let seed = aether::cluster::hash::fnv1a64(id.as_bytes());
        let log = self.log.clone();
        Cluster::start_with_observer(self.runtime(seed, id).await, self.config(), move |e| {
            log.lock().unwrap().push(e.clone())
        })
        .await
    }

    pub async fn start(&self, id: &str) -> Node<B> {
        self.try_start(id).await.expect("node starts")
    }

    pub fn now(&self) -> Duration {
        self.clock.monotonic()
    }

    /// Waits until `cond` holds; returns how long that took in clock time.
    pub async fn wait_until(
        &self,
        within: Duration,
        what: &str,
        mut cond: impl FnMut() -> bool,
    ) -> Duration {
        let start = self.now();
        loop {
            if cond() {
                return self.now() - start;
            }
            assert!(self.now() - start < within, "{what}: not within {within:?}");
            self.clock.sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn events(&self) -> Vec<ClusterEvent> {
        self.log.lock().unwrap().clone()
    }
}

/// One leader acting, and every node has applied and acknowledged the same assignment over
/// exactly these nodes, and agrees on the leader.
pub fn converged<B: Broker>(nodes: &[&Node<B>]) -> bool {
    let ids: BTreeSet<NodeId> = nodes.iter().map(|n| n.node_id().clone()).collect();
    if nodes.iter().filter(|n| n.is_leader()).count() != 1 {
        return false;
    }
    let views: Vec<_> = nodes.iter().map(|n| n.view()).collect();
    let epoch = views[0].epoch();
    epoch.is_some()
        && views.iter().all(|v| {
            v.epoch() == epoch
                && v.acknowledged_epoch == epoch
                && v.members == ids
                && v.leader == views[0].leader
                && v.assignment.as_ref().is_some_and(|a| {
                    a.placement()
                        .members()
                        .iter()
                        .cloned()
                        .collect::<BTreeSet<_>>()
                        == ids
                })
        })
}

pub async fn wait_converged<B: Broker>(env: &Env<B>, nodes: &[&Node<B>]) -> Arc<Assignment> {
    env.wait_until(CONVERGE_MAX, "cluster converges", || converged(nodes))
        .await;
    nodes[0].assignment().unwrap()
}

fn leader_of<'a, B: Broker>(nodes: &[&'a Node<B>]) -> &'a Node<B> {
    nodes.iter().find(|n| n.is_leader()).expect("a leader")
}

/// Invariant 6 on the event log: leadership intervals (acquired → acted until) of different
/// terms never overlap on the shared clock, and tokens grow in acquisition order.
pub fn check_leadership_history(events: &[ClusterEvent], now: Duration) {
    let mut open: BTreeMap<(NodeId, u64), (Duration, Duration)> = BTreeMap::new();
    let mut intervals: Vec<(u64, NodeId, Duration, Duration)> = Vec::new();
    for e in events {
        match &e.kind {
            ClusterEventKind::LeadershipAcquired { token, deadline } => {
                open.insert((e.node.clone(), *token), (e.at, *deadline));
            }
            ClusterEventKind::LeaseRenewed {
                token, deadline, ..
            } => {
                if let Some(i) = open.get_mut(&(e.node.clone(), *token)) {
                    i.1 = *deadline;
                }
            }
            ClusterEventKind::LeadershipEnded {
                token, acted_until, ..
            } => {
                let (from, deadline) = open
                    .remove(&(e.node.clone(), *token))
                    .expect("ended a term that began");
                assert!(*acted_until <= deadline, "acted past its deadline");
                intervals.push((*token, e.node.clone(), from, *acted_until));
            }
            _ => {}
        }
    }
    for ((node, token), (from, deadline)) in open {
        intervals.push((token, node, from, deadline.min(now)));
    }
    intervals.sort_by_key(|i| i.2);
    for w in intervals.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        assert!(b.0 > a.0, "token {} acquired after token {}", b.0, a.0);
        assert!(
            a.3 <= b.2,
            "leaders overlap: {} (token {}) until {:?}, {} (token {}) from {:?}",
            a.1,
            a.0,
            a.3,
            b.1,
            b.0,
            b.2
        );
    }
}

/// Hosted sets of all nodes partition the shards, each within the balance bound.
fn check_hosting<B: Broker>(nodes: &[&Node<B>], shard_count: u32) {
    let n = nodes.len();
    let s = shard_count as usize;
    let mut all = BTreeSet::new();
    for node in nodes {
        let hosted = node.view().hosted;
        assert!(
            hosted.len() == s / n || hosted.len() == s.div_ceil(n),
            "{} hosts {} shards",
            node.node_id(),
            hosted.len()
        );
        for shard in hosted {
            assert!(all.insert(shard), "{shard} hosted twice");
        }
    }
    assert_eq!(all.len(), s);
}

// ---------------------------------------------------------------------------------------------

/// 3–5 nodes join, elect one leader and converge on one balanced assignment; every node routes
/// every actor to the same owner, which hosts its shard.
pub async fn nodes_join_elect_one_leader_and_converge<B: Broker>(env: &Env<B>, count: usize) {
    let mut nodes = Vec::new();
    for i in 0..count {
        nodes.push(env.start(&format!("node-{i}")).await);
    }
    let refs: Vec<&Node<B>> = nodes.iter().collect();
    let took = env
        .wait_until(CONVERGE_MAX, "converge", || converged(&refs))
        .await;
    println!("{count} nodes converged after {took:?} (clock time)");
    check_hosting(&refs, ShardConfig::default().shard_count);
    for actor in ["account-1", "order/7", "ünïcödé", ""] {
        let owners: BTreeSet<NodeId> = refs.iter().map(|n| n.owner_of(actor).unwrap()).collect();
        assert_eq!(owners.len(), 1, "nodes disagree on the owner of {actor:?}");
        let owner = owners.into_iter().next().unwrap();
        let host = refs.iter().find(|n| *n.node_id() == owner).unwrap();
        assert!(host.hosts(host.shard_of(actor)));
        assert_eq!(host.route(actor).unwrap().epoch, refs[0].view().epoch());
    }
    check_leadership_history(&env.events(), env.now());
    for n in &nodes {
        n.stop().await;
    }
}

/// The leader stops (cleanly, or by crashing) → another node leads with a larger token within
/// the bound, and the assignment re-converges on the survivors. Returns the failover time.
pub async fn leader_loss_elects_a_larger_token<B: Broker>(env: &Env<B>, crash: bool) -> Duration {
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(Some(env.start(&format!("node-{i}")).await));
    }
    let refs: Vec<&Node<B>> = nodes.iter().flatten().collect();
    wait_converged(env, &refs).await;
    let leader = leader_of(&refs);
    let old = leader.leader().unwrap();
    assert_eq!(old.node, *leader.node_id());
    let index = nodes
        .iter()
        .position(|n| n.as_ref().is_some_and(|n| n.node_id() == leader.node_id()))
        .unwrap();
    let gone = nodes[index].take().unwrap();
    let stopped_at = env.now();
    if crash {
        drop(gone); // no release, no leave: lease and membership expire by TTL
    } else {
        gone.stop().await;
    }
    let survivors: Vec<&Node<B>> = nodes.iter().flatten().collect();
    let config = env.config();
    let bound = if crash {
        config.lease_ttl + config.poll_interval + config.poll_jitter + Duration::from_millis(500)
    } else {
        Duration::from_secs(1)
    };
    env.wait_until(bound + Duration::from_secs(5), "a new leader", || {
        survivors
            .iter()
            .any(|n| n.is_leader() && n.leader().is_some_and(|l| l.token > old.token))
    })
    .await;
    let failover = env.now() - stopped_at;
    let how = if crash { "crash" } else { "clean stop" };
    println!("leader failover after {how}: {failover:?} (clock time; bound {bound:?})");
    assert!(
        failover <= bound,
        "failover took {failover:?}, bound {bound:?}"
    );
    let new = leader_of(&survivors).leader().unwrap();
    assert!(new.token > old.token);
    assert_ne!(new.node, old.node);
    let a = wait_converged(env, &survivors).await;
    assert_eq!(a.leader_token(), new.token);
    check_hosting(&survivors, ShardConfig::default().shard_count);
    check_leadership_history(&env.events(), env.now());
    for n in survivors {
        n.stop().await;
    }
    failover
}

/// A non-leader leaves → exactly its shards move, everything else stays.
pub async fn a_leave_moves_only_the_leavers_shards<B: Broker>(env: &Env<B>) {
    let mut nodes = Vec::new();
    for i in 0..5 {
        nodes.push(Some(env.start(&format!("node-{i}")).await));
    }
    let refs: Vec<&Node<B>> = nodes.iter().flatten().collect();
    let before = wait_converged(env, &refs).await;
    let index = nodes
        .iter()
        .position(|n| n.as_ref().is_some_and(|n| !n.is_leader()))
        .unwrap();
    let gone = nodes[index].take().unwrap();
    let gone_id = gone.node_id().clone();
    let lost = before.placement().primaries_of(&gone_id);
    gone.stop().await;
    let survivors: Vec<&Node<B>> = nodes.iter().flatten().collect();
    let after = wait_converged(env, &survivors).await;
    assert!(after.epoch() > before.epoch());
    let moved = after.placement().primaries_moved_from(before.placement());
    let minimum =
        Placement::minimum_moves(before.placement(), after.placement().members().to_vec()).unwrap();
    println!(
        "leave of 1 of 5 nodes: {moved} shards moved, the leaver held {}, minimum {minimum}",
        lost.len()
    );
    assert_eq!(moved, lost.len());
    assert_eq!(moved, minimum);
    for s in 0..before.placement().shard_count() {
        let shard = ShardId(s);
        if before.placement().owner(shard) != &gone_id {
            assert_eq!(
                after.placement().owner(shard),
                before.placement().owner(shard)
            );
        }
    }
    check_hosting(&survivors, ShardConfig::default().shard_count);
    for n in survivors {
        n.stop().await;
    }
}

/// A node joins → the minimum number of shards moves, all of them to the new node.
pub async fn a_join_moves_the_minimum<B: Broker>(env: &Env<B>) {
    let mut nodes = Vec::new();
    for i in 0..4 {
        nodes.push(env.start(&format!("node-{i}")).await);
    }
    let refs: Vec<&Node<B>> = nodes.iter().collect();
    let before = wait_converged(env, &refs).await;
    nodes.push(env.start("node-4").await);
    let refs: Vec<&Node<B>> = nodes.iter().collect();
    let after = wait_converged(env, &refs).await;
    let moved = after.placement().primaries_moved_from(before.placement());
    let minimum =
        Placement::minimum_moves(before.placement(), after.placement().members().to_vec()).unwrap();
    let new = NodeId::new("node-4").unwrap();
    println!(
        "join of a 5th node: {moved} shards moved (minimum {minimum}, ideal 1024/5 = {:.1})",
        1024.0 / 5.0
    );
    assert_eq!(moved, minimum);
    assert_eq!(moved, after.placement().primaries_of(&new).len());
    check_hosting(&refs, ShardConfig::default().shard_count);
    for n in &nodes {
        n.stop().await;
    }
}

/// Bad configuration and a live duplicate id are refused with typed errors; a crashed node's
/// id can be reused once it stops heartbeating.
pub async fn bad_input_and_duplicate_ids_are_refused<B: Broker>(env: &Env<B>) {
    let mut zero = env.config();
    zero.shards.shard_count = 0;
    let err = Cluster::start(env.runtime(1, "z").await, zero)
        .await
        .unwrap_err();
    assert_eq!(err, StartError::Invalid(ClusterInputError::ZeroShards));
    let mut timing = env.config();
    timing.lease_step_down_after = timing.lease_ttl;
    let err = Cluster::start(env.runtime(1, "z").await, timing)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StartError::Invalid(ClusterInputError::InvalidTiming { .. })
        ),
        "{err}"
    );
    let mut name = env.config();
    name.name = "a.b".into();
    assert!(matches!(
        Cluster::start(env.runtime(1, "z").await, name).await,
        Err(StartError::Invalid(
            ClusterInputError::InvalidClusterName { .. }
        ))
    ));
    assert!(matches!(
        NodeId::new("no spaces"),
        Err(aether::InvalidNodeId { .. })
    ));

    let first = env.start("same").await;
    env.wait_until(CONVERGE_MAX, "first node leads", || first.is_leader())
        .await;
    let err = env.try_start("same").await.unwrap_err();
    assert_eq!(
        err,
        StartError::DuplicateNodeId {
            node: NodeId::new("same").unwrap()
        }
    );
    println!("duplicate id refused: {err}");
    drop(first); // crash
    let again = env.start("same").await;
    env.wait_until(CONVERGE_MAX, "restarted node leads", || again.is_leader())
        .await;
    again.stop().await;
}

/// Before any assignment exists (a lease held by a silent node blocks the election), every node
/// routes by the hash ring over the members, and they agree; once the stale lease expires, a
/// leader publishes and routing follows the assignment.
pub async fn routing_falls_back_to_the_ring_without_a_leader<B: Broker>(env: &Env<B>) {
    let config = env.config();
    let broker = (env.connect)().await;
    let buckets = (
        format!("{}-members", config.name),
        format!("{}-leader", config.name),
    );
    let ttl_bucket = |name: &str, ttl| KvConfig::new(name).ttl(ttl);
    broker
        .kv_ensure(ttl_bucket(&buckets.0, config.member_ttl))
        .await
        .unwrap();
    broker
        .kv_ensure(ttl_bucket(&buckets.1, config.lease_ttl))
        .await
        .unwrap();
    let ghost = r#"{"holder":"ghost","incarnation":"x","token":null,"released":false}"#;
    broker
        .kv_create(&buckets.1, "leader", Bytes::from_static(ghost.as_bytes()))
        .await
        .unwrap();
    let nodes = [
        env.start("a").await,
        env.start("b").await,
        env.start("c").await,
    ];
    env.wait_until(CONVERGE_MAX, "members known", || {
        nodes.iter().all(|n| n.view().members.len() == 3)
    })
    .await;
    assert!(
        nodes
            .iter()
            .all(|n| n.assignment().is_none() && !n.is_leader())
    );
    assert_eq!(nodes[0].leader().unwrap().node.as_str(), "ghost");
    let ring = HashRing::new(nodes.iter().map(|n| n.node_id().clone()), 150).unwrap();
    for actor in ["account-1", "account-2", "order/3"] {
        let route = nodes[0].route(actor).unwrap();
        assert_eq!(route.epoch, None);
        assert_eq!(Some(&route.owners[0]), ring.owner_of(route.shard));
        assert!(nodes.iter().all(|n| n.route(actor).unwrap() == route));
    }
    let refs: Vec<&Node<B>> = nodes.iter().collect();
    let a = wait_converged(env, &refs).await;
    assert_eq!(nodes[0].route("account-1").unwrap().epoch, Some(a.epoch()));
    for n in &nodes {
        n.stop().await;
    }
}

/// The event log shows the leader's term, its publication, what each node hosts, and on a clean
/// stop: step down (released), release of shards, stopped — in that order.
pub async fn events_record_leadership_and_hosting<B: Broker>(env: &Env<B>) {
    let a = env.start("a").await;
    env.wait_until(CONVERGE_MAX, "a leads", || a.is_leader())
        .await;
    let b = env.start("b").await;
    wait_converged(env, &[&a, &b]).await;
    let events = b.events();
    let token = a.leader().unwrap().token;
    a.stop().await;
    let of = |node: &str| -> Vec<ClusterEventKind> {
        env.events()
            .iter()
            .filter(|e| e.node.as_str() == node)
            .map(|e| e.kind.clone())
            .collect()
    };
    let a_log = of("a");
    let pos = |p: &dyn Fn(&ClusterEventKind) -> bool| a_log.iter().position(p).unwrap();
    let acquired =
        pos(&|k| matches!(k, ClusterEventKind::LeadershipAcquired { token: t, .. } if *t == token));
    let published = pos(
        &|k| matches!(k, ClusterEventKind::AssignmentPublished { token: t, .. } if *t == token),
    );
    let ended = pos(
        &|k| matches!(k, ClusterEventKind::LeadershipEnded { token: t, reason: StepDownReason::Released, .. } if *t == token),
    );
    let released = a_log
        .iter()
        .rposition(|k| matches!(k, ClusterEventKind::ShardsReleased { .. }))
        .unwrap();
    let stopped = pos(&|k| matches!(k, ClusterEventKind::Stopped));
    assert!(acquired < published && published < ended && ended < released && released < stopped);
    // b saw a join and a leave, and hosts everything after a left.
    let b_log = of("b");
    assert!(b_log.contains(&ClusterEventKind::MemberJoined {
        member: NodeId::new("a").unwrap()
    }));
    env.wait_until(CONVERGE_MAX, "b alone, having seen a leave", || {
        converged(&[&b])
            && of("b").contains(&ClusterEventKind::MemberLeft {
                member: NodeId::new("a").unwrap(),
            })
    })
    .await;
    assert_eq!(b.view().hosted.len(), 1024);
    // The subscription, read as a stream, saw b take over.
    use futures::StreamExt;
    let mut events = std::pin::pin!(events.into_stream());
    let mut saw_acquired = false;
    while let Some(Ok(e)) = events.next().await {
        if matches!(e.kind, ClusterEventKind::LeadershipAcquired { token: t, .. } if t > token) {
            saw_acquired = true;
            break;
        }
    }
    assert!(saw_acquired);
    check_leadership_history(&env.events(), env.now());
    b.stop().await;
}

/// An assignment with an older epoch written into KV is ignored by every node, and the leader
/// republishes the newest placement on top of it under a new epoch.
pub async fn an_older_epoch_is_never_applied<B: Broker>(env: &Env<B>) {
    let a = env.start("a").await;
    env.wait_until(CONVERGE_MAX, "a converges", || converged(&[&a]))
        .await;
    let first = a.assignment().unwrap();
    let b = env.start("b").await;
    let second = wait_converged(env, &[&a, &b]).await;
    assert!(second.epoch() > first.epoch());
    let broker = (env.connect)().await;
    let bucket = format!("{}-assignment", env.name);
    broker
        .kv_put(&bucket, "assignment", first.encode())
        .await
        .unwrap();
    // The leader notices KV went back and republishes the newest placement on top.
    env.wait_until(CONVERGE_MAX, "leader republishes", || {
        a.view().epoch() > Some(second.epoch()) && converged(&[&a, &b])
    })
    .await;
    let republished = a.assignment().unwrap();
    assert_eq!(republished.placement(), second.placement());
    for n in [&a, &b] {
        assert_eq!(n.view().hosted.len(), 512);
    }
    // No node ever applied the older epoch again.
    for e in env.events() {
        if let ClusterEventKind::AssignmentApplied {
            epoch,
            previous_epoch: Some(p),
            ..
        } = e.kind
        {
            assert!(epoch > p, "{} went from epoch {p} to {epoch}", e.node);
        }
    }
    let c = env.start("c").await;
    let third = wait_converged(env, &[&a, &b, &c]).await;
    assert!(third.epoch() > second.epoch());
    for n in [&a, &b, &c] {
        n.stop().await;
    }
}

/// A former leader's update that lands after the next leader took office (sent inside its
/// lease, delivered late: the update's revision check passes because the new leader has not
/// written yet). The placement it carries was made for the membership that leader saw, here a
/// cluster of `b` alone. The acting leader must rebuild on top of it, under its own token; a
/// leader that only reacts to membership changes would keep it for good.
pub async fn a_former_leaders_late_assignment_is_rebuilt<B: Broker>(env: &Env<B>) {
    let a = env.start("a").await;
    let b = env.start("b").await;
    let second = wait_converged(env, &[&a, &b]).await;
    let token = leader_of(&[&a, &b]).leader().unwrap().token;
    assert!(token >= 1);
    let shards = env.config().shards;
    let only_b =
        Placement::compute(&shards, [b.node_id().clone()], Some(second.placement())).unwrap();
    let late = Assignment::new(second.epoch() + 1, token - 1, only_b);
    let broker = (env.connect)().await;
    let bucket = format!("{}-assignment", env.name);
    broker
        .kv_put(&bucket, "assignment", late.encode())
        .await
        .unwrap();
    env.wait_until(CONVERGE_MAX, "the late assignment is applied", || {
        [&a, &b]
            .iter()
            .all(|n| n.view().epoch() >= Some(late.epoch()))
    })
    .await;
    env.wait_until(CONVERGE_MAX, "the leader rebuilds the placement", || {
        a.view().epoch() > Some(late.epoch()) && converged(&[&a, &b])
    })
    .await;
    let rebuilt = a.assignment().unwrap();
    assert_eq!(
        rebuilt.leader_token(),
        token,
        "published by the acting leader"
    );
    for n in [&a, &b] {
        assert_eq!(n.view().hosted.len(), 512, "{} hosts its half", n.node_id());
    }
    for n in [&a, &b] {
        n.stop().await;
    }
}

/// A projection on a three-node cluster, every node running it with `run_owned`: only the
/// owner of `projection/<name>` steps. The owner crashes (no leave: its membership expires) in
/// the middle of 300 commits; a standby becomes the owner and carries on from the checkpoint.
/// Every commit is handed over, by one node at a time, and only the page in flight at the
/// crash may be handed over twice.
pub async fn one_projector_per_name_runs_and_a_standby_takes_over<B: Broker>(env: &Env<B>) {
    use aether::projection::{Follow, Projector};
    use aether::{EventStore, ExpectedVersion, NewEvent, StoreConfig};

    type Seen = Arc<Mutex<Vec<(NodeId, u64)>>>;
    let ns = format!("{}proj", env.name);
    let seen: Seen = Arc::default();
    let mut nodes = Vec::new();
    let mut runs = Vec::new();
    for i in 0..3 {
        let id = format!("node-{i}");
        let node = Arc::new(env.start(&id).await);
        let seed = 1_000 + i as u64;
        let store = EventStore::open(env.runtime(seed, &id).await, StoreConfig::new(&ns))
            .await
            .expect("store");
        let projector = Projector::open::<String>(store, "view")
            .await
            .expect("projector")
            .page_max(10)
            .follow(Follow::default().poll_interval(Duration::from_millis(50)));
        let (router, seen, me) = (node.clone(), seen.clone(), node.node_id().clone());
        runs.push(tokio::spawn(async move {
            projector
                .run_owned(
                    &*router,
                    |page: aether::Page| {
                        seen.lock()
                            .unwrap()
                            .extend(page.commits.iter().map(|c| (me.clone(), c.position)));
                        std::future::ready(Ok::<(), String>(()))
                    },
                    std::future::pending::<()>(),
                )
                .await
        }));
        nodes.push(Some(node));
    }
    let refs: Vec<&Node<B>> = nodes.iter().flatten().map(|n| &**n).collect();
    wait_converged(env, &refs).await;
    let owner = refs[0].owner_of("projection/view").expect("an owner");
    let writer = EventStore::open(env.runtime(7, "writer").await, StoreConfig::new(&ns))
        .await
        .expect("store");
    let write = |from: u64, to: u64| {
        let writer = writer.clone();
        async move {
            for n in from..to {
                writer
                    .append(
                        &format!("a-{}", n % 7),
                        ExpectedVersion::Any,
                        vec![NewEvent::new("E", serde_json::json!({ "n": n }))],
                    )
                    .await
                    .expect("append");
            }
        }
    };
    write(0, 150).await;
    env.wait_until(CONVERGE_MAX, "the owner projects the first half", || {
        seen.lock().unwrap().len() >= 150
    })
    .await;
    // The owner crashes: its cluster node and its projector vanish without a word.
    let index = nodes
        .iter()
        .position(|n| n.as_ref().is_some_and(|n| *n.node_id() == owner))
        .unwrap();
    runs[index].abort();
    drop(nodes[index].take());
    let crashed_at = seen.lock().unwrap().len();
    write(150, 300).await;
    let survivors: Vec<&Node<B>> = nodes.iter().flatten().map(|n| &**n).collect();
    let config = env.config();
    let within = config.lease_ttl * 4 + CONVERGE_MAX;
    env.wait_until(within, "a standby projects the rest", || {
        let positions: BTreeSet<u64> = seen.lock().unwrap().iter().map(|(_, p)| *p).collect();
        positions.len() >= 300
    })
    .await;
    let seen = seen.lock().unwrap().clone();
    let before: BTreeSet<&NodeId> = seen[..crashed_at].iter().map(|(n, _)| n).collect();
    assert_eq!(before, BTreeSet::from([&owner]), "only the owner projected");
    let after: BTreeSet<&NodeId> = seen[crashed_at..].iter().map(|(n, _)| n).collect();
    assert_eq!(after.len(), 1, "one standby took over: {after:?}");
    assert!(!after.contains(&owner));
    let unique: BTreeSet<u64> = seen.iter().map(|(_, p)| *p).collect();
    assert_eq!(unique.len(), 300, "every commit handed over");
    assert!(
        seen.len() - unique.len() <= 10,
        "only the page in flight at the crash twice: {} repeats",
        seen.len() - unique.len()
    );
    for run in runs {
        run.abort();
    }
    for n in survivors {
        n.stop().await;
    }
}
