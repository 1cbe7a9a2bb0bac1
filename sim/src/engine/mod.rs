//! The simulation engine: turmoil (the default build) or madsim (`RUSTFLAGS="--cfg madsim"`).
//!
//! Everything else in this crate — scenarios, workloads, the simulated broker, the history and
//! the checkers — is written once. This module holds what differs:
//!
//! - the network types the broker's transport runs on ([`TcpListener`], [`TcpStream`], [`split`]);
//! - virtual time ([`sim_elapsed`]) and local task spawning ([`spawn_local`]);
//! - the world a run drives ([`Engine`]): hosts, the fault primitives of [`crate::faults`], and
//!   how simulated time moves ([`Engine::advance`]).
//!
//! | | turmoil | madsim |
//! |---|---|---|
//! | scheduler | one current-thread tokio runtime, fixed task order | madsim's, picks the next ready task from the seed |
//! | time | stepped by a fixed tick (10 ms), wall time paid per tick | event-driven: jumps to the next timer |
//! | partition | turmoil drops the segments; the connection stalls for good | the [`Wire`](crate::broker::Wire) drops the frames sent while cut; the connection stalls for good |
//! | hold | turmoil holds the segments until release | the [`Wire`](crate::broker::Wire) holds the frames sent meanwhile and delivers them, in order, at release (madsim's own clog would deliver each a growing backoff, up to 10 s, after it) |
//! | latency | per-link `(min, max)` in turmoil | madsim's base latency (1–20 ms) plus the [`Wire`](crate::broker::Wire)'s per-node `(min, max)` |
//! | crash / restart / broker bounce | `crash`, `bounce` | `kill`, `restart` |
//!
//! Clock skew and drift ([`crate::clock`]), reply loss, failovers and follower lag (the broker
//! model) are the same code on both.

use std::future::Future;
use std::time::Duration;

use crate::faults::Direction;

#[cfg(madsim)]
mod madsim_engine;
#[cfg(not(madsim))]
mod turmoil_engine;

#[cfg(madsim)]
pub use madsim_engine::*;
#[cfg(not(madsim))]
pub use turmoil_engine::*;

/// What a host's software returns: `Err` fails the run ("a host failed").
pub type HostResult = Result<(), Box<dyn std::error::Error>>;

/// The world one run drives: the broker host, the node hosts, the network between them.
///
/// Node indices are positions in the run's node list; every link is a node ↔ broker link.
pub trait Engine {
    /// Virtual time since the run began.
    fn elapsed(&self) -> Duration;
    /// Whether node `node` is up (not crashed).
    fn is_running(&mut self, node: usize) -> bool;
    /// Cuts the node ↔ broker link in `direction`: what is sent that way is lost.
    fn partition(&mut self, node: usize, direction: Direction);
    /// Heals a cut link (both ways).
    fn repair(&mut self, node: usize);
    /// Holds all traffic on the link, to be delivered after [`Engine::release`].
    fn hold(&mut self, node: usize);
    /// Releases held traffic.
    fn release(&mut self, node: usize);
    /// One-way latency on the link from now on: between `min` and `max`.
    fn set_latency(&mut self, node: usize, min: Duration, max: Duration);
    /// Crashes the node: its tasks vanish, its connections close.
    fn crash(&mut self, node: usize);
    /// Starts a crashed node again (its software from the beginning).
    fn restart(&mut self, node: usize);
    /// Crashes and restarts the broker host (its state survives; connections do not).
    fn bounce_broker(&mut self);
    /// Moves virtual time on, to at most `until` (turmoil: one tick; madsim: to `until`).
    ///
    /// # Errors
    /// A host's software returned an error.
    fn advance(&mut self, until: Duration) -> impl Future<Output = Result<(), String>>;
}
