//! The simulated broker: a host of the engine ([`host`]) running the very
//! [`BrokerState`](aether::broker::BrokerState) the in-process
//! [`MemoryBroker`](aether::MemoryBroker) runs, behind a small request/response protocol
//! ([`protocol`]) over the engine's simulated TCP, and [`SimBroker`] ([`client`], [`ops`]), the client
//! the simulated nodes use as their [`Broker`](aether::broker::Broker).
//!
//! Because every broker operation crosses a simulated TCP connection, partitions, held links,
//! latency and crashes hit broker traffic for real: a request can be lost, a reply can be lost
//! after the broker committed (an ambiguous write), and a held request can arrive long after the
//! client gave up on it.
//!
//! # Protocol
//! The simulated TCP stream carries an 8-byte token per frame; the frame itself waits in the
//! in-process [`Wire`] table until its token arrives, so it is lost, delayed or held exactly when
//! its bytes would be ([`wire`]). The client sends `Req { id, body }`; the host answers
//! `Resp { id, body }` in order; subscriptions, request inboxes and KV watches are pushed as
//! `Msg { sid }` / `Kv { sid }` frames. The first request
//! of every connection is `Hello { node, session }`; a newer session of the same node makes the
//! host close the older connection (as a NATS server eventually drops a stale client).
//!
//! # Client behaviour (modelled on async-nats)
//! - One connection per client, opened on the first operation and re-opened on the next
//!   operation after it was lost. Every operation is bounded by `op_timeout` measured on the
//!   node's own clock; a timeout closes the connection (turmoil TCP does not retransmit, so a
//!   connection that lost a segment in a partition never recovers) and reports
//!   `BrokerError::Timeout`; a connection that breaks reports `BrokerError::Unavailable`.
//! - Subscriptions and KV watches survive reconnects: they are re-established on the new
//!   connection (core messages published meanwhile are lost, as in NATS; a watch resumes after
//!   the last revision it delivered, as the ordered consumer behind an async-nats watch does).
//! - While subscriptions exist, a background task pings the host every `ping_interval` and
//!   reconnects when a ping fails, like the NATS client's PING/PONG stale-connection check.

pub mod client;
mod handle;
pub mod host;
pub mod ops;
pub mod protocol;
pub mod replicas;
pub mod wire;

use std::sync::Mutex;

use aether::broker::BrokerError;

pub use client::{SimBroker, SimBrokerConfig};
pub use host::{BrokerFaults, BrokerHost, BrokerStats};
pub use wire::Wire;

use protocol::Response;

/// Host name of the broker in the simulated network.
pub const BROKER_HOST: &str = "broker";
/// TCP port the broker host listens on.
pub const BROKER_PORT: u16 = 4222;
/// Frames queued for one connection's writer.
const CONNECTION_QUEUE_MAX: usize = 4096;
/// Messages queued for one subscription or watch (a slower consumer loses messages).
const PUSH_QUEUE_MAX: usize = 4096;

fn unavailable(reason: impl Into<String>) -> BrokerError {
    BrokerError::Unavailable {
        reason: reason.into(),
    }
}

fn unexpected(response: Response) -> BrokerError {
    BrokerError::Other {
        reason: format!("unexpected response {response:?}"),
    }
}
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
