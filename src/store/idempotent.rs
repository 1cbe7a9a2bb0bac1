//! Commits under ids the caller chooses (idempotency keys), and asking whether a commit is
//! stored — by binary search over the actor's records (a leader read per step), never by
//! reading the actor's history.

use super::append::AppendOutcome;
use super::replay::decode_record;
use super::{AppendError, EventStore, ReadError};
use crate::broker::{Broker, ReadFrom, StoredMessage};
use crate::clock::Clock;
use crate::codec::Commit;
use crate::event::{ExpectedVersion, NewEvent};

/// The longest commit id a caller may choose.
pub const COMMIT_ID_MAX: usize = 128;

/// Whether a commit is stored: see [`EventStore::commit_status`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommitStatus {
    /// Stored, at these versions and this stream position.
    Stored {
        /// Its first version.
        first_version: u64,
        /// Its last version.
        last_version: u64,
        /// Its stream position (sequence).
        sequence: u64,
    },
    /// Not stored (as of the stream leader's answer).
    NotStored {
        /// Another commit holds the version right after the one asked about: an append that
        /// expected that version can never be stored now. `false`: nothing follows it yet, so
        /// an append still in flight may yet land.
        superseded: bool,
    },
}

impl<B: Broker, C: Clock> EventStore<B, C> {
    /// [`EventStore::append`] under a commit id the caller chooses: an idempotency key. Every
    /// event of the commit carries it ([`Event::commit_id`](crate::Event::commit_id)).
    ///
    /// Calling it again with the same key, actor and expectation — after a timeout, an
    /// `Indeterminate` answer or a crash — returns the original outcome instead of storing the
    /// events twice or reporting a conflict:
    /// - with `Exact(v)` or `NoStream`, for as long as the commit is kept: when the actor has
    ///   moved past `v`, the store looks at the commit holding version `v + 1` (a binary
    ///   search, about log2 of the stream's length in leader reads) and answers with it if it
    ///   carries the key;
    /// - with `Any`, within the server's deduplication window
    ///   ([`StreamConfig::duplicate_window`](crate::broker::StreamConfig), 2 minutes by
    ///   default): the broker recognises the key. After the window a retry stores the events
    ///   again — use an exact expectation for a guarantee without a time limit.
    ///
    /// A key names one commit in the whole namespace: reused for another commit it yields the
    /// first one (same actor and expectation) or [`AppendError::InvalidEvent`].
    ///
    /// # Errors
    /// As [`EventStore::append`]; [`AppendError::InvalidEvent`] for a key that is empty, longer
    /// than [`COMMIT_ID_MAX`] or has characters outside `A-Z a-z 0-9 - _ . : /`.
    pub async fn append_with_commit_id(
        &self,
        actor: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        commit_id: &str,
    ) -> Result<AppendOutcome, AppendError> {
        let valid = |c: char| c.is_ascii_alphanumeric() || "-_.:/".contains(c);
        if commit_id.is_empty() || commit_id.len() > COMMIT_ID_MAX || !commit_id.chars().all(valid)
        {
            return Err(AppendError::InvalidEvent(format!(
                "commit id {commit_id:?} must be 1..={COMMIT_ID_MAX} characters of A-Z a-z 0-9 - _ . : /"
            )));
        }
        self.append_keyed(actor, expected, events, Some(commit_id))
            .await
    }

    /// Whether commit `commit_id` of `actor` is stored after version `after_version` (the
    /// version its append expected; 0 for a new actor, or any version known to be before it).
    /// Asked of the stream leader: the commit holding version `after_version + 1` is found by
    /// binary search over the actor's records (about log2 of the stream's length in reads);
    /// when it is another commit, the ones after it are read until the tip (a commit appended
    /// with `Any` may be later).
    ///
    /// # Errors
    /// Broker failures, invalid names, the store's deadline.
    pub async fn commit_status(
        &self,
        actor: &str,
        commit_id: &str,
        after_version: u64,
    ) -> Result<CommitStatus, ReadError> {
        let operation = || format!("status of commit {commit_id:?} of actor {actor:?}");
        self.bounded(operation, async {
            let subject = self.inner.names.event_subject(actor)?;
            let Some((record, commit)) = self
                .commit_holding(actor, &subject, after_version + 1)
                .await?
            else {
                return Ok(CommitStatus::NotStored { superseded: false });
            };
            if commit.commit_id == commit_id {
                return Ok(stored(&record, &commit));
            }
            let mut found = None;
            self.broker()
                .read_each(
                    &self.inner.events_stream,
                    &subject,
                    record.sequence + 1,
                    |later| {
                        if found.is_none()
                            && let Ok(c) = decode_record(&later, Some(actor))
                            && c.commit_id == commit_id
                        {
                            found = Some(stored(&later, &c));
                        }
                    },
                )
                .await?;
            Ok(found.unwrap_or(CommitStatus::NotStored { superseded: true }))
        })
        .await
    }

    /// The commit holding `version` of `actor`, if stored, with its record: the first valid
    /// commit whose last version reaches it, found by binary search on stream sequences with
    /// leader reads (a subject's versions grow with its sequences; damaged records are stepped
    /// over).
    pub(super) async fn commit_holding(
        &self,
        actor: &str,
        subject: &str,
        version: u64,
    ) -> Result<Option<(StoredMessage, Commit)>, ReadError> {
        let stream = &self.inner.events_stream;
        let Some(last) = self
            .broker()
            .last(stream, subject, ReadFrom::Leader)
            .await?
        else {
            return Ok(None);
        };
        // The first valid commit at or after sequence `from`.
        let valid_from = |from: u64| async move {
            let mut from = from;
            loop {
                match self
                    .broker()
                    .next(stream, subject, from, ReadFrom::Leader)
                    .await?
                {
                    None => return Ok::<_, ReadError>(None),
                    Some(record) => match decode_record(&record, Some(actor)) {
                        Ok(commit) => return Ok(Some((record, commit))),
                        Err(_) => from = record.sequence + 1,
                    },
                }
            }
        };
        let (mut low, mut high) = (1u64, last.sequence);
        let mut best = None;
        while low <= high {
            let middle = low + (high - low) / 2;
            match valid_from(middle).await? {
                Some((record, commit)) if record.sequence <= high => {
                    if commit.last_version() >= version {
                        high = record.sequence.saturating_sub(1);
                        best = Some((record, commit));
                    } else {
                        low = record.sequence + 1;
                    }
                }
                // Only damaged records between `middle` and `high`.
                _ => high = middle.saturating_sub(1),
            }
        }
        Ok(best.filter(|(_, commit)| commit.first_version() <= version))
    }

    /// The commit `commit_id` of `actor` if it starts at `first_version`, with its events (a
    /// binary search of leader reads, within the store's deadline).
    pub(crate) async fn commit_at(
        &self,
        actor: &str,
        commit_id: &str,
        first_version: u64,
    ) -> Result<Option<AppendOutcome>, ReadError> {
        let operation = || format!("commit {commit_id:?} of actor {actor:?}");
        self.bounded(operation, async {
            let subject = self.inner.names.event_subject(actor)?;
            self.keyed_outcome(actor, &subject, commit_id, first_version.saturating_sub(1))
                .await
        })
        .await
    }

    /// The outcome of the commit `commit_id` if it holds version `after_version + 1`.
    pub(super) async fn keyed_outcome(
        &self,
        actor: &str,
        subject: &str,
        commit_id: &str,
        after_version: u64,
    ) -> Result<Option<AppendOutcome>, ReadError> {
        Ok(self
            .commit_holding(actor, subject, after_version + 1)
            .await?
            .filter(|(_, commit)| commit.commit_id == commit_id)
            .map(|(record, commit)| AppendOutcome {
                commit_id: commit.commit_id,
                sequence: record.sequence,
                events: commit.events,
            }))
    }
}

fn stored(record: &StoredMessage, commit: &Commit) -> CommitStatus {
    CommitStatus::Stored {
        first_version: commit.first_version(),
        last_version: commit.last_version(),
        sequence: record.sequence,
    }
}
