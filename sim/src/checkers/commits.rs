//! Invariant 5: a retried append never produces a second copy — commit ids and event ids are
//! unique across the final streams, and each record's commit id header (the dedupe key) names
//! the commit it carries.

use std::collections::BTreeMap;

use super::{CheckInput, Violation};

const INVARIANT: &str = "5 no second copy of a commit";

/// Scans the final streams for repeated ids.
pub fn check(input: &CheckInput<'_>) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut commits: BTreeMap<&str, (&str, u64)> = BTreeMap::new();
    let mut events: BTreeMap<&str, (&str, u64)> = BTreeMap::new();
    for (actor, records) in &input.streams {
        // Only the valid history: the vandal's copies repeat ids on purpose.
        for record in records.iter().filter(|r| r.in_chain) {
            let Ok(commit) = &record.commit else { continue };
            if let Some(header) = &record.header_commit_id
                && *header != commit.commit_id
            {
                out.push(Violation {
                    invariant: INVARIANT,
                    detail: format!(
                        "{actor}: seq {} carries commit {} under dedupe id {header}",
                        record.sequence, commit.commit_id
                    ),
                });
            }
            if let Some((a, seq)) = commits.insert(&commit.commit_id, (actor, record.sequence)) {
                out.push(Violation {
                    invariant: INVARIANT,
                    detail: format!(
                        "commit {} stored twice: {a} seq {seq} and {actor} seq {}",
                        commit.commit_id, record.sequence
                    ),
                });
            }
            for event in &commit.events {
                if let Some((a, seq)) = events.insert(&event.id, (actor, record.sequence)) {
                    out.push(Violation {
                        invariant: INVARIANT,
                        detail: format!(
                            "event {} stored twice: {a} seq {seq} and {actor} seq {}",
                            event.id, record.sequence
                        ),
                    });
                }
            }
        }
    }
    out
}
