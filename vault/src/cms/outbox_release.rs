//! What a delivery worker gets for one claimed job: the card's codes, the destination the
//! job's channel needs and the holder's name, after the same checks a dispatch request passes
//! (card `active`, contact registered and not changed after the last identification, rule 13).
//!
//! The codes come through [`Cms::release_codes`], so every release is audited as
//! `card.codes_release` with purpose `dispatch job N`. Nothing here renders or sends.

use super::card::CardState;
use super::date::Date;
use super::outbox::{Channel, Job, JobState};
use super::registry::Cms;
use crate::account::Actor;
use crate::audit::AuditLog;
use crate::codes::CardCodes;
use crate::error::{Error, Result};
use crate::hsm::Hsm;
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
    /// (claimed by the caller). The card must be `active` and the contact the channel needs
    /// registered and not changed after the card's last identification. The codes are
    /// released through [`Cms::release_codes`] (audited, purpose `dispatch job N`).
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
        let job = self
            .job(job_id)?
            .ok_or_else(|| Error::NotFound(format!("dispatch job {job_id}")))?;
        if job.state != JobState::Sending {
            return Err(Error::WrongState {
                subject: format!("dispatch job {job_id}"),
                state: job.state.to_string(),
                wanted: JobState::Sending.to_string(),
            });
        }
        let serial = job.serial.clone();
        let card = self.required_card(&serial)?;
        if card.state != CardState::Active {
            return Err(Error::WrongState {
                subject: format!("card {serial}"),
                state: card.state.to_string(),
                wanted: "active".to_string(),
            });
        }
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
        // The gate: state checked again under the ops lock, expiry applied, release audited.
        let codes = self.release_codes(
            hsm,
            audit,
            &serial,
            &format!("dispatch job {job_id}"),
            today,
            actor,
        )?;
        Ok(JobRelease {
            job,
            codes,
            destination,
            name,
        })
    }
}
