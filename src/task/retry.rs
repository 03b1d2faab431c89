//! How the failed runs of a task are retried: the policy and its back-off.

use std::time::Duration;

/// The most runs a policy may allow.
pub const MAX_ATTEMPTS_LIMIT: u32 = 100;

/// The longest wait a policy may ask for: a year. Longer is a calendar's
/// job, and timers stay within what the runtime's timer wheel holds.
pub const MAX_BACKOFF_LIMIT: Duration = Duration::from_secs(366 * 24 * 3600);

/// A rule of the contract a policy breaks; `field` names the field.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{reason}")]
pub struct InvalidPolicy {
    /// `max_attempts`, `initial_backoff`, `max_backoff` or
    /// `backoff_multiplier`.
    pub field: &'static str,
    pub reason: String,
}

/// How failed runs are retried, with every field effective (the request's,
/// or the server's default for the kind where the request left it unset).
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// How many runs may fail before the task is `Failed`, the first
    /// included: 1 means no retry.
    pub max_attempts: u32,
    /// The wait after the first failed run.
    pub initial_backoff: Duration,
    /// The longest wait between runs.
    pub max_backoff: Duration,
    /// How much longer each wait is than the one before (at least 1).
    pub backoff_multiplier: f64,
}

impl Default for RetryPolicy {
    /// The contract's default: one run, no retry; waits of 1 s doubling up
    /// to 5 minutes for a policy that only raises `max_attempts`.
    fn default() -> Self {
        Self {
            max_attempts: 1,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            backoff_multiplier: 2.0,
        }
    }
}

impl RetryPolicy {
    /// Checks the contract's rules: 1 to 100 attempts, waits of at most a
    /// year with the longest at least the first, a finite multiplier of at
    /// least 1.
    pub fn check(&self) -> Result<(), InvalidPolicy> {
        let invalid = |field, reason: String| Err(InvalidPolicy { field, reason });
        if !(1..=MAX_ATTEMPTS_LIMIT).contains(&self.max_attempts) {
            return invalid(
                "max_attempts",
                format!(
                    "must be between 1 and {MAX_ATTEMPTS_LIMIT}, got {}",
                    self.max_attempts
                ),
            );
        }
        for (field, wait) in [
            ("initial_backoff", self.initial_backoff),
            ("max_backoff", self.max_backoff),
        ] {
            if wait > MAX_BACKOFF_LIMIT {
                return invalid(
                    field,
                    format!(
                        "must be at most a year, got {}",
                        humantime::format_duration(wait)
                    ),
                );
            }
        }
        if self.max_backoff < self.initial_backoff {
            return invalid(
                "max_backoff",
                format!(
                    "must be at least initial_backoff ({}), got {}",
                    humantime::format_duration(self.initial_backoff),
                    humantime::format_duration(self.max_backoff)
                ),
            );
        }
        if !(self.backoff_multiplier.is_finite() && self.backoff_multiplier >= 1.0) {
            return invalid(
                "backoff_multiplier",
                format!(
                    "must be a finite number of at least 1, got {}",
                    self.backoff_multiplier
                ),
            );
        }
        Ok(())
    }

    /// Whether a task may run again after its `failed_runs`-th failed run.
    pub fn allows_another_run(&self, failed_runs: u32) -> bool {
        failed_runs < self.max_attempts
    }

    /// The wait before the run after the `failed_runs`-th failed run (1 for
    /// the first): `min(initial × multiplier^(failed_runs − 1), max)`, scaled
    /// by a factor between 0.8 and 1.0 taken from `jitter` (0 to 1), which
    /// spreads the retries of many tasks that failed together.
    pub fn backoff(&self, failed_runs: u32, jitter: f64) -> Duration {
        let exponent = failed_runs.saturating_sub(1).min(i32::MAX as u32) as i32;
        let full = self.initial_backoff.as_secs_f64() * self.backoff_multiplier.powi(exponent);
        let capped = if full.is_finite() {
            full.min(self.max_backoff.as_secs_f64())
        } else {
            self.max_backoff.as_secs_f64()
        };
        let factor = 1.0 - 0.2 * jitter.clamp(0.0, 1.0);
        // Whole microseconds, as the stores keep times; `as` saturates.
        Duration::from_micros((capped * factor * 1e6).round() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(initial: u64, max: u64, multiplier: f64) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_secs(initial),
            max_backoff: Duration::from_secs(max),
            backoff_multiplier: multiplier,
        }
    }

    #[test]
    fn the_wait_grows_by_the_multiplier_up_to_the_cap_with_jitter_between_80_and_100_percent() {
        let policy = policy(1, 10, 2.0);
        let seconds = |failed: u32, jitter: f64| policy.backoff(failed, jitter).as_secs_f64();
        assert_eq!(seconds(1, 0.0), 1.0);
        assert_eq!(seconds(2, 0.0), 2.0);
        assert_eq!(seconds(3, 0.0), 4.0);
        assert_eq!(seconds(4, 0.0), 8.0);
        assert_eq!(seconds(5, 0.0), 10.0, "capped at max_backoff");
        assert_eq!(seconds(1, 1.0), 0.8);
        assert_eq!(seconds(5, 1.0), 8.0);
        assert!((seconds(3, 0.5) - 3.6).abs() < 1e-9);
    }

    #[test]
    fn huge_exponents_and_multipliers_stay_at_the_cap() {
        let policy = policy(1, 300, 1e300);
        assert_eq!(policy.backoff(100, 0.0), Duration::from_secs(300));
        assert_eq!(policy.backoff(u32::MAX, 0.0), Duration::from_secs(300));
        let flat = self::policy(3, 300, 1.0);
        assert_eq!(flat.backoff(50, 0.0), Duration::from_secs(3));
    }

    #[test]
    fn max_attempts_counts_the_first_run() {
        let once = RetryPolicy::default();
        assert!(!once.allows_another_run(1));
        let thrice = RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::default()
        };
        assert!(thrice.allows_another_run(1));
        assert!(thrice.allows_another_run(2));
        assert!(!thrice.allows_another_run(3));
    }
}
