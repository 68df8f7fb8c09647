//! The audit chain: an append-only, hash-linked log of every state change and every code
//! revealed or sent.
//!
//! ```text
//! event n = JSON { seq, time, actor, role, action, subject, outcome, request_id, details,
//!                  personal (HMACs), prev = SHA-256(stored bytes of event n-1) }
//! head    = { seq, hash, mac }            rewritten with every append (tree meta)
//! checkpoint every N events and at shutdown = { seq, hash, mac }   (tree audit_checkpoints)
//! mac     = HMAC-SHA256(audit key, "plico-audit-mark v1" | seq | hash)
//! ```
//!
//! - An event is appended **in the same store batch** as the change it records
//!   ([`AuditLog::commit`]); if the batch cannot be written, neither is.
//! - Personal data (codice fiscale, names, addresses, phone numbers, e-mail) is never stored in
//!   clear: [`NewEvent::personal`] values are replaced by HMAC-SHA256 under the audit key, which
//!   is a single-purpose key ([`crate::KeyPurpose::Audit`]) of the hierarchy. No field can hold
//!   a code.
//! - The hash chain finds a changed, removed, inserted or reordered event; the MAC'd head and
//!   checkpoints find a truncated tail, and stop someone who holds only the store from
//!   rewriting the chain and re-hashing it. While the HSM is sealed there is no audit key:
//!   events are still chained, and the head is MAC'd again at the first append after unseal.
//!
//! [`AuditLog::verify`] walks all of it and names the first broken link.

use crate::clock::Clock;
use crate::error::{Error, Refusal, Result};
use crate::hsm::{AuditAnchor, Hsm, KeyPurpose};
use crate::keyring::Keyring;
use crate::lock::{lock, read_lock, write_lock};
use crate::secret::DataKey;
use crate::store::{seq_key, Batch, Store, Tree};
use aws_lc_rs::digest::{digest, SHA256};
use aws_lc_rs::hmac;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

pub(crate) mod group;
mod verify;

use verify::verify_chain;

/// Key of the head mark in [`Tree::Meta`]: the last event appended *with* the audit key, MAC'd
/// under its own label (a checkpoint's MAC does not make a head).
const HEAD_KEY: &[u8] = b"audit_head";
/// Key of the tail in [`Tree::Meta`]: the last event appended at all, unMAC'd. Differs from the
/// head only after events appended while sealed.
const TAIL_KEY: &[u8] = b"audit_tail";
/// The only actions that may be appended while the HSM is sealed (no audit key): custodians'
/// share submissions and resets, and the creation of the audit key itself.
const SEALED_ACTIONS: [&str; 3] = ["hsm.unseal_share", "hsm.unseal_reset", "key.create"];
/// Key of the highest HSM state generation seen, in [`Tree::Meta`].
const HSM_GENERATION_KEY: &[u8] = b"hsm_generation";
/// Key of the prune base in [`Tree::Meta`].
const BASE_KEY: &[u8] = b"audit_base";
/// Events deleted per batch by a prune.
const PRUNE_CHUNK: usize = 10_000;
/// Default number of events between checkpoints.
pub const DEFAULT_CHECKPOINT_EVERY: u64 = 1000;
const ZERO_HASH: [u8; 32] = [0u8; 32];

/// How an audited call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Done.
    Ok,
    /// Refused: wrong state, wrong role, bad input.
    Refused,
    /// Attempted and failed.
    Failed,
}

/// An event to append. Built with [`NewEvent::new`] and the `with_…` methods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    actor: String,
    role: String,
    pub(crate) action: String,
    pub(crate) subject: String,
    outcome: Outcome,
    request_id: String,
    pub(crate) details: BTreeMap<String, String>,
    personal: BTreeMap<String, String>,
}

impl NewEvent {
    /// An event for `action` (dotted, e.g. `account.create`) on `subject` (a card serial, batch
    /// id, account id, key term…), by the system, outcome ok.
    pub fn new(action: &str, subject: impl Into<String>) -> Self {
        NewEvent {
            actor: "system".to_string(),
            role: "-".to_string(),
            action: action.to_string(),
            subject: subject.into(),
            outcome: Outcome::Ok,
            request_id: String::new(),
            details: BTreeMap::new(),
            personal: BTreeMap::new(),
        }
    }

    /// Who did it: an account id and its role.
    pub fn by(mut self, actor: impl Into<String>, role: impl Into<String>) -> Self {
        self.actor = actor.into();
        self.role = role.into();
        self
    }

    /// Done by `actor`: its id, role and request id.
    pub fn by_actor(self, actor: &crate::account::Actor) -> Self {
        self.by(actor.id.clone(), actor.role.clone())
            .request(actor.request_id.clone())
    }

    /// How it ended.
    pub fn outcome(mut self, outcome: Outcome) -> Self {
        self.outcome = outcome;
        self
    }

    /// The request id it belongs to.
    pub fn request(mut self, id: impl Into<String>) -> Self {
        self.request_id = id.into();
        self
    }

    /// A non-personal, non-secret detail (a role name, a count, a reason code).
    pub fn detail(mut self, key: &str, value: impl Into<String>) -> Self {
        self.details.insert(key.to_string(), value.into());
        self
    }

    /// A personal-data field (codice fiscale, name, address, phone, e-mail). Stored only as
    /// HMAC-SHA256 under the audit key, keyed by field name; needs the HSM unsealed.
    pub fn personal(mut self, field: &str, value: &str) -> Self {
        self.personal.insert(field.to_string(), value.to_string());
        self
    }
}

/// One stored event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Sequence number, from 1, without gaps.
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Account id, or `system`.
    pub actor: String,
    /// The actor's role, or `-`.
    pub role: String,
    /// What was done, e.g. `account.create`.
    pub action: String,
    /// What it was done to.
    pub subject: String,
    /// How it ended.
    pub outcome: Outcome,
    /// The request it belongs to.
    pub request_id: String,
    /// Non-personal details.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<String, String>,
    /// Personal data fields as hex HMAC-SHA256 under the audit key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub personal: BTreeMap<String, String>,
    /// Written while the HSM was sealed (no audit key; only share submissions happen then).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sealed: bool,
    /// Hex SHA-256 of the stored bytes of the previous event (zeros for the first).
    pub prev: String,
}

/// A MAC'd pointer to the chain: the head (after every append) or a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// The last event covered.
    pub seq: u64,
    /// Hex SHA-256 of its stored bytes.
    pub hash: String,
    /// Hex HMAC-SHA256 under the audit key; absent if written while sealed.
    pub mac: Option<String>,
}

/// What [`AuditLog::query`] looks for. Empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Query {
    /// Events at or after this time (ms since the epoch).
    pub from_ms: Option<u64>,
    /// Events before this time.
    pub to_ms: Option<u64>,
    /// Exact actor.
    pub actor: Option<String>,
    /// Exact action, or a prefix ending in `.` (`account.` matches `account.create`).
    pub action: Option<String>,
    /// Exact subject.
    pub subject: Option<String>,
    /// Only events with a greater sequence number (the paging cursor).
    pub after: u64,
    /// Most events to return (capped at [`MAX_PAGE`]).
    pub limit: usize,
}

/// Largest page [`AuditLog::query`] returns.
pub const MAX_PAGE: usize = 1000;

/// One page of events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Page {
    /// Matching events, oldest first.
    pub events: Vec<Event>,
    /// Pass as `after` to get the next page; absent on the last page.
    pub next: Option<u64>,
}

/// What kind of damage [`AuditLog::verify`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Damage {
    /// An event's content differs from what the next link (or the head) recorded.
    Changed,
    /// Events are missing from the middle of the chain.
    Missing,
    /// An event that was never appended sits in the chain.
    Inserted,
    /// Events are out of order.
    Reordered,
    /// Events are missing from the end of the chain.
    Truncated,
    /// A stored event cannot be read.
    Unreadable,
    /// A head or checkpoint MAC does not verify: the chain was rewritten.
    BadMac,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Damage::Changed => "changed",
            Damage::Missing => "missing",
            Damage::Inserted => "inserted",
            Damage::Reordered => "reordered",
            Damage::Truncated => "truncated",
            Damage::Unreadable => "unreadable",
            Damage::BadMac => "bad_mac",
        })
    }
}

/// The first broken link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// What happened.
    pub damage: Damage,
    /// The event it concerns.
    pub seq: u64,
    /// A sentence for the auditor.
    pub message: String,
}

/// The result of a verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Events read.
    pub events: u64,
    /// Checkpoints checked.
    pub checkpoints: u64,
    /// Whether MACs were checked (they need the audit key, i.e. an unsealed HSM).
    pub macs_checked: bool,
    /// Events up to this one were pruned (0: none).
    pub pruned_through: u64,
    /// Whether the chain was checked against the HSM's anchor.
    #[serde(default)]
    pub anchor_checked: bool,
    /// The first broken link, if any.
    pub problem: Option<Problem>,
    /// Things that are not damage but deserve a look.
    pub warnings: Vec<String>,
}

impl VerifyReport {
    /// True if no damage was found.
    pub fn intact(&self) -> bool {
        self.problem.is_none()
    }
}

struct Chain {
    next_seq: u64,
    last_hash: [u8; 32],
    since_checkpoint: u64,
}

/// An event whose personal fields are HMAC'd, ready to be chained.
struct Prepared {
    event: NewEvent,
    /// `event.personal` as HMACs under the audit key.
    personal: BTreeMap<String, String>,
}

/// Where the chain stands while events are put into a batch that is not yet written; saved
/// into [`Chain`] only once the batch is.
struct Cursor {
    next_seq: u64,
    last_hash: [u8; 32],
    since_checkpoint: u64,
    /// The newest checkpoint put into the batch: its event and hash.
    checkpoint: Option<(u64, String)>,
}

impl Cursor {
    fn at(chain: &Chain) -> Cursor {
        Cursor {
            next_seq: chain.next_seq,
            last_hash: chain.last_hash,
            since_checkpoint: chain.since_checkpoint,
            checkpoint: None,
        }
    }

    fn save(&self, chain: &mut Chain) {
        chain.next_seq = self.next_seq;
        chain.last_hash = self.last_hash;
        chain.since_checkpoint = self.since_checkpoint;
    }
}

/// The audit chain over a [`Store`].
pub struct AuditLog {
    store: Arc<dyn Store>,
    chain: Mutex<Chain>,
    /// The highest sequence number known to be flushed.
    durable: Mutex<u64>,
    /// The queue of the group commit ([`group`]).
    group: group::Group,
    /// The highest sequence number this process anchored in the HSM; its lock makes one
    /// anchor writer at a time. Lock order: key slot, this, chain.
    anchored: Mutex<u64>,
    /// Prunes run one at a time, so a base only moves forward.
    prune_lock: Mutex<()>,
    /// The HSM that keeps the chain's anchor, once unlocked.
    hsm: RwLock<Option<Arc<dyn Hsm>>>,
    key: RwLock<Option<hmac::Key>>,
    checkpoint_every: u64,
    /// The time of every event.
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "AuditLog(checkpoint every {}, key <redacted>)",
            self.checkpoint_every
        )
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}

/// What a MAC'd mark stands for; part of the MAC input, so one kind cannot pass for another
/// (a checkpoint's MAC does not make a valid base).
#[derive(Clone, Copy)]
enum MarkKind {
    /// A checkpoint.
    Chain,
    /// The head: the last event appended with the key.
    Head,
    /// The base left by a prune.
    Base,
}

/// A mark of event `seq` with hash `hash_hex`, MAC'd as `kind`.
fn signed(key: &hmac::Key, kind: MarkKind, seq: u64, hash_hex: &str) -> Mark {
    Mark {
        seq,
        hash: hash_hex.to_string(),
        mac: Some(kind_mac(key, kind, seq, hash_hex)),
    }
}

fn kind_mac(key: &hmac::Key, kind: MarkKind, seq: u64, hash_hex: &str) -> String {
    let label: &[u8] = match kind {
        MarkKind::Chain => b"plico-audit-mark v1",
        MarkKind::Head => b"plico-audit-head v1",
        MarkKind::Base => b"plico-audit-base v1",
    };
    let mut msg = label.to_vec();
    msg.extend_from_slice(&seq.to_be_bytes());
    msg.extend_from_slice(hash_hex.as_bytes());
    hex::encode(hmac::sign(key, &msg).as_ref())
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| Error::Storage(format!("cannot encode audit record: {e}")))
}

/// The prefix of every index entry of `subject`. Subjects longer than 64 KiB are cut: they
/// still index, just less precisely, and the event is checked again on read.
fn subject_prefix(subject: &str) -> Vec<u8> {
    let bytes = &subject.as_bytes()[..subject.len().min(usize::from(u16::MAX))];
    let mut k = Vec::with_capacity(2 + bytes.len() + 8);
    // The slice is at most u16::MAX long.
    k.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    k.extend_from_slice(bytes);
    k
}

fn subject_key(subject: &str, seq: u64) -> Vec<u8> {
    let mut k = subject_prefix(subject);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Reads a mark (head, tail or prune base) from [`Tree::Meta`]; an unreadable one is an error.
fn load_mark(store: &dyn Store, key: &[u8]) -> Result<Option<Mark>> {
    read_mark(store, key)?.transpose().map_err(|()| {
        Error::Storage(format!(
            "the audit record {} is unreadable; run audit verify",
            String::from_utf8_lossy(key)
        ))
    })
}

/// Decodes a stored event.
fn decode_event(seq: u64, bytes: &[u8]) -> Result<Event> {
    serde_json::from_slice(bytes)
        .map_err(|_| Error::Storage(format!("audit event {seq} is unreadable; run audit verify")))
}

fn seq_of(key: &[u8]) -> Option<u64> {
    key.try_into().ok().map(u64::from_be_bytes)
}

/// Events written by [`AuditLog::write_all`], not yet known to be durable: hand it to
/// [`AuditLog::durable`].
#[must_use = "the events are not durable until AuditLog::durable returns"]
#[derive(Debug)]
pub struct Written {
    seq: u64,
    /// What the events release, handed out once they are durable.
    release: crate::codes::Release,
    /// The event and hash of the newest checkpoint that fell due, to anchor once durable.
    checkpoint: Option<(u64, String)>,
}

impl AuditLog {
    /// Opens the chain in `store`, continuing after its head.
    ///
    /// # Errors
    /// [`Error::Storage`] if the store cannot be read or the head is unreadable.
    pub fn open(store: Arc<dyn Store>, checkpoint_every: u64) -> Result<Self> {
        let end = match load_mark(&*store, TAIL_KEY)? {
            Some(tail) => Some(tail),
            None => load_mark(&*store, HEAD_KEY)?,
        };
        let (next_seq, last_hash) = match end {
            Some(head) => {
                let mut h = [0u8; 32];
                hex::decode_to_slice(&head.hash, &mut h)
                    .map_err(|_| Error::Storage("audit head hash is not hex".to_string()))?;
                let next = head.seq.checked_add(1).ok_or_else(|| {
                    Error::Storage("audit head sequence number is out of range".to_string())
                })?;
                (next, h)
            }
            None => (1, ZERO_HASH),
        };
        Ok(AuditLog {
            store,
            chain: Mutex::new(Chain {
                next_seq,
                last_hash,
                since_checkpoint: 0,
            }),
            durable: Mutex::new(next_seq - 1),
            group: group::Group::default(),
            anchored: Mutex::new(0),
            prune_lock: Mutex::new(()),
            hsm: RwLock::new(None),
            key: RwLock::new(None),
            checkpoint_every: checkpoint_every.max(1),
            clock: crate::clock::system(),
        })
    }

    /// The same log timing its events (and the data keys it creates) by `clock`.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The clock of this log's events: the one clock of the components built over it.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    fn lock(&self) -> MutexGuard<'_, Chain> {
        // Chain is updated only after a successful write, in one assignment block.
        lock(&self.chain)
    }

    fn key(&self) -> std::sync::RwLockReadGuard<'_, Option<hmac::Key>> {
        read_lock(&self.key)
    }

    /// Installs the audit key (at unseal) or removes it (`None`, at seal).
    ///
    /// Before installing it, the whole chain is verified with it: only then is the head MAC'd
    /// again and a checkpoint written. Events appended while sealed may follow the last MAC'd
    /// head, but only those of [`SEALED_ACTIONS`]. A chain that does not verify is refused and
    /// the key is **not** installed, so nothing can be appended (and MAC'd) over the damage:
    /// the service stays unable to work until the store is restored.
    ///
    /// # Errors
    /// [`Error::Refusal`] naming the damage; HSM errors reading the anchor; store errors.
    pub fn set_key(&self, key: Option<&DataKey>) -> Result<()> {
        // Lock order everywhere: key slot, then the anchor writer, then chain.
        let mut slot = write_lock(&self.key);
        let Some(key) = key else {
            *slot = None;
            return Ok(());
        };
        let hkey = hmac::Key::new(hmac::HMAC_SHA256, key.expose_secret());
        let mut anchored = lock(&self.anchored);
        let mut chain = self.lock();
        let anchor = self.anchor()?;
        let report = verify_chain(&*self.store, Some(&hkey), anchor.as_ref())?;
        if let Some(p) = report.problem {
            *slot = None;
            return Err(Refusal::AuditBroken {
                damage: p.damage,
                seq: p.seq,
                detail: p.message.clone(),
            }
            .into());
        }
        self.checkpoint_locked(&hkey, &mut anchored, &mut chain)?;
        *slot = Some(hkey);
        Ok(())
    }

    /// Unwraps the audit key from the keyring in the store and installs it; on the first unseal
    /// of a new store, creates the key first (the keyring write and a `key.create` event land in
    /// one batch). Call once the HSM is unsealed. From then on every checkpoint is also given
    /// to the HSM as the chain's anchor.
    ///
    /// The store and the HSM vouch for each other: the store remembers the highest HSM state
    /// generation it has seen, and the HSM keeps the chain's newest checkpoint. An old copy of
    /// the HSM's state put back is refused here; an old or truncated copy of the store is found
    /// by [`AuditLog::verify`] (the chain ends before the anchor), and the HSM refuses to move
    /// its anchor back. Both put back together, consistently, cannot be told from the real
    /// thing: that needs a counter outside the machine.
    ///
    /// # Errors
    /// [`Error::Refusal`] for an HSM state older than one seen before; [`Error::Refusal`] from
    /// the HSM if the chain is behind its anchor; HSM and store errors.
    pub fn unlock(&self, hsm: Arc<dyn Hsm>) -> Result<()> {
        self.check_hsm_generation(&*hsm)?;
        *write_lock(&self.hsm) = Some(hsm.clone());
        let key = self.purpose_key(&*hsm, KeyPurpose::Audit)?;
        self.set_key(Some(&key))
    }

    /// Creates a data key for `purpose` in `ring` and commits the keyring with its
    /// `key.create` event (purpose and KCV); returns the only sealer the key will ever have.
    /// The caller serialises keyring changes.
    ///
    /// # Errors
    /// [`Error::Sealed`] and provider errors from the HSM; store errors.
    pub fn create_key(
        &self,
        ring: &mut Keyring,
        hsm: &dyn Hsm,
        purpose: KeyPurpose,
    ) -> Result<crate::envelope::Sealer> {
        let sealer = ring.create(hsm, purpose, &*self.clock)?;
        let id = sealer.key_id();
        let kcv = ring
            .get(id)
            .map(|r| r.kcv().to_string())
            .unwrap_or_default();
        let mut batch = Batch::new();
        ring.save_into(&mut batch)?;
        self.commit(
            batch,
            NewEvent::new("key.create", id.to_string())
                .detail("purpose", purpose.as_str())
                .detail("kcv", kcv),
        )?;
        Ok(sealer)
    }

    /// The newest key of a single-key purpose (audit, index, import), unwrapped; created on
    /// first use ([`AuditLog::create_key`]). The caller serialises keyring changes.
    ///
    /// # Errors
    /// As [`AuditLog::create_key`]; HSM errors from unwrapping.
    pub(crate) fn purpose_key(&self, hsm: &dyn Hsm, purpose: KeyPurpose) -> Result<DataKey> {
        let mut ring = Keyring::load(&*self.store)?;
        let id = match ring.newest(purpose) {
            Some(rec) => rec.id,
            None => self.create_key(&mut ring, hsm, purpose)?.key_id(),
        };
        ring.unwrap(hsm, id)
    }

    fn check_hsm_generation(&self, hsm: &dyn Hsm) -> Result<()> {
        let current = hsm.status().generation;
        let seen = self.seen_generation()?;
        if current < seen {
            return Err(Refusal::StaleHsmState { current, seen }.into());
        }
        if current > seen {
            self.remember_generation(current)?;
        }
        Ok(())
    }

    /// The highest HSM state generation the store has seen (0: none).
    fn seen_generation(&self) -> Result<u64> {
        match self.store.get(Tree::Meta, HSM_GENERATION_KEY)? {
            Some(b) => <[u8; 8]>::try_from(b.as_slice())
                .map(u64::from_be_bytes)
                .map_err(|_| Error::Storage("the stored hsm generation is unreadable".into())),
            None => Ok(0),
        }
    }

    /// Records the HSM state generation the store has now seen; never lowers it (two anchors
    /// written at once may report their generations out of order).
    fn remember_generation(&self, generation: u64) -> Result<()> {
        if generation <= self.seen_generation()? {
            return Ok(());
        }
        let mut b = Batch::new();
        b.put(
            Tree::Meta,
            HSM_GENERATION_KEY.to_vec(),
            generation.to_be_bytes().to_vec(),
        );
        self.store.apply(&b)
    }

    /// Hands a checkpoint to the HSM as the chain's anchor, then records the HSM generation
    /// that this write produced, so a copy of the HSM state from before it is refused later.
    fn anchor_checkpoint(&self, hsm: &dyn Hsm, seq: u64, hash: String) -> Result<()> {
        hsm.set_audit_anchor(&AuditAnchor { seq, hash })?;
        self.remember_generation(hsm.status().generation)
    }

    fn anchor_hsm(&self) -> Option<Arc<dyn Hsm>> {
        read_lock(&self.hsm).clone()
    }

    /// The HSM's anchor, if an unsealed HSM holds one (a sealed HSM tells nothing; any other
    /// failure is an error, not a silently skipped check).
    fn anchor(&self) -> Result<Option<AuditAnchor>> {
        let Some(hsm) = self.anchor_hsm() else {
            return Ok(None);
        };
        match hsm.audit_anchor() {
            Err(Error::Sealed) => Ok(None),
            other => other,
        }
    }

    /// True while the audit key is installed.
    pub fn has_key(&self) -> bool {
        self.key().is_some()
    }

    /// The HMAC under which a personal-data `value` of `field` is stored, to search for it.
    ///
    /// # Errors
    /// [`Error::Sealed`] without the audit key.
    pub fn personal_hmac(&self, field: &str, value: &str) -> Result<String> {
        let key = self.key();
        let key = key.as_ref().ok_or(Error::Sealed)?;
        let mut msg = b"plico-audit-personal v1:".to_vec();
        msg.extend_from_slice(field.as_bytes());
        msg.push(0);
        msg.extend_from_slice(value.as_bytes());
        Ok(hex::encode(hmac::sign(key, &msg).as_ref()))
    }

    /// A 32-byte key derived from the audit key for another use, named by `label`:
    /// HKDF-Expand-SHA256 (RFC 5869) with the audit key as the PRK — one HMAC block,
    /// `HMAC(audit key, label | 0x01)`. The label binds the purpose (no label may start like
    /// the chain's own `plico-audit-` messages); the account layer's TOTP sealing key is one.
    ///
    /// # Errors
    /// [`Error::Sealed`] without the audit key.
    pub(crate) fn derived_key(&self, label: &[u8]) -> Result<zeroize::Zeroizing<[u8; 32]>> {
        debug_assert!(!label.starts_with(b"plico-audit-"));
        let key = self.key();
        let key = key.as_ref().ok_or(Error::Sealed)?;
        let mut info = label.to_vec();
        info.push(1);
        let mut out = zeroize::Zeroizing::new([0u8; 32]);
        out.copy_from_slice(hmac::sign(key, &info).as_ref());
        Ok(out)
    }

    /// Appends `event` to `batch` and applies both atomically, then flushes. Returns the event's
    /// sequence number once both are durable. If the write fails, neither the change nor the
    /// event is stored; if only the flush fails (a failing disk), both are in the store's
    /// memory but may not survive a crash, and the error says so.
    ///
    /// Concurrent commits are group-committed ([`group`]): one store write and one flush for
    /// all of them, each returning once its own event is flushed.
    ///
    /// # Errors
    /// [`Error::Sealed`] for an event with personal data while the audit key is absent; store
    /// errors.
    pub fn commit(&self, batch: Batch, event: NewEvent) -> Result<u64> {
        self.commit_all(batch, vec![event])
    }

    /// [`AuditLog::commit`] for an operation that is several events (an import that also
    /// revokes cards): the change and every event land together or not at all. Returns the
    /// last event's sequence number. `events` must not be empty.
    ///
    /// # Errors
    /// As [`AuditLog::commit`]; [`Error::Invalid`] for no event.
    pub fn commit_all(&self, batch: Batch, events: Vec<NewEvent>) -> Result<u64> {
        let events = self.prepare(events)?;
        self.group_commit(group::Request { batch, events })
    }

    /// The events with their personal fields HMAC'd (outside every lock).
    fn prepare(&self, events: Vec<NewEvent>) -> Result<Vec<Prepared>> {
        if events.is_empty() {
            return Err(Error::Invalid(
                "an audited change needs at least one event".into(),
            ));
        }
        events
            .into_iter()
            .map(|event| {
                let mut personal = BTreeMap::new();
                for (field, value) in &event.personal {
                    personal.insert(field.clone(), self.personal_hmac(field, value)?);
                }
                Ok(Prepared { event, personal })
            })
            .collect()
    }

    /// Puts `events` into `batch` as the next events of the chain at `cursor` (each with its
    /// subject index entry), and a checkpoint after the last one if one fell due. Returns the
    /// last event's sequence number. The marks (tail, head) are [`AuditLog::put_marks`]'s.
    fn chain_into(
        &self,
        key: Option<&hmac::Key>,
        cursor: &mut Cursor,
        batch: &mut Batch,
        events: Vec<Prepared>,
    ) -> Result<u64> {
        let mut due = false;
        let mut seq = cursor.next_seq;
        for Prepared { event, personal } in events {
            seq = cursor.next_seq;
            let stored = Event {
                seq,
                time_ms: self.clock.now_ms(),
                actor: event.actor,
                role: event.role,
                action: event.action,
                subject: event.subject,
                outcome: event.outcome,
                request_id: event.request_id,
                details: event.details,
                personal,
                sealed: key.is_none(),
                prev: hex::encode(cursor.last_hash),
            };
            let bytes = encode(&stored)?;
            cursor.last_hash = sha256(&bytes);
            cursor.next_seq = seq + 1;
            batch.put(
                Tree::AuditSubjects,
                subject_key(&stored.subject, seq),
                Vec::new(),
            );
            batch.put(Tree::Audit, seq_key(seq).to_vec(), bytes);
            cursor.since_checkpoint += 1;
            due |= key.is_some() && cursor.since_checkpoint >= self.checkpoint_every;
        }
        // A checkpoint that fell due anywhere in this change goes after its last event.
        if let (Some(k), true) = (key, due) {
            let hash_hex = hex::encode(cursor.last_hash);
            let cp = signed(k, MarkKind::Chain, seq, &hash_hex);
            batch.put(Tree::AuditCheckpoints, seq_key(seq).to_vec(), encode(&cp)?);
            cursor.since_checkpoint = 0;
            cursor.checkpoint = Some((seq, hash_hex));
        }
        Ok(seq)
    }

    /// Puts the marks of the last event at `cursor` into `batch`: the tail, and the keyed head
    /// when the audit key is installed.
    fn put_marks(&self, key: Option<&hmac::Key>, cursor: &Cursor, batch: &mut Batch) -> Result<()> {
        let seq = cursor.next_seq - 1;
        let hash_hex = hex::encode(cursor.last_hash);
        let tail = Mark {
            seq,
            mac: None,
            hash: hash_hex.clone(),
        };
        batch.put(Tree::Meta, TAIL_KEY.to_vec(), encode(&tail)?);
        if let Some(k) = key {
            let head = signed(k, MarkKind::Head, seq, &hash_hex);
            batch.put(Tree::Meta, HEAD_KEY.to_vec(), encode(&head)?);
        }
        Ok(())
    }

    /// The first half of [`AuditLog::commit_all`]: the change and its events are written
    /// (readable, in order in the chain) but not yet flushed. A caller that holds a lock of
    /// its own writes under it and calls [`AuditLog::durable`] after releasing it, so that
    /// other writers are not held up by the flush. Nothing the change allows may happen (a
    /// code sent, an answer given) before `durable` has returned.
    ///
    /// # Errors
    /// As [`AuditLog::commit_all`].
    pub fn write_all(&self, mut batch: Batch, events: Vec<NewEvent>) -> Result<Written> {
        let release = crate::codes::Release::of(&events);
        let events = self.prepare(events)?;
        let key = self.key();
        let mut chain = self.lock();
        let mut cursor = Cursor::at(&chain);
        let seq = self.chain_into(key.as_ref(), &mut cursor, &mut batch, events)?;
        self.put_marks(key.as_ref(), &cursor, &mut batch)?;
        self.store.write(&batch)?;
        cursor.save(&mut chain);
        Ok(Written {
            seq,
            release,
            checkpoint: cursor.checkpoint,
        })
    }

    /// The second half of [`AuditLog::commit_all`]: returns once `written` (and everything
    /// written before it) is flushed, then anchors its checkpoint in the HSM if one fell due.
    /// Returns the last event's sequence number.
    ///
    /// # Errors
    /// Store errors from the flush.
    pub fn durable(&self, written: Written) -> Result<u64> {
        self.make_durable(written.seq)?;
        if let Some((seq, hash)) = written.checkpoint {
            // The events are committed whatever happens here; a failed anchor only leaves the
            // HSM's anchor at the previous checkpoint, which the next one moves on.
            let _ = self.anchor_at(seq, hash);
        }
        Ok(written.seq)
    }

    /// [`AuditLog::durable`] that returns the [`Release`](crate::Release) receipt of the
    /// written events: what they release (a `card.codes_release` event releases that card's
    /// codes, a `mailers.run_start` event the codes of its print run).
    ///
    /// # Errors
    /// As [`AuditLog::durable`].
    pub fn durable_release(&self, written: Written) -> Result<crate::codes::Release> {
        let Written {
            seq,
            release,
            checkpoint,
        } = written;
        self.durable(Written {
            seq,
            release: crate::codes::Release::of(&[]),
            checkpoint,
        })?;
        Ok(release)
    }

    /// [`AuditLog::commit_all`] that returns the [`Release`](crate::Release) receipt of
    /// `events` (see [`AuditLog::durable_release`]): the only way to a receipt.
    ///
    /// # Errors
    /// As [`AuditLog::commit_all`].
    pub fn commit_release(
        &self,
        batch: Batch,
        events: Vec<NewEvent>,
    ) -> Result<crate::codes::Release> {
        let release = crate::codes::Release::of(&events);
        self.commit_all(batch, events)?;
        Ok(release)
    }

    /// The audited use of one card's codes when what is handed out is made from them (a
    /// counter page): `make` turns `pending`'s codes into it *before* anything is written, so
    /// that a failure of `make` writes nothing (`Ok(Err(e))`); then `batch` and `events` are
    /// committed ([`AuditLog::commit_all`]) and `make`'s output is returned. `events` must
    /// release the card ([`crate::CODES_RELEASE_ACTION`] with its serial).
    ///
    /// # Errors
    /// [`Error::Refusal`] (nothing written, `make` not called) if `events` do not release the
    /// card; as [`AuditLog::commit_all`].
    pub fn commit_release_with<T, E>(
        &self,
        batch: Batch,
        events: Vec<NewEvent>,
        pending: crate::codes::PendingCodes,
        make: impl FnOnce(&crate::codes::CardCodes) -> std::result::Result<T, E>,
    ) -> Result<std::result::Result<T, E>> {
        let release = crate::codes::Release::of(&events);
        let codes = pending.open(&release)?;
        let made = match make(&codes) {
            Ok(made) => made,
            Err(e) => return Ok(Err(e)),
        };
        drop(codes);
        self.commit_all(batch, events)?;
        Ok(Ok(made))
    }

    /// Returns once event `seq` (and everything written before it) is flushed. Callers that
    /// wrote while another was flushing wait for that flush to end, and the first of them then
    /// flushes for all of them at once.
    fn make_durable(&self, seq: u64) -> Result<()> {
        let mut durable = lock(&self.durable);
        if *durable >= seq {
            return Ok(());
        }
        let written = self.lock().next_seq - 1;
        self.store.flush()?;
        *durable = (*durable).max(written);
        Ok(())
    }

    /// The highest sequence number known to be durable: every event up to it is committed
    /// (the audit stream reads no further).
    pub fn durable_seq(&self) -> u64 {
        *lock(&self.durable)
    }

    /// Appends an event with no other change.
    ///
    /// # Errors
    /// As [`AuditLog::commit`].
    pub fn append(&self, event: NewEvent) -> Result<u64> {
        self.commit(Batch::new(), event)
    }

    /// Writes a MAC'd checkpoint (and head) for the last event, if there is one and the audit
    /// key is installed, and hands it to the HSM as the chain's anchor. Called at unseal (by
    /// [`AuditLog::set_key`]) and at shutdown.
    ///
    /// # Errors
    /// Store errors; the HSM's refusal of an anchor behind the one it holds.
    pub fn checkpoint(&self) -> Result<()> {
        let key = self.key();
        let Some(key) = key.as_ref() else {
            return Ok(());
        };
        let mut anchored = lock(&self.anchored);
        let mut chain = self.lock();
        self.checkpoint_locked(key, &mut anchored, &mut chain)
    }

    /// Returns once the HSM's anchor is at event `seq` or past it, and everything up to the
    /// anchored event is flushed: for a change that must not be acknowledged before the HSM
    /// vouches for it (a committed import batch). One caller at a time writes the anchor: it
    /// writes a MAC'd checkpoint at the chain's last event (which may be past `seq`), flushes,
    /// and hands it to the HSM; callers that waited meanwhile and whose event that anchor
    /// covers return without a token write of their own. Without an HSM or the audit key there
    /// is nothing to anchor.
    ///
    /// # Errors
    /// Store errors; HSM errors writing the anchor ([`Error::Sealed`] after a seal).
    pub fn anchor_through(&self, seq: u64) -> Result<()> {
        let Some(hsm) = self.anchor_hsm() else {
            return Ok(());
        };
        let key = self.key();
        let Some(k) = key.as_ref() else {
            return Ok(());
        };
        let mut anchored = lock(&self.anchored);
        if *anchored >= seq {
            return Ok(());
        }
        let (last, hash_hex) = {
            let mut chain = self.lock();
            let last = chain.next_seq - 1;
            if last < seq {
                return Err(Error::Invalid(format!(
                    "audit event {seq} is not in the chain (it ends at {last})"
                )));
            }
            let hash_hex = hex::encode(chain.last_hash);
            let mut batch = Batch::new();
            let head = signed(k, MarkKind::Head, last, &hash_hex);
            let checkpoint = signed(k, MarkKind::Chain, last, &hash_hex);
            batch.put(Tree::Meta, HEAD_KEY.to_vec(), encode(&head)?);
            batch.put(
                Tree::AuditCheckpoints,
                seq_key(last).to_vec(),
                encode(&checkpoint)?,
            );
            self.store.write(&batch)?;
            chain.since_checkpoint = 0;
            (last, hash_hex)
        };
        // Appends go on while the checkpoint is flushed and the token written. The flush
        // covers the checkpoint and every event up to it.
        drop(key);
        self.store.flush()?;
        {
            let mut durable = lock(&self.durable);
            *durable = (*durable).max(last);
        }
        self.anchor_checkpoint(&*hsm, last, hash_hex)?;
        *anchored = last;
        Ok(())
    }

    /// Anchors the checkpoint of event `seq` (hash `hash`) in the HSM, unless an anchor at or
    /// past it was written already. Called once the checkpoint is flushed.
    fn anchor_at(&self, seq: u64, hash: String) -> Result<()> {
        let Some(hsm) = self.anchor_hsm() else {
            return Ok(());
        };
        let mut anchored = lock(&self.anchored);
        if *anchored >= seq {
            return Ok(());
        }
        self.anchor_checkpoint(&*hsm, seq, hash)?;
        *anchored = seq;
        Ok(())
    }

    /// [`AuditLog::checkpoint`] with the key, the anchor writer and the chain lock already
    /// held, so no append can slip between the checkpoint and its anchor.
    fn checkpoint_locked(
        &self,
        key: &hmac::Key,
        anchored: &mut u64,
        chain: &mut Chain,
    ) -> Result<()> {
        let seq = chain.next_seq - 1;
        if seq == 0 {
            return Ok(());
        }
        let hash_hex = hex::encode(chain.last_hash);
        let head = signed(key, MarkKind::Head, seq, &hash_hex);
        let checkpoint = signed(key, MarkKind::Chain, seq, &hash_hex);
        let mut batch = Batch::new();
        batch.put(Tree::Meta, HEAD_KEY.to_vec(), encode(&head)?);
        batch.put(
            Tree::AuditCheckpoints,
            seq_key(seq).to_vec(),
            encode(&checkpoint)?,
        );
        self.store.apply(&batch)?;
        chain.since_checkpoint = 0;
        if let Some(hsm) = self.anchor_hsm() {
            self.anchor_checkpoint(&*hsm, seq, hash_hex)?;
            *anchored = seq;
        }
        Ok(())
    }

    /// Removes the oldest events, whole checkpointed segments only: everything up to the
    /// newest checkpoint whose event is older than `cutoff_ms`. First a MAC'd *base* (the last
    /// pruned event's hash) is written in the same batch as the `audit.prune` event (`event`
    /// supplies actor and request), then the old events and checkpoints are deleted in chunks.
    /// A crash between leaves old events below the base, which verify ignores and the next
    /// prune removes. Returns the last pruned sequence number (0 if nothing was old enough).
    ///
    /// # Errors
    /// [`Error::Sealed`] without the audit key; store errors.
    pub fn prune(&self, cutoff_ms: u64, event: NewEvent) -> Result<u64> {
        let _one_at_a_time = lock(&self.prune_lock);
        let base = {
            let key = self.key();
            let key = key.as_ref().ok_or(Error::Sealed)?;
            // Never sign a base over a chain that does not verify: a planted checkpoint or an
            // edited event time would otherwise turn a routine prune into a deletion of recent
            // events.
            let anchor = self.anchor()?;
            let report = {
                let _chain = self.lock();
                verify_chain(&*self.store, Some(key), anchor.as_ref())?
            };
            if let Some(p) = report.problem {
                return Err(Refusal::PruneOnBroken {
                    damage: p.damage,
                    seq: p.seq,
                }
                .into());
            }
            let current = load_mark(&*self.store, BASE_KEY)?.map_or(0, |b| b.seq);
            let mut target: Option<Mark> = None;
            let checkpoints = self.store.range(
                Tree::AuditCheckpoints,
                &seq_key(current.saturating_add(1)),
                None,
                usize::MAX,
            )?;
            for (k, v) in checkpoints {
                let seq = seq_of(&k).unwrap_or(0);
                let Some(bytes) = self.store.get(Tree::Audit, &seq_key(seq))? else {
                    break;
                };
                if decode_event(seq, &bytes)?.time_ms >= cutoff_ms {
                    break;
                }
                let m: Mark = serde_json::from_slice(&v)
                    .map_err(|_| Error::Storage(format!("checkpoint {seq} is unreadable")))?;
                target = Some(m);
            }
            target.map(|m| signed(key, MarkKind::Base, m.seq, &m.hash))
        };
        let Some(base) = base else {
            self.append(event.detail("through", "0"))?;
            self.delete_below_base()?;
            return Ok(0);
        };
        let mut batch = Batch::new();
        batch.put(Tree::Meta, BASE_KEY.to_vec(), encode(&base)?);
        self.commit(batch, event.detail("through", base.seq.to_string()))?;
        self.delete_below_base()?;
        Ok(base.seq)
    }

    /// Deletes events and checkpoints at or below the prune base, in chunks.
    fn delete_below_base(&self) -> Result<()> {
        let Some(base) = load_mark(&*self.store, BASE_KEY)? else {
            return Ok(());
        };
        let end = seq_key(base.seq.saturating_add(1));
        // The subject index is keyed by subject first: walk it all, dropping pruned entries.
        let mut from: Vec<u8> = Vec::new();
        loop {
            let chunk = self
                .store
                .range(Tree::AuditSubjects, &from, None, PRUNE_CHUNK)?;
            let Some((last, _)) = chunk.last() else { break };
            let mut next = last.clone();
            next.push(0);
            let mut batch = Batch::new();
            for (k, _) in &chunk {
                let seq = k.len().checked_sub(8).and_then(|at| seq_of(&k[at..]));
                if seq.is_some_and(|s| s <= base.seq) {
                    batch.delete(Tree::AuditSubjects, k.clone());
                }
            }
            self.store.apply(&batch)?;
            if chunk.len() < PRUNE_CHUNK {
                break;
            }
            from = next;
        }
        for tree in [Tree::Audit, Tree::AuditCheckpoints] {
            loop {
                let chunk = self.store.range(tree, &[], Some(&end), PRUNE_CHUNK)?;
                if chunk.is_empty() {
                    break;
                }
                let mut batch = Batch::new();
                for (k, _) in chunk {
                    batch.delete(tree, k);
                }
                self.store.apply(&batch)?;
            }
        }
        Ok(())
    }

    /// The first sequence number not pruned (events below it may linger after a crash in the
    /// middle of a prune, and are not shown).
    fn first_retained(&self) -> Result<u64> {
        Ok(load_mark(&*self.store, BASE_KEY)?.map_or(0, |b| b.seq.saturating_add(1)))
    }

    /// Events matching `q`, oldest first, one page at a time.
    ///
    /// # Errors
    /// Store errors; [`Error::Storage`] for an unreadable event.
    pub fn query(&self, q: &Query) -> Result<Page> {
        let limit = q.limit.clamp(1, MAX_PAGE);
        if let Some(subject) = &q.subject {
            return self.query_subject(q, subject, limit);
        }
        let mut events = Vec::new();
        let mut full = false;
        let from = q.after.saturating_add(1).max(self.first_retained()?);
        self.scan_events(from, |seq, bytes| {
            let e = decode_event(seq, bytes)?;
            if matches(q, &e) {
                events.push(e);
                full = events.len() == limit;
            }
            Ok(!full)
        })?;
        let next = if full {
            events.last().map(|e| e.seq)
        } else {
            None
        };
        Ok(Page { events, next })
    }

    /// Calls `visit` with every stored event from sequence number `from` on, in order, reading
    /// the store in chunks, until `visit` returns `Ok(false)`.
    fn scan_events(
        &self,
        mut from: u64,
        mut visit: impl FnMut(u64, &[u8]) -> Result<bool>,
    ) -> Result<()> {
        loop {
            let chunk = self.store.range(Tree::Audit, &seq_key(from), None, 1024)?;
            let Some((last_key, _)) = chunk.last() else {
                return Ok(());
            };
            let last = seq_of(last_key).unwrap_or(u64::MAX);
            for (k, v) in &chunk {
                if !visit(seq_of(k).unwrap_or(0), v)? {
                    return Ok(());
                }
            }
            if last == u64::MAX {
                return Ok(());
            }
            from = last + 1;
        }
    }

    /// [`AuditLog::query`] with a subject: walks the subject index instead of the chain, so a
    /// card's history costs its own events, not the whole chain's.
    fn query_subject(&self, q: &Query, subject: &str, limit: usize) -> Result<Page> {
        let prefix = subject_prefix(subject);
        let mut end = prefix.clone();
        end.extend_from_slice(&[0xff; 9]);
        let mut from = subject_key(subject, q.after.saturating_add(1));
        let mut events = Vec::new();
        loop {
            let chunk = self
                .store
                .range(Tree::AuditSubjects, &from, Some(&end), 1024)?;
            let Some((last_key, _)) = chunk.last() else {
                break;
            };
            let last_key = last_key.clone();
            for (k, _) in &chunk {
                let Some(seq) = k.get(prefix.len()..).and_then(seq_of) else {
                    continue;
                };
                // An index entry whose event is gone (pruned) is skipped.
                let Some(bytes) = self.store.get(Tree::Audit, &seq_key(seq))? else {
                    continue;
                };
                let e = decode_event(seq, &bytes)?;
                if matches(q, &e) {
                    events.push(e);
                    if events.len() == limit {
                        let next = events.last().map(|e| e.seq);
                        return Ok(Page { events, next });
                    }
                }
            }
            if chunk.len() < 1024 {
                break;
            }
            from = last_key;
            from.push(0);
        }
        Ok(Page { events, next: None })
    }

    /// Writes every stored event as one JSON line, exactly as stored (so hashes can be
    /// recomputed from the export). Returns the number of events.
    ///
    /// # Errors
    /// Store errors; [`Error::Storage`] if `out` fails.
    pub fn export(&self, out: &mut dyn Write) -> Result<u64> {
        let mut n = 0u64;
        self.scan_events(self.first_retained()?, |_, v| {
            out.write_all(v)
                .and_then(|()| out.write_all(b"\n"))
                .map_err(|e| Error::Storage(format!("audit export: cannot write: {e}")))?;
            n += 1;
            Ok(true)
        })?;
        Ok(n)
    }

    /// Walks the whole chain, the head and the checkpoints, and reports the first broken link.
    ///
    /// # Errors
    /// Store errors only; damage is reported in the [`VerifyReport`].
    pub fn verify(&self) -> Result<VerifyReport> {
        let anchor = self.anchor()?;
        let key = self.key();
        // Appends wait while the chain is walked, so the walk sees one consistent chain.
        let _chain = self.lock();
        verify_chain(&*self.store, key.as_ref(), anchor.as_ref())
    }
}

fn matches(q: &Query, e: &Event) -> bool {
    q.from_ms.is_none_or(|t| e.time_ms >= t)
        && q.to_ms.is_none_or(|t| e.time_ms < t)
        && q.actor.as_ref().is_none_or(|a| &e.actor == a)
        && q.subject.as_ref().is_none_or(|s| &e.subject == s)
        && q.action.as_ref().is_none_or(|a| {
            if a.ends_with('.') {
                e.action.starts_with(a.as_str())
            } else {
                &e.action == a
            }
        })
}

/// Reads a mark, keeping "unreadable" (the inner `Err`) apart from a failing store, so
/// [`verify_chain`] can report it as damage.
fn read_mark(store: &dyn Store, key: &[u8]) -> Result<Option<std::result::Result<Mark, ()>>> {
    Ok(store
        .get(Tree::Meta, key)?
        .map(|b| serde_json::from_slice::<Mark>(&b).map_err(|_| ())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use crate::hsm_double::DoubleHsm;
    use crate::store::memory::{FailingStore, MemoryStore};
    use crate::store::sled::SledStore;

    fn key() -> DataKey {
        DataKey::from_bytes([0x42; 32])
    }

    /// A chain of `n` events in a fresh sled store, with the audit key installed.
    fn chain(dir: &std::path::Path, n: u64, every: u64) -> (Arc<dyn Store>, AuditLog) {
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir).unwrap());
        let log = AuditLog::open(store.clone(), every).unwrap();
        log.set_key(Some(&key())).unwrap();
        for i in 1..=n {
            log.append(
                NewEvent::new("card.activate", format!("SERIAL{i:04}"))
                    .by("acc_op", "operator")
                    .request(format!("req-{i}"))
                    .personal("codice_fiscale", "RSSMRA80A01H501U"),
            )
            .unwrap();
        }
        (store, log)
    }

    fn raw(store: &dyn Store, seq: u64) -> Vec<u8> {
        store.get(Tree::Audit, &seq_key(seq)).unwrap().unwrap()
    }

    fn put(store: &dyn Store, seq: u64, bytes: Vec<u8>) {
        let mut b = Batch::new();
        b.put(Tree::Audit, seq_key(seq).to_vec(), bytes);
        store.apply(&b).unwrap();
    }

    /// Writes `mark` over the meta record `key` (HEAD_KEY, TAIL_KEY…), as an intruder would.
    fn put_mark(store: &dyn Store, key: &[u8], mark: &Mark) {
        let mut b = Batch::new();
        b.put(Tree::Meta, key.to_vec(), serde_json::to_vec(mark).unwrap());
        store.apply(&b).unwrap();
    }

    /// A mark of stored event `seq` without a MAC, as someone without the key can make it.
    fn bare_mark(store: &dyn Store, seq: u64) -> Mark {
        Mark {
            seq,
            hash: hex::encode(sha256(&raw(store, seq))),
            mac: None,
        }
    }

    fn delete(store: &dyn Store, seq: u64) {
        let mut b = Batch::new();
        b.delete(Tree::Audit, seq_key(seq).to_vec());
        store.apply(&b).unwrap();
    }

    fn damage(log: &AuditLog) -> (Damage, u64, String) {
        let r = log.verify().unwrap();
        let p = r.problem.expect("damage should be found");
        (p.damage, p.seq, p.message)
    }

    #[test]
    fn an_intact_chain_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let (_, log) = chain(dir.path(), 25, 10);
        let r = log.verify().unwrap();
        assert!(r.intact(), "{r:?}");
        assert_eq!((r.events, r.checkpoints, r.macs_checked), (25, 2, true));
        assert!(r.warnings.is_empty(), "{r:?}");
    }

    #[test]
    fn a_changed_event_is_found_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let (store, log) = chain(dir.path(), 20, 100);
        let text = String::from_utf8(raw(&*store, 7)).unwrap();
        put(
            &*store,
            7,
            text.replace("\"ok\"", "\"refused\"").into_bytes(),
        );
        let (d, seq, msg) = damage(&log);
        assert_eq!((d, seq), (Damage::Changed, 7), "{msg}");
        assert!(msg.contains("event 7") && msg.contains("changed"), "{msg}");
    }

    #[test]
    fn a_changed_last_event_is_found_through_the_head() {
        let dir = tempfile::tempdir().unwrap();
        let (store, log) = chain(dir.path(), 20, 100);
        let text = String::from_utf8(raw(&*store, 20)).unwrap();
        put(
            &*store,
            20,
            text.replace("SERIAL0020", "SERIAL9999").into_bytes(),
        );
        assert_eq!(damage(&log).0, Damage::Changed);
        assert_eq!(damage(&log).1, 20);
    }

    #[test]
    fn a_deleted_event_is_found_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let (store, log) = chain(dir.path(), 20, 100);
        delete(&*store, 12);
        let (d, seq, msg) = damage(&log);
        assert_eq!((d, seq), (Damage::Missing, 12), "{msg}");
        assert!(msg.contains("event 12 is missing"), "{msg}");
    }

    #[test]
    fn an_inserted_event_is_found_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let (store, log) = chain(dir.path(), 20, 100);
        // Shift events 9..=20 up by one and forge a well-linked event 9 in the gap.
        for seq in (9..=20).rev() {
            put(&*store, seq + 1, raw(&*store, seq));
        }
        let forged = Event {
            seq: 9,
            time_ms: 1,
            actor: "acc_intruder".into(),
            role: "admin".into(),
            action: "account.create".into(),
            subject: "acc_backdoor".into(),
            outcome: Outcome::Ok,
            request_id: String::new(),
            details: BTreeMap::new(),
            personal: BTreeMap::new(),
            sealed: false,
            prev: hex::encode(sha256(&raw(&*store, 8))),
        };
        put(&*store, 9, serde_json::to_vec(&forged).unwrap());
        let (d, seq, msg) = damage(&log);
        assert_eq!((d, seq), (Damage::Inserted, 9), "{msg}");
        assert!(msg.contains("event 9 was inserted"), "{msg}");
    }

    #[test]
    fn reordered_events_are_found_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let (store, log) = chain(dir.path(), 20, 100);
        let (a, b) = (raw(&*store, 5), raw(&*store, 6));
        put(&*store, 5, b);
        put(&*store, 6, a);
        let (d, seq, msg) = damage(&log);
        assert_eq!((d, seq), (Damage::Reordered, 5), "{msg}");
        assert!(msg.contains("out of order"), "{msg}");
    }

    #[test]
    fn a_truncated_tail_is_found_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let (store, log) = chain(dir.path(), 20, 100);
        for seq in 17..=20 {
            delete(&*store, seq);
        }
        let (d, seq, msg) = damage(&log);
        assert_eq!((d, seq), (Damage::Truncated, 17), "{msg}");
        assert!(
            msg.contains("ends at event 16") && msg.contains("event 20"),
            "{msg}"
        );
    }

    #[test]
    fn a_truncated_tail_below_a_checkpoint_is_found_even_with_the_head_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let (store, log) = chain(dir.path(), 20, 5);
        for seq in 12..=20 {
            delete(&*store, seq);
        }
        // The intruder points the head at event 11 (without the key, its MAC cannot be made).
        put_mark(&*store, HEAD_KEY, &bare_mark(&*store, 11));
        let (d, seq, msg) = damage(&log);
        // The planted head has no valid head MAC: found before the walk even starts.
        assert_eq!((d, seq), (Damage::BadMac, 11), "{msg}");
    }

    #[test]
    fn a_truncated_chain_is_not_laundered_by_the_next_unseal() {
        let dir = tempfile::tempdir().unwrap();
        let (store, log) = chain(dir.path(), 20, 5);
        drop(log);
        // With the server down: drop events 12..=20 and the checkpoints above 11, and point a
        // bare head (no key, no MAC) at event 11.
        let mut b = Batch::new();
        for seq in 12..=20 {
            b.delete(Tree::Audit, seq_key(seq).to_vec());
            b.delete(Tree::AuditCheckpoints, seq_key(seq).to_vec());
        }
        store.apply(&b).unwrap();
        put_mark(&*store, HEAD_KEY, &bare_mark(&*store, 11));
        // Restart and unseal: the forged head must stay bare, so verify still sees it.
        let log = AuditLog::open(store.clone(), 5).unwrap();
        let err = log.set_key(Some(&key())).unwrap_err().to_string();
        assert!(err.contains("bad_mac at event 11"), "{err}");
        assert!(
            !log.has_key(),
            "the key is not installed over a damaged chain"
        );
        assert!(log
            .append(NewEvent::new("card.activate", "x").personal("cf", "y"))
            .is_err());
    }

    #[test]
    fn a_store_rolled_back_behind_the_hsm_anchor_is_found() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let hsm: Arc<dyn Hsm> = Arc::new(DoubleHsm::new());
        let log = AuditLog::open(store.clone(), 5).unwrap();
        log.unlock(hsm.clone()).unwrap(); // event 1 (key.create), checkpointed at unlock
        let mut saved = None;
        for i in 0..19 {
            let seq = log
                .append(NewEvent::new("card.activate", format!("S{i}")))
                .unwrap();
            if seq == 11 {
                // A backup of the store taken now: its head and tail as they are.
                saved = Some((
                    store.get(Tree::Meta, HEAD_KEY).unwrap().unwrap(),
                    store.get(Tree::Meta, TAIL_KEY).unwrap().unwrap(),
                ));
            }
        }
        let (head11, tail11) = saved.unwrap();
        // Checkpoints (and anchors) at 1, 6, 11, 16.
        assert_eq!(hsm.audit_anchor().unwrap().unwrap().seq, 16);
        assert!(log.verify().unwrap().anchor_checked);
        // Put the backup back: every hash and MAC in the store is genuine, only the HSM's
        // anchor knows better.
        let mut b = Batch::new();
        for seq in 12..=20 {
            b.delete(Tree::Audit, seq_key(seq).to_vec());
            b.delete(Tree::AuditCheckpoints, seq_key(seq).to_vec());
        }
        b.put(Tree::Meta, HEAD_KEY.to_vec(), head11);
        b.put(Tree::Meta, TAIL_KEY.to_vec(), tail11);
        store.apply(&b).unwrap();
        let log = AuditLog::open(store.clone(), 5).unwrap();
        let err = log.unlock(hsm.clone()).unwrap_err().to_string();
        assert!(
            err.contains("truncated at event 12") && err.contains("anchor records event 16"),
            "{err}"
        );
        assert!(
            !log.has_key(),
            "nothing may be appended over the rolled-back chain"
        );
        assert_eq!(
            hsm.audit_anchor().unwrap().unwrap().seq,
            16,
            "the anchor never goes back"
        );
    }

    #[test]
    fn an_older_hsm_state_than_the_store_has_seen_is_refused() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let mut b = Batch::new();
        b.put(
            Tree::Meta,
            HSM_GENERATION_KEY.to_vec(),
            5u64.to_be_bytes().to_vec(),
        );
        store.apply(&b).unwrap();
        let log = AuditLog::open(store, 5).unwrap();
        let hsm: Arc<dyn Hsm> = Arc::new(DoubleHsm::new());
        let r = log.unlock(hsm);
        assert!(
            matches!(r, Err(Error::Refusal(Refusal::StaleHsmState { .. }))),
            "{r:?}"
        );
        assert!(!log.has_key());
    }

    #[test]
    fn after_a_crash_share_events_may_follow_the_head_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let (store, log) = chain(dir.path(), 12, 5);
        drop(log); // a crash: no shutdown checkpoint
                   // The restart: custodians submit shares while sealed.
        let log = AuditLog::open(store.clone(), 5).unwrap();
        log.append(NewEvent::new("hsm.unseal_share", "hsm").outcome(Outcome::Refused))
            .unwrap();
        log.append(NewEvent::new("hsm.unseal_share", "hsm"))
            .unwrap();
        log.set_key(Some(&key())).unwrap();
        assert!(log.verify().unwrap().intact());

        // Someone holding the store appends a well-linked event of another kind, marked as
        // written while sealed, and moves the tail: the next unseal refuses the chain.
        drop(log);
        let last = store.get(Tree::Meta, TAIL_KEY).unwrap().unwrap();
        let last: Mark = serde_json::from_slice(&last).unwrap();
        let forged = Event {
            seq: last.seq + 1,
            time_ms: 1,
            actor: "acc_intruder".into(),
            role: "admin".into(),
            action: "account.create".into(),
            subject: "acc_backdoor".into(),
            outcome: Outcome::Ok,
            request_id: String::new(),
            details: BTreeMap::new(),
            personal: BTreeMap::new(),
            sealed: true,
            prev: last.hash.clone(),
        };
        let bytes = serde_json::to_vec(&forged).unwrap();
        let tail = Mark {
            seq: forged.seq,
            hash: hex::encode(sha256(&bytes)),
            mac: None,
        };
        let mut b = Batch::new();
        b.put(Tree::Audit, seq_key(forged.seq).to_vec(), bytes);
        b.put(
            Tree::Meta,
            TAIL_KEY.to_vec(),
            serde_json::to_vec(&tail).unwrap(),
        );
        store.apply(&b).unwrap();
        let log = AuditLog::open(store.clone(), 5).unwrap();
        let err = log.set_key(Some(&key())).unwrap_err().to_string();
        assert!(err.contains("inserted at event"), "{err}");
    }

    #[test]
    fn a_checkpoint_copied_over_the_head_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let (store, log) = chain(dir.path(), 25, 10);
        drop(log);
        let cp20 = store
            .get(Tree::AuditCheckpoints, &seq_key(20))
            .unwrap()
            .unwrap();
        let mut b = Batch::new();
        for seq in 21..=25 {
            b.delete(Tree::Audit, seq_key(seq).to_vec());
        }
        b.put(Tree::Meta, HEAD_KEY.to_vec(), cp20.clone());
        b.put(Tree::Meta, TAIL_KEY.to_vec(), cp20);
        store.apply(&b).unwrap();
        let log = AuditLog::open(store.clone(), 10).unwrap();
        let err = log.set_key(Some(&key())).unwrap_err().to_string();
        assert!(err.contains("bad_mac at event 20"), "{err}");
    }

    #[test]
    fn a_wiped_chain_is_found() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let hsm: Arc<dyn Hsm> = Arc::new(DoubleHsm::new());
        let log = AuditLog::open(store.clone(), 1000).unwrap();
        log.unlock(hsm.clone()).unwrap();
        log.append(NewEvent::new("a", "b")).unwrap();
        let mut b = Batch::new();
        for (k, _) in store.range(Tree::Audit, &[], None, 100).unwrap() {
            b.delete(Tree::Audit, k);
        }
        for (k, _) in store.range(Tree::AuditCheckpoints, &[], None, 100).unwrap() {
            b.delete(Tree::AuditCheckpoints, k);
        }
        b.delete(Tree::Meta, HEAD_KEY.to_vec());
        store.apply(&b).unwrap();
        // Found twice over: by the hsm's anchor, and by the audit key with no event.
        let (d, _, msg) = damage(&log);
        assert_eq!(d, Damage::Truncated, "{msg}");
        let no_anchor = AuditLog::open(store.clone(), 1000).unwrap();
        let err = no_anchor.set_key(Some(&key())).unwrap_err().to_string();
        assert!(err.contains("holds an audit key"), "{err}");
    }

    #[test]
    fn prune_refuses_a_chain_that_does_not_verify() {
        let dir = tempfile::tempdir().unwrap();
        let (store, log) = chain(dir.path(), 25, 10);
        let text = String::from_utf8(raw(&*store, 15)).unwrap();
        put(
            &*store,
            15,
            text.replace("SERIAL0015", "SERIAL9999").into_bytes(),
        );
        let r = log.prune(
            SystemClock.now_ms() + 1000,
            NewEvent::new("audit.prune", "audit"),
        );
        assert!(
            matches!(
                r,
                Err(Error::Refusal(Refusal::PruneOnBroken { seq: 15, .. }))
            ),
            "{r:?}"
        );
        assert!(store.get(Tree::Audit, &seq_key(1)).unwrap().is_some());
    }

    #[test]
    fn a_rehashed_chain_fails_the_mac() {
        let dir = tempfile::tempdir().unwrap();
        let (store, log) = chain(dir.path(), 10, 1000);
        // Rewrite event 4 and re-link every later event and the head, as someone holding only
        // the store could: the hashes agree again, the MAC cannot.
        let mut prev = sha256(&raw(&*store, 3));
        for seq in 4..=10 {
            let mut e: Event = serde_json::from_slice(&raw(&*store, seq)).unwrap();
            if seq == 4 {
                e.outcome = Outcome::Refused;
            }
            e.prev = hex::encode(prev);
            let bytes = serde_json::to_vec(&e).unwrap();
            prev = sha256(&bytes);
            put(&*store, seq, bytes);
        }
        let forged_head = Mark {
            seq: 10,
            hash: hex::encode(prev),
            mac: Some("00".repeat(32)),
        };
        put_mark(&*store, HEAD_KEY, &forged_head);
        let (d, seq, msg) = damage(&log);
        assert_eq!((d, seq), (Damage::BadMac, 10), "{msg}");
    }

    #[test]
    fn personal_data_is_stored_only_as_hmac() {
        let dir = tempfile::tempdir().unwrap();
        let (store, log) = chain(dir.path(), 3, 100);
        let mut out = Vec::new();
        assert_eq!(log.export(&mut out).unwrap(), 3);
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("RSSMRA80A01H501U"), "{text}");
        assert_eq!(text.lines().count(), 3);
        let h = log
            .personal_hmac("codice_fiscale", "RSSMRA80A01H501U")
            .unwrap();
        assert!(text.contains(&h));
        // Without the key, an event with personal data cannot be written.
        log.set_key(None).unwrap();
        let r = log.append(NewEvent::new("holder.search", "x").personal("surname", "Rossi"));
        assert!(matches!(r, Err(Error::Sealed)));
        assert!(store.get(Tree::Audit, &seq_key(4)).unwrap().is_none());
    }

    #[test]
    fn events_written_while_sealed_are_chained_and_macd_at_unseal() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let log = AuditLog::open(store.clone(), 1000).unwrap();
        log.append(NewEvent::new("hsm.unseal_share", "hsm").outcome(Outcome::Refused))
            .unwrap();
        log.append(NewEvent::new("hsm.unseal_share", "hsm"))
            .unwrap();
        let r = log.verify().unwrap();
        assert!(
            r.intact() && !r.macs_checked && r.warnings.len() == 1,
            "{r:?}"
        );
        log.set_key(Some(&key())).unwrap();
        let r = log.verify().unwrap();
        assert!(
            r.intact() && r.macs_checked && r.warnings.is_empty(),
            "{r:?}"
        );
    }

    #[test]
    fn a_failed_write_stores_neither_change_nor_event() {
        let failing = Arc::new(FailingStore::new());
        let store: Arc<dyn Store> = failing.clone();
        let log = AuditLog::open(store.clone(), 1000).unwrap();
        log.set_key(Some(&key())).unwrap();
        log.append(NewEvent::new("a", "1")).unwrap();
        failing.fail_writes(true);
        let mut change = Batch::new();
        change.put(Tree::Accounts, b"acc_1".to_vec(), b"{}".to_vec());
        assert!(log
            .commit(change, NewEvent::new("account.create", "acc_1"))
            .is_err());
        failing.fail_writes(false);
        assert!(store.get(Tree::Accounts, b"acc_1").unwrap().is_none());
        // The chain continues without a gap.
        assert_eq!(log.append(NewEvent::new("b", "2")).unwrap(), 2);
        assert!(log.verify().unwrap().intact());
    }

    #[test]
    fn reopening_continues_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (_, log) = chain(dir.path(), 5, 100);
            log.checkpoint().unwrap();
        }
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let log = AuditLog::open(store, 100).unwrap();
        log.set_key(Some(&key())).unwrap();
        assert_eq!(log.append(NewEvent::new("x", "y")).unwrap(), 6);
        let r = log.verify().unwrap();
        assert!(r.intact() && r.events == 6, "{r:?}");
    }

    #[test]
    fn query_filters_and_pages() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let log = AuditLog::open(store, 1000).unwrap();
        for i in 0..30u32 {
            let action = if i % 3 == 0 {
                "account.create"
            } else {
                "card.activate"
            };
            log.append(
                NewEvent::new(action, format!("S{}", i % 5)).by(format!("acc_{}", i % 2), "cms"),
            )
            .unwrap();
        }
        let q = Query {
            action: Some("account.".into()),
            limit: 4,
            ..Query::default()
        };
        let p1 = log.query(&q).unwrap();
        assert_eq!(p1.events.len(), 4);
        assert!(p1.events.iter().all(|e| e.action == "account.create"));
        let p2 = log
            .query(&Query {
                after: p1.next.unwrap(),
                ..q.clone()
            })
            .unwrap();
        assert_eq!(p2.events.len(), 4);
        let p3 = log
            .query(&Query {
                after: p2.next.unwrap(),
                ..q.clone()
            })
            .unwrap();
        assert_eq!(p3.events.len(), 2);
        assert_eq!(p3.next, None);
        let by_subject = log
            .query(&Query {
                subject: Some("S2".into()),
                actor: Some("acc_0".into()),
                limit: 100,
                ..Query::default()
            })
            .unwrap();
        assert_eq!(by_subject.events.len(), 3);
        let none = log
            .query(&Query {
                to_ms: Some(1),
                limit: 100,
                ..Query::default()
            })
            .unwrap();
        assert!(none.events.is_empty());
    }

    #[test]
    fn prune_removes_whole_checkpointed_segments_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let (store, log) = chain(dir.path(), 25, 10);
        // Nothing is older than time 0.
        assert_eq!(
            log.prune(0, NewEvent::new("audit.prune", "audit")).unwrap(),
            0
        );
        // Everything so far is older than "now + 1 s": prunes through the newest checkpoint
        // (event 20), never into the unfinished segment.
        let through = log
            .prune(
                SystemClock.now_ms() + 1000,
                NewEvent::new("audit.prune", "audit").by("acc_admin", "admin"),
            )
            .unwrap();
        assert_eq!(through, 20);
        assert!(store.get(Tree::Audit, &seq_key(20)).unwrap().is_none());
        assert!(store.get(Tree::Audit, &seq_key(21)).unwrap().is_some());
        let r = log.verify().unwrap();
        assert!(r.intact(), "{r:?}");
        assert_eq!((r.pruned_through, r.events), (20, 7));
        let page = log
            .query(&Query {
                action: Some("audit.prune".into()),
                limit: 10,
                ..Query::default()
            })
            .unwrap();
        assert_eq!(
            page.events.len(),
            2,
            "every prune is an event, even one that removes nothing"
        );
        assert_eq!(page.events[0].details["through"], "0");
        assert_eq!(page.events[1].details["through"], "20");
        assert_eq!(page.events[1].actor, "acc_admin");
    }

    #[test]
    fn a_forged_prune_base_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let (store, log) = chain(dir.path(), 25, 10);
        // Hide events 1..=10 by copying checkpoint 10 (and its MAC) into a base.
        let cp = store
            .get(Tree::AuditCheckpoints, &seq_key(10))
            .unwrap()
            .unwrap();
        let mut b = Batch::new();
        b.put(Tree::Meta, BASE_KEY.to_vec(), cp);
        for seq in 1..=10 {
            b.delete(Tree::Audit, seq_key(seq).to_vec());
        }
        store.apply(&b).unwrap();
        let (d, _, msg) = damage(&log);
        assert_eq!(d, Damage::BadMac, "{msg}");
        // And deleting the base of a real prune shows the pruned events as missing.
        let dir = tempfile::tempdir().unwrap();
        let (store, log) = chain(dir.path(), 25, 10);
        log.prune(
            SystemClock.now_ms() + 1000,
            NewEvent::new("audit.prune", "audit"),
        )
        .unwrap();
        let mut b = Batch::new();
        b.delete(Tree::Meta, BASE_KEY.to_vec());
        store.apply(&b).unwrap();
        assert_eq!(damage(&log).0, Damage::Missing);
    }

    #[test]
    fn subject_queries_use_the_index_and_survive_a_prune() {
        let dir = tempfile::tempdir().unwrap();
        let (store, log) = chain(dir.path(), 25, 10); // subjects SERIAL0001..SERIAL0025
        for _ in 0..4 {
            log.append(NewEvent::new("card.suspend", "SERIAL0003"))
                .unwrap();
            log.append(NewEvent::new("card.suspend", "SERIAL0030"))
                .unwrap();
        }
        // SERIAL0003 now at 3, 26, 28, 30, 32; checkpoints at 10, 20, 30.
        let q = |after| Query {
            subject: Some("SERIAL0003".into()),
            after,
            limit: 2,
            ..Query::default()
        };
        let p1 = log.query(&q(0)).unwrap();
        assert_eq!(
            p1.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![3, 26]
        );
        let p2 = log.query(&q(p1.next.unwrap())).unwrap();
        assert_eq!(
            p2.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![28, 30]
        );
        let p3 = log.query(&q(p2.next.unwrap())).unwrap();
        assert_eq!(
            p3.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![32]
        );
        assert!(p3.next.is_none());
        // A subject that is a prefix of others matches only itself.
        let short = log
            .query(&Query {
                subject: Some("SERIAL000".into()),
                limit: 100,
                ..Query::default()
            })
            .unwrap();
        assert!(short.events.is_empty());
        log.prune(
            SystemClock.now_ms() + 1000,
            NewEvent::new("audit.prune", "audit"),
        )
        .unwrap();
        let after = log.query(&q(0)).unwrap();
        assert_eq!(
            after.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![32]
        );
        let index = store.range(Tree::AuditSubjects, &[], None, 1000).unwrap();
        assert!(index
            .iter()
            .all(|(k, _)| seq_of(&k[k.len() - 8..]).unwrap() > 30));
    }

    #[test]
    fn unlock_creates_the_audit_key_once() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let hsm: Arc<dyn Hsm> = Arc::new(DoubleHsm::new());
        let log = AuditLog::open(store.clone(), 1000).unwrap();
        log.unlock(hsm.clone()).unwrap();
        assert!(log.has_key());
        let h1 = log.personal_hmac("name", "Maria").unwrap();
        let log2 = AuditLog::open(store.clone(), 1000).unwrap();
        log2.unlock(hsm.clone()).unwrap();
        assert_eq!(log2.personal_hmac("name", "Maria").unwrap(), h1);
        let ring = Keyring::load(&*store).unwrap();
        assert_eq!(ring.len(), 1);
        let r = log2.verify().unwrap();
        assert!(r.intact() && r.events == 1, "{r:?}");
    }
}
