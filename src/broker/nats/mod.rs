//! The production broker: NATS JetStream through async-nats (feature `nats`).
//!
//! Every [`Broker`] operation is one NATS operation:
//!
//! | operation | NATS |
//! |---|---|
//! | `ensure_stream` | stream create with allow-direct, deny-delete, deny-purge, duplicate window, max age, replicas |
//! | `append` | JetStream publish with `Nats-Expected-Last-Subject-Sequence` and `Nats-Msg-Id` |
//! | `last`, `next` | [`ReadFrom::AnyReplica`]: direct get (any replica answers; may trail the leader by a moment); [`ReadFrom::Leader`]: `STREAM.MSG.GET` |
//! | `read`, `read_each`, `read_batch`, `kv_entries` | batched direct gets (server 2.11+): pages of up to 512 messages, no consumer; a read with thousands of messages left after its first page continues with an ordered consumer that is deleted when the read ends |
//! | `publish` / `subscribe` / `request` | core NATS |
//! | `kv_*` | a KV bucket (history 1; the bucket's max age is the TTL) |
//!
//! Tools also get two read-only inherent methods, [`NatsBroker::stream_state`] and
//! [`NatsBroker::subjects`] (stream info, with subject details), which the trait does not need.
//!
//! NATS errors are mapped onto [`BrokerError`] in exactly one place, [`map_error`].
//!
//! aether needs nats-server **2.11 or newer**: 2.9 and 2.10 let several concurrent appends with the
//! same expected sequence win on a replicated stream (nats-server#4320), and async-nats KV does not
//! work against them. [`NatsBroker::connect`] checks the version and refuses older servers.

mod buckets;
mod connect;
mod errors;
mod inspect;
mod read;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;

pub use connect::{
    MIN_SERVER_VERSION, NatsAuth, NatsConnectError, NatsOptions, NatsTls, server_version_supported,
};
use errors::{Op, map_error};
pub use inspect::StreamState;
use read::DIRECT_BATCH_MAX;

use super::subject::{validate_pattern, validate_subject};
use super::wire::{check_user_headers, is_reserved_header, wire_size};
use super::{
    AppendAck, AppendOptions, Broker, BrokerError, Headers, KvConfig, KvEntry, KvOperation,
    KvWatch, Message, ReadFrom, StorageKind, StoredMessage, StreamConfig, Subscription,
    SubscriptionSource,
};

/// The JetStream API prefix of the default domain.
const JS_API_PREFIX: &str = "$JS.API";

/// The NATS JetStream broker. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct NatsBroker {
    client: async_nats::Client,
    js: jetstream::Context,
    /// The JetStream API subject prefix the context uses (`$JS.API`).
    api_prefix: String,
    request_timeout: Duration,
    buckets: Arc<Mutex<BTreeMap<String, kv::Store>>>,
}

impl fmt::Debug for NatsBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsBroker")
            .field("server", &self.client.server_info().server_name)
            .finish()
    }
}

impl NatsBroker {
    /// The underlying async-nats client (for tooling and benchmarks).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The JetStream context this broker uses.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// The version the connected server reported.
    pub fn server_version(&self) -> String {
        self.client.server_info().version
    }

    async fn bucket(&self, bucket: &str) -> Result<kv::Store, BrokerError> {
        if let Some(store) = self.lock_buckets().get(bucket) {
            return Ok(store.clone());
        }
        let store = self
            .js
            .get_key_value(bucket)
            .await
            .map_err(|e| map_error(&Op::KvBucket { bucket }, &e))?;
        self.lock_buckets().insert(bucket.to_owned(), store.clone());
        Ok(store)
    }

    fn lock_buckets(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, kv::Store>> {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn to_header_map(headers: &Headers) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.insert(k.as_str(), v.as_str());
    }
    map
}

/// Headers as the publisher set them: the broker's own `Nats-*` headers are dropped.
fn from_header_map(map: Option<&HeaderMap>) -> Headers {
    let mut headers = Headers::new();
    if let Some(map) = map {
        for (name, values) in map.iter() {
            let name: &str = name.as_ref();
            if is_reserved_header(name) {
                continue;
            }
            if let Some(value) = values.last() {
                headers.insert(name.to_owned(), value.as_str().to_owned());
            }
        }
    }
    headers
}

fn core_message(message: async_nats::Message) -> Message {
    Message {
        subject: message.subject.to_string(),
        headers: from_header_map(message.headers.as_ref()),
        payload: message.payload,
        reply: message.reply.map(|r| r.to_string()),
    }
}

fn stored_message(message: &jetstream::Message) -> Option<StoredMessage> {
    let info = message.info().ok()?;
    Some(StoredMessage {
        subject: message.subject.to_string(),
        sequence: info.stream_sequence,
        headers: from_header_map(message.headers.as_ref()),
        payload: message.payload.clone(),
        time: SystemTime::from(info.published),
    })
}

fn stream_message(m: jetstream::message::StreamMessage) -> StoredMessage {
    StoredMessage {
        subject: m.subject.to_string(),
        sequence: m.sequence,
        headers: from_header_map(Some(&m.headers)),
        payload: m.payload,
        time: SystemTime::from(m.time),
    }
}

/// Whether a direct get found nobody to answer it (status 503): the stream is missing, or no
/// replica serves direct gets right now; the leader read that follows tells which.
fn is_unanswered(error: &stream::DirectGetError) -> bool {
    matches!(error.kind(), stream::DirectGetErrorKind::ErrorResponse(status, _) if status.as_u16() == 503)
}

/// The header a KV bucket's stream marks deletions with (`DEL`, `PURGE`).
const HEADER_KV_OPERATION: &str = "KV-Operation";

/// A core subscription; draining is async-nats' drain (UNSUB, then what is in flight).
struct NatsSubscription(async_nats::Subscriber);

impl futures::Stream for NatsSubscription {
    type Item = Message;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Message>> {
        std::pin::Pin::new(&mut self.0)
            .poll_next(cx)
            .map(|m| m.map(core_message))
    }
}

impl SubscriptionSource for NatsSubscription {
    fn drain(&mut self) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Err(error) = self.0.drain().await {
                tracing::debug!(%error, "drain of a subscription failed");
            }
        })
    }
}

fn storage(kind: StorageKind) -> stream::StorageType {
    match kind {
        StorageKind::File => stream::StorageType::File,
        StorageKind::Memory => stream::StorageType::Memory,
    }
}

fn kv_operation(op: kv::Operation) -> KvOperation {
    match op {
        kv::Operation::Put => KvOperation::Put,
        kv::Operation::Delete | kv::Operation::Purge => KvOperation::Delete,
    }
}

fn kv_entry(entry: kv::Entry) -> KvEntry {
    KvEntry {
        bucket: entry.bucket,
        key: entry.key,
        value: entry.value,
        revision: entry.revision,
        operation: kv_operation(entry.operation),
    }
}

impl Broker for NatsBroker {
    async fn ensure_stream(&self, config: StreamConfig) -> Result<(), BrokerError> {
        config.validate()?;
        let op = Op::EnsureStream {
            stream: &config.name,
        };
        match self.js.get_stream_no_info(&config.name).await {
            Ok(handle) => match handle.get_info().await {
                Ok(_) => return Ok(()),
                Err(e) => {
                    let mapped = map_error(&op, &e);
                    if !matches!(mapped, BrokerError::NotFound { .. }) {
                        return Err(mapped);
                    }
                }
            },
            Err(e) => return Err(map_error(&op, &e)),
        }
        let native = stream::Config {
            name: config.name.clone(),
            subjects: config.subjects.clone(),
            max_age: config.max_age.unwrap_or(Duration::ZERO),
            max_messages_per_subject: config
                .max_messages_per_subject
                .map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX)),
            max_message_size: config
                .max_message_size
                .map_or(-1, |n| i32::try_from(n).unwrap_or(i32::MAX)),
            num_replicas: config.replicas.max(1),
            duplicate_window: config.duplicate_window,
            storage: storage(config.storage),
            deny_delete: config.deny_delete,
            deny_purge: config.deny_purge,
            allow_direct: true,
            ..Default::default()
        };
        match self.js.create_stream(native).await {
            Ok(_) => Ok(()),
            Err(e) => match map_error(&op, &e) {
                // Created concurrently by someone else: leave it as it is.
                BrokerError::AlreadyExists { .. } => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn append(
        &self,
        subject: &str,
        headers: Headers,
        payload: Bytes,
        options: AppendOptions,
    ) -> Result<AppendAck, BrokerError> {
        validate_subject(subject)?;
        check_user_headers(&headers)?;
        let size = wire_size(&headers, &payload, &options);
        let max = self.client.server_info().max_payload;
        if max > 0 && size > max {
            return Err(BrokerError::PayloadTooLarge { size, max });
        }
        let op = Op::Append {
            subject,
            expected: options.expected_last_subject_sequence,
            size,
        };
        let mut publish = jetstream::message::PublishMessage::build()
            .payload(payload)
            .headers(to_header_map(&headers));
        if let Some(id) = &options.message_id {
            publish = publish.message_id(id);
        }
        if let Some(expected) = options.expected_last_subject_sequence {
            // Also for 0 ("the subject must be empty"): async-nats sends the header as given.
            publish = publish.expected_last_subject_sequence(expected);
        }
        let result = match self.js.send_publish(subject.to_owned(), publish).await {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match result {
            Ok(ack) => Ok(AppendAck {
                sequence: ack.sequence,
                duplicate: ack.duplicate,
            }),
            Err(e) => match map_error(&op, &e) {
                BrokerError::NotFound { what } => {
                    // No responders: either no stream captures the subject (definite), or the
                    // stream exists and is between leaders (transient; nothing was stored).
                    // Only the server's definite "no stream captures it" is NotFound; a lookup
                    // that itself fails (the meta leader is moving too) leaves it transient.
                    use jetstream::context::GetStreamByNameErrorKind as K;
                    match self.js.stream_by_subject(subject.to_owned()).await {
                        Err(e) if e.kind() == K::NotFound => Err(BrokerError::NotFound { what }),
                        Ok(_) => Err(BrokerError::Unavailable {
                            reason: format!("stream for subject {subject:?} has no leader"),
                        }),
                        Err(e) => Err(BrokerError::Unavailable {
                            reason: format!(
                                "no answer for subject {subject:?}, and the stream lookup failed: {e}"
                            ),
                        }),
                    }
                }
                BrokerError::PayloadTooLarge { size, max: 0 } => {
                    let max = match self.js.stream_by_subject(subject.to_owned()).await {
                        Ok(name) => match self.js.get_stream(name).await {
                            Ok(s) => usize::try_from(s.cached_info().config.max_message_size)
                                .unwrap_or(0),
                            Err(_) => 0,
                        },
                        Err(_) => 0,
                    };
                    Err(BrokerError::PayloadTooLarge { size, max })
                }
                other => Err(other),
            },
        }
    }

    async fn last(
        &self,
        stream: &str,
        subject: &str,
        from: ReadFrom,
    ) -> Result<Option<StoredMessage>, BrokerError> {
        validate_subject(subject)?;
        let op = Op::Last { stream };
        let handle = self
            .js
            .get_stream_no_info(stream)
            .await
            .map_err(|e| map_error(&op, &e))?;
        if from == ReadFrom::AnyReplica {
            match handle.direct_get_last_for_subject(subject).await {
                Ok(m) => return Ok(Some(stream_message(m))),
                Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => return Ok(None),
                // No replica serves direct gets right now: ask the leader.
                Err(e) if is_unanswered(&e) => {}
                Err(e) => return Err(map_error(&op, &e)),
            }
        }
        match handle.get_last_raw_message_by_subject(subject).await {
            Ok(m) => Ok(Some(stream_message(m))),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(map_error(&op, &e)),
        }
    }

    async fn next(
        &self,
        stream: &str,
        subject: &str,
        from_sequence: u64,
        from: ReadFrom,
    ) -> Result<Option<StoredMessage>, BrokerError> {
        validate_subject(subject)?;
        let op = Op::Last { stream };
        let handle = self
            .js
            .get_stream_no_info(stream)
            .await
            .map_err(|e| map_error(&op, &e))?;
        let from_sequence = from_sequence.max(1);
        if from == ReadFrom::AnyReplica {
            match handle
                .direct_get_next_for_subject(subject, Some(from_sequence))
                .await
            {
                Ok(m) => return Ok(Some(stream_message(m))),
                Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => return Ok(None),
                Err(e) if is_unanswered(&e) => {}
                Err(e) => return Err(map_error(&op, &e)),
            }
        }
        match handle
            .get_first_raw_message_by_subject(subject, from_sequence)
            .await
        {
            Ok(m) => Ok(Some(stream_message(m))),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(map_error(&op, &e)),
        }
    }

    async fn read(
        &self,
        stream: &str,
        subject: &str,
        from_sequence: u64,
    ) -> Result<Vec<StoredMessage>, BrokerError> {
        let mut out = Vec::new();
        self.read_each(stream, subject, from_sequence, |m| out.push(m))
            .await?;
        Ok(out)
    }

    async fn read_each<F: FnMut(StoredMessage) + Send>(
        &self,
        stream: &str,
        subject: &str,
        from_sequence: u64,
        mut visit: F,
    ) -> Result<(), BrokerError> {
        validate_pattern(subject)?;
        let op = Op::Read { stream };
        self.read_pages(&op, stream, subject, from_sequence, |m| {
            visit(m);
            true
        })
        .await
    }

    async fn read_batch(
        &self,
        stream: &str,
        filter: &str,
        from_sequence: u64,
        max: usize,
    ) -> Result<Vec<StoredMessage>, BrokerError> {
        validate_pattern(filter)?;
        let op = Op::Read { stream };
        let mut out = Vec::new();
        let mut from = from_sequence.max(1);
        while out.len() < max {
            let page = self
                .direct_page(
                    &op,
                    stream,
                    filter,
                    from,
                    (max - out.len()).min(DIRECT_BATCH_MAX),
                    &mut |m| {
                        out.push(m);
                        true
                    },
                )
                .await?;
            if page.unanswered {
                let wanted = max - out.len();
                let mut taken = 0;
                self.consume(&op, stream, filter, from, |m| {
                    out.push(m);
                    taken += 1;
                    taken < wanted
                })
                .await?;
                break;
            }
            match page.last_sequence {
                Some(last) if page.pending > 0 => from = last + 1,
                _ => break,
            }
        }
        Ok(out)
    }

    async fn publish(
        &self,
        subject: &str,
        headers: Headers,
        payload: Bytes,
    ) -> Result<(), BrokerError> {
        validate_subject(subject)?;
        let size = wire_size(&headers, &payload, &AppendOptions::default());
        let max = self.client.server_info().max_payload;
        if max > 0 && size > max {
            return Err(BrokerError::PayloadTooLarge { size, max });
        }
        let op = Op::Publish { subject, size };
        let result = if headers.is_empty() {
            self.client.publish(subject.to_owned(), payload).await
        } else {
            self.client
                .publish_with_headers(subject.to_owned(), to_header_map(&headers), payload)
                .await
        };
        result.map_err(|e| map_error(&op, &e))
    }

    async fn subscribe(&self, pattern: &str) -> Result<Subscription, BrokerError> {
        validate_pattern(pattern)?;
        let subscriber = self
            .client
            .subscribe(pattern.to_owned())
            .await
            .map_err(|e| map_error(&Op::Subscribe, &e))?;
        Ok(Subscription::from_source(NatsSubscription(subscriber)))
    }

    async fn request(
        &self,
        subject: &str,
        headers: Headers,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Message, BrokerError> {
        validate_subject(subject)?;
        let size = wire_size(&headers, &payload, &AppendOptions::default());
        let max = self.client.server_info().max_payload;
        if max > 0 && size > max {
            return Err(BrokerError::PayloadTooLarge { size, max });
        }
        let op = Op::Request { subject, size };
        let mut request = async_nats::Request::new()
            .payload(payload)
            .timeout(Some(timeout));
        if !headers.is_empty() {
            request = request.headers(to_header_map(&headers));
        }
        self.client
            .send_request(subject.to_owned(), request)
            .await
            .map(core_message)
            .map_err(|e| map_error(&op, &e))
    }

    async fn kv_ensure(&self, config: KvConfig) -> Result<(), BrokerError> {
        self.ensure_bucket(config).await
    }

    async fn kv_get(&self, bucket: &str, key: &str) -> Result<Option<KvEntry>, BrokerError> {
        self.get_entry(bucket, key).await
    }

    async fn kv_create(&self, bucket: &str, key: &str, value: Bytes) -> Result<u64, BrokerError> {
        self.create_entry(bucket, key, value).await
    }

    async fn kv_update(
        &self,
        bucket: &str,
        key: &str,
        value: Bytes,
        revision: u64,
    ) -> Result<u64, BrokerError> {
        self.update_entry(bucket, key, value, revision).await
    }

    async fn kv_put(&self, bucket: &str, key: &str, value: Bytes) -> Result<u64, BrokerError> {
        self.put_entry(bucket, key, value).await
    }

    async fn kv_delete(&self, bucket: &str, key: &str) -> Result<(), BrokerError> {
        self.delete_entry(bucket, key).await
    }

    async fn kv_entries(&self, bucket: &str) -> Result<Vec<KvEntry>, BrokerError> {
        self.entries(bucket).await
    }

    async fn kv_watch(&self, bucket: &str, key_pattern: &str) -> Result<KvWatch, BrokerError> {
        self.watch(bucket, key_pattern).await
    }
}
