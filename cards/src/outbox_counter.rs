//! The counter page as part A of the card's dispatch in force (rule 14a): one dispatch, one
//! plan, one set of digit ranges.
//!
//! [`Cards::print_counter_part`] finds the card's dispatch in force; without a split one (its
//! part A a `counter` job) there is no counter page. A plan named by the caller must be that
//! dispatch's plan, else the refusal names the plan in force. Under the ops lock it checks the
//! card (`active`, codes held), releases the codes, lets the caller render the page, and only
//! if the page was made commits, in one batch: the release (`card.codes_release`), part A's
//! job `handed_over` (when, by whom, prints) with a `dispatch.handover` event, and part B's
//! job moved from `awaiting_counter` to `queued`. A second print is only an explicit reprint
//! (`dispatch.reprint`, the print count on the job).
//!
//! # The split rule
//!
//! Part B of a `counter(N)+…` plan is made `awaiting_counter` and is not claimed by any worker
//! until part A is recorded as handed over here; plans without a counter part (`sms`, `email`,
//! `mailer`) have no such wait.

use super::date::Date;
use super::outbox::{by, job_event, parse_plan, put_job, Channel, Job, JobState, Part, Plan};
use super::registry::Cards;
use vault::Actor;
use vault::AuditLog;
use vault::Batch;
use vault::CardCodes;
use vault::Hsm;
use vault::{Error, Refusal, Result};

/// What the counter page must show: part A of this plan (in `dispatch`'s grammar, with part
/// B's channel), of this dispatch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterSlip {
    /// The dispatch in force.
    pub dispatch: u64,
    /// Its plan as the renderer cuts it: `counter(N)+sms` or `counter(N)+email`.
    pub courier_plan: String,
    /// Whether this print is a reprint.
    pub reprint: bool,
}

/// What [`Cards::print_counter_part`] recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterPrint {
    /// The slip the page was rendered for.
    pub slip: CounterSlip,
    /// Part A's job, as now recorded (`handed_over`).
    pub job: Job,
    /// Part B's jobs released to their courier by this hand-over (none for a reprint).
    pub released: Vec<u64>,
}

impl Cards {
    /// Prints part A of the card's dispatch in force at the counter: see the module docs.
    /// `plan`, if given, must be the dispatch's plan (`counter(N)+remote` matches either
    /// remote channel). `render` gets the codes and the slip and makes the page; if it fails,
    /// nothing is recorded and its error comes back as the inner `Err`.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a plan that does not parse; [`Error::Missing`] for an unknown
    /// card; [`Error::WrongState`] for a card not `active`; [`Error::Refusal`] when the card
    /// has no split dispatch in force, when `plan` is not its plan (the message names the plan
    /// in force), when part A was already handed over and `reprint` is not set, when part A
    /// was cancelled, or when the codes are not held; [`Error::Sealed`]; store and audit
    /// errors.
    #[allow(clippy::too_many_arguments)]
    pub fn print_counter_part<T, E>(
        &self,
        hsm: &dyn Hsm,
        audit: &AuditLog,
        serial: &str,
        plan: Option<&str>,
        reprint: bool,
        today: Date,
        actor: &Actor,
        render: impl FnOnce(&CardCodes, &CounterSlip) -> std::result::Result<T, E>,
    ) -> Result<std::result::Result<(T, CounterPrint), E>> {
        let asked = plan.map(parse_plan).transpose()?;
        let _ops = self.ops_lock();
        self.active_card(audit, serial, today, actor)?;
        let no_split = || {
            Error::from(Refusal::NoSplitDispatch {
                card: serial.to_owned(),
            })
        };
        let dispatch = self.dispatch_in_force(serial)?.ok_or_else(no_split)?;
        let Plan::Counter { digits, remote } = dispatch.request.parsed_plan()? else {
            return Err(no_split());
        };
        let latest = |part: Part| {
            dispatch
                .jobs
                .iter()
                .filter(|j| j.part == part)
                .max_by_key(|j| j.id)
        };
        let a = latest(Part::A)
            .filter(|j| j.channel == Channel::Counter)
            .ok_or_else(no_split)?
            .clone();
        let b_channel = latest(Part::B)
            .map(|j| j.channel)
            .or((remote != Channel::Remote).then_some(remote))
            .unwrap_or(Channel::Sms);
        let in_force = format!("counter({digits})+{b_channel}");
        if let Some(asked) = asked {
            let fits = match asked {
                Plan::Counter {
                    digits: d,
                    remote: r,
                } => d == digits && (r == Channel::Remote || r == b_channel || r == remote),
                Plan::Whole(_) => false,
            };
            if !fits {
                return Err(Refusal::PlanInForce {
                    card: serial.to_owned(),
                    plan: in_force,
                    dispatch: dispatch.request.id,
                }
                .into());
            }
        }
        let reprint = match a.state {
            JobState::Counter => false,
            JobState::HandedOver if reprint => true,
            JobState::HandedOver => {
                return Err(Refusal::HandedOver {
                    card: serial.to_owned(),
                    dispatch: dispatch.request.id,
                    job: a.id,
                    by: a.handed_over_by.clone().unwrap_or_else(|| "?".to_owned()),
                }
                .into())
            }
            other => {
                return Err(Refusal::CounterPartState {
                    card: serial.to_owned(),
                    dispatch: dispatch.request.id,
                    job: a.id,
                    state: other.to_string(),
                }
                .into())
            }
        };
        let slip = CounterSlip {
            dispatch: dispatch.request.id,
            courier_plan: in_force,
            reprint,
        };
        let purpose = if reprint {
            format!("counter part A reprint, dispatch {}", slip.dispatch)
        } else {
            format!("counter part A, dispatch {}", slip.dispatch)
        };
        let (pending, release) = self.release_locked(hsm, audit, serial, &purpose, today, actor)?;
        let now = self.now_ms();
        let mut b = Batch::new();
        let mut job = a.clone();
        job.prints += 1;
        job.attempts += 1;
        job.updated_ms = now;
        let mut events = vec![release];
        let mut released = Vec::new();
        if reprint {
            put_job(&mut b, Some(&a), &job)?;
            events.push(
                by(job_event("dispatch.reprint", &job), actor)
                    .detail("print", job.prints.to_string()),
            );
        } else {
            job.state = JobState::HandedOver;
            job.handed_over_ms = Some(now);
            job.handed_over_by = Some(actor.id.clone());
            job.sent_ms = Some(now);
            put_job(&mut b, Some(&a), &job)?;
            for old in dispatch
                .jobs
                .iter()
                .filter(|j| j.state == JobState::AwaitingCounter)
            {
                let mut queued = old.clone();
                queued.state = JobState::Queued;
                queued.next_attempt_ms = now;
                queued.updated_ms = now;
                put_job(&mut b, Some(old), &queued)?;
                released.push(queued.id);
            }
            let ids: Vec<String> = released.iter().map(u64::to_string).collect();
            events.push(
                by(job_event("dispatch.handover", &job), actor).detail("released", ids.join(",")),
            );
        }
        // The page is made from the codes before anything is written (a page that cannot be
        // made records nothing), and handed back only once the release and the handover are
        // one durable commit.
        let page =
            match audit.commit_release_with(b, events, pending, |codes| render(codes, &slip))? {
                Ok(page) => page,
                Err(e) => return Ok(Err(e)),
            };
        Ok(Ok((
            page,
            CounterPrint {
                slip,
                job,
                released,
            },
        )))
    }
}
