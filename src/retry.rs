//! Backoff between retries: exponential, capped, with jitter drawn from the runtime's seeded
//! generator (so a simulated run stays a function of its seed). The one retry schedule of the
//! library: ambiguous appends, snapshot races and command re-routes all wait through it.

use std::time::Duration;

use crate::clock::{Clock, SharedRng};

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
