//! The `Broker` seam: the subset of NATS (JetStream streams, core pub/sub, request/reply, KV) that
//! store, bus and cluster are written against.
//!
//! Three implementations run the same higher layers: [`MemoryBroker`] (in-process, the embedded
//! default), `NatsBroker` (feature `nats`, production) and the simulated broker in `sim/`. The
//! broker conformance suite in `tests/` pins the behaviour they must share; wherever the memory
//! broker and NATS disagree, the memory broker is changed to match NATS.

mod memory;
#[cfg(feature = "nats")]
mod nats;
pub mod subject;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::Stream;

/// The async-nats crate `NatsBroker` is built on, for tooling and benchmarks.
#[cfg(feature = "nats")]
pub use async_nats;
pub(crate) use memory::wire_size;
pub use memory::{BrokerState, MemoryBroker, Now};
#[cfg(feature = "nats")]
pub use nats::{
    MIN_SERVER_VERSION, NatsAuth, NatsBroker, NatsConnectError, NatsOptions, NatsTls,
    server_version_supported,
};

/// Message headers. NATS allows repeated keys; aether only ever sets each key once.
pub type Headers = BTreeMap<String, String>;

/// The largest message a NATS server accepts by default (`max_payload`), headers included.
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

/// JetStream's default duplicate window.
pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Where a stream keeps its messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StorageKind {
    /// On disk (survives a server restart).
    #[default]
    File,
    /// In memory.
    Memory,
}

/// Configuration of a JetStream stream, as far as aether uses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamConfig {
    /// Stream name (no `.`, `*`, `>` or whitespace).
    pub name: String,
    /// Subjects (patterns) the stream captures.
    pub subjects: Vec<String>,
    /// Messages older than this are removed; `None` keeps them forever.
    pub max_age: Option<Duration>,
    /// Keep at most this many messages per subject (oldest removed first); `None` for no limit.
    pub max_messages_per_subject: Option<u64>,
    /// Largest accepted message (payload plus headers); `None` leaves the server's limit.
    pub max_message_size: Option<usize>,
    /// Number of replicas (1 on a single server, 3 on a 3-node cluster).
    pub replicas: usize,
    /// Window in which a repeated message id is recognised as a duplicate.
    pub duplicate_window: Duration,
    /// Storage kind.
    pub storage: StorageKind,
    /// Refuse message deletion through the API.
    pub deny_delete: bool,
    /// Refuse purging through the API.
    pub deny_purge: bool,
}

impl StreamConfig {
    /// A stream called `name` capturing `subjects`, with NATS defaults otherwise.
    pub fn new(name: impl Into<String>, subjects: Vec<String>) -> Self {
        Self {
            name: name.into(),
            subjects,
            max_age: None,
            max_messages_per_subject: None,
            max_message_size: None,
            replicas: 1,
            duplicate_window: DEFAULT_DUPLICATE_WINDOW,
            storage: StorageKind::File,
            deny_delete: true,
            deny_purge: true,
        }
    }
}

impl StreamConfig {
    /// Checks what every broker refuses: a bad name, no subjects, a malformed subject pattern, a
    /// duplicate window longer than the max age.
    ///
    /// # Errors
    /// `InvalidArgument` naming the rule.
    pub fn validate(&self) -> Result<(), BrokerError> {
        subject::validate_name("stream", &self.name)?;
        if self.subjects.is_empty() {
            return Err(BrokerError::invalid(format!(
                "stream {:?} needs at least one subject",
                self.name
            )));
        }
        for s in &self.subjects {
            subject::validate_pattern(s)?;
        }
        if let Some(max_age) = self.max_age
            && self.duplicate_window > max_age
        {
            return Err(BrokerError::invalid(
                "duplicate window must not exceed the stream's max age",
            ));
        }
        Ok(())
    }
}

/// Which copy of a (possibly replicated) stream answers a read.
///
/// On a single server, and in the in-process broker, both are the same. On a replicated NATS
/// stream, any caught-up replica answers a direct get: the cheapest read, but one that may be a
/// moment behind the leader — it never returns what the leader does not hold, and it may miss
/// the newest acknowledged messages. Only the stream leader knows everything acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadFrom {
    /// Any replica (NATS direct get): cheapest; may trail the leader.
    #[default]
    AnyReplica,
    /// The stream leader (NATS `STREAM.MSG.GET`): every acknowledged message.
    Leader,
}

/// Conditions attached to a stream append.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppendOptions {
    /// Reject the append unless the stream sequence of the subject's last message is exactly
    /// this (0: the subject has no messages). `Nats-Expected-Last-Subject-Sequence`.
    pub expected_last_subject_sequence: Option<u64>,
    /// Deduplicate on this id within the stream's duplicate window. `Nats-Msg-Id`.
    pub message_id: Option<String>,
}

/// The server's acknowledgement of a stream append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendAck {
    /// Stream sequence of the message.
    pub sequence: u64,
    /// The message id was seen before within the duplicate window: nothing new was stored and
    /// `sequence` is the sequence of the original.
    pub duplicate: bool,
}

/// A message read back from a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    /// The subject it was published on.
    pub subject: String,
    /// Its stream sequence.
    pub sequence: u64,
    /// Headers as published.
    pub headers: Headers,
    /// Payload as published.
    pub payload: Bytes,
    /// Server time of storage.
    pub time: SystemTime,
}

/// A core (non-persistent) message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The subject it was published on.
    pub subject: String,
    /// Headers.
    pub headers: Headers,
    /// Payload.
    pub payload: Bytes,
    /// Subject to publish a reply to, for requests.
    pub reply: Option<String>,
}

/// Configuration of a KV bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvConfig {
    /// Bucket name (`[A-Za-z0-9_-]+`).
    pub bucket: String,
    /// Entries not written for this long disappear (silently: no watch event). `None`: never.
    /// The server's lower bound is 100 ms.
    pub ttl: Option<Duration>,
    /// Replicas.
    pub replicas: usize,
    /// Largest value accepted; `None` leaves the server's limit.
    pub max_value_size: Option<usize>,
    /// Storage kind.
    pub storage: StorageKind,
}

impl KvConfig {
    /// A bucket called `bucket` without TTL.
    pub fn new(bucket: impl Into<String>) -> Self {
        Self {
            bucket: bucket.into(),
            ttl: None,
            replicas: 1,
            max_value_size: None,
            storage: StorageKind::File,
        }
    }
}

impl KvConfig {
    /// Checks what every broker refuses: a bad bucket name, a TTL under the server's 100 ms.
    ///
    /// # Errors
    /// `InvalidArgument` naming the rule.
    pub fn validate(&self) -> Result<(), BrokerError> {
        subject::validate_name("bucket", &self.bucket)?;
        if let Some(ttl) = self.ttl
            && ttl < Duration::from_millis(100)
        {
            return Err(BrokerError::invalid("KV TTL must be at least 100 ms"));
        }
        Ok(())
    }
}

/// Whether a KV entry is a value or a deletion marker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvOperation {
    /// A value was written.
    Put,
    /// The key was deleted (the entry is a tombstone).
    Delete,
}

/// One KV entry, as read or watched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvEntry {
    /// The bucket.
    pub bucket: String,
    /// The key.
    pub key: String,
    /// The value (empty for a deletion).
    pub value: Bytes,
    /// The bucket-wide revision of this write. Revisions only grow, across all keys of a bucket.
    pub revision: u64,
    /// Put or delete.
    pub operation: KvOperation,
}

/// Errors a broker reports. The kinds mirror NATS so that callers can react to them uniformly;
/// each backend maps its native errors onto these in one place.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    /// An append's expected last subject sequence did not match (NATS 10071).
    #[error(
        "wrong last sequence: expected the subject's last sequence to be {expected}, it is {actual}"
    )]
    WrongLastSequence {
        /// The sequence the append expected.
        expected: u64,
        /// The subject's actual last sequence.
        actual: u64,
    },
    /// A create found the stream, bucket or key already present.
    #[error("{what} already exists")]
    AlreadyExists {
        /// What was already there.
        what: String,
    },
    /// A KV update named a revision that is not the key's latest.
    #[error("wrong revision for key {key:?}: expected {expected}")]
    WrongRevision {
        /// The key.
        key: String,
        /// The revision the update expected.
        expected: u64,
    },
    /// The stream, bucket, key or responder does not exist.
    #[error("{what} not found")]
    NotFound {
        /// What was missing.
        what: String,
    },
    /// A message exceeded the server's or stream's size limit.
    #[error("message of {size} bytes exceeds the limit of {max} bytes")]
    PayloadTooLarge {
        /// Size of the refused message (payload plus headers).
        size: usize,
        /// The limit.
        max: usize,
    },
    /// No answer in time. For an append this is ambiguous: the message may have been stored.
    #[error("timed out waiting for {operation}")]
    Timeout {
        /// The operation that timed out.
        operation: String,
    },
    /// A request found nobody subscribed to its subject.
    #[error("no responders on {subject:?}")]
    NoResponders {
        /// The request subject.
        subject: String,
    },
    /// The server is unreachable or temporarily unable to serve (e.g. no stream leader).
    /// Ambiguous for an append that may already have been sent.
    #[error("broker unavailable: {reason}")]
    Unavailable {
        /// What the backend said.
        reason: String,
    },
    /// A name, subject or configuration the broker refuses.
    #[error("invalid argument: {reason}")]
    InvalidArgument {
        /// Why.
        reason: String,
    },
    /// A server resource limit refused the operation; nothing was changed. Retrying helps only
    /// once the resource is freed ([`BrokerLimit::Requests`] is a request to back off).
    #[error("broker limit reached ({limit}): {reason}")]
    LimitReached {
        /// Which limit.
        limit: BrokerLimit,
        /// What the backend said.
        reason: String,
    },
    /// Anything else the backend reported.
    #[error("broker error: {reason}")]
    Other {
        /// What the backend said.
        reason: String,
    },
}

/// The server resource limits a broker reports as [`BrokerError::LimitReached`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BrokerLimit {
    /// Consumers per stream (NATS default 1,000; a KV watch holds one).
    Consumers,
    /// Streams per account.
    Streams,
    /// Storage (file or memory) of the account or the server.
    Storage,
    /// Other account resource limits.
    Account,
    /// The server asks the client to send fewer requests (HTTP-style 429).
    Requests,
}

impl fmt::Display for BrokerLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BrokerLimit::Consumers => "consumers per stream",
            BrokerLimit::Streams => "streams per account",
            BrokerLimit::Storage => "storage",
            BrokerLimit::Account => "account resources",
            BrokerLimit::Requests => "request rate",
        })
    }
}

impl BrokerError {
    /// Whether an operation that failed this way may nevertheless have taken effect on the server
    /// (the request may have been delivered and only the reply lost). Appends that fail this way
    /// are retried with the same message id.
    pub fn is_ambiguous(&self) -> bool {
        matches!(
            self,
            BrokerError::Timeout { .. } | BrokerError::Unavailable { .. }
        )
    }

    pub(crate) fn invalid(reason: impl Into<String>) -> Self {
        BrokerError::InvalidArgument {
            reason: reason.into(),
        }
    }

    pub(crate) fn not_found(what: impl Into<String>) -> Self {
        BrokerError::NotFound { what: what.into() }
    }
}

/// A source of core messages behind a [`Subscription`]: a stream that can also be drained.
pub trait SubscriptionSource: Stream<Item = Message> + Send + Unpin + 'static {
    /// Stops new deliveries: messages already on their way to this subscriber are still
    /// yielded, then the stream ends.
    fn drain(&mut self) -> futures::future::BoxFuture<'_, ()>;
}

/// A plain stream as a subscription source whose drain stops nothing (the stream ends when its
/// producer ends it). For wrappers and tests.
struct Plain(Pin<Box<dyn Stream<Item = Message> + Send>>);

impl Stream for Plain {
    type Item = Message;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.0.as_mut().poll_next(cx)
    }
}

impl SubscriptionSource for Plain {
    fn drain(&mut self) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// A live subscription: a stream of core messages. Dropping it unsubscribes.
pub struct Subscription {
    inner: Box<dyn SubscriptionSource>,
}

impl Subscription {
    /// Wraps any stream of messages (its [`drain`](Self::drain) does nothing).
    pub fn new(inner: impl Stream<Item = Message> + Send + 'static) -> Self {
        Self::from_source(Plain(Box::pin(inner)))
    }

    /// Wraps a source that can be drained.
    pub fn from_source(source: impl SubscriptionSource) -> Self {
        Self {
            inner: Box::new(source),
        }
    }

    /// The next message; `None` once the broker closed the subscription.
    ///
    /// # Cancel safety
    /// Cancel safe: a message is only taken when the future completes.
    pub async fn next(&mut self) -> Option<Message> {
        futures::StreamExt::next(&mut self.inner).await
    }

    /// Unsubscribes without losing what is already on its way: no new message is delivered to
    /// this subscription, the ones in flight still are, and then [`next`](Self::next) returns
    /// `None`. Used to leave without dropping requests a node has already been sent.
    pub async fn drain(&mut self) {
        self.inner.drain().await;
    }
}

impl Stream for Subscription {
    type Item = Message;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        Pin::new(&mut self.inner).poll_next(cx)
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Subscription")
    }
}

/// A live KV watch: the current entries matching the pattern, then every later write. Dropping it
/// stops the watch.
pub struct KvWatch {
    inner: Pin<Box<dyn Stream<Item = KvEntry> + Send>>,
}

impl KvWatch {
    /// Wraps any stream of entries.
    pub fn new(inner: impl Stream<Item = KvEntry> + Send + 'static) -> Self {
        Self {
            inner: Box::pin(inner),
        }
    }

    /// The next entry; `None` once the broker closed the watch.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn next(&mut self) -> Option<KvEntry> {
        futures::StreamExt::next(&mut self.inner).await
    }
}

impl Stream for KvWatch {
    type Item = KvEntry;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<KvEntry>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl fmt::Debug for KvWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KvWatch")
    }
}

/// The operations aether needs from NATS. See the module documentation.
///
/// Every method is a single broker operation; none of them retries on its own — retry policy
/// (and the handling of ambiguous failures) belongs to the caller, which knows whether an
/// operation is idempotent.
pub trait Broker: Clone + Send + Sync + 'static {
    /// Creates the stream if no stream of that name exists; an existing stream is left as it is.
    ///
    /// # Errors
    /// `InvalidArgument` for a bad name or subjects overlapping another stream's.
    fn ensure_stream(
        &self,
        config: StreamConfig,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// Stores one message on `subject` in the stream that captures it.
    ///
    /// # Errors
    /// `WrongLastSequence` when `options.expected_last_subject_sequence` does not match;
    /// `PayloadTooLarge`; `NotFound` when no stream captures the subject; `Timeout` or
    /// `Unavailable` when the outcome is unknown.
    fn append(
        &self,
        subject: &str,
        headers: Headers,
        payload: Bytes,
        options: AppendOptions,
    ) -> impl Future<Output = Result<AppendAck, BrokerError>> + Send;

    /// The last message stored on `subject` in `stream`, if any, as `from` knows it.
    ///
    /// # Errors
    /// `NotFound` for an unknown stream.
    fn last(
        &self,
        stream: &str,
        subject: &str,
        from: ReadFrom,
    ) -> impl Future<Output = Result<Option<StoredMessage>, BrokerError>> + Send;

    /// The first message on `subject` in `stream` with sequence `>= from_sequence`, if any, as
    /// `from` knows it. One round trip, whatever the subject's length.
    ///
    /// # Errors
    /// `NotFound` for an unknown stream.
    fn next(
        &self,
        stream: &str,
        subject: &str,
        from_sequence: u64,
        from: ReadFrom,
    ) -> impl Future<Output = Result<Option<StoredMessage>, BrokerError>> + Send;

    /// Every message of `stream` on `subject` — a subject, or a pattern with `*`/`>` — with
    /// sequence `>= from_sequence`, in stream order.
    ///
    /// Reads may be served by any replica ([`ReadFrom::AnyReplica`]): what they return is the
    /// subject's history in order without gaps, but possibly without the newest messages. Reads
    /// leave nothing behind on the server (no consumer outlives the call).
    fn read(
        &self,
        stream: &str,
        subject: &str,
        from_sequence: u64,
    ) -> impl Future<Output = Result<Vec<StoredMessage>, BrokerError>> + Send;

    /// Like [`Broker::read`], but hands each message to `visit` as it arrives instead of
    /// collecting them, so the caller's work (decoding) overlaps the transfer. Backends that
    /// cannot stream use this default, which reads everything first.
    fn read_each<F: FnMut(StoredMessage) + Send>(
        &self,
        stream: &str,
        subject: &str,
        from_sequence: u64,
        mut visit: F,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send {
        async move {
            for message in self.read(stream, subject, from_sequence).await? {
                visit(message);
            }
            Ok(())
        }
    }

    /// At most `max` messages of `stream` matching `filter` (a subject or a pattern) with
    /// sequence `>= from_sequence`, in stream order: one page of a long read. The default reads
    /// everything and keeps the first `max`; backends override it to stop early.
    fn read_batch(
        &self,
        stream: &str,
        filter: &str,
        from_sequence: u64,
        max: usize,
    ) -> impl Future<Output = Result<Vec<StoredMessage>, BrokerError>> + Send {
        async move {
            let mut messages = self.read(stream, filter, from_sequence).await?;
            messages.truncate(max);
            Ok(messages)
        }
    }

    /// Publishes a core message (fire and forget, at most once).
    fn publish(
        &self,
        subject: &str,
        headers: Headers,
        payload: Bytes,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// Subscribes to a subject pattern (`*` matches one token, `>` the rest).
    fn subscribe(
        &self,
        pattern: &str,
    ) -> impl Future<Output = Result<Subscription, BrokerError>> + Send;

    /// Sends a request and waits up to `timeout` for the first reply.
    ///
    /// # Errors
    /// `NoResponders` when nobody listens, `Timeout` when nobody answers in time.
    fn request(
        &self,
        subject: &str,
        headers: Headers,
        payload: Bytes,
        timeout: Duration,
    ) -> impl Future<Output = Result<Message, BrokerError>> + Send;

    /// Creates the KV bucket if it does not exist.
    fn kv_ensure(&self, config: KvConfig) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// The latest entry for `key`; `None` when absent, deleted or expired.
    fn kv_get(
        &self,
        bucket: &str,
        key: &str,
    ) -> impl Future<Output = Result<Option<KvEntry>, BrokerError>> + Send;

    /// Writes `key` only if it has no live value; returns the new revision.
    ///
    /// # Errors
    /// `AlreadyExists` when the key has a live value.
    fn kv_create(
        &self,
        bucket: &str,
        key: &str,
        value: Bytes,
    ) -> impl Future<Output = Result<u64, BrokerError>> + Send;

    /// Writes `key` only if its latest revision is `revision`; returns the new revision.
    ///
    /// # Errors
    /// `WrongRevision` when another write came first.
    fn kv_update(
        &self,
        bucket: &str,
        key: &str,
        value: Bytes,
        revision: u64,
    ) -> impl Future<Output = Result<u64, BrokerError>> + Send;

    /// Writes `key` unconditionally; returns the new revision.
    fn kv_put(
        &self,
        bucket: &str,
        key: &str,
        value: Bytes,
    ) -> impl Future<Output = Result<u64, BrokerError>> + Send;

    /// Deletes `key` (writes a tombstone).
    fn kv_delete(
        &self,
        bucket: &str,
        key: &str,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// Every live (not deleted, not expired) entry of the bucket, ordered by key.
    fn kv_entries(
        &self,
        bucket: &str,
    ) -> impl Future<Output = Result<Vec<KvEntry>, BrokerError>> + Send;

    /// Watches keys matching `key_pattern` (`>` for all): first the current entries, then every
    /// later put and delete. Expiry by TTL produces no event.
    fn kv_watch(
        &self,
        bucket: &str,
        key_pattern: &str,
    ) -> impl Future<Output = Result<KvWatch, BrokerError>> + Send;
}
