//! The simulated HSM: unseal, data keys, terms, rekey, seal.
//!
//! One [`SimulatedHsm`] owns one state directory. Every change of state (init, rotate, retire,
//! rekey) is built on a copy of the state, written atomically, and only then adopted in memory:
//! a failed write changes nothing, and a crash leaves the old or the new file.
//!
//! Key derivations (HKDF-SHA256), each with its own label:
//!
//! | key | from | label |
//! |---|---|---|
//! | unseal key | combined shares, salt = set id | `plico-hsm unseal v1` |
//! | state MAC key | root key | `plico-hsm state-mac v1` |
//! | wrapping key of a purpose | term KEK | `plico-hsm wrap v1 <purpose>` |
//!
//! Wrapping each purpose under its own key binds the purpose into every wrapped data key: a code
//! key presented as an audit key fails to unwrap.

use crate::shamir;
use crate::share::{constant_time_eq, Share, PAYLOAD_LEN};
use crate::state::{ShareSet, StateBody, StateFile, TermRecord, FORMAT, VERSION};
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::hkdf::{KeyType, Salt, HKDF_SHA256};
use aws_lc_rs::hmac;
use aws_lc_rs::key_wrap::{AesKek, KeyWrapPadded, AES_256};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use secrecy::SecretString;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};
use vault::lock;
use vault::{
    AuditAnchor, DataKey, Error, FreshDataKey, Hsm, HsmStatus, Kcv, KeyPurpose, Missing, Refusal,
    RekeyOutcome, Result, ShareDelivery, ShareRefusal, TermId, TermInfo, TermState, UnsealProgress,
    WrappedKey, KEY_LEN,
};
use zeroize::Zeroizing;

type Key = Zeroizing<[u8; KEY_LEN]>;

/// Most shares a set can have; submitted shares are held in a vector of this capacity from the
/// start, so a reallocation never leaves a copy of one behind in freed memory.
const MAX_SHARES: usize = 255;

/// Options of [`SimulatedHsm::init`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitOptions {
    /// Shares to issue (n).
    pub shares: u8,
    /// Shares needed to unseal (m); at least 2 unless `dev`.
    pub threshold: u8,
    /// Development mode: allows a threshold of 1. Recorded in the state file for good.
    pub dev: bool,
}

/// What [`SimulatedHsm::init`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitReport {
    /// Key check value of the new root key.
    pub root_kcv: Kcv,
    /// Id of the share set.
    pub share_set: String,
    /// Key check value of the first KEK term.
    pub first_term_kcv: Kcv,
}

/// A named point inside a state write where a crash test can stop the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    /// The new state is built in memory, nothing written.
    BeforeWrite,
    /// Half of the temporary file is written.
    TempHalfWritten,
    /// The temporary file is written, not yet synced.
    TempWritten,
    /// The temporary file is synced, not yet renamed.
    TempSynced,
    /// Renamed over the old state, directory not yet synced.
    Renamed,
    /// Fully committed.
    Committed,
}

impl FaultPoint {
    /// Every point, in the order a write passes them.
    pub const ALL: [FaultPoint; 6] = [
        FaultPoint::BeforeWrite,
        FaultPoint::TempHalfWritten,
        FaultPoint::TempWritten,
        FaultPoint::TempSynced,
        FaultPoint::Renamed,
        FaultPoint::Committed,
    ];
}

/// A callback run at each [`FaultPoint`]; tests use it to abort the process.
pub type FaultHook = Arc<dyn Fn(FaultPoint) + Send + Sync>;

/// Keys held while unsealed. Dropping it wipes them.
struct Unsealed {
    root: Key,
    keks: BTreeMap<u32, Key>,
}

struct Inner {
    file: StateFile,
    unsealed: Option<Unsealed>,
    pending: Vec<Share>,
}

/// A software HSM sealed by custodian shares. See the crate docs.
pub struct SimulatedHsm {
    dir: PathBuf,
    inner: Mutex<Inner>,
    rng: SystemRandom,
    fault: Option<FaultHook>,
}

impl fmt::Debug for SimulatedHsm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sealed = self.lock().unsealed.is_none();
        write!(f, "SimulatedHsm({}, sealed: {sealed})", self.dir.display())
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

struct Len32;
impl KeyType for Len32 {
    fn len(&self) -> usize {
        KEY_LEN
    }
}

fn hkdf32(ikm: &[u8], salt: &[u8], label: &str) -> Result<Key> {
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    let info = [label.as_bytes()];
    Salt::new(HKDF_SHA256, salt)
        .extract(ikm)
        .expand(&info, Len32)
        .and_then(|okm| okm.fill(&mut out[..]))
        .map_err(|_| Error::Provider("hkdf"))?;
    Ok(out)
}

fn gcm_seal(rng: &SystemRandom, key: &[u8; KEY_LEN], aad: &[u8], plain: &[u8]) -> Result<String> {
    let k = UnboundKey::new(&AES_256_GCM, key).map_err(|_| Error::Provider("aes-gcm key"))?;
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill(&mut nonce)
        .map_err(|_| Error::Provider("random"))?;
    let mut buf = Zeroizing::new(plain.to_vec());
    let tag = LessSafeKey::new(k)
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut buf[..],
        )
        .map_err(|_| Error::Provider("aes-gcm seal"))?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&buf);
    out.extend_from_slice(tag.as_ref());
    Ok(hex::encode(out))
}

fn gcm_open(key: &[u8; KEY_LEN], aad: &[u8], sealed_hex: &str) -> Result<Key> {
    let sealed = hex::decode(sealed_hex).map_err(|_| Error::Integrity)?;
    if sealed.len() != NONCE_LEN + KEY_LEN + 16 {
        return Err(Error::Integrity);
    }
    let k = UnboundKey::new(&AES_256_GCM, key).map_err(|_| Error::Provider("aes-gcm key"))?;
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&sealed[..NONCE_LEN]);
    let mut buf = Zeroizing::new(sealed[NONCE_LEN..].to_vec());
    let plain = LessSafeKey::new(k)
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut buf[..],
        )
        .map_err(|_| Error::Integrity)?;
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    out.copy_from_slice(plain);
    Ok(out)
}

fn root_aad(set_id: &str) -> Vec<u8> {
    format!("plico-hsm root v1 set {set_id}").into_bytes()
}

fn kek_aad(term: u32) -> Vec<u8> {
    format!("plico-hsm kek v1 term {term}").into_bytes()
}

fn state_mac(root: &[u8; KEY_LEN], body: &StateBody) -> Result<String> {
    let mac_key = hkdf32(root, &[], "plico-hsm state-mac v1")?;
    let tag = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, &mac_key[..]),
        &body.mac_input()?,
    );
    Ok(hex::encode(tag.as_ref()))
}

fn wrapping_key(kek: &[u8; KEY_LEN], purpose: KeyPurpose) -> Result<Key> {
    hkdf32(kek, &[], &format!("plico-hsm wrap v1 {}", purpose.as_str()))
}

struct NewShareSet {
    set: ShareSet,
    shares: Vec<Share>,
    unseal_key: Key,
}

fn random_key(rng: &SystemRandom) -> Result<Key> {
    let mut k = Zeroizing::new([0u8; KEY_LEN]);
    rng.fill(&mut k[..])
        .map_err(|_| Error::Provider("random"))?;
    Ok(k)
}

/// Makes a new share set: id, shares, digests, and the unseal key they combine to.
fn new_share_set(rng: &SystemRandom, shares: u8, threshold: u8, dev: bool) -> Result<NewShareSet> {
    if (threshold < 2 && !dev) || shares == 0 || threshold == 0 || threshold > shares {
        return Err(Refusal::Threshold { threshold, shares }.into());
    }
    let mut set_id = [0u8; 8];
    rng.fill(&mut set_id)
        .map_err(|_| Error::Provider("random"))?;
    let secret = random_key(rng)?;
    let parts = shamir::split(&secret[..], shares, threshold, &mut |b| {
        rng.fill(b)
            .map_err(|_| "random generator failed".to_string())
    })
    // The threshold was checked above: what is left is the random generator.
    .map_err(|_| Error::Provider("random"))?;
    let mut out = Vec::with_capacity(parts.len());
    let mut digests = BTreeMap::new();
    for (x, y) in parts {
        let mut payload = Zeroizing::new([0u8; PAYLOAD_LEN]);
        payload.copy_from_slice(&y);
        let share = Share::new(set_id, x, threshold, shares, &payload);
        digests.insert(x, hex::encode(share.digest()));
        out.push(share);
    }
    let id = hex::encode(set_id);
    let unseal_key = hkdf32(&secret[..], &set_id, "plico-hsm unseal v1")?;
    Ok(NewShareSet {
        set: ShareSet {
            id,
            threshold,
            shares,
            digests,
        },
        shares: out,
        unseal_key,
    })
}

impl SimulatedHsm {
    /// Name of the state file inside the HSM's directory.
    pub const STATE_FILE: &'static str = "hsm-state.json";

    /// True if `dir` holds an HSM state file.
    pub fn exists(dir: &Path) -> bool {
        dir.join(Self::STATE_FILE).exists()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave `Inner` half-changed: every change is
        // built on a copy and swapped in after the write. So a poisoned lock is still usable.
        lock(&self.inner)
    }

    fn fault_hook(&self) -> impl Fn(FaultPoint) + '_ {
        move |p| {
            if let Some(h) = &self.fault {
                h(p)
            }
        }
    }

    /// Creates a new HSM in `dir` (which must exist and hold no state file): a root key, a first
    /// KEK term, and `opts.shares` custodian shares handed to `deliver` before the state is
    /// written. Returns the HSM sealed.
    ///
    /// # Errors
    /// [`Error::Refusal`] for a state that already exists or unusable options; whatever
    /// `deliver` returns; [`Error::Storage`] if the state cannot be written.
    pub fn init(
        dir: &Path,
        opts: InitOptions,
        deliver: &mut ShareDelivery<'_>,
    ) -> Result<(Self, InitReport)> {
        Self::init_with_fault_hook(dir, opts, deliver, None)
    }

    /// [`SimulatedHsm::init`] with a fault hook (for crash tests).
    ///
    /// # Errors
    /// As [`SimulatedHsm::init`].
    pub fn init_with_fault_hook(
        dir: &Path,
        opts: InitOptions,
        deliver: &mut ShareDelivery<'_>,
        fault: Option<FaultHook>,
    ) -> Result<(Self, InitReport)> {
        if Self::exists(dir) {
            return Err(Refusal::HsmExists {
                place: dir.join(Self::STATE_FILE).display().to_string(),
            }
            .into());
        }
        StateFile::remove_leftover(dir, Self::STATE_FILE)?;
        let rng = SystemRandom::new();
        let set = new_share_set(&rng, opts.shares, opts.threshold, opts.dev)?;
        let root = random_key(&rng)?;
        let kek = random_key(&rng)?;
        let term = TermRecord {
            id: 1,
            state: TermState::Active,
            kcv: Kcv::of_aes256(&kek),
            created_unix: now_unix(),
            sealed_kek: Some(gcm_seal(&rng, &root, &kek_aad(1), &kek[..])?),
        };
        let body = StateBody {
            format: FORMAT.to_string(),
            version: VERSION,
            generation: 1,
            dev: opts.dev,
            root_kcv: Kcv::of_aes256(&root),
            sealed_root: gcm_seal(&rng, &set.unseal_key, &root_aad(&set.set.id), &root[..])?,
            share_set: set.set.clone(),
            terms: vec![term.clone()],
            audit_anchor: None,
        };
        let file = StateFile {
            mac: state_mac(&root, &body)?,
            body,
        };
        let texts: Vec<SecretString> = set.shares.iter().map(Share::to_text).collect();
        deliver(&texts)?;
        let hsm = SimulatedHsm {
            dir: dir.to_path_buf(),
            inner: Mutex::new(Inner {
                file,
                unsealed: None,
                pending: Vec::with_capacity(MAX_SHARES),
            }),
            rng,
            fault,
        };
        let report = {
            let inner = hsm.lock();
            let _dir_synced = inner
                .file
                .write_atomic(dir, Self::STATE_FILE, &hsm.fault_hook())?;
            InitReport {
                root_kcv: inner.file.body.root_kcv,
                share_set: inner.file.body.share_set.id.clone(),
                first_term_kcv: term.kcv,
            }
        };
        Ok((hsm, report))
    }

    /// Creates a **development** HSM in `dir` (made if missing; it must hold no state file):
    /// one share, threshold 1, marked `dev` in its state for good, and returns it unsealed.
    /// The share goes to `keep` before the state is written (so that `serve --dev` can store
    /// it beside the state); tests and benches pass a closure that drops it. Not for
    /// production: whoever reads the kept share holds every key.
    ///
    /// # Errors
    /// As [`SimulatedHsm::init`]; [`Error::Storage`] if `dir` cannot be made; whatever `keep`
    /// returns.
    pub fn dev_keeping_share(
        dir: &Path,
        keep: &mut dyn FnMut(&SecretString) -> Result<()>,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Storage(format!("hsm directory {}: {e}", dir.display())))?;
        let mut share: Option<SecretString> = None;
        let opts = InitOptions {
            shares: 1,
            threshold: 1,
            dev: true,
        };
        let (hsm, _) = Self::init(dir, opts, &mut |shares: &[SecretString]| {
            let [one] = shares else {
                return Err(Refusal::ShareCount {
                    expected: 1,
                    produced: shares.len(),
                }
                .into());
            };
            keep(one)?;
            share = Some(one.clone());
            Ok(())
        })?;
        let share = share.ok_or(Refusal::ShareCount {
            expected: 1,
            produced: 0,
        })?;
        hsm.unseal(&share)?;
        Ok(hsm)
    }

    /// [`SimulatedHsm::dev_keeping_share`] that drops the share: an unsealed development HSM
    /// for tests and benches, which cannot be unsealed again once dropped.
    ///
    /// # Errors
    /// As [`SimulatedHsm::dev_keeping_share`].
    pub fn dev(dir: &Path) -> Result<Self> {
        Self::dev_keeping_share(dir, &mut |_| Ok(()))
    }

    /// Opens an existing HSM, sealed. Removes a temporary file left by an interrupted write.
    ///
    /// # Errors
    /// [`Error::Storage`] if the state file is missing, unreadable or not a state file.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with_fault_hook(dir, None)
    }

    /// [`SimulatedHsm::open`] with a fault hook (for crash tests).
    ///
    /// # Errors
    /// As [`SimulatedHsm::open`].
    pub fn open_with_fault_hook(dir: &Path, fault: Option<FaultHook>) -> Result<Self> {
        StateFile::remove_leftover(dir, Self::STATE_FILE)?;
        let file = StateFile::load(dir, Self::STATE_FILE)?;
        Ok(SimulatedHsm {
            dir: dir.to_path_buf(),
            inner: Mutex::new(Inner {
                file,
                unsealed: None,
                pending: Vec::with_capacity(MAX_SHARES),
            }),
            rng: SystemRandom::new(),
            fault,
        })
    }

    /// The directory holding the state file.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Checks a share against the current set; returns it parsed.
    ///
    /// A share that does not match the set in the state file is refused; since the file may be
    /// what changed, each refusal's text says so too ([`ShareRefusal`]'s display; the file's
    /// path is for the operator's log, not for the custodian's answer, so it is not named).
    fn admit(file: &StateFile, text: &SecretString) -> Result<Share> {
        let share = Share::parse(text).map_err(ShareRefusal::Malformed)?;
        let set = &file.body.share_set;
        let got = hex::encode(share.set);
        if got != set.id {
            return Err(ShareRefusal::ForeignSet {
                got,
                held: set.id.clone(),
            }
            .into());
        }
        if share.threshold != set.threshold || share.shares != set.shares {
            return Err(ShareRefusal::QuorumMismatch {
                x: share.x,
                threshold: share.threshold,
                shares: share.shares,
                set: set.id.clone(),
                set_threshold: set.threshold,
                set_shares: set.shares,
            }
            .into());
        }
        let issued = set
            .digests
            .get(&share.x)
            .ok_or_else(|| ShareRefusal::NoSuchShare {
                set: set.id.clone(),
                x: share.x,
            })?;
        if !constant_time_eq(hex::encode(share.digest()).as_bytes(), issued.as_bytes()) {
            return Err(ShareRefusal::NotIssued {
                set: set.id.clone(),
                x: share.x,
            }
            .into());
        }
        Ok(share)
    }

    /// Rebuilds the unseal key from a quorum and opens the root key, the MAC and the KEKs.
    fn open_keys(file: &StateFile, shares: &[Share]) -> Result<Unsealed> {
        let parts: Vec<(u8, &[u8])> = shares
            .iter()
            .map(|s| (s.x, &s.expose_payload()[..]))
            .collect();
        let secret = shamir::combine(&parts).map_err(ShareRefusal::Malformed)?;
        let set_id = hex::decode(&file.body.share_set.id).map_err(|_| Error::Integrity)?;
        let unseal_key = hkdf32(&secret, &set_id, "plico-hsm unseal v1")?;
        let root = gcm_open(
            &unseal_key,
            &root_aad(&file.body.share_set.id),
            &file.body.sealed_root,
        )
        .map_err(|_| ShareRefusal::DoNotOpen)?;
        let mac = state_mac(&root, &file.body)?;
        if !constant_time_eq(mac.as_bytes(), file.mac.as_bytes()) {
            return Err(Error::Integrity);
        }
        let mut keks = BTreeMap::new();
        for t in &file.body.terms {
            if let Some(sealed) = &t.sealed_kek {
                keks.insert(t.id, gcm_open(&root, &kek_aad(t.id), sealed)?);
            }
        }
        Ok(Unsealed { root, keks })
    }

    /// Writes `file` atomically and, only if that worked, adopts it with `keys`.
    fn commit(&self, inner: &mut Inner, mut file: StateFile, keys: Unsealed) -> Result<()> {
        file.body.generation = inner.file.body.generation + 1;
        file.mac = state_mac(&keys.root, &file.body)?;
        // Only a failure before the rename is an error; after it the new state is in effect
        // (see `StateFile::write_atomic`) and is adopted, whatever the directory fsync said.
        let _dir_synced = file.write_atomic(&self.dir, Self::STATE_FILE, &self.fault_hook())?;
        inner.file = file;
        inner.unsealed = Some(keys);
        Ok(())
    }

    fn wrap(
        &self,
        kek: &[u8; KEY_LEN],
        term: u32,
        key: &DataKey,
        purpose: KeyPurpose,
    ) -> Result<WrappedKey> {
        let wk = wrapping_key(kek, purpose)?;
        let mut out = [0u8; KEY_LEN + 16];
        let n = AesKek::new(&AES_256, &wk[..])
            .and_then(|k| k.wrap_with_padding(key.expose_secret(), &mut out))
            .map_err(|_| Error::Provider("aes key wrap"))?
            .len();
        Ok(WrappedKey {
            term: TermId(term),
            purpose,
            kcv: key.kcv(),
            bytes: out[..n].to_vec(),
        })
    }

    fn unwrap_with(keys: &Unsealed, w: &WrappedKey) -> Result<DataKey> {
        let kek = keys.keks.get(&w.term.0).ok_or(Missing::Term(w.term))?;
        let wk = wrapping_key(kek, w.purpose)?;
        let mut out = Zeroizing::new([0u8; KEY_LEN + 16]);
        let plain = AesKek::new(&AES_256, &wk[..])
            .and_then(|k| k.unwrap_with_padding(&w.bytes, &mut out[..]))
            .map_err(|_| Error::Integrity)?;
        let bytes: [u8; KEY_LEN] = plain.try_into().map_err(|_| Error::Integrity)?;
        let key = DataKey::from_bytes(bytes);
        if key.kcv() != w.kcv {
            return Err(Error::Integrity);
        }
        Ok(key)
    }

    fn active_term(file: &StateFile) -> Result<u32> {
        file.body
            .terms
            .iter()
            .find(|t| t.state == TermState::Active)
            .map(|t| t.id)
            .ok_or_else(|| Error::Storage("the hsm state has no active term".to_string()))
    }

    fn copy_keys(keys: &Unsealed) -> Unsealed {
        Unsealed {
            root: keys.root.clone(),
            keks: keys.keks.clone(),
        }
    }
}

impl Hsm for SimulatedHsm {
    fn status(&self) -> HsmStatus {
        let inner = self.lock();
        let b = &inner.file.body;
        HsmStatus {
            provider: "simulated".to_string(),
            sealed: inner.unsealed.is_none(),
            progress: u8::try_from(inner.pending.len()).unwrap_or(u8::MAX),
            threshold: b.share_set.threshold,
            shares: b.share_set.shares,
            share_set: b.share_set.id.clone(),
            dev: b.dev,
            root_kcv: b.root_kcv,
            terms: b
                .terms
                .iter()
                .map(|t| TermInfo {
                    id: TermId(t.id),
                    state: t.state,
                    kcv: t.kcv,
                    created_unix: t.created_unix,
                })
                .collect(),
            generation: b.generation,
        }
    }

    fn unseal(&self, text: &SecretString) -> Result<UnsealProgress> {
        let mut inner = self.lock();
        let threshold = inner.file.body.share_set.threshold;
        if inner.unsealed.is_some() {
            return Ok(UnsealProgress {
                sealed: false,
                progress: 0,
                threshold,
            });
        }
        let share = Self::admit(&inner.file, text)?;
        if inner.pending.iter().any(|s| s.x == share.x) {
            return Err(ShareRefusal::AlreadySubmitted {
                x: share.x,
                more: usize::from(threshold).saturating_sub(inner.pending.len()),
            }
            .into());
        }
        inner.pending.push(share);
        if inner.pending.len() < usize::from(threshold) {
            return Ok(UnsealProgress {
                sealed: true,
                progress: u8::try_from(inner.pending.len()).unwrap_or(u8::MAX),
                threshold,
            });
        }
        let pending = std::mem::replace(&mut inner.pending, Vec::with_capacity(MAX_SHARES));
        // Admitted shares that open the root key are right: a state that then fails its MAC
        // (or a KEK that does not open under the verified root) is a damaged or edited file.
        let keys = Self::open_keys(&inner.file, &pending).map_err(|e| match e {
            Error::Integrity => Error::Storage(format!(
                "{}: the hsm state does not verify under its mac: the file is damaged or was \
                 edited",
                self.dir.join(Self::STATE_FILE).display()
            )),
            other => other,
        })?;
        inner.unsealed = Some(keys);
        Ok(UnsealProgress {
            sealed: false,
            progress: 0,
            threshold,
        })
    }

    fn reset_unseal(&self) {
        self.lock().pending.clear();
    }

    fn seal(&self) {
        let mut inner = self.lock();
        inner.unsealed = None;
        inner.pending.clear();
    }

    fn generate_data_key(&self, purpose: KeyPurpose) -> Result<(FreshDataKey, WrappedKey)> {
        let inner = self.lock();
        let keys = inner.unsealed.as_ref().ok_or(Error::Sealed)?;
        let term = Self::active_term(&inner.file)?;
        let kek = keys
            .keks
            .get(&term)
            .ok_or_else(|| Error::Storage(format!("active term {term} has no key")))?;
        let bytes = random_key(&self.rng)?;
        let key = DataKey::from_bytes(*bytes);
        let wrapped = self.wrap(kek, term, &key, purpose)?;
        Ok((FreshDataKey::from_generated(key), wrapped))
    }

    fn unwrap_data_key(&self, wrapped: &WrappedKey) -> Result<DataKey> {
        let inner = self.lock();
        let keys = inner.unsealed.as_ref().ok_or(Error::Sealed)?;
        Self::unwrap_with(keys, wrapped)
    }

    fn rewrap_data_key(&self, wrapped: &WrappedKey) -> Result<WrappedKey> {
        let inner = self.lock();
        let keys = inner.unsealed.as_ref().ok_or(Error::Sealed)?;
        let key = Self::unwrap_with(keys, wrapped)?;
        let term = Self::active_term(&inner.file)?;
        let kek = keys
            .keks
            .get(&term)
            .ok_or_else(|| Error::Storage(format!("active term {term} has no key")))?;
        self.wrap(kek, term, &key, wrapped.purpose)
    }

    fn rotate(&self) -> Result<TermInfo> {
        let mut inner = self.lock();
        let mut keys = Self::copy_keys(inner.unsealed.as_ref().ok_or(Error::Sealed)?);
        let mut file = inner.file.clone();
        let id = file.body.terms.iter().map(|t| t.id).max().unwrap_or(0) + 1;
        let kek = random_key(&self.rng)?;
        for t in &mut file.body.terms {
            if t.state == TermState::Active {
                t.state = TermState::DecryptOnly;
            }
        }
        let record = TermRecord {
            id,
            state: TermState::Active,
            kcv: Kcv::of_aes256(&kek),
            created_unix: now_unix(),
            sealed_kek: Some(gcm_seal(&self.rng, &keys.root, &kek_aad(id), &kek[..])?),
        };
        file.body.terms.push(record.clone());
        keys.keks.insert(id, kek);
        self.commit(&mut inner, file, keys)?;
        Ok(TermInfo {
            id: TermId(id),
            state: record.state,
            kcv: record.kcv,
            created_unix: record.created_unix,
        })
    }

    fn retire_term(&self, term: TermId) -> Result<()> {
        let mut inner = self.lock();
        let mut keys = Self::copy_keys(inner.unsealed.as_ref().ok_or(Error::Sealed)?);
        let mut file = inner.file.clone();
        let t = file
            .body
            .terms
            .iter_mut()
            .find(|t| t.id == term.0)
            .ok_or(Missing::Term(term))?;
        match t.state {
            TermState::Active => return Err(Refusal::TermActive { term }.into()),
            TermState::Retired => return Err(Refusal::TermRetired { term }.into()),
            TermState::DecryptOnly => {}
        }
        t.state = TermState::Retired;
        t.sealed_kek = None;
        keys.keks.remove(&term.0);
        self.commit(&mut inner, file, keys)
    }

    fn rekey(
        &self,
        current: &[SecretString],
        shares: u8,
        threshold: u8,
        deliver: &mut ShareDelivery<'_>,
    ) -> Result<RekeyOutcome> {
        let mut inner = self.lock();
        let held = Self::copy_keys(inner.unsealed.as_ref().ok_or(Error::Sealed)?);
        let need = usize::from(inner.file.body.share_set.threshold);
        let mut admitted: Vec<Share> = Vec::with_capacity(current.len());
        for text in current {
            let share = Self::admit(&inner.file, text)?;
            if admitted.iter().any(|s| s.x == share.x) {
                return Err(ShareRefusal::GivenTwice { x: share.x }.into());
            }
            admitted.push(share);
        }
        if admitted.len() < need {
            return Err(ShareRefusal::TooFew {
                need,
                given: admitted.len(),
            }
            .into());
        }
        let opened = Self::open_keys(&inner.file, &admitted)?;
        if !constant_time_eq(&opened.root[..], &held.root[..]) {
            return Err(ShareRefusal::NotCurrentQuorum.into());
        }
        let dev = inner.file.body.dev;
        let set = new_share_set(&self.rng, shares, threshold, dev)?;
        let root = random_key(&self.rng)?;
        let mut file = inner.file.clone();
        // A development HSM rekeyed to a threshold of 2 or more is a production one from
        // then on: `serve` (without --dev) opens it and its custodians unseal it.
        file.body.dev = dev && threshold < 2;
        file.body.share_set = set.set.clone();
        file.body.root_kcv = Kcv::of_aes256(&root);
        file.body.sealed_root = gcm_seal(
            &self.rng,
            &set.unseal_key,
            &root_aad(&set.set.id),
            &root[..],
        )?;
        for t in &mut file.body.terms {
            if let Some(kek) = held.keks.get(&t.id) {
                t.sealed_kek = Some(gcm_seal(&self.rng, &root, &kek_aad(t.id), &kek[..])?);
            }
        }
        let texts: Vec<SecretString> = set.shares.iter().map(Share::to_text).collect();
        deliver(&texts)?;
        let outcome = RekeyOutcome {
            share_set: set.set.id.clone(),
            shares,
            threshold,
            root_kcv: file.body.root_kcv,
        };
        let keys = Unsealed {
            root,
            keks: held.keks,
        };
        self.commit(&mut inner, file, keys)?;
        inner.pending.clear();
        Ok(outcome)
    }

    fn audit_anchor(&self) -> Result<Option<AuditAnchor>> {
        let inner = self.lock();
        inner.unsealed.as_ref().ok_or(Error::Sealed)?;
        Ok(inner.file.body.audit_anchor.clone())
    }

    fn set_audit_anchor(&self, anchor: &AuditAnchor) -> Result<()> {
        let mut inner = self.lock();
        let keys = Self::copy_keys(inner.unsealed.as_ref().ok_or(Error::Sealed)?);
        if let Some(held) = &inner.file.body.audit_anchor {
            if held.seq > anchor.seq {
                return Err(Refusal::AnchorBackwards {
                    held: held.seq,
                    given: anchor.seq,
                }
                .into());
            }
            if held == anchor {
                return Ok(());
            }
            if held.seq == anchor.seq {
                return Err(Refusal::AnchorForked { seq: held.seq }.into());
            }
        }
        let mut file = inner.file.clone();
        file.body.audit_anchor = Some(anchor.clone());
        self.commit(&mut inner, file, keys)
    }

    fn fill_random(&self, buf: &mut [u8]) -> Result<()> {
        self.rng.fill(buf).map_err(|_| Error::Provider("random"))
    }
}
