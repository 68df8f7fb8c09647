//! `plico-bench`: the bench harness, a binary of its own so that the hardened service binary
//! does not ship it. Measurements against baselines taken in the same run; benchmarks, not
//! tests: nothing here is timed by CI. It reaches plico through the `plico` library (the
//! service state, the delivery workers, print runs) and the vault, cards, dispatch and
//! hsm-sim crates, as the service does. The criterion benches of the vault are in
//! `benches/benches/` (`cargo bench -p plico-bench --bench NAME`).
//!
//! `plico-bench import --records N`:
//! 1. writes a sorted N-line file of generated test codes (benchmark data, not secrets);
//! 2. imports it into a fresh sled store under a fresh development HSM, end to end and
//!    durable (parse, validate, seal, sort, write, flush, commit) — the figure that counts;
//!    peak memory is the process's high-water mark right after it;
//! 3. measures in the same run the bare baselines: the file parsed with no work per card;
//!    AES-256-GCM + bulk RNG over the same number of records; and raw writes of the very
//!    segment bytes the import stored, into a second fresh store, flushed;
//! 4. looks up random cards by serial and decrypts them, on one thread.
//!
//! It ends with one line:
//! `import pairs_per_s=… baseline_ratio=… peak_rss_mib=… disk_bytes_per_pair=… lookups_per_s=…`
//! where `baseline_ratio` is the import's speed over the bare pipeline's (RNG + AES-GCM time
//! plus raw store write time for the same records): 1.0 means the import costs no more than
//! the bare work it cannot avoid.
//!
//! `--hsm pkcs11` runs the import (and `rotate`) on a throw-away SoftHSM2 token instead of the
//! simulator, to compare the two in the same figures.
//!
//! `plico-bench backup --records N` times a backup and a restore of a store of N cards (see
//! `backup.rs`); `plico-bench rotate --records N` times a KEK rotation of a vault of N cards (see
//! `rotate.rs`); `plico-bench mailers|dispatch --count N` print runs and delivery (see
//! `mailers.rs`, `dispatch.rs`); `plico-bench console --rate R --seconds S` the console's
//! pages against `/healthz` (see `console.rs`); `plico-bench audit --appenders N --seconds S`
//! durable audit appends from N threads against one appender (see `audit.rs`);
//! `plico-bench registry --holders N` a registry import over HTTP (see `registry.rs`);
//! `plico-bench api --seconds S` card status and holder search over HTTP against `/healthz`
//! (see `api.rs`); `plico-bench soak --minutes M` a fixed offered mix of reads, lifecycle
//! changes and dispatches for M minutes, with latency, errors and resident memory (see
//! `soak.rs`).

mod api;
mod audit;
mod backup;
mod console;
mod dispatch;
mod mailers;
mod population;
mod registry;
mod rotate;
mod server;
mod soak;

use anyhow::bail;
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use clap::{Args, Parser, Subcommand};
use hsm_sim::SimulatedHsm;
use secrecy::SecretString;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing_subscriber::EnvFilter;
use vault::AuditLog;
use vault::CodeVault;
use vault::Hsm;
use vault::SledStore;
use vault::{import_file, ImportContext, ImportOutcome, ImportRequest};
use vault::{parse_code_file, ParseRules};
use vault::{Batch, Store, Tree};

/// mimalloc, as in the service binary (`plico`): the figures are the service's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `plico-bench` arguments.
#[derive(Debug, Parser)]
#[command(
    name = "plico-bench",
    version,
    about = "Measure plico against baselines taken in the same run (not part of the tests)"
)]
pub struct BenchArgs {
    /// What to measure.
    #[command(subcommand)]
    pub what: BenchCommand,
}

/// The benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Import N generated pairs into a fresh sled store, with the bare baselines.
    Import(ImportBench),
    /// Print N sealed PIN mailers from the vault, on 2 threads and on 1, with a bare
    /// rendering baseline.
    Mailers(mailers::MailersBench),
    /// Deliver N cards' codes by e-mail through the service's workers into smtp-sink, with
    /// smtp-source as the baseline; and SMS through Kannel.
    Dispatch(dispatch::DispatchBench),
    /// Rotate the KEK of a vault of N cards (propose, approve, rewrap every data key), with
    /// bare HSM rewraps as the baseline.
    Rotate(rotate::RotateBench),
    /// The console's holder and card pages at a fixed offered load (p50/p99, requests/s),
    /// against `/healthz` with the same load generator.
    Console(console::ConsoleBench),
    /// Durable audit appends from N threads at once, against one appender in the same run.
    Audit(audit::AuditBench),
    /// Import N holders with a card each over HTTP (`POST /v1/registry`), with the parse,
    /// crypto and raw store writes of the same records as the baseline.
    Registry(registry::RegistryBench),
    /// Card status (`GET /v1/cards/{serial}`) and holder search over HTTP, N connections,
    /// against `/healthz` with the same load generator.
    Api(api::ApiBench),
    /// Back up a store of N imported cards (sealed archive) and restore it, against a bare
    /// scan of the store.
    Backup(backup::BackupBench),
    /// A fixed offered mix of card statuses, holder searches, lifecycle changes and e-mail
    /// dispatches for M minutes: latency per kind, errors by status, memory after a warm-up
    /// and at the end.
    Soak(soak::SoakBench),
}

/// `plico-bench import` arguments.
#[derive(Debug, Args)]
pub struct ImportBench {
    /// Pairs in the generated file.
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    /// Work directory (a fresh one under the system temp dir by default; removed at the end
    /// unless given).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Random lookups to time.
    #[arg(long, default_value_t = 200_000)]
    pub lookups: u64,
    /// The HSM under the vault: the simulator, or SoftHSM2 through PKCS#11 (a throw-away
    /// token; needs `softhsm2` installed).
    #[arg(long, value_enum, default_value_t = BenchHsm::Sim)]
    pub hsm: BenchHsm,
}

/// The HSM a bench runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchHsm {
    /// `SimulatedHsm`, in development mode (1-of-1).
    Sim,
    /// `Pkcs11Hsm` on a fresh SoftHSM2 token (2-of-2 shares).
    Pkcs11,
}

impl std::fmt::Display for BenchHsm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BenchHsm::Sim => "sim",
            BenchHsm::Pkcs11 => "pkcs11",
        })
    }
}

/// An unsealed HSM for a bench, and the SoftHSM2 token behind it (if any), kept while the
/// bench runs.
pub(crate) struct BenchHsmInstance {
    pub(crate) hsm: Arc<dyn Hsm>,
    _token: Option<hsm_pkcs11::testing::TestToken>,
}

/// A fresh unsealed HSM of `kind`, its state under `dir`.
pub(crate) fn bench_hsm(kind: BenchHsm, dir: &Path) -> anyhow::Result<BenchHsmInstance> {
    match kind {
        BenchHsm::Sim => Ok(BenchHsmInstance {
            hsm: dev_hsm(dir)?,
            _token: None,
        }),
        BenchHsm::Pkcs11 => {
            if !hsm_pkcs11::testing::softhsm_installed() {
                bail!(
                    "--hsm pkcs11 needs SoftHSM2 ({} is missing: apt-get install softhsm2)",
                    hsm_pkcs11::testing::SOFTHSM_MODULE
                );
            }
            // 2 of 2 custodian shares: a token is never a development HSM.
            let token = hsm_pkcs11::testing::new_token()?;
            let mut shares: Vec<SecretString> = Vec::new();
            let (hsm, _) = hsm_pkcs11::Pkcs11Hsm::init(
                &token.config,
                &token.pin,
                hsm_pkcs11::InitOptions {
                    shares: 2,
                    threshold: 2,
                    dev: false,
                },
                &mut |s: &[SecretString]| {
                    shares = s.to_vec();
                    Ok(())
                },
            )?;
            if shares.len() != 2 {
                bail!("the PKCS#11 HSM gave {} shares, not 2", shares.len());
            }
            for share in &shares {
                hsm.unseal(share)?;
            }
            Ok(BenchHsmInstance {
                hsm: Arc::new(hsm),
                _token: Some(token),
            })
        }
    }
}

fn main() -> ExitCode {
    // As the service does (see `plico::process`): the figures are the service's.
    let thp = plico::process::disable_transparent_huge_pages();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    if let Some(problem) = thp {
        eprintln!("plico-bench: {problem}; continuing");
    }
    match run(BenchArgs::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("plico-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a benchmark.
///
/// # Errors
/// I/O and vault errors.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.what {
        BenchCommand::Import(a) => import(&a),
        BenchCommand::Mailers(a) => mailers::run(&a),
        BenchCommand::Dispatch(a) => dispatch::run(&a),
        BenchCommand::Rotate(a) => rotate::run(&a),
        BenchCommand::Console(a) => console::run(&a),
        BenchCommand::Audit(a) => audit::run(&a),
        BenchCommand::Registry(a) => registry::run(&a),
        BenchCommand::Api(a) => api::run(&a),
        BenchCommand::Backup(a) => backup::run(&a),
        BenchCommand::Soak(a) => soak::run(&a),
    }
}

/// A small fast generator for benchmark data (xorshift64*); not for secrets.
pub(crate) struct TestRng(pub(crate) u64);

impl TestRng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

pub(crate) fn serial(base: u64, i: u64) -> String {
    format!("8039{:015}", base + i)
}

pub(crate) fn write_file(path: &Path, n: u64, base: u64) -> anyhow::Result<u64> {
    let mut rng = TestRng(0x9E37_79B9_7F4A_7C15 ^ base);
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    writeln!(out, "serial;pin;puk")?;
    for i in 0..n {
        let r = rng.next();
        writeln!(
            out,
            "{};{:05};{:08}",
            serial(base, i),
            r % 100_000,
            (r >> 20) % 100_000_000
        )?;
    }
    out.flush()?;
    Ok(std::fs::metadata(path)?.len())
}

/// A memory figure of this process from `/proc/self/status` (`VmHWM`, `VmRSS`), in MiB.
pub(crate) fn status_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The process's peak resident memory so far, in MiB.
pub(crate) fn peak_rss_mib() -> f64 {
    status_mib("VmHWM")
}

pub(crate) fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += dir_bytes(&e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// An unsealed development HSM in `dir` (the one [`SimulatedHsm::dev`]).
pub(crate) fn dev_hsm(dir: &Path) -> anyhow::Result<Arc<SimulatedHsm>> {
    Ok(Arc::new(SimulatedHsm::dev(dir)?))
}

pub(crate) fn per_s(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

fn import(a: &ImportBench) -> anyhow::Result<()> {
    let n = a.records;
    if n == 0 {
        bail!("--records must be at least 1");
    }
    in_work_dir(a.dir.as_deref(), "import", |work| {
        import_in(work, n, a.lookups, a.hsm)
    })
}

/// Runs `f` in `dir`, which must be empty or absent, or else in a fresh directory under the
/// system temp dir that is removed afterwards.
pub(crate) fn in_work_dir(
    dir: Option<&Path>,
    name: &str,
    f: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let (work, remove) = match dir {
        Some(d) => (d.to_path_buf(), false),
        None => (
            std::env::temp_dir().join(format!("plico-bench-{name}-{}", std::process::id())),
            true,
        ),
    };
    if work.exists() && std::fs::read_dir(&work)?.next().is_some() {
        bail!("{} is not empty", work.display());
    }
    std::fs::create_dir_all(&work)?;
    let result = f(&work);
    if remove {
        let _ = std::fs::remove_dir_all(&work);
    }
    result
}

/// Imports `file` (`n` cards) as a manufacturer upload, end to end and durable.
pub(crate) fn import_codes(
    codes: &CodeVault,
    hsm: &dyn Hsm,
    audit: &AuditLog,
    file: &Path,
    n: u64,
) -> anyhow::Result<ImportOutcome> {
    let rules = ParseRules::default();
    let ctx = ImportContext {
        vault: codes,
        hsm,
        audit,
        rules: &rules,
    };
    let request = ImportRequest {
        manufacturer: "bench".into(),
        expected_cards: Some(n),
        expected_sha256: None,
        actor: "bench".into(),
        role: "manufacturer".into(),
        request_id: String::new(),
    };
    Ok(import_file(
        ctx,
        std::fs::File::open(file)?,
        &request,
        &|_| {},
    )?)
}

fn import_in(work: &Path, n: u64, lookups: u64, hsm_kind: BenchHsm) -> anyhow::Result<()> {
    let base = 1_000_000_000u64;
    let file = work.join("codes.txt");
    eprintln!("writing {n} lines to {}", file.display());
    let file_bytes = write_file(&file, n, base)?;

    // The import, end to end and durable.
    let under = bench_hsm(hsm_kind, &work.join("hsm"))?;
    let hsm = under.hsm.clone();
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&work.join("store"))?);
    let audit = AuditLog::open(store.clone(), 1000)?;
    audit.unlock(hsm.clone())?;
    let (codes, _) = CodeVault::open(store.clone())?;
    let rules = ParseRules::default();
    eprintln!("importing");
    let started = Instant::now();
    let outcome = import_codes(&codes, &*hsm, &audit, &file, n)?;
    let t_import = started.elapsed();
    let rss = peak_rss_mib();
    let ImportOutcome::Committed(record) = outcome else {
        bail!("the import did not commit: {:?}", outcome.record().problems);
    };
    if record.cards != n {
        bail!("imported {} cards, wanted {n}", record.cards);
    }
    store.flush()?;
    let disk = dir_bytes(&work.join("store"));

    // Lookups by serial, decrypted, one thread.
    let mut rng = TestRng(0x1234_5678_9ABC_DEF1);
    let serials: Vec<String> = (0..lookups).map(|_| serial(base, rng.next() % n)).collect();
    let started = Instant::now();
    for s in &serials {
        if codes.pending_release(&*hsm, s)?.is_none() {
            bail!("card {s} not found");
        }
    }
    let t_lookup = started.elapsed();

    // Baseline 1: the parser alone.
    let started = Instant::now();
    let mut cards = 0u64;
    parse_code_file(
        std::io::BufReader::with_capacity(256 * 1024, std::fs::File::open(&file)?),
        &rules,
        |_| {
            cards += 1;
            Ok(())
        },
    )
    .map_err(vault::Error::from)?;
    let t_parse = started.elapsed();

    // Baseline 2: bulk RNG + AES-256-GCM over the same number of records (8-byte packed
    // pair, 48-byte AAD, counter nonces), as a bare loop.
    let t_crypto = bare_crypto(n)?;

    // Baseline 3: the same segment bytes, raw, into a fresh store, flushed.
    let mut segments: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut from = Vec::new();
    loop {
        let page = store.range(Tree::Segments, &from, None, 1024)?;
        let Some((last, _)) = page.last() else { break };
        from = last.clone();
        from.push(0);
        let more = page.len() == 1024;
        segments.extend(page);
        if !more {
            break;
        }
    }
    let raw = SledStore::open(&work.join("raw"))?;
    let started = Instant::now();
    for chunk in segments.chunks(32) {
        let mut b = Batch::new();
        for (k, v) in chunk {
            b.put(Tree::Segments, k.clone(), v.clone());
        }
        raw.write(&b)?;
    }
    raw.flush()?;
    let t_raw = started.elapsed();
    let raw_disk = dir_bytes(&work.join("raw"));

    let pairs_per_s = per_s(n, t_import);
    let bare = t_crypto + t_raw;
    let ratio = bare.as_secs_f64() / t_import.as_secs_f64().max(1e-9);
    println!("records             {n}");
    println!("hsm                 {hsm_kind}");
    println!("file                {file_bytes} bytes");
    println!(
        "import              {:.2} s  {:.0} pairs/s  ({} runs, {} segments)",
        t_import.as_secs_f64(),
        pairs_per_s,
        record.runs.len(),
        segments.len()
    );
    println!(
        "baseline parse      {:.2} s  {:.0} lines/s",
        t_parse.as_secs_f64(),
        per_s(n, t_parse)
    );
    println!(
        "baseline rng+gcm    {:.2} s  {:.0} records/s",
        t_crypto.as_secs_f64(),
        per_s(n, t_crypto)
    );
    println!(
        "baseline raw writes {:.2} s  {:.0} records/s  ({:.1} B/pair on disk)",
        t_raw.as_secs_f64(),
        per_s(n, t_raw),
        raw_disk as f64 / n as f64
    );
    println!(
        "bare pipeline       {:.2} s  {:.0} pairs/s",
        bare.as_secs_f64(),
        per_s(n, bare)
    );
    println!(
        "lookups             {lookups} in {:.2} s",
        t_lookup.as_secs_f64()
    );
    println!(
        "import pairs_per_s={:.0} baseline_ratio={:.2} peak_rss_mib={:.0} disk_bytes_per_pair={:.1} lookups_per_s={:.0}",
        pairs_per_s,
        ratio,
        rss,
        disk as f64 / n as f64,
        per_s(lookups, t_lookup)
    );
    Ok(())
}

fn bare_crypto(n: u64) -> anyhow::Result<Duration> {
    let rng = SystemRandom::new();
    let mut key = [0u8; 32];
    rng.fill(&mut key)
        .map_err(|_| anyhow::anyhow!("random generator"))?;
    let key = LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, &key).map_err(|_| anyhow::anyhow!("aes key"))?,
    );
    let aad = [7u8; 48];
    let mut random = vec![0u8; 64 * 1024];
    let mut at = random.len();
    let mut sink = 0u8;
    let started = Instant::now();
    for i in 0..n {
        if at + 8 > random.len() {
            rng.fill(&mut random)
                .map_err(|_| anyhow::anyhow!("random generator"))?;
            at = 0;
        }
        let mut rec = [0u8; 8];
        rec.copy_from_slice(&random[at..at + 8]);
        at += 8;
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&i.to_be_bytes());
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad[..]),
                &mut rec,
            )
            .map_err(|_| anyhow::anyhow!("seal"))?;
        sink ^= rec[0] ^ tag.as_ref()[0];
    }
    let t = started.elapsed();
    std::hint::black_box(sink);
    Ok(t)
}
