//! Every stream, subject and bucket name aether uses on the broker, in one place. Nothing else
//! spells them: a name changes here or nowhere.
//!
//! | what | name |
//! |---|---|
//! | events of namespace `ns` | stream `AETHER_EV_<ns>`, subject `aether.ev.<ns>.<actor token>` |
//! | snapshots | stream `AETHER_SNAP_<ns>`, subject `aether.snap.<ns>.<actor token>` |
//! | bus | subject `aether.bus.<ns>` |
//! | commands for one aggregate type on a node | subject `aether.cmd.<ns>.<node id>.<aggregate>` |
//! | cluster | KV buckets `<cluster>-members`, `<cluster>-leader`, `<cluster>-assignment` |
//! | projection checkpoints | KV bucket `aether-projections-<ns>` |
//! | a KV bucket `b` | stream `KV_<b>`, subjects `$KV.<b>.<key>` (NATS's own layout) |
//! | replies to a connection working for `ns` | subjects under `_INBOX_<ns>` (when configured) |
//! | the JetStream API | subjects under `$JS.API` (NATS's default domain) |
//!
//! The actor token is [`crate::codec::encode_actor_id`]: an injective escape,
//! so two actors never share a subject. Namespaces are checked by
//! [`validate_namespace`](crate::codec::validate_namespace) before any name is built.

use crate::codec::{InvalidName, encode_actor_id};
use crate::node::NodeId;

/// The names of one namespace's event and snapshot streams and its subjects. Derived once per
/// store (a namespace is validated before its names are built).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceNames {
    namespace: String,
}

impl NamespaceNames {
    /// The names of `namespace`, which must already be valid.
    pub fn new(namespace: &str) -> Self {
        debug_assert!(crate::codec::validate_namespace(namespace).is_ok());
        Self {
            namespace: namespace.to_owned(),
        }
    }

    /// The stream holding the namespace's commits.
    pub fn events_stream(&self) -> String {
        format!("AETHER_EV_{}", self.namespace)
    }

    /// The pattern of every actor's event subject (what the events stream captures).
    pub fn events_pattern(&self) -> String {
        format!("aether.ev.{}.*", self.namespace)
    }

    /// The prefix of every actor's event subject, before the actor token.
    pub fn events_prefix(&self) -> String {
        format!("aether.ev.{}.", self.namespace)
    }

    /// The subject of `actor`'s commits.
    ///
    /// # Errors
    /// [`InvalidName`] for an invalid actor id.
    pub fn event_subject(&self, actor: &str) -> Result<String, InvalidName> {
        Ok(format!(
            "aether.ev.{}.{}",
            self.namespace,
            encode_actor_id(actor)?
        ))
    }

    /// The stream holding the namespace's snapshots.
    pub fn snapshots_stream(&self) -> String {
        format!("AETHER_SNAP_{}", self.namespace)
    }

    /// The pattern of every actor's snapshot subject.
    pub fn snapshots_pattern(&self) -> String {
        format!("aether.snap.{}.*", self.namespace)
    }

    /// The subject of `actor`'s snapshots.
    ///
    /// # Errors
    /// [`InvalidName`] for an invalid actor id.
    pub fn snapshot_subject(&self, actor: &str) -> Result<String, InvalidName> {
        Ok(format!(
            "aether.snap.{}.{}",
            self.namespace,
            encode_actor_id(actor)?
        ))
    }

    /// The bus subject of the namespace.
    pub fn bus_subject(&self) -> String {
        bus_subject(&self.namespace)
    }

    /// The subject commands for aggregate type `aggregate` on `node` are sent to.
    pub fn command_subject(&self, node: &NodeId, aggregate: &str) -> String {
        command_subject(&self.namespace, node, aggregate)
    }

    /// The KV bucket of the namespace's projection checkpoints.
    pub fn projections_bucket(&self) -> String {
        format!("aether-projections-{}", self.namespace)
    }
}

/// Prefix of every bus subject.
pub const BUS_PREFIX: &str = "aether.bus";

/// The bus subject of `namespace`.
pub fn bus_subject(namespace: &str) -> String {
    format!("{BUS_PREFIX}.{namespace}")
}

/// The pattern of every bus subject.
pub fn bus_pattern() -> String {
    format!("{BUS_PREFIX}.>")
}

/// The namespace a bus subject belongs to.
pub fn bus_namespace(subject: &str) -> Option<&str> {
    subject
        .strip_prefix(BUS_PREFIX)
        .and_then(|rest| rest.strip_prefix('.'))
}

/// The subject commands for aggregate type `aggregate` on `node` in `namespace` are sent to
/// (`aggregate` is an [`Aggregate::NAME`](crate::Aggregate::NAME), a checked subject token).
pub fn command_subject(namespace: &str, node: &NodeId, aggregate: &str) -> String {
    format!("aether.cmd.{namespace}.{node}.{aggregate}")
}

/// The KV buckets of the cluster called `cluster`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterBuckets {
    /// Membership entries (TTL).
    pub members: String,
    /// The leader lease (TTL).
    pub leader: String,
    /// The published assignment and the nodes' acknowledgements.
    pub assignment: String,
}

impl ClusterBuckets {
    /// The buckets of `cluster`.
    pub fn new(cluster: &str) -> Self {
        Self {
            members: format!("{cluster}-members"),
            leader: format!("{cluster}-leader"),
            assignment: format!("{cluster}-assignment"),
        }
    }
}

/// The stream NATS keeps KV bucket `bucket` in.
pub fn kv_stream(bucket: &str) -> String {
    format!("KV_{bucket}")
}

/// The prefix of KV bucket `bucket`'s subjects, before the key.
pub fn kv_subject_prefix(bucket: &str) -> String {
    format!("$KV.{bucket}.")
}

/// The prefix of NATS's JetStream API subjects (the default domain).
pub const JS_API_PREFIX: &str = "$JS.API";

/// The reply-subject prefix (inbox prefix) of a connection working for `namespace`, which the
/// permission sets of [`crate::permissions`] let it subscribe to. With NATS's shared default,
/// `_INBOX`, a tenant allowed to receive its own replies could subscribe to every other
/// tenant's replies as well (JetStream answers carry stored events).
pub fn inbox_prefix(namespace: &str) -> String {
    format!("_INBOX_{namespace}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names are the wire layout: changing one strands every existing deployment's data.
    #[test]
    fn names_are_pinned() {
        let names = NamespaceNames::new("bank");
        assert_eq!(names.events_stream(), "AETHER_EV_bank");
        assert_eq!(names.events_pattern(), "aether.ev.bank.*");
        assert_eq!(names.event_subject("a.b").unwrap(), "aether.ev.bank.a_2Eb");
        assert_eq!(names.snapshots_stream(), "AETHER_SNAP_bank");
        assert_eq!(names.snapshot_subject("x").unwrap(), "aether.snap.bank.x");
        assert_eq!(names.bus_subject(), "aether.bus.bank");
        assert_eq!(bus_namespace("aether.bus.bank"), Some("bank"));
        assert_eq!(bus_namespace("aether.busy.bank"), None);
        assert_eq!(
            names.command_subject(&NodeId::new("n1").unwrap(), "account"),
            "aether.cmd.bank.n1.account"
        );
        assert_eq!(names.projections_bucket(), "aether-projections-bank");
        assert_eq!(ClusterBuckets::new("c").leader, "c-leader");
        assert_eq!(kv_stream("b"), "KV_b");
        assert_eq!(kv_subject_prefix("b"), "$KV.b.");
        assert_eq!(inbox_prefix("bank"), "_INBOX_bank");
    }
}
