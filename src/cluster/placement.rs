//! Shard placement: the leader's balanced, minimal-move placement, and the ring placement it
//! replaces.
//!
//! [`Placement::compute`] is a pure function of (shard config, member set, previous placement):
//!
//! - **Balanced**: every member holds `floor(S/N)` or `ceil(S/N)` primaries (so none holds more
//!   than `ceil(S/N)`); with replicas, no member holds more than `ceil(S·R/N)` slots in total.
//! - **Minimal movement**: a primary stays where it was unless its node left or its node must
//!   shed load to meet the bound. Nodes that held the most keep the `S mod N` larger quotas, so
//!   the number of moved primaries is exactly the minimum any balanced placement needs
//!   ([`Placement::minimum_moves`]).
//! - **Replicas on distinct nodes**: a shard's standbys never share a node with each other or
//!   with the primary. A primary that must move prefers one of its old standbys (warm state).
//! - **Deterministic**: members are sorted first and every choice is made in a fixed order, so
//!   the result does not depend on the order the members were listed in.
//!
//! An [`Assignment`](super::Assignment) is a placement stamped with an epoch and the fencing
//! token of the leader that published it.
//!
//! (Longer than most files: about half of it is the property tests that pin the rules above.)
//!
//! (About 500 lines of code; the property and regression tests at the end make up the rest.)

use serde::{Deserialize, Serialize};

use super::ring::HashRing;
use super::shard::{ClusterInputError, NodeId, ShardConfig, ShardId, sorted_distinct};

/// Shard → owners (primary first, then standbys), over a sorted member list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    shard_count: u32,
    replication_factor: usize,
    /// Sorted, distinct.
    members: Vec<NodeId>,
    /// Per shard: indices into `members`, primary first, distinct.
    owners: Vec<Vec<u32>>,
}

/// Checks the shared preconditions and returns the sorted members.
fn prepare(
    config: &ShardConfig,
    members: impl IntoIterator<Item = NodeId>,
) -> Result<Vec<NodeId>, ClusterInputError> {
    config.validate()?;
    let members = sorted_distinct(members)?;
    if members.is_empty() {
        return Err(ClusterInputError::NoMembers);
    }
    if config.replication_factor > members.len() {
        return Err(ClusterInputError::ReplicationExceedsMembers {
            replication_factor: config.replication_factor,
            members: members.len(),
        });
    }
    Ok(members)
}

impl Placement {
    /// The placement the plain hash ring gives: owner and standbys clockwise from the shard's
    /// point. Not balanced; used before a leader has published an assignment, and as the
    /// baseline in the benchmark.
    ///
    /// # Errors
    /// Bad configuration, no members, duplicate members, replication factor above the member
    /// count.
    pub fn from_ring(
        config: &ShardConfig,
        members: impl IntoIterator<Item = NodeId>,
    ) -> Result<Self, ClusterInputError> {
        let members = prepare(config, members)?;
        let ring = HashRing::new(members.iter().cloned(), config.virtual_nodes)?;
        let owners = (0..config.shard_count)
            .map(|s| {
                ring.replica_indices(ShardId(s), config.replication_factor)
                    .into_iter()
                    .map(|i| i as u32)
                    .collect()
            })
            .collect();
        Ok(Self {
            shard_count: config.shard_count,
            replication_factor: config.replication_factor,
            members,
            owners,
        })
    }

    /// The balanced, minimal-move placement of `config.shard_count` shards on `members`, given
    /// the `previous` placement (see the module documentation). A previous placement with a
    /// different shard count is ignored.
    ///
    /// # Errors
    /// [`ClusterInputError`] for a bad configuration, no members, a duplicate member or a
    /// replication factor above the member count.
    pub fn compute(
        config: &ShardConfig,
        members: impl IntoIterator<Item = NodeId>,
        previous: Option<&Placement>,
    ) -> Result<Self, ClusterInputError> {
        let members = prepare(config, members)?;
        let ring = HashRing::new(members.iter().cloned(), config.virtual_nodes)?;
        let n = members.len();
        let s = config.shard_count as usize;
        let rf = config.replication_factor;

        // Previous owners of each shard, translated to indices into the new member list
        // (`None` for nodes that left).
        let prev: Vec<Vec<Option<usize>>> = match previous {
            Some(p) if p.shard_count == config.shard_count => p
                .owners
                .iter()
                .map(|o| {
                    o.iter()
                        .map(|&i| members.binary_search(&p.members[i as usize]).ok())
                        .collect()
                })
                .collect(),
            _ => vec![Vec::new(); s],
        };

        let primary = place_primaries(&ring, &prev, n, s);
        let mut owners: Vec<Vec<u32>> = primary.iter().map(|&p| vec![p as u32]).collect();
        if rf > 1 {
            place_standbys(&ring, &prev, &mut owners, n, rf);
        }
        let placement = Self {
            shard_count: config.shard_count,
            replication_factor: rf,
            members,
            owners,
        };
        placement.assert_balanced();
        Ok(placement)
    }

    /// The fewest primaries any balanced placement on `members` must move away from `previous`:
    /// every shard whose owner left, plus what the remaining owners must shed to meet the
    /// `floor/ceil(S/N)` quotas when the largest holders keep the larger quotas.
    ///
    /// # Errors
    /// As [`compute`](Self::compute).
    pub fn minimum_moves(
        previous: &Placement,
        members: impl IntoIterator<Item = NodeId>,
    ) -> Result<usize, ClusterInputError> {
        let config = ShardConfig {
            shard_count: previous.shard_count,
            replication_factor: 1,
            ..ShardConfig::default()
        };
        let members = prepare(&config, members)?;
        let s = previous.shard_count as usize;
        let (base, extra) = (s / members.len(), s % members.len());
        let mut held = vec![0usize; members.len()];
        for o in &previous.owners {
            if let Ok(i) = members.binary_search(&previous.members[o[0] as usize]) {
                held[i] += 1;
            }
        }
        let kept: usize = held.iter().map(|&c| c.min(base)).sum::<usize>()
            + extra.min(held.iter().filter(|&&c| c > base).count());
        Ok(s - kept)
    }

    /// Number of shards.
    pub fn shard_count(&self) -> u32 {
        self.shard_count
    }

    /// Owners per shard (primary plus standbys).
    pub fn replication_factor(&self) -> usize {
        self.replication_factor
    }

    /// The members the placement was computed for, sorted.
    pub fn members(&self) -> &[NodeId] {
        &self.members
    }

    /// The primary owner of `shard`.
    ///
    /// # Panics
    /// When `shard` is out of range.
    pub fn owner(&self, shard: ShardId) -> &NodeId {
        &self.members[self.owners[shard.index()][0] as usize]
    }

    /// Primary then standbys of `shard`, all distinct.
    ///
    /// # Panics
    /// When `shard` is out of range.
    pub fn replicas(&self, shard: ShardId) -> impl Iterator<Item = &NodeId> + '_ {
        self.owners[shard.index()]
            .iter()
            .map(|&i| &self.members[i as usize])
    }

    /// The shards `node` is primary for, ascending.
    pub fn primaries_of(&self, node: &NodeId) -> Vec<ShardId> {
        self.shards_where(node, |rank| rank == 0)
    }

    /// The shards `node` is a standby for, ascending.
    pub fn standbys_of(&self, node: &NodeId) -> Vec<ShardId> {
        self.shards_where(node, |rank| rank > 0)
    }

    fn shards_where(&self, node: &NodeId, rank_ok: impl Fn(usize) -> bool) -> Vec<ShardId> {
        let Ok(i) = self.members.binary_search(node) else {
            return Vec::new();
        };
        (0..self.shard_count)
            .filter(|&s| {
                self.owners[s as usize]
                    .iter()
                    .position(|&o| o as usize == i)
                    .is_some_and(&rank_ok)
            })
            .map(ShardId)
            .collect()
    }

    /// Primaries per member, in member order.
    pub fn primary_loads(&self) -> Vec<usize> {
        let mut loads = vec![0; self.members.len()];
        for o in &self.owners {
            loads[o[0] as usize] += 1;
        }
        loads
    }

    /// Slots (primary or standby) per member, in member order.
    pub fn total_loads(&self) -> Vec<usize> {
        let mut loads = vec![0; self.members.len()];
        for o in &self.owners {
            for &i in o {
                loads[i as usize] += 1;
            }
        }
        loads
    }

    /// How many shards have a different primary node here than in `previous`.
    ///
    /// # Panics
    /// When the shard counts differ.
    pub fn primaries_moved_from(&self, previous: &Placement) -> usize {
        assert_eq!(self.shard_count, previous.shard_count);
        (0..self.shard_count)
            .filter(|&s| self.owner(ShardId(s)) != previous.owner(ShardId(s)))
            .count()
    }

    /// Whether both place every shard on the same nodes in the same roles.
    pub fn same_owners(&self, other: &Placement) -> bool {
        self.shard_count == other.shard_count
            && self.replication_factor == other.replication_factor
            && (0..self.shard_count)
                .all(|s| self.replicas(ShardId(s)).eq(other.replicas(ShardId(s))))
    }

    /// Structural validity of a placement read from outside.
    pub(super) fn check(&self) -> Result<(), String> {
        if self.shard_count == 0 || self.owners.len() != self.shard_count as usize {
            return Err(format!(
                "{} owner lists for {} shards",
                self.owners.len(),
                self.shard_count
            ));
        }
        if self.members.windows(2).any(|w| w[0] >= w[1]) {
            return Err("members not sorted and distinct".into());
        }
        let rf = self.replication_factor;
        if rf == 0 || rf > self.members.len() {
            return Err(format!(
                "replication factor {rf} for {} members",
                self.members.len()
            ));
        }
        for (s, o) in self.owners.iter().enumerate() {
            if o.len() != rf || o.iter().any(|&i| i as usize >= self.members.len()) {
                return Err(format!("shard {s} has bad owners {o:?}"));
            }
            if (1..o.len()).any(|k| o[..k].contains(&o[k])) {
                return Err(format!("shard {s} has repeated owners {o:?}"));
            }
        }
        Ok(())
    }

    /// The bounds every computed placement meets. Only a bug in `compute` can break them.
    fn assert_balanced(&self) {
        if let Err(e) = self.check() {
            panic!("computed placement is malformed: {e}");
        }
        let n = self.members.len();
        let s = self.shard_count as usize;
        let (floor, ceil) = (s / n, s.div_ceil(n));
        for (i, &load) in self.primary_loads().iter().enumerate() {
            assert!(
                (floor..=ceil).contains(&load),
                "member {} holds {load} primaries, outside [{floor}, {ceil}]",
                self.members[i]
            );
        }
    }
}

/// Primaries: keep each shard on its previous primary within the quotas, then place the rest.
fn place_primaries(ring: &HashRing, prev: &[Vec<Option<usize>>], n: usize, s: usize) -> Vec<usize> {
    let (base, extra) = (s / n, s % n);
    let mut held: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (shard, owners) in prev.iter().enumerate() {
        if let Some(Some(i)) = owners.first() {
            held[*i].push(shard);
        }
    }
    // The `extra` larger quotas go to the nodes that held the most: that keeps the most shards
    // in place. Ties by member order, so the result is deterministic.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| held[b].len().cmp(&held[a].len()).then(a.cmp(&b)));
    let mut quota = vec![base; n];
    for &i in order.iter().take(extra) {
        quota[i] += 1;
    }

    const UNSET: usize = usize::MAX;
    let mut primary = vec![UNSET; s];
    let mut load = vec![0usize; n];
    for (i, shards) in held.iter().enumerate() {
        for &shard in shards.iter().take(quota[i]) {
            primary[shard] = i;
            load[i] += 1;
        }
    }
    // Shards that must move: prefer an old standby (warm state), then the ring's choice.
    for shard in 0..s {
        if primary[shard] != UNSET {
            continue;
        }
        let old_standbys = prev[shard].iter().skip(1).flatten().copied();
        let ring_choice = ring.replica_indices(ShardId(shard as u32), 2);
        if let Some(i) = old_standbys
            .chain(ring_choice)
            .find(|&i| load[i] < quota[i])
        {
            primary[shard] = i;
            load[i] += 1;
        }
    }
    // Whatever is left fills the nodes still under quota, in member order.
    let mut open = (0..n)
        .filter(|&i| load[i] < quota[i])
        .collect::<Vec<_>>()
        .into_iter();
    let mut current = open.next();
    for p in primary.iter_mut().filter(|p| **p == UNSET) {
        while let Some(i) = current
            && load[i] >= quota[i]
        {
            current = open.next();
        }
        let i = current.expect("quotas sum to the shard count");
        *p = i;
        load[i] += 1;
    }
    assert!(load.iter().zip(&quota).all(|(l, q)| l == q));
    primary
}

/// Standbys: keep previous holders where possible, fill from the ring, then rebalance so that no
/// node holds more than `ceil(S·R/N)` slots.
fn place_standbys(
    ring: &HashRing,
    prev: &[Vec<Option<usize>>],
    owners: &mut [Vec<u32>],
    n: usize,
    rf: usize,
) {
    let s = owners.len();
    let cap = (s * rf).div_ceil(n);
    let mut load = vec![0usize; n];
    for o in owners.iter() {
        load[o[0] as usize] += 1;
    }
    // Keep previous holders (standbys first, then a demoted primary) while under the cap.
    for shard in 0..s {
        let old = prev[shard]
            .iter()
            .skip(1)
            .chain(prev[shard].first())
            .flatten()
            .copied();
        for i in old {
            if owners[shard].len() == rf {
                break;
            }
            if load[i] < cap && !owners[shard].contains(&(i as u32)) {
                owners[shard].push(i as u32);
                load[i] += 1;
            }
        }
    }
    // Fill from the ring's preference list, then the least-loaded node not yet in the shard.
    for (shard, o) in owners.iter_mut().enumerate() {
        let prefs = ring.replica_indices(ShardId(shard as u32), (rf + 2).min(n));
        while o.len() < rf {
            let pick = prefs
                .iter()
                .copied()
                .find(|&i| load[i] < cap && !o.contains(&(i as u32)))
                .or_else(|| {
                    (0..n)
                        .filter(|&i| !o.contains(&(i as u32)))
                        .min_by_key(|&i| (load[i], i))
                })
                .expect("rf <= n leaves a node outside the shard");
            o.push(pick as u32);
            load[pick] += 1;
        }
    }
    // Rebalance: move standby slots from overloaded nodes to nodes with room, along the
    // shortest chain of moves (an overloaded node hands a standby slot to a node not yet in that
    // shard, which may hand one of its own on, ... until a node with room receives one). A
    // single move is not always possible: every shard the overloaded node stands by for may
    // already hold every node with room.
    while let Some(over) = (0..n).find(|&i| load[i] > cap) {
        let Some(path) = standby_move_path(owners, &load, cap, over) else {
            unreachable!("no chain of standby moves from an overloaded node to one with room");
        };
        for &(shard, from, to) in &path {
            let slot = owners[shard][1..]
                .iter()
                .position(|&i| i as usize == from)
                .expect("the path moves standby slots")
                + 1;
            owners[shard][slot] = to as u32;
        }
        let (first, last) = (path[0].1, path[path.len() - 1].2);
        load[first] -= 1;
        load[last] += 1;
    }
}

/// The shortest chain of standby moves `(shard, from, to)` that takes one slot from `over` and
/// gives one to a node below `cap`, each move into a shard its receiver does not hold yet, each
/// shard used once. Breadth-first over nodes, in index order (deterministic).
fn standby_move_path(
    owners: &[Vec<u32>],
    load: &[usize],
    cap: usize,
    over: usize,
) -> Option<Vec<(usize, usize, usize)>> {
    let n = load.len();
    // How each reached node was reached: (previous node, shard).
    let mut reached: Vec<Option<(usize, usize)>> = vec![None; n];
    let mut queue = std::collections::VecDeque::from([over]);
    let mut seen = vec![false; n];
    seen[over] = true;
    while let Some(giver) = queue.pop_front() {
        for (shard, o) in owners.iter().enumerate() {
            if !o[1..].contains(&(giver as u32)) {
                continue;
            }
            for taker in 0..n {
                if seen[taker] || o.contains(&(taker as u32)) {
                    continue;
                }
                seen[taker] = true;
                reached[taker] = Some((giver, shard));
                if load[taker] < cap {
                    let mut path = Vec::new();
                    let mut at = taker;
                    while let Some((from, shard)) = reached[at] {
                        path.push((shard, from, at));
                        at = from;
                    }
                    path.reverse();
                    let shards: std::collections::BTreeSet<usize> =
                        path.iter().map(|&(s, _, _)| s).collect();
                    if shards.len() == path.len() {
                        return Some(path);
                    }
                    // A path through one shard twice is not a plan; keep searching.
                    continue;
                }
                queue.push_back(taker);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::assignment::Assignment;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn node(i: usize) -> NodeId {
        NodeId::new(format!("n{i}")).unwrap()
    }

    fn config(shards: u32, rf: usize) -> ShardConfig {
        ShardConfig {
            shard_count: shards,
            replication_factor: rf,
            virtual_nodes: 40,
        }
    }

    /// An arbitrary earlier placement: any owner per shard drawn from a pool that overlaps the
    /// current members (so some owners have left), not necessarily balanced.
    fn arbitrary_previous(shards: u32, pool: usize, rf: usize, picks: &[u64]) -> Placement {
        let members: Vec<NodeId> = {
            let mut m: Vec<NodeId> = (0..pool).map(node).collect();
            m.sort();
            m
        };
        let owners = (0..shards as usize)
            .map(|s| {
                // Consecutive nodes from a random start: always `rf` distinct ones.
                let start = picks[s % picks.len()] % pool as u64;
                (0..rf as u64)
                    .map(|k| ((start + k) % pool as u64) as u32)
                    .collect::<Vec<u32>>()
            })
            .collect();
        Placement {
            shard_count: shards,
            replication_factor: rf,
            members,
            owners,
        }
    }

    fn check_bounds(p: &Placement) -> Result<(), TestCaseError> {
        let n = p.members().len();
        let s = p.shard_count() as usize;
        for &l in &p.primary_loads() {
            prop_assert!(l == s / n || l == s.div_ceil(n), "primary load {l}");
        }
        let cap = (s * p.replication_factor()).div_ceil(n);
        for &l in &p.total_loads() {
            prop_assert!(l <= cap, "total load {l} above {cap}");
        }
        for shard in 0..s as u32 {
            let r: Vec<&NodeId> = p.replicas(ShardId(shard)).collect();
            let distinct: BTreeSet<&&NodeId> = r.iter().collect();
            prop_assert_eq!(r.len(), p.replication_factor());
            prop_assert_eq!(
                distinct.len(),
                r.len(),
                "replicas of shard {} repeat",
                shard
            );
        }
        Ok(())
    }

    /// Found by the property test: 10 shards with replication factor 3 on five members, after
    /// an unbalanced placement on seven, left one member with 7 slots where the bound is 6 —
    /// no single standby move could fix it, a chain of two can.
    #[test]
    fn standby_slots_stay_under_the_bound_when_only_a_chain_of_moves_fixes_them() {
        let picks = [19, 85, 54, 23, 89, 58, 27, 93];
        let previous = arbitrary_previous(10, 7, 3, &picks);
        let members: Vec<NodeId> = (0..5).map(node).collect();
        let p = Placement::compute(&config(10, 3), members, Some(&previous)).unwrap();
        assert_eq!(p.total_loads(), vec![6, 6, 6, 6, 6]);
        check_bounds(&p).unwrap();
    }

    #[test]
    fn typed_errors_for_bad_input() {
        let members = vec![node(1), node(2)];
        assert_eq!(
            Placement::compute(&config(0, 1), members.clone(), None),
            Err(ClusterInputError::ZeroShards)
        );
        assert_eq!(
            Placement::compute(&config(8, 3), members.clone(), None),
            Err(ClusterInputError::ReplicationExceedsMembers {
                replication_factor: 3,
                members: 2
            })
        );
        assert_eq!(
            Placement::compute(&config(8, 1), vec![node(1), node(1)], None),
            Err(ClusterInputError::DuplicateNodeId { node: node(1) })
        );
        assert_eq!(
            Placement::compute(&config(8, 1), Vec::new(), None),
            Err(ClusterInputError::NoMembers)
        );
    }

    #[test]
    fn default_config_on_three_nodes_is_balanced() {
        let p = Placement::compute(&ShardConfig::default(), (0..3).map(node), None).unwrap();
        assert_eq!(p.primary_loads(), vec![342, 341, 341]);
    }

    #[test]
    fn a_join_moves_exactly_the_new_nodes_share() {
        let cfg = config(1024, 1);
        let before = Placement::compute(&cfg, (0..100).map(node), None).unwrap();
        let after = Placement::compute(&cfg, (0..101).map(node), Some(&before)).unwrap();
        assert_eq!(after.primaries_moved_from(&before), 10);
        assert_eq!(after.primaries_of(&node(100)).len(), 10);
    }

    #[test]
    fn assignment_round_trips_and_rejects_garbage() {
        let p = Placement::compute(&config(16, 2), (0..3).map(node), None).unwrap();
        let a = Assignment::new(7, 3, p);
        assert_eq!(Assignment::decode(&a.encode()), Ok(a.clone()));
        assert!(Assignment::decode(b"{}").is_err());
        let mut bad = a.clone();
        bad.placement.owners[0] = vec![1, 1];
        assert!(Assignment::decode(&bad.encode()).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn placement_is_balanced_minimal_and_order_independent(
            shards in 1u32..300,
            pool in 1usize..12,
            member_mask in 1u32..4096,
            rf in 1usize..4,
            picks in proptest::collection::vec(any::<u64>(), 1..32),
            with_previous in any::<bool>(),
        ) {
            let members: Vec<NodeId> = (0..12).filter(|i| member_mask & (1 << i) != 0).map(node).collect();
            let rf = rf.min(members.len());
            let cfg = config(shards, rf);
            let prev_rf = rf.min(pool);
            let previous = with_previous.then(|| arbitrary_previous(shards, pool, prev_rf, &picks));
            let p = Placement::compute(&cfg, members.clone(), previous.as_ref()).unwrap();
            check_bounds(&p)?;
            if let Some(prev) = &previous {
                prop_assert_eq!(
                    p.primaries_moved_from(prev),
                    Placement::minimum_moves(prev, members.clone()).unwrap()
                );
            }
            let mut reversed = members.clone();
            reversed.reverse();
            let rotated: Vec<NodeId> = members.iter().skip(1).chain(members.iter().take(1)).cloned().collect();
            prop_assert_eq!(&p, &Placement::compute(&cfg, reversed, previous.as_ref()).unwrap());
            prop_assert_eq!(&p, &Placement::compute(&cfg, rotated, previous.as_ref()).unwrap());
        }

        #[test]
        fn membership_changes_move_the_minimum(
            shards in 1u32..1100,
            start in 1usize..20,
            joins in 0usize..3,
            leaves in 0usize..3,
            rf in 1usize..3,
        ) {
            let before_members: Vec<NodeId> = (0..start).map(node).collect();
            let rf0 = rf.min(start);
            let before = Placement::compute(&config(shards, rf0), before_members, None).unwrap();
            let after_members: Vec<NodeId> = (leaves.min(start - 1)..start + joins).map(node).collect();
            let rf1 = rf.min(after_members.len());
            let after = Placement::compute(&config(shards, rf1), after_members.clone(), Some(&before)).unwrap();
            check_bounds(&after)?;
            let minimum = Placement::minimum_moves(&before, after_members).unwrap();
            prop_assert_eq!(after.primaries_moved_from(&before), minimum);
            // Recomputing with no change moves nothing.
            let again = Placement::compute(&config(shards, rf1), after.members().to_vec(), Some(&after)).unwrap();
            prop_assert!(again.same_owners(&after));
        }
    }
}
