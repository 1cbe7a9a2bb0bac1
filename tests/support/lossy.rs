//! A broker wrapper that loses append replies: the append reaches the inner broker and is
//! committed, then the caller is told it timed out — the ambiguous write `docs/design.md` describes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use aether::broker::{
    AppendAck, AppendOptions, Broker, BrokerError, Headers, KvConfig, KvEntry, KvWatch, Message,
    ReadFrom, StoredMessage, StreamConfig, Subscription,
};
use bytes::Bytes;

/// How the wrapper answers the retry that follows a lost reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryAnswer {
    /// Pass the retry through unchanged: the broker answers as it does (nats-server 2.15 and the
    /// memory broker check the expected sequence first and answer wrong-last-sequence).
    Dedupe,
    /// Strip the message id from the retry, so the broker checks the expected sequence first
    /// and answers wrong-last-sequence (what clustered servers may do).
    SequenceFirst,
    /// A stream leader cut off from its followers (seen on a real 3-server cluster by the
    /// nemesis): the first append is proposed but not committed — nothing is stored yet, the
    /// caller times out; every later append to the subject is refused with wrong-last-sequence,
    /// one past the expected (the leader counts the write in flight), while reads show nothing
    /// new. [`LossyBroker::release`] commits it, as the leader does once it hears from a
    /// follower again.
    LateCommit,
    /// A stream leader that no longer leads, its links just back, answers too (seen on a real
    /// 3-server cluster by the nemesis): the first append that expects a non-zero sequence is
    /// stored by the real leader, but the caller hears the stale one's refusal — wrong last
    /// sequence, one behind what it expected.
    StaleLeaderAnswers,
    /// As [`RetryAnswer::StaleLeaderAnswers`], and the stream leader cannot be asked right
    /// after (an election began: the simulation's replicated model found this): the leader
    /// read that would tell a stale refusal from a real one times out, once.
    StaleLeaderThenNoLeader,
}

/// An append held by [`RetryAnswer::LateCommit`].
type Held = (String, Headers, Bytes, AppendOptions);

/// Wraps a broker; the first `lose` appends are committed but answered with a timeout.
#[derive(Clone)]
pub struct LossyBroker<B> {
    inner: B,
    lose: Arc<AtomicU32>,
    answer: RetryAnswer,
    /// Appends that reached the inner broker.
    pub appends: Arc<AtomicU32>,
    held: Arc<std::sync::Mutex<Option<Held>>>,
    /// Leader reads still to time out ([`RetryAnswer::StaleLeaderThenNoLeader`]).
    leaderless_reads: Arc<AtomicU32>,
}

impl<B: Broker> LossyBroker<B> {
    /// Loses the replies of the next `lose` appends.
    pub fn new(inner: B, lose: u32, answer: RetryAnswer) -> Self {
        Self {
            inner,
            lose: Arc::new(AtomicU32::new(lose)),
            answer,
            appends: Arc::new(AtomicU32::new(0)),
            held: Arc::default(),
            leaderless_reads: Arc::default(),
        }
    }

    /// Commits the append [`RetryAnswer::LateCommit`] held, if any.
    pub async fn release(&self) -> Option<Result<AppendAck, BrokerError>> {
        let held = self.held.lock().unwrap().take();
        match held {
            Some((subject, headers, payload, options)) => {
                Some(self.inner.append(&subject, headers, payload, options).await)
            }
            None => None,
        }
    }
}

impl<B: Broker> Broker for LossyBroker<B> {
    async fn ensure_stream(&self, config: StreamConfig) -> Result<(), BrokerError> {
        self.inner.ensure_stream(config).await
    }

    async fn append(
        &self,
        subject: &str,
        headers: Headers,
        payload: Bytes,
        mut options: AppendOptions,
    ) -> Result<AppendAck, BrokerError> {
        let previous = self.appends.fetch_add(1, Ordering::SeqCst);
        if self.answer == RetryAnswer::LateCommit {
            let mut held = self.held.lock().unwrap();
            if held.is_none() && previous == 0 {
                *held = Some((subject.to_owned(), headers, payload, options));
                return Err(BrokerError::Timeout {
                    operation: "append acknowledgement (proposal not committed)".into(),
                });
            }
            if let Some((held_subject, ..)) = held.as_ref()
                && held_subject == subject
            {
                let expected = options.expected_last_subject_sequence.unwrap_or(0);
                return Err(BrokerError::WrongLastSequence {
                    expected,
                    actual: expected + 1,
                });
            }
        }
        if matches!(
            self.answer,
            RetryAnswer::StaleLeaderAnswers | RetryAnswer::StaleLeaderThenNoLeader
        ) && let Some(expected) = options.expected_last_subject_sequence
            && expected > 0
            && self
                .lose
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            self.inner
                .append(subject, headers, payload, options)
                .await?;
            if self.answer == RetryAnswer::StaleLeaderThenNoLeader {
                self.leaderless_reads.store(1, Ordering::SeqCst);
            }
            return Err(BrokerError::WrongLastSequence {
                expected,
                actual: expected - 1,
            });
        }
        if previous > 0 && self.answer == RetryAnswer::SequenceFirst {
            options.message_id = None;
        }
        let result = self.inner.append(subject, headers, payload, options).await;
        let lose = matches!(
            self.answer,
            RetryAnswer::Dedupe | RetryAnswer::SequenceFirst
        ) && self
            .lose
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if lose && result.is_ok() {
            return Err(BrokerError::Timeout {
                operation: "append acknowledgement (reply lost on purpose)".into(),
            });
        }
        result
    }

    async fn last(
        &self,
        stream: &str,
        subject: &str,
        from: ReadFrom,
    ) -> Result<Option<StoredMessage>, BrokerError> {
        self.inner.last(stream, subject, from).await
    }

    async fn next(
        &self,
        stream: &str,
        subject: &str,
        from_sequence: u64,
        from: ReadFrom,
    ) -> Result<Option<StoredMessage>, BrokerError> {
        if from == ReadFrom::Leader
            && self
                .leaderless_reads
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            return Err(BrokerError::Timeout {
                operation: "leader read (stream leader election in progress)".into(),
            });
        }
        self.inner.next(stream, subject, from_sequence, from).await
    }

    async fn read(
        &self,
        stream: &str,
        subject: &str,
        from_sequence: u64,
    ) -> Result<Vec<StoredMessage>, BrokerError> {
        self.inner.read(stream, subject, from_sequence).await
    }

    async fn publish(
        &self,
        subject: &str,
        headers: Headers,
        payload: Bytes,
    ) -> Result<(), BrokerError> {
        self.inner.publish(subject, headers, payload).await
    }

    async fn subscribe(&self, pattern: &str) -> Result<Subscription, BrokerError> {
        self.inner.subscribe(pattern).await
    }

    async fn request(
        &self,
        subject: &str,
        headers: Headers,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Message, BrokerError> {
        self.inner.request(subject, headers, payload, timeout).await
    }

    async fn kv_ensure(&self, config: KvConfig) -> Result<(), BrokerError> {
        self.inner.kv_ensure(config).await
    }

    async fn kv_get(&self, bucket: &str, key: &str) -> Result<Option<KvEntry>, BrokerError> {
        self.inner.kv_get(bucket, key).await
    }

    async fn kv_create(&self, bucket: &str, key: &str, value: Bytes) -> Result<u64, BrokerError> {
        self.inner.kv_create(bucket, key, value).await
    }

    async fn kv_update(
        &self,
        bucket: &str,
        key: &str,
        value: Bytes,
        revision: u64,
    ) -> Result<u64, BrokerError> {
        self.inner.kv_update(bucket, key, value, revision).await
    }

    async fn kv_put(&self, bucket: &str, key: &str, value: Bytes) -> Result<u64, BrokerError> {
        self.inner.kv_put(bucket, key, value).await
    }

    async fn kv_delete(&self, bucket: &str, key: &str) -> Result<(), BrokerError> {
        self.inner.kv_delete(bucket, key).await
    }

    async fn kv_entries(&self, bucket: &str) -> Result<Vec<KvEntry>, BrokerError> {
        self.inner.kv_entries(bucket).await
    }

    async fn kv_watch(&self, bucket: &str, key_pattern: &str) -> Result<KvWatch, BrokerError> {
        self.inner.kv_watch(bucket, key_pattern).await
    }
}
