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
mod convert;
mod errors;
mod inspect;
mod read;
mod streams;
mod violations;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use tracing::Instrument;

pub use connect::{
    MIN_SERVER_VERSION, NatsAuth, NatsConnectError, NatsOptions, NatsTls, server_version_supported,
};
use convert::{
    HEADER_KV_OPERATION, NatsSubscription, core_message, from_header_map, kv_entry, storage,
    stored_message, to_header_map,
};
use errors::{Op, map_error};
pub use inspect::StreamState;
use violations::{Concern, Violations, denied};

use super::subject::{validate_pattern, validate_subject};
use super::wire::{check_user_headers, wire_size};
use super::{
    AppendAck, AppendOptions, Broker, BrokerError, Headers, KvConfig, KvEntry, KvWatch, Message,
    ReadFrom, StoredMessage, StreamConfig, Subscription,
};

use crate::names::JS_API_PREFIX;

/// The NATS JetStream broker. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct NatsBroker {
    client: async_nats::Client,
    js: jetstream::Context,
    /// The JetStream API subject prefix the context uses (`$JS.API`).
    api_prefix: String,
    /// The prefix of the connection's reply subjects (`_INBOX` unless configured).
    inbox_prefix: String,
    request_timeout: Duration,
    buckets: Arc<Mutex<BTreeMap<String, kv::Store>>>,
    /// The server's refusals of this connection's publishes and subscriptions.
    violations: Violations,
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
        let op = Op::KvBucket { bucket };
        let store = self
            .guarded(
                self.stream_concern(&crate::names::kv_stream(bucket)),
                &op,
                async {
                    self.js
                        .get_key_value(bucket)
                        .await
                        .map_err(|e| map_error(&op, &e))
                },
            )
            .await?;
        self.lock_buckets().insert(bucket.to_owned(), store.clone());
        Ok(store)
    }

    /// What an operation that waits for replies uses, before its subjects and streams are named.
    fn concern(&self) -> Concern<'_> {
        Concern {
            api_prefix: &self.api_prefix,
            inbox_prefix: &self.inbox_prefix,
            replies: true,
            ..Concern::default()
        }
    }

    /// The concern of an operation on the JetStream API subjects of `stream`.
    fn stream_concern(&self, stream: &str) -> Concern<'_> {
        Concern {
            streams: vec![stream.to_owned()],
            ..self.concern()
        }
    }

    /// Runs `run`, failing it with [`BrokerError::PermissionDenied`] as soon as the server
    /// refuses a subject in `concern` (instead of letting it time out).
    fn guarded<'a, T>(
        &'a self,
        concern: Concern<'a>,
        op: &'a Op<'a>,
        run: impl Future<Output = Result<T, BrokerError>> + Send + 'a,
    ) -> impl Future<Output = Result<T, BrokerError>> + Send + 'a
    where
        T: Send + 'a,
    {
        let span = tracing::debug_span!(
            "aether.broker",
            op = op.name(),
            target = op.target(),
            outcome = tracing::field::Empty,
        );
        let run = self.violations.guard(concern, op, Box::pin(run));
        let traced = span.clone();
        async move {
            let result = run.await;
            match &result {
                Ok(_) => {
                    traced.record("outcome", "ok");
                }
                // A compare-and-set refused is an answer, not a fault.
                Err(
                    error @ (BrokerError::WrongLastSequence { .. }
                    | BrokerError::AlreadyExists { .. }
                    | BrokerError::WrongRevision { .. }),
                ) => {
                    traced.record("outcome", error.kind());
                }
                Err(error) => {
                    traced.record("outcome", error.kind());
                    tracing::debug!(%error, "broker operation failed");
                    metrics::counter!(
                        crate::telemetry::BROKER_ERRORS,
                        "op" => op.name(),
                        "error" => error.kind()
                    )
                    .increment(1);
                }
            }
            result
        }
        .instrument(span)
    }

    fn lock_buckets(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, kv::Store>> {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Broker for NatsBroker {
    async fn ensure_stream(&self, config: StreamConfig) -> Result<(), BrokerError> {
        config.validate()?;
        let op = Op::EnsureStream {
            stream: &config.name,
        };
        let concern = self.stream_concern(&config.name);
        self.guarded(concern, &op, self.create_stream(&op, config.clone()))
            .await
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
        let concern = Concern {
            publishes: vec![subject.to_owned()],
            stream_names: true,
            ..self.concern()
        };
        self.guarded(
            concern,
            &op,
            self.publish_append(&op, subject, headers, payload, options),
        )
        .await
    }

    async fn last(
        &self,
        stream: &str,
        subject: &str,
        from: ReadFrom,
    ) -> Result<Option<StoredMessage>, BrokerError> {
        validate_subject(subject)?;
        let op = Op::Last { stream };
        self.guarded(
            self.stream_concern(stream),
            &op,
            self.last_in(&op, stream, subject, from),
        )
        .await
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
        let next = self.next_in(&op, stream, subject, from_sequence, from);
        self.guarded(self.stream_concern(stream), &op, next).await
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
        let read = self.read_pages(&op, stream, subject, from_sequence, |m| {
            visit(m);
            true
        });
        self.guarded(self.stream_concern(stream), &op, read).await
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
        let read = self.read_batch_in(&op, stream, filter, from_sequence, max);
        self.guarded(self.stream_concern(stream), &op, read).await
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
        // Fire and forget: a refusal arrives after the message left, so only the next publish
        // to a refused subject can be refused here (and is not sent).
        if self.violations.publish_denied(subject) {
            return Err(BrokerError::PermissionDenied {
                action: super::PermissionAction::Publish,
                subject: subject.to_owned(),
                operation: op.to_string(),
            });
        }
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
        let op = Op::Subscribe { pattern };
        let mut violations = self.violations.subscribe();
        let subscriber = self
            .client
            .subscribe(pattern.to_owned())
            .await
            .map_err(|e| map_error(&op, &e))?;
        // The server answers a refused subscription only with an error on the connection.
        // It handles a connection's messages in order, so the refusal comes before the answer
        // to a request sent after the subscription; the connection reports it on a task of
        // its own, which a second round trip leaves ample time to run.
        for _ in 0..violations::CONFIRM_ROUND_TRIPS {
            let confirm = async {
                self.js
                    .query_account()
                    .await
                    .map(|_| ())
                    .map_err(|e| map_error(&op, &e))
            };
            let concern = Concern {
                account_info: true,
                ..self.concern()
            };
            self.guarded(concern, &op, confirm).await?;
            if let Some(violation) = self
                .violations
                .refused_subscription(&mut violations, pattern)
                .await
            {
                return Err(denied(violation, &op));
            }
        }
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
        let concern = Concern {
            publishes: vec![subject.to_owned()],
            ..self.concern()
        };
        let request = async {
            self.client
                .send_request(subject.to_owned(), request)
                .await
                .map(core_message)
                .map_err(|e| map_error(&op, &e))
        };
        self.guarded(concern, &op, request).await
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
