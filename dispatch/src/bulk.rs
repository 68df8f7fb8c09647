//! Bulk print runs: many mailers rendered in parallel into sealed (age-encrypted) PDF files of
//! bounded size, each with a manifest for the print facility.
//!
//! ## Design
//!
//! [`PrintRun::run`] pulls mailers from an iterator in chunks (512 by default) and runs three
//! stages side by side on the rayon pool, each step one `rayon::join`: chunk k+2 is pulled
//! from the input, chunk k+1's pages are rendered ([`PrintRenderer::render_page`], in
//! parallel), and chunk k's pages are appended, in input order, to the current [`PdfWriter`]
//! (PDF objects, hashing, encryption). So every CPU stage of a run is work of the pool: a run
//! uses as many cores as the pool has threads, one thread as well as two (the sealing stage
//! used to be a thread of its own beside the pool, so a one-thread pool kept two cores busy).
//! Work stealing balances the three stages; the step ends when all three have.
//!
//! What waits on the disk is not on the pool: a full file's age stream is finished on the
//! pool, then handed, through a channel of one slot, to a publishing thread that syncs it,
//! publishes it, has the caller record it and writes its manifest, in file order, while the
//! pool goes on with the next file. At most four chunks of mailers (pulled, rendering,
//! appending, and the next pulled) and two finished files are alive at any time, whatever
//! the size of the batch: memory is flat in the batch size. Mailer numbers keep their input
//! order in the files.
//!
//! The sink of each `PdfWriter` is a small hashing adaptor (SHA-256 of the **clear** PDF, via
//! aws-lc-rs) in front of an age [`age::stream::StreamWriter`] encrypting to the
//! print facility's x25519 recipients, in front of the file. A new file is started every
//! `per_file` mailers (10,000 by default):
//!
//! ```text
//! <out_dir>/<label>-0001.pdf.age          sealed PDF, 0600
//! <out_dir>/<label>-0001.manifest.json    manifest, 0600, written after the sealed file
//! ```
//!
//! Each file is written under a hidden temporary name (`.<name>.partial`, created 0600 and
//! exclusively), fsynced, renamed to its final name, and the directory fsynced; a run that
//! fails removes its partial file, and files already completed stay (each with its manifest).
//! An existing file of the same name is never overwritten: files are numbered from
//! [`PrintRun::first_file`] (1 by default), and the service starts a run of a label after the
//! last number that label used ([`parse_file_name`] reads the names back). [`write_manifest`]
//! writes a manifest the same way, for the service's start-up recovery. A [`StepHook`] sees
//! each [`FileStep`] of each file (a crash test pauses there and kills the process).
//!
//! ## What is written
//!
//! Nothing but sealed files and manifests: no clear PDF, page or code ever touches the disk.
//! The manifest ([`Manifest`]) travels to the print facility with its file and carries the
//! **full** card serials of the first and last mailer (they are not codes, and the facility
//! needs them to reconcile), the mailer numbers, the SHA-256 of the clear PDF and the size of
//! the sealed file. It carries no digit of any code.
//!
//! ## What it does not do
//!
//! It does not fetch codes (the service crate feeds [`OwnedMailer`]s built from the vault),
//! does not assign or void mailer numbers, and does not audit: with
//! [`PrintRun::run_with_files`] the caller records each file (its mailers and one audit event)
//! after the sealed file is published and before its manifest is written, so a file that has
//! a manifest is always known to the vault.

use crate::plan::PartCodes;
use crate::render::pdf::{PageStream, PdfWriter, PrintRenderer};
use crate::render::{mask_serial, Addressee, Mailer};
use age::stream::StreamWriter;
use aws_lc_rs::digest;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::error::Error as StdError;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};

/// Mailers a print file holds unless [`PrintRun::per_file`] says otherwise.
pub const DEFAULT_PER_FILE: usize = 10_000;

/// Mailers rendered together on the rayon pool unless [`PrintRun::chunk`] says otherwise.
pub const DEFAULT_CHUNK: usize = 512;

/// Result with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can stop a print run.
///
/// # Security
/// No variant carries a digit: render errors are the crate's (which never echo digits), and
/// input errors are the producer's, which must keep the same rule.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No recipient was given: a print file must be sealed to someone.
    #[error("print run: at least one age recipient is needed")]
    NoRecipients,
    /// A recipient is not an age x25519 recipient (`age1…`).
    #[error("print run: recipient {index} is not an age x25519 recipient (age1…)")]
    Recipient {
        /// Position of the recipient in the list (0-based).
        index: usize,
    },
    /// The batch label cannot be used in a file name.
    #[error("print run: batch label {label:?} must be 1 to 64 characters of A-Z a-z 0-9 . _ - and not start with a dot")]
    Label {
        /// The label as given (labels are not secret).
        label: String,
    },
    /// The mailer source failed.
    #[error("print run: input mailer {index}: {source}")]
    Source {
        /// Position of the mailer in the input (0-based).
        index: u64,
        /// The producer's error.
        source: Box<dyn StdError + Send + Sync>,
    },
    /// A mailer could not be rendered.
    #[error("print run: mailer number {number} (card {serial}): {source}")]
    Render {
        /// The mailer number.
        number: u64,
        /// The masked card serial.
        serial: String,
        /// The renderer's error.
        source: crate::Error,
    },
    /// Writing a sealed file or a manifest failed.
    #[error("print run: {path}: {source}")]
    Io {
        /// The file (or directory).
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A file of this run's names is already there: it is never overwritten.
    #[error("print run: {path} already exists")]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// The age encryptor could not be set up for the recipients.
    #[error("print run: cannot seal to the recipients")]
    Seal,
    /// The caller's recorder refused or failed for a published file; the file has no manifest
    /// and must not be printed.
    #[error("print run: recording {file} failed, so it has no manifest and must not be printed: {source}")]
    Recorded {
        /// The sealed file's name.
        file: String,
        /// The recorder's error.
        source: BoxError,
    },
    /// The caller's recorder failed for a set-aside mailer.
    #[error("print run: recording set-aside mailer number {number} failed: {source}")]
    SetAsideRecord {
        /// The mailer number.
        number: u64,
        /// The recorder's error.
        source: BoxError,
    },
    /// The manifest could not be encoded.
    #[error("print run: manifest of {file}: {source}")]
    Manifest {
        /// The sealed file's name.
        file: String,
        /// The encoder's error.
        source: serde_json::Error,
    },
}

/// A boxed error from the caller's side of a run (its mailer source or its file recorder).
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// A mailer that [`PrintRun::run_recorded`] left out because it cannot be laid out (its name
/// or address does not fit the page), while the rest of the run printed.
///
/// # Security
/// Holds the full card serial (the caller records it in the vault, as for printed mailers)
/// and the reason, which names the field and never its text; no digit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetAside {
    /// The mailer number it had (not in any file).
    pub number: u64,
    /// The card serial, in full.
    pub serial: String,
    /// Why it cannot be laid out.
    pub reason: crate::LayoutError,
}

/// The caller's recorder of set-aside mailers (see [`PrintRun::run_recorded`]).
pub type OnSetAside<'a> = &'a (dyn Fn(&SetAside) -> std::result::Result<(), BoxError> + Sync);

/// A print file just published, as [`PrintRun::run_with_files`] hands it to its recorder:
/// its manifest (not yet written) and every mailer's number and card serial in page order.
#[derive(Debug)]
pub struct PrintedFile<'a> {
    /// The manifest that will be written once the recorder returns.
    pub manifest: &'a Manifest,
    /// Mailer numbers in page order.
    pub numbers: &'a [u64],
    /// Card serials in page order (full: the recorder keeps them in the vault).
    pub serials: &'a [String],
}

/// A mailer that owns its data, so that a run can stream them from the vault one by one.
///
/// # Security
/// The codes are [`PartCodes`] (zeroized on drop); `Debug` is redacted like [`Mailer`]'s.
#[derive(Clone)]
pub struct OwnedMailer {
    /// The holder.
    pub addressee: Addressee,
    /// The card serial in full (pages print it masked).
    pub card_serial: String,
    /// The digits of the part to print.
    pub codes: PartCodes,
    /// The mailer number; every mailer of a print file has one.
    pub number: u64,
}

impl OwnedMailer {
    /// The borrowed [`Mailer`] that renderers take.
    pub fn mailer(&self) -> Mailer<'_> {
        Mailer {
            addressee: &self.addressee,
            card_serial: &self.card_serial,
            codes: &self.codes,
            number: Some(self.number),
        }
    }
}

impl fmt::Debug for OwnedMailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.mailer().fmt(f)
    }
}

/// The manifest of one sealed print file (`<label>-<n>.manifest.json`).
///
/// # Security
/// Holds full card serials (not codes: the print facility reconciles by them) and no digit of
/// any code. Field names are persisted: do not rename them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Name of the sealed file, e.g. `B2026-11-0001.pdf.age`.
    pub file: String,
    /// The run's batch label.
    pub batch_label: String,
    /// Mailers (pages) in the file.
    pub count: u64,
    /// Card serial of the first mailer, in full.
    pub first_serial: String,
    /// Card serial of the last mailer, in full.
    pub last_serial: String,
    /// Number of the first mailer.
    pub first_number: u64,
    /// Number of the last mailer.
    pub last_number: u64,
    /// Every mailer number in page order, present only when they are not contiguous
    /// (`first_number..=last_number` otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numbers: Option<Vec<u64>>,
    /// SHA-256 of the clear PDF, lower-case hex.
    pub sha256_clear_pdf: String,
    /// Size of the sealed file in bytes.
    pub sealed_bytes: u64,
}

/// The steps of one print file on disk, in order, as a [`StepHook`] sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileStep {
    /// The sealed file is complete and synced under its hidden `.partial` name.
    Sealed,
    /// The sealed file is renamed to its final name (and the directory synced); not recorded.
    Published,
    /// The recorder returned: the file is recorded; its manifest is not written yet.
    Recorded,
    /// The manifest is complete and synced under its hidden `.partial` name, not yet renamed.
    ManifestWritten,
}

impl FileStep {
    /// Every step, in order.
    pub const ALL: [FileStep; 4] = [
        FileStep::Sealed,
        FileStep::Published,
        FileStep::Recorded,
        FileStep::ManifestWritten,
    ];

    /// The step's name: `sealed`, `published`, `recorded`, `manifest`.
    pub fn as_str(self) -> &'static str {
        match self {
            FileStep::Sealed => "sealed",
            FileStep::Published => "published",
            FileStep::Recorded => "recorded",
            FileStep::ManifestWritten => "manifest",
        }
    }
}

/// Called at each [`FileStep`] of each file with the sealed file's name: a seam for crash
/// tests (the service pauses there only when a development test asks it to).
pub type StepHook = std::sync::Arc<dyn Fn(FileStep, &str) + Send + Sync>;

/// What a print file name in an output directory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// `<label>-<n>.pdf.age`
    Sealed,
    /// `<label>-<n>.manifest.json`
    Manifest,
}

/// A name a print run writes, taken apart: see [`parse_file_name`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileName {
    /// The run's label.
    pub label: String,
    /// The file's number within its label (`0001` is 1).
    pub number: u32,
    /// Sealed file or manifest.
    pub kind: FileKind,
    /// A hidden `.<name>.partial` (a file being written, or left by a crash).
    pub partial: bool,
}

impl FileName {
    /// The sealed file's name of this file (`<label>-<n>.pdf.age`).
    pub fn sealed_name(&self) -> String {
        file_names(&self.label, self.number).0
    }
}

/// The sealed file's and the manifest's names of file `n` of a run labelled `label`.
pub fn file_names(label: &str, n: u32) -> (String, String) {
    (
        format!("{label}-{n:04}.pdf.age"),
        format!("{label}-{n:04}.manifest.json"),
    )
}

fn label_ok(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 64
        && !label.starts_with('.')
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Takes apart a name a print run writes: `<label>-<NNNN>.pdf.age`,
/// `<label>-<NNNN>.manifest.json`, or either as a hidden `.<name>.partial`. `None` for any
/// other name (which recovery leaves alone).
pub fn parse_file_name(name: &str) -> Option<FileName> {
    let (name, partial) = match name
        .strip_prefix('.')
        .and_then(|n| n.strip_suffix(".partial"))
    {
        Some(inner) => (inner, true),
        None => (name, false),
    };
    let (stem, kind) = if let Some(stem) = name.strip_suffix(".pdf.age") {
        (stem, FileKind::Sealed)
    } else {
        (name.strip_suffix(".manifest.json")?, FileKind::Manifest)
    };
    let (label, digits) = stem.rsplit_once('-')?;
    if digits.len() < 4 || !digits.bytes().all(|b| b.is_ascii_digit()) || !label_ok(label) {
        return None;
    }
    let number: u32 = digits.parse().ok()?;
    // Only the names this module writes: `{n:04}` has no extra leading zero past four digits.
    if file_names(label, number).0 != format!("{stem}.pdf.age") {
        return None;
    }
    Some(FileName {
        label: label.to_owned(),
        number,
        kind,
        partial,
    })
}

/// Writes `manifest` beside its sealed file in `out_dir`: under a hidden `.partial` name,
/// fsynced, renamed, directory fsynced. An existing manifest is never overwritten.
///
/// # Errors
/// [`Error::Exists`], [`Error::Io`], [`Error::Manifest`].
pub fn write_manifest(out_dir: &Path, manifest: &Manifest) -> Result<()> {
    write_manifest_with(out_dir, manifest, None)
}

fn write_manifest_with(out_dir: &Path, manifest: &Manifest, hook: Option<&StepHook>) -> Result<()> {
    let manifest_name = manifest
        .file
        .strip_suffix(".pdf.age")
        .map(|stem| format!("{stem}.manifest.json"))
        .ok_or_else(|| Error::Io {
            path: out_dir.join(&manifest.file),
            source: io::Error::other("a sealed print file's name ends in .pdf.age"),
        })?;
    let final_path = out_dir.join(&manifest_name);
    if final_path.exists() {
        return Err(Error::Exists { path: final_path });
    }
    let mut json = serde_json::to_vec_pretty(manifest).map_err(|source| Error::Manifest {
        file: manifest.file.clone(),
        source,
    })?;
    json.push(b'\n');
    let (mut file, mut partial) = create_partial(out_dir, &manifest_name)?;
    let io = |source| Error::Io {
        path: partial.path.clone(),
        source,
    };
    file.write_all(&json).map_err(io)?;
    file.sync_all().map_err(io)?;
    drop(file);
    if let Some(hook) = hook {
        hook(FileStep::ManifestWritten, &manifest.file);
    }
    partial.publish(&final_path)?;
    sync_dir(out_dir)
}

/// A bulk print run: renderer, recipients and output place.
pub struct PrintRun {
    renderer: PrintRenderer,
    recipients: Vec<age::x25519::Recipient>,
    per_file: usize,
    chunk: usize,
    out_dir: PathBuf,
    batch_label: String,
    first_file: u32,
    step_hook: Option<StepHook>,
}

impl fmt::Debug for PrintRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrintRun")
            .field("renderer", &self.renderer)
            .field("recipients", &self.recipients)
            .field("per_file", &self.per_file)
            .field("chunk", &self.chunk)
            .field("out_dir", &self.out_dir)
            .field("batch_label", &self.batch_label)
            .field("first_file", &self.first_file)
            .field("step_hook", &self.step_hook.is_some())
            .finish()
    }
}

impl PrintRun {
    /// A run sealing to `recipients` (`age1…` strings) into `out_dir`, naming its files after
    /// `batch_label`.
    ///
    /// # Errors
    /// [`Error::NoRecipients`], [`Error::Recipient`] naming the first bad one,
    /// [`Error::Label`] for a label that is not a plain file-name stem.
    pub fn new<S: AsRef<str>>(
        renderer: PrintRenderer,
        recipients: &[S],
        out_dir: impl Into<PathBuf>,
        batch_label: impl Into<String>,
    ) -> Result<PrintRun> {
        if recipients.is_empty() {
            return Err(Error::NoRecipients);
        }
        let recipients = recipients
            .iter()
            .enumerate()
            .map(|(index, r)| {
                r.as_ref()
                    .trim()
                    .parse::<age::x25519::Recipient>()
                    .map_err(|_| Error::Recipient { index })
            })
            .collect::<Result<Vec<_>>>()?;
        let batch_label = batch_label.into();
        if !label_ok(&batch_label) {
            return Err(Error::Label { label: batch_label });
        }
        // Every page prints the run's batch reference and date.
        let renderer = renderer.with_run(crate::render::marks::RunMarks {
            batch: batch_label.clone(),
            date: crate::render::marks::today_utc(),
        });
        Ok(PrintRun {
            renderer,
            recipients,
            per_file: DEFAULT_PER_FILE,
            chunk: DEFAULT_CHUNK,
            out_dir: out_dir.into(),
            batch_label,
            first_file: 1,
            step_hook: None,
        })
    }

    /// The number of the run's first file (at least 1; `1` names it `<label>-0001`): a run
    /// after an earlier one of the same label numbers its files after the last one used.
    pub fn first_file(mut self, n: u32) -> PrintRun {
        self.first_file = n.max(1);
        self
    }

    /// Calls `hook` at each [`FileStep`] of each file (for crash tests).
    pub fn on_step(mut self, hook: StepHook) -> PrintRun {
        self.step_hook = Some(hook);
        self
    }

    fn step(&self, step: FileStep, name: &str) {
        if let Some(hook) = &self.step_hook {
            hook(step, name);
        }
    }

    /// Mailers per print file (at least 1).
    pub fn per_file(mut self, per_file: usize) -> PrintRun {
        self.per_file = per_file.max(1);
        self
    }

    /// Mailers rendered together (at least 1). At most three chunks of mailers (one being
    /// pulled, one rendered, one appended) and two of pages are alive at a time.
    pub fn chunk(mut self, chunk: usize) -> PrintRun {
        self.chunk = chunk.max(1);
        self
    }

    /// Renders every mailer of `mailers` into sealed print files, calling `progress` with the
    /// number of mailers appended so far after each chunk; returns the manifests in file order.
    ///
    /// Runs on the current rayon pool (use `ThreadPool::install` to choose the threads).
    ///
    /// # Errors
    /// The first error stops the run: [`Error::Source`] from the input, [`Error::Render`],
    /// [`Error::Io`], [`Error::Exists`], [`Error::Seal`]. Files completed before it stay on
    /// disk with their manifests; the partial file is removed.
    ///
    /// # Security
    /// Clear pages exist only in zeroizing buffers on the way to the encryptor. age 0.12 keeps
    /// the clear text of its current 64 KiB chunk in a plain `Vec` that it reuses and frees
    /// **without wiping** when a file is finished: up to 64 KiB of clear pages a file are left
    /// in freed memory (keep core dumps off and swap locked in the process that runs this).
    pub fn run<I, E>(&self, mailers: I, progress: &(dyn Fn(u64) + Sync)) -> Result<Vec<Manifest>>
    where
        I: IntoIterator<Item = std::result::Result<OwnedMailer, E>>,
        I::IntoIter: Send,
        E: Into<Box<dyn StdError + Send + Sync>>,
    {
        self.run_with_files(mailers, progress, &|_| Ok(()))
    }

    /// As [`PrintRun::run`], calling `on_file` for each file once its sealed PDF is published
    /// and **before** its manifest is written: the caller records the file's mailers there
    /// (numbers, serials, audit event). If `on_file` fails, the run stops with
    /// [`Error::Recorded`] and the file stays without a manifest, which marks it as not to be
    /// printed.
    ///
    /// # Errors
    /// As [`PrintRun::run`], and [`Error::Recorded`].
    pub fn run_with_files<I, E>(
        &self,
        mailers: I,
        progress: &(dyn Fn(u64) + Sync),
        on_file: &(dyn Fn(&PrintedFile<'_>) -> std::result::Result<(), BoxError> + Sync),
    ) -> Result<Vec<Manifest>>
    where
        I: IntoIterator<Item = std::result::Result<OwnedMailer, E>>,
        I::IntoIter: Send,
        E: Into<Box<dyn StdError + Send + Sync>>,
    {
        self.run_inner(mailers, progress, on_file, None)
    }

    /// As [`PrintRun::run_with_files`], but a mailer that cannot be laid out (a
    /// [`crate::LayoutError`]: a name or address the page cannot carry) does not stop the run:
    /// it is handed to `on_set_aside` (with its number, full serial and reason) and left out of
    /// the files, and the run goes on. Progress counts it as done.
    ///
    /// # Errors
    /// As [`PrintRun::run_with_files`], and [`Error::SetAsideRecord`] if `on_set_aside` fails.
    pub fn run_recorded<I, E>(
        &self,
        mailers: I,
        progress: &(dyn Fn(u64) + Sync),
        on_file: &(dyn Fn(&PrintedFile<'_>) -> std::result::Result<(), BoxError> + Sync),
        on_set_aside: OnSetAside<'_>,
    ) -> Result<Vec<Manifest>>
    where
        I: IntoIterator<Item = std::result::Result<OwnedMailer, E>>,
        I::IntoIter: Send,
        E: Into<Box<dyn StdError + Send + Sync>>,
    {
        self.run_inner(mailers, progress, on_file, Some(on_set_aside))
    }

    fn run_inner<I, E>(
        &self,
        mailers: I,
        progress: &(dyn Fn(u64) + Sync),
        on_file: &(dyn Fn(&PrintedFile<'_>) -> std::result::Result<(), BoxError> + Sync),
        on_set_aside: Option<OnSetAside<'_>>,
    ) -> Result<Vec<Manifest>>
    where
        I: IntoIterator<Item = std::result::Result<OwnedMailer, E>>,
        I::IntoIter: Send,
        E: Into<Box<dyn StdError + Send + Sync>>,
    {
        let mut input = Input {
            mailers: mailers.into_iter().fuse(),
            pulled: 0,
            chunk: self.chunk,
        };
        // Full files go to the publishing thread through a channel of one slot; it stops at
        // its first error, and says so through `stopped` so that the pool stops too.
        let (to_publisher, finished) = std::sync::mpsc::sync_channel::<Finished>(1);
        let stopped = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let stopped = &stopped;
            let publisher = scope.spawn(move || self.publish_stage(finished, on_file, stopped));
            let mut state = RunState {
                run: self,
                on_set_aside,
                current: None,
                next_file: self.first_file,
                appended: 0,
                to_publisher,
                stopped,
            };
            let fed = self
                .feed(&mut input, &mut state, progress)
                .and_then(|()| state.finish_open());
            // Dropping the state closes the channel (the publisher ends after the files it
            // has) and drops an open file, which removes its partial, as a failed run does.
            drop(state);
            let published = publisher
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            match (fed, published) {
                // The publisher's error comes first: it is why the pool stopped.
                (_, Err(e)) => Err(e),
                (Err(e), Ok(_)) => Err(e),
                (Ok(()), Ok(manifests)) => Ok(manifests),
            }
        })
    }

    /// The pool's stages: each step pulls the next chunk, renders the current one and
    /// appends the one rendered before, side by side (`rayon::join`). Stops at the first
    /// error of any of them, or once the publisher has stopped.
    fn feed<'r, J, E>(
        &'r self,
        input: &mut Input<J>,
        state: &mut RunState<'r, '_>,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<()>
    where
        J: Iterator<Item = std::result::Result<OwnedMailer, E>> + Send,
        E: Into<Box<dyn StdError + Send + Sync>>,
    {
        let mut next = input.pull()?;
        let mut rendered: Option<RenderedChunk> = None;
        while !next.is_empty() || rendered.is_some() {
            let current = std::mem::take(&mut next);
            let to_append = rendered.take();
            let (appended, (pulled, pages)) = rayon::join(
                || match to_append {
                    Some((mailers, pages)) => state.append(&mailers, pages, progress),
                    None => Ok(()),
                },
                || {
                    rayon::join(
                        || {
                            if current.is_empty() {
                                Ok(Vec::new())
                            } else {
                                input.pull()
                            }
                        },
                        || {
                            current
                                .par_iter()
                                .map(|m| self.renderer.render_page(&m.mailer()))
                                .collect::<Vec<_>>()
                        },
                    )
                },
            );
            appended?;
            // On an input error the chunk just rendered is not appended: the chunks before it
            // are, and the open file is dropped.
            next = pulled?;
            if !current.is_empty() {
                rendered = Some((current, pages));
            }
        }
        Ok(())
    }

    /// The publishing thread: each finished file is synced, published, recorded and given
    /// its manifest, in file order. Stops at the first error (setting `stopped`); files still
    /// in the channel are dropped then, which removes their partials.
    fn publish_stage(
        &self,
        finished: Receiver<Finished>,
        on_file: &(dyn Fn(&PrintedFile<'_>) -> std::result::Result<(), BoxError> + Sync),
        stopped: &AtomicBool,
    ) -> Result<Vec<Manifest>> {
        let mut manifests = Vec::new();
        while let Ok(file) = finished.recv() {
            match self.publish(file, on_file) {
                Ok(m) => manifests.push(m),
                Err(e) => {
                    stopped.store(true, Ordering::Release);
                    return Err(e);
                }
            }
        }
        Ok(manifests)
    }

    fn names(&self, n: u32) -> (String, String) {
        file_names(&self.batch_label, n)
    }

    fn open(&self, n: u32) -> Result<OpenFile<'_>> {
        let (name, manifest_name) = self.names(n);
        for path in [self.out_dir.join(&name), self.out_dir.join(&manifest_name)] {
            if path.exists() {
                return Err(Error::Exists { path });
            }
        }
        let (file, partial) = create_partial(&self.out_dir, &name)?;
        let encryptor = age::Encryptor::with_recipients(
            self.recipients.iter().map(|r| r as &dyn age::Recipient),
        )
        .map_err(|_| Error::Seal)?;
        let sealed = encryptor.wrap_output(file).map_err(|source| Error::Io {
            path: partial.path.clone(),
            source,
        })?;
        let pdf = PdfWriter::new(HashingWriter::new(sealed), &self.renderer)
            .map_err(|e| io_error(&partial.path, e))?;
        Ok(OpenFile {
            pdf,
            partial,
            name,
            numbers: Vec::with_capacity(self.per_file.min(DEFAULT_PER_FILE)),
            serials: Vec::with_capacity(self.per_file.min(DEFAULT_PER_FILE)),
        })
    }

    /// Finishes the PDF and the age stream of a full file (on the pool): what is left is
    /// disk work for [`PrintRun::publish`].
    fn finish_file(&self, open: OpenFile<'_>) -> Result<Finished> {
        let OpenFile {
            pdf,
            partial,
            name,
            numbers,
            serials,
        } = open;
        let hashing = pdf.finish().map_err(|e| io_error(&partial.path, e))?;
        let (sealed, sha256) = hashing.into_parts();
        let file = sealed.finish().map_err(|source| Error::Io {
            path: partial.path.clone(),
            source,
        })?;
        Ok(Finished {
            file,
            partial,
            name,
            numbers,
            serials,
            sha256,
        })
    }

    /// Syncs a finished file, publishes it, has `on_file` record it, then writes its manifest.
    fn publish(
        &self,
        finished: Finished,
        on_file: &(dyn Fn(&PrintedFile<'_>) -> std::result::Result<(), BoxError> + Sync),
    ) -> Result<Manifest> {
        let Finished {
            file,
            mut partial,
            name,
            numbers,
            serials,
            sha256,
        } = finished;
        let first_serial = serials.first().cloned().unwrap_or_default();
        let last_serial = serials.last().cloned().unwrap_or_default();
        let io = |source| Error::Io {
            path: partial.path.clone(),
            source,
        };
        file.sync_all().map_err(io)?;
        let sealed_bytes = file.metadata().map_err(io)?.len();
        drop(file);
        self.step(FileStep::Sealed, &name);
        let final_path = self.out_dir.join(&name);
        partial.publish(&final_path)?;
        sync_dir(&self.out_dir)?;
        self.step(FileStep::Published, &name);

        let contiguous = numbers
            .windows(2)
            .all(|w| w[0].checked_add(1) == Some(w[1]));
        let manifest = Manifest {
            file: name.clone(),
            batch_label: self.batch_label.clone(),
            count: numbers.len() as u64,
            first_serial,
            last_serial,
            first_number: numbers.first().copied().unwrap_or_default(),
            last_number: numbers.last().copied().unwrap_or_default(),
            numbers: (!contiguous).then_some(numbers.clone()),
            sha256_clear_pdf: sha256,
            sealed_bytes,
        };
        on_file(&PrintedFile {
            manifest: &manifest,
            numbers: &numbers,
            serials: &serials,
        })
        .map_err(|source| Error::Recorded {
            file: name.clone(),
            source,
        })?;
        self.step(FileStep::Recorded, &name);
        write_manifest_with(&self.out_dir, &manifest, self.step_hook.as_ref())?;
        Ok(manifest)
    }
}

/// The input stage: mailers pulled a chunk at a time.
struct Input<J> {
    mailers: std::iter::Fuse<J>,
    pulled: u64,
    chunk: usize,
}

impl<J, E> Input<J>
where
    J: Iterator<Item = std::result::Result<OwnedMailer, E>>,
    E: Into<Box<dyn StdError + Send + Sync>>,
{
    /// The next chunk; empty when the input is exhausted.
    fn pull(&mut self) -> Result<Vec<OwnedMailer>> {
        let mut chunk = Vec::with_capacity(self.chunk);
        for item in self.mailers.by_ref().take(self.chunk) {
            match item {
                Ok(m) => chunk.push(m),
                Err(e) => {
                    return Err(Error::Source {
                        index: self.pulled,
                        source: e.into(),
                    })
                }
            }
            self.pulled += 1;
        }
        Ok(chunk)
    }
}

/// A chunk's mailers and their pages (or render errors), in input order.
type RenderedChunk = (Vec<OwnedMailer>, Vec<crate::Result<PageStream>>);

/// The appending stage's state: the open file, and the channel to the publishing thread.
struct RunState<'r, 's> {
    run: &'r PrintRun,
    on_set_aside: Option<OnSetAside<'r>>,
    current: Option<OpenFile<'r>>,
    next_file: u32,
    appended: u64,
    to_publisher: SyncSender<Finished>,
    /// Set by the publishing thread when it stopped on an error.
    stopped: &'s AtomicBool,
}

impl RunState<'_, '_> {
    /// Hands a full (or the last) file to the publishing thread.
    fn hand_over(&mut self, open: OpenFile<'_>) -> Result<()> {
        let finished = self.run.finish_file(open)?;
        // A closed channel means the publisher stopped: it reports why (the file is dropped
        // with the message, which removes its partial).
        if self.to_publisher.send(finished).is_err() {
            return Err(publisher_stopped());
        }
        Ok(())
    }

    /// At the end of the input: hands the open file over.
    fn finish_open(&mut self) -> Result<()> {
        match self.current.take() {
            Some(open) => self.hand_over(open),
            None => Ok(()),
        }
    }

    fn append(
        &mut self,
        mailers: &[OwnedMailer],
        pages: Vec<crate::Result<PageStream>>,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<()> {
        if self.stopped.load(Ordering::Acquire) {
            return Err(publisher_stopped());
        }
        for (m, page) in mailers.iter().zip(pages) {
            let page = match (page, self.on_set_aside) {
                (Ok(page), _) => page,
                (Err(crate::Error::Layout(reason)), Some(on_set_aside)) => {
                    let aside = SetAside {
                        number: m.number,
                        serial: m.card_serial.clone(),
                        reason,
                    };
                    on_set_aside(&aside).map_err(|source| Error::SetAsideRecord {
                        number: m.number,
                        source,
                    })?;
                    self.appended += 1;
                    continue;
                }
                (Err(source), _) => {
                    return Err(Error::Render {
                        number: m.number,
                        serial: mask_serial(&m.card_serial),
                        source,
                    })
                }
            };
            let open = match self.current.as_mut() {
                Some(open) => open,
                None => {
                    let open = self.run.open(self.next_file)?;
                    self.next_file += 1;
                    self.current.insert(open)
                }
            };
            open.pdf
                .append(&page)
                .map_err(|e| io_error(&open.partial.path, e))?;
            open.serials.push(m.card_serial.clone());
            open.numbers.push(m.number);
            self.appended += 1;
            if open.numbers.len() >= self.run.per_file {
                if let Some(full) = self.current.take() {
                    self.hand_over(full)?;
                }
            }
        }
        progress(self.appended);
        Ok(())
    }
}

/// The error the pool stops with when the publishing thread stopped first (the run reports
/// the publisher's own error instead).
fn publisher_stopped() -> Error {
    Error::Io {
        path: PathBuf::new(),
        source: io::Error::other("the publishing thread stopped"),
    }
}

/// A full file whose age stream is finished, not yet synced: what the publishing thread
/// takes. Dropped unpublished, its partial is removed.
struct Finished {
    file: File,
    partial: Partial,
    name: String,
    numbers: Vec<u64>,
    serials: Vec<String>,
    /// SHA-256 of the clear PDF, hex.
    sha256: String,
}

/// The file being written: its PDF stream and what its manifest will say.
struct OpenFile<'r> {
    pdf: PdfWriter<'r, HashingWriter<StreamWriter<File>>>,
    partial: Partial,
    name: String,
    numbers: Vec<u64>,
    /// Card serials in page order.
    serials: Vec<String>,
}

/// Forwards writes to the encryptor and hashes the clear bytes on the way.
struct HashingWriter<W> {
    inner: W,
    sha256: digest::Context,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> HashingWriter<W> {
        HashingWriter {
            inner,
            sha256: digest::Context::new(&digest::SHA256),
        }
    }

    fn into_parts(self) -> (W, String) {
        (self.inner, hex::encode(self.sha256.finish().as_ref()))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha256.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A file under its temporary name, removed on drop unless published.
struct Partial {
    path: PathBuf,
    published: bool,
}

impl Partial {
    fn publish(&mut self, to: &Path) -> Result<()> {
        std::fs::rename(&self.path, to).map_err(|source| Error::Io {
            path: to.to_owned(),
            source,
        })?;
        self.published = true;
        Ok(())
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.published {
            // Best effort: the partial file is sealed or a manifest, never clear codes.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Creates `.<name>.partial` in `dir`, exclusively and readable by the owner only.
fn create_partial(dir: &Path, name: &str) -> Result<(File, Partial)> {
    let path = dir.join(format!(".{name}.partial"));
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(&path) {
        Ok(file) => Ok((
            file,
            Partial {
                path,
                published: false,
            },
        )),
        Err(source) if source.kind() == io::ErrorKind::AlreadyExists => Err(Error::Exists { path }),
        Err(source) => Err(Error::Io { path, source }),
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| Error::Io {
            path: dir.to_owned(),
            source,
        })?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// The PDF writer only fails on its sink (or with no page, which cannot happen here: a file is
/// opened for a page and sealed after at least one).
fn io_error(path: &Path, e: crate::Error) -> Error {
    match e {
        crate::Error::Io(source) => Error::Io {
            path: path.to_owned(),
            source,
        },
        other => Error::Io {
            path: path.to_owned(),
            source: io::Error::other(other.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashing_writer_hashes_what_it_forwards() {
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(b"abc").unwrap();
        let (inner, hex) = w.into_parts();
        assert_eq!(inner, b"abc");
        assert_eq!(
            hex,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn file_names_are_read_back_and_others_are_not_ours() {
        let (sealed, manifest) = file_names("b000001", 12);
        assert_eq!(sealed, "b000001-0012.pdf.age");
        let n = parse_file_name(&sealed).unwrap();
        assert_eq!(
            (n.label.as_str(), n.number, n.kind, n.partial),
            ("b000001", 12, FileKind::Sealed, false)
        );
        assert_eq!(n.sealed_name(), sealed);
        let n = parse_file_name(&format!(".{manifest}.partial")).unwrap();
        assert_eq!((n.kind, n.partial), (FileKind::Manifest, true));
        let n = parse_file_name("re-print-1-12345.pdf.age").unwrap();
        assert_eq!((n.label.as_str(), n.number), ("re-print-1", 12345));
        for other in [
            "b000001-001.pdf.age",
            "b000001-00012.pdf.age",
            "b000001-0001.pdf",
            "notes.txt",
            ".b000001-0001.pdf.age",
            "-0001.pdf.age",
            "..x-0001.pdf.age.partial",
        ] {
            assert_eq!(parse_file_name(other), None, "{other}");
        }
    }
}
