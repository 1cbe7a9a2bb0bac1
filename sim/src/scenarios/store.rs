//! The hot-actor store scenario: on every node, a few writers hammer a handful of hot actors
//! with stale expected versions (their own last belief), `NoStream` and `Any` appends and
//! retries after conflicts; a reader replays actors; and on node 0 a vandal plants one damaged
//! record, so that replay's promise never to hide damage is exercised. Everything is recorded in
//! the [`History`](crate::history::History).

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;

use aether::broker::{AppendOptions, Broker, BrokerError, Headers};
use aether::clock::{Clock, SharedRng};
use aether::codec::encode_actor_id;
use aether::event::ExpectedVersion;
use aether::store::{AppendError, EventStore, ReadError};

use crate::broker::SimBroker;
use crate::clock::{SimClock, sim_now};
use crate::history::{EventDigest, OpKind, Outcome};
use crate::workload::{NAMESPACE, NodeContext, below, numbered_events, open_store};

/// The actor the vandal damages.
pub const DAMAGED_ACTOR: &str = "damaged";

/// Store workload settings.
#[derive(Clone, Debug)]
pub struct StoreWorkload {
    /// Hot actors everyone writes to at any one time.
    pub hot: usize,
    /// The hot set rotates to fresh actors this often (simulated time), which keeps streams —
    /// and so whole-stream replays — short, and makes new streams (`NoStream`, version 0) a
    /// regular event rather than a start-up one.
    pub rotate_every: Duration,
    /// Writers per node.
    pub writers_per_node: usize,
    /// Pause between a writer's operations.
    pub think: (Duration, Duration),
    /// Pause between a reader's operations.
    pub read_every: (Duration, Duration),
    /// Plant a damaged record (node 0).
    pub vandal: bool,
}

impl Default for StoreWorkload {
    fn default() -> Self {
        Self {
            hot: 3,
            rotate_every: Duration::from_secs(20),
            writers_per_node: 2,
            think: (Duration::from_millis(20), Duration::from_millis(250)),
            read_every: (Duration::from_millis(1000), Duration::from_millis(3000)),
            vandal: true,
        }
    }
}

impl StoreWorkload {
    /// The hot actors at true time `at`: `hot-<i>` in the first period, `hot-<i>@<g>` in
    /// period `g` after that.
    pub fn hot_actors(&self, at: Duration) -> Vec<String> {
        let generation = at.as_nanos() / self.rotate_every.as_nanos().max(1);
        (0..self.hot)
            .map(|i| {
                if generation == 0 {
                    format!("hot-{i}")
                } else {
                    format!("hot-{i}@{generation}")
                }
            })
            .collect()
    }

    /// Every actor a run of `duration` writes to (without the damaged one).
    pub fn all_actors(&self, duration: Duration) -> Vec<String> {
        let mut out = Vec::new();
        let mut at = Duration::ZERO;
        while at < duration {
            out.extend(self.hot_actors(at));
            at += self.rotate_every.max(Duration::from_millis(1));
        }
        out
    }
}

/// The store workload's node software.
pub async fn store_node(ctx: NodeContext, workload: StoreWorkload) -> turmoil::Result {
    let incarnation = ctx.start();
    let store = open_store(&incarnation.rt).await;
    for w in 0..workload.writers_per_node {
        let rng = incarnation.rt.rng().fork();
        tokio::spawn(writer(
            ctx.clone(),
            store.clone(),
            workload.clone(),
            format!("{}.{}.{w}", ctx.name, incarnation.number),
            rng,
        ));
    }
    tokio::spawn(reader(
        ctx.clone(),
        store.clone(),
        workload.clone(),
        incarnation.rt.rng().fork(),
    ));
    if workload.vandal && ctx.index == 0 {
        tokio::spawn(vandal(ctx.clone(), incarnation.rt.broker().clone()));
    }
    std::future::pending::<()>().await;
    Ok(())
}

/// Appends to hot actors with whatever version it last believed, forever.
pub async fn writer(
    ctx: NodeContext,
    store: EventStore<SimBroker, SimClock>,
    workload: StoreWorkload,
    writer_id: String,
    rng: SharedRng,
) {
    let mut belief: BTreeMap<String, u64> = BTreeMap::new();
    let mut retry: Option<(String, u64)> = None;
    for k in 0u64.. {
        ctx.clock
            .sleep(rng.duration_between(workload.think.0, workload.think.1))
            .await;
        let (actor, expected) = match retry.take() {
            // Retry right after a conflict, with the version the conflict reported.
            Some((actor, actual)) => (actor, ExpectedVersion::Exact(actual)),
            None => {
                let actors = workload.hot_actors(sim_now());
                let actor = actors[below(&rng, actors.len())].clone();
                let expected = match below(&rng, 100) {
                    0..=9 => ExpectedVersion::NoStream,
                    10..=24 => ExpectedVersion::Any,
                    _ => ExpectedVersion::Exact(belief.get(&actor).copied().unwrap_or(0)),
                };
                (actor, expected)
            }
        };
        let count = 1 + below(&rng, 3);
        let (event_ids, events) = numbered_events("Tick", &writer_id, k, count);
        let op = ctx.history.invoke(
            sim_now(),
            &ctx.name,
            OpKind::Append {
                actor: actor.clone(),
                expected,
                event_ids,
            },
        );
        let outcome = match store.append(&actor, expected, events).await {
            Ok(done) => {
                belief.insert(actor.clone(), done.last_version());
                Outcome::Appended {
                    commit_id: done.commit_id.clone(),
                    sequence: done.sequence,
                    events: done.events.iter().map(EventDigest::of).collect(),
                }
            }
            Err(AppendError::Conflict(conflict)) => {
                belief.insert(actor.clone(), conflict.actual);
                if below(&rng, 2) == 0 {
                    retry = Some((actor.clone(), conflict.actual));
                }
                Outcome::Failed(conflict.to_string())
            }
            Err(e @ AppendError::Indeterminate { .. }) => Outcome::Ambiguous(e.to_string()),
            Err(e) => Outcome::Failed(e.to_string()),
        };
        ctx.history.complete(sim_now(), op, outcome);
    }
}

/// Replays actors, forever.
pub async fn reader(
    ctx: NodeContext,
    store: EventStore<SimBroker, SimClock>,
    workload: StoreWorkload,
    rng: SharedRng,
) {
    loop {
        ctx.clock
            .sleep(rng.duration_between(workload.read_every.0, workload.read_every.1))
            .await;
        let actors = workload.hot_actors(sim_now());
        let pick = below(&rng, actors.len() + usize::from(workload.vandal));
        let actor = actors
            .get(pick)
            .cloned()
            .unwrap_or_else(|| DAMAGED_ACTOR.to_owned());
        let op = ctx.history.invoke(
            sim_now(),
            &ctx.name,
            OpKind::Read {
                actor: actor.clone(),
            },
        );
        let outcome = match store.events(&actor, 1).await {
            Ok(events) => Outcome::Read {
                events: events.iter().map(EventDigest::of).collect(),
            },
            Err(ReadError::Damaged(damage)) => Outcome::Damaged {
                sequence: damage.sequence,
            },
            Err(e) => Outcome::Failed(e.to_string()),
        };
        ctx.history.complete(sim_now(), op, outcome);
    }
}

/// Plants one record that is not a commit on [`DAMAGED_ACTOR`]'s subject (once per run: the
/// append expects an empty subject).
pub async fn vandal(ctx: NodeContext, broker: SimBroker) {
    let subject = format!(
        "aether.ev.{NAMESPACE}.{}",
        encode_actor_id(DAMAGED_ACTOR).expect("valid actor id")
    );
    loop {
        let op = ctx.history.invoke(
            sim_now(),
            &ctx.name,
            OpKind::Damage {
                actor: DAMAGED_ACTOR.to_owned(),
            },
        );
        let result = broker
            .append(
                &subject,
                Headers::new(),
                Bytes::from_static(b"\x00 this is not a commit"),
                AppendOptions {
                    expected_last_subject_sequence: Some(0),
                    message_id: Some("vandal".to_owned()),
                },
            )
            .await;
        let (outcome, done) = match result {
            Ok(ack) => (
                Outcome::Damaged {
                    sequence: ack.sequence,
                },
                true,
            ),
            Err(e @ BrokerError::WrongLastSequence { .. }) => {
                (Outcome::Failed(e.to_string()), true)
            }
            Err(e) if e.is_ambiguous() => (Outcome::Ambiguous(e.to_string()), false),
            Err(e) => (Outcome::Failed(e.to_string()), false),
        };
        ctx.history.complete(sim_now(), op, outcome);
        if done {
            return;
        }
        ctx.clock.sleep(Duration::from_millis(500)).await;
    }
}
