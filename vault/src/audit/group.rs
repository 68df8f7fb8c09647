//! Group commit of the audit chain, and the one writer of the HSM's anchor.
//!
//! ```text
//! appender: HMAC its personal fields ─▶ enqueue (batch, events) ─▶ wait for its seq
//! leader:   take the whole queue ─▶ chain every event in queue order into ONE store batch
//!           (each request's change first, then its events) ─▶ write ─▶ ONE flush
//!           ─▶ anchor a checkpoint that fell due ─▶ hand every appender its seq ─▶ next leader
//! ```
//!
//! Whoever finds no leader at work becomes the leader for everything queued at that moment; the
//! others wait. While a leader flushes, new requests queue up and the next leader writes them
//! all at once, so under load one write and one flush serve many appends. Nothing is weakened:
//! an append still returns only once its change and its event are flushed; the chain order is
//! the queue order, one request's events stay together, and a request's change lands in the
//! same atomic store batch as its events (a failing write stores none of the group, and every
//! request in it gets the error). The stored records are the ones a request-by-request commit
//! writes: the same events, the same checkpoints where one fell due, and the marks of the last
//! event (the marks of the earlier ones would be overwritten in the same batch).
//!
//! Anchoring ([`AuditLog::anchor_through`]) works the same way: one caller at a time writes the
//! anchor, and a caller that finds the anchor already at or past its event returns without a
//! token write, so concurrent imports share one.

use super::{AuditLog, Cursor, Prepared};
use crate::error::{Error, Result};
use crate::lock::lock;
use crate::store::{Batch, Op};
use std::collections::HashMap;
use std::sync::{Condvar, Mutex, PoisonError};

/// One audited change waiting for the leader: its store batch and its prepared events.
pub(super) struct Request {
    pub(super) batch: Batch,
    pub(super) events: Vec<Prepared>,
}

/// The queue of the group commit.
#[derive(Default)]
pub(super) struct Group {
    state: Mutex<State>,
    /// Signalled when a leader hands over and when results are in.
    turn: Condvar,
}

#[derive(Default)]
struct State {
    /// Requests not yet taken by a leader, in arrival order (ticket order).
    pending: Vec<(u64, Request)>,
    /// The ticket of the next request.
    next_ticket: u64,
    /// Whether a leader is at work.
    leading: bool,
    /// Each finished request's outcome, until its appender takes it.
    finished: HashMap<u64, Result<u64>>,
}

/// The same failure for every request of a group: the store's message, for each of them.
fn shared(e: &Error) -> Error {
    match e {
        Error::Storage(m) => Error::Storage(m.clone()),
        Error::Unwritable(m) => Error::Unwritable(m.clone()),
        Error::Sealed => Error::Sealed,
        other => Error::Storage(other.to_string()),
    }
}

/// Ends a leader's turn even if it unwinds: requests without an outcome get an error, the
/// leadership is given up and the waiters are woken, so no appender waits for ever.
struct Turn<'a> {
    group: &'a Group,
    tickets: Vec<u64>,
    outcomes: Vec<(u64, Result<u64>)>,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut state = lock(&self.group.state);
        for (ticket, outcome) in self.outcomes.drain(..) {
            state.finished.insert(ticket, outcome);
        }
        for ticket in &self.tickets {
            state.finished.entry(*ticket).or_insert_with(|| {
                Err(Error::Storage(
                    "the audit commit was interrupted; nothing is known to be stored".into(),
                ))
            });
        }
        state.leading = false;
        drop(state);
        self.group.turn.notify_all();
    }
}

impl AuditLog {
    /// Commits `request` with whatever else is queued, and returns its last event's sequence
    /// number once it is flushed (see the module docs).
    pub(super) fn group_commit(&self, request: Request) -> Result<u64> {
        let group = &self.group;
        let mut state = lock(&group.state);
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        state.pending.push((ticket, request));
        loop {
            if let Some(outcome) = state.finished.remove(&ticket) {
                return outcome;
            }
            if !state.leading {
                // Not finished and no leader: the request is still queued, lead.
                state.leading = true;
                let requests = std::mem::take(&mut state.pending);
                drop(state);
                self.lead(requests);
                state = lock(&group.state);
                continue;
            }
            state = group
                .turn
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// One leader's turn: writes `requests` in one batch, flushes, anchors a checkpoint that
    /// fell due, and records every request's outcome.
    fn lead(&self, requests: Vec<(u64, Request)>) {
        let mut turn = Turn {
            group: &self.group,
            tickets: requests.iter().map(|(t, _)| *t).collect(),
            outcomes: Vec::with_capacity(requests.len()),
        };
        let (tickets, requests): (Vec<u64>, Vec<Request>) = requests.into_iter().unzip();
        match self.write_group(requests) {
            Err(e) => {
                for t in tickets {
                    turn.outcomes.push((t, Err(shared(&e))));
                }
            }
            Ok((last, outcomes, checkpoint)) => {
                let flushed = match last {
                    Some(last) => self.make_durable(last),
                    None => Ok(()),
                };
                if flushed.is_ok() {
                    if let Some((seq, hash)) = checkpoint {
                        // The events are committed whatever happens here; a failed anchor only
                        // leaves the HSM's anchor at an older checkpoint.
                        let _ = self.anchor_at(seq, hash);
                    }
                }
                for (t, outcome) in tickets.into_iter().zip(outcomes) {
                    let outcome = match (&flushed, outcome) {
                        (Ok(()), o) => o,
                        (Err(e), Ok(_)) => Err(shared(e)),
                        (Err(_), Err(e)) => Err(e),
                    };
                    turn.outcomes.push((t, outcome));
                }
            }
        }
        drop(turn);
    }

    /// Chains the events of `requests` in order into one batch (each request's change first)
    /// and writes it. Returns the last sequence number written (`None`: nothing was), each
    /// request's outcome (its last event's sequence number, or why it was left out), and the
    /// newest checkpoint that fell due.
    #[allow(clippy::type_complexity)]
    fn write_group(
        &self,
        requests: Vec<Request>,
    ) -> Result<(Option<u64>, Vec<Result<u64>>, Option<(u64, String)>)> {
        let key = self.key();
        let mut chain = self.lock();
        let mut cursor = Cursor::at(&chain);
        let mut batch: Option<Batch> = None;
        let mut outcomes = Vec::with_capacity(requests.len());
        let mut last = None;
        for request in requests {
            if key.is_none() && request.events.iter().any(|e| !e.personal.is_empty()) {
                // Personal fields were HMAC'd under a key that is gone now (shut down):
                // such an event cannot be written as sealed.
                outcomes.push(Err(Error::Sealed));
                continue;
            }
            let batch = match batch.as_mut() {
                Some(b) => {
                    append(b, &request.batch);
                    b
                }
                None => batch.insert(request.batch),
            };
            let seq = self.chain_into(key.as_ref(), &mut cursor, batch, request.events)?;
            outcomes.push(Ok(seq));
            last = Some(seq);
        }
        let Some(mut batch) = batch else {
            return Ok((None, outcomes, None));
        };
        self.put_marks(key.as_ref(), &cursor, &mut batch)?;
        self.store.write(&batch)?;
        cursor.save(&mut chain);
        Ok((last, outcomes, cursor.checkpoint))
    }
}

/// Adds the writes of `from` to the end of `into`.
fn append(into: &mut Batch, from: &Batch) {
    for (tree, op) in from.ops() {
        match op {
            Op::Put(k, v) => into.put(*tree, k.clone(), v.clone()),
            Op::Delete(k) => into.delete(*tree, k.clone()),
        }
    }
}

/// Test doubles shared with the code vault's tests: a store and an HSM that are slow where a
/// disk and a token are, and count what they are asked.
#[cfg(test)]
pub(crate) mod testing {
    use crate::error::Result;
    use crate::hsm::{
        AuditAnchor, Hsm, HsmStatus, KeyPurpose, RekeyOutcome, ShareDelivery, TermId, TermInfo,
        UnsealProgress, WrappedKey,
    };
    use crate::hsm_double::DoubleHsm;
    use crate::secret::{DataKey, FreshDataKey};
    use crate::store::memory::MemoryStore;
    use crate::store::{Batch, Entries, Op, Store, Tree};
    use secrecy::SecretString;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    /// A memory store whose flush takes `flush_delay` (a disk's sync), counting writes and
    /// flushes, and the highest audit event written and flushed.
    #[derive(Debug, Default)]
    pub(crate) struct SlowDisk {
        inner: MemoryStore,
        pub(crate) flush_delay: Duration,
        pub(crate) writes: AtomicU64,
        pub(crate) flushes: AtomicU64,
        written: AtomicU64,
        pub(crate) flushed: AtomicU64,
    }

    impl SlowDisk {
        pub(crate) fn new(flush_delay: Duration) -> Self {
            SlowDisk {
                flush_delay,
                ..SlowDisk::default()
            }
        }
    }

    impl Store for SlowDisk {
        fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>> {
            self.inner.get(tree, key)
        }
        fn range(
            &self,
            tree: Tree,
            from: &[u8],
            to: Option<&[u8]>,
            limit: usize,
        ) -> Result<Entries> {
            self.inner.range(tree, from, to, limit)
        }
        fn last(&self, tree: Tree) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
            self.inner.last(tree)
        }
        fn write(&self, batch: &Batch) -> Result<()> {
            self.inner.write(batch)?;
            self.writes.fetch_add(1, Ordering::SeqCst);
            for (tree, op) in batch.ops() {
                if let (Tree::Audit, Op::Put(k, _)) = (tree, op) {
                    let seq = u64::from_be_bytes(k.as_slice().try_into().unwrap());
                    self.written.fetch_max(seq, Ordering::SeqCst);
                }
            }
            Ok(())
        }
        fn flush(&self) -> Result<()> {
            // What is written when the flush starts is durable when it ends.
            let written = self.written.load(Ordering::SeqCst);
            std::thread::sleep(self.flush_delay);
            self.flushes.fetch_add(1, Ordering::SeqCst);
            self.flushed.fetch_max(written, Ordering::SeqCst);
            Ok(())
        }
    }

    /// The unit tests' HSM whose anchor write takes `delay` (a token's object write), counting
    /// the anchor writes.
    #[derive(Debug)]
    pub(crate) struct SlowToken {
        inner: DoubleHsm,
        delay: Duration,
        pub(crate) anchor_writes: AtomicU64,
    }

    impl SlowToken {
        pub(crate) fn new(delay: Duration) -> Self {
            SlowToken {
                inner: DoubleHsm::new(),
                delay,
                anchor_writes: AtomicU64::new(0),
            }
        }

        /// The sequence number the token's anchor is at (0: none).
        pub(crate) fn anchored(&self) -> u64 {
            self.inner.audit_anchor().unwrap().map_or(0, |a| a.seq)
        }
    }

    impl Hsm for SlowToken {
        fn status(&self) -> HsmStatus {
            self.inner.status()
        }
        fn unseal(&self, share: &SecretString) -> Result<UnsealProgress> {
            self.inner.unseal(share)
        }
        fn reset_unseal(&self) {
            self.inner.reset_unseal()
        }
        fn seal(&self) {
            self.inner.seal()
        }
        fn generate_data_key(&self, purpose: KeyPurpose) -> Result<(FreshDataKey, WrappedKey)> {
            self.inner.generate_data_key(purpose)
        }
        fn unwrap_data_key(&self, wrapped: &WrappedKey) -> Result<DataKey> {
            self.inner.unwrap_data_key(wrapped)
        }
        fn rewrap_data_key(&self, wrapped: &WrappedKey) -> Result<WrappedKey> {
            self.inner.rewrap_data_key(wrapped)
        }
        fn rotate(&self) -> Result<TermInfo> {
            self.inner.rotate()
        }
        fn retire_term(&self, term: TermId) -> Result<()> {
            self.inner.retire_term(term)
        }
        fn rekey(
            &self,
            current: &[SecretString],
            shares: u8,
            threshold: u8,
            deliver: &mut ShareDelivery<'_>,
        ) -> Result<RekeyOutcome> {
            self.inner.rekey(current, shares, threshold, deliver)
        }
        fn audit_anchor(&self) -> Result<Option<AuditAnchor>> {
            self.inner.audit_anchor()
        }
        fn set_audit_anchor(&self, anchor: &AuditAnchor) -> Result<()> {
            std::thread::sleep(self.delay);
            self.anchor_writes.fetch_add(1, Ordering::SeqCst);
            self.inner.set_audit_anchor(anchor)
        }
        fn fill_random(&self, buf: &mut [u8]) -> Result<()> {
            self.inner.fill_random(buf)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{SlowDisk, SlowToken};
    use crate::audit::{AuditLog, NewEvent};
    use crate::secret::DataKey;
    use crate::store::{Batch, Store, Tree};
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::time::Duration;

    const THREADS: u64 = 16;
    const EACH: u64 = 8;

    /// Concurrent appends on a slow disk: each returns only once its event is flushed, the
    /// sequence numbers are 1..=n without a gap, the chain verifies, and the appends share
    /// store writes and flushes. Before the group commit every append was a store write of its
    /// own (writes == appends).
    #[test]
    fn concurrent_appends_share_writes_and_flushes_and_each_returns_flushed() {
        let disk = Arc::new(SlowDisk::new(Duration::from_millis(15)));
        let store: Arc<dyn Store> = disk.clone();
        let log = AuditLog::open(store, 1000).unwrap();
        log.set_key(Some(&DataKey::from_bytes([9; 32]))).unwrap();
        let writes_before = disk.writes.load(Ordering::SeqCst);
        let mut seqs: Vec<u64> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (log, disk) = (&log, &disk);
                    s.spawn(move || {
                        let mut mine = Vec::new();
                        for i in 0..EACH {
                            let mut change = Batch::new();
                            change.put(Tree::Accounts, format!("acc_{t}_{i}"), b"{}".to_vec());
                            let seq = log
                                .commit(
                                    change,
                                    NewEvent::new("account.create", format!("acc_{t}_{i}"))
                                        .personal("email", "a@example.it"),
                                )
                                .unwrap();
                            // Acknowledged means flushed.
                            assert!(disk.flushed.load(Ordering::SeqCst) >= seq, "{seq}");
                            mine.push(seq);
                        }
                        mine
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        seqs.sort_unstable();
        let n = THREADS * EACH;
        assert_eq!(seqs, (1..=n).collect::<Vec<_>>());
        let writes = disk.writes.load(Ordering::SeqCst) - writes_before;
        let flushes = disk.flushes.load(Ordering::SeqCst);
        assert!(writes <= n / 2, "{writes} store writes for {n} appends");
        assert!(flushes <= n / 2, "{flushes} flushes for {n} appends");
        let r = log.verify().unwrap();
        assert!(r.intact() && r.events == n, "{r:?}");
        // Each change landed with its event.
        for t in 0..THREADS {
            for i in 0..EACH {
                let k = format!("acc_{t}_{i}");
                assert!(log
                    .store
                    .get(Tree::Accounts, k.as_bytes())
                    .unwrap()
                    .is_some());
            }
        }
    }

    /// Concurrent callers that each need their event anchored share the token's writes, and
    /// none returns before the token's anchor covers its event.
    #[test]
    fn concurrent_anchor_requests_share_token_writes() {
        let token = Arc::new(SlowToken::new(Duration::from_millis(30)));
        let store: Arc<dyn Store> = Arc::new(crate::store::memory::MemoryStore::new());
        let log = AuditLog::open(store, 1000).unwrap();
        log.unlock(token.clone()).unwrap();
        let before = token.anchor_writes.load(Ordering::SeqCst);
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let (log, token) = (&log, &token);
                s.spawn(move || {
                    let seq = log
                        .append(NewEvent::new("batch.import", format!("batch_{t}")))
                        .unwrap();
                    log.anchor_through(seq).unwrap();
                    assert!(token.anchored() >= seq, "{seq}");
                });
            }
        });
        let writes = token.anchor_writes.load(Ordering::SeqCst) - before;
        assert!(
            writes < THREADS,
            "{writes} anchor writes for {THREADS} callers"
        );
        assert!(log.verify().unwrap().intact());
    }

    /// A failing write fails every request of its group and stores none of them; the chain
    /// goes on without a gap.
    #[test]
    fn a_failed_group_write_stores_nothing_and_the_chain_goes_on() {
        let failing = Arc::new(crate::store::memory::FailingStore::new());
        let store: Arc<dyn Store> = failing.clone();
        let log = AuditLog::open(store.clone(), 1000).unwrap();
        log.set_key(Some(&DataKey::from_bytes([9; 32]))).unwrap();
        failing.fail_writes(true);
        std::thread::scope(|s| {
            for t in 0..4 {
                let log = &log;
                s.spawn(move || {
                    let mut change = Batch::new();
                    change.put(Tree::Accounts, format!("acc_{t}"), b"{}".to_vec());
                    assert!(log
                        .commit(change, NewEvent::new("account.create", format!("acc_{t}")))
                        .is_err());
                });
            }
        });
        failing.fail_writes(false);
        for t in 0..4 {
            let k = format!("acc_{t}");
            assert!(store.get(Tree::Accounts, k.as_bytes()).unwrap().is_none());
        }
        assert_eq!(log.append(NewEvent::new("b", "2")).unwrap(), 1);
        assert!(log.verify().unwrap().intact());
    }
}
