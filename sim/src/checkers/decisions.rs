//! Decisions (invariant 10): every counter event records the decision it was — the value and
//! version it was decided on, the change, the deciding node and its assignment epoch. The
//! checker re-folds every final counter stream and requires of each decision that
//!
//! - it was taken on exactly the events before it (`version` is one less than the event's, and
//!   `before` is the fold of the events up to `version`) — a decision on a stale state is a lost
//!   update, whether the host skipped a reload after a conflict or appended with `Any`;
//! - it keeps the counter at or above zero;
//! - its node owned the actor's shard under an assignment epoch the node had applied (an
//!   `Applied` observation of that node, at that epoch, listing the shard) — a decision taken
//!   with no applied assignment, or on a shard the node did not host, is a violation.
//!
//! And of each refusal, that the value it reports is the fold at the version it reports, that the
//! take really exceeded it, and that it was not decided on a state older than a change
//! acknowledged before the command was sent.

use std::collections::{BTreeMap, BTreeSet};

use super::{CheckInput, Violation};
use crate::history::{ClusterObservation, OpKind, Outcome};
use crate::scenarios::counter::Decision;
use aether::cluster::ShardConfig;

const INVARIANT: &str = "10 decisions are taken on the current state, by the owner";

/// Checks every counter decision and refusal.
pub fn check(input: &CheckInput<'_>) -> Vec<Violation> {
    let mut out = Vec::new();
    // (node, epoch) → shards the node hosted under that epoch.
    let mut hosted: BTreeMap<(&str, u64), BTreeSet<u32>> = BTreeMap::new();
    for op in input.ops {
        if let OpKind::Cluster(ClusterObservation::Applied { epoch, shards, .. }) = &op.kind {
            hosted
                .entry((op.node.as_str(), *epoch))
                .or_default()
                .extend(shards.iter().copied());
        }
    }
    let shards = (input.shard_count > 0).then(|| ShardConfig::with_shard_count(input.shard_count));
    // Per actor: the counter's value after each version (index 0: version 0).
    let mut folds: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for actor in input.streams.keys() {
        let mut values = vec![0u64];
        let mut counter = false;
        for (_, commit) in input.chain(actor) {
            for event in &commit.events {
                let value = *values.last().expect("never empty");
                let Some(d) = Decision::of(event) else {
                    values.push(value);
                    continue;
                };
                counter = true;
                let mut problems = Vec::new();
                if d.version + 1 != event.version {
                    problems.push(format!(
                        "decided at v{} but stored at v{} (a decision on a stale state)",
                        d.version, event.version
                    ));
                }
                if d.before != value {
                    problems.push(format!(
                        "decided on the value {} but the events before it add up to {value}",
                        d.before
                    ));
                }
                let after = value.checked_add_signed(d.delta);
                if after.is_none() {
                    problems.push(format!("took {} from {value}: below zero", -d.delta));
                }
                match (d.epoch, &shards) {
                    (None, _) => {
                        problems.push(format!("{} decided without an applied assignment", d.node))
                    }
                    (Some(epoch), Some(shards)) => {
                        let shard = shards.shard_of(actor).0;
                        let owned = hosted
                            .get(&(d.node.as_str(), epoch))
                            .is_some_and(|s| s.contains(&shard));
                        if !owned {
                            problems.push(format!(
                                "{} decided under epoch {epoch}, under which it did not host shard {shard}",
                                d.node
                            ));
                        }
                    }
                    (Some(_), None) => {}
                }
                for problem in problems {
                    out.push(Violation {
                        invariant: INVARIANT,
                        detail: format!(
                            "{actor} v{} (event {}): {problem}",
                            event.version, event.id
                        ),
                    });
                }
                values.push(after.unwrap_or(0));
            }
        }
        if counter {
            folds.insert(actor.as_str(), values);
        }
    }
    // Refusals. Per actor: (completion, version) of every acknowledged change.
    let mut acks: BTreeMap<&str, Vec<(std::time::Duration, u64)>> = BTreeMap::new();
    for op in input.ops {
        let (actor, events) = match (&op.kind, &op.outcome) {
            (OpKind::Append { actor, .. }, Outcome::Appended { events, .. })
            | (OpKind::Command { actor, .. }, Outcome::Commanded { events, .. }) => (actor, events),
            _ => continue,
        };
        if let (Some(done), Some(last)) = (op.completed, events.last()) {
            acks.entry(actor.as_str())
                .or_default()
                .push((done, last.version));
        }
    }
    for op in input.ops {
        let (OpKind::Command { actor, delta, id }, Outcome::Refused { value, version }) =
            (&op.kind, &op.outcome)
        else {
            continue;
        };
        let mut problems = Vec::new();
        let fold = folds
            .get(actor.as_str())
            .and_then(|values| values.get(*version as usize).copied())
            .or((*version == 0).then_some(0));
        match fold {
            Some(fold) if fold != *value => problems.push(format!(
                "refused on the value {value} at v{version}, but the events up to v{version} add up to {fold}"
            )),
            None => problems.push(format!("refused at v{version}, which the stream never reached")),
            Some(_) => {}
        }
        if delta.unsigned_abs() <= *value && *delta < 0 {
            problems.push(format!("refused to take {} from {value}", -delta));
        }
        if let Some((at, newer)) = acks
            .get(actor.as_str())
            .into_iter()
            .flatten()
            .find(|(at, v)| *at < op.invoked && *v > *version)
        {
            problems.push(format!(
                "refused on v{version}, but v{newer} was acknowledged at {at:?}, before the command was sent"
            ));
        }
        for problem in problems {
            out.push(Violation {
                invariant: INVARIANT,
                detail: format!(
                    "{actor}: command {id} (op #{} from {}): {problem}",
                    op.id, op.node
                ),
            });
        }
    }
    out
}
