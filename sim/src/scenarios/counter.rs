//! Counter commands in the cluster scenario: the aggregate, the nodes' command senders, and a
//! foreign writer that appends decisions of its own.
//!
//! Every counter event records the decision it was: the value it was decided on (`before`),
//! the version that value had, the change, and the node and assignment epoch that decided. The
//! `decisions` checker re-folds every final stream and checks each decision against exactly
//! the events before it, and each decider's ownership against the assignments it had applied.
//! A `Take` larger than the value is refused; the refusal records what it saw, so that it can
//! be checked too. The foreign writer (an owner appending directly through the store, as a
//! migration or a second code path would) makes the hosts' cached states go stale: a host must
//! reload after a conflict, or its next decision is a lost update.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use aether::actor::{Aggregate, CommandContext};
use aether::clock::{Clock, SharedRng};
use aether::event::{Event, ExpectedVersion, NewEvent};
use aether::store::{AppendError, EventStore};

use super::cluster::{ClusterWorkload, CounterHost};
use crate::history::{EventDigest, OpKind, Outcome};
use crate::workload::{Recorder, below, command_failure};
use aether::broker::Broker;
use aether::cluster::Cluster;

/// A counter that never goes below zero.
#[derive(Default, Serialize, Deserialize)]
pub struct Counter {
    value: u64,
}

/// What a counter is asked to do. The sender sends it under `id` as its idempotency key, so
/// `id` also becomes the commit id and the id of the event the command stores.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum CounterCommand {
    /// Add `by`.
    Add {
        /// The amount.
        by: u64,
        /// The command's (and its event's) id.
        id: String,
    },
    /// Take `by`, refused when the counter holds less.
    Take {
        /// The amount.
        by: u64,
        /// The command's (and its event's) id.
        id: String,
    },
}

/// A refused `Take`: the value and version it was decided on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    /// The counter's value.
    pub value: u64,
    /// The version of that state.
    pub version: u64,
}

/// The data of a counter event: one decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// The change.
    pub delta: i64,
    /// The value the decision was taken on.
    pub before: u64,
    /// The version of that state: the event is stored at `version + 1`.
    pub version: u64,
    /// The node that decided.
    pub node: String,
    /// The assignment epoch it decided under (`None`: no applied assignment).
    pub epoch: Option<u64>,
}

/// The event type of every counter decision.
pub const COUNTED: &str = "Counted";

/// A counter's events: one type, a decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CounterEvent {
    /// One decision (stored as type [`COUNTED`]).
    Counted(Decision),
}

impl aether::DomainEvent for CounterEvent {}

impl Decision {
    /// The decision an event records, if it is one.
    pub fn of(event: &Event) -> Option<Self> {
        (event.event_type == COUNTED)
            .then(|| serde_json::from_value(event.data.clone()).ok())
            .flatten()
    }

    fn event(&self, id: &str) -> NewEvent {
        NewEvent::new(
            COUNTED,
            serde_json::to_value(self).expect("decisions serialise"),
        )
        .with_id(id)
    }
}

impl Aggregate for Counter {
    const NAME: &'static str = "counter";
    type Command = CounterCommand;
    type Event = CounterEvent;
    type Rejection = Refused;

    fn handle(
        &self,
        ctx: &CommandContext<'_>,
        command: &CounterCommand,
    ) -> Result<Vec<CounterEvent>, Refused> {
        let decision = |delta: i64| {
            CounterEvent::Counted(Decision {
                delta,
                before: self.value,
                version: ctx.version,
                node: ctx.node_id.to_string(),
                epoch: ctx.epoch,
            })
        };
        match command {
            CounterCommand::Add { by, .. } => Ok(vec![decision(*by as i64)]),
            CounterCommand::Take { by, .. } if *by > self.value => Err(Refused {
                value: self.value,
                version: ctx.version,
            }),
            CounterCommand::Take { by, .. } => Ok(vec![decision(-(*by as i64))]),
        }
    }

    fn apply(&mut self, CounterEvent::Counted(d): &CounterEvent) {
        // A wrong decision below zero is the checker's to report; the fold stays total.
        self.value = self.value.saturating_add_signed(d.delta);
    }
}

/// Sends counter commands, one at a time, to random counters through `ActorHost::send` (run
/// here or on the owner), recording each command and its answer. One in three takes.
pub async fn command_sender<B: Broker, C: Clock>(
    ctx: impl Recorder,
    clock: C,
    host: CounterHost<B, C>,
    workload: ClusterWorkload,
    sender_id: String,
    rng: SharedRng,
) {
    let counters = workload.counters();
    if counters.is_empty() {
        return;
    }
    for k in 0u64.. {
        clock
            .sleep(rng.duration_between(workload.command_think.0, workload.command_think.1))
            .await;
        let actor = counters[below(&rng, counters.len())].clone();
        let by = 1 + below(&rng, 3) as u64;
        let id = format!("cmd.{sender_id}.{k}");
        let (command, delta) = if below(&rng, 3) == 0 {
            (CounterCommand::Take { by, id: id.clone() }, -(by as i64))
        } else {
            (CounterCommand::Add { by, id: id.clone() }, by as i64)
        };
        let op = ctx.invoke(OpKind::Command {
            actor: actor.clone(),
            delta,
            id: id.clone(),
        });
        let outcome = match host.send_keyed(&actor, &command, &id).await {
            Ok(done) => Outcome::Commanded {
                version: done.version,
                node: done.node_id.to_string(),
                events: done.events.iter().map(EventDigest::of).collect(),
            },
            Err(e) => command_failure(e, |refused| Outcome::Refused {
                value: refused.value,
                version: refused.version,
            }),
        };
        ctx.complete(op, outcome);
    }
}

/// Appends decisions of its own to counters whose shard this node hosts, straight through the
/// store: reads the counter, decides an `Add` on what it read, appends at exactly that version.
/// The hosts' cached states go stale under it.
pub async fn foreign_writer<B: Broker, C: Clock>(
    ctx: impl Recorder,
    store: EventStore<B, C>,
    cluster: std::sync::Arc<Cluster<B, C>>,
    workload: ClusterWorkload,
    writer_id: String,
    rng: SharedRng,
) {
    let counters = workload.counters();
    for k in 0u64.. {
        store
            .runtime()
            .clock()
            .sleep(rng.duration_between(Duration::from_secs(1), Duration::from_secs(3)))
            .await;
        let Some(assignment) = cluster.assignment() else {
            continue;
        };
        // Owned under the one assignment it records with each decision.
        let me = cluster.node_id();
        let owned: Vec<&String> = counters
            .iter()
            .filter(|a| assignment.placement().owner(cluster.shard_of(a)) == me)
            .collect();
        if owned.is_empty() {
            continue;
        }
        let actor = owned[below(&rng, owned.len())].clone();
        let Ok(events) = store.events(&actor, 1).await else {
            continue;
        };
        let version = events.last().map_or(0, |e| e.version);
        let before = events
            .iter()
            .filter_map(Decision::of)
            .fold(0u64, |v, d| v.saturating_add_signed(d.delta));
        let id = format!("ext.{writer_id}.{k}");
        let decision = Decision {
            delta: 1,
            before,
            version,
            node: ctx.name().to_owned(),
            epoch: Some(assignment.epoch()),
        };
        let op = ctx.invoke(OpKind::Append {
            actor: actor.clone(),
            expected: ExpectedVersion::Exact(version),
            event_ids: vec![id.clone()],
        });
        let outcome = match store
            .append(
                &actor,
                ExpectedVersion::Exact(version),
                vec![decision.event(&id)],
            )
            .await
        {
            Ok(done) => Outcome::Appended {
                commit_id: done.commit_id.clone(),
                sequence: done.sequence,
                events: done.events.iter().map(EventDigest::of).collect(),
            },
            Err(e @ AppendError::Indeterminate { .. }) => Outcome::Ambiguous(e.to_string()),
            Err(e) => Outcome::Failed(e.to_string()),
        };
        ctx.complete(op, outcome);
    }
}
