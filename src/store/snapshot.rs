//! Snapshots: one subject per actor in the namespace's snapshot stream, guarded against going
//! ahead of the events or backwards.

use bytes::Bytes;

use super::EventStore;
use super::append::RETRY_DELAY_MAX;
use super::deadline::{bounded, exceeded};
use super::error::SnapshotError;
use super::replay::check_record;
use crate::broker::{AppendOptions, Broker, BrokerError, Headers, ReadFrom};
use crate::clock::{Clock, Deadline};
use crate::event::Snapshot;
use crate::retry::Backoff;
use crate::telemetry;

impl<B: Broker, C: Clock> EventStore<B, C> {
    /// Stores a snapshot. It must not be ahead of the actor's stream nor older than the stored
    /// snapshot.
    ///
    /// # Errors
    /// [`SnapshotError::AheadOfStream`], [`SnapshotError::Stale`], [`SnapshotError::TooLarge`];
    /// [`SnapshotError::DeadlineExceeded`] past
    /// [`StoreConfig::deadline`](super::StoreConfig::deadline).
    #[tracing::instrument(
        level = "debug",
        name = "aether.snapshot",
        skip_all,
        fields(
            namespace = %self.inner.config.namespace,
            actor = %snapshot.actor_id,
            op = "save",
            version = snapshot.version,
        ),
        err(level = "debug")
    )]
    pub async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), SnapshotError> {
        let deadline = self.start_deadline();
        let operation = || format!("snapshot of actor {:?}", snapshot.actor_id);
        let work = self.store_snapshot(snapshot, &deadline);
        let result = bounded(self.inner.rt.clock(), &deadline, operation, work).await;
        let outcome = match &result {
            Ok(()) => "ok",
            Err(SnapshotError::Stale { .. }) => "stale",
            Err(SnapshotError::DeadlineExceeded(_)) => "deadline",
            Err(_) => "error",
        };
        metrics::counter!(
            telemetry::STORE_SNAPSHOTS,
            "namespace" => self.inner.config.namespace.clone(),
            "outcome" => outcome
        )
        .increment(1);
        result
    }

    async fn store_snapshot(
        &self,
        snapshot: &Snapshot,
        deadline: &Deadline,
    ) -> Result<(), SnapshotError> {
        let subject = self.inner.names.snapshot_subject(&snapshot.actor_id)?;
        let events_subject = self.inner.names.event_subject(&snapshot.actor_id)?;
        let tip = self.fetch_tip(&snapshot.actor_id, &events_subject).await?;
        if snapshot.version > tip.version {
            return Err(SnapshotError::AheadOfStream {
                actor: snapshot.actor_id.clone(),
                version: snapshot.version,
                latest: tip.version,
            });
        }
        // Where loading resumes: the tip when the snapshot is at it, else the position the
        // caller named if the record there really ends at the snapshot's version, else none.
        let sequence = if snapshot.version == tip.version && tip.sequence > 0 {
            tip.sequence
        } else if snapshot.sequence > 0
            && self
                .record_ends_at(&snapshot.actor_id, &events_subject, snapshot)
                .await?
        {
            snapshot.sequence
        } else {
            0
        };
        let mut stamped = snapshot.clone();
        stamped.timestamp = self.inner.rt.clock().wall();
        stamped.sequence = sequence;
        let payload = Bytes::from(serde_json::to_vec(&stamped).expect("snapshots serialise"));
        if payload.len() > self.inner.config.commit_bytes_max {
            return Err(SnapshotError::TooLarge {
                size: payload.len(),
                max: self.inner.config.commit_bytes_max,
            });
        }
        let mut backoff = Backoff::new(self.inner.config.retry_delay, RETRY_DELAY_MAX);
        for attempt in 0..=self.inner.config.retry_max {
            // A stale replica costs one rejected write; after one, ask the leader, after a wait
            // that lets a concurrent writer finish.
            let from = if attempt == 0 {
                ReadFrom::AnyReplica
            } else {
                let rt = &self.inner.rt;
                if backoff
                    .wait_within(rt.clock(), rt.rng(), deadline)
                    .await
                    .is_err()
                {
                    // Lost a race; the next attempt could not even start in time.
                    let operation = format!("snapshot of actor {:?}", snapshot.actor_id);
                    return Err(exceeded(operation, deadline).into());
                }
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
                Ok(_) => {
                    self.raise_snapshot_floor(&snapshot.actor_id, snapshot.version);
                    return Ok(());
                }
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

    /// The actor's latest snapshot, or `None`. Never older than one this handle saved or read
    /// before: a replica that answers with an older one is passed over for the stream leader.
    ///
    /// # Errors
    /// [`SnapshotError::Damaged`] when the stored snapshot cannot be decoded;
    /// [`SnapshotError::DeadlineExceeded`] past
    /// [`StoreConfig::deadline`](super::StoreConfig::deadline).
    #[tracing::instrument(
        level = "debug",
        name = "aether.snapshot",
        skip_all,
        fields(namespace = %self.inner.config.namespace, actor, op = "load"),
        err(level = "debug")
    )]
    pub async fn latest_snapshot(&self, actor: &str) -> Result<Option<Snapshot>, SnapshotError> {
        let operation = || format!("latest snapshot of actor {actor:?}");
        self.bounded(operation, self.read_latest_snapshot(actor))
            .await
    }

    /// [`EventStore::latest_snapshot`], without a deadline of its own.
    pub(super) async fn read_latest_snapshot(
        &self,
        actor: &str,
    ) -> Result<Option<Snapshot>, SnapshotError> {
        let subject = self.inner.names.snapshot_subject(actor)?;
        let floor = self.snapshot_floor(actor);
        let mut found = self
            .read_snapshot(actor, &subject, ReadFrom::AnyReplica)
            .await?;
        if floor > 0 && found.as_ref().is_none_or(|s| s.version < floor) {
            found = self
                .read_snapshot(actor, &subject, ReadFrom::Leader)
                .await?;
        }
        if let Some(s) = &found {
            self.raise_snapshot_floor(actor, s.version);
        }
        Ok(found)
    }

    async fn read_snapshot(
        &self,
        actor: &str,
        subject: &str,
        from: ReadFrom,
    ) -> Result<Option<Snapshot>, SnapshotError> {
        let Some(message) = self
            .broker()
            .last(&self.inner.snapshots_stream, subject, from)
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

    /// Whether the events record at `snapshot.sequence` is a valid commit of the actor ending
    /// at `snapshot.version` (asked of the stream leader: the record is old news there).
    async fn record_ends_at(
        &self,
        actor: &str,
        events_subject: &str,
        snapshot: &Snapshot,
    ) -> Result<bool, SnapshotError> {
        let record = self
            .broker()
            .next(
                &self.inner.events_stream,
                events_subject,
                snapshot.sequence,
                ReadFrom::Leader,
            )
            .await?;
        Ok(record
            .filter(|r| r.sequence == snapshot.sequence)
            .and_then(|r| check_record(&r, actor).ok())
            .is_some_and(|c| c.last_version() == snapshot.version))
    }

    fn snapshot_floor(&self, actor: &str) -> u64 {
        self.lock_snapshot_floors().get(actor).copied().unwrap_or(0)
    }

    fn raise_snapshot_floor(&self, actor: &str, version: u64) {
        let mut floors = self.lock_snapshot_floors();
        match floors.get_mut(actor) {
            Some(floor) => *floor = (*floor).max(version),
            None => {
                floors.put(actor.to_owned(), version);
            }
        }
    }

    fn lock_snapshot_floors(&self) -> std::sync::MutexGuard<'_, super::tip::VersionCache> {
        self.inner
            .snapshot_floors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
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
