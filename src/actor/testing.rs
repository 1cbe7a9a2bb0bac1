//! Given / when / then for aggregates, without a store.

use super::{Aggregate, CommandContext};
use crate::node::NodeId;

/// The actor id given/when/then decides for.
pub const TEST_ACTOR: &str = "test";
use crate::event::{Event, NewEvent};

/// Given / when / then for aggregates, without a store: fold `given` events, hand the
/// command to `handle`, inspect what it decided.
///
/// ```
/// # use aether::actor::{Aggregate, AggregateTest, CommandContext};
/// # use aether::{Event, NewEvent};
/// # use serde::{Deserialize, Serialize};
/// # use serde_json::json;
/// #[derive(Default, Serialize, Deserialize)]
/// struct Counter { value: i64 }
/// impl Aggregate for Counter {
///     type Command = i64;
///     type Rejection = String;
///     fn handle(&self, _: &CommandContext<'_>, by: &i64) -> Result<Vec<NewEvent>, String> {
///         if self.value + by < 0 { return Err("below zero".into()) }
///         Ok(vec![NewEvent::new("Added", json!(by))])
///     }
///     fn apply(&mut self, e: &Event) { self.value += e.data.as_i64().unwrap_or(0) }
/// }
/// let test = AggregateTest::<Counter>::given([NewEvent::new("Added", json!(2))]);
/// assert_eq!(test.when(&-5), Err("below zero".to_string()));
/// assert_eq!(test.when(&1).unwrap()[0].event_type, "Added");
/// // The same, as assertions with messages that show both sides:
/// test.then_expect_rejection(&-5, &"below zero".to_string());
/// test.then_expect_events(&1, &[NewEvent::new("Added", json!(1))]);
/// test.then_expect_event_types(&3, &["Added"]);
/// ```
pub struct AggregateTest<A> {
    state: A,
    version: u64,
}

impl<A: Aggregate> AggregateTest<A> {
    /// The aggregate after folding `events` (as versions 1, 2, …).
    pub fn given(events: impl IntoIterator<Item = NewEvent>) -> Self {
        let mut state = A::default();
        let mut version = 0;
        for new in events {
            version += 1;
            state.apply(&Event {
                id: new.id.unwrap_or_else(|| format!("given-{version}")),
                event_type: new.event_type,
                actor_id: TEST_ACTOR.into(),
                version,
                data: new.data,
                timestamp: new.timestamp.unwrap_or(std::time::SystemTime::UNIX_EPOCH),
                metadata: new.metadata,
                commit_id: format!("given-{version}"),
            });
        }
        Self { state, version }
    }

    /// What the aggregate decides for `command`.
    ///
    /// # Errors
    /// The aggregate's rejection.
    pub fn when(&self, command: &A::Command) -> Result<Vec<NewEvent>, A::Rejection> {
        let node = NodeId::default();
        let ctx = CommandContext::new(TEST_ACTOR, self.version, &node);
        self.state.handle(&ctx, command)
    }

    /// Asserts that `command` is accepted and decides exactly `expected` — the same event
    /// types and data, in order (ids, timestamps and metadata are not compared).
    ///
    /// # Panics
    /// With both lists when they differ, or with the rejection.
    #[track_caller]
    pub fn then_expect_events(&self, command: &A::Command, expected: &[NewEvent]) {
        let decided = match self.when(command) {
            Ok(events) => events,
            Err(rejection) => panic!("expected events {expected:?}, but rejected: {rejection:?}"),
        };
        let shape = |events: &[NewEvent]| -> Vec<(String, serde_json::Value)> {
            events
                .iter()
                .map(|e| (e.event_type.clone(), e.data.clone()))
                .collect()
        };
        assert_eq!(
            shape(&decided),
            shape(expected),
            "decided events (type, data) differ from the expected ones"
        );
    }

    /// Asserts that `command` is accepted and decides events of exactly these types, in order.
    ///
    /// # Panics
    /// When the types differ, or with the rejection.
    #[track_caller]
    pub fn then_expect_event_types(&self, command: &A::Command, expected: &[&str]) {
        match self.when(command) {
            Ok(events) => assert_eq!(
                events
                    .iter()
                    .map(|e| e.event_type.as_str())
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
    /// When it is accepted (with the events it decided) or rejected otherwise.
    #[track_caller]
    pub fn then_expect_rejection(&self, command: &A::Command, expected: &A::Rejection)
    where
        A::Rejection: PartialEq,
    {
        match self.when(command) {
            Ok(events) => panic!("expected rejection {expected:?}, but decided {events:?}"),
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
