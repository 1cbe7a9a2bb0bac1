//! Generic test bodies for the store and the bus, run against every broker.
//!
//! Each body takes a broker and a namespace no other body uses, so the same bodies run on a fresh
//! `MemoryBroker` per test (`tests/store.rs`, `tests/bus.rs`) and on one shared real nats-server
//! (the NATS test files). Use [`store_suite!`] / [`bus_suite!`] to generate one `#[tokio::test]`
//! per body for a broker constructor.

#![allow(dead_code)] // each test file uses a subset

pub mod bus;
pub mod lossy;
pub mod store;

/// A namespace for a test body: its name, cut to the 64-character limit.
pub fn namespace_for(body: &str) -> String {
    body.chars().take(64).collect()
}

/// Generates one tokio test per store body. `$make` is an expression yielding a broker.
#[macro_export]
macro_rules! store_suite {
    ($make:expr; $($body:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $body() {
                let broker = $make;
                let ns = $crate::suite::namespace_for(stringify!($body));
                $crate::suite::store::$body(broker, ns).await;
            }
        )*
    };
}

/// Generates one tokio test per bus body.
#[macro_export]
macro_rules! bus_suite {
    ($make:expr; $($body:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $body() {
                let broker = $make;
                let ns = $crate::suite::namespace_for(stringify!($body));
                $crate::suite::bus::$body(broker, ns).await;
            }
        )*
    };
}
