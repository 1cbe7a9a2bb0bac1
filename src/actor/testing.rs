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

    /// The folded state.
    pub fn state(&self) -> &A {
        &self.state
    }

    /// The version after the given events.
    pub fn version(&self) -> u64 {
        self.version
    }
}
