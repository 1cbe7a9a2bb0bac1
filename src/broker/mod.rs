//! The `Broker` seam: the subset of NATS (JetStream streams, core pub/sub, request/reply, KV) that
//! store, bus and cluster are written against.
//!
//! Three implementations run the same higher layers: [`MemoryBroker`] (in-process, the embedded
//! default), `NatsBroker` (feature `nats`, production) and the simulated broker in `sim/`. The
//! broker conformance suite in `tests/` pins the behaviour they must share; wherever the memory
//! broker and NATS disagree, the memory broker is changed to match NATS.

mod config;
mod error;
mod memory;
mod message;
#[cfg(feature = "nats")]
mod nats;
pub mod subject;
mod subscription;
pub mod wire;

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;

/// The async-nats crate `NatsBroker` is built on, for tooling and benchmarks.
#[cfg(feature = "nats")]
pub use async_nats;
pub use config::{KvConfig, StorageKind, StreamConfig};
pub use error::{BrokerError, BrokerLimit, PermissionAction};
/// The broker state machine behind [`MemoryBroker`], for the simulation's broker host.
#[cfg(feature = "sim")]
pub use memory::{BrokerState, BrokerUsage, Now, StreamUsage, SubjectView};
pub use memory::{CONSUMER_INACTIVE_THRESHOLD, CONSUMERS_PER_STREAM_MAX, MemoryBroker};
pub use message::{
    AppendAck, AppendOptions, Headers, KvEntry, KvOperation, Message, ReadFrom, StoredMessage,
};
#[cfg(feature = "nats")]
pub use nats::{
    MIN_SERVER_VERSION, NatsAuth, NatsBroker, NatsConnectError, NatsOptions, NatsTls, StreamState,
    server_version_supported,
};
pub use subscription::{KvWatch, Subscription, SubscriptionSource};
pub use wire::{DEFAULT_DUPLICATE_WINDOW, DEFAULT_MAX_PAYLOAD};

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
