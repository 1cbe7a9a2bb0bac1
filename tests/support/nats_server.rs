//! Real `nats-server` processes for tests: a single node or a 3-node JetStream cluster on free
//! loopback ports with temporary store directories, kill -9 and restart of one node, health and
//! replica waits, cleanup on drop.
//!
//! The binary comes from `AETHER_NATS_SERVER`, else `.tools/nats/bin/nats-server` under the crate
//! root (installed by `scripts/install-nats-server.sh`), else `PATH`. A missing binary fails the
//! test with the install hint: tests that need a server never pass by skipping.
#![allow(clippy::disallowed_methods)] // tests measure real time and name temp dirs by it

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aether::broker::async_nats;
use aether::{NatsBroker, NatsOptions};

const INSTALL_HINT: &str = "nats-server not found: run `scripts/install-nats-server.sh` (installs the \
     pinned nats-server 2.15.1 into .tools/nats), or set AETHER_NATS_SERVER to a nats-server \
     binary >= 2.11";

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
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/nats/bin/nats-server");
    if local.is_file() {
        return local;
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

/// A free TCP port on 127.0.0.1 (free when asked; the OS may hand it out again later).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a loopback port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

fn unique_dir(label: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "aether-nats-{label}-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
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
}

/// One nats-server process.
pub struct NatsServer {
    /// Its `server_name`.
    pub name: String,
    /// Client port.
    pub port: u16,
    /// Monitoring (HTTP) port.
    pub monitor_port: u16,
    dir: PathBuf,
    config: PathBuf,
    child: Option<Child>,
    owns_dir: bool,
}

impl NatsServer {
    /// Starts a single JetStream node and waits until it is healthy.
    pub fn start() -> Self {
        Self::start_with(ServerSettings::default())
    }

    /// Starts a single node with authentication settings.
    pub fn start_with(settings: ServerSettings) -> Self {
        let ports = free_ports(2);
        let dir = unique_dir("single");
        let mut server = Self::configure("n1", &dir, ports[0], ports[1], None, &settings);
        server.owns_dir = true;
        server.spawn();
        server.wait_healthy(Duration::from_secs(20));
        server
    }

    fn configure(
        name: &str,
        dir: &Path,
        port: u16,
        monitor_port: u16,
        cluster: Option<(u16, &[u16])>,
        settings: &ServerSettings,
    ) -> Self {
        let store = dir.join(name).join("store");
        std::fs::create_dir_all(&store).expect("create store dir");
        let mut text = format!(
            "server_name: {name}\nlisten: 127.0.0.1:{port}\nhttp: 127.0.0.1:{monitor_port}\n\
             jetstream {{\n  store_dir: {store:?}\n  max_memory_store: 256MB\n  max_file_store: 2GB\n}}\n"
        );
        if let Some((cluster_port, routes)) = cluster {
            let routes: Vec<String> = routes
                .iter()
                .map(|p| format!("nats-route://127.0.0.1:{p}"))
                .collect();
            text.push_str(&format!(
                "cluster {{\n  name: aether-test\n  listen: 127.0.0.1:{cluster_port}\n  routes: [{}]\n}}\n",
                routes.join(", ")
            ));
        }
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
            text.push_str(&format!(
                "tls {{\n  cert_file: {cert:?}\n  key_file: {key:?}\n}}\n"
            ));
        }
        let config = dir.join(format!("{name}.conf"));
        std::fs::write(&config, text).expect("write server config");
        Self {
            name: name.to_owned(),
            port,
            monitor_port,
            dir: dir.to_owned(),
            config,
            child: None,
            owns_dir: false,
        }
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
        let mut stream = TcpStream::connect(("127.0.0.1", self.monitor_port)).ok()?;
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
        self.kill();
        if self.owns_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A 3-node JetStream cluster (routes between all nodes, unique server names).
pub struct NatsCluster {
    /// The nodes, `n1`, `n2`, `n3`.
    pub nodes: Vec<NatsServer>,
    dir: PathBuf,
}

impl NatsCluster {
    /// Starts three nodes and waits until every one is healthy.
    pub fn start() -> Self {
        let ports = free_ports(9);
        let dir = unique_dir("cluster");
        let route_ports = [ports[2], ports[5], ports[8]];
        let mut nodes: Vec<NatsServer> = (0..3)
            .map(|i| {
                NatsServer::configure(
                    &format!("n{}", i + 1),
                    &dir,
                    ports[i * 3],
                    ports[i * 3 + 1],
                    Some((ports[i * 3 + 2], &route_ports)),
                    &ServerSettings::default(),
                )
            })
            .collect();
        for node in &mut nodes {
            node.spawn();
        }
        for node in &nodes {
            node.wait_healthy(Duration::from_secs(30));
        }
        Self { nodes, dir }
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
        for node in &mut self.nodes {
            node.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
