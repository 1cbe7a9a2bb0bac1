//! The event store: per-actor append-only streams with contiguous versions and optimistic
//! concurrency decided by the broker, plus snapshots.
//!
//! Layout on the broker, for namespace `ns`:
//! - stream `AETHER_EV_<ns>`, subjects `aether.ev.<ns>.<actor token>`: one message per commit;
//! - stream `AETHER_SNAP_<ns>`, subjects `aether.snap.<ns>.<actor token>`: snapshots.
//!
//! The actor token is [`encode_actor_id`](crate::codec::encode_actor_id), so two actors never share a subject.
//!
//! # Concurrency
//! An append publishes its commit with `expected_last_subject_sequence` = the stream sequence of
//! the actor's last commit as the store believes it to be; the broker rejects it if anything was
//! written in between. The per-actor cache of (last sequence, last version) is only a hint that
//! saves a read; a stale hint costs one extra read, never correctness. Writers in other processes
//! are therefore safe.
//!
//! # Ambiguous failures
//! When the outcome of a publish is unknown (timeout, connection lost) the same commit — same
//! commit id, which is also the broker's dedupe id — is sent again. If the retry is answered with
//! wrong-last-sequence, the store reads the record that follows the expected sequence and compares
//! commit ids before reporting a conflict: the first attempt may have landed.
//!
//! # Deadlines
//! Every public operation ends within [`StoreConfig::deadline`], however many attempts, reads
//! and timeouts it chains: a dead or frozen server surfaces as a typed error (see
//! [`DeadlineError`]), and an append cut short while a commit was in flight says its outcome is
//! unknown ([`AppendError::Indeterminate`]).

mod append;
mod deadline;
mod error;
mod idempotent;
mod replay;
mod snapshot;
mod stream;
mod tip;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

pub use append::AppendOutcome;
pub use error::{
    AppendError, ConflictError, DeadlineError, OpenError, ReadError, ReplayError, ReplayErrorCause,
    SnapshotError,
};
pub use idempotent::{COMMIT_ID_MAX, CommitStatus};
pub(crate) use replay::RawPage;
pub use replay::{Page, ReplayResult, StoredCommit, check_record};
pub use snapshot::SnapshotStore;
pub use stream::STREAM_PAGE;

use crate::broker::{Broker, DEFAULT_MAX_PAYLOAD, StreamConfig};
use crate::bus::EventBus;
use crate::clock::{Clock, Deadline, SystemClock};
use crate::codec::validate_namespace;
use crate::event::Event;
use crate::names::NamespaceNames;
use crate::runtime::Runtime;
use tip::TipCache;

/// Default of [`StoreConfig::tips_max`].
pub const TIPS_MAX_DEFAULT: usize = 100_000;

/// Default of [`StoreConfig::deadline`]: 10 s (why: see there).
pub const DEADLINE_DEFAULT: Duration = Duration::from_secs(10);

/// The event type of the notification published on the bus for every stored event.
pub const EVENT_STORED: &str = "EventStored";

/// What an [`EventStore`] handle remembers: see [`EventStore::cache_usage`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheUsage {
    /// Actors with a remembered tip.
    pub tips: usize,
    /// Actors with a remembered snapshot floor.
    pub snapshot_floors: usize,
}

/// Store configuration.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct StoreConfig {
    /// Namespace (`[A-Za-z0-9_-]`, 1–64 characters); one stream per namespace.
    pub namespace: String,
    /// How long the server keeps events; `None` (the default) keeps them forever, as event
    /// sourcing needs. Retention is only safe with snapshots: an actor whose oldest events
    /// expired loads from its latest snapshot (which records the stream position it covers),
    /// and reading versions that expired without a covering snapshot is
    /// [`ReadError::Expired`], never damage. Snapshots themselves never
    /// expire by age: the newest `snapshot_history` per actor are kept.
    pub retention: Option<Duration>,
    /// Stream replicas (3 on a 3-node cluster).
    pub replicas: usize,
    /// Largest commit (payload plus headers) the store will send. Default 1 MiB, the NATS
    /// default `max_payload`.
    pub commit_bytes_max: usize,
    /// How many snapshots to keep per actor.
    pub snapshot_history: u64,
    /// How many times an append whose outcome is unknown is re-sent before giving up, and how
    /// many times an `ExpectedVersion::Any` append retries after losing a race.
    pub retry_max: u32,
    /// Base delay between retries of an ambiguous append (jittered, doubling).
    pub retry_delay: Duration,
    /// Actors whose tip (stream position and version) the handle remembers; the least recently
    /// used are forgotten beyond this. A forgotten actor costs one read of its history on its
    /// next append.
    pub tips_max: usize,
    /// How long any one public operation may take in all — [`open`](EventStore::open), appends,
    /// reads, snapshots —, however many attempts, reads and broker timeouts it chains; measured
    /// on the runtime's [`Clock`]. When it passes, the operation is abandoned where it waits and
    /// returns its `DeadlineExceeded` error ([`DeadlineError`]), except for an append with a
    /// commit in flight, whose outcome is unknown: [`AppendError::Indeterminate`]. An ambiguous
    /// append is not retried when the wait before the next attempt would already end past the
    /// deadline.
    ///
    /// Default [`DEADLINE_DEFAULT`], 10 s: longer than a NATS stream leader election (appends
    /// worked again 4.1–7.4 s after a leader was killed, `docs/nats.md`), during which appends
    /// are refused at once and retried, so an append rides out a failover; and room for one
    /// retry of a publish that timed out after the client's 5 s default request timeout. A
    /// dead or frozen server surfaces after it, where the chain of timeouts of an append with the
    /// default `retry_max` took 53 s (measured, `benches/time_to_error.rs`). Keep the broker's
    /// request timeout well below it, or a single attempt uses it all.
    pub deadline: Duration,
}

impl StoreConfig {
    /// Defaults for `namespace`.
    pub fn new(namespace: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            retention: None,
            replicas: 1,
            commit_bytes_max: DEFAULT_MAX_PAYLOAD,
            snapshot_history: 3,
            retry_max: 8,
            retry_delay: Duration::from_millis(20),
            tips_max: TIPS_MAX_DEFAULT,
            deadline: DEADLINE_DEFAULT,
        }
    }

    /// Sets how long any one operation may take in all (see [`StoreConfig::deadline`]).
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Sets the replica count.
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }

    /// Lets the server remove events older than `max_age` (see [`StoreConfig::retention`]).
    pub fn retention(mut self, max_age: Duration) -> Self {
        self.retention = Some(max_age);
        self
    }
}

/// The payload of an [`EVENT_STORED`] notification.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventStored {
    /// Id of the stored event.
    pub event_id: String,
    /// Its type.
    pub event_type: String,
    /// Its actor.
    pub actor_id: String,
    /// Its version.
    pub version: u64,
    /// Its timestamp, nanoseconds since the Unix epoch.
    pub timestamp_nanos: u64,
}

impl EventStored {
    /// Reads the notification carried by a bus event, if it is one.
    pub fn from_event(event: &Event) -> Option<Self> {
        if event.event_type != EVENT_STORED {
            return None;
        }
        serde_json::from_value(event.data.clone()).ok()
    }

    fn notification(stored: &Event) -> Event {
        Event {
            id: stored.id.clone(),
            event_type: EVENT_STORED.to_owned(),
            actor_id: stored.actor_id.clone(),
            version: stored.version,
            data: json!({
                "event_id": stored.id,
                "event_type": stored.event_type,
                "actor_id": stored.actor_id,
                "version": stored.version,
                "timestamp_nanos": crate::clock::unix_nanos(stored.timestamp),
            }),
            timestamp: stored.timestamp,
            schema_version: 1,
            metadata: stored.metadata.clone(),
            commit_id: stored.commit_id.clone(),
        }
    }
}

struct Inner<B, C> {
    rt: Runtime<B, C>,
    config: StoreConfig,
    names: NamespaceNames,
    events_stream: String,
    snapshots_stream: String,
    tips: Mutex<TipCache>,
    /// Per actor, the newest snapshot version this handle saved or read: the floor of its
    /// snapshot reads (read your writes on replicas). Bounded like the tips.
    snapshot_floors: Mutex<tip::VersionCache>,
    bus: std::sync::OnceLock<EventBus<B>>,
}

/// The event store for one namespace. Cheap to clone.
pub struct EventStore<B, C = SystemClock> {
    inner: Arc<Inner<B, C>>,
}

impl<B, C> Clone for EventStore<B, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<B, C> std::fmt::Debug for EventStore<B, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStore")
            .field("namespace", &self.inner.config.namespace)
            .finish()
    }
}

impl<B: Broker, C: Clock> EventStore<B, C> {
    /// Opens the store of `config.namespace`, creating its streams if needed.
    ///
    /// # Errors
    /// [`OpenError::InvalidName`] for a bad namespace, [`OpenError::Broker`] if the streams cannot
    /// be created, [`OpenError::DeadlineExceeded`] if that takes longer than
    /// [`StoreConfig::deadline`].
    #[tracing::instrument(
        level = "debug",
        name = "aether.store.open",
        skip_all,
        fields(namespace = %config.namespace, replicas = config.replicas),
        err(level = "warn")
    )]
    pub async fn open(rt: Runtime<B, C>, config: StoreConfig) -> Result<Self, OpenError> {
        validate_namespace(&config.namespace)?;
        let clock = rt.clock().clone();
        let deadline = Deadline::after(&clock, config.deadline);
        let operation = || format!("open of namespace {:?}", config.namespace);
        deadline::bounded(
            &clock,
            &deadline,
            operation,
            Self::open_streams(rt, config.clone()),
        )
        .await
    }

    async fn open_streams(rt: Runtime<B, C>, config: StoreConfig) -> Result<Self, OpenError> {
        let names = NamespaceNames::new(&config.namespace);
        let events_stream = names.events_stream();
        let snapshots_stream = names.snapshots_stream();
        let mut events = StreamConfig::new(&events_stream, vec![names.events_pattern()]);
        let window = crate::broker::DEFAULT_DUPLICATE_WINDOW;
        events.max_age = config.retention;
        events.replicas = config.replicas;
        events.duplicate_window = config.retention.map_or(window, |r| window.min(r));
        rt.broker().ensure_stream(events.clone()).await?;
        let mut snapshots = StreamConfig::new(&snapshots_stream, vec![names.snapshots_pattern()]);
        snapshots.replicas = config.replicas;
        snapshots.max_messages_per_subject = Some(config.snapshot_history.max(1));
        if crate::planted::planted!(rt, snapshots_expire_with_events) {
            snapshots.max_age = config.retention;
            snapshots.duplicate_window = events.duplicate_window;
        }
        rt.broker().ensure_stream(snapshots).await?;
        let tips_max = std::num::NonZeroUsize::new(config.tips_max.max(1)).expect("at least 1");
        Ok(Self {
            inner: Arc::new(Inner {
                rt,
                config,
                names,
                events_stream,
                snapshots_stream,
                tips: Mutex::new(TipCache::with_hasher(tips_max, Default::default())),
                snapshot_floors: Mutex::new(tip::VersionCache::with_hasher(
                    tips_max,
                    Default::default(),
                )),
                bus: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Publishes an [`EVENT_STORED`] notification on `bus` after every successful append (and
    /// never after a conflict). A store has at most one bus; later calls are ignored.
    pub fn with_bus(self, bus: EventBus<B>) -> Self {
        let _ = self.inner.bus.set(bus);
        self
    }

    /// The bus the store announces its appends on, if it has one ([`EventStore::with_bus`]).
    pub fn bus(&self) -> Option<&EventBus<B>> {
        self.inner.bus.get()
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.inner.config.namespace
    }

    /// How many actors this handle remembers a tip and a snapshot floor for (each bounded by
    /// [`StoreConfig::tips_max`]): the handle's memory, which does not grow with time.
    pub fn cache_usage(&self) -> CacheUsage {
        CacheUsage {
            tips: self
                .inner
                .tips
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .len(),
            snapshot_floors: self
                .inner
                .snapshot_floors
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .len(),
        }
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// The runtime bundle.
    pub fn runtime(&self) -> &Runtime<B, C> {
        &self.inner.rt
    }

    fn broker(&self) -> &B {
        self.inner.rt.broker()
    }

    /// The broker names of this store's namespace.
    pub fn names(&self) -> &NamespaceNames {
        &self.inner.names
    }
}
