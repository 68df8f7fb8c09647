//! Console sessions: server-side, in memory, keyed by the SHA-256 of a 256-bit random id.
//!
//! ```text
//! cookie  plico_session = <64 hex digits: 256 random bits>        (HttpOnly, SameSite=Strict)
//! kept    SHA-256(id) → Session { account, role, csrf, created, last_seen }
//! ```
//!
//! - The id itself is never kept: a dump of the process's sessions gives nobody a cookie. A
//!   lookup hashes the presented id; the map is keyed by that hash, so nothing is compared by
//!   secret byte by byte.
//! - A session ends after [`Sessions::idle`] without a request, after [`Sessions::absolute`]
//!   whatever happens, at logout, and when its account's password changes (the other sessions
//!   of that account end). A restart ends every session: people log in again.
//! - Each session has its own CSRF token (256 bits), carried by every form.
//! - A session of an account with a second factor starts [`Stage::AwaitingCode`]: the
//!   password was right, the TOTP code is still to come; the console lets it reach the code
//!   page and logout only, and promotes it with [`Sessions::promote`].
//!
//! - Time is the state's [`vault::Clock`] (milliseconds of wall-clock time), the seam every
//!   expiry of plico reads: a test moves a [`vault::ManualClock`] past the idle limit instead
//!   of sleeping. A clock set back never ends a session early (the ages saturate at 0).
//!
//! What it does not do: check passwords or roles (the console's login does), or persist.

use aws_lc_rs::digest::{digest, SHA256};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use secrecy::{ExposeSecret, SecretString};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vault::{Clock, Role};
use zeroize::Zeroizing;

/// Random bytes of a session id and of a CSRF token.
const ID_BYTES: usize = 32;

/// How far a session's login has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The password was right; the second factor's code is still to be given.
    AwaitingCode,
    /// Logged in with every factor the account has.
    Full,
}

/// One logged-in person's session.
#[derive(Clone)]
pub struct Session {
    /// The account id.
    pub account: String,
    /// Its role at login.
    pub role: Role,
    /// How far its login has come.
    pub stage: Stage,
    /// The CSRF token every form of this session carries.
    pub csrf: String,
    /// When it started, in ms of the clock.
    created_ms: u64,
    /// When it was last seen, in ms of the clock.
    last_seen_ms: u64,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("account", &self.account)
            .field("role", &self.role)
            .field("stage", &self.stage)
            .field("csrf", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl Session {
    /// True if `presented` is this session's CSRF token (compared in constant time).
    pub fn csrf_ok(&self, presented: &str) -> bool {
        aws_lc_rs::constant_time::verify_slices_are_equal(
            presented.as_bytes(),
            self.csrf.as_bytes(),
        )
        .is_ok()
    }
}

/// The sessions of this process.
pub struct Sessions {
    map: Mutex<HashMap<[u8; 32], Session>>,
    /// A session ends after this long without a request.
    pub idle: Duration,
    /// A session ends this long after login, whatever happens.
    pub absolute: Duration,
    rng: SystemRandom,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for Sessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Sessions(idle {:?}, absolute {:?})",
            self.idle, self.absolute
        )
    }
}

fn key_of(id: &str) -> [u8; 32] {
    let mut key = [0u8; 32];
    key.copy_from_slice(digest(&SHA256, id.as_bytes()).as_ref());
    key
}

/// Random bytes as hex, or `None` if the generator failed.
pub(crate) fn random_hex(rng: &SystemRandom) -> Option<Zeroizing<String>> {
    let mut buf = Zeroizing::new([0u8; ID_BYTES]);
    rng.fill(&mut *buf).ok()?;
    Some(Zeroizing::new(hex::encode(*buf)))
}

impl Sessions {
    /// No sessions yet, with these timeouts, timed by `clock`.
    pub fn new(idle: Duration, absolute: Duration, clock: Arc<dyn Clock>) -> Self {
        Sessions {
            map: Mutex::new(HashMap::new()),
            idle,
            absolute,
            rng: SystemRandom::new(),
            clock,
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        // A panic while holding the lock leaves a whole map: no half-written session.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a session for `account`; returns its id (for the cookie, never kept) and the
    /// session. `None` if the random generator failed.
    pub fn start(&self, account: &str, role: Role) -> Option<(SecretString, Session)> {
        self.start_at(account, role, Stage::Full)
    }

    /// [`Sessions::start`] at `stage`: [`Stage::AwaitingCode`] after the password of an
    /// account with a second factor.
    pub fn start_stage(
        &self,
        account: &str,
        role: Role,
        stage: Stage,
    ) -> Option<(SecretString, Session)> {
        self.start_at(account, role, stage)
    }

    /// Marks the session of this id fully logged in (its code was right). False if it has
    /// ended meanwhile.
    pub fn promote(&self, id: &SecretString) -> bool {
        match self.map().get_mut(&key_of(id.expose_secret())) {
            Some(s) => {
                s.stage = Stage::Full;
                true
            }
            None => false,
        }
    }

    fn start_at(&self, account: &str, role: Role, stage: Stage) -> Option<(SecretString, Session)> {
        let now = self.clock.now_ms();
        let id = random_hex(&self.rng)?;
        let csrf = random_hex(&self.rng)?;
        let session = Session {
            account: account.to_owned(),
            role,
            stage,
            csrf: csrf.to_string(),
            created_ms: now,
            last_seen_ms: now,
        };
        let mut map = self.map();
        // Expired sessions go when new ones come: the map stays as small as the people working.
        let (idle, absolute) = (self.idle, self.absolute);
        map.retain(|_, s| !expired(s, now, idle, absolute));
        map.insert(key_of(&id), session.clone());
        Some((SecretString::from(id.to_string()), session))
    }

    /// The live session of this id, seen now (its idle time starts again). An expired one is
    /// ended and `None`.
    pub fn get(&self, id: &SecretString) -> Option<Session> {
        let now = self.clock.now_ms();
        let key = key_of(id.expose_secret());
        let mut map = self.map();
        let s = map.get_mut(&key)?;
        if expired(s, now, self.idle, self.absolute) {
            map.remove(&key);
            return None;
        }
        s.last_seen_ms = s.last_seen_ms.max(now);
        Some(s.clone())
    }

    /// Ends the session of this id (logout). True if there was one.
    pub fn end(&self, id: &SecretString) -> bool {
        self.map().remove(&key_of(id.expose_secret())).is_some()
    }

    /// Ends every session of `account` but the one of `keep` (after a password change, or when
    /// the account is disabled).
    pub fn end_others(&self, account: &str, keep: Option<&SecretString>) {
        let keep = keep.map(|k| key_of(k.expose_secret()));
        self.map()
            .retain(|k, s| s.account != account || Some(*k) == keep);
    }

    /// Ends every session of `account` at `stage` (those awaiting a code, when the second
    /// factor they wait for is removed).
    pub fn end_stage(&self, account: &str, stage: Stage) {
        self.map()
            .retain(|_, s| s.account != account || s.stage != stage);
    }

    /// Sessions alive now.
    pub fn count(&self) -> usize {
        let now = self.clock.now_ms();
        self.map()
            .values()
            .filter(|s| !expired(s, now, self.idle, self.absolute))
            .count()
    }
}

fn expired(s: &Session, now_ms: u64, idle: Duration, absolute: Duration) -> bool {
    let age = |since: u64| Duration::from_millis(now_ms.saturating_sub(since));
    age(s.last_seen_ms) >= idle || age(s.created_ms) >= absolute
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(15 * 60);
    const ABSOLUTE: Duration = Duration::from_secs(8 * 3600);

    /// Sessions timed by a clock the test moves.
    fn sessions() -> (Sessions, Arc<vault::ManualClock>) {
        let clock = Arc::new(vault::ManualClock::at_ms(1_700_000_000_000));
        (Sessions::new(IDLE, ABSOLUTE, clock.clone()), clock)
    }

    #[test]
    fn ids_are_random_and_only_their_hash_is_kept() {
        let s = sessions().0;
        let (a, sa) = s.start("acc1", Role::Operator).unwrap();
        let (b, _) = s.start("acc1", Role::Operator).unwrap();
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert_eq!(a.expose_secret().len(), 64);
        assert_eq!(s.get(&a).unwrap().account, "acc1");
        let keys: Vec<String> = s.map().keys().map(hex::encode).collect();
        assert!(!keys.iter().any(|k| k == a.expose_secret()));
        assert!(sa.csrf_ok(&sa.csrf));
        assert!(!sa.csrf_ok("x"));
        assert!(s.get(&SecretString::from("0".repeat(64))).is_none());
        assert!(!format!("{sa:?}").contains(&sa.csrf));
    }

    #[test]
    fn idle_and_absolute_timeouts() {
        let (s, clock) = sessions();
        let (id, _) = s.start("a", Role::Operator).unwrap();
        // Seen within the idle time, again and again: alive until the absolute limit.
        let step = IDLE - Duration::from_secs(1);
        let mut elapsed = Duration::ZERO;
        while elapsed + step < ABSOLUTE {
            clock.advance(step);
            elapsed += step;
            assert!(s.get(&id).is_some(), "{elapsed:?}");
        }
        clock.advance(ABSOLUTE - elapsed);
        assert!(s.get(&id).is_none());
        // Idle too long: gone, and stays gone (even if the clock is set back).
        let (id, _) = s.start("b", Role::Operator).unwrap();
        clock.advance(IDLE - Duration::from_millis(1));
        assert!(s.get(&id).is_some(), "just inside the idle time");
        clock.advance(IDLE);
        assert!(s.get(&id).is_none());
        clock.set_ms(1_700_000_000_000);
        assert!(s.get(&id).is_none());
        assert_eq!(s.count(), 0);
    }

    #[test]
    fn a_clock_set_back_never_ends_a_session_early() {
        let (s, clock) = sessions();
        let (id, _) = s.start("a", Role::Operator).unwrap();
        clock.set_ms(1_600_000_000_000);
        assert!(s.get(&id).is_some());
        clock.set_ms(1_700_000_000_000);
        clock.advance(IDLE - Duration::from_secs(1));
        assert!(s.get(&id).is_some());
    }

    #[test]
    fn logout_and_ending_an_accounts_other_sessions() {
        let s = sessions().0;
        let (a, _) = s.start("acc", Role::Support).unwrap();
        let (b, _) = s.start("acc", Role::Support).unwrap();
        let (c, _) = s.start("other", Role::Support).unwrap();
        s.end_others("acc", Some(&a));
        assert!(s.get(&a).is_some());
        assert!(s.get(&b).is_none());
        assert!(s.get(&c).is_some());
        assert!(s.end(&a));
        assert!(!s.end(&a));
        assert!(!s.promote(&a));
        let (d, sd) = s
            .start_stage("acc", Role::Support, Stage::AwaitingCode)
            .unwrap();
        assert_eq!(sd.stage, Stage::AwaitingCode);
        assert!(s.promote(&d));
        assert_eq!(s.get(&d).unwrap().stage, Stage::Full);
        assert!(s.get(&a).is_none());
    }
}
