//! What a delivery worker gets for one claimed job: the card's codes, the destination the
//! job's channel needs and the holder's name, after the same checks a dispatch request passes
//! (card `active`, contact registered and not changed after the last identification, rule 13).
//!
//! The codes come through the same gate as [`Cards::release_codes`], every check made under the
//! ops lock, so every release is audited as `card.codes_release` with purpose
//! `dispatch job N`. A worker claims and releases a batch together ([`Cards::claim_and_release`]):
//! their events share one commit and one flush. Nothing here renders or sends.
//!
//! A release refused because of the card's state (not `active`, codes gone, contact missing or
//! changed after the last identification) is not a channel failure: [`Cards::claim_and_release`]
//! cancels the job in the same commit, under the same lock as the check, with the state read
//! at that moment as its reason (`card_suspended`, `codes_gone`, `contact_changed`, …) and a
//! `dispatch.cancel` event. A cancelled job never falls back to another channel.

use super::date::Date;
use super::outbox::{job_event, put_job, Channel, Job, JobState};
use super::registry::Cards;
use std::fmt;
use vault::Actor;
use vault::Batch;
use vault::Hsm;
use vault::{AuditLog, NewEvent};
use vault::{CardCodes, PendingCodes, Release, CODES_RELEASE_ACTION};
use vault::{Error, Missing, Refusal, Result, Subject};
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
    /// The card's codes, as [`Cards::release_codes`] gave them.
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

/// What one turn of [`Cards::settle_and_claim`] did.
#[derive(Debug)]
pub struct Settled {
    /// One result a job marked sent, in the order asked, as [`Cards::mark_sent_many`] gives
    /// them.
    pub sent: Vec<Result<Job>>,
    /// The jobs claimed, each with its release or why not, as [`Cards::claim_and_release`]
    /// gives them.
    pub claimed: Vec<(Job, Result<JobRelease>)>,
}

impl Cards {
    /// The codes, destination and holder's name for job `job_id`, which must be `sending`
    /// (claimed by the caller): the release of [`Cards::claim_and_release`] for one job already
    /// claimed, audited as one `card.codes_release` event.
    ///
    /// # Errors
    /// [`Error::Missing`] for an unknown job or card; [`Error::WrongState`] for a job not
    /// `sending` or a card not `active`; [`Error::Refusal`] for a contact not registered or
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
        let job = self.job(job_id)?.ok_or(Missing::Job(job_id))?;
        let (pending, event) = self.release_one(hsm, audit, job, today, actor)?;
        let receipt = audit.commit_release(Batch::new(), vec![event])?;
        pending.open(&receipt)
    }

    /// What a delivery worker does for `channel`: claims up to `limit` jobs due at `now_ms`
    /// ([`Cards::claim_due`]) and releases each: the card must be `active` and the contact the
    /// channel needs registered and not changed after the card's last identification. Every
    /// check is made under the ops lock; the claims and the releases granted (one
    /// `card.codes_release` event a job, purpose `dispatch job N`, by
    /// `Actor::system("dispatch-job-N")`) are one commit, written under the lock and durable
    /// before this returns. A job refused for the card's state comes back `cancelled` (with
    /// its reason and a `dispatch.cancel` event, in the same commit): nothing more to do. A
    /// job refused otherwise stays `sending` with its error and no event: the caller marks it
    /// failed. [`Cards::settle_and_claim`] with no job to mark sent.
    ///
    /// # Errors
    /// For the whole call: store and audit errors (then nothing is claimed or released). For
    /// a job: as [`Cards::release_for_job`].
    pub fn claim_and_release(
        &self,
        hsm: &dyn Hsm,
        audit: &AuditLog,
        channel: Channel,
        now_ms: u64,
        limit: usize,
        today: Date,
    ) -> Result<Vec<(Job, Result<JobRelease>)>> {
        Ok(self
            .settle_and_claim(hsm, audit, &[], &[(channel, limit)], now_ms, today)?
            .claimed)
    }

    /// One turn of a delivery worker in one commit: marks the jobs of `sent` sent (as
    /// [`Cards::mark_sent_many`]: `sending` → `sent` with the courier's id and a
    /// `dispatch.sent` event each), then, for each `(channel, limit)` of `claims`, claims and
    /// releases up to `limit` due jobs of that channel (as [`Cards::claim_and_release`]). The
    /// marks, the claims, the releases and every event are one store write and one flush,
    /// durable before this returns: so the outcome of a message already sent is durable no
    /// later than the release of the next one, and a worker that gives a job's slot to a new
    /// job in the same turn keeps the number of messages sent but not durably marked within
    /// its cap.
    ///
    /// # Errors
    /// For the whole call: store and audit errors (then nothing is marked, claimed or
    /// released). For a job: as [`Cards::mark_sent_many`] and [`Cards::release_for_job`].
    pub fn settle_and_claim(
        &self,
        hsm: &dyn Hsm,
        audit: &AuditLog,
        sent: &[(u64, String)],
        claims: &[(Channel, usize)],
        now_ms: u64,
        today: Date,
    ) -> Result<Settled> {
        let ops = self.ops_lock();
        let mut b = Batch::new();
        let mut events = Vec::new();
        let marked = self.sent_into(sent, &mut b, &mut events)?;
        let mut out = Vec::new();
        for &(channel, limit) in claims {
            let jobs = self.claim_into(now_ms, &[channel], limit, &mut b)?;
            out.reserve(jobs.len());
            for job in jobs {
                let actor = Actor::system(format!("dispatch-job-{}", job.id));
                match self.release_checked(hsm, audit, job.clone(), today, &actor) {
                    Ok((pending, event)) => {
                        events.push(event);
                        out.push((job, Ok(pending)));
                    }
                    Err(Stop::Fail(e @ Error::Storage(_))) => return Err(e),
                    Err(Stop::Fail(e)) => out.push((job, Err(e))),
                    Err(Stop::Cancel(reason, e)) => {
                        let mut cancelled = job.clone();
                        cancelled.state = JobState::Cancelled;
                        cancelled.cancel_reason = Some(reason.clone());
                        cancelled.updated_ms = now_ms;
                        put_job(&mut b, Some(&job), &cancelled)?;
                        events.push(
                            job_event("dispatch.cancel", &cancelled)
                                .detail("reason", reason)
                                .detail("attempt", cancelled.attempts.to_string()),
                        );
                        out.push((cancelled, Err(e)));
                    }
                }
            }
        }
        if events.is_empty() {
            if !b.is_empty() {
                self.store.apply(&b)?;
            }
            // No release was granted (each granted one has its event): every job here failed
            // or was cancelled, and comes back with its error.
            return Ok(Settled {
                sent: marked,
                claimed: out
                    .into_iter()
                    .filter_map(|(job, r)| r.err().map(|e| (job, Err(e))))
                    .collect(),
            });
        }
        let written = audit.write_all(b, events)?;
        drop(ops);
        let receipt = audit.durable_release(written)?;
        Ok(Settled {
            sent: marked,
            claimed: out
                .into_iter()
                .map(|(job, r)| (job, r.and_then(|p| p.open(&receipt))))
                .collect(),
        })
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
    ) -> Result<(PendingJobRelease, NewEvent)> {
        self.release_checked(hsm, audit, job, today, actor)
            .map_err(|stop| match stop {
                Stop::Fail(e) | Stop::Cancel(_, e) => e,
            })
    }

    /// [`Cards::release_one`], telling a refusal for the card's state ([`Stop::Cancel`], with
    /// the state read now) from any other error.
    fn release_checked(
        &self,
        hsm: &dyn Hsm,
        audit: &AuditLog,
        job: Job,
        today: Date,
        actor: &Actor,
    ) -> std::result::Result<(PendingJobRelease, NewEvent), Stop> {
        let job_id = job.id;
        if job.state != JobState::Sending {
            return Err(Stop::Fail(Error::WrongState {
                subject: Subject::Job(job_id),
                state: job.state.to_string(),
                wanted: JobState::Sending.to_string(),
            }));
        }
        let serial = job.serial.clone();
        let card = match self.active_card(audit, &serial, today, actor) {
            Ok(card) => card,
            Err(e @ Error::WrongState { .. }) => {
                let state = match &e {
                    Error::WrongState { state, .. } => state.clone(),
                    _ => String::new(),
                };
                return Err(Stop::Cancel(format!("card_{state}"), e));
            }
            Err(e @ Error::Missing(Missing::Card(_))) => {
                return Err(Stop::Cancel("card_unknown".into(), e))
            }
            Err(e) => return Err(Stop::Fail(e)),
        };
        // The codes are found and decrypted once, here (sealed in `PendingCodes` until the
        // release's event is durable); the card was checked `active` just above, under the
        // same lock, so the gate's own checks ([`Cards::release_locked`]) are not made twice.
        let Some(pending) = self
            .codes
            .pending_release(hsm, &serial)
            .map_err(Stop::Fail)?
        else {
            return Err(Stop::Cancel(
                "codes_gone".into(),
                Refusal::CodesNotHeld {
                    card: serial.clone(),
                }
                .into(),
            ));
        };
        let (holder, personal) = self.holder_of(hsm, &card).map_err(Stop::Fail)?;
        if let Some((reason, e)) = self.contact_problem(&card, &holder, &personal, job.channel) {
            return Err(Stop::Cancel(reason.to_owned(), e.into()));
        }
        let destination = match job.channel {
            Channel::Sms => personal
                .mobile
                .clone()
                .map(|m| ReleaseDestination::Mobile(m.into())),
            Channel::Email => personal
                .email
                .clone()
                .map(|e| ReleaseDestination::Email(e.into())),
            Channel::Counter | Channel::Mailer | Channel::Remote | Channel::Any => None,
        }
        .ok_or_else(|| {
            Stop::Cancel(
                "contact_missing".into(),
                Refusal::NoRemoteDestination {
                    job: job_id,
                    channel: job.channel.to_string(),
                }
                .into(),
            )
        })?;
        let name = Zeroizing::new(format!("{} {}", personal.given_names, personal.surname));
        drop(personal);
        let event = actor
            .event(CODES_RELEASE_ACTION, serial)
            .detail("for", format!("dispatch job {job_id}"));
        Ok((
            PendingJobRelease {
                job,
                pending,
                destination,
                name,
            },
            event,
        ))
    }
}

/// A [`JobRelease`] whose codes are not readable until its `card.codes_release` event is
/// durable: [`PendingJobRelease::open`] with the receipt of that write.
struct PendingJobRelease {
    job: Job,
    pending: PendingCodes,
    destination: ReleaseDestination,
    name: Zeroizing<String>,
}

impl PendingJobRelease {
    /// The release, given the receipt of the audit write that recorded it.
    fn open(self, receipt: &Release) -> Result<JobRelease> {
        Ok(JobRelease {
            job: self.job,
            codes: self.pending.open(receipt)?,
            destination: self.destination,
            name: self.name,
        })
    }
}

/// Why a release did not happen.
enum Stop {
    /// The card's state refuses it: the job is cancelled with this reason.
    Cancel(String, Error),
    /// Anything else: the caller decides (retry, or `dead`).
    Fail(Error),
}

#[cfg(test)]
mod tests {
    //! Releases for claimed jobs on sled: an active card gives codes, destination and name with a
    //! `card.codes_release` event for the job; a suspended card and a changed contact are refused.

    use crate::outbox::tests::{events, hand_over};
    use crate::outbox::{Channel, Job, JobState};
    use crate::outbox_release::ReleaseDestination;
    use crate::registry_parse::{CardEntry, HolderEntry};
    use crate::tests::{actor, cf, date, holder_activation, serial, today, World};
    use crate::{Change, Reason};
    use vault::{Error, Missing, Refusal};

    fn holder(w: &World, mobile: &str) {
        let entry = HolderEntry {
            first_line: 2,
            codice_fiscale: cf(0),
            given_names: "Nicolò".into(),
            surname: "D'Angelo".into(),
            birth_date: date("1985-12-10"),
            email: Some("h0@example.it".into()),
            mobile: Some(mobile.into()),
            address: Some("Via Roma 1, 00100 Roma".into()),
            deceased: false,
            cards: vec![CardEntry {
                line: 2,
                serial: serial(1),
                expiry: date("2030-01-01"),
                replaced_by: None,
            }],
        };
        w.cms()
            .import_registry(&*w.hsm, w.audit(), &[entry], today(), &actor())
            .unwrap();
    }

    /// Card 1, active, with codes; a dispatch by `plan`, its remote job claimed.
    fn claimed(plan: &str) -> (World, Job) {
        let w = World::new();
        holder(&w, "+393331234567");
        w.import_codes(&[serial(1)]);
        w.change(1, &holder_activation()).unwrap();
        w.cms()
            .request_dispatch(&*w.hsm, w.audit(), &serial(1), plan, today(), &actor())
            .unwrap();
        if plan.starts_with("counter(") {
            hand_over(&w, 1);
        }
        let mut jobs = w
            .cms()
            .claim_due(u64::MAX / 2, &Channel::REMOTE, 10)
            .unwrap();
        assert_eq!(jobs.len(), 1);
        (w, jobs.remove(0))
    }

    /// The releases for dispatch jobs (not the counter page's).
    fn releases(w: &World) -> Vec<String> {
        events(w, "card.codes_release")
            .into_iter()
            .map(|e| e.details.get("for").cloned().unwrap_or_default())
            .filter(|f| f.starts_with("dispatch job"))
            .collect()
    }

    fn count(w: &World, action: &str) -> usize {
        events(w, action).len()
    }

    #[test]
    fn an_active_card_releases_codes_destination_and_name_audited() {
        let (w, job) = claimed("counter(2)+sms");
        let r = w
            .cms()
            .release_for_job(&*w.hsm, w.audit(), job.id, today(), &actor())
            .unwrap();
        assert_eq!(r.job.id, job.id);
        assert!(
            matches!(&r.destination, ReleaseDestination::Mobile(m) if m.as_str() == "+393331234567")
        );
        assert_eq!(r.name.as_str(), "Nicolò D'Angelo");
        let shown = format!("{r:?}");
        assert!(
            !shown.contains("+39") && !shown.contains("Nicol"),
            "{shown}"
        );
        let pin = String::from_utf8(r.codes.pin.expose_secret().to_vec()).unwrap();
        assert!(!shown.contains(&pin), "{shown}");
        assert_eq!(releases(&w), vec![format!("dispatch job {}", job.id)]);
        // An e-mail job goes to the e-mail address.
        let (w, job) = claimed("email");
        let r = w
            .cms()
            .release_for_job(&*w.hsm, w.audit(), job.id, today(), &actor())
            .unwrap();
        assert!(
            matches!(&r.destination, ReleaseDestination::Email(e) if e.as_str() == "h0@example.it")
        );
    }

    #[test]
    fn a_suspended_card_is_refused_and_nothing_released() {
        let (w, job) = claimed("email");
        w.change(1, &Change::Suspend(Reason::Lost)).unwrap();
        let err = w
            .cms()
            .release_for_job(&*w.hsm, w.audit(), job.id, today(), &actor())
            .unwrap_err();
        assert!(matches!(err, Error::WrongState { .. }), "{err}");
        assert!(releases(&w).is_empty());
    }

    #[test]
    fn a_changed_contact_is_refused_and_a_job_not_sending_too() {
        let (w, job) = claimed("counter(2)+sms");
        std::thread::sleep(std::time::Duration::from_millis(2));
        holder(&w, "+393339999999");
        let err = w
            .cms()
            .release_for_job(&*w.hsm, w.audit(), job.id, today(), &actor())
            .unwrap_err();
        assert!(
            matches!(
                &err,
                Error::Refusal(Refusal::ContactChanged {
                    contact: "mobile number",
                    ..
                })
            ),
            "{err}"
        );
        assert!(releases(&w).is_empty());
        // The job once sent is no longer `sending`.
        w.cms().mark_sent(w.audit(), job.id, "peer-1").unwrap();
        let err = w
            .cms()
            .release_for_job(&*w.hsm, w.audit(), job.id, today(), &actor())
            .unwrap_err();
        assert!(matches!(err, Error::WrongState { .. }), "{err}");
    }

    #[test]
    fn claim_and_release_takes_only_its_channel_in_one_commit() {
        let w = World::new();
        holder(&w, "+393331234567");
        w.import_codes(&[serial(1)]);
        w.change(1, &holder_activation()).unwrap();
        w.cms()
            .request_dispatch(
                &*w.hsm,
                w.audit(),
                &serial(1),
                "counter(2)+sms",
                today(),
                &actor(),
            )
            .unwrap();
        hand_over(&w, 1);
        let now = u64::MAX / 2;
        let none = w
            .cms()
            .claim_and_release(&*w.hsm, w.audit(), Channel::Email, now, 10, today())
            .unwrap();
        assert!(none.is_empty(), "the e-mail lane claimed an SMS job");
        let got = w
            .cms()
            .claim_and_release(&*w.hsm, w.audit(), Channel::Sms, now, 10, today())
            .unwrap();
        assert_eq!(got.len(), 1);
        let (job, release) = &got[0];
        assert_eq!(job.state, crate::JobState::Sending);
        assert_eq!(job.attempts, 1);
        let release = release.as_ref().unwrap();
        assert_eq!(release.job.id, job.id);
        assert_eq!(
            w.cms().job(job.id).unwrap().unwrap().state,
            crate::JobState::Sending
        );
        // One event for the one release, and nothing left to claim.
        assert_eq!(releases(&w), vec![format!("dispatch job {}", job.id)]);
        assert!(w
            .cms()
            .claim_and_release(&*w.hsm, w.audit(), Channel::Sms, now, 10, today())
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_job_refused_for_the_cards_state_is_cancelled_and_never_falls_back() {
        // Issue 23, item 5: an SMS job refused because the card was suspended must not become
        // `dead` and fall back to e-mail once the card is active again.
        for (case, reason) in [
            ("suspended", "card_suspended"),
            ("revoked", "card_revoked"),
            ("contact", "contact_changed"),
        ] {
            let w = World::new();
            holder(&w, "+393331234567");
            w.import_codes(&[serial(1)]);
            w.change(1, &holder_activation()).unwrap();
            w.cms()
                .request_dispatch(&*w.hsm, w.audit(), &serial(1), "sms", today(), &actor())
                .unwrap();
            match case {
                "suspended" => drop(w.change(1, &Change::Suspend(Reason::Lost)).unwrap()),
                "revoked" => drop(w.change(1, &Change::Revoke(Reason::Stolen)).unwrap()),
                _ => {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                    holder(&w, "+393339999999");
                }
            }
            let now = u64::MAX / 2;
            let got = w
                .cms()
                .claim_and_release(&*w.hsm, w.audit(), Channel::Sms, now, 10, today())
                .unwrap();
            assert_eq!(got.len(), 1, "{case}");
            let (job, refused) = &got[0];
            assert!(refused.is_err(), "{case}");
            assert!(releases(&w).is_empty(), "{case}");
            if case == "suspended" {
                w.change(1, &Change::Reactivate).unwrap();
            }
            // What the delivery worker does with a job that comes back `sending`: a permanent
            // failure, with the policy's fallback.
            if job.state == crate::JobState::Sending {
                let _ = w.cms().mark_failed(
                    &*w.hsm,
                    w.audit(),
                    job.id,
                    false,
                    "release refused",
                    now,
                    &crate::OutboxPolicy::default(),
                );
            }
            let stored = w.cms().job(job.id).unwrap().unwrap();
            assert_eq!(stored.state.as_str(), "cancelled", "{case}: {stored:?}");
            assert_eq!(stored.cancel_reason.as_deref(), Some(reason), "{case}");
            // One job, no fallback to e-mail, nothing left to claim.
            assert_eq!(w.cms().jobs_of(&serial(1)).unwrap().len(), 1, "{case}");
            assert_eq!(count(&w, "dispatch.fallback"), 0, "{case}");
            assert_eq!(count(&w, "dispatch.dead"), 0, "{case}");
            let cancel = events(&w, "dispatch.cancel");
            assert_eq!(cancel.len(), 1, "{case}");
            assert_eq!(cancel[0].details["reason"], reason);
            assert!(w
                .cms()
                .claim_due(now, &Channel::REMOTE, 10)
                .unwrap()
                .is_empty());
            let r = w.audit().verify().unwrap();
            assert!(r.intact(), "{r:?}");
        }
    }

    /// Issue 20: one delivery turn marks the jobs sent since the last turn and claims and
    /// releases the next ones in one commit: every change and event lands together (the
    /// `dispatch.sent` events first, each release's right after), a job named twice is marked
    /// once, and a refused mark changes nothing else.
    #[test]
    fn settle_and_claim_marks_sent_and_releases_the_next_in_one_commit() {
        let w = World::new();
        let entry = HolderEntry {
            first_line: 2,
            codice_fiscale: cf(0),
            given_names: "Nicolò".into(),
            surname: "D'Angelo".into(),
            birth_date: date("1985-12-10"),
            email: Some("h0@example.it".into()),
            mobile: Some("+393331234567".into()),
            address: None,
            deceased: false,
            cards: (1..=3)
                .map(|c| CardEntry {
                    line: 2,
                    serial: serial(c),
                    expiry: date("2030-01-01"),
                    replaced_by: None,
                })
                .collect(),
        };
        w.cms()
            .import_registry(&*w.hsm, w.audit(), &[entry], today(), &actor())
            .unwrap();
        w.import_codes(&[serial(1), serial(2), serial(3)]);
        for c in 1..=3 {
            w.change(c, &holder_activation()).unwrap();
            w.cms()
                .request_dispatch(&*w.hsm, w.audit(), &serial(c), "email", today(), &actor())
                .unwrap();
        }
        let now = u64::MAX / 2;
        let first = w
            .cms()
            .claim_and_release(&*w.hsm, w.audit(), Channel::Email, now, 1, today())
            .unwrap();
        assert_eq!(first.len(), 1);
        let sent_job = first[0].0.id;
        let seq_before = w.audit().durable_seq();
        let turn = w
            .cms()
            .settle_and_claim(
                &*w.hsm,
                w.audit(),
                &[
                    (sent_job, "250-queued-1".into()),
                    (sent_job, "250-queued-1".into()),
                    (424_242, "x".into()),
                ],
                &[(Channel::Sms, 5), (Channel::Email, 5)],
                now,
                today(),
            )
            .unwrap();
        assert_eq!(turn.sent.len(), 3);
        assert_eq!(turn.sent[0].as_ref().unwrap().state, JobState::Sent);
        assert_eq!(turn.sent[1].as_ref().unwrap().state, JobState::Sent);
        assert!(matches!(
            turn.sent[2],
            Err(Error::Missing(Missing::Job(424_242)))
        ));
        assert_eq!(turn.claimed.len(), 2, "the two other e-mail jobs");
        for (job, release) in &turn.claimed {
            assert_eq!(job.state, JobState::Sending);
            assert_eq!(release.as_ref().unwrap().job.id, job.id);
            assert_ne!(job.id, sent_job);
        }
        assert_eq!(
            w.cms().job(sent_job).unwrap().unwrap().state,
            JobState::Sent
        );
        // One `dispatch.sent` event (the job named twice is marked once), then the two
        // releases, all durable when the turn returns.
        assert_eq!(count(&w, "dispatch.sent"), 1);
        let sent_event = &events(&w, "dispatch.sent")[0];
        assert_eq!(sent_event.seq, seq_before + 1);
        let mut released: Vec<u64> = events(&w, "card.codes_release")
            .iter()
            .filter(|e| e.seq > seq_before)
            .map(|e| e.seq)
            .collect();
        released.sort_unstable();
        assert_eq!(released, [seq_before + 2, seq_before + 3]);
        assert!(w.audit().durable_seq() >= seq_before + 3);
        // Nothing is left to claim, and a turn with nothing to do writes nothing.
        let idle = w
            .cms()
            .settle_and_claim(
                &*w.hsm,
                w.audit(),
                &[],
                &[(Channel::Email, 5)],
                now,
                today(),
            )
            .unwrap();
        assert!(idle.sent.is_empty() && idle.claimed.is_empty());
        assert_eq!(w.audit().durable_seq(), seq_before + 3);
        let r = w.audit().verify().unwrap();
        assert!(r.intact(), "{r:?}");
    }

    #[test]
    fn mark_sent_many_marks_each_in_one_commit_and_refuses_one_alone() {
        let (w, job) = claimed("email");
        let got = w
            .cms()
            .mark_sent_many(
                w.audit(),
                &[(job.id, "250-queued-1".into()), (424_242, "x".into())],
            )
            .unwrap();
        assert_eq!(got[0].as_ref().unwrap().state, crate::JobState::Sent);
        assert!(
            matches!(got[1], Err(Error::Missing(Missing::Job(424_242)))),
            "{:?}",
            got[1]
        );
        assert_eq!(count(&w, "dispatch.sent"), 1);
        // Marked again: left as it is, no new event.
        let again = w
            .cms()
            .mark_sent_many(w.audit(), &[(job.id, "250-queued-1".into())])
            .unwrap();
        assert_eq!(again[0].as_ref().unwrap().state, crate::JobState::Sent);
        assert_eq!(count(&w, "dispatch.sent"), 1);
    }
}
