//! Streaming parser and validator of manufacturer PIN/PUK files (format: `docs/formats.md`).
//!
//! [`parse`] reads a [`BufRead`] once, line by line, checks every line against the
//! [`CodePolicy`] and the [`SerialRule`], and hands each good card to a callback as a
//! [`CardLine`]. It never holds the file: lines come from the vault's one bounded, zeroizing
//! line reader ([`read_lines`], capped here at [`MAX_LINE_BYTES`]). Per line nothing is allocated beyond the fixed buffers of
//! [`Pin`] and [`Puk`]. The SHA-256 of the raw bytes is computed over whole buffer fills.
//!
//! Any problem rejects the file. After the first one the parser stops calling the callback but
//! keeps reading, to report the first [`MAX_REPORTED`] problems and count them all. Cards handed
//! to the callback before a problem was found (or before the end-of-file checks of line count
//! and hash) are not yet accepted: the caller stages them and commits only on `Ok`.
//!
//! What it does not do: duplicate serials, serials already in the vault, decryption, storage.
//!
//! # Security
//! A problem names the line and the field and says what is wrong (a length, a position, a
//! field count). It never contains a field's content — not even the serial, because a file
//! with its columns swapped would put a code where the serial belongs — and never the raw line.

use crate::error::Error;
use crate::lines::{read_lines, Line};
use crate::policy::{CodeError, CodePolicy};
use crate::secret::{Pin, Puk};
use aws_lc_rs::digest::{Context, SHA256};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::BufRead;
use std::ops::ControlFlow;

/// The most problems a [`Report`] lists; the rest are only counted.
pub const MAX_REPORTED: usize = 100;

/// The longest line accepted, in bytes, line ending included. A real line is far shorter (at
/// most 64 + 4 × 16 + 4 bytes); the cap bounds memory on a file without newlines.
pub const MAX_LINE_BYTES: usize = 1024;

/// The longest serial a [`SerialRule`] may allow.
pub const MAX_SERIAL_LEN: u8 = 64;

/// Which characters a serial may contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SerialCharset {
    /// ASCII digits `0-9`.
    Digits,
    /// ASCII upper-case letters and digits `A-Z0-9`.
    UpperAlnum,
}

impl SerialCharset {
    fn allows(self, b: u8) -> bool {
        match self {
            SerialCharset::Digits => b.is_ascii_digit(),
            SerialCharset::UpperAlnum => b.is_ascii_digit() || b.is_ascii_uppercase(),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            SerialCharset::Digits => "digits",
            SerialCharset::UpperAlnum => "A-Z and 0-9",
        }
    }
}

/// The shape of a card serial, from configuration.
///
/// The default, digits with 16 to 20 characters, assumes CNS / TS-CNS cards, whose card number
/// is a string of 20 digits, and leaves room for manufacturers that give a shorter chip serial.
/// A deployment with other cards configures its own rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SerialRule {
    /// Fewest characters allowed.
    pub min_len: u8,
    /// Most characters allowed.
    pub max_len: u8,
    /// Characters allowed.
    pub charset: SerialCharset,
}

impl SerialRule {
    /// The CNS / TS-CNS default: 16 to 20 digits.
    pub const CNS: SerialRule = SerialRule {
        min_len: 16,
        max_len: 20,
        charset: SerialCharset::Digits,
    };

    /// Checks the rule itself: 1 ≤ `min_len` ≤ `max_len` ≤ [`MAX_SERIAL_LEN`].
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the bounds.
    pub fn validate(&self) -> Result<(), Error> {
        if self.min_len == 0 || self.min_len > self.max_len || self.max_len > MAX_SERIAL_LEN {
            return Err(Error::Invalid(format!(
                "serial rule: min_len {}, max_len {} (need 1 <= min_len <= max_len <= {})",
                self.min_len, self.max_len, MAX_SERIAL_LEN
            )));
        }
        Ok(())
    }

    /// Checks one serial; the message names what is wrong, never the serial's characters.
    pub fn check(&self, serial: &str) -> Result<(), String> {
        if serial.is_empty() {
            return Err("serial is empty".to_owned());
        }
        let bytes = serial.as_bytes();
        if let Some(i) = bytes.iter().position(|&b| !self.charset.allows(b)) {
            let position = serial.char_indices().take_while(|(at, _)| *at <= i).count();
            return Err(format!(
                "serial has a character other than {} at position {position}",
                self.charset.describe()
            ));
        }
        // All ASCII from here on, so bytes are characters.
        let n = bytes.len();
        if n < usize::from(self.min_len) || n > usize::from(self.max_len) {
            let wants = if self.min_len == self.max_len {
                format!("{}", self.min_len)
            } else {
                format!("{} to {}", self.min_len, self.max_len)
            };
            return Err(format!("serial has {n} characters, rule wants {wants}"));
        }
        Ok(())
    }
}

impl Default for SerialRule {
    fn default() -> Self {
        SerialRule::CNS
    }
}

/// What a file must satisfy: code policy and serial rule from configuration, and the optional
/// checks the uploader gave.
#[derive(Debug, Clone, Default)]
pub struct ParseRules {
    /// Policy for the card's PIN and PUK.
    pub policy: CodePolicy,
    /// Policy for the signature PIN/PUK pair; `None` uses [`ParseRules::policy`].
    pub signature_policy: Option<CodePolicy>,
    /// Shape of the serial.
    pub serial: SerialRule,
    /// Number of data lines (cards) the uploader announced; a different count rejects the file.
    pub expected_lines: Option<u64>,
    /// SHA-256 of the raw file the uploader announced; a different hash rejects the file.
    pub expected_sha256: Option<[u8; 32]>,
}

impl ParseRules {
    /// Checks the policies and the serial rule.
    ///
    /// # Errors
    /// [`Error::Code`] for a bad policy, [`Error::Invalid`] for a bad serial rule.
    pub fn validate(&self) -> Result<(), Error> {
        self.policy.validate()?;
        if let Some(p) = &self.signature_policy {
            p.validate()?;
        }
        self.serial.validate()
    }
}

/// One good card, borrowed from the parser for the duration of the callback.
#[derive(Debug)]
pub struct CardLine<'a> {
    /// 1-based physical line number in the file.
    pub line: u64,
    /// The serial, checked against the [`SerialRule`].
    pub serial: &'a str,
    /// The card's PIN.
    pub pin: Pin,
    /// The card's PUK.
    pub puk: Puk,
    /// The signature PIN/PUK pair, when the file carries it.
    pub signature: Option<(Pin, Puk)>,
}

/// What a good file held. `Debug` leaves out the hash (see [`ParseSummary::sha256`]).
#[derive(Clone, PartialEq, Eq)]
pub struct ParseSummary {
    /// Cards (data lines) handed to the callback.
    pub cards: u64,
    /// Physical lines, including header, comments and blank lines.
    pub lines: u64,
    /// Bytes read.
    pub bytes: u64,
    /// SHA-256 of the raw bytes, BOM and line endings included. Derived from the codes: keep
    /// it out of logs for small files (a few cards' worth can be searched from it).
    pub sha256: [u8; 32],
    /// Whether every card carries the signature pair.
    pub signature_pairs: bool,
}

impl std::fmt::Debug for ParseSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParseSummary")
            .field("cards", &self.cards)
            .field("lines", &self.lines)
            .field("bytes", &self.bytes)
            .field("sha256", &"<not shown>")
            .field("signature_pairs", &self.signature_pairs)
            .finish()
    }
}

/// The part of a line a problem is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    /// The card serial.
    Serial,
    /// The PIN.
    Pin,
    /// The PUK.
    Puk,
    /// The signature PIN.
    SigPin,
    /// The signature PUK.
    SigPuk,
    /// The line as a whole: encoding, separators, field count, length, header.
    Line,
    /// The file as a whole (no cards, line count or hash mismatch); its `line` is 0.
    File,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::Serial => "serial",
            Field::Pin => "pin",
            Field::Puk => "puk",
            Field::SigPin => "sig_pin",
            Field::SigPuk => "sig_puk",
            Field::Line => "line",
            Field::File => "file",
        })
    }
}

/// One problem: where, and what is wrong. Never carries a field's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineProblem {
    /// 1-based physical line number; 0 for a problem of the whole file.
    pub line: u64,
    /// The field at fault.
    pub field: Field,
    /// What is wrong, e.g. `puk has 7 digits, policy wants 8`.
    pub message: String,
}

impl fmt::Display for LineProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field == Field::File {
            f.write_str(&self.message)
        } else {
            write!(f, "line {}: {}", self.line, self.message)
        }
    }
}

/// Why a file was rejected: the problems of the whole file first, then the first line problems
/// up to [`MAX_REPORTED`], and the count of all of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The problems listed.
    pub problems: Vec<LineProblem>,
    /// How many problems were found in all.
    pub total: u64,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_problems(f, &self.problems, self.total)
    }
}

/// Writes a report: one problem a line, then how many more there were when not all are
/// listed. Shared by every file report (code files, registry files).
pub fn write_problems<P: fmt::Display>(
    f: &mut fmt::Formatter<'_>,
    problems: &[P],
    total: u64,
) -> fmt::Result {
    for (i, p) in problems.iter().enumerate() {
        if i > 0 {
            f.write_str("\n")?;
        }
        write!(f, "{p}")?;
    }
    let shown = problems.len() as u64;
    if total > shown {
        write!(
            f,
            "\n... and {} more ({} problems in all)",
            total - shown,
            total
        )?;
    }
    Ok(())
}

/// Why [`parse`] did not succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ParseFailure {
    /// The file is bad; the report says where.
    #[error("file rejected: {0}")]
    Rejected(Report),
    /// The reader failed.
    #[error("reading the file: {0}")]
    Io(String),
    /// The callback refused a card; parsing stopped there.
    #[error(transparent)]
    Callback(Error),
    /// The [`ParseRules`] themselves are unusable; nothing was read.
    #[error("import rules: {0}")]
    Rules(Error),
}

impl From<ParseFailure> for Error {
    fn from(f: ParseFailure) -> Self {
        match f {
            ParseFailure::Rejected(report) => Error::Invalid(format!("file rejected: {report}")),
            ParseFailure::Io(e) => Error::Storage(format!("reading the import file: {e}")),
            ParseFailure::Callback(e) | ParseFailure::Rules(e) => e,
        }
    }
}

/// Parses and validates a manufacturer file, calling `on_card` for each card while the file is
/// still without problems.
///
/// # Errors
/// - [`ParseFailure::Rejected`] when any line or the whole file is bad (including a line count
///   or SHA-256 different from those in `rules`);
/// - [`ParseFailure::Io`] when the reader fails;
/// - [`ParseFailure::Callback`] with the first error `on_card` returns (parsing stops);
/// - [`ParseFailure::Rules`] when `rules` do not validate.
///
/// # Security
/// `on_card` may be called for cards of a file that is rejected later; treat every card as
/// staged until this returns `Ok`. Messages never contain a field's content.
pub fn parse<R: BufRead>(
    reader: R,
    rules: &ParseRules,
    mut on_card: impl FnMut(CardLine<'_>) -> Result<(), Error>,
) -> Result<ParseSummary, ParseFailure> {
    rules.validate().map_err(ParseFailure::Rules)?;
    let mut state = State::new(rules);
    let mut hasher = Context::new(&SHA256);
    let mut bytes: u64 = 0;
    let end = read_lines(
        reader,
        MAX_LINE_BYTES,
        |chunk| {
            hasher.update(chunk);
            bytes += chunk.len() as u64;
        },
        |line| {
            let done = match line {
                Line::Text { number, bytes } => state.line(number, bytes, &mut on_card),
                Line::TooLong { number } => {
                    state.overlong_line(number);
                    Ok(())
                }
            };
            match done {
                Ok(()) => ControlFlow::Continue(()),
                Err(e) => ControlFlow::Break(e),
            }
        },
    )
    .map_err(|e| ParseFailure::Io(e.to_string()))?;
    if let Some(e) = end.stopped {
        return Err(e);
    }

    let mut sha256 = [0u8; 32];
    sha256.copy_from_slice(hasher.finish().as_ref());
    state.finish(rules, bytes, sha256)
}

/// The fields of a line, in order.
const FIELDS: [Field; 5] = [
    Field::Serial,
    Field::Pin,
    Field::Puk,
    Field::SigPin,
    Field::SigPuk,
];

/// Which separators a line holds.
#[derive(Clone, Copy, Default)]
struct Separators {
    semi: bool,
    comma: bool,
}

/// A card line's fields after their checks (`None`: the field was refused).
struct CardFields<'t> {
    serial: &'t str,
    pin: Option<Pin>,
    puk: Option<Puk>,
    signature: Option<(Option<Pin>, Option<Puk>)>,
}

/// Splits a line into at most 5 fields, counting any beyond.
fn split_fields(text: &str, sep: char) -> ([&str; 5], usize) {
    let mut fields = [""; 5];
    let mut count = 0usize;
    for f in text.split(sep) {
        if count < fields.len() {
            fields[count] = f;
        }
        count += 1;
    }
    (fields, count)
}

/// Parser state across lines.
struct State<'r> {
    rules: &'r ParseRules,
    sig_policy: &'r CodePolicy,
    line_no: u64,
    /// Seen a header or a data line (the header may only come before).
    seen_structured: bool,
    /// The file's separator and the line that fixed it.
    sep: Option<(u8, u64)>,
    /// Whether lines carry the signature pair, and the line that fixed it.
    sig: Option<(bool, u64)>,
    data_lines: u64,
    cards: u64,
    /// Still handing cards to the callback (no problem so far, count not exceeded).
    deliver: bool,
    problems: Vec<LineProblem>,
    total: u64,
}

impl<'r> State<'r> {
    fn new(rules: &'r ParseRules) -> Self {
        State {
            rules,
            sig_policy: rules.signature_policy.as_ref().unwrap_or(&rules.policy),
            line_no: 0,
            seen_structured: false,
            sep: None,
            sig: None,
            data_lines: 0,
            cards: 0,
            deliver: true,
            problems: Vec::new(),
            total: 0,
        }
    }

    /// Records a problem; the message is built only while the report has room.
    fn problem(&mut self, field: Field, message: impl FnOnce() -> String) {
        self.deliver = false;
        self.total += 1;
        if self.problems.len() < MAX_REPORTED {
            self.problems.push(LineProblem {
                line: self.line_no,
                field,
                message: message(),
            });
        }
    }

    fn overlong_line(&mut self, number: u64) {
        self.line_no = number;
        self.data_lines += 1;
        self.problem(Field::Line, || {
            format!("longer than {MAX_LINE_BYTES} bytes")
        });
    }

    /// Physical line `number`, without its line ending (and BOM): comment, blank, header or
    /// card. Each step below records its own problems and says whether the line goes on.
    fn line(
        &mut self,
        number: u64,
        raw: &[u8],
        on_card: &mut impl FnMut(CardLine<'_>) -> Result<(), Error>,
    ) -> Result<(), ParseFailure> {
        self.line_no = number;
        if raw.is_empty() || raw[0] == b'#' {
            return Ok(());
        }
        // A data line unless it turns out to be the header; bad lines count too, as they would
        // in the manufacturer's count.
        self.data_lines += 1;
        let Some((text, seps)) = self.text(raw) else {
            return Ok(());
        };
        let Some(sep) = self.separator(seps) else {
            return Ok(());
        };
        let (fields, count) = split_fields(text, sep);
        // Header: the first structured line, when its first field is `serial`.
        if fields[0].eq_ignore_ascii_case("serial") {
            self.data_lines -= 1;
            self.header_line(&fields, count);
            return Ok(());
        }
        self.seen_structured = true;
        let Some(with_sig) = self.field_count(count, sep) else {
            return Ok(());
        };
        if self.padded(&fields, count) {
            return Ok(());
        }
        let card = self.card_fields(&fields, with_sig);
        self.deliver(card, on_card)
    }

    /// The line as text: no NUL byte, UTF-8, not only whitespace. Also which separators it
    /// holds (one pass with the NUL check).
    fn text<'a>(&mut self, raw: &'a [u8]) -> Option<(&'a str, Separators)> {
        let (mut nul, mut seps) = (false, Separators::default());
        for &b in raw {
            match b {
                0 => nul = true,
                b';' => seps.semi = true,
                b',' => seps.comma = true,
                _ => {}
            }
        }
        if nul {
            self.problem(Field::Line, || "binary data (NUL byte)".to_owned());
            return None;
        }
        let Ok(text) = std::str::from_utf8(raw) else {
            self.problem(Field::Line, || "not UTF-8 text".to_owned());
            return None;
        };
        if text.bytes().all(|b| b == b' ' || b == b'\t') {
            self.problem(Field::Line, || {
                "only whitespace (blank lines must be empty)".to_owned()
            });
            return None;
        }
        Some((text, seps))
    }

    /// The separator to split on: one per file, fixed by the first header or data line that
    /// has one; `;` until then.
    fn separator(&mut self, seps: Separators) -> Option<char> {
        let sep = match (seps.semi, seps.comma) {
            (true, true) => {
                self.problem(Field::Line, || "mixes ';' and ',' separators".to_owned());
                return None;
            }
            (true, false) => Some(b';'),
            (false, true) => Some(b','),
            (false, false) => None,
        };
        match (sep, self.sep) {
            (Some(s), Some((file_sep, at))) if s != file_sep => {
                self.problem(Field::Line, || {
                    format!(
                        "separator '{}' but the file uses '{}' (from line {at})",
                        char::from(s),
                        char::from(file_sep)
                    )
                });
                return None;
            }
            (Some(s), None) => self.sep = Some((s, self.line_no)),
            _ => {}
        }
        Some(char::from(self.sep.map_or(b';', |(s, _)| s)))
    }

    /// A header line: allowed only before the first card, then checked.
    fn header_line(&mut self, fields: &[&str; 5], count: usize) {
        if self.seen_structured {
            self.problem(Field::Line, || {
                "a header is allowed only before the first card".to_owned()
            });
        } else {
            self.seen_structured = true;
            self.header(fields, count);
        }
    }

    /// 3 fields, or 5 with the signature pair, the same on every line of the file. Returns
    /// whether this line carries the signature pair.
    fn field_count(&mut self, count: usize, sep: char) -> Option<bool> {
        let with_sig = match count {
            3 => false,
            5 => true,
            _ => {
                let plural = if count == 1 { "field" } else { "fields" };
                self.problem(Field::Line, || {
                    format!("{count} {plural}, expected 3 (serial{sep}pin{sep}puk) or 5")
                });
                return None;
            }
        };
        match self.sig {
            Some((file_sig, at)) if file_sig != with_sig => {
                self.problem(Field::Line, || {
                    if file_sig {
                        format!(
                            "3 fields, but the file's lines carry the signature pair \
                             (5 fields, from line {at})"
                        )
                    } else {
                        format!(
                            "5 fields, but the file's lines carry no signature pair \
                             (3 fields, from line {at})"
                        )
                    }
                });
                return None;
            }
            Some(_) => {}
            None => self.sig = Some((with_sig, self.line_no)),
        }
        Some(with_sig)
    }

    /// Records a problem for every field with whitespace around it (fields are strict, no
    /// padding); true if there was one.
    fn padded(&mut self, fields: &[&str; 5], count: usize) -> bool {
        let mut padded = false;
        for (f, name) in fields.iter().zip(FIELDS).take(count) {
            if f.starts_with(|c: char| c.is_ascii_whitespace())
                || f.ends_with(|c: char| c.is_ascii_whitespace())
            {
                padded = true;
                self.problem(name, || {
                    format!("{name} has whitespace around it (fields must not be padded)")
                });
            }
        }
        padded
    }

    /// Every field of a card line checked, in order, each recording its own problem.
    fn card_fields<'t>(&mut self, fields: &[&'t str; 5], with_sig: bool) -> CardFields<'t> {
        let rules = self.rules;
        let sig_policy = self.sig_policy;
        self.serial(fields[0]);
        CardFields {
            serial: fields[0],
            pin: self.pin(Field::Pin, fields[1], &rules.policy),
            puk: self.puk(Field::Puk, fields[2], &rules.policy),
            signature: with_sig.then(|| {
                (
                    self.pin(Field::SigPin, fields[3], sig_policy),
                    self.puk(Field::SigPuk, fields[4], sig_policy),
                )
            }),
        }
    }

    /// The serial, against the [`SerialRule`].
    fn serial(&mut self, serial: &str) {
        if let Err(message) = self.rules.serial.check(serial) {
            self.problem(Field::Serial, || message);
        }
    }

    /// A PIN field (`pin` or `sig_pin`) against `policy`.
    fn pin(&mut self, field: Field, text: &str, policy: &CodePolicy) -> Option<Pin> {
        self.code(field, Pin::parse(text, policy))
    }

    /// A PUK field (`puk` or `sig_puk`) against `policy`.
    fn puk(&mut self, field: Field, text: &str, policy: &CodePolicy) -> Option<Puk> {
        self.code(field, Puk::parse(text, policy))
    }

    /// Hands a good card to the callback while the file is still without problems and within
    /// the announced line count.
    fn deliver(
        &mut self,
        card: CardFields<'_>,
        on_card: &mut impl FnMut(CardLine<'_>) -> Result<(), Error>,
    ) -> Result<(), ParseFailure> {
        if self
            .rules
            .expected_lines
            .is_some_and(|e| self.data_lines > e)
        {
            // More lines than announced: reported at the end with the full count, and no more
            // cards for the callback.
            self.deliver = false;
        }
        if !self.deliver {
            return Ok(());
        }
        let signature = match card.signature {
            None => None,
            Some((Some(sp), Some(sk))) => Some((sp, sk)),
            // A bad signature code was recorded as a problem, which cleared `deliver`.
            Some(_) => return Ok(()),
        };
        let (Some(pin), Some(puk)) = (card.pin, card.puk) else {
            return Ok(());
        };
        on_card(CardLine {
            line: self.line_no,
            serial: card.serial,
            pin,
            puk,
            signature,
        })
        .map_err(ParseFailure::Callback)?;
        self.cards += 1;
        Ok(())
    }

    /// Records a code problem under `field`; `CodeError`'s message is reused, renamed for the
    /// signature pair (`sig_pin has 4 digits, policy wants 5`).
    fn code<T>(&mut self, field: Field, parsed: Result<T, CodeError>) -> Option<T> {
        match parsed {
            Ok(code) => Some(code),
            Err(e) => {
                self.problem(field, || {
                    let msg = e.to_string();
                    match field {
                        Field::SigPin | Field::SigPuk => format!("sig_{msg}"),
                        _ => msg,
                    }
                });
                None
            }
        }
    }

    fn header(&mut self, fields: &[&str; 5], count: usize) {
        const NAMES: [&str; 5] = ["serial", "pin", "puk", "sig_pin", "sig_puk"];
        let ok = (count == 3 || count == 5)
            && fields
                .iter()
                .zip(NAMES)
                .take(count)
                .all(|(f, name)| f.eq_ignore_ascii_case(name));
        if ok {
            self.sig = Some((count == 5, self.line_no));
        } else {
            let s = char::from(self.sep.map_or(b';', |(s, _)| s));
            self.problem(Field::Line, || {
                format!(
                    "header must be serial{s}pin{s}puk or serial{s}pin{s}puk{s}sig_pin{s}sig_puk"
                )
            });
        }
    }

    fn finish(
        mut self,
        rules: &ParseRules,
        bytes: u64,
        sha256: [u8; 32],
    ) -> Result<ParseSummary, ParseFailure> {
        // Problems of the whole file go first and are never dropped by the cap.
        let mut file = Vec::new();
        if self.data_lines == 0 {
            file.push("the file holds no cards".to_owned());
        }
        if let Some(expected) = rules.expected_lines {
            if expected != self.data_lines {
                file.push(format!(
                    "the file has {} data lines, the upload announced {expected}",
                    self.data_lines
                ));
            }
        }
        if let Some(expected) = rules.expected_sha256 {
            if expected != sha256 {
                // The computed hash is not shown: for a small file it would let someone who
                // reads the log search the few codes the file can hold.
                file.push(format!(
                    "the file's sha-256 differs from the one the upload announced ({})",
                    hex::encode(expected)
                ));
            }
        }
        if !file.is_empty() {
            self.total += file.len() as u64;
            let mut problems: Vec<LineProblem> = file
                .into_iter()
                .map(|message| LineProblem {
                    line: 0,
                    field: Field::File,
                    message,
                })
                .collect();
            problems.append(&mut self.problems);
            self.problems = problems;
        }
        if self.total > 0 {
            return Err(ParseFailure::Rejected(Report {
                problems: self.problems,
                total: self.total,
            }));
        }
        Ok(ParseSummary {
            cards: self.cards,
            lines: self.line_no,
            bytes,
            sha256,
            signature_pairs: self.sig.is_some_and(|(s, _)| s),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::LengthBounds;
    use std::io::BufReader;

    fn serial(i: u64) -> String {
        format!("80380{i:015}")
    }

    /// Parses with default rules and a small buffer, so lines straddle buffer fills.
    fn run_with(
        data: &[u8],
        rules: &ParseRules,
        capacity: usize,
    ) -> Result<(ParseSummary, Vec<u64>), ParseFailure> {
        let mut seen = Vec::new();
        let summary = parse(
            BufReader::with_capacity(capacity, data),
            rules,
            |card: CardLine<'_>| {
                seen.push(card.line);
                Ok(())
            },
        )?;
        Ok((summary, seen))
    }

    fn run(data: &[u8]) -> Result<(ParseSummary, Vec<u64>), ParseFailure> {
        run_with(data, &ParseRules::default(), 64)
    }

    fn report(data: &[u8]) -> Report {
        match run(data) {
            Err(ParseFailure::Rejected(r)) => r,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    fn lines(r: &Report) -> Vec<String> {
        r.problems.iter().map(ToString::to_string).collect()
    }

    fn one(data: &[u8]) -> String {
        let r = report(data);
        assert_eq!(r.total, 1, "{r}");
        r.problems[0].to_string()
    }

    fn sha(data: &[u8]) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(aws_lc_rs::digest::digest(&SHA256, data).as_ref());
        out
    }

    #[test]
    fn good_file_gives_cards_and_summary() {
        let data = format!(
            "{};12345;12345678\n{};54321;87654321\n",
            serial(1),
            serial(2)
        );
        let mut cards = Vec::new();
        let summary = parse(
            data.as_bytes(),
            &ParseRules::default(),
            |c: CardLine<'_>| {
                cards.push((
                    c.line,
                    c.serial.to_owned(),
                    c.pin.expose_secret().to_vec(),
                    c.puk.expose_secret().to_vec(),
                    c.signature.is_some(),
                ));
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(
            summary,
            ParseSummary {
                cards: 2,
                lines: 2,
                bytes: data.len() as u64,
                sha256: sha(data.as_bytes()),
                signature_pairs: false,
            }
        );
        assert_eq!(
            cards,
            vec![
                (1, serial(1), b"12345".to_vec(), b"12345678".to_vec(), false),
                (2, serial(2), b"54321".to_vec(), b"87654321".to_vec(), false),
            ]
        );
    }

    #[test]
    fn comma_separator() {
        let data = format!(
            "{},12345,12345678\n{},12345,12345678\n",
            serial(1),
            serial(2)
        );
        let (s, seen) = run(data.as_bytes()).unwrap();
        assert_eq!((s.cards, seen), (2, vec![1, 2]));
    }

    #[test]
    fn header_comments_and_blank_lines() {
        let data = format!(
            "# batch 7 from the manufacturer\n\nSerial;PIN;Puk\n# a comment\n{};12345;12345678\n\n{};12345;12345678\n#end",
            serial(1),
            serial(2)
        );
        let (s, seen) = run(data.as_bytes()).unwrap();
        assert_eq!(seen, vec![5, 7]);
        assert_eq!((s.cards, s.lines), (2, 8));
    }

    #[test]
    fn signature_pairs() {
        let data = format!(
            "serial,pin,puk,sig_pin,sig_puk\n{},12345,12345678,11111,22222222\n",
            serial(1)
        );
        let mut sig = Vec::new();
        let s = parse(
            data.as_bytes(),
            &ParseRules::default(),
            |c: CardLine<'_>| {
                let (p, k) = c.signature.as_ref().unwrap();
                sig.push((p.expose_secret().to_vec(), k.expose_secret().to_vec()));
                Ok(())
            },
        )
        .unwrap();
        assert!(s.signature_pairs);
        assert_eq!(sig, vec![(b"11111".to_vec(), b"22222222".to_vec())]);

        // A separate policy for the signature pair.
        let rules = ParseRules {
            signature_policy: Some(CodePolicy::CIE),
            ..ParseRules::default()
        };
        let data = format!("{};12345;12345678;12345678;12345678\n", serial(1));
        assert!(run_with(data.as_bytes(), &rules, 64).is_ok());
        assert_eq!(
            one(data.as_bytes()),
            "line 1: sig_pin has 8 digits, policy wants 5"
        );
    }

    #[test]
    fn crlf_line_endings() {
        let data = format!(
            "serial;pin;puk\r\n{};12345;12345678\r\n{};12345;12345678\r\n",
            serial(1),
            serial(2)
        );
        let (s, seen) = run(data.as_bytes()).unwrap();
        assert_eq!((s.cards, seen), (2, vec![2, 3]));
    }

    #[test]
    fn bom_at_start() {
        let data = format!("\u{FEFF}{};12345;12345678\n", serial(1));
        let (s, _) = run(data.as_bytes()).unwrap();
        assert_eq!(s.cards, 1);
        assert_eq!(
            s.sha256,
            sha(data.as_bytes()),
            "the hash covers the BOM too"
        );
        // Before a header as well.
        let data = format!("\u{FEFF}serial;pin;puk\n{};12345;12345678\n", serial(1));
        assert_eq!(run(data.as_bytes()).unwrap().0.cards, 1);
        // Only at the start of the file.
        let data = format!(
            "{};12345;12345678\n\u{FEFF}{};12345;12345678\n",
            serial(1),
            serial(2)
        );
        assert_eq!(
            one(data.as_bytes()),
            "line 2: serial has a character other than digits at position 1"
        );
    }

    #[test]
    fn any_buffer_size_gives_the_same_result() {
        let data = format!(
            "\u{FEFF}# c\r\nserial;pin;puk\r\n{};12345;12345678\r\n\r\n{};54321;87654321",
            serial(1),
            serial(2)
        );
        let want = run_with(data.as_bytes(), &ParseRules::default(), 8192).unwrap();
        for cap in 1..=40 {
            let got = run_with(data.as_bytes(), &ParseRules::default(), cap).unwrap();
            assert_eq!(got, want, "capacity {cap}");
        }
    }

    #[test]
    fn non_digit_pin() {
        let data = format!("{};12a45;12345678\n", serial(1));
        assert_eq!(
            one(data.as_bytes()),
            "line 1: pin has a non-digit character at position 3"
        );
        assert_eq!(report(data.as_bytes()).problems[0].field, Field::Pin);
    }

    #[test]
    fn short_puk() {
        let data = format!(
            "{};12345;12345678\n{};12345;1234567\n",
            serial(1),
            serial(2)
        );
        let r = report(data.as_bytes());
        assert_eq!(lines(&r), vec!["line 2: puk has 7 digits, policy wants 8"]);
        assert_eq!(r.problems[0].field, Field::Puk);
    }

    #[test]
    fn long_pin() {
        let data = format!("{};123456;12345678\n", serial(1));
        assert_eq!(
            one(data.as_bytes()),
            "line 1: pin has 6 digits, policy wants 5"
        );
    }

    #[test]
    fn bad_serial_characters() {
        assert_eq!(
            one(b"8038000000000000A001;12345;12345678\n"),
            "line 1: serial has a character other than digits at position 17"
        );
        let rules = ParseRules {
            serial: SerialRule {
                min_len: 8,
                max_len: 12,
                charset: SerialCharset::UpperAlnum,
            },
            ..ParseRules::default()
        };
        assert!(run_with(b"AB12CD34;12345;12345678\n", &rules, 64).is_ok());
        match run_with(b"ab12cd34;12345;12345678\n", &rules, 64) {
            Err(ParseFailure::Rejected(r)) => assert_eq!(
                lines(&r),
                vec!["line 1: serial has a character other than A-Z and 0-9 at position 1"]
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn serial_too_long_short_or_empty() {
        let long = format!("{}1", serial(1));
        assert_eq!(
            one(format!("{long};12345;12345678\n").as_bytes()),
            "line 1: serial has 21 characters, rule wants 16 to 20"
        );
        assert_eq!(
            one(b"123456789012345;12345;12345678\n"),
            "line 1: serial has 15 characters, rule wants 16 to 20"
        );
        let r = report(b";12345;12345678\n");
        assert_eq!(lines(&r), vec!["line 1: serial is empty"]);
        assert_eq!(r.problems[0].field, Field::Serial);
    }

    #[test]
    fn wrong_field_count() {
        let s = serial(1);
        assert_eq!(
            one(format!("{s};12345\n").as_bytes()),
            "line 1: 2 fields, expected 3 (serial;pin;puk) or 5"
        );
        assert_eq!(
            one(format!("{s}\n").as_bytes()),
            "line 1: 1 field, expected 3 (serial;pin;puk) or 5"
        );
        assert_eq!(
            one(format!("{s},12345,12345678,1\n").as_bytes()),
            "line 1: 4 fields, expected 3 (serial,pin,puk) or 5"
        );
        assert_eq!(
            one(format!("{s};1;2;3;4;5\n").as_bytes()),
            "line 1: 6 fields, expected 3 (serial;pin;puk) or 5"
        );
        assert_eq!(
            report(format!("{s};1\n").as_bytes()).problems[0].field,
            Field::Line
        );
    }

    #[test]
    fn mixed_separators() {
        let (a, b) = (serial(1), serial(2));
        assert_eq!(
            one(format!("{a};12345,12345678\n").as_bytes()),
            "line 1: mixes ';' and ',' separators"
        );
        assert_eq!(
            one(format!("{a};12345;12345678\n# x\n{b},12345,12345678\n").as_bytes()),
            "line 3: separator ',' but the file uses ';' (from line 1)"
        );
        // The header fixes the separator too.
        assert_eq!(
            one(format!("serial,pin,puk\n{a};12345;12345678\n").as_bytes()),
            "line 2: separator ';' but the file uses ',' (from line 1)"
        );
    }

    #[test]
    fn signature_pair_on_some_lines_only() {
        let (a, b) = (serial(1), serial(2));
        assert_eq!(
            one(format!("{a};12345;12345678\n{b};12345;12345678;12345;12345678\n").as_bytes()),
            "line 2: 5 fields, but the file's lines carry no signature pair (3 fields, from line 1)"
        );
        assert_eq!(
            one(format!("{a};12345;12345678;12345;12345678\n{b};12345;12345678\n").as_bytes()),
            "line 2: 3 fields, but the file's lines carry the signature pair (5 fields, from line 1)"
        );
        // The header decides.
        assert_eq!(
            one(format!("serial;pin;puk\n{a};12345;12345678;12345;12345678\n").as_bytes()),
            "line 2: 5 fields, but the file's lines carry no signature pair (3 fields, from line 1)"
        );
    }

    #[test]
    fn whitespace_around_fields_is_refused() {
        let s = serial(1);
        assert_eq!(
            one(format!("{s}; 12345;12345678\n").as_bytes()),
            "line 1: pin has whitespace around it (fields must not be padded)"
        );
        assert_eq!(
            one(format!("{s};12345;12345678\t\n").as_bytes()),
            "line 1: puk has whitespace around it (fields must not be padded)"
        );
        assert_eq!(
            one(format!(" {s};12345;12345678\n").as_bytes()),
            "line 1: serial has whitespace around it (fields must not be padded)"
        );
        assert_eq!(
            one(format!("{s};12345;12345678\n  \n").as_bytes()),
            "line 2: only whitespace (blank lines must be empty)"
        );
    }

    #[test]
    fn empty_file_or_no_cards() {
        for data in [
            &b""[..],
            b"\n\n",
            b"\xEF\xBB\xBF",
            b"# only a comment\n",
            b"serial;pin;puk\n",
        ] {
            let r = report(data);
            assert_eq!(lines(&r), vec!["the file holds no cards"], "{data:?}");
            assert_eq!(r.problems[0].field, Field::File);
        }
    }

    #[test]
    fn binary_content() {
        let data = format!("{};12345;12345678\n\0\0\x01\x02;\0\n", serial(1));
        assert_eq!(one(data.as_bytes()), "line 2: binary data (NUL byte)");
        // A binary blob with no newline at all is one overlong line.
        let blob = vec![0u8; 10_000];
        assert_eq!(
            lines(&report(&blob)),
            vec!["line 1: longer than 1024 bytes"]
        );
    }

    #[test]
    fn not_utf8() {
        let mut data = format!("{};12345;12345678\n", serial(1)).into_bytes();
        data.extend_from_slice(b"8038\xFF000000000000001;12345;12345678\n");
        assert_eq!(one(&data), "line 2: not UTF-8 text");
    }

    #[test]
    fn truncated_last_line() {
        let (a, b) = (serial(1), serial(2));
        assert_eq!(
            one(format!("{a};12345;12345678\n{b};123").as_bytes()),
            "line 2: 2 fields, expected 3 (serial;pin;puk) or 5"
        );
        assert_eq!(
            one(format!("{a};12345;12345678\n{b};12345;1234").as_bytes()),
            "line 2: puk has 4 digits, policy wants 8"
        );
        assert_eq!(
            one(format!("{a};12345;12345678\n{b};12345;").as_bytes()),
            "line 2: puk has 0 digits, policy wants 8"
        );
    }

    #[test]
    fn overlong_line_is_refused_without_holding_it() {
        let mut data = format!("{};12345;12345678\n", serial(1)).into_bytes();
        data.extend(std::iter::repeat_n(b'1', 5000));
        data.extend_from_slice(format!("\n{};12345;12345678\n", serial(2)).as_bytes());
        for cap in [16, 64, 8192] {
            match run_with(&data, &ParseRules::default(), cap) {
                Err(ParseFailure::Rejected(r)) => {
                    assert_eq!(lines(&r), vec!["line 2: longer than 1024 bytes"])
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn headers_are_checked() {
        let a = serial(1);
        assert_eq!(
            one(format!("serial;pin;pukk\n{a};12345;12345678\n").as_bytes()),
            "line 1: header must be serial;pin;puk or serial;pin;puk;sig_pin;sig_puk"
        );
        assert_eq!(
            one(format!("{a};12345;12345678\nserial;pin;puk\n").as_bytes()),
            "line 2: a header is allowed only before the first card"
        );
    }

    #[test]
    fn several_problems_on_one_line_are_all_reported() {
        let r = report(b"12;1234;123\n");
        assert_eq!(
            lines(&r),
            vec![
                "line 1: serial has 2 characters, rule wants 16 to 20",
                "line 1: pin has 4 digits, policy wants 5",
                "line 1: puk has 3 digits, policy wants 8",
            ]
        );
        assert_eq!(
            r.problems.iter().map(|p| p.field).collect::<Vec<_>>(),
            vec![Field::Serial, Field::Pin, Field::Puk]
        );
    }

    #[test]
    fn report_is_capped_at_100_with_the_right_total() {
        let mut data = String::new();
        for i in 0..250 {
            data.push_str(&format!("{};1234;12345678\n", serial(i)));
        }
        let r = report(data.as_bytes());
        assert_eq!(r.problems.len(), MAX_REPORTED);
        assert_eq!(r.total, 250);
        assert_eq!(r.problems[99].line, 100);
        let text = r.to_string();
        assert!(text.starts_with("line 1: pin has 4 digits, policy wants 5\nline 2: "));
        assert!(
            text.ends_with("\n... and 150 more (250 problems in all)"),
            "{text}"
        );
    }

    #[test]
    fn expected_line_count_and_hash() {
        let data = format!(
            "{};12345;12345678\n{};12345;12345678\n",
            serial(1),
            serial(2)
        );
        let good = ParseRules {
            expected_lines: Some(2),
            expected_sha256: Some(sha(data.as_bytes())),
            ..ParseRules::default()
        };
        assert_eq!(run_with(data.as_bytes(), &good, 64).unwrap().0.cards, 2);

        let bad = ParseRules {
            expected_lines: Some(3),
            expected_sha256: Some([0xAB; 32]),
            ..ParseRules::default()
        };
        match run_with(data.as_bytes(), &bad, 64) {
            Err(ParseFailure::Rejected(r)) => {
                assert_eq!(r.total, 2);
                assert_eq!(
                    lines(&r),
                    vec![
                        "the file has 2 data lines, the upload announced 3".to_owned(),
                        format!(
                            "the file's sha-256 differs from the one the upload announced ({})",
                            "ab".repeat(32)
                        ),
                    ]
                );
            }
            other => panic!("{other:?}"),
        }

        // More lines than announced: the surplus never reaches the callback.
        let fewer = ParseRules {
            expected_lines: Some(1),
            ..ParseRules::default()
        };
        match run_with(data.as_bytes(), &fewer, 64) {
            Err(ParseFailure::Rejected(r)) => assert_eq!(
                lines(&r),
                vec!["the file has 2 data lines, the upload announced 1"]
            ),
            other => panic!("{other:?}"),
        }
        let mut calls = 0;
        let _ = parse(data.as_bytes(), &fewer, |_| {
            calls += 1;
            Ok(())
        });
        assert_eq!(calls, 1);
    }

    #[test]
    fn callback_stops_after_the_first_problem_and_its_error_stops_parsing() {
        let data = format!(
            "{};12345;12345678\n{};1234;12345678\n{};12345;12345678\n",
            serial(1),
            serial(2),
            serial(3)
        );
        let mut seen = Vec::new();
        let r = parse(
            data.as_bytes(),
            &ParseRules::default(),
            |c: CardLine<'_>| {
                seen.push(c.line);
                Ok(())
            },
        );
        assert!(matches!(r, Err(ParseFailure::Rejected(_))));
        assert_eq!(seen, vec![1]);

        let mut calls = 0;
        let r = parse(data.as_bytes(), &ParseRules::default(), |_| {
            calls += 1;
            Err(Error::Storage("disk full".into()))
        });
        assert!(matches!(r, Err(ParseFailure::Callback(Error::Storage(_)))));
        assert_eq!(calls, 1);
    }

    #[test]
    fn io_errors_are_reported() {
        struct Broken;
        impl std::io::Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("connection reset"))
            }
        }
        let r = parse(BufReader::new(Broken), &ParseRules::default(), |_| Ok(()));
        match r {
            Err(ParseFailure::Io(m)) => assert!(m.contains("connection reset")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn no_message_contains_a_code() {
        // Distinctive digits in every code position, in every kind of bad line.
        let s = serial(1);
        let data = format!(
            "{s};97531;8642086\n\
             {s};9753197;86420864\n\
             {s};97a31;86420x64\n\
             {s};97531\n\
             {s};97531;86420864;1\n\
             {s};97531,86420864\n\
             {s}; 97531;86420864 \n\
             {s};97531;86420864;975;864\n\
             97531;{s};86420864\n\
             9753186420864;97531;86420864\n\
             {s};97531;86420864\0\n\
             {s};97531;86420864\n\
             {s};97531;86420864;97531;86420864\n\
             serial;pin;puk\n\
             {s};{}\n\
             {s};97531;864208",
            "97531".repeat(300)
        );
        let mut bytes = data.into_bytes();
        bytes.extend_from_slice(b"\n8038\xFF;97531;86420864\n");
        let failure = run(&bytes).unwrap_err();
        let ParseFailure::Rejected(r) = &failure else {
            panic!("{failure:?}")
        };
        assert!(r.total >= 15, "{r}");
        let everything = format!(
            "{failure}\n{failure:?}\n{}\n{}",
            serde_json::to_string(r).unwrap(),
            Error::from(failure_clone(r))
        );
        for needle in ["9753", "7531", "8642", "6420", "4208"] {
            assert!(
                !everything.contains(needle),
                "{needle} leaked: {everything}"
            );
        }
    }

    fn failure_clone(r: &Report) -> ParseFailure {
        ParseFailure::Rejected(r.clone())
    }

    #[test]
    fn rules_are_validated() {
        assert!(SerialRule::default().validate().is_ok());
        for (min_len, max_len) in [(0, 20), (21, 20), (16, 65)] {
            let rule = SerialRule {
                min_len,
                max_len,
                ..SerialRule::default()
            };
            assert!(rule.validate().is_err(), "{min_len}..{max_len}");
            let rules = ParseRules {
                serial: rule,
                ..ParseRules::default()
            };
            assert!(matches!(
                run_with(b"", &rules, 64),
                Err(ParseFailure::Rules(Error::Invalid(_)))
            ));
        }
        let rules = ParseRules {
            signature_policy: Some(CodePolicy {
                pin: LengthBounds { min: 0, max: 5 },
                ..CodePolicy::CNS
            }),
            ..ParseRules::default()
        };
        assert!(matches!(
            run_with(b"", &rules, 64),
            Err(ParseFailure::Rules(Error::Code(_)))
        ));
    }

    #[test]
    fn serial_rule_from_config() {
        let rule: SerialRule = serde_json::from_str("{}").unwrap();
        assert_eq!(rule, SerialRule::CNS);
        let rule: SerialRule =
            serde_json::from_str(r#"{"min_len": 10, "max_len": 12, "charset": "upper_alnum"}"#)
                .unwrap();
        assert_eq!(rule.charset, SerialCharset::UpperAlnum);
        assert!(serde_json::from_str::<SerialRule>(r#"{"pattern": "x"}"#).is_err());
    }

    #[test]
    fn a_large_generated_file_parses() {
        let n = 200_000u64;
        let mut data = Vec::with_capacity(40 * n as usize);
        data.extend_from_slice(b"serial;pin;puk\r\n");
        for i in 0..n {
            data.extend_from_slice(
                format!("{};{:05};{:08}\r\n", serial(i), i % 100_000, i * 7).as_bytes(),
            );
        }
        let rules = ParseRules {
            expected_lines: Some(n),
            expected_sha256: Some(sha(&data)),
            ..ParseRules::default()
        };
        let mut count = 0u64;
        let s = parse(BufReader::new(&data[..]), &rules, |c: CardLine<'_>| {
            count += 1;
            assert_eq!(c.pin.len() + c.puk.len(), 13);
            Ok(())
        })
        .unwrap();
        assert_eq!((s.cards, s.lines, count), (n, n + 1, n));
        assert_eq!(s.bytes, data.len() as u64);
    }
}
