//! Who leads the events stream, as the servers say: every server's `/jsz` polled at once,
//! the leader named by most of them, and the servers that name themselves.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use super::{events_stream_detail, servers};

/// The events stream's leader as polled every 250 ms.
pub(super) type LeaderSamples = Mutex<Vec<(Duration, LeaderSample)>>;

/// One poll of every server's `/jsz`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaderSample {
    /// The leader most answering servers named (None: none named one).
    pub leader: Option<String>,
    /// Servers that named themselves the leader; two at once is a stale leader that has not
    /// stepped down yet.
    pub self_claims: Vec<String>,
}

impl LeaderSample {
    pub(super) fn of(views: &[(String, Option<String>)]) -> Self {
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for leader in views.iter().filter_map(|(_, l)| l.as_deref()) {
            *votes.entry(leader).or_default() += 1;
        }
        let leader = votes
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(l, _)| (*l).to_owned());
        let self_claims = views
            .iter()
            .filter(|(server, l)| l.as_deref() == Some(server.as_str()))
            .map(|(server, _)| server.clone())
            .collect();
        Self {
            leader,
            self_claims,
        }
    }
}

/// Each server's view of the events stream's leader, asked of all of them at once (a paused
/// server keeps its caller 2 s): `(server, the leader it names)`.
pub(super) fn leader_views(ports: &[(String, u16)]) -> Vec<(String, Option<String>)> {
    std::thread::scope(|scope| {
        let asks: Vec<_> = ports
            .iter()
            .map(|(_, port)| {
                scope.spawn(move || {
                    let (_, body) = servers::monitor_get(*port, "/jsz?accounts=true&streams=true")?;
                    events_stream_detail(&body)?["cluster"]["leader"]
                        .as_str()
                        .map(str::to_owned)
                })
            })
            .collect();
        ports
            .iter()
            .zip(asks)
            .map(|((name, _), ask)| (name.clone(), ask.join().ok().flatten()))
            .collect()
    })
}
