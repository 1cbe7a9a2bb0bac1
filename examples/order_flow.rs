//! An order → payment → shipping flow on the embedded memory broker: three aggregates in one
//! namespace, connected by three policies (process managers), each sending its commands under
//! a key derived from the event that triggered it. Every event is then delivered to the
//! policies a second time (their checkpoints reset): nothing is charged or shipped twice.
//! Last, the flow's EventStorming board, derived from the code, as Mermaid (and as an HTML
//! page when a path is given).
//!
//! Run with `cargo run --example order_flow [-- board.html]`.

#[path = "../tests/support/shop.rs"]
mod shop;

use aether::projection::{Dispatch, PolicyError, PolicyRunner};
use aether::{ActorConfig, ActorHost, EventStore, MemoryBroker, Runtime, SingleNode, StoreConfig};
use shop::{ChargeOnOrder, MarkShipped, OrderCommand, ShipOnCharge};

const ORDERS: u64 = 100;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rt = Runtime::system(MemoryBroker::new());
    let store = EventStore::open(rt.clone(), StoreConfig::new("shop")).await?;
    let here = || SingleNode(rt.node_id().clone());
    let orders = ActorHost::<shop::Order, _>::new(store.clone(), here(), ActorConfig::new());
    let payments = ActorHost::<shop::Payment, _>::new(store.clone(), here(), ActorConfig::new());
    let shipments = ActorHost::<shop::Shipment, _>::new(store.clone(), here(), ActorConfig::new());
    let dispatch = || {
        Dispatch::new()
            .route(orders.clone())
            .route(payments.clone())
            .route(shipments.clone())
    };
    for n in 0..ORDERS {
        orders
            .execute(
                &format!("order-{n}"),
                &OrderCommand::Place { amount: 100 + n },
            )
            .await?;
    }
    let charge = PolicyRunner::open(ChargeOnOrder, store.clone(), dispatch()).await?;
    let ship = PolicyRunner::open(ShipOnCharge, store.clone(), dispatch()).await?;
    let mark = PolicyRunner::open(MarkShipped, store.clone(), dispatch()).await?;
    // Each policy catches up in turn; each one's commands are the next one's events.
    let handled = charge.catch_up().await? + ship.catch_up().await? + mark.catch_up().await?;
    let totals = |what: &'static str| {
        let store = store.clone();
        async move {
            let mut total = 0;
            for n in 0..ORDERS {
                total += store.latest_version(&format!("{what}-{n}")).await?;
            }
            Ok::<u64, aether::ReadError>(total)
        }
    };
    println!(
        "{ORDERS} orders placed; the policies handled {handled} records: {} charges, {} shipments, {} orders marked shipped",
        totals("payment").await?,
        totals("shipment").await?,
        totals("order").await? - ORDERS
    );
    for runner in [charge.projector(), ship.projector(), mark.projector()] {
        runner.reset::<PolicyError>().await?;
    }
    let again = charge.catch_up().await? + ship.catch_up().await? + mark.catch_up().await?;
    println!(
        "every event delivered again ({again} records): still {} charges, {} shipments — each command's key was recognised",
        totals("payment").await?,
        totals("shipment").await?
    );
    let board = shop::board()?;
    print!("{}", board.to_mermaid());
    if let Some(path) = std::env::args_os().nth(1) {
        std::fs::write(&path, board.to_html())?;
        eprintln!("wrote {}", std::path::Path::new(&path).display());
    }
    Ok(())
}
