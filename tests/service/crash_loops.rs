//! The crash loops of issue 21: the real `plico serve --dev` (delivery workers sending by SMTP
//! into postfix's `smtp-sink` and by SMS through Kannel with its fake SMSC) runs a mixed
//! workload and is killed with SIGKILL at random moments, `CRASH_LOOPS` times (3 by default),
//! with the moments drawn from `CRASH_SEED` (random by default, always printed: a failure is
//! replayed with the same seed).
//!
//! The workload is one client that knows what it was told: it imports code batches of 8
//! cards (`POST /v1/batches`), uploads their holders (`POST /v1/registry`), activates cards,
//! suspends and reactivates them, asks for `email` and `sms` dispatches (which the workers send
//! in the background), starts print runs of a batch (4 mailers a file, sealed to the dev print
//! key), rotates the KEK (a proposal by one officer, approved by another, whose rewrap job runs
//! in the background), and reads card statuses and searches holders. It records what was
//! ACKNOWLEDGED (a 2xx answer) and, when the server dies under a request, that one request as
//! unknown.
//!
//! After each kill the server is started again (same data, same port, so Kannel's delivery
//! reports find it) and a checker compares the vault with the model:
//!
//! - the audit chain verifies;
//! - every acknowledged batch is listed `committed` with its 8 cards, every listed batch is
//!   one the client sent and is whole, and no other is there;
//! - a registry file is whole or absent: all 8 of its cards are known, or none; acknowledged
//!   ones are all there;
//! - every card checked (those the round touched, a random sample, all of them at the end) has
//!   the acknowledged state or, if a change was cut by the kill, the state it asked for; and
//!   its lifecycle events in the audit chain (`card.activate`, `card.suspend`,
//!   `card.reactivate`) are exactly one per change, the last one matching the state: a state
//!   is never there without its event, nor an event without its state;
//! - an acknowledged dispatch is there, an unknown one is there with its jobs or absent;
//! - every acknowledged print run is recorded and none is left `running`; every print file at
//!   the top of the print directory has its manifest and every manifest its file, of the size
//!   it records; no partial file is left; no card has two outstanding mailers;
//! - once a rotation job cut by the kill has resumed and finished, the HSM holds one KEK term
//!   per rotation done, and every acknowledged rotation is done (an approval cut by the kill
//!   may be done or not).
//!
//! At the end the server runs until every dispatch job is `sent`, `delivered` or `dead` and no
//! key job is running, the checker runs over every card, and the peers' mail is counted: one
//! distinct `Message-ID` per e-mail job, one recipient per SMS job, and duplicates (messages
//! that went out again after a kill, before their outcome was recorded) at most
//! `max_in_flight` per channel per kill, the bound of docs/delivery.md ("Crashes and
//! duplicates"). Then the server stops cleanly and the chain verifies once more.

use super::batches::{mix, serial};
use super::dispatch_crash::messages;
use super::peers::{free_ports, smtp_sink, Kannel};
use super::support::{cf, cns_codes_file, identification};
use super::*;
use cards::check_character;
use std::collections::{BTreeMap, BTreeSet};

/// Cards a batch: 0..4 run the lifecycle, 4 and 5 go by e-mail, 6 and 7 by SMS.
const K: u64 = 8;
/// Mailers a print file.
const PER_FILE: u64 = 4;
/// The lanes' `max_in_flight`: what a kill may send twice, per channel.
const MAX_IN_FLIGHT: usize = 8;
const SALT: u64 = 0xC4A5_1005;
const DLR_TOKEN: &str = "crash-loops-dlr-token-0123456789";
const DEFAULT_LOOPS: u64 = 3;
/// The longest a round's workload runs before the kill, in milliseconds.
const MAX_DELAY_MS: u64 = 2_500;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(1);
        mix(self.0)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// What the client knows of a change: not made, sent without an answer, acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Known {
    No,
    Maybe,
    Yes,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Life {
    Issued,
    Active,
    Suspended,
}

impl Life {
    fn name(self) -> &'static str {
        match self {
            Life::Issued => "issued",
            Life::Active => "active",
            Life::Suspended => "suspended",
        }
    }

    fn parse(s: &str) -> Life {
        match s {
            "issued" => Life::Issued,
            "active" => Life::Active,
            "suspended" => Life::Suspended,
            other => panic!("a card in state {other}"),
        }
    }
}

/// What a card is for, by its place in its batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Lifecycle,
    Email,
    Sms,
}

fn kind_of(n: u64) -> Kind {
    match (n - 1) % K {
        0..=3 => Kind::Lifecycle,
        4 | 5 => Kind::Email,
        _ => Kind::Sms,
    }
}

#[derive(Debug)]
struct Card {
    life: Life,
    /// The state a change cut by the kill asked for.
    pending: Option<Life>,
    /// Lifecycle events the audit chain must hold for it.
    events: usize,
    dispatch: Known,
    touched: bool,
}

#[derive(Debug)]
struct Gen {
    g: u64,
    batch: Option<String>,
    imported: Known,
    registered: Known,
}

impl Gen {
    fn cards(&self) -> std::ops::RangeInclusive<u64> {
        (self.g - 1) * K + 1..=self.g * K
    }
}

/// The client's model of the vault: what it was acknowledged, what is unknown.
#[derive(Debug, Default)]
struct Model {
    gens: Vec<Gen>,
    cards: BTreeMap<u64, Card>,
    /// Acknowledged print runs, and whether the checker saw each.
    runs: BTreeMap<u64, bool>,
    /// Acknowledged rotations.
    rotations: usize,
    /// An approval cut by a kill.
    rotation_pending: bool,
    /// Acknowledged operations by kind.
    acked: BTreeMap<&'static str, u64>,
    /// Operations cut by a kill, by kind, and how many of them the checker found applied.
    cut: BTreeMap<&'static str, (u64, u64)>,
    /// The operation under way (its kind), for `cut`.
    under_way: Option<&'static str>,
}

impl Model {
    fn ack(&mut self, what: &'static str) {
        *self.acked.entry(what).or_default() += 1;
        self.under_way = None;
    }

    fn resolved(&mut self, what: &'static str, applied: bool) {
        let e = self.cut.entry(what).or_default();
        e.0 += 1;
        e.1 += u64::from(applied);
    }
}

/// Accounts' tokens by role name (`officer2` is the second officer).
type Tokens = BTreeMap<&'static str, String>;

/// A call's answer, or `Err` when the server died under it.
type Reply = Result<(u16, Value), String>;

#[derive(Clone)]
struct Api {
    client: reqwest::Client,
    url: String,
    tokens: Arc<Tokens>,
}

impl Api {
    /// A client of this server (a new connection pool: the old server's connections are dead).
    fn new(url: &str, tokens: &Arc<Tokens>) -> Api {
        Api {
            client: http_client(None),
            url: url.to_owned(),
            tokens: tokens.clone(),
        }
    }

    async fn call(
        &self,
        who: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<(&str, String)>,
    ) -> Reply {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.tokens[who]);
        if let Some((kind, body)) = body {
            req = req.header(header::CONTENT_TYPE, kind).body(body);
        }
        let res = req.send().await.map_err(|e| e.to_string())?;
        let status = res.status().as_u16();
        let text = res.text().await.map_err(|e| e.to_string())?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    async fn get(&self, who: &str, path: &str) -> Reply {
        self.call(who, reqwest::Method::GET, path, None).await
    }

    async fn post(&self, who: &str, path: &str, body: Value) -> Reply {
        self.call(
            who,
            reqwest::Method::POST,
            path,
            Some(("application/json", body.to_string())),
        )
        .await
    }

    /// A read of the checker: the server must answer `200`.
    async fn read(&self, who: &str, path: &str) -> Value {
        let (status, body) = self
            .get(who, path)
            .await
            .unwrap_or_else(|e| panic!("GET {path}: the server died during the check: {e}"));
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// The status of a GET of the checker.
    async fn status_of(&self, who: &str, path: &str) -> (u16, Value) {
        self.get(who, path)
            .await
            .unwrap_or_else(|e| panic!("GET {path}: the server died during the check: {e}"))
    }
}

/// The six letters of holder `n`.
fn letters(n: u64) -> String {
    let mut l = [b'A'; 6];
    let mut v = n;
    for c in l.iter_mut().rev() {
        *c = b'A' + (v % 26) as u8;
        v /= 26;
    }
    String::from_utf8_lossy(&l).into_owned()
}

fn codice_fiscale(n: u64) -> String {
    let first15 = format!("{}85T10A562", letters(n));
    assert!(check_character(&first15).is_some());
    cf(&first15)
}

fn mobile(n: u64) -> String {
    format!("+39333{n:07}")
}

/// The registry file of generation `g`: one holder a card, with e-mail, mobile and address.
fn registry_csv(gen: &Gen) -> String {
    let mut out = "codice_fiscale;given_names;surname;birth_date;email;mobile;address;deceased;serial;expiry;replaced_by\n".to_owned();
    for n in gen.cards() {
        out.push_str(&format!(
            "{};Lucia;Mondella {};1985-12-10;h{n}@example.it;{};Via Manzoni {n}, 20121 Milano;false;{};2035-12-31;\n",
            codice_fiscale(n),
            letters(n),
            mobile(n),
            serial(n)
        ));
    }
    out
}

/// The model's lifecycle action of a state change.
fn lifecycle(action: &str) -> Option<Life> {
    match action {
        "card.activate" | "card.reactivate" => Some(Life::Active),
        "card.suspend" => Some(Life::Suspended),
        _ => None,
    }
}

#[derive(Debug)]
enum Op {
    Import,
    Registry(usize),
    Activate(u64),
    Suspend(u64),
    Reactivate(u64),
    Dispatch(u64),
    Print(usize),
    Rotate,
    Status(u64),
    Search(u64),
}

fn choose(m: &Model, rng: &mut Rng) -> Op {
    let waiting = m
        .gens
        .iter()
        .position(|g| g.imported == Known::Yes && g.registered == Known::No);
    let printable: Vec<usize> = m
        .gens
        .iter()
        .enumerate()
        .filter(|(_, g)| g.registered == Known::Yes && g.batch.is_some())
        .map(|(i, _)| i)
        .collect();
    let r = rng.below(100);
    if m.cards.is_empty() || r < 4 {
        return match waiting {
            Some(i) => Op::Registry(i),
            None => Op::Import,
        };
    }
    if r < 8 {
        return match waiting {
            Some(i) => Op::Registry(i),
            None => Op::Import,
        };
    }
    if r < 12 && !printable.is_empty() {
        return Op::Print(printable[rng.below(printable.len() as u64) as usize]);
    }
    if r < 14 {
        return Op::Rotate;
    }
    let serials: Vec<u64> = m.cards.keys().copied().collect();
    let n = serials[rng.below(serials.len() as u64) as usize];
    if r < 20 {
        return Op::Status(n);
    }
    if r < 24 {
        return Op::Search(n);
    }
    let card = &m.cards[&n];
    match (card.life, kind_of(n)) {
        (Life::Issued, _) => Op::Activate(n),
        (Life::Suspended, _) => Op::Reactivate(n),
        (Life::Active, Kind::Lifecycle) => Op::Suspend(n),
        (Life::Active, _) if card.dispatch == Known::No => Op::Dispatch(n),
        _ => Op::Status(n),
    }
}

/// The answer of a workload request that must succeed; anything else fails the test.
fn answer(what: &str, reply: (u16, Value), want: u16) -> Value {
    assert_eq!(reply.0, want, "{what}: {}", reply.1);
    reply.1
}

/// Runs one operation. `Err` when the server died under it (the model then holds it as
/// unknown).
async fn step(api: &Api, m: &mut Model, op: Op) -> Result<(), String> {
    match op {
        Op::Import => {
            let g = m.gens.len() as u64 + 1;
            m.gens.push(Gen {
                g,
                batch: None,
                imported: Known::Maybe,
                registered: Known::No,
            });
            m.under_way = Some("import");
            let gen = (g - 1) * K + 1..=g * K;
            let reply = api
                .call(
                    "manufacturer",
                    reqwest::Method::POST,
                    &format!("/v1/batches?manufacturer=crash-{g}&expected_cards={K}"),
                    Some(("text/plain", cns_codes_file(gen, SALT))),
                )
                .await?;
            let body = answer("import", reply, 201);
            let last = m.gens.last_mut().unwrap();
            last.imported = Known::Yes;
            last.batch = Some(body["batch"].as_str().unwrap().to_owned());
            m.ack("import");
        }
        Op::Registry(i) => {
            m.gens[i].registered = Known::Maybe;
            m.under_way = Some("registry");
            let reply = api
                .call(
                    "cms",
                    reqwest::Method::POST,
                    "/v1/registry",
                    Some(("text/csv", registry_csv(&m.gens[i]))),
                )
                .await?;
            answer("registry", reply, 200);
            m.gens[i].registered = Known::Yes;
            for n in m.gens[i].cards() {
                m.cards.insert(n, new_card());
            }
            m.ack("registry");
        }
        Op::Activate(n) | Op::Suspend(n) | Op::Reactivate(n) => {
            let (who, path, body, to, what) = match op {
                Op::Activate(_) => (
                    "operator",
                    "activate",
                    identification(n),
                    Life::Active,
                    "activate",
                ),
                Op::Suspend(_) => (
                    "support",
                    "suspend",
                    json!({"reason": "lost"}),
                    Life::Suspended,
                    "suspend",
                ),
                _ => ("cms", "reactivate", json!({}), Life::Active, "reactivate"),
            };
            let card = m.cards.get_mut(&n).unwrap();
            card.pending = Some(to);
            card.touched = true;
            m.under_way = Some(what);
            let reply = api
                .post(who, &format!("/v1/cards/{}/{path}", serial(n)), body)
                .await?;
            let body = answer(what, reply, 200);
            assert_eq!(body["state"], to.name(), "{what} of card {n}: {body}");
            let card = m.cards.get_mut(&n).unwrap();
            card.life = to;
            card.pending = None;
            card.events += 1;
            m.ack(what);
        }
        Op::Dispatch(n) => {
            let plan = if kind_of(n) == Kind::Email {
                "email"
            } else {
                "sms"
            };
            let card = m.cards.get_mut(&n).unwrap();
            card.dispatch = Known::Maybe;
            card.touched = true;
            m.under_way = Some("dispatch");
            let reply = api
                .post(
                    "cms",
                    &format!("/v1/cards/{}/dispatch", serial(n)),
                    json!({ "plan": plan }),
                )
                .await?;
            answer("dispatch", reply, 201);
            m.cards.get_mut(&n).unwrap().dispatch = Known::Yes;
            m.ack("dispatch");
        }
        Op::Print(i) => {
            let batch = m.gens[i].batch.clone().unwrap();
            m.under_way = Some("print");
            let (status, body) = api
                .post("cms", "/v1/mailers/runs", json!({ "batch": batch }))
                .await?;
            if status == 409 && body["error"]["reason"] == "print_run_going" {
                m.under_way = None;
                return Ok(());
            }
            let body = answer("print run", (status, body), 202);
            m.runs.insert(body["run"].as_u64().unwrap(), false);
            m.ack("print");
        }
        Op::Rotate => {
            let (status, body) = api
                .post(
                    "officer",
                    "/v1/keys/proposals",
                    json!({"op": "rotate", "reason": "crash loop rotation"}),
                )
                .await?;
            let body = answer("rotate proposal", (status, body), 201);
            let id = match &body["proposal"]["id"] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            m.rotation_pending = true;
            m.under_way = Some("rotate");
            let (status, body) = api
                .post(
                    "officer2",
                    &format!("/v1/keys/proposals/{id}/approve"),
                    json!({}),
                )
                .await?;
            m.rotation_pending = false;
            if status == 409 && body["error"]["reason"] == "job_unfinished" {
                // A rotation's job still runs: nothing changed, the proposal stays open.
                m.under_way = None;
                return Ok(());
            }
            answer("rotate approval", (status, body), 202);
            m.rotations += 1;
            m.ack("rotate");
        }
        Op::Status(n) => {
            let reply = api.get("cms", &format!("/v1/cards/{}", serial(n))).await?;
            let body = answer("status", reply, 200);
            assert_eq!(
                body["state"],
                m.cards[&n].life.name(),
                "card {n} between two acknowledged changes: {body}"
            );
        }
        Op::Search(n) => {
            let reply = api
                .post(
                    "operator",
                    "/v1/holders/search",
                    json!({ "codice_fiscale": codice_fiscale(n) }),
                )
                .await?;
            answer("holder search", reply, 200);
        }
    }
    Ok(())
}

fn new_card() -> Card {
    Card {
        life: Life::Issued,
        pending: None,
        events: 0,
        dispatch: Known::No,
        touched: false,
    }
}

/// Runs operations until the server dies under one; hands the model back.
async fn workload(api: Api, mut m: Model, mut rng: Rng) -> Model {
    loop {
        let op = choose(&m, &mut rng);
        if step(&api, &mut m, op).await.is_err() {
            return m;
        }
    }
}

/// Where the test keeps things.
struct Paths {
    data: PathBuf,
    config: PathBuf,
    listen: String,
}

fn start(p: &Paths) -> Server {
    let mut cmd = plico();
    cmd.env("RUST_LOG", "warn")
        .env("PLICO_MAILERS_PER_FILE", PER_FILE.to_string())
        .args(["serve", "--dev", "--listen", &p.listen, "--data"])
        .arg(&p.data)
        .arg("--config")
        .arg(&p.config);
    Server::start(cmd)
}

/// Every event of a card's history (all pages).
async fn history(api: &Api, n: u64) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = api
            .read(
                "operator",
                &format!("/v1/cards/{}/history?after={after}", serial(n)),
            )
            .await;
        out.extend(page["events"].as_array().unwrap().iter().cloned());
        match page["next"].as_u64() {
            Some(next) => after = next,
            None => return out,
        }
    }
}

/// What the checker saw, for the report.
#[derive(Debug, Default)]
struct Checked {
    checks: u64,
    cards: u64,
    print_files: u64,
}

/// The checker: the vault against the model; resolves what the kill left unknown.
async fn check(api: &Api, m: &mut Model, rng: &mut Rng, p: &Paths, all: bool, seen: &mut Checked) {
    seen.checks += 1;
    // The audit chain.
    let report = api.read("auditor", "/v1/audit/verify").await;
    assert!(report["problem"].is_null(), "the audit chain: {report}");

    // Batches: whole or absent; acknowledged ones there.
    let listed = api.read("admin", "/v1/batches?limit=1000").await;
    let mut by_gen: BTreeMap<u64, Value> = BTreeMap::new();
    for b in listed["batches"].as_array().unwrap() {
        let g: u64 = b["manufacturer"]
            .as_str()
            .and_then(|s| s.strip_prefix("crash-"))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("a batch the client never sent: {b}"));
        assert_eq!(b["state"], "committed", "{b}");
        assert_eq!(b["cards"], K, "{b}");
        assert!(
            by_gen.insert(g, b.clone()).is_none(),
            "two batches of generation {g}"
        );
    }
    let mut resolutions = Vec::new();
    for gen in &mut m.gens {
        let listed = by_gen.get(&gen.g);
        match (gen.imported, listed) {
            (Known::Yes, Some(b)) => {
                assert_eq!(
                    b["id"].as_str(),
                    gen.batch.as_deref(),
                    "generation {}",
                    gen.g
                );
            }
            (Known::Yes, None) => panic!("acknowledged batch of generation {} is gone", gen.g),
            (Known::No, Some(b)) => panic!("a batch of generation {} never sent: {b}", gen.g),
            (Known::No, None) => {}
            (Known::Maybe, found) => {
                gen.imported = if found.is_some() {
                    Known::Yes
                } else {
                    Known::No
                };
                gen.batch = found.map(|b| b["id"].as_str().unwrap().to_owned());
                resolutions.push(("import", found.is_some()));
            }
        }
    }
    for (what, applied) in resolutions {
        m.resolved(what, applied);
    }
    // Only the last import can be cut; one that did not happen is sent again as new.
    while m.gens.last().is_some_and(|g| g.imported == Known::No) {
        m.gens.pop();
    }

    // Registry files: whole or absent.
    let cut_registries: Vec<usize> = m
        .gens
        .iter()
        .enumerate()
        .filter(|(_, g)| g.registered == Known::Maybe)
        .map(|(i, _)| i)
        .collect();
    for i in cut_registries {
        let mut known = 0;
        for n in m.gens[i].cards() {
            let (status, body) = api
                .status_of("cms", &format!("/v1/cards/{}", serial(n)))
                .await;
            match status {
                200 => known += 1,
                404 => {}
                _ => panic!("card {n}: {status} {body}"),
            }
        }
        assert!(
            known == 0 || known == K,
            "a registry file half applied: {known} of {K} cards of generation {}",
            m.gens[i].g
        );
        let applied = known == K;
        m.resolved("registry", applied);
        m.gens[i].registered = if applied { Known::Yes } else { Known::No };
        if applied {
            for n in m.gens[i].cards() {
                m.cards.insert(n, new_card());
            }
        }
    }

    // Cards: state with its events, dispatches with their jobs.
    let all_serials: Vec<u64> = m.cards.keys().copied().collect();
    let mut picked: BTreeSet<u64> = m
        .cards
        .iter()
        .filter(|(_, c)| all || c.touched || c.pending.is_some() || c.dispatch == Known::Maybe)
        .map(|(n, _)| *n)
        .collect();
    for _ in 0..6 {
        if !all_serials.is_empty() {
            picked.insert(all_serials[rng.below(all_serials.len() as u64) as usize]);
        }
    }
    for n in picked {
        check_card(api, m, n, all).await;
        seen.cards += 1;
    }

    // Print runs and files.
    for (id, seen_run) in m.runs.iter_mut() {
        if *seen_run && !all {
            continue;
        }
        let run = api.read("cms", &format!("/v1/mailers/runs/{id}")).await;
        assert_ne!(run["state"], "running", "run {id} after a restart: {run}");
        *seen_run = true;
    }
    seen.print_files += check_print_dir(&p.data.join("print"));

    // Key terms: one per rotation done (a job cut by the kill resumes after the unseal: wait
    // for it), and every acknowledged rotation done.
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let list = api.read("auditor", "/v1/keys/proposals").await;
        let proposals = list["proposals"].as_array().unwrap().clone();
        if !proposals.iter().any(|p| p["state"] == "running") {
            break proposals
                .iter()
                .filter(|p| {
                    (p["op"] == "rotate" || p["op"]["op"] == "rotate") && p["state"] == "done"
                })
                .count();
        }
        assert!(
            Instant::now() < deadline,
            "a key job still runs a minute after the restart: {list}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let status = api.read("officer", "/v1/sys/status").await;
    let terms = status["terms"].as_array().unwrap().len();
    assert_eq!(
        terms,
        1 + done,
        "KEK terms against rotations done: {status}"
    );
    let high = m.rotations + usize::from(m.rotation_pending);
    assert!(
        (m.rotations..=high).contains(&done),
        "{done} rotations done after {} acknowledged (one cut: {})",
        m.rotations,
        m.rotation_pending
    );
    if m.rotation_pending {
        m.resolved("rotate", done == high);
        m.rotations = done;
        m.rotation_pending = false;
    }
    m.under_way = None;
}

/// One card against the model.
async fn check_card(api: &Api, m: &mut Model, n: u64, all: bool) {
    let body = api.read("cms", &format!("/v1/cards/{}", serial(n))).await;
    let state = Life::parse(body["state"].as_str().unwrap());
    let dispatches = body["dispatches"].as_array().unwrap().clone();
    let events: Vec<Life> = history(api, n)
        .await
        .iter()
        .filter_map(|e| lifecycle(e["action"].as_str().unwrap_or("")))
        .collect();
    let mailers = api
        .read("cms", &format!("/v1/cards/{}/mailers", serial(n)))
        .await;
    let outstanding = mailers
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["state"] == "outstanding")
        .count();
    assert!(
        outstanding <= 1,
        "card {n} has two printable mailers: {mailers}"
    );

    let mut resolved = Vec::new();
    let card = m.cards.get_mut(&n).unwrap();
    if let Some(to) = card.pending.take() {
        let what = match (card.life, to) {
            (Life::Issued, _) => "activate",
            (_, Life::Suspended) => "suspend",
            _ => "reactivate",
        };
        assert!(
            state == card.life || state == to,
            "card {n} is {state:?}: acknowledged {:?}, a change to {to:?} cut",
            card.life
        );
        let applied = state == to;
        if applied {
            card.events += 1;
        }
        resolved.push((what, applied));
        card.life = state;
    }
    assert_eq!(state, card.life, "card {n}: {body}");
    assert_eq!(
        events.len(),
        card.events,
        "card {n}: lifecycle events {events:?} for {} acknowledged changes",
        card.events
    );
    assert_eq!(
        events.last().copied().unwrap_or(Life::Issued),
        state,
        "card {n}: its last lifecycle event against its state"
    );
    match (card.dispatch, dispatches.len()) {
        (Known::Yes, 1) | (Known::No, 0) => {}
        (Known::Maybe, 0 | 1) => {
            let applied = dispatches.len() == 1;
            resolved.push(("dispatch", applied));
            card.dispatch = if applied { Known::Yes } else { Known::No };
        }
        (k, d) => panic!("card {n}: dispatch {k:?}, {d} dispatches: {body}"),
    }
    for d in &dispatches {
        let jobs = d["jobs"].as_array().unwrap();
        assert!(!jobs.is_empty(), "card {n}: a dispatch without jobs: {d}");
        if all {
            for j in jobs {
                let s = j["state"].as_str().unwrap();
                assert!(
                    matches!(s, "sent" | "delivered" | "dead"),
                    "card {n}: a job ended {s}: {j}"
                );
            }
        }
    }
    card.touched = false;
    for (what, applied) in resolved {
        m.resolved(what, applied);
    }
}

/// The print directory after a restart: every file with its manifest and every manifest with
/// its file, of the recorded size; nothing partial. The number of files.
fn check_print_dir(out: &Path) -> u64 {
    let names: BTreeSet<String> = match std::fs::read_dir(out) {
        Ok(d) => d
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect(),
        Err(_) => return 0,
    };
    let mut files = 0;
    for name in &names {
        assert!(
            !name.ends_with(".partial"),
            "a partial print output left: {name}"
        );
        if let Some(stem) = name.strip_suffix(".manifest.json") {
            let manifest: Value =
                serde_json::from_slice(&std::fs::read(out.join(name)).unwrap()).unwrap();
            let sealed = format!("{stem}.pdf.age");
            assert!(
                names.contains(&sealed),
                "a manifest without its file: {name}"
            );
            assert_eq!(
                std::fs::metadata(out.join(&sealed)).unwrap().len(),
                manifest["sealed_bytes"].as_u64().unwrap(),
                "{sealed} against its manifest"
            );
            files += 1;
        }
        if let Some(stem) = name.strip_suffix(".pdf.age") {
            assert!(
                names.contains(&format!("{stem}.manifest.json")),
                "a print file without its manifest: {name}"
            );
        }
    }
    files
}

/// The accounts of the workload, made on a first clean run.
async fn make_accounts(url: &str, data: &Path) -> Tokens {
    let admin = std::fs::read_to_string(data.join("admin-token.txt"))
        .unwrap()
        .trim()
        .to_owned();
    let client = http_client(None);
    let mut tokens = Tokens::new();
    for (name, role) in [
        ("manufacturer", "manufacturer"),
        ("cms", "cms"),
        ("operator", "operator"),
        ("support", "support"),
        ("officer", "officer"),
        ("officer2", "officer"),
        ("auditor", "auditor"),
    ] {
        let res = client
            .post(format!("{url}/v1/accounts"))
            .bearer_auth(&admin)
            .json(&json!({"name": format!("crash {name}"), "role": role}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 201);
        let v: Value = res.json().await.unwrap();
        tokens.insert(name, v["token"].as_str().unwrap().to_owned());
    }
    tokens.insert("admin", admin);
    tokens
}

/// Every job of every dispatched card, once none is left to go out; `(channel, state)` each.
async fn settled_jobs(api: &Api, m: &Model) -> Vec<(String, String)> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut jobs = Vec::new();
        for (n, c) in &m.cards {
            if c.dispatch != Known::Yes {
                continue;
            }
            let body = api.read("cms", &format!("/v1/cards/{}", serial(*n))).await;
            for d in body["dispatches"].as_array().unwrap() {
                for j in d["jobs"].as_array().unwrap() {
                    jobs.push((
                        j["channel"].as_str().unwrap().to_owned(),
                        j["state"].as_str().unwrap().to_owned(),
                    ));
                }
            }
        }
        let proposals = api.read("auditor", "/v1/keys/proposals").await;
        let running = proposals["proposals"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["state"] == "running");
        let open = jobs
            .iter()
            .filter(|(_, s)| !matches!(s.as_str(), "sent" | "delivered" | "dead"))
            .count();
        if open == 0 && !running {
            return jobs;
        }
        assert!(
            Instant::now() < deadline,
            "{open} jobs not sent, or a key job running ({running}), 2 minutes after the last kill"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The messages the fake SMSC got (its `Got message N: <from to text>` lines), by recipient.
fn sms_by_number(log: &str, numbers: &BTreeSet<String>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for line in log.lines().filter(|l| l.contains("Got message")) {
        for num in numbers {
            let bare = num.trim_start_matches('+');
            if line.contains(bare) {
                *out.entry(num.clone()).or_default() += 1;
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_workload_survives_sigkill_at_random_moments() {
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let loops: u64 = std::env::var("CRASH_LOOPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_LOOPS);
    eprintln!("crash loops: CRASH_SEED={seed} CRASH_LOOPS={loops}");
    let began = Instant::now();
    let mut rng = Rng(seed);
    let tmp = tempfile::tempdir().unwrap();

    let sink_dir = tmp.path().join("sink");
    std::fs::create_dir(&sink_dir).unwrap();
    let (_sink, smtp_port) = smtp_sink(&sink_dir, true, &[]).await;
    let mail = sink_dir.join("mail");
    let kannel_dir = tmp.path().join("kannel");
    std::fs::create_dir(&kannel_dir).unwrap();
    let kannel = Kannel::start(&kannel_dir).await;

    let port = free_ports(1)[0];
    let p = Paths {
        data: tmp.path().join("data"),
        config: tmp.path().join("plico.toml"),
        listen: format!("127.0.0.1:{port}"),
    };
    std::fs::write(
        &p.config,
        format!(
            "[limits]\nsensitive_per_minute = 1000000\n\n\
             [dispatch]\nemail_per_second = 1000\nsms_per_second = 1000\n\
             max_in_flight = {MAX_IN_FLIGHT}\nmax_attempts = 5\nbackoff_base_ms = 200\n\
             backoff_cap_ms = 1000\n\n\
             [dispatch.smtp]\nhost = \"127.0.0.1\"\nport = {smtp_port}\ntls = \"none\"\n\
             from = \"pin@regione.esempio.it\"\nmax_connections = 4\n\n\
             [dispatch.sms]\nsendsms_url = \"http://127.0.0.1:{}/cgi-bin/sendsms\"\n\
             username = \"plico\"\npassword = \"s3cret\"\nfrom = \"PLICO\"\n\
             dlr_url = \"http://127.0.0.1:{port}/v1/dlr?token={DLR_TOKEN}&key=%KEY%&status=%d\"\n\
             dlr_token = \"{DLR_TOKEN}\"\n",
            kannel.sendsms_port
        ),
    )
    .unwrap();

    // A first clean run makes the data directory and the accounts.
    let server = start(&p);
    let tokens = Arc::new(make_accounts(&server.url, &p.data).await);
    let (status, stderr) = server.terminate();
    assert!(status.success(), "{stderr}");

    let mut model = Model::default();
    let mut seen = Checked::default();
    let mut server = start(&p);
    for round in 1..=loops {
        let api = Api::new(&server.url, &tokens);
        let job = tokio::spawn(workload(api, model, Rng(rng.next())));
        let delay = Duration::from_millis(rng.below(MAX_DELAY_MS));
        tokio::time::sleep(delay).await;
        server.sigkill();
        model = job.await.unwrap();
        let cut = model.under_way.unwrap_or("-");
        server = start(&p);
        let api = Api::new(&server.url, &tokens);
        check(&api, &mut model, &mut rng, &p, false, &mut seen).await;
        eprintln!(
            "crash loops: round {round}: killed after {delay:?} (cut: {cut}); {} batches, {} cards, {} rotations",
            model.gens.len(),
            model.cards.len(),
            model.rotations
        );
    }

    // The end: everything goes out; every card checked; the peers' mail counted.
    let api = Api::new(&server.url, &tokens);
    let jobs = settled_jobs(&api, &model).await;
    check(&api, &mut model, &mut rng, &p, true, &mut seen).await;
    let email_sent = jobs
        .iter()
        .filter(|(c, s)| c == "email" && matches!(s.as_str(), "sent" | "delivered"))
        .count();
    let bound = loops as usize * MAX_IN_FLIGHT;
    let all = messages(&mail);
    let ids: BTreeSet<&String> = all.iter().map(|m| &m.1).collect();
    assert!(
        all.iter().all(|m| !m.1.is_empty()),
        "a message without Message-ID"
    );
    let email_duplicates = all.len() - ids.len();
    assert_eq!(
        ids.len(),
        email_sent,
        "distinct e-mails against e-mail jobs sent"
    );
    assert!(
        email_duplicates <= bound,
        "{email_duplicates} e-mail duplicates after {loops} kills of {MAX_IN_FLIGHT} in flight"
    );

    let sms_numbers: BTreeSet<String> = model
        .cards
        .iter()
        .filter(|(n, c)| kind_of(**n) == Kind::Sms && c.dispatch == Known::Yes)
        .map(|(n, _)| mobile(*n))
        .collect();
    let sms_sent = jobs
        .iter()
        .filter(|(c, s)| c == "sms" && matches!(s.as_str(), "sent" | "delivered"))
        .count();
    let deadline = Instant::now() + Duration::from_secs(60);
    let by_number = loop {
        let by = sms_by_number(&kannel.fakesmsc_log(), &sms_numbers);
        if by.len() >= sms_sent || Instant::now() > deadline {
            break by;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        by_number.len(),
        sms_sent,
        "distinct SMS recipients against SMS jobs sent"
    );
    let sms_total: usize = by_number.values().sum();
    let sms_duplicates = sms_total - by_number.len();
    assert!(
        sms_duplicates <= bound,
        "{sms_duplicates} SMS duplicates after {loops} kills of {MAX_IN_FLIGHT} in flight"
    );

    let (status, stderr) = server.terminate();
    assert!(status.success(), "{stderr}");
    let server = start(&p);
    let api = Api::new(&server.url, &tokens);
    let report = api.read("auditor", "/v1/audit/verify").await;
    assert!(report["problem"].is_null(), "the audit chain: {report}");
    let (status, stderr) = server.terminate();
    assert!(status.success(), "{stderr}");

    eprintln!(
        "crash loops: CRASH_SEED={seed}: {loops} kills survived in {:?}; {} checks ({} card checks \
         with history, {} print files paired at the last); acknowledged {:?}; cut by a kill \
         (cut, applied) {:?}; {} batches, {} cards, {} rotations; e-mail: {} messages, {} jobs, \
         {email_duplicates} duplicates; SMS: {sms_total} messages, {sms_sent} jobs, \
         {sms_duplicates} duplicates (bound {bound} a channel)",
        began.elapsed(),
        seen.checks,
        seen.cards,
        seen.print_files,
        model.acked,
        model.cut,
        model.gens.len(),
        model.cards.len(),
        model.rotations,
        all.len(),
        email_sent,
    );
}
