//! The in-process broker: a model of the NATS semantics aether relies on.
//!
//! [`BrokerState`] is the state machine (synchronous, time passed in), so that the simulation's
//! broker host can run exactly the same logic behind a network protocol; [`MemoryBroker`] wraps
//! it for in-process use. TTLs, max age and the duplicate window follow the clock the broker was
//! built with.

mod kv;
mod stream;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::subject::{matches, validate_pattern, validate_subject};
use super::wire::message_size;
use super::{
    AppendAck, AppendOptions, Broker, BrokerError, DEFAULT_MAX_PAYLOAD, Headers, KvConfig, KvEntry,
    KvWatch, Message, ReadFrom, StoredMessage, StreamConfig, Subscription, SubscriptionSource,
};
use crate::clock::{Clock, SystemClock};
use kv::{BucketState, Watcher};
use stream::StreamState;
#[cfg(any(test, feature = "sim"))]
pub use stream::SubjectView;

/// Capacity of each subscription's and watch's queue. Like a NATS slow consumer, a subscriber
/// that falls this far behind loses messages rather than blocking the publisher.
pub const SUBSCRIPTION_QUEUE_MAX: usize = 65_536;

/// Consumers one stream may have at once: the NATS server default (`max_consumers` unset:
/// 1,000). A KV watch holds one consumer on its bucket's stream.
pub const CONSUMERS_PER_STREAM_MAX: usize = 1_000;

/// How long a consumer outlives the client that stopped using it: async-nats creates the
/// ordered consumer behind a KV watch with a 30 s inactivity threshold, so a dropped watch
/// still counts against [`CONSUMERS_PER_STREAM_MAX`] for that long.
pub const CONSUMER_INACTIVE_THRESHOLD: Duration = Duration::from_secs(30);

/// The broker's reading of time for one operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time since the broker started (drives TTL, max age, duplicate window).
    pub monotonic: Duration,
    /// Wall time (recorded on stored messages).
    pub wall: SystemTime,
}

struct Subscriber {
    pattern: String,
    sender: mpsc::Sender<Message>,
}

/// What a [`BrokerState`] holds: see [`BrokerState::usage`].
#[cfg(any(test, feature = "sim"))]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BrokerUsage {
    /// Per stream (KV buckets' streams excluded).
    pub streams: BTreeMap<String, StreamUsage>,
    /// Stored stream messages, all streams (KV buckets excluded).
    pub messages: usize,
    /// Their size (headers and payload, as the server counts toward `max_payload`).
    pub bytes: usize,
    /// Message ids remembered for deduplication.
    pub dedupe_ids: usize,
    /// Live KV keys, all buckets.
    pub kv_keys: usize,
    /// Consumers held by KV watches (live, or dropped and not yet expired).
    pub watch_consumers: usize,
    /// Core subscriptions.
    pub subscribers: usize,
}

/// What one stream holds.
#[cfg(any(test, feature = "sim"))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamUsage {
    /// Stored messages.
    pub messages: usize,
    /// Their size.
    pub bytes: usize,
    /// Message ids remembered for deduplication.
    pub dedupe_ids: usize,
}

/// The broker state machine. Every operation takes the current [`Now`]; nothing inside reads a
/// clock, so the simulation can drive it with virtual time.
#[derive(Default)]
pub struct BrokerState {
    max_payload: usize,
    streams: BTreeMap<String, StreamState>,
    buckets: BTreeMap<String, BucketState>,
    subscribers: BTreeMap<u64, Subscriber>,
    watchers: BTreeMap<u64, Watcher>,
    next_id: u64,
    consumers_max: usize,
}

impl BrokerState {
    /// An empty broker accepting messages up to `max_payload` bytes (headers included).
    pub fn new(max_payload: usize) -> Self {
        Self {
            max_payload,
            consumers_max: CONSUMERS_PER_STREAM_MAX,
            ..Self::default()
        }
    }

    /// Sets how many consumers one stream may have at once (see
    /// [`CONSUMERS_PER_STREAM_MAX`]), e.g. to make a resource leak show up sooner in a test.
    #[cfg(any(test, feature = "sim"))]
    pub fn with_consumers_max(mut self, consumers_max: usize) -> Self {
        self.consumers_max = consumers_max;
        self
    }

    /// Registers a subscriber; returns its id.
    ///
    /// # Errors
    /// `InvalidArgument` for a bad pattern.
    pub fn subscribe(
        &mut self,
        pattern: &str,
        sender: mpsc::Sender<Message>,
    ) -> Result<u64, BrokerError> {
        validate_pattern(pattern)?;
        self.next_id += 1;
        self.subscribers.insert(
            self.next_id,
            Subscriber {
                pattern: pattern.to_owned(),
                sender,
            },
        );
        Ok(self.next_id)
    }

    /// Removes a subscriber.
    pub fn unsubscribe(&mut self, id: u64) {
        self.subscribers.remove(&id);
    }

    /// Delivers a core message to every matching subscriber; returns how many matched.
    ///
    /// # Errors
    /// `InvalidArgument` for a bad subject, `PayloadTooLarge`.
    pub fn publish(&mut self, message: Message) -> Result<usize, BrokerError> {
        validate_subject(&message.subject)?;
        let size = message_size(&message.headers, &message.payload);
        if size > self.max_payload {
            return Err(BrokerError::PayloadTooLarge {
                size,
                max: self.max_payload,
            });
        }
        let mut delivered = 0;
        self.subscribers.retain(|_, sub| {
            if sub.sender.is_closed() {
                return false;
            }
            if matches(&sub.pattern, &message.subject) {
                delivered += 1;
                if sub.sender.try_send(message.clone()).is_err() {
                    tracing::warn!(pattern = %sub.pattern, "slow subscriber: message dropped");
                }
            }
            true
        });
        Ok(delivered)
    }

    /// What the broker holds right now, after expiring what is due at `now`: the model of the
    /// server's resource use (a long-running simulation reports it per simulated day).
    #[cfg(any(test, feature = "sim"))]
    pub fn usage(&mut self, now: Now) -> BrokerUsage {
        let mut usage = BrokerUsage::default();
        for (name, stream) in &mut self.streams {
            stream.expire(now.monotonic);
            let (messages, bytes, dedupe_ids) = stream.usage();
            usage.messages += messages;
            usage.bytes += bytes;
            usage.dedupe_ids += dedupe_ids;
            usage.streams.insert(
                name.clone(),
                StreamUsage {
                    messages,
                    bytes,
                    dedupe_ids,
                },
            );
        }
        for bucket in self.buckets.values_mut() {
            bucket.expire(now.monotonic);
            usage.kv_keys += bucket.len();
        }
        let buckets: Vec<String> = self.buckets.keys().cloned().collect();
        for bucket in buckets {
            usage.watch_consumers += self.bucket_consumers(&bucket, now.monotonic);
        }
        self.subscribers.retain(|_, sub| !sub.sender.is_closed());
        usage.subscribers = self.subscribers.len();
        usage
    }

    /// A fresh, unique inbox subject for a request.
    pub fn new_inbox(&mut self) -> String {
        self.next_id += 1;
        format!("_INBOX.{}", self.next_id)
    }
}

/// A subscription on the in-process broker. Draining unsubscribes: the broker drops its sender,
/// so the stream yields what was already queued and then ends.
struct MemorySubscription {
    messages: ReceiverStream<Message>,
    broker: Option<(MemoryBroker, u64)>,
}

impl futures::Stream for MemorySubscription {
    type Item = Message;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Message>> {
        std::pin::Pin::new(&mut self.messages).poll_next(cx)
    }
}

impl SubscriptionSource for MemorySubscription {
    fn drain(&mut self) -> futures::future::BoxFuture<'_, ()> {
        if let Some((broker, id)) = self.broker.take() {
            broker.with_state(|s, _| s.unsubscribe(id));
        }
        Box::pin(async {})
    }
}

type TimeSource = Arc<dyn Fn() -> Now + Send + Sync>;

/// The in-process broker: [`BrokerState`] behind a mutex, on a clock.
///
/// Cheap to clone; clones share state. Dropped subscriptions and watches are removed lazily.
#[derive(Clone)]
pub struct MemoryBroker {
    state: Arc<Mutex<BrokerState>>,
    now: TimeSource,
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryBroker")
    }
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBroker {
    /// A broker on the system clock with the NATS default max payload (1 MiB).
    pub fn new() -> Self {
        Self::with_clock(SystemClock::new())
    }

    /// A broker whose TTLs, max age and duplicate window follow `clock`.
    pub fn with_clock(clock: impl Clock) -> Self {
        Self::with_clock_and_max_payload(clock, DEFAULT_MAX_PAYLOAD)
    }

    /// A broker on `clock` accepting messages up to `max_payload` bytes.
    pub fn with_clock_and_max_payload(clock: impl Clock, max_payload: usize) -> Self {
        Self {
            state: Arc::new(Mutex::new(BrokerState::new(max_payload))),
            now: Arc::new(move || Now {
                monotonic: clock.monotonic(),
                wall: clock.wall(),
            }),
        }
    }

    fn with_state<T>(&self, f: impl FnOnce(&mut BrokerState, Now) -> T) -> T {
        let now = (self.now)();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut state, now)
    }
}

impl Broker for MemoryBroker {
    #[tracing::instrument(level = "trace", name = "aether.broker", skip_all, fields(op = "ensure_stream", target = %config.name), err(level = "debug"))]
    async fn ensure_stream(&self, config: StreamConfig) -> Result<(), BrokerError> {
        self.with_state(|s, _| s.ensure_stream(config))
    }

    #[tracing::instrument(level = "trace", name = "aether.broker", skip_all, fields(op = "append", target = subject), err(level = "debug"))]
    async fn append(
        &self,
        subject: &str,
        headers: Headers,
        payload: Bytes,
        options: AppendOptions,
    ) -> Result<AppendAck, BrokerError> {
        self.with_state(|s, now| s.append(subject, headers, payload, options, now))
    }

    #[tracing::instrument(level = "trace", name = "aether.broker", skip_all, fields(op = "last", target = subject), err(level = "debug"))]
    async fn last(
        &self,
        stream: &str,
        subject: &str,
        _from: ReadFrom,
    ) -> Result<Option<StoredMessage>, BrokerError> {
        // One linearizable copy: every reader sees every acknowledged message.
        self.with_state(|s, now| s.last(stream, subject, now))
    }

    #[tracing::instrument(level = "trace", name = "aether.broker", skip_all, fields(op = "next", target = subject), err(level = "debug"))]
    async fn next(
        &self,
        stream: &str,
        subject: &str,
        from_sequence: u64,
        _from: ReadFrom,
    ) -> Result<Option<StoredMessage>, BrokerError> {
        self.with_state(|s, now| s.next(stream, subject, from_sequence, now))
    }

    #[tracing::instrument(level = "trace", name = "aether.broker", skip_all, fields(op = "read", target = subject), err(level = "debug"))]
    async fn read(
        &self,
        stream: &str,
        subject: &str,
        from_sequence: u64,
    ) -> Result<Vec<StoredMessage>, BrokerError> {
        self.with_state(|s, now| s.read(stream, subject, from_sequence, now))
    }

    #[tracing::instrument(level = "trace", name = "aether.broker", skip_all, fields(op = "read_batch", target = stream), err(level = "debug"))]
    async fn read_batch(
        &self,
        stream: &str,
        filter: &str,
        from_sequence: u64,
        max: usize,
    ) -> Result<Vec<StoredMessage>, BrokerError> {
        self.with_state(|s, now| s.read_batch(stream, filter, from_sequence, max, now))
    }

    #[tracing::instrument(level = "trace", name = "aether.broker", skip_all, fields(op = "publish", target = subject), err(level = "debug"))]
    async fn publish(
        &self,
        subject: &str,
        headers: Headers,
        payload: Bytes,
    ) -> Result<(), BrokerError> {
        self.with_state(|s, _| {
            s.publish(Message {
                subject: subject.to_owned(),
                headers,
                payload,
                reply: None,
            })
        })
        .map(|_| ())
    }

    #[tracing::instrument(level = "trace", name = "aether.broker", skip_all, fields(op = "subscribe", target = pattern), err(level = "debug"))]
    async fn subscribe(&self, pattern: &str) -> Result<Subscription, BrokerError> {
        let (tx, rx) = mpsc::channel(SUBSCRIPTION_QUEUE_MAX);
        let id = self.with_state(|s, _| s.subscribe(pattern, tx))?;
        Ok(Subscription::from_source(MemorySubscription {
            messages: ReceiverStream::new(rx),
            broker: Some((self.clone(), id)),
        }))
    }

    #[tracing::instrument(level = "trace", name = "aether.broker", skip_all, fields(op = "request", target = subject), err(level = "debug"))]
    async fn request(
        &self,
        subject: &str,
        headers: Headers,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Message, BrokerError> {
        validate_subject(subject)?;
        let (tx, mut rx) = mpsc::channel(1);
        let (sub_id, matched) = self.with_state(|s, _| {
            let inbox = s.new_inbox();
            let sub_id = s.subscribe(&inbox, tx)?;
            let matched = s.publish(Message {
                subject: subject.to_owned(),
                headers,
                payload,
                reply: Some(inbox),
            });
            Ok::<_, BrokerError>((sub_id, matched))
        })?;
        let result = match matched {
            Ok(0) => Err(BrokerError::NoResponders {
                subject: subject.to_owned(),
            }),
            Err(e) => Err(e),
            Ok(_) => match crate::rt::timeout(timeout, rx.recv()).await {
                Ok(Some(reply)) => Ok(reply),
                Ok(None) | Err(_) => Err(BrokerError::Timeout {
                    operation: format!("a reply to {subject:?}"),
                }),
            },
        };
        self.with_state(|s, _| s.unsubscribe(sub_id));
        result
    }

    #[tracing::instrument(level = "trace", name = "aether.broker", skip_all, fields(op = "kv_ensure", target = %config.bucket), err(level = "debug"))]
    async fn kv_ensure(&self, config: KvConfig) -> Result<(), BrokerError> {
        self.with_state(|s, _| s.kv_ensure(config))
    }

    #[tracing::instrument(level = "trace", name = "aether.broker", skip_all, fields(op = "kv_get", target = bucket), err(level = "debug"))]
    async fn kv_get(&self, bucket: &str, key: &str) -> Result<Option<KvEntry>, BrokerError> {
        self.with_state(|s, now| s.kv_get(bucket, key, now))
    }

    #[tracing::instrument(level = "trace", name = "aether.broker", skip_all, fields(op = "kv_create", target = bucket), err(level = "debug"))]
    async fn kv_create(&self, bucket: &str, key: &str, value: Bytes) -> Result<u64, BrokerError> {
        self.with_state(|s, now| s.kv_create(bucket, key, value, now))
    }

    #[tracing::instrument(level = "trace", name = "aether.broker", skip_all, fields(op = "kv_update", target = bucket), err(level = "debug"))]
    async fn kv_update(
        &self,
        bucket: &str,
        key: &str,
        value: Bytes,
        revision: u64,
    ) -> Result<u64, BrokerError> {
        self.with_state(|s, now| s.kv_update(bucket, key, value, revision, now))
    }

    #[tracing::instrument(level = "trace", name = "aether.broker", skip_all, fields(op = "kv_put", target = bucket), err(level = "debug"))]
    async fn kv_put(&self, bucket: &str, key: &str, value: Bytes) -> Result<u64, BrokerError> {
        self.with_state(|s, now| s.kv_put(bucket, key, value, now))
    }

    #[tracing::instrument(level = "trace", name = "aether.broker", skip_all, fields(op = "kv_delete", target = bucket), err(level = "debug"))]
    async fn kv_delete(&self, bucket: &str, key: &str) -> Result<(), BrokerError> {
        self.with_state(|s, now| s.kv_delete(bucket, key, now))
    }

    #[tracing::instrument(level = "trace", name = "aether.broker", skip_all, fields(op = "kv_entries", target = bucket), err(level = "debug"))]
    async fn kv_entries(&self, bucket: &str) -> Result<Vec<KvEntry>, BrokerError> {
        self.with_state(|s, now| s.kv_entries(bucket, now))
    }

    #[tracing::instrument(level = "trace", name = "aether.broker", skip_all, fields(op = "kv_watch", target = bucket), err(level = "debug"))]
    async fn kv_watch(&self, bucket: &str, key_pattern: &str) -> Result<KvWatch, BrokerError> {
        let (tx, rx) = mpsc::channel(SUBSCRIPTION_QUEUE_MAX);
        self.with_state(|s, now| s.kv_watch(bucket, key_pattern, tx, now))?;
        Ok(KvWatch::new(ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::BrokerLimit;

    fn at(seconds: u64) -> Now {
        Now {
            monotonic: Duration::from_secs(seconds),
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(seconds),
        }
    }

    /// A KV watch holds a consumer on its bucket's stream, as on NATS: past the per-stream limit
    /// a watch is refused with a typed error, and a dropped watch frees its consumer only once
    /// the server's inactivity threshold has passed.
    #[test]
    fn watches_count_against_the_consumer_limit_and_linger_after_they_are_dropped() {
        let mut state = BrokerState::new(DEFAULT_MAX_PAYLOAD).with_consumers_max(2);
        state.kv_ensure(KvConfig::new("b")).unwrap();
        state.kv_ensure(KvConfig::new("other")).unwrap();
        let watch = |state: &mut BrokerState, bucket: &str, now| {
            let (tx, rx) = mpsc::channel(8);
            state.kv_watch(bucket, ">", tx, now).map(|_| rx)
        };
        let first = watch(&mut state, "b", at(0)).unwrap();
        let _second = watch(&mut state, "b", at(0)).unwrap();
        match watch(&mut state, "b", at(0)) {
            Err(BrokerError::LimitReached {
                limit: BrokerLimit::Consumers,
                ..
            }) => {}
            other => panic!("a third consumer on one stream: {other:?}"),
        }
        // Other streams have their own limit.
        watch(&mut state, "other", at(0)).unwrap();
        drop(first);
        assert!(
            watch(&mut state, "b", at(1)).is_err(),
            "a dropped watch's consumer lingers"
        );
        let lingering_until = 1 + CONSUMER_INACTIVE_THRESHOLD.as_secs();
        assert!(watch(&mut state, "b", at(lingering_until - 1)).is_err());
        watch(&mut state, "b", at(lingering_until)).unwrap();
    }

    /// Inboxes are unique for the life of the broker: a reply to one request can never be
    /// delivered to another.
    #[test]
    fn inboxes_are_never_reused() {
        let mut state = BrokerState::new(DEFAULT_MAX_PAYLOAD);
        let inboxes: std::collections::BTreeSet<String> =
            (0..10_000).map(|_| state.new_inbox()).collect();
        assert_eq!(inboxes.len(), 10_000);
    }
}
