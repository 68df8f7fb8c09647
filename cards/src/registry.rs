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
//!
//! A registry file of [`BULK_MIN_HOLDERS`] holders or more is written in bulk instead
//! ([`super::registry_bulk`]): the same entries, sorted into segments of a file under one
//! commit record that lands in that one batch. The trees above are then an overlay over the
//! bulk files: every read goes through [`Cards::card`], [`Cards::holder`] and the merged key
//! scans here, never to the trees alone.

use super::card::{CardState, Reason};
use super::date::Date;
use super::registry_bulk::{self, BulkFiles, BulkView, Stager};
use super::registry_parse::{CardEntry, HolderEntry};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
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
/// A registry file of at least this many holders is written as a bulk file (sorted segments
/// under one commit record); a smaller one entry by entry. A bulk file costs every read that
/// misses the per-entry trees one directory probe, so small files, the daily changes, stay
/// out of them.
pub const BULK_MIN_HOLDERS: usize = 5_000;

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
    /// The committed bulk registry files, their directories cached.
    bulk: BulkFiles,
    /// The fewest holders a registry file is written in bulk for ([`BULK_MIN_HOLDERS`]).
    bulk_min: AtomicUsize,
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
            bulk: BulkFiles::default(),
            bulk_min: AtomicUsize::new(BULK_MIN_HOLDERS),
        }
    }

    /// Sets the fewest holders a registry file is written in bulk for (tests: both paths on
    /// small files).
    #[cfg(test)]
    pub(crate) fn set_bulk_min(&self, holders: usize) {
        self.bulk_min.store(holders, Ordering::Relaxed);
    }

    /// Removes the segments of a bulk registry import that never committed (the process
    /// died while writing them). Call it at start-up, before serving; bulk imports also do it
    /// before they start. Returns how many segments it removed.
    ///
    /// # Errors
    /// Store errors.
    pub fn recover_registry(&self) -> Result<u64> {
        let _ops = self.ops_lock();
        registry_bulk::recover(&*self.store)
    }

    /// The bulk files committed now (`view` if the caller holds one: an import, under the
    /// registry's lock, takes one for all its reads).
    fn bulk_view(&self, view: Option<&BulkView>) -> Result<BulkView> {
        match view {
            Some(v) => Ok(v.clone()),
            None => self.bulk.view(&*self.store),
        }
    }

    /// The value of `key` in one of the registry trees: the per-entry tree first, then the
    /// bulk files from the newest; and whether it came from the per-entry tree.
    fn registry_entry(
        &self,
        view: Option<&BulkView>,
        tree: Tree,
        key: &[u8],
    ) -> Result<Option<(Vec<u8>, bool)>> {
        if let Some(v) = self.store.get(tree, key)? {
            return Ok(Some((v, true)));
        }
        let view = self.bulk_view(view)?;
        if view.is_empty() {
            return Ok(None);
        }
        Ok(view.get(&*self.store, tree, key)?.map(|v| (v, false)))
    }

    /// Fills the `None`s of `values`, read for `keys` from the per-entry `tree` (a print run
    /// reads a chunk of cards or holders in one range read), from the bulk files: what
    /// [`Cards::card`] and [`Cards::holder`] would answer for each key.
    ///
    /// # Errors
    /// Store errors; a damaged bulk file.
    pub(crate) fn fill_from_bulk(
        &self,
        tree: Tree,
        keys: &[&[u8]],
        values: &mut [Option<Vec<u8>>],
    ) -> Result<()> {
        let view = self.bulk_view(None)?;
        if view.is_empty() {
            return Ok(());
        }
        for (key, value) in keys.iter().zip(values.iter_mut()) {
            if value.is_none() {
                *value = view.get(&*self.store, tree, key)?;
            }
        }
        Ok(())
    }

    /// Up to `limit` keys of a registry tree with `from <= key` (and `key < to`), ascending,
    /// from the per-entry tree and the bulk files together.
    ///
    /// # Errors
    /// Store errors; a damaged bulk file.
    pub(crate) fn registry_keys(
        &self,
        view: Option<&BulkView>,
        tree: Tree,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>> {
        let mut keys = self.store.keys(tree, from, to, limit)?;
        let view = self.bulk_view(view)?;
        if view.is_empty() {
            return Ok(keys);
        }
        let bulk = view.keys(&*self.store, tree, from, to, limit)?;
        if !bulk.is_empty() {
            keys.extend(bulk);
            keys.sort_unstable();
            keys.dedup();
            keys.truncate(limit);
        }
        Ok(keys)
    }

    fn card_located(
        &self,
        view: Option<&BulkView>,
        serial: &str,
    ) -> Result<Option<(CardRecord, bool)>> {
        self.registry_entry(view, Tree::Cards, serial.as_bytes())?
            .map(|(b, o)| Ok((decode("card record", &b)?, o)))
            .transpose()
    }

    fn holder_located(
        &self,
        view: Option<&BulkView>,
        id: &str,
    ) -> Result<Option<(HolderRecord, bool)>> {
        self.registry_entry(view, Tree::Holders, id.as_bytes())?
            .map(|(b, o)| Ok((decode("holder record", &b)?, o)))
            .transpose()
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
        Ok(self.card_located(None, serial)?.map(|(c, _)| c))
    }

    /// A holder's record.
    ///
    /// # Errors
    /// Store errors.
    pub fn holder(&self, id: &str) -> Result<Option<HolderRecord>> {
        Ok(self.holder_located(None, id)?.map(|(h, _)| h))
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
        Ok((s.key_id().0, to_hex(env.as_bytes())))
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

    fn index_keys(&self, hsm: &dyn Hsm, audit: &AuditLog, p: &PersonalRef) -> Result<Vec<Vec<u8>>> {
        Ok(vec![
            self.index_key(hsm, audit, INDEX_CF, &p.codice_fiscale.to_uppercase())?,
            self.index_key(
                hsm,
                audit,
                INDEX_SURNAME_BIRTH,
                &format!("{}|{}", normalise_name(p.surname), p.birth_date),
            )?,
        ])
    }

    /// The ids of up to `limit` holders under the index key `prefix`, after the id `after`.
    /// An index entry counts only while its holder's record still owns the key: an entry of a
    /// bulk file outlives a later change of the holder's data (see [`super::registry_bulk`]).
    fn ids_under(
        &self,
        view: Option<&BulkView>,
        prefix: &[u8],
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>> {
        Ok(self
            .holders_under(view, prefix, after, limit)?
            .into_iter()
            .map(|(id, _)| id)
            .collect())
    }

    /// As [`Cards::ids_under`], with each holder's record and whether it came from the
    /// per-entry tree.
    fn holders_under(
        &self,
        view: Option<&BulkView>,
        prefix: &[u8],
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, (HolderRecord, bool))>> {
        let view = self.bulk_view(view)?;
        let mut from = prefix.to_vec();
        if let Some(a) = after {
            from.extend_from_slice(a.as_bytes());
            from.push(0);
        }
        // The prefix's successor (none if it is all 0xFF: then the scan stops at the first
        // key past the prefix).
        let mut to = prefix.to_vec();
        while to.last() == Some(&0xFF) {
            to.pop();
        }
        let to = if let Some(last) = to.last_mut() {
            *last += 1;
            Some(to)
        } else {
            None
        };
        let owned = to_hex(prefix);
        let mut found = Vec::new();
        loop {
            let keys =
                self.registry_keys(Some(&view), Tree::HolderIndex, &from, to.as_deref(), limit)?;
            let full = keys.len() == limit;
            let Some(last) = keys.last() else { break };
            from = last.clone();
            from.push(0);
            for k in keys {
                if !k.starts_with(prefix) {
                    return Ok(found);
                }
                let id = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                match self.holder_located(Some(&view), &id)? {
                    Some(holder) if holder.0.index.contains(&owned) => {
                        found.push((id, holder));
                        if found.len() == limit {
                            return Ok(found);
                        }
                    }
                    _ => {}
                }
            }
            if !full {
                break;
            }
        }
        Ok(found)
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
        for id in self.ids_under(None, &prefix, after, limit)? {
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
    /// `card.revoke` event each and a `registry.import` event, in one store batch. A file of
    /// [`BULK_MIN_HOLDERS`] or more is written as a bulk file whose commit record is in that
    /// batch ([`super::registry_bulk`]).
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
        let bulk = entries.len() >= self.bulk_min.load(Ordering::Relaxed);
        let _ops = self.ops_lock();
        let mut run = RegistryImport::new(self, hsm, audit, actor, bulk)?;
        // Everything an entry needs that does not depend on the entries before it, on every
        // core: its blind-index keys, its personal data serialised, and what the registry
        // holds for it (nothing changes the registry meanwhile: the lock is held). The
        // blind-index keys may create the index key (its own commit): the first entry alone.
        let view = run.view.clone();
        let prepare = |e: &HolderEntry| self.prepare_entry(hsm, audit, &view, e);
        let mut prepared = Vec::with_capacity(entries.len());
        if let Some((first, rest)) = entries.split_first() {
            prepared.push(prepare(first)?);
            prepared.extend(rest.par_iter().map(prepare).collect::<Result<Vec<_>>>()?);
        }
        // Then in file order, one after the other.
        for (entry, p) in entries.iter().zip(prepared) {
            run.apply_holder(entry, p)?;
        }
        run.revoke_implied(today)?;
        run.commit(entries.is_empty())
    }

    /// The work on one entry of a registry file that depends on nothing but the entry and the
    /// registry as the import found it ([`Cards::import_registry`]). An error of the index
    /// key fails at once; one reading the stored records is kept for the entry's turn, so the
    /// import fails where the entries, applied in order, first meet it.
    fn prepare_entry(
        &self,
        hsm: &dyn Hsm,
        audit: &AuditLog,
        view: &BulkView,
        entry: &HolderEntry,
    ) -> Result<Prepared> {
        let personal = PersonalRef::of(entry);
        let keys = self.index_keys(hsm, audit, &personal)?;
        let clear = zeroize::Zeroizing::new(encode(&personal)?);
        let stored = self.stored_for(hsm, view, entry, &keys);
        Ok(Prepared {
            keys,
            clear,
            stored,
        })
    }

    /// What the registry holds for `entry`: the holder its codice fiscale index key (`keys[0]`)
    /// finds, and the entry's cards.
    fn stored_for(
        &self,
        hsm: &dyn Hsm,
        view: &BulkView,
        entry: &HolderEntry,
        keys: &[Vec<u8>],
    ) -> Result<Stored> {
        let cf_key = keys.first().ok_or(Error::RegistryDamaged {
            what: "no codice fiscale index key",
            holder: None,
        })?;
        let holder = match self
            .holders_under(Some(view), cf_key, None, 2)?
            .into_iter()
            .next()
        {
            None => None,
            Some((id, (rec, overlay))) => {
                // Rule 13: the contacts compared with the data in force.
                let contacts = if rec.sealed.is_empty() {
                    None
                } else {
                    Some(Contacts::between(&self.personal(hsm, &rec)?, entry))
                };
                Some(StoredHolder {
                    id,
                    rec,
                    overlay,
                    contacts,
                })
            }
        };
        let cards = entry
            .cards
            .iter()
            .map(|c| self.card_located(Some(view), &c.serial))
            .collect::<Result<Vec<_>>>()?;
        Ok(Stored { holder, cards })
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

/// One entry of a registry file made ready on every core ([`Cards::prepare_entry`]).
struct Prepared {
    /// The blind-index keys: codice fiscale first, then surname + birth date.
    keys: Vec<Vec<u8>>,
    /// The personal data serialised, to be sealed.
    clear: zeroize::Zeroizing<Vec<u8>>,
    /// What the registry held for the entry when the import began, or the error reading it.
    stored: Result<Stored>,
}

/// What the registry held for one entry when its import began.
struct Stored {
    /// The holder its codice fiscale finds.
    holder: Option<StoredHolder>,
    /// Each of the entry's cards, with whether it came from the per-entry tree.
    cards: Vec<Option<(CardRecord, bool)>>,
}

/// A stored holder an entry updates.
struct StoredHolder {
    id: String,
    rec: HolderRecord,
    /// Read from the per-entry tree.
    overlay: bool,
    /// How the entry changes the contacts in force (`None`: no personal data stored).
    contacts: Option<Contacts>,
}

/// Which contacts an entry changes (rule 13).
#[derive(Debug, Clone, Copy)]
struct Contacts {
    mobile: bool,
    email: bool,
}

impl Contacts {
    const NONE: Contacts = Contacts {
        mobile: false,
        email: false,
    };

    /// How `entry` changes the contacts of `old`.
    fn between(old: &PersonalData, entry: &HolderEntry) -> Contacts {
        Contacts {
            mobile: old.mobile != entry.mobile,
            email: old.email != entry.email,
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
    cards: HashMap<String, CardRecord>,
    /// The next holder id to hand out.
    next: u64,
    contacts_changed: u64,
    /// Written as a bulk file: the index and expiry keys and the cards to write go into the
    /// sets below instead of the batch, which gets their deletions only.
    bulk: bool,
    index_puts: KeySet,
    expiry_puts: KeySet,
    /// Each card once (the revocation phase settles a card once), in any order.
    card_puts: Vec<(String, CardRecord)>,
    /// Holders and cards read from the per-entry trees: a bulk file that rewrites them
    /// deletes them there, or the older entry would hide the file's.
    overlay_holders: BTreeSet<String>,
    overlay_cards: BTreeSet<String>,
    /// The bulk files committed when the import began (no other can commit meanwhile).
    view: BulkView,
}

impl<'a> RegistryImport<'a> {
    fn new(
        cards_domain: &'a Cards,
        hsm: &'a dyn Hsm,
        audit: &'a AuditLog,
        actor: &'a Actor,
        bulk: bool,
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
            cards: HashMap::new(),
            next: cards_domain.next_holder_id()?,
            contacts_changed: 0,
            bulk,
            index_puts: KeySet::default(),
            expiry_puts: KeySet::default(),
            card_puts: Vec::new(),
            overlay_holders: BTreeSet::new(),
            overlay_cards: BTreeSet::new(),
            view: cards_domain.bulk.view(&*cards_domain.store)?,
        })
    }

    /// Phase 1, one entry: its holder (found by the codice fiscale index, or new), the
    /// personal data and indexes replaced whole by the file's, its cards.
    fn apply_holder(&mut self, entry: &HolderEntry, p: Prepared) -> Result<()> {
        let stored = p.stored?;
        let (mut rec, contacts) = self.holder_for(stored.holder);
        match contacts {
            Some(c) => self.note_contacts(&mut rec, c),
            None => self.note_contact_changes(&mut rec, entry)?,
        }
        self.reseal(&mut rec, &p.clear, &p.keys)?;
        rec.deceased |= entry.deceased;
        rec.updated_ms = self.now;
        for (c, stored) in entry.cards.iter().zip(stored.cards) {
            self.apply_card(&mut rec, c, stored)?;
        }
        self.holders.insert(rec.id.clone(), rec);
        Ok(())
    }

    /// The holder the codice fiscale index found (`found`) — as this import left it, or as
    /// stored — or a new one with the next id; with the entry's contact changes when they
    /// are known already (`None`: compare with the record now).
    fn holder_for(&mut self, found: Option<StoredHolder>) -> (HolderRecord, Option<Contacts>) {
        let Some(found) = found else {
            let id = format!("h{:06}", self.next);
            self.next += 1;
            self.out.holders_created += 1;
            let rec = HolderRecord {
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
            };
            return (rec, Some(Contacts::NONE));
        };
        self.out.holders_updated += 1;
        match self.holders.remove(&found.id) {
            Some(r) => (r, None),
            None => {
                if found.overlay {
                    self.overlay_holders.insert(found.id);
                }
                (found.rec, Some(found.contacts.unwrap_or(Contacts::NONE)))
            }
        }
    }

    /// Rule 13: remembers when a contact changed (compared with the data in force).
    fn note_contact_changes(&mut self, rec: &mut HolderRecord, entry: &HolderEntry) -> Result<()> {
        if rec.sealed.is_empty() {
            return Ok(());
        }
        let old = self.cards_domain.personal(self.hsm, rec)?;
        self.note_contacts(rec, Contacts::between(&old, entry));
        Ok(())
    }

    /// Rule 13: stamps the contacts that changed.
    fn note_contacts(&mut self, rec: &mut HolderRecord, changed: Contacts) {
        if changed.mobile {
            rec.mobile_changed_ms = Some(self.now);
            self.contacts_changed += 1;
        }
        if changed.email {
            rec.email_changed_ms = Some(self.now);
            self.contacts_changed += 1;
        }
    }

    /// Seals the file's personal data for the holder and swaps its blind indexes for `keys`.
    fn reseal(&mut self, rec: &mut HolderRecord, clear: &[u8], keys: &[Vec<u8>]) -> Result<()> {
        let (key, sealed) = self
            .cards_domain
            .seal(self.hsm, self.audit, &rec.id, clear)?;
        rec.key = key;
        rec.sealed = sealed;
        for old in &rec.index {
            let mut k = hex::decode(old).map_err(|_| Error::RegistryDamaged {
                what: "bad index key",
                holder: Some(rec.id.clone()),
            })?;
            k.extend_from_slice(rec.id.as_bytes());
            self.index_puts.remove(&k);
            self.batch.delete(Tree::HolderIndex, k);
        }
        rec.index = keys.iter().map(|k| to_hex(k)).collect();
        for k in keys {
            let mut k = k.clone();
            k.extend_from_slice(rec.id.as_bytes());
            if self.bulk {
                self.index_puts.insert(k);
            } else {
                self.batch.put(Tree::HolderIndex, k, Vec::new());
            }
        }
        Ok(())
    }

    /// One card of the holder's entry: found (as this import left it, or as stored) or
    /// created; its expiry (and index) and replacement from the file.
    fn apply_card(
        &mut self,
        rec: &mut HolderRecord,
        c: &CardEntry,
        stored: Option<(CardRecord, bool)>,
    ) -> Result<()> {
        let mut card = match self.cards.remove(&c.serial) {
            Some(card) => card,
            None => match self.note_overlay(&c.serial, stored) {
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
            let old = expiry_key(old, &card.serial);
            self.expiry_puts.remove(&old);
            self.batch.delete(Tree::CardExpiry, old);
        }
        card.expiry = Some(c.expiry);
        let new = expiry_key(c.expiry, &card.serial);
        if self.bulk {
            self.expiry_puts.insert(new);
        } else {
            self.batch.put(Tree::CardExpiry, new, Vec::new());
        }
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
            None => match self.stored_card(serial)? {
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
        if self.bulk {
            self.card_puts.push((serial.to_owned(), card));
        } else {
            self.batch
                .put(Tree::Cards, serial.as_bytes().to_vec(), encode(&card)?);
        }
        Ok(())
    }

    /// A card as stored, noting whether it came from the per-entry tree.
    fn stored_card(&mut self, serial: &str) -> Result<Option<CardRecord>> {
        let stored = self.cards_domain.card_located(Some(&self.view), serial)?;
        Ok(self.note_overlay(serial, stored))
    }

    /// The card of a stored `(record, from the per-entry tree)`, noting the latter.
    fn note_overlay(
        &mut self,
        serial: &str,
        stored: Option<(CardRecord, bool)>,
    ) -> Option<CardRecord> {
        stored.map(|(card, overlay)| {
            if overlay {
                self.overlay_cards.insert(serial.to_owned());
            }
            card
        })
    }

    /// Phase 3 of a bulk file: every holder, index key, card and expiry key written as
    /// sorted segments (records encoded on every core while the ones before are written),
    /// the per-entry copies of the holders and cards it rewrites deleted, and the file's commit
    /// record, into the batch. The records are consumed as they are written.
    fn stage_bulk(&mut self) -> Result<u64> {
        let domain = self.cards_domain;
        let mut stager = Stager::begin(&*domain.store)?;
        let id = stager.id();
        let holders = std::mem::take(&mut self.holders);
        let holder_count = holders.len() as u64;
        stage_records(&mut stager, Tree::Holders, holders.into_iter())?;
        stage_keys(
            &mut stager,
            Tree::HolderIndex,
            std::mem::take(&mut self.index_puts).into_sorted(),
        )?;
        let mut cards = std::mem::take(&mut self.card_puts);
        // Sorted by serial; should a card come twice, its last record counts.
        cards.par_sort_by(|a, b| a.0.cmp(&b.0));
        cards.dedup_by(|later, kept| {
            if later.0 == kept.0 {
                std::mem::swap(later, kept);
                true
            } else {
                false
            }
        });
        stage_records(&mut stager, Tree::Cards, cards.into_iter())?;
        stage_keys(
            &mut stager,
            Tree::CardExpiry,
            std::mem::take(&mut self.expiry_puts).into_sorted(),
        )?;
        for id in &self.overlay_holders {
            self.batch.delete(Tree::Holders, id.as_bytes().to_vec());
        }
        for serial in &self.overlay_cards {
            self.batch.delete(Tree::Cards, serial.as_bytes().to_vec());
        }
        stager.finish(&mut self.batch, self.now, holder_count)?;
        Ok(id)
    }

    /// Phase 3: the holders and the holder counter into the batch, the `registry.import`
    /// summary first among the events, all committed at once.
    fn commit(mut self, empty: bool) -> Result<RegistryOutcome> {
        let file = if self.bulk {
            Some(self.stage_bulk()?)
        } else {
            for rec in self.holders.values() {
                self.batch
                    .put(Tree::Holders, rec.id.as_bytes().to_vec(), encode(rec)?);
            }
            None
        };
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
        if let Some(file) = file {
            summary = summary.detail("bulk_file", file.to_string());
        }
        self.events.insert(0, summary);
        self.audit.commit_all(self.batch, self.events)?;
        Ok(out)
    }
}

/// Records staged per chunk: encoded together on every core while the chunk before is written.
const STAGE_CHUNK: usize = 2048;

/// Writes `records` (ascending keys) as the entries of `tree` in a bulk file, their JSON
/// encoded a chunk at a time on every core while the chunk before goes to the stager.
fn stage_records<K, T>(
    stager: &mut Stager<'_>,
    tree: Tree,
    mut records: impl Iterator<Item = (K, T)>,
) -> Result<()>
where
    K: AsRef<[u8]> + Send + Sync,
    T: Serialize + Send + Sync,
{
    let encode_all = |chunk: &[(K, T)]| -> Result<Vec<Vec<u8>>> {
        chunk.par_iter().map(|(_, r)| encode(r)).collect()
    };
    let mut next_chunk = || -> Vec<(K, T)> { records.by_ref().take(STAGE_CHUNK).collect() };
    stager.begin_tree(tree)?;
    let mut chunk = next_chunk();
    let mut values = encode_all(&chunk)?;
    while !chunk.is_empty() {
        let following = next_chunk();
        let (encoded, written) = rayon::join(
            || encode_all(&following),
            || -> Result<()> {
                for ((k, _), v) in chunk.iter().zip(&values) {
                    stager.push(k.as_ref(), v)?;
                }
                Ok(())
            },
        );
        written?;
        chunk = following;
        values = encoded?;
    }
    stager.end_tree()
}

/// Writes `keys` (ascending) with empty values as the entries of `tree` in a bulk file.
fn stage_keys(stager: &mut Stager<'_>, tree: Tree, keys: Vec<Vec<u8>>) -> Result<()> {
    stager.begin_tree(tree)?;
    for k in &keys {
        stager.push(k, &[])?;
    }
    stager.end_tree()
}

/// Lower-case hex, as [`hex::encode`] writes it, a table lookup a byte (the import writes
/// every holder's sealed data in hex: `hex::encode` goes a char at a time through an iterator).
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0F)]));
    }
    out
}

/// The keys of one tree a bulk file will hold, gathered in any order and sorted once at the
/// end. A put appends; a removal (of a key this import may have put before: a holder or card
/// it touched twice) is remembered apart, and of a put and a removal of one key the later
/// counts.
#[derive(Debug, Default)]
struct KeySet {
    puts: Vec<Vec<u8>>,
    removed: HashSet<Vec<u8>>,
}

impl KeySet {
    fn insert(&mut self, key: Vec<u8>) {
        if !self.removed.is_empty() {
            self.removed.remove(&key);
        }
        self.puts.push(key);
    }

    fn remove(&mut self, key: &[u8]) {
        if !self.puts.is_empty() {
            self.removed.insert(key.to_vec());
        }
    }

    /// The keys put and not removed since, ascending, each once.
    fn into_sorted(self) -> Vec<Vec<u8>> {
        let KeySet { mut puts, removed } = self;
        puts.par_sort_unstable();
        puts.dedup();
        if !removed.is_empty() {
            puts.retain(|k| !removed.contains(k));
        }
        puts
    }
}

/// The expiry index key of a card.
pub(crate) fn expiry_key(expiry: Date, serial: &str) -> Vec<u8> {
    let mut k = expiry.to_string().into_bytes();
    k.push(b'|');
    k.extend_from_slice(serial.as_bytes());
    k
}

/// [`PersonalData`] borrowed from a registry entry: serialised exactly as [`PersonalData`] is
/// (the same fields in the same order), without copying the entry's strings.
#[derive(Serialize)]
struct PersonalRef<'a> {
    codice_fiscale: &'a str,
    given_names: &'a str,
    surname: &'a str,
    birth_date: Date,
    email: Option<&'a str>,
    mobile: Option<&'a str>,
    address: Option<&'a str>,
}

impl<'a> PersonalRef<'a> {
    fn of(e: &'a HolderEntry) -> Self {
        PersonalRef {
            codice_fiscale: &e.codice_fiscale,
            given_names: &e.given_names,
            surname: &e.surname,
            birth_date: e.birth_date,
            email: e.email.as_deref(),
            mobile: e.mobile.as_deref(),
            address: e.address.as_deref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn to_hex_writes_what_hex_encode_writes() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(to_hex(&bytes), hex::encode(&bytes));
        assert_eq!(to_hex(&[]), "");
    }

    /// The import seals the personal data borrowed from the entry: its bytes must be those of
    /// the owned [`PersonalData`], which every reader decodes.
    #[test]
    fn personal_data_borrowed_from_an_entry_encodes_as_the_owned() {
        let mut e = HolderEntry {
            first_line: 1,
            codice_fiscale: "RSSMRA85T10A562S".to_owned(),
            given_names: "Anna Maria".to_owned(),
            surname: "D'Angelo".to_owned(),
            birth_date: Date::parse("1985-12-10").unwrap(),
            email: Some("anna@example.it".to_owned()),
            mobile: None,
            address: Some("Via \"Roma\" 1, Nicolò".to_owned()),
            deceased: false,
            cards: Vec::new(),
        };
        for _ in 0..2 {
            let borrowed = encode(&PersonalRef::of(&e)).unwrap();
            assert_eq!(borrowed, encode(&personal_of(&e)).unwrap());
            let back: PersonalData = decode("personal data", &borrowed).unwrap();
            assert_eq!(back, personal_of(&e));
            e.email = None;
            e.mobile = Some("+393331234567".to_owned());
            e.address = None;
        }
    }
}
