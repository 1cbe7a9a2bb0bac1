//! Wire formats and names: the commit record, actor-id → subject-token encoding, namespace rules.
//!
//! Everything here is a pure function. Decoding never panics on any input (cargo-fuzz target
//! `replay_decode`); it returns a typed [`DecodeError`] instead.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::{Event, Metadata, timestamp_nanos};

/// The commit record format this build writes.
pub const COMMIT_FORMAT: u32 = 1;

/// Header carrying the commit id (also sent as `Nats-Msg-Id`).
pub const HEADER_COMMIT_ID: &str = "Aether-Commit-Id";
/// Header carrying the first event version of the commit.
pub const HEADER_FIRST_VERSION: &str = "Aether-First-Version";
/// Header carrying the last event version of the commit.
pub const HEADER_LAST_VERSION: &str = "Aether-Last-Version";
/// Header carrying the commit record format.
pub const HEADER_FORMAT: &str = "Aether-Format";

/// Longest actor id accepted, in UTF-8 bytes (its subject token is at most three times longer).
pub const ACTOR_ID_MAX: usize = 256;
/// Longest namespace accepted.
pub const NAMESPACE_MAX: usize = 64;

/// A name the library refuses, with the rule it breaks.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {name:?}: {rule}")]
pub struct InvalidName {
    /// What kind of name ("namespace", "actor id", …).
    pub kind: &'static str,
    /// The refused name.
    pub name: String,
    /// The rule it breaks.
    pub rule: &'static str,
}

/// Checks a namespace: 1 to 64 characters from `[A-Za-z0-9_-]`. Nothing is rewritten: `a.b` is
/// refused rather than silently turned into `a_b`, which could collide with a real `a_b`.
///
/// # Errors
/// [`InvalidName`] naming the rule.
pub fn validate_namespace(namespace: &str) -> Result<(), InvalidName> {
    let fail = |rule| {
        Err(InvalidName {
            kind: "namespace",
            name: namespace.to_owned(),
            rule,
        })
    };
    if namespace.is_empty() {
        return fail("must not be empty");
    }
    if namespace.len() > NAMESPACE_MAX {
        return fail("must be at most 64 characters");
    }
    if !namespace
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return fail("may contain only A-Z, a-z, 0-9, '_' and '-'");
    }
    Ok(())
}

fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-'
}

/// Encodes an actor id as one NATS subject token. `A-Z a-z 0-9 -` stand for themselves; every
/// other byte of the UTF-8 encoding (including `_` itself) becomes `_` followed by two upper-case
/// hex digits. The code is prefix-free, so the encoding is injective and [`decode_actor_id`]
/// reverses it; the token never contains `.`, `*`, `>` or whitespace.
///
/// # Errors
/// [`InvalidName`] for an empty id or one longer than [`ACTOR_ID_MAX`] bytes.
pub fn encode_actor_id(actor_id: &str) -> Result<String, InvalidName> {
    let fail = |rule| InvalidName {
        kind: "actor id",
        name: actor_id.to_owned(),
        rule,
    };
    if actor_id.is_empty() {
        return Err(fail("must not be empty"));
    }
    if actor_id.len() > ACTOR_ID_MAX {
        return Err(fail("must be at most 256 bytes of UTF-8"));
    }
    let mut out = String::with_capacity(actor_id.len());
    for &b in actor_id.as_bytes() {
        if is_plain(b) {
            out.push(b as char);
        } else {
            out.push('_');
            out.push_str(&format!("{b:02X}"));
        }
    }
    Ok(out)
}

/// Reverses [`encode_actor_id`].
///
/// # Errors
/// [`InvalidName`] when `token` is not the encoding of any actor id.
pub fn decode_actor_id(token: &str) -> Result<String, InvalidName> {
    let fail = |rule| InvalidName {
        kind: "actor subject token",
        name: token.to_owned(),
        rule,
    };
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'_' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .ok_or_else(|| fail("escape '_' must be followed by two hex digits"))?;
                let valid = hex
                    .iter()
                    .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(c));
                let text = std::str::from_utf8(hex).ok().filter(|_| valid);
                let b = text
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        fail("escape '_' must be followed by two upper-case hex digits")
                    })?;
                if is_plain(b) {
                    return Err(fail("escapes a character that is never escaped"));
                }
                out.push(b);
                i += 3;
            }
            b if is_plain(b) => {
                out.push(b);
                i += 1;
            }
            _ => return Err(fail("contains a character outside A-Z, a-z, 0-9, '-', '_'")),
        }
    }
    let id = String::from_utf8(out).map_err(|_| fail("does not decode to UTF-8"))?;
    if id.is_empty() {
        return Err(fail("must not be empty"));
    }
    if id.len() > ACTOR_ID_MAX {
        // Found by cargo-fuzz: without this, a token could decode to an id that
        // `encode_actor_id` refuses, and the encoding would not be a bijection.
        return Err(fail("decodes to an actor id longer than 256 bytes"));
    }
    Ok(id)
}

/// One commit: the 1..n events of a single append, stored as one message.
#[derive(Clone, Debug, PartialEq)]
pub struct Commit {
    /// Unique id of the commit; also the message id the broker deduplicates on.
    pub commit_id: String,
    /// The actor.
    pub actor_id: String,
    /// The events, with contiguous versions.
    pub events: Vec<Event>,
}

impl Commit {
    /// Version of the first event.
    pub fn first_version(&self) -> u64 {
        self.events.first().map_or(0, |e| e.version)
    }

    /// Version of the last event.
    pub fn last_version(&self) -> u64 {
        self.events.last().map_or(0, |e| e.version)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireCommit {
    format: u32,
    commit_id: String,
    actor_id: String,
    events: Vec<WireEvent>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireEvent {
    id: String,
    event_type: String,
    version: u64,
    #[serde(with = "timestamp_nanos")]
    timestamp: SystemTime,
    data: Value,
    metadata: Metadata,
    #[serde(
        default = "crate::event::schema_one",
        skip_serializing_if = "crate::event::is_schema_one"
    )]
    schema_version: u32,
}

/// Why a stored record is not a valid commit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Not JSON of the commit shape.
    #[error("not a commit record: {0}")]
    Malformed(String),
    /// Written by a format this build does not know.
    #[error("unsupported commit format {0} (this build reads format {COMMIT_FORMAT})")]
    UnsupportedFormat(u32),
    /// A commit with no events.
    #[error("commit holds no events")]
    Empty,
    /// A required identifier is empty.
    #[error("commit has an empty {0}")]
    EmptyField(&'static str),
    /// Versions are not contiguous from the first one, or start at 0.
    #[error("event versions are not contiguous: expected {expected}, found {found}")]
    NonContiguous {
        /// The version that should have come.
        expected: u64,
        /// The version found.
        found: u64,
    },
}

/// Encodes a commit as its wire record (JSON, format [`COMMIT_FORMAT`]). Deterministic: the same
/// commit always gives the same bytes.
///
/// # Panics
/// If the commit breaks an invariant the store guarantees before encoding (no events, versions
/// not contiguous, events of another actor) — that would be a bug in the caller.
pub fn encode_commit(commit: &Commit) -> Vec<u8> {
    assert!(
        !commit.events.is_empty(),
        "a commit holds at least one event"
    );
    for (i, e) in commit.events.iter().enumerate() {
        assert_eq!(
            e.version,
            commit.first_version() + i as u64,
            "contiguous versions"
        );
        assert_eq!(e.actor_id, commit.actor_id, "events of one actor");
    }
    let wire = WireCommit {
        format: COMMIT_FORMAT,
        commit_id: commit.commit_id.clone(),
        actor_id: commit.actor_id.clone(),
        events: commit
            .events
            .iter()
            .map(|e| WireEvent {
                id: e.id.clone(),
                event_type: e.event_type.clone(),
                version: e.version,
                timestamp: e.timestamp,
                data: e.data.clone(),
                metadata: e.metadata.clone(),
                schema_version: e.schema_version,
            })
            .collect(),
    };
    serde_json::to_vec(&wire).expect("a commit always serialises")
}

/// Decodes a wire record into a commit, checking its shape: known format, at least one event,
/// non-empty ids, versions contiguous and starting at 1 or later. Never panics.
///
/// # Errors
/// [`DecodeError`] describing the first problem found.
pub fn decode_commit(bytes: &[u8]) -> Result<Commit, DecodeError> {
    #[derive(Deserialize)]
    struct FormatOnly {
        format: u32,
    }
    // One parse on the hot path; only a record that fails it is parsed again, so that a future
    // format is reported as such rather than as garbage.
    let wire: WireCommit = match serde_json::from_slice(bytes) {
        Ok(wire) => wire,
        Err(e) => {
            return Err(match serde_json::from_slice::<FormatOnly>(bytes) {
                Ok(f) if f.format != COMMIT_FORMAT => DecodeError::UnsupportedFormat(f.format),
                _ => DecodeError::Malformed(e.to_string()),
            });
        }
    };
    if wire.format != COMMIT_FORMAT {
        return Err(DecodeError::UnsupportedFormat(wire.format));
    }
    if wire.commit_id.is_empty() {
        return Err(DecodeError::EmptyField("commit id"));
    }
    if wire.actor_id.is_empty() {
        return Err(DecodeError::EmptyField("actor id"));
    }
    let first = wire.events.first().ok_or(DecodeError::Empty)?.version;
    if first == 0 {
        return Err(DecodeError::NonContiguous {
            expected: 1,
            found: 0,
        });
    }
    let mut events = Vec::with_capacity(wire.events.len());
    for (i, e) in wire.events.into_iter().enumerate() {
        let expected = first
            .checked_add(i as u64)
            .ok_or(DecodeError::NonContiguous {
                expected: u64::MAX,
                found: e.version,
            })?;
        if e.version != expected {
            return Err(DecodeError::NonContiguous {
                expected,
                found: e.version,
            });
        }
        if e.id.is_empty() {
            return Err(DecodeError::EmptyField("event id"));
        }
        events.push(Event {
            id: e.id,
            event_type: e.event_type,
            actor_id: wire.actor_id.clone(),
            version: e.version,
            data: e.data,
            timestamp: e.timestamp,
            metadata: e.metadata,
            commit_id: wire.commit_id.clone(),
            schema_version: e.schema_version,
        });
    }
    Ok(Commit {
        commit_id: wire.commit_id,
        actor_id: wire.actor_id,
        events,
    })
}

/// The fuzzing entry point, shared by the cargo-fuzz target and the corpus test.
///
/// - Decoding the raw bytes must not panic, and whatever decodes must re-encode and decode to
///   the same commit.
/// - The bytes are also read as a *structured* commit (actor id, event type, data and metadata
///   taken from slices of the input), which must round-trip through encode and decode.
/// - Read as a subject token, the bytes must either be refused or decode to an actor id that
///   encodes back to the same token.
#[doc(hidden)]
pub fn fuzz_replay_decode(bytes: &[u8]) {
    if let Ok(commit) = decode_commit(bytes) {
        let again = decode_commit(&encode_commit(&commit)).expect("re-encoded commit decodes");
        assert_eq!(
            again, commit,
            "decode after encode is the identity on valid commits"
        );
    }
    if let Some(commit) = structured_commit(bytes) {
        let decoded = decode_commit(&encode_commit(&commit)).expect("structured commit decodes");
        assert_eq!(decoded, commit, "structured commit round-trips");
    }
    if let Ok(text) = std::str::from_utf8(bytes)
        && let Ok(id) = decode_actor_id(text)
    {
        assert_eq!(encode_actor_id(&id).ok().as_deref(), Some(text));
    }
}

/// Builds a commit from fuzz input: byte 0 = event count (1..=4), bytes 1..9 = first version,
/// the rest split in four for actor id, event type, a data string and a metadata value.
fn structured_commit(bytes: &[u8]) -> Option<Commit> {
    let count = u64::from(*bytes.first()? % 4) + 1;
    let first = u64::from_le_bytes(bytes.get(1..9)?.try_into().ok()?) % (u64::MAX / 2) + 1;
    let rest = &bytes[9..];
    let quarter = rest.len() / 4;
    let text =
        |i: usize| String::from_utf8_lossy(&rest[i * quarter..(i + 1) * quarter]).into_owned();
    let actor = text(0);
    if actor.is_empty() {
        return None;
    }
    let events = (0..count)
        .map(|i| Event {
            id: format!("e{i}"),
            event_type: text(1),
            actor_id: actor.clone(),
            version: first + i,
            data: serde_json::json!({ "s": text(2), "i": i }),
            timestamp: crate::clock::from_unix_nanos(first),
            metadata: [("k".to_owned(), text(3))].into_iter().collect(),
            commit_id: format!("commit-{first}"),
            schema_version: 1 + (first % 3) as u32,
        })
        .collect();
    Some(Commit {
        commit_id: format!("commit-{first}"),
        actor_id: actor,
        events,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn sample_commit() -> Commit {
        let mut metadata = Metadata::new();
        metadata.set_correlation_id("corr-1");
        metadata.set_user_id("alice");
        let event = |id: &str, version, data| Event {
            id: id.into(),
            event_type: "Deposited".into(),
            actor_id: "account-1".into(),
            version,
            data,
            timestamp: crate::clock::from_unix_nanos(1_700_000_000_000_000_000),
            metadata: metadata.clone(),
            commit_id: "c0ffee00-0000-4000-8000-000000000001".into(),
            schema_version: 1,
        };
        Commit {
            commit_id: "c0ffee00-0000-4000-8000-000000000001".into(),
            actor_id: "account-1".into(),
            events: vec![
                event("e1", 4, json!({"amount": 10})),
                event("e2", 5, json!({"amount": 5})),
            ],
        }
    }

    #[test]
    fn commit_wire_format_is_stable() {
        let bytes = encode_commit(&sample_commit());
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        insta::assert_json_snapshot!("commit_wire_format", value);
        insta::assert_snapshot!("commit_wire_bytes", String::from_utf8(bytes).unwrap());
    }

    #[test]
    fn commit_round_trips() {
        let commit = sample_commit();
        assert_eq!(decode_commit(&encode_commit(&commit)).unwrap(), commit);
    }

    #[test]
    fn decode_rejects_damaged_records_with_typed_errors() {
        assert!(matches!(decode_commit(b""), Err(DecodeError::Malformed(_))));
        assert!(matches!(
            decode_commit(b"\xff\x00"),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            decode_commit(br#"{"format":2}"#),
            Err(DecodeError::UnsupportedFormat(2))
        ));
        assert!(matches!(
            decode_commit(br#"{"format":1,"commit_id":"c","actor_id":"a","events":[]}"#),
            Err(DecodeError::Empty)
        ));
        let mut bytes = encode_commit(&sample_commit());
        let text = String::from_utf8(bytes.clone())
            .unwrap()
            .replace("\"version\":5", "\"version\":7");
        assert!(matches!(
            decode_commit(text.as_bytes()),
            Err(DecodeError::NonContiguous {
                expected: 5,
                found: 7
            })
        ));
        bytes.truncate(bytes.len() / 2);
        assert!(matches!(
            decode_commit(&bytes),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn namespace_rules_are_enforced_without_sanitising() {
        assert!(validate_namespace("orders_v2-eu").is_ok());
        for bad in ["", "a.b", "a b", "a*", "a>", "é", &"x".repeat(65)] {
            let err = validate_namespace(bad).unwrap_err();
            assert_eq!(err.kind, "namespace");
        }
        assert!(
            validate_namespace("a.b")
                .unwrap_err()
                .to_string()
                .contains("only A-Z")
        );
    }

    #[test]
    fn actor_ids_with_nats_special_characters_encode_to_one_token() {
        for id in [
            "a.b",
            "a*",
            "a>",
            "a b",
            "a_b",
            "a_2Eb",
            "ünïcødé",
            "x\u{0}y",
            "-",
        ] {
            let token = encode_actor_id(id).unwrap();
            assert!(
                token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            );
            assert_eq!(decode_actor_id(&token).unwrap(), id);
        }
        assert_ne!(
            encode_actor_id("a.b").unwrap(),
            encode_actor_id("a_b").unwrap()
        );
        assert!(encode_actor_id("").is_err());
        assert!(encode_actor_id(&"x".repeat(257)).is_err());
        assert!(decode_actor_id("_2").is_err());
        assert!(decode_actor_id("_41").is_err()); // 'A' is never escaped
        assert!(decode_actor_id("_2e").is_err()); // lower-case hex is never produced
        assert!(decode_actor_id("a.b").is_err());
        assert!(decode_actor_id(&"x".repeat(257)).is_err()); // longer than encode accepts
    }

    proptest! {
        #[test]
        fn actor_id_encoding_is_reversible(id in "\\PC{1,80}") {
            prop_assume!(id.len() <= ACTOR_ID_MAX);
            let token = encode_actor_id(&id).unwrap();
            prop_assert_eq!(decode_actor_id(&token).unwrap(), id);
        }

        #[test]
        fn actor_id_encoding_is_injective(a in "\\PC{1,40}", b in "\\PC{1,40}") {
            prop_assume!(a != b);
            prop_assert_ne!(encode_actor_id(&a).unwrap(), encode_actor_id(&b).unwrap());
        }

        #[test]
        fn any_utf8_actor_id_round_trips(id in any::<String>()) {
            prop_assume!(!id.is_empty() && id.len() <= ACTOR_ID_MAX);
            prop_assert_eq!(decode_actor_id(&encode_actor_id(&id).unwrap()).unwrap(), id);
        }

        #[test]
        fn commits_round_trip(
            first in 1u64..1_000_000,
            n in 1usize..5,
            actor in "\\PC{1,20}",
            payload in any::<i64>(),
            key in "[a-z_]{1,8}",
            value in "\\PC{0,12}",
        ) {
            let events = (0..n).map(|i| Event {
                id: format!("e{i}"),
                event_type: "T".into(),
                actor_id: actor.clone(),
                version: first + i as u64,
                data: json!({"n": payload, "s": value.clone()}),
                timestamp: crate::clock::from_unix_nanos(payload.unsigned_abs()),
                metadata: [(key.clone(), value.clone())].into_iter().collect(),
                commit_id: "c".into(),
                schema_version: 1 + (i % 3) as u32,
            }).collect();
            let commit = Commit { commit_id: "c".into(), actor_id: actor.clone(), events };
            prop_assert_eq!(decode_commit(&encode_commit(&commit)).unwrap(), commit);
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            fuzz_replay_decode(&bytes);
        }
    }
}
