//! Damaged disks (issue 21): a small real vault on disk — a sled store with two imported
//! code batches, a registry of holders, cards activated and suspended, dispatch jobs, the audit
//! chain — and a simulated HSM beside it, closed, then damaged one file at a time.
//!
//! Each case copies the vault, damages one file of the copy (random bytes flipped, or the file
//! cut at a random offset) and hands the copy to a child process (this test binary again,
//! running only [`damaged_vault_child`]), which opens the store, opens and unseals the HSM,
//! opens the service's state over them and reads back every card's codes and lifecycle state,
//! as the service would. A child keeps a crash, an abort or a hang of the damaged vault away
//! from the test, and a panic that reached it is a panic that would reach the user. Each case
//! ends in one of:
//!
//! - a refusal naming the damage: at the store's open (the store's directory), at the state's
//!   open (the store and what in it), at the unseal (the HSM's state file, or the audit chain
//!   and its event), or at the read of a card (its serial);
//! - a correct vault: every code read back equals the imported one, every card's state and
//!   parts are those the service acknowledged;
//!
//! and never in a wrong code, a wrong state, a card missing without a refusal, a panic, a crash
//! or a hang. No message holds a code. The outcomes are counted and printed.
//!
//! `DAMAGE_SEED=N` replays a run (the seed is printed); `DAMAGE_CASES=N` sets the cases per
//! kind of file (40 by default, so CI stays short): the store's files (`conf`, `db`, the
//! snapshots, the blobs, each in turn) and the HSM's state file.

use super::batches::{codes_of, mix, serial};
use super::support::{cf, codes_file, identification, open_with_accounts, Client};
use super::*;
use cards::check_character;
use std::collections::BTreeMap;
use vault::{Actor, CodePolicy, SledStore};

const SALT: u64 = 0x6461_6d61_6765;
/// The first card; cards `FIRST..FIRST + CODED` have codes (two batches), the first `HOLDERS`
/// of them are in the registry.
const FIRST: u64 = 901;
const CODED: u64 = 60;
const HOLDERS: u64 = 12;
/// Cases per kind of file when `DAMAGE_CASES` is not set.
const DEFAULT_CASES: usize = 40;
/// A child that has not answered by then is hung.
const CHILD_TIMEOUT: Duration = Duration::from_secs(120);

/// The damaged copy the child examines.
const CHILD_DIR_ENV: &str = "DAMAGE_CHILD_DIR";
/// The file holding what the vault held before the damage ([`Expected`]).
const CHILD_EXPECTED_ENV: &str = "DAMAGE_CHILD_EXPECTED";
/// The line the child prints its outcome on.
const OUTCOME_PREFIX: &str = "DAMAGE-OUTCOME ";

/// One card as the service acknowledged it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Card {
    serial: String,
    pin: String,
    puk: String,
    /// Lifecycle state, for cards in the registry.
    state: Option<String>,
    /// Parts of its dispatch.
    parts: usize,
}

/// What the vault held when it was closed, and the dev HSM's share.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Expected {
    share: String,
    cards: Vec<Card>,
}

/// How one case ended.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Outcome {
    /// `intact`, `refused_<where>`, `wrong`, `missing`, or (made by the parent) `panic`,
    /// `crash`, `hang`.
    kind: String,
    detail: String,
}

impl Outcome {
    fn new(kind: &str, detail: impl std::fmt::Display) -> Outcome {
        Outcome {
            kind: kind.to_owned(),
            detail: detail.to_string(),
        }
    }
}

/// A codice fiscale for holder `n` (born 1985-12-10).
fn codice_fiscale(n: u64) -> String {
    let mut letters = [b'A'; 6];
    let mut v = n;
    for l in letters.iter_mut().rev() {
        *l = b'A' + (v % 26) as u8;
        v /= 26;
    }
    let first15 = format!("{}85T10A562", String::from_utf8_lossy(&letters));
    assert!(check_character(&first15).is_some());
    cf(&first15)
}

fn registry_csv() -> String {
    let mut out = "codice_fiscale;given_names;surname;birth_date;email;mobile;address;deceased;serial;expiry;replaced_by\n".to_owned();
    for n in FIRST..FIRST + HOLDERS {
        out.push_str(&format!(
            "{};Lucia;Mondella;1985-12-10;;+39333{:07};Via Manzoni {n}, 20121 Milano;false;{};2032-12-31;\n",
            codice_fiscale(n),
            n,
            serial(n)
        ));
    }
    out
}

fn card_uri(n: u64, action: &str) -> String {
    format!("/v1/cards/{}/{action}", serial(n))
}

/// Settings of the vault: CIE codes (8 and 8 digits).
fn settings() -> plico::Settings {
    plico::Settings {
        codes: CodePolicy::CIE,
        // The workload is not about rate limits.
        sensitive_per_minute: std::num::NonZeroU32::new(100_000).unwrap(),
        ..plico::Settings::default()
    }
}

/// Builds the vault in `base` through the API, closes it, and returns what it holds.
fn build_vault(base: &Path) -> Expected {
    std::fs::create_dir_all(base).unwrap();
    let mut share = None;
    let hsm = Arc::new(
        SimulatedHsm::dev_keeping_share(base, &mut |s: &SecretString| {
            share = Some(s.expose_secret().to_owned());
            Ok(())
        })
        .unwrap(),
    );
    let store = Arc::new(SledStore::open(&base.join("store")).unwrap());
    let state = AppState::with_settings(hsm, store, &settings()).unwrap();
    let staff = open_with_accounts(&state, &["manufacturer", "cms", "operator"]);
    let client = Client::new(&state, staff.tokens);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cards = rt.block_on(async {
        let a = client
            .post_raw("cms", "/v1/registry", "text/csv", registry_csv())
            .await;
        assert_eq!(a.json["outcome"], "applied", "{}", a.text);
        let half = FIRST + CODED / 2;
        for (i, range) in [FIRST..=half - 1, half..=FIRST + CODED - 1]
            .into_iter()
            .enumerate()
        {
            let a = client
                .post_raw(
                    "manufacturer",
                    &format!("/v1/batches?manufacturer=ACME{i}"),
                    "text/plain",
                    codes_file(range, SALT),
                )
                .await;
            assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
        }
        for n in FIRST..FIRST + 8 {
            let a = client
                .post("operator", &card_uri(n, "activate"), identification(n))
                .await;
            assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        }
        for n in FIRST + 6..FIRST + 8 {
            let a = client
                .post("cms", &card_uri(n, "suspend"), json!({"reason": "lost"}))
                .await;
            assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        }
        for n in FIRST..FIRST + 4 {
            let a = client
                .post(
                    "cms",
                    &card_uri(n, "dispatch"),
                    json!({"plan": "counter(2)+sms"}),
                )
                .await;
            assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
        }
        let mut cards = Vec::new();
        for n in FIRST..FIRST + CODED {
            let (pin, puk) = codes_of(n, SALT);
            let (state, parts) = if n < FIRST + HOLDERS {
                let a = client.get("cms", &format!("/v1/cards/{}", serial(n))).await;
                assert_eq!(a.status, StatusCode::OK, "{}", a.text);
                (
                    Some(a.json["state"].as_str().unwrap().to_owned()),
                    a.json["parts"].as_array().unwrap().len(),
                )
            } else {
                (None, 0)
            };
            cards.push(Card {
                serial: serial(n),
                pin,
                puk,
                state,
                parts,
            });
        }
        cards
    });
    assert_eq!(cards.iter().filter(|c| c.parts == 2).count(), 4);
    state.shut_down().unwrap();
    drop(client);
    drop(state);
    drop(rt);
    // Wait until sled's threads have let the directory go: the copies are taken of a closed
    // store.
    drop(SledStore::open(&base.join("store")).unwrap());
    Expected {
        share: share.unwrap(),
        cards,
    }
}

/// The child's examination of the damaged vault in `dir`: what the service would find.
fn examine(dir: &Path, expected: &Expected) -> Outcome {
    let hsm = match SimulatedHsm::open(dir) {
        Ok(h) => Arc::new(h),
        Err(e) => return Outcome::new("refused_hsm_open", e),
    };
    let store = match SledStore::open(&dir.join("store")) {
        Ok(s) => Arc::new(s),
        Err(e) => return Outcome::new("refused_store_open", e),
    };
    let state = match AppState::with_settings(hsm.clone(), store, &settings()) {
        Ok(s) => s,
        Err(e) => return Outcome::new("refused_state_open", e),
    };
    match hsm.unseal(&SecretString::from(expected.share.clone())) {
        Ok(p) if !p.sealed => {}
        Ok(p) => return Outcome::new("refused_unseal", format!("still sealed: {p:?}")),
        Err(e) => return Outcome::new("refused_unseal", e),
    }
    let actor = Actor::system("damage test");
    if let Err(e) = state.unsealed(&actor, "test") {
        return Outcome::new("refused_unseal", e);
    }
    let today = cards::Date::today_utc();
    for card in &expected.cards {
        match super::support::release_from(&state.codes, &state.audit, &*state.hsm, &card.serial) {
            Err(e) => {
                return Outcome::new("refused_read", format!("card {}: {e}", card.serial));
            }
            Ok(None) => return Outcome::new("missing", &card.serial),
            Ok(Some(c)) => {
                if c.pin.expose_secret() != card.pin.as_bytes()
                    || c.puk.expose_secret() != card.puk.as_bytes()
                {
                    return Outcome::new("wrong", format!("card {}: other codes", card.serial));
                }
            }
        }
        let Some(wanted) = &card.state else {
            continue;
        };
        match state.cms.status(&state.audit, &card.serial, today, &actor) {
            Err(e) => {
                return Outcome::new("refused_read", format!("card {}: {e}", card.serial));
            }
            Ok(s) => {
                if &s.state.to_string() != wanted || s.parts.len() != card.parts {
                    return Outcome::new(
                        "wrong",
                        format!(
                            "card {}: {} with {} parts, not {wanted} with {}",
                            card.serial,
                            s.state,
                            s.parts.len(),
                            card.parts
                        ),
                    );
                }
            }
        }
    }
    match state.audit.verify() {
        Ok(r) if r.problem.is_none() => Outcome::new("intact", "every code and state read back"),
        Ok(r) => Outcome::new("refused_verify", format!("{:?}", r.problem)),
        Err(e) => Outcome::new("refused_verify", e),
    }
}

/// Run by the parent as a child process on one damaged copy (see the module docs); without
/// its environment it does nothing.
#[test]
fn damaged_vault_child() {
    let (Some(dir), Some(expected)) = (
        std::env::var_os(CHILD_DIR_ENV),
        std::env::var_os(CHILD_EXPECTED_ENV),
    ) else {
        return;
    };
    let expected: Expected = serde_json::from_slice(&std::fs::read(expected).unwrap()).unwrap();
    let outcome = examine(Path::new(&dir), &expected);
    println!(
        "{OUTCOME_PREFIX}{}",
        serde_json::to_string(&outcome).unwrap()
    );
}

/// Runs [`damaged_vault_child`] on `dir`; its outcome, or `panic`, `crash` or `hang`.
fn run_child(dir: &Path, expected: &Path) -> Outcome {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "damaged_store::damaged_vault_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR_ENV, dir)
        .env(CHILD_EXPECTED_ENV, expected)
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Drain the pipes on their own threads, so a chatty child never blocks on a full pipe.
    let drain = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let began = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if began.elapsed() > CHILD_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    let Some(status) = status else {
        return Outcome::new("hang", format!("no answer in {CHILD_TIMEOUT:?}"));
    };
    // The harness may print its `test … ` on the same line, before the outcome.
    let outcome = out.lines().find_map(|l| {
        l.find(OUTCOME_PREFIX)
            .map(|at| &l[at + OUTCOME_PREFIX.len()..])
    });
    if let Some(line) = outcome {
        if status.success() {
            return serde_json::from_str(line).unwrap();
        }
    }
    let tail: String = format!("{out}\n{err}")
        .lines()
        .filter(|l| l.contains("panicked") || l.contains("error") || l.contains("Error"))
        .take(6)
        .collect::<Vec<_>>()
        .join(" | ");
    match status.code() {
        Some(_) => Outcome::new("panic", format!("{status}: {tail}")),
        None => Outcome::new("crash", format!("{status}: {tail}")),
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(1);
        mix(self.0)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

/// Damages `file` one of three ways, and says how: cut at a random offset; one to four random
/// bytes flipped (each XORed with a non-zero byte); or one digit or hex letter replaced by
/// another (text stays text: a JSON file still parses, with another value). Half the offsets
/// fall in the written part of the file (up to its last non-zero byte: sled's log is a
/// preallocated segment), where damage matters most.
fn damage(file: &Path, rng: &mut Rng) -> String {
    let mut bytes = std::fs::read(file).unwrap();
    let len = bytes.len() as u64;
    if len == 0 {
        return "empty, left alone".to_owned();
    }
    let written = bytes
        .iter()
        .rposition(|b| *b != 0)
        .map_or(len, |i| i as u64 + 1);
    let offset = |rng: &mut Rng| {
        if rng.next() % 2 == 0 {
            rng.below(written)
        } else {
            rng.below(len)
        }
    };
    match rng.next() % 3 {
        0 => {
            let at = offset(rng);
            bytes.truncate(at as usize);
            std::fs::write(file, &bytes).unwrap();
            format!("cut at {at} of {len}")
        }
        1 => {
            let count = 1 + rng.below(4);
            let mut at = Vec::new();
            for _ in 0..count {
                let i = offset(rng) as usize;
                bytes[i] ^= 1 + rng.below(255) as u8;
                at.push(i);
            }
            std::fs::write(file, &bytes).unwrap();
            format!("bytes {at:?} of {len} flipped")
        }
        _ => {
            const HEX: &[u8] = b"0123456789abcdef";
            let start = offset(rng) as usize;
            let Some(i) = (start..bytes.len())
                .chain(0..start)
                .find(|i| HEX.contains(&bytes[*i]))
            else {
                return "no digit to change, left alone".to_owned();
            };
            let was = bytes[i];
            let mut now = was;
            while now == was {
                now = HEX[rng.below(HEX.len() as u64) as usize];
            }
            bytes[i] = now;
            std::fs::write(file, &bytes).unwrap();
            format!(
                "digit at {i} of {len} changed from {} to {}",
                char::from(was),
                char::from(now)
            )
        }
    }
}

/// Every regular file under `dir`, relative to it, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                todo.push(e.path());
            } else if t.is_file() {
                out.push(e.path().strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Whether a refusal's message names the damage: where it was found (`dir`'s files) or
/// what (the store's tree, the audit chain, the HSM's state, a card).
fn names_damage(o: &Outcome, dir: &Path) -> bool {
    let d = &o.detail;
    let named_file = d.contains(&dir.display().to_string());
    match o.kind.as_str() {
        "refused_hsm_open" => d.contains("hsm-state.json"),
        "refused_store_open" => named_file && d.contains("store"),
        "refused_state_open" => {
            named_file
                || ["tree", "batch", "segment", "audit"]
                    .iter()
                    .any(|w| d.contains(w))
        }
        "refused_unseal" => ["hsm-state.json", "state file", "audit", "store"]
            .iter()
            .any(|w| d.contains(w)),
        "refused_read" => d.contains("card 8038"),
        "refused_verify" => d.contains("seq") || d.contains("event"),
        _ => false,
    }
}

/// A vault built and closed in `base` (in `tmp`), and what it holds, also in `expected_file`.
struct Built {
    tmp: tempfile::TempDir,
    base: PathBuf,
    expected_file: PathBuf,
    expected: Expected,
}

impl Built {
    fn new() -> Built {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("base");
        let expected = build_vault(&base);
        let expected_file = tmp.path().join("expected.json");
        std::fs::write(&expected_file, serde_json::to_vec(&expected).unwrap()).unwrap();
        Built {
            tmp,
            base,
            expected_file,
            expected,
        }
    }
}

/// Runs `cases` cases, each damaging the file `pick(case)` (relative to a copy of `base`);
/// returns the outcomes by kind, and asserts that each is a refusal naming the damage or a
/// correct vault.
fn run_cases(
    vault: &Built,
    what: &str,
    cases: usize,
    rng: &mut Rng,
    pick: &dyn Fn(usize) -> PathBuf,
) -> BTreeMap<String, u32> {
    let Built {
        tmp,
        base,
        expected_file,
        expected,
    } = vault;
    let tmp = tmp.path();
    let mut tally = BTreeMap::new();
    let mut bad = Vec::new();
    for case in 0..cases {
        let dir = tmp.join(format!("{what}-{case}"));
        copy_dir(base, &dir);
        let file = pick(case);
        let how = damage(&dir.join(&file), rng);
        let outcome = run_child(&dir, expected_file);
        eprintln!(
            "damage {what} {case}: {} {how}: {} ({})",
            file.display(),
            outcome.kind,
            outcome.detail
        );
        let acceptable = match outcome.kind.as_str() {
            "intact" => true,
            k if k.starts_with("refused_") => names_damage(&outcome, &dir),
            _ => false,
        };
        for c in &expected.cards {
            for code in [&c.pin, &c.puk] {
                assert!(
                    !outcome.detail.contains(code.as_str()),
                    "{what} {case}: a code in the message: {}",
                    outcome.detail
                );
            }
        }
        if !acceptable {
            bad.push(format!(
                "{what} {case} ({} {how}): {} {}",
                file.display(),
                outcome.kind,
                outcome.detail
            ));
        }
        *tally.entry(outcome.kind).or_insert(0) += 1;
        std::fs::remove_dir_all(&dir).unwrap();
    }
    eprintln!("damage {what}: {cases} cases: {tally:?}");
    assert!(bad.is_empty(), "unacceptable outcomes:\n{}", bad.join("\n"));
    tally
}

fn seed() -> u64 {
    env_or(
        "DAMAGE_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    )
}

#[test]
fn damaged_store_files_are_refused_by_name_or_read_back_right() {
    let seed = seed();
    let cases = env_or("DAMAGE_CASES", DEFAULT_CASES);
    eprintln!("damaged store test: DAMAGE_SEED={seed} DAMAGE_CASES={cases}");
    let vault = Built::new();

    // The undamaged copy reads back whole: the examination itself is sound.
    let whole = vault.tmp.path().join("whole");
    copy_dir(&vault.base, &whole);
    let o = run_child(&whole, &vault.expected_file);
    assert_eq!(o.kind, "intact", "{}", o.detail);
    std::fs::remove_dir_all(&whole).unwrap();

    let files = files_under(&vault.base.join("store"));
    eprintln!("damaged store test: the store's files: {files:?}");
    assert!(files.iter().any(|f| f == Path::new("db")), "{files:?}");
    let mut rng = Rng(seed);
    let tally = run_cases(&vault, "store", cases, &mut rng, &|case| {
        Path::new("store").join(&files[case % files.len()])
    });
    assert_eq!(tally.values().sum::<u32>() as usize, cases);
}

#[test]
fn a_damaged_hsm_state_file_is_refused_by_name_or_unseals_right() {
    let seed = seed();
    let cases = env_or("DAMAGE_CASES", DEFAULT_CASES);
    eprintln!("damaged hsm state test: DAMAGE_SEED={seed} DAMAGE_CASES={cases}");
    let vault = Built::new();
    let mut rng = Rng(seed);
    let tally = run_cases(&vault, "hsm", cases, &mut rng, &|_| {
        PathBuf::from(SimulatedHsm::STATE_FILE)
    });
    assert_eq!(tally.values().sum::<u32>() as usize, cases);
}

/// A print run's output directory damaged one file at a time: the start-up recovery
/// ([`plico::mailers::recover`]) and the print facility's own check between them never let a
/// damaged manifest or print file pass. After recovery, every manifest the facility can see
/// (at the top of the directory) says what the original said; a manifest that does not match
/// its record, or whose sealed file was cut, is moved to quarantine (a fresh one written from
/// the record when the sealed file is whole); a sealed file with bytes flipped keeps its size,
/// and age refuses it at the facility (or its clear PDF's SHA-256 differs from the manifest).
#[tokio::test]
async fn damaged_print_manifests_and_files_are_reported_never_accepted() {
    let seed = seed();
    let cases = env_or("DAMAGE_CASES", DEFAULT_CASES);
    eprintln!("damaged print test: DAMAGE_SEED={seed} DAMAGE_CASES={cases}");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let state = super::support::cie_state(&data, std::num::NonZeroU32::new(100_000).unwrap());
    let identity = age::x25519::Identity::generate();
    let cfg = tmp.path().join("plico.toml");
    std::fs::write(
        &cfg,
        format!(
            "[mailers]\nper_file = 2\nrecipients = [\"{}\"]\n[mailers.issuer]\nname = \"Regione Prova\"\n",
            identity.to_public()
        ),
    )
    .unwrap();
    let config = plico::config::Config::load(Some(&cfg)).unwrap();
    let print = config.mailers.print_setup(&data, None).unwrap();
    let state = state.with_print(print.clone());
    let staff = open_with_accounts(&state, &["manufacturer", "cms", "operator", "auditor"]);
    let client = Client::new(&state, staff.tokens);
    let a = client
        .post_raw("cms", "/v1/registry", "text/csv", registry_csv())
        .await;
    assert_eq!(a.json["outcome"], "applied", "{}", a.text);
    let a = client
        .post_raw(
            "manufacturer",
            "/v1/batches?manufacturer=ACME",
            "text/plain",
            codes_file(FIRST..=FIRST + HOLDERS - 1, SALT),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let batch = a.json["batch"].as_str().unwrap().to_owned();
    for n in FIRST..FIRST + HOLDERS {
        let a = client
            .post("operator", &card_uri(n, "activate"), identification(n))
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    }
    let a = client
        .post("cms", "/v1/mailers/runs", json!({"batch": batch}))
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    let run = a.json["run"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let a = client
            .get("auditor", &format!("/v1/mailers/runs/{run}"))
            .await;
        if a.json["state"] != "running" {
            assert_eq!(a.json["state"], "done", "{}", a.text);
            break;
        }
        assert!(Instant::now() < deadline, "run {run} did not end");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The facility's view of a directory: each top-level manifest, parsed, and whether its
    // sealed file opens with age to a PDF of the manifest's SHA-256 and the sealed size.
    let facility = |dir: &Path| -> BTreeMap<String, (Value, bool)> {
        let mut seen = BTreeMap::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            if !name.ends_with(".manifest.json") || name.starts_with('.') {
                continue;
            }
            let m: Value = serde_json::from_slice(&std::fs::read(dir.join(&name)).unwrap())
                .unwrap_or(Value::Null);
            let sealed = m["file"]
                .as_str()
                .and_then(|f| std::fs::read(dir.join(f)).ok());
            let good = sealed.is_some_and(|sealed| {
                sealed.len() as u64 == m["sealed_bytes"].as_u64().unwrap_or(u64::MAX)
                    && age::decrypt(&identity, &sealed).is_ok_and(|clear| {
                        let sha = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &clear);
                        m["sha256_clear_pdf"] == hex::encode(sha.as_ref())
                    })
            });
            seen.insert(name, (m, good));
        }
        seen
    };
    let base = tmp.path().join("print-base");
    copy_dir(&print.out_dir, &base);
    let original = facility(&base);
    assert_eq!(original.len() as u64, HOLDERS / 2, "{original:?}");
    assert!(original.values().all(|(_, good)| *good), "{original:?}");
    let mut files: Vec<String> = std::fs::read_dir(&base)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    files.sort();

    // The undamaged directory: recovery changes nothing.
    let setup_for = |dir: &Path| plico::mailers::PrintSetup {
        out_dir: dir.to_path_buf(),
        ..print.clone()
    };
    let whole = tmp.path().join("print-whole");
    copy_dir(&base, &whole);
    let r = plico::mailers::recover(&state.cms, &setup_for(&whole)).unwrap();
    assert_eq!(r, plico::mailers::Recovery::default());

    let mut rng = Rng(seed);
    let mut tally: BTreeMap<&str, u32> = BTreeMap::new();
    let mut bad = Vec::new();
    for case in 0..cases {
        let dir = tmp.path().join(format!("print-{case}"));
        copy_dir(&base, &dir);
        let file = &files[case % files.len()];
        let how = damage(&dir.join(file), &mut rng);
        let kind = match plico::mailers::recover(&state.cms, &setup_for(&dir)) {
            Err(e) => {
                let e = e.to_string();
                if !e.contains(&dir.display().to_string()) {
                    bad.push(format!(
                        "print {case} ({file} {how}): an error naming nothing: {e}"
                    ));
                }
                "refused"
            }
            Ok(r) => {
                let seen = facility(&dir);
                for (name, (m, good)) in &seen {
                    // What the facility may print says what the original said, and opens.
                    if original.get(name).map(|o| &o.0) != Some(m) {
                        bad.push(format!("print {case} ({file} {how}): {name} accepted: {m}"));
                    }
                    if !good && !file.ends_with(".pdf.age") {
                        bad.push(format!("print {case} ({file} {how}): {name} does not open"));
                    }
                }
                let refused_at_facility = seen.values().any(|(_, good)| !good);
                if !r.damaged.is_empty() {
                    "unprintable"
                } else if !r.rejected.is_empty() {
                    "manifest_replaced"
                } else if refused_at_facility {
                    "refused_by_age"
                } else {
                    "intact"
                }
            }
        };
        eprintln!("damage print {case}: {file} {how}: {kind}");
        *tally.entry(kind).or_insert(0) += 1;
        std::fs::remove_dir_all(&dir).unwrap();
    }
    eprintln!("damage print: {cases} cases: {tally:?}");
    assert!(bad.is_empty(), "unacceptable outcomes:\n{}", bad.join("\n"));
    // A manifest cut or flipped is replaced; a sealed file cut is unprintable.
    assert!(
        tally.contains_key("manifest_replaced") || cases < 4,
        "{tally:?}"
    );
}
