//! Invariant 6: at most one node acts as leader under one fencing token, a later term always
//! has a larger token, and leadership terms of different nodes never overlap in true time.
//!
//! A term runs from its `Leading` observation to the end of its acting: the `acted_until` of
//! its `Stepped` observation, else the node's crash or stop, else (still open when the run
//! ended) its last deadline. All times are true time (nodes' clock readings converted back).

use std::collections::BTreeMap;
use std::time::Duration;

use super::{CheckInput, Violation};
use crate::history::{ClusterObservation, OpKind, format_time};

const INVARIANT: &str = "6 one leader per fencing token";

#[derive(Debug)]
struct Term {
    node: String,
    token: u64,
    start: Duration,
    deadline: Duration,
    end: Option<Duration>,
}

/// Checks the leadership observations.
pub fn check(input: &CheckInput<'_>) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut terms: Vec<Term> = Vec::new();
    // token → index in `terms`
    let mut by_token: BTreeMap<u64, usize> = BTreeMap::new();
    let mut max_token = 0u64;
    for op in input.ops {
        let OpKind::Cluster(observation) = &op.kind else {
            continue;
        };
        let now = op.invoked;
        match observation {
            ClusterObservation::Leading { token, deadline } => {
                if let Some(i) = by_token.get(token) {
                    if terms[*i].node != op.node {
                        out.push(Violation {
                            invariant: INVARIANT,
                            detail: format!(
                                "token {token} claimed by {} and by {} (at {})",
                                terms[*i].node,
                                op.node,
                                format_time(now)
                            ),
                        });
                    }
                    continue;
                }
                if *token <= max_token {
                    out.push(Violation {
                        invariant: INVARIANT,
                        detail: format!(
                            "{} began leading with token {token} at {}, not larger than the earlier token {max_token}",
                            op.node,
                            format_time(now)
                        ),
                    });
                }
                max_token = max_token.max(*token);
                by_token.insert(*token, terms.len());
                terms.push(Term {
                    node: op.node.clone(),
                    token: *token,
                    start: now,
                    deadline: *deadline,
                    end: None,
                });
            }
            ClusterObservation::Renewed {
                token, deadline, ..
            } => {
                if let Some(i) = by_token.get(token)
                    && terms[*i].node == op.node
                {
                    terms[*i].deadline = terms[*i].deadline.max(*deadline);
                }
            }
            ClusterObservation::Stepped {
                token, acted_until, ..
            } => {
                if let Some(i) = by_token.get(token)
                    && terms[*i].node == op.node
                    && terms[*i].end.is_none()
                {
                    terms[*i].end = Some(*acted_until);
                }
            }
            // A crash, a clean stop or a fresh start ends whatever the node still led.
            ClusterObservation::Down
            | ClusterObservation::Stopped
            | ClusterObservation::Started => {
                for term in terms
                    .iter_mut()
                    .filter(|t| t.node == op.node && t.end.is_none())
                {
                    term.end = Some(now.min(term.deadline));
                }
            }
            _ => {}
        }
    }
    for term in &mut terms {
        if term.end.is_none() {
            term.end = Some(term.deadline.min(input.end));
        }
    }
    let mut reported = 0;
    for (i, a) in terms.iter().enumerate() {
        for b in &terms[i + 1..] {
            if a.node == b.node {
                continue;
            }
            let (a_end, b_end) = (a.end.unwrap_or(a.deadline), b.end.unwrap_or(b.deadline));
            if a.start < b_end && b.start < a_end {
                reported += 1;
                if reported <= 8 {
                    out.push(Violation {
                        invariant: INVARIANT,
                        detail: format!(
                            "two leaders at once: {} led with token {} from {} to {}, {} with token {} from {} to {}",
                            a.node,
                            a.token,
                            format_time(a.start),
                            format_time(a_end),
                            b.node,
                            b.token,
                            format_time(b.start),
                            format_time(b_end)
                        ),
                    });
                }
            }
        }
    }
    out
}
