//! The event bus: live, in-memory fan-out of events by namespace, in-process and across nodes.
//!
//! Local subscribers are served directly from [`EventBus::publish`]; other nodes receive the same
//! events through broker pub/sub on `aether.bus.<namespace>`, tagged with the publishing node's
//! id so that a node never delivers its own publications twice. Publishers never block: every
//! subscriber has a bounded queue, and cross-node messages leave through a bounded, ordered
//! outgoing queue.
//!
//! # What a subscriber can rely on
//!
//! The bus is at-most-once (durable consumption reads the event store), but it never loses an
//! event silently where it can tell:
//!
//! - Every publishing bus instance (an *origin*: a node id plus a random session chosen when the
//!   bus is created) numbers the events it publishes per namespace, 1, 2, 3, …
//! - A subscriber receives each origin's events of a namespace in that order, each at most once
//!   ([`Delivery`] carries the origin, session and number).
//! - Whatever it does not receive is reported as [`RecvError::Lagged`] with a count: events its
//!   own full queue dropped, and events a receiving bus found missing in an origin's numbering
//!   (lost in transit, dropped by a full outgoing queue, or published while this node was
//!   disconnected from the broker). A gap is found when the origin's next message arrives; a loss
//!   with nothing after it from that origin cannot be seen.
//! - A bus that starts hearing an origin mid-stream (it connected later, or the origin is new)
//!   takes the first message as its starting point: nothing before it is reported.

use std::collections::BTreeMap;
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
use crate::telemetry;

/// Default capacity of a bus subscriber's queue.
pub const BUS_SUBSCRIBER_QUEUE_MAX: usize = 1024;

/// Default capacity of a bus's outgoing queue of cross-node messages.
pub const BUS_OUTGOING_QUEUE_MAX: usize = 1024;

/// Header naming the node that published a bus message.
pub const HEADER_ORIGIN: &str = "Aether-Origin";

/// Header carrying the publishing bus's session (decimal).
pub const HEADER_SESSION: &str = "Aether-Bus-Session";

/// Header carrying the number of the message's first event in its origin's numbering of the
/// namespace (decimal; the message's other events follow on).
pub const HEADER_SEQUENCE: &str = "Aether-Bus-Seq";

mod types;

use types::Item;
pub use types::{
    BusConfig, BusStats, BusSubscription, Delivery, Filter, NamespacePattern, PublishError,
    RecvError,
};
struct LocalSubscriber {
    pattern: NamespacePattern,
    filter: Filter,
    sender: mpsc::Sender<Item>,
    /// Events its full queue dropped (and gaps that found the queue full), not yet reported.
    missed: Arc<AtomicU64>,
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    delivered: AtomicU64,
    dropped: AtomicU64,
    received_remote: AtomicU64,
    missed_remote: AtomicU64,
    duplicates: AtomicU64,
    unsent: AtomicU64,
}

/// A cross-node message waiting to leave.
struct Outgoing {
    namespace: String,
    first: u64,
    events: Vec<Event>,
}

/// What this node has heard from one origin about one namespace.
#[derive(Clone, Copy)]
struct Heard {
    session: u64,
    /// The number the next event should carry.
    next: u64,
}

struct Inner<B> {
    broker: B,
    /// This node: bus messages carrying it are recognised as our own.
    node: NodeId,
    /// This bus instance's session.
    session: u64,
    config: BusConfig,
    subscribers: Mutex<BTreeMap<u64, LocalSubscriber>>,
    /// Per namespace: the number of the last event this bus published. Held while an event is
    /// numbered, delivered locally and queued to leave, so that numbering, local order and
    /// sending order agree.
    published: Mutex<BTreeMap<String, u64>>,
    /// Per (origin, namespace): what was heard last.
    heard: Mutex<BTreeMap<(String, String), Heard>>,
    next_id: AtomicU64,
    counters: Counters,
    /// The outgoing queue, once connected.
    outgoing: Mutex<Option<mpsc::Sender<Outgoing>>>,
    /// The receiving and sending tasks, once connected.
    tasks: Mutex<Vec<crate::rt::JoinHandle<()>>>,
    /// Planted bug: gaps in other nodes' numbering are not reported.
    hides_gaps: bool,
}

impl<B> Drop for Inner<B> {
    fn drop(&mut self) {
        if let Ok(tasks) = self.tasks.get_mut() {
            for task in tasks.drain(..) {
                task.abort();
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
            .field("session", &self.inner.session)
            .finish()
    }
}

impl<B: Broker> EventBus<B> {
    /// A bus that serves local subscribers only. Call [`EventBus::connect`] to also exchange
    /// events with other nodes. Its session is drawn from the runtime's RNG.
    pub fn new<C: Clock>(rt: &Runtime<B, C>, config: BusConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                broker: rt.broker().clone(),
                node: rt.node_id().clone(),
                session: rt.rng().next_u64(),
                config,
                subscribers: Mutex::new(BTreeMap::new()),
                published: Mutex::new(BTreeMap::new()),
                heard: Mutex::new(BTreeMap::new()),
                next_id: AtomicU64::new(0),
                counters: Counters::default(),
                outgoing: Mutex::new(None),
                tasks: Mutex::new(Vec::new()),
                hides_gaps: crate::planted::planted!(rt, bus_hides_gaps),
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

    /// Subscribes to the bus subjects of all namespaces (or of [`BusConfig::namespaces`]) on
    /// the broker and forwards other nodes' publications to local subscribers; from then on,
    /// publications also leave for other nodes, in order, through the outgoing queue. Both run
    /// on tasks of the caller's tokio runtime that end when the last handle to the bus is
    /// dropped. Calling it twice does nothing the second time.
    ///
    /// # Errors
    /// A [`BrokerError`] if the broker subscription fails.
    pub async fn connect(&self) -> Result<(), BrokerError> {
        if lock(&self.inner.outgoing).is_some() {
            return Ok(());
        }
        let subjects = match &self.inner.config.namespaces {
            None => vec![bus_pattern()],
            Some(namespaces) => namespaces.iter().map(|n| bus_subject(n)).collect(),
        };
        let mut subscriptions = Vec::with_capacity(subjects.len());
        for subject in &subjects {
            subscriptions.push(self.inner.broker.subscribe(subject).await?);
        }
        // One subject per namespace: each namespace's messages stay in order.
        let mut subscription = futures::stream::select_all(subscriptions);
        let weak: Weak<Inner<B>> = Arc::downgrade(&self.inner);
        let receiver = crate::rt::spawn(async move {
            use futures::StreamExt;
            while let Some(message) = subscription.next().await {
                let Some(inner) = weak.upgrade() else { return };
                let bus = EventBus { inner };
                bus.receive_remote(&message.subject, &message.headers, &message.payload);
            }
        });
        let (tx, rx) = mpsc::channel(self.inner.config.outgoing_queue_max.max(1));
        let mut outgoing = lock(&self.inner.outgoing);
        if outgoing.is_some() {
            receiver.abort(); // lost a race with a concurrent connect
            return Ok(());
        }
        *outgoing = Some(tx);
        let sender = crate::rt::spawn(Self::send_outgoing(Arc::downgrade(&self.inner), rx));
        lock(&self.inner.tasks).extend([receiver, sender]);
        Ok(())
    }

    /// Sends queued publications to the broker, one at a time, in order.
    async fn send_outgoing(inner_weak: Weak<Inner<B>>, mut rx: mpsc::Receiver<Outgoing>) {
        while let Some(out) = rx.recv().await {
            let Some(inner) = inner_weak.upgrade() else {
                return;
            };
            let payload = serde_json::to_vec(&out.events).expect("events always serialise");
            let mut headers = Headers::new();
            headers.insert(HEADER_ORIGIN.to_owned(), inner.node.to_string());
            headers.insert(HEADER_SESSION.to_owned(), inner.session.to_string());
            headers.insert(HEADER_SEQUENCE.to_owned(), out.first.to_string());
            let broker = inner.broker.clone();
            let count = out.events.len() as u64;
            drop(inner); // never keep the bus alive while waiting on the broker
            if let Err(error) = broker
                .publish(&bus_subject(&out.namespace), headers, Bytes::from(payload))
                .await
            {
                tracing::warn!(namespace = %out.namespace, %error, "bus message not sent");
                let Some(inner) = inner_weak.upgrade() else {
                    return;
                };
                inner.counters.unsent.fetch_add(count, Ordering::Relaxed);
            }
        }
    }

    fn receive_remote(&self, subject: &str, headers: &Headers, payload: &Bytes) {
        let origin = headers.get(HEADER_ORIGIN);
        if origin.map(String::as_str) == Some(self.inner.node.as_str()) {
            return; // our own publication, already delivered locally
        }
        let Some(namespace) = bus_namespace(subject) else {
            return;
        };
        let number = |name: &str| headers.get(name).and_then(|v| v.parse::<u64>().ok());
        let (Some(origin), Some(session), Some(first)) = (
            origin.and_then(|o| NodeId::new(o.as_str()).ok()),
            number(HEADER_SESSION),
            number(HEADER_SEQUENCE),
        ) else {
            tracing::warn!(%subject, "bus message without a valid origin, session or number ignored");
            return;
        };
        let events = match serde_json::from_slice::<Vec<Event>>(payload) {
            Ok(events) if !events.is_empty() => events,
            Ok(_) => return,
            Err(error) => {
                tracing::warn!(%subject, %error, "undecodable bus message ignored");
                return;
            }
        };
        let counters = &self.inner.counters;
        let count = events.len() as u64;
        // Place the message in the origin's numbering: new, the next one, after a gap, or old.
        let missed = {
            let mut heard = lock(&self.inner.heard);
            let key = (origin.to_string(), namespace.to_owned());
            let known = heard.get(&key).copied().filter(|h| h.session == session);
            let missed = match known {
                Some(h) if first < h.next => {
                    counters.duplicates.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Some(h) => first - h.next,
                None => 0,
            };
            heard.insert(
                key,
                Heard {
                    session,
                    next: first.saturating_add(count),
                },
            );
            missed
        };
        counters.received_remote.fetch_add(count, Ordering::Relaxed);
        if missed > 0 {
            counters.missed_remote.fetch_add(missed, Ordering::Relaxed);
            tracing::debug!(%origin, namespace, missed, "bus events lost in transit");
            lagged(namespace, "lost_in_transit", missed);
        }
        let missed = if self.inner.hides_gaps { 0 } else { missed };
        self.deliver_local(namespace, &events, &origin, session, first, missed);
    }

    /// Subscribes to events of the namespaces matching `pattern` (`"orders"`, `"orders-*"`,
    /// `"*"`) that pass `filter`.
    ///
    /// # Errors
    /// [`InvalidName`] for a malformed pattern.
    pub fn subscribe(&self, pattern: &str, filter: Filter) -> Result<BusSubscription, InvalidName> {
        self.subscribe_with_queue(pattern, filter, self.inner.config.subscriber_queue_max)
    }

    /// Like [`EventBus::subscribe`], with a queue of `queue_max` events for this subscriber
    /// (instead of the configured default).
    ///
    /// # Errors
    /// [`InvalidName`] for a malformed pattern.
    pub fn subscribe_with_queue(
        &self,
        pattern: &str,
        filter: Filter,
        queue_max: usize,
    ) -> Result<BusSubscription, InvalidName> {
        let pattern = NamespacePattern::parse(pattern)?;
        let (sender, receiver) = mpsc::channel(queue_max.max(1));
        let missed = Arc::new(AtomicU64::new(0));
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.inner.subscribers).insert(
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

    /// Publishes events of `namespace` to local subscribers and, if connected, queues them (one
    /// broker message for the whole slice) for other nodes. Never waits for the broker: a
    /// message that cannot be queued or sent is counted in [`BusStats::unsent`], and other
    /// nodes report the gap to their subscribers.
    ///
    /// # Errors
    /// [`PublishError::InvalidName`] for a bad namespace; [`PublishError::TooLarge`] when the
    /// events do not fit in one broker message (nothing is published).
    #[tracing::instrument(
        level = "debug",
        name = "aether.bus.publish",
        skip_all,
        fields(namespace, events = events.len(), node = %self.inner.node)
    )]
    pub async fn publish(&self, namespace: &str, events: &[Event]) -> Result<(), PublishError> {
        validate_namespace(namespace)?;
        if events.is_empty() {
            return Ok(());
        }
        let connected = lock(&self.inner.outgoing).clone();
        if connected.is_some() {
            let size = serde_json::to_vec(events).map_or(usize::MAX, |p| p.len());
            if size > crate::broker::wire::DEFAULT_MAX_PAYLOAD {
                return Err(PublishError::TooLarge {
                    size,
                    max: crate::broker::wire::DEFAULT_MAX_PAYLOAD,
                });
            }
        }
        let count = events.len() as u64;
        self.inner
            .counters
            .published
            .fetch_add(count, Ordering::Relaxed);
        metrics::counter!(telemetry::BUS_PUBLISHED, "namespace" => namespace.to_owned())
            .increment(count);
        let mut published = lock(&self.inner.published);
        let last = published.entry(namespace.to_owned()).or_insert(0);
        let first = *last + 1;
        *last += count;
        let (node, session) = (&self.inner.node, self.inner.session);
        self.deliver_local(namespace, events, node, session, first, 0);
        if let Some(outgoing) = connected {
            let out = Outgoing {
                namespace: namespace.to_owned(),
                first,
                events: events.to_vec(),
            };
            if outgoing.try_send(out).is_err() {
                self.inner
                    .counters
                    .unsent
                    .fetch_add(count, Ordering::Relaxed);
                tracing::warn!(
                    namespace,
                    count,
                    "bus events not sent: the outgoing queue is full"
                );
                lagged(namespace, "unsent", count);
            }
        }
        drop(published);
        Ok(())
    }

    /// Delivers to every local subscriber whose pattern covers `namespace`: first `missed` (events
    /// of the namespace that never arrived) as lag, then the events that pass its filter.
    fn deliver_local(
        &self,
        namespace: &str,
        events: &[Event],
        origin: &NodeId,
        session: u64,
        first: u64,
        missed: u64,
    ) {
        let counters = &self.inner.counters;
        let mut dropped = 0;
        lock(&self.inner.subscribers).retain(|_, sub| {
            if sub.sender.is_closed() {
                return false;
            }
            if !sub.pattern.matches(namespace) {
                return true;
            }
            if missed > 0 && sub.sender.try_send(Item::Missed(missed)).is_err() {
                sub.missed.fetch_add(missed, Ordering::Relaxed);
            }
            for (i, event) in events.iter().enumerate() {
                if !sub.filter.accepts(event) {
                    continue;
                }
                let delivery = Delivery {
                    event: event.clone(),
                    origin: origin.clone(),
                    session,
                    sequence: first + i as u64,
                };
                match sub.sender.try_send(Item::Delivered(Box::new(delivery))) {
                    Ok(()) => {
                        counters.delivered.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        sub.missed.fetch_add(1, Ordering::Relaxed);
                        counters.dropped.fetch_add(1, Ordering::Relaxed);
                        dropped += 1;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return false,
                }
            }
            true
        });
        if dropped > 0 {
            tracing::debug!(
                namespace,
                dropped,
                "bus events dropped: a subscriber's queue is full"
            );
            lagged(namespace, "queue_full", dropped);
        }
    }

    /// The counters.
    pub fn stats(&self) -> BusStats {
        let c = &self.inner.counters;
        BusStats {
            published: c.published.load(Ordering::Relaxed),
            delivered: c.delivered.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            received_remote: c.received_remote.load(Ordering::Relaxed),
            missed_remote: c.missed_remote.load(Ordering::Relaxed),
            duplicates: c.duplicates.load(Ordering::Relaxed),
            unsent: c.unsent.load(Ordering::Relaxed),
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> &NodeId {
        &self.inner.node
    }

    /// This bus instance's session: other nodes see it on every event it publishes.
    pub fn session(&self) -> u64 {
        self.inner.session
    }
}

/// Counts events a subscriber will not receive.
fn lagged(namespace: &str, reason: &'static str, count: u64) {
    metrics::counter!(
        telemetry::BUS_LAGGED,
        "namespace" => namespace.to_owned(),
        "reason" => reason
    )
    .increment(count);
}
