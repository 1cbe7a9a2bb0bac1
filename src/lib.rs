//! # aether
//!
//! Event-sourced, distributed actors on NATS JetStream, tested by deterministic simulation.
//!
//! - [`store`]: per-actor append-only event streams with contiguous versions, optimistic
//!   concurrency decided by the broker, atomic multi-event appends, snapshots and replay that
//!   reports damaged records.
//! - [`bus`]: live fan-out of events by namespace, in-process and across nodes, bounded, with lag
//!   reporting.
//! - [`broker`]: the seam to NATS. [`broker::MemoryBroker`] is the embedded default;
//!   `NatsBroker` (feature `nats`) is production; the simulation (feature `sim`) runs a
//!   simulated broker under turmoil. Store and bus are written once against it.
//! - [`clock`]: the seam to time and randomness, and the [`Runtime`] bundle that carries broker,
//!   clock and a seeded RNG into every component.
//!
//! ```
//! use aether::{EventStore, ExpectedVersion, MemoryBroker, NewEvent, Runtime, StoreConfig};
//! use serde_json::json;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let rt = Runtime::system(MemoryBroker::new());
//! let store = EventStore::open(rt, StoreConfig::new("bank")).await?;
//! let outcome = store
//!     .append("account-1", ExpectedVersion::NoStream, vec![
//!         NewEvent::new("Opened", json!({"owner": "ada"})),
//!         NewEvent::new("Deposited", json!({"amount": 100})),
//!     ])
//!     .await?;
//! assert_eq!(outcome.last_version(), 2);
//! assert_eq!(store.events("account-1", 1).await?.len(), 2);
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod actor;
pub mod broker;
pub mod bus;
pub mod clock;
pub mod cluster;
pub mod codec;
pub mod event;
pub mod planted;
pub mod projection;
pub mod store;

#[cfg(feature = "sim")]
#[path = "../sim/mod.rs"]
pub mod sim;

pub use actor::{
    ActorConfig, ActorHost, ActorState, Aggregate, CommandError, CommandOutcome, Router, SingleNode,
};
pub use broker::{Broker, BrokerError, MemoryBroker};
#[cfg(feature = "nats")]
pub use broker::{NatsBroker, NatsOptions};
pub use bus::{BusConfig, BusSubscription, EventBus, Filter, RecvError};
pub use clock::{Clock, Runtime, SharedRng, SystemClock};
pub use codec::{DecodeError, InvalidName};
pub use event::{Event, ExpectedVersion, Metadata, NewEvent, Snapshot};
pub use store::{
    AppendError, AppendOutcome, ConflictError, EVENT_STORED, EventStore, EventStored, OpenError,
    Page, ReadError, ReplayError, ReplayErrorCause, ReplayResult, SnapshotError, SnapshotStore,
    StoreConfig, StoredCommit,
};

/// The README's examples, compiled and run as doc tests so they stay true (the NATS example
/// needs the `nats` feature, which CI enables).
#[cfg(all(doctest, feature = "nats"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
