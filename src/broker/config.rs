//! Stream and KV bucket configuration, and the rules every broker checks before creating one.

use std::time::Duration;

use super::error::BrokerError;
use super::subject;
use super::wire::DEFAULT_DUPLICATE_WINDOW;

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
#[non_exhaustive]
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

/// Configuration of a KV bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
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

    /// Sets the TTL of entries.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Sets the replica count.
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
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
