//! Backoff between retries: exponential, capped, with jitter drawn from the runtime's seeded
//! generator (so a simulated run stays a function of its seed). The one retry schedule of the
//! library: ambiguous appends, snapshot races and command re-routes all wait through it.

use std::time::Duration;

use crate::clock::{Clock, Deadline, Elapsed, SharedRng};

/// An exponential backoff: the first wait is `base` plus up to half of it, and each later wait
/// doubles, up to `max` (plus its jitter).
#[derive(Clone, Debug)]
pub struct Backoff {
    delay: Duration,
    max: Duration,
}

impl Backoff {
    /// A backoff starting at `base` and doubling up to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            delay: base.min(max),
            max,
        }
    }

    /// The next wait: the current delay plus a jitter of up to half of it drawn from `rng`;
    /// the delay then doubles (capped). Pure apart from `rng`.
    pub fn next_delay(&mut self, rng: &SharedRng) -> Duration {
        let jitter = rng.duration_between(Duration::ZERO, self.delay / 2);
        let wait = self.delay + jitter;
        self.delay = (self.delay * 2).min(self.max);
        wait
    }

    /// Waits the next delay on `clock`.
    ///
    /// # Cancel safety
    /// Cancel safe: the schedule has advanced either way.
    pub async fn wait<C: Clock>(&mut self, clock: &C, rng: &SharedRng) {
        let delay = self.next_delay(rng);
        clock.sleep(delay).await;
    }

    /// Waits the next delay on `clock`, unless it would end at or after `deadline`: then returns
    /// [`Elapsed`] at once, without waiting, because no attempt after it could start in time.
    /// Draws the delay exactly as [`Backoff::wait`] does, so a schedule that stays inside its
    /// deadline is the same either way.
    ///
    /// # Cancel safety
    /// Cancel safe: the schedule has advanced either way.
    pub(crate) async fn wait_within<C: Clock>(
        &mut self,
        clock: &C,
        rng: &SharedRng,
        deadline: &Deadline,
    ) -> Result<(), Elapsed> {
        let delay = self.next_delay(rng);
        if delay >= deadline.remaining(clock) {
            return Err(Elapsed);
        }
        clock.sleep(delay).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_with_bounded_jitter() {
        let rng = SharedRng::from_seed(3);
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(80));
        let bases = [10, 20, 40, 80, 80, 80];
        for base in bases {
            let base = Duration::from_millis(base);
            let wait = backoff.next_delay(&rng);
            assert!(
                wait >= base && wait <= base + base / 2,
                "{wait:?} for {base:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_that_would_end_past_the_deadline_is_not_begun() {
        let clock = crate::clock::SystemClock::new();
        let rng = SharedRng::from_seed(3);
        let deadline = Deadline::after(&clock, Duration::from_millis(80));
        let mut backoff = Backoff::new(Duration::from_millis(30), Duration::from_secs(1));
        // 30-45 ms, then 60-90 ms: the second would end past 80 ms.
        assert_eq!(backoff.wait_within(&clock, &rng, &deadline).await, Ok(()));
        let waited = clock.monotonic();
        assert!(waited >= Duration::from_millis(30), "{waited:?}");
        assert_eq!(
            backoff.wait_within(&clock, &rng, &deadline).await,
            Err(Elapsed)
        );
        assert_eq!(clock.monotonic(), waited, "refused without waiting");
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let schedule = |seed| {
            let rng = SharedRng::from_seed(seed);
            let mut b = Backoff::new(Duration::from_millis(5), Duration::from_secs(1));
            (0..8).map(|_| b.next_delay(&rng)).collect::<Vec<_>>()
        };
        assert_eq!(schedule(9), schedule(9));
        assert_ne!(schedule(9), schedule(10));
    }
}
