//! The read-side scenario: every node appends to a few actors through a store whose `EventStored`
//! notifications go out on a connected [`EventBus`], listens on the bus with two subscribers — a
//! prompt one and a slow one with a tiny queue, which must be told what it misses — and runs an
//! instance of the same [`Projector`] (they share one checkpoint, so they fence each other),
//! whose handler does broker work of its own before it records what it handled.
//!
//! Checked by `bus` (no repeat or reordering within an origin's numbering, every gap reported,
//! every notification announces a stored event, nothing lost once faults stop) and
//! `projections` (every commit below the final checkpoint handled at least once, checkpoints
//! only move forward, the final checkpoint covers every commit).

use std::collections::BTreeMap;
use std::time::Duration;

use aether::broker::{Broker, KvConfig};
use aether::bus::{BusConfig, EventBus, Filter, RecvError};
use aether::clock::{Clock, SharedRng};
use aether::event::ExpectedVersion;
use aether::projection::{ProjectionError, Projector};
use aether::store::{AppendError, EventStore, EventStored};

use crate::broker::SimBroker;
use crate::clock::{SimClock, sim_now};
use crate::history::{BusDigest, EventDigest, OpKind, Outcome};
use crate::workload::{NAMESPACE, NodeContext, Recorder, below, numbered_events, open_store};

/// The projection every node runs an instance of.
pub const PROJECTION: &str = "totals";

/// The bucket the projection handler writes its read model to.
pub const READ_MODEL_BUCKET: &str = "sim-read-model";

/// Read-side workload settings.
#[derive(Clone, Debug)]
pub struct ReadsideWorkload {
    /// Actors writers append to.
    pub actors: usize,
    /// Writers per node.
    pub writers_per_node: usize,
    /// Pause between a writer's appends.
    pub think: (Duration, Duration),
    /// Queue of the slow subscriber.
    pub slow_queue: usize,
    /// Pause of the slow subscriber after each delivery.
    pub slow_pause: (Duration, Duration),
    /// Pause between projector steps.
    pub step_every: (Duration, Duration),
    /// Projector page size (small, so that a run has many pages).
    pub page_max: usize,
}

impl Default for ReadsideWorkload {
    fn default() -> Self {
        Self {
            actors: 6,
            writers_per_node: 2,
            think: (Duration::from_millis(40), Duration::from_millis(300)),
            slow_queue: 4,
            slow_pause: (Duration::from_millis(20), Duration::from_millis(120)),
            step_every: (Duration::from_millis(100), Duration::from_millis(400)),
            page_max: 16,
        }
    }
}

impl ReadsideWorkload {
    /// The actors.
    pub fn actors(&self) -> Vec<String> {
        (0..self.actors).map(|i| format!("item-{i}")).collect()
    }
}

/// The node software.
pub async fn readside_node(
    ctx: NodeContext,
    workload: ReadsideWorkload,
) -> crate::engine::HostResult {
    let incarnation = ctx.start();
    let rt = incarnation.rt.clone();
    let bus = loop {
        match EventBus::connected(&rt, BusConfig::new()).await {
            Ok(bus) => break bus,
            Err(_) => ctx.clock.sleep(Duration::from_millis(200)).await,
        }
    };
    let store = open_store(&rt).await.with_bus(bus.clone());
    let prefix = format!("{}.{}", ctx.name, incarnation.number);
    for (name, queue, pause) in [
        ("prompt", 1024, None),
        ("slow", workload.slow_queue, Some(workload.slow_pause)),
    ] {
        let subscription = bus
            .subscribe_with_queue(NAMESPACE, Filter::all(), queue)
            .expect("the namespace is valid");
        aether::rt::spawn(subscriber(
            ctx.clone(),
            subscription,
            format!("{prefix}.{name}"),
            pause,
            rt.rng().fork(),
        ));
    }
    for w in 0..workload.writers_per_node {
        aether::rt::spawn(writer(
            ctx.clone(),
            store.clone(),
            workload.clone(),
            format!("{prefix}.{w}"),
            rt.rng().fork(),
        ));
    }
    aether::rt::spawn(projector(ctx.clone(), store, workload, rt.rng().fork()));
    std::future::pending::<()>().await;
    Ok(())
}

/// Appends to random actors at the version it believes (`Any` one time in five).
async fn writer(
    ctx: NodeContext,
    store: EventStore<SimBroker, SimClock>,
    workload: ReadsideWorkload,
    writer_id: String,
    rng: SharedRng,
) {
    let actors = workload.actors();
    let mut belief: BTreeMap<String, u64> = BTreeMap::new();
    for k in 0u64.. {
        ctx.clock
            .sleep(rng.duration_between(workload.think.0, workload.think.1))
            .await;
        let actor = actors[below(&rng, actors.len())].clone();
        let expected = if below(&rng, 5) == 0 {
            ExpectedVersion::Any
        } else {
            ExpectedVersion::Exact(belief.get(&actor).copied().unwrap_or(0))
        };
        let (event_ids, events) = numbered_events("Counted", &writer_id, k, 1 + below(&rng, 2));
        let op = ctx.invoke(OpKind::Append {
            actor: actor.clone(),
            expected,
            event_ids,
        });
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
                Outcome::Failed(conflict.to_string())
            }
            Err(e @ AppendError::Indeterminate { .. }) => Outcome::Ambiguous(e.to_string()),
            Err(e) => Outcome::Failed(e.to_string()),
        };
        ctx.complete(op, outcome);
    }
}

/// Receives deliveries and records them, a batch at a time (what is queued at once, at most
/// 64), pausing after each delivery when it is the slow one.
async fn subscriber(
    ctx: NodeContext,
    mut subscription: aether::bus::BusSubscription,
    name: String,
    pause: Option<(Duration, Duration)>,
    rng: SharedRng,
) {
    loop {
        let first = subscription.recv_delivery().await;
        let mut batch = vec![first];
        while batch.len() < 64
            && let Some(next) = subscription.try_recv_delivery()
        {
            batch.push(next);
        }
        let mut deliveries = Vec::new();
        let mut lagged = 0;
        for item in batch {
            match item {
                Ok(d) => {
                    let stored = EventStored::from_event(&d.event);
                    deliveries.push(BusDigest {
                        origin: d.origin.to_string(),
                        session: d.session,
                        sequence: d.sequence,
                        actor: stored
                            .as_ref()
                            .map_or_else(String::new, |s| s.actor_id.clone()),
                        version: stored.as_ref().map_or(0, |s| s.version),
                        event_id: stored.map_or_else(String::new, |s| s.event_id),
                    });
                }
                Err(RecvError::Lagged(n)) => lagged += n,
                Err(_) => return,
            }
        }
        let count = deliveries.len();
        ctx.record(OpKind::BusReceived {
            subscriber: name.clone(),
            deliveries,
            lagged,
        });
        if let Some((low, high)) = pause {
            for _ in 0..count {
                ctx.clock.sleep(rng.duration_between(low, high)).await;
            }
        }
    }
}

/// Steps this node's instance of the projection, forever. The handler writes the page's last
/// position to the read model (a broker round trip that faults can break), and only then
/// records what it handled.
async fn projector(
    ctx: NodeContext,
    store: EventStore<SimBroker, SimClock>,
    workload: ReadsideWorkload,
    rng: SharedRng,
) {
    let broker = store.runtime().broker().clone();
    let projector = loop {
        let opened = async {
            broker
                .kv_ensure(KvConfig::new(READ_MODEL_BUCKET))
                .await
                .map_err(|e| e.to_string())?;
            Projector::open::<String>(store.clone(), PROJECTION)
                .await
                .map_err(|e| e.to_string())
        };
        match opened.await {
            Ok(p) => break p.page_max(workload.page_max),
            Err(_) => ctx.clock.sleep(Duration::from_millis(200)).await,
        }
    };
    loop {
        ctx.clock
            .sleep(rng.duration_between(workload.step_every.0, workload.step_every.1))
            .await;
        let op = ctx.invoke(OpKind::ProjectorStep {
            projection: PROJECTION.to_owned(),
        });
        let (history, node, broker) = (ctx.history.clone(), ctx.name.clone(), broker.clone());
        let incarnation = ctx.incarnation();
        let result = projector
            .step(|page| async move {
                let positions: Vec<u64> = page.commits.iter().map(|c| c.position).collect();
                let last = page.next_position.to_string();
                broker
                    .kv_put(READ_MODEL_BUCKET, &node, last.into())
                    .await
                    .map_err(|e| e.to_string())?;
                history.record_in(
                    sim_now(),
                    &node,
                    incarnation,
                    OpKind::Handled {
                        projection: PROJECTION.to_owned(),
                        positions,
                    },
                );
                Ok::<(), String>(())
            })
            .await;
        let outcome = match result {
            Ok(records) => Outcome::Stepped { records },
            Err(ProjectionError::Fenced { .. }) => Outcome::Fenced,
            Err(e) => Outcome::Failed(e.to_string()),
        };
        ctx.complete(op, outcome);
    }
}
