//! The replicated model of the broker host: a JetStream stream cluster of three replicas.
//!
//! What clients can observe of a real R3 cluster, and what this models:
//!
//! - **Writes commit at the leader after a quorum has them**: a write waits a short commit
//!   latency (the round trip to the fastest follower), then is applied to the leader's state —
//!   which holds only committed writes, so no read ever sees an uncommitted one — and answered.
//! - **Followers apply committed writes later**, each with its own lag (a few milliseconds,
//!   seconds under the `ReplicaLag` fault). They apply exactly the leader's writes, in order,
//!   with the leader's timestamps, and every result is asserted equal to the leader's.
//! - **Direct gets are answered by any replica** (`ReadFrom::AnyReplica` reads, batched reads,
//!   KV gets and listings): the host picks one of the three at random, so an answer can be
//!   stale. Leader-served reads (`ReadFrom::Leader`) and everything else (pub/sub, watches) use
//!   the leader's state.
//! - **Stream-leader failover**: for the election, writes are not answered (a write waiting to
//!   commit when it starts is lost: it was never committed), leader-served reads fail as
//!   unavailable, and direct gets are answered by the followers. The new leader holds every
//!   committed write (Raft's guarantee): the committed state carries over.
//! - **A stream leader cut off from its followers** (seen on a real 3-server cluster by the
//!   nemesis, docs/nemesis.md): it goes on taking appends, proposes them and cannot commit
//!   them, so it answers none of them. It counts them, though: a later append that expects
//!   the subject's committed last sequence — the retry of a proposed one above all — is
//!   refused as if the subject had moved, while reads (its committed state) show nothing new.
//!   A write already on its way to a quorum when the cut begins is proposed too. When the cut
//!   ends, the proposals either commit (the leader hears its followers again) or are lost to a
//!   new leader elected without them — also when an election starts during the cut; there is
//!   no cut during an election. Only stream appends are cut off (the KV buckets' streams have
//!   their leaders elsewhere).
//! - **A deposed leader answering**: after a cut-off that lost its proposals, for a while the
//!   old leader answers appends too, from its data as of the cut: the new leader stores an
//!   append while the caller hears the old one's refusal, the subject's last sequence one
//!   write (or more) behind what it expected.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use aether::broker::{
    AppendOptions, BrokerState, DEFAULT_MAX_PAYLOAD, Headers, KvConfig, Now, StreamConfig,
};
use aether::clock::SharedRng;
use bytes::Bytes;

/// How the replicated model behaves without faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicationConfig {
    /// Range of the time a write waits for a quorum before it commits.
    pub commit_latency: (Duration, Duration),
    /// Range each follower's apply lag is drawn from (at the start, and again when a lag fault
    /// ends).
    pub follower_lag: (Duration, Duration),
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self {
            commit_latency: (Duration::from_millis(1), Duration::from_millis(4)),
            follower_lag: (Duration::from_millis(2), Duration::from_millis(60)),
        }
    }
}

/// A committed write, as followers replay it.
#[derive(Clone, Debug)]
pub(super) enum Write {
    EnsureStream(StreamConfig),
    Append {
        subject: String,
        headers: Headers,
        payload: Bytes,
        options: AppendOptions,
        /// The sequence the leader assigned (and whether it was a duplicate).
        result: (u64, bool),
    },
    KvEnsure(KvConfig),
    KvCreate {
        bucket: String,
        key: String,
        value: Bytes,
        revision: u64,
    },
    KvUpdate {
        bucket: String,
        key: String,
        value: Bytes,
        expected: u64,
        revision: u64,
    },
    KvPut {
        bucket: String,
        key: String,
        value: Bytes,
        revision: u64,
    },
    KvDelete {
        bucket: String,
        key: String,
    },
}

struct Follower {
    state: BrokerState,
    /// Log index of the next write to apply.
    applied: u64,
    lag: Duration,
}

/// An append a cut-off leader proposed: it commits at the end of the cut, or is lost.
pub(super) struct Proposal {
    pub(super) subject: String,
    pub(super) headers: Headers,
    pub(super) payload: Bytes,
    pub(super) options: AppendOptions,
    /// The stream it goes to, and the sequence it takes there if it commits.
    pub(super) stream: String,
    pub(super) sequence: u64,
}

/// A stream leader cut off from its followers until `until`.
pub(super) struct CutOff {
    pub(super) until: Duration,
    /// Whether the proposals commit at the end (else a new leader is elected without them).
    pub(super) commits: bool,
    /// After a lost cut: how long the deposed leader goes on answering.
    pub(super) stale_for: Duration,
    /// Proposed appends, in order.
    pub(super) pending: Vec<Proposal>,
}

/// A deposed leader still answering appends until `until`, from its data as of each stream's
/// last sequence in `as_of`.
pub(super) struct Stale {
    pub(super) until: Duration,
    pub(super) as_of: BTreeMap<String, u64>,
}

/// The followers, the log of committed writes they have not all applied, and the election
/// state.
pub(super) struct Replicas {
    config: ReplicationConfig,
    followers: Vec<Follower>,
    /// Committed writes from log index `first` on, with their commit time.
    log: VecDeque<(Now, Write)>,
    first: u64,
    /// While a stream-leader election runs: when it ends.
    electing_until: Option<Duration>,
    /// The stream leader cut off from its followers, if it is (or was, and nobody has
    /// settled the cut yet: [`Replicas::ended_cut_off`]).
    pub(super) cut_off: Option<CutOff>,
    /// A deposed leader that still answers.
    pub(super) stale: Option<Stale>,
}

impl Replicas {
    /// Two followers with lags drawn from `rng`.
    pub(super) fn new(config: ReplicationConfig, rng: &SharedRng) -> Self {
        let followers = (0..2)
            .map(|_| Follower {
                state: BrokerState::new(DEFAULT_MAX_PAYLOAD),
                applied: 0,
                lag: rng.duration_between(config.follower_lag.0, config.follower_lag.1),
            })
            .collect();
        Self {
            config,
            followers,
            log: VecDeque::new(),
            first: 0,
            electing_until: None,
            cut_off: None,
            stale: None,
        }
    }

    /// Cuts the stream leader off from its followers from `now` for `length`.
    pub(super) fn cut_off(
        &mut self,
        now: Duration,
        length: Duration,
        commits: bool,
        stale_for: Duration,
    ) {
        // During an election there is no leader to cut off.
        if self.cut_off.is_none() && !self.electing(now) {
            self.cut_off = Some(CutOff {
                until: now + length,
                commits,
                stale_for,
                pending: Vec::new(),
            });
        }
    }

    /// The cut-off leader at `now`, while the cut lasts.
    pub(super) fn cutting_off(&mut self, now: Duration) -> Option<&mut CutOff> {
        self.cut_off.as_mut().filter(|cut| now < cut.until)
    }

    /// A cut that has ended by `now`, taken to be settled (its proposals committed or lost).
    pub(super) fn ended_cut_off(&mut self, now: Duration) -> Option<CutOff> {
        if self.cut_off.as_ref().is_some_and(|cut| now >= cut.until) {
            self.cut_off.take()
        } else {
            None
        }
    }

    /// The deposed leader's last sequence of `stream` back then, while it still answers.
    pub(super) fn stale_as_of(&mut self, now: Duration, stream: &str) -> Option<u64> {
        if self.stale.as_ref().is_some_and(|stale| now >= stale.until) {
            self.stale = None;
        }
        self.stale.as_ref()?.as_of.get(stream).copied()
    }

    /// Whether a deposed leader answers at `now`.
    pub(super) fn stale_answers(&self, now: Duration) -> bool {
        self.stale.as_ref().is_some_and(|stale| now < stale.until)
    }

    /// How long a write waits for its quorum.
    pub(super) fn commit_latency(&self, rng: &SharedRng) -> Duration {
        rng.duration_between(self.config.commit_latency.0, self.config.commit_latency.1)
    }

    /// Whether a stream-leader election is running at `now`.
    pub(super) fn electing(&mut self, now: Duration) -> bool {
        match self.electing_until {
            Some(until) if now < until => true,
            Some(_) => {
                self.electing_until = None;
                false
            }
            None => false,
        }
    }

    /// Starts an election lasting `length`. A cut-off leader is replaced by it: the cut ends
    /// now, its proposals lost.
    pub(super) fn fail_over(&mut self, now: Duration, length: Duration) {
        self.electing_until = Some(now + length);
        if let Some(cut) = self.cut_off.as_mut().filter(|cut| now < cut.until) {
            cut.until = now;
            cut.commits = false;
        }
    }

    /// Sets follower `index`'s lag (`None`: draw a normal one again).
    pub(super) fn set_lag(&mut self, index: usize, lag: Option<Duration>, rng: &SharedRng) {
        let normal = self.config.follower_lag;
        if let Some(f) = self.followers.get_mut(index) {
            f.lag = lag.unwrap_or_else(|| rng.duration_between(normal.0, normal.1));
        }
    }

    /// Records a committed write for the followers.
    pub(super) fn committed(&mut self, now: Now, write: Write) {
        self.log.push_back((now, write));
    }

    /// Brings every follower up to what it has applied by `now`, and forgets writes every
    /// follower applied.
    pub(super) fn catch_up(&mut self, now: Duration) {
        for follower in &mut self.followers {
            while let Some((at, write)) = self
                .log
                .get((follower.applied - self.first) as usize)
                .filter(|(at, _)| at.monotonic + follower.lag <= now)
            {
                apply(&mut follower.state, write, *at);
                follower.applied += 1;
            }
        }
        let done = self.followers.iter().map(|f| f.applied).min().unwrap_or(0);
        while self.first < done {
            self.log.pop_front();
            self.first += 1;
        }
    }

    /// The state that answers a direct get: the leader's (`None`) or a follower's, chosen at
    /// random — only followers during an election — with the time it reads at. A follower
    /// reads as of `now` less its lag: its data is that old, and reading later would expire
    /// entries that writes it has yet to apply still find.
    pub(super) fn pick(&mut self, now: Now, rng: &SharedRng) -> Option<(&mut BrokerState, Now)> {
        let electing = self.electing(now.monotonic);
        let choices = if electing { 2 } else { 3 };
        let choice = (rng.next_u64() % choices) as usize;
        if !electing && choice == 0 {
            return None;
        }
        let index = if electing { choice } else { choice - 1 };
        self.catch_up(now.monotonic);
        let follower = &mut self.followers[index];
        let lag = follower.lag.min(now.monotonic);
        let as_of = Now {
            monotonic: now.monotonic - lag,
            wall: now.wall - lag,
        };
        Some((&mut follower.state, as_of))
    }

    /// How many committed writes the slowest follower has yet to apply.
    pub fn backlog(&self) -> usize {
        self.log.len()
    }
}

/// Applies one committed write to a follower's state, as the leader applied it: the same
/// result or the model is broken.
fn apply(state: &mut BrokerState, write: &Write, now: Now) {
    match write {
        Write::EnsureStream(config) => {
            state
                .ensure_stream(config.clone())
                .expect("a follower applies what the leader applied");
        }
        Write::KvEnsure(config) => {
            state
                .kv_ensure(config.clone())
                .expect("a follower applies what the leader applied");
        }
        Write::Append {
            subject,
            headers,
            payload,
            options,
            result,
        } => {
            let ack = state
                .append(
                    subject,
                    headers.clone(),
                    payload.clone(),
                    options.clone(),
                    now,
                )
                .expect("a follower applies what the leader applied");
            assert_eq!(
                (ack.sequence, ack.duplicate),
                *result,
                "a follower stored {subject} where the leader did not"
            );
        }
        Write::KvCreate {
            bucket,
            key,
            value,
            revision,
        } => {
            let r = state
                .kv_create(bucket, key, value.clone(), now)
                .expect("a follower applies what the leader applied");
            assert_eq!(r, *revision, "follower revision of {bucket}/{key}");
        }
        Write::KvUpdate {
            bucket,
            key,
            value,
            expected,
            revision,
        } => {
            let r = state
                .kv_update(bucket, key, value.clone(), *expected, now)
                .expect("a follower applies what the leader applied");
            assert_eq!(r, *revision, "follower revision of {bucket}/{key}");
        }
        Write::KvPut {
            bucket,
            key,
            value,
            revision,
        } => {
            let r = state
                .kv_put(bucket, key, value.clone(), now)
                .expect("a follower applies what the leader applied");
            assert_eq!(r, *revision, "follower revision of {bucket}/{key}");
        }
        Write::KvDelete { bucket, key } => {
            state
                .kv_delete(bucket, key, now)
                .expect("a follower applies what the leader applied");
        }
    }
}
