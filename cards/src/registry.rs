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
use super::registry_parse::HolderEntry;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use vault::Actor;
use vault::CodeVault;
use vault::Keyring;
use vault::{lock, Clock};
use vault::{AuditLog, NewEvent};
use vault::{Batch, Store, Tree};
use vault::{DataKeyId, Envelope, Sealer};
use vault::{Error, Result};
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
    /// in one step.
    ops: Mutex<()>,
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
            ops: Mutex::new(()),
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

    pub(crate) fn ops_lock(&self) -> MutexGuard<'_, ()> {
        lock(&self.ops)
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
        let s = sealer
            .as_mut()
            .ok_or_else(|| Error::Storage("no holder key".into()))?;
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
    /// [`Error::Invalid`] for a bad limit; [`Error::Sealed`]; store and audit errors.
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
            return Err(Error::Invalid(format!("limit: 1 to {MAX_SEARCH}")));
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
    /// [`Error::Invalid`] naming the line for an entry that contradicts the vault (a card of
    /// another holder, a replaced card that is the replacement); nothing is applied then.
    /// [`Error::Sealed`]; store and audit errors.
    pub fn import_registry(
        &self,
        hsm: &dyn Hsm,
        audit: &AuditLog,
        entries: &[HolderEntry],
        today: Date,
        actor: &Actor,
    ) -> Result<RegistryOutcome> {
        // Blind-index keys first: they may create the index key (its own commit).
        let mut keyed = Vec::with_capacity(entries.len());
        for e in entries {
            let p = personal_of(e);
            let keys = self.index_keys(hsm, audit, &p)?;
            keyed.push((e, p, keys));
        }
        let _ops = self.ops_lock();
        let mut batch = Batch::new();
        let mut events = Vec::new();
        let mut out = RegistryOutcome::default();
        let mut holders: BTreeMap<String, HolderRecord> = BTreeMap::new();
        let mut cards: BTreeMap<String, CardRecord> = BTreeMap::new();
        let mut next = self.next_holder_id()?;
        let mut contacts_changed = 0u64;
        let now = self.now_ms();
        for (entry, personal, keys) in keyed {
            let existing = self.ids_under(&keys[0], None, 2)?;
            let mut rec = match existing.first() {
                Some(id) => match holders.remove(id) {
                    Some(r) => r,
                    None => self.holder(id)?.ok_or_else(|| {
                        Error::Storage(format!("holder {id} is indexed but missing"))
                    })?,
                },
                None => {
                    let id = format!("h{next:06}");
                    next += 1;
                    out.holders_created += 1;
                    HolderRecord {
                        id,
                        key: 0,
                        sealed: String::new(),
                        deceased: false,
                        cards: Vec::new(),
                        index: Vec::new(),
                        created_ms: now,
                        updated_ms: now,
                        mobile_changed_ms: None,
                        email_changed_ms: None,
                    }
                }
            };
            if !existing.is_empty() {
                out.holders_updated += 1;
            }
            // Rule 13: remember when a contact changed (compared with the data in force).
            if !rec.sealed.is_empty() {
                let old = self.personal(hsm, &rec)?;
                if old.mobile != personal.mobile {
                    rec.mobile_changed_ms = Some(now);
                    contacts_changed += 1;
                }
                if old.email != personal.email {
                    rec.email_changed_ms = Some(now);
                    contacts_changed += 1;
                }
            }
            // Personal data and indexes, replaced whole by the file's.
            let clear = zeroize::Zeroizing::new(encode(&personal)?);
            let (key, sealed) = self.seal(hsm, audit, &rec.id, &clear)?;
            rec.key = key;
            rec.sealed = sealed;
            for old in &rec.index {
                let mut k = hex::decode(old).map_err(|_| Error::Storage("bad index key".into()))?;
                k.extend_from_slice(rec.id.as_bytes());
                batch.delete(Tree::HolderIndex, k);
            }
            rec.index = keys.iter().map(hex::encode).collect();
            for k in &keys {
                let mut k = k.clone();
                k.extend_from_slice(rec.id.as_bytes());
                batch.put(Tree::HolderIndex, k, Vec::new());
            }
            rec.deceased |= entry.deceased;
            rec.updated_ms = now;
            for c in &entry.cards {
                let mut card = match cards.remove(&c.serial) {
                    Some(card) => card,
                    None => match self.card(&c.serial)? {
                        Some(card) => card,
                        None => {
                            out.cards_created += 1;
                            CardRecord {
                                serial: c.serial.clone(),
                                holder: rec.id.clone(),
                                state: CardState::Issued,
                                expiry: None,
                                replaced_by: None,
                                reason: None,
                                activation: None,
                                reidentified: None,
                                created_ms: now,
                                changed_ms: now,
                            }
                        }
                    },
                };
                if card.holder != rec.id {
                    return Err(Error::Invalid(format!(
                        "line {}: the card belongs to another holder",
                        c.line
                    )));
                }
                if let Some(old) = card.expiry {
                    batch.delete(Tree::CardExpiry, expiry_key(old, &card.serial));
                }
                card.expiry = Some(c.expiry);
                batch.put(
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
                cards.insert(card.serial.clone(), card);
            }
            holders.insert(rec.id.clone(), rec);
        }
        // Implicit revocations, now that every holder and card of the file is known.
        for rec in holders.values() {
            for serial in &rec.cards {
                let card = match cards.remove(serial) {
                    Some(c) => c,
                    None => match self.card(serial)? {
                        Some(c) => c,
                        None => continue,
                    },
                };
                let reason = if rec.deceased {
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
                        out.revoked.push((serial.clone(), r));
                        let (card, event) = self.revoked(card, r, now, actor);
                        self.codes.delete_codes_into(serial, &mut batch);
                        events.push(event.detail("implicit", "registry"));
                        card
                    }
                    _ => card,
                };
                batch.put(Tree::Cards, serial.as_bytes().to_vec(), encode(&card)?);
            }
        }
        for rec in holders.values() {
            batch.put(Tree::Holders, rec.id.as_bytes().to_vec(), encode(rec)?);
        }
        batch.put(
            Tree::Meta,
            NEXT_HOLDER_KEY.to_vec(),
            next.to_be_bytes().to_vec(),
        );
        let mut summary = actor
            .event("registry.import", "registry")
            .detail("holders_created", out.holders_created.to_string())
            .detail("holders_updated", out.holders_updated.to_string())
            .detail("cards_created", out.cards_created.to_string())
            .detail("revoked", out.revoked.len().to_string())
            .detail("contacts_changed", contacts_changed.to_string());
        if entries.is_empty() {
            summary = summary.detail("empty", "true");
        }
        events.insert(0, summary);
        audit.commit_all(batch, events)?;
        Ok(out)
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
                .map_err(|_| Error::Storage("the holder counter is damaged".into())),
            None => Ok(1),
        }
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
