//! A node's identity: one [`NodeId`], configured once in the [`Runtime`](crate::Runtime) and
//! used by every component of that node — the bus (origin of its publications), the cluster (its
//! membership entry) and the actor runtime (the subject its commands are sent to).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest accepted node id, in bytes.
pub const NODE_ID_LEN_MAX: usize = 128;

/// The id a [`Runtime`](crate::Runtime) uses until one is set: enough for a single node.
pub const NODE_ID_DEFAULT: &str = "local";

/// A node id that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "node id {id:?} is not valid: use 1 to {NODE_ID_LEN_MAX} characters from A-Z, a-z, 0-9, \
     '-', '_', '=' and '/'"
)]
pub struct InvalidNodeId {
    /// The refused id.
    pub id: String,
}

/// A node's id: unique in its cluster. It names the node's membership entry (a KV key) and is
/// one token of the subject its commands arrive on, so it holds only characters valid in both
/// and never a `.`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeId(String);

impl NodeId {
    /// Validates `id`.
    ///
    /// # Errors
    /// [`InvalidNodeId`] when `id` is empty, longer than [`NODE_ID_LEN_MAX`] or holds another
    /// character than `A-Z a-z 0-9 - _ = /`.
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidNodeId> {
        let id = id.into();
        let valid = !id.is_empty()
            && id.len() <= NODE_ID_LEN_MAX
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'=' | b'/'));
        if !valid {
            return Err(InvalidNodeId { id });
        }
        Ok(Self(id))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for NodeId {
    fn default() -> Self {
        Self(NODE_ID_DEFAULT.to_owned())
    }
}

impl TryFrom<String> for NodeId {
    type Error = InvalidNodeId;
    fn try_from(id: String) -> Result<Self, Self::Error> {
        NodeId::new(id)
    }
}

impl TryFrom<&str> for NodeId {
    type Error = InvalidNodeId;
    fn try_from(id: &str) -> Result<Self, Self::Error> {
        NodeId::new(id)
    }
}

impl From<NodeId> for String {
    fn from(id: NodeId) -> String {
        id.0
    }
}

impl AsRef<str> for NodeId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for NodeId {
    type Err = InvalidNodeId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NodeId::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_kv_keys_and_single_subject_tokens() {
        assert!(NodeId::new("node-1").is_ok());
        assert!(NodeId::new("eu/node_1=a").is_ok());
        for bad in ["", "a b", ".a", "a.b", "a*", "a>", "ä", "a\n"] {
            assert_eq!(
                NodeId::new(bad),
                Err(InvalidNodeId { id: bad.into() }),
                "{bad:?}"
            );
        }
        assert!(NodeId::new("x".repeat(NODE_ID_LEN_MAX)).is_ok());
        assert!(NodeId::new("x".repeat(NODE_ID_LEN_MAX + 1)).is_err());
        let err = serde_json::from_str::<NodeId>("\"a b\"").unwrap_err();
        assert!(err.to_string().contains("not valid"), "{err}");
        assert_eq!(NodeId::default().as_str(), NODE_ID_DEFAULT);
    }
}
