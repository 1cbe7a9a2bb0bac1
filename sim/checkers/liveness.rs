//! Invariant 8 (store part; the cluster part lives with leadership and ownership): once faults
//! stop, every node makes progress — at least one successful append within the liveness bound
//! — and no operation started in the liveness phase hangs past the bound.

use super::{CheckInput, Violation};
use crate::sim::history::{OpKind, Outcome};

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
    out
}
