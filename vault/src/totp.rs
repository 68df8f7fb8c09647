//! The console's second factor: TOTP (RFC 6238) with HMAC-SHA-1, 6 digits, 30-second steps —
//! what every authenticator app speaks — and its secret stored encrypted in the account record.
//!
//! ```text
//! code     = HOTP(secret, floor(unix / 30)) mod 10^6         (RFC 4226 dynamic truncation)
//! accepted : steps now-1, now, now+1, and only a step after the last one accepted (no replay)
//! stored   = TotpRecord { sealed: hex(nonce 12 | AES-256-GCM(secret) | tag 16),
//!                         enrolled_ms, last_step }
//! key      = HKDF-Expand-SHA256(PRK = audit key, info = "plico-account-totp v1", 32)
//! AAD      = "plico-account-totp v1" 0x00 <account id>
//! ```
//!
//! - The secret (160 random bits, RFC 4226's recommended length) is shown once at enrolment,
//!   as base32 and as an `otpauth://` URI, and kept only sealed: a copy of the store gives
//!   nobody a working second factor without the HSM.
//! - No new key purpose (those are a settled persisted format): the sealing key is derived
//!   from the audit key with HKDF-Expand and its own label, so it can never equal a key used
//!   for anything else (security rule 7: the purpose is bound into the KDF label). The audit
//!   key is single and never rotated, and it is present exactly when the HSM is unsealed —
//!   when the console works at all.
//! - Nonces are random (96 bits): a secret is sealed once per enrolment, so this key seals a
//!   handful of records in its life, far below the 2^32 bound for random nonces.
//! - The AAD binds the record to its account: a sealed secret copied to another account's
//!   record does not open.
//! - The clock is the vault's [`crate::Clock`] (tests move it); HMAC-SHA-1 is aws-lc-rs's
//!   `HMAC_SHA1_FOR_LEGACY_USE_ONLY` (the same API as ring's; SHA-1 is sound inside HMAC,
//!   and it is what the apps compute).
//!
//! What it does not do: decide who must give a code (the console does), count failures (the
//! console's login guard does).

use crate::error::{Error, Result};
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use std::fmt;
use zeroize::Zeroizing;

/// Bytes of a secret: 160 bits.
pub const SECRET_BYTES: usize = 20;
/// Seconds of one step.
pub const STEP_SECS: u64 = 30;
/// Digits of a code.
pub const DIGITS: u32 = 6;
/// The HKDF label of the sealing key, also the start of the AAD.
pub(crate) const LABEL: &[u8] = b"plico-account-totp v1";
/// RFC 4648 base32 alphabet.
const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// A TOTP secret in clear: zeroized on drop, redacted in `Debug`, never `Display` or
/// `Serialize`.
#[derive(Clone)]
pub struct TotpSecret(Zeroizing<[u8; SECRET_BYTES]>);

impl fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TotpSecret(<redacted>)")
    }
}

impl TotpSecret {
    /// A fresh random secret.
    ///
    /// # Errors
    /// [`Error::Provider`] if the random generator fails.
    pub fn generate() -> Result<Self> {
        let mut bytes = Zeroizing::new([0u8; SECRET_BYTES]);
        SystemRandom::new()
            .fill(&mut *bytes)
            .map_err(|_| Error::Provider("random generator"))?;
        Ok(TotpSecret(bytes))
    }

    /// The secret as base32 (RFC 4648, no padding: 32 characters), as apps take it typed in.
    pub fn expose_base32(&self) -> Zeroizing<String> {
        base32(&*self.0)
    }

    /// `otpauth://totp/plico:<account>?secret=<base32>&issuer=plico`, the URI apps read (from
    /// a QR code or pasted); `account` is percent-encoded.
    pub fn expose_uri(&self, account: &str) -> Zeroizing<String> {
        let mut label = String::new();
        for b in account.bytes() {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                label.push(char::from(b));
            } else {
                label.push_str(&format!("%{b:02X}"));
            }
        }
        Zeroizing::new(format!(
            "otpauth://totp/plico:{label}?secret={}&issuer=plico",
            self.expose_base32().as_str()
        ))
    }

    /// The code of `step` (6 digits).
    fn code(&self, step: u64) -> u32 {
        hotp(&*self.0, step, DIGITS)
    }

    /// The step in `now-1 ..= now+1` (for `unix` seconds) whose code is `code`, and which
    /// comes after `after` (the last step accepted); `None` if there is none or `code` is not
    /// six digits (spaces ignored).
    pub(crate) fn matching_step(&self, code: &str, unix: u64, after: Option<u64>) -> Option<u64> {
        let typed: String = code.chars().filter(|c| !c.is_whitespace()).collect();
        if typed.len() != DIGITS as usize || !typed.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let now = unix / STEP_SECS;
        let mut found = None;
        // Every candidate is computed and compared, matched or not.
        for step in now.saturating_sub(1)..=now.saturating_add(1) {
            let expected = format!("{:06}", self.code(step));
            let same = aws_lc_rs::constant_time::verify_slices_are_equal(
                expected.as_bytes(),
                typed.as_bytes(),
            )
            .is_ok();
            if same && after.is_none_or(|last| step > last) && found.is_none() {
                found = Some(step);
            }
        }
        found
    }

    /// Seals the secret for account `id` under `key` (the derived sealing key).
    pub(crate) fn seal(&self, key: &[u8; 32], id: &str) -> Result<String> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| Error::Provider("random generator"))?;
        let key = aead_key(key)?;
        let mut buf = Zeroizing::new(self.0.to_vec());
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(id)),
            &mut *buf,
        )
        .map_err(|_| Error::Provider("aes-256-gcm"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(hex::encode(out))
    }

    /// Opens a secret sealed for account `id`.
    ///
    /// # Errors
    /// [`Error::Integrity`] for a record that does not open (changed, moved to another
    /// account, or sealed under another key); nothing says which.
    pub(crate) fn open(sealed: &str, key: &[u8; 32], id: &str) -> Result<Self> {
        let bytes = Zeroizing::new(hex::decode(sealed).map_err(|_| Error::Integrity)?);
        if bytes.len() != NONCE_LEN + SECRET_BYTES + AES_256_GCM.tag_len() {
            return Err(Error::Integrity);
        }
        let (nonce, rest) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| Error::Integrity)?;
        let mut buf = Zeroizing::new(rest.to_vec());
        let key = aead_key(key)?;
        let plain = key
            .open_in_place(nonce, Aad::from(aad(id)), &mut buf)
            .map_err(|_| Error::Integrity)?;
        let mut secret = Zeroizing::new([0u8; SECRET_BYTES]);
        secret.copy_from_slice(plain);
        Ok(TotpSecret(secret))
    }

    #[cfg(test)]
    pub(crate) fn from_bytes(bytes: [u8; SECRET_BYTES]) -> Self {
        TotpSecret(Zeroizing::new(bytes))
    }
}

fn aead_key(key: &[u8; 32]) -> Result<LessSafeKey> {
    UnboundKey::new(&AES_256_GCM, key)
        .map(LessSafeKey::new)
        .map_err(|_| Error::Provider("aes-256-gcm"))
}

fn aad(id: &str) -> Vec<u8> {
    let mut aad = LABEL.to_vec();
    aad.push(0);
    aad.extend_from_slice(id.as_bytes());
    aad
}

/// An account's second factor as stored: the sealed secret and the last step accepted.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TotpRecord {
    /// hex(nonce | AES-256-GCM ciphertext | tag) of the secret.
    pub sealed: String,
    /// When it was enrolled, ms since the Unix epoch.
    pub enrolled_ms: u64,
    /// The last step whose code was accepted: no code of it or of an earlier step is
    /// accepted again.
    pub last_step: u64,
}

impl fmt::Debug for TotpRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TotpRecord")
            .field("sealed", &"<redacted>")
            .field("enrolled_ms", &self.enrolled_ms)
            .field("last_step", &self.last_step)
            .finish()
    }
}

/// HOTP (RFC 4226): HMAC-SHA-1 of the big-endian counter, dynamically truncated, mod
/// 10^`digits`.
fn hotp(key: &[u8], counter: u64, digits: u32) -> u32 {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key);
    let tag = hmac::sign(&key, &counter.to_be_bytes());
    let mac = tag.as_ref();
    let offset = usize::from(mac[mac.len() - 1] & 0x0f);
    let bin = u32::from_be_bytes([
        mac[offset] & 0x7f,
        mac[offset + 1],
        mac[offset + 2],
        mac[offset + 3],
    ]);
    bin % 10u32.pow(digits)
}

/// Base32 (RFC 4648) without padding.
fn base32(bytes: &[u8]) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::with_capacity(bytes.len().div_ceil(5) * 8));
    let (mut acc, mut bits) = (0u32, 0u32);
    for b in bytes {
        acc = (acc << 8) | u32::from(*b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(BASE32[((acc >> bits) & 31) as usize]));
        }
        acc &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(char::from(BASE32[((acc << (5 - bits)) & 31) as usize]));
    }
    out
}

/// The 6-digit code an authenticator app shows at `unix` seconds for a base32 `secret`
/// (spaces and case ignored), as the app computes it; `None` if `secret` is not base32. For
/// test clients and tooling: the service itself never computes a code from text.
pub fn code_from_base32(secret: &str, unix: u64) -> Option<String> {
    let mut bytes = Zeroizing::new(Vec::new());
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in secret.chars().filter(|c| !c.is_whitespace() && *c != '=') {
        let v = BASE32
            .iter()
            .position(|b| char::from(*b) == c.to_ascii_uppercase())?;
        acc = (acc << 5) | u32::try_from(v).ok()?;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            bytes.push(u8::try_from((acc >> bits) & 0xff).ok()?);
        }
        acc &= (1 << bits) - 1;
    }
    if bytes.is_empty() {
        return None;
    }
    Some(format!("{:06}", hotp(&bytes, unix / STEP_SECS, DIGITS)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const RFC_SECRET: &[u8; 20] = b"12345678901234567890";

    #[test]
    fn rfc_6238_sha1_vectors() {
        // RFC 6238 appendix B (SHA-1, 8 digits), and the same at 6 digits.
        for (t, eight) in [
            (59u64, 94_287_082u32),
            (1_111_111_109, 7_081_804),
            (1_111_111_111, 14_050_471),
            (1_234_567_890, 89_005_924),
            (2_000_000_000, 69_279_037),
            (20_000_000_000, 65_353_130),
        ] {
            assert_eq!(hotp(RFC_SECRET, t / STEP_SECS, 8), eight, "T={t}");
            assert_eq!(
                hotp(RFC_SECRET, t / STEP_SECS, 6),
                eight % 1_000_000,
                "T={t}"
            );
        }
        assert_eq!(
            format!("{:08}", hotp(RFC_SECRET, 1_111_111_109 / 30, 8)),
            "07081804"
        );
        let s = TotpSecret::from_bytes(*RFC_SECRET);
        assert_eq!(s.code(59 / 30), 287_082);
        // The app's view of the same secret, through its base32 form.
        let b32 = s.expose_base32();
        assert_eq!(b32.as_str(), "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
        assert_eq!(code_from_base32(&b32, 59).as_deref(), Some("287082"));
        assert_eq!(
            code_from_base32("gezd gnbv gy3t qojq gezd gnbv gy3t qojq", 59).as_deref(),
            Some("287082")
        );
        assert_eq!(code_from_base32("not base32!", 59), None);
    }

    #[test]
    fn one_step_either_side_and_never_twice() {
        let s = TotpSecret::from_bytes(*RFC_SECRET);
        let t = 1_111_111_109u64;
        let now = t / 30;
        let code = |step: u64| format!("{:06}", s.code(step));
        assert_eq!(s.matching_step(&code(now), t, None), Some(now));
        assert_eq!(s.matching_step(&code(now - 1), t, None), Some(now - 1));
        assert_eq!(s.matching_step(&code(now + 1), t, None), Some(now + 1));
        assert_eq!(s.matching_step(&code(now - 2), t, None), None);
        assert_eq!(s.matching_step(&code(now + 2), t, None), None);
        // Replay: a step once accepted, or an earlier one, is refused.
        assert_eq!(s.matching_step(&code(now), t, Some(now)), None);
        assert_eq!(s.matching_step(&code(now - 1), t, Some(now)), None);
        assert_eq!(s.matching_step(&code(now + 1), t, Some(now)), Some(now + 1));
        // Spaces are fine; anything else is not a code.
        let spaced = format!("{} {}", &code(now)[..3], &code(now)[3..]);
        assert_eq!(s.matching_step(&spaced, t, None), Some(now));
        for bad in ["", "12345", "1234567", "abcdef", "-12345"] {
            assert_eq!(s.matching_step(bad, t, None), None, "{bad}");
        }
    }

    #[test]
    fn sealed_secrets_open_only_for_their_account_and_key() {
        let s = TotpSecret::generate().unwrap();
        let key = [9u8; 32];
        let sealed = s.seal(&key, "00000000000000aa").unwrap();
        assert!(!sealed.contains(&hex::encode(*s.0)));
        let back = TotpSecret::open(&sealed, &key, "00000000000000aa").unwrap();
        assert_eq!(*back.0, *s.0);
        assert!(matches!(
            TotpSecret::open(&sealed, &key, "00000000000000bb"),
            Err(Error::Integrity)
        ));
        assert!(matches!(
            TotpSecret::open(&sealed, &[8u8; 32], "00000000000000aa"),
            Err(Error::Integrity)
        ));
        let mut changed = sealed.into_bytes();
        changed[30] = if changed[30] == b'0' { b'1' } else { b'0' };
        let changed = String::from_utf8(changed).unwrap();
        assert!(matches!(
            TotpSecret::open(&changed, &key, "00000000000000aa"),
            Err(Error::Integrity)
        ));
        assert_ne!(s.seal(&key, "x").unwrap(), s.seal(&key, "x").unwrap());
    }

    #[test]
    fn uri_and_debug() {
        let s = TotpSecret::from_bytes(*RFC_SECRET);
        assert_eq!(
            s.expose_uri("Mario Rossi").as_str(),
            "otpauth://totp/plico:Mario%20Rossi?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=plico"
        );
        assert_eq!(format!("{s:?}"), "TotpSecret(<redacted>)");
        let a = TotpSecret::generate().unwrap();
        let b = TotpSecret::generate().unwrap();
        assert_ne!(*a.expose_base32(), *b.expose_base32());
        assert_eq!(a.expose_base32().len(), 32);
    }
}
