//! When to try again, and how fast a channel may send.
//!
//! - [`RetryPolicy`]: exponential backoff with full jitter (AWS's "full jitter": a delay drawn
//!   uniformly from `0 ..= min(cap, base · 2^attempt)`), capped, and a maximum number of
//!   attempts after which a job is dead. [`RetryPolicy::delay`] is a pure function of the attempt
//!   and a uniform draw, so its bounds are tested without a clock or a random source.
//! - [`Throttled`]: a courier that waits for a per-channel rate limiter (governor's GCRA)
//!   before each send, so a burst of jobs cannot flood a relay or run up an SMS bill.

use super::{Courier, Outgoing, SendError, Sent};
use crate::plan::Channel;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

/// Exponential backoff with full jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay ceiling of the first retry (attempt 1).
    pub base: Duration,
    /// No delay exceeds this.
    pub cap: Duration,
    /// Attempts in all (the first send included); after the last, the job is dead.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    /// 2 s base, 15 min cap, 12 attempts (about 1 h 40 min of ceilings in all).
    fn default() -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_secs(2),
            cap: Duration::from_secs(15 * 60),
            max_attempts: 12,
        }
    }
}

impl RetryPolicy {
    /// The ceiling of the delay before attempt `attempt + 1`, after `attempt` failed attempts
    /// (`attempt ≥ 1`): `min(cap, base · 2^(attempt-1))`, without overflow.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let shift = attempt.saturating_sub(1).min(63);
        let factor = 1u64 << shift;
        let base_ms = u64::try_from(self.base.as_millis()).unwrap_or(u64::MAX);
        let cap_ms = u64::try_from(self.cap.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(base_ms.saturating_mul(factor).min(cap_ms))
    }

    /// The delay before the next attempt after `attempt` failed ones, for a uniform draw
    /// `unit` in `[0, 1)` (values outside are clamped): `unit · ceiling(attempt)`.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let unit = if unit.is_nan() {
            0.0
        } else {
            unit.clamp(0.0, 1.0)
        };
        self.ceiling(attempt).mul_f64(unit)
    }

    /// [`RetryPolicy::delay`] with a fresh draw (fastrand: jitter needs no secrecy).
    pub fn next_delay(&self, attempt: u32) -> Duration {
        self.delay(attempt, fastrand::f64())
    }

    /// Whether a job that failed with `error` on attempt `attempt` (1-based) is tried again.
    pub fn should_retry(&self, attempt: u32, error: &SendError) -> bool {
        error.is_temporary() && attempt < self.max_attempts
    }
}

/// A courier behind a rate limiter: each send waits for a cell of the channel's quota.
pub struct Throttled {
    inner: Arc<dyn Courier>,
    limiter: DefaultDirectRateLimiter,
    per_second: NonZeroU32,
}

impl Throttled {
    /// Wraps `inner`: at most `per_second` sends a second, bursts of up to `burst`.
    pub fn new(inner: Arc<dyn Courier>, per_second: NonZeroU32, burst: NonZeroU32) -> Throttled {
        let quota = Quota::per_second(per_second).allow_burst(burst);
        Throttled {
            inner,
            limiter: RateLimiter::direct(quota),
            per_second,
        }
    }
}

impl fmt::Debug for Throttled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Throttled")
            .field("inner", &self.inner)
            .field("per_second", &self.per_second)
            .finish()
    }
}

#[async_trait::async_trait]
impl Courier for Throttled {
    fn channel(&self) -> Channel {
        self.inner.channel()
    }

    async fn send(&self, message: &Outgoing) -> Result<Sent, SendError> {
        self.limiter.until_ready().await;
        self.inner.send(message).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_then_caps() {
        let p = RetryPolicy {
            base: Duration::from_secs(2),
            cap: Duration::from_secs(60),
            max_attempts: 5,
        };
        assert_eq!(p.ceiling(0), Duration::from_secs(2));
        assert_eq!(p.ceiling(1), Duration::from_secs(2));
        assert_eq!(p.ceiling(2), Duration::from_secs(4));
        assert_eq!(p.ceiling(5), Duration::from_secs(32));
        assert_eq!(p.ceiling(6), Duration::from_secs(60));
        assert_eq!(p.ceiling(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn delay_stays_within_bounds() {
        let p = RetryPolicy::default();
        for attempt in 0..200 {
            let ceiling = p.ceiling(attempt);
            assert!(ceiling <= p.cap);
            for unit in [0.0, 1e-9, 0.25, 0.5, 0.999_999, 1.0, 7.0, -3.0, f64::NAN] {
                let d = p.delay(attempt, unit);
                assert!(
                    d <= ceiling,
                    "attempt {attempt} unit {unit}: {d:?} > {ceiling:?}"
                );
            }
            assert_eq!(p.delay(attempt, 0.0), Duration::ZERO);
            for _ in 0..50 {
                assert!(p.next_delay(attempt) <= ceiling);
            }
        }
    }

    #[test]
    fn full_jitter_spreads_delays() {
        let p = RetryPolicy::default();
        let draws: Vec<Duration> = (0..1000).map(|_| p.next_delay(4)).collect();
        let ceiling = p.ceiling(4);
        let low = draws.iter().filter(|d| **d < ceiling / 4).count();
        let high = draws.iter().filter(|d| **d > ceiling * 3 / 4).count();
        // Uniform draws: about 250 each; far from 0 with overwhelming probability.
        assert!(low > 100 && high > 100, "low {low} high {high}");
    }

    #[test]
    fn retries_only_temporary_failures_within_attempts() {
        let p = RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::default()
        };
        let temp = SendError::temporary("smtp 421");
        let perm = SendError::permanent("smtp 550");
        assert!(p.should_retry(1, &temp));
        assert!(p.should_retry(2, &temp));
        assert!(!p.should_retry(3, &temp));
        assert!(!p.should_retry(1, &perm));
    }
}
