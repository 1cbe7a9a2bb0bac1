//! The in-process broker: a model of the NATS semantics aether relies on.
//!
//! [`BrokerState`] is the state machine (synchronous, time passed in), so that the simulation's
//! broker host can run exactly the same logic behind a network protocol; [`MemoryBroker`] wraps
//! it for in-process use. TTLs, max age and the duplicate window follow the clock the broker was
//! built with.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::subject::{matches, overlap, validate_kv_key, validate_pattern, validate_subject};
use super::{
    AppendAck, AppendOptions, Broker, BrokerError, BrokerLimit, DEFAULT_MAX_PAYLOAD, Headers,
    KvConfig, KvEntry, KvOperation, KvWatch, Message, ReadFrom, StoredMessage, StreamConfig,
    Subscription, SubscriptionSource,
};
use crate::clock::{Clock, SystemClock};

/// Capacity of each subscription's and watch's queue. Like a NATS slow consumer, a subscriber
/// that falls this far behind loses messages rather than blocking the publisher.
pub const SUBSCRIBER_QUEUE_MAX: usize = 65_536;

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

#[derive(Debug)]
struct StoredEntry {
    message: StoredMessage,
    stored_at: Duration,
}

#[derive(Debug)]
struct StreamState {
    config: StreamConfig,
    last_sequence: u64,
    messages: BTreeMap<u64, StoredEntry>,
    /// Sequences per subject, in order.
    subjects: BTreeMap<String, VecDeque<u64>>,
    /// Message id → (sequence, stored at).
    dedupe: BTreeMap<String, (u64, Duration)>,
    dedupe_order: VecDeque<(Duration, String)>,
}

impl StreamState {
    fn expire(&mut self, now: Duration) {
        if let Some(max_age) = self.config.max_age {
            while let Some((&seq, entry)) = self.messages.first_key_value() {
                if entry.stored_at + max_age > now {
                    break;
                }
                let subject = entry.message.subject.clone();
                self.remove(seq, &subject);
            }
        }
        while let Some((at, _)) = self.dedupe_order.front() {
            if *at + self.config.duplicate_window > now {
                break;
            }
            let (at, id) = self.dedupe_order.pop_front().expect("front exists");
            if self.dedupe.get(&id).is_some_and(|(_, t)| *t == at) {
                self.dedupe.remove(&id);
            }
        }
    }

    fn remove(&mut self, seq: u64, subject: &str) {
        self.messages.remove(&seq);
        if let Some(seqs) = self.subjects.get_mut(subject) {
            seqs.retain(|s| *s != seq);
            if seqs.is_empty() {
                self.subjects.remove(subject);
            }
        }
    }

    fn last_of(&self, subject: &str) -> u64 {
        self.subjects
            .get(subject)
            .and_then(|s| s.back().copied())
            .unwrap_or(0)
    }
}

#[derive(Debug)]
struct KvValue {
    value: Bytes,
    revision: u64,
    operation: KvOperation,
    written_at: Duration,
}

#[derive(Debug)]
struct BucketState {
    config: KvConfig,
    revision: u64,
    entries: BTreeMap<String, KvValue>,
}

impl BucketState {
    fn expire(&mut self, now: Duration) {
        if let Some(ttl) = self.config.ttl {
            self.entries.retain(|_, v| v.written_at + ttl > now);
        }
    }

    fn entry(&self, key: &str) -> Option<KvEntry> {
        self.entries.get(key).map(|v| KvEntry {
            bucket: self.config.bucket.clone(),
            key: key.to_owned(),
            value: v.value.clone(),
            revision: v.revision,
            operation: v.operation,
        })
    }
}

struct Subscriber {
    pattern: String,
    sender: mpsc::Sender<Message>,
}

struct Watcher {
    bucket: String,
    pattern: String,
    sender: mpsc::Sender<KvEntry>,
    /// When the watch was first seen closed: its consumer lingers on the server until
    /// [`CONSUMER_INACTIVE_THRESHOLD`] has passed since.
    closed_at: Option<Duration>,
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

/// Size of a message on the wire as NATS counts it against `max_payload`: the payload plus the
/// header block (`NATS/1.0\r\n`, one `Name: value\r\n` per header, `\r\n`), including the
/// `Nats-Msg-Id` and `Nats-Expected-Last-Subject-Sequence` headers an append's options add.
pub(crate) fn wire_size(headers: &Headers, payload: &Bytes, options: &AppendOptions) -> usize {
    let mut fields: usize = headers.iter().map(|(k, v)| k.len() + v.len() + 4).sum();
    let mut count = headers.len();
    if let Some(id) = &options.message_id {
        fields += "Nats-Msg-Id".len() + id.len() + 4;
        count += 1;
    }
    if let Some(expected) = options.expected_last_subject_sequence {
        fields += "Nats-Expected-Last-Subject-Sequence".len() + expected.to_string().len() + 4;
        count += 1;
    }
    let headers_len = if count == 0 { 0 } else { 12 + fields };
    headers_len + payload.len()
}

fn message_size(headers: &Headers, payload: &Bytes) -> usize {
    wire_size(headers, payload, &AppendOptions::default())
}

/// Headers named `Nats-*` are reserved: on NATS they steer JetStream (dedupe, expectations) and
/// the server adds its own when messages are read back, so user headers may not use the prefix.
pub(crate) fn check_user_headers(headers: &Headers) -> Result<(), BrokerError> {
    match headers
        .keys()
        .find(|k| k.len() >= 5 && k[..5].eq_ignore_ascii_case("nats-"))
    {
        Some(k) => Err(BrokerError::invalid(format!(
            "header {k:?} is reserved: Nats-* headers are set by the broker from AppendOptions"
        ))),
        None => Ok(()),
    }
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
    pub fn with_consumers_max(mut self, consumers_max: usize) -> Self {
        self.consumers_max = consumers_max;
        self
    }

    /// Creates a stream unless one of that name exists.
    ///
    /// # Errors
    /// See [`Broker::ensure_stream`].
    pub fn ensure_stream(&mut self, config: StreamConfig) -> Result<(), BrokerError> {
        config.validate()?;
        if self.streams.contains_key(&config.name) {
            return Ok(());
        }
        for (name, other) in &self.streams {
            for a in &config.subjects {
                for b in &other.config.subjects {
                    if overlap(a, b) {
                        return Err(BrokerError::invalid(format!(
                            "subjects of stream {:?} overlap with stream {name:?} ({a:?} and {b:?})",
                            config.name
                        )));
                    }
                }
            }
        }
        self.streams.insert(
            config.name.clone(),
            StreamState {
                config,
                last_sequence: 0,
                messages: BTreeMap::new(),
                subjects: BTreeMap::new(),
                dedupe: BTreeMap::new(),
                dedupe_order: VecDeque::new(),
            },
        );
        Ok(())
    }

    fn stream_for_subject(&mut self, subject: &str) -> Option<&mut StreamState> {
        self.streams
            .values_mut()
            .find(|s| s.config.subjects.iter().any(|p| matches(p, subject)))
    }

    /// Appends a message to the stream capturing `subject`.
    ///
    /// As on NATS, the expected sequence is checked before the message id: a duplicate id is
    /// acknowledged with the original's sequence and `duplicate: true` only when the
    /// expectation (if any) holds.
    ///
    /// # Errors
    /// See [`Broker::append`].
    pub fn append(
        &mut self,
        subject: &str,
        headers: Headers,
        payload: Bytes,
        options: AppendOptions,
        now: Now,
    ) -> Result<AppendAck, BrokerError> {
        validate_subject(subject)?;
        check_user_headers(&headers)?;
        let size = wire_size(&headers, &payload, &options);
        let server_max = self.max_payload;
        if size > server_max {
            return Err(BrokerError::PayloadTooLarge {
                size,
                max: server_max,
            });
        }
        let stream = self
            .stream_for_subject(subject)
            .ok_or_else(|| BrokerError::not_found(format!("stream for subject {subject:?}")))?;
        stream.expire(now.monotonic);
        if let Some(max) = stream.config.max_message_size
            && size > max
        {
            return Err(BrokerError::PayloadTooLarge { size, max });
        }
        // As on nats-server 2.15 (single node and clustered), the expected sequence is checked
        // before the message id: a retried append whose first attempt landed is answered
        // wrong-last-sequence (the first attempt moved the subject's tail), not duplicate.
        if let Some(expected) = options.expected_last_subject_sequence {
            let actual = stream.last_of(subject);
            if actual != expected {
                return Err(BrokerError::WrongLastSequence { expected, actual });
            }
        }
        if let Some(id) = &options.message_id
            && let Some((sequence, _)) = stream.dedupe.get(id)
        {
            return Ok(AppendAck {
                sequence: *sequence,
                duplicate: true,
            });
        }
        stream.last_sequence += 1;
        let sequence = stream.last_sequence;
        stream.messages.insert(
            sequence,
            StoredEntry {
                message: StoredMessage {
                    subject: subject.to_owned(),
                    sequence,
                    headers,
                    payload,
                    time: now.wall,
                },
                stored_at: now.monotonic,
            },
        );
        let seqs = stream.subjects.entry(subject.to_owned()).or_default();
        seqs.push_back(sequence);
        if let Some(limit) = stream.config.max_messages_per_subject
            && seqs.len() as u64 > limit
        {
            let oldest = seqs.pop_front().expect("over the limit, so not empty");
            stream.messages.remove(&oldest);
        }
        if let Some(id) = options.message_id {
            stream.dedupe.insert(id.clone(), (sequence, now.monotonic));
            stream.dedupe_order.push_back((now.monotonic, id));
        }
        Ok(AppendAck {
            sequence,
            duplicate: false,
        })
    }

    fn stream(&mut self, name: &str, now: Now) -> Result<&mut StreamState, BrokerError> {
        let stream = self
            .streams
            .get_mut(name)
            .ok_or_else(|| BrokerError::not_found(format!("stream {name:?}")))?;
        stream.expire(now.monotonic);
        Ok(stream)
    }

    /// The last message on `subject`.
    ///
    /// # Errors
    /// `NotFound` for an unknown stream.
    pub fn last(
        &mut self,
        stream: &str,
        subject: &str,
        now: Now,
    ) -> Result<Option<StoredMessage>, BrokerError> {
        validate_subject(subject)?;
        let stream = self.stream(stream, now)?;
        let seq = stream.last_of(subject);
        Ok(stream.messages.get(&seq).map(|e| e.message.clone()))
    }

    /// The first message on `subject` with sequence `>= from_sequence`.
    ///
    /// # Errors
    /// `NotFound` for an unknown stream.
    pub fn next(
        &mut self,
        stream: &str,
        subject: &str,
        from_sequence: u64,
        now: Now,
    ) -> Result<Option<StoredMessage>, BrokerError> {
        validate_subject(subject)?;
        Ok(self
            .read_batch(stream, subject, from_sequence, 1, now)?
            .into_iter()
            .next())
    }

    /// Messages matching `filter` (a subject or a pattern) from `from_sequence` on.
    ///
    /// # Errors
    /// `NotFound` for an unknown stream.
    pub fn read(
        &mut self,
        stream: &str,
        filter: &str,
        from_sequence: u64,
        now: Now,
    ) -> Result<Vec<StoredMessage>, BrokerError> {
        self.read_batch(stream, filter, from_sequence, usize::MAX, now)
    }

    /// At most `max` messages matching `filter` from `from_sequence` on, in stream order.
    ///
    /// # Errors
    /// `NotFound` for an unknown stream.
    pub fn read_batch(
        &mut self,
        stream: &str,
        filter: &str,
        from_sequence: u64,
        max: usize,
        now: Now,
    ) -> Result<Vec<StoredMessage>, BrokerError> {
        validate_pattern(filter)?;
        let stream = self.stream(stream, now)?;
        let wildcard = filter.split('.').any(|t| t == "*" || t == ">");
        if wildcard {
            return Ok(stream
                .messages
                .range(from_sequence..)
                .filter(|(_, e)| matches(filter, &e.message.subject))
                .take(max)
                .map(|(_, e)| e.message.clone())
                .collect());
        }
        let Some(seqs) = stream.subjects.get(filter) else {
            return Ok(Vec::new());
        };
        let start = seqs.partition_point(|s| *s < from_sequence);
        Ok(seqs
            .iter()
            .skip(start)
            .filter_map(|s| stream.messages.get(s).map(|e| e.message.clone()))
            .take(max)
            .collect())
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

    /// A fresh, unique inbox subject for a request.
    pub fn new_inbox(&mut self) -> String {
        self.next_id += 1;
        format!("_INBOX.{}", self.next_id)
    }

    /// Creates a bucket unless it exists.
    ///
    /// # Errors
    /// `InvalidArgument` for a bad name or a TTL under 100 ms.
    pub fn kv_ensure(&mut self, config: KvConfig) -> Result<(), BrokerError> {
        config.validate()?;
        self.buckets
            .entry(config.bucket.clone())
            .or_insert_with(|| BucketState {
                config,
                revision: 0,
                entries: BTreeMap::new(),
            });
        Ok(())
    }

    fn bucket(&mut self, bucket: &str, now: Now) -> Result<&mut BucketState, BrokerError> {
        let state = self
            .buckets
            .get_mut(bucket)
            .ok_or_else(|| BrokerError::not_found(format!("KV bucket {bucket:?}")))?;
        state.expire(now.monotonic);
        Ok(state)
    }

    /// The live entry for `key`.
    ///
    /// # Errors
    /// `NotFound` for an unknown bucket.
    pub fn kv_get(
        &mut self,
        bucket: &str,
        key: &str,
        now: Now,
    ) -> Result<Option<KvEntry>, BrokerError> {
        validate_kv_key(key)?;
        let b = self.bucket(bucket, now)?;
        Ok(b.entry(key).filter(|e| e.operation == KvOperation::Put))
    }

    /// Every live entry, by key.
    ///
    /// # Errors
    /// `NotFound` for an unknown bucket.
    pub fn kv_entries(&mut self, bucket: &str, now: Now) -> Result<Vec<KvEntry>, BrokerError> {
        let b = self.bucket(bucket, now)?;
        Ok(b.entries
            .keys()
            .filter_map(|k| b.entry(k))
            .filter(|e| e.operation == KvOperation::Put)
            .collect())
    }

    fn kv_write(
        &mut self,
        bucket: &str,
        key: &str,
        value: Bytes,
        operation: KvOperation,
        condition: KvCondition,
        now: Now,
    ) -> Result<u64, BrokerError> {
        validate_kv_key(key)?;
        let max_payload = self.max_payload;
        let b = self.bucket(bucket, now)?;
        let max = b.config.max_value_size.unwrap_or(max_payload);
        if value.len() > max {
            return Err(BrokerError::PayloadTooLarge {
                size: value.len(),
                max,
            });
        }
        let current = b.entries.get(key);
        match condition {
            KvCondition::None => {}
            KvCondition::Absent => {
                if current.is_some_and(|v| v.operation == KvOperation::Put) {
                    return Err(BrokerError::AlreadyExists {
                        what: format!("key {key:?} in bucket {bucket:?}"),
                    });
                }
            }
            KvCondition::Revision(expected) => {
                if current.map(|v| v.revision).unwrap_or(0) != expected {
                    return Err(BrokerError::WrongRevision {
                        key: key.to_owned(),
                        expected,
                    });
                }
            }
        }
        b.revision += 1;
        let revision = b.revision;
        b.entries.insert(
            key.to_owned(),
            KvValue {
                value,
                revision,
                operation,
                written_at: now.monotonic,
            },
        );
        let entry = b.entry(key).expect("just written");
        self.notify_watchers(&entry);
        Ok(revision)
    }

    fn notify_watchers(&mut self, entry: &KvEntry) {
        for w in self.watchers.values() {
            if w.closed_at.is_none()
                && !w.sender.is_closed()
                && w.bucket == entry.bucket
                && matches(&w.pattern, &entry.key)
                && w.sender.try_send(entry.clone()).is_err()
            {
                tracing::warn!(bucket = %w.bucket, "slow KV watcher: entry dropped");
            }
        }
    }

    /// Notes watches that were dropped, forgets the ones whose consumer has expired, and
    /// returns how many consumers `bucket`'s stream holds now.
    fn bucket_consumers(&mut self, bucket: &str, now: Duration) -> usize {
        for w in self.watchers.values_mut() {
            if w.closed_at.is_none() && w.sender.is_closed() {
                w.closed_at = Some(now);
            }
        }
        self.watchers.retain(|_, w| {
            w.closed_at
                .is_none_or(|at| now < at + CONSUMER_INACTIVE_THRESHOLD)
        });
        self.watchers
            .values()
            .filter(|w| w.bucket == bucket)
            .count()
    }

    /// Creates `key` if it has no live value.
    ///
    /// # Errors
    /// See [`Broker::kv_create`].
    pub fn kv_create(
        &mut self,
        bucket: &str,
        key: &str,
        value: Bytes,
        now: Now,
    ) -> Result<u64, BrokerError> {
        self.kv_write(
            bucket,
            key,
            value,
            KvOperation::Put,
            KvCondition::Absent,
            now,
        )
    }

    /// Updates `key` at `revision`.
    ///
    /// # Errors
    /// See [`Broker::kv_update`].
    pub fn kv_update(
        &mut self,
        bucket: &str,
        key: &str,
        value: Bytes,
        revision: u64,
        now: Now,
    ) -> Result<u64, BrokerError> {
        self.kv_write(
            bucket,
            key,
            value,
            KvOperation::Put,
            KvCondition::Revision(revision),
            now,
        )
    }

    /// Writes `key` unconditionally.
    ///
    /// # Errors
    /// See [`Broker::kv_put`].
    pub fn kv_put(
        &mut self,
        bucket: &str,
        key: &str,
        value: Bytes,
        now: Now,
    ) -> Result<u64, BrokerError> {
        self.kv_write(bucket, key, value, KvOperation::Put, KvCondition::None, now)
    }

    /// Deletes `key`.
    ///
    /// # Errors
    /// See [`Broker::kv_delete`].
    pub fn kv_delete(&mut self, bucket: &str, key: &str, now: Now) -> Result<(), BrokerError> {
        self.kv_write(
            bucket,
            key,
            Bytes::new(),
            KvOperation::Delete,
            KvCondition::None,
            now,
        )
        .map(|_| ())
    }

    /// Registers a watcher and queues the current matching entries to it; returns its id.
    ///
    /// # Errors
    /// `NotFound` for an unknown bucket, `InvalidArgument` for a bad pattern.
    pub fn kv_watch(
        &mut self,
        bucket: &str,
        pattern: &str,
        sender: mpsc::Sender<KvEntry>,
        now: Now,
    ) -> Result<u64, BrokerError> {
        validate_pattern(pattern)?;
        self.bucket(bucket, now)?;
        let consumers = self.bucket_consumers(bucket, now.monotonic);
        if consumers >= self.consumers_max {
            return Err(BrokerError::LimitReached {
                limit: BrokerLimit::Consumers,
                reason: format!(
                    "maximum consumers limit reached: stream of KV bucket {bucket:?} holds {consumers}"
                ),
            });
        }
        let b = self.bucket(bucket, now)?;
        let mut current: Vec<KvEntry> = b
            .entries
            .keys()
            .filter(|k| matches(pattern, k))
            .filter_map(|k| b.entry(k))
            .collect();
        current.sort_by_key(|e| e.revision);
        for entry in current {
            if sender.try_send(entry).is_err() {
                tracing::warn!(
                    bucket,
                    "KV watcher queue full while sending current entries"
                );
            }
        }
        self.next_id += 1;
        self.watchers.insert(
            self.next_id,
            Watcher {
                bucket: bucket.to_owned(),
                pattern: pattern.to_owned(),
                sender,
                closed_at: None,
            },
        );
        Ok(self.next_id)
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

enum KvCondition {
    None,
    Absent,
    Revision(u64),
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
    async fn ensure_stream(&self, config: StreamConfig) -> Result<(), BrokerError> {
        self.with_state(|s, _| s.ensure_stream(config))
    }

    async fn append(
        &self,
        subject: &str,
        headers: Headers,
        payload: Bytes,
        options: AppendOptions,
    ) -> Result<AppendAck, BrokerError> {
        self.with_state(|s, now| s.append(subject, headers, payload, options, now))
    }

    async fn last(
        &self,
        stream: &str,
        subject: &str,
        _from: ReadFrom,
    ) -> Result<Option<StoredMessage>, BrokerError> {
        // One linearizable copy: every reader sees every acknowledged message.
        self.with_state(|s, now| s.last(stream, subject, now))
    }

    async fn next(
        &self,
        stream: &str,
        subject: &str,
        from_sequence: u64,
        _from: ReadFrom,
    ) -> Result<Option<StoredMessage>, BrokerError> {
        self.with_state(|s, now| s.next(stream, subject, from_sequence, now))
    }

    async fn read(
        &self,
        stream: &str,
        subject: &str,
        from_sequence: u64,
    ) -> Result<Vec<StoredMessage>, BrokerError> {
        self.with_state(|s, now| s.read(stream, subject, from_sequence, now))
    }

    async fn read_batch(
        &self,
        stream: &str,
        filter: &str,
        from_sequence: u64,
        max: usize,
    ) -> Result<Vec<StoredMessage>, BrokerError> {
        self.with_state(|s, now| s.read_batch(stream, filter, from_sequence, max, now))
    }

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

    async fn subscribe(&self, pattern: &str) -> Result<Subscription, BrokerError> {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE_MAX);
        let id = self.with_state(|s, _| s.subscribe(pattern, tx))?;
        Ok(Subscription::from_source(MemorySubscription {
            messages: ReceiverStream::new(rx),
            broker: Some((self.clone(), id)),
        }))
    }

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
            Ok(_) => match tokio::time::timeout(timeout, rx.recv()).await {
                Ok(Some(reply)) => Ok(reply),
                Ok(None) | Err(_) => Err(BrokerError::Timeout {
                    operation: format!("a reply to {subject:?}"),
                }),
            },
        };
        self.with_state(|s, _| s.unsubscribe(sub_id));
        result
    }

    async fn kv_ensure(&self, config: KvConfig) -> Result<(), BrokerError> {
        self.with_state(|s, _| s.kv_ensure(config))
    }

    async fn kv_get(&self, bucket: &str, key: &str) -> Result<Option<KvEntry>, BrokerError> {
        self.with_state(|s, now| s.kv_get(bucket, key, now))
    }

    async fn kv_create(&self, bucket: &str, key: &str, value: Bytes) -> Result<u64, BrokerError> {
        self.with_state(|s, now| s.kv_create(bucket, key, value, now))
    }

    async fn kv_update(
        &self,
        bucket: &str,
        key: &str,
        value: Bytes,
        revision: u64,
    ) -> Result<u64, BrokerError> {
        self.with_state(|s, now| s.kv_update(bucket, key, value, revision, now))
    }

    async fn kv_put(&self, bucket: &str, key: &str, value: Bytes) -> Result<u64, BrokerError> {
        self.with_state(|s, now| s.kv_put(bucket, key, value, now))
    }

    async fn kv_delete(&self, bucket: &str, key: &str) -> Result<(), BrokerError> {
        self.with_state(|s, now| s.kv_delete(bucket, key, now))
    }

    async fn kv_entries(&self, bucket: &str) -> Result<Vec<KvEntry>, BrokerError> {
        self.with_state(|s, now| s.kv_entries(bucket, now))
    }

    async fn kv_watch(&self, bucket: &str, key_pattern: &str) -> Result<KvWatch, BrokerError> {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE_MAX);
        self.with_state(|s, now| s.kv_watch(bucket, key_pattern, tx, now))?;
        Ok(KvWatch::new(ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
