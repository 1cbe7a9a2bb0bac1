//! Live projections, generic over the broker: catching up then following with no gap and no
//! duplicate at the switch-over, following by notification or by polling, starting over,
//! the lag, and a second instance taking over from a stopped one.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aether::projection::{Follow, ProjectionError, Projector};
use aether::{Broker, BusConfig, EventBus, EventStore, ExpectedVersion, NewEvent, Page, Runtime};
use serde_json::json;
use tokio::sync::oneshot;

use super::store::open;

/// Positions handed to a handler, in the order it saw them.
type Seen = Arc<Mutex<Vec<u64>>>;

fn recorder(seen: Seen) -> impl FnMut(Page) -> std::future::Ready<Result<(), String>> {
    move |page: Page| {
        seen.lock()
            .unwrap()
            .extend(page.commits.iter().map(|c| c.position));
        std::future::ready(Ok(()))
    }
}

/// `writers` tasks appending `each` single-event commits to actors of their own.
async fn write<B: Broker>(store: &EventStore<B>, writers: usize, each: usize, tag: &str) {
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let store = store.clone();
            let actor = format!("{tag}-{w}");
            tokio::spawn(async move {
                for n in 0..each {
                    store
                        .append(
                            &actor,
                            ExpectedVersion::Exact(n as u64),
                            vec![NewEvent::new("Wrote", json!({ "n": n }))],
                        )
                        .await
                        .expect("append");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("writer");
    }
}

/// Every commit position of the namespace, in order.
async fn all_positions<B: Broker>(store: &EventStore<B>) -> Vec<u64> {
    let mut out = Vec::new();
    let mut position = 1;
    loop {
        let page = store.read_all(position, 500).await.expect("read_all");
        assert!(page.errors.is_empty(), "no damage here");
        if page.commits.is_empty() {
            return out;
        }
        out.extend(page.commits.iter().map(|c| c.position));
        position = page.next_position;
    }
}

/// Waits until `projector` has handled everything stored (at most 30 s).
async fn until_caught_up<B: Broker>(projector: &Projector<B, aether::SystemClock>) {
    for _ in 0..1500 {
        let lag = projector.lag::<String>().await.expect("lag");
        if lag.caught_up() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lag = projector.lag::<String>().await.expect("lag");
    panic!("not caught up within 1,500 polls 20 ms apart (30 s and more): {lag:?}");
}

/// Runs `projector` on a task until the returned sender fires.
fn start<B: Broker>(
    projector: Arc<Projector<B, aether::SystemClock>>,
    seen: Seen,
) -> (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<u64, ProjectionError<String>>>,
) {
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        projector
            .run(recorder(seen), async {
                let _ = rx.await;
            })
            .await
    });
    (tx, task)
}

/// 1,000 commits by four writers, half before the projector starts and half while it catches
/// up and follows: it hands over each exactly once, in position order.
pub async fn a_live_projector_catches_up_then_follows_with_no_gap_or_duplicate<B: Broker>(
    broker: B,
    ns: String,
) {
    let rt = Runtime::system(broker.clone());
    let bus = EventBus::new(&rt, BusConfig::new());
    let store = open(broker, &ns).await.with_bus(bus);
    write(&store, 2, 250, "before").await;
    let projector = Arc::new(
        Projector::open::<String>(store.clone(), "live")
            .await
            .unwrap()
            .page_max(64)
            // Only the bus's notifications can wake it in time: a poll would come too late.
            .follow(Follow::default().poll_interval(Duration::from_secs(120))),
    );
    let seen: Seen = Arc::default();
    let (stop, run) = start(projector.clone(), seen.clone());
    write(&store, 2, 250, "during").await;
    until_caught_up(&projector).await;
    stop.send(()).unwrap();
    let handled = run.await.unwrap().expect("the run ends when stopped");
    let stored = all_positions(&store).await;
    assert_eq!(stored.len(), 1000);
    assert_eq!(handled, 1000, "records handled");
    assert_eq!(*seen.lock().unwrap(), stored, "every commit once, in order");
}

/// Without a bus the projector polls: commits stored while it follows still arrive, once each.
pub async fn a_live_projector_without_a_bus_follows_by_polling<B: Broker>(broker: B, ns: String) {
    let store = open(broker, &ns).await;
    let projector = Arc::new(
        Projector::open::<String>(store.clone(), "polled")
            .await
            .unwrap()
            .follow(Follow::default().poll_interval(Duration::from_millis(20))),
    );
    let seen: Seen = Arc::default();
    let (stop, run) = start(projector.clone(), seen.clone());
    for round in 0..5 {
        write(&store, 2, 20, &format!("round{round}")).await;
        until_caught_up(&projector).await;
    }
    stop.send(()).unwrap();
    assert_eq!(run.await.unwrap().unwrap(), 200);
    let stored = all_positions(&store).await;
    assert_eq!(*seen.lock().unwrap(), stored);
}

/// The lag counts what is not projected yet (over one page) and its age; zero when caught up.
pub async fn the_lag_counts_what_is_not_yet_projected<B: Broker>(broker: B, ns: String) {
    let store = open(broker, &ns).await;
    let projector = Projector::open::<String>(store.clone(), "lagging")
        .await
        .unwrap()
        .page_max(10);
    let empty = projector.lag::<String>().await.unwrap();
    assert!(empty.caught_up() && !empty.more && empty.position == 1);
    write(&store, 1, 25, "w").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let lag = projector.lag::<String>().await.unwrap();
    assert_eq!((lag.records, lag.more, lag.position), (10, true, 1));
    assert!(
        lag.behind >= Duration::from_millis(20),
        "the oldest unprojected commit is at least 20 ms old: {lag:?}"
    );
    projector
        .step(|_| std::future::ready(Ok::<(), String>(())))
        .await
        .unwrap();
    projector
        .step(|_| std::future::ready(Ok::<(), String>(())))
        .await
        .unwrap();
    let lag = projector.lag::<String>().await.unwrap();
    assert_eq!((lag.records, lag.more), (5, false));
    projector
        .catch_up(|_| std::future::ready(Ok::<(), String>(())))
        .await
        .unwrap();
    let lag = projector.lag::<String>().await.unwrap();
    assert!(lag.caught_up());
    assert_eq!(lag.behind, Duration::ZERO);
}

/// A reset starts the projection over: everything is handed over again, from the first
/// record, also to an instance that is running.
pub async fn a_reset_rebuilds_the_projection_from_the_first_record<B: Broker>(
    broker: B,
    ns: String,
) {
    let store = open(broker, &ns).await;
    write(&store, 2, 25, "w").await;
    let projector = Arc::new(
        Projector::open::<String>(store.clone(), "rebuilt")
            .await
            .unwrap()
            .follow(Follow::default().poll_interval(Duration::from_millis(20))),
    );
    let seen: Seen = Arc::default();
    let (stop, run) = start(projector.clone(), seen.clone());
    until_caught_up(&projector).await;
    let stored = all_positions(&store).await;
    assert_eq!(*seen.lock().unwrap(), stored);
    seen.lock().unwrap().clear();
    Projector::open::<String>(store.clone(), "rebuilt")
        .await
        .unwrap()
        .reset::<String>()
        .await
        .unwrap();
    until_caught_up(&projector).await;
    stop.send(()).unwrap();
    assert_eq!(run.await.unwrap().unwrap(), 100, "everything, twice");
    assert_eq!(
        *seen.lock().unwrap(),
        stored,
        "the rebuild saw everything again"
    );
}

/// Two instances of one projection: the one that loses a race for the checkpoint is fenced and
/// stops; a standby started after an instance was killed mid-run continues from its checkpoint.
/// Together they hand over every commit; only a page in flight at the kill is handed twice.
pub async fn a_standby_instance_takes_over_without_losing_a_commit<B: Broker>(
    broker: B,
    ns: String,
) {
    let store = open(broker, &ns).await;
    let open_instance = || async {
        Arc::new(
            Projector::open::<String>(store.clone(), "shared")
                .await
                .unwrap()
                .page_max(8)
                .follow(Follow::default().poll_interval(Duration::from_millis(10))),
        )
    };
    let first = open_instance().await;
    let seen_first: Seen = Arc::default();
    let (_keep, run_first) = start(first.clone(), seen_first.clone());
    write(&store, 2, 100, "a").await;
    // Killed mid-run (its task aborted), as a crashed process.
    run_first.abort();
    let _ = run_first.await;
    write(&store, 2, 100, "b").await;
    let second = open_instance().await;
    let third = open_instance().await;
    let seen_second: Seen = Arc::default();
    let seen_third: Seen = Arc::default();
    let (stop_second, run_second) = start(second.clone(), seen_second.clone());
    let (stop_third, run_third) = start(third.clone(), seen_third.clone());
    write(&store, 2, 100, "c").await;
    until_caught_up(&second).await;
    let _ = stop_second.send(());
    let _ = stop_third.send(());
    let outcomes = [run_second.await.unwrap(), run_third.await.unwrap()];
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, Ok(_) | Err(ProjectionError::Fenced { .. }))),
        "each instance stops when told or when fenced: {outcomes:?}"
    );
    let stored = all_positions(&store).await;
    assert_eq!(stored.len(), 600);
    let mut handled: Vec<u64> = [&seen_first, &seen_second, &seen_third]
        .iter()
        .flat_map(|s| s.lock().unwrap().clone())
        .collect();
    for seen in [&seen_first, &seen_second, &seen_third] {
        let seen = seen.lock().unwrap();
        assert!(
            seen.windows(2).all(|w| w[0] < w[1]),
            "one instance never goes back"
        );
    }
    handled.sort_unstable();
    let twice = handled.len() - {
        let mut unique = handled.clone();
        unique.dedup();
        unique.len()
    };
    handled.dedup();
    assert_eq!(handled, stored, "every commit handed over");
    // At most a page per instance that lost a race or died with it in flight.
    assert!(twice <= 3 * 8, "{twice} commits handed over twice");
}
