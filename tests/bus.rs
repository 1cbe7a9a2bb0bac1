//! Bus behaviour on the in-process broker.

mod suite;

use aether::MemoryBroker;

bus_bodies!(bus_suite! { MemoryBroker::new(); });
