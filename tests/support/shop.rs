//! An order → payment → shipping flow: three aggregates in one namespace and the policies that
//! connect them. Shared by `tests/policy.rs` and `examples/order_flow.rs` (included with
//! `#[path]`).
//!
//! Actor ids are per namespace, whatever the aggregate type: orders are `order-N`, their
//! payments `payment-N`, their shipments `shipment-N`.

#![allow(dead_code)]

use aether::actor::CommandContext;
use aether::projection::{Policy, Reaction};
use aether::{Aggregate, DomainEvent, Event};
use serde::{Deserialize, Serialize};

/// The number in an actor id `<kind>-<n>`.
pub fn number(actor: &str) -> &str {
    actor.rsplit_once('-').map_or(actor, |(_, n)| n)
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Order {
    pub amount: Option<u64>,
    pub shipped: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum OrderCommand {
    Place { amount: u64 },
    MarkShipped,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub enum OrderEvent {
    OrderPlaced { amount: u64 },
    OrderShipped,
}

impl DomainEvent for OrderEvent {}

impl Aggregate for Order {
    const NAME: &'static str = "order";
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Rejection = String;

    fn handle(&self, _: &CommandContext<'_>, c: &OrderCommand) -> Result<Vec<OrderEvent>, String> {
        match (c, self.amount) {
            (OrderCommand::Place { .. }, Some(_)) => Err("already placed".into()),
            (OrderCommand::Place { amount }, None) => {
                Ok(vec![OrderEvent::OrderPlaced { amount: *amount }])
            }
            (OrderCommand::MarkShipped, None) => Err("not placed".into()),
            (OrderCommand::MarkShipped, Some(_)) if self.shipped => Err("already shipped".into()),
            (OrderCommand::MarkShipped, Some(_)) => Ok(vec![OrderEvent::OrderShipped]),
        }
    }

    fn apply(&mut self, event: &OrderEvent) {
        match event {
            OrderEvent::OrderPlaced { amount } => self.amount = Some(*amount),
            OrderEvent::OrderShipped => self.shipped = true,
        }
    }
}

/// A payment. It charges whatever it is asked to, as a card gateway does: that an order is
/// charged once is the policy's keys' doing, not this aggregate's.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Payment {
    pub charged: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum PaymentCommand {
    Charge { order: String, amount: u64 },
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub enum PaymentEvent {
    Charged { order: String, amount: u64 },
}

impl DomainEvent for PaymentEvent {}

impl Aggregate for Payment {
    const NAME: &'static str = "payment";
    type Command = PaymentCommand;
    type Event = PaymentEvent;
    type Rejection = String;

    fn handle(
        &self,
        _: &CommandContext<'_>,
        PaymentCommand::Charge { order, amount }: &PaymentCommand,
    ) -> Result<Vec<PaymentEvent>, String> {
        Ok(vec![PaymentEvent::Charged {
            order: order.clone(),
            amount: *amount,
        }])
    }

    fn apply(&mut self, PaymentEvent::Charged { amount, .. }: &PaymentEvent) {
        self.charged += amount;
    }
}

/// A shipment: ships whenever asked (a parcel per command).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Shipment {
    pub parcels: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum ShipmentCommand {
    Ship { order: String },
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub enum ShipmentEvent {
    Shipped { order: String },
}

impl DomainEvent for ShipmentEvent {}

impl Aggregate for Shipment {
    const NAME: &'static str = "shipment";
    type Command = ShipmentCommand;
    type Event = ShipmentEvent;
    type Rejection = String;

    fn handle(
        &self,
        _: &CommandContext<'_>,
        ShipmentCommand::Ship { order }: &ShipmentCommand,
    ) -> Result<Vec<ShipmentEvent>, String> {
        Ok(vec![ShipmentEvent::Shipped {
            order: order.clone(),
        }])
    }

    fn apply(&mut self, _: &ShipmentEvent) {
        self.parcels += 1;
    }
}

/// The board of the running flow, derived from the aggregates and policies themselves (plus the
/// customer and the read model, which the code does not name).
pub fn board() -> Result<aether::model::Model, aether::model::InvalidModel> {
    aether::model::Model::builder("order → payment → shipping")
        .actor("customer", ["Place"])
        .aggregate_of::<Order>()
        .aggregate_of::<Payment>()
        .aggregate_of::<Shipment>()
        .policy_of::<ChargeOnOrder>()
        .policy_of::<ShipOnCharge>()
        .policy_of::<MarkShipped>()
        .read_model("orders list", ["OrderPlaced", "OrderShipped"])
        .build()
}

/// Policy: an order placed is charged.
pub struct ChargeOnOrder;

impl Policy for ChargeOnOrder {
    const NAME: &'static str = "charge-on-order";
    const TRIGGERED_BY: &'static [&'static str] = &["OrderPlaced"];
    const ISSUES: &'static [&'static str] = &["Charge"];

    fn react(&self, event: &Event) -> Vec<Reaction> {
        let Ok(OrderEvent::OrderPlaced { amount }) =
            OrderEvent::decode(&event.event_type, &event.data)
        else {
            return Vec::new();
        };
        let n = number(&event.actor_id);
        vec![Reaction::send::<Payment>(
            format!("payment-{n}"),
            &PaymentCommand::Charge {
                order: event.actor_id.clone(),
                amount,
            },
        )]
    }
}

/// Policy: a charged payment is shipped.
pub struct ShipOnCharge;

impl Policy for ShipOnCharge {
    const NAME: &'static str = "ship-on-charge";
    const TRIGGERED_BY: &'static [&'static str] = &["Charged"];
    const ISSUES: &'static [&'static str] = &["Ship"];

    fn react(&self, event: &Event) -> Vec<Reaction> {
        let Ok(PaymentEvent::Charged { order, .. }) =
            PaymentEvent::decode(&event.event_type, &event.data)
        else {
            return Vec::new();
        };
        vec![Reaction::send::<Shipment>(
            format!("shipment-{}", number(&order)),
            &ShipmentCommand::Ship { order },
        )]
    }
}

/// Policy: a shipment shipped marks its order shipped.
pub struct MarkShipped;

impl Policy for MarkShipped {
    const NAME: &'static str = "mark-shipped";
    const TRIGGERED_BY: &'static [&'static str] = &["Shipped"];
    const ISSUES: &'static [&'static str] = &["MarkShipped"];

    fn react(&self, event: &Event) -> Vec<Reaction> {
        let Ok(ShipmentEvent::Shipped { order }) =
            ShipmentEvent::decode(&event.event_type, &event.data)
        else {
            return Vec::new();
        };
        vec![Reaction::send::<Order>(order, &OrderCommand::MarkShipped)]
    }
}
