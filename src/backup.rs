//! Backups of a running service: a consistent snapshot of the store and the HSM state, sealed
//! with age to the backup recipient, streamed; and the reading of such an archive by
//! `plico restore`.
//!
//! # Consistency: copy-on-write under a write gate
//!
//! sled has no snapshot, and a backup of 10 M cards takes seconds, so writes cannot be stopped
//! for the whole backup. Instead the service's store is a [`SnapshotStore`]: every write holds
//! a read side of a gate, and while a backup runs it first records, for each key it is about
//! to change, the value the key had when the backup began (its *pre-image*, `None` for a key
//! that did not exist), once per key. The backup:
//!
//! 1. takes the gate's write side (waits for writes in flight, lets none start), installs an
//!    empty pre-image map, reads the HSM state file, and releases the gate: that instant is
//!    the snapshot;
//! 2. scans every tree in chunks; for each key read, under the map's lock, it takes the
//!    pre-image if the map has one and the current value otherwise, and then marks the chunk's
//!    key range as *passed*: a write to a passed key records no pre-image (the scan has already
//!    emitted the snapshot's value);
//! 3. after the last tree, removes the map and emits the pre-images of keys that existed at
//!    the snapshot (keys deleted since, or changed and skipped in step 2).
//!
//! A key read in step 2 without a pre-image was not written between the snapshot and the
//! check (a writer records the pre-image *before* it writes), so the value read is the
//! snapshot's. Every store batch is atomic and holds the gate's read side, so the archive
//! holds each batch entirely or not at all: the snapshot is the store as it was at one
//! instant. The HSM state file is read in the same instant: the audit chain writes a checkpoint
//! to the store before it gives it to the HSM as the anchor, and records the HSM's new
//! generation in the store after, so in the archive the anchor never lies beyond the chain and
//! the store never has seen a generation beyond the HSM state's.
//! `copy_on_write_snapshot_is_the_store_at_its_start` checks it against interleaved writes.
//!
//! # Archive (inside age)
//!
//! ```text
//! "plico-backup v1\n"
//! 'H' | len u32 BE | HSM state file bytes         (simulated HSM only)
//! 'E' | tree tag u8 | klen u32 BE | key | vlen u32 BE | value      (one per store entry)
//! 'M' | len u32 BE | manifest JSON                (last)
//! ```
//!
//! A vault on a PKCS#11 token has no state file: its keys never leave the token. Its archive
//! holds the store and, in the manifest, the token's public facts ([`TokenFacts`], read at
//! the snapshot like the state file): the share set, the root and term KCVs, the generation,
//! the audit anchor, and the labels and ids of the objects the store's wrapped keys need. A
//! restore puts the store back and checks, with [`check_token`], that the token it meets is
//! the one the backup was made on; the custodians then move the token's anchor back
//! ([`hsm_pkcs11::Pkcs11Hsm::accept_rollback`]). See docs/backup.md.
//!
//! age's STREAM authenticates every 64 KiB chunk and marks the last one, so a truncated or
//! altered archive does not decrypt. Nothing is written in clear: the archive is sealed as it
//! is produced, and the store's values are themselves records sealed by the vault.

use crate::config::BackupConfig;
use hsm_pkcs11::{Pkcs11Hsm, TokenFacts};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use vault::{lock, Batch, Entries, Kcv, Op, Store, TermId, TermState, Tree};

/// The archive's first line.
pub const MAGIC: &[u8] = b"plico-backup v1\n";
/// The archive's format name in its manifest.
pub const FORMAT: &str = "plico-backup v1";
/// Store entries read per chunk of the scan.
const SCAN_CHUNK: usize = 4096;
/// Largest frame accepted when reading an archive (a store value or the HSM state).
const MAX_FRAME: u32 = 256 << 20;

/// Why a backup could not be made or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// Another backup is running (one at a time).
    #[error("a backup is already running; try again when it is done")]
    Busy,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] vault::Error),
    /// Writing or reading the archive failed.
    #[error("backup archive: {0}")]
    Io(#[from] std::io::Error),
    /// The archive is not one this version reads, or is damaged.
    #[error("backup archive: {0}")]
    Format(String),
    /// The archive did not decrypt with the identity given (or was altered).
    #[error("backup archive: cannot decrypt: {0}")]
    Decrypt(String),
    /// The PKCS#11 token is not the one the backup was made on, or no longer holds its keys.
    #[error(transparent)]
    Token(#[from] TokenMismatch),
}

/// Why a restored store cannot be served on the token at hand ([`check_token`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenMismatch {
    /// Same share set, another root key: another token (a rekey changes both together).
    #[error(
        "the token's root key has kcv {token}, the backup's token had {archived} under the same \
         share set: this is another token"
    )]
    Root {
        /// The root KCV in the archive.
        archived: Kcv,
        /// The root KCV on the token.
        token: Kcv,
    },
    /// A term that wraps restored keys has another KCV on the token.
    #[error(
        "term {term} has kcv {token} on the token, {archived} in the backup: this is another \
         token"
    )]
    TermKcv {
        /// The term.
        term: u32,
        /// Its KCV in the archive.
        archived: Kcv,
        /// Its KCV on the token.
        token: Kcv,
    },
    /// A term that wraps restored keys is retired on the token, or unknown to it.
    #[error(
        "term {term} wraps {keys} key(s) of the backup but is {state} on the token: those keys, \
         and every record under them, cannot be opened"
    )]
    TermGone {
        /// The term.
        term: u32,
        /// Restored data keys wrapped under it.
        keys: usize,
        /// `retired` or `unknown`.
        state: &'static str,
    },
}

/// Checks that `token` (the facts of the token at hand, read after its unseal) is the token
/// the backup was made on (`archived`, absent in archives made before token facts were
/// recorded) and still holds every term the restored keyring uses (`used`: keys per term,
/// [`vault::Keyring::count_by_term`]). Returns true when the token was rekeyed since (its share
/// set differs from the archive's): its current shares, not the backup's, open it.
///
/// The root and term KCVs decide: a rekey replaces the root key and the share set together,
/// so the root KCV must match under the same set; each term the restored keys use must be on
/// the token, not retired, with the KCV the archive recorded.
///
/// # Errors
/// [`TokenMismatch`] naming the key and both KCVs.
pub fn check_token(
    archived: Option<&TokenFacts>,
    token: &TokenFacts,
    used: &BTreeMap<TermId, usize>,
) -> Result<bool, TokenMismatch> {
    let rekeyed = archived.is_some_and(|a| a.share_set != token.share_set);
    if let Some(a) = archived {
        if !rekeyed && a.root_kcv != token.root_kcv {
            return Err(TokenMismatch::Root {
                archived: a.root_kcv,
                token: token.root_kcv,
            });
        }
    }
    for (&TermId(term), &keys) in used {
        let Some(on_token) = token.terms.iter().find(|t| t.id == term) else {
            return Err(TokenMismatch::TermGone {
                term,
                keys,
                state: "unknown",
            });
        };
        if on_token.state == TermState::Retired {
            return Err(TokenMismatch::TermGone {
                term,
                keys,
                state: "retired",
            });
        }
        let recorded = archived.and_then(|a| a.terms.iter().find(|t| t.id == term));
        if let Some(rec) = recorded {
            if rec.kcv != on_token.kcv {
                return Err(TokenMismatch::TermKcv {
                    term,
                    archived: rec.kcv,
                    token: on_token.kcv,
                });
            }
        }
    }
    Ok(rekeyed)
}

/// What a backup holds, written last in the archive and printed by `plico restore`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: String,
    /// The version of the `plico` that made it.
    pub plico_version: String,
    /// When the snapshot was taken (ms since the epoch, UTC).
    pub created_ms: u64,
    /// The HSM state's generation in the archive (the state file's, or the token's).
    pub hsm_generation: Option<u64>,
    /// The HSM's audit anchor in the archive, if any.
    pub hsm_anchor: Option<vault::AuditAnchor>,
    /// The last event of the audit chain in the snapshot (absent for an empty chain).
    pub audit_head: Option<Head>,
    /// Cards' lifecycle records.
    pub cards: u64,
    /// Code batches.
    pub batches: u64,
    /// Dispatch jobs.
    pub jobs: u64,
    /// Store entries in all, and per tree name.
    pub entries: u64,
    /// Entries per tree name (only non-empty trees).
    pub trees: BTreeMap<String, u64>,
    /// Bytes of keys and values in all.
    pub bytes: u64,
    /// For a vault on a PKCS#11 token: the token's public facts at the snapshot (absent for
    /// the simulated HSM, whose state file is in the archive, and in older archives).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenFacts>,
}

/// An audit chain position: sequence number and hex SHA-256 of the event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// Sequence number of the event.
    pub seq: u64,
    /// Hex SHA-256 of its stored bytes.
    pub hash: String,
}

/// The tree of a one-byte tag.
fn tree_of(tag: u8) -> Option<Tree> {
    Tree::ALL.iter().copied().find(|t| t.tag() == tag)
}

// ---- the store wrapper ------------------------------------------------------------------------

/// The copy-on-write state of the backup in progress.
#[derive(Debug, Default)]
struct Cow {
    /// Trees with a tag below this one are scanned entirely.
    tree_tag: u8,
    /// In tree `tree_tag`, the keys up to this one are scanned.
    upto: Option<Vec<u8>>,
    /// Values at the snapshot of keys written since, by (tag, key), for keys not passed yet.
    pre: BTreeMap<(u8, Vec<u8>), Option<Vec<u8>>>,
}

impl Cow {
    fn passed(&self, tag: u8, key: &[u8]) -> bool {
        tag < self.tree_tag
            || (tag == self.tree_tag && self.upto.as_deref().is_some_and(|u| key <= u))
    }
}

/// The service's store with the copy-on-write hook of backups (see the module docs).
/// Reads pass straight through; each write holds the gate's read side.
#[derive(Debug)]
pub struct SnapshotStore {
    inner: Arc<dyn Store>,
    gate: RwLock<()>,
    cow: Mutex<Option<Cow>>,
}

impl SnapshotStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Store>) -> Self {
        SnapshotStore {
            inner,
            gate: RwLock::new(()),
            cow: Mutex::new(None),
        }
    }

    /// Takes the snapshot: with no write in flight, starts recording pre-images and runs
    /// `at_snapshot` (which reads the HSM state), then lets writes go on.
    ///
    /// # Errors
    /// [`BackupError::Busy`] while another backup runs; what `at_snapshot` returns.
    pub fn begin<T>(
        &self,
        at_snapshot: impl FnOnce() -> Result<T, BackupError>,
    ) -> Result<(Snapshot<'_>, T), BackupError> {
        let _no_writes = vault::write_lock(&self.gate);
        let mut cow = lock(&self.cow);
        if cow.is_some() {
            return Err(BackupError::Busy);
        }
        let got = at_snapshot()?;
        *cow = Some(Cow {
            tree_tag: Tree::ALL[0].tag(),
            ..Cow::default()
        });
        Ok((
            Snapshot {
                store: self,
                tree: 0,
                from: Vec::new(),
                done: false,
            },
            got,
        ))
    }

    fn record_pre_images(&self, batch: &Batch) -> vault::Result<()> {
        let mut guard = lock(&self.cow);
        let Some(cow) = guard.as_mut() else {
            return Ok(());
        };
        for (tree, op) in batch.ops() {
            let key = match op {
                Op::Put(k, _) | Op::Delete(k) => k,
            };
            let tag = tree.tag();
            if cow.passed(tag, key) || cow.pre.contains_key(&(tag, key.clone())) {
                continue;
            }
            let old = self.inner.get(*tree, key)?;
            cow.pre.insert((tag, key.clone()), old);
        }
        Ok(())
    }
}

impl Store for SnapshotStore {
    fn get(&self, tree: Tree, key: &[u8]) -> vault::Result<Option<Vec<u8>>> {
        self.inner.get(tree, key)
    }

    fn range(
        &self,
        tree: Tree,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> vault::Result<Entries> {
        self.inner.range(tree, from, to, limit)
    }

    fn keys(
        &self,
        tree: Tree,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> vault::Result<Vec<Vec<u8>>> {
        self.inner.keys(tree, from, to, limit)
    }

    fn last(&self, tree: Tree) -> vault::Result<Option<(Vec<u8>, Vec<u8>)>> {
        self.inner.last(tree)
    }

    fn write(&self, batch: &Batch) -> vault::Result<()> {
        let _gate = vault::read_lock(&self.gate);
        self.record_pre_images(batch)?;
        self.inner.write(batch)
    }

    fn flush(&self) -> vault::Result<()> {
        self.inner.flush()
    }

    fn apply(&self, batch: &Batch) -> vault::Result<()> {
        self.write(batch)?;
        self.flush()
    }

    fn writes(&self) -> vault::Writes {
        self.inner.writes()
    }
}

/// A backup's view of the store as it was at [`SnapshotStore::begin`]. Dropping it ends the
/// recording of pre-images.
#[derive(Debug)]
pub struct Snapshot<'a> {
    store: &'a SnapshotStore,
    /// Index in [`Tree::ALL`] of the tree being scanned.
    tree: usize,
    /// The next key to read in that tree (inclusive).
    from: Vec<u8>,
    done: bool,
}

impl Snapshot<'_> {
    /// The next entries of the snapshot, into `out` (cleared first); `false` once all were
    /// given. Keys come tree by tree in key order, then the pre-images (in no useful order).
    ///
    /// # Errors
    /// Store errors.
    pub fn next_chunk(&mut self, out: &mut Vec<(Tree, Vec<u8>, Vec<u8>)>) -> vault::Result<bool> {
        out.clear();
        if self.done {
            return Ok(false);
        }
        let Some(&tree) = Tree::ALL.get(self.tree) else {
            // Every tree scanned: the pre-images of keys that existed at the snapshot.
            let cow = lock(&self.store.cow).take();
            for ((tag, key), old) in cow.map(|c| c.pre).unwrap_or_default() {
                if let (Some(value), Some(tree)) = (old, tree_of(tag)) {
                    out.push((tree, key, value));
                }
            }
            self.done = true;
            return Ok(true);
        };
        let read = self.store.inner.range(tree, &self.from, None, SCAN_CHUNK)?;
        let tag = tree.tag();
        let mut guard = lock(&self.store.cow);
        let Some(cow) = guard.as_mut() else {
            return Err(vault::Error::Storage("backup snapshot ended early".into()));
        };
        let complete = read.len() < SCAN_CHUNK;
        let last = read.last().map(|(k, _)| k.clone());
        for (key, value) in read {
            if !cow.pre.contains_key(&(tag, key.clone())) {
                out.push((tree, key, value));
            }
        }
        if complete {
            self.tree += 1;
            self.from.clear();
            cow.tree_tag = Tree::ALL.get(self.tree).map_or(u8::MAX, |t| t.tag());
            cow.upto = None;
        } else if let Some(mut last) = last {
            cow.upto = Some(last.clone());
            last.push(0);
            self.from = last;
        }
        Ok(true)
    }
}

impl Drop for Snapshot<'_> {
    fn drop(&mut self) {
        lock(&self.store.cow).take();
    }
}

// ---- making an archive -------------------------------------------------------------------------

/// What the service needs to make backups: the store wrapper, where the HSM state file is
/// (simulated HSM) or the token (PKCS#11), and the recipient archives are sealed to.
#[derive(Debug)]
pub struct Backups {
    /// The service's store.
    pub store: Arc<SnapshotStore>,
    /// The simulated HSM's state file.
    pub hsm_state: Option<PathBuf>,
    /// The PKCS#11 token, whose public facts go into the manifest.
    pub token: Option<Arc<Pkcs11Hsm>>,
    /// `[backup] recipient`; without it backups are refused.
    pub recipient: Option<age::x25519::Recipient>,
}

impl Backups {
    /// From the configuration.
    ///
    /// # Errors
    /// A recipient that is not an age X25519 recipient (the configuration check refuses it
    /// first).
    pub fn new(
        store: Arc<SnapshotStore>,
        hsm_state: Option<PathBuf>,
        config: &BackupConfig,
    ) -> Result<Self, BackupError> {
        let recipient = match &config.recipient {
            Some(r) => Some(r.parse::<age::x25519::Recipient>().map_err(|_| {
                BackupError::Format("[backup] recipient is not an age X25519 recipient".into())
            })?),
            None => None,
        };
        Ok(Backups {
            store,
            hsm_state,
            token: None,
            recipient,
        })
    }

    /// Records the facts of `token` in every backup (a vault on a PKCS#11 token).
    pub fn with_token(mut self, token: Arc<Pkcs11Hsm>) -> Self {
        self.token = Some(token);
        self
    }

    /// Writes a sealed archive of the store and the HSM state to `out`; returns its manifest.
    ///
    /// # Errors
    /// [`BackupError::Format`] without a recipient; [`BackupError::Busy`]; store and I/O errors
    /// (`out` then holds a truncated archive, which does not decrypt).
    pub fn write(&self, out: impl Write, now_ms: u64) -> Result<Manifest, BackupError> {
        let recipient = self.recipient.as_ref().ok_or_else(|| {
            BackupError::Format("no [backup] recipient configured: backups are refused".into())
        })?;
        let encryptor =
            age::Encryptor::with_recipients(std::iter::once(recipient as &dyn age::Recipient))
                .map_err(|e| BackupError::Format(format!("cannot seal: {e}")))?;
        let sealed = encryptor.wrap_output(out)?;
        let mut w = std::io::BufWriter::with_capacity(256 * 1024, sealed);
        let manifest = write_archive(
            &self.store,
            self.hsm_state.as_deref(),
            self.token.as_deref(),
            &mut w,
            now_ms,
        )?;
        let sealed = w.into_inner().map_err(|e| e.into_error())?;
        let mut out = sealed.finish()?;
        out.flush()?;
        Ok(manifest)
    }
}

/// Writes the clear archive (inside the caller's sealing writer).
fn write_archive(
    store: &SnapshotStore,
    hsm_state: Option<&std::path::Path>,
    token: Option<&Pkcs11Hsm>,
    w: &mut impl Write,
    now_ms: u64,
) -> Result<Manifest, BackupError> {
    // Both read at the snapshot: the anchor is never beyond the chain in the archive.
    let (mut snap, (hsm, token)) = store.begin(|| {
        let file = match hsm_state {
            Some(p) => std::fs::read(p)
                .map(Some)
                .map_err(|e| BackupError::Format(format!("hsm state {}: {e}", p.display())))?,
            None => None,
        };
        let facts = token.map(Pkcs11Hsm::backup_facts).transpose()?;
        Ok((file, facts))
    })?;
    let mut manifest = Manifest {
        format: FORMAT.into(),
        plico_version: env!("CARGO_PKG_VERSION").into(),
        created_ms: now_ms,
        hsm_generation: None,
        hsm_anchor: None,
        audit_head: None,
        cards: 0,
        batches: 0,
        jobs: 0,
        entries: 0,
        trees: BTreeMap::new(),
        bytes: 0,
        token: None,
    };
    if let Some(facts) = token {
        manifest.hsm_generation = Some(facts.generation);
        manifest.hsm_anchor = facts.audit_anchor.clone();
        manifest.token = Some(facts);
    }
    w.write_all(MAGIC)?;
    if let Some(hsm) = &hsm {
        let (generation, anchor) = hsm_facts(hsm);
        manifest.hsm_generation = generation;
        manifest.hsm_anchor = anchor;
        frame(w, b'H', hsm)?;
    }
    let mut chunk = Vec::with_capacity(SCAN_CHUNK);
    while snap.next_chunk(&mut chunk)? {
        for (tree, key, value) in &chunk {
            entry(w, *tree, key, value)?;
            count(&mut manifest, *tree, key, value);
        }
    }
    drop(snap);
    let json =
        serde_json::to_vec(&manifest).map_err(|e| BackupError::Format(format!("manifest: {e}")))?;
    frame(w, b'M', &json)?;
    Ok(manifest)
}

/// The generation and anchor of a simulated HSM's state file (both in clear in it).
fn hsm_facts(state: &[u8]) -> (Option<u64>, Option<vault::AuditAnchor>) {
    #[derive(Deserialize)]
    struct Body {
        generation: u64,
        #[serde(default)]
        audit_anchor: Option<vault::AuditAnchor>,
    }
    #[derive(Deserialize)]
    struct File {
        body: Body,
    }
    match serde_json::from_slice::<File>(state) {
        Ok(f) => (Some(f.body.generation), f.body.audit_anchor),
        Err(_) => (None, None),
    }
}

fn count(m: &mut Manifest, tree: Tree, key: &[u8], value: &[u8]) {
    m.entries += 1;
    m.bytes += (key.len() + value.len()) as u64;
    *m.trees.entry(tree.name().to_owned()).or_default() += 1;
    match tree {
        Tree::Cards => m.cards += 1,
        Tree::Batches => m.batches += 1,
        Tree::Outbox => m.jobs += 1,
        Tree::Meta if key == b"audit_tail" => {
            if let Ok(h) = serde_json::from_slice::<Head>(value) {
                m.audit_head = Some(h);
            }
        }
        _ => {}
    }
}

fn len32(n: usize) -> std::io::Result<[u8; 4]> {
    u32::try_from(n)
        .map(u32::to_be_bytes)
        .map_err(|_| std::io::Error::other("a store entry larger than 4 GiB"))
}

fn frame(w: &mut impl Write, kind: u8, bytes: &[u8]) -> std::io::Result<()> {
    w.write_all(&[kind])?;
    w.write_all(&len32(bytes.len())?)?;
    w.write_all(bytes)
}

fn entry(w: &mut impl Write, tree: Tree, key: &[u8], value: &[u8]) -> std::io::Result<()> {
    w.write_all(&[b'E', tree.tag()])?;
    w.write_all(&len32(key.len())?)?;
    w.write_all(key)?;
    w.write_all(&len32(value.len())?)?;
    w.write_all(value)
}

// ---- reading an archive ----------------------------------------------------------------------

/// One item of an archive, in order.
#[derive(Debug)]
pub enum Item {
    /// The HSM state file.
    HsmState(Vec<u8>),
    /// A store entry.
    Entry(Tree, Vec<u8>, Vec<u8>),
    /// The manifest: the last item (boxed: it is read once, entries millions of times).
    Manifest(Box<Manifest>),
}

/// Reads a sealed archive item by item.
pub struct ArchiveReader {
    inner: std::io::BufReader<Box<dyn Read + Send>>,
    ended: bool,
}

impl std::fmt::Debug for ArchiveReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ArchiveReader")
    }
}

impl ArchiveReader {
    /// Opens `sealed` with `identities` and checks the archive's first line.
    ///
    /// # Errors
    /// [`BackupError::Decrypt`] if no identity opens it; [`BackupError::Format`] for another
    /// kind of file.
    pub fn open(
        sealed: impl BufRead + Send + 'static,
        identities: &[Box<dyn age::Identity + Send + Sync>],
    ) -> Result<Self, BackupError> {
        let decryptor = age::Decryptor::new_buffered(sealed)
            .map_err(|e| BackupError::Decrypt(e.to_string()))?;
        let reader = decryptor
            .decrypt(identities.iter().map(|i| &**i as &dyn age::Identity))
            .map_err(|e| BackupError::Decrypt(e.to_string()))?;
        let boxed: Box<dyn Read + Send> = Box::new(reader);
        let mut inner = std::io::BufReader::with_capacity(256 * 1024, boxed);
        let mut magic = [0u8; MAGIC.len()];
        inner
            .read_exact(&mut magic)
            .map_err(|e| BackupError::Format(format!("not a plico backup: {e}")))?;
        if magic != MAGIC {
            return Err(BackupError::Format(
                "not a plico backup (or a newer format)".into(),
            ));
        }
        Ok(ArchiveReader {
            inner,
            ended: false,
        })
    }

    /// The next item; `None` after the manifest. A truncated or altered archive is an error
    /// (age authenticates every chunk and the last one).
    ///
    /// # Errors
    /// [`BackupError::Format`] naming what is wrong.
    pub fn next_item(&mut self) -> Result<Option<Item>, BackupError> {
        if self.ended {
            let mut rest = [0u8; 1];
            return match self.inner.read(&mut rest)? {
                0 => Ok(None),
                _ => Err(BackupError::Format("data after the manifest".into())),
            };
        }
        let mut kind = [0u8; 1];
        if let Err(e) = self.inner.read_exact(&mut kind) {
            return Err(BackupError::Format(format!(
                "the archive ends without its manifest: {e}"
            )));
        }
        match kind[0] {
            b'H' => Ok(Some(Item::HsmState(self.bytes("hsm state")?))),
            b'E' => {
                let mut tag = [0u8; 1];
                self.inner.read_exact(&mut tag).map_err(truncated)?;
                let tree = tree_of(tag[0]).ok_or_else(|| {
                    BackupError::Format(format!("unknown store tree tag {}", tag[0]))
                })?;
                let key = self.bytes("entry key")?;
                let value = self.bytes("entry value")?;
                Ok(Some(Item::Entry(tree, key, value)))
            }
            b'M' => {
                let json = self.bytes("manifest")?;
                let m: Manifest = serde_json::from_slice(&json)
                    .map_err(|e| BackupError::Format(format!("manifest: {e}")))?;
                self.ended = true;
                Ok(Some(Item::Manifest(Box::new(m))))
            }
            other => Err(BackupError::Format(format!("unknown frame kind {other}"))),
        }
    }

    fn bytes(&mut self, what: &str) -> Result<Vec<u8>, BackupError> {
        let mut len = [0u8; 4];
        self.inner.read_exact(&mut len).map_err(truncated)?;
        let len = u32::from_be_bytes(len);
        if len > MAX_FRAME {
            return Err(BackupError::Format(format!(
                "{what} of {len} bytes is larger than allowed"
            )));
        }
        let mut buf = vec![0u8; len as usize];
        self.inner.read_exact(&mut buf).map_err(truncated)?;
        Ok(buf)
    }
}

fn truncated(e: std::io::Error) -> BackupError {
    BackupError::Format(format!("truncated or damaged: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vault::MemoryStore;

    fn dump(store: &dyn Store) -> BTreeMap<(u8, Vec<u8>), Vec<u8>> {
        let mut all = BTreeMap::new();
        for tree in Tree::ALL {
            for (k, v) in store.range(tree, &[], None, usize::MAX).unwrap() {
                all.insert((tree.tag(), k), v);
            }
        }
        all
    }

    fn mix(mut x: u64) -> u64 {
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x
    }

    /// Random writes between the chunks of a scan: the snapshot equals the store's contents
    /// when it began, whatever was put, changed or deleted during the scan.
    #[test]
    fn copy_on_write_snapshot_is_the_store_at_its_start() {
        let inner: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let store = SnapshotStore::new(inner.clone());
        let trees = [Tree::Meta, Tree::Cards, Tree::Outbox, Tree::Segments];
        let mut seed = 7u64;
        let mut random_batch = |n: usize| {
            let mut b = Batch::new();
            for _ in 0..n {
                seed = mix(seed.wrapping_add(1));
                let tree = trees[(seed % 4) as usize];
                let key = (seed >> 8) % 20_000;
                if (seed >> 40) % 4 == 0 {
                    b.delete(tree, key.to_be_bytes().to_vec());
                } else {
                    b.put(
                        tree,
                        key.to_be_bytes().to_vec(),
                        seed.to_le_bytes().to_vec(),
                    );
                }
            }
            b
        };
        for _ in 0..40 {
            store.apply(&random_batch(500)).unwrap();
        }
        for round in 0..3 {
            let before = dump(&*inner);
            let (mut snap, ()) = store.begin(|| Ok(())).unwrap();
            assert!(matches!(store.begin(|| Ok(())), Err(BackupError::Busy)));
            let mut got = BTreeMap::new();
            let mut chunk = Vec::new();
            let mut chunks = 0;
            while snap.next_chunk(&mut chunk).unwrap() {
                for (t, k, v) in chunk.drain(..) {
                    assert!(
                        got.insert((t.tag(), k), v).is_none(),
                        "an entry given twice"
                    );
                }
                chunks += 1;
                store.apply(&random_batch(300)).unwrap();
            }
            drop(snap);
            assert!(chunks > 3, "round {round}: the scan was not interleaved");
            assert_eq!(got.len(), before.len(), "round {round}");
            assert!(got == before, "round {round}: the snapshot differs");
            assert_ne!(dump(&*inner), before, "the writes changed nothing");
        }
    }

    fn facts(set: &str, root: u8, terms: &[(u32, u8, TermState)]) -> TokenFacts {
        use hsm_pkcs11::state::{ShareSet, StateBody, TermRecord};
        let body = StateBody {
            format: hsm_pkcs11::state::FORMAT.into(),
            version: hsm_pkcs11::state::VERSION,
            generation: 7,
            dev: false,
            share_set: ShareSet {
                id: set.into(),
                threshold: 2,
                shares: 3,
                digests: BTreeMap::new(),
            },
            root_kcv: Kcv::from_bytes([root; 3]),
            terms: terms
                .iter()
                .map(|&(id, kcv, state)| TermRecord {
                    id,
                    state,
                    kcv: Kcv::from_bytes([kcv; 3]),
                    created_unix: 0,
                })
                .collect(),
            audit_anchor: None,
        };
        TokenFacts::of("plico-test", &body)
    }

    /// The token of the backup passes; another token (other root under the same set, other
    /// term KCVs), a term retired or unknown on the token are refused by name; a rekeyed token
    /// (new set and root, same terms) passes and says so.
    #[test]
    fn check_token_tells_the_backups_token_from_another() {
        use TermState::{Active, DecryptOnly, Retired};
        let archived = facts("aa", 1, &[(1, 10, DecryptOnly), (2, 20, Active)]);
        let used = BTreeMap::from([(TermId(1), 3), (TermId(2), 5)]);
        assert_eq!(check_token(Some(&archived), &archived, &used), Ok(false));
        // Rotated since: a new active term, the old ones kept.
        let rotated = facts(
            "aa",
            1,
            &[(1, 10, DecryptOnly), (2, 20, DecryptOnly), (3, 30, Active)],
        );
        assert_eq!(check_token(Some(&archived), &rotated, &used), Ok(false));
        let rekeyed = facts("bb", 9, &[(1, 10, DecryptOnly), (2, 20, Active)]);
        assert_eq!(check_token(Some(&archived), &rekeyed, &used), Ok(true));
        assert!(matches!(
            check_token(
                Some(&archived),
                &facts("aa", 9, &[(1, 10, DecryptOnly), (2, 20, Active)]),
                &used
            ),
            Err(TokenMismatch::Root { .. })
        ));
        let other = facts("cc", 4, &[(1, 11, DecryptOnly), (2, 20, Active)]);
        assert_eq!(
            check_token(Some(&archived), &other, &used),
            Err(TokenMismatch::TermKcv {
                term: 1,
                archived: Kcv::from_bytes([10; 3]),
                token: Kcv::from_bytes([11; 3]),
            })
        );
        let retired = facts("aa", 1, &[(1, 10, Retired), (2, 20, Active)]);
        assert_eq!(
            check_token(Some(&archived), &retired, &used),
            Err(TokenMismatch::TermGone {
                term: 1,
                keys: 3,
                state: "retired"
            })
        );
        let fewer = facts("aa", 1, &[(2, 20, Active)]);
        let e = check_token(Some(&archived), &fewer, &used).unwrap_err();
        assert!(matches!(
            e,
            TokenMismatch::TermGone {
                term: 1,
                state: "unknown",
                ..
            }
        ));
        assert!(e.to_string().contains("term 1"), "{e}");
        // An archive without token facts: only the terms' presence can be checked.
        assert_eq!(check_token(None, &other, &used), Ok(false));
        // The facts hold labels, ids and KCVs, nothing else.
        let json = serde_json::to_string(&archived).unwrap();
        assert!(
            json.contains("plico-kek-2-code") && json.contains("plico-root"),
            "{json}"
        );
    }

    /// An archive written and read back gives the same entries, the HSM state and a manifest
    /// that counts them; the wrong identity and a truncated archive are refused.
    #[test]
    fn archive_round_trip_and_refusals() {
        let inner: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let mut b = Batch::new();
        for i in 0u64..10_000 {
            b.put(Tree::Cards, i.to_be_bytes().to_vec(), vec![7u8; 40]);
        }
        b.put(
            Tree::Batches,
            1u64.to_be_bytes().to_vec(),
            b"batch".to_vec(),
        );
        b.put(
            Tree::Meta,
            b"audit_tail".to_vec(),
            br#"{"seq":42,"hash":"ab","mac":null}"#.to_vec(),
        );
        inner.apply(&b).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("hsm-state.json");
        std::fs::write(&state, br#"{"body":{"generation":9},"mac":"x"}"#).unwrap();
        let id = age::x25519::Identity::generate();
        let config = BackupConfig {
            recipient: Some(id.to_public().to_string()),
        };
        let backups = Backups::new(
            Arc::new(SnapshotStore::new(inner.clone())),
            Some(state),
            &config,
        )
        .unwrap();
        let mut sealed = Vec::new();
        let m = backups.write(&mut sealed, 5).unwrap();
        assert_eq!((m.cards, m.batches, m.entries), (10_000, 1, 10_002));
        assert_eq!(m.audit_head.as_ref().map(|h| h.seq), Some(42));
        assert_eq!(m.hsm_generation, Some(9));
        assert!(
            !sealed.windows(9).any(|w| w == b"audit_tai"),
            "clear text in the archive"
        );

        let ids: Vec<Box<dyn age::Identity + Send + Sync>> = vec![Box::new(id)];
        let mut r = ArchiveReader::open(std::io::Cursor::new(sealed.clone()), &ids).unwrap();
        let (mut entries, mut hsm, mut manifest) = (0, None, None);
        while let Some(item) = r.next_item().unwrap() {
            match item {
                Item::HsmState(s) => hsm = Some(s),
                Item::Entry(..) => entries += 1,
                Item::Manifest(m) => manifest = Some(*m),
            }
        }
        assert_eq!(entries, 10_002);
        assert!(hsm.is_some());
        assert_eq!(manifest.unwrap(), m);

        let other: Vec<Box<dyn age::Identity + Send + Sync>> =
            vec![Box::new(age::x25519::Identity::generate())];
        assert!(matches!(
            ArchiveReader::open(std::io::Cursor::new(sealed.clone()), &other),
            Err(BackupError::Decrypt(_))
        ));
        let cut = sealed[..sealed.len() - 100].to_vec();
        let mut r = ArchiveReader::open(std::io::Cursor::new(cut), &ids).unwrap();
        let mut failed = false;
        loop {
            match r.next_item() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        assert!(failed, "a truncated archive was read to its end");
    }
}
