//! Card lifecycle and the holder registry over HTTP (issue 5), on a real sled store: registry
//! upload then search by codice fiscale and by surname + birth date, activation by a delegate,
//! suspension, a wrong transition answered with the current state, revocation, roles, a bad
//! registry file reported by line without personal data, a registry that contradicts the
//! vault, the problem reports, the status view with `codes_held` after a code import, the
//! expiry sweep, the search rate limit; and the counter workflow of the README with the CLI
//! against `serve --dev`.

use super::batches::serial;
use super::support::{cf, open_with_accounts, serve_dev, sled_state, Staff};
use super::*;
use cards::Date;
use plico::Settings;
use std::collections::BTreeMap;
use std::num::NonZeroU32;
use vault::Query;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn rossi() -> String {
    cf("RSSMRA85T10A562")
}

fn bianchi() -> String {
    cf("BNCLRA90A41F205")
}

fn verdi() -> String {
    cf("VRDGPP70C15H501")
}

const HEADER: &str =
    "codice_fiscale;given_names;surname;birth_date;email;mobile;address;deceased;serial;expiry;replaced_by\n";

/// A registry file: Mario Rossi with card 101; Laura Bianchi with cards 201 and 202.
fn registry_csv() -> String {
    format!(
        "{HEADER}\
         {};Mario;Rossi;1985-12-10;mario.rossi@example.it;+393331234567;Via Roma 1, 00100 Roma;false;{};2030-01-31;\n\
         {};Laura;Bianchi;1990-01-01;laura.bianchi@example.it;+393339876543;Via Po 7, 10100 Torino;false;{};2031-06-30;\n\
         {};Laura;Bianchi;1990-01-01;laura.bianchi@example.it;+393339876543;Via Po 7, 10100 Torino;false;{};2031-06-30;\n",
        rossi(),
        serial(101),
        bianchi(),
        serial(201),
        bianchi(),
        serial(202),
    )
}

/// The personal values of [`registry_csv`] (and of the delegate): what must never appear in
/// an error, a log or a problem report.
fn personal_values() -> Vec<String> {
    vec![
        rossi(),
        bianchi(),
        verdi(),
        "Rossi".into(),
        "Bianchi".into(),
        "mario.rossi@example.it".into(),
        "laura.bianchi@example.it".into(),
        "+393331234567".into(),
        "Via Roma".into(),
        "1985-12-10".into(),
        "YA1234567".into(),
    ]
}

/// An unsealed service over sled, with one account per role (two of support).
struct Counter {
    _dir: tempfile::TempDir,
    state: AppState,
    app: Router,
    tokens: BTreeMap<&'static str, String>,
    ids: BTreeMap<&'static str, String>,
}

impl Counter {
    fn new() -> Counter {
        Self::with(Settings::default())
    }

    fn with(settings: Settings) -> Counter {
        let dir = tempfile::tempdir().unwrap();
        let state = sled_state(dir.path(), &settings);
        let Staff { tokens, ids } = open_with_accounts(
            &state,
            &[
                "manufacturer",
                "cms",
                "operator",
                "support",
                "support2",
                "officer",
                "auditor",
            ],
        );
        let app = app(state.clone());
        Counter {
            _dir: dir,
            state,
            app,
            tokens,
            ids,
        }
    }

    fn auth(&self, who: &str) -> String {
        format!("Bearer {}", self.tokens[who])
    }

    async fn get(&self, who: &str, uri: &str) -> Answer {
        let req = Request::get(uri)
            .header(header::AUTHORIZATION, self.auth(who))
            .body(Body::empty())
            .unwrap();
        send(&self.app, req).await
    }

    async fn post(&self, who: &str, uri: &str, body: Value) -> Answer {
        let req = Request::post(uri)
            .header(header::AUTHORIZATION, self.auth(who))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        send(&self.app, req).await
    }

    async fn upload_registry(&self, who: &str, file: &str) -> Answer {
        let req = Request::post("/v1/registry")
            .header(header::AUTHORIZATION, self.auth(who))
            .header(header::CONTENT_TYPE, "text/csv")
            .body(Body::from(file.to_owned()))
            .unwrap();
        send(&self.app, req).await
    }

    /// Uploads a CNS batch (5-digit PINs, 8-digit PUKs) for these serials.
    async fn import_codes(&self, serials: &[String]) -> (Answer, String) {
        let file: String = serials
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{s};{:05};{:08}\n", 13579 + i, 24681357 + i))
            .collect();
        let req = Request::post("/v1/batches?manufacturer=ACME")
            .header(header::AUTHORIZATION, self.auth("manufacturer"))
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Body::from(file.clone()))
            .unwrap();
        (send(&self.app, req).await, file)
    }

    fn actions(&self, prefix: &str) -> Vec<String> {
        let page = self
            .state
            .audit
            .query(&Query {
                action: Some(prefix.to_owned()),
                limit: 1000,
                ..Query::default()
            })
            .unwrap();
        page.events.into_iter().map(|e| e.action).collect()
    }

    /// The whole audit chain, as exported.
    fn audit_text(&self) -> String {
        let mut out = Vec::new();
        self.state.audit.export(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }
}

fn delegate_activation() -> Value {
    json!({
        "by": "delegate",
        "given_names": "Giuseppe",
        "surname": "Verdi",
        "codice_fiscale": verdi(),
        "document_type": "passaporto",
        "document_number": "YA1234567",
        "delegation_ref": "delega-2026-77",
        "consent_ref": "consenso-2026-0002",
    })
}

fn assert_applied(a: &Answer) {
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["outcome"], "applied", "{}", a.text);
}

fn assert_no_personal_data(text: &str, what: &str) {
    for v in personal_values() {
        assert!(!text.contains(&v), "{what} holds personal data: {text}");
    }
}

// ---------------------------------------------------------------------------------------------
// Registry and search
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn registry_upload_then_search_by_codice_fiscale_and_by_surname_and_birth_date() {
    let c = Counter::new();
    let a = c.upload_registry("cms", &registry_csv()).await;
    assert_applied(&a);
    assert_eq!(a.json["holders_created"], 2, "{}", a.text);
    assert_eq!(a.json["holders_updated"], 0, "{}", a.text);
    assert_eq!(a.json["cards_created"], 3, "{}", a.text);
    assert_eq!(a.json["revoked"], json!([]), "{}", a.text);
    assert_no_personal_data(&a.text, "the registry answer");

    // By codice fiscale, written in lower case with blanks around it.
    let a = c
        .post(
            "operator",
            "/v1/holders/search",
            json!({"codice_fiscale": format!("  {}  ", rossi().to_lowercase())}),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let holders = a.json["holders"].as_array().unwrap();
    assert_eq!(holders.len(), 1, "{}", a.text);
    let h = &holders[0];
    assert_eq!(h["codice_fiscale"], rossi());
    assert_eq!(h["given_names"], "Mario");
    assert_eq!(h["surname"], "Rossi");
    assert_eq!(h["birth_date"], "1985-12-10");
    assert_eq!(h["mobile"], "+393331234567");
    assert_eq!(h["deceased"], false);
    assert_eq!(
        h["cards"],
        json!([{"serial": serial(101), "state": "issued"}])
    );
    assert!(a.json.get("next").is_none(), "{}", a.text);

    // By surname (any case, extra blanks) and birth date, as the support desk.
    let a = c
        .post(
            "support",
            "/v1/holders/search",
            json!({"surname": " bianchi ", "birth_date": "1990-01-01"}),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let holders = a.json["holders"].as_array().unwrap();
    assert_eq!(holders.len(), 1, "{}", a.text);
    assert_eq!(holders[0]["codice_fiscale"], bianchi());
    assert_eq!(holders[0]["cards"].as_array().unwrap().len(), 2);

    // Exact match only: another birth date finds nobody.
    let a = c
        .post(
            "cms",
            "/v1/holders/search",
            json!({"surname": "Bianchi", "birth_date": "1990-01-02"}),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["holders"], json!([]));

    // Bad keys: the field is named, the value is not repeated.
    let mut wrong = rossi();
    wrong.pop();
    wrong.push(if rossi().ends_with('A') { 'B' } else { 'A' });
    let a = c
        .post(
            "operator",
            "/v1/holders/search",
            json!({"codice_fiscale": wrong}),
        )
        .await;
    assert_error(&a, StatusCode::BAD_REQUEST, "bad_request");
    assert!(a.text.contains("codice_fiscale"), "{}", a.text);
    assert!(!a.text.contains(&wrong), "{}", a.text);
    let a = c
        .post(
            "operator",
            "/v1/holders/search",
            json!({"surname": "Rossi", "birth_date": "1985-02-30"}),
        )
        .await;
    assert_error(&a, StatusCode::BAD_REQUEST, "bad_request");
    assert!(
        a.text.contains("birth_date") && !a.text.contains("1985-02-30"),
        "{}",
        a.text
    );
    for body in [
        json!({}),
        json!({"surname": "Rossi"}),
        json!({"codice_fiscale": rossi(), "surname": "Rossi", "birth_date": "1985-12-10"}),
        json!({"codice_fiscale": rossi(), "limit": 51}),
        json!({"codice_fiscale": rossi(), "after": "x"}),
    ] {
        let a = c.post("operator", "/v1/holders/search", body).await;
        assert_error(&a, StatusCode::BAD_REQUEST, "bad_request");
    }

    // Every search is audited, with the key only as an HMAC.
    assert_eq!(c.actions("holder.search").len(), 3);
    assert_eq!(c.actions("registry.import").len(), 1);
    let chain = c.audit_text();
    assert!(!chain.contains(&rossi()) && !chain.contains(&bianchi()));
    assert!(!chain.contains("Rossi") && !chain.contains("Bianchi"));
}

#[tokio::test]
async fn search_answers_are_not_cached_and_are_rate_limited() {
    let c = Counter::with(Settings {
        sensitive_per_minute: NonZeroU32::new(2).unwrap(),
        ..Settings::default()
    });
    assert_applied(&c.upload_registry("cms", &registry_csv()).await);
    let req = || {
        Request::post("/v1/holders/search")
            .header(header::AUTHORIZATION, c.auth("operator"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(json!({"codice_fiscale": rossi()}).to_string()))
            .unwrap()
    };
    let res = c.app.clone().oneshot(req()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[header::CACHE_CONTROL], "no-store");
    assert_eq!(send(&c.app, req()).await.status, StatusCode::OK);
    let a = send(&c.app, req()).await;
    assert_error(&a, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    // The limit is per account.
    let a = c
        .post(
            "support",
            "/v1/holders/search",
            json!({"codice_fiscale": rossi()}),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
}

// ---------------------------------------------------------------------------------------------
// Lifecycle
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn delegate_activation_suspension_wrong_transition_reactivation_and_revocation() {
    let c = Counter::new();
    assert_applied(&c.upload_registry("cms", &registry_csv()).await);
    let card = serial(101);
    let (a, _) = c.import_codes(std::slice::from_ref(&card)).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);

    let a = c
        .post(
            "operator",
            &format!("/v1/cards/{card}/activate"),
            delegate_activation(),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["serial"], card);
    assert_eq!(a.json["state"], "active");
    assert_eq!(a.json["activated_by"], "delegate");
    assert!(a.json["activated_ms"].as_u64().unwrap() > 0);
    assert_eq!(a.json["codes_held"], true);
    assert_eq!(a.json["expiry"], "2030-01-31");
    assert_no_personal_data(&a.text, "the activation answer");

    // Activating again: the card is active.
    let a = c
        .post(
            "cms",
            &format!("/v1/cards/{card}/activate"),
            delegate_activation(),
        )
        .await;
    assert_error(&a, StatusCode::CONFLICT, "wrong_state");
    assert_eq!(a.json["error"]["state"], "active", "{}", a.text);

    // Support suspends on the phone; a second suspension is refused with the state.
    let a = c
        .post(
            "support",
            &format!("/v1/cards/{card}/suspend"),
            json!({"reason": "lost"}),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["state"], "suspended");
    assert_eq!(a.json["reason"], "lost");
    let before = c.get("operator", &format!("/v1/cards/{card}")).await;
    let a = c
        .post(
            "operator",
            &format!("/v1/cards/{card}/suspend"),
            json!({"reason": "stolen"}),
        )
        .await;
    assert_error(&a, StatusCode::CONFLICT, "wrong_state");
    assert_eq!(a.json["error"]["state"], "suspended", "{}", a.text);
    assert!(
        a.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("suspended"),
        "{}",
        a.text
    );
    let after = c.get("operator", &format!("/v1/cards/{card}")).await;
    assert_eq!(before.json, after.json, "a refused change changed the card");

    // A reason outside the list.
    let a = c
        .post(
            "operator",
            &format!("/v1/cards/{card}/revoke"),
            json!({"reason": "bored"}),
        )
        .await;
    assert_error(&a, StatusCode::BAD_REQUEST, "bad_request");
    assert!(a.text.contains("code_compromised"), "{}", a.text);

    let a = c
        .post(
            "operator",
            &format!("/v1/cards/{card}/reactivate"),
            json!({}),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["state"], "active");

    // Revocation is terminal and deletes the codes.
    let a = c
        .post(
            "cms",
            &format!("/v1/cards/{card}/revoke"),
            json!({"reason": "stolen"}),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["state"], "revoked");
    assert_eq!(a.json["reason"], "stolen");
    assert_eq!(a.json["codes_held"], false);
    for (path, body) in [
        ("reactivate", json!({})),
        ("suspend", json!({"reason": "lost"})),
        ("revoke", json!({"reason": "lost"})),
    ] {
        let a = c
            .post("operator", &format!("/v1/cards/{card}/{path}"), body)
            .await;
        assert_error(&a, StatusCode::CONFLICT, "wrong_state");
        assert_eq!(a.json["error"]["state"], "revoked", "{}", a.text);
    }

    // Unknown cards and malformed serials.
    let a = c
        .get("operator", &format!("/v1/cards/{}", serial(999)))
        .await;
    assert_error(&a, StatusCode::NOT_FOUND, "not_found");
    let a = c.get("operator", "/v1/cards/80..38").await;
    assert_error(&a, StatusCode::BAD_REQUEST, "bad_request");

    // A bad activation: the field is named, nothing quoted.
    let mut bad = delegate_activation();
    bad["codice_fiscale"] = json!("RSSMRA85T10A562Z");
    let a = c
        .post(
            "operator",
            &format!("/v1/cards/{}/activate", serial(201)),
            bad,
        )
        .await;
    assert_error(&a, StatusCode::BAD_REQUEST, "bad_request");
    assert!(
        a.text.contains("codice_fiscale") && !a.text.contains("RSSMRA85T10A562Z"),
        "{}",
        a.text
    );

    // The history of the card, in order.
    let history = c.get("support", &format!("/v1/cards/{card}/history")).await;
    assert_eq!(history.status, StatusCode::OK, "{}", history.text);
    let actions: Vec<&str> = history.json["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .filter(|a| a.starts_with("card.") && *a != "card.history")
        .collect();
    assert_eq!(
        actions,
        [
            "card.activate",
            "card.suspend",
            "card.reactivate",
            "card.revoke"
        ]
    );
    let chain = c.audit_text();
    assert!(!chain.contains(&verdi()) && !chain.contains("YA1234567") && !chain.contains("Verdi"));
}

#[tokio::test]
async fn the_status_view_shows_codes_held_after_a_code_import() {
    let c = Counter::new();
    assert_applied(&c.upload_registry("cms", &registry_csv()).await);
    let card = serial(201);
    let a = c.get("cms", &format!("/v1/cards/{card}")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["state"], "issued");
    assert_eq!(a.json["codes_held"], false);
    assert_eq!(a.json["expiry"], "2031-06-30");
    assert!(a.json["holder"].as_str().unwrap().starts_with('h'));
    assert_eq!(a.json["delivery"], json!([]));

    let (up, file) = c.import_codes(&[card.clone(), serial(202)]).await;
    assert_eq!(up.status, StatusCode::CREATED, "{}", up.text);
    for who in ["cms", "operator", "support"] {
        let a = c.get(who, &format!("/v1/cards/{card}")).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        assert_eq!(a.json["codes_held"], true, "{}", a.text);
        for line in file.lines() {
            let mut fields = line.split(';').skip(1);
            let (pin, puk) = (fields.next().unwrap(), fields.next().unwrap());
            assert!(!a.text.contains(puk) && !a.text.contains(&format!("\"{pin}\"")));
        }
    }
}

#[tokio::test]
async fn the_expiry_sweep_revokes_cards_past_their_expiry() {
    let c = Counter::new();
    assert_applied(&c.upload_registry("cms", &registry_csv()).await);
    // Nothing has expired today.
    assert_eq!(
        plico::sweep_once(&c.state, Date::today_utc())
            .await
            .unwrap(),
        0
    );
    // In 2031-01-01 card 101 (2030-01-31) has; 201 and 202 (2031-06-30) have not.
    let later = Date::parse("2031-01-01").unwrap();
    assert_eq!(plico::sweep_once(&c.state, later).await.unwrap(), 1);
    let a = c.get("cms", &format!("/v1/cards/{}", serial(101))).await;
    assert_eq!(a.json["state"], "revoked", "{}", a.text);
    assert_eq!(a.json["reason"], "expired", "{}", a.text);
    let a = c.get("cms", &format!("/v1/cards/{}", serial(201))).await;
    assert_eq!(a.json["state"], "issued", "{}", a.text);
    // The background sweeper does the same at start, once unsealed.
    let sweeper = tokio::spawn(plico::expiry_sweeps(
        c.state.clone(),
        Duration::from_millis(10),
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    sweeper.abort();
    assert_eq!(c.actions("card.revoke").len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Roles
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn wrong_roles_get_403_and_no_token_401() {
    let c = Counter::new();
    assert_applied(&c.upload_registry("cms", &registry_csv()).await);
    let card = serial(101);
    let search = json!({"codice_fiscale": rossi()});
    let reason = json!({"reason": "lost"});
    let report = json!({"title": "printer", "text": "jammed"});
    for (who, method, uri, body) in [
        ("manufacturer", "POST", "/v1/registry".to_owned(), None),
        ("operator", "POST", "/v1/registry".to_owned(), None),
        ("support", "POST", "/v1/registry".to_owned(), None),
        (
            "auditor",
            "POST",
            "/v1/holders/search".to_owned(),
            Some(search.clone()),
        ),
        (
            "admin",
            "POST",
            "/v1/holders/search".to_owned(),
            Some(search.clone()),
        ),
        (
            "manufacturer",
            "POST",
            "/v1/holders/search".to_owned(),
            Some(search.clone()),
        ),
        ("auditor", "GET", format!("/v1/cards/{card}"), None),
        ("manufacturer", "GET", format!("/v1/cards/{card}"), None),
        (
            "support",
            "POST",
            format!("/v1/cards/{card}/activate"),
            Some(delegate_activation()),
        ),
        (
            "officer",
            "POST",
            format!("/v1/cards/{card}/suspend"),
            Some(reason.clone()),
        ),
        (
            "support",
            "POST",
            format!("/v1/cards/{card}/reactivate"),
            Some(json!({})),
        ),
        (
            "support",
            "POST",
            format!("/v1/cards/{card}/revoke"),
            Some(reason.clone()),
        ),
        (
            "support",
            "POST",
            "/v1/reports".to_owned(),
            Some(report.clone()),
        ),
        (
            "cms",
            "POST",
            "/v1/reports".to_owned(),
            Some(report.clone()),
        ),
        ("operator", "GET", "/v1/reports".to_owned(), None),
        (
            "operator",
            "POST",
            "/v1/reports/1/comment".to_owned(),
            Some(json!({"text": "x"})),
        ),
        (
            "cms",
            "POST",
            "/v1/reports/1/close".to_owned(),
            Some(json!({"text": "x"})),
        ),
    ] {
        let a = match (method, body) {
            ("GET", _) => c.get(who, &uri).await,
            (_, Some(body)) => c.post(who, &uri, body).await,
            (_, None) => c.upload_registry(who, &registry_csv()).await,
        };
        assert_error(&a, StatusCode::FORBIDDEN, "forbidden");
        assert!(
            !a.text.contains(&rossi()),
            "{who} {method} {uri}: {}",
            a.text
        );
        let a = send(
            &c.app,
            Request::builder()
                .method(method)
                .uri(&uri)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_error(&a, StatusCode::UNAUTHORIZED, "unauthorized");
    }
    // Nothing changed: the card is still issued, the registry was applied once.
    let a = c.get("operator", &format!("/v1/cards/{card}")).await;
    assert_eq!(a.json["state"], "issued");
    assert_eq!(c.actions("registry.import").len(), 1);
    assert_eq!(c.actions("auth.forbidden").len(), 17);
}

// ---------------------------------------------------------------------------------------------
// Bad registry files
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_bad_registry_file_is_422_with_line_numbers_and_no_personal_data() {
    let c = Counter::new();
    let mut wrong_check = rossi();
    wrong_check.pop();
    wrong_check.push(if rossi().ends_with('A') { 'B' } else { 'A' });
    let file = format!(
        "{HEADER}\
         {wrong_check};Mario;Rossi;1985-12-10;mario.rossi@example.it;+393331234567;Via Roma 1;false;{};2030-01-31;\n\
         {};Laura;Bianchi;1990-02-30;laura.bianchi@example.it;+393339876543;Via Po 7;false;{};2031-06-30;\n\
         {};Giuseppe;Verdi;1970-03-15;giuseppe.verdi(at)example.it;+393330000000;;false;{};2031-06-30;\n",
        serial(101),
        bianchi(),
        serial(201),
        verdi(),
        serial(301),
    );
    let a = c.upload_registry("cms", &file).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.text);
    assert_eq!(a.json["outcome"], "rejected");
    assert_eq!(a.json["error"]["code"], "rejected");
    assert_eq!(a.json["problems_total"], 3, "{}", a.text);
    let problems: Vec<(u64, String)> = a.json["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            assert!(p["message"].as_str().is_some_and(|m| !m.is_empty()));
            (
                p["line"].as_u64().unwrap(),
                p["field"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        problems,
        [
            (2, "codice_fiscale".to_owned()),
            (3, "birth_date".to_owned()),
            (4, "email".to_owned())
        ]
    );
    assert_no_personal_data(&a.text, "the rejection");
    for v in [
        wrong_check.as_str(),
        "1990-02-30",
        "giuseppe.verdi(at)example.it",
    ] {
        assert!(!a.text.contains(v), "the rejection quotes {v}: {}", a.text);
    }
    // Nothing was applied, and the refusal is audited without personal data.
    let a = c
        .post(
            "operator",
            "/v1/holders/search",
            json!({"codice_fiscale": bianchi()}),
        )
        .await;
    assert_eq!(a.json["holders"], json!([]), "{}", a.text);
    assert_error(
        &c.get("cms", &format!("/v1/cards/{}", serial(201))).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_eq!(c.actions("registry.import").len(), 1);
    assert_no_personal_data(&c.audit_text(), "the audit chain");

    // Not a registry file at all; an empty one; a multipart form.
    let a = c.upload_registry("cms", "\u{0}\u{1}binary\u{0}\n").await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.text);
    let a = c.upload_registry("cms", "").await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.text);
    let req = Request::post("/v1/registry")
        .header(header::AUTHORIZATION, c.auth("cms"))
        .header(header::CONTENT_TYPE, "multipart/form-data; boundary=x")
        .body(Body::from(registry_csv()))
        .unwrap();
    assert_error(
        &send(&c.app, req).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
}

#[tokio::test]
async fn a_registry_file_over_the_limit_is_413() {
    let c = Counter::with(Settings {
        registry_max_upload_bytes: 256,
        ..Settings::default()
    });
    let a = c.upload_registry("cms", &registry_csv()).await;
    assert_error(&a, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
    assert!(a.text.contains("[registry] max_upload_bytes"), "{}", a.text);
    // Without a content-length: cut off while streaming.
    let bytes = registry_csv().into_bytes();
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        bytes.chunks(64).map(|c| Ok(c.to_vec())).collect();
    let req = Request::post("/v1/registry")
        .header(header::AUTHORIZATION, c.auth("cms"))
        .body(Body::from_stream(futures_util::stream::iter(chunks)))
        .unwrap();
    assert_error(
        &send(&c.app, req).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
    );
    assert!(c.actions("registry.import").is_empty());
}

#[tokio::test]
async fn a_registry_file_that_contradicts_the_vault_is_409_and_applies_nothing() {
    let c = Counter::new();
    assert_applied(&c.upload_registry("cms", &registry_csv()).await);
    // Verdi claims card 101, which is Rossi's; his other card would be new.
    let file = format!(
        "{HEADER}\
         {};Giuseppe;Verdi;1970-03-15;;;;false;{};2031-06-30;\n\
         {};Giuseppe;Verdi;1970-03-15;;;;false;{};2031-06-30;\n",
        verdi(),
        serial(301),
        verdi(),
        serial(101),
    );
    let a = c.upload_registry("cms", &file).await;
    assert_error(&a, StatusCode::CONFLICT, "registry_conflict");
    assert!(a.text.contains("line 3"), "{}", a.text);
    assert_no_personal_data(&a.text, "the conflict");
    let a = c.get("cms", &format!("/v1/cards/{}", serial(301))).await;
    assert_error(&a, StatusCode::NOT_FOUND, "not_found");

    // JSON lines work too: a replacement card revokes the old one.
    let line = json!({
        "codice_fiscale": rossi(),
        "given_names": "Mario",
        "surname": "Rossi",
        "birth_date": "1985-12-10",
        "cards": [
            {"serial": serial(101), "expiry": "2030-01-31", "replaced_by": serial(102)},
            {"serial": serial(102), "expiry": "2035-01-31"}
        ]
    });
    let a = c.upload_registry("cms", &format!("{line}\n")).await;
    assert_applied(&a);
    assert_eq!(a.json["holders_updated"], 1, "{}", a.text);
    assert_eq!(
        a.json["revoked"],
        json!([{"serial": serial(101), "reason": "replaced"}])
    );
}

// ---------------------------------------------------------------------------------------------
// Problem reports
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn problem_reports_are_opened_by_operators_and_worked_by_support() {
    let c = Counter::new();
    assert_applied(&c.upload_registry("cms", &registry_csv()).await);
    let a = c
        .post(
            "operator",
            "/v1/reports",
            json!({"card": serial(101), "title": "Lettore guasto", "text": "The card reader does not see the chip."}),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    assert_eq!(a.json["id"], 1);
    assert_eq!(a.json["state"], "open");
    assert_eq!(a.json["card"], serial(101));
    assert_eq!(a.json["opened_by"], c.ids["operator"]);
    let a = c
        .post(
            "operator",
            "/v1/reports",
            json!({"title": "Stampante", "text": "Printer out of toner."}),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    assert_eq!(a.json["card"], Value::Null);

    // Bad reports: empty title, unknown card.
    let a = c
        .post(
            "operator",
            "/v1/reports",
            json!({"title": " ", "text": "x"}),
        )
        .await;
    assert_error(&a, StatusCode::BAD_REQUEST, "bad_request");
    let a = c
        .post(
            "operator",
            "/v1/reports",
            json!({"card": serial(999), "title": "t", "text": "x"}),
        )
        .await;
    assert_error(&a, StatusCode::NOT_FOUND, "not_found");

    let a = c.get("support", "/v1/reports").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let reports = a.json["reports"].as_array().unwrap();
    assert_eq!(reports.len(), 2);
    assert_eq!(reports[0]["title"], "Lettore guasto");
    assert_eq!(reports[0]["text"], "The card reader does not see the chip.");
    let a = c.get("support", "/v1/reports?limit=1").await;
    assert_eq!(a.json["reports"].as_array().unwrap().len(), 1);
    assert_eq!(a.json["next"], 1);
    let a = c.get("support", "/v1/reports?after=1").await;
    assert_eq!(a.json["reports"][0]["id"], 2, "{}", a.text);

    let a = c
        .post(
            "support",
            "/v1/reports/1/comment",
            json!({"text": "Tried another reader."}),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["comments"][0]["text"], "Tried another reader.");
    assert_eq!(a.json["comments"][0]["by"], c.ids["support"]);

    // Only an enabled support account may be the assignee.
    for who in [c.ids["operator"].clone(), "nobody".to_owned()] {
        let a = c
            .post("support", "/v1/reports/1/assign", json!({"assignee": who}))
            .await;
        assert_error(&a, StatusCode::BAD_REQUEST, "bad_request");
    }
    let a = c
        .post(
            "support",
            "/v1/reports/1/assign",
            json!({"assignee": c.ids["support2"]}),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["state"], "assigned");
    assert_eq!(a.json["assignee"], c.ids["support2"]);

    let a = c
        .post(
            "support",
            "/v1/reports/1/close",
            json!({"text": "Reader replaced."}),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["state"], "closed");
    assert!(a.json["closed_ms"].as_u64().is_some());
    let a = c
        .post(
            "support",
            "/v1/reports/1/comment",
            json!({"text": "Again?"}),
        )
        .await;
    assert_error(&a, StatusCode::CONFLICT, "wrong_state");
    assert_eq!(a.json["error"]["state"], "closed");

    let a = c.get("support", "/v1/reports").await;
    let ids: Vec<u64> = a.json["reports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [2]);
    let a = c.get("support", "/v1/reports?closed=true").await;
    assert_eq!(a.json["reports"].as_array().unwrap().len(), 2);

    for (uri, body) in [
        ("/v1/reports/9/comment", json!({"text": "x"})),
        ("/v1/reports/x/comment", json!({"text": "x"})),
    ] {
        let a = c.post("support", uri, body).await;
        assert!(
            a.status == StatusCode::NOT_FOUND || a.status == StatusCode::BAD_REQUEST,
            "{}",
            a.text
        );
    }
    let a = c.get("support", "/v1/reports?limit=0").await;
    assert_error(&a, StatusCode::BAD_REQUEST, "bad_request");

    let mut actions = c.actions("report.");
    actions.sort();
    actions.dedup();
    assert_eq!(
        actions,
        [
            "report.assign",
            "report.close",
            "report.comment",
            "report.list",
            "report.open"
        ]
    );
    // Report texts are sealed in the store: the audit chain has none.
    let chain = c.audit_text();
    assert!(!chain.contains("Lettore guasto") && !chain.contains("Reader replaced"));
}

// ---------------------------------------------------------------------------------------------
// The counter workflow with the CLI
// ---------------------------------------------------------------------------------------------

#[test]
fn the_counter_workflow_with_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = serve_dev(&data);
    let as_who = |token: &Path| {
        let mut c = plico();
        let token = std::fs::read_to_string(token).unwrap();
        c.env("PLICO_ADDR", &server.url)
            .env("PLICO_TOKEN", token.trim());
        c
    };
    let admin = data.join("admin-token.txt");
    let token = |name: &str| tmp.path().join(format!("{name}.token"));
    for (name, role) in [
        ("man", "manufacturer"),
        ("cms", "cms"),
        ("op", "operator"),
        ("sup", "support"),
    ] {
        run_ok(
            as_who(&admin)
                .args(["accounts", "create", "--name", name, "--role", role])
                .arg("--token-out")
                .arg(token(name)),
        );
    }

    let card = serial(101);
    let batch = tmp.path().join("batch.csv");
    std::fs::write(&batch, format!("{card};13579;24681357\n")).unwrap();
    run_ok(
        as_who(&token("man"))
            .args(["import", "--manufacturer", "ACME"])
            .arg(&batch),
    );

    let registry = tmp.path().join("holders.csv");
    std::fs::write(&registry, registry_csv()).unwrap();
    let out = run_ok(
        as_who(&token("cms"))
            .args(["registry", "import"])
            .arg(&registry),
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        stdout.contains("registry applied: 2 holder(s) created, 0 updated, 3 card(s) created"),
        "{stdout}"
    );

    // A rejected file: exit 1, the problems by line.
    let bad = tmp.path().join("bad.csv");
    std::fs::write(
        &bad,
        format!(
            "{HEADER}{};Mario;Rossi;1985-13-10;;;;false;{};2030-01-31;\n",
            rossi(),
            serial(101)
        ),
    )
    .unwrap();
    let out = as_who(&token("cms"))
        .args(["registry", "import"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(stdout.contains("line 2, birth_date"), "{stdout}");
    assert_no_personal_data(&stdout, "the CLI's rejection");

    let out = run_ok(
        as_who(&token("op"))
            .args(["holders", "search", "--cf"])
            .arg(rossi()),
    );
    let found = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        found.contains("Mario Rossi") && found.contains(&format!("card {card}: issued")),
        "{found}"
    );
    let out = run_ok(as_who(&token("op")).args([
        "holders",
        "search",
        "--surname",
        "Bianchi",
        "--birth-date",
        "1990-01-01",
        "--json",
    ]));
    let page: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(page["holders"][0]["codice_fiscale"], bianchi());

    let out = run_ok(
        as_who(&token("op"))
            .args(["cards", "activate", &card, "--delegate-cf"])
            .arg(verdi())
            .args([
                "--delegate-given-names",
                "Giuseppe",
                "--delegate-surname",
                "Verdi",
                "--delegate-document",
                "passaporto:YA1234567",
                "--delegation",
                "delega-2026-77",
                "--consent",
                "consenso-2026-0002",
            ]),
    );
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(shown.contains("state:        active"), "{shown}");
    assert!(shown.contains("activated:    by the delegate"), "{shown}");
    let out = run_ok(as_who(&token("sup")).args(["cards", "show", &card]));
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(shown.contains("codes held:   yes"), "{shown}");

    run_ok(as_who(&token("sup")).args(["cards", "suspend", &card, "--reason", "lost"]));
    let out = as_who(&token("op"))
        .args(["cards", "suspend", &card, "--reason", "lost"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is suspended") && stderr.contains("wrong_state, HTTP 409"),
        "{stderr}"
    );
    run_ok(as_who(&token("op")).args(["cards", "reactivate", &card]));
    let out = run_ok(
        as_who(&token("cms")).args(["cards", "revoke", &card, "--reason", "stolen", "--json"]),
    );
    let revoked: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(revoked["state"], "revoked");
    assert_eq!(revoked["codes_held"], false);

    let out = run_ok(as_who(&token("op")).args([
        "reports", "open", "--card", &card, "--title", "Lettore", "--text", "No chip",
    ]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("report 1: open"));
    run_ok(as_who(&token("sup")).args(["reports", "comment", "1", "--text", "Looking"]));
    let out = run_ok(as_who(&token("sup")).args(["reports", "list"]));
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        listed.contains("report 1: open") && listed.contains("Looking"),
        "{listed}"
    );
    run_ok(as_who(&token("sup")).args(["reports", "close", "1", "--text", "Fixed"]));
    let out = run_ok(as_who(&token("sup")).args(["reports", "list"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no report"));

    let (status, stderr) = server.terminate();
    assert!(status.success(), "{stderr}");
    assert_no_personal_data(&stderr, "the server log");
    assert!(!stderr.contains("24681357"), "a code in the server log");
}
