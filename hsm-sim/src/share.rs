//! The text form of a custodian share.
//!
//! One line, so it can live in a file, be read out over the phone or pasted into a form:
//!
//! ```text
//! plico-share:v1:<set id, 16 hex>:<x>:<m>:<n>:<payload, 64 hex>:<check, 8 hex>
//! ```
//!
//! `x` is the share's index (1..=n), `m` the threshold, `n` the number of shares in the set. The
//! check is the first 4 bytes of SHA-256 over everything before it: it catches a mistyped or
//! corrupted share before it is used. A share of another HSM or of a set replaced by a rekey is
//! told apart by its set id. Neither the check nor the set id is an authenticator: the HSM also
//! keeps a digest of each share it issued (see [`Share::digest`]), so a well-formed share that
//! it never issued is refused too.
//!
//! # Security
//! [`Share`] zeroizes its payload, prints redacted, and parses errors never echo the text.

use aws_lc_rs::digest::{digest, SHA256};
use secrecy::{ExposeSecret, SecretString};
use std::fmt;
use zeroize::Zeroizing;

/// Bytes of a share's payload (the unseal secret's length).
pub const PAYLOAD_LEN: usize = 32;
const PREFIX: &str = "plico-share:v1:";

/// One custodian share.
pub struct Share {
    /// Id of the share set it belongs to.
    pub set: [u8; 8],
    /// Its index, 1..=n.
    pub x: u8,
    /// Shares needed to unseal.
    pub threshold: u8,
    /// Shares in the set.
    pub shares: u8,
    payload: Zeroizing<[u8; PAYLOAD_LEN]>,
}

impl Share {
    /// Builds a share from its parts.
    pub fn new(
        set: [u8; 8],
        x: u8,
        threshold: u8,
        shares: u8,
        payload: &[u8; PAYLOAD_LEN],
    ) -> Self {
        Share {
            set,
            x,
            threshold,
            shares,
            payload: Zeroizing::new(*payload),
        }
    }

    /// The payload bytes. Call only where they are consumed (combining shares).
    pub fn expose_payload(&self) -> &[u8; PAYLOAD_LEN] {
        &self.payload
    }

    fn body(&self) -> Zeroizing<String> {
        Zeroizing::new(format!(
            "{PREFIX}{}:{}:{}:{}:{}",
            hex::encode(self.set),
            self.x,
            self.threshold,
            self.shares,
            hex::encode(&self.payload[..])
        ))
    }

    fn check_of(body: &str) -> String {
        hex::encode(&digest(&SHA256, body.as_bytes()).as_ref()[..4])
    }

    /// The one-line text form.
    pub fn to_text(&self) -> SecretString {
        let body = self.body();
        let check = Self::check_of(&body);
        SecretString::from(format!("{}:{check}", body.as_str()))
    }

    /// Parses the text form (surrounding whitespace is ignored).
    ///
    /// # Errors
    /// A message saying what is wrong — never the share's content.
    pub fn parse(text: &SecretString) -> Result<Share, String> {
        let t = text.expose_secret().trim();
        let rest = t
            .strip_prefix(PREFIX)
            .ok_or("not a plico share (expected text starting with \"plico-share:v1:\")")?;
        let (body_rest, check) = rest
            .rsplit_once(':')
            .ok_or("the share is truncated: its check value is missing")?;
        let body_len = PREFIX.len() + body_rest.len();
        let fields: Vec<&str> = body_rest.split(':').collect();
        if fields.len() != 5 {
            return Err(format!(
                "the share has {} fields, expected 6 after the prefix (set:x:m:n:payload:check)",
                fields.len() + 1
            ));
        }
        let computed = Self::check_of(&t[..body_len]);
        if !constant_time_eq(computed.as_bytes(), check.as_bytes()) {
            return Err(
                "the share's check value does not match: it is corrupted or mistyped".into(),
            );
        }
        let mut set = [0u8; 8];
        hex::decode_to_slice(fields[0], &mut set)
            .map_err(|_| "the share's set id is not 16 hex digits")?;
        let num = |s: &str, what: &str| -> Result<u8, String> {
            s.parse::<u8>()
                .map_err(|_| format!("the share's {what} is not a number from 0 to 255"))
        };
        let x = num(fields[1], "index")?;
        let threshold = num(fields[2], "threshold")?;
        let shares = num(fields[3], "share count")?;
        if x == 0 || x > shares || threshold == 0 || threshold > shares {
            return Err(format!(
                "the share says index {x}, threshold {threshold} of {shares}: not a valid combination"
            ));
        }
        let mut payload = Zeroizing::new([0u8; PAYLOAD_LEN]);
        hex::decode_to_slice(fields[4], &mut payload[..])
            .map_err(|_| "the share's payload is not 64 hex digits")?;
        Ok(Share {
            set,
            x,
            threshold,
            shares,
            payload,
        })
    }

    /// The digest the HSM keeps to recognise the shares it issued:
    /// SHA-256("plico-share-digest:v1" | set | x | payload).
    pub fn digest(&self) -> [u8; 32] {
        let mut input = Zeroizing::new(Vec::with_capacity(64));
        input.extend_from_slice(b"plico-share-digest:v1");
        input.extend_from_slice(&self.set);
        input.push(self.x);
        input.extend_from_slice(&self.payload[..]);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest(&SHA256, &input).as_ref());
        out
    }
}

impl fmt::Debug for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Share(set {}, {} of {}, threshold {}, <redacted>)",
            hex::encode(self.set),
            self.x,
            self.shares,
            self.threshold
        )
    }
}

/// Compares two byte strings without an early exit.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sample() -> Share {
        Share::new([1, 2, 3, 4, 5, 6, 7, 8], 2, 2, 3, &[0xAB; PAYLOAD_LEN])
    }

    #[test]
    fn round_trip() {
        let s = sample();
        let text = s.to_text();
        let back = Share::parse(&text).unwrap();
        assert_eq!(
            (back.set, back.x, back.threshold, back.shares),
            (s.set, 2, 2, 3)
        );
        assert_eq!(back.expose_payload(), s.expose_payload());
        assert_eq!(back.digest(), s.digest());
        let padded = SecretString::from(format!("  {}\n", text.expose_secret()));
        assert!(Share::parse(&padded).is_ok());
    }

    #[test]
    fn every_changed_character_is_refused_without_echo() {
        let text = sample().to_text();
        let t = text.expose_secret().to_string();
        for i in 0..t.len() {
            let mut b = t.clone().into_bytes();
            b[i] = if b[i] == b'0' { b'1' } else { b'0' };
            let Ok(changed) = String::from_utf8(b) else {
                continue;
            };
            if changed == t {
                continue;
            }
            let err = Share::parse(&SecretString::from(changed)).unwrap_err();
            assert!(!err.contains("abab"), "error echoes the payload: {err}");
        }
    }

    #[test]
    fn debug_is_redacted() {
        let d = format!("{:?}", sample());
        assert!(
            !d.to_lowercase().contains("abab") && d.contains("<redacted>"),
            "{d}"
        );
    }
}
