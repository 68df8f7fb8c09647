//! The plaintext of one card's record: its PIN/PUK pair and the optional signature pair,
//! packed as binary-coded decimal.
//!
//! ```text
//! pair:   lengths (1 byte: pin digits - 1 << 4 | puk digits - 1) | BCD digits of pin then puk
//!         (two digits a byte, high nibble first, 0xF pads an odd count)
//! record: pair [ | signature pair ]
//! ```
//!
//! A CNS pair (5 + 8 digits) packs into 8 bytes instead of 14 in ASCII. Decoding checks every
//! nibble and length; a record that does not decode is [`Error::Integrity`] (it was
//! authenticated, so only a bug or a foreign writer can produce one).

use crate::error::{Error, Result};
use crate::policy::{CodePolicy, LengthBounds, MAX_CODE_DIGITS};
use crate::secret::{Pin, Puk};
use std::fmt;
use zeroize::{Zeroize, Zeroizing};

/// Largest packed record: two pairs of two 16-digit codes.
pub const MAX_RECORD_LEN: usize = 2 * (1 + MAX_CODE_DIGITS);

/// Accepts any stored length: records written under an older policy still open.
const ANY_LENGTH: CodePolicy = CodePolicy {
    pin: LengthBounds {
        min: 1,
        max: MAX_CODE_DIGITS as u8,
    },
    puk: LengthBounds {
        min: 1,
        max: MAX_CODE_DIGITS as u8,
    },
};

/// One card's codes, in clear. Zeroized on drop (its parts are); `Debug` redacted.
#[derive(Clone)]
pub struct CardCodes {
    /// The card's PIN.
    pub pin: Pin,
    /// The card's PUK.
    pub puk: Puk,
    /// The signature PIN/PUK pair, for cards that carry one.
    pub signature: Option<(Pin, Puk)>,
}

impl fmt::Debug for CardCodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CardCodes(<redacted>, signature pair: {})",
            self.signature.is_some()
        )
    }
}

impl CardCodes {
    /// Packs the record into `out` (cleared first) and returns its length.
    ///
    /// `out` is a fixed stack buffer of the caller's, zeroized by it.
    pub fn pack(&self, out: &mut [u8; MAX_RECORD_LEN]) -> usize {
        let mut n = pack_pair(self.pin.expose_secret(), self.puk.expose_secret(), out);
        if let Some((pin, puk)) = &self.signature {
            n += pack_pair(pin.expose_secret(), puk.expose_secret(), &mut out[n..]);
        }
        n
    }

    /// Unpacks a record written by [`CardCodes::pack`].
    ///
    /// # Errors
    /// [`Error::Integrity`] for bytes that are not a packed record.
    pub fn unpack(bytes: &[u8]) -> Result<CardCodes> {
        let (pin, puk, used) = unpack_pair(bytes)?;
        let rest = &bytes[used..];
        let signature = if rest.is_empty() {
            None
        } else {
            let (spin, spuk, used) = unpack_pair(rest)?;
            if used != rest.len() {
                return Err(Error::Integrity);
            }
            Some((spin, spuk))
        };
        Ok(CardCodes {
            pin,
            puk,
            signature,
        })
    }
}

/// Packed length of a pair of `digits` digits in all.
fn pair_len(digits: usize) -> usize {
    1 + digits.div_ceil(2)
}

fn pack_pair(pin: &[u8], puk: &[u8], out: &mut [u8]) -> usize {
    // Lengths are 1..=16 (checked when the codes were parsed), so each fits in a nibble.
    out[0] = (((pin.len() - 1) as u8) << 4) | ((puk.len() - 1) as u8);
    let total = pin.len() + puk.len();
    let len = pair_len(total);
    for (i, d) in pin.iter().chain(puk.iter()).enumerate() {
        let nibble = d - b'0';
        let at = 1 + i / 2;
        if i % 2 == 0 {
            out[at] = nibble << 4 | 0x0F;
        } else {
            out[at] = (out[at] & 0xF0) | nibble;
        }
    }
    len
}

fn unpack_pair(bytes: &[u8]) -> Result<(Pin, Puk, usize)> {
    let first = *bytes.first().ok_or(Error::Integrity)?;
    let pin_len = usize::from(first >> 4) + 1;
    let puk_len = usize::from(first & 0x0F) + 1;
    let total = pin_len + puk_len;
    let len = pair_len(total);
    if bytes.len() < len {
        return Err(Error::Integrity);
    }
    let mut ascii = Zeroizing::new([0u8; 2 * MAX_CODE_DIGITS]);
    for i in 0..total {
        let byte = bytes[1 + i / 2];
        let nibble = if i % 2 == 0 { byte >> 4 } else { byte & 0x0F };
        if nibble > 9 {
            ascii.zeroize();
            return Err(Error::Integrity);
        }
        ascii[i] = b'0' + nibble;
    }
    if total % 2 == 1 && bytes[len - 1] & 0x0F != 0x0F {
        return Err(Error::Integrity);
    }
    // Digits only, so both slices are UTF-8; errors carry no digit.
    let text =
        |r: std::ops::Range<usize>| std::str::from_utf8(&ascii[r]).map_err(|_| Error::Integrity);
    let pin = Pin::parse(text(0..pin_len)?, &ANY_LENGTH).map_err(|_| Error::Integrity)?;
    let puk = Puk::parse(text(pin_len..total)?, &ANY_LENGTH).map_err(|_| Error::Integrity)?;
    Ok((pin, puk, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(pin: &str, puk: &str, sig: Option<(&str, &str)>) -> CardCodes {
        CardCodes {
            pin: Pin::parse(pin, &ANY_LENGTH).unwrap(),
            puk: Puk::parse(puk, &ANY_LENGTH).unwrap(),
            signature: sig.map(|(a, b)| {
                (
                    Pin::parse(a, &ANY_LENGTH).unwrap(),
                    Puk::parse(b, &ANY_LENGTH).unwrap(),
                )
            }),
        }
    }

    fn round_trip(c: &CardCodes) -> (usize, CardCodes) {
        let mut buf = [0u8; MAX_RECORD_LEN];
        let n = c.pack(&mut buf);
        (n, CardCodes::unpack(&buf[..n]).unwrap())
    }

    #[test]
    fn pairs_round_trip_in_bcd() {
        let c = codes("01234", "56789012", None);
        let (n, back) = round_trip(&c);
        assert_eq!(n, 8, "a CNS pair packs into 8 bytes");
        assert_eq!(back.pin.expose_secret(), b"01234");
        assert_eq!(back.puk.expose_secret(), b"56789012");
        assert!(back.signature.is_none());

        let c = codes("12345678", "99999999", Some(("0", "9876543210987654")));
        let (n, back) = round_trip(&c);
        assert_eq!(n, 9 + 10);
        let (sp, su) = back.signature.unwrap();
        assert_eq!(sp.expose_secret(), b"0");
        assert_eq!(su.expose_secret(), b"9876543210987654");
        assert_eq!(back.puk.expose_secret(), b"99999999");
    }

    #[test]
    fn damaged_records_do_not_decode() {
        let mut buf = [0u8; MAX_RECORD_LEN];
        let n = codes("01234", "56789012", None).pack(&mut buf);
        assert!(CardCodes::unpack(&[]).is_err());
        assert!(CardCodes::unpack(&buf[..n - 1]).is_err(), "truncated");
        let mut bad = buf;
        bad[2] = 0xA0;
        assert!(CardCodes::unpack(&bad[..n]).is_err(), "not a digit");
        let mut bad = buf;
        bad[n - 1] &= 0xF0;
        assert!(CardCodes::unpack(&bad[..n]).is_err(), "bad padding");
        let mut long = buf[..n].to_vec();
        long.push(0x00);
        assert!(CardCodes::unpack(&long).is_err(), "stray byte");
    }

    #[test]
    fn debug_shows_no_digit() {
        let shown = format!("{:?}", codes("13579", "24680135", None));
        assert!(
            !shown.contains("1357") && !shown.contains("2468"),
            "{shown}"
        );
    }
}
