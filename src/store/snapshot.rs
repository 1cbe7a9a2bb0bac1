//! Snapshots: one subject per actor in the namespace's snapshot stream, guarded against going
//! ahead of the events or backwards.

use bytes::Bytes;

use super::EventStore;
use super::append::RETRY_DELAY_MAX;
use super::error::SnapshotError;
use crate::broker::{AppendOptions, Broker, BrokerError, Headers, ReadFrom};
use crate::clock::Clock;
use crate::event::Snapshot;
use crate::retry::Backoff;

impl<B: Broker, C: Clock> EventStore<B, C> {
    /// Stores a snapshot. It must not be ahead of the actor's stream nor older than the stored
    /// snapshot.
    ///
    /// # Errors
    /// [`SnapshotError::AheadOfStream`], [`SnapshotError::Stale`], [`SnapshotError::TooLarge`].
    pub async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), SnapshotError> {
        let subject = self.inner.names.snapshot_subject(&snapshot.actor_id)?;
        let latest = self.latest_version(&snapshot.actor_id).await?;
        if snapshot.version > latest {
            return Err(SnapshotError::AheadOfStream {
                actor: snapshot.actor_id.clone(),
                version: snapshot.version,
                latest,
            });
        }
        let mut stamped = snapshot.clone();
        stamped.timestamp = self.inner.rt.clock().wall();
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
                backoff.wait(rt.clock(), rt.rng()).await;
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
        let subject = self.inner.names.snapshot_subject(actor)?;
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
