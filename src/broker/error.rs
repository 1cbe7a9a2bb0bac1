//! The errors a broker reports, mirroring NATS's kinds; each backend maps its native errors
//! onto these in one place.

use std::fmt;

/// Errors a broker reports. The kinds mirror NATS so that callers can react to them uniformly;
/// each backend maps its native errors onto these in one place.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
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
    /// The server refused the operation for lack of permission: the connection's credentials
    /// may not publish to, or subscribe to, `subject`. Nothing was stored or changed. Definite,
    /// never ambiguous: retrying with the same credentials is refused again.
    #[error("permission denied: may not {action} {subject:?} ({operation})")]
    PermissionDenied {
        /// Whether publishing or subscribing was refused.
        action: PermissionAction,
        /// The subject the server refused, as it named it (a JetStream API subject such as
        /// `$JS.API.STREAM.INFO.AETHER_EV_orders` when the refused part was an API request).
        subject: String,
        /// The broker operation that needed it.
        operation: String,
    },
    /// Anything else the backend reported.
    #[error("broker error: {reason}")]
    Other {
        /// What the backend said.
        reason: String,
    },
}

/// What a [`BrokerError::PermissionDenied`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PermissionAction {
    /// Publishing to the subject (a message, a request, a JetStream API call).
    Publish,
    /// Subscribing to the subject.
    Subscribe,
}

impl fmt::Display for PermissionAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PermissionAction::Publish => "publish to",
            PermissionAction::Subscribe => "subscribe to",
        })
    }
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
    /// A short, stable name of the error's kind (`timeout`, `unavailable`, …): the `error`
    /// label of [`BROKER_ERRORS`](crate::telemetry::BROKER_ERRORS) and a log field.
    pub fn kind(&self) -> &'static str {
        match self {
            BrokerError::WrongLastSequence { .. } => "wrong_last_sequence",
            BrokerError::AlreadyExists { .. } => "already_exists",
            BrokerError::WrongRevision { .. } => "wrong_revision",
            BrokerError::NotFound { .. } => "not_found",
            BrokerError::PayloadTooLarge { .. } => "payload_too_large",
            BrokerError::Timeout { .. } => "timeout",
            BrokerError::NoResponders { .. } => "no_responders",
            BrokerError::Unavailable { .. } => "unavailable",
            BrokerError::InvalidArgument { .. } => "invalid_argument",
            BrokerError::LimitReached { .. } => "limit_reached",
            BrokerError::PermissionDenied { .. } => "permission_denied",
            BrokerError::Other { .. } => "other",
        }
    }

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
