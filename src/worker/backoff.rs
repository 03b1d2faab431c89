//! The wait before reconnecting: exponential, capped, with jitter, so a
//! fleet of workers that lost the same server does not come back in step.

use std::time::Duration;

/// Reconnect delays: the n-th wait in a row is drawn uniformly from
/// `[base / 2, base]`, where `base = min(initial * 2^(n-1), max)`.
///
/// Half the base is kept as a floor so a worker never hammers a server
/// that refuses it; the other half is random so workers spread out.
#[derive(Debug)]
pub(super) struct Backoff {
    initial: Duration,
    max: Duration,
    /// Failures since the last good connection.
    failures: u32,
    random: fastrand::Rng,
}

impl Backoff {
    pub(super) fn new(initial: Duration, max: Duration) -> Self {
        Self::with_rng(initial, max, fastrand::Rng::new())
    }

    fn with_rng(initial: Duration, max: Duration, random: fastrand::Rng) -> Self {
        Self {
            initial,
            max: max.max(initial),
            failures: 0,
            random,
        }
    }

    /// The wait before the next attempt, and one more failure counted.
    pub(super) fn next_delay(&mut self) -> Duration {
        // 2^20 times any sane initial delay is past any sane cap, and a
        // bounded exponent keeps the multiplication from overflowing.
        let exponent = self.failures.min(20);
        self.failures = self.failures.saturating_add(1);
        let base = self
            .initial
            .checked_mul(1 << exponent)
            .map_or(self.max, |delay| delay.min(self.max));
        let half = base / 2;
        let spread = u64::try_from((base - half).as_micros()).unwrap_or(u64::MAX);
        half + Duration::from_micros(self.random.u64(0..=spread))
    }

    /// A connection worked: the next failure waits `initial` again.
    pub(super) fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INITIAL: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(3);

    #[test]
    fn delays_double_up_to_the_cap_within_the_jitter_band() {
        let mut backoff = Backoff::with_rng(INITIAL, MAX, fastrand::Rng::with_seed(7));
        let mut base = INITIAL;
        for _ in 0..12 {
            let delay = backoff.next_delay();
            assert!(delay >= base / 2 && delay <= base, "{delay:?} for {base:?}");
            base = (base * 2).min(MAX);
        }
        assert_eq!(base, MAX);
    }

    #[test]
    fn jitter_spreads_the_delays() {
        let mut delays = std::collections::BTreeSet::new();
        for seed in 0..20 {
            let mut backoff = Backoff::with_rng(INITIAL, MAX, fastrand::Rng::with_seed(seed));
            delays.insert(backoff.next_delay());
        }
        assert!(delays.len() > 10, "{delays:?}");
    }

    #[test]
    fn reset_starts_again_from_the_initial_delay() {
        let mut backoff = Backoff::with_rng(INITIAL, MAX, fastrand::Rng::with_seed(1));
        for _ in 0..10 {
            backoff.next_delay();
        }
        backoff.reset();
        assert!(backoff.next_delay() <= INITIAL);
    }

    #[test]
    fn many_failures_neither_overflow_nor_pass_the_cap() {
        let mut backoff = Backoff::with_rng(INITIAL, MAX, fastrand::Rng::with_seed(3));
        for _ in 0..1000 {
            assert!(backoff.next_delay() <= MAX);
        }
    }
}
