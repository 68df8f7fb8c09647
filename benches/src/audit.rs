//! `plico-bench audit --appenders N --seconds S`: durable audit appends from N threads at once.
//!
//! 1. baseline, in the same run: **one** appender on a fresh sled store for S seconds, each
//!    append durable (flushed) before it returns — the rate a caller that appends one event at
//!    a time gets;
//! 2. N appenders on another fresh sled store for S seconds, every thread appending as fast as
//!    its appends return (each one durable before it returns) — the figure that counts;
//! 3. checks the chain of each store verifies and holds exactly the appends counted.
//!
//! The events are the shape of a card activation (actor, role, request id, one personal field,
//! so one HMAC each). The audit key is installed without an HSM by default (no anchor); with
//! `--hsm sim|pkcs11` the log is unlocked with that HSM, so the periodic checkpoints (every
//! 1,000 events) are also anchored in it.
//!
//! It ends with one line:
//! `audit appenders=… appends_per_s=… baseline_ratio=… baseline_per_s=… flushes=… events_per_flush=…`
//! where the baseline is the one-appender rate of step 1, `baseline_ratio` the N-appender rate
//! over it, and `flushes` the store flushes of step 2 (counted by a wrapper around the store).

use super::{bench_hsm, in_work_dir, per_s, BenchHsm};
use anyhow::bail;
use clap::Args;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vault::AuditLog;
use vault::DataKey;
use vault::NewEvent;
use vault::SledStore;
use vault::{Batch, Entries, Store, Tree};

/// `plico-bench audit` arguments.
#[derive(Debug, Args)]
pub struct AuditBench {
    /// Threads appending at once.
    #[arg(long, default_value_t = 64)]
    pub appenders: u64,
    /// Seconds each of the two runs lasts.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Work directory (a fresh one under the system temp dir by default; removed at the end
    /// unless given).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Unlock the log with this HSM (checkpoints anchored in it); by default only the audit
    /// key is installed.
    #[arg(long, value_enum)]
    pub hsm: Option<BenchHsm>,
}

/// Runs `plico-bench audit`.
pub fn run(a: &AuditBench) -> anyhow::Result<()> {
    if a.appenders == 0 || a.seconds.is_nan() || a.seconds <= 0.0 {
        bail!("--appenders must be at least 1 and --seconds above 0");
    }
    in_work_dir(a.dir.as_deref(), "audit", |work| audit_in(work, a))
}

/// A store that counts its writes and flushes.
#[derive(Debug)]
struct Counting {
    inner: SledStore,
    writes: AtomicU64,
    flushes: AtomicU64,
}

impl Store for Counting {
    fn get(&self, tree: Tree, key: &[u8]) -> vault::Result<Option<Vec<u8>>> {
        self.inner.get(tree, key)
    }
    fn range(
        &self,
        tree: Tree,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> vault::Result<Entries> {
        self.inner.range(tree, from, to, limit)
    }
    fn last(&self, tree: Tree) -> vault::Result<Option<(Vec<u8>, Vec<u8>)>> {
        self.inner.last(tree)
    }
    fn write(&self, batch: &Batch) -> vault::Result<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.write(batch)
    }
    fn flush(&self) -> vault::Result<()> {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        self.inner.flush()
    }
}

fn event(thread: u64, i: u64) -> NewEvent {
    NewEvent::new("card.activate", format!("8039{:06}{i:09}", thread))
        .by("acc_0123456789abcdef", "operator")
        .request(format!("req-{thread}-{i}"))
        .personal("codice_fiscale", "RSSMRA80A01H501U")
}

/// One run's figures.
struct Figures {
    appends: u64,
    elapsed: Duration,
    writes: u64,
    flushes: u64,
}

/// `appenders` threads appending durably for `seconds` into a fresh store in `dir`.
fn one_run(
    dir: &Path,
    appenders: u64,
    seconds: f64,
    hsm: Option<BenchHsm>,
) -> anyhow::Result<Figures> {
    let under = match hsm {
        Some(kind) => Some(bench_hsm(kind, &dir.join("hsm"))?),
        None => None,
    };
    let store = Arc::new(Counting {
        inner: SledStore::open(&dir.join("store"))?,
        writes: AtomicU64::new(0),
        flushes: AtomicU64::new(0),
    });
    let log = AuditLog::open(store.clone(), vault::DEFAULT_CHECKPOINT_EVERY)?;
    match &under {
        Some(h) => log.unlock(h.hsm.clone())?,
        None => log.set_key(Some(&DataKey::from_bytes([7u8; 32])))?,
    }
    let first = log.append(NewEvent::new("bench.start", "audit"))?;
    let (writes0, flushes0) = (
        store.writes.load(Ordering::Relaxed),
        store.flushes.load(Ordering::Relaxed),
    );
    let stop = AtomicBool::new(false);
    let appended = AtomicU64::new(0);
    let started = Instant::now();
    let failed: Option<vault::Error> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..appenders)
            .map(|t| {
                let (log, stop, appended) = (&log, &stop, &appended);
                s.spawn(move || -> vault::Result<()> {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        log.append(event(t, i))?;
                        i += 1;
                        appended.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(())
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs_f64(seconds));
        stop.store(true, Ordering::Relaxed);
        handles
            .into_iter()
            .filter_map(|h| match h.join() {
                Ok(r) => r.err(),
                Err(_) => Some(vault::Error::Storage("an appender panicked".into())),
            })
            .next()
    });
    let elapsed = started.elapsed();
    if let Some(e) = failed {
        return Err(e.into());
    }
    let appends = appended.load(Ordering::Relaxed);
    let figures = Figures {
        appends,
        elapsed,
        writes: store.writes.load(Ordering::Relaxed) - writes0,
        flushes: store.flushes.load(Ordering::Relaxed) - flushes0,
    };
    let report = log.verify()?;
    if !report.intact() {
        bail!("the chain does not verify: {:?}", report.problem);
    }
    if report.events != first + appends {
        bail!(
            "the chain holds {} events, {} were appended",
            report.events,
            first + appends
        );
    }
    drop(log);
    drop(under);
    Ok(figures)
}

fn audit_in(work: &Path, a: &AuditBench) -> anyhow::Result<()> {
    eprintln!("baseline: one appender for {} s", a.seconds);
    let base = one_run(&work.join("one"), 1, a.seconds, a.hsm)?;
    eprintln!("{} appenders for {} s", a.appenders, a.seconds);
    let many = one_run(&work.join("many"), a.appenders, a.seconds, a.hsm)?;
    let base_rate = per_s(base.appends, base.elapsed);
    let rate = per_s(many.appends, many.elapsed);
    let hsm = a.hsm.map_or("none".to_string(), |h| h.to_string());
    println!("hsm                 {hsm}");
    println!(
        "one appender        {:>9.0} appends/s  ({} appends, {} writes, {} flushes)",
        base_rate, base.appends, base.writes, base.flushes
    );
    println!(
        "{:<3} appenders       {:>9.0} appends/s  ({} appends, {} writes, {} flushes)",
        a.appenders, rate, many.appends, many.writes, many.flushes
    );
    println!(
        "audit appenders={} appends_per_s={:.0} baseline_ratio={:.2} baseline_per_s={:.0} \
         flushes={} events_per_flush={:.1}",
        a.appenders,
        rate,
        rate / base_rate.max(1e-9),
        base_rate,
        many.flushes,
        many.appends as f64 / (many.flushes.max(1)) as f64
    );
    Ok(())
}
