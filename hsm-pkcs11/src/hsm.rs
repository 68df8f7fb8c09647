//! [`Pkcs11Hsm`]: the `vault::Hsm` trait on a PKCS#11 token.
//!
//! What lives where (all in the token; nothing but the wrapped data keys leaves it):
//!
//! | object | kind | label | `CKA_ID` |
//! |---|---|---|---|
//! | state (see [`crate::state`]) | public data object | `plico-state` | (none; the share set is in its body) |
//! | root key | private AES-256, sensitive, never extractable, CMAC sign/verify | `plico-root` | share set id |
//! | wrapping key of a term and purpose | private AES-256, sensitive, never extractable, wrap/unwrap | `plico-kek-<term>-<purpose>` | term (u32 BE) |
//!
//! A term is five token keys, one per [`KeyPurpose`], which binds the purpose into every
//! wrapped key as the simulator's per-purpose HKDF does (the token has no HKDF); the term's KCV
//! is its `code` key's `CKA_CHECK_VALUE`. Data keys are made by `C_GenerateKey` as session
//! objects, wrapped with RFC 5649 (`C_WrapKey`), read out once for the host's envelope
//! encryption and destroyed; a rewrap is `C_UnwrapKey` into a sensitive session object and
//! `C_WrapKey` under the active term: the key never leaves the token.
//!
//! Unseal: any quorum of the custodians' shares rebuilds a 32-byte secret; HKDF-SHA256 of it
//! (salt = the set id) is the token's user PIN, as 64 hex digits, which `plico init` set with
//! `C_SetPIN`, so nobody knows it. `C_Login` is the check; the state's CMAC under the root key
//! is checked next. Seal is `C_Logout` and closing every session.

use crate::state::{
    ShareSet, StateBody, StateObject, TermRecord, TokenFacts, FORMAT, STATE_LABEL, VERSION,
};
use crate::token::{self, Pkcs11Config, Pool};
use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::hkdf::{KeyType, Salt, HKDF_SHA256};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType as CkKeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use hsm_sim::shamir;
use hsm_sim::share::{Share, PAYLOAD_LEN};
use secrecy::SecretString;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{SystemTime, UNIX_EPOCH};
use vault::{
    AuditAnchor, DataKey, Error, FreshDataKey, Hsm, HsmStatus, Kcv, KeyPurpose, RekeyOutcome,
    Result, ShareDelivery, TermId, TermInfo, TermState, UnsealProgress, WrappedKey, KEY_LEN,
};
use zeroize::Zeroizing;

/// Label of the root key.
pub const ROOT_LABEL: &str = "plico-root";

/// Options of [`Pkcs11Hsm::init`]: the simulator's, so both are created alike.
pub use hsm_sim::InitOptions;

/// What [`Pkcs11Hsm::init`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitReport {
    /// Key check value of the new root key.
    pub root_kcv: Kcv,
    /// Id of the share set.
    pub share_set: String,
    /// Key check value of the first KEK term.
    pub first_term_kcv: Kcv,
}

/// The token key of each (term, purpose).
type TermKeys = BTreeMap<(u32, KeyPurpose), ObjectHandle>;

/// Handles of the keys usable while unsealed.
struct Open {
    root: ObjectHandle,
    state: ObjectHandle,
    keys: TermKeys,
}

struct Inner {
    /// Every state object found at open, keyed by share set id (two only after an interrupted
    /// rekey); `current` names the one in force.
    candidates: BTreeMap<String, (ObjectHandle, StateObject)>,
    current: String,
    open: Option<Open>,
    pending: Vec<Share>,
}

impl Inner {
    fn state(&self) -> Result<&StateObject> {
        self.candidates
            .get(&self.current)
            .map(|(_, s)| s)
            .ok_or_else(|| Error::Storage("the token holds no plico hsm state".to_string()))
    }
}

/// A PKCS#11 token as plico's HSM. See the module docs.
pub struct Pkcs11Hsm {
    cfg: Pkcs11Config,
    pool: Pool,
    inner: RwLock<Inner>,
    rng: SystemRandom,
}

impl fmt::Debug for Pkcs11Hsm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sealed = self.read().open.is_none();
        write!(
            f,
            "Pkcs11Hsm(token {:?}, mechanism {}, sealed: {sealed})",
            self.cfg.token_label, self.cfg.mechanism
        )
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn ck(what: &'static str) -> impl Fn(CkError) -> Error {
    move |_| Error::Provider(what)
}

pub(crate) fn kek_label(term: u32, purpose: KeyPurpose) -> String {
    format!("plico-kek-{term}-{}", purpose.as_str())
}

fn cmac() -> Result<Mechanism<'static>> {
    Ok(Mechanism::AesCMac)
}

struct Len32;
impl KeyType for Len32 {
    fn len(&self) -> usize {
        KEY_LEN
    }
}

/// The token PIN a quorum's secret derives: 64 hex digits.
fn pin_from_secret(secret: &[u8], set_id: &[u8]) -> Result<SecretString> {
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    Salt::new(HKDF_SHA256, set_id)
        .extract(secret)
        .expand(&[b"plico-pkcs11 pin v1".as_slice()], Len32)
        .and_then(|okm| okm.fill(&mut out[..]))
        .map_err(|_| Error::Provider("hkdf"))?;
    let hex = Zeroizing::new(hex::encode(&out[..]));
    Ok(SecretString::from(hex.as_str().to_string()))
}

fn combine_to_pin(shares: &[Share], set_id_hex: &str) -> Result<SecretString> {
    let parts: Vec<(u8, &[u8])> = shares
        .iter()
        .map(|s| (s.x, &s.expose_payload()[..]))
        .collect();
    let secret = shamir::combine(&parts).map_err(Error::Share)?;
    let set_id = hex::decode(set_id_hex).map_err(|_| Error::Integrity)?;
    pin_from_secret(&secret, &set_id)
}

struct NewShareSet {
    set: ShareSet,
    shares: Vec<Share>,
    pin: SecretString,
}

fn new_share_set(rng: &SystemRandom, shares: u8, threshold: u8, dev: bool) -> Result<NewShareSet> {
    if threshold < 2 && !dev {
        return Err(Error::Refused(format!(
            "a threshold of {threshold} is only allowed for a development hsm (--dev); use 2 or more"
        )));
    }
    if shares == 0 || threshold == 0 || threshold > shares {
        return Err(Error::Refused(format!(
            "threshold {threshold} of {shares} shares: need 1 <= threshold <= shares <= 255"
        )));
    }
    let mut set_id = [0u8; 8];
    rng.fill(&mut set_id)
        .map_err(|_| Error::Provider("random"))?;
    let mut secret = Zeroizing::new([0u8; PAYLOAD_LEN]);
    rng.fill(&mut secret[..])
        .map_err(|_| Error::Provider("random"))?;
    let parts = shamir::split(&secret[..], shares, threshold, &mut |b| {
        rng.fill(b)
            .map_err(|_| "random generator failed".to_string())
    })
    .map_err(Error::Refused)?;
    let mut out = Vec::with_capacity(parts.len());
    let mut digests = BTreeMap::new();
    for (x, y) in &parts {
        let mut payload = Zeroizing::new([0u8; PAYLOAD_LEN]);
        payload.copy_from_slice(y);
        let share = Share::new(set_id, *x, threshold, shares, &payload);
        digests.insert(*x, hex::encode(share.digest()));
        out.push(share);
    }
    Ok(NewShareSet {
        set: ShareSet {
            id: hex::encode(set_id),
            threshold,
            shares,
            digests,
        },
        shares: out,
        pin: pin_from_secret(&secret[..], &set_id)?,
    })
}

/// Checks a share against a share set.
fn admit(set: &ShareSet, share: &Share) -> Result<()> {
    if share.threshold != set.threshold || share.shares != set.shares {
        return Err(Error::Share(format!(
            "share {} says {} of {}, but set {} is {} of {}",
            share.x, share.threshold, share.shares, set.id, set.threshold, set.shares
        )));
    }
    let issued = set
        .digests
        .get(&share.x)
        .ok_or_else(|| Error::Share(format!("set {} has no share {}", set.id, share.x)))?;
    if verify_slices_are_equal(hex::encode(share.digest()).as_bytes(), issued.as_bytes()).is_err() {
        return Err(Error::Share(format!(
            "share {} of set {} is not the share this hsm issued",
            share.x, set.id
        )));
    }
    Ok(())
}

fn aes_template(label: &str, id: &[u8], token: bool) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(CkKeyType::AES),
        Attribute::ValueLen(32.into()),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
        Attribute::Token(token),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
    ]
}

fn find(session: &Session, template: &[Attribute]) -> Result<Vec<ObjectHandle>> {
    session
        .find_objects(template)
        .map_err(|e| Error::Storage(format!("cannot search the pkcs#11 token: {e}")))
}

fn value_of(session: &Session, obj: ObjectHandle) -> Result<Zeroizing<Vec<u8>>> {
    let attrs = session
        .get_attributes(obj, &[AttributeType::Value])
        .map_err(ck("read attribute"))?;
    for a in attrs {
        if let Attribute::Value(v) = a {
            return Ok(Zeroizing::new(v));
        }
    }
    Err(Error::Provider("read attribute"))
}

fn id_of(session: &Session, obj: ObjectHandle) -> Result<Vec<u8>> {
    let attrs = session
        .get_attributes(obj, &[AttributeType::Id])
        .map_err(ck("read attribute"))?;
    for a in attrs {
        if let Attribute::Id(v) = a {
            return Ok(v);
        }
    }
    Ok(Vec::new())
}

fn label_of(session: &Session, obj: ObjectHandle) -> Result<String> {
    let attrs = session
        .get_attributes(obj, &[AttributeType::Label])
        .map_err(ck("read attribute"))?;
    for a in attrs {
        if let Attribute::Label(v) = a {
            return Ok(String::from_utf8_lossy(&v).into_owned());
        }
    }
    Ok(String::new())
}

fn check_value(session: &Session, obj: ObjectHandle) -> Result<Kcv> {
    let attrs = session
        .get_attributes(obj, &[AttributeType::CheckValue])
        .map_err(ck("read check value"))?;
    for a in attrs {
        if let Attribute::CheckValue(v) = a {
            if v.len() >= 3 {
                return Ok(Kcv::from_bytes([v[0], v[1], v[2]]));
            }
        }
    }
    Err(Error::Provider("the token gives no CKA_CHECK_VALUE"))
}

/// The KCV of an unwrapped key object, computed inside the token: AES-ECB of the zero block
/// (the value of `vault::Kcv` and of `CKA_CHECK_VALUE`, which SoftHSM does not keep for
/// unwrapped keys), else its `CKA_CHECK_VALUE` where a token refuses ECB.
fn token_kcv(session: &Session, obj: ObjectHandle) -> Result<Kcv> {
    match session.encrypt(&Mechanism::AesEcb, obj, &[0u8; 16]) {
        Ok(block) => match block.get(..3) {
            Some(b) => Ok(Kcv::from_bytes([b[0], b[1], b[2]])),
            None => Err(Error::Integrity),
        },
        Err(_) => check_value(session, obj).map_err(|_| Error::Integrity),
    }
}

/// Reads every state object on the token (no login needed: they are public).
fn load_candidates(session: &Session) -> Result<BTreeMap<String, (ObjectHandle, StateObject)>> {
    let mut out: BTreeMap<String, (ObjectHandle, StateObject)> = BTreeMap::new();
    let objs = find(
        session,
        &[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Label(STATE_LABEL.as_bytes().to_vec()),
        ],
    )?;
    for obj in objs {
        let state = StateObject::from_bytes(&value_of(session, obj)?)?;
        let set = state.body.share_set.id.clone();
        let newer = out
            .get(&set)
            .is_none_or(|(_, s)| s.body.generation < state.body.generation);
        if newer {
            out.insert(set, (obj, state));
        }
    }
    Ok(out)
}

/// Picks the state in force: the newest generation (a rekey's new set only wins once its PIN
/// is set, which the unseal finds out by logging in).
fn newest(candidates: &BTreeMap<String, (ObjectHandle, StateObject)>) -> Option<String> {
    candidates
        .iter()
        .max_by_key(|(_, (_, s))| s.body.generation)
        .map(|(k, _)| k.clone())
}

impl Pkcs11Hsm {
    /// Opens the plico HSM on the token named by `cfg`, sealed.
    ///
    /// # Errors
    /// [`Error::NotFound`] when no token has the label; [`Error::Storage`] when the module
    /// does not load or the token holds no plico state (run `plico init --hsm pkcs11` first)
    /// or a damaged one; [`Error::Refused`]/[`Error::Invalid`] for an unusable mechanism.
    pub fn open(cfg: &Pkcs11Config) -> Result<Self> {
        // Checked here so that an unusable mechanism fails at start-up, not at the first key.
        cfg.mechanism.mechanism()?;
        let ctx = token::context(&cfg.module)?;
        let slot = token::find_token(&ctx, &cfg.token_label)?;
        let pool = Pool::new(ctx, slot);
        let candidates = pool.with(load_candidates)?;
        let current = newest(&candidates).ok_or_else(|| {
            Error::Storage(format!(
                "pkcs#11 token {:?} holds no plico hsm state: run `plico init --hsm pkcs11` first",
                cfg.token_label
            ))
        })?;
        Ok(Pkcs11Hsm {
            cfg: cfg.clone(),
            pool,
            inner: RwLock::new(Inner {
                candidates,
                current,
                open: None,
                pending: Vec::new(),
            }),
            rng: SystemRandom::new(),
        })
    }

    /// True when the token already holds a plico state.
    ///
    /// # Errors
    /// As [`Pkcs11Hsm::open`] for a missing module or token.
    pub fn exists(cfg: &Pkcs11Config) -> Result<bool> {
        let ctx = token::context(&cfg.module)?;
        let slot = token::find_token(&ctx, &cfg.token_label)?;
        let pool = Pool::new(ctx, slot);
        Ok(!pool.with(load_candidates)?.is_empty())
    }

    /// Sets up plico's keys on an initialised token: a new share set (delivered before anything
    /// is written), the root key and term 1 as token keys, the state object, and finally the
    /// user PIN replaced by the one the shares derive. `token_pin` is the PIN the token was
    /// initialised with (`softhsm2-util --init-token … --pin`, or the HSM's own tools); after
    /// this call it no longer opens the token.
    ///
    /// # Errors
    /// [`Error::Refused`] when the token already holds a plico HSM, the token PIN is refused,
    /// or the options are unusable; whatever `deliver` returns (nothing is written then);
    /// token failures as [`Error::Provider`]/[`Error::Storage`].
    ///
    /// # Security
    /// The PIN is never logged or put in an error.
    pub fn init(
        cfg: &Pkcs11Config,
        token_pin: &SecretString,
        opts: InitOptions,
        deliver: &mut ShareDelivery<'_>,
    ) -> Result<(Self, InitReport)> {
        cfg.mechanism.mechanism()?;
        let ctx = token::context(&cfg.module)?;
        let slot = token::find_token(&ctx, &cfg.token_label)?;
        let pool = Pool::new(ctx, slot);
        let rng = SystemRandom::new();
        if !pool.with(load_candidates)?.is_empty() {
            return Err(Error::Refused(format!(
                "pkcs#11 token {:?} already holds a plico hsm; use a fresh token",
                cfg.token_label
            )));
        }
        let set = new_share_set(&rng, opts.shares, opts.threshold, opts.dev)?;
        let texts: Vec<SecretString> = set.shares.iter().map(Share::to_text).collect();
        deliver(&texts)?;
        let report = pool.with(|s| {
            match s.login(UserType::User, Some(token_pin)) {
                Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
                Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => {
                    return Err(Error::Refused(format!(
                        "the user pin of pkcs#11 token {:?} was refused",
                        cfg.token_label
                    )))
                }
                Err(_) => return Err(Error::Provider("login")),
            }
            let made = Self::init_objects(s, &set, opts.dev);
            let report = match made {
                Ok((report, _)) => report,
                Err((e, created)) => {
                    for o in created {
                        let _ = s.destroy_object(o);
                    }
                    let _ = s.logout();
                    return Err(e);
                }
            };
            if s.set_pin(token_pin, &set.pin).is_err() {
                let _ = s.logout();
                return Err(Error::Provider("set pin"));
            }
            let _ = s.logout();
            Ok(report)
        })?;
        pool.close_all();
        let hsm = Self::open(cfg)?;
        Ok((hsm, report))
    }

    #[allow(clippy::type_complexity)]
    fn init_objects(
        s: &Session,
        set: &NewShareSet,
        dev: bool,
    ) -> std::result::Result<(InitReport, Vec<ObjectHandle>), (Error, Vec<ObjectHandle>)> {
        let mut created = Vec::new();
        let set_id = hex::decode(&set.set.id).map_err(|_| (Error::Integrity, Vec::new()))?;
        let root = match Self::make_root(s, &set_id) {
            Ok(r) => r,
            Err(e) => return Err((e, created)),
        };
        created.push(root);
        let (keys, kcv) = match Self::make_term(s, 1) {
            Ok(k) => k,
            Err(e) => return Err((e, created)),
        };
        created.extend(keys.values().copied());
        let root_kcv = match check_value(s, root) {
            Ok(k) => k,
            Err(e) => return Err((e, created)),
        };
        let body = StateBody {
            format: FORMAT.to_string(),
            version: VERSION,
            generation: 1,
            dev,
            share_set: set.set.clone(),
            root_kcv,
            terms: vec![TermRecord {
                id: 1,
                state: TermState::Active,
                kcv,
                created_unix: now_unix(),
            }],
            audit_anchor: None,
        };
        match Self::write_state(s, root, body) {
            Ok((obj, _)) => created.push(obj),
            Err(e) => return Err((e, created)),
        }
        Ok((
            InitReport {
                root_kcv,
                share_set: set.set.id.clone(),
                first_term_kcv: kcv,
            },
            created,
        ))
    }

    fn make_root(s: &Session, set_id: &[u8]) -> Result<ObjectHandle> {
        let mut t = aes_template(ROOT_LABEL, set_id, true);
        t.push(Attribute::Sign(true));
        t.push(Attribute::Verify(true));
        // The KCV (CKA_CHECK_VALUE) is the token's encryption of a zero block.
        s.generate_key(&Mechanism::AesKeyGen, &t)
            .map_err(ck("generate root key"))
    }

    /// Generates the five wrapping keys of `term`; returns them and the term's KCV. Leftovers
    /// of an interrupted rotate to the same number are destroyed first.
    fn make_term(s: &Session, term: u32) -> Result<(TermKeys, Kcv)> {
        for obj in find(
            s,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::Id(term.to_be_bytes().to_vec()),
            ],
        )? {
            let _ = s.destroy_object(obj);
        }
        let mut keys = BTreeMap::new();
        for purpose in KeyPurpose::ALL {
            let mut t = aes_template(&kek_label(term, purpose), &term.to_be_bytes(), true);
            t.push(Attribute::Wrap(true));
            t.push(Attribute::Unwrap(true));
            match s.generate_key(&Mechanism::AesKeyGen, &t) {
                Ok(h) => {
                    keys.insert((term, purpose), h);
                }
                Err(_) => {
                    for h in keys.values() {
                        let _ = s.destroy_object(*h);
                    }
                    return Err(Error::Provider("generate kek"));
                }
            }
        }
        let code = keys
            .get(&(term, KeyPurpose::Code))
            .copied()
            .ok_or(Error::Provider("generate kek"))?;
        let kcv = check_value(s, code)?;
        Ok((keys, kcv))
    }

    /// MACs `body` under `root` inside the token and stores it as a new state object.
    fn write_state(
        s: &Session,
        root: ObjectHandle,
        body: StateBody,
    ) -> Result<(ObjectHandle, StateObject)> {
        let mac = s
            .sign(&cmac()?, root, &body.mac_input()?)
            .map_err(ck("aes-cmac"))?;
        let state = StateObject {
            mac: hex::encode(mac),
            body,
        };
        // Data objects have no CKA_ID (SoftHSM refuses one): the share set is in the body.
        let obj = s
            .create_object(&[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Token(true),
                Attribute::Private(false),
                Attribute::Modifiable(false),
                Attribute::Label(STATE_LABEL.as_bytes().to_vec()),
                Attribute::Application(b"plico".to_vec()),
                Attribute::Value(state.to_bytes()?),
            ])
            .map_err(|e| Error::Storage(format!("cannot write the hsm state to the token: {e}")))?;
        Ok((obj, state))
    }

    fn verify_state(s: &Session, root: ObjectHandle, state: &StateObject) -> Result<()> {
        let mac = hex::decode(&state.mac).map_err(|_| Error::Integrity)?;
        let expect = s
            .sign(&cmac()?, root, &state.body.mac_input()?)
            .map_err(ck("aes-cmac"))?;
        verify_slices_are_equal(&mac, &expect).map_err(|_| Error::Integrity)
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        vault::read_lock(&self.inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        vault::write_lock(&self.inner)
    }

    /// The token's label.
    pub fn token_label(&self) -> &str {
        &self.cfg.token_label
    }

    /// The public facts of the state in force, for a backup (see [`TokenFacts`]): readable
    /// sealed or unsealed, since the state object is public. Unsealed, it is the state whose
    /// CMAC the unseal checked, as this process last wrote it.
    ///
    /// # Errors
    /// [`Error::Storage`] when the token holds no plico state.
    pub fn backup_facts(&self) -> Result<TokenFacts> {
        let inner = self.read();
        Ok(TokenFacts::of(&self.cfg.token_label, &inner.state()?.body))
    }

    /// The custodians' acceptance of a restored backup: unseals the token with `quorum` (the
    /// token's current share set), lets `check` look at the token's facts and the anchor it
    /// holds (both checked by the unseal's CMAC), and then rewrites the state object with the
    /// audit anchor set to `to` (the anchor the token held when the backup was made) and the
    /// next generation. Returns the anchor the token held before, which the caller records in
    /// the audit chain as the gap. The token stays unsealed for the caller to open the
    /// restored store; on any error it is sealed again and, if `check` failed, unchanged.
    ///
    /// The anchor exists to refuse a store older than the token's; this is the one deliberate
    /// way back, and it needs the quorum itself, not an unsealed service: it is refused while
    /// the HSM is unsealed. Running it twice with the same `to` changes nothing the second time.
    ///
    /// # Errors
    /// [`Error::Refused`] while unsealed; [`Error::Share`] for shares of another set, shares
    /// this HSM did not issue, a share given twice, or fewer than the threshold; what `check`
    /// returns; token errors.
    ///
    /// # Security
    /// Moving the anchor back makes the token accept an older store: only the restore ceremony
    /// calls this, after the store was put back from a sealed archive.
    pub fn accept_rollback(
        &self,
        quorum: &[SecretString],
        to: Option<&AuditAnchor>,
        check: &mut dyn FnMut(&TokenFacts) -> Result<()>,
    ) -> Result<Option<AuditAnchor>> {
        let mut inner = self.write();
        if inner.open.is_some() {
            return Err(Error::Refused(
                "the hsm is unsealed: a rollback is accepted by the custodians' quorum given to \
                 it, on a sealed hsm"
                    .to_string(),
            ));
        }
        inner.pending.clear();
        let set = inner.state()?.body.share_set.clone();
        let mut admitted: Vec<Share> = Vec::with_capacity(quorum.len());
        for text in quorum {
            let share = Share::parse(text).map_err(Error::Share)?;
            let got = hex::encode(share.set);
            if got != set.id {
                return Err(Error::Share(format!(
                    "this share belongs to share set {got}, but the token uses set {}: a \
                     rollback needs the token's current shares",
                    set.id
                )));
            }
            admit(&set, &share)?;
            if admitted.iter().any(|s| s.x == share.x) {
                return Err(Error::Share(format!("share {} was given twice", share.x)));
            }
            admitted.push(share);
        }
        if admitted.len() < usize::from(set.threshold) {
            return Err(Error::Share(format!(
                "{} share(s) given, {} needed: the rollback needs the custodians' quorum",
                admitted.len(),
                set.threshold
            )));
        }
        let pin = combine_to_pin(&admitted, &set.id)?;
        drop(admitted);
        self.login_and_open(&mut inner, &set.id, &pin)?;
        let outcome = (|| -> Result<Option<AuditAnchor>> {
            let body = inner.state()?.body.clone();
            check(&TokenFacts::of(&self.cfg.token_label, &body))?;
            let held = body.audit_anchor.clone();
            if held.as_ref() != to {
                let mut body = body;
                body.audit_anchor = to.cloned();
                self.pool.with(|s| self.commit(&mut inner, s, body))?;
            }
            Ok(held)
        })();
        if outcome.is_err() {
            inner.open = None;
            self.pool.close_all();
        }
        outcome
    }

    /// The token PIN that `shares` (a quorum) derive. For an opt-in auto-unseal file
    /// (`[hsm] pin_file`): whoever holds it can open the token without the custodians.
    ///
    /// # Errors
    /// [`Error::Share`] for malformed shares or shares of different sets.
    pub fn insecure_token_pin_from_shares(shares: &[SecretString]) -> Result<SecretString> {
        let parsed: Vec<Share> = shares
            .iter()
            .map(|t| Share::parse(t).map_err(Error::Share))
            .collect::<Result<_>>()?;
        let first = parsed
            .first()
            .ok_or_else(|| Error::Share("no shares given".to_string()))?;
        if parsed.iter().any(|s| s.set != first.set) {
            return Err(Error::Share(
                "the shares belong to different share sets".to_string(),
            ));
        }
        combine_to_pin(&parsed, &hex::encode(first.set))
    }

    /// Unseals with the token PIN itself instead of shares (the opt-in `[hsm] pin_file`).
    ///
    /// # Errors
    /// [`Error::Share`] when the PIN does not open the token; as [`Hsm::unseal`] otherwise.
    ///
    /// # Security
    /// The PIN never appears in an error or a log.
    pub fn unseal_with_pin(&self, pin: &SecretString) -> Result<()> {
        let mut inner = self.write();
        if inner.open.is_some() {
            return Ok(());
        }
        let set = inner.current.clone();
        self.login_and_open(&mut inner, &set, pin)
    }

    /// Logs in with `pin`, checks the state of `set`, tidies the token, and opens the keys.
    fn login_and_open(&self, inner: &mut Inner, set: &str, pin: &SecretString) -> Result<()> {
        let login = self
            .pool
            .with(|s| match s.login(UserType::User, Some(pin)) {
                Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
                Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => Err(Error::Share(format!(
                    "the shares of set {set} do not open pkcs#11 token {:?} (an interrupted rekey \
                 left this set unused, or its pin was changed outside plico)",
                    self.cfg.token_label
                ))),
                Err(CkError::Pkcs11(RvError::PinLocked, _)) => Err(Error::Refused(format!(
                "the user pin of pkcs#11 token {:?} is locked; its security officer must reset it",
                self.cfg.token_label
            ))),
                Err(_) => Err(Error::Provider("login")),
            });
        login?;
        let opened = self.pool.with(|s| self.open_keys(s, inner, set));
        match opened {
            Ok(open) => {
                inner.current = set.to_string();
                inner.candidates.retain(|k, _| k == set);
                inner.open = Some(open);
                Ok(())
            }
            Err(e) => {
                self.pool.close_all();
                Err(e)
            }
        }
    }

    fn open_keys(&self, s: &Session, inner: &Inner, set: &str) -> Result<Open> {
        // Re-read: another process may have changed the token since open (a previous run).
        let candidates = load_candidates(s)?;
        let (state_obj, state) = candidates
            .get(set)
            .cloned()
            .or_else(|| inner.candidates.get(set).cloned())
            .ok_or_else(|| Error::Storage(format!("no hsm state for share set {set}")))?;
        let set_id = hex::decode(set).map_err(|_| Error::Integrity)?;
        let roots = find(
            s,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::Label(ROOT_LABEL.as_bytes().to_vec()),
            ],
        )?;
        let mut root = None;
        for r in roots {
            if id_of(s, r)? == set_id {
                root = Some(r);
            }
        }
        let root = root.ok_or_else(|| {
            Error::Storage(format!(
                "pkcs#11 token {:?} has no root key for share set {set}",
                self.cfg.token_label
            ))
        })?;
        Self::verify_state(s, root, &state)?;
        // Tidy: other sets' roots and states (an interrupted rekey), older states, and the
        // keys of retired or unrecorded terms (an interrupted retire or rotate).
        for r in find(
            s,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::Label(ROOT_LABEL.as_bytes().to_vec()),
            ],
        )? {
            if r != root {
                let _ = s.destroy_object(r);
            }
        }
        for o in find(
            s,
            &[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Label(STATE_LABEL.as_bytes().to_vec()),
            ],
        )? {
            if o != state_obj {
                let _ = s.destroy_object(o);
            }
        }
        let live: BTreeMap<u32, TermState> = state
            .body
            .terms
            .iter()
            .filter(|t| t.state != TermState::Retired)
            .map(|t| (t.id, t.state))
            .collect();
        let mut keys = BTreeMap::new();
        for o in find(
            s,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(CkKeyType::AES),
            ],
        )? {
            let label = label_of(s, o)?;
            let Some(rest) = label.strip_prefix("plico-kek-") else {
                continue;
            };
            let parsed = rest.split_once('-').and_then(|(t, p)| {
                let term = t.parse::<u32>().ok()?;
                let purpose = KeyPurpose::ALL.into_iter().find(|k| k.as_str() == p)?;
                Some((term, purpose))
            });
            match parsed {
                Some((term, purpose)) if live.contains_key(&term) => {
                    keys.insert((term, purpose), o);
                }
                _ => {
                    let _ = s.destroy_object(o);
                }
            }
        }
        for term in live.keys() {
            for purpose in KeyPurpose::ALL {
                if !keys.contains_key(&(*term, purpose)) {
                    return Err(Error::Storage(format!(
                        "pkcs#11 token {:?} has lost the {purpose} key of term {term}",
                        self.cfg.token_label
                    )));
                }
            }
        }
        Ok(Open {
            root,
            state: state_obj,
            keys,
        })
    }

    /// Replaces the state in force by `body` (next generation): new object first, old after.
    fn commit(&self, inner: &mut Inner, s: &Session, mut body: StateBody) -> Result<()> {
        let open = inner.open.as_ref().ok_or(Error::Sealed)?;
        let old = open.state;
        body.generation = inner.state()?.body.generation + 1;
        let (obj, state) = Self::write_state(s, open.root, body)?;
        let _ = s.destroy_object(old);
        let set = state.body.share_set.id.clone();
        inner.candidates.clear();
        inner.candidates.insert(set.clone(), (obj, state));
        inner.current = set;
        if let Some(open) = inner.open.as_mut() {
            open.state = obj;
        }
        Ok(())
    }

    fn key(open: &Open, term: u32, purpose: KeyPurpose) -> Result<ObjectHandle> {
        open.keys
            .get(&(term, purpose))
            .copied()
            .ok_or_else(|| Error::NotFound(format!("{} (retired or unknown)", TermId(term))))
    }

    /// Unwraps into a session object; `f` uses it; the object is destroyed whatever happens.
    fn with_unwrapped<T>(
        &self,
        s: &Session,
        open: &Open,
        w: &WrappedKey,
        sensitive: bool,
        f: impl FnOnce(ObjectHandle) -> Result<T>,
    ) -> Result<T> {
        let kek = Self::key(open, w.term.0, w.purpose)?;
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(CkKeyType::AES),
            Attribute::Token(false),
            Attribute::Sensitive(sensitive),
            Attribute::Extractable(true),
            // For the KCV check of a rewrap (AES-ECB of the zero block).
            Attribute::Encrypt(true),
        ];
        // Any failure to unwrap is the one opaque integrity error (SoftHSM answers a tampered
        // key with CKR_GENERAL_ERROR, others with CKR_WRAPPED_KEY_INVALID).
        let obj = s
            .unwrap_key(&self.cfg.mechanism.mechanism()?, kek, &w.bytes, &template)
            .map_err(|_| Error::Integrity)?;
        let out = f(obj);
        let _ = s.destroy_object(obj);
        out
    }

    fn read_key(s: &Session, obj: ObjectHandle) -> Result<DataKey> {
        let v = value_of(s, obj)?;
        let bytes: [u8; KEY_LEN] = v[..].try_into().map_err(|_| Error::Integrity)?;
        Ok(DataKey::from_bytes(bytes))
    }
}

impl Hsm for Pkcs11Hsm {
    fn status(&self) -> HsmStatus {
        let inner = self.read();
        let sealed = inner.open.is_none();
        let progress = u8::try_from(inner.pending.len()).unwrap_or(u8::MAX);
        match inner.state() {
            Ok(st) => {
                let b = &st.body;
                HsmStatus {
                    provider: "pkcs11".to_string(),
                    sealed,
                    progress,
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
            Err(_) => HsmStatus {
                provider: "pkcs11".to_string(),
                sealed,
                progress,
                threshold: 0,
                shares: 0,
                share_set: String::new(),
                dev: false,
                root_kcv: Kcv::from_bytes([0; 3]),
                terms: Vec::new(),
                generation: 0,
            },
        }
    }

    fn unseal(&self, text: &SecretString) -> Result<UnsealProgress> {
        let mut inner = self.write();
        let threshold_now = inner.state().map(|s| s.body.share_set.threshold)?;
        if inner.open.is_some() {
            return Ok(UnsealProgress {
                sealed: false,
                progress: 0,
                threshold: threshold_now,
            });
        }
        let share = Share::parse(text).map_err(Error::Share)?;
        let got = hex::encode(share.set);
        let set = match inner.candidates.get(&got) {
            Some((_, st)) => st.body.share_set.clone(),
            None => {
                return Err(Error::Share(format!(
                    "this share belongs to share set {got}, but this hsm uses set {}: it is from \
                     another hsm or from before a rekey",
                    inner.current
                )))
            }
        };
        if let Some(first) = inner.pending.first() {
            if first.set != share.set {
                return Err(Error::Share(format!(
                    "this share belongs to share set {got}, but the shares submitted so far \
                     belong to set {}; reset the unseal to change sets",
                    hex::encode(first.set)
                )));
            }
        }
        admit(&set, &share)?;
        let threshold = set.threshold;
        if inner.pending.iter().any(|s| s.x == share.x) {
            return Err(Error::Share(format!(
                "share {} was already submitted; {} more distinct share(s) needed",
                share.x,
                usize::from(threshold).saturating_sub(inner.pending.len())
            )));
        }
        inner.pending.push(share);
        if inner.pending.len() < usize::from(threshold) {
            return Ok(UnsealProgress {
                sealed: true,
                progress: u8::try_from(inner.pending.len()).unwrap_or(u8::MAX),
                threshold,
            });
        }
        let pending = std::mem::take(&mut inner.pending);
        let pin = combine_to_pin(&pending, &set.id)?;
        drop(pending);
        self.login_and_open(&mut inner, &set.id, &pin)?;
        Ok(UnsealProgress {
            sealed: false,
            progress: 0,
            threshold,
        })
    }

    fn reset_unseal(&self) {
        self.write().pending.clear();
    }

    fn seal(&self) {
        let mut inner = self.write();
        inner.open = None;
        inner.pending.clear();
        // Logging out makes every private token object unreachable; closing the sessions
        // destroys any session object.
        self.pool.close_all();
    }

    fn generate_data_key(&self, purpose: KeyPurpose) -> Result<(FreshDataKey, WrappedKey)> {
        let inner = self.read();
        let open = inner.open.as_ref().ok_or(Error::Sealed)?;
        let term = inner.state()?.body.active_term()?;
        let kek = Self::key(open, term, purpose)?;
        self.pool.with(|s| {
            let template = [
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(CkKeyType::AES),
                Attribute::ValueLen(32.into()),
                Attribute::Token(false),
                Attribute::Sensitive(false),
                Attribute::Extractable(true),
            ];
            let obj = s
                .generate_key(&Mechanism::AesKeyGen, &template)
                .map_err(ck("generate data key"))?;
            let out = (|| {
                let bytes = s
                    .wrap_key(&self.cfg.mechanism.mechanism()?, kek, obj)
                    .map_err(ck("aes key wrap"))?;
                let key = Self::read_key(s, obj)?;
                let wrapped = WrappedKey {
                    term: TermId(term),
                    purpose,
                    kcv: key.kcv(),
                    bytes,
                };
                Ok((FreshDataKey::from_generated(key), wrapped))
            })();
            let _ = s.destroy_object(obj);
            out
        })
    }

    fn unwrap_data_key(&self, wrapped: &WrappedKey) -> Result<DataKey> {
        let inner = self.read();
        let open = inner.open.as_ref().ok_or(Error::Sealed)?;
        let key = self
            .pool
            .with(|s| self.with_unwrapped(s, open, wrapped, false, |obj| Self::read_key(s, obj)))?;
        if key.kcv() != wrapped.kcv {
            return Err(Error::Integrity);
        }
        Ok(key)
    }

    fn rewrap_data_key(&self, wrapped: &WrappedKey) -> Result<WrappedKey> {
        let inner = self.read();
        let open = inner.open.as_ref().ok_or(Error::Sealed)?;
        let term = inner.state()?.body.active_term()?;
        let kek = Self::key(open, term, wrapped.purpose)?;
        let bytes = self.pool.with(|s| {
            self.with_unwrapped(s, open, wrapped, true, |obj| {
                // The key stays sensitive: its KCV is computed by the token, not read out.
                if token_kcv(s, obj)? != wrapped.kcv {
                    return Err(Error::Integrity);
                }
                s.wrap_key(&self.cfg.mechanism.mechanism()?, kek, obj)
                    .map_err(ck("aes key wrap"))
            })
        })?;
        Ok(WrappedKey {
            term: TermId(term),
            purpose: wrapped.purpose,
            kcv: wrapped.kcv,
            bytes,
        })
    }

    fn rotate(&self) -> Result<TermInfo> {
        let mut inner = self.write();
        inner.open.as_ref().ok_or(Error::Sealed)?;
        let mut body = inner.state()?.body.clone();
        let id = body.terms.iter().map(|t| t.id).max().unwrap_or(0) + 1;
        let record = self.pool.with(|s| {
            let (keys, kcv) = Self::make_term(s, id)?;
            for t in &mut body.terms {
                if t.state == TermState::Active {
                    t.state = TermState::DecryptOnly;
                }
            }
            let record = TermRecord {
                id,
                state: TermState::Active,
                kcv,
                created_unix: now_unix(),
            };
            body.terms.push(record.clone());
            if let Err(e) = self.commit(&mut inner, s, body) {
                for h in keys.values() {
                    let _ = s.destroy_object(*h);
                }
                return Err(e);
            }
            if let Some(open) = inner.open.as_mut() {
                open.keys.extend(keys);
            }
            Ok(record)
        })?;
        Ok(TermInfo {
            id: TermId(record.id),
            state: record.state,
            kcv: record.kcv,
            created_unix: record.created_unix,
        })
    }

    fn retire_term(&self, term: TermId) -> Result<()> {
        let mut inner = self.write();
        inner.open.as_ref().ok_or(Error::Sealed)?;
        let mut body = inner.state()?.body.clone();
        let t = body
            .terms
            .iter_mut()
            .find(|t| t.id == term.0)
            .ok_or_else(|| Error::NotFound(term.to_string()))?;
        match t.state {
            TermState::Active => {
                return Err(Error::Refused(format!(
                    "{term} is the active term; rotate to a new term before retiring it"
                )))
            }
            TermState::Retired => return Err(Error::Refused(format!("{term} is already retired"))),
            TermState::DecryptOnly => {}
        }
        t.state = TermState::Retired;
        self.pool.with(|s| {
            self.commit(&mut inner, s, body)?;
            // Recorded as retired first; a crash before these destroys leaves keys that the
            // next unseal removes.
            if let Some(open) = inner.open.as_mut() {
                for purpose in KeyPurpose::ALL {
                    if let Some(h) = open.keys.remove(&(term.0, purpose)) {
                        let _ = s.destroy_object(h);
                    }
                }
            }
            Ok(())
        })
    }

    fn rekey(
        &self,
        current: &[SecretString],
        shares: u8,
        threshold: u8,
        deliver: &mut ShareDelivery<'_>,
    ) -> Result<RekeyOutcome> {
        let mut inner = self.write();
        if inner.open.is_none() {
            return Err(Error::Refused("unseal the hsm before a rekey".to_string()));
        }
        let old_body = inner.state()?.body.clone();
        let old_set = old_body.share_set.clone();
        let mut admitted: Vec<Share> = Vec::with_capacity(current.len());
        for text in current {
            let share = Share::parse(text).map_err(Error::Share)?;
            let got = hex::encode(share.set);
            if got != old_set.id {
                return Err(Error::Share(format!(
                    "this share belongs to share set {got}, but this hsm uses set {}: it is from \
                     another hsm or from before a rekey",
                    old_set.id
                )));
            }
            admit(&old_set, &share)?;
            if admitted.iter().any(|s| s.x == share.x) {
                return Err(Error::Share(format!("share {} was given twice", share.x)));
            }
            admitted.push(share);
        }
        if admitted.len() < usize::from(old_set.threshold) {
            return Err(Error::Share(format!(
                "a rekey needs {} current shares, {} given",
                old_set.threshold,
                admitted.len()
            )));
        }
        let old_pin = combine_to_pin(&admitted, &old_set.id)?;
        let dev = old_body.dev;
        let set = new_share_set(&self.rng, shares, threshold, dev)?;
        let texts: Vec<SecretString> = set.shares.iter().map(Share::to_text).collect();
        deliver(&texts)?;
        let new_id = hex::decode(&set.set.id).map_err(|_| Error::Integrity)?;
        let outcome = self.pool.with(|s| {
            let root = Self::make_root(s, &new_id)?;
            let undo = |objs: &[ObjectHandle]| {
                for o in objs {
                    let _ = s.destroy_object(*o);
                }
            };
            let root_kcv = match check_value(s, root) {
                Ok(k) => k,
                Err(e) => {
                    undo(&[root]);
                    return Err(e);
                }
            };
            let mut body = old_body.clone();
            body.generation += 1;
            body.dev = dev && threshold < 2;
            body.share_set = set.set.clone();
            body.root_kcv = root_kcv;
            let (obj, state) = match Self::write_state(s, root, body) {
                Ok(x) => x,
                Err(e) => {
                    undo(&[root]);
                    return Err(e);
                }
            };
            // The commit point: until the PIN changes, the old shares open the token (and the
            // next unseal removes the new set's objects); after it, the new ones.
            if let Err(e) = s.set_pin(&old_pin, &set.pin) {
                undo(&[obj, root]);
                return Err(match e {
                    CkError::Pkcs11(RvError::PinIncorrect, _) => Error::Share(
                        "the shares do not reconstruct the token's current pin".to_string(),
                    ),
                    _ => Error::Provider("set pin"),
                });
            }
            if let Some(open) = inner.open.as_mut() {
                let _ = s.destroy_object(open.state);
                let _ = s.destroy_object(open.root);
                open.state = obj;
                open.root = root;
            }
            let id = set.set.id.clone();
            inner.candidates.clear();
            inner.candidates.insert(id.clone(), (obj, state));
            inner.current = id.clone();
            inner.pending.clear();
            Ok(RekeyOutcome {
                share_set: id,
                shares,
                threshold,
                root_kcv,
            })
        })?;
        Ok(outcome)
    }

    fn audit_anchor(&self) -> Result<Option<AuditAnchor>> {
        let inner = self.read();
        inner.open.as_ref().ok_or(Error::Sealed)?;
        Ok(inner.state()?.body.audit_anchor.clone())
    }

    fn set_audit_anchor(&self, anchor: &AuditAnchor) -> Result<()> {
        let mut inner = self.write();
        inner.open.as_ref().ok_or(Error::Sealed)?;
        let mut body = inner.state()?.body.clone();
        if let Some(held) = &body.audit_anchor {
            if held.seq > anchor.seq {
                return Err(Error::Refused(format!(
                    "the audit anchor is at event {}, refusing to move it back to {}",
                    held.seq, anchor.seq
                )));
            }
            if held == anchor {
                return Ok(());
            }
            if held.seq == anchor.seq {
                return Err(Error::Refused(format!(
                    "the audit anchor already holds another event {}: the chain has forked",
                    held.seq
                )));
            }
        }
        body.audit_anchor = Some(anchor.clone());
        self.pool.with(|s| self.commit(&mut inner, s, body))
    }

    fn fill_random(&self, buf: &mut [u8]) -> Result<()> {
        self.pool
            .with(|s| s.generate_random_slice(buf).map_err(ck("random")))
    }
}

/// Process-wide lock of `f` against other callers of this function: tests that touch one
/// SoftHSM token directory run one at a time.
#[doc(hidden)]
pub fn serialised<T>(f: impl FnOnce() -> T) -> T {
    static LOCK: Mutex<()> = Mutex::new(());
    let _g: MutexGuard<'_, ()> = vault::lock(&LOCK);
    f()
}
