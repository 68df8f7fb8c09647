//! The sled store: the only file that names sled.
//!
//! One sled database in a directory, one sled tree per [`Tree`]. Batches run as a sled
//! transaction over every tree they touch, then the database is flushed before `apply`
//! returns (sled writes are durable only after a flush). sled can panic on some damaged files;
//! opening catches that and reports the directory, so a damaged store is an error at start-up.

use super::{Batch, Entries, Op, Store, Tree};
use crate::error::{Error, Result};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
use std::path::{Path, PathBuf};

/// A [`Store`] on disk.
#[derive(Debug)]
pub struct SledStore {
    path: PathBuf,
    db: sled::Db,
    trees: Vec<sled::Tree>,
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
        let path = dir.to_path_buf();
        let opened = std::panic::catch_unwind(|| -> std::result::Result<_, sled::Error> {
            let db = sled::Config::new().path(dir).open()?;
            let trees = Tree::ALL
                .iter()
                .map(|t| db.open_tree(t.name()))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            Ok((db, trees))
        });
        match opened {
            Ok(Ok((db, trees))) => Ok(SledStore { path, db, trees }),
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

    fn tree(&self, tree: Tree) -> &sled::Tree {
        &self.trees[tree.index()]
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
        self.tree(tree)
            .get(key)
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| self.err(tree, "read failed", e))
    }

    fn range(&self, tree: Tree, from: &[u8], to: Option<&[u8]>, limit: usize) -> Result<Entries> {
        let t = self.tree(tree);
        let iter = match to {
            Some(to) => t.range(from..to),
            None => t.range(from..),
        };
        iter.take(limit)
            .map(|r| {
                r.map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .map_err(|e| self.err(tree, "scan failed", e))
            })
            .collect()
    }

    fn last(&self, tree: Tree) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        self.tree(tree)
            .last()
            .map(|o| o.map(|(k, v)| (k.to_vec(), v.to_vec())))
            .map_err(|e| self.err(tree, "read failed", e))
    }

    fn apply(&self, batch: &Batch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let result: std::result::Result<(), TransactionError<()>> =
            self.trees[..].transaction(|tx| {
                for (tree, op) in batch.ops() {
                    let t = &tx[tree.index()];
                    match op {
                        Op::Put(k, v) => {
                            t.insert(k.as_slice(), v.as_slice())?;
                        }
                        Op::Delete(k) => {
                            t.remove(k.as_slice())?;
                        }
                    }
                }
                Ok::<(), ConflictableTransactionError<()>>(())
            });
        result.map_err(|e| {
            Error::Storage(format!(
                "store {}: batch failed: {e:?}",
                self.path.display()
            ))
        })?;
        self.db.flush().map_err(|e| {
            Error::Storage(format!("store {}: flush failed: {e}", self.path.display()))
        })?;
        Ok(())
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
