//! Conversions between async-nats types and the broker's own, and the core subscription.

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv, stream};
use std::time::SystemTime;

use crate::broker::wire::is_reserved_header;
use crate::broker::{
    Headers, KvEntry, KvOperation, Message, StorageKind, StoredMessage, SubscriptionSource,
};

pub(super) fn to_header_map(headers: &Headers) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.insert(k.as_str(), v.as_str());
    }
    map
}

/// Headers as the publisher set them: the broker's own `Nats-*` headers are dropped.
pub(super) fn from_header_map(map: Option<&HeaderMap>) -> Headers {
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

pub(super) fn core_message(message: async_nats::Message) -> Message {
    Message {
        subject: message.subject.to_string(),
        headers: from_header_map(message.headers.as_ref()),
        payload: message.payload,
        reply: message.reply.map(|r| r.to_string()),
    }
}

pub(super) fn stored_message(message: &jetstream::Message) -> Option<StoredMessage> {
    let info = message.info().ok()?;
    Some(StoredMessage {
        subject: message.subject.to_string(),
        sequence: info.stream_sequence,
        headers: from_header_map(message.headers.as_ref()),
        payload: message.payload.clone(),
        time: SystemTime::from(info.published),
    })
}

pub(super) fn stream_message(m: jetstream::message::StreamMessage) -> StoredMessage {
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
pub(super) fn is_unanswered(error: &stream::DirectGetError) -> bool {
    matches!(error.kind(), stream::DirectGetErrorKind::ErrorResponse(status, _) if status.as_u16() == 503)
}

/// The header a KV bucket's stream marks deletions with (`DEL`, `PURGE`).
pub(super) const HEADER_KV_OPERATION: &str = "KV-Operation";

/// A core subscription; draining is async-nats' drain (UNSUB, then what is in flight).
pub(super) struct NatsSubscription(pub(super) async_nats::Subscriber);

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

pub(super) fn storage(kind: StorageKind) -> stream::StorageType {
    match kind {
        StorageKind::File => stream::StorageType::File,
        StorageKind::Memory => stream::StorageType::Memory,
    }
}

pub(super) fn kv_operation(op: kv::Operation) -> KvOperation {
    match op {
        kv::Operation::Put => KvOperation::Put,
        kv::Operation::Delete | kv::Operation::Purge => KvOperation::Delete,
    }
}

pub(super) fn kv_entry(entry: kv::Entry) -> KvEntry {
    KvEntry {
        bucket: entry.bucket,
        key: entry.key,
        value: entry.value,
        revision: entry.revision,
        operation: kv_operation(entry.operation),
    }
}
