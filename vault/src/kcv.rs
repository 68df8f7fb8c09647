//! Key check values.
//!
//! A KCV identifies a key without revealing it, so officers can compare keys across systems and
//! logs can name keys. plico uses the convention of payment HSMs and of PKCS#11's
//! `CKA_CHECK_VALUE` for AES: the first 3 bytes of AES-ECB encryption of an all-zero block under
//! the key. A real token computes the same value for the same key.

use aws_lc_rs::cipher::{EncryptingKey, UnboundCipherKey, AES_256};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A 3-byte key check value, shown as 6 upper-case hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Kcv([u8; 3]);

impl Kcv {
    /// The KCV of a 256-bit key (AES-ECB of the zero block, first 3 bytes).
    pub fn of_aes256(key: &[u8; 32]) -> Kcv {
        let mut block = [0u8; 16];
        let encrypted = UnboundCipherKey::new(&AES_256, key)
            .and_then(EncryptingKey::ecb)
            .and_then(|k| k.encrypt(&mut block).map(|_| ()));
        match encrypted {
            Ok(()) => Kcv([block[0], block[1], block[2]]),
            // AES-256-ECB on one block with a 32-byte key cannot fail; an all-zero KCV would
            // only ever show up if the provider broke, and it matches no real key's KCV.
            Err(_) => Kcv([0; 3]),
        }
    }

    /// The raw 3 bytes.
    pub fn as_bytes(&self) -> [u8; 3] {
        self.0
    }

    /// Builds a KCV from its raw bytes (as stored beside a wrapped key).
    pub fn from_bytes(bytes: [u8; 3]) -> Kcv {
        Kcv(bytes)
    }
}

impl fmt::Display for Kcv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", hex::encode_upper(self.0))
    }
}

impl fmt::Debug for Kcv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Kcv({self})")
    }
}

impl std::str::FromStr for Kcv {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 3];
        hex::decode_to_slice(s, &mut out)
            .map_err(|_| format!("a key check value is 6 hex digits, got {:?}", s))?;
        Ok(Kcv(out))
    }
}

impl Serialize for Kcv {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Kcv {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer() {
        // FIPS-197 C.3: AES-256 with key 00..1f encrypts 00112233..ff to 8ea2b7ca...; for the
        // zero block under the zero key the well-known value is dc95c078a2408989ad48a21492842087.
        assert_eq!(Kcv::of_aes256(&[0u8; 32]).to_string(), "DC95C0");
        assert_eq!("DC95C0".parse::<Kcv>(), Ok(Kcv::of_aes256(&[0u8; 32])));
        assert!("DC95".parse::<Kcv>().is_err());
    }
}
