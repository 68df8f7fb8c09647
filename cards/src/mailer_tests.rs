//! Print runs on sled: who gets a mailer, numbering across runs and restarts, voids on reprint,
//! outcomes all or nothing, and the reconciliation per batch.

use super::mailers::{MailerItem, MailerOutcome, MailerState, RecordedFile, Reprint, Selection};
use super::tests::{actor, date, holder_activation, serial, today, World};
use super::{Change, PrintJob, Reason};
use vault::BatchId;
use vault::ImportOutcome;
use vault::{Error, Missing, Refusal};

fn batch_of(outcome: ImportOutcome) -> BatchId {
    match outcome {
        ImportOutcome::Committed(r) => r.id,
        other => panic!("not committed: {other:?}"),
    }
}

/// Cards 1–7 with codes; holder 0 owns 1–5, holder 1 owns 6; card 7 is not in the registry.
/// Active: 1, 2, 3, 6. Card 4 stays issued, card 5 is suspended.
fn world() -> (World, BatchId) {
    let w = World::new();
    let expiry = date("2030-01-01");
    w.registry(0, &[1, 2, 3, 4, 5].map(|c| (c, expiry, None)), false)
        .unwrap();
    w.registry(1, &[(6, expiry, None)], false).unwrap();
    let batch = batch_of(w.import_codes(&(1..=7).map(serial).collect::<Vec<_>>()));
    for c in [1, 2, 3, 5, 6] {
        w.change(c, &holder_activation()).unwrap();
    }
    w.change(5, &Change::Suspend(Reason::Lost)).unwrap();
    (w, batch)
}

fn start<'w>(w: &'w World, selection: Selection, reprint: Reprint) -> PrintJob<'w> {
    w.cms()
        .start_print_run(
            w.audit(),
            selection,
            reprint,
            "test",
            "whole",
            "whole",
            &actor(),
        )
        .unwrap()
}

fn items(w: &World, job: &PrintJob<'_>) -> Vec<MailerItem> {
    job.mailers(&*w.hsm, today())
        .unwrap()
        .collect::<vault::Result<Vec<_>>>()
        .unwrap()
}

fn record(w: &World, job: &PrintJob<'_>, name: &str, items: &[MailerItem]) {
    let numbers: Vec<u64> = items.iter().map(|m| m.number).collect();
    let serials: Vec<String> = items.iter().map(|m| m.serial.clone()).collect();
    job.record_file(
        w.audit(),
        &RecordedFile {
            name,
            numbers: &numbers,
            serials: &serials,
            sha256_clear_pdf: "00",
            sealed_bytes: 1,
        },
    )
    .unwrap();
}

#[test]
fn a_batch_run_prints_active_cards_only_and_records_its_files() {
    let (w, batch) = world();
    let job = start(&w, Selection::Batch(batch), Reprint::Unprinted);
    let got = items(&w, &job);
    let serials: Vec<&str> = got.iter().map(|m| m.serial.as_str()).collect();
    assert_eq!(serials, [serial(1), serial(2), serial(3), serial(6)]);
    assert_eq!(
        got.iter().map(|m| m.number).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert_eq!(got[0].codes.pin.expose_secret(), b"12345");
    assert_eq!(got[0].name, "Nicolò 0 D'Angelo");
    assert_eq!(got[0].address, ["Via Roma 1", "00100 Roma"]);
    let skipped = job.skipped();
    assert_eq!(skipped.get("issued"), Some(&1));
    assert_eq!(skipped.get("suspended"), Some(&1));
    assert_eq!(skipped.get("not_in_registry"), Some(&1));
    record(&w, &job, "test-0001.pdf.age", &got[..3]);
    record(&w, &job, "test-0002.pdf.age", &got[3..]);
    let done = job.finish(w.audit(), None).unwrap();
    assert_eq!(done.state, "done");
    assert_eq!(done.printed, 4);
    assert_eq!(done.files, ["test-0001.pdf.age", "test-0002.pdf.age"]);

    // Running it again prints nothing: every active card has an outstanding mailer.
    let again = start(&w, Selection::Batch(batch), Reprint::Unprinted);
    assert!(items(&w, &again).is_empty());
    assert_eq!(again.skipped().get("already_printed"), Some(&4));
    again.finish(w.audit(), None).unwrap();
    w.audit().verify().unwrap();
}

#[test]
fn a_reprint_voids_the_earlier_mailer_and_numbers_are_never_reused() {
    let (mut w, batch) = world();
    let job = start(&w, Selection::Batch(batch), Reprint::Unprinted);
    let got = items(&w, &job);
    record(&w, &job, "a-0001.pdf.age", &got);
    job.finish(w.audit(), None).unwrap();

    // Unused reserved numbers were given back: the reprint takes number 5.
    let reprint = start(&w, Selection::Serials(vec![serial(2)]), Reprint::All);
    let again = items(&w, &reprint);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].number, 5);
    record(&w, &reprint, "b-0001.pdf.age", &again);
    let rec = reprint.finish(w.audit(), None).unwrap();
    assert_eq!(rec.voided, 1);
    let of2 = w.cms().mailers_of(&serial(2)).unwrap();
    assert_eq!(
        of2.iter().map(|m| (m.number, m.state)).collect::<Vec<_>>(),
        [(2, MailerState::Voided), (5, MailerState::Outstanding)]
    );

    // Outcomes: all or nothing; a voided mailer cannot be delivered.
    let err = w
        .cms()
        .record_mailer_outcomes(
            w.audit(),
            &[(1, MailerOutcome::Delivered), (2, MailerOutcome::Delivered)],
            &actor(),
        )
        .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Refusal(Refusal::MailerNotOutstanding { outcome: 2, mailer: 2, state, .. })
                if state == "voided"
        ),
        "{err}"
    );
    assert_eq!(
        w.cms().mailers_of(&serial(1)).unwrap()[0].state,
        MailerState::Outstanding,
        "nothing applied"
    );
    assert!(matches!(
        w.cms()
            .record_mailer_outcomes(w.audit(), &[(99, MailerOutcome::Spoiled)], &actor()),
        Err(Error::Refusal(Refusal::MailerUnknown {
            outcome: 1,
            mailer: 99
        }))
    ));
    assert!(matches!(
        w.cms()
            .record_mailer_outcomes(w.audit(), &[(1, MailerOutcome::Spoiled); 2], &actor()),
        Err(Error::Refusal(Refusal::MailerRepeats {
            outcome: 2,
            mailer: 1
        }))
    ));
    w.cms()
        .record_mailer_outcomes(
            w.audit(),
            &[(1, MailerOutcome::Delivered), (3, MailerOutcome::Spoiled)],
            &actor(),
        )
        .unwrap();

    w.restart();
    let rec = w.cms().reconcile(Some(&batch.to_string())).unwrap();
    assert_eq!(rec.len(), 1);
    let r = &rec[0];
    assert_eq!(
        (r.printed, r.delivered, r.spoiled, r.voided, r.outstanding),
        (5, 1, 1, 1, 2)
    );
    assert_eq!(
        r.printed,
        r.delivered + r.spoiled + r.voided + r.outstanding
    );
    assert!(!r.balanced);

    // Undelivered: card 1 (delivered) is left out, the others are printed again.
    let third = start(&w, Selection::Batch(batch), Reprint::Undelivered);
    let got = items(&w, &third);
    assert_eq!(
        got.iter().map(|m| m.serial.clone()).collect::<Vec<_>>(),
        [serial(2), serial(3), serial(6)]
    );
    assert_eq!(got[0].number, 6, "numbers continue after a restart");
    assert_eq!(third.skipped().get("delivered"), Some(&1));
    third.finish(w.audit(), None).unwrap();
    w.audit().verify().unwrap();
}

#[test]
fn one_run_at_a_time_and_a_stopped_run_reads_interrupted() {
    let (mut w, batch) = world();
    let id = {
        let job = start(&w, Selection::Batch(batch), Reprint::Unprinted);
        let refused = w.cms().start_print_run(
            w.audit(),
            Selection::Batch(batch),
            Reprint::Unprinted,
            "x",
            "whole",
            "whole",
            &actor(),
        );
        assert!(matches!(
            refused,
            Err(Error::Refusal(Refusal::PrintRunGoing))
        ));
        let got = items(&w, &job);
        assert_eq!(got.len(), 4);
        // The process "stops": no file recorded, no finish.
        std::mem::forget(got);
        let id = job.id();
        drop(job);
        id
    };
    w.restart();
    let job = start(&w, Selection::Batch(batch), Reprint::Unprinted);
    assert_eq!(w.cms().print_run(id).unwrap().state, "interrupted");
    let got = items(&w, &job);
    assert_eq!(
        got.len(),
        4,
        "nothing was recorded, so every card is printed"
    );
    assert!(
        got[0].number > 4,
        "numbers reserved by the stopped run are not given again"
    );
    job.finish(w.audit(), None).unwrap();
}

#[test]
fn bad_selections_are_refused_before_anything_is_written() {
    let (w, _) = world();
    let cms = w.cms();
    let run = |sel: Selection, label: &str| {
        cms.start_print_run(
            w.audit(),
            sel,
            Reprint::Unprinted,
            label,
            "whole",
            "whole",
            &actor(),
        )
        .map(|j| j.id())
    };
    assert!(matches!(
        run(Selection::Serials(vec![]), "x"),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        run(Selection::Serials(vec![serial(1), serial(1)]), "x"),
        Err(Error::Invalid(m)) if m.contains("repeats")
    ));
    assert!(matches!(
        run(Selection::Batch(BatchId(999)), "x"),
        Err(Error::Missing(Missing::CommittedBatch(BatchId(999))))
    ));
    assert!(matches!(
        run(Selection::Batch(BatchId(1)), "../etc"),
        Err(Error::Invalid(_))
    ));
    assert!(cms.print_runs(10).unwrap().is_empty());
}

#[test]
fn the_batch_scan_skips_cards_whose_codes_were_deleted() {
    let (w, batch) = world();
    let codes = w.codes.as_ref().unwrap();
    let receipt = w
        .audit()
        .commit_release(
            vault::Batch::new(),
            vec![vault::NewEvent::new(vault::PRINT_RUN_ACTION, "print run 0")
                .detail("batch", batch.to_string())],
        )
        .unwrap();
    let count = || codes.scan_batch(&*w.hsm, batch, &receipt).unwrap().count();
    assert_eq!(count(), 7);
    w.change(3, &Change::Revoke(Reason::Stolen)).unwrap();
    let serials: Vec<String> = codes
        .scan_batch(&*w.hsm, batch, &receipt)
        .unwrap()
        .map(|r| r.unwrap().0)
        .collect();
    assert_eq!(serials.len(), 6);
    assert!(!serials.contains(&serial(3)));
    let mut sorted = serials.clone();
    sorted.sort();
    assert_eq!(serials, sorted, "in serial order");
}

#[test]
fn a_mailer_dispatch_is_done_by_the_print_file_that_prints_the_card() {
    let (w, batch) = world();
    let asked = w
        .cms()
        .request_dispatch(&*w.hsm, w.audit(), &serial(2), "mailer", today(), &actor())
        .unwrap();
    let job = asked.jobs[0].clone();
    assert_eq!(job.channel, super::Channel::Mailer);
    // The delivery workers never claim it.
    assert!(w
        .cms()
        .claim_due(u64::MAX / 2, &super::Channel::REMOTE, 10)
        .unwrap()
        .is_empty());
    let run = start(&w, Selection::Batch(batch), Reprint::Unprinted);
    let got = items(&w, &run);
    record(&w, &run, "m-0001.pdf.age", &got);
    run.finish(w.audit(), None).unwrap();
    let number = got.iter().find(|m| m.serial == serial(2)).unwrap().number;
    let done = w.cms().job(job.id).unwrap().unwrap();
    assert_eq!(done.state, super::JobState::Sent);
    assert_eq!(
        done.peer_id.as_deref(),
        Some(format!("mailer-{number}").as_str())
    );
    let status = w.cms().deliveries(&serial(2)).unwrap();
    assert_eq!(status[0].shown_state(), "sent");
    // No other card had a mailer job: nothing else changed.
    for c in [1, 3, 6] {
        assert!(w.cms().jobs_of(&serial(c)).unwrap().is_empty());
    }
}

#[test]
fn start_up_marks_a_stopped_run_interrupted_and_a_file_can_be_told_from_its_record() {
    let (mut w, batch) = world();
    let (id, numbers) = {
        let job = start(&w, Selection::Batch(batch), Reprint::Unprinted);
        let got = items(&w, &job);
        record(&w, &job, "test-0001.pdf.age", &got[..2]);
        let numbers: Vec<u64> = got[..2].iter().map(|m| m.number).collect();
        // The process "stops" after recording one file: no finish.
        let id = job.id();
        std::mem::forget(job);
        (id, numbers)
    };
    w.restart();
    assert_eq!(w.cms().print_run(id).unwrap().state, "running");
    assert_eq!(w.cms().recover_print_runs().unwrap(), [id]);
    let run = w.cms().print_run(id).unwrap();
    assert_eq!(run.state, "interrupted");
    assert!(run.finished_ms > 0 && run.error.is_some());
    assert_eq!(run.files, ["test-0001.pdf.age"]);
    // Once only.
    assert!(w.cms().recover_print_runs().unwrap().is_empty());

    assert_eq!(w.cms().print_file_names().unwrap(), ["test-0001.pdf.age"]);
    let facts = w
        .cms()
        .print_file_facts("test-0001.pdf.age")
        .unwrap()
        .unwrap();
    assert_eq!(facts.label, "test");
    assert_eq!(facts.first_serial, serial(1));
    assert_eq!(facts.last_serial, serial(2));
    assert_eq!(facts.dir.first_number, numbers[0]);
    assert_eq!(facts.dir.count, 2);
    assert_eq!(facts.dir.sealed_bytes, 1);
    assert!(w
        .cms()
        .print_file_facts("test-0002.pdf.age")
        .unwrap()
        .is_none());

    // While a run goes, recovery is refused.
    let job = start(&w, Selection::Batch(batch), Reprint::Unprinted);
    assert!(matches!(
        w.cms().recover_print_runs(),
        Err(Error::Refusal(Refusal::RecoverWhileRunning))
    ));
    job.finish(w.audit(), None).unwrap();
    w.audit().verify().unwrap();
}
