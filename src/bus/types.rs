//! The subscriber's side of the bus and its settings: which namespaces a subscription covers,
//! filters, what a subscriber receives ([`Delivery`], [`RecvError`]), its queue
//! ([`BusSubscription`]), the bus's configuration and counters, and publication errors.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

use super::{BUS_OUTGOING_QUEUE_MAX, BUS_SUBSCRIBER_QUEUE_MAX};
use crate::codec::{InvalidName, validate_namespace};
use crate::event::Event;
use crate::node::NodeId;

/// Which namespaces a subscription covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NamespacePattern {
    /// Exactly one namespace.
    Exact(String),
    /// Every namespace starting with the prefix (`orders-*`); the empty prefix (`*`) is all.
    Prefix(String),
}

impl NamespacePattern {
    /// Parses `"name"` (exact), `"prefix*"` or `"*"`.
    ///
    /// # Errors
    /// [`InvalidName`] when the name or prefix breaks the namespace rules.
    pub fn parse(pattern: &str) -> Result<Self, InvalidName> {
        match pattern.strip_suffix('*') {
            Some("") => Ok(NamespacePattern::Prefix(String::new())),
            Some(prefix) => {
                validate_namespace(prefix)?;
                Ok(NamespacePattern::Prefix(prefix.to_owned()))
            }
            None => {
                validate_namespace(pattern)?;
                Ok(NamespacePattern::Exact(pattern.to_owned()))
            }
        }
    }

    /// Whether `namespace` is covered.
    pub fn matches(&self, namespace: &str) -> bool {
        match self {
            NamespacePattern::Exact(n) => n == namespace,
            NamespacePattern::Prefix(p) => namespace.starts_with(p.as_str()),
        }
    }
}

/// Optional narrowing of a subscription: only some event types, only one actor.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only these event types (`None`: all).
    pub event_types: Option<BTreeSet<String>>,
    /// Only this actor (`None`: all).
    pub actor_id: Option<String>,
}

impl Filter {
    /// Every event.
    pub fn all() -> Self {
        Self::default()
    }

    /// Also require the event type to be one of `types`.
    pub fn event_types<I: IntoIterator<Item = S>, S: Into<String>>(mut self, types: I) -> Self {
        self.event_types = Some(types.into_iter().map(Into::into).collect());
        self
    }

    /// Also require the actor to be `actor_id`.
    pub fn actor(mut self, actor_id: impl Into<String>) -> Self {
        self.actor_id = Some(actor_id.into());
        self
    }

    /// Whether `event` passes.
    pub fn accepts(&self, event: &Event) -> bool {
        self.event_types
            .as_ref()
            .is_none_or(|t| t.contains(&event.event_type))
            && self.actor_id.as_ref().is_none_or(|a| *a == event.actor_id)
    }
}

/// Bus counters since the bus was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BusStats {
    /// Events published through this bus handle (locally).
    pub published: u64,
    /// Events put in a local subscriber's queue (one event to two subscribers counts twice).
    pub delivered: u64,
    /// Events a full subscriber queue had to drop.
    pub dropped: u64,
    /// Events received from other nodes.
    pub received_remote: u64,
    /// Events found missing in other nodes' numbering (lost before they reached this node).
    pub missed_remote: u64,
    /// Messages from other nodes discarded as repeated or out of order.
    pub duplicates: u64,
    /// Events that could not leave this node: the outgoing queue was full, or the broker
    /// refused the message. Receivers see the gap and report it.
    pub unsent: u64,
}

/// Why [`BusSubscription::recv`] returned no event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecvError {
    /// This many events were not delivered to this subscriber: its queue overflowed, or (events
    /// of a namespace it covers, whatever its filter) they never reached this node. The next
    /// call continues with the events still queued.
    #[error("subscriber lagged behind and missed {0} events")]
    Lagged(u64),
    /// The bus was dropped.
    #[error("the event bus is closed")]
    Closed,
}

/// One event as the bus delivered it: with its origin and its number there.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Delivery {
    /// The event.
    pub event: Event,
    /// The node that published it.
    pub origin: NodeId,
    /// The session of the publishing bus (new for every bus instance, so a restarted node
    /// numbers afresh).
    pub session: u64,
    /// Its number among the origin session's events of its namespace (from 1).
    pub sequence: u64,
}

/// Bus configuration. The node's id comes from the [`Runtime`](crate::Runtime).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct BusConfig {
    /// Capacity of each subscriber's queue.
    pub subscriber_queue_max: usize,
    /// Capacity of the outgoing queue of cross-node messages.
    pub outgoing_queue_max: usize,
    /// The namespaces whose events this bus receives from other nodes: `None` (the default)
    /// for every namespace, with one broker subscription to `aether.bus.>`; otherwise one
    /// subscription to each namespace's subject. Credentials that cover only some namespaces
    /// (see [`crate::permissions`]) may not subscribe to `aether.bus.>`: name them here.
    /// Publishing is not limited by it.
    pub namespaces: Option<BTreeSet<String>>,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            subscriber_queue_max: BUS_SUBSCRIBER_QUEUE_MAX,
            outgoing_queue_max: BUS_OUTGOING_QUEUE_MAX,
            namespaces: None,
        }
    }
}

impl BusConfig {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the capacity of each subscriber's queue.
    pub fn subscriber_queue_max(mut self, max: usize) -> Self {
        self.subscriber_queue_max = max;
        self
    }

    /// Sets the capacity of the outgoing queue of cross-node messages.
    pub fn outgoing_queue_max(mut self, max: usize) -> Self {
        self.outgoing_queue_max = max;
        self
    }

    /// Receives other nodes' events of these namespaces only (see [`BusConfig::namespaces`]).
    pub fn namespaces<I: IntoIterator<Item = S>, S: Into<String>>(mut self, namespaces: I) -> Self {
        self.namespaces = Some(namespaces.into_iter().map(Into::into).collect());
        self
    }
}

/// What a subscriber's queue holds: deliveries, and gaps found in an origin's numbering at the
/// place they were found.
#[derive(Debug)]
pub(super) enum Item {
    Delivered(Box<Delivery>),
    Missed(u64),
}

/// Why a bus publication failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The namespace is invalid.
    #[error(transparent)]
    InvalidName(#[from] InvalidName),
    /// The events do not fit in one broker message.
    #[error("bus message of {size} bytes exceeds the broker's limit of {max} bytes")]
    TooLarge {
        /// The encoded size.
        size: usize,
        /// The limit.
        max: usize,
    },
}

/// One subscriber's end of the bus. Dropping it unsubscribes.
#[derive(Debug)]
pub struct BusSubscription {
    pub(super) receiver: mpsc::Receiver<Item>,
    pub(super) missed: Arc<AtomicU64>,
}

/// A subscription is also a [`Stream`](futures::Stream) of what [`BusSubscription::recv`]
/// returns; it ends when the bus is dropped.
impl futures::Stream for BusSubscription {
    type Item = Result<Event, RecvError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let missed = self.missed.swap(0, Ordering::Relaxed);
        if missed > 0 {
            return std::task::Poll::Ready(Some(Err(RecvError::Lagged(missed))));
        }
        self.receiver.poll_recv(cx).map(|item| match item {
            Some(Item::Delivered(delivery)) => Some(Ok(delivery.event)),
            Some(Item::Missed(n)) => Some(Err(RecvError::Lagged(n))),
            None => None,
        })
    }
}

impl BusSubscription {
    /// The next event, or [`RecvError::Lagged`] for events not delivered to this subscriber:
    /// first for what its full queue dropped, and for events lost on the way at the place in
    /// the stream where the loss was found.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn recv(&mut self) -> Result<Event, RecvError> {
        self.recv_delivery().await.map(|d| d.event)
    }

    /// Like [`BusSubscription::recv`], with the event's origin and number.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn recv_delivery(&mut self) -> Result<Delivery, RecvError> {
        let missed = self.missed.swap(0, Ordering::Relaxed);
        if missed > 0 {
            return Err(RecvError::Lagged(missed));
        }
        match self.receiver.recv().await {
            Some(Item::Delivered(delivery)) => Ok(*delivery),
            Some(Item::Missed(n)) => Err(RecvError::Lagged(n)),
            None => Err(RecvError::Closed),
        }
    }

    /// Like [`BusSubscription::recv`] without waiting: `None` when nothing is queued.
    pub fn try_recv(&mut self) -> Option<Result<Event, RecvError>> {
        self.try_recv_delivery().map(|r| r.map(|d| d.event))
    }

    /// Like [`BusSubscription::recv_delivery`] without waiting: `None` when nothing is queued.
    pub fn try_recv_delivery(&mut self) -> Option<Result<Delivery, RecvError>> {
        let missed = self.missed.swap(0, Ordering::Relaxed);
        if missed > 0 {
            return Some(Err(RecvError::Lagged(missed)));
        }
        match self.receiver.try_recv() {
            Ok(Item::Delivered(delivery)) => Some(Ok(*delivery)),
            Ok(Item::Missed(n)) => Some(Err(RecvError::Lagged(n))),
            Err(mpsc::error::TryRecvError::Empty) => None,
            Err(mpsc::error::TryRecvError::Disconnected) => Some(Err(RecvError::Closed)),
        }
    }
}
