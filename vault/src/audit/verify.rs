//! Verification of the audit chain: load the marks → walk the events → check the end.
//!
//! [`verify_chain`] reads the checkpoints, the prune base, the head and the tail, then walks
//! every event from the base on, and finally checks that the chain does not end before any of
//! the marks (or the HSM's anchor) says it should. Each check is a small function returning
//! [`Walk`]: the first broken link stops the walk as a [`Problem`] made by [`broken`] ("broken
//! at event N: why"), a failing store stops it as an error. The report keeps what was counted
//! until then.
//!
//! What it does not do: repair anything, or lock the chain (the caller holds the chain lock,
//! so no append races the walk).

use super::{
    kind_mac, read_mark, seq_of, sha256, Damage, Event, Mark, MarkKind, Problem, VerifyReport,
    BASE_KEY, HEAD_KEY, SEALED_ACTIONS, TAIL_KEY, ZERO_HASH,
};
use crate::error::{Error, Result};
use crate::hsm::{AuditAnchor, KeyPurpose};
use crate::keyring::Keyring;
use crate::store::{seq_key, Store, Tree};
use aws_lc_rs::hmac;
use std::collections::{BTreeMap, VecDeque};

/// Events read from the store at a time.
const CHUNK: usize = 1024;

/// Why the walk stopped early.
enum Stop {
    /// The first broken link: reported, not an error.
    Broken(Problem),
    /// The store failed.
    Store(Error),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Stop::Store(e)
    }
}

/// The outcome of one check.
type Walk<T> = std::result::Result<T, Stop>;

/// The one constructor of "broken at event `seq`: `message`".
fn broken(damage: Damage, seq: u64, message: impl Into<String>) -> Stop {
    Stop::Broken(Problem {
        damage,
        seq,
        message: message.into(),
    })
}

/// Where the walk is.
struct Position {
    /// The sequence number the next stored event must have.
    expected: u64,
    /// The hash of the event before it (of the prune base, or zero, at the start).
    prev: [u8; 32],
    /// The hash of the event before that, once there is one.
    prev_prev: Option<[u8; 32]>,
}

/// The marks the events are checked against.
struct Marks {
    /// Checkpoints above the prune base, by event.
    checkpoints: BTreeMap<u64, Mark>,
    head: Option<Mark>,
    tail: Option<Mark>,
}

impl Marks {
    /// The event the head records (0: no head).
    fn head_seq(&self) -> u64 {
        self.head.as_ref().map_or(0, |h| h.seq)
    }
}

/// A walk over one chain.
struct Verifier<'a> {
    store: &'a dyn Store,
    key: Option<&'a hmac::Key>,
    anchor: Option<&'a AuditAnchor>,
    report: VerifyReport,
}

/// Walks the chain and reports the first broken link. The caller holds the chain lock, so no
/// append races the walk.
///
/// # Errors
/// Store errors only; damage is reported in the [`VerifyReport`].
pub(super) fn verify_chain(
    store: &dyn Store,
    key: Option<&hmac::Key>,
    anchor: Option<&AuditAnchor>,
) -> Result<VerifyReport> {
    let mut warnings = Vec::new();
    if key.is_none() {
        warnings.push(
            "the audit key is not loaded (hsm sealed): hashes were checked, MACs were not"
                .to_string(),
        );
    }
    let mut v = Verifier {
        store,
        key,
        anchor,
        report: VerifyReport {
            events: 0,
            checkpoints: 0,
            macs_checked: key.is_some(),
            pruned_through: 0,
            anchor_checked: false,
            problem: None,
            warnings,
        },
    };
    match v.run() {
        Ok(()) => {}
        Err(Stop::Broken(p)) => v.report.problem = Some(p),
        Err(Stop::Store(e)) => return Err(e),
    }
    Ok(v.report)
}

impl Verifier<'_> {
    /// Load → walk → check the end.
    fn run(&mut self) -> Walk<()> {
        let mut checkpoints = self.checkpoints()?;
        let mut at = self.base(&mut checkpoints)?;
        let (head, tail) = self.head_and_tail()?;
        let marks = Marks {
            checkpoints,
            head,
            tail,
        };
        self.walk(&mut at, &marks)?;
        self.check_end(&at, &marks)
    }

    // ---- load ------------------------------------------------------------------------------

    /// Every checkpoint: they are few, so they are loaded first and each is checked as the
    /// walk reaches it.
    fn checkpoints(&self) -> Walk<BTreeMap<u64, Mark>> {
        let mut checkpoints = BTreeMap::new();
        for (k, v) in self
            .store
            .range(Tree::AuditCheckpoints, &[], None, usize::MAX)?
        {
            let seq = seq_of(&k).unwrap_or(0);
            match serde_json::from_slice::<Mark>(&v) {
                Ok(m) if m.seq == seq => {
                    checkpoints.insert(seq, m);
                }
                _ => {
                    return Err(broken(
                        Damage::Unreadable,
                        seq,
                        format!("checkpoint at event {seq} is unreadable"),
                    ))
                }
            }
        }
        Ok(checkpoints)
    }

    /// Where the walk starts: after a prune, after its base (a MAC'd mark of the last pruned
    /// event), whose checkpoints are dropped; else at event 1.
    fn base(&mut self, checkpoints: &mut BTreeMap<u64, Mark>) -> Walk<Position> {
        let mut start = Position {
            expected: 1,
            prev: ZERO_HASH,
            prev_prev: None,
        };
        let Some(bytes) = self.store.get(Tree::Meta, BASE_KEY)? else {
            return Ok(start);
        };
        let Ok(base) = serde_json::from_slice::<Mark>(&bytes) else {
            return Err(broken(
                Damage::Unreadable,
                0,
                "the prune base is unreadable",
            ));
        };
        self.check_mac(MarkKind::Base, &base, "prune base")?;
        if hex::decode_to_slice(&base.hash, &mut start.prev).is_err() {
            return Err(broken(
                Damage::Unreadable,
                base.seq,
                "the prune base is unreadable",
            ));
        }
        start.expected = base.seq.saturating_add(1);
        checkpoints.retain(|&seq, _| seq > base.seq);
        self.report.pruned_through = base.seq;
        Ok(start)
    }

    /// The head (its MAC checked) and the tail.
    fn head_and_tail(&self) -> Walk<(Option<Mark>, Option<Mark>)> {
        let (head, tail) = match (
            read_mark(self.store, HEAD_KEY)?,
            read_mark(self.store, TAIL_KEY)?,
        ) {
            (Some(Err(())), _) | (_, Some(Err(()))) => {
                return Err(broken(
                    Damage::Unreadable,
                    0,
                    "the head or tail record is unreadable",
                ))
            }
            (h, t) => (h.and_then(|m| m.ok()), t.and_then(|m| m.ok())),
        };
        if let Some(h) = &head {
            self.check_mac(MarkKind::Head, h, "head")?;
        }
        Ok((head, tail))
    }

    /// A mark's MAC, when the key is loaded. Marks without a MAC are written only while
    /// sealed, and installing the key MACs the head at once: with the key installed, a bare
    /// mark was not written by plico.
    fn check_mac(&self, kind: MarkKind, mark: &Mark, what: &str) -> Walk<()> {
        let Some(key) = self.key else {
            return Ok(());
        };
        let seq = mark.seq;
        let Some(mac) = &mark.mac else {
            return Err(broken(
                Damage::BadMac,
                seq,
                format!("the {what} at event {seq} carries no MAC: it was not written by plico"),
            ));
        };
        let expected = kind_mac(key, kind, seq, &mark.hash);
        if aws_lc_rs::constant_time::verify_slices_are_equal(expected.as_bytes(), mac.as_bytes())
            .is_err()
        {
            return Err(broken(
                Damage::BadMac,
                seq,
                format!("the {what} MAC at event {seq} does not verify: the chain was rewritten"),
            ));
        }
        Ok(())
    }

    // ---- walk ------------------------------------------------------------------------------

    /// Every stored event from `at` on, in chunks, each checked by [`Self::event`] with a look
    /// at the one after it (to tell a reordering from a change).
    fn walk(&mut self, at: &mut Position, marks: &Marks) -> Walk<()> {
        let mut from = at.expected;
        let mut pending: VecDeque<(Vec<u8>, Vec<u8>)> = VecDeque::new();
        let mut done = false;
        loop {
            if pending.len() < 2 && !done {
                let chunk = self.store.range(Tree::Audit, &seq_key(from), None, CHUNK)?;
                match chunk.last() {
                    Some((k, _)) => from = seq_of(k).map_or(u64::MAX, |s| s.saturating_add(1)),
                    None => done = true,
                }
                if chunk.len() < CHUNK {
                    done = true;
                }
                pending.extend(chunk);
            }
            let Some((k, bytes)) = pending.pop_front() else {
                return Ok(());
            };
            let next = pending.front().map(|(_, b)| b.as_slice());
            self.event(at, seq_of(&k).unwrap_or(0), &bytes, next, marks)?;
        }
    }

    /// The event stored under `seq`: in place, readable, linked, numbered right, and matching
    /// every mark that records it. Then the walk moves past it.
    fn event(
        &mut self,
        at: &mut Position,
        seq: u64,
        bytes: &[u8],
        next: Option<&[u8]>,
        marks: &Marks,
    ) -> Walk<()> {
        check_in_place(seq, at.expected)?;
        let Ok(event) = serde_json::from_slice::<Event>(bytes) else {
            return Err(broken(
                Damage::Unreadable,
                seq,
                format!("event {seq} is not readable"),
            ));
        };
        check_link(&event, seq, at, next)?;
        if event.seq != seq {
            return Err(broken(
                Damage::Reordered,
                seq,
                format!("the event stored as {seq} says it is event {}", event.seq),
            ));
        }
        let hash = sha256(bytes);
        self.check_marks(&event, seq, &hex::encode(hash), marks)?;
        at.prev_prev = Some(at.prev);
        at.prev = hash;
        at.expected += 1;
        self.report.events += 1;
        Ok(())
    }

    /// The HSM's anchor, the head and a checkpoint, where they record this event; and an event
    /// past the last MAC'd head must be one appended while sealed.
    fn check_marks(&mut self, event: &Event, seq: u64, hash: &str, marks: &Marks) -> Walk<()> {
        if let Some(a) = self.anchor.filter(|a| a.seq == seq) {
            self.report.anchor_checked = true;
            check_recorded(seq, &a.hash, hash, "the hsm's anchor")?;
        }
        if let Some(h) = marks.head.as_ref().filter(|h| h.seq == seq) {
            check_recorded(seq, &h.hash, hash, "the head")?;
        }
        let head_seq = marks.head_seq();
        if seq > head_seq && !sealed_time_event(event) {
            return Err(broken(
                Damage::Inserted,
                seq,
                format!(
                    "event {seq} follows the last MAC'd head (event {head_seq}) but is not one \
                     appended while sealed: it was added without the audit key"
                ),
            ));
        }
        if let Some(cp) = marks.checkpoints.get(&seq) {
            self.report.checkpoints += 1;
            check_recorded(seq, &cp.hash, hash, "its checkpoint")?;
            self.check_mac(MarkKind::Chain, cp, "checkpoint")?;
        }
        Ok(())
    }

    // ---- check the end ---------------------------------------------------------------------

    /// The chain, whose last event is `at.expected - 1`, must not end before the anchor, a
    /// checkpoint, the audit key's creation, the head or the tail says it does.
    fn check_end(&self, at: &Position, marks: &Marks) -> Walk<()> {
        let last = at.expected - 1;
        self.check_anchor_reached(last)?;
        check_checkpoints_reached(last, &marks.checkpoints)?;
        if marks.head.is_none() {
            self.check_not_wiped(last)?;
        }
        check_head_reached(last, marks.head_seq())?;
        self.check_tail(last, &at.prev, marks.tail.as_ref())
    }

    fn check_anchor_reached(&self, last: u64) -> Walk<()> {
        match self
            .anchor
            .filter(|a| a.seq > last && a.seq > self.report.pruned_through)
        {
            Some(a) => Err(broken(
                Damage::Truncated,
                last + 1,
                format!(
                    "the chain ends at event {last} but the hsm's anchor records event {}: the \
                     store was truncated or an older copy of it was put back",
                    a.seq
                ),
            )),
            None => Ok(()),
        }
    }

    /// A chain with no head, no event and no prune: the audit key's creation is the chain's
    /// first event, so a store that holds the key but no event has been wiped.
    fn check_not_wiped(&self, last: u64) -> Walk<()> {
        if last == 0
            && self.report.pruned_through == 0
            && Keyring::load(self.store)?
                .newest(KeyPurpose::Audit)
                .is_some()
        {
            return Err(broken(
                Damage::Truncated,
                1,
                "the chain is empty but the store holds an audit key: its events were removed",
            ));
        }
        Ok(())
    }

    /// The tail must record the last event, with its hash.
    fn check_tail(&self, last: u64, last_hash: &[u8; 32], tail: Option<&Mark>) -> Walk<()> {
        match tail {
            None if last > self.report.pruned_through => Err(broken(
                Damage::Truncated,
                last,
                "the chain has no tail record",
            )),
            None => Ok(()),
            Some(t) if t.seq > last => Err(broken(
                Damage::Truncated,
                last + 1,
                format!(
                    "the chain ends at event {last} but its tail records event {}: events were \
                     removed from the end",
                    t.seq
                ),
            )),
            Some(t) if t.seq < last || t.hash != hex::encode(last_hash) => Err(broken(
                Damage::Changed,
                last,
                format!("event {last} does not match the chain's tail record"),
            )),
            Some(_) => Ok(()),
        }
    }
}

/// The event stored under `seq` must be the one expected: a gap is deleted events, a key
/// below is a stray record.
fn check_in_place(seq: u64, expected: u64) -> Walk<()> {
    if seq == expected {
        Ok(())
    } else if seq > expected {
        Err(broken(
            Damage::Missing,
            expected,
            if seq == expected + 1 {
                format!("event {expected} is missing (deleted)")
            } else {
                format!("events {expected} to {} are missing (deleted)", seq - 1)
            },
        ))
    } else {
        Err(broken(
            Damage::Unreadable,
            seq,
            format!("a record with a bad key sits before event {expected}"),
        ))
    }
}

/// The event must link to the one before it. If not, tell an insertion (it links past the
/// previous event), a reordering (it links to the next one) and a change apart.
fn check_link(event: &Event, seq: u64, at: &Position, next: Option<&[u8]>) -> Walk<()> {
    if event.prev == hex::encode(at.prev) {
        return Ok(());
    }
    let next_hash = next.map(|b| hex::encode(sha256(b)));
    Err(
        if at.prev_prev.is_some_and(|pp| event.prev == hex::encode(pp)) {
            broken(
                Damage::Inserted,
                seq - 1,
                format!("event {} was inserted: event {seq} links past it", seq - 1),
            )
        } else if next_hash.as_deref() == Some(event.prev.as_str()) {
            broken(
                Damage::Reordered,
                seq,
                format!("events {seq} and {} are out of order", seq + 1),
            )
        } else if seq == 1 {
            broken(
                Damage::Changed,
                seq,
                "event 1 does not start the chain: it was changed",
            )
        } else {
            broken(
                Damage::Changed,
                seq - 1,
                format!(
                    "event {} does not match the hash recorded in event {seq}: it was changed",
                    seq - 1
                ),
            )
        },
    )
}

/// The hash a mark (`what`) records for event `seq` must be the event's.
fn check_recorded(seq: u64, recorded: &str, hash: &str, what: &str) -> Walk<()> {
    if recorded == hash {
        Ok(())
    } else {
        Err(broken(
            Damage::Changed,
            seq,
            format!("event {seq} does not match {what}: it was changed"),
        ))
    }
}

/// No checkpoint may cover an event past the last one.
fn check_checkpoints_reached(last: u64, checkpoints: &BTreeMap<u64, Mark>) -> Walk<()> {
    match checkpoints.range(last + 1..).next() {
        Some((&cp_seq, _)) => Err(broken(
            Damage::Truncated,
            last + 1,
            format!(
                "the chain ends at event {last} but a checkpoint covers event {cp_seq}: events \
                 were removed from the end"
            ),
        )),
        None => Ok(()),
    }
}

/// The head may not record an event past the last one.
fn check_head_reached(last: u64, head_seq: u64) -> Walk<()> {
    if head_seq > last {
        return Err(broken(
            Damage::Truncated,
            last + 1,
            format!(
                "the chain ends at event {last} but the head records event {head_seq}: events \
                 were removed from the end"
            ),
        ));
    }
    Ok(())
}

/// True for an event that may follow the last MAC'd head: appended while sealed, one of
/// [`SEALED_ACTIONS`], with no personal data.
fn sealed_time_event(e: &Event) -> bool {
    e.sealed && e.personal.is_empty() && SEALED_ACTIONS.contains(&e.action.as_str())
}
