//! The store's deadline on the memory broker behind a wrapper that can stall it, in tokio's
//! paused time (so the deadline passes at once, and exactly): every public operation ends at
//! its deadline with its typed error, an append says whether its commit may be stored, and an
//! ambiguous append is not retried when no attempt could start in time. The same on a real
//! server: `tests/nats_deadlines.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::time::Duration;

use aether::broker::{
    AppendAck, AppendOptions, Broker, BrokerError, Headers, KvConfig, KvEntry, KvWatch, Message,
    ReadFrom, StoredMessage, StreamConfig, Subscription,
};
use aether::{
    AppendError, Clock, EventStore, ExpectedVersion, MemoryBroker, NewEvent, OpenError, ReadError,
    Runtime, SharedRng, Snapshot, SnapshotError, StoreConfig, SystemClock,
};
use bytes::Bytes;
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(2);

/// What the wrapper does with the next operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Mode {
    /// Passes everything through.
    Serve,
    /// Every operation waits forever (a frozen server).
    Stall,
    /// Reads wait forever; appends are served.
    StallReads,
    /// Appends reach the broker and are stored, then their answer never comes.
    StoreThenStall,
    /// Appends fail at once with `Unavailable` (ambiguous), storing nothing.
    Unavailable,
}

#[derive(Clone)]
struct Stallable {
    inner: MemoryBroker,
    mode: Arc<AtomicU8>,
    /// Append attempts that reached the wrapper.
    appends: Arc<AtomicU32>,
}

impl Stallable {
    fn new() -> Self {
        Self {
            inner: MemoryBroker::new(),
            mode: Arc::new(AtomicU8::new(Mode::Serve as u8)),
            appends: Arc::new(AtomicU32::new(0)),
        }
    }

    fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    fn mode(&self) -> Mode {
        match self.mode.load(Ordering::SeqCst) {
            0 => Mode::Serve,
            1 => Mode::Stall,
            2 => Mode::StallReads,
            3 => Mode::StoreThenStall,
            _ => Mode::Unavailable,
        }
    }

    /// Waits forever if stalled (for an operation that reads when `read`).
    async fn gate(&self, read: bool) {
        match self.mode() {
            Mode::Stall => std::future::pending().await,
            Mode::StallReads if read => std::future::pending().await,
            _ => {}
        }
    }
}

impl Broker for Stallable {
    async fn ensure_stream(&self, config: StreamConfig) -> Result<(), BrokerError> {
        self.gate(true).await;
        self.inner.ensure_stream(config).await
    }

    async fn append(
        &self,
        subject: &str,
        headers: Headers,
        payload: Bytes,
        options: AppendOptions,
    ) -> Result<AppendAck, BrokerError> {
        self.appends.fetch_add(1, Ordering::SeqCst);
        self.gate(false).await;
        match self.mode() {
            Mode::Unavailable => Err(BrokerError::Unavailable {
                reason: "no stream leader (on purpose)".into(),
            }),
            Mode::StoreThenStall => {
                self.inner
                    .append(subject, headers, payload, options)
                    .await?;
                std::future::pending().await
            }
            _ => self.inner.append(subject, headers, payload, options).await,
        }
    }

    async fn last(
        &self,
        stream: &str,
        subject: &str,
        from: ReadFrom,
    ) -> Result<Option<StoredMessage>, BrokerError> {
        self.gate(true).await;
        self.inner.last(stream, subject, from).await
    }

    async fn next(
        &self,
        stream: &str,
        subject: &str,
        from_sequence: u64,
        from: ReadFrom,
    ) -> Result<Option<StoredMessage>, BrokerError> {
        self.gate(true).await;
        self.inner.next(stream, subject, from_sequence, from).await
    }

    async fn read(
        &self,
        stream: &str,
        subject: &str,
        from_sequence: u64,
    ) -> Result<Vec<StoredMessage>, BrokerError> {
        self.gate(true).await;
        self.inner.read(stream, subject, from_sequence).await
    }

    async fn read_batch(
        &self,
        stream: &str,
        filter: &str,
        from_sequence: u64,
        max: usize,
    ) -> Result<Vec<StoredMessage>, BrokerError> {
        self.gate(true).await;
        self.inner
            .read_batch(stream, filter, from_sequence, max)
            .await
    }

    async fn publish(
        &self,
        subject: &str,
        headers: Headers,
        payload: Bytes,
    ) -> Result<(), BrokerError> {
        self.inner.publish(subject, headers, payload).await
    }

    async fn subscribe(&self, pattern: &str) -> Result<Subscription, BrokerError> {
        self.inner.subscribe(pattern).await
    }

    async fn request(
        &self,
        subject: &str,
        headers: Headers,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Message, BrokerError> {
        self.inner.request(subject, headers, payload, timeout).await
    }

    async fn kv_ensure(&self, config: KvConfig) -> Result<(), BrokerError> {
        self.inner.kv_ensure(config).await
    }

    async fn kv_get(&self, bucket: &str, key: &str) -> Result<Option<KvEntry>, BrokerError> {
        self.inner.kv_get(bucket, key).await
    }

    async fn kv_create(&self, bucket: &str, key: &str, value: Bytes) -> Result<u64, BrokerError> {
        self.inner.kv_create(bucket, key, value).await
    }

    async fn kv_update(
        &self,
        bucket: &str,
        key: &str,
        value: Bytes,
        revision: u64,
    ) -> Result<u64, BrokerError> {
        self.inner.kv_update(bucket, key, value, revision).await
    }

    async fn kv_put(&self, bucket: &str, key: &str, value: Bytes) -> Result<u64, BrokerError> {
        self.inner.kv_put(bucket, key, value).await
    }

    async fn kv_delete(&self, bucket: &str, key: &str) -> Result<(), BrokerError> {
        self.inner.kv_delete(bucket, key).await
    }

    async fn kv_entries(&self, bucket: &str) -> Result<Vec<KvEntry>, BrokerError> {
        self.inner.kv_entries(bucket).await
    }

    async fn kv_watch(&self, bucket: &str, key_pattern: &str) -> Result<KvWatch, BrokerError> {
        self.inner.kv_watch(bucket, key_pattern).await
    }
}

fn event(n: u64) -> Vec<NewEvent> {
    vec![NewEvent::new("Added", json!({ "n": n }))]
}

/// A runtime whose generator is seeded with `seed` (handles with the same seed would draw the
/// same commit ids, which the broker deduplicates).
fn runtime(broker: &Stallable, seed: u64) -> Runtime<Stallable> {
    Runtime::new(
        broker.clone(),
        SystemClock::new(),
        SharedRng::from_seed(seed),
    )
}

async fn open(broker: &Stallable, config: StoreConfig, seed: u64) -> EventStore<Stallable> {
    EventStore::open(runtime(broker, seed), config)
        .await
        .expect("open")
}

/// Runs `op` and returns its result with how long it took on `clock`; an operation that is still
/// running after ten minutes (of paused time: at once) fails the test instead of hanging it.
async fn timed<T>(clock: &SystemClock, op: impl Future<Output = T>) -> (T, Duration) {
    let started = clock.monotonic();
    let result = tokio::time::timeout(Duration::from_secs(600), op)
        .await
        .expect("the operation ended (it ran for ten minutes)");
    (result, clock.monotonic() - started)
}

/// Took the deadline, to the millisecond (tokio's timer resolution).
fn at_deadline(took: Duration) -> bool {
    took >= DEADLINE && took <= DEADLINE + Duration::from_millis(1)
}

#[tokio::test(start_paused = true)]
async fn against_a_stalled_broker_every_operation_ends_at_the_deadline_with_its_typed_error() {
    let broker = Stallable::new();
    let config = StoreConfig::new("dl").deadline(DEADLINE);
    let store = open(&broker, config.clone(), 1).await;
    for n in 1..=2 {
        store
            .append("known", ExpectedVersion::Any, event(n))
            .await
            .expect("append");
        store
            .append("unread", ExpectedVersion::Any, event(n))
            .await
            .expect("append");
    }
    store
        .save_snapshot(&Snapshot::new("known", 2, json!({})))
        .await
        .expect("snapshot");
    // A handle that knows "known" but not "unread".
    let fresh = open(&broker, config.clone(), 2).await;
    fresh.events("known", 1).await.expect("read");
    let clock = store.runtime().clock().clone();
    broker.set(Mode::Stall);

    // The tip is known: the commit is sent at once, and its outcome is unknown at the deadline.
    let (result, took) = timed(
        &clock,
        fresh.append("known", ExpectedVersion::Exact(2), event(3)),
    )
    .await;
    match result {
        Err(AppendError::Indeterminate {
            commit_id,
            source: BrokerError::Timeout { operation },
        }) => {
            assert!(!commit_id.is_empty());
            assert!(operation.contains("deadline of 2s"), "{operation}");
        }
        other => panic!("expected an indeterminate append, got {other:?}"),
    }
    assert!(at_deadline(took), "{took:?}");

    // The tip must be read first: nothing was sent when the deadline passed.
    let (result, took) = timed(
        &clock,
        fresh.append("unread", ExpectedVersion::Any, event(3)),
    )
    .await;
    match result {
        Err(e @ AppendError::DeadlineExceeded(_)) => {
            let text = e.to_string();
            assert!(
                text.contains("append to actor \"unread\"") && text.contains("nothing was stored"),
                "{text}"
            );
        }
        other => panic!("expected a deadline error, got {other:?}"),
    }
    assert!(at_deadline(took), "{took:?}");

    let read = |r: Result<_, ReadError>| matches!(r, Err(ReadError::DeadlineExceeded(e)) if e.deadline == DEADLINE);
    let (r, took) = timed(&clock, fresh.events("known", 1)).await;
    assert!(read(r.map(drop)) && at_deadline(took), "events: {took:?}");
    let (r, took) = timed(&clock, fresh.events_with_errors("known", 1)).await;
    assert!(read(r.map(drop)) && at_deadline(took), "events_with_errors");
    let snapshot = Snapshot::new("known", 2, json!({})).at_sequence(3);
    let (r, took) = timed(&clock, fresh.events_after(&snapshot)).await;
    assert!(read(r.map(drop)) && at_deadline(took), "events_after");
    let (r, took) = timed(&clock, fresh.latest_version("known")).await;
    assert!(read(r.map(drop)) && at_deadline(took), "latest_version");
    let (r, took) = timed(&clock, fresh.current_version("known")).await;
    assert!(read(r.map(drop)) && at_deadline(took), "current_version");
    let (r, took) = timed(&clock, fresh.read_all(1, 10)).await;
    assert!(read(r.map(drop)) && at_deadline(took), "read_all");

    let (r, took) = timed(&clock, fresh.latest_snapshot("known")).await;
    assert!(
        matches!(r, Err(SnapshotError::DeadlineExceeded(_))) && at_deadline(took),
        "latest_snapshot: {r:?}"
    );
    let (r, took) = timed(
        &clock,
        fresh.save_snapshot(&Snapshot::new("known", 2, json!({}))),
    )
    .await;
    assert!(
        matches!(r, Err(SnapshotError::DeadlineExceeded(_))) && at_deadline(took),
        "save_snapshot: {r:?}"
    );
    let (r, took) = timed(
        &clock,
        EventStore::open(runtime(&broker, 3), config.clone()),
    )
    .await;
    match r {
        Err(OpenError::DeadlineExceeded(e)) => {
            assert_eq!(
                e.to_string(),
                "open of namespace \"dl\" did not finish within the store's deadline of 2s"
            );
        }
        other => panic!("expected a deadline error, got {other:?}"),
    }
    assert!(at_deadline(took), "open: {took:?}");

    // Served again: nothing acknowledged was lost, and nothing abandoned was stored twice.
    broker.set(Mode::Serve);
    let events = fresh.events("known", 1).await.expect("read");
    let versions: Vec<u64> = events.iter().map(|e| e.version).collect();
    assert_eq!(
        versions,
        [1, 2],
        "the stalled commit never reached the broker"
    );
    assert_eq!(fresh.events("unread", 1).await.expect("read").len(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_append_cut_short_after_its_commit_was_stored_names_the_commit_that_is_there() {
    let broker = Stallable::new();
    let store = open(&broker, StoreConfig::new("dl").deadline(DEADLINE), 1).await;
    store
        .append("a", ExpectedVersion::NoStream, event(1))
        .await
        .expect("append");
    broker.set(Mode::StoreThenStall);
    let clock = store.runtime().clock().clone();
    let append = store.append("a", ExpectedVersion::Exact(1), event(2));
    let (Err(AppendError::Indeterminate { commit_id, .. }), _) = timed(&clock, append).await else {
        panic!("expected an indeterminate append");
    };
    broker.set(Mode::Serve);
    let page = store.read_all(1, 10).await.expect("read");
    let ids: Vec<&str> = page.commits.iter().map(|c| c.commit_id.as_str()).collect();
    assert_eq!(ids.len(), 2);
    assert_eq!(
        ids[1], commit_id,
        "the unknown outcome was this commit, stored"
    );
}

#[tokio::test(start_paused = true)]
async fn a_deadline_after_the_broker_refused_the_commit_says_nothing_was_stored() {
    let broker = Stallable::new();
    let config = StoreConfig::new("dl").deadline(DEADLINE);
    let ours = open(&broker, config.clone(), 1).await;
    let theirs = open(&broker, config, 2).await;
    ours.append("a", ExpectedVersion::Any, event(1))
        .await
        .expect("append");
    theirs
        .append("a", ExpectedVersion::Any, event(2))
        .await
        .expect("append");
    // Our handle's tip is stale: its commit is refused (wrong last sequence), then the re-read
    // of the tip never ends.
    broker.set(Mode::StallReads);
    let before = broker.appends.load(Ordering::SeqCst);
    let clock = ours.runtime().clock().clone();
    let (result, _) = timed(&clock, ours.append("a", ExpectedVersion::Any, event(3))).await;
    assert_eq!(
        broker.appends.load(Ordering::SeqCst),
        before + 1,
        "one attempt, refused"
    );
    assert!(
        matches!(result, Err(AppendError::DeadlineExceeded(_))),
        "a refused commit is not an unknown outcome: {result:?}"
    );
    broker.set(Mode::Serve);
    assert_eq!(ours.latest_version("a").await.expect("read"), 2);
}

#[tokio::test(start_paused = true)]
async fn an_ambiguous_append_is_not_retried_when_the_wait_before_the_next_attempt_ends_past_the_deadline()
 {
    let broker = Stallable::new();
    let mut config = StoreConfig::new("dl").deadline(DEADLINE);
    // Waits of 1-1.5 s, then 2-3 s: the second wait would end past the deadline.
    config.retry_delay = Duration::from_secs(1);
    let store = open(&broker, config, 1).await;
    broker.set(Mode::Unavailable);
    let clock = store.runtime().clock().clone();
    let (result, took) = timed(
        &clock,
        store.append("a", ExpectedVersion::NoStream, event(1)),
    )
    .await;
    assert_eq!(broker.appends.load(Ordering::SeqCst), 2, "two attempts");
    match result {
        Err(AppendError::Indeterminate {
            source: BrokerError::Unavailable { .. },
            ..
        }) => {}
        other => panic!("expected the last attempt's error, got {other:?}"),
    }
    assert!(
        took >= Duration::from_secs(1) && took < DEADLINE,
        "returned after the first wait, before the deadline: {took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_default_deadline_is_ten_seconds_and_bounds_an_append_against_a_frozen_broker() {
    let broker = Stallable::new();
    let config = StoreConfig::new("dl");
    assert_eq!(config.deadline, Duration::from_secs(10));
    let store = open(&broker, config, 1).await;
    broker.set(Mode::Stall);
    let clock = store.runtime().clock().clone();
    let (result, took) = timed(
        &clock,
        store.append("a", ExpectedVersion::NoStream, event(1)),
    )
    .await;
    assert!(matches!(result, Err(AppendError::Indeterminate { .. })));
    assert!(
        took >= Duration::from_secs(10) && took <= Duration::from_millis(10_001),
        "{took:?}"
    );
}

#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Tally {
    total: u64,
}

#[derive(serde::Serialize, serde::Deserialize)]
enum TallyEvent {
    Added { n: u64 },
}

impl aether::DomainEvent for TallyEvent {}

impl aether::Aggregate for Tally {
    const NAME: &'static str = "tally";
    type Command = u64;
    type Event = TallyEvent;
    type Rejection = String;

    fn handle(
        &self,
        _: &aether::actor::CommandContext<'_>,
        n: &u64,
    ) -> Result<Vec<TallyEvent>, String> {
        // 0 decides nothing: a command that answers with the version it was decided on.
        Ok(if *n == 0 {
            Vec::new()
        } else {
            vec![TallyEvent::Added { n: *n }]
        })
    }

    fn apply(&mut self, TallyEvent::Added { n }: &TallyEvent) {
        self.total += n;
    }
}

/// A command has a deadline of its own (`ActorConfig::deadline`), over everything it chains:
/// against a frozen broker `execute` and `send` end at it with `DeadlineExceeded` — even when
/// the store's deadline is longer — and a command whose append was stored before the answer
/// was lost leaves no stale actor behind: the next command loads it afresh and continues at the
/// next version.
#[tokio::test(start_paused = true)]
async fn a_command_ends_at_its_own_deadline_and_the_next_one_reloads_the_actor() {
    use aether::{ActorConfig, ActorHost, CommandError, SingleNode};
    let broker = Stallable::new();
    let store = open(
        &broker,
        StoreConfig::new("dl").deadline(Duration::from_secs(60)),
        1,
    )
    .await;
    let clock = store.runtime().clock().clone();
    let limit = Duration::from_secs(3);
    let me = store.runtime().node_id().clone();
    let host: ActorHost<Tally, Stallable> =
        ActorHost::new(store, SingleNode(me), ActorConfig::new().deadline(limit));
    assert_eq!(host.execute("t", &1).await.unwrap().version, 1);

    broker.set(Mode::Stall);
    for send in [false, true] {
        let (result, took) = if send {
            timed(&clock, host.send("t", &10)).await
        } else {
            timed(&clock, host.execute("t", &10)).await
        };
        assert!(
            matches!(result, Err(CommandError::DeadlineExceeded { ref actor, deadline }) if actor == "t" && deadline == limit),
            "{result:?}"
        );
        assert!(
            took >= limit && took <= limit + Duration::from_millis(1),
            "{took:?}"
        );
    }

    // Stored, then the answer is lost: the command cannot tell, so it says it may have run —
    // whether `execute` or `send` (whose own deadline cuts the local `execute` short) gave up.
    // The actor in memory is not trusted afterwards: a command that decides nothing answers
    // with the version the store holds, not the one it held before.
    let mut total = 1;
    let mut version = 1;
    for send in [false, true] {
        broker.set(Mode::StoreThenStall);
        let (result, _) = if send {
            timed(&clock, host.send("t", &100)).await
        } else {
            timed(&clock, host.execute("t", &100)).await
        };
        assert!(
            matches!(result, Err(CommandError::DeadlineExceeded { .. })),
            "{result:?}"
        );
        total += 100;
        version += 1;
        broker.set(Mode::Serve);
        let noop = host.send("t", &0).await.unwrap();
        assert_eq!(
            noop.version, version,
            "the abandoned command's event is v{version}"
        );
        assert_eq!(host.state("t").await.unwrap().state.total, total);
    }
    let next = host.execute("t", &1_000).await.unwrap();
    assert_eq!(next.version, version + 1);
    assert_eq!(host.state("t").await.unwrap().state.total, total + 1_000);
}
