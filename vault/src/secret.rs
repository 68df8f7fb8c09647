//! Secret carriers: codes and keys.
//!
//! Every type here zeroizes its bytes on drop, prints as `<redacted>` under `Debug`, and has
//! neither `Display` nor `Serialize`: a code or key cannot reach a log, an error or a JSON body
//! by accident. Codes are built only by parsing against a [`CodePolicy`]; the bytes come out only
//! through `expose_secret()`, so every place that consumes them can be found with grep.

use crate::kcv::Kcv;
use crate::policy::{CodeError, CodeKind, CodePolicy, MAX_CODE_DIGITS};
use std::fmt;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Digits of one code in a fixed buffer (no heap allocation, nothing left behind on drop).
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
struct Digits {
    buf: [u8; MAX_CODE_DIGITS],
    len: u8,
}

impl Digits {
    fn parse(kind: CodeKind, text: &str, policy: &CodePolicy) -> Result<Self, CodeError> {
        let bytes = text.as_bytes();
        if let Some(i) = bytes.iter().position(|b| !b.is_ascii_digit()) {
            // A multi-byte character counts as one position for the person reading the error.
            let position = text.char_indices().take_while(|(at, _)| *at <= i).count();
            return Err(CodeError::NonDigit { kind, position });
        }
        let bounds = policy.bounds(kind);
        let n = bytes.len();
        if n < usize::from(bounds.min) || n > usize::from(bounds.max) || n > MAX_CODE_DIGITS {
            return Err(CodeError::Length {
                kind,
                got: n,
                bounds,
            });
        }
        let mut buf = [0u8; MAX_CODE_DIGITS];
        buf[..n].copy_from_slice(bytes);
        // n <= MAX_CODE_DIGITS (16) was checked above, so it fits in a u8.
        Ok(Digits { buf, len: n as u8 })
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

macro_rules! code_type {
    ($name:ident, $kind:expr, $what:literal) => {
        #[doc = concat!("A card's ", $what, ": ASCII digits within the policy's bounds.")]
        ///
        /// # Security
        /// Zeroized on drop; `Debug` is redacted; no `Display`, no `Serialize`.
        #[derive(Clone)]
        pub struct $name(Digits);

        impl $name {
            #[doc = concat!("Parses a ", $what, " under `policy`.")]
            ///
            /// # Errors
            /// [`CodeError::NonDigit`] or [`CodeError::Length`]; the error names the field and
            /// the position or length, never a digit.
            pub fn parse(text: &str, policy: &CodePolicy) -> Result<Self, CodeError> {
                Digits::parse($kind, text, policy).map($name)
            }

            /// The digits, as ASCII bytes. Call only where the code is consumed (encryption,
            /// rendering to the holder).
            pub fn expose_secret(&self) -> &[u8] {
                self.0.as_bytes()
            }

            /// Number of digits (not secret: fixed by policy).
            pub fn len(&self) -> usize {
                usize::from(self.0.len)
            }

            /// Never true for a parsed code; present for API symmetry with `len`.
            pub fn is_empty(&self) -> bool {
                self.0.len == 0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(
                    f,
                    concat!(stringify!($name), "(<redacted>, {} digits)"),
                    self.len()
                )
            }
        }
    };
}

code_type!(Pin, CodeKind::Pin, "PIN");
code_type!(Puk, CodeKind::Puk, "PUK");

/// Length of every symmetric key in the hierarchy (AES-256, HMAC-SHA256 keys).
pub const KEY_LEN: usize = 32;

/// A data key in clear: AES-256 for records, or an HMAC-SHA256 key for the index and audit
/// purposes. Exists in host memory only while in use; stored only wrapped by the HSM.
///
/// # Security
/// Zeroized on drop; `Debug` shows only the key check value.
// Not `Clone`: a data key has one owner, and a copy would be one more buffer to wipe (and,
// for a fresh key, a way to build two sealers over one nonce counter).
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct DataKey([u8; KEY_LEN]);

impl DataKey {
    /// Takes ownership of key bytes. For [`crate::Hsm`] providers, which are the only source of
    /// data keys; the caller's copy should be a `Zeroizing` buffer.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        DataKey(bytes)
    }

    /// The key bytes. Call only where they are consumed (building a cipher or MAC context).
    pub fn expose_secret(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The key check value of this key.
    pub fn kcv(&self) -> Kcv {
        Kcv::of_aes256(&self.0)
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DataKey(<redacted>, kcv {})", self.kcv())
    }
}

/// A data key straight from the HSM's generator, never used before.
///
/// Only a `FreshDataKey` can build an [`crate::envelope::Sealer`]; keys that come back from
/// unwrapping are plain [`DataKey`]s and can only decrypt. This is what makes the envelope's
/// counter nonces unique: see [`crate::envelope`].
#[derive(Debug)]
pub struct FreshDataKey(DataKey);

impl FreshDataKey {
    /// Marks a key as freshly generated. For [`crate::Hsm`] providers only: calling this on an
    /// unwrapped key would let two sealers reuse nonces under one key.
    pub fn from_generated(key: DataKey) -> Self {
        FreshDataKey(key)
    }

    /// The key, for decryption or inspection.
    pub fn key(&self) -> &DataKey {
        &self.0
    }

    pub(crate) fn into_key(self) -> DataKey {
        self.0
    }
}

/// Clear record bytes on their way into or out of an envelope.
///
/// # Security
/// Zeroized on drop; `Debug` shows only the length.
pub struct Plaintext(Zeroizing<Vec<u8>>);

impl Plaintext {
    /// Wraps bytes that are already secret; the vector is zeroized when this value drops.
    pub fn new(bytes: Zeroizing<Vec<u8>>) -> Self {
        Plaintext(bytes)
    }

    /// Copies a slice into a new zeroizing buffer.
    pub fn from_slice(bytes: &[u8]) -> Self {
        Plaintext(Zeroizing::new(bytes.to_vec()))
    }

    /// The clear bytes. Call only where they are consumed.
    pub fn expose_secret(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes (not secret).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Plaintext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Plaintext(<redacted>, {} bytes)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::LengthBounds;

    #[test]
    fn pin_and_puk_parse_under_policy() {
        let p = CodePolicy::CNS;
        assert_eq!(Pin::parse("12345", &p).map(|x| x.len()), Ok(5));
        assert_eq!(Puk::parse("12345678", &p).map(|x| x.len()), Ok(8));
        assert_eq!(
            Puk::parse("1234567", &p).map(|_| ()),
            Err(CodeError::Length {
                kind: CodeKind::Puk,
                got: 7,
                bounds: LengthBounds::exactly(8)
            })
        );
        assert_eq!(
            Pin::parse("12a45", &p).map(|_| ()),
            Err(CodeError::NonDigit {
                kind: CodeKind::Pin,
                position: 3
            })
        );
        // Non-ASCII digits (Arabic-Indic, full-width) are not digits for a card.
        assert!(Pin::parse("١٢٣٤٥", &p).is_err());
        assert!(Pin::parse("１２３４５", &p).is_err());
        assert!(Pin::parse("", &p).is_err());
        assert!(Pin::parse(" 12345", &p).is_err());
        assert!(Pin::parse("12345678", &CodePolicy::CIE).is_ok());
    }

    #[test]
    fn errors_never_contain_digits_of_the_code() {
        for text in ["98765x", "9876", "987654321"] {
            let e = Pin::parse(text, &CodePolicy::CNS).map(|_| ()).unwrap_err();
            let msg = e.to_string();
            assert!(!msg.contains("9876"), "{msg}");
        }
    }

    #[test]
    fn debug_output_carries_no_secret_bytes() {
        let pin = Pin::parse("24680", &CodePolicy::CNS).unwrap();
        let puk = Puk::parse("13579135", &CodePolicy::CNS).unwrap();
        let key = DataKey::from_bytes([0xA5; KEY_LEN]);
        let fresh = FreshDataKey::from_generated(DataKey::from_bytes([0x5A; KEY_LEN]));
        let plain = Plaintext::from_slice(b"24680|13579135");
        let all = format!("{pin:?} {puk:?} {key:?} {fresh:?} {plain:?} {pin:#?} {key:#?}");
        for needle in [
            "24680", "13579135", "a5a5", "A5A5", "5a5a", "5A5A", "165, 165", "90, 90",
        ] {
            assert!(!all.contains(needle), "debug output leaked {needle}: {all}");
        }
        assert!(all.contains("<redacted>"));
    }
}
