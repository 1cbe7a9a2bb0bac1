//! # aether
//!
//! Event-sourced, distributed actors on NATS JetStream, tested by deterministic simulation.
//!
//! - [`store`]: per-actor append-only event streams with contiguous versions, optimistic
//!   concurrency decided by the broker, atomic multi-event appends, snapshots and replay that
//!   reports damaged records.
//! - [`bus`]: live fan-out of events by namespace, in-process and across nodes, bounded, with lag
//!   reporting.
//! - [`cluster`]: membership, leader election with fencing tokens, shards and the leader's
//!   balanced assignment, all through broker KV operations.
//! - [`actor`]: aggregates activated on their shard's owner, commands routed to it.
//! - [`projection`]: checkpointed, fenced consumers of a namespace's commits.
//! - [`permissions`]: the NATS permissions each role needs in a namespace, generated.
//! - [`broker`]: the seam to NATS. [`broker::MemoryBroker`] is the embedded default;
//!   `NatsBroker` (feature `nats`) is production; the `aether-sim` crate runs a simulated broker
//!   under turmoil. Everything above is written once against it.
//! - [`clock`]: the seam to time and randomness; [`Runtime`] bundles broker, clock, a seeded RNG
//!   and the node's [`NodeId`] into every component.
//!
//! Semantics, invariants and seams are described in `docs/design.md` in the repository.
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
pub mod model;
pub mod names;
pub mod node;
pub mod permissions;
#[cfg(feature = "sim")]
pub mod planted;
#[cfg(not(feature = "sim"))]
mod planted;
pub mod projection;
pub mod retry;
// The executor seam (tokio, or madsim under `--cfg madsim`); public for the `aether-sim` crate.
#[doc(hidden)]
pub mod rt;
pub mod runtime;
pub mod schema;
pub mod store;
pub mod telemetry;
pub mod trace;

pub use actor::{
    ActorConfig, ActorHost, ActorState, Aggregate, CommandContext, CommandError, CommandOutcome,
    RemoteError, RemoteErrorKind, Router, SingleNode,
};
pub use broker::{Broker, BrokerError, MemoryBroker};
#[cfg(feature = "nats")]
pub use broker::{NatsBroker, NatsOptions};
pub use bus::{BusConfig, BusSubscription, Delivery, EventBus, Filter, RecvError};
pub use clock::{Clock, SharedRng, SystemClock};
pub use codec::{DecodeError, InvalidName};
pub use event::{CommitRange, Event, ExpectedVersion, Metadata, NewEvent, Snapshot};
pub use node::{InvalidNodeId, NodeId};
pub use runtime::Runtime;
pub use schema::{DomainEvent, EventDecodeError, EventEncodeError, Upcasters};
pub use store::{
    AppendError, AppendOutcome, CommitStatus, ConflictError, DeadlineError, EVENT_STORED,
    EventStore, EventStored, OpenError, Page, ReadError, ReplayError, ReplayErrorCause,
    ReplayResult, SnapshotError, SnapshotStore, StoreConfig, StoredCommit,
};

/// The README's examples, compiled and run as doc tests so they stay true (the NATS example
/// needs the `nats` feature, which CI enables).
#[cfg(all(doctest, feature = "nats"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
