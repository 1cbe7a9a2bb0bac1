//! Appending: one commit per call, compare-and-set by the broker, ambiguous outcomes retried
//! under the same commit id and resolved by asking the stream leader.

use bytes::Bytes;

use super::deadline::InFlight;
use super::error::{AppendError, ConflictError, ReadError};
use super::replay::decode_record;
use super::tip::Tip;
use super::{EventStore, EventStored};
use crate::broker::{
    AppendAck, AppendOptions, Broker, BrokerError, Headers, ReadFrom, wire::wire_size,
};
use crate::clock::{Clock, Deadline, Elapsed};
use crate::codec::{
    self, Commit, HEADER_COMMIT_ID, HEADER_FIRST_VERSION, HEADER_FORMAT, HEADER_LAST_VERSION,
};
use crate::event::{Event, ExpectedVersion, Metadata, NewEvent};
use crate::retry::Backoff;
use crate::telemetry;
use crate::trace;

/// The longest wait between two attempts of an ambiguous append.
pub const RETRY_DELAY_MAX: std::time::Duration = std::time::Duration::from_secs(2);

/// What a successful append stored.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
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

impl<B: Broker, C: Clock> EventStore<B, C> {
    /// Appends `events` to `actor`'s stream as one commit: either all are stored, at versions
    /// `latest + 1 ..= latest + n`, or none is.
    ///
    /// # Errors
    /// [`AppendError::Conflict`] when the actor is not at `expected` (carrying the actual
    /// version); [`AppendError::Empty`], [`AppendError::InvalidName`],
    /// [`AppendError::InvalidEvent`] and [`AppendError::TooLarge`] for bad input (nothing is
    /// stored); [`AppendError::Indeterminate`] when the broker never answered definitely, or the
    /// store's deadline ([`StoreConfig::deadline`](super::StoreConfig::deadline)) passed while
    /// the commit's outcome was unknown; [`AppendError::DeadlineExceeded`] when it passed with
    /// nothing stored.
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
        self.append_keyed(actor, expected, events, None).await
    }

    /// [`EventStore::append`], under the caller's commit id if it gives one (see
    /// [`EventStore::append_with_commit_id`]).
    #[tracing::instrument(
        level = "debug",
        name = "aether.append",
        skip_all,
        fields(
            namespace = %self.inner.config.namespace,
            actor,
            ?expected,
            events = events.len(),
            keyed = key.is_some(),
            trace_id = trace::current().map(|c| tracing::field::display(c.trace_id())),
            commit_id = tracing::field::Empty,
            version = tracing::field::Empty,
            attempt = tracing::field::Empty,
            outcome = tracing::field::Empty,
        )
    )]
    pub(super) async fn append_keyed(
        &self,
        actor: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        key: Option<&str>,
    ) -> Result<AppendOutcome, AppendError> {
        let clock = self.inner.rt.clock();
        let started = clock.monotonic();
        let deadline = self.start_deadline();
        let in_flight = InFlight::default();
        // Boxed: kept off the caller's stack, which nests it in commands' futures.
        let work =
            Box::pin(self.append_within(actor, expected, events, key, &deadline, &in_flight));
        let result = match deadline.run(clock, work).await {
            Ok(Ok(outcome)) => {
                // Publishing on the bus never waits on the broker (it queues).
                self.notify(&outcome.events).await;
                Ok(outcome)
            }
            Ok(Err(e)) => Err(e),
            Err(Elapsed) => Err(in_flight.deadline_error(actor, &deadline)),
        };
        let outcome = append_outcome(&result);
        let span = tracing::Span::current();
        span.record("outcome", outcome);
        match &result {
            Ok(done) => {
                span.record("version", done.last_version());
                tracing::debug!(sequence = done.sequence, "appended");
            }
            Err(AppendError::Conflict(conflict)) => {
                tracing::debug!(actual = conflict.actual, "append conflicts")
            }
            Err(
                error @ (AppendError::Indeterminate { .. }
                | AppendError::Broker(_)
                | AppendError::Read(_)
                | AppendError::DeadlineExceeded(_)),
            ) => tracing::warn!(%error, "append failed"),
            Err(error) => tracing::debug!(%error, "append refused"),
        }
        let labels = [
            ("namespace", self.inner.config.namespace.clone()),
            ("outcome", outcome.to_owned()),
        ];
        metrics::counter!(telemetry::STORE_APPENDS, &labels).increment(1);
        metrics::histogram!(telemetry::STORE_APPEND_SECONDS, &labels).record(telemetry::seconds(
            clock.monotonic().saturating_sub(started),
        ));
        result
    }

    /// The append, retried and resolved within `deadline`; `in_flight` tells, at every moment,
    /// whether a commit whose outcome is unknown was sent.
    async fn append_within(
        &self,
        actor: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        key: Option<&str>,
        deadline: &Deadline,
        in_flight: &InFlight,
    ) -> Result<AppendOutcome, AppendError> {
        let subject = self.inner.names.event_subject(actor)?;
        if events.is_empty() {
            return Err(AppendError::Empty);
        }
        if let Some(bad) = events.iter().find(|e| e.event_type.is_empty()) {
            return Err(AppendError::InvalidEvent(format!(
                "event {:?} has an empty event type",
                bad.id
            )));
        }
        if let Some(bad) = events.iter().find(|e| e.schema_version == 0) {
            return Err(AppendError::InvalidEvent(format!(
                "event of type {:?} has schema version 0 (schema versions start at 1)",
                bad.event_type
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
        let cached = self
            .hint(actor)
            .is_some_and(|hint| expected.matches(hint.version));
        metrics::counter!(
            telemetry::STORE_TIP_CACHE,
            "namespace" => self.inner.config.namespace.clone(),
            "result" => if cached { "hit" } else { "miss" }
        )
        .increment(1);
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
                if let Some(found) = self.earlier_keyed(actor, &subject, key, expected).await? {
                    return Ok(found);
                }
                return Err(ConflictError {
                    actor: actor.to_owned(),
                    expected,
                    actual: tip.version,
                }
                .into());
            }
            let commit_id = match key {
                Some(key) => key.to_owned(),
                None => rt.rng().uuid().to_string(),
            };
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
                    metadata: traced(&e.metadata),
                    commit_id: commit_id.clone(),
                    schema_version: e.schema_version,
                });
            }
            let commit = Commit {
                commit_id,
                actor_id: actor.to_owned(),
                events,
            };
            let span = tracing::Span::current();
            span.record("commit_id", commit.commit_id.as_str());
            span.record("attempt", races + 1);
            let sent = self.send_commit(actor, &subject, &commit, tip, deadline, in_flight);
            match sent.await {
                Ok(ack) if key.is_some() && ack.duplicate => {
                    // The broker knows the key from an earlier commit: this one's, or another
                    // actor's that reused it.
                    return self.keyed_duplicate(actor, &subject, commit, ack).await;
                }
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
                    return Ok(AppendOutcome {
                        commit_id: commit.commit_id,
                        sequence: ack.sequence,
                        events: commit.events,
                    });
                }
                Err(SendError::Moved { actual_sequence })
                    if actual_sequence == 0
                        && tip.sequence > 0
                        && self.inner.config.retention.is_some()
                        && races < self.inner.config.retry_max =>
                {
                    // The server holds nothing for the actor: the record our tip points at
                    // expired (a remembered tip is otherwise never wrong). Continue from the
                    // later of it and the latest snapshot. Without this, every append to an
                    // actor idle for longer than the retention lost its "race" against a
                    // record that no longer exists (the replicated model's long elections
                    // let records expire under remembered tips).
                    races += 1;
                    self.tip_after_expiry(actor, &subject, tip).await?;
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
                    if let Some(found) = self.earlier_keyed(actor, &subject, key, expected).await? {
                        return Ok(found);
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

    /// A keyed append that conflicts with an exact expectation: the original outcome when the
    /// commit holding the next version carries the key (an earlier call stored it).
    async fn earlier_keyed(
        &self,
        actor: &str,
        subject: &str,
        key: Option<&str>,
        expected: ExpectedVersion,
    ) -> Result<Option<AppendOutcome>, AppendError> {
        let Some(key) = key else {
            return Ok(None);
        };
        let after = match expected {
            ExpectedVersion::Exact(v) => v,
            ExpectedVersion::NoStream => 0,
            ExpectedVersion::Any => return Ok(None),
        };
        // Whether the key's commit is stored is what this read answers: when it fails, the
        // outcome is unknown (an earlier attempt, of this call or another, may have stored it).
        self.keyed_outcome(actor, subject, key, after)
            .await
            .map_err(|e| keyed_unknown(key, e))
    }

    /// A keyed commit the broker acknowledged as a duplicate: the stored record under the
    /// acknowledged sequence is the original outcome when it is this actor's commit with the
    /// key; otherwise the key names another actor's commit.
    async fn keyed_duplicate(
        &self,
        actor: &str,
        subject: &str,
        commit: Commit,
        ack: AppendAck,
    ) -> Result<AppendOutcome, AppendError> {
        let record = self
            .broker()
            .next(
                &self.inner.events_stream,
                subject,
                ack.sequence,
                ReadFrom::Leader,
            )
            .await
            .map_err(|e| keyed_unknown(&commit.commit_id, ReadError::from(e)))?;
        match record
            .filter(|r| r.sequence == ack.sequence)
            .and_then(|r| decode_record(&r, Some(actor)).ok().map(|c| (r.sequence, c)))
        {
            Some((sequence, stored)) if stored.commit_id == commit.commit_id => Ok(AppendOutcome {
                commit_id: stored.commit_id,
                sequence,
                events: stored.events,
            }),
            _ => Err(AppendError::InvalidEvent(format!(
                "commit id {:?} already names a commit of another actor",
                commit.commit_id
            ))),
        }
    }

    /// Publishes one commit, retrying ambiguous failures with the same commit id while the next
    /// attempt can start before `deadline`. `in_flight` names the commit from its first attempt
    /// until a definite answer says it is not stored.
    async fn send_commit(
        &self,
        actor: &str,
        subject: &str,
        commit: &Commit,
        tip: Tip,
        deadline: &Deadline,
        in_flight: &InFlight,
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
        if crate::planted::planted!(self.inner.rt, append_without_expected_sequence) {
            options.expected_last_subject_sequence = None;
        }
        let config = &self.inner.config;
        let mut ambiguous: Option<BrokerError> = None;
        let mut backoff = Backoff::new(config.retry_delay, RETRY_DELAY_MAX);
        for _ in 0..=config.retry_max {
            in_flight.sent(&commit.commit_id);
            let result = self
                .broker()
                .append(subject, headers.clone(), payload.clone(), options.clone())
                .await;
            match result {
                Ok(ack) => return Ok(ack),
                Err(BrokerError::WrongLastSequence { actual, .. }) => {
                    // Usually another writer was first. But the refusal can come from a stream
                    // leader that no longer leads — one that just got its links back answers
                    // from its stale state while the real leader stores the commit (seen on a
                    // real 3-server cluster): the record after the tip says which.
                    if ambiguous.is_none() {
                        // A refusal of the only attempt: a deadline during the check below says
                        // nothing was stored, as it did before the check (a stale leader's
                        // refusal of a stored commit inside that window is not told apart).
                        in_flight.refused();
                    }
                    let resolved = self
                        .resolve_refusal(actor, subject, commit, tip, actual, ambiguous.is_some())
                        .await;
                    if let Err(SendError::Moved { .. }) = resolved {
                        in_flight.refused();
                    }
                    return resolved;
                }
                Err(BrokerError::PayloadTooLarge { size, max }) => {
                    return Err(SendError::Append(AppendError::TooLarge { size, max }));
                }
                Err(e) if e.is_ambiguous() => {
                    tracing::warn!(commit = %commit.commit_id, error = %e, "append outcome unknown; retrying");
                    metrics::counter!(
                        telemetry::STORE_APPEND_RETRIES,
                        "namespace" => self.inner.config.namespace.clone()
                    )
                    .increment(1);
                    ambiguous = Some(e.clone());
                    if crate::planted::planted!(self.inner.rt, retry_with_fresh_commit_id) {
                        let fresh = self.inner.rt.rng().uuid().to_string();
                        options.message_id = Some(fresh.clone());
                        headers.insert(HEADER_COMMIT_ID.into(), fresh);
                    }
                    let rt = &self.inner.rt;
                    if backoff
                        .wait_within(rt.clock(), rt.rng(), deadline)
                        .await
                        .is_err()
                    {
                        // The next attempt could not even start in time: the outcome stays
                        // unknown, as it would at the deadline, but the caller hears it now.
                        tracing::warn!(
                            commit = %commit.commit_id, actor, error = %e,
                            "append outcome unknown; no time left before the deadline to retry"
                        );
                        return Err(SendError::Append(AppendError::Indeterminate {
                            commit_id: commit.commit_id.clone(),
                            source: e,
                        }));
                    }
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

    /// The broker refused the commit as if the subject had moved past `tip` (its last sequence
    /// `actual`): find out whether it moved because of this very commit — the record right after
    /// `tip`, asked of the stream leader, is either our commit or someone else's. Someone else's
    /// means ours can never be stored (it expected `tip`).
    ///
    /// Our own commit there means the refusal was not the whole truth: after an ambiguous
    /// attempt, the first attempt was stored; without one, a stream leader that no longer leads
    /// answered from its stale state while the real one stored the commit.
    ///
    /// No record after `tip` while the broker says the subject moved means the answers
    /// disagree. After an ambiguous attempt that is a stream leader cut off from its followers:
    /// it counts a write it proposed but cannot commit yet (ours, perhaps), refuses the retry,
    /// and reads without it; the write commits once the leader hears from a follower again. Its
    /// fate is unknown, so the append is too: it must neither start over with a new commit nor
    /// report a conflict. Without an ambiguous attempt, it is the usual refusal of a stale tip
    /// (the caller reads the tip again).
    ///
    /// When the stream leader cannot be asked, the outcome is unknown either way.
    async fn resolve_refusal(
        &self,
        actor: &str,
        subject: &str,
        commit: &Commit,
        tip: Tip,
        actual: u64,
        after_ambiguity: bool,
    ) -> Result<AppendAck, SendError> {
        let moved = Err(SendError::Moved {
            actual_sequence: actual,
        });
        if !after_ambiguity && crate::planted::planted!(self.inner.rt, refusal_taken_at_its_word) {
            return moved;
        }
        let next = match self
            .broker()
            .next(
                &self.inner.events_stream,
                subject,
                tip.sequence + 1,
                ReadFrom::Leader,
            )
            .await
        {
            Ok(next) => next,
            // Unchecked, the refusal proves nothing: it may be a deposed leader's while the
            // real one stored the commit, so a conflict (nothing stored) cannot be claimed.
            Err(e) => {
                return Err(SendError::Append(AppendError::Indeterminate {
                    commit_id: commit.commit_id.clone(),
                    source: e,
                }));
            }
        };
        match next {
            Some(m)
                if decode_record(&m, Some(actor))
                    .is_ok_and(|c| c.commit_id == commit.commit_id) =>
            {
                if !after_ambiguity {
                    tracing::warn!(
                        commit = %commit.commit_id, actor, sequence = m.sequence,
                        "append refused as moved, yet stored: a stale stream leader answered"
                    );
                }
                Ok(AppendAck {
                    sequence: m.sequence,
                    duplicate: true,
                })
            }
            Some(m) => Err(SendError::Moved {
                actual_sequence: m.sequence.max(actual),
            }),
            // The subject is empty (its records expired): ours, which expected `tip`, cannot
            // be stored.
            None if actual == 0 => Err(SendError::Moved { actual_sequence: 0 }),
            None if after_ambiguity
                && !crate::planted::planted!(self.inner.rt, refusal_after_ambiguity_is_moved) =>
            {
                tracing::warn!(
                    commit = %commit.commit_id, actor, tip = tip.sequence, actual,
                    "append refused as moved, but nothing follows the tip: outcome unknown"
                );
                Err(SendError::Append(AppendError::Indeterminate {
                    commit_id: commit.commit_id.clone(),
                    source: BrokerError::WrongLastSequence {
                        expected: tip.sequence,
                        actual,
                    },
                }))
            }
            None => moved,
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
}

pub(super) enum SendError {
    /// The actor's stream moved past the expected tip; our commit is not stored. The broker
    /// named the subject's actual last sequence.
    Moved { actual_sequence: u64 },
    /// Anything else.
    Append(AppendError),
}

/// The `outcome` label of an append's result.
fn append_outcome(result: &Result<AppendOutcome, AppendError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(AppendError::Conflict(_)) => "conflict",
        Err(AppendError::Indeterminate { .. }) => "indeterminate",
        Err(AppendError::Contended { .. }) => "contended",
        Err(AppendError::DeadlineExceeded(_)) => "deadline",
        Err(
            AppendError::Empty
            | AppendError::InvalidName(_)
            | AppendError::InvalidEvent(_)
            | AppendError::TooLarge { .. },
        ) => "rejected",
        Err(_) => "error",
    }
}

/// An event's metadata with the trace and span ids of the running trace context, where the
/// caller did not set them: a stored event names the trace that wrote it.
fn traced(metadata: &Metadata) -> Metadata {
    let mut metadata = metadata.clone();
    if metadata.trace_id().is_none()
        && metadata.span_id().is_none()
        && let Some(context) = trace::current()
    {
        metadata.set_trace_id(context.trace_id());
        metadata.set_span_id(context.span_id());
    }
    metadata
}

/// A keyed append whose lookup of the key failed: whether a commit under the key is stored is
/// unknown.
fn keyed_unknown(key: &str, error: ReadError) -> AppendError {
    let source = match error {
        ReadError::Broker(e) => e,
        other => BrokerError::Unavailable {
            reason: other.to_string(),
        },
    };
    AppendError::Indeterminate {
        commit_id: key.to_owned(),
        source,
    }
}
