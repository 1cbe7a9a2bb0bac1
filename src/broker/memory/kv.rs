//! The KV buckets of the in-process broker: revisions, conditional writes, TTL, watches (each
//! holding a consumer on the bucket's stream, as on NATS).

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{BrokerState, CONSUMER_INACTIVE_THRESHOLD, Now};
use crate::broker::subject::{matches, validate_kv_key, validate_pattern};
use crate::broker::{BrokerError, BrokerLimit, KvConfig, KvEntry, KvOperation};

#[derive(Debug)]
struct KvValue {
    value: Bytes,
    revision: u64,
    operation: KvOperation,
    written_at: Duration,
}

#[derive(Debug)]
pub(super) struct BucketState {
    config: KvConfig,
    revision: u64,
    entries: BTreeMap<String, KvValue>,
}

impl BucketState {
    /// Live keys.
    #[cfg(any(test, feature = "sim"))]
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(super) fn expire(&mut self, now: Duration) {
        if let Some(ttl) = self.config.ttl {
            self.entries.retain(|_, v| v.written_at + ttl > now);
        }
    }

    fn entry(&self, key: &str) -> Option<KvEntry> {
        self.entries.get(key).map(|v| KvEntry {
            bucket: self.config.bucket.clone(),
            key: key.to_owned(),
            value: v.value.clone(),
            revision: v.revision,
            operation: v.operation,
        })
    }
}

pub(super) struct Watcher {
    bucket: String,
    pattern: String,
    sender: mpsc::Sender<KvEntry>,
    /// When the watch was first seen closed: its consumer lingers on the server until
    /// [`CONSUMER_INACTIVE_THRESHOLD`] has passed since.
    closed_at: Option<Duration>,
}

enum KvCondition {
    None,
    Absent,
    Revision(u64),
}

impl BrokerState {
    /// Creates a bucket unless it exists.
    ///
    /// # Errors
    /// `InvalidArgument` for a bad name or a TTL under 100 ms.
    pub fn kv_ensure(&mut self, config: KvConfig) -> Result<(), BrokerError> {
        config.validate()?;
        self.buckets
            .entry(config.bucket.clone())
            .or_insert_with(|| BucketState {
                config,
                revision: 0,
                entries: BTreeMap::new(),
            });
        Ok(())
    }

    fn bucket(&mut self, bucket: &str, now: Now) -> Result<&mut BucketState, BrokerError> {
        let state = self
            .buckets
            .get_mut(bucket)
            .ok_or_else(|| BrokerError::not_found(format!("KV bucket {bucket:?}")))?;
        state.expire(now.monotonic);
        Ok(state)
    }

    /// The live entry for `key`.
    ///
    /// # Errors
    /// `NotFound` for an unknown bucket.
    pub fn kv_get(
        &mut self,
        bucket: &str,
        key: &str,
        now: Now,
    ) -> Result<Option<KvEntry>, BrokerError> {
        validate_kv_key(key)?;
        let b = self.bucket(bucket, now)?;
        Ok(b.entry(key).filter(|e| e.operation == KvOperation::Put))
    }

    /// Every live entry, by key.
    ///
    /// # Errors
    /// `NotFound` for an unknown bucket.
    pub fn kv_entries(&mut self, bucket: &str, now: Now) -> Result<Vec<KvEntry>, BrokerError> {
        let b = self.bucket(bucket, now)?;
        Ok(b.entries
            .keys()
            .filter_map(|k| b.entry(k))
            .filter(|e| e.operation == KvOperation::Put)
            .collect())
    }

    fn kv_write(
        &mut self,
        bucket: &str,
        key: &str,
        value: Bytes,
        operation: KvOperation,
        condition: KvCondition,
        now: Now,
    ) -> Result<u64, BrokerError> {
        validate_kv_key(key)?;
        let max_payload = self.max_payload;
        let b = self.bucket(bucket, now)?;
        let max = b.config.max_value_size.unwrap_or(max_payload);
        if value.len() > max {
            return Err(BrokerError::PayloadTooLarge {
                size: value.len(),
                max,
            });
        }
        let current = b.entries.get(key);
        match condition {
            KvCondition::None => {}
            KvCondition::Absent => {
                if current.is_some_and(|v| v.operation == KvOperation::Put) {
                    return Err(BrokerError::AlreadyExists {
                        what: format!("key {key:?} in bucket {bucket:?}"),
                    });
                }
            }
            KvCondition::Revision(expected) => {
                if current.map(|v| v.revision).unwrap_or(0) != expected {
                    return Err(BrokerError::WrongRevision {
                        key: key.to_owned(),
                        expected,
                    });
                }
            }
        }
        b.revision += 1;
        let revision = b.revision;
        let replaced = b.entries.insert(
            key.to_owned(),
            KvValue {
                value,
                revision,
                operation,
                written_at: now.monotonic,
            },
        );
        assert!(
            replaced.is_none_or(|old| old.revision < revision),
            "KV revisions only grow"
        );
        let entry = b.entry(key).expect("just written");
        assert_eq!(entry.revision, revision);
        self.notify_watchers(&entry);
        Ok(revision)
    }

    fn notify_watchers(&mut self, entry: &KvEntry) {
        for w in self.watchers.values() {
            if w.closed_at.is_none()
                && !w.sender.is_closed()
                && w.bucket == entry.bucket
                && matches(&w.pattern, &entry.key)
                && w.sender.try_send(entry.clone()).is_err()
            {
                tracing::warn!(bucket = %w.bucket, "slow KV watcher: entry dropped");
            }
        }
    }

    /// Notes watches that were dropped, forgets the ones whose consumer has expired, and
    /// returns how many consumers `bucket`'s stream holds now.
    pub(super) fn bucket_consumers(&mut self, bucket: &str, now: Duration) -> usize {
        for w in self.watchers.values_mut() {
            if w.closed_at.is_none() && w.sender.is_closed() {
                w.closed_at = Some(now);
            }
        }
        self.watchers.retain(|_, w| {
            w.closed_at
                .is_none_or(|at| now < at + CONSUMER_INACTIVE_THRESHOLD)
        });
        self.watchers
            .values()
            .filter(|w| w.bucket == bucket)
            .count()
    }

    /// Creates `key` if it has no live value.
    ///
    /// # Errors
    /// See [`Broker::kv_create`](crate::broker::Broker::kv_create).
    pub fn kv_create(
        &mut self,
        bucket: &str,
        key: &str,
        value: Bytes,
        now: Now,
    ) -> Result<u64, BrokerError> {
        self.kv_write(
            bucket,
            key,
            value,
            KvOperation::Put,
            KvCondition::Absent,
            now,
        )
    }

    /// Updates `key` at `revision`.
    ///
    /// # Errors
    /// See [`Broker::kv_update`](crate::broker::Broker::kv_update).
    pub fn kv_update(
        &mut self,
        bucket: &str,
        key: &str,
        value: Bytes,
        revision: u64,
        now: Now,
    ) -> Result<u64, BrokerError> {
        self.kv_write(
            bucket,
            key,
            value,
            KvOperation::Put,
            KvCondition::Revision(revision),
            now,
        )
    }

    /// Writes `key` unconditionally.
    ///
    /// # Errors
    /// See [`Broker::kv_put`](crate::broker::Broker::kv_put).
    pub fn kv_put(
        &mut self,
        bucket: &str,
        key: &str,
        value: Bytes,
        now: Now,
    ) -> Result<u64, BrokerError> {
        self.kv_write(bucket, key, value, KvOperation::Put, KvCondition::None, now)
    }

    /// Deletes `key`.
    ///
    /// # Errors
    /// See [`Broker::kv_delete`](crate::broker::Broker::kv_delete).
    pub fn kv_delete(&mut self, bucket: &str, key: &str, now: Now) -> Result<(), BrokerError> {
        self.kv_write(
            bucket,
            key,
            Bytes::new(),
            KvOperation::Delete,
            KvCondition::None,
            now,
        )
        .map(|_| ())
    }

    /// Registers a watcher and queues the current matching entries to it; returns its id.
    ///
    /// # Errors
    /// `NotFound` for an unknown bucket, `InvalidArgument` for a bad pattern.
    pub fn kv_watch(
        &mut self,
        bucket: &str,
        pattern: &str,
        sender: mpsc::Sender<KvEntry>,
        now: Now,
    ) -> Result<u64, BrokerError> {
        validate_pattern(pattern)?;
        self.bucket(bucket, now)?;
        let consumers = self.bucket_consumers(bucket, now.monotonic);
        if consumers >= self.consumers_max {
            return Err(BrokerError::LimitReached {
                limit: BrokerLimit::Consumers,
                reason: format!(
                    "maximum consumers limit reached: stream of KV bucket {bucket:?} holds {consumers}"
                ),
            });
        }
        let b = self.bucket(bucket, now)?;
        let mut current: Vec<KvEntry> = b
            .entries
            .keys()
            .filter(|k| matches(pattern, k))
            .filter_map(|k| b.entry(k))
            .collect();
        current.sort_by_key(|e| e.revision);
        for entry in current {
            if sender.try_send(entry).is_err() {
                tracing::warn!(
                    bucket,
                    "KV watcher queue full while sending current entries"
                );
            }
        }
        self.next_id += 1;
        self.watchers.insert(
            self.next_id,
            Watcher {
                bucket: bucket.to_owned(),
                pattern: pattern.to_owned(),
                sender,
                closed_at: None,
            },
        );
        Ok(self.next_id)
    }
}
