//! The keyring: the data keys of the vault, each stored wrapped under a KEK term.
//!
//! The keyring is public metadata — ids, purposes, wrapped bytes, KCVs, counts — and can be
//! stored and shown as it is. Clear keys exist only while an [`Opener`] or [`Sealer`] is alive.
//! Terms themselves live in the HSM; the keyring knows which term wraps each data key, so it can
//! rewrap the stragglers after a rotation and refuse to retire a term that still wraps a key.

use crate::clock::Clock;
use crate::envelope::{DataKeyId, Opener, Sealer};
use crate::error::{Error, Missing, Refusal, Result};
use crate::hsm::{Hsm, KeyPurpose, TermId, TermState, WrappedKey};
use crate::kcv::Kcv;
use crate::secret::DataKey;
use crate::store::{Batch, Store, Tree};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One data key as the keyring records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataKeyRecord {
    /// Its id, written into every envelope it seals.
    pub id: DataKeyId,
    /// Its one purpose.
    pub purpose: KeyPurpose,
    /// The key wrapped under a KEK term.
    pub wrapped: WrappedKey,
    /// Created at, seconds since the Unix epoch.
    pub created_unix: u64,
    /// Records sealed under it (from [`Keyring::record_encryptions`]).
    pub encryptions: u64,
}

impl DataKeyRecord {
    /// The key check value of the clear key.
    pub fn kcv(&self) -> Kcv {
        self.wrapped.kcv
    }
}

/// All data keys of a vault.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keyring {
    keys: BTreeMap<DataKeyId, DataKeyRecord>,
    next_id: u32,
}

/// What a rewrap pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RewrapReport {
    /// The term every data key is now wrapped under.
    pub active: TermId,
    /// Data keys rewrapped by this pass.
    pub rewrapped: usize,
    /// Data keys that were already under the active term.
    pub unchanged: usize,
}

/// Key of the keyring in [`Tree::Meta`].
const KEYRING_KEY: &[u8] = b"keyring";

impl Keyring {
    /// An empty keyring.
    pub fn new() -> Self {
        Keyring::default()
    }

    /// Reads the keyring from the store (empty if none was saved yet).
    ///
    /// # Errors
    /// Store errors; [`Error::Storage`] if the stored keyring is unreadable.
    pub fn load(store: &dyn Store) -> Result<Self> {
        match store.get(Tree::Meta, KEYRING_KEY)? {
            None => Ok(Keyring::new()),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| Error::Storage(format!("the stored keyring is unreadable: {e}"))),
        }
    }

    /// Adds the write of this keyring to `batch` (so it lands with the change that made it).
    ///
    /// # Errors
    /// [`Error::Storage`] if it cannot be encoded.
    pub fn save_into(&self, batch: &mut Batch) -> Result<()> {
        let bytes = serde_json::to_vec(self)
            .map_err(|e| Error::Storage(format!("cannot encode the keyring: {e}")))?;
        batch.put(Tree::Meta, KEYRING_KEY.to_vec(), bytes);
        Ok(())
    }

    /// The single key of a single-key purpose (index, audit, import): the newest one.
    pub fn newest(&self, purpose: KeyPurpose) -> Option<&DataKeyRecord> {
        self.keys.values().rev().find(|r| r.purpose == purpose)
    }

    /// Asks the HSM for a new data key, records its wrapped form (created at `clock`'s time)
    /// and returns the only sealer that will ever encrypt under it.
    ///
    /// # Errors
    /// [`Error::Sealed`] and provider errors from the HSM; [`Refusal::KeyringFull`] when the id
    /// space is exhausted.
    pub fn create(
        &mut self,
        hsm: &dyn Hsm,
        purpose: KeyPurpose,
        clock: &dyn Clock,
    ) -> Result<Sealer> {
        let id = DataKeyId(self.next_id.checked_add(1).ok_or(Refusal::KeyringFull)?);
        let (key, wrapped) = hsm.generate_data_key(purpose)?;
        let sealer = Sealer::new(id, purpose, key)?;
        self.keys.insert(
            id,
            DataKeyRecord {
                id,
                purpose,
                wrapped,
                created_unix: clock.now_unix(),
                encryptions: 0,
            },
        );
        self.next_id = id.0;
        Ok(sealer)
    }

    /// Adds a sealer's count of encryptions to its key's record.
    ///
    /// # Errors
    /// [`Missing::DataKey`] for an unknown key.
    pub fn record_encryptions(&mut self, sealer: &Sealer) -> Result<()> {
        let rec = self
            .keys
            .get_mut(&sealer.key_id())
            .ok_or(Missing::DataKey(sealer.key_id()))?;
        rec.encryptions = rec.encryptions.max(sealer.encryptions());
        Ok(())
    }

    /// Forgets a key that sealed nothing that is kept (the key of a batch rejected or
    /// abandoned while staging). Returns whether it was there.
    pub fn discard(&mut self, id: DataKeyId) -> bool {
        self.keys.remove(&id).is_some()
    }

    /// One key's record.
    pub fn get(&self, id: DataKeyId) -> Option<&DataKeyRecord> {
        self.keys.get(&id)
    }

    /// Every key, in id order.
    pub fn iter(&self) -> impl Iterator<Item = &DataKeyRecord> {
        self.keys.values()
    }

    /// Number of data keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when there are no data keys.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Unwraps a data key (for HMAC purposes or to build an opener).
    ///
    /// # Errors
    /// [`Missing::DataKey`] for an unknown key; HSM errors from unwrapping.
    pub fn unwrap(&self, hsm: &dyn Hsm, id: DataKeyId) -> Result<DataKey> {
        let rec = self.keys.get(&id).ok_or(Missing::DataKey(id))?;
        hsm.unwrap_data_key(&rec.wrapped)
    }

    /// An opener for the records sealed under `id`.
    ///
    /// # Errors
    /// As [`Keyring::unwrap`].
    pub(crate) fn opener(&self, hsm: &dyn Hsm, id: DataKeyId) -> Result<Opener> {
        let rec = self.keys.get(&id).ok_or(Missing::DataKey(id))?;
        let key = hsm.unwrap_data_key(&rec.wrapped)?;
        Opener::new(id, rec.purpose, &key)
    }

    /// How many data keys each term wraps.
    pub fn count_by_term(&self) -> BTreeMap<TermId, usize> {
        let mut m = BTreeMap::new();
        for rec in self.keys.values() {
            *m.entry(rec.wrapped.term).or_insert(0) += 1;
        }
        m
    }

    /// Rewraps, inside the HSM, every data key not yet under the active term.
    ///
    /// The keyring is updated key by key, so a pass interrupted by an error leaves every key
    /// wrapped under either its old or the active term — both unwrap — and can simply be run
    /// again.
    ///
    /// # Errors
    /// HSM errors; [`Error::Refusal`] if the HSM reports no active term.
    pub fn rewrap_to_active(&mut self, hsm: &dyn Hsm) -> Result<RewrapReport> {
        let active = hsm
            .status()
            .terms
            .iter()
            .find(|t| t.state == TermState::Active)
            .map(|t| t.id)
            .ok_or(Refusal::NoActiveTerm)?;
        let mut report = RewrapReport {
            active,
            rewrapped: 0,
            unchanged: 0,
        };
        for rec in self.keys.values_mut() {
            if rec.wrapped.term == active {
                report.unchanged += 1;
                continue;
            }
            rec.wrapped = hsm.rewrap_data_key(&rec.wrapped)?;
            report.rewrapped += 1;
        }
        Ok(report)
    }

    /// Data keys not wrapped under `term`.
    pub fn count_not_under(&self, term: TermId) -> usize {
        self.keys
            .values()
            .filter(|r| r.wrapped.term != term)
            .count()
    }

    /// Rewraps, inside the HSM, up to `max` data keys not yet under `term` (which must be the
    /// HSM's active term: the HSM wraps under its active term). Returns how many it rewrapped.
    /// For the chunked rewrap job of [`crate::ceremony`], which saves the keyring after each
    /// call; the key material is unchanged, so records keep opening throughout.
    ///
    /// # Errors
    /// HSM errors; [`Error::Refusal`] if the HSM wrapped under another term than `term`
    /// (another rotation happened meanwhile) — the keyring is then unchanged for that key.
    pub fn rewrap_some(&mut self, hsm: &dyn Hsm, term: TermId, max: usize) -> Result<usize> {
        let mut n = 0;
        for rec in self.keys.values_mut() {
            if n >= max {
                break;
            }
            if rec.wrapped.term == term {
                continue;
            }
            let wrapped = hsm.rewrap_data_key(&rec.wrapped)?;
            if wrapped.term != term {
                return Err(Refusal::RewrapMismatch {
                    key: rec.id,
                    got: wrapped.term,
                    want: term,
                }
                .into());
            }
            rec.wrapped = wrapped;
            n += 1;
        }
        Ok(n)
    }

    /// Retires `term` in the HSM once no data key of this keyring is wrapped under it.
    ///
    /// # Errors
    /// [`Refusal::TermInUse`] with how many data keys still use the term; HSM errors.
    pub fn retire_term(&self, hsm: &dyn Hsm, term: TermId) -> Result<()> {
        let in_use = self.count_by_term().get(&term).copied().unwrap_or(0);
        if in_use > 0 {
            return Err(Refusal::TermInUse {
                term,
                data_keys: in_use as u64,
            }
            .into());
        }
        hsm.retire_term(term)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use crate::hsm_double::DoubleHsm;
    use crate::secret::Plaintext;

    #[test]
    fn create_seal_open_through_the_keyring() {
        let hsm = DoubleHsm::new();
        let mut ring = Keyring::new();
        let mut sealer = ring.create(&hsm, KeyPurpose::Code, &SystemClock).unwrap();
        let e = sealer
            .seal("S1", &Plaintext::from_slice(b"11111|22222222"))
            .unwrap();
        ring.record_encryptions(&sealer).unwrap();
        assert_eq!(ring.get(sealer.key_id()).unwrap().encryptions, 1);
        let opener = ring.opener(&hsm, e.key_id().unwrap()).unwrap();
        assert_eq!(
            opener.open("S1", &e).unwrap().expose_secret(),
            b"11111|22222222"
        );
        let key = ring.unwrap(&hsm, sealer.key_id()).unwrap();
        assert_eq!(key.kcv(), ring.get(sealer.key_id()).unwrap().kcv());
    }

    #[test]
    fn rewrap_then_retire() {
        let hsm = DoubleHsm::new();
        let mut ring = Keyring::new();
        let a = ring
            .create(&hsm, KeyPurpose::Code, &SystemClock)
            .unwrap()
            .key_id();
        let b = ring
            .create(&hsm, KeyPurpose::Index, &SystemClock)
            .unwrap()
            .key_id();
        let kcv_a = ring.unwrap(&hsm, a).unwrap().kcv();
        let old = hsm.status().terms[0].id;
        hsm.rotate().unwrap();
        // Old-term keys still unwrap before the rewrap.
        assert_eq!(ring.unwrap(&hsm, a).unwrap().kcv(), kcv_a);
        let refused = ring.retire_term(&hsm, old).unwrap_err().to_string();
        assert!(refused.contains("2 data key(s)"), "{refused}");
        let report = ring.rewrap_to_active(&hsm).unwrap();
        assert_eq!((report.rewrapped, report.unchanged), (2, 0));
        ring.retire_term(&hsm, old).unwrap();
        assert_eq!(ring.unwrap(&hsm, a).unwrap().kcv(), kcv_a);
        assert!(ring.unwrap(&hsm, b).is_ok());
        assert_eq!(ring.rewrap_to_active(&hsm).unwrap().rewrapped, 0);
    }

    #[test]
    fn keyring_round_trips_through_json() {
        let hsm = DoubleHsm::new();
        let mut ring = Keyring::new();
        ring.create(&hsm, KeyPurpose::Audit, &SystemClock).unwrap();
        let json = serde_json::to_string(&ring).unwrap();
        let back: Keyring = serde_json::from_str(&json).unwrap();
        assert_eq!(back, ring);
    }
}
