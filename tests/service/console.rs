//! The browser console through `app(state).oneshot(..)`, as a browser would use it (a cookie
//! jar, forms posted as `application/x-www-form-urlencoded`): login and sessions, the CSRF
//! tokens, the headers, the lockout, the forced password change, the split between the
//! console's session and the API's bearer tokens, escaping, and the counter's actions. The
//! same flows in a real browser are in `service/console_browser.rs`.

use super::batches::{codes_of, serial};
use super::support::{
    assert_refusal, audit_events, cf, cie_state_timed, codes_file, open_with_accounts, Client,
    Staff,
};
use super::*;
use plico::console::ConsoleSettings;
use std::collections::BTreeMap;
use vault::Actor;

pub(super) const PASSWORD: &str = "una password lunga 1";
pub(super) const INITIAL: &str = "iniziale provvisoria";
const SALT: u64 = 0x636f_6e73;
pub(super) const REGISTRY_HEADER: &str = "codice_fiscale;given_names;surname;birth_date;email;mobile;address;deceased;serial;expiry;replaced_by\n";
/// A holder address that is markup: it must show as text.
pub(super) const HOSTILE: &str = "<script>alert(1)</script> Via Roma 1";

/// An answer of the console, with its headers.
pub(super) struct Page {
    pub(super) status: StatusCode,
    pub(super) headers: axum::http::HeaderMap,
    pub(super) text: String,
    /// The body as it came (a PDF).
    pub(super) bytes: Vec<u8>,
}

impl Page {
    fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The value of the hidden field `csrf` of the page's first form.
    fn csrf(&self) -> String {
        let at = self
            .text
            .find("name=\"csrf\" value=\"")
            .expect("a csrf field")
            + 19;
        self.text[at..].split('"').next().unwrap().to_owned()
    }
}

/// A browser without a socket: the console's router and a cookie jar.
pub(super) struct Browser {
    app: Router,
    jar: BTreeMap<String, String>,
}

fn form(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Browser {
    pub(super) fn new(state: &AppState) -> Browser {
        Browser {
            app: app(state.clone()),
            jar: BTreeMap::new(),
        }
    }

    async fn send(&mut self, req: axum::http::request::Builder, body: Body) -> Page {
        let cookies: Vec<String> = self.jar.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let req = if cookies.is_empty() {
            req
        } else {
            req.header(header::COOKIE, cookies.join("; "))
        };
        let res = self
            .app
            .clone()
            .oneshot(req.body(body).unwrap())
            .await
            .unwrap();
        for c in res.headers().get_all(header::SET_COOKIE) {
            let c = c.to_str().unwrap();
            let (kv, attrs) = c.split_once(';').unwrap_or((c, ""));
            let (k, v) = kv.split_once('=').unwrap();
            if attrs.contains("Max-Age=0") {
                self.jar.remove(k);
            } else {
                self.jar.insert(k.to_owned(), v.to_owned());
            }
        }
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        Page {
            status,
            headers,
            text: String::from_utf8_lossy(&bytes).into_owned(),
            bytes: bytes.to_vec(),
        }
    }

    pub(super) async fn get(&mut self, uri: &str) -> Page {
        self.send(Request::get(uri), Body::empty()).await
    }

    pub(super) async fn post(&mut self, uri: &str, fields: &[(&str, &str)]) -> Page {
        let req =
            Request::post(uri).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        self.send(req, Body::from(form(fields))).await
    }

    /// Logs in as `login` with `password`: the login page's answer to the POST.
    pub(super) async fn login(&mut self, login: &str, password: &str) -> Page {
        let page = self.get("/login").await;
        let csrf = page.csrf();
        self.post(
            "/login",
            &[("login", login), ("password", password), ("csrf", &csrf)],
        )
        .await
    }

    /// The CSRF token of the session (from the home page).
    pub(super) async fn csrf(&mut self) -> String {
        self.get("/").await.csrf()
    }
}

/// A state with an operator (password [`INITIAL`], to be changed) and a support account
/// (password [`PASSWORD`]), holder cards 701 (an address that is markup) and 702 issued
/// with codes.
pub(super) fn counter_state(dir: &Path, settings: ConsoleSettings) -> (AppState, Staff, Client) {
    counter_state_timed(dir, settings, vault::system_clock())
}

/// [`counter_state`] timed by `clock` (sessions, audit events: everything wall-clock).
fn counter_state_timed(
    dir: &Path,
    settings: ConsoleSettings,
    clock: Arc<dyn vault::Clock>,
) -> (AppState, Staff, Client) {
    let state = cie_state_timed(
        &dir.join("data"),
        plico::DEFAULT_SENSITIVE_PER_MINUTE,
        clock,
    )
    .with_console(settings)
    .unwrap();
    let staff = open_with_accounts(&state, &["operator", "support", "cms", "manufacturer"]);
    let admin = state.accounts.get(&staff.ids["admin"]).unwrap().unwrap();
    let by = Actor::account(&admin, "test");
    state
        .accounts
        .set_password(&staff.ids["operator"], &SecretString::from(INITIAL), &by)
        .unwrap();
    let support = state.accounts.get(&staff.ids["support"]).unwrap().unwrap();
    state
        .accounts
        .set_password(
            &staff.ids["support"],
            &SecretString::from(PASSWORD),
            &Actor::account(&support, "test"),
        )
        .unwrap();
    let client = Client::new(&state, staff.tokens.clone());
    (state, staff, client)
}

/// Imports the registry (cards 701, 702) and their codes.
pub(super) async fn registry(client: &Client) {
    let csv = format!(
        "{REGISTRY_HEADER}{};Nicolò;D'Angelo;1980-01-01;n@example.it;+393331112201;{HOSTILE};false;{};2032-12-31;\n\
         {};Zoe;Milli;1992-08-05;z@example.it;+393331112202;Via Po 2, Torino;false;{};2032-12-31;\n",
        cf("DNGNCL80A01F839"),
        serial(701),
        cf("MLLZOE92M45F205"),
        serial(702),
    );
    let a = client
        .post_raw("cms", "/v1/registry", "text/csv", csv)
        .await;
    assert_eq!(a.json["outcome"], "applied", "{}", a.text);
    let a = client
        .post_raw(
            "manufacturer",
            "/v1/batches?manufacturer=ACME",
            "text/plain",
            codes_file(701..=702, SALT),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
}

/// Every audit event as (action, subject, reason).
fn actions(state: &AppState) -> Vec<(String, String, String)> {
    audit_events(state, None)
        .into_iter()
        .map(|e| {
            (
                e.action,
                e.subject,
                e.details.get("reason").cloned().unwrap_or_default(),
            )
        })
        .collect()
}

#[tokio::test]
async fn login_forced_password_change_logout_and_the_audit_events() {
    let dir = tempfile::tempdir().unwrap();
    let (state, staff, _) = counter_state(dir.path(), ConsoleSettings::default());
    let op = staff.ids["operator"].clone();
    let mut b = Browser::new(&state);

    // Without a session every page leads to the login page.
    let page = b.get("/").await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.location(), "/login");
    let page = b.get("/login").await;
    assert_eq!(page.status, StatusCode::OK);
    for (h, v) in [
        (
            "content-security-policy",
            "default-src 'self'; frame-ancestors 'none'",
        ),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
    ] {
        let got = page.headers.get(h).unwrap().to_str().unwrap();
        assert!(got.starts_with(v), "{h}: {got}");
    }
    assert!(!page.text.contains("<script"), "a script in the page");
    assert!(page.text.contains("Accesso"), "Italian by default");

    // A wrong password: refused, no session.
    let page = b.login("operator", "not the password!").await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    assert!(!b.jar.contains_key("plico_session"));
    // A login form without its token: refused before any password check.
    let page = b
        .post("/login", &[("login", "operator"), ("password", INITIAL)])
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert!(!b.jar.contains_key("plico_session"));

    // The initial password logs in, to the password page only.
    let page = b.login("operator", INITIAL).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.text);
    assert_eq!(page.location(), "/password");
    let cookie = page
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("plico_session="))
        .unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let sid = b.jar["plico_session"].clone();
    assert_eq!(sid.len(), 64);
    let page = b.get("/").await;
    assert_eq!(page.location(), "/password");
    let page = b.get("/password").await;
    assert!(page.text.contains("id=\"must-change\""));
    let csrf = page.csrf();
    // A wrong current password: the page says so (by the refusal's variant), nothing changes.
    let page = b
        .post(
            "/password",
            &[
                ("current", "not the password"),
                ("new", PASSWORD),
                ("repeat", PASSWORD),
                ("csrf", &csrf),
            ],
        )
        .await;
    assert!(
        page.text.contains("La password attuale non è corretta"),
        "{}",
        page.text
    );
    let page = b
        .post(
            "/password",
            &[
                ("current", INITIAL),
                ("new", PASSWORD),
                ("repeat", PASSWORD),
                ("csrf", &csrf),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    let page = b.get("/").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.text.contains(&op) && page.text.contains("operatore di sportello"));

    // English by the switch.
    b.get("/lang/en").await;
    assert!(b.get("/").await.text.contains("counter operator"));

    // The session cookie does not open the API; a bearer token does not open the console.
    let req = Request::get(format!("/v1/cards/{}", serial(701)))
        .header(header::COOKIE, format!("plico_session={sid}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        send(&app(state.clone()), req).await.status,
        StatusCode::UNAUTHORIZED
    );
    let req = Request::get("/")
        .header(
            header::AUTHORIZATION,
            format!("Bearer {}", staff.tokens["operator"]),
        )
        .body(Body::empty())
        .unwrap();
    let res = app(state.clone()).oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);

    // Logout without the token changes nothing; with it the session is gone server-side.
    let page = b.post("/logout", &[]).await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert_eq!(b.get("/").await.status, StatusCode::OK);
    let csrf = b.csrf().await;
    let page = b.post("/logout", &[("csrf", &csrf)]).await;
    assert_eq!(page.location(), "/login");
    let req = Request::get("/")
        .header(header::COOKIE, format!("plico_session={sid}"))
        .body(Body::empty())
        .unwrap();
    let res = app(state.clone()).oneshot(req).await.unwrap();
    assert_eq!(res.headers()[header::LOCATION], "/login?expired=1");

    let events = actions(&state);
    let has = |action: &str, reason: &str| {
        events
            .iter()
            .any(|(a, s, r)| a == action && s == &op && (reason.is_empty() || r == reason))
    };
    assert!(has("auth.login_failed", "wrong_password"), "{events:?}");
    assert!(has("auth.login", ""));
    assert!(has("auth.password_change", ""));
    assert!(has("auth.logout", ""));
    let all = format!(
        "{:?}",
        state
            .audit
            .query(&vault::Query {
                limit: 1000,
                ..Default::default()
            })
            .unwrap()
            .events
    );
    for secret in [PASSWORD, INITIAL, "not the password!", sid.as_str()] {
        assert!(!all.contains(secret), "a secret in the audit chain");
    }
}

#[tokio::test]
async fn five_wrong_passwords_lock_the_account_and_an_idle_session_ends() {
    let dir = tempfile::tempdir().unwrap();
    // The default idle limit (15 minutes), on a clock the test moves instead of waiting.
    let clock = Arc::new(vault::ManualClock::starting_now());
    let settings = ConsoleSettings::default();
    let (state, staff, _) = counter_state_timed(dir.path(), settings, clock.clone());
    let mut b = Browser::new(&state);
    for _ in 0..5 {
        let page = b.login("support", "wrong password!!").await;
        assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    }
    // Locked: the right password is refused too, with the same page.
    let page = b.login("support", PASSWORD).await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    assert!(!b.jar.contains_key("plico_session"));
    let events = actions(&state);
    assert!(events
        .iter()
        .any(|(a, s, r)| a == "auth.login_failed" && s == &staff.ids["support"] && r == "locked"));

    // Another account is not locked; its session ends when idle.
    state.console.guard.clear(&staff.ids["support"]);
    let page = b.login("support", PASSWORD).await;
    assert_eq!(page.location(), "/");
    assert_eq!(b.get("/").await.status, StatusCode::OK);
    clock.advance(settings.idle - Duration::from_secs(1));
    assert_eq!(
        b.get("/").await.status,
        StatusCode::OK,
        "seen within the idle time"
    );
    clock.advance(settings.idle);
    let page = b.get("/").await;
    assert_eq!(page.location(), "/login?expired=1");
    let page = b.get("/login?expired=1").await;
    assert!(page.text.contains("id=\"expired\""));
}

#[tokio::test]
async fn counter_search_activate_dispatch_part_a_and_state_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (state, _staff, client) = counter_state(dir.path(), ConsoleSettings::default());
    registry(&client).await;
    let mut b = Browser::new(&state);
    b.login("operator", INITIAL).await;
    let csrf = b.get("/password").await.csrf();
    b.post(
        "/password",
        &[
            ("current", INITIAL),
            ("new", PASSWORD),
            ("repeat", PASSWORD),
            ("csrf", &csrf),
        ],
    )
    .await;
    let csrf = b.csrf().await;

    // A search without the token changes nothing and shows nothing.
    let cf1 = cf("DNGNCL80A01F839");
    let page = b.post("/search", &[("codice_fiscale", &cf1)]).await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert!(!page.text.contains("D'Angelo") && !page.text.contains("D&#x27;Angelo"));
    // The holder whose address is markup: shown as text.
    let page = b
        .post("/search", &[("codice_fiscale", &cf1), ("csrf", &csrf)])
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    assert!(page.text.contains(&serial(701)));
    assert!(
        !page.text.contains("<script>alert(1)</script>"),
        "markup not escaped"
    );
    assert!(page.text.contains("&lt;script&gt;alert(1)&lt;"));
    // A malformed codice fiscale: the field is named, the value is not echoed.
    let page = b
        .post("/search", &[("codice_fiscale", "XXXBAD"), ("csrf", &csrf)])
        .await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST);
    assert!(page.text.contains("codice_fiscale") && !page.text.contains("XXXBAD"));

    // Activation by a delegate, then counter(2)+sms.
    let card = format!("/cards/{}", serial(701));
    let page = b
        .post(
            &format!("{card}/activate"),
            &[
                ("csrf", &csrf),
                ("by", "delegate"),
                ("document_type", "passaporto"),
                ("document_number", "YA1234567"),
                ("consent_ref", "consenso-701"),
                ("d_given_names", "Anna"),
                ("d_surname", "Bianchi"),
                ("d_codice_fiscale", &cf("BNCNNA70A41F839")),
                ("delegation_ref", "delega-77"),
            ],
        )
        .await;
    assert_eq!(
        page.location(),
        format!("{card}?done=done_activated"),
        "{}",
        page.text
    );
    let status = client
        .get("cms", &format!("/v1/cards/{}", serial(701)))
        .await;
    assert_eq!(status.json["state"], "active");
    assert_eq!(status.json["activated_by"], "delegate");
    let page = b
        .post(
            &format!("{card}/dispatch"),
            &[("csrf", &csrf), ("plan", "counter(2)+sms")],
        )
        .await;
    assert_eq!(
        page.location(),
        format!("{card}?done=done_dispatched"),
        "{}",
        page.text
    );
    // A second delivery is refused: in Italian, from the refusal's facts (the plan in force),
    // not the API's English message.
    let page = b
        .post(
            &format!("{card}/dispatch"),
            &[("csrf", &csrf), ("plan", "sms")],
        )
        .await;
    assert_eq!(page.status, StatusCode::CONFLICT, "{}", page.text);
    assert!(
        page.text.contains("è già in vigore la consegna") && page.text.contains("(counter(2)+sms)"),
        "{}",
        page.text
    );
    assert!(!page.text.contains("refused") && !page.text.contains("under way"));
    let page = b.get(&card).await;
    assert!(page.text.contains("counter(2)+sms") && page.text.contains("id=\"do-part-a\""));
    // The holder by name (as the holder page shows them), not by the registry's id.
    let holder = client
        .get("cms", &format!("/v1/cards/{}", serial(701)))
        .await
        .json["holder"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        page.text
            .contains("id=\"holder-name\">Nicolò D&#x27;Angelo<"),
        "{}",
        page.text
    );
    assert!(!page.text.contains(&holder), "{holder} on the card page");
    let (pin, puk) = codes_of(701, SALT);
    assert!(!page.text.contains(&pin[..5]) && !page.text.contains(&puk));

    // Part A: a PDF, never a page.
    let res = b.post(&format!("{card}/part-a"), &[("csrf", &csrf)]).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    assert_eq!(res.headers[header::CONTENT_TYPE], "application/pdf");
    assert!(res.text.starts_with("%PDF"));

    // Suspend: a confirmation first, then the change; a second one is a conflict that
    // names the current state.
    let change = format!("{card}/change");
    let page = b
        .post(
            &change,
            &[("csrf", &csrf), ("action", "suspend"), ("reason", "lost")],
        )
        .await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.text.contains("id=\"do-confirm\""));
    assert_eq!(
        client
            .get("cms", &format!("/v1/cards/{}", serial(701)))
            .await
            .json["state"],
        "active"
    );
    let confirm = [
        ("csrf", csrf.as_str()),
        ("action", "suspend"),
        ("reason", "lost"),
        ("confirmed", "yes"),
    ];
    let page = b.post(&change, &confirm).await;
    assert_eq!(page.location(), format!("{card}?done=done_changed"));
    let page = b.post(&change, &confirm).await;
    assert_eq!(page.status, StatusCode::CONFLICT);
    assert!(page.text.contains("id=\"current-state\""));
    assert!(page.text.contains("sospesa"));

    // History and a problem report.
    let page = b.get(&format!("{card}/history")).await;
    assert!(
        page.text.contains("card.suspend") && page.text.contains("card.activate"),
        "{}",
        page.text
    );
    let page = b
        .post(
            &format!("{card}/report"),
            &[
                ("csrf", &csrf),
                ("title", "lettore"),
                ("text", "la carta non si legge"),
            ],
        )
        .await;
    assert_eq!(
        page.location(),
        format!("{card}?done=done_reported"),
        "{}",
        page.text
    );

    // Support may suspend but not revoke.
    let mut s = Browser::new(&state);
    s.login("support", PASSWORD).await;
    let scsrf = s.csrf().await;
    let page = s
        .post(
            &change,
            &[
                ("csrf", &scsrf),
                ("action", "revoke"),
                ("reason", "lost"),
                ("confirmed", "yes"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    // A support session is not a counter one.
    let page = s.post(&format!("{card}/part-a"), &[("csrf", &scsrf)]).await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
}

/// Gives `name`'s account the password [`PASSWORD`], set by itself (no change required).
pub(super) fn own_password(state: &AppState, staff: &Staff, name: &str) {
    let a = state.accounts.get(&staff.ids[name]).unwrap().unwrap();
    state
        .accounts
        .set_password(
            &a.id,
            &SecretString::from(PASSWORD),
            &Actor::account(&a, "test"),
        )
        .unwrap();
}

#[tokio::test]
async fn support_works_a_report_admin_makes_an_operator_auditor_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let (state, staff, client) = counter_state(dir.path(), ConsoleSettings::default());
    registry(&client).await;
    let a = state
        .accounts
        .create("auditor", vault::Role::Auditor, &Actor::system("t"))
        .unwrap()
        .0;
    let staff = Staff {
        ids: {
            let mut ids = staff.ids.clone();
            ids.insert("auditor", a.id);
            ids
        },
        tokens: staff.tokens.clone(),
    };
    for name in ["admin", "operator", "auditor"] {
        own_password(&state, &staff, name);
    }

    // The counter opens a report about card 701.
    let mut op = Browser::new(&state);
    op.login("operator", PASSWORD).await;
    let csrf = op.csrf().await;
    let page = op
        .post(
            &format!("/cards/{}/report", serial(701)),
            &[
                ("csrf", &csrf),
                ("title", "lettore <b>"),
                ("text", "non si legge"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.text);

    // Support takes it and closes it.
    let mut sup = Browser::new(&state);
    sup.login("support", PASSWORD).await;
    let page = sup.get("/reports").await;
    assert!(page.text.contains("lettore &lt;b&gt;"), "{}", page.text);
    let csrf = page.csrf();
    let page = sup.post("/reports/1/assign", &[("csrf", &csrf)]).await;
    assert_eq!(
        page.location(),
        "/reports?done=done_assigned",
        "{}",
        page.text
    );
    let page = sup.get("/reports").await;
    assert!(page.text.contains(&staff.ids["support"]) && page.text.contains("assegnata"));
    let page = sup
        .post(
            "/reports/1/close",
            &[("csrf", &csrf), ("text", "sostituita")],
        )
        .await;
    assert_eq!(page.location(), "/reports?done=done_closed");
    assert!(sup.get("/reports").await.text.contains("id=\"none\""));
    assert!(sup.get("/reports?closed=1").await.text.contains("chiusa"));
    assert_eq!(sup.get("/overdue").await.status, StatusCode::OK);
    // Support has no admin page.
    assert_eq!(sup.get("/accounts").await.status, StatusCode::FORBIDDEN);

    // Admin makes an operator: its initial password is shown once and must be changed.
    let mut adm = Browser::new(&state);
    adm.login("Amministratrice", PASSWORD).await;
    let page = adm.get("/accounts").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    let csrf = page.csrf();
    let page = adm
        .post(
            "/accounts",
            &[
                ("csrf", &csrf),
                ("name", "sportello2"),
                ("role", "operator"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    let at = page.text.find("id=\"secret\">").unwrap() + 12;
    let initial = page.text[at..].split('<').next().unwrap().to_owned();
    assert_eq!(initial.len(), 16);
    let mut op2 = Browser::new(&state);
    let page = op2.login("sportello2", &initial).await;
    assert_eq!(page.location(), "/password");
    // Reset by the admin: the new operator's session ends.
    let id = state
        .accounts
        .list()
        .unwrap()
        .into_iter()
        .find(|a| a.name == "sportello2")
        .unwrap()
        .id;
    let page = adm
        .post(
            &format!("/accounts/{id}/reset-password"),
            &[("csrf", &csrf)],
        )
        .await;
    assert!(page.text.contains("id=\"secret\""));
    assert_eq!(op2.get("/password").await.location(), "/login?expired=1");

    // The auditor browses, filters, verifies and exports the chain.
    let mut aud = Browser::new(&state);
    aud.login("auditor", PASSWORD).await;
    let page = aud.get("/audit").await;
    assert!(page.text.contains("auth.login"), "{}", page.text);
    let csrf = page.csrf();
    let page = aud
        .post("/audit", &[("csrf", &csrf), ("action", "report.close")])
        .await;
    assert!(page.text.contains("report.close") && !page.text.contains("auth.login<"));
    let page = aud.post("/audit/verify", &[("csrf", &csrf)]).await;
    assert!(page.text.contains("id=\"verify-ok\""), "{}", page.text);
    let page = aud.post("/audit/export", &[("csrf", &csrf)]).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.text.lines().count() > 10 && page.text.contains("\"auth.login\""));
    assert_eq!(aud.get("/keys").await.status, StatusCode::OK);
}

/// The text of the element with this id (`<code id="…">text</code>` and the like).
fn element_text(page: &Page, id: &str) -> String {
    let at = page
        .text
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in {}", page.text));
    let rest = &page.text[at..];
    let start = rest.find('>').unwrap() + 1;
    rest[start..].split('<').next().unwrap().to_owned()
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The app's code for the secret shown, `ahead` seconds from now.
fn app_code(secret: &str, ahead: u64) -> String {
    vault::totp_code_from_base32(secret, now_unix() + ahead).unwrap()
}

/// Enrols a second factor for the logged-in session; returns the secret shown.
async fn enrol(b: &mut Browser) -> String {
    let page = b.get("/totp").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    assert!(page.text.contains("do-new-totp"), "{}", page.text);
    let csrf = page.csrf();
    let page = b.post("/totp/new", &[("csrf", &csrf)]).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    // The QR code of the URI, inline SVG.
    let qr = page.text.find("id=\"totp-qr\"").expect("a QR code");
    assert!(page.text[qr..].contains("<svg "), "{}", page.text);
    let secret = element_text(&page, "totp-secret");
    assert_eq!(secret.len(), 32, "{secret}");
    // As the page shows it (the template escapes `/` and `&`).
    let uri = element_text(&page, "totp-uri")
        .replace("&#x2f;", "/")
        .replace("&amp;", "&");
    assert!(
        uri.starts_with("otpauth://totp/plico:")
            && uri.ends_with(&format!("?secret={secret}&issuer=plico")),
        "{uri}"
    );
    // Shown once: the page again does not show it.
    let again = b.get("/totp").await;
    assert!(!again.text.contains(&secret));
    assert!(again.text.contains("do-confirm"));
    // A wrong code enrols nothing.
    let wrong = app_code(&secret, 600);
    let page = b
        .post("/totp/confirm", &[("code", &wrong), ("csrf", &csrf)])
        .await;
    assert_eq!(
        page.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        page.text
    );
    assert!(!page.text.contains(&secret));
    let page = b
        .post(
            "/totp/confirm",
            &[("code", &app_code(&secret, 0)), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    assert_eq!(
        element_text(&page, "message-title"),
        "Secondo fattore attivato."
    );
    secret
}

#[tokio::test]
async fn totp_enrol_then_log_in_with_a_code_replay_lockout_and_admin_reset() {
    let dir = tempfile::tempdir().unwrap();
    let (state, staff, api) = counter_state(dir.path(), ConsoleSettings::default());
    let sup = staff.ids["support"].clone();
    let mut b = Browser::new(&state);

    // Without a second factor the password alone logs in (require_totp is off).
    let page = b.login("support", PASSWORD).await;
    assert_eq!(page.location(), "/", "{}", page.text);
    // Until then the account's token works on the API...
    assert_eq!(
        api.get("support", "/v1/reports").await.status,
        StatusCode::OK
    );
    let secret = enrol(&mut b).await;
    let stored = state.accounts.get(&sup).unwrap().unwrap();
    assert!(stored.totp.is_some());
    // ...and no longer once the person logs in with a second factor: the token would skip it.
    let a = api.get("support", "/v1/reports").await;
    assert_refusal(
        &a,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "token_of_person",
    );
    // A machine account's token is untouched (no such card here: past authentication).
    let card = format!("/v1/cards/{}", serial(701));
    assert_eq!(api.get("cms", &card).await.status, StatusCode::NOT_FOUND);
    let csrf = b.csrf().await;
    b.post("/logout", &[("csrf", &csrf)]).await;

    // Now the password opens only the code page.
    let page = b.login("support", PASSWORD).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.location(), "/login/code");
    for path in ["/", "/reports", "/password", "/totp"] {
        let page = b.get(path).await;
        assert_eq!(page.location(), "/login/code", "{path}");
    }
    let page = b.get("/login/code").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(!page.text.contains("id=\"who\""), "no menu before the code");
    let csrf = page.csrf();
    // Without the form's token: refused.
    let page = b
        .post("/login/code", &[("code", &app_code(&secret, 0))])
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    // A wrong code, then the code of the next step (one step ahead: accepted).
    let page = b
        .post("/login/code", &[("code", "000000x"), ("csrf", &csrf)])
        .await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    assert!(page.text.contains("id=\"error\""));
    let code = app_code(&secret, 30);
    let page = b
        .post("/login/code", &[("code", &code), ("csrf", &csrf)])
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.text);
    assert_eq!(page.location(), "/");
    assert_eq!(b.get("/").await.status, StatusCode::OK);
    assert_eq!(b.get("/login/code").await.location(), "/");
    let csrf = b.csrf().await;
    b.post("/logout", &[("csrf", &csrf)]).await;

    // The same code again: refused (replay), and wrong codes count towards the lockout (the
    // right code cleared the count): the replay, three wrong codes and a fifth lock it.
    let page = b.login("support", PASSWORD).await;
    assert_eq!(page.location(), "/login/code");
    let csrf = b.get("/login/code").await.csrf();
    let page = b
        .post("/login/code", &[("code", &code), ("csrf", &csrf)])
        .await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    for _ in 0..3 {
        let page = b
            .post("/login/code", &[("code", "999 999"), ("csrf", &csrf)])
            .await;
        assert_eq!(page.status, StatusCode::UNAUTHORIZED);
        assert!(b.jar.contains_key("plico_session"));
    }
    let page = b
        .post("/login/code", &[("code", "999999"), ("csrf", &csrf)])
        .await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    assert!(page.text.contains("do-login"), "back to the login page");
    assert!(!b.jar.contains_key("plico_session"), "the session ended");
    // Locked: the right password and a fresh code do not get in.
    let page = b.login("support", PASSWORD).await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    assert!(state.console.guard.locked(&sup));

    let events = actions(&state);
    let has = |action: &str, reason: &str| {
        events
            .iter()
            .any(|(a, s, r)| a == action && s == &sup && r == reason)
    };
    assert!(has("auth.totp_enrol", ""));
    assert!(has("auth.totp_enrol", "wrong_code"));
    assert!(has("auth.login_failed", "wrong_code"));
    assert!(has("auth.login_failed", "wrong_code_now_locked"));
    // No event holds the secret or a code.
    let all = serde_json::to_string(
        &state
            .audit
            .query(&vault::Query {
                limit: vault::MAX_PAGE,
                ..Default::default()
            })
            .unwrap()
            .events,
    )
    .unwrap();
    assert!(!all.contains(&secret) && !all.contains(&code));

    // An admin resets the second factor (a lost phone): the password alone logs in again.
    let admin = state.accounts.get(&staff.ids["admin"]).unwrap().unwrap();
    state
        .accounts
        .set_password(
            &admin.id,
            &SecretString::from(PASSWORD),
            &Actor::account(&admin, "test"),
        )
        .unwrap();
    let mut a = Browser::new(&state);
    assert_eq!(a.login(&admin.id, PASSWORD).await.location(), "/");
    let page = a.get("/accounts").await;
    assert!(page.text.contains(&format!("/accounts/{sup}/totp-reset")));
    let csrf = page.csrf();
    let page = a
        .post(&format!("/accounts/{sup}/totp-reset"), &[("csrf", &csrf)])
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    assert!(state.accounts.get(&sup).unwrap().unwrap().totp.is_none());
    assert!(actions(&state)
        .iter()
        .any(|(a, s, _)| a == "account.reset_totp" && s == &sup));
    state.console.guard.clear(&sup);
    assert_eq!(b.login("support", PASSWORD).await.location(), "/");
}

#[tokio::test]
async fn require_totp_sends_an_account_without_one_to_enrolment_first() {
    let dir = tempfile::tempdir().unwrap();
    let settings = ConsoleSettings {
        require_totp: true,
        ..ConsoleSettings::default()
    };
    let (state, _staff, _) = counter_state(dir.path(), settings);
    let mut b = Browser::new(&state);
    // The operator's initial password: first the password change, then enrolment.
    assert_eq!(b.login("operator", INITIAL).await.location(), "/password");
    assert_eq!(b.get("/totp").await.location(), "/password");
    let csrf = b.get("/password").await.csrf();
    let page = b
        .post(
            "/password",
            &[
                ("current", INITIAL),
                ("new", PASSWORD),
                ("repeat", PASSWORD),
                ("csrf", &csrf),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    // Nothing else until the second factor is there.
    for path in ["/", "/reports", "/accounts"] {
        assert_eq!(b.get(path).await.location(), "/totp", "{path}");
    }
    let page = b.get("/totp").await;
    assert!(page.text.contains("id=\"totp-required\""));
    let secret = enrol(&mut b).await;
    assert_eq!(b.get("/").await.status, StatusCode::OK);
    let csrf = b.csrf().await;
    b.post("/logout", &[("csrf", &csrf)]).await;
    assert_eq!(
        b.login("operator", PASSWORD).await.location(),
        "/login/code"
    );
    let csrf = b.get("/login/code").await.csrf();
    let page = b
        .post(
            "/login/code",
            &[("code", &app_code(&secret, 30)), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(page.location(), "/");
    assert_eq!(b.get("/").await.status, StatusCode::OK);
}

// consent, re-identify, seal state

/// A holder whose names are Romanian and Greek, card 703 issued with codes: the registry
/// accepts them, so the consent form must print them.
const STEFAN: &str = "Ștefan";
const GREEK: &str = "Παπαδόπουλος";

/// The counter state of [`counter_state`] with the registry, holder 703 ([`STEFAN`]
/// [`GREEK`]) and its codes, and an operator's browser with its CSRF token.
async fn counter_with_703(dir: &Path) -> (AppState, Staff, Client, Browser, String) {
    let (state, staff, client) = counter_state(dir, ConsoleSettings::default());
    registry(&client).await;
    let csv = format!(
        "{REGISTRY_HEADER}{};{STEFAN};{GREEK};1975-03-04;s@example.ro;+393331112203;Strada Lungă 3, Iași;false;{};2032-12-31;\n",
        cf("PPDSFN75C04Z129"),
        serial(703),
    );
    let a = client
        .post_raw("cms", "/v1/registry", "text/csv", csv)
        .await;
    assert_eq!(a.json["outcome"], "applied", "{}", a.text);
    let a = client
        .post_raw(
            "manufacturer",
            "/v1/batches?manufacturer=ACME",
            "text/plain",
            codes_file(703..=703, SALT),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    own_password(&state, &staff, "operator");
    let mut b = Browser::new(&state);
    b.login("operator", PASSWORD).await;
    let csrf = b.csrf().await;
    (state, staff, client, b, csrf)
}

/// The text of a PDF, by `pdftotext` (poppler-utils).
fn pdf_text(pdf: &[u8], dir: &Path) -> String {
    let path = dir.join("form.pdf");
    std::fs::write(&path, pdf).unwrap();
    let out = std::process::Command::new("pdftotext")
        .args(["-q", "-enc", "UTF-8"])
        .arg(&path)
        .arg("-")
        .output()
        .expect("pdftotext (poppler-utils)");
    assert!(out.status.success(), "pdftotext: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn count(state: &AppState, action: &str) -> usize {
    actions(state).iter().filter(|a| a.0 == action).count()
}

#[tokio::test]
async fn the_consent_form_prints_the_holder_and_the_masked_serial_and_no_code() {
    let dir = tempfile::tempdir().unwrap();
    let (state, _staff, _client, mut b, csrf) = counter_with_703(dir.path()).await;
    let card = format!("/cards/{}", serial(703));
    let in_person = [
        ("by", "holder"),
        ("document_type", "carta_identita"),
        ("document_number", "CA12345AB"),
        ("consent_ref", ""),
    ];

    // The card page offers it; without the token nothing is printed nor recorded.
    let page = b.get(&card).await;
    assert!(page.text.contains("id=\"do-consent\""), "{}", page.text);
    let page = b.post(&format!("{card}/consent-form"), &in_person).await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert_eq!(count(&state, "card.consent_form"), 0);

    // With it: a PDF download, never cached.
    let mut fields = in_person.to_vec();
    fields.push(("csrf", &csrf));
    let res = b.post(&format!("{card}/consent-form"), &fields).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    assert_eq!(res.headers[header::CONTENT_TYPE], "application/pdf");
    assert_eq!(res.headers[header::CACHE_CONTROL], "no-store");
    let disposition = res.headers[header::CONTENT_DISPOSITION].to_str().unwrap();
    assert!(disposition.starts_with("attachment;"), "{disposition}");
    assert!(!disposition.contains(&serial(703)));
    let pdf = res.bytes;
    assert!(pdf.starts_with(b"%PDF"));
    let text = pdf_text(&pdf, dir.path());
    assert!(text.contains(STEFAN) && text.contains(GREEK), "{text}");
    assert!(text.contains(&cf("PPDSFN75C04Z129")), "{text}");
    assert!(
        text.contains(&dispatch::mask_serial(&serial(703))),
        "{text}"
    );
    assert!(!text.contains(&serial(703)), "the whole serial printed");
    assert!(
        text.contains("CA12345AB") && text.contains("consenso-"),
        "{text}"
    );
    assert!(text.contains("attivazione"), "{text}");
    let (pin, puk) = codes_of(703, SALT);
    assert!(
        !text.contains(&pin) && !text.contains(&puk),
        "a code on the form"
    );
    let events = actions(&state);
    let printed: Vec<_> = events
        .iter()
        .filter(|e| e.0 == "card.consent_form")
        .collect();
    assert_eq!(printed.len(), 1, "{events:?}");
    assert_eq!(printed[0].1, serial(703));
    assert_eq!(
        count(&state, "card.activate"),
        0,
        "a form activates nothing"
    );

    // In English when the console is.
    b.get("/lang/en").await;
    let pdf = b.post(&format!("{card}/consent-form"), &fields).await.bytes;
    let text = pdf_text(&pdf, dir.path());
    assert!(
        text.contains("Consent to the activation of the card"),
        "{text}"
    );
    assert!(text.contains(STEFAN), "{text}");

    // A delegate without a surname: the field is named, nothing is printed or recorded.
    let res = b
        .post(
            &format!("{card}/consent-form"),
            &[
                ("csrf", &csrf),
                ("by", "delegate"),
                ("document_type", "passaporto"),
                ("document_number", "YA1234567"),
                ("d_given_names", "Anna"),
                ("d_codice_fiscale", &cf("BNCNNA70A41F839")),
                ("delegation_ref", "delega-77"),
            ],
        )
        .await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST, "{}", res.text);
    assert!(res.text.contains("surname"), "{}", res.text);
    assert_eq!(count(&state, "card.consent_form"), 2);
}

#[tokio::test]
async fn the_counter_reidentifies_a_holder_from_the_card_page() {
    let dir = tempfile::tempdir().unwrap();
    let (state, _staff, client, mut b, csrf) = counter_with_703(dir.path()).await;
    let card = format!("/cards/{}", serial(703));
    let delegate = [
        ("csrf", csrf.as_str()),
        ("by", "delegate"),
        ("document_type", "passaporto"),
        ("document_number", "YA1234567"),
        ("consent_ref", "consenso-703-bis"),
        ("d_given_names", "Anna"),
        ("d_surname", "Bianchi"),
        ("d_codice_fiscale", &cf("BNCNNA70A41F839")),
        ("delegation_ref", "delega-78"),
    ];
    // Not before the card is active: the conflict names the current state.
    let page = b.post(&format!("{card}/reidentify"), &delegate).await;
    assert_eq!(page.status, StatusCode::CONFLICT, "{}", page.text);
    assert!(page.text.contains("id=\"current-state\""));
    assert_eq!(count(&state, "card.reidentify"), 0);

    let page = b
        .post(
            &format!("{card}/activate"),
            &[
                ("csrf", &csrf),
                ("by", "holder"),
                ("document_type", "carta_identita"),
                ("document_number", "CA12345AB"),
                ("consent_ref", "consenso-703"),
            ],
        )
        .await;
    assert_eq!(page.location(), format!("{card}?done=done_activated"));
    let before = client
        .get("cms", &format!("/v1/cards/{}", serial(703)))
        .await;
    let page = b.get(&card).await;
    assert!(page.text.contains("id=\"do-reidentify\""), "{}", page.text);

    // The form of an active card prints the re-identification's consent.
    let pdf = b
        .post(&format!("{card}/consent-form"), &delegate)
        .await
        .bytes;
    let text = pdf_text(&pdf, dir.path());
    assert!(text.contains("nuova identificazione"), "{text}");
    assert!(
        text.contains("Anna Bianchi") && text.contains("delega-78"),
        "{text}"
    );

    tokio::time::sleep(Duration::from_millis(5)).await;
    let page = b.post(&format!("{card}/reidentify"), &delegate).await;
    assert_eq!(
        page.location(),
        format!("{card}?done=done_reidentified"),
        "{}",
        page.text
    );
    let events = state
        .audit
        .query(&vault::Query {
            action: Some("card.reidentify".into()),
            limit: vault::MAX_PAGE,
            ..Default::default()
        })
        .unwrap()
        .events;
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(e.subject, serial(703));
    assert_eq!(e.details["by"], "delegate");
    assert_eq!(e.details["delegation_ref"], "delega-78");
    assert_eq!(e.details["consent_ref"], "consenso-703-bis");
    let after = client
        .get("cms", &format!("/v1/cards/{}", serial(703)))
        .await;
    assert_eq!(after.json["state"], "active");
    assert!(
        after.json["identified_ms"].as_u64() > before.json["identified_ms"].as_u64(),
        "{} {}",
        before.text,
        after.text
    );
    // Bad input names the field and changes nothing.
    let page = b
        .post(
            &format!("{card}/reidentify"),
            &[
                ("csrf", &csrf),
                ("by", "holder"),
                ("document_type", "patente"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST, "{}", page.text);
    assert!(page.text.contains("document_number"));
    assert_eq!(count(&state, "card.reidentify"), 1);
}

#[tokio::test]
async fn a_sealed_service_shows_a_banner_on_every_page_and_refuses_what_needs_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (state, staff, client, mut b, csrf) = counter_with_703(dir.path()).await;
    let admin = state.accounts.get(&staff.ids["admin"]).unwrap().unwrap();
    let (officer, _) = state
        .accounts
        .create(
            "officer",
            vault::Role::Officer,
            &Actor::account(&admin, "test"),
        )
        .unwrap();
    state
        .accounts
        .set_password(
            &officer.id,
            &SecretString::from(PASSWORD),
            &Actor::account(&officer, "test"),
        )
        .unwrap();
    let card = format!("/cards/{}", serial(703));
    let banner = "id=\"sealed-banner\"";
    let page = b.get(&card).await;
    assert!(!page.text.contains(banner));

    let sealed = client.post("admin", "/v1/sys/seal", json!({})).await;
    assert_eq!(sealed.status, StatusCode::OK, "{}", sealed.text);

    // Every page says so: the login page, the home page, a card.
    let mut anon = Browser::new(&state);
    assert!(anon.get("/login").await.text.contains(banner));
    for uri in ["/", card.as_str(), &format!("{card}/history")] {
        let page = b.get(uri).await;
        assert_eq!(page.status, StatusCode::OK, "{uri}: {}", page.text);
        assert!(page.text.contains(banner), "{uri}: {}", page.text);
    }
    // What needs keys is refused with the sealed message, not an internal error, and
    // changes nothing.
    let in_person = [
        ("csrf", csrf.as_str()),
        ("by", "holder"),
        ("document_type", "carta_identita"),
        ("document_number", "CA12345AB"),
        ("consent_ref", "consenso-703"),
    ];
    let forms: [(String, Vec<(&str, &str)>); 3] = [
        (
            "/search".to_owned(),
            vec![("csrf", &csrf), ("codice_fiscale", "PPDSFN75C04Z129X")],
        ),
        (format!("{card}/consent-form"), in_person.to_vec()),
        (format!("{card}/activate"), in_person.to_vec()),
    ];
    let sealed_text = "Il servizio è sigillato: attendere lo sblocco dei custodi";
    for (uri, fields) in &forms {
        let page = b.post(uri, fields).await;
        assert_eq!(
            page.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{uri}: {}",
            page.text
        );
        assert!(page.text.contains(sealed_text), "{uri}: {}", page.text);
        assert!(page.text.contains(banner), "{uri}");
    }
    assert_eq!(count(&state, "card.consent_form"), 0);
    assert_eq!(count(&state, "card.activate"), 0);
    let status = client
        .get("cms", &format!("/v1/cards/{}", serial(703)))
        .await;
    assert_eq!(status.json["state"], "issued");

    // The officer's key status: sealed, and the unseal progress as counts.
    let mut o = Browser::new(&state);
    o.login("officer", PASSWORD).await;
    let page = o.get("/keys").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    assert!(page.text.contains("data-sealed=\"true\""), "{}", page.text);
    assert!(
        page.text.contains("id=\"hsm-progress\">0 di 1<"),
        "{}",
        page.text
    );
    assert!(page.text.contains(banner));
}
