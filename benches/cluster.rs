//! Cluster placement benchmark (not a timed test): ring lookup and shard hashing cost, the
//! leader's assignment computation for 1024 shards × 100 nodes, and — side by side for the plain
//! hash ring and the leader's assignment — imbalance (max/mean primaries per node) and shards
//! moved when a node joins or leaves, against the ideal.
//!
//! Run: `cargo bench --bench cluster` (criterion; e.g. `-- --warm-up-time 1 --measurement-time 2`
//! for a quick run). The imbalance/movement table is computed, not timed: it is printed first,
//! then criterion times the `placement/*` benchmarks.

use std::hint::black_box;

use aether::cluster::{HashRing, NodeId, Placement, ShardConfig, ShardId, shard_of};
use criterion::{Criterion, criterion_group};

const SHARDS: u32 = 1024;
const VIRTUAL_NODES: usize = 150;

fn nodes(count: usize) -> Vec<NodeId> {
    (0..count)
        .map(|i| NodeId::new(format!("node-{i}")).unwrap())
        .collect()
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

/// The timed part: hashing, ring lookup and build, and the leader's assignment computation.
fn placement(c: &mut Criterion) {
    let mut group = c.benchmark_group("placement");

    let ids: Vec<String> = (0..100_000).map(|i| format!("account-{i}")).collect();
    group.bench_function("shard_of(actor id)", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % ids.len();
            shard_of(black_box(&ids[i]), SHARDS)
        })
    });

    let ring = HashRing::new(nodes(100), VIRTUAL_NODES).unwrap();
    group.bench_function("ring lookup, 100 nodes x 150 vnodes", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % SHARDS;
            ring.owner_of(ShardId(black_box(i)))
        })
    });
    group.bench_function("ring build, 100 nodes x 150 vnodes", |b| {
        b.iter(|| HashRing::new(nodes(100), VIRTUAL_NODES).unwrap())
    });

    // Assignment runs take a few hundred µs: fewer samples fit the default measurement time.
    group.sample_size(50);
    let members = nodes(100);
    let joined = nodes(101);
    let base = Placement::compute(&config(1), members.clone(), None).unwrap();
    let base3 = Placement::compute(&config(3), members.clone(), None).unwrap();
    group.bench_function("assignment 1024 x 100, from scratch", |b| {
        b.iter(|| Placement::compute(&config(1), members.clone(), None).unwrap())
    });
    group.bench_function("assignment 1024 x 100 -> 101 (join)", |b| {
        b.iter(|| Placement::compute(&config(1), joined.clone(), Some(&base)).unwrap())
    });
    group.bench_function("assignment 1024 x 100 -> 101, R=3", |b| {
        b.iter(|| Placement::compute(&config(3), joined.clone(), Some(&base3)).unwrap())
    });
    group.finish();
}

/// The untimed part: imbalance and shards moved on join/leave, plain ring vs assignment vs ideal.
fn print_balance_table() {
    println!("# aether cluster placement ({SHARDS} shards, {VIRTUAL_NODES} virtual nodes)\n");
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
         placement (Placement::minimum_moves).\n"
    );
}

criterion_group!(benches, placement);

// `criterion_main!` with the table first. Skipped when criterion is only asked to list the
// benchmarks, or runs them once as tests (`cargo test --benches`).
fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--list" || a == "--test") {
        print_balance_table();
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
