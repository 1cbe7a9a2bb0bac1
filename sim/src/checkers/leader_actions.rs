//! Leader actions (invariant 11): what a leader *does* must fall inside its own term.
//!
//! Two sources are compared. The broker host records every write to the lease and assignment
//! keys at the moment it applies it, in true time, with the time its writer sent it — the
//! server's view. The nodes report their own view: when they began leading (`Leading`, with
//! their step-down deadline), each acknowledged renewal (`Renewed`, with the new deadline), and
//! when their term ended (`Stepped`, a crash, a stop).
//!
//! From the server's writes the checker rebuilds each term `T` as the server saw it: from the
//! write that acquired the lease with revision `T` until another term's write or the release,
//! or until `lease_ttl` after the term's last write (the key expires). Then:
//!
//! - the lease key moves only by compare-and-set: a renewal of term `T` replaces a live value of
//!   term `T` (never another term's, never an expired one), an acquisition replaces nothing
//!   live;
//! - every renewal and every assignment the server applied (whether or not its writer heard
//!   back) was sent — the simulated network stamps each request with its send time — inside
//!   its term on the server, by the term's holder, before the deadline the writer itself held
//!   at that moment (the deadline of its acquisition or of its last renewal acknowledged
//!   before), and not after its term ended on the node (step-down, crash, stop);
//! - assignment writes are fenced: epochs strictly grow, and a write never carries an older
//!   leader token than the assignment it replaced.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{CheckInput, Violation};
use crate::history::{ClusterObservation, Op, OpKind, format_time};
use aether::cluster::{ASSIGNMENT_KEY, Assignment};

const LEASE: &str = "11 the lease key moves only by compare-and-set to newer terms";
const ACTIONS: &str = "11 a leader acts only inside its own term";
const FENCED: &str = "11 assignment writes are fenced by the leader token";

/// The lease key's name (the library's `LEASE_KEY`).
const LEASE_KEY: &str = "leader";

/// What one write to the lease key did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LeaseAct {
    /// Began term `revision` (no token in the record).
    Acquire(u64),
    /// Renewed term `token`.
    Renew(u64),
    /// Gave up term `token` (`None`: unreadable or tokenless release).
    Release(Option<u64>),
}

/// One write to the lease key, as the server applied it.
#[derive(Debug)]
struct LeaseWrite {
    at: Duration,
    /// When the writer sent it.
    sent_at: Duration,
    /// The node whose connection wrote it.
    writer: String,
    holder: String,
    act: LeaseAct,
}

impl LeaseWrite {
    /// The term that is live after this write.
    fn term(&self) -> Option<u64> {
        match self.act {
            LeaseAct::Acquire(t) | LeaseAct::Renew(t) => Some(t),
            LeaseAct::Release(_) => None,
        }
    }
}

/// A term as the server saw it.
#[derive(Debug)]
struct ServerTerm {
    holder: String,
    start: Duration,
    end: Duration,
}

fn lease_writes(ops: &[Op]) -> Vec<LeaseWrite> {
    ops.iter()
        .filter_map(|op| {
            let OpKind::KvWrite {
                bucket,
                key,
                value,
                revision,
                sent_at,
            } = &op.kind
            else {
                return None;
            };
            if !bucket.ends_with("-leader") || key != LEASE_KEY {
                return None;
            }
            let record: serde_json::Value = serde_json::from_str(value).unwrap_or_default();
            let token = record["token"].as_u64();
            let act = match (record["released"].as_bool(), token) {
                (Some(false), None) => LeaseAct::Acquire(*revision),
                (Some(false), Some(t)) => LeaseAct::Renew(t),
                _ => LeaseAct::Release(token),
            };
            Some(LeaseWrite {
                at: op.invoked,
                sent_at: *sent_at,
                writer: op.node.clone(),
                holder: record["holder"].as_str().unwrap_or_default().to_owned(),
                act,
            })
        })
        .collect()
}

/// Checks the lease writes and rebuilds the server's terms, by token.
fn server_terms(
    writes: &[LeaseWrite],
    ttl: Duration,
    out: &mut Vec<Violation>,
) -> BTreeMap<u64, ServerTerm> {
    let mut terms: BTreeMap<u64, ServerTerm> = BTreeMap::new();
    // The live term before each write: (term, holder, when it expires).
    let mut live: Option<(u64, &str, Duration)> = None;
    for write in writes {
        let before = live.filter(|(_, _, expires)| *expires > write.at);
        let live_term = before.map(|(t, _, _)| t);
        let problem = match write.act {
            LeaseAct::Renew(t) | LeaseAct::Release(Some(t)) if live_term != Some(t) => {
                Some(match before {
                    None => format!("wrote term {t} over an expired, released or absent lease"),
                    Some((other, _, _)) => format!("wrote term {t} over the lease of term {other}"),
                })
            }
            // A node may resume its own lease under a new term; nobody may take a live one.
            LeaseAct::Acquire(t) => match before {
                Some((other, holder, _)) if holder != write.holder => Some(format!(
                    "acquired term {t} while term {other} of {holder} was live"
                )),
                _ => None,
            },
            _ => None,
        };
        if let Some(problem) = problem {
            out.push(Violation {
                invariant: LEASE,
                detail: format!("{} at {}: {problem}", write.writer, format_time(write.at)),
            });
        }
        // The term that was live ends here unless this write continues it.
        if let Some(t) = live_term
            && write.term() != Some(t)
            && let Some(term) = terms.get_mut(&t)
        {
            term.end = term.end.min(write.at);
        }
        match write.act {
            LeaseAct::Acquire(t) => {
                terms.insert(
                    t,
                    ServerTerm {
                        holder: write.holder.clone(),
                        start: write.at,
                        end: write.at + ttl,
                    },
                );
            }
            // A renewal of the live term extends it to ttl after this write.
            LeaseAct::Renew(t) if live_term == Some(t) => {
                if let Some(term) = terms.get_mut(&t) {
                    term.end = write.at + ttl;
                }
            }
            _ => {}
        }
        live = write
            .term()
            .map(|t| (t, write.holder.as_str(), write.at + ttl));
    }
    terms
}

/// A term as the node saw it.
#[derive(Debug, Default)]
struct NodeTerm {
    start: Duration,
    /// (observed at, deadline), in observation order.
    deadlines: Vec<(Duration, Duration)>,
    end: Option<Duration>,
}

impl NodeTerm {
    /// The deadline the node held at `t`.
    fn deadline_at(&self, t: Duration) -> Option<Duration> {
        self.deadlines
            .iter()
            .filter(|(seen, _)| *seen <= t)
            .map(|(_, d)| *d)
            .max()
    }
}

/// Checks leader actions against the terms.
pub fn check(input: &CheckInput<'_>) -> Vec<Violation> {
    let mut out = Vec::new();
    if !input.cluster {
        return out;
    }
    let writes = lease_writes(input.ops);
    let server = server_terms(&writes, input.lease_ttl, &mut out);
    // (node, token) → the node's term.
    let mut node_terms: BTreeMap<(&str, u64), NodeTerm> = BTreeMap::new();
    // What leaders did, as the server applied it: (writer, what, token, sent at).
    let mut actions: Vec<(&str, &'static str, u64, Duration)> = writes
        .iter()
        .filter_map(|w| match w.act {
            LeaseAct::Renew(t) => Some((w.writer.as_str(), "lease renewal", t, w.sent_at)),
            _ => None,
        })
        .collect();
    actions.extend(
        assignment_writes(input.ops)
            .into_iter()
            .filter_map(|(op, a, sent_at)| {
                let a = a.ok()?;
                Some((op.node.as_str(), "assignment", a.leader_token(), sent_at))
            }),
    );
    for op in input.ops {
        let OpKind::Cluster(observation) = &op.kind else {
            continue;
        };
        let node = op.node.as_str();
        match observation {
            ClusterObservation::Leading { token, deadline } => {
                let term = node_terms.entry((node, *token)).or_default();
                term.start = op.invoked;
                term.deadlines.push((op.invoked, *deadline));
            }
            ClusterObservation::Renewed {
                token, deadline, ..
            } => {
                if let Some(term) = node_terms.get_mut(&(node, *token)) {
                    term.deadlines.push((op.invoked, *deadline));
                }
            }
            ClusterObservation::Stepped {
                token, acted_until, ..
            } => {
                if let Some(term) = node_terms.get_mut(&(node, *token)) {
                    term.end.get_or_insert(*acted_until);
                }
            }
            ClusterObservation::Down
            | ClusterObservation::Stopped
            | ClusterObservation::Started => {
                for ((n, _), term) in node_terms.iter_mut() {
                    if *n == node && term.end.is_none() {
                        term.end = Some(op.invoked);
                    }
                }
            }
            _ => {}
        }
    }
    for (node, what, token, sent_at) in actions {
        let mut problems = Vec::new();
        match server.get(&token) {
            None => problems.push("the server never granted that term".to_owned()),
            Some(term) if term.holder != node => {
                problems.push(format!("the server granted that term to {}", term.holder));
            }
            Some(term) if sent_at < term.start || sent_at >= term.end => problems.push(format!(
                "the term lasted from {} to {} on the server",
                format_time(term.start),
                format_time(term.end)
            )),
            Some(_) => {}
        }
        match node_terms.get(&(node, token)) {
            None => problems.push("the node never reported leading under it".to_owned()),
            Some(term) => {
                match term.deadline_at(sent_at) {
                    Some(deadline) if sent_at >= deadline => problems.push(format!(
                        "after the node's own deadline {}",
                        format_time(deadline)
                    )),
                    None => problems.push(format!(
                        "before the node began leading (at {})",
                        format_time(term.start)
                    )),
                    Some(_) => {}
                }
                if let Some(end) = term.end
                    && sent_at > end
                {
                    problems.push(format!(
                        "after the node's term ended at {}",
                        format_time(end)
                    ));
                }
            }
        }
        for problem in problems {
            out.push(Violation {
                invariant: ACTIONS,
                detail: format!(
                    "{node} sent a {what} write under token {token} at {}: {problem}",
                    format_time(sent_at)
                ),
            });
        }
    }
    out.extend(fencing(input.ops));
    out
}

/// Every write to the assignment key: the op, the assignment (or why it does not decode), and
/// when it was sent.
fn assignment_writes(ops: &[Op]) -> Vec<(&Op, Result<Assignment, String>, Duration)> {
    ops.iter()
        .filter_map(|op| match &op.kind {
            OpKind::KvWrite {
                bucket,
                key,
                value,
                sent_at,
                ..
            } if bucket.ends_with("-assignment") && key == ASSIGNMENT_KEY => Some((
                op,
                Assignment::decode(value.as_bytes()).map_err(|e| e.to_string()),
                *sent_at,
            )),
            _ => None,
        })
        .collect()
}

/// Assignment writes: epochs grow, leader tokens never go back.
fn fencing(ops: &[Op]) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut last: Option<(u64, u64)> = None;
    for (op, assignment, _) in assignment_writes(ops) {
        let assignment = match assignment {
            Ok(a) => a,
            Err(e) => {
                out.push(Violation {
                    invariant: FENCED,
                    detail: format!("{} wrote an undecodable assignment: {e}", op.node),
                });
                continue;
            }
        };
        let (epoch, token) = (assignment.epoch(), assignment.leader_token());
        if let Some((last_epoch, last_token)) = last
            && (epoch <= last_epoch || token < last_token)
        {
            out.push(Violation {
                invariant: FENCED,
                detail: format!(
                    "{} wrote epoch {epoch} under token {token} at {} over epoch {last_epoch} of token {last_token}",
                    op.node,
                    format_time(op.invoked)
                ),
            });
        }
        last = Some((epoch, token));
    }
    out
}
