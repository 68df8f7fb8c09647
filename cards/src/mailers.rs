//! Printed mailers: which cards get one, their numbers, the print files they went out in, and
//! what became of each (delivered, spoiled, voided by a reprint).
//!
//! # Flow of a print run
//!
//! 1. [`Cards::start_print_run`] checks the selection (a committed batch, or a list of serials),
//!    records the run as `running` with a `mailers.run_start` audit event, and returns a
//!    [`PrintJob`]. One run at a time.
//! 2. [`PrintJob::mailers`] yields a [`MailerItem`] (address, codes, number) for every selected
//!    card that may have one: `active`, not past expiry, with a postal address, and — by the
//!    [`Reprint`] rule — without an outstanding or delivered mailer. Cards left out are counted
//!    by reason. Numbers are reserved durably in blocks, so a number is never given twice,
//!    even across a crash (a crash leaves a gap).
//! 3. The caller renders and seals; for each print file, once the sealed file is published,
//!    [`PrintJob::record_file`] stores the file (its mailers' serials and numbers), voids the
//!    earlier outstanding mailers of the same cards, and appends one `mailers.print_file`
//!    audit event, in one store batch. Only then does the caller write the file's manifest.
//! 4. [`PrintJob::finish`] closes the run (`done` or `failed`, with counts) and gives unused
//!    reserved numbers back.
//!
//! # After a crash: the record is the commit, start-up finishes the manifest
//!
//! A file passes three durable steps: the sealed file is published (renamed into place, the
//! directory fsynced), the vault records it (one store batch, flushed with its audit event),
//! the manifest is published. The vault's record is the file's commit point, and start-up
//! (the service's print recovery, before it listens) brings the directory to agree with it:
//!
//! - **recorded, no manifest** (killed between the record and the manifest's rename): the
//!   manifest is written again from the record, which holds every field of it
//!   ([`Cards::print_file_facts`]: name, label, count, first and last serial, numbers, SHA-256,
//!   size), once the sealed file's size matches the record. The cards are printed, and their
//!   file is printable again before anything else runs;
//! - **published, not recorded** (killed before or during the record): the file is in no run;
//!   it is moved aside to a quarantine folder and its cards stay unprinted, so a rerun prints
//!   them;
//! - partial outputs (hidden `.partial` files) are removed; runs found `running`
//!   are marked `interrupted` at once ([`Cards::recover_print_runs`]).
//!
//! So a card is marked printed only by a record, a record exists only for a published,
//! fsynced sealed file, and no record is left without its manifest once start-up is done:
//! a crash cannot leave a card marked printed with no printable file. Recording only after
//! the manifest instead would leave the opposite window — a manifest (printable for the
//! facility) whose cards the vault does not know as printed, so a rerun prints them twice.
//!
//! # Storage (designed for bulk: one record a file, not one a mailer)
//!
//! - [`Tree::PrintFiles`]: file id → the card serials of its mailers, in page order (`\n`
//!   separated). Read only to find a card's earlier mailers.
//! - [`Tree::PrintFileDirs`]: file id → [`PrintFileDir`]: name, run, batch, first number,
//!   count, serial range, and one state letter per mailer. All of them are kept in memory.
//! - [`Tree::PrintRuns`]: run id → [`PrintRunRecord`].
//!
//! Mailer numbers within a file are consecutive, so a number finds its file by a binary search
//! of the directory. Measured before this design: one sled entry per mailer ran at 94,000
//! entries/s and grew to 2.9 GB for 1 M, far from a 50,000 mailers/s print run.
//!
//! # Reconciliation
//!
//! Every printed mailer is in exactly one state: `outstanding` (printed, no outcome yet),
//! `delivered`, `spoiled` (reported by the print facility or the post) or `voided` (a later
//! reprint of its card replaced it). [`Cards::reconcile`] counts them per batch, so that
//! printed = delivered + spoiled + voided + outstanding, and a batch is balanced when
//! nothing is outstanding.

use super::card::CardState;
use super::date::Date;
use super::registry::{decode, encode, CardRecord, Cards, HolderRecord, PersonalData};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use vault::lock;
use vault::Actor;
use vault::Hsm;
use vault::{seq_key, Batch, Store, Tree};
use vault::{AuditLog, Outcome};
use vault::{BatchId, BatchScan, CardCodes, Release, PRINT_RUN_ACTION};
use vault::{DataKeyId, Envelope, Opener};
use vault::{Error, Missing, Refusal, Result};

const NEXT_NUMBER_KEY: &[u8] = b"mailers.next_number";
const NEXT_FILE_KEY: &[u8] = b"mailers.next_file";
const NEXT_RUN_KEY: &[u8] = b"mailers.next_run";
/// Numbers reserved durably at a time by a run.
const NUMBER_BLOCK: u64 = 10_000;
/// Most serials one run by list may name.
pub const MAX_LISTED_SERIALS: usize = 100_000;
/// Cards looked up together (in parallel) by a run.
const PREPARE_CHUNK: usize = 512;
/// Decoded print files kept to find cards' earlier mailers.
const FILE_CACHE: usize = 8;

/// What became of a printed mailer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MailerState {
    /// Printed; no outcome known yet.
    Outstanding,
    /// Reached its holder.
    Delivered,
    /// Damaged or lost, reported by the print facility or the post.
    Spoiled,
    /// Replaced by a later mailer for the same card.
    Voided,
}

impl MailerState {
    fn letter(self) -> char {
        match self {
            MailerState::Outstanding => 'o',
            MailerState::Delivered => 'd',
            MailerState::Spoiled => 's',
            MailerState::Voided => 'v',
        }
    }

    fn from_letter(c: u8) -> Result<MailerState> {
        match c {
            b'o' => Ok(MailerState::Outstanding),
            b'd' => Ok(MailerState::Delivered),
            b's' => Ok(MailerState::Spoiled),
            b'v' => Ok(MailerState::Voided),
            _ => Err(Error::Storage(
                "a print file directory holds an unknown mailer state".into(),
            )),
        }
    }

    /// The state's name.
    pub fn as_str(self) -> &'static str {
        match self {
            MailerState::Outstanding => "outstanding",
            MailerState::Delivered => "delivered",
            MailerState::Spoiled => "spoiled",
            MailerState::Voided => "voided",
        }
    }
}

impl fmt::Display for MailerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which selected cards get a mailer, by the mailers they already have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reprint {
    /// Only cards with no outstanding or delivered mailer (a first print; running it again
    /// after a crash prints only what is missing).
    #[default]
    Unprinted,
    /// Cards without a delivered mailer: an outstanding one is voided and printed again.
    Undelivered,
    /// Every selected card: outstanding mailers are voided (delivered ones stay delivered).
    All,
}

/// What a print run prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// Every card of a committed batch, in serial order.
    Batch(BatchId),
    /// These cards, in this order.
    Serials(Vec<String>),
}

/// A print run as stored ([`Tree::PrintRuns`]). Holds no code and no personal datum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrintRunRecord {
    /// Run id.
    pub id: u64,
    /// The label its files are named after.
    pub label: String,
    /// The batch printed, or the batch every listed card belongs to (`None` when they are in
    /// several).
    pub batch: Option<String>,
    /// Cards listed, for a run by list.
    pub listed: Option<u64>,
    /// The delivery plan of the printed part, e.g. `whole`.
    pub plan: String,
    /// The part printed, e.g. `whole` or `A`.
    pub part: String,
    /// The reprint rule.
    pub reprint: Reprint,
    /// `running`, `done`, `failed` or `interrupted` (the process stopped during the run).
    pub state: String,
    /// Mailers in recorded print files.
    pub printed: u64,
    /// Earlier mailers voided by this run.
    pub voided: u64,
    /// Cards left out, by reason.
    pub skipped: BTreeMap<String, u64>,
    /// The print files recorded, by name.
    pub files: Vec<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// Account that started it.
    pub actor: String,
    /// Request id.
    pub request_id: String,
    /// Started (Unix ms).
    pub started_ms: u64,
    /// Ended (Unix ms); 0 while running.
    pub finished_ms: u64,
    /// Mailers left out because they cannot be laid out (name or address), by card serial,
    /// while the rest of the run printed. Absent in records written before it existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set_aside: Vec<SetAsideMailer>,
}

/// A mailer a print run set aside: which card, which number, why (the reason names the field,
/// never its text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetAsideMailer {
    /// The card serial.
    pub serial: String,
    /// The mailer number it had (printed in no file).
    pub number: u64,
    /// Why it cannot be laid out.
    pub reason: String,
}

/// One print file as the directory knows it ([`Tree::PrintFileDirs`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrintFileDir {
    /// File id.
    pub id: u64,
    /// The sealed file's name.
    pub name: String,
    /// The run that printed it.
    pub run: u64,
    /// The batch of its cards (`None` when they are in several).
    pub batch: Option<String>,
    /// The part printed.
    pub part: String,
    /// Number of the first mailer; the others follow consecutively.
    pub first_number: u64,
    /// Mailers in the file.
    pub count: u64,
    /// Smallest card serial in the file.
    pub min_serial: String,
    /// Largest card serial in the file.
    pub max_serial: String,
    /// SHA-256 of the clear PDF (from its manifest).
    pub sha256_clear_pdf: String,
    /// Size of the sealed file.
    pub sealed_bytes: u64,
    /// Recorded (Unix ms).
    pub created_ms: u64,
    /// One letter a mailer, in page order: `o` outstanding, `d` delivered, `s` spoiled,
    /// `v` voided.
    pub states: String,
}

impl PrintFileDir {
    fn holds(&self, number: u64) -> bool {
        number >= self.first_number && number - self.first_number < self.count
    }

    fn state(&self, index: usize) -> Result<MailerState> {
        MailerState::from_letter(*self.states.as_bytes().get(index).ok_or_else(|| {
            Error::Storage(format!(
                "print file {} has fewer states than mailers",
                self.name
            ))
        })?)
    }

    fn set_state(&mut self, index: usize, state: MailerState) {
        let mut bytes = std::mem::take(&mut self.states).into_bytes();
        if let Some(b) = bytes.get_mut(index) {
            *b = state.letter() as u8;
        }
        self.states = String::from_utf8(bytes).unwrap_or_default();
    }
}

/// A recorded print file and what its manifest needs besides: see [`Cards::print_file_facts`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrintFileFacts {
    /// The directory entry (name, numbers, count, SHA-256, size).
    pub dir: PrintFileDir,
    /// Its run's label.
    pub label: String,
    /// The card serial of its first mailer (page order).
    pub first_serial: String,
    /// The card serial of its last mailer.
    pub last_serial: String,
}

/// One earlier mailer of a card.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MailerRef {
    /// Its number.
    pub number: u64,
    /// What became of it.
    pub state: MailerState,
    /// The file's id.
    pub file: u64,
}

/// A print file just published, as the caller records it.
#[derive(Debug, Clone)]
pub struct RecordedFile<'a> {
    /// The sealed file's name.
    pub name: &'a str,
    /// Mailer numbers in page order (consecutive).
    pub numbers: &'a [u64],
    /// Card serials in page order.
    pub serials: &'a [String],
    /// SHA-256 of the clear PDF, hex.
    pub sha256_clear_pdf: &'a str,
    /// Size of the sealed file.
    pub sealed_bytes: u64,
}

/// A mailer to render: the holder's name and postal address, the card's codes and the number.
///
/// # Security
/// The codes are zeroized on drop; `Debug` shows neither codes nor personal data.
pub struct MailerItem {
    /// Card serial.
    pub serial: String,
    /// The holder's name as printed (given names and surname).
    pub name: String,
    /// Postal address lines (the registered address cut at its commas).
    pub address: Vec<String>,
    /// The card's codes.
    pub codes: CardCodes,
    /// The mailer number.
    pub number: u64,
}

impl fmt::Debug for MailerItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MailerItem")
            .field("number", &self.number)
            .field("codes", &self.codes)
            .finish_non_exhaustive()
    }
}

/// Mailer outcomes reported back (by the print facility, the post or the counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MailerOutcome {
    /// Reached its holder.
    Delivered,
    /// Damaged or lost.
    Spoiled,
}

impl MailerOutcome {
    fn state(self) -> MailerState {
        match self {
            MailerOutcome::Delivered => MailerState::Delivered,
            MailerOutcome::Spoiled => MailerState::Spoiled,
        }
    }
}

/// Counts of one batch's printed mailers by state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reconciliation {
    /// The batch (`mixed` for files whose cards are in several batches).
    pub batch: String,
    /// Print files.
    pub files: u64,
    /// Mailers printed.
    pub printed: u64,
    /// Of which delivered.
    pub delivered: u64,
    /// Spoiled.
    pub spoiled: u64,
    /// Voided by a reprint.
    pub voided: u64,
    /// No outcome yet.
    pub outstanding: u64,
    /// printed = delivered + spoiled + voided (nothing outstanding).
    pub balanced: bool,
}

/// The in-memory directory of print files and a few decoded files.
#[derive(Default)]
pub(crate) struct MailerBook {
    loaded: bool,
    /// By id (ascending ids have ascending numbers).
    dirs: Vec<PrintFileDir>,
    /// File id → serial → index in the file, for recently used files.
    cache: Vec<(u64, Arc<HashMap<String, u32>>)>,
}

impl MailerBook {
    fn by_number(&self, number: u64) -> Option<usize> {
        let i = self.dirs.partition_point(|d| d.first_number <= number);
        i.checked_sub(1).filter(|&i| self.dirs[i].holds(number))
    }
}

/// The values at `keys` of `tree`, in the order of `keys` (`None` where there is none).
///
/// Keys in ascending order are read by one range read over their span, as long as the span
/// is dense (at most twice as many entries as keys, plus a little): one pass over the tree's
/// leaves instead of one descent a key. Keys the range read did not reach, and keys not in
/// ascending order (a run by list), are read one by one.
///
/// # Errors
/// Store errors.
fn read_many(store: &dyn Store, tree: Tree, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
    let mut out: Vec<Option<Vec<u8>>> = Vec::with_capacity(keys.len());
    let ascending = keys.windows(2).all(|w| w[0] < w[1]);
    if let (true, Some(first), Some(last)) = (ascending, keys.first(), keys.last()) {
        let mut end = last.to_vec();
        end.push(0);
        let limit = keys.len() * 2 + 64;
        let entries = store.range(tree, first, Some(&end), limit)?;
        // A read cut at the limit says nothing of the keys past its last entry.
        let complete = entries.len() < limit;
        let mut entries = entries.into_iter().peekable();
        for key in keys {
            while entries.next_if(|(k, _)| k.as_slice() < *key).is_some() {}
            match entries.peek() {
                Some((k, _)) if k.as_slice() == *key => out.push(entries.next().map(|(_, v)| v)),
                Some(_) => out.push(None),
                None if complete => out.push(None),
                None => break,
            }
        }
    }
    for key in &keys[out.len()..] {
        out.push(store.get(tree, key)?);
    }
    Ok(out)
}

/// A holder's personal data, opened with the run's opener of its key (as the registry opens
/// it, with the opener the keyring gives for each read).
///
/// # Errors
/// [`Error::Integrity`] for a record that does not open; a damaged record.
fn personal(openers: &HashMap<u32, Arc<Opener>>, rec: &HolderRecord) -> Result<PersonalData> {
    let opener = openers.get(&rec.key).ok_or_else(|| {
        Error::Storage(format!(
            "holder {}: its data key {} was not loaded",
            rec.id, rec.key
        ))
    })?;
    let bytes = hex::decode(&rec.sealed).map_err(|_| Error::Integrity)?;
    let clear = opener.open(&rec.id, &Envelope::from_bytes(bytes))?;
    decode("holder's personal data", clear.expose_secret())
}

/// Counting cards left out of a run, by reason.
type Skips = BTreeMap<&'static str, u64>;

fn next_counter(cms: &Cards, key: &[u8], b: &mut Batch, by: u64) -> Result<u64> {
    let next = match cms.store.get(Tree::Meta, key)? {
        Some(v) => u64::from_be_bytes(
            v.as_slice()
                .try_into()
                .map_err(|_| Error::Storage("a mailer counter is damaged".into()))?,
        ),
        None => 1,
    };
    b.put(Tree::Meta, key.to_vec(), (next + by).to_be_bytes().to_vec());
    Ok(next)
}

fn label_ok(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 48
        && !label.starts_with('.')
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The address lines of a registered postal address: cut at commas, trimmed.
pub fn address_lines(address: &str) -> Vec<String> {
    address
        .split(',')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

impl Cards {
    fn book(&self) -> Result<MutexGuard<'_, MailerBook>> {
        let mut book = lock(&self.mailers);
        if !book.loaded {
            let mut dirs = Vec::new();
            let mut from = Vec::new();
            loop {
                let page = self.store.range(Tree::PrintFileDirs, &from, None, 256)?;
                let Some((last, _)) = page.last() else { break };
                from = last.clone();
                from.push(0);
                for (_, v) in &page {
                    dirs.push(decode::<PrintFileDir>("print file directory", v)?);
                }
                if page.len() < 256 {
                    break;
                }
            }
            dirs.sort_by_key(|d| d.first_number);
            book.dirs = dirs;
            book.loaded = true;
        }
        Ok(book)
    }

    fn file_serials(&self, book: &mut MailerBook, id: u64) -> Result<Arc<HashMap<String, u32>>> {
        if let Some(pos) = book.cache.iter().position(|(f, _)| *f == id) {
            let hit = book.cache.remove(pos);
            let map = hit.1.clone();
            book.cache.push(hit);
            return Ok(map);
        }
        let bytes = self
            .store
            .get(Tree::PrintFiles, &seq_key(id))?
            .ok_or_else(|| Error::Storage(format!("print file {id} has no serial list")))?;
        let text = String::from_utf8(bytes).map_err(|_| {
            Error::Storage(format!("the serial list of print file {id} is damaged"))
        })?;
        let map: HashMap<String, u32> = text
            .split('\n')
            .enumerate()
            .map(|(i, s)| (s.to_owned(), i as u32))
            .collect();
        let map = Arc::new(map);
        if book.cache.len() >= FILE_CACHE {
            book.cache.remove(0);
        }
        book.cache.push((id, map.clone()));
        Ok(map)
    }

    fn mailers_in(&self, book: &mut MailerBook, serial: &str) -> Result<Vec<MailerRef>> {
        let mut found = Vec::new();
        let candidates: Vec<usize> = book
            .dirs
            .iter()
            .enumerate()
            .filter(|(_, d)| d.min_serial.as_str() <= serial && serial <= d.max_serial.as_str())
            .map(|(i, _)| i)
            .collect();
        for i in candidates {
            let id = book.dirs[i].id;
            let serials = self.file_serials(book, id)?;
            if let Some(&at) = serials.get(serial) {
                let d = &book.dirs[i];
                found.push(MailerRef {
                    number: d.first_number + u64::from(at),
                    state: d.state(at as usize)?,
                    file: d.id,
                });
            }
        }
        found.sort_by_key(|m| m.number);
        Ok(found)
    }

    /// Every mailer printed for a card, oldest first.
    ///
    /// # Errors
    /// Store errors.
    pub fn mailers_of(&self, serial: &str) -> Result<Vec<MailerRef>> {
        let mut book = self.book()?;
        self.mailers_in(&mut book, serial)
    }

    /// Print runs, newest first, `limit` at most.
    ///
    /// # Errors
    /// Store errors.
    pub fn print_runs(&self, limit: usize) -> Result<Vec<PrintRunRecord>> {
        let all = self.store.range(Tree::PrintRuns, &[], None, usize::MAX)?;
        all.iter()
            .rev()
            .take(limit)
            .map(|(_, v)| decode("print run", v))
            .collect()
    }

    /// One print run.
    ///
    /// # Errors
    /// [`Error::Missing`]; store errors.
    pub fn print_run(&self, id: u64) -> Result<PrintRunRecord> {
        self.store
            .get(Tree::PrintRuns, &seq_key(id))?
            .map(|v| decode("print run", &v))
            .transpose()?
            .ok_or(Missing::PrintRun(id).into())
    }

    /// Starts a print run. `plan` and `part` only label the run (the caller renders).
    ///
    /// # Errors
    /// [`Error::Refusal`] while another run is going; [`Error::Invalid`]
    /// for a bad label or list; [`Error::Missing`] for a batch that is not committed; store
    /// and audit errors.
    #[allow(clippy::too_many_arguments)]
    pub fn start_print_run<'c>(
        &'c self,
        audit: &AuditLog,
        selection: Selection,
        reprint: Reprint,
        label: &str,
        plan: &str,
        part: &str,
        actor: &Actor,
    ) -> Result<PrintJob<'c>> {
        if !label_ok(label) {
            return Err(Error::Invalid(format!(
                "print run label {label:?}: use 1 to 48 characters of A-Z a-z 0-9 . _ - not starting with a dot"
            )));
        }
        let batch = match &selection {
            Selection::Batch(id) => {
                self.codes
                    .batch(*id)?
                    .filter(|r| r.state == vault::BatchState::Committed)
                    .ok_or(Missing::CommittedBatch(*id))?;
                Some(id.to_string())
            }
            Selection::Serials(list) => {
                if list.is_empty() || list.len() > MAX_LISTED_SERIALS {
                    return Err(Error::Invalid(format!(
                        "a print run lists 1 to {MAX_LISTED_SERIALS} serials, not {}",
                        list.len()
                    )));
                }
                let mut seen = std::collections::HashSet::with_capacity(list.len());
                let mut batches = std::collections::BTreeSet::new();
                for (i, s) in list.iter().enumerate() {
                    if !seen.insert(s.as_str()) {
                        return Err(Error::Invalid(format!(
                            "serial {} of the list repeats card {s}",
                            i + 1
                        )));
                    }
                    if let Some(b) = self.codes.locate(s)? {
                        batches.insert(b);
                    }
                }
                (batches.len() == 1)
                    .then(|| batches.first().map(ToString::to_string))
                    .flatten()
            }
        };
        if self
            .print_running
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(Refusal::PrintRunGoing.into());
        }
        let guard = RunningFlag(&self.print_running);
        self.mark_interrupted_runs()?;
        let mut b = Batch::new();
        let id = next_counter(self, NEXT_RUN_KEY, &mut b, 1)?;
        let record = PrintRunRecord {
            id,
            label: label.to_owned(),
            batch: batch.clone(),
            listed: match &selection {
                Selection::Serials(l) => Some(l.len() as u64),
                Selection::Batch(_) => None,
            },
            plan: plan.to_owned(),
            part: part.to_owned(),
            reprint,
            state: "running".into(),
            printed: 0,
            voided: 0,
            skipped: BTreeMap::new(),
            files: Vec::new(),
            error: None,
            actor: actor.id.clone(),
            request_id: actor.request_id.clone(),
            started_ms: self.now_ms(),
            finished_ms: 0,
            set_aside: Vec::new(),
        };
        b.put(Tree::PrintRuns, seq_key(id).to_vec(), encode(&record)?);
        let receipt = audit.commit_release(
            b,
            vec![actor
                .event(PRINT_RUN_ACTION, format!("print run {id}"))
                .detail("label", label.to_owned())
                .detail("batch", batch.unwrap_or_else(|| "mixed".into()))
                .detail("plan", plan.to_owned())
                .detail("reprint", format!("{reprint:?}").to_lowercase())],
        )?;
        Ok(PrintJob {
            cms: self,
            receipt,
            selection,
            reprint,
            record: Mutex::new(record),
            numbers: Mutex::new(NumberBlock::default()),
            skipped: Mutex::new(Skips::new()),
            actor: actor.clone(),
            _running: guard,
        })
    }

    /// At start-up: marks every run left `running` by a stopped process as `interrupted`
    /// (ended now, with the reason as its error), in one store batch, flushed. Returns their
    /// ids.
    ///
    /// Not audited: start-up runs before the unseal, when the audit chain takes no event but
    /// the custodians' (the caller logs each run; the run's `mailers.run_start` and its files'
    /// `mailers.print_file` events are in the chain).
    ///
    /// # Errors
    /// [`Error::Refusal`] while a run goes in this process; store errors.
    pub fn recover_print_runs(&self) -> Result<Vec<u64>> {
        if self
            .print_running
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(Refusal::RecoverWhileRunning.into());
        }
        let _guard = RunningFlag(&self.print_running);
        self.mark_interrupted_runs()
    }

    /// Marks runs left `running` by a stopped process as `interrupted`. The caller holds the
    /// one-run-at-a-time flag, so no run of this process is among them.
    fn mark_interrupted_runs(&self) -> Result<Vec<u64>> {
        let mut b = Batch::new();
        let mut ids = Vec::new();
        let now = self.now_ms();
        for (k, v) in self.store.range(Tree::PrintRuns, &[], None, usize::MAX)? {
            let mut r: PrintRunRecord = decode("print run", &v)?;
            if r.state == "running" {
                r.state = "interrupted".into();
                r.error = Some("the service stopped during the run".into());
                r.finished_ms = now;
                b.put(Tree::PrintRuns, k, encode(&r)?);
                ids.push(r.id);
            }
        }
        if !b.is_empty() {
            self.store.apply(&b)?;
            self.store.flush()?;
        }
        Ok(ids)
    }

    /// The names of every recorded print file, in file order.
    ///
    /// # Errors
    /// Store errors.
    pub fn print_file_names(&self) -> Result<Vec<String>> {
        let book = self.book()?;
        let mut dirs: Vec<(u64, String)> =
            book.dirs.iter().map(|d| (d.id, d.name.clone())).collect();
        dirs.sort();
        Ok(dirs.into_iter().map(|(_, n)| n).collect())
    }

    /// Everything a recorded print file's manifest says, from the vault alone: to write a
    /// manifest again after a crash. `None` when no file of that name is recorded.
    ///
    /// # Errors
    /// Store errors; [`Error::Storage`] for a file whose run or serial list is missing.
    pub fn print_file_facts(&self, name: &str) -> Result<Option<PrintFileFacts>> {
        let dir = {
            let book = self.book()?;
            match book.dirs.iter().find(|d| d.name == name) {
                Some(d) => d.clone(),
                None => return Ok(None),
            }
        };
        let label = self.print_run(dir.run).map(|r| r.label).map_err(|_| {
            Error::Storage(format!("print file {name}: its run {} is missing", dir.run))
        })?;
        let bytes = self
            .store
            .get(Tree::PrintFiles, &seq_key(dir.id))?
            .ok_or_else(|| Error::Storage(format!("print file {name} has no serial list")))?;
        let text = String::from_utf8(bytes).map_err(|_| {
            Error::Storage(format!("the serial list of print file {name} is damaged"))
        })?;
        let first_serial = text.split('\n').next().unwrap_or_default().to_owned();
        let last_serial = text.rsplit('\n').next().unwrap_or_default().to_owned();
        Ok(Some(PrintFileFacts {
            dir,
            label,
            first_serial,
            last_serial,
        }))
    }

    /// Records what became of printed mailers, all or nothing, with one `mailers.outcome`
    /// audit event. Reporting the same outcome again changes nothing.
    ///
    /// # Errors
    /// [`Error::Invalid`] for an empty list; [`Error::Refusal`] naming the first repeated
    /// number ([`vault::Refusal::MailerRepeats`]), unknown number
    /// ([`vault::Refusal::MailerUnknown`]) or mailer not outstanding, e.g. voided or reported
    /// the other way before ([`vault::Refusal::MailerNotOutstanding`]); store and audit errors.
    pub fn record_mailer_outcomes(
        &self,
        audit: &AuditLog,
        outcomes: &[(u64, MailerOutcome)],
        actor: &Actor,
    ) -> Result<BTreeMap<String, u64>> {
        if outcomes.is_empty() {
            return Err(Error::Invalid("no mailer outcome given".into()));
        }
        let mut book = self.book()?;
        let mut changed: BTreeMap<usize, PrintFileDir> = BTreeMap::new();
        let mut seen = std::collections::HashSet::with_capacity(outcomes.len());
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for (i, (number, outcome)) in outcomes.iter().enumerate() {
            let (outcome_at, mailer) = (i + 1, *number);
            if !seen.insert(*number) {
                return Err(Refusal::MailerRepeats {
                    outcome: outcome_at,
                    mailer,
                }
                .into());
            }
            let d = book.by_number(*number).ok_or(Refusal::MailerUnknown {
                outcome: outcome_at,
                mailer,
            })?;
            let dir = changed.entry(d).or_insert_with(|| book.dirs[d].clone());
            let index = (number - dir.first_number) as usize;
            let state = dir.state(index)?;
            let wanted = outcome.state();
            if state == wanted {
                *counts.entry("unchanged".into()).or_default() += 1;
                continue;
            }
            if state != MailerState::Outstanding {
                return Err(Refusal::MailerNotOutstanding {
                    outcome: outcome_at,
                    mailer,
                    state: state.to_string(),
                    wanted: wanted.to_string(),
                }
                .into());
            }
            dir.set_state(index, wanted);
            *counts.entry(wanted.as_str().into()).or_default() += 1;
        }
        let mut b = Batch::new();
        for dir in changed.values() {
            b.put(Tree::PrintFileDirs, seq_key(dir.id).to_vec(), encode(dir)?);
        }
        let (first, last) = (
            outcomes.iter().map(|o| o.0).min().unwrap_or_default(),
            outcomes.iter().map(|o| o.0).max().unwrap_or_default(),
        );
        let mut event = actor.event("mailers.outcome", format!("mailers {first}-{last}"));
        for (k, v) in &counts {
            event = event.detail(k, v.to_string());
        }
        audit.commit(b, event)?;
        for (i, dir) in changed {
            book.dirs[i] = dir;
        }
        Ok(counts)
    }

    /// Printed mailers by batch and state (all batches, or one).
    ///
    /// # Errors
    /// Store errors.
    pub fn reconcile(&self, batch: Option<&str>) -> Result<Vec<Reconciliation>> {
        let book = self.book()?;
        let mut by: BTreeMap<String, Reconciliation> = BTreeMap::new();
        for d in &book.dirs {
            let name = d.batch.clone().unwrap_or_else(|| "mixed".into());
            if batch.is_some_and(|b| b != name) {
                continue;
            }
            let r = by.entry(name.clone()).or_insert_with(|| Reconciliation {
                batch: name,
                ..Reconciliation::default()
            });
            r.files += 1;
            for c in d.states.bytes() {
                r.printed += 1;
                match MailerState::from_letter(c)? {
                    MailerState::Outstanding => r.outstanding += 1,
                    MailerState::Delivered => r.delivered += 1,
                    MailerState::Spoiled => r.spoiled += 1,
                    MailerState::Voided => r.voided += 1,
                }
            }
        }
        Ok(by
            .into_values()
            .map(|mut r| {
                r.balanced = r.outstanding == 0;
                r
            })
            .collect())
    }
}

/// Clears the one-run-at-a-time flag when the job ends, however it ends.
struct RunningFlag<'c>(&'c AtomicBool);

impl Drop for RunningFlag<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// A run's source of cards and the mailers prepared from it, not yet handed out.
struct Chunks<'j> {
    source: Box<dyn Iterator<Item = Result<(String, Option<CardCodes>)>> + Send + 'j>,
    ready: std::collections::VecDeque<MailerItem>,
    failed: bool,
    /// The openers of the holder keys met so far in this run (one keyring read a key, not
    /// one a holder).
    openers: HashMap<u32, Arc<Opener>>,
}

/// Numbers reserved durably and not yet given out.
#[derive(Debug, Default)]
struct NumberBlock {
    next: u64,
    end: u64,
}

/// A print run in progress. See the module documentation for the flow.
pub struct PrintJob<'c> {
    cms: &'c Cards,
    /// The receipt of the run's audited start: what lets it read the codes it prints.
    receipt: Release,
    selection: Selection,
    reprint: Reprint,
    record: Mutex<PrintRunRecord>,
    numbers: Mutex<NumberBlock>,
    skipped: Mutex<Skips>,
    actor: Actor,
    _running: RunningFlag<'c>,
}

impl fmt::Debug for PrintJob<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrintJob({})", lock(&self.record).id)
    }
}

impl<'c> PrintJob<'c> {
    /// The run's id.
    pub fn id(&self) -> u64 {
        lock(&self.record).id
    }

    /// The run's label.
    pub fn label(&self) -> String {
        lock(&self.record).label.clone()
    }

    /// The mailers to print, in order. Stops at the first error.
    ///
    /// # Errors
    /// Each item: [`Error::Sealed`], store errors, a record that does not open.
    pub fn mailers<'j>(
        &'j self,
        hsm: &'j dyn Hsm,
        today: Date,
    ) -> Result<impl Iterator<Item = Result<MailerItem>> + Send + 'j> {
        let source: Box<dyn Iterator<Item = Result<(String, Option<CardCodes>)>> + Send + 'j> =
            match &self.selection {
                Selection::Batch(id) => {
                    let scan: BatchScan<'j> = self.cms.codes.scan_batch(hsm, *id, &self.receipt)?;
                    Box::new(scan.map(|r| r.map(|(s, c)| (s, Some(c)))))
                }
                Selection::Serials(list) => Box::new(list.iter().map(move |s| {
                    let codes = match self.cms.codes.pending_release(hsm, s)? {
                        Some(p) => Some(p.open(&self.receipt)?),
                        None => None,
                    };
                    Ok((s.clone(), codes))
                })),
            };
        let mut chunks = Chunks {
            source,
            ready: std::collections::VecDeque::new(),
            failed: false,
            openers: HashMap::new(),
        };
        Ok(std::iter::from_fn(move || loop {
            if let Some(item) = chunks.ready.pop_front() {
                return Some(Ok(item));
            }
            if chunks.failed {
                return None;
            }
            // Pull a chunk in order, read its cards and holders in key order, check and open
            // them in parallel, then number the ones that get a mailer, in order.
            let mut raw = Vec::with_capacity(PREPARE_CHUNK);
            for item in chunks.source.by_ref().take(PREPARE_CHUNK) {
                match item {
                    Ok(card) => raw.push(card),
                    Err(e) => {
                        chunks.failed = true;
                        return Some(Err(e));
                    }
                }
            }
            if raw.is_empty() {
                return None;
            }
            let prepared = match self.prepare_chunk(hsm, today, raw, &mut chunks.openers) {
                Ok(p) => p,
                Err(e) => {
                    chunks.failed = true;
                    return Some(Err(e));
                }
            };
            for p in prepared {
                match p.and_then(|m| {
                    m.map(|mut m| {
                        m.number = self.next_number()?;
                        Ok(m)
                    })
                    .transpose()
                }) {
                    Ok(Some(m)) => chunks.ready.push_back(m),
                    Ok(None) => {}
                    Err(e) => {
                        chunks.failed = true;
                        return Some(Err(e));
                    }
                }
            }
        }))
    }

    fn skip<T>(&self, why: &'static str) -> Result<Option<T>> {
        *lock(&self.skipped).entry(why).or_default() += 1;
        Ok(None)
    }

    /// The mailers of one chunk of cards (numbered later, in order): for each card its
    /// mailer, or `None` (counted) when it gets none, or the error that stops the run there.
    ///
    /// The registry is read for the whole chunk at once, in key order: the cards' records by
    /// their serials (a batch scan yields them ascending, so one range read covers the chunk),
    /// then the records of the holders that still matter, sorted by id ([`read_many`]). A
    /// get a card and a holder made every read descend the tree again and, once the registry
    /// outgrew sled's cache, rebuild its pages. Decoding, the checks and the decryption of
    /// personal data then run on the rayon pool.
    ///
    /// # Errors
    /// A store error of the chunk's reads (then no card of the chunk is handed out).
    fn prepare_chunk(
        &self,
        hsm: &dyn Hsm,
        today: Date,
        raw: Vec<(String, Option<CardCodes>)>,
        openers: &mut HashMap<u32, Arc<Opener>>,
    ) -> Result<Vec<Result<Option<MailerItem>>>> {
        use rayon::prelude::*;
        let store = &*self.cms.store;
        let keys: Vec<&[u8]> = raw.iter().map(|(s, _)| s.as_bytes()).collect();
        let mut card_bytes = read_many(store, Tree::Cards, &keys)?;
        // Cards a bulk registry file wrote are not in the per-entry tree.
        self.cms
            .fill_from_bulk(Tree::Cards, &keys, &mut card_bytes)?;
        // Earlier mailers: only files whose serial range meets the chunk's can hold any (none
        // for a batch printed the first time), so most chunks skip the look-up per card.
        let earlier_possible = {
            let lo = raw.iter().map(|(s, _)| s.as_str()).min();
            let hi = raw.iter().map(|(s, _)| s.as_str()).max();
            match (lo, hi) {
                (Some(lo), Some(hi)) => self
                    .cms
                    .book()?
                    .dirs
                    .iter()
                    .any(|d| d.min_serial.as_str() <= hi && lo <= d.max_serial.as_str()),
                _ => false,
            }
        };
        // Stage 1: the card's own checks, in the order a card is refused.
        let checked: Vec<Result<Option<(String, CardCodes, String)>>> = raw
            .into_par_iter()
            .zip(card_bytes.into_par_iter())
            .map(
                |((serial, codes), bytes)| -> Result<Option<(String, CardCodes, String)>> {
                    let Some(codes) = codes else {
                        return self.skip("codes_not_held");
                    };
                    let Some(bytes) = bytes else {
                        return self.skip("not_in_registry");
                    };
                    let card: CardRecord = decode("card record", &bytes)?;
                    match card.state {
                        CardState::Active => {}
                        CardState::Issued => return self.skip("issued"),
                        CardState::Suspended => return self.skip("suspended"),
                        CardState::Revoked => return self.skip("revoked"),
                    }
                    if card.expiry.is_some_and(|e| e < today) {
                        return self.skip("expired");
                    }
                    if earlier_possible {
                        let mut book = self.cms.book()?;
                        let earlier = self.cms.mailers_in(&mut book, &serial)?;
                        let delivered = earlier.iter().any(|m| m.state == MailerState::Delivered);
                        let outstanding =
                            earlier.iter().any(|m| m.state == MailerState::Outstanding);
                        match self.reprint {
                            Reprint::Unprinted if delivered || outstanding => {
                                return self.skip("already_printed")
                            }
                            Reprint::Undelivered if delivered => return self.skip("delivered"),
                            _ => {}
                        }
                    }
                    Ok(Some((serial, codes, card.holder)))
                },
            )
            .collect();
        // Stage 2: the holders of the cards still in, read sorted by id, each once.
        let mut ids: Vec<String> = checked
            .iter()
            .filter_map(|c| c.as_ref().ok().and_then(Option::as_ref))
            .map(|(_, _, h)| h.clone())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let holder_keys: Vec<&[u8]> = ids.iter().map(|h| h.as_bytes()).collect();
        let mut holder_bytes = read_many(store, Tree::Holders, &holder_keys)?;
        self.cms
            .fill_from_bulk(Tree::Holders, &holder_keys, &mut holder_bytes)?;
        let mut holders: HashMap<String, HolderRecord> = HashMap::with_capacity(ids.len());
        let mut damaged: Option<Error> = None;
        for (id, bytes) in ids.into_iter().zip(holder_bytes) {
            match bytes
                .map(|b| decode::<HolderRecord>("holder record", &b))
                .transpose()
            {
                Ok(Some(h)) => {
                    holders.insert(id, h);
                }
                Ok(None) => {}
                Err(e) => {
                    damaged.get_or_insert(e);
                }
            }
        }
        if let Some(e) = damaged {
            return Err(e);
        }
        for h in holders.values() {
            if !h.deceased && !openers.contains_key(&h.key) {
                let opener = self.cms.codes.holder_opener(hsm, DataKeyId(h.key))?;
                openers.insert(h.key, opener);
            }
        }
        let openers = &*openers;
        let holders = &holders;
        Ok(checked
            .into_par_iter()
            .map(|c| -> Result<Option<MailerItem>> {
                let Some((serial, codes, holder)) = c? else {
                    return Ok(None);
                };
                let Some(holder) = holders.get(holder.as_str()) else {
                    return self.skip("holder_missing");
                };
                if holder.deceased {
                    return self.skip("holder_deceased");
                }
                let personal = personal(openers, holder)?;
                let Some(address) = personal.address.as_deref() else {
                    return self.skip("no_postal_address");
                };
                Ok(Some(MailerItem {
                    name: format!("{} {}", personal.given_names, personal.surname),
                    address: address_lines(address),
                    serial,
                    codes,
                    number: 0,
                }))
            })
            .collect())
    }

    fn next_number(&self) -> Result<u64> {
        let mut block = lock(&self.numbers);
        if block.next == block.end {
            let mut b = Batch::new();
            let first = next_counter(self.cms, NEXT_NUMBER_KEY, &mut b, NUMBER_BLOCK)?;
            self.cms.store.apply(&b)?;
            self.cms.store.flush()?;
            *block = NumberBlock {
                next: first,
                end: first + NUMBER_BLOCK,
            };
        }
        let n = block.next;
        block.next += 1;
        Ok(n)
    }

    /// Records a published print file: its mailers, the voiding of the same cards' earlier
    /// outstanding mailers, and one `mailers.print_file` audit event, in one store batch.
    ///
    /// # Errors
    /// [`Error::Invalid`] for numbers that are not consecutive or a count that does not match;
    /// store and audit errors (then nothing is recorded).
    pub fn record_file(&self, audit: &AuditLog, file: &RecordedFile<'_>) -> Result<()> {
        let count = file.numbers.len();
        if count == 0 || count != file.serials.len() {
            return Err(Error::Invalid(format!(
                "print file {}: {} numbers for {} serials",
                file.name,
                count,
                file.serials.len()
            )));
        }
        let first_number = file.numbers[0];
        if file
            .numbers
            .iter()
            .enumerate()
            .any(|(i, n)| *n != first_number + i as u64)
        {
            return Err(Error::Invalid(format!(
                "print file {}: mailer numbers are not consecutive",
                file.name
            )));
        }
        let (mut min, mut max) = (&file.serials[0], &file.serials[0]);
        for s in file.serials {
            min = min.min(s);
            max = max.max(s);
        }
        let mut book = self.cms.book()?;
        let mut voids: BTreeMap<u64, PrintFileDir> = BTreeMap::new();
        let mut voided = 0u64;
        // Only files whose serial range meets this file's can hold earlier mailers of its
        // cards (none, for a batch printed the first time).
        let earlier = book
            .dirs
            .iter()
            .any(|d| d.min_serial <= *max && *min <= d.max_serial);
        for serial in file.serials.iter().filter(|_| earlier) {
            for m in self.cms.mailers_in(&mut book, serial)? {
                if m.state != MailerState::Outstanding {
                    continue;
                }
                let Some(i) = book.dirs.iter().position(|d| d.id == m.file) else {
                    continue;
                };
                let dir = voids.entry(m.file).or_insert_with(|| book.dirs[i].clone());
                dir.set_state((m.number - dir.first_number) as usize, MailerState::Voided);
                voided += 1;
            }
        }
        let mut record = lock(&self.record).clone();
        let mut b = Batch::new();
        // Mailer dispatches of these cards are done by this file (see the outbox).
        let ops = self.cms.ops_lock();
        let dispatched = self
            .cms
            .mailer_jobs_printed(file.serials, file.numbers, &mut b)?;
        let id = next_counter(self.cms, NEXT_FILE_KEY, &mut b, 1)?;
        let dir = PrintFileDir {
            id,
            name: file.name.to_owned(),
            run: record.id,
            batch: record.batch.clone(),
            part: record.part.clone(),
            first_number,
            count: count as u64,
            min_serial: min.clone(),
            max_serial: max.clone(),
            sha256_clear_pdf: file.sha256_clear_pdf.to_owned(),
            sealed_bytes: file.sealed_bytes,
            created_ms: self.cms.now_ms(),
            states: "o".repeat(count),
        };
        b.put(
            Tree::PrintFiles,
            seq_key(id).to_vec(),
            file.serials.join("\n"),
        );
        b.put(Tree::PrintFileDirs, seq_key(id).to_vec(), encode(&dir)?);
        for v in voids.values() {
            b.put(Tree::PrintFileDirs, seq_key(v.id).to_vec(), encode(v)?);
        }
        record.printed += count as u64;
        record.voided += voided;
        record.files.push(file.name.to_owned());
        b.put(
            Tree::PrintRuns,
            seq_key(record.id).to_vec(),
            encode(&record)?,
        );
        let mut events = vec![self
            .actor
            .event("mailers.print_file", file.name.to_owned())
            .detail("run", record.id.to_string())
            .detail("count", count.to_string())
            .detail("first_serial", file.serials[0].clone())
            .detail("last_serial", file.serials[count - 1].clone())
            .detail("first_number", first_number.to_string())
            .detail("last_number", (first_number + count as u64 - 1).to_string())
            .detail("sha256_clear_pdf", file.sha256_clear_pdf.to_owned())
            .detail("voided", voided.to_string())
            .detail("mailer_dispatches", dispatched.len().to_string())];
        events.extend(dispatched);
        audit.commit_all(b, events)?;
        drop(ops);
        for (id, v) in voids {
            if let Some(d) = book.dirs.iter_mut().find(|d| d.id == id) {
                *d = v;
            }
        }
        let at = book
            .dirs
            .partition_point(|d| d.first_number <= first_number);
        book.dirs.insert(at, dir);
        drop(book);
        *lock(&self.record) = record;
        Ok(())
    }

    /// The names of every recorded print file (of every run): a run numbers its files after
    /// the last its label used.
    ///
    /// # Errors
    /// Store errors.
    pub fn recorded_file_names(&self) -> Result<Vec<String>> {
        self.cms.print_file_names()
    }

    /// Cards left out so far, by reason.
    pub fn skipped(&self) -> BTreeMap<String, u64> {
        lock(&self.skipped)
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect()
    }

    /// Records a mailer the renderer could not lay out: it stays out of the files, the run
    /// goes on, and the run record lists it (written with the record at [`PrintJob::finish`]).
    pub fn set_aside(&self, serial: &str, number: u64, reason: &str) {
        lock(&self.record).set_aside.push(SetAsideMailer {
            serial: serial.to_owned(),
            number,
            reason: reason.to_owned(),
        });
    }

    /// Ends the run: `done`, or `failed` with `error`; gives unused reserved numbers back.
    /// Returns the final record.
    ///
    /// # Errors
    /// Store and audit errors.
    pub fn finish(self, audit: &AuditLog, error: Option<String>) -> Result<PrintRunRecord> {
        let mut record = lock(&self.record).clone();
        record.state = if error.is_some() { "failed" } else { "done" }.into();
        record.error = error;
        record.skipped = self.skipped();
        record.finished_ms = self.cms.now_ms();
        let mut b = Batch::new();
        let block = lock(&self.numbers);
        if block.end > 0 {
            // Unused numbers go back only if no other writer moved the counter since.
            let current = self.cms.store.get(Tree::Meta, NEXT_NUMBER_KEY)?;
            if current.as_deref() == Some(&block.end.to_be_bytes()[..]) {
                b.put(
                    Tree::Meta,
                    NEXT_NUMBER_KEY.to_vec(),
                    block.next.to_be_bytes().to_vec(),
                );
            }
        }
        b.put(
            Tree::PrintRuns,
            seq_key(record.id).to_vec(),
            encode(&record)?,
        );
        let mut event = self
            .actor
            .event("mailers.run_end", format!("print run {}", record.id))
            .outcome(if record.error.is_some() {
                Outcome::Failed
            } else {
                Outcome::Ok
            })
            .detail("printed", record.printed.to_string())
            .detail("files", record.files.len().to_string())
            .detail("voided", record.voided.to_string());
        if !record.set_aside.is_empty() {
            event = event.detail("set_aside", record.set_aside.len().to_string());
        }
        for (k, v) in &record.skipped {
            event = event.detail(&format!("skipped_{k}"), v.to_string());
        }
        if let Some(e) = &record.error {
            event = event.detail("error", e.clone());
        }
        audit.commit(b, event)?;
        Ok(record)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod set_aside_tests {
    use super::*;

    #[test]
    fn a_run_record_written_before_set_aside_existed_reads_with_none() {
        let old = br#"{"id":3,"label":"B-1","batch":"7","listed":null,"plan":"whole","part":"whole","reprint":"unprinted","state":"done","printed":2,"voided":0,"skipped":{},"files":["B-1-0001.pdf.age"],"error":null,"actor":"op","request_id":"r1","started_ms":1,"finished_ms":2}"#;
        let r: PrintRunRecord = decode("print run", old).unwrap();
        assert_eq!(r.printed, 2);
        assert!(r.set_aside.is_empty());
        let mut r2 = r.clone();
        r2.set_aside.push(SetAsideMailer {
            serial: "8039000012341234".into(),
            number: 9,
            reason: "holder name: a word is wider than the envelope window".into(),
        });
        let back: PrintRunRecord = decode("print run", &encode(&r2).unwrap()).unwrap();
        assert_eq!(back, r2);
        // A record without set-aside mailers is written as before.
        let bytes = encode(&r).unwrap();
        assert!(!String::from_utf8(bytes).unwrap().contains("set_aside"));
    }
}

#[cfg(test)]
mod tests {
    //! Print runs on sled: who gets a mailer, numbering across runs and restarts, voids on reprint,
    //! outcomes all or nothing, and the reconciliation per batch.

    use crate::mailers::{
        MailerItem, MailerOutcome, MailerState, RecordedFile, Reprint, Selection,
    };
    use crate::tests::{actor, date, holder_activation, serial, today, World};
    use crate::{Change, PrintJob, Reason};
    use vault::BatchId;
    use vault::ImportOutcome;
    use vault::Tree;
    use vault::{Error, Missing, Refusal};

    fn batch_of(outcome: ImportOutcome) -> BatchId {
        match outcome {
            ImportOutcome::Committed(r) => r.id,
            other => panic!("not committed: {other:?}"),
        }
    }

    /// Cards 1–7 with codes; holder 0 owns 1–5, holder 1 owns 6; card 7 is not in the registry.
    /// Active: 1, 2, 3, 6. Card 4 stays issued, card 5 is suspended.
    fn world() -> (World, BatchId) {
        let w = World::new();
        let expiry = date("2030-01-01");
        w.registry(0, &[1, 2, 3, 4, 5].map(|c| (c, expiry, None)), false)
            .unwrap();
        w.registry(1, &[(6, expiry, None)], false).unwrap();
        let batch = batch_of(w.import_codes(&(1..=7).map(serial).collect::<Vec<_>>()));
        for c in [1, 2, 3, 5, 6] {
            w.change(c, &holder_activation()).unwrap();
        }
        w.change(5, &Change::Suspend(Reason::Lost)).unwrap();
        (w, batch)
    }

    fn start<'w>(w: &'w World, selection: Selection, reprint: Reprint) -> PrintJob<'w> {
        w.cms()
            .start_print_run(
                w.audit(),
                selection,
                reprint,
                "test",
                "whole",
                "whole",
                &actor(),
            )
            .unwrap()
    }

    fn items(w: &World, job: &PrintJob<'_>) -> Vec<MailerItem> {
        job.mailers(&*w.hsm, today())
            .unwrap()
            .collect::<vault::Result<Vec<_>>>()
            .unwrap()
    }

    fn record(w: &World, job: &PrintJob<'_>, name: &str, items: &[MailerItem]) {
        let numbers: Vec<u64> = items.iter().map(|m| m.number).collect();
        let serials: Vec<String> = items.iter().map(|m| m.serial.clone()).collect();
        job.record_file(
            w.audit(),
            &RecordedFile {
                name,
                numbers: &numbers,
                serials: &serials,
                sha256_clear_pdf: "00",
                sealed_bytes: 1,
            },
        )
        .unwrap();
    }

    #[test]
    fn a_run_prints_the_holders_and_cards_of_bulk_registry_files() {
        // The world of the test below, its registry written as bulk files: the run must read
        // through them as every other reader does (it read the per-entry trees only, and
        // printed nothing after a registry of 5,000 holders or more).
        let w = World::new();
        w.cms().set_bulk_min(1);
        let expiry = date("2030-01-01");
        w.registry(0, &[1, 2, 3, 4, 5].map(|c| (c, expiry, None)), false)
            .unwrap();
        w.registry(1, &[(6, expiry, None)], false).unwrap();
        assert_eq!(w.store().get(Tree::Holders, b"h000001").unwrap(), None);
        assert_eq!(
            w.store().get(Tree::Cards, serial(4).as_bytes()).unwrap(),
            None
        );
        let batch = batch_of(w.import_codes(&(1..=7).map(serial).collect::<Vec<_>>()));
        for c in [1, 2, 3, 5, 6] {
            w.change(c, &holder_activation()).unwrap();
        }
        w.change(5, &Change::Suspend(Reason::Lost)).unwrap();
        let job = start(&w, Selection::Batch(batch), Reprint::Unprinted);
        let got = items(&w, &job);
        let serials: Vec<&str> = got.iter().map(|m| m.serial.as_str()).collect();
        assert_eq!(serials, [serial(1), serial(2), serial(3), serial(6)]);
        assert_eq!(got[0].name, "Nicolò 0 D'Angelo");
        let skipped = job.skipped();
        assert_eq!(skipped.get("issued"), Some(&1));
        assert_eq!(skipped.get("suspended"), Some(&1));
        assert_eq!(skipped.get("not_in_registry"), Some(&1));
        job.finish(w.audit(), None).unwrap();
    }

    #[test]
    fn a_batch_run_prints_active_cards_only_and_records_its_files() {
        let (w, batch) = world();
        let job = start(&w, Selection::Batch(batch), Reprint::Unprinted);
        let got = items(&w, &job);
        let serials: Vec<&str> = got.iter().map(|m| m.serial.as_str()).collect();
        assert_eq!(serials, [serial(1), serial(2), serial(3), serial(6)]);
        assert_eq!(
            got.iter().map(|m| m.number).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        assert_eq!(got[0].codes.pin.expose_secret(), b"12345");
        assert_eq!(got[0].name, "Nicolò 0 D'Angelo");
        assert_eq!(got[0].address, ["Via Roma 1", "00100 Roma"]);
        let skipped = job.skipped();
        assert_eq!(skipped.get("issued"), Some(&1));
        assert_eq!(skipped.get("suspended"), Some(&1));
        assert_eq!(skipped.get("not_in_registry"), Some(&1));
        record(&w, &job, "test-0001.pdf.age", &got[..3]);
        record(&w, &job, "test-0002.pdf.age", &got[3..]);
        let done = job.finish(w.audit(), None).unwrap();
        assert_eq!(done.state, "done");
        assert_eq!(done.printed, 4);
        assert_eq!(done.files, ["test-0001.pdf.age", "test-0002.pdf.age"]);

        // Running it again prints nothing: every active card has an outstanding mailer.
        let again = start(&w, Selection::Batch(batch), Reprint::Unprinted);
        assert!(items(&w, &again).is_empty());
        assert_eq!(again.skipped().get("already_printed"), Some(&4));
        again.finish(w.audit(), None).unwrap();
        w.audit().verify().unwrap();
    }

    #[test]
    fn a_reprint_voids_the_earlier_mailer_and_numbers_are_never_reused() {
        let (mut w, batch) = world();
        let job = start(&w, Selection::Batch(batch), Reprint::Unprinted);
        let got = items(&w, &job);
        record(&w, &job, "a-0001.pdf.age", &got);
        job.finish(w.audit(), None).unwrap();

        // Unused reserved numbers were given back: the reprint takes number 5.
        let reprint = start(&w, Selection::Serials(vec![serial(2)]), Reprint::All);
        let again = items(&w, &reprint);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].number, 5);
        record(&w, &reprint, "b-0001.pdf.age", &again);
        let rec = reprint.finish(w.audit(), None).unwrap();
        assert_eq!(rec.voided, 1);
        let of2 = w.cms().mailers_of(&serial(2)).unwrap();
        assert_eq!(
            of2.iter().map(|m| (m.number, m.state)).collect::<Vec<_>>(),
            [(2, MailerState::Voided), (5, MailerState::Outstanding)]
        );

        // Outcomes: all or nothing; a voided mailer cannot be delivered.
        let err = w
            .cms()
            .record_mailer_outcomes(
                w.audit(),
                &[(1, MailerOutcome::Delivered), (2, MailerOutcome::Delivered)],
                &actor(),
            )
            .unwrap_err();
        assert!(
            matches!(
                &err,
                Error::Refusal(Refusal::MailerNotOutstanding { outcome: 2, mailer: 2, state, .. })
                    if state == "voided"
            ),
            "{err}"
        );
        assert_eq!(
            w.cms().mailers_of(&serial(1)).unwrap()[0].state,
            MailerState::Outstanding,
            "nothing applied"
        );
        assert!(matches!(
            w.cms()
                .record_mailer_outcomes(w.audit(), &[(99, MailerOutcome::Spoiled)], &actor()),
            Err(Error::Refusal(Refusal::MailerUnknown {
                outcome: 1,
                mailer: 99
            }))
        ));
        assert!(matches!(
            w.cms()
                .record_mailer_outcomes(w.audit(), &[(1, MailerOutcome::Spoiled); 2], &actor()),
            Err(Error::Refusal(Refusal::MailerRepeats {
                outcome: 2,
                mailer: 1
            }))
        ));
        w.cms()
            .record_mailer_outcomes(
                w.audit(),
                &[(1, MailerOutcome::Delivered), (3, MailerOutcome::Spoiled)],
                &actor(),
            )
            .unwrap();

        w.restart();
        let rec = w.cms().reconcile(Some(&batch.to_string())).unwrap();
        assert_eq!(rec.len(), 1);
        let r = &rec[0];
        assert_eq!(
            (r.printed, r.delivered, r.spoiled, r.voided, r.outstanding),
            (5, 1, 1, 1, 2)
        );
        assert_eq!(
            r.printed,
            r.delivered + r.spoiled + r.voided + r.outstanding
        );
        assert!(!r.balanced);

        // Undelivered: card 1 (delivered) is left out, the others are printed again.
        let third = start(&w, Selection::Batch(batch), Reprint::Undelivered);
        let got = items(&w, &third);
        assert_eq!(
            got.iter().map(|m| m.serial.clone()).collect::<Vec<_>>(),
            [serial(2), serial(3), serial(6)]
        );
        assert_eq!(got[0].number, 6, "numbers continue after a restart");
        assert_eq!(third.skipped().get("delivered"), Some(&1));
        third.finish(w.audit(), None).unwrap();
        w.audit().verify().unwrap();
    }

    #[test]
    fn one_run_at_a_time_and_a_stopped_run_reads_interrupted() {
        let (mut w, batch) = world();
        let id = {
            let job = start(&w, Selection::Batch(batch), Reprint::Unprinted);
            let refused = w.cms().start_print_run(
                w.audit(),
                Selection::Batch(batch),
                Reprint::Unprinted,
                "x",
                "whole",
                "whole",
                &actor(),
            );
            assert!(matches!(
                refused,
                Err(Error::Refusal(Refusal::PrintRunGoing))
            ));
            let got = items(&w, &job);
            assert_eq!(got.len(), 4);
            // The process "stops": no file recorded, no finish.
            std::mem::forget(got);
            let id = job.id();
            drop(job);
            id
        };
        w.restart();
        let job = start(&w, Selection::Batch(batch), Reprint::Unprinted);
        assert_eq!(w.cms().print_run(id).unwrap().state, "interrupted");
        let got = items(&w, &job);
        assert_eq!(
            got.len(),
            4,
            "nothing was recorded, so every card is printed"
        );
        assert!(
            got[0].number > 4,
            "numbers reserved by the stopped run are not given again"
        );
        job.finish(w.audit(), None).unwrap();
    }

    #[test]
    fn bad_selections_are_refused_before_anything_is_written() {
        let (w, _) = world();
        let cms = w.cms();
        let run = |sel: Selection, label: &str| {
            cms.start_print_run(
                w.audit(),
                sel,
                Reprint::Unprinted,
                label,
                "whole",
                "whole",
                &actor(),
            )
            .map(|j| j.id())
        };
        assert!(matches!(
            run(Selection::Serials(vec![]), "x"),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            run(Selection::Serials(vec![serial(1), serial(1)]), "x"),
            Err(Error::Invalid(m)) if m.contains("repeats")
        ));
        assert!(matches!(
            run(Selection::Batch(BatchId(999)), "x"),
            Err(Error::Missing(Missing::CommittedBatch(BatchId(999))))
        ));
        assert!(matches!(
            run(Selection::Batch(BatchId(1)), "../etc"),
            Err(Error::Invalid(_))
        ));
        assert!(cms.print_runs(10).unwrap().is_empty());
    }

    #[test]
    fn the_batch_scan_skips_cards_whose_codes_were_deleted() {
        let (w, batch) = world();
        let codes = w.codes.as_ref().unwrap();
        let receipt = w
            .audit()
            .commit_release(
                vault::Batch::new(),
                vec![vault::NewEvent::new(vault::PRINT_RUN_ACTION, "print run 0")
                    .detail("batch", batch.to_string())],
            )
            .unwrap();
        let count = || codes.scan_batch(&*w.hsm, batch, &receipt).unwrap().count();
        assert_eq!(count(), 7);
        w.change(3, &Change::Revoke(Reason::Stolen)).unwrap();
        let serials: Vec<String> = codes
            .scan_batch(&*w.hsm, batch, &receipt)
            .unwrap()
            .map(|r| r.unwrap().0)
            .collect();
        assert_eq!(serials.len(), 6);
        assert!(!serials.contains(&serial(3)));
        let mut sorted = serials.clone();
        sorted.sort();
        assert_eq!(serials, sorted, "in serial order");
    }

    #[test]
    fn a_mailer_dispatch_is_done_by_the_print_file_that_prints_the_card() {
        let (w, batch) = world();
        let asked = w
            .cms()
            .request_dispatch(&*w.hsm, w.audit(), &serial(2), "mailer", today(), &actor())
            .unwrap();
        let job = asked.jobs[0].clone();
        assert_eq!(job.channel, crate::Channel::Mailer);
        // The delivery workers never claim it.
        assert!(w
            .cms()
            .claim_due(u64::MAX / 2, &crate::Channel::REMOTE, 10)
            .unwrap()
            .is_empty());
        let run = start(&w, Selection::Batch(batch), Reprint::Unprinted);
        let got = items(&w, &run);
        record(&w, &run, "m-0001.pdf.age", &got);
        run.finish(w.audit(), None).unwrap();
        let number = got.iter().find(|m| m.serial == serial(2)).unwrap().number;
        let done = w.cms().job(job.id).unwrap().unwrap();
        assert_eq!(done.state, crate::JobState::Sent);
        assert_eq!(
            done.peer_id.as_deref(),
            Some(format!("mailer-{number}").as_str())
        );
        let status = w.cms().deliveries(&serial(2)).unwrap();
        assert_eq!(status[0].shown_state(), "sent");
        // No other card had a mailer job: nothing else changed.
        for c in [1, 3, 6] {
            assert!(w.cms().jobs_of(&serial(c)).unwrap().is_empty());
        }
    }

    #[test]
    fn start_up_marks_a_stopped_run_interrupted_and_a_file_can_be_told_from_its_record() {
        let (mut w, batch) = world();
        let (id, numbers) = {
            let job = start(&w, Selection::Batch(batch), Reprint::Unprinted);
            let got = items(&w, &job);
            record(&w, &job, "test-0001.pdf.age", &got[..2]);
            let numbers: Vec<u64> = got[..2].iter().map(|m| m.number).collect();
            // The process "stops" after recording one file: no finish.
            let id = job.id();
            std::mem::forget(job);
            (id, numbers)
        };
        w.restart();
        assert_eq!(w.cms().print_run(id).unwrap().state, "running");
        assert_eq!(w.cms().recover_print_runs().unwrap(), [id]);
        let run = w.cms().print_run(id).unwrap();
        assert_eq!(run.state, "interrupted");
        assert!(run.finished_ms > 0 && run.error.is_some());
        assert_eq!(run.files, ["test-0001.pdf.age"]);
        // Once only.
        assert!(w.cms().recover_print_runs().unwrap().is_empty());

        assert_eq!(w.cms().print_file_names().unwrap(), ["test-0001.pdf.age"]);
        let facts = w
            .cms()
            .print_file_facts("test-0001.pdf.age")
            .unwrap()
            .unwrap();
        assert_eq!(facts.label, "test");
        assert_eq!(facts.first_serial, serial(1));
        assert_eq!(facts.last_serial, serial(2));
        assert_eq!(facts.dir.first_number, numbers[0]);
        assert_eq!(facts.dir.count, 2);
        assert_eq!(facts.dir.sealed_bytes, 1);
        assert!(w
            .cms()
            .print_file_facts("test-0002.pdf.age")
            .unwrap()
            .is_none());

        // While a run goes, recovery is refused.
        let job = start(&w, Selection::Batch(batch), Reprint::Unprinted);
        assert!(matches!(
            w.cms().recover_print_runs(),
            Err(Error::Refusal(Refusal::RecoverWhileRunning))
        ));
        job.finish(w.audit(), None).unwrap();
        w.audit().verify().unwrap();
    }

    /// A store that counts point reads of cards and holders.
    #[derive(Debug)]
    struct CountingStore {
        inner: vault::MemoryStore,
        registry_gets: std::sync::atomic::AtomicU64,
    }

    impl vault::Store for CountingStore {
        fn get(&self, tree: vault::Tree, key: &[u8]) -> vault::Result<Option<Vec<u8>>> {
            if matches!(tree, vault::Tree::Cards | vault::Tree::Holders) {
                self.registry_gets
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            self.inner.get(tree, key)
        }
        fn range(
            &self,
            tree: vault::Tree,
            from: &[u8],
            to: Option<&[u8]>,
            limit: usize,
        ) -> vault::Result<vault::Entries> {
            self.inner.range(tree, from, to, limit)
        }
        fn last(&self, tree: vault::Tree) -> vault::Result<Option<(Vec<u8>, Vec<u8>)>> {
            self.inner.last(tree)
        }
        fn write(&self, batch: &vault::Batch) -> vault::Result<()> {
            self.inner.write(batch)
        }
        fn flush(&self) -> vault::Result<()> {
            self.inner.flush()
        }
    }

    /// A codice fiscale for holder `i` (letters from `i`, fixed birth data).
    fn cf_of(i: usize) -> String {
        let mut letters = [b'A'; 6];
        let mut v = i;
        for l in letters.iter_mut().rev() {
            *l = b'A' + (v % 26) as u8;
            v /= 26;
        }
        let base = format!("{}85T10A562", String::from_utf8_lossy(&letters));
        let check = crate::codice_fiscale::check_character(&base).unwrap();
        format!("{base}{check}")
    }

    /// Issue 20: a batch print run read every card and its holder with a get each (one tree
    /// descent, and past sled's cache one page rebuild, a read). It now reads a chunk's cards
    /// and holders by range reads in key order: not one get for a batch of dense serials.
    #[test]
    fn a_batch_run_reads_cards_and_holders_by_range_not_one_get_a_card() {
        use std::sync::atomic::Ordering;
        use std::sync::Arc;
        const N: usize = 700; // more than one chunk of 512
        let hsm_dir = tempfile::tempdir().unwrap();
        let hsm = Arc::new(hsm_sim::SimulatedHsm::dev(hsm_dir.path()).unwrap());
        let counting = Arc::new(CountingStore {
            inner: vault::MemoryStore::new(),
            registry_gets: Default::default(),
        });
        let store: Arc<dyn vault::Store> = counting.clone();
        let audit = vault::AuditLog::open(store.clone(), 100).unwrap();
        audit.unlock(hsm.clone()).unwrap();
        let codes = Arc::new(vault::CodeVault::open(store.clone()).unwrap().0);
        let cms = crate::Cards::new(codes.clone());
        let serials: Vec<String> = (0..N).map(serial).collect();
        let text: String = serials
            .iter()
            .map(|s| format!("{s};12345;12345678\n"))
            .collect();
        let rules = vault::ParseRules::default();
        let ctx = vault::ImportContext {
            vault: &codes,
            hsm: &*hsm,
            audit: &audit,
            rules: &rules,
        };
        let req = vault::ImportRequest {
            manufacturer: "m".into(),
            expected_cards: None,
            expected_sha256: None,
            actor: "m1".into(),
            role: "manufacturer".into(),
            request_id: String::new(),
        };
        let batch = batch_of(vault::import_file(ctx, text.as_bytes(), &req, &|_| {}).unwrap());
        let entries: Vec<crate::HolderEntry> = (0..N)
            .map(|i| crate::HolderEntry {
                first_line: i as u64 + 2,
                codice_fiscale: cf_of(i),
                given_names: format!("Nicolò {i}"),
                surname: "D'Angelo".into(),
                birth_date: date("1985-12-10"),
                email: None,
                mobile: None,
                address: Some(format!("Via Roma {i}, 00100 Roma")),
                deceased: false,
                cards: vec![crate::CardEntry {
                    line: i as u64 + 2,
                    serial: serial(i),
                    expiry: date("2030-01-01"),
                    replaced_by: None,
                }],
            })
            .collect();
        cms.import_registry(&*hsm, &audit, &entries, today(), &actor())
            .unwrap();
        for s in &serials {
            cms.change(&*hsm, &audit, s, &holder_activation(), today(), &actor())
                .unwrap();
        }
        let job = cms
            .start_print_run(
                &audit,
                Selection::Batch(batch),
                Reprint::Unprinted,
                "count",
                "whole",
                "whole",
                &actor(),
            )
            .unwrap();
        counting.registry_gets.store(0, Ordering::SeqCst);
        let got = job
            .mailers(&*hsm, today())
            .unwrap()
            .collect::<vault::Result<Vec<_>>>()
            .unwrap();
        assert_eq!(got.len(), N);
        assert_eq!(got[N - 1].serial, serial(N - 1));
        assert_eq!(
            got[N - 1].address,
            [format!("Via Roma {}", N - 1), "00100 Roma".into()]
        );
        assert_eq!(
            counting.registry_gets.load(Ordering::SeqCst),
            0,
            "cards and holders read one by one"
        );
        job.finish(&audit, None).unwrap();
    }

    #[test]
    fn read_many_answers_every_key_in_order_by_range_or_one_by_one() {
        use super::read_many;
        let store = vault::MemoryStore::new();
        let mut b = vault::Batch::new();
        for i in (0..300u32).filter(|i| i % 3 != 0) {
            b.put(
                vault::Tree::Cards,
                format!("k{i:04}").into_bytes(),
                i.to_be_bytes().to_vec(),
            );
        }
        vault::Store::apply(&store, &b).unwrap();
        let want = |keys: &[String]| -> Vec<Option<Vec<u8>>> {
            keys.iter()
                .map(|k| {
                    let i: u32 = k[1..].parse().unwrap();
                    (i % 3 != 0 && i < 300).then(|| i.to_be_bytes().to_vec())
                })
                .collect()
        };
        let check = |keys: Vec<String>| {
            let refs: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
            assert_eq!(
                read_many(&store, vault::Tree::Cards, &refs).unwrap(),
                want(&keys),
                "{keys:?}"
            );
        };
        // Dense and ascending (one range read), with absent keys inside and past the end.
        check((0..320).map(|i| format!("k{i:04}")).collect());
        // Sparse: the range read stops at its limit; the rest is read one by one.
        check((0..4).map(|i| format!("k{:04}", i * 99 + 1)).collect());
        // Not ascending (a run by list), repeated keys, none.
        check(
            ["k0005", "k0001", "k0002", "k0002"]
                .map(String::from)
                .to_vec(),
        );
        check(Vec::new());
    }
}
