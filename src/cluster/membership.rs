//! Membership: every node keeps a KV entry under its id in the members bucket, written every
//! `heartbeat_interval` with update-at-revision; the bucket's TTL (`member_ttl`) removes the
//! entries of nodes that stop writing. A node's view of the members is the bucket's live keys,
//! kept current by a watch (joins, clean leaves) and a periodic full read (TTL expiry produces no
//! watch event).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The value of a membership entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MemberRecord {
    /// Random per process start: tells this process's writes from another process that uses
    /// the same node id.
    pub incarnation: String,
}

impl MemberRecord {
    pub fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("member record serialises"))
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}
