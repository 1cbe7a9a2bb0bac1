//! Resource use stays bounded (invariant 15): over a long run, what the broker holds and what
//! the nodes remember is bounded by the workload's rate times the windows that keep things
//! (retention, the dedupe window, snapshot history), never by how long the system has run.
//!
//! From the samples the runner takes (scenarios with `sample_every`):
//!
//! - The events stream holds no more messages than the appends that may have stored a record
//!   within the retention before the sample (each stores at most one record).
//! - It remembers no more message ids than the appends within the dedupe window.
//! - The snapshots stream holds at most `snapshot_history` per actor.
//! - A node's store handle remembers at most one tip and one snapshot floor per actor.
//! - KV keys, watch consumers and subscriptions do not grow: their lowest sample in the last
//!   quarter of the run is within the lowest of the first quarter plus one per node (a leak of
//!   one per hour over two days shows; the lingering of watches dropped in a burst of
//!   reconnects, 30 s as on NATS, does not).

use std::time::Duration;

use super::{CheckInput, Violation};
use crate::history::OpKind;
use crate::usage::UsageSample;
use crate::workload::NAMESPACE;

const INVARIANT: &str = "15 resource use does not grow with time";

/// Checks the samples.
pub fn check(input: &CheckInput<'_>) -> Vec<Violation> {
    let mut out = Vec::new();
    let samples = input.usage;
    if samples.is_empty() {
        return out;
    }
    let events = format!("AETHER_EV_{NAMESPACE}");
    let snapshots = format!("AETHER_SNAP_{NAMESPACE}");
    let config = aether::store::StoreConfig::new(NAMESPACE);
    let window = input
        .retention
        .map_or(aether::broker::DEFAULT_DUPLICATE_WINDOW, |r| {
            r.min(aether::broker::DEFAULT_DUPLICATE_WINDOW)
        });
    // When each append may have stored its record: between its invocation and its end.
    let appends: Vec<(Duration, Duration)> = input
        .ops
        .iter()
        .filter(|op| matches!(op.kind, OpKind::Append { .. }))
        .map(|op| (op.invoked, op.completed.unwrap_or(input.end)))
        .collect();
    let may_have_stored_within = |at: Duration, span: Duration| {
        let since = at.saturating_sub(span + Duration::from_secs(1));
        appends
            .iter()
            .filter(|(invoked, ended)| *invoked <= at && *ended >= since)
            .count()
    };
    for sample in samples {
        let hours = sample.at.as_secs_f64() / 3600.0;
        if let (Some(retention), Some(stream)) =
            (input.retention, sample.broker.streams.get(&events))
        {
            let bound = may_have_stored_within(sample.at, retention);
            if stream.messages > bound {
                out.push(violation(format!(
                    "at {hours:.1} h the events stream holds {} messages, but only {bound} appends could have stored one within the retention",
                    stream.messages
                )));
            }
        }
        if let Some(stream) = sample.broker.streams.get(&events) {
            let bound = may_have_stored_within(sample.at, window);
            if stream.dedupe_ids > bound {
                out.push(violation(format!(
                    "at {hours:.1} h the events stream remembers {} message ids, but only {bound} appends ran within the dedupe window",
                    stream.dedupe_ids
                )));
            }
        }
        if let Some(stream) = sample.broker.streams.get(&snapshots) {
            let actors = input.streams.len().max(input.snapshots.len()) as u64;
            let bound = actors * config.snapshot_history;
            if stream.messages as u64 > bound {
                out.push(violation(format!(
                    "at {hours:.1} h the snapshots stream holds {} messages, more than {} per actor",
                    stream.messages, config.snapshot_history
                )));
            }
        }
    }
    // A handle remembers at most one tip and one snapshot floor per actor it touched.
    let actors = input.streams.len();
    for sample in samples {
        for (node, cache) in &sample.nodes {
            if cache.tips > actors || cache.snapshot_floors > actors {
                out.push(violation(format!(
                    "at {:.1} h {node} remembers {} tips and {} snapshot floors for {actors} actors",
                    sample.at.as_secs_f64() / 3600.0,
                    cache.tips,
                    cache.snapshot_floors
                )));
            }
        }
    }
    let quarter = samples.len() / 4;
    if quarter == 0 {
        return out;
    }
    let nodes = input.nodes.len();
    type Gauge = fn(&UsageSample) -> usize;
    let gauges: [(&str, Gauge); 3] = [
        ("KV keys", |s| s.broker.kv_keys),
        ("watch consumers", |s| s.broker.watch_consumers),
        ("subscriptions", |s| s.broker.subscribers),
    ];
    // Floors, not peaks: a burst of reconnects leaves dropped watches lingering on the server
    // for a while (as on NATS), which lifts one sample; a leak lifts every later one.
    for (name, gauge) in gauges {
        let early = samples[..quarter].iter().map(gauge).min().unwrap_or(0);
        let late = samples[samples.len() - quarter..]
            .iter()
            .map(gauge)
            .min()
            .unwrap_or(0);
        if late > early + nodes {
            out.push(violation(format!(
                "{name} grew from a floor of {early} in the first quarter of the run to {late} in the last"
            )));
        }
    }
    out
}

fn violation(detail: String) -> Violation {
    Violation {
        invariant: INVARIANT,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use aether::broker::BrokerUsage;

    use super::*;

    fn input_with<'a>(nodes: &'a [String], usage: &'a [UsageSample]) -> CheckInput<'a> {
        CheckInput {
            ops: &[],
            streams: BTreeMap::new(),
            damaged_actors: Vec::new(),
            nodes,
            safety_end: Duration::from_secs(3600),
            end: Duration::from_secs(48 * 3600),
            liveness_bound: Duration::from_secs(60),
            cluster: false,
            shard_count: 0,
            lease_ttl: Duration::from_secs(3),
            snapshots: BTreeMap::new(),
            retention: None,
            replicated: false,
            usage,
        }
    }

    fn hourly(watches: impl Fn(usize) -> usize) -> Vec<UsageSample> {
        (1..=48)
            .map(|h| {
                let mut broker = BrokerUsage::default();
                broker.watch_consumers = watches(h);
                UsageSample {
                    at: Duration::from_secs(h as u64 * 3600),
                    broker,
                    nodes: BTreeMap::new(),
                }
            })
            .collect()
    }

    #[test]
    fn a_watch_leaked_every_hour_is_caught_and_a_burst_of_lingering_ones_is_not() {
        let nodes: Vec<String> = ["n0", "n1", "n2"].map(String::from).to_vec();
        let leak = hourly(|h| 9 + h);
        let violations = check(&input_with(&nodes, &leak));
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(violations[0].detail.contains("watch consumers grew"));

        // Reconnect bursts late in the run lift single samples only.
        let bursts = hourly(|h| if h % 7 == 0 { 57 } else { 9 });
        assert!(check(&input_with(&nodes, &bursts)).is_empty());
    }
}
