//! The store's deadline ([`StoreConfig::deadline`](super::StoreConfig::deadline)): every public
//! operation races its work against the runtime's clock through [`Deadline`] (the one racing
//! helper, in `src/clock.rs`), and what it returns when the deadline passes says what is known
//! of its effect: a read says it timed out, an append says whether a commit may be stored.

use std::future::Future;
use std::sync::Mutex;

use super::EventStore;
use super::error::{AppendError, DeadlineError};
use crate::broker::{Broker, BrokerError};
use crate::clock::{Clock, Deadline, Elapsed};

/// Runs `work` within `deadline` on `clock`; `operation` names it in the error.
pub(super) async fn bounded<C: Clock, T, E: From<DeadlineError>>(
    clock: &C,
    deadline: &Deadline,
    operation: impl FnOnce() -> String,
    work: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    match deadline.run(clock, work).await {
        Ok(result) => result,
        Err(Elapsed) => Err(exceeded(operation(), deadline).into()),
    }
}

/// The error of `operation` abandoned at `deadline` (logged).
pub(super) fn exceeded(operation: String, deadline: &Deadline) -> DeadlineError {
    tracing::warn!(%operation, deadline = ?deadline.limit(), "store operation abandoned at its deadline");
    DeadlineError {
        operation,
        deadline: deadline.limit(),
    }
}

/// The commit of a running append whose outcome is unknown: set when an attempt is sent,
/// cleared when a definite answer says it is not stored. What the append reports if its
/// deadline passes depends on it.
#[derive(Debug, Default)]
pub(super) struct InFlight(Mutex<Option<String>>);

impl InFlight {
    /// An attempt of commit `commit_id` was sent (or is being sent).
    pub(super) fn sent(&self, commit_id: &str) {
        *self.lock() = Some(commit_id.to_owned());
    }

    /// The broker definitely did not store the commit sent last.
    pub(super) fn refused(&self) {
        *self.lock() = None;
    }

    /// What the deadline error of `actor`'s append is: outcome unknown while a commit is in
    /// flight, nothing stored otherwise.
    pub(super) fn deadline_error(&self, actor: &str, deadline: &Deadline) -> AppendError {
        match self.lock().take() {
            Some(commit_id) => {
                tracing::warn!(
                    commit = %commit_id, actor, deadline = ?deadline.limit(),
                    "append abandoned at its deadline; its outcome is unknown"
                );
                AppendError::Indeterminate {
                    commit_id,
                    source: BrokerError::Timeout {
                        operation: format!(
                            "an answer within the store's deadline of {:?}",
                            deadline.limit()
                        ),
                    },
                }
            }
            None => exceeded(format!("append to actor {actor:?}"), deadline).into(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<B: Broker, C: Clock> EventStore<B, C> {
    /// A deadline of [`StoreConfig::deadline`](super::StoreConfig::deadline) from now.
    pub(super) fn start_deadline(&self) -> Deadline {
        Deadline::after(self.inner.rt.clock(), self.inner.config.deadline)
    }

    /// Runs `work` within a deadline starting now; `operation` names it in the error.
    pub(super) async fn bounded<T, E: From<DeadlineError>>(
        &self,
        operation: impl FnOnce() -> String,
        work: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let deadline = self.start_deadline();
        bounded(self.inner.rt.clock(), &deadline, operation, work).await
    }
}
