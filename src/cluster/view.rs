//! What a node can tell about the cluster: the [`ClusterView`] snapshot and the
//! [`ClusterEvent`]s that record every change, stamped with the node's monotonic clock.
//!
//! # For checkers
//!
//! The events are the observation API of the simulation's checkers (invariants 6–8):
//!
//! - **Leadership intervals**: node X acted as leader under token T from the `at` of
//!   [`LeadershipAcquired`](ClusterEventKind::LeadershipAcquired) to the `acted_until` of the
//!   matching [`LeadershipEnded`](ClusterEventKind::LeadershipEnded) (both on X's monotonic
//!   clock). A leader performs leader actions (publishing an assignment) only while its clock is
//!   before its current deadline, and `acted_until` is never later than that deadline.
//! - **Hosting intervals**: node X hosts the shards listed in
//!   [`AssignmentApplied::hosted`](ClusterEventKind::AssignmentApplied) under that `epoch` until
//!   the next `ShardsReleased`, `AssignmentApplied` or `Stopped` event of X.
//!   `ShardsReleased` always precedes the acknowledgement of the epoch that took the shards away.
//! - **Epoch order**: `AssignmentApplied::previous_epoch` is the epoch X hosted under before;
//!   a correct node only ever moves to larger epochs.
//!
//! Subscribe with [`Cluster::events`](super::Cluster::events) (bounded, may lag) or, to see every
//! event synchronously at the moment it happens (e.g. to stamp it with the simulation's global
//! time), pass an observer to [`Cluster::start_with_observer`](super::Cluster::start_with_observer).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

use super::assignment::Assignment;
use super::shard::{NodeId, ShardId};

/// Capacity of each [`ClusterEvents`] subscription; a subscriber further behind than this loses
/// the oldest events and is told how many.
pub const EVENT_QUEUE_MAX: usize = 4096;

/// The current leader as read from the lease key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderInfo {
    /// The node holding the lease.
    pub node: NodeId,
    /// Its fencing token: the KV revision of the write that acquired the lease.
    pub token: u64,
}

/// This node's own leadership, while it lasts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leadership {
    /// Fencing token.
    pub token: u64,
    /// When the lease was acquired (this node's monotonic clock).
    pub since: Duration,
    /// When this node stops acting unless a renewal succeeds first (this node's monotonic clock).
    pub deadline: Duration,
}

/// A snapshot of one node's knowledge of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterView {
    /// This node.
    pub node: NodeId,
    /// Live members as last read from the membership bucket (this node included once joined).
    pub members: BTreeSet<NodeId>,
    /// The leader as last read from the lease key (`None`: no live lease seen).
    pub leader: Option<LeaderInfo>,
    /// This node's own leadership. Check [`is_leader_at`](Self::is_leader_at) with the current
    /// clock reading: the deadline may have passed since the snapshot was taken.
    pub leadership: Option<Leadership>,
    /// The assignment this node applied (`None` before the first one).
    pub assignment: Option<Arc<Assignment>>,
    /// Primary shards this node hosts under `assignment`.
    pub hosted: BTreeSet<ShardId>,
    /// The last epoch this node acknowledged in KV.
    pub acknowledged_epoch: Option<u64>,
    /// Whether the node's background task is running.
    pub running: bool,
}

impl ClusterView {
    pub(crate) fn new(node: NodeId) -> Self {
        Self {
            node,
            members: BTreeSet::new(),
            leader: None,
            leadership: None,
            assignment: None,
            hosted: BTreeSet::new(),
            acknowledged_epoch: None,
            running: true,
        }
    }

    /// Whether this node may act as leader at monotonic time `now`.
    pub fn is_leader_at(&self, now: Duration) -> bool {
        self.leadership.is_some_and(|l| now < l.deadline)
    }

    /// The applied assignment's epoch.
    pub fn epoch(&self) -> Option<u64> {
        self.assignment.as_ref().map(|a| a.epoch())
    }
}

/// Why a node stopped acting as leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StepDownReason {
    /// Its own deadline passed before a renewal succeeded (the server-side TTL has not lapsed
    /// yet at that moment).
    DeadlineReached,
    /// A renewal found the lease taken or gone.
    LeaseLost,
    /// The node is stopping and released the lease.
    Released,
    /// Another process writes this node's membership entry.
    DuplicateNode,
}

/// One change seen by one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterEvent {
    /// The node that saw it.
    pub node: NodeId,
    /// That node's monotonic clock when it happened.
    pub at: Duration,
    /// What happened.
    pub kind: ClusterEventKind,
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClusterEventKind {
    /// A node appeared in the membership bucket (also emitted for this node itself).
    MemberJoined {
        /// The new member.
        member: NodeId,
    },
    /// A node left the membership bucket (clean leave or TTL expiry).
    MemberLeft {
        /// The departed member.
        member: NodeId,
    },
    /// The leader read from the lease key changed.
    LeaderObserved {
        /// The new leader, `None` when no live lease exists.
        leader: Option<LeaderInfo>,
    },
    /// This node acquired the lease and acts as leader from now.
    LeadershipAcquired {
        /// Fencing token (larger than every earlier token).
        token: u64,
        /// When it will stop acting unless renewed.
        deadline: Duration,
    },
    /// This node renewed its lease.
    LeaseRenewed {
        /// Fencing token (unchanged by renewal).
        token: u64,
        /// The new deadline.
        deadline: Duration,
        /// When the renewing write was sent (this node's monotonic clock).
        sent_at: Duration,
    },
    /// This node stopped acting as leader.
    LeadershipEnded {
        /// The token it led under.
        token: u64,
        /// The last instant (this node's monotonic clock) it could have acted as leader.
        acted_until: Duration,
        /// Why.
        reason: StepDownReason,
    },
    /// This node, as leader, published an assignment.
    AssignmentPublished {
        /// Its epoch.
        epoch: u64,
        /// The publishing leader's token.
        token: u64,
        /// Primaries that changed node compared to the previous assignment.
        moved: usize,
        /// When the publishing write was sent (this node's monotonic clock).
        sent_at: Duration,
    },
    /// This node stopped hosting shards (before acknowledging the assignment that removed them).
    ShardsReleased {
        /// The epoch they were hosted under.
        epoch: u64,
        /// The shards.
        shards: Vec<ShardId>,
    },
    /// This node applied an assignment.
    AssignmentApplied {
        /// The applied epoch.
        epoch: u64,
        /// The epoch applied before, if any.
        previous_epoch: Option<u64>,
        /// The token of the leader that published it.
        leader_token: u64,
        /// Primary shards hosted from now on.
        hosted: Vec<ShardId>,
        /// Of those, the ones newly acquired.
        acquired: Vec<ShardId>,
        /// Shards this node is a standby for.
        standby: Vec<ShardId>,
    },
    /// This node's acknowledgement of an epoch is in KV.
    AssignmentAcknowledged {
        /// The epoch.
        epoch: u64,
    },
    /// Another process writes this node's membership entry: two nodes share an id.
    DuplicateNodeDetected,
    /// The node stopped; it hosts nothing and is no longer a member.
    Stopped,
}

/// A synchronous observer of every event of one node.
pub type Observer = Arc<dyn Fn(&ClusterEvent) + Send + Sync>;

/// Why [`ClusterEvents::recv`] returned no event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EventsError {
    /// The subscriber fell behind and this many events were dropped; the next call continues
    /// with the oldest retained event.
    #[error("cluster event subscriber lagged; {0} events dropped")]
    Lagged(u64),
    /// The node stopped and every event has been received.
    #[error("the cluster node stopped")]
    Closed,
}

/// A subscription to a node's [`ClusterEvent`]s, bounded by [`EVENT_QUEUE_MAX`].
#[derive(Debug)]
pub struct ClusterEvents {
    pub(crate) inner: broadcast::Receiver<ClusterEvent>,
}

impl ClusterEvents {
    /// The next event.
    ///
    /// # Errors
    /// [`EventsError::Lagged`] after events were dropped, [`EventsError::Closed`] at the end.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn recv(&mut self) -> Result<ClusterEvent, EventsError> {
        self.inner.recv().await.map_err(|e| match e {
            broadcast::error::RecvError::Lagged(n) => EventsError::Lagged(n),
            broadcast::error::RecvError::Closed => EventsError::Closed,
        })
    }
    /// The subscription as a [`Stream`](futures::Stream): each event, or
    /// [`EventsError::Lagged`] where events were dropped; it ends when the node stops.
    ///
    /// ```no_run
    /// # async fn f(cluster: aether::cluster::Cluster<aether::MemoryBroker, aether::SystemClock>) {
    /// use futures::StreamExt;
    /// let mut events = std::pin::pin!(cluster.events().into_stream());
    /// while let Some(event) = events.next().await {
    ///     println!("{event:?}");
    /// }
    /// # }
    /// ```
    pub fn into_stream(
        self,
    ) -> impl futures::Stream<Item = Result<ClusterEvent, EventsError>> + Send + 'static {
        futures::stream::unfold(self, |mut events| async move {
            match events.recv().await {
                Err(EventsError::Closed) => None,
                item => Some((item, events)),
            }
        })
    }
}
