//! Reconnect backoff as terminal firmware does it: exponential with full
//! jitter. Attempt `n` (from 0) waits a uniformly random time between zero
//! and `min(max, initial · 2^n)`, so that a fleet dropped at once does not
//! come back in lock-step waves.

use std::time::Duration;

/// The shape of the backoff: first ceiling and cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }
}

impl BackoffPolicy {
    /// The longest wait before attempt `attempt` (counted from 0).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// One terminal's backoff state: how many attempts failed in a row.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: BackoffPolicy,
    attempt: u32,
    random: SplitMix64,
}

impl Backoff {
    /// `seed` makes each terminal's jitter its own (e.g. its index).
    pub fn new(policy: BackoffPolicy, seed: u64) -> Self {
        Self {
            policy,
            attempt: 0,
            random: SplitMix64(seed ^ crate::engine::unix_micros()),
        }
    }

    /// The wait before the next attempt; each call counts one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.policy.ceiling(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        let ceiling_micros = ceiling.as_micros() as u64;
        Duration::from_micros(self.random.below(ceiling_micros.saturating_add(1)))
    }

    /// A connection got through: the next failure starts from the first ceiling.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A small, fast, good-enough generator for jitter (not for secrets).
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound` (0 when `bound` is 0).
    fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            return 0;
        }
        ((u128::from(self.next()) * u128::from(bound)) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_from_initial_up_to_the_cap() {
        let policy = BackoffPolicy::default();
        let ceilings: Vec<u64> = (0..9)
            .map(|n| policy.ceiling(n).as_millis() as u64)
            .collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(
            policy.ceiling(u32::MAX),
            Duration::from_secs(5),
            "no overflow"
        );
    }

    #[test]
    fn every_delay_lies_within_its_ceiling_and_jitter_spreads_them() {
        let policy = BackoffPolicy {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(640),
        };
        let mut delays_at_cap = Vec::new();
        for seed in 0..200 {
            let mut backoff = Backoff::new(policy, seed);
            for attempt in 0..12 {
                let delay = backoff.next_delay();
                assert!(delay <= policy.ceiling(attempt), "{delay:?} at {attempt}");
                if attempt == 11 {
                    delays_at_cap.push(delay);
                }
            }
        }
        // Full jitter: at the cap, delays cover the whole range, not one value.
        let (min, max) = (
            delays_at_cap.iter().min().copied().unwrap_or_default(),
            delays_at_cap.iter().max().copied().unwrap_or_default(),
        );
        assert!(min < Duration::from_millis(100), "{min:?}");
        assert!(max > Duration::from_millis(540), "{max:?}");
    }

    #[test]
    fn reset_starts_again_from_the_first_ceiling() {
        let policy = BackoffPolicy::default();
        let mut backoff = Backoff::new(policy, 7);
        for _ in 0..10 {
            backoff.next_delay();
        }
        backoff.reset();
        for _ in 0..50 {
            let mut fresh = backoff.clone();
            assert!(fresh.next_delay() <= Duration::from_millis(100));
            backoff.random.next();
        }
    }
}
