//! In-memory stores: [`MemoryStore`] for tests and models, [`FailingStore`] to inject write
//! and flush failures (over memory, or over another store such as sled).

use super::{Batch, Entries, Op, Store, Tree, Writes, WritesCell};
use crate::error::{Error, Result};
use crate::lock::lock;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

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

/// A store whose writes and flushes can be made to fail, to show that a failed write (for
/// example of an audit event) leaves nothing behind, and that a service over it answers with
/// an error, keeps running and recovers by itself once writes work again.
///
/// It wraps a [`MemoryStore`] ([`FailingStore::new`]) or any other store, such as a sled store
/// on disk ([`FailingStore::over`]). Faults, which add up:
///
/// - [`FailingStore::fail_writes`]: every write fails until turned off;
/// - [`FailingStore::fail_nth_write`]: the `n`th write from now fails, once;
/// - [`FailingStore::fail_randomly`]: each write fails with a probability, drawn from a seeded
///   generator (the same seed fails the same writes of the same sequence);
/// - [`FailingStore::fail_flushes`]: every flush fails until turned off.
///
/// A failed write is refused before it reaches the inner store: nothing of it is applied, as
/// when a disk refuses the write (no space, I/O error). A failed flush comes after the writes
/// it should have made durable: they stay applied and visible but are not reported durable,
/// as when the disk fails the sync; the next flush that works makes them durable. Either
/// failure is [`Error::Unwritable`], and makes [`Store::writes`] `Failing` until a flush
/// works. (A real sled store that meets an I/O error refuses every later write until it is
/// reopened, and says so: `Stuck`; this store models the gentler disk that comes back, to
/// test that the service comes back too.)
#[derive(Debug)]
pub struct FailingStore {
    inner: Arc<dyn Store>,
    fail_writes: AtomicBool,
    fail_flushes: AtomicBool,
    /// Writes left before the one that fails (`0`: none planned).
    nth_write: AtomicU64,
    /// Probability (`0.0..=1.0`) and generator state of random write failures.
    random: Mutex<Option<(f64, u64)>>,
    /// Writes and flushes refused so far.
    failures: AtomicU64,
    /// `Failing` from a refused write or flush until a flush works.
    writes: WritesCell,
}

impl Default for FailingStore {
    fn default() -> Self {
        FailingStore::over(Arc::new(MemoryStore::new()))
    }
}

impl FailingStore {
    /// A working store in memory.
    pub fn new() -> Self {
        FailingStore::default()
    }

    /// A working store over `inner` (for example a sled store, so that what a service
    /// acknowledged can be read back from disk after it stopped).
    pub fn over(inner: Arc<dyn Store>) -> Self {
        FailingStore {
            inner,
            fail_writes: AtomicBool::new(false),
            fail_flushes: AtomicBool::new(false),
            nth_write: AtomicU64::new(0),
            random: Mutex::new(None),
            failures: AtomicU64::new(0),
            writes: WritesCell::default(),
        }
    }

    /// From now on, every write (and so every `apply`) fails (or works again with `false`).
    pub fn fail_writes(&self, fail: bool) {
        self.fail_writes.store(fail, Ordering::SeqCst);
    }

    /// The `n`th write from now fails, once (`1`: the next one; `0`: none).
    pub fn fail_nth_write(&self, n: u64) {
        self.nth_write.store(n, Ordering::SeqCst);
    }

    /// From now on, each write fails with probability `p` (clamped to `0.0..=1.0`; `0.0`
    /// stops), drawn from a generator seeded with `seed`.
    pub fn fail_randomly(&self, p: f64, seed: u64) {
        let p = if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) };
        *lock(&self.random) = (p > 0.0).then_some((p, seed));
    }

    /// From now on, every flush fails (or works again with `false`); writes still apply.
    pub fn fail_flushes(&self, fail: bool) {
        self.fail_flushes.store(fail, Ordering::SeqCst);
    }

    /// Every fault off: the store works again.
    pub fn heal(&self) {
        self.fail_writes(false);
        self.fail_nth_write(0);
        self.fail_randomly(0.0, 0);
        self.fail_flushes(false);
    }

    /// How many writes and flushes were refused so far.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::SeqCst)
    }

    /// Whether this write is to fail; counts down the planned `n`th write and draws the
    /// random one.
    fn write_fails(&self) -> bool {
        let planned = self
            .nth_write
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok_and(|before| before == 1);
        let random = match lock(&self.random).as_mut() {
            Some((p, state)) => {
                *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                // 53 random bits of splitmix64 as a uniform draw in [0, 1).
                let draw = (splitmix(*state) >> 11) as f64 / (1u64 << 53) as f64;
                draw < *p
            }
            None => false,
        };
        planned || random || self.fail_writes.load(Ordering::SeqCst)
    }

    fn refused(&self, what: &str) -> Error {
        self.failures.fetch_add(1, Ordering::SeqCst);
        self.writes.set(Writes::Failing);
        Error::Unwritable(format!("injected {what} failure: no space left on device"))
    }
}

/// The splitmix64 finaliser: a well-mixed 64-bit value of `z`.
fn splitmix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Store for FailingStore {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.get(tree, key)
    }
    fn range(&self, tree: Tree, from: &[u8], to: Option<&[u8]>, limit: usize) -> Result<Entries> {
        self.inner.range(tree, from, to, limit)
    }
    fn keys(
        &self,
        tree: Tree,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>> {
        self.inner.keys(tree, from, to, limit)
    }
    fn last(&self, tree: Tree) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        self.inner.last(tree)
    }
    fn write(&self, batch: &Batch) -> Result<()> {
        if batch.is_empty() {
            return self.inner.write(batch);
        }
        if self.write_fails() {
            return Err(self.refused("write"));
        }
        self.inner.write(batch)
    }
    fn flush(&self) -> Result<()> {
        if self.fail_flushes.load(Ordering::SeqCst) {
            return Err(self.refused("flush"));
        }
        self.inner.flush()?;
        // Everything written so far is durable: writes work again.
        self.writes.set(Writes::Working);
        Ok(())
    }
    fn writes(&self) -> Writes {
        match (self.writes.get(), self.inner.writes()) {
            (_, Writes::Stuck) => Writes::Stuck,
            (Writes::Working, inner) => inner,
            (own, _) => own,
        }
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
        assert_eq!(s.writes(), Writes::Failing);
        s.fail_writes(false);
        crate::store::contract::run(&s);
        assert_eq!(s.writes(), Writes::Working, "a flush that works clears it");
    }

    fn one_put(k: &[u8]) -> Batch {
        let mut b = Batch::new();
        b.put(Tree::Meta, k.to_vec(), b"v".to_vec());
        b
    }

    #[test]
    fn the_nth_write_fails_once_and_nothing_of_it_lands() {
        let s = FailingStore::new();
        s.fail_nth_write(3);
        assert!(s.apply(&one_put(b"1")).is_ok());
        assert!(s.apply(&Batch::new()).is_ok(), "an empty batch is no write");
        assert!(s.apply(&one_put(b"2")).is_ok());
        let e = s.apply(&one_put(b"3")).unwrap_err();
        assert!(matches!(&e, Error::Unwritable(_)), "{e:?}");
        assert!(e.to_string().contains("injected write failure"), "{e}");
        assert_eq!(s.get(Tree::Meta, b"3").unwrap(), None);
        assert!(s.apply(&one_put(b"4")).is_ok());
        assert_eq!(s.failures(), 1);
    }

    #[test]
    fn random_failures_follow_their_seed_and_stop_when_healed() {
        let run = |seed: u64| -> Vec<bool> {
            let s = FailingStore::new();
            s.fail_randomly(0.5, seed);
            (0..64u8)
                .map(|i| s.apply(&one_put(&[i])).is_err())
                .collect()
        };
        let a = run(7);
        assert_eq!(a, run(7), "the same seed fails the same writes");
        assert_ne!(a, run(8));
        let failed = a.iter().filter(|f| **f).count();
        assert!(
            (8..=56).contains(&failed),
            "{failed} of 64 failed at p = 0.5"
        );

        let s = FailingStore::new();
        s.fail_randomly(1.0, 1);
        assert!(s.apply(&one_put(b"k")).is_err());
        s.heal();
        assert!(s.apply(&one_put(b"k")).is_ok());
    }

    #[test]
    fn a_failed_flush_leaves_the_write_visible_and_reports_it_not_durable() {
        let inner = Arc::new(MemoryStore::new());
        let s = FailingStore::over(inner.clone());
        s.fail_flushes(true);
        let e = s.apply(&one_put(b"k")).unwrap_err();
        assert!(matches!(&e, Error::Unwritable(_)), "{e:?}");
        assert!(e.to_string().contains("injected flush failure"), "{e}");
        assert_eq!(inner.get(Tree::Meta, b"k").unwrap(), Some(b"v".to_vec()));
        assert_eq!(s.writes(), Writes::Failing);
        s.fail_flushes(false);
        assert!(s.flush().is_ok());
        assert_eq!(s.writes(), Writes::Working);
    }
}
