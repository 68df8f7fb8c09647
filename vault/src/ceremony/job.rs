//! Key jobs: the durable, resumable work an approved rotate, shred or discard leaves behind.
//!
//! ```text
//! shred, discard:  destroy ─▶ rotate ─▶ rewrap (chunks) ─▶ retire ─▶ done
//! rotate:                     rotate ─▶ rewrap (chunks) ─────────────▶ done
//! ```
//!
//! Each phase ends with one store write of the job record (with the keyring, the batch or the
//! audit event it belongs to), so a crash leaves the job at the start of a phase or of a
//! chunk, and [`Ceremonies::run`] carries on from there:
//!
//! - *destroy*: `CodeVault::destroy_batch` marks the batch shredded (or discarded), deletes
//!   its segments and takes its data key out of the keyring, with the `key.shred` event and
//!   the job's next phase, in one batch. For a shred, the same batch revokes (reason
//!   `codes_destroyed`) every card of the batch that still needed its codes, and cancels each
//!   card's jobs that have not gone out, with their `card.revoke` and `dispatch.cancel`
//!   events, under the registry's lock: no card is ever left active with no codes. Should
//!   such cards have appeared after an approval without `force`, the job fails instead and
//!   destroys nothing.
//! - *rotate*: the HSM makes a new term active unless it already did (the job remembers the
//!   term that was active at approval, so a rotation whose record was lost is not repeated).
//! - *rewrap*: chunks of [`super::CeremonyPolicy::chunk`] data keys; each chunk holds the
//!   keyring lock (`CodeVault::keyring_lock`, which imports, the holder key and the purpose
//!   keys also take), reloads the keyring, rewraps inside the HSM, and saves keyring and
//!   progress together. Key material does not change: records open throughout.
//! - *retire*: every decrypt-only term that the proposal names is destroyed, under the
//!   keyring lock, after checking that no data key is wrapped under it. From then on a copy of the store taken before the
//!   shred holds the shredded key only under destroyed terms.
//! - *done*: job and proposal finished, with the `key.done` event, in one batch.
//!
//! Only one job is unfinished at a time (approval refuses a second), and only one thread runs
//! it (others return at once with its progress).

use super::proposal::{Operation, Proposal, ProposalId, ProposalState};
use super::CardStanding;
use super::Ceremonies;
use crate::account::Actor;
use crate::audit::{NewEvent, Outcome};
use crate::codes::BatchState;
use crate::error::{Error, Refusal, Result};
use crate::hsm::{Hsm, HsmStatus, TermId, TermInfo, TermState};
use crate::kcv::Kcv;
use crate::keyring::Keyring;
use crate::store::{Batch, Tree};
use serde::{Deserialize, Serialize};

/// Where a job is. The names are persisted: never rename them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobPhase {
    /// Destroy the batch's segments and data key (shred, discard).
    Destroy,
    /// Make a new term active.
    Rotate,
    /// Rewrap every data key under the new term, chunk by chunk.
    Rewrap,
    /// Destroy every decrypt-only term (shred, discard).
    Retire,
    /// Finished (see `state`).
    Done,
}

/// How a job ended, or that it has not. The names are persisted: never rename them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Not finished: [`Ceremonies::run`] carries it on.
    Running,
    /// Finished.
    Done,
    /// Stopped for good (the batch was no longer in the state to destroy); see `last_error`.
    Failed,
}

/// A key job as stored and shown (`GET /v1/sys/keys`). No secret in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyJob {
    /// The proposal that started it (also the job's key in [`Tree::KeyJobs`]).
    pub id: ProposalId,
    /// The operation.
    pub op: Operation,
    /// The phase to do next.
    pub phase: JobPhase,
    /// Running, done or failed.
    pub state: JobState,
    /// The term that was active when the job was approved.
    pub active_before: TermId,
    /// The term every data key is rewrapped under, once rotated.
    pub target: Option<TermId>,
    /// That term's KCV.
    pub target_kcv: Option<Kcv>,
    /// Data keys to rewrap (counted when the rewrap starts).
    pub total: u64,
    /// Data keys rewrapped so far.
    pub done: u64,
    /// Terms retired by the job, with their KCVs.
    pub retired: Vec<(TermId, Kcv)>,
    /// When it was approved (Unix ms).
    pub started_ms: u64,
    /// When it finished (Unix ms).
    pub finished_ms: Option<u64>,
    /// The last error that interrupted it (a sealed HSM, a store failure…); it is retried.
    pub last_error: Option<String>,
}

impl KeyJob {
    /// A job for an approved proposal, starting at its first phase.
    pub(super) fn start(p: &Proposal, active_before: TermId, now_ms: u64) -> KeyJob {
        KeyJob {
            id: p.id,
            op: p.op,
            phase: if p.op.batch().is_some() {
                JobPhase::Destroy
            } else {
                JobPhase::Rotate
            },
            state: JobState::Running,
            active_before,
            target: None,
            target_kcv: None,
            total: 0,
            done: 0,
            retired: Vec::new(),
            started_ms: now_ms,
            finished_ms: None,
            last_error: None,
        }
    }

    /// True until it is done or failed.
    pub fn unfinished(&self) -> bool {
        self.state == JobState::Running
    }

    /// Serialises the record.
    ///
    /// # Errors
    /// [`Error::Storage`] if it cannot be encoded.
    pub fn encode(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self)
            .map_err(|e| Error::Storage(format!("encoding the job of {}: {e}", self.id)))
    }

    /// Reads a stored record.
    ///
    /// # Errors
    /// [`Error::Storage`] naming the damage.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes)
            .map_err(|e| Error::Storage(format!("a key job in the store is damaged: {e}")))
    }

    /// Adds the write of this record to `batch`.
    ///
    /// # Errors
    /// As [`KeyJob::encode`].
    pub fn save_into(&self, batch: &mut Batch) -> Result<()> {
        batch.put(Tree::KeyJobs, self.id.key().to_vec(), self.encode()?);
        Ok(())
    }
}

/// The active term of an HSM.
pub(super) fn active_term(st: &HsmStatus) -> Result<TermInfo> {
    st.terms
        .iter()
        .find(|t| t.state == TermState::Active)
        .cloned()
        .ok_or_else(|| Refusal::NoActiveTerm.into())
}

fn term_kcv(st: &HsmStatus, term: TermId) -> String {
    st.terms
        .iter()
        .find(|t| t.id == term)
        .map(|t| t.kcv.to_string())
        .unwrap_or_default()
}

impl Ceremonies {
    /// Every job, oldest first (one per approved rotate, shred or discard).
    ///
    /// # Errors
    /// Store errors.
    pub fn jobs(&self) -> Result<Vec<KeyJob>> {
        self.store()
            .range(Tree::KeyJobs, &[], None, usize::MAX)?
            .iter()
            .map(|(_, v)| KeyJob::decode(v))
            .collect()
    }

    /// The unfinished job if there is one, else the last one, else `None`: what
    /// `GET /v1/sys/keys` shows as the job with its progress.
    ///
    /// # Errors
    /// Store errors.
    pub fn job(&self) -> Result<Option<KeyJob>> {
        let jobs = self.jobs()?;
        Ok(match jobs.iter().find(|j| j.unfinished()) {
            Some(j) => Some(j.clone()),
            None => jobs.last().cloned(),
        })
    }

    /// Carries the unfinished job on by at most `max_chunks` rewrap chunks (the destroy,
    /// rotate, retire and finishing phases are not counted), calling `progress` after every
    /// phase and chunk. Returns the job as it then stands ([`Ceremonies::job`] when there is
    /// nothing to do). If another thread is running the job, returns its last saved state at
    /// once. Blocking: run it on a blocking thread.
    ///
    /// # Errors
    /// [`Error::Sealed`] while the HSM is sealed; HSM, store and audit errors. The job keeps its
    /// place and records the error in `last_error`; call again (or [`Ceremonies::resume_jobs`]
    /// at the next start) to carry on.
    pub fn step(
        &self,
        hsm: &dyn Hsm,
        max_chunks: usize,
        progress: &mut dyn FnMut(&KeyJob),
    ) -> Result<Option<KeyJob>> {
        let Some(_runner) = crate::lock::try_lock(&self.runner) else {
            return self.job();
        };
        let Some(mut job) = self.jobs()?.into_iter().find(|j| j.unfinished()) else {
            return self.job();
        };
        let mut chunks = 0usize;
        loop {
            let res = match job.phase {
                JobPhase::Destroy => self.destroy_phase(&mut job),
                JobPhase::Rotate => self.rotate_phase(hsm, &mut job),
                JobPhase::Rewrap if chunks >= max_chunks => return Ok(Some(job)),
                JobPhase::Rewrap => {
                    chunks += 1;
                    self.rewrap_chunk(hsm, &mut job)
                }
                JobPhase::Retire => self.retire_phase(hsm, &mut job),
                JobPhase::Done => return Ok(Some(job)),
            };
            match res {
                Ok(()) => progress(&job),
                Err(e) => {
                    // Best effort: the error is shown with the job; the job keeps its place.
                    if let Ok(Some(mut saved)) = self.load_job(job.id) {
                        saved.last_error = Some(e.to_string());
                        let mut b = Batch::new();
                        if saved.save_into(&mut b).is_ok() {
                            let _ = self.store().apply(&b);
                        }
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Runs the unfinished job to its end ([`Ceremonies::step`] without a limit).
    ///
    /// # Errors
    /// As [`Ceremonies::step`].
    pub fn run(&self, hsm: &dyn Hsm, progress: &mut dyn FnMut(&KeyJob)) -> Result<Option<KeyJob>> {
        self.step(hsm, usize::MAX, progress)
    }

    /// Call at start-up, once the HSM is unsealed (and whenever the service wants to retry a
    /// job stopped by an error): carries an unfinished job on from its last saved phase or
    /// chunk, to its end. The same as [`Ceremonies::run`]; named for what it is for.
    ///
    /// # Errors
    /// As [`Ceremonies::step`].
    pub fn resume_jobs(
        &self,
        hsm: &dyn Hsm,
        progress: &mut dyn FnMut(&KeyJob),
    ) -> Result<Option<KeyJob>> {
        self.run(hsm, progress)
    }

    pub(super) fn load_job(&self, id: ProposalId) -> Result<Option<KeyJob>> {
        self.store()
            .get(Tree::KeyJobs, &id.key())?
            .map(|b| KeyJob::decode(&b))
            .transpose()
    }

    fn job_event(&self, action: &str, job: &KeyJob) -> NewEvent {
        let mut e = NewEvent::new(action, job.id.to_string()).detail("op", job.op.name());
        if let Some(batch) = job.op.batch() {
            e = e.detail("batch", batch.to_string());
        }
        e
    }

    fn destroy_phase(&self, job: &mut KeyJob) -> Result<()> {
        let Some(batch) = job.op.batch() else {
            job.phase = JobPhase::Rotate;
            return Ok(());
        };
        let (from, to) = match job.op {
            Operation::Shred { .. } => (BatchState::Committed, BatchState::Shredded),
            _ => (BatchState::Quarantined, BatchState::Discarded),
        };
        let mut next = job.clone();
        next.phase = JobPhase::Rotate;
        next.last_error = None;
        let mut b = Batch::new();
        next.save_into(&mut b)?;
        let rec = self.codes.batch(batch)?;
        // The registry's lock, held to the commit: no card of the batch changes meanwhile.
        let _ops = self.cards.as_ref().map(|c| c.hold());
        let mut events = Vec::new();
        let (revoked, cancelled) = match job.op {
            Operation::Shred { force, .. } => {
                match self.retire_cards_into(job, batch, force, &mut b, &mut events)? {
                    Ok(counts) => counts,
                    Err(why) => return self.finish(job, JobState::Failed, Some(why)),
                }
            }
            _ => (0, 0),
        };
        let mut event = self
            .job_event("key.shred", job)
            .detail("batch_state", to.to_string())
            .detail("cards_revoked", revoked.to_string())
            .detail("jobs_cancelled", cancelled.to_string());
        if let Some(r) = &rec {
            event = event
                .detail("cards", r.cards.to_string())
                .detail(
                    "data_key",
                    r.data_key.map(|k| k.to_string()).unwrap_or_default(),
                )
                .detail("kcv", r.data_key_kcv.clone().unwrap_or_default());
        }
        events.insert(0, event);
        match self
            .codes
            .destroy_batch(&self.audit, batch, from, to, b, events)
        {
            Ok(_) => {
                *job = next;
                Ok(())
            }
            Err(e @ (Error::Missing(_) | Error::WrongState { .. })) => {
                self.finish(job, JobState::Failed, Some(e.to_string()))
            }
            Err(e) => Err(e),
        }
    }

    /// Adds to `b` the revocation (reason `codes_destroyed`) of every card of `batch` that
    /// still needs its codes, and the cancellation of every unsent job of the batch's cards,
    /// with their events. Returns how many cards and jobs, or `Err(why)` (nothing added) when
    /// cards need their codes and the shred was not forced. The caller holds the ops lock.
    fn retire_cards_into(
        &self,
        job: &KeyJob,
        batch: crate::codes::BatchId,
        force: bool,
        b: &mut Batch,
        events: &mut Vec<NewEvent>,
    ) -> Result<std::result::Result<(u64, u64), String>> {
        let Some(cards) = self.cards.clone() else {
            return Ok(Ok((0, 0)));
        };
        let mut live = Vec::new();
        let mut registered = Vec::new();
        self.for_each_serial(batch, &mut |serial| {
            match cards.standing(serial)? {
                Some(CardStanding::Revoked) => registered.push(serial.to_owned()),
                Some(_) => live.push(serial.to_owned()),
                None => {}
            }
            Ok(())
        })?;
        if !live.is_empty() && !force {
            return Ok(Err(format!(
                "batch {batch}: {} card(s) now need their codes and the shred was not forced; \
                 nothing was destroyed: propose it again",
                live.len()
            )));
        }
        let now = self.audit.clock().now_ms();
        let why = format!("codes destroyed: batch {batch} shredded by {}", job.id);
        let actor = Actor::system(job.id.to_string());
        let mut cancelled = 0u64;
        let mut revoked = 0u64;
        for serial in live {
            if let Some(event) = cards.revoke_codes_destroyed_into(&serial, now, &actor, b)? {
                revoked += 1;
                events.push(event.detail("proposal", job.id.to_string()));
            }
            registered.push(serial);
        }
        for serial in registered {
            for event in cards.cancel_jobs_into(&serial, &why, now, b)? {
                cancelled += 1;
                events.push(event.detail("proposal", job.id.to_string()));
            }
        }
        Ok(Ok((revoked, cancelled)))
    }

    fn rotate_phase(&self, hsm: &dyn Hsm, job: &mut KeyJob) -> Result<()> {
        let st = hsm.status();
        if st.sealed {
            return Err(Error::Sealed);
        }
        let active = active_term(&st)?;
        let (term, rotated) = if active.id != job.active_before {
            // Rotated before a crash lost the job's record of it: do not rotate twice.
            (active, false)
        } else {
            (hsm.rotate()?, true)
        };
        let _keys = self.codes.keyring_lock();
        let ring = Keyring::load(&**self.store())?;
        let mut next = job.clone();
        next.phase = JobPhase::Rewrap;
        next.target = Some(term.id);
        next.target_kcv = Some(term.kcv);
        next.total = ring.count_not_under(term.id) as u64;
        next.done = 0;
        next.last_error = None;
        let mut b = Batch::new();
        next.save_into(&mut b)?;
        let event = self
            .job_event("key.rotate", job)
            .detail("term", term.id.0.to_string())
            .detail("kcv", term.kcv.to_string())
            .detail("previous_term", job.active_before.0.to_string())
            .detail("previous_kcv", term_kcv(&st, job.active_before))
            .detail("data_keys", next.total.to_string())
            .detail("rotated_now", rotated.to_string());
        self.audit.commit(b, event)?;
        *job = next;
        Ok(())
    }

    fn rewrap_chunk(&self, hsm: &dyn Hsm, job: &mut KeyJob) -> Result<()> {
        let st = hsm.status();
        if st.sealed {
            return Err(Error::Sealed);
        }
        let active = active_term(&st)?;
        let _keys = self.codes.keyring_lock();
        let mut ring = Keyring::load(&**self.store())?;
        let mut next = job.clone();
        next.last_error = None;
        if next.target != Some(active.id) {
            // Only jobs rotate, one at a time; should a term have been made active outside
            // them, rewrap under it (the HSM wraps under its active term only).
            next.target = Some(active.id);
            next.target_kcv = Some(active.kcv);
            next.total = next.done + ring.count_not_under(active.id) as u64;
        }
        let n = ring.rewrap_some(hsm, active.id, self.policy.chunk.max(1))?;
        let mut b = Batch::new();
        if n == 0 {
            next.done = next.total;
            next.phase = if job.op.batch().is_some() {
                JobPhase::Retire
            } else {
                JobPhase::Done
            };
        } else {
            next.done += n as u64;
            // Keys created meanwhile are wrapped under the active term already, so `total`
            // only falls short if a key was rewrapped twice (a chunk whose save was lost).
            next.total = next.total.max(next.done);
            ring.save_into(&mut b)?;
        }
        if next.phase == JobPhase::Done {
            drop(_keys);
            *job = next;
            return self.finish(job, JobState::Done, None);
        }
        next.save_into(&mut b)?;
        self.store().apply(&b)?;
        *job = next;
        Ok(())
    }

    fn retire_phase(&self, hsm: &dyn Hsm, job: &mut KeyJob) -> Result<()> {
        let st = hsm.status();
        if st.sealed {
            return Err(Error::Sealed);
        }
        // Only the terms the proposal names (all decrypt-only ones for a proposal made before
        // proposals said what they do).
        let named = self.get(job.id)?.and_then(|p| p.impact);
        {
            let _keys = self.codes.keyring_lock();
            let ring = Keyring::load(&**self.store())?;
            for t in st.terms.iter().filter(|t| {
                t.state == TermState::DecryptOnly && named.as_ref().is_none_or(|i| i.retires(t.id))
            }) {
                // The term goes on the job's record before the HSM destroys it, so a crash
                // in between cannot leave a destroyed term out of the `key.done` event.
                if !job.retired.iter().any(|(id, _)| *id == t.id) {
                    let mut next = job.clone();
                    next.retired.push((t.id, t.kcv));
                    let mut b = Batch::new();
                    next.save_into(&mut b)?;
                    self.store().apply(&b)?;
                    *job = next;
                }
                if let Err(e) = ring.retire_term(hsm, t.id) {
                    if matches!(e, Error::Refusal(Refusal::TermInUse { .. })) {
                        // A data key is still wrapped under the term (written back after the
                        // rewrap): rewrap again before retiring.
                        let mut next = job.clone();
                        next.retired.retain(|(id, _)| *id != t.id);
                        next.phase = JobPhase::Rewrap;
                        let mut b = Batch::new();
                        next.save_into(&mut b)?;
                        self.store().apply(&b)?;
                        *job = next;
                    }
                    return Err(e);
                }
            }
        }
        self.finish(job, JobState::Done, None)
    }

    /// Ends the job and its proposal with the `key.done` (or `key.failed`) event, in one batch.
    fn finish(&self, job: &mut KeyJob, state: JobState, error: Option<String>) -> Result<()> {
        let now = self.audit.clock().now_ms();
        let mut next = job.clone();
        next.phase = JobPhase::Done;
        next.state = state;
        next.finished_ms = Some(now);
        next.last_error = error.clone();
        if state == JobState::Done {
            next.done = next.total;
        }
        let mut b = Batch::new();
        next.save_into(&mut b)?;
        let target = next
            .target
            .map(|t| {
                format!(
                    "{t} (KCV {})",
                    next.target_kcv.map(|k| k.to_string()).unwrap_or_default()
                )
            })
            .unwrap_or_default();
        let retired = next
            .retired
            .iter()
            .map(|(t, k)| format!("{t} (KCV {k})"))
            .collect::<Vec<_>>()
            .join(", ");
        let outcome = match (&error, next.op.batch()) {
            (Some(e), _) => format!("failed: {e}"),
            (None, Some(b)) => format!(
                "batch {b} destroyed; data keys under {target}; retired: {}",
                if retired.is_empty() { "none" } else { &retired }
            ),
            (None, None) => format!("{} data key(s) rewrapped under {target}", next.done),
        };
        let mut event = self
            .job_event(
                if error.is_some() {
                    "key.failed"
                } else {
                    "key.done"
                },
                &next,
            )
            .detail("outcome", outcome.clone())
            .detail("rewrapped", next.done.to_string());
        if let (Some(t), Some(k)) = (next.target, next.target_kcv) {
            event = event
                .detail("term", t.0.to_string())
                .detail("kcv", k.to_string());
        }
        if !retired.is_empty() {
            event = event.detail("retired", retired);
        }
        if error.is_some() {
            event = event.outcome(Outcome::Failed);
        }
        if let Some(mut p) = self.get(next.id)? {
            p.state = if error.is_some() {
                ProposalState::Failed
            } else {
                ProposalState::Done
            };
            p.finished_ms = Some(now);
            p.outcome = Some(outcome);
            p.save_into(&mut b)?;
        }
        self.audit.commit(b, event)?;
        *job = next;
        Ok(())
    }
}
