//! What a store handle knows about where each actor's stream ends, and how it brings that up
//! to date.

use super::EventStore;
use super::error::{ReadError, SnapshotError};
use super::replay::ReplayChecker;
use crate::broker::{Broker, ReadFrom};
use crate::clock::Clock;

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
pub(super) struct Tip {
    pub(super) sequence: u64,
    pub(super) version: u64,
}

/// The tips this handle knows, least recently used forgotten first. Deterministic: a fixed
/// hasher, and the eviction order is the use order.
pub(super) type TipCache =
    lru::LruCache<String, Tip, std::hash::BuildHasherDefault<std::hash::DefaultHasher>>;

/// A version per actor, least recently used forgotten first (the snapshot floors).
pub(super) type VersionCache =
    lru::LruCache<String, u64, std::hash::BuildHasherDefault<std::hash::DefaultHasher>>;

impl<B: Broker, C: Clock> EventStore<B, C> {
    /// A replay checker resuming from `tip`, keeping events from `from_version` on.
    pub(super) fn checker(&self, actor: &str, tip: Tip, from_version: u64) -> ReplayChecker {
        let mut checker = ReplayChecker::resume(actor, tip, from_version);
        checker.skips_contiguity =
            crate::planted::planted!(self.inner.rt, replay_skips_contiguity_check);
        checker.prefix_may_expire = self.inner.config.retention.is_some();
        checker
    }

    pub(super) fn hint(&self, actor: &str) -> Option<Tip> {
        self.lock_tips().get(actor).copied()
    }

    pub(super) fn set_hint(&self, actor: &str, tip: Tip) {
        let mut tips = self.lock_tips();
        match tips.get_mut(actor) {
            // Never move a tip backwards: a slow reader must not undo a newer writer's tip.
            Some(known) if tip.sequence < known.sequence => {}
            Some(known) => {
                // Tips without a position (every event expired; the version comes from a
                // snapshot) may move forward in version at sequence 0.
                assert!(
                    tip.sequence > known.sequence
                        || tip.version == known.version
                        || tip.sequence == 0,
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

    pub(super) fn lock_tips(&self) -> std::sync::MutexGuard<'_, TipCache> {
        self.inner.tips.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads what follows `anchor` on the actor's subject (any replica) and checks it exactly
    /// as replay does, continuing from `anchor`: the tip as far as that replica knows.
    pub(super) async fn advance(
        &self,
        actor: &str,
        subject: &str,
        anchor: Tip,
    ) -> Result<Tip, ReadError> {
        let mut checker = self.checker(actor, anchor, u64::MAX);
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
    pub(super) async fn fetch_tip(&self, actor: &str, subject: &str) -> Result<Tip, ReadError> {
        let floor = if crate::planted::planted!(self.inner.rt, tip_without_floor) {
            // Planted bug: whatever a replica holds, from scratch.
            Tip::default()
        } else {
            self.hint(actor).unwrap_or_default()
        };
        let mut tip = self.advance(actor, subject, floor).await?;
        if tip == Tip::default() && self.inner.config.retention.is_some() {
            tip = self.tip_of_empty_subject(actor, subject).await?;
        }
        self.set_hint(actor, tip);
        Ok(tip)
    }

    /// Under retention, when the server holds nothing for an actor whose remembered tip
    /// `remembered` points at a record: that record expired. The versions continue from the
    /// later of it and the latest snapshot (or from records that turned up meanwhile); the
    /// remembered tip is replaced, although its position goes back.
    pub(super) async fn tip_after_expiry(
        &self,
        actor: &str,
        subject: &str,
        remembered: Tip,
    ) -> Result<Tip, ReadError> {
        let fresh = self.tip_of_empty_subject(actor, subject).await?;
        let tip = if fresh.sequence > 0 {
            fresh
        } else {
            Tip {
                sequence: 0,
                version: fresh.version.max(remembered.version),
            }
        };
        self.lock_tips().put(actor.to_owned(), tip);
        Ok(tip)
    }

    /// Under retention, the tip of an actor whose subject held nothing: every event may have
    /// expired, and the versions continue from its latest snapshot, which covers them. The
    /// snapshot is read first and the subject again after it, so that a snapshot newer than the
    /// empty read cannot be mistaken for one of expired events: if records turned up meanwhile,
    /// their tip is the answer.
    pub(super) async fn tip_of_empty_subject(
        &self,
        actor: &str,
        subject: &str,
    ) -> Result<Tip, ReadError> {
        let snapshot = match self.read_latest_snapshot(actor).await {
            Ok(snapshot) => snapshot,
            Err(SnapshotError::Damaged { sequence, cause }) => {
                return Err(ReadError::DamagedSnapshot {
                    actor: actor.to_owned(),
                    sequence,
                    cause,
                });
            }
            Err(SnapshotError::Read(e)) => return Err(e),
            Err(SnapshotError::Broker(e)) => return Err(e.into()),
            Err(SnapshotError::InvalidName(e)) => return Err(e.into()),
            Err(SnapshotError::DeadlineExceeded(e)) => return Err(e.into()),
            Err(
                e @ (SnapshotError::AheadOfStream { .. }
                | SnapshotError::Stale { .. }
                | SnapshotError::TooLarge { .. }),
            ) => unreachable!("only a snapshot write fails with {e}"),
        };
        let again = self.advance(actor, subject, Tip::default()).await?;
        if again != Tip::default() {
            return Ok(again);
        }
        Ok(Tip {
            sequence: 0,
            version: snapshot.map_or(0, |s| s.version),
        })
    }

    /// Makes sure `tip` reaches the actor's real end — at least stream sequence `at_least`, and
    /// whatever the stream leader holds — and not only what a lagging replica answered. Costs
    /// one leader read when `tip` is current; used where a reported version must be right (a
    /// conflict's actual version) or the broker named a later sequence.
    pub(super) async fn confirm_tip(
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
        let mut checker = self.checker(actor, tip, u64::MAX);
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
}
