//! The code vault: every card's PIN/PUK, sealed under data keys, laid out for bulk.
//!
//! # Layout
//!
//! A batch (one uploaded file, or one generation job) is sealed under its own data key and
//! stored as *runs* of *segments*:
//!
//! - a segment ([`segment`]) holds up to 1024 records sorted by serial: front-coded serials,
//!   then `ciphertext | tag` per record with the key id once and nonce counters implicit
//!   when consecutive — about 30 bytes a CNS card before the store's own overhead;
//! - a run is a sorted sequence of segments; a sorted file is one run, an unsorted one a run
//!   per [`stage::RUN_RECORDS`] cards; its directory (first serial of each segment) is one
//!   small value;
//! - the commit record ([`batch::BatchRecord`]) is what makes a batch visible: until it says
//!   `committed`, its segments are invisible and, after a crash, removed at start-up;
//! - an overlay ([`crate::store::Tree::CodeOverlay`]) keyed by serial records later changes
//!   to single cards (codes deleted on revocation), checked before the segments.
//!
//! A lookup by serial finds the runs whose range holds the serial in memory (the directories
//! of committed batches are loaded at start-up: 10 M cards take about 10,000 entries), reads
//! one segment, binary-searches it and opens one record.
//!
//! # Commit
//!
//! [`CodeVault::begin`] creates the batch's data key and a `staging` record (durable, with a
//! `key.create` audit event); the [`Stager`] seals and writes; [`CodeVault::commit`] checks
//! the content id (a second upload of the same file returns the first batch) and the serials
//! against committed batches (a clash quarantines the batch: nothing is overwritten), then
//! writes the commit record, the keyring's count of encryptions and the audit event in one
//! store batch and flushes it before answering.

pub mod batch;
mod check;
pub mod record;
mod release;
pub mod scan;
pub mod segment;
pub mod stage;

pub use batch::{BatchId, BatchRecord, BatchSource, BatchState, RunInfo};
pub use check::Repeats;
pub use record::CardCodes;
pub use release::{PendingCodes, Release, CODES_RELEASE_ACTION, PRINT_RUN_ACTION};
pub use scan::BatchScan;
pub use stage::{Staged, Stager};

use crate::account::Actor;
use crate::audit::{AuditLog, NewEvent, Outcome};
use crate::envelope::{DataKeyId, Opener};
use crate::error::{Error, Missing, Refusal, Result, Subject};
use crate::hsm::{Hsm, KeyPurpose};
use crate::keyring::Keyring;
use crate::lock::{lock, read_lock, write_lock};
use crate::store::{Batch, Store, Tree};
use aws_lc_rs::hmac;
use batch::{run_key, segment_key, SegmentDir};
use check::{RunCursor, MAX_LISTED};
use segment::Segment;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

const NEXT_BATCH_KEY: &[u8] = b"codes.next_batch";
/// Overlay value: the card's codes were deleted.
const OVERLAY_DELETED: u8 = 0;
/// Entries read from the store per page when scanning.
const PAGE: usize = 256;

/// Who started a batch, and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchMeta {
    /// Imported or generated.
    pub source: BatchSource,
    /// Manufacturer named by the upload (empty for generation).
    pub manufacturer: String,
    /// Account id.
    pub actor: String,
    /// Its role.
    pub role: String,
    /// Request id.
    pub request_id: String,
}

impl BatchMeta {
    /// The account (with its role and request) that started the batch, for its events.
    pub(crate) fn started_by(&self) -> Actor {
        Actor {
            id: self.actor.clone(),
            role: self.role.clone(),
            request_id: self.request_id.clone(),
        }
    }
}

/// How a commit ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOutcome {
    /// The batch is visible.
    Committed(BatchRecord),
    /// Some serials are already in the vault; the batch is held back, nothing overwritten.
    Quarantined(BatchRecord),
    /// The same content was stored before: this is that batch, and the new copy was dropped.
    AlreadyStored(BatchRecord),
}

impl CommitOutcome {
    /// The batch record the outcome names.
    pub fn record(&self) -> &BatchRecord {
        match self {
            CommitOutcome::Committed(r)
            | CommitOutcome::Quarantined(r)
            | CommitOutcome::AlreadyStored(r) => r,
        }
    }
}

/// What start-up found and cleaned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Batches left staging by a crash, now removed.
    pub removed: Vec<BatchId>,
    /// Committed batches loaded.
    pub committed: usize,
}

/// A card's sealed record as found: batch, data key, nonce counter, `ciphertext | tag`.
type Found = (BatchId, DataKeyId, u32, Vec<u8>);

/// A committed run, as the lookup sees it.
#[derive(Debug)]
struct RunRef {
    batch: BatchId,
    run: u16,
    first: Box<[u8]>,
    dir: SegmentDir,
}

/// The committed runs, sorted by first serial, with the running maximum of last serials so
/// that a lookup stops as soon as no earlier run can reach the serial.
#[derive(Debug, Default)]
struct RunIndex {
    runs: Vec<RunRef>,
    max_last: Vec<Box<[u8]>>,
}

impl RunIndex {
    fn add(&mut self, more: impl IntoIterator<Item = RunRef>) {
        self.runs.extend(more);
        self.runs.sort_by(|a, b| a.first.cmp(&b.first));
        self.max_last.clear();
        let mut max: Box<[u8]> = Box::default();
        for r in &self.runs {
            if r.dir.last > max {
                max = r.dir.last.clone();
            }
            self.max_last.push(max.clone());
        }
    }

    /// Runs whose range holds `serial`, nearest first.
    fn holding<'a>(&'a self, serial: &'a [u8]) -> impl Iterator<Item = &'a RunRef> + 'a {
        let end = self.runs.partition_point(|r| &*r.first <= serial);
        (0..end)
            .rev()
            .take_while(move |&i| &*self.max_last[i] >= serial)
            .map(move |i| &self.runs[i])
            .filter(move |r| &*r.dir.last >= serial)
    }

    /// Runs whose range meets `[first, last]`.
    fn meeting<'a>(&'a self, first: &'a [u8], last: &'a [u8]) -> impl Iterator<Item = &'a RunRef> {
        let end = self.runs.partition_point(|r| &*r.first <= last);
        self.runs[..end]
            .iter()
            .filter(move |r| &*r.dir.last >= first)
    }
}

/// The code vault over a store. One per process (it holds the index of committed batches).
pub struct CodeVault {
    store: Arc<dyn Store>,
    index: RwLock<RunIndex>,
    openers: RwLock<HashMap<DataKeyId, Arc<Opener>>>,
    index_key: RwLock<Option<hmac::Key>>,
    /// Bumped by [`CodeVault::forget_keys`] under the caches' locks. A key unwrapped before a
    /// seal is neither cached nor used after it: the unwrap may have started before the HSM
    /// was sealed and finished after the caches were cleared.
    seal_epoch: AtomicU64,
    /// Serialises commits (the duplicate check and the commit record).
    commit_lock: Mutex<()>,
    /// Serialises changes to the keyring and the batch counter.
    keys_lock: Mutex<()>,
}

impl std::fmt::Debug for CodeVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let runs = self.read_index().runs.len();
        write!(f, "CodeVault({runs} committed runs)")
    }
}

impl CodeVault {
    /// Opens the vault over `store`: removes batches a crash left staging (their segments and
    /// their data keys, which sealed nothing that survives), and loads the directories of the
    /// committed batches.
    ///
    /// # Errors
    /// [`Error::Storage`] for a damaged batch record or directory.
    pub fn open(store: Arc<dyn Store>) -> Result<(CodeVault, Recovery)> {
        let vault = CodeVault {
            store,
            index: RwLock::new(RunIndex::default()),
            openers: RwLock::new(HashMap::new()),
            index_key: RwLock::new(None),
            seal_epoch: AtomicU64::new(0),
            commit_lock: Mutex::new(()),
            keys_lock: Mutex::new(()),
        };
        let mut recovery = Recovery::default();
        let mut refs = Vec::new();
        for record in vault.all_records()? {
            match record.state {
                BatchState::Staging => {
                    vault.remove_staged(&record, None)?;
                    recovery.removed.push(record.id);
                }
                BatchState::Committed => {
                    refs.extend(vault.load_runs(&record)?);
                    recovery.committed += 1;
                }
                BatchState::Quarantined
                | BatchState::Rejected
                | BatchState::Shredded
                | BatchState::Discarded
                | BatchState::Duplicate => {}
            }
        }
        vault.write_index().add(refs);
        Ok((vault, recovery))
    }

    fn read_index(&self) -> std::sync::RwLockReadGuard<'_, RunIndex> {
        read_lock(&self.index)
    }

    fn write_index(&self) -> std::sync::RwLockWriteGuard<'_, RunIndex> {
        write_lock(&self.index)
    }

    fn all_records(&self) -> Result<Vec<BatchRecord>> {
        let mut out = Vec::new();
        let mut from = Vec::new();
        loop {
            let page = self.store.range(Tree::Batches, &from, None, PAGE)?;
            let Some((last, _)) = page.last() else { break };
            from = last.clone();
            from.push(0);
            for (_, v) in &page {
                out.push(BatchRecord::decode(v)?);
            }
            if page.len() < PAGE {
                break;
            }
        }
        Ok(out)
    }

    fn load_runs(&self, record: &BatchRecord) -> Result<Vec<RunRef>> {
        record
            .runs
            .iter()
            .map(|info| {
                let bytes = self
                    .store
                    .get(Tree::SegmentDirs, &run_key(record.id, info.run))?
                    .ok_or_else(|| {
                        Error::Storage(format!(
                            "the directory of run {} of batch {} is missing",
                            info.run, record.id
                        ))
                    })?;
                let dir = SegmentDir::decode(&bytes)?;
                Ok(RunRef {
                    batch: record.id,
                    run: info.run,
                    first: dir.firsts[0].clone(),
                    dir,
                })
            })
            .collect()
    }

    /// Deletes a batch's segments and directories; with `keep`, replaces its record by `keep`
    /// (else deletes it), and removes its data key from the keyring. Durable when it returns.
    fn remove_staged(
        &self,
        record: &BatchRecord,
        keep: Option<(&BatchRecord, &AuditLog, NewEvent)>,
    ) -> Result<()> {
        let from = record.id.0.to_be_bytes();
        let to = (record.id.0 + 1).to_be_bytes();
        for tree in [Tree::Segments, Tree::SegmentDirs] {
            loop {
                let keys = self.store.keys(tree, &from, Some(&to), PAGE)?;
                if keys.is_empty() {
                    break;
                }
                let mut b = Batch::new();
                for k in keys {
                    b.delete(tree, k);
                }
                self.store.write(&b)?;
            }
        }
        let _keys = lock(&self.keys_lock);
        let mut b = Batch::new();
        if let Some(id) = record.data_key {
            let mut ring = Keyring::load(&*self.store)?;
            if ring.discard(DataKeyId(id)) {
                ring.save_into(&mut b)?;
            }
        }
        match keep {
            Some((rec, audit, event)) => {
                b.put(Tree::Batches, rec.id.key().to_vec(), rec.encode()?);
                audit.commit(b, event)?;
            }
            None => {
                b.delete(Tree::Batches, record.id.key().to_vec());
                self.store.apply(&b)?;
            }
        }
        Ok(())
    }

    /// Starts a batch: creates its data key, allocates its id and writes its `staging` record
    /// with a `key.create` audit event, durably. The returned [`Stager`] seals and writes.
    ///
    /// # Errors
    /// [`Error::Sealed`] while the HSM is sealed; store and audit errors.
    pub fn begin(&self, hsm: &dyn Hsm, audit: &AuditLog, meta: &BatchMeta) -> Result<Stager> {
        self.begin_with_run_records(hsm, audit, meta, stage::RUN_RECORDS)
    }

    /// [`CodeVault::begin`] with runs of `run_records` cards (tests use small runs).
    ///
    /// # Errors
    /// As [`CodeVault::begin`].
    pub fn begin_with_run_records(
        &self,
        hsm: &dyn Hsm,
        audit: &AuditLog,
        meta: &BatchMeta,
        run_records: usize,
    ) -> Result<Stager> {
        let _keys = lock(&self.keys_lock);
        let id = match self.store.get(Tree::Meta, NEXT_BATCH_KEY)? {
            Some(b) => <[u8; 8]>::try_from(b.as_slice())
                .map(u64::from_be_bytes)
                .map_err(|_| Error::Storage("the batch counter is damaged".into()))?,
            None => 1,
        };
        let id = BatchId(id);
        let mut ring = Keyring::load(&*self.store)?;
        let sealer = ring.create(hsm, KeyPurpose::Code, &**audit.clock())?;
        let kcv = ring.get(sealer.key_id()).map(|r| r.kcv().to_string());
        let record = BatchRecord {
            id,
            state: BatchState::Staging,
            source: meta.source,
            manufacturer: meta.manufacturer.clone(),
            cards: 0,
            signature_pairs: false,
            bytes: 0,
            data_key: Some(sealer.key_id().0),
            data_key_kcv: kcv.clone(),
            runs: Vec::new(),
            content_id: None,
            actor: meta.actor.clone(),
            role: meta.role.clone(),
            request_id: meta.request_id.clone(),
            started_ms: audit.clock().now_ms(),
            finished_ms: 0,
            problems: Vec::new(),
            problems_total: 0,
            duplicate_of: None,
        };
        let mut b = Batch::new();
        ring.save_into(&mut b)?;
        b.put(
            Tree::Meta,
            NEXT_BATCH_KEY.to_vec(),
            (id.0 + 1).to_be_bytes().to_vec(),
        );
        b.put(Tree::Batches, id.key().to_vec(), record.encode()?);
        audit.commit(
            b,
            NewEvent::new("key.create", sealer.key_id().to_string())
                .by_actor(&meta.started_by())
                .detail("purpose", KeyPurpose::Code.as_str())
                .detail("kcv", kcv.unwrap_or_default())
                .detail("batch", id.to_string()),
        )?;
        Stager::with_run_records(id, sealer, self.store.clone(), run_records)
    }

    /// The stored record of a batch.
    ///
    /// # Errors
    /// Store errors.
    pub fn batch(&self, id: BatchId) -> Result<Option<BatchRecord>> {
        self.store
            .get(Tree::Batches, &id.key())?
            .map(|b| BatchRecord::decode(&b))
            .transpose()
    }

    /// Up to `limit` batch records with ids after `after`, ascending.
    ///
    /// # Errors
    /// Store errors.
    pub fn batches(&self, after: Option<BatchId>, limit: usize) -> Result<Vec<BatchRecord>> {
        let from = after.map(|a| (a.0 + 1).to_be_bytes()).unwrap_or([0; 8]);
        self.store
            .range(Tree::Batches, &from, None, limit)?
            .iter()
            .map(|(_, v)| BatchRecord::decode(v))
            .collect()
    }

    fn staging_record(&self, id: BatchId) -> Result<BatchRecord> {
        let rec = self.batch(id)?.ok_or(Missing::Batch(id))?;
        if rec.state != BatchState::Staging {
            return Err(Refusal::NotStaging {
                batch: id,
                state: rec.state,
            }
            .into());
        }
        Ok(rec)
    }

    /// Rejects a staging batch: its segments and data key are removed, and its record keeps
    /// the problems (never a code) with a `batch.reject` audit event.
    ///
    /// # Errors
    /// Store and audit errors.
    pub fn reject(
        &self,
        audit: &AuditLog,
        id: BatchId,
        bytes: u64,
        problems: Vec<String>,
        total: u64,
    ) -> Result<BatchRecord> {
        let staged = self.staging_record(id)?;
        let mut rec = staged.clone();
        rec.state = BatchState::Rejected;
        rec.cards = 0;
        rec.bytes = bytes;
        rec.data_key = None;
        rec.data_key_kcv = None;
        rec.runs.clear();
        rec.finished_ms = audit.clock().now_ms();
        rec.problems = problems.into_iter().take(MAX_LISTED).collect();
        rec.problems_total = total;
        let event = NewEvent::new("batch.reject", id.to_string())
            .by_actor(&rec.started_by())
            .outcome(Outcome::Refused)
            .detail("source", source_name(rec.source))
            .detail("manufacturer", rec.manufacturer.clone())
            .detail("problems", total.to_string());
        self.remove_staged(&staged, Some((&rec, audit, event)))?;
        Ok(rec)
    }

    /// Abandons a staging batch after a failure that is not the file's fault (a read error, a
    /// closed connection): removes it without a trace but the audit event `batch.abandon`.
    ///
    /// # Errors
    /// Store and audit errors.
    pub fn abandon(&self, audit: &AuditLog, id: BatchId, why: &str) -> Result<()> {
        let staged = self.staging_record(id)?;
        self.remove_staged(&staged, None)?;
        audit.append(
            NewEvent::new("batch.abandon", id.to_string())
                .by_actor(&staged.started_by())
                .outcome(Outcome::Failed)
                .detail("reason", why.to_string()),
        )?;
        Ok(())
    }

    /// Drops a staging batch whose content was stored before as `first`: its segments and key
    /// go, and its record stays as [`BatchState::Duplicate`] naming `first` (so the id the
    /// upload was given still answers), committed with the audit event
    /// `batch.duplicate_upload` naming both.
    ///
    /// # Errors
    /// Store and audit errors.
    pub fn drop_duplicate(&self, audit: &AuditLog, id: BatchId, first: &BatchRecord) -> Result<()> {
        let staged = self.staging_record(id)?;
        let mut rec = staged.clone();
        rec.state = BatchState::Duplicate;
        rec.cards = 0;
        rec.data_key = None;
        rec.data_key_kcv = None;
        rec.runs.clear();
        rec.finished_ms = audit.clock().now_ms();
        rec.duplicate_of = Some(first.id.to_string());
        let event = NewEvent::new("batch.duplicate_upload", first.id.to_string())
            .by_actor(&staged.started_by())
            .detail("dropped", id.to_string());
        self.remove_staged(&staged, Some((&rec, audit, event)))
    }

    /// The content id of a file: HMAC-SHA256 of its SHA-256 under the index key (created on
    /// first use). Keyed, so the stored id cannot be used to test guesses of a small file.
    ///
    /// # Errors
    /// [`Error::Sealed`]; HSM, store and audit errors.
    pub fn content_id(&self, hsm: &dyn Hsm, audit: &AuditLog, sha256: &[u8; 32]) -> Result<String> {
        let mut msg = b"plico-import-content v1:".to_vec();
        msg.extend_from_slice(sha256);
        Ok(hex::encode(self.index_mac(hsm, audit, &msg)?))
    }

    fn load_index_key(&self, hsm: &dyn Hsm, audit: &AuditLog) -> Result<hmac::Key> {
        let key = self.purpose_key(hsm, audit, KeyPurpose::Index)?;
        Ok(hmac::Key::new(hmac::HMAC_SHA256, key.expose_secret()))
    }

    /// The identity that decrypts files sent to plico's import recipient: the import key,
    /// unwrapped by the HSM (created on first use, with a `key.create` audit event). Drop it
    /// as soon as the file is open.
    ///
    /// # Errors
    /// [`Error::Sealed`]; HSM, store and audit errors.
    pub fn import_identity(
        &self,
        hsm: &dyn Hsm,
        audit: &AuditLog,
    ) -> Result<crate::import::age::ImportIdentity> {
        let key = self.purpose_key(hsm, audit, KeyPurpose::Import)?;
        crate::import::age::ImportIdentity::from_data_key(&key)
    }

    /// The age recipient (`age1…`) manufacturers encrypt files to.
    ///
    /// # Errors
    /// As [`CodeVault::import_identity`].
    pub fn import_recipient(&self, hsm: &dyn Hsm, audit: &AuditLog) -> Result<String> {
        Ok(self.import_identity(hsm, audit)?.recipient())
    }

    /// The newest key of a single-key purpose (index, import), created on first use.
    fn purpose_key(
        &self,
        hsm: &dyn Hsm,
        audit: &AuditLog,
        purpose: KeyPurpose,
    ) -> Result<crate::secret::DataKey> {
        let _keys = lock(&self.keys_lock);
        audit.purpose_key(hsm, purpose)
    }

    /// The batch stored earlier with this content id, if any.
    ///
    /// # Errors
    /// Store errors.
    pub fn by_content(&self, content_id: &str) -> Result<Option<BatchRecord>> {
        match self.store.get(Tree::ContentIds, content_id.as_bytes())? {
            Some(b) => {
                let id = <[u8; 8]>::try_from(b.as_slice())
                    .map(|a| BatchId(u64::from_be_bytes(a)))
                    .map_err(|_| Error::Storage("a content id entry is damaged".into()))?;
                self.batch(id)
            }
            None => Ok(None),
        }
    }

    /// Commits a staged batch, or quarantines it, or finds it was stored before (see the
    /// module docs). `bytes` is the file's size; `content_id` its [`CodeVault::content_id`]
    /// (none for generated batches). Returns once the outcome is durable.
    ///
    /// # Errors
    /// [`Error::Refusal`] for a batch with repeated serials (reject it instead); store and audit
    /// errors (the batch then stays staging, invisible, and is removed at the next start-up).
    pub fn commit(
        &self,
        audit: &AuditLog,
        staged: Staged,
        bytes: u64,
        content_id: Option<String>,
    ) -> Result<CommitOutcome> {
        if staged.repeats.total > 0 {
            return Err(Refusal::RepeatsSerials { batch: staged.id }.into());
        }
        let _commit = lock(&self.commit_lock);
        let before = self.staging_record(staged.id)?;
        if let Some(cid) = &content_id {
            if let Some(first) = self.by_content(cid)? {
                self.drop_duplicate(audit, before.id, &first)?;
                return Ok(CommitOutcome::AlreadyStored(first));
            }
        }
        let clashes = self.clashes(&staged)?;
        let mut rec = before.clone();
        rec.cards = staged.cards;
        rec.signature_pairs = staged.signature_pairs;
        rec.bytes = bytes;
        rec.runs = staged.runs.iter().map(|(i, _)| i.clone()).collect();
        rec.content_id = content_id.clone();
        rec.finished_ms = audit.clock().now_ms();
        let quarantined = clashes.total > 0;
        let action = if quarantined {
            rec.state = BatchState::Quarantined;
            rec.problems = clashes
                .listed
                .iter()
                .map(|s| format!("serial {s} is already in the vault"))
                .collect();
            rec.problems_total = clashes.total;
            "batch.quarantine"
        } else {
            rec.state = BatchState::Committed;
            match rec.source {
                BatchSource::Import => "batch.import",
                BatchSource::Generated => "batch.generate",
            }
        };
        let _keys = lock(&self.keys_lock);
        let mut b = Batch::new();
        let mut ring = Keyring::load(&*self.store)?;
        ring.record_encryptions(&staged.sealer)?;
        ring.save_into(&mut b)?;
        b.put(Tree::Batches, rec.id.key().to_vec(), rec.encode()?);
        if let Some(cid) = &content_id {
            b.put(
                Tree::ContentIds,
                cid.as_bytes().to_vec(),
                rec.id.key().to_vec(),
            );
        }
        let mut event = NewEvent::new(action, rec.id.to_string())
            .by_actor(&rec.started_by())
            .detail("cards", rec.cards.to_string())
            .detail("runs", rec.runs.len().to_string())
            .detail("source", source_name(rec.source))
            .detail(
                "data_key",
                rec.data_key.map(|k| k.to_string()).unwrap_or_default(),
            );
        if !rec.manufacturer.is_empty() {
            event = event.detail("manufacturer", rec.manufacturer.clone());
        }
        if let (Some(first), Some(last)) = (
            rec.runs.iter().map(|r| &r.first).min(),
            rec.runs.iter().map(|r| &r.last).max(),
        ) {
            event = event
                .detail("first_serial", first.clone())
                .detail("last_serial", last.clone());
        }
        if quarantined {
            event = event
                .outcome(Outcome::Refused)
                .detail("conflicts", clashes.total.to_string());
        }
        let seq = audit.commit(b, event)?;
        drop(_keys);
        if !quarantined {
            let refs = staged
                .runs
                .into_iter()
                .map(|(info, dir)| RunRef {
                    batch: rec.id,
                    run: info.run,
                    first: dir.firsts[0].clone(),
                    dir,
                })
                .collect::<Vec<_>>();
            // Under the commit lock: the next commit's duplicate check sees these serials.
            self.write_index().add(refs);
        }
        drop(_commit);
        // Anchor the chain in the HSM at this event before answering: a store that later loses
        // this commit (sled truncates its log at damage without an error) then fails the audit
        // check at the next unseal instead of serving a vault with a batch silently missing.
        // Outside the commit lock, so that concurrent commits share one anchor write
        // (`anchor_through` returns once the HSM's anchor is at or past `seq`). The batch is
        // committed whatever happens here; a failed anchor (a seal that just landed) leaves
        // the previous one, which the next checkpoint moves on.
        let _ = audit.anchor_through(seq);
        if quarantined {
            return Ok(CommitOutcome::Quarantined(rec));
        }
        Ok(CommitOutcome::Committed(rec))
    }

    /// Serials of `staged` already held by committed batches.
    fn clashes(&self, staged: &Staged) -> Result<Repeats> {
        let index = self.read_index();
        let mut found = Repeats::default();
        for (info, dir) in &staged.runs {
            let (first, last) = (info.first.as_bytes(), info.last.as_bytes());
            for old in index.meeting(first, last) {
                let from = first.max(&old.first);
                let until = last.min(&old.dir.last);
                let cursors = vec![
                    RunCursor::new(&*self.store, staged.id, info.run, dir, from)?,
                    RunCursor::new(&*self.store, old.batch, old.run, &old.dir, from)?,
                ];
                let more = check::repeats(cursors, Some(until))?;
                found.total += more.total;
                for s in more.listed {
                    if found.listed.len() < MAX_LISTED {
                        found.listed.push(s);
                    }
                }
            }
        }
        found.listed.sort();
        Ok(found)
    }

    /// Where a card's codes are: `Some(batch)` if a committed batch holds them and they were
    /// not deleted since. Reads no code.
    ///
    /// # Errors
    /// Store errors.
    pub fn locate(&self, serial: &str) -> Result<Option<BatchId>> {
        Ok(self.record_of(serial)?.map(|(b, _, _, _)| b))
    }

    /// A card's codes for a release, decrypted but sealed in a [`PendingCodes`] that opens
    /// only with the [`Release`] receipt of the audited release; `None` if no committed batch
    /// holds them (or they were deleted).
    ///
    /// # Errors
    /// As [`CodeVault::find`].
    pub fn pending_release(&self, hsm: &dyn Hsm, serial: &str) -> Result<Option<PendingCodes>> {
        Ok(self
            .find(hsm, serial)?
            .map(|codes| PendingCodes::new(serial, codes)))
    }

    /// A card's codes, decrypted, or `None` if no committed batch holds them (or they were
    /// deleted). Not `pub`: clear codes leave the vault only through [`PendingCodes::open`].
    ///
    /// # Errors
    /// [`Error::Sealed`] while the HSM is sealed; [`Error::Integrity`] for a record that does
    /// not open; store errors.
    pub(crate) fn find(&self, hsm: &dyn Hsm, serial: &str) -> Result<Option<CardCodes>> {
        let Some((_, key, counter, sealed)) = self.record_of(serial)? else {
            return Ok(None);
        };
        let opener = self.opener(hsm, key)?;
        let clear = opener.open_detached(serial, counter, &sealed)?;
        CardCodes::unpack(clear.expose_secret()).map(Some)
    }

    /// The sealed record of a serial: batch, key, counter and `ciphertext | tag`.
    fn record_of(&self, serial: &str) -> Result<Option<Found>> {
        if let Some(v) = self.store.get(Tree::CodeOverlay, serial.as_bytes())? {
            if v.first() == Some(&OVERLAY_DELETED) {
                return Ok(None);
            }
            return Err(Error::Storage(format!(
                "the overlay entry of card {serial} has an unknown kind"
            )));
        }
        let s = serial.as_bytes();
        let index = self.read_index();
        for run in index.holding(s) {
            let Some(seg_no) = run.dir.segment_for(s) else {
                continue;
            };
            let key = segment_key(run.batch, run.run, seg_no);
            let bytes = self.store.get(Tree::Segments, &key)?.ok_or_else(|| {
                Error::Storage(format!(
                    "segment {seg_no} of run {} of batch {} is missing",
                    run.run, run.batch
                ))
            })?;
            let seg = Segment::parse(&bytes)?;
            if let Some((counter, sealed)) = seg.lookup(s)? {
                return Ok(Some((run.batch, seg.key(), counter, sealed.to_vec())));
            }
        }
        Ok(None)
    }

    /// Destroys a batch's codes for [`crate::ceremony`] (shred a committed batch, discard a
    /// quarantined one): in one store batch with `extra` (the ceremony's job record) and
    /// `events`, the batch record becomes `to`, its segments and directories are deleted and
    /// its data key leaves the keyring. Its runs leave the lookup first, so from the moment
    /// the write lands [`CodeVault::locate`] answers `None` ("codes gone") for its cards.
    /// The caller must not hold [`CodeVault::keyring_lock`].
    ///
    /// # Errors
    /// [`Error::Missing`] for an unknown batch; [`Error::WrongState`] for a batch not in
    /// `from`; store and audit errors (then nothing is changed).
    pub(crate) fn destroy_batch(
        &self,
        audit: &AuditLog,
        id: BatchId,
        from: BatchState,
        to: BatchState,
        extra: Batch,
        events: Vec<NewEvent>,
    ) -> Result<BatchRecord> {
        let _commit = lock(&self.commit_lock);
        let mut rec = self.batch(id)?.ok_or(Missing::Batch(id))?;
        if rec.state != from {
            return Err(Error::WrongState {
                subject: Subject::Batch(id),
                state: rec.state.to_string(),
                wanted: from.to_string(),
            });
        }
        let mut b = extra;
        let from_key = id.0.to_be_bytes();
        let to_key = id.0.saturating_add(1).to_be_bytes();
        for tree in [Tree::Segments, Tree::SegmentDirs] {
            for k in self
                .store
                .keys(tree, &from_key, Some(&to_key), usize::MAX)?
            {
                b.delete(tree, k);
            }
        }
        rec.state = to;
        rec.finished_ms = audit.clock().now_ms();
        b.put(Tree::Batches, id.key().to_vec(), rec.encode()?);
        let _keys = lock(&self.keys_lock);
        let mut ring = Keyring::load(&*self.store)?;
        if let Some(k) = rec.data_key {
            ring.discard(DataKeyId(k));
        }
        ring.save_into(&mut b)?;
        let removed = {
            let mut index = self.write_index();
            let (gone, kept) = std::mem::take(&mut index.runs)
                .into_iter()
                .partition::<Vec<_>, _>(|r| r.batch == id);
            index.add(kept);
            gone
        };
        if let Err(e) = audit.commit_all(b, events) {
            self.write_index().add(removed);
            return Err(e);
        }
        if let Some(k) = rec.data_key {
            write_lock(&self.openers).remove(&DataKeyId(k));
        }
        Ok(rec)
    }

    /// Holds the lock that serialises keyring changes (shared with the `cards` crate).
    pub fn keyring_lock(&self) -> MutexGuard<'_, ()> {
        lock(&self.keys_lock)
    }

    /// HMAC-SHA256 of `msg` under the index key (created on first use).
    ///
    /// # Errors
    /// As [`CodeVault::content_id`].
    pub fn index_mac(&self, hsm: &dyn Hsm, audit: &AuditLog, msg: &[u8]) -> Result<[u8; 32]> {
        let cached = read_lock(&self.index_key).clone();
        let key = match cached {
            Some(k) => k,
            None => {
                let epoch = self.seal_epoch.load(Ordering::Acquire);
                let k = self.load_index_key(hsm, audit)?;
                let mut slot = write_lock(&self.index_key);
                self.unsealed_since(epoch)?;
                *slot = Some(k.clone());
                k
            }
        };
        let mut out = [0u8; 32];
        out.copy_from_slice(hmac::sign(&key, msg).as_ref());
        Ok(out)
    }

    /// The opener of `holder` data key `key`, for the personal data the `cards` crate seals:
    /// any other purpose (a code key above all) is refused, so that no opener of code records
    /// leaves the vault.
    ///
    /// # Errors
    /// [`Refusal::NotHolderKey`] for a key that is not a `holder` key or not in the keyring; as
    /// [`CodeVault::opener`].
    pub fn holder_opener(&self, hsm: &dyn Hsm, key: DataKeyId) -> Result<Arc<Opener>> {
        // A cached opener carries the purpose its key had in the keyring (a key keeps its
        // purpose for life), so the common case reads no keyring: every holder page, search
        // and e-mail opens personal data through here.
        if let Some(o) = read_lock(&self.openers).get(&key) {
            if o.purpose() == crate::hsm::KeyPurpose::Holder {
                return Ok(o.clone());
            }
            return Err(Refusal::NotHolderKey { key }.into());
        }
        let purpose = Keyring::load(&*self.store)?.get(key).map(|r| r.purpose);
        if purpose != Some(crate::hsm::KeyPurpose::Holder) {
            return Err(Refusal::NotHolderKey { key }.into());
        }
        self.opener(hsm, key)
    }

    /// The opener of data key `key` (cached once loaded while the key is in the keyring).
    ///
    /// # Errors
    /// [`Error::Sealed`] and provider errors from the HSM; store errors; an unknown key.
    pub(crate) fn opener(&self, hsm: &dyn Hsm, key: DataKeyId) -> Result<Arc<Opener>> {
        if let Some(o) = read_lock(&self.openers).get(&key) {
            return Ok(o.clone());
        }
        let epoch = self.seal_epoch.load(Ordering::Acquire);
        let ring = Keyring::load(&*self.store)?;
        let opener = Arc::new(ring.opener(hsm, key)?);
        // Cached only if the key is still in the keyring, checked under the cache's lock: a
        // batch destroyed meanwhile (`destroy_batch` takes its key out of the cache after its
        // commit, under the same lock) must not leave its clear key cached. Nor cached, nor
        // used, if the HSM was sealed while it was unwrapped.
        let mut openers = write_lock(&self.openers);
        self.unsealed_since(epoch)?;
        if Keyring::load(&*self.store)?.get(key).is_some() {
            openers.insert(key, opener.clone());
        }
        Ok(opener)
    }

    /// Adds to `batch` the deletion of a card's codes (an overlay entry; the sealed record in
    /// its segment can no longer be found, and goes with its batch's data key when that is
    /// shredded). For the lifecycle, which commits it with its audit event.
    pub fn delete_codes_into(&self, serial: &str, batch: &mut Batch) {
        batch.put(
            Tree::CodeOverlay,
            serial.as_bytes().to_vec(),
            vec![OVERLAY_DELETED],
        );
    }

    /// Drops every unwrapped key held in memory (call after the HSM is sealed). A key being
    /// unwrapped meanwhile is not cached, and its lookup answers [`Error::Sealed`].
    pub fn forget_keys(&self) {
        let mut openers = write_lock(&self.openers);
        let mut index_key = write_lock(&self.index_key);
        self.seal_epoch.fetch_add(1, Ordering::AcqRel);
        openers.clear();
        *index_key = None;
    }

    /// [`Error::Sealed`] if [`CodeVault::forget_keys`] ran since `epoch` was read. Called
    /// under a cache's write lock, which `forget_keys` also takes.
    fn unsealed_since(&self, epoch: u64) -> Result<()> {
        if self.seal_epoch.load(Ordering::Acquire) == epoch {
            Ok(())
        } else {
            Err(Error::Sealed)
        }
    }

    /// The store this vault writes to.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }
}

fn source_name(s: BatchSource) -> String {
    match s {
        BatchSource::Import => "import".to_string(),
        BatchSource::Generated => "generated".to_string(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! The code vault end to end over real stores: import, lookup, reopen, duplicates,
    //! quarantine, rejection, crash leftovers, generation.

    use super::*;
    use crate::audit::AuditLog;
    use crate::generate::WeakFilter;
    use crate::hsm_double::DoubleHsm;
    use crate::import::generation::{generate_batch, GenerateRequest, SerialSet};
    use crate::import::parse::ParseRules;
    use crate::import::{import_file, ImportContext, ImportOutcome, ImportRequest};
    use crate::store::memory::{FailingStore, MemoryStore};
    use crate::store::sled::SledStore;

    struct Fixture {
        store: Arc<dyn Store>,
        hsm: Arc<dyn Hsm>,
        audit: AuditLog,
        vault: CodeVault,
        rules: ParseRules,
    }

    impl Fixture {
        fn over(store: Arc<dyn Store>, hsm: Arc<dyn Hsm>) -> Fixture {
            let audit = AuditLog::open(store.clone(), 50).unwrap();
            audit.unlock(hsm.clone()).unwrap();
            let (vault, _) = CodeVault::open(store.clone()).unwrap();
            Fixture {
                store,
                hsm,
                audit,
                vault,
                rules: ParseRules::default(),
            }
        }

        fn memory() -> Fixture {
            Fixture::over(Arc::new(MemoryStore::new()), Arc::new(DoubleHsm::new()))
        }

        fn ctx(&self) -> ImportContext<'_> {
            ImportContext {
                vault: &self.vault,
                hsm: &*self.hsm,
                audit: &self.audit,
                rules: &self.rules,
            }
        }

        fn import(&self, file: &str) -> ImportOutcome {
            import_file(self.ctx(), file.as_bytes(), &request(), &|_| {}).unwrap()
        }

        fn segments(&self) -> usize {
            self.store
                .keys(Tree::Segments, &[], None, usize::MAX)
                .unwrap()
                .len()
        }
    }

    fn request() -> ImportRequest {
        ImportRequest {
            manufacturer: "Acme Cards".into(),
            expected_cards: None,
            expected_sha256: None,
            actor: "a1".into(),
            role: "manufacturer".into(),
            request_id: "r1".into(),
        }
    }

    pub(crate) fn serial(i: u64) -> String {
        format!("8039{:015}", i)
    }

    /// Codes derived from the index, so every card's codes are known and distinct.
    pub(crate) fn codes_of(i: u64) -> (String, String) {
        (
            format!("{:05}", (i * 7919) % 100_000),
            format!("{:08}", (i * 104_729) % 100_000_000),
        )
    }

    fn card_codes(i: u64) -> CardCodes {
        let (pin, puk) = codes_of(i);
        CardCodes {
            pin: crate::Pin::parse(&pin, &crate::CodePolicy::CNS).unwrap(),
            puk: crate::Puk::parse(&puk, &crate::CodePolicy::CNS).unwrap(),
            signature: None,
        }
    }

    /// A manufacturer file of cards `ids` with their [`codes_of`].
    pub(crate) fn file(ids: impl IntoIterator<Item = u64>) -> String {
        let mut s = String::from("serial;pin;puk\n");
        for i in ids {
            let (pin, puk) = codes_of(i);
            s.push_str(&format!("{};{pin};{puk}\n", serial(i)));
        }
        s
    }

    fn assert_codes(f: &Fixture, i: u64) {
        assert_codes_in(&f.vault, &*f.hsm, i)
    }

    /// Card `i` is found in `vault` with its [`codes_of`].
    pub(crate) fn assert_codes_in(vault: &CodeVault, hsm: &dyn Hsm, i: u64) {
        let c = vault
            .find(hsm, &serial(i))
            .unwrap()
            .unwrap_or_else(|| panic!("card {i} not found"));
        let (pin, puk) = codes_of(i);
        assert_eq!(c.pin.expose_secret(), pin.as_bytes(), "card {i}");
        assert_eq!(c.puk.expose_secret(), puk.as_bytes(), "card {i}");
    }

    fn committed(o: ImportOutcome) -> BatchRecord {
        match o {
            ImportOutcome::Committed(r) => r,
            other => panic!("expected committed, got {other:?}"),
        }
    }

    #[test]
    fn a_sorted_file_is_one_run_and_every_card_is_found_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let hsm: Arc<dyn Hsm> = Arc::new(DoubleHsm::new());
        {
            let f = Fixture::over(Arc::new(SledStore::open(dir.path()).unwrap()), hsm.clone());
            let rec = committed(f.import(&file(0..5000)));
            assert_eq!(rec.cards, 5000);
            assert_eq!(rec.runs.len(), 1);
            assert_eq!(rec.runs[0].segments, 5);
            assert_eq!(rec.runs[0].first, serial(0));
            assert_eq!(rec.runs[0].last, serial(4999));
            assert_eq!(rec.manufacturer, "Acme Cards");
            assert!(rec.problems.is_empty());
            for i in (0..5000).step_by(7) {
                assert_codes(&f, i);
            }
            assert_eq!(f.vault.locate(&serial(5000)).unwrap(), None);
            assert!(f.vault.find(&*f.hsm, &serial(5000)).unwrap().is_none());
            assert_eq!(f.vault.locate(&serial(17)).unwrap(), Some(rec.id));
        }
        let f = Fixture::over(Arc::new(SledStore::open(dir.path()).unwrap()), hsm);
        for i in [0, 1, 1023, 1024, 4999] {
            assert_codes(&f, i);
        }
        let list = f.vault.batches(None, 10).unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].state, BatchState::Committed);
    }

    /// Issue 20: every import held its cards in buffers of a whole run (2^20 cards, about
    /// 72 MB each, up to three alive), so a 10 M import peaked over 512 MiB. While serials come
    /// in order, a buffer now goes to the writer at `SORTED_RECORDS` cards, and the batch is
    /// laid out as before (one run); once one does not, buffers are whole runs again.
    #[test]
    fn a_sorted_file_is_staged_in_small_buffers_and_stays_one_run() {
        use super::stage::SORTED_RECORDS;
        let f = Fixture::memory();
        let meta = BatchMeta {
            source: BatchSource::Import,
            manufacturer: "m".into(),
            actor: "a".into(),
            role: "manufacturer".into(),
            request_id: String::new(),
        };
        let half = SORTED_RECORDS as u64 + 100;
        let mut st = f.vault.begin(&*f.hsm, &f.audit, &meta).unwrap();
        let mut most = 0;
        // Even serials in order: staged in small buffers.
        for i in 0..half {
            st.push(i + 1, &serial(2 * i), &card_codes(2 * i)).unwrap();
            most = most.max(st.buffered());
        }
        assert!(most <= SORTED_RECORDS, "{most} cards buffered");
        // Then the odd ones: out of order with the evens, so buffered as a whole run.
        for i in 0..half {
            st.push(half + i + 1, &serial(2 * i + 1), &card_codes(2 * i + 1))
                .unwrap();
            most = most.max(st.buffered());
        }
        assert!(most > SORTED_RECORDS, "{most} cards buffered");
        let staged = st.finish().unwrap();
        assert_eq!(staged.runs.len(), 2, "the first evens' run, then the rest");
        assert_eq!(staged.repeats.total, 0);
        assert_eq!(staged.cards, 2 * half);
        let rec = f.vault.commit(&f.audit, staged, 0, None).unwrap();
        assert!(matches!(rec, CommitOutcome::Committed(_)));
        for i in [
            0,
            1,
            2,
            2 * half - 2,
            2 * half - 1,
            SORTED_RECORDS as u64 * 2 + 1,
        ] {
            assert_codes(&f, i);
        }

        // A sorted batch of the same size: one run.
        let f = Fixture::memory();
        let mut st = f.vault.begin(&*f.hsm, &f.audit, &meta).unwrap();
        for i in 0..2 * half {
            st.push(i + 1, &serial(i), &card_codes(i)).unwrap();
            assert!(st.buffered() <= SORTED_RECORDS);
        }
        let staged = st.finish().unwrap();
        assert_eq!(staged.runs.len(), 1);
        f.vault.commit(&f.audit, staged, 0, None).unwrap();
        for i in [0, SORTED_RECORDS as u64, 2 * half - 1] {
            assert_codes(&f, i);
        }
    }

    #[test]
    fn an_unsorted_file_becomes_several_runs_and_is_still_found() {
        let f = Fixture::memory();
        // A shuffled order: i * 7 mod 3001 visits every index once.
        let ids: Vec<u64> = (0..3001).map(|i| (i * 7) % 3001).collect();
        let meta = BatchMeta {
            source: BatchSource::Import,
            manufacturer: "m".into(),
            actor: "a".into(),
            role: "manufacturer".into(),
            request_id: String::new(),
        };
        let mut st = f
            .vault
            .begin_with_run_records(&*f.hsm, &f.audit, &meta, 500)
            .unwrap();
        for &i in &ids {
            let codes = card_codes(i);
            st.push(i + 1, &serial(i), &codes).unwrap();
        }
        let staged = st.finish().unwrap();
        assert!(staged.runs.len() >= 6, "{} runs", staged.runs.len());
        assert_eq!(staged.repeats.total, 0);
        let rec = f.vault.commit(&f.audit, staged, 0, None).unwrap();
        assert!(matches!(rec, CommitOutcome::Committed(_)));
        for i in 0..3001 {
            assert_codes(&f, i);
        }
    }

    #[test]
    fn repeated_serials_reject_the_file_naming_them_and_nothing_stays() {
        let f = Fixture::memory();
        let mut text = file(0..100);
        text.push_str(&format!("{};11111;22222222\n", serial(42)));
        let out = f.import(&text);
        let ImportOutcome::Rejected(rec) = out else {
            panic!("{out:?}")
        };
        assert_eq!(rec.state, BatchState::Rejected);
        assert_eq!(rec.problems_total, 1);
        assert_eq!(
            rec.problems[0],
            format!("serial {} is on lines 44 and 102", serial(42))
        );
        assert!(!rec.problems[0].contains("11111"));
        assert_eq!(f.segments(), 0);
        assert!(
            Keyring::load(&*f.store)
                .unwrap()
                .newest(KeyPurpose::Code)
                .is_none(),
            "key discarded"
        );
        assert_eq!(f.vault.locate(&serial(1)).unwrap(), None);

        // Across runs of an unsorted file (repeat far apart): also found.
        let meta = BatchMeta {
            source: BatchSource::Import,
            manufacturer: "m".into(),
            actor: "a".into(),
            role: "r".into(),
            request_id: String::new(),
        };
        let mut st = f
            .vault
            .begin_with_run_records(&*f.hsm, &f.audit, &meta, 10)
            .unwrap();
        for (line, i) in (0..30).chain([5]).enumerate() {
            let codes = card_codes(i);
            st.push(line as u64 + 1, &serial(i), &codes).unwrap();
        }
        let staged = st.finish().unwrap();
        assert_eq!(staged.repeats.total, 1);
        assert_eq!(
            staged.repeats.listed,
            vec![format!(
                "serial {} appears more than once in the file",
                serial(5)
            )]
        );
        assert!(f.vault.commit(&f.audit, staged, 0, None).is_err());
    }

    #[test]
    fn a_bad_line_rejects_the_whole_file_with_its_line_and_field() {
        let f = Fixture::memory();
        let mut text = file(0..50);
        text.push_str(&format!("{};12345;1234567\n", serial(50)));
        let ImportOutcome::Rejected(rec) = f.import(&text) else {
            panic!()
        };
        assert_eq!(
            rec.problems,
            vec!["line 52: puk has 7 digits, policy wants 8".to_string()]
        );
        assert_eq!(f.segments(), 0);
        assert_eq!(f.vault.locate(&serial(0)).unwrap(), None);
        let events = f
            .audit
            .query(&crate::audit::Query {
                action: Some("batch.reject".into()),
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(events.events.len(), 1);
        assert_eq!(events.events[0].subject, rec.id.to_string());
    }

    #[test]
    fn the_same_file_twice_returns_the_first_batch_and_stores_nothing_new() {
        let f = Fixture::memory();
        let text = file(0..2000);
        let first = committed(f.import(&text));
        let segments = f.segments();
        let again = f.import(&text);
        let ImportOutcome::AlreadyStored(rec) = again else {
            panic!("{again:?}")
        };
        assert_eq!(rec.id, first.id);
        assert_eq!(f.segments(), segments);
        // The id the copy was given still answers: a record naming the first batch, holding
        // nothing (issue 14: it used to vanish, and a look-up of the id it was given found nothing).
        let list = f.vault.batches(None, 10).unwrap();
        assert_eq!(list.len(), 2, "{list:?}");
        let copy = list.iter().find(|r| r.id != first.id).unwrap();
        assert_eq!(copy.state, BatchState::Duplicate);
        assert_eq!(
            copy.duplicate_of.as_deref(),
            Some(first.id.to_string().as_str())
        );
        assert_eq!((copy.cards, copy.data_key, copy.runs.len()), (0, None, 0));
        assert_eq!(f.vault.batch(copy.id).unwrap().as_ref(), Some(copy));
        // A third upload still answers with the first batch.
        let again = f.import(&text);
        assert!(matches!(again, ImportOutcome::AlreadyStored(r) if r.id == first.id));
    }

    #[test]
    fn serials_already_in_the_vault_quarantine_the_batch_and_overwrite_nothing() {
        let f = Fixture::memory();
        committed(f.import(&file(0..1000)));
        // Overlaps 990..999 and carries other codes for them.
        let mut text = String::new();
        for i in 990..1500u64 {
            text.push_str(&format!("{};99999;99999999\n", serial(i)));
        }
        let out = f.import(&text);
        let ImportOutcome::Quarantined(rec) = out else {
            panic!("{out:?}")
        };
        assert_eq!(rec.problems_total, 10);
        assert_eq!(
            rec.problems[0],
            format!("serial {} is already in the vault", serial(990))
        );
        // The first batch's codes stand; the quarantined cards are invisible.
        assert_codes(&f, 995);
        assert_eq!(f.vault.locate(&serial(1200)).unwrap(), None);
        assert_eq!(
            f.vault.batch(rec.id).unwrap().unwrap().state,
            BatchState::Quarantined
        );
    }

    #[test]
    fn a_crash_while_staging_leaves_nothing_after_restart() {
        let dir = tempfile::tempdir().unwrap();
        let hsm: Arc<dyn Hsm> = Arc::new(DoubleHsm::new());
        let id = {
            let f = Fixture::over(Arc::new(SledStore::open(dir.path()).unwrap()), hsm.clone());
            committed(f.import(&file(0..100)));
            let meta = BatchMeta {
                source: BatchSource::Import,
                manufacturer: "m".into(),
                actor: "a".into(),
                role: "r".into(),
                request_id: String::new(),
            };
            let mut st = f
                .vault
                .begin_with_run_records(&*f.hsm, &f.audit, &meta, 100)
                .unwrap();
            for i in 1000..1350u64 {
                let codes = card_codes(i);
                st.push(i, &serial(i), &codes).unwrap();
            }
            let id = st.id();
            let staged = st.finish().unwrap();
            // The process dies here, before the commit.
            std::mem::forget(staged);
            f.store.flush().unwrap();
            id
        };
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let keys_before = Keyring::load(&*store).unwrap().len();
        let (vault, recovery) = CodeVault::open(store.clone()).unwrap();
        assert_eq!(recovery.removed, vec![id]);
        assert_eq!(recovery.committed, 1);
        assert_eq!(vault.batch(id).unwrap(), None);
        assert_eq!(
            store
                .keys(Tree::Segments, &id.key(), None, 100)
                .unwrap()
                .len(),
            0
        );
        assert_eq!(
            Keyring::load(&*store).unwrap().len(),
            keys_before - 1,
            "its key is gone"
        );
        assert_eq!(vault.locate(&serial(1100)).unwrap(), None);
        assert!(vault.locate(&serial(50)).unwrap().is_some());
    }

    #[test]
    fn a_failed_write_changes_nothing_visible() {
        let failing = Arc::new(FailingStore::new());
        let f = Fixture::over(failing.clone(), Arc::new(DoubleHsm::new()));
        committed(f.import(&file(0..10)));
        failing.fail_writes(true);
        assert!(import_file(f.ctx(), file(10..3000).as_bytes(), &request(), &|_| {}).is_err());
        failing.fail_writes(false);
        assert_eq!(f.vault.locate(&serial(20)).unwrap(), None);
        assert_codes(&f, 5);
        // And the next import works.
        committed(f.import(&file(10..3000)));
        assert_codes(&f, 2999);
    }

    #[test]
    fn deleted_codes_are_not_found() {
        let f = Fixture::memory();
        committed(f.import(&file(0..10)));
        let mut b = Batch::new();
        f.vault.delete_codes_into(&serial(3), &mut b);
        f.store.apply(&b).unwrap();
        assert!(f.vault.find(&*f.hsm, &serial(3)).unwrap().is_none());
        assert_eq!(f.vault.locate(&serial(3)).unwrap(), None);
        assert_codes(&f, 4);
    }

    #[test]
    fn generated_codes_are_stored_like_an_import() {
        let f = Fixture::memory();
        let req = GenerateRequest {
            serials: SerialSet::Range {
                first: serial(100),
                count: 3000,
            },
            filter: WeakFilter::STRICT,
            actor: "c1".into(),
            role: "cms".into(),
            request_id: String::new(),
        };
        let done = std::sync::atomic::AtomicU64::new(0);
        let out = generate_batch(f.ctx(), &req, &|n| {
            done.store(n, std::sync::atomic::Ordering::Relaxed);
        })
        .unwrap();
        let rec = committed(out);
        assert_eq!(rec.source, BatchSource::Generated);
        assert_eq!(rec.cards, 3000);
        assert_eq!(done.load(std::sync::atomic::Ordering::Relaxed), 3000);
        let mut pins = std::collections::HashSet::new();
        for i in 100..3100 {
            let c = f.vault.find(&*f.hsm, &serial(i)).unwrap().unwrap();
            assert_eq!(c.pin.len(), 5);
            assert_eq!(c.puk.len(), 8);
            pins.insert(c.pin.expose_secret().to_vec());
        }
        assert!(
            pins.len() > 2900,
            "codes look random: {} distinct pins",
            pins.len()
        );
        // The same serials again: quarantined, not overwritten.
        let again = generate_batch(f.ctx(), &req, &|_| {}).unwrap();
        assert!(matches!(again, ImportOutcome::Quarantined(_)), "{again:?}");
        // A bad serial is refused before anything is created.
        let bad = GenerateRequest {
            serials: SerialSet::List(vec![serial(1), "12x".into()]),
            ..req
        };
        let err = generate_batch(f.ctx(), &bad, &|_| {})
            .unwrap_err()
            .to_string();
        assert!(err.contains("serial 2"), "{err}");
    }

    #[test]
    fn a_file_encrypted_with_the_age_command_line_tool_imports() {
        let f = Fixture::memory();
        let recipient = f.vault.import_recipient(&*f.hsm, &f.audit).unwrap();
        assert!(recipient.starts_with("age1"), "{recipient}");
        // The same recipient every time: the key is created once.
        assert_eq!(
            f.vault.import_recipient(&*f.hsm, &f.audit).unwrap(),
            recipient
        );
        let dir = tempfile::tempdir().unwrap();
        let clear = dir.path().join("codes.txt");
        std::fs::write(&clear, file(0..3000)).unwrap();
        for (armor, first) in [(false, 0u64), (true, 10_000)] {
            std::fs::write(&clear, file(first..first + 3000)).unwrap();
            let sealed = dir.path().join(format!("codes-{armor}.age"));
            let mut cmd = std::process::Command::new("age");
            cmd.arg("-r").arg(&recipient).arg("-o").arg(&sealed);
            if armor {
                cmd.arg("-a");
            }
            let status = cmd.arg(&clear).status().unwrap_or_else(|e| {
                panic!(
                    "the `age` command is missing ({e}): run `bash scripts/test.sh`, which installs it"
                )
            });
            assert!(status.success());
            let bytes = std::fs::read(&sealed).unwrap();
            let out = import_file(f.ctx(), &bytes[..], &request(), &|_| {}).unwrap();
            let rec = committed(out);
            assert_eq!(rec.cards, 3000);
            assert_eq!(rec.bytes, bytes.len() as u64);
            assert_codes(&f, first + 1234);
            // A cut file is refused whole, and nothing of it is stored.
            let cut = &bytes[..bytes.len() - 40];
            let mut other = cut.to_vec();
            let out = import_file(f.ctx(), &other[..], &request(), &|_| {}).unwrap();
            let ImportOutcome::Rejected(rec) = out else {
                panic!("{out:?}")
            };
            assert!(rec.problems[0].contains("age"), "{:?}", rec.problems);
            other.clear();
        }
        // A file for someone else's recipient is rejected with a clear reason.
        let foreign = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";
        let sealed = dir.path().join("foreign.age");
        let status = std::process::Command::new("age")
            .args(["-r", foreign, "-o"])
            .arg(&sealed)
            .arg(&clear)
            .status()
            .unwrap();
        assert!(status.success());
        let out = import_file(
            f.ctx(),
            &std::fs::read(&sealed).unwrap()[..],
            &request(),
            &|_| {},
        )
        .unwrap();
        let ImportOutcome::Rejected(rec) = out else {
            panic!("{out:?}")
        };
        assert!(rec.problems[0].contains("recipient"), "{:?}", rec.problems);
    }

    #[test]
    fn a_damaged_store_is_an_error_or_a_clean_refusal_never_a_panic() {
        for (round, at) in [0.1f64, 0.3, 0.5, 0.7, 0.9].into_iter().enumerate() {
            let hsm: Arc<dyn Hsm> = Arc::new(DoubleHsm::new());
            let dir = tempfile::tempdir().unwrap();
            {
                let f = Fixture::over(Arc::new(SledStore::open(dir.path()).unwrap()), hsm.clone());
                committed(f.import(&file(0..20_000)));
                f.store.flush().unwrap();
            }
            // Overwrite 4 KiB in the middle of the largest file sled keeps.
            let mut files: Vec<_> = walk(dir.path());
            files.sort_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0));
            let target = files.last().unwrap();
            let mut bytes = std::fs::read(target).unwrap();
            let start = (bytes.len() as f64 * at) as usize;
            let end = (start + 4096).min(bytes.len());
            for (i, b) in bytes[start..end].iter_mut().enumerate() {
                *b = (i as u8).wrapping_mul(31) ^ 0x5A;
            }
            std::fs::write(target, &bytes).unwrap();
            // What the service does at start and unseal: open the store, the chain (verified
            // against the HSM's anchor), then the vault. Each step may refuse; none may panic, and
            // if all pass, every card must be there and correct.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let store: Arc<dyn Store> = match SledStore::open(dir.path()) {
                    Ok(s) => Arc::new(s),
                    Err(e) => return format!("open refused: {e}"),
                };
                let audit = match AuditLog::open(store.clone(), 50) {
                    Ok(a) => a,
                    Err(e) => return format!("audit refused: {e}"),
                };
                if let Err(e) = audit.unlock(hsm.clone()) {
                    return format!("unseal refused: {e}");
                }
                let (vault, _) = match CodeVault::open(store) {
                    Ok(v) => v,
                    Err(e) => return format!("vault refused: {e}"),
                };
                for i in (0..20_000).step_by(97) {
                    assert_codes_in(&vault, &*hsm, i);
                }
                "opened, every card found".to_string()
            }));
            let outcome = outcome.unwrap_or_else(|_| panic!("round {round}: a panic (in sled, or a card missing or wrong after an unseal that passed)"));
            eprintln!("round {round}: {outcome}");
        }
    }

    /// Every file below `dir` (tests that scan the store's files).
    pub(crate) fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
        out
    }

    #[test]
    fn a_batch_record_written_before_duplicates_were_recorded_still_reads() {
        // A committed record as the store held it before `duplicate_of` existed.
        let old =
            br#"{"id":7,"state":"committed","source":"import","manufacturer":"acme","cards":2,
            "signature_pairs":false,"bytes":40,"data_key":3,"data_key_kcv":"a1b2c3","runs":[],
            "content_id":null,"actor":"acc_1","role":"manufacturer","request_id":"r1",
            "started_ms":1,"finished_ms":2,"problems":[],"problems_total":0}"#;
        let rec = BatchRecord::decode(old).unwrap();
        assert_eq!(
            (rec.id, rec.state, rec.cards),
            (BatchId(7), BatchState::Committed, 2)
        );
        assert_eq!(rec.duplicate_of, None);
        // Written back, it carries no new field.
        assert!(!String::from_utf8(rec.encode().unwrap())
            .unwrap()
            .contains("duplicate_of"));
    }

    /// Clear codes leave the vault only with the receipt of their audited release: pending codes
    /// open with the receipt of a `card.codes_release` event of their card (written to the chain
    /// by the same call), and not with a receipt of another card's release; a batch is scanned
    /// only with the receipt of a print run of it.
    #[test]
    fn codes_open_only_with_the_receipt_of_their_audited_release() {
        use crate::audit::{NewEvent, Query};
        use crate::codes::{CODES_RELEASE_ACTION, PRINT_RUN_ACTION};
        use crate::store::Batch;
        let f = Fixture::memory();
        let rec = committed(f.import(&file(0..10)));
        let release = |serial: &str| {
            f.audit
                .commit_release(
                    Batch::new(),
                    vec![NewEvent::new(CODES_RELEASE_ACTION, serial).detail("for", "test")],
                )
                .unwrap()
        };
        let released = |serial: &str| {
            let page = f
                .audit
                .query(&Query {
                    action: Some(CODES_RELEASE_ACTION.into()),
                    subject: Some(serial.into()),
                    limit: 10,
                    ..Query::default()
                })
                .unwrap();
            page.events.len()
        };
        // Another card's receipt opens nothing.
        let other = release(&serial(2));
        let pending = f
            .vault
            .pending_release(&*f.hsm, &serial(1))
            .unwrap()
            .unwrap();
        assert!(matches!(
            pending.open(&other),
            Err(Error::Refusal(Refusal::ReleaseNotAudited { card })) if card == serial(1)
        ));
        assert_eq!(released(&serial(1)), 0);
        // Its own receipt: the event is in the chain, and the codes are the card's.
        let pending = f
            .vault
            .pending_release(&*f.hsm, &serial(1))
            .unwrap()
            .unwrap();
        let receipt = release(&serial(1));
        assert_eq!(released(&serial(1)), 1);
        let c = pending.open(&receipt).unwrap();
        let (pin, puk) = codes_of(1);
        assert_eq!(c.pin.expose_secret(), pin.as_bytes());
        assert_eq!(c.puk.expose_secret(), puk.as_bytes());
        // A whole batch: only for a print run of it.
        assert!(matches!(
            f.vault.scan_batch(&*f.hsm, rec.id, &receipt).map(|_| ()),
            Err(Error::Refusal(Refusal::PrintRunNotAudited { batch })) if batch == rec.id
        ));
        // A code key is no holder key: no opener of code records leaves the vault, whether
        // its opener is cached (the common path, which reads no keyring) or not.
        let code_key = DataKeyId(rec.data_key.unwrap());
        assert!(matches!(
            f.vault.holder_opener(&*f.hsm, code_key).map(|_| ()),
            Err(Error::Refusal(Refusal::NotHolderKey { key })) if key == code_key
        ));
        f.vault.opener(&*f.hsm, code_key).unwrap();
        assert!(matches!(
            f.vault.holder_opener(&*f.hsm, code_key).map(|_| ()),
            Err(Error::Refusal(Refusal::NotHolderKey { key })) if key == code_key
        ));
        let run = f
            .audit
            .commit_release(
                Batch::new(),
                vec![NewEvent::new(PRINT_RUN_ACTION, "print run 1")
                    .detail("batch", rec.id.to_string())],
            )
            .unwrap();
        assert_eq!(
            f.vault.scan_batch(&*f.hsm, rec.id, &run).unwrap().count(),
            10
        );
    }

    /// The unit tests' HSM, with something run inside each unwrap: a seal that lands while a
    /// key is being unwrapped.
    struct SealedMidUnwrap {
        inner: DoubleHsm,
        during_unwrap: Mutex<Option<Box<dyn FnOnce() + Send>>>,
        unwraps: std::sync::atomic::AtomicUsize,
    }

    impl std::fmt::Debug for SealedMidUnwrap {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "SealedMidUnwrap({:?})", self.inner)
        }
    }

    impl Hsm for SealedMidUnwrap {
        fn status(&self) -> crate::hsm::HsmStatus {
            self.inner.status()
        }
        fn unseal(&self, share: &secrecy::SecretString) -> Result<crate::hsm::UnsealProgress> {
            self.inner.unseal(share)
        }
        fn reset_unseal(&self) {
            self.inner.reset_unseal()
        }
        fn seal(&self) {
            self.inner.seal()
        }
        fn generate_data_key(
            &self,
            purpose: KeyPurpose,
        ) -> Result<(crate::secret::FreshDataKey, crate::hsm::WrappedKey)> {
            self.inner.generate_data_key(purpose)
        }
        fn unwrap_data_key(
            &self,
            wrapped: &crate::hsm::WrappedKey,
        ) -> Result<crate::secret::DataKey> {
            let key = self.inner.unwrap_data_key(wrapped);
            self.unwraps
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if let Some(seal) = lock(&self.during_unwrap).take() {
                seal();
            }
            key
        }
        fn rewrap_data_key(
            &self,
            wrapped: &crate::hsm::WrappedKey,
        ) -> Result<crate::hsm::WrappedKey> {
            self.inner.rewrap_data_key(wrapped)
        }
        fn rotate(&self) -> Result<crate::hsm::TermInfo> {
            self.inner.rotate()
        }
        fn retire_term(&self, term: crate::hsm::TermId) -> Result<()> {
            self.inner.retire_term(term)
        }
        fn rekey(
            &self,
            current: &[secrecy::SecretString],
            shares: u8,
            threshold: u8,
            deliver: &mut crate::hsm::ShareDelivery<'_>,
        ) -> Result<crate::hsm::RekeyOutcome> {
            self.inner.rekey(current, shares, threshold, deliver)
        }
        fn audit_anchor(&self) -> Result<Option<crate::hsm::AuditAnchor>> {
            self.inner.audit_anchor()
        }
        fn set_audit_anchor(&self, anchor: &crate::hsm::AuditAnchor) -> Result<()> {
            self.inner.set_audit_anchor(anchor)
        }
        fn fill_random(&self, buf: &mut [u8]) -> Result<()> {
            self.inner.fill_random(buf)
        }
    }

    /// A seal that lands while a data key is being unwrapped (the HSM answered before it was
    /// sealed, the caches were cleared before the key was cached) leaves no clear key behind:
    /// the lookup answers `Sealed`, and the next lookup unwraps again instead of finding the key
    /// cached. Before the seal epoch, the key was cached after the seal had cleared the cache.
    #[test]
    fn a_seal_during_an_unwrap_leaves_no_key_cached() {
        let hsm = Arc::new(SealedMidUnwrap {
            inner: DoubleHsm::new(),
            during_unwrap: Mutex::new(None),
            unwraps: std::sync::atomic::AtomicUsize::new(0),
        });
        let unwraps = || hsm.unwraps.load(std::sync::atomic::Ordering::SeqCst);
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let audit = AuditLog::open(store.clone(), 50).unwrap();
        audit.unlock(hsm.clone()).unwrap();
        let vault = Arc::new(CodeVault::open(store).unwrap().0);
        let ctx = ImportContext {
            vault: &vault,
            hsm: &*hsm,
            audit: &audit,
            rules: &ParseRules::default(),
        };
        committed(import_file(ctx, file(0..10).as_bytes(), &request(), &|_| {}).unwrap());
        vault.forget_keys();

        let sealing = vault.clone();
        *lock(&hsm.during_unwrap) = Some(Box::new(move || sealing.forget_keys()));
        let before = unwraps();
        assert!(matches!(vault.find(&*hsm, &serial(3)), Err(Error::Sealed)));
        assert_eq!(unwraps(), before + 1);

        // Nothing was cached: the next lookup unwraps the key again (and then caches it).
        assert_codes_in(&vault, &*hsm, 3);
        assert_eq!(unwraps(), before + 2);
        assert_codes_in(&vault, &*hsm, 4);
        assert_eq!(unwraps(), before + 2);
    }

    /// Concurrent imports of small batches share the HSM's anchor writes (a token write is slow),
    /// and none is acknowledged before the HSM's anchor covers its batch's event. Before, every
    /// committed batch wrote the anchor itself: one token write per batch.
    #[test]
    fn concurrent_imports_share_the_anchor_and_none_returns_unanchored() {
        use crate::audit::group::testing::SlowToken;
        use std::sync::atomic::Ordering;
        const BATCHES: u64 = 8;
        let token = Arc::new(SlowToken::new(std::time::Duration::from_millis(40)));
        let f = Fixture::over(Arc::new(MemoryStore::new()), token.clone());
        let before = token.anchor_writes.load(Ordering::SeqCst);
        let done: Vec<(BatchRecord, u64)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..BATCHES)
                .map(|t| {
                    let (f, token) = (&f, &token);
                    s.spawn(move || {
                        let rec = committed(f.import(&file(t * 100..t * 100 + 20)));
                        (rec, token.anchored())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (rec, anchored_at_return) in &done {
            let page = f
                .audit
                .query(&crate::audit::Query {
                    subject: Some(rec.id.to_string()),
                    action: Some("batch.import".into()),
                    limit: 10,
                    ..crate::audit::Query::default()
                })
                .unwrap();
            let seq = page.events[0].seq;
            assert!(
                *anchored_at_return >= seq,
                "batch event {seq}, anchor {anchored_at_return}"
            );
        }
        let writes = token.anchor_writes.load(Ordering::SeqCst) - before;
        assert!(
            writes < BATCHES,
            "{writes} anchor writes for {BATCHES} batches"
        );
        for t in 0..BATCHES {
            assert_codes(&f, t * 100 + 19);
        }
    }
}
