//! In-memory stores: [`MemoryStore`] for tests and models, [`FailingStore`] to inject write
//! failures.

use super::{Batch, Entries, Op, Store, Tree};
use crate::error::{Error, Result};
use crate::lock::lock;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

type Trees = BTreeMap<Tree, BTreeMap<Vec<u8>, Vec<u8>>>;

/// A store held in a `BTreeMap` per tree. Not durable.
#[derive(Debug, Default)]
pub struct MemoryStore {
    trees: Mutex<Trees>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    /// A copy of everything stored now: a backup taken at this moment (tests keep one to show
    /// what a copy of the store taken before a change can and cannot yield).
    pub fn snapshot(&self) -> MemoryStore {
        MemoryStore {
            trees: Mutex::new(self.lock().clone()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Trees> {
        // A batch is applied under the lock without any step that can panic midway.
        lock(&self.trees)
    }
}

impl Store for MemoryStore {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.lock().get(&tree).and_then(|t| t.get(key).cloned()))
    }

    fn range(&self, tree: Tree, from: &[u8], to: Option<&[u8]>, limit: usize) -> Result<Entries> {
        let trees = self.lock();
        let Some(t) = trees.get(&tree) else {
            return Ok(Vec::new());
        };
        Ok(t.range(from.to_vec()..)
            .take_while(|(k, _)| to.is_none_or(|to| k.as_slice() < to))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn last(&self, tree: Tree) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        Ok(self
            .lock()
            .get(&tree)
            .and_then(|t| t.iter().next_back().map(|(k, v)| (k.clone(), v.clone()))))
    }

    fn write(&self, batch: &Batch) -> Result<()> {
        // In-memory writes cannot fail, and the lock is held throughout: readers see all of the
        // batch or none of it.
        let mut trees = self.lock();
        for (tree, op) in batch.ops() {
            let t = trees.entry(*tree).or_default();
            match op {
                Op::Put(k, v) => {
                    t.insert(k.clone(), v.clone());
                }
                Op::Delete(k) => {
                    t.remove(k);
                }
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }
}

/// A [`MemoryStore`] whose writes can be made to fail, to show that a failed write (for
/// example of an audit event) leaves nothing behind.
#[derive(Debug, Default)]
pub struct FailingStore {
    inner: MemoryStore,
    fail_writes: AtomicBool,
}

impl FailingStore {
    /// A working store.
    pub fn new() -> Self {
        FailingStore::default()
    }

    /// From now on, every `apply` fails (or works again with `false`).
    pub fn fail_writes(&self, fail: bool) {
        self.fail_writes.store(fail, Ordering::SeqCst);
    }
}

impl Store for FailingStore {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.get(tree, key)
    }
    fn range(&self, tree: Tree, from: &[u8], to: Option<&[u8]>, limit: usize) -> Result<Entries> {
        self.inner.range(tree, from, to, limit)
    }
    fn last(&self, tree: Tree) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        self.inner.last(tree)
    }
    fn write(&self, batch: &Batch) -> Result<()> {
        if self.fail_writes.load(Ordering::SeqCst) {
            return Err(Error::Storage("injected write failure".to_string()));
        }
        self.inner.write(batch)
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_store_meets_the_contract() {
        crate::store::contract::run(&MemoryStore::new());
    }

    #[test]
    fn failing_store_changes_nothing() {
        let s = FailingStore::new();
        s.fail_writes(true);
        let mut b = Batch::new();
        b.put(Tree::Meta, b"k".to_vec(), b"v".to_vec());
        assert!(s.apply(&b).is_err());
        assert_eq!(s.get(Tree::Meta, b"k").unwrap(), None);
        s.fail_writes(false);
        crate::store::contract::run(&s);
    }
}
