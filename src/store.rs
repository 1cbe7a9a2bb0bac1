//! The event store: per-actor append-only streams with contiguous versions and optimistic
//! concurrency decided by the broker, plus snapshots.
//!
//! Layout on the broker, for namespace `ns`:
//! - stream `AETHER_EV_<ns>`, subjects `aether.ev.<ns>.<actor token>`: one message per commit;
//! - stream `AETHER_SNAP_<ns>`, subjects `aether.snap.<ns>.<actor token>`: snapshots.
//!
//! The actor token is [`encode_actor_id`], so two actors never share a subject.
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

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::broker::{
    AppendAck, AppendOptions, Broker, BrokerError, DEFAULT_MAX_PAYLOAD, Headers, ReadFrom,
    StoredMessage, StreamConfig, wire_size,
};
use crate::bus::EventBus;
use crate::clock::{Clock, Runtime, SystemClock};
use crate::codec::{
    self, Commit, DecodeError, HEADER_COMMIT_ID, HEADER_FIRST_VERSION, HEADER_FORMAT,
    HEADER_LAST_VERSION, InvalidName, encode_actor_id, validate_namespace,
};
use crate::event::{Event, ExpectedVersion, NewEvent, Snapshot};

/// Default retention of events: one year.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// Default of [`StoreConfig::tips_max`].
pub const TIPS_MAX_DEFAULT: usize = 100_000;

/// The event type of the notification published on the bus for every stored event.
pub const EVENT_STORED: &str = "EventStored";

/// Store configuration.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Namespace (`[A-Za-z0-9_-]`, 1–64 characters); one stream per namespace.
    pub namespace: String,
    /// Events older than this are removed by the server. Default: 365 days.
    pub max_age: Duration,
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
}

impl StoreConfig {
    /// Defaults for `namespace`.
    pub fn new(namespace: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            max_age: DEFAULT_MAX_AGE,
            replicas: 1,
            commit_bytes_max: DEFAULT_MAX_PAYLOAD,
            snapshot_history: 3,
            retry_max: 8,
            retry_delay: Duration::from_millis(20),
            tips_max: TIPS_MAX_DEFAULT,
        }
    }

    /// Sets the replica count.
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }

    /// Sets the retention.
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age;
        self
    }
}

/// An append was refused because the actor is not at the expected version.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("conflict on actor {actor:?}: expected {expected}, but its latest version is {actual}")]
pub struct ConflictError {
    /// The actor.
    pub actor: String,
    /// What the caller expected.
    pub expected: ExpectedVersion,
    /// The actor's actual latest version.
    pub actual: u64,
}

/// Why an append stored nothing (or, for `Indeterminate`, may have stored its commit).
#[derive(Debug, thiserror::Error)]
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
    /// Every attempt failed without a definite answer: the commit (id `commit_id`) may or may not
    /// be stored. Reading the actor tells; appending the same events again would duplicate them
    /// if it was.
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
}

/// What a successful append stored.
#[derive(Clone, Debug, PartialEq)]
pub struct AppendOutcome {
    /// The commit id.
    pub commit_id: String,
    /// Stream sequence of the commit.
    pub sequence: u64,
    /// The stored events, with their versions.
    pub events: Vec<Event>,
}

impl AppendOutcome {
    /// Version of the first stored event.
    pub fn first_version(&self) -> u64 {
        self.events.first().map_or(0, |e| e.version)
    }

    /// The actor's version after the append.
    pub fn last_version(&self) -> u64 {
        self.events.last().map_or(0, |e| e.version)
    }
}

/// What is wrong with one damaged record.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
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
pub struct ReplayError {
    /// Stream sequence of the record.
    pub sequence: u64,
    /// The record's payload, untouched.
    pub raw: Bytes,
    /// Why it was rejected.
    pub cause: ReplayErrorCause,
}

/// Events read back along with every damaged record met on the way.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReplayResult {
    /// The valid events, in version order.
    pub events: Vec<Event>,
    /// The damaged records, in stream order.
    pub errors: Vec<ReplayError>,
}

/// One commit read from a namespace's whole stream, with its position.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredCommit {
    /// The commit's position: its stream sequence. Positions grow with every commit of the
    /// namespace (not contiguously: they are shared with nothing else, but may skip expired
    /// records).
    pub position: u64,
    /// The commit id.
    pub commit_id: String,
    /// The actor.
    pub actor_id: String,
    /// Its events, in version order.
    pub events: Vec<Event>,
}

/// A page of a namespace's stream, in commit order: what [`EventStore::read_all`] returns.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Page {
    /// Valid commits, in position order.
    pub commits: Vec<StoredCommit>,
    /// Damaged records met on the way (never skipped silently).
    pub errors: Vec<ReplayError>,
    /// Where the next page starts (one past the last record read; unchanged when the page is
    /// empty).
    pub next_position: u64,
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The actor id is invalid.
    #[error(transparent)]
    InvalidName(#[from] InvalidName),
    /// The actor's stream holds a damaged record (plain reads never skip one silently; use
    /// `events_with_errors` to read around it).
    #[error(transparent)]
    Damaged(#[from] ReplayError),
    /// The broker failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// Why a snapshot operation failed.
#[derive(Debug, thiserror::Error)]
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
}

/// Where an actor's stream ends, as this handle has checked it: `sequence` is the stream
/// sequence of the subject's last record when it was read (what the next append names as the
/// expected last sequence, even when that record is damaged) and `version` the last version of
/// the valid commits up to there.
///
/// A tip is only ever built from records the store decoded and checked exactly as replay does,
/// or from the store's own acknowledged appends — never from a record's headers — so a damaged
/// last record can never decide the next version. A tip may be old (others appended since); it
/// is never wrong, so it serves as the floor from which the rest of the stream is read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Tip {
    sequence: u64,
    version: u64,
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
            metadata: stored.metadata.clone(),
        }
    }
}

struct Inner<B, C> {
    rt: Runtime<B, C>,
    config: StoreConfig,
    events_stream: String,
    snapshots_stream: String,
    tips: Mutex<TipCache>,
    bus: std::sync::OnceLock<EventBus<B>>,
}

/// The tips this handle knows, least recently used forgotten first. Deterministic: a fixed
/// hasher, and the eviction order is the use order.
type TipCache = lru::LruCache<String, Tip, std::hash::BuildHasherDefault<std::hash::DefaultHasher>>;

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

/// Why a store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The namespace is invalid.
    #[error(transparent)]
    InvalidName(#[from] InvalidName),
    /// The broker refused to create the streams.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

impl<B: Broker, C: Clock> EventStore<B, C> {
    /// Opens the store of `config.namespace`, creating its streams if needed.
    ///
    /// # Errors
    /// [`OpenError::InvalidName`] for a bad namespace, [`OpenError::Broker`] if the streams cannot
    /// be created.
    pub async fn open(rt: Runtime<B, C>, config: StoreConfig) -> Result<Self, OpenError> {
        validate_namespace(&config.namespace)?;
        let ns = &config.namespace;
        let events_stream = format!("AETHER_EV_{ns}");
        let snapshots_stream = format!("AETHER_SNAP_{ns}");
        let mut events = StreamConfig::new(&events_stream, vec![format!("aether.ev.{ns}.*")]);
        events.max_age = Some(config.max_age);
        events.replicas = config.replicas;
        events.duplicate_window = crate::broker::DEFAULT_DUPLICATE_WINDOW.min(config.max_age);
        rt.broker().ensure_stream(events).await?;
        let mut snapshots =
            StreamConfig::new(&snapshots_stream, vec![format!("aether.snap.{ns}.*")]);
        snapshots.max_age = Some(config.max_age);
        snapshots.replicas = config.replicas;
        snapshots.max_messages_per_subject = Some(config.snapshot_history.max(1));
        snapshots.duplicate_window = crate::broker::DEFAULT_DUPLICATE_WINDOW.min(config.max_age);
        rt.broker().ensure_stream(snapshots).await?;
        let tips_max = std::num::NonZeroUsize::new(config.tips_max.max(1)).expect("at least 1");
        Ok(Self {
            inner: Arc::new(Inner {
                rt,
                config,
                events_stream,
                snapshots_stream,
                tips: Mutex::new(TipCache::with_hasher(tips_max, Default::default())),
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

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.inner.config.namespace
    }

    /// The runtime bundle.
    pub fn runtime(&self) -> &Runtime<B, C> {
        &self.inner.rt
    }

    fn broker(&self) -> &B {
        self.inner.rt.broker()
    }

    fn event_subject(&self, actor: &str) -> Result<String, InvalidName> {
        Ok(format!(
            "aether.ev.{}.{}",
            self.inner.config.namespace,
            encode_actor_id(actor)?
        ))
    }

    fn snapshot_subject(&self, actor: &str) -> Result<String, InvalidName> {
        Ok(format!(
            "aether.snap.{}.{}",
            self.inner.config.namespace,
            encode_actor_id(actor)?
        ))
    }

    fn hint(&self, actor: &str) -> Option<Tip> {
        self.lock_tips().get(actor).copied()
    }

    fn set_hint(&self, actor: &str, tip: Tip) {
        let mut tips = self.lock_tips();
        match tips.get_mut(actor) {
            // Never move a tip backwards: a slow reader must not undo a newer writer's tip.
            Some(known) if tip.sequence < known.sequence => {}
            Some(known) => {
                assert!(
                    tip.sequence > known.sequence || tip.version == known.version,
                    "two tips at stream sequence {} disagree: versions {} and {}",
                    tip.sequence,
                    known.version,
                    tip.version
                );
                assert!(
                    tip.version >= known.version,
                    "a later tip has an older version"
                );
                *known = tip;
            }
            None => {
                tips.put(actor.to_owned(), tip);
            }
        }
    }

    fn lock_tips(&self) -> std::sync::MutexGuard<'_, TipCache> {
        self.inner.tips.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads what follows `anchor` on the actor's subject (any replica) and checks it exactly
    /// as replay does, continuing from `anchor`: the tip as far as that replica knows.
    async fn advance(&self, actor: &str, subject: &str, anchor: Tip) -> Result<Tip, ReadError> {
        let mut checker = ReplayChecker::resume(actor, anchor, u64::MAX);
        self.broker()
            .read_each(
                &self.inner.events_stream,
                subject,
                anchor.sequence + 1,
                |record| checker.push(record),
            )
            .await?;
        Ok(checker.tip())
    }

    /// The actor's tip: the one this handle knows (a floor), brought up to date. One round trip
    /// when the handle knows the actor; the actor's whole history otherwise, because only a
    /// checked history says which version comes next.
    async fn fetch_tip(&self, actor: &str, subject: &str) -> Result<Tip, ReadError> {
        let tip = self
            .advance(actor, subject, self.hint(actor).unwrap_or_default())
            .await?;
        self.set_hint(actor, tip);
        Ok(tip)
    }

    /// Makes sure `tip` reaches the actor's real end — at least stream sequence `at_least`, and
    /// whatever the stream leader holds — and not only what a lagging replica answered. Costs
    /// one leader read when `tip` is current; used where a reported version must be right (a
    /// conflict's actual version) or the broker named a later sequence.
    async fn confirm_tip(
        &self,
        actor: &str,
        subject: &str,
        tip: Tip,
        at_least: u64,
    ) -> Result<Tip, ReadError> {
        let leader_last = self
            .broker()
            .last(&self.inner.events_stream, subject, ReadFrom::Leader)
            .await?
            .map_or(0, |m| m.sequence)
            .max(at_least);
        if tip.sequence >= leader_last {
            return Ok(tip);
        }
        let tip = self.advance(actor, subject, tip).await?;
        // A replica that lags still misses the newest records: take them from the leader.
        let mut checker = ReplayChecker::resume(actor, tip, u64::MAX);
        while checker.last_sequence < leader_last {
            match self
                .broker()
                .next(
                    &self.inner.events_stream,
                    subject,
                    checker.last_sequence + 1,
                    ReadFrom::Leader,
                )
                .await?
            {
                Some(record) => checker.push(record),
                None => break,
            }
        }
        let tip = checker.tip();
        self.set_hint(actor, tip);
        Ok(tip)
    }

    /// Appends `events` to `actor`'s stream as one commit: either all are stored, at versions
    /// `latest + 1 ..= latest + n`, or none is.
    ///
    /// # Errors
    /// [`AppendError::Conflict`] when the actor is not at `expected` (carrying the actual
    /// version); [`AppendError::Empty`], [`AppendError::InvalidName`],
    /// [`AppendError::InvalidEvent`] and [`AppendError::TooLarge`] for bad input (nothing is
    /// stored); [`AppendError::Indeterminate`] when the broker never answered definitely.
    ///
    /// # Cancel safety
    /// Not cancel safe in the sense that a cancelled append may or may not have been stored,
    /// exactly like an `Indeterminate` error.
    pub async fn append(
        &self,
        actor: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, AppendError> {
        let subject = self.event_subject(actor)?;
        if events.is_empty() {
            return Err(AppendError::Empty);
        }
        if let Some(bad) = events.iter().find(|e| e.event_type.is_empty()) {
            return Err(AppendError::InvalidEvent(format!(
                "event {:?} has an empty event type",
                bad.id
            )));
        }
        if let Some(bad) = events.iter().find(|e| e.id.as_deref() == Some("")) {
            return Err(AppendError::InvalidEvent(format!(
                "event of type {:?} has an empty id",
                bad.event_type
            )));
        }
        let rt = &self.inner.rt;
        let now = rt.clock().wall();
        let stamped: Vec<(String, NewEvent)> = events
            .into_iter()
            .map(|e| {
                (
                    e.id.clone().unwrap_or_else(|| rt.rng().uuid().to_string()),
                    e,
                )
            })
            .collect();

        let mut races = 0;
        loop {
            let mut tip = match self.hint(actor) {
                Some(hint) if expected.matches(hint.version) => hint,
                // Creating an actor needs no read: expect an empty subject and let the server
                // check it (a wrong guess costs one rejected publish, as a stale hint does).
                None if races == 0
                    && matches!(
                        expected,
                        ExpectedVersion::NoStream | ExpectedVersion::Exact(0)
                    ) =>
                {
                    Tip::default()
                }
                // A tip that contradicts the caller may just be old: read what follows it.
                _ => self.fetch_tip(actor, &subject).await?,
            };
            if !expected.matches(tip.version) {
                tip = self.confirm_tip(actor, &subject, tip, 0).await?;
            }
            if !expected.matches(tip.version) {
                return Err(ConflictError {
                    actor: actor.to_owned(),
                    expected,
                    actual: tip.version,
                }
                .into());
            }
            let mut events = Vec::with_capacity(stamped.len());
            for (i, (id, e)) in stamped.iter().enumerate() {
                let version = tip.version.checked_add(1 + i as u64).ok_or_else(|| {
                    AppendError::InvalidEvent(format!(
                        "actor {actor:?} is at version {}: no room for {} more events",
                        tip.version,
                        stamped.len()
                    ))
                })?;
                events.push(Event {
                    id: id.clone(),
                    event_type: e.event_type.clone(),
                    actor_id: actor.to_owned(),
                    version,
                    data: e.data.clone(),
                    timestamp: e.timestamp.unwrap_or(now),
                    metadata: e.metadata.clone(),
                });
            }
            let commit = Commit {
                commit_id: rt.rng().uuid().to_string(),
                actor_id: actor.to_owned(),
                events,
            };
            match self.send_commit(actor, &subject, &commit, tip).await {
                Ok(ack) => {
                    let last_version = commit.last_version();
                    assert_eq!(
                        commit.first_version(),
                        tip.version + 1,
                        "contiguous versions"
                    );
                    assert!(
                        ack.sequence > tip.sequence,
                        "the broker stored a commit at sequence {} at or before the expected {}",
                        ack.sequence,
                        tip.sequence
                    );
                    self.set_hint(
                        actor,
                        Tip {
                            sequence: ack.sequence,
                            version: last_version,
                        },
                    );
                    self.notify(&commit.events).await;
                    return Ok(AppendOutcome {
                        commit_id: commit.commit_id,
                        sequence: ack.sequence,
                        events: commit.events,
                    });
                }
                Err(SendError::Moved { actual_sequence }) => {
                    // Someone else wrote first; nothing of ours is stored.
                    let mut tip = self.fetch_tip(actor, &subject).await?;
                    if tip.sequence < actual_sequence {
                        // The read was served by a replica that lags the leader.
                        tip = self
                            .confirm_tip(actor, &subject, tip, actual_sequence)
                            .await?;
                    }
                    if expected.matches(tip.version) {
                        // Still as expected: another writer won under `Any`, or the stream only
                        // moved by a record that carries no version (a damaged one). Nothing of
                        // ours is stored; try again at the new tip.
                        if races < self.inner.config.retry_max {
                            races += 1;
                            continue;
                        }
                        return Err(AppendError::Contended {
                            actor: actor.to_owned(),
                            attempts: races + 1,
                        });
                    }
                    return Err(ConflictError {
                        actor: actor.to_owned(),
                        expected,
                        actual: tip.version,
                    }
                    .into());
                }
                Err(SendError::Append(e)) => return Err(e),
            }
        }
    }

    /// Publishes one commit, retrying ambiguous failures with the same commit id.
    async fn send_commit(
        &self,
        actor: &str,
        subject: &str,
        commit: &Commit,
        tip: Tip,
    ) -> Result<AppendAck, SendError> {
        let payload = Bytes::from(codec::encode_commit(commit));
        let mut headers = Headers::new();
        headers.insert(HEADER_COMMIT_ID.into(), commit.commit_id.clone());
        headers.insert(
            HEADER_FIRST_VERSION.into(),
            commit.first_version().to_string(),
        );
        headers.insert(
            HEADER_LAST_VERSION.into(),
            commit.last_version().to_string(),
        );
        headers.insert(HEADER_FORMAT.into(), codec::COMMIT_FORMAT.to_string());
        let mut options = AppendOptions {
            expected_last_subject_sequence: Some(tip.sequence),
            message_id: Some(commit.commit_id.clone()),
        };
        // The size the broker counts: payload, our headers and the ones the options add.
        let size = wire_size(&headers, &payload, &options);
        let max = self.inner.config.commit_bytes_max;
        if size > max {
            return Err(SendError::Append(AppendError::TooLarge { size, max }));
        }
        if crate::planted!(self.inner.rt, append_without_expected_sequence) {
            options.expected_last_subject_sequence = None;
        }
        let config = &self.inner.config;
        let mut ambiguous: Option<BrokerError> = None;
        let mut delay = config.retry_delay;
        for _ in 0..=config.retry_max {
            let result = self
                .broker()
                .append(subject, headers.clone(), payload.clone(), options.clone())
                .await;
            match result {
                Ok(ack) => return Ok(ack),
                Err(BrokerError::WrongLastSequence { .. }) if ambiguous.is_some() => {
                    return self
                        .resolve_after_ambiguity(actor, subject, commit, tip)
                        .await;
                }
                Err(BrokerError::WrongLastSequence { actual, .. }) => {
                    return Err(SendError::Moved {
                        actual_sequence: actual,
                    });
                }
                Err(BrokerError::PayloadTooLarge { size, max }) => {
                    return Err(SendError::Append(AppendError::TooLarge { size, max }));
                }
                Err(e) if e.is_ambiguous() => {
                    tracing::debug!(commit = %commit.commit_id, error = %e, "append outcome unknown; retrying");
                    ambiguous = Some(e);
                    if crate::planted!(self.inner.rt, retry_with_fresh_commit_id) {
                        let fresh = self.inner.rt.rng().uuid().to_string();
                        options.message_id = Some(fresh.clone());
                        headers.insert(HEADER_COMMIT_ID.into(), fresh);
                    }
                    let jitter = self
                        .inner
                        .rt
                        .rng()
                        .duration_between(Duration::ZERO, delay / 2);
                    self.inner.rt.clock().sleep(delay + jitter).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(e) => {
                    return Err(SendError::Append(match ambiguous {
                        Some(_) => AppendError::Indeterminate {
                            commit_id: commit.commit_id.clone(),
                            source: e,
                        },
                        None => AppendError::Broker(e),
                    }));
                }
            }
        }
        Err(SendError::Append(AppendError::Indeterminate {
            commit_id: commit.commit_id.clone(),
            source: ambiguous.expect("the loop only ends after ambiguous failures"),
        }))
    }

    /// After an ambiguous attempt, the broker says the subject moved past `tip`: find out whether
    /// it moved because of our own first attempt — the record right after `tip`, asked of the
    /// stream leader, is either our commit or someone else's.
    async fn resolve_after_ambiguity(
        &self,
        actor: &str,
        subject: &str,
        commit: &Commit,
        tip: Tip,
    ) -> Result<AppendAck, SendError> {
        let next = self
            .broker()
            .next(
                &self.inner.events_stream,
                subject,
                tip.sequence + 1,
                ReadFrom::Leader,
            )
            .await
            .map_err(|e| {
                SendError::Append(AppendError::Indeterminate {
                    commit_id: commit.commit_id.clone(),
                    source: e,
                })
            })?;
        match next {
            Some(m)
                if decode_record(&m, Some(actor))
                    .is_ok_and(|c| c.commit_id == commit.commit_id) =>
            {
                Ok(AppendAck {
                    sequence: m.sequence,
                    duplicate: true,
                })
            }
            Some(m) => Err(SendError::Moved {
                actual_sequence: m.sequence,
            }),
            None => Err(SendError::Moved { actual_sequence: 0 }),
        }
    }

    async fn notify(&self, events: &[Event]) {
        if let Some(bus) = self.inner.bus.get() {
            let notes: Vec<Event> = events.iter().map(EventStored::notification).collect();
            if let Err(error) = bus.publish(&self.inner.config.namespace, &notes).await {
                // The events are stored; a lost notification is reported, not turned into a
                // failed append (the bus is at-most-once by design).
                tracing::warn!(%error, "EventStored notification not published");
            }
        }
    }

    /// Stores one event at its own version, which must be the actor's latest version + 1.
    ///
    /// # Errors
    /// As [`EventStore::append`]; [`AppendError::InvalidEvent`] for version 0.
    pub async fn save_event(&self, event: Event) -> Result<AppendOutcome, AppendError> {
        if event.version == 0 {
            return Err(AppendError::InvalidEvent(
                "event versions start at 1".to_owned(),
            ));
        }
        let actor = event.actor_id.clone();
        let expected = ExpectedVersion::Exact(event.version - 1);
        self.append(&actor, expected, vec![NewEvent::from(event)])
            .await
    }

    /// The actor's events with version `>= from_version`, in order.
    ///
    /// # Errors
    /// [`ReadError::Damaged`] for the first damaged record met (never skipped silently).
    pub async fn events(&self, actor: &str, from_version: u64) -> Result<Vec<Event>, ReadError> {
        let result = self.events_with_errors(actor, from_version).await?;
        match result.errors.into_iter().next() {
            Some(error) => Err(ReadError::Damaged(error)),
            None => Ok(result.events),
        }
    }

    /// The actor's valid events with version `>= from_version`, and every damaged record (with
    /// its stream sequence, raw bytes and cause) met on the way.
    ///
    /// # Errors
    /// Only for invalid names and broker failures; damage is reported in the result.
    pub async fn events_with_errors(
        &self,
        actor: &str,
        from_version: u64,
    ) -> Result<ReplayResult, ReadError> {
        let subject = self.event_subject(actor)?;
        self.replay(actor, &subject, from_version).await
    }

    async fn replay(
        &self,
        actor: &str,
        subject: &str,
        from_version: u64,
    ) -> Result<ReplayResult, ReadError> {
        let mut checker = ReplayChecker::new(actor, from_version);
        self.broker()
            .read_each(&self.inner.events_stream, subject, 1, |record| {
                checker.push(record)
            })
            .await?;
        // Read your writes, and never read backwards: a replica that lags behind what this
        // handle has appended or read before is caught up from the leader.
        if let Some(floor) = self.hint(actor) {
            while checker.last_sequence < floor.sequence {
                match self
                    .broker()
                    .next(
                        &self.inner.events_stream,
                        subject,
                        checker.last_sequence + 1,
                        ReadFrom::Leader,
                    )
                    .await?
                {
                    Some(record) => checker.push(record),
                    None => break,
                }
            }
        }
        if crate::planted!(self.inner.rt, skip_damaged_records) {
            checker.replay.errors.clear();
        }
        if checker.last_sequence > 0 {
            self.set_hint(actor, checker.tip());
        }
        Ok(checker.replay)
    }

    /// Up to `max_commits` commits of every actor of the namespace, in the order they were
    /// stored, starting at `from_position` (1 for the beginning): the feed for projections and
    /// other consumers that must see everything at least once (see [`crate::projection`]).
    /// Records that are not valid commits are reported in [`Page::errors`], not skipped silently.
    ///
    /// # Errors
    /// Broker failures.
    pub async fn read_all(
        &self,
        from_position: u64,
        max_commits: usize,
    ) -> Result<Page, ReadError> {
        let ns = &self.inner.config.namespace;
        let records = self
            .broker()
            .read_batch(
                &self.inner.events_stream,
                &format!("aether.ev.{ns}.*"),
                from_position.max(1),
                max_commits,
            )
            .await?;
        let prefix = format!("aether.ev.{ns}.");
        let mut page = Page {
            next_position: records
                .last()
                .map_or(from_position.max(1), |r| r.sequence + 1),
            ..Page::default()
        };
        for record in records {
            let subject_actor = record
                .subject
                .strip_prefix(&prefix)
                .and_then(|token| codec::decode_actor_id(token).ok());
            let commit = match decode_record(&record, subject_actor.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    page.errors.push(e);
                    continue;
                }
            };
            page.commits.push(StoredCommit {
                position: record.sequence,
                commit_id: commit.commit_id,
                actor_id: commit.actor_id,
                events: commit.events,
            });
        }
        Ok(page)
    }

    /// The actor's latest version (0 if it has no events), asked of the broker in one round trip.
    ///
    /// # Errors
    /// Broker failures; invalid names.
    pub async fn latest_version(&self, actor: &str) -> Result<u64, ReadError> {
        let subject = self.event_subject(actor)?;
        Ok(self.fetch_tip(actor, &subject).await?.version)
    }

    /// Stores a snapshot. It must not be ahead of the actor's stream nor older than the stored
    /// snapshot.
    ///
    /// # Errors
    /// [`SnapshotError::AheadOfStream`], [`SnapshotError::Stale`], [`SnapshotError::TooLarge`].
    pub async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), SnapshotError> {
        let subject = self.snapshot_subject(&snapshot.actor_id)?;
        let latest = self.latest_version(&snapshot.actor_id).await?;
        if snapshot.version > latest {
            return Err(SnapshotError::AheadOfStream {
                actor: snapshot.actor_id.clone(),
                version: snapshot.version,
                latest,
            });
        }
        let payload = Bytes::from(serde_json::to_vec(snapshot).expect("snapshots serialise"));
        if payload.len() > self.inner.config.commit_bytes_max {
            return Err(SnapshotError::TooLarge {
                size: payload.len(),
                max: self.inner.config.commit_bytes_max,
            });
        }
        for attempt in 0..=self.inner.config.retry_max {
            // A stale replica costs one rejected write; after one, ask the leader.
            let from = if attempt == 0 {
                ReadFrom::AnyReplica
            } else {
                ReadFrom::Leader
            };
            let current = self
                .broker()
                .last(&self.inner.snapshots_stream, &subject, from)
                .await?;
            let expected = match &current {
                Some(m) => {
                    if let Ok(existing) = serde_json::from_slice::<Snapshot>(&m.payload)
                        && existing.version > snapshot.version
                    {
                        return Err(SnapshotError::Stale {
                            existing: existing.version,
                            offered: snapshot.version,
                        });
                    }
                    m.sequence
                }
                None => 0,
            };
            let options = AppendOptions {
                expected_last_subject_sequence: Some(expected),
                message_id: None,
            };
            match self
                .broker()
                .append(&subject, Headers::new(), payload.clone(), options)
                .await
            {
                Ok(_) => return Ok(()),
                Err(BrokerError::WrongLastSequence { .. }) => continue,
                Err(BrokerError::PayloadTooLarge { size, max }) => {
                    return Err(SnapshotError::TooLarge { size, max });
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(BrokerError::Unavailable {
            reason: "snapshot kept losing races with concurrent writers".into(),
        }
        .into())
    }

    /// The actor's latest snapshot, or `None`.
    ///
    /// # Errors
    /// [`SnapshotError::Damaged`] when the stored snapshot cannot be decoded.
    pub async fn latest_snapshot(&self, actor: &str) -> Result<Option<Snapshot>, SnapshotError> {
        let subject = self.snapshot_subject(actor)?;
        let Some(message) = self
            .broker()
            .last(&self.inner.snapshots_stream, &subject, ReadFrom::AnyReplica)
            .await?
        else {
            return Ok(None);
        };
        let snapshot: Snapshot =
            serde_json::from_slice(&message.payload).map_err(|e| SnapshotError::Damaged {
                sequence: message.sequence,
                cause: e.to_string(),
            })?;
        if snapshot.actor_id != actor {
            return Err(SnapshotError::Damaged {
                sequence: message.sequence,
                cause: format!("snapshot belongs to actor {:?}", snapshot.actor_id),
            });
        }
        Ok(Some(snapshot))
    }
}

/// Snapshot storage, as the actor runtime needs it. [`EventStore`] implements it on its
/// snapshot stream; another implementation could keep snapshots elsewhere.
pub trait SnapshotStore: Send + Sync {
    /// Stores a snapshot (see [`EventStore::save_snapshot`]).
    fn save_snapshot(
        &self,
        snapshot: &Snapshot,
    ) -> impl std::future::Future<Output = Result<(), SnapshotError>> + Send;

    /// The actor's latest snapshot, or `None` (see [`EventStore::latest_snapshot`]).
    fn latest_snapshot(
        &self,
        actor: &str,
    ) -> impl std::future::Future<Output = Result<Option<Snapshot>, SnapshotError>> + Send;
}

impl<B: Broker, C: Clock> SnapshotStore for EventStore<B, C> {
    fn save_snapshot(
        &self,
        snapshot: &Snapshot,
    ) -> impl std::future::Future<Output = Result<(), SnapshotError>> + Send {
        EventStore::save_snapshot(self, snapshot)
    }

    fn latest_snapshot(
        &self,
        actor: &str,
    ) -> impl std::future::Future<Output = Result<Option<Snapshot>, SnapshotError>> + Send {
        EventStore::latest_snapshot(self, actor)
    }
}

enum SendError {
    /// The actor's stream moved past the expected tip; our commit is not stored. The broker
    /// named the subject's actual last sequence.
    Moved { actual_sequence: u64 },
    /// Anything else.
    Append(AppendError),
}

/// Checks one stored record of `actor`'s subject exactly as replay does, on its own: the body
/// must decode as a commit of `actor` and the headers must agree with it. (Replay further
/// requires the commit to continue the versions before it and its id to be new.) For tools and
/// checkers that inspect raw records.
///
/// # Errors
/// The [`ReplayError`] replay would report for this record.
pub fn check_record(record: &StoredMessage, actor: &str) -> Result<Commit, ReplayError> {
    decode_record(record, Some(actor))
}

/// Decodes one stored record as a commit of `actor` (the actor its subject names): a record that
/// is not a valid commit, names another actor, or whose headers disagree with its body is a
/// [`ReplayError`]. The body is the record; the headers only index it and are never trusted.
fn decode_record(record: &StoredMessage, actor: Option<&str>) -> Result<Commit, ReplayError> {
    let damaged = |cause: ReplayErrorCause| ReplayError {
        sequence: record.sequence,
        raw: record.payload.clone(),
        cause,
    };
    let commit = codec::decode_commit(&record.payload).map_err(|e| damaged(e.into()))?;
    if actor != Some(commit.actor_id.as_str()) {
        return Err(damaged(ReplayErrorCause::WrongActor {
            found: commit.actor_id,
        }));
    }
    let number = |header: &'static str, expected: u64| {
        let found = record.headers.get(header);
        match found.map(|v| v.parse::<u64>()) {
            Some(Ok(v)) if v == expected => Ok(()),
            _ => Err(damaged(ReplayErrorCause::HeaderMismatch {
                header,
                found: found.cloned(),
                expected: expected.to_string(),
            })),
        }
    };
    let text = |header: &'static str, expected: &str| {
        let found = record.headers.get(header);
        if found.map(String::as_str) == Some(expected) {
            Ok(())
        } else {
            Err(damaged(ReplayErrorCause::HeaderMismatch {
                header,
                found: found.cloned(),
                expected: expected.to_owned(),
            }))
        }
    };
    text(HEADER_COMMIT_ID, &commit.commit_id)?;
    number(HEADER_FIRST_VERSION, commit.first_version())?;
    number(HEADER_LAST_VERSION, commit.last_version())?;
    number(HEADER_FORMAT, u64::from(codec::COMMIT_FORMAT))?;
    Ok(commit)
}

/// Decodes and checks an actor's records one at a time, in stream order: each must be a valid
/// commit of this actor and continue the versions before it (a second copy of an earlier commit
/// cannot, and is reported as one). Pure, and incremental so that decoding overlaps the
/// transfer of later records; it can resume from a [`Tip`] checked earlier with the same
/// verdicts as a replay from the start.
struct ReplayChecker<'a> {
    actor: &'a str,
    from_version: u64,
    next_version: u64,
    seen: BTreeSet<String>,
    last_sequence: u64,
    replay: ReplayResult,
}

impl<'a> ReplayChecker<'a> {
    /// Checks a history from its start, keeping events of version `>= from_version`.
    fn new(actor: &'a str, from_version: u64) -> Self {
        Self::resume(actor, Tip::default(), from_version)
    }

    /// Checks what follows `tip`.
    fn resume(actor: &'a str, tip: Tip, from_version: u64) -> Self {
        Self {
            actor,
            from_version,
            next_version: tip.version + 1,
            seen: BTreeSet::new(),
            last_sequence: tip.sequence,
            replay: ReplayResult::default(),
        }
    }

    fn push(&mut self, record: StoredMessage) {
        // A read that overlaps what was already checked (a resumed read) adds nothing.
        if record.sequence <= self.last_sequence {
            return;
        }
        self.last_sequence = record.sequence;
        let commit = match decode_record(&record, Some(self.actor)) {
            Ok(c) => c,
            Err(e) => return self.replay.errors.push(e),
        };
        let damaged = |cause: ReplayErrorCause| ReplayError {
            sequence: record.sequence,
            raw: record.payload.clone(),
            cause,
        };
        if commit.first_version() != self.next_version {
            // A commit that does not continue the versions: a second copy of an earlier commit
            // (its id was seen), or anything else out of place. Whether a commit is valid never
            // depends on how much of the history was read: a handle that resumes from a tip
            // and one that replays from the start agree.
            let cause = if self.seen.contains(&commit.commit_id) {
                ReplayErrorCause::DuplicateCommit(commit.commit_id)
            } else {
                ReplayErrorCause::VersionGap {
                    expected: self.next_version,
                    found: commit.first_version(),
                }
            };
            return self.replay.errors.push(damaged(cause));
        }
        let Some(next_version) = commit.last_version().checked_add(1) else {
            return self
                .replay
                .errors
                .push(damaged(ReplayErrorCause::VersionOverflow(
                    commit.last_version(),
                )));
        };
        // Decoding guarantees contiguous versions inside the commit; the chain continues.
        assert!(next_version > self.next_version, "versions grow");
        self.next_version = next_version;
        self.seen.insert(commit.commit_id);
        let from = self.from_version;
        self.replay
            .events
            .extend(commit.events.into_iter().filter(|e| e.version >= from));
    }

    /// Where the checked stream ends: its last record and last valid version.
    fn tip(&self) -> Tip {
        Tip {
            sequence: self.last_sequence,
            version: self.next_version - 1,
        }
    }
}
