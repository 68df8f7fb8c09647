//! Releases for claimed jobs on sled: an active card gives codes, destination and name with a
//! `card.codes_release` event for the job; a suspended card and a changed contact are refused.

use super::outbox::{Channel, Job};
use super::outbox_release::ReleaseDestination;
use super::outbox_tests::{events, hand_over};
use super::registry_parse::{CardEntry, HolderEntry};
use super::tests::{actor, cf, date, holder_activation, serial, today, World};
use super::{Change, Reason};
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
