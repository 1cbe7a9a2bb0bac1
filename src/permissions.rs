//! The NATS permissions each kind of aether process needs in one namespace, generated from the
//! names aether really uses ([`crate::names`]), so that the documentation, a deployment's
//! server configuration and the tests that check them cannot drift apart.
//!
//! ```
//! use aether::permissions::{Role, for_role};
//!
//! let writer = for_role("orders", &Role::StoreWriter).unwrap();
//! assert!(writer.publish.allow.contains(&"aether.ev.orders.*".to_owned()));
//! assert!(!writer.publish.allow.iter().any(|s| s.contains("payments")));
//! // A `permissions { … }` block for a user in a nats-server configuration file:
//! let block = writer.to_nats_config();
//! assert!(block.contains(r#""$JS.API.STREAM.INFO.AETHER_EV_orders""#));
//! // The connection must use the namespace's own reply subjects:
//! assert_eq!(writer.inbox_prefix, "_INBOX_orders");
//! ```
//!
//! Each set is an allow list: everything it does not name is refused by the server. The deny
//! lists repeat, for the read-only roles, the namespace's write subjects, and for every role
//! the destructive stream API, so that a set merged with a broader allow list keeps them out.
//! A connection using a set must set [`Permissions::inbox_prefix`] as its inbox prefix
//! (`NatsOptions::inbox_prefix`); a bus that may not receive every namespace must name its
//! namespaces (`BusConfig::namespaces`).

use crate::codec::{InvalidName, validate_namespace};
use crate::names::{
    ClusterBuckets, JS_API_PREFIX, NamespaceNames, inbox_prefix, kv_stream, kv_subject_prefix,
};

/// What a process does in a namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Role {
    /// Appends and reads the namespace's events and snapshots (an `EventStore`), creates its
    /// streams on first use, and publishes and receives the namespace's bus.
    StoreWriter,
    /// Read-only on the events and snapshots; runs projectors, whose checkpoints it creates and
    /// moves in the namespace's projections bucket; receives the bus. Cannot append.
    Reader,
    /// A cluster node: everything a [`Role::StoreWriter`] does, plus the cluster's three KV
    /// buckets (create, read, write, watch), sending commands to any node of the namespace,
    /// serving those sent to it, and answering them.
    ClusterNode {
        /// The cluster's name (`ClusterConfig::name`).
        cluster: String,
    },
    /// A CLI or inspector: reads the events, snapshots and projection checkpoints, and the
    /// cluster's buckets when a cluster is named; receives the bus; writes nothing.
    Inspector {
        /// The cluster whose buckets it may read, if any.
        cluster: Option<String>,
    },
}

/// The subjects one direction (publish or subscribe) allows and denies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubjectRules {
    /// Subjects (NATS wildcards allowed) that may be used; everything else is refused.
    pub allow: Vec<String>,
    /// Subjects refused even where `allow` would match.
    pub deny: Vec<String>,
}

/// A role's NATS permissions in one namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Permissions {
    /// The namespace.
    pub namespace: String,
    /// The role.
    pub role: Role,
    /// Subjects it may publish to (messages, appends, JetStream API requests).
    pub publish: SubjectRules,
    /// Subjects it may subscribe to.
    pub subscribe: SubjectRules,
    /// Whether it may answer requests it received (NATS `allow_responses`): a node answers the
    /// commands sent to it on the senders' reply subjects, which no allow list names.
    pub allow_responses: bool,
    /// The inbox prefix the connection must use ([`crate::names::inbox_prefix`]).
    pub inbox_prefix: String,
}

impl Permissions {
    /// The set as a `permissions { … }` block of a nats-server configuration file, for an entry
    /// of `authorization { users: [ … ] }` (or of an account's `users`).
    pub fn to_nats_config(&self) -> String {
        let list = |out: &mut String, name: &str, subjects: &[String]| {
            if subjects.is_empty() {
                return;
            }
            out.push_str(&format!("    {name}: [\n"));
            for subject in subjects {
                out.push_str(&format!("      \"{subject}\"\n"));
            }
            out.push_str("    ]\n");
        };
        let mut out = format!(
            "# aether role {}, namespace \"{}\"; connect with inbox prefix \"{}\"\n\
             permissions {{\n",
            self.role.label(),
            self.namespace,
            self.inbox_prefix
        );
        for (name, rules) in [("publish", &self.publish), ("subscribe", &self.subscribe)] {
            out.push_str(&format!("  {name} {{\n"));
            list(&mut out, "allow", &rules.allow);
            list(&mut out, "deny", &rules.deny);
            out.push_str("  }\n");
        }
        if self.allow_responses {
            out.push_str("  allow_responses: true\n");
        }
        out.push_str("}\n");
        out
    }
}

impl Role {
    /// A short name for documentation (`store-writer`, `reader`, `cluster-node`, `inspector`).
    pub fn label(&self) -> &'static str {
        match self {
            Role::StoreWriter => "store-writer",
            Role::Reader => "reader",
            Role::ClusterNode { .. } => "cluster-node",
            Role::Inspector { .. } => "inspector",
        }
    }
}

/// The JetStream API subjects that read stream `stream`: its info, direct gets (batched by
/// sequence, and last-by-subject with the subject in the request's subject), leader-served
/// message gets, and the ordered consumers of long reads (created without a name, pulled,
/// deleted when the read ends).
fn read_stream(stream: &str) -> Vec<String> {
    let api = JS_API_PREFIX;
    vec![
        format!("{api}.STREAM.INFO.{stream}"),
        format!("{api}.DIRECT.GET.{stream}"),
        format!("{api}.DIRECT.GET.{stream}.>"),
        format!("{api}.STREAM.MSG.GET.{stream}"),
        format!("{api}.CONSUMER.CREATE.{stream}"),
        format!("{api}.CONSUMER.MSG.NEXT.{stream}.*"),
        format!("{api}.CONSUMER.DELETE.{stream}.*"),
    ]
}

/// Creating stream `stream`.
fn create_stream(stream: &str) -> String {
    format!("{JS_API_PREFIX}.STREAM.CREATE.{stream}")
}

/// Reading KV bucket `bucket` (get, list).
fn read_bucket(bucket: &str) -> Vec<String> {
    read_stream(&kv_stream(bucket))
}

/// Creating KV bucket `bucket` and writing its keys (create, update, put, delete).
fn write_bucket(bucket: &str) -> Vec<String> {
    vec![
        create_stream(&kv_stream(bucket)),
        format!("{}>", kv_subject_prefix(bucket)),
    ]
}

/// Watching KV bucket `bucket`: an ordered push consumer delivering to the inbox, whose flow
/// control the client answers on `$JS.FC.<stream>.…`.
fn watch_bucket(bucket: &str) -> String {
    format!("$JS.FC.{}.>", kv_stream(bucket))
}

/// The destructive stream API aether never uses, denied to every role.
fn destructive_api() -> Vec<String> {
    [
        "STREAM.DELETE",
        "STREAM.PURGE",
        "STREAM.UPDATE",
        "STREAM.MSG.DELETE",
    ]
    .iter()
    .map(|verb| format!("{JS_API_PREFIX}.{verb}.>"))
    .collect()
}

/// Checks a cluster name by the rule `ClusterConfig::validate` applies.
fn validate_cluster(name: &str) -> Result<(), InvalidName> {
    crate::broker::subject::validate_name("cluster", name).map_err(|_| InvalidName {
        kind: "cluster name",
        name: name.to_owned(),
        rule: "must be non-empty and use only A-Z, a-z, 0-9, '_' and '-'",
    })
}

/// The permissions `role` needs in `namespace`.
///
/// # Errors
/// [`InvalidName`] for an invalid namespace or cluster name.
pub fn for_role(namespace: &str, role: &Role) -> Result<Permissions, InvalidName> {
    validate_namespace(namespace)?;
    let names = NamespaceNames::new(namespace);
    let events = names.events_stream();
    let snapshots = names.snapshots_stream();
    let bus = names.bus_subject();
    let projections = names.projections_bucket();
    let inbox = inbox_prefix(namespace);

    // What every role does: check JetStream at connect, read the namespace's streams, receive
    // its replies and its bus.
    let mut publish = vec![format!("{JS_API_PREFIX}.INFO")];
    publish.extend(read_stream(&events));
    publish.extend(read_stream(&snapshots));
    let mut subscribe = vec![format!("{inbox}.>"), bus.clone()];
    let mut deny = Vec::new();
    let mut allow_responses = false;

    let writes = |publish: &mut Vec<String>| {
        publish.extend([
            create_stream(&events),
            create_stream(&snapshots),
            // An append that finds no stream asks which stream captures its subject.
            format!("{JS_API_PREFIX}.STREAM.NAMES"),
            names.events_pattern(),
            names.snapshots_pattern(),
            bus.clone(),
        ]);
    };
    let read_only = |deny: &mut Vec<String>| {
        deny.extend([names.events_pattern(), names.snapshots_pattern()]);
    };
    match role {
        Role::StoreWriter => writes(&mut publish),
        Role::Reader => {
            publish.extend(read_bucket(&projections));
            publish.extend(write_bucket(&projections));
            read_only(&mut deny);
        }
        Role::ClusterNode { cluster } => {
            validate_cluster(cluster)?;
            writes(&mut publish);
            let buckets = ClusterBuckets::new(cluster);
            for bucket in [&buckets.members, &buckets.leader, &buckets.assignment] {
                publish.extend(read_bucket(bucket));
                publish.extend(write_bucket(bucket));
                publish.push(watch_bucket(bucket));
            }
            publish.push(format!("aether.cmd.{namespace}.>"));
            subscribe.push(format!("aether.cmd.{namespace}.>"));
            allow_responses = true;
        }
        Role::Inspector { cluster } => {
            publish.extend(read_bucket(&projections));
            read_only(&mut deny);
            deny.push(format!("{}>", kv_subject_prefix(&projections)));
            if let Some(cluster) = cluster {
                validate_cluster(cluster)?;
                let buckets = ClusterBuckets::new(cluster);
                for bucket in [&buckets.members, &buckets.leader, &buckets.assignment] {
                    publish.extend(read_bucket(bucket));
                    deny.push(format!("{}>", kv_subject_prefix(bucket)));
                }
            }
        }
    }
    deny.extend(destructive_api());
    subscribe.dedup();
    Ok(Permissions {
        namespace: namespace.to_owned(),
        role: role.clone(),
        publish: SubjectRules {
            allow: publish,
            deny,
        },
        subscribe: SubjectRules {
            allow: subscribe,
            deny: Vec::new(),
        },
        allow_responses,
        inbox_prefix: inbox,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles() -> Vec<Role> {
        vec![
            Role::StoreWriter,
            Role::Reader,
            Role::ClusterNode {
                cluster: "orders-cluster".into(),
            },
            Role::Inspector {
                cluster: Some("orders-cluster".into()),
            },
        ]
    }

    #[test]
    fn no_role_names_another_namespace_or_a_wildcard_wider_than_its_own() {
        for role in roles() {
            let p = for_role("orders", &role).unwrap();
            for subject in p.publish.allow.iter().chain(&p.subscribe.allow) {
                // The two account-wide API requests: JetStream info, and stream names by subject.
                let account_wide = ["$JS.API.INFO", "$JS.API.STREAM.NAMES"];
                assert!(
                    subject.contains("orders") || account_wide.contains(&subject.as_str()),
                    "{role:?}: {subject}"
                );
                assert!(!subject.starts_with("aether.>"), "{subject}");
                assert_ne!(subject, "_INBOX.>");
            }
        }
    }

    #[test]
    fn only_writers_may_publish_events_and_only_nodes_may_send_commands() {
        let allows = |role: &Role, subject: &str| {
            for_role("orders", role)
                .unwrap()
                .publish
                .allow
                .iter()
                .any(|s| s == subject)
        };
        let [writer, reader, node, inspector] = roles().try_into().unwrap();
        assert!(allows(&writer, "aether.ev.orders.*"));
        assert!(allows(&node, "aether.ev.orders.*"));
        assert!(!allows(&reader, "aether.ev.orders.*"));
        assert!(!allows(&inspector, "aether.ev.orders.*"));
        assert!(allows(&node, "aether.cmd.orders.>"));
        assert!(!allows(&writer, "aether.cmd.orders.>"));
        assert!(allows(&reader, "$KV.aether-projections-orders.>"));
        assert!(!allows(&inspector, "$KV.aether-projections-orders.>"));
    }

    #[test]
    fn bad_names_are_refused() {
        assert!(for_role("a.b", &Role::StoreWriter).is_err());
        let role = Role::ClusterNode {
            cluster: "c.>".into(),
        };
        assert!(for_role("a", &role).is_err());
    }

    /// The README shows every role's generated set for namespace `orders` and cluster
    /// `orders-cluster`: it must be what this module generates.
    #[test]
    fn the_readme_shows_the_generated_sets() {
        let readme = include_str!("../README.md");
        for role in roles() {
            let block = for_role("orders", &role).unwrap().to_nats_config();
            assert!(
                readme.contains(&block),
                "README.md lacks the generated {} set:\n{block}",
                role.label()
            );
        }
    }
}
