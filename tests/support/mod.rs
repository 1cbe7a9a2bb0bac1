//! Shared support for integration tests: the broker conformance bodies and real nats-server
//! processes (feature `nats`).
#![allow(dead_code)]

pub mod conformance;
#[cfg(feature = "nats")]
pub mod nats_server;
#[cfg(feature = "nats")]
pub mod race;
