//! The harness shared by the modules of the service tests: an unsealed state over sled, the
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

/// A one-share HSM initialised in `dir`, unsealed.
pub(super) fn unsealed_hsm(dir: &Path) -> Arc<SimulatedHsm> {
    let (hsm, shares) = init_hsm(dir, 1, 1);
    hsm.unseal(&shares[0]).unwrap();
    hsm
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
    std::fs::create_dir(data).unwrap();
    let settings = Settings {
        codes: CodePolicy::CIE,
        sensitive_per_minute,
        ..Settings::default()
    };
    sled_state(data, &settings)
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
