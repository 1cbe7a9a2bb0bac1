//! `cluster`: what the cluster's KV buckets say — members, leader and fencing token, the
//! assignment's epoch and shards per node, and each node's acknowledged epoch — read with the
//! library's `cluster::inspect`, which decodes the records as the nodes do.

use aether::NatsBroker;
use aether::broker::BrokerError;
use aether::cluster::{ClusterConfig, inspect};
use serde_json::json;

use crate::output::{CliError, Verdict, print_json};

/// `cluster --name <name>`.
pub async fn show(broker: &NatsBroker, name: &str, json: bool) -> Result<Verdict, CliError> {
    let config = ClusterConfig::new().name(name);
    config
        .validate()
        .map_err(|e| CliError::Usage(format!("cluster name {name:?}: {e}")))?;
    let snapshot = match inspect(broker, &config).await {
        Ok(s) => s,
        Err(BrokerError::NotFound { what }) => {
            return Err(CliError::NoCluster {
                name: name.to_owned(),
                reason: format!("{what} not found"),
            });
        }
        Err(e) => return Err(CliError::broker(format!("reading cluster {name:?}"))(e)),
    };
    let loads = snapshot.shards_per_node();
    let damaged = snapshot.assignment_error.is_some();
    if json {
        let nodes: Vec<serde_json::Value> = loads
            .iter()
            .map(|(node, load)| {
                json!({
                    "node": node.as_str(),
                    "member": snapshot.members.contains_key(node),
                    "primaries": load.primaries,
                    "standbys": load.standbys,
                    "acknowledged_epoch": snapshot.acknowledgements.get(node),
                })
            })
            .collect();
        print_json(&json!({
            "cluster": snapshot.name,
            "members": snapshot.members.keys().map(|n| n.as_str()).collect::<Vec<_>>(),
            "leader": snapshot.leader.as_ref().map(|l| json!({"node": l.node.as_str(), "token": l.token})),
            "assignment": snapshot.assignment.as_ref().map(|a| json!({
                "epoch": a.epoch(),
                "leader_token": a.leader_token(),
                "shards": a.placement().shard_count(),
                "replication_factor": a.placement().replication_factor(),
            })),
            "assignment_error": snapshot.assignment_error.as_ref().map(ToString::to_string),
            "shards_per_node": nodes,
            "acknowledgements": snapshot
                .acknowledgements
                .iter()
                .map(|(n, e)| (n.as_str().to_owned(), json!(e)))
                .collect::<serde_json::Map<_, _>>(),
        }));
        return Ok(Verdict::from_damage(damaged));
    }
    println!("cluster {}", snapshot.name);
    let members: Vec<&str> = snapshot.members.keys().map(|n| n.as_str()).collect();
    println!("members ({}): {}", members.len(), members.join(" "));
    match &snapshot.leader {
        Some(l) => println!("leader: {} (token {})", l.node, l.token),
        None => println!("leader: none"),
    }
    match (&snapshot.assignment, &snapshot.assignment_error) {
        (Some(a), _) => println!(
            "assignment: epoch {} (published under token {}), {} shards, replication {}",
            a.epoch(),
            a.leader_token(),
            a.placement().shard_count(),
            a.placement().replication_factor()
        ),
        (None, Some(e)) => println!("assignment: DAMAGED: {e}"),
        (None, None) => println!("assignment: none published"),
    }
    if !loads.is_empty() {
        println!("shards per node:");
        for (node, load) in &loads {
            let ack = snapshot
                .acknowledgements
                .get(node)
                .map_or("none".to_owned(), ToString::to_string);
            let gone = if snapshot.members.contains_key(node) {
                ""
            } else {
                "  (not a member)"
            };
            println!(
                "  {node}  primaries {}  standbys {}  acknowledged epoch {ack}{gone}",
                load.primaries, load.standbys
            );
        }
    }
    Ok(Verdict::from_damage(damaged))
}
