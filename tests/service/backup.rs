//! The backup and restore drill (issue 19): a backup of the real `plico` binary taken while an
//! import and e-mail deliveries (into postfix's `smtp-sink`) run, the server then killed (the
//! disaster), the archive restored into a fresh directory, the rollback accepted by the
//! custodians, the restored directory served and unsealed; every card's codes readable, the
//! chain verified, and delivery resumed with no duplicate beyond the bound: a message goes out
//! twice only if the killed server sent it after the snapshot (its job is not `sent` in the
//! backup), and never for a job the backup records as sent.

use super::batches::{codes_of, serial};
use super::dispatch_crash::{cns_codes, count_files, messages, populate, SALT};
use super::peers::smtp_sink;
use super::*;
use cards::JobState;
use std::collections::{BTreeMap, BTreeSet};
use vault::SledStore;

const CARDS: u64 = 1_000;
/// Cards of the import that runs during the backup (serials after the dispatched ones).
const IMPORTED: u64 = 50_000;

/// The restored store, unsealed offline with the dev share.
fn open_offline(data: &Path) -> AppState {
    let hsm = Arc::new(SimulatedHsm::open(data).unwrap());
    let share = std::fs::read_to_string(data.join("dev-share.txt")).unwrap();
    hsm.unseal(&SecretString::from(share.trim().to_owned()))
        .unwrap();
    let store: Arc<dyn vault::Store> = Arc::new(SledStore::open(&data.join("store")).unwrap());
    let state = AppState::new(hsm, store).unwrap();
    state
        .unsealed(&vault::Actor::system("backup-test"), "test")
        .unwrap();
    state
}

/// Job ids of every dispatched card's job that is `sent`, and every card's job count.
fn sent_jobs(state: &AppState) -> BTreeSet<u64> {
    let mut sent = BTreeSet::new();
    for n in 1..=CARDS {
        let jobs = state.cms.jobs_of(&serial(n)).unwrap();
        assert_eq!(jobs.len(), 1, "card {n}: {jobs:?}");
        if jobs[0].state == JobState::Sent {
            sent.insert(jobs[0].id);
        }
    }
    sent
}

/// A manufacturer account's token, created offline in the stopped server's store.
fn manufacturer_token(data: &Path, out: &Path) {
    let state = open_offline(data);
    let (_, token) = state
        .accounts
        .create(
            "backup-maker",
            vault::Role::Manufacturer,
            &vault::Actor::system("backup-test"),
        )
        .unwrap();
    std::fs::write(out, token.expose_secret()).unwrap();
    state.shut_down().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_while_importing_and_delivering_restores_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (status, _) = support::serve_dev(&data).terminate();
    assert!(status.success());
    let d = data.clone();
    let maker = tmp.path().join("maker-token");
    let m = maker.clone();
    tokio::task::spawn_blocking(move || {
        populate(&d, CARDS);
        manufacturer_token(&d, &m);
    })
    .await
    .unwrap();

    let sink_dir = tmp.path().join("sink");
    std::fs::create_dir(&sink_dir).unwrap();
    let (_sink, port) = smtp_sink(&sink_dir, true, &[]).await;
    let mail = sink_dir.join("mail");
    let identity = age::x25519::Identity::generate();
    let identity_file = tmp.path().join("backup.key");
    std::fs::write(
        &identity_file,
        format!("{}\n", identity.to_string().expose_secret()),
    )
    .unwrap();
    let config = tmp.path().join("plico.toml");
    std::fs::write(
        &config,
        format!(
            "[backup]\nrecipient = \"{}\"\n\n\
             [dispatch]\nemail_per_second = 150\nmax_in_flight = 16\n\
             max_attempts = 5\nbackoff_base_ms = 200\nbackoff_cap_ms = 1000\n\n\
             [dispatch.smtp]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\n\
             from = \"pin@regione.esempio.it\"\nmax_connections = 4\n",
            identity.to_public()
        ),
    )
    .unwrap();

    // Delivering: wait for a fifth of the messages, then an import and the backup at once.
    let server = Server::dev(&data, Some(&config));
    let deadline = Instant::now() + Duration::from_secs(120);
    while count_files(&mail) < (CARDS / 5) as usize {
        assert!(Instant::now() < deadline, "the workers did not send");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let batch = cns_codes(CARDS + 1..=CARDS + IMPORTED);
    let token = std::fs::read_to_string(&maker).unwrap();
    let url = format!("{}/v1/batches?manufacturer=backup-test", server.url);
    let import = tokio::spawn(async move {
        http_client(None)
            .post(url)
            .bearer_auth(token)
            .body(batch)
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    let archive = tmp.path().join("plico.backup");
    let sent_at_backup = count_files(&mail);
    let t0 = Instant::now();
    let out = run_ok(
        plico()
            .args(["backup", "--out"])
            .arg(&archive)
            .args(["--addr", &server.url, "--token-file"])
            .arg(data.join("admin-token.txt")),
    );
    let took = t0.elapsed();
    let sent_after_backup = count_files(&mail);
    let size = std::fs::metadata(&archive).unwrap().len();
    eprintln!(
        "backup test: {} in {took:?} ({size} bytes); {sent_at_backup}..{sent_after_backup} of \
         {CARDS} messages sent around it",
        String::from_utf8_lossy(&out.stdout).trim()
    );
    assert!(
        sent_after_backup < CARDS as usize,
        "delivery was over before the backup ended"
    );
    let imported = import.await.unwrap().unwrap();
    eprintln!("backup test: the concurrent import answered {imported}");
    // The disaster: the server dies, with deliveries still going.
    server.sigkill();
    let sent_by_original = count_files(&mail);

    // Restore: refused into a non-empty directory, and with the wrong identity.
    let restored = tmp.path().join("restored");
    std::fs::create_dir(&restored).unwrap();
    std::fs::write(restored.join("stray"), b"x").unwrap();
    let err = run_fails(
        plico()
            .arg("restore")
            .arg(&archive)
            .arg("--data")
            .arg(&restored)
            .arg("--identity")
            .arg(&identity_file),
    );
    assert!(err.contains("is not empty"), "{err}");
    std::fs::remove_file(restored.join("stray")).unwrap();
    let wrong = tmp.path().join("wrong.key");
    std::fs::write(
        &wrong,
        format!(
            "{}\n",
            age::x25519::Identity::generate()
                .to_string()
                .expose_secret()
        ),
    )
    .unwrap();
    let err = run_fails(
        plico()
            .arg("restore")
            .arg(&archive)
            .arg("--data")
            .arg(&restored)
            .arg("--identity")
            .arg(&wrong),
    );
    assert!(err.contains("decrypt"), "{err}");
    assert_eq!(std::fs::read_dir(&restored).unwrap().count(), 0);
    let out = run_ok(
        plico()
            .arg("restore")
            .arg(&archive)
            .arg("--data")
            .arg(&restored)
            .arg("--identity")
            .arg(&identity_file),
    );
    eprintln!("{}", String::from_utf8_lossy(&out.stdout).trim());
    // The dev HSM's share (a custodian's share in production) and the admin's token file.
    for f in ["dev-share.txt", "admin-token.txt"] {
        std::fs::copy(data.join(f), restored.join(f)).unwrap();
    }
    // Not served before the custodians accept the rollback.
    let mut serve = plico();
    serve
        .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--data"])
        .arg(&restored);
    let err = run_fails(&mut serve);
    assert!(err.contains("--accept-rollback"), "{err}");

    // The anchor the restore replaces: the dead server's HSM state.
    let state_file: Value =
        serde_json::from_slice(&std::fs::read(data.join("hsm-state.json")).unwrap()).unwrap();
    let anchor = &state_file["body"]["audit_anchor"];
    let replaced = format!(
        "{}:{}",
        anchor["seq"].as_u64().unwrap(),
        anchor["hash"].as_str().unwrap()
    );
    let err = run_fails(
        plico()
            .args(["restore", "--accept-rollback", "--data"])
            .arg(&restored)
            .args(["--replaced-anchor", &replaced]),
    );
    assert!(err.contains("quorum"), "{err}");
    run_ok(
        plico()
            .args(["restore", "--accept-rollback", "--data"])
            .arg(&restored)
            .arg("--share")
            .arg(restored.join("dev-share.txt"))
            .args(["--replaced-anchor", &replaced]),
    );

    // Offline: the chain verifies and records the gap; every card's codes open; which jobs
    // the backup holds as sent.
    let r = restored.clone();
    let (sent_in_backup, import_in_backup) = tokio::task::spawn_blocking(move || {
        let state = open_offline(&r);
        let report = state.audit.verify().unwrap();
        assert!(report.problem.is_none(), "{report:?}");
        assert!(report.anchor_checked);
        let accepted = state
            .audit
            .query(&vault::Query {
                action: Some("backup.restore_accepted".into()),
                limit: 10,
                ..vault::Query::default()
            })
            .unwrap();
        assert_eq!(accepted.events.len(), 1);
        let details = serde_json::to_value(&accepted.events[0]).unwrap();
        let text = details.to_string();
        assert!(
            text.contains(&replaced.split(':').nth(1).unwrap().to_owned()),
            "{text}"
        );
        assert!(
            super::support::audit_actions(&state, "backup.create").len() == 1,
            "the backup holds the event of its own making"
        );
        for n in 1..=CARDS {
            let codes = super::support::released_codes(&state, &serial(n))
                .unwrap()
                .unwrap_or_else(|| panic!("card {n} has no codes"));
            let (pin, puk) = codes_of(n, SALT);
            assert_eq!(codes.pin.expose_secret(), &pin.as_bytes()[..5], "card {n}");
            assert_eq!(codes.puk.expose_secret(), puk.as_bytes(), "card {n}");
        }
        // The import is in the backup whole or not at all.
        let first = super::support::released_codes(&state, &serial(CARDS + 1)).unwrap();
        let last = super::support::released_codes(&state, &serial(CARDS + IMPORTED)).unwrap();
        assert_eq!(
            first.is_some(),
            last.is_some(),
            "half an import in the backup"
        );
        let sent = sent_jobs(&state);
        state.shut_down().unwrap();
        (sent, first.is_some())
    })
    .await
    .unwrap();
    eprintln!(
        "backup test: the backup holds {} jobs sent (of {sent_at_backup}..{sent_after_backup} \
         messages when it was taken) and {} the import",
        sent_in_backup.len(),
        if import_in_backup {
            "all of"
        } else {
            "none of"
        }
    );
    assert!(sent_in_backup.len() <= sent_after_backup);

    // Served again: delivery resumes and finishes.
    let server = Server::dev(&restored, Some(&config));
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let ids: BTreeSet<String> = messages(&mail).into_iter().map(|m| m.1).collect();
        if ids.len() >= CARDS as usize {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {} distinct messages after the restore",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, stderr) = server.terminate();
    assert!(status.success(), "{status}\n{stderr}");

    let all = messages(&mail);
    let mut by_id: BTreeMap<String, usize> = BTreeMap::new();
    for (_, id, _) in &all {
        *by_id.entry(id.clone()).or_default() += 1;
    }
    let duplicates = all.len() - by_id.len();
    let bound = sent_by_original - sent_in_backup.len();
    eprintln!(
        "backup test: {} messages for {CARDS} jobs, {duplicates} duplicates (bound: {bound} sent \
         by the dead server and not recorded sent in the backup)",
        all.len()
    );
    assert_eq!(by_id.len(), CARDS as usize);
    assert!(
        by_id.values().all(|&n| n <= 2),
        "a message sent three times"
    );
    assert!(
        duplicates <= bound,
        "{duplicates} duplicates, bound {bound}"
    );
    let r = restored.clone();
    tokio::task::spawn_blocking(move || {
        let state = open_offline(&r);
        assert_eq!(sent_jobs(&state).len(), CARDS as usize, "jobs left unsent");
        state.shut_down().unwrap();
    })
    .await
    .unwrap();
}

/// A JSON call to a running server with an optional bearer token.
async fn call(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = http.request(method, format!("{url}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Submits shares one by one; the status of the last answer.
async fn unseal_with(http: &reqwest::Client, url: &str, shares: &[&SecretString]) -> u16 {
    let mut last = 0;
    for s in shares {
        let (status, _) = call(
            http,
            url,
            None,
            reqwest::Method::POST,
            "/v1/sys/unseal",
            Some(json!({"share": s.expose_secret()})),
        )
        .await;
        last = status;
    }
    last
}

/// Backup and restore of a vault on a PKCS#11 token (SoftHSM2): the token keeps its keys and
/// its audit anchor, which moves on after the backup. Restored, the store is refused by the
/// token (its anchor is ahead of the restored chain) until the custodians accept the rollback
/// with the token's quorum: one share is refused; two move the token's anchor back (after the
/// KCV check that it is the backup's token), the chain records the gap with the anchor the
/// token held, and the restored vault serves: the chain verifies, the batch of the backup is
/// there, the one imported after it is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pkcs11_backup_restore_moves_the_token_anchor_back_only_with_the_quorum() {
    let token = hsm_pkcs11::testing::new_token().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let share_dir = tmp.path().join("shares");
    let pin_file = tmp.path().join("token-pin");
    std::fs::write(&pin_file, token.pin.expose_secret()).unwrap();
    std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let module = token.config.module.display().to_string();
    let label = token.config.token_label.clone();
    run_ok(
        plico()
            .env("SOFTHSM2_CONF", &token.conf)
            .args([
                "init",
                "--shares",
                "3",
                "--threshold",
                "2",
                "--hsm",
                "pkcs11",
            ])
            .args(["--module", &module, "--token-label", &label, "--data"])
            .arg(&data)
            .arg("--share-dir")
            .arg(&share_dir)
            .arg("--token-pin-file")
            .arg(&pin_file),
    );
    let shares: Vec<SecretString> = (1..=3)
        .map(|i| {
            let t = std::fs::read_to_string(share_dir.join(format!("share-{i}-of-3.txt"))).unwrap();
            SecretString::from(t.trim().to_owned())
        })
        .collect();
    let identity = age::x25519::Identity::generate();
    let identity_file = tmp.path().join("backup.key");
    std::fs::write(
        &identity_file,
        format!("{}\n", identity.to_string().expose_secret()),
    )
    .unwrap();
    let config = tmp.path().join("plico.toml");
    std::fs::write(
        &config,
        format!(
            "[hsm]\nkind = \"pkcs11\"\nmodule = {module:?}\ntoken_label = {label:?}\n\n\
             [backup]\nrecipient = \"{}\"\n",
            identity.to_public()
        ),
    )
    .unwrap();
    let serve = |data: &Path| {
        let mut cmd = plico();
        cmd.env("RUST_LOG", "warn")
            .env("SOFTHSM2_CONF", &token.conf)
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .arg("--data")
            .arg(data);
        Server::start(cmd)
    };
    let http = http_client(None);
    let admin_file = data.join("admin-token.txt");
    let admin = std::fs::read_to_string(&admin_file)
        .unwrap()
        .trim()
        .to_owned();

    // Served and unsealed: accounts, one batch, the backup, then a second batch (the token's
    // anchor moves past the backup's head).
    let server = serve(&data);
    assert_eq!(
        unseal_with(&http, &server.url, &[&shares[0], &shares[1]]).await,
        200
    );
    let mut tokens = BTreeMap::new();
    for (name, role) in [("acme", "manufacturer"), ("auditor", "auditor")] {
        let (status, v) = call(
            &http,
            &server.url,
            Some(&admin),
            reqwest::Method::POST,
            "/v1/accounts",
            Some(json!({"name": format!("p11 backup {name}"), "role": role})),
        )
        .await;
        assert_eq!(status, 201, "{v}");
        tokens.insert(name, v["token"].as_str().unwrap().to_owned());
    }
    let import = |first: u64| {
        let http = http.clone();
        let url = format!("{}/v1/batches?manufacturer=ACME", server.url);
        let acme = tokens["acme"].clone();
        async move {
            let res = http
                .post(url)
                .bearer_auth(acme)
                .header(header::CONTENT_TYPE, "text/plain")
                .body(cns_codes(first..=first + 99))
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            let v: Value = res.json().await.unwrap();
            assert_eq!(status, 201, "{v}");
            v["batch"].as_str().unwrap().to_owned()
        }
    };
    let before = import(1).await;
    let archive = tmp.path().join("p11.backup");
    run_ok(
        plico()
            .args(["backup", "--out"])
            .arg(&archive)
            .args(["--addr", &server.url, "--token-file"])
            .arg(&admin_file),
    );
    let after = import(1001).await;
    let (status, stderr) = server.terminate();
    assert!(status.success(), "{stderr}");

    // The archive names the token and its keys' labels and KCVs, and holds no state file.
    let out = run_ok(
        plico()
            .arg("restore")
            .arg(&archive)
            .arg("--identity")
            .arg(&identity_file)
            .arg("--check"),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("pkcs#11 token {label:?}")), "{text}");
    let restored = tmp.path().join("restored");
    run_ok(
        plico()
            .arg("restore")
            .arg(&archive)
            .arg("--data")
            .arg(&restored)
            .arg("--identity")
            .arg(&identity_file),
    );
    assert!(!restored.join(SimulatedHsm::STATE_FILE).exists());
    let pending: Value =
        serde_json::from_slice(&std::fs::read(restored.join("restore-pending.json")).unwrap())
            .unwrap();
    let facts = &pending["token"];
    assert_eq!(facts["token_label"], label.as_str(), "{pending}");
    let labels: Vec<&str> = facts["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["label"].as_str().unwrap())
        .collect();
    assert!(
        labels.contains(&"plico-root") && labels.contains(&"plico-kek-1-code"),
        "{labels:?}"
    );
    let backup_head = pending["audit_head"]["seq"].as_u64().unwrap();
    std::fs::copy(&admin_file, restored.join("admin-token.txt")).unwrap();

    // Without the ceremony: not served while pending; and, the marker taken away by hand,
    // the token refuses the older chain at the unseal.
    let err = run_fails(
        plico()
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .arg("--data")
            .arg(&restored),
    );
    assert!(err.contains("--accept-rollback"), "{err}");
    let marker = restored.join("restore-pending.json");
    let aside = tmp.path().join("pending-aside.json");
    std::fs::rename(&marker, &aside).unwrap();
    let server = serve(&restored);
    let status = unseal_with(&http, &server.url, &[&shares[0], &shares[2]]).await;
    assert_ne!(status, 200, "the token accepted a store behind its anchor");
    let (ready, _) = call(
        &http,
        &server.url,
        None,
        reqwest::Method::GET,
        "/readyz",
        None,
    )
    .await;
    assert_eq!(ready, 503);
    let (status, stderr) = server.terminate();
    assert!(status.success(), "{stderr}");
    std::fs::rename(&aside, &marker).unwrap();

    // The ceremony: one share, or no --config, is refused; the quorum is accepted.
    let accept = |shares: &[usize], with_config: bool| {
        let mut cmd = plico();
        cmd.env("SOFTHSM2_CONF", &token.conf)
            .args(["restore", "--accept-rollback", "--data"])
            .arg(&restored);
        for i in shares {
            cmd.arg("--share")
                .arg(share_dir.join(format!("share-{}-of-3.txt", i + 1)));
        }
        if with_config {
            cmd.arg("--config").arg(&config);
        }
        cmd
    };
    let err = run_fails(&mut accept(&[1], true));
    assert!(err.contains("quorum"), "{err}");
    let err = run_fails(&mut accept(&[1, 2], false));
    assert!(err.contains("--config"), "{err}");
    assert!(marker.exists());
    let out = run_ok(&mut accept(&[1, 2], true));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("rollback accepted"), "{text}");
    assert!(!marker.exists() && !restored.join("restore-token-anchor.json").exists());

    // Served again and unsealed by another pair: the chain verifies against the token's
    // anchor and records the gap; the backup's batch is there, the later one is not.
    let server = serve(&restored);
    assert_eq!(
        unseal_with(&http, &server.url, &[&shares[2], &shares[0]]).await,
        200
    );
    let auditor = Some(tokens["auditor"].as_str());
    let (status, report) = call(
        &http,
        &server.url,
        auditor,
        reqwest::Method::GET,
        "/v1/audit/verify",
        None,
    )
    .await;
    assert_eq!(status, 200, "{report}");
    assert!(report["problem"].is_null(), "{report}");
    let (status, page) = call(
        &http,
        &server.url,
        auditor,
        reqwest::Method::GET,
        "/v1/audit?action=backup.restore_accepted",
        None,
    )
    .await;
    assert_eq!(status, 200, "{page}");
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{page}");
    let event = events[0].to_string();
    assert!(
        event.contains("\"token\""),
        "the token's own anchor: {event}"
    );
    let held = event
        .split("\"token_anchor_seq\"")
        .nth(1)
        .and_then(|rest| {
            rest.trim_start_matches([':', ',', '"', ' '])
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|d| d.parse::<u64>().ok())
        })
        .unwrap_or_else(|| panic!("no token_anchor_seq in {event}"));
    assert!(
        held > backup_head,
        "the token's anchor {held} was not past the backup's head {backup_head}: the refused \
         attempts moved it, or the later import was not anchored"
    );
    let (status, batches) = call(
        &http,
        &server.url,
        auditor,
        reqwest::Method::GET,
        "/v1/batches",
        None,
    )
    .await;
    assert_eq!(status, 200, "{batches}");
    let listed = batches.to_string();
    assert!(listed.contains(&before), "{before} missing: {listed}");
    assert!(!listed.contains(&after), "{after} restored: {listed}");
    let (status, stderr) = server.terminate();
    assert!(status.success(), "{stderr}");
}
