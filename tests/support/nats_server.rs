//! Real `nats-server` processes for tests: a single node or a 3-node JetStream cluster on
//! loopback ports with temporary store directories, kill -9 and restart of one node, health and
//! replica waits, cleanup on drop.
//!
//! The binary comes from `AETHER_NATS_SERVER`, else `.tools/nats/bin/nats-server` under the crate
//! root (installed by `scripts/install-nats-server.sh`), else `PATH`. A missing binary fails the
//! test with the install hint: tests that need a server never pass by skipping.
//!
//! Ports. Choosing a free port by binding a listener and releasing it races with every other
//! process on the machine (parallel tests start many servers). So:
//! - a server's client and monitoring ports are chosen by nats-server itself (`-1`: the OS picks a
//!   free port when the server binds it, so nothing can take it in between); the server reports
//!   them in the JSON ports file it writes to `ports_file_dir` (`<exe>_<pid>.ports`), which is read
//!   here. Then the configuration is rewritten with those ports, so a restart after `kill` binds
//!   the same client and monitoring ports (and keeps its store directory);
//! - a cluster's route ports cannot be left to the server: every node's `routes` must name the
//!   others' route ports before any of them starts. They are still picked by bind-and-release,
//!   and the race is closed by retrying: nats-server exits at once when it cannot bind a port
//!   ("address already in use"), and then the whole cluster is started again on new route ports
//!   in a new directory (a few attempts).
//!
//! A restarted node binds the same ports as before; if another process took one of them while the
//! node was down, the restart fails (the server exits, and the wait that follows fails with the
//! server's log).
//!
//! [`NatsCluster::start_with_route_proxies`] starts the same cluster with every route through a
//! test-controlled TCP proxy, to cut, hold or slow the link between two servers (`route_net`).
//!
//! A little over ~600 lines: one server type and the cluster built from it share the private
//! configuration and start machinery (the proxied cluster lives in the child module for that
//! reason).
#![allow(clippy::disallowed_methods)] // tests wait for servers in real time

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aether::broker::async_nats;
use aether::{NatsBroker, NatsOptions};
use tempfile::TempDir;

// Paths spelled out: this file is also included by path (benches, sim/src/nemesis), where its
// child modules would otherwise be looked for next to it.
#[path = "nats_server/route_net.rs"]
pub mod route_net;
#[path = "nats_server/route_proxy.rs"]
pub mod route_proxy;
use route_net::RouteNet;

const INSTALL_HINT: &str = "nats-server not found: run `scripts/install-nats-server.sh` (installs the \
     pinned nats-server 2.15.1 into .tools/nats), or set AETHER_NATS_SERVER to a nats-server \
     binary >= 2.11";

/// How many times a cluster start is tried when a route port turned out to be taken.
const CLUSTER_START_ATTEMPTS: usize = 5;

/// The nats-server binary to run. Panics with the install hint when there is none.
pub fn server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("AETHER_NATS_SERVER") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "AETHER_NATS_SERVER={} does not exist. {INSTALL_HINT}",
            path.display()
        );
        return path;
    }
    // The crate root, or the workspace root above it (the nemesis in sim/ includes this file).
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in [Some(root), root.parent()].into_iter().flatten() {
        let local = dir.join(".tools/nats/bin/nats-server");
        if local.is_file() {
            return local;
        }
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("nats-server");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!("{INSTALL_HINT}");
}

/// GET `path` on the monitoring port `port` of a server on loopback, waiting at most 2 s for
/// the answer (a paused server accepts the connection and answers nothing); `(status, body)`.
/// Takes a port, not a server, so that callers can ask without holding the server.
pub fn monitor_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// `n` distinct loopback ports that were free when asked (another process may bind one before
/// the server does: only for route ports, whose users retry on a collision).
fn unused_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a loopback port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

/// A new temporary directory, removed when the returned handle drops.
fn temp_dir(label: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("aether-nats-{label}-"))
        .tempdir()
        .expect("create temp dir")
}

/// Why a server process did not come up.
#[derive(Debug)]
struct StartFailure {
    /// It exited because a port it was told to bind was taken.
    port_taken: bool,
    /// What to report.
    message: String,
}

/// A node's cluster block: its route listen port, the loopback ports its `routes` name, and
/// further lines of the block (`advertise`, …).
#[derive(Clone, Debug)]
struct ClusterPorts {
    listen: u16,
    routes: Vec<u16>,
    extra: String,
}

/// Extra server configuration (authentication).
#[derive(Clone, Debug, Default)]
pub struct ServerSettings {
    /// `authorization { user, password }`.
    pub user_password: Option<(String, String)>,
    /// `authorization { token }`.
    pub token: Option<String>,
    /// `authorization { users: [{ nkey }] }`: the public key (`U...`) of an allowed user.
    pub nkey_user: Option<String>,
    /// `tls { cert_file, key_file }`: PEM files of the server's certificate and key.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// With `tls`: `ca_file` and `verify: true`, client certificates signed by this CA
    /// required (mutual TLS).
    pub tls_client_ca: Option<PathBuf>,
    /// Configuration appended as it is (operator mode: `operator`, `resolver`, …).
    pub extra: Option<String>,
}

/// One nats-server process.
pub struct NatsServer {
    /// Its `server_name`.
    pub name: String,
    /// Client port (chosen by the server at its first start, then kept).
    pub port: u16,
    /// Monitoring (HTTP) port (chosen by the server at its first start, then kept).
    pub monitor_port: u16,
    /// This node's directory: configuration, log, ports files and JetStream store.
    dir: PathBuf,
    config: PathBuf,
    cluster: Option<ClusterPorts>,
    settings: ServerSettings,
    child: Option<Child>,
    /// The temporary directory a single server owns (a cluster owns its nodes' one).
    _temp: Option<TempDir>,
}

impl NatsServer {
    /// Starts a single JetStream node and waits until it is healthy.
    pub fn start() -> Self {
        Self::start_with(ServerSettings::default())
    }

    /// Starts a single node with authentication settings.
    pub fn start_with(settings: ServerSettings) -> Self {
        let temp = temp_dir("single");
        let mut server = Self::configure("n1", temp.path(), None, settings);
        server._temp = Some(temp);
        server.spawn();
        let within = Duration::from_secs(20);
        let deadline = Instant::now() + within;
        loop {
            match server.poll_start() {
                Ok(true) => return server,
                Ok(false) => {}
                Err(failure) => panic!("{}", failure.message),
            }
            assert!(
                Instant::now() < deadline,
                "nats-server {} not healthy within {within:?}; log:\n{}",
                server.name,
                server.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A node `name` under `parent` whose client and monitoring ports the server will choose.
    fn configure(
        name: &str,
        parent: &Path,
        cluster: Option<ClusterPorts>,
        settings: ServerSettings,
    ) -> Self {
        let dir = parent.join(name);
        std::fs::create_dir_all(dir.join("store")).expect("create store dir");
        let server = Self {
            name: name.to_owned(),
            port: 0,
            monitor_port: 0,
            config: dir.join(format!("{name}.conf")),
            dir,
            cluster,
            settings,
            child: None,
            _temp: None,
        };
        server.write_config();
        server
    }

    /// Writes the configuration file: a port not known yet (0) is `-1`, for the server to choose.
    fn write_config(&self) {
        let port = |p: u16| {
            if p == 0 {
                "-1".to_owned()
            } else {
                p.to_string()
            }
        };
        let store = self.dir.join("store");
        let mut text = format!(
            "server_name: {}\nlisten: 127.0.0.1:{}\nhttp: 127.0.0.1:{}\nports_file_dir: {:?}\n\
             jetstream {{\n  store_dir: {store:?}\n  max_memory_store: 256MB\n  max_file_store: 2GB\n}}\n",
            self.name,
            port(self.port),
            port(self.monitor_port),
            self.dir,
        );
        if let Some(cluster) = &self.cluster {
            let routes: Vec<String> = cluster
                .routes
                .iter()
                .map(|p| format!("nats-route://127.0.0.1:{p}"))
                .collect();
            text.push_str(&format!(
                "cluster {{\n  name: aether-test\n  listen: 127.0.0.1:{}\n  routes: [{}]\n{}}}\n",
                cluster.listen,
                routes.join(", "),
                cluster.extra,
            ));
        }
        let settings = &self.settings;
        if let Some((user, password)) = &settings.user_password {
            text.push_str(&format!(
                "authorization {{\n  user: {user:?}\n  password: {password:?}\n}}\n"
            ));
        }
        if let Some(token) = &settings.token {
            text.push_str(&format!("authorization {{\n  token: {token:?}\n}}\n"));
        }
        if let Some(nkey) = &settings.nkey_user {
            text.push_str(&format!(
                "authorization {{\n  users: [ {{ nkey: {nkey:?} }} ]\n}}\n"
            ));
        }
        if let Some((cert, key)) = &settings.tls {
            let verify = settings
                .tls_client_ca
                .as_ref()
                .map(|ca| format!("  ca_file: {ca:?}\n  verify: true\n"))
                .unwrap_or_default();
            text.push_str(&format!(
                "tls {{\n  cert_file: {cert:?}\n  key_file: {key:?}\n{verify}}}\n"
            ));
        }
        if let Some(extra) = &settings.extra {
            text.push_str(extra);
        }
        std::fs::write(&self.config, text).expect("write server config");
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("{}.log", self.name))
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "server {} already running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open server log");
        let child = Command::new(server_binary())
            .arg("-c")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start nats-server: {e}. {INSTALL_HINT}"));
        self.child = Some(child);
    }

    /// One look at a starting server: `Ok(true)` once it listens and `/healthz` answers 200,
    /// `Ok(false)` while it is still starting, `Err` when the process exited. The first time the
    /// server's ports file is there, the ports it chose are taken from it and written into the
    /// configuration, so that a restart binds the same ones.
    fn poll_start(&mut self) -> Result<bool, StartFailure> {
        let child = self.child.as_mut().expect("the server was spawned");
        if let Ok(Some(status)) = child.try_wait() {
            self.child = None;
            let log = self.log_tail();
            return Err(StartFailure {
                port_taken: log.contains("address already in use"),
                message: format!("nats-server {} exited ({status}); log:\n{log}", self.name),
            });
        }
        if self.port == 0 || self.monitor_port == 0 {
            let pid = self.child.as_ref().map(Child::id).expect("running");
            let Some((port, monitor_port)) = self.read_ports_file(pid) else {
                return Ok(false);
            };
            self.port = port;
            self.monitor_port = monitor_port;
            self.write_config();
        }
        Ok(matches!(self.monitor("/healthz"), Some((200, _))))
    }

    /// The client and monitoring ports from the ports file of process `pid`, once it is written.
    fn read_ports_file(&self, pid: u32) -> Option<(u16, u16)> {
        let suffix = format!("_{pid}.ports");
        let path = std::fs::read_dir(&self.dir)
            .ok()?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .find(|path| {
                path.file_name()
                    .and_then(|name| name.to_str())
                    .is_some_and(|name| name.ends_with(&suffix))
            })?;
        // Possibly read while being written: unparsable means not there yet.
        let ports: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
        let port_of = |key: &str| -> Option<u16> {
            let url = ports[key].as_array()?.first()?.as_str()?;
            url.rsplit(':').next()?.parse().ok()
        };
        Some((port_of("nats")?, port_of("monitoring")?))
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Whether the process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the process with SIGKILL (no shutdown, no flush) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the process with SIGSTOP: it keeps its sockets open (the kernel still accepts TCP
    /// connections into the listen backlog) but answers nothing, like a server frozen by a long
    /// GC pause, a debugger or an overloaded host. Resume it with [`NatsServer::resume`] (a
    /// paused server is still killed on drop).
    pub fn pause(&self) {
        self.signal("-STOP");
        // `kill` returns once the signal is queued; each of the server's threads stops when it
        // next enters the kernel. Wait until all of them have (state `T` in /proc), so that
        // nothing sent after this returns is served — a loaded machine once let one append
        // through.
        let pid = self.child.as_ref().expect("the server is running").id();
        let stopped = || -> Option<bool> {
            let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
            let mut all = true;
            for task in tasks.filter_map(Result::ok) {
                let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
                // `pid (comm) S …`: the state follows the last ')'.
                let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
                all &= state == "T" || state == "t";
            }
            Some(all)
        };
        for _ in 0..2_500 {
            match stopped() {
                Some(true) => return,
                // No /proc (not Linux): the signal is all there is.
                None => return,
                Some(false) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
        panic!("nats-server {pid} did not stop within 5 s of SIGSTOP");
    }

    /// Continues a process stopped by [`NatsServer::pause`] (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("the server is running").id();
        let status = Command::new("kill")
            .arg(signal)
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {pid}: {status}");
    }

    /// Starts the process again with the same configuration and store directory.
    pub fn restart(&mut self) {
        self.spawn();
    }

    /// The tail of the server log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// GET on the monitoring port; `(status, body)`.
    pub fn monitor(&self, path: &str) -> Option<(u16, String)> {
        monitor_get(self.monitor_port, path)
    }

    /// How many consumers the server holds across all streams (`/jsz`).
    pub fn consumer_count(&self) -> u64 {
        let (status, body) = self.monitor("/jsz").expect("the monitoring port answers");
        assert_eq!(status, 200, "/jsz: {body}");
        let jsz: serde_json::Value = serde_json::from_str(&body).expect("/jsz is JSON");
        jsz["consumers"]
            .as_u64()
            .expect("/jsz reports a consumer count")
    }

    /// Waits for `/healthz` to answer 200.
    pub fn wait_healthy(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Some((200, _)) = self.monitor("/healthz") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nats-server {} not healthy within {within:?}; log:\n{}",
                self.name,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A broker connected to this server.
    pub async fn broker(&self) -> NatsBroker {
        NatsBroker::connect(NatsOptions::new(self.url()))
            .await
            .expect("connect to the test server")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        // Then `_temp`, if this server owns its directory, removes it.
        self.kill();
    }
}

/// A 3-node JetStream cluster (routes between all nodes, unique server names).
pub struct NatsCluster {
    /// The nodes, `n1`, `n2`, `n3`.
    pub nodes: Vec<NatsServer>,
    /// The route proxies, when started with [`NatsCluster::start_with_route_proxies`]; dropped
    /// after the nodes are killed.
    route_net: Option<RouteNet>,
    /// The nodes' directories, removed on drop.
    _dir: TempDir,
}

impl NatsCluster {
    /// Starts three nodes and waits until every one is healthy.
    ///
    /// The route ports must be known before any node starts (each node's `routes` names all
    /// three), so they are picked beforehand and a start on which one of them was taken by then
    /// is retried from scratch on new ones. Client and monitoring ports are the servers' choice.
    pub fn start() -> Self {
        Self::start_retrying(|| Self::try_start(Duration::from_secs(30)))
    }

    /// Runs `try_start` until it succeeds, again (on new route ports) when a route port was
    /// taken.
    fn start_retrying(mut try_start: impl FnMut() -> Result<Self, StartFailure>) -> Self {
        for attempt in 1..=CLUSTER_START_ATTEMPTS {
            match try_start() {
                Ok(cluster) => return cluster,
                Err(failure) if failure.port_taken && attempt < CLUSTER_START_ATTEMPTS => {
                    eprintln!(
                        "nats cluster start {attempt}: a route port was taken, retrying on new ports"
                    );
                }
                Err(failure) => panic!("{}", failure.message),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    fn try_start(within: Duration) -> Result<Self, StartFailure> {
        let route_ports = unused_ports(3);
        let blocks = (0..3)
            .map(|i| ClusterPorts {
                listen: route_ports[i],
                routes: route_ports.clone(),
                extra: String::new(),
            })
            .collect();
        Self::launch(blocks, None, within)
    }

    /// Starts one node per cluster block and waits until every one is healthy.
    fn launch(
        blocks: Vec<ClusterPorts>,
        route_net: Option<RouteNet>,
        within: Duration,
    ) -> Result<Self, StartFailure> {
        let dir = temp_dir("cluster");
        let nodes = blocks
            .into_iter()
            .enumerate()
            .map(|(i, block)| {
                NatsServer::configure(
                    &format!("n{}", i + 1),
                    dir.path(),
                    Some(block),
                    ServerSettings::default(),
                )
            })
            .collect();
        // Dropped on failure: kills the started nodes, removes the directory.
        let mut cluster = Self {
            nodes,
            route_net,
            _dir: dir,
        };
        for node in &mut cluster.nodes {
            node.spawn();
        }
        // Every node is polled each round, so a node that exited is noticed even while the
        // others wait for it to form the cluster.
        let deadline = Instant::now() + within;
        loop {
            let mut up = 0;
            for node in &mut cluster.nodes {
                if node.poll_start()? {
                    up += 1;
                }
            }
            if up == cluster.nodes.len() {
                return Ok(cluster);
            }
            if Instant::now() >= deadline {
                let logs: Vec<String> = cluster
                    .nodes
                    .iter()
                    .map(|n| format!("== {}\n{}", n.name, n.log_tail()))
                    .collect();
                return Err(StartFailure {
                    port_taken: false,
                    message: format!(
                        "nats cluster not healthy within {within:?}; logs:\n{}",
                        logs.join("\n")
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// All client URLs, comma-separated.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A broker connected to the cluster (any node, failing over to the others).
    pub async fn broker(&self) -> NatsBroker {
        NatsBroker::connect(NatsOptions::new(self.urls()))
            .await
            .expect("connect to the test cluster")
    }

    /// The node called `name`.
    pub fn node_mut(&mut self, name: &str) -> &mut NatsServer {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// The name of `stream`'s current leader, waiting up to `within` for one.
    pub async fn stream_leader(
        &self,
        broker: &NatsBroker,
        stream: &str,
        within: Duration,
    ) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(info) = stream_info(broker, stream).await
                && let Some(leader) = info.cluster.and_then(|c| c.leader)
            {
                return leader;
            }
            assert!(
                Instant::now() < deadline,
                "stream {stream} has no leader after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `stream` has a leader and every replica is current and online.
    pub async fn wait_replicas_current(&self, broker: &NatsBroker, stream: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(info) = stream_info(broker, stream).await
                && let Some(cluster) = info.cluster
                && cluster.leader.is_some()
                && cluster.replicas.len() + 1 >= 3
                && cluster.replicas.iter().all(|r| r.current && !r.offline)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "replicas of stream {stream} not current after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn stream_info(
    broker: &NatsBroker,
    stream: &str,
) -> Option<async_nats::jetstream::stream::Info> {
    let mut handle = broker.jetstream().get_stream(stream).await.ok()?;
    handle.info().await.ok().cloned()
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        // Then `_dir` removes the nodes' directories.
        for node in &mut self.nodes {
            node.kill();
        }
    }
}
