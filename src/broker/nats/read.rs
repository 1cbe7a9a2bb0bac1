//! Reading streams without leaving anything behind on the server: batched direct gets (one
//! round trip for a short subject), and for long reads an ordered consumer that is deleted when
//! the read ends.

use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use futures::StreamExt;

use super::errors::{Op, map_error};
use super::{NatsBroker, from_header_map, stored_message};
use crate::broker::{BrokerError, StoredMessage};

impl NatsBroker {
    /// Hands `sink` the messages of `stream` matching `filter` from `from_sequence` on, in
    /// stream order, until the end of the stream or until `sink` returns `false`.
    ///
    /// Pages come from batched direct gets, which create nothing on the server. A read that
    /// still has more than [`CONSUMER_READ_MIN`] messages to go after a page continues with an
    /// ordered consumer (flow-controlled, faster for long reads), deleted when the read ends.
    pub(super) async fn read_pages<F: FnMut(StoredMessage) -> bool + Send>(
        &self,
        op: &Op<'_>,
        stream: &str,
        filter: &str,
        from_sequence: u64,
        mut sink: F,
    ) -> Result<(), BrokerError> {
        let mut from = from_sequence.max(1);
        // A short first page: most reads (an actor's history) end within it, and a long read
        // learns its length from it cheaply before moving on to a consumer.
        let mut batch = DIRECT_FIRST_BATCH_MAX;
        loop {
            let page = self
                .direct_page(op, stream, filter, from, batch, &mut sink)
                .await?;
            batch = DIRECT_BATCH_MAX;
            if page.unanswered {
                // No replica takes direct gets right now: read from the leader instead.
                return self.consume(op, stream, filter, from, sink).await;
            }
            let Some(last) = page.last_sequence else {
                return Ok(());
            };
            if page.stopped || page.pending == 0 {
                return Ok(());
            }
            from = last + 1;
            if page.pending > CONSUMER_READ_MIN {
                return self.consume(op, stream, filter, from, sink).await;
            }
        }
    }

    /// Up to `max` messages of `stream` matching `filter` from `from_sequence` on, by batched
    /// direct gets (from the leader through a consumer when no replica answers them).
    pub(super) async fn read_batch_in(
        &self,
        op: &Op<'_>,
        stream: &str,
        filter: &str,
        from_sequence: u64,
        max: usize,
    ) -> Result<Vec<StoredMessage>, BrokerError> {
        let mut out = Vec::new();
        let mut from = from_sequence.max(1);
        while out.len() < max {
            let page = self
                .direct_page(
                    op,
                    stream,
                    filter,
                    from,
                    (max - out.len()).min(DIRECT_BATCH_MAX),
                    &mut |m| {
                        out.push(m);
                        true
                    },
                )
                .await?;
            if page.unanswered {
                let wanted = max - out.len();
                let mut taken = 0;
                self.consume(op, stream, filter, from, |m| {
                    out.push(m);
                    taken += 1;
                    taken < wanted
                })
                .await?;
                break;
            }
            match page.last_sequence {
                Some(last) if page.pending > 0 => from = last + 1,
                _ => break,
            }
        }
        Ok(out)
    }

    /// One batched direct get: up to `batch` messages of `filter` from `from_sequence`,
    /// answered by any replica, handed to `sink` as they arrive.
    pub(super) async fn direct_page<F: FnMut(StoredMessage) -> bool + Send>(
        &self,
        op: &Op<'_>,
        stream: &str,
        filter: &str,
        from_sequence: u64,
        batch: usize,
        sink: &mut F,
    ) -> Result<DirectPage, BrokerError> {
        let inbox = self.client.new_inbox();
        let mut replies = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| map_error(op, &e))?;
        let request = serde_json::json!({
            "seq": from_sequence,
            "next_by_subj": filter,
            "batch": batch,
            "max_bytes": DIRECT_BATCH_BYTES_MAX,
        });
        self.client
            .publish_with_reply(
                format!("{}.DIRECT.GET.{stream}", self.api_prefix),
                inbox,
                Bytes::from(request.to_string()),
            )
            .await
            .map_err(|e| map_error(op, &e))?;
        let mut page = DirectPage::default();
        loop {
            let reply = match crate::rt::timeout(self.request_timeout, replies.next()).await {
                Ok(Some(reply)) => reply,
                Ok(None) => {
                    return Err(BrokerError::Unavailable {
                        reason: format!("connection closed while {op}"),
                    });
                }
                Err(_) => {
                    return Err(BrokerError::Timeout {
                        operation: op.to_string(),
                    });
                }
            };
            match reply.status.map(|s| s.as_u16()) {
                None => {
                    let message =
                        jetstream::message::StreamMessage::try_from(reply).map_err(|e| {
                            BrokerError::Other {
                                reason: format!("malformed direct get reply while {op}: {e}"),
                            }
                        })?;
                    // A read never hands out a sequence twice or out of order, whatever the
                    // replies do around a leader change (a real R3 leader kill under load
                    // once showed 128 records twice in one read; replay itself was clean).
                    if message.sequence < from_sequence
                        || page
                            .last_sequence
                            .is_some_and(|last| message.sequence <= last)
                    {
                        continue;
                    }
                    page.last_sequence = Some(message.sequence);
                    let stored = StoredMessage {
                        subject: message.subject.to_string(),
                        sequence: message.sequence,
                        headers: from_header_map(Some(&message.headers)),
                        payload: message.payload,
                        time: SystemTime::from(message.time),
                    };
                    if !sink(stored) {
                        page.stopped = true;
                        return Ok(page);
                    }
                }
                // End of batch: how many matching messages follow.
                Some(204) => {
                    page.pending = reply
                        .headers
                        .as_ref()
                        .and_then(|h| h.get(HEADER_NUM_PENDING))
                        .and_then(|v| v.as_str().parse().ok())
                        .unwrap_or(0);
                    return Ok(page);
                }
                // Nothing at or after `from_sequence`.
                Some(404) => return Ok(page),
                // Nobody answers direct gets for this stream: it does not exist, or no replica
                // serves direct gets right now (seen on a 3-node cluster for seconds at a time
                // on one connection while the others were answered).
                Some(503) => {
                    return match self.missing_stream(op, stream).await {
                        error @ BrokerError::NotFound { .. } => Err(error),
                        error => {
                            tracing::debug!(stream, %error, "direct get unanswered");
                            page.unanswered = true;
                            Ok(page)
                        }
                    };
                }
                Some(status) => {
                    return Err(BrokerError::Other {
                        reason: format!(
                            "direct get on {stream} answered {status} {} while {op}",
                            reply.description.unwrap_or_default()
                        ),
                    });
                }
            }
        }
    }

    /// Why `stream` did not answer: `NotFound` when the server says it does not exist,
    /// `Unavailable` when that cannot be told (e.g. no stream or meta leader right now).
    pub(super) async fn missing_stream(&self, op: &Op<'_>, stream: &str) -> BrokerError {
        match self.js.get_stream(stream).await {
            Err(e) if matches!(map_error(op, &e), BrokerError::NotFound { .. }) => {
                BrokerError::not_found(format!("stream {stream:?}"))
            }
            Err(e) => BrokerError::Unavailable {
                reason: format!("stream {stream:?} did not answer: {e}"),
            },
            Ok(_) => BrokerError::Unavailable {
                reason: format!("no replica of stream {stream:?} answered"),
            },
        }
    }

    /// Reads `filter` of `stream` from `from_sequence` with an ordered consumer until nothing is
    /// pending or `sink` returns `false`, then deletes the consumer.
    ///
    /// The consumer's `num_pending` at creation says whether there is anything to read; each
    /// delivered message says how many are still pending, and the read stops at 0. If the
    /// consumer goes quiet while messages should still be pending (they expired meanwhile, or
    /// the stream changed leader), it is replaced by one starting after the last delivered
    /// sequence, whose fresh `num_pending` tells the truth.
    pub(super) async fn consume<F: FnMut(StoredMessage) -> bool + Send>(
        &self,
        op: &Op<'_>,
        stream: &str,
        filter: &str,
        from_sequence: u64,
        mut sink: F,
    ) -> Result<(), BrokerError> {
        let handle = self
            .js
            .get_stream_no_info(stream)
            .await
            .map_err(|e| map_error(op, &e))?;
        let mut from = from_sequence;
        let mut stalls = 0u32;
        loop {
            let ordered = handle
                .create_consumer(consumer::pull::OrderedConfig {
                    filter_subject: filter.to_owned(),
                    deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                        start_sequence: from,
                    },
                    ..Default::default()
                })
                .await
                .map_err(|e| map_error(op, &e))?;
            let name = ordered.cached_info().name.clone();
            let result = self.drain_consumer(op, ordered, &mut from, &mut sink).await;
            // Best effort: a consumer the delete misses (the process died, the connection broke)
            // expires by async-nats' 30 s inactive threshold.
            if let Err(error) = handle.delete_consumer(&name).await {
                tracing::debug!(stream, consumer = name, %error, "read consumer not deleted");
            }
            match result? {
                ConsumerEnd::Done => return Ok(()),
                ConsumerEnd::Stalled => {
                    stalls += 1;
                    if stalls * CONSUMER_IDLE_MAX.as_millis() as u32
                        > self.request_timeout.as_millis() as u32
                    {
                        return Err(BrokerError::Timeout {
                            operation: op.to_string(),
                        });
                    }
                }
            }
        }
    }

    /// Hands the messages of one ordered consumer to `sink`; `from` follows the last delivered
    /// sequence, so that a replacement consumer can carry on after a stall.
    async fn drain_consumer<F: FnMut(StoredMessage) -> bool + Send>(
        &self,
        op: &Op<'_>,
        ordered: consumer::Consumer<consumer::pull::OrderedConfig>,
        from: &mut u64,
        sink: &mut F,
    ) -> Result<ConsumerEnd, BrokerError> {
        if ordered.cached_info().num_pending == 0 {
            return Ok(ConsumerEnd::Done);
        }
        let mut messages = ordered.messages().await.map_err(|e| map_error(op, &e))?;
        loop {
            let next = crate::rt::timeout(CONSUMER_IDLE_MAX, messages.next()).await;
            let message = match next {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => return Err(map_error(op, &e)),
                Ok(None) | Err(_) => return Ok(ConsumerEnd::Stalled),
            };
            let Some(stored) = stored_message(&message) else {
                continue;
            };
            let left = message.info().map(|i| i.pending).unwrap_or(0);
            if stored.sequence < *from {
                // Already handed out (see `direct_page`): never twice, never backwards.
                if left == 0 {
                    return Ok(ConsumerEnd::Done);
                }
                continue;
            }
            *from = stored.sequence + 1;
            if !sink(stored) || left == 0 {
                return Ok(ConsumerEnd::Done);
            }
        }
    }
}

/// How a batched direct get ended.
#[derive(Debug, Default)]
pub(super) struct DirectPage {
    /// Sequence of the last message delivered, if any.
    pub(super) last_sequence: Option<u64>,
    /// Matching messages after the page, as the server counted them at its end.
    pub(super) pending: u64,
    /// The sink asked to stop.
    pub(super) stopped: bool,
    /// No replica answered (the stream exists): nothing was delivered.
    pub(super) unanswered: bool,
}

/// How one ordered consumer ended.
enum ConsumerEnd {
    /// Nothing pending, or the sink asked to stop.
    Done,
    /// It went quiet while messages should be pending.
    Stalled,
}

/// Header of a direct get's end-of-batch status: matching messages not sent.
const HEADER_NUM_PENDING: &str = "Nats-Num-Pending";
/// Messages in the first batched direct get of a read.
const DIRECT_FIRST_BATCH_MAX: usize = 128;
/// Messages per later batched direct get.
pub(super) const DIRECT_BATCH_MAX: usize = 512;
/// Bytes per batched direct get (well under the server's slow-consumer limit).
const DIRECT_BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;
/// A read with more messages than this left after a page switches to an ordered consumer,
/// whose flow-controlled delivery is about twice as fast for long reads.
const CONSUMER_READ_MIN: u64 = 2_048;

/// How long a read's ordered consumer may deliver nothing while messages are still pending
/// before it is recreated.
const CONSUMER_IDLE_MAX: Duration = Duration::from_millis(500);
