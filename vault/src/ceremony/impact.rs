//! What a key operation will do, said before anyone approves it (issue 14).
//!
//! A proposal carries an [`Impact`], computed when it is proposed and shown again to the
//! approver: the cards of a shredded batch that lose their codes, counted by state (active
//! first) with a bounded list of serials; the dispatch jobs that would be cancelled; and every
//! key and term the operation rotates, rewraps, retires, replaces or destroys, with its KCV.
//!
//! At approval it is computed again: if the operation would now do *more* than the proposal
//! says (a key or term it does not name, more cards in a state, more jobs), the approval is
//! refused and the operation must be proposed again ([`Impact::widened`]). Doing less (a job
//! sent meanwhile) is allowed. The job retires only the terms the proposal names.
//!
//! Reading the cards of a batch walks its segments' serials (no record is decrypted) and looks
//! each serial up in the registry: one read a card, done at proposal, approval and destroy.

use super::CardRegistry;
use super::Ceremonies;
use crate::codes::segment::Segment;
use crate::codes::BatchId;
use crate::error::Result;
use crate::hsm::TermId;
use crate::kcv::Kcv;
use crate::store::Tree;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Most serials (and jobs) listed by name in an impact; the rest are counted.
pub const LISTED_MAX: usize = 20;

/// Segments read at a time while walking a batch's serials.
const SEGMENT_PAGE: usize = 8;

/// The state names of [`CardGroup::state`], in the order they are shown: the cards that still
/// need their codes first.
pub const CARD_ORDER: [&str; 5] = ["active", "suspended", "issued", "revoked", "not_registered"];

/// What a proposal will do. Persisted inside the proposal record: names are settled.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Impact {
    /// Cards whose codes the operation destroys, one group a state, in [`CARD_ORDER`]
    /// (only states that occur).
    #[serde(default)]
    pub cards: Vec<CardGroup>,
    /// Dispatch jobs that would be cancelled (not gone out yet: `counter`, `queued`, `failed`).
    #[serde(default)]
    pub jobs: JobGroup,
    /// Every key and term rotated, rewrapped, retired, replaced or destroyed, in order.
    #[serde(default)]
    pub keys: Vec<KeyChange>,
}

/// Cards of one state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardGroup {
    /// `active`, `suspended`, `issued`, `revoked`, or `not_registered` (codes with no card in
    /// the registry).
    pub state: String,
    /// How many.
    pub count: u64,
    /// The first [`LISTED_MAX`] serials, sorted.
    pub serials: Vec<String>,
}

/// Dispatch jobs, counted, the first few listed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobGroup {
    /// How many.
    pub count: u64,
    /// The first [`LISTED_MAX`].
    pub listed: Vec<JobRef>,
}

/// One dispatch job, as an impact names it (no contact, no code, no idempotency key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRef {
    /// Job id.
    pub job: u64,
    /// Card serial.
    pub serial: String,
    /// `A`, `B` or `whole`.
    pub part: String,
    /// Channel.
    pub channel: String,
    /// State now.
    pub state: String,
}

/// What happens to a key. The names are persisted: never rename them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyAction {
    /// Destroyed for good (a batch's data key).
    Destroy,
    /// A new term becomes active; this one becomes decrypt-only.
    Rotate,
    /// Data keys are rewrapped under the new term (inside the HSM).
    Rewrap,
    /// The term's KEK is destroyed.
    Retire,
    /// Replaced by a new one (a rekey's root key and share set).
    Replace,
}

impl fmt::Display for KeyAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyAction::Destroy => "destroy",
            KeyAction::Rotate => "rotate",
            KeyAction::Rewrap => "rewrap",
            KeyAction::Retire => "retire",
            KeyAction::Replace => "replace",
        })
    }
}

/// One key or term and what the operation does to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyChange {
    /// What happens to it.
    pub action: KeyAction,
    /// Which key: `data key dk000012`, `term 3`, `root key`, `share set …`, `data keys`.
    pub key: String,
    /// Its KCV, where it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kcv: Option<Kcv>,
    /// The term's number (rotate, retire).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<TermId>,
    /// How many keys (rewrap); not compared at approval (imports add data keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

impl KeyChange {
    pub(super) fn term(action: KeyAction, term: TermId, kcv: Kcv) -> KeyChange {
        KeyChange {
            action,
            key: term.to_string(),
            kcv: Some(kcv),
            term: Some(term),
            count: None,
        }
    }

    pub(super) fn other(action: KeyAction, key: String, kcv: Option<Kcv>) -> KeyChange {
        KeyChange {
            action,
            key,
            kcv,
            term: None,
            count: None,
        }
    }

    /// The same change, its count left out (what approval compares).
    fn compared(&self) -> KeyChange {
        KeyChange {
            count: None,
            ..self.clone()
        }
    }
}

impl fmt::Display for KeyChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.action, self.key)?;
        if let Some(n) = self.count {
            write!(f, " ({n})")?;
        }
        if let Some(k) = self.kcv {
            write!(f, " (KCV {k})")?;
        }
        Ok(())
    }
}

impl Impact {
    /// The cards that still need their codes: issued, active, suspended.
    pub fn live_cards(&self) -> u64 {
        self.cards
            .iter()
            .filter(|g| matches!(g.state.as_str(), "active" | "suspended" | "issued"))
            .map(|g| g.count)
            .sum()
    }

    /// Cards of `state`.
    pub fn count(&self, state: &str) -> u64 {
        self.cards
            .iter()
            .find(|g| g.state == state)
            .map_or(0, |g| g.count)
    }

    /// True if the operation retires `term` (the job retires no other).
    pub fn retires(&self, term: TermId) -> bool {
        self.keys
            .iter()
            .any(|k| k.action == KeyAction::Retire && k.term == Some(term))
    }

    /// What `self` (computed now) would do that `proposed` did not say, if anything: a key
    /// change it does not name, more cards in a state, more jobs cancelled.
    pub fn widened(&self, proposed: &Impact) -> Option<String> {
        let named: Vec<KeyChange> = proposed.keys.iter().map(KeyChange::compared).collect();
        let mut more = Vec::new();
        for k in &self.keys {
            if !named.contains(&k.compared()) {
                more.push(k.to_string());
            }
        }
        for g in &self.cards {
            let was = proposed.count(&g.state);
            if g.count > was {
                more.push(format!(
                    "{} {} card(s), {was} when proposed",
                    g.count, g.state
                ));
            }
        }
        if self.jobs.count > proposed.jobs.count {
            more.push(format!(
                "{} dispatch job(s) to cancel, {} when proposed",
                self.jobs.count, proposed.jobs.count
            ));
        }
        (!more.is_empty()).then(|| more.join("; "))
    }
}

/// Counts cards by state, keeping the first serials of each.
#[derive(Default)]
struct Tally {
    groups: Vec<CardGroup>,
}

impl Tally {
    fn add(&mut self, state: &str, serial: &str) {
        let g = match self.groups.iter_mut().position(|g| g.state == state) {
            Some(i) => &mut self.groups[i],
            None => {
                self.groups.push(CardGroup {
                    state: state.to_owned(),
                    ..CardGroup::default()
                });
                let last = self.groups.len() - 1;
                &mut self.groups[last]
            }
        };
        g.count += 1;
        g.serials.push(serial.to_owned());
        if g.serials.len() > LISTED_MAX * 4 {
            // Bounded: keep the smallest ones seen so far.
            g.serials.sort();
            g.serials.truncate(LISTED_MAX);
        }
    }

    fn finish(mut self) -> Vec<CardGroup> {
        for g in &mut self.groups {
            g.serials.sort();
            g.serials.truncate(LISTED_MAX);
        }
        self.groups.sort_by_key(|g| {
            CARD_ORDER
                .iter()
                .position(|s| *s == g.state)
                .unwrap_or(CARD_ORDER.len())
        });
        self.groups
    }
}

impl Ceremonies {
    /// Calls `f` with every serial of batch `batch`, segment by segment (none decrypted).
    pub(super) fn for_each_serial(
        &self,
        batch: BatchId,
        f: &mut dyn FnMut(&str) -> Result<()>,
    ) -> Result<()> {
        let to = batch.0.saturating_add(1).to_be_bytes();
        let mut from = batch.0.to_be_bytes().to_vec();
        loop {
            let page = self
                .store()
                .range(Tree::Segments, &from, Some(&to), SEGMENT_PAGE)?;
            for (_, bytes) in &page {
                let mut serials = Vec::new();
                Segment::parse(bytes)?.for_each_serial(|_, s| {
                    serials.push(String::from_utf8_lossy(s).into_owned());
                    true
                })?;
                for s in &serials {
                    f(s)?;
                }
            }
            match page.last() {
                Some((k, _)) if page.len() == SEGMENT_PAGE => {
                    from = k.clone();
                    from.push(0);
                }
                _ => return Ok(()),
            }
        }
    }

    /// The cards of committed batch `batch` by state, and the jobs a shred would cancel.
    /// Without a registry ([`Ceremonies::with_cards`]) every card is `not_registered`.
    pub(super) fn batch_cards(&self, batch: BatchId) -> Result<(Vec<CardGroup>, JobGroup)> {
        let mut tally = Tally::default();
        let mut jobs = JobGroup::default();
        let cards: Option<&dyn CardRegistry> = self.cards.as_deref();
        self.for_each_serial(batch, &mut |serial| {
            let standing = match cards {
                Some(c) => c.standing(serial)?,
                None => None,
            };
            let Some(standing) = standing else {
                tally.add("not_registered", serial);
                return Ok(());
            };
            tally.add(standing.as_str(), serial);
            if let Some(c) = cards {
                for j in c.cancellable_jobs(serial)? {
                    jobs.count += 1;
                    if jobs.listed.len() < LISTED_MAX {
                        jobs.listed.push(j);
                    }
                }
            }
            Ok(())
        })?;
        Ok((tally.finish(), jobs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(state: &str, count: u64) -> CardGroup {
        CardGroup {
            state: state.into(),
            count,
            serials: Vec::new(),
        }
    }

    #[test]
    fn approval_refuses_an_impact_that_grew_but_not_one_that_shrank() {
        let t1 = KeyChange::term(KeyAction::Retire, TermId(1), Kcv::from_bytes([1, 2, 3]));
        let mut rewrap = KeyChange::other(KeyAction::Rewrap, "data keys".into(), None);
        rewrap.count = Some(3);
        let proposed = Impact {
            cards: vec![group("active", 2), group("revoked", 1)],
            jobs: JobGroup {
                count: 2,
                listed: Vec::new(),
            },
            keys: vec![rewrap.clone(), t1.clone()],
        };
        let mut now = proposed.clone();
        now.keys[0].count = Some(9); // an import added data keys: not a widening
        now.cards = vec![group("active", 1), group("revoked", 2)];
        now.jobs.count = 1;
        assert_eq!(
            now.widened(&proposed).as_deref(),
            Some("2 revoked card(s), 1 when proposed")
        );
        now.cards = vec![group("active", 2)];
        assert_eq!(now.widened(&proposed), None);
        now.keys.push(KeyChange::term(
            KeyAction::Retire,
            TermId(2),
            Kcv::from_bytes([4, 5, 6]),
        ));
        now.jobs.count = 3;
        let why = now.widened(&proposed).unwrap();
        assert!(why.contains("retire term 2 (KCV 040506)"), "{why}");
        assert!(why.contains("3 dispatch job(s)"), "{why}");
        assert!(proposed.retires(TermId(1)) && !proposed.retires(TermId(2)));
        assert_eq!(proposed.live_cards(), 2);
    }

    #[test]
    fn groups_are_bounded_sorted_and_active_first() {
        let mut t = Tally::default();
        for i in (0..500).rev() {
            t.add("revoked", &format!("S{i:04}"));
        }
        t.add("active", "S9999");
        let g = t.finish();
        assert_eq!(g[0].state, "active");
        assert_eq!(g[1].count, 500);
        assert_eq!(g[1].serials.len(), LISTED_MAX);
        assert_eq!(g[1].serials[0], "S0000");
        assert_eq!(
            g[1].serials[LISTED_MAX - 1],
            format!("S{:04}", LISTED_MAX - 1)
        );
    }
}
