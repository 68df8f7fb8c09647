//! `plico-bench mailers --count N`: sealed PIN mailers printed from the vault.
//!
//! 1. Setup (not timed): a fresh sled store under a development HSM; two code batches are
//!    imported (N cards, and N/4 cards, at least 1,000), a registry of one holder per card
//!    (accented names, postal addresses) is applied in chunks, and every card is made
//!    `active` by writing its lifecycle record directly (a benchmark shortcut: the counter's
//!    activation, one audited change per card, is not what is measured here). Then the
//!    process's peak-memory mark is reset.
//! 2. The measured path, on the default rayon pool (2 threads here): a print run over the
//!    N-card batch, exactly as the service runs it ([`plico::mailers::print`]): batch scan
//!    and decryption, holder lookup and decryption, numbering, parallel rendering, age
//!    sealing to a print facility recipient, SHA-256, one vault record and audit event a file.
//! 3. The same over the N/4-card batch on a one-thread pool (`threads1_per_s`). Every CPU
//!    stage of a run is work of the pool (a thread beside it only syncs, publishes and
//!    records finished files), so this is the run on one core.
//! 4. The baseline: the same pages (same names, addresses and serials, fixed digits)
//!    rendered on the same 2 threads into clear PDF writers that discard their bytes, with no
//!    vault, no decryption, no sealing and no recording.
//!
//! It ends with one line:
//! `mailers per_s=… threads1_per_s=… scaling=… baseline_per_s=… baseline_ratio=… peak_rss_mib=… rss_growth_mib=…`
//! (`scaling` = per_s / threads1_per_s; `baseline_ratio` = per_s / baseline_per_s; peak
//! memory is the high-water mark over steps 2–4, and `rss_growth_mib` how far it rose above
//! the resident size at the start of step 2, which is mostly sled's page cache).

use super::population::{address, import, name, registry};
use super::{dev_hsm, in_work_dir, peak_rss_mib, per_s, serial, status_mib};
use anyhow::bail;
use cards::Cards;
use cards::Date;
use cards::{Reprint, Selection};
use clap::Args;
use dispatch::bulk::OwnedMailer;
use dispatch::{Addressee, Codes, Issuer, Layout, Plan, PrintRenderer, Templates};
use plico::mailers::{print, PrintSetup};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use vault::Actor;
use vault::AuditLog;
use vault::SledStore;
use vault::Store;
use vault::{BatchId, CodeVault};

/// `plico-bench mailers` arguments.
#[derive(Debug, Args)]
pub struct MailersBench {
    /// Mailers in the measured run (the one-thread run prints a quarter of that).
    #[arg(long, default_value_t = 100_000)]
    pub count: u64,
    /// Mailers a print file.
    #[arg(long, default_value_t = 10_000)]
    pub per_file: usize,
    /// Work directory (a fresh one under the system temp dir by default; removed at the end
    /// unless given).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// sled's page cache in MiB (sled's default, 1024, if not given). A registry of a million
    /// holders is larger than the default cache.
    #[arg(long)]
    pub store_cache_mib: Option<u64>,
}

/// Runs the benchmark.
///
/// # Errors
/// I/O and vault errors.
pub fn run(a: &MailersBench) -> anyhow::Result<()> {
    if a.count == 0 {
        bail!("--count must be at least 1");
    }
    in_work_dir(a.dir.as_deref(), "mailers", |work| run_in(work, a))
}

fn reset_peak_rss() {
    // Linux: writing 5 to clear_refs resets the peak resident set size (VmHWM).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn run_in(work: &Path, a: &MailersBench) -> anyhow::Result<()> {
    let (n, per_file) = (a.count, a.per_file);
    let n1 = (n / 4).max(1_000);
    let (base_a, base_b) = (1_000_000_000u64, 2_000_000_000u64);
    let hsm = dev_hsm(&work.join("hsm"))?;
    let store: Arc<dyn Store> = Arc::new(SledStore::open_with_cache(
        &work.join("store"),
        a.store_cache_mib.map(|m| m << 20),
    )?);
    let audit = AuditLog::open(store.clone(), 1000)?;
    audit.unlock(hsm.clone())?;
    let (codes, _) = CodeVault::open(store.clone())?;
    let codes = Arc::new(codes);
    let cms = Cards::new(codes.clone());
    let today = Date::today_utc();
    let actor = Actor {
        id: "bench".into(),
        role: "cms".into(),
        request_id: String::new(),
    };

    eprintln!("setup: importing {n} + {n1} cards' codes");
    let batch_a = import(work, &codes, &*hsm, &audit, n, base_a)?;
    let batch_b = import(work, &codes, &*hsm, &audit, n1, base_b)?;
    eprintln!("setup: registry of {} holders, cards made active", n + n1);
    let serials_a: Vec<String> = (0..n).map(|i| serial(base_a, i)).collect();
    let serials_b: Vec<String> = (0..n1).map(|i| serial(base_b, i)).collect();
    registry(
        &cms, &*store, &*hsm, &audit, &serials_a, 0, today, &actor, false,
    )?;
    registry(
        &cms, &*store, &*hsm, &audit, &serials_b, n, today, &actor, false,
    )?;

    let identity = age::x25519::Identity::generate();
    let setup = |dir: &str| -> anyhow::Result<PrintSetup> {
        let setup = PrintSetup {
            templates: Arc::new(Templates::builtin()?),
            layout: Layout::default(),
            issuer: Issuer::default(),
            out_dir: work.join(dir),
            recipients: vec![identity.to_public().to_string()],
            per_file,
        };
        setup.create_out_dir()?;
        Ok(setup)
    };
    let plan = Plan::Whole(None);
    reset_peak_rss();
    let rss_at_start = status_mib("VmRSS");

    let measured = |batch: BatchId, label: &str, dir: &str| -> anyhow::Result<(u64, f64)> {
        let setup = setup(dir)?;
        let job = cms.start_print_run(
            &audit,
            Selection::Batch(batch),
            Reprint::Unprinted,
            label,
            "whole",
            "whole",
            &actor,
        )?;
        let started = Instant::now();
        let (record, manifests) =
            print(&*hsm, &audit, job, &setup, &plan, "whole", today, &|_| {})?;
        let elapsed = started.elapsed();
        if let Some(e) = record.error {
            bail!("print run {label} failed: {e}");
        }
        let printed: u64 = manifests.iter().map(|m| m.count).sum();
        Ok((printed, per_s(printed, elapsed)))
    };

    eprintln!(
        "measuring: {n} mailers on the default pool ({} threads)",
        rayon::current_num_threads()
    );
    let (printed, rate) = measured(batch_a, "bench-a", "print-a")?;
    if printed != n {
        bail!("printed {printed} mailers, wanted {n}");
    }
    eprintln!("  {rate:.0} mailers/s");

    eprintln!("measuring: {n1} mailers on one thread");
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    let (printed1, rate1) = one.install(|| measured(batch_b, "bench-b", "print-b"))?;
    if printed1 != n1 {
        bail!("printed {printed1} mailers on one thread, wanted {n1}");
    }
    eprintln!("  {rate1:.0} mailers/s");

    eprintln!(
        "baseline: the same {n} pages rendered into discarded clear PDF, no vault, no sealing"
    );
    let baseline = baseline(n, per_file, &setup("print-baseline")?.renderer())?;
    eprintln!("  {baseline:.0} pages/s");
    let rss = peak_rss_mib();
    let sealed: u64 = std::fs::read_dir(work.join("print-a"))?
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    eprintln!(
        "sealed output: {:.1} MiB for {n} mailers ({:.0} bytes a mailer)",
        sealed as f64 / (1 << 20) as f64,
        sealed as f64 / n as f64
    );
    eprintln!(
        "memory: {rss_at_start:.0} MiB resident after setup (mostly sled's cache), peak {rss:.0} MiB during the runs"
    );
    println!(
        "mailers per_s={rate:.0} threads1_per_s={rate1:.0} scaling={:.2} baseline_per_s={baseline:.0} baseline_ratio={:.2} peak_rss_mib={rss:.0} rss_growth_mib={:.0}",
        rate / rate1,
        rate / baseline,
        rss - rss_at_start
    );
    Ok(())
}

/// The same pages without the vault: fixed digits, rendered on the current pool in chunks of
/// 512, appended in order to clear PDF writers over `io::sink`, a new one every `per_file`.
fn baseline(n: u64, per_file: usize, renderer: &PrintRenderer) -> anyhow::Result<f64> {
    let codes = Codes::new(b"12345", b"12345678")?;
    let part = Plan::Whole(None).cut(&codes)?.remove(0);
    let started = Instant::now();
    let mut writer = Some(renderer.writer(std::io::sink())?);
    let mut in_file = 0usize;
    let mut at = 0u64;
    while at < n {
        let end = (at + 512).min(n);
        let mailers: Vec<OwnedMailer> = (at..end)
            .map(|i| {
                let (given, surname) = name(i);
                OwnedMailer {
                    addressee: Addressee {
                        name: format!("{given} {surname}"),
                        address: cards::address_lines(&address(i)),
                    },
                    card_serial: serial(1_000_000_000, i),
                    codes: part.clone(),
                    number: i + 1,
                }
            })
            .collect();
        let pages: Vec<_> = mailers
            .par_iter()
            .map(|m| renderer.render_page(&m.mailer()))
            .collect();
        for page in pages {
            let w = writer.get_or_insert(renderer.writer(std::io::sink())?);
            w.append(&page?)?;
            in_file += 1;
            if in_file == per_file {
                if let Some(w) = writer.take() {
                    w.finish()?;
                }
                in_file = 0;
            }
        }
        at = end;
    }
    if let Some(w) = writer.take() {
        if w.pages() > 0 {
            w.finish()?;
        }
    }
    Ok(per_s(n, started.elapsed()))
}
