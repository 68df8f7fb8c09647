//! Observing the service: the OpenAPI document at `/v1/openapi.json` checked by an independent
//! validator (PyPI `openapi-spec-validator`, in the venv `scripts/test.sh` makes) and against the
//! route table; `/metrics` scraped with the scrape token before and after an import, lifecycle
//! operations and a dispatch, its counters parsed and compared, refused without the token, and
//! read while sealed; `docs/alerts.yml` checked against the metrics the service exports.

use super::batches::serial;
use super::support::{cf, cie_state, codes_file, identification, open_with_accounts, Client};
use super::*;
use std::collections::BTreeMap;

const SALT: u64 = 0x6f62_7365;

const SCRAPE_TOKEN: &str = "scrape-0123456789abcdefghij";

/// The pinned validator release (also in `scripts/test.sh`).
const VALIDATOR: &str = "openapi-spec-validator==0.7.2";

/// The validator's command in the venv of `scripts/test.sh` (`target/openapi-venv`), made here
/// when missing outside CI; under CI a missing validator fails the test.
fn validator() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/openapi-venv");
    let bin = venv.join("bin/openapi-spec-validator");
    if !bin.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{} is missing: scripts/test.sh installs it",
            bin.display()
        );
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .unwrap()
            .success();
        assert!(ok, "python3 -m venv {}", venv.display());
        let ok = Command::new(venv.join("bin/pip"))
            .args(["install", "-q", VALIDATOR])
            .status()
            .unwrap()
            .success();
        assert!(ok, "pip install {VALIDATOR}");
    }
    bin
}

/// Runs the validator on `doc`: its exit status and output.
fn validate(doc: &Value) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, doc.to_string()).unwrap();
    let out = Command::new(validator()).arg(&file).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn the_openapi_document_is_public_complete_and_valid() {
    let dir = tempfile::tempdir().unwrap();
    let state = cie_state(
        &dir.path().join("data"),
        plico::DEFAULT_SENSITIVE_PER_MINUTE,
    );
    let app = app(state);
    // No token needed: the document holds the shape of the API, no data.
    let a = get(&app, "/v1/openapi.json").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let doc = a.json;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{doc}");

    // Every row of the route table, with its roles.
    for e in plico::api::endpoints() {
        let op = &doc["paths"][e.path][e.method.as_str().to_ascii_lowercase()];
        assert!(op.is_object(), "{} {} missing", e.method, e.path);
        let roles: Vec<String> = match e.access {
            plico::api::Access::Roles(roles) => {
                roles.iter().map(|r| r.as_str().to_owned()).collect()
            }
            _ => Vec::new(),
        };
        assert_eq!(op["x-roles"], json!(roles), "{} {}", e.method, e.path);
    }
    // Every error code, in the one Error schema.
    let codes =
        &doc["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]["enum"];
    let all: Vec<&str> = plico::api::ErrorCode::ALL
        .iter()
        .map(|c| c.as_str())
        .collect();
    assert_eq!(codes, &json!(all));

    // The independent validator accepts it...
    let (ok, out) = validate(&doc);
    assert!(ok, "openapi-spec-validator refused the document:\n{out}");
    // ...and is no rubber stamp: a document with a broken reference is refused.
    let mut broken = doc.clone();
    broken["paths"]["/v1/audit"]["get"]["responses"]["401"]["$ref"] =
        json!("#/components/responses/NoSuchResponse");
    broken["info"] = json!({"title": 7});
    let (ok, out) = validate(&broken);
    assert!(!ok, "the validator accepted a broken document:\n{out}");
}

/// The samples of an OpenMetrics text: `name` and its labels → value. Checks the shape of
/// every line on the way (a comment, `# EOF` last, or `name{labels} value`).
fn parse(text: &str) -> BTreeMap<(String, BTreeMap<String, String>), f64> {
    let mut out = BTreeMap::new();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "{text}");
    for line in lines {
        if line.starts_with('#') {
            assert!(
                line.starts_with("# HELP ")
                    || line.starts_with("# TYPE ")
                    || line.starts_with("# UNIT ")
                    || line == "# EOF",
                "{line}"
            );
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value of {line}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').unwrap();
                let mut labels = BTreeMap::new();
                let mut rest = body;
                while !rest.is_empty() {
                    let (key, after) = rest.split_once("=\"").unwrap();
                    let end = after.find('"').unwrap();
                    labels.insert(key.to_owned(), after[..end].to_owned());
                    rest = after[end + 1..].trim_start_matches(',');
                }
                (name.to_owned(), labels)
            }
        };
        out.insert((name, labels), value);
    }
    out
}

type Samples = BTreeMap<(String, BTreeMap<String, String>), f64>;

/// The value of `name` with exactly `labels` (0 when the series is not there yet).
fn value(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    samples
        .get(&(name.to_owned(), labels))
        .copied()
        .unwrap_or(0.0)
}

async fn scrape(app: &Router, token: Option<&str>) -> Answer {
    let mut req = Request::get("/metrics");
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    send(app, req.body(Body::empty()).unwrap()).await
}

const HEADER: &str = "codice_fiscale;given_names;surname;birth_date;email;mobile;address;deceased;serial;expiry;replaced_by\n";

/// Holders of cards 801–803: codice fiscale (first 15), given names, surname, birth date.
const HOLDERS: [(&str, &str, &str, &str, u64); 3] = [
    ("DNGNCL80A01F839", "Nicolò", "D'Angelo", "1980-01-01", 801),
    ("MLLZOE92M45F205", "Zoë", "Müller", "1992-08-05", 802),
    ("PRRGNS75D50L219", "Agnès", "Perrière", "1975-04-10", 803),
];

#[tokio::test]
async fn metrics_count_imports_lifecycle_and_dispatch_for_the_scrape_token_only() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let state = cie_state(&data, plico::DEFAULT_SENSITIVE_PER_MINUTE);
    let metrics = (*state.metrics)
        .clone()
        .with_token(&SecretString::from(SCRAPE_TOKEN))
        .with_store_dir(data.join("store"));
    let state = state.with_metrics(metrics);
    let staff = open_with_accounts(&state, &["manufacturer", "cms", "operator", "auditor"]);
    let admin_token = staff.tokens["admin"].clone();
    let c = Client::new(&state, staff.tokens);

    // Never public, and an account's token is not the scrape token.
    for token in [None, Some("scrape-wrong"), Some(admin_token.as_str())] {
        let a = scrape(&c.app, token).await;
        assert_error(&a, StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let a = scrape(&c.app, Some(SCRAPE_TOKEN)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let before = parse(&a.text);
    assert_eq!(value(&before, "plico_sealed", &[]), 0.0);

    // The registry, an import of three cards, three activations, a suspension, a dispatch.
    let csv: String = std::iter::once(HEADER.to_owned())
        .chain(HOLDERS.iter().map(|(cf15, given, surname, birth, n)| {
            format!(
                "{};{given};{surname};{birth};holder{n}@example.it;+39333000{n}0;Via Roma {n}, 00100 Roma;false;{};2032-12-31;\n",
                cf(cf15),
                serial(*n)
            )
        }))
        .collect();
    let a = c.post_raw("cms", "/v1/registry", "text/csv", csv).await;
    assert_eq!(a.json["outcome"], "applied", "{}", a.text);
    let a = c
        .post_raw(
            "manufacturer",
            "/v1/batches?manufacturer=ACME",
            "text/plain",
            codes_file(801..=803, SALT),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    for n in 801..=803 {
        let uri = format!("/v1/cards/{}/activate", serial(n));
        let a = c.post("operator", &uri, identification(n)).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    }
    let uri = format!("/v1/cards/{}/suspend", serial(803));
    let a = c.post("cms", &uri, json!({"reason": "lost"})).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    // Two dispatches: card 801 split at the counter (nothing to deliver before the counter
    // page), card 802 whole by SMS (queued at once).
    for (n, plan) in [(801, "counter(2)+sms"), (802, "sms")] {
        let uri = format!("/v1/cards/{}/dispatch", serial(n));
        let a = c.post("cms", &uri, json!({ "plan": plan })).await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    }

    let a = scrape(&c.app, Some(SCRAPE_TOKEN)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let after = parse(&a.text);
    let moved = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    // Imports: one batch, three pairs.
    assert_eq!(
        moved("plico_import_batches", &[("outcome", "committed")]),
        1.0
    );
    assert_eq!(
        moved("plico_import_pairs", &[("outcome", "committed")]),
        3.0
    );
    assert_eq!(
        moved("plico_import_batches", &[("outcome", "rejected")]),
        0.0
    );
    // Lifecycle operations by kind, from the audit chain.
    let ok = ("outcome", "ok");
    assert_eq!(
        moved(
            "plico_lifecycle_operations_total",
            &[("kind", "activate"), ok]
        ),
        3.0
    );
    assert_eq!(
        moved(
            "plico_lifecycle_operations_total",
            &[("kind", "suspend"), ok]
        ),
        1.0
    );
    assert_eq!(
        moved(
            "plico_lifecycle_operations_total",
            &[("kind", "revoke"), ok]
        ),
        0.0
    );
    assert_eq!(
        moved(
            "plico_audit_events_total",
            &[("action", "dispatch.request"), ok]
        ),
        2.0
    );
    // Jobs waiting for a courier: the SMS of card 802; the counter's part is not one.
    let sms_queued = [("channel", "sms"), ("state", "queued")];
    assert_eq!(moved("plico_dispatch_jobs_open", &sms_queued), 1.0);
    assert_eq!(
        value(
            &after,
            "plico_dispatch_jobs_open",
            &[("channel", "counter"), ("state", "counter")]
        ),
        0.0
    );
    // HTTP requests by route template and status, never by the concrete path.
    let activate = [("method", "POST"), ("route", "/v1/cards/{serial}/activate")];
    assert_eq!(
        moved(
            "plico_http_requests_total",
            &[activate[0], activate[1], ("status", "200")]
        ),
        3.0
    );
    assert_eq!(
        moved("plico_http_request_duration_seconds_count", &activate),
        3.0
    );
    assert_eq!(
        moved(
            "plico_http_requests_total",
            &[("method", "GET"), ("route", "/metrics"), ("status", "401")]
        ),
        0.0,
        "the refusals came before the first scrape"
    );
    assert!(
        value(
            &before,
            "plico_http_requests_total",
            &[("method", "GET"), ("route", "/metrics"), ("status", "401")]
        ) >= 3.0
    );
    for n in 801..=803 {
        assert!(!a.text.contains(&serial(n)), "a serial in the metrics");
    }
    // Neither an unknown path nor a made-up method becomes a label of its own.
    let req = Request::builder()
        .method("MADEUP")
        .uri("/v1/no/such/card-zz-unique-zz")
        .body(Body::empty())
        .unwrap();
    send(&c.app, req).await;
    let text = scrape(&c.app, Some(SCRAPE_TOKEN)).await.text;
    assert!(
        !text.contains("MADEUP") && !text.contains("zz-unique"),
        "{text}"
    );
    assert_eq!(
        value(
            &parse(&text),
            "plico_http_requests_total",
            &[
                ("method", "other"),
                ("route", "unmatched"),
                ("status", "404")
            ]
        ),
        1.0
    );
    // The audit chain grew; the store has a size; the keys are reported.
    assert!(moved("plico_audit_chain_events", &[]) >= 9.0);
    assert!(value(&after, "plico_store_size_bytes", &[]) > 0.0);
    assert!(value(&after, "plico_store_filesystem_avail_bytes", &[]) > 0.0);
    assert!(
        value(
            &after,
            "plico_data_key_max_encryptions",
            &[("purpose", "code")]
        ) >= 3.0,
        "{}",
        a.text
    );

    // `/v1/dispatch/metrics` still answers its figures, from the same place.
    let d = c.get("auditor", "/v1/dispatch/metrics").await;
    assert_eq!(d.status, StatusCode::OK, "{}", d.text);
    let d = parse(&d.text);
    assert_eq!(value(&d, "plico_dispatch_workers", &[]), 0.0);
    assert_eq!(
        value(
            &d,
            "plico_dispatch_jobs_open",
            &[("channel", "sms"), ("state", "awaiting_counter")]
        ),
        value(
            &after,
            "plico_dispatch_jobs_open",
            &[("channel", "sms"), ("state", "awaiting_counter")]
        )
    );

    // Sealed, the scrape still answers, and says so.
    let a = c
        .post_raw(
            "admin",
            "/v1/sys/seal",
            "application/json",
            json!({"reason": "metrics test"}).to_string(),
        )
        .await;
    assert!(a.status.is_success(), "{}", a.text);
    let a = scrape(&c.app, Some(SCRAPE_TOKEN)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(value(&parse(&a.text), "plico_sealed", &[]), 1.0);
}

/// Every metric name the alert rules use is one the service exports (after an import, so
/// that every family is present), and every rule has the fields Prometheus needs.
#[tokio::test]
async fn the_alert_rules_use_exported_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let state = cie_state(&data, plico::DEFAULT_SENSITIVE_PER_MINUTE);
    let metrics = (*state.metrics)
        .clone()
        .with_token(&SecretString::from(SCRAPE_TOKEN))
        .with_store_dir(data.join("store"));
    let state = state.with_metrics(metrics);
    let staff = open_with_accounts(&state, &["manufacturer"]);
    let c = Client::new(&state, staff.tokens);
    let a = c
        .post_raw(
            "manufacturer",
            "/v1/batches?manufacturer=ACME",
            "text/plain",
            codes_file(801..=801, SALT),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let a = scrape(&c.app, Some(SCRAPE_TOKEN)).await;
    let mut families: Vec<String> = a
        .text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap().to_owned())
        .collect();
    // Sample names of a family: `_total` of counters, `_bucket`/`_count`/`_sum` of histograms.
    let samples: Vec<String> = parse(&a.text).into_keys().map(|(n, _)| n).collect();
    families.extend(samples);

    let rules =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/alerts.yml"))
            .unwrap();
    let mut exprs = 0;
    let mut named = 0;
    let mut alerts = Vec::new();
    for line in rules.lines() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix("- alert: ") {
            alerts.push(name.to_owned());
        }
        let Some(expr) = t.strip_prefix("expr: ") else {
            continue;
        };
        exprs += 1;
        let names: Vec<&str> = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("plico_"))
            .collect();
        named += names.len();
        for n in names {
            assert!(
                families.iter().any(|f| f == n),
                "{n} is not exported (in {expr})"
            );
        }
    }
    assert_eq!(exprs, alerts.len(), "one expr per alert");
    assert!(named >= exprs, "the rules name too few plico metrics");
    for wanted in [
        "PlicoSealed",
        "PlicoDeliveriesOverdue",
        "PlicoDataKeyNearLimit",
        "PlicoAuditVerifyFailed",
        "PlicoDiskLow",
    ] {
        assert!(alerts.iter().any(|a| a == wanted), "no alert {wanted}");
    }
}

/// `promtool check rules` (Debian `prometheus`, installed by `scripts/test.sh`) accepts
/// `docs/alerts.yml`: the YAML, the PromQL of every expression and the templates.
#[test]
fn promtool_accepts_the_alert_rules() {
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/alerts.yml");
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .expect("promtool (Debian package prometheus; scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
