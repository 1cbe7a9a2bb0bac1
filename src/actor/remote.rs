//! Commands between nodes: [`ActorHost::send`] routes a command to its actor's owner over
//! request/reply, and [`ActorHost::serve`] answers the ones sent to this node — draining on the
//! way out, so that leaving never drops a request this node was already sent.

use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use super::host::ActorHost;
use super::host::check_key;
use super::{Aggregate, CommandError, CommandOutcome, RemoteError, RemoteErrorKind, Router};
use crate::broker::{Broker, BrokerError, Headers};
use crate::clock::{Clock, Deadline};
use crate::event::ExpectedVersion;
use crate::node::NodeId;
use crate::retry::Backoff;
use crate::schema::EventDecodeError;
use crate::store::{AppendError, ConflictError};
use crate::telemetry;
use crate::trace::{self, TRACEPARENT, TraceContext};

/// The longest wait between two routing attempts of a command.
pub const ROUTE_RETRY_DELAY_MAX: Duration = Duration::from_secs(2);

/// A command sent to its owner. `request_id` is fresh for every attempt, so that a reply can be
/// matched to exactly the request it answers.
#[derive(Serialize, Deserialize)]
struct Request<C> {
    request_id: String,
    actor_id: String,
    command: C,
    /// The command's idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
}

/// The owner's answer, naming the request and the actor it answers: a reply for anything else
/// (a broker that crossed replies) is discarded, never taken as this command's outcome.
#[derive(Serialize, Deserialize)]
struct Reply<R> {
    request_id: String,
    actor_id: String,
    answer: Answer<R>,
}

#[derive(Serialize, Deserialize)]
enum Answer<R> {
    Done(CommandOutcome),
    Rejected(R),
    NotOwner(Option<NodeId>),
    Failed(Failure),
}

/// A failure on the owner, kept typed across the wire: the sender turns it back into the
/// [`CommandError`] variant `execute` would have returned there.
#[derive(Serialize, Deserialize)]
enum Failure {
    Conflict {
        expected: ExpectedVersion,
        actual: u64,
    },
    DeadlineExceeded {
        deadline_ms: u64,
    },
    InvalidKey(String),
    Replay(EventDecodeError),
    Other {
        kind: RemoteErrorKind,
        message: String,
    },
}

impl Failure {
    fn of<R: std::fmt::Debug>(error: CommandError<R>) -> Self {
        let other = |kind, error: &dyn std::fmt::Display| Failure::Other {
            kind,
            message: error.to_string(),
        };
        match error {
            CommandError::Append(AppendError::Conflict(c)) => Failure::Conflict {
                expected: c.expected,
                actual: c.actual,
            },
            CommandError::DeadlineExceeded { deadline, .. } => Failure::DeadlineExceeded {
                deadline_ms: deadline.as_millis().try_into().unwrap_or(u64::MAX),
            },
            CommandError::InvalidKey(key) => Failure::InvalidKey(key),
            CommandError::Replay(e) => Failure::Replay(e),
            CommandError::Append(e @ AppendError::Indeterminate { .. }) => {
                other(RemoteErrorKind::Indeterminate, &e)
            }
            CommandError::Append(e) => other(RemoteErrorKind::Store, &e),
            CommandError::Read(e) => other(RemoteErrorKind::Store, &e),
            CommandError::Snapshot(e) => other(RemoteErrorKind::Store, &e),
            CommandError::Broker(e) => other(RemoteErrorKind::Broker, &e),
            CommandError::Encode(e) => other(RemoteErrorKind::Encode, &e),
            CommandError::Remote(e) => Failure::Other {
                kind: e.kind,
                message: e.message,
            },
            e => other(RemoteErrorKind::Other, &e),
        }
    }

    fn into_error<R: std::fmt::Debug>(self, actor: &str, owner: &NodeId) -> CommandError<R> {
        match self {
            Failure::Conflict { expected, actual } => {
                CommandError::Append(AppendError::Conflict(ConflictError {
                    actor: actor.to_owned(),
                    expected,
                    actual,
                }))
            }
            Failure::DeadlineExceeded { deadline_ms } => CommandError::DeadlineExceeded {
                actor: actor.to_owned(),
                deadline: Duration::from_millis(deadline_ms),
            },
            Failure::InvalidKey(key) => CommandError::InvalidKey(key),
            Failure::Replay(e) => CommandError::Replay(e),
            Failure::Other { kind, message } => CommandError::Remote(RemoteError {
                node: owner.clone(),
                kind,
                message,
            }),
        }
    }
}

/// The task serving remote commands. Shared by the handles the application holds (not by the
/// tasks answering commands), so that dropping the last of them stops serving even while
/// commands keep arriving — by asking the task to drain, as [`ActorHost::stop_serving`] does.
#[derive(Default)]
pub(super) struct ServeGuard {
    serving: StdMutex<Option<Serving>>,
}

/// A running serve task and the switch that tells it to drain and stop.
pub(super) struct Serving {
    stop: tokio::sync::watch::Sender<bool>,
    task: crate::rt::JoinHandle<()>,
}

impl ServeGuard {
    fn take(&self) -> Option<Serving> {
        self.serving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

impl Drop for ServeGuard {
    fn drop(&mut self) {
        if let Some(serving) = self.take() {
            // The task drains on its own: every request already received is still answered.
            let _ = serving.stop.send(true);
        }
    }
}

impl<A: Aggregate, B: Broker, C: Clock, R: Router> ActorHost<A, B, C, R> {
    /// Sends a command to the actor's owner: executed here if this node owns it, else by
    /// request/reply to the owner. Re-routes (with backoff, up to `route_retry_max` times) when
    /// no owner is known, nobody listens, or the target says it is not the owner — in all those
    /// cases the command was certainly not executed. A timeout is returned, not retried: the
    /// command may have run.
    ///
    /// # Errors
    /// As [`ActorHost::execute`], plus `Unroutable` and `Timeout`.
    pub async fn send(
        &self,
        actor_id: &str,
        command: &A::Command,
    ) -> Result<CommandOutcome, CommandError<A::Rejection>> {
        self.send_with(actor_id, command, None).await
    }

    /// [`send`](Self::send) under an idempotency key, executed on the owner as
    /// [`execute_keyed`](Self::execute_keyed): sending it again after a timeout (or from
    /// another process) returns the first outcome instead of running the command twice.
    ///
    /// # Errors
    /// As [`send`](Self::send); [`CommandError::InvalidKey`].
    pub async fn send_keyed(
        &self,
        actor_id: &str,
        command: &A::Command,
        key: &str,
    ) -> Result<CommandOutcome, CommandError<A::Rejection>> {
        check_key(key)?;
        self.send_with(actor_id, command, Some(key)).await
    }

    async fn send_with(
        &self,
        actor_id: &str,
        command: &A::Command,
        key: Option<&str>,
    ) -> Result<CommandOutcome, CommandError<A::Rejection>> {
        let rt = self.inner.store.runtime();
        // The sender's span: a child of the application's trace context, or a new trace.
        let context = trace::next_span(rt.rng());
        let namespace = self.inner.store.namespace();
        let span = tracing::debug_span!(
            "aether.send",
            namespace = %namespace,
            actor = actor_id,
            node = %rt.node_id(),
            trace_id = %context.trace_id(),
            span_id = %context.span_id(),
            aggregate = A::NAME,
            key = key,
            owner = tracing::field::Empty,
            attempt = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        let deadline = Deadline::after(rt.clock(), self.inner.config.deadline);
        let (result, outcome) = self
            .observed(
                actor_id,
                context,
                &span,
                &deadline,
                (telemetry::ACTOR_SENDS, telemetry::ACTOR_SEND_SECONDS),
                self.route(actor_id, command, key),
            )
            .await;
        let _entered = span.enter();
        match &result {
            Ok(done) => {
                tracing::debug!(version = done.version, node = %done.node_id, "command answered")
            }
            Err(CommandError::Rejected(_)) => tracing::debug!("command rejected"),
            Err(error) => tracing::warn!(%error, outcome, "sent command failed"),
        }
        result
    }

    /// Routes a command to its owner, re-routing while it certainly did not run.
    async fn route(
        &self,
        actor_id: &str,
        command: &A::Command,
        key: Option<&str>,
    ) -> Result<CommandOutcome, CommandError<A::Rejection>> {
        let config = &self.inner.config;
        let rt = self.inner.store.runtime();
        let namespace = self.inner.store.namespace();
        let reroute = |reason: &'static str| {
            tracing::debug!(reason, "re-routing command");
            metrics::counter!(
                telemetry::ACTOR_REROUTES,
                "namespace" => namespace.to_owned(),
                "reason" => reason
            )
            .increment(1);
        };
        let mut backoff = Backoff::new(config.route_retry_delay, ROUTE_RETRY_DELAY_MAX);
        for attempt in 0..=config.route_retry_max {
            if attempt > 0 {
                backoff.wait(rt.clock(), rt.rng()).await;
            }
            let span = tracing::Span::current();
            span.record("attempt", attempt + 1);
            let Some(owner) = self.inner.router.owner_of(actor_id) else {
                reroute("no_owner");
                continue;
            };
            span.record("owner", tracing::field::display(&owner));
            if owner == *self.inner.store.runtime().node_id() {
                match self.execute_with(actor_id, command, key).await {
                    // The view moved meanwhile.
                    Err(CommandError::NotOwner { .. }) => {
                        reroute("not_owner");
                        continue;
                    }
                    other => return other,
                }
            }
            match self.request(&owner, actor_id, command, key).await {
                Err(CommandError::NotOwner { .. }) => {
                    reroute("not_owner");
                    continue;
                }
                Err(CommandError::Broker(BrokerError::NoResponders { .. })) => {
                    reroute("no_responders");
                    continue;
                }
                Err(CommandError::Broker(BrokerError::Timeout { .. })) => {
                    return Err(CommandError::Timeout { owner });
                }
                other => return other,
            }
        }
        Err(CommandError::Unroutable {
            actor: actor_id.to_owned(),
            attempts: config.route_retry_max + 1,
        })
    }

    async fn request(
        &self,
        owner: &NodeId,
        actor_id: &str,
        command: &A::Command,
        key: Option<&str>,
    ) -> Result<CommandOutcome, CommandError<A::Rejection>> {
        let rt = self.inner.store.runtime();
        let request_id = rt.rng().uuid().to_string();
        let payload = serde_json::to_vec(&Request {
            request_id: request_id.clone(),
            actor_id: actor_id.to_owned(),
            command,
            key: key.map(str::to_owned),
        })
        .expect("commands serialise");
        tracing::debug!(%owner, request = %request_id, "command sent to its owner");
        // The owner continues this trace: the request carries the sender's context.
        let mut headers = Headers::new();
        if let Some(context) = trace::current() {
            headers.insert(TRACEPARENT.to_owned(), context.to_traceparent());
        }
        let reply = rt
            .broker()
            .request(
                &self.inner.store.names().command_subject(owner, A::NAME),
                headers,
                Bytes::from(payload),
                self.inner.config.request_timeout,
            )
            .await?;
        let reply = match serde_json::from_slice::<Reply<A::Rejection>>(&reply.payload) {
            Ok(reply) => reply,
            Err(e) => {
                return Err(CommandError::Remote(RemoteError {
                    node: owner.clone(),
                    kind: RemoteErrorKind::UndecodableReply,
                    message: e.to_string(),
                }));
            }
        };
        if reply.request_id != request_id || reply.actor_id != actor_id {
            // Never someone else's outcome as ours. What became of our command is unknown.
            tracing::warn!(
                actor = actor_id,
                request = %request_id,
                reply_actor = %reply.actor_id,
                reply_request = %reply.request_id,
                %owner,
                "discarded a reply that answers another command"
            );
            return Err(CommandError::Timeout {
                owner: owner.clone(),
            });
        }
        match reply.answer {
            Answer::Done(outcome) => {
                assert_eq!(outcome.actor_id, actor_id, "an outcome of the actor asked");
                Ok(outcome)
            }
            Answer::Rejected(r) => Err(CommandError::Rejected(r)),
            Answer::NotOwner(owner) => Err(CommandError::NotOwner {
                actor: actor_id.to_owned(),
                owner,
            }),
            Answer::Failed(failure) => Err(failure.into_error(actor_id, owner)),
        }
    }

    /// Serves commands sent to this node by other nodes' [`ActorHost::send`], on a task of the
    /// caller's runtime, until [`ActorHost::stop_serving`] or [`ActorHost::leave`], or until the
    /// application drops its last handle to the host. At most `inflight_max` commands run at
    /// once. Calling it twice does nothing the second time.
    ///
    /// Stopping never drops a request this node was already sent: commands being executed
    /// finish and are answered, and requests that arrived but had not started are answered
    /// "not the owner", so that their senders re-route at once instead of waiting out a
    /// timeout.
    ///
    /// Exactly one host may serve a node id at a time: commands are addressed to the node id,
    /// and a second host answering "not the owner" would make the sender try again while the
    /// first one executes. Stop the old host before a restarted node serves again.
    ///
    /// # Errors
    /// A [`BrokerError`] if the subscription fails.
    pub async fn serve(&self) -> Result<(), BrokerError> {
        let already = self
            .serving
            .serving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some();
        if already {
            return Ok(());
        }
        let subject = self
            .inner
            .store
            .names()
            .command_subject(self.inner.store.runtime().node_id(), A::NAME);
        let subscription = self
            .inner
            .store
            .runtime()
            .broker()
            .subscribe(&subject)
            .await?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        // A handle without the serve guard: serving must not keep serving alive.
        let host = ActorHost {
            inner: self.inner.clone(),
            serving: Arc::new(ServeGuard::default()),
        };
        let task = crate::rt::spawn(host.serve_loop(subscription, stopped));
        let mut slot = self
            .serving
            .serving
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if slot.is_some() {
            task.abort();
        } else {
            *slot = Some(Serving { stop, task });
        }
        Ok(())
    }

    async fn serve_loop(
        self,
        mut subscription: crate::broker::Subscription,
        mut stopped: tokio::sync::watch::Receiver<bool>,
    ) {
        let permits = Arc::new(Semaphore::new(self.inner.config.inflight_max.max(1)));
        let mut running = crate::rt::TaskSet::new();
        loop {
            let message = tokio::select! {
                biased;
                _ = until_stopped(&mut stopped) => break,
                message = subscription.next() => match message {
                    Some(message) => message,
                    None => break,
                },
            };
            // Reap finished answers so the set stays bounded by what runs.
            running.reap();
            let Some(reply_to) = message.reply.clone() else {
                continue;
            };
            let permit = tokio::select! {
                biased;
                _ = until_stopped(&mut stopped) => {
                    self.refuse(&message.payload, &reply_to).await;
                    break;
                }
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let host = self.clone();
            let parent = message
                .headers
                .get(TRACEPARENT)
                .and_then(|v| TraceContext::parse(v));
            running.spawn(async move {
                let reply = match parent {
                    Some(parent) => trace::scope(parent, host.answer(&message.payload)).await,
                    None => host.answer(&message.payload).await,
                };
                let payload = serde_json::to_vec(&reply).expect("replies serialise");
                host.publish_reply(&reply_to, payload).await;
                drop(permit);
            });
        }
        // Leave without dropping anything already sent here: no new deliveries; what is in
        // flight is refused (its sender re-routes); what runs finishes and is answered.
        subscription.drain().await;
        while let Some(message) = subscription.next().await {
            if let Some(reply_to) = &message.reply {
                self.refuse(&message.payload, reply_to).await;
            }
        }
        running.join_all().await;
    }

    /// Answers a request "not the owner" without running it.
    async fn refuse(&self, payload: &[u8], reply_to: &str) {
        let Ok(request) = serde_json::from_slice::<Request<serde::de::IgnoredAny>>(payload) else {
            return;
        };
        let reply: Reply<A::Rejection> = Reply {
            request_id: request.request_id,
            answer: Answer::NotOwner(self.inner.router.owner_of(&request.actor_id)),
            actor_id: request.actor_id,
        };
        let payload = serde_json::to_vec(&reply).expect("replies serialise");
        self.publish_reply(reply_to, payload).await;
    }

    async fn publish_reply(&self, reply_to: &str, payload: Vec<u8>) {
        if let Err(error) = self
            .inner
            .store
            .runtime()
            .broker()
            .publish(reply_to, Headers::new(), Bytes::from(payload))
            .await
        {
            tracing::warn!(%error, "command reply not sent");
        }
    }

    /// Stops serving remote commands. When this returns, the subscription is gone, every
    /// request this node had received is answered (run, or refused as not the owner), and no
    /// command is running on its behalf. Serving can be started again.
    ///
    /// # Cancel safety
    /// Cancel safe: the drain goes on without the caller; only the wait for it is cut short.
    pub async fn stop_serving(&self) {
        if let Some(serving) = self.serving.take() {
            let _ = serving.stop.send(true);
            let _ = serving.task.await;
        }
    }

    /// Leaves cleanly, in one call: takes this node out of routing ([`Router::leave`] — the
    /// cluster stops the node, so its shards move to the others), then stops serving as
    /// [`stop_serving`](Self::stop_serving) does. Commands that reach this node meanwhile are
    /// answered "not the owner" and re-routed by their senders; none is left unanswered.
    ///
    /// # Cancel safety
    /// As [`stop_serving`](Self::stop_serving).
    pub async fn leave(&self) {
        self.inner.router.leave().await;
        self.stop_serving().await;
    }

    async fn answer(&self, payload: &[u8]) -> Reply<A::Rejection> {
        let request: Request<A::Command> = match serde_json::from_slice(payload) {
            Ok(r) => r,
            Err(e) => {
                // Still name the request if its envelope is readable.
                let envelope = serde_json::from_slice::<Request<serde::de::IgnoredAny>>(payload);
                let (request_id, actor_id) = envelope
                    .map(|r| (r.request_id, r.actor_id))
                    .unwrap_or_default();
                return Reply {
                    request_id,
                    actor_id,
                    answer: Answer::Failed(Failure::Other {
                        kind: RemoteErrorKind::UndecodableCommand,
                        message: e.to_string(),
                    }),
                };
            }
        };
        let key = match request.key.as_deref().map(|k| check_key(k).map(|()| k)) {
            Some(Err(e)) => Err(e),
            Some(Ok(key)) => Ok(Some(key)),
            None => Ok(None),
        };
        let result = match key {
            Ok(key) => {
                self.execute_with(&request.actor_id, &request.command, key)
                    .await
            }
            Err(e) => Err(e),
        };
        let answer = match result {
            Ok(outcome) => Answer::Done(outcome),
            Err(CommandError::Rejected(r)) => Answer::Rejected(r),
            Err(CommandError::NotOwner { owner, .. }) => Answer::NotOwner(owner),
            Err(e) => Answer::Failed(Failure::of(e)),
        };
        Reply {
            request_id: request.request_id,
            actor_id: request.actor_id,
            answer,
        }
    }
}

/// Returns once `stop` is switched on (or its sender is gone).
async fn until_stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        if stop.changed().await.is_err() {
            return;
        }
    }
}
