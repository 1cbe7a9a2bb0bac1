//! The event bus: live, in-memory fan-out of events by namespace, in-process and across nodes.
//!
//! Local subscribers are served directly from [`EventBus::publish`]; other nodes receive the same
//! events through broker pub/sub on `aether.bus.<namespace>`, tagged with the publishing node's
//! id so that a node never delivers its own publications twice. Every subscriber has a bounded
//! queue: a subscriber that falls behind loses events and is told how many
//! ([`RecvError::Lagged`]) — publishers never block. The bus is at-most-once by design; durable
//! consumption reads the event store.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::broker::{Broker, BrokerError, Headers};
use crate::clock::Clock;
use crate::codec::{InvalidName, validate_namespace};
use crate::event::Event;
use crate::names::{bus_namespace, bus_pattern, bus_subject};
use crate::node::NodeId;
use crate::runtime::Runtime;

/// Default capacity of a bus subscriber's queue.
pub const BUS_SUBSCRIBER_QUEUE_MAX: usize = 1024;

/// Header naming the node that published a bus message.
pub const HEADER_ORIGIN: &str = "Aether-Origin";

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
}

/// Why [`BusSubscription::recv`] returned no event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecvError {
    /// The subscriber's queue overflowed and this many events were dropped for it. The next call
    /// continues with the events still queued.
    #[error("subscriber lagged behind and missed {0} events")]
    Lagged(u64),
    /// The bus was dropped.
    #[error("the event bus is closed")]
    Closed,
}

/// Bus configuration. The node's id comes from the [`Runtime`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct BusConfig {
    /// Capacity of each subscriber's queue.
    pub subscriber_queue_max: usize,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            subscriber_queue_max: BUS_SUBSCRIBER_QUEUE_MAX,
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
}

struct LocalSubscriber {
    pattern: NamespacePattern,
    filter: Filter,
    sender: mpsc::Sender<Event>,
    missed: Arc<AtomicU64>,
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    delivered: AtomicU64,
    dropped: AtomicU64,
    received_remote: AtomicU64,
}

struct Inner<B> {
    broker: B,
    /// This node: bus messages carrying it are recognised as our own.
    node: NodeId,
    config: BusConfig,
    subscribers: Mutex<BTreeMap<u64, LocalSubscriber>>,
    next_id: AtomicU64,
    counters: Counters,
    remote: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl<B> Drop for Inner<B> {
    fn drop(&mut self) {
        if let Some(task) = self.remote.get_mut().ok().and_then(Option::take) {
            task.abort();
        }
    }
}

/// The event bus. Cheap to clone; clones share subscribers and counters.
pub struct EventBus<B> {
    inner: Arc<Inner<B>>,
}

impl<B> Clone for EventBus<B> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<B> std::fmt::Debug for EventBus<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus")
            .field("node", &self.inner.node)
            .finish()
    }
}

impl<B: Broker> EventBus<B> {
    /// A bus that serves local subscribers only. Call [`EventBus::connect`] to also exchange
    /// events with other nodes.
    pub fn new<C: Clock>(rt: &Runtime<B, C>, config: BusConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                broker: rt.broker().clone(),
                node: rt.node_id().clone(),
                config,
                subscribers: Mutex::new(BTreeMap::new()),
                next_id: AtomicU64::new(0),
                counters: Counters::default(),
                remote: Mutex::new(None),
            }),
        }
    }

    /// A bus connected to other nodes through the broker (see [`EventBus::connect`]).
    ///
    /// # Errors
    /// A [`BrokerError`] if the broker subscription fails.
    pub async fn connected<C: Clock>(
        rt: &Runtime<B, C>,
        config: BusConfig,
    ) -> Result<Self, BrokerError> {
        let bus = Self::new(rt, config);
        bus.connect().await?;
        Ok(bus)
    }

    /// Subscribes to the bus subjects of all namespaces on the broker and forwards other nodes'
    /// publications to local subscribers, on a task of the caller's tokio runtime that ends when
    /// the last handle to the bus is dropped. Calling it twice does nothing the second time.
    ///
    /// # Errors
    /// A [`BrokerError`] if the broker subscription fails.
    pub async fn connect(&self) -> Result<(), BrokerError> {
        if self.lock_remote().is_some() {
            return Ok(());
        }
        let mut subscription = self.inner.broker.subscribe(&bus_pattern()).await?;
        let weak: Weak<Inner<B>> = Arc::downgrade(&self.inner);
        let task = tokio::spawn(async move {
            while let Some(message) = subscription.next().await {
                let Some(inner) = weak.upgrade() else { return };
                let bus = EventBus { inner };
                bus.receive_remote(&message.subject, &message.headers, &message.payload);
            }
        });
        let mut remote = self.lock_remote();
        if remote.is_some() {
            task.abort(); // lost a race with a concurrent connect
        } else {
            *remote = Some(task);
        }
        Ok(())
    }

    fn lock_remote(&self) -> std::sync::MutexGuard<'_, Option<tokio::task::JoinHandle<()>>> {
        self.inner.remote.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn receive_remote(&self, subject: &str, headers: &Headers, payload: &Bytes) {
        if headers.get(HEADER_ORIGIN).map(String::as_str) == Some(self.inner.node.as_str()) {
            return; // our own publication, already delivered locally
        }
        let Some(namespace) = bus_namespace(subject) else {
            return;
        };
        match serde_json::from_slice::<Vec<Event>>(payload) {
            Ok(events) => {
                self.inner
                    .counters
                    .received_remote
                    .fetch_add(events.len() as u64, Ordering::Relaxed);
                self.deliver_local(namespace, &events);
            }
            Err(error) => tracing::warn!(%subject, %error, "undecodable bus message ignored"),
        }
    }

    /// Subscribes to events of the namespaces matching `pattern` (`"orders"`, `"orders-*"`,
    /// `"*"`) that pass `filter`.
    ///
    /// # Errors
    /// [`InvalidName`] for a malformed pattern.
    pub fn subscribe(&self, pattern: &str, filter: Filter) -> Result<BusSubscription, InvalidName> {
        let pattern = NamespacePattern::parse(pattern)?;
        let (sender, receiver) = mpsc::channel(self.inner.config.subscriber_queue_max.max(1));
        let missed = Arc::new(AtomicU64::new(0));
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock_subscribers().insert(
            id,
            LocalSubscriber {
                pattern,
                filter,
                sender,
                missed: missed.clone(),
            },
        );
        Ok(BusSubscription { receiver, missed })
    }

    /// Publishes events of `namespace` to local subscribers and, if connected, to other nodes
    /// (one broker message for the whole slice).
    ///
    /// # Errors
    /// [`InvalidName`] (as a [`PublishError`]) for a bad namespace; a [`BrokerError`] if the
    /// broker refuses the message. Local subscribers have been served either way.
    pub async fn publish(&self, namespace: &str, events: &[Event]) -> Result<(), PublishError> {
        validate_namespace(namespace)?;
        if events.is_empty() {
            return Ok(());
        }
        self.inner
            .counters
            .published
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        self.deliver_local(namespace, events);
        if self.lock_remote().is_some() {
            let payload = serde_json::to_vec(events).expect("events always serialise");
            let mut headers = Headers::new();
            headers.insert(HEADER_ORIGIN.to_owned(), self.inner.node.to_string());
            self.inner
                .broker
                .publish(&bus_subject(namespace), headers, Bytes::from(payload))
                .await?;
        }
        Ok(())
    }

    fn deliver_local(&self, namespace: &str, events: &[Event]) {
        let counters = &self.inner.counters;
        self.lock_subscribers().retain(|_, sub| {
            if sub.sender.is_closed() {
                return false;
            }
            if !sub.pattern.matches(namespace) {
                return true;
            }
            for event in events.iter().filter(|e| sub.filter.accepts(e)) {
                match sub.sender.try_send(event.clone()) {
                    Ok(()) => {
                        counters.delivered.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        sub.missed.fetch_add(1, Ordering::Relaxed);
                        counters.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return false,
                }
            }
            true
        });
    }

    /// The counters.
    pub fn stats(&self) -> BusStats {
        let c = &self.inner.counters;
        BusStats {
            published: c.published.load(Ordering::Relaxed),
            delivered: c.delivered.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            received_remote: c.received_remote.load(Ordering::Relaxed),
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> &NodeId {
        &self.inner.node
    }

    fn lock_subscribers(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, LocalSubscriber>> {
        self.inner
            .subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

/// Why a bus publication failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The namespace is invalid.
    #[error(transparent)]
    InvalidName(#[from] InvalidName),
    /// The broker refused the cross-node message.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// One subscriber's end of the bus. Dropping it unsubscribes.
#[derive(Debug)]
pub struct BusSubscription {
    receiver: mpsc::Receiver<Event>,
    missed: Arc<AtomicU64>,
}

impl BusSubscription {
    /// The next event, or [`RecvError::Lagged`] first if events were dropped for this subscriber
    /// since the last call.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn recv(&mut self) -> Result<Event, RecvError> {
        let missed = self.missed.swap(0, Ordering::Relaxed);
        if missed > 0 {
            return Err(RecvError::Lagged(missed));
        }
        self.receiver.recv().await.ok_or(RecvError::Closed)
    }

    /// Like [`BusSubscription::recv`] without waiting: `None` when nothing is queued.
    pub fn try_recv(&mut self) -> Option<Result<Event, RecvError>> {
        let missed = self.missed.swap(0, Ordering::Relaxed);
        if missed > 0 {
            return Some(Err(RecvError::Lagged(missed)));
        }
        match self.receiver.try_recv() {
            Ok(event) => Some(Ok(event)),
            Err(mpsc::error::TryRecvError::Empty) => None,
            Err(mpsc::error::TryRecvError::Disconnected) => Some(Err(RecvError::Closed)),
        }
    }
}
