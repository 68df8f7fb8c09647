//! The sled store: the only file that names sled.
//!
//! One sled database in a directory holding one sled tree, `plico`; each logical [`Tree`] is a
//! one-byte key prefix inside it. That makes every [`Batch`] a single `apply_batch` on one sled
//! tree — atomic, and measured here at about twice the rate of a sled transaction over several
//! trees (2,700 against 1,500 flushed batches a second). sled writes are durable only after a
//! flush: [`Store::apply`] flushes before it returns. sled can panic on some damaged files;
//! opening catches that and reports the directory, so a damaged store is an error at start-up.

use super::{Batch, Entries, Op, Store, Tree};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// A [`Store`] on disk.
#[derive(Debug)]
pub struct SledStore {
    path: PathBuf,
    db: sled::Db,
    tree: sled::Tree,
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
            Ok(Ok((db, tree))) => Ok(SledStore { path, db, tree }),
            Ok(Err(e)) => Err(storage(
                dir,
                "cannot open (is a server already using it?)",
                e,
            )),
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
        self.tree.apply_batch(b).map_err(|e| {
            Error::Storage(format!("store {}: batch failed: {e}", self.path.display()))
        })
    }

    fn flush(&self) -> Result<()> {
        self.db.flush().map(|_| ()).map_err(|e| {
            Error::Storage(format!("store {}: flush failed: {e}", self.path.display()))
        })
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
    fn a_second_open_of_the_same_directory_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let _first = SledStore::open(dir.path()).unwrap();
        let err = SledStore::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
    }
}
