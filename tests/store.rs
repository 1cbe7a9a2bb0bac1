//! Store and snapshot behaviour on the in-process broker.

mod support;

use aether::MemoryBroker;

store_bodies!(store_suite! { MemoryBroker::new(); });
