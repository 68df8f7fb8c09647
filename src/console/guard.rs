//! The login guard: failed logins counted per account, with a lockout, and login attempts
//! rate-limited per client address.
//!
//! - [`LoginGuard::max_failures`] failed logins in a row lock the account for
//!   [`LoginGuard::lockout`]; while locked, even the right password is refused (and counted as
//!   a failure in the audit chain). A successful login resets the count.
//! - Each client address may try [`LoginGuard`]'s per-minute quota of logins, whatever the
//!   account: one address cannot walk through many accounts' passwords.
//! - The page says the same thing for a wrong password, an unknown account and a locked one:
//!   it does not tell which accounts exist. The audit event says which (`reason`).
//!
//! Counts are in memory: a restart forgets them (and ends every session too).

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed logins of one account.
#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    locked_until: Option<Instant>,
}

/// Failed-login counts and the per-address rate of login attempts.
pub struct LoginGuard {
    failures: Mutex<HashMap<String, Failures>>,
    per_address: DefaultKeyedRateLimiter<IpAddr>,
    /// Failed logins in a row that lock an account.
    pub max_failures: u32,
    /// How long a locked account stays locked.
    pub lockout: Duration,
}

impl fmt::Debug for LoginGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "LoginGuard(lock after {} for {:?})",
            self.max_failures, self.lockout
        )
    }
}

impl LoginGuard {
    /// A guard locking an account for `lockout` after `max_failures` failures in a row (at
    /// least 1), and allowing `per_minute` login attempts per client address.
    pub fn new(max_failures: u32, lockout: Duration, per_minute: NonZeroU32) -> Self {
        LoginGuard {
            failures: Mutex::new(HashMap::new()),
            per_address: RateLimiter::keyed(Quota::per_minute(per_minute)),
            max_failures: max_failures.max(1),
            lockout,
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Failures>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True if one more login attempt from `addr` is allowed now (always, without an address:
    /// a request that did not come through a socket).
    pub fn address_ok(&self, addr: Option<IpAddr>) -> bool {
        addr.is_none_or(|a| self.per_address.check_key(&a).is_ok())
    }

    /// True if `account` is locked now.
    pub fn locked(&self, account: &str) -> bool {
        self.locked_at(account, Instant::now())
    }

    fn locked_at(&self, account: &str, now: Instant) -> bool {
        self.map()
            .get(account)
            .and_then(|f| f.locked_until)
            .is_some_and(|until| now < until)
    }

    /// Counts a failed login of `account`; true if it is locked now.
    pub fn failed(&self, account: &str) -> bool {
        self.failed_at(account, Instant::now())
    }

    fn failed_at(&self, account: &str, now: Instant) -> bool {
        let mut map = self.map();
        let f = map.entry(account.to_owned()).or_insert(Failures {
            count: 0,
            locked_until: None,
        });
        if f.locked_until.is_some_and(|until| now >= until) {
            // The lockout is over: a fresh count.
            *f = Failures {
                count: 0,
                locked_until: None,
            };
        }
        f.count = f.count.saturating_add(1);
        if f.count >= self.max_failures && f.locked_until.is_none() {
            f.locked_until = Some(now + self.lockout);
        }
        f.locked_until.is_some()
    }

    /// Forgets the failures of `account` (a successful login, or an admin's password reset).
    pub fn clear(&self, account: &str) {
        self.map().remove(account);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn five_failures_lock_until_the_lockout_ends() {
        let g = LoginGuard::new(5, Duration::from_secs(900), NonZeroU32::new(100).unwrap());
        let t0 = Instant::now();
        for i in 1..5 {
            assert!(!g.failed_at("a", t0), "locked after {i}");
        }
        assert!(!g.locked_at("a", t0));
        assert!(g.failed_at("a", t0));
        assert!(g.locked_at("a", t0 + Duration::from_secs(899)));
        assert!(!g.locked_at("b", t0));
        assert!(!g.locked_at("a", t0 + Duration::from_secs(900)));
        // After the lockout, counting starts again.
        assert!(!g.failed_at("a", t0 + Duration::from_secs(901)));
        g.clear("a");
        assert!(!g.locked_at("a", t0));
    }

    #[test]
    fn attempts_are_limited_per_address() {
        let g = LoginGuard::new(5, Duration::from_secs(900), NonZeroU32::new(3).unwrap());
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(g.address_ok(Some(a)));
        }
        assert!(!g.address_ok(Some(a)));
        assert!(g.address_ok(Some(b)));
        assert!(g.address_ok(None));
    }
}
