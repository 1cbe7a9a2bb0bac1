//! What travels through a broker: headers, stored and core messages, append options and
//! acknowledgements, KV entries, and which copy of a stream answers a read.

use std::collections::BTreeMap;
use std::time::SystemTime;

use bytes::Bytes;

/// Message headers. NATS allows repeated keys; aether only ever sets each key once.
pub type Headers = BTreeMap<String, String>;

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
