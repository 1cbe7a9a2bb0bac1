//! Leader churn: faults aimed at whoever leads the cluster when they are due — a crash, a
//! partition (sometimes with every link congested), a held link for about a lease TTL, a slow
//! link while another node drops out, or a slowed clock then a cut — expanded into plain
//! [`Fault`]s by the runner.

use std::time::Duration;

use aether::clock::SharedRng;

use crate::faults::{BASE_LATENCY_MAX, Direction, Fault, below};

/// A fault aimed at the current leader (resolved when it is due: the leader is whoever leads
/// then).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Churn {
    /// Crash the leader; restart it after `down_for`.
    Crash {
        /// Downtime.
        down_for: Duration,
    },
    /// Partition the leader from the broker both ways for `cut_for`; with `congest`, every
    /// message on every node's link takes that long from then until 3 s after the cut
    /// heals, so the next leader acquires, and acts, over a slow network (a round trip of about
    /// half the lease's step-down time).
    Partition {
        /// How long.
        cut_for: Duration,
        /// Latency of the other nodes' links meanwhile, if changed.
        congest: Option<Duration>,
    },
    /// Hold everything on the leader's link for `hold_for` (about a lease TTL), then deliver it:
    /// the leader's renewal or publication, sent inside its term, reaches the server late —
    /// possibly after another node took the lease over.
    Delay {
        /// How long traffic is held.
        hold_for: Duration,
    },
    /// Slow the leader's link for `lasts` while another node drops out of the cluster (cut off
    /// for as long): the leader must publish a new assignment while its renewals straggle and
    /// its deadline comes near — it must check that deadline when it writes, not only when it
    /// decides to.
    SlowAmidChange {
        /// Link latency while slow.
        latency: Duration,
        /// How long.
        lasts: Duration,
        /// Which other node drops out (offset from the leader's index, modulo the node count).
        other: u64,
    },
    /// Slow the leader's link (replies to its lease renewals arrive late), optionally slow its
    /// clock too, then cut it off after `cut_after` for `cut_for`: the classic way for a leader
    /// that trusts the server's TTL to overstay its lease.
    SlowThenCut {
        /// Link latency while slow.
        latency: Duration,
        /// Clock rate while slow (ppm), if changed.
        rate_ppm: Option<u64>,
        /// Delay before the cut.
        cut_after: Duration,
        /// How long the cut lasts.
        cut_for: Duration,
    },
}

/// Leader-aimed faults in time order.
#[derive(Clone, Debug, Default)]
pub struct ChurnPlan {
    /// `(when, churn)`, sorted by time.
    pub events: Vec<(Duration, Churn)>,
}

impl ChurnPlan {
    /// A plan over `[start, safety_end)`: one leader fault every 2.5–5 s: a crash, a partition,
    /// a held link or a slow link amid a membership change (one in six each), or (two in six) a
    /// slowdown of the leader's link before it is cut off, three in four of those with its clock
    /// slowed to a rate from `clock_ppm`.
    pub fn generate(
        rng: &SharedRng,
        start: Duration,
        safety_end: Duration,
        clock_ppm: (u64, u64),
    ) -> Self {
        let mut events = Vec::new();
        let mut t = start;
        loop {
            t += rng.duration_between(Duration::from_millis(2500), Duration::from_secs(5));
            if t + Duration::from_secs(1) >= safety_end {
                break;
            }
            let churn = match below(rng, 6) {
                0 => Churn::Crash {
                    down_for: rng.duration_between(Duration::from_secs(1), Duration::from_secs(4)),
                },
                1 => Churn::Partition {
                    cut_for: rng
                        .duration_between(Duration::from_millis(1500), Duration::from_secs(5)),
                    congest: (below(rng, 2) == 0).then(|| {
                        rng.duration_between(Duration::from_millis(550), Duration::from_millis(950))
                    }),
                },
                3 => Churn::SlowAmidChange {
                    latency: rng
                        .duration_between(Duration::from_millis(300), Duration::from_millis(900)),
                    lasts: rng.duration_between(Duration::from_secs(3), Duration::from_secs(5)),
                    other: rng.next_u64(),
                },
                2 => Churn::Delay {
                    hold_for: rng
                        .duration_between(Duration::from_millis(2500), Duration::from_millis(3500)),
                },
                _ => Churn::SlowThenCut {
                    latency: rng
                        .duration_between(Duration::from_millis(200), Duration::from_millis(800)),
                    rate_ppm: (below(rng, 4) != 0).then(|| {
                        clock_ppm.0 + below(rng, clock_ppm.1.saturating_sub(clock_ppm.0) + 1)
                    }),
                    cut_after: rng
                        .duration_between(Duration::from_millis(500), Duration::from_secs(2)),
                    cut_for: rng.duration_between(Duration::from_secs(2), Duration::from_secs(5)),
                },
            };
            events.push((t, churn));
        }
        Self { events }
    }

    /// The concrete faults of `churn` aimed at `node` (of `nodes`) at `now`, with their times. A
    /// crash is replaced by a partition when `may_crash` is false (too few other nodes running).
    pub fn faults(
        churn: &Churn,
        node: usize,
        nodes: usize,
        now: Duration,
        may_crash: bool,
    ) -> Vec<(Duration, Fault)> {
        match churn {
            Churn::Crash { down_for } if may_crash => vec![
                (now, Fault::Crash { node }),
                (now + *down_for, Fault::Restart { node }),
            ],
            Churn::Crash { down_for: cut_for } | Churn::Partition { cut_for, .. } => {
                let mut out = vec![
                    (
                        now,
                        Fault::Partition {
                            node,
                            direction: Direction::Both,
                        },
                    ),
                    (now + *cut_for, Fault::Repair { node }),
                ];
                if let Churn::Partition {
                    congest: Some(latency),
                    ..
                } = churn
                {
                    // The cut leader's link too, once it heals.
                    for other in 0..nodes {
                        out.push((
                            now,
                            Fault::SteadyLatency {
                                node: other,
                                latency: *latency,
                            },
                        ));
                        out.push((
                            now + *cut_for + Duration::from_secs(3),
                            Fault::Latency {
                                node: other,
                                max: BASE_LATENCY_MAX,
                            },
                        ));
                    }
                }
                out
            }
            Churn::SlowAmidChange {
                latency,
                lasts,
                other,
            } => {
                let other = (node + 1 + (*other % (nodes.max(2) as u64 - 1)) as usize) % nodes;
                vec![
                    (
                        now,
                        Fault::Latency {
                            node,
                            max: *latency,
                        },
                    ),
                    (
                        now,
                        Fault::Partition {
                            node: other,
                            direction: Direction::Both,
                        },
                    ),
                    (now + *lasts, Fault::Repair { node: other }),
                    (
                        now + *lasts,
                        Fault::Latency {
                            node,
                            max: BASE_LATENCY_MAX,
                        },
                    ),
                ]
            }
            Churn::Delay { hold_for } => vec![
                (now, Fault::Hold { node }),
                (now + *hold_for, Fault::Release { node }),
            ],
            Churn::SlowThenCut {
                latency,
                rate_ppm,
                cut_after,
                cut_for,
            } => {
                let mut out = vec![(
                    now,
                    Fault::Latency {
                        node,
                        max: *latency,
                    },
                )];
                if let Some(rate_ppm) = rate_ppm {
                    out.push((
                        now,
                        Fault::Drift {
                            node,
                            rate_ppm: *rate_ppm,
                        },
                    ));
                }
                let cut = now + *cut_after;
                out.push((
                    cut,
                    Fault::Partition {
                        node,
                        direction: Direction::Both,
                    },
                ));
                out.push((cut + *cut_for, Fault::Repair { node }));
                out.push((
                    cut + *cut_for,
                    Fault::Latency {
                        node,
                        max: BASE_LATENCY_MAX,
                    },
                ));
                out
            }
        }
    }
}
