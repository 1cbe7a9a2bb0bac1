//! Streaming reads: an actor's events a page at a time, with the same checks as a replay.

use std::collections::VecDeque;

use futures::Stream;
use tracing::Instrument;

use super::replay::ReplayChecker;
use super::tip::Tip;
use super::{EventStore, ReadError};
use crate::broker::{Broker, ReadFrom};
use crate::clock::Clock;
use crate::event::Event;

/// How many records an event stream reads per page.
pub const STREAM_PAGE: usize = 256;

enum Phase {
    /// Reading pages after the last record checked.
    Pages,
    /// The pages ran out: catching up from the stream leader to what this handle has
    /// written or read before (a lagging replica served the pages).
    Floor,
    /// Everything read.
    Done,
}

struct Reading<B, C> {
    store: EventStore<B, C>,
    actor: String,
    subject: String,
    from_version: u64,
    checker: ReplayChecker,
    ready: VecDeque<Event>,
    phase: Phase,
    span: tracing::Span,
}

impl<B: Broker, C: Clock> EventStore<B, C> {
    /// The actor's events with version `>= from_version`, as a stream that reads
    /// [`STREAM_PAGE`] records at a time: memory stays bounded by a page (plus the ids of the
    /// commits read, by which a repeated commit is recognised), however long the history.
    ///
    /// It yields exactly what [`events`](Self::events) returns, in order, with the same checks
    /// — except that events before a damaged record have been yielded by the time the stream
    /// reports it: a damaged record ends the stream with [`ReadError::Damaged`], expired
    /// versions with [`ReadError::Expired`], and a page that does not arrive within the store's
    /// deadline with [`ReadError::DeadlineExceeded`] (each page has the whole deadline).
    ///
    /// ```
    /// # use aether::{EventStore, ExpectedVersion, MemoryBroker, NewEvent, Runtime, StoreConfig};
    /// # use futures::StreamExt;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let store = EventStore::open(Runtime::system(MemoryBroker::new()), StoreConfig::new("s")).await?;
    /// # store.append("a", ExpectedVersion::Any, vec![NewEvent::new("T", serde_json::json!(1))]).await?;
    /// let mut events = std::pin::pin!(store.events_stream("a", 1));
    /// while let Some(event) = events.next().await {
    ///     let event = event?;
    ///     assert_eq!(event.version, 1);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn events_stream(
        &self,
        actor: &str,
        from_version: u64,
    ) -> impl Stream<Item = Result<Event, ReadError>> + Send + 'static {
        let span = tracing::debug_span!(
            "aether.read",
            namespace = %self.inner.config.namespace,
            actor,
            from = from_version,
            op = "events_stream",
        );
        let start = match self.inner.names.event_subject(actor) {
            Ok(subject) => Ok(Reading {
                store: self.clone(),
                actor: actor.to_owned(),
                subject,
                from_version,
                checker: self.checker(actor, Tip::default(), from_version),
                ready: VecDeque::new(),
                phase: Phase::Pages,
                span,
            }),
            Err(e) => Err(ReadError::from(e)),
        };
        futures::stream::unfold(Some(start), |state| async move {
            match state? {
                Err(e) => Some((Err(e), None)),
                Ok(mut reading) => {
                    let item = reading.next().await?;
                    Some((item, Some(Ok(reading))))
                }
            }
        })
    }
}

impl<B: Broker, C: Clock> Reading<B, C> {
    /// The next event, the error that ends the stream, or `None` at its end.
    async fn next(&mut self) -> Option<Result<Event, ReadError>> {
        loop {
            // Expiry is known from the first commit read, before any event is handed out;
            // damage comes after the events before it (a page stops at a damaged record).
            if let Some(error) = self.expired() {
                self.ready.clear();
                self.phase = Phase::Done;
                return Some(Err(error));
            }
            if let Some(event) = self.ready.pop_front() {
                return Some(Ok(event));
            }
            if let Some(error) = self.damaged() {
                self.phase = Phase::Done;
                return Some(Err(error));
            }
            let step = match self.phase {
                Phase::Pages => self.page().await,
                Phase::Floor => self.floor().await,
                Phase::Done => return None,
            };
            if let Err(error) = step {
                self.phase = Phase::Done;
                return Some(Err(error));
            }
        }
    }

    /// The first damaged record met.
    fn damaged(&mut self) -> Option<ReadError> {
        if self.checker.replay.errors.is_empty() {
            return None;
        }
        Some(ReadError::Damaged(self.checker.replay.errors.remove(0)))
    }

    /// Versions asked for that expired.
    fn expired(&self) -> Option<ReadError> {
        match self.checker.replay.expired_before {
            Some(first_available) if self.from_version < first_available => {
                Some(ReadError::Expired {
                    actor: self.actor.clone(),
                    from: self.from_version,
                    first_available,
                })
            }
            _ => None,
        }
    }

    fn take_checked(&mut self) {
        self.ready
            .extend(std::mem::take(&mut self.checker.replay.events));
    }

    async fn page(&mut self) -> Result<(), ReadError> {
        let store = &self.store;
        let from = self.checker.last_sequence + 1;
        let operation = || format!("page of events of actor {:?}", self.actor);
        let page = store
            .bounded(operation, async {
                store
                    .broker()
                    .read_batch(&store.inner.events_stream, &self.subject, from, STREAM_PAGE)
                    .await
                    .map_err(ReadError::from)
            })
            .instrument(self.span.clone())
            .await?;
        if page.is_empty() {
            self.phase = Phase::Floor;
            return Ok(());
        }
        for record in page {
            self.checker.push(record);
            if !self.checker.replay.errors.is_empty() {
                // Nothing after the first damaged record is handed out.
                self.phase = Phase::Done;
                break;
            }
        }
        self.take_checked();
        Ok(())
    }

    async fn floor(&mut self) -> Result<(), ReadError> {
        let store = &self.store;
        let floor = store.hint(&self.actor).map_or(0, |tip| tip.sequence);
        if self.checker.last_sequence < floor {
            let from = self.checker.last_sequence + 1;
            let operation = || format!("events of actor {:?} from the leader", self.actor);
            let record = store
                .bounded(operation, async {
                    store
                        .broker()
                        .next(
                            &store.inner.events_stream,
                            &self.subject,
                            from,
                            ReadFrom::Leader,
                        )
                        .await
                        .map_err(ReadError::from)
                })
                .instrument(self.span.clone())
                .await?;
            if let Some(record) = record {
                self.checker.push(record);
                self.take_checked();
                return Ok(());
            }
        }
        self.phase = Phase::Done;
        if self.checker.last_sequence > 0 {
            store.set_hint(&self.actor, self.checker.tip());
        } else if store.inner.config.retention.is_some() {
            // Nothing stored under retention: a new actor, or one whose every event expired.
            // The full read tells which (its latest snapshot), and is as small as the subject.
            let events = store.events(&self.actor, self.from_version).await?;
            self.ready.extend(events);
        }
        Ok(())
    }
}
