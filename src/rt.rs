//! The executor seam: where the library spawns tasks, sleeps and bounds waits.
//!
//! Normally these are tokio's. Built with `RUSTFLAGS="--cfg madsim"` they are madsim's, whose
//! executor picks the next ready task from the seed and whose timers run on virtual time, so
//! the `aether-sim` crate can run the same library code under madsim as under turmoil. Every
//! spawn, sleep and timeout in the library goes through here; `tokio::sync`, `tokio::select!`
//! and `tokio::task_local!` do not touch an executor and are used directly.

use std::future::Future;

use futures::FutureExt;
use futures::stream::{FuturesUnordered, StreamExt};

#[cfg(madsim)]
pub use madsim::task::{AbortHandle, JoinHandle, spawn};
#[cfg(madsim)]
pub use madsim::time::{sleep, timeout};
#[cfg(not(madsim))]
pub use tokio::task::{AbortHandle, JoinHandle, spawn};
#[cfg(not(madsim))]
pub use tokio::time::{sleep, timeout};

/// The monotonic instant of the executor's timers: tokio's (which follows tokio's paused test
/// clock), or under madsim the standard one, which madsim runs on virtual time.
#[cfg(not(madsim))]
pub type Instant = tokio::time::Instant;
/// See the other definition.
#[cfg(madsim)]
pub type Instant = std::time::Instant;

/// Tasks spawned together and aborted together when the set is dropped (tokio's `JoinSet`,
/// which madsim does not have).
#[derive(Debug, Default)]
pub struct TaskSet {
    tasks: FuturesUnordered<JoinHandle<()>>,
}

impl TaskSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Spawns `future` into the set.
    pub fn spawn(&mut self, future: impl Future<Output = ()> + Send + 'static) {
        self.tasks.push(spawn(future));
    }

    /// Forgets the tasks that have finished, without waiting.
    pub fn reap(&mut self) {
        while let Some(Some(_)) = self.tasks.next().now_or_never() {}
    }

    /// How many tasks are in the set (finished ones not yet reaped included).
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Waits for every task in the set to finish.
    pub async fn join_all(&mut self) {
        while self.tasks.next().await.is_some() {}
    }
}

impl Drop for TaskSet {
    fn drop(&mut self) {
        for task in self.tasks.iter() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dropping_a_set_aborts_what_runs_and_join_waits_for_the_rest() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
        let mut set = TaskSet::new();
        for i in 0..3 {
            let tx = tx.clone();
            set.spawn(async move {
                tx.send(i).expect("receiver alive");
            });
        }
        set.join_all().await;
        assert!(set.is_empty());
        let mut got = Vec::new();
        while let Ok(i) = rx.try_recv() {
            got.push(i);
        }
        got.sort_unstable();
        assert_eq!(got, vec![0, 1, 2]);

        let mut set = TaskSet::new();
        let (started_tx, started) = tokio::sync::oneshot::channel::<()>();
        let tx2 = tx.clone();
        set.spawn(async move {
            started_tx.send(()).expect("test waits");
            std::future::pending::<()>().await;
            tx2.send(99).expect("never reached");
        });
        started.await.expect("task started");
        assert_eq!(set.len(), 1);
        drop(set);
        drop(tx);
        // The aborted task dropped its sender: the channel closes with nothing more sent.
        assert_eq!(rx.recv().await, None);
    }
}
