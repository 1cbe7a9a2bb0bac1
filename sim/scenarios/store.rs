//! The hot-actor store scenario: see [`Scenario::store`](super::Scenario::store) and
//! [`store_node`](crate::sim::workload::store_node).

pub use crate::sim::workload::{StoreWorkload, store_node};
