//! The emergency seal over HTTP (`POST /v1/sys/seal`): who may call it, what it drops, that
//! an import running at that moment commits whole or not at all, that deliveries running at
//! that moment finish or wait whole and resume after the unseal, and that only the quorum
//! unseals again.

use super::support::{open_with_accounts, Client};
use super::*;
use plico::Settings;
use vault::CodePolicy;
use vault::SledStore;

fn card_lines(first: u64, count: u64) -> String {
    super::support::codes_file(first..=first + count - 1, 0x5ea1)
}

async fn unseal_with(client: &Client, share: &SecretString) -> Answer {
    let req = Request::post("/v1/sys/unseal")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(
            json!({"share": share.expose_secret()}).to_string(),
        ))
        .unwrap();
    send(&client.app, req).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_emergency_seal_drops_the_keys_and_an_import_under_way_is_whole_or_absent() {
    let dir = tempfile::tempdir().unwrap();
    let (hsm, shares) = init_hsm(dir.path(), 3, 2);
    hsm.unseal(&shares[0]).unwrap();
    hsm.unseal(&shares[1]).unwrap();
    let store = Arc::new(SledStore::open(&dir.path().join("store")).unwrap());
    let settings = Settings {
        codes: CodePolicy::CIE,
        ..Settings::default()
    };
    let state = AppState::with_settings(hsm.clone(), store, &settings).unwrap();
    let staff = open_with_accounts(&state, &["officer", "acme", "operator", "auditor"]);
    let client = Arc::new(Client::new(&state, staff.tokens));

    let small = client
        .post_raw(
            "acme",
            "/v1/batches?manufacturer=ACME",
            "text/plain",
            card_lines(1, 100),
        )
        .await;
    assert_eq!(small.status, StatusCode::CREATED, "{}", small.text);

    // Not for the other roles.
    for who in ["operator", "acme", "auditor"] {
        let a = client.post(who, "/v1/sys/seal", json!({})).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{who}: {}", a.text);
    }
    assert!(!hsm.status().sealed);

    // A large import and the seal at the same time.
    const BIG: u64 = 150_000;
    let upload = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .post_raw(
                    "acme",
                    "/v1/batches?manufacturer=ACME",
                    "text/plain",
                    card_lines(1_000, BIG),
                )
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let sealed = client.post("officer", "/v1/sys/seal", json!({})).await;
    assert_eq!(sealed.status, StatusCode::OK, "{}", sealed.text);
    assert_eq!(sealed.json["sealed"], true);
    assert!(hsm.status().sealed);
    let ready = send(
        &client.app,
        Request::get("/readyz").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    let big = upload.await.unwrap();
    // Sealed: a new import is refused, the seal again is harmless.
    let refused = client
        .post_raw(
            "acme",
            "/v1/batches?manufacturer=ACME",
            "text/plain",
            card_lines(500_000, 10),
        )
        .await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.text
    );
    let again = client.post("admin", "/v1/sys/seal", json!({})).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert_eq!(again.json["was_sealed"], true);

    // Only a quorum unseals: one share leaves it sealed.
    let one = unseal_with(&client, &shares[2]).await;
    assert_eq!(one.json["sealed"], true, "{}", one.text);
    assert!(hsm.status().sealed);
    let two = unseal_with(&client, &shares[0]).await;
    assert_eq!(two.json["sealed"], false, "{}", two.text);
    let ready = send(
        &client.app,
        Request::get("/readyz").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(ready.status, StatusCode::OK);

    // The import that raced the seal is whole or absent: never a part of it.
    let list = client.get("acme", "/v1/batches").await;
    let batches = list.json["batches"].as_array().unwrap().clone();
    let committed: Vec<&Value> = batches
        .iter()
        .filter(|b| b["state"] == "committed")
        .collect();
    if big.status == StatusCode::CREATED {
        assert_eq!(big.json["cards"], BIG, "{}", big.text);
        assert_eq!(committed.len(), 2, "{}", list.text);
    } else {
        assert_eq!(big.status, StatusCode::SERVICE_UNAVAILABLE, "{}", big.text);
        assert_eq!(committed.len(), 1, "{}", list.text);
        let retry = client
            .post_raw(
                "acme",
                "/v1/batches?manufacturer=ACME",
                "text/plain",
                card_lines(1_000, BIG),
            )
            .await;
        assert_eq!(retry.status, StatusCode::CREATED, "{}", retry.text);
        assert_eq!(retry.json["cards"], BIG);
    }
    let total: u64 = client.get("acme", "/v1/batches").await.json["batches"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["state"] == "committed")
        .map(|b| b["cards"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 100 + BIG);

    // Each seal is audited, by its caller.
    let events = state
        .audit
        .query(&vault::Query {
            action: Some("hsm.seal".into()),
            limit: 10,
            ..vault::Query::default()
        })
        .unwrap()
        .events;
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0].details["was_sealed"], "false");
    assert_eq!(events[1].details["was_sealed"], "true");
}

/// Holders and cards of the delivery under a seal: `n` holders, each with card `FIRST + i`.
const FIRST: u64 = 7_001;
const SALT: u64 = 0x5ea1_de11;
const HEADER: &str = "codice_fiscale;given_names;surname;birth_date;email;mobile;address;deceased;serial;expiry;replaced_by\n";

/// The registry of `n` holders, each with one card and an e-mail address.
fn registry(n: u64) -> String {
    std::iter::once(HEADER.to_owned())
        .chain((0..n).map(|i| {
            let first15 = format!("DNGNCL80A{:02}F{:03}", 1 + i % 28, 100 + i);
            format!(
                "{};Nicolò;D'Angelo;1980-01-01;h{i}@example.it;+39333111{:04};Via Roma {i}, 00100 Roma;false;{};2032-12-31;\n",
                super::support::cf(&first15),
                i,
                super::batches::serial(FIRST + i)
            )
        }))
        .collect()
}

/// The jobs of cards `FIRST..FIRST + n`, one each.
fn jobs(state: &AppState, n: u64) -> Vec<cards::Job> {
    (0..n)
        .flat_map(|i| {
            state
                .cms
                .jobs_of(&super::batches::serial(FIRST + i))
                .unwrap()
        })
        .collect()
}

fn message_ids(sink_dir: &Path) -> Vec<String> {
    super::delivery::sink_messages(sink_dir)
        .iter()
        .map(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("Message-ID:").map(|v| v.trim().to_owned()))
                .unwrap_or_default()
        })
        .collect()
}

/// An emergency seal while the delivery workers send e-mail to a slow relay (smtp-sink
/// answering each message after a second, four at a time): the sends under way finish and
/// are recorded, nothing more is claimed while sealed, no job is left half-way (`sending`)
/// and the audit chain verifies; after the quorum unseals, delivery resumes and every job
/// ends `sent`, each message at most once more than its job's (the crash bound of
/// docs/delivery.md: at most `max_in_flight` duplicates a channel).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_emergency_seal_during_delivery_leaves_nothing_half_done_and_delivery_resumes() {
    use cards::{Channel, JobState};
    use dispatch::courier::smtp::{SmtpConfig, SmtpCourier, SmtpSecurity};
    use dispatch::courier::Courier;
    const CARDS: u64 = 24;
    const IN_FLIGHT: usize = 4;

    let dir = tempfile::tempdir().unwrap();
    let sink_dir = dir.path().join("sink");
    std::fs::create_dir(&sink_dir).unwrap();
    let (_sink, sink_port) = super::peers::smtp_sink(&sink_dir, true, &["-w", "1"]).await;
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let (hsm, shares) = init_hsm(&data, 2, 2);
    for s in &shares {
        hsm.unseal(s).unwrap();
    }
    let store = Arc::new(SledStore::open(&data.join("store")).unwrap());
    let settings = Settings {
        codes: CodePolicy::CIE,
        ..Settings::default()
    };
    let state = AppState::with_settings(hsm.clone(), store, &settings).unwrap();
    let mut smtp = SmtpConfig::new("127.0.0.1", sink_port, "plico@example.it");
    smtp.security = SmtpSecurity::InsecurePlaintext;
    let mut delivery = plico::delivery::Delivery::new(
        &state.print.clone(),
        cards::OutboxPolicy {
            max_attempts: 5,
            backoff_base_ms: 200,
            backoff_max_ms: 1000,
            jitter: false,
            fallback: cards::Fallback {
                sms_to_email: false,
                counter_reprint: false,
            },
        },
    )
    .with_courier(
        Channel::Email,
        Arc::new(SmtpCourier::new(smtp).unwrap()) as Arc<dyn Courier>,
        IN_FLIGHT,
    );
    delivery.poll = Duration::from_millis(50);
    let state = state.with_delivery(delivery);
    let staff = open_with_accounts(&state, &["officer", "manufacturer", "cms", "operator"]);
    let client = Client::new(&state, staff.tokens);
    let a = client
        .post_raw("cms", "/v1/registry", "text/csv", registry(CARDS))
        .await;
    assert_eq!(a.json["outcome"], "applied", "{}", a.text);
    let a = client
        .post_raw(
            "manufacturer",
            "/v1/batches?manufacturer=ACME",
            "text/plain",
            super::support::codes_file(FIRST..=FIRST + CARDS - 1, SALT),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    for i in 0..CARDS {
        let serial = super::batches::serial(FIRST + i);
        let uri = format!("/v1/cards/{serial}/activate");
        let a = client
            .post("operator", &uri, super::support::identification(FIRST + i))
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        let uri = format!("/v1/cards/{serial}/dispatch");
        let a = client.post("cms", &uri, json!({"plan": "email"})).await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    }

    // The workers start; the seal comes once the first messages are through.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let served = super::support::Served::start(listener, &state);
    let deadline = Instant::now() + Duration::from_secs(60);
    while message_ids(&sink_dir).len() < IN_FLIGHT {
        assert!(Instant::now() < deadline, "nothing was sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sealed = client.post("officer", "/v1/sys/seal", json!({})).await;
    assert_eq!(sealed.status, StatusCode::OK, "{}", sealed.text);
    assert!(hsm.status().sealed);

    // Sealed: the sends under way end and are recorded; then nothing moves.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let all = jobs(&state, CARDS);
        if all.iter().all(|j| j.state != JobState::Sending) {
            break;
        }
        assert!(Instant::now() < deadline, "jobs left sending: {all:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Longer than a message takes the sink: a send started after the seal would show.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during = jobs(&state, CARDS);
    let sent_sealed = during.iter().filter(|j| j.state == JobState::Sent).count();
    assert!(
        sent_sealed < CARDS as usize,
        "every job went out before the seal took effect"
    );
    for j in &during {
        assert!(
            matches!(
                j.state,
                JobState::Queued | JobState::Sent | JobState::Failed
            ),
            "job {} is {} while sealed",
            j.id,
            j.state
        );
    }
    let messages_sealed = message_ids(&sink_dir).len();
    assert!(
        messages_sealed >= sent_sealed,
        "{messages_sealed} < {sent_sealed}"
    );
    assert!(
        messages_sealed <= sent_sealed + IN_FLIGHT,
        "{messages_sealed} messages for {sent_sealed} sent jobs"
    );
    // Every job marked sent has its audited release and its `dispatch.sent` event.
    let releases = audit_actions(&state, "card.codes_release").len();
    let sent_events = audit_actions(&state, "dispatch.sent").len();
    assert_eq!(sent_events, sent_sealed);
    assert!(releases >= sent_sealed, "{releases} releases");
    assert!(state.audit.verify().unwrap().intact());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        message_ids(&sink_dir).len(),
        messages_sealed,
        "sent while sealed"
    );

    // The quorum unseals; delivery resumes and every job ends sent.
    for (i, share) in shares.iter().enumerate() {
        let a = unseal_with(&client, share).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        assert_eq!(a.json["sealed"], i == 0, "{}", a.text);
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let all = jobs(&state, CARDS);
        if all.iter().all(|j| j.state == JobState::Sent) && all.len() == CARDS as usize {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every job was sent after the unseal: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let a late duplicate arrive, then count: every job's message, duplicates within the bound.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let ids = message_ids(&sink_dir);
    let mut distinct = ids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), CARDS as usize, "{ids:?}");
    assert!(
        ids.len() <= CARDS as usize + IN_FLIGHT,
        "{} messages for {CARDS} jobs",
        ids.len()
    );
    assert!(state.audit.verify().unwrap().intact());
    served.stop().await;
}
