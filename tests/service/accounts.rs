//! Accounts, roles, rate limits and the audit chain through `app(state).oneshot(..)`: the route
//! × role matrix, the accounts API, the audit API, a failed store write, and unseal auditing.

use super::support::{bearer_request, open_with_every_role, unsealed_hsm, Client};
use super::*;
use axum::routing::get as get_route;
use plico::api::{check_rules, endpoints, router_from, Access, Endpoint};
use plico::Settings;
use std::collections::BTreeMap;
use std::num::NonZeroU32;
use vault::Query;
use vault::Store;
use vault::{Actor, Role};
use vault::{FailingStore, MemoryStore};

/// An unsealed service with one account per role ([`open_with_every_role`]), plus a disabled
/// one, and the shared [`Client`] to call it.
struct Fixture {
    _dir: tempfile::TempDir,
    hsm: Arc<SimulatedHsm>,
    state: AppState,
    client: Client,
    ids: BTreeMap<&'static str, String>,
    disabled: SecretString,
}

impl Fixture {
    fn new() -> Fixture {
        Self::with(Arc::new(MemoryStore::new()), Settings::default())
    }

    fn with(store: Arc<dyn Store>, settings: Settings) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let hsm = unsealed_hsm(dir.path());
        let state = AppState::with_settings(hsm.clone(), store, &settings).unwrap();
        let staff = open_with_every_role(&state, "Prima Amministratrice", "Utente");
        let admin = state.accounts.get(&staff.ids["admin"]).unwrap().unwrap();
        let by = Actor::account(&admin, "test");
        let (gone, disabled) = state
            .accounts
            .create("Ex Operatore", Role::Operator, &by)
            .unwrap();
        state.accounts.disable(&gone.id, &by).unwrap();
        Fixture {
            _dir: dir,
            hsm,
            client: Client::new(&state, staff.tokens),
            state,
            ids: staff.ids,
            disabled,
        }
    }

    fn token(&self, role: Role) -> &str {
        &self.client.tokens[role.as_str()]
    }

    fn id(&self, role: Role) -> &str {
        &self.ids[role.as_str()]
    }
}

/// The public routes, and why each may be: a change here needs a reason in `api::Access`.
const PUBLIC: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/v1/sys/status"),
    ("POST", "/v1/sys/unseal"),
    // The SMS gateway's delivery reports: the gateway has no account; the route checks a
    // shared secret of its own (`[dispatch.sms] dlr_token`), see OWN_SECRET.
    ("GET", "/v1/dlr"),
    // The OpenAPI description: the shape of the API, no data.
    ("GET", "/v1/openapi.json"),
];

/// Public routes that require a shared secret of their own instead of a bearer token: 401
/// without it.
const OWN_SECRET: &[(&str, &str)] = &[("GET", "/v1/dlr")];

#[tokio::test]
async fn route_by_role_matrix() {
    let f = Fixture::new();
    let table = endpoints();
    assert_eq!(
        check_rules(&table),
        Vec::<String>::new(),
        "endpoints without a usable rule"
    );
    let unknown_id = "0000000000000000";
    for e in &table {
        let uri = e
            .path
            .replace("{id}", unknown_id)
            .replace("{serial}", "CARD0001");
        let what = format!("{} {}", e.method, e.path);
        match e.access {
            Access::Public => {
                assert!(
                    PUBLIC.contains(&(e.method.as_str(), e.path)),
                    "{what} is public but not in the list of public routes"
                );
                let a = f.client.call(e.method.clone(), &uri, None).await;
                if OWN_SECRET.contains(&(e.method.as_str(), e.path)) {
                    assert_error(&a, StatusCode::UNAUTHORIZED, "unauthorized");
                    continue;
                }
                assert!(
                    a.status != StatusCode::UNAUTHORIZED && a.status != StatusCode::FORBIDDEN,
                    "{what} without a token: {} {}",
                    a.status,
                    a.text
                );
            }
            Access::Roles(roles) => {
                let res = f
                    .client
                    .app
                    .clone()
                    .oneshot(bearer_request(&e.method, &uri, None, None))
                    .await
                    .unwrap();
                assert_eq!(
                    res.status(),
                    StatusCode::UNAUTHORIZED,
                    "{what} without token"
                );
                assert!(
                    res.headers()
                        .get(header::WWW_AUTHENTICATE)
                        .is_some_and(|v| v.to_str().unwrap().starts_with("Bearer")),
                    "{what}: no WWW-Authenticate"
                );
                let bad = "plico_0123456789abcdef_".to_owned() + &"0".repeat(64);
                for (label, token) in [
                    ("a malformed token", "not-a-token"),
                    ("an unknown token", bad.as_str()),
                    ("a disabled account's token", f.disabled.expose_secret()),
                ] {
                    let a = f.client.call(e.method.clone(), &uri, Some(token)).await;
                    assert_error(&a, StatusCode::UNAUTHORIZED, "unauthorized");
                    assert!(!a.text.contains(token), "{what} with {label} echoes it");
                }
                for role in Role::ALL {
                    let a = f
                        .client
                        .call(e.method.clone(), &uri, Some(f.token(role)))
                        .await;
                    if roles.contains(&role) {
                        assert!(
                            a.status != StatusCode::UNAUTHORIZED
                                && a.status != StatusCode::FORBIDDEN,
                            "{what} as {role} (allowed): {} {}",
                            a.status,
                            a.text
                        );
                    } else {
                        assert_error(&a, StatusCode::FORBIDDEN, "forbidden");
                    }
                }
            }
            Access::ScrapeToken => {
                // Only the scrape token (none is configured here): no account's token opens it.
                let a = f.client.call(e.method.clone(), &uri, None).await;
                assert_error(&a, StatusCode::UNAUTHORIZED, "unauthorized");
                for role in Role::ALL {
                    let a = f
                        .client
                        .call(e.method.clone(), &uri, Some(f.token(role)))
                        .await;
                    assert_error(&a, StatusCode::UNAUTHORIZED, "unauthorized");
                }
            }
            other => panic!("{what} has no usable access rule: {other:?}"),
        }
    }
    // Every public route in the list still exists.
    for (m, p) in PUBLIC {
        assert!(
            table
                .iter()
                .any(|e| e.method.as_str() == *m && e.path == *p),
            "{m} {p} missing"
        );
    }
}

#[tokio::test]
async fn an_endpoint_without_a_rule_is_caught_and_refused() {
    let f = Fixture::new();
    let mut table = endpoints();
    table.push(Endpoint::new(
        Method::GET,
        "/v1/test-only",
        get_route(|| async { "should never be served" }),
    ));
    table.push(
        Endpoint::new(
            Method::GET,
            "/v1/test-nobody",
            get_route(|| async { "should never be served" }),
        )
        .roles(&[]),
    );
    let problems = check_rules(&table);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].contains("/v1/test-only"), "{problems:?}");
    assert!(problems[1].contains("/v1/test-nobody"), "{problems:?}");

    let app = router_from(f.state.clone(), table);
    for path in ["/v1/test-only", "/v1/test-nobody"] {
        for token in [
            None,
            Some(f.token(Role::Admin)),
            Some(f.token(Role::Auditor)),
        ] {
            let a = send(&app, bearer_request(&Method::GET, path, token, None)).await;
            assert_error(&a, StatusCode::FORBIDDEN, "no_access_rule");
            assert!(!a.text.contains("never be served"));
        }
    }
}

#[tokio::test]
async fn accounts_over_http() {
    let f = Fixture::new();
    let admin = f.token(Role::Admin);

    let res = f
        .client
        .app
        .clone()
        .oneshot(bearer_request(
            &Method::POST,
            "/v1/accounts",
            Some(admin),
            Some(json!({"name": "Mario Rossi", "role": "operator"})),
        ))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(res.headers()[header::CACHE_CONTROL], "no-store");
    let body: Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    let id = body["account"]["id"].as_str().unwrap().to_owned();
    let token = body["token"].as_str().unwrap().to_owned();
    assert_eq!(body["account"]["role"], "operator");
    assert!(token.starts_with(&format!("plico_{id}_")));
    let history = "/v1/cards/CARD0001/history";
    assert_eq!(
        f.client
            .call(Method::GET, history, Some(&token))
            .await
            .status,
        StatusCode::OK
    );

    // Listing never shows a token or a hash.
    let list = f
        .client
        .call(Method::GET, "/v1/accounts", Some(admin))
        .await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    let accounts = list.json["accounts"].as_array().unwrap();
    assert_eq!(accounts.len(), Role::ALL.len() + 2);
    let mine = accounts.iter().find(|a| a["id"] == id.as_str()).unwrap();
    assert_eq!(mine["name"], "Mario Rossi");
    assert_eq!(mine["disabled"], false);
    assert!(mine.get("token").is_none() && mine.get("token_hash").is_none());
    let secret = token.rsplit('_').next().unwrap();
    assert!(!list.text.contains(secret));
    let stored = f.state.accounts.get(&id).unwrap().unwrap();
    assert!(!list.text.contains(&stored.token_hash));

    // Rotation: the old token stops working, the new one works.
    let r = f
        .client
        .call(
            Method::POST,
            &format!("/v1/accounts/{id}/rotate-token"),
            Some(admin),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let new = r.json["token"].as_str().unwrap().to_owned();
    assert_ne!(new, token);
    assert_eq!(
        f.client
            .call(Method::GET, history, Some(&token))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        f.client.call(Method::GET, history, Some(&new)).await.status,
        StatusCode::OK
    );

    // Passwords: at least 12 characters, only operators and officers.
    let pw = format!("/v1/accounts/{id}/password");
    let a = f
        .client
        .call_json(Method::POST, &pw, admin, json!({"password": "short-11-ch"}))
        .await;
    assert_error(&a, StatusCode::BAD_REQUEST, "bad_request");
    assert!(a.text.contains("12"), "{}", a.text);
    assert!(!a.text.contains("short-11-ch"));
    let a = f
        .client
        .call_json(
            Method::POST,
            &pw,
            admin,
            json!({"password": "twelve chars"}),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["account"]["has_password"], true);
    let cms_pw = format!("/v1/accounts/{}/password", f.id(Role::Cms));
    let a = f
        .client
        .call_json(
            Method::POST,
            &cms_pw,
            admin,
            json!({"password": "twelve chars"}),
        )
        .await;
    assert_error(&a, StatusCode::CONFLICT, "refused");

    // Bad input.
    let a = f
        .client
        .call_json(
            Method::POST,
            "/v1/accounts",
            admin,
            json!({"name": "X", "role": "root"}),
        )
        .await;
    assert_error(&a, StatusCode::BAD_REQUEST, "bad_request");
    assert!(a.text.contains("role"), "{}", a.text);
    let a = f
        .client
        .call_json(
            Method::POST,
            "/v1/accounts",
            admin,
            json!({"name": "", "role": "cms"}),
        )
        .await;
    assert_error(&a, StatusCode::BAD_REQUEST, "bad_request");
    let a = f
        .client
        .call(
            Method::POST,
            "/v1/accounts/0000000000000000/disable",
            Some(admin),
        )
        .await;
    assert_error(&a, StatusCode::NOT_FOUND, "not_found");

    // Disable: the token stops working at once.
    let a = f
        .client
        .call(
            Method::POST,
            &format!("/v1/accounts/{id}/disable"),
            Some(admin),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["account"]["disabled"], true);
    assert_error(
        &f.client.call(Method::GET, history, Some(&new)).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    // The last admin cannot be disabled.
    let a = f
        .client
        .call(
            Method::POST,
            &format!("/v1/accounts/{}/disable", f.id(Role::Admin)),
            Some(admin),
        )
        .await;
    assert_error(&a, StatusCode::CONFLICT, "refused");
}

#[tokio::test]
async fn audit_over_http() {
    let f = Fixture::new();
    let admin = f.token(Role::Admin);
    let auditor = f.token(Role::Auditor);

    let res = f
        .client
        .app
        .clone()
        .oneshot(bearer_request(
            &Method::POST,
            "/v1/accounts",
            Some(admin),
            Some(json!({"name": "Giulia Bianchi", "role": "support"})),
        ))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let request_id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(request_id.len(), 32);
    let body: Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    let id = body["account"]["id"].as_str().unwrap().to_owned();
    f.client
        .call(
            Method::POST,
            &format!("/v1/accounts/{id}/rotate-token"),
            Some(admin),
        )
        .await;
    f.client
        .call(
            Method::POST,
            &format!("/v1/accounts/{id}/disable"),
            Some(admin),
        )
        .await;
    // A client's own request id is replaced by the server's.
    let res = f
        .client
        .app
        .clone()
        .oneshot(
            Request::get("/healthz")
                .header("x-request-id", "client-chosen")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_ne!(res.headers()["x-request-id"], "client-chosen");

    // The account's events, by subject: actor, role, request id; the name only as an HMAC.
    let a = f
        .client
        .call(
            Method::GET,
            &format!("/v1/audit?subject={id}"),
            Some(auditor),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let events = a.json["events"].as_array().unwrap();
    let actions: Vec<&str> = events
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["account.create", "account.rotate_token", "account.disable"]
    );
    let create = &events[0];
    assert_eq!(create["actor"], f.id(Role::Admin));
    assert_eq!(create["role"], "admin");
    assert_eq!(create["request_id"], request_id.as_str());
    assert_eq!(create["details"]["role"], "support");
    assert_eq!(
        create["personal"]["name"],
        f.state
            .audit
            .personal_hmac("name", "Giulia Bianchi")
            .unwrap()
    );
    assert!(!a.text.contains("Giulia"), "{}", a.text);
    assert_eq!(a.json["next"], Value::Null);

    // Paging through the account events, two at a time.
    let mut seen = Vec::new();
    let mut after = 0u64;
    loop {
        let a = f
            .client
            .call(
                Method::GET,
                &format!("/v1/audit?action=account.&limit=2&after={after}"),
                Some(auditor),
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        let page = a.json["events"].as_array().unwrap();
        assert!(page.len() <= 2);
        seen.extend(page.iter().map(|e| e["seq"].as_u64().unwrap()));
        match a.json["next"].as_u64() {
            Some(n) => after = n,
            None => break,
        }
    }
    // 1 bootstrap + 6 other roles + the disabled one (create + disable) + the 3 above.
    assert_eq!(seen.len(), 1 + 6 + 2 + 3, "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0] < w[1]));

    // Actor and time filters.
    let a = f
        .client
        .call(
            Method::GET,
            &format!("/v1/audit?actor={}&action=audit.query", f.id(Role::Auditor)),
            Some(auditor),
        )
        .await;
    let n = a.json["events"].as_array().unwrap().len();
    assert!(n >= 3, "{}", a.text);
    assert!(a.json["events"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["role"] == "auditor"));
    let a = f
        .client
        .call(Method::GET, "/v1/audit?to_ms=1", Some(auditor))
        .await;
    assert_eq!(a.json["events"].as_array().unwrap().len(), 0);
    let a = f
        .client
        .call(Method::GET, "/v1/audit?limit=0", Some(auditor))
        .await;
    assert_error(&a, StatusCode::BAD_REQUEST, "bad_request");

    // Verify: intact, with MACs.
    let a = f
        .client
        .call(Method::GET, "/v1/audit/verify", Some(auditor))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["problem"], Value::Null);
    assert_eq!(a.json["macs_checked"], true);

    // Export: JSON lines, every event, no name in clear.
    let res = f
        .client
        .app
        .clone()
        .oneshot(bearer_request(
            &Method::GET,
            "/v1/audit/export",
            Some(auditor),
            None,
        ))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[header::CONTENT_TYPE], "application/x-ndjson");
    let text =
        String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() > seen.len());
    assert!(lines
        .windows(2)
        .all(|w| w[1]["seq"].as_u64() == w[0]["seq"].as_u64().map(|s| s + 1)));
    for name in ["Giulia", "Prima Amministratrice", "Ex Operatore", "Utente"] {
        assert!(!text.contains(name), "{name} in clear in the export");
    }
    // Reads are audited.
    let last = lines.last().unwrap();
    assert_eq!(last["action"], "audit.export");
    for action in ["audit.query", "audit.verify"] {
        assert!(lines.iter().any(|e| e["action"] == action), "{action}");
    }

    // A card's history, for the counter.
    let op = f.token(Role::Operator);
    let a = f
        .client
        .call(Method::GET, "/v1/cards/CARD0042/history", Some(op))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let events = a.json["events"].as_array().unwrap();
    assert!(events.iter().all(|e| e["subject"] == "CARD0042"));
    assert_eq!(events.last().unwrap()["action"], "card.history");
    let a = f
        .client
        .call(Method::GET, "/v1/cards/..%2Fx/history", Some(op))
        .await;
    assert_error(&a, StatusCode::BAD_REQUEST, "bad_request");

    // A refused role is itself an event.
    f.client.call(Method::GET, "/v1/audit", Some(op)).await;
    let q = f
        .state
        .audit
        .query(&Query {
            action: Some("auth.forbidden".into()),
            limit: 10,
            ..Query::default()
        })
        .unwrap();
    assert_eq!(q.events.len(), 1);
    assert_eq!(q.events[0].actor, f.id(Role::Operator));
    assert!(f.state.audit.verify().unwrap().intact());
}

#[tokio::test]
async fn a_failed_store_write_fails_the_change() {
    let store = Arc::new(FailingStore::new());
    let f = Fixture::with(store.clone(), Settings::default());
    let admin = f.token(Role::Admin);
    let before = f.state.accounts.list().unwrap();

    store.fail_writes(true);
    let a = f
        .client
        .call_json(
            Method::POST,
            "/v1/accounts",
            admin,
            json!({"name": "Bruno Verdi", "role": "cms"}),
        )
        .await;
    assert_error(&a, StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable");
    assert!(!a.text.contains("injected"), "{}", a.text);
    let cms = &f.id(Role::Cms);
    let a = f
        .client
        .call(
            Method::POST,
            &format!("/v1/accounts/{cms}/disable"),
            Some(admin),
        )
        .await;
    assert_error(&a, StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable");
    // A read that cannot be audited is not served either.
    let a = f
        .client
        .call(Method::GET, "/v1/audit", Some(f.token(Role::Auditor)))
        .await;
    assert_error(&a, StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable");
    store.fail_writes(false);

    assert_eq!(f.state.accounts.list().unwrap(), before);
    let a = f
        .client
        .call(
            Method::GET,
            "/v1/cards/C1/history",
            Some(f.token(Role::Cms)),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert!(f.state.audit.verify().unwrap().intact());
}

#[tokio::test]
async fn sensitive_routes_are_rate_limited_per_account() {
    let settings = Settings {
        sensitive_per_minute: NonZeroU32::new(3).unwrap(),
        ..Settings::default()
    };
    let f = Fixture::with(Arc::new(MemoryStore::new()), settings);
    let admin = f.token(Role::Admin);
    for i in 0..3 {
        let a = f
            .client
            .call_json(
                Method::POST,
                "/v1/accounts",
                admin,
                json!({"name": format!("n{i}"), "role": "cms"}),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{i}: {}", a.text);
    }
    let res = f
        .client
        .app
        .clone()
        .oneshot(bearer_request(
            &Method::POST,
            &format!("/v1/accounts/{}/rotate-token", f.id(Role::Cms)),
            Some(admin),
            None,
        ))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = res.headers()[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // The refused rotation changed nothing; other routes are not limited.
    assert!(f
        .state
        .accounts
        .authenticate(&SecretString::from(f.token(Role::Cms)))
        .unwrap()
        .is_some());
    assert_eq!(
        f.client
            .call(Method::GET, "/v1/accounts", Some(admin))
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn sealed_means_503_after_authentication() {
    let f = Fixture::new();
    f.state.shut_down().unwrap();
    f.hsm.seal();
    let a = f
        .client
        .call(Method::GET, "/v1/accounts", Some(f.token(Role::Admin)))
        .await;
    assert_error(&a, StatusCode::SERVICE_UNAVAILABLE, "sealed");
    let a = f.client.call(Method::GET, "/v1/accounts", None).await;
    assert_error(&a, StatusCode::UNAUTHORIZED, "unauthorized");
    let a = f
        .client
        .call(Method::GET, "/v1/accounts", Some(f.token(Role::Cms)))
        .await;
    assert_error(&a, StatusCode::FORBIDDEN, "forbidden");
}

#[tokio::test]
async fn unseal_submissions_are_audited_and_install_the_audit_key() {
    let dir = tempfile::tempdir().unwrap();
    let (hsm, shares) = init_hsm(dir.path(), 3, 2);
    let state = AppState::new(hsm, Arc::new(MemoryStore::new())).unwrap();
    let app = app(state.clone());
    assert!(!state.audit.has_key());

    assert_eq!(unseal(&app, &shares[0]).await.status, StatusCode::OK);
    assert_eq!(
        unseal(&app, &shares[0]).await.status,
        StatusCode::BAD_REQUEST
    );
    assert!(!state.audit.has_key());
    assert_eq!(unseal(&app, &shares[1]).await.json["sealed"], false);
    assert!(state.audit.has_key());
    assert_eq!(unseal(&app, &shares[2]).await.status, StatusCode::OK);

    let page = state
        .audit
        .query(&Query {
            limit: 100,
            ..Query::default()
        })
        .unwrap();
    let got: Vec<(String, String)> = page
        .events
        .iter()
        .map(|e| {
            (
                e.action.clone(),
                serde_json::to_value(e.outcome)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_owned(),
            )
        })
        .collect();
    let want = [
        ("hsm.unseal_share", "ok"),
        ("hsm.unseal_share", "refused"),
        ("hsm.unseal_share", "ok"),
        ("key.create", "ok"),
        ("hsm.unseal", "ok"),
        // The share sent after the unseal is not looked at and leaves no event.
    ];
    assert_eq!(
        got,
        want.map(|(a, o)| (a.to_owned(), o.to_owned())).to_vec()
    );
    let mut export = Vec::new();
    state.audit.export(&mut export).unwrap();
    let export = String::from_utf8(export).unwrap();
    for s in &shares {
        assert!(!export.contains(&secret_part(s)));
    }
    let report = state.audit.verify().unwrap();
    assert!(report.intact(), "{report:?}");
}

#[tokio::test]
async fn audit_prune_keeps_the_retention_period_and_is_audited() {
    let f = Fixture::new();
    let admin = f.token(Role::Admin);
    // Shorter than the retention period (730 days by default): refused, nothing removed.
    let a = f
        .client
        .call_json(
            Method::POST,
            "/v1/audit/prune",
            admin,
            json!({"older_than_days": 30}),
        )
        .await;
    assert_error(&a, StatusCode::BAD_REQUEST, "bad_request");
    assert!(a.text.contains("730"), "{}", a.text);
    // The default age: every event is younger, so nothing goes, and the prune is an event.
    let a = f
        .client
        .call_json(Method::POST, "/v1/audit/prune", admin, json!({}))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let body: Value = serde_json::from_str(&a.text).unwrap();
    assert_eq!(body["pruned_through"], 0);
    assert_eq!(body["older_than_days"], 730);
    let page = f
        .state
        .audit
        .query(&vault::Query {
            action: Some("audit.prune".into()),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(page.events.len(), 1);
    assert_eq!(page.events[0].actor, f.id(Role::Admin));
    assert!(f.state.audit.verify().unwrap().intact());
}

#[tokio::test]
async fn share_submissions_are_rate_limited_per_address() {
    let f = Fixture::new();
    let per_minute = plico::api::UnsealLimits::default()
        .per_address_per_minute
        .get();
    let from = |ip: [u8; 4]| {
        let mut r = bearer_request(
            &Method::POST,
            "/v1/sys/unseal",
            None,
            Some(json!({"share": "not a share"})),
        );
        r.extensions_mut()
            .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
                ip, 40000,
            ))));
        r
    };
    let mut limited = None;
    // The quota refills evenly over the minute: on a loaded machine a refill may land during
    // the burst, so allow a few extra calls, but the limit must bite.
    for i in 0..per_minute + 10 {
        let a = send(&f.client.app, from([127, 0, 0, 2])).await;
        if a.status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(i);
            break;
        }
    }
    let at = limited.expect("the unseal route was never rate-limited");
    assert!(
        (per_minute..per_minute + 10).contains(&at),
        "limited at call {at}"
    );
    // Another address is not held back by the first one's flood.
    let a = send(&f.client.app, from([127, 0, 0, 3])).await;
    assert_ne!(a.status, StatusCode::TOO_MANY_REQUESTS, "{}", a.text);
}
