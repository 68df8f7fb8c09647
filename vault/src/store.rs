//! The store seam: named trees of sorted byte keys, and atomic batches across them.
//!
//! Everything the vault persists goes through [`Store`]: accounts, the audit chain, the keyring.
//! A [`Batch`] is applied all or nothing, across trees, so a change and the audit event that
//! records it land together or not at all. `apply` returns only once the batch is durable.
//!
//! Implementations: [`sled::SledStore`] (the embedded default, the only file that names sled),
//! [`memory::MemoryStore`] (tests, and a model to compare against), and [`memory::FailingStore`]
//! (refuses writes on demand, to test that a failed write changes nothing).

pub mod memory;
pub mod sled;

use crate::error::Result;
use std::fmt;

/// The trees of the store. Their names are persisted: never rename them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tree {
    /// Small singletons: the store's format version, the keyring, the audit head.
    Meta,
    /// Accounts by id.
    Accounts,
    /// Audit events by sequence number (u64 big-endian).
    Audit,
    /// Audit checkpoints by the sequence number they cover (u64 big-endian).
    AuditCheckpoints,
    /// Index of audit events by subject: `subject length (u16 BE) | subject | seq (u64 BE)`,
    /// empty values. Derived from the chain, written in the same batch as each event.
    AuditSubjects,
    /// Code batches by id (u64 BE): the commit record of each batch ([`crate::codes`]).
    Batches,
    /// Code segments: `batch id (u64 BE) | run (u16 BE) | segment (u32 BE)`.
    Segments,
    /// Segment directories: `batch id (u64 BE) | run (u16 BE)` → the first serial of each
    /// segment of that run.
    SegmentDirs,
    /// Batches by content id (keyed HMAC of the file's SHA-256), for idempotent uploads.
    ContentIds,
    /// Per-card changes over the committed segments, by serial: codes deleted or replaced.
    CodeOverlay,
    /// Holders by id: sealed personal data, cards, flags (the `cards` crate).
    Holders,
    /// Blind indexes of holders: `kind u8 | HMAC (32) | holder id`, empty values.
    HolderIndex,
    /// Cards' lifecycle records by serial.
    Cards,
    /// Cards by expiry: `YYYY-MM-DD | serial`, empty values (the daily sweep).
    CardExpiry,
    /// Technical problem reports by id (u64 BE).
    Reports,
    /// Print runs of mailers by id (u64 BE) (the `cards` crate's `mailers`).
    PrintRuns,
    /// Print files by id (u64 BE): the card serial of every mailer, in page order.
    PrintFiles,
    /// Print file directory by id (u64 BE): name, batch, numbers, serial range and the state
    /// of every mailer (small; loaded at start).
    PrintFileDirs,
    /// Dispatch jobs by id (u64 BE): one part of a card's codes by one channel
    /// (the `cards` crate's `outbox`). No code, no contact.
    Outbox,
    /// Jobs by when they are due: `lane u8 | due ms (u64 BE) | job id (u64 BE)`, empty values.
    /// Lane 0: waiting (`queued`, `failed`); lane 1: `sending` (found again at start-up).
    OutboxDue,
    /// Jobs by card: `serial | '|' | job id (u64 BE)`, empty values.
    OutboxCards,
    /// Jobs by idempotency key (16 bytes) → job id (u64 BE), for delivery receipts.
    OutboxKeys,
    /// Jobs not yet done with: `created ms (u64 BE) | job id (u64 BE)`, empty values (the
    /// overdue alert).
    OutboxOpen,
    /// Dispatch requests by id (u64 BE).
    DispatchRequests,
    /// Key ceremony proposals by id (u64 BE) ([`crate::ceremony`]).
    KeyProposals,
    /// Key jobs (rewrap after a rotation, shred) by the id (u64 BE) of the proposal that
    /// started them: target term, progress, phase ([`crate::ceremony`]).
    KeyJobs,
    /// Registry files imported in bulk, by id (u64 BE): the commit record of each file, with
    /// the directory of its segments (the `cards` crate's `registry_bulk`). A file's segments
    /// are visible only once this record is written.
    RegistryFiles,
    /// Segments of registry files: `file id (u64 BE) | tree tag u8 | segment (u32 BE)` → up
    /// to 32 KiB of sorted entries of that tree ([`Tree::Holders`], [`Tree::HolderIndex`],
    /// [`Tree::Cards`], [`Tree::CardExpiry`]), under the entries of the tree itself.
    RegistrySegments,
}

impl Tree {
    /// Every tree, in a fixed order.
    pub const ALL: [Tree; 28] = [
        Tree::Meta,
        Tree::Accounts,
        Tree::Audit,
        Tree::AuditCheckpoints,
        Tree::AuditSubjects,
        Tree::Batches,
        Tree::Segments,
        Tree::SegmentDirs,
        Tree::ContentIds,
        Tree::CodeOverlay,
        Tree::Holders,
        Tree::HolderIndex,
        Tree::Cards,
        Tree::CardExpiry,
        Tree::Reports,
        Tree::PrintRuns,
        Tree::PrintFiles,
        Tree::PrintFileDirs,
        Tree::Outbox,
        Tree::OutboxDue,
        Tree::OutboxCards,
        Tree::OutboxKeys,
        Tree::OutboxOpen,
        Tree::DispatchRequests,
        Tree::KeyProposals,
        Tree::KeyJobs,
        Tree::RegistryFiles,
        Tree::RegistrySegments,
    ];

    /// The persisted name.
    pub fn name(self) -> &'static str {
        match self {
            Tree::Meta => "meta",
            Tree::Accounts => "accounts",
            Tree::Audit => "audit",
            Tree::AuditCheckpoints => "audit_checkpoints",
            Tree::AuditSubjects => "audit_subjects",
            Tree::Batches => "batches",
            Tree::Segments => "segments",
            Tree::SegmentDirs => "segment_dirs",
            Tree::ContentIds => "content_ids",
            Tree::CodeOverlay => "code_overlay",
            Tree::Holders => "holders",
            Tree::HolderIndex => "holder_index",
            Tree::Cards => "cards",
            Tree::CardExpiry => "card_expiry",
            Tree::Reports => "reports",
            Tree::PrintRuns => "print_runs",
            Tree::PrintFiles => "print_files",
            Tree::PrintFileDirs => "print_file_dirs",
            Tree::Outbox => "outbox",
            Tree::OutboxDue => "outbox_due",
            Tree::OutboxCards => "outbox_cards",
            Tree::OutboxKeys => "outbox_keys",
            Tree::OutboxOpen => "outbox_open",
            Tree::DispatchRequests => "dispatch_requests",
            Tree::KeyProposals => "key_proposals",
            Tree::KeyJobs => "key_jobs",
            Tree::RegistryFiles => "registry_files",
            Tree::RegistrySegments => "registry_segments",
        }
    }

    /// One-byte tag, used as a key prefix by stores that keep every tree in one keyspace.
    /// Persisted: never renumber.
    pub fn tag(self) -> u8 {
        match self {
            Tree::Meta => 1,
            Tree::Accounts => 2,
            Tree::Audit => 3,
            Tree::AuditCheckpoints => 4,
            Tree::AuditSubjects => 5,
            Tree::Batches => 6,
            Tree::Segments => 7,
            Tree::SegmentDirs => 8,
            Tree::ContentIds => 9,
            Tree::CodeOverlay => 10,
            Tree::Holders => 11,
            Tree::HolderIndex => 12,
            Tree::Cards => 13,
            Tree::CardExpiry => 14,
            Tree::Reports => 15,
            Tree::PrintRuns => 16,
            Tree::PrintFiles => 17,
            Tree::PrintFileDirs => 18,
            Tree::Outbox => 19,
            Tree::OutboxDue => 20,
            Tree::OutboxCards => 21,
            Tree::OutboxKeys => 22,
            Tree::OutboxOpen => 23,
            Tree::DispatchRequests => 24,
            Tree::KeyProposals => 25,
            Tree::KeyJobs => 26,
            Tree::RegistryFiles => 27,
            Tree::RegistrySegments => 28,
        }
    }
}

impl fmt::Display for Tree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One write of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Set `key` to `value`.
    Put(Vec<u8>, Vec<u8>),
    /// Remove `key` (no error if absent).
    Delete(Vec<u8>),
}

/// Writes to apply together, all or nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    ops: Vec<(Tree, Op)>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Batch::default()
    }

    /// Adds a put.
    pub fn put(&mut self, tree: Tree, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push((tree, Op::Put(key.into(), value.into())));
    }

    /// Adds a delete.
    pub fn delete(&mut self, tree: Tree, key: impl Into<Vec<u8>>) {
        self.ops.push((tree, Op::Delete(key.into())));
    }

    /// The writes, in order.
    pub fn ops(&self) -> &[(Tree, Op)] {
        &self.ops
    }

    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// Whether a store takes writes, as its last write or flush found ([`Store::writes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writes {
    /// No write or flush has failed since the last one that worked.
    Working,
    /// The last write or flush failed ([`crate::Error::Unwritable`]); a later one may work
    /// (space was freed, the disk came back).
    Failing,
    /// A write or flush failed, and the store refuses every write until it is opened again:
    /// the process must restart (sled after an I/O error, see [`sled::SledStore`]). Reads
    /// still work.
    Stuck,
}

impl Writes {
    /// Its encoding in a [`WritesCell`].
    fn code(self) -> u8 {
        match self {
            Writes::Working => 0,
            Writes::Failing => 1,
            Writes::Stuck => 2,
        }
    }

    fn from_code(code: u8) -> Writes {
        match code {
            0 => Writes::Working,
            1 => Writes::Failing,
            _ => Writes::Stuck,
        }
    }
}

/// A [`Writes`] that a store updates after each write and flush, without a lock.
#[derive(Debug, Default)]
pub(crate) struct WritesCell(std::sync::atomic::AtomicU8);

impl WritesCell {
    pub(crate) fn get(&self) -> Writes {
        Writes::from_code(self.0.load(std::sync::atomic::Ordering::SeqCst))
    }

    pub(crate) fn set(&self, w: Writes) {
        self.0.store(w.code(), std::sync::atomic::Ordering::SeqCst);
    }
}

/// Key/value pairs read from a tree, in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// A persistent, ordered key/value store with atomic multi-tree batches.
///
/// # Errors
/// Every method returns [`crate::Error::Storage`] naming the tree and what failed; a damaged
/// store is an error, never a panic.
pub trait Store: Send + Sync + fmt::Debug {
    /// The value at `key`.
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Calls `read` with the value at `key`, lent by the store without a copy where it can
    /// (sled lends its cached value), and returns whether there was one. For a large value of
    /// which a reader needs a small part: a bulk registry segment of up to 32 KiB, of which a
    /// card status needs one entry. By default, [`Store::get`] and a borrow of its copy.
    fn read_with(&self, tree: Tree, key: &[u8], read: &mut dyn FnMut(&[u8])) -> Result<bool> {
        Ok(match self.get(tree, key)? {
            Some(v) => {
                read(&v);
                true
            }
            None => false,
        })
    }

    /// Up to `limit` entries with `from <= key` (and `key < to` when given), ascending.
    fn range(&self, tree: Tree, from: &[u8], to: Option<&[u8]>, limit: usize) -> Result<Entries>;

    /// Up to `limit` keys with `from <= key` (and `key < to` when given), ascending, without
    /// their values (for deleting ranges).
    fn keys(
        &self,
        tree: Tree,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>> {
        Ok(self
            .range(tree, from, to, limit)?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }

    /// The entry with the greatest key.
    fn last(&self, tree: Tree) -> Result<Option<(Vec<u8>, Vec<u8>)>>;

    /// Applies `batch` atomically: when this returns `Ok`, every write is visible to readers;
    /// when it returns `Err`, none is. Not yet durable: see [`Store::flush`].
    fn write(&self, batch: &Batch) -> Result<()>;

    /// Makes every write so far durable.
    fn flush(&self) -> Result<()>;

    /// [`Store::write`] then [`Store::flush`]: when this returns `Ok`, the batch is on disk.
    ///
    /// A caller that serialises writes under a lock can instead `write` under the lock and
    /// `flush` after releasing it, so that concurrent callers share one flush.
    fn apply(&self, batch: &Batch) -> Result<()> {
        self.write(batch)?;
        self.flush()
    }

    /// Whether writes work, as the last write or flush found: the service's readiness and
    /// health answer from it. A store whose writes cannot fail answers `Working`.
    fn writes(&self) -> Writes {
        Writes::Working
    }
}

/// Encodes a sequence number as a key that sorts numerically.
pub fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

#[cfg(test)]
pub(crate) mod contract {
    //! The behaviour every [`Store`] must show; run against each implementation.
    use super::*;

    pub(crate) fn run(store: &dyn Store) {
        assert_eq!(store.get(Tree::Meta, b"x").unwrap(), None);
        assert_eq!(store.last(Tree::Audit).unwrap(), None);

        let mut b = Batch::new();
        b.put(Tree::Meta, b"x".to_vec(), b"1".to_vec());
        for i in [3u64, 1, 2, 10] {
            b.put(Tree::Audit, seq_key(i).to_vec(), i.to_string().into_bytes());
        }
        store.apply(&b).unwrap();
        assert_eq!(store.get(Tree::Meta, b"x").unwrap(), Some(b"1".to_vec()));
        let mut lent = Vec::new();
        assert!(store
            .read_with(Tree::Meta, b"x", &mut |v| lent = v.to_vec())
            .unwrap());
        assert_eq!(lent, b"1");
        assert!(!store
            .read_with(Tree::Accounts, b"x", &mut |_| panic!("no such value"))
            .unwrap());
        // Trees are separate namespaces.
        assert_eq!(store.get(Tree::Accounts, b"x").unwrap(), None);

        let all = store.range(Tree::Audit, &seq_key(0), None, 100).unwrap();
        let keys: Vec<u64> = all
            .iter()
            .map(|(k, _)| u64::from_be_bytes(k[..8].try_into().unwrap()))
            .collect();
        assert_eq!(keys, vec![1, 2, 3, 10]);
        let some = store
            .range(Tree::Audit, &seq_key(2), Some(&seq_key(10)), 100)
            .unwrap();
        assert_eq!(some.len(), 2);
        assert_eq!(
            store
                .range(Tree::Audit, &seq_key(0), None, 2)
                .unwrap()
                .len(),
            2
        );
        assert_eq!(store.last(Tree::Audit).unwrap().unwrap().1, b"10".to_vec());

        let mut d = Batch::new();
        d.delete(Tree::Audit, seq_key(10).to_vec());
        d.delete(Tree::Audit, seq_key(99).to_vec());
        d.put(Tree::Meta, b"x".to_vec(), b"2".to_vec());
        store.apply(&d).unwrap();
        assert_eq!(store.last(Tree::Audit).unwrap().unwrap().1, b"3".to_vec());
        assert_eq!(store.get(Tree::Meta, b"x").unwrap(), Some(b"2".to_vec()));
        store.apply(&Batch::new()).unwrap();
    }
}
