//! A minimal in-memory [`Hsm`] for this crate's unit tests. Not a model of custody: its
//! "shares" are random tokens compared as they are (no Shamir), there is no sealing and no
//! persistence; a rekey checks a quorum of the current tokens, hands out new ones and refuses
//! the old ones from then on. The real simulator is the `hsm-sim` crate.

use crate::error::{Error, Missing, Refusal, Result, ShareRefusal};
use crate::hsm::{
    AuditAnchor, Hsm, HsmStatus, KeyPurpose, RekeyOutcome, ShareDelivery, TermId, TermInfo,
    TermState, UnsealProgress, WrappedKey,
};
use crate::kcv::Kcv;
use crate::secret::{DataKey, FreshDataKey};
use aws_lc_rs::key_wrap::{AesKek, KeyWrapPadded, AES_256};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use secrecy::{ExposeSecret, SecretString};
use std::sync::Mutex;

/// The double's share set: tokens compared as they are.
struct Shares {
    set: String,
    threshold: u8,
    tokens: Vec<String>,
    root_kcv: Kcv,
    rekeys: u32,
}

impl std::fmt::Debug for Shares {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Shares({} of {}, <redacted>)",
            self.threshold,
            self.tokens.len()
        )
    }
}

#[derive(Debug)]
pub(crate) struct DoubleHsm {
    terms: Mutex<Vec<(TermInfo, Option<[u8; 32]>)>>,
    anchor: Mutex<Option<AuditAnchor>>,
    shares: Mutex<Shares>,
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl DoubleHsm {
    pub(crate) fn new() -> Self {
        Self::with_shares(1, 1).0
    }

    /// A double whose current share set is `threshold` of `count` tokens, returned.
    pub(crate) fn with_shares(count: u8, threshold: u8) -> (Self, Vec<SecretString>) {
        let h = DoubleHsm {
            terms: Mutex::new(Vec::new()),
            anchor: Mutex::new(None),
            shares: Mutex::new(Shares {
                set: String::new(),
                threshold,
                tokens: Vec::new(),
                root_kcv: Kcv::from_bytes([0; 3]),
                rekeys: 0,
            }),
        };
        let tokens = h.new_tokens(count);
        h.shares.lock().unwrap().tokens = tokens.clone();
        h.rotate().unwrap();
        (h, tokens.into_iter().map(SecretString::from).collect())
    }

    fn new_tokens(&self, count: u8) -> Vec<String> {
        (0..count)
            .map(|_| {
                let mut t = [0u8; 16];
                self.fill_random(&mut t).unwrap();
                hex::encode(t)
            })
            .collect()
    }

    fn purpose_kek(kek: &[u8; 32], purpose: KeyPurpose) -> [u8; 32] {
        let mut k = *kek;
        k[0] ^= purpose.tag();
        k
    }

    fn kek(&self, term: TermId) -> Result<[u8; 32]> {
        let terms = self.terms.lock().unwrap();
        terms
            .iter()
            .find(|(t, _)| t.id == term)
            .and_then(|(_, k)| *k)
            .ok_or_else(|| Missing::Term(term).into())
    }

    fn active(&self) -> (TermId, [u8; 32]) {
        let terms = self.terms.lock().unwrap();
        let (t, k) = terms
            .iter()
            .find(|(t, _)| t.state == TermState::Active)
            .unwrap();
        (t.id, k.unwrap())
    }

    fn wrap(term: TermId, kek: &[u8; 32], purpose: KeyPurpose, key: &DataKey) -> WrappedKey {
        let mut out = [0u8; 48];
        let n = AesKek::new(&AES_256, &Self::purpose_kek(kek, purpose))
            .unwrap()
            .wrap_with_padding(key.expose_secret(), &mut out)
            .unwrap()
            .len();
        WrappedKey {
            term,
            purpose,
            kcv: key.kcv(),
            bytes: out[..n].to_vec(),
        }
    }
}

impl Hsm for DoubleHsm {
    fn status(&self) -> HsmStatus {
        let (threshold, shares, share_set, root_kcv) = {
            let s = self.shares.lock().unwrap();
            (s.threshold, s.tokens.len() as u8, s.set.clone(), s.root_kcv)
        };
        HsmStatus {
            provider: "test-double".to_string(),
            sealed: false,
            progress: 0,
            threshold,
            shares,
            share_set,
            dev: true,
            root_kcv,
            terms: self
                .terms
                .lock()
                .unwrap()
                .iter()
                .map(|(t, _)| t.clone())
                .collect(),
            generation: 0,
        }
    }
    fn unseal(&self, _share: &SecretString) -> Result<UnsealProgress> {
        Err(Refusal::NoShares.into())
    }
    fn reset_unseal(&self) {}
    fn seal(&self) {}
    fn generate_data_key(&self, purpose: KeyPurpose) -> Result<(FreshDataKey, WrappedKey)> {
        let mut k = [0u8; 32];
        self.fill_random(&mut k)?;
        let key = DataKey::from_bytes(k);
        let (term, kek) = self.active();
        let wrapped = Self::wrap(term, &kek, purpose, &key);
        Ok((FreshDataKey::from_generated(key), wrapped))
    }
    fn unwrap_data_key(&self, w: &WrappedKey) -> Result<DataKey> {
        let kek = self.kek(w.term)?;
        let mut out = [0u8; 48];
        let plain = AesKek::new(&AES_256, &Self::purpose_kek(&kek, w.purpose))
            .unwrap()
            .unwrap_with_padding(&w.bytes, &mut out)
            .map_err(|_| Error::Integrity)?;
        let key = DataKey::from_bytes(plain.try_into().map_err(|_| Error::Integrity)?);
        if key.kcv() != w.kcv {
            return Err(Error::Integrity);
        }
        Ok(key)
    }
    fn rewrap_data_key(&self, w: &WrappedKey) -> Result<WrappedKey> {
        let key = self.unwrap_data_key(w)?;
        let (term, kek) = self.active();
        Ok(Self::wrap(term, &kek, w.purpose, &key))
    }
    fn rotate(&self) -> Result<TermInfo> {
        let mut kek = [0u8; 32];
        self.fill_random(&mut kek)?;
        let mut terms = self.terms.lock().unwrap();
        for (t, _) in terms.iter_mut() {
            if t.state == TermState::Active {
                t.state = TermState::DecryptOnly;
            }
        }
        let info = TermInfo {
            id: TermId(terms.len() as u32 + 1),
            state: TermState::Active,
            kcv: Kcv::of_aes256(&kek),
            created_unix: now_unix(),
        };
        terms.push((info.clone(), Some(kek)));
        Ok(info)
    }
    fn retire_term(&self, term: TermId) -> Result<()> {
        let mut terms = self.terms.lock().unwrap();
        let (t, k) = terms
            .iter_mut()
            .find(|(t, _)| t.id == term)
            .ok_or(Missing::Term(term))?;
        if t.state == TermState::Active {
            return Err(Refusal::TermActive { term }.into());
        }
        t.state = TermState::Retired;
        *k = None;
        Ok(())
    }
    fn rekey(
        &self,
        current: &[SecretString],
        shares: u8,
        threshold: u8,
        deliver: &mut ShareDelivery<'_>,
    ) -> Result<RekeyOutcome> {
        if threshold == 0 || threshold > shares {
            return Err(Refusal::Threshold { threshold, shares }.into());
        }
        let mut held = self.shares.lock().unwrap();
        let mut seen = Vec::new();
        for s in current {
            let at = held
                .tokens
                .iter()
                .position(|t| t == s.expose_secret())
                .ok_or(ShareRefusal::NotCurrent)?;
            if seen.contains(&at) {
                return Err(ShareRefusal::GivenTwice {
                    x: u8::try_from(at + 1).unwrap_or(u8::MAX),
                }
                .into());
            }
            seen.push(at);
        }
        if seen.len() < usize::from(held.threshold) {
            return Err(ShareRefusal::TooFew {
                need: usize::from(held.threshold),
                given: seen.len(),
            }
            .into());
        }
        let tokens = self.new_tokens(shares);
        let secrets: Vec<SecretString> = tokens.iter().cloned().map(SecretString::from).collect();
        deliver(&secrets)?;
        let mut root = [0u8; 32];
        self.fill_random(&mut root)?;
        held.rekeys += 1;
        held.set = format!("double-set-{}", held.rekeys);
        held.threshold = threshold;
        held.tokens = tokens;
        held.root_kcv = Kcv::of_aes256(&root);
        Ok(RekeyOutcome {
            share_set: held.set.clone(),
            shares,
            threshold,
            root_kcv: held.root_kcv,
        })
    }
    fn audit_anchor(&self) -> Result<Option<AuditAnchor>> {
        Ok(self.anchor.lock().unwrap().clone())
    }
    fn set_audit_anchor(&self, anchor: &AuditAnchor) -> Result<()> {
        let mut held = self.anchor.lock().unwrap();
        match held.as_ref() {
            Some(h) if h.seq > anchor.seq => {
                return Err(Refusal::AnchorBackwards {
                    held: h.seq,
                    given: anchor.seq,
                }
                .into())
            }
            Some(h) if h.seq == anchor.seq && h != anchor => {
                return Err(Refusal::AnchorForked { seq: h.seq }.into())
            }
            _ => {}
        }
        *held = Some(anchor.clone());
        Ok(())
    }
    fn fill_random(&self, buf: &mut [u8]) -> Result<()> {
        SystemRandom::new()
            .fill(buf)
            .map_err(|_| Error::Provider("random"))
    }
}
