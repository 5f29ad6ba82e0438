//! Retry delays: a pure exponential backoff with seeded jitter.
//!
//! The adapters that reconnect (containerd's event stream) or bootstrap again (an empty DHT
//! routing table) ask a [`Backoff`] how long to wait; how long is policy, so it lives here, with
//! the values speil uses ([`Backoff::containerd_reconnect`], [`Backoff::rebootstrap`]). No clock
//! is read: the caller sleeps for the delay it is given and calls [`Backoff::reset`] when the
//! thing it retried works again.
//!
//! Each delay doubles up to a maximum. The delay handed out is drawn from the upper half of the
//! current step (`[step/2, step]`), from the seed, so that nodes restarted together do not retry
//! in lockstep; the same seed gives the same delays.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// An exponential backoff: `min`, `2·min`, `4·min`, … up to `max`, each with jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
    rng: SmallRng,
}

impl Backoff {
    /// A backoff from `min` to `max` (`max` below `min` is taken as `min`), jittered from
    /// `seed`.
    pub fn new(min: Duration, max: Duration, seed: u64) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            step: min,
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    /// containerd's event stream: from 100 ms to 5 s.
    pub fn containerd_reconnect(seed: u64) -> Backoff {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(5), seed)
    }

    /// Bootstrapping again while the DHT routing table is empty: from 50 ms to 10 s.
    pub fn rebootstrap(seed: u64) -> Backoff {
        Backoff::new(Duration::from_millis(50), Duration::from_secs(10), seed)
    }

    /// The delay before the next attempt; the step after it is twice as long (up to the
    /// maximum).
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = step.saturating_mul(2).min(self.max);
        let half = step / 2;
        let spread = u64::try_from((step - half).as_nanos()).unwrap_or(u64::MAX);
        let extra = if spread == 0 {
            0
        } else {
            self.rng.random_range(0..=spread)
        };
        half + Duration::from_nanos(extra)
    }

    /// Starts over from the minimum (the retried thing worked).
    pub fn reset(&mut self) {
        self.step = self.min;
    }

    /// The smallest and largest step.
    pub fn bounds(&self) -> (Duration, Duration) {
        (self.min, self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_to_the_maximum_within_the_upper_half_of_each_step() {
        let mut b = Backoff::new(100 * MS, 1000 * MS, 7);
        let steps = [100, 200, 400, 800, 1000, 1000, 1000];
        for step in steps {
            let d = b.next_delay();
            let step = step * MS;
            assert!(
                d >= step / 2 && d <= step,
                "{d:?} not in [{:?}, {step:?}]",
                step / 2
            );
        }
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::new(100 * MS, 1000 * MS, 1);
        for _ in 0..5 {
            b.next_delay();
        }
        b.reset();
        assert!(b.next_delay() <= 100 * MS);
    }

    #[test]
    fn same_seed_same_delays_other_seed_other_delays() {
        let run = |seed| {
            let mut b = Backoff::rebootstrap(seed);
            (0..10).map(|_| b.next_delay()).collect::<Vec<_>>()
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
    }

    #[test]
    fn degenerate_bounds() {
        let mut b = Backoff::new(Duration::ZERO, Duration::ZERO, 0);
        assert_eq!(b.next_delay(), Duration::ZERO);
        let mut b = Backoff::new(10 * MS, MS, 0);
        assert_eq!(b.bounds(), (10 * MS, 10 * MS));
        let d = b.next_delay();
        assert!(d >= 5 * MS && d <= 10 * MS);
        let mut b = Backoff::new(Duration::MAX, Duration::MAX, 0);
        assert!(b.next_delay() >= Duration::MAX / 2);
    }
}
