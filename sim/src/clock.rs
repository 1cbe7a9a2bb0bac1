//! Simulated per-node clocks: the engine's virtual time plus a fixed epoch, with injectable skew
//! (the wall reading jumps) and drift (the node's clock runs fast or slow).
//!
//! Time comes from [`crate::engine::sim_elapsed`], the simulation-wide virtual time, which keeps
//! running while a host is crashed and across `bounce`, so a restarted node's clock does not
//! restart at zero. The fault injector changes skew and drift between simulation steps through a
//! [`ClockControl`]; the node reads through its [`SimClock`]. Both share one small state.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aether::clock::Clock;

/// Seconds from the Unix epoch to the fixed wall-clock origin of every simulation
/// (2025-01-01T00:00:00Z), so that timestamps never depend on the machine's clock.
pub const EPOCH_UNIX_SECS: u64 = 1_735_689_600;

/// The fixed wall-clock origin of every simulation.
pub fn epoch() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(EPOCH_UNIX_SECS)
}

/// Virtual time since the start of the simulation, read from inside a host.
///
/// # Panics
/// Outside a host (between steps); callers there pass the time explicitly.
pub fn sim_now() -> Duration {
    crate::engine::sim_elapsed()
}

#[derive(Debug)]
struct ClockState {
    /// True (simulation) time of the last rebase.
    base_true: Duration,
    /// This clock's monotonic reading at `base_true`.
    base_local: Duration,
    /// Rate of this clock relative to true time, in parts per million (1_000_000 = exact).
    rate_ppm: u64,
    /// Offset of the wall reading from `EPOCH + monotonic`, in nanoseconds (may be negative).
    skew_nanos: i64,
    /// The largest monotonic reading handed out (keeps readings non-decreasing).
    last: Duration,
    /// Earlier rate segments `(base_true, base_local, rate_ppm)`, oldest first, so that a past
    /// local reading can be mapped back to true time.
    history: Vec<(Duration, Duration, u64)>,
}

impl ClockState {
    fn local_at(&self, true_now: Duration) -> Duration {
        let elapsed = true_now.saturating_sub(self.base_true);
        let scaled = (elapsed.as_nanos() * self.rate_ppm as u128 / 1_000_000) as u64;
        self.base_local + Duration::from_nanos(scaled)
    }

    /// The true time at which this clock read `local` (the inverse of `local_at`).
    fn true_at(&self, local: Duration) -> Duration {
        let segment = std::iter::once((self.base_true, self.base_local, self.rate_ppm))
            .chain(self.history.iter().rev().copied())
            .find(|(_, base_local, _)| *base_local <= local)
            .unwrap_or((Duration::ZERO, Duration::ZERO, 1_000_000));
        let (base_true, base_local, rate) = segment;
        let elapsed = (local - base_local).as_nanos() * 1_000_000 / u128::from(rate.max(1));
        base_true + Duration::from_nanos(elapsed.min(u128::from(u64::MAX)) as u64)
    }
}

/// A node's clock in the simulation. Cheap to clone; clones share skew and drift.
#[derive(Clone, Debug)]
pub struct SimClock {
    state: Arc<Mutex<ClockState>>,
}

/// The fault injector's handle on a [`SimClock`].
#[derive(Clone, Debug)]
pub struct ClockControl {
    state: Arc<Mutex<ClockState>>,
}

impl SimClock {
    /// An exact clock (no skew, no drift) and its control handle.
    pub fn new() -> (SimClock, ClockControl) {
        let state = Arc::new(Mutex::new(ClockState {
            base_true: Duration::ZERO,
            base_local: Duration::ZERO,
            rate_ppm: 1_000_000,
            skew_nanos: 0,
            last: Duration::ZERO,
            history: Vec::new(),
        }));
        (
            SimClock {
                state: state.clone(),
            },
            ClockControl { state },
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ClockState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The monotonic reading at true time `true_now` (for use outside a host).
    pub fn monotonic_at(&self, true_now: Duration) -> Duration {
        let mut s = self.lock();
        let local = s.local_at(true_now).max(s.last);
        s.last = local;
        local
    }

    /// The true (simulation) time at which this clock's monotonic reading was `local`: turns a
    /// node's own timestamps (a lease deadline, `acted_until`) back into true time for checkers.
    /// Exact for past readings; a future reading is projected at the current rate.
    pub fn true_time_of(&self, local: Duration) -> Duration {
        self.lock().true_at(local)
    }
}

impl ClockControl {
    fn lock(&self) -> std::sync::MutexGuard<'_, ClockState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// From true time `true_now` on, the clock runs at `rate_ppm` parts per million of true time.
    pub fn set_drift(&self, true_now: Duration, rate_ppm: u64) {
        let mut s = self.lock();
        let local = s.local_at(true_now).max(s.last);
        let previous = (s.base_true, s.base_local, s.rate_ppm);
        s.history.push(previous);
        s.base_true = true_now;
        s.base_local = local;
        s.rate_ppm = rate_ppm;
    }

    /// The wall reading is offset by `skew_nanos` from now on (a step, like an NTP correction).
    pub fn set_skew(&self, skew_nanos: i64) {
        self.lock().skew_nanos = skew_nanos;
    }
}

impl Clock for SimClock {
    fn monotonic(&self) -> Duration {
        self.monotonic_at(sim_now())
    }

    fn wall(&self) -> SystemTime {
        let local = self.monotonic();
        let skew = self.lock().skew_nanos;
        let base = epoch() + local;
        if skew >= 0 {
            base + Duration::from_nanos(skew as u64)
        } else {
            base - Duration::from_nanos(skew.unsigned_abs())
        }
    }

    fn sleep(&self, duration: Duration) -> impl std::future::Future<Output = ()> + Send {
        // A clock running at rate r sees `duration` pass after duration / r of true time,
        // rounded up: rounded down, a sleep of a nanosecond on a fast clock took no time at
        // all, and a loop waiting for its clock to reach a deadline 1 ns away spun forever
        // without time passing (long-horizon seed 8).
        let rate = self.lock().rate_ppm.max(1);
        let true_nanos = (duration.as_nanos() * 1_000_000).div_ceil(rate as u128);
        aether::rt::sleep(Duration::from_nanos(true_nanos.min(u64::MAX as u128) as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_rebases_without_going_backwards() {
        let (clock, control) = SimClock::new();
        assert_eq!(
            clock.monotonic_at(Duration::from_secs(10)),
            Duration::from_secs(10)
        );
        control.set_drift(Duration::from_secs(10), 500_000);
        assert_eq!(
            clock.monotonic_at(Duration::from_secs(12)),
            Duration::from_secs(11)
        );
        control.set_drift(Duration::from_secs(12), 2_000_000);
        assert_eq!(
            clock.monotonic_at(Duration::from_secs(13)),
            Duration::from_secs(13)
        );
        // A reading taken with an earlier true time never goes backwards.
        assert_eq!(
            clock.monotonic_at(Duration::from_secs(12)),
            Duration::from_secs(13)
        );
        // Local readings map back to the true time they were taken at.
        assert_eq!(
            clock.true_time_of(Duration::from_secs(10)),
            Duration::from_secs(10)
        );
        assert_eq!(
            clock.true_time_of(Duration::from_millis(10_500)),
            Duration::from_secs(11)
        );
        assert_eq!(
            clock.true_time_of(Duration::from_secs(15)),
            Duration::from_secs(14)
        );
    }
}
