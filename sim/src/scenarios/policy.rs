//! The policy scenario: the cluster scenario's world (three nodes and a joiner, leader churn,
//! every fault) running an order flow across three aggregate types and two policies.
//!
//! - `customer` actors take `Place` commands (sent by every node under the order's id as the
//!   idempotency key) and store `Placed { order, amount }`;
//! - the `charge-on-placed` policy reacts to every `Placed` with a `Charge` to a `ledger`
//!   actor, which stores `Charged { order, amount }` — or refuses a declined amount (a multiple
//!   of 7), which is an answer: nothing is charged and nothing follows;
//! - the `ship-on-charged` policy reacts to every `Charged` with a `Ship` to a `shipment` actor,
//!   which stores `Shipped { order }`.
//!
//! Every node hosts the three aggregate types, serves their remote commands and runs both
//! policies with [`PolicyRunner::run_owned`]: one active instance per policy, moved with its
//! shard. Hosts remember only 8 keyed commits per actor, so most redeliveries are recognised by
//! the store (the broker's deduplication window), not the host's window. The ledger and the
//! shipment do not look at order ids: nothing but the policy keys stands between a redelivered
//! event and a second effect.
//!
//! Checked after the run ([`check`]):
//! - `16 every trigger has at most one effect`: no order is placed, charged or shipped twice,
//!   and nothing is charged or shipped that was not placed or charged;
//! - `16 every effect is stored under its trigger's key`: every `Charged`/`Shipped` is stored
//!   under the key the policy derives from its trigger's position, with the trigger's amount,
//!   and nothing is charged for a declined amount;
//! - `16 once faults stop, every trigger has its effect`: placements stop shortly after the
//!   faults do, and by the end of the run every order placed before a placement acknowledged
//!   a liveness bound before the end is charged (unless declined), and every order charged
//!   before it is shipped.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use aether::actor::{ActorConfig, ActorHost, Aggregate, CommandContext};
use aether::clock::{Clock, SharedRng};
use aether::event::Event;
use aether::projection::{Dispatch, Follow, Policy, PolicyRunner, Reaction};

use super::cluster::{ClusterWorkload, CurrentCluster, NodeSpec, run_cluster_node};
use crate::broker::SimBroker;
use crate::checkers::{CheckInput, Violation};
use crate::clock::SimClock;
use crate::history::{EventDigest, OpKind, Outcome};
use crate::workload::{NAMESPACE, NodeContext, Recorder, below, command_failure, open_store};

/// Policy workload settings.
#[derive(Clone, Debug)]
pub struct PolicyWorkload {
    /// The cluster underneath (no writers or counters of its own).
    pub cluster: ClusterWorkload,
    /// Customer actors orders are placed with.
    pub customers: usize,
    /// Ledger actors charges go to.
    pub ledgers: usize,
    /// Shipment actors shipments go to.
    pub shipments: usize,
    /// Pause between a node's placements.
    pub think: (Duration, Duration),
    /// Placements stop at this true time (shortly after the faults), so that the rest of the
    /// run shows whether the policies catch up.
    pub place_until: Duration,
    /// Keyed commits each host remembers per actor.
    pub recent_commits: usize,
}

impl PolicyWorkload {
    /// The workload of a run whose faults stop at `safety`.
    pub fn new(safety: Duration) -> Self {
        Self {
            cluster: ClusterWorkload {
                actors: 0,
                counters: 0,
                ..ClusterWorkload::default()
            },
            customers: 4,
            ledgers: 6,
            shipments: 6,
            think: (Duration::from_millis(60), Duration::from_millis(300)),
            place_until: safety + Duration::from_secs(2),
            recent_commits: 8,
        }
    }

    /// Every actor of the flow (the checkers read their final streams).
    pub fn actors(&self) -> Vec<String> {
        let named = |prefix: &'static str, n: usize| (0..n).map(move |i| format!("{prefix}-{i}"));
        named("cust", self.customers)
            .chain(named("ledger", self.ledgers))
            .chain(named("ship", self.shipments))
            .collect()
    }
}

/// An amount the ledger declines.
pub fn declined(amount: u64) -> bool {
    amount.is_multiple_of(7)
}

/// The actor of `prefix` an order goes to (a function of the order id alone).
fn actor_for(prefix: &str, count: usize, order: &str) -> String {
    let hash = order.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("{prefix}-{}", hash % count.max(1) as u64)
}

/// A customer: places orders.
#[derive(Default, Serialize, Deserialize)]
pub struct Customer {
    placed: u64,
}

/// Places an order.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Place {
    /// The order's id (also the command's idempotency key).
    pub order: String,
    /// Its amount.
    pub amount: u64,
}

/// A customer's events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CustomerEvent {
    /// An order was placed.
    Placed {
        /// The order.
        order: String,
        /// Its amount.
        amount: u64,
    },
}

impl aether::DomainEvent for CustomerEvent {}

impl Aggregate for Customer {
    const NAME: &'static str = "customer";
    type Command = Place;
    type Event = CustomerEvent;
    type Rejection = String;

    fn handle(&self, _: &CommandContext<'_>, place: &Place) -> Result<Vec<CustomerEvent>, String> {
        Ok(vec![CustomerEvent::Placed {
            order: place.order.clone(),
            amount: place.amount,
        }])
    }

    fn apply(&mut self, _: &CustomerEvent) {
        self.placed += 1;
    }
}

/// A ledger: charges whatever it is asked to (it does not look at order ids), declining
/// amounts that are multiples of 7.
#[derive(Default, Serialize, Deserialize)]
pub struct Ledger {
    total: u64,
}

/// Charges an order.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Charge {
    /// The order.
    pub order: String,
    /// The amount.
    pub amount: u64,
}

/// A ledger's events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LedgerEvent {
    /// An order was charged.
    Charged {
        /// The order.
        order: String,
        /// The amount.
        amount: u64,
    },
}

impl aether::DomainEvent for LedgerEvent {}

impl Aggregate for Ledger {
    const NAME: &'static str = "ledger";
    type Command = Charge;
    type Event = LedgerEvent;
    type Rejection = String;

    fn handle(&self, _: &CommandContext<'_>, charge: &Charge) -> Result<Vec<LedgerEvent>, String> {
        if declined(charge.amount) {
            return Err(format!("{} declined", charge.amount));
        }
        Ok(vec![LedgerEvent::Charged {
            order: charge.order.clone(),
            amount: charge.amount,
        }])
    }

    fn apply(&mut self, LedgerEvent::Charged { amount, .. }: &LedgerEvent) {
        self.total += amount;
    }
}

/// A shipment: ships whatever it is asked to.
#[derive(Default, Serialize, Deserialize)]
pub struct Shipment {
    shipped: u64,
}

/// Ships an order.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Ship {
    /// The order.
    pub order: String,
}

/// A shipment's events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShipmentEvent {
    /// An order was shipped.
    Shipped {
        /// The order.
        order: String,
    },
}

impl aether::DomainEvent for ShipmentEvent {}

impl Aggregate for Shipment {
    const NAME: &'static str = "shipment";
    type Command = Ship;
    type Event = ShipmentEvent;
    type Rejection = String;

    fn handle(&self, _: &CommandContext<'_>, ship: &Ship) -> Result<Vec<ShipmentEvent>, String> {
        Ok(vec![ShipmentEvent::Shipped {
            order: ship.order.clone(),
        }])
    }

    fn apply(&mut self, _: &ShipmentEvent) {
        self.shipped += 1;
    }
}

/// `Placed` → `Charge`.
pub struct ChargeOnPlaced {
    ledgers: usize,
}

impl Policy for ChargeOnPlaced {
    const NAME: &'static str = "charge-on-placed";
    const TRIGGERED_BY: &'static [&'static str] = &["Placed"];
    const ISSUES: &'static [&'static str] = &["Charge"];

    fn react(&self, event: &Event) -> Vec<Reaction> {
        match typed::<CustomerEvent>(event) {
            Some(CustomerEvent::Placed { order, amount }) => vec![Reaction::send::<Ledger>(
                actor_for("ledger", self.ledgers, &order),
                &Charge { order, amount },
            )],
            None => Vec::new(),
        }
    }
}

/// `Charged` → `Ship`.
pub struct ShipOnCharged {
    shipments: usize,
}

impl Policy for ShipOnCharged {
    const NAME: &'static str = "ship-on-charged";
    const TRIGGERED_BY: &'static [&'static str] = &["Charged"];
    const ISSUES: &'static [&'static str] = &["Ship"];

    fn react(&self, event: &Event) -> Vec<Reaction> {
        match typed::<LedgerEvent>(event) {
            Some(LedgerEvent::Charged { order, .. }) => vec![Reaction::send::<Shipment>(
                actor_for("ship", self.shipments, &order),
                &Ship { order },
            )],
            None => Vec::new(),
        }
    }
}

/// A stored event as one aggregate's event type (`None` for another type's events).
fn typed<E: aether::DomainEvent>(event: &Event) -> Option<E> {
    E::decode(&event.event_type, &event.data).ok()
}

/// The node software.
pub fn node(
    ctx: NodeContext,
    workload: PolicyWorkload,
    nodes: usize,
    safety: Duration,
) -> super::NodeSoftware {
    Box::pin(async move {
        let incarnation = ctx.start();
        let rng = incarnation.rt.rng().fork();
        let store = open_store(&incarnation.rt).await;
        let spec = NodeSpec {
            index: ctx.index,
            nodes,
            incarnation: incarnation.number,
            workload: workload.cluster.clone(),
            safety,
        };
        let flow_ctx = ctx.clone();
        run_cluster_node(
            ctx,
            incarnation.rt,
            store,
            rng,
            spec,
            move |store, router, rng| {
                Some(aether::rt::spawn(flow(
                    flow_ctx,
                    store.clone(),
                    router.clone(),
                    workload,
                    rng.fork(),
                )))
            },
        )
        .await;
        Ok(())
    })
}

type Store = aether::store::EventStore<SimBroker, SimClock>;
type Host<A> = ActorHost<A, SimBroker, SimClock, CurrentCluster>;

/// One incarnation's part of the flow: the three hosts (serving remote commands), both
/// policies, and a placer.
async fn flow(
    ctx: NodeContext,
    store: Store,
    router: CurrentCluster,
    workload: PolicyWorkload,
    rng: SharedRng,
) {
    let mut config = ActorConfig::new();
    config.recent_commits = workload.recent_commits;
    let customers: Host<Customer> = ActorHost::new(store.clone(), router.clone(), config.clone());
    let ledgers: Host<Ledger> = ActorHost::new(store.clone(), router.clone(), config.clone());
    let shipments: Host<Shipment> = ActorHost::new(store.clone(), router.clone(), config);
    serve(&ctx, &customers).await;
    serve(&ctx, &ledgers).await;
    serve(&ctx, &shipments).await;
    let (ledger_count, shipment_count) = (workload.ledgers, workload.shipments);
    aether::rt::spawn(run_policy(
        ctx.clone(),
        move || {
            let policy = ChargeOnPlaced {
                ledgers: ledger_count,
            };
            (policy, Dispatch::new().route(ledgers.clone()))
        },
        store.clone(),
        router.clone(),
    ));
    aether::rt::spawn(run_policy(
        ctx.clone(),
        move || {
            let policy = ShipOnCharged {
                shipments: shipment_count,
            };
            (policy, Dispatch::new().route(shipments.clone()))
        },
        store,
        router,
    ));
    placer(ctx, customers, workload, rng).await;
}

/// Serves `host`'s remote commands, retrying until the broker lets it subscribe.
async fn serve<A: Aggregate>(ctx: &NodeContext, host: &Host<A>) {
    while let Err(e) = host.serve().await {
        ctx.history.note(
            ctx.now(),
            format!("{} {} host serve failed: {e}", ctx.name, A::NAME),
        );
        ctx.clock.sleep(Duration::from_millis(500)).await;
    }
}

/// Opens `policy`'s runner (retrying) and runs it on the cluster: active while this node owns
/// the policy, standing by otherwise. Polls every 200 ms (no bus on the store) and retries a
/// failed page after at most 2 s.
async fn run_policy<P: Policy>(
    ctx: NodeContext,
    parts: impl Fn() -> (P, Dispatch),
    store: Store,
    router: CurrentCluster,
) {
    let runner = loop {
        let (policy, dispatch) = parts();
        match PolicyRunner::open(policy, store.clone(), dispatch).await {
            Ok(runner) => break runner,
            Err(e) => {
                ctx.history.note(
                    ctx.now(),
                    format!("{} {} open failed: {e}", ctx.name, P::NAME),
                );
                ctx.clock.sleep(Duration::from_millis(500)).await;
            }
        }
    };
    let runner = runner.follow(
        Follow::default()
            .poll_interval(Duration::from_millis(200))
            .retry_max(Duration::from_secs(2)),
    );
    loop {
        if let Err(e) = runner.run_owned(&router, std::future::pending()).await {
            ctx.history
                .note(ctx.now(), format!("{} {} stopped: {e}", ctx.name, P::NAME));
            ctx.clock.sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Places orders with random customers until `place_until`, recording each command.
async fn placer(ctx: NodeContext, host: Host<Customer>, workload: PolicyWorkload, rng: SharedRng) {
    let incarnation = ctx.incarnation();
    for k in 0u64.. {
        ctx.clock
            .sleep(rng.duration_between(workload.think.0, workload.think.1))
            .await;
        if ctx.now() >= workload.place_until {
            return;
        }
        let customer = format!("cust-{}", below(&rng, workload.customers));
        let order = format!("o.{}.{incarnation}.{k}", ctx.name);
        let place = Place {
            order: order.clone(),
            amount: 1 + below(&rng, 30) as u64,
        };
        let op = ctx.invoke(OpKind::UserCommand {
            actor: customer.clone(),
            command: format!("{place:?}"),
        });
        let outcome = match host.send_keyed(&customer, &place, &order).await {
            Ok(done) => Outcome::Commanded {
                version: done.version,
                node: done.node_id.to_string(),
                events: done.events.iter().map(EventDigest::of).collect(),
            },
            Err(e) => command_failure(e, Outcome::Rejected),
        };
        ctx.complete(op, outcome);
    }
}

/// Every trigger has at most one effect (and every effect a stored trigger).
pub const ONCE: &str = "16 every trigger has at most one effect";
/// Every effect is stored under the key the policy derives from its trigger, and carries what
/// its trigger said.
pub const KEYED: &str = "16 every effect is stored under its trigger's key";
/// Once the faults stop, the policies catch up.
pub const LIVENESS: &str = "16 once faults stop, every trigger has its effect";

/// The policies' names (their checkpoints are checked by `projections` for forward moves only).
pub const POLICIES: [&str; 2] = [ChargeOnPlaced::NAME, ShipOnCharged::NAME];

/// Where an event of the flow is stored.
#[derive(Clone, Debug)]
struct At<'a> {
    actor: &'a str,
    version: u64,
    sequence: u64,
    index: usize,
    commit_id: &'a str,
    amount: u64,
}

impl std::fmt::Display for At<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} v{} (seq {}, commit {})",
            self.actor, self.version, self.sequence, self.commit_id
        )
    }
}

fn listed(ats: &[At<'_>]) -> String {
    ats.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

type Orders<'a> = BTreeMap<String, Vec<At<'a>>>;

/// The flow's events in the final streams, by order id.
struct Flow<'a> {
    placed: Orders<'a>,
    charged: Orders<'a>,
    shipped: Orders<'a>,
}

impl<'a> Flow<'a> {
    fn read(input: &'a CheckInput<'_>, workload: &PolicyWorkload) -> Self {
        let mut flow = Flow {
            placed: Orders::new(),
            charged: Orders::new(),
            shipped: Orders::new(),
        };
        for actor in workload.actors() {
            let Some((actor, _)) = input.streams.get_key_value(&actor) else {
                continue;
            };
            for (sequence, commit) in input.chain(actor) {
                for (index, event) in commit.events.iter().enumerate() {
                    let at = |amount| At {
                        actor,
                        version: event.version,
                        sequence,
                        index,
                        commit_id: &commit.commit_id,
                        amount,
                    };
                    if let Some(CustomerEvent::Placed { order, amount }) = typed(event) {
                        flow.placed.entry(order).or_default().push(at(amount));
                    } else if let Some(LedgerEvent::Charged { order, amount }) = typed(event) {
                        flow.charged.entry(order).or_default().push(at(amount));
                    } else if let Some(ShipmentEvent::Shipped { order }) = typed(event) {
                        flow.shipped.entry(order).or_default().push(at(0));
                    }
                }
            }
        }
        flow
    }
}

/// What a run's order flow did, from its final streams.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCounts {
    /// Orders placed.
    pub placed: u64,
    /// Placed orders of a declined amount.
    pub declined: u64,
    /// Orders charged.
    pub charged: u64,
    /// Orders shipped.
    pub shipped: u64,
}

/// Counts the order flow of a run.
pub fn counts(input: &CheckInput<'_>, workload: &PolicyWorkload) -> FlowCounts {
    let flow = Flow::read(input, workload);
    FlowCounts {
        placed: flow.placed.len() as u64,
        declined: flow
            .placed
            .values()
            .filter(|ats| declined(ats[0].amount))
            .count() as u64,
        charged: flow.charged.len() as u64,
        shipped: flow.shipped.len() as u64,
    }
}

/// The flow's checks of the final streams (see the module docs).
pub fn check(input: &CheckInput<'_>, workload: &PolicyWorkload) -> Vec<Violation> {
    let Flow {
        placed,
        charged,
        shipped,
    } = Flow::read(input, workload);
    let mut out = Vec::new();
    let mut once =
        |invariant: &'static str, detail: String| out.push(Violation { invariant, detail });
    for (order, ats) in &placed {
        if ats.len() > 1 {
            once(
                ONCE,
                format!("order {order} placed {} times: {}", ats.len(), listed(ats)),
            );
        }
    }
    // Each effect against its triggers: it must carry the key of one of them.
    let mut effects = |what: &str,
                       effects: &Orders<'_>,
                       triggers: &Orders<'_>,
                       key: &dyn Fn(&At<'_>) -> String| {
        for (order, ats) in effects {
            if ats.len() > 1 {
                once(
                    ONCE,
                    format!("order {order} {what} {} times: {}", ats.len(), listed(ats)),
                );
            }
            let Some(triggers) = triggers.get(order) else {
                once(
                    ONCE,
                    format!(
                        "order {order} {what} at {} with no trigger stored",
                        listed(ats)
                    ),
                );
                continue;
            };
            for at in ats {
                let Some(trigger) = triggers.iter().find(|t| key(t) == at.commit_id) else {
                    let keys: Vec<String> = triggers.iter().map(key).collect();
                    once(
                        KEYED,
                        format!(
                            "order {order} {what} at {at}, not under the key of a trigger ({keys:?}, triggers at {})",
                            listed(triggers)
                        ),
                    );
                    continue;
                };
                if what == "charged" && (declined(trigger.amount) || at.amount != trigger.amount) {
                    once(
                        KEYED,
                        format!(
                            "order {order} of amount {} (placed at {trigger}) charged {} at {at}",
                            trigger.amount, at.amount
                        ),
                    );
                }
            }
        }
    };
    effects("charged", &charged, &placed, &|t| {
        PolicyRunner::<ChargeOnPlaced, SimBroker, SimClock>::key(NAMESPACE, t.sequence, t.index, 0)
    });
    effects("shipped", &shipped, &charged, &|t| {
        PolicyRunner::<ShipOnCharged, SimBroker, SimClock>::key(NAMESPACE, t.sequence, t.index, 0)
    });
    // Liveness, for the triggers stored before a placement acknowledged a bound before the
    // end: the stream's order is storage order, so everything at or below that placement's
    // position was stored before the bound.
    let due_by = input.end.saturating_sub(input.liveness_bound);
    let acknowledged: std::collections::BTreeSet<&str> = input
        .ops
        .iter()
        .filter(|op| op.completed.is_some_and(|done| done <= due_by))
        .filter_map(|op| match (&op.kind, &op.outcome) {
            (OpKind::UserCommand { .. }, Outcome::Commanded { events, .. }) => Some(events),
            _ => None,
        })
        .flatten()
        .map(|event| event.id.as_str())
        .collect();
    let cutoff = placed
        .values()
        .flatten()
        .filter(|at| acknowledged.contains(at.commit_id))
        .map(|at| at.sequence)
        .max()
        .unwrap_or(0);
    let mut late = |detail: String| {
        out.push(Violation {
            invariant: LIVENESS,
            detail,
        })
    };
    for (order, ats) in &placed {
        let trigger = &ats[0];
        if trigger.sequence <= cutoff && !declined(trigger.amount) && !charged.contains_key(order) {
            late(format!(
                "order {order} placed at {trigger} (before seq {cutoff}, acknowledged by {}) was never charged",
                crate::history::format_time(due_by)
            ));
        }
    }
    for (order, ats) in &charged {
        if ats[0].sequence <= cutoff && !shipped.contains_key(order) {
            late(format!(
                "order {order} charged at {} (before seq {cutoff}, acknowledged by {}) was never shipped",
                ats[0],
                crate::history::format_time(due_by)
            ));
        }
    }
    out
}
