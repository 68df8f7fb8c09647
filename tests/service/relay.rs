//! The SMTP courier against a real, private postfix (`relay_support`): STARTTLS and implicit
//! TLS with a private CA (and `tls_untrusted` without it), AUTH on the submission port (and
//! `auth_failed` with a wrong password), quoted-printable for a relay without 8BITMIME, and a
//! bounce for an unknown mailbox that comes back to the return path with the headers only (no
//! code). Then the delivery workers: a relay without STARTTLS (smtp-sink) and a relay whose
//! certificate is from an unknown CA pause the lane (jobs stay queued, none dead, no
//! fallback); with the right CA after a restart every job goes out exactly once.
//!
//! Every message is read back with a MIME parser (`mailparse`).

use super::batches::{codes_of, serial};
use super::delivery::{dispatch, Running, SALT};
use super::peers::smtp_sink;
use super::relay_support::{Options, Postfix, BOUNCES, PASSWORD, USER};
use super::*;
use cards::{Channel, JobState, Part};
use dispatch::courier::smtp::{SmtpConfig, SmtpCourier, SmtpSecurity};
use dispatch::courier::{Courier, Destination, FailureReason, IdempotencyKey, Outgoing};
use dispatch::{EmailMessage, SecretText};
use mailparse::{MailHeaderMap, ParsedMail};
use plico::delivery::Delivery;

const PIN: &str = "24680";
const PUK: &str = "13572468";

fn email() -> EmailMessage {
    let mut text = SecretText::default();
    text.push_str(&format!(
        "Gentile Nicolò,\nil PIN è {PIN} e il PUK è {PUK}.\nCordiali saluti\n"
    ));
    let mut html = SecretText::default();
    html.push_str(&format!("<p>PIN <b>{PIN}</b>, PUK <b>{PUK}</b></p>\n"));
    EmailMessage {
        subject: "I codici della carta •••• 1234".into(),
        text,
        html,
    }
}

fn outgoing(key: &str, to: &str) -> Outgoing {
    Outgoing::email(
        IdempotencyKey::new(key).unwrap(),
        Destination::email(to).unwrap(),
        email(),
    )
    .unwrap()
}

fn config(port: u16, security: SmtpSecurity, ca: Option<&[u8]>) -> SmtpConfig {
    let mut c = SmtpConfig::new("127.0.0.1", port, "codici@example.it");
    c.security = security;
    c.tls_ca_pem = ca.map(<[u8]>::to_vec);
    c.hello_name = "plico.test".into();
    c.return_path = Some(BOUNCES.into());
    c.connect_timeout = Duration::from_secs(10);
    c
}

/// The header block of a raw message (before the first blank line).
fn head(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    text.split("\r\n\r\n")
        .next()
        .unwrap()
        .split("\n\n")
        .next()
        .unwrap()
        .to_owned()
}

/// The `text/plain` part of a parsed message.
fn plain<'a>(m: &'a ParsedMail<'a>) -> &'a ParsedMail<'a> {
    m.subparts
        .iter()
        .find(|p| p.ctype.mimetype == "text/plain")
        .expect("a text/plain part")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_starttls_and_implicit_tls_with_the_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        mailboxes: vec!["h0".into()],
        ..Options::default()
    };
    let pf = Postfix::start(dir.path(), &options).await;
    let mut ids = Vec::new();
    for (i, (port, security)) in [
        (pf.smtp, SmtpSecurity::StartTls),
        (pf.smtps, SmtpSecurity::Tls),
    ]
    .into_iter()
    .enumerate()
    {
        // Without the private CA (public roots only): the relay is untrusted, lane-wide.
        let courier = SmtpCourier::new(config(port, security, None)).unwrap();
        let err = courier
            .send(&outgoing(&format!("job-untrusted-{i}"), "h0@example.it"))
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            FailureReason::TlsUntrusted,
            "{security:?}: {err}"
        );
        assert!(err.is_lane_wide());
        // With it: accepted.
        let courier = SmtpCourier::new(config(port, security, Some(&pf.ca_pem))).unwrap();
        let key = format!("job-tls-{i}");
        courier
            .send(&outgoing(&key, "h0@example.it"))
            .await
            .unwrap_or_else(|e| panic!("{security:?}: {e}\n{}", pf.log()));
        ids.push(dispatch::courier::smtp::message_id(
            &IdempotencyKey::new(key).unwrap(),
            "example.it",
        ));
    }
    let messages = pf.wait_for_messages("h0", 2).await;
    assert_eq!(messages.len(), 2);
    for raw in &messages {
        let m = mailparse::parse_mail(raw).unwrap();
        let id = m.headers.get_first_value("Message-ID").unwrap();
        assert!(ids.contains(&id), "{id}");
        let date = m.headers.get_first_value("Date").unwrap();
        assert!(date.ends_with("+0000"), "{date}");
        assert!(mailparse::dateparse(&date).is_ok(), "{date}");
        assert_eq!(
            m.headers.get_first_value("Auto-Submitted").as_deref(),
            Some("auto-generated")
        );
        assert!(
            m.headers
                .get_all_values("Received")
                .iter()
                .any(|r| r.contains("ESMTPS")),
            "not received over TLS"
        );
        assert_eq!(m.ctype.mimetype, "multipart/alternative");
        let body = plain(&m).get_body().unwrap();
        assert!(body.contains(&format!("il PIN è {PIN}")), "{body}");
        // The codes are in the bodies only: not in a header, not in the subject.
        let headers = head(raw);
        assert!(
            !headers.contains(PIN) && !headers.contains(PUK),
            "{headers}"
        );
        assert_eq!(
            m.headers.get_first_value("Return-Path").as_deref(),
            Some(format!("<{BOUNCES}>").as_str())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_auth_on_the_submission_port() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        mailboxes: vec!["h0".into()],
        ..Options::default()
    };
    let pf = Postfix::start(dir.path(), &options).await;
    let login = |password: &str| {
        let mut c = config(pf.submission, SmtpSecurity::StartTls, Some(&pf.ca_pem));
        c.auth = Some((USER.to_owned(), SecretString::from(password.to_owned())));
        SmtpCourier::new(c).unwrap()
    };
    // A wrong password: auth_failed, a failure of the relay setting, not of the job.
    let err = login("not-the-password")
        .send(&outgoing("job-auth-bad", "h0@example.it"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), FailureReason::AuthFailed, "{err}");
    assert!(err.is_lane_wide() && !err.reason().contains("not-the-password"));
    // No login on a port that wants one: refused for the whole relay setting too.
    let anonymous = SmtpCourier::new(config(
        pf.submission,
        SmtpSecurity::StartTls,
        Some(&pf.ca_pem),
    ))
    .unwrap();
    let err = anonymous
        .send(&outgoing("job-auth-none", "h0@example.it"))
        .await
        .unwrap_err();
    assert!(!err.is_temporary() || err.is_lane_wide(), "{err}");
    // The right one: accepted and delivered.
    login(PASSWORD)
        .send(&outgoing("job-auth-ok", "h0@example.it"))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", pf.log()));
    let messages = pf.wait_for_messages("h0", 1).await;
    assert_eq!(messages.len(), 1);
    let m = mailparse::parse_mail(&messages[0]).unwrap();
    assert!(
        m.headers
            .get_all_values("Received")
            .iter()
            .any(|r| r.contains("ESMTPSA")),
        "not an authenticated TLS submission"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_without_8bitmime_gets_quoted_printable() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        mailboxes: vec!["h0".into()],
        no_8bitmime: true,
        ..Options::default()
    };
    let pf = Postfix::start(dir.path(), &options).await;
    let courier =
        SmtpCourier::new(config(pf.smtp, SmtpSecurity::StartTls, Some(&pf.ca_pem))).unwrap();
    courier
        .send(&outgoing("job-qp", "h0@example.it"))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", pf.log()));
    let messages = pf.wait_for_messages("h0", 1).await;
    let raw = &messages[0];
    let m = mailparse::parse_mail(raw).unwrap();
    let part = plain(&m);
    assert_eq!(
        part.headers
            .get_first_value("Content-Transfer-Encoding")
            .as_deref(),
        Some("quoted-printable")
    );
    // 7-bit on the wire (postfix adds only ASCII headers), and the parser decodes it back.
    let body_start = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0);
    assert!(
        raw[body_start..].is_ascii(),
        "an 8bit body to a relay without 8BITMIME"
    );
    let body = part.get_body().unwrap();
    assert!(body.contains(&format!("il PIN è {PIN}")), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_bounce_comes_back_to_the_return_path_without_the_codes() {
    let dir = tempfile::tempdir().unwrap();
    let pf = Postfix::start(dir.path(), &Options::default()).await;
    let courier =
        SmtpCourier::new(config(pf.smtp, SmtpSecurity::StartTls, Some(&pf.ca_pem))).unwrap();
    let key = "job-bounce-0123456789abcdef";
    // Accepted by the relay (unknown mailboxes are bounced later, not refused at RCPT).
    courier
        .send(&outgoing(key, "ghost@example.it"))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", pf.log()));
    let bounces = pf.wait_for_messages("bounces", 1).await;
    let raw = &bounces[0];
    let text = String::from_utf8_lossy(raw);
    for secret in [PIN, PUK] {
        assert!(
            !text.contains(secret),
            "a code came back in the bounce:\n{text}"
        );
    }
    let m = mailparse::parse_mail(raw).unwrap();
    assert_eq!(m.ctype.mimetype, "multipart/report");
    assert_eq!(
        m.ctype.params.get("report-type").map(String::as_str),
        Some("delivery-status")
    );
    let kinds: Vec<&str> = m
        .subparts
        .iter()
        .map(|p| p.ctype.mimetype.as_str())
        .collect();
    // RET=HDRS: the original comes back as its headers only.
    assert!(kinds.contains(&"text/rfc822-headers"), "{kinds:?}");
    assert!(!kinds.contains(&"message/rfc822"), "{kinds:?}");
    let status = m
        .subparts
        .iter()
        .find(|p| p.ctype.mimetype == "message/delivery-status")
        .unwrap()
        .get_body()
        .unwrap();
    // ENVID: the job's key comes back, so the bounce intake can find the job.
    assert!(
        status.contains(&format!("Original-Envelope-Id: {key}")),
        "{status}"
    );
    assert!(status.contains("Action: failed"), "{status}");
    assert!(status.contains("Status: 5."), "{status}");
    if std::env::var_os("PLICO_WRITE_DSN_FIXTURE").is_some() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("dispatch/tests/fixtures/dsn/postfix-unknown-user.eml");
        std::fs::create_dir_all(fixture.parent().unwrap()).unwrap();
        std::fs::write(fixture, raw).unwrap();
    }
}

/// The whole bounce path through the service: card 602's holder has no mailbox at the relay,
/// so postfix bounces the message to the return path with its headers only (no code comes
/// back); that DSN, posted to `POST /v1/bounces` as the CMS would, ends card 602's job as
/// `bounced`, and card 601's delivered message is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bounce_through_postfix_carries_no_code_and_marks_the_part() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        mailboxes: vec!["h0".into()],
        ..Options::default()
    };
    let pf = Postfix::start(dir.path(), &options).await;
    let ca = pf.ca_pem.clone();
    let port = pf.smtp;
    let running = Running::start(
        tempfile::tempdir().unwrap(),
        |_| {
            let c = config(port, SmtpSecurity::StartTls, Some(&ca));
            vec![(
                Channel::Email,
                Arc::new(SmtpCourier::new(c).unwrap()) as Arc<dyn Courier>,
            )]
        },
        two_email_jobs,
    )
    .await;
    running.wait_for(601, Part::Whole, JobState::Sent).await;
    running.wait_for(602, Part::Whole, JobState::Sent).await;
    let bounces = pf.wait_for_messages("bounces", 1).await;
    assert_eq!(bounces.len(), 1, "only card 602's message bounces");
    let text = String::from_utf8_lossy(&bounces[0]);
    for n in [601, 602] {
        let (pin, puk) = codes_of(n, SALT);
        assert!(
            !text.contains(&pin) && !text.contains(&puk),
            "a code came back in the bounce"
        );
    }
    let a = running
        .client
        .post_raw("cms", "/v1/bounces", "message/rfc822", bounces[0].clone())
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let job = running.wait_for(602, Part::Whole, JobState::Dead).await;
    assert_eq!(job.failure_reason.as_deref(), Some("bounced"));
    let kept = running.state.cms.jobs_of(&serial(601)).unwrap();
    assert!(kept.iter().all(|j| j.state == JobState::Sent), "{kept:?}");
    assert_eq!(pf.messages("h0").len(), 1);
    running.stop().await;
}

/// Dispatches cards 601 and 602 by e-mail before the workers start.
async fn two_email_jobs(client: &Client, _: &AppState) {
    dispatch(client, 601, "email").await;
    dispatch(client, 602, "email").await;
}

/// Waits until both cards' e-mail jobs are queued again by a lane pause with `reason`, and
/// checks that nothing went dead, fell back or spent an attempt.
async fn both_paused(running: &Running, reason: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let jobs: Vec<cards::Job> = [601, 602]
            .iter()
            .flat_map(|n| running.state.cms.jobs_of(&serial(*n)).unwrap())
            .collect();
        assert_eq!(jobs.len(), 2, "a fallback job was made: {jobs:?}");
        for j in &jobs {
            assert!(
                !matches!(j.state, JobState::Dead | JobState::Sent),
                "{:?}",
                j
            );
            assert!(!j.needs_counter_reprint);
        }
        let paused = jobs
            .iter()
            .filter(|j| {
                j.state == JobState::Queued
                    && j.failure_reason.as_deref() == Some(reason)
                    && j.attempts == 0
            })
            .count();
        if paused == 2 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not paused with {reason}: {jobs:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relay_without_starttls_pauses_the_lane_and_keeps_the_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let sink_dir = dir.path().join("sink");
    std::fs::create_dir(&sink_dir).unwrap();
    let (_sink, port) = smtp_sink(&sink_dir, true, &[]).await;
    let data = tempfile::tempdir().unwrap();
    let running = Running::start(
        data,
        |_| {
            // policy(): 3 attempts; the pauses below are many more failures than that.
            let c = config(port, SmtpSecurity::StartTls, None);
            vec![(
                Channel::Email,
                Arc::new(SmtpCourier::new(c).unwrap()) as Arc<dyn Courier>,
            )]
        },
        two_email_jobs,
    )
    .await;
    both_paused(&running, "tls_unavailable").await;
    // Several pauses later (1 s, 2 s…), still queued with no attempt spent, none dead.
    tokio::time::sleep(Duration::from_secs(4)).await;
    both_paused(&running, "tls_unavailable").await;
    let metrics = running.client.get("auditor", "/v1/dispatch/metrics").await;
    assert!(
        metrics
            .text
            .contains("plico_dispatch_failures_total{reason=\"tls_unavailable\"}"),
        "{}",
        metrics.text
    );
    assert!(
        std::fs::read_dir(sink_dir.join("mail"))
            .unwrap()
            .next()
            .is_none(),
        "a message went out in clear"
    );
    running.stop().await;
}

/// The releases of dispatch jobs' codes so far (`card.codes_release` events for a job).
fn job_releases(state: &AppState) -> usize {
    state
        .audit
        .query(&vault::Query {
            action: Some("card.codes_release".into()),
            limit: 1000,
            ..vault::Query::default()
        })
        .unwrap()
        .events
        .iter()
        .filter(|e| {
            e.details
                .get("for")
                .is_some_and(|f| f.starts_with("dispatch job"))
        })
        .count()
}

/// Issue 20 (last item): while the relay stays down, each pause of the lane ends with one job
/// tried (one release of one card's codes), not with every queued job claimed and released
/// again: the audit chain does not grow by a lane's worth of `card.codes_release` events at
/// every pause. Before, both jobs were released again after each pause.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_lane_tries_one_job_after_each_pause_not_all() {
    let dir = tempfile::tempdir().unwrap();
    let sink_dir = dir.path().join("sink");
    std::fs::create_dir(&sink_dir).unwrap();
    let (_sink, port) = smtp_sink(&sink_dir, true, &[]).await;
    let data = tempfile::tempdir().unwrap();
    let running = Running::start(
        data,
        |_| {
            let c = config(port, SmtpSecurity::StartTls, None);
            vec![(
                Channel::Email,
                Arc::new(SmtpCourier::new(c).unwrap()) as Arc<dyn Courier>,
            )]
        },
        two_email_jobs,
    )
    .await;
    both_paused(&running, "tls_unavailable").await;
    let stats = running.state.delivery.clone().unwrap().stats.clone();
    // Pauses of 1 s, then 2 s: the third starts about 3 s in.
    let deadline = Instant::now() + Duration::from_secs(30);
    while stats.lane_pauses.load(std::sync::atomic::Ordering::Relaxed) < 3 {
        assert!(
            Instant::now() < deadline,
            "the lane did not pause three times"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pauses = stats.lane_pauses.load(std::sync::atomic::Ordering::Relaxed);
    let releases = job_releases(&running.state);
    // Both jobs at the start (the lane was not paused yet), then one a pause (and perhaps
    // one more whose pause has not started yet).
    assert!(
        releases <= 2 + pauses as usize,
        "{releases} releases for {pauses} pauses"
    );
    both_paused(&running, "tls_unavailable").await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relay_with_an_unknown_ca_pauses_then_every_job_goes_out_once() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        mailboxes: vec!["h0".into(), "h1".into()],
        untrusted_leaf: true,
        ..Options::default()
    };
    let pf = Postfix::start(dir.path(), &options).await;
    let wrong_ca = pf.ca_pem.clone();
    let port = pf.smtp;
    let data = tempfile::tempdir().unwrap();
    let running = Running::start(
        data,
        |_| {
            let c = config(port, SmtpSecurity::StartTls, Some(&wrong_ca));
            vec![(
                Channel::Email,
                Arc::new(SmtpCourier::new(c).unwrap()) as Arc<dyn Courier>,
            )]
        },
        two_email_jobs,
    )
    .await;
    both_paused(&running, "tls_untrusted").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    both_paused(&running, "tls_untrusted").await;
    assert!(pf.messages("h0").is_empty() && pf.messages("h1").is_empty());

    // The operator fixes the CA (the relay's real one) and restarts the service on the same
    // store: every job goes out, once.
    let (data, state) = running.halt().await;
    let right_ca = std::fs::read(&pf.leaf_ca_file).unwrap();
    let mut c = config(port, SmtpSecurity::StartTls, Some(&right_ca));
    c.message_id_domain = "example.it".into();
    let mut delivery = Delivery::new(&state.print.clone(), super::delivery::policy()).with_courier(
        Channel::Email,
        Arc::new(SmtpCourier::new(c).unwrap()),
        4,
    );
    delivery.poll = Duration::from_millis(50);
    let state = state.with_delivery(delivery);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let served = super::support::Served::start(listener, &state);
    let mut keys = Vec::new();
    for n in [601, 602] {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let jobs = state.cms.jobs_of(&serial(n)).unwrap();
            let j = jobs.iter().rev().find(|j| j.part == Part::Whole).unwrap();
            if j.state == JobState::Sent {
                assert_eq!(j.attempts, 1, "the paused attempts were given back: {j:?}");
                keys.push(j.idempotency_key.clone());
                break;
            }
            assert!(Instant::now() < deadline, "card {n}: {j:?}\n{}", pf.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    served.stop().await;
    drop(data);
    pf.wait_for_messages("h0", 1).await;
    pf.wait_for_messages("h1", 1).await;
    // Give a duplicate the time to arrive, then count each job's Message-ID.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut all = pf.messages("h0");
    all.extend(pf.messages("h1"));
    for key in keys {
        let id =
            dispatch::courier::smtp::message_id(&IdempotencyKey::new(key).unwrap(), "example.it");
        let copies = all
            .iter()
            .filter(|raw| {
                mailparse::parse_mail(raw)
                    .unwrap()
                    .headers
                    .get_first_value("Message-ID")
                    .as_deref()
                    == Some(id.as_str())
            })
            .count();
        assert_eq!(copies, 1, "{id}");
    }
}
