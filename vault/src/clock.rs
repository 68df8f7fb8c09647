//! The one seam for wall-clock time: every timestamp the vault writes (audit events, batch,
//! account and data-key records, key jobs) and every deadline it checks (approval windows,
//! cryptoperiods) reads a [`Clock`].
//!
//! The service holds one `Arc<dyn Clock>`, the [`SystemClock`]; tests hold a [`ManualClock`]
//! and move it ([`ManualClock::advance`]) instead of sleeping, so an expiry or a cryptoperiod
//! is tested in microseconds and never depends on how busy the machine is.
//!
//! Monotonic time (`Instant`: rate limits, timeouts, throughput) is not wall-clock time and
//! stays with `std::time::Instant`; the HSM keeps its own clock (a real one has one).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;

    /// Whole seconds since the Unix epoch.
    fn now_unix(&self) -> u64 {
        self.now_ms() / 1000
    }
}

/// The system's clock. A clock set before 1970 reads as the epoch (0), never as an error.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

/// The system clock as the shared handle components hold.
pub fn system() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

/// A clock that moves only when told to: for tests of expiries and cryptoperiods.
#[derive(Debug, Default)]
pub struct ManualClock {
    ms: AtomicU64,
}

impl ManualClock {
    /// A clock reading `ms` milliseconds since the epoch.
    pub fn at_ms(ms: u64) -> Self {
        ManualClock {
            ms: AtomicU64::new(ms),
        }
    }

    /// A clock reading what the system clock reads now (then moving only when told to).
    pub fn starting_now() -> Self {
        Self::at_ms(SystemClock.now_ms())
    }

    /// Moves the clock forward by `by` (saturating).
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        let _ = self
            .ms
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |ms| {
                Some(ms.saturating_add(by))
            });
    }

    /// Sets the clock to `ms` milliseconds since the epoch (it may go back: clocks do).
    pub fn set_ms(&self, ms: u64) {
        self.ms.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.ms.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let c = ManualClock::at_ms(1_000_000);
        assert_eq!((c.now_ms(), c.now_unix()), (1_000_000, 1_000));
        c.advance(Duration::from_secs(86_400));
        assert_eq!(c.now_ms(), 1_000_000 + 86_400_000);
        c.advance(Duration::MAX);
        assert_eq!(c.now_ms(), u64::MAX);
        c.set_ms(5);
        assert_eq!(c.now_ms(), 5);
    }

    #[test]
    fn the_system_clock_is_after_2020() {
        assert!(SystemClock.now_ms() > 1_577_836_800_000);
        let (a, b) = (system().now_unix(), SystemClock.now_ms() / 1000);
        assert!(b >= a && b - a <= 1, "{a} {b}");
    }
}
