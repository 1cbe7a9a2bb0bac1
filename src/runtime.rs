//! The [`Runtime`]: the one bundle every component of a node is built from — its broker, its
//! clock, a seeded random generator and its [`NodeId`] — so that signatures do not sprout four
//! parameters, and so that the components of one node cannot disagree about who they are.

use std::time::SystemTime;

use crate::broker::Broker;
use crate::clock::{Clock, SharedRng, SystemClock};
use crate::node::NodeId;

/// The bundle every component is built from: a broker, a clock, a seeded random generator and
/// the node's identity.
///
/// Pass one `Runtime` to [`EventStore`](crate::store::EventStore),
/// [`EventBus`](crate::bus::EventBus), [`Cluster`](crate::cluster::Cluster) and
/// [`ActorHost`](crate::actor::ActorHost); the simulation builds one per simulated node. Cheap to
/// clone (clones share the broker connection and the generator).
#[derive(Clone, Debug)]
pub struct Runtime<B, C = SystemClock> {
    broker: B,
    clock: C,
    rng: SharedRng,
    node: NodeId,
    #[cfg(feature = "sim")]
    planted_bugs: crate::planted::PlantedBugs,
}

impl<B: Broker> Runtime<B, SystemClock> {
    /// A production bundle: the given broker, the system clock, an OS-seeded generator and the
    /// default node id ([`NODE_ID_DEFAULT`](crate::node::NODE_ID_DEFAULT); set another with
    /// [`with_node`](Self::with_node) when several nodes share a broker).
    pub fn system(broker: B) -> Self {
        Self::new(broker, SystemClock::new(), SharedRng::from_os())
    }
}

impl<B: Broker, C: Clock> Runtime<B, C> {
    /// A bundle from its parts, with the default node id.
    pub fn new(broker: B, clock: C, rng: SharedRng) -> Self {
        Self {
            broker,
            clock,
            rng,
            node: NodeId::default(),
            #[cfg(feature = "sim")]
            planted_bugs: crate::planted::PlantedBugs::default(),
        }
    }

    /// The same bundle for node `node`.
    pub fn with_node(mut self, node: NodeId) -> Self {
        self.node = node;
        self
    }

    /// Switches planted bugs on (the simulation's teeth).
    #[cfg(feature = "sim")]
    pub fn with_planted_bugs(mut self, bugs: crate::planted::PlantedBugs) -> Self {
        self.planted_bugs = bugs;
        self
    }

    /// The planted bugs switched on for this runtime.
    #[cfg(feature = "sim")]
    pub fn planted_bugs(&self) -> &crate::planted::PlantedBugs {
        &self.planted_bugs
    }

    /// The broker.
    pub fn broker(&self) -> &B {
        &self.broker
    }

    /// The clock.
    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// The random generator.
    pub fn rng(&self) -> &SharedRng {
        &self.rng
    }

    /// This node's id.
    pub fn node_id(&self) -> &NodeId {
        &self.node
    }

    /// The clock's wall time (shorthand for `clock().wall()`).
    pub fn clock_wall(&self) -> SystemTime {
        self.clock.wall()
    }
}
