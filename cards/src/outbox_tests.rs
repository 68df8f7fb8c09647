//! The outbox on sled: requests and their events together, refusals that write nothing,
//! rule 13, claims across a crash, backoff to `dead`, fallback, resend, receipts, status and the
//! overdue list; the audit chain verifies after each.

use super::outbox::{Channel, Fallback, Job, JobState, OutboxPolicy, Part, ReceiptOutcome};
use super::registry_parse::{CardEntry, HolderEntry};
use super::tests::{actor, cf, date, holder_activation, serial, today, World};
use super::{Change, Reason};
use vault::Query;
use vault::Tree;
use vault::{Error, Missing, Refusal};

const EXPIRY: &str = "2030-01-01";

/// Imports holder `h` with card `c` and these contacts.
fn holder(w: &World, h: usize, cards: &[usize], email: Option<&str>, mobile: Option<&str>) {
    let entry = HolderEntry {
        first_line: 2,
        codice_fiscale: cf(h),
        given_names: format!("Nicolò {h}"),
        surname: "D'Angelo".into(),
        birth_date: date("1985-12-10"),
        email: email.map(str::to_owned),
        mobile: mobile.map(str::to_owned),
        address: Some("Via Roma 1, 00100 Roma".into()),
        deceased: false,
        cards: cards
            .iter()
            .map(|&c| CardEntry {
                line: 2,
                serial: serial(c),
                expiry: date(EXPIRY),
                replaced_by: None,
            })
            .collect(),
    };
    w.cms()
        .import_registry(&*w.hsm, w.audit(), &[entry], today(), &actor())
        .unwrap();
}

const MOBILE: Option<&str> = Some("+393331234567");
const EMAIL: Option<&str> = Some("h0@example.it");

/// Holder 0 (mobile and e-mail) owns cards 1–3, active, with codes.
fn world() -> World {
    let w = World::new();
    holder(&w, 0, &[1, 2, 3], EMAIL, MOBILE);
    w.import_codes(&[serial(1), serial(2), serial(3)]);
    for c in [1, 2, 3] {
        w.change(c, &holder_activation()).unwrap();
    }
    w
}

fn request(w: &World, c: usize, plan: &str) -> vault::Result<super::Dispatched> {
    w.cms()
        .request_dispatch(&*w.hsm, w.audit(), &serial(c), plan, today(), &actor())
}

/// Prints part A of card `c`'s dispatch in force at the counter (a page that renders), as
/// `plan` if given; a reprint if `reprint`.
pub(super) fn print_a(
    w: &World,
    c: usize,
    plan: Option<&str>,
    reprint: bool,
) -> vault::Result<super::CounterPrint> {
    w.cms()
        .print_counter_part(
            &*w.hsm,
            w.audit(),
            &serial(c),
            plan,
            reprint,
            today(),
            &actor(),
            |codes, slip| Ok::<_, ()>((codes.pin.expose_secret().len(), slip.clone())),
        )
        .map(|r| r.unwrap().1)
}

/// Hands part A of card `c`'s split dispatch over at the counter, so that part B may go.
pub(super) fn hand_over(w: &World, c: usize) {
    let p = print_a(w, c, None, false).unwrap();
    assert_eq!(p.job.state, JobState::HandedOver);
}

/// The events of `action`, oldest first (up to 1,000).
pub(super) fn events(w: &World, action: &str) -> Vec<vault::Event> {
    w.audit()
        .query(&Query {
            action: Some(action.into()),
            limit: 1000,
            ..Query::default()
        })
        .unwrap()
        .events
}

fn rows(w: &World, tree: Tree) -> usize {
    w.cms().store.range(tree, &[], None, 100_000).unwrap().len()
}

fn outbox_rows(w: &World) -> Vec<usize> {
    [
        Tree::Outbox,
        Tree::OutboxDue,
        Tree::OutboxCards,
        Tree::OutboxKeys,
        Tree::OutboxOpen,
        Tree::DispatchRequests,
    ]
    .map(|t| rows(w, t))
    .to_vec()
}

fn delivery(w: &World, c: usize) -> Vec<(String, String)> {
    w.cms()
        .status(w.audit(), &serial(c), today(), &actor())
        .unwrap()
        .delivery
}

fn pair(part: &str, state: &str) -> (String, String) {
    (part.to_owned(), state.to_owned())
}

fn policy(max_attempts: u32, fallback: Fallback) -> OutboxPolicy {
    OutboxPolicy {
        max_attempts,
        backoff_base_ms: 1000,
        backoff_max_ms: 60_000,
        jitter: false,
        fallback,
    }
}

const NO_FALLBACK: Fallback = Fallback {
    sms_to_email: false,
    counter_reprint: false,
};

/// Claims every job due at `now` and returns the one for card `c`.
fn claim(w: &World, now: u64, c: usize) -> Job {
    let jobs = w.cms().claim_due(now, &Channel::REMOTE, 100).unwrap();
    let mine: Vec<Job> = jobs.into_iter().filter(|j| j.serial == serial(c)).collect();
    assert_eq!(mine.len(), 1, "{mine:?}");
    mine.into_iter().next().unwrap()
}

fn verify(w: &World) {
    let r = w.audit().verify().unwrap();
    assert!(r.intact(), "{r:?}");
}

fn now() -> u64 {
    use vault::Clock;
    vault::SystemClock.now_ms()
}

#[test]
fn a_request_writes_its_jobs_and_its_event_together() {
    let w = world();
    let d = request(&w, 1, "counter(2)+sms").unwrap();
    assert_eq!(d.jobs.len(), 2);
    let (a, b) = (&d.jobs[0], &d.jobs[1]);
    assert_eq!(
        (a.part, a.channel, a.state),
        (Part::A, Channel::Counter, JobState::Counter)
    );
    assert_eq!(
        (b.part, b.channel, b.state),
        (Part::B, Channel::Sms, JobState::AwaitingCounter)
    );
    assert_eq!(b.courier_plan(), "counter(2)+sms");
    assert_eq!(b.idempotency_key.len(), 32);
    assert_ne!(a.idempotency_key, b.idempotency_key);
    let ev = events(&w, "dispatch.request");
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].subject, serial(1));
    assert_eq!(ev[0].details["plan"], "counter(2)+sms");
    assert_eq!(
        ev[0].details["jobs"],
        format!("A:counter:{},B:sms:{}", a.id, b.id)
    );
    assert_eq!(
        w.cms().dispatch_request(d.request.id).unwrap().unwrap(),
        d.request
    );
    assert_eq!(
        delivery(&w, 1),
        vec![pair("A", "counter"), pair("B", "awaiting_counter")]
    );
    // No code and no contact in a stored job.
    for (_, v) in w.cms().store.range(Tree::Outbox, &[], None, 100).unwrap() {
        let text = String::from_utf8(v).unwrap();
        assert!(!text.contains("12345") && !text.contains("3331234567") && !text.contains('@'));
    }
    // A second request while the first is under way is refused, and writes nothing.
    let before = outbox_rows(&w);
    let err = request(&w, 1, "email").unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Refusal(Refusal::DispatchInForce {
                under_way: true,
                ..
            })
        ),
        "{err}"
    );
    assert_eq!(outbox_rows(&w), before);
    // The other plan forms.
    let e = request(&w, 2, "email").unwrap();
    assert_eq!(
        e.jobs
            .iter()
            .map(|j| (j.part, j.channel))
            .collect::<Vec<_>>(),
        vec![(Part::Whole, Channel::Email)]
    );
    assert_eq!(e.jobs[0].courier_plan(), "whole");
    let m = request(&w, 3, " mailer ").unwrap();
    assert_eq!(m.jobs[0].channel, Channel::Mailer);
    assert!(matches!(
        request(&w, 3, "counter(0)+sms"),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(request(&w, 3, "pigeon"), Err(Error::Invalid(_))));
    verify(&w);
}

#[test]
fn a_refused_request_writes_nothing() {
    let w = world();
    holder(&w, 1, &[4], None, None); // no contact at all
    holder(&w, 2, &[5], EMAIL, MOBILE); // card 5: active, codes never imported
    w.import_codes(&[serial(4)]);
    w.change(4, &holder_activation()).unwrap();
    w.change(5, &holder_activation()).unwrap();
    w.change(2, &Change::Suspend(Reason::Lost)).unwrap();
    w.change(3, &Change::Revoke(Reason::Stolen)).unwrap();
    holder(&w, 0, &[1, 2, 3, 6], EMAIL, MOBILE); // card 6: issued
    w.import_codes(&[serial(6)]);
    let before = outbox_rows(&w);
    let state = |c: usize| match request(&w, c, "counter(2)+sms") {
        Err(Error::WrongState { state, .. }) => state,
        other => panic!("card {c}: {other:?}"),
    };
    assert_eq!(state(2), "suspended");
    assert_eq!(state(3), "revoked");
    assert_eq!(state(6), "issued");
    assert!(matches!(
        request(&w, 9, "sms"),
        Err(Error::Missing(vault::Missing::Card(_)))
    ));
    let refused = |c: usize, plan: &str| match request(&w, c, plan) {
        Err(Error::Refusal(r)) => r,
        other => panic!("card {c} {plan}: {other:?}"),
    };
    assert_eq!(refused(5, "sms"), Refusal::CodesNotHeld { card: serial(5) });
    let none = |contact| Refusal::NoContact {
        card: serial(4),
        contact,
    };
    assert_eq!(refused(4, "counter(2)+sms"), none("mobile number"));
    assert_eq!(refused(4, "email"), none("e-mail address"));
    assert_eq!(
        refused(4, "counter(2)+remote"),
        Refusal::NoRemoteChannel {
            card: serial(4),
            sms: Box::new(none("mobile number")),
            email: Box::new(none("e-mail address")),
        }
    );
    assert_eq!(outbox_rows(&w), before);
    assert!(events(&w, "dispatch.").is_empty());
    verify(&w);
}

#[test]
fn rule_13_a_changed_number_needs_a_new_identification() {
    let w = world();
    let activated = w.cms().card(&serial(1)).unwrap().unwrap().identified_ms();
    assert!(activated.is_some());
    // The same contacts again: nothing changed.
    holder(&w, 0, &[1, 2, 3], EMAIL, MOBILE);
    let h = w.cms().holder("h000001").unwrap().unwrap();
    assert_eq!((h.mobile_changed_ms, h.email_changed_ms), (None, None));
    // A new mobile number.
    std::thread::sleep(std::time::Duration::from_millis(2));
    holder(&w, 0, &[1, 2, 3], EMAIL, Some("+393339999999"));
    let h = w.cms().holder("h000001").unwrap().unwrap();
    assert!(h.mobile_changed_ms.is_some() && h.email_changed_ms.is_none());
    let err = request(&w, 1, "counter(2)+sms").unwrap_err();
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
    // E-mail did not change: it may be used; `remote` picks it.
    let d = request(&w, 2, "counter(2)+remote").unwrap();
    assert_eq!(d.jobs[1].channel, Channel::Email);
    // Re-identification at the counter: audited, and SMS is allowed again.
    std::thread::sleep(std::time::Duration::from_millis(2));
    let st = w
        .change(
            1,
            &Change::Reidentify(super::Activation::Holder {
                document_type: "passaporto".into(),
                document_number: "YA7654321".into(),
                consent_ref: "consent-2026-0099".into(),
            }),
        )
        .unwrap();
    assert_eq!(st.state, super::CardState::Active);
    assert!(st.identified_ms > activated);
    assert_eq!(events(&w, "card.reidentify").len(), 1);
    let d = request(&w, 1, "counter(2)+sms").unwrap();
    assert_eq!(d.jobs[1].channel, Channel::Sms);
    // Re-identification needs an active card.
    w.change(3, &Change::Suspend(Reason::Lost)).unwrap();
    let err = w.change(
        3,
        &Change::Reidentify(match holder_activation() {
            Change::Activate(a) => a,
            _ => unreachable!(),
        }),
    );
    assert!(matches!(err, Err(Error::WrongState { .. })), "{err:?}");
    verify(&w);
}

#[test]
fn a_job_claimed_before_a_crash_is_claimed_again_with_the_same_key() {
    let mut w = world();
    let d = request(&w, 1, "counter(2)+sms").unwrap();
    hand_over(&w, 1);
    let t = now();
    let first = claim(&w, t, 1);
    assert_eq!((first.state, first.attempts), (JobState::Sending, 1));
    assert_eq!(first.idempotency_key, d.jobs[1].idempotency_key);
    assert!(
        w.cms()
            .claim_due(t, &Channel::REMOTE, 100)
            .unwrap()
            .is_empty(),
        "claimed once"
    );
    // Crash: the store is dropped and reopened without marking the job.
    w.restart();
    assert_eq!(
        w.cms().job(first.id).unwrap().unwrap().state,
        JobState::Sending
    );
    assert_eq!(w.cms().recover(w.audit()).unwrap(), 1);
    assert_eq!(w.cms().recover(w.audit()).unwrap(), 0);
    assert_eq!(delivery(&w, 1)[1], pair("B", "queued"));
    let again = claim(&w, now(), 1);
    assert_eq!(again.id, first.id);
    assert_eq!(again.idempotency_key, first.idempotency_key);
    assert_eq!(again.attempts, 2);
    let sent = w.cms().mark_sent(w.audit(), again.id, "kannel-42").unwrap();
    assert_eq!(sent.state, JobState::Sent);
    // A repeat is harmless.
    w.cms().mark_sent(w.audit(), again.id, "kannel-42").unwrap();
    assert_eq!(events(&w, "dispatch.sent").len(), 1);
    assert_eq!(events(&w, "dispatch.recover").len(), 1);
    verify(&w);
}

#[test]
fn temporary_failures_back_off_and_end_dead() {
    let w = world();
    request(&w, 1, "sms").unwrap();
    let p = policy(3, NO_FALLBACK);
    let t0 = now();
    let mut t = t0;
    for attempt in 1..=3u32 {
        let job = claim(&w, t, 1);
        assert_eq!(job.attempts, attempt);
        let failed = w
            .cms()
            .mark_failed(
                &*w.hsm,
                w.audit(),
                job.id,
                true,
                "421 try later 12345678",
                t,
                &p,
            )
            .unwrap();
        if attempt < 3 {
            assert_eq!(failed.state, JobState::Failed);
            let wait = p.backoff(attempt);
            assert_eq!(wait, 1000 << (attempt - 1));
            assert_eq!(failed.next_attempt_ms, t + wait);
            assert!(w
                .cms()
                .claim_due(t + wait - 1, &Channel::REMOTE, 100)
                .unwrap()
                .is_empty());
            t += wait;
        } else {
            assert_eq!(failed.state, JobState::Dead);
            assert!(!failed.needs_counter_reprint);
        }
        // The error is kept, without the digit run.
        assert_eq!(failed.last_error.as_deref(), Some("421 try later ########"));
    }
    assert!(w
        .cms()
        .claim_due(t + 1_000_000, &Channel::REMOTE, 100)
        .unwrap()
        .is_empty());
    assert_eq!(delivery(&w, 1), vec![pair("whole", "dead")]);
    let dead = events(&w, "dispatch.dead");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].details["attempts"], "3");
    assert_eq!(dead[0].details["failure"], "attempts_exhausted");
    assert!(events(&w, "dispatch.fallback").is_empty());
    // Marking a dead job again is refused.
    assert!(matches!(
        w.cms().mark_failed(&*w.hsm, w.audit(), 1, true, "x", t, &p),
        Err(Error::WrongState { .. })
    ));
    assert_eq!(OutboxPolicy::default().backoff(40), 3_600_000);
    verify(&w);
}

#[test]
fn a_paused_lane_gives_the_attempt_back_and_never_kills_the_job() {
    let w = world();
    request(&w, 1, "sms").unwrap();
    let p = policy(2, NO_FALLBACK);
    let mut t = now();
    // Far more lane-wide failures than attempts: the job stays queued with no attempt spent.
    for _ in 0..5 {
        let job = claim(&w, t, 1);
        assert_eq!(job.attempts, 1);
        let paused = w
            .cms()
            .mark_paused(
                job.id,
                "gateway_auth",
                "kannel sendsms: http 403",
                t,
                t + 500,
            )
            .unwrap();
        assert_eq!(paused.state, JobState::Queued);
        assert_eq!(paused.attempts, 0);
        assert_eq!(paused.failure_reason.as_deref(), Some("gateway_auth"));
        assert_eq!(paused.next_attempt_ms, t + 500);
        assert!(w
            .cms()
            .claim_due(t + 499, &Channel::REMOTE, 100)
            .unwrap()
            .is_empty());
        t += 500;
    }
    assert!(events(&w, "dispatch.dead").is_empty());
    assert!(events(&w, "dispatch.fallback").is_empty());
    // A per-job failure after that keeps its code, and the job's record shows it.
    let job = claim(&w, t, 1);
    let failed = w
        .cms()
        .mark_failed_coded(
            &*w.hsm,
            w.audit(),
            job.id,
            false,
            "rejected_number",
            "kannel sendsms: http 400",
            t,
            &p,
        )
        .unwrap();
    assert_eq!(failed.state, JobState::Dead);
    assert_eq!(failed.failure_reason.as_deref(), Some("rejected_number"));
    assert_eq!(
        w.cms()
            .job(job.id)
            .unwrap()
            .unwrap()
            .failure_reason
            .as_deref(),
        Some("rejected_number")
    );
    assert!(matches!(
        w.cms().mark_paused(job.id, "Bad Code", "x", t, t),
        Err(Error::Invalid(_))
    ));
    verify(&w);
}

#[test]
fn a_dead_sms_falls_back_to_email_then_to_a_counter_reprint() {
    let w = world();
    let d = request(&w, 1, "counter(2)+sms").unwrap();
    hand_over(&w, 1);
    let p = policy(5, Fallback::default());
    let t = now();
    let sms = claim(&w, t, 1);
    let dead = w
        .cms()
        .mark_failed(
            &*w.hsm,
            w.audit(),
            sms.id,
            false,
            "unknown subscriber",
            t,
            &p,
        )
        .unwrap();
    assert_eq!(dead.state, JobState::Dead);
    let email_id = dead.superseded_by.expect("a fallback job");
    let email = w.cms().job(email_id).unwrap().unwrap();
    assert_eq!(
        (
            email.part,
            email.channel,
            email.state,
            email.origin.as_str()
        ),
        (Part::B, Channel::Email, JobState::Queued, "fallback")
    );
    assert_eq!(email.courier_plan(), "counter(2)+email");
    assert_eq!(email.request, d.request.id);
    assert_ne!(email.idempotency_key, sms.idempotency_key);
    assert_eq!(
        delivery(&w, 1),
        vec![pair("A", "handed_over"), pair("B", "queued")]
    );
    let fb = events(&w, "dispatch.fallback");
    assert_eq!(fb.len(), 1);
    assert_eq!(fb[0].details["to"], "email");
    // The e-mail dies too: the part needs a counter reprint, and shows in the overdue list.
    let email = claim(&w, t, 1);
    let dead = w
        .cms()
        .mark_failed(
            &*w.hsm,
            w.audit(),
            email.id,
            false,
            "550 no such user",
            t,
            &p,
        )
        .unwrap();
    assert!(dead.needs_counter_reprint && dead.superseded_by.is_none());
    assert_eq!(delivery(&w, 1)[1], pair("B", "needs_counter_reprint"));
    assert_eq!(events(&w, "dispatch.fallback").len(), 2);
    let overdue = w.cms().overdue(now() + 10_000, 5_000, 100).unwrap();
    assert_eq!(
        overdue.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![email.id]
    );
    assert!(w.cms().overdue(now(), 3_600_000, 100).unwrap().is_empty());
    verify(&w);
}

#[test]
fn no_email_fallback_to_a_holder_without_email() {
    let w = World::new();
    holder(&w, 1, &[4], None, MOBILE);
    w.import_codes(&[serial(4)]);
    w.change(4, &holder_activation()).unwrap();
    request(&w, 4, "counter(2)+sms").unwrap();
    hand_over(&w, 4);
    let t = now();
    let sms = claim(&w, t, 4);
    let dead = w
        .cms()
        .mark_failed(
            &*w.hsm,
            w.audit(),
            sms.id,
            false,
            "bad number",
            t,
            &OutboxPolicy::default(),
        )
        .unwrap();
    assert!(dead.needs_counter_reprint && dead.superseded_by.is_none());
    let fb = events(&w, "dispatch.fallback");
    assert_eq!(fb[0].details["to"], "counter_reprint");
    assert!(fb[0].details["email_refused"].contains("no registered e-mail"));
    verify(&w);
}

#[test]
fn resend_makes_exactly_one_job_for_the_named_part() {
    let w = world();
    request(&w, 1, "counter(2)+sms").unwrap();
    hand_over(&w, 1);
    let t = now();
    let b = claim(&w, t, 1);
    // Not while it is being sent.
    let resend = |part| {
        w.cms()
            .resend_part(&*w.hsm, w.audit(), &serial(1), part, today(), &actor())
    };
    assert!(matches!(
        resend(Part::B),
        Err(Error::Refusal(Refusal::PartSending { dispatch: None, job, .. })) if job == b.id
    ));
    w.cms().mark_sent(w.audit(), b.id, "smsc-1").unwrap();
    let before = w.cms().jobs_of(&serial(1)).unwrap();
    let new = resend(Part::B).unwrap();
    let after = w.cms().jobs_of(&serial(1)).unwrap();
    assert_eq!(after.len(), before.len() + 1);
    assert_eq!(
        (new.part, new.channel, new.state, new.replaces),
        (Part::B, Channel::Sms, JobState::Queued, Some(b.id))
    );
    let old = w.cms().job(b.id).unwrap().unwrap();
    assert_eq!(
        (old.state, old.superseded_by),
        (JobState::Sent, Some(new.id))
    );
    assert_eq!(delivery(&w, 1)[1], pair("B", "queued"));
    // A resend of a queued part replaces it: still one job to send.
    let newer = resend(Part::B).unwrap();
    assert_eq!(
        w.cms().job(new.id).unwrap().unwrap().state,
        JobState::Superseded
    );
    let due = w.cms().claim_due(now(), &Channel::REMOTE, 100).unwrap();
    assert_eq!(due.iter().map(|j| j.id).collect::<Vec<_>>(), vec![newer.id]);
    assert!(matches!(
        resend(Part::A),
        Err(Error::Refusal(Refusal::CounterPart { part, .. })) if part == "A"
    ));
    assert!(matches!(
        resend(Part::Whole),
        Err(Error::Missing(Missing::PartDispatch { part, .. })) if part == "whole"
    ));
    let ev = events(&w, "dispatch.resend");
    assert_eq!(ev.len(), 2);
    assert_eq!(ev[0].details["part"], "B");
    assert_eq!(ev[0].actor, "op1");
    // Not for a card that is not active.
    w.change(1, &Change::Suspend(Reason::Lost)).unwrap();
    assert!(
        matches!(resend(Part::B), Err(Error::WrongState { state, .. }) if state == "suspended")
    );
    verify(&w);
}

#[test]
fn receipts_move_parts_to_delivered() {
    let w = world();
    request(&w, 1, "counter(2)+sms").unwrap();
    hand_over(&w, 1);
    let t = now();
    let p = OutboxPolicy::default();
    let job = claim(&w, t, 1);
    w.cms().mark_sent(w.audit(), job.id, "dlr-7").unwrap();
    assert_eq!(
        w.cms().overdue(t + 10_000, 1_000, 10).unwrap().len(),
        1,
        "sms awaits its receipt"
    );
    let receipt = |key: &str, ok| {
        w.cms()
            .mark_delivered_by_key(&*w.hsm, w.audit(), key, ok, t, &p)
    };
    let (j, o) = receipt(&job.idempotency_key, true).unwrap();
    assert_eq!((j.state, o), (JobState::Delivered, ReceiptOutcome::Applied));
    let (_, o) = receipt(&job.idempotency_key, true).unwrap();
    assert_eq!(o, ReceiptOutcome::Repeat);
    let (j, o) = receipt(&job.idempotency_key, false).unwrap();
    assert_eq!((j.state, o), (JobState::Delivered, ReceiptOutcome::Repeat));
    assert_eq!(
        delivery(&w, 1),
        vec![pair("A", "handed_over"), pair("B", "delivered")]
    );
    assert_eq!(events(&w, "dispatch.delivered").len(), 1);
    assert!(w.cms().overdue(t + 10_000, 1_000, 10).unwrap().is_empty());
    assert!(matches!(
        receipt(&"ab".repeat(16), true),
        Err(Error::Missing(Missing::JobKey))
    ));
    assert!(matches!(receipt("nope", true), Err(Error::Invalid(_))));
    // A negative receipt counts as a failed attempt.
    request(&w, 2, "sms").unwrap();
    let job = claim(&w, now(), 2);
    w.cms().mark_sent(w.audit(), job.id, "dlr-8").unwrap();
    let (j, o) = receipt(&job.idempotency_key, false).unwrap();
    assert_eq!((j.state, o), (JobState::Failed, ReceiptOutcome::Applied));
    assert_eq!(j.last_error.as_deref(), Some("negative delivery receipt"));
    // An e-mail is done once sent: no receipt is awaited.
    request(&w, 3, "email").unwrap();
    let job = claim(&w, now(), 3);
    w.cms().mark_sent(w.audit(), job.id, "<id@mx>").unwrap();
    assert!(w
        .cms()
        .overdue(t + 10_000, 1_000, 10)
        .unwrap()
        .iter()
        .all(|j| j.serial != serial(3)));
    verify(&w);
}

#[test]
fn the_counter_page_is_part_a_of_the_dispatch_in_force() {
    let w = world();
    let refused = |r: vault::Result<super::CounterPrint>| match r {
        Err(Error::Refusal(r)) => r,
        other => panic!("{other:?}"),
    };
    // No dispatch, or a dispatch without a counter part: no counter page.
    assert_eq!(
        refused(print_a(&w, 1, None, false)),
        Refusal::NoSplitDispatch { card: serial(1) }
    );
    request(&w, 2, "email").unwrap();
    assert_eq!(
        refused(print_a(&w, 2, Some("counter(2)+sms"), false)),
        Refusal::NoSplitDispatch { card: serial(2) }
    );
    // A split dispatch: part B waits for part A, and no worker claims it.
    let d = request(&w, 1, "counter(2)+email").unwrap();
    let (a, b) = (&d.jobs[0], &d.jobs[1]);
    assert_eq!(b.state, JobState::AwaitingCounter);
    let t = now();
    assert!(w
        .cms()
        .claim_due(t, &Channel::REMOTE, 100)
        .unwrap()
        .iter()
        .all(|j| j.serial != serial(1)));
    // Another plan is refused, naming the plan in force; nothing is recorded.
    let releases = events(&w, "card.codes_release").len();
    for other in [
        "counter(3)+sms",
        "counter(2)+sms",
        "counter(3)+email",
        "whole",
    ] {
        let r = refused(print_a(&w, 1, Some(other), false));
        assert_eq!(
            r,
            Refusal::PlanInForce {
                card: serial(1),
                plan: "counter(2)+email".into(),
                dispatch: d.request.id,
            },
            "{other}"
        );
    }
    assert!(matches!(
        print_a(&w, 1, Some("counter(x)"), false),
        Err(Error::Invalid(_))
    ));
    assert_eq!(w.cms().job(a.id).unwrap().unwrap().state, JobState::Counter);
    assert_eq!(events(&w, "card.codes_release").len(), releases);
    // A page that cannot be made records nothing either.
    let failed = w
        .cms()
        .print_counter_part(
            &*w.hsm,
            w.audit(),
            &serial(1),
            None,
            false,
            today(),
            &actor(),
            |_, _| Err::<(), _>("too long"),
        )
        .unwrap();
    assert_eq!(failed.unwrap_err(), "too long");
    assert_eq!(w.cms().job(a.id).unwrap().unwrap().state, JobState::Counter);
    assert_eq!(events(&w, "card.codes_release").len(), releases);
    // The dispatch's own plan (given, `remote`, or not given) prints and hands part A over.
    let p = print_a(&w, 1, Some("counter(2)+remote"), false).unwrap();
    assert_eq!(p.slip.courier_plan, "counter(2)+email");
    assert_eq!(p.slip.dispatch, d.request.id);
    assert!(!p.slip.reprint);
    assert_eq!(p.released, vec![b.id]);
    let a_now = w.cms().job(a.id).unwrap().unwrap();
    assert_eq!(a_now.state, JobState::HandedOver);
    assert_eq!(a_now.handed_over_by.as_deref(), Some("op1"));
    assert!(a_now.handed_over_ms.is_some());
    assert_eq!(a_now.prints, 1);
    assert_eq!(
        delivery(&w, 1),
        vec![pair("A", "handed_over"), pair("B", "queued")]
    );
    let ev = events(&w, "dispatch.handover");
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].actor, "op1");
    assert_eq!(ev[0].details["released"], b.id.to_string());
    assert_eq!(events(&w, "card.codes_release").len(), releases + 1);
    // Now part B goes.
    assert_eq!(claim(&w, now(), 1).id, b.id);
    // A second print only as a reprint, audited.
    assert!(matches!(
        refused(print_a(&w, 1, None, false)),
        Refusal::HandedOver { dispatch, job, .. } if dispatch == d.request.id && job == a.id
    ));
    let again = print_a(&w, 1, None, true).unwrap();
    assert!(again.slip.reprint && again.released.is_empty());
    assert_eq!(again.job.prints, 2);
    assert_eq!(again.job.state, JobState::HandedOver);
    assert_eq!(events(&w, "dispatch.reprint").len(), 1);
    assert_eq!(events(&w, "dispatch.handover").len(), 1);
    // Not for a card that is not active.
    w.change(1, &Change::Suspend(Reason::Lost)).unwrap();
    assert!(matches!(
        print_a(&w, 1, None, true),
        Err(Error::WrongState { .. })
    ));
    verify(&w);
}

#[test]
fn a_new_dispatch_replaces_the_one_in_force_only_when_asked() {
    let w = world();
    let replace = |c: usize, plan: &str, reason: &str| {
        w.cms().request_dispatch_with(
            &*w.hsm,
            w.audit(),
            &serial(c),
            plan,
            Some(reason),
            today(),
            &actor(),
        )
    };
    // A whole e-mail dispatch, sent.
    let first = request(&w, 1, "email").unwrap();
    let job = claim(&w, now(), 1);
    w.cms().mark_sent(w.audit(), job.id, "250-ok").unwrap();
    // Done: a new dispatch is refused without `replace`; nothing is written.
    let before = outbox_rows(&w);
    let err = request(&w, 1, "counter(2)+sms").unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Refusal(Refusal::DispatchInForce {
                under_way: false,
                ..
            })
        ),
        "{err}"
    );
    for bad in ["", "  ", "a\u{7}b"] {
        assert!(matches!(
            replace(1, "counter(2)+sms", bad),
            Err(Error::Invalid(_))
        ));
    }
    assert_eq!(outbox_rows(&w), before);
    // Replaced: the old one superseded, the new one in force.
    let second = replace(1, "counter(2)+sms", "the holder lost the e-mail").unwrap();
    assert_eq!(second.request.replaces, Some(first.request.id));
    assert_eq!(
        second.request.replace_reason.as_deref(),
        Some("the holder lost the e-mail")
    );
    let old = w.cms().dispatch_request(first.request.id).unwrap().unwrap();
    assert_eq!(old.superseded_by, Some(second.request.id));
    assert_eq!(w.cms().job(job.id).unwrap().unwrap().state, JobState::Sent);
    // Replaced while under way: its unsent parts are cancelled in the same batch.
    let third = replace(1, "counter(3)+email", "wrong channel").unwrap();
    for j in &second.jobs {
        let stored = w.cms().job(j.id).unwrap().unwrap();
        assert_eq!(stored.state, JobState::Cancelled, "{stored:?}");
        assert_eq!(stored.cancel_reason.as_deref(), Some("superseded"));
    }
    let sup = events(&w, "dispatch.supersede");
    assert_eq!(sup.len(), 2);
    assert_eq!(sup[1].details["dispatch"], second.request.id.to_string());
    assert_eq!(sup[1].details["reason"], "wrong channel");
    assert_eq!(
        sup[1].details["cancelled"],
        format!(
            "A:counter:{},B:sms:{}",
            second.jobs[0].id, second.jobs[1].id
        )
    );
    // The card's history lists every dispatch with its parts; its status the one in force.
    let st = w
        .cms()
        .status(w.audit(), &serial(1), today(), &actor())
        .unwrap();
    let ids: Vec<u64> = st.dispatches.iter().map(|d| d.request.id).collect();
    assert_eq!(
        ids,
        vec![first.request.id, second.request.id, third.request.id]
    );
    assert_eq!(st.dispatches[1].jobs.len(), 2);
    assert_eq!(
        st.delivery,
        vec![pair("A", "counter"), pair("B", "awaiting_counter")]
    );
    // Only the dispatch in force has a counter page: part A of counter(3)+email.
    let p = print_a(&w, 1, None, false).unwrap();
    assert_eq!(p.slip.courier_plan, "counter(3)+email");
    // A part being sent cannot be cancelled: the replacement waits.
    let b = claim(&w, now(), 1);
    let err = replace(1, "email", "again").unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Refusal(Refusal::PartSending { dispatch: Some(_), job, .. }) if *job == b.id
        ),
        "{err}"
    );
    w.cms().mark_sent(w.audit(), b.id, "250-ok").unwrap();
    verify(&w);
}

#[test]
fn jobs_and_requests_written_before_the_counter_hand_over_still_read() {
    // A job and a request as stored before issue 14 (no hand-over, print count, cancel
    // reason, replacement fields).
    let job = br#"{"id":7,"request":3,"serial":"803900000001","part":"A","channel":"counter",
        "digits":2,"state":"counter","attempts":0,"next_attempt_ms":1,
        "idempotency_key":"00112233445566778899aabbccddeeff","last_error":null,"peer_id":null,
        "origin":"request","replaces":null,"superseded_by":null,"needs_counter_reprint":false,
        "actor":"op1","created_ms":1,"updated_ms":1,"claimed_ms":null,"sent_ms":null,
        "delivered_ms":null}"#;
    let job: Job = super::registry::decode("dispatch job", job).unwrap();
    assert_eq!((job.id, job.state, job.prints), (7, JobState::Counter, 0));
    assert!(job.handed_over_ms.is_none() && job.cancel_reason.is_none());
    // Nor, before issue 22, a failure reason code.
    assert!(job.failure_reason.is_none());
    let request = br#"{"id":3,"serial":"803900000001","plan":"counter(2)+sms","jobs":[7,8],
        "actor":"op1","request_id":"r1","created_ms":1}"#;
    let request: super::DispatchRequest =
        super::registry::decode("dispatch request", request).unwrap();
    assert_eq!(request.jobs, vec![7, 8]);
    assert!(request.superseded_by.is_none() && request.replaces.is_none());
}

/// A job record as the encoder wrote it before parts were `dispatch`'s [`super::Part`] (bytes
/// captured from the old `cards::outbox::Part` and `Channel`), with its part, channel and digits.
fn job_bytes(part: &str, channel: &str, digits: &str) -> String {
    format!(
        "{{\"id\":7,\"request\":3,\"serial\":\"803900000001\",\"part\":\"{part}\",\
         \"channel\":\"{channel}\",\"digits\":{digits},\"state\":\"counter\",\"attempts\":0,\
         \"next_attempt_ms\":1,\"idempotency_key\":\"00112233445566778899aabbccddeeff\",\
         \"last_error\":null,\"peer_id\":null,\"origin\":\"request\",\"replaces\":null,\
         \"superseded_by\":null,\"needs_counter_reprint\":false,\"actor\":\"op1\",\
         \"created_ms\":1,\"updated_ms\":1,\"claimed_ms\":null,\"sent_ms\":null,\
         \"delivered_ms\":null}}"
    )
}

#[test]
fn job_records_of_every_part_and_channel_decode_and_encode_to_the_same_bytes() {
    for (part, channel, digits, p, c) in [
        ("A", "counter", "2", Part::A, Channel::Counter),
        ("B", "sms", "2", Part::B, Channel::Sms),
        ("B", "email", "3", Part::B, Channel::Email),
        ("whole", "mailer", "null", Part::Whole, Channel::Mailer),
        ("whole", "email", "null", Part::Whole, Channel::Email),
    ] {
        let old = job_bytes(part, channel, digits);
        let job: Job = super::registry::decode("dispatch job", old.as_bytes()).unwrap();
        assert_eq!((job.part, job.channel), (p, c), "{old}");
        let again = super::registry::encode(&job).unwrap();
        assert_eq!(String::from_utf8(again).unwrap(), old);
    }
    // A part name the vocabulary does not have is a damaged record, not a default.
    let odd = job_bytes("C", "sms", "2");
    assert!(matches!(
        super::registry::decode::<Job>("dispatch job", odd.as_bytes()),
        Err(Error::Storage(_))
    ));
}
