//! [`ModelBuilder`]: a board declared element by element, checked once by `build`.

use super::Model;
use super::element::{
    Actor, Aggregate, Command, DomainEvent, Element, ExternalSystem, Policy, ReadModel,
};
use super::validate::{self, InvalidModel};

/// Declares a board, element by element; [`build`](Self::build) checks it. Made by
/// [`Model::builder`].
///
/// The short methods take the names an element's arrows reach; [`element`](Self::element) takes a
/// whole element (with a description):
///
/// ```
/// use aether::model::{Aggregate, Model};
///
/// let model = Model::builder("tiny")
///     .element(Aggregate::new("Order").handles(["PlaceOrder"]).emits(["OrderPlaced"])
///         .description("one customer order"))
///     .build()
///     .expect("a consistent board");
/// assert_eq!(model.aggregates()[0].description.as_deref(), Some("one customer order"));
/// ```
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct ModelBuilder {
    name: String,
    elements: Vec<Element>,
}

impl ModelBuilder {
    pub(super) fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            elements: Vec::new(),
        }
    }

    /// Adds an element.
    pub fn element(mut self, element: impl Into<Element>) -> Self {
        self.elements.push(element.into());
        self
    }

    /// Adds an actor who issues `issues`.
    pub fn actor<'a>(
        self,
        name: impl Into<String>,
        issues: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        self.element(Actor::new(name).issues(issues))
    }

    /// Adds an aggregate that handles the commands `handles` and emits the events `emits`.
    pub fn aggregate<'a, 'b>(
        self,
        name: impl Into<String>,
        handles: impl IntoIterator<Item = &'a str>,
        emits: impl IntoIterator<Item = &'b str>,
    ) -> Self {
        self.element(Aggregate::new(name).handles(handles).emits(emits))
    }

    /// Adds a policy: whenever one of the events `triggered_by` happens, it issues the commands
    /// `issues`.
    pub fn policy<'a, 'b>(
        self,
        name: impl Into<String>,
        triggered_by: impl IntoIterator<Item = &'a str>,
        issues: impl IntoIterator<Item = &'b str>,
    ) -> Self {
        self.element(Policy::new(name).triggered_by(triggered_by).issues(issues))
    }

    /// Adds a read model fed by the events `reads`.
    pub fn read_model<'a>(
        self,
        name: impl Into<String>,
        reads: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        self.element(ReadModel::new(name).reads(reads))
    }

    /// Adds an external system that sends the commands `issues` in and emits the events
    /// `emits`. Events sent out to it: [`ExternalSystem::receives`] with [`element`](Self::element).
    pub fn external<'a, 'b>(
        self,
        name: impl Into<String>,
        issues: impl IntoIterator<Item = &'a str>,
        emits: impl IntoIterator<Item = &'b str>,
    ) -> Self {
        self.element(ExternalSystem::new(name).issues(issues).emits(emits))
    }

    /// Declares a command with a description. It still needs an aggregate that handles it.
    pub fn command(self, name: impl Into<String>, description: impl Into<String>) -> Self {
        self.element(Command::new(name).description(description))
    }

    /// Declares a domain event with a description. It still needs an aggregate or external
    /// system that emits it.
    pub fn event(self, name: impl Into<String>, description: impl Into<String>) -> Self {
        self.element(DomainEvent::new(name).description(description))
    }

    /// Checks the board and returns it.
    ///
    /// # Errors
    /// [`InvalidModel`] listing every [`Problem`](super::Problem) found, rule by rule in the
    /// order the variants are documented, each rule's problems in the order the elements were
    /// added.
    pub fn build(self) -> Result<Model, InvalidModel> {
        let problems = validate::check(&self.elements);
        if !problems.is_empty() {
            return Err(InvalidModel {
                model: self.name,
                problems,
            });
        }
        Ok(assemble(self.name, self.elements))
    }
}

/// The model of a checked board: declared commands and events with the ones only named by an
/// aggregate's `handles` or an `emits`, in order of first appearance.
fn assemble(name: String, elements: Vec<Element>) -> Model {
    let mut model = Model {
        name,
        actors: Vec::new(),
        commands: Vec::new(),
        aggregates: Vec::new(),
        events: Vec::new(),
        policies: Vec::new(),
        read_models: Vec::new(),
        externals: Vec::new(),
    };
    for element in elements {
        match element {
            Element::Actor(e) => model.actors.push(e),
            Element::Command(e) => put_command(&mut model.commands, e),
            Element::Aggregate(e) => {
                for name in &e.handles {
                    put_command(&mut model.commands, Command::new(name.as_str()));
                }
                for name in &e.emits {
                    put_event(&mut model.events, DomainEvent::new(name.as_str()));
                }
                model.aggregates.push(e);
            }
            Element::DomainEvent(e) => put_event(&mut model.events, e),
            Element::Policy(e) => model.policies.push(e),
            Element::ReadModel(e) => model.read_models.push(e),
            Element::ExternalSystem(e) => {
                for name in &e.emits {
                    put_event(&mut model.events, DomainEvent::new(name.as_str()));
                }
                model.externals.push(e);
            }
        }
    }
    model
}

/// Puts `command` on the board once; a declaration's description wins over a bare name.
fn put_command(commands: &mut Vec<Command>, command: Command) {
    match commands.iter_mut().find(|c| c.name == command.name) {
        Some(known) => known.description = known.description.take().or(command.description),
        None => commands.push(command),
    }
}

/// Puts `event` on the board once; a declaration's description wins over a bare name.
fn put_event(events: &mut Vec<DomainEvent>, event: DomainEvent) {
    match events.iter_mut().find(|e| e.name == event.name) {
        Some(known) => known.description = known.description.take().or(event.description),
        None => events.push(event),
    }
}
