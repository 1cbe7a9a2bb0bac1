//! The broker host: the in-process broker's state machine behind the protocol, with the faults
//! the host injects itself (replies dropped after a commit).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use aether::broker::{
    BrokerError, BrokerState, DEFAULT_MAX_PAYLOAD, KvEntry, Message, Now, ReadFrom,
};
use aether::clock::SharedRng;

use super::client::{SimBroker, SimBrokerConfig};
use super::protocol::{Frame, Request, Response};
use super::wire::{TOKEN_BYTES, Wire, read_frame, write_frames};
use super::{BROKER_PORT, CONNECTION_QUEUE_MAX, PUSH_QUEUE_MAX, lock};
use crate::clock::{SimClock, epoch, sim_now};
use crate::history::{History, OpKind};

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

pub(super) struct HostShared {
    state: Mutex<BrokerState>,
    faults: Mutex<BrokerFaults>,
    stats: Mutex<BrokerStats>,
    rng: SharedRng,
    /// node → (latest session, its connection's close signal).
    sessions: Mutex<BTreeMap<String, (u64, Arc<tokio::sync::Notify>)>>,
    /// Frames in flight on every connection.
    wire: Wire,
    /// Where KV writes to the buckets of interest are recorded, if anywhere.
    kv_log: Mutex<Option<KvLog>>,
}

/// Records the KV writes the host applies, for the checkers that look at what a leader or a
/// projector actually wrote (not what it believed it wrote).
struct KvLog {
    history: History,
    buckets: fn(&str) -> bool,
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

pub(super) fn host_now() -> Now {
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
                kv_log: Mutex::new(None),
            }),
        }
    }

    /// Runs `f` on the broker state with the given time (for checkers, outside the simulation).
    pub fn with_state<T>(&self, f: impl FnOnce(&mut BrokerState) -> T) -> T {
        f(&mut lock(&self.shared.state))
    }

    /// Records every KV write to a bucket `buckets` accepts into `history`, at the moment the
    /// host applies it (true time), as a [`OpKind::KvWrite`] of the writing node.
    pub fn record_kv_writes(&self, history: History, buckets: fn(&str) -> bool) {
        *lock(&self.shared.kv_log) = Some(KvLog { history, buckets });
    }

    fn log_kv_write(
        &self,
        conn: &HostConn,
        sent_at: Duration,
        bucket: &str,
        key: &str,
        value: &[u8],
        revision: u64,
    ) {
        let log = lock(&self.shared.kv_log);
        let Some(log) = log.as_ref().filter(|log| (log.buckets)(bucket)) else {
            return;
        };
        let node = conn.node.as_ref().map_or("?", |(node, _)| node.as_str());
        log.history.record(
            sim_now(),
            node,
            OpKind::KvWrite {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
                value: String::from_utf8_lossy(value).into_owned(),
                revision,
                sent_at,
            },
        );
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

    pub(super) async fn serve_connection(self, stream: turmoil::net::TcpStream) {
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
            let Frame::Req { id, sent_at, body } = frame else {
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
            let response = self.handle(&mut conn, sent_at, body);
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

    pub(super) fn drop_sub(&self, sub: HostSub) {
        if let Some(id) = sub.state_id {
            lock(&self.shared.state).unsubscribe(id);
        }
        sub.forwarder.abort();
    }

    pub(super) fn forward_messages(
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

    pub(super) fn handle(&self, conn: &mut HostConn, sent_at: Duration, body: Request) -> Response {
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
                .kv_create(&bucket, &key, value.clone(), now)
                .inspect(|r| self.log_kv_write(conn, sent_at, &bucket, &key, &value, *r))
                .map(Response::Revision),
            Request::KvUpdate {
                bucket,
                key,
                value,
                revision,
            } => state
                .kv_update(&bucket, &key, value.clone(), revision, now)
                .inspect(|r| self.log_kv_write(conn, sent_at, &bucket, &key, &value, *r))
                .map(Response::Revision),
            Request::KvPut { bucket, key, value } => state
                .kv_put(&bucket, &key, value.clone(), now)
                .inspect(|r| self.log_kv_write(conn, sent_at, &bucket, &key, &value, *r))
                .map(Response::Revision),
            Request::KvDelete { bucket, key } => state
                .kv_delete(&bucket, &key, now)
                .inspect(|()| self.log_kv_write(conn, sent_at, &bucket, &key, &[], 0))
                .map(|()| Response::Unit),
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

pub(super) struct HostSub {
    state_id: Option<u64>,
    forwarder: tokio::task::JoinHandle<()>,
}

pub(super) struct HostConn {
    tx: mpsc::Sender<Frame>,
    subs: BTreeMap<u64, HostSub>,
    node: Option<(String, u64)>,
    /// A forwarder that must push what it holds before the current request is answered: an
    /// unsubscribed subscription's messages already on their way (NATS delivers those).
    flush_before_reply: Option<tokio::task::JoinHandle<()>>,
}
