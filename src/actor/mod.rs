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
//!   broker on `aether.cmd.<namespace>.<node id>.<aggregate>`, re-routing when the owner says it is not
//!   (ownership moved).

mod host;
mod remote;
mod testing;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use host::ActorHost;
pub use testing::AggregateTest;

use crate::broker::BrokerError;
use crate::event::Event;
use crate::node::NodeId;
use crate::schema::{DomainEvent, EventDecodeError, EventEncodeError, Upcasters};
use crate::store::{AppendError, ReadError, SnapshotError};

/// An event-sourced aggregate: its state is the fold of its typed events.
///
/// ```
/// use aether::actor::{Aggregate, CommandContext};
/// use aether::DomainEvent;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Default, Serialize, Deserialize)]
/// struct Account { balance: i64 }
///
/// #[derive(Serialize, Deserialize)]
/// enum AccountEvent { Deposited { amount: i64 }, Withdrawn { amount: i64 } }
/// impl DomainEvent for AccountEvent {}
///
/// impl Aggregate for Account {
///     const NAME: &'static str = "account";
///     type Command = i64; // a signed amount
///     type Event = AccountEvent;
///     type Rejection = String;
///     fn handle(&self, _: &CommandContext<'_>, amount: &i64) -> Result<Vec<AccountEvent>, String> {
///         match *amount {
///             a if a >= 0 => Ok(vec![AccountEvent::Deposited { amount: a }]),
///             a if self.balance + a < 0 => Err(format!("balance {} too low", self.balance)),
///             a => Ok(vec![AccountEvent::Withdrawn { amount: -a }]),
///         }
///     }
///     fn apply(&mut self, event: &AccountEvent) {
///         match event {
///             AccountEvent::Deposited { amount } => self.balance += amount,
///             AccountEvent::Withdrawn { amount } => self.balance -= amount,
///         }
///     }
/// }
/// ```
pub trait Aggregate: Default + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The aggregate type's name: commands for it are addressed by namespace, node *and* this
    /// name, so that several aggregate types can share a namespace. A subject token: `A-Z a-z
    /// 0-9 - _`, at most 64 characters. Keep it stable: nodes of one cluster must agree on it.
    const NAME: &'static str;
    /// The schema version of the state as snapshots store it: raise it when the state's shape
    /// changes, and register a snapshot upcaster ([`Upcasters::snapshot`]) — or none, and
    /// older snapshots are skipped (the actor replays its events, metric
    /// `aether_actor_snapshots_skipped_total`). Under retention, where the events before a
    /// snapshot may have expired, a skipped snapshot leaves the actor unloadable
    /// ([`ReadError::Expired`]): register the upcaster.
    const STATE_VERSION: u32 = 1;

    /// What callers ask of it.
    type Command: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// Its events: a serde enum, one variant per event type ([`DomainEvent`]).
    type Event: DomainEvent;
    /// Why it may refuse a command (a domain answer, not a failure).
    type Rejection: Serialize + DeserializeOwned + std::fmt::Debug + Send + 'static;

    /// Decides which events a command produces, without changing state. An empty vector is a
    /// valid answer (nothing to record). `ctx` says which actor, at which version, on which
    /// node, when, and under which idempotency key.
    ///
    /// # Errors
    /// A domain rejection.
    fn handle(
        &self,
        ctx: &CommandContext<'_>,
        command: &Self::Command,
    ) -> Result<Vec<Self::Event>, Self::Rejection>;

    /// Folds one event into the state. Must be deterministic and must not fail: events are
    /// facts, already decoded (a stored event that does not decode stops the load with
    /// [`CommandError::Replay`] instead of reaching `apply`).
    fn apply(&mut self, event: &Self::Event);

    /// The upcasters that lift older stored events and snapshots to the current schema
    /// versions. Called once per host. None by default.
    fn upcasters() -> Upcasters {
        Upcasters::new()
    }
}

/// What a command handler knows besides the state it decides on.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CommandContext<'a> {
    /// The actor the command is for.
    pub actor_id: &'a str,
    /// The version of the state the decision is taken on (0: no events yet). The events it
    /// decides are appended at exactly the next versions, or not at all.
    pub version: u64,
    /// The node deciding.
    pub node_id: &'a NodeId,
    /// The assignment epoch under which this node owns the actor, when the router has one.
    pub epoch: Option<u64>,
    /// The node clock's wall time.
    pub now: SystemTime,
    /// The command's idempotency key, when the caller gave one
    /// ([`ActorHost::execute_keyed`], [`ActorHost::send_keyed`]).
    pub key: Option<&'a str>,
}

impl<'a> CommandContext<'a> {
    /// A context for deciding on `actor_id` at `version` on `node_id` (for tests and tools;
    /// the actor host builds the real one).
    pub fn new(actor_id: &'a str, version: u64, node_id: &'a NodeId) -> Self {
        Self {
            actor_id,
            version,
            node_id,
            epoch: None,
            now: SystemTime::UNIX_EPOCH,
            key: None,
        }
    }
}

/// Which node may execute commands for an actor, and under which assignment epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Ownership {
    /// The owner.
    pub owner: NodeId,
    /// The assignment epoch that says so (`None` when the router has no epochs).
    pub epoch: Option<u64>,
}

impl Ownership {
    /// `owner` under `epoch`.
    pub fn new(owner: NodeId, epoch: Option<u64>) -> Self {
        Self { owner, epoch }
    }
}

/// Tells which node owns an actor. The cluster implements it; [`SingleNode`] owns everything.
pub trait Router: Send + Sync + 'static {
    /// The node commands for `actor_id` are sent to, in this node's current view, if any.
    fn owner_of(&self, actor_id: &str) -> Option<NodeId>;

    /// Who may *execute* commands for `actor_id`, and under which epoch: what
    /// [`ActorHost::execute`] checks before deciding. By default the routing owner with no
    /// epoch; the cluster answers only from an assignment this node has applied, so that every
    /// decision is taken by an owner under an epoch it knows.
    fn ownership(&self, actor_id: &str) -> Option<Ownership> {
        self.owner_of(actor_id)
            .map(|owner| Ownership::new(owner, None))
    }

    /// Takes this node out of routing: afterwards it owns nothing and other nodes stop sending
    /// it commands (the cluster stops the node, so its shards move). Called by
    /// [`ActorHost::leave`] before it drains. Idempotent; the default does nothing.
    fn leave(&self) -> impl std::future::Future<Output = ()> + Send {
        async {}
    }
}

impl<R: Router + ?Sized> Router for Arc<R> {
    fn owner_of(&self, actor_id: &str) -> Option<NodeId> {
        (**self).owner_of(actor_id)
    }

    fn ownership(&self, actor_id: &str) -> Option<Ownership> {
        (**self).ownership(actor_id)
    }

    fn leave(&self) -> impl std::future::Future<Output = ()> + Send {
        (**self).leave()
    }
}

/// A router for a single node: it owns every actor.
#[derive(Clone, Debug)]
pub struct SingleNode(pub NodeId);

impl Router for SingleNode {
    fn owner_of(&self, _actor_id: &str) -> Option<NodeId> {
        Some(self.0.clone())
    }
}

/// Actor runtime configuration. The node's id comes from the store's [`Runtime`](crate::Runtime).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ActorConfig {
    /// Save a snapshot after this many events since the last one (0: never). Ignored when the
    /// store has retention: the host then snapshots after every command that wrote events and
    /// after every load that found events past the snapshot, since an event is safe from expiry
    /// only once a snapshot covers it.
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
    /// How long [`ActorHost::execute`] and [`ActorHost::send`] may take in all — loading,
    /// deciding, appending, reloading after conflicts, re-routing, waiting for a remote owner —
    /// measured on the runtime's clock. Past it the command ends with
    /// [`CommandError::DeadlineExceeded`] (it may or may not have been executed). Default 20 s:
    /// above the store's own deadline (10 s), so that one store operation that fails at its
    /// deadline reports its own error (a command chains several: load, append, snapshot). The
    /// snapshot a command saves after its append is skipped when the deadline passes: the
    /// command is done by then.
    pub deadline: Duration,
    /// How many of an actor's latest keyed commits the host remembers (in memory and in the
    /// actor's snapshots) to recognise a repeated command key ([`ActorHost::execute_keyed`]).
    /// Default 256; about 100 bytes each, only for actors that take keyed commands.
    pub recent_commits: usize,
}

impl Default for ActorConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl ActorConfig {
    /// The defaults.
    pub fn new() -> Self {
        Self {
            snapshot_every: 100,
            idle_timeout: Duration::from_secs(300),
            actors_max: 10_000,
            conflict_retry_max: 5,
            route_retry_max: 5,
            route_retry_delay: Duration::from_millis(50),
            request_timeout: Duration::from_secs(5),
            inflight_max: 256,
            deadline: Duration::from_secs(20),
            recent_commits: 256,
        }
    }

    /// Sets the overall command deadline (see [`ActorConfig::deadline`]).
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }
}

/// What a command did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CommandOutcome {
    /// The actor.
    pub actor_id: String,
    /// The actor's version after the command.
    pub version: u64,
    /// The events the command stored (empty if it produced none).
    pub events: Vec<Event>,
    /// The node that executed it.
    pub node_id: NodeId,
    /// The command carried an idempotency key an earlier command already used: this is that
    /// command's outcome (`events` are the events it stored when they could be read — empty
    /// when they expired or the read failed), and nothing was decided or stored now. Set when
    /// the key is recognised before deciding, or the store answers the append with the commit
    /// already under the key elsewhere in the stream; an earlier attempt's commit found at the
    /// very version being decided is folded and answered as if stored now.
    #[serde(default)]
    pub deduplicated: bool,
}

impl CommandOutcome {
    /// The stored events decoded as `E` (upcast first when older than `E` writes).
    ///
    /// # Errors
    /// The first event that does not decode.
    pub fn decoded<A: Aggregate>(&self) -> Result<Vec<A::Event>, EventDecodeError> {
        let upcasters = A::upcasters();
        self.events.iter().map(|e| upcasters.decode(e)).collect()
    }
}

/// Why a command produced no outcome.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
        owner: Option<NodeId>,
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
        owner: NodeId,
    },
    /// The command did not end within [`ActorConfig::deadline`]: it may or may not have been
    /// executed (reading the actor tells).
    #[error(
        "command to actor {actor:?} did not end within {deadline:?}; it may have been executed"
    )]
    DeadlineExceeded {
        /// The actor.
        actor: String,
        /// The deadline it was given.
        deadline: Duration,
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
    /// A stored event of the actor does not decode as the aggregate's event type (after
    /// upcasting): the actor cannot be loaded until the code (or an upcaster) reads it.
    #[error(transparent)]
    Replay(#[from] EventDecodeError),
    /// An event the aggregate decided does not encode (its type is not a serde enum of the
    /// expected shape). Nothing was stored.
    #[error(transparent)]
    Encode(#[from] EventEncodeError),
    /// The idempotency key is not a valid commit id (`A-Z a-z 0-9 - _ . : /`, 1..=128
    /// characters). Nothing was run.
    #[error("invalid command key {0:?}: 1..=128 characters of A-Z a-z 0-9 - _ . : /")]
    InvalidKey(String),
    /// The remote owner failed in a way that has no variant of its own here.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// The broker failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// An actor's state and version, as [`ActorHost::state`] reads them.
#[derive(Clone, Debug, PartialEq)]
pub struct ActorState<A> {
    /// The state folded from every event.
    pub state: A,
    /// The version of the last event folded (0: no events).
    pub version: u64,
}

/// A failure on the remote owner that has no [`CommandError`] variant of its own (conflicts,
/// rejections, deadlines, not-owner answers and replay errors come back as those variants).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("remote owner {node} failed ({kind:?}): {message}")]
#[non_exhaustive]
pub struct RemoteError {
    /// The owner that answered.
    pub node: NodeId,
    /// What kind of failure.
    pub kind: RemoteErrorKind,
    /// Its message.
    pub message: String,
}

/// The kind of a [`RemoteError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RemoteErrorKind {
    /// The owner's append may or may not have stored the commit
    /// ([`AppendError::Indeterminate`] there).
    Indeterminate,
    /// The owner's store failed otherwise (an append, a read, a snapshot).
    Store,
    /// The owner's broker failed.
    Broker,
    /// The owner could not decode the command (sender and owner disagree on its type).
    UndecodableCommand,
    /// The sender could not decode the owner's reply.
    UndecodableReply,
    /// An event the owner's aggregate decided does not encode.
    Encode,
    /// Anything else (also a kind this build does not know, from a newer owner).
    #[serde(other)]
    Other,
}

pub use crate::names::command_subject;
