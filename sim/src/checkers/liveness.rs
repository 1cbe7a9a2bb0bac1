//! Invariant 8: once faults stop, every node makes progress — at least one successful append
//! within the liveness bound — and no operation started in the liveness phase hangs past the
//! bound. In cluster scenarios, from the bound on, every round of view snapshots shows exactly
//! one leader that every node agrees on, one assignment epoch on every node, every shard hosted
//! by exactly one live node, and every live node a member. Every actor command sent once the
//! cluster must have converged (from the bound on) is answered with an outcome — no failure, no
//! timeout — within the bound.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::{CheckInput, Violation};
use crate::history::{ClusterObservation, OpKind, Outcome, format_time};

const INVARIANT: &str = "8 liveness after faults stop";

/// Checks progress in the fault-free phase.
pub fn check(input: &CheckInput<'_>) -> Vec<Violation> {
    let mut out = Vec::new();
    let deadline = input.safety_end + input.liveness_bound;
    if deadline > input.end {
        return out;
    }
    let has_appends = input
        .ops
        .iter()
        .any(|op| matches!(op.kind, OpKind::Append { .. }));
    for node in input.nodes {
        if has_appends {
            let progressed = input.ops.iter().any(|op| {
                op.node == *node
                    && matches!(op.outcome, Outcome::Appended { .. })
                    && op.invoked >= input.safety_end
                    && op.completed.is_some_and(|c| c <= deadline)
            });
            if !progressed {
                out.push(Violation {
                    invariant: INVARIANT,
                    detail: format!(
                        "{node}: no successful append between the end of faults at {:?} and {:?}",
                        input.safety_end, deadline
                    ),
                });
            }
        }
        // Operations started once the network is healthy finish within the bound.
        if let Some(op) = input.ops.iter().find(|op| {
            op.node == *node
                && !matches!(op.kind, OpKind::Cluster(_))
                && op.invoked >= input.safety_end + input.liveness_bound / 4
                && op.invoked + input.liveness_bound <= input.end
                && op
                    .completed
                    .is_none_or(|c| c > op.invoked + input.liveness_bound)
        }) {
            out.push(Violation {
                invariant: INVARIANT,
                detail: format!(
                    "{node}: op #{} invoked at {:?} in the fault-free phase did not finish within {:?}",
                    op.id, op.invoked, input.liveness_bound
                ),
            });
        }
    }
    if input.cluster {
        out.extend(check_cluster(input, deadline));
    }
    out.extend(check_commands(input, deadline));
    out
}

/// Every command sent from `settled` on is answered with an outcome within the bound (one still
/// pending at the end counts only if the bound had passed).
fn check_commands(input: &CheckInput<'_>, settled: Duration) -> Vec<Violation> {
    let bound = input.liveness_bound;
    let mut out = Vec::new();
    for op in input.ops {
        if !matches!(op.kind, OpKind::Command { .. } | OpKind::UserCommand { .. })
            || op.invoked < settled
        {
            continue;
        }
        let problem = match (&op.outcome, op.completed) {
            (
                Outcome::Commanded { .. } | Outcome::Refused { .. } | Outcome::Rejected(_),
                Some(c),
            ) if c <= op.invoked + bound => {
                continue;
            }
            (
                Outcome::Commanded { .. } | Outcome::Refused { .. } | Outcome::Rejected(_),
                Some(c),
            ) => {
                format!("answered only after {}", format_time(c - op.invoked))
            }
            (Outcome::Pending, _) if op.invoked + bound > input.end => continue,
            (Outcome::Pending, _) => "never answered".to_owned(),
            (other, _) => format!("ended with {other:?}"),
        };
        out.push(Violation {
            invariant: INVARIANT,
            detail: format!(
                "{}: command op #{} {:?} sent at {} ({} after faults stopped): {problem}",
                op.node,
                op.id,
                op.kind,
                format_time(op.invoked),
                format_time(op.invoked - input.safety_end)
            ),
        });
        if out.len() >= 4 {
            break;
        }
    }
    out
}

type View<'a> = (
    &'a Option<(String, u64)>,
    bool,
    &'a [String],
    Option<u64>,
    &'a [u32],
);

/// The first problem with one round of view snapshots, if any.
fn round_problem(input: &CheckInput<'_>, views: &BTreeMap<&str, View<'_>>) -> Option<String> {
    let missing: Vec<&String> = input
        .nodes
        .iter()
        .filter(|n| !views.contains_key(n.as_str()))
        .collect();
    if !missing.is_empty() {
        return Some(format!("no running cluster node on {missing:?}"));
    }
    let leaders: Vec<&str> = views.iter().filter(|(_, v)| v.1).map(|(n, _)| *n).collect();
    let [leader] = leaders[..] else {
        return Some(format!(
            "{} nodes act as leader: {leaders:?}",
            leaders.len()
        ));
    };
    for (node, view) in views {
        if view.0.as_ref().map(|(n, _)| n.as_str()) != Some(leader) {
            return Some(format!(
                "{node} sees leader {:?}, but {leader} leads",
                view.0
            ));
        }
        let members: BTreeSet<&str> = view.2.iter().map(String::as_str).collect();
        let live: BTreeSet<&str> = views.keys().copied().collect();
        if members != live {
            return Some(format!(
                "{node} sees members {members:?}, live are {live:?}"
            ));
        }
    }
    let epochs: BTreeSet<Option<u64>> = views.values().map(|v| v.3).collect();
    if epochs.len() != 1 || epochs.contains(&None) {
        return Some(format!("nodes applied different epochs: {epochs:?}"));
    }
    let mut hosted: BTreeMap<u32, &str> = BTreeMap::new();
    for (node, view) in views {
        for shard in view.4 {
            if let Some(other) = hosted.insert(*shard, node) {
                return Some(format!("shard {shard} hosted by {other} and {node}"));
            }
        }
    }
    if let Some(shard) = (0..input.shard_count).find(|s| !hosted.contains_key(s)) {
        return Some(format!(
            "shard {shard} is hosted by no live node ({} of {} hosted)",
            hosted.len(),
            input.shard_count
        ));
    }
    None
}

/// From `deadline` to the end, every round of view snapshots shows a converged cluster (a
/// real-time run, the nemesis, lets nodes record a little past its end).
fn check_cluster(input: &CheckInput<'_>, deadline: Duration) -> Vec<Violation> {
    let mut rounds: BTreeMap<Duration, BTreeMap<&str, View<'_>>> = BTreeMap::new();
    for op in input.ops {
        if let OpKind::Cluster(ClusterObservation::View {
            leader,
            leading,
            members,
            epoch,
            hosted,
        }) = &op.kind
            && op.invoked >= deadline
            && op.invoked <= input.end
        {
            rounds.entry(op.invoked).or_default().insert(
                op.node.as_str(),
                (leader, *leading, members, *epoch, hosted),
            );
        }
    }
    if rounds.is_empty() {
        return vec![Violation {
            invariant: INVARIANT,
            detail: format!(
                "no cluster view was recorded between {} and the end",
                format_time(deadline)
            ),
        }];
    }
    for (at, views) in &rounds {
        if let Some(problem) = round_problem(input, views) {
            return vec![Violation {
                invariant: INVARIANT,
                detail: format!(
                    "cluster not converged at {} ({} after faults stopped): {problem}",
                    format_time(*at),
                    format_time(*at - input.safety_end)
                ),
            }];
        }
    }
    Vec::new()
}
