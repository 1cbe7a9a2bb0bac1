//! Cluster placement benchmark (not a timed test): ring lookup and shard hashing cost, the
//! leader's assignment computation for 1024 shards × 100 nodes, and — side by side for the plain
//! hash ring and the leader's assignment — imbalance (max/mean primaries per node) and shards
//! moved when a node joins or leaves, against the ideal.
//!
//! Run: `cargo bench --bench cluster`
#![allow(clippy::disallowed_methods)] // a benchmark measures real time

use std::hint::black_box;
use std::time::{Duration, Instant};

use aether::cluster::{HashRing, NodeId, Placement, ShardConfig, ShardId, shard_of};

const SHARDS: u32 = 1024;
const VIRTUAL_NODES: usize = 150;

fn nodes(count: usize) -> Vec<NodeId> {
    (0..count)
        .map(|i| NodeId::new(format!("node-{i}")).unwrap())
        .collect()
}

/// Mean time per call of `f` over `iterations` calls, after a warm-up.
fn per_op(iterations: u64, mut f: impl FnMut(u64)) -> Duration {
    for i in 0..iterations.min(1000) {
        f(i);
    }
    let start = Instant::now();
    for i in 0..iterations {
        f(i);
    }
    start.elapsed() / iterations as u32
}

fn config(replication_factor: usize) -> ShardConfig {
    ShardConfig::with_shard_count(SHARDS)
        .replication_factor(replication_factor)
        .virtual_nodes(VIRTUAL_NODES)
}

fn max_over_mean(loads: &[usize]) -> f64 {
    let mean = loads.iter().sum::<usize>() as f64 / loads.len() as f64;
    *loads.iter().max().unwrap() as f64 / mean
}

fn main() {
    println!("# aether cluster placement ({SHARDS} shards, {VIRTUAL_NODES} virtual nodes)\n");

    let ids: Vec<String> = (0..100_000).map(|i| format!("account-{i}")).collect();
    let t = per_op(2_000_000, |i| {
        black_box(shard_of(black_box(&ids[(i % 100_000) as usize]), SHARDS));
    });
    println!(
        "shard_of(actor id)                      {:>10.1} ns/op",
        t.as_nanos() as f64
    );

    let ring = HashRing::new(nodes(100), VIRTUAL_NODES).unwrap();
    let t = per_op(5_000_000, |i| {
        black_box(ring.owner_of(ShardId(black_box((i % SHARDS as u64) as u32))));
    });
    println!(
        "ring lookup, 100 nodes x 150 vnodes       {:>10.1} ns/op",
        t.as_nanos() as f64
    );
    let t = per_op(200, |_| {
        black_box(HashRing::new(nodes(100), VIRTUAL_NODES).unwrap());
    });
    println!(
        "ring build, 100 nodes x 150 vnodes        {:>10.1} us",
        t.as_nanos() as f64 / 1e3
    );

    let members = nodes(100);
    let t = per_op(50, |_| {
        black_box(Placement::compute(&config(1), members.clone(), None).unwrap());
    });
    println!(
        "assignment 1024 x 100, from scratch       {:>10.1} us",
        t.as_nanos() as f64 / 1e3
    );
    let base = Placement::compute(&config(1), members.clone(), None).unwrap();
    let joined = nodes(101);
    let t = per_op(50, |_| {
        black_box(Placement::compute(&config(1), joined.clone(), Some(&base)).unwrap());
    });
    println!(
        "assignment 1024 x 100 -> 101 (join)       {:>10.1} us",
        t.as_nanos() as f64 / 1e3
    );
    let base3 = Placement::compute(&config(3), members.clone(), None).unwrap();
    let t = per_op(20, |_| {
        black_box(Placement::compute(&config(3), joined.clone(), Some(&base3)).unwrap());
    });
    println!(
        "assignment 1024 x 100 -> 101, R=3         {:>10.1} us\n",
        t.as_nanos() as f64 / 1e3
    );

    println!("imbalance = max/mean primaries per node; moved = primaries that change node");
    println!(
        "{:>5} | {:>12} {:>12} | {:>10} {:>10} {:>10} | {:>10} {:>10} {:>10}",
        "nodes",
        "ring imbal.",
        "assign imbal.",
        "join ring",
        "join asg",
        "join ideal",
        "leave ring",
        "leave asg",
        "leave ideal"
    );
    for n in [3usize, 5, 10, 20, 50, 100] {
        let before = nodes(n);
        let grown = nodes(n + 1);
        let shrunk: Vec<NodeId> = before[1..].to_vec();

        let ring_before = Placement::from_ring(&config(1), before.clone()).unwrap();
        let ring_grown = Placement::from_ring(&config(1), grown.clone()).unwrap();
        let ring_shrunk = Placement::from_ring(&config(1), shrunk.clone()).unwrap();
        let asg_before = Placement::compute(&config(1), before.clone(), None).unwrap();
        let asg_grown = Placement::compute(&config(1), grown.clone(), Some(&asg_before)).unwrap();
        let asg_shrunk = Placement::compute(&config(1), shrunk.clone(), Some(&asg_before)).unwrap();

        println!(
            "{:>5} | {:>12.3} {:>12.3} | {:>10} {:>10} {:>10} | {:>10} {:>10} {:>10}",
            n,
            max_over_mean(&ring_before.primary_loads()),
            max_over_mean(&asg_before.primary_loads()),
            ring_grown.primaries_moved_from(&ring_before),
            asg_grown.primaries_moved_from(&asg_before),
            Placement::minimum_moves(&asg_before, grown).unwrap(),
            ring_shrunk.primaries_moved_from(&ring_before),
            asg_shrunk.primaries_moved_from(&asg_before),
            Placement::minimum_moves(&asg_before, shrunk).unwrap(),
        );
    }
    println!(
        "\nideal = the fewest moves any placement within floor/ceil(S/N) needs from the balanced \
         placement (Placement::minimum_moves)."
    );
}
