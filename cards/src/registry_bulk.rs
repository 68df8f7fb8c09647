//! Registry files imported in bulk: the entries of a large registry file written as sorted
//! segments under one commit record, beneath the per-entry registry trees.
//!
//! # Why
//!
//! A registry file of 100,000 holders is about 500,000 store entries (the holder, its two
//! blind-index keys, its card, the card's expiry key). Applied as one sled batch they took
//! 10 s of a 12.9 s import (sled pins its epoch for the whole batch and copies a node on every
//! insert), and even one insert per entry runs at about 66,000 entries/s. Written as sorted
//! values of a few KiB (see [`SEGMENT_BYTES`] for why not larger), as the code vault writes
//! its segments, they cost a fraction of that, and the file still lands all or nothing with
//! its audit event.
//!
//! # Layout
//!
//! - [`Tree::RegistrySegments`]: `file id (u64 BE) | tree tag (u8) | segment (u32 BE)` → a
//!   segment: `version (1) | count (u32 BE) | count × offset (u32 BE, from the first entry) |
//!   entries`, each entry `key length (u16 BE) | key | value length (u32 BE) | value`, in
//!   strictly ascending key order, ended once it holds [`SEGMENT_BYTES`] of entries (so at
//!   most that plus one entry; files written before 6 KiB segments have 32 KiB ones). The
//!   keys and values are exactly those the tree ([`Tree::Holders`], [`Tree::HolderIndex`],
//!   [`Tree::Cards`], [`Tree::CardExpiry`]) holds per entry: the same record encodings.
//! - [`Tree::RegistryFiles`]: `file id (u64 BE)` → [`FileRecord`] (JSON): when it was
//!   committed, how many holders and entries, and for each tree its entries, the first key of
//!   each of its segments and the last key of the last one (hex). It is the commit marker: a segment no
//!   record names is never read.
//!
//! # Reading
//!
//! The per-entry trees are an overlay over the files: a key found there wins. Otherwise the
//! files are searched from the newest, each through its directory, held in memory (loaded when
//! a new file is seen: every read checks for a file newer than the last one known, one short
//! key scan). Single changes made later (a lifecycle change, a small registry file) write the
//! per-entry trees, so they win over every file. A bulk import that rewrites a holder or card
//! held in the overlay deletes that overlay entry in its commit batch, so the newer file wins.
//!
//! Blind-index and expiry entries are never deleted from a file: a reader checks each one
//! against the record it points to (the holder's `index`, the card's `expiry`), so an entry
//! left behind by a later change is skipped without a tombstone.
//!
//! # Commit and crash
//!
//! [`Stager`] writes segments in store batches of [`STAGE_SEGMENTS`], unflushed, then flushes
//! the store; [`Stager::finish`] puts the commit record into the import's one commit batch,
//! with the holder counter, the overlay deletions and the audit events (one `commit_all`,
//! flushed before the answer). A file id is the last committed id plus one (imports hold the
//! registry's lock), so segments under an id above the last committed one are leftovers of a
//! crash: invisible, and removed at start-up ([`super::Cards::recover_registry`]) and before
//! every bulk import.

use serde::{Deserialize, Serialize};
use std::sync::{Arc, RwLock};
use vault::{read_lock, write_lock};
use vault::{Batch, Error, Result, Store, Tree};

/// The trees a bulk file holds entries of.
pub(crate) const BULK_TREES: [Tree; 4] = [
    Tree::Holders,
    Tree::HolderIndex,
    Tree::Cards,
    Tree::CardExpiry,
];
/// Bytes of entries after which a segment ends (it may exceed them by its last entry): about
/// 8 holders, 25 cards or 130 index keys. sled keeps up to 16 values in a leaf and rewrites the
/// leaf whole every few changes; a leaf over its off-log threshold (a quarter of its 512 KiB
/// log segment, 128 KiB) goes to a file of its own, created, written and later deleted. Leaves
/// of segments this small stay in the log (with 32 KiB segments every leaf rewrite was a new
/// file). Readers take segments of any size.
pub const SEGMENT_BYTES: usize = 6 * 1024;
/// Segments per store write while staging (about 1.5 MiB).
pub const STAGE_SEGMENTS: usize = 256;
/// Segment format version.
const VERSION: u8 = 1;
/// Segment keys deleted per store batch when removing leftovers.
const SWEEP: usize = 1024;

/// The commit record of a bulk file, as stored (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// File id.
    pub id: u64,
    /// Committed (Unix ms).
    pub created_ms: u64,
    /// Holders written.
    pub holders: u64,
    /// Entries written, every tree together.
    pub entries: u64,
    /// The directory of each tree that has entries.
    pub trees: Vec<TreeDirRecord>,
}

/// One tree's segments in a [`FileRecord`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeDirRecord {
    /// The tree's persisted name ([`Tree::name`]).
    pub tree: String,
    /// Entries of the tree in the file.
    pub entries: u64,
    /// The first key of each segment, hex, in segment order.
    pub first: Vec<String>,
    /// The last key of the last segment, hex.
    pub last: String,
}

/// One tree's segments, in memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct TreeDir {
    first: Vec<Vec<u8>>,
    last: Vec<u8>,
}

impl TreeDir {
    /// The first segment that may hold a key `>= key`, or `None` when every key is smaller.
    fn start_for(&self, key: &[u8]) -> Option<usize> {
        if self.first.is_empty() || key > self.last.as_slice() {
            return None;
        }
        Some(
            self.first
                .partition_point(|f| f.as_slice() <= key)
                .saturating_sub(1),
        )
    }

    /// The one segment that may hold `key`.
    fn segment_of(&self, key: &[u8]) -> Option<usize> {
        let first = self.first.first()?;
        if key < first.as_slice() {
            return None;
        }
        self.start_for(key)
    }
}

/// A committed file's directory, in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileDir {
    id: u64,
    trees: Vec<(Tree, TreeDir)>,
}

impl FileDir {
    fn tree(&self, tree: Tree) -> Option<&TreeDir> {
        self.trees.iter().find(|(t, _)| *t == tree).map(|(_, d)| d)
    }

    fn from_record(rec: &FileRecord) -> Result<FileDir> {
        let mut trees = Vec::new();
        for t in &rec.trees {
            let tree = BULK_TREES
                .into_iter()
                .find(|b| b.name() == t.tree)
                .ok_or_else(|| damaged_file(rec.id, "names an unknown tree"))?;
            let first = t
                .first
                .iter()
                .map(|h| hex::decode(h).map_err(|_| damaged_file(rec.id, "bad key")))
                .collect::<Result<Vec<_>>>()?;
            let last = hex::decode(&t.last).map_err(|_| damaged_file(rec.id, "bad key"))?;
            trees.push((tree, TreeDir { first, last }));
        }
        Ok(FileDir { id: rec.id, trees })
    }
}

fn damaged_file(id: u64, what: &str) -> Error {
    Error::Storage(format!("registry file {id}: its record is damaged: {what}"))
}

fn damaged_segment(id: u64, tree: Tree, segment: usize) -> Error {
    Error::Storage(format!(
        "registry file {id}: segment {segment} of {tree} is damaged"
    ))
}

/// The key of a segment.
fn segment_key(file: u64, tree: Tree, segment: usize) -> Vec<u8> {
    let mut k = Vec::with_capacity(13);
    k.extend_from_slice(&file.to_be_bytes());
    k.push(tree.tag());
    k.extend_from_slice(&(segment as u32).to_be_bytes());
    k
}

fn file_id(key: &[u8]) -> Result<u64> {
    <[u8; 8]>::try_from(key)
        .map(u64::from_be_bytes)
        .map_err(|_| Error::Storage("a registry file id is damaged".into()))
}

/// A segment read from the store, parsed in place.
struct Segment<'a> {
    offsets: &'a [u8],
    body: &'a [u8],
}

impl<'a> Segment<'a> {
    fn parse(bytes: &'a [u8]) -> Option<Segment<'a>> {
        let (&version, rest) = bytes.split_first()?;
        if version != VERSION || rest.len() < 4 {
            return None;
        }
        let count = u32::from_be_bytes(rest[..4].try_into().ok()?) as usize;
        let rest = &rest[4..];
        let table = count.checked_mul(4)?;
        if rest.len() < table {
            return None;
        }
        Some(Segment {
            offsets: &rest[..table],
            body: &rest[table..],
        })
    }

    fn len(&self) -> usize {
        self.offsets.len() / 4
    }

    fn entry(&self, i: usize) -> Option<(&'a [u8], &'a [u8])> {
        let at = u32::from_be_bytes(self.offsets.get(i * 4..i * 4 + 4)?.try_into().ok()?) as usize;
        let b = self.body.get(at..)?;
        let klen = u16::from_be_bytes(b.get(..2)?.try_into().ok()?) as usize;
        let key = b.get(2..2 + klen)?;
        let vat = 2 + klen;
        let vlen = u32::from_be_bytes(b.get(vat..vat + 4)?.try_into().ok()?) as usize;
        let value = b.get(vat + 4..vat + 4 + vlen)?;
        Some((key, value))
    }

    /// The index of the first entry whose key is `>= key` (`len()` if none).
    fn lower_bound(&self, key: &[u8]) -> Option<usize> {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.entry(mid)?.0 < key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Some(lo)
    }
}

/// The committed bulk files of a store, their directories cached in memory.
#[derive(Debug, Default)]
pub(crate) struct BulkFiles {
    files: RwLock<BulkView>,
}

/// The directories of the committed files as a reader found them, oldest first.
#[derive(Debug, Clone, Default)]
pub(crate) struct BulkView(Arc<Vec<FileDir>>);

impl BulkFiles {
    /// The directories of every committed file: the cached ones, reloaded when the store
    /// holds a file newer than the newest cached (one short key scan).
    ///
    /// # Errors
    /// Store errors; a damaged file record.
    pub(crate) fn view(&self, store: &dyn Store) -> Result<BulkView> {
        let cached = read_lock(&self.files).clone();
        let after = cached.0.last().map_or(0, |f| f.id + 1);
        if store
            .keys(Tree::RegistryFiles, &after.to_be_bytes(), None, 1)?
            .is_empty()
        {
            return Ok(cached);
        }
        let mut files = Vec::new();
        for (_, v) in store.range(Tree::RegistryFiles, &[], None, usize::MAX)? {
            let rec: FileRecord = serde_json::from_slice(&v)
                .map_err(|e| Error::Storage(format!("a registry file record is damaged: {e}")))?;
            files.push(FileDir::from_record(&rec)?);
        }
        let files = BulkView(Arc::new(files));
        *write_lock(&self.files) = files.clone();
        Ok(files)
    }
}

impl BulkView {
    /// True when there is no committed file.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Runs `read` on segment `segment` of `tree` in `file`, parsed in place in the store's
    /// copy of it (a read needs one entry or a few keys of up to 32 KiB: nothing is copied
    /// but what `read` takes). `read` answers `None` when the segment does not hold together.
    fn with_segment<T>(
        store: &dyn Store,
        file: u64,
        tree: Tree,
        segment: usize,
        read: impl FnOnce(&Segment<'_>) -> Option<T>,
    ) -> Result<T> {
        let mut read = Some(read);
        let mut out = None;
        let found = store.read_with(
            Tree::RegistrySegments,
            &segment_key(file, tree, segment),
            &mut |bytes| {
                if let Some(read) = read.take() {
                    out = Segment::parse(bytes).and_then(|seg| read(&seg));
                }
            },
        )?;
        match out {
            Some(v) if found => Ok(v),
            _ => Err(damaged_segment(file, tree, segment)),
        }
    }

    /// The value of `key` in `tree` in the newest file holding it.
    ///
    /// # Errors
    /// Store errors; a damaged file record or segment.
    pub(crate) fn get(&self, store: &dyn Store, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>> {
        for f in self.0.iter().rev() {
            let Some(at) = f.tree(tree).and_then(|d| d.segment_of(key)) else {
                continue;
            };
            let value = Self::with_segment(store, f.id, tree, at, |seg| {
                let i = seg.lower_bound(key)?;
                if i < seg.len() {
                    let (k, v) = seg.entry(i)?;
                    if k == key {
                        return Some(Some(v.to_vec()));
                    }
                }
                Some(None)
            })?;
            if value.is_some() {
                return Ok(value);
            }
        }
        Ok(None)
    }

    /// Up to `limit` keys of `tree` with `from <= key` (and `key < to`), ascending, over every
    /// file (a key held by several files once).
    ///
    /// # Errors
    /// As [`BulkView::get`].
    pub(crate) fn keys(
        &self,
        store: &dyn Store,
        tree: Tree,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        for f in self.0.iter() {
            let Some(dir) = f.tree(tree) else { continue };
            let Some(start) = dir.start_for(from) else {
                continue;
            };
            let mut taken = 0;
            for at in start..dir.first.len() {
                if to.is_some_and(|to| dir.first[at].as_slice() >= to) {
                    break;
                }
                // Whether this file has given all it can: past `to`, or `limit` keys.
                let done = Self::with_segment(store, f.id, tree, at, |seg| {
                    for i in seg.lower_bound(from)?..seg.len() {
                        let (k, _) = seg.entry(i)?;
                        if to.is_some_and(|to| k >= to) || taken == limit {
                            return Some(true);
                        }
                        out.push(k.to_vec());
                        taken += 1;
                    }
                    Some(false)
                })?;
                if done {
                    break;
                }
            }
        }
        if self.0.len() > 1 {
            out.sort_unstable();
            out.dedup();
        }
        out.truncate(limit);
        Ok(out)
    }
}

/// The id of the newest committed file (0 when there is none).
fn last_committed(store: &dyn Store) -> Result<u64> {
    match store.last(Tree::RegistryFiles)? {
        Some((k, _)) => file_id(&k),
        None => Ok(0),
    }
}

/// Removes the segments of files numbered `from` and above (never committed). Returns how
/// many segments it removed.
fn remove_from(store: &dyn Store, from: u64) -> Result<u64> {
    let mut removed = 0;
    loop {
        let keys = store.keys(Tree::RegistrySegments, &from.to_be_bytes(), None, SWEEP)?;
        if keys.is_empty() {
            return Ok(removed);
        }
        let mut b = Batch::new();
        for k in &keys {
            b.delete(Tree::RegistrySegments, k.clone());
        }
        store.apply(&b)?;
        removed += keys.len() as u64;
    }
}

/// Removes the segments of a bulk import that never committed (a crash, a failed commit).
/// Returns how many segments it removed.
///
/// # Errors
/// Store errors.
pub(crate) fn recover(store: &dyn Store) -> Result<u64> {
    let next = last_committed(store)? + 1;
    remove_from(store, next)
}

/// A bulk file being written: segments staged, invisible until [`Stager::finish`]'s record
/// is committed.
#[derive(Debug)]
pub(crate) struct Stager<'a> {
    store: &'a dyn Store,
    id: u64,
    batch: Batch,
    pending: usize,
    entries: u64,
    trees: Vec<TreeDirRecord>,
    /// The tree whose entries are being pushed.
    open: Option<OpenTree>,
}

/// The tree a [`Stager`] is writing: its directory so far and the segment being filled.
#[derive(Debug)]
struct OpenTree {
    tree: Tree,
    dir: TreeDirRecord,
    /// The last key pushed (keys must ascend).
    last: Option<Vec<u8>>,
    /// The segment being filled: its entries' offsets (u32 BE) and the entries.
    offsets: Vec<u8>,
    body: Vec<u8>,
}

impl<'a> Stager<'a> {
    /// A new file after the last committed one; leftovers of an earlier attempt are removed
    /// first. The caller holds the registry's lock until the file is committed or dropped.
    ///
    /// # Errors
    /// Store errors.
    pub(crate) fn begin(store: &'a dyn Store) -> Result<Stager<'a>> {
        let id = last_committed(store)? + 1;
        remove_from(store, id)?;
        Ok(Stager {
            store,
            id,
            batch: Batch::new(),
            pending: 0,
            entries: 0,
            trees: Vec::new(),
            open: None,
        })
    }

    /// The file's id.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Writes `entries` of `tree` (strictly ascending keys) as segments.
    ///
    /// # Errors
    /// As [`Stager::push`].
    #[cfg(test)]
    pub(crate) fn tree(&mut self, tree: Tree, entries: Vec<(Vec<u8>, Vec<u8>)>) -> Result<()> {
        self.begin_tree(tree)?;
        for (k, v) in &entries {
            self.push(k, v)?;
        }
        self.end_tree()
    }

    /// Starts the entries of `tree` (the tree before, if any, ends first). Each tree is
    /// written once per file.
    ///
    /// # Errors
    /// Store errors.
    pub(crate) fn begin_tree(&mut self, tree: Tree) -> Result<()> {
        self.end_tree()?;
        self.open = Some(OpenTree {
            tree,
            dir: TreeDirRecord {
                tree: tree.name().to_owned(),
                entries: 0,
                first: Vec::new(),
                last: String::new(),
            },
            last: None,
            offsets: Vec::new(),
            body: Vec::with_capacity(SEGMENT_BYTES + SEGMENT_BYTES / 2),
        });
        Ok(())
    }

    /// Adds one entry to the tree begun last; its key must be above the one before. A
    /// segment is written once it holds [`SEGMENT_BYTES`] of entries.
    ///
    /// # Errors
    /// [`Error::Storage`] for no tree begun, a key not above the one before or longer than
    /// 64 KiB, a value over 4 GiB; store errors.
    pub(crate) fn push(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let id = self.id;
        let Some(open) = self.open.as_mut() else {
            return Err(Error::Storage(format!(
                "registry file {id}: an entry with no tree begun"
            )));
        };
        let tree = open.tree;
        if open.last.as_deref().is_some_and(|last| key <= last) {
            return Err(Error::Storage(format!(
                "registry file {id}: entries of {tree} out of order"
            )));
        }
        let (Ok(klen), Ok(vlen), Ok(at)) = (
            u16::try_from(key.len()),
            u32::try_from(value.len()),
            u32::try_from(open.body.len()),
        ) else {
            return Err(Error::Storage(format!(
                "registry file {id}: an entry of {tree} is too large for a segment"
            )));
        };
        if open.body.is_empty() {
            open.dir.first.push(hex::encode(key));
        }
        open.offsets.extend_from_slice(&at.to_be_bytes());
        open.body.extend_from_slice(&klen.to_be_bytes());
        open.body.extend_from_slice(key);
        open.body.extend_from_slice(&vlen.to_be_bytes());
        open.body.extend_from_slice(value);
        open.dir.entries += 1;
        match open.last.as_mut() {
            Some(last) => {
                last.clear();
                last.extend_from_slice(key);
            }
            None => open.last = Some(key.to_vec()),
        }
        if open.body.len() >= SEGMENT_BYTES {
            self.put_segment()?;
        }
        Ok(())
    }

    /// Ends the tree begun last: its last segment written, its directory kept for the record.
    ///
    /// # Errors
    /// Store errors.
    pub(crate) fn end_tree(&mut self) -> Result<()> {
        if self.open.as_ref().is_some_and(|o| !o.body.is_empty()) {
            self.put_segment()?;
        }
        if let Some(mut open) = self.open.take() {
            if let Some(last) = open.last {
                open.dir.last = hex::encode(last);
                self.entries += open.dir.entries;
                self.trees.push(open.dir);
            }
        }
        Ok(())
    }

    /// Writes the segment being filled (the store written every [`STAGE_SEGMENTS`]).
    fn put_segment(&mut self) -> Result<()> {
        let Some(open) = self.open.as_mut() else {
            return Ok(());
        };
        let count = open.offsets.len() / 4;
        let mut segment = Vec::with_capacity(5 + open.offsets.len() + open.body.len());
        segment.push(VERSION);
        segment.extend_from_slice(&(count as u32).to_be_bytes());
        segment.extend_from_slice(&open.offsets);
        segment.extend_from_slice(&open.body);
        open.offsets.clear();
        open.body.clear();
        let at = open.dir.first.len().saturating_sub(1);
        self.batch.put(
            Tree::RegistrySegments,
            segment_key(self.id, open.tree, at),
            segment,
        );
        self.pending += 1;
        if self.pending >= STAGE_SEGMENTS {
            self.store.write(&std::mem::take(&mut self.batch))?;
            self.pending = 0;
        }
        Ok(())
    }

    /// Writes what is left, flushes the store (every segment is durable before the record
    /// that makes it visible), and puts the commit record into `commit`, the import's batch.
    ///
    /// # Errors
    /// Store errors.
    pub(crate) fn finish(mut self, commit: &mut Batch, now_ms: u64, holders: u64) -> Result<()> {
        self.end_tree()?;
        if !self.batch.is_empty() {
            self.store.write(&self.batch)?;
        }
        self.store.flush()?;
        let record = FileRecord {
            id: self.id,
            created_ms: now_ms,
            holders,
            entries: self.entries,
            trees: std::mem::take(&mut self.trees),
        };
        let bytes = serde_json::to_vec(&record)
            .map_err(|e| Error::Storage(format!("encoding a registry file record: {e}")))?;
        commit.put(Tree::RegistryFiles, self.id.to_be_bytes().to_vec(), bytes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use vault::MemoryStore;

    /// Encodes sorted entries as one segment, all at once: the layout [`Stager::push`] builds
    /// entry by entry.
    fn encode_segment(entries: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        let body: usize = entries.iter().map(|(k, v)| 6 + k.len() + v.len()).sum();
        let mut out = Vec::with_capacity(5 + 4 * entries.len() + body);
        out.push(VERSION);
        out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
        let mut at = 0u32;
        for (k, v) in entries {
            out.extend_from_slice(&at.to_be_bytes());
            at += (6 + k.len() + v.len()) as u32;
        }
        for (k, v) in entries {
            out.extend_from_slice(&(k.len() as u16).to_be_bytes());
            out.extend_from_slice(k);
            out.extend_from_slice(&(v.len() as u32).to_be_bytes());
            out.extend_from_slice(v);
        }
        out
    }

    /// The segments [`Stager`] writes entry by entry are byte for byte those of the layout
    /// (the module docs), cut where an entry brings a segment to [`SEGMENT_BYTES`].
    #[test]
    fn segments_are_the_documented_layout() {
        let store = MemoryStore::new();
        let mut s = Stager::begin(&store).unwrap();
        let entries: Vec<(Vec<u8>, Vec<u8>)> = (0..500)
            .map(|i| (key(i), vec![i as u8; (i as usize * 7) % 300]))
            .collect();
        s.tree(Tree::Cards, entries.clone()).unwrap();
        let mut b = Batch::new();
        s.finish(&mut b, 1, 0).unwrap();
        store.apply(&b).unwrap();
        let mut want = Vec::new();
        let mut segment = Vec::new();
        let mut bytes = 0;
        for e in &entries {
            bytes += 6 + e.0.len() + e.1.len();
            segment.push(e.clone());
            if bytes >= SEGMENT_BYTES {
                want.push(encode_segment(&segment));
                segment.clear();
                bytes = 0;
            }
        }
        if !segment.is_empty() {
            want.push(encode_segment(&segment));
        }
        assert!(want.len() > 3, "{}", want.len());
        let got: Vec<Vec<u8>> = store
            .range(Tree::RegistrySegments, &[], None, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        assert_eq!(got, want);
        let record: FileRecord = serde_json::from_slice(
            &store
                .get(Tree::RegistryFiles, &1u64.to_be_bytes())
                .unwrap()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(record.entries, 500);
        assert_eq!(record.trees[0].first.len(), want.len());
        assert_eq!(record.trees[0].last, hex::encode(key(499)));
    }

    fn key(i: u32) -> Vec<u8> {
        format!("k{i:08}").into_bytes()
    }

    /// Commits a file of `entries` of [`Tree::Cards`] (sorted by the map).
    fn commit(store: &MemoryStore, entries: &BTreeMap<Vec<u8>, Vec<u8>>) -> u64 {
        let mut s = Stager::begin(store).unwrap();
        let id = s.id();
        s.tree(
            Tree::Cards,
            entries
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
        .unwrap();
        let mut b = Batch::new();
        s.finish(&mut b, 1, 0).unwrap();
        store.apply(&b).unwrap();
        id
    }

    #[test]
    fn files_read_like_a_sorted_map_newest_file_first() {
        let store = MemoryStore::new();
        let files = BulkFiles::default();
        let view = |store: &MemoryStore| files.view(store).unwrap();
        let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        // Three files with overlapping key ranges; values big enough for many segments.
        for (f, step) in [(1u32, 3u32), (2, 5), (3, 7)] {
            let entries: BTreeMap<Vec<u8>, Vec<u8>> = (0..3000)
                .filter(|i| i % step == 0)
                .map(|i| (key(i), format!("{f}:{i}:{}", "x".repeat(200)).into_bytes()))
                .collect();
            commit(&store, &entries);
            model.extend(entries);
        }
        for i in 0..3100 {
            assert_eq!(
                view(&store).get(&store, Tree::Cards, &key(i)).unwrap(),
                model.get(&key(i)).cloned(),
                "key {i}"
            );
        }
        assert_eq!(
            view(&store).get(&store, Tree::Holders, &key(0)).unwrap(),
            None
        );
        for (from, to, limit) in [
            (0, None, 10),
            (7, Some(900), 100_000),
            (2998, None, 5),
            (3500, None, 3),
            (11, Some(12), 4),
        ] {
            let want: Vec<Vec<u8>> = model
                .range(key(from)..)
                .map(|(k, _)| k.clone())
                .filter(|k| to.is_none_or(|t| *k < key(t)))
                .take(limit)
                .collect();
            let to_key = to.map(key);
            let got = view(&store)
                .keys(&store, Tree::Cards, &key(from), to_key.as_deref(), limit)
                .unwrap();
            assert_eq!(got, want, "from {from} to {to:?} limit {limit}");
        }
    }

    #[test]
    fn a_file_not_committed_is_invisible_and_removed() {
        let store = MemoryStore::new();
        let files = BulkFiles::default();
        let view = |store: &MemoryStore| files.view(store).unwrap();
        let one: BTreeMap<Vec<u8>, Vec<u8>> = (0..500).map(|i| (key(i), vec![1; 300])).collect();
        assert_eq!(commit(&store, &one), 1);
        // A second file staged, never committed (a crash before the commit batch): more than
        // one store write of segments.
        let mut s = Stager::begin(&store).unwrap();
        assert_eq!(s.id(), 2);
        s.tree(
            Tree::Cards,
            (500..4000).map(|i| (key(i), vec![2; 1000])).collect(),
        )
        .unwrap();
        drop(s);
        assert_eq!(
            view(&store).get(&store, Tree::Cards, &key(600)).unwrap(),
            None
        );
        assert_eq!(
            view(&store).get(&store, Tree::Cards, &key(10)).unwrap(),
            Some(vec![1; 300])
        );
        let staged = store
            .keys(
                Tree::RegistrySegments,
                &2u64.to_be_bytes(),
                None,
                usize::MAX,
            )
            .unwrap()
            .len();
        assert!(staged >= STAGE_SEGMENTS, "{staged}");
        assert_eq!(recover(&store).unwrap(), staged as u64);
        assert_eq!(recover(&store).unwrap(), 0);
        // The committed file is untouched; the next file takes the id again.
        assert_eq!(
            view(&store).get(&store, Tree::Cards, &key(499)).unwrap(),
            Some(vec![1; 300])
        );
        assert_eq!(Stager::begin(&store).unwrap().id(), 2);
    }

    #[test]
    fn entries_out_of_order_are_refused() {
        let store = MemoryStore::new();
        let mut s = Stager::begin(&store).unwrap();
        let err = s
            .tree(Tree::Cards, vec![(key(2), vec![]), (key(1), vec![])])
            .unwrap_err();
        assert!(err.to_string().contains("out of order"), "{err}");
    }

    #[test]
    fn a_damaged_segment_is_an_error_not_a_panic() {
        let store = MemoryStore::new();
        let one: BTreeMap<Vec<u8>, Vec<u8>> = (0..10).map(|i| (key(i), vec![1; 3])).collect();
        commit(&store, &one);
        let mut b = Batch::new();
        b.put(
            Tree::RegistrySegments,
            segment_key(1, Tree::Cards, 0),
            vec![VERSION, 0, 0, 0, 9, 1],
        );
        store.apply(&b).unwrap();
        let files = BulkFiles::default();
        let view = |store: &MemoryStore| files.view(store).unwrap();
        assert!(view(&store).get(&store, Tree::Cards, &key(3)).is_err());
        assert!(view(&store)
            .keys(&store, Tree::Cards, &key(0), None, 5)
            .is_err());
    }
}
