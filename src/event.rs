//! The event model: what is stored ([`Event`]), what a caller appends ([`NewEvent`]), snapshots,
//! expected versions and metadata.

use std::collections::BTreeMap;
use std::fmt;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Metadata key of the correlation id: shared by every event caused, directly or not, by one
/// original request.
pub const CORRELATION_ID: &str = "correlation_id";
/// Metadata key of the causation id: the id of the event (or command) that directly caused this one.
pub const CAUSATION_ID: &str = "causation_id";
/// Metadata key of the id of the user on whose behalf the event was recorded.
pub const USER_ID: &str = "user_id";
/// Metadata key of the distributed-tracing trace id.
pub const TRACE_ID: &str = "trace_id";
/// Metadata key of the distributed-tracing span id.
pub const SPAN_ID: &str = "span_id";
/// Metadata key naming the aggregate type ([`Aggregate::NAME`](crate::Aggregate::NAME)) whose
/// host stored the event: actor ids are per namespace, whatever the type, and a host refuses to
/// fold another type's events.
pub const AGGREGATE: &str = "aggregate";

/// String metadata carried by every event, with typed accessors for the well-known keys.
///
/// Ordered (a `BTreeMap`), so that encoding an event is deterministic.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Metadata(pub BTreeMap<String, String>);

macro_rules! metadata_accessors {
    ($($get:ident, $set:ident, $key:ident, $what:literal;)*) => {
        $(
            #[doc = concat!("The ", $what, ", if set.")]
            pub fn $get(&self) -> Option<&str> {
                self.get($key)
            }
            #[doc = concat!("Sets the ", $what, ".")]
            pub fn $set(&mut self, value: impl Into<String>) {
                self.insert($key, value);
            }
        )*
    };
}

impl Metadata {
    /// Empty metadata.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value stored under `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// Stores `value` under `key`, replacing any previous value.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.0.insert(key.into(), value.into());
    }

    metadata_accessors! {
        correlation_id, set_correlation_id, CORRELATION_ID, "correlation id";
        causation_id, set_causation_id, CAUSATION_ID, "causation id";
        user_id, set_user_id, USER_ID, "user id";
        trace_id, set_trace_id, TRACE_ID, "trace id";
        span_id, set_span_id, SPAN_ID, "span id";
    }

    /// Copies the tracing context of `cause` into this metadata: the correlation id (the cause's
    /// own correlation id, or the cause's id when it starts a chain), the causation id (the
    /// cause's id), and the user, trace and span ids when the cause has them.
    pub fn copy_from_cause(&mut self, cause: &Event) {
        let correlation = cause
            .metadata
            .correlation_id()
            .unwrap_or(&cause.id)
            .to_owned();
        self.set_correlation_id(correlation);
        self.set_causation_id(cause.id.clone());
        for key in [USER_ID, TRACE_ID, SPAN_ID] {
            if let Some(value) = cause.metadata.get(key) {
                self.insert(key, value);
            }
        }
    }
}

impl FromIterator<(String, String)> for Metadata {
    fn from_iter<T: IntoIterator<Item = (String, String)>>(iter: T) -> Self {
        Self(iter.into_iter().collect())
    }
}

/// A stored event: one fact in an actor's history, at a fixed version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Event {
    /// Unique id of the event (a UUID unless the caller chose one).
    pub id: String,
    /// The event's type name, e.g. `"OrderPlaced"`.
    pub event_type: String,
    /// The actor whose stream holds the event.
    pub actor_id: String,
    /// Position in the actor's stream: 1, 2, 3, … without gaps.
    pub version: u64,
    /// The payload.
    pub data: Value,
    /// When the event was recorded (the appending node's clock).
    #[serde(with = "timestamp_nanos")]
    pub timestamp: SystemTime,
    /// Correlation, causation, user, trace and span ids and any other string metadata.
    pub metadata: Metadata,
    /// The id of the commit that stored it: every event of one append shares it. A caller
    /// can choose it ([`EventStore::append_with_commit_id`](crate::EventStore::append_with_commit_id)),
    /// as an idempotency key. Empty for an event made by hand.
    #[serde(default)]
    pub commit_id: String,
    /// The schema version of `data` (1 unless the event type's data changed shape; see
    /// [`DomainEvent::schema_version`](crate::DomainEvent::schema_version)).
    #[serde(default = "schema_one", skip_serializing_if = "is_schema_one")]
    pub schema_version: u32,
}

/// The schema version of data written before schema versions existed.
pub(crate) fn schema_one() -> u32 {
    1
}

pub(crate) fn is_schema_one(version: &u32) -> bool {
    *version == 1
}

impl Event {
    /// An event of `actor_id` at `version` (the store builds the events it stores; this is for
    /// tools and tests that make one by hand). Timestamp: the Unix epoch; no metadata.
    pub fn new(
        id: impl Into<String>,
        event_type: impl Into<String>,
        actor_id: impl Into<String>,
        version: u64,
        data: Value,
    ) -> Self {
        Self {
            id: id.into(),
            event_type: event_type.into(),
            actor_id: actor_id.into(),
            version,
            data,
            timestamp: SystemTime::UNIX_EPOCH,
            metadata: Metadata::new(),
            commit_id: String::new(),
            schema_version: 1,
        }
    }

    /// Sets the schema version of the data.
    pub fn with_schema_version(mut self, version: u32) -> Self {
        self.schema_version = version;
        self
    }

    /// Sets the timestamp.
    pub fn with_timestamp(mut self, timestamp: SystemTime) -> Self {
        self.timestamp = timestamp;
        self
    }

    /// Adds one metadata entry.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key, value);
        self
    }
}

/// An event as a caller appends it: the store assigns version and actor, and fills in id and
/// timestamp when they are not given.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct NewEvent {
    /// Id to store the event under; `None` draws a UUID from the runtime's RNG.
    pub id: Option<String>,
    /// The event's type name.
    pub event_type: String,
    /// The payload.
    pub data: Value,
    /// Metadata to store with the event.
    pub metadata: Metadata,
    /// Timestamp to record; `None` takes the runtime clock's wall time.
    pub timestamp: Option<SystemTime>,
    /// The schema version of `data` (1 by default).
    pub schema_version: u32,
}

impl NewEvent {
    /// A new event of `event_type` carrying `data`.
    pub fn new(event_type: impl Into<String>, data: Value) -> Self {
        Self {
            id: None,
            event_type: event_type.into(),
            data,
            metadata: Metadata::new(),
            timestamp: None,
            schema_version: 1,
        }
    }

    /// Sets the schema version of the data.
    pub fn with_schema_version(mut self, version: u32) -> Self {
        self.schema_version = version;
        self
    }

    /// Sets the event id.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Adds one metadata entry.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key, value);
        self
    }

    /// Copies correlation, causation, user, trace and span ids from the event that caused this one
    /// (see [`Metadata::copy_from_cause`]).
    pub fn caused_by(mut self, cause: &Event) -> Self {
        self.metadata.copy_from_cause(cause);
        self
    }
}

impl From<Event> for NewEvent {
    fn from(event: Event) -> Self {
        Self {
            id: Some(event.id),
            event_type: event.event_type,
            data: event.data,
            metadata: event.metadata,
            timestamp: Some(event.timestamp),
            schema_version: event.schema_version,
        }
    }
}

/// A snapshot of an actor's state, covering every event up to and including `version`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Snapshot {
    /// The actor the snapshot belongs to.
    pub actor_id: String,
    /// The last event version folded into `state`.
    pub version: u64,
    /// The stream sequence of the events record that ends at `version`: loading resumes after
    /// it and reads only what follows. 0 when unknown (loading then reads the actor's whole
    /// history). The store fills it in when it saves the snapshot.
    #[serde(default)]
    pub sequence: u64,
    /// The folded state.
    pub state: Value,
    /// When the snapshot was saved: set by the store from its clock when it saves it.
    #[serde(with = "timestamp_nanos")]
    pub timestamp: SystemTime,
    /// The schema version of `state` (1 unless the state's shape changed; see
    /// [`Aggregate::STATE_VERSION`](crate::Aggregate::STATE_VERSION)).
    #[serde(default = "schema_one", skip_serializing_if = "is_schema_one")]
    pub schema_version: u32,
    /// The keyed commits most recently folded into `state`, oldest first: what lets the actor
    /// host recognise a repeated command key without reading the history before the snapshot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_commits: Vec<CommitRange>,
}

/// One commit's place in an actor's stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitRange {
    /// The commit id (a caller's idempotency key, or a generated id).
    pub commit_id: String,
    /// Its first version.
    pub first_version: u64,
    /// Its last version.
    pub last_version: u64,
}

impl Snapshot {
    /// A snapshot of `actor_id`'s `state` after `version`. The store stamps it when it saves it.
    pub fn new(actor_id: impl Into<String>, version: u64, state: Value) -> Self {
        Self {
            actor_id: actor_id.into(),
            version,
            sequence: 0,
            state,
            timestamp: SystemTime::UNIX_EPOCH,
            schema_version: 1,
            recent_commits: Vec::new(),
        }
    }

    /// Sets the schema version of the state.
    pub fn with_schema_version(mut self, version: u32) -> Self {
        self.schema_version = version;
        self
    }

    /// Names the stream sequence of the events record that ends at `version` (what an append's
    /// [`AppendOutcome`](crate::store::AppendOutcome) reports), which saves the store a lookup; the
    /// store checks it.
    pub fn at_sequence(mut self, sequence: u64) -> Self {
        self.sequence = sequence;
        self
    }
}

/// What the caller believes the actor's current version to be when appending.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ExpectedVersion {
    /// Append after whatever is there (the store still guarantees contiguous versions).
    Any,
    /// The actor must have no events yet.
    NoStream,
    /// The actor's latest version must be exactly this (0 is the same as `NoStream`).
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether an actor whose latest version is `actual` satisfies this expectation.
    pub fn matches(self, actual: u64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual == 0,
            ExpectedVersion::Exact(v) => actual == v,
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any version"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::Exact(v) => write!(f, "version {v}"),
        }
    }
}

/// Serialises a `SystemTime` as integer nanoseconds since the Unix epoch: exact, compact and
/// independent of the platform's time representation.
pub(crate) mod timestamp_nanos {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::SystemTime;

    pub fn serialize<S: Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(crate::clock::unix_nanos(*time))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        Ok(crate::clock::from_unix_nanos(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(id: &str, metadata: Metadata) -> Event {
        Event {
            id: id.into(),
            event_type: "T".into(),
            actor_id: "a".into(),
            version: 1,
            data: json!(null),
            timestamp: SystemTime::UNIX_EPOCH,
            metadata,
            commit_id: String::new(),
            schema_version: 1,
        }
    }

    #[test]
    fn metadata_accessors_set_and_get() {
        let mut m = Metadata::new();
        assert_eq!(m.correlation_id(), None);
        m.set_correlation_id("c");
        m.set_causation_id("k");
        m.set_user_id("u");
        m.set_trace_id("t");
        m.set_span_id("s");
        assert_eq!(m.correlation_id(), Some("c"));
        assert_eq!(m.causation_id(), Some("k"));
        assert_eq!(m.user_id(), Some("u"));
        assert_eq!(m.trace_id(), Some("t"));
        assert_eq!(m.span_id(), Some("s"));
    }

    #[test]
    fn caused_by_starts_a_chain_from_an_uncorrelated_event() {
        let cause = event("e1", Metadata::new());
        let next = NewEvent::new("X", json!({})).caused_by(&cause);
        assert_eq!(next.metadata.correlation_id(), Some("e1"));
        assert_eq!(next.metadata.causation_id(), Some("e1"));
        assert_eq!(next.metadata.user_id(), None);
    }

    #[test]
    fn caused_by_keeps_the_correlation_and_context_of_a_chain() {
        let mut m = Metadata::new();
        m.set_correlation_id("root");
        m.set_user_id("alice");
        m.set_trace_id("trace");
        let cause = event("e2", m);
        let next = NewEvent::new("X", json!({})).caused_by(&cause);
        assert_eq!(next.metadata.correlation_id(), Some("root"));
        assert_eq!(next.metadata.causation_id(), Some("e2"));
        assert_eq!(next.metadata.user_id(), Some("alice"));
        assert_eq!(next.metadata.trace_id(), Some("trace"));
    }

    #[test]
    fn expected_version_matches() {
        assert!(ExpectedVersion::Any.matches(5));
        assert!(ExpectedVersion::NoStream.matches(0));
        assert!(!ExpectedVersion::NoStream.matches(1));
        assert!(ExpectedVersion::Exact(3).matches(3));
        assert!(!ExpectedVersion::Exact(3).matches(4));
    }
}
