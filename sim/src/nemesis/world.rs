//! The nemesis's world: the cluster, the aether nodes (each on its own tokio runtime) and
//! the proxies in front of everything, and the injection of each planned fault — resolving a
//! role (stream leader, follower, meta leader) to the server that holds it when it strikes.
#![allow(clippy::disallowed_methods)] // real servers, real time

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aether::clock::{Clock, SharedRng, SystemClock};
use aether::runtime::Runtime;
use aether::{NatsBroker, NatsOptions, NodeId};

use super::leaders::{LeaderSample, leader_views};
use super::schedule::{FaultKind, PlannedFault, Role};
use super::servers::route_proxy::Proxy;
use super::servers::{self, NatsCluster};
use super::{NemesisOptions, NemesisWorkload, RealRecorder, events_stream_info};
use crate::checkers::Violation;
use crate::history::History;
use crate::scenarios::cluster::{NodeSpec, run_cluster_node};
use crate::scenarios::store::store_node_tasks;
use crate::workload::{open_store_with, store_config};

pub(super) struct World {
    pub(super) options: NemesisOptions,
    pub(super) cluster: Arc<Mutex<NatsCluster>>,
    /// Per aether node, a proxy in front of each server's client port: the node's only way to
    /// the servers, so that it can be cut off or held.
    pub(super) client_proxies: Vec<Vec<Proxy>>,
    pub(super) history: History,
    pub(super) clock: SystemClock,
    /// Each running node incarnation's own tokio runtime: everything the node spawned —
    /// including what the library spawns detached (a cluster node's task, an actor host's
    /// command server, the client's connection task) — dies with it, as with a process.
    pub(super) nodes: Vec<Mutex<Option<tokio::runtime::Runtime>>>,
    pub(super) incarnations: Vec<Arc<AtomicU64>>,
    pub(super) timeline: Mutex<Vec<(Duration, String)>>,
}

impl World {
    pub(super) fn now(&self) -> Duration {
        self.clock.monotonic()
    }

    pub(super) fn log(&self, line: String) {
        let now = self.now();
        self.history.fault(now, line.clone());
        self.timeline.lock().unwrap().push((now, line));
    }

    /// Starts aether node `index`'s next incarnation: a new connection, store handle and the
    /// store scenario's tasks, all aborted together when the node crashes.
    pub(super) fn start_node(self: &Arc<Self>, index: usize) {
        let incarnations = self.incarnations[index].clone();
        let number = incarnations.fetch_add(1, Ordering::SeqCst) + 1;
        let name = format!("n{index}");
        self.log(format!("{name} start incarnation {number}"));
        let recorder = RealRecorder {
            name: name.clone(),
            incarnations,
            history: self.history.clone(),
            clock: self.clock.clone(),
        };
        let seed = crate::derive_seed(self.options.seed, (index as u64) << 32 | number);
        let urls = self.client_proxies[index]
            .iter()
            .map(|p| format!("nats://{}", p.addr()))
            .collect::<Vec<_>>()
            .join(",");
        let workload = self.options.workload.clone();
        let planted = self.options.planted;
        let clock = self.clock.clone();
        let (nodes, safety) = (self.options.nodes, self.options.safety);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(format!("nemesis-n{index}.{number}"))
            .enable_all()
            .build()
            .expect("a node runtime");
        runtime.spawn(async move {
            let broker = loop {
                match NatsBroker::connect(NatsOptions::new(&urls).name(name.clone())).await {
                    Ok(broker) => break broker,
                    Err(_) => aether::rt::sleep(Duration::from_millis(200)).await,
                }
            };
            let rt = Runtime::new(broker, clock, SharedRng::from_seed(seed))
                .with_node(NodeId::new(name).expect("node names are valid ids"))
                .with_planted_bugs(planted);
            match workload {
                NemesisWorkload::Store(workload) => {
                    let store = open_store_with(&rt, store_config().replicas(3)).await;
                    let work = store_node_tasks(&recorder, &rt, &store, &workload, index, number);
                    futures::future::join_all(work).await;
                }
                NemesisWorkload::Cluster(workload) => {
                    let rng = rt.rng().fork();
                    let store = open_store_with(&rt, store_config().replicas(3)).await;
                    let node = NodeSpec {
                        index,
                        nodes,
                        incarnation: number,
                        workload,
                        safety,
                    };
                    run_cluster_node(recorder, rt, store, rng, node, |_, _, _| None::<()>).await;
                }
            }
        });
        *self.nodes[index].lock().unwrap() = Some(runtime);
    }

    /// Kills node `index`: its runtime stops at once, dropping every task it ran mid-step
    /// (operations in flight stay pending: ambiguous) and closing its connection.
    pub(super) fn crash_node(&self, index: usize) {
        if let Some(runtime) = self.nodes[index].lock().unwrap().take() {
            runtime.shutdown_background();
        }
        self.log(format!("n{index} crashed"));
    }

    /// The server (index into the cluster's nodes) that `role` names now, and how it was found.
    pub(super) async fn resolve(
        &self,
        role: Role,
        control: &NatsBroker,
        fallback: usize,
    ) -> (usize, String) {
        // Asked of the servers' monitoring ports first (what most of them name), then of the
        // JetStream API through the control connection.
        let stream_leader = || async {
            let ports = self.monitor_ports();
            let views = tokio::task::spawn_blocking(move || leader_views(&ports))
                .await
                .unwrap_or_default();
            if let Some(leader) = LeaderSample::of(&views).leader {
                return Some(leader);
            }
            let info = events_stream_info(control).await;
            info.and_then(|i| i.cluster).and_then(|c| c.leader)
        };
        let by_name = |name: &str| {
            name.strip_prefix('n')?
                .parse::<usize>()
                .ok()?
                .checked_sub(1)
        };
        match role {
            Role::StreamLeader => {
                if let Some(i) = stream_leader().await.as_deref().and_then(by_name) {
                    return (i, "stream leader".into());
                }
            }
            Role::Follower => {
                if let Some(leader) = stream_leader().await.as_deref().and_then(by_name) {
                    return ((leader + 1 + fallback % 2) % 3, "follower".into());
                }
            }
            Role::MetaLeader => {
                let ports = self.monitor_ports();
                let meta = tokio::task::spawn_blocking(move || {
                    ports.iter().find_map(|(_, port)| {
                        let (_, body) = servers::monitor_get(*port, "/jsz")?;
                        let jsz: serde_json::Value = serde_json::from_str(&body).ok()?;
                        jsz["meta_cluster"]["leader"].as_str().map(str::to_owned)
                    })
                })
                .await
                .ok()
                .flatten();
                if let Some(i) = meta.as_deref().and_then(by_name) {
                    return (i, "meta leader".into());
                }
            }
        }
        (fallback % 3, format!("{role:?} unknown, drawn"))
    }

    /// Every server's name and monitoring port.
    pub(super) fn monitor_ports(&self) -> Vec<(String, u16)> {
        let cluster = self.cluster.lock().unwrap();
        cluster
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.monitor_port))
            .collect()
    }

    /// Runs `f` on the cluster off the async workers (process control blocks).
    pub(super) async fn servers<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut NatsCluster) -> T + Send + 'static,
    ) -> Result<T, String> {
        let cluster = self.cluster.clone();
        tokio::task::spawn_blocking(move || f(&mut cluster.lock().unwrap()))
            .await
            .map_err(|e| match e.try_into_panic() {
                Ok(panic) => panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "a server operation panicked".to_owned()),
                Err(e) => e.to_string(),
            })
    }

    /// Injects and undoes one fault; returns when it is over.
    pub(super) async fn inject(
        self: &Arc<Self>,
        fault: &PlannedFault,
        control: &NatsBroker,
        rng: &SharedRng,
        windows: &Mutex<Vec<(FaultKind, Duration, Duration)>>,
        violations: &Mutex<Vec<Violation>>,
    ) {
        let began = self.now();
        let fallback = rng.next_u64() as usize;
        let failed = |what: String| {
            violations.lock().unwrap().push(Violation {
                invariant: "the nemesis can inject and heal its faults",
                detail: what,
            })
        };
        match fault.kind {
            FaultKind::Kill(role) => {
                let (server, how) = self.resolve(role, control, fallback).await;
                self.log(format!("kill -9 n{} ({how})", server + 1));
                if let Err(e) = self.servers(move |c| c.nodes[server].kill()).await {
                    failed(e);
                }
                aether::rt::sleep(fault.lasts).await;
                let restarted = self
                    .servers(move |c| {
                        c.nodes[server].restart();
                        c.nodes[server].wait_healthy(Duration::from_secs(30));
                    })
                    .await;
                match restarted {
                    Ok(()) => self.log(format!("restart n{} (healthy)", server + 1)),
                    Err(e) => failed(format!("restart n{}: {e}", server + 1)),
                }
            }
            FaultKind::Pause(role) => {
                let (server, how) = self.resolve(role, control, fallback).await;
                self.log(format!("SIGSTOP n{} ({how})", server + 1));
                if let Err(e) = self.servers(move |c| c.nodes[server].pause()).await {
                    failed(e);
                }
                aether::rt::sleep(fault.lasts).await;
                if let Err(e) = self.servers(move |c| c.nodes[server].resume()).await {
                    failed(e);
                }
                self.log(format!("SIGCONT n{}", server + 1));
            }
            FaultKind::Isolate(role) => {
                let (server, how) = self.resolve(role, control, fallback).await;
                let name = format!("n{}", server + 1);
                self.log(format!("isolate {name} ({how}): both its route links cut"));
                let isolated = name.clone();
                if let Err(e) = self
                    .servers(move |c| c.route_net().isolate(&isolated))
                    .await
                {
                    failed(e);
                }
                aether::rt::sleep(fault.lasts).await;
                if let Err(e) = self.servers(|c| c.route_net().heal_all()).await {
                    failed(e);
                }
                self.log(format!("heal {name}'s route links"));
            }
            FaultKind::CutLink(k)
            | FaultKind::HoldLink(k)
            | FaultKind::HoldOneWay(k)
            | FaultKind::SlowLink(k) => {
                let (a, b) = (format!("n{}", k + 1), format!("n{}", (k + 1) % 3 + 1));
                self.log(fault.kind.to_string());
                let kind = fault.kind;
                let applied = self
                    .servers(move |c| {
                        let link = c.route_net().link(&a, &b);
                        match kind {
                            FaultKind::CutLink(_) => link.cut(),
                            FaultKind::HoldLink(_) => link.hold(),
                            FaultKind::HoldOneWay(_) => link.hold_one_way(),
                            _ => link.set_delay(Duration::from_millis(250)),
                        }
                    })
                    .await;
                if let Err(e) = applied {
                    failed(e);
                }
                aether::rt::sleep(fault.lasts).await;
                if let Err(e) = self.servers(|c| c.route_net().heal_all()).await {
                    failed(e);
                }
                self.log(format!("heal link n{}–n{}", k + 1, (k + 1) % 3 + 1));
            }
            FaultKind::CutClient(node) | FaultKind::HoldClient(node) => {
                let cut = matches!(fault.kind, FaultKind::CutClient(_));
                self.log(fault.kind.to_string());
                for proxy in &self.client_proxies[node] {
                    if cut { proxy.cut() } else { proxy.hold() }
                }
                aether::rt::sleep(fault.lasts).await;
                for proxy in &self.client_proxies[node] {
                    proxy.heal();
                }
                self.log(format!("heal n{node}'s client"));
            }
            FaultKind::CrashNode(node) => {
                self.crash_node(node);
                aether::rt::sleep(fault.lasts).await;
                self.start_node(node);
            }
            FaultKind::CrashLeader => {
                let leader = self.history.current_leader();
                let node = leader
                    .as_deref()
                    .and_then(|l| l.strip_prefix('n')?.parse::<usize>().ok())
                    .filter(|n| *n < self.nodes.len())
                    .unwrap_or(fallback % self.nodes.len());
                if leader.is_none() {
                    self.log(format!("no leader known: crashing n{node}, drawn"));
                }
                self.crash_node(node);
                aether::rt::sleep(fault.lasts).await;
                self.start_node(node);
            }
        }
        windows
            .lock()
            .unwrap()
            .push((fault.kind, began, self.now()));
    }
}
