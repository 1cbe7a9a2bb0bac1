//! Time and randomness, injected.
//!
//! Library code never reads the OS clock or the OS random generator: it asks the [`Clock`] carried
//! by the [`Runtime`](crate::Runtime) bundle, and draws randomness from the bundle's seeded
//! [`SharedRng`]. In
//! production the clock is [`SystemClock`]; in the simulation every node gets its own clock built
//! on turmoil's virtual time, with skew and drift. `clippy.toml` forbids `Instant::now`,
//! `SystemTime::now` and `rand::rng` everywhere except inside [`SystemClock`].

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A source of time: a monotonic reading for deadlines and leases, a wall reading for timestamps,
/// and a sleep.
///
/// The monotonic reading never goes backwards and is what leases and timeouts are measured
/// against; the wall reading may jump (and in the simulation is skewed on purpose) and is only
/// ever used for timestamps and TTL bookkeeping that mirrors the server.
pub trait Clock: Clone + Send + Sync + 'static {
    /// Time elapsed since this clock's origin. Never decreases.
    fn monotonic(&self) -> Duration;
    /// Wall-clock time, for timestamps.
    fn wall(&self) -> SystemTime;
    /// Waits for `duration` of this clock's time.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future simply stops waiting.
    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send;
}

/// The production clock: tokio's monotonic time and the operating system's wall time.
///
/// Because it uses `tokio::time`, it also follows tokio's paused test clock.
#[derive(Clone, Debug)]
pub struct SystemClock {
    origin: crate::rt::Instant,
}

impl SystemClock {
    /// A clock whose monotonic origin is now.
    #[allow(clippy::disallowed_methods)] // the one place allowed to read the OS clock
    pub fn new() -> Self {
        Self {
            origin: crate::rt::Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // the one place allowed to read the OS clock
    fn monotonic(&self) -> Duration {
        crate::rt::Instant::now().saturating_duration_since(self.origin)
    }

    #[allow(clippy::disallowed_methods)] // the one place allowed to read the OS clock
    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send {
        crate::rt::sleep(duration)
    }
}

/// A point on a [`Clock`]'s monotonic time by which an operation must end: the one place that
/// races work against a clock. Library code bounds an operation by racing it against
/// [`Clock::sleep`] (never `tokio::time`), so the simulation runs the same code on its own time.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deadline {
    /// The clock's monotonic reading at which the deadline passes.
    at: Duration,
    /// How long the operation was given.
    limit: Duration,
}

/// A [`Deadline`] passed before the work ended (the work was dropped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Elapsed;

impl Deadline {
    /// The deadline `limit` from now on `clock`.
    pub(crate) fn after<C: Clock>(clock: &C, limit: Duration) -> Self {
        Self {
            at: clock.monotonic().saturating_add(limit),
            limit,
        }
    }

    /// How long the operation was given.
    pub(crate) fn limit(&self) -> Duration {
        self.limit
    }

    /// The time left on `clock` (zero once the deadline passed).
    pub(crate) fn remaining<C: Clock>(&self, clock: &C) -> Duration {
        self.at.saturating_sub(clock.monotonic())
    }

    /// Runs `work` until it ends or the deadline passes on `clock`, whichever comes first. Work
    /// that is ready when polled wins over a deadline that passed at the same moment.
    ///
    /// # Cancel safety
    /// As cancel safe as `work`: when the deadline passes, `work` is dropped where it waits.
    pub(crate) async fn run<C: Clock, F: Future>(
        &self,
        clock: &C,
        work: F,
    ) -> Result<F::Output, Elapsed> {
        let expiry = clock.sleep(self.remaining(clock));
        tokio::select! {
            biased;
            output = work => Ok(output),
            () = expiry => Err(Elapsed),
        }
    }
}

/// A seeded, shareable random generator (ChaCha8). Every random choice the library makes — ids,
/// jitter — is drawn from one of these, so a simulation run is a pure function of its seed.
#[derive(Clone, Debug)]
pub struct SharedRng {
    inner: Arc<Mutex<ChaCha8Rng>>,
}

impl SharedRng {
    /// A generator seeded with `seed`.
    pub fn from_seed(seed: u64) -> Self {
        Self {
            inner: Arc::new(Mutex::new(ChaCha8Rng::seed_from_u64(seed))),
        }
    }

    /// A generator seeded from the operating system, for production use where reproducibility is
    /// not wanted. This is the only place that touches OS randomness.
    #[allow(clippy::disallowed_methods)]
    pub fn from_os() -> Self {
        Self {
            inner: Arc::new(Mutex::new(ChaCha8Rng::from_os_rng())),
        }
    }

    /// A new independent generator whose seed is drawn from this one (for per-node or
    /// per-component streams that must not interleave).
    pub fn fork(&self) -> SharedRng {
        SharedRng::from_seed(self.next_u64())
    }

    /// A uniformly random `u64`.
    pub fn next_u64(&self) -> u64 {
        self.lock().next_u64()
    }

    /// 16 random bytes.
    pub fn bytes16(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        self.lock().fill_bytes(&mut out);
        out
    }

    /// A random version-4 UUID drawn from this generator.
    pub fn uuid(&self) -> uuid::Uuid {
        uuid::Builder::from_random_bytes(self.bytes16()).into_uuid()
    }

    /// A duration uniformly drawn from `[low, high]`.
    pub fn duration_between(&self, low: Duration, high: Duration) -> Duration {
        if high <= low {
            return low;
        }
        let span = (high - low).as_nanos().min(u64::MAX as u128) as u64;
        low + Duration::from_nanos(self.lock().random_range(0..=span))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ChaCha8Rng> {
        // A poisoned RNG is still a valid RNG: a panic elsewhere must not stop id generation.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Converts a wall time to nanoseconds since the Unix epoch (0 for times before it).
pub fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos().min(u64::MAX as u128) as u64)
        .unwrap_or(0)
}

/// Converts nanoseconds since the Unix epoch to a wall time.
pub fn from_unix_nanos(nanos: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_gives_same_ids() {
        let a = SharedRng::from_seed(7);
        let b = SharedRng::from_seed(7);
        assert_eq!(a.uuid(), b.uuid());
        assert_eq!(a.next_u64(), b.next_u64());
        let c = SharedRng::from_seed(8);
        assert_ne!(SharedRng::from_seed(7).uuid(), c.uuid());
    }

    #[test]
    fn duration_between_stays_in_range() {
        let rng = SharedRng::from_seed(1);
        for _ in 0..1000 {
            let d = rng.duration_between(Duration::from_millis(10), Duration::from_millis(20));
            assert!(d >= Duration::from_millis(10) && d <= Duration::from_millis(20));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn work_that_ends_in_time_wins_and_work_that_does_not_is_cut_at_the_deadline() {
        let clock = SystemClock::new();
        let deadline = Deadline::after(&clock, Duration::from_secs(2));
        let quick = deadline.run(&clock, async {
            clock.sleep(Duration::from_secs(1)).await;
            7
        });
        assert_eq!(quick.await, Ok(7));
        let left = deadline.remaining(&clock);
        assert!(
            left <= Duration::from_secs(1) && left > Duration::from_millis(990),
            "{left:?}"
        );
        let slow = deadline.run(&clock, clock.sleep(Duration::from_secs(60)));
        assert_eq!(slow.await, Err(Elapsed));
        let now = clock.monotonic();
        assert!(
            now >= Duration::from_secs(2) && now < Duration::from_millis(2_010),
            "cut at the deadline, not at the end of the work: {now:?}"
        );
        assert_eq!(deadline.remaining(&clock), Duration::ZERO);
        // Work that is ready wins over a deadline that already passed.
        assert_eq!(deadline.run(&clock, async { 1 }).await, Ok(1));
        assert_eq!(
            deadline.run(&clock, std::future::pending::<()>()).await,
            Err(Elapsed)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_huge_limit_does_not_overflow() {
        let clock = SystemClock::new();
        let deadline = Deadline::after(&clock, Duration::MAX);
        assert_eq!(deadline.limit(), Duration::MAX);
        assert!(deadline.remaining(&clock) > Duration::from_secs(1 << 40));
        assert_eq!(deadline.run(&clock, async { 3 }).await, Ok(3));
    }

    #[test]
    fn unix_nanos_round_trips() {
        let t = from_unix_nanos(1_700_000_000_123_456_789);
        assert_eq!(unix_nanos(t), 1_700_000_000_123_456_789);
    }
}
