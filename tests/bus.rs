//! Bus behaviour on the in-process broker.

mod support;

use aether::MemoryBroker;

bus_bodies!(bus_suite! { MemoryBroker::new(); });
