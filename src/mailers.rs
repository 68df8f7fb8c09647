//! Bulk print runs and the counter's page: where the vault's codes meet the renderers.
//!
//! This is the one place where a card's codes cross from `vault` ([`vault::CardCodes`])
//! to `dispatch` ([`dispatch::Codes`]), for print:
//!
//! - [`print`] runs a [`PrintJob`] through a sealed [`PrintRun`]: the job yields the selected
//!   cards with their codes and mailer numbers, rayon renders them, the run seals each print
//!   file to the print facility, and each file is recorded in the vault (its mailers and one
//!   audit event) before its manifest is written;
//! - [`counter_page`] renders the part A page of one card for the counter (one PDF, in memory);
//! - [`recover`] brings the output directory and the vault to agree at start-up, after a crash.
//!
//! They run on the calling thread (and the rayon pool): call them from `spawn_blocking`.
//!
//! # Start-up recovery and file numbers
//!
//! A file's vault record is its commit (see [`cards::mailers`] for why it cannot leave a
//! card marked printed with no printable file). Before the service listens, [`recover`]:
//!
//! 1. marks every run found `running` as `interrupted`;
//! 2. removes partial outputs (`.LABEL-NNNN.pdf.age.partial`, `.LABEL-NNNN.manifest.json.partial`);
//! 3. checks the manifest of every recorded file against the record (and the sealed file's
//!    size against the recorded one): a manifest that does not match — damaged, cut or edited
//!    — is moved into `OUT_DIR/.quarantine/` and reported, so the facility never reads it;
//! 4. writes the manifest of every recorded file that has its sealed file, whole, but no
//!    manifest, from the record;
//! 5. moves every sealed file or manifest of a file that no run recorded into
//!    `OUT_DIR/.quarantine/` (0700, hidden: the print facility reads only `*.manifest.json` at
//!    the top of `OUT_DIR`), never overwriting what is there.
//!
//! Each action is logged. Names this module does not write are left alone. A run then numbers
//! its files after the last number its label used, in the vault or on disk (quarantine
//! included): the default rerun of a batch works after any crash and never reuses a name the
//! facility may have seen.

use cards::Date;
use cards::{Cards, PrintJob, PrintRunRecord};
use cards::{MailerItem, RecordedFile};
use dispatch::bulk::{
    file_names, parse_file_name, write_manifest, BoxError, FileKind, FileStep, Manifest,
    OwnedMailer, PrintRun, PrintedFile, StepHook,
};
use dispatch::{
    Addressee, Codes, Issuer, Layout, Mailer, Plan, PrintRenderer, Rendered, Renderer, SecretBuf,
    Templates,
};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use vault::AuditLog;
use vault::CardCodes;
use vault::Hsm;

/// How print files are made: renderer settings, where they go, whom they are sealed to.
#[derive(Debug, Clone)]
pub struct PrintSetup {
    /// The print templates (built-in or overridden).
    pub templates: Arc<Templates>,
    /// Page layout.
    pub layout: Layout,
    /// Issuer texts.
    pub issuer: Issuer,
    /// Directory the sealed files and manifests are written to.
    pub out_dir: PathBuf,
    /// The print facility's age recipients (`age1…`).
    pub recipients: Vec<String>,
    /// Mailers a print file.
    pub per_file: usize,
}

impl PrintSetup {
    /// Creates the output directory (mode 0700) if it is missing.
    ///
    /// # Errors
    /// [`vault::Error::Storage`] naming the directory.
    pub fn create_out_dir(&self) -> vault::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        if self.out_dir.is_dir() {
            return Ok(());
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.out_dir)
            .map_err(|e| {
                vault::Error::Storage(format!(
                    "print output directory {}: {e}",
                    self.out_dir.display()
                ))
            })
    }

    /// A renderer for these settings.
    pub fn renderer(&self) -> PrintRenderer {
        PrintRenderer::new(
            self.templates.clone(),
            self.layout.clone(),
            self.issuer.clone(),
        )
    }
}

/// A card's codes as the renderers take them.
///
/// # Errors
/// A code that is not 1 to 16 digits (cannot happen for a record the vault wrote).
pub fn to_dispatch(codes: &CardCodes) -> dispatch::Result<Codes> {
    let c = Codes::new(codes.pin.expose_secret(), codes.puk.expose_secret())?;
    match &codes.signature {
        Some((p, k)) => c.with_signature(p.expose_secret(), k.expose_secret()),
        None => Ok(c),
    }
}

/// The part of `plan` named `part` (`whole`, `A` or `B`) of these codes.
fn cut(plan: &Plan, part: &str, codes: &Codes) -> dispatch::Result<dispatch::PartCodes> {
    let parts = plan.cut(codes)?;
    let wanted = part.to_ascii_lowercase();
    parts
        .into_iter()
        .find(|p| p.part.name.as_str().eq_ignore_ascii_case(&wanted))
        .ok_or(dispatch::Error::PartRange {
            part: "requested",
            field: "part name",
        })
}

fn owned(item: MailerItem, plan: &Plan, part: &str) -> Result<OwnedMailer, BoxError> {
    let codes = to_dispatch(&item.codes)?;
    Ok(OwnedMailer {
        addressee: Addressee {
            name: item.name,
            address: item.address,
        },
        codes: cut(plan, part, &codes)?,
        card_serial: item.serial,
        number: item.number,
    })
}

/// Runs `job` to its end: renders, seals and records every print file, then closes the run
/// (`done`, or `failed` with the first error). Returns the run record and the manifests.
///
/// # Errors
/// Only when the run cannot even be closed (store or audit failure); a failed print is a
/// `failed` run record, with the files completed before the failure recorded.
#[allow(clippy::too_many_arguments)]
pub fn print(
    hsm: &dyn Hsm,
    audit: &AuditLog,
    job: PrintJob<'_>,
    setup: &PrintSetup,
    plan: &Plan,
    part: &str,
    today: Date,
    progress: &(dyn Fn(u64) + Sync),
) -> vault::Result<(PrintRunRecord, Vec<Manifest>)> {
    let outcome = (|| -> Result<Vec<Manifest>, String> {
        let label = job.label();
        let recorded = job.recorded_file_names().map_err(|e| e.to_string())?;
        let first_file = next_file_number(&setup.out_dir, &recorded, &label)?;
        let mut run = PrintRun::new(setup.renderer(), &setup.recipients, &setup.out_dir, label)
            .map_err(|e| e.to_string())?
            .per_file(setup.per_file)
            .first_file(first_file);
        if let Some(hook) = dev_test_pause_hook() {
            run = run.on_step(hook);
        }
        let items = job.mailers(hsm, today).map_err(|e| e.to_string())?;
        let mailers = items.map(|item| {
            item.map_err(BoxError::from)
                .and_then(|m| owned(m, plan, part))
        });
        let on_file = |file: &PrintedFile<'_>| -> Result<(), BoxError> {
            job.record_file(
                audit,
                &RecordedFile {
                    name: &file.manifest.file,
                    numbers: file.numbers,
                    serials: file.serials,
                    sha256_clear_pdf: &file.manifest.sha256_clear_pdf,
                    sealed_bytes: file.manifest.sealed_bytes,
                },
            )
            .map_err(BoxError::from)
        };
        // A mailer the page cannot carry is set aside (listed in the run record), not a failure.
        let on_set_aside = |m: &dispatch::bulk::SetAside| -> Result<(), BoxError> {
            job.set_aside(&m.serial, m.number, &m.reason.to_string());
            Ok(())
        };
        run.run_recorded(mailers, progress, &on_file, &on_set_aside)
            .map_err(|e| e.to_string())
    })();
    match outcome {
        Ok(manifests) => Ok((job.finish(audit, None)?, manifests)),
        Err(e) => Ok((job.finish(audit, Some(e))?, Vec::new())),
    }
}

/// The one-page PDF of part `part` of `plan` for one card (no mailer number): for the counter.
/// The caller gets the codes through [`cards::Cards::release_codes`], which audits.
///
/// # Errors
/// A plan that does not fit the card's codes, a name or address the page cannot carry.
pub fn counter_page(
    setup: &PrintSetup,
    addressee: &Addressee,
    serial: &str,
    codes: &CardCodes,
    plan: &Plan,
    part: &str,
) -> dispatch::Result<SecretBuf> {
    let codes = to_dispatch(codes)?;
    let part = cut(plan, part, &codes)?;
    let mailer = Mailer {
        addressee,
        card_serial: serial,
        codes: &part,
        number: None,
    };
    match setup.renderer().render(&mailer)? {
        Rendered::Pdf(pdf) => Ok(pdf),
        _ => Err(dispatch::Error::NoPages),
    }
}

/// The hidden folder of `out_dir` that files in no run are moved to.
pub const QUARANTINE_DIR: &str = ".quarantine";

/// The number of the next file of `label`: one past the largest used, by a recorded file or
/// by any file of that label in `out_dir` or its quarantine (partial ones too).
fn next_file_number(out_dir: &Path, recorded: &[String], label: &str) -> Result<u32, String> {
    let mut last = 0u32;
    let mut see = |name: &str| {
        if let Some(n) = parse_file_name(name).filter(|n| n.label == label) {
            last = last.max(n.number);
        }
    };
    recorded.iter().for_each(|n| see(n));
    for dir in [out_dir.to_owned(), out_dir.join(QUARANTINE_DIR)] {
        for name in list_names(&dir).map_err(|e| e.to_string())? {
            see(&name);
        }
    }
    last.checked_add(1)
        .ok_or_else(|| format!("print run label {label}: no file number left"))
}

/// The names of the plain files of `dir` (none when it does not exist).
fn list_names(dir: &Path) -> vault::Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_storage(dir, &e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_storage(dir, &e))?;
        let is_file = entry
            .file_type()
            .map_err(|e| io_storage(&entry.path(), &e))?
            .is_file();
        if let (true, Ok(name)) = (is_file, entry.file_name().into_string()) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

fn io_storage(path: &Path, e: &dyn std::fmt::Display) -> vault::Error {
    vault::Error::Storage(format!("print output {}: {e}", path.display()))
}

/// What [`recover`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Runs found `running`, now `interrupted`.
    pub interrupted: Vec<u64>,
    /// Partial outputs removed.
    pub removed: Vec<String>,
    /// Recorded files whose manifest was written again.
    pub finished: Vec<String>,
    /// Files of no run moved to the quarantine folder (their names there).
    pub quarantined: Vec<String>,
    /// Recorded files without a manifest whose sealed file does not have its recorded size:
    /// left without a manifest (not printable), logged as errors.
    pub damaged: Vec<String>,
    /// Manifests of recorded files that did not match their record (unreadable, or saying
    /// other counts, serials, digest or size), or whose sealed file did not have its recorded
    /// size: moved to the quarantine folder, logged as errors. A fresh manifest is then
    /// written from the record if the sealed file is whole (see `finished`), else the file
    /// stays unprintable (see `damaged`).
    pub rejected: Vec<String>,
    /// Recorded files with no sealed file in the output directory (collected by the print
    /// facility, or moved away): left alone.
    pub absent: u64,
}

/// Start-up recovery of print runs and print files: see the module documentation. Call it
/// before the service takes requests (no run may be going).
///
/// Not audited (it runs before the unseal): each action is logged.
///
/// # Errors
/// Store errors; [`vault::Error::Storage`] naming a file of the output directory
/// that cannot be read, removed, moved or written.
pub fn recover(cms: &Cards, setup: &PrintSetup) -> vault::Result<Recovery> {
    let mut done = Recovery {
        interrupted: cms.recover_print_runs()?,
        ..Recovery::default()
    };
    for id in &done.interrupted {
        tracing::warn!(
            run = id,
            "print run found running at start-up: marked interrupted"
        );
    }
    let out = &setup.out_dir;
    if !out.is_dir() {
        return Ok(done);
    }
    let recorded: BTreeSet<String> = cms.print_file_names()?.into_iter().collect();

    // Partial outputs first: a recorded file's manifest is then written afresh.
    for name in list_names(out)? {
        if parse_file_name(&name).is_some_and(|n| n.partial) {
            std::fs::remove_file(out.join(&name)).map_err(|e| io_storage(&out.join(&name), &e))?;
            tracing::warn!(file = %name, "partial print output removed at start-up");
            done.removed.push(name);
        }
    }

    // Recorded files: a manifest that does not match its record is set aside; a file without
    // a manifest is finished from the record.
    let quarantine = out.join(QUARANTINE_DIR);
    let names: BTreeSet<String> = list_names(out)?.into_iter().collect();
    for name in &recorded {
        let Some(parsed) = parse_file_name(name) else {
            continue;
        };
        let manifest_name = file_names(&parsed.label, parsed.number).1;
        if !names.contains(name) {
            done.absent += 1;
            continue;
        }
        let facts = cms
            .print_file_facts(name)?
            .ok_or_else(|| vault::Error::Storage(format!("print file {name} is not recorded")))?;
        let size = std::fs::metadata(out.join(name))
            .map_err(|e| io_storage(&out.join(name), &e))?
            .len();
        let manifest = Manifest {
            file: facts.dir.name.clone(),
            batch_label: facts.label,
            count: facts.dir.count,
            first_serial: facts.first_serial,
            last_serial: facts.last_serial,
            first_number: facts.dir.first_number,
            last_number: facts.dir.first_number + facts.dir.count.saturating_sub(1),
            // A recorded file's numbers are consecutive.
            numbers: None,
            sha256_clear_pdf: facts.dir.sha256_clear_pdf,
            sealed_bytes: facts.dir.sealed_bytes,
        };
        if names.contains(&manifest_name) {
            let Some(why) = manifest_problem(out, &manifest_name, &manifest, size) else {
                continue;
            };
            let to = quarantine_file(&quarantine, &out.join(&manifest_name), &manifest_name)?;
            tracing::error!(
                file = %manifest_name,
                problem = %why,
                to = %to.display(),
                "print manifest does not match its record: moved to quarantine"
            );
            done.rejected.push(manifest_name.clone());
        }
        if size != manifest.sealed_bytes {
            // Not a crash's leftover (a sealed file is fsynced before it is published and
            // recorded): someone changed it. It stays without a manifest, so unprintable.
            tracing::error!(
                file = %name,
                recorded_bytes = manifest.sealed_bytes,
                bytes = size,
                "recorded print file does not have its recorded size: left without a manifest"
            );
            done.damaged.push(name.clone());
            continue;
        }
        write_manifest(out, &manifest).map_err(|e| vault::Error::Storage(e.to_string()))?;
        tracing::warn!(file = %name, "print file recorded without a manifest: manifest written at start-up");
        done.finished.push(name.clone());
    }

    // Files of no run: moved aside.
    for name in list_names(out)? {
        let Some(parsed) = parse_file_name(&name) else {
            continue;
        };
        if parsed.partial || recorded.contains(&parsed.sealed_name()) {
            continue;
        }
        let to = quarantine_file(&quarantine, &out.join(&name), &name)?;
        tracing::warn!(
            file = %name,
            kind = match parsed.kind { FileKind::Sealed => "sealed file", FileKind::Manifest => "manifest" },
            to = %to.display(),
            "print file in no run moved to quarantine at start-up"
        );
        done.quarantined.push(name);
    }
    if !done.quarantined.is_empty() || !done.rejected.is_empty() {
        sync_dir(&quarantine)?;
    }
    if !done.removed.is_empty()
        || !done.quarantined.is_empty()
        || !done.finished.is_empty()
        || !done.rejected.is_empty()
    {
        sync_dir(out)?;
    }
    if done.absent > 0 {
        tracing::info!(
            files = done.absent,
            "recorded print files no longer in the output directory (collected by the print facility?)"
        );
    }
    Ok(done)
}

/// What is wrong with the manifest `manifest_name` in `out`, given the manifest `recorded`
/// that the vault's record makes and the `sealed_size` of the sealed file: `None` when it says
/// what the record says and the sealed file has the recorded size. (The sealed file's content
/// is checked by the facility: age authenticates it, and the manifest carries the clear PDF's
/// SHA-256.)
fn manifest_problem(
    out: &Path,
    manifest_name: &str,
    recorded: &Manifest,
    sealed_size: u64,
) -> Option<String> {
    let bytes = match std::fs::read(out.join(manifest_name)) {
        Ok(b) => b,
        Err(e) => return Some(format!("unreadable: {e}")),
    };
    let found: Manifest = match serde_json::from_slice(&bytes) {
        Ok(m) => m,
        Err(e) => return Some(format!("not a manifest: {e}")),
    };
    let mut wanted = recorded.clone();
    // A manifest may list its numbers even when they are consecutive.
    if let Some(numbers) = &found.numbers {
        let consecutive = numbers.len() as u64 == wanted.count
            && numbers
                .iter()
                .zip(wanted.first_number..)
                .all(|(n, want)| *n == want);
        if consecutive {
            wanted.numbers = Some(numbers.clone());
        }
    }
    if found != wanted {
        return Some(format!(
            "it says other facts than the record of {} (count, serials, numbers, digest or size)",
            recorded.file
        ));
    }
    if sealed_size != recorded.sealed_bytes {
        return Some(format!(
            "the sealed file {} has {sealed_size} bytes, its record {}",
            recorded.file, recorded.sealed_bytes
        ));
    }
    None
}

/// Moves `from` into `quarantine` (made 0700 if missing) under `name`, or `name.1`, `name.2`…
/// if taken; returns where it went.
fn quarantine_file(quarantine: &Path, from: &Path, name: &str) -> vault::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    if !quarantine.is_dir() {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(quarantine)
            .map_err(|e| io_storage(quarantine, &e))?;
    }
    let mut to = quarantine.join(name);
    let mut n = 0u32;
    while to.exists() {
        n += 1;
        to = quarantine.join(format!("{name}.{n}"));
    }
    std::fs::rename(from, &to).map_err(|e| io_storage(from, &e))?;
    Ok(to)
}

fn sync_dir(dir: &Path) -> vault::Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_storage(dir, &e))
}

/// Where a development test asked print runs to pause: the step, and which time it is reached.
static DEV_TEST_PAUSE: OnceLock<(FileStep, u32)> = OnceLock::new();

/// For crash tests of `serve --dev` only (the caller checks `--dev`): print runs of this
/// process stop for good at the `n`th time any file reaches `step`, after printing
/// `plico: test pause at STEP of FILE` on stdout, so that the test can kill the process
/// there. `spec` is `STEP` or `STEP:N` (`N` from 1), STEP one of `sealed`, `published`,
/// `recorded`, `manifest`.
///
/// # Errors
/// A spec that names no step.
pub fn insecure_dev_test_pause(spec: &str) -> Result<(), String> {
    let (step, n) = match spec.split_once(':') {
        Some((s, n)) => (s, n.parse::<u32>().ok().filter(|n| *n > 0)),
        None => (spec, Some(1)),
    };
    let step = FileStep::ALL
        .into_iter()
        .find(|s| s.as_str() == step.trim());
    match (step, n) {
        (Some(step), Some(n)) => {
            let _ = DEV_TEST_PAUSE.set((step, n));
            Ok(())
        }
        _ => Err(format!(
            "test pause {spec:?}: expected STEP or STEP:N, STEP one of sealed, published, recorded, manifest"
        )),
    }
}

fn dev_test_pause_hook() -> Option<StepHook> {
    let (wanted, n) = *DEV_TEST_PAUSE.get()?;
    static SEEN: AtomicU32 = AtomicU32::new(0);
    Some(Arc::new(move |step: FileStep, file: &str| {
        if step != wanted || SEEN.fetch_add(1, Ordering::AcqRel) + 1 != n {
            return;
        }
        use std::io::Write;
        println!("plico: test pause at {} of {file}", step.as_str());
        let _ = std::io::stdout().flush();
        loop {
            std::thread::park();
        }
    }))
}
