//! The sled store: the only file that names sled.
//!
//! One sled database in a directory holding one sled tree, `plico`; each logical [`Tree`] is a
//! one-byte key prefix inside it. That makes every [`Batch`] a single `apply_batch` on one sled
//! tree — atomic, and measured here at about twice the rate of a sled transaction over several
//! trees (2,700 against 1,500 flushed batches a second). sled writes are durable only after a
//! flush: [`Store::apply`] flushes before it returns. sled can panic on some damaged files;
//! opening catches that and reports the directory, so a damaged store is an error at start-up.
//! sled also trusts a damaged `conf` file (it only logs the bad checksum), so opening checks
//! that file's checksum first.
//!
//! # After a failed write
//!
//! sled stages a batch in memory and writes it to its log when flushed. When that write or its
//! sync fails (no space left, an I/O error), sled records the error once for the whole
//! database and refuses every later write and flush with it; only a new open clears it.
//! Reads go on working, and they still see the writes that were staged but never made
//! durable (they vanish at the next open). Reopening inside the running service would not be
//! safe: the service keeps state derived from what it wrote (the audit chain's head, counters)
//! that would then point past what is on disk. So a failed write or flush makes this store
//! [`Writes::Stuck`]: every change answers [`Error::Unwritable`], and the service reports
//! itself unhealthy until it is restarted (docs/operations.md, "A full or failing disk").

use super::{Batch, Entries, Op, Store, Tree, Writes, WritesCell};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// A [`Store`] on disk.
#[derive(Debug)]
pub struct SledStore {
    path: PathBuf,
    db: sled::Db,
    tree: sled::Tree,
    /// Whether writes work: [`Writes::Stuck`] from the first failed write or flush.
    writes: WritesCell,
}

/// The sled tree holding every logical tree. Persisted: never rename.
const SLED_TREE: &str = "plico";

fn prefixed(tree: Tree, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(tree.tag());
    k.extend_from_slice(key);
    k
}

/// The first key after every key of `tree`.
fn end_of(tree: Tree) -> Vec<u8> {
    vec![tree.tag() + 1]
}

fn storage(path: &Path, what: &str, e: impl std::fmt::Display) -> Error {
    Error::Storage(format!("store {}: {what}: {e}", path.display()))
}

/// The error of a failed open, saying which of the likely causes it is: another process
/// holding the directory, damaged files, or anything else sled reports.
fn open_error(dir: &Path, e: &sled::Error) -> Error {
    match e {
        sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
            storage(dir, "cannot open (is a server already using it?)", e)
        }
        sled::Error::Corruption { .. } => storage(dir, "cannot open: the store is damaged", e),
        _ => storage(dir, "cannot open", e),
    }
}

/// sled's file of storage parameters in a store's directory (segment size, compression,
/// version), followed by a CRC-32 of them.
const SLED_CONF: &str = "conf";

/// Checks sled's `conf` file before sled reads it. sled logs a checksum mismatch and carries
/// on with whatever the damaged file says (a wrong segment size makes it misread the whole
/// log), and takes a file cut to 8 bytes or fewer as no file at all (its defaults): either
/// would open a damaged store as if it were sound. A store without a `conf` yet is new.
///
/// # Errors
/// [`Error::Storage`] naming the file when it is unreadable, cut short or fails its checksum.
fn check_conf(dir: &Path) -> Result<()> {
    let path = dir.join(SLED_CONF);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(storage(&path, "cannot read", e)),
    };
    let damaged = |why: &str| storage(&path, "the store is damaged", why);
    let Some(split) = bytes.len().checked_sub(4).filter(|n| *n > 4) else {
        return Err(damaged("the file is cut short"));
    };
    let (params, crc) = bytes.split_at(split);
    // `split_at` left exactly four bytes.
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32(params) != stored {
        return Err(damaged("its checksum does not match its contents"));
    }
    Ok(())
}

/// CRC-32 (IEEE 802.3, reflected), as sled computes it; bit by bit, for a file of a few dozen
/// bytes.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for b in bytes {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

impl SledStore {
    /// Opens (or creates) the store in `dir`.
    ///
    /// # Errors
    /// [`Error::Storage`] naming the directory if it cannot be opened — locked by another
    /// process (a running server), damaged, or unreadable.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with_cache(dir, None)
    }

    /// As [`SledStore::open`], with sled's page cache set to `cache_bytes` (sled's default,
    /// 1 GiB, when `None`). A working set larger than the cache (e.g. a registry of a million
    /// holders read by a print run) makes every read rebuild pages from the log.
    ///
    /// # Errors
    /// As [`SledStore::open`].
    pub fn open_with_cache(dir: &Path, cache_bytes: Option<u64>) -> Result<Self> {
        // A store dropped a moment ago in this process may still be locked by one of sled's
        // I/O threads finishing its last write: wait briefly for the lock before calling the
        // directory busy (a running server holds it for good, so that still fails).
        let mut tries = 0;
        loop {
            match Self::open_once(dir, cache_bytes) {
                Err(e) if tries < 50 && e.to_string().contains("could not acquire lock") => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    fn open_once(dir: &Path, cache_bytes: Option<u64>) -> Result<Self> {
        check_conf(dir)?;
        let path = dir.to_path_buf();
        let opened = std::panic::catch_unwind(|| -> std::result::Result<_, sled::Error> {
            // No background flusher: every `apply` flushes itself, and without that thread the
            // directory lock is released as soon as the store is dropped (with it, a reopen in
            // the same process could find the lock still held for up to one flush period).
            let mut config = sled::Config::new().path(dir).flush_every_ms(None);
            if let Some(bytes) = cache_bytes {
                config = config.cache_capacity(bytes);
            }
            let db = config.open()?;
            let tree = db.open_tree(SLED_TREE)?;
            Ok((db, tree))
        });
        match opened {
            Ok(Ok((db, tree))) => Ok(SledStore {
                path,
                db,
                tree,
                writes: WritesCell::default(),
            }),
            Ok(Err(e)) => Err(open_error(dir, &e)),
            Err(_) => Err(storage(
                dir,
                "cannot open",
                "the store is damaged (sled panicked)",
            )),
        }
    }

    /// The directory of the store.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A write or flush that sled refused: from now on sled refuses every write (see the
    /// module docs), so the store is stuck.
    fn unwritable(&self, what: &str, e: sled::Error) -> Error {
        self.writes.set(Writes::Stuck);
        Error::Unwritable(format!("store {}: {what}: {e}", self.path.display()))
    }

    fn err(&self, tree: Tree, what: &str, e: impl std::fmt::Display) -> Error {
        Error::Storage(format!(
            "store {} tree {}: {what}: {e}",
            self.path.display(),
            tree
        ))
    }
}

impl Store for SledStore {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.tree
            .get(prefixed(tree, key))
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| self.err(tree, "read failed", e))
    }

    fn read_with(&self, tree: Tree, key: &[u8], read: &mut dyn FnMut(&[u8])) -> Result<bool> {
        // sled hands out its cached value (reference counted above 22 bytes): no copy.
        let value = self
            .tree
            .get(prefixed(tree, key))
            .map_err(|e| self.err(tree, "read failed", e))?;
        Ok(match value {
            Some(v) => {
                read(&v);
                true
            }
            None => false,
        })
    }

    fn range(&self, tree: Tree, from: &[u8], to: Option<&[u8]>, limit: usize) -> Result<Entries> {
        let start = prefixed(tree, from);
        let end = to.map_or_else(|| end_of(tree), |to| prefixed(tree, to));
        if start >= end {
            return Ok(Vec::new());
        }
        // Every key in the sled tree starts with its one-byte tree tag (see `prefixed`), so
        // `k[1..]` below cannot go out of bounds.
        self.tree
            .range(start..end)
            .take(limit)
            .map(|r| {
                r.map(|(k, v)| (k[1..].to_vec(), v.to_vec()))
                    .map_err(|e| self.err(tree, "scan failed", e))
            })
            .collect()
    }

    fn keys(
        &self,
        tree: Tree,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>> {
        let start = prefixed(tree, from);
        let end = to.map_or_else(|| end_of(tree), |to| prefixed(tree, to));
        if start >= end {
            return Ok(Vec::new());
        }
        self.tree
            .range(start..end)
            .keys()
            .take(limit)
            .map(|r| {
                r.map(|k| k[1..].to_vec())
                    .map_err(|e| self.err(tree, "scan failed", e))
            })
            .collect()
    }

    fn last(&self, tree: Tree) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        match self
            .tree
            .range(prefixed(tree, &[])..end_of(tree))
            .next_back()
        {
            None => Ok(None),
            Some(Ok((k, v))) => Ok(Some((k[1..].to_vec(), v.to_vec()))),
            Some(Err(e)) => Err(self.err(tree, "read failed", e)),
        }
    }

    fn write(&self, batch: &Batch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut b = sled::Batch::default();
        for (tree, op) in batch.ops() {
            match op {
                Op::Put(k, v) => b.insert(prefixed(*tree, k), v.as_slice()),
                Op::Delete(k) => b.remove(prefixed(*tree, k)),
            }
        }
        self.tree
            .apply_batch(b)
            .map_err(|e| self.unwritable("batch failed", e))
    }

    fn flush(&self) -> Result<()> {
        self.db
            .flush()
            .map(|_| ())
            .map_err(|e| self.unwritable("flush failed", e))
    }

    fn writes(&self) -> Writes {
        self.writes.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sled_store_meets_the_contract_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            crate::store::contract::run(&s);
        }
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.get(Tree::Meta, b"x").unwrap(), Some(b"2".to_vec()));
    }

    #[test]
    fn crc32_is_the_ieee_checksum() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn a_damaged_conf_file_is_refused_by_name_before_sled_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            crate::store::contract::run(&s);
        }
        let conf = dir.path().join(SLED_CONF);
        let sound = std::fs::read(&conf).unwrap();
        let text = String::from_utf8_lossy(&sound);
        assert!(text.starts_with("segment_size: "), "{text}");
        // A digit of the segment size changed (sled only logs the bad checksum), then the file
        // cut to 8 bytes (sled takes that for no file and uses its defaults).
        let mut flipped = sound.clone();
        flipped[14] = if flipped[14] == b'1' { b'2' } else { b'1' };
        for damaged in [flipped, sound[..8].to_vec()] {
            std::fs::write(&conf, &damaged).unwrap();
            let err = SledStore::open(dir.path()).unwrap_err().to_string();
            assert!(err.contains(&conf.display().to_string()), "{err}");
            assert!(err.contains("the store is damaged"), "{err}");
        }
        std::fs::write(&conf, &sound).unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.get(Tree::Meta, b"x").unwrap(), Some(b"2".to_vec()));
    }

    #[test]
    fn a_second_open_of_the_same_directory_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let _first = SledStore::open(dir.path()).unwrap();
        let err = SledStore::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
    }
}
