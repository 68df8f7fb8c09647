//! The persisted layout guard: a data directory written by the `plico` of commit a9dd17d
//! (`tests/fixtures/datadir-a9dd17d.tar.gz`, made by `tests/fixtures/make-datadir.sh`) is
//! opened by today's binary, which unseals it with the committed dev share and serves it: the
//! HSM state file and its key terms, the accounts, the cards and their holder, the outbox, the
//! batches, the code records under a rewrapped data key (term 1 → 2) and under a term-2 key, and
//! the audit chain, which still verifies after today's code appended to it and restarted.
//! Then a registry file large enough to be written as a bulk file (a layout a9dd17d did not
//! have) goes over that store: the old records stay readable beside it, and win or lose as
//! they should.
//!
//! If this test fails, a persisted name, tag, record encoding, key purpose, envelope or state
//! file changed: keep reading the old form (and say so), do not regenerate the fixture.

use super::batches::serial;
use super::registry_crash::codice_fiscale;
use super::support::serve_dev;
use super::*;
use std::collections::BTreeSet;

/// The fixture, relative to the package root.
const FIXTURE: &str = "tests/fixtures/datadir-a9dd17d.tar.gz";
/// Facts of the fixture's HSM, read from its `hsm-state.json` when it was made.
const SHARE_SET: &str = "4efd18d8e259ed27";
const ROOT_KCV: &str = "30A855";
const TERM_KCVS: [(u64, &str, &str); 2] = [(1, "decrypt_only", "F98ECF"), (2, "active", "2B33D1")];

/// `plico-data/` of the fixture unpacked into `dir`.
fn unpack_fixture(dir: &Path) -> PathBuf {
    let tgz = Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE);
    run_ok(Command::new("tar").arg("-xzf").arg(&tgz).arg("-C").arg(dir));
    dir.join("plico-data")
}

/// A client of a served fixture that signs in with the fixture's token files.
struct Fixture {
    http: reqwest::Client,
    url: String,
    data: PathBuf,
}

impl Fixture {
    fn token(&self, role: &str) -> String {
        let path = self.data.join("tokens").join(format!("{role}.token"));
        std::fs::read_to_string(path).unwrap().trim().to_owned()
    }

    async fn answer(res: reqwest::Response) -> (u16, Value) {
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, json)
    }

    async fn get(&self, role: &str, path: &str) -> (u16, Value) {
        let res = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(self.token(role))
            .send()
            .await
            .unwrap();
        Self::answer(res).await
    }

    async fn post(&self, role: &str, path: &str, body: Value) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.url))
            .bearer_auth(self.token(role))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn post_ok(&self, role: &str, path: &str, body: Value) -> Value {
        let (status, json) = Self::answer(self.post(role, path, body).await).await;
        assert!((200..300).contains(&status), "{path}: {status} {json}");
        json
    }

    /// The audit chain verified by the server: (events, problem).
    async fn verify_audit(&self) -> (u64, Value) {
        let (status, v) = self.get("auditor", "/v1/audit/verify").await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["macs_checked"], true, "{v}");
        (v["events"].as_u64().unwrap(), v["problem"].clone())
    }

    /// The text of the spooled SMS files that mention this card's last four digits, waiting
    /// for the delivery worker until one does.
    fn spooled_sms_for(&self, last4: &str) -> String {
        let spool = self.data.join("spool");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let texts: Vec<String> = std::fs::read_dir(&spool)
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "sms"))
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .filter(|t| t.contains(&format!("***{last4}")))
                .collect();
            if !texts.is_empty() {
                return texts.concat();
            }
            assert!(
                Instant::now() < deadline,
                "no SMS for card …{last4} in {}",
                spool.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The whitespace-separated words of a PDF's text (`pdftotext`).
fn pdf_words(pdf: &[u8], dir: &Path) -> BTreeSet<String> {
    let path = dir.join("page.pdf");
    std::fs::write(&path, pdf).unwrap();
    let out = run_ok(Command::new("pdftotext").arg(&path).arg("-"));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn a_data_directory_of_a9dd17d_opens_and_serves() {
    let tmp = tempfile::tempdir().unwrap();
    let data = unpack_fixture(tmp.path());
    let server = serve_dev(&data);
    let fx = Fixture {
        http: http_client(None),
        url: server.url.clone(),
        data: data.clone(),
    };

    // The HSM state file: unsealed by the committed dev share, the same root and terms.
    assert_eq!(
        status_code(&fx.http, &format!("{}/readyz", fx.url)).await,
        200
    );
    let (_, st) = fx.get("auditor", "/v1/sys/status").await;
    assert_eq!(st["sealed"], false, "{st}");
    assert_eq!(st["dev"], true, "{st}");
    assert_eq!(st["share_set"], SHARE_SET, "{st}");
    assert_eq!(st["root_kcv"], ROOT_KCV, "{st}");
    let terms: Vec<(u64, String, String)> = st["terms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["id"].as_u64().unwrap(),
                t["state"].as_str().unwrap().to_owned(),
                t["kcv"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want: Vec<(u64, String, String)> = TERM_KCVS
        .iter()
        .map(|(i, s, k)| (*i, (*s).to_owned(), (*k).to_owned()))
        .collect();
    assert_eq!(terms, want);

    // The audit chain written by a9dd17d verifies.
    let (events_before, problem) = fx.verify_audit().await;
    assert!(problem.is_null(), "{problem}");
    assert!(events_before >= 20, "{events_before} events");

    // The batches, under term 1 (rewrapped) and term 2.
    let (status, b) = fx.get("cms", "/v1/batches").await;
    assert_eq!(status, 200, "{b}");
    let batches: Vec<(String, String, u64)> = b["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["id"].as_str().unwrap().to_owned(),
                x["state"].as_str().unwrap().to_owned(),
                x["cards"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        batches,
        vec![
            ("b000001".to_owned(), "committed".to_owned(), 3),
            ("b000002".to_owned(), "committed".to_owned(), 2),
        ]
    );

    // The cards and their holder.
    let card = |n: &str| format!("/v1/cards/80380000000000000{n}");
    let (status, c) = fx.get("operator", &card("101")).await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["state"], "active", "{c}");
    assert_eq!(c["activated_by"], "delegate", "{c}");
    assert_eq!(c["codes_held"], true, "{c}");
    assert_eq!(c["expiry"], "2030-01-31", "{c}");
    let parts: Vec<(String, String, String)> = c["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["part"].as_str().unwrap().to_owned(),
                p["channel"].as_str().unwrap().to_owned(),
                p["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        parts,
        vec![
            ("A".into(), "counter".into(), "counter".into()),
            ("B".into(), "sms".into(), "awaiting_counter".into()),
        ]
    );
    let holder = c["holder"].as_str().unwrap().to_owned();
    let (_, c) = fx.get("operator", &card("102")).await;
    assert_eq!(
        (&c["state"], &c["reason"]),
        (&json!("suspended"), &json!("lost"))
    );
    let (_, c) = fx.get("operator", &card("103")).await;
    assert_eq!(c["state"], "issued", "{c}");
    assert_eq!(c["holder"], holder.as_str(), "{c}");
    let (_, c) = fx.get("operator", &card("201")).await;
    assert_eq!(
        (&c["state"], &c["codes_held"]),
        (&json!("issued"), &json!(true))
    );

    let found = fx
        .post_ok(
            "operator",
            "/v1/holders/search",
            json!({"codice_fiscale": "RSSMRA85T10A562S"}),
        )
        .await;
    let h = &found["holders"][0];
    assert_eq!(h["id"], holder.as_str(), "{found}");
    assert_eq!(
        (&h["given_names"], &h["surname"], &h["birth_date"]),
        (&json!("Mario"), &json!("Rossi"), &json!("1985-12-10"))
    );
    assert_eq!(h["mobile"], "+393331234567", "{found}");

    // The release path under a rewrapped data key: part A on the counter page, then part B
    // released to the (dev) SMS spool. Card …0101: PIN 13579, PUK 24681357.
    let res = fx
        .post(
            "operator",
            &format!("{}/counter-page", card("101")),
            json!({}),
        )
        .await;
    assert_eq!(res.status().as_u16(), 200);
    let pdf = res.bytes().await.unwrap();
    assert!(pdf.starts_with(b"%PDF"));
    let words = pdf_words(&pdf, tmp.path());
    assert!(words.contains("13") && words.contains("24"), "{words:?}");
    assert!(
        !words.contains("579") && !words.contains("681357"),
        "{words:?}"
    );
    let sms = fx.spooled_sms_for("0101");
    assert!(sms.contains("579") && sms.contains("681357"), "{sms}");
    assert!(!sms.contains("13579") && !sms.contains("24681357"), "{sms}");

    // Under a term-2 data key, with writes of today's code: card …0201 (PIN 97531, PUK
    // 75318642) activated by its holder and sent whole by SMS.
    fx.post_ok(
        "operator",
        &format!("{}/activate", card("201")),
        json!({"by": "holder", "document_type": "carta_identita",
               "document_number": "CA98765ZZ", "consent_ref": "consenso-fixture"}),
    )
    .await;
    fx.post_ok(
        "operator",
        &format!("{}/dispatch", card("201")),
        json!({"plan": "sms"}),
    )
    .await;
    let sms = fx.spooled_sms_for("0201");
    assert!(sms.contains("97531") && sms.contains("75318642"), "{sms}");

    // The chain grew with today's events and still verifies, also after a restart.
    let (events_after, problem) = fx.verify_audit().await;
    assert!(problem.is_null(), "{problem}");
    assert!(
        events_after > events_before,
        "{events_before} -> {events_after}"
    );
    let (exit, stderr) = server.terminate();
    assert!(exit.success(), "{stderr}");

    let server = serve_dev(&data);
    let fx = Fixture {
        url: server.url.clone(),
        ..fx
    };
    let (events, problem) = fx.verify_audit().await;
    assert!(problem.is_null(), "{problem}");
    assert!(events >= events_after, "{events_after} -> {events}");
    let (_, c) = fx.get("operator", &card("201")).await;
    assert_eq!(c["state"], "active", "{c}");
    bulk_file_over_the_old_layout(&fx, &holder).await;
    let (exit, stderr) = server.terminate();
    assert!(exit.success(), "{stderr}");

    // After a restart the bulk file is read from its directory in the store.
    let server = serve_dev(&data);
    let fx = Fixture {
        url: server.url.clone(),
        ..fx
    };
    let (_, c) = fx.get("operator", &card("103")).await;
    assert_eq!(
        (&c["state"], &c["expiry"]),
        (&json!("issued"), &json!("2031-12-31"))
    );
    let (_, c) = fx
        .get("operator", &format!("/v1/cards/{}", serial(BULK_BASE + 1)))
        .await;
    assert_eq!(c["state"], "active", "{c}");
    let (_, problem) = fx.verify_audit().await;
    assert!(problem.is_null(), "{problem}");
    let (exit, stderr) = server.terminate();
    assert!(exit.success(), "{stderr}");
}

/// The first of the bulk file's new cards is `serial(BULK_BASE + 1)`.
const BULK_BASE: u64 = 1_000_000;

/// A registry file big enough to be written as a bulk file (`cards::BULK_MIN_HOLDERS` new
/// holders, and the fixture's holder with its issued card …0103), over the store of a9dd17d:
/// the fixture's records stay readable, its card in the file takes the file's expiry, its
/// other cards keep their state, and a lifecycle change after the file wins over it.
async fn bulk_file_over_the_old_layout(fx: &Fixture, holder: &str) {
    let mut csv =
        "codice_fiscale;given_names;surname;birth_date;email;mobile;address;serial;expiry\n"
            .to_owned();
    csv.push_str(
        "RSSMRA85T10A562S;Mario;Rossi;1985-12-10;;+393331234567;;80380000000000000103;2031-12-31\n",
    );
    let n = cards::BULK_MIN_HOLDERS as u64;
    for i in 1..=n {
        csv.push_str(&format!(
            "{};Lucia;Mondella;1985-12-10;;;Via Manzoni {i}, 20121 Milano;{};2032-12-31\n",
            codice_fiscale(i),
            serial(BULK_BASE + i)
        ));
    }
    let res = fx
        .http
        .post(format!("{}/v1/registry", fx.url))
        .bearer_auth(fx.token("cms"))
        .header(header::CONTENT_TYPE, "text/csv")
        .body(csv)
        .send()
        .await
        .unwrap();
    let (status, out) = Fixture::answer(res).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(
        (&out["holders_created"], &out["holders_updated"]),
        (&json!(n), &json!(1)),
        "{out}"
    );
    let card = |n: &str| format!("/v1/cards/80380000000000000{n}");
    let (_, c) = fx.get("operator", &card("103")).await;
    assert_eq!(
        (&c["state"], &c["holder"], &c["expiry"]),
        (&json!("issued"), &json!(holder), &json!("2031-12-31"))
    );
    let (_, c) = fx.get("operator", &card("101")).await;
    assert_eq!(
        (&c["state"], &c["expiry"]),
        (&json!("active"), &json!("2030-01-31"))
    );
    let found = fx
        .post_ok(
            "operator",
            "/v1/holders/search",
            json!({"codice_fiscale": "RSSMRA85T10A562S"}),
        )
        .await;
    assert_eq!(found["holders"].as_array().unwrap().len(), 1, "{found}");
    assert_eq!(found["holders"][0]["id"], holder, "{found}");
    for i in [1, n] {
        let found = fx
            .post_ok(
                "operator",
                "/v1/holders/search",
                json!({"codice_fiscale": codice_fiscale(i)}),
            )
            .await;
        assert_eq!(found["holders"].as_array().unwrap().len(), 1, "{found}");
        let (status, c) = fx
            .get("operator", &format!("/v1/cards/{}", serial(BULK_BASE + i)))
            .await;
        assert_eq!((status, &c["state"]), (200, &json!("issued")), "{c}");
    }
    fx.post_ok(
        "operator",
        &format!("/v1/cards/{}/activate", serial(BULK_BASE + 1)),
        json!({"by": "holder", "document_type": "carta_identita",
               "document_number": "CA12121ZZ", "consent_ref": "consenso-bulk"}),
    )
    .await;
    let (_, c) = fx
        .get("operator", &format!("/v1/cards/{}", serial(BULK_BASE + 1)))
        .await;
    assert_eq!(c["state"], "active", "{c}");
}
