//! The streams of the in-process broker: append with expectations and dedupe, reads, expiry.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;

use super::{BrokerState, Now};
use crate::broker::subject::{matches, overlap, validate_pattern, validate_subject};
use crate::broker::wire::{check_user_headers, wire_size};
use crate::broker::{AppendAck, AppendOptions, BrokerError, Headers, StoredMessage, StreamConfig};

#[derive(Debug)]
struct StoredEntry {
    message: StoredMessage,
    stored_at: Duration,
}

/// One subject as a stream leader sees it: see [`BrokerState::subject_view`].
#[cfg(any(test, feature = "sim"))]
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubjectView {
    /// The stream capturing the subject.
    pub stream: String,
    /// That stream's last sequence.
    pub stream_last: u64,
    /// The subject's last sequence (0: none).
    pub subject_last: u64,
    /// The sequence of the message stored under the asked message id, if any.
    pub duplicate_of: Option<u64>,
}

#[derive(Debug)]
pub(super) struct StreamState {
    config: StreamConfig,
    last_sequence: u64,
    messages: BTreeMap<u64, StoredEntry>,
    /// Sequences per subject, in order.
    subjects: BTreeMap<String, VecDeque<u64>>,
    /// Message id → (sequence, stored at).
    dedupe: BTreeMap<String, (u64, Duration)>,
    dedupe_order: VecDeque<(Duration, String)>,
}

impl StreamState {
    pub(super) fn expire(&mut self, now: Duration) {
        if let Some(max_age) = self.config.max_age {
            while let Some((&seq, entry)) = self.messages.first_key_value() {
                if entry.stored_at + max_age > now {
                    break;
                }
                let subject = entry.message.subject.clone();
                self.remove(seq, &subject);
            }
        }
        while let Some((at, _)) = self.dedupe_order.front() {
            if *at + self.config.duplicate_window > now {
                break;
            }
            let (at, id) = self.dedupe_order.pop_front().expect("front exists");
            if self.dedupe.get(&id).is_some_and(|(_, t)| *t == at) {
                self.dedupe.remove(&id);
            }
        }
    }

    fn remove(&mut self, seq: u64, subject: &str) {
        self.messages.remove(&seq);
        if let Some(seqs) = self.subjects.get_mut(subject) {
            seqs.retain(|s| *s != seq);
            if seqs.is_empty() {
                self.subjects.remove(subject);
            }
        }
    }

    /// (messages, bytes, remembered message ids).
    #[cfg(any(test, feature = "sim"))]
    pub(super) fn usage(&self) -> (usize, usize, usize) {
        let bytes = self
            .messages
            .values()
            .map(|e| crate::broker::wire::message_size(&e.message.headers, &e.message.payload))
            .sum();
        (self.messages.len(), bytes, self.dedupe.len())
    }

    fn last_of(&self, subject: &str) -> u64 {
        self.subjects
            .get(subject)
            .and_then(|s| s.back().copied())
            .unwrap_or(0)
    }
}

impl BrokerState {
    /// Creates a stream unless one of that name exists.
    ///
    /// # Errors
    /// See [`Broker::ensure_stream`](crate::broker::Broker::ensure_stream).
    pub fn ensure_stream(&mut self, config: StreamConfig) -> Result<(), BrokerError> {
        config.validate()?;
        if self.streams.contains_key(&config.name) {
            return Ok(());
        }
        for (name, other) in &self.streams {
            for a in &config.subjects {
                for b in &other.config.subjects {
                    if overlap(a, b) {
                        return Err(BrokerError::invalid(format!(
                            "subjects of stream {:?} overlap with stream {name:?} ({a:?} and {b:?})",
                            config.name
                        )));
                    }
                }
            }
        }
        self.streams.insert(
            config.name.clone(),
            StreamState {
                config,
                last_sequence: 0,
                messages: BTreeMap::new(),
                subjects: BTreeMap::new(),
                dedupe: BTreeMap::new(),
                dedupe_order: VecDeque::new(),
            },
        );
        Ok(())
    }

    /// What the leader of the stream capturing `subject` knows of it at `now`, for a model
    /// that answers from a state other than its committed one (the simulation's replicated
    /// broker: a leader holding proposals it cannot commit, or a deposed leader answering from
    /// old data). `as_of` bounds the stream sequences counted for the subject's last (the
    /// stream's last sequence back then); `None` for an unknown stream.
    #[cfg(any(test, feature = "sim"))]
    pub fn subject_view(
        &mut self,
        subject: &str,
        as_of: Option<u64>,
        message_id: Option<&str>,
        now: Now,
    ) -> Option<SubjectView> {
        let (name, stream) = self
            .streams
            .iter_mut()
            .find(|(_, s)| s.config.subjects.iter().any(|p| matches(p, subject)))?;
        stream.expire(now.monotonic);
        let bound = as_of.unwrap_or(u64::MAX);
        Some(SubjectView {
            stream: name.clone(),
            stream_last: stream.last_sequence,
            subject_last: stream
                .subjects
                .get(subject)
                .and_then(|seqs| seqs.iter().rev().find(|s| **s <= bound).copied())
                .unwrap_or(0),
            duplicate_of: message_id
                .and_then(|id| stream.dedupe.get(id))
                .map(|(sequence, _)| *sequence),
        })
    }

    /// Every stream's last sequence, by name (see [`BrokerState::subject_view`]).
    #[cfg(any(test, feature = "sim"))]
    pub fn last_sequences(&self) -> BTreeMap<String, u64> {
        self.streams
            .iter()
            .map(|(name, s)| (name.clone(), s.last_sequence))
            .collect()
    }

    fn stream_for_subject(&mut self, subject: &str) -> Option<&mut StreamState> {
        self.streams
            .values_mut()
            .find(|s| s.config.subjects.iter().any(|p| matches(p, subject)))
    }

    /// Appends a message to the stream capturing `subject`.
    ///
    /// As on NATS, the expected sequence is checked before the message id: a duplicate id is
    /// acknowledged with the original's sequence and `duplicate: true` only when the
    /// expectation (if any) holds.
    ///
    /// # Errors
    /// See [`Broker::append`](crate::broker::Broker::append).
    pub fn append(
        &mut self,
        subject: &str,
        headers: Headers,
        payload: Bytes,
        options: AppendOptions,
        now: Now,
    ) -> Result<AppendAck, BrokerError> {
        validate_subject(subject)?;
        check_user_headers(&headers)?;
        let size = wire_size(&headers, &payload, &options);
        let server_max = self.max_payload;
        if size > server_max {
            return Err(BrokerError::PayloadTooLarge {
                size,
                max: server_max,
            });
        }
        let stream = self
            .stream_for_subject(subject)
            .ok_or_else(|| BrokerError::not_found(format!("stream for subject {subject:?}")))?;
        stream.expire(now.monotonic);
        if let Some(max) = stream.config.max_message_size
            && size > max
        {
            return Err(BrokerError::PayloadTooLarge { size, max });
        }
        // As on nats-server 2.15 (single node and clustered), the expected sequence is checked
        // before the message id: a retried append whose first attempt landed is answered
        // wrong-last-sequence (the first attempt moved the subject's tail), not duplicate.
        if let Some(expected) = options.expected_last_subject_sequence {
            let actual = stream.last_of(subject);
            if actual != expected {
                return Err(BrokerError::WrongLastSequence { expected, actual });
            }
        }
        if let Some(id) = &options.message_id
            && let Some((sequence, _)) = stream.dedupe.get(id)
        {
            return Ok(AppendAck {
                sequence: *sequence,
                duplicate: true,
            });
        }
        stream.last_sequence += 1;
        let sequence = stream.last_sequence;
        let previous = stream.messages.insert(
            sequence,
            StoredEntry {
                message: StoredMessage {
                    subject: subject.to_owned(),
                    sequence,
                    headers,
                    payload,
                    time: now.wall,
                },
                stored_at: now.monotonic,
            },
        );
        assert!(
            previous.is_none(),
            "stream sequence {sequence} assigned twice"
        );
        let seqs = stream.subjects.entry(subject.to_owned()).or_default();
        assert!(
            seqs.back().is_none_or(|last| *last < sequence),
            "a subject's sequences grow"
        );
        seqs.push_back(sequence);
        if let Some(limit) = stream.config.max_messages_per_subject
            && seqs.len() as u64 > limit
        {
            let oldest = seqs.pop_front().expect("over the limit, so not empty");
            stream.messages.remove(&oldest);
        }
        assert_eq!(
            stream.last_of(subject),
            sequence,
            "the append is the subject's last"
        );
        if let Some(id) = options.message_id {
            stream.dedupe.insert(id.clone(), (sequence, now.monotonic));
            stream.dedupe_order.push_back((now.monotonic, id));
        }
        Ok(AppendAck {
            sequence,
            duplicate: false,
        })
    }

    fn stream(&mut self, name: &str, now: Now) -> Result<&mut StreamState, BrokerError> {
        let stream = self
            .streams
            .get_mut(name)
            .ok_or_else(|| BrokerError::not_found(format!("stream {name:?}")))?;
        stream.expire(now.monotonic);
        Ok(stream)
    }

    /// The last message on `subject`.
    ///
    /// # Errors
    /// `NotFound` for an unknown stream.
    pub fn last(
        &mut self,
        stream: &str,
        subject: &str,
        now: Now,
    ) -> Result<Option<StoredMessage>, BrokerError> {
        validate_subject(subject)?;
        let stream = self.stream(stream, now)?;
        let seq = stream.last_of(subject);
        Ok(stream.messages.get(&seq).map(|e| e.message.clone()))
    }

    /// The first message on `subject` with sequence `>= from_sequence`.
    ///
    /// # Errors
    /// `NotFound` for an unknown stream.
    pub fn next(
        &mut self,
        stream: &str,
        subject: &str,
        from_sequence: u64,
        now: Now,
    ) -> Result<Option<StoredMessage>, BrokerError> {
        validate_subject(subject)?;
        Ok(self
            .read_batch(stream, subject, from_sequence, 1, now)?
            .into_iter()
            .next())
    }

    /// Messages matching `filter` (a subject or a pattern) from `from_sequence` on.
    ///
    /// # Errors
    /// `NotFound` for an unknown stream.
    pub fn read(
        &mut self,
        stream: &str,
        filter: &str,
        from_sequence: u64,
        now: Now,
    ) -> Result<Vec<StoredMessage>, BrokerError> {
        self.read_batch(stream, filter, from_sequence, usize::MAX, now)
    }

    /// At most `max` messages matching `filter` from `from_sequence` on, in stream order.
    ///
    /// # Errors
    /// `NotFound` for an unknown stream.
    pub fn read_batch(
        &mut self,
        stream: &str,
        filter: &str,
        from_sequence: u64,
        max: usize,
        now: Now,
    ) -> Result<Vec<StoredMessage>, BrokerError> {
        validate_pattern(filter)?;
        let stream = self.stream(stream, now)?;
        let wildcard = filter.split('.').any(|t| t == "*" || t == ">");
        let read: Vec<StoredMessage> = if wildcard {
            stream
                .messages
                .range(from_sequence..)
                .filter(|(_, e)| matches(filter, &e.message.subject))
                .take(max)
                .map(|(_, e)| e.message.clone())
                .collect()
        } else {
            let Some(seqs) = stream.subjects.get(filter) else {
                return Ok(Vec::new());
            };
            let start = seqs.partition_point(|s| *s < from_sequence);
            seqs.iter()
                .skip(start)
                .filter_map(|s| stream.messages.get(s).map(|e| e.message.clone()))
                .take(max)
                .collect()
        };
        // Paired with the append's checks: what a read returns is in stream order, from the
        // asked position, of the asked subject.
        assert!(read.len() <= max);
        assert!(
            read.windows(2).all(|w| w[0].sequence < w[1].sequence),
            "a read is in stream order"
        );
        assert!(
            read.iter()
                .all(|m| m.sequence >= from_sequence && matches(filter, &m.subject)),
            "a read returns only what it was asked for"
        );
        Ok(read)
    }
}
