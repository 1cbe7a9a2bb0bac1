//! The nemesis's fault timeline: a pure function of the seed, so two runs of one seed inject the
//! same faults at the same offsets (which server a role names is decided when the fault fires:
//! leadership moves at run time).

use std::fmt;
use std::time::Duration;

use crate::rng_for;
use crate::workload::below;

/// Which server a server fault hits, resolved when it fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// The leader of the events stream (`AETHER_EV_<namespace>`).
    StreamLeader,
    /// A server holding a replica of the events stream that does not lead it.
    Follower,
    /// The JetStream meta leader (the one that places streams and consumers).
    MetaLeader,
}

/// One kind of fault. Servers are `n1..n3`; a link `k` joins server `k` and the next one
/// (`n1–n2`, `n2–n3`, `n3–n1`); aether nodes are `n0..`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    /// SIGKILL of a server (no shutdown, no flush), restarted with its store directory.
    Kill(Role),
    /// SIGSTOP of a server, SIGCONT at the end: frozen, sockets open, answering nothing.
    Pause(Role),
    /// Every route of a server cut (both links to its peers): a minority of one, its clients
    /// still connected to it.
    Isolate(Role),
    /// One link cut (both its route proxies): the two servers each still reach the third.
    CutLink(usize),
    /// One link held: nothing delivered either way, the connections kept open, everything
    /// delivered in order at the end (a silent partition).
    HoldLink(usize),
    /// One link held in one direction only: what the first server sends the second waits.
    HoldOneWay(usize),
    /// One link slowed: every chunk waits 250 ms each way.
    SlowLink(usize),
    /// An aether node cut off every server (its client connections closed and refused).
    CutClient(usize),
    /// An aether node's client connections held: requests and replies wait, then arrive late.
    HoldClient(usize),
    /// An aether node dies mid-operation: its runtime stops, dropping every task (the
    /// library's detached ones included) and its connection; it starts again as a new
    /// incarnation at the end.
    CrashNode(usize),
    /// The same, to the node leading the cluster (as last observed; the cluster workload):
    /// a crash in the middle of its lease.
    CrashLeader,
}

impl FaultKind {
    /// The kind without its node or link, for per-kind tables.
    pub fn class(&self) -> &'static str {
        match self {
            Self::Kill(Role::StreamLeader) => "kill -9 stream leader",
            Self::Kill(Role::Follower) => "kill -9 follower",
            Self::Kill(Role::MetaLeader) => "kill -9 meta leader",
            Self::Pause(Role::StreamLeader) => "SIGSTOP stream leader",
            Self::Pause(Role::Follower) => "SIGSTOP follower",
            Self::Pause(Role::MetaLeader) => "SIGSTOP meta leader",
            Self::Isolate(Role::StreamLeader) => "isolate stream leader",
            Self::Isolate(Role::Follower) => "isolate follower",
            Self::Isolate(Role::MetaLeader) => "isolate meta leader",
            Self::CutLink(_) => "cut one route link",
            Self::HoldLink(_) => "hold one route link",
            Self::HoldOneWay(_) => "hold a link one way",
            Self::SlowLink(_) => "slow one route link",
            Self::CutClient(_) => "cut a node's client",
            Self::HoldClient(_) => "hold a node's client",
            Self::CrashNode(_) => "crash aether node",
            Self::CrashLeader => "crash aether leader",
        }
    }

    /// Every class a run can draw (with the cluster workload).
    pub const CLASSES: usize = 17;
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let link = |k: usize| format!("n{}–n{}", k + 1, (k + 1) % 3 + 1);
        match self {
            Self::CrashNode(node) => write!(f, "crash aether node n{node}"),
            Self::CutClient(node) => write!(f, "cut n{node}'s client"),
            Self::HoldClient(node) => write!(f, "hold n{node}'s client"),
            Self::CutLink(k) => write!(f, "cut link {}", link(*k)),
            Self::HoldLink(k) => write!(f, "hold link {}", link(*k)),
            Self::HoldOneWay(k) => write!(f, "hold link {} one way", link(*k)),
            Self::SlowLink(k) => write!(f, "slow link {}", link(*k)),
            other => f.write_str(other.class()),
        }
    }
}

/// One planned fault: it starts `at` after the run began and is undone `lasts` later.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlannedFault {
    /// Offset from the start of the run.
    pub at: Duration,
    /// What happens.
    pub kind: FaultKind,
    /// How long until it is undone (restart, SIGCONT, new incarnation).
    pub lasts: Duration,
}

/// The faults of a run of `seed` with a fault phase of `safety` and `nodes` aether nodes: one at
/// a time (a second server down would cost the R3 streams their quorum, which proves nothing
/// new), 2–6 s apart, each over before the next begins and all over before `safety` ends. With
/// `cluster` (the cluster workload), half the node crashes hit the cluster's leader.
pub fn schedule(seed: u64, safety: Duration, nodes: usize, cluster: bool) -> Vec<PlannedFault> {
    let rng = rng_for(seed, 0x004e_454d_4553_4953); // "NEMESIS"
    let ms = |lo: u64, hi: u64| Duration::from_millis(lo + rng.next_u64() % (hi - lo + 1));
    let mut out = Vec::new();
    let mut at = ms(1500, 3000);
    loop {
        let roles = [Role::StreamLeader, Role::Follower, Role::MetaLeader];
        let role = roles[below(&rng, 3)];
        let link = below(&rng, 3);
        let node = below(&rng, nodes);
        let kind = match below(&rng, 12) {
            0..=1 => FaultKind::Kill(role),
            2 => FaultKind::Pause(role),
            3..=4 => FaultKind::Isolate(role),
            5 => FaultKind::CutLink(link),
            6 => FaultKind::HoldLink(link),
            7 => FaultKind::HoldOneWay(link),
            8 => FaultKind::SlowLink(link),
            9 if below(&rng, 2) == 0 => FaultKind::CutClient(node),
            9 => FaultKind::HoldClient(node),
            _ if cluster && below(&rng, 2) == 0 => FaultKind::CrashLeader,
            _ => FaultKind::CrashNode(node),
        };
        let lasts = match kind {
            FaultKind::Kill(_) => ms(500, 4000),
            FaultKind::Pause(_) | FaultKind::HoldLink(_) | FaultKind::HoldOneWay(_) => {
                ms(500, 6000)
            }
            FaultKind::Isolate(_) | FaultKind::CutLink(_) => ms(1000, 10000),
            FaultKind::SlowLink(_) | FaultKind::CutClient(_) | FaultKind::HoldClient(_) => {
                ms(500, 5000)
            }
            FaultKind::CrashNode(_) | FaultKind::CrashLeader => ms(200, 3000),
        };
        if at + lasts + Duration::from_secs(1) > safety {
            return out;
        }
        out.push(PlannedFault { at, kind, lasts });
        at += lasts + ms(2000, 6000);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_always_draws_the_same_timeline_and_faults_never_overlap() {
        let safety = Duration::from_secs(120);
        for seed in 0..200 {
            let a = schedule(seed, safety, 3, false);
            assert_eq!(a, schedule(seed, safety, 3, false));
            assert!(a.len() >= 6, "seed {seed}: {} faults in 120 s", a.len());
            for pair in a.windows(2) {
                assert!(pair[0].at + pair[0].lasts < pair[1].at, "{pair:?}");
            }
            let last = a.last().unwrap();
            assert!(last.at + last.lasts < safety);
        }
        let kinds: std::collections::BTreeSet<&str> = (0..100)
            .flat_map(|s| schedule(s, safety, 3, true))
            .map(|f| f.kind.class())
            .collect();
        assert_eq!(
            kinds.len(),
            FaultKind::CLASSES,
            "every kind is drawn: {kinds:?}"
        );
        assert_ne!(schedule(1, safety, 3, false), schedule(2, safety, 3, false));
        assert!(
            (0..50)
                .flat_map(|s| schedule(s, safety, 3, false))
                .all(|f| f.kind != FaultKind::CrashLeader),
            "no leader to crash without the cluster workload"
        );
    }
}
