//! The turmoil engine.

use std::time::Duration;

use turmoil::Sim;

use super::{Engine, HostResult};
use crate::broker::BROKER_HOST;
use crate::faults::Direction;

/// The engine's name, as reports and replay lines print it.
pub const NAME: &str = "turmoil";

pub use turmoil::net::{TcpListener, TcpStream};

/// Splits a connection into its read and write halves.
pub fn split(
    stream: TcpStream,
) -> (
    turmoil::net::tcp::OwnedReadHalf,
    turmoil::net::tcp::OwnedWriteHalf,
) {
    stream.into_split()
}

/// The address nodes connect to the broker at.
pub fn broker_address(port: u16) -> (&'static str, u16) {
    (BROKER_HOST, port)
}

/// Virtual time since the start of the simulation, read from inside a host.
///
/// # Panics
/// Outside a host (between steps); callers there pass the time explicitly.
pub fn sim_elapsed() -> Duration {
    turmoil::sim_elapsed().expect("virtual time read outside a turmoil host")
}

/// Virtual time, when read inside a simulation (`None` outside one).
pub fn try_sim_elapsed() -> Option<Duration> {
    turmoil::sim_elapsed()
}

/// Spawns a `!Send` task on the current host.
pub fn spawn_local<F>(future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + 'static,
    F::Output: 'static,
{
    tokio::task::spawn_local(future)
}

/// A turmoil world with its hosts registered.
pub struct TurmoilEngine<'a> {
    sim: Sim<'a>,
    nodes: Vec<String>,
}

impl<'a> TurmoilEngine<'a> {
    /// A world with a tick of `tick`, seeded with `seed`, that stops with an error after
    /// `limit` of virtual time.
    pub fn new(seed: u64, tick: Duration, limit: Duration, latency: (Duration, Duration)) -> Self {
        let sim = turmoil::Builder::new()
            .rng_seed(seed)
            .epoch(crate::clock::epoch())
            .tick_duration(tick)
            .simulation_duration(limit)
            .min_message_latency(latency.0)
            .max_message_latency(latency.1)
            .tcp_capacity(1 << 16)
            .build();
        Self {
            sim,
            nodes: Vec::new(),
        }
    }

    /// Registers the broker host.
    pub fn broker<F, Fut>(&mut self, software: F)
    where
        F: Fn() -> Fut + 'a,
        Fut: std::future::Future<Output = HostResult> + 'static,
    {
        self.sim.host(BROKER_HOST, software);
    }

    /// Registers the next node host (its index is the number registered before it).
    pub fn node<F, Fut>(&mut self, name: &str, software: F)
    where
        F: Fn() -> Fut + 'a,
        Fut: std::future::Future<Output = HostResult> + 'static,
    {
        self.sim.host(name, software);
        self.nodes.push(name.to_owned());
    }
}

impl Engine for TurmoilEngine<'_> {
    fn elapsed(&self) -> Duration {
        self.sim.elapsed()
    }

    fn is_running(&mut self, node: usize) -> bool {
        let name = self.nodes[node].clone();
        self.sim.is_host_running(name.as_str())
    }

    fn partition(&mut self, node: usize, direction: Direction) {
        let name = self.nodes[node].clone();
        match direction {
            Direction::Both => self.sim.partition(name.as_str(), BROKER_HOST),
            Direction::ToBroker => self.sim.partition_oneway(name.as_str(), BROKER_HOST),
            Direction::FromBroker => self.sim.partition_oneway(BROKER_HOST, name.as_str()),
        }
    }

    fn repair(&mut self, node: usize) {
        let name = self.nodes[node].clone();
        self.sim.repair(name.as_str(), BROKER_HOST);
    }

    fn hold(&mut self, node: usize) {
        let name = self.nodes[node].clone();
        self.sim.hold(name.as_str(), BROKER_HOST);
    }

    fn release(&mut self, node: usize) {
        let name = self.nodes[node].clone();
        self.sim.release(name.as_str(), BROKER_HOST);
    }

    fn set_latency(&mut self, node: usize, min: Duration, max: Duration) {
        let name = self.nodes[node].clone();
        // `set_link_latency` sets both bounds; the maximum then moves alone.
        self.sim.set_link_latency(name.as_str(), BROKER_HOST, min);
        if max != min {
            self.sim
                .set_link_max_message_latency(name.as_str(), BROKER_HOST, max);
        }
    }

    fn crash(&mut self, node: usize) {
        let name = self.nodes[node].clone();
        self.sim.crash(name.as_str());
    }

    fn restart(&mut self, node: usize) {
        let name = self.nodes[node].clone();
        self.sim.bounce(name.as_str());
    }

    fn bounce_broker(&mut self) {
        self.sim.bounce(BROKER_HOST);
    }

    async fn advance(&mut self, _until: Duration) -> Result<(), String> {
        self.sim.step().map(|_| ()).map_err(|e| e.to_string())
    }
}
