//! Key ceremonies under dual control (issue 8): officers own the key hierarchy.
//!
//! One officer **proposes** an operation ([`Operation`]: rotate, retire a term, rekey, shred a
//! batch, discard a quarantined batch) with a reason; a *different* officer **approves** it
//! within the window ([`CeremonyPolicy::window_ms`], 8 hours by default), and only then does it
//! run. A proposal not approved in time **lapses**. Proposal, approval, lapse, withdrawal and
//! outcome are audit events (`key.propose`, `key.approve`, `key.lapse`, `key.withdraw`,
//! `key.done`, `key.failed`, and on the way `key.rotate`, `key.shred`), each written in the
//! same store batch as the state change it records, naming the keys by KCV, never a secret.
//!
//! - [`proposal`]: the stored proposal and its states.
//! - [`job`]: rotate, shred and discard leave a durable job (rotate, rewrap in chunks, retire),
//!   run on a blocking thread by [`Ceremonies::run`] and carried on after a crash by
//!   [`Ceremonies::resume_jobs`]. Rotation costs one HSM call per data key, not per record.
//! - [`status`]: cryptoperiods and the [`KeyStatus`] report with its recommendations.
//! - [`impact`]: what an operation will do, stored with the proposal and shown to the
//!   approver (cards that lose their codes by state, jobs cancelled, every key and term
//!   rotated or destroyed), computed again at approval: an operation that would now do more
//!   than its proposal says is refused. An approver may name the KCV they expect
//!   ([`Ceremonies::approve_expecting`]); a mismatch changes nothing.
//!
//! A shred of a batch whose cards still need their codes (issued, active, suspended) is
//! refused unless proposed with `force`; then, in the destroying write, those cards are
//! revoked with reason `codes_destroyed` and their unsent dispatch jobs cancelled (through the
//! registry given by [`Ceremonies::with_cards`], a [`CardRegistry`]).
//!
//! Retire and rekey are done within the approval call: the HSM first, then the approval and
//! the outcome in one batch. If the HSM refuses (a share mistyped, the HSM sealed, a term still
//! in use) nothing is written and the proposal stays open for another try within its window.
//!
//! Checks are made when proposing (unknown term, active term, unknown batch or batch in the
//! wrong state, impossible share counts: refused, nothing written) and again when approving,
//! against the state at that moment.
//!
//! What it does not do: decide who may call it over HTTP (the route table does; the role is
//! checked here again), store or log a share, or create a proposal by itself (the status report
//! only recommends).
//!
//! Locks, in order: the proposal lock (one change to proposals at a time), the job runner lock
//! (one thread runs the job), the registry's ops lock (a shred's destroy phase, so that no
//! card of the batch changes until its write), then the code vault's commit and keyring locks.

pub mod cards;
pub mod impact;
pub mod job;
pub mod proposal;
pub mod status;

pub use cards::{CardRegistry, CardStanding, RegistryGuard};
pub use impact::{CardGroup, Impact, JobGroup, JobRef, KeyAction, KeyChange};
pub use job::{JobPhase, JobState, KeyJob};
pub use proposal::{Operation, Proposal, ProposalId, ProposalState};
pub use status::{DataKeyStatus, KeyPolicy, KeyStatus, TermStatus};

use crate::account::{Actor, Role};
use crate::audit::{AuditLog, NewEvent, Outcome};
use crate::codes::{BatchState, CodeVault};
use crate::error::{Denial, Error, Missing, Quorum, Refusal, Result, Subject};
use crate::hsm::{Hsm, ShareDelivery, TermState};
use crate::kcv::Kcv;
use crate::keyring::Keyring;
use crate::lock::lock;
use crate::store::{Batch, Store, Tree};
use job::active_term;
use secrecy::SecretString;
use std::sync::{Arc, Mutex};

/// Default approval window: 8 hours.
pub const DEFAULT_WINDOW_MS: u64 = 8 * 60 * 60 * 1000;
/// Default data keys rewrapped per chunk of a job (one keyring write each).
pub const DEFAULT_CHUNK: usize = 64;

/// How ceremonies are run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CeremonyPolicy {
    /// How long a proposal waits for approval (ms).
    pub window_ms: u64,
    /// Data keys rewrapped per chunk.
    pub chunk: usize,
    /// Allows a rekey to a threshold of 1 (`--dev` only): one person could then unseal.
    pub insecure_allow_single_share: bool,
    /// Cryptoperiods and limits for the status report.
    pub keys: KeyPolicy,
}

impl Default for CeremonyPolicy {
    fn default() -> Self {
        CeremonyPolicy {
            window_ms: DEFAULT_WINDOW_MS,
            chunk: DEFAULT_CHUNK,
            insecure_allow_single_share: false,
            keys: KeyPolicy::default(),
        }
    }
}

/// The key ceremonies of one vault. One per process.
pub struct Ceremonies {
    codes: Arc<CodeVault>,
    audit: Arc<AuditLog>,
    /// The card registry: a shred revokes the cards that lose their codes and cancels their
    /// jobs. `None` only for a vault without cards (benches, some tests).
    cards: Option<Arc<dyn CardRegistry>>,
    policy: CeremonyPolicy,
    /// Serialises changes to proposals (ids, approvals, lapses).
    proposals: Mutex<()>,
    /// Held by the one thread running the job.
    runner: Mutex<()>,
}

impl std::fmt::Debug for Ceremonies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ceremonies")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// What checking an operation found: the KCV of the key it names, details for the event, and
/// what it will do.
struct Named {
    kcv: Option<Kcv>,
    details: Vec<(&'static str, String)>,
    impact: Impact,
}

impl Ceremonies {
    /// Ceremonies over the code vault's store, audited in `audit`.
    pub fn new(codes: Arc<CodeVault>, audit: Arc<AuditLog>, policy: CeremonyPolicy) -> Self {
        Ceremonies {
            codes,
            audit,
            cards: None,
            policy,
            proposals: Mutex::new(()),
            runner: Mutex::new(()),
        }
    }

    /// The same ceremonies with the card registry `cards` (the one the service uses, so that
    /// its lock serialises card changes): a shred then counts, revokes and cancels per card.
    #[must_use]
    pub fn with_cards(mut self, cards: Arc<dyn CardRegistry>) -> Self {
        self.cards = Some(cards);
        self
    }

    fn store(&self) -> &Arc<dyn Store> {
        self.codes.store()
    }

    /// The policy in force.
    pub fn policy(&self) -> &CeremonyPolicy {
        &self.policy
    }

    /// Proposes `op` for `reason`, by `actor`, at `now_ms`: checks the actor is an officer and
    /// the operation possible now, then stores the open proposal with its `key.propose` event.
    ///
    /// # Errors
    /// [`Error::Forbidden`] for a role other than officer; [`Error::Invalid`] for a bad reason
    /// or share counts; [`Error::Missing`] for an unknown term or batch; [`Error::Refusal`] or
    /// [`Error::WrongState`] for an operation the current state does not allow. Nothing is
    /// written then. Store and audit errors.
    pub fn propose(
        &self,
        hsm: &dyn Hsm,
        actor: &Actor,
        op: Operation,
        reason: &str,
        now_ms: u64,
    ) -> Result<Proposal> {
        officer(actor, "propose")?;
        let reason = proposal::check_reason(reason)?;
        let _p = lock(&self.proposals);
        let named = self.check(hsm, &op, true)?;
        let id = match self.store().last(Tree::KeyProposals)? {
            Some((k, _)) => <[u8; 8]>::try_from(k.as_slice())
                .map(|a| u64::from_be_bytes(a) + 1)
                .map_err(|_| Error::Storage("a key proposal id is damaged".into()))?,
            None => 1,
        };
        let p = Proposal {
            id: ProposalId(id),
            op,
            reason: reason.clone(),
            proposer: actor.id.clone(),
            proposed_ms: now_ms,
            expires_ms: now_ms.saturating_add(self.policy.window_ms),
            state: ProposalState::Open,
            kcv: named.kcv,
            approver: None,
            decided_ms: None,
            finished_ms: None,
            outcome: None,
            impact: Some(named.impact),
        };
        let mut b = Batch::new();
        p.save_into(&mut b)?;
        let mut event = self
            .event(actor, "key.propose", &p)
            .detail("reason", reason)
            .detail("expires_ms", p.expires_ms.to_string());
        for (k, v) in named.details {
            event = event.detail(k, v);
        }
        self.audit.commit(b, event)?;
        Ok(p)
    }

    /// Approves an open proposal other than a rekey ([`Ceremonies::approve_rekey`]) and
    /// carries it out: a retire now; a rotate, shred or discard as a job whose first phases
    /// (destroy, rotate) run now — the service then runs the rest with [`Ceremonies::run`] on a
    /// blocking thread. Returns the proposal as it then stands.
    ///
    /// # Errors
    /// [`Error::Forbidden`] for a non-officer or the proposer; [`Error::Refusal`] for a lapsed
    /// proposal (marked lapsed, with its `key.lapse` event), while another job is unfinished,
    /// or for a term that still wraps data keys (naming how many); [`Error::WrongState`] for a
    /// proposal no longer open; [`Error::Sealed`]; HSM, store and audit errors.
    pub fn approve(
        &self,
        hsm: &dyn Hsm,
        actor: &Actor,
        id: ProposalId,
        now_ms: u64,
    ) -> Result<Proposal> {
        self.approve_expecting(hsm, actor, id, None, now_ms)
    }

    /// [`Ceremonies::approve`], refused unless the KCV of the key the proposal names is
    /// `expect_kcv` (when given): the approver's own reading of the ceremony log.
    ///
    /// # Errors
    /// As [`Ceremonies::approve`]; [`Error::Refusal`] naming both KCVs on a mismatch (nothing
    /// written).
    pub fn approve_expecting(
        &self,
        hsm: &dyn Hsm,
        actor: &Actor,
        id: ProposalId,
        expect_kcv: Option<Kcv>,
        now_ms: u64,
    ) -> Result<Proposal> {
        let _p = lock(&self.proposals);
        let p = self.approvable(actor, id, expect_kcv, now_ms)?;
        if matches!(p.op, Operation::Rekey { .. }) {
            return Err(Error::Invalid(format!(
                "{id} is a rekey: approve it with a quorum of the current shares"
            )));
        }
        if hsm.status().sealed {
            return Err(Error::Sealed);
        }
        if let Operation::Retire { term } = p.op {
            return self.approve_retire(hsm, actor, p, term, now_ms);
        }
        // A job: rotate, shred or discard.
        if let Some(j) = self.jobs()?.into_iter().find(KeyJob::unfinished) {
            return Err(Refusal::JobUnfinished {
                proposal: j.id,
                op: j.op.to_string(),
            }
            .into());
        }
        self.recheck(hsm, &p)?;
        let active = active_term(&hsm.status())?;
        let mut approved = p.clone();
        approved.state = ProposalState::Running;
        approved.approver = Some(actor.id.clone());
        approved.decided_ms = Some(now_ms);
        let job = KeyJob::start(&approved, active.id, now_ms);
        let mut b = Batch::new();
        approved.save_into(&mut b)?;
        job.save_into(&mut b)?;
        let event = self
            .event(actor, "key.approve", &approved)
            .detail("proposer", approved.proposer.clone())
            .detail("active_term", active.id.0.to_string())
            .detail("active_kcv", active.kcv.to_string());
        self.audit.commit(b, event)?;
        drop(_p);
        // The quick phases now (destroy, rotate); an error leaves the job to be carried on by
        // `run` or `resume_jobs`, and is shown in the job's `last_error`.
        let _ = self.step(hsm, 0, &mut |_| {});
        self.get(id)?
            .ok_or_else(|| Error::Storage(format!("{id} vanished from the store")))
    }

    fn approve_retire(
        &self,
        hsm: &dyn Hsm,
        actor: &Actor,
        p: Proposal,
        term: crate::hsm::TermId,
        now_ms: u64,
    ) -> Result<Proposal> {
        // Under the keyring lock, so no data key can be wrapped under the term between the
        // check and the destruction (decrypt-only terms wrap nothing new anyway).
        let _keys = self.codes.keyring_lock();
        self.recheck(hsm, &p)?;
        let ring = Keyring::load(&**self.store())?;
        // Audited before the HSM acts: a crash between the two leaves the attempt on record.
        self.audit.append(self.event(actor, "key.attempt", &p))?;
        if let Err(e) = ring.retire_term(hsm, term) {
            return Err(self.attempt_failed(actor, &p, e));
        }
        let kcv = p.kcv.map(|k| k.to_string()).unwrap_or_default();
        let outcome = format!("{term} (KCV {kcv}) destroyed");
        self.record_immediate(
            actor,
            p,
            now_ms,
            outcome,
            vec![("term", term.0.to_string()), ("kcv", kcv)],
        )
    }

    /// Approves an open rekey proposal with `current` shares (a quorum of the current set,
    /// brought by the custodians to the approving officer) and carries it out: the HSM makes a
    /// new root key and share set, hands the new shares to `deliver` (which must store or give
    /// them to the custodians durably before returning `Ok`), and only then commits. The shares
    /// are never stored, logged or audited: the `key.done` event names the new share set, its
    /// threshold and count, and the new root KCV.
    ///
    /// # Errors
    /// As [`Ceremonies::approve`]; [`Error::Share`] if `current` is not a quorum of the current
    /// set (nothing written; the proposal stays open); whatever `deliver` returns (the rekey is
    /// aborted, the old shares stay valid, the proposal stays open).
    pub fn approve_rekey(
        &self,
        hsm: &dyn Hsm,
        actor: &Actor,
        id: ProposalId,
        current: &[SecretString],
        deliver: &mut ShareDelivery<'_>,
        now_ms: u64,
    ) -> Result<Proposal> {
        self.approve_rekey_expecting(hsm, actor, id, current, deliver, None, now_ms)
    }

    /// [`Ceremonies::approve_rekey`], refused unless the root key's KCV is `expect_kcv` (when
    /// given), before any share is looked at.
    ///
    /// # Errors
    /// As [`Ceremonies::approve_rekey`]; [`Error::Refusal`] naming both KCVs on a mismatch.
    #[allow(clippy::too_many_arguments)]
    pub fn approve_rekey_expecting(
        &self,
        hsm: &dyn Hsm,
        actor: &Actor,
        id: ProposalId,
        current: &[SecretString],
        deliver: &mut ShareDelivery<'_>,
        expect_kcv: Option<Kcv>,
        now_ms: u64,
    ) -> Result<Proposal> {
        let _p = lock(&self.proposals);
        let p = self.approvable(actor, id, expect_kcv, now_ms)?;
        let Operation::Rekey { shares, threshold } = p.op else {
            return Err(Error::Invalid(format!("{id} is not a rekey")));
        };
        if hsm.status().sealed {
            return Err(Error::Sealed);
        }
        self.recheck(hsm, &p)?;
        let before = hsm.status();
        // Audited before the HSM acts: a crash between the two leaves the attempt on record.
        self.audit.append(self.event(actor, "key.attempt", &p))?;
        let out = match hsm.rekey(current, shares, threshold, deliver) {
            Ok(out) => out,
            Err(e) => return Err(self.attempt_failed(actor, &p, e)),
        };
        let outcome = format!(
            "new share set {}: {} of {} shares; root key KCV {} (was {})",
            out.share_set, out.threshold, out.shares, out.root_kcv, before.root_kcv
        );
        self.record_immediate(
            actor,
            p,
            now_ms,
            outcome,
            vec![
                ("share_set", out.share_set.clone()),
                ("previous_share_set", before.share_set.clone()),
                ("shares", out.shares.to_string()),
                ("threshold", out.threshold.to_string()),
                ("root_kcv", out.root_kcv.to_string()),
                ("previous_root_kcv", before.root_kcv.to_string()),
            ],
        )
    }

    /// Audits an approval whose HSM call failed (`key.failed`, the proposal stays open for
    /// another try within its window) and gives back the error. A sealed HSM is not an attempt.
    fn attempt_failed(&self, actor: &Actor, p: &Proposal, e: Error) -> Error {
        if !matches!(e, Error::Sealed) {
            let event = self
                .event(actor, "key.failed", p)
                .outcome(Outcome::Failed)
                .detail("error", e.to_string())
                .detail("proposal_state", p.state.to_string());
            if let Err(audit) = self.audit.append(event) {
                return audit;
            }
        }
        e
    }

    /// Writes the approval and the outcome of an operation done within the approval call.
    fn record_immediate(
        &self,
        actor: &Actor,
        p: Proposal,
        now_ms: u64,
        outcome: String,
        details: Vec<(&'static str, String)>,
    ) -> Result<Proposal> {
        let mut done = p;
        done.state = ProposalState::Done;
        done.approver = Some(actor.id.clone());
        done.decided_ms = Some(now_ms);
        done.finished_ms = Some(now_ms);
        done.outcome = Some(outcome.clone());
        let mut b = Batch::new();
        done.save_into(&mut b)?;
        let approve = self
            .event(actor, "key.approve", &done)
            .detail("proposer", done.proposer.clone());
        let mut result = self
            .event(actor, "key.done", &done)
            .detail("outcome", outcome);
        for (k, v) in details {
            result = result.detail(k, v);
        }
        self.audit.commit_all(b, vec![approve, result])?;
        Ok(done)
    }

    /// Withdraws an open proposal (any officer may: withdrawing only ever stops an operation),
    /// with its `key.withdraw` event.
    ///
    /// # Errors
    /// [`Error::Forbidden`] for a non-officer; [`Error::Missing`]; [`Error::WrongState`] for a
    /// proposal no longer open; store and audit errors.
    pub fn withdraw(&self, actor: &Actor, id: ProposalId, now_ms: u64) -> Result<Proposal> {
        officer(actor, "withdraw")?;
        let _p = lock(&self.proposals);
        let mut p = self.load(id)?;
        if p.state != ProposalState::Open {
            return Err(not_open(&p));
        }
        p.state = ProposalState::Withdrawn;
        p.approver = Some(actor.id.clone());
        p.decided_ms = Some(now_ms);
        p.finished_ms = Some(now_ms);
        let mut b = Batch::new();
        p.save_into(&mut b)?;
        self.audit
            .commit(b, self.event(actor, "key.withdraw", &p))?;
        Ok(p)
    }

    /// One proposal.
    ///
    /// # Errors
    /// Store errors.
    pub fn get(&self, id: ProposalId) -> Result<Option<Proposal>> {
        self.store()
            .get(Tree::KeyProposals, &id.key())?
            .map(|b| Proposal::decode(&b))
            .transpose()
    }

    fn load(&self, id: ProposalId) -> Result<Proposal> {
        self.get(id)?.ok_or_else(|| Missing::Proposal(id).into())
    }

    /// Every proposal, newest first, after marking lapsed the open ones whose window has
    /// passed at `now_ms` ([`Ceremonies::lapse_expired`]).
    ///
    /// # Errors
    /// Store and audit errors.
    pub fn list(&self, now_ms: u64) -> Result<Vec<Proposal>> {
        self.lapse_expired(now_ms)?;
        let mut all = self.all()?;
        all.reverse();
        Ok(all)
    }

    fn all(&self) -> Result<Vec<Proposal>> {
        self.store()
            .range(Tree::KeyProposals, &[], None, usize::MAX)?
            .iter()
            .map(|(_, v)| Proposal::decode(v))
            .collect()
    }

    /// Marks lapsed every open proposal whose window has passed at `now_ms`, each with its
    /// `key.lapse` event. Returns how many lapsed.
    ///
    /// # Errors
    /// Store and audit errors.
    pub fn lapse_expired(&self, now_ms: u64) -> Result<usize> {
        let _p = lock(&self.proposals);
        let mut n = 0;
        for p in self.all()? {
            if p.state == ProposalState::Open && now_ms >= p.expires_ms {
                self.lapse(p, now_ms)?;
                n += 1;
            }
        }
        Ok(n)
    }

    fn lapse(&self, mut p: Proposal, now_ms: u64) -> Result<Proposal> {
        p.state = ProposalState::Lapsed;
        p.finished_ms = Some(now_ms);
        p.outcome = Some("not approved within the window".into());
        let mut b = Batch::new();
        p.save_into(&mut b)?;
        let event = NewEvent::new("key.lapse", p.id.to_string())
            .detail("op", p.op.name())
            .detail("proposer", p.proposer.clone())
            .detail("expires_ms", p.expires_ms.to_string())
            .outcome(Outcome::Refused);
        self.audit.commit(b, event)?;
        Ok(p)
    }

    /// The report of `GET /v1/sys/keys`: terms, data keys, the job with its progress, the open
    /// proposals, warnings and recommendations, measured at `now_ms`. Read-only.
    ///
    /// # Errors
    /// Store errors.
    pub fn status(&self, hsm: &dyn Hsm, now_ms: u64) -> Result<KeyStatus> {
        let ring = Keyring::load(&**self.store())?;
        let open = self
            .all()?
            .into_iter()
            .filter(|p| p.approvable(now_ms))
            .collect();
        Ok(status::report(
            &self.policy.keys,
            &hsm.status(),
            &ring,
            self.job()?,
            open,
            now_ms,
        ))
    }

    /// Loads a proposal for approval by `actor` at `now_ms`: an officer other than the
    /// proposer, the proposal open and within its window (a lapsed one is marked so).
    fn approvable(
        &self,
        actor: &Actor,
        id: ProposalId,
        expect_kcv: Option<Kcv>,
        now_ms: u64,
    ) -> Result<Proposal> {
        officer(actor, "approve")?;
        let p = self.load(id)?;
        if p.state != ProposalState::Open {
            return Err(not_open(&p));
        }
        if now_ms >= p.expires_ms {
            self.lapse(p, now_ms)?;
            return Err(Refusal::Lapsed { proposal: id }.into());
        }
        if p.proposer == actor.id {
            return Err(Denial::OwnProposal {
                proposal: id,
                account: actor.id.clone(),
            }
            .into());
        }
        if let Some(want) = expect_kcv {
            if p.kcv != Some(want) {
                return Err(Refusal::KcvMismatch {
                    proposal: id,
                    expected: want,
                    found: p.kcv,
                }
                .into());
            }
        }
        Ok(p)
    }

    /// The proposal's operation checked again at approval, against the state of that moment:
    /// refused if the key it names is no longer the one the proposer and the approver compared
    /// (another approval rotated it meanwhile).
    fn recheck(&self, hsm: &dyn Hsm, p: &Proposal) -> Result<()> {
        let named = self.check(hsm, &p.op, false)?;
        if named.kcv != p.kcv {
            return Err(Refusal::KeyChanged {
                proposal: p.id,
                then: p.kcv,
                now: named.kcv,
            }
            .into());
        }
        if let Some(more) = p.impact.as_ref().and_then(|was| named.impact.widened(was)) {
            return Err(Refusal::ImpactGrew {
                proposal: p.id,
                more: more.to_string(),
            }
            .into());
        }
        Ok(())
    }

    /// Checks `op` against the current state and says what it would do. `proposing`: a
    /// retire of a term that still wraps data keys is allowed while a job is running (the
    /// rewrap will empty it).
    fn check(&self, hsm: &dyn Hsm, op: &Operation, proposing: bool) -> Result<Named> {
        let st = hsm.status();
        match *op {
            Operation::Rotate => {
                let active = active_term(&st)?;
                let ring = Keyring::load(&**self.store())?;
                let mut rewrap = KeyChange::other(KeyAction::Rewrap, "data keys".into(), None);
                rewrap.count = Some(ring.len() as u64);
                Ok(Named {
                    kcv: Some(active.kcv),
                    details: vec![
                        ("active_term", active.id.0.to_string()),
                        ("active_kcv", active.kcv.to_string()),
                    ],
                    impact: Impact {
                        keys: vec![
                            KeyChange::term(KeyAction::Rotate, active.id, active.kcv),
                            rewrap,
                        ],
                        ..Impact::default()
                    },
                })
            }
            Operation::Retire { term } => {
                let t = st
                    .terms
                    .iter()
                    .find(|t| t.id == term)
                    .ok_or(Missing::Term(term))?;
                match t.state {
                    TermState::Active => return Err(Refusal::TermActive { term }.into()),
                    TermState::Retired => return Err(Refusal::TermRetired { term }.into()),
                    TermState::DecryptOnly => {}
                }
                let in_use = Keyring::load(&**self.store())?
                    .count_by_term()
                    .get(&term)
                    .copied()
                    .unwrap_or(0);
                let rewrapping = self.jobs()?.iter().any(KeyJob::unfinished);
                if in_use > 0 && !(proposing && rewrapping) {
                    return Err(Refusal::TermInUse {
                        term,
                        data_keys: in_use as u64,
                    }
                    .into());
                }
                Ok(Named {
                    kcv: Some(t.kcv),
                    details: vec![
                        ("term", term.0.to_string()),
                        ("kcv", t.kcv.to_string()),
                        ("data_keys", in_use.to_string()),
                    ],
                    impact: Impact {
                        keys: vec![KeyChange::term(KeyAction::Retire, term, t.kcv)],
                        ..Impact::default()
                    },
                })
            }
            Operation::Rekey { shares, threshold } => {
                if shares == 0 || threshold == 0 {
                    return Err(Error::Quorum(Quorum::Zero));
                }
                if threshold > shares {
                    return Err(Error::Quorum(Quorum::ThresholdAboveShares {
                        threshold,
                        shares,
                    }));
                }
                if threshold < 2 && !self.policy.insecure_allow_single_share {
                    return Err(Error::Quorum(Quorum::SingleCustodian));
                }
                Ok(Named {
                    kcv: Some(st.root_kcv),
                    details: vec![
                        ("shares", shares.to_string()),
                        ("threshold", threshold.to_string()),
                        ("share_set", st.share_set.clone()),
                        ("root_kcv", st.root_kcv.to_string()),
                    ],
                    impact: Impact {
                        keys: vec![
                            KeyChange::other(
                                KeyAction::Replace,
                                "root key".into(),
                                Some(st.root_kcv),
                            ),
                            KeyChange::other(
                                KeyAction::Replace,
                                format!(
                                    "share set {} ({} of {} shares)",
                                    st.share_set, st.threshold, st.shares
                                ),
                                None,
                            ),
                        ],
                        ..Impact::default()
                    },
                })
            }
            Operation::Shred { batch, .. } | Operation::DiscardQuarantined { batch } => {
                let shred = matches!(op, Operation::Shred { .. });
                let want = if shred {
                    BatchState::Committed
                } else {
                    BatchState::Quarantined
                };
                let rec = self.codes.batch(batch)?.ok_or(Missing::Batch(batch))?;
                if rec.state != want {
                    return Err(Error::WrongState {
                        subject: Subject::Batch(batch),
                        state: rec.state.to_string(),
                        wanted: want.to_string(),
                    });
                }
                let kcv = rec
                    .data_key_kcv
                    .as_deref()
                    .and_then(|k| k.parse::<Kcv>().ok());
                let impact = self.destroy_impact(&st, batch, rec.data_key, kcv, shred)?;
                if let Operation::Shred { force: false, .. } = op {
                    let live = impact.live_cards();
                    if live > 0 {
                        return Err(Refusal::CardsNeedCodes {
                            batch,
                            active: impact.count("active"),
                            suspended: impact.count("suspended"),
                            issued: impact.count("issued"),
                            jobs: impact.jobs.count,
                        }
                        .into());
                    }
                }
                let mut details = vec![
                    ("batch", batch.to_string()),
                    ("cards", rec.cards.to_string()),
                    (
                        "data_key",
                        rec.data_key.map(|k| k.to_string()).unwrap_or_default(),
                    ),
                    ("kcv", rec.data_key_kcv.clone().unwrap_or_default()),
                ];
                if shred {
                    details.push(("live_cards", impact.live_cards().to_string()));
                    details.push(("jobs_cancelled", impact.jobs.count.to_string()));
                }
                let keys: Vec<String> = impact.keys.iter().map(|k| k.to_string()).collect();
                details.push(("keys", keys.join("; ")));
                Ok(Named {
                    kcv,
                    details,
                    impact,
                })
            }
        }
    }

    /// What destroying batch `batch` does: its cards (a shred; a quarantined batch's copies
    /// serve no card) and jobs, its data key destroyed, the active term rotated, every other
    /// data key rewrapped, and every term that is then decrypt-only retired.
    fn destroy_impact(
        &self,
        st: &crate::hsm::HsmStatus,
        batch: crate::codes::BatchId,
        data_key: Option<u32>,
        kcv: Option<Kcv>,
        shred: bool,
    ) -> Result<Impact> {
        let (cards, jobs) = if shred {
            self.batch_cards(batch)?
        } else {
            Default::default()
        };
        let active = active_term(st)?;
        let ring = Keyring::load(&**self.store())?;
        let mut keys = Vec::new();
        if let Some(k) = data_key {
            keys.push(KeyChange::other(
                KeyAction::Destroy,
                crate::envelope::DataKeyId(k).to_string(),
                kcv,
            ));
        }
        keys.push(KeyChange::term(KeyAction::Rotate, active.id, active.kcv));
        let mut rewrap = KeyChange::other(KeyAction::Rewrap, "data keys".into(), None);
        rewrap.count = Some(ring.len().saturating_sub(usize::from(data_key.is_some())) as u64);
        keys.push(rewrap);
        let mut retired: Vec<_> = st
            .terms
            .iter()
            .filter(|t| t.state == TermState::DecryptOnly || t.id == active.id)
            .collect();
        retired.sort_by_key(|t| t.id);
        for t in retired {
            keys.push(KeyChange::term(KeyAction::Retire, t.id, t.kcv));
        }
        Ok(Impact { cards, jobs, keys })
    }

    fn event(&self, actor: &Actor, action: &str, p: &Proposal) -> NewEvent {
        let mut e = actor
            .event(action, p.id.to_string())
            .detail("op", p.op.name());
        match p.op {
            Operation::Retire { term } => e = e.detail("term", term.0.to_string()),
            Operation::Shred { batch, force } => {
                e = e.detail("batch", batch.to_string());
                if force {
                    e = e.detail("force", "true");
                }
            }
            Operation::DiscardQuarantined { batch } => e = e.detail("batch", batch.to_string()),
            Operation::Rekey { shares, threshold } => {
                e = e
                    .detail("shares", shares.to_string())
                    .detail("threshold", threshold.to_string())
            }
            Operation::Rotate => {}
        }
        if let Some(k) = p.kcv {
            e = e.detail("kcv", k.to_string());
        }
        e
    }
}

fn officer(actor: &Actor, what: &'static str) -> Result<()> {
    if actor.role == Role::Officer.as_str() {
        Ok(())
    } else {
        Err(Denial::NotOfficer {
            account: actor.id.clone(),
            role: actor.role.clone(),
            what,
        }
        .into())
    }
}

fn not_open(p: &Proposal) -> Error {
    Error::WrongState {
        subject: Subject::Proposal(p.id),
        state: p.state.to_string(),
        wanted: "open".into(),
    }
}

#[cfg(test)]
mod tests {
    //! Key ceremonies end to end with the HSM double: dual control, lapses, the rewrap job across
    //! a crash, retire, rekey, shred against a copy of the store, and the status report.

    use super::*;
    use crate::codes::tests::{assert_codes_in, file, serial};
    use crate::codes::{BatchId, BatchRecord};
    use crate::error::{Denial, Missing, Refusal, ShareRefusal};
    use crate::hsm::TermId;
    use crate::hsm_double::DoubleHsm;
    use crate::import::parse::ParseRules;
    use crate::import::{import_file, ImportContext, ImportOutcome, ImportRequest};
    use crate::store::memory::MemoryStore;
    use crate::store::sled::SledStore;
    use secrecy::ExposeSecret;

    const DAY: u64 = 24 * 60 * 60 * 1000;

    struct Fixture {
        store: Arc<dyn Store>,
        hsm: Arc<dyn Hsm>,
        audit: Arc<AuditLog>,
        codes: Arc<CodeVault>,
        keys: Ceremonies,
    }

    impl Fixture {
        fn over(store: Arc<dyn Store>, hsm: Arc<dyn Hsm>, policy: CeremonyPolicy) -> Fixture {
            let audit = Arc::new(AuditLog::open(store.clone(), 50).unwrap());
            audit.unlock(hsm.clone()).unwrap();
            let codes = Arc::new(CodeVault::open(store.clone()).unwrap().0);
            let keys = Ceremonies::new(codes.clone(), audit.clone(), policy);
            Fixture {
                store,
                hsm,
                audit,
                codes,
                keys,
            }
        }

        fn memory() -> (Fixture, Arc<MemoryStore>) {
            let mem = Arc::new(MemoryStore::new());
            let f = Fixture::over(
                mem.clone(),
                Arc::new(DoubleHsm::new()),
                CeremonyPolicy::default(),
            );
            (f, mem)
        }

        fn import(&self, ids: std::ops::Range<u64>) -> ImportOutcome {
            let rules = ParseRules::default();
            let ctx = ImportContext {
                vault: &self.codes,
                hsm: &*self.hsm,
                audit: &self.audit,
                rules: &rules,
            };
            let request = ImportRequest {
                manufacturer: "Acme Cards".into(),
                expected_cards: None,
                expected_sha256: None,
                actor: "m1".into(),
                role: "manufacturer".into(),
                request_id: "r1".into(),
            };
            import_file(ctx, file(ids).as_bytes(), &request, &|_| {}).unwrap()
        }

        fn committed(&self, ids: std::ops::Range<u64>) -> BatchRecord {
            match self.import(ids) {
                ImportOutcome::Committed(r) => r,
                other => panic!("expected committed, got {other:?}"),
            }
        }

        fn terms(&self) -> Vec<(TermId, TermState)> {
            self.hsm
                .status()
                .terms
                .iter()
                .map(|t| (t.id, t.state))
                .collect()
        }

        fn ring(&self) -> Keyring {
            Keyring::load(&*self.store).unwrap()
        }

        fn proposals_stored(&self) -> usize {
            self.store
                .keys(Tree::KeyProposals, &[], None, usize::MAX)
                .unwrap()
                .len()
        }
    }

    fn officer(id: &str) -> Actor {
        Actor {
            id: id.into(),
            role: "officer".into(),
            request_id: format!("req-{id}"),
        }
    }

    /// Every stored audit event's action, in order.
    fn actions(store: &dyn Store) -> Vec<String> {
        store
            .range(Tree::Audit, &[], None, usize::MAX)
            .unwrap()
            .iter()
            .map(|(_, v)| {
                let e: serde_json::Value = serde_json::from_slice(v).unwrap();
                e["action"].as_str().unwrap().to_string()
            })
            .filter(|a| a.starts_with("key.") && a != "key.create")
            .collect()
    }

    fn now() -> u64 {
        use crate::clock::Clock;
        crate::clock::SystemClock.now_ms()
    }

    #[test]
    fn only_a_second_officer_may_approve() {
        let (f, _) = Fixture::memory();
        let t = now();
        let operator = Actor {
            id: "op1".into(),
            role: "operator".into(),
            request_id: "r".into(),
        };
        let e = f
            .keys
            .propose(&*f.hsm, &operator, Operation::Rotate, "yearly", t)
            .unwrap_err();
        assert!(
            matches!(&e, Error::Denied(Denial::NotOfficer { account, what: "propose", .. }) if account == "op1"),
            "{e}"
        );
        assert_eq!(f.proposals_stored(), 0);

        let p = f
            .keys
            .propose(&*f.hsm, &officer("alice"), Operation::Rotate, "yearly", t)
            .unwrap();
        assert_eq!(p.state, ProposalState::Open);
        assert_eq!(p.expires_ms, t + DEFAULT_WINDOW_MS);
        assert_eq!(p.kcv, Some(f.hsm.status().terms[0].kcv));

        let own = f
            .keys
            .approve(&*f.hsm, &officer("alice"), p.id, t + 1)
            .unwrap_err();
        assert!(
            matches!(&own, Error::Denied(Denial::OwnProposal { proposal, account }) if *proposal == p.id && account == "alice"),
            "{own}"
        );
        let op = f.keys.approve(&*f.hsm, &operator, p.id, t + 1).unwrap_err();
        assert!(
            matches!(op, Error::Denied(Denial::NotOfficer { .. })),
            "{op}"
        );
        assert_eq!(f.terms().len(), 1, "nothing ran");
        assert_eq!(
            f.keys.get(p.id).unwrap().unwrap().state,
            ProposalState::Open
        );

        let done = f
            .keys
            .approve(&*f.hsm, &officer("bob"), p.id, t + 2)
            .unwrap();
        assert_eq!(done.approver.as_deref(), Some("bob"));
        f.keys.run(&*f.hsm, &mut |_| {}).unwrap();
        let done = f.keys.get(p.id).unwrap().unwrap();
        assert_eq!(done.state, ProposalState::Done);
        assert_eq!(
            actions(&*f.store),
            ["key.propose", "key.approve", "key.rotate", "key.done"]
        );
        // A second approval of the same proposal is a wrong state.
        let again = f
            .keys
            .approve(&*f.hsm, &officer("carol"), p.id, t + 3)
            .unwrap_err();
        assert!(matches!(again, Error::WrongState { .. }), "{again}");
        assert!(f.audit.verify().unwrap().intact());
    }

    #[test]
    fn a_proposal_lapses_after_its_window() {
        let (f, _) = Fixture::memory();
        let t = now();
        let p = f
            .keys
            .propose(&*f.hsm, &officer("alice"), Operation::Rotate, "yearly", t)
            .unwrap();
        let late = f
            .keys
            .approve(&*f.hsm, &officer("bob"), p.id, t + DEFAULT_WINDOW_MS)
            .unwrap_err();
        assert!(
            matches!(late, Error::Refusal(Refusal::Lapsed { proposal }) if proposal == p.id),
            "{late}"
        );
        assert_eq!(
            f.keys.get(p.id).unwrap().unwrap().state,
            ProposalState::Lapsed
        );
        assert_eq!(f.terms().len(), 1, "nothing ran");

        // Listing marks the lapsed ones too.
        let q = f
            .keys
            .propose(&*f.hsm, &officer("alice"), Operation::Rotate, "again", t)
            .unwrap();
        let listed = f.keys.list(t + 1).unwrap();
        assert_eq!(listed[0].id, q.id, "newest first");
        assert_eq!(listed[0].state, ProposalState::Open);
        let listed = f.keys.list(t + DEFAULT_WINDOW_MS + 1).unwrap();
        assert_eq!(listed[0].state, ProposalState::Lapsed);
        assert_eq!(
            actions(&*f.store),
            ["key.propose", "key.lapse", "key.propose", "key.lapse"]
        );
        // A withdrawn proposal cannot be approved.
        let w = f
            .keys
            .propose(&*f.hsm, &officer("alice"), Operation::Rotate, "oops", t)
            .unwrap();
        f.keys.withdraw(&officer("alice"), w.id, t + 1).unwrap();
        assert!(f
            .keys
            .approve(&*f.hsm, &officer("bob"), w.id, t + 2)
            .is_err());
    }

    #[test]
    fn impossible_operations_are_refused_when_proposed_and_nothing_is_written() {
        let (f, _) = Fixture::memory();
        f.committed(0..10);
        let t = now();
        let a = officer("alice");
        type Check = fn(&Error) -> bool;
        let cases: Vec<(Operation, Check)> = vec![
            (Operation::Retire { term: TermId(9) }, |e| {
                matches!(e, Error::Missing(Missing::Term(TermId(9))))
            }),
            (Operation::Retire { term: TermId(1) }, |e| {
                matches!(e, Error::Refusal(Refusal::TermActive { term: TermId(1) }))
            }),
            (
                Operation::Shred {
                    batch: BatchId(99),
                    force: false,
                },
                |e| matches!(e, Error::Missing(Missing::Batch(BatchId(99)))),
            ),
            (
                Operation::DiscardQuarantined { batch: BatchId(1) },
                |e| matches!(e, Error::WrongState { state, wanted, .. } if state == "committed" && wanted == "quarantined"),
            ),
            // Share counts are bad input (400), not a refusal of the state: `Quorum` with the
            // counts.
            (
                Operation::Rekey {
                    shares: 2,
                    threshold: 3,
                },
                |e| {
                    matches!(
                        e,
                        Error::Quorum(Quorum::ThresholdAboveShares {
                            threshold: 3,
                            shares: 2
                        })
                    )
                },
            ),
            (
                Operation::Rekey {
                    shares: 3,
                    threshold: 1,
                },
                |e| matches!(e, Error::Quorum(Quorum::SingleCustodian)),
            ),
        ];
        let events = f.store.last(Tree::Audit).unwrap();
        for (op, check) in cases {
            let e = f.keys.propose(&*f.hsm, &a, op, "test", t).unwrap_err();
            assert!(check(&e), "{op}: {e}");
        }
        assert!(f
            .keys
            .propose(&*f.hsm, &a, Operation::Rotate, " ", t)
            .is_err());
        assert_eq!(f.proposals_stored(), 0);
        assert_eq!(f.store.last(Tree::Audit).unwrap(), events, "no event");
    }

    #[test]
    fn the_rewrap_job_resumes_after_a_crash_and_codes_open_throughout() {
        let dir = tempfile::tempdir().unwrap();
        let hsm: Arc<dyn Hsm> = Arc::new(DoubleHsm::new());
        let policy = CeremonyPolicy {
            chunk: 2,
            ..CeremonyPolicy::default()
        };
        let t = now();
        let id;
        {
            let f = Fixture::over(
                Arc::new(SledStore::open(dir.path()).unwrap()),
                hsm.clone(),
                policy,
            );
            for k in 0..3 {
                f.committed(k * 100..k * 100 + 50);
            }
            // audit, index (content ids) and three code keys.
            assert_eq!(f.ring().len(), 5);
            let p = f
                .keys
                .propose(&*hsm, &officer("alice"), Operation::Rotate, "yearly", t)
                .unwrap();
            id = p.id;
            let running = f.keys.approve(&*hsm, &officer("bob"), id, t).unwrap();
            assert_eq!(running.state, ProposalState::Running);
            // Approval rotated at once; the rewrap is the job's.
            assert_eq!(
                f.terms(),
                [
                    (TermId(1), TermState::DecryptOnly),
                    (TermId(2), TermState::Active)
                ]
            );
            let job = f.keys.job().unwrap().unwrap();
            assert_eq!((job.phase, job.total, job.done), (JobPhase::Rewrap, 5, 0));
            // No second job while this one runs.
            let q = f
                .keys
                .propose(&*hsm, &officer("alice"), Operation::Rotate, "again", t)
                .unwrap();
            let busy = f.keys.approve(&*hsm, &officer("bob"), q.id, t).unwrap_err();
            assert!(
                matches!(busy, Error::Refusal(Refusal::JobUnfinished { .. })),
                "{busy}"
            );

            let mut seen = Vec::new();
            let job = f
                .keys
                .step(&*hsm, 1, &mut |j| seen.push(j.done))
                .unwrap()
                .unwrap();
            assert_eq!((job.phase, job.done), (JobPhase::Rewrap, 2));
            assert_eq!(seen, [2]);
            assert_eq!(f.ring().count_by_term().get(&TermId(2)), Some(&2));
            for i in [0, 149, 201] {
                assert_codes_in(&f.codes, &*hsm, i);
            }
            // The crash: everything but the HSM is dropped here.
        }
        let f = Fixture::over(
            Arc::new(SledStore::open(dir.path()).unwrap()),
            hsm.clone(),
            policy,
        );
        let job = f.keys.job().unwrap().unwrap();
        assert_eq!((job.phase, job.done), (JobPhase::Rewrap, 2));
        let mut seen = Vec::new();
        let job = f
            .keys
            .resume_jobs(&*hsm, &mut |j| seen.push((j.phase, j.done)))
            .unwrap()
            .unwrap();
        assert_eq!(
            seen,
            [
                (JobPhase::Rewrap, 4),
                (JobPhase::Rewrap, 5),
                (JobPhase::Done, 5)
            ]
        );
        assert_eq!((job.state, job.total, job.done), (JobState::Done, 5, 5));
        assert_eq!(
            f.ring().count_by_term().into_iter().collect::<Vec<_>>(),
            [(TermId(2), 5)]
        );
        assert_eq!(f.keys.get(id).unwrap().unwrap().state, ProposalState::Done);
        for i in [0, 49, 100, 149, 201, 249] {
            assert_codes_in(&f.codes, &*hsm, i);
        }
        // Nothing left to do.
        assert_eq!(
            f.keys.run(&*hsm, &mut |_| {}).unwrap().unwrap().state,
            JobState::Done
        );
        assert!(f.audit.verify().unwrap().intact());
    }

    #[test]
    fn retire_is_refused_while_keys_remain_then_destroys_the_term() {
        let (f, _) = Fixture::memory();
        f.committed(0..20);
        let t = now();
        let p = f
            .keys
            .propose(&*f.hsm, &officer("alice"), Operation::Rotate, "yearly", t)
            .unwrap();
        f.keys.approve(&*f.hsm, &officer("bob"), p.id, t).unwrap();
        // Proposing the retire is allowed while the rewrap runs…
        let r = f
            .keys
            .propose(
                &*f.hsm,
                &officer("alice"),
                Operation::Retire { term: TermId(1) },
                "old",
                t,
            )
            .unwrap();
        // …approving it is not, with the count.
        let e = f
            .keys
            .approve(&*f.hsm, &officer("bob"), r.id, t)
            .unwrap_err();
        assert!(
            matches!(
                e,
                Error::Refusal(Refusal::TermInUse {
                    term: TermId(1),
                    data_keys: 3
                })
            ),
            "{e}"
        );
        assert_eq!(
            f.keys.get(r.id).unwrap().unwrap().state,
            ProposalState::Open
        );
        f.keys.run(&*f.hsm, &mut |_| {}).unwrap();
        let done = f.keys.approve(&*f.hsm, &officer("bob"), r.id, t).unwrap();
        assert_eq!(done.state, ProposalState::Done);
        assert!(done.outcome.unwrap().contains("term 1"));
        assert_eq!(f.terms()[0], (TermId(1), TermState::Retired));
        assert_codes_in(&f.codes, &*f.hsm, 7);
        // Retiring it again is refused when proposed.
        let again = f
            .keys
            .propose(
                &*f.hsm,
                &officer("alice"),
                Operation::Retire { term: TermId(1) },
                "x",
                t,
            )
            .unwrap_err();
        assert!(
            matches!(
                again,
                Error::Refusal(Refusal::TermRetired { term: TermId(1) })
            ),
            "{again}"
        );
    }

    #[test]
    fn rekey_needs_a_quorum_and_the_old_shares_stop_working() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let (double, old) = DoubleHsm::with_shares(3, 2);
        let hsm: Arc<dyn Hsm> = Arc::new(double);
        let f = Fixture::over(store, hsm.clone(), CeremonyPolicy::default());
        let t = now();
        let op = Operation::Rekey {
            shares: 5,
            threshold: 3,
        };
        let p = f
            .keys
            .propose(&*hsm, &officer("alice"), op, "custodian left", t)
            .unwrap();
        let root_before = hsm.status().root_kcv;
        let mut delivered: Vec<SecretString> = Vec::new();
        // One share is not a quorum: refused, audited, the proposal stays open.
        let e = f
            .keys
            .approve_rekey(
                &*hsm,
                &officer("bob"),
                p.id,
                &old[..1],
                &mut |s| {
                    delivered = s.to_vec();
                    Ok(())
                },
                t,
            )
            .unwrap_err();
        assert!(
            matches!(e, Error::Share(ShareRefusal::TooFew { given: 1, .. })),
            "{e}"
        );
        assert!(delivered.is_empty());
        assert_eq!(
            f.keys.get(p.id).unwrap().unwrap().state,
            ProposalState::Open
        );
        // A plain approval is not how a rekey is approved.
        assert!(f.keys.approve(&*hsm, &officer("bob"), p.id, t).is_err());

        let done = f
            .keys
            .approve_rekey(
                &*hsm,
                &officer("bob"),
                p.id,
                &old[1..],
                &mut |s| {
                    delivered = s.to_vec();
                    Ok(())
                },
                t,
            )
            .unwrap();
        assert_eq!(done.state, ProposalState::Done);
        assert_eq!(delivered.len(), 5);
        let st = hsm.status();
        assert_eq!((st.shares, st.threshold), (5, 3));
        assert_ne!(st.root_kcv, root_before);
        assert!(done.outcome.unwrap().contains(&st.root_kcv.to_string()));

        // The old shares no longer work; the new ones do.
        let q = f
            .keys
            .propose(&*hsm, &officer("bob"), op, "again", t)
            .unwrap();
        let stale = f
            .keys
            .approve_rekey(&*hsm, &officer("alice"), q.id, &old, &mut |_| Ok(()), t)
            .unwrap_err();
        assert!(
            matches!(stale, Error::Share(ShareRefusal::NotCurrent)),
            "{stale}"
        );
        f.keys
            .approve_rekey(
                &*hsm,
                &officer("alice"),
                q.id,
                &delivered[2..],
                &mut |_| Ok(()),
                t,
            )
            .unwrap();

        // No share, old or new, is anywhere in the store.
        let everything: Vec<u8> = Tree::ALL
            .iter()
            .flat_map(|tree| f.store.range(*tree, &[], None, usize::MAX).unwrap())
            .flat_map(|(k, v)| k.into_iter().chain(v))
            .collect();
        let text = String::from_utf8_lossy(&everything);
        for s in old.iter().chain(&delivered) {
            assert!(!text.contains(s.expose_secret()), "a share was stored");
        }
        assert_eq!(
            actions(&*f.store),
            [
                "key.propose",
                "key.attempt",
                "key.failed",
                "key.attempt",
                "key.approve",
                "key.done",
                "key.propose",
                "key.attempt",
                "key.failed",
                "key.attempt",
                "key.approve",
                "key.done"
            ]
        );
    }

    #[test]
    fn a_copy_of_the_store_taken_before_a_shred_cannot_yield_the_codes() {
        let (f, mem) = Fixture::memory();
        let a = f.committed(0..100);
        let b = f.committed(1000..1100);
        assert_codes_in(&f.codes, &*f.hsm, 5);
        let backup: Arc<dyn Store> = Arc::new(mem.snapshot());

        let t = now();
        let p = f
            .keys
            .propose(
                &*f.hsm,
                &officer("alice"),
                Operation::Shred {
                    batch: a.id,
                    force: true,
                },
                "revoked cards past retention",
                t,
            )
            .unwrap();
        assert_eq!(p.kcv.map(|k| k.to_string()), a.data_key_kcv);
        f.keys.approve(&*f.hsm, &officer("bob"), p.id, t).unwrap();
        // Approval already destroyed the batch in the live store.
        assert_eq!(f.codes.locate(&serial(5)).unwrap(), None);
        let job = f.keys.run(&*f.hsm, &mut |_| {}).unwrap().unwrap();
        assert_eq!(job.state, JobState::Done);
        assert_eq!(
            job.retired.iter().map(|r| r.0).collect::<Vec<_>>(),
            [TermId(1)]
        );
        assert_eq!(
            f.keys.get(p.id).unwrap().unwrap().state,
            ProposalState::Done
        );

        // Live: batch a is gone, batch b reads fine.
        assert_eq!(f.codes.find(&*f.hsm, &serial(5)).unwrap().map(|_| ()), None);
        assert_eq!(
            f.codes.batch(a.id).unwrap().unwrap().state,
            BatchState::Shredded
        );
        assert!(f
            .ring()
            .get(crate::DataKeyId(a.data_key.unwrap()))
            .is_none());
        assert_eq!(
            f.store
                .keys(Tree::Segments, &a.id.key(), Some(&b.id.key()), 10)
                .unwrap()
                .len(),
            0
        );
        for i in [1000, 1050, 1099] {
            assert_codes_in(&f.codes, &*f.hsm, i);
        }
        assert_eq!(
            f.terms(),
            [
                (TermId(1), TermState::Retired),
                (TermId(2), TermState::Active)
            ]
        );

        // The copy still holds batch a's segments and its data key — wrapped under term 1, which
        // the HSM has destroyed: no code comes out of it.
        let (old, _) = CodeVault::open(backup.clone()).unwrap();
        assert_eq!(old.locate(&serial(5)).unwrap(), Some(a.id));
        for i in [0, 5, 99] {
            let e = old.find(&*f.hsm, &serial(i)).map(|_| ()).unwrap_err();
            assert!(
                matches!(e, Error::Missing(crate::error::Missing::Term(TermId(1)))),
                "{e}"
            );
        }
        let ring = Keyring::load(&*backup).unwrap();
        let key = ring.get(crate::DataKeyId(a.data_key.unwrap())).unwrap();
        assert_eq!(key.wrapped.term, TermId(1));
        assert!(f.hsm.unwrap_data_key(&key.wrapped).is_err());

        let acts = actions(&*f.store);
        assert_eq!(
            acts,
            [
                "key.propose",
                "key.approve",
                "key.shred",
                "key.rotate",
                "key.done"
            ]
        );
        assert!(f.audit.verify().unwrap().intact());
    }

    #[test]
    fn a_quarantined_batch_can_be_discarded() {
        let (f, _) = Fixture::memory();
        f.committed(0..10);
        let q = match f.import(5..15) {
            ImportOutcome::Quarantined(r) => r,
            other => panic!("expected quarantined, got {other:?}"),
        };
        let t = now();
        let shred_q = f
            .keys
            .propose(
                &*f.hsm,
                &officer("a"),
                Operation::Shred {
                    batch: q.id,
                    force: false,
                },
                "x",
                t,
            )
            .unwrap_err();
        assert!(matches!(shred_q, Error::WrongState { .. }), "{shred_q}");
        let p = f
            .keys
            .propose(
                &*f.hsm,
                &officer("a"),
                Operation::DiscardQuarantined { batch: q.id },
                "manufacturer sends a corrected file",
                t,
            )
            .unwrap();
        f.keys.approve(&*f.hsm, &officer("b"), p.id, t).unwrap();
        f.keys.run(&*f.hsm, &mut |_| {}).unwrap();
        assert_eq!(
            f.codes.batch(q.id).unwrap().unwrap().state,
            BatchState::Discarded
        );
        assert!(f
            .ring()
            .get(crate::DataKeyId(q.data_key.unwrap()))
            .is_none());
        assert_codes_in(&f.codes, &*f.hsm, 7);
    }

    #[test]
    fn status_warns_past_periods_and_near_the_encryption_limit() {
        let (f, _) = Fixture::memory();
        f.committed(0..10);
        let t = now();
        let s = f.keys.status(&*f.hsm, t).unwrap();
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        assert!(s.recommendations.is_empty(), "{:?}", s.recommendations);
        assert_eq!(s.terms.len(), 1);
        assert_eq!(s.terms[0].data_keys, 3);
        assert_eq!(s.data_keys.len(), 3);
        let code = s
            .data_keys
            .iter()
            .find(|k| k.purpose == crate::KeyPurpose::Code)
            .unwrap();
        assert_eq!(code.encryptions, 10);

        let near = f.keys.status(&*f.hsm, t + 340 * DAY).unwrap();
        assert!(near.terms[0].warnings[0].contains("near the end of its 365-day period"));
        let late = f.keys.status(&*f.hsm, t + 366 * DAY).unwrap();
        assert!(late.terms[0].warnings[0].contains("past its 365-day period"));
        assert!(
            late.recommendations[0].starts_with("rotate: term 1"),
            "{:?}",
            late.recommendations
        );
        assert_eq!(
            f.keys.list(t).unwrap().len(),
            0,
            "recommendations create no proposal"
        );
        let old = f.keys.status(&*f.hsm, t + 731 * DAY).unwrap();
        assert!(old.data_keys.iter().all(|k| k
            .warnings
            .iter()
            .any(|w| w.contains("past its 730-day period"))));

        // Near the AES-GCM limit (a policy that warns early, to see it without 2^31 records).
        let policy = CeremonyPolicy {
            keys: KeyPolicy {
                warn_encryptions: 10,
                ..KeyPolicy::default()
            },
            ..CeremonyPolicy::default()
        };
        let strict = Ceremonies::new(f.codes.clone(), f.audit.clone(), policy);
        let s = strict.status(&*f.hsm, t).unwrap();
        let code = s
            .data_keys
            .iter()
            .find(|k| k.purpose == crate::KeyPurpose::Code)
            .unwrap();
        assert!(
            code.warnings[0].contains("near its limit of 2147483648"),
            "{:?}",
            code.warnings
        );
        assert_eq!(KeyPolicy::default().warn_encryptions, 1_717_986_912);

        // Open proposals and the job are in the report; it serialises for the API.
        let p = f
            .keys
            .propose(&*f.hsm, &officer("a"), Operation::Rotate, "x", t)
            .unwrap();
        f.keys.approve(&*f.hsm, &officer("b"), p.id, t).unwrap();
        let s = f.keys.status(&*f.hsm, t).unwrap();
        let job = s.job.clone().unwrap();
        assert_eq!((job.done, job.total), (0, 3));
        assert_eq!(s.terms[0].state, TermState::DecryptOnly);
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains("\"phase\":\"rewrap\""), "{json}");
        f.keys.run(&*f.hsm, &mut |_| {}).unwrap();
        let s = f.keys.status(&*f.hsm, t).unwrap();
        assert!(
            s.recommendations[0].starts_with("retire: term 1"),
            "{:?}",
            s.recommendations
        );
    }

    #[test]
    fn an_approval_is_refused_when_the_named_key_changed_since_the_proposal() {
        let (f, _) = Fixture::memory();
        let t = now();
        let first = f
            .keys
            .propose(&*f.hsm, &officer("alice"), Operation::Rotate, "yearly", t)
            .unwrap();
        let second = f
            .keys
            .propose(
                &*f.hsm,
                &officer("carol"),
                Operation::Rotate,
                "also yearly",
                t,
            )
            .unwrap();
        assert_eq!(first.kcv, second.kcv);
        f.keys
            .approve(&*f.hsm, &officer("bob"), first.id, t + 1)
            .unwrap();
        f.keys.run(&*f.hsm, &mut |_| {}).unwrap();
        // The second proposal named the term the first one rotated away: its approver would be
        // comparing a KCV that is no longer the active term's.
        let e = f
            .keys
            .approve(&*f.hsm, &officer("bob"), second.id, t + 2)
            .unwrap_err();
        assert!(
            matches!(&e, Error::Refusal(Refusal::KeyChanged { proposal, .. }) if *proposal == second.id),
            "{e}"
        );
        assert_eq!(f.terms().len(), 2, "no second rotation");
        assert_eq!(
            f.keys.get(second.id).unwrap().unwrap().state,
            ProposalState::Open
        );
    }
}
