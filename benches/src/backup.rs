//! `plico-bench backup --records N`: the speed and size of a backup (`POST /v1/sys/backup`'s
//! work, without HTTP) of a store holding N imported cards, and of its restore.
//!
//! 1. imports N generated pairs into a fresh sled store under a development HSM (as
//!    `plico-bench import`);
//! 2. the baseline: every entry of every tree read once, sequentially, with no other work;
//! 3. the backup: the copy-on-write snapshot of the store (`plico::backup::SnapshotStore`),
//!    framed and sealed with age to a fresh recipient, written to a file and synced;
//! 4. the restore: the archive decrypted and written into a second fresh store, flushed.
//!
//! It ends with one line:
//! `backup records=… store_bytes=… archive_bytes=… backup_mb_per_s=… backup_mb_per_cpu_s=…
//! scan_ratio=… restore_mb_per_s=… …` where MB/s is archive bytes (10^6) per second of wall
//! clock, MB per CPU second the same per second of this process's CPU time (the figure to
//! trust on a shared machine), and `scan_ratio` is the backup's speed over the bare scan's,
//! both in CPU time.

use crate::{dev_hsm, import_codes, in_work_dir, write_file};
use anyhow::{bail, Context};
use clap::Args;
use plico::backup::{ArchiveReader, Backups, Item, SnapshotStore};
use plico::config::BackupConfig;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use vault::{AuditLog, Batch, CodeVault, SledStore, Store, Tree};

/// `plico-bench backup` arguments.
#[derive(Debug, Args)]
pub struct BackupBench {
    /// Pairs imported before the backup.
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    /// Work directory (fresh under the system temp dir by default, removed at the end).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Runs the bench.
///
/// # Errors
/// I/O and vault errors.
pub fn run(a: &BackupBench) -> anyhow::Result<()> {
    if a.records == 0 {
        bail!("--records must be at least 1");
    }
    in_work_dir(a.dir.as_deref(), "backup", |work| bench_in(work, a.records))
}

/// CPU seconds (user + system) this process has used so far, from `/proc/self/stat` (the
/// machine may be shared: wall-clock rates then say more about the neighbours than about
/// the backup).
fn cpu_s() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1;
            let f: Vec<&str> = after.split_whitespace().collect();
            let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
            Some(ticks / 100.0)
        })
        .unwrap_or(0.0)
}

fn mb_per_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs.max(1e-9)
}

fn bench_in(work: &Path, n: u64) -> anyhow::Result<()> {
    let file = work.join("codes.txt");
    eprintln!("writing {n} lines");
    write_file(&file, n, 1_000_000_000)?;
    let hsm = dev_hsm(&work.join("hsm"))?;
    let sled: Arc<dyn Store> = Arc::new(SledStore::open(&work.join("store"))?);
    let store = Arc::new(SnapshotStore::new(sled.clone()));
    {
        let audit = AuditLog::open(store.clone(), 1000)?;
        audit.unlock(hsm.clone())?;
        let (codes, _) = CodeVault::open(store.clone())?;
        eprintln!("importing");
        import_codes(&codes, &*hsm, &audit, &file, n)?;
        store.flush()?;
    }
    std::fs::remove_file(&file)?;
    let store_bytes = crate::dir_bytes(&work.join("store"));

    // Baseline: every entry read once.
    let started = Instant::now();
    let cpu0 = cpu_s();
    let mut scanned = 0u64;
    for tree in Tree::ALL {
        let mut from = Vec::new();
        loop {
            let chunk = sled.range(tree, &from, None, 4096)?;
            for (k, v) in &chunk {
                scanned += (k.len() + v.len()) as u64;
            }
            match chunk.last() {
                Some((k, _)) if chunk.len() == 4096 => {
                    from = k.clone();
                    from.push(0);
                }
                _ => break,
            }
        }
    }
    let t_scan = started.elapsed().as_secs_f64();
    let c_scan = cpu_s() - cpu0;

    // The backup, sealed to a file.
    let identity = age::x25519::Identity::generate();
    let backups = Backups::new(
        store.clone(),
        Some(work.join("hsm").join(hsm_sim::SimulatedHsm::STATE_FILE)),
        &BackupConfig {
            recipient: Some(identity.to_public().to_string()),
        },
    )?;
    let archive = work.join("backup.age");
    eprintln!("backing up");
    let started = Instant::now();
    let cpu0 = cpu_s();
    let out = std::fs::File::create(&archive)?;
    let manifest = backups.write(&out, 0)?;
    out.sync_all()?;
    let t_backup = started.elapsed().as_secs_f64();
    let c_backup = cpu_s() - cpu0;
    let archive_bytes = std::fs::metadata(&archive)?.len();
    if manifest.bytes != scanned {
        bail!(
            "the backup holds {} bytes, the scan read {scanned}",
            manifest.bytes
        );
    }

    // The restore into a fresh store.
    eprintln!("restoring");
    let started = Instant::now();
    let cpu0 = cpu_s();
    let target = SledStore::open(&work.join("restored"))?;
    let ids: Vec<Box<dyn age::Identity + Send + Sync>> = vec![Box::new(identity)];
    let mut reader = ArchiveReader::open(
        std::io::BufReader::new(std::fs::File::open(&archive)?),
        &ids,
    )?;
    let mut batch = Batch::new();
    let mut in_batch = 0;
    while let Some(item) = reader.next_item()? {
        if let Item::Entry(tree, k, v) = item {
            batch.put(tree, k, v);
            in_batch += 1;
            if in_batch == 8192 {
                target.write(&batch)?;
                batch = Batch::new();
                in_batch = 0;
            }
        }
    }
    target.write(&batch)?;
    target.flush()?;
    let t_restore = started.elapsed().as_secs_f64();
    let c_restore = cpu_s() - cpu0;
    std::io::stderr().flush().context("stderr")?;

    println!(
        "backup records={n} store_bytes={store_bytes} archive_bytes={archive_bytes} \
         entries={} scan_s={t_scan:.2} backup_s={t_backup:.2} backup_cpu_s={c_backup:.2} backup_mb_per_s={:.1} \
         backup_mb_per_cpu_s={:.1} scan_mb_per_cpu_s={:.1} scan_ratio={:.2} \
         restore_s={t_restore:.2} restore_cpu_s={c_restore:.2} restore_mb_per_s={:.1} \
         restore_mb_per_cpu_s={:.1}",
        manifest.entries,
        mb_per_s(archive_bytes, t_backup),
        mb_per_s(archive_bytes, c_backup),
        mb_per_s(scanned, c_scan),
        c_scan / c_backup.max(1e-9),
        mb_per_s(archive_bytes, t_restore),
        mb_per_s(archive_bytes, c_restore),
    );
    Ok(())
}
