//! Printed mailers over HTTP, on a real sled store: a print run of a batch configured through
//! `[mailers]` (a TOML file, an age identity made by the test as the print facility), its
//! sealed files opened with the `age` tool and read with `pdftotext` and checked against the
//! imported codes, the masked serials and the manifests' numbers; a scan of everything on
//! disk for clear codes; outcomes (all or nothing), a reprint by serial that voids the earlier
//! mailer, the reconciliation; the counter's part-A page (gate, audit, wrong state, roles);
//! and the refusals (no recipients, a part the plan lacks, another run going). Every answer
//! body is scanned for codes; only the counter PDF may hold digits of one, and only part A's.

use super::batches::{codes_of, serial};
use super::support::{
    cf, cie_state, codes_file, identification, open_with_accounts, serve_dev, Client,
};
use super::tools::{age_decrypt, tool};
use super::*;
use plico::config::Config;
use vault::Query;

const SALT: u64 = 0x6d61_696c_6572;

/// Four holders with accented names and postal addresses, one card each (serials 301–304).
fn registry_csv() -> String {
    let rows = [
        (
            "DNGNCL80A01F839",
            "Nicolò",
            "D'Angelo",
            "1980-01-01",
            "Via Santa Lucia 3, 80132 Napoli",
            301,
        ),
        (
            "MLLZOE92M45F205",
            "Zoë",
            "Müller",
            "1992-08-05",
            "Corso Buenos Aires 12, 20124 Milano",
            302,
        ),
        (
            "PRRGNS75D50L219",
            "Agnès",
            "Perrière",
            "1975-04-10",
            "Piazza Castello 1, 10121 Torino",
            303,
        ),
        (
            "FSCGNN60E10F205",
            "Giovanni",
            "Foscolò",
            "1960-05-10",
            "Via Manzoni 9, 20121 Milano",
            304,
        ),
    ];
    registry_of(&rows)
}

/// A registry CSV of these holders: (codice fiscale less its check letter, given names,
/// surname, birth date, address, card number).
fn registry_of(rows: &[(&str, &str, &str, &str, &str, u64)]) -> String {
    let header = "codice_fiscale;given_names;surname;birth_date;email;mobile;address;deceased;serial;expiry;replaced_by\n";
    let mut out = header.to_owned();
    for &(cf15, given, surname, birth, address, n) in rows {
        out.push_str(&format!(
            // An e-mail address: part B of a split dispatch (the counter page is its part A).
            "{};{given};{surname};{birth};h{n}@example.it;;{address};false;{};2032-12-31;\n",
            cf(cf15),
            serial(n)
        ));
    }
    out
}

/// An unsealed service over sled whose `[mailers]` comes from a TOML file, sealed to an age
/// identity of the test; one account per role. Every answer body the client keeps (all but
/// the counter PDF) is scanned for codes.
struct Desk {
    dir: tempfile::TempDir,
    state: AppState,
    client: Client,
    identity: age::x25519::Identity,
}

impl std::ops::Deref for Desk {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Desk {
    fn new(with_recipient: bool) -> Desk {
        Self::with(with_recipient, plico::DEFAULT_SENSITIVE_PER_MINUTE)
    }

    fn with(with_recipient: bool, sensitive_per_minute: std::num::NonZeroU32) -> Desk {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let state = cie_state(&data, sensitive_per_minute);
        let identity = age::x25519::Identity::generate();
        let recipients = if with_recipient {
            format!("recipients = [\"{}\"]\n", identity.to_public())
        } else {
            String::new()
        };
        let cfg = dir.path().join("plico.toml");
        std::fs::write(
            &cfg,
            format!(
                "[mailers]\nper_file = 2\n{recipients}[mailers.issuer]\nname = \"Regione Prova\"\n"
            ),
        )
        .unwrap();
        let config = Config::load(Some(&cfg)).unwrap();
        let print = config.mailers.print_setup(&data, None).unwrap();
        assert_eq!(print.out_dir, data.join("print"));
        let state = state.with_print(print);
        let staff = open_with_accounts(&state, &["manufacturer", "cms", "operator", "auditor"]);
        let client = Client::new(&state, staff.tokens);
        Desk {
            dir,
            state,
            client,
            identity,
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn out_dir(&self) -> PathBuf {
        self.data().join("print")
    }

    /// Registry, codes for cards 301–304 (returns the batch id), cards 301–303 activated.
    async fn set_up(&self) -> String {
        self.set_up_with(registry_csv(), 301..=303).await
    }

    /// `registry`, codes for cards 301–304 (returns the batch id), the cards `active`
    /// activated.
    async fn set_up_with(&self, registry: String, active: std::ops::RangeInclusive<u64>) -> String {
        let a = self
            .post_raw("cms", "/v1/registry", "text/csv", registry)
            .await;
        assert_eq!(a.json["outcome"], "applied", "{}", a.text);
        let a = self
            .post_raw(
                "manufacturer",
                "/v1/batches?manufacturer=ACME",
                "text/plain",
                codes_file(301..=304, SALT),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
        let batch = a.json["batch"].as_str().unwrap().to_owned();
        for n in active {
            let a = self
                .post(
                    "operator",
                    &format!("/v1/cards/{}/activate", serial(n)),
                    identification(n),
                )
                .await;
            assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        }
        batch
    }

    /// Starts a run and waits for its end; returns the final record.
    async fn print(&self, body: Value) -> Value {
        let req = self
            .request("cms", Method::POST, "/v1/mailers/runs")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let res = self.app.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::ACCEPTED);
        let location = res.headers()[header::LOCATION].to_str().unwrap().to_owned();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let started: Value = serde_json::from_slice(&bytes).unwrap();
        let id = started["run"].as_u64().unwrap();
        assert_eq!(location, format!("/v1/mailers/runs/{id}"));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let a = self.get("auditor", &location).await;
            assert_eq!(a.status, StatusCode::OK, "{}", a.text);
            if a.json["state"] != "running" {
                assert!(a.json.get("done_so_far").is_none(), "{}", a.text);
                return a.json;
            }
            assert!(Instant::now() < deadline, "run {id} did not end");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every code the test imported.
    fn all_codes(&self) -> Vec<String> {
        (301..=304)
            .flat_map(|n| {
                let (pin, puk) = codes_of(n, SALT);
                [pin, puk]
            })
            .collect()
    }

    fn assert_bodies_clean(&self) {
        let bodies = self.bodies.lock().unwrap();
        assert!(!bodies.is_empty());
        for text in bodies.iter() {
            for code in self.all_codes() {
                assert!(!text.contains(&code), "an answer holds a code: {text}");
            }
        }
    }
}

fn pdftotext(pdf: &[u8], scratch: &Path) -> String {
    let path = scratch.join("page.pdf");
    std::fs::write(&path, pdf).unwrap();
    let out = tool("pdftotext")
        .args(["-q", "-enc", "UTF-8"])
        .arg(&path)
        .arg("-")
        .output()
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(out.status.success(), "pdftotext failed: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Every file under `root`, with its bytes.
fn every_file(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                out.push((path, bytes));
            }
        }
    }
    out
}

#[tokio::test]
async fn print_run_seals_every_code_to_the_facility_and_reprints_void() {
    let d = Desk::new(true);
    let batch = d.set_up().await;
    let scratch = tempfile::tempdir().unwrap();

    // Refusals first: nothing starts.
    for (body, status, code) in [
        (json!({}), StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
        (
            json!({"batch": batch, "serials": [serial(301)]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            json!({"batch": batch, "plan": "whole", "part": "A"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            json!({"batch": batch, "plan": "counter(8)+sms", "part": "A"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            json!({"batch": batch, "plan": "counter(x)"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        // A dispatch's whole plan by SMS or e-mail is no print run's plan.
        (
            json!({"batch": batch, "plan": "sms"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            json!({"batch": batch, "label": "../etc"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            json!({"batch": "b000099"}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
    ] {
        let a = d.post("cms", "/v1/mailers/runs", body.clone()).await;
        assert_error(&a, status, code);
        assert!(!a.text.contains("running"), "{body}: {}", a.text);
    }
    let a = d
        .post("operator", "/v1/mailers/runs", json!({"batch": batch}))
        .await;
    assert_error(&a, StatusCode::FORBIDDEN, "forbidden");
    let a = d.get("cms", "/v1/mailers/runs").await;
    assert_eq!(a.json, json!([]), "{}", a.text);

    // The batch: three active cards printed, the issued one skipped; two files of at most 2.
    let run = d.print(json!({"batch": batch})).await;
    assert_eq!(run["state"], "done", "{run}");
    assert_eq!(run["label"], batch.as_str());
    assert_eq!(run["printed"], 3, "{run}");
    assert_eq!(run["skipped"], json!({"issued": 1}), "{run}");
    assert_eq!(run["files"].as_array().unwrap().len(), 2, "{run}");
    assert_eq!(run["plan"], "whole");

    // Only sealed files and manifests are written.
    let mut names: Vec<String> = std::fs::read_dir(d.out_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), 4, "{names:?}");
    for n in &names {
        assert!(
            n.ends_with(".pdf.age") || n.ends_with(".manifest.json"),
            "{n}"
        );
    }
    let mut manifests: Vec<dispatch::bulk::Manifest> = names
        .iter()
        .filter(|n| n.ends_with(".manifest.json"))
        .map(|n| serde_json::from_slice(&std::fs::read(d.out_dir().join(n)).unwrap()).unwrap())
        .collect();
    manifests.sort_by_key(|m| m.first_number);
    let files: Vec<&str> = manifests.iter().map(|m| m.file.as_str()).collect();
    assert_eq!(json!(files), run["files"]);

    // Each page: the card's codes, its masked serial (never the full one), its number and
    // holder; the cards in serial order.
    let holders = ["Nicolò D'Angelo", "Zoë Müller", "Agnès Perrière"];
    let mut card = 301;
    let mut numbers = Vec::new();
    for m in &manifests {
        let clear = age_decrypt(&d.identity, &d.out_dir().join(&m.file), scratch.path());
        let text = pdftotext(&clear, scratch.path());
        let pages: Vec<&str> = text
            .split('\u{c}')
            .filter(|p| !p.trim().is_empty())
            .collect();
        assert_eq!(pages.len() as u64, m.count, "{}", m.file);
        assert_eq!(m.first_serial, serial(card));
        for (i, page) in pages.iter().enumerate() {
            let (pin, puk) = codes_of(card, SALT);
            assert!(page.contains(&pin) && page.contains(&puk), "card {card}");
            let number = m.first_number + i as u64;
            assert!(page.contains(&format!("Plico n. {number}")), "{page}");
            assert!(
                page.contains(&dispatch::mask_serial(&serial(card))),
                "{page}"
            );
            assert!(!page.contains(&serial(card)), "full serial printed");
            let holder = holders[(card - 301) as usize];
            let (given, surname) = holder.split_once(' ').unwrap();
            assert!(
                page.contains(given) && page.contains(&surname.replace('\'', "")[1..]),
                "holder {holder} on {page}"
            );
            assert!(page.contains("Regione Prova"), "{page}");
            // The issued card's codes are nowhere.
            let (pin4, puk4) = codes_of(304, SALT);
            assert!(!page.contains(&pin4) && !page.contains(&puk4));
            numbers.push((card, number));
            card += 1;
        }
        assert_eq!(m.last_number, m.first_number + m.count - 1);
    }
    assert_eq!(card, 304);

    // The card's mailers.
    let (card1, n1) = numbers[0];
    let (card2, n2) = numbers[1];
    let (card3, n3) = numbers[2];
    let a = d
        .get("operator", &format!("/v1/cards/{}/mailers", serial(card2)))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json.as_array().unwrap().len(), 1, "{}", a.text);
    assert_eq!(a.json[0]["number"], n2);
    assert_eq!(a.json[0]["state"], "outstanding");
    let a = d
        .get("operator", &format!("/v1/cards/{}/mailers", serial(999)))
        .await;
    assert_error(&a, StatusCode::NOT_FOUND, "not_found");

    // Outcomes are all or nothing: a bad number or outcome changes nothing.
    let a = d
        .post(
            "operator",
            "/v1/mailers/outcomes",
            json!({"outcomes": [{"number": n1, "outcome": "delivered"}, {"number": 999_999, "outcome": "spoiled"}]}),
        )
        .await;
    assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    assert!(
        a.text.contains("outcome 2") && a.text.contains("999999"),
        "{}",
        a.text
    );
    // Beyond the API's 64 KiB: a bulk body, still all or nothing.
    let many: Vec<Value> = std::iter::once(json!({"number": n1, "outcome": "delivered"}))
        .chain((0..3000).map(|i| json!({"number": 500_000 + i, "outcome": "spoiled"})))
        .collect();
    let a = d
        .post("cms", "/v1/mailers/outcomes", json!({ "outcomes": many }))
        .await;
    assert!(a.text.len() < 1000);
    assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    assert!(a.text.contains("outcome 2 (mailer 500000)"), "{}", a.text);
    let a = d
        .post(
            "cms",
            "/v1/mailers/outcomes",
            json!({"outcomes": [{"number": n1, "outcome": "lost"}]}),
        )
        .await;
    assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    let a = d
        .get("cms", &format!("/v1/cards/{}/mailers", serial(card1)))
        .await;
    assert_eq!(a.json[0]["state"], "outstanding", "{}", a.text);
    let a = d
        .post(
            "auditor",
            "/v1/mailers/outcomes",
            json!({"outcomes": [{"number": n1, "outcome": "delivered"}]}),
        )
        .await;
    assert_error(&a, StatusCode::FORBIDDEN, "forbidden");

    let a = d
        .post(
            "operator",
            "/v1/mailers/outcomes",
            json!({"outcomes": [{"number": n1, "outcome": "delivered"}, {"number": n3, "outcome": "spoiled"}]}),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["counts"], json!({"delivered": 1, "spoiled": 1}));

    // A reprint of one card by serial voids its earlier mailer.
    let run2 = d
        .print(json!({"serials": [serial(card2)], "reprint": "undelivered", "label": "reprint-1"}))
        .await;
    assert_eq!(run2["state"], "done", "{run2}");
    assert_eq!(run2["printed"], 1, "{run2}");
    assert_eq!(run2["voided"], 1, "{run2}");
    assert_eq!(run2["batch"], batch.as_str());
    let a = d
        .get("cms", &format!("/v1/cards/{}/mailers", serial(card2)))
        .await;
    let mine = a.json.as_array().unwrap();
    assert_eq!(mine.len(), 2, "{}", a.text);
    assert_eq!(mine[0]["number"], n2);
    assert_eq!(mine[0]["state"], "voided");
    assert_eq!(mine[1]["state"], "outstanding");
    assert!(mine[1]["number"].as_u64().unwrap() > n3);

    let a = d
        .get(
            "auditor",
            &format!("/v1/mailers/reconciliation?batch={batch}"),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let r = &a.json[0];
    assert_eq!(r["batch"], batch.as_str());
    assert_eq!(r["files"], 3);
    assert_eq!(r["printed"], 4);
    assert_eq!(
        (
            r["delivered"].as_u64(),
            r["spoiled"].as_u64(),
            r["voided"].as_u64(),
            r["outstanding"].as_u64()
        ),
        (Some(1), Some(1), Some(1), Some(1)),
        "{r}"
    );
    assert_eq!(r["balanced"], false);
    let a = d.get("admin", "/v1/mailers/reconciliation").await;
    assert_eq!(a.json.as_array().unwrap().len(), 1, "{}", a.text);
    let a = d.get("operator", "/v1/mailers/reconciliation").await;
    assert_error(&a, StatusCode::FORBIDDEN, "forbidden");

    let a = d.get("cms", "/v1/mailers/runs").await;
    let runs = a.json.as_array().unwrap();
    assert_eq!(runs.len(), 2, "{}", a.text);
    assert_eq!(runs[0]["label"], "reprint-1");
    assert_error(
        &d.get("cms", "/v1/mailers/runs/77").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );

    // The counter's page: part A of the card's split dispatch, audited; nothing for a
    // suspended card.
    let a = d
        .post(
            "cms",
            &format!("/v1/cards/{}/dispatch", serial(card1)),
            json!({"plan": "counter(2)+email"}),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let uri = format!("/v1/cards/{}/counter-page", serial(card1));
    let req = d
        .request("operator", Method::POST, &uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(json!({"plan": "counter(2)+email"}).to_string()))
        .unwrap();
    let res = d.app.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[header::CONTENT_TYPE], "application/pdf");
    assert_eq!(res.headers()[header::CACHE_CONTROL], "no-store");
    let disposition = res.headers()[header::CONTENT_DISPOSITION].to_str().unwrap();
    assert!(
        disposition.starts_with("attachment; filename=\""),
        "{disposition}"
    );
    assert!(!disposition.contains(&serial(card1)), "{disposition}");
    let pdf = res.into_body().collect().await.unwrap().to_bytes();
    assert!(pdf.starts_with(b"%PDF-"));
    let text = pdftotext(&pdf, scratch.path());
    let (pin, puk) = codes_of(card1, SALT);
    assert!(text.contains("PARTE A"), "{text}");
    assert!(
        text.contains(&pin[..2]) && text.contains(&puk[..2]),
        "{text}"
    );
    for code in [&pin, &puk] {
        assert!(
            !text.contains(&code[2..]),
            "the rest of a code is on the page"
        );
    }
    assert!(
        text.contains(&dispatch::mask_serial(&serial(card1))),
        "{text}"
    );
    assert!(!text.contains(&serial(card1)));
    let released = d
        .state
        .audit
        .query(&Query {
            action: Some("card.codes_release".to_owned()),
            limit: 100,
            ..Query::default()
        })
        .unwrap();
    assert_eq!(released.events.len(), 1);
    assert_eq!(released.events[0].subject, serial(card1));

    let a = d
        .post(
            "operator",
            &format!("/v1/cards/{}/suspend", serial(card3)),
            json!({"reason": "lost"}),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let a = d
        .post(
            "operator",
            &format!("/v1/cards/{}/counter-page", serial(card3)),
            json!({}),
        )
        .await;
    assert_error(&a, StatusCode::CONFLICT, "wrong_state");
    assert_eq!(a.json["error"]["state"], "suspended");
    let a = d.post("cms", &uri, json!({})).await;
    assert_error(&a, StatusCode::FORBIDDEN, "forbidden");
    let a = d.post("operator", &uri, json!({"plan": "whole"})).await;
    assert_error(&a, StatusCode::CONFLICT, "refused");
    assert!(a.text.contains("counter(2)+email"), "{}", a.text);
    let a = d
        .post(
            "operator",
            &format!("/v1/cards/{}/counter-page", serial(999)),
            json!({}),
        )
        .await;
    assert_error(&a, StatusCode::NOT_FOUND, "not_found");
    let released = d
        .state
        .audit
        .query(&Query {
            action: Some("card.codes_release".to_owned()),
            limit: 100,
            ..Query::default()
        })
        .unwrap();
    assert_eq!(released.events.len(), 1, "refused pages released nothing");

    // No clear code anywhere on disk: print files are sealed, sled holds ciphertext only.
    let codes = d.all_codes();
    let mut scanned = 0;
    for (path, bytes) in every_file(d.dir.path()) {
        scanned += 1;
        let windows: std::collections::HashSet<&[u8]> = bytes
            .windows(8)
            .filter(|w| w.iter().all(u8::is_ascii_digit))
            .collect();
        for code in &codes {
            assert!(
                !windows.contains(code.as_bytes()),
                "a clear code in {}",
                path.display()
            );
        }
    }
    assert!(scanned > 8, "{scanned} files");
    d.assert_bodies_clean();
}

#[tokio::test]
async fn print_runs_need_a_recipient() {
    let d = Desk::new(false);
    let batch = d.set_up().await;
    let a = d
        .post("cms", "/v1/mailers/runs", json!({"batch": batch}))
        .await;
    assert_error(&a, StatusCode::SERVICE_UNAVAILABLE, "not_configured");
    assert!(a.text.contains("[mailers] recipients"), "{}", a.text);
    assert!(!d.out_dir().exists());
    // The counter page needs no print facility.
    let a = d
        .post(
            "cms",
            &format!("/v1/cards/{}/dispatch", serial(302)),
            json!({"plan": "counter(2)+email"}),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let req = d
        .request(
            "operator",
            Method::POST,
            &format!("/v1/cards/{}/counter-page", serial(302)),
        )
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{}"))
        .unwrap();
    let res = d.app.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    d.assert_bodies_clean();
}

#[tokio::test]
async fn counter_pages_are_rate_limited_per_account() {
    let d = Desk::with(true, std::num::NonZeroU32::new(1).unwrap());
    d.set_up().await;
    // Card 301's split dispatch (on the CMS's own budget): the counter page is its part A.
    let a = d
        .post(
            "cms",
            &format!("/v1/cards/{}/dispatch", serial(301)),
            json!({"plan": "counter(2)+email"}),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let page = |n: u64| {
        d.request(
            "operator",
            Method::POST,
            &format!("/v1/cards/{}/counter-page", serial(n)),
        )
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{}"))
        .unwrap()
    };
    let res = d.app.clone().oneshot(page(301)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let a = d.keep(page(302)).await;
    assert_error(&a, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    d.assert_bodies_clean();
}

#[test]
fn a_bad_recipient_is_named_by_its_index() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("plico.toml");
    let good = age::x25519::Identity::generate().to_public().to_string();
    std::fs::write(
        &cfg,
        format!("[mailers]\nrecipients = [\"{good}\", \"age1notarecipient\"]\n"),
    )
    .unwrap();
    let e = run_fails(
        plico()
            .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--config"])
            .arg(&cfg)
            .current_dir(tmp.path()),
    );
    assert!(e.contains("recipients") && e.contains("item 2"), "{e}");
    assert!(!tmp.path().join("plico-data").exists());
}

#[test]
fn print_run_and_counter_page_with_the_cli_against_serve_dev() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = serve_dev(&data);
    let key = data.join("print-facility-dev.key");
    assert_eq!(mode(&key), 0o600);
    let as_who = |token: &Path| {
        let mut c = plico();
        let token = std::fs::read_to_string(token).unwrap();
        c.env("PLICO_ADDR", &server.url)
            .env("PLICO_TOKEN", token.trim());
        c
    };
    let token = |name: &str| tmp.path().join(format!("{name}.token"));
    for (name, role) in [("man", "manufacturer"), ("cms", "cms"), ("op", "operator")] {
        run_ok(
            as_who(&data.join("admin-token.txt"))
                .args(["accounts", "create", "--name", name, "--role", role])
                .arg("--token-out")
                .arg(token(name)),
        );
    }
    // CNS codes: 5-digit PINs, distinctive 8-digit PUKs.
    let codes: Vec<(String, String, String)> = (301..=304)
        .map(|n| {
            let (pin, puk) = codes_of(n, SALT);
            (serial(n), pin[..5].to_owned(), puk)
        })
        .collect();
    let batch = tmp.path().join("batch.csv");
    let lines: String = codes
        .iter()
        .map(|(s, pin, puk)| format!("{s};{pin};{puk}\n"))
        .collect();
    std::fs::write(&batch, lines).unwrap();
    run_ok(
        as_who(&token("man"))
            .args(["import", "--manufacturer", "ACME"])
            .arg(&batch),
    );
    let registry = tmp.path().join("holders.csv");
    std::fs::write(&registry, registry_csv()).unwrap();
    run_ok(
        as_who(&token("cms"))
            .args(["registry", "import"])
            .arg(&registry),
    );
    for (s, _, _) in &codes[..2] {
        run_ok(as_who(&token("op")).args([
            "cards",
            "activate",
            s,
            "--holder-document",
            "carta_identita:CA1234567",
            "--consent",
            "consenso-9",
        ]));
    }

    let mut outputs = Vec::new();
    let out = run_ok(as_who(&token("cms")).args(["mailers", "run", "--batch", "b000001"]));
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(shown.contains("state:     done"), "{shown}");
    assert!(shown.contains("printed:   2"), "{shown}");
    assert!(shown.contains("skipped:   2 issued"), "{shown}");
    outputs.push(shown);

    // The sealed file opens with the dev key.
    let sealed: Vec<PathBuf> = std::fs::read_dir(data.join("print"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".pdf.age"))
        .collect();
    assert_eq!(sealed.len(), 1);
    let clear = tool("age")
        .args(["-d", "-i"])
        .arg(&key)
        .arg(&sealed[0])
        .output()
        .unwrap();
    assert!(clear.status.success());
    let scratch = tempfile::tempdir().unwrap();
    let text = pdftotext(&clear.stdout, scratch.path());
    assert!(text.contains(&codes[0].2) && text.contains(&codes[1].2));
    let first = text
        .split("Plico n. ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .unwrap()
        .to_owned();

    let outcomes = tmp.path().join("outcomes.csv");
    std::fs::write(&outcomes, format!("{first},delivered\n")).unwrap();
    let out = run_ok(
        as_who(&token("op"))
            .arg("mailers")
            .arg("outcomes")
            .arg(&outcomes),
    );
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(shown.contains("delivered: 1"), "{shown}");
    let out = run_ok(as_who(&token("cms")).args(["mailers", "reconcile", "--batch", "b000001"]));
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    let row = shown.lines().find(|l| l.starts_with("b000001")).unwrap();
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cols,
        ["b000001", "1", "2", "1", "0", "0", "1", "no"],
        "{shown}"
    );
    outputs.push(shown);
    let out = run_ok(as_who(&token("cms")).args(["mailers", "runs"]));
    outputs.push(String::from_utf8_lossy(&out.stdout).into_owned());

    // The counter page: part A of the card's split dispatch, a new 0600 file, never
    // overwritten.
    run_ok(as_who(&token("cms")).args([
        "cards",
        "dispatch",
        &codes[1].0,
        "--plan",
        "counter(2)+email",
    ]));
    let page = tmp.path().join("page.pdf");
    let out = run_ok(
        as_who(&token("op"))
            .args([
                "cards",
                "counter-page",
                &codes[1].0,
                "--plan",
                "counter(2)+email",
                "--out",
            ])
            .arg(&page),
    );
    outputs.push(String::from_utf8_lossy(&out.stdout).into_owned());
    assert_eq!(mode(&page), 0o600);
    let text = pdftotext(&std::fs::read(&page).unwrap(), scratch.path());
    assert!(text.contains(&codes[1].2[..2]), "{text}");
    assert!(!text.contains(&codes[1].2[2..]), "{text}");
    let e = run_fails(
        as_who(&token("op"))
            .args(["cards", "counter-page", &codes[1].0, "--out"])
            .arg(&page),
    );
    assert!(e.contains("refusing to overwrite"), "{e}");
    let e = run_fails(
        as_who(&token("op"))
            .args(["cards", "counter-page", &codes[2].0, "--out"])
            .arg(tmp.path().join("issued.pdf")),
    );
    assert!(e.contains("wrong_state"), "{e}");
    assert!(!tmp.path().join("issued.pdf").exists());

    let (status, stderr) = server.terminate();
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("DEVELOPMENT print facility key"),
        "{stderr}"
    );
    for (_, _, puk) in &codes {
        assert!(!stderr.contains(puk.as_str()), "a code in the server log");
        for o in &outputs {
            assert!(!o.contains(puk.as_str()), "a code in the CLI's output: {o}");
        }
    }
}

/// Holders of the alphabets the registry accepts print (Romanian, Polish, Cyrillic); one whose
/// name the embedded fonts cannot carry is set aside by serial in the run record while the
/// others print, and that card's counter page is a 422 naming the reason, not a 500.
#[tokio::test]
async fn every_alphabet_prints_and_an_unprintable_name_is_set_aside() {
    let d = Desk::new(true);
    let csv = registry_of(&[
        (
            "PPSSTF80A01F839",
            "Ștefan",
            "Popescu",
            "1980-01-01",
            "Strada Mărășești 3, 90100 Palermo",
            301,
        ),
        (
            "WRBLKS92M45F205",
            "Łukasz",
            "Wróbel",
            "1992-08-05",
            "Via Roma 12, 90100 Palermo",
            302,
        ),
        (
            "VNVLGO75D50L219",
            "Ольга",
            "Иванова",
            "1975-04-10",
            "Via Libertà 1, 90100 Palermo",
            303,
        ),
        (
            "WNGXMN60E10F205",
            "小明",
            "王",
            "1960-05-10",
            "Via Manzoni 9, 20121 Milano",
            304,
        ),
    ]);
    let batch = d.set_up_with(csv, 301..=304).await;
    let run = d.print(json!({"batch": batch})).await;
    assert_eq!(run["state"], "done", "{run}");
    assert_eq!(run["printed"], 3, "{run}");
    let aside = run["set_aside"]
        .as_array()
        .unwrap_or_else(|| panic!("{run}"));
    assert_eq!(aside.len(), 1, "{run}");
    assert_eq!(aside[0]["serial"], serial(304), "{run}");
    let reason = aside[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("holder name") && reason.contains("U+"),
        "{reason}"
    );
    assert!(
        !reason.contains('王') && !reason.contains("小明"),
        "{reason}"
    );
    let scratch = tempfile::tempdir().unwrap();
    let mut text = String::new();
    for file in run["files"].as_array().unwrap() {
        let clear = age_decrypt(
            &d.identity,
            &d.out_dir().join(file.as_str().unwrap()),
            scratch.path(),
        );
        text.push_str(&pdftotext(&clear, scratch.path()));
    }
    for name in [
        "Ștefan Popescu",
        "Łukasz Wróbel",
        "Ольга Иванова",
        "Strada Mărășești 3",
    ] {
        assert!(text.contains(name), "{name} missing in\n{text}");
    }

    // Its counter page (part A of a split dispatch) cannot be laid out either: 422, never 500.
    let a = d
        .post(
            "cms",
            &format!("/v1/cards/{}/dispatch", serial(304)),
            json!({"plan": "counter(2)+email"}),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let req = d
        .request(
            "operator",
            Method::POST,
            &format!("/v1/cards/{}/counter-page", serial(304)),
        )
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{}"))
        .unwrap();
    let res = d.app.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["error"]["code"], "unprintable", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("holder name") && message.contains(&serial(304)),
        "{message}"
    );
}
