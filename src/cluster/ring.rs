//! The consistent hash ring: the placement used when no leader assignment exists.
//!
//! Every node owns `virtual_nodes` points at `stable_hash(node_id ‖ '#' ‖ i as u32 LE)`; a shard
//! sits at `stable_hash("shard#" ‖ shard as u32 LE)` and belongs to the first point clockwise.
//! Points are ordered by (hash, node id), so the ring depends only on the set of nodes, never on
//! the order they were listed in. Adding a node only moves shards to it; removing one only moves
//! its own shards.

use super::hash::{Fnv1a64, fmix64};
use super::shard::{ClusterInputError, NodeId, ShardId, VIRTUAL_NODES_MAX, sorted_distinct};

/// A consistent hash ring with virtual nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HashRing {
    virtual_nodes: usize,
    /// Sorted, distinct.
    nodes: Vec<NodeId>,
    /// (point, index into `nodes`), sorted.
    points: Vec<(u64, u32)>,
}

/// Where virtual node `index` of `node` sits on the ring.
pub fn point_of(node: &NodeId, index: u32) -> u64 {
    let mut h = Fnv1a64::default();
    h.write(node.as_str().as_bytes())
        .write(b"#")
        .write(&index.to_le_bytes());
    fmix64(h.finish())
}

/// Where `shard` sits on the ring.
pub fn shard_point(shard: ShardId) -> u64 {
    let mut h = Fnv1a64::default();
    h.write(b"shard#").write(&shard.0.to_le_bytes());
    fmix64(h.finish())
}

impl HashRing {
    /// A ring over `nodes` (any order) with `virtual_nodes` points each. An empty ring is
    /// allowed; its lookups return nothing.
    ///
    /// # Errors
    /// [`ClusterInputError::BadVirtualNodes`] for 0 or too many virtual nodes,
    /// [`ClusterInputError::DuplicateNodeId`] when a node is listed twice.
    pub fn new<I: IntoIterator<Item = NodeId>>(
        nodes: I,
        virtual_nodes: usize,
    ) -> Result<Self, ClusterInputError> {
        if virtual_nodes == 0 || virtual_nodes > VIRTUAL_NODES_MAX {
            return Err(ClusterInputError::BadVirtualNodes {
                count: virtual_nodes,
                max: VIRTUAL_NODES_MAX,
            });
        }
        let nodes = sorted_distinct(nodes)?;
        let mut points = Vec::with_capacity(nodes.len() * virtual_nodes);
        for (i, node) in nodes.iter().enumerate() {
            for v in 0..virtual_nodes as u32 {
                points.push((point_of(node, v), i as u32));
            }
        }
        points.sort_unstable();
        Ok(Self {
            virtual_nodes,
            nodes,
            points,
        })
    }

    /// The nodes, sorted.
    pub fn nodes(&self) -> &[NodeId] {
        &self.nodes
    }

    /// Virtual nodes per node.
    pub fn virtual_nodes(&self) -> usize {
        self.virtual_nodes
    }

    /// Whether the ring has no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Index into `points` of the first point at or after `hash`, wrapping around.
    fn start(&self, hash: u64) -> usize {
        let i = self.points.partition_point(|(p, _)| *p < hash);
        if i == self.points.len() { 0 } else { i }
    }

    /// The index (into [`nodes`](Self::nodes)) of the node owning `hash`.
    pub fn node_index_for_hash(&self, hash: u64) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        Some(self.points[self.start(hash)].1 as usize)
    }

    /// The node owning ring position `hash`.
    pub fn node_for_hash(&self, hash: u64) -> Option<&NodeId> {
        self.node_index_for_hash(hash).map(|i| &self.nodes[i])
    }

    /// The node owning `shard`.
    pub fn owner_of(&self, shard: ShardId) -> Option<&NodeId> {
        self.node_for_hash(shard_point(shard))
    }

    /// Up to `count` distinct nodes for `shard`, owner first, then clockwise (the standby
    /// candidates). Fewer when the ring has fewer nodes.
    pub fn replicas_of(&self, shard: ShardId, count: usize) -> Vec<&NodeId> {
        self.replica_indices(shard, count)
            .into_iter()
            .map(|i| &self.nodes[i])
            .collect()
    }

    /// Like [`replicas_of`](Self::replicas_of), as indices into [`nodes`](Self::nodes).
    pub fn replica_indices(&self, shard: ShardId, count: usize) -> Vec<usize> {
        let want = count.min(self.nodes.len());
        let mut out = Vec::with_capacity(want);
        if want == 0 {
            return out;
        }
        let start = self.start(shard_point(shard));
        let mut seen = vec![false; self.nodes.len()];
        for k in 0..self.points.len() {
            let node = self.points[(start + k) % self.points.len()].1 as usize;
            if !seen[node] {
                seen[node] = true;
                out.push(node);
                if out.len() == want {
                    break;
                }
            }
        }
        assert_eq!(out.len(), want, "every node has points on the ring");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ids(names: &[String]) -> Vec<NodeId> {
        names
            .iter()
            .map(|n| NodeId::new(n.clone()).unwrap())
            .collect()
    }

    fn node_names() -> impl Strategy<Value = Vec<String>> {
        proptest::collection::btree_set("[a-z][a-z0-9]{0,5}", 1..12)
            .prop_map(|s| s.into_iter().collect())
    }

    #[test]
    fn empty_ring_owns_nothing() {
        let ring = HashRing::new(Vec::new(), 150).unwrap();
        assert!(ring.is_empty());
        assert_eq!(ring.owner_of(ShardId(3)), None);
        assert!(ring.replicas_of(ShardId(3), 2).is_empty());
    }

    #[test]
    fn bad_ring_input_is_refused() {
        let a = NodeId::new("a").unwrap();
        assert!(matches!(
            HashRing::new([a.clone()], 0),
            Err(ClusterInputError::BadVirtualNodes { .. })
        ));
        assert_eq!(
            HashRing::new([a.clone(), a.clone()], 10),
            Err(ClusterInputError::DuplicateNodeId { node: a })
        );
    }

    proptest! {
        #[test]
        fn ring_is_independent_of_listing_order(names in node_names(), seed in any::<u64>()) {
            let nodes = ids(&names);
            let mut shuffled = nodes.clone();
            // A deterministic permutation derived from the seed.
            shuffled.sort_by_key(|n| fmix64(seed ^ super::super::hash::fnv1a64(n.as_str().as_bytes())));
            let a = HashRing::new(nodes, 20).unwrap();
            let b = HashRing::new(shuffled, 20).unwrap();
            prop_assert_eq!(&a, &b);
            for s in 0..64 {
                prop_assert_eq!(a.owner_of(ShardId(s)), b.owner_of(ShardId(s)));
            }
        }

        #[test]
        fn replicas_are_distinct_and_start_with_the_owner(
            names in node_names(), count in 1usize..6, shard in 0u32..1024,
        ) {
            let ring = HashRing::new(ids(&names), 30).unwrap();
            let replicas = ring.replicas_of(ShardId(shard), count);
            prop_assert_eq!(replicas.len(), count.min(names.len()));
            prop_assert_eq!(Some(replicas[0]), ring.owner_of(ShardId(shard)));
            let distinct: std::collections::BTreeSet<_> = replicas.iter().collect();
            prop_assert_eq!(distinct.len(), replicas.len());
        }

        #[test]
        fn a_join_only_moves_shards_to_the_new_node(names in node_names(), new in "[A-Z]{1,4}") {
            let before = HashRing::new(ids(&names), 30).unwrap();
            let joined = NodeId::new(new).unwrap();
            let mut after_nodes = ids(&names);
            after_nodes.push(joined.clone());
            let after = HashRing::new(after_nodes, 30).unwrap();
            for s in 0..256 {
                let (old, new) = (before.owner_of(ShardId(s)).unwrap(), after.owner_of(ShardId(s)).unwrap());
                prop_assert!(old == new || *new == joined);
            }
        }

        #[test]
        fn a_leave_only_moves_the_leavers_shards(names in node_names(), pick in any::<prop::sample::Index>()) {
            prop_assume!(names.len() > 1);
            let nodes = ids(&names);
            let gone = nodes[pick.index(nodes.len())].clone();
            let before = HashRing::new(nodes.clone(), 30).unwrap();
            let after = HashRing::new(nodes.into_iter().filter(|n| *n != gone), 30).unwrap();
            for s in 0..256 {
                let (old, new) = (before.owner_of(ShardId(s)).unwrap(), after.owner_of(ShardId(s)).unwrap());
                prop_assert!(old == new || *old == gone);
            }
        }
    }
}
