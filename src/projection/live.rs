//! A live projection: catch up, then follow what is stored after; start over; measure the lag.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;

use super::{ProjectionError, Projector};
use crate::actor::Router;
use crate::broker::Broker;
use crate::bus::{BusSubscription, Filter};
use crate::clock::Clock;
use crate::retry::Backoff;
use crate::store::{EVENT_STORED, Page};
use crate::telemetry;

/// How [`Projector::run`] waits for new commits and retries failed steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Follow {
    /// The longest a new commit waits to be seen. With a bus on the store, its `EventStored`
    /// notifications wake the projector at once and this is the fallback for a lost one (the
    /// bus is at-most-once); without one, the projector polls this often.
    pub poll_interval: Duration,
    /// The longest wait between two tries after a failed step (the handler failed, or the
    /// broker did); the first waits a tenth of it.
    pub retry_max: Duration,
}

impl Default for Follow {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_millis(500),
            retry_max: Duration::from_secs(5),
        }
    }
}

impl Follow {
    /// Sets [`Follow::poll_interval`].
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Sets [`Follow::retry_max`].
    pub fn retry_max(mut self, max: Duration) -> Self {
        self.retry_max = max.max(Duration::from_millis(1));
        self
    }
}

/// How far a projection is behind its namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Lag {
    /// The position the next page starts at (the checkpoint).
    pub position: u64,
    /// Records after the checkpoint (commits and damaged records), counted over at most one
    /// page ([`Projector::page_max`]): reading further to count costs what projecting does.
    pub records: usize,
    /// Whether more records follow the ones counted (the page was full).
    pub more: bool,
    /// How long ago the oldest commit not yet handled was stored (zero when caught up).
    pub behind: Duration,
}

impl Lag {
    /// Whether the projection has handled everything stored when the lag was read.
    pub fn caught_up(&self) -> bool {
        self.records == 0
    }
}

impl<B: Broker, C: Clock> Projector<B, C> {
    /// Sets how [`Projector::run`] follows and retries.
    pub fn follow(mut self, follow: Follow) -> Self {
        self.follow = follow;
        self
    }

    /// Catches up, then follows the commits stored after, until `stop` completes; returns how
    /// many records were handled.
    ///
    /// Following is the same [`Projector::step`] as catching up, from the same checkpoint:
    /// there is no switch-over at which a commit could be skipped or handed over twice. A
    /// commit is seen as soon as the store's `EventStored` notification arrives (with a bus on
    /// the store) and at most [`Follow::poll_interval`] after it is stored otherwise. A failed
    /// step — the handler failed, the broker failed or the store's deadline passed — is tried
    /// again after a backoff (the same page is offered again), and logged and counted. `stop`
    /// is only looked at between steps: a page being handled is finished first.
    ///
    /// # Errors
    /// [`ProjectionError::Fenced`] when another instance (or a [`Projector::reset`]) moved the
    /// checkpoint between this one's read and its move: this instance stops, the other one
    /// carries on; [`ProjectionError::DamagedCheckpoint`].
    pub async fn run<E, F, Fut>(
        &self,
        handler: F,
        stop: impl Future<Output = ()>,
    ) -> Result<u64, ProjectionError<E>>
    where
        E: std::fmt::Debug + std::fmt::Display,
        F: FnMut(Page) -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        self.run_gated(handler, stop, None::<fn() -> bool>).await
    }

    /// [`Projector::run`] on a cluster: every node runs this for the projection, and only the
    /// node `router` says owns it (its key is `projection/<name>`, placed like an actor) steps;
    /// the others stand by. When the owner leaves or fails, its shard moves and the new owner
    /// carries on from the checkpoint. Ownership is checked before every step and, while a step
    /// runs, every [`Follow::poll_interval`]: a step still running when the node stops owning
    /// the projection is abandoned (dropped at its next await; the checkpoint has not moved,
    /// the new owner hands the page over again). A former owner finishing a step while the new
    /// one starts is the race the checkpoint's fencing settles (the page is handed over again,
    /// nothing is skipped), so here being fenced is not an error: the instance stands by until
    /// it owns the projection again.
    ///
    /// # Errors
    /// [`ProjectionError::DamagedCheckpoint`].
    pub async fn run_owned<R, E, F, Fut>(
        &self,
        router: &R,
        handler: F,
        stop: impl Future<Output = ()>,
    ) -> Result<u64, ProjectionError<E>>
    where
        R: Router,
        E: std::fmt::Debug + std::fmt::Display,
        F: FnMut(Page) -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        let node = self.store.runtime().node_id().clone();
        let key = format!("projection/{}", self.name);
        let owns = move || {
            router
                .ownership(&key)
                .is_some_and(|ownership| ownership.owner == node)
        };
        self.run_gated(handler, stop, Some(owns)).await
    }

    /// The loop of [`Projector::run`]; with a `gate`, only steps while it says so and takes
    /// being fenced as a reason to stand by.
    async fn run_gated<E, F, Fut>(
        &self,
        mut handler: F,
        stop: impl Future<Output = ()>,
        mut gate: Option<impl FnMut() -> bool>,
    ) -> Result<u64, ProjectionError<E>>
    where
        E: std::fmt::Debug + std::fmt::Display,
        F: FnMut(Page) -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        let rt = self.store.runtime();
        let clock = rt.clock();
        // Subscribed before the first step: a commit stored after a step found nothing is
        // announced to this subscription.
        let mut notes = self.store.bus().and_then(|bus| {
            bus.subscribe(
                self.store.namespace(),
                Filter::all().event_types([EVENT_STORED]),
            )
            .ok()
        });
        let mut stop = std::pin::pin!(stop);
        let base = self.follow.retry_max / 10;
        let mut backoff = Backoff::new(base, self.follow.retry_max);
        let mut total = 0u64;
        let mut active = None;
        // The next page, fetched while the last one was handled.
        let mut ahead = None;
        loop {
            let allowed = gate.as_mut().is_none_or(|gate| gate());
            if active != Some(allowed) {
                active = Some(allowed);
                let state = if allowed { "active" } else { "standing by" };
                tracing::info!(namespace = %self.store.namespace(), projection = %self.name, node = %rt.node_id(), state, "projector");
            }
            let wait = if !allowed {
                Some(self.follow.poll_interval)
            } else {
                let step = self.step_ahead(&mut handler, Some(&mut ahead));
                let stepped = match gate.as_mut() {
                    None => Some(step.await),
                    // On a cluster, ownership is looked at again every poll interval while a
                    // step runs: a long page (a policy's commands) is abandoned as soon as the
                    // node no longer owns the projection, instead of running on against the
                    // new owner's (the checkpoint did not move; the new owner hands the page
                    // over again).
                    Some(gate) => {
                        let lost = async {
                            loop {
                                clock.sleep(self.follow.poll_interval).await;
                                if !gate() {
                                    break;
                                }
                            }
                        };
                        tokio::select! {
                            biased;
                            result = step => Some(result),
                            () = lost => None,
                        }
                    }
                };
                let Some(stepped) = stepped else {
                    tracing::info!(namespace = %self.store.namespace(), projection = %self.name, node = %rt.node_id(), "ownership moved during a step: abandoned it");
                    metrics::counter!(telemetry::PROJECTOR_STEPS_ABANDONED, "projection" => self.name.clone())
                        .increment(1);
                    continue;
                };
                match stepped {
                    Ok(0) => {
                        backoff = Backoff::new(base, self.follow.retry_max);
                        Some(self.follow.poll_interval)
                    }
                    Ok(records) => {
                        total += records as u64;
                        backoff = Backoff::new(base, self.follow.retry_max);
                        None
                    }
                    Err(ProjectionError::Fenced { .. }) if gate.is_some() => {
                        Some(self.follow.poll_interval)
                    }
                    Err(
                        e @ (ProjectionError::Fenced { .. }
                        | ProjectionError::DamagedCheckpoint { .. }
                        | ProjectionError::InvalidName(_)),
                    ) => return Err(e),
                    Err(error) => {
                        metrics::counter!(telemetry::PROJECTOR_RETRIES, "projection" => self.name.clone())
                            .increment(1);
                        let delay = backoff.next_delay(rt.rng());
                        tracing::warn!(%error, namespace = %self.store.namespace(), projection = %self.name, node = %rt.node_id(), ?delay, "projection step failed; retrying");
                        Some(delay)
                    }
                }
            };
            let Some(wait) = wait else {
                // More may follow at once; only a stop already requested ends the run here.
                tokio::select! {
                    biased;
                    () = &mut stop => return Ok(total),
                    () = std::future::ready(()) => continue,
                }
            };
            let closed = tokio::select! {
                biased;
                () = &mut stop => return Ok(total),
                closed = next_note(&mut notes) => closed,
                () = clock.sleep(wait) => false,
            };
            if closed {
                notes = None;
            }
            // One step reads everything the notifications announced.
            while let Some(Ok(_)) = notes.as_mut().and_then(BusSubscription::try_recv) {}
        }
    }

    /// Starts the projection over from the first record (a rebuild): the checkpoint goes back
    /// to position 1, whatever moved it before. Every instance reads the checkpoint afresh at
    /// each step, so one running meanwhile starts over at its next step (or, if the reset
    /// lands between its read and its move of the checkpoint, is fenced and stops — its page
    /// is handed over again after the reset anyway). The handler sees everything again: clear
    /// the read model first, or let the handler be idempotent.
    ///
    /// # Errors
    /// Broker failures.
    pub async fn reset<E: std::fmt::Debug + std::fmt::Display>(
        &self,
    ) -> Result<(), ProjectionError<E>> {
        self.store
            .runtime()
            .broker()
            .kv_put(&self.bucket, &self.name, Bytes::from_static(b"1"))
            .await?;
        tracing::info!(namespace = %self.store.namespace(), projection = %self.name, "projection reset to the first record");
        Ok(())
    }

    /// How far the projection is behind: the records after its checkpoint (counted over one
    /// page) and the age of the oldest one not yet handled.
    ///
    /// # Errors
    /// Broker failures, a damaged checkpoint, the store's deadline.
    pub async fn lag<E: std::fmt::Debug + std::fmt::Display>(
        &self,
    ) -> Result<Lag, ProjectionError<E>> {
        let (position, _) = self.checkpoint().await?;
        let page = self.store.read_all(position, self.page_max).await?;
        let records = page.commits.len() + page.errors.len();
        let now = self.store.runtime().clock().wall();
        let behind = page
            .commits
            .first()
            .and_then(|c| c.events.first())
            .and_then(|e| now.duration_since(e.timestamp).ok())
            .unwrap_or_default();
        Ok(Lag {
            position,
            records,
            more: records >= self.page_max,
            behind,
        })
    }
}

/// Waits for the next notification; true when the subscription is closed (never completes
/// without one).
async fn next_note(notes: &mut Option<BusSubscription>) -> bool {
    match notes.as_mut() {
        Some(sub) => matches!(sub.recv().await, Err(crate::bus::RecvError::Closed)),
        None => std::future::pending().await,
    }
}
