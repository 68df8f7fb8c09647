//! The custody seam: what plico asks of a hardware security module.
//!
//! The root key and the key-encryption keys (KEK *terms*) live inside the HSM and never come
//! out. What crosses this trait is: custodian shares going in (to unseal or rekey), fresh data
//! keys coming out together with their wrapped form, wrapped data keys going in to be unwrapped
//! or rewrapped, and public descriptions of terms (id, state, key check value).
//!
//! Each wrapped data key is bound to its purpose: a provider wraps each purpose under its own
//! wrapping key (derived from, or stored beside, the term's KEK), so a code key cannot be
//! unwrapped as an audit key.
//!
//! Implementations: `hsm_sim::SimulatedHsm` (a software HSM sealed by Shamir shares), and a test
//! double inside this crate's tests. A PKCS#11 provider can implement the same trait.

use crate::error::{Error, Result};
use crate::kcv::Kcv;
use crate::secret::{DataKey, FreshDataKey};
use secrecy::SecretString;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// What a key is for. Every key has exactly one purpose, bound into its wrapping and into the
/// AAD of everything it encrypts. The names are persisted: never rename them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyPurpose {
    /// Encrypts PIN/PUK records.
    Code,
    /// Encrypts holders' personal data.
    Holder,
    /// HMAC key of the blind indexes over holder data.
    Index,
    /// HMAC key of the audit chain's checkpoints.
    Audit,
    /// Decrypts manufacturer files sent to plico's import recipient.
    Import,
}

impl KeyPurpose {
    /// Every purpose, in a fixed order.
    pub const ALL: [KeyPurpose; 5] = [
        KeyPurpose::Code,
        KeyPurpose::Holder,
        KeyPurpose::Index,
        KeyPurpose::Audit,
        KeyPurpose::Import,
    ];

    /// The persisted name (also used in KDF labels).
    pub fn as_str(self) -> &'static str {
        match self {
            KeyPurpose::Code => "code",
            KeyPurpose::Holder => "holder",
            KeyPurpose::Index => "index",
            KeyPurpose::Audit => "audit",
            KeyPurpose::Import => "import",
        }
    }

    /// One-byte tag used in binary layouts. Persisted: never renumber.
    pub fn tag(self) -> u8 {
        match self {
            KeyPurpose::Code => 1,
            KeyPurpose::Holder => 2,
            KeyPurpose::Index => 3,
            KeyPurpose::Audit => 4,
            KeyPurpose::Import => 5,
        }
    }

    /// The purpose with the given tag.
    pub fn from_tag(tag: u8) -> Option<KeyPurpose> {
        KeyPurpose::ALL.into_iter().find(|p| p.tag() == tag)
    }
}

impl fmt::Display for KeyPurpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identifies a KEK term inside the HSM: a handle, never key material.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TermId(pub u32);

impl fmt::Display for TermId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "term {}", self.0)
    }
}

/// Where a KEK term is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TermState {
    /// New data keys are wrapped under this term. Exactly one term is active.
    Active,
    /// Still unwraps data keys wrapped under it, wraps nothing new.
    DecryptOnly,
    /// Destroyed: its key material is gone; only its id and KCV remain on record.
    Retired,
}

/// The public description of a KEK term.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermInfo {
    /// The term's handle.
    pub id: TermId,
    /// Its state.
    pub state: TermState,
    /// Key check value of the term's KEK.
    pub kcv: Kcv,
    /// When it was created, seconds since the Unix epoch.
    pub created_unix: u64,
}

/// Where an HSM stands: sealed or not, how far an unseal has come, and its terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HsmStatus {
    /// Which provider this is (e.g. `simulated`).
    pub provider: String,
    /// True while the HSM holds no usable keys.
    pub sealed: bool,
    /// Distinct valid shares submitted towards the current unseal.
    pub progress: u8,
    /// Shares needed to unseal.
    pub threshold: u8,
    /// Shares issued in the current set.
    pub shares: u8,
    /// Identifier of the current share set (changes at every rekey).
    pub share_set: String,
    /// True for a development HSM (1-of-1 share allowed): never for production.
    pub dev: bool,
    /// Key check value of the root key.
    pub root_kcv: Kcv,
    /// Every term, retired ones included, oldest first.
    pub terms: Vec<TermInfo>,
    /// Counts the HSM's state changes; never goes down. The vault remembers the highest it has
    /// seen, so an older copy of the HSM's state put back is refused.
    pub generation: u64,
}

/// The audit chain's last checkpoint, kept by the HSM under its own integrity protection, so
/// that a store rolled back or truncated behind the HSM's back is found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditAnchor {
    /// Sequence number of the checkpointed event.
    pub seq: u64,
    /// Hex SHA-256 of its stored bytes.
    pub hash: String,
}

/// The answer to one submitted share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnsealProgress {
    /// Still sealed after this share?
    pub sealed: bool,
    /// Distinct valid shares held towards the threshold (0 once unsealed).
    pub progress: u8,
    /// Shares needed.
    pub threshold: u8,
}

/// What a rekey produced (the shares themselves went to the delivery callback).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RekeyOutcome {
    /// The new share set's identifier.
    pub share_set: String,
    /// Shares issued.
    pub shares: u8,
    /// Shares needed to unseal.
    pub threshold: u8,
    /// Key check value of the new root key.
    pub root_kcv: Kcv,
}

/// A data key wrapped (RFC 5649, AES key wrap with padding) under a KEK term.
///
/// Public: it can be stored and shown. Its binary layout (version 1) is
/// `1 | term u32 BE | purpose u8 | kcv 3 bytes | len u16 BE | wrapped bytes`.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKey {
    /// The term whose KEK wrapped it.
    pub term: TermId,
    /// The key's one purpose.
    pub purpose: KeyPurpose,
    /// Key check value of the clear key, checked again after unwrapping.
    pub kcv: Kcv,
    /// RFC 5649 output.
    pub bytes: Vec<u8>,
}

const WRAPPED_KEY_VERSION: u8 = 1;
const WRAPPED_KEY_HEADER: usize = 1 + 4 + 1 + 3 + 2;

impl WrappedKey {
    /// The binary layout, for storage.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(WRAPPED_KEY_HEADER + self.bytes.len());
        out.push(WRAPPED_KEY_VERSION);
        out.extend_from_slice(&self.term.0.to_be_bytes());
        out.push(self.purpose.tag());
        out.extend_from_slice(&self.kcv.as_bytes());
        // Wrapped keys are 40 bytes; a length over u16 is impossible for a 32-byte key.
        let len = u16::try_from(self.bytes.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&self.bytes);
        out
    }

    /// Parses the binary layout.
    ///
    /// # Errors
    /// [`Error::Integrity`] for any layout that is not a version-1 wrapped key: a stored
    /// wrapped key that does not parse has been damaged or tampered with.
    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        if b.len() < WRAPPED_KEY_HEADER || b[0] != WRAPPED_KEY_VERSION {
            return Err(Error::Integrity);
        }
        let term = TermId(u32::from_be_bytes([b[1], b[2], b[3], b[4]]));
        let purpose = KeyPurpose::from_tag(b[5]).ok_or(Error::Integrity)?;
        let kcv = Kcv::from_bytes([b[6], b[7], b[8]]);
        let len = usize::from(u16::from_be_bytes([b[9], b[10]]));
        let bytes = &b[WRAPPED_KEY_HEADER..];
        if bytes.len() != len {
            return Err(Error::Integrity);
        }
        Ok(WrappedKey {
            term,
            purpose,
            kcv,
            bytes: bytes.to_vec(),
        })
    }
}

impl fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "WrappedKey({} key, {}, kcv {}, {} bytes)",
            self.purpose,
            self.term,
            self.kcv,
            self.bytes.len()
        )
    }
}

impl Serialize for WrappedKey {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.to_bytes()))
    }
}

impl<'de> Deserialize<'de> for WrappedKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let bytes = hex::decode(s).map_err(serde::de::Error::custom)?;
        WrappedKey::from_bytes(&bytes).map_err(serde::de::Error::custom)
    }
}

/// Receives the new custodian shares of a rekey. It must store or hand them out durably before
/// returning `Ok`; only then does the HSM commit the new root key. An `Err` aborts the rekey and
/// leaves the old shares valid.
pub type ShareDelivery<'a> = dyn FnMut(&[SecretString]) -> Result<()> + 'a;

/// A hardware security module as plico uses it.
///
/// Methods take `&self`: providers synchronise internally so one instance can be shared as
/// `Arc<dyn Hsm>`. Every key operation other than `status`, `unseal` and `fill_random` answers
/// [`Error::Sealed`] while sealed.
pub trait Hsm: Send + Sync + fmt::Debug {
    /// Public state: sealed or not, unseal progress, terms with KCVs. Never key bytes.
    fn status(&self) -> HsmStatus;

    /// Submits one custodian share towards unsealing.
    ///
    /// # Errors
    /// [`Error::Share`] ([`crate::ShareRefusal`]) when the share is malformed, corrupted, from
    /// another share set, or a duplicate; the HSM stays sealed and keeps the shares it already had. If the share that
    /// completes the threshold still does not open the HSM (a damaged state), the submitted
    /// shares are all dropped and the unseal starts over.
    fn unseal(&self, share: &SecretString) -> Result<UnsealProgress>;

    /// Forgets the shares submitted so far without unsealing.
    fn reset_unseal(&self);

    /// Wipes every key from memory; the HSM answers [`Error::Sealed`] until unsealed again.
    fn seal(&self);

    /// Makes a new data key for `purpose`, wrapped under the active term.
    ///
    /// # Errors
    /// [`Error::Sealed`]; [`Error::Provider`] if the random generator fails.
    fn generate_data_key(&self, purpose: KeyPurpose) -> Result<(FreshDataKey, WrappedKey)>;

    /// Unwraps a data key wrapped under an active or decrypt-only term.
    ///
    /// # Errors
    /// [`Error::Integrity`] if the wrapped bytes, term, purpose or KCV do not match;
    /// [`Error::Missing`] ([`crate::Missing::Term`]) for a retired or unknown term.
    fn unwrap_data_key(&self, wrapped: &WrappedKey) -> Result<DataKey>;

    /// Rewraps a data key under the active term without the key leaving the HSM.
    ///
    /// # Errors
    /// As [`Hsm::unwrap_data_key`].
    fn rewrap_data_key(&self, wrapped: &WrappedKey) -> Result<WrappedKey>;

    /// Makes a new KEK term active; the previous active term becomes decrypt-only.
    fn rotate(&self) -> Result<TermInfo>;

    /// Destroys a decrypt-only term's key material. The caller checks first that no data key is
    /// still wrapped under it ([`crate::Keyring::retire_term`] does).
    ///
    /// # Errors
    /// [`crate::Refusal::TermActive`] for the active term, [`crate::Refusal::TermRetired`] for
    /// a retired one; [`crate::Missing::Term`] for an unknown one.
    fn retire_term(&self, term: TermId) -> Result<()>;

    /// Replaces the root key and the custodian shares. Needs `threshold` current shares in
    /// `current`; the new shares go to `deliver` before anything is committed.
    ///
    /// # Errors
    /// [`Error::Sealed`] while sealed; [`Error::Share`] if `current` does not reconstruct the
    /// unseal key; [`crate::Refusal::Threshold`] for an unusable `shares`/`threshold`; whatever
    /// `deliver` returns.
    fn rekey(
        &self,
        current: &[SecretString],
        shares: u8,
        threshold: u8,
        deliver: &mut ShareDelivery<'_>,
    ) -> Result<RekeyOutcome>;

    /// The audit anchor last set, if any.
    ///
    /// # Errors
    /// [`Error::Sealed`].
    fn audit_anchor(&self) -> Result<Option<AuditAnchor>>;

    /// Records the audit chain's newest checkpoint.
    ///
    /// # Errors
    /// [`Error::Sealed`]; [`crate::Refusal::AnchorBackwards`] for an anchor older than the one
    /// held (the anchor only moves forward), [`crate::Refusal::AnchorForked`] for another
    /// anchor at the same event; storage errors.
    fn set_audit_anchor(&self, anchor: &AuditAnchor) -> Result<()>;

    /// Fills `buf` from the HSM's random generator.
    ///
    /// # Errors
    /// [`Error::Provider`] if the generator fails.
    fn fill_random(&self, buf: &mut [u8]) -> Result<()>;
}
