//! The crash test of print runs (issue 23): the real `plico serve --dev` is killed with SIGKILL
//! at each step of a print file on disk, started again, and the batch printed again with the
//! default command; every card ends with exactly one printable mailer.
//!
//! 1. Once: a `serve --dev` data directory with 12 active cards of batch `b000001`, each with
//!    a postal address (through the CLI and the HTTP API), four mailers a print file; then
//!    copied for each scenario.
//! 2. For each step of the **second** file — `sealed` (complete under its `.partial` name),
//!    `published` (renamed into place, not recorded), `recorded` (in the vault, no manifest),
//!    `manifest` (the manifest complete under its `.partial` name) — `serve --dev` runs with
//!    `PLICO_DEV_TEST_PRINT_PAUSE=STEP:2`, so the run stops for good at that step and says so
//!    on stdout; the test SIGKILLs it there.
//! 3. Started again: the first run reads `interrupted` at once; no `.partial` file is left;
//!    a published file of no run is in `.quarantine/`, a recorded one has its manifest.
//! 4. `plico mailers run --batch b000001` ends `done`, its files numbered after the last used.
//! 5. Every manifest at the top of the print directory has its sealed file, which opens with
//!    the dev key and holds the manifest's mailer numbers; those numbers are exactly the
//!    cards' outstanding mailers, one per card; the reconciliation shows 12 outstanding.
//!
//! A second test makes the leftovers of a crash by hand (a manifest renamed back to its
//! `.partial` name, a partial sealed file, an orphan sealed file, a run record left
//! `running`) after a clean run, and checks one restart repairs them.

use super::batches::serial;
use super::support::{cf, identification};
use super::*;
use cards::check_character;
use std::collections::BTreeSet;

const CARDS: u64 = 12;
const PER_FILE: u64 = 4;
const SALT: u64 = 0x0070_7269_6e74;
const PAUSE_ENV: &str = "PLICO_DEV_TEST_PRINT_PAUSE";

/// A valid codice fiscale for holder `n`: six letters from `n`, fixed birth data (1985-12-10).
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
    for n in 1..=CARDS {
        out.push_str(&format!(
            "{};Lucia;Mondella {};1985-12-10;;;Via Manzoni {n}, 20121 Milano;false;{};2032-12-31;\n",
            codice_fiscale(n),
            char::from(b'A' + n as u8),
            serial(n)
        ));
    }
    out
}

/// A `serve --dev` whose stdout lines the test reads (stderr goes to a file).
struct Dev {
    child: Option<Child>,
    url: String,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Dev {
    fn start(data: &Path, pause: Option<&str>) -> Dev {
        let mut cmd = plico();
        cmd.env("RUST_LOG", "info")
            .env("PLICO_MAILERS_PER_FILE", PER_FILE.to_string())
            .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--data"])
            .arg(data);
        if let Some(p) = pause {
            cmd.env(PAUSE_ENV, p);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data.with_extension("log"))
            .unwrap();
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut dev = Dev {
            child: Some(child),
            url: String::new(),
            lines,
        };
        let line = dev.wait_for("plico: listening on ", data);
        dev.url = line.trim().to_owned();
        dev
    }

    /// Waits for a stdout line starting with `prefix`; returns the rest of it.
    fn wait_for(&mut self, prefix: &str, data: &Path) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.to_owned();
                    }
                }
                Err(_) => break,
            }
        }
        let log = std::fs::read_to_string(data.with_extension("log")).unwrap_or_default();
        panic!("serve --dev never printed {prefix:?}\nits log:\n{log}");
    }

    fn sigkill(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn terminate(mut self) {
        let child = self.child.take().unwrap();
        let ok = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "serve --dev ended {}", out.status);
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The CLI as account `who` (its token in `DATA/../WHO.token`) against `dev`.
fn cli(dev: &Dev, data: &Path, who: &str) -> Command {
    let token = std::fs::read_to_string(token_file(data, who)).unwrap();
    let mut c = plico();
    c.env("PLICO_ADDR", &dev.url)
        .env("PLICO_TOKEN", token.trim());
    c
}

fn token_file(data: &Path, who: &str) -> PathBuf {
    if who == "admin" {
        data.join("admin-token.txt")
    } else {
        data.join(format!("{who}.token"))
    }
}

async fn call(
    dev: &Dev,
    data: &Path,
    who: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<(&str, String)>,
) -> (u16, Value) {
    let token = std::fs::read_to_string(token_file(data, who)).unwrap();
    let mut req = http_client(None)
        .request(method, format!("{}{path}", dev.url))
        .bearer_auth(token.trim());
    if let Some((kind, body)) = body {
        req = req.header("content-type", kind).body(body);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A stopped `serve --dev` data directory: accounts `cms`, `man`, `op` (tokens beside the
/// store), batch `b000001` of 12 cards, every card active with a postal address.
async fn prepare(data: &Path) {
    let dev = Dev::start(data, None);
    for (name, role) in [("man", "manufacturer"), ("cms", "cms"), ("op", "operator")] {
        run_ok(
            cli(&dev, data, "admin")
                .args(["accounts", "create", "--name", name, "--role", role])
                .arg("--token-out")
                .arg(token_file(data, name)),
        );
    }
    let codes = super::support::cns_codes_file(1..=CARDS, SALT);
    let (status, body) = call(
        &dev,
        data,
        "man",
        reqwest::Method::POST,
        "/v1/batches?manufacturer=ACME",
        Some(("text/plain", codes)),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["batch"], "b000001", "{body}");
    let (status, body) = call(
        &dev,
        data,
        "cms",
        reqwest::Method::POST,
        "/v1/registry",
        Some(("text/csv", registry_csv())),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for n in 1..=CARDS {
        let (status, body) = call(
            &dev,
            data,
            "op",
            reqwest::Method::POST,
            &format!("/v1/cards/{}/activate", serial(n)),
            Some(("application/json", identification(n).to_string())),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    dev.terminate();
}

fn copy_dir(from: &Path, to: &Path) {
    let ok = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(ok.success());
}

/// The names in `dir` (none if it does not exist).
fn names(dir: &Path) -> BTreeSet<String> {
    match std::fs::read_dir(dir) {
        Ok(d) => d
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect(),
        Err(_) => BTreeSet::new(),
    }
}

/// The mailer numbers printed on the pages of a sealed file (opened with the dev key).
fn numbers_in(data: &Path, sealed: &Path) -> Vec<u64> {
    let clear = Command::new("age")
        .args(["-d", "-i"])
        .arg(data.join("print-facility-dev.key"))
        .arg(sealed)
        .output()
        .expect("`age` cannot run: run `bash scripts/test.sh`, which installs it");
    assert!(clear.status.success(), "age -d {}", sealed.display());
    let scratch = tempfile::tempdir().unwrap();
    let pdf = scratch.path().join("file.pdf");
    std::fs::write(&pdf, &clear.stdout).unwrap();
    let text = Command::new("pdftotext")
        .args(["-q", "-enc", "UTF-8"])
        .arg(&pdf)
        .arg("-")
        .output()
        .expect("`pdftotext` cannot run: run `bash scripts/test.sh`, which installs poppler-utils");
    assert!(text.status.success());
    String::from_utf8(text.stdout)
        .unwrap()
        .split("Plico n. ")
        .skip(1)
        .map(|t| {
            t.split_whitespace()
                .next()
                .unwrap()
                .trim_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .unwrap()
        })
        .collect()
}

/// Every card has exactly one printable mailer: the numbers on the pages of the files that
/// have a manifest are exactly the cards' outstanding mailers, one a card.
async fn assert_one_printable_mailer_a_card(dev: &Dev, data: &Path, why: &str) {
    let out = data.join("print");
    let mut printable = Vec::new();
    for name in names(&out) {
        let Some(stem) = name.strip_suffix(".manifest.json") else {
            continue;
        };
        let manifest: Value =
            serde_json::from_slice(&std::fs::read(out.join(&name)).unwrap()).unwrap();
        let sealed = out.join(format!("{stem}.pdf.age"));
        assert_eq!(
            std::fs::metadata(&sealed).unwrap().len(),
            manifest["sealed_bytes"].as_u64().unwrap(),
            "{why}: {name}"
        );
        let numbers = numbers_in(data, &sealed);
        let (first, last) = (
            manifest["first_number"].as_u64().unwrap(),
            manifest["last_number"].as_u64().unwrap(),
        );
        assert_eq!(
            numbers,
            (first..=last).collect::<Vec<_>>(),
            "{why}: pages of {name}"
        );
        printable.extend(numbers);
    }
    let mut outstanding = Vec::new();
    for n in 1..=CARDS {
        let (status, body) = call(
            dev,
            data,
            "cms",
            reqwest::Method::GET,
            &format!("/v1/cards/{}/mailers", serial(n)),
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let mine: Vec<u64> = body
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["state"] == "outstanding")
            .map(|m| m["number"].as_u64().unwrap())
            .collect();
        assert_eq!(mine.len(), 1, "{why}: card {n} has mailers {body}");
        outstanding.extend(mine);
    }
    printable.sort_unstable();
    outstanding.sort_unstable();
    assert_eq!(
        printable, outstanding,
        "{why}: printable mailers against the vault's outstanding ones"
    );
}

/// `plico mailers run --batch b000001`: its output.
fn rerun(dev: &Dev, data: &Path) -> String {
    let out = run_ok(cli(dev, data, "cms").args(["mailers", "run", "--batch", "b000001"]));
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_print_run_killed_at_each_file_step_recovers_and_reruns_with_the_default_command() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    prepare(&base).await;
    for step in ["sealed", "published", "recorded", "manifest"] {
        let data = tmp.path().join(step);
        copy_dir(&base, &data);
        let mut dev = Dev::start(&data, Some(&format!("{step}:2")));
        let (status, body) = call(
            &dev,
            &data,
            "cms",
            reqwest::Method::POST,
            "/v1/mailers/runs",
            Some(("application/json", json!({"batch": "b000001"}).to_string())),
        )
        .await;
        assert_eq!(status, 202, "{body}");
        let run = body["run"].as_u64().unwrap();
        let paused = dev.wait_for("plico: test pause at ", &data);
        assert_eq!(paused, format!("{step} of b000001-0002.pdf.age"));
        dev.sigkill();

        let out = data.join("print");
        let left = names(&out);
        let partial = |n: &str| left.contains(&format!(".b000001-0002.{n}.partial"));
        match step {
            "sealed" => assert!(partial("pdf.age"), "{left:?}"),
            "manifest" => assert!(partial("manifest.json"), "{left:?}"),
            _ => assert!(left.contains("b000001-0002.pdf.age"), "{left:?}"),
        }

        let dev = Dev::start(&data, None);
        let (status, record) = call(
            &dev,
            &data,
            "cms",
            reqwest::Method::GET,
            &format!("/v1/mailers/runs/{run}"),
            None,
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(record["state"], "interrupted", "{step}: {record}");
        let now = names(&out);
        assert!(
            now.iter().all(|n| !n.ends_with(".partial")),
            "{step}: partial outputs left: {now:?}"
        );
        let quarantined = names(&out.join(".quarantine"));
        let recorded = matches!(step, "recorded" | "manifest");
        assert_eq!(
            record["files"].as_array().unwrap().len(),
            if recorded { 2 } else { 1 },
            "{step}: {record}"
        );
        if recorded {
            assert!(
                now.contains("b000001-0002.manifest.json"),
                "{step}: {now:?}"
            );
            assert!(quarantined.is_empty(), "{step}: {quarantined:?}");
        } else if step == "published" {
            assert_eq!(
                quarantined,
                BTreeSet::from(["b000001-0002.pdf.age".to_owned()]),
                "{step}"
            );
            assert!(!now.contains("b000001-0002.pdf.age"), "{step}: {now:?}");
        } else {
            assert!(quarantined.is_empty(), "{step}: {quarantined:?}");
        }

        let shown = rerun(&dev, &data);
        assert!(shown.contains("state:     done"), "{step}: {shown}");
        let missing = if recorded {
            CARDS - 2 * PER_FILE
        } else {
            CARDS - PER_FILE
        };
        assert!(
            shown.contains(&format!("printed:   {missing}")),
            "{step}: {shown}"
        );
        // Numbered after the last used: 0002 was published (then quarantined) only in
        // `published`; a name never published is free again.
        let first_new = match step {
            "published" | "recorded" | "manifest" => 3,
            _ => 2,
        };
        let (_, body) = call(
            &dev,
            &data,
            "cms",
            reqwest::Method::GET,
            "/v1/mailers/runs",
            None,
        )
        .await;
        let files = body[0]["files"].as_array().unwrap().clone();
        assert_eq!(
            files.first().and_then(Value::as_str),
            Some(format!("b000001-{first_new:04}.pdf.age").as_str()),
            "{step}: {body}"
        );

        assert_one_printable_mailer_a_card(&dev, &data, step).await;
        let out = run_ok(cli(&dev, &data, "cms").args([
            "mailers",
            "reconcile",
            "--batch",
            "b000001",
            "--json",
        ]));
        let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(rows[0]["outstanding"], CARDS, "{step}: {rows}");
        assert_eq!(rows[0]["printed"], CARDS, "{step}: {rows}");
        dev.terminate();
    }
}

/// Sets run `run` of a stopped data directory back to `running`, as a kill leaves it.
fn set_run_running(data: &Path, run: u64) {
    use vault::{seq_key, Batch, Store, Tree};
    let store = vault::SledStore::open(&data.join("store")).unwrap();
    let bytes = store.get(Tree::PrintRuns, &seq_key(run)).unwrap().unwrap();
    let mut record: Value = serde_json::from_slice(&bytes).unwrap();
    record["state"] = json!("running");
    record["finished_ms"] = json!(0);
    let mut b = Batch::new();
    b.put(
        Tree::PrintRuns,
        seq_key(run).to_vec(),
        serde_json::to_vec(&record).unwrap(),
    );
    store.apply(&b).unwrap();
    store.flush().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_restart_repairs_the_leftovers_of_a_crash_by_hand() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    prepare(&data).await;
    let dev = Dev::start(&data, None);
    assert!(rerun(&dev, &data).contains("state:     done"));
    dev.terminate();
    let out = data.join("print");
    let manifest = std::fs::read(out.join("b000001-0002.manifest.json")).unwrap();
    // The kill of issue 23: the manifest never left its partial name.
    std::fs::rename(
        out.join("b000001-0002.manifest.json"),
        out.join(".b000001-0002.manifest.json.partial"),
    )
    .unwrap();
    // A partial sealed file and a published one that no run recorded.
    std::fs::write(out.join(".b000001-0004.pdf.age.partial"), b"partial").unwrap();
    std::fs::write(out.join("b000001-0005.pdf.age"), b"orphan").unwrap();
    std::fs::write(out.join("notes.txt"), b"not ours").unwrap();
    set_run_running(&data, 1);

    let dev = Dev::start(&data, None);
    let (_, record) = call(
        &dev,
        &data,
        "cms",
        reqwest::Method::GET,
        "/v1/mailers/runs/1",
        None,
    )
    .await;
    assert_eq!(record["state"], "interrupted", "{record}");
    assert_eq!(
        std::fs::read(out.join("b000001-0002.manifest.json")).unwrap(),
        manifest,
        "the manifest is written again from the vault's record, the same"
    );
    let now = names(&out);
    assert!(now.iter().all(|n| !n.ends_with(".partial")), "{now:?}");
    assert!(!now.contains("b000001-0005.pdf.age") && now.contains("notes.txt"));
    assert_eq!(
        names(&out.join(".quarantine")),
        BTreeSet::from(["b000001-0005.pdf.age".to_owned()])
    );
    assert_eq!(mode(&out.join(".quarantine")), 0o700);
    let log = std::fs::read_to_string(data.with_extension("log")).unwrap();
    for said in [
        "marked interrupted",
        "partial print output removed",
        "manifest written at start-up",
        "moved to quarantine",
    ] {
        assert!(log.contains(said), "the log does not say {said:?}:\n{log}");
    }
    assert_one_printable_mailer_a_card(&dev, &data, "by hand").await;

    // A reprint of the batch with the default label: numbered after 0005, the last name used
    // (in quarantine), where the old code failed on `b000001-0001.pdf.age already exists`.
    let out_cli = run_ok(cli(&dev, &data, "cms").args([
        "mailers",
        "run",
        "--batch",
        "b000001",
        "--reprint",
        "all",
    ]));
    let shown = String::from_utf8(out_cli.stdout).unwrap();
    assert!(shown.contains("state:     done"), "{shown}");
    assert!(shown.contains(&format!("printed:   {CARDS}")), "{shown}");
    let now = names(&out);
    for n in 6..=8 {
        assert!(
            now.contains(&format!("b000001-{n:04}.manifest.json")),
            "{now:?}"
        );
    }
    dev.terminate();
}
