//! Resource use over time: what the broker holds (the model of a server's memory and disk) and
//! what every node's store handle remembers, sampled by the runner at a fixed simulated
//! interval. The `long-horizon` scenario reports it per simulated day and the `resources`
//! checker proves none of it grows with time beyond what the retention and the windows bound.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aether::broker::BrokerUsage;
use aether::store::CacheUsage;

/// Where nodes publish their store handle's memory (latest per node).
#[derive(Clone, Debug, Default)]
pub struct NodeUsage(Arc<Mutex<BTreeMap<String, CacheUsage>>>);

impl NodeUsage {
    /// Records `node`'s current memory.
    pub fn set(&self, node: &str, usage: CacheUsage) {
        self.lock().insert(node.to_owned(), usage);
    }

    /// Every node's latest.
    pub fn snapshot(&self) -> BTreeMap<String, CacheUsage> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, CacheUsage>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One sample.
#[derive(Clone, Debug)]
pub struct UsageSample {
    /// Simulated time.
    pub at: Duration,
    /// What the broker held (after expiring what was due).
    pub broker: BrokerUsage,
    /// What each node's store handle remembered.
    pub nodes: BTreeMap<String, CacheUsage>,
}

/// The samples as a table with one row per simulated day (the last sample of each day).
pub fn per_day_table(samples: &[UsageSample]) -> String {
    const DAY: u64 = 86_400;
    let mut last_of_day: BTreeMap<u64, &UsageSample> = BTreeMap::new();
    for sample in samples {
        let day = sample.at.as_secs().saturating_sub(1) / DAY + 1;
        last_of_day.insert(day, sample);
    }
    let mut out = String::from(
        "| day | at (h) | stream messages | stream bytes | dedupe ids | KV keys | watch consumers | subscriptions | tips per node (max) | snapshot floors per node (max) |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for (day, s) in last_of_day {
        let tips = s.nodes.values().map(|n| n.tips).max().unwrap_or(0);
        let floors = s
            .nodes
            .values()
            .map(|n| n.snapshot_floors)
            .max()
            .unwrap_or(0);
        let _ = writeln!(
            out,
            "| {day} | {:.1} | {} | {} | {} | {} | {} | {} | {tips} | {floors} |",
            s.at.as_secs_f64() / 3600.0,
            s.broker.messages,
            s.broker.bytes,
            s.broker.dedupe_ids,
            s.broker.kv_keys,
            s.broker.watch_consumers,
            s.broker.subscribers,
        );
    }
    out
}
