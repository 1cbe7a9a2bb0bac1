//! The store's errors: one enum per operation, built from small structs carrying the facts.

use std::time::Duration;

use bytes::Bytes;

use crate::broker::BrokerError;
use crate::codec::{DecodeError, InvalidName};
use crate::event::ExpectedVersion;

/// An append was refused because the actor is not at the expected version.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("conflict on actor {actor:?}: expected {expected}, but its latest version is {actual}")]
#[non_exhaustive]
pub struct ConflictError {
    /// The actor.
    pub actor: String,
    /// What the caller expected.
    pub expected: ExpectedVersion,
    /// The actor's actual latest version.
    pub actual: u64,
}

/// A store operation did not end within the store's deadline
/// ([`StoreConfig::deadline`](super::StoreConfig::deadline)); what it had in flight was
/// abandoned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{operation} did not finish within the store's deadline of {deadline:?}")]
#[non_exhaustive]
pub struct DeadlineError {
    /// What was running, with its actor or namespace (`append to actor "a"`, `events of actor
    /// "a"`, `open of namespace "ns"` …).
    pub operation: String,
    /// The deadline the operation had.
    pub deadline: Duration,
}

/// Why an append stored nothing (or, for `Indeterminate`, may have stored its commit).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppendError {
    /// The actor was not at the expected version. Nothing was stored.
    #[error(transparent)]
    Conflict(#[from] ConflictError),
    /// The actor id is invalid. Nothing was stored.
    #[error(transparent)]
    InvalidName(#[from] InvalidName),
    /// The append held no events. Nothing was stored.
    #[error("an append needs at least one event")]
    Empty,
    /// An event is malformed (empty type, version 0 …). Nothing was stored.
    #[error("invalid event: {0}")]
    InvalidEvent(String),
    /// The commit is larger than the broker accepts. Nothing was stored.
    #[error("commit of {size} bytes exceeds the limit of {max} bytes; split the append")]
    TooLarge {
        /// Encoded size of the commit.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Every attempt failed without a definite answer, or the store's deadline passed while the
    /// outcome of an attempt was unknown (then `source` is a [`BrokerError::Timeout`] naming the
    /// deadline): the commit (id `commit_id`) may or may not be stored. Reading the actor tells;
    /// appending the same events again would duplicate them if it was.
    #[error("outcome of commit {commit_id} is unknown after retries: {source}")]
    Indeterminate {
        /// The commit's id, as it would appear in the stream.
        commit_id: String,
        /// The last error seen.
        source: BrokerError,
    },
    /// An `ExpectedVersion::Any` append lost the race to other writers `attempts` times in a
    /// row. Nothing was stored.
    #[error(
        "append to actor {actor:?} lost {attempts} races with concurrent writers; nothing was stored"
    )]
    Contended {
        /// The actor.
        actor: String,
        /// How many attempts were made.
        attempts: u32,
    },
    /// The broker failed before anything was sent. Nothing was stored.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// Reading the actor's tail failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The store's deadline passed before the commit was sent, or after every attempt was
    /// definitely refused (reading the actor's tail, say, took too long). Nothing was stored. (A
    /// deadline that passes while an attempt's outcome is unknown is
    /// [`AppendError::Indeterminate`].)
    #[error("{0}; nothing was stored")]
    DeadlineExceeded(#[from] DeadlineError),
}

/// What is wrong with one damaged record.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayErrorCause {
    /// The record is not a valid commit.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The commit names another actor than the subject it was found on.
    #[error("commit belongs to actor {found:?}")]
    WrongActor {
        /// The actor named in the commit.
        found: String,
    },
    /// The commit does not continue the versions before it.
    #[error("commit starts at version {found}, expected {expected}")]
    VersionGap {
        /// The version that should have come next.
        expected: u64,
        /// The commit's first version.
        found: u64,
    },
    /// A second copy of a commit read earlier in the stream (it repeats versions already taken).
    #[error("commit id {0} appears twice")]
    DuplicateCommit(String),
    /// A header the store writes with every commit is missing or disagrees with the body (the
    /// body is the record; headers only index it).
    #[error("header {header} is {found:?}, but the commit says {expected:?}")]
    HeaderMismatch {
        /// The header.
        header: &'static str,
        /// Its value, if present.
        found: Option<String>,
        /// What the body implies.
        expected: String,
    },
    /// The commit would continue the versions past the largest representable version.
    #[error("commit ends at version {0}, leaving no version after it")]
    VersionOverflow(u64),
}

/// A damaged record found during replay: where, what it held, and why it was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("damaged record at stream sequence {sequence}: {cause}")]
#[non_exhaustive]
pub struct ReplayError {
    /// Stream sequence of the record.
    pub sequence: u64,
    /// The record's payload, untouched.
    pub raw: Bytes,
    /// Why it was rejected.
    pub cause: ReplayErrorCause,
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The actor id is invalid.
    #[error(transparent)]
    InvalidName(#[from] InvalidName),
    /// The actor's stream holds a damaged record (plain reads never skip one silently; use
    /// `events_with_errors` to read around it).
    #[error(transparent)]
    Damaged(#[from] ReplayError),
    /// The versions asked for expired under the store's retention, and no snapshot covers
    /// them: the oldest version still stored is `first_available`.
    #[error(
        "versions {from}..{first_available} of actor {actor:?} expired under the store's retention"
    )]
    Expired {
        /// The actor.
        actor: String,
        /// The first version asked for.
        from: u64,
        /// The oldest version still stored.
        first_available: u64,
    },
    /// Under retention, every event of the actor expired and its latest snapshot — which says
    /// where its versions continue — cannot be decoded.
    #[error("the snapshot of actor {actor:?} at stream sequence {sequence} is damaged: {cause}")]
    DamagedSnapshot {
        /// The actor.
        actor: String,
        /// The snapshot's stream sequence.
        sequence: u64,
        /// The decoder's complaint.
        cause: String,
    },
    /// The broker failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The store's deadline passed before the read ended.
    #[error(transparent)]
    DeadlineExceeded(#[from] DeadlineError),
}

/// Why a snapshot operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The actor id is invalid.
    #[error(transparent)]
    InvalidName(#[from] InvalidName),
    /// The snapshot claims a version the actor has not reached.
    #[error(
        "snapshot of actor {actor:?} at version {version} is ahead of its latest version {latest}"
    )]
    AheadOfStream {
        /// The actor.
        actor: String,
        /// The snapshot's version.
        version: u64,
        /// The actor's latest version.
        latest: u64,
    },
    /// A newer snapshot is already stored.
    #[error("a snapshot at version {existing} is already stored; refusing older version {offered}")]
    Stale {
        /// Version of the stored snapshot.
        existing: u64,
        /// Version offered.
        offered: u64,
    },
    /// The stored snapshot cannot be decoded.
    #[error("damaged snapshot at stream sequence {sequence}: {cause}")]
    Damaged {
        /// Its stream sequence.
        sequence: u64,
        /// The decoder's complaint.
        cause: String,
    },
    /// The snapshot is larger than the broker accepts.
    #[error("snapshot of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Encoded size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Reading the actor's version failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The broker failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The store's deadline passed first. A snapshot being saved may or may not have been
    /// stored (a stored one is valid; saving it again is safe).
    #[error(transparent)]
    DeadlineExceeded(#[from] DeadlineError),
}

/// Why a store could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The namespace is invalid.
    #[error(transparent)]
    InvalidName(#[from] InvalidName),
    /// The broker refused to create the streams.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The store's deadline passed before the streams were checked or created (a stream
    /// being created may or may not exist; opening again is safe).
    #[error(transparent)]
    DeadlineExceeded(#[from] DeadlineError),
}
