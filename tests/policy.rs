//! Policies (process managers) on the memory broker: an order → payment → shipping flow over
//! three aggregates of one namespace, each step a policy reacting to the previous one's events.
//! Every order is charged and shipped exactly once, also when every event is delivered to the
//! policies again (their checkpoints reset).

#[path = "support/shop.rs"]
mod shop;

use std::time::Duration;

use aether::projection::{Dispatch, Follow, PolicyError, PolicyRunner, ProjectionError};
use aether::{
    ActorConfig, ActorHost, Aggregate, EventStore, MemoryBroker, Runtime, SingleNode, StoreConfig,
};
use shop::{ChargeOnOrder, MarkShipped, Order, OrderCommand, Payment, ShipOnCharge, Shipment};

const ORDERS: u64 = 300;

struct Shop {
    store: EventStore<MemoryBroker>,
    orders: ActorHost<Order, MemoryBroker>,
    payments: ActorHost<Payment, MemoryBroker>,
    shipments: ActorHost<Shipment, MemoryBroker>,
}

impl Shop {
    async fn open() -> Self {
        let rt = Runtime::system(MemoryBroker::new());
        let store = EventStore::open(rt.clone(), StoreConfig::new("shop"))
            .await
            .unwrap();
        let host = || SingleNode(rt.node_id().clone());
        Self {
            orders: ActorHost::new(store.clone(), host(), ActorConfig::new()),
            payments: ActorHost::new(store.clone(), host(), ActorConfig::new()),
            shipments: ActorHost::new(store.clone(), host(), ActorConfig::new()),
            store,
        }
    }

    fn dispatch(&self) -> Dispatch {
        Dispatch::new()
            .route(self.orders.clone())
            .route(self.payments.clone())
            .route(self.shipments.clone())
    }

    async fn versions(&self, kind: &str) -> Vec<u64> {
        let mut out = Vec::new();
        for n in 0..ORDERS {
            out.push(
                self.store
                    .latest_version(&format!("{kind}-{n}"))
                    .await
                    .unwrap(),
            );
        }
        out
    }

    /// The actors of `kind` whose stream does not hold exactly `events` events.
    async fn not(&self, kind: &str, events: u64) -> Vec<(String, u64)> {
        let versions = self.versions(kind).await;
        (0..ORDERS)
            .zip(versions)
            .filter(|(_, v)| *v != events)
            .map(|(n, v)| (format!("{kind}-{n}"), v))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_order_is_charged_and_shipped_exactly_once_even_when_events_are_redelivered() {
    let shop = Shop::open().await;
    for n in 0..ORDERS {
        shop.orders
            .execute(
                &format!("order-{n}"),
                &OrderCommand::Place { amount: 10 + n },
            )
            .await
            .unwrap();
    }
    let follow = Follow::default().poll_interval(Duration::from_millis(5));
    let charge = PolicyRunner::open(ChargeOnOrder, shop.store.clone(), shop.dispatch())
        .await
        .unwrap()
        .follow(follow);
    let ship = PolicyRunner::open(ShipOnCharge, shop.store.clone(), shop.dispatch())
        .await
        .unwrap()
        .follow(follow);
    let mark = PolicyRunner::open(MarkShipped, shop.store.clone(), shop.dispatch())
        .await
        .unwrap()
        .follow(follow);
    // All three live at once: each follows what the others cause.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    let run = async {
        tokio::join!(
            charge.run(until(stopped.clone())),
            ship.run(until(stopped.clone())),
            mark.run(until(stopped.clone())),
        )
    };
    let watch = async {
        let finished = async {
            while !shop.versions("order").await.iter().all(|v| *v == 2) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let done = tokio::time::timeout(Duration::from_secs(60), finished).await;
        stop.send(true).unwrap();
        assert!(done.is_ok(), "the flow did not finish");
    };
    let ((a, b, c), ()) = tokio::join!(run, watch);
    let handled = [a.unwrap(), b.unwrap(), c.unwrap()];
    assert!(handled.iter().all(|h| *h > 0), "{handled:?}");
    assert_eq!(shop.not("payment", 1).await, [], "each order charged once");
    assert_eq!(shop.not("shipment", 1).await, [], "each order shipped once");

    // Every event delivered again, to every policy: their keys are those of the first
    // delivery, so nothing runs twice.
    for runner in [charge.projector(), ship.projector(), mark.projector()] {
        runner.reset::<PolicyError>().await.unwrap();
    }
    charge.catch_up().await.unwrap();
    ship.catch_up().await.unwrap();
    mark.catch_up().await.unwrap();
    assert_eq!(
        shop.not("payment", 1).await,
        [],
        "redelivery charged nobody twice"
    );
    assert_eq!(
        shop.not("shipment", 1).await,
        [],
        "redelivery shipped nothing twice"
    );
    assert_eq!(shop.not("order", 2).await, []);
    let charged = shop
        .payments
        .state("payment-7")
        .await
        .unwrap()
        .state
        .charged;
    assert_eq!(charged, 17);
}

/// The flow's EventStorming board is derived from the running code: aggregate names, command
/// and event variants, policies' triggers and commands — and it is a consistent board.
#[test]
fn the_board_is_derived_from_the_aggregates_and_policies_that_run() {
    let board = shop::board().expect("a consistent board");
    let aggregates: Vec<_> = board
        .aggregates()
        .iter()
        .map(|a| (a.name.as_str(), a.handles.clone(), a.emits.clone()))
        .collect();
    assert_eq!(
        aggregates[0],
        (
            "order",
            vec!["Place".to_owned(), "MarkShipped".to_owned()],
            vec!["OrderPlaced".to_owned(), "OrderShipped".to_owned()]
        )
    );
    assert_eq!(board.aggregates().len(), 3);
    assert_eq!(board.policies().len(), 3);
    let mermaid = board.to_mermaid();
    for name in ["Charge", "Charged", "Ship", "Shipped", "charge-on-order"] {
        assert!(mermaid.contains(name), "{name} on the board");
    }
    // A policy issuing a command no aggregate handles is caught.
    let wrong = aether::model::Model::builder("wrong")
        .aggregate_of::<Order>()
        .element(
            aether::model::Policy::new("p")
                .triggered_by(["OrderPlaced"])
                .issues(["Refund"]),
        )
        .build();
    assert!(wrong.is_err());
}

#[tokio::test]
async fn a_reaction_with_no_route_fails_the_page_and_moves_nothing() {
    let shop = Shop::open().await;
    shop.orders
        .execute("order-0", &OrderCommand::Place { amount: 1 })
        .await
        .unwrap();
    // No host for payments: the page fails, the checkpoint stays.
    let runner = PolicyRunner::open(
        ChargeOnOrder,
        shop.store.clone(),
        Dispatch::new().route(shop.orders.clone()),
    )
    .await
    .unwrap();
    match runner.catch_up().await {
        Err(ProjectionError::Handler(PolicyError::NoRoute(aggregate))) => {
            assert_eq!(aggregate, Payment::NAME)
        }
        other => panic!("expected NoRoute, got {other:?}"),
    }
    let (position, _) = runner
        .projector()
        .checkpoint::<PolicyError>()
        .await
        .unwrap();
    assert_eq!(position, 1, "the checkpoint did not move");
    assert_eq!(shop.store.latest_version("payment-0").await.unwrap(), 0);
}

/// Ships every order through one hub and charges it on its own payment: one queue of 200
/// reactions to a single actor next to 200 queues of one.
struct HubAndCharge;

impl aether::projection::Policy for HubAndCharge {
    const NAME: &'static str = "hub-and-charge";

    fn react(&self, event: &aether::Event) -> Vec<aether::projection::Reaction> {
        let Ok(shop::OrderEvent::OrderPlaced { amount }) =
            <shop::OrderEvent as aether::DomainEvent>::decode(&event.event_type, &event.data)
        else {
            return Vec::new();
        };
        let order = event.actor_id.clone();
        vec![
            aether::projection::Reaction::send::<Payment>(
                format!("payment-{}", shop::number(&order)),
                &shop::PaymentCommand::Charge {
                    order: order.clone(),
                    amount,
                },
            ),
            aether::projection::Reaction::send::<Shipment>(
                "shipment-hub",
                &shop::ShipmentCommand::Ship { order },
            ),
        ]
    }
}

/// Reactions to different actors go out concurrently, but those to one actor keep the order
/// of their events: the hub's parcels are in placement order, at every concurrency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reactions_to_one_actor_keep_event_order_at_any_concurrency() {
    for concurrency in [1, 4, 64] {
        let shop = Shop::open().await;
        let orders = 200;
        for n in 0..orders {
            shop.orders
                .execute(&format!("order-{n}"), &OrderCommand::Place { amount: n })
                .await
                .unwrap();
        }
        let runner = PolicyRunner::open(HubAndCharge, shop.store.clone(), shop.dispatch())
            .await
            .unwrap()
            .concurrency(concurrency);
        runner.catch_up().await.unwrap();
        let shipped: Vec<String> = shop
            .store
            .events("shipment-hub", 1)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.data["order"].as_str().unwrap().to_owned())
            .collect();
        let placed: Vec<String> = (0..orders).map(|n| format!("order-{n}")).collect();
        assert_eq!(shipped, placed, "concurrency {concurrency}");
        if concurrency == 1 {
            // One at a time is page order across actors too: each order's charge, then its
            // parcel.
            let mut sent = Vec::new();
            let mut position = 1;
            loop {
                let page = shop.store.read_all(position, 256).await.unwrap();
                if page.commits.is_empty() {
                    break;
                }
                position = page.next_position;
                sent.extend(page.commits.into_iter().map(|c| c.actor_id));
            }
            let expected: Vec<String> = (0..orders)
                .flat_map(|n| [format!("payment-{n}"), "shipment-hub".to_owned()])
                .collect();
            assert_eq!(sent[orders as usize..], expected[..]);
        }
        for n in 0..orders {
            let version = shop
                .store
                .latest_version(&format!("payment-{n}"))
                .await
                .unwrap();
            assert_eq!(version, 1, "payment-{n} at concurrency {concurrency}");
        }
    }
}

/// Ownership that can be moved away by the test.
struct Movable {
    me: aether::NodeId,
    mine: std::sync::atomic::AtomicBool,
}

impl aether::actor::Router for Movable {
    fn owner_of(&self, _: &str) -> Option<aether::NodeId> {
        if self.mine.load(std::sync::atomic::Ordering::SeqCst) {
            Some(self.me.clone())
        } else {
            Some(aether::NodeId::new("elsewhere").unwrap())
        }
    }
}

/// On a cluster a step in progress is abandoned once the node no longer owns the projection:
/// a page whose handler would run for ever (a policy's commands to an unreachable actor) does
/// not keep a deposed owner busy, and the checkpoint stays for the new owner.
#[tokio::test]
async fn a_step_is_abandoned_when_ownership_moves_away_mid_step() {
    use aether::projection::{Follow, Projector};
    let shop = Shop::open().await;
    shop.orders
        .execute("order-0", &OrderCommand::Place { amount: 1 })
        .await
        .unwrap();
    let router = std::sync::Arc::new(Movable {
        me: shop.store.runtime().node_id().clone(),
        mine: std::sync::atomic::AtomicBool::new(true),
    });
    let projector = Projector::open::<String>(shop.store.clone(), "stuck")
        .await
        .unwrap()
        .follow(Follow::default().poll_interval(Duration::from_millis(10)));
    let (started, mut handler_started) = tokio::sync::mpsc::unbounded_channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = projector.run_owned(
        router.as_ref(),
        |_page| {
            let _ = started.send(());
            std::future::pending::<Result<(), String>>()
        },
        async {
            let _ = stopped.await;
        },
    );
    let drive = async {
        handler_started.recv().await.unwrap();
        router
            .mine
            .store(false, std::sync::atomic::Ordering::SeqCst);
        // Standing by now: nothing else is handed over, and the run stops when asked.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            handler_started.try_recv().is_err(),
            "no step while not owning"
        );
        stop.send(()).unwrap();
    };
    let (handled, ()) =
        tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(run, drive) })
            .await
            .expect("the stuck step was abandoned when ownership moved");
    assert_eq!(handled.unwrap(), 0);
    let (position, _) = projector.checkpoint::<String>().await.unwrap();
    assert_eq!(position, 1, "the checkpoint did not move");
}
