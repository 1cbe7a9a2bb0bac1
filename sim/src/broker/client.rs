//! The nodes' side: [`SimBroker`], a client of the broker host modelled on async-nats.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use aether::broker::{BrokerError, KvEntry, Message, SubscriptionSource};
use aether::clock::{Clock, SharedRng};

use super::protocol::{Frame, Request, Response};
use super::wire::{Wire, read_frame, write_frames};
use super::{BROKER_PORT, CONNECTION_QUEUE_MAX, lock, unavailable, unexpected};
use crate::clock::SimClock;
use crate::clock::sim_now;
use crate::engine;

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

pub(super) enum ClientSub {
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
    pub(super) fn is_closed(&self) -> bool {
        match self {
            ClientSub::Core { sender, .. } | ClientSub::Inbox { sender } => sender.is_closed(),
            ClientSub::Watch { sender, .. } => sender.is_closed(),
        }
    }

    /// The request that re-establishes this subscription on a new connection.
    pub(super) fn resubscribe(&self, sid: u64) -> Option<Request> {
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

/// Kills a connection when dropped, unless disarmed.
struct KillOnDrop(Option<Arc<Conn>>);

impl KillOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            conn.kill();
        }
    }
}

pub(super) struct Conn {
    pub(super) tx: mpsc::Sender<Frame>,
    pub(super) pending: Mutex<BTreeMap<u64, oneshot::Sender<Response>>>,
    pub(super) dead: AtomicBool,
    pub(super) tasks: Mutex<Vec<aether::rt::AbortHandle>>,
}

impl Conn {
    pub(super) fn kill(&self) {
        self.dead.store(true, Ordering::SeqCst);
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
        lock(&self.pending).clear();
    }

    pub(super) fn is_alive(&self) -> bool {
        !self.dead.load(Ordering::SeqCst)
    }

    /// Queues a request; the receiver yields its response (or an error when the connection
    /// dies first).
    pub(super) fn send(
        &self,
        id: u64,
        sent_at: Duration,
        body: Request,
    ) -> Result<oneshot::Receiver<Response>, BrokerError> {
        let (reply_tx, reply_rx) = oneshot::channel();
        lock(&self.pending).insert(id, reply_tx);
        if !self.is_alive() || self.tx.try_send(Frame::Req { id, sent_at, body }).is_err() {
            lock(&self.pending).remove(&id);
            return Err(unavailable("connection to the broker lost"));
        }
        Ok(reply_rx)
    }

    /// Queues a request whose response nobody waits for.
    pub(super) fn send_and_forget(&self, id: u64, body: Request) {
        let _ = self.tx.try_send(Frame::Req {
            id,
            sent_at: sim_now(),
            body,
        });
    }
}

pub(super) struct ClientInner {
    pub(super) config: SimBrokerConfig,
    pub(super) clock: SimClock,
    pub(super) wire: Wire,
    pub(super) conn: Mutex<Option<Arc<Conn>>>,
    pub(super) connect_lock: tokio::sync::Mutex<()>,
    pub(super) next_id: AtomicU64,
    pub(super) next_sid: AtomicU64,
    pub(super) sessions: AtomicU64,
    pub(super) subs: Mutex<BTreeMap<u64, ClientSub>>,
    pub(super) pinger_started: AtomicBool,
}

/// The nodes' [`Broker`](aether::broker::Broker): a client of the broker host over simulated TCP. Cheap to clone;
/// clones share the connection.
#[derive(Clone)]
pub struct SimBroker {
    pub(super) inner: Arc<ClientInner>,
}

impl std::fmt::Debug for SimBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SimBroker({})", self.inner.config.node)
    }
}

impl SimBroker {
    /// A client that connects lazily through `wire` (the broker host's, [`BrokerHost::wire`](super::BrokerHost::wire)),
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

    pub(super) fn next_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::SeqCst)
    }

    pub(super) fn current(&self) -> Option<Arc<Conn>> {
        lock(&self.inner.conn).clone().filter(|c| c.is_alive())
    }

    pub(super) async fn connection(&self) -> Result<Arc<Conn>, BrokerError> {
        if let Some(conn) = self.current() {
            return Ok(conn);
        }
        let _guard = self.inner.connect_lock.lock().await;
        if let Some(conn) = self.current() {
            return Ok(conn);
        }
        let stream = engine::TcpStream::connect(engine::broker_address(BROKER_PORT))
            .await
            .map_err(|e| unavailable(format!("cannot connect to the broker: {e}")))?;
        let (mut reader, mut writer) = engine::split(stream);
        let (link_id, link) = self.inner.wire.open(&self.inner.config.node);
        let announced = match writer.write_all(&link_id.to_be_bytes()).await {
            Ok(()) => writer.flush().await,
            Err(e) => Err(e),
        };
        announced.map_err(|e| unavailable(format!("cannot reach the broker: {e}")))?;
        let (tx, mut rx) = mpsc::channel::<Frame>(CONNECTION_QUEUE_MAX);
        let conn = Arc::new(Conn {
            tx,
            pending: Mutex::new(BTreeMap::new()),
            dead: AtomicBool::new(false),
            tasks: Mutex::new(Vec::new()),
        });
        let writer_conn = Arc::downgrade(&conn);
        let writer_link = link.clone();
        let writer_task = aether::rt::spawn(async move {
            write_frames(&mut writer, &writer_link, true, &mut rx).await;
            if let Some(conn) = writer_conn.upgrade() {
                conn.kill();
            }
        });
        let reader_conn = Arc::downgrade(&conn);
        let client = Arc::downgrade(&self.inner);
        let reader_task = aether::rt::spawn(async move {
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
        // Until the hello is answered the connection is this future's alone: if the caller
        // gives up (an operation timeout drops this future), its tasks must go with it, or
        // the reader waits on a dead link forever, holding its socket — a port leak that
        // exhausted turmoil's ephemeral ports after ~34 simulated hours (long-horizon seed 1).
        let unanswered = KillOnDrop(Some(conn.clone()));
        let session =
            self.inner.config.session_base + self.inner.sessions.fetch_add(1, Ordering::SeqCst);
        let hello = conn.send(
            self.next_id(),
            sim_now(),
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
        unanswered.disarm();
        *lock(&self.inner.conn) = Some(conn.clone());
        Ok(conn)
    }

    /// One request/response, bounded by the operation timeout on the node's clock. The request
    /// carries the true time of this call: when the node sent it, however long the connection
    /// takes to (re)establish.
    pub(super) async fn call(&self, body: Request) -> Result<Response, BrokerError> {
        let sent_at = sim_now();
        let operation = body.operation();
        let used: Mutex<Option<Arc<Conn>>> = Mutex::new(None);
        let work = async {
            let conn = self.connection().await?;
            *lock(&used) = Some(conn.clone());
            let reply = conn.send(self.next_id(), sent_at, body)?;
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
    pub(super) async fn drain_sub(&self, sid: u64) {
        let _ = self.call(Request::Unsubscribe { sid }).await;
        lock(&self.inner.subs).remove(&sid);
    }

    pub(super) fn forget_sub(&self, sid: u64) {
        lock(&self.inner.subs).remove(&sid);
        if let Some(conn) = self.current() {
            conn.send_and_forget(self.next_id(), Request::Unsubscribe { sid });
        }
    }

    pub(super) fn start_pinger(&self) {
        if self.inner.pinger_started.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak: Weak<ClientInner> = Arc::downgrade(&self.inner);
        let clock = self.inner.clock.clone();
        let interval = self.inner.config.ping_interval;
        aether::rt::spawn(async move {
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

pub(super) fn dispatch(conn: &Conn, client: &Weak<ClientInner>, frame: Frame) {
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
pub(super) struct SimSubscription {
    pub(super) messages: ReceiverStream<Message>,
    pub(super) client: SimBroker,
    pub(super) sid: u64,
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
