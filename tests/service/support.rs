//! The harness shared by the modules of the service tests (and the tests of `service.rs`
//! itself, which glob-imports it): a simulated HSM, the in-process router and its answers
//! ([`send`], [`Answer`], [`assert_error`]), the `plico` binary and a running [`Server`], an
//! unsealed state over sled, the
//! named accounts made on it, a client of the in-process router that signs in by account name
//! and keeps every answer body for a later scan, `plico serve --dev`, and the fixtures several
//! modules use (codice fiscale, code files, an activation body).

use super::batches::{codes_of, serial};
use super::*;
use cards::check_character;
use plico::Settings;
use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::ops::RangeInclusive;
use std::sync::Mutex;
use vault::SledStore;
use vault::{Account, Actor};
use vault::{CodePolicy, Role};

/// A codice fiscale from its first 15 characters, with its check character.
pub(super) fn cf(first15: &str) -> String {
    format!("{first15}{}", check_character(first15).unwrap())
}

/// A one-share development HSM initialised in `dir`, unsealed ([`SimulatedHsm::dev`]).
pub(super) fn unsealed_hsm(dir: &Path) -> Arc<SimulatedHsm> {
    Arc::new(SimulatedHsm::dev(dir).unwrap())
}

/// A state over an unsealed HSM in `dir` and a sled store in `dir/store`; not yet marked
/// unsealed (see [`open`]).
pub(super) fn sled_state(dir: &Path, settings: &Settings) -> AppState {
    let hsm = unsealed_hsm(dir);
    let store = Arc::new(SledStore::open(&dir.join("store")).unwrap());
    AppState::with_settings(hsm, store, settings).unwrap()
}

/// [`sled_state`] in `data`, a new folder, with 8-digit codes (the CIE policy) and this
/// limit of sensitive calls per account and minute.
pub(super) fn cie_state(data: &Path, sensitive_per_minute: NonZeroU32) -> AppState {
    cie_state_timed(data, sensitive_per_minute, vault::system_clock())
}

/// [`cie_state`] timed by `clock` (a [`vault::ManualClock`] the test moves).
pub(super) fn cie_state_timed(
    data: &Path,
    sensitive_per_minute: NonZeroU32,
    clock: Arc<dyn vault::Clock>,
) -> AppState {
    std::fs::create_dir(data).unwrap();
    let settings = Settings {
        codes: CodePolicy::CIE,
        sensitive_per_minute,
        ..Settings::default()
    };
    let hsm = unsealed_hsm(data);
    let store = Arc::new(SledStore::open(&data.join("store")).unwrap());
    AppState::with_clock(hsm, store, &settings, clock).unwrap()
}

/// The accounts of a test, by name: `admin` and those given to [`open_with_accounts`].
pub(super) struct Staff {
    pub(super) tokens: BTreeMap<&'static str, String>,
    pub(super) ids: BTreeMap<&'static str, String>,
}

/// The role of a test account by its name: the role's own name, with a digit after it for
/// another one (`support2`); `acme` and `other` are manufacturers.
fn role_of(name: &str) -> Role {
    let base = match name {
        "acme" | "other" => "manufacturer",
        n => n.trim_end_matches(|c: char| c.is_ascii_digit()),
    };
    Role::ALL
        .into_iter()
        .find(|r| r.as_str() == base)
        .unwrap_or_else(|| panic!("no role for the account {name}"))
}

/// Marks `state` unsealed and bootstraps its administrator: the account, its token and the
/// actor it makes other accounts as.
pub(super) fn open(state: &AppState, admin_name: &str) -> (Account, SecretString, Actor) {
    state.unsealed(&Actor::system("test"), "test").unwrap();
    let (admin, admin_token) = state
        .accounts
        .bootstrap_admin(admin_name, "test")
        .unwrap()
        .unwrap();
    let by = Actor::account(&admin, "test");
    (admin, admin_token, by)
}

/// [`open`]s `state` (its administrator is `admin` in [`Staff`]) and makes these accounts, in
/// this order, each with the role its name says (see [`role_of`]).
pub(super) fn open_with_accounts(state: &AppState, names: &[&'static str]) -> Staff {
    let (admin, admin_token, by) = open(state, "Amministratrice");
    let mut tokens = BTreeMap::from([("admin", admin_token.expose_secret().to_owned())]);
    let mut ids = BTreeMap::from([("admin", admin.id.clone())]);
    for &name in names {
        let (a, t) = state.accounts.create(name, role_of(name), &by).unwrap();
        tokens.insert(name, t.expose_secret().to_owned());
        ids.insert(name, a.id);
    }
    Staff { tokens, ids }
}

/// [`open`]s `state` with the administrator `admin_name` and makes one account of every other
/// role, named `{prefix} {role}`; [`Staff`] keys them by the role's name (`operator`).
pub(super) fn open_with_every_role(state: &AppState, admin_name: &str, prefix: &str) -> Staff {
    let (admin, admin_token, by) = open(state, admin_name);
    let mut tokens = BTreeMap::from([("admin", admin_token.expose_secret().to_owned())]);
    let mut ids = BTreeMap::from([("admin", admin.id.clone())]);
    for role in Role::ALL.into_iter().filter(|r| *r != Role::Admin) {
        let (a, t) = state
            .accounts
            .create(&format!("{prefix} {role}"), role, &by)
            .unwrap();
        tokens.insert(role.as_str(), t.expose_secret().to_owned());
        ids.insert(role.as_str(), a.id);
    }
    Staff { tokens, ids }
}

/// A request with this bearer token (none: no `Authorization`) and this JSON body; a POST
/// without a body sends `{}`.
pub(super) fn bearer_request(
    method: &Method,
    uri: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Request<Body> {
    let mut b = Request::builder().method(method.clone()).uri(uri);
    if let Some(t) = token {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    match body {
        Some(v) => b
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(v.to_string()))
            .unwrap(),
        None if *method == Method::POST => b
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from("{}"))
            .unwrap(),
        None => b.body(Body::empty()).unwrap(),
    }
}

/// `plico serve --dev` on a loopback port with its data in `data`.
pub(super) fn serve_dev(data: &Path) -> Server {
    let mut cmd = plico();
    cmd.args(["serve", "--dev", "--listen", "127.0.0.1:0", "--data"])
        .arg(data);
    Server::start(cmd)
}

/// A client of `app(state)` that signs in by account name and keeps every answer body it
/// reads through [`Client::keep`] (so every one of `get`, `post` and `post_raw`).
pub(super) struct Client {
    pub(super) app: Router,
    pub(super) tokens: BTreeMap<&'static str, String>,
    /// Every answer body, to be scanned.
    pub(super) bodies: Mutex<Vec<String>>,
}

impl Client {
    pub(super) fn new(state: &AppState, tokens: BTreeMap<&'static str, String>) -> Client {
        Client {
            app: app(state.clone()),
            tokens,
            bodies: Mutex::new(Vec::new()),
        }
    }

    /// A request with the bearer token of `who`.
    pub(super) fn request(
        &self,
        who: &str,
        method: Method,
        uri: &str,
    ) -> axum::http::request::Builder {
        Request::builder().method(method).uri(uri).header(
            header::AUTHORIZATION,
            format!("Bearer {}", self.tokens[who]),
        )
    }

    /// Sends `req` and keeps the answer body.
    pub(super) async fn keep(&self, req: Request<Body>) -> Answer {
        let a = send(&self.app, req).await;
        self.bodies.lock().unwrap().push(a.text.clone());
        a
    }

    /// A call with this bearer token as it is (none, a disabled account's, a forged one),
    /// not an account's by name.
    pub(super) async fn call(&self, method: Method, uri: &str, token: Option<&str>) -> Answer {
        self.keep(bearer_request(&method, uri, token, None)).await
    }

    /// [`Client::call`] with a JSON body.
    pub(super) async fn call_json(
        &self,
        method: Method,
        uri: &str,
        token: &str,
        body: Value,
    ) -> Answer {
        self.keep(bearer_request(&method, uri, Some(token), Some(body)))
            .await
    }

    pub(super) async fn get(&self, who: &str, uri: &str) -> Answer {
        let req = self
            .request(who, Method::GET, uri)
            .body(Body::empty())
            .unwrap();
        self.keep(req).await
    }

    pub(super) async fn post(&self, who: &str, uri: &str, body: Value) -> Answer {
        self.post_raw(who, uri, "application/json", body.to_string())
            .await
    }

    /// A POST of `body` as it is, with this content type.
    pub(super) async fn post_raw(
        &self,
        who: &str,
        uri: &str,
        content_type: &str,
        body: impl Into<Body>,
    ) -> Answer {
        let req = self
            .request(who, Method::POST, uri)
            .header(header::CONTENT_TYPE, content_type)
            .body(body.into())
            .unwrap();
        self.keep(req).await
    }
}

/// A code file (`serial;pin;puk` lines) of these cards under `salt`, as [`codes_of`] makes them.
pub(super) fn codes_file(cards: RangeInclusive<u64>, salt: u64) -> String {
    cards
        .map(|n| {
            let (pin, puk) = codes_of(n, salt);
            format!("{};{pin};{puk}\n", serial(n))
        })
        .collect()
}

/// [`codes_file`] under the CNS policy: 5-digit PINs (the first five of [`codes_of`]'s).
pub(super) fn cns_codes_file(cards: RangeInclusive<u64>, salt: u64) -> String {
    cards
        .map(|n| {
            let (pin, puk) = codes_of(n, salt);
            format!("{};{};{puk}\n", serial(n), &pin[..5])
        })
        .collect()
}

/// The body of an activation (or re-identification) of card `n` by its holder.
pub(super) fn identification(n: u64) -> Value {
    json!({"by": "holder", "document_type": "carta_identita",
           "document_number": format!("CA{n}00AB"), "consent_ref": "consenso-1"})
}

/// Card `serial`'s codes as the vault holds them, through the audited release (a
/// `card.codes_release` event by a test actor, then the codes opened with its receipt):
/// `None` if no committed batch holds them. No endpoint returns codes.
pub(crate) fn released_codes(
    state: &plico::AppState,
    serial: &str,
) -> vault::Result<Option<vault::CardCodes>> {
    release_from(&state.codes, &state.audit, &*state.hsm, serial)
}

/// [`released_codes`] over a vault opened offline (its store's audit chain opened beside it).
pub(crate) fn release_from(
    codes: &vault::CodeVault,
    audit: &vault::AuditLog,
    hsm: &dyn vault::Hsm,
    serial: &str,
) -> vault::Result<Option<vault::CardCodes>> {
    let Some(pending) = codes.pending_release(hsm, serial)? else {
        return Ok(None);
    };
    let receipt = audit.commit_release(
        vault::Batch::new(),
        vec![vault::NewEvent::new(vault::CODES_RELEASE_ACTION, serial).detail("for", "test")],
    )?;
    pending.open(&receipt).map(Some)
}

/// The audit events of `state`, oldest first (at most [`vault::MAX_PAGE`]): all of them, or
/// those whose action starts with `prefix`.
pub(super) fn audit_events(state: &AppState, prefix: Option<&str>) -> Vec<vault::Event> {
    state
        .audit
        .query(&vault::Query {
            action: prefix.map(str::to_owned),
            limit: vault::MAX_PAGE,
            ..vault::Query::default()
        })
        .unwrap()
        .events
}

/// The actions of the audit events of `state` whose action starts with `prefix`, oldest first
/// (at most 1,000).
pub(super) fn audit_actions(state: &AppState, prefix: &str) -> Vec<String> {
    audit_events(state, Some(prefix))
        .into_iter()
        .map(|e| e.action)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The HSM, the router and its answers; the binary and a running server
// ---------------------------------------------------------------------------------------------

pub(super) fn init_hsm(
    dir: &Path,
    shares: u8,
    threshold: u8,
) -> (Arc<SimulatedHsm>, Vec<SecretString>) {
    let mut out = Vec::new();
    let (hsm, _) = SimulatedHsm::init(
        dir,
        InitOptions {
            shares,
            threshold,
            dev: threshold < 2,
        },
        &mut |s: &[SecretString]| {
            out = s.to_vec();
            Ok(())
        },
    )
    .unwrap();
    (Arc::new(hsm), out)
}

pub(super) fn router(hsm: Arc<SimulatedHsm>) -> Router {
    app(AppState::new(hsm, Arc::new(vault::MemoryStore::new())).unwrap())
}

pub(super) struct Answer {
    pub(super) status: StatusCode,
    pub(super) json: Value,
    pub(super) text: String,
    /// The `Retry-After` header, if any.
    pub(super) retry_after: Option<String>,
}

pub(super) async fn send(app: &Router, req: Request<Body>) -> Answer {
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let retry_after = res
        .headers()
        .get(header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer {
        status,
        json,
        text,
        retry_after,
    }
}

pub(super) async fn get(app: &Router, uri: &str) -> Answer {
    send(app, Request::get(uri).body(Body::empty()).unwrap()).await
}

pub(super) async fn post_json(app: &Router, uri: &str, body: String) -> Answer {
    let req = Request::post(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap();
    send(app, req).await
}

pub(super) async fn unseal(app: &Router, share: &SecretString) -> Answer {
    let body = json!({ "share": share.expose_secret() }).to_string();
    post_json(app, "/v1/sys/unseal", body).await
}

pub(super) fn assert_error(a: &Answer, status: StatusCode, code: &str) {
    assert_eq!(a.status, status, "body: {}", a.text);
    assert_eq!(a.json["error"]["code"], code, "body: {}", a.text);
    assert!(a.json["error"]["message"].is_string(), "body: {}", a.text);
}

/// Asserts a typed refusal: `status`, `error.code` and the refusal's variant in
/// `error.reason` (tests match variants, never message text).
pub(super) fn assert_refusal(a: &Answer, status: StatusCode, code: &str, reason: &str) {
    assert_error(a, status, code);
    assert_eq!(a.json["error"]["reason"], reason, "body: {}", a.text);
}

/// The error reason (`error.reason`) of an answer's body text, or `None`.
pub(super) fn reason_of(text: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    v["error"]["reason"].as_str().map(str::to_owned)
}

/// The payload-bearing part of a share: what must never show up anywhere.
pub(super) fn secret_part(share: &SecretString) -> String {
    let s = share.expose_secret();
    let longest = s.split(':').max_by_key(|f| f.len()).unwrap();
    assert!(
        longest.len() >= 32,
        "share format changed? {} chars",
        longest.len()
    );
    longest.to_owned()
}

pub(super) fn plico() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_plico"));
    for (k, _) in std::env::vars() {
        if k.starts_with("PLICO_") {
            c.env_remove(k);
        }
    }
    c.env("RUST_LOG", "info");
    c
}

pub(super) fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub(super) fn run_fails(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "{cmd:?} should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub(super) fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// A running `plico serve`; killed if the test fails before stopping it.
pub(super) struct Server {
    pub(super) child: Option<Child>,
    pub(super) url: String,
}

impl Server {
    /// Starts `cmd` and waits for its "listening on URL" line.
    pub(super) fn start(mut cmd: Command) -> Server {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                if let Some(url) = line.strip_prefix("plico: listening on ") {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(url) => Server {
                child: Some(child),
                url,
            },
            Err(_) => {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!(
                    "serve did not start\nstderr: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }

    /// `plico serve --dev` on `data` (with `config`, if given), on a free loopback port,
    /// logging warnings only.
    pub(super) fn dev(data: &Path, config: Option<&Path>) -> Server {
        let mut cmd = plico();
        cmd.env("RUST_LOG", "warn")
            .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--data"])
            .arg(data);
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        Server::start(cmd)
    }

    /// Kills the server with SIGKILL, as a crash would, and reaps it.
    pub(super) fn sigkill(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// The process id.
    pub(super) fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends SIGTERM and waits for the exit.
    pub(super) fn terminate(mut self) -> (ExitStatus, String) {
        let mut child = self.child.take().unwrap();
        let ok = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(_status) = child.try_wait().unwrap() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("serve did not stop after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub(super) fn http_client(ca: Option<&Path>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30));
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).unwrap();
        b = b.add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap());
    }
    b.build().unwrap()
}

pub(super) async fn status_code(client: &reqwest::Client, url: &str) -> u16 {
    client.get(url).send().await.unwrap().status().as_u16()
}

/// A service serving a state on a listener in the background, until [`Served::stop`] (the
/// same `plico::serve` the binary runs, with a shutdown signal the test holds).
pub struct Served {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Served {
    /// Serves `state` on `listener` (its workers start with it).
    pub fn start(listener: std::net::TcpListener, state: &AppState) -> Served {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let state = state.clone();
        let task = tokio::spawn(async move {
            plico::serve(listener, state, None, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Served { stop, task }
    }

    /// Stops the service and waits until it and its workers have ended.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap();
    }
}
