//! The backup and restore drill (issue 19): a backup of the real `plico` binary taken while an
//! import and e-mail deliveries (into postfix's `smtp-sink`) run, the server then killed (the
//! disaster), the archive restored into a fresh directory, the rollback accepted by the
//! custodians, the restored directory served and unsealed; every card's codes readable, the
//! chain verified, and delivery resumed with no duplicate beyond the bound: a message goes out
//! twice only if the killed server sent it after the snapshot (its job is not `sent` in the
//! backup), and never for a job the backup records as sent.

use super::batches::{codes_of, serial};
use super::dispatch_crash::{cns_codes, count_files, messages, populate, sigkill, SALT};
use super::peers::smtp_sink;
use super::*;
use cards::JobState;
use std::collections::{BTreeMap, BTreeSet};
use vault::SledStore;

const CARDS: u64 = 1_000;
/// Cards of the import that runs during the backup (serials after the dispatched ones).
const IMPORTED: u64 = 50_000;

fn start(data: &Path, config: &Path) -> Server {
    let mut cmd = plico();
    cmd.env("RUST_LOG", "warn")
        .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .arg("--config")
        .arg(config);
    Server::start(cmd)
}

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
    let server = start(&data, &config);
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
    sigkill(server);
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
    let server = start(&restored, &config);
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
