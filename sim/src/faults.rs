//! Fault schedules drawn from the seed, and their application to the engine's world.
//!
//! A schedule covers the safety phase only: faults start and end inside it, and at its end
//! [`heal_all`] repairs every link, releases held traffic, restarts crashed nodes, restores
//! latency, stops drift and reply loss. The liveness phase that follows is fault-free.

use std::fmt;
use std::time::Duration;

use super::broker::{BrokerFaults, BrokerHost};
use super::clock::ClockControl;
use super::engine::Engine;
use aether::clock::SharedRng;

pub use crate::churn::{Churn, ChurnPlan};

/// Which way a partition cuts the node ↔ broker link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Nothing passes.
    Both,
    /// The node's requests are lost; the broker's messages still arrive.
    ToBroker,
    /// The broker's replies and pushes are lost; the node's requests still arrive.
    FromBroker,
}

/// One fault (or its end).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Cut the node ↔ broker link.
    Partition {
        /// Node index.
        node: usize,
        /// Which way.
        direction: Direction,
    },
    /// Heal the node ↔ broker link.
    Repair {
        /// Node index.
        node: usize,
    },
    /// Hold all traffic on the link (delivered later, on release).
    Hold {
        /// Node index.
        node: usize,
    },
    /// Release held traffic.
    Release {
        /// Node index.
        node: usize,
    },
    /// Every message on the link takes exactly this long (a congested network).
    SteadyLatency {
        /// Node index.
        node: usize,
        /// One-way latency.
        latency: Duration,
    },
    /// Set the link's maximum latency (and its minimum back to the base).
    Latency {
        /// Node index.
        node: usize,
        /// Maximum one-way latency.
        max: Duration,
    },
    /// Crash the node (its tasks vanish; the broker keeps its data).
    Crash {
        /// Node index.
        node: usize,
    },
    /// Restart a crashed node.
    Restart {
        /// Node index.
        node: usize,
    },
    /// Crash and immediately restart the broker host (data survives, connections do not).
    BounceBroker,
    /// Step the node's wall clock by this offset.
    Skew {
        /// Node index.
        node: usize,
        /// Offset in milliseconds (may be negative).
        offset_ms: i64,
    },
    /// Run the node's clock at this rate (parts per million of true time).
    Drift {
        /// Node index.
        node: usize,
        /// Rate.
        rate_ppm: u64,
    },
    /// A stream-leader election of this length (replicated model): writes are lost and leader
    /// reads fail meanwhile; followers answer direct gets.
    Failover {
        /// How long the cluster has no stream leader.
        election: Duration,
    },
    /// The stream leader is cut off from its followers for `length` (replicated model): it
    /// proposes appends and answers none, refuses retries of them as moved; at the end they
    /// commit (`commits`) or are lost to a new leader, and then the deposed one answers
    /// appends from its old data for `stale_for`.
    LeaderCutOff {
        /// How long the cut lasts.
        length: Duration,
        /// Whether the proposals commit at the end.
        commits: bool,
        /// After a lost cut: how long the deposed leader goes on answering.
        stale_for: Duration,
    },
    /// Follower `follower` applies committed writes this late (`None`: a normal lag again).
    FollowerLag {
        /// Follower index (0 or 1).
        follower: usize,
        /// The lag.
        lag: Option<Duration>,
    },
    /// Drop this share of committed-write replies at the broker.
    ReplyLoss {
        /// Per mille.
        per_mille: u32,
    },
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Partition { node, direction } => match direction {
                Direction::Both => write!(f, "partition n{node} <-/-> broker"),
                Direction::ToBroker => write!(f, "partition n{node} --/-> broker (one way)"),
                Direction::FromBroker => write!(f, "partition n{node} <-/-- broker (one way)"),
            },
            Fault::Repair { node } => write!(f, "repair n{node} <-> broker"),
            Fault::Hold { node } => write!(f, "hold n{node} <-> broker"),
            Fault::Release { node } => write!(f, "release n{node} <-> broker"),
            Fault::Latency { node, max } => {
                write!(f, "latency n{node} <-> broker up to {} ms", max.as_millis())
            }
            Fault::SteadyLatency { node, latency } => {
                write!(
                    f,
                    "latency n{node} <-> broker {} ms each way",
                    latency.as_millis()
                )
            }
            Fault::Crash { node } => write!(f, "crash n{node}"),
            Fault::Restart { node } => write!(f, "restart n{node}"),
            Fault::BounceBroker => write!(f, "bounce broker"),
            Fault::Skew { node, offset_ms } => {
                write!(f, "skew n{node} wall clock by {offset_ms} ms")
            }
            Fault::Drift { node, rate_ppm } => {
                write!(f, "drift n{node} clock rate {:.3}", *rate_ppm as f64 / 1e6)
            }
            Fault::ReplyLoss { per_mille } => {
                write!(f, "broker drops {per_mille}/1000 committed-write replies")
            }
            Fault::Failover { election } => {
                write!(
                    f,
                    "stream leader fails over ({} ms election)",
                    election.as_millis()
                )
            }
            Fault::LeaderCutOff {
                length,
                commits,
                stale_for,
            } => {
                write!(
                    f,
                    "stream leader cut off from its followers for {} ms, then ",
                    length.as_millis()
                )?;
                if *commits {
                    write!(f, "its proposals commit")
                } else {
                    write!(
                        f,
                        "a new leader without them; the old one answers {} ms more",
                        stale_for.as_millis()
                    )
                }
            }
            Fault::FollowerLag { follower, lag } => match lag {
                Some(lag) => write!(f, "follower {follower} lags {} ms", lag.as_millis()),
                None => write!(f, "follower {follower} catches up"),
            },
        }
    }
}

/// How hard a schedule hits.
#[derive(Clone, Copy, Debug)]
pub struct FaultProfile {
    /// Mean gap between fault starts.
    pub gap_mean: Duration,
    /// Longest a link fault or crash lasts.
    pub fault_duration_max: Duration,
    /// Largest clock drift, in ppm away from 1_000_000.
    pub drift_max_ppm: u64,
    /// Largest wall-clock skew.
    pub skew_max_ms: i64,
    /// Allow broker bounces.
    pub broker_bounces: bool,
    /// Largest share of dropped write replies (per mille).
    pub reply_loss_max_per_mille: u32,
    /// Also aim faults at whoever leads the cluster ([`ChurnPlan`]).
    pub leader_churn: bool,
    /// The range a slowed leader's clock rate is drawn from, in ppm of true time. The lease is
    /// designed to tolerate a clock down to `lease_step_down_after / lease_ttl` (2/3 with the
    /// defaults); the default range stays just inside that margin.
    pub churn_clock_ppm: (u64, u64),
}

/// The slowest clock rate the default lease timing tolerates (`2 s / 3 s`), in ppm.
pub const LEASE_MARGIN_PPM: u64 = 666_667;

impl Default for FaultProfile {
    fn default() -> Self {
        Self {
            gap_mean: Duration::from_millis(1500),
            fault_duration_max: Duration::from_secs(4),
            drift_max_ppm: 20_000,
            skew_max_ms: 5_000,
            broker_bounces: true,
            reply_loss_max_per_mille: 250,
            leader_churn: false,
            churn_clock_ppm: (700_000, 760_000),
        }
    }
}

/// Faults in time order.
#[derive(Clone, Debug, Default)]
pub struct FaultSchedule {
    /// `(when, fault)`, sorted by time.
    pub events: Vec<(Duration, Fault)>,
}

pub(crate) fn below(rng: &SharedRng, n: u64) -> u64 {
    rng.next_u64() % n.max(1)
}

impl FaultSchedule {
    /// A schedule for `nodes` nodes over `[start, safety_end)`.
    pub fn generate(
        rng: &SharedRng,
        nodes: usize,
        start: Duration,
        safety_end: Duration,
        profile: &FaultProfile,
    ) -> Self {
        let mut events = Vec::new();
        // When each node's link (and liveness) is free of a fault again.
        let mut link_free = vec![Duration::ZERO; nodes];
        let mut up_again = vec![Duration::ZERO; nodes];
        let mut t = start;
        loop {
            t += rng.duration_between(profile.gap_mean / 4, profile.gap_mean * 7 / 4);
            if t >= safety_end {
                break;
            }
            let node = below(rng, nodes as u64) as usize;
            let span = rng.duration_between(Duration::from_millis(300), profile.fault_duration_max);
            let end = (t + span).min(safety_end);
            match below(rng, 100) {
                0..=19 if link_free[node] <= t => {
                    let direction = match below(rng, 3) {
                        0 => Direction::Both,
                        1 => Direction::ToBroker,
                        _ => Direction::FromBroker,
                    };
                    events.push((t, Fault::Partition { node, direction }));
                    events.push((end, Fault::Repair { node }));
                    link_free[node] = end;
                }
                20..=34 if link_free[node] <= t => {
                    events.push((t, Fault::Hold { node }));
                    events.push((end, Fault::Release { node }));
                    link_free[node] = end;
                }
                35..=44 => {
                    let max =
                        rng.duration_between(Duration::from_millis(50), Duration::from_millis(800));
                    events.push((t, Fault::Latency { node, max }));
                    events.push((
                        end,
                        Fault::Latency {
                            node,
                            max: BASE_LATENCY_MAX,
                        },
                    ));
                }
                45..=59 if up_again[node] <= t => {
                    // Never crash every node at once: liveness needs someone, and a
                    // fully-down cluster teaches nothing new.
                    let down = (0..nodes).filter(|n| up_again[*n] > t).count();
                    if down + 1 < nodes {
                        events.push((t, Fault::Crash { node }));
                        events.push((end, Fault::Restart { node }));
                        up_again[node] = end;
                    }
                }
                60..=66 if profile.broker_bounces => events.push((t, Fault::BounceBroker)),
                67..=74 => {
                    let max = profile.skew_max_ms.max(1);
                    let offset_ms = below(rng, (2 * max + 1) as u64) as i64 - max;
                    events.push((t, Fault::Skew { node, offset_ms }));
                }
                75..=84 => {
                    let max = profile.drift_max_ppm.max(1);
                    let rate_ppm = 1_000_000 - max + below(rng, 2 * max + 1);
                    events.push((t, Fault::Drift { node, rate_ppm }));
                }
                85..=99 if profile.reply_loss_max_per_mille > 0 => {
                    let per_mille =
                        1 + below(rng, u64::from(profile.reply_loss_max_per_mille)) as u32;
                    events.push((t, Fault::ReplyLoss { per_mille }));
                    events.push((end, Fault::ReplyLoss { per_mille: 0 }));
                }
                _ => {}
            }
        }
        events.sort_by_key(|(at, _)| *at);
        Self { events }
    }
}

impl FaultSchedule {
    /// The replicated model's own faults over `[start, safety_end)`, about one every 4–8 s
    /// (scaled with the profile's gap between faults): a stream-leader failover (election
    /// 2–5 s), a follower falling behind by 0.3–3 s for 2–6 s, or the stream leader cut off
    /// from its followers for 0.5–4 s (its proposals then commit, or are lost to a new leader
    /// and the old one answers for 0.2–2 s more). Drawn from their own generator, so the other faults of a seed stay the same on
    /// both models.
    pub fn replication(
        rng: &SharedRng,
        start: Duration,
        safety_end: Duration,
        profile: &FaultProfile,
    ) -> Self {
        let mut events = Vec::new();
        let mut t = start;
        // As often as the profile's other faults allow (every 4–8 s with the default 1.5 s
        // gap): a sparse long-horizon run must not spend its days in elections.
        let gap = (profile.gap_mean * 8 / 3, profile.gap_mean * 16 / 3);
        loop {
            t += rng.duration_between(gap.0, gap.1);
            if t >= safety_end {
                break;
            }
            let kind = below(rng, 3);
            if kind == 2 {
                // The nemesis saw both ends of a cut on a real cluster (docs/nemesis.md).
                let length =
                    rng.duration_between(Duration::from_millis(500), Duration::from_secs(4));
                let commits = below(rng, 2) == 0;
                let stale_for =
                    rng.duration_between(Duration::from_millis(200), Duration::from_secs(2));
                events.push((
                    t,
                    Fault::LeaderCutOff {
                        length,
                        commits,
                        stale_for,
                    },
                ));
            } else if kind == 0 {
                // Real R3 elections took 4.1–7.4 s after a kill -9 of the stream leader
                // (tests/nats_replicas.rs); scenarios of 20 s of faults take 2–5 s.
                let election = rng.duration_between(Duration::from_secs(2), Duration::from_secs(5));
                events.push((t, Fault::Failover { election }));
            } else {
                let follower = below(rng, 2) as usize;
                let lag = rng.duration_between(Duration::from_millis(300), Duration::from_secs(3));
                let end = (t + rng
                    .duration_between(Duration::from_secs(2), Duration::from_secs(6)))
                .min(safety_end);
                events.push((
                    t,
                    Fault::FollowerLag {
                        follower,
                        lag: Some(lag),
                    },
                ));
                events.push((
                    end,
                    Fault::FollowerLag {
                        follower,
                        lag: None,
                    },
                ));
            }
        }
        Self { events }
    }
}

/// The latency links have outside faults: between these two.
pub const BASE_LATENCY_MAX: Duration = Duration::from_millis(20);
/// See [`BASE_LATENCY_MAX`].
pub const BASE_LATENCY_MIN: Duration = Duration::from_millis(1);

/// Handles the fault injector needs besides the engine.
pub struct World<'a> {
    /// Node host names, by index.
    pub nodes: &'a [String],
    /// Their clocks.
    pub clocks: &'a [ClockControl],
    /// The broker host.
    pub broker: &'a BrokerHost,
}

/// Applies one fault at true time `now`.
pub fn apply(engine: &mut impl Engine, world: &World<'_>, now: Duration, fault: &Fault) {
    match fault {
        Fault::Partition { node, direction } => engine.partition(*node, *direction),
        Fault::Repair { node } => engine.repair(*node),
        Fault::Hold { node } => engine.hold(*node),
        Fault::Release { node } => engine.release(*node),
        Fault::Latency { node, max } => engine.set_latency(*node, BASE_LATENCY_MIN, *max),
        Fault::SteadyLatency { node, latency } => engine.set_latency(*node, *latency, *latency),
        Fault::Crash { node } => engine.crash(*node),
        // A node that is already up again (restarted by another fault) is left alone.
        Fault::Restart { node } => {
            if !engine.is_running(*node) {
                engine.restart(*node);
            }
        }
        Fault::BounceBroker => engine.bounce_broker(),
        Fault::Skew { node, offset_ms } => world.clocks[*node].set_skew(offset_ms * 1_000_000),
        Fault::Drift { node, rate_ppm } => world.clocks[*node].set_drift(now, *rate_ppm),
        Fault::Failover { election } => world.broker.fail_over(now, *election),
        Fault::LeaderCutOff {
            length,
            commits,
            stale_for,
        } => world
            .broker
            .cut_off_leader(now, *length, *commits, *stale_for),
        Fault::FollowerLag { follower, lag } => world.broker.set_follower_lag(*follower, *lag),
        Fault::ReplyLoss { per_mille } => world.broker.set_faults(BrokerFaults {
            reply_loss_per_mille: *per_mille,
        }),
    }
}

/// Ends every fault: the start of the liveness phase.
pub fn heal_all(engine: &mut impl Engine, world: &World<'_>, now: Duration) {
    for n in 0..world.nodes.len() {
        engine.release(n);
        engine.repair(n);
        engine.set_latency(n, BASE_LATENCY_MIN, BASE_LATENCY_MAX);
        if !engine.is_running(n) {
            engine.restart(n);
        }
        world.clocks[n].set_drift(now, 1_000_000);
    }
    world.broker.set_faults(BrokerFaults::default());
    for follower in 0..2 {
        world.broker.set_follower_lag(follower, None);
    }
}
