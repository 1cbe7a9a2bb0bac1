//! Given / when / then for aggregates, without a store.

use super::{Aggregate, CommandContext};
use crate::event::Event;
use crate::node::NodeId;
use crate::schema::{DomainEvent, EventDecodeError};

/// The actor id given/when/then decides for.
pub const TEST_ACTOR: &str = "test";

/// Given / when / then for aggregates, without a store: fold `given` events, hand the
/// command to `handle`, inspect what it decided.
///
/// ```
/// # use aether::actor::{Aggregate, AggregateTest, CommandContext};
/// # use aether::DomainEvent;
/// # use serde::{Deserialize, Serialize};
/// #[derive(Default, Serialize, Deserialize)]
/// struct Counter { value: i64 }
/// #[derive(Debug, PartialEq, Serialize, Deserialize)]
/// enum CounterEvent { Added(i64) }
/// impl DomainEvent for CounterEvent {}
/// impl Aggregate for Counter {
///     const NAME: &'static str = "counter";
///     type Command = i64;
///     type Event = CounterEvent;
///     type Rejection = String;
///     fn handle(&self, _: &CommandContext<'_>, by: &i64) -> Result<Vec<CounterEvent>, String> {
///         if self.value + by < 0 { return Err("below zero".into()) }
///         Ok(vec![CounterEvent::Added(*by)])
///     }
///     fn apply(&mut self, CounterEvent::Added(n): &CounterEvent) { self.value += n }
/// }
/// let test = AggregateTest::<Counter>::given([CounterEvent::Added(2)]);
/// assert_eq!(test.when(&-5), Err("below zero".to_string()));
/// assert_eq!(test.when(&1).unwrap(), [CounterEvent::Added(1)]);
/// // The same, as assertions with messages that show both sides:
/// test.then_expect_rejection(&-5, &"below zero".to_string());
/// test.then_expect_events(&1, &[CounterEvent::Added(1)]);
/// test.then_expect_event_types(&3, &["Added"]);
/// ```
pub struct AggregateTest<A> {
    state: A,
    version: u64,
}

impl<A: Aggregate> AggregateTest<A> {
    /// The aggregate after folding `events` (as versions 1, 2, …).
    pub fn given(events: impl IntoIterator<Item = A::Event>) -> Self {
        let mut state = A::default();
        let mut version = 0;
        for event in events {
            version += 1;
            state.apply(&event);
        }
        Self { state, version }
    }

    /// The aggregate after folding stored events — decoded and upcast as the actor host does
    /// on replay, so that events of older schema versions can be given as they were stored.
    ///
    /// # Errors
    /// The first event that does not decode.
    pub fn given_stored(events: impl IntoIterator<Item = Event>) -> Result<Self, EventDecodeError> {
        let upcasters = A::upcasters();
        let mut state = A::default();
        let mut version = 0;
        for event in events {
            version += 1;
            state.apply(&upcasters.decode::<A::Event>(&event)?);
        }
        Ok(Self { state, version })
    }

    /// What the aggregate decides for `command`.
    ///
    /// # Errors
    /// The aggregate's rejection.
    pub fn when(&self, command: &A::Command) -> Result<Vec<A::Event>, A::Rejection> {
        let node = NodeId::default();
        let ctx = CommandContext::new(TEST_ACTOR, self.version, &node);
        self.state.handle(&ctx, command)
    }

    /// Asserts that `command` is accepted and decides exactly `expected`, in order.
    ///
    /// # Panics
    /// With both lists when they differ, or with the rejection.
    #[track_caller]
    pub fn then_expect_events(&self, command: &A::Command, expected: &[A::Event])
    where
        A::Event: PartialEq + std::fmt::Debug,
    {
        match self.when(command) {
            Ok(decided) => assert_eq!(
                decided, expected,
                "decided events differ from the expected ones"
            ),
            Err(rejection) => panic!("expected events {expected:?}, but rejected: {rejection:?}"),
        }
    }

    /// Asserts that `command` is accepted and decides events of exactly these types (stored
    /// type names), in order.
    ///
    /// # Panics
    /// When the types differ, or with the rejection.
    #[track_caller]
    pub fn then_expect_event_types(&self, command: &A::Command, expected: &[&str]) {
        match self.when(command) {
            Ok(events) => assert_eq!(
                events
                    .iter()
                    .map(|e| e.event_type().expect("decided events encode"))
                    .collect::<Vec<_>>(),
                expected,
                "decided event types differ from the expected ones"
            ),
            Err(rejection) => panic!("expected events {expected:?}, but rejected: {rejection:?}"),
        }
    }

    /// Asserts that `command` is rejected with exactly `expected`.
    ///
    /// # Panics
    /// When it is accepted or rejected otherwise.
    #[track_caller]
    pub fn then_expect_rejection(&self, command: &A::Command, expected: &A::Rejection)
    where
        A::Rejection: PartialEq,
    {
        match self.when(command) {
            Ok(events) => panic!(
                "expected rejection {expected:?}, but decided {} event(s) of types {:?}",
                events.len(),
                events
                    .iter()
                    .map(|e| e.event_type().unwrap_or_default())
                    .collect::<Vec<_>>()
            ),
            Err(rejection) => assert_eq!(&rejection, expected, "rejected otherwise"),
        }
    }

    /// The folded state.
    pub fn state(&self) -> &A {
        &self.state
    }

    /// The version after the given events.
    pub fn version(&self) -> u64 {
        self.version
    }
}
