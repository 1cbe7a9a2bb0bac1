//! The simulated broker: a turmoil host running the very [`BrokerState`] the in-process
//! [`MemoryBroker`](crate::MemoryBroker) runs, behind a small request/response protocol over
//! `turmoil::net` TCP, and [`SimBroker`], the client the simulated nodes use as their [`Broker`].
//!
//! Because every broker operation crosses a simulated TCP connection, partitions, held links,
//! latency and crashes hit broker traffic for real: a request can be lost, a reply can be lost
//! after the broker committed (an ambiguous write), and a held request can arrive long after the
//! client gave up on it.
//!
//! # Protocol
//! Frames are a 4-byte big-endian length followed by a JSON [`Frame`]. The client sends
//! `Req { id, body }`; the host answers `Resp { id, body }` in order; subscriptions, request
//! inboxes and KV watches are pushed as `Msg { sid }` / `Kv { sid }` frames. The first request
//! of every connection is `Hello { node, session }`; a newer session of the same node makes the
//! host close the older connection (as a NATS server eventually drops a stale client).
//!
//! # Client behaviour (modelled on async-nats)
//! - One connection per client, opened on the first operation and re-opened on the next
//!   operation after it was lost. Every operation is bounded by `op_timeout` measured on the
//!   node's own [`Clock`]; a timeout closes the connection (turmoil TCP does not retransmit, so a
//!   connection that lost a segment in a partition never recovers) and reports
//!   [`BrokerError::Timeout`]; a connection that breaks reports [`BrokerError::Unavailable`].
//! - Subscriptions and KV watches survive reconnects: they are re-established on the new
//!   connection (core messages published meanwhile are lost, as in NATS; a watch resumes after
//!   the last revision it delivered, as the ordered consumer behind an async-nats watch does).
//! - While subscriptions exist, a background task pings the host every `ping_interval` and
//!   reconnects when a ping fails, like the NATS client's PING/PONG stale-connection check.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use crate::broker::{
    AppendAck, AppendOptions, Broker, BrokerError, BrokerState, DEFAULT_MAX_PAYLOAD, Headers,
    KvConfig, KvEntry, KvWatch, Message, Now, ReadFrom, StoredMessage, StreamConfig, Subscription,
    SubscriptionSource,
};
use crate::clock::{Clock, SharedRng};

use super::clock::{SimClock, epoch, sim_now};

/// Host name of the broker in the simulated network.
pub const BROKER_HOST: &str = "broker";
/// TCP port the broker host listens on.
pub const BROKER_PORT: u16 = 4222;
/// Frames queued for one connection's writer.
const CONNECTION_QUEUE_MAX: usize = 4096;
/// Messages queued for one subscription or watch (a slower consumer loses messages).
const PUSH_QUEUE_MAX: usize = 4096;

// ---------------------------------------------------------------------------------------------
// Wire format
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
enum Request {
    Hello {
        node: String,
        session: u64,
    },
    Ping,
    EnsureStream(StreamConfig),
    Append {
        subject: String,
        headers: Headers,
        payload: Bytes,
        options: AppendOptions,
    },
    Last {
        stream: String,
        subject: String,
        from: ReadFrom,
    },
    Next {
        stream: String,
        subject: String,
        from_sequence: u64,
        from: ReadFrom,
    },
    Read {
        stream: String,
        subject: String,
        from_sequence: u64,
    },
    Publish {
        subject: String,
        headers: Headers,
        payload: Bytes,
    },
    Subscribe {
        sid: u64,
        pattern: String,
    },
    Unsubscribe {
        sid: u64,
    },
    /// Subscribe `sid` to `inbox`, then publish with `reply = inbox`.
    Ask {
        sid: u64,
        inbox: String,
        subject: String,
        headers: Headers,
        payload: Bytes,
    },
    KvEnsure(KvConfig),
    KvGet {
        bucket: String,
        key: String,
    },
    KvCreate {
        bucket: String,
        key: String,
        value: Bytes,
    },
    KvUpdate {
        bucket: String,
        key: String,
        value: Bytes,
        revision: u64,
    },
    KvPut {
        bucket: String,
        key: String,
        value: Bytes,
    },
    KvDelete {
        bucket: String,
        key: String,
    },
    KvEntries {
        bucket: String,
    },
    KvWatch {
        sid: u64,
        bucket: String,
        pattern: String,
    },
}

impl Request {
    fn operation(&self) -> &'static str {
        match self {
            Request::Hello { .. } => "hello",
            Request::Ping => "ping",
            Request::EnsureStream(_) => "ensure_stream",
            Request::Append { .. } => "append",
            Request::Last { .. } => "last",
            Request::Next { .. } => "next",
            Request::Read { .. } => "read",
            Request::Publish { .. } => "publish",
            Request::Subscribe { .. } => "subscribe",
            Request::Unsubscribe { .. } => "unsubscribe",
            Request::Ask { .. } => "request",
            Request::KvEnsure(_) => "kv_ensure",
            Request::KvGet { .. } => "kv_get",
            Request::KvCreate { .. } => "kv_create",
            Request::KvUpdate { .. } => "kv_update",
            Request::KvPut { .. } => "kv_put",
            Request::KvDelete { .. } => "kv_delete",
            Request::KvEntries { .. } => "kv_entries",
            Request::KvWatch { .. } => "kv_watch",
        }
    }

    /// Writes whose reply the host may drop after committing (ambiguous outcome).
    fn is_write(&self) -> bool {
        matches!(
            self,
            Request::Append { .. }
                | Request::KvCreate { .. }
                | Request::KvUpdate { .. }
                | Request::KvPut { .. }
                | Request::KvDelete { .. }
        )
    }
}

#[derive(Debug)]
enum Response {
    Unit,
    Ack { sequence: u64, duplicate: bool },
    Stored(Option<StoredMessage>),
    StoredList(Vec<StoredMessage>),
    Entry(Option<KvEntry>),
    Entries(Vec<KvEntry>),
    Revision(u64),
    Error(BrokerError),
}

#[derive(Debug)]
enum Frame {
    Req { id: u64, body: Request },
    Resp { id: u64, body: Response },
    Msg { sid: u64, message: Message },
    Kv { sid: u64, entry: KvEntry },
}

/// One direction of one connection: the frames written to it and not yet read, in order.
#[derive(Debug, Default)]
struct Pipe {
    frames: Mutex<VecDeque<(u64, Frame)>>,
    next: AtomicU64,
}

impl Pipe {
    /// Queues `frame` and returns the token to put on the simulated wire for it.
    fn push(&self, frame: Frame) -> [u8; TOKEN_BYTES] {
        let token = self.next.fetch_add(1, Ordering::SeqCst);
        lock(&self.frames).push_back((token, frame));
        token.to_be_bytes()
    }

    /// The frame whose token just arrived. turmoil TCP delivers in order and never skips a
    /// segment (a lost one stalls the stream for good), so it is always the oldest one.
    fn take(&self, token: [u8; TOKEN_BYTES]) -> std::io::Result<Frame> {
        let token = u64::from_be_bytes(token);
        match lock(&self.frames).pop_front() {
            Some((queued, frame)) if queued == token => Ok(frame),
            other => Err(std::io::Error::other(format!(
                "token {token} arrived, but frame {:?} is next",
                other.map(|(t, _)| t)
            ))),
        }
    }
}

/// Both directions of one connection.
#[derive(Debug, Default)]
struct Link {
    /// Client → host.
    up: Pipe,
    /// Host → client.
    down: Pipe,
}

/// Frames in flight between the broker host and its clients, shared by everyone in one run.
///
/// The simulated TCP stream of a connection carries only a small token per frame (plus the link
/// id once, first); the frame itself waits here and is handed to the reader when — and only when —
/// its token arrives. So a frame is lost, delayed or held exactly when its bytes would be, while
/// no frame is ever serialised. Links die with their connection: the registry holds them weakly.
#[derive(Clone, Debug, Default)]
pub struct Wire {
    inner: Arc<WireInner>,
}

#[derive(Debug, Default)]
struct WireInner {
    links: Mutex<BTreeMap<u64, Weak<Link>>>,
    next: AtomicU64,
}

impl Wire {
    /// A new link and the id the client sends first on its connection.
    fn open(&self) -> (u64, Arc<Link>) {
        let id = self.inner.next.fetch_add(1, Ordering::SeqCst);
        let link = Arc::new(Link::default());
        let mut links = lock(&self.inner.links);
        links.retain(|_, l| l.strong_count() > 0);
        links.insert(id, Arc::downgrade(&link));
        (id, link)
    }

    /// The link a connection announced (once), if its client still exists.
    fn accept(&self, id: u64) -> Option<Arc<Link>> {
        lock(&self.inner.links).remove(&id)?.upgrade()
    }
}

/// Bytes of a frame's token on the simulated wire.
const TOKEN_BYTES: usize = 8;

async fn read_frame<R: AsyncReadExt + Unpin>(
    reader: &mut R,
    pipe: &Pipe,
) -> std::io::Result<Frame> {
    let mut token = [0u8; TOKEN_BYTES];
    reader.read_exact(&mut token).await?;
    pipe.take(token)
}

/// Writes queued frames to one direction of a connection until the queue or the stream closes.
async fn write_frames<W: AsyncWriteExt + Unpin>(
    writer: &mut W,
    link: &Link,
    up: bool,
    queue: &mut mpsc::Receiver<Frame>,
) {
    let pipe = if up { &link.up } else { &link.down };
    while let Some(frame) = queue.recv().await {
        let token = pipe.push(frame);
        if writer.write_all(&token).await.is_err() {
            break;
        }
    }
}

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
// ---------------------------------------------------------------------------------------------
// Host
// ---------------------------------------------------------------------------------------------

/// Faults the broker host injects itself (the network injects the rest).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BrokerFaults {
    /// Per mille of successful writes whose reply is dropped after the commit.
    pub reply_loss_per_mille: u32,
}

/// Counters of the broker host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BrokerStats {
    /// Requests handled.
    pub requests: u64,
    /// Replies dropped after a committed write.
    pub replies_dropped: u64,
    /// Connections accepted.
    pub connections: u64,
}

struct HostShared {
    state: Mutex<BrokerState>,
    faults: Mutex<BrokerFaults>,
    stats: Mutex<BrokerStats>,
    rng: SharedRng,
    /// node → (latest session, its connection's close signal).
    sessions: Mutex<BTreeMap<String, (u64, Arc<tokio::sync::Notify>)>>,
    /// Frames in flight on every connection.
    wire: Wire,
}

/// The broker host: state shared by every incarnation of the host software, so that the data
/// survives a broker crash and restart (file storage), while connections and subscriptions do
/// not. Cheap to clone.
#[derive(Clone)]
pub struct BrokerHost {
    shared: Arc<HostShared>,
}

impl std::fmt::Debug for BrokerHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BrokerHost")
    }
}

fn host_now() -> Now {
    let t = sim_now();
    Now {
        monotonic: t,
        wall: epoch() + t,
    }
}

impl BrokerHost {
    /// An empty broker whose own random choices (which reply to drop) come from `rng`.
    pub fn new(rng: SharedRng) -> Self {
        Self {
            shared: Arc::new(HostShared {
                state: Mutex::new(BrokerState::new(DEFAULT_MAX_PAYLOAD)),
                faults: Mutex::new(BrokerFaults::default()),
                stats: Mutex::new(BrokerStats::default()),
                rng,
                sessions: Mutex::new(BTreeMap::new()),
                wire: Wire::default(),
            }),
        }
    }

    /// Runs `f` on the broker state with the given time (for checkers, outside the simulation).
    pub fn with_state<T>(&self, f: impl FnOnce(&mut BrokerState) -> T) -> T {
        f(&mut lock(&self.shared.state))
    }

    /// Sets the host's own faults.
    pub fn set_faults(&self, faults: BrokerFaults) {
        *lock(&self.shared.faults) = faults;
    }

    /// The host's counters.
    pub fn stats(&self) -> BrokerStats {
        *lock(&self.shared.stats)
    }

    /// The wire clients of this host connect through (see [`SimBroker::new`]).
    pub fn wire(&self) -> Wire {
        self.shared.wire.clone()
    }

    /// A client of this host for a node (see [`SimBroker::new`]).
    pub fn client(&self, config: SimBrokerConfig, clock: SimClock) -> SimBroker {
        SimBroker::new(config, clock, self.wire())
    }

    /// The host software: accepts connections until the host is crashed.
    ///
    /// # Errors
    /// When the listener cannot be bound.
    pub async fn serve(self) -> turmoil::Result {
        let listener = turmoil::net::TcpListener::bind(("0.0.0.0", BROKER_PORT)).await?;
        lock(&self.shared.sessions).clear();
        loop {
            let (stream, _) = listener.accept().await?;
            lock(&self.shared.stats).connections += 1;
            let host = self.clone();
            tokio::task::spawn_local(host.serve_connection(stream));
        }
    }

    async fn serve_connection(self, stream: turmoil::net::TcpStream) {
        let (mut reader, mut writer) = stream.into_split();
        // The client announces its link first.
        let mut id = [0u8; TOKEN_BYTES];
        if reader.read_exact(&mut id).await.is_err() {
            return;
        }
        let Some(link) = self.shared.wire.accept(u64::from_be_bytes(id)) else {
            return;
        };
        let (tx, mut rx) = mpsc::channel::<Frame>(CONNECTION_QUEUE_MAX);
        let writer_link = link.clone();
        let writer_task = tokio::task::spawn_local(async move {
            write_frames(&mut writer, &writer_link, false, &mut rx).await;
        });
        let close = Arc::new(tokio::sync::Notify::new());
        let mut conn = HostConn {
            tx,
            subs: BTreeMap::new(),
            node: None,
            flush_before_reply: None,
        };
        loop {
            let frame = tokio::select! {
                biased;
                _ = close.notified() => break,
                frame = read_frame(&mut reader, &link.up) => match frame {
                    Ok(frame) => frame,
                    Err(_) => break,
                },
            };
            let Frame::Req { id, body } = frame else {
                break;
            };
            lock(&self.shared.stats).requests += 1;
            if let Request::Hello { node, session } = &body {
                let mut sessions = lock(&self.shared.sessions);
                match sessions.get(node) {
                    Some((latest, _)) if *latest > *session => break, // a stale, delayed hello
                    Some((_, older)) => older.notify_one(),
                    None => {}
                }
                sessions.insert(node.clone(), (*session, close.clone()));
                conn.node = Some((node.clone(), *session));
            }
            let is_write = body.is_write();
            let response = self.handle(&mut conn, body);
            if let Some(forwarder) = conn.flush_before_reply.take() {
                let _ = forwarder.await;
            }
            if is_write && !matches!(response, Response::Error(_)) {
                let per_mille = lock(&self.shared.faults).reply_loss_per_mille;
                if per_mille > 0 && self.shared.rng.next_u64() % 1000 < u64::from(per_mille) {
                    lock(&self.shared.stats).replies_dropped += 1;
                    // Committed, but the client never hears of it; half the time the
                    // connection breaks too.
                    if self.shared.rng.next_u64().is_multiple_of(2) {
                        break;
                    }
                    continue;
                }
            }
            if conn
                .tx
                .send(Frame::Resp { id, body: response })
                .await
                .is_err()
            {
                break;
            }
        }
        for (_, sub) in std::mem::take(&mut conn.subs) {
            self.drop_sub(sub);
        }
        if let Some((node, session)) = conn.node {
            let mut sessions = lock(&self.shared.sessions);
            if sessions.get(&node).is_some_and(|(s, _)| *s == session) {
                sessions.remove(&node);
            }
        }
        writer_task.abort();
    }

    fn drop_sub(&self, sub: HostSub) {
        if let Some(id) = sub.state_id {
            lock(&self.shared.state).unsubscribe(id);
        }
        sub.forwarder.abort();
    }

    fn forward_messages(
        tx: &mpsc::Sender<Frame>,
        sid: u64,
    ) -> (mpsc::Sender<Message>, tokio::task::JoinHandle<()>) {
        let (sender, mut receiver) = mpsc::channel::<Message>(PUSH_QUEUE_MAX);
        let tx = tx.clone();
        let task = tokio::task::spawn_local(async move {
            while let Some(message) = receiver.recv().await {
                if tx.send(Frame::Msg { sid, message }).await.is_err() {
                    break;
                }
            }
        });
        (sender, task)
    }

    fn handle(&self, conn: &mut HostConn, body: Request) -> Response {
        let now = host_now();
        let mut state = lock(&self.shared.state);
        let result: Result<Response, BrokerError> = match body {
            Request::Hello { .. } | Request::Ping => Ok(Response::Unit),
            Request::EnsureStream(config) => state.ensure_stream(config).map(|()| Response::Unit),
            Request::Append {
                subject,
                headers,
                payload,
                options,
            } => state
                .append(&subject, headers, payload, options, now)
                .map(|ack| Response::Ack {
                    sequence: ack.sequence,
                    duplicate: ack.duplicate,
                }),
            // One linearizable server: the leader and any replica are the same copy.
            Request::Last {
                stream,
                subject,
                from: ReadFrom::AnyReplica | ReadFrom::Leader,
            } => state.last(&stream, &subject, now).map(Response::Stored),
            Request::Next {
                stream,
                subject,
                from_sequence,
                from: ReadFrom::AnyReplica | ReadFrom::Leader,
            } => state
                .next(&stream, &subject, from_sequence, now)
                .map(Response::Stored),
            Request::Read {
                stream,
                subject,
                from_sequence,
            } => state
                .read(&stream, &subject, from_sequence, now)
                .map(Response::StoredList),
            Request::Publish {
                subject,
                headers,
                payload,
            } => state
                .publish(Message {
                    subject,
                    headers,
                    payload,
                    reply: None,
                })
                .map(|_| Response::Unit),
            Request::Subscribe { sid, pattern } => {
                let (sender, forwarder) = Self::forward_messages(&conn.tx, sid);
                match state.subscribe(&pattern, sender) {
                    Ok(id) => {
                        if let Some(old) = conn.subs.insert(
                            sid,
                            HostSub {
                                state_id: Some(id),
                                forwarder,
                            },
                        ) {
                            drop(state);
                            self.drop_sub(old);
                            return Response::Unit;
                        }
                        Ok(Response::Unit)
                    }
                    Err(e) => {
                        forwarder.abort();
                        Err(e)
                    }
                }
            }
            // Stop new deliveries; what the subscription already holds is still pushed before
            // the answer, as a NATS server delivers what it sent before the UNSUB arrived.
            Request::Unsubscribe { sid } => {
                if let Some(sub) = conn.subs.remove(&sid) {
                    match sub.state_id {
                        Some(id) => {
                            state.unsubscribe(id);
                            conn.flush_before_reply = Some(sub.forwarder);
                        }
                        None => sub.forwarder.abort(),
                    }
                }
                Ok(Response::Unit)
            }
            Request::Ask {
                sid,
                inbox,
                subject,
                headers,
                payload,
            } => {
                let (sender, forwarder) = Self::forward_messages(&conn.tx, sid);
                match state.subscribe(&inbox, sender) {
                    Ok(id) => {
                        let published = state.publish(Message {
                            subject: subject.clone(),
                            headers,
                            payload,
                            reply: Some(inbox),
                        });
                        match published {
                            Ok(matched) if matched > 0 => {
                                conn.subs.insert(
                                    sid,
                                    HostSub {
                                        state_id: Some(id),
                                        forwarder,
                                    },
                                );
                                Ok(Response::Unit)
                            }
                            other => {
                                state.unsubscribe(id);
                                forwarder.abort();
                                match other {
                                    Err(e) => Err(e),
                                    Ok(_) => Err(BrokerError::NoResponders { subject }),
                                }
                            }
                        }
                    }
                    Err(e) => {
                        forwarder.abort();
                        Err(e)
                    }
                }
            }
            Request::KvEnsure(config) => state.kv_ensure(config).map(|()| Response::Unit),
            Request::KvGet { bucket, key } => state.kv_get(&bucket, &key, now).map(Response::Entry),
            Request::KvCreate { bucket, key, value } => state
                .kv_create(&bucket, &key, value, now)
                .map(Response::Revision),
            Request::KvUpdate {
                bucket,
                key,
                value,
                revision,
            } => state
                .kv_update(&bucket, &key, value, revision, now)
                .map(Response::Revision),
            Request::KvPut { bucket, key, value } => state
                .kv_put(&bucket, &key, value, now)
                .map(Response::Revision),
            Request::KvDelete { bucket, key } => {
                state.kv_delete(&bucket, &key, now).map(|()| Response::Unit)
            }
            Request::KvEntries { bucket } => state.kv_entries(&bucket, now).map(Response::Entries),
            Request::KvWatch {
                sid,
                bucket,
                pattern,
            } => {
                let (sender, mut receiver) = mpsc::channel::<KvEntry>(PUSH_QUEUE_MAX);
                match state.kv_watch(&bucket, &pattern, sender, now) {
                    Ok(_) => {
                        let tx = conn.tx.clone();
                        let forwarder = tokio::task::spawn_local(async move {
                            while let Some(entry) = receiver.recv().await {
                                if tx.send(Frame::Kv { sid, entry }).await.is_err() {
                                    break;
                                }
                            }
                        });
                        // A watcher has no unsubscribe: dropping the receiver retires it.
                        if let Some(old) = conn.subs.insert(
                            sid,
                            HostSub {
                                state_id: None,
                                forwarder,
                            },
                        ) {
                            drop(state);
                            self.drop_sub(old);
                            return Response::Unit;
                        }
                        Ok(Response::Unit)
                    }
                    Err(e) => Err(e),
                }
            }
        };
        match result {
            Ok(r) => r,
            Err(e) => Response::Error(e),
        }
    }
}

struct HostSub {
    state_id: Option<u64>,
    forwarder: tokio::task::JoinHandle<()>,
}

struct HostConn {
    tx: mpsc::Sender<Frame>,
    subs: BTreeMap<u64, HostSub>,
    node: Option<(String, u64)>,
    /// A forwarder that must push what it holds before the current request is answered: an
    /// unsubscribed subscription's messages already on their way (NATS delivers those).
    flush_before_reply: Option<tokio::task::JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

/// Settings of a [`SimBroker`] client.
#[derive(Clone, Debug)]
pub struct SimBrokerConfig {
    /// The node's name (a valid subject token), sent in `Hello` and used in inbox subjects.
    pub node: String,
    /// First session number of this client; each connection takes the next. Must grow across
    /// restarts of the node (e.g. `incarnation << 32`).
    pub session_base: u64,
    /// Bound on every operation, connecting included, on the node's clock.
    pub op_timeout: Duration,
    /// How often to ping while subscriptions or watches exist.
    pub ping_interval: Duration,
    /// Prefix of this client's request inboxes: unique per client, as the NUID prefix of a NATS
    /// client is, so that a late reply to an earlier client of the same node (a previous
    /// incarnation) can never answer this one's request.
    pub inbox_prefix: String,
}

impl SimBrokerConfig {
    /// Defaults for `node`: 1 s operation timeout, 1 s ping interval, an inbox prefix drawn
    /// from `rng`.
    pub fn new(node: impl Into<String>, session_base: u64, rng: &SharedRng) -> Self {
        Self {
            node: node.into(),
            session_base,
            op_timeout: Duration::from_secs(1),
            ping_interval: Duration::from_secs(1),
            inbox_prefix: format!("_INBOX.{:016X}", rng.next_u64()),
        }
    }
}

enum ClientSub {
    Core {
        pattern: String,
        sender: mpsc::Sender<Message>,
    },
    Inbox {
        sender: mpsc::Sender<Message>,
    },
    Watch {
        bucket: String,
        pattern: String,
        sender: mpsc::Sender<KvEntry>,
        last_revision: u64,
    },
}

impl ClientSub {
    fn is_closed(&self) -> bool {
        match self {
            ClientSub::Core { sender, .. } | ClientSub::Inbox { sender } => sender.is_closed(),
            ClientSub::Watch { sender, .. } => sender.is_closed(),
        }
    }

    /// The request that re-establishes this subscription on a new connection.
    fn resubscribe(&self, sid: u64) -> Option<Request> {
        match self {
            ClientSub::Core { pattern, .. } => Some(Request::Subscribe {
                sid,
                pattern: pattern.clone(),
            }),
            // An inbox lives for one request; the reply is lost with the connection.
            ClientSub::Inbox { .. } => None,
            ClientSub::Watch {
                bucket, pattern, ..
            } => Some(Request::KvWatch {
                sid,
                bucket: bucket.clone(),
                pattern: pattern.clone(),
            }),
        }
    }
}

struct Conn {
    tx: mpsc::Sender<Frame>,
    pending: Mutex<BTreeMap<u64, oneshot::Sender<Response>>>,
    dead: AtomicBool,
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Conn {
    fn kill(&self) {
        self.dead.store(true, Ordering::SeqCst);
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
        lock(&self.pending).clear();
    }

    fn is_alive(&self) -> bool {
        !self.dead.load(Ordering::SeqCst)
    }

    /// Queues a request; the receiver yields its response (or an error when the connection
    /// dies first).
    fn send(&self, id: u64, body: Request) -> Result<oneshot::Receiver<Response>, BrokerError> {
        let (reply_tx, reply_rx) = oneshot::channel();
        lock(&self.pending).insert(id, reply_tx);
        if !self.is_alive() || self.tx.try_send(Frame::Req { id, body }).is_err() {
            lock(&self.pending).remove(&id);
            return Err(unavailable("connection to the broker lost"));
        }
        Ok(reply_rx)
    }

    /// Queues a request whose response nobody waits for.
    fn send_and_forget(&self, id: u64, body: Request) {
        let _ = self.tx.try_send(Frame::Req { id, body });
    }
}

struct ClientInner {
    config: SimBrokerConfig,
    clock: SimClock,
    wire: Wire,
    conn: Mutex<Option<Arc<Conn>>>,
    connect_lock: tokio::sync::Mutex<()>,
    next_id: AtomicU64,
    next_sid: AtomicU64,
    sessions: AtomicU64,
    subs: Mutex<BTreeMap<u64, ClientSub>>,
    pinger_started: AtomicBool,
}

/// The nodes' [`Broker`]: a client of the broker host over simulated TCP. Cheap to clone;
/// clones share the connection.
#[derive(Clone)]
pub struct SimBroker {
    inner: Arc<ClientInner>,
}

impl std::fmt::Debug for SimBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SimBroker({})", self.inner.config.node)
    }
}

impl SimBroker {
    /// A client that connects lazily through `wire` (the broker host's, [`BrokerHost::wire`]),
    /// measuring timeouts on `clock`.
    pub fn new(config: SimBrokerConfig, clock: SimClock, wire: Wire) -> Self {
        Self {
            inner: Arc::new(ClientInner {
                config,
                clock,
                wire,
                conn: Mutex::new(None),
                connect_lock: tokio::sync::Mutex::new(()),
                next_id: AtomicU64::new(1),
                next_sid: AtomicU64::new(1),
                sessions: AtomicU64::new(0),
                subs: Mutex::new(BTreeMap::new()),
                pinger_started: AtomicBool::new(false),
            }),
        }
    }

    fn next_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::SeqCst)
    }

    fn current(&self) -> Option<Arc<Conn>> {
        lock(&self.inner.conn).clone().filter(|c| c.is_alive())
    }

    async fn connection(&self) -> Result<Arc<Conn>, BrokerError> {
        if let Some(conn) = self.current() {
            return Ok(conn);
        }
        let _guard = self.inner.connect_lock.lock().await;
        if let Some(conn) = self.current() {
            return Ok(conn);
        }
        let stream = turmoil::net::TcpStream::connect((BROKER_HOST, BROKER_PORT))
            .await
            .map_err(|e| unavailable(format!("cannot connect to the broker: {e}")))?;
        let (mut reader, mut writer) = stream.into_split();
        let (link_id, link) = self.inner.wire.open();
        writer
            .write_all(&link_id.to_be_bytes())
            .await
            .map_err(|e| unavailable(format!("cannot reach the broker: {e}")))?;
        let (tx, mut rx) = mpsc::channel::<Frame>(CONNECTION_QUEUE_MAX);
        let conn = Arc::new(Conn {
            tx,
            pending: Mutex::new(BTreeMap::new()),
            dead: AtomicBool::new(false),
            tasks: Mutex::new(Vec::new()),
        });
        let writer_conn = Arc::downgrade(&conn);
        let writer_link = link.clone();
        let writer_task = tokio::spawn(async move {
            write_frames(&mut writer, &writer_link, true, &mut rx).await;
            if let Some(conn) = writer_conn.upgrade() {
                conn.kill();
            }
        });
        let reader_conn = Arc::downgrade(&conn);
        let client = Arc::downgrade(&self.inner);
        let reader_task = tokio::spawn(async move {
            while let Ok(frame) = read_frame(&mut reader, &link.down).await {
                let Some(conn) = reader_conn.upgrade() else {
                    return;
                };
                dispatch(&conn, &client, frame);
            }
            if let Some(conn) = reader_conn.upgrade() {
                conn.kill();
            }
        });
        lock(&conn.tasks).extend([writer_task.abort_handle(), reader_task.abort_handle()]);
        let session =
            self.inner.config.session_base + self.inner.sessions.fetch_add(1, Ordering::SeqCst);
        let hello = conn.send(
            self.next_id(),
            Request::Hello {
                node: self.inner.config.node.clone(),
                session,
            },
        )?;
        // Re-establish subscriptions before anything else uses the connection.
        let resubscribe: Vec<Request> = lock(&self.inner.subs)
            .iter()
            .filter_map(|(sid, sub)| sub.resubscribe(*sid))
            .collect();
        for request in resubscribe {
            conn.send_and_forget(self.next_id(), request);
        }
        match hello.await {
            Ok(Response::Unit) => {}
            Ok(other) => {
                conn.kill();
                return Err(unexpected(other));
            }
            Err(_) => {
                conn.kill();
                return Err(unavailable("connection to the broker lost during hello"));
            }
        }
        *lock(&self.inner.conn) = Some(conn.clone());
        Ok(conn)
    }

    /// One request/response, bounded by the operation timeout on the node's clock.
    async fn call(&self, body: Request) -> Result<Response, BrokerError> {
        let operation = body.operation();
        let used: Mutex<Option<Arc<Conn>>> = Mutex::new(None);
        let work = async {
            let conn = self.connection().await?;
            *lock(&used) = Some(conn.clone());
            let reply = conn.send(self.next_id(), body)?;
            reply
                .await
                .map_err(|_| unavailable("connection to the broker lost"))
        };
        let timeout = self.inner.clock.sleep(self.inner.config.op_timeout);
        let result = tokio::select! {
            biased;
            result = work => result,
            _ = timeout => {
                // The connection may have lost a segment for good (turmoil does not retransmit):
                // start afresh on the next operation.
                if let Some(conn) = lock(&used).take() {
                    conn.kill();
                }
                Err(BrokerError::Timeout { operation: operation.to_owned() })
            }
        };
        match result? {
            Response::Error(e) => Err(e),
            other => Ok(other),
        }
    }

    /// Unsubscribes `sid` and waits for the host to push what it already held for it, then
    /// forgets it (its stream ends once the queued messages are read).
    async fn drain_sub(&self, sid: u64) {
        let _ = self.call(Request::Unsubscribe { sid }).await;
        lock(&self.inner.subs).remove(&sid);
    }

    fn forget_sub(&self, sid: u64) {
        lock(&self.inner.subs).remove(&sid);
        if let Some(conn) = self.current() {
            conn.send_and_forget(self.next_id(), Request::Unsubscribe { sid });
        }
    }

    fn start_pinger(&self) {
        if self.inner.pinger_started.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak: Weak<ClientInner> = Arc::downgrade(&self.inner);
        let clock = self.inner.clock.clone();
        let interval = self.inner.config.ping_interval;
        tokio::spawn(async move {
            loop {
                clock.sleep(interval).await;
                let Some(inner) = weak.upgrade() else { return };
                let client = SimBroker { inner };
                let closed: Vec<u64> = lock(&client.inner.subs)
                    .iter()
                    .filter(|(_, s)| s.is_closed())
                    .map(|(sid, _)| *sid)
                    .collect();
                for sid in closed {
                    client.forget_sub(sid);
                }
                if lock(&client.inner.subs).is_empty() {
                    continue;
                }
                // A failed ping closes the connection; the next one reconnects and resubscribes.
                let _ = client.call(Request::Ping).await;
            }
        });
    }
}

fn dispatch(conn: &Conn, client: &Weak<ClientInner>, frame: Frame) {
    match frame {
        Frame::Resp { id, body } => {
            if let Some(waiter) = lock(&conn.pending).remove(&id) {
                let _ = waiter.send(body);
            }
        }
        Frame::Msg { sid, message } => {
            let Some(client) = client.upgrade() else {
                return;
            };
            let subs = lock(&client.subs);
            match subs.get(&sid) {
                Some(ClientSub::Core { sender, .. }) | Some(ClientSub::Inbox { sender }) => {
                    // Like a NATS slow consumer: a full queue loses the message.
                    let _ = sender.try_send(message);
                }
                _ => {}
            }
        }
        Frame::Kv { sid, entry } => {
            let Some(client) = client.upgrade() else {
                return;
            };
            let mut subs = lock(&client.subs);
            if let Some(ClientSub::Watch {
                sender,
                last_revision,
                ..
            }) = subs.get_mut(&sid)
            {
                // After a reconnect the host resends current entries: skip what was seen.
                if entry.revision > *last_revision {
                    *last_revision = entry.revision;
                    let _ = sender.try_send(entry);
                }
            }
        }
        Frame::Req { .. } => {}
    }
}

/// A core subscription of a [`SimBroker`]; draining unsubscribes on the host and takes what it
/// still held.
struct SimSubscription {
    messages: ReceiverStream<Message>,
    client: SimBroker,
    sid: u64,
}

impl futures::Stream for SimSubscription {
    type Item = Message;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Message>> {
        std::pin::Pin::new(&mut self.messages).poll_next(cx)
    }
}

impl SubscriptionSource for SimSubscription {
    fn drain(&mut self) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(self.client.drain_sub(self.sid))
    }
}

impl Broker for SimBroker {
    async fn ensure_stream(&self, config: StreamConfig) -> Result<(), BrokerError> {
        match self.call(Request::EnsureStream(config)).await? {
            Response::Unit => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    async fn append(
        &self,
        subject: &str,
        headers: Headers,
        payload: Bytes,
        options: AppendOptions,
    ) -> Result<AppendAck, BrokerError> {
        let request = Request::Append {
            subject: subject.to_owned(),
            headers,
            payload,
            options,
        };
        match self.call(request).await? {
            Response::Ack {
                sequence,
                duplicate,
            } => Ok(AppendAck {
                sequence,
                duplicate,
            }),
            other => Err(unexpected(other)),
        }
    }

    async fn last(
        &self,
        stream: &str,
        subject: &str,
        from: ReadFrom,
    ) -> Result<Option<StoredMessage>, BrokerError> {
        let request = Request::Last {
            stream: stream.to_owned(),
            subject: subject.to_owned(),
            from,
        };
        match self.call(request).await? {
            Response::Stored(m) => Ok(m),
            other => Err(unexpected(other)),
        }
    }

    async fn next(
        &self,
        stream: &str,
        subject: &str,
        from_sequence: u64,
        from: ReadFrom,
    ) -> Result<Option<StoredMessage>, BrokerError> {
        let request = Request::Next {
            stream: stream.to_owned(),
            subject: subject.to_owned(),
            from_sequence,
            from,
        };
        match self.call(request).await? {
            Response::Stored(m) => Ok(m),
            other => Err(unexpected(other)),
        }
    }

    async fn read(
        &self,
        stream: &str,
        subject: &str,
        from_sequence: u64,
    ) -> Result<Vec<StoredMessage>, BrokerError> {
        let request = Request::Read {
            stream: stream.to_owned(),
            subject: subject.to_owned(),
            from_sequence,
        };
        match self.call(request).await? {
            Response::StoredList(ms) => Ok(ms),
            other => Err(unexpected(other)),
        }
    }

    async fn publish(
        &self,
        subject: &str,
        headers: Headers,
        payload: Bytes,
    ) -> Result<(), BrokerError> {
        let request = Request::Publish {
            subject: subject.to_owned(),
            headers,
            payload,
        };
        match self.call(request).await? {
            Response::Unit => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    async fn subscribe(&self, pattern: &str) -> Result<Subscription, BrokerError> {
        let sid = self.inner.next_sid.fetch_add(1, Ordering::SeqCst);
        let (sender, receiver) = mpsc::channel(PUSH_QUEUE_MAX);
        lock(&self.inner.subs).insert(
            sid,
            ClientSub::Core {
                pattern: pattern.to_owned(),
                sender,
            },
        );
        let request = Request::Subscribe {
            sid,
            pattern: pattern.to_owned(),
        };
        match self.call(request).await {
            Ok(_) => {
                self.start_pinger();
                Ok(Subscription::from_source(SimSubscription {
                    messages: ReceiverStream::new(receiver),
                    client: self.clone(),
                    sid,
                }))
            }
            Err(e) => {
                self.forget_sub(sid);
                Err(e)
            }
        }
    }

    async fn request(
        &self,
        subject: &str,
        headers: Headers,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Message, BrokerError> {
        let sid = self.inner.next_sid.fetch_add(1, Ordering::SeqCst);
        let inbox = format!("{}.{sid}", self.inner.config.inbox_prefix);
        let (sender, mut receiver) = mpsc::channel(1);
        lock(&self.inner.subs).insert(sid, ClientSub::Inbox { sender });
        let request = Request::Ask {
            sid,
            inbox,
            subject: subject.to_owned(),
            headers,
            payload,
        };
        let result = match self.call(request).await {
            Err(e) => Err(e),
            Ok(_) => {
                tokio::select! {
                    biased;
                    reply = receiver.recv() => reply.ok_or_else(|| BrokerError::Timeout {
                        operation: format!("a reply to {subject:?}"),
                    }),
                    _ = self.inner.clock.sleep(timeout) => Err(BrokerError::Timeout {
                        operation: format!("a reply to {subject:?}"),
                    }),
                }
            }
        };
        self.forget_sub(sid);
        result
    }

    async fn kv_ensure(&self, config: KvConfig) -> Result<(), BrokerError> {
        match self.call(Request::KvEnsure(config)).await? {
            Response::Unit => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    async fn kv_get(&self, bucket: &str, key: &str) -> Result<Option<KvEntry>, BrokerError> {
        let request = Request::KvGet {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
        };
        match self.call(request).await? {
            Response::Entry(e) => Ok(e),
            other => Err(unexpected(other)),
        }
    }

    async fn kv_create(&self, bucket: &str, key: &str, value: Bytes) -> Result<u64, BrokerError> {
        let request = Request::KvCreate {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            value,
        };
        match self.call(request).await? {
            Response::Revision(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    async fn kv_update(
        &self,
        bucket: &str,
        key: &str,
        value: Bytes,
        revision: u64,
    ) -> Result<u64, BrokerError> {
        let request = Request::KvUpdate {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            value,
            revision,
        };
        match self.call(request).await? {
            Response::Revision(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    async fn kv_put(&self, bucket: &str, key: &str, value: Bytes) -> Result<u64, BrokerError> {
        let request = Request::KvPut {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            value,
        };
        match self.call(request).await? {
            Response::Revision(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    async fn kv_delete(&self, bucket: &str, key: &str) -> Result<(), BrokerError> {
        let request = Request::KvDelete {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
        };
        match self.call(request).await? {
            Response::Unit => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    async fn kv_entries(&self, bucket: &str) -> Result<Vec<KvEntry>, BrokerError> {
        let request = Request::KvEntries {
            bucket: bucket.to_owned(),
        };
        match self.call(request).await? {
            Response::Entries(es) => Ok(es),
            other => Err(unexpected(other)),
        }
    }

    async fn kv_watch(&self, bucket: &str, key_pattern: &str) -> Result<KvWatch, BrokerError> {
        let sid = self.inner.next_sid.fetch_add(1, Ordering::SeqCst);
        let (sender, receiver) = mpsc::channel(PUSH_QUEUE_MAX);
        lock(&self.inner.subs).insert(
            sid,
            ClientSub::Watch {
                bucket: bucket.to_owned(),
                pattern: key_pattern.to_owned(),
                sender,
                last_revision: 0,
            },
        );
        let request = Request::KvWatch {
            sid,
            bucket: bucket.to_owned(),
            pattern: key_pattern.to_owned(),
        };
        match self.call(request).await {
            Ok(_) => {
                self.start_pinger();
                Ok(KvWatch::new(ReceiverStream::new(receiver)))
            }
            Err(e) => {
                self.forget_sub(sid);
                Err(e)
            }
        }
    }
}
