//! Zeroizing carriers of clear digits and of the texts built from them.
//!
//! - [`Digits`]: one code (or a part of one) in a fixed 16-byte buffer: no heap, wiped on drop.
//! - [`Codes`]: a card's PIN, PUK and optional signature pair, built from the vault's
//!   `expose_secret()` bytes in the service crate (this crate does not depend on `vault`).
//! - [`SecretBuf`] / [`SecretText`]: growable zeroizing buffers. A `Zeroizing<Vec<u8>>` alone
//!   wipes only its last allocation: when a `Vec` grows, the old allocation is freed unwiped.
//!   These types grow by allocating anew, copying and wiping the old buffer themselves, so no
//!   copy of a digit is left in freed memory (as long as callers do not reach the inner `Vec`).
//!
//! None has `Display` or `Serialize`; `Debug` shows lengths only.

use crate::error::{Error, Result};
use std::fmt;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Longest code accepted (the vault's limit as well).
pub const MAX_DIGITS: usize = 16;

/// ASCII digits of one code or part of a code, in a fixed buffer wiped on drop.
///
/// # Security
/// `Debug` is redacted; no `Display`; bytes come out only through [`Digits::expose_secret`].
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Digits {
    buf: [u8; MAX_DIGITS],
    len: u8,
}

impl Digits {
    /// Copies `bytes`, which must be 1 to 16 ASCII digits.
    ///
    /// # Errors
    /// [`Error::BadCode`] naming `field` and the length, never a digit.
    pub fn parse(field: &'static str, bytes: &[u8]) -> Result<Digits> {
        let non_digit = !bytes.iter().all(u8::is_ascii_digit);
        if non_digit || bytes.is_empty() || bytes.len() > MAX_DIGITS {
            return Err(Error::BadCode {
                field,
                len: bytes.len(),
                non_digit,
                max: MAX_DIGITS,
            });
        }
        let mut buf = [0u8; MAX_DIGITS];
        buf[..bytes.len()].copy_from_slice(bytes);
        // bytes.len() <= MAX_DIGITS (16) was checked above, so it fits in a u8.
        Ok(Digits {
            buf,
            len: bytes.len() as u8,
        })
    }

    /// The digits of `range` of this code, or `None` if the range does not fit.
    pub fn slice(&self, range: std::ops::Range<usize>) -> Option<Digits> {
        let bytes = self.expose_secret().get(range)?;
        let mut buf = [0u8; MAX_DIGITS];
        buf[..bytes.len()].copy_from_slice(bytes);
        Some(Digits {
            buf,
            len: bytes.len() as u8,
        })
    }

    /// The digits as ASCII bytes. Call only where they are consumed (rendering).
    pub fn expose_secret(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }

    /// Number of digits (not secret: fixed by policy).
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// True for an empty slice of a code (never for a parsed code).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl fmt::Debug for Digits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digits(<redacted>, {} digits)", self.len)
    }
}

/// One card's codes in clear, as handed over by the vault.
///
/// # Security
/// Zeroized on drop (its digits are); `Debug` is redacted.
#[derive(Clone)]
pub struct Codes {
    /// The PIN.
    pub pin: Digits,
    /// The PUK.
    pub puk: Digits,
    /// The signature PIN and PUK, for cards that carry one.
    pub signature: Option<(Digits, Digits)>,
}

impl Codes {
    /// Builds a card's codes from ASCII digits (the vault's `expose_secret()` bytes).
    ///
    /// # Errors
    /// [`Error::BadCode`] if a code is not 1 to 16 ASCII digits.
    pub fn new(pin: &[u8], puk: &[u8]) -> Result<Codes> {
        Ok(Codes {
            pin: Digits::parse("pin", pin)?,
            puk: Digits::parse("puk", puk)?,
            signature: None,
        })
    }

    /// Adds the signature PIN/PUK pair.
    ///
    /// # Errors
    /// [`Error::BadCode`] if a code is not 1 to 16 ASCII digits.
    pub fn with_signature(mut self, pin: &[u8], puk: &[u8]) -> Result<Codes> {
        self.signature = Some((
            Digits::parse("signature pin", pin)?,
            Digits::parse("signature puk", puk)?,
        ));
        Ok(self)
    }

    /// Length of the shortest code of the card (not secret).
    pub fn shortest(&self) -> usize {
        let main = self.pin.len().min(self.puk.len());
        match &self.signature {
            Some((p, k)) => main.min(p.len()).min(k.len()),
            None => main,
        }
    }
}

impl fmt::Debug for Codes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Codes(<redacted>, signature pair: {})",
            self.signature.is_some()
        )
    }
}

/// A growable byte buffer that never leaves an unwiped copy behind: it is a
/// `Zeroizing<Vec<u8>>` that, when full, moves to a larger allocation and wipes the old one.
///
/// # Security
/// Zeroized on drop and on every growth; `Debug` shows the length only.
#[derive(Default)]
pub struct SecretBuf(Zeroizing<Vec<u8>>);

impl SecretBuf {
    /// An empty buffer with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> SecretBuf {
        SecretBuf(Zeroizing::new(Vec::with_capacity(capacity)))
    }

    /// Appends bytes, growing (and wiping the old allocation) if needed.
    #[inline]
    pub fn extend(&mut self, bytes: &[u8]) {
        self.reserve(bytes.len());
        self.0.extend_from_slice(bytes);
    }

    /// Appends one byte.
    #[inline]
    pub fn push(&mut self, byte: u8) {
        self.reserve(1);
        self.0.push(byte);
    }

    #[inline]
    fn reserve(&mut self, more: usize) {
        if self.0.len() + more > self.0.capacity() {
            self.grow(more);
        }
    }

    #[cold]
    #[inline(never)]
    fn grow(&mut self, more: usize) {
        let need = self.0.len() + more;
        let mut bigger = Zeroizing::new(Vec::with_capacity(need.max(self.0.capacity() * 2)));
        bigger.extend_from_slice(&self.0);
        // The old allocation is wiped (whole capacity) when `Zeroizing` drops it here.
        std::mem::swap(&mut self.0, &mut bigger);
    }

    /// Empties the buffer (wiping it) and keeps its allocation.
    pub fn clear(&mut self) {
        self.0.zeroize();
    }

    /// The bytes. Call only where they are consumed (written to the sealed output).
    pub fn expose_secret(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes (not secret).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The inner zeroizing vector.
    pub fn into_inner(self) -> Zeroizing<Vec<u8>> {
        self.0
    }
}

impl std::io::Write for SecretBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.extend(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl fmt::Debug for SecretBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBuf(<redacted>, {} bytes)", self.0.len())
    }
}

/// A growable UTF-8 text with the guarantees of [`SecretBuf`].
///
/// # Security
/// Zeroized on drop and on every growth; `Debug` shows the length only; no `Display`.
#[derive(Default, Clone)]
pub struct SecretText(Zeroizing<String>);

impl SecretText {
    /// An empty text with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> SecretText {
        SecretText(Zeroizing::new(String::with_capacity(capacity)))
    }

    /// Appends text, growing (and wiping the old allocation) if needed.
    pub fn push_str(&mut self, s: &str) {
        let need = self.0.len() + s.len();
        if need > self.0.capacity() {
            let mut bigger = Zeroizing::new(String::with_capacity(need.max(self.0.capacity() * 2)));
            bigger.push_str(&self.0);
            std::mem::swap(&mut self.0, &mut bigger);
        }
        self.0.push_str(s);
    }

    /// Appends one character.
    pub fn push(&mut self, c: char) {
        let mut tmp = [0u8; 4];
        self.push_str(c.encode_utf8(&mut tmp));
    }

    /// Empties the text (wiping it) and keeps its allocation.
    pub fn clear(&mut self) {
        self.0.zeroize();
    }

    /// The text. Call only where it is consumed (handed to a courier, encoded into a page).
    pub fn expose_secret(&self) -> &str {
        &self.0
    }

    /// Length in bytes (not secret).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretText(<redacted>, {} bytes)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_parse_and_slice() {
        let d = Digits::parse("pin", b"12345").unwrap();
        assert_eq!(d.expose_secret(), b"12345");
        assert_eq!(d.slice(0..2).unwrap().expose_secret(), b"12");
        assert_eq!(d.slice(2..5).unwrap().expose_secret(), b"345");
        assert!(d.slice(2..6).is_none());
        for bad in [&b""[..], b"12a45", b"12345678901234567", "١٢٣".as_bytes()] {
            let e = Digits::parse("puk", bad).unwrap_err().to_string();
            assert!(e.starts_with("puk:"), "{e}");
        }
    }

    #[test]
    fn buffers_grow_and_keep_content() {
        let mut b = SecretBuf::with_capacity(1);
        for _ in 0..100 {
            b.extend(b"0123456789");
        }
        assert_eq!(b.len(), 1000);
        assert!(b.expose_secret().starts_with(b"01234567890123"));
        let mut t = SecretText::with_capacity(0);
        for _ in 0..50 {
            t.push_str("àé");
            t.push('x');
        }
        assert_eq!(t.expose_secret().chars().count(), 150);
        b.clear();
        assert!(b.is_empty());
    }
}
