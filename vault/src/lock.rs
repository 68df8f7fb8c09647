//! The one poison-tolerant way to take a lock ([`lock`], [`try_lock`], [`read_lock`],
//! [`write_lock`]), used
//! by the vault, the HSM simulator and the service.
//!
//! A lock is poisoned when a thread panicked while holding it. Everything plico guards is
//! changed in one assignment after the fallible work succeeded (or is `()` guarding a store
//! that has its own atomic batches), so the value behind a poisoned lock is consistent:
//! carrying on is right, and refusing would turn one panic into a lasting denial of service.
//! A guard whose value could be half-updated must not use these.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError};

/// Locks `m`, taking the guard over even if another thread panicked while holding it.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Locks `m` if no one holds it (`None` if someone does), poison-tolerant as [`lock`].
pub fn try_lock<T: ?Sized>(m: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    match m.try_lock() {
        Ok(g) => Some(g),
        Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

/// Read-locks `l`, poison-tolerant as [`lock`].
pub fn read_lock<T: ?Sized>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Write-locks `l`, poison-tolerant as [`lock`].
pub fn write_lock<T: ?Sized>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_poisoned_lock_is_taken_over_with_its_value() {
        let m = Arc::new(Mutex::new(7));
        let l = Arc::new(RwLock::new(8));
        let (m2, l2) = (m.clone(), l.clone());
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            let _w = l2.write().unwrap();
            panic!("poison both");
        })
        .join();
        assert!(m.is_poisoned() && l.is_poisoned());
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 8);
        let held = try_lock(&m).unwrap();
        assert!(try_lock(&m).is_none());
        drop(held);
        *write_lock(&l) += 1;
        assert_eq!(*read_lock(&l), 9);
    }
}
