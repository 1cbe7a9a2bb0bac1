//! KV buckets on JetStream (history 1; the bucket's max age is the TTL). Listing reads the
//! bucket's stream with batched direct gets, so a poll leaves nothing behind on the server.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::StreamExt;

use super::errors::{Op, map_error};
use super::violations::Concern;
use super::{HEADER_KV_OPERATION, NatsBroker, kv_entry, storage};
use crate::broker::subject::{validate_kv_key, validate_pattern};
use crate::broker::{BrokerError, KvConfig, KvEntry, KvOperation, KvWatch};
use crate::names::{kv_stream, kv_subject_prefix};

impl NatsBroker {
    /// The concern of a write of `key` in `bucket`: its subject and the bucket's stream.
    fn key_concern(&self, bucket: &str, key: &str) -> Concern<'_> {
        Concern {
            publishes: vec![format!("{}{key}", kv_subject_prefix(bucket))],
            ..self.stream_concern(&kv_stream(bucket))
        }
    }

    pub(super) async fn ensure_bucket(&self, config: KvConfig) -> Result<(), BrokerError> {
        config.validate()?;
        match self.bucket(&config.bucket).await {
            Ok(_) => return Ok(()),
            // May not even look: creating would be refused too, or tell nothing new.
            Err(e @ BrokerError::PermissionDenied { .. }) => return Err(e),
            Err(_) => {}
        }
        let op = Op::KvBucket {
            bucket: &config.bucket,
        };
        let native = kv::Config {
            bucket: config.bucket.clone(),
            history: 1,
            max_age: config.ttl.unwrap_or(Duration::ZERO),
            num_replicas: config.replicas.max(1),
            max_value_size: config
                .max_value_size
                .map_or(-1, |n| i32::try_from(n).unwrap_or(i32::MAX)),
            storage: storage(config.storage),
            ..Default::default()
        };
        let concern = Concern {
            account_info: true,
            ..self.stream_concern(&kv_stream(&config.bucket))
        };
        let created = self
            .guarded(concern, &op, async {
                self.js.create_key_value(native).await.map_err(|e| {
                    let mapped = map_error(&op, &e);
                    tracing::debug!(bucket = %config.bucket, error = %e, "bucket not created");
                    mapped
                })
            })
            .await;
        match created {
            Ok(store) => {
                self.lock_buckets().insert(config.bucket.clone(), store);
                Ok(())
            }
            // Refused: the lookup that follows would be refused or tell nothing new.
            Err(e @ BrokerError::PermissionDenied { .. }) => Err(e),
            Err(e) => match self.bucket(&config.bucket).await {
                // Created concurrently by someone else.
                Ok(_) => Ok(()),
                Err(_) => Err(e),
            },
        }
    }

    pub(super) async fn get_entry(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<Option<KvEntry>, BrokerError> {
        validate_kv_key(key)?;
        let store = self.bucket(bucket).await?;
        let op = Op::KvRead { bucket };
        let entry = self
            .guarded(self.stream_concern(&kv_stream(bucket)), &op, async {
                store.entry(key).await.map_err(|e| map_error(&op, &e))
            })
            .await?;
        Ok(entry
            .map(kv_entry)
            .filter(|e| e.operation == KvOperation::Put))
    }

    pub(super) async fn create_entry(
        &self,
        bucket: &str,
        key: &str,
        value: Bytes,
    ) -> Result<u64, BrokerError> {
        validate_kv_key(key)?;
        let store = self.bucket(bucket).await?;
        let op = Op::KvCreate { key };
        self.guarded(self.key_concern(bucket, key), &op, async {
            store
                .create(key, value)
                .await
                .map_err(|e| map_error(&op, &e))
        })
        .await
    }

    pub(super) async fn update_entry(
        &self,
        bucket: &str,
        key: &str,
        value: Bytes,
        revision: u64,
    ) -> Result<u64, BrokerError> {
        validate_kv_key(key)?;
        let store = self.bucket(bucket).await?;
        let op = Op::KvUpdate { key, revision };
        self.guarded(self.key_concern(bucket, key), &op, async {
            store
                .update(key, value, revision)
                .await
                .map_err(|e| map_error(&op, &e))
        })
        .await
    }

    pub(super) async fn put_entry(
        &self,
        bucket: &str,
        key: &str,
        value: Bytes,
    ) -> Result<u64, BrokerError> {
        validate_kv_key(key)?;
        let size = value.len();
        let store = self.bucket(bucket).await?;
        let op = Op::KvWrite { key, size };
        self.guarded(self.key_concern(bucket, key), &op, async {
            store.put(key, value).await.map_err(|e| map_error(&op, &e))
        })
        .await
    }

    pub(super) async fn delete_entry(&self, bucket: &str, key: &str) -> Result<(), BrokerError> {
        validate_kv_key(key)?;
        let store = self.bucket(bucket).await?;
        let op = Op::KvWrite { key, size: 0 };
        self.guarded(self.key_concern(bucket, key), &op, async {
            store.delete(key).await.map_err(|e| map_error(&op, &e))
        })
        .await
    }

    pub(super) async fn entries(&self, bucket: &str) -> Result<Vec<KvEntry>, BrokerError> {
        // Check the bucket exists (and is a KV bucket) before reading its stream.
        self.bucket(bucket).await?;
        let op = Op::KvRead { bucket };
        let prefix = kv_subject_prefix(bucket);
        // Buckets keep one message per key (history 1): reading the bucket's stream from the
        // start gives each key's latest entry, tombstones included — with batched direct gets,
        // so a poll leaves nothing behind on the server.
        let mut entries: BTreeMap<String, KvEntry> = BTreeMap::new();
        let stream = kv_stream(bucket);
        let filter = format!("{prefix}>");
        let read = self.read_pages(&op, &stream, &filter, 1, |message| {
            if let Some(key) = message.subject.strip_prefix(&prefix) {
                let deleted = message
                    .headers
                    .get(HEADER_KV_OPERATION)
                    .is_some_and(|v| v == "DEL" || v == "PURGE");
                if deleted {
                    entries.remove(key);
                } else {
                    entries.insert(
                        key.to_owned(),
                        KvEntry {
                            bucket: bucket.to_owned(),
                            key: key.to_owned(),
                            value: message.payload,
                            revision: message.sequence,
                            operation: KvOperation::Put,
                        },
                    );
                }
            }
            true
        });
        self.guarded(self.stream_concern(&stream), &op, read)
            .await?;
        Ok(entries.into_values().collect())
    }

    pub(super) async fn watch(
        &self,
        bucket: &str,
        key_pattern: &str,
    ) -> Result<KvWatch, BrokerError> {
        validate_pattern(key_pattern)?;
        let store = self.bucket(bucket).await?;
        // Buckets are created with history 1, so "all history" is exactly the current entry
        // of every key (tombstones included) followed by every later write.
        let op = Op::KvRead { bucket };
        let watch = self
            .guarded(self.stream_concern(&kv_stream(bucket)), &op, async {
                store
                    .watch_with_history(key_pattern)
                    .await
                    .map_err(|e| map_error(&op, &e))
            })
            .await?;
        Ok(KvWatch::new(watch.filter_map(|entry| async move {
            entry.ok().map(kv_entry)
        })))
    }
}
