//! The broker conformance suite: ONE set of test bodies that every [`Broker`] must pass —
//! `MemoryBroker`, `NatsBroker` on a real nats-server, and the simulated broker of `sim/`.
//!
//! Each body is `pub async fn <behaviour>(broker: impl Broker)`, takes a fresh broker (or a fresh
//! server), uses its own stream and bucket names, waits and spawns only through `aether::rt` (tokio,
//! or madsim under `--cfg madsim`, so it also runs in either simulator's virtual time), and
//! panics on any deviation. [`conformance_bodies!`] lists them all;
//! `tests/conformance.rs` runs each against the memory broker and a real server. To run them
//! against another broker, include this file (`#[path = "../tests/support/conformance.rs"] mod
//! conformance;`) and run every body with [`conformance_bodies!`].
//!
//! The bodies pin what the store and cluster rely on: expected-last-subject-sequence accept and
//! reject (with the actual value, also for expected 0), dedupe by message id, last and read
//! ordering, headers, wildcard subscriptions, request/reply, KV create / update-at-revision /
//! delete / watch, TTL expiry and the payload limit. When NATS and the memory broker disagree,
//! the memory broker is changed to match NATS.
//!
//! Longer than ~600 lines on purpose: it is the one list of behaviours every broker is held to,
//! and splitting it would give each broker's test file more than one list to keep in step.
#![allow(dead_code)]

use std::time::Duration;

use aether::broker::{
    AppendOptions, Broker, BrokerError, DEFAULT_MAX_PAYLOAD, Headers, KvConfig, KvOperation,
    ReadFrom, StreamConfig,
};
use bytes::Bytes;

/// Calls `$callback! { $prefix... <every body>, }`: the one list of conformance bodies, which
/// every broker's test file runs.
#[macro_export]
macro_rules! conformance_bodies {
    ($callback:ident ! { $($prefix:tt)* }) => {
        $callback! { $($prefix)*
            expected_last_subject_sequence_accepts_the_tail_and_reports_the_actual_one,
            expected_sequence_zero_means_the_subject_is_empty,
            a_repeated_message_id_is_acknowledged_as_duplicate_and_stored_once,
            last_returns_the_newest_message_of_a_subject_or_none,
            next_returns_the_first_message_of_a_subject_from_a_sequence,
            read_returns_one_subject_in_stream_order_from_a_sequence,
            reads_page_through_thousands_of_messages_and_wildcards,
            headers_round_trip_and_nats_headers_are_reserved,
            append_to_a_subject_no_stream_captures_is_not_found,
            ensure_stream_is_idempotent_and_refuses_overlaps_and_bad_names,
            max_messages_per_subject_keeps_only_the_newest,
            stream_messages_expire_after_max_age,
            subscriptions_match_wildcards_by_nats_rules,
            request_gets_a_reply_or_no_responders_or_a_timeout,
            a_late_reply_never_answers_a_later_request,
            a_drained_subscription_delivers_what_was_sent_then_ends,
            kv_create_refuses_a_live_key_but_not_a_deleted_one,
            kv_update_succeeds_only_at_the_latest_revision,
            kv_revisions_grow_across_keys_and_entries_list_live_keys_by_key,
            kv_entries_list_more_keys_than_one_page,
            kv_watch_delivers_current_entries_then_every_put_and_delete,
            kv_entries_expire_after_the_bucket_ttl,
            kv_on_a_missing_bucket_is_not_found,
            messages_over_the_payload_limit_are_refused,
        }
    };
}

fn bytes(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn expect(seq: u64) -> AppendOptions {
    AppendOptions {
        expected_last_subject_sequence: Some(seq),
        message_id: None,
    }
}

fn with_id(id: &str) -> AppendOptions {
    AppendOptions {
        expected_last_subject_sequence: None,
        message_id: Some(id.to_owned()),
    }
}

async fn stream(broker: &impl Broker, name: &str, subjects: &[&str]) {
    broker
        .ensure_stream(StreamConfig::new(
            name,
            subjects.iter().map(|s| (*s).to_owned()).collect(),
        ))
        .await
        .expect("create stream");
}

async fn sequences(broker: &impl Broker, stream: &str, subject: &str, from: u64) -> Vec<u64> {
    broker
        .read(stream, subject, from)
        .await
        .expect("read")
        .iter()
        .map(|m| m.sequence)
        .collect()
}

/// Polls `check` every 50 ms of tokio time, up to `attempts` times; true once it held.
async fn eventually<F, Fut>(attempts: u32, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..attempts {
        if check().await {
            return true;
        }
        aether::rt::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// The append is accepted exactly when the subject's last stream sequence equals the expected
/// one; a mismatch reports the actual last sequence. Expectations are per subject.
pub async fn expected_last_subject_sequence_accepts_the_tail_and_reports_the_actual_one(
    broker: impl Broker,
) {
    stream(&broker, "CONF_CAS", &["conf.cas.>"]).await;
    let a = broker
        .append("conf.cas.a", Headers::new(), bytes("a1"), expect(0))
        .await
        .expect("first append to an empty subject");
    assert_eq!((a.sequence, a.duplicate), (1, false));
    let b = broker
        .append("conf.cas.b", Headers::new(), bytes("b1"), expect(0))
        .await
        .expect("another subject is still empty");
    assert_eq!(b.sequence, 2);
    let err = broker
        .append("conf.cas.a", Headers::new(), bytes("a2"), expect(2))
        .await
        .expect_err("2 is the stream's last sequence, not the subject's");
    assert_eq!(
        err,
        BrokerError::WrongLastSequence {
            expected: 2,
            actual: 1
        }
    );
    let ok = broker
        .append("conf.cas.a", Headers::new(), bytes("a2"), expect(1))
        .await
        .expect("expected the subject's tail");
    assert_eq!(ok.sequence, 3);
    let err = broker
        .append("conf.cas.a", Headers::new(), bytes("a3"), expect(1))
        .await
        .expect_err("stale expectation");
    assert_eq!(
        err,
        BrokerError::WrongLastSequence {
            expected: 1,
            actual: 3
        }
    );
    assert!(!err.is_ambiguous());
    let free = broker
        .append(
            "conf.cas.a",
            Headers::new(),
            bytes("a3"),
            AppendOptions::default(),
        )
        .await
        .expect("no expectation");
    assert_eq!(free.sequence, 4);
    assert_eq!(
        sequences(&broker, "CONF_CAS", "conf.cas.a", 1).await,
        [1, 3, 4]
    );
}

/// Expected sequence 0 is a real condition ("the subject has no message"), not "no condition":
/// it is sent to the server and refused once the subject has a message.
pub async fn expected_sequence_zero_means_the_subject_is_empty(broker: impl Broker) {
    stream(&broker, "CONF_ZERO", &["conf.zero.*"]).await;
    broker
        .append("conf.zero.x", Headers::new(), bytes("1"), expect(0))
        .await
        .expect("empty subject");
    for _ in 0..2 {
        let err = broker
            .append("conf.zero.x", Headers::new(), bytes("2"), expect(0))
            .await
            .expect_err("the subject is no longer empty");
        assert_eq!(
            err,
            BrokerError::WrongLastSequence {
                expected: 0,
                actual: 1
            }
        );
    }
    assert_eq!(sequences(&broker, "CONF_ZERO", "conf.zero.x", 1).await, [1]);
}

/// Within the duplicate window a repeated message id stores nothing and acknowledges the
/// original sequence. The expected sequence is checked first: a retry carrying a stale
/// expectation is refused as wrong-last-sequence (what the store's ambiguity resolution relies on).
pub async fn a_repeated_message_id_is_acknowledged_as_duplicate_and_stored_once(
    broker: impl Broker,
) {
    stream(&broker, "CONF_DUP", &["conf.dup.*"]).await;
    let first = broker
        .append("conf.dup.a", Headers::new(), bytes("x"), with_id("m-1"))
        .await
        .expect("first");
    assert_eq!((first.sequence, first.duplicate), (1, false));
    let again = broker
        .append("conf.dup.a", Headers::new(), bytes("x"), with_id("m-1"))
        .await
        .expect("retry");
    assert_eq!((again.sequence, again.duplicate), (1, true));
    let other = broker
        .append("conf.dup.a", Headers::new(), bytes("y"), with_id("m-2"))
        .await
        .expect("another id");
    assert_eq!((other.sequence, other.duplicate), (2, false));
    // The expectation is checked first: a retry whose first attempt landed sees the tail moved.
    let stale_retry = broker
        .append(
            "conf.dup.a",
            Headers::new(),
            bytes("x"),
            AppendOptions {
                expected_last_subject_sequence: Some(0),
                message_id: Some("m-1".into()),
            },
        )
        .await
        .expect_err("expectations are checked before duplicates");
    assert_eq!(
        stale_retry,
        BrokerError::WrongLastSequence {
            expected: 0,
            actual: 2
        }
    );
    let matching_retry = broker
        .append(
            "conf.dup.a",
            Headers::new(),
            bytes("y"),
            AppendOptions {
                expected_last_subject_sequence: Some(2),
                message_id: Some("m-2".into()),
            },
        )
        .await
        .expect("expectation holds, so the duplicate is recognised");
    assert_eq!(
        (matching_retry.sequence, matching_retry.duplicate),
        (2, true)
    );
    // Dedupe is stream-wide: the same id on another subject is a duplicate too.
    let elsewhere = broker
        .append("conf.dup.b", Headers::new(), bytes("z"), with_id("m-2"))
        .await
        .expect("same id, other subject");
    assert_eq!((elsewhere.sequence, elsewhere.duplicate), (2, true));
    assert_eq!(
        sequences(&broker, "CONF_DUP", "conf.dup.a", 1).await,
        [1, 2]
    );
    assert!(
        sequences(&broker, "CONF_DUP", "conf.dup.b", 1)
            .await
            .is_empty()
    );
}

/// `last` is the newest message of exactly that subject, with its sequence, headers and
/// payload; `None` for an empty subject; `NotFound` for an unknown stream.
pub async fn last_returns_the_newest_message_of_a_subject_or_none(broker: impl Broker) {
    stream(&broker, "CONF_LAST", &["conf.last.*"]).await;
    for from in [ReadFrom::AnyReplica, ReadFrom::Leader] {
        assert_eq!(
            broker
                .last("CONF_LAST", "conf.last.a", from)
                .await
                .expect("last"),
            None
        );
    }
    let mut headers = Headers::new();
    headers.insert("Aether-Test".into(), "one".into());
    broker
        .append("conf.last.a", headers.clone(), bytes("a1"), expect(0))
        .await
        .expect("a1");
    broker
        .append("conf.last.b", Headers::new(), bytes("b1"), expect(0))
        .await
        .expect("b1");
    headers.insert("Aether-Test".into(), "two".into());
    broker
        .append("conf.last.a", headers.clone(), bytes("a2"), expect(1))
        .await
        .expect("a2");
    for from in [ReadFrom::AnyReplica, ReadFrom::Leader] {
        let last = broker
            .last("CONF_LAST", "conf.last.a", from)
            .await
            .expect("last")
            .expect("a has messages");
        assert_eq!(last.subject, "conf.last.a");
        assert_eq!(last.sequence, 3);
        assert_eq!(last.payload, bytes("a2"));
        assert_eq!(last.headers, headers, "{from:?}");
        assert!(last.time > std::time::UNIX_EPOCH);
        let b = broker
            .last("CONF_LAST", "conf.last.b", from)
            .await
            .expect("last")
            .expect("b has a message");
        assert_eq!((b.sequence, b.payload), (2, bytes("b1")));
        assert!(b.headers.is_empty(), "no headers: {:?}", b.headers);
        let err = broker
            .last("CONF_NO_SUCH_STREAM", "conf.last.a", from)
            .await
            .expect_err("unknown stream");
        assert!(matches!(err, BrokerError::NotFound { .. }), "{err:?}");
    }
}

/// `next` is the first message of exactly that subject at or after a sequence, with its
/// headers; `None` past the end; the same from the leader and from any replica.
pub async fn next_returns_the_first_message_of_a_subject_from_a_sequence(broker: impl Broker) {
    stream(&broker, "CONF_NEXT", &["conf.next.*"]).await;
    let mut headers = Headers::new();
    headers.insert("Aether-Test".into(), "x".into());
    for (i, subject) in ["conf.next.a", "conf.next.b", "conf.next.b", "conf.next.a"]
        .iter()
        .enumerate()
    {
        broker
            .append(
                subject,
                headers.clone(),
                bytes(&i.to_string()),
                AppendOptions::default(),
            )
            .await
            .expect("append");
    }
    // a: sequences 1 and 4; b: 2 and 3.
    for from in [ReadFrom::AnyReplica, ReadFrom::Leader] {
        let at = |seq: u64| {
            let broker = broker.clone();
            async move {
                broker
                    .next("CONF_NEXT", "conf.next.a", seq, from)
                    .await
                    .expect("next")
                    .map(|m| (m.sequence, m.payload, m.headers))
            }
        };
        assert_eq!(
            at(0).await,
            Some((1, bytes("0"), headers.clone())),
            "{from:?}"
        );
        assert_eq!(at(1).await, Some((1, bytes("0"), headers.clone())));
        assert_eq!(at(2).await, Some((4, bytes("3"), headers.clone())));
        assert_eq!(at(4).await, Some((4, bytes("3"), headers.clone())));
        assert_eq!(at(5).await, None);
        assert_eq!(
            broker
                .next("CONF_NEXT", "conf.next.c", 1, from)
                .await
                .expect("next"),
            None
        );
        let err = broker
            .next("CONF_NO_SUCH_STREAM", "conf.next.a", 1, from)
            .await
            .expect_err("unknown stream");
        assert!(matches!(err, BrokerError::NotFound { .. }), "{err:?}");
    }
}

/// Reads of thousands of messages come back whole and in order whichever way the broker pages
/// them: one subject from any sequence, a wildcard over several subjects, `read_batch` across
/// page boundaries, `read_each` as `read` does.
pub async fn reads_page_through_thousands_of_messages_and_wildcards(broker: impl Broker) {
    stream(&broker, "CONF_LONG", &["conf.long.*"]).await;
    let total = 3_000u64;
    for i in 0..total {
        let subject = if i % 5 == 0 {
            "conf.long.b"
        } else {
            "conf.long.a"
        };
        broker
            .append(
                subject,
                Headers::new(),
                bytes(&i.to_string()),
                AppendOptions::default(),
            )
            .await
            .expect("append");
    }
    let a_sequences: Vec<u64> = (1..=total).filter(|s| (s - 1) % 5 != 0).collect();
    assert_eq!(
        sequences(&broker, "CONF_LONG", "conf.long.a", 1).await,
        a_sequences
    );
    let from = 777;
    assert_eq!(
        sequences(&broker, "CONF_LONG", "conf.long.a", from).await,
        a_sequences
            .iter()
            .copied()
            .filter(|s| *s >= from)
            .collect::<Vec<_>>()
    );
    assert_eq!(
        sequences(&broker, "CONF_LONG", "conf.long.*", 2).await,
        (2..=total).collect::<Vec<_>>()
    );
    let mut visited = Vec::new();
    broker
        .read_each("CONF_LONG", "conf.long.b", 1, |m| {
            visited.push((m.sequence, m.payload))
        })
        .await
        .expect("read_each");
    assert_eq!(visited.len(), 600);
    assert!(
        visited
            .iter()
            .all(|(seq, payload)| *payload == bytes(&(seq - 1).to_string()))
    );
    for (from, max) in [(1, 1), (10, 700), (2_500, 1_000), (3_001, 5)] {
        let page = broker
            .read_batch("CONF_LONG", "conf.long.*", from, max)
            .await
            .expect("read_batch");
        let expected: Vec<u64> = (from..=total).take(max).collect();
        assert_eq!(
            page.iter().map(|m| m.sequence).collect::<Vec<_>>(),
            expected,
            "read_batch from {from}, max {max}"
        );
    }
}

/// `read` returns only the subject's messages, in stream order, from the given sequence on.
pub async fn read_returns_one_subject_in_stream_order_from_a_sequence(broker: impl Broker) {
    stream(&broker, "CONF_READ", &["conf.read.*"]).await;
    for i in 0..10u64 {
        let subject = if i % 3 == 0 {
            "conf.read.b"
        } else {
            "conf.read.a"
        };
        broker
            .append(
                subject,
                Headers::new(),
                bytes(&i.to_string()),
                AppendOptions::default(),
            )
            .await
            .expect("append");
    }
    // a holds sequences 2,3,5,6,8,9 (payloads 1,2,4,5,7,8).
    let all = broker
        .read("CONF_READ", "conf.read.a", 1)
        .await
        .expect("read");
    assert_eq!(
        all.iter().map(|m| m.sequence).collect::<Vec<_>>(),
        [2, 3, 5, 6, 8, 9]
    );
    assert_eq!(
        all.iter().map(|m| m.payload.clone()).collect::<Vec<_>>(),
        ["1", "2", "4", "5", "7", "8"].map(bytes)
    );
    assert!(all.iter().all(|m| m.subject == "conf.read.a"));
    assert_eq!(
        sequences(&broker, "CONF_READ", "conf.read.a", 5).await,
        [5, 6, 8, 9]
    );
    assert_eq!(
        sequences(&broker, "CONF_READ", "conf.read.a", 7).await,
        [8, 9]
    );
    assert!(
        sequences(&broker, "CONF_READ", "conf.read.a", 11)
            .await
            .is_empty()
    );
    assert!(
        sequences(&broker, "CONF_READ", "conf.read.c", 1)
            .await
            .is_empty()
    );
    assert_eq!(
        sequences(&broker, "CONF_READ", "conf.read.b", 0).await,
        [1, 4, 7, 10]
    );
    let err = broker
        .read("CONF_NO_SUCH_STREAM", "conf.read.a", 1)
        .await
        .expect_err("unknown stream");
    assert!(matches!(err, BrokerError::NotFound { .. }), "{err:?}");
}

/// Headers come back exactly as published; `Nats-*` names are reserved for the broker.
pub async fn headers_round_trip_and_nats_headers_are_reserved(broker: impl Broker) {
    stream(&broker, "CONF_HDR", &["conf.hdr.*"]).await;
    let mut headers = Headers::new();
    headers.insert("Aether-Commit-Id".into(), "c-1".into());
    headers.insert("Aether-First-Version".into(), "1".into());
    headers.insert("X-Unicode".into(), "ünïcødé".into());
    broker
        .append(
            "conf.hdr.a",
            headers.clone(),
            bytes("p"),
            AppendOptions {
                expected_last_subject_sequence: Some(0),
                message_id: Some("c-1".into()),
            },
        )
        .await
        .expect("append with headers");
    let read = broker
        .read("CONF_HDR", "conf.hdr.a", 1)
        .await
        .expect("read");
    assert_eq!(read.len(), 1);
    assert_eq!(
        read[0].headers, headers,
        "the broker's own headers are not shown"
    );
    for from in [ReadFrom::AnyReplica, ReadFrom::Leader] {
        let last = broker
            .last("CONF_HDR", "conf.hdr.a", from)
            .await
            .expect("last")
            .expect("present");
        assert_eq!(last.headers, headers);
    }
    let mut reserved = Headers::new();
    reserved.insert("Nats-Msg-Id".into(), "sneaky".into());
    let err = broker
        .append("conf.hdr.a", reserved, bytes("q"), AppendOptions::default())
        .await
        .expect_err("reserved header");
    assert!(
        matches!(err, BrokerError::InvalidArgument { .. }),
        "{err:?}"
    );
    assert_eq!(sequences(&broker, "CONF_HDR", "conf.hdr.a", 1).await, [1]);
}

/// An append on a subject that no stream captures fails as `NotFound` (nothing stored).
pub async fn append_to_a_subject_no_stream_captures_is_not_found(broker: impl Broker) {
    stream(&broker, "CONF_NOSTREAM", &["conf.nostream.*"]).await;
    let err = broker
        .append("conf.elsewhere.a", Headers::new(), bytes("x"), expect(0))
        .await
        .expect_err("no stream");
    assert!(matches!(err, BrokerError::NotFound { .. }), "{err:?}");
    let err = broker
        .append("conf.nostream.a.b", Headers::new(), bytes("x"), expect(0))
        .await
        .expect_err("'*' matches one token only");
    assert!(matches!(err, BrokerError::NotFound { .. }), "{err:?}");
}

/// Creating an existing stream again changes nothing; overlapping subjects and bad names are
/// refused.
pub async fn ensure_stream_is_idempotent_and_refuses_overlaps_and_bad_names(broker: impl Broker) {
    stream(&broker, "CONF_IDEM", &["conf.idem.*"]).await;
    broker
        .append("conf.idem.a", Headers::new(), bytes("x"), expect(0))
        .await
        .expect("append");
    stream(&broker, "CONF_IDEM", &["conf.idem.*"]).await;
    assert_eq!(sequences(&broker, "CONF_IDEM", "conf.idem.a", 1).await, [1]);
    let err = broker
        .ensure_stream(StreamConfig::new(
            "CONF_OVERLAP",
            vec!["conf.idem.a".into()],
        ))
        .await
        .expect_err("overlapping subjects");
    assert!(
        matches!(err, BrokerError::InvalidArgument { .. }),
        "{err:?}"
    );
    let err = broker
        .ensure_stream(StreamConfig::new("CONF.BAD", vec!["conf.bad.*".into()]))
        .await
        .expect_err("bad name");
    assert!(
        matches!(err, BrokerError::InvalidArgument { .. }),
        "{err:?}"
    );
}

/// A per-subject limit keeps the newest messages; other subjects are untouched.
pub async fn max_messages_per_subject_keeps_only_the_newest(broker: impl Broker) {
    let mut config = StreamConfig::new("CONF_PER", vec!["conf.per.*".into()]);
    config.max_messages_per_subject = Some(2);
    broker.ensure_stream(config).await.expect("stream");
    for i in 0..4 {
        broker
            .append(
                "conf.per.a",
                Headers::new(),
                bytes(&i.to_string()),
                AppendOptions::default(),
            )
            .await
            .expect("append");
    }
    broker
        .append(
            "conf.per.b",
            Headers::new(),
            bytes("b"),
            AppendOptions::default(),
        )
        .await
        .expect("append");
    assert_eq!(
        sequences(&broker, "CONF_PER", "conf.per.a", 1).await,
        [3, 4]
    );
    assert_eq!(sequences(&broker, "CONF_PER", "conf.per.b", 1).await, [5]);
    // The subject's tail is still the expectation to meet.
    broker
        .append("conf.per.a", Headers::new(), bytes("4"), expect(4))
        .await
        .expect("tail");
}

/// Messages older than the stream's max age disappear from reads and from `last`.
pub async fn stream_messages_expire_after_max_age(broker: impl Broker) {
    let mut config = StreamConfig::new("CONF_AGE", vec!["conf.age.*".into()]);
    config.max_age = Some(Duration::from_millis(500));
    config.duplicate_window = Duration::from_millis(500);
    broker.ensure_stream(config).await.expect("stream");
    broker
        .append("conf.age.a", Headers::new(), bytes("old"), expect(0))
        .await
        .expect("append");
    assert_eq!(sequences(&broker, "CONF_AGE", "conf.age.a", 1).await, [1]);
    let gone = eventually(100, || async {
        broker
            .read("CONF_AGE", "conf.age.a", 1)
            .await
            .expect("read")
            .is_empty()
            && broker
                .last("CONF_AGE", "conf.age.a", ReadFrom::AnyReplica)
                .await
                .expect("last")
                .is_none()
    })
    .await;
    assert!(gone, "message still there after 5 s with max age 500 ms");
    // An expired subject is empty again for expectations.
    broker
        .append("conf.age.a", Headers::new(), bytes("new"), expect(0))
        .await
        .expect("subject empty after expiry");
}

/// `*` matches exactly one token and `>` one or more; non-matching subjects are not delivered.
pub async fn subscriptions_match_wildcards_by_nats_rules(broker: impl Broker) {
    let mut star = broker.subscribe("conf.sub.*").await.expect("subscribe *");
    let mut tail = broker.subscribe("conf.sub.>").await.expect("subscribe >");
    let mut exact = broker
        .subscribe("conf.sub.a")
        .await
        .expect("subscribe exact");
    let mut headers = Headers::new();
    headers.insert("K".into(), "v".into());
    for subject in ["conf.sub.a", "conf.sub.a.b", "conf.other.a", "conf.sub.c"] {
        broker
            .publish(subject, headers.clone(), bytes(subject))
            .await
            .expect("publish");
    }
    async fn drain(sub: &mut aether::broker::Subscription, n: usize) -> Vec<String> {
        let mut got = Vec::new();
        for _ in 0..n {
            match aether::rt::timeout(Duration::from_secs(5), sub.next()).await {
                Ok(Some(m)) => {
                    assert_eq!(m.payload, bytes(&m.subject));
                    assert_eq!(m.headers.get("K").map(String::as_str), Some("v"));
                    got.push(m.subject);
                }
                _ => break,
            }
        }
        // Nothing else arrives.
        let extra = aether::rt::timeout(Duration::from_millis(200), sub.next()).await;
        assert!(
            !matches!(extra, Ok(Some(_))),
            "unexpected extra message {extra:?}"
        );
        got
    }
    assert_eq!(drain(&mut star, 2).await, ["conf.sub.a", "conf.sub.c"]);
    assert_eq!(
        drain(&mut tail, 3).await,
        ["conf.sub.a", "conf.sub.a.b", "conf.sub.c"]
    );
    assert_eq!(drain(&mut exact, 1).await, ["conf.sub.a"]);
    let err = broker
        .publish("conf.sub.*", Headers::new(), bytes("x"))
        .await;
    assert!(
        matches!(err, Err(BrokerError::InvalidArgument { .. })),
        "{err:?}"
    );
}

/// A request gets the first reply; without any subscriber it fails at once with
/// `NoResponders`; with a silent subscriber it times out.
pub async fn request_gets_a_reply_or_no_responders_or_a_timeout(broker: impl Broker) {
    let mut service = broker.subscribe("conf.svc.echo").await.expect("subscribe");
    let responder = broker.clone();
    let task = aether::rt::spawn(async move {
        while let Some(request) = service.next().await {
            let reply = request.reply.expect("requests carry a reply subject");
            let mut headers = Headers::new();
            headers.insert("Echo".into(), "yes".into());
            let mut payload = b"echo:".to_vec();
            payload.extend_from_slice(&request.payload);
            responder
                .publish(&reply, headers, Bytes::from(payload))
                .await
                .expect("reply");
        }
    });
    let reply = broker
        .request(
            "conf.svc.echo",
            Headers::new(),
            bytes("hi"),
            Duration::from_secs(5),
        )
        .await
        .expect("reply");
    assert_eq!(reply.payload, bytes("echo:hi"));
    assert_eq!(reply.headers.get("Echo").map(String::as_str), Some("yes"));
    let err = broker
        .request(
            "conf.svc.nobody",
            Headers::new(),
            bytes("hi"),
            Duration::from_secs(5),
        )
        .await
        .expect_err("no responders");
    assert_eq!(
        err,
        BrokerError::NoResponders {
            subject: "conf.svc.nobody".into()
        }
    );
    let _silent = broker
        .subscribe("conf.svc.silent")
        .await
        .expect("subscribe");
    let err = broker
        .request(
            "conf.svc.silent",
            Headers::new(),
            bytes("hi"),
            Duration::from_millis(300),
        )
        .await
        .expect_err("nobody answers");
    assert!(matches!(err, BrokerError::Timeout { .. }), "{err:?}");
    task.abort();
}

/// A reply that arrives after its request gave up is never taken as the answer to a later
/// request: every request has an inbox of its own.
pub async fn a_late_reply_never_answers_a_later_request(broker: impl Broker) {
    let mut slow = broker.subscribe("conf.late.slow").await.expect("subscribe");
    let mut fast = broker.subscribe("conf.late.fast").await.expect("subscribe");
    let err = broker
        .request(
            "conf.late.slow",
            Headers::new(),
            bytes("first"),
            Duration::from_millis(200),
        )
        .await
        .expect_err("the slow service does not answer in time");
    assert!(matches!(err, BrokerError::Timeout { .. }), "{err:?}");
    let stale = slow.next().await.expect("the slow service got the request");
    let stale_inbox = stale.reply.expect("requests carry an inbox");
    let responder = broker.clone();
    let task = aether::rt::spawn(async move {
        let request = fast.next().await.expect("the second request");
        let inbox = request.reply.expect("requests carry an inbox");
        assert_ne!(inbox, stale_inbox, "two requests shared an inbox");
        // The late answer to the first request goes out first...
        responder
            .publish(
                &stale_inbox,
                Headers::new(),
                bytes("late answer to the first"),
            )
            .await
            .expect("late reply");
        aether::rt::sleep(Duration::from_millis(50)).await;
        // ...and only then the right one.
        responder
            .publish(&inbox, Headers::new(), bytes("answer to the second"))
            .await
            .expect("reply");
    });
    let reply = broker
        .request(
            "conf.late.fast",
            Headers::new(),
            bytes("second"),
            Duration::from_secs(5),
        )
        .await
        .expect("reply");
    assert_eq!(reply.payload, bytes("answer to the second"));
    task.await.expect("responder");
}

/// Draining a subscription keeps what was published to it before, then ends it; nothing
/// published afterwards arrives.
pub async fn a_drained_subscription_delivers_what_was_sent_then_ends(broker: impl Broker) {
    let mut subscription = broker.subscribe("conf.drain.*").await.expect("subscribe");
    for i in 0..50 {
        broker
            .publish("conf.drain.x", Headers::new(), bytes(&i.to_string()))
            .await
            .expect("publish");
    }
    // A NATS publish returns once written to the socket: a request to anyone makes sure the
    // server has processed the publishes before the drain.
    let _ = broker
        .request(
            "conf.flush.nobody",
            Headers::new(),
            bytes(""),
            Duration::from_millis(100),
        )
        .await;
    subscription.drain().await;
    broker
        .publish("conf.drain.x", Headers::new(), bytes("after"))
        .await
        .expect("publish after the drain");
    let mut received = Vec::new();
    loop {
        match aether::rt::timeout(Duration::from_secs(5), subscription.next()).await {
            Ok(Some(m)) => received.push(m.payload),
            Ok(None) => break,
            Err(_) => panic!("a drained subscription did not end; got {}", received.len()),
        }
    }
    assert_eq!(
        received,
        (0..50).map(|i| bytes(&i.to_string())).collect::<Vec<_>>()
    );
}

async fn bucket(broker: &impl Broker, name: &str, ttl: Option<Duration>) {
    let mut config = KvConfig::new(name);
    config.ttl = ttl;
    broker.kv_ensure(config).await.expect("create bucket");
}

/// `kv_create` writes only when the key has no live value: a deleted key can be created again.
pub async fn kv_create_refuses_a_live_key_but_not_a_deleted_one(broker: impl Broker) {
    bucket(&broker, "conf_create", None).await;
    let r1 = broker
        .kv_create("conf_create", "lease", bytes("n1"))
        .await
        .expect("create");
    let err = broker
        .kv_create("conf_create", "lease", bytes("n2"))
        .await
        .expect_err("key exists");
    assert!(matches!(err, BrokerError::AlreadyExists { .. }), "{err:?}");
    let entry = broker
        .kv_get("conf_create", "lease")
        .await
        .expect("get")
        .expect("present");
    assert_eq!((entry.value, entry.revision), (bytes("n1"), r1));
    assert_eq!(entry.operation, KvOperation::Put);
    broker
        .kv_delete("conf_create", "lease")
        .await
        .expect("delete");
    assert_eq!(
        broker.kv_get("conf_create", "lease").await.expect("get"),
        None
    );
    let r2 = broker
        .kv_create("conf_create", "lease", bytes("n2"))
        .await
        .expect("create after delete");
    assert!(r2 > r1);
    // Idempotent bucket creation keeps the data.
    bucket(&broker, "conf_create", None).await;
    let entry = broker
        .kv_get("conf_create", "lease")
        .await
        .expect("get")
        .expect("present");
    assert_eq!((entry.value, entry.revision), (bytes("n2"), r2));
}

/// `kv_update` succeeds only at the key's latest revision, and a lost update changes nothing.
pub async fn kv_update_succeeds_only_at_the_latest_revision(broker: impl Broker) {
    bucket(&broker, "conf_update", None).await;
    let r1 = broker
        .kv_create("conf_update", "k", bytes("1"))
        .await
        .expect("create");
    let r2 = broker
        .kv_update("conf_update", "k", bytes("2"), r1)
        .await
        .expect("update at latest");
    assert!(r2 > r1);
    let err = broker
        .kv_update("conf_update", "k", bytes("3"), r1)
        .await
        .expect_err("stale revision");
    assert_eq!(
        err,
        BrokerError::WrongRevision {
            key: "k".into(),
            expected: r1
        }
    );
    let entry = broker
        .kv_get("conf_update", "k")
        .await
        .expect("get")
        .expect("present");
    assert_eq!((entry.value, entry.revision), (bytes("2"), r2));
    let r3 = broker
        .kv_update("conf_update", "fresh", bytes("x"), 0)
        .await
        .expect("revision 0 means absent");
    assert!(r3 > r2);
    let err = broker
        .kv_update("conf_update", "fresh", bytes("y"), 0)
        .await
        .expect_err("no longer absent");
    assert!(matches!(err, BrokerError::WrongRevision { .. }), "{err:?}");
}

/// `kv_entries` lists every live key of a bucket with more keys than one read page holds, with
/// its latest value and revision; deleted keys are left out.
pub async fn kv_entries_list_more_keys_than_one_page(broker: impl Broker) {
    bucket(&broker, "conf-kv-many", None).await;
    let keys = 1_200;
    let mut revisions = std::collections::BTreeMap::new();
    for i in 0..keys {
        let key = format!("k{i:05}");
        let revision = broker
            .kv_put("conf-kv-many", &key, bytes(&format!("v{i}")))
            .await
            .expect("put");
        revisions.insert(key, revision);
    }
    for i in (0..keys).step_by(7) {
        let key = format!("k{i:05}");
        let revision = broker
            .kv_put("conf-kv-many", &key, bytes(&format!("w{i}")))
            .await
            .expect("overwrite");
        revisions.insert(key, revision);
    }
    for i in (0..keys).step_by(11) {
        let key = format!("k{i:05}");
        broker
            .kv_delete("conf-kv-many", &key)
            .await
            .expect("delete");
        revisions.remove(&key);
    }
    let entries = broker.kv_entries("conf-kv-many").await.expect("entries");
    assert_eq!(entries.len(), revisions.len());
    for (entry, (key, revision)) in entries.iter().zip(&revisions) {
        assert_eq!(&entry.key, key);
        assert_eq!(entry.revision, *revision, "{key}");
        let i: usize = key[1..].parse().expect("numbered key");
        let expected = if i.is_multiple_of(7) {
            format!("w{i}")
        } else {
            format!("v{i}")
        };
        assert_eq!(entry.value, bytes(&expected), "{key}");
        assert_eq!(entry.operation, KvOperation::Put);
    }
}

/// Revisions are bucket-wide and only grow; `kv_entries` lists live keys ordered by key.
pub async fn kv_revisions_grow_across_keys_and_entries_list_live_keys_by_key(broker: impl Broker) {
    bucket(&broker, "conf_entries", None).await;
    assert!(
        broker
            .kv_entries("conf_entries")
            .await
            .expect("entries")
            .is_empty()
    );
    let rb = broker
        .kv_put("conf_entries", "b", bytes("1"))
        .await
        .expect("put");
    let ra = broker
        .kv_put("conf_entries", "a", bytes("2"))
        .await
        .expect("put");
    let rc = broker
        .kv_put("conf_entries", "c.d", bytes("3"))
        .await
        .expect("put");
    let rb2 = broker
        .kv_put("conf_entries", "b", bytes("4"))
        .await
        .expect("put");
    assert!(rb < ra && ra < rc && rc < rb2, "{rb} {ra} {rc} {rb2}");
    broker.kv_delete("conf_entries", "a").await.expect("delete");
    let entries = broker.kv_entries("conf_entries").await.expect("entries");
    let listed: Vec<(String, Bytes, u64)> = entries
        .into_iter()
        .map(|e| (e.key, e.value, e.revision))
        .collect();
    assert_eq!(
        listed,
        [
            ("b".to_owned(), bytes("4"), rb2),
            ("c.d".to_owned(), bytes("3"), rc)
        ]
    );
}

/// A watch first delivers the current entry of every matching key (deletions included), in
/// revision order, then every later put and delete.
pub async fn kv_watch_delivers_current_entries_then_every_put_and_delete(broker: impl Broker) {
    bucket(&broker, "conf_watch", None).await;
    let ra = broker
        .kv_put("conf_watch", "node.a", bytes("1"))
        .await
        .expect("put");
    broker
        .kv_put("conf_watch", "node.b", bytes("2"))
        .await
        .expect("put");
    broker
        .kv_delete("conf_watch", "node.b")
        .await
        .expect("delete");
    broker
        .kv_put("conf_watch", "other", bytes("x"))
        .await
        .expect("put");
    let mut watch = broker
        .kv_watch("conf_watch", "node.>")
        .await
        .expect("watch");
    let mut next = async || {
        aether::rt::timeout(Duration::from_secs(5), watch.next())
            .await
            .expect("watch event within 5 s")
            .expect("watch open")
    };
    let first = next().await;
    assert_eq!(
        (first.key.as_str(), first.operation, first.revision),
        ("node.a", KvOperation::Put, ra)
    );
    let second = next().await;
    assert_eq!(
        (second.key.as_str(), second.operation),
        ("node.b", KvOperation::Delete)
    );
    let rc = broker
        .kv_put("conf_watch", "node.c", bytes("3"))
        .await
        .expect("put");
    broker
        .kv_put("conf_watch", "other", bytes("y"))
        .await
        .expect("put");
    broker
        .kv_delete("conf_watch", "node.a")
        .await
        .expect("delete");
    let third = next().await;
    assert_eq!(
        (
            third.key.as_str(),
            third.operation,
            third.revision,
            third.value
        ),
        ("node.c", KvOperation::Put, rc, bytes("3"))
    );
    let fourth = next().await;
    assert_eq!(
        (fourth.key.as_str(), fourth.operation),
        ("node.a", KvOperation::Delete)
    );
    assert!(fourth.revision > rc);
}

/// Entries not written for the bucket's TTL disappear from get and entries (silently).
pub async fn kv_entries_expire_after_the_bucket_ttl(broker: impl Broker) {
    bucket(&broker, "conf_ttl", Some(Duration::from_millis(500))).await;
    broker
        .kv_create("conf_ttl", "heartbeat", bytes("n1"))
        .await
        .expect("create");
    assert!(
        broker
            .kv_get("conf_ttl", "heartbeat")
            .await
            .expect("get")
            .is_some()
    );
    let gone = eventually(100, || async {
        broker
            .kv_get("conf_ttl", "heartbeat")
            .await
            .expect("get")
            .is_none()
            && broker
                .kv_entries("conf_ttl")
                .await
                .expect("entries")
                .is_empty()
    })
    .await;
    assert!(gone, "entry still there 5 s after a 500 ms TTL");
    broker
        .kv_create("conf_ttl", "heartbeat", bytes("n2"))
        .await
        .expect("an expired key can be created again");
    let err = broker
        .kv_ensure({
            let mut c = KvConfig::new("conf_ttl_short");
            c.ttl = Some(Duration::from_millis(50));
            c
        })
        .await
        .expect_err("TTL below 100 ms");
    assert!(
        matches!(err, BrokerError::InvalidArgument { .. }),
        "{err:?}"
    );
}

/// KV operations on a bucket that does not exist fail as `NotFound`.
pub async fn kv_on_a_missing_bucket_is_not_found(broker: impl Broker) {
    let err = broker
        .kv_get("conf_missing", "k")
        .await
        .expect_err("missing");
    assert!(matches!(err, BrokerError::NotFound { .. }), "{err:?}");
    let err = broker
        .kv_put("conf_missing", "k", bytes("v"))
        .await
        .expect_err("missing");
    assert!(matches!(err, BrokerError::NotFound { .. }), "{err:?}");
    let err = broker
        .kv_create("conf_missing", "bad key", bytes("v"))
        .await
        .expect_err("bad key");
    assert!(
        matches!(err, BrokerError::InvalidArgument { .. }),
        "{err:?}"
    );
}

/// A message over the server's max payload (1 MiB by default, headers included) is refused
/// with its size and the limit, before anything is stored; one at the limit is accepted.
pub async fn messages_over_the_payload_limit_are_refused(broker: impl Broker) {
    stream(&broker, "CONF_BIG", &["conf.big.*"]).await;
    let at_limit = Bytes::from(vec![b'x'; DEFAULT_MAX_PAYLOAD]);
    broker
        .append(
            "conf.big.a",
            Headers::new(),
            at_limit,
            AppendOptions::default(),
        )
        .await
        .expect("exactly max payload");
    let over = Bytes::from(vec![b'x'; DEFAULT_MAX_PAYLOAD + 1]);
    let err = broker
        .append(
            "conf.big.a",
            Headers::new(),
            over.clone(),
            AppendOptions::default(),
        )
        .await
        .expect_err("over the limit");
    assert_eq!(
        err,
        BrokerError::PayloadTooLarge {
            size: DEFAULT_MAX_PAYLOAD + 1,
            max: DEFAULT_MAX_PAYLOAD
        }
    );
    let near = Bytes::from(vec![b'x'; DEFAULT_MAX_PAYLOAD - 10]);
    let err = broker
        .append(
            "conf.big.a",
            Headers::new(),
            near,
            with_id("a-long-enough-message-id"),
        )
        .await
        .expect_err("the message id header counts");
    assert!(
        matches!(
            err,
            BrokerError::PayloadTooLarge {
                max: DEFAULT_MAX_PAYLOAD,
                ..
            }
        ),
        "{err:?}"
    );
    let err = broker
        .publish("conf.big.core", Headers::new(), over)
        .await
        .expect_err("core publish over the limit");
    assert!(
        matches!(err, BrokerError::PayloadTooLarge { .. }),
        "{err:?}"
    );
    assert_eq!(sequences(&broker, "CONF_BIG", "conf.big.a", 1).await, [1]);
}
