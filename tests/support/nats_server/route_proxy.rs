//! A TCP proxy a test controls, for network faults between real processes: every connection
//! accepted on `127.0.0.1:<port>` is forwarded to one target address, and the test can
//! - [`Proxy::cut`] it: every open connection is closed at once, and while cut every new
//!   connection is accepted and closed at once (the dialer sees an immediate EOF, as after a
//!   TCP reset) — until [`Proxy::heal`];
//! - [`Proxy::hold`] it: bytes are still read from both sockets but not forwarded; they are
//!   buffered in order and delivered at [`Proxy::release`] (the connections stay open);
//! - slow it: [`Proxy::set_delay`] delivers every chunk no earlier than `delay` after the proxy
//!   read it, in order;
//! - do any of these to one direction only ([`Proxy::direction`]).
//!
//! Why a cut closes rather than black-holes. A black hole (read and discard, never close)
//! cannot be healed: the two ends of a TCP stream would resume with bytes missing from the
//! middle, which NATS (like any framed protocol) reads as garbage. So a *silent* partition is
//! [`Proxy::hold`] (nothing delivered, nothing lost, the peers find out only through their own
//! timeouts), and [`Proxy::cut`] is the partition the peers notice at once (a reset, or a
//! firewall that rejects). Closing new connections at once, rather than refusing them, keeps the
//! listening port ours while cut, so nothing else on the machine can take it before the heal;
//! the dialer sees the same thing as a refused connection, one step later.
//!
//! Directions. A connection has two directions: [`Direction::Upstream`] carries what the
//! process that dialed the proxy sends to the target, [`Direction::Downstream`] the replies.
//! Holding one direction is the only one-way fault a TCP connection can have that heals: the
//! stream stays intact, one side's bytes simply stop arriving. What a one-way cut of a NATS
//! route means is in `nats_server/route_net.rs`.
//!
//! Buffering is bounded: each direction of a connection queues at most [`CHUNKS_MAX`] chunks of
//! at most [`CHUNK_BYTES`] (64 MiB); beyond that the proxy stops reading that socket and TCP's own
//! flow control pushes back on the sender (as a real congested link would).
//!
//! The proxies run on a [`ProxyRuntime`]: a thread of their own with a current-thread tokio
//! runtime, so they keep forwarding while the test blocks its own thread (the nats-server helpers
//! wait with `std::thread::sleep`, which would starve proxies spawned on a `#[tokio::test]`
//! runtime). [`Proxy::start`] takes any runtime handle, so a test may also run one on its own
//! (multi-threaded) runtime.
#![allow(clippy::disallowed_methods)] // delays and holds are real time

use std::collections::BTreeSet;
use std::io;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;

/// Largest chunk read from a socket at once.
pub const CHUNK_BYTES: usize = 64 * 1024;
/// Most chunks queued per direction of one connection (held or delayed) before the proxy stops
/// reading that socket.
pub const CHUNKS_MAX: usize = 1024;
/// How long the proxy waits for the target to accept a connection before closing the inbound
/// one.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A thread running a current-thread tokio runtime for proxies; stopping it (on drop) closes
/// every connection of every proxy started on it.
pub struct ProxyRuntime {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ProxyRuntime {
    /// Starts the thread.
    pub fn new(name: &str) -> Self {
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("proxy-{name}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("proxy runtime");
                handle_tx
                    .send(runtime.handle().clone())
                    .expect("hand over the runtime handle");
                // Drives every proxy task until the owner drops; dropping the runtime here
                // (outside any async context) cancels them and closes their sockets.
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })
            .expect("spawn the proxy thread");
        let handle = handle_rx.recv().expect("the proxy runtime started");
        Self {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Where proxies are spawned.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl Drop for ProxyRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A loopback port bound and never listened on: connecting to it is refused at once, and since
/// the socket stays bound (without `SO_REUSEADDR`) no other process can listen there while it
/// lives. The address to give a peer that must never be reached.
pub struct ClosedPort {
    socket: TcpSocket,
}

impl ClosedPort {
    /// Binds a fresh loopback port.
    pub fn new() -> Self {
        let socket = TcpSocket::new_v4().expect("create a socket");
        socket
            .bind("127.0.0.1:0".parse().expect("loopback address"))
            .expect("bind a loopback port");
        Self { socket }
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.socket.local_addr().expect("bound socket address")
    }
}

/// Which way bytes travel through a proxied connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Direction {
    /// From the process that dialed the proxy to the target.
    Upstream,
    /// From the target back to the dialer.
    Downstream,
}

impl Direction {
    fn index(self) -> usize {
        match self {
            Direction::Upstream => 0,
            Direction::Downstream => 1,
        }
    }
}

/// How one direction forwards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Flow {
    held: bool,
    delay: Duration,
}

/// What a proxy has done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections accepted and forwarded to the target.
    pub forwarded: u64,
    /// Connections accepted and closed at once because the proxy was cut.
    pub refused: u64,
    /// Connections closed by [`Proxy::cut`] while open.
    pub cut: u64,
    /// Bytes delivered upstream (dialer to target).
    pub bytes_up: u64,
    /// Bytes delivered downstream (target to dialer).
    pub bytes_down: u64,
}

struct Shared {
    target: SocketAddr,
    flows: [watch::Sender<Flow>; 2],
    /// Whether the proxy is cut, and the open connections' tasks; one lock, so a connection is
    /// either registered before a cut (and closed by it) or sees the cut and is closed at once.
    conns: Mutex<(bool, Vec<AbortHandle>)>,
    /// Local ports of every connection the proxy opened to the target: how the target's peer
    /// (the dialer) appears *to the target*.
    outbound_ports: Mutex<BTreeSet<u16>>,
    forwarded: AtomicU64,
    refused: AtomicU64,
    cut: AtomicU64,
    bytes: [AtomicU64; 2],
}

/// A TCP proxy from a loopback port to a target (see the module documentation). Dropping it
/// stops it and closes its connections.
pub struct Proxy {
    name: String,
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: AbortHandle,
}

impl Proxy {
    /// Listens on a fresh loopback port, forwarding to `target`, on the runtime `runtime`.
    pub fn start(runtime: &Handle, name: impl Into<String>, target: SocketAddr) -> Self {
        let listener = StdTcpListener::bind("127.0.0.1:0").expect("bind the proxy port");
        listener
            .set_nonblocking(true)
            .expect("non-blocking proxy listener");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            target,
            flows: [
                watch::Sender::new(Flow::default()),
                watch::Sender::new(Flow::default()),
            ],
            conns: Mutex::new((false, Vec::new())),
            outbound_ports: Mutex::default(),
            forwarded: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            cut: AtomicU64::new(0),
            bytes: [AtomicU64::new(0), AtomicU64::new(0)],
        });
        let accept = runtime
            .spawn(accept_loop(listener, shared.clone(), runtime.clone()))
            .abort_handle();
        Self {
            name: name.into(),
            addr,
            shared,
            accept,
        }
    }

    /// The proxy's name (for messages).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where to connect: `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where it forwards to.
    pub fn target(&self) -> SocketAddr {
        self.shared.target
    }

    /// Local ports of the connections the proxy opened to the target so far: the remote ports
    /// the target sees for connections that came through this proxy.
    pub fn outbound_ports(&self) -> BTreeSet<u16> {
        self.shared
            .outbound_ports
            .lock()
            .expect("outbound ports lock")
            .clone()
    }

    /// Closes every open connection, and every new one at once, until [`Proxy::heal`].
    pub fn cut(&self) {
        let mut conns = self.shared.conns.lock().expect("connections lock");
        conns.0 = true;
        for conn in conns.1.drain(..) {
            if !conn.is_finished() {
                self.shared.cut.fetch_add(1, Ordering::Relaxed);
            }
            conn.abort();
        }
    }

    /// Whether the proxy is cut.
    pub fn is_cut(&self) -> bool {
        self.shared.conns.lock().expect("connections lock").0
    }

    /// Stops forwarding both directions; what arrives is buffered until [`Proxy::release`].
    pub fn hold(&self) {
        self.direction(Direction::Upstream).hold();
        self.direction(Direction::Downstream).hold();
    }

    /// Delivers what was held, in order, and forwards again (the delay, if any, still applies).
    pub fn release(&self) {
        self.direction(Direction::Upstream).release();
        self.direction(Direction::Downstream).release();
    }

    /// Delivers every chunk, both ways, no earlier than `delay` after it was read.
    pub fn set_delay(&self, delay: Duration) {
        self.direction(Direction::Upstream).set_delay(delay);
        self.direction(Direction::Downstream).set_delay(delay);
    }

    /// Back to a plain proxy: not cut, nothing held (what was held is delivered), no delay.
    pub fn heal(&self) {
        self.shared.conns.lock().expect("connections lock").0 = false;
        for flow in &self.shared.flows {
            flow.send_replace(Flow::default());
        }
    }

    /// The controls of one direction.
    pub fn direction(&self, direction: Direction) -> DirectionControl<'_> {
        DirectionControl {
            flow: &self.shared.flows[direction.index()],
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> ProxyStats {
        let shared = &self.shared;
        ProxyStats {
            forwarded: shared.forwarded.load(Ordering::Relaxed),
            refused: shared.refused.load(Ordering::Relaxed),
            cut: shared.cut.load(Ordering::Relaxed),
            bytes_up: shared.bytes[0].load(Ordering::Relaxed),
            bytes_down: shared.bytes[1].load(Ordering::Relaxed),
        }
    }

    /// How many forwarded connections are open now.
    pub fn open_connections(&self) -> usize {
        let conns = self.shared.conns.lock().expect("connections lock");
        conns.1.iter().filter(|c| !c.is_finished()).count()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        let mut conns = self.shared.conns.lock().expect("connections lock");
        for conn in conns.1.drain(..) {
            conn.abort();
        }
    }
}

/// Holds, releases or delays one direction of every connection of a proxy (open ones and later
/// ones).
pub struct DirectionControl<'a> {
    flow: &'a watch::Sender<Flow>,
}

impl DirectionControl<'_> {
    /// Stops forwarding this direction; what arrives is buffered.
    pub fn hold(&self) {
        self.flow.send_modify(|f| f.held = true);
    }

    /// Delivers what was held, in order, and forwards again.
    pub fn release(&self) {
        self.flow.send_modify(|f| f.held = false);
    }

    /// Delivers every chunk of this direction no earlier than `delay` after it was read.
    pub fn set_delay(&self, delay: Duration) {
        self.flow.send_modify(|f| f.delay = delay);
    }

    /// Whether this direction is held.
    pub fn is_held(&self) -> bool {
        self.flow.borrow().held
    }
}

async fn accept_loop(listener: StdTcpListener, shared: Arc<Shared>, runtime: Handle) {
    let listener = TcpListener::from_std(listener).expect("register the proxy listener");
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            // Out of file descriptors or similar: try again shortly rather than stop serving.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let mut conns = shared.conns.lock().expect("connections lock");
        if conns.0 {
            shared.refused.fetch_add(1, Ordering::Relaxed);
            drop(inbound);
            continue;
        }
        conns.1.retain(|c| !c.is_finished());
        let task = runtime.spawn(forward(inbound, shared.clone()));
        conns.1.push(task.abort_handle());
    }
}

/// Forwards one connection until either side closes it or the proxy is cut.
async fn forward(inbound: TcpStream, shared: Arc<Shared>) {
    let Ok(Ok(outbound)) =
        tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(shared.target)).await
    else {
        return;
    };
    if let Ok(local) = outbound.local_addr() {
        shared
            .outbound_ports
            .lock()
            .expect("outbound ports lock")
            .insert(local.port());
    }
    shared.forwarded.fetch_add(1, Ordering::Relaxed);
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    let up = pump(
        in_read,
        out_write,
        shared.flows[0].subscribe(),
        &shared.bytes[0],
    );
    let down = pump(
        out_read,
        in_write,
        shared.flows[1].subscribe(),
        &shared.bytes[1],
    );
    // An error on either side closes both (the futures, and with them the sockets, drop).
    let _ = tokio::try_join!(up, down);
}

/// One direction: reads chunks as they come (into a bounded queue) and writes each when the
/// flow lets it through. An EOF is passed on (write half shut down) after the queued bytes.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut flow: watch::Receiver<Flow>,
    delivered: &AtomicU64,
) -> io::Result<()> {
    let (queue, mut queued) = mpsc::channel::<(Instant, Bytes)>(CHUNKS_MAX);
    let read = async move {
        let mut buffer = vec![0_u8; CHUNK_BYTES];
        loop {
            let n = from.read(&mut buffer).await?;
            if n == 0 {
                return Ok::<(), io::Error>(());
            }
            let chunk = Bytes::copy_from_slice(&buffer[..n]);
            if queue.send((Instant::now(), chunk)).await.is_err() {
                return Ok(());
            }
        }
    };
    let write = async move {
        while let Some((read_at, chunk)) = queued.recv().await {
            wait_until_due(&mut flow, read_at).await;
            to.write_all(&chunk).await?;
            delivered.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        to.shutdown().await
    };
    tokio::try_join!(read, write).map(|_| ())
}

/// Returns once the flow is not held and `read_at + delay` has passed.
async fn wait_until_due(flow: &mut watch::Receiver<Flow>, read_at: Instant) {
    loop {
        let current = *flow.borrow_and_update();
        if current.held {
            if flow.changed().await.is_err() {
                return;
            }
            continue;
        }
        let due = read_at + current.delay;
        if Instant::now() >= due {
            return;
        }
        tokio::select! {
            biased;
            changed = flow.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep_until(due) => {}
        }
    }
}
