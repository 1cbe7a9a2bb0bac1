//! Stream operations: create a stream, append with expectations, last and next message of a
//! subject. `mod.rs` wraps each in the permission guard.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use bytes::Bytes;

use super::NatsBroker;
use super::convert::{is_unanswered, storage, stream_message, to_header_map};
use super::errors::{Op, map_error};
use crate::broker::{
    AppendAck, AppendOptions, BrokerError, Headers, ReadFrom, StoredMessage, StreamConfig,
};

impl NatsBroker {
    /// The stream `config` names: its info when it exists, else created.
    pub(super) async fn create_stream(
        &self,
        op: &Op<'_>,
        config: StreamConfig,
    ) -> Result<(), BrokerError> {
        match self.js.get_stream_no_info(&config.name).await {
            Ok(handle) => match handle.get_info().await {
                Ok(_) => return Ok(()),
                Err(e) => {
                    let mapped = map_error(op, &e);
                    if !matches!(mapped, BrokerError::NotFound { .. }) {
                        return Err(mapped);
                    }
                }
            },
            Err(e) => return Err(map_error(op, &e)),
        }
        let native = stream::Config {
            name: config.name.clone(),
            subjects: config.subjects.clone(),
            max_age: config.max_age.unwrap_or(Duration::ZERO),
            max_messages_per_subject: config
                .max_messages_per_subject
                .map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX)),
            max_message_size: config
                .max_message_size
                .map_or(-1, |n| i32::try_from(n).unwrap_or(i32::MAX)),
            num_replicas: config.replicas.max(1),
            duplicate_window: config.duplicate_window,
            storage: storage(config.storage),
            deny_delete: config.deny_delete,
            deny_purge: config.deny_purge,
            allow_direct: true,
            ..Default::default()
        };
        match self.js.create_stream(native).await {
            Ok(_) => Ok(()),
            Err(e) => match map_error(op, &e) {
                // Created concurrently by someone else: leave it as it is.
                BrokerError::AlreadyExists { .. } => Ok(()),
                other => Err(other),
            },
        }
    }

    /// Publishes one append and waits for its acknowledgement.
    pub(super) async fn publish_append(
        &self,
        op: &Op<'_>,
        subject: &str,
        headers: Headers,
        payload: Bytes,
        options: AppendOptions,
    ) -> Result<AppendAck, BrokerError> {
        let mut publish = jetstream::message::PublishMessage::build()
            .payload(payload)
            .headers(to_header_map(&headers));
        if let Some(id) = &options.message_id {
            publish = publish.message_id(id);
        }
        if let Some(expected) = options.expected_last_subject_sequence {
            // Also for 0 ("the subject must be empty"): async-nats sends the header as given.
            publish = publish.expected_last_subject_sequence(expected);
        }
        let result = match self.js.send_publish(subject.to_owned(), publish).await {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match result {
            Ok(ack) => Ok(AppendAck {
                sequence: ack.sequence,
                duplicate: ack.duplicate,
            }),
            Err(e) => match map_error(op, &e) {
                BrokerError::NotFound { what } => {
                    // No responders: either no stream captures the subject (definite), or the
                    // stream exists and is between leaders (transient; nothing was stored).
                    // Only the server's definite "no stream captures it" is NotFound; a lookup
                    // that itself fails (the meta leader is moving too) leaves it transient.
                    use jetstream::context::GetStreamByNameErrorKind as K;
                    match self.js.stream_by_subject(subject.to_owned()).await {
                        Err(e) if e.kind() == K::NotFound => Err(BrokerError::NotFound { what }),
                        Ok(_) => Err(BrokerError::Unavailable {
                            reason: format!("stream for subject {subject:?} has no leader"),
                        }),
                        Err(e) => Err(BrokerError::Unavailable {
                            reason: format!(
                                "no answer for subject {subject:?}, and the stream lookup failed: {e}"
                            ),
                        }),
                    }
                }
                BrokerError::PayloadTooLarge { size, max: 0 } => {
                    let max = match self.js.stream_by_subject(subject.to_owned()).await {
                        Ok(name) => match self.js.get_stream(name).await {
                            Ok(s) => usize::try_from(s.cached_info().config.max_message_size)
                                .unwrap_or(0),
                            Err(_) => 0,
                        },
                        Err(_) => 0,
                    };
                    Err(BrokerError::PayloadTooLarge { size, max })
                }
                other => Err(other),
            },
        }
    }

    /// The last message of `subject` in `stream`.
    pub(super) async fn last_in(
        &self,
        op: &Op<'_>,
        stream: &str,
        subject: &str,
        from: ReadFrom,
    ) -> Result<Option<StoredMessage>, BrokerError> {
        let handle = self
            .js
            .get_stream_no_info(stream)
            .await
            .map_err(|e| map_error(op, &e))?;
        if from == ReadFrom::AnyReplica {
            match handle.direct_get_last_for_subject(subject).await {
                Ok(m) => return Ok(Some(stream_message(m))),
                Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => return Ok(None),
                // No replica serves direct gets right now: ask the leader.
                Err(e) if is_unanswered(&e) => {}
                Err(e) => return Err(map_error(op, &e)),
            }
        }
        match handle.get_last_raw_message_by_subject(subject).await {
            Ok(m) => Ok(Some(stream_message(m))),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(map_error(op, &e)),
        }
    }

    /// The first message of `subject` in `stream` at or after `from_sequence`.
    pub(super) async fn next_in(
        &self,
        op: &Op<'_>,
        stream: &str,
        subject: &str,
        from_sequence: u64,
        from: ReadFrom,
    ) -> Result<Option<StoredMessage>, BrokerError> {
        let handle = self
            .js
            .get_stream_no_info(stream)
            .await
            .map_err(|e| map_error(op, &e))?;
        let from_sequence = from_sequence.max(1);
        if from == ReadFrom::AnyReplica {
            match handle
                .direct_get_next_for_subject(subject, Some(from_sequence))
                .await
            {
                Ok(m) => return Ok(Some(stream_message(m))),
                Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => return Ok(None),
                Err(e) if is_unanswered(&e) => {}
                Err(e) => return Err(map_error(op, &e)),
            }
        }
        match handle
            .get_first_raw_message_by_subject(subject, from_sequence)
            .await
        {
            Ok(m) => Ok(Some(stream_message(m))),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(map_error(op, &e)),
        }
    }
}
