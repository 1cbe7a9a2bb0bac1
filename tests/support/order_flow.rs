//! The order-flow EventStorming board of `examples/order_flow_model.rs`, shared by the model
//! tests (included with `#[path]`).

use aether::model::{Aggregate, Model};

/// The board of `examples/order_flow_model.rs`.
pub fn order_flow() -> Model {
    Model::builder("order flow")
        .actor("customer", ["PlaceOrder"])
        .element(
            Aggregate::new("Order")
                .handles(["PlaceOrder", "MarkPaid"])
                .emits(["OrderPlaced", "OrderPaid"])
                .description("one customer order, from basket to paid"),
        )
        .aggregate("Payment", ["ChargeCard"], ["CardCharged", "ChargeDeclined"])
        .policy("charge on order", ["OrderPlaced"], ["ChargeCard"])
        .policy("mark paid when charged", ["CardCharged"], ["MarkPaid"])
        .read_model("orders list", ["OrderPlaced", "OrderPaid"])
        .external("card gateway", [], ["CardCharged"])
        .build()
        .expect("the order flow is a consistent board")
}
