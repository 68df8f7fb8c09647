//! The holder registry: holders' personal data sealed under a data key, found only through
//! keyed blind indexes; cards and their lifecycle records; registry imports that apply all or
//! nothing and revoke cards implicitly.
//!
//! # Storage
//!
//! - [`Tree::Holders`]: `holder id` → [`HolderRecord`]: the personal data as one envelope
//!   (AES-256-GCM under a `holder` data key, AAD bound to the holder id), the deceased flag,
//!   the holder's cards, and the blind-index keys it owns (to remove them when data changes).
//! - [`Tree::HolderIndex`]: `kind | HMAC-SHA256(index key, normalised value) | holder id`,
//!   for the codice fiscale and for surname + birth date. Exact match only: a search computes
//!   the same HMAC and reads one key range. No clear personal datum is stored anywhere.
//! - [`Tree::Cards`]: `serial` → [`CardRecord`] (state, dates, holder id, reason, activation
//!   references; identity documents sealed like personal data).
//! - [`Tree::CardExpiry`]: `YYYY-MM-DD | serial`, for the daily sweep.
//!
//! Every operation writes its state, registry data, code deletions and audit events in one
//! store batch ([`AuditLog::commit_all`]).

use super::card::{CardState, Reason};
use super::date::Date;
use super::registry_parse::{CardEntry, HolderEntry};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use vault::Actor;
use vault::CodeVault;
use vault::Keyring;
use vault::{lock, Clock};
use vault::{AuditLog, NewEvent};
use vault::{Batch, Store, Tree};
use vault::{DataKeyId, Envelope, Sealer};
use vault::{Error, Refusal, Result};
use vault::{Hsm, KeyPurpose};

const NEXT_HOLDER_KEY: &[u8] = b"cms.next_holder";
/// Blind index kinds.
const INDEX_CF: u8 = 1;
const INDEX_SURNAME_BIRTH: u8 = 2;
/// Most holders one search returns.
pub const MAX_SEARCH: usize = 50;

/// A holder's personal data, in clear only while it is used. `Debug` is redacted.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersonalData {
    /// Codice fiscale, normalised (upper case).
    pub codice_fiscale: String,
    /// Given name(s).
    pub given_names: String,
    /// Surname.
    pub surname: String,
    /// Birth date.
    pub birth_date: Date,
    /// E-mail address, if registered.
    pub email: Option<String>,
    /// Mobile number (E.164), if registered.
    pub mobile: Option<String>,
    /// Postal address, if registered.
    pub address: Option<String>,
}

impl fmt::Debug for PersonalData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PersonalData(<personal data>)")
    }
}

/// A stored holder. Holds no clear personal datum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderRecord {
    /// Holder id (`h000001`).
    pub id: String,
    /// The data key the personal data is sealed under.
    pub key: u32,
    /// The personal data, one envelope, hex.
    pub sealed: String,
    /// Marked deceased by the registry.
    pub deceased: bool,
    /// The holder's cards, by serial.
    pub cards: Vec<String>,
    /// The blind-index keys (hex) this holder owns.
    pub index: Vec<String>,
    /// Created (Unix ms).
    pub created_ms: u64,
    /// Last changed (Unix ms).
    pub updated_ms: u64,
    /// When a registry import last changed (added, replaced or removed) the mobile number
    /// (Unix ms); `None` if it never changed after the holder was created. Rule 13: no SMS to a
    /// number changed after the card's last identification.
    #[serde(default)]
    pub mobile_changed_ms: Option<u64>,
    /// As `mobile_changed_ms`, for the e-mail address.
    #[serde(default)]
    pub email_changed_ms: Option<u64>,
}

/// How a card was activated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivationRecord {
    /// `holder` or `delegate`.
    pub by: String,
    /// Reference of the signed consent form (its id or hash).
    pub consent_ref: String,
    /// Reference of the delegation form, for a delegate.
    pub delegation_ref: Option<String>,
    /// The identity documents and the delegate's identity, sealed (hex envelope, AAD = serial).
    pub sealed: String,
    /// The data key of `sealed`.
    pub key: u32,
    /// When (Unix ms).
    pub at_ms: u64,
    /// The operator's account.
    pub operator: String,
}

/// A card's lifecycle record. Holds no clear personal datum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardRecord {
    /// Serial.
    pub serial: String,
    /// Holder id.
    pub holder: String,
    /// State.
    pub state: CardState,
    /// Expiry date.
    pub expiry: Option<Date>,
    /// The card that replaces it.
    pub replaced_by: Option<String>,
    /// Why it was last suspended or revoked.
    pub reason: Option<Reason>,
    /// How it was activated.
    pub activation: Option<ActivationRecord>,
    /// The latest identification of the holder after activation (documents seen again at the
    /// counter, e.g. after a contact changed), if any.
    #[serde(default)]
    pub reidentified: Option<ActivationRecord>,
    /// Known to plico since (Unix ms).
    pub created_ms: u64,
    /// Last state change (Unix ms).
    pub changed_ms: u64,
}

impl CardRecord {
    /// When the holder was last identified for this card (Unix ms): the latest
    /// re-identification, else the activation; `None` before activation.
    pub fn identified_ms(&self) -> Option<u64> {
        self.reidentified
            .as_ref()
            .or(self.activation.as_ref())
            .map(|a| a.at_ms)
    }
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::Storage(format!("a stored {what} is damaged: {e}")))
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::Storage(format!("encoding a record: {e}")))
}

/// Normalises a name for the blind index: trimmed, inner whitespace collapsed, typographic
/// apostrophe as `'` (as the registry parser stores names), upper case.
pub fn normalise_name(name: &str) -> String {
    name.replace('\u{2019}', "'")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_uppercase()
}

/// What a search looks for. Exact match on normalised values.
#[derive(Clone, PartialEq, Eq)]
pub enum SearchKey {
    /// A codice fiscale.
    CodiceFiscale(String),
    /// A surname and a birth date.
    SurnameBirth {
        /// Surname.
        surname: String,
        /// Birth date.
        birth_date: Date,
    },
}

impl fmt::Debug for SearchKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SearchKey::CodiceFiscale(_) => f.write_str("SearchKey::CodiceFiscale(<personal>)"),
            SearchKey::SurnameBirth { .. } => f.write_str("SearchKey::SurnameBirth(<personal>)"),
        }
    }
}

/// A holder as the counter sees it: id, personal data, cards and their states.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HolderView {
    /// Holder id.
    pub id: String,
    /// Personal data.
    pub personal: PersonalData,
    /// Deceased.
    pub deceased: bool,
    /// Cards: serial and state.
    pub cards: Vec<(String, CardState)>,
}

/// What a registry import did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RegistryOutcome {
    /// Holders created.
    pub holders_created: u64,
    /// Holders updated.
    pub holders_updated: u64,
    /// Cards created.
    pub cards_created: u64,
    /// Cards revoked implicitly, with the reason.
    pub revoked: Vec<(String, Reason)>,
}

/// The card management side of the vault: registry, lifecycle, reports. One per process.
pub struct Cards {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) codes: Arc<CodeVault>,
    /// Serialises every change (registry, lifecycle, reports): each reads, checks and writes
    /// in one step, holding it exclusively. Reads that span several records (a card's
    /// status) hold it shared: they see no change half-made, and do not wait for each other.
    ops: RwLock<()>,
    /// The sealer for personal data written by this process (a fresh `holder` key per
    /// process, created on first use: a sealer's counter cannot outlive its process).
    sealer: Mutex<Option<Sealer>>,
    /// The print file directory ([`super::mailers`]), loaded on first use.
    pub(crate) mailers: Mutex<super::mailers::MailerBook>,
    /// Set while a print run is going (one at a time).
    pub(crate) print_running: std::sync::atomic::AtomicBool,
    /// The time of every record and deadline (the audit log's clock in the service).
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for Cards {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cards")
    }
}

impl Cards {
    /// The registry over `codes`' store.
    pub fn new(codes: Arc<CodeVault>) -> Cards {
        Cards {
            store: codes.store().clone(),
            codes,
            ops: RwLock::new(()),
            sealer: Mutex::new(None),
            mailers: Mutex::default(),
            print_running: std::sync::atomic::AtomicBool::new(false),
            clock: vault::system_clock(),
        }
    }

    /// The same registry timed by `clock` (give it the clock of the audit log it writes to).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Cards {
        self.clock = clock;
        self
    }

    /// Now, in milliseconds since the epoch, by this registry's clock.
    pub(crate) fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Today's UTC date by this registry's clock.
    pub fn today(&self) -> Date {
        Date::today(&*self.clock)
    }

    /// Drops the `holder` key this process seals personal data with, as a seal drops every
    /// key: from then on a write of personal data needs the HSM again (and, once it is
    /// unsealed, creates a new key, as a new process would).
    pub fn forget_keys(&self) {
        *lock(&self.sealer) = None;
    }

    /// Held by every change (see `ops`). Poison-tolerant: the guarded data is the store,
    /// whose batches are atomic.
    pub(crate) fn ops_lock(&self) -> RwLockWriteGuard<'_, ()> {
        self.ops.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Held by reads of several records that must not see a change half-made (see `ops`).
    pub(crate) fn ops_shared(&self) -> RwLockReadGuard<'_, ()> {
        self.ops.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// A card's record.
    ///
    /// # Errors
    /// Store errors.
    pub fn card(&self, serial: &str) -> Result<Option<CardRecord>> {
        self.store
            .get(Tree::Cards, serial.as_bytes())?
            .map(|b| decode("card record", &b))
            .transpose()
    }

    /// A holder's record.
    ///
    /// # Errors
    /// Store errors.
    pub fn holder(&self, id: &str) -> Result<Option<HolderRecord>> {
        self.store
            .get(Tree::Holders, id.as_bytes())?
            .map(|b| decode("holder record", &b))
            .transpose()
    }

    /// Seals `clear` for `subject` under this process's holder key, creating the key on first
    /// use (its own audited commit). The operation then calls [`Cards::note_encryptions`] once,
    /// to put the keyring's count of encryptions into its batch.
    pub(crate) fn seal(
        &self,
        hsm: &dyn Hsm,
        audit: &AuditLog,
        subject: &str,
        clear: &[u8],
    ) -> Result<(u32, String)> {
        let mut sealer = lock(&self.sealer);
        if sealer.is_none() {
            let _keys = self.codes.keyring_lock();
            let mut ring = Keyring::load(&*self.store)?;
            *sealer = Some(audit.create_key(&mut ring, hsm, KeyPurpose::Holder)?);
        }
        let s = sealer.as_mut().ok_or(Error::RegistryDamaged {
            what: "no holder key after creating one",
            holder: None,
        })?;
        let env = s.seal(subject, &vault::Plaintext::from_slice(clear))?;
        Ok((s.key_id().0, hex::encode(env.as_bytes())))
    }

    /// Puts the holder key's count of encryptions into `batch` (the whole keyring record), and
    /// returns the keyring lock, which the caller holds until `batch` is committed: the copy
    /// of the keyring in `batch` must not land over a change made meanwhile (a rewrap, a
    /// shredded batch's key taken out).
    pub(crate) fn note_encryptions(&self, batch: &mut Batch) -> Result<Option<MutexGuard<'_, ()>>> {
        let sealer = lock(&self.sealer);
        let Some(s) = sealer.as_ref() else {
            return Ok(None);
        };
        let keys = self.codes.keyring_lock();
        let mut ring = Keyring::load(&*self.store)?;
        ring.record_encryptions(s)?;
        ring.save_into(batch)?;
        Ok(Some(keys))
    }

    /// Opens what [`Cards::seal`] sealed for `subject`.
    pub(crate) fn open(
        &self,
        hsm: &dyn Hsm,
        key: u32,
        subject: &str,
        sealed: &str,
    ) -> Result<Vec<u8>> {
        let bytes = hex::decode(sealed).map_err(|_| Error::Integrity)?;
        let opener = self.codes.holder_opener(hsm, DataKeyId(key))?;
        let clear = opener.open(subject, &Envelope::from_bytes(bytes))?;
        Ok(clear.expose_secret().to_vec())
    }

    pub(crate) fn personal(&self, hsm: &dyn Hsm, rec: &HolderRecord) -> Result<PersonalData> {
        let clear = zeroize::Zeroizing::new(self.open(hsm, rec.key, &rec.id, &rec.sealed)?);
        decode("holder's personal data", &clear)
    }

    fn index_key(&self, hsm: &dyn Hsm, audit: &AuditLog, kind: u8, value: &str) -> Result<Vec<u8>> {
        let mut msg = b"plico-holder-index v1:".to_vec();
        msg.push(kind);
        msg.extend_from_slice(value.as_bytes());
        let mac = self.codes.index_mac(hsm, audit, &msg)?;
        let mut k = Vec::with_capacity(33);
        k.push(kind);
        k.extend_from_slice(&mac);
        Ok(k)
    }

    fn index_keys(
        &self,
        hsm: &dyn Hsm,
        audit: &AuditLog,
        p: &PersonalData,
    ) -> Result<Vec<Vec<u8>>> {
        Ok(vec![
            self.index_key(hsm, audit, INDEX_CF, &p.codice_fiscale.to_uppercase())?,
            self.index_key(
                hsm,
                audit,
                INDEX_SURNAME_BIRTH,
                &format!("{}|{}", normalise_name(&p.surname), p.birth_date),
            )?,
        ])
    }

    fn ids_under(&self, prefix: &[u8], after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        let mut from = prefix.to_vec();
        if let Some(a) = after {
            from.extend_from_slice(a.as_bytes());
            from.push(0);
        }
        let mut to = prefix.to_vec();
        // The prefix's successor: every index key is kind | 32 bytes | id.
        if let Some(last) = to.last_mut() {
            *last = last.wrapping_add(1);
        }
        let keys = if prefix.last() == Some(&0xFF) {
            self.store.keys(Tree::HolderIndex, &from, None, limit)?
        } else {
            self.store
                .keys(Tree::HolderIndex, &from, Some(&to), limit)?
        };
        Ok(keys
            .into_iter()
            .filter(|k| k.starts_with(prefix))
            .map(|k| String::from_utf8_lossy(&k[prefix.len()..]).into_owned())
            .collect())
    }

    /// Finds holders by an exact key, `limit` (at most [`MAX_SEARCH`]) at a time after the
    /// holder id `after`. Every search is an audit event (`holder.search`) carrying the key
    /// only as an HMAC, and the number of holders found.
    ///
    /// # Errors
    /// [`Error::SearchLimit`] for a bad limit; [`Error::Sealed`]; store and audit errors.
    pub fn search(
        &self,
        hsm: &dyn Hsm,
        audit: &AuditLog,
        key: &SearchKey,
        after: Option<&str>,
        limit: usize,
        actor: &Actor,
    ) -> Result<Vec<HolderView>> {
        if limit == 0 || limit > MAX_SEARCH {
            return Err(Error::SearchLimit { max: MAX_SEARCH });
        }
        let (prefix, mut event) = match key {
            SearchKey::CodiceFiscale(cf) => {
                let cf = cf.trim().to_uppercase();
                (
                    self.index_key(hsm, audit, INDEX_CF, &cf)?,
                    NewEvent::new("holder.search", "holders").personal("codice_fiscale", &cf),
                )
            }
            SearchKey::SurnameBirth {
                surname,
                birth_date,
            } => {
                let s = normalise_name(surname);
                (
                    self.index_key(
                        hsm,
                        audit,
                        INDEX_SURNAME_BIRTH,
                        &format!("{s}|{birth_date}"),
                    )?,
                    NewEvent::new("holder.search", "holders")
                        .personal("surname", &s)
                        .personal("birth_date", &birth_date.to_string()),
                )
            }
        };
        let mut found = Vec::new();
        for id in self.ids_under(&prefix, after, limit)? {
            let Some(rec) = self.holder(&id)? else {
                continue;
            };
            let personal = self.personal(hsm, &rec)?;
            let mut cards = Vec::new();
            for serial in &rec.cards {
                if let Some(c) = self.card(serial)? {
                    cards.push((serial.clone(), c.state));
                }
            }
            found.push(HolderView {
                id: rec.id.clone(),
                personal,
                deceased: rec.deceased,
                cards,
            });
        }
        event = event
            .by_actor(actor)
            .detail(
                "by",
                match key {
                    SearchKey::CodiceFiscale(_) => "codice_fiscale",
                    SearchKey::SurnameBirth { .. } => "surname_birth_date",
                },
            )
            .detail("found", found.len().to_string());
        audit.append(event)?;
        Ok(found)
    }

    /// Applies a parsed registry file, all or nothing: holders created or updated (found by
    /// codice fiscale), their cards created, and the implicit revocations it implies —
    /// deceased holder (all their cards), replaced card, card past expiry on `today` — with a
    /// `card.revoke` event each and a `registry.import` event, in one store batch.
    ///
    /// # Errors
    /// [`Refusal::CardOfAnotherHolder`] naming the line for an entry that contradicts the
    /// vault (a card the vault holds for another holder); nothing is applied then.
    /// [`Error::RegistryDamaged`] for damaged registry records; [`Error::Sealed`]; store and
    /// audit errors.
    pub fn import_registry(
        &self,
        hsm: &dyn Hsm,
        audit: &AuditLog,
        entries: &[HolderEntry],
        today: Date,
        actor: &Actor,
    ) -> Result<RegistryOutcome> {
        // Blind-index keys first: they may create the index key (its own commit).
        let keyed = entries
            .iter()
            .map(|e| {
                let personal = personal_of(e);
                let keys = self.index_keys(hsm, audit, &personal)?;
                Ok((e, personal, keys))
            })
            .collect::<Result<Vec<_>>>()?;
        let _ops = self.ops_lock();
        let mut run = RegistryImport::new(self, hsm, audit, actor)?;
        for (entry, personal, keys) in keyed {
            run.apply_holder(entry, &personal, &keys)?;
        }
        run.revoke_implied(today)?;
        run.commit(entries.is_empty())
    }

    /// A revoked copy of `card` and its `card.revoke` event (the caller deletes the codes and
    /// writes both).
    pub(crate) fn revoked(
        &self,
        mut card: CardRecord,
        reason: Reason,
        now: u64,
        actor: &Actor,
    ) -> (CardRecord, NewEvent) {
        let from = card.state;
        card.state = CardState::Revoked;
        card.reason = Some(reason);
        card.changed_ms = now;
        let event = actor
            .event("card.revoke", card.serial.clone())
            .detail("from", from.to_string())
            .detail("reason", reason.as_str())
            .detail("codes", "deleted");
        (card, event)
    }

    fn next_holder_id(&self) -> Result<u64> {
        match self.store.get(Tree::Meta, NEXT_HOLDER_KEY)? {
            Some(b) => <[u8; 8]>::try_from(b.as_slice())
                .map(u64::from_be_bytes)
                .map_err(|_| Error::RegistryDamaged {
                    what: "the holder counter is damaged",
                    holder: None,
                }),
            None => Ok(1),
        }
    }
}

/// One registry import under way ([`Cards::import_registry`]): the holders and cards it
/// touched, kept here until the file is applied whole, and the batch and events it will commit.
///
/// Phases: [`RegistryImport::apply_holder`] for each entry (holder found or created, personal
/// data and indexes replaced, cards created or updated), then
/// [`RegistryImport::revoke_implied`] once every holder and card of the file is known, then
/// [`RegistryImport::commit`].
struct RegistryImport<'a> {
    cards_domain: &'a Cards,
    hsm: &'a dyn Hsm,
    audit: &'a AuditLog,
    actor: &'a Actor,
    /// The time of every record written.
    now: u64,
    batch: Batch,
    events: Vec<NewEvent>,
    out: RegistryOutcome,
    /// Holders touched, by id.
    holders: BTreeMap<String, HolderRecord>,
    /// Cards touched, by serial, until the revocation phase writes them.
    cards: BTreeMap<String, CardRecord>,
    /// The next holder id to hand out.
    next: u64,
    contacts_changed: u64,
}

impl<'a> RegistryImport<'a> {
    fn new(
        cards_domain: &'a Cards,
        hsm: &'a dyn Hsm,
        audit: &'a AuditLog,
        actor: &'a Actor,
    ) -> Result<Self> {
        Ok(RegistryImport {
            cards_domain,
            hsm,
            audit,
            actor,
            now: cards_domain.now_ms(),
            batch: Batch::new(),
            events: Vec::new(),
            out: RegistryOutcome::default(),
            holders: BTreeMap::new(),
            cards: BTreeMap::new(),
            next: cards_domain.next_holder_id()?,
            contacts_changed: 0,
        })
    }

    /// Phase 1, one entry: its holder (found by the codice fiscale index, or new), the
    /// personal data and indexes replaced whole by the file's, its cards.
    fn apply_holder(
        &mut self,
        entry: &HolderEntry,
        personal: &PersonalData,
        keys: &[Vec<u8>],
    ) -> Result<()> {
        let mut rec = self.holder_for(keys)?;
        self.note_contact_changes(&mut rec, personal)?;
        self.reseal(&mut rec, personal, keys)?;
        rec.deceased |= entry.deceased;
        rec.updated_ms = self.now;
        for c in &entry.cards {
            self.apply_card(&mut rec, c)?;
        }
        self.holders.insert(rec.id.clone(), rec);
        Ok(())
    }

    /// The holder the codice fiscale index (`keys[0]`) finds — as this import left it, or as
    /// stored — or a new one with the next id.
    fn holder_for(&mut self, keys: &[Vec<u8>]) -> Result<HolderRecord> {
        let cf_key = keys.first().ok_or(Error::RegistryDamaged {
            what: "no codice fiscale index key",
            holder: None,
        })?;
        let existing = self.cards_domain.ids_under(cf_key, None, 2)?;
        let Some(id) = existing.first() else {
            let id = format!("h{:06}", self.next);
            self.next += 1;
            self.out.holders_created += 1;
            return Ok(HolderRecord {
                id,
                key: 0,
                sealed: String::new(),
                deceased: false,
                cards: Vec::new(),
                index: Vec::new(),
                created_ms: self.now,
                updated_ms: self.now,
                mobile_changed_ms: None,
                email_changed_ms: None,
            });
        };
        self.out.holders_updated += 1;
        match self.holders.remove(id) {
            Some(r) => Ok(r),
            None => self
                .cards_domain
                .holder(id)?
                .ok_or_else(|| Error::RegistryDamaged {
                    what: "indexed but missing",
                    holder: Some(id.clone()),
                }),
        }
    }

    /// Rule 13: remembers when a contact changed (compared with the data in force).
    fn note_contact_changes(
        &mut self,
        rec: &mut HolderRecord,
        personal: &PersonalData,
    ) -> Result<()> {
        if rec.sealed.is_empty() {
            return Ok(());
        }
        let old = self.cards_domain.personal(self.hsm, rec)?;
        if old.mobile != personal.mobile {
            rec.mobile_changed_ms = Some(self.now);
            self.contacts_changed += 1;
        }
        if old.email != personal.email {
            rec.email_changed_ms = Some(self.now);
            self.contacts_changed += 1;
        }
        Ok(())
    }

    /// Seals the file's personal data for the holder and swaps its blind indexes for `keys`.
    fn reseal(
        &mut self,
        rec: &mut HolderRecord,
        personal: &PersonalData,
        keys: &[Vec<u8>],
    ) -> Result<()> {
        let clear = zeroize::Zeroizing::new(encode(personal)?);
        let (key, sealed) = self
            .cards_domain
            .seal(self.hsm, self.audit, &rec.id, &clear)?;
        rec.key = key;
        rec.sealed = sealed;
        for old in &rec.index {
            let mut k = hex::decode(old).map_err(|_| Error::RegistryDamaged {
                what: "bad index key",
                holder: Some(rec.id.clone()),
            })?;
            k.extend_from_slice(rec.id.as_bytes());
            self.batch.delete(Tree::HolderIndex, k);
        }
        rec.index = keys.iter().map(hex::encode).collect();
        for k in keys {
            let mut k = k.clone();
            k.extend_from_slice(rec.id.as_bytes());
            self.batch.put(Tree::HolderIndex, k, Vec::new());
        }
        Ok(())
    }

    /// One card of the holder's entry: found (as this import left it, or as stored) or
    /// created; its expiry (and index) and replacement from the file.
    fn apply_card(&mut self, rec: &mut HolderRecord, c: &CardEntry) -> Result<()> {
        let mut card = match self.cards.remove(&c.serial) {
            Some(card) => card,
            None => match self.cards_domain.card(&c.serial)? {
                Some(card) => card,
                None => {
                    self.out.cards_created += 1;
                    CardRecord {
                        serial: c.serial.clone(),
                        holder: rec.id.clone(),
                        state: CardState::Issued,
                        expiry: None,
                        replaced_by: None,
                        reason: None,
                        activation: None,
                        reidentified: None,
                        created_ms: self.now,
                        changed_ms: self.now,
                    }
                }
            },
        };
        if card.holder != rec.id {
            return Err(Refusal::CardOfAnotherHolder { line: c.line }.into());
        }
        if let Some(old) = card.expiry {
            self.batch
                .delete(Tree::CardExpiry, expiry_key(old, &card.serial));
        }
        card.expiry = Some(c.expiry);
        self.batch.put(
            Tree::CardExpiry,
            expiry_key(c.expiry, &card.serial),
            Vec::new(),
        );
        if c.replaced_by.is_some() {
            card.replaced_by = c.replaced_by.clone();
        }
        if !rec.cards.contains(&card.serial) {
            rec.cards.push(card.serial.clone());
        }
        self.cards.insert(card.serial.clone(), card);
        Ok(())
    }

    /// Phase 2: every card of every holder touched, revoked when the holder is deceased, the
    /// card replaced or past its expiry on `today` (its codes deleted, a `card.revoke` event
    /// each), and written.
    fn revoke_implied(&mut self, today: Date) -> Result<()> {
        let holders = std::mem::take(&mut self.holders);
        for rec in holders.values() {
            for serial in &rec.cards {
                self.settle_card(serial, rec.deceased, today)?;
            }
        }
        self.holders = holders;
        Ok(())
    }

    /// One card in the revocation phase: revoked if its holder is deceased, it was replaced
    /// or it is past its expiry on `today` (and not revoked already); then written.
    fn settle_card(&mut self, serial: &str, deceased: bool, today: Date) -> Result<()> {
        let card = match self.cards.remove(serial) {
            Some(c) => c,
            None => match self.cards_domain.card(serial)? {
                Some(c) => c,
                None => return Ok(()),
            },
        };
        let reason = if deceased {
            Some(Reason::Deceased)
        } else if card.replaced_by.is_some() {
            Some(Reason::Replaced)
        } else if card.expiry.is_some_and(|e| e < today) {
            Some(Reason::Expired)
        } else {
            None
        };
        let card = match reason {
            Some(r) if card.state != CardState::Revoked => {
                self.out.revoked.push((serial.to_owned(), r));
                let (card, event) = self.cards_domain.revoked(card, r, self.now, self.actor);
                self.cards_domain
                    .codes
                    .delete_codes_into(serial, &mut self.batch);
                self.events.push(event.detail("implicit", "registry"));
                card
            }
            _ => card,
        };
        self.batch
            .put(Tree::Cards, serial.as_bytes().to_vec(), encode(&card)?);
        Ok(())
    }

    /// Phase 3: the holders and the holder counter into the batch, the `registry.import`
    /// summary first among the events, all committed at once.
    fn commit(mut self, empty: bool) -> Result<RegistryOutcome> {
        for rec in self.holders.values() {
            self.batch
                .put(Tree::Holders, rec.id.as_bytes().to_vec(), encode(rec)?);
        }
        self.batch.put(
            Tree::Meta,
            NEXT_HOLDER_KEY.to_vec(),
            self.next.to_be_bytes().to_vec(),
        );
        let out = self.out;
        let mut summary = self
            .actor
            .event("registry.import", "registry")
            .detail("holders_created", out.holders_created.to_string())
            .detail("holders_updated", out.holders_updated.to_string())
            .detail("cards_created", out.cards_created.to_string())
            .detail("revoked", out.revoked.len().to_string())
            .detail("contacts_changed", self.contacts_changed.to_string());
        if empty {
            summary = summary.detail("empty", "true");
        }
        self.events.insert(0, summary);
        self.audit.commit_all(self.batch, self.events)?;
        Ok(out)
    }
}

/// The expiry index key of a card.
pub(crate) fn expiry_key(expiry: Date, serial: &str) -> Vec<u8> {
    let mut k = expiry.to_string().into_bytes();
    k.push(b'|');
    k.extend_from_slice(serial.as_bytes());
    k
}

fn personal_of(e: &HolderEntry) -> PersonalData {
    PersonalData {
        codice_fiscale: e.codice_fiscale.clone(),
        given_names: e.given_names.clone(),
        surname: e.surname.clone(),
        birth_date: e.birth_date,
        email: e.email.clone(),
        mobile: e.mobile.clone(),
        address: e.address.clone(),
    }
}
