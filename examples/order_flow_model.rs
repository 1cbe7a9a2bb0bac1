//! An EventStorming board of an order flow, as data: built, checked, printed as Mermaid and,
//! given a path, drawn as a self-contained HTML page.
//!
//! Run with `cargo run --example order_flow_model [-- board.html]`.

use aether::model::{Aggregate, Model};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let model = Model::builder("order flow")
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
        .build()?;
    print!("{}", model.to_mermaid());
    if let Some(path) = std::env::args_os().nth(1) {
        std::fs::write(&path, model.to_html())?;
        eprintln!("wrote {}", std::path::Path::new(&path).display());
    }
    Ok(())
}
