//! The crash test of issue 4: the real `plico` binary (`serve --dev`) importing a
//! 1,000,000-line file over HTTP is killed with SIGKILL at random moments, 20 times.
//!
//! One uninterrupted round first measures how long the import takes (`T`, then refined as the
//! mean of every whole import the test makes, since one run varies by ±20 % from the next).
//! Then each round starts a fresh data directory, starts the upload, SIGKILLs the server after
//! a delay drawn in its own twentieth of `[0.02 T, 1.25 T]` (so the kills cover the whole
//! import, the commit, and the moments after it), restarts the server, and checks that:
//!
//! - the batch is absent (no batch at all: staged leftovers are removed at start-up) or
//!   complete (committed, 1,000,000 cards); if the server had answered `201` before the kill,
//!   it is complete;
//! - the audit chain verifies;
//! - a re-upload completes (`committed` if the batch was absent, `already_stored` if not);
//! - offline, after the server stopped: the store holds exactly that one committed batch and no
//!   leftovers, and a random sample of cards decrypts to the codes of the file (the test opens
//!   the store with the vault crate and unseals the dev HSM with its share from the data
//!   directory: no endpoint returns codes).
//!
//! The delays come from a seed printed at the start; `CRASH_SEED=N` replays a run.

use super::batches::{codes_of, mix, serial};
use super::*;
use vault::SledStore;
use vault::{BatchState, CodeVault};

const CARDS: u64 = 1_000_000;
const ROUNDS: u64 = 20;
const SAMPLES: usize = 300;
const SALT: u64 = 0xC4A5;

/// The file: one CNS card a line (5-digit PIN, 8-digit PUK), CRLF, with a header.
fn write_file(path: &Path) {
    use std::io::Write;
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    w.write_all(b"serial;pin;puk\r\n").unwrap();
    for n in 1..=CARDS {
        let (pin, puk) = codes_of(n, SALT);
        writeln!(w, "{};{};{puk}\r", serial(n), &pin[..5]).unwrap();
    }
    w.flush().unwrap();
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(1);
        mix(self.0)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The accounts a round needs, made with the dev admin's token.
struct Tokens {
    admin: String,
    manufacturer: String,
    auditor: String,
}

async fn make_accounts(client: &reqwest::Client, url: &str, data: &Path) -> Tokens {
    let admin = std::fs::read_to_string(data.join("admin-token.txt"))
        .unwrap()
        .trim()
        .to_owned();
    let mut made = Vec::new();
    for role in ["manufacturer", "auditor"] {
        let res = client
            .post(format!("{url}/v1/accounts"))
            .bearer_auth(&admin)
            .json(&json!({"name": format!("crash {role}"), "role": role}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 201);
        let v: Value = res.json().await.unwrap();
        made.push(v["token"].as_str().unwrap().to_owned());
    }
    Tokens {
        admin,
        manufacturer: made.remove(0),
        auditor: made.remove(0),
    }
}

/// Uploads the file; the status and JSON answer, or the transport error.
async fn upload(
    client: reqwest::Client,
    url: String,
    token: String,
    file: PathBuf,
) -> Result<(u16, Value), String> {
    let f = tokio::fs::File::open(&file).await.unwrap();
    let len = f.metadata().await.unwrap().len();
    let res = client
        .post(format!(
            "{url}/v1/batches?manufacturer=Crash%20Test&expected_cards={CARDS}"
        ))
        .bearer_auth(token)
        .header(header::CONTENT_TYPE, "text/plain")
        .header(header::CONTENT_LENGTH, len)
        .body(reqwest::Body::from(f))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = res.status().as_u16();
    let text = res.text().await.map_err(|e| e.to_string())?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

async fn batches(client: &reqwest::Client, url: &str, token: &str) -> Vec<Value> {
    let v: Value = client
        .get(format!("{url}/v1/batches?limit=1000"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["batches"].as_array().unwrap().clone()
}

/// The store of a stopped server: exactly one batch holding the file, committed, complete (and
/// perhaps a `duplicate` record of a re-upload), and a sample of its cards decrypts to the
/// file's codes.
fn verify_offline(data: &Path, rng: &mut Rng) {
    let store = Arc::new(SledStore::open(&data.join("store")).unwrap());
    let audit = vault::AuditLog::open(store.clone(), vault::DEFAULT_CHECKPOINT_EVERY).unwrap();
    let (codes, recovery) = CodeVault::open(store).unwrap();
    assert!(
        recovery.removed.is_empty(),
        "the server left staged batches: {:?}",
        recovery.removed
    );
    // A re-upload of the stored file leaves only a `duplicate` record naming the batch.
    let (records, copies): (Vec<_>, Vec<_>) = codes
        .batches(None, 1000)
        .unwrap()
        .into_iter()
        .partition(|r| r.state != BatchState::Duplicate);
    assert_eq!(records.len(), 1, "{records:?}");
    assert!(copies
        .iter()
        .all(|c| c.duplicate_of == Some(records[0].id.to_string()) && c.cards == 0));
    assert_eq!(records[0].state, BatchState::Committed);
    assert_eq!(records[0].cards, CARDS);
    let hsm = SimulatedHsm::open(data).unwrap();
    let share = std::fs::read_to_string(data.join("dev-share.txt")).unwrap();
    hsm.unseal(&SecretString::from(share.trim().to_owned()))
        .unwrap();
    let mut picks: Vec<u64> = (0..SAMPLES).map(|_| rng.next() % CARDS + 1).collect();
    picks.extend([1, CARDS]);
    for n in picks {
        let c = super::support::release_from(&codes, &audit, &hsm, &serial(n))
            .unwrap()
            .unwrap_or_else(|| panic!("card {n} is missing"));
        let (pin, puk) = codes_of(n, SALT);
        assert_eq!(c.pin.expose_secret(), &pin.as_bytes()[..5], "card {n}");
        assert_eq!(c.puk.expose_secret(), puk.as_bytes(), "card {n}");
    }
    assert!(codes
        .pending_release(&hsm, &serial(CARDS + 1))
        .unwrap()
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_line_import_survives_sigkill_at_random_moments() {
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("import crash test: CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("cards.csv");
    write_file(&file);
    let client = http_client(None);

    // Round 0: uninterrupted, to measure the import.
    let data = tmp.path().join("round-0");
    let server = Server::dev(&data, None);
    let tokens = make_accounts(&client, &server.url, &data).await;
    let began = Instant::now();
    let (status, answer) = upload(
        client.clone(),
        server.url.clone(),
        tokens.manufacturer.clone(),
        file.clone(),
    )
    .await
    .unwrap();
    let full = began.elapsed();
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["cards"], CARDS);
    let (exit, stderr) = server.terminate();
    assert!(exit.success(), "{stderr}");
    verify_offline(&data, &mut rng);
    std::fs::remove_dir_all(&data).unwrap();
    eprintln!("import crash test: an uninterrupted import takes {full:?}");
    let mut imports = vec![full];

    let mut absent = 0;
    for round in 1..=ROUNDS {
        let data = tmp.path().join(format!("round-{round}"));
        let server = Server::dev(&data, None);
        let tokens = make_accounts(&client, &server.url, &data).await;
        let mean = imports.iter().sum::<Duration>() / imports.len() as u32;
        let fraction = 0.02 + 1.23 * ((round - 1) as f64 + rng.unit()) / ROUNDS as f64;
        let delay = mean.mul_f64(fraction);
        let job = tokio::spawn(upload(
            client.clone(),
            server.url.clone(),
            tokens.manufacturer.clone(),
            file.clone(),
        ));
        tokio::time::sleep(delay).await;
        server.sigkill();
        let answered = job.await.unwrap();
        let answered_201 = matches!(answered, Ok((201, _)));

        let server = Server::dev(&data, None);
        let url = server.url.clone();
        let listed = batches(&client, &url, &tokens.admin).await;
        let complete = match listed.as_slice() {
            [] => false,
            [one] => {
                assert_eq!(one["state"], "committed", "round {round}: {one}");
                assert_eq!(one["cards"], CARDS, "round {round}: {one}");
                true
            }
            more => panic!("round {round}: more than one batch: {more:?}"),
        };
        assert!(
            complete || !answered_201,
            "round {round}: the server answered 201, but the batch is gone after the restart"
        );
        absent += u32::from(!complete);
        let report: Value = client
            .get(format!("{url}/v1/audit/verify"))
            .bearer_auth(&tokens.auditor)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(
            report["problem"].is_null(),
            "round {round}: the audit chain is damaged: {report}"
        );
        eprintln!(
            "import crash test: round {round}: killed after {delay:?} ({:.0} % of T): batch {}",
            fraction * 100.0,
            if complete { "complete" } else { "absent" }
        );

        // A re-upload completes.
        let again = Instant::now();
        let (status, answer) = upload(
            client.clone(),
            url.clone(),
            tokens.manufacturer.clone(),
            file.clone(),
        )
        .await
        .unwrap();
        if complete {
            assert_eq!(
                (status, answer["outcome"].as_str()),
                (200, Some("already_stored")),
                "{answer}"
            );
        } else {
            assert_eq!(
                (status, answer["outcome"].as_str()),
                (201, Some("committed")),
                "{answer}"
            );
        }
        imports.push(again.elapsed());
        // One batch holds the file; a re-upload of a stored file leaves only a `duplicate`
        // record naming it.
        let listed = batches(&client, &url, &tokens.admin).await;
        let (stored, copies): (Vec<_>, Vec<_>) =
            listed.iter().partition(|b| b["state"] != "duplicate");
        assert_eq!(stored.len(), 1, "round {round}: {listed:?}");
        assert!(
            copies.iter().all(|c| c["duplicate_of"] == stored[0]["id"]),
            "round {round}: {listed:?}"
        );
        let (exit, stderr) = server.terminate();
        assert!(exit.success(), "round {round}: {stderr}");
        verify_offline(&data, &mut rng);
        std::fs::remove_dir_all(&data).unwrap();
    }
    eprintln!(
        "import crash test: the batch was absent after {absent} of {ROUNDS} kills, complete after \
         the others"
    );
}
