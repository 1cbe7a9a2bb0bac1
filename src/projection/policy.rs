//! Policies (process managers): projections that react to stored events by sending commands,
//! each under an idempotency key derived from the event that triggered it — so redelivering
//! an event (a retried page, a restart from the checkpoint, a fail-over, a reset) never runs a
//! command twice.
//!
//! - [`Policy`]: what to send for one stored event ([`Reaction`]s), a pure function of it.
//! - [`Dispatch`]: where commands go, one [`ActorHost`] per aggregate type.
//! - [`PolicyRunner`]: the policy's [`Projector`] (named after the policy, checkpointed as any
//!   projection) whose handler sends each reaction with [`ActorHost::send_keyed`] under the key
//!   `<policy>/<namespace>/<position>/<event>/<reaction>` — the triggering commit's position in
//!   the namespace, the event's index in it and the reaction's index. A rejection is an answer
//!   (the reaction is done); any other failure fails the page, which is offered again after a
//!   backoff with the same keys.
//! - Order: the reactions of a page to one actor are sent one after the other, in the order of
//!   their events; reactions to different actors are sent concurrently, up to
//!   [`PolicyRunner::concurrency`] at a time (16 by default; 1 sends everything in page
//!   order). A page is checkpointed once every one of its reactions is answered; a reaction
//!   without a route fails the page before anything of it is sent. When a page fails, other
//!   actors' reactions to later events of it may have run already; on the retry those answer
//!   from their keys — but a reaction that was *rejected* is decided again, on its target's
//!   state as it is then.
//!
//! Exactly-once effect holds for as long as the target recognises the key: the actor's last
//! [`ActorConfig::recent_commits`](crate::ActorConfig::recent_commits) commits, and the
//! broker's deduplication window beyond them (see [`ActorHost::execute_keyed`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use serde::Deserialize as _;
use serde_json::Value;

use super::{ProjectionError, Projector};
use crate::actor::{ActorHost, Aggregate, CommandError, Router};
use crate::broker::Broker;
use crate::clock::Clock;
use crate::event::Event;
use crate::store::{EventStore, Page};
use crate::telemetry;

/// A policy: reacts to each stored event of its namespace with commands.
pub trait Policy: Send + Sync + 'static {
    /// The policy's name: the name of its projection checkpoint and the first part of its
    /// command keys (`A-Z a-z 0-9 - _ .`, at most 48 characters).
    const NAME: &'static str;
    /// The event types that trigger it, for the EventStorming board
    /// ([`model::Policy::of`](crate::model::Policy::of)); informative only.
    const TRIGGERED_BY: &'static [&'static str] = &[];
    /// The commands it issues, for the board; informative only.
    const ISSUES: &'static [&'static str] = &[];

    /// The commands to send for `event` (none for the events it ignores). Must be a function
    /// of the event alone: a redelivered event must give the same reactions in the same order,
    /// since their keys are their indexes.
    fn react(&self, event: &Event) -> Vec<Reaction>;
}

/// One command a policy sends: to actor `actor` of aggregate type `aggregate`.
#[derive(Clone, Debug, PartialEq)]
pub struct Reaction {
    /// The target's [`Aggregate::NAME`].
    pub aggregate: &'static str,
    /// The target actor.
    pub actor: String,
    /// The command, serialised.
    pub command: Value,
}

impl Reaction {
    /// `command` for actor `actor` of aggregate type `A`.
    ///
    /// # Panics
    /// When the command does not serialise (its `Serialize` fails), a bug in the command type.
    pub fn send<A: Aggregate>(actor: impl Into<String>, command: &A::Command) -> Self {
        Self {
            aggregate: A::NAME,
            actor: actor.into(),
            command: serde_json::to_value(command).expect("commands serialise"),
        }
    }
}

/// Why a policy's page failed (it is offered again).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// No host in the [`Dispatch`] for the reaction's aggregate type.
    #[error("no route for aggregate type {0:?}")]
    NoRoute(&'static str),
    /// The command did not decode as the target's command type.
    #[error("command for {aggregate:?} does not decode: {reason}")]
    BadCommand {
        /// The aggregate type.
        aggregate: &'static str,
        /// The serde error.
        reason: String,
    },
    /// Sending failed without an answer (the key makes the retry safe).
    #[error("command {key} to {aggregate} {actor:?} failed: {reason}")]
    Send {
        /// The aggregate type.
        aggregate: &'static str,
        /// The actor.
        actor: String,
        /// The command's key.
        key: String,
        /// What failed.
        reason: String,
    },
}

/// What became of one sent reaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Sent {
    /// Executed now.
    Executed,
    /// Executed before, under the same key: answered from that outcome.
    Deduplicated,
    /// Refused by the aggregate (nothing stored).
    Rejected,
}

impl Sent {
    fn label(self) -> &'static str {
        match self {
            Sent::Executed => "executed",
            Sent::Deduplicated => "deduplicated",
            Sent::Rejected => "rejected",
        }
    }
}

type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<Sent, PolicyError>> + Send + 'a>>;

/// Sends a serialised command to one aggregate type.
trait Target: Send + Sync {
    /// Sends `command` under `key` (`None`: unkeyed — only the planted bug does that).
    fn send<'a>(
        &'a self,
        actor: &'a str,
        command: &'a Value,
        key: Option<&'a str>,
    ) -> SendFuture<'a>;
}

impl<A: Aggregate, B: Broker, C: Clock, R: Router> Target for ActorHost<A, B, C, R> {
    fn send<'a>(
        &'a self,
        actor: &'a str,
        command: &'a Value,
        key: Option<&'a str>,
    ) -> SendFuture<'a> {
        Box::pin(async move {
            let command =
                A::Command::deserialize(command).map_err(|e| PolicyError::BadCommand {
                    aggregate: A::NAME,
                    reason: e.to_string(),
                })?;
            let sent = match key {
                Some(key) => self.send_keyed(actor, &command, key).await,
                None => self.send(actor, &command).await,
            };
            match sent {
                Ok(outcome) if outcome.deduplicated => Ok(Sent::Deduplicated),
                Ok(_) => Ok(Sent::Executed),
                Err(CommandError::Rejected(rejection)) => {
                    tracing::debug!(actor, key, ?rejection, "policy command rejected");
                    Ok(Sent::Rejected)
                }
                Err(e) => Err(PolicyError::Send {
                    aggregate: A::NAME,
                    actor: actor.to_owned(),
                    key: key.unwrap_or_default().to_owned(),
                    reason: e.to_string(),
                }),
            }
        })
    }
}

/// Where a policy's commands go: one host per aggregate type, which sends each command to the
/// owner of its actor ([`ActorHost::send_keyed`]).
#[derive(Default)]
pub struct Dispatch {
    targets: BTreeMap<&'static str, Box<dyn Target>>,
}

impl std::fmt::Debug for Dispatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.targets.keys()).finish()
    }
}

impl Dispatch {
    /// No routes yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sends commands for aggregate type `A` through `host`.
    pub fn route<A: Aggregate, B: Broker, C: Clock, R: Router>(
        mut self,
        host: ActorHost<A, B, C, R>,
    ) -> Self {
        self.targets.insert(A::NAME, Box::new(host));
        self
    }

    /// The aggregate types routed.
    pub fn aggregates(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.targets.keys().copied()
    }
}

/// Runs a [`Policy`] over a namespace: see the [module docs](self).
pub struct PolicyRunner<P, B, C> {
    policy: P,
    projector: Projector<B, C>,
    dispatch: Dispatch,
    concurrency: usize,
}

/// Reactions to different actors sent at once by default ([`PolicyRunner::concurrency`]).
pub const POLICY_CONCURRENCY: usize = 16;

/// Commits per page of a policy by default ([`PolicyRunner::page_max`]): smaller than a
/// projection's, since a page is the unit a policy redoes — a page that fails or moves to
/// another node mid-way is sent again (answered from the keys, at a round trip or more each).
pub const POLICY_PAGE_MAX: usize = 64;

impl<P: Policy, B: Broker, C: Clock> PolicyRunner<P, B, C> {
    /// The runner of `policy` over `store`'s namespace, sending through `dispatch`. Its
    /// checkpoint is the projection named [`Policy::NAME`].
    ///
    /// # Errors
    /// [`ProjectionError::InvalidName`] for a policy name outside `A-Z a-z 0-9 - _ .` or
    /// longer than 48 characters; broker failures opening the checkpoint bucket.
    pub async fn open(
        policy: P,
        store: EventStore<B, C>,
        dispatch: Dispatch,
    ) -> Result<Self, ProjectionError<PolicyError>> {
        let valid = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
        if P::NAME.is_empty() || P::NAME.len() > 48 || !P::NAME.chars().all(valid) {
            return Err(crate::codec::InvalidName {
                kind: "policy name",
                name: P::NAME.to_owned(),
                rule: "1..=48 characters of A-Z, a-z, 0-9, '-', '_', '.'",
            }
            .into());
        }
        Ok(Self {
            policy,
            projector: Projector::open(store, P::NAME)
                .await?
                .page_max(POLICY_PAGE_MAX),
            dispatch,
            concurrency: POLICY_CONCURRENCY,
        })
    }

    /// Commits per page (at least 1; default [`POLICY_PAGE_MAX`]): the checkpoint moves once
    /// per page, and a page interrupted mid-way is sent again.
    pub fn page_max(mut self, page_max: usize) -> Self {
        self.projector = self.projector.page_max(page_max);
        self
    }

    /// How many actors' reactions are sent at once (at least 1; default
    /// [`POLICY_CONCURRENCY`]). Reactions to one actor are always sent in event order.
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// The projector behind it (checkpoint, `lag`, `reset`, the follow settings).
    pub fn projector(&self) -> &Projector<B, C> {
        &self.projector
    }

    /// Sets how the projector follows (see [`Projector::follow`]).
    pub fn follow(mut self, follow: super::Follow) -> Self {
        self.projector = self.projector.follow(follow);
        self
    }

    /// The key of reaction `reaction` to event `event` of the commit at `position` of
    /// `namespace`.
    pub fn key(namespace: &str, position: u64, event: usize, reaction: usize) -> String {
        format!("{}/{namespace}/{position}/{event}/{reaction}", P::NAME)
    }

    /// Catches up, then follows, until `stop` completes (as [`Projector::run`]).
    ///
    /// # Errors
    /// As [`Projector::run`].
    pub async fn run(
        &self,
        stop: impl Future<Output = ()>,
    ) -> Result<u64, ProjectionError<PolicyError>> {
        self.projector.run(|page| self.handle(page), stop).await
    }

    /// [`run`](Self::run) on a cluster: one active instance per policy, the others standing by
    /// (as [`Projector::run_owned`]).
    ///
    /// # Errors
    /// As [`Projector::run_owned`].
    pub async fn run_owned<R: Router>(
        &self,
        router: &R,
        stop: impl Future<Output = ()>,
    ) -> Result<u64, ProjectionError<PolicyError>> {
        self.projector
            .run_owned(router, |page| self.handle(page), stop)
            .await
    }

    /// Handles pages until caught up (as [`Projector::catch_up`]).
    ///
    /// # Errors
    /// As [`Projector::catch_up`].
    pub async fn catch_up(&self) -> Result<usize, ProjectionError<PolicyError>> {
        self.projector.catch_up(|page| self.handle(page)).await
    }

    /// Sends the reactions to every event of `page`: per target actor in event order, up to
    /// `concurrency` actors at once.
    async fn handle(&self, page: Page) -> Result<(), PolicyError> {
        use futures::TryStreamExt as _;
        let namespace = self.projector.store().namespace();
        // The page's reactions, queued per target actor (queues in order of first reaction).
        let mut queues: Vec<Vec<(String, Reaction, &dyn Target)>> = Vec::new();
        let mut queue_of: BTreeMap<(&'static str, String), usize> = BTreeMap::new();
        for commit in &page.commits {
            for (e, event) in commit.events.iter().enumerate() {
                for (r, reaction) in self.policy.react(event).into_iter().enumerate() {
                    let target = self
                        .dispatch
                        .targets
                        .get(reaction.aggregate)
                        .ok_or(PolicyError::NoRoute(reaction.aggregate))?;
                    let key = Self::key(namespace, commit.position, e, r);
                    let next = queues.len();
                    // One queue for everything when sending one at a time: page order.
                    let target_actor = if self.concurrency == 1 {
                        ("", String::new())
                    } else {
                        (reaction.aggregate, reaction.actor.clone())
                    };
                    let queue = *queue_of.entry(target_actor).or_insert(next);
                    if queue == next {
                        queues.push(Vec::new());
                    }
                    queues[queue].push((key, reaction, target.as_ref()));
                }
            }
        }
        futures::stream::iter(queues.into_iter().map(Ok))
            .try_for_each_concurrent(self.concurrency, |queue| async move {
                for (key, reaction, target) in queue {
                    self.send_one(&key, &reaction, target).await?;
                }
                Ok(())
            })
            .await
    }

    /// Sends one reaction under its key.
    async fn send_one(
        &self,
        key: &str,
        reaction: &Reaction,
        target: &dyn Target,
    ) -> Result<(), PolicyError> {
        let keyed =
            !crate::planted::planted!(self.projector.store().runtime(), policy_sends_unkeyed);
        let sent = target
            .send(&reaction.actor, &reaction.command, keyed.then_some(key))
            .await?;
        tracing::debug!(
            policy = P::NAME,
            key,
            aggregate = reaction.aggregate,
            actor = %reaction.actor,
            outcome = sent.label(),
            "policy command sent"
        );
        metrics::counter!(
            telemetry::POLICY_COMMANDS,
            "policy" => P::NAME,
            "outcome" => sent.label()
        )
        .increment(1);
        Ok(())
    }
}
