//! An [`ActorHost`]: the actors of one namespace on one node — loading (snapshot plus later
//! events), one command at a time per actor, appends at the exact version, reload on conflict,
//! snapshots and passivation.
//!
//! Longer than 800 lines on purpose, for now: one actor's life — load (with upcasting and the
//! window of keyed commits), decide, append, fold, snapshot — is one loop over one `Slot`, and
//! its pieces share that slot's invariants. The seam to split along next is the load and
//! snapshot half (`load`, `decode`, `decode_snapshot`, `save_snapshot`) into `load.rs`.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use tokio::sync::Mutex;

use super::remote::ServeGuard;
use super::{
    ActorConfig, ActorState, Aggregate, CommandContext, CommandError, CommandOutcome, Router,
    SingleNode,
};
use crate::broker::Broker;
use crate::clock::{Clock, Deadline, Elapsed, SystemClock};
use crate::event::AGGREGATE;
use crate::event::{CommitRange, Event, ExpectedVersion, NewEvent, Snapshot};
use crate::schema::{
    DecodeCause, DomainEvent, EventDecodeError, EventEncodeError, SnapshotSkip, Upcasters,
};
use crate::store::{AppendError, ConflictError, EventStore, ReadError, SnapshotError};
use crate::telemetry;
use crate::trace::{self, TraceContext};
use tracing::Instrument;

pub(super) struct Slot<A> {
    state: A,
    version: u64,
    snapshot_version: u64,
    /// The keyed commits most recently folded, oldest first (at most
    /// [`ActorConfig::recent_commits`]): where a repeated command key is found.
    recent: VecDeque<CommitRange>,
    loaded: bool,
    /// Loaded at least once since it came into memory (counts one activation).
    activated: bool,
    last_used: Duration,
}

pub(super) struct Inner<A, B, C, R> {
    pub(super) store: EventStore<B, C>,
    pub(super) router: R,
    pub(super) config: ActorConfig,
    pub(super) slots: StdMutex<BTreeMap<String, Arc<Mutex<Slot<A>>>>>,
    pub(super) commands: AtomicU64,
    pub(super) upcasters: Upcasters,
    pub(super) _aggregate: PhantomData<fn() -> A>,
}

impl<A> Slot<A> {
    fn empty(state: A) -> Self {
        Slot {
            state,
            version: 0,
            snapshot_version: 0,
            recent: VecDeque::new(),
            loaded: false,
            activated: false,
            last_used: Duration::ZERO,
        }
    }

    /// Records a commit just folded, keeping the newest `max`.
    fn remember(&mut self, commit: CommitRange, max: usize) {
        match self.recent.back_mut() {
            // Events of one commit folded one by one extend its range.
            Some(last) if last.commit_id == commit.commit_id => {
                last.last_version = commit.last_version
            }
            _ => self.recent.push_back(commit),
        }
        while self.recent.len() > max {
            self.recent.pop_front();
        }
    }

    fn recent_commit(&self, key: &str) -> Option<&CommitRange> {
        self.recent.iter().rev().find(|c| c.commit_id == key)
    }
}

/// Hosts aggregates of type `A` of one namespace on one node. Cheap to clone.
pub struct ActorHost<A, B, C = SystemClock, R = SingleNode> {
    pub(super) inner: Arc<Inner<A, B, C, R>>,
    pub(super) serving: Arc<ServeGuard>,
}

impl<A, B, C, R> Clone for ActorHost<A, B, C, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            serving: self.serving.clone(),
        }
    }
}

impl<A: Aggregate, B: Broker, C: Clock, R: Router> ActorHost<A, B, C, R> {
    /// A host executing commands against `store`, owning what `router` says.
    ///
    /// # Panics
    /// When [`Aggregate::NAME`] is not a subject token (`A-Z a-z 0-9 - _`, 1..=64 characters):
    /// a constant of the code, so a bug, caught on the first host made.
    pub fn new(store: EventStore<B, C>, router: R, config: ActorConfig) -> Self {
        let valid = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        assert!(
            !A::NAME.is_empty() && A::NAME.len() <= 64 && A::NAME.chars().all(valid),
            "Aggregate::NAME {:?} must be 1..=64 characters of A-Z a-z 0-9 - _",
            A::NAME
        );
        Self {
            inner: Arc::new(Inner {
                store,
                router,
                config,
                slots: StdMutex::new(BTreeMap::new()),
                commands: AtomicU64::new(0),
                upcasters: A::upcasters(),
                _aggregate: PhantomData,
            }),
            serving: Arc::new(ServeGuard::default()),
        }
    }

    /// The store.
    pub fn store(&self) -> &EventStore<B, C> {
        &self.inner.store
    }

    /// How many actors are in memory.
    pub fn active_actors(&self) -> usize {
        self.lock_slots().len()
    }

    /// The actor's current state and version, read from the store: from the actor in memory
    /// when it is current (one round trip to check), else by loading it (its latest snapshot
    /// plus later events). Works on any node; it changes nothing and does not activate the
    /// actor.
    ///
    /// # Errors
    /// `Read` or `Snapshot` when loading fails.
    pub async fn state(&self, actor_id: &str) -> Result<ActorState<A>, CommandError<A::Rejection>> {
        let active = self.lock_slots().get(actor_id).cloned();
        if let Some(slot) = active {
            let slot = slot.lock().await;
            if slot.loaded && self.inner.store.latest_version(actor_id).await? == slot.version {
                return Ok(ActorState {
                    state: clone_state(&slot.state),
                    version: slot.version,
                });
            }
        }
        let mut slot = Slot::empty(A::default());
        self.load(actor_id, &mut slot).await?;
        Ok(ActorState {
            state: slot.state,
            version: slot.version,
        })
    }

    fn lock_slots(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<Mutex<Slot<A>>>>> {
        self.inner.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now(&self) -> Duration {
        self.inner.store.runtime().clock().monotonic()
    }

    /// Executes a command on this node, which must own the actor.
    ///
    /// # Errors
    /// [`CommandError::NotOwner`] when the router names another owner; `Rejected` for a domain
    /// refusal; `Append` when the append still conflicts after `conflict_retry_max` reloads.
    ///
    /// # Cancel safety
    /// Not cancel safe: a cancelled command may or may not have been stored.
    pub async fn execute(
        &self,
        actor_id: &str,
        command: &A::Command,
    ) -> Result<CommandOutcome, CommandError<A::Rejection>> {
        self.execute_with(actor_id, command, None).await
    }

    /// [`execute`](Self::execute) under an idempotency key: the command's commit is stored
    /// under `key` (its events get ids `key`, `key#1`, `key#2` …), and a command with a key
    /// the actor already stored is not decided again — the answer is the earlier command's
    /// outcome, flagged [`CommandOutcome::deduplicated`].
    ///
    /// The key is recognised among the actor's last [`ActorConfig::recent_commits`] commits
    /// (kept in memory and in its snapshots, so passivation, restarts and retention do not
    /// forget them) and, beyond those, by the store as
    /// [`EventStore::append_with_commit_id`] describes (the broker's deduplication window).
    /// A key names one commit in the whole namespace: reuse one only to retry.
    ///
    /// # Errors
    /// As [`execute`](Self::execute); [`CommandError::InvalidKey`] for a key that is not a
    /// valid commit id.
    pub async fn execute_keyed(
        &self,
        actor_id: &str,
        command: &A::Command,
        key: &str,
    ) -> Result<CommandOutcome, CommandError<A::Rejection>> {
        check_key(key)?;
        self.execute_with(actor_id, command, Some(key)).await
    }

    pub(super) async fn execute_with(
        &self,
        actor_id: &str,
        command: &A::Command,
        key: Option<&str>,
    ) -> Result<CommandOutcome, CommandError<A::Rejection>> {
        let rt = self.inner.store.runtime();
        // This command's span in the caller's trace (a sender's `traceparent`, or the
        // application's scope), or the first span of a new trace.
        let context = trace::next_span(rt.rng());
        let namespace = self.inner.store.namespace();
        let span = tracing::debug_span!(
            "aether.command",
            namespace = %namespace,
            actor = actor_id,
            node = %rt.node_id(),
            trace_id = %context.trace_id(),
            span_id = %context.span_id(),
            aggregate = A::NAME,
            key = key,
            version = tracing::field::Empty,
            attempts = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        let deadline = Deadline::after(rt.clock(), self.inner.config.deadline);
        let (result, outcome) = self
            .observed(
                actor_id,
                context,
                &span,
                &deadline,
                (telemetry::ACTOR_COMMANDS, telemetry::ACTOR_COMMAND_SECONDS),
                self.execute_here(actor_id, command, key, &deadline),
            )
            .await;
        if let Ok(done) = &result {
            span.record("version", done.version);
        }
        let _entered = span.enter();
        match &result {
            Ok(done) => tracing::debug!(version = done.version, "command executed"),
            Err(CommandError::Rejected(_) | CommandError::NotOwner { .. }) => {
                tracing::debug!(outcome, "command not executed")
            }
            Err(error) => tracing::warn!(%error, outcome, "command failed"),
        }
        result
    }

    /// Runs a command's `work` in `span` and trace `context`, within the command deadline;
    /// records its outcome on the span and in the `(counter, histogram)` metrics. What
    /// [`execute`](Self::execute) and [`send`](Self::send) share.
    pub(super) async fn observed(
        &self,
        actor_id: &str,
        context: TraceContext,
        span: &tracing::Span,
        deadline: &Deadline,
        (counter, histogram): (&'static str, &'static str),
        work: impl Future<Output = Result<CommandOutcome, CommandError<A::Rejection>>>,
    ) -> (
        Result<CommandOutcome, CommandError<A::Rejection>>,
        &'static str,
    ) {
        let clock = self.inner.store.runtime().clock();
        let started = clock.monotonic();
        // Boxed: a sent command's future nests a local command's, which nests the store's; on
        // the caller's stack they overflowed a 2 MiB test thread in debug builds.
        let work = Box::pin(work.instrument(span.clone()));
        let result = trace::scope(context, deadline.run(clock, work))
            .await
            .unwrap_or_else(|Elapsed| {
                Err(CommandError::DeadlineExceeded {
                    actor: actor_id.to_owned(),
                    deadline: deadline.limit(),
                })
            });
        let outcome = command_outcome(&result);
        span.record("outcome", outcome);
        let labels = [
            ("namespace", self.inner.store.namespace().to_owned()),
            ("outcome", outcome.to_owned()),
        ];
        metrics::counter!(counter, &labels).increment(1);
        metrics::histogram!(histogram, &labels).record(telemetry::seconds(
            clock.monotonic().saturating_sub(started),
        ));
        (result, outcome)
    }

    async fn execute_here(
        &self,
        actor_id: &str,
        command: &A::Command,
        key: Option<&str>,
        deadline: &Deadline,
    ) -> Result<CommandOutcome, CommandError<A::Rejection>> {
        let rt = self.inner.store.runtime();
        let me = rt.node_id();
        let ownership = self.inner.router.ownership(actor_id);
        let epoch = match ownership {
            Some(o) if o.owner == *me => o.epoch,
            // Planted bug: decide whatever the router says.
            _ if crate::planted::planted!(rt, host_skips_owner_check) => None,
            other => {
                return Err(CommandError::NotOwner {
                    actor: actor_id.to_owned(),
                    owner: other
                        .map(|o| o.owner)
                        .or_else(|| self.inner.router.owner_of(actor_id)),
                });
            }
        };
        self.maybe_passivate();
        let (slot, active) = {
            let mut slots = self.lock_slots();
            let slot = slots
                .entry(actor_id.to_owned())
                .or_insert_with(|| Arc::new(Mutex::new(Slot::empty(A::default()))))
                .clone();
            (slot, slots.len())
        };
        metrics::gauge!(
            telemetry::ACTOR_ACTIVE,
            "namespace" => self.inner.store.namespace().to_owned(),
            "node" => rt.node_id().to_string()
        )
        .set(active as f64);
        let mut slot = slot.lock().await;
        slot.last_used = self.now();
        let store = &self.inner.store;
        let mut attempt = 0;
        loop {
            if !slot.loaded {
                if !slot.activated {
                    slot.activated = true;
                    metrics::counter!(
                        telemetry::ACTOR_ACTIVATIONS,
                        "namespace" => store.namespace().to_owned()
                    )
                    .increment(1);
                }
                self.load(actor_id, &mut slot).await?;
            }
            // A key this actor already stored: that command's outcome, nothing decided.
            if let Some(stored) = key.and_then(|key| slot.recent_commit(key)).cloned() {
                return Ok(self.deduplicated(actor_id, &slot, stored).await);
            }
            let ctx = CommandContext {
                actor_id,
                version: slot.version,
                node_id: me,
                epoch,
                now: rt.clock().wall(),
                key,
            };
            let decided = match command_events(&slot.state, &ctx, command) {
                Ok(events) => events,
                // A refusal is only as good as the state it was decided on. A cached state may
                // be stale (another writer appended), and so may a fresh load answered by a
                // lagging replica; an append would catch that, a refusal would not — so confirm
                // the version with the stream leader before refusing.
                Err(rejection) => {
                    let current = store.current_version(actor_id).await?;
                    if current == slot.version {
                        return Err(rejection);
                    }
                    if attempt >= self.inner.config.conflict_retry_max {
                        // The actor kept moving under the decision: as for an append.
                        return Err(AppendError::Conflict(ConflictError {
                            actor: actor_id.to_owned(),
                            expected: ExpectedVersion::Exact(slot.version),
                            actual: current,
                        })
                        .into());
                    }
                    attempt += 1;
                    slot.loaded = false;
                    continue;
                }
            };
            if decided.is_empty() {
                return Ok(self.outcome(actor_id, slot.version, Vec::new()));
            }
            let (events, decided) = self.encode_events(&decided, key)?;
            let expected = if crate::planted::planted!(rt, host_appends_with_any) {
                ExpectedVersion::Any
            } else {
                ExpectedVersion::Exact(slot.version)
            };
            // Not loaded until the outcome is applied: a command abandoned mid-append (at its
            // deadline) may have stored its events, so whoever takes the actor next — a queued
            // command, the next one — reloads it instead of deciding on a state that may be
            // behind.
            slot.loaded = false;
            let appended = match key {
                Some(key) => {
                    store
                        .append_with_commit_id(actor_id, expected, events, key)
                        .await
                }
                None => store.append(actor_id, expected, events).await,
            };
            match appended {
                Ok(stored) if stored.first_version() != slot.version + 1 => {
                    // The store answered a keyed append with the commit already stored under
                    // the key, elsewhere in the stream than the state in memory knows. That
                    // commit is the answer; the actor is reloaded by the next command (a
                    // reload failing now would report a stored command as failed).
                    tracing::debug!(
                        key = %stored.commit_id,
                        "command key already stored: answering with that commit"
                    );
                    metrics::counter!(
                        telemetry::ACTOR_DEDUPLICATED,
                        "namespace" => store.namespace().to_owned()
                    )
                    .increment(1);
                    let mut outcome = self.outcome(actor_id, stored.last_version(), stored.events);
                    outcome.deduplicated = true;
                    return Ok(outcome);
                }
                Ok(stored) => {
                    if key.is_some() {
                        // The stored commit may be an earlier attempt's (found by its key),
                        // decided on the same version but perhaps otherwise: fold what is
                        // stored, not what was decided now.
                        let typed: Result<Vec<A::Event>, _> =
                            stored.events.iter().map(|e| self.decode(e)).collect();
                        match typed {
                            Ok(events) => events.iter().for_each(|e| slot.state.apply(e)),
                            // Stored all the same: the answer is the commit, and the next
                            // command's load reports what does not decode.
                            Err(error) => {
                                tracing::warn!(%error, "a stored commit does not decode");
                                return Ok(self.outcome(
                                    actor_id,
                                    stored.last_version(),
                                    stored.events,
                                ));
                            }
                        }
                    } else {
                        for event in &decided {
                            slot.state.apply(event);
                        }
                    }
                    if key.is_some() {
                        slot.remember(
                            CommitRange {
                                commit_id: stored.commit_id.clone(),
                                first_version: stored.first_version(),
                                last_version: stored.last_version(),
                            },
                            self.inner.config.recent_commits,
                        );
                    }
                    slot.version = stored.last_version();
                    slot.loaded = true;
                    // Best effort, and never past the command's deadline: the command is done.
                    let snapshot = self.maybe_snapshot(actor_id, &mut slot, stored.sequence);
                    if deadline.run(rt.clock(), snapshot).await.is_err() {
                        tracing::debug!("snapshot skipped: the command's deadline passed");
                    }
                    return Ok(self.outcome(actor_id, slot.version, stored.events));
                }
                Err(AppendError::Conflict(conflict))
                    if attempt < self.inner.config.conflict_retry_max =>
                {
                    tracing::debug!(%conflict, attempt, "reloading actor after a conflict");
                    attempt += 1;
                    tracing::Span::current().record("attempts", attempt + 1);
                    if crate::planted::planted!(rt, host_retries_without_reload) {
                        // Planted bug: a lost update — decide again on the stale state, at the
                        // version the conflict reported.
                        slot.version = conflict.actual;
                        slot.loaded = true;
                        continue;
                    }
                    slot.loaded = false;
                }
                Err(e) => {
                    slot.loaded = false; // we no longer know where the stream is
                    return Err(e.into());
                }
            }
        }
    }

    fn outcome(&self, actor_id: &str, version: u64, events: Vec<Event>) -> CommandOutcome {
        CommandOutcome {
            actor_id: actor_id.to_owned(),
            version,
            events,
            node_id: self.inner.store.runtime().node_id().clone(),
            deduplicated: false,
        }
    }

    /// The outcome of the earlier command stored as `commit`: its events (those still kept)
    /// and the version it left the actor at.
    async fn deduplicated(
        &self,
        actor_id: &str,
        slot: &Slot<A>,
        commit: CommitRange,
    ) -> CommandOutcome {
        tracing::debug!(
            key = %commit.commit_id,
            first = commit.first_version,
            last = commit.last_version,
            "command key already stored: answering with that commit"
        );
        metrics::counter!(
            telemetry::ACTOR_DEDUPLICATED,
            "namespace" => self.inner.store.namespace().to_owned()
        )
        .increment(1);
        debug_assert!(slot.version >= commit.last_version);
        // The answer is the commit; its events are a courtesy. Reading them must not turn a
        // command that was stored into an error (they may have expired, the broker may fail).
        let events = match self
            .inner
            .store
            .commit_at(actor_id, &commit.commit_id, commit.first_version)
            .await
        {
            Ok(Some(found)) => found.events,
            Ok(None) => {
                tracing::debug!("the earlier command's events are no longer kept");
                Vec::new()
            }
            Err(error) => {
                tracing::warn!(%error, "the earlier command's events could not be read");
                Vec::new()
            }
        };
        let mut outcome = self.outcome(actor_id, commit.last_version, events);
        outcome.deduplicated = true;
        outcome
    }

    /// Loads an actor: its latest snapshot, then every later event.
    async fn load(
        &self,
        actor_id: &str,
        slot: &mut Slot<A>,
    ) -> Result<(), CommandError<A::Rejection>> {
        let store = &self.inner.store;
        let snapshot = store.latest_snapshot(actor_id).await?;
        let decoded = snapshot.as_ref().and_then(|snapshot| {
            self.decode_snapshot(snapshot)
                .map(|state| (state, snapshot))
        });
        let max = self.inner.config.recent_commits;
        slot.recent.clear();
        let (mut state, mut version, events) = match decoded {
            // Only what follows the snapshot is read.
            Some((state, snapshot)) => {
                for commit in &snapshot.recent_commits {
                    slot.remember(commit.clone(), max);
                }
                (state, snapshot.version, store.events_after(snapshot).await?)
            }
            None => (A::default(), 0, store.events(actor_id, 1).await?),
        };
        slot.snapshot_version = version;
        for event in events {
            assert_eq!(event.version, version + 1, "replay is contiguous");
            state.apply(&self.decode(&event)?);
            version = event.version;
            // A keyed command's first event carries the key as its id (and its commit id);
            // its later events extend the range. Unkeyed commits are not remembered: no key
            // can name them.
            let keyed = event.id == event.commit_id
                || slot
                    .recent
                    .back()
                    .is_some_and(|last| last.commit_id == event.commit_id);
            if keyed {
                slot.remember(
                    CommitRange {
                        commit_id: event.commit_id,
                        first_version: version,
                        last_version: version,
                    },
                    max,
                );
            }
        }
        slot.state = state;
        slot.version = version;
        slot.loaded = true;
        // Under retention, events past the snapshot (e.g. of an append whose reply was lost)
        // get a snapshot now, before they can expire with nothing covering them. The store
        // finds the stream position from the tip this load read.
        if store.config().retention.is_some() && slot.version > slot.snapshot_version {
            self.save_snapshot(actor_id, slot, 0).await;
        }
        Ok(())
    }

    /// A stored event as this aggregate's event: refused when another aggregate type's host
    /// stored it, else upcast and decoded.
    fn decode(&self, event: &Event) -> Result<A::Event, EventDecodeError> {
        if let Some(found) = event.metadata.get(AGGREGATE)
            && found != A::NAME
        {
            return Err(EventDecodeError {
                actor_id: event.actor_id.clone(),
                version: event.version,
                event_type: event.event_type.clone(),
                schema_version: event.schema_version,
                cause: DecodeCause::OtherAggregate {
                    found: found.to_owned(),
                    expected: A::NAME.to_owned(),
                },
            });
        }
        self.inner.upcasters.decode(event)
    }

    /// The decided events as the store takes them — stamped with the aggregate type; under a
    /// key, with ids derived from it (`key`, `key#1`, `key#2` …, `#` being outside the key
    /// alphabet), so that a retried command's events carry the same ids — and as they will
    /// read back: what the state folds. An event whose encoded form does not decode to itself
    /// (a serde representation other than the default enum one, a value JSON cannot hold)
    /// would fold one way now and another on the next load: it is refused here.
    fn encode_events(
        &self,
        decided: &[A::Event],
        key: Option<&str>,
    ) -> Result<Encoded<A>, CommandError<A::Rejection>> {
        let mut encoded = Vec::with_capacity(decided.len());
        let mut folded = Vec::with_capacity(decided.len());
        for (i, event) in decided.iter().enumerate() {
            let new = event.encode()?.with_metadata(AGGREGATE, A::NAME);
            let back = A::Event::decode(&new.event_type, &new.data).map_err(|e| {
                EventEncodeError(format!(
                    "event of type {:?} does not decode from what it encodes to ({}): {e}",
                    new.event_type, new.data
                ))
            })?;
            folded.push(back);
            encoded.push(match key {
                Some(key) if i == 0 => new.with_id(key),
                Some(key) => new.with_id(format!("{key}#{i}")),
                None => new,
            });
        }
        Ok((encoded, folded))
    }

    /// The state a snapshot holds, lifted to [`Aggregate::STATE_VERSION`] — or `None` (logged
    /// and counted) when it cannot be used: the events are the truth, the actor replays them.
    fn decode_snapshot(&self, snapshot: &Snapshot) -> Option<A> {
        let lifted = self
            .inner
            .upcasters
            .upcast_snapshot(
                snapshot.schema_version,
                A::STATE_VERSION,
                snapshot.state.clone(),
            )
            .and_then(|state| {
                serde_json::from_value::<A>(state).map_err(|error| {
                    tracing::warn!(actor = %snapshot.actor_id, %error, "snapshot state does not decode");
                    SnapshotSkip::Undecodable
                })
            });
        match lifted {
            Ok(state) => Some(state),
            Err(skip) => {
                tracing::warn!(
                    actor = %snapshot.actor_id,
                    version = snapshot.version,
                    stored_schema = snapshot.schema_version,
                    current_schema = A::STATE_VERSION,
                    reason = skip.label(),
                    "snapshot skipped: replaying the actor's events instead"
                );
                metrics::counter!(
                    telemetry::ACTOR_SNAPSHOTS_SKIPPED,
                    "namespace" => self.inner.store.namespace().to_owned(),
                    "reason" => skip.label()
                )
                .increment(1);
                None
            }
        }
    }

    /// Saves a snapshot when `snapshot_every` events passed since the last one — after every
    /// command that wrote events when the store has retention (an event is safe from expiry
    /// only once a snapshot covers it); `sequence` is the stream position of the commit that
    /// ends at the slot's version.
    async fn maybe_snapshot(&self, actor_id: &str, slot: &mut Slot<A>, sequence: u64) {
        let every = match self.inner.store.config().retention {
            Some(_) => 1,
            None => self.inner.config.snapshot_every,
        };
        if every == 0 || slot.version - slot.snapshot_version < every {
            return;
        }
        self.save_snapshot(actor_id, slot, sequence).await;
    }

    /// Saves a snapshot of the slot (`sequence` 0: the store finds the stream position).
    async fn save_snapshot(&self, actor_id: &str, slot: &mut Slot<A>, sequence: u64) {
        let mut snapshot = Snapshot::new(
            actor_id,
            slot.version,
            serde_json::to_value(&slot.state).expect("aggregate state serialises"),
        )
        .with_schema_version(A::STATE_VERSION);
        snapshot.recent_commits = slot.recent.iter().cloned().collect();
        if sequence > 0 {
            snapshot = snapshot.at_sequence(sequence);
        }
        match self.inner.store.save_snapshot(&snapshot).await {
            Ok(()) => slot.snapshot_version = slot.version,
            // A failed snapshot costs only replay time later.
            Err(error) => tracing::warn!(actor = actor_id, %error, "snapshot not saved"),
        }
    }

    /// Drops idle actors (and the least recently used beyond `actors_max`) every 64 commands.
    fn maybe_passivate(&self) {
        if !self
            .inner
            .commands
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(64)
        {
            return;
        }
        self.passivate_idle();
    }

    /// Drops from memory every actor idle for longer than `idle_timeout`, then the least
    /// recently used ones while more than `actors_max` remain. Actors busy with a command stay.
    pub fn passivate_idle(&self) {
        let now = self.now();
        let idle = self.inner.config.idle_timeout;
        let mut slots = self.lock_slots();
        let before = slots.len();
        let mut by_use: Vec<(Duration, String)> = Vec::new();
        slots.retain(|actor, slot| match slot.try_lock() {
            Ok(s) if now.saturating_sub(s.last_used) > idle => false,
            Ok(s) => {
                by_use.push((s.last_used, actor.clone()));
                true
            }
            Err(_) => true, // busy
        });
        if slots.len() > self.inner.config.actors_max {
            by_use.sort();
            let excess = slots.len() - self.inner.config.actors_max;
            for (_, actor) in by_use.into_iter().take(excess) {
                slots.remove(&actor);
            }
        }
        let namespace = self.inner.store.namespace().to_owned();
        let dropped = before - slots.len();
        if dropped > 0 {
            tracing::debug!(
                namespace,
                dropped,
                active = slots.len(),
                "actors passivated"
            );
        }
        metrics::counter!(telemetry::ACTOR_PASSIVATIONS, "namespace" => namespace.clone())
            .increment(dropped as u64);
        metrics::gauge!(
            telemetry::ACTOR_ACTIVE,
            "namespace" => namespace,
            "node" => self.inner.store.runtime().node_id().to_string()
        )
        .set(slots.len() as f64);
    }
}

/// Decided events as the store takes them, and as they read back.
type Encoded<A> = (Vec<NewEvent>, Vec<<A as Aggregate>::Event>);

/// A copy of an aggregate's state through its serialised form (aggregates need not be
/// `Clone`; they are always `Serialize + DeserializeOwned`).
fn clone_state<A: Aggregate>(state: &A) -> A {
    serde_json::from_value(serde_json::to_value(state).expect("aggregate state serialises"))
        .expect("aggregate state deserialises from its own serialisation")
}

fn command_events<A: Aggregate>(
    state: &A,
    ctx: &CommandContext<'_>,
    command: &A::Command,
) -> Result<Vec<A::Event>, CommandError<A::Rejection>> {
    state.handle(ctx, command).map_err(CommandError::Rejected)
}

/// Checks a command key: the rules of a commit id.
pub(super) fn check_key<R: std::fmt::Debug>(key: &str) -> Result<(), CommandError<R>> {
    let valid = |c: char| c.is_ascii_alphanumeric() || "-_.:/".contains(c);
    if key.is_empty() || key.len() > crate::store::COMMIT_ID_MAX || !key.chars().all(valid) {
        return Err(CommandError::InvalidKey(key.to_owned()));
    }
    Ok(())
}

/// The `outcome` label of a command's result.
fn command_outcome<R: std::fmt::Debug>(
    result: &Result<CommandOutcome, CommandError<R>>,
) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(CommandError::Rejected(_)) => "rejected",
        Err(CommandError::NotOwner { .. }) => "not_owner",
        Err(CommandError::Unroutable { .. }) => "unroutable",
        Err(CommandError::Timeout { .. }) => "timeout",
        Err(
            CommandError::DeadlineExceeded { .. }
            | CommandError::Append(AppendError::DeadlineExceeded(_))
            | CommandError::Read(ReadError::DeadlineExceeded(_))
            | CommandError::Snapshot(SnapshotError::DeadlineExceeded(_)),
        ) => "deadline",
        Err(CommandError::Append(AppendError::Conflict(_))) => "conflict",
        Err(_) => "error",
    }
}
