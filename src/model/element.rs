//! The sticky notes: one type per kind, each with a name, an optional description and the
//! names of the elements its arrows reach.

use std::fmt;

/// The kinds of sticky note, in flow order ([`Kind::ALL`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Kind {
    /// A person or role who issues commands.
    Actor,
    /// A request to change the system, handled by one aggregate.
    Command,
    /// The consistency boundary that decides on commands and emits events.
    Aggregate,
    /// A domain event: something that happened.
    Event,
    /// A process manager: whenever an event happens, it issues commands.
    Policy,
    /// A read model (a projection) fed by events.
    ReadModel,
    /// A system outside the model that issues commands, emits events or receives them.
    ExternalSystem,
}

impl Kind {
    /// Every kind, in flow order: actor → command → aggregate → event → policy, read model,
    /// external system.
    pub const ALL: [Kind; 7] = [
        Kind::Actor,
        Kind::Command,
        Kind::Aggregate,
        Kind::Event,
        Kind::Policy,
        Kind::ReadModel,
        Kind::ExternalSystem,
    ];

    /// The kind in words ("read model").
    pub fn label(self) -> &'static str {
        match self {
            Kind::Actor => "actor",
            Kind::Command => "command",
            Kind::Aggregate => "aggregate",
            Kind::Event => "event",
            Kind::Policy => "policy",
            Kind::ReadModel => "read model",
            Kind::ExternalSystem => "external system",
        }
    }

    /// A one-word identifier for the kind (`read_model`): the Mermaid and CSS class.
    pub fn class(self) -> &'static str {
        match self {
            Kind::Actor => "actor",
            Kind::Command => "command",
            Kind::Aggregate => "aggregate",
            Kind::Event => "event",
            Kind::Policy => "policy",
            Kind::ReadModel => "read_model",
            Kind::ExternalSystem => "external",
        }
    }

    /// The sticky-note colour of the classic EventStorming palette, as `#rrggbb`: command blue,
    /// event orange, aggregate yellow, policy lilac, read model green, actor pale yellow,
    /// external system pink.
    pub fn colour(self) -> &'static str {
        match self {
            Kind::Actor => "#fff2a8",
            Kind::Command => "#a7c7e7",
            Kind::Aggregate => "#fdfd96",
            Kind::Event => "#ffb347",
            Kind::Policy => "#c3b1e1",
            Kind::ReadModel => "#b2e0b2",
            Kind::ExternalSystem => "#ffb6c1",
        }
    }

    /// A darker shade of [`colour`](Self::colour), for outlines.
    pub fn stroke(self) -> &'static str {
        match self {
            Kind::Actor => "#b8a600",
            Kind::Command => "#4a78a8",
            Kind::Aggregate => "#b5b500",
            Kind::Event => "#c77800",
            Kind::Policy => "#7d62a8",
            Kind::ReadModel => "#4f9a4f",
            Kind::ExternalSystem => "#c7607a",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// One element of a board, named by its kind and name: `policy "charge on order"`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ElementRef {
    /// Its kind.
    pub kind: Kind,
    /// Its name.
    pub name: String,
}

impl ElementRef {
    /// The element of `kind` called `name`.
    pub fn new(kind: Kind, name: impl Into<String>) -> Self {
        Self {
            kind,
            name: name.into(),
        }
    }
}

impl fmt::Display for ElementRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}", self.kind, self.name)
    }
}

/// An arrow between two elements ([`Model::links`](super::Model::links)).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Link {
    /// Where the arrow starts.
    pub from: ElementRef,
    /// Where it points.
    pub to: ElementRef,
}

fn names<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    names.into_iter().map(str::to_owned).collect()
}

macro_rules! element {
    (
        $(#[$doc:meta])* $name:ident {
            $( $(#[$field_doc:meta])* $field:ident ),* $(,)?
        }
    ) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct $name {
            /// Its name, unique among the board's elements of its kind.
            pub name: String,
            /// What it is, in words (a tooltip and a second line on the drawings).
            pub description: Option<String>,
            $( $(#[$field_doc])* pub $field: Vec<String>, )*
        }

        impl $name {
            /// An element called `name`, with no description and no arrows.
            pub fn new(name: impl Into<String>) -> Self {
                Self {
                    name: name.into(),
                    description: None,
                    $( $field: Vec::new(), )*
                }
            }

            /// Sets its description.
            #[must_use]
            pub fn description(mut self, description: impl Into<String>) -> Self {
                self.description = Some(description.into());
                self
            }

            $(
                #[doc = concat!("Adds names to `", stringify!($field), "`.")]
                #[must_use]
                pub fn $field<'a>(mut self, names: impl IntoIterator<Item = &'a str>) -> Self {
                    self.$field.extend(self::names(names));
                    self
                }
            )*
        }

        impl From<$name> for Element {
            fn from(element: $name) -> Self {
                Element::$name(element)
            }
        }
    };
}

element! {
    /// A person or role, and the commands they issue.
    Actor {
        /// The commands this actor issues.
        issues,
    }
}

element! {
    /// A command. Declared on its own only to describe it, or to put it on the board before an
    /// aggregate handles it; an aggregate's `handles` puts it there too.
    Command {}
}

element! {
    /// An aggregate: the commands it handles and the events it emits.
    Aggregate {
        /// The commands it handles (each handled by exactly one aggregate).
        handles,
        /// The events it emits.
        emits,
    }
}

element! {
    /// A domain event. Declared on its own only to describe it; an aggregate's or external
    /// system's `emits` puts it on the board.
    DomainEvent {}
}

element! {
    /// A policy (a process manager): whenever one of its events happens, it issues its
    /// commands.
    Policy {
        /// The events that trigger it (at least one).
        triggered_by,
        /// The commands it issues.
        issues,
    }
}

element! {
    /// A read model (a projection) and the events it reads.
    ReadModel {
        /// The events it reads.
        reads,
    }
}

element! {
    /// A system outside the model: the commands it sends in, the events it emits, the events
    /// sent out to it.
    ExternalSystem {
        /// The commands it issues.
        issues,
        /// The events it emits.
        emits,
        /// The events it receives.
        receives,
    }
}

/// Any one element, for [`ModelBuilder::element`](super::ModelBuilder::element).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Element {
    /// An actor.
    Actor(Actor),
    /// A command declared on its own.
    Command(Command),
    /// An aggregate.
    Aggregate(Aggregate),
    /// A domain event declared on its own.
    DomainEvent(DomainEvent),
    /// A policy.
    Policy(Policy),
    /// A read model.
    ReadModel(ReadModel),
    /// An external system.
    ExternalSystem(ExternalSystem),
}

/// The names one element refers to, with the kind each list holds.
pub(super) struct References<'a> {
    pub(super) me: ElementRef,
    pub(super) lists: Vec<(Kind, &'a [String])>,
}

impl Element {
    /// This element, and the lists of names it refers to.
    pub(super) fn references(&self) -> References<'_> {
        let (kind, name, lists): (_, _, Vec<(Kind, &[String])>) = match self {
            Element::Actor(e) => (
                Kind::Actor,
                &e.name,
                vec![(Kind::Command, e.issues.as_slice())],
            ),
            Element::Command(e) => (Kind::Command, &e.name, vec![]),
            Element::Aggregate(e) => (
                Kind::Aggregate,
                &e.name,
                vec![
                    (Kind::Command, e.handles.as_slice()),
                    (Kind::Event, e.emits.as_slice()),
                ],
            ),
            Element::DomainEvent(e) => (Kind::Event, &e.name, vec![]),
            Element::Policy(e) => (
                Kind::Policy,
                &e.name,
                vec![
                    (Kind::Event, e.triggered_by.as_slice()),
                    (Kind::Command, e.issues.as_slice()),
                ],
            ),
            Element::ReadModel(e) => (
                Kind::ReadModel,
                &e.name,
                vec![(Kind::Event, e.reads.as_slice())],
            ),
            Element::ExternalSystem(e) => (
                Kind::ExternalSystem,
                &e.name,
                vec![
                    (Kind::Command, e.issues.as_slice()),
                    (Kind::Event, e.emits.as_slice()),
                    (Kind::Event, e.receives.as_slice()),
                ],
            ),
        };
        References {
            me: ElementRef::new(kind, name.as_str()),
            lists,
        }
    }
}
