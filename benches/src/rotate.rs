//! `plico-bench rotate --records N [--batch-records M]`: a KEK rotation of a vault of N cards.
//!
//! 1. imports N generated cards into a fresh sled store under a fresh development HSM, in
//!    batches of M (default 2,500): one data key per batch, so `ceil(N / M)` code data keys
//!    (plus the service's own purpose keys, if any); `--importers K` threads import batches at
//!    once (default 1), each committed batch waiting for the HSM's audit anchor as the service
//!    does — `import_cards_per_s` is this stage's rate;
//! 2. officer A proposes a rotation, officer B approves it, and the rewrap job runs to its end
//!    in chunks of 256 keys (the service's default, `--chunk`), each chunk saved durably with the job's progress — timed from the
//!    approval to the job's `done`, the figure that counts;
//! 3. baseline, in the same run: the same number of bare `rewrap_data_key` calls on the HSM
//!    (no store, no keyring, no audit);
//! 4. checks that every data key is under the new term and a sample of cards still opens.
//!
//! It ends with one line:
//! `rotate records=… data_keys=… seconds=… rewraps_per_s=… baseline_rewraps_per_s=… baseline_ratio=…
//! import_cards_per_s=… importers=…`
//! where `baseline_ratio` is the bare rewraps' time over the rotation's: 1.0 would mean the job
//! costs nothing beyond the HSM's own work. Records are never touched by a rotation.

use super::{bench_hsm, in_work_dir, per_s, serial, BenchHsm, TestRng};
use anyhow::{bail, Context};
use clap::Args;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use vault::Actor;
use vault::AuditLog;
use vault::CodeVault;
use vault::ParseRules;
use vault::SledStore;
use vault::Store;
use vault::{import_file, ImportContext, ImportOutcome, ImportRequest};
use vault::{Ceremonies, CeremonyPolicy, JobState, Operation};
use vault::{Hsm, Keyring, TermState};

/// `plico-bench rotate` arguments.
#[derive(Debug, Args)]
pub struct RotateBench {
    /// Cards in the vault.
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    /// Cards per imported batch (one data key each).
    #[arg(long, default_value_t = 2_500)]
    pub batch_records: u64,
    /// Data keys rewrapped per chunk (one durable keyring write each).
    #[arg(long, default_value_t = plico::DEFAULT_REWRAP_CHUNK)]
    pub chunk: usize,
    /// Work directory (a fresh one under the system temp dir by default; removed at the end
    /// unless given).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The HSM that holds the KEK terms: the simulator, or SoftHSM2 through PKCS#11.
    #[arg(long, value_enum, default_value_t = BenchHsm::Sim)]
    pub hsm: BenchHsm,
    /// Threads importing the batches at once (each committed batch waits for the HSM's audit
    /// anchor; concurrent ones share the anchor's token writes).
    #[arg(long, default_value_t = 1)]
    pub importers: u64,
}

/// Runs `plico-bench rotate`.
pub fn run(a: &RotateBench) -> anyhow::Result<()> {
    if a.records == 0 || a.batch_records == 0 || a.chunk == 0 || a.importers == 0 {
        bail!("--records, --batch-records, --chunk and --importers must be at least 1");
    }
    in_work_dir(a.dir.as_deref(), "rotate", |work| rotate_in(work, a))
}

fn officer(id: &str) -> Actor {
    Actor {
        id: id.into(),
        role: "officer".into(),
        request_id: format!("bench-{id}"),
    }
}

/// The lines of one batch: `count` cards from `first`, codes from a fast generator.
fn batch_file(first: u64, count: u64, rng: &mut TestRng) -> Vec<u8> {
    let mut out = Vec::with_capacity(count as usize * 36 + 16);
    out.extend_from_slice(b"serial;pin;puk\n");
    for i in 0..count {
        let r = rng.next();
        // Writing into a Vec cannot fail.
        let _ = writeln!(
            out,
            "{};{:05};{:08}",
            serial(first, i),
            r % 100_000,
            (r >> 20) % 100_000_000
        );
    }
    out
}

fn rotate_in(work: &Path, a: &RotateBench) -> anyhow::Result<()> {
    let n = a.records;
    let base = 1_000_000_000u64;
    let under = bench_hsm(a.hsm, &work.join("hsm"))?;
    let hsm = under.hsm.clone();
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&work.join("store"))?);
    let audit = Arc::new(AuditLog::open(store.clone(), 1000)?);
    audit.unlock(hsm.clone())?;
    let codes = Arc::new(CodeVault::open(store.clone())?.0);
    let rules = ParseRules::default();

    // 1. The vault: N cards in batches of M.
    let batches = n.div_ceil(a.batch_records);
    eprintln!(
        "importing {n} cards in {batches} batches of up to {}, {} at a time",
        a.batch_records, a.importers
    );
    let started = Instant::now();
    let done = AtomicU64::new(0);
    let next_batch = AtomicU64::new(0);
    let report_every = (n / 10).max(1);
    std::thread::scope(|s| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..a.importers)
            .map(|_| {
                let (codes, hsm, audit, rules) = (&codes, &hsm, &audit, &rules);
                let (done, next_batch) = (&done, &next_batch);
                s.spawn(move || -> anyhow::Result<()> {
                    loop {
                        let b = next_batch.fetch_add(1, Ordering::Relaxed);
                        if b >= batches {
                            return Ok(());
                        }
                        let first = b * a.batch_records;
                        let count = a.batch_records.min(n - first);
                        // The same codes whichever thread imports the batch.
                        let mut rng = TestRng(0x005E_ED0F_4B1D_CAFE ^ b.wrapping_mul(0x9E37));
                        let file = batch_file(base + first, count, &mut rng);
                        let request = ImportRequest {
                            manufacturer: "bench".into(),
                            expected_cards: Some(count),
                            expected_sha256: None,
                            actor: "bench".into(),
                            role: "manufacturer".into(),
                            request_id: String::new(),
                        };
                        let ctx = ImportContext {
                            vault: codes,
                            hsm: &**hsm,
                            audit,
                            rules,
                        };
                        match import_file(ctx, &file[..], &request, &|_| {})? {
                            ImportOutcome::Committed(r) if r.cards == count => {}
                            other => {
                                bail!("a batch did not commit: {:?}", other.record().problems)
                            }
                        }
                        let before = done.fetch_add(count, Ordering::Relaxed);
                        if (before + count) / report_every > before / report_every {
                            eprintln!(
                                "  {} cards ({:.0} cards/s)",
                                before + count,
                                per_s(before + count, started.elapsed())
                            );
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("an importer panicked"))??;
        }
        Ok(())
    })?;
    let t_import = started.elapsed();
    let ring = Keyring::load(&*store)?;
    let data_keys = ring.len() as u64;
    let term_before = active(&*hsm)?;

    // 2. Propose, approve, run: timed from the approval to the job's end.
    let keys = Ceremonies::new(
        codes.clone(),
        audit.clone(),
        CeremonyPolicy {
            chunk: a.chunk,
            insecure_allow_single_share: true,
            ..CeremonyPolicy::default()
        },
    );
    let now = audit.clock().now_ms();
    let p = keys.propose(
        &*hsm,
        &officer("officer-a"),
        Operation::Rotate,
        "bench rotation",
        now,
    )?;
    eprintln!("rotating {data_keys} data keys");
    let started = Instant::now();
    keys.approve(&*hsm, &officer("officer-b"), p.id, now)?;
    let job = keys
        .run(&*hsm, &mut |_| {})?
        .context("the approval left no job")?;
    let t_rotate = started.elapsed();
    if job.state != JobState::Done || job.done != data_keys {
        bail!(
            "the job ended {:?} with {} of {data_keys} keys",
            job.state,
            job.done
        );
    }
    let term_after = active(&*hsm)?;
    let ring = Keyring::load(&*store)?;
    if ring.iter().any(|r| r.wrapped.term != term_after) {
        bail!("a data key is not under the new term {term_after}");
    }

    // 3. Baseline: the same number of bare HSM rewraps.
    let wrapped: Vec<_> = ring.iter().map(|r| r.wrapped.clone()).collect();
    let started = Instant::now();
    for w in &wrapped {
        hsm.rewrap_data_key(w)?;
    }
    let t_bare = started.elapsed();

    // 4. Cards still open.
    let mut rng = TestRng(0xFACE_B00C_1234_5678);
    for _ in 0..200 {
        let s = serial(base, rng.next() % n);
        if codes.pending_release(&*hsm, &s)?.is_none() {
            bail!("card {s} does not open after the rotation");
        }
    }

    let rate = per_s(data_keys, t_rotate);
    let bare_rate = per_s(data_keys, t_bare);
    println!("hsm                 {}", a.hsm);
    println!("records             {n}");
    println!(
        "import              {:.2} s  {:.0} cards/s  ({batches} batches, {} importers)",
        t_import.as_secs_f64(),
        per_s(n, t_import),
        a.importers
    );
    println!(
        "rotation            {:.3} s  {term_before} -> {term_after}, {data_keys} data keys in chunks of {}",
        t_rotate.as_secs_f64(),
        a.chunk
    );
    println!(
        "baseline rewraps    {:.3} s  {:.0} rewraps/s (bare HSM calls)",
        t_bare.as_secs_f64(),
        bare_rate
    );
    println!(
        "rotate records={n} data_keys={data_keys} seconds={:.3} rewraps_per_s={:.0} \
         baseline_rewraps_per_s={:.0} baseline_ratio={:.2} import_cards_per_s={:.0} importers={}",
        t_rotate.as_secs_f64(),
        rate,
        bare_rate,
        t_bare.as_secs_f64() / t_rotate.as_secs_f64().max(1e-9),
        per_s(n, t_import),
        a.importers
    );
    Ok(())
}

fn active(hsm: &dyn Hsm) -> anyhow::Result<vault::TermId> {
    hsm.status()
        .terms
        .iter()
        .find(|t| t.state == TermState::Active)
        .map(|t| t.id)
        .context("the HSM has no active term")
}
