//! The delivery workers end to end, on sled, with `plico::serve` on a real socket: a dispatch by
//! e-mail reaches smtp-sink once, with the card's codes and without its full serial, and the
//! part becomes `sent`; a card suspended between dispatch and send makes its job `cancelled`
//! (reason `card_suspended`, no fallback) and nothing is sent; a `counter(2)+sms` dispatch goes through Kannel and its fake SMSC, and
//! Kannel's delivery report to `/v1/dlr` makes part B `delivered`, and none of Kannel's own
//! logs holds part B's digits. A bounce (RFC 3464 DSN) posted to `/v1/bounces` for a sent
//! e-mail's `Message-ID` makes its part `dead` (`bounced 5.1.1`) once; a delay warning does not. `/v1/dlr` without the
//! token, or with a wrong one, is 401. An emergency seal (`POST /v1/sys/seal`) stops the
//! workers claiming; after the custodians' unseal the job goes out once.

use super::batches::{codes_of, serial};
use super::peers::{smtp_sink, smtp_sink_on, Kannel};
use super::support::{cf, cie_state, codes_file, identification, open_with_accounts, Client};
use super::*;
use cards::{Channel, Fallback, JobState, OutboxPolicy, Part};
use dispatch::courier::sms::KannelCourier;
use dispatch::courier::smtp::{SmtpConfig, SmtpCourier, SmtpSecurity};
use dispatch::courier::Courier;
use plico::delivery::Delivery;

pub(super) const SALT: u64 = 0x6465_6c69;
const TOKEN: &str = "dlr-token-0123456789abcdef";
const HEADER: &str = "codice_fiscale;given_names;surname;birth_date;email;mobile;address;deceased;serial;expiry;replaced_by\n";
const HOLDERS: [(&str, u64); 2] = [("DNGNCL80A01F839", 601), ("MLLZOE92M45F205", 602)];

pub(super) fn policy() -> OutboxPolicy {
    OutboxPolicy {
        max_attempts: 3,
        backoff_base_ms: 200,
        backoff_max_ms: 1000,
        jitter: false,
        fallback: Fallback {
            sms_to_email: false,
            counter_reprint: true,
        },
    }
}

/// A service over sled with cards 601 and 602 active, and `plico::serve` running its workers
/// with the couriers `couriers` makes (given the listener's port) until dropped.
pub(super) struct Running {
    _dir: tempfile::TempDir,
    pub(super) state: AppState,
    pub(super) client: Client,
    /// The 2-of-2 custodian shares of the HSM (unsealed at start).
    shares: Vec<SecretString>,
    served: Option<super::support::Served>,
}

impl Running {
    pub(super) async fn start(
        dir: tempfile::TempDir,
        couriers: impl FnOnce(u16) -> Vec<(Channel, Arc<dyn Courier>)>,
        before_workers: impl AsyncFnOnce(&Client, &AppState),
    ) -> Running {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let (hsm, shares) = init_hsm(&data, 2, 2);
        for s in &shares {
            hsm.unseal(s).unwrap();
        }
        let store = Arc::new(vault::SledStore::open(&data.join("store")).unwrap());
        let settings = plico::Settings {
            codes: vault::CodePolicy::CIE,
            ..plico::Settings::default()
        };
        let state = AppState::with_settings(hsm, store, &settings).unwrap();
        let mut delivery =
            Delivery::new(&state.print.clone(), policy()).with_dlr_token(SecretString::from(TOKEN));
        delivery.poll = Duration::from_millis(50);
        // The overdue check runs when the workers start: every job made before is overdue.
        delivery.overdue_after = Duration::from_millis(1);
        for (channel, courier) in couriers(port) {
            delivery = delivery.with_courier(channel, courier, 4);
        }
        let state = state.with_delivery(delivery);
        let staff = open_with_accounts(&state, &["manufacturer", "cms", "operator", "auditor"]);
        let client = Client::new(&state, staff.tokens);
        let csv: String = std::iter::once(HEADER.to_owned())
            .chain(HOLDERS.iter().enumerate().map(|(i, (cf15, n))| {
                format!(
                    "{};Nicolò;D'Angelo;1980-01-01;h{i}@example.it;+39333111220{i};Via Roma {n}, 00100 Roma;false;{};2032-12-31;\n",
                    cf(cf15),
                    serial(*n)
                )
            }))
            .collect();
        let a = client
            .post_raw("cms", "/v1/registry", "text/csv", csv)
            .await;
        assert_eq!(a.json["outcome"], "applied", "{}", a.text);
        let a = client
            .post_raw(
                "manufacturer",
                "/v1/batches?manufacturer=ACME",
                "text/plain",
                codes_file(601..=602, SALT),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
        for (_, n) in HOLDERS {
            let uri = format!("/v1/cards/{}/activate", serial(n));
            let a = client.post("operator", &uri, identification(n)).await;
            assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        }
        before_workers(&client, &state).await;
        let served = super::support::Served::start(listener, &state);
        Running {
            _dir: dir,
            state,
            client,
            shares,
            served: Some(served),
        }
    }

    /// Waits until card `n`'s latest job for `part` is in `state`.
    pub(super) async fn wait_for(&self, n: u64, part: Part, state: JobState) -> cards::Job {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let jobs = self.state.cms.jobs_of(&serial(n)).unwrap();
            if let Some(j) = jobs.iter().rev().find(|j| j.part == part) {
                if j.state == state {
                    return j.clone();
                }
                assert!(
                    Instant::now() < deadline,
                    "card {n} part {part}: {} (attempts {}, {:?}), not {state}",
                    j.state,
                    j.attempts,
                    j.last_error
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the server and its workers, and hands back the data directory and the state (to
    /// serve the same store again, as after a restart with another configuration).
    pub(super) async fn halt(mut self) -> (tempfile::TempDir, AppState) {
        if let Some(served) = self.served.take() {
            served.stop().await;
        }
        (self._dir, self.state)
    }

    pub(super) async fn stop(self) {
        let _ = self.halt().await;
    }
}

/// The e-mail courier to smtp-sink on loopback `port` (plain SMTP, as smtp-sink offers no
/// STARTTLS), for [`Running::start`].
fn sink_couriers(port: u16) -> Vec<(Channel, Arc<dyn Courier>)> {
    let mut c = SmtpConfig::new("127.0.0.1", port, "plico@example.it");
    c.security = SmtpSecurity::InsecurePlaintext;
    vec![(
        Channel::Email,
        Arc::new(SmtpCourier::new(c).unwrap()) as Arc<dyn Courier>,
    )]
}

pub(super) async fn dispatch(client: &Client, n: u64, plan: &str) {
    let uri = format!("/v1/cards/{}/dispatch", serial(n));
    let a = client.post("cms", &uri, json!({"plan": plan})).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    if plan.starts_with("counter(") {
        // Part B goes only once part A is handed over at the counter.
        assert_eq!(a.json["jobs"][1]["state"], "awaiting_counter", "{}", a.text);
        let uri = format!("/v1/cards/{}/counter-page", serial(n));
        let req = client
            .request("operator", Method::POST, &uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from("{}"))
            .unwrap();
        let res = client.app.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn email_reaches_smtp_sink_once_and_a_suspended_card_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sink_dir = dir.path().join("sink");
    std::fs::create_dir(&sink_dir).unwrap();
    let (_sink, sink_port) = smtp_sink(&sink_dir, true, &[]).await;
    let running = Running::start(
        dir,
        |_| sink_couriers(sink_port),
        async |client, _| {
            dispatch(client, 601, "email").await;
            dispatch(client, 602, "email").await;
            // Card 602 is suspended between its dispatch and the workers' start.
            let uri = format!("/v1/cards/{}/suspend", serial(602));
            let a = client
                .post("operator", &uri, json!({"reason": "lost"}))
                .await;
            assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        },
    )
    .await;
    let sent = running.wait_for(601, Part::Whole, JobState::Sent).await;
    assert_eq!(sent.attempts, 1);
    // Refused for the card's state: cancelled with that state, not `dead`, no fallback.
    let cancelled = running
        .wait_for(602, Part::Whole, JobState::Cancelled)
        .await;
    assert_eq!(cancelled.attempts, 1, "a refused release is not retried");
    assert_eq!(cancelled.cancel_reason.as_deref(), Some("card_suspended"));
    assert_eq!(running.state.cms.jobs_of(&serial(602)).unwrap().len(), 1);
    let status = running
        .client
        .get("cms", &format!("/v1/cards/{}", serial(601)))
        .await;
    assert_eq!(status.json["parts"][0]["state"], "sent", "{}", status.text);
    // Give a duplicate the time to arrive, then: one message, card 601's codes, no full serial.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let files: Vec<PathBuf> = std::fs::read_dir(sink_dir.join("mail"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let text = String::from_utf8_lossy(&std::fs::read(&files[0]).unwrap()).into_owned();
    let (pin, puk) = codes_of(601, SALT);
    assert!(text.contains(&pin) && text.contains(&puk), "codes missing");
    assert!(!text.contains(&serial(601)), "full serial in the message");
    let (pin2, puk2) = codes_of(602, SALT);
    assert!(!text.contains(&pin2) && !text.contains(&puk2));
    // The release of 601 is audited for its job; 602's codes were never released.
    let events = running
        .state
        .audit
        .query(&vault::Query {
            action: Some("card.codes_release".into()),
            limit: 100,
            ..vault::Query::default()
        })
        .unwrap()
        .events;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        events[0].details["for"],
        format!("dispatch job {}", sent.id)
    );
    running.stop().await;
}

/// A DSN fixture of dispatch's parser tests with its returned `Message-ID` set to `id`.
fn dsn_for(fixture: &str, id: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("dispatch/tests/fixtures/dsn")
        .join(fixture);
    let text = std::fs::read_to_string(path).unwrap();
    let fixture_id = "<0f5c2b7e9a1d4c3b8e6f0a2d4c6e8a0b.plico@example.it>";
    assert!(text.contains(fixture_id));
    text.replace(fixture_id, id)
}

/// An e-mail goes out through smtp-sink; a delay warning for it changes nothing; the bounce
/// (`Action: failed`, 5.1.1) for its `Message-ID` makes the part `dead` with the reason
/// `bounced 5.1.1`, once: the same DSN again is a repeat. Not a DSN, a DSN for another message
/// and another role are refused without a change.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bounce_marks_the_sent_email_dead_once() {
    let dir = tempfile::tempdir().unwrap();
    let sink_dir = dir.path().join("sink");
    std::fs::create_dir(&sink_dir).unwrap();
    let (_sink, sink_port) = smtp_sink(&sink_dir, true, &[]).await;
    let running = Running::start(
        dir,
        |_| sink_couriers(sink_port),
        async |client, _| dispatch(client, 601, "email").await,
    )
    .await;
    let sent = running.wait_for(601, Part::Whole, JobState::Sent).await;
    let mail = loop {
        let files: Vec<PathBuf> = std::fs::read_dir(sink_dir.join("mail"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        if let Some(f) = files.first() {
            break String::from_utf8_lossy(&std::fs::read(f).unwrap()).into_owned();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let message_id = mail
        .lines()
        .find_map(|l| l.strip_prefix("Message-ID: "))
        .expect("a Message-ID")
        .trim()
        .to_owned();
    let client = &running.client;
    let post = |who: &'static str, body: String| async move {
        client
            .post_raw(who, "/v1/bounces", "message/rfc822", body)
            .await
    };
    let part_state = || async {
        let a = client
            .get("cms", &format!("/v1/cards/{}", serial(601)))
            .await;
        a.json["parts"][0]["state"].as_str().unwrap().to_owned()
    };

    // A delay warning: nothing changes.
    let a = post("cms", dsn_for("postfix-delayed.eml", &message_id)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(
        (&a.json["outcome"], &a.json["action"], &a.json["status"]),
        (&json!("ignored"), &json!("delayed"), &json!("4.4.1")),
        "{}",
        a.text
    );
    assert_eq!(part_state().await, "sent");
    // Refusals change nothing either: another role, not a DSN, another message's DSN.
    let bounce = dsn_for("postfix-user-unknown.eml", &message_id);
    let a = post("operator", bounce.clone()).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.text);
    let (pin, _) = codes_of(601, SALT);
    let a = post("cms", format!("Subject: hello\n\nPIN {pin}\n")).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    assert!(a.text.contains("multipart/report"), "{}", a.text);
    assert!(!a.text.contains(&pin), "{}", a.text);
    let other = dsn_for(
        "postfix-user-unknown.eml",
        "<ffffffffffffffffffffffffffffffff.plico@example.it>",
    );
    let a = post("cms", other).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text);
    let a = post("cms", dsn_for("postfix-user-unknown.eml", "<x@example.it>")).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text);
    assert_eq!(part_state().await, "sent");

    // The bounce: dead with its status, once.
    let a = post("cms", bounce.clone()).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(
        (
            &a.json["outcome"],
            &a.json["status"],
            &a.json["job"],
            &a.json["state"]
        ),
        (
            &json!("applied"),
            &json!("5.1.1"),
            &json!(sent.id),
            &json!("dead")
        ),
        "{}",
        a.text
    );
    assert!(!a.text.contains("rossi"), "{}", a.text);
    assert_eq!(part_state().await, "dead");
    let card = client
        .get("cms", &format!("/v1/cards/{}", serial(601)))
        .await;
    assert_eq!(
        card.json["parts"][0]["failure_reason"], "bounced",
        "{}",
        card.text
    );
    let job = running.wait_for(601, Part::Whole, JobState::Dead).await;
    assert_eq!(job.last_error.as_deref(), Some("bounced 5.1.1"));
    let a = post("cms", bounce).await;
    assert_eq!(a.json["outcome"], "repeat", "{}", a.text);
    let dead_events = running
        .state
        .audit
        .query(&vault::Query {
            action: Some("dispatch.dead".into()),
            limit: 100,
            ..vault::Query::default()
        })
        .unwrap()
        .events;
    assert_eq!(dead_events.len(), 1, "{dead_events:?}");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sms_through_kannel_is_delivered_by_its_report() {
    let dir = tempfile::tempdir().unwrap();
    let kannel_dir = dir.path().join("kannel");
    std::fs::create_dir(&kannel_dir).unwrap();
    let kannel = Kannel::start(&kannel_dir).await;
    let running = Running::start(
        dir,
        |port| {
            let mut c = kannel.config("s3cret");
            c.dlr_url = Some(format!(
                "http://127.0.0.1:{port}/v1/dlr?token={TOKEN}&key=%KEY%&status=%d"
            ));
            vec![(
                Channel::Sms,
                Arc::new(KannelCourier::new(c).unwrap()) as Arc<dyn Courier>,
            )]
        },
        async |client, _| dispatch(client, 601, "counter(2)+sms").await,
    )
    .await;
    let b = running.wait_for(601, Part::B, JobState::Delivered).await;
    assert_eq!(b.attempts, 1);
    let status = running
        .client
        .get("cms", &format!("/v1/cards/{}", serial(601)))
        .await;
    assert_eq!(
        status.json["parts"][1]["state"], "delivered",
        "{}",
        status.text
    );
    // The SMS carried part B only: the last digits, not the whole PIN.
    let log = kannel.fakesmsc_log();
    let (pin, puk) = codes_of(601, SALT);
    assert!(log.contains(&pin[2..]), "part B not at the fake SMSC");
    assert!(!log.contains(&pin), "whole PIN in an SMS");
    // Kannel, configured as docs/delivery.md says, kept the text out of its own logs (the fake
    // SMSC's output is the phone's side); its access log recorded the send.
    let logs = kannel.own_logs();
    assert!(
        logs.iter()
            .any(|(name, text)| name == "bearerbox-access.log" && text.contains("Sent SMS")),
        "{logs:?}"
    );
    for (name, text) in &logs {
        for digits in [&pin[2..], &puk[2..]] {
            assert!(!text.contains(digits), "part B's digits in kannel's {name}");
        }
    }
    running.stop().await;
}

#[tokio::test]
async fn delivery_reports_need_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let state = cie_state(
        &dir.path().join("data"),
        plico::DEFAULT_SENSITIVE_PER_MINUTE,
    );
    let state = state.clone().with_delivery(
        Delivery::new(&state.print.clone(), policy()).with_dlr_token(SecretString::from(TOKEN)),
    );
    open_with_accounts(&state, &[]);
    let router = app(state.clone());
    let get = |uri: String| {
        let app = router.clone();
        async move {
            let req = Request::builder().uri(uri).body(Body::empty()).unwrap();
            send(&app, req).await
        }
    };
    let key = "00112233445566778899aabbccddeeff";
    for uri in [
        format!("/v1/dlr?key={key}&status=1"),
        format!("/v1/dlr?token=wrong&key={key}&status=1"),
        format!("/v1/dlr?token={TOKEN}x&key={key}&status=1"),
        "/v1/dlr".to_owned(),
    ] {
        let a = get(uri.clone()).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{uri}: {}", a.text);
    }
    // With the token: intermediate reports are ignored, an unknown key is 404.
    let a = get(format!("/v1/dlr?token={TOKEN}&key={key}&status=8")).await;
    assert_eq!(
        (a.status, &a.json["outcome"]),
        (StatusCode::OK, &json!("ignored"))
    );
    let a = get(format!("/v1/dlr?token={TOKEN}&key={key}&status=1")).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text);
    // A service without a token refuses every report.
    let bare = cie_state(
        &dir.path().join("bare"),
        plico::DEFAULT_SENSITIVE_PER_MINUTE,
    );
    let req = Request::builder()
        .uri(format!("/v1/dlr?token={TOKEN}&key={key}&status=1"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app(bare), req).await.status, StatusCode::UNAUTHORIZED);
}

/// The messages in a sink's dump directory, as text.
pub(super) fn sink_messages(sink_dir: &Path) -> Vec<String> {
    std::fs::read_dir(sink_dir.join("mail"))
        .map(|d| {
            d.map(|e| {
                String::from_utf8_lossy(&std::fs::read(e.unwrap().path()).unwrap()).into_owned()
            })
            .collect()
        })
        .unwrap_or_default()
}

fn message_id(text: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix("Message-ID:").map(|v| v.trim().to_owned()))
        .unwrap_or_default()
}

fn smtp_courier(port: u16) -> Vec<(Channel, Arc<dyn Courier>)> {
    let mut c = SmtpConfig::new("127.0.0.1", port, "plico@example.it");
    c.security = SmtpSecurity::InsecurePlaintext;
    vec![(
        Channel::Email,
        Arc::new(SmtpCourier::new(c).unwrap()) as Arc<dyn Courier>,
    )]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_answering_421_is_retried_until_it_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let busy_dir = dir.path().join("busy");
    let sink_dir = dir.path().join("sink");
    std::fs::create_dir(&busy_dir).unwrap();
    std::fs::create_dir(&sink_dir).unwrap();
    // The relay answers 421 (service not available) to every RCPT.
    let (busy, port) = smtp_sink(&busy_dir, true, &["-Q", "RCPT"]).await;
    let running = Running::start(
        dir,
        |_| smtp_courier(port),
        async |client, _| dispatch(client, 601, "email").await,
    )
    .await;
    let failed = running.wait_for(601, Part::Whole, JobState::Failed).await;
    assert!(failed.attempts >= 1);
    // A temporary failure: `failed` with a reason, due again after its backoff (not dead).
    assert!(failed.last_error.is_some(), "{failed:?}");
    let status = running
        .client
        .get("cms", &format!("/v1/cards/{}", serial(601)))
        .await;
    assert_eq!(
        status.json["parts"][0]["state"], "failed",
        "{}",
        status.text
    );
    // The metrics show the temporary failure and the overdue part (the workers' first check
    // ran at start, and the job was older than the test's 1 ms).
    let m = running.client.get("auditor", "/v1/dispatch/metrics").await;
    assert_eq!(m.status, StatusCode::OK, "{}", m.text);
    let value = |name: &str| -> u64 {
        m.text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{}", m.text))
    };
    assert!(value("plico_dispatch_failed_total") >= 1, "{}", m.text);
    assert_eq!(value("plico_dispatch_overdue_parts"), 1, "{}", m.text);
    assert_eq!(value("plico_dispatch_workers"), 1);
    let refused = running.client.get("cms", "/v1/dispatch/metrics").await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    // The relay comes back on the same port: the next attempt goes through.
    drop(busy);
    let _sink = smtp_sink_on(port, &sink_dir, true, &[]).await;
    let sent = running.wait_for(601, Part::Whole, JobState::Sent).await;
    assert!(sent.attempts >= 2, "{sent:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Exactly this job's message, once (other tests may pick the port while it is free, so
    // only this job's Message-ID is counted).
    let ours: Vec<String> = sink_messages(&sink_dir)
        .into_iter()
        .filter(|m| {
            let (pin, _) = codes_of(601, SALT);
            m.contains(&pin)
        })
        .collect();
    assert_eq!(ours.len(), 1, "the part arrived {} times", ours.len());
    assert!(!message_id(&ours[0]).is_empty());
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resend_through_the_workers_sends_only_the_lost_part() {
    let dir = tempfile::tempdir().unwrap();
    let sink_dir = dir.path().join("sink");
    std::fs::create_dir(&sink_dir).unwrap();
    let (_sink, port) = smtp_sink(&sink_dir, true, &[]).await;
    let running = Running::start(
        dir,
        |_| smtp_courier(port),
        async |client, _| dispatch(client, 601, "counter(2)+email").await,
    )
    .await;
    let first = running.wait_for(601, Part::B, JobState::Sent).await;
    // The holder says part B never arrived: the help desk resends that part only.
    let uri = format!("/v1/cards/{}/resend", serial(601));
    let a = running.client.post("cms", &uri, json!({"part": "B"})).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let deadline = Instant::now() + Duration::from_secs(30);
    let second = loop {
        let jobs = running.state.cms.jobs_of(&serial(601)).unwrap();
        if let Some(j) = jobs
            .iter()
            .find(|j| j.part == Part::B && j.id != first.id && j.state == JobState::Sent)
        {
            break j.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the resent part was not sent: {jobs:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_ne!(second.idempotency_key, first.idempotency_key);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Two e-mails, both part B (different jobs, so different Message-IDs); part A, printed at
    // the counter, never went by e-mail.
    let (pin, puk) = codes_of(601, SALT);
    let mails = sink_messages(&sink_dir);
    assert_eq!(mails.len(), 2, "{} messages", mails.len());
    assert_ne!(message_id(&mails[0]), message_id(&mails[1]));
    for m in &mails {
        assert!(
            m.contains(&pin[2..]) && m.contains(&puk[2..]),
            "part B missing"
        );
        assert!(
            !m.contains(&pin) && !m.contains(&puk),
            "whole code in a message"
        );
    }
    let jobs = running.state.cms.jobs_of(&serial(601)).unwrap();
    let a_jobs: Vec<_> = jobs.iter().filter(|j| j.part == Part::A).collect();
    assert_eq!(a_jobs.len(), 1);
    assert_eq!(a_jobs[0].state, JobState::HandedOver);
    running.stop().await;
}

/// An emergency seal while the workers run: they claim nothing while sealed (the job stays
/// queued, no attempt spent, nothing sent), `/readyz` is 503, and once the custodians unseal
/// the job goes out exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_emergency_seal_holds_delivery_until_the_quorum_unseals() {
    let dir = tempfile::tempdir().unwrap();
    let sink_dir = dir.path().join("sink");
    std::fs::create_dir(&sink_dir).unwrap();
    let (_sink, sink_port) = smtp_sink(&sink_dir, true, &[]).await;
    let running = Running::start(
        dir,
        |_| sink_couriers(sink_port),
        async |client, _| {
            dispatch(client, 601, "email").await;
            let a = client.post("admin", "/v1/sys/seal", json!({})).await;
            assert_eq!(a.status, StatusCode::OK, "{}", a.text);
            assert_eq!(a.json["was_sealed"], false);
        },
    )
    .await;
    assert!(running.state.hsm.status().sealed);
    let ready = send(
        &running.client.app,
        Request::get("/readyz").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    // Many polls of the workers (50 ms each): nothing is claimed while sealed.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let jobs = running.state.cms.jobs_of(&serial(601)).unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].state, JobState::Queued, "{:?}", jobs[0]);
    assert_eq!(jobs[0].attempts, 0);
    let mail = sink_dir.join("mail");
    let count = || std::fs::read_dir(&mail).map(|d| d.count()).unwrap_or(0);
    assert_eq!(count(), 0, "sent while sealed");
    // One share is not enough; the quorum unseals, and the job goes out once.
    for (i, share) in running.shares.iter().enumerate() {
        let req = Request::post("/v1/sys/unseal")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(
                json!({"share": share.expose_secret()}).to_string(),
            ))
            .unwrap();
        let a = send(&running.client.app, req).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        assert_eq!(a.json["sealed"], i == 0, "{}", a.text);
    }
    let sent = running.wait_for(601, Part::Whole, JobState::Sent).await;
    assert_eq!(sent.attempts, 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count(), 1);
    let events = running
        .state
        .audit
        .query(&vault::Query {
            action: Some("hsm.seal".into()),
            limit: 10,
            ..vault::Query::default()
        })
        .unwrap()
        .events;
    assert_eq!(events.len(), 1, "{events:?}");
    running.stop().await;
}
