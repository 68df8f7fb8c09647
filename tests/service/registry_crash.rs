//! The crash test of bulk registry imports: the real `plico` binary (`serve --dev`) importing
//! a registry file large enough to be written as a bulk file (`cards::BULK_MIN_HOLDERS` or
//! more holders, one card each) is killed with SIGKILL at random moments.
//!
//! One uninterrupted round first measures the import (`T`, then the mean of every whole import
//! the test makes). Each round then starts a fresh data directory, starts the upload, SIGKILLs
//! the server after a delay drawn in its own share of `[0.02 T, 1.25 T]` (the kills cover the
//! staging of segments, the commit and the moments after it), restarts the server and checks:
//!
//! - the file is whole or absent: a sample of its cards (the first, the last, and random ones)
//!   are all known or all unknown, and its first and last holders are found by codice fiscale
//!   exactly when its cards are; if the server had answered `200 applied`, it is whole;
//! - the audit chain verifies;
//! - an absent file uploads again whole;
//! - offline, after the server stopped: no staged segment is left (the server removed the
//!   leftovers at start-up) and the committed file has every holder.
//!
//! `REGISTRY_CRASH_ROUNDS` (default 6) and `REGISTRY_CRASH_HOLDERS` (default 20,000) size the
//! test; the delays come from a seed printed at the start, `CRASH_SEED=N` replays a run.

use super::batches::{mix, serial};
use super::support::cf;
use super::*;
use cards::check_character;
use vault::SledStore;

/// A valid codice fiscale for holder `n`: six letters from `n`, fixed birth data.
pub(super) fn codice_fiscale(n: u64) -> String {
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

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The registry file: holder `n` (1..=holders) with card `serial(n)`.
fn write_file(path: &Path, holders: u64) {
    use std::io::Write;
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    w.write_all(
        b"codice_fiscale;given_names;surname;birth_date;email;mobile;address;serial;expiry\n",
    )
    .unwrap();
    for n in 1..=holders {
        writeln!(
            w,
            "{};Lucia;Mondella;1985-12-10;holder{n}@example.it;+39333{:07};Via Manzoni {n}, 20121 Milano;{};2032-12-31",
            codice_fiscale(n),
            n % 10_000_000,
            serial(n)
        )
        .unwrap();
    }
    w.flush().unwrap();
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(1);
        mix(self.0)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The `cms` and `auditor` tokens, made with the dev admin's.
async fn make_accounts(client: &reqwest::Client, url: &str, data: &Path) -> (String, String) {
    let admin = std::fs::read_to_string(data.join("admin-token.txt"))
        .unwrap()
        .trim()
        .to_owned();
    let mut made = Vec::new();
    for role in ["cms", "auditor"] {
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
    (made.remove(0), made.remove(0))
}

/// Uploads the file; the status and JSON answer, or the transport error.
async fn upload(
    client: reqwest::Client,
    url: String,
    token: String,
    file: PathBuf,
) -> Result<(u16, Value), String> {
    let body = tokio::fs::read(&file).await.unwrap();
    let res = client
        .post(format!("{url}/v1/registry"))
        .bearer_auth(token)
        .header(header::CONTENT_TYPE, "text/csv")
        .body(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = res.status().as_u16();
    let text = res.text().await.map_err(|e| e.to_string())?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

/// How many of `picks` the server knows (`GET /v1/cards/{serial}`: 200, else 404).
async fn known_cards(client: &reqwest::Client, url: &str, token: &str, picks: &[u64]) -> usize {
    let mut known = 0;
    for &n in picks {
        let res = client
            .get(format!("{url}/v1/cards/{}", serial(n)))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        match res.status().as_u16() {
            200 => known += 1,
            404 => {}
            other => panic!("card {n}: {other} {}", res.text().await.unwrap()),
        }
    }
    known
}

/// Whether the holder with codice fiscale `cf` is found.
async fn holder_found(client: &reqwest::Client, url: &str, token: &str, n: u64) -> bool {
    let res = client
        .post(format!("{url}/v1/holders/search"))
        .bearer_auth(token)
        .json(&json!({"codice_fiscale": codice_fiscale(n)}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let v: Value = res.json().await.unwrap();
    !v["holders"].as_array().unwrap().is_empty()
}

/// Offline, the server stopped: no staged segment left, and the committed file (if any) has
/// every holder of the file.
fn verify_offline(data: &Path, holders: u64, complete: bool) {
    let store: Arc<dyn vault::Store> = Arc::new(SledStore::open(&data.join("store")).unwrap());
    let files = store
        .range(vault::Tree::RegistryFiles, &[], None, usize::MAX)
        .unwrap();
    let last = files.last().map_or(0, |(k, _)| {
        u64::from_be_bytes(k.as_slice().try_into().unwrap())
    });
    let leftovers = store
        .keys(
            vault::Tree::RegistrySegments,
            &(last + 1).to_be_bytes(),
            None,
            10,
        )
        .unwrap();
    assert!(leftovers.is_empty(), "staged segments left: {leftovers:?}");
    assert_eq!(files.len(), usize::from(complete), "{} files", files.len());
    if let Some((_, rec)) = files.first() {
        let rec: Value = serde_json::from_slice(rec).unwrap();
        assert_eq!(rec["holders"], holders, "{}", rec["holders"]);
    }
    let (codes, _) = vault::CodeVault::open(store).unwrap();
    let cms = cards::Cards::new(Arc::new(codes));
    assert_eq!(cms.recover_registry().unwrap(), 0);
    for n in [1, holders] {
        assert_eq!(
            cms.card(&serial(n)).unwrap().is_some(),
            complete,
            "card {n}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_registry_import_survives_sigkill_at_random_moments() {
    let rounds = env_u64("REGISTRY_CRASH_ROUNDS", 6);
    let holders = env_u64("REGISTRY_CRASH_HOLDERS", 20_000).max(cards::BULK_MIN_HOLDERS as u64);
    let seed = env_u64(
        "CRASH_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    );
    eprintln!("registry crash test: CRASH_SEED={seed}, {holders} holders, {rounds} rounds");
    let mut rng = Rng(seed);
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("registry.csv");
    write_file(&file, holders);
    let client = http_client(None);

    // Round 0: uninterrupted, to measure the import.
    let data = tmp.path().join("round-0");
    let server = Server::dev(&data, None);
    let (cms, _) = make_accounts(&client, &server.url, &data).await;
    let began = Instant::now();
    let (status, answer) = upload(client.clone(), server.url.clone(), cms, file.clone())
        .await
        .unwrap();
    let full = began.elapsed();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["holders_created"], holders, "{answer}");
    let (exit, stderr) = server.terminate();
    assert!(exit.success(), "{stderr}");
    verify_offline(&data, holders, true);
    std::fs::remove_dir_all(&data).unwrap();
    eprintln!("registry crash test: an uninterrupted import takes {full:?}");
    let mut imports = vec![full];

    let mut absent = 0;
    for round in 1..=rounds {
        let data = tmp.path().join(format!("round-{round}"));
        let server = Server::dev(&data, None);
        let (cms, auditor) = make_accounts(&client, &server.url, &data).await;
        let mean = imports.iter().sum::<Duration>() / imports.len() as u32;
        let fraction = 0.02 + 1.23 * ((round - 1) as f64 + rng.unit()) / rounds as f64;
        let delay = mean.mul_f64(fraction);
        let job = tokio::spawn(upload(
            client.clone(),
            server.url.clone(),
            cms.clone(),
            file.clone(),
        ));
        tokio::time::sleep(delay).await;
        server.sigkill();
        let answered = job.await.unwrap();
        let applied = matches!(&answered, Ok((200, a)) if a["outcome"] == "applied");

        let server = Server::dev(&data, None);
        let url = server.url.clone();
        let mut picks: Vec<u64> = (0..40).map(|_| rng.next() % holders + 1).collect();
        picks.extend([1, holders]);
        let known = known_cards(&client, &url, &cms, &picks).await;
        assert!(
            known == 0 || known == picks.len(),
            "round {round}: {known} of {} sampled cards known: half a file",
            picks.len()
        );
        let complete = known == picks.len();
        for n in [1, holders] {
            assert_eq!(
                holder_found(&client, &url, &cms, n).await,
                complete,
                "round {round}: holder {n}"
            );
        }
        assert!(
            complete || !applied,
            "round {round}: the server answered applied, but the file is gone after the restart"
        );
        absent += u32::from(!complete);
        let report: Value = client
            .get(format!("{url}/v1/audit/verify"))
            .bearer_auth(&auditor)
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
            "registry crash test: round {round}: killed after {delay:?} ({:.0} % of T): file {}",
            fraction * 100.0,
            if complete { "whole" } else { "absent" }
        );
        if !complete {
            let again = Instant::now();
            let (status, answer) = upload(client.clone(), url.clone(), cms.clone(), file.clone())
                .await
                .unwrap();
            assert_eq!(status, 200, "round {round}: {answer}");
            assert_eq!(
                answer["holders_created"], holders,
                "round {round}: {answer}"
            );
            imports.push(again.elapsed());
            assert_eq!(
                known_cards(&client, &url, &cms, &picks).await,
                picks.len(),
                "round {round}"
            );
        }
        let (exit, stderr) = server.terminate();
        assert!(exit.success(), "round {round}: {stderr}");
        verify_offline(&data, holders, true);
        std::fs::remove_dir_all(&data).unwrap();
    }
    eprintln!(
        "registry crash test: the file was absent after {absent} of {rounds} kills, whole after \
         the others"
    );
}
