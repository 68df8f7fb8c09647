//! The service on a PKCS#11 token (SoftHSM2), end to end with the real binary: `plico init
//! --hsm pkcs11`, `serve` with `[hsm] kind = "pkcs11"`, unseal with the custodians' shares,
//! imports, a card's codes delivered by e-mail into smtp-sink, a rotation whose rewrap job is
//! killed with SIGKILL and resumes after restart, the old term retired, and every card still
//! opening to its codes under the token.

use super::batches::{codes_of, serial};
use super::delivery::sink_messages;
use super::peers::smtp_sink;
use super::*;
use hsm_pkcs11::Pkcs11Hsm;
use std::collections::BTreeMap;
use std::os::unix::fs::OpenOptionsExt;
use vault::SledStore;

const SALT: u64 = 0x7063_6b73;
const BATCHES: u64 = 16;

fn cns_file(b: u64) -> String {
    super::support::cns_codes_file(100 * b + 1..=100 * b + 10, SALT)
}

fn start(config: &Path, data: &Path, pause_ms: u64) -> Server {
    let mut cmd = plico();
    cmd.env("RUST_LOG", "warn")
        .env("PLICO_KEYS_REWRAP_CHUNK", "1")
        .env("PLICO_KEYS_REWRAP_PAUSE_MS", pause_ms.to_string())
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(config)
        .arg("--data")
        .arg(data);
    Server::start(cmd)
}

struct Api {
    http: reqwest::Client,
    url: String,
    tokens: BTreeMap<&'static str, String>,
}

impl Api {
    async fn call(
        &self,
        who: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(t) = self.tokens.get(who) {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn unseal(&self, shares: &[SecretString]) {
        for (i, s) in shares.iter().enumerate() {
            let (status, v) = self
                .call(
                    "",
                    reqwest::Method::POST,
                    "/v1/sys/unseal",
                    Some(json!({"share": s.expose_secret()})),
                )
                .await;
            assert_eq!(status, 200, "{v}");
            assert_eq!(v["sealed"], i + 1 < shares.len(), "{v}");
        }
    }

    async fn keys(&self) -> Value {
        let (status, v) = self
            .call("auditor", reqwest::Method::GET, "/v1/sys/keys", None)
            .await;
        assert_eq!(status, 200, "{v}");
        v
    }

    async fn ceremony(&self, op: Value) -> Value {
        let (status, p) = self
            .call(
                "officer",
                reqwest::Method::POST,
                "/v1/keys/proposals",
                Some(op),
            )
            .await;
        assert_eq!(status, 201, "{p}");
        let id = format!("kp{:06}", p["proposal"]["id"].as_u64().unwrap());
        let (status, a) = self
            .call(
                "officer2",
                reqwest::Method::POST,
                &format!("/v1/keys/proposals/{id}/approve"),
                Some(json!({})),
            )
            .await;
        assert!(status == 200 || status == 202, "{status} {a}");
        a
    }

    async fn wait_job_done(&self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = self.keys().await;
            if s["job"]["state"] != "running" {
                return s;
            }
            assert!(Instant::now() < deadline, "the job did not finish: {s}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_serve_unseal_import_rotate_killed_retire_restart_on_softhsm() {
    let token = hsm_pkcs11::testing::new_token().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let share_dir = tmp.path().join("shares");
    let pin_file = tmp.path().join("token-pin");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&pin_file)
            .unwrap();
        std::io::Write::write_all(&mut f, token.pin.expose_secret().as_bytes()).unwrap();
    }
    let module = token.config.module.display().to_string();
    let label = token.config.token_label.clone();
    let out = plico()
        .env("SOFTHSM2_CONF", &token.conf)
        .args([
            "init",
            "--shares",
            "3",
            "--threshold",
            "2",
            "--hsm",
            "pkcs11",
            "--module",
            &module,
            "--token-label",
            &label,
            "--data",
        ])
        .arg(&data)
        .arg("--share-dir")
        .arg(&share_dir)
        .arg("--token-pin-file")
        .arg(&pin_file)
        .arg("--insecure-pin-file-out")
        .arg(tmp.path().join("auto.pin"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("pkcs#11 token"), "{stdout}");
    assert!(
        !stdout.contains(token.pin.expose_secret()) && !stderr.contains(token.pin.expose_secret())
    );
    assert!(
        !data.join(SimulatedHsm::STATE_FILE).exists(),
        "a simulated HSM was made"
    );
    let shares: Vec<SecretString> = (1..=3)
        .map(|i| {
            let t = std::fs::read_to_string(share_dir.join(format!("share-{i}-of-3.txt"))).unwrap();
            SecretString::from(t.trim().to_owned())
        })
        .collect();
    let sink_dir = tmp.path().join("sink");
    std::fs::create_dir(&sink_dir).unwrap();
    let (_sink, smtp_port) = smtp_sink(&sink_dir, true, &[]).await;
    let config = tmp.path().join("plico.toml");
    std::fs::write(
        &config,
        format!(
            "[hsm]\nkind = \"pkcs11\"\nmodule = {module:?}\ntoken_label = {label:?}\nmechanism = \"pad\"\n\n\
             [dispatch.smtp]\nhost = \"127.0.0.1\"\nport = {smtp_port}\ntls = \"none\"\n\
             from = \"pin@regione.esempio.it\"\n"
        ),
    )
    .unwrap();

    // Serve: sealed until two custodians submit their shares.
    let server = start(&config, &data, 0);
    let http = http_client(None);
    let admin = std::fs::read_to_string(data.join("admin-token.txt"))
        .unwrap()
        .trim()
        .to_owned();
    let mut api = Api {
        http: http.clone(),
        url: server.url.clone(),
        tokens: BTreeMap::from([("admin", admin.clone())]),
    };
    let (status, _) = api.call("", reqwest::Method::GET, "/readyz", None).await;
    assert_eq!(status, 503);
    api.unseal(&[shares[2].clone(), shares[0].clone()]).await;
    let (_, st) = api
        .call("", reqwest::Method::GET, "/v1/sys/status", None)
        .await;
    assert_eq!(st["provider"], "pkcs11", "{st}");
    for (name, role) in [
        ("officer", "officer"),
        ("officer2", "officer"),
        ("auditor", "auditor"),
        ("acme", "manufacturer"),
        ("cms", "cms"),
        ("operator", "operator"),
    ] {
        let (status, v) = api
            .call(
                "admin",
                reqwest::Method::POST,
                "/v1/accounts",
                Some(json!({"name": format!("p11 {name}"), "role": role})),
            )
            .await;
        assert_eq!(status, 201, "{v}");
        api.tokens
            .insert(name, v["token"].as_str().unwrap().to_owned());
    }
    for b in 1..=BATCHES {
        let res = http
            .post(format!("{}/v1/batches?manufacturer=ACME", api.url))
            .bearer_auth(&api.tokens["acme"])
            .header(header::CONTENT_TYPE, "text/plain")
            .body(cns_file(b))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 201, "{}", res.text().await.unwrap());
    }
    deliver_by_email(&api, &sink_dir).await;
    let (exit, stderr) = server.terminate();
    assert!(exit.success(), "{stderr}");

    // Restart slow, rotate, and kill -9 in the middle of the rewrap.
    let server = start(&config, &data, 150);
    api.url = server.url.clone();
    api.unseal(&[shares[0].clone(), shares[1].clone()]).await;
    let a = api
        .ceremony(json!({"op": "rotate", "reason": "pkcs11 crash test"}))
        .await;
    let total = a["job"]["total"].as_u64().unwrap();
    let target = a["job"]["target"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let done_at_kill = loop {
        let s = api.keys().await;
        let done = s["job"]["done"].as_u64().unwrap();
        if done >= 3 {
            break done;
        }
        assert!(Instant::now() < deadline, "the job did not start: {s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut child = {
        let mut s = server;
        s.child.take().unwrap()
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        done_at_kill < total,
        "killed too late: {done_at_kill} of {total}"
    );
    eprintln!("pkcs11 crash test: killed at {done_at_kill} of {total} data keys");

    // Restarted and unsealed by the quorum, the job carries on to its end; then retire term 1.
    let server = start(&config, &data, 0);
    api.url = server.url.clone();
    api.unseal(&[shares[1].clone(), shares[2].clone()]).await;
    let last = api.wait_job_done().await;
    assert_eq!(last["job"]["state"], "done", "{last}");
    assert_eq!(last["job"]["target"], target, "{last}");
    for key in last["data_keys"].as_array().unwrap() {
        assert_eq!(key["term"].as_u64(), Some(target), "{key}");
    }
    api.ceremony(json!({"op": "retire", "term": 1, "reason": "rotated"}))
        .await;
    let s = api.keys().await;
    assert_eq!(s["terms"][0]["state"], "retired", "{s}");
    let (_, report) = api
        .call("auditor", reqwest::Method::GET, "/v1/audit/verify", None)
        .await;
    assert!(report["problem"].is_null(), "audit chain damaged: {report}");
    let (exit, stderr) = server.terminate();
    assert!(exit.success(), "{stderr}");
    assert!(!stderr.contains(token.pin.expose_secret()));

    // The opt-in auto-unseal: with [hsm] pin_file the service is ready without the custodians.
    let auto = tmp.path().join("plico-auto.toml");
    let pin_out = tmp.path().join("auto.pin");
    assert_eq!(
        std::fs::metadata(&pin_out).unwrap().permissions().mode() & 0o777,
        0o600
    );
    std::fs::write(
        &auto,
        format!("[hsm]\nkind = \"pkcs11\"\nmodule = {module:?}\ntoken_label = {label:?}\npin_file = {:?}\n", pin_out.display().to_string()),
    )
    .unwrap();
    let server = start(&auto, &data, 0);
    api.url = server.url.clone();
    let (status, v) = api.call("", reqwest::Method::GET, "/readyz", None).await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = api
        .call(
            "admin",
            reqwest::Method::POST,
            "/v1/sys/seal",
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let (status, _) = api.call("", reqwest::Method::GET, "/readyz", None).await;
    assert_eq!(status, 503);
    let (exit, stderr) = server.terminate();
    assert!(exit.success(), "{stderr}");
    assert!(stderr.contains("INSECURE"), "{stderr}");

    // Offline, on the token: every card of every batch opens to its codes.
    let store = Arc::new(SledStore::open(&data.join("store")).unwrap());
    let audit = vault::AuditLog::open(store.clone(), vault::DEFAULT_CHECKPOINT_EVERY).unwrap();
    let (codes, _) = vault::CodeVault::open(store).unwrap();
    // This process initialised the token before `plico init` changed its pin: reload it.
    hsm_pkcs11::token::reload(&token.config.module).unwrap();
    let hsm = Pkcs11Hsm::open(&token.config).unwrap();
    hsm.unseal(&shares[0]).unwrap();
    hsm.unseal(&shares[2]).unwrap();
    assert_eq!(hsm.status().terms.len(), 2);
    for b in 1..=BATCHES {
        for n in 100 * b + 1..=100 * b + 10 {
            let c = super::support::release_from(&codes, &audit, &hsm, &serial(n))
                .unwrap()
                .unwrap();
            let (pin, puk) = codes_of(n, SALT);
            assert_eq!(c.pin.expose_secret(), &pin.as_bytes()[..5], "card {n}");
            assert_eq!(c.puk.expose_secret(), puk.as_bytes(), "card {n}");
        }
    }
    hsm.seal();
}

/// Card 101 gets a holder from the registry, is activated at the counter, and its codes go out
/// by e-mail: the message at the sink holds them, released under the token's keys.
async fn deliver_by_email(api: &Api, sink_dir: &Path) {
    let card = serial(101);
    let registry = format!(
        "codice_fiscale;given_names;surname;birth_date;email;mobile;address;deceased;serial;expiry;replaced_by\n\
         {};Maria;Rossi;1980-01-01;maria.rossi@example.it;;Via Roma 1, 00100 Roma;false;{card};2032-12-31;\n",
        cf("RSSMRA80A41H501")
    );
    let res = api
        .http
        .post(format!("{}/v1/registry", api.url))
        .bearer_auth(&api.tokens["cms"])
        .header(header::CONTENT_TYPE, "text/csv")
        .body(registry)
        .send()
        .await
        .unwrap();
    let text = res.text().await.unwrap();
    assert!(text.contains("\"applied\""), "{text}");
    let activate = format!("/v1/cards/{card}/activate");
    let (status, v) = api
        .call(
            "operator",
            reqwest::Method::POST,
            &activate,
            Some(identification(101)),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let dispatch = format!("/v1/cards/{card}/dispatch");
    let (status, v) = api
        .call(
            "cms",
            reqwest::Method::POST,
            &dispatch,
            Some(json!({"plan": "email"})),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let (pin, puk) = codes_of(101, SALT);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sink_messages(sink_dir)
        .iter()
        .any(|m| m.contains(&pin[..5]) && m.contains(&puk))
    {
        assert!(
            Instant::now() < deadline,
            "card 101's codes did not reach the sink"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
