//! Reading: replay of one actor (every record checked, damage reported, never skipped) and
//! pages of a whole namespace in commit order.

use std::collections::BTreeSet;

use super::EventStore;
use super::error::{ReadError, ReplayError, ReplayErrorCause};
use super::tip::Tip;
use crate::broker::{Broker, ReadFrom, StoredMessage};
use crate::clock::Clock;
use crate::codec::{
    self, Commit, HEADER_COMMIT_ID, HEADER_FIRST_VERSION, HEADER_FORMAT, HEADER_LAST_VERSION,
};
use crate::event::{Event, Snapshot};
use crate::telemetry;

/// Events read back along with every damaged record met on the way.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct ReplayResult {
    /// The valid events, in version order.
    pub events: Vec<Event>,
    /// The damaged records, in stream order.
    pub errors: Vec<ReplayError>,
    /// Under retention, the oldest version still stored when older ones expired (`None`: the
    /// history is whole, or only what follows a snapshot was read).
    pub expired_before: Option<u64>,
}

/// One commit read from a namespace's whole stream, with its position.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
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
#[non_exhaustive]
pub struct Page {
    /// Valid commits, in position order.
    pub commits: Vec<StoredCommit>,
    /// Damaged records met on the way (never skipped silently).
    pub errors: Vec<ReplayError>,
    /// Where the next page starts (one past the last record read; unchanged when the page is
    /// empty).
    pub next_position: u64,
}

impl<B: Broker, C: Clock> EventStore<B, C> {
    /// The actor's events with version `>= from_version`, in order.
    ///
    /// # Errors
    /// [`ReadError::Damaged`] for the first damaged record met (never skipped silently);
    /// [`ReadError::Expired`] when versions from `from_version` on expired under the store's
    /// retention; [`ReadError::DeadlineExceeded`] past
    /// [`StoreConfig::deadline`](super::StoreConfig::deadline).
    #[tracing::instrument(level = "debug", name = "aether.read", skip_all, fields(namespace = %self.inner.config.namespace, actor, from = from_version, op = "events", events = tracing::field::Empty), err(level = "debug"))]
    pub async fn events(&self, actor: &str, from_version: u64) -> Result<Vec<Event>, ReadError> {
        let operation = || format!("events of actor {actor:?}");
        self.bounded(operation, self.read_events(actor, from_version))
            .await
    }

    async fn read_events(&self, actor: &str, from_version: u64) -> Result<Vec<Event>, ReadError> {
        let subject = self.inner.names.event_subject(actor)?;
        let result = self.replay(actor, &subject, from_version).await?;
        into_events(actor, from_version, result)
    }

    /// The actor's events after `snapshot`, reading only what follows the stream position the
    /// snapshot records (the whole history when it records none): what loading an actor costs
    /// with a snapshot is the events since it, however long the history before.
    ///
    /// # Errors
    /// As [`EventStore::events`]; damage before the snapshot's position is not read, so not
    /// reported.
    #[tracing::instrument(level = "debug", name = "aether.read", skip_all, fields(namespace = %self.inner.config.namespace, actor = %snapshot.actor_id, from = snapshot.version + 1, op = "events_after", events = tracing::field::Empty), err(level = "debug"))]
    pub async fn events_after(&self, snapshot: &Snapshot) -> Result<Vec<Event>, ReadError> {
        let actor = snapshot.actor_id.as_str();
        let from = snapshot.version.saturating_add(1);
        let operation = || {
            format!(
                "events of actor {actor:?} after version {}",
                snapshot.version
            )
        };
        self.bounded(operation, async {
            if snapshot.sequence == 0 {
                return self.read_events(actor, from).await;
            }
            let subject = self.inner.names.event_subject(actor)?;
            let anchor = Tip {
                sequence: snapshot.sequence,
                version: snapshot.version,
            };
            let result = self.replay_from(actor, &subject, anchor, from).await?;
            into_events(actor, from, result)
        })
        .await
    }

    /// The actor's valid events with version `>= from_version`, and every damaged record (with
    /// its stream sequence, raw bytes and cause) met on the way.
    ///
    /// # Errors
    /// Only for invalid names, broker failures and the deadline
    /// ([`ReadError::DeadlineExceeded`]); damage is reported in the result.
    #[tracing::instrument(level = "debug", name = "aether.read", skip_all, fields(namespace = %self.inner.config.namespace, actor, from = from_version, op = "events_with_errors", events = tracing::field::Empty), err(level = "debug"))]
    pub async fn events_with_errors(
        &self,
        actor: &str,
        from_version: u64,
    ) -> Result<ReplayResult, ReadError> {
        let operation = || format!("events of actor {actor:?}");
        self.bounded(operation, async {
            let subject = self.inner.names.event_subject(actor)?;
            self.replay(actor, &subject, from_version).await
        })
        .await
    }

    pub(super) async fn replay(
        &self,
        actor: &str,
        subject: &str,
        from_version: u64,
    ) -> Result<ReplayResult, ReadError> {
        self.replay_from(actor, subject, Tip::default(), from_version)
            .await
    }

    /// Replays what follows `anchor` (a checked position: the start, or a snapshot's), and
    /// records how long it was and took, and the damage it met.
    async fn replay_from(
        &self,
        actor: &str,
        subject: &str,
        anchor: Tip,
        asked_from: u64,
    ) -> Result<ReplayResult, ReadError> {
        let clock = self.inner.rt.clock();
        let started = clock.monotonic();
        let result = self
            .replay_checked(actor, subject, anchor, asked_from)
            .await;
        let namespace = self.inner.config.namespace.clone();
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::histogram!(
            telemetry::STORE_REPLAY_SECONDS,
            "namespace" => namespace.clone(),
            "outcome" => outcome
        )
        .record(telemetry::seconds(
            clock.monotonic().saturating_sub(started),
        ));
        if let Ok(replay) = &result {
            metrics::histogram!(telemetry::STORE_REPLAY_EVENTS, "namespace" => namespace.clone())
                .record(replay.events.len() as f64);
            tracing::Span::current().record("events", replay.events.len());
            if !replay.errors.is_empty() {
                metrics::counter!(telemetry::STORE_DAMAGED_RECORDS, "namespace" => namespace)
                    .increment(replay.errors.len() as u64);
                for error in &replay.errors {
                    tracing::warn!(actor, %error, "damaged record in an actor's stream");
                }
            }
        }
        result
    }

    async fn replay_checked(
        &self,
        actor: &str,
        subject: &str,
        anchor: Tip,
        asked_from: u64,
    ) -> Result<ReplayResult, ReadError> {
        let from_version = if crate::planted::planted!(self.inner.rt, read_from_off_by_one) {
            asked_from + 1
        } else {
            asked_from
        };
        let mut checker = self.checker(actor, anchor, from_version);
        self.broker()
            .read_each(
                &self.inner.events_stream,
                subject,
                anchor.sequence + 1,
                |record| checker.push(record),
            )
            .await?;
        // Read your writes, and never read backwards: a replica that lags behind what this
        // handle has appended or read before is caught up from the leader.
        let floor = self
            .hint(actor)
            .filter(|_| !crate::planted::planted!(self.inner.rt, tip_without_floor));
        if let Some(floor) = floor {
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
        if crate::planted::planted!(self.inner.rt, skip_damaged_records) {
            checker.replay.errors.clear();
        }
        if checker.last_sequence == 0
            && anchor == Tip::default()
            && self.inner.config.retention.is_some()
        {
            // Nothing stored: a new actor, or one whose every event expired — its latest
            // snapshot says which. Records that turned up meanwhile are replayed afresh.
            let tip = self.tip_of_empty_subject(actor, subject).await?;
            if tip.sequence > 0 {
                return Box::pin(self.replay_checked(actor, subject, anchor, asked_from)).await;
            }
            if tip.version > 0 {
                checker.replay.expired_before = Some(tip.version + 1);
            }
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
    /// Broker failures; [`ReadError::DeadlineExceeded`] past
    /// [`StoreConfig::deadline`](super::StoreConfig::deadline).
    pub async fn read_all(
        &self,
        from_position: u64,
        max_commits: usize,
    ) -> Result<Page, ReadError> {
        let raw = self.fetch_page(from_position, max_commits).await?;
        Ok(self.decode_page(raw))
    }

    /// [`read_all`](Self::read_all)'s records as stored, not yet decoded: a consumer that
    /// pipelines (the projector) asks for the next page before it decodes this one.
    #[tracing::instrument(level = "debug", name = "aether.read", skip_all, fields(namespace = %self.inner.config.namespace, from = from_position, op = "read_all"), err(level = "debug"))]
    pub(crate) async fn fetch_page(
        &self,
        from_position: u64,
        max_commits: usize,
    ) -> Result<RawPage, ReadError> {
        let operation = || format!("read_all from position {from_position}");
        self.bounded(operation, self.fetch_raw(from_position, max_commits))
            .await
    }

    async fn fetch_raw(
        &self,
        from_position: u64,
        max_commits: usize,
    ) -> Result<RawPage, ReadError> {
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
        Ok(RawPage {
            from: from_position.max(1),
            records,
        })
    }

    /// Decodes a fetched page: its commits, and its damaged records as errors (counted and
    /// logged).
    pub(crate) fn decode_page(&self, raw: RawPage) -> Page {
        let ns = &self.inner.config.namespace;
        let prefix = format!("aether.ev.{ns}.");
        let mut page = Page {
            next_position: raw.next_position(),
            ..Page::default()
        };
        for record in raw.records {
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
        if !page.errors.is_empty() {
            metrics::counter!(telemetry::STORE_DAMAGED_RECORDS, "namespace" => ns.clone())
                .increment(page.errors.len() as u64);
            for error in &page.errors {
                tracing::warn!(%error, "damaged record in the namespace's stream");
            }
        }
        page
    }

    /// The actor's latest version (0 if it has no events), asked of the broker in one round trip.
    /// On a replicated stream a lagging replica may answer: the version is never behind what
    /// this handle appended or read, but may be behind another process's acknowledged append
    /// (see [`current_version`](Self::current_version)).
    ///
    /// # Errors
    /// Broker failures; invalid names; [`ReadError::DeadlineExceeded`] past
    /// [`StoreConfig::deadline`](super::StoreConfig::deadline).
    #[tracing::instrument(level = "debug", name = "aether.read", skip_all, fields(namespace = %self.inner.config.namespace, actor, op = "latest_version"), err(level = "debug"))]
    pub async fn latest_version(&self, actor: &str) -> Result<u64, ReadError> {
        let operation = || format!("latest version of actor {actor:?}");
        self.bounded(operation, async {
            let subject = self.inner.names.event_subject(actor)?;
            Ok(self.fetch_tip(actor, &subject).await?.version)
        })
        .await
    }

    /// The actor's version as the stream leader holds it: it includes every append
    /// acknowledged to anyone before the call (one more round trip than
    /// [`latest_version`](Self::latest_version) on a replicated stream). For decisions that no
    /// compare-and-set will check, such as refusing a command.
    ///
    /// # Errors
    /// Broker failures; invalid names; [`ReadError::DeadlineExceeded`] past
    /// [`StoreConfig::deadline`](super::StoreConfig::deadline).
    #[tracing::instrument(level = "debug", name = "aether.read", skip_all, fields(namespace = %self.inner.config.namespace, actor, op = "current_version"), err(level = "debug"))]
    pub async fn current_version(&self, actor: &str) -> Result<u64, ReadError> {
        let operation = || format!("current version of actor {actor:?}");
        self.bounded(operation, async {
            let subject = self.inner.names.event_subject(actor)?;
            let tip = self.fetch_tip(actor, &subject).await?;
            Ok(self.confirm_tip(actor, &subject, tip, 0).await?.version)
        })
        .await
    }
}

/// The events of a replay, or why they cannot be returned as a whole history from `from`.
fn into_events(actor: &str, from: u64, result: ReplayResult) -> Result<Vec<Event>, ReadError> {
    if let Some(error) = result.errors.into_iter().next() {
        return Err(ReadError::Damaged(error));
    }
    match result.expired_before {
        Some(first_available) if from < first_available => Err(ReadError::Expired {
            actor: actor.to_owned(),
            from,
            first_available,
        }),
        _ => Ok(result.events),
    }
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
pub(super) fn decode_record(
    record: &StoredMessage,
    actor: Option<&str>,
) -> Result<Commit, ReplayError> {
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
pub(super) struct ReplayChecker {
    actor: String,
    from_version: u64,
    next_version: u64,
    seen: BTreeSet<String>,
    pub(super) last_sequence: u64,
    pub(super) replay: ReplayResult,
    /// Planted bug: accept a commit that does not continue the versions.
    pub(super) skips_contiguity: bool,
    /// The store has retention: when reading from the start, the first commit may start past
    /// version 1 (what came before it expired).
    pub(super) prefix_may_expire: bool,
}

impl ReplayChecker {
    /// Checks what follows `tip`.
    pub(super) fn resume(actor: &str, tip: Tip, from_version: u64) -> Self {
        Self {
            actor: actor.to_owned(),
            from_version,
            next_version: tip.version + 1,
            seen: BTreeSet::new(),
            last_sequence: tip.sequence,
            replay: ReplayResult::default(),
            skips_contiguity: false,
            prefix_may_expire: false,
        }
    }

    pub(super) fn push(&mut self, record: StoredMessage) {
        // A read that overlaps what was already checked (a resumed read) adds nothing.
        if record.sequence <= self.last_sequence {
            return;
        }
        self.last_sequence = record.sequence;
        let commit = match decode_record(&record, Some(&self.actor)) {
            Ok(c) => c,
            Err(e) => return self.replay.errors.push(e),
        };
        let damaged = |cause: ReplayErrorCause| ReplayError {
            sequence: record.sequence,
            raw: record.payload.clone(),
            cause,
        };
        // Under retention, the first valid commit read — from the start, or after a position
        // checked earlier — may start past the next version: what came between expired (this
        // is not damage). A gap after that is.
        if self.prefix_may_expire
            && self.seen.is_empty()
            && commit.first_version() > self.next_version
        {
            self.replay.expired_before = Some(commit.first_version());
            self.next_version = commit.first_version();
        }
        if commit.first_version() != self.next_version && !self.skips_contiguity {
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
        assert!(
            next_version > self.next_version || self.skips_contiguity,
            "versions grow"
        );
        self.next_version = next_version;
        self.seen.insert(commit.commit_id);
        let from = self.from_version;
        self.replay
            .events
            .extend(commit.events.into_iter().filter(|e| e.version >= from));
    }

    /// Where the checked stream ends: its last record and last valid version.
    pub(super) fn tip(&self) -> Tip {
        Tip {
            sequence: self.last_sequence,
            version: self.next_version - 1,
        }
    }
}

/// Records of the namespace's stream as stored, from one position on (see
/// [`EventStore::fetch_page`]).
#[derive(Debug)]
pub(crate) struct RawPage {
    /// The position the page starts at.
    pub(crate) from: u64,
    /// The records, in stream order.
    pub(crate) records: Vec<StoredMessage>,
}

impl RawPage {
    /// The position after the page.
    pub(crate) fn next_position(&self) -> u64 {
        self.records.last().map_or(self.from, |r| r.sequence + 1)
    }
}
