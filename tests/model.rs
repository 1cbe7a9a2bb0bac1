//! The EventStorming model: its rules (each refused board names its exact problems), its Mermaid
//! export (snapshot) and the layout of its drawing (no overlapping notes, arrows that start and
//! end on their notes and never cross one), on the order-flow board and on generated boards.

use aether::model::layout::{Layout, Rect, Route, wrap};
use aether::model::{DomainEvent, ElementRef, ExternalSystem, InvalidModel, Kind, Model, Problem};
use proptest::prelude::*;

#[path = "support/order_flow.rs"]
mod order_flow;
use order_flow::order_flow;

/// The problems of a board that must be refused.
fn problems(built: Result<Model, InvalidModel>) -> Vec<Problem> {
    match built {
        Ok(model) => panic!("accepted an inconsistent board: {model:?}"),
        Err(invalid) => invalid.problems,
    }
}

fn element(kind: Kind, name: &str) -> ElementRef {
    ElementRef::new(kind, name)
}

#[test]
fn the_order_flow_board_is_consistent_and_keeps_declaration_order() {
    let model = order_flow();
    let names = |list: Vec<&String>| list.into_iter().cloned().collect::<Vec<_>>();
    assert_eq!(
        names(model.commands().iter().map(|c| &c.name).collect()),
        ["PlaceOrder", "MarkPaid", "ChargeCard"]
    );
    assert_eq!(
        names(model.events().iter().map(|e| &e.name).collect()),
        ["OrderPlaced", "OrderPaid", "CardCharged", "ChargeDeclined"]
    );
    assert_eq!(
        model.handler("ChargeCard").map(|a| a.name.as_str()),
        Some("Payment")
    );
    assert_eq!(model.handler("Refund"), None);
    assert_eq!(
        model.description(&element(Kind::Aggregate, "Order")),
        Some("one customer order, from basket to paid")
    );
    assert_eq!(model.elements().len(), 14);
    assert_eq!(model.links().len(), 15);
}

#[test]
fn a_declared_command_that_no_aggregate_handles_is_refused() {
    let built = Model::builder("b")
        .aggregate("Order", ["PlaceOrder"], ["OrderPlaced"])
        .command("Refund", "give the money back")
        .build();
    assert_eq!(
        problems(built),
        [Problem::UnhandledCommand {
            command: "Refund".into()
        }]
    );
}

#[test]
fn a_command_handled_by_two_aggregates_is_refused_naming_both() {
    let built = Model::builder("b")
        .aggregate("Order", ["PlaceOrder", "Cancel"], ["OrderPlaced"])
        .aggregate("Payment", ["Cancel"], ["PaymentCancelled"])
        .aggregate("Shipment", ["Cancel"], ["ShipmentCancelled"])
        .build();
    assert_eq!(
        problems(built),
        [Problem::CommandHandledByMany {
            command: "Cancel".into(),
            aggregates: vec!["Order".into(), "Payment".into(), "Shipment".into()],
        }]
    );
}

#[test]
fn a_command_issued_by_an_actor_policy_or_external_system_must_be_handled() {
    let built = Model::builder("b")
        .aggregate("Order", ["PlaceOrder"], ["OrderPlaced"])
        .actor("customer", ["PlaceOrder", "Refund"])
        .policy("ship on order", ["OrderPlaced"], ["Ship"])
        .external("warehouse", ["Restock"], [])
        .build();
    assert_eq!(
        problems(built),
        [
            Problem::UnknownCommand {
                element: element(Kind::Actor, "customer"),
                command: "Refund".into()
            },
            Problem::UnknownCommand {
                element: element(Kind::Policy, "ship on order"),
                command: "Ship".into()
            },
            Problem::UnknownCommand {
                element: element(Kind::ExternalSystem, "warehouse"),
                command: "Restock".into()
            },
        ]
    );
}

#[test]
fn a_policy_triggered_by_no_event_is_refused() {
    let built = Model::builder("b")
        .aggregate("Order", ["PlaceOrder"], ["OrderPlaced"])
        .policy("reorder", [], ["PlaceOrder"])
        .build();
    assert_eq!(
        problems(built),
        [Problem::PolicyWithoutTrigger {
            policy: "reorder".into()
        }]
    );
}

#[test]
fn policies_read_models_and_external_systems_use_only_emitted_events() {
    let built = Model::builder("b")
        .aggregate("Order", ["PlaceOrder"], ["OrderPlaced"])
        .policy("reorder", ["OrderPlaced", "OrderLost"], ["PlaceOrder"])
        .read_model("orders", ["OrderPlaced", "OrderShipped"])
        .element(ExternalSystem::new("mailer").receives(["OrderPlaced", "OrderMailed"]))
        .build();
    assert_eq!(
        problems(built),
        [
            Problem::UnknownEvent {
                element: element(Kind::Policy, "reorder"),
                event: "OrderLost".into()
            },
            Problem::UnknownEvent {
                element: element(Kind::ReadModel, "orders"),
                event: "OrderShipped".into()
            },
            Problem::UnknownEvent {
                element: element(Kind::ExternalSystem, "mailer"),
                event: "OrderMailed".into()
            },
        ]
    );
}

#[test]
fn an_event_declared_but_emitted_by_nothing_is_an_orphan() {
    let built = Model::builder("b")
        .aggregate("Order", ["PlaceOrder"], ["OrderPlaced"])
        .event("OrderLost", "the order went missing")
        .read_model("lost orders", ["OrderLost"])
        .build();
    assert_eq!(
        problems(built),
        [Problem::OrphanEvent {
            event: "OrderLost".into()
        }]
    );
}

#[test]
fn an_event_emitted_only_by_an_external_system_is_on_the_board() {
    let model = Model::builder("b")
        .aggregate("Payment", ["RecordPayment"], ["PaymentRecorded"])
        .external("bank", [], ["TransferReceived"])
        .policy("record transfers", ["TransferReceived"], ["RecordPayment"])
        .build()
        .expect("a consistent board");
    assert_eq!(model.events()[1].name, "TransferReceived");
}

#[test]
fn two_elements_of_one_kind_with_one_name_are_refused_once_per_name() {
    let built = Model::builder("b")
        .aggregate("Order", ["PlaceOrder"], ["OrderPlaced"])
        .actor("customer", ["PlaceOrder"])
        .actor("customer", [])
        .actor("customer", [])
        .read_model("orders", ["OrderPlaced"])
        .read_model("orders", ["OrderPlaced"])
        .command("PlaceOrder", "first")
        .command("PlaceOrder", "second")
        .build();
    assert_eq!(
        problems(built),
        [
            Problem::DuplicateName {
                kind: Kind::Actor,
                name: "customer".into()
            },
            Problem::DuplicateName {
                kind: Kind::ReadModel,
                name: "orders".into()
            },
            Problem::DuplicateName {
                kind: Kind::Command,
                name: "PlaceOrder".into()
            },
        ]
    );
}

#[test]
fn one_name_in_two_kinds_is_allowed() {
    let model = Model::builder("b")
        .aggregate("Order", ["Order"], ["Ordered"])
        .read_model("Order", ["Ordered"])
        .build()
        .expect("names are unique within a kind only");
    assert_eq!(model.elements().len(), 4);
}

#[test]
fn empty_and_blank_names_are_refused_wherever_they_appear() {
    let built = Model::builder("b")
        .aggregate("", ["PlaceOrder"], ["OrderPlaced"])
        .actor("customer", ["PlaceOrder", " "])
        .policy("  ", ["OrderPlaced"], ["PlaceOrder"])
        .read_model("orders", ["", "OrderPlaced"])
        .build();
    assert_eq!(
        problems(built),
        [
            Problem::EmptyName {
                kind: Kind::Aggregate,
                within: None
            },
            Problem::EmptyName {
                kind: Kind::Command,
                within: Some(element(Kind::Actor, "customer"))
            },
            Problem::EmptyName {
                kind: Kind::Policy,
                within: None
            },
            Problem::EmptyName {
                kind: Kind::Event,
                within: Some(element(Kind::ReadModel, "orders"))
            },
        ]
    );
}

#[test]
fn a_name_listed_twice_by_one_element_is_refused() {
    let built = Model::builder("b")
        .aggregate("Order", ["PlaceOrder", "PlaceOrder"], ["OrderPlaced"])
        .read_model("orders", ["OrderPlaced", "OrderPlaced", "OrderPlaced"])
        .build();
    assert_eq!(
        problems(built),
        [
            Problem::RepeatedName {
                element: element(Kind::Aggregate, "Order"),
                kind: Kind::Command,
                name: "PlaceOrder".into()
            },
            Problem::RepeatedName {
                element: element(Kind::ReadModel, "orders"),
                kind: Kind::Event,
                name: "OrderPlaced".into()
            },
        ]
    );
}

#[test]
fn every_problem_is_reported_at_once_rule_by_rule() {
    let invalid = Model::builder("broken")
        .read_model("orders", ["OrderShipped"])
        .policy("ship", [], ["Ship"])
        .aggregate("Order", ["PlaceOrder"], ["OrderPlaced"])
        .aggregate("Order", ["PlaceOrder"], [])
        .event("OrderLost", "never emitted")
        .build()
        .expect_err("four rules broken");
    assert_eq!(invalid.model, "broken");
    assert_eq!(
        invalid.problems,
        [
            Problem::DuplicateName {
                kind: Kind::Aggregate,
                name: "Order".into()
            },
            Problem::CommandHandledByMany {
                command: "PlaceOrder".into(),
                aggregates: vec!["Order".into(), "Order".into()],
            },
            Problem::UnknownCommand {
                element: element(Kind::Policy, "ship"),
                command: "Ship".into()
            },
            Problem::PolicyWithoutTrigger {
                policy: "ship".into()
            },
            Problem::UnknownEvent {
                element: element(Kind::ReadModel, "orders"),
                event: "OrderShipped".into()
            },
            Problem::OrphanEvent {
                event: "OrderLost".into()
            },
        ]
    );
    assert_eq!(
        invalid.to_string(),
        "model \"broken\" has 6 problem(s): more than one aggregate is called \"Order\"; \
         command \"PlaceOrder\" is handled by more than one aggregate: [\"Order\", \"Order\"]; \
         policy \"ship\" issues command \"Ship\", which no aggregate handles; \
         policy \"ship\" is triggered by no event; \
         read model \"orders\" uses event \"OrderShipped\", which nothing emits; \
         event \"OrderLost\" is emitted by no aggregate or external system"
    );
}

#[test]
fn declared_commands_and_events_keep_their_descriptions() {
    let model = Model::builder("b")
        .aggregate("Order", ["PlaceOrder"], ["OrderPlaced"])
        .command("PlaceOrder", "a customer orders")
        .element(DomainEvent::new("OrderPlaced").description("the order is taken"))
        .build()
        .expect("a consistent board");
    assert_eq!(
        model.commands()[0].description.as_deref(),
        Some("a customer orders")
    );
    assert_eq!(
        model.description(&element(Kind::Event, "OrderPlaced")),
        Some("the order is taken")
    );
}

#[test]
fn the_order_flow_board_exports_to_mermaid() {
    insta::assert_snapshot!("order_flow_mermaid", order_flow().to_mermaid());
}

#[test]
fn mermaid_node_ids_are_sanitised_and_unique_and_labels_escaped() {
    let model = Model::builder("say \"hi\"")
        .aggregate(
            "Order #1",
            ["Place Order", "Place_Order"],
            ["Order<Placed>"],
        )
        .build()
        .expect("a consistent board");
    let mermaid = model.to_mermaid();
    assert!(mermaid.starts_with("---\ntitle: \"say \\\"hi\\\"\"\n---\nflowchart LR\n"));
    for line in [
        "    agg_Order__1[\"Order #35;1\"]:::aggregate\n",
        "    cmd_Place_Order[\"Place Order\"]:::command\n",
        "    cmd_Place_Order_2[\"Place_Order\"]:::command\n",
        "    evt_Order_Placed_[\"Order#lt;Placed#gt;\"]:::event\n",
        "    cmd_Place_Order_2 --> agg_Order__1\n",
        "    classDef event fill:#ffb347,stroke:#c77800,color:#000\n",
    ] {
        assert!(mermaid.contains(line), "{line:?} missing from:\n{mermaid}");
    }
}

/// Checks what every drawing must keep, on `model`'s layout.
fn check_layout(model: &Model, layout: &Layout) -> Result<(), String> {
    let notes = &layout.notes;
    let elements = model.elements();
    if notes.len() != elements.len() {
        return Err(format!(
            "{} notes, {} elements",
            notes.len(),
            elements.len()
        ));
    }
    let links = model.links();
    if layout.arrows.len() != links.len() {
        return Err(format!(
            "{} arrows, {} links",
            layout.arrows.len(),
            links.len()
        ));
    }
    let bounds = Rect {
        x: 0,
        y: 0,
        width: layout.width,
        height: layout.height,
    };
    for (i, a) in notes.iter().enumerate() {
        let r = a.rect;
        if r.right() > bounds.right() || r.bottom() > bounds.bottom() {
            return Err(format!("{} leaves the drawing", a.element));
        }
        if let Some(b) = notes[i + 1..].iter().find(|b| b.rect.overlaps(&r)) {
            return Err(format!("{} overlaps {}", a.element, b.element));
        }
    }
    let mut ends = Vec::new();
    for (arrow, link) in layout.arrows.iter().zip(&links) {
        let (from, to) = (&notes[arrow.from], &notes[arrow.to]);
        if (&from.element, &to.element) != (&link.from, &link.to) {
            return Err(format!(
                "arrow {} → {} for {link:?}",
                from.element, to.element
            ));
        }
        let (start, end) = (arrow.route.start(), arrow.route.end());
        if !from.rect.on_border(start) || !to.rect.on_border(end) {
            return Err(format!("{link:?} does not start and end on its notes"));
        }
        ends.extend([start, end]);
        let pieces: Vec<&[_]> = match &arrow.route {
            Route::Curve(points) => vec![&points[..]],
            Route::Lines(points) => points.windows(2).collect(),
        };
        for piece in pieces {
            let (xs, ys) = (piece.iter().map(|p| p.x), piece.iter().map(|p| p.y));
            let (x, y) = (xs.clone().min().unwrap_or(0), ys.clone().min().unwrap_or(0));
            let hull = Rect {
                x,
                y,
                width: xs.max().unwrap_or(0) - x,
                height: ys.max().unwrap_or(0) - y,
            };
            if let Some(crossed) = notes.iter().find(|n| n.rect.overlaps(&hull)) {
                return Err(format!("{link:?} crosses {}", crossed.element));
            }
        }
    }
    ends.sort();
    if let Some(pair) = ends.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(format!("two arrows meet a note at one port {:?}", pair[0]));
    }
    Ok(())
}

#[test]
fn the_order_flow_drawing_has_no_overlapping_notes_and_arrows_end_on_their_notes() {
    let model = order_flow();
    let layout = model.layout();
    assert_eq!(check_layout(&model, &layout), Ok(()));
    let x = |kind: Kind| {
        let xs: Vec<u32> = (layout.notes.iter())
            .filter(|n| n.element.kind == kind)
            .map(|n| n.rect.x)
            .collect();
        assert!(xs.windows(2).all(|w| w[0] == w[1]), "{kind} in one column");
        xs[0]
    };
    let flow: Vec<u32> = Kind::ALL.iter().map(|k| x(*k)).collect();
    assert!(flow[..5].windows(2).all(|w| w[0] < w[1]), "{flow:?}");
    assert_eq!((flow[4], flow[5], flow[6]), (flow[4], flow[4], flow[4]));
    let lanes = (layout.arrows.iter())
        .filter(|a| matches!(a.route, Route::Lines(ref p) if p.len() == 6))
        .count();
    assert_eq!(lanes, 2, "the two policies reach back to their commands");
}

#[test]
fn long_names_wrap_within_their_note_at_word_and_case_boundaries() {
    assert_eq!(
        wrap("mark paid when charged", 15),
        ["mark paid when", "charged"]
    );
    assert_eq!(
        wrap("ChargeDeclinedNotificationSent", 15),
        ["ChargeDeclined", "Notification", "Sent"]
    );
    assert_eq!(
        wrap("Aaaaaaaaaaaaaaaaaaaa", 8),
        ["Aaaaaaaa", "aaaaaaaa", "aaaa"]
    );
    assert_eq!(wrap("", 8), [""]);
}

#[test]
fn the_page_draws_one_rect_per_element_one_path_per_arrow_and_loads_nothing() {
    let model = order_flow();
    let html = model.to_html();
    assert_eq!(html.matches("<rect ").count(), model.elements().len());
    assert_eq!(html.matches("<path class=\"arrow\"").count(), 15);
    for kind in Kind::ALL {
        assert!(
            html.contains(&format!("fill=\"{}\"", kind.colour())),
            "{kind}"
        );
    }
    for external in ["http:", "https:", "<script", "<link", "@import", "url(http"] {
        assert!(!html.contains(external), "the page holds {external:?}");
    }
    let hostile = Model::builder("<b>&")
        .aggregate("A<script>", ["C\"x\""], ["E'"])
        .build()
        .expect("a consistent board")
        .to_html();
    assert!(!hostile.contains("<script>") && !hostile.contains("<b>"));
    assert!(
        hostile.contains("A&lt;script&gt;") && hostile.contains("data-name=\"C&quot;x&quot;\"")
    );
}

fn strs(list: &[String]) -> Vec<&str> {
    list.iter().map(String::as_str).collect()
}

/// Boards that keep the rules: aggregates handling distinct commands and emitting distinct
/// events, everything else using them at random.
fn boards() -> impl Strategy<Value = Model> {
    let aggregates = prop::collection::vec((1..4usize, 0..4usize), 1..6);
    (aggregates, any::<[u64; 4]>()).prop_map(|(shape, seeds)| {
        let (mut commands, mut events) = (Vec::new(), Vec::new());
        let mut builder = Model::builder("generated");
        for (a, (handles, emits)) in shape.iter().enumerate() {
            let c: Vec<String> = (0..*handles).map(|i| format!("Do{a}x{i}")).collect();
            let e: Vec<String> = (0..*emits).map(|i| format!("Done{a}x{i}")).collect();
            builder = builder.aggregate(
                format!("Aggregate {a}"),
                c.iter().map(String::as_str),
                e.iter().map(String::as_str),
            );
            commands.extend(c);
            events.extend(e);
        }
        let pick = |list: &[String], seed: u64, salt: u64| -> Vec<String> {
            (list.iter().enumerate())
                .filter(|(i, _)| (seed >> ((*i as u64 * 7 + salt) % 61)) & 1 == 1)
                .map(|(_, n)| n.clone())
                .collect()
        };
        for k in 0..(seeds[0] % 4) {
            let issues = pick(&commands, seeds[1], k);
            builder = builder.actor(format!("actor {k}"), strs(&issues));
        }
        for k in 0..(seeds[1] % 5) {
            let (on, issues) = (pick(&events, seeds[2], k), pick(&commands, seeds[3], k));
            if let Some(first) = events.first().filter(|_| on.is_empty()) {
                builder = builder.policy(format!("policy {k}"), [first.as_str()], strs(&issues));
            } else if !on.is_empty() {
                builder = builder.policy(format!("policy {k}"), strs(&on), strs(&issues));
            }
        }
        for k in 0..(seeds[2] % 3) {
            builder = builder.read_model(format!("view {k}"), strs(&pick(&events, seeds[0], k)));
        }
        for k in 0..(seeds[3] % 3) {
            let external = ExternalSystem::new(format!("system {k}"))
                .issues(strs(&pick(&commands, seeds[0], k + 3)))
                .emits(strs(&pick(&events, seeds[1], k + 5)))
                .receives(strs(&pick(&events, seeds[2], k + 9)));
            builder = builder.element(external);
        }
        builder.build().expect("generated boards keep the rules")
    })
}

proptest! {
    #[test]
    fn no_generated_board_draws_overlapping_notes_or_arrows_through_notes(model in boards()) {
        let layout = model.layout();
        prop_assert_eq!(check_layout(&model, &layout), Ok(()));
        prop_assert_eq!(model.layout(), layout, "the layout is a pure function");
    }
}

#[test]
fn docs_model_md_shows_the_order_flow_mermaid_and_an_error_exactly_as_exported() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/model.md");
    let docs = std::fs::read_to_string(path).expect("docs/model.md");
    let mermaid = format!("```mermaid\n{}```\n", order_flow().to_mermaid());
    assert!(docs.contains(&mermaid), "docs/model.md lacks:\n{mermaid}");
    let error = Model::builder("broken")
        .policy("ship", [], ["Ship"])
        .build()
        .expect_err("two rules broken")
        .to_string();
    assert!(
        docs.contains(&format!("```text\n{error}\n```")),
        "docs/model.md lacks: {error}"
    );
}
