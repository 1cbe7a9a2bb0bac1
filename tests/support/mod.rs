//! Shared support for integration tests, included by each test file as `mod support;`:
//!
//! - `conformance`: the broker conformance bodies every broker runs (memory, NATS, simulated);
//! - `bodies`: generic store and bus bodies, run against every broker (`store_bodies!`,
//!   `bus_bodies!`);
//! - `cluster_scenarios`: multi-node cluster scenarios, generic over the broker;
//! - `lossy`: a broker wrapper that loses append replies on purpose;
//! - `nats_server`: real nats-server processes (single node and 3-node cluster; the cluster
//!   with every route through a proxy, `nats_server/route_net.rs`);
//! - `route_proxy` (`nats_server/route_proxy.rs`): a TCP proxy a test can cut, hold, release and slow, per direction;
//! - `certs`: a CA with server and client certificates (TLS, mutual TLS);
//! - `jwt`: operator, account and user JWTs and `.creds` files (operator mode);
//! - `race`: cross-process race workers;
//! - `tenancy`: a server in operator mode, users with a role's permissions, refusal checks.
#![allow(dead_code)] // each test file uses a subset

pub mod bodies;
#[cfg(feature = "nats")]
pub mod certs;
pub mod cluster_scenarios;
pub mod conformance;
#[cfg(feature = "nats")]
pub mod jwt;
pub mod lossy;
#[cfg(feature = "nats")]
pub mod nats_server;
#[cfg(feature = "nats")]
pub mod race;
/// The proxy lives with the server launcher (`nats_server/route_proxy.rs`), so that every file
/// that includes the launcher by path (benches, the nemesis) gets it too.
#[cfg(feature = "nats")]
#[allow(unused_imports)] // only the partition tests name it
pub use nats_server::route_proxy;
#[cfg(feature = "nats")]
pub mod tenancy;
