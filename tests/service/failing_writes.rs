//! A store that fails writes (issue 21): the service in process (the router over a state) on
//! a sled store on disk wrapped in [`FailingStore`], under a small mixed workload — registry,
//! code uploads, activations, suspensions, dispatches, new accounts, card reads — while the
//! store refuses writes at random (seeded) and then refuses every flush.
//!
//! It checks that:
//!
//! - every request answers: a success, or `503 storage_unavailable` with `Retry-After` and a
//!   message that says nothing of the store's error (no path, no cause); no panic anywhere in
//!   the service (a panic hook counts those raised outside the tests' own code);
//! - while every flush fails, `/readyz` answers `503 storage_unavailable` and `/healthz` stays
//!   `200` (the store may come back); once the disk works, `/readyz` answers `200` before any
//!   change came in (its probe flush saw the disk back);
//! - a change that was not acknowledged is whole or absent: a card in its old state or its new
//!   one, a dispatch with both its parts or none, a batch with all its codes or none;
//! - once writes work again the service takes changes at once, without a restart: the same
//!   uploads answer as their first attempt left them (`committed` or `already_stored`), and the
//!   audit chain verifies;
//! - nothing acknowledged is lost: after the service stopped, the store read back from disk
//!   (and the HSM unsealed again) holds every acknowledged state, account and code.
//!
//! `FAIL_SEED=N` replays a run (the seed is printed); `FAIL_OPS=N` sets the operations of the
//! failing phase (120 by default).
//!
//! The real disk: the `plico` binary on sled with a file size limit (`ulimit -f`, with
//! `SIGXFSZ` ignored, so a write past it fails with `EFBIG` as a full disk fails with
//! `ENOSPC`) takes code batches until the limit stops the store. From the first refused write
//! every change answers `503 storage_unavailable`, and `/healthz` and `/readyz` answer `503`
//! too: sled refuses every write until it is opened again (`vault::SledStore`). Restarted
//! without the limit, the service holds every acknowledged batch, whole, and the audit chain
//! verifies.

use super::batches::{codes_of, mix, serial};
use super::support::{cf, codes_file, identification, open_with_accounts, Client};
use super::*;
use cards::check_character;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use vault::{Actor, CodePolicy, FailingStore, SledStore};

const SALT: u64 = 0x6661_696c;
/// Cards in the registry: `FIRST..FIRST + CARDS`, their codes uploaded at the start.
const FIRST: u64 = 1001;
const CARDS: u64 = 30;
/// Cards of the batches uploaded during the workload: five a batch from here.
const UPLOADED: u64 = 5001;

/// Panics raised outside the tests' own files since the hook was installed.
static SERVICE_PANICS: AtomicU64 = AtomicU64::new(0);

fn count_service_panics() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_tests = info
                .location()
                .is_some_and(|l| l.file().starts_with("tests/") || l.file().contains("/tests/"));
            if !in_tests {
                SERVICE_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
}

/// A codice fiscale for holder `n` (born 1985-12-10).
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

fn registry_csv() -> String {
    let mut out = "codice_fiscale;given_names;surname;birth_date;email;mobile;address;deceased;serial;expiry;replaced_by\n".to_owned();
    for n in FIRST..FIRST + CARDS {
        out.push_str(&format!(
            "{};Renzo;Tramaglino;1985-12-10;;+39333{:07};Via Manzoni {n}, 20121 Milano;false;{};2032-12-31;\n",
            codice_fiscale(n),
            n,
            serial(n)
        ));
    }
    out
}

fn card_uri(n: u64, action: &str) -> String {
    format!("/v1/cards/{}/{action}", serial(n))
}

fn settings() -> plico::Settings {
    plico::Settings {
        codes: CodePolicy::CIE,
        // The workload is not about rate limits.
        sensitive_per_minute: std::num::NonZeroU32::new(100_000).unwrap(),
        ..plico::Settings::default()
    }
}

/// What a card should be: known, or one of two (a change whose answer was an error).
#[derive(Debug, Clone, PartialEq, Eq)]
struct CardModel {
    state: &'static str,
    parts: usize,
    /// The state before a change that answered an error, if one did (either may be found).
    or_before: Option<(&'static str, usize)>,
}

/// The service's acknowledged state.
#[derive(Debug, Default)]
struct Model {
    cards: BTreeMap<u64, CardModel>,
    /// Accounts whose creation was acknowledged, by name.
    accounts: BTreeSet<String>,
    /// Uploads: first card of five, and whether the upload was acknowledged.
    uploads: Vec<(u64, bool)>,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(1);
        mix(self.0)
    }
}

/// Whether `a` is the answer to a store that refuses writes: `503 storage_unavailable` with
/// `Retry-After`, and nothing of the store's error in it (no cause, no path, no library).
fn storage_unavailable(a: &Answer, what: &str) {
    assert_eq!(
        a.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{what}: {}",
        a.text
    );
    assert_eq!(
        a.json["error"]["code"], "storage_unavailable",
        "{what}: {}",
        a.text
    );
    assert_eq!(a.retry_after.as_deref(), Some("30"), "{what}: {}", a.text);
    for leak in [
        "injected",
        "no space",
        "sled",
        "/tmp",
        "os error",
        "too large",
    ] {
        assert!(!a.text.contains(leak), "{what}: {leak}: {}", a.text);
    }
}

/// An answer is a success, or (unless `strict`) the stable answer to a refused write. Returns
/// whether it succeeded.
fn success_or_unavailable(a: &Answer, what: &str, strict: bool) -> bool {
    if a.status.is_success() {
        return true;
    }
    assert!(!strict, "{what} failed once writes work again: {}", a.text);
    storage_unavailable(a, what);
    false
}

/// One operation of the workload, chosen by `pick`, its outcome recorded in `model`; with
/// `strict`, it must succeed.
async fn operate(client: &Client, model: &mut Model, pick: u64, step: u64, strict: bool) {
    let cards: Vec<u64> = model.cards.keys().copied().collect();
    let n = cards[(pick >> 8) as usize % cards.len()];
    let card = model.cards[&n].clone();
    // A card whose last change answered an error is left alone until it is read again.
    let kind = if card.or_before.is_some() {
        99
    } else {
        pick % 6
    };
    let ok = |a: &Answer, what: &str| success_or_unavailable(a, what, strict);
    match kind {
        0 | 1 if card.state == "issued" => {
            let a = client
                .post("operator", &card_uri(n, "activate"), identification(n))
                .await;
            settle(model, n, &card, ok(&a, "activate"), ("active", card.parts));
        }
        2 if card.state == "active" && card.parts == 0 => {
            let a = client
                .post(
                    "cms",
                    &card_uri(n, "dispatch"),
                    json!({"plan": "counter(2)+sms"}),
                )
                .await;
            settle(model, n, &card, ok(&a, "dispatch"), ("active", 2));
        }
        3 if card.state == "active" => {
            let a = client
                .post("cms", &card_uri(n, "suspend"), json!({"reason": "lost"}))
                .await;
            settle(
                model,
                n,
                &card,
                ok(&a, "suspend"),
                ("suspended", card.parts),
            );
        }
        4 => {
            let name = format!("sportello {step}");
            let a = client
                .post(
                    "admin",
                    "/v1/accounts",
                    json!({"name": name, "role": "operator"}),
                )
                .await;
            if ok(&a, "account") {
                model.accounts.insert(name);
            }
        }
        5 => {
            let first = UPLOADED + 5 * model.uploads.len() as u64;
            let a = upload(client, first).await;
            let acknowledged = ok(&a, "upload");
            if acknowledged {
                assert_eq!(a.json["outcome"], "committed", "{}", a.text);
            }
            model.uploads.push((first, acknowledged));
        }
        _ => {
            let a = client.get("cms", &format!("/v1/cards/{}", serial(n))).await;
            ok(&a, "read");
        }
    }
}

async fn upload(client: &Client, first: u64) -> Answer {
    client
        .post_raw(
            "manufacturer",
            "/v1/batches?manufacturer=ACME",
            "text/plain",
            codes_file(first..=first + 4, SALT),
        )
        .await
}

/// Records the outcome of a change of card `n` from `before` to `after`.
fn settle(model: &mut Model, n: u64, before: &CardModel, ok: bool, after: (&'static str, usize)) {
    let m = model.cards.get_mut(&n).unwrap();
    if ok {
        *m = CardModel {
            state: after.0,
            parts: after.1,
            or_before: None,
        };
    } else if m.or_before.is_none() {
        // Not acknowledged: the old state, or — for a change that was written before a later
        // step failed — the new one, whole. Later changes of this card are not tried.
        *m = CardModel {
            state: after.0,
            parts: after.1,
            or_before: Some((before.state, before.parts)),
        };
    }
}

/// Checks every card's state and parts as `status` reports them against the model; settles
/// the uncertain ones to what was found.
fn check_cards(model: &mut Model, status: &dyn Fn(u64) -> (String, usize), when: &str) {
    for (n, m) in model.cards.iter_mut() {
        let (state, parts) = status(*n);
        let found = (state.as_str(), parts);
        let after = (m.state, m.parts);
        match m.or_before {
            None => assert_eq!(found, after, "{when}: card {n}"),
            Some(before) => {
                assert!(
                    found == after || found == before,
                    "{when}: card {n} is {found:?}, neither {before:?} nor {after:?}"
                );
                *m = CardModel {
                    state: if found == after { after.0 } else { before.0 },
                    parts,
                    or_before: None,
                };
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_failing_writes_gets_errors_loses_nothing_and_recovers_by_itself() {
    count_service_panics();
    let seed: u64 = std::env::var("FAIL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let ops: u64 = std::env::var("FAIL_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    eprintln!("failing writes test: FAIL_SEED={seed} FAIL_OPS={ops}");
    let panics_before = SERVICE_PANICS.load(Ordering::SeqCst);

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let mut share = None;
    let hsm = Arc::new(
        SimulatedHsm::dev_keeping_share(&data, &mut |s: &SecretString| {
            share = Some(s.clone());
            Ok(())
        })
        .unwrap(),
    );
    let share = share.unwrap();
    let sled = Arc::new(SledStore::open(&data.join("store")).unwrap());
    let store = Arc::new(FailingStore::over(sled));
    let state = AppState::with_settings(hsm, store.clone(), &settings()).unwrap();
    let staff = open_with_accounts(&state, &["manufacturer", "cms", "operator", "auditor"]);
    let client = Client::new(&state, staff.tokens);

    let a = client
        .post_raw("cms", "/v1/registry", "text/csv", registry_csv())
        .await;
    assert_eq!(a.json["outcome"], "applied", "{}", a.text);
    let a = client
        .post_raw(
            "manufacturer",
            "/v1/batches?manufacturer=ACME",
            "text/plain",
            codes_file(FIRST..=FIRST + CARDS - 1, SALT),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let mut model = Model::default();
    for n in FIRST..FIRST + CARDS {
        model.cards.insert(
            n,
            CardModel {
                state: "issued",
                parts: 0,
                or_before: None,
            },
        );
    }

    // Writes fail at random: a third of them.
    let mut rng = Rng(seed);
    store.fail_randomly(0.35, seed);
    for step in 0..ops {
        operate(&client, &mut model, rng.next(), step, false).await;
    }
    // Then every flush fails: the writes apply, none is acknowledged.
    store.fail_randomly(0.0, 0);
    store.fail_flushes(true);
    for step in ops..ops + 12 {
        operate(&client, &mut model, rng.next(), step, false).await;
    }
    // Not ready (its probe flush fails too), but alive: the disk may come back.
    let a = client.call(Method::GET, "/readyz", None).await;
    storage_unavailable(&a, "readyz while flushes fail");
    let a = client.call(Method::GET, "/healthz", None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let failures = store.failures();
    store.heal();
    // Ready again at once, before any change came in.
    let a = client.call(Method::GET, "/readyz", None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    eprintln!(
        "failing writes test: {failures} writes and flushes refused; {} accounts and {} of {} \
         uploads acknowledged",
        model.accounts.len(),
        model.uploads.iter().filter(|u| u.1).count(),
        model.uploads.len()
    );
    assert!(failures > 0);

    // Recovered without a restart: every card is as acknowledged (or whole either way), new
    // changes are taken, each upload's retry answers as its first attempt left it.
    let mut statuses = BTreeMap::new();
    for n in FIRST..FIRST + CARDS {
        let a = client.get("cms", &format!("/v1/cards/{}", serial(n))).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        statuses.insert(
            n,
            (
                a.json["state"].as_str().unwrap().to_owned(),
                a.json["parts"].as_array().unwrap().len(),
            ),
        );
    }
    check_cards(&mut model, &|n| statuses[&n].clone(), "after healing");
    for step in 0..20 {
        // Each operation succeeds now (or is not tried for a card in the wrong state).
        operate(&client, &mut model, rng.next(), 10_000 + step, true).await;
    }
    assert!(model.cards.values().all(|m| m.or_before.is_none()));
    let uploads = model.uploads.clone();
    for (first, acknowledged) in &uploads {
        let a = upload(&client, *first).await;
        let outcome = a.json["outcome"].as_str().unwrap_or_default().to_owned();
        if *acknowledged {
            assert_eq!(
                (a.status, outcome.as_str()),
                (StatusCode::OK, "already_stored"),
                "{}",
                a.text
            );
        } else {
            assert!(
                matches!(outcome.as_str(), "committed" | "already_stored"),
                "upload of {first}: {}",
                a.text
            );
        }
    }
    let a = client.get("auditor", "/v1/audit/verify").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert!(a.json["problem"].is_null(), "{}", a.text);
    let a = client.get("admin", "/v1/accounts").await;
    let names: BTreeSet<String> = a.json["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(model.accounts.is_subset(&names), "{names:?}");
    assert_eq!(
        SERVICE_PANICS.load(Ordering::SeqCst),
        panics_before,
        "the service panicked"
    );

    // Stopped and read back from disk: nothing acknowledged is lost.
    let mut statuses = BTreeMap::new();
    for n in FIRST..FIRST + CARDS {
        let a = client.get("cms", &format!("/v1/cards/{}", serial(n))).await;
        statuses.insert(
            n,
            (
                a.json["state"].as_str().unwrap().to_owned(),
                a.json["parts"].as_array().unwrap().len(),
            ),
        );
    }
    check_cards(&mut model, &|n| statuses[&n].clone(), "before stopping");
    state.shut_down().unwrap();
    drop(client);
    drop(state);
    drop(store);

    let hsm = Arc::new(SimulatedHsm::open(&data).unwrap());
    hsm.unseal(&share).unwrap();
    let store = Arc::new(SledStore::open(&data.join("store")).unwrap());
    let state = AppState::with_settings(hsm, store, &settings()).unwrap();
    let actor = Actor::system("failing writes test");
    state.unsealed(&actor, "test").unwrap();
    assert!(state.audit.verify().unwrap().problem.is_none());
    let today = cards::Date::today_utc();
    check_cards(
        &mut model,
        &|n| {
            let s = state
                .cms
                .status(&state.audit, &serial(n), today, &actor)
                .unwrap();
            (s.state.to_string(), s.parts.len())
        },
        "read back from disk",
    );
    let names: BTreeSet<String> = state
        .accounts
        .list()
        .unwrap()
        .into_iter()
        .map(|a| a.name)
        .collect();
    assert!(model.accounts.is_subset(&names), "{names:?}");
    let mut coded: Vec<u64> = (FIRST..FIRST + CARDS).collect();
    coded.extend(uploads.iter().flat_map(|(first, _)| *first..*first + 5));
    for n in coded {
        let c = super::support::released_codes(&state, &serial(n))
            .unwrap()
            .unwrap_or_else(|| panic!("card {n}: codes lost"));
        let (pin, puk) = codes_of(n, SALT);
        assert_eq!(c.pin.expose_secret(), pin.as_bytes(), "card {n}");
        assert_eq!(c.puk.expose_secret(), puk.as_bytes(), "card {n}");
    }
}

/// Cards of each batch the full-disk test uploads.
const DISK_BATCH: u64 = 500;
/// The file size limit of the full-disk test's server: room for its start and some batches.
const DISK_LIMIT_BYTES: u64 = 3 << 20;

/// Uploads batch `i` of the full-disk test (cards `DISK_BATCH * i + 1 ..`, CNS codes): the
/// status, `Retry-After` and body.
async fn disk_upload(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    i: u64,
) -> (u16, Option<String>, String) {
    let first = DISK_BATCH * i + 1;
    let res = client
        .post(format!("{url}/v1/batches?manufacturer=ACME"))
        .bearer_auth(token)
        .header("content-type", "text/plain")
        .body(super::support::cns_codes_file(
            first..=first + DISK_BATCH - 1,
            SALT,
        ))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let retry = res
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, retry, res.text().await.unwrap())
}

/// `GET url` without a token: the status and body.
/// The JSON answer of `GET url` with `token`.
async fn get_json(client: &reqwest::Client, url: &str, token: &str) -> Value {
    let res = client.get(url).bearer_auth(token).send().await.unwrap();
    res.json().await.unwrap()
}

async fn probe(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let res = client.get(url).send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// The answer to a refused write over the wire: `503 storage_unavailable`, `Retry-After`, and
/// nothing of the cause or the data directory.
fn refused_over_the_wire(status: u16, retry: Option<&str>, body: &str, data: &Path, what: &str) {
    assert_eq!(status, 503, "{what}: {body}");
    assert_eq!(retry, Some("30"), "{what}: {body}");
    let v: Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["error"]["code"], "storage_unavailable", "{what}: {body}");
    let dir = data.display().to_string();
    for leak in [dir.as_str(), "sled", "os error", "too large", "EFBIG"] {
        assert!(!body.contains(leak), "{what}: {leak}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_sled_answers_503_until_a_restart_and_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let client = http_client(None);

    // `plico serve --dev` under a file size limit, SIGXFSZ ignored (inherited through exec):
    // a write past the limit fails with EFBIG, as a full disk fails with ENOSPC.
    let blocks = DISK_LIMIT_BYTES / 512;
    let mut cmd = Command::new("sh");
    cmd.env("RUST_LOG", "warn")
        .arg("-c")
        .arg("trap '' XFSZ; ulimit -f \"$1\"; shift; exec \"$@\"")
        .arg("sh")
        .arg(blocks.to_string())
        .arg(env!("CARGO_BIN_EXE_plico"))
        .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data);
    for (k, _) in std::env::vars() {
        if k.starts_with("PLICO_") {
            cmd.env_remove(k);
        }
    }
    let mut server = Server::start(cmd);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max file size"))
        .unwrap();
    assert!(
        line.contains(&DISK_LIMIT_BYTES.to_string()),
        "the limit did not apply: {line}"
    );
    let url = server.url.clone();
    let admin = std::fs::read_to_string(data.join("admin-token.txt"))
        .unwrap()
        .trim()
        .to_owned();
    let mut tokens = Vec::new();
    for (name, role) in [("fabbrica", "manufacturer"), ("revisore", "auditor")] {
        let res = client
            .post(format!("{url}/v1/accounts"))
            .bearer_auth(&admin)
            .json(&json!({"name": name, "role": role}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 201);
        let v: Value = res.json().await.unwrap();
        tokens.push(v["token"].as_str().unwrap().to_owned());
    }
    let (manufacturer, auditor) = (tokens.remove(0), tokens.remove(0));

    // Batches until the limit stops the store.
    let mut acknowledged = Vec::new();
    let mut refused = None;
    for i in 0..400 {
        let (status, retry, body) = disk_upload(&client, &url, &manufacturer, i).await;
        if status == 201 {
            let v: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["cards"], DISK_BATCH, "{body}");
            acknowledged.push(i);
            continue;
        }
        refused_over_the_wire(status, retry.as_deref(), &body, &data, "the first refusal");
        refused = Some(i);
        break;
    }
    let refused = refused.expect("the file size limit never stopped the store");
    assert!(!acknowledged.is_empty(), "no batch fitted under the limit");
    eprintln!(
        "full disk test: {} batches of {DISK_BATCH} acknowledged, batch {refused} refused",
        acknowledged.len()
    );

    // Stuck until a restart: every change is refused, the probes say so, the process runs.
    for i in [refused + 1, refused + 2] {
        let (status, retry, body) = disk_upload(&client, &url, &manufacturer, i).await;
        refused_over_the_wire(status, retry.as_deref(), &body, &data, "a later change");
    }
    for probe_path in ["/healthz", "/readyz"] {
        let (status, v) = probe(&client, &format!("{url}{probe_path}")).await;
        assert_eq!(status, 503, "{probe_path}: {v}");
        assert_eq!(
            v["error"]["code"], "storage_unavailable",
            "{probe_path}: {v}"
        );
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("restarted"),
            "{probe_path}: {v}"
        );
    }
    assert!(
        server.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "the server exited"
    );
    let (_, stderr) = server.terminate();
    assert!(!stderr.contains("panicked"), "{stderr}");

    // Restarted without the limit: every acknowledged batch is there, whole; the refused
    // ones are whole or absent; the audit chain verifies; changes are taken again.
    let server = Server::dev(&data, None);
    let url = server.url.clone();
    let v = get_json(&client, &format!("{url}/v1/batches?limit=1000"), &admin).await;
    let listed = v["batches"].as_array().unwrap();
    for b in listed {
        assert_eq!(b["state"], "committed", "{b}");
        assert_eq!(b["cards"], DISK_BATCH, "{b}");
    }
    assert!(
        listed.len() >= acknowledged.len() && listed.len() <= acknowledged.len() + 3,
        "{} batches listed, {} acknowledged",
        listed.len(),
        acknowledged.len()
    );
    let report = get_json(&client, &format!("{url}/v1/audit/verify"), &auditor).await;
    assert!(report["problem"].is_null(), "{report}");
    let (status, v) = probe(&client, &format!("{url}/healthz")).await;
    assert_eq!(status, 200, "{v}");
    let (status, _, body) = disk_upload(&client, &url, &manufacturer, refused + 3).await;
    assert_eq!(status, 201, "{body}");
    let (exit, stderr) = server.terminate();
    assert!(exit.success(), "{stderr}");

    // Read back offline: the codes of every acknowledged batch.
    let hsm = Arc::new(SimulatedHsm::open(&data).unwrap());
    let share = std::fs::read_to_string(data.join("dev-share.txt")).unwrap();
    hsm.unseal(&SecretString::from(share.trim().to_owned()))
        .unwrap();
    let store = Arc::new(SledStore::open(&data.join("store")).unwrap());
    let state = AppState::new(hsm, store).unwrap();
    state
        .unsealed(&Actor::system("full disk test"), "test")
        .unwrap();
    for i in acknowledged {
        for n in [DISK_BATCH * i + 1, DISK_BATCH * (i + 1)] {
            let c = super::support::released_codes(&state, &serial(n))
                .unwrap()
                .unwrap_or_else(|| panic!("card {n} of batch {i}: codes lost"));
            let (pin, puk) = codes_of(n, SALT);
            assert_eq!(c.pin.expose_secret(), &pin.as_bytes()[..5], "card {n}");
            assert_eq!(c.puk.expose_secret(), puk.as_bytes(), "card {n}");
        }
    }
}
