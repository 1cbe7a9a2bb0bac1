//! An EventStorming board as data: who issues which commands, which aggregate handles them and
//! what it emits, which policies react to which events, what the read models read, and the
//! external systems around it — checked for consistency, and drawn as Mermaid or as a
//! self-contained HTML page.
//!
//! The vocabulary (one type per kind of sticky note, [`Kind`] names the kinds):
//!
//! | kind | type | arrows |
//! |---|---|---|
//! | actor (a person or role) | [`Actor`] | actor → command it issues |
//! | command | [`Command`] | command → the aggregate that handles it |
//! | aggregate | [`Aggregate`] | aggregate → event it emits |
//! | domain event | [`DomainEvent`] | event → policy it triggers, read model it feeds, external system it reaches |
//! | policy ("whenever X, do Y") | [`Policy`] | policy → command it issues |
//! | read model (a projection) | [`ReadModel`] | — |
//! | external system | [`ExternalSystem`] | external system → command it issues, → event it emits |
//!
//! Commands and events are named by the elements that use them; a command becomes part of the
//! board when an aggregate handles it, an event when an aggregate or external system emits it.
//! [`ModelBuilder::command`] and [`ModelBuilder::event`] declare one on its own (to give it a
//! description, or to put it on the board before anything handles or emits it — which
//! [`ModelBuilder::build`] then reports).
//!
//! ```
//! use aether::model::Model;
//!
//! # fn main() -> Result<(), aether::model::InvalidModel> {
//! let model = Model::builder("order flow")
//!     .actor("customer", ["PlaceOrder"])
//!     .aggregate("Order", ["PlaceOrder", "MarkPaid"], ["OrderPlaced", "OrderPaid"])
//!     .aggregate("Payment", ["ChargeCard"], ["CardCharged", "ChargeDeclined"])
//!     .policy("charge on order", ["OrderPlaced"], ["ChargeCard"])
//!     .policy("mark paid when charged", ["CardCharged"], ["MarkPaid"])
//!     .read_model("orders list", ["OrderPlaced", "OrderPaid"])
//!     .external("card gateway", [], ["CardCharged"])
//!     .build()?;
//! assert_eq!(model.commands().len(), 3);
//! assert!(model.to_mermaid().starts_with("---\ntitle: \"order flow\"\n---\nflowchart LR\n"));
//! # Ok(())
//! # }
//! ```
//!
//! Validation ([`ModelBuilder::build`]) reports every problem at once, as an [`InvalidModel`]
//! listing [`Problem`]s; a [`Model`] that exists is consistent. Exports are byte-for-byte
//! stable: they depend only on the board, in the order it was declared.

mod builder;
mod derive;
mod element;
mod html;
pub mod layout;
mod mermaid;
mod validate;

pub use builder::ModelBuilder;
pub use derive::variant_names;
pub use element::{
    Actor, Aggregate, Command, DomainEvent, Element, ElementRef, ExternalSystem, Kind, Link,
    Policy, ReadModel,
};
pub use validate::{InvalidModel, Problem};

/// A consistent EventStorming board, made by [`Model::builder`]. Every command on it is
/// handled by exactly one aggregate, every event is emitted by something, and every name an
/// element uses is on the board.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Model {
    name: String,
    actors: Vec<Actor>,
    commands: Vec<Command>,
    aggregates: Vec<Aggregate>,
    events: Vec<DomainEvent>,
    policies: Vec<Policy>,
    read_models: Vec<ReadModel>,
    externals: Vec<ExternalSystem>,
}

impl Model {
    /// Starts a board called `name` (its title in the exports).
    pub fn builder(name: impl Into<String>) -> ModelBuilder {
        ModelBuilder::new(name)
    }

    /// The board's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The actors, in the order they were declared.
    pub fn actors(&self) -> &[Actor] {
        &self.actors
    }

    /// Every command on the board, in order of first appearance (a declaration or an
    /// aggregate's `handles`).
    pub fn commands(&self) -> &[Command] {
        &self.commands
    }

    /// The aggregates, in the order they were declared.
    pub fn aggregates(&self) -> &[Aggregate] {
        &self.aggregates
    }

    /// Every domain event on the board, in order of first appearance (a declaration, or an
    /// aggregate's or external system's `emits`).
    pub fn events(&self) -> &[DomainEvent] {
        &self.events
    }

    /// The policies, in the order they were declared.
    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }

    /// The read models, in the order they were declared.
    pub fn read_models(&self) -> &[ReadModel] {
        &self.read_models
    }

    /// The external systems, in the order they were declared.
    pub fn externals(&self) -> &[ExternalSystem] {
        &self.externals
    }

    /// The aggregate that handles `command`, if it is on the board.
    pub fn handler(&self, command: &str) -> Option<&Aggregate> {
        self.aggregates
            .iter()
            .find(|aggregate| aggregate.handles.iter().any(|c| c == command))
    }

    /// Every element with its kind and description, kind by kind in flow order
    /// ([`Kind::ALL`]), each kind in board order.
    fn named(&self) -> impl Iterator<Item = (Kind, &String, &Option<String>)> {
        let actors = self
            .actors
            .iter()
            .map(|e| (Kind::Actor, &e.name, &e.description));
        let commands = (self.commands.iter()).map(|e| (Kind::Command, &e.name, &e.description));
        let aggregates =
            (self.aggregates.iter()).map(|e| (Kind::Aggregate, &e.name, &e.description));
        let events = self
            .events
            .iter()
            .map(|e| (Kind::Event, &e.name, &e.description));
        let policies = (self.policies.iter()).map(|e| (Kind::Policy, &e.name, &e.description));
        let read_models =
            (self.read_models.iter()).map(|e| (Kind::ReadModel, &e.name, &e.description));
        let externals =
            (self.externals.iter()).map(|e| (Kind::ExternalSystem, &e.name, &e.description));
        actors
            .chain(commands)
            .chain(aggregates)
            .chain(events)
            .chain(policies)
            .chain(read_models)
            .chain(externals)
    }

    /// Every element, kind by kind in flow order ([`Kind::ALL`]), each kind in board order.
    pub fn elements(&self) -> Vec<ElementRef> {
        self.named()
            .map(|(kind, name, _)| ElementRef::new(kind, name))
            .collect()
    }

    /// The description of an element, if it is on the board and has one.
    pub fn description(&self, element: &ElementRef) -> Option<&str> {
        self.named()
            .find(|(kind, name, _)| *kind == element.kind && **name == element.name)
            .and_then(|(_, _, description)| description.as_deref())
    }

    /// Every arrow on the board, in a fixed order: actor → command (by actor), command →
    /// aggregate and aggregate → event (by aggregate), event → policy and policy → command (by
    /// policy), event → read model (by read model), external system → command, external
    /// system → event and event → external system (by external system).
    pub fn links(&self) -> Vec<Link> {
        let mut links = Vec::new();
        let mut arrows = |from: (Kind, &String), to: Kind, names: &[String], inwards: bool| {
            for name in names {
                let (me, other) = (ElementRef::new(from.0, from.1), ElementRef::new(to, name));
                let (from, to) = if inwards { (other, me) } else { (me, other) };
                links.push(Link { from, to });
            }
        };
        for e in &self.actors {
            arrows((Kind::Actor, &e.name), Kind::Command, &e.issues, false);
        }
        for e in &self.aggregates {
            arrows((Kind::Aggregate, &e.name), Kind::Command, &e.handles, true);
            arrows((Kind::Aggregate, &e.name), Kind::Event, &e.emits, false);
        }
        for e in &self.policies {
            arrows((Kind::Policy, &e.name), Kind::Event, &e.triggered_by, true);
            arrows((Kind::Policy, &e.name), Kind::Command, &e.issues, false);
        }
        for e in &self.read_models {
            arrows((Kind::ReadModel, &e.name), Kind::Event, &e.reads, true);
        }
        for e in &self.externals {
            let me = (Kind::ExternalSystem, &e.name);
            arrows(me, Kind::Command, &e.issues, false);
            arrows(me, Kind::Event, &e.emits, false);
            arrows(me, Kind::Event, &e.receives, true);
        }
        links
    }

    /// The board as a Mermaid `flowchart LR`: one node per element (ids made of the kind and
    /// the name's ASCII letters and digits, labels quoted), one `-->` per [`link`](Self::links),
    /// and a `classDef` per kind in its EventStorming colour ([`Kind::colour`]).
    pub fn to_mermaid(&self) -> String {
        mermaid::render(self)
    }

    /// Where each sticky note and arrow of the HTML drawing goes: a pure function of the
    /// board ([`layout::Layout`]).
    pub fn layout(&self) -> layout::Layout {
        layout::layout(self)
    }

    /// The board as a self-contained HTML page: an inline SVG of the [`layout`](Self::layout)
    /// (one `<rect>` sticky note per element, arrows with arrowheads), a legend, no scripts and
    /// nothing loaded from the network.
    pub fn to_html(&self) -> String {
        html::render(self, &self.layout())
    }
}
