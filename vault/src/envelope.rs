//! The envelope: how one encrypted record is laid out in the store.
//!
//! ```text
//! version (1) | data-key id (u32 BE) | nonce (12) | ciphertext (n) | tag (16)
//! ```
//!
//! AES-256-GCM under a data key. The AAD binds the record to its place:
//! `"plico-envelope" | version | purpose tag | data-key id | subject length (u16 BE) | subject`,
//! where the subject is the card serial (or whatever identity the record's owner names). A
//! record copied to another card, relabelled with another key id, or opened for another purpose
//! fails with [`Error::Integrity`], as does any flipped byte.
//!
//! # Why nonces never repeat under one key
//!
//! Nonces are deterministic (NIST SP 800-38D §8.2.1): 4 zero bytes then a 64-bit counter. Only a
//! [`Sealer`] encrypts, a `Sealer` can only be built from a [`FreshDataKey`] — a key the HSM has
//! just generated, which is consumed by the sealer — and the sealer's counter only goes up. Keys
//! that come back from the store are unwrapped as plain [`DataKey`]s, which build only an
//! [`Opener`]. So each data key has exactly one counter in its whole life, and every nonce under
//! it is distinct. A sealer also stops at [`SEALER_LIMIT`] encryptions, far below the AES-GCM
//! limits of SP 800-38D.
//!
//! # The detached form
//!
//! Bulk layouts (the code segments of [`crate::codes`]) keep the key id once per segment and
//! the counter beside the record, so a record costs `ciphertext | tag` plus a 32-bit counter
//! ([`Sealer::seal_detached`], [`Opener::open_detached`]). The cipher, nonce and AAD are exactly
//! those of a full envelope with the same key, counter and subject: the two forms are one
//! encryption stored two ways. The counter fits in 32 bits because of [`SEALER_LIMIT`].

use crate::error::{Error, Refusal, Result};
use crate::hsm::KeyPurpose;
use crate::secret::{DataKey, FreshDataKey, Plaintext};
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use serde::{Deserialize, Serialize};
use std::fmt;
use zeroize::Zeroizing;

/// The layout version written by this code.
pub const ENVELOPE_VERSION: u8 = 1;
/// Bytes before the ciphertext: version, key id, nonce.
pub const HEADER_LEN: usize = 1 + 4 + NONCE_LEN;
/// AES-GCM tag length.
pub const TAG_LEN: usize = 16;
/// Encryptions one data key may perform (2^31), well below the 2^32 of SP 800-38D.
pub const SEALER_LIMIT: u64 = 1 << 31;

const AAD_LABEL: &[u8] = b"plico-envelope";

/// Identifies a data key in the keyring; written into every envelope it encrypts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DataKeyId(pub u32);

impl fmt::Display for DataKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "data key {}", self.0)
    }
}

/// A sealed record: public bytes, safe to store and copy.
#[derive(Clone, PartialEq, Eq)]
pub struct Envelope(Vec<u8>);

impl Envelope {
    /// Wraps stored bytes; nothing is checked until [`Opener::open`].
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Envelope(bytes)
    }

    /// The stored form.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The data key this envelope names, to find its opener.
    ///
    /// # Errors
    /// [`Error::Integrity`] if the bytes are too short or of an unknown version.
    pub fn key_id(&self) -> Result<DataKeyId> {
        let b = &self.0;
        if b.len() < HEADER_LEN + TAG_LEN || b[0] != ENVELOPE_VERSION {
            return Err(Error::Integrity);
        }
        Ok(DataKeyId(u32::from_be_bytes([b[1], b[2], b[3], b[4]])))
    }
}

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Envelope({} bytes)", self.0.len())
    }
}

/// Bytes of the AAD before the subject: label, version, purpose, key id.
const AAD_PREFIX_LEN: usize = AAD_LABEL.len() + 1 + 1 + 4;

/// Rewrites only the subject part of an AAD that [`aad_into`] built for the same purpose and
/// key (the sealer's hot path: the prefix is the same for every record).
fn aad_subject_into(a: &mut Vec<u8>, subject: &str) -> Result<()> {
    let subject_len = u16::try_from(subject.len()).map_err(|_| Refusal::SubjectTooLong {
        bytes: subject.len(),
    })?;
    a.truncate(AAD_PREFIX_LEN);
    a.extend_from_slice(&subject_len.to_be_bytes());
    a.extend_from_slice(subject.as_bytes());
    Ok(())
}

/// Writes the AAD of a record into `a` (cleared first), so a sealer can reuse one buffer for
/// every record instead of allocating per record.
fn aad_into(a: &mut Vec<u8>, purpose: KeyPurpose, key: DataKeyId, subject: &str) -> Result<()> {
    let subject_len = u16::try_from(subject.len()).map_err(|_| Refusal::SubjectTooLong {
        bytes: subject.len(),
    })?;
    a.clear();
    a.extend_from_slice(AAD_LABEL);
    a.push(ENVELOPE_VERSION);
    a.push(purpose.tag());
    a.extend_from_slice(&key.0.to_be_bytes());
    a.extend_from_slice(&subject_len.to_be_bytes());
    a.extend_from_slice(subject.as_bytes());
    Ok(())
}

fn aead_key(key: &DataKey) -> Result<LessSafeKey> {
    UnboundKey::new(&AES_256_GCM, key.expose_secret())
        .map(LessSafeKey::new)
        .map_err(|_| Error::Provider("aes-256-gcm key setup"))
}

/// Encrypts records under one fresh data key, with counter nonces. See the module docs for why
/// nonces cannot repeat.
pub struct Sealer {
    key: LessSafeKey,
    id: DataKeyId,
    purpose: KeyPurpose,
    next: u64,
    /// The AAD of the record being sealed, reused across records.
    aad: Vec<u8>,
}

impl Sealer {
    /// Takes ownership of a freshly generated data key.
    ///
    /// # Errors
    /// [`Error::Provider`] if the AEAD context cannot be built.
    pub fn new(id: DataKeyId, purpose: KeyPurpose, key: FreshDataKey) -> Result<Self> {
        let key = key.into_key();
        let mut aad = Vec::with_capacity(AAD_LABEL.len() + 8 + 32);
        // The prefix (label, version, purpose, key id) is the same for every record.
        aad_into(&mut aad, purpose, id, "")?;
        Ok(Sealer {
            key: aead_key(&key)?,
            id,
            purpose,
            next: 0,
            aad,
        })
    }

    /// The key this sealer encrypts under.
    pub fn key_id(&self) -> DataKeyId {
        self.id
    }

    /// Encryptions performed so far (for the keyring's cryptoperiod accounting).
    pub fn encryptions(&self) -> u64 {
        self.next
    }

    /// Encrypts one record bound to `subject` (the card serial).
    ///
    /// # Errors
    /// [`Error::Refusal`] once [`SEALER_LIMIT`] is reached or for a subject over 64 KiB.
    pub fn seal(&mut self, subject: &str, plaintext: &Plaintext) -> Result<Envelope> {
        let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
        self.seal_into(subject, plaintext.expose_secret(), &mut out)?;
        Ok(Envelope(out))
    }

    /// Appends one envelope to `out` (for bulk writers that pack many records in one buffer).
    ///
    /// # Errors
    /// As [`Sealer::seal`]; `out` is unchanged on error.
    pub fn seal_into(&mut self, subject: &str, plaintext: &[u8], out: &mut Vec<u8>) -> Result<()> {
        let nonce = self.nonce()?;
        out.reserve(HEADER_LEN + plaintext.len() + TAG_LEN);
        out.push(ENVELOPE_VERSION);
        out.extend_from_slice(&self.id.0.to_be_bytes());
        out.extend_from_slice(&nonce);
        let result = self.seal_appended(subject, nonce, plaintext, out);
        if result.is_err() {
            out.truncate(out.len() - HEADER_LEN);
        }
        result
    }

    /// Encrypts one record bound to `subject` and appends `ciphertext | tag` to `out`; returns
    /// the nonce counter, which the caller stores beside the record (see the module docs).
    ///
    /// # Errors
    /// As [`Sealer::seal`]; `out` is unchanged on error.
    pub fn seal_detached(
        &mut self,
        subject: &str,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<u32> {
        // SEALER_LIMIT is 2^31, so a counter below it fits in 32 bits.
        let counter =
            u32::try_from(self.next).map_err(|_| Refusal::CounterExhausted { key: self.id })?;
        let nonce = self.nonce()?;
        self.seal_appended(subject, nonce, plaintext, out)?;
        Ok(counter)
    }

    /// The next nonce: 4 zero bytes and the counter; refuses past [`SEALER_LIMIT`].
    fn nonce(&self) -> Result<[u8; NONCE_LEN]> {
        if self.next >= SEALER_LIMIT {
            return Err(Refusal::EncryptionLimit {
                key: self.id,
                limit: SEALER_LIMIT,
            }
            .into());
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce[4..].copy_from_slice(&self.next.to_be_bytes());
        Ok(nonce)
    }

    /// Appends `ciphertext | tag` of `plaintext` under `nonce` to `out` and moves the counter
    /// on. On error `out` is as it was on entry.
    fn seal_appended(
        &mut self,
        subject: &str,
        nonce: [u8; NONCE_LEN],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<()> {
        aad_subject_into(&mut self.aad, subject)?;
        // Room first: `out` must not reallocate while it holds clear bytes, or a copy of them
        // would be left in freed memory.
        out.reserve(plaintext.len() + TAG_LEN);
        let start = out.len();
        out.extend_from_slice(plaintext);
        let sealed = self.key.seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(self.aad.as_slice()),
            &mut out[start..],
        );
        match sealed {
            Ok(tag) => {
                out.extend_from_slice(tag.as_ref());
                self.next += 1;
                Ok(())
            }
            Err(_) => {
                // Never leave clear bytes behind in the caller's buffer.
                zeroize::Zeroize::zeroize(&mut out[start..]);
                out.truncate(start);
                Err(Error::Provider("aes-256-gcm seal"))
            }
        }
    }
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Sealer({}, {} purpose, {} encryptions, key <redacted>)",
            self.id, self.purpose, self.next
        )
    }
}

/// Decrypts records of one data key and purpose.
pub struct Opener {
    key: LessSafeKey,
    id: DataKeyId,
    purpose: KeyPurpose,
}

impl Opener {
    /// Builds an opener from an unwrapped data key.
    ///
    /// # Errors
    /// [`Error::Provider`] if the AEAD context cannot be built.
    pub fn new(id: DataKeyId, purpose: KeyPurpose, key: &DataKey) -> Result<Self> {
        Ok(Opener {
            key: aead_key(key)?,
            id,
            purpose,
        })
    }

    /// The key this opener decrypts with.
    pub fn key_id(&self) -> DataKeyId {
        self.id
    }

    /// The purpose of that key, as the keyring recorded it when the opener was built.
    pub fn purpose(&self) -> KeyPurpose {
        self.purpose
    }

    /// Decrypts an envelope that must belong to `subject`.
    ///
    /// # Errors
    /// [`Error::Integrity`] for anything that does not verify: another card, another key,
    /// another purpose, a flipped byte, an unknown version or a truncated record.
    pub fn open(&self, subject: &str, envelope: &Envelope) -> Result<Plaintext> {
        let b = envelope.as_bytes();
        if envelope.key_id()? != self.id {
            return Err(Error::Integrity);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&b[5..HEADER_LEN]);
        self.open_sealed(subject, nonce, &b[HEADER_LEN..])
    }
}

impl Opener {
    /// Decrypts a detached record (`ciphertext | tag`, sealed with nonce `counter`) that must
    /// belong to `subject`.
    ///
    /// # Errors
    /// [`Error::Integrity`] for anything that does not verify.
    pub fn open_detached(&self, subject: &str, counter: u32, sealed: &[u8]) -> Result<Plaintext> {
        if sealed.len() < TAG_LEN {
            return Err(Error::Integrity);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce[4..].copy_from_slice(&u64::from(counter).to_be_bytes());
        self.open_sealed(subject, nonce, sealed)
    }

    /// The one decryption of both forms: `sealed` (`ciphertext | tag`) under `nonce`, with the
    /// AAD of `subject`, this key and its purpose, into a zeroizing buffer.
    fn open_sealed(
        &self,
        subject: &str,
        nonce: [u8; NONCE_LEN],
        sealed: &[u8],
    ) -> Result<Plaintext> {
        let mut aad = Vec::with_capacity(AAD_LABEL.len() + 8 + subject.len());
        aad_into(&mut aad, self.purpose, self.id, subject).map_err(|_| Error::Integrity)?;
        let mut buf = Zeroizing::new(sealed.to_vec());
        let len = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad),
                &mut buf[..],
            )
            .map_err(|_| Error::Integrity)?
            .len();
        buf.truncate(len);
        Ok(Plaintext::new(buf))
    }
}

impl fmt::Debug for Opener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Opener({}, {} purpose, key <redacted>)",
            self.id, self.purpose
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::DataKey;

    fn key(byte: u8) -> DataKey {
        DataKey::from_bytes([byte; 32])
    }

    fn sealer(byte: u8, id: u32) -> Sealer {
        Sealer::new(
            DataKeyId(id),
            KeyPurpose::Code,
            FreshDataKey::from_generated(key(byte)),
        )
        .unwrap()
    }

    /// Vectors computed independently with Python's `cryptography` (AESGCM), from the layout in
    /// the module docs:
    /// key = 00 01 .. 1f, id 7, purpose code, subject "8039000000000000001", counter 0 and 1.
    #[test]
    fn known_answer_vectors() {
        let mut k = [0u8; 32];
        for (i, b) in k.iter_mut().enumerate() {
            *b = i as u8;
        }
        let mut s = Sealer::new(
            DataKeyId(7),
            KeyPurpose::Code,
            FreshDataKey::from_generated(DataKey::from_bytes(k)),
        )
        .unwrap();
        let e0 = s
            .seal(
                "8039000000000000001",
                &Plaintext::from_slice(b"12345|87654321"),
            )
            .unwrap();
        let e1 = s
            .seal("8039000000000000001", &Plaintext::from_slice(b""))
            .unwrap();
        assert_eq!(hex::encode(e0.as_bytes()), KAT_0);
        assert_eq!(hex::encode(e1.as_bytes()), KAT_1);
        let o = Opener::new(DataKeyId(7), KeyPurpose::Code, &DataKey::from_bytes(k)).unwrap();
        let p = o
            .open(
                "8039000000000000001",
                &Envelope::from_bytes(hex::decode(KAT_0).unwrap()),
            )
            .unwrap();
        assert_eq!(p.expose_secret(), b"12345|87654321");
    }

    const KAT_0: &str = "01000000070000000000000000000000003f8e86ea8050bb8a3e9d9d062a1d5af8963ecfe25a7f87dddd2366271420";
    const KAT_1: &str = "010000000700000000000000000000000106584bec97cff4ada05122bdc7455f93";

    #[test]
    fn round_trip_and_counter_nonces() {
        let mut s = sealer(1, 3);
        let a = s.seal("A1", &Plaintext::from_slice(b"same")).unwrap();
        let b = s.seal("A1", &Plaintext::from_slice(b"same")).unwrap();
        assert_ne!(
            a, b,
            "two seals of the same record must differ (distinct nonces)"
        );
        assert_eq!(&a.as_bytes()[5..17], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b.as_bytes()[5..17], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(s.encryptions(), 2);
        let o = Opener::new(DataKeyId(3), KeyPurpose::Code, &key(1)).unwrap();
        assert_eq!(o.open("A1", &a).unwrap().expose_secret(), b"same");
        assert_eq!(o.open("A1", &b).unwrap().expose_secret(), b"same");
    }

    #[test]
    fn moved_record_does_not_decrypt() {
        let mut s = sealer(1, 3);
        let e = s
            .seal("CARD-1", &Plaintext::from_slice(b"12345|12345678"))
            .unwrap();
        // Another card.
        let o = Opener::new(DataKeyId(3), KeyPurpose::Code, &key(1)).unwrap();
        assert!(matches!(o.open("CARD-2", &e), Err(Error::Integrity)));
        // Another key id, same key bytes (relabelled record).
        let mut relabelled = e.as_bytes().to_vec();
        relabelled[1..5].copy_from_slice(&4u32.to_be_bytes());
        let o4 = Opener::new(DataKeyId(4), KeyPurpose::Code, &key(1)).unwrap();
        assert!(matches!(
            o4.open("CARD-1", &Envelope::from_bytes(relabelled)),
            Err(Error::Integrity)
        ));
        // Another key.
        let other = Opener::new(DataKeyId(3), KeyPurpose::Code, &key(2)).unwrap();
        assert!(matches!(other.open("CARD-1", &e), Err(Error::Integrity)));
        // Another purpose.
        let holder = Opener::new(DataKeyId(3), KeyPurpose::Holder, &key(1)).unwrap();
        assert!(matches!(holder.open("CARD-1", &e), Err(Error::Integrity)));
    }

    #[test]
    fn every_flipped_byte_is_an_integrity_error() {
        let mut s = sealer(9, 11);
        let e = s
            .seal("X", &Plaintext::from_slice(b"54321|11223344"))
            .unwrap();
        let o = Opener::new(DataKeyId(11), KeyPurpose::Code, &key(9)).unwrap();
        for i in 0..e.as_bytes().len() {
            for bit in [0x01u8, 0x80] {
                let mut t = e.as_bytes().to_vec();
                t[i] ^= bit;
                let r = o.open("X", &Envelope::from_bytes(t));
                assert!(
                    matches!(r, Err(Error::Integrity)),
                    "byte {i} bit {bit:#x}: {r:?}"
                );
            }
        }
        for n in 0..e.as_bytes().len() {
            let t = e.as_bytes()[..n].to_vec();
            assert!(matches!(
                o.open("X", &Envelope::from_bytes(t)),
                Err(Error::Integrity)
            ));
        }
    }

    #[test]
    fn sealer_and_opener_debug_show_no_key() {
        let s = sealer(0xA5, 1);
        let o = Opener::new(DataKeyId(1), KeyPurpose::Code, &key(0xA5)).unwrap();
        let all = format!("{s:?} {o:?} {s:#?}");
        assert!(
            !all.to_lowercase().contains("a5a5") && !all.contains("165"),
            "{all}"
        );
    }

    #[test]
    fn the_detached_form_is_the_same_encryption_as_the_full_envelope() {
        let mut full = sealer(3, 9);
        let mut detached = sealer(3, 9);
        let opener = Opener::new(DataKeyId(9), KeyPurpose::Code, &key(3)).unwrap();
        for i in 0..3u32 {
            let env = full
                .seal(
                    "8039000000000000001",
                    &Plaintext::from_slice(b"12345|87654321"),
                )
                .unwrap();
            let mut out = vec![0xAA];
            let counter = detached
                .seal_detached("8039000000000000001", b"12345|87654321", &mut out)
                .unwrap();
            assert_eq!(counter, i);
            assert_eq!(out[0], 0xAA, "bytes before are kept");
            assert_eq!(&out[1..], &env.as_bytes()[HEADER_LEN..]);
            let clear = opener
                .open_detached("8039000000000000001", counter, &out[1..])
                .unwrap();
            assert_eq!(clear.expose_secret(), b"12345|87654321");
            // Another card, another counter or a flipped byte: nothing opens.
            assert!(opener
                .open_detached("8039000000000000002", counter, &out[1..])
                .is_err());
            assert!(opener
                .open_detached("8039000000000000001", counter + 1, &out[1..])
                .is_err());
            let mut bad = out[1..].to_vec();
            bad[0] ^= 1;
            assert!(opener
                .open_detached("8039000000000000001", counter, &bad)
                .is_err());
            assert!(opener
                .open_detached("8039000000000000001", counter, &[0u8; 3])
                .is_err());
        }
    }
}
