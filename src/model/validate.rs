//! The rules a board must keep, and the problems that break them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::element::{Element, ElementRef, Kind};

/// A board that breaks the rules: every [`Problem`] found, not just the first.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("model {model:?} has {} problem(s): {}", .problems.len(), Listed(.problems))]
pub struct InvalidModel {
    /// The board's name.
    pub model: String,
    /// What is wrong, rule by rule in the order of [`Problem`]'s variants, each rule's
    /// problems in the order the elements were added.
    pub problems: Vec<Problem>,
}

struct Listed<'a>(&'a [Problem]);

impl fmt::Display for Listed<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

/// One broken rule, with the names involved. Names that are empty are reported once, as
/// [`Problem::EmptyName`], and take part in no other rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    /// An element's name, or a name in one of its lists, is empty or only whitespace.
    #[error("{}", empty_name(.kind, .within))]
    EmptyName {
        /// The kind of the unnamed thing.
        kind: Kind,
        /// The element whose list holds the empty name; `None` when the element itself is
        /// unnamed.
        within: Option<ElementRef>,
    },
    /// Two elements of one kind share a name (reported once per name).
    #[error("more than one {kind} is called {name:?}")]
    DuplicateName {
        /// Their kind.
        kind: Kind,
        /// Their name.
        name: String,
    },
    /// One of an element's lists names the same command or event twice.
    #[error("{element} lists {kind} {name:?} more than once")]
    RepeatedName {
        /// The element.
        element: ElementRef,
        /// The kind of the repeated name.
        kind: Kind,
        /// The repeated name.
        name: String,
    },
    /// More than one aggregate handles a command.
    #[error("command {command:?} is handled by more than one aggregate: {aggregates:?}")]
    CommandHandledByMany {
        /// The command.
        command: String,
        /// The aggregates that handle it, in board order.
        aggregates: Vec<String>,
    },
    /// A declared command that no aggregate handles.
    #[error("command {command:?} is handled by no aggregate")]
    UnhandledCommand {
        /// The command.
        command: String,
    },
    /// An actor, policy or external system issues a command that is not on the board (no
    /// aggregate handles it, nobody declared it).
    #[error("{element} issues command {command:?}, which no aggregate handles")]
    UnknownCommand {
        /// Who issues it.
        element: ElementRef,
        /// The command.
        command: String,
    },
    /// A policy lists no event that triggers it.
    #[error("policy {policy:?} is triggered by no event")]
    PolicyWithoutTrigger {
        /// The policy.
        policy: String,
    },
    /// A policy, read model or external system uses an event that is not on the board (no
    /// aggregate or external system emits it, nobody declared it).
    #[error("{element} uses event {event:?}, which nothing emits")]
    UnknownEvent {
        /// Who uses it.
        element: ElementRef,
        /// The event.
        event: String,
    },
    /// A declared event that no aggregate or external system emits.
    #[error("event {event:?} is emitted by no aggregate or external system")]
    OrphanEvent {
        /// The event.
        event: String,
    },
}

fn empty_name(kind: &Kind, within: &Option<ElementRef>) -> String {
    match within {
        None => format!("a {kind} has an empty name"),
        Some(element) => format!("{element} lists a {kind} with an empty name"),
    }
}

fn named(name: &str) -> bool {
    !name.trim().is_empty()
}

/// The distinct non-empty names of a list, in order.
fn distinct(names: &[String]) -> Vec<&str> {
    let mut seen = BTreeSet::new();
    names
        .iter()
        .map(String::as_str)
        .filter(|name| named(name) && seen.insert(*name))
        .collect()
}

/// Every problem of the board made of `elements`, in the documented order.
pub(super) fn check(elements: &[Element]) -> Vec<Problem> {
    let refs: Vec<_> = elements.iter().map(Element::references).collect();
    let mut problems = Vec::new();

    for r in &refs {
        if !named(&r.me.name) {
            problems.push(Problem::EmptyName {
                kind: r.me.kind,
                within: None,
            });
        }
        for (kind, names) in &r.lists {
            for _ in names.iter().filter(|name| !named(name)) {
                problems.push(Problem::EmptyName {
                    kind: *kind,
                    within: Some(r.me.clone()),
                });
            }
        }
    }

    let mut seen = BTreeSet::new();
    let mut reported = BTreeSet::new();
    for r in refs.iter().filter(|r| named(&r.me.name)) {
        if !seen.insert(&r.me) && reported.insert(&r.me) {
            problems.push(Problem::DuplicateName {
                kind: r.me.kind,
                name: r.me.name.clone(),
            });
        }
    }

    for r in &refs {
        for (kind, names) in &r.lists {
            let mut seen = BTreeSet::new();
            let mut reported = BTreeSet::new();
            for name in names.iter().filter(|name| named(name)) {
                if !seen.insert(name) && reported.insert(name) {
                    problems.push(Problem::RepeatedName {
                        element: r.me.clone(),
                        kind: *kind,
                        name: name.clone(),
                    });
                }
            }
        }
    }

    // Who handles what and who emits what, in board order.
    let mut handlers: Vec<(&str, Vec<&str>)> = Vec::new();
    let mut emitted = BTreeSet::new();
    let (mut declared_commands, mut declared_events) = (Vec::new(), Vec::new());
    for element in elements {
        match element {
            Element::Aggregate(aggregate) => {
                for command in distinct(&aggregate.handles) {
                    match handlers.iter_mut().find(|(c, _)| *c == command) {
                        Some((_, by)) => by.push(&aggregate.name),
                        None => handlers.push((command, vec![&aggregate.name])),
                    }
                }
                emitted.extend(distinct(&aggregate.emits));
            }
            Element::ExternalSystem(external) => emitted.extend(distinct(&external.emits)),
            Element::Command(command) if named(&command.name) => {
                declared_commands.push(command.name.as_str());
            }
            Element::DomainEvent(event) if named(&event.name) => {
                declared_events.push(event.name.as_str());
            }
            _ => {}
        }
    }
    let handled: BTreeMap<&str, &Vec<&str>> = handlers.iter().map(|(c, by)| (*c, by)).collect();

    for (command, by) in &handlers {
        if by.len() > 1 {
            problems.push(Problem::CommandHandledByMany {
                command: (*command).to_owned(),
                aggregates: by.iter().map(|a| (*a).to_owned()).collect(),
            });
        }
    }
    let mut unhandled = BTreeSet::new();
    for command in &declared_commands {
        if !handled.contains_key(command) && unhandled.insert(*command) {
            problems.push(Problem::UnhandledCommand {
                command: (*command).to_owned(),
            });
        }
    }

    let known_command = |c: &str| handled.contains_key(c) || declared_commands.contains(&c);
    for element in elements {
        let (me, issues) = match element {
            Element::Actor(e) => (ElementRef::new(Kind::Actor, &e.name), &e.issues),
            Element::Policy(e) => (ElementRef::new(Kind::Policy, &e.name), &e.issues),
            Element::ExternalSystem(e) => {
                (ElementRef::new(Kind::ExternalSystem, &e.name), &e.issues)
            }
            _ => continue,
        };
        for command in distinct(issues).into_iter().filter(|c| !known_command(c)) {
            problems.push(Problem::UnknownCommand {
                element: me.clone(),
                command: command.to_owned(),
            });
        }
    }

    for element in elements {
        if let Element::Policy(policy) = element
            && distinct(&policy.triggered_by).is_empty()
        {
            problems.push(Problem::PolicyWithoutTrigger {
                policy: policy.name.clone(),
            });
        }
    }

    let known_event = |e: &str| emitted.contains(e) || declared_events.contains(&e);
    for element in elements {
        let (me, lists): (_, &[&Vec<String>]) = match element {
            Element::Policy(e) => (ElementRef::new(Kind::Policy, &e.name), &[&e.triggered_by]),
            Element::ReadModel(e) => (ElementRef::new(Kind::ReadModel, &e.name), &[&e.reads]),
            Element::ExternalSystem(e) => (
                ElementRef::new(Kind::ExternalSystem, &e.name),
                &[&e.receives],
            ),
            _ => continue,
        };
        for event in lists.iter().flat_map(|l| distinct(l)) {
            if !known_event(event) {
                problems.push(Problem::UnknownEvent {
                    element: me.clone(),
                    event: event.to_owned(),
                });
            }
        }
    }

    let mut orphans = BTreeSet::new();
    for event in &declared_events {
        if !emitted.contains(event) && orphans.insert(*event) {
            problems.push(Problem::OrphanEvent {
                event: (*event).to_owned(),
            });
        }
    }
    problems
}
