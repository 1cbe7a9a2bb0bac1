//! The madsim engine.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::runtime::{Handle, NodeHandle};

use super::{Engine, HostResult};
use crate::broker::Wire;
use crate::faults::{BASE_LATENCY_MAX, BASE_LATENCY_MIN, Direction};

/// The engine's name, as reports and replay lines print it.
pub const NAME: &str = "madsim";

pub use madsim::net::{TcpListener, TcpStream};

/// Splits a connection into its read and write halves.
pub fn split(
    stream: TcpStream,
) -> (
    tokio::io::ReadHalf<TcpStream>,
    tokio::io::WriteHalf<TcpStream>,
) {
    tokio::io::split(stream)
}

const BROKER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));

fn node_ip(node: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 1, 1 + node as u8))
}

/// The address nodes connect to the broker at.
pub fn broker_address(port: u16) -> SocketAddr {
    SocketAddr::new(BROKER_IP, port)
}

/// Virtual time since the start of the simulation.
pub fn sim_elapsed() -> Duration {
    madsim::time::TimeHandle::current().elapsed()
}

/// Virtual time, when read inside a simulation (`None` outside one).
pub fn try_sim_elapsed() -> Option<Duration> {
    madsim::time::TimeHandle::try_current().map(|t| t.elapsed())
}

/// Spawns a `!Send` task on the current node.
pub fn spawn_local<F>(future: F) -> madsim::task::JoinHandle<F::Output>
where
    F: std::future::Future + 'static,
    F::Output: 'static,
{
    madsim::task::spawn_local(future)
}

/// The madsim configuration of a run: the base latency of every link.
pub fn config(latency: (Duration, Duration)) -> madsim::Config {
    let mut config = madsim::Config::default();
    config.net.send_latency = latency.0..latency.1;
    config
}

/// A madsim world with its nodes created. Must be made and driven inside the run's
/// `Runtime::block_on`.
pub struct MadsimEngine {
    handle: Handle,
    wire: Wire,
    broker: Option<NodeHandle>,
    nodes: Vec<NodeHandle>,
    names: Vec<String>,
    down: BTreeSet<usize>,
    /// The first error a host's software returned.
    failed: Arc<Mutex<Option<String>>>,
}

impl MadsimEngine {
    /// The current runtime's world; `wire` carries the run's broker traffic and draws its
    /// latencies from `rng`.
    pub fn new(wire: Wire, rng: aether::clock::SharedRng) -> Self {
        wire.set_rng(rng);
        Self {
            handle: Handle::current(),
            wire,
            broker: None,
            nodes: Vec::new(),
            names: Vec::new(),
            down: BTreeSet::new(),
            failed: Arc::new(Mutex::new(None)),
        }
    }

    fn host<F, Fut>(&self, name: &str, ip: IpAddr, software: F) -> NodeHandle
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = HostResult> + 'static,
    {
        let failed = self.failed.clone();
        let host = name.to_owned();
        self.handle
            .create_node()
            .name(name)
            .ip(ip)
            .init(move || {
                let software = software();
                let failed = failed.clone();
                let host = host.clone();
                async move {
                    if let Err(e) = software.await {
                        let mut failed = failed.lock().unwrap_or_else(|e| e.into_inner());
                        failed.get_or_insert_with(|| format!("{host}: {e}"));
                    }
                }
            })
            .build()
    }

    /// Creates the broker host.
    pub fn broker<F, Fut>(&mut self, software: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = HostResult> + 'static,
    {
        self.broker = Some(self.host(crate::broker::BROKER_HOST, BROKER_IP, software));
    }

    /// Creates the next node host (its index is the number created before it).
    pub fn node<F, Fut>(&mut self, name: &str, software: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = HostResult> + 'static,
    {
        let ip = node_ip(self.nodes.len());
        let node = self.host(name, ip, software);
        self.nodes.push(node);
        self.names.push(name.to_owned());
    }

    /// Kills every host, so that their tasks — and everything they hold: the broker's state,
    /// the history, the nodes' stores — are dropped with the run. Without it madsim kept each
    /// finished run's tasks alive, about 3 MB a seed (a 10,000-seed sweep ran out of 24 GB).
    /// Call it in a `block_on` of its own after the run's: tasks due at the run's last instant
    /// run after the driver's future completes, within that `block_on`.
    pub fn shutdown(&mut self) {
        for node in &self.nodes {
            self.handle.kill(node.id());
        }
        if let Some(broker) = &self.broker {
            self.handle.kill(broker.id());
        }
    }

    fn broker_id(&self) -> madsim::task::NodeId {
        self.broker.as_ref().expect("broker host created").id()
    }
}

impl Engine for MadsimEngine {
    fn elapsed(&self) -> Duration {
        sim_elapsed()
    }

    fn is_running(&mut self, node: usize) -> bool {
        !self.down.contains(&node)
    }

    fn partition(&mut self, node: usize, direction: Direction) {
        // madsim's TCP never loses bytes (a clogged link delays them), so the cut is the
        // wire's: frames sent the cut way are dropped and their connection stalls for good,
        // as a turmoil connection does after losing a segment.
        self.wire.cut(&self.names[node], direction);
    }

    fn repair(&mut self, node: usize) {
        self.wire.heal(&self.names[node]);
    }

    fn hold(&mut self, node: usize) {
        // Not madsim's clog: its TCP retries a clogged packet with a growing backoff (up to
        // 10 s), so a held frame would arrive up to a backoff after the release. The wire
        // delivers what it held at the release, in order, as turmoil does.
        self.wire.hold(&self.names[node]);
    }

    fn release(&mut self, node: usize) {
        self.wire.release(&self.names[node]);
    }

    fn set_latency(&mut self, node: usize, min: Duration, max: Duration) {
        // madsim adds the base latency to every packet already.
        let base = (min, max) == (BASE_LATENCY_MIN, BASE_LATENCY_MAX);
        self.wire
            .set_latency(&self.names[node], (!base).then_some((min, max)));
    }

    fn crash(&mut self, node: usize) {
        self.handle.kill(self.nodes[node].id());
        self.down.insert(node);
    }

    fn restart(&mut self, node: usize) {
        // madsim's `restart` does not close the old incarnation's sockets; `kill` does.
        self.handle.kill(self.nodes[node].id());
        self.handle.restart(self.nodes[node].id());
        self.down.remove(&node);
    }

    fn bounce_broker(&mut self) {
        self.handle.kill(self.broker_id());
        self.handle.restart(self.broker_id());
    }

    async fn advance(&mut self, until: Duration) -> Result<(), String> {
        let now = sim_elapsed();
        if until > now {
            madsim::time::sleep(until - now).await;
        } else {
            // Let everything ready at this instant run first.
            madsim::task::yield_now().await;
        }
        match self
            .failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aether::clock::SharedRng;

    #[test]
    fn a_finished_run_drops_everything_its_hosts_held() {
        let held = Arc::new(());
        let weak = Arc::downgrade(&held);
        let rt = madsim::runtime::Runtime::with_seed_and_config(
            1,
            config((Duration::from_millis(1), Duration::from_millis(20))),
        );
        let for_node = held.clone();
        rt.block_on(async move {
            let mut engine = MadsimEngine::new(Wire::default(), SharedRng::from_seed(1));
            engine.node("n0", move || {
                let keep = for_node.clone();
                async move {
                    // A node task that never ends, holding what the run built.
                    let _keep = keep;
                    std::future::pending::<HostResult>().await
                }
            });
            madsim::time::sleep(Duration::from_secs(1)).await;
            engine.shutdown();
        });
        drop(rt);
        drop(held);
        assert!(
            weak.upgrade().is_none(),
            "a host's task outlived its run (madsim keeps unfinished tasks alive unless killed)"
        );
    }
}
