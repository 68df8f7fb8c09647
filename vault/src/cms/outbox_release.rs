//! What a delivery worker gets for one claimed job: the card's codes, the destination the
//! job's channel needs and the holder's name, after the same checks a dispatch request passes
//! (card `active`, contact registered and not changed after the last identification, rule 13).
//!
//! The codes come through the same gate as [`Cms::release_codes`], every check made under the
//! ops lock, so every release is audited as `card.codes_release` with purpose
//! `dispatch job N`. A worker claims and releases a batch together ([`Cms::claim_and_release`]):
//! their events share one commit and one flush. Nothing here renders or sends.

use super::date::Date;
use super::outbox::{Channel, Job, JobState};
use super::registry::Cms;
use crate::account::Actor;
use crate::audit::{AuditLog, NewEvent};
use crate::codes::CardCodes;
use crate::error::{Error, Result};
use crate::hsm::Hsm;
use crate::store::Batch;
use std::fmt;
use zeroize::Zeroizing;

/// Where a job's message goes.
#[derive(Clone, PartialEq, Eq)]
pub enum ReleaseDestination {
    /// The holder's registered mobile number (E.164).
    Mobile(Zeroizing<String>),
    /// The holder's registered e-mail address.
    Email(Zeroizing<String>),
}

impl ReleaseDestination {
    /// The address in clear, for the courier only.
    pub fn expose(&self) -> &str {
        match self {
            ReleaseDestination::Mobile(s) | ReleaseDestination::Email(s) => s,
        }
    }
}

impl fmt::Debug for ReleaseDestination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReleaseDestination::Mobile(_) => f.write_str("Mobile(<redacted>)"),
            ReleaseDestination::Email(_) => f.write_str("Email(<redacted>)"),
        }
    }
}

/// One job's release: the job, its card's codes, destination and holder's name.
///
/// # Security
/// Holds codes and personal data: `Debug` shows only the job id, serial, part and channel;
/// no `Serialize`, no `Display`. Drop it as soon as the message is rendered.
pub struct JobRelease {
    /// The job (in `sending`).
    pub job: Job,
    /// The card's codes, as [`Cms::release_codes`] gave them.
    pub codes: CardCodes,
    /// The registered contact the job's channel needs.
    pub destination: ReleaseDestination,
    /// The holder's name as printed (given names and surname).
    pub name: Zeroizing<String>,
}

impl fmt::Debug for JobRelease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobRelease")
            .field("job", &self.job.id)
            .field("serial", &self.job.serial)
            .field("part", &self.job.part)
            .field("channel", &self.job.channel)
            .finish_non_exhaustive()
    }
}

impl Cms {
    /// The codes, destination and holder's name for job `job_id`, which must be `sending`
    /// (claimed by the caller): the release of [`Cms::claim_and_release`] for one job already
    /// claimed, audited as one `card.codes_release` event.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown job or card; [`Error::WrongState`] for a job not
    /// `sending` or a card not `active`; [`Error::Refused`] for a contact not registered or
    /// changed since the last identification, a channel without a remote destination, or codes
    /// no longer held; [`Error::Sealed`]; store and audit errors.
    pub fn release_for_job(
        &self,
        hsm: &dyn Hsm,
        audit: &AuditLog,
        job_id: u64,
        today: Date,
        actor: &Actor,
    ) -> Result<JobRelease> {
        let _ops = self.ops_lock();
        let job = self
            .job(job_id)?
            .ok_or_else(|| Error::NotFound(format!("dispatch job {job_id}")))?;
        let release = self.release_one(hsm, audit, job, today, actor)?;
        audit.append(release.1)?;
        Ok(release.0)
    }

    /// What a delivery worker does for `channel`: claims up to `limit` jobs due at `now_ms`
    /// ([`Cms::claim_due`]) and releases each: the card must be `active` and the contact the
    /// channel needs registered and not changed after the card's last identification. Every
    /// check is made under the ops lock; the claims and the releases granted (one
    /// `card.codes_release` event a job, purpose `dispatch job N`, by
    /// `Actor::system("dispatch-job-N")`) are one commit, written under the lock and durable
    /// before this returns. A job whose release is refused stays `sending` with its error and
    /// no event: the caller marks it failed.
    ///
    /// # Errors
    /// For the whole call: store and audit errors (then nothing is claimed or released). For
    /// a job: as [`Cms::release_for_job`].
    pub fn claim_and_release(
        &self,
        hsm: &dyn Hsm,
        audit: &AuditLog,
        channel: Channel,
        now_ms: u64,
        limit: usize,
        today: Date,
    ) -> Result<Vec<(Job, Result<JobRelease>)>> {
        let ops = self.ops_lock();
        let mut b = Batch::new();
        let jobs = self.claim_into(now_ms, &[channel], limit, &mut b)?;
        let mut out = Vec::with_capacity(jobs.len());
        let mut events = Vec::with_capacity(jobs.len());
        for job in jobs {
            let actor = Actor::system(format!("dispatch-job-{}", job.id));
            match self.release_one(hsm, audit, job.clone(), today, &actor) {
                Ok((release, event)) => {
                    events.push(event);
                    out.push((job, Ok(release)));
                }
                Err(e @ Error::Storage(_)) => return Err(e),
                Err(e) => out.push((job, Err(e))),
            }
        }
        if events.is_empty() {
            if !b.is_empty() {
                self.store.apply(&b)?;
            }
            return Ok(out);
        }
        let written = audit.write_all(b, events)?;
        drop(ops);
        audit.durable(written)?;
        Ok(out)
    }

    /// One job's release and its event, not yet committed. Called with the ops lock held, with
    /// the job as stored (or as claimed in the batch being built).
    fn release_one(
        &self,
        hsm: &dyn Hsm,
        audit: &AuditLog,
        job: Job,
        today: Date,
        actor: &Actor,
    ) -> Result<(JobRelease, NewEvent)> {
        let job_id = job.id;
        if job.state != JobState::Sending {
            return Err(Error::WrongState {
                subject: format!("dispatch job {job_id}"),
                state: job.state.to_string(),
                wanted: JobState::Sending.to_string(),
            });
        }
        let serial = job.serial.clone();
        let card = self.active_card(audit, &serial, today, actor)?;
        let (holder, personal) = self.holder_of(hsm, &card)?;
        self.check_contact(&card, &holder, &personal, job.channel)?;
        let destination = match job.channel {
            Channel::Sms => personal
                .mobile
                .clone()
                .map(|m| ReleaseDestination::Mobile(m.into())),
            Channel::Email => personal
                .email
                .clone()
                .map(|e| ReleaseDestination::Email(e.into())),
            Channel::Counter | Channel::Mailer => None,
        }
        .ok_or_else(|| {
            Error::Refused(format!(
                "dispatch job {job_id}: channel {} has no remote destination",
                job.channel
            ))
        })?;
        let name = Zeroizing::new(format!("{} {}", personal.given_names, personal.surname));
        drop(personal);
        let (codes, event) = self.release_locked(
            hsm,
            audit,
            &serial,
            &format!("dispatch job {job_id}"),
            today,
            actor,
        )?;
        Ok((
            JobRelease {
                job,
                codes,
                destination,
                name,
            },
            event,
        ))
    }
}
