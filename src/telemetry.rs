//! Metrics aether records, through the [`metrics`] facade.
//!
//! The library only records; the application installs whatever recorder it wants (a Prometheus
//! exporter, StatsD, OpenTelemetry…) — see `examples/prometheus.rs`. Without a recorder every
//! call is a no-op. Labels are bounded: `namespace`, `outcome`, `op`, `reason`, never an actor
//! id. Latencies are histograms in seconds, measured on the runtime's [`Clock`](crate::Clock).
//! [`describe`] registers a help text for each metric with the installed recorder.
//!
//! Tracing spans complement these: every store, bus, actor, projector, cluster and broker
//! operation opens a span (at `debug`, so `info` stays quiet in steady state) with the fields
//! an operator filters on — `namespace`, `actor`, `expected`, `version`, `commit_id`, `node`,
//! `shard`, `epoch`, `term`, `attempt`, `outcome`, `trace_id`; faults are logged at `warn`.

use std::time::Duration;

/// Appends, by `namespace` and `outcome` (`ok`, `conflict`, `indeterminate` — the outcome is
/// unknown —, `contended`, `deadline` — nothing stored in time —, `rejected` — invalid input
/// —, `error`).
pub const STORE_APPENDS: &str = "aether_store_appends_total";
/// Append latency in seconds, by `namespace` and `outcome`.
pub const STORE_APPEND_SECONDS: &str = "aether_store_append_seconds";
/// Publishes re-sent because an earlier attempt's outcome was unknown, by `namespace`.
pub const STORE_APPEND_RETRIES: &str = "aether_store_append_retries_total";
/// Events read per replay (one actor's history or part of it), by `namespace`.
pub const STORE_REPLAY_EVENTS: &str = "aether_store_replay_events";
/// Replay time in seconds, by `namespace` and `outcome` (`ok`, `error`).
pub const STORE_REPLAY_SECONDS: &str = "aether_store_replay_seconds";
/// Damaged records replay reported, by `namespace`.
pub const STORE_DAMAGED_RECORDS: &str = "aether_store_damaged_records_total";
/// Tip-cache lookups on append, by `namespace` and `result` (`hit`, `miss`).
pub const STORE_TIP_CACHE: &str = "aether_store_tip_cache_total";
/// Snapshots saved, by `namespace` and `outcome` (`ok`, `stale`, `deadline`, `error`).
pub const STORE_SNAPSHOTS: &str = "aether_store_snapshots_total";

/// Commands run by [`ActorHost::execute`](crate::ActorHost::execute) (on the owner), by
/// `namespace` and `outcome` (`ok`, `rejected`, `not_owner`, `conflict`, `deadline` — the
/// command's or a store operation's —, `error`).
pub const ACTOR_COMMANDS: &str = "aether_actor_commands_total";
/// Command latency on the owner in seconds, by `namespace` and `outcome`.
pub const ACTOR_COMMAND_SECONDS: &str = "aether_actor_command_seconds";
/// Commands sent with [`ActorHost::send`](crate::ActorHost::send) (run here or on the owner),
/// by `namespace` and `outcome` (`ok`, `rejected`, `not_owner`, `unroutable`, `timeout`,
/// `conflict`, `deadline`, `error`).
pub const ACTOR_SENDS: &str = "aether_actor_sends_total";
/// Latency of [`ActorHost::send`](crate::ActorHost::send) in seconds, by `namespace` and
/// `outcome`.
pub const ACTOR_SEND_SECONDS: &str = "aether_actor_send_seconds";
/// Re-routes of a sent command (no owner known, nobody listening, "not the owner"), by
/// `namespace` and `reason`.
pub const ACTOR_REROUTES: &str = "aether_actor_reroutes_total";
/// Actor loads into memory (activations), by `namespace`.
pub const ACTOR_ACTIVATIONS: &str = "aether_actor_activations_total";
/// Actors dropped from memory (passivations), by `namespace`.
pub const ACTOR_PASSIVATIONS: &str = "aether_actor_passivations_total";
/// Actors in memory, by `namespace` and `node`.
pub const ACTOR_ACTIVE: &str = "aether_actor_active";
/// Snapshots an actor load did not use (it replayed instead), by `namespace` and `reason`
/// (`newer_schema`, `no_upcaster`, `undecodable`).
pub const ACTOR_SNAPSHOTS_SKIPPED: &str = "aether_actor_snapshots_skipped_total";
/// Keyed commands answered with the outcome of an earlier command under the same key, by
/// `namespace`.
pub const ACTOR_DEDUPLICATED: &str = "aether_actor_commands_deduplicated_total";
/// Stored events lifted by an upcaster, by `event_type` and `from_version`.
pub const EVENTS_UPCAST: &str = "aether_events_upcast_total";

/// Times this node became leader.
pub const CLUSTER_LEADER_CHANGES: &str = "aether_cluster_leader_changes_total";
/// Shards whose owner changed in an assignment this node published as leader.
pub const CLUSTER_SHARD_MOVES: &str = "aether_cluster_shard_moves_total";
/// Assignments this node published as leader.
pub const CLUSTER_ASSIGNMENTS: &str = "aether_cluster_assignments_total";
/// Live members in this node's view.
pub const CLUSTER_MEMBERS: &str = "aether_cluster_members";
/// Shards this node owns in its view.
pub const CLUSTER_SHARDS_OWNED: &str = "aether_cluster_shards_owned";

/// Events published on the bus, by `namespace`.
pub const BUS_PUBLISHED: &str = "aether_bus_published_total";
/// Events subscribers will not receive, by `namespace` and `reason` (`queue_full` — a
/// subscriber fell behind its bounded queue —, `lost_in_transit` — a remote node's events that
/// never arrived —, `unsent` — this node's outgoing queue was full).
pub const BUS_LAGGED: &str = "aether_bus_lagged_events_total";

/// Records (commits and damaged records) a projector handed to its handler, by `projection`.
pub const PROJECTOR_RECORDS: &str = "aether_projector_records_total";
/// Failed steps a running projector tries again (handler or broker failures), by `projection`.
pub const PROJECTOR_RETRIES: &str = "aether_projector_retries_total";
/// Steps a projector running on a cluster abandoned because its node stopped owning the
/// projection mid-step, by `projection`.
pub const PROJECTOR_STEPS_ABANDONED: &str = "aether_projector_steps_abandoned_total";
/// How old the newest record of a projector's latest page was, in seconds (0 once caught up),
/// by `projection`: the projection's lag behind the writers.
pub const PROJECTOR_LAG_SECONDS: &str = "aether_projector_lag_seconds";
/// The stream position a projector's next page starts at, by `projection` (the stream's last
/// sequence minus this is its lag in records).
pub const PROJECTOR_POSITION: &str = "aether_projector_position";
/// Commands sent by policies, by `policy` and `outcome` (`executed`, `deduplicated`,
/// `rejected`).
pub const POLICY_COMMANDS: &str = "aether_policy_commands_total";

/// NATS broker operations that failed, by `op` and `error` (the
/// [`BrokerError`](crate::BrokerError) kind: `timeout`, `unavailable`, `no_responders`, …);
/// a refused compare-and-set (wrong last sequence, key exists, wrong revision) is an answer,
/// not counted.
pub const BROKER_ERRORS: &str = "aether_broker_errors_total";
/// NATS connection events (feature `nats`), by `event` (`connected`, `disconnected`,
/// `lame_duck`, `slow_consumer`, `server_error`, `client_error`, `draining`, `closed`).
pub const NATS_CONNECTION_EVENTS: &str = "aether_nats_connection_events_total";

/// Every metric aether records: name, kind and help text.
pub const METRICS: &[(&str, Kind, &str)] = &[
    (STORE_APPENDS, Kind::Counter, "Appends by outcome"),
    (
        STORE_APPEND_SECONDS,
        Kind::Histogram,
        "Append latency (seconds)",
    ),
    (
        STORE_APPEND_RETRIES,
        Kind::Counter,
        "Publishes re-sent after an unknown outcome",
    ),
    (
        STORE_REPLAY_EVENTS,
        Kind::Histogram,
        "Events read per replay",
    ),
    (
        STORE_REPLAY_SECONDS,
        Kind::Histogram,
        "Replay time (seconds)",
    ),
    (
        STORE_DAMAGED_RECORDS,
        Kind::Counter,
        "Damaged records reported by replay",
    ),
    (STORE_TIP_CACHE, Kind::Counter, "Tip-cache lookups"),
    (STORE_SNAPSHOTS, Kind::Counter, "Snapshots saved"),
    (
        ACTOR_COMMANDS,
        Kind::Counter,
        "Commands executed by outcome",
    ),
    (
        ACTOR_COMMAND_SECONDS,
        Kind::Histogram,
        "Command latency on the owner (seconds)",
    ),
    (ACTOR_SENDS, Kind::Counter, "Commands sent, by outcome"),
    (
        ACTOR_SNAPSHOTS_SKIPPED,
        Kind::Counter,
        "Snapshots not used on load, by reason",
    ),
    (
        ACTOR_DEDUPLICATED,
        Kind::Counter,
        "Keyed commands answered with an earlier outcome",
    ),
    (
        EVENTS_UPCAST,
        Kind::Counter,
        "Stored events upcast on replay",
    ),
    (
        ACTOR_SEND_SECONDS,
        Kind::Histogram,
        "Latency of a sent command (seconds)",
    ),
    (ACTOR_REROUTES, Kind::Counter, "Re-routes of sent commands"),
    (ACTOR_ACTIVATIONS, Kind::Counter, "Actors loaded"),
    (
        ACTOR_PASSIVATIONS,
        Kind::Counter,
        "Actors dropped from memory",
    ),
    (ACTOR_ACTIVE, Kind::Gauge, "Actors in memory"),
    (
        CLUSTER_LEADER_CHANGES,
        Kind::Counter,
        "Times this node became leader",
    ),
    (
        CLUSTER_SHARD_MOVES,
        Kind::Counter,
        "Shards moved by assignments this node published",
    ),
    (
        CLUSTER_ASSIGNMENTS,
        Kind::Counter,
        "Assignments this node published",
    ),
    (CLUSTER_MEMBERS, Kind::Gauge, "Live members in this view"),
    (CLUSTER_SHARDS_OWNED, Kind::Gauge, "Shards this node owns"),
    (BUS_PUBLISHED, Kind::Counter, "Events published on the bus"),
    (
        BUS_LAGGED,
        Kind::Counter,
        "Events subscribers missed by falling behind",
    ),
    (PROJECTOR_RECORDS, Kind::Counter, "Records projected"),
    (
        PROJECTOR_RETRIES,
        Kind::Counter,
        "Failed projector steps tried again",
    ),
    (
        PROJECTOR_STEPS_ABANDONED,
        Kind::Counter,
        "Projector steps abandoned when ownership moved",
    ),
    (
        PROJECTOR_LAG_SECONDS,
        Kind::Gauge,
        "Age of the newest record projected (seconds)",
    ),
    (
        PROJECTOR_POSITION,
        Kind::Gauge,
        "Stream position of the next page",
    ),
    (BROKER_ERRORS, Kind::Counter, "Failed broker operations"),
    (
        NATS_CONNECTION_EVENTS,
        Kind::Counter,
        "NATS connection events",
    ),
];

/// A metric's kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic count.
    Counter,
    /// Value that goes up and down.
    Gauge,
    /// Distribution (latencies, sizes).
    Histogram,
}

/// Registers every metric's help text (and, for latencies, its unit) with the installed
/// recorder. Call once after installing a recorder; harmless without one.
pub fn describe() {
    for &(name, kind, help) in METRICS {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, help),
            Kind::Gauge => metrics::describe_gauge!(name, help),
            Kind::Histogram if name.ends_with("_seconds") => {
                metrics::describe_histogram!(name, metrics::Unit::Seconds, help)
            }
            Kind::Histogram => metrics::describe_histogram!(name, help),
        }
    }
}

/// Seconds as a histogram sample.
pub(crate) fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/observability.md lists every metric; a metric added here without a row there fails.
    #[test]
    fn every_metric_is_documented() {
        let doc = include_str!("../docs/observability.md");
        for (name, _, _) in METRICS {
            assert!(
                doc.contains(&format!("`{name}`")),
                "{name} is missing from docs/observability.md"
            );
        }
        let names: std::collections::BTreeSet<_> = METRICS.iter().map(|m| m.0).collect();
        assert_eq!(names.len(), METRICS.len(), "metric names are unique");
    }
}
