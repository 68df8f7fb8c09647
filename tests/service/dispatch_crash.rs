//! The crash test of issue 7: the real `plico` binary (`serve --dev`, delivery workers sending
//! by SMTP into postfix's `smtp-sink`, which keeps every message it receives) is killed with
//! SIGKILL while 10,000 e-mail jobs are being sent, and started again.
//!
//! 1. A first `serve --dev` makes the data directory (dev HSM, store) and is stopped.
//! 2. Offline, through the vault crate: 10,000 cards' codes are imported, a registry of one
//!    holder per card (each with an e-mail address) applied, every card activated by its
//!    holder and one `email` dispatch requested for each: 10,000 queued jobs.
//! 3. `serve --dev` with `[dispatch.smtp]` pointing at the sink starts sending at once; when
//!    the sink holds between 20 % and 60 % of the messages, the server is SIGKILLed.
//! 4. It is started again: the outbox recovery queues the jobs left `sending`, with their
//!    idempotency keys, and the workers send the rest. Once the sink holds a message for
//!    every job, the server is stopped with SIGTERM.
//! 5. Checked offline: every job is `sent` after at most 2 attempts; the sink holds exactly
//!    one distinct `Message-ID` per job (the id is made from the job's idempotency key, the
//!    same at every attempt); the duplicates (messages received twice: sent before the kill,
//!    not yet marked `sent`) are counted, printed, and at most the lane's `max_in_flight`
//!    (64), the bound the workers keep by holding a job's slot until its outcome is recorded;
//!    a sample of messages carries the codes of the card its recipient holds.

use super::batches::{codes_of, mix, serial};
use super::peers::smtp_sink;
use super::support::cf;
use super::*;
use cards::check_character;
use cards::Date;
use cards::{Activation, Change, JobState};
use cards::{CardEntry, HolderEntry};
use std::collections::{BTreeMap, BTreeSet};
use vault::Actor;
use vault::ParseRules;
use vault::SledStore;
use vault::{import_file, ImportContext, ImportOutcome, ImportRequest};

const CARDS: u64 = 10_000;
const MAX_IN_FLIGHT: usize = 64;
pub(super) const SALT: u64 = 0xD15B;

/// A manufacturer file of cards `serials` under [`SALT`]: `serial;PIN;PUK` lines with the CNS
/// policy's 5-digit PIN and 8-digit PUK.
pub(super) fn cns_codes(serials: std::ops::RangeInclusive<u64>) -> String {
    super::support::cns_codes_file(serials, SALT)
}

fn actor() -> Actor {
    Actor {
        id: "crash-test".into(),
        role: "cms".into(),
        request_id: String::new(),
    }
}

/// A valid codice fiscale for holder `n`: six letters from `n`, fixed birth data.
fn codice_fiscale(n: u64) -> String {
    let mut letters = [b'A'; 6];
    let mut v = n;
    for l in letters.iter_mut().rev() {
        *l = b'A' + (v % 26) as u8;
        v /= 26;
    }
    let first15 = format!("{}85T10A562", String::from_utf8_lossy(&letters));
    assert!(check_character(&first15).is_some());
    cf(&first15)
}

/// The data directory of a stopped server, made ready: `cards` active cards, each with one
/// queued `email` job (also the backup test's, `service/backup.rs`).
pub(super) fn populate(data: &Path, cards: u64) {
    let hsm = Arc::new(SimulatedHsm::open(data).unwrap());
    let share = std::fs::read_to_string(data.join("dev-share.txt")).unwrap();
    hsm.unseal(&SecretString::from(share.trim().to_owned()))
        .unwrap();
    let store: Arc<dyn vault::Store> = Arc::new(SledStore::open(&data.join("store")).unwrap());
    let state = AppState::new(hsm.clone(), store.clone()).unwrap();
    state.unsealed(&actor(), "crash test setup").unwrap();
    let file = cns_codes(1..=cards);
    let rules = ParseRules::default();
    let ctx = ImportContext {
        vault: &state.codes,
        hsm: &*hsm,
        audit: &state.audit,
        rules: &rules,
    };
    let request = ImportRequest {
        manufacturer: "crash".into(),
        expected_cards: Some(cards),
        expected_sha256: None,
        actor: "crash-test".into(),
        role: "manufacturer".into(),
        request_id: String::new(),
    };
    let outcome = import_file(ctx, file.as_bytes(), &request, &|_| {}).unwrap();
    assert!(matches!(outcome, ImportOutcome::Committed(_)));
    let today = Date::today_utc();
    let expiry = Date::parse("2035-12-31").unwrap();
    let birth = Date::parse("1985-12-10").unwrap();
    let numbers: Vec<u64> = (1..=cards).collect();
    for chunk in numbers.chunks(2_000) {
        let entries: Vec<HolderEntry> = chunk
            .iter()
            .map(|&n| HolderEntry {
                first_line: n + 1,
                codice_fiscale: codice_fiscale(n),
                given_names: "Niccolò".into(),
                surname: format!("D'Aragona {n}"),
                birth_date: birth,
                email: Some(format!("h{n}@example.it")),
                mobile: None,
                address: None,
                deceased: false,
                cards: vec![CardEntry {
                    line: n + 1,
                    serial: serial(n),
                    expiry,
                    replaced_by: None,
                }],
            })
            .collect();
        state
            .cms
            .import_registry(&*hsm, &state.audit, &entries, today, &actor())
            .unwrap();
    }
    let activation = Change::Activate(Activation::Holder {
        document_type: "carta_identita".into(),
        document_number: "CA00000AA".into(),
        consent_ref: "consenso-crash".into(),
    });
    for n in 1..=cards {
        state
            .cms
            .change(
                &*hsm,
                &state.audit,
                &serial(n),
                &activation,
                today,
                &actor(),
            )
            .unwrap();
        state
            .cms
            .request_dispatch(&*hsm, &state.audit, &serial(n), "email", today, &actor())
            .unwrap();
    }
    store.flush().unwrap();
}

/// Every message in the sink's dump directory: (file, Message-ID, To).
pub(super) fn messages(mail: &Path) -> Vec<(PathBuf, String, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(mail).unwrap() {
        let path = e.unwrap().path();
        let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
        let header = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
                .unwrap_or_default()
        };
        let id = header("Message-ID:");
        let to = header("To:");
        out.push((path, id, to));
    }
    out
}

pub(super) fn count_files(mail: &Path) -> usize {
    std::fs::read_dir(mail).map(|d| d.count()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_jobs_survive_sigkill_with_duplicates_bounded_by_the_window() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let first = Server::dev(&data, None);
    let (status, _) = first.terminate();
    assert!(status.success(), "{status}");
    let d = data.clone();
    tokio::task::spawn_blocking(move || populate(&d, CARDS))
        .await
        .unwrap();

    let sink_dir = tmp.path().join("sink");
    std::fs::create_dir(&sink_dir).unwrap();
    let (_sink, port) = smtp_sink(&sink_dir, true, &[]).await;
    let mail = sink_dir.join("mail");
    let config = tmp.path().join("plico.toml");
    std::fs::write(
        &config,
        format!(
            "[dispatch]\nemail_per_second = 1000000\nmax_in_flight = {MAX_IN_FLIGHT}\n\
             max_attempts = 5\nbackoff_base_ms = 200\nbackoff_cap_ms = 1000\n\n\
             [dispatch.smtp]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\n\
             from = \"pin@regione.esempio.it\"\nmax_connections = 8\n"
        ),
    )
    .unwrap();

    // Killed while sending: between 20 % and 60 % of the messages received.
    let server = Server::dev(&data, Some(&config));
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let kill_at = (CARDS as usize) / 5 + (mix(seed) % (CARDS * 2 / 5)) as usize;
    let deadline = Instant::now() + Duration::from_secs(300);
    while count_files(&mail) < kill_at {
        assert!(Instant::now() < deadline, "the workers did not send");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.sigkill();
    let at_kill = count_files(&mail);
    eprintln!(
        "dispatch crash test: killed after {at_kill} of {CARDS} messages (aimed at {kill_at})"
    );
    assert!(
        at_kill < CARDS as usize,
        "everything was sent before the kill"
    );

    // Restarted: the rest is sent.
    let server = Server::dev(&data, Some(&config));
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if count_files(&mail) >= CARDS as usize {
            let ids: BTreeSet<String> = messages(&mail).into_iter().map(|m| m.1).collect();
            if ids.len() >= CARDS as usize {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "only {} messages after the restart",
            count_files(&mail)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let the last outcomes be recorded, then stop cleanly.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, stderr) = server.terminate();
    assert!(status.success(), "{status}\n{stderr}");

    // The sink: one distinct Message-ID a job, duplicates within the window.
    let all = messages(&mail);
    let mut by_id: BTreeMap<String, Vec<(PathBuf, String)>> = BTreeMap::new();
    for (path, id, to) in all.iter().cloned() {
        assert!(
            !id.is_empty(),
            "a message without Message-ID: {}",
            path.display()
        );
        by_id.entry(id).or_default().push((path, to));
    }
    let duplicates = all.len() - by_id.len();
    eprintln!(
        "dispatch crash test: {} messages received for {CARDS} jobs, {} distinct, {duplicates} duplicates (window {MAX_IN_FLIGHT})",
        all.len(),
        by_id.len()
    );
    assert_eq!(by_id.len(), CARDS as usize);
    assert!(
        duplicates <= MAX_IN_FLIGHT,
        "{duplicates} duplicates, more than the {MAX_IN_FLIGHT} jobs in flight"
    );
    // A duplicate is the same message: same recipient.
    for copies in by_id.values() {
        assert!(copies.iter().all(|(_, to)| to == &copies[0].1));
    }
    // A sample carries its recipient's card's codes.
    for (i, copies) in by_id.values().enumerate() {
        if i % 97 != 0 {
            continue;
        }
        let (path, to) = &copies[0];
        let n: u64 = to
            .trim_start_matches('<')
            .trim_start_matches('h')
            .split('@')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("unexpected recipient {to}"));
        let text = String::from_utf8_lossy(&std::fs::read(path).unwrap()).into_owned();
        let (pin, puk) = codes_of(n, SALT);
        assert!(
            text.contains(&pin[..5]) && text.contains(&puk),
            "message to card {n} lacks its codes"
        );
        assert!(!text.contains(&serial(n)), "full serial in a message");
    }

    // The store: every job `sent`, after one attempt or two (the ones cut by the kill).
    let store: Arc<dyn vault::Store> = Arc::new(SledStore::open(&data.join("store")).unwrap());
    let (codes, _) = vault::CodeVault::open(store).unwrap();
    let cms = cards::Cards::new(Arc::new(codes));
    let mut retried = 0;
    for n in 1..=CARDS {
        let jobs = cms.jobs_of(&serial(n)).unwrap();
        assert_eq!(jobs.len(), 1, "card {n}: {jobs:?}");
        let job = &jobs[0];
        assert_eq!(job.state, JobState::Sent, "card {n}: {job:?}");
        assert!(job.attempts <= 2, "card {n}: {} attempts", job.attempts);
        if job.attempts == 2 {
            retried += 1;
        }
    }
    eprintln!("dispatch crash test: {retried} jobs were sent again after the restart");
    assert!(retried >= duplicates);
}
