//! Bulk import of manufacturer PIN/PUK files, and generation of codes for cards without them.
//!
//! - [`parse`]: the streaming parser and validator of the file format in `docs/formats.md`:
//!   every line checked against the code policy and the serial rule, problems reported by line
//!   and field, never with a code.
//! - [`import_file`]: parse → seal → stage → commit ([`crate::codes`]); the file is streamed,
//!   never held, and the batch is visible only once its commit record is durable.
//! - [`age`]: files encrypted with age (X25519) to plico's import recipient are decrypted on
//!   the way in, by the import key the HSM keeps wrapped; [`import_file`] recognises them by
//!   their header.
//! - [`generation`]: codes drawn for a list or range of serials, stored like an import.
//!
//! Clear bytes of a file pass through zeroizing buffers only ([`ZeroizingBufReader`], and the
//! parser's own carry buffer).

pub mod age;
pub mod generation;
pub mod parse;

use crate::audit::AuditLog;
use crate::codes::{BatchMeta, BatchRecord, BatchSource, CardCodes, CodeVault, CommitOutcome};
use crate::error::{Error, Result};
use crate::hsm::Hsm;
use parse::{parse, ParseFailure, ParseRules};
use std::io::{BufRead, Read};

/// Longest manufacturer name.
pub const MAX_MANUFACTURER_LEN: usize = 64;

/// What an upload says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportRequest {
    /// The manufacturer the file comes from.
    pub manufacturer: String,
    /// Cards the uploader announced; a different count rejects the file.
    pub expected_cards: Option<u64>,
    /// SHA-256 of the file as sent (after age decryption, the clear file) the uploader
    /// announced; a different hash rejects the file.
    pub expected_sha256: Option<[u8; 32]>,
    /// Account id of the uploader.
    pub actor: String,
    /// Its role.
    pub role: String,
    /// Request id.
    pub request_id: String,
}

/// How an import ended. Every variant names a stored batch record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportOutcome {
    /// Stored and visible.
    Committed(BatchRecord),
    /// Complete, but some serials are already in the vault: held back, nothing overwritten.
    Quarantined(BatchRecord),
    /// This file was stored before: the first batch.
    AlreadyStored(BatchRecord),
    /// The file was refused; the record lists the problems (never a code).
    Rejected(BatchRecord),
}

impl ImportOutcome {
    /// The batch record.
    pub fn record(&self) -> &BatchRecord {
        match self {
            ImportOutcome::Committed(r)
            | ImportOutcome::Quarantined(r)
            | ImportOutcome::AlreadyStored(r)
            | ImportOutcome::Rejected(r) => r,
        }
    }

    /// A short name of the outcome: `committed`, `quarantined`, `already_stored`, `rejected`.
    pub fn kind(&self) -> &'static str {
        match self {
            ImportOutcome::Committed(_) => "committed",
            ImportOutcome::Quarantined(_) => "quarantined",
            ImportOutcome::AlreadyStored(_) => "already_stored",
            ImportOutcome::Rejected(_) => "rejected",
        }
    }
}

impl From<CommitOutcome> for ImportOutcome {
    fn from(c: CommitOutcome) -> Self {
        match c {
            CommitOutcome::Committed(r) => ImportOutcome::Committed(r),
            CommitOutcome::Quarantined(r) => ImportOutcome::Quarantined(r),
            CommitOutcome::AlreadyStored(r) => ImportOutcome::AlreadyStored(r),
        }
    }
}

/// Checks a manufacturer name: 1 to 64 characters of letters, digits, space, `.`, `_`, `-`.
///
/// # Errors
/// [`Error::Invalid`] saying what is wrong.
pub fn check_manufacturer(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_MANUFACTURER_LEN {
        return Err(Error::Invalid(format!(
            "manufacturer: 1 to {MAX_MANUFACTURER_LEN} characters, got {}",
            name.len()
        )));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, ' ' | '.' | '_' | '-')))
    {
        return Err(Error::Invalid(format!(
            "manufacturer: character {c:?} is not allowed (letters, digits, space, . _ -)"
        )));
    }
    Ok(())
}

/// Counts the bytes read and reports them; remembers whether the source itself failed (a
/// broken upload), as opposed to the layers above it (age decryption of a damaged file).
struct Counting<'p, R> {
    inner: R,
    read: u64,
    source_failed: bool,
    progress: &'p (dyn Fn(u64) + Sync),
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf).inspect_err(|e| {
            if e.kind() != std::io::ErrorKind::Interrupted {
                self.source_failed = true;
            }
        })?;
        self.read += n as u64;
        (self.progress)(self.read);
        Ok(n)
    }
}

/// The message of an error without its kind's prefix (`invalid: …`), for a report line.
fn message(e: &Error) -> String {
    match e {
        Error::Invalid(m) => m.clone(),
        Error::Refusal(r) => r.to_string(),
        other => other.to_string(),
    }
}

/// A `BufRead` over `R` whose buffer is wiped when dropped (the buffer holds clear codes).
pub struct ZeroizingBufReader<R> {
    inner: R,
    buf: zeroize::Zeroizing<Vec<u8>>,
    pos: usize,
    end: usize,
}

impl<R> std::fmt::Debug for ZeroizingBufReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ZeroizingBufReader({} bytes, <redacted>)",
            self.buf.len()
        )
    }
}

impl<R> ZeroizingBufReader<R> {
    /// A reader with a buffer of `capacity` bytes.
    pub fn with_capacity(capacity: usize, inner: R) -> Self {
        ZeroizingBufReader {
            inner,
            buf: zeroize::Zeroizing::new(vec![0u8; capacity.max(1)]),
            pos: 0,
            end: 0,
        }
    }
}

impl<R: Read> Read for ZeroizingBufReader<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<R: Read> BufRead for ZeroizingBufReader<R> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        if self.pos >= self.end {
            self.end = self.inner.read(&mut self.buf)?;
            self.pos = 0;
        }
        Ok(&self.buf[self.pos..self.end])
    }

    fn consume(&mut self, amount: usize) {
        self.pos = (self.pos + amount).min(self.end);
    }
}

/// Reads up to `n` bytes from the start of `r` (fewer only at the end of the stream).
fn sniff<R: Read>(r: &mut R, n: usize) -> std::io::Result<Vec<u8>> {
    let mut prefix = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match r.read(&mut prefix[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    prefix.truncate(got);
    Ok(prefix)
}

/// The bytes of an upload to the parser: an age file (recognised by its first bytes, see
/// [`age::is_age`]) is decrypted on the way with the identity that `identity` gives, which is
/// asked for only then; a clear file is read through a [`ZeroizingBufReader`]. Returns how the
/// parse ended and whether the file was age-encrypted.
///
/// A header that does not open is a [`ParseFailure::Rejected`] of the whole file; a failure of
/// `identity` is a [`ParseFailure::Callback`] (not the file's fault).
pub(crate) fn parse_upload<R: Read>(
    mut reader: R,
    rules: &ParseRules,
    identity: impl FnOnce() -> Result<age::ImportIdentity>,
    mut on_card: impl FnMut(parse::CardLine<'_>) -> Result<()>,
) -> (std::result::Result<parse::ParseSummary, ParseFailure>, bool) {
    // An age file starts with its header; a clear one with a header line or a card (the
    // first bytes hold at most part of one serial and, for a very short file, codes: they are
    // wiped with the prefix).
    let prefix = match sniff(&mut reader, age::SNIFF_LEN) {
        Ok(prefix) => zeroize::Zeroizing::new(prefix),
        Err(e) => return (Err(ParseFailure::Io(e.to_string())), false),
    };
    let whole = std::io::Cursor::new(&prefix[..]).chain(reader);
    if !age::is_age(&prefix) {
        let clear = ZeroizingBufReader::with_capacity(256 * 1024, whole);
        return (parse(clear, rules, &mut on_card), false);
    }
    let parsed = match identity() {
        Err(e) => Err(ParseFailure::Callback(e)),
        Ok(identity) => match identity.decrypt(whole) {
            Ok(clear) => {
                drop(identity);
                parse(clear, rules, &mut on_card)
            }
            Err(e) => Err(ParseFailure::Rejected(parse::Report {
                problems: vec![parse::LineProblem {
                    line: 0,
                    field: parse::Field::File,
                    message: message(&e),
                }],
                total: 1,
            })),
        },
    };
    (parsed, true)
}

/// Where an import takes its rules and keeps its codes.
#[derive(Debug, Clone, Copy)]
pub struct ImportContext<'a> {
    /// The code vault.
    pub vault: &'a CodeVault,
    /// The HSM (for the batch's data key and the content id).
    pub hsm: &'a dyn Hsm,
    /// The audit chain.
    pub audit: &'a AuditLog,
    /// Code policy and serial rule (the request's count and hash are added to them).
    pub rules: &'a ParseRules,
}

/// Imports one manufacturer file from `reader` (the clear file: age-encrypted uploads are
/// decrypted on the way in by the caller). `progress` is told the bytes read so far.
///
/// Returns once the outcome is durable: committed, quarantined, already stored, or rejected
/// with its problems. A rejection is an `Ok` outcome (the upload was handled); `Err` is for
/// failures that are not the file's fault — then nothing of the file stays in the store.
///
/// # Errors
/// [`Error::Invalid`] for a bad manufacturer name; [`Error::Sealed`]; store, HSM and audit
/// errors; [`Error::Storage`] when reading `reader` fails.
pub fn import_file<R: Read>(
    ctx: ImportContext<'_>,
    reader: R,
    request: &ImportRequest,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<ImportOutcome> {
    check_manufacturer(&request.manufacturer)?;
    let mut rules = ctx.rules.clone();
    rules.expected_lines = request.expected_cards;
    rules.expected_sha256 = request.expected_sha256;
    rules.validate()?;
    let meta = BatchMeta {
        source: BatchSource::Import,
        manufacturer: request.manufacturer.clone(),
        actor: request.actor.clone(),
        role: request.role.clone(),
        request_id: request.request_id.clone(),
    };
    let mut stager = ctx.vault.begin(ctx.hsm, ctx.audit, &meta)?;
    let id = stager.id();
    let mut counting = Counting {
        inner: reader,
        read: 0,
        source_failed: false,
        progress,
    };
    let on_card = |card: parse::CardLine<'_>| {
        let codes = CardCodes {
            pin: card.pin,
            puk: card.puk,
            signature: card.signature,
        };
        stager.push(card.line, card.serial, &codes)
    };
    let (parsed, encrypted) = parse_upload(
        &mut counting,
        &rules,
        || ctx.vault.import_identity(ctx.hsm, ctx.audit),
        on_card,
    );
    let bytes = counting.read;
    let summary = match parsed {
        Ok(s) => s,
        Err(ParseFailure::Rejected(report)) => {
            stager.cancel();
            let problems = report.problems.iter().map(|p| p.to_string()).collect();
            let rec = ctx
                .vault
                .reject(ctx.audit, id, bytes, problems, report.total)?;
            return Ok(ImportOutcome::Rejected(rec));
        }
        Err(ParseFailure::Callback(Error::Invalid(why))) => {
            stager.cancel();
            let rec = ctx.vault.reject(ctx.audit, id, bytes, vec![why], 1)?;
            return Ok(ImportOutcome::Rejected(rec));
        }
        // The upload arrived whole but does not decrypt to the end: a cut or altered age
        // file. That is the file's fault, not the connection's.
        Err(ParseFailure::Io(why)) if encrypted && !counting.source_failed => {
            stager.cancel();
            let problem = format!("the age-encrypted file does not decrypt to its end: {why}");
            let rec = ctx.vault.reject(ctx.audit, id, bytes, vec![problem], 1)?;
            return Ok(ImportOutcome::Rejected(rec));
        }
        Err(other) => {
            stager.cancel();
            let err = Error::from(other);
            ctx.vault.abandon(ctx.audit, id, &err.to_string())?;
            return Err(err);
        }
    };
    // The same file again: answer with the first batch before sorting and writing the rest.
    let content_id = ctx.vault.content_id(ctx.hsm, ctx.audit, &summary.sha256)?;
    if let Some(first) = ctx.vault.by_content(&content_id)? {
        stager.cancel();
        ctx.vault.drop_duplicate(ctx.audit, id, &first)?;
        return Ok(ImportOutcome::AlreadyStored(first));
    }
    finish_and_commit(ctx, stager, bytes, Some(content_id))
}

/// The end of every batch: writes what the stager holds, then rejects the batch for repeated
/// serials or commits it ([`CodeVault::commit`]: committed, quarantined or already stored).
/// A failure abandons the batch, so nothing of it stays.
///
/// # Errors
/// Store and audit errors.
pub(crate) fn finish_and_commit(
    ctx: ImportContext<'_>,
    stager: crate::codes::Stager,
    bytes: u64,
    content_id: Option<String>,
) -> Result<ImportOutcome> {
    let id = stager.id();
    let staged = match stager.finish() {
        Ok(s) => s,
        Err(e) => {
            ctx.vault.abandon(ctx.audit, id, &e.to_string())?;
            return Err(e);
        }
    };
    if staged.repeats.total > 0 {
        let listed = staged.repeats.listed.clone();
        let total = staged.repeats.total;
        drop(staged);
        let rec = ctx.vault.reject(ctx.audit, id, bytes, listed, total)?;
        return Ok(ImportOutcome::Rejected(rec));
    }
    ctx.vault
        .commit(ctx.audit, staged, bytes, content_id)
        .map(ImportOutcome::from)
}
