//! Leader election by lease.
//!
//! One key (`leader`) in a bucket whose TTL is `lease_ttl`:
//!
//! - **Acquire**: create the key only if absent (or take it over by update-at-revision when its
//!   holder released it). The revision of that write is the **fencing token**: revisions are
//!   bucket-wide and only grow, so every new term has a larger token than every earlier one.
//! - **Renew**: update-at-revision every `lease_renew_interval`. A renewal that finds another
//!   revision means the lease was lost: step down at once.
//! - **Step down on the node's own clock**: the deadline is `sent + lease_step_down_after`,
//!   measured from *before* the successful write was sent. The server stamps the write later
//!   than that, and keeps the key until `written + lease_ttl`, so with
//!   `lease_step_down_after < lease_ttl` the node stops acting before any other node can
//!   acquire — even if every reply is slow, and with clock drift up to the margin.
//! - **Release** on clean stop: the leader overwrites the key (at its revision) with a
//!   `released` marker, which candidates may take over immediately instead of waiting for the
//!   TTL. (The broker has no delete-at-revision; an unconditional delete could remove a
//!   successor's lease.)

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::broker::{KvEntry, KvOperation};

use super::shard::NodeId;
use super::view::LeaderInfo;

/// The key of the lease in the leader bucket.
pub(crate) const LEASE_KEY: &str = "leader";

/// The value of the lease key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LeaseRecord {
    pub holder: NodeId,
    pub incarnation: String,
    /// The term's token; `None` in the acquiring write itself (whose revision is the token).
    pub token: Option<u64>,
    /// The holder gave the lease up; anyone may take it over.
    pub released: bool,
}

impl LeaseRecord {
    pub fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("lease record serialises"))
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

/// What a lease entry says about leadership.
pub(crate) enum LeaseState {
    /// No live lease: anyone may create it.
    Vacant,
    /// Released (or unreadable): anyone may take it over at this revision.
    TakeOver { revision: u64 },
    /// Held.
    Held {
        leader: LeaderInfo,
        incarnation: String,
        revision: u64,
    },
}

impl LeaseState {
    pub fn of(entry: Option<&KvEntry>) -> Self {
        let Some(entry) = entry.filter(|e| e.operation == KvOperation::Put) else {
            return LeaseState::Vacant;
        };
        match LeaseRecord::decode(&entry.value) {
            Some(r) if !r.released => LeaseState::Held {
                leader: LeaderInfo {
                    node: r.holder,
                    token: r.token.unwrap_or(entry.revision),
                },
                incarnation: r.incarnation,
                revision: entry.revision,
            },
            _ => LeaseState::TakeOver {
                revision: entry.revision,
            },
        }
    }

    pub fn leader(&self) -> Option<&LeaderInfo> {
        match self {
            LeaseState::Held { leader, .. } => Some(leader),
            _ => None,
        }
    }
}

/// This node's lease while it leads.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OwnLease {
    pub token: u64,
    /// Revision of the last successful write, for the next update.
    pub revision: u64,
    pub deadline: Duration,
    pub renew_at: Duration,
}
