//! NATS failures mapped onto [`BrokerError`] — here, and nowhere else.

use std::fmt;

use async_nats::jetstream::{self, kv, stream};

use crate::broker::{BrokerError, BrokerLimit};

/// The broker operation an error happened in; gives the error mapping its context.
#[derive(Debug)]
pub(super) enum Op<'a> {
    EnsureStream {
        stream: &'a str,
    },
    Append {
        subject: &'a str,
        expected: Option<u64>,
        size: usize,
    },
    Last {
        stream: &'a str,
    },
    Read {
        stream: &'a str,
    },
    Publish {
        subject: &'a str,
        size: usize,
    },
    Subscribe {
        pattern: &'a str,
    },
    Request {
        subject: &'a str,
        size: usize,
    },
    KvBucket {
        bucket: &'a str,
    },
    KvCreate {
        key: &'a str,
    },
    KvUpdate {
        key: &'a str,
        revision: u64,
    },
    KvWrite {
        key: &'a str,
        size: usize,
    },
    KvRead {
        bucket: &'a str,
    },
}

impl Op<'_> {
    /// The operation's name: the `op` field of its span and the `op` label of
    /// [`BROKER_ERRORS`](crate::telemetry::BROKER_ERRORS).
    pub(super) fn name(&self) -> &'static str {
        match self {
            Op::EnsureStream { .. } => "ensure_stream",
            Op::Append { .. } => "append",
            Op::Last { .. } => "last",
            Op::Read { .. } => "read",
            Op::Publish { .. } => "publish",
            Op::Subscribe { .. } => "subscribe",
            Op::Request { .. } => "request",
            Op::KvBucket { .. } => "kv_bucket",
            Op::KvCreate { .. } => "kv_create",
            Op::KvUpdate { .. } => "kv_update",
            Op::KvWrite { .. } => "kv_write",
            Op::KvRead { .. } => "kv_read",
        }
    }

    /// The stream, subject, bucket or key it works on.
    pub(super) fn target(&self) -> &str {
        match self {
            Op::EnsureStream { stream } | Op::Last { stream } | Op::Read { stream } => stream,
            Op::Append { subject, .. }
            | Op::Publish { subject, .. }
            | Op::Request { subject, .. } => subject,
            Op::Subscribe { pattern } => pattern,
            Op::KvBucket { bucket } | Op::KvRead { bucket } => bucket,
            Op::KvCreate { key } | Op::KvUpdate { key, .. } | Op::KvWrite { key, .. } => key,
        }
    }
}

impl fmt::Display for Op<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::EnsureStream { stream } => write!(f, "creating stream {stream}"),
            Op::Append { subject, .. } => {
                write!(f, "an append to {subject}")
            }
            Op::Last { stream } => write!(f, "the last message of a subject in {stream}"),
            Op::Read { stream } => write!(f, "reading {stream}"),
            Op::Publish { subject, .. } => write!(f, "publishing on {subject}"),
            Op::Subscribe { pattern } => write!(f, "subscribing to {pattern}"),
            Op::Request { subject, .. } => write!(f, "a reply to {subject}"),
            Op::KvBucket { bucket } => write!(f, "KV bucket {bucket}"),
            Op::KvCreate { key } | Op::KvUpdate { key, .. } | Op::KvWrite { key, .. } => {
                write!(f, "writing KV key {key}")
            }
            Op::KvRead { bucket } => write!(f, "reading KV bucket {bucket}"),
        }
    }
}

/// JetStream error codes aether reacts to.
mod code {
    pub const WRONG_LAST_SEQUENCE: u64 = 10071;
    pub const STREAM_NOT_FOUND: u64 = 10059;
    pub const NO_MESSAGE_FOUND: u64 = 10037;
    pub const STREAM_NAME_IN_USE: u64 = 10058;
    pub const SUBJECT_OVERLAP: u64 = 10065;
    pub const MESSAGE_TOO_LARGE: u64 = 10054;
    pub const BAD_REQUEST: u64 = 10003;
    pub const INVALID_CONFIG: u64 = 10052;
    pub const CLUSTER_NOT_AVAILABLE: u64 = 10008;
    pub const CLUSTER_NOT_LEADER: u64 = 10009;
    pub const INSUFFICIENT_RESOURCES: u64 = 10023;
    pub const NO_SUITABLE_PEERS: u64 = 10005;
    pub const DUPLICATE_IN_PROCESS: u64 = 10158;
    pub const TEMPORARILY_UNAVAILABLE: u64 = 10163;
    pub const IN_FLIGHT_WRITE: u64 = 10164;
    pub const KV_NOT_FOUND: u64 = 10059;
    pub const ACCOUNT_RESOURCES_EXCEEDED: u64 = 10002;
    pub const MAXIMUM_CONSUMERS: u64 = 10026;
    pub const MAXIMUM_STREAMS: u64 = 10027;
    pub const MEMORY_RESOURCES_EXCEEDED: u64 = 10028;
    pub const STORAGE_RESOURCES_EXCEEDED: u64 = 10047;
    pub const STREAM_BYTES_EXCEEDS_ACCOUNT: u64 = 10122;
    pub const TOO_MANY_REQUESTS: u64 = 10167;
}

/// Parses the actual sequence out of "wrong last sequence: 42 (code 400, error code 10071)".
fn actual_sequence(description: &str) -> Option<u64> {
    let description = description.split(" (code").next().unwrap_or(description);
    description
        .rsplit(|c: char| !c.is_ascii_digit())
        .find(|s| !s.is_empty())
        .and_then(|s| s.parse().ok())
}

/// The JetStream API error carried by one layer of an error chain: either the layer itself or
/// the `JetStream(..)` variant of an async-nats error kind.
fn api_error(e: &(dyn std::error::Error + 'static)) -> Option<jetstream::Error> {
    macro_rules! kind_variant {
        ($($ty:ty => $kind:path),* $(,)?) => {
            $(
                if let Some(e) = e.downcast_ref::<$ty>()
                    && let $kind(api) = e.kind()
                {
                    return Some(api);
                }
            )*
        };
    }
    if let Some(api) = e.downcast_ref::<jetstream::Error>() {
        return Some(api.clone());
    }
    kind_variant!(
        stream::ConsumerError => stream::ConsumerErrorKind::JetStream,
        stream::LastRawMessageError => stream::LastRawMessageErrorKind::JetStream,
        jetstream::context::CreateStreamError => jetstream::context::CreateStreamErrorKind::JetStream,
        jetstream::context::GetStreamError => jetstream::context::GetStreamErrorKind::JetStream,
        jetstream::context::GetStreamByNameError => jetstream::context::GetStreamByNameErrorKind::JetStream,
        jetstream::context::ConsumerInfoError => jetstream::context::ConsumerInfoErrorKind::JetStream,
        jetstream::context::AccountError => jetstream::context::AccountErrorKind::JetStream,
    );
    None
}

/// Every NATS failure becomes a [`BrokerError`] here, and nowhere else.
///
/// The error chain is walked from the outside in: typed async-nats kinds that decide the outcome
/// (a KV create finding the key, a timeout, no responders) are taken first; a JetStream API error
/// (`err_code`) decides otherwise; anything unrecognised is `Other`.
pub(super) fn map_error(op: &Op<'_>, error: &(dyn std::error::Error + 'static)) -> BrokerError {
    let reason = || {
        let mut text = error.to_string();
        let mut source = error.source();
        while let Some(s) = source {
            let s_text = s.to_string();
            if !text.contains(&s_text) {
                text.push_str(": ");
                text.push_str(&s_text);
            }
            source = s.source();
        }
        text
    };
    let timeout = || BrokerError::Timeout {
        operation: op.to_string(),
    };
    let unavailable = || BrokerError::Unavailable { reason: reason() };
    let too_large = |size: usize, max: usize| BrokerError::PayloadTooLarge { size, max };
    let limit = |limit: BrokerLimit, reason: String| BrokerError::LimitReached { limit, reason };
    let no_responders = || match op {
        Op::Request { subject, .. } => BrokerError::NoResponders {
            subject: (*subject).to_owned(),
        },
        Op::Append { subject, .. } => {
            BrokerError::not_found(format!("stream for subject {subject:?}"))
        }
        Op::Last { stream } | Op::Read { stream } => {
            BrokerError::not_found(format!("stream {stream:?}"))
        }
        Op::KvBucket { bucket } | Op::KvRead { bucket } => {
            BrokerError::not_found(format!("KV bucket {bucket:?}"))
        }
        _ => unavailable(),
    };
    let size_of = |op: &Op<'_>| match op {
        Op::Append { size, .. }
        | Op::Publish { size, .. }
        | Op::Request { size, .. }
        | Op::KvWrite { size, .. } => *size,
        _ => 0,
    };

    let mut layer: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = layer {
        if let Some(api) = api_error(e) {
            let description = api.to_string();
            return match api.error_code().0 {
                code::WRONG_LAST_SEQUENCE => match op {
                    Op::KvCreate { key } => BrokerError::AlreadyExists {
                        what: format!("key {key:?}"),
                    },
                    Op::KvUpdate { key, revision } => BrokerError::WrongRevision {
                        key: (*key).to_owned(),
                        expected: *revision,
                    },
                    Op::Append { expected, .. } => BrokerError::WrongLastSequence {
                        expected: expected.unwrap_or(0),
                        actual: actual_sequence(&description).unwrap_or(0),
                    },
                    _ => BrokerError::Other {
                        reason: description,
                    },
                },
                code::STREAM_NOT_FOUND => match op {
                    Op::KvBucket { bucket } | Op::KvRead { bucket } => {
                        BrokerError::not_found(format!("KV bucket {bucket:?}"))
                    }
                    Op::Last { stream } | Op::Read { stream } | Op::EnsureStream { stream } => {
                        BrokerError::not_found(format!("stream {stream:?}"))
                    }
                    _ => BrokerError::not_found(description),
                },
                code::NO_MESSAGE_FOUND => BrokerError::not_found(description),
                code::SUBJECT_OVERLAP | code::BAD_REQUEST | code::INVALID_CONFIG => {
                    BrokerError::InvalidArgument {
                        reason: description,
                    }
                }
                code::STREAM_NAME_IN_USE => BrokerError::AlreadyExists { what: description },
                code::MESSAGE_TOO_LARGE => too_large(size_of(op), 0),
                code::DUPLICATE_IN_PROCESS
                | code::TEMPORARILY_UNAVAILABLE
                | code::IN_FLIGHT_WRITE
                | code::CLUSTER_NOT_AVAILABLE
                | code::CLUSTER_NOT_LEADER => BrokerError::Unavailable {
                    reason: description,
                },
                code::NO_SUITABLE_PEERS => BrokerError::InvalidArgument {
                    reason: description,
                },
                code::MAXIMUM_CONSUMERS => limit(BrokerLimit::Consumers, description),
                code::MAXIMUM_STREAMS => limit(BrokerLimit::Streams, description),
                code::INSUFFICIENT_RESOURCES
                | code::MEMORY_RESOURCES_EXCEEDED
                | code::STORAGE_RESOURCES_EXCEEDED => limit(BrokerLimit::Storage, description),
                code::ACCOUNT_RESOURCES_EXCEEDED | code::STREAM_BYTES_EXCEEDS_ACCOUNT => {
                    limit(BrokerLimit::Account, description)
                }
                code::TOO_MANY_REQUESTS => limit(BrokerLimit::Requests, description),
                // 503 without an err_code: JetStream has no leader at the moment.
                _ if api.code() == 503 => BrokerError::Unavailable {
                    reason: description,
                },
                _ => BrokerError::Other {
                    reason: description,
                },
            };
        }
        if let Some(e) = e.downcast_ref::<jetstream::context::PublishError>() {
            use jetstream::context::PublishErrorKind as K;
            match e.kind() {
                K::TimedOut => return timeout(),
                K::BrokenPipe | K::MaxAckPending => return unavailable(),
                K::StreamNotFound => return no_responders(),
                K::MaxPayloadExceeded => return too_large(size_of(op), 0),
                _ => {}
            }
        }
        if let Some(e) = e.downcast_ref::<async_nats::RequestError>() {
            use async_nats::RequestErrorKind as K;
            match e.kind() {
                K::TimedOut => return timeout(),
                K::NoResponders => return no_responders(),
                K::InvalidSubject => return BrokerError::invalid(reason()),
                _ => {}
            }
        }
        if let Some(e) = e.downcast_ref::<jetstream::context::RequestError>() {
            use jetstream::context::RequestErrorKind as K;
            match e.kind() {
                K::TimedOut => return timeout(),
                K::NoResponders => return no_responders(),
                _ => {}
            }
        }
        if let Some(e) = e.downcast_ref::<async_nats::PublishError>() {
            use async_nats::client::PublishErrorKind as K;
            match e.kind() {
                K::MaxPayloadExceeded => return too_large(size_of(op), 0),
                K::InvalidSubject => return BrokerError::invalid(reason()),
                _ => return unavailable(),
            }
        }
        if let Some(e) = e.downcast_ref::<kv::CreateError>() {
            if e.kind() == kv::CreateErrorKind::AlreadyExists
                && let Op::KvCreate { key } = op
            {
                return BrokerError::AlreadyExists {
                    what: format!("key {key:?}"),
                };
            }
            if e.kind() == kv::CreateErrorKind::InvalidKey {
                return BrokerError::invalid(reason());
            }
        }
        if let Some(e) = e.downcast_ref::<kv::UpdateError>() {
            use kv::UpdateErrorKind as K;
            match (e.kind(), op) {
                (K::WrongLastRevision, Op::KvUpdate { key, revision }) => {
                    return BrokerError::WrongRevision {
                        key: (*key).to_owned(),
                        expected: *revision,
                    };
                }
                (K::TimedOut, _) => return timeout(),
                (K::InvalidKey, _) => return BrokerError::invalid(reason()),
                _ => {}
            }
        }
        if let Some(e) = e.downcast_ref::<stream::DirectGetError>() {
            use stream::DirectGetErrorKind as K;
            match e.kind() {
                K::TimedOut => return timeout(),
                K::InvalidSubject => return BrokerError::invalid(reason()),
                K::ErrorResponse(status, _) if status.as_u16() == 503 => return no_responders(),
                K::ErrorResponse(status, _) if status.as_u16() == 408 => return timeout(),
                _ => {}
            }
        }
        if let Some(e) = e.downcast_ref::<std::io::Error>() {
            return match e.kind() {
                std::io::ErrorKind::TimedOut => timeout(),
                _ => unavailable(),
            };
        }
        layer = e.source();
    }
    // Dozens of async-nats kinds spell "timed out" and "no responders" in their own enums;
    // their text is the common denominator.
    let text = reason().to_ascii_lowercase();
    if text.contains("timed out") || text.contains("timeout") {
        timeout()
    } else if text.contains("no responders") {
        no_responders()
    } else if text.contains("disconnected")
        || text.contains("broken pipe")
        || text.contains("connection")
    {
        unavailable()
    } else {
        let _ = code::KV_NOT_FOUND;
        BrokerError::Other { reason: reason() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actual_sequence_is_parsed_from_the_server_description() {
        assert_eq!(
            actual_sequence("wrong last sequence: 42 (code 400, error code 10071)"),
            Some(42)
        );
        assert_eq!(actual_sequence("wrong last sequence: 42"), Some(42));
    }
}
