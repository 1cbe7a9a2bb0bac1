//! The broker host: the in-process broker's state machine behind the protocol, with the faults
//! the host injects itself (replies dropped after a commit).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use aether::broker::{
    AppendOptions, BrokerError, BrokerState, DEFAULT_MAX_PAYLOAD, Headers, Message, Now,
};
use aether::clock::SharedRng;
use bytes::Bytes;

use super::client::{SimBroker, SimBrokerConfig};
use super::protocol::{Frame, Request, Response};
use super::replicas::{Proposal, Replicas, ReplicationConfig, Stale, Write};
use super::wire::{TOKEN_BYTES, Wire, read_frame, write_frames};
use super::{BROKER_PORT, CONNECTION_QUEUE_MAX, PUSH_QUEUE_MAX, lock};
use crate::clock::{SimClock, epoch, sim_now};
use crate::engine;
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
    pub(super) state: Mutex<BrokerState>,
    faults: Mutex<BrokerFaults>,
    stats: Mutex<BrokerStats>,
    pub(super) rng: SharedRng,
    /// node → (latest session, its connection's close signal).
    sessions: Mutex<BTreeMap<String, (u64, Arc<tokio::sync::Notify>)>>,
    /// Frames in flight on every connection.
    wire: Wire,
    /// Where KV writes to the buckets of interest are recorded, if anywhere.
    kv_log: Mutex<Option<KvLog>>,
    /// The replicated model's followers and election state (`None`: one linearizable server).
    pub(super) replicas: Mutex<Option<Replicas>>,
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
    pub(super) shared: Arc<HostShared>,
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
                replicas: Mutex::new(None),
            }),
        }
    }

    /// A broker modelling a three-replica stream cluster (see [`super::replicas`]), its own
    /// random choices (which reply to drop, which replica answers) drawn from `rng`.
    pub fn replicated(rng: SharedRng, config: ReplicationConfig) -> Self {
        let host = Self::new(rng);
        let replicas = Replicas::new(config, &host.shared.rng);
        *lock(&host.shared.replicas) = Some(replicas);
        host
    }

    /// Whether this host models a replicated stream cluster.
    pub fn is_replicated(&self) -> bool {
        lock(&self.shared.replicas).is_some()
    }

    /// Starts a stream-leader election at true time `now` lasting `length` (replicated model
    /// only).
    pub fn fail_over(&self, now: Duration, length: Duration) {
        if let Some(r) = lock(&self.shared.replicas).as_mut() {
            r.fail_over(now, length);
        }
    }

    /// Cuts the stream leader off from its followers at true time `now` for `length`: appends
    /// are proposed and not answered, then commit (`commits`) or are lost to a new leader, whose
    /// predecessor answers from its old data for `stale_for` more (replicated model only; see
    /// [`super::replicas`]).
    pub fn cut_off_leader(
        &self,
        now: Duration,
        length: Duration,
        commits: bool,
        stale_for: Duration,
    ) {
        if let Some(r) = lock(&self.shared.replicas).as_mut() {
            r.cut_off(now, length, commits, stale_for);
        }
    }

    /// Sets follower `index`'s apply lag (`None`: back to a normal one; replicated model only).
    pub fn set_follower_lag(&self, index: usize, lag: Option<Duration>) {
        if let Some(r) = lock(&self.shared.replicas).as_mut() {
            r.set_lag(index, lag, &self.shared.rng);
        }
    }

    /// Committed writes the slowest follower has yet to apply (0 for the single-server model).
    pub fn replication_backlog(&self) -> usize {
        lock(&self.shared.replicas)
            .as_ref()
            .map_or(0, Replicas::backlog)
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

    pub(super) fn log_kv_write(
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
    pub async fn serve(self) -> crate::engine::HostResult {
        let listener = engine::TcpListener::bind(("0.0.0.0", BROKER_PORT)).await?;
        lock(&self.shared.sessions).clear();
        loop {
            let (stream, _) = listener.accept().await?;
            lock(&self.shared.stats).connections += 1;
            let host = self.clone();
            engine::spawn_local(host.serve_connection(stream));
        }
    }

    pub(super) async fn serve_connection(self, stream: engine::TcpStream) {
        let (mut reader, mut writer) = engine::split(stream);
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
        let writer_task = engine::spawn_local(async move {
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
            self.settle_cut_off();
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
            // During a stream-leader election, as a real R3 cluster behaves (measured in
            // tests/nats_replicas.rs): a leader read gets no answer (the client times out), a
            // write fails at once with "no leader", and a write in flight when the election
            // began is never answered but may still be stored by the new leader.
            let electing = lock(&self.shared.replicas)
                .as_mut()
                .is_some_and(|r| r.electing(sim_now()));
            if electing && body.is_leader_read() {
                continue;
            }
            if electing && body.is_replicated_write() {
                let refused = Response::Error(BrokerError::Unavailable {
                    reason: "stream has no leader (election in progress)".into(),
                });
                if conn
                    .tx
                    .send(Frame::Resp { id, body: refused })
                    .await
                    .is_err()
                {
                    break;
                }
                continue;
            }
            let stale_probe = match &body {
                Request::Append {
                    subject, options, ..
                } if self.stale_answers() => options
                    .expected_last_subject_sequence
                    .map(|expected| (subject.clone(), expected)),
                _ => None,
            };
            if body.is_replicated_write() && !self.await_commit().await {
                // The election began while the write was on its way to a quorum: never
                // answered; half of the time the new leader has it after all.
                if self.shared.rng.next_u64().is_multiple_of(2) {
                    self.settle_cut_off();
                    let _ = self.handle(&mut conn, sent_at, body);
                }
                continue;
            }
            // A cut that ended while this write waited is settled before it commits.
            self.settle_cut_off();
            // Also a write that was on its way to a quorum when the cut began: the leader
            // cannot commit it either.
            if let Request::Append {
                subject,
                headers,
                payload,
                options,
            } = &body
                && let Some(answer) = self.propose(subject, headers, payload, options)
            {
                // Refused or answered at once by the cut-off leader, or proposed (`None`) and
                // never answered.
                if let Some(body) = answer
                    && conn.tx.send(Frame::Resp { id, body }).await.is_err()
                {
                    break;
                }
                continue;
            }
            let mut response = self.handle(&mut conn, sent_at, body);
            if let Some((subject, expected)) = stale_probe
                && let Some(actual) = self.stale_refusal(&subject, expected)
            {
                // The deposed leader's answer arrived first.
                response = Response::Error(BrokerError::WrongLastSequence { expected, actual });
            }
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

    /// Settles a stream-leader cut-off that has ended: its proposals commit in order, or are
    /// lost to a new leader (and the deposed one starts answering from its old data).
    fn settle_cut_off(&self) {
        let now = host_now();
        let mut state = lock(&self.shared.state);
        let mut replicas = lock(&self.shared.replicas);
        let Some(r) = replicas.as_mut() else {
            return;
        };
        let Some(cut) = r.ended_cut_off(now.monotonic) else {
            return;
        };
        if !cut.commits {
            r.stale = Some(Stale {
                until: cut.until + cut.stale_for,
                as_of: state.last_sequences(),
            });
            return;
        }
        for p in cut.pending {
            // Nothing else committed to these streams meanwhile, so each takes the sequence
            // it was proposed at (unless its subject's records expired: then the expectation
            // fails now, and nobody hears of it either way).
            if let Ok(ack) = state.append(
                &p.subject,
                p.headers.clone(),
                p.payload.clone(),
                p.options.clone(),
                now,
            ) {
                debug_assert_eq!(
                    ack.sequence, p.sequence,
                    "a proposal commits where proposed"
                );
                r.committed(
                    now,
                    Write::Append {
                        subject: p.subject,
                        headers: p.headers,
                        payload: p.payload,
                        options: p.options,
                        result: (ack.sequence, ack.duplicate),
                    },
                );
            }
        }
    }

    /// An append while the stream leader is cut off from its followers: `None` when it is not
    /// (handled as usual); `Some(Some(answer))` when the cut-off leader answers at once — a
    /// refusal when the subject moved in its proposed state, an acknowledgement when the
    /// message id is a committed duplicate; `Some(None)` when it is proposed and not answered.
    fn propose(
        &self,
        subject: &str,
        headers: &Headers,
        payload: &Bytes,
        options: &AppendOptions,
    ) -> Option<Option<Response>> {
        let now = host_now();
        let mut state = lock(&self.shared.state);
        let mut replicas = lock(&self.shared.replicas);
        let cut = replicas.as_mut()?.cutting_off(now.monotonic)?;
        let id = options.message_id.as_deref();
        // An unknown stream is refused as usual.
        let view = state.subject_view(subject, None, id, now)?;
        let proposed_last = cut
            .pending
            .iter()
            .rev()
            .find(|p| p.subject == subject)
            .map_or(view.subject_last, |p| p.sequence);
        if let Some(expected) = options.expected_last_subject_sequence
            && expected != proposed_last
        {
            return Some(Some(Response::Error(BrokerError::WrongLastSequence {
                expected,
                actual: proposed_last,
            })));
        }
        if let Some(sequence) = view.duplicate_of {
            return Some(Some(Response::Ack {
                sequence,
                duplicate: true,
            }));
        }
        if id.is_some_and(|id| {
            cut.pending
                .iter()
                .any(|p| p.options.message_id.as_deref() == Some(id))
        }) {
            return Some(None);
        }
        let earlier = cut
            .pending
            .iter()
            .filter(|p| p.stream == view.stream)
            .count() as u64;
        cut.pending.push(Proposal {
            subject: subject.to_owned(),
            headers: headers.clone(),
            payload: payload.clone(),
            options: options.clone(),
            sequence: view.stream_last + 1 + earlier,
            stream: view.stream,
        });
        Some(None)
    }

    /// Whether a deposed stream leader answers appends now.
    fn stale_answers(&self) -> bool {
        lock(&self.shared.replicas)
            .as_ref()
            .is_some_and(|r| r.stale_answers(sim_now()))
    }

    /// The deposed leader's refusal of an append to `subject` expecting `expected`, when its
    /// answer is the one the caller hears (half of the time) and its old data disagrees.
    fn stale_refusal(&self, subject: &str, expected: u64) -> Option<u64> {
        let now = host_now();
        let mut state = lock(&self.shared.state);
        let mut replicas = lock(&self.shared.replicas);
        let r = replicas.as_mut()?;
        let stream = state.subject_view(subject, None, None, now)?.stream;
        let as_of = r.stale_as_of(now.monotonic, &stream)?;
        let actual = state
            .subject_view(subject, Some(as_of), None, now)?
            .subject_last;
        (actual != expected && self.shared.rng.next_u64().is_multiple_of(2)).then_some(actual)
    }

    /// Waits for a write's quorum in the replicated model; false when a stream-leader election
    /// runs before or after (the write is lost). Always true for the single-server model.
    async fn await_commit(&self) -> bool {
        let latency = match lock(&self.shared.replicas).as_mut() {
            None => return true,
            Some(r) => {
                if r.electing(sim_now()) {
                    return false;
                }
                r.commit_latency(&self.shared.rng)
            }
        };
        aether::rt::sleep(latency).await;
        lock(&self.shared.replicas)
            .as_mut()
            .is_none_or(|r| !r.electing(sim_now()))
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
    ) -> (mpsc::Sender<Message>, aether::rt::JoinHandle<()>) {
        let (sender, mut receiver) = mpsc::channel::<Message>(PUSH_QUEUE_MAX);
        let tx = tx.clone();
        let task = engine::spawn_local(async move {
            while let Some(message) = receiver.recv().await {
                if tx.send(Frame::Msg { sid, message }).await.is_err() {
                    break;
                }
            }
        });
        (sender, task)
    }
}

pub(super) struct HostSub {
    pub(super) state_id: Option<u64>,
    pub(super) forwarder: aether::rt::JoinHandle<()>,
}

pub(super) struct HostConn {
    pub(super) tx: mpsc::Sender<Frame>,
    pub(super) subs: BTreeMap<u64, HostSub>,
    pub(super) node: Option<(String, u64)>,
    /// A forwarder that must push what it holds before the current request is answered: an
    /// unsubscribed subscription's messages already on their way (NATS delivers those).
    pub(super) flush_before_reply: Option<aether::rt::JoinHandle<()>>,
}
