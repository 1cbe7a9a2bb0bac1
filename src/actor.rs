//! The actor runtime: aggregates activated on the owner of their shard, loaded from their latest
//! snapshot plus later events, handling one command at a time, appending with `Exact(version)`.
//!
//! - [`Aggregate`]: command → events (`handle`), event → state (`apply`).
//! - [`ActorHost`]: hosts aggregates of one namespace on one node. It executes commands for the
//!   actors a [`Router`] says this node owns, refuses the others ([`CommandError::NotOwner`]),
//!   retries a command whose append conflicts by reloading the actor (another writer — e.g. a
//!   stale owner during a partition — got there first; the store's compare-and-set is the final
//!   fence), snapshots every `snapshot_every` events and passivates idle actors.
//! - [`ActorHost::send`] routes a command to the owner: locally, or by request/reply over the
//!   broker on `aether.cmd.<namespace>.<node id>`, re-routing when the owner says it is not
//!   (ownership moved).

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, Semaphore};

use crate::broker::{Broker, BrokerError, Headers};
use crate::clock::{Clock, SystemClock};
use crate::event::{Event, ExpectedVersion, NewEvent, Snapshot};
use crate::store::{AppendError, EventStore, ReadError, SnapshotError};

/// An event-sourced aggregate: its state is the fold of its events.
pub trait Aggregate: Default + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// What callers ask of it.
    type Command: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// Why it may refuse a command (a domain answer, not a failure).
    type Rejection: Serialize + DeserializeOwned + std::fmt::Debug + Send + 'static;

    /// Decides which events a command produces, without changing state. An empty vector is a
    /// valid answer (nothing to record).
    ///
    /// # Errors
    /// A domain rejection.
    fn handle(&self, command: &Self::Command) -> Result<Vec<NewEvent>, Self::Rejection>;

    /// Folds one event into the state. Must be deterministic and must not fail: events are facts.
    fn apply(&mut self, event: &Event);
}

/// Tells which node owns an actor. The cluster implements it; [`SingleNode`] owns everything.
pub trait Router: Send + Sync + 'static {
    /// The node owning `actor_id` in this node's current view, if any.
    fn owner_of(&self, actor_id: &str) -> Option<String>;

    /// Takes this node out of routing: afterwards it owns nothing and other nodes stop sending
    /// it commands (the cluster stops the node, so its shards move). Called by
    /// [`ActorHost::leave`] before it drains. Idempotent; the default does nothing.
    fn leave(&self) -> impl std::future::Future<Output = ()> + Send {
        async {}
    }
}

impl<R: Router + ?Sized> Router for Arc<R> {
    fn owner_of(&self, actor_id: &str) -> Option<String> {
        (**self).owner_of(actor_id)
    }

    fn leave(&self) -> impl std::future::Future<Output = ()> + Send {
        (**self).leave()
    }
}

/// A router for a single node: it owns every actor.
#[derive(Clone, Debug)]
pub struct SingleNode(pub String);

impl Router for SingleNode {
    fn owner_of(&self, _actor_id: &str) -> Option<String> {
        Some(self.0.clone())
    }
}

/// Actor runtime configuration.
#[derive(Clone, Debug)]
pub struct ActorConfig {
    /// This node's id (the router's name for it).
    pub node_id: String,
    /// Save a snapshot after this many events since the last one (0: never).
    pub snapshot_every: u64,
    /// Drop an actor from memory after this long without a command.
    pub idle_timeout: Duration,
    /// Keep at most this many actors in memory (least recently used are dropped first).
    pub actors_max: usize,
    /// How often a command whose append conflicts is retried after reloading.
    pub conflict_retry_max: u32,
    /// How often a command is re-routed when the target is not (or no longer) the owner.
    pub route_retry_max: u32,
    /// Delay between re-routes (doubling, jittered).
    pub route_retry_delay: Duration,
    /// How long to wait for a remote owner's answer.
    pub request_timeout: Duration,
    /// Remote commands handled concurrently by [`ActorHost::serve`].
    pub inflight_max: usize,
}

impl ActorConfig {
    /// Defaults for node `node_id`.
    pub fn new(node_id: impl Into<String>) -> Self {
        Self {
            node_id: node_id.into(),
            snapshot_every: 100,
            idle_timeout: Duration::from_secs(300),
            actors_max: 10_000,
            conflict_retry_max: 5,
            route_retry_max: 5,
            route_retry_delay: Duration::from_millis(50),
            request_timeout: Duration::from_secs(5),
            inflight_max: 256,
        }
    }
}

/// What a command did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommandOutcome {
    /// The actor.
    pub actor_id: String,
    /// The actor's version after the command.
    pub version: u64,
    /// The events the command stored (empty if it produced none).
    pub events: Vec<Event>,
    /// The node that executed it.
    pub node_id: String,
}

/// Why a command produced no outcome.
#[derive(Debug, thiserror::Error)]
pub enum CommandError<R: std::fmt::Debug> {
    /// The aggregate refused the command. Nothing was stored.
    #[error("command rejected: {0:?}")]
    Rejected(R),
    /// This node does not own the actor (the router names `owner`).
    #[error("node does not own actor {actor:?} (owner: {owner:?})")]
    NotOwner {
        /// The actor.
        actor: String,
        /// Who owns it, as far as this node knows.
        owner: Option<String>,
    },
    /// No owner could be reached after re-routing `attempts` times.
    #[error("no owner of actor {actor:?} answered after {attempts} attempts")]
    Unroutable {
        /// The actor.
        actor: String,
        /// Attempts made.
        attempts: u32,
    },
    /// The owner did not answer in time: the command may or may not have been executed.
    #[error("owner {owner:?} did not answer in time; the command may have been executed")]
    Timeout {
        /// The node asked.
        owner: String,
    },
    /// The append kept conflicting (or failed) after reloading.
    #[error(transparent)]
    Append(#[from] AppendError),
    /// Loading the actor failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// Loading the snapshot failed.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The remote owner failed (its message).
    #[error("remote owner failed: {0}")]
    Remote(String),
    /// The broker failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// A command sent to its owner. `request_id` is fresh for every attempt, so that a reply can be
/// matched to exactly the request it answers.
#[derive(Serialize, Deserialize)]
struct Request<C> {
    request_id: String,
    actor_id: String,
    command: C,
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
    NotOwner(Option<String>),
    Failed(String),
}

/// An actor's state and version, as [`ActorHost::state`] reads them.
#[derive(Clone, Debug, PartialEq)]
pub struct ActorState<A> {
    /// The state folded from every event.
    pub state: A,
    /// The version of the last event folded (0: no events).
    pub version: u64,
}

struct Slot<A> {
    state: A,
    version: u64,
    snapshot_version: u64,
    loaded: bool,
    last_used: Duration,
}

struct Inner<A, B, C, R> {
    store: EventStore<B, C>,
    router: R,
    config: ActorConfig,
    slots: StdMutex<BTreeMap<String, Arc<Mutex<Slot<A>>>>>,
    commands: AtomicU64,
    _aggregate: PhantomData<fn() -> A>,
}

/// The task serving remote commands. Shared by the handles the application holds (not by the
/// tasks answering commands), so that dropping the last of them stops serving even while
/// commands keep arriving — by asking the task to drain, as [`ActorHost::stop_serving`] does.
#[derive(Default)]
struct ServeGuard {
    serving: StdMutex<Option<Serving>>,
}

/// A running serve task and the switch that tells it to drain and stop.
struct Serving {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
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

/// Hosts aggregates of type `A` of one namespace on one node. Cheap to clone.
pub struct ActorHost<A, B, C = SystemClock, R = SingleNode> {
    inner: Arc<Inner<A, B, C, R>>,
    serving: Arc<ServeGuard>,
}

impl<A, B, C, R> Clone for ActorHost<A, B, C, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            serving: self.serving.clone(),
        }
    }
}

/// The subject commands for `node_id` in `namespace` are sent to.
pub fn command_subject(namespace: &str, node_id: &str) -> String {
    format!("aether.cmd.{namespace}.{node_id}")
}

impl<A: Aggregate, B: Broker, C: Clock, R: Router> ActorHost<A, B, C, R> {
    /// A host executing commands against `store`, owning what `router` says.
    pub fn new(store: EventStore<B, C>, router: R, config: ActorConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                router,
                config,
                slots: StdMutex::new(BTreeMap::new()),
                commands: AtomicU64::new(0),
                _aggregate: PhantomData,
            }),
            serving: Arc::new(ServeGuard::default()),
        }
    }

    /// The store.
    pub fn store(&self) -> &EventStore<B, C> {
        &self.inner.store
    }

    /// How many actors are in memory.
    pub fn active_actors(&self) -> usize {
        self.lock_slots().len()
    }

    /// The actor's current state and version, read from the store: from the actor in memory
    /// when it is current (one round trip to check), else by loading it (its latest snapshot
    /// plus later events). Works on any node; it changes nothing and does not activate the
    /// actor.
    ///
    /// # Errors
    /// `Read` or `Snapshot` when loading fails.
    pub async fn state(&self, actor_id: &str) -> Result<ActorState<A>, CommandError<A::Rejection>> {
        let active = self.lock_slots().get(actor_id).cloned();
        if let Some(slot) = active {
            let slot = slot.lock().await;
            if slot.loaded && self.inner.store.latest_version(actor_id).await? == slot.version {
                return Ok(ActorState {
                    state: clone_state(&slot.state),
                    version: slot.version,
                });
            }
        }
        let mut slot = Slot {
            state: A::default(),
            version: 0,
            snapshot_version: 0,
            loaded: false,
            last_used: Duration::ZERO,
        };
        self.load(actor_id, &mut slot).await?;
        Ok(ActorState {
            state: slot.state,
            version: slot.version,
        })
    }

    fn lock_slots(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<Mutex<Slot<A>>>>> {
        self.inner.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now(&self) -> Duration {
        self.inner.store.runtime().clock().monotonic()
    }

    /// Executes a command on this node, which must own the actor.
    ///
    /// # Errors
    /// [`CommandError::NotOwner`] when the router names another owner; `Rejected` for a domain
    /// refusal; `Append` when the append still conflicts after `conflict_retry_max` reloads.
    ///
    /// # Cancel safety
    /// Not cancel safe: a cancelled command may or may not have been stored.
    pub async fn execute(
        &self,
        actor_id: &str,
        command: &A::Command,
    ) -> Result<CommandOutcome, CommandError<A::Rejection>> {
        let owner = self.inner.router.owner_of(actor_id);
        if owner.as_deref() != Some(self.inner.config.node_id.as_str()) {
            return Err(CommandError::NotOwner {
                actor: actor_id.to_owned(),
                owner,
            });
        }
        self.maybe_passivate();
        let slot = self
            .lock_slots()
            .entry(actor_id.to_owned())
            .or_insert_with(|| {
                Arc::new(Mutex::new(Slot {
                    state: A::default(),
                    version: 0,
                    snapshot_version: 0,
                    loaded: false,
                    last_used: Duration::ZERO,
                }))
            })
            .clone();
        let mut slot = slot.lock().await;
        slot.last_used = self.now();
        let store = &self.inner.store;
        let mut attempt = 0;
        loop {
            let fresh = !slot.loaded;
            if fresh {
                self.load(actor_id, &mut slot).await?;
            }
            let events = match command_events(&slot.state, command) {
                Ok(events) => events,
                // A refusal is only as good as the state it was decided on. A cached state may
                // be stale (another writer appended); an append would catch that, a refusal
                // would not — so check the version (one round trip) before refusing.
                Err(rejection) if !fresh => {
                    if store.latest_version(actor_id).await? == slot.version {
                        return Err(rejection);
                    }
                    slot.loaded = false;
                    continue;
                }
                Err(rejection) => return Err(rejection),
            };
            if events.is_empty() {
                return Ok(self.outcome(actor_id, slot.version, Vec::new()));
            }
            match store
                .append(actor_id, ExpectedVersion::Exact(slot.version), events)
                .await
            {
                Ok(stored) => {
                    for event in &stored.events {
                        slot.state.apply(event);
                    }
                    assert_eq!(
                        stored.first_version(),
                        slot.version + 1,
                        "contiguous versions"
                    );
                    slot.version = stored.last_version();
                    self.maybe_snapshot(actor_id, &mut slot).await;
                    return Ok(self.outcome(actor_id, slot.version, stored.events));
                }
                Err(AppendError::Conflict(conflict))
                    if attempt < self.inner.config.conflict_retry_max =>
                {
                    tracing::debug!(%conflict, "reloading actor after a conflict");
                    attempt += 1;
                    slot.loaded = false;
                }
                Err(e) => {
                    slot.loaded = false; // we no longer know where the stream is
                    return Err(e.into());
                }
            }
        }
    }

    fn outcome(&self, actor_id: &str, version: u64, events: Vec<Event>) -> CommandOutcome {
        CommandOutcome {
            actor_id: actor_id.to_owned(),
            version,
            events,
            node_id: self.inner.config.node_id.clone(),
        }
    }

    /// Loads an actor: its latest snapshot, then every later event.
    async fn load(
        &self,
        actor_id: &str,
        slot: &mut Slot<A>,
    ) -> Result<(), CommandError<A::Rejection>> {
        let store = &self.inner.store;
        let (mut state, mut version) = match store.latest_snapshot(actor_id).await? {
            Some(snapshot) => match serde_json::from_value::<A>(snapshot.state) {
                Ok(state) => (state, snapshot.version),
                Err(error) => {
                    // An unreadable snapshot (e.g. the state type changed) is not fatal: the
                    // events are the truth. Replay from the start.
                    tracing::warn!(actor = actor_id, %error, "ignoring undecodable snapshot");
                    (A::default(), 0)
                }
            },
            None => (A::default(), 0),
        };
        slot.snapshot_version = version;
        for event in store.events(actor_id, version + 1).await? {
            assert_eq!(event.version, version + 1, "replay is contiguous");
            state.apply(&event);
            version = event.version;
        }
        slot.state = state;
        slot.version = version;
        slot.loaded = true;
        Ok(())
    }

    async fn maybe_snapshot(&self, actor_id: &str, slot: &mut Slot<A>) {
        let every = self.inner.config.snapshot_every;
        if every == 0 || slot.version - slot.snapshot_version < every {
            return;
        }
        let snapshot = Snapshot {
            actor_id: actor_id.to_owned(),
            version: slot.version,
            state: serde_json::to_value(&slot.state).expect("aggregate state serialises"),
            timestamp: self.inner.store.runtime().clock().wall(),
        };
        match self.inner.store.save_snapshot(&snapshot).await {
            Ok(()) => slot.snapshot_version = slot.version,
            // A failed snapshot costs only replay time later.
            Err(error) => tracing::warn!(actor = actor_id, %error, "snapshot not saved"),
        }
    }

    /// Drops idle actors (and the least recently used beyond `actors_max`) every 64 commands.
    fn maybe_passivate(&self) {
        if !self
            .inner
            .commands
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(64)
        {
            return;
        }
        self.passivate_idle();
    }

    /// Drops from memory every actor idle for longer than `idle_timeout`, then the least
    /// recently used ones while more than `actors_max` remain. Actors busy with a command stay.
    pub fn passivate_idle(&self) {
        let now = self.now();
        let idle = self.inner.config.idle_timeout;
        let mut slots = self.lock_slots();
        let mut by_use: Vec<(Duration, String)> = Vec::new();
        slots.retain(|actor, slot| match slot.try_lock() {
            Ok(s) if now.saturating_sub(s.last_used) > idle => false,
            Ok(s) => {
                by_use.push((s.last_used, actor.clone()));
                true
            }
            Err(_) => true, // busy
        });
        if slots.len() > self.inner.config.actors_max {
            by_use.sort();
            let excess = slots.len() - self.inner.config.actors_max;
            for (_, actor) in by_use.into_iter().take(excess) {
                slots.remove(&actor);
            }
        }
    }

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
        let config = &self.inner.config;
        let rt = self.inner.store.runtime();
        let mut delay = config.route_retry_delay;
        for attempt in 0..=config.route_retry_max {
            if attempt > 0 {
                let jitter = rt.rng().duration_between(Duration::ZERO, delay / 2);
                rt.clock().sleep(delay + jitter).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            let Some(owner) = self.inner.router.owner_of(actor_id) else {
                continue;
            };
            if owner == config.node_id {
                match self.execute(actor_id, command).await {
                    Err(CommandError::NotOwner { .. }) => continue, // the view moved meanwhile
                    other => return other,
                }
            }
            match self.request(&owner, actor_id, command).await {
                Err(CommandError::NotOwner { .. })
                | Err(CommandError::Broker(BrokerError::NoResponders { .. })) => continue,
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
        owner: &str,
        actor_id: &str,
        command: &A::Command,
    ) -> Result<CommandOutcome, CommandError<A::Rejection>> {
        let rt = self.inner.store.runtime();
        let request_id = rt.rng().uuid().to_string();
        let payload = serde_json::to_vec(&Request {
            request_id: request_id.clone(),
            actor_id: actor_id.to_owned(),
            command,
        })
        .expect("commands serialise");
        let reply = rt
            .broker()
            .request(
                &command_subject(self.inner.store.namespace(), owner),
                Headers::new(),
                Bytes::from(payload),
                self.inner.config.request_timeout,
            )
            .await?;
        let reply = match serde_json::from_slice::<Reply<A::Rejection>>(&reply.payload) {
            Ok(reply) => reply,
            Err(e) => return Err(CommandError::Remote(format!("undecodable reply: {e}"))),
        };
        if reply.request_id != request_id || reply.actor_id != actor_id {
            // Never someone else's outcome as ours. What became of our command is unknown.
            tracing::warn!(
                actor = actor_id,
                request = %request_id,
                reply_actor = %reply.actor_id,
                reply_request = %reply.request_id,
                owner,
                "discarded a reply that answers another command"
            );
            return Err(CommandError::Timeout {
                owner: owner.to_owned(),
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
            Answer::Failed(message) => Err(CommandError::Remote(message)),
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
        let subject = command_subject(self.inner.store.namespace(), &self.inner.config.node_id);
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
        let task = tokio::spawn(host.serve_loop(subscription, stopped));
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
        let mut running = tokio::task::JoinSet::new();
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
            while running.try_join_next().is_some() {}
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
            running.spawn(async move {
                let reply = host.answer(&message.payload).await;
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
        while running.join_next().await.is_some() {}
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
                    answer: Answer::Failed(format!("undecodable command: {e}")),
                };
            }
        };
        let answer = match self.execute(&request.actor_id, &request.command).await {
            Ok(outcome) => Answer::Done(outcome),
            Err(CommandError::Rejected(r)) => Answer::Rejected(r),
            Err(CommandError::NotOwner { owner, .. }) => Answer::NotOwner(owner),
            Err(e) => Answer::Failed(e.to_string()),
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

/// A copy of an aggregate's state through its serialised form (aggregates need not be
/// `Clone`; they are always `Serialize + DeserializeOwned`).
fn clone_state<A: Aggregate>(state: &A) -> A {
    serde_json::from_value(serde_json::to_value(state).expect("aggregate state serialises"))
        .expect("aggregate state deserialises from its own serialisation")
}

fn command_events<A: Aggregate>(
    state: &A,
    command: &A::Command,
) -> Result<Vec<NewEvent>, CommandError<A::Rejection>> {
    state.handle(command).map_err(CommandError::Rejected)
}

/// Given / when / then for aggregates, without a store: fold `given` events, hand the
/// command to `handle`, inspect what it decided.
///
/// ```
/// # use aether::actor::{Aggregate, AggregateTest};
/// # use aether::{Event, NewEvent};
/// # use serde::{Deserialize, Serialize};
/// # use serde_json::json;
/// #[derive(Default, Serialize, Deserialize)]
/// struct Counter { value: i64 }
/// impl Aggregate for Counter {
///     type Command = i64;
///     type Rejection = String;
///     fn handle(&self, by: &i64) -> Result<Vec<NewEvent>, String> {
///         if self.value + by < 0 { return Err("below zero".into()) }
///         Ok(vec![NewEvent::new("Added", json!(by))])
///     }
///     fn apply(&mut self, e: &Event) { self.value += e.data.as_i64().unwrap_or(0) }
/// }
/// let test = AggregateTest::<Counter>::given([NewEvent::new("Added", json!(2))]);
/// assert_eq!(test.when(&-5), Err("below zero".to_string()));
/// assert_eq!(test.when(&1).unwrap()[0].event_type, "Added");
/// ```
pub struct AggregateTest<A> {
    state: A,
    version: u64,
}

impl<A: Aggregate> AggregateTest<A> {
    /// The aggregate after folding `events` (as versions 1, 2, …).
    pub fn given(events: impl IntoIterator<Item = NewEvent>) -> Self {
        let mut state = A::default();
        let mut version = 0;
        for new in events {
            version += 1;
            state.apply(&Event {
                id: new.id.unwrap_or_else(|| format!("given-{version}")),
                event_type: new.event_type,
                actor_id: "test".into(),
                version,
                data: new.data,
                timestamp: new.timestamp.unwrap_or(std::time::SystemTime::UNIX_EPOCH),
                metadata: new.metadata,
            });
        }
        Self { state, version }
    }

    /// What the aggregate decides for `command`.
    ///
    /// # Errors
    /// The aggregate's rejection.
    pub fn when(&self, command: &A::Command) -> Result<Vec<NewEvent>, A::Rejection> {
        self.state.handle(command)
    }

    /// The folded state.
    pub fn state(&self) -> &A {
        &self.state
    }

    /// The version after the given events.
    pub fn version(&self) -> u64 {
        self.version
    }
}
