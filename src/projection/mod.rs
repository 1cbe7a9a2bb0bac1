//! Projections: durable, at-least-once consumers of a namespace's whole event stream, with a
//! checkpoint kept in a KV bucket.
//!
//! The bus is at-most-once by design; anything that must see every event (read models, outbound
//! integrations) reads the store instead, page by page with [`EventStore::read_all`], and records
//! how far it got. A [`Projector`] does exactly that:
//!
//! 1. read the page after its checkpoint,
//! 2. hand it to the handler,
//! 3. move the checkpoint past it — with update-at-revision, so that two instances of the same
//!    projection cannot both advance it (the second gets [`ProjectionError::Fenced`]).
//!
//! A crash between 2 and 3 hands the same page to the handler again: handlers must be
//! idempotent (or deduplicate on [`StoredCommit::position`](crate::store::StoredCommit::position)). Damaged records are handed over in
//! [`Page::errors`], never skipped silently.
//!
//! [`Projector::run`] keeps a projection live: it catches up, then follows the commits stored
//! after — by the very same step, so the switch from catching up to following has no gap and
//! no duplicate. [`Projector::reset`] starts a projection over (a rebuild), [`Projector::lag`]
//! says how far behind it is. The checkpoint bucket has as many replicas as the store.

mod live;
pub mod policy;

pub use live::{Follow, Lag};
pub use policy::{Dispatch, Policy, PolicyError, PolicyRunner, Reaction, Sent};

use std::future::Future;

use bytes::Bytes;

use crate::broker::{Broker, BrokerError, KvConfig};
use crate::clock::Clock;
use crate::codec::InvalidName;
use crate::store::{EventStore, Page, RawPage, ReadError};
use crate::telemetry;
use tracing::Instrument;

/// Default page size.
pub const PAGE_MAX: usize = 256;

/// Why a projection step failed. The checkpoint did not move.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectionError<E: std::fmt::Debug + std::fmt::Display> {
    /// The projection name is not a valid KV key.
    #[error(transparent)]
    InvalidName(#[from] InvalidName),
    /// The handler failed; the page will be offered again.
    #[error("projection handler failed: {0}")]
    Handler(E),
    /// Another instance of this projection moved the checkpoint meanwhile; this instance should
    /// stop (or reload with [`Projector::checkpoint`]).
    #[error("the checkpoint of projection {name:?} was moved by another instance")]
    Fenced {
        /// The projection.
        name: String,
    },
    /// The checkpoint entry cannot be read.
    #[error("checkpoint of projection {name:?} is damaged: {value:?}")]
    DamagedCheckpoint {
        /// The projection.
        name: String,
        /// What the entry held.
        value: String,
    },
    /// Reading the stream failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The broker failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// A named, checkpointed consumer of one namespace's event stream.
#[derive(Debug)]
pub struct Projector<B, C> {
    store: EventStore<B, C>,
    name: String,
    bucket: String,
    page_max: usize,
    follow: Follow,
}

impl<B: Broker, C: Clock> Projector<B, C> {
    /// A projector called `name` (a KV key: `[-/_=.A-Za-z0-9]`) over `store`'s namespace. The
    /// checkpoint lives in bucket `aether-projections-<namespace>`.
    ///
    /// # Errors
    /// [`ProjectionError::InvalidName`]; broker failures creating the bucket.
    pub async fn open<E: std::fmt::Debug + std::fmt::Display>(
        store: EventStore<B, C>,
        name: &str,
    ) -> Result<Self, ProjectionError<E>> {
        if crate::broker::subject::validate_kv_key(name).is_err() {
            return Err(InvalidName {
                kind: "projection name",
                name: name.to_owned(),
                rule: "may contain only A-Z, a-z, 0-9, '-', '/', '_', '=', '.'",
            }
            .into());
        }
        let bucket = store.names().projections_bucket();
        // The checkpoints are as durable as what they point into.
        let replicas = store.config().replicas;
        store
            .runtime()
            .broker()
            .kv_ensure(KvConfig::new(&bucket).replicas(replicas))
            .await?;
        Ok(Self {
            store,
            name: name.to_owned(),
            bucket,
            page_max: PAGE_MAX,
            follow: Follow::default(),
        })
    }

    /// The store it reads.
    pub fn store(&self) -> &EventStore<B, C> {
        &self.store
    }

    /// Sets the page size.
    pub fn page_max(mut self, page_max: usize) -> Self {
        self.page_max = page_max.max(1);
        self
    }

    /// The position the next page starts at, and the checkpoint's KV revision (0 if the
    /// projection never ran).
    ///
    /// # Errors
    /// Broker failures; a damaged checkpoint.
    pub async fn checkpoint<E: std::fmt::Debug + std::fmt::Display>(
        &self,
    ) -> Result<(u64, u64), ProjectionError<E>> {
        let entry = self
            .store
            .runtime()
            .broker()
            .kv_get(&self.bucket, &self.name)
            .await?;
        match entry {
            None => Ok((1, 0)),
            Some(e) => {
                let text = String::from_utf8_lossy(&e.value).into_owned();
                let position = text
                    .parse()
                    .map_err(|_| ProjectionError::DamagedCheckpoint {
                        name: self.name.clone(),
                        value: text,
                    })?;
                Ok((position, e.revision))
            }
        }
    }

    /// Offers the next page after the checkpoint to `handler`, then moves the checkpoint past
    /// it. Returns how many records the page held (0: caught up; the handler was not called).
    ///
    /// # Errors
    /// [`ProjectionError::Handler`] when the handler fails (the checkpoint stays, the page will
    /// be offered again); [`ProjectionError::Fenced`] when another instance moved the
    /// checkpoint.
    pub async fn step<E, F, Fut>(&self, handler: F) -> Result<usize, ProjectionError<E>>
    where
        E: std::fmt::Debug + std::fmt::Display,
        F: FnOnce(Page) -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        self.step_ahead(handler, None).await
    }

    /// [`step`](Self::step), pipelined when `ahead` is given: the page there is used when it
    /// starts at the checkpoint (and is not empty), and the page after this one is fetched
    /// into it while this one is decoded, handled and checkpointed.
    pub(crate) async fn step_ahead<E, F, Fut>(
        &self,
        handler: F,
        ahead: Option<&mut Option<RawPage>>,
    ) -> Result<usize, ProjectionError<E>>
    where
        E: std::fmt::Debug + std::fmt::Display,
        F: FnOnce(Page) -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        let span = tracing::debug_span!(
            "aether.projector.step",
            namespace = %self.store.namespace(),
            projection = %self.name,
            node = %self.store.runtime().node_id(),
            position = tracing::field::Empty,
            records = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        let result = self
            .step_in_span(handler, ahead)
            .instrument(span.clone())
            .await;
        let _entered = span.enter();
        match &result {
            Ok(records) => {
                span.record("records", records);
                span.record("outcome", "ok");
                metrics::counter!(telemetry::PROJECTOR_RECORDS, "projection" => self.name.clone())
                    .increment(*records as u64);
            }
            Err(ProjectionError::Fenced { .. }) => {
                span.record("outcome", "fenced");
                tracing::warn!(
                    namespace = %self.store.namespace(),
                    projection = %self.name,
                    node = %self.store.runtime().node_id(),
                    "projection checkpoint moved by another instance"
                );
            }
            Err(error) => {
                span.record("outcome", "error");
                tracing::warn!(
                    %error,
                    namespace = %self.store.namespace(),
                    projection = %self.name,
                    node = %self.store.runtime().node_id(),
                    "projection step failed"
                );
            }
        }
        result
    }

    async fn step_in_span<E, F, Fut>(
        &self,
        handler: F,
        mut ahead: Option<&mut Option<RawPage>>,
    ) -> Result<usize, ProjectionError<E>>
    where
        E: std::fmt::Debug + std::fmt::Display,
        F: FnOnce(Page) -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        let (position, revision) = self.checkpoint().await?;
        tracing::Span::current().record("position", position);
        let fetched = ahead.as_deref_mut().and_then(Option::take);
        let raw = match fetched {
            // A page fetched ahead is as good as one fetched now: what was stored since lands
            // after it. An empty one is not: it would hide what a notification announced.
            Some(raw) if raw.from == position && !raw.records.is_empty() => raw,
            _ => self.store.fetch_page(position, self.page_max).await?,
        };
        let rt = self.store.runtime();
        metrics::gauge!(telemetry::PROJECTOR_POSITION, "projection" => self.name.clone())
            .set(position as f64);
        let records = raw.records.len();
        if records == 0 {
            metrics::gauge!(telemetry::PROJECTOR_LAG_SECONDS, "projection" => self.name.clone())
                .set(0.0);
            return Ok(0);
        }
        let next = raw.next_position();
        // Only a full page has more behind it for sure: a shorter one means caught up, and a
        // page fetched after it would mostly come back empty.
        let fetch_next = ahead.is_some() && records >= self.page_max;
        let prefetch = async {
            if fetch_next {
                self.store.fetch_page(next, self.page_max).await.ok()
            } else {
                None
            }
        };
        let work = async {
            let page = self.store.decode_page(raw);
            // Lag: how old the newest record of this page is.
            let lag = page
                .commits
                .last()
                .and_then(|c| c.events.last())
                .and_then(|e| rt.clock().wall().duration_since(e.timestamp).ok())
                .unwrap_or_default();
            metrics::gauge!(telemetry::PROJECTOR_LAG_SECONDS, "projection" => self.name.clone())
                .set(telemetry::seconds(lag));
            self.handle_and_move(handler, page, next, revision).await
        };
        let (mut prefetch, mut work) = (std::pin::pin!(prefetch), std::pin::pin!(work));
        // The next page's request goes out first (the prefetch is polled first), so the broker
        // serves it while this page is decoded and handled; a failed step does not wait for it.
        let mut fetched = None;
        let mut prefetched = false;
        let result = loop {
            tokio::select! {
                biased;
                page = &mut prefetch, if !prefetched => {
                    fetched = page;
                    prefetched = true;
                }
                result = &mut work => break result,
            }
        };
        if result.is_ok() && !prefetched {
            fetched = prefetch.await;
        }
        if let (Ok(_), Some(slot)) = (&result, ahead) {
            *slot = fetched;
        }
        result.map(|()| records)
    }

    /// Hands `page` to `handler` and moves the checkpoint (at `revision`) to `next`.
    async fn handle_and_move<E, F, Fut>(
        &self,
        handler: F,
        page: Page,
        next: u64,
        revision: u64,
    ) -> Result<(), ProjectionError<E>>
    where
        E: std::fmt::Debug + std::fmt::Display,
        F: FnOnce(Page) -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        // Planted bug: move the checkpoint first, so a crash before the handler loses the page.
        let early = crate::planted::planted!(self.store.runtime(), checkpoint_before_handling);
        let mut pending = Some((handler, page));
        if !early && let Some((handler, page)) = pending.take() {
            handler(page).await.map_err(ProjectionError::Handler)?;
        }
        let broker = self.store.runtime().broker();
        let value = Bytes::from(next.to_string());
        let moved = if crate::planted::planted!(self.store.runtime(), projector_skips_fencing) {
            // Planted bug: move the checkpoint whatever another instance did meanwhile.
            broker.kv_put(&self.bucket, &self.name, value).await
        } else if revision == 0 {
            broker.kv_create(&self.bucket, &self.name, value).await
        } else {
            broker
                .kv_update(&self.bucket, &self.name, value, revision)
                .await
        };
        if let Some((handler, page)) = pending.take()
            && moved.is_ok()
        {
            handler(page).await.map_err(ProjectionError::Handler)?;
        }
        match moved {
            Ok(_) => Ok(()),
            Err(BrokerError::AlreadyExists { .. } | BrokerError::WrongRevision { .. }) => {
                Err(ProjectionError::Fenced {
                    name: self.name.clone(),
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Steps until caught up; returns how many records were handled.
    ///
    /// # Errors
    /// As [`Projector::step`].
    pub async fn catch_up<E, F, Fut>(&self, mut handler: F) -> Result<usize, ProjectionError<E>>
    where
        E: std::fmt::Debug + std::fmt::Display,
        F: FnMut(Page) -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        let mut total = 0;
        let mut ahead = None;
        loop {
            match self.step_ahead(&mut handler, Some(&mut ahead)).await? {
                0 => return Ok(total),
                n => total += n,
            }
        }
    }
}
