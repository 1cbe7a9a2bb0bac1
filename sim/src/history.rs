//! The history recorder: every operation a workload performs, as invoke and completion with
//! simulated time (Jepsen style: ok, fail, or ambiguous), plus the fault timeline and a trace
//! whose hash proves that a run is a pure function of its seed.
//!
//! Operations a crashed node never completed stay [`Outcome::Pending`] and count as ambiguous.

use std::fmt::{self, Write as _};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aether::event::ExpectedVersion;

/// One event as an operation saw it: version, id, and its data as canonical JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventDigest {
    /// Version in the actor's stream.
    pub version: u64,
    /// Event id.
    pub id: String,
    /// FNV-1a hash of the data serialised as JSON (serde_json maps are ordered, so this is
    /// canonical).
    pub data: u64,
}

/// An `io::Write` that only hashes what is written (FNV-1a).
struct Fnv(u64);

impl std::io::Write for Fnv {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for byte in buf {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl EventDigest {
    /// The digest of `event`.
    pub fn of(event: &aether::event::Event) -> Self {
        let mut data = Fnv(0xcbf2_9ce4_8422_2325);
        serde_json::to_writer(&mut data, &event.data).expect("JSON values serialise");
        Self {
            version: event.version,
            id: event.id.clone(),
            data: data.0,
        }
    }
}

/// What an operation tried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// `EventStore::append` of events with these ids.
    Append {
        /// The actor.
        actor: String,
        /// The expected version passed.
        expected: ExpectedVersion,
        /// Ids of the appended events, in order.
        event_ids: Vec<String>,
    },
    /// `EventStore::events(actor, from)` (or `events_with_errors` on a damaged actor).
    Read {
        /// The actor.
        actor: String,
        /// The first version asked for.
        from: u64,
    },
    /// Loading an actor as the actor host does: its latest snapshot, then the events after it.
    Load {
        /// The actor.
        actor: String,
    },
    /// `EventStore::save_snapshot` of `actor` at `version`.
    SaveSnapshot {
        /// The actor.
        actor: String,
        /// The snapshot's version.
        version: u64,
    },
    /// `EventStore::latest_version(actor)`.
    LatestVersion {
        /// The actor.
        actor: String,
    },
    /// A raw broker append of a record that is not a commit (damage on purpose).
    Damage {
        /// The actor whose subject received the record.
        actor: String,
    },
    /// A cluster observation (leader claimed, assignment applied, ...), recorded as one
    /// instantaneous operation.
    Cluster(ClusterObservation),
    /// `ActorHost::send` of a command of a user's aggregate (the harness, [`crate::harness`]):
    /// its actor and the command as `Debug` prints it.
    UserCommand {
        /// The actor.
        actor: String,
        /// The command.
        command: String,
    },
    /// `ActorHost::send` of a counter command (add `delta`, or take `-delta` — refused below
    /// zero) whose event carries id `id`.
    Command {
        /// The actor.
        actor: String,
        /// The change asked for.
        delta: i64,
        /// The command's id, which is also the id of the event it stores.
        id: String,
    },
    /// What a bus subscriber received since its previous record: deliveries in order, and how
    /// many events it was told it missed (`RecvError::Lagged`).
    BusReceived {
        /// The subscriber (`<node>.<incarnation>.<name>`).
        subscriber: String,
        /// Deliveries, in the order received.
        deliveries: Vec<BusDigest>,
        /// Events reported missed.
        lagged: u64,
    },
    /// One `Projector::step` of a projection.
    ProjectorStep {
        /// The projection.
        projection: String,
    },
    /// A projection handler finished with a page (recorded by the handler after its own work
    /// succeeded): the positions of the commits it handled.
    Handled {
        /// The projection.
        projection: String,
        /// Positions of the commits in the page.
        positions: Vec<u64>,
    },
    /// A write the broker host applied to a KV bucket (recorded by the host at the moment it
    /// took effect, in true time): the lease, the assignment, checkpoints.
    KvWrite {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// The value written (UTF-8 JSON; empty for a delete).
        value: String,
        /// The revision it got.
        revision: u64,
        /// When the writer sent it, in true time.
        sent_at: Duration,
    },
}

/// One event as a bus subscriber received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BusDigest {
    /// The publishing node.
    pub origin: String,
    /// The publishing bus's session.
    pub session: u64,
    /// Its number in the origin session's numbering of the namespace.
    pub sequence: u64,
    /// The stored event the notification announces: actor, version, event id.
    pub actor: String,
    /// See `actor`.
    pub version: u64,
    /// See `actor`.
    pub event_id: String,
}

/// A fact a node reported about the cluster. The times in it are recorded as the node's own
/// monotonic clock readings and turned into true (simulation) time after the run by
/// [`ClusterObservation::to_true_time`]: a deadline is a future reading when it is reported, and
/// only once the run is over is every later rate change of the node's clock known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterObservation {
    /// A cluster node started on this host (a fresh instance: nothing applied, not leading).
    Started,
    /// The node acts as leader under `token` from now until `deadline` unless renewed.
    Leading {
        /// Fencing token (lease revision).
        token: u64,
        /// Its step-down deadline, in true time.
        deadline: Duration,
    },
    /// The node renewed its lease: it may act until `deadline`.
    Renewed {
        /// Fencing token.
        token: u64,
        /// The new deadline, in true time.
        deadline: Duration,
        /// When the renewal was sent, in true time.
        sent_at: Duration,
    },
    /// The node stopped acting as leader under `token`.
    Stepped {
        /// Fencing token.
        token: u64,
        /// The last instant it could have acted as leader, in true time.
        acted_until: Duration,
        /// Why (the library's reason).
        reason: String,
    },
    /// The node, as leader under `token`, published the assignment of `epoch`.
    Published {
        /// Assignment epoch.
        epoch: u64,
        /// The publisher's token.
        token: u64,
        /// When the publishing write was sent, in true time.
        sent_at: Duration,
    },
    /// The node applied (hosts shards under) the assignment of `epoch`.
    Applied {
        /// Assignment epoch.
        epoch: u64,
        /// The epoch it hosted under before (this instance).
        previous: Option<u64>,
        /// Shards the node hosts under it.
        shards: Vec<u32>,
    },
    /// The node stopped hosting these shards (hosted under `epoch`).
    Released {
        /// The epoch they were hosted under.
        epoch: u64,
        /// The shards.
        shards: Vec<u32>,
    },
    /// The node left the cluster cleanly (released its lease, hosts nothing).
    Stopped,
    /// The host crashed (recorded by the fault injector): whatever it did ends here.
    Down,
    /// A periodic snapshot of the node's view (liveness phase).
    View {
        /// The leader it reads from the lease key, with its token.
        leader: Option<(String, u64)>,
        /// Whether it acts as leader itself.
        leading: bool,
        /// Live members it knows.
        members: Vec<String>,
        /// The assignment epoch it applied.
        epoch: Option<u64>,
        /// Shards it hosts.
        hosted: Vec<u32>,
    },
}

impl ClusterObservation {
    /// Maps the node's clock readings in this observation to true time with `true_time_of`.
    pub fn to_true_time(&mut self, true_time_of: impl Fn(Duration) -> Duration) {
        match self {
            ClusterObservation::Leading { deadline, .. } => *deadline = true_time_of(*deadline),
            ClusterObservation::Renewed {
                deadline, sent_at, ..
            } => {
                *deadline = true_time_of(*deadline);
                *sent_at = true_time_of(*sent_at);
            }
            ClusterObservation::Stepped { acted_until, .. } => {
                *acted_until = true_time_of(*acted_until);
            }
            ClusterObservation::Published { sent_at, .. } => *sent_at = true_time_of(*sent_at),
            _ => {}
        }
    }
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not completed (yet, or ever: the node crashed). Ambiguous.
    Pending,
    /// An append succeeded.
    Appended {
        /// Commit id.
        commit_id: String,
        /// Stream sequence of the commit.
        sequence: u64,
        /// The stored events.
        events: Vec<EventDigest>,
    },
    /// A read returned these events.
    Read {
        /// The events.
        events: Vec<EventDigest>,
    },
    /// A read around damage (`events_with_errors`) returned these events and reported damaged
    /// records at these stream sequences.
    ReadAround {
        /// The valid events.
        events: Vec<EventDigest>,
        /// Stream sequences of the damaged records.
        damaged: Vec<u64>,
    },
    /// `latest_version` answered this version.
    Version(u64),
    /// A load found this snapshot (its version and the state's count) and these events after
    /// it.
    Loaded {
        /// The snapshot's version and the count its state holds, if there was one.
        snapshot: Option<(u64, u64)>,
        /// The events after it.
        events: Vec<EventDigest>,
    },
    /// A snapshot was saved.
    Saved,
    /// A read reported a damaged record at this stream sequence, or a damage append stored one.
    Damaged {
        /// Stream sequence of the damaged record.
        sequence: u64,
    },
    /// The aggregate refused the command, having seen `value` at `version`.
    Refused {
        /// The counter's value the refusal was decided on.
        value: u64,
        /// The version of that state.
        version: u64,
    },
    /// A projector step handled a page of this many records and moved the checkpoint.
    Stepped {
        /// Records in the page (0: caught up, nothing handled).
        records: usize,
    },
    /// A projector step was refused: another instance moved the checkpoint.
    Fenced,
    /// The user's aggregate rejected the command (its rejection, as `Debug` prints it): nothing
    /// was stored.
    Rejected(String),
    /// Definitely failed: nothing was stored.
    Failed(String),
    /// Failed without a definite answer: may or may not have taken effect.
    Ambiguous(String),
    /// An instantaneous observation.
    Observed,
    /// A command was executed: the actor's version after it, the node that ran it, and the
    /// events it stored.
    Commanded {
        /// The actor's version after the command.
        version: u64,
        /// The node that executed it.
        node: String,
        /// The stored events.
        events: Vec<EventDigest>,
    },
}

/// One recorded operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// Index in the history.
    pub id: usize,
    /// The node that ran it.
    pub node: String,
    /// The node's incarnation that ran it (1 for the first start; 0 for what the broker host
    /// or the fault injector recorded): with `node`, the store handle — the session — it used.
    pub incarnation: u64,
    /// What it tried.
    pub kind: OpKind,
    /// Simulated time of invocation.
    pub invoked: Duration,
    /// Simulated time of completion.
    pub completed: Option<Duration>,
    /// How it ended.
    pub outcome: Outcome,
}

#[derive(Debug)]
struct Inner {
    ops: Vec<Op>,
    faults: Vec<(Duration, String)>,
    /// The trace lines, when kept.
    trace: Option<Vec<String>>,
    /// FNV-1a hash of every trace line (each followed by a newline).
    hash: u64,
    /// Scratch space for the line being recorded.
    line: String,
}

impl Inner {
    /// Records one trace line: hashes it, and keeps it when the trace is kept.
    fn line(&mut self, args: fmt::Arguments<'_>) {
        self.line.clear();
        let _ = self.line.write_fmt(args);
        for byte in self.line.bytes().chain(std::iter::once(b'\n')) {
            self.hash ^= u64::from(byte);
            self.hash = self.hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        if let Some(trace) = &mut self.trace {
            trace.push(self.line.clone());
        }
    }
}

/// The shared recorder. Cheap to clone.
#[derive(Clone, Debug)]
pub struct History {
    inner: Arc<Mutex<Inner>>,
}

impl Default for History {
    fn default() -> Self {
        Self::new(false)
    }
}

/// A simulated time as `s.mmm`, right-aligned.
struct Ms(Duration);

impl fmt::Display for Ms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:>7}.{:03}", self.0.as_secs(), self.0.subsec_millis())
    }
}

fn ms(t: Duration) -> Ms {
    Ms(t)
}

impl History {
    /// An empty history; `keep_trace` keeps the trace lines (the hash is always kept).
    pub fn new(keep_trace: bool) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                ops: Vec::new(),
                faults: Vec::new(),
                trace: keep_trace.then(Vec::new),
                hash: 0xcbf2_9ce4_8422_2325,
                line: String::new(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the start of an operation at simulated time `now` (outside any node
    /// incarnation); returns its id.
    pub fn invoke(&self, now: Duration, node: &str, kind: OpKind) -> usize {
        self.invoke_in(now, node, 0, kind)
    }

    /// Records the start of an operation of a node incarnation at simulated time `now`; returns
    /// its id.
    pub fn invoke_in(&self, now: Duration, node: &str, incarnation: u64, kind: OpKind) -> usize {
        let mut inner = self.lock();
        let id = inner.ops.len();
        match &kind {
            // Long lists: a summary line (the trace hash still covers the whole run).
            OpKind::BusReceived {
                subscriber,
                deliveries,
                lagged,
            } => inner.line(format_args!(
                "{} {node} invoke #{id} bus {subscriber} received {} ({:?}..{:?}), lagged {lagged}",
                ms(now),
                deliveries.len(),
                deliveries.first().map(|d| (&d.origin, d.sequence)),
                deliveries.last().map(|d| (&d.origin, d.sequence)),
            )),
            OpKind::Handled {
                projection,
                positions,
            } => inner.line(format_args!(
                "{} {node} invoke #{id} {projection} handled {} commits ({:?}..{:?})",
                ms(now),
                positions.len(),
                positions.first(),
                positions.last()
            )),
            OpKind::KvWrite {
                bucket,
                key,
                value,
                revision,
                sent_at,
            } => {
                // Values can be long (an assignment): their hash stands for them in the trace.
                let mut hash = Fnv(0xcbf2_9ce4_8422_2325);
                let _ = std::io::Write::write(&mut hash, value.as_bytes());
                inner.line(format_args!(
                    "{} {node} invoke #{id} kv write {bucket}/{key} rev {revision} sent {} value {} bytes {:016x}",
                    ms(now),
                    ms(*sent_at),
                    value.len(),
                    hash.0
                ));
            }
            _ => inner.line(format_args!("{} {node} invoke #{id} {kind:?}", ms(now))),
        }
        inner.ops.push(Op {
            id,
            node: node.to_owned(),
            incarnation,
            kind,
            invoked: now,
            completed: None,
            outcome: Outcome::Pending,
        });
        id
    }

    /// Records how operation `id` ended.
    pub fn complete(&self, now: Duration, id: usize, outcome: Outcome) {
        let mut inner = self.lock();
        let line = match &outcome {
            Outcome::Appended {
                commit_id,
                sequence,
                events,
            } => format!(
                "ok seq={sequence} versions={}..={} commit={commit_id}",
                events.first().map_or(0, |e| e.version),
                events.last().map_or(0, |e| e.version)
            ),
            Outcome::Read { events } => format!("ok read {} events", events.len()),
            Outcome::ReadAround { events, damaged } => format!(
                "ok read {} events around damage at {damaged:?}",
                events.len()
            ),
            Outcome::Commanded {
                version,
                node,
                events,
            } => format!("ok command v{version} on {node} ({} events)", events.len()),
            other => format!("{other:?}"),
        };
        let node = inner.ops[id].node.clone();
        inner.line(format_args!("{} {node} complete #{id} {line}", ms(now)));
        let op = &mut inner.ops[id];
        op.completed = Some(now);
        op.outcome = outcome;
    }

    /// Records an instantaneous observation.
    pub fn observe(&self, now: Duration, node: &str, observation: ClusterObservation) {
        self.record(now, node, OpKind::Cluster(observation));
    }

    /// Records an instantaneous operation (invoked and completed at `now`, outcome
    /// [`Outcome::Observed`]).
    pub fn record(&self, now: Duration, node: &str, kind: OpKind) {
        self.record_in(now, node, 0, kind);
    }

    /// Like [`History::record`], for a node incarnation.
    pub fn record_in(&self, now: Duration, node: &str, incarnation: u64, kind: OpKind) {
        let id = self.invoke_in(now, node, incarnation, kind);
        let mut inner = self.lock();
        let op = &mut inner.ops[id];
        op.completed = Some(now);
        op.outcome = Outcome::Observed;
    }

    /// Records a fault (or heal) applied at simulated time `now`.
    pub fn fault(&self, now: Duration, description: String) {
        let mut inner = self.lock();
        inner.line(format_args!("{} FAULT {description}", ms(now)));
        inner.faults.push((now, description));
    }

    /// Adds a free-form line to the trace.
    pub fn note(&self, now: Duration, line: String) {
        self.lock().line(format_args!("{} {line}", ms(now)));
    }

    /// A copy of every operation.
    pub fn ops(&self) -> Vec<Op> {
        self.lock().ops.clone()
    }

    /// Every operation, moved out of the recorder (which keeps recording new ones).
    pub fn take_ops(&self) -> Vec<Op> {
        std::mem::take(&mut self.lock().ops)
    }

    /// The node that most recently began leading and has not stopped since (by the cluster
    /// observations recorded so far), if any.
    pub fn current_leader(&self) -> Option<String> {
        let inner = self.lock();
        let mut leading: Option<&str> = None;
        for op in &inner.ops {
            match &op.kind {
                OpKind::Cluster(ClusterObservation::Leading { .. }) => leading = Some(&op.node),
                OpKind::Cluster(
                    ClusterObservation::Stepped { .. }
                    | ClusterObservation::Stopped
                    | ClusterObservation::Down
                    | ClusterObservation::Started,
                ) if leading == Some(op.node.as_str()) => leading = None,
                _ => {}
            }
        }
        leading.map(str::to_owned)
    }

    /// The fault timeline.
    pub fn faults(&self) -> Vec<(Duration, String)> {
        self.lock().faults.clone()
    }

    /// The full trace, if kept.
    pub fn trace(&self) -> Option<Vec<String>> {
        self.lock().trace.clone()
    }

    /// FNV-1a hash of the trace (kept or not): equal for two runs of one seed, or the run is
    /// not deterministic.
    pub fn trace_hash(&self) -> u64 {
        self.lock().hash
    }
}

/// Formats a simulated time as `s.mmm`.
pub fn format_time(t: Duration) -> String {
    ms(t).to_string().trim_start().to_owned()
}
