//! The hot-actor store scenario: on every node, a few writers hammer a handful of hot actors
//! with stale expected versions (their own last belief), `NoStream` and `Any` appends and
//! retries after conflicts; a reader replays actors from random versions; and on node 0 a
//! vandal keeps planting damage — garbage, and plausible commits that do not belong: a version
//! gap, a second copy of a commit, another actor's commit — on two actors the writers also
//! write to, so that replay's promise never to hide damage, and the store's promise never to let
//! damage decide a version, are exercised. Everything is recorded in the
//! [`History`](crate::history::History).

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;

use aether::broker::{AppendOptions, Broker, Headers};
use aether::clock::{Clock, SharedRng};
use aether::codec::encode_actor_id;
use aether::event::ExpectedVersion;
use aether::runtime::Runtime;
use aether::store::{AppendError, EventStore, ReadError};
use futures::future::BoxFuture;

use crate::history::{EventDigest, OpKind, Outcome};
use crate::workload::{NAMESPACE, NodeContext, Recorder, below, numbered_events, open_store};

/// The actors the vandal damages (the writers write to them too).
pub const DAMAGED_ACTORS: [&str; 2] = ["damaged-0", "damaged-1"];

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
    /// Plant damage (node 0).
    pub vandal: bool,
    /// Pause between two plantings.
    pub vandal_every: (Duration, Duration),
}

impl Default for StoreWorkload {
    fn default() -> Self {
        Self {
            hot: 3,
            rotate_every: Duration::from_secs(20),
            writers_per_node: 2,
            think: (Duration::from_millis(20), Duration::from_millis(250)),
            read_every: (Duration::from_millis(500), Duration::from_millis(2000)),
            vandal: true,
            vandal_every: (Duration::from_secs(2), Duration::from_secs(6)),
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

    /// The actors writers and readers pick from at true time `at`: the hot ones, and the
    /// damaged ones when there is a vandal.
    pub fn targets(&self, at: Duration) -> Vec<String> {
        let mut actors = self.hot_actors(at);
        if self.vandal {
            actors.extend(DAMAGED_ACTORS.iter().map(|a| (*a).to_owned()));
        }
        actors
    }

    /// Every actor a run of `duration` writes to (without the damaged ones).
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
pub async fn store_node(ctx: NodeContext, workload: StoreWorkload) -> crate::engine::HostResult {
    let incarnation = ctx.start();
    let store = open_store(&incarnation.rt).await;
    for task in store_node_tasks(
        &ctx,
        &incarnation.rt,
        &store,
        &workload,
        ctx.index,
        incarnation.number,
    ) {
        aether::rt::spawn(task);
    }
    std::future::pending::<()>().await;
    Ok(())
}

/// The tasks of one node incarnation of the store workload, in the order they are started:
/// its writers, a reader, and on node 0 the vandal. Each runs forever.
pub fn store_node_tasks<R: Recorder, B: Broker, C: Clock>(
    ctx: &R,
    rt: &Runtime<B, C>,
    store: &EventStore<B, C>,
    workload: &StoreWorkload,
    index: usize,
    incarnation: u64,
) -> Vec<BoxFuture<'static, ()>> {
    let mut tasks: Vec<BoxFuture<'static, ()>> = Vec::new();
    for w in 0..workload.writers_per_node {
        tasks.push(Box::pin(writer(
            ctx.clone(),
            store.clone(),
            workload.clone(),
            format!("{}.{incarnation}.{w}", ctx.name()),
            rt.rng().fork(),
        )));
    }
    tasks.push(Box::pin(reader(
        ctx.clone(),
        store.clone(),
        workload.clone(),
        rt.rng().fork(),
    )));
    if workload.vandal && index == 0 {
        tasks.push(Box::pin(vandal(
            ctx.clone(),
            rt.broker().clone(),
            rt.clock().clone(),
            workload.clone(),
            rt.rng().fork(),
        )));
    }
    tasks
}

/// Appends to hot actors with whatever version it last believed, forever.
pub async fn writer<B: Broker, C: Clock>(
    ctx: impl Recorder,
    store: EventStore<B, C>,
    workload: StoreWorkload,
    writer_id: String,
    rng: SharedRng,
) {
    let mut belief: BTreeMap<String, u64> = BTreeMap::new();
    let mut retry: Option<(String, u64)> = None;
    let mut after_ack: Option<String> = None;
    for k in 0u64.. {
        // Now and then, ask right after an acknowledged append where the stream ends: the
        // handle must read its own write, whichever replica answers.
        if let Some(actor) = after_ack.take()
            && below(&rng, 4) == 0
        {
            latest_version(&ctx, &store, &actor).await;
        }
        store
            .runtime()
            .clock()
            .sleep(rng.duration_between(workload.think.0, workload.think.1))
            .await;
        let (actor, expected) = match retry.take() {
            // Retry right after a conflict, with the version the conflict reported.
            Some((actor, actual)) => (actor, ExpectedVersion::Exact(actual)),
            None => {
                let actors = workload.targets(ctx.now());
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
        let op = ctx.invoke(OpKind::Append {
            actor: actor.clone(),
            expected,
            event_ids,
        });
        let outcome = match store.append(&actor, expected, events).await {
            Ok(done) => {
                belief.insert(actor.clone(), done.last_version());
                after_ack = Some(actor.clone());
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
        ctx.complete(op, outcome);
    }
}

/// Replays actors from random versions, forever: plain `events` on the hot actors (and now and
/// then on a damaged one, which must then report the damage), `events_with_errors` on the
/// damaged ones.
pub async fn reader<B: Broker, C: Clock>(
    ctx: impl Recorder,
    store: EventStore<B, C>,
    workload: StoreWorkload,
    rng: SharedRng,
) {
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    loop {
        store
            .runtime()
            .clock()
            .sleep(rng.duration_between(workload.read_every.0, workload.read_every.1))
            .await;
        let actors = workload.targets(ctx.now());
        let actor = actors[below(&rng, actors.len())].clone();
        if below(&rng, 4) == 0 {
            latest_version(&ctx, &store, &actor).await;
            continue;
        }
        // From the start half the time, else from anywhere up to just past what was seen.
        let known = seen.get(&actor).copied().unwrap_or(0);
        let from = if below(&rng, 2) == 0 {
            1
        } else {
            1 + below(&rng, known as usize + 2) as u64
        };
        let damaged = DAMAGED_ACTORS.contains(&actor.as_str());
        let around = damaged && below(&rng, 4) != 0;
        let op = ctx.invoke(OpKind::Read {
            actor: actor.clone(),
            from,
        });
        let outcome = if around {
            match store.events_with_errors(&actor, from).await {
                Ok(replay) => Outcome::ReadAround {
                    events: replay.events.iter().map(EventDigest::of).collect(),
                    damaged: replay.errors.iter().map(|e| e.sequence).collect(),
                },
                Err(e) => Outcome::Failed(e.to_string()),
            }
        } else {
            match store.events(&actor, from).await {
                Ok(events) => Outcome::Read {
                    events: events.iter().map(EventDigest::of).collect(),
                },
                Err(ReadError::Damaged(damage)) => Outcome::Damaged {
                    sequence: damage.sequence,
                },
                Err(e) => Outcome::Failed(e.to_string()),
            }
        };
        if let Outcome::Read { events } | Outcome::ReadAround { events, .. } = &outcome
            && let Some(last) = events.last()
        {
            seen.insert(actor, last.version);
        }
        ctx.complete(op, outcome);
    }
}

/// Records one `latest_version` call.
async fn latest_version<B: Broker, C: Clock>(
    ctx: &impl Recorder,
    store: &EventStore<B, C>,
    actor: &str,
) {
    let op = ctx.invoke(OpKind::LatestVersion {
        actor: actor.to_owned(),
    });
    let outcome = match store.latest_version(actor).await {
        Ok(version) => Outcome::Version(version),
        Err(e) => Outcome::Failed(e.to_string()),
    };
    ctx.complete(op, outcome);
}

/// The shapes of damage the vandal plants.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// Bytes that are not a commit.
    Garbage,
    /// A well-formed commit of the actor, headers consistent, at a version past a gap.
    Gap,
    /// A second copy of one of the actor's commits (same headers, same body).
    Copy,
    /// A well-formed commit of another actor.
    Foreign,
}

/// Plants damage on the damaged actors, forever: one record at a time, as a rogue writer
/// outside aether would (no expected sequence; a message id so that a retry stores it once).
pub async fn vandal<B: Broker, C: Clock>(
    ctx: impl Recorder,
    broker: B,
    clock: C,
    workload: StoreWorkload,
    rng: SharedRng,
) {
    let stream = format!("AETHER_EV_{NAMESPACE}");
    let subject_of = |actor: &str| {
        format!(
            "aether.ev.{NAMESPACE}.{}",
            encode_actor_id(actor).expect("valid actor id")
        )
    };
    for k in 0u64.. {
        clock
            .sleep(rng.duration_between(workload.vandal_every.0, workload.vandal_every.1))
            .await;
        let actor = DAMAGED_ACTORS[below(&rng, DAMAGED_ACTORS.len())];
        let subject = subject_of(actor);
        let shape = match below(&rng, 4) {
            0 => Shape::Garbage,
            1 => Shape::Gap,
            2 => Shape::Copy,
            _ => Shape::Foreign,
        };
        // A model to forge from: the actor's last record, or a hot actor's.
        let source = match shape {
            Shape::Foreign => {
                let hot = workload.hot_actors(ctx.now());
                subject_of(&hot[below(&rng, hot.len())])
            }
            _ => subject.clone(),
        };
        let model = broker
            .last(&stream, &source, aether::broker::ReadFrom::Leader)
            .await
            .ok()
            .flatten();
        let (headers, payload) = match (shape, model) {
            (Shape::Garbage, _) | (_, None) => (
                Headers::new(),
                Bytes::from(format!("\u{0} vandal {k}: this is not a commit")),
            ),
            (Shape::Copy | Shape::Foreign, Some(m)) => (m.headers, m.payload),
            (Shape::Gap, Some(m)) => forge_gap(&m, k),
        };
        let op = ctx.invoke(OpKind::Damage {
            actor: actor.to_owned(),
        });
        let id = format!("vandal-{}-{k}", ctx.name());
        let mut outcome = Outcome::Pending;
        for _ in 0..10 {
            let result = broker
                .append(
                    &subject,
                    headers.clone(),
                    payload.clone(),
                    AppendOptions {
                        expected_last_subject_sequence: None,
                        message_id: Some(id.clone()),
                    },
                )
                .await;
            outcome = match result {
                Ok(ack) => Outcome::Damaged {
                    sequence: ack.sequence,
                },
                Err(e) if e.is_ambiguous() => {
                    clock.sleep(Duration::from_millis(300)).await;
                    Outcome::Ambiguous(e.to_string())
                }
                Err(e) => Outcome::Failed(e.to_string()),
            };
            if !matches!(outcome, Outcome::Ambiguous(_)) {
                break;
            }
        }
        ctx.complete(op, outcome);
    }
}

/// A well-formed commit that continues `model`'s actor three versions too late, under a fresh
/// commit id, with headers that agree with it.
fn forge_gap(model: &aether::broker::StoredMessage, k: u64) -> (Headers, Bytes) {
    let Ok(mut commit) = aether::codec::decode_commit(&model.payload) else {
        return (model.headers.clone(), model.payload.clone());
    };
    let first = commit.last_version() + 3;
    commit.commit_id = format!("forged-gap-{k}");
    for (i, event) in commit.events.iter_mut().enumerate() {
        event.version = first + i as u64;
        event.id = format!("forged-gap-{k}.{i}");
    }
    let mut headers = Headers::new();
    headers.insert(
        aether::codec::HEADER_COMMIT_ID.into(),
        commit.commit_id.clone(),
    );
    headers.insert(
        aether::codec::HEADER_FIRST_VERSION.into(),
        commit.first_version().to_string(),
    );
    headers.insert(
        aether::codec::HEADER_LAST_VERSION.into(),
        commit.last_version().to_string(),
    );
    headers.insert(
        aether::codec::HEADER_FORMAT.into(),
        aether::codec::COMMIT_FORMAT.to_string(),
    );
    (headers, Bytes::from(aether::codec::encode_commit(&commit)))
}
