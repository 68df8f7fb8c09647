//! Streaming parser and validator of holder registry files (format: `docs/formats.md`,
//! "Holder registry files").
//!
//! A registry file lists holders (by codice fiscale) and their cards. Two formats, told apart
//! by the first non-blank character of the file:
//!
//! - `{` → **JSON lines**: one holder per line, an object with its cards in an array;
//! - anything else → **CSV** with a mandatory header line: one card per line, the holder's
//!   personal fields repeated on each of their lines (they must agree), a line with an empty
//!   serial for a holder without cards.
//!
//! [`parse_registry`] reads a [`BufRead`] once, line by line, like the manufacturer-file parser
//! ([`vault::parse_code_file`]), through the vault's one bounded, zeroizing line reader
//! ([`vault::read_lines`], capped here at [`MAX_LINE_BYTES`]). Unlike that parser it keeps its output in memory, because the cards of
//! one holder may be spread over the file: holders are merged by normalised codice fiscale.
//! Registry files are far smaller than code files; to bound memory a file may have at most
//! [`MAX_REGISTRY_LINES`] lines, and a longer one is refused with one problem, without being
//! read to the end.
//!
//! The work is split in two so that it runs on every core: each line is checked on its own —
//! encoding, quoting, every field — a few thousand lines at a time in parallel; then what
//! depends on the lines before it (a serial seen before, a holder's lines merged and compared,
//! the problems recorded in line order) is done line by line. The outcome does not depend on
//! how the lines were batched.
//!
//! Every line is checked, whatever came before: a rejected file gets a [`RegistryReport`] with
//! the problems of the whole file first, then the first [`MAX_REPORTED`] line problems, and the
//! count of all of them. A file is accepted only whole.
//!
//! Field rules: the codice fiscale by [`codice_fiscale::normalise`], e-mail and mobile by
//! [`contact`](crate::contact), dates by [`Date::parse`], serials by the configured
//! [`SerialRule`], names and address by [`normalise_name`] and [`normalise_address`]. A birth
//! date must lie between [`MIN_BIRTH_DATE`] and [`RegistryRules::today`]. A serial may appear
//! once in the file; the `replaced_by` serial of a card differs from its own serial but may be
//! the serial of another card in the file (the replacement).
//!
//! What it does not do: compare the file with the registry already stored (changes, deceased
//! holders, replacements are the import's business), storage, encryption.
//!
//! # Security
//! Registry files hold personal data. A problem names the line and the field and says what is
//! wrong (a count, a position, another line number). It never contains a field's value — not
//! the codice fiscale, a name, a contact, a date, and not the serial either (a file with its
//! columns swapped would put a name where the serial belongs) — nor the raw line, nor an
//! unknown JSON key or CSV column name. [`HolderEntry`]'s `Debug` leaves the personal fields
//! out.

use crate::codice_fiscale;
use crate::contact::{normalise_email, normalise_mobile};
use crate::date::Date;
use rayon::prelude::*;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Serialize;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fmt;
use std::io::BufRead;
use std::ops::ControlFlow;
use vault::Error;
use vault::Line;
use vault::SerialRule;
use zeroize::{Zeroize, Zeroizing};

/// The most lines a registry file may have (blank lines and the header included). The parser
/// holds the holders of the whole file in memory, so this bounds its memory; a longer file is
/// refused with one problem and should be split.
pub const MAX_REGISTRY_LINES: u64 = 1_000_000;

/// The longest line accepted, in bytes, line ending included.
pub const MAX_LINE_BYTES: usize = 4096;

/// The most problems a [`RegistryReport`] lists; the rest are only counted.
pub const MAX_REPORTED: usize = 100;

/// The longest given names or surname, in characters.
pub const MAX_NAME_CHARS: usize = 100;

/// The longest postal address, in characters.
pub const MAX_ADDRESS_CHARS: usize = 200;

/// The earliest birth date accepted.
pub const MIN_BIRTH_DATE: Date = match Date::new(1900, 1, 1) {
    Ok(d) => d,
    Err(_) => Date::MIN,
};

/// The CSV columns, in the documented order. The first five are required.
pub const CSV_COLUMNS: [&str; 11] = [
    "codice_fiscale",
    "given_names",
    "surname",
    "birth_date",
    "email",
    "mobile",
    "address",
    "deceased",
    "serial",
    "expiry",
    "replaced_by",
];

/// How many of [`CSV_COLUMNS`], from the first, the header must have. `email` is among them:
/// the column must be there (so an export that forgot it is caught), but a value may be empty.
pub const REQUIRED_CSV_COLUMNS: usize = 5;

/// The keys of a holder object in JSON lines.
pub const JSON_HOLDER_FIELDS: [&str; 9] = [
    "codice_fiscale",
    "given_names",
    "surname",
    "birth_date",
    "email",
    "mobile",
    "address",
    "deceased",
    "cards",
];

/// The keys of a card object in JSON lines.
pub const JSON_CARD_FIELDS: [&str; 3] = ["serial", "expiry", "replaced_by"];

/// What a registry file must satisfy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistryRules {
    /// Shape of card serials (also of `replaced_by`). Used through [`SerialRule::check`] only,
    /// which works for any rule; the rule itself is validated where configuration is loaded.
    pub serial: SerialRule,
    /// Today: birth dates after it are refused. [`RegistryRules::new`] takes it from the clock;
    /// tests set it.
    pub today: Date,
}

impl RegistryRules {
    /// Rules with this serial rule and today's UTC date.
    pub fn new(serial: SerialRule) -> Self {
        RegistryRules {
            serial,
            today: Date::today_utc(),
        }
    }
}

impl Default for RegistryRules {
    /// The default serial rule and today's UTC date.
    fn default() -> Self {
        RegistryRules::new(SerialRule::default())
    }
}

/// One holder and their cards, all fields validated and normalised.
///
/// `Debug` shows only the line numbers and the card entries: the personal fields stay out of
/// logs and panic messages.
#[derive(Clone, PartialEq, Eq)]
pub struct HolderEntry {
    /// The first line of the file that names this holder.
    pub first_line: u64,
    /// Normalised codice fiscale: upper case, 16 characters, check character verified.
    pub codice_fiscale: String,
    /// Given name(s): trimmed, inner whitespace collapsed to single spaces.
    pub given_names: String,
    /// Surname, normalised like the given names.
    pub surname: String,
    /// Birth date, from [`MIN_BIRTH_DATE`] to the rules' today.
    pub birth_date: Date,
    /// E-mail address, domain in lower case.
    pub email: Option<String>,
    /// Mobile number in E.164 form (`+393331234567`).
    pub mobile: Option<String>,
    /// Postal address, trimmed, inner whitespace collapsed.
    pub address: Option<String>,
    /// Whether the registry marks the holder deceased.
    pub deceased: bool,
    /// The holder's cards in this file, in line order; may be empty.
    pub cards: Vec<CardEntry>,
}

impl fmt::Debug for HolderEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HolderEntry")
            .field("first_line", &self.first_line)
            .field("personal_data", &"<not shown>")
            .field("deceased", &self.deceased)
            .field("cards", &self.cards)
            .finish()
    }
}

/// One card of a holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardEntry {
    /// The line it came from (for JSON lines, the holder's line).
    pub line: u64,
    /// The card serial, checked against the [`SerialRule`].
    pub serial: String,
    /// The card's expiry date (past dates are allowed: the import revokes expired cards).
    pub expiry: Date,
    /// The serial of the card that replaces this one, checked like `serial` and different
    /// from it.
    pub replaced_by: Option<String>,
}

/// One problem: where, and what is wrong. Never carries a field's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RegistryProblem {
    /// 1-based physical line number; 0 for a problem of the whole file.
    pub line: u64,
    /// The field at fault: a column or key name (`surname`, `cards[1].expiry`), or `line`
    /// (encoding, length, quoting, JSON syntax), `header` (CSV header), `file` (the whole file).
    pub field: String,
    /// What is wrong, e.g. `codice fiscale has 15 characters, wants 16`.
    pub message: String,
}

impl fmt::Display for RegistryProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.field.as_str() {
            "file" => f.write_str(&self.message),
            "line" => write!(f, "line {}: {}", self.line, self.message),
            field => write!(f, "line {}, {field}: {}", self.line, self.message),
        }
    }
}

/// Why a registry file was rejected: the problems of the whole file first, then the first line
/// problems up to [`MAX_REPORTED`], and the count of all of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RegistryReport {
    /// The problems listed.
    pub problems: Vec<RegistryProblem>,
    /// How many problems were found in all.
    pub total: u64,
}

impl fmt::Display for RegistryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        vault::write_problems(f, &self.problems, self.total)
    }
}

/// Why [`parse_registry`] did not succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryFailure {
    /// The file is bad; the report says where.
    #[error("registry file rejected: {0}")]
    Rejected(RegistryReport),
    /// The reader failed.
    #[error("reading the registry file: {0}")]
    Io(String),
}

impl From<RegistryFailure> for Error {
    fn from(f: RegistryFailure) -> Self {
        match f {
            RegistryFailure::Rejected(report) => {
                let (first_line, first_field) = report
                    .problems
                    .first()
                    .map_or((0, String::new()), |p| (p.line, p.field.clone()));
                Error::RegistryRejected {
                    problems: report.total,
                    first_line,
                    first_field,
                    report: report.to_string(),
                }
            }
            RegistryFailure::Io(e) => Error::Storage(format!("reading the registry file: {e}")),
        }
    }
}

/// Why a name is refused. Holds only counts and positions (1-based characters of the
/// normalised name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// Nothing but whitespace.
    #[error("empty (required)")]
    Empty,
    /// More than [`MAX_NAME_CHARS`] characters.
    #[error("has {0} characters, at most 100")]
    TooLong(usize),
    /// A combining accent (a decomposed letter).
    #[error(
        "has a combining accent at position {0} (write accented letters as one character, \
         Unicode NFC)"
    )]
    Combining(usize),
    /// Anything but letters, space, apostrophe, hyphen and dot.
    #[error(
        "has a character other than letters, space, apostrophe, hyphen and dot at position {0}"
    )]
    Char(usize),
    /// No letter at all.
    #[error("has no letter")]
    NoLetter,
}

/// Why an address is refused. Holds only counts and positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    /// More than [`MAX_ADDRESS_CHARS`] characters.
    #[error("has {0} characters, at most 200")]
    TooLong(usize),
    /// A control character.
    #[error("has a control character at position {0}")]
    Control(usize),
}

/// Normalises given names or a surname: trims, collapses inner whitespace to single spaces,
/// writes the typographic apostrophe `’` as `'`; then 1–[`MAX_NAME_CHARS`] characters, each a
/// letter of any script (`D'Angelo`, `Müller`, `NICOLÒ`) or a space, apostrophe, hyphen or
/// dot, at least one letter.
///
/// # Errors
/// A [`NameError`]; it never contains the name.
pub fn normalise_name(input: &str) -> Result<String, NameError> {
    let name = collapse_whitespace(input).replace('\u{2019}', "'");
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    let count = name.chars().count();
    if count > MAX_NAME_CHARS {
        return Err(NameError::TooLong(count));
    }
    for (i, c) in name.chars().enumerate() {
        if ('\u{0300}'..='\u{036F}').contains(&c) {
            return Err(NameError::Combining(i + 1));
        }
        if !(c.is_alphabetic() || matches!(c, ' ' | '\'' | '-' | '.')) {
            return Err(NameError::Char(i + 1));
        }
    }
    if !name.chars().any(char::is_alphabetic) {
        return Err(NameError::NoLetter);
    }
    Ok(name)
}

/// Normalises a postal address: trims and collapses inner whitespace; `None` when nothing is
/// left. At most [`MAX_ADDRESS_CHARS`] characters, no control characters.
///
/// # Errors
/// An [`AddressError`]; it never contains the address.
pub fn normalise_address(input: &str) -> Result<Option<String>, AddressError> {
    let address = collapse_whitespace(input);
    if address.is_empty() {
        return Ok(None);
    }
    let count = address.chars().count();
    if count > MAX_ADDRESS_CHARS {
        return Err(AddressError::TooLong(count));
    }
    if let Some(i) = address
        .chars()
        .position(|c| vault::text::is_unsafe(c, vault::text::Kind::Line))
    {
        return Err(AddressError::Control(i + 1));
    }
    Ok(Some(address))
}

fn collapse_whitespace(input: &str) -> String {
    let mut out = String::with_capacity(input.len());
    for word in input.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// Parses and validates a holder registry file, CSV or JSON lines (told apart by the first
/// non-blank character), and returns its holders in the order of their first line, each with
/// their cards in line order.
///
/// # Errors
/// - [`RegistryFailure::Rejected`] when any line or the file as a whole is bad: every line is
///   checked, and the report lists the problems;
/// - [`RegistryFailure::Io`] when the reader fails.
///
/// # Security
/// Problems never contain a field's value (see the module docs).
pub fn parse_registry<R: BufRead>(
    reader: R,
    rules: &RegistryRules,
) -> Result<Vec<HolderEntry>, RegistryFailure> {
    parse_capped(reader, rules, MAX_REGISTRY_LINES)
}

/// [`parse_registry`] with a line cap of `max_lines` (tests use a small one).
fn parse_capped<R: BufRead>(
    reader: R,
    rules: &RegistryRules,
    max_lines: u64,
) -> Result<Vec<HolderEntry>, RegistryFailure> {
    parse_batched(reader, rules, max_lines, CHECK_BATCH)
}

/// Lines checked on every core at a time (see [`parse_batched`]).
const CHECK_BATCH: usize = 4096;

/// Bytes of lines held for checking at a time: allocated once, so that the buffer of personal
/// data never grows (a growing buffer leaves copies behind in freed memory).
const PENDING_BYTES: usize = 1 << 20;

/// [`parse_capped`] in two steps. Each line after the first non-blank one is checked on its own
/// — encoding, quoting, every field — up to `batch` lines at a time on every core
/// ([`check_line`]); then, one by one in line order, what depends on the lines before it is
/// done ([`State::take`]): a serial seen before, a holder's lines merged, the problems
/// recorded. The outcome is that of taking the lines one by one (`batch` 1).
fn parse_batched<R: BufRead>(
    reader: R,
    rules: &RegistryRules,
    max_lines: u64,
    batch: usize,
) -> Result<Vec<HolderEntry>, RegistryFailure> {
    let mut state = State::new(rules, max_lines);
    let mut pending = Pending::new(batch);
    vault::read_lines(
        reader,
        MAX_LINE_BYTES,
        |_| {},
        |line| {
            let (number, bytes) = match line {
                Line::Text { number, bytes } => (number, Some(bytes)),
                Line::TooLong { number } => (number, None),
            };
            if number > max_lines {
                state.too_many = true;
                return ControlFlow::Break(());
            }
            if state.format.is_none() {
                // Nothing is pending before the format is known.
                state.first_line(number, bytes);
            } else {
                if !pending.has_room(bytes.map_or(0, <[u8]>::len)) {
                    state.take_pending(&mut pending);
                }
                pending.push(number, bytes);
            }
            ControlFlow::Continue(())
        },
    )
    .map_err(|e| RegistryFailure::Io(e.to_string()))?;
    state.take_pending(&mut pending);
    state.finish()
}

/// Lines read and not yet checked. Their bytes are personal data: one zeroizing buffer, wiped
/// after each batch.
struct Pending {
    bytes: Zeroizing<Vec<u8>>,
    /// Each line's number and its bytes in `bytes` (`None`: longer than [`MAX_LINE_BYTES`],
    /// skipped unread).
    lines: Vec<(u64, Option<std::ops::Range<usize>>)>,
    batch: usize,
}

impl Pending {
    fn new(batch: usize) -> Self {
        Pending {
            bytes: Zeroizing::new(Vec::with_capacity(PENDING_BYTES.max(MAX_LINE_BYTES))),
            lines: Vec::with_capacity(batch.clamp(1, CHECK_BATCH)),
            batch: batch.max(1),
        }
    }

    /// Whether a line of `len` bytes may join without the buffer growing or the batch
    /// overflowing.
    fn has_room(&self, len: usize) -> bool {
        self.lines.len() < self.batch && self.bytes.len() + len <= self.bytes.capacity()
    }

    fn push(&mut self, number: u64, bytes: Option<&[u8]>) {
        let range = bytes.map(|b| {
            let start = self.bytes.len();
            self.bytes.extend_from_slice(b);
            start..self.bytes.len()
        });
        self.lines.push((number, range));
    }

    /// Checks every pending line, on every core, and empties the buffer.
    fn check(&mut self, rules: &RegistryRules, format: Option<&Format>) -> Vec<Checked> {
        let bytes = &self.bytes;
        let checked = self
            .lines
            .par_iter()
            .map(|(number, range)| {
                check_line(rules, format, *number, range.clone().map(|r| &bytes[r]))
            })
            .collect();
        self.lines.clear();
        self.bytes.zeroize();
        checked
    }
}

/// The two formats.
enum Format {
    /// CSV; `header` is `None` while the header is unusable (data lines then get only the
    /// checks of encoding, length and quoting).
    Csv {
        header: Option<Header>,
        sep: u8,
    },
    Json,
}

/// A CSV column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Col {
    CodiceFiscale,
    GivenNames,
    Surname,
    BirthDate,
    Email,
    Mobile,
    Address,
    Deceased,
    Serial,
    Expiry,
    ReplacedBy,
}

impl Col {
    const ALL: [Col; 11] = [
        Col::CodiceFiscale,
        Col::GivenNames,
        Col::Surname,
        Col::BirthDate,
        Col::Email,
        Col::Mobile,
        Col::Address,
        Col::Deceased,
        Col::Serial,
        Col::Expiry,
        Col::ReplacedBy,
    ];

    fn index(self) -> usize {
        self as usize
    }

    fn name(self) -> &'static str {
        CSV_COLUMNS[self.index()]
    }
}

/// A usable CSV header: where each known column is, and how many fields a line has.
struct Header {
    at: [Option<usize>; 11],
    columns: usize,
}

impl Header {
    /// The trimmed value of a column, `None` when the header has no such column.
    fn get<'a>(&self, fields: &'a [String], col: Col) -> Option<&'a str> {
        self.at[col.index()]
            .and_then(|i| fields.get(i))
            .map(|f| f.trim())
    }

    /// The column name at field index `i`, for naming a quoting problem.
    fn name_at(&self, i: usize) -> &'static str {
        Col::ALL
            .into_iter()
            .find(|c| self.at[c.index()] == Some(i))
            .map_or("line", Col::name)
    }
}

/// The personal fields of a holder, validated.
struct Person {
    given_names: String,
    surname: String,
    birth_date: Date,
    email: Option<String>,
    mobile: Option<String>,
    address: Option<String>,
    deceased: bool,
}

/// The personal fields of one line, as written. `None` for a field the line lacks, or whose
/// problem the format already reported (a required field is then left out, not re-reported).
struct RawPerson<'a> {
    given_names: Option<&'a str>,
    surname: Option<&'a str>,
    birth_date: Option<&'a str>,
    email: Option<&'a str>,
    mobile: Option<&'a str>,
    address: Option<&'a str>,
    /// `None` when the line's value was refused (already reported).
    deceased: Option<bool>,
}

/// What the file knows of one codice fiscale.
struct Slot {
    first_line: u64,
    /// Index into `State::holders`, once a line of this holder was good.
    holder: Option<usize>,
}

/// Parser state across lines.
struct State<'r> {
    rules: &'r RegistryRules,
    max_lines: u64,
    line_no: u64,
    /// A line over the cap was met: reading stopped.
    too_many: bool,
    /// Fixed by the first non-blank line.
    format: Option<Format>,
    /// Lines with a holder, good or bad (not blank, not the header).
    data_lines: u64,
    holders: Vec<HolderEntry>,
    by_cf: HashMap<String, Slot>,
    /// Serial → the line and field where it was first seen.
    serials: HashMap<String, (u64, String)>,
    /// Line problems, up to MAX_REPORTED.
    problems: Vec<RegistryProblem>,
    total: u64,
    /// The fields of the header line (wiped when the parse ends).
    scratch: Zeroizing<Vec<String>>,
}

impl<'r> State<'r> {
    fn new(rules: &'r RegistryRules, max_lines: u64) -> Self {
        State {
            rules,
            max_lines,
            line_no: 0,
            too_many: false,
            format: None,
            data_lines: 0,
            holders: Vec::new(),
            by_cf: HashMap::new(),
            serials: HashMap::new(),
            problems: Vec::new(),
            total: 0,
            scratch: Zeroizing::new(Vec::new()),
        }
    }

    /// Records a problem on the current line; the message is built only while the report has
    /// room.
    fn problem(&mut self, field: &str, message: impl FnOnce() -> String) {
        self.total += 1;
        if self.problems.len() < MAX_REPORTED {
            self.problems.push(RegistryProblem {
                line: self.line_no,
                field: field.to_owned(),
                message: message(),
            });
        }
    }

    /// Physical line `number` (`None`: longer than [`MAX_LINE_BYTES`]) while the format is not
    /// known yet: the first non-blank line fixes it (a CSV header, or the first JSON line).
    fn first_line(&mut self, number: u64, raw: Option<&[u8]>) {
        let text = raw
            .filter(|raw| !raw.contains(&0))
            .and_then(|raw| std::str::from_utf8(raw).ok());
        match text {
            Some(t) if t.trim_start().starts_with('{') => self.format = Some(Format::Json),
            Some(t) if !t.trim().is_empty() => {
                self.line_no = number;
                let format = self.csv_header(t);
                self.format = Some(format);
                return;
            }
            _ => {}
        }
        let checked = check_line(self.rules, self.format.as_ref(), number, raw);
        self.take(checked);
    }

    /// Checks the pending lines and takes them in order.
    fn take_pending(&mut self, pending: &mut Pending) {
        for checked in pending.check(self.rules, self.format.as_ref()) {
            self.take(checked);
        }
    }

    /// Takes one checked line, after every line before it: its problems in the order they
    /// were met, each card's serial against those seen before, its holder merged with the
    /// holder's earlier lines.
    fn take(&mut self, checked: Checked) {
        let Checked {
            number,
            data,
            steps,
            drafts,
            holder,
        } = checked;
        self.line_no = number;
        if data {
            self.data_lines += 1;
        }
        let mut drafts: Vec<Option<Draft>> = drafts.into_iter().map(Some).collect();
        let mut cards: Vec<Option<CardEntry>> = Vec::with_capacity(drafts.len());
        cards.resize_with(drafts.len(), || None);
        for step in steps {
            match step {
                Step::Problem { field, message } => self.problem(&field, || message),
                Step::Serial(i) => {
                    if let Some(draft) = drafts.get_mut(i).and_then(Option::take) {
                        cards[i] = self.serial_seen(draft);
                    }
                }
            }
        }
        match holder {
            None => {}
            Some(LineHolder::Csv { cf, person, card }) => {
                let card = match card {
                    CsvCard::Bad => None,
                    CsvCard::Without => Some(None),
                    CsvCard::Draft(i) => cards.get_mut(i).and_then(Option::take).map(Some),
                };
                if let Some(cf) = cf {
                    self.csv_holder(cf, person, card);
                }
            }
            Some(LineHolder::Json {
                cf,
                person,
                cards: items,
            }) => {
                let items = items.and_then(|items| {
                    let mut ok = true;
                    let mut out = Vec::with_capacity(items.len());
                    for item in items {
                        match item {
                            JsonCard::Draft { index, keys_ok } => {
                                match cards.get_mut(index).and_then(Option::take) {
                                    Some(card) if keys_ok => out.push(card),
                                    _ => ok = false,
                                }
                            }
                            JsonCard::Bad => ok = false,
                        }
                    }
                    ok.then_some(out)
                });
                if let Some(cf) = cf {
                    self.json_holder(cf, person, items);
                }
            }
        }
    }

    /// A card whose serial passed the rule, against the serials of the file so far: the
    /// first time, it counts as seen (even if another of its fields is bad, so that a repeat
    /// is found either way) and the card is kept if good; a repeat is a problem.
    fn serial_seen(&mut self, draft: Draft) -> Option<CardEntry> {
        let line = self.line_no;
        match self.serials.entry(draft.serial) {
            Entry::Occupied(o) => {
                let (first_line, first_field) = o.get().clone();
                self.problem(&draft.field, || {
                    if first_line == line {
                        format!("the same serial is in {first_field} on this line")
                    } else {
                        format!("the same serial is on line {first_line}")
                    }
                });
                None
            }
            Entry::Vacant(v) => {
                v.insert((line, draft.field));
                draft.card
            }
        }
    }

    /// A CSV line's holder: the first line of a codice fiscale with good personal fields
    /// makes the holder; later lines must agree with it and add their card.
    fn csv_holder(&mut self, cf: String, person: Option<Person>, card: Option<Option<CardEntry>>) {
        let line = self.line_no;
        let slot = self.by_cf.entry(cf.clone()).or_insert(Slot {
            first_line: line,
            holder: None,
        });
        match (slot.holder, person, card) {
            (Some(i), Some(person), card) => {
                let held = &self.holders[i];
                let first_line = held.first_line;
                let differs = differences(held, &person);
                for field in &differs {
                    self.problem(field, || {
                        format!("differs from line {first_line} (same codice_fiscale)")
                    });
                }
                if let (true, Some(Some(card))) = (differs.is_empty(), card) {
                    self.holders[i].cards.push(card);
                }
            }
            (None, Some(person), card) => {
                // The first line of this holder with good personal fields (earlier ones, if
                // any, had problems there): later lines are compared with it, even if its
                // card part was bad.
                slot.holder = Some(self.holders.len());
                let cards = card.flatten().into_iter().collect();
                self.holders.push(holder(line, cf, person, cards));
            }
            _ => {}
        }
    }

    /// A JSON line's holder: a codice fiscale has one line.
    fn json_holder(&mut self, cf: String, person: Option<Person>, cards: Option<Vec<CardEntry>>) {
        let line = self.line_no;
        match self.by_cf.entry(cf) {
            Entry::Occupied(o) => {
                let first = o.get().first_line;
                self.problem("codice_fiscale", || {
                    format!(
                        "the same holder is on line {first} (in JSON lines a holder has one line)"
                    )
                });
            }
            Entry::Vacant(v) => {
                let codice_fiscale = v.key().clone();
                let index = match (person, cards) {
                    (Some(person), Some(cards)) => {
                        self.holders
                            .push(holder(line, codice_fiscale, person, cards));
                        Some(self.holders.len() - 1)
                    }
                    _ => None,
                };
                v.insert(Slot {
                    first_line: line,
                    holder: index,
                });
            }
        }
    }

    // ---- CSV -------------------------------------------------------------------------------

    /// The first non-blank line of a CSV file: the header. It fixes the separator: `;` if it
    /// has one, else `,`.
    fn csv_header(&mut self, text: &str) -> Format {
        let (semi, comma) = (text.contains(';'), text.contains(','));
        let sep = if semi { b';' } else { b',' };
        let mut fields = std::mem::take(&mut self.scratch);
        let split = split_csv(text, sep, &mut fields);
        let header = if semi && comma {
            self.problem("header", || "mixes ',' and ';' separators".to_owned());
            None
        } else if let Err(e) = split {
            self.problem("header", || e.message());
            None
        } else {
            self.header_columns(&fields)
        };
        self.scratch = fields;
        Format::Csv { header, sep }
    }

    fn header_columns(&mut self, fields: &[String]) -> Option<Header> {
        let known: Vec<Option<Col>> = fields
            .iter()
            .map(|f| {
                let f = f.trim();
                Col::ALL
                    .into_iter()
                    .find(|c| c.name().eq_ignore_ascii_case(f))
            })
            .collect();
        if known.iter().all(Option::is_none) {
            self.problem("header", || {
                format!(
                    "the first line must be the header, with the columns {} \
                     (any order; the first {REQUIRED_CSV_COLUMNS} required)",
                    CSV_COLUMNS.join(",")
                )
            });
            return None;
        }
        let mut at: [Option<usize>; 11] = [None; 11];
        let mut ok = true;
        for (i, col) in known.iter().enumerate() {
            match col {
                // The unknown name itself is not repeated: it could be a value.
                None => {
                    ok = false;
                    self.problem("header", || {
                        format!(
                            "column {} is not a known column (known: {})",
                            i + 1,
                            CSV_COLUMNS.join(", ")
                        )
                    });
                }
                Some(c) => match at[c.index()] {
                    Some(first) => {
                        ok = false;
                        self.problem("header", || {
                            format!(
                                "column {} appears twice (columns {} and {})",
                                c.name(),
                                first + 1,
                                i + 1
                            )
                        });
                    }
                    None => at[c.index()] = Some(i),
                },
            }
        }
        for c in &Col::ALL[..REQUIRED_CSV_COLUMNS] {
            if at[c.index()].is_none() {
                ok = false;
                self.problem("header", || {
                    format!("lacks the required column {}", c.name())
                });
            }
        }
        let has = |c: Col| at[c.index()].is_some();
        if has(Col::Serial) {
            if !has(Col::Expiry) {
                ok = false;
                self.problem("header", || {
                    "column serial needs the column expiry".to_owned()
                });
            }
        } else {
            for c in [Col::Expiry, Col::ReplacedBy] {
                if has(c) {
                    ok = false;
                    self.problem("header", || {
                        format!("column {} needs the column serial", c.name())
                    });
                }
            }
        }
        ok.then_some(Header {
            at,
            columns: fields.len(),
        })
    }

    fn finish(mut self) -> Result<Vec<HolderEntry>, RegistryFailure> {
        // Problems of the whole file go first and are never dropped by the cap.
        let file = if self.too_many {
            Some(format!(
                "the file has more than {} lines, the most a registry file may have \
                 (reading stopped there; split the file)",
                self.max_lines
            ))
        } else if self.data_lines > 0 {
            None
        } else if self.format.is_none() {
            Some("the file is empty".to_owned())
        } else {
            Some("the file has a header but no holders".to_owned())
        };
        if let Some(message) = file {
            self.total += 1;
            self.problems.insert(
                0,
                RegistryProblem {
                    line: 0,
                    field: "file".to_owned(),
                    message,
                },
            );
        }
        if self.total > 0 {
            return Err(RegistryFailure::Rejected(RegistryReport {
                problems: self.problems,
                total: self.total,
            }));
        }
        Ok(self.holders)
    }
}

/// What checking one line on its own found ([`check_line`]), for [`State::take`].
struct Checked {
    number: u64,
    /// Not blank: a line of a holder, good or bad.
    data: bool,
    /// The problems, and the points where a card's serial is compared with the file's, in the
    /// order the checks met them.
    steps: Vec<Step>,
    /// The line's cards whose serial passed the rule, by [`Step::Serial`] index.
    drafts: Vec<Draft>,
    /// The holder the line names (`None`: a line that could not be read as one).
    holder: Option<LineHolder>,
}

enum Step {
    Problem {
        field: String,
        message: String,
    },
    /// The serial of draft `i` is compared with those seen before ([`State::serial_seen`]).
    Serial(usize),
}

/// A card whose serial passed the rule.
struct Draft {
    serial: String,
    /// The field it came from (`serial`, `cards[2].serial`).
    field: String,
    /// The card, `None` when another of its fields is bad.
    card: Option<CardEntry>,
}

/// The holder part of a line.
enum LineHolder {
    Csv {
        cf: Option<String>,
        person: Option<Person>,
        card: CsvCard,
    },
    Json {
        cf: Option<String>,
        person: Option<Person>,
        /// `None` when `cards` is not an array.
        cards: Option<Vec<JsonCard>>,
    },
}

/// The card part of a CSV line.
enum CsvCard {
    /// A bad card part.
    Bad,
    /// A line without a card.
    Without,
    /// A card, pending its serial's check.
    Draft(usize),
}

/// One card of a JSON line.
enum JsonCard {
    Bad,
    /// Pending its serial's check; `keys_ok` false when the object had a bad key.
    Draft {
        index: usize,
        keys_ok: bool,
    },
}

/// Checks physical line `number` (`raw`: its bytes without the line ending; `None` when it
/// is longer than [`MAX_LINE_BYTES`]) on its own, in a file of `format` (`None` while the
/// format is not known: the encoding only). Depends on no other line: runs on every core.
fn check_line(
    rules: &RegistryRules,
    format: Option<&Format>,
    number: u64,
    raw: Option<&[u8]>,
) -> Checked {
    let mut check = Check {
        rules,
        line: number,
        steps: Vec::new(),
        drafts: Vec::new(),
    };
    let (data, holder) = check.line(format, raw);
    Checked {
        number,
        data,
        steps: check.steps,
        drafts: check.drafts,
        holder,
    }
}

/// The checks of one line ([`check_line`]).
struct Check<'r> {
    rules: &'r RegistryRules,
    line: u64,
    steps: Vec<Step>,
    drafts: Vec<Draft>,
}

impl Check<'_> {
    /// Records a problem of the line.
    fn problem(&mut self, field: &str, message: impl FnOnce() -> String) {
        self.steps.push(Step::Problem {
            field: field.to_owned(),
            message: message(),
        });
    }

    /// Whether the line holds a holder (not blank), and the holder.
    fn line(&mut self, format: Option<&Format>, raw: Option<&[u8]>) -> (bool, Option<LineHolder>) {
        let Some(raw) = raw else {
            self.problem("line", || format!("longer than {MAX_LINE_BYTES} bytes"));
            return (true, None);
        };
        if raw.contains(&0) {
            self.problem("line", || "binary data (NUL byte)".to_owned());
            return (true, None);
        }
        let Ok(text) = std::str::from_utf8(raw) else {
            self.problem("line", || "not UTF-8 text".to_owned());
            return (true, None);
        };
        if text.trim().is_empty() {
            return (false, None);
        }
        match format {
            Some(Format::Json) => (true, self.json_line(text)),
            Some(Format::Csv { header, sep }) => (true, self.csv_line(text, header.as_ref(), *sep)),
            // The first non-blank line fixes the format before any line is checked.
            None => (false, None),
        }
    }

    // ---- CSV -------------------------------------------------------------------------------

    fn csv_line(&mut self, text: &str, header: Option<&Header>, sep: u8) -> Option<LineHolder> {
        // Personal data: wiped when the line is done.
        let mut fields: Zeroizing<Vec<String>> =
            Zeroizing::new(Vec::with_capacity(header.map_or(0, |h| h.columns)));
        match (split_csv(text, sep, &mut fields), header) {
            (Err(e), _) => {
                let field = match (e.column(), header) {
                    (Some(i), Some(h)) => h.name_at(i),
                    _ => "line",
                };
                self.problem(field, || e.message());
                None
            }
            (Ok(()), Some(h)) if fields.len() != h.columns => {
                let (n, columns) = (fields.len(), h.columns);
                self.problem("line", || {
                    format!(
                        "{n} {}, the header has {columns}",
                        if n == 1 { "field" } else { "fields" }
                    )
                });
                None
            }
            (Ok(()), Some(h)) => Some(self.csv_record(h, &fields)),
            (Ok(()), None) => None,
        }
    }

    fn csv_record(&mut self, h: &Header, fields: &[String]) -> LineHolder {
        let get = |c: Col| h.get(fields, c);
        let cf = self.codice_fiscale(get(Col::CodiceFiscale));
        let deceased = match get(Col::Deceased).unwrap_or("") {
            "" | "0" => Some(false),
            "1" => Some(true),
            v if v.eq_ignore_ascii_case("false") => Some(false),
            v if v.eq_ignore_ascii_case("true") => Some(true),
            _ => {
                self.problem("deceased", || {
                    "must be empty, true, false, 0 or 1".to_owned()
                });
                None
            }
        };
        let person = self.person(RawPerson {
            given_names: get(Col::GivenNames),
            surname: get(Col::Surname),
            birth_date: get(Col::BirthDate),
            email: get(Col::Email),
            mobile: get(Col::Mobile),
            address: get(Col::Address),
            deceased,
        });

        let serial = get(Col::Serial).filter(|s| !s.is_empty());
        let expiry = get(Col::Expiry).filter(|s| !s.is_empty());
        let replaced_by = get(Col::ReplacedBy).filter(|s| !s.is_empty());
        let card = match serial {
            Some(serial) => match self.card("", serial, Some(expiry), replaced_by) {
                Some(i) => CsvCard::Draft(i),
                None => CsvCard::Bad,
            },
            None => {
                let mut ok = true;
                for (name, value) in [("expiry", expiry), ("replaced_by", replaced_by)] {
                    if value.is_some() {
                        ok = false;
                        self.problem(name, || "given on a line without a serial".to_owned());
                    }
                }
                if ok {
                    CsvCard::Without
                } else {
                    CsvCard::Bad
                }
            }
        };
        LineHolder::Csv { cf, person, card }
    }

    // ---- JSON lines ------------------------------------------------------------------------

    fn json_line(&mut self, text: &str) -> Option<LineHolder> {
        let value = match serde_json::from_str::<JVal>(text) {
            Ok(v) => v,
            Err(e) => {
                // serde_json's messages can quote the input: only the position is used.
                let column = e.column();
                self.problem("line", || match e.classify() {
                    serde_json::error::Category::Eof => {
                        format!("not valid JSON: the line ends inside the object (column {column})")
                    }
                    _ => format!("not valid JSON (column {column})"),
                });
                return None;
            }
        };
        let JVal::Object(entries) = value else {
            let kind = value.kind();
            self.problem("line", || {
                format!("a holder must be a JSON object, not {kind}")
            });
            return None;
        };

        let mut slots: [Option<&JVal>; 9] = [None; 9];
        for (n, (key, v)) in entries.iter().enumerate() {
            match JSON_HOLDER_FIELDS.iter().position(|k| k == key) {
                Some(i) if slots[i].is_some() => {
                    self.problem(JSON_HOLDER_FIELDS[i], || {
                        "appears twice in the object".to_owned()
                    });
                }
                Some(i) => slots[i] = Some(v),
                // The unknown key itself is not repeated: it could be a value.
                None => self.problem("line", || {
                    format!(
                        "key number {} of the object is not a known field (known: {})",
                        n + 1,
                        JSON_HOLDER_FIELDS.join(", ")
                    )
                }),
            }
        }
        let [cf, given_names, surname, birth_date, email, mobile, address, deceased, cards] = slots;

        let cf = self.json_str("codice_fiscale", cf, true);
        let cf = self.codice_fiscale(cf);
        let deceased = match deceased {
            None | Some(JVal::Null) => Some(false),
            Some(JVal::Bool(b)) => Some(*b),
            Some(other) => {
                let kind = other.kind();
                self.problem("deceased", || format!("must be true or false, not {kind}"));
                None
            }
        };
        let raw = RawPerson {
            given_names: self.json_str("given_names", given_names, true),
            surname: self.json_str("surname", surname, true),
            birth_date: self.json_str("birth_date", birth_date, true),
            email: self.json_str("email", email, false),
            mobile: self.json_str("mobile", mobile, false),
            address: self.json_str("address", address, false),
            deceased,
        };
        // A missing or mistyped required field was reported by `json_str` and is `None` here:
        // `person` then gives `None` without a second problem.
        let person = self.person(raw);
        let cards = self.json_cards(cards);

        Some(LineHolder::Json { cf, person, cards })
    }

    /// A string field of a JSON object: `None` when absent or null (a problem if required) or
    /// of another type (always a problem).
    fn json_str<'v>(
        &mut self,
        field: &str,
        v: Option<&'v JVal>,
        required: bool,
    ) -> Option<&'v str> {
        match v {
            Some(JVal::Str(s)) => Some(s),
            None | Some(JVal::Null) => {
                if required {
                    self.problem(field, || "missing (required)".to_owned());
                }
                None
            }
            Some(other) => {
                let kind = other.kind();
                self.problem(field, || format!("must be a string, not {kind}"));
                None
            }
        }
    }

    /// The `cards` array of a JSON holder; `None` if it or any card is bad (every card is
    /// checked).
    fn json_cards(&mut self, v: Option<&JVal>) -> Option<Vec<JsonCard>> {
        let items = match v {
            None | Some(JVal::Null) => return Some(Vec::new()),
            Some(JVal::Array(items)) => items,
            Some(other) => {
                let kind = other.kind();
                self.problem("cards", || format!("must be an array, not {kind}"));
                return None;
            }
        };
        let mut cards = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let mut ok = true;
            let prefix = format!("cards[{i}]");
            let JVal::Object(entries) = item else {
                let kind = item.kind();
                self.problem(&prefix, || format!("must be an object, not {kind}"));
                cards.push(JsonCard::Bad);
                continue;
            };
            let mut slots: [Option<&JVal>; 3] = [None; 3];
            for (n, (key, v)) in entries.iter().enumerate() {
                match JSON_CARD_FIELDS.iter().position(|k| k == key) {
                    Some(k) if slots[k].is_some() => {
                        ok = false;
                        let field = format!("{prefix}.{}", JSON_CARD_FIELDS[k]);
                        self.problem(&field, || "appears twice in the object".to_owned());
                    }
                    Some(k) => slots[k] = Some(v),
                    None => {
                        ok = false;
                        self.problem(&prefix, || {
                            format!(
                                "key number {} of the card is not a known field (known: {})",
                                n + 1,
                                JSON_CARD_FIELDS.join(", ")
                            )
                        });
                    }
                }
            }
            let [serial, expiry, replaced_by] = slots;
            let serial = self.json_str(&format!("{prefix}.serial"), serial, true);
            let expiry = self.json_str(&format!("{prefix}.expiry"), expiry, true);
            let replaced_by = self.json_str(&format!("{prefix}.replaced_by"), replaced_by, false);
            let Some(serial) = serial else {
                cards.push(JsonCard::Bad);
                continue;
            };
            // A missing expiry was reported by json_str (`None`); an empty one is reported by
            // `card`.
            let expiry = expiry.map(|e| Some(e).filter(|e| !e.trim().is_empty()));
            let replaced_by = replaced_by.filter(|r| !r.trim().is_empty());
            cards.push(match self.card(&prefix, serial, expiry, replaced_by) {
                Some(index) => JsonCard::Draft { index, keys_ok: ok },
                None => JsonCard::Bad,
            });
        }
        Some(cards)
    }

    // ---- Fields common to both formats -----------------------------------------------------

    fn codice_fiscale(&mut self, v: Option<&str>) -> Option<String> {
        match codice_fiscale::normalise(v?) {
            Ok(cf) => Some(cf),
            Err(e) => {
                self.problem("codice_fiscale", || e.to_string());
                None
            }
        }
    }

    fn person(&mut self, raw: RawPerson<'_>) -> Option<Person> {
        let given_names = self.name("given_names", raw.given_names);
        let surname = self.name("surname", raw.surname);
        let birth_date = match raw.birth_date.map(str::trim) {
            None => None,
            Some("") => {
                self.problem("birth_date", || "empty (required)".to_owned());
                None
            }
            Some(s) => match Date::parse(s) {
                Err(e) => {
                    self.problem("birth_date", || e.to_string());
                    None
                }
                Ok(d) if d < MIN_BIRTH_DATE => {
                    self.problem("birth_date", || format!("before {MIN_BIRTH_DATE}"));
                    None
                }
                Ok(d) if d > self.rules.today => {
                    self.problem("birth_date", || "in the future".to_owned());
                    None
                }
                Ok(d) => Some(d),
            },
        };
        let mut ok = true;
        let email = match raw.email.filter(|s| !s.trim().is_empty()) {
            None => None,
            Some(s) => match normalise_email(s) {
                Ok(e) => Some(e),
                Err(e) => {
                    ok = false;
                    self.problem("email", || e.to_string());
                    None
                }
            },
        };
        let mobile = match raw.mobile.filter(|s| !s.trim().is_empty()) {
            None => None,
            Some(s) => match normalise_mobile(s) {
                Ok(m) => Some(m),
                Err(e) => {
                    ok = false;
                    self.problem("mobile", || e.to_string());
                    None
                }
            },
        };
        let address = match raw.address.map(normalise_address) {
            None => None,
            Some(Ok(a)) => a,
            Some(Err(e)) => {
                ok = false;
                self.problem("address", || e.to_string());
                None
            }
        };
        let (Some(given_names), Some(surname), Some(birth_date), Some(deceased), true) =
            (given_names, surname, birth_date, raw.deceased, ok)
        else {
            return None;
        };
        Some(Person {
            given_names,
            surname,
            birth_date,
            email,
            mobile,
            address,
            deceased,
        })
    }

    fn name(&mut self, field: &str, v: Option<&str>) -> Option<String> {
        match normalise_name(v?) {
            Ok(n) => Some(n),
            Err(e) => {
                self.problem(field, || e.to_string());
                None
            }
        }
    }

    /// One card. `expiry` is `None` when the format already reported it missing, `Some(None)`
    /// when it is empty (reported here). `prefix` is `""` in CSV, `cards[i]` in JSON lines.
    fn card(
        &mut self,
        prefix: &str,
        serial: &str,
        expiry: Option<Option<&str>>,
        replaced_by: Option<&str>,
    ) -> Option<usize> {
        let field = |name: &str| {
            if prefix.is_empty() {
                name.to_owned()
            } else {
                format!("{prefix}.{name}")
            }
        };
        let mut ok = true;
        let serial = serial.trim();
        let serial_ok = match self.rules.serial.check(serial) {
            Ok(()) => true,
            Err(message) => {
                self.problem(&field("serial"), || message);
                false
            }
        };
        let expiry = match expiry {
            None => None,
            Some(None) => {
                self.problem(&field("expiry"), || {
                    "empty (required with a serial)".to_owned()
                });
                None
            }
            Some(Some(s)) => match Date::parse(s.trim()) {
                Ok(d) => Some(d),
                Err(e) => {
                    self.problem(&field("expiry"), || e.to_string());
                    None
                }
            },
        };
        let replaced_by = match replaced_by.map(str::trim) {
            None => None,
            Some(r) => match self.rules.serial.check(r) {
                Err(message) => {
                    ok = false;
                    self.problem(&field("replaced_by"), || message);
                    None
                }
                Ok(()) if r == serial => {
                    ok = false;
                    self.problem(&field("replaced_by"), || {
                        "is the card's own serial".to_owned()
                    });
                    None
                }
                Ok(()) => Some(r.to_owned()),
            },
        };
        if !serial_ok {
            return None;
        }
        // The serial is compared with the file's when the line is taken (`State::serial_seen`).
        let card = expiry.and_then(|expiry| {
            ok.then(|| CardEntry {
                line: self.line,
                serial: serial.to_owned(),
                expiry,
                replaced_by,
            })
        });
        self.drafts.push(Draft {
            serial: serial.to_owned(),
            field: field("serial"),
            card,
        });
        let index = self.drafts.len() - 1;
        self.steps.push(Step::Serial(index));
        Some(index)
    }
}

fn holder(line: u64, codice_fiscale: String, p: Person, cards: Vec<CardEntry>) -> HolderEntry {
    HolderEntry {
        first_line: line,
        codice_fiscale,
        given_names: p.given_names,
        surname: p.surname,
        birth_date: p.birth_date,
        email: p.email,
        mobile: p.mobile,
        address: p.address,
        deceased: p.deceased,
        cards,
    }
}

/// The personal fields of `person` that differ from those `held`.
fn differences(held: &HolderEntry, person: &Person) -> Vec<&'static str> {
    let mut out = Vec::new();
    if held.given_names != person.given_names {
        out.push("given_names");
    }
    if held.surname != person.surname {
        out.push("surname");
    }
    if held.birth_date != person.birth_date {
        out.push("birth_date");
    }
    if held.email != person.email {
        out.push("email");
    }
    if held.mobile != person.mobile {
        out.push("mobile");
    }
    if held.address != person.address {
        out.push("address");
    }
    if held.deceased != person.deceased {
        out.push("deceased");
    }
    out
}

// ---- CSV splitting ---------------------------------------------------------------------------

/// A quoting problem in a CSV line; `column` is 0-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CsvError {
    Unterminated,
    AfterQuote { column: usize },
    QuoteInside { column: usize },
}

impl CsvError {
    fn column(self) -> Option<usize> {
        match self {
            CsvError::Unterminated => None,
            CsvError::AfterQuote { column } | CsvError::QuoteInside { column } => Some(column),
        }
    }

    fn message(self) -> String {
        match self {
            CsvError::Unterminated => "a quoted field is not closed before the end of the line \
                                       (line breaks inside fields are not allowed)"
                .to_owned(),
            CsvError::AfterQuote { column } => format!(
                "field {} has text after its closing quote (write a quote inside a quoted \
                 field as \"\")",
                column + 1
            ),
            CsvError::QuoteInside { column } => format!(
                "field {} has a quote but does not start with one (quote the whole field and \
                 write a quote inside it as \"\")",
                column + 1
            ),
        }
    }
}

/// Splits one CSV line (RFC 4180 quoting, `""` for a quote inside a quoted field) into `out`.
/// Spaces and tabs around a quoted field are ignored; unquoted fields are returned as written
/// (the caller trims).
fn split_csv(line: &str, sep: u8, out: &mut Vec<String>) -> Result<(), CsvError> {
    // The previous line's fields are personal data: wiped, not just dropped.
    out.zeroize();
    let b = line.as_bytes();
    let mut pos = 0;
    loop {
        let column = out.len();
        let start = pos;
        while pos < b.len() && (b[pos] == b' ' || b[pos] == b'\t') {
            pos += 1;
        }
        if pos < b.len() && b[pos] == b'"' {
            pos += 1;
            // Room for the rest of the line up front: a growing String would leave copies of
            // the field behind in freed memory.
            let mut value = String::with_capacity(b.len() - pos);
            let mut from = pos;
            loop {
                let Some(off) = b[pos..].iter().position(|&c| c == b'"') else {
                    return Err(CsvError::Unterminated);
                };
                pos += off;
                // `"` is ASCII, so `from..pos` is on character boundaries.
                value.push_str(&line[from..pos]);
                if b.get(pos + 1) == Some(&b'"') {
                    value.push('"');
                    pos += 2;
                    from = pos;
                } else {
                    pos += 1;
                    break;
                }
            }
            while pos < b.len() && (b[pos] == b' ' || b[pos] == b'\t') {
                pos += 1;
            }
            out.push(value);
            match b.get(pos) {
                None => return Ok(()),
                Some(&c) if c == sep => pos += 1,
                Some(_) => return Err(CsvError::AfterQuote { column }),
            }
        } else {
            let end = b[start..]
                .iter()
                .position(|&c| c == sep)
                .map_or(b.len(), |off| start + off);
            let field = &line[start..end];
            if field.contains('"') {
                return Err(CsvError::QuoteInside { column });
            }
            out.push(field.to_owned());
            if end == b.len() {
                return Ok(());
            }
            pos = end + 1;
        }
    }
}

// ---- A JSON value that keeps its keys in order and its duplicates ---------------------------

/// A JSON value. Objects keep their keys in order, duplicates included, so that a repeated or
/// unknown key can be reported by its position; numbers are not kept (no field is a number).
enum JVal {
    Null,
    Bool(bool),
    Number,
    Str(String),
    Array(Vec<JVal>),
    Object(Vec<(String, JVal)>),
}

impl JVal {
    /// The JSON type's name, for messages (never the value).
    fn kind(&self) -> &'static str {
        match self {
            JVal::Null => "null",
            JVal::Bool(_) => "a boolean",
            JVal::Number => "a number",
            JVal::Str(_) => "a string",
            JVal::Array(_) => "an array",
            JVal::Object(_) => "an object",
        }
    }
}

impl<'de> Deserialize<'de> for JVal {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JValVisitor)
    }
}

struct JValVisitor;

impl<'de> Visitor<'de> for JValVisitor {
    type Value = JVal;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<JVal, E> {
        Ok(JVal::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<JVal, E> {
        Ok(JVal::Null)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<JVal, E> {
        Ok(JVal::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<JVal, E> {
        Ok(JVal::Number)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<JVal, E> {
        Ok(JVal::Number)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<JVal, E> {
        Ok(JVal::Number)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<JVal, E> {
        Ok(JVal::Str(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<JVal, E> {
        Ok(JVal::Str(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<JVal, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<JVal>()? {
            items.push(item);
        }
        Ok(JVal::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JVal, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value::<JVal>()?;
            entries.push((key, value));
        }
        Ok(JVal::Object(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufReader;

    const CF1: &str = "RSSMRA85T10A562S";
    const CF2: &str = "BNCLRA70A41H501B";
    const CF3: &str = "MRTMTT91D08F205J";
    const CF4: &str = "VRDGPP13B29L219S";
    const HEADER: &str = "codice_fiscale,given_names,surname,birth_date,email,mobile,address,\
                          deceased,serial,expiry,replaced_by";

    fn d(s: &str) -> Date {
        Date::parse(s).unwrap()
    }

    fn rules() -> RegistryRules {
        RegistryRules {
            serial: SerialRule::CNS,
            today: d("2025-06-30"),
        }
    }

    fn serial(i: u64) -> String {
        format!("80380{i:015}")
    }

    /// Parses with a small buffer, so lines straddle buffer fills.
    fn run_with(data: &[u8], capacity: usize) -> Result<Vec<HolderEntry>, RegistryFailure> {
        parse_registry(BufReader::with_capacity(capacity, data), &rules())
    }

    fn run(data: &[u8]) -> Result<Vec<HolderEntry>, RegistryFailure> {
        run_with(data, 64)
    }

    fn ok(data: &str) -> Vec<HolderEntry> {
        match run(data.as_bytes()) {
            Ok(h) => h,
            Err(e) => panic!("{e}"),
        }
    }

    fn report(data: &[u8]) -> RegistryReport {
        match run(data) {
            Err(RegistryFailure::Rejected(r)) => r,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    fn lines(r: &RegistryReport) -> Vec<String> {
        r.problems.iter().map(ToString::to_string).collect()
    }

    fn problems(data: &str) -> Vec<String> {
        let r = report(data.as_bytes());
        assert_eq!(r.total, r.problems.len() as u64);
        lines(&r)
    }

    fn one(data: &str) -> String {
        let p = problems(data);
        assert_eq!(p.len(), 1, "{p:#?}");
        p[0].clone()
    }

    /// A good CSV row, in the order of `CSV_COLUMNS`.
    fn row(cf: &str, card: Option<u64>) -> [String; 11] {
        let (serial, expiry) = match card {
            Some(i) => (serial(i), "2030-12-31".to_owned()),
            None => (String::new(), String::new()),
        };
        [
            cf.to_owned(),
            "Mario".to_owned(),
            "Rossi".to_owned(),
            "1985-12-10".to_owned(),
            "mario.rossi@example.it".to_owned(),
            "+39 333 123 4567".to_owned(),
            "Via Roma 1, 00100 Roma".to_owned(),
            String::new(),
            serial,
            expiry,
            String::new(),
        ]
    }

    fn quote(v: &str) -> String {
        if v.contains([',', ';', '"']) || v.starts_with(' ') || v.ends_with(' ') {
            format!("\"{}\"", v.replace('"', "\"\""))
        } else {
            v.to_owned()
        }
    }

    /// A CSV file with the full header and these rows.
    fn csv(rows: &[[String; 11]]) -> String {
        let mut out = format!("{HEADER}\n");
        for r in rows {
            let fields: Vec<String> = r.iter().map(|f| quote(f)).collect();
            out.push_str(&fields.join(","));
            out.push('\n');
        }
        out
    }

    /// A CSV file of one row of CF1 with a card, one column set to `value`.
    fn csv_with(column: &str, value: &str) -> String {
        let mut r = row(CF1, Some(1));
        let i = CSV_COLUMNS.iter().position(|c| *c == column).unwrap();
        r[i] = value.to_owned();
        csv(&[r])
    }

    fn json_holder(cf: &str, cards: &str) -> String {
        format!(
            r#"{{"codice_fiscale":"{cf}","given_names":"Anna Maria","surname":"Bianchi","birth_date":"1970-01-01","email":"anna@Example.ORG","mobile":"0039 347 765 4321","address":"Corso Italia 7","deceased":false,"cards":[{cards}]}}"#
        )
    }

    fn json_card(i: u64) -> String {
        format!(r#"{{"serial":"{}","expiry":"2029-01-31"}}"#, serial(i))
    }

    fn card(line: u64, i: u64, expiry: &str, replaced_by: Option<u64>) -> CardEntry {
        CardEntry {
            line,
            serial: serial(i),
            expiry: d(expiry),
            replaced_by: replaced_by.map(serial),
        }
    }

    // ---- CSV -------------------------------------------------------------------------------

    #[test]
    fn csv_good_file_merges_a_holders_cards() {
        let mut third = row(CF1, Some(2));
        third[10] = serial(3);
        let mut no_card = row(CF2, None);
        no_card[1] = "  Anna   Maria ".to_owned();
        no_card[2] = "D'Angelo".to_owned();
        no_card[4] = "Anna.DAngelo@Example.IT".to_owned();
        no_card[5] = "333-765-4321".to_owned();
        no_card[6] = String::new();
        no_card[7] = "TRUE".to_owned();
        let data = csv(&[row(CF1, Some(1)), no_card, third, row(CF3, Some(3))]);
        let holders = ok(&data);
        assert_eq!(holders.len(), 3);
        assert_eq!(
            holders[0],
            HolderEntry {
                first_line: 2,
                codice_fiscale: CF1.to_owned(),
                given_names: "Mario".to_owned(),
                surname: "Rossi".to_owned(),
                birth_date: d("1985-12-10"),
                email: Some("mario.rossi@example.it".to_owned()),
                mobile: Some("+393331234567".to_owned()),
                address: Some("Via Roma 1, 00100 Roma".to_owned()),
                deceased: false,
                cards: vec![
                    card(2, 1, "2030-12-31", None),
                    card(4, 2, "2030-12-31", Some(3)),
                ],
            }
        );
        assert_eq!(
            holders[1],
            HolderEntry {
                first_line: 3,
                codice_fiscale: CF2.to_owned(),
                given_names: "Anna Maria".to_owned(),
                surname: "D'Angelo".to_owned(),
                birth_date: d("1985-12-10"),
                email: Some("Anna.DAngelo@example.it".to_owned()),
                mobile: Some("+393337654321".to_owned()),
                address: None,
                deceased: true,
                cards: vec![],
            }
        );
        assert_eq!(holders[2].codice_fiscale, CF3);
        // The replacement card of line 4 is a card of its own on line 5.
        assert_eq!(holders[2].cards, vec![card(5, 3, "2030-12-31", None)]);
    }

    #[test]
    fn csv_lines_of_one_holder_agree_after_normalisation() {
        let mut again = row(&CF1.to_lowercase(), Some(2));
        again[1] = " Mario ".to_owned();
        again[4] = "mario.rossi@EXAMPLE.it".to_owned();
        again[5] = "333.123.45.67".to_owned();
        again[6] = "Via  Roma 1,   00100 Roma".to_owned();
        again[7] = "0".to_owned();
        let holders = ok(&csv(&[row(CF1, Some(1)), row(CF2, None), again]));
        assert_eq!(holders.len(), 2);
        assert_eq!(holders[0].cards.len(), 2);
        // A line without a card for a holder who has cards on other lines is fine too.
        let holders = ok(&csv(&[
            row(CF1, Some(1)),
            row(CF1, None),
            row(CF1, Some(2)),
        ]));
        assert_eq!(holders.len(), 1);
        assert_eq!(
            holders[0].cards.iter().map(|c| c.line).collect::<Vec<_>>(),
            [2, 4]
        );
    }

    #[test]
    fn csv_disagreement_is_reported_on_the_later_line_naming_each_field() {
        let mut later = row(CF1, Some(2));
        later[2] = "Russo".to_owned();
        later[4] = String::new();
        later[7] = "1".to_owned();
        let data = csv(&[row(CF1, Some(1)), row(CF2, None), later]);
        assert_eq!(
            problems(&data),
            [
                "line 4, surname: differs from line 2 (same codice_fiscale)",
                "line 4, email: differs from line 2 (same codice_fiscale)",
                "line 4, deceased: differs from line 2 (same codice_fiscale)",
            ]
        );
        let mut later = row(CF1, None);
        later[3] = "1985-12-11".to_owned();
        assert_eq!(
            one(&csv(&[row(CF1, Some(1)), later])),
            "line 3, birth_date: differs from line 2 (same codice_fiscale)"
        );
    }

    #[test]
    fn csv_semicolons_any_column_order_and_optional_columns() {
        let data = format!(
            "Surname ; CODICE_FISCALE;birth_date;given_names;Email\n\
             Rossi;{CF1};1985-12-10;Mario;\n\
             Müller;{CF2};1970-01-01;NICOLÒ;\n"
        );
        let holders = ok(&data);
        assert_eq!(holders.len(), 2);
        assert_eq!(
            (holders[1].surname.as_str(), holders[1].given_names.as_str()),
            ("Müller", "NICOLÒ")
        );
        assert_eq!(
            (&holders[1].email, &holders[1].mobile, &holders[1].address),
            (&None, &None, &None)
        );
        assert!(holders.iter().all(|h| h.cards.is_empty() && !h.deceased));
        // In a semicolon file a comma is plain text.
        let data = format!(
            "codice_fiscale;given_names;surname;birth_date;email;address;serial;expiry\n\
             {CF1};Mario;Rossi;1985-12-10;;Via Roma 1, Roma;{};2031-01-01\n",
            serial(7)
        );
        let holders = ok(&data);
        assert_eq!(holders[0].address.as_deref(), Some("Via Roma 1, Roma"));
        assert_eq!(holders[0].cards, vec![card(2, 7, "2031-01-01", None)]);
    }

    #[test]
    fn csv_quoting() {
        let data = format!(
            "\"codice_fiscale\",\"given_names\",surname,birth_date,email,address\n\
             \"{CF1}\",  \"Mario\"  ,\"D'Angelo\",1985-12-10,,\"Via \"\"Roma\"\", 1\"\n\
             {CF2},\"Anna, Maria\",Rossi,1970-01-01,\"\",\"\"\n"
        );
        let err = one(&data);
        assert_eq!(
            err,
            "line 3, given_names: has a character other than letters, space, apostrophe, \
             hyphen and dot at position 5"
        );
        let data = data.replace("Anna, Maria", "Anna Maria");
        let holders = ok(&data);
        assert_eq!(holders[0].given_names, "Mario");
        assert_eq!(holders[0].surname, "D'Angelo");
        assert_eq!(holders[0].address.as_deref(), Some("Via \"Roma\", 1"));
        assert_eq!(holders[1].address, None);
        // A quoted empty field and an empty unquoted one are the same.
        let mut fields = Vec::new();
        split_csv(r#"a,"",,"x""y""#, b',', &mut fields).unwrap();
        assert_eq!(fields, ["a", "", "", "x\"y"]);
        split_csv("", b',', &mut fields).unwrap();
        assert_eq!(fields, [""]);
        split_csv("a;b,c;", b';', &mut fields).unwrap();
        assert_eq!(fields, ["a", "b,c", ""]);
    }

    #[test]
    fn csv_quoting_problems() {
        let head = "codice_fiscale,given_names,surname,birth_date,email\n";
        assert_eq!(
            one(&format!("{head}{CF1},\"Mario,Rossi,1985-12-10\n")),
            "line 2: a quoted field is not closed before the end of the line \
             (line breaks inside fields are not allowed)"
        );
        assert_eq!(
            one(&format!("{head}{CF1},\"Mario\"x,Rossi,1985-12-10\n")),
            "line 2, given_names: field 2 has text after its closing quote \
             (write a quote inside a quoted field as \"\")"
        );
        assert_eq!(
            one(&format!("{head}{CF1},Mario,Ros\"si,1985-12-10\n")),
            "line 2, surname: field 3 has a quote but does not start with one \
             (quote the whole field and write a quote inside it as \"\")"
        );
        assert_eq!(
            one(&format!("{head}{CF1},Mario,Rossi,1985-12-10,\"y\n")),
            "line 2: a quoted field is not closed before the end of the line \
             (line breaks inside fields are not allowed)"
        );
        assert_eq!(
            one(&format!("{head}{CF1},Mario,Rossi,1985-12-10,\"x\"y\n")),
            "line 2, email: field 5 has text after its closing quote \
             (write a quote inside a quoted field as \"\")"
        );
        assert_eq!(
            one(&format!("{head}{CF1},Mario,Rossi,1985-12-10,,\"x\"y\n")),
            "line 2: field 6 has text after its closing quote \
             (write a quote inside a quoted field as \"\")"
        );
    }

    #[test]
    fn csv_field_count() {
        let head = "codice_fiscale,given_names,surname,birth_date,email\n";
        assert_eq!(
            problems(&format!(
                "{head}{CF1},Mario,Rossi\n{CF2},Anna,Bianchi,1970-01-01,,\n{CF3}\n"
            )),
            [
                "line 2: 3 fields, the header has 5",
                "line 3: 6 fields, the header has 5",
                "line 4: 1 field, the header has 5",
            ]
        );
    }

    #[test]
    fn csv_header_problems() {
        let line = format!("{CF1},Mario,Rossi,1985-12-10,\n");
        for (header, want) in [
            (
                "codice_fiscale,given_names,surname,birth_date,email,nickname",
                vec![
                    "line 1, header: column 6 is not a known column (known: codice_fiscale, \
                      given_names, surname, birth_date, email, mobile, address, deceased, \
                      serial, expiry, replaced_by)",
                ],
            ),
            (
                "codice_fiscale,given_names,surname,birth_date,email,surname",
                vec!["line 1, header: column surname appears twice (columns 3 and 6)"],
            ),
            (
                "codice_fiscale,given_names,birth_date,email",
                vec!["line 1, header: lacks the required column surname"],
            ),
            (
                "codice_fiscale,given_names,surname,birth_date,email,serial",
                vec!["line 1, header: column serial needs the column expiry"],
            ),
            (
                "codice_fiscale,given_names,surname,birth_date,email,expiry,replaced_by",
                vec![
                    "line 1, header: column expiry needs the column serial",
                    "line 1, header: column replaced_by needs the column serial",
                ],
            ),
            (
                "codice_fiscale;given_names,surname;birth_date,email",
                vec!["line 1, header: mixes ',' and ';' separators"],
            ),
            (
                "codice_fiscale,\"given_names,surname,birth_date,email",
                vec![
                    "line 1, header: a quoted field is not closed before the end of the line \
                      (line breaks inside fields are not allowed)",
                ],
            ),
        ] {
            let got = problems(&format!("{header}\n{line}"));
            assert_eq!(got, want, "{header}");
        }
        // A file without a header: its first line is taken for one, and refused as such.
        let got = problems(&format!("{line}{line}"));
        assert_eq!(
            got,
            [
                "line 1, header: the first line must be the header, with the columns \
              codice_fiscale,given_names,surname,birth_date,email,mobile,address,deceased,\
              serial,expiry,replaced_by (any order; the first 5 required)"
            ]
        );
        // With a bad header, lines still get the checks that need no header.
        let got = problems(&format!(
            "codice_fiscale,given_names,surname,birth_date,email,x\n{line}{CF1},\"Mario\n"
        ));
        assert_eq!(got.len(), 2, "{got:#?}");
        assert!(got[1].starts_with("line 3: a quoted field is not closed"));
    }

    #[test]
    fn every_bad_field_is_named() {
        let long_name = "x".repeat(101);
        let long_address = "a".repeat(201);
        let same = serial(1);
        for (column, value, want) in [
            ("codice_fiscale", "", "codice fiscale is empty"),
            ("codice_fiscale", "RSSMRA85T10A562", "codice fiscale has 15 characters, wants 16"),
            ("codice_fiscale", "RSSMRA85T10A562X", "check character does not match"),
            ("codice_fiscale", "RSSMRA85F10A562S", "month letter is not one of ABCDEHLMPRST"),
            ("given_names", "", "empty (required)"),
            ("given_names", "Mario2", "has a character other than letters, space, apostrophe, hyphen and dot at position 6"),
            ("surname", &long_name, "has 101 characters, at most 100"),
            ("surname", "Nicolo\u{300}", "has a combining accent at position 7 (write accented letters as one character, Unicode NFC)"),
            ("surname", "- .", "has no letter"),
            ("birth_date", "", "empty (required)"),
            ("birth_date", "10/12/1985", "not a date in the form YYYY-MM-DD"),
            ("birth_date", "1985-02-29", "day does not exist in that month"),
            ("birth_date", "1985-13-01", "month is not 01 to 12"),
            ("birth_date", "1899-12-31", "before 1900-01-01"),
            ("birth_date", "2025-07-01", "in the future"),
            ("email", "mario.rossi@example", "e-mail domain has no dot"),
            ("email", "mario@@example.it", "e-mail has 2 @ signs, wants exactly one"),
            ("mobile", "06 1234567", "mobile number without + or 00 must be an Italian mobile (3 and 8 or 9 more digits)"),
            ("mobile", "+39 333 1234", "mobile number with +39 is not an Italian mobile (3 and 8 or 9 more digits)"),
            ("address", &long_address, "has 201 characters, at most 200"),
            ("address", "Via\u{1}Roma", "has a control character at position 4"),
            ("deceased", "yes", "must be empty, true, false, 0 or 1"),
            ("serial", "123", "serial has 3 characters, rule wants 16 to 20"),
            ("serial", "Mario Rossi", "serial has a character other than digits at position 1"),
            ("expiry", "", "empty (required with a serial)"),
            ("expiry", "2030-02-30", "day does not exist in that month"),
            ("replaced_by", "12", "serial has 2 characters, rule wants 16 to 20"),
            ("replaced_by", &same, "is the card's own serial"),
        ] {
            let got = one(&csv_with(column, value));
            assert_eq!(got, format!("line 2, {column}: {want}"), "{column}={value:?}");
        }
        // Card fields without a serial.
        let mut r = row(CF1, None);
        r[9] = "2030-01-01".to_owned();
        r[10] = serial(5);
        assert_eq!(
            problems(&csv(&[r])),
            [
                "line 2, expiry: given on a line without a serial",
                "line 2, replaced_by: given on a line without a serial",
            ]
        );
        // Born today is fine, and so is born on 1900-01-01; an expired card is fine too.
        let mut r = row(CF1, Some(1));
        r[3] = "2025-06-30".to_owned();
        r[9] = "2001-01-01".to_owned();
        let mut r2 = row(CF2, None);
        r2[3] = "1900-01-01".to_owned();
        assert_eq!(ok(&csv(&[r, r2])).len(), 2);
        // Several problems on one line are all reported, in column order.
        let mut r = row("RSSMRA85T10A562X", Some(1));
        r[1] = "M4rio".to_owned();
        r[5] = "12".to_owned();
        r[8] = "1".to_owned();
        assert_eq!(
            problems(&csv(&[r])),
            [
                "line 2, codice_fiscale: check character does not match",
                "line 2, given_names: has a character other than letters, space, apostrophe, \
                 hyphen and dot at position 2",
                "line 2, mobile: mobile number without + or 00 must be an Italian mobile \
                 (3 and 8 or 9 more digits)",
                "line 2, serial: serial has 1 characters, rule wants 16 to 20",
            ]
        );
    }

    #[test]
    fn deceased_values() {
        for (value, want) in [
            ("", false),
            ("false", false),
            ("FALSE", false),
            ("0", false),
            ("true", true),
            ("True", true),
            ("1", true),
        ] {
            assert_eq!(
                ok(&csv_with("deceased", value))[0].deceased,
                want,
                "{value}"
            );
        }
        for value in ["yes", "no", "2", "t", "deceased"] {
            assert_eq!(
                one(&csv_with("deceased", value)),
                "line 2, deceased: must be empty, true, false, 0 or 1"
            );
        }
    }

    #[test]
    fn names_are_normalised_and_checked() {
        for (input, want) in [
            ("D'Angelo", "D'Angelo"),
            ("D\u{2019}Angelo", "D'Angelo"),
            ("Müller", "Müller"),
            ("NICOLÒ", "NICOLÒ"),
            ("  Maria   Grazia\tDe  Luca ", "Maria Grazia De Luca"),
            ("Jean-Luc", "Jean-Luc"),
            ("St. John", "St. John"),
            ("Ζωή", "Ζωή"),
            ("Łukasz Żółć", "Łukasz Żółć"),
        ] {
            assert_eq!(normalise_name(input).as_deref(), Ok(want), "{input}");
        }
        assert_eq!(normalise_name(&"a".repeat(100)).map(|n| n.len()), Ok(100));
        for (input, want) in [
            ("", NameError::Empty),
            ("  \t ", NameError::Empty),
            ("Mario1", NameError::Char(6)),
            ("Mario_Rossi", NameError::Char(6)),
            ("Rossi (jr)", NameError::Char(7)),
            ("Nicolo\u{300}", NameError::Combining(7)),
            ("'-.", NameError::NoLetter),
        ] {
            assert_eq!(normalise_name(input), Err(want), "{input:?}");
        }
        assert_eq!(
            normalise_name(&"é".repeat(101)),
            Err(NameError::TooLong(101))
        );
        assert_eq!(normalise_address("  "), Ok(None));
        assert_eq!(
            normalise_address(" Via  Roma\t1 ")
                .as_ref()
                .map(Option::as_deref),
            Ok(Some("Via Roma 1"))
        );
    }

    // ---- JSON lines ------------------------------------------------------------------------

    #[test]
    fn json_good_file() {
        let minimal = format!(
            r#"{{"surname":"Verdi","birth_date":"2013-02-28","given_names":"Giuseppe","codice_fiscale":"{}"}}"#,
            CF4.to_lowercase()
        );
        let data = format!(
            "{}\n\n{minimal}\n{}\n",
            json_holder(CF2, &format!("{},{}", json_card(1), json_card(2))),
            json_holder(
                CF3,
                r#"{"serial":"80380000000000000009","expiry":"2024-01-31","replaced_by":"80380000000000000002"}"#
            ),
        );
        let holders = ok(&data);
        assert_eq!(holders.len(), 3);
        assert_eq!(
            holders[0],
            HolderEntry {
                first_line: 1,
                codice_fiscale: CF2.to_owned(),
                given_names: "Anna Maria".to_owned(),
                surname: "Bianchi".to_owned(),
                birth_date: d("1970-01-01"),
                email: Some("anna@example.org".to_owned()),
                mobile: Some("+393477654321".to_owned()),
                address: Some("Corso Italia 7".to_owned()),
                deceased: false,
                cards: vec![
                    card(1, 1, "2029-01-31", None),
                    card(1, 2, "2029-01-31", None)
                ],
            }
        );
        assert_eq!(holders[1].first_line, 3);
        assert_eq!(holders[1].codice_fiscale, CF4);
        assert_eq!(
            (
                &holders[1].email,
                holders[1].deceased,
                holders[1].cards.len()
            ),
            (&None, false, 0)
        );
        assert_eq!(holders[2].cards, vec![card(4, 9, "2024-01-31", Some(2))]);
        // null, empty strings and an empty card list are absent values.
        let data = format!(
            r#"{{"codice_fiscale":"{CF1}","given_names":"Mario","surname":"Rossi","birth_date":"1985-12-10","email":null,"mobile":"","address":" ","deceased":true,"cards":[]}}"#
        );
        let h = &ok(&data)[0];
        assert_eq!(
            (&h.email, &h.mobile, &h.address, h.deceased),
            (&None, &None, &None, true)
        );
    }

    #[test]
    fn json_problems() {
        let good = json_holder(CF1, &json_card(1));
        let first = format!("{}\n", json_holder(CF2, ""));
        let cases: Vec<(String, Vec<&str>)> = vec![
            ("{".to_owned(), vec!["line 2: not valid JSON: the line ends inside the object (column 1)"]),
            (r#"{"codice_fiscale": RSS}"#.to_owned(), vec!["line 2: not valid JSON (column 20)"]),
            (format!("{good} x"), vec!["line 2: not valid JSON (column 278)"]),
            ("[1, 2]".to_owned(), vec!["line 2: a holder must be a JSON object, not an array"]),
            (r#""Mario Rossi""#.to_owned(), vec!["line 2: a holder must be a JSON object, not a string"]),
            (
                good.replacen('{', r#"{"nickname":"Zorro","#, 1),
                vec!["line 2: key number 1 of the object is not a known field (known: codice_fiscale, given_names, surname, birth_date, email, mobile, address, deceased, cards)"],
            ),
            (
                good.replacen('{', r#"{"surname":"Verdi","#, 1),
                vec!["line 2, surname: appears twice in the object"],
            ),
            (
                good.replace(r#""surname":"Bianchi","#, ""),
                vec!["line 2, surname: missing (required)"],
            ),
            (
                good.replace(r#""surname":"Bianchi""#, r#""surname":null"#),
                vec!["line 2, surname: missing (required)"],
            ),
            (
                good.replace(r#""given_names":"Anna Maria""#, r#""given_names":5"#),
                vec!["line 2, given_names: must be a string, not a number"],
            ),
            (
                good.replace(r#""given_names":"Anna Maria""#, r#""given_names":"""#),
                vec!["line 2, given_names: empty (required)"],
            ),
            (
                good.replace(r#""birth_date":"1970-01-01""#, r#""birth_date":"""#),
                vec!["line 2, birth_date: empty (required)"],
            ),
            (
                good.replace(r#""deceased":false"#, r#""deceased":"yes""#),
                vec!["line 2, deceased: must be true or false, not a string"],
            ),
            (
                good.replace(r#""email":"anna@Example.ORG""#, r#""email":["a@b.it"]"#),
                vec!["line 2, email: must be a string, not an array"],
            ),
            (
                json_holder(CF1, "1, {}"),
                vec![
                    "line 2, cards[0]: must be an object, not a number",
                    "line 2, cards[1].serial: missing (required)",
                    "line 2, cards[1].expiry: missing (required)",
                ],
            ),
            (
                good.replace(&format!("[{}]", json_card(1)), "{}"),
                vec!["line 2, cards: must be an array, not an object"],
            ),
            (
                json_holder(CF1, &format!(r#"{{"serial":"{}","expiry":"2030-01-01","pin":"12345"}}"#, serial(1))),
                vec!["line 2, cards[0]: key number 3 of the card is not a known field (known: serial, expiry, replaced_by)"],
            ),
            (
                json_holder(CF1, &format!(r#"{{"serial":"{}","expiry":"2030-01-01","expiry":"2031-01-01"}}"#, serial(1))),
                vec!["line 2, cards[0].expiry: appears twice in the object"],
            ),
            (
                json_holder(CF1, &format!(r#"{{"serial":"{}","expiry":""}}"#, serial(1))),
                vec!["line 2, cards[0].expiry: empty (required with a serial)"],
            ),
            (
                json_holder(CF1, &format!(r#"{{"serial":{},"expiry":"2030-01-01"}}"#, serial(1))),
                vec!["line 2, cards[0].serial: must be a string, not a number"],
            ),
            (
                json_holder(CF1, &format!(r#"{},{{"serial":"{}","expiry":"2030-02-31","replaced_by":"1"}}"#, json_card(1), serial(2))),
                vec![
                    "line 2, cards[1].expiry: day does not exist in that month",
                    "line 2, cards[1].replaced_by: serial has 1 characters, rule wants 16 to 20",
                ],
            ),
            (
                json_holder("RSSMRA85T10A562", &json_card(1)),
                vec!["line 2, codice_fiscale: codice fiscale has 15 characters, wants 16"],
            ),
        ];
        for (line, want) in cases {
            let got = problems(&format!("{first}{line}\n"));
            assert_eq!(got, want, "{line}");
        }
    }

    #[test]
    fn json_holder_twice_and_duplicate_serials() {
        let data = format!(
            "{}\n{}\n{}\n",
            json_holder(CF1, &json_card(1)),
            json_holder(CF2, ""),
            json_holder(&CF1.to_lowercase(), &json_card(2)),
        );
        assert_eq!(
            one(&data),
            "line 3, codice_fiscale: the same holder is on line 1 (in JSON lines a holder has \
             one line)"
        );
        let data = format!(
            "{}\n{}\n",
            json_holder(
                CF1,
                &format!("{},{},{}", json_card(1), json_card(2), json_card(1))
            ),
            json_holder(CF2, &json_card(2)),
        );
        assert_eq!(
            problems(&data),
            [
                "line 1, cards[2].serial: the same serial is in cards[0].serial on this line",
                "line 2, cards[0].serial: the same serial is on line 1",
            ]
        );
    }

    #[test]
    fn csv_duplicate_serials() {
        let mut r3 = row(CF1, Some(2));
        r3[10] = serial(1); // replaced by a card of the file: fine, not a repeat
        let data = csv(&[
            row(CF1, Some(1)),
            row(CF2, Some(3)),
            r3,
            row(CF3, Some(3)),
            row(CF1, Some(1)),
        ]);
        assert_eq!(
            problems(&data),
            [
                "line 5, serial: the same serial is on line 3",
                "line 6, serial: the same serial is on line 2",
            ]
        );
        // A line with a bad card still fixes the holder's personal fields.
        let mut bad_card = row(CF1, Some(1));
        bad_card[9] = "2030-02-30".to_owned();
        let mut later = row(CF1, Some(2));
        later[1] = "Marco".to_owned();
        assert_eq!(
            problems(&csv(&[bad_card, later])),
            [
                "line 2, expiry: day does not exist in that month",
                "line 3, given_names: differs from line 2 (same codice_fiscale)",
            ]
        );
        // A repeat is found even when the first line had other problems.
        let mut bad = row(CF1, Some(1));
        bad[1] = "M4rio".to_owned();
        assert_eq!(problems(&csv(&[bad, row(CF2, Some(1))])).len(), 2);
    }

    // ---- Both formats: detection, encoding, limits -----------------------------------------

    #[test]
    fn format_is_told_by_the_first_non_blank_character() {
        let json = format!("\n  \r\n\t{}\n", json_holder(CF1, ""));
        let holders = ok(&json);
        assert_eq!(holders[0].first_line, 3);
        // In a CSV file a line starting with `{` is just a bad CSV line.
        let data = format!(
            "codice_fiscale,given_names,surname,birth_date,email\n{}\n",
            json_holder(CF1, "")
        );
        assert!(report(data.as_bytes()).total >= 1);
    }

    #[test]
    fn bom_crlf_and_blank_lines() {
        let body = csv(&[row(CF1, Some(1)), row(CF2, Some(2))]);
        let want = ok(&body);
        let crlf = format!("\u{FEFF}{}", body.replace('\n', "\r\n\r\n"));
        let got = ok(&crlf);
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].first_line, got[1].first_line), (3, 5));
        assert_eq!(got[0].cards[0].serial, want[0].cards[0].serial);
        assert_eq!(got[1].given_names, want[1].given_names);
        // No newline at the end.
        assert_eq!(ok(body.trim_end()).len(), 2);
        let json = format!(
            "\u{FEFF}{}\r\n{}",
            json_holder(CF1, ""),
            json_holder(CF2, "")
        );
        assert_eq!(ok(&json).len(), 2);
        // A BOM later on is not skipped.
        let json = format!(
            "{}\n\u{FEFF}{}\n",
            json_holder(CF1, ""),
            json_holder(CF2, "")
        );
        assert_eq!(one(&json), "line 2: not valid JSON (column 1)");
    }

    #[test]
    fn binary_utf8_overlong_and_empty() {
        let head = "codice_fiscale,given_names,surname,birth_date,email\n";
        let good = format!("{CF1},Mario,Rossi,1985-12-10,\n");
        let mut data = format!("{head}{good}").into_bytes();
        data.extend_from_slice(b"RSSMRA85T10A562S,Ma\0rio,Rossi,1985-12-10\n");
        data.extend_from_slice(b"BNCLRA70A41H501B,Anna,Bianch\xFF,1970-01-01\n");
        data.extend(std::iter::repeat_n(b'x', 5000));
        data.extend_from_slice(b"\n");
        data.extend(std::iter::repeat_n(b'y', 4096));
        data.extend_from_slice(b"\n");
        let r = report(&data);
        assert_eq!(
            lines(&r),
            [
                "line 3: binary data (NUL byte)",
                "line 4: not UTF-8 text",
                "line 5: longer than 4096 bytes",
                "line 6: longer than 4096 bytes",
            ]
        );
        // 4095 bytes and the newline is the longest line.
        let mut long = format!("{head}{CF1},Mario,Rossi,1985-12-10,").into_bytes();
        let pad = MAX_LINE_BYTES - 1 - (long.len() - head.len());
        long.extend(std::iter::repeat_n(b' ', pad));
        long.push(b'\n');
        assert!(run(&long).is_ok());
        // A binary blob with no newline at all is one overlong line.
        assert_eq!(
            lines(&report(&vec![0u8; 10_000])),
            ["line 1: longer than 4096 bytes"]
        );
        assert_eq!(lines(&report(b"\0\0")), ["line 1: binary data (NUL byte)"]);
        assert_eq!(lines(&report(b"")), ["the file is empty"]);
        assert_eq!(lines(&report(b"\n \r\n\t\n")), ["the file is empty"]);
        assert_eq!(lines(&report(b"\xEF\xBB\xBF")), ["the file is empty"]);
        assert_eq!(
            lines(&report(head.as_bytes())),
            ["the file has a header but no holders"]
        );
        assert_eq!(
            lines(&report(format!("{head}\n\n").as_bytes())),
            ["the file has a header but no holders"]
        );
    }

    #[test]
    fn any_buffer_size_gives_the_same_result() {
        let csv_data = format!(
            "\u{FEFF}{}",
            csv(&[row(CF1, Some(1)), row(CF2, None), row(CF1, Some(2))]).replace('\n', "\r\n")
        );
        let json_data = format!(
            "{}\r\n\r\n{}",
            json_holder(CF1, &json_card(1)),
            json_holder(CF2, "")
        );
        for data in [csv_data, json_data] {
            let want = run_with(data.as_bytes(), 8192).unwrap();
            for cap in 1..=80 {
                let got = run_with(data.as_bytes(), cap).unwrap();
                assert_eq!(got, want, "capacity {cap}");
            }
        }
        // Problems too.
        let mut bad = row(CF1, Some(1));
        bad[3] = "1985-02-30".to_owned();
        let data = csv(&[bad, row(CF2, Some(1))]);
        let want = lines(&report(data.as_bytes()));
        for cap in [1, 7, 33, 4096] {
            match run_with(data.as_bytes(), cap) {
                Err(RegistryFailure::Rejected(r)) => assert_eq!(lines(&r), want),
                other => panic!("{other:?}"),
            }
        }
    }

    /// Lines checked in batches on every core give what taking them one by one gives (a
    /// batch of 1), for good files and for files whose problems depend on other lines
    /// (repeated serials, a holder's lines that differ, a holder twice in JSON lines).
    #[test]
    fn lines_checked_in_batches_give_the_same_result() {
        let result = |data: &str, batch: usize| match parse_batched(
            BufReader::with_capacity(64, data.as_bytes()),
            &rules(),
            MAX_REGISTRY_LINES,
            batch,
        ) {
            Ok(holders) => Ok(holders),
            Err(RegistryFailure::Rejected(r)) => Err(r),
            Err(other) => panic!("{other:?}"),
        };
        let mut rows = Vec::new();
        for i in 0..40u64 {
            let cf = [CF1, CF2, CF3, CF4][(i % 4) as usize];
            rows.push(row(cf, Some(i)));
        }
        let good = csv(&rows);
        let mut bad_rows = rows.clone();
        bad_rows[5][8] = serial(1); // a serial of an earlier line
        bad_rows[9][1] = "Maria".to_owned(); // differs from the holder's first line
        bad_rows[12][0] = "RSSMRA85T10A562".to_owned(); // a bad codice fiscale
        bad_rows[13][10] = serial(13); // replaced by itself
        bad_rows[17][9] = String::new(); // no expiry
        bad_rows[17][8] = serial(2); // and a repeated serial
        bad_rows[21][3] = "1985-02-30".to_owned();
        let mut bad = csv(&bad_rows);
        bad.push_str("\u{0}\n\n\"open,\n");
        let json_good = (0..30u64)
            .map(|i| json_holder(&codice(i), &json_card(i)))
            .collect::<Vec<_>>()
            .join("\n");
        let json_bad = format!(
            "{}\n{}\n{}\n{}\n{{\"cards\":[1,{}]}}\n",
            json_holder(CF1, &format!("{},{}", json_card(1), json_card(2))),
            json_holder(CF2, &format!("{},{}", json_card(2), json_card(1))),
            json_holder(CF1, ""),
            json_holder(
                CF3,
                &format!(
                    r#"{{"serial":"{}","expiry":"2029-01-31","x":1}},{}"#,
                    serial(3),
                    json_card(3)
                )
            ),
            json_card(4),
        );
        for data in [good, bad, json_good, json_bad] {
            let one_by_one = result(&data, 1);
            for batch in [2, 3, 7, CHECK_BATCH] {
                assert_eq!(result(&data, batch), one_by_one, "batch {batch}");
            }
        }
    }

    /// A valid codice fiscale for `i` (six letters from it, fixed birth data).
    fn codice(i: u64) -> String {
        let mut letters = [b'A'; 6];
        let mut v = i;
        for l in letters.iter_mut().rev() {
            *l = b'A' + (v % 26) as u8;
            v /= 26;
        }
        let first15 = format!("{}85T10A562", String::from_utf8_lossy(&letters));
        let check = crate::check_character(&first15).unwrap();
        format!("{first15}{check}")
    }

    #[test]
    fn line_cap() {
        let capped = |data: &str, cap: u64| {
            parse_capped(BufReader::with_capacity(16, data.as_bytes()), &rules(), cap)
        };
        let data = csv(&[row(CF1, Some(1)), row(CF2, None)]);
        assert_eq!(capped(&data, 3).unwrap().len(), 2);
        assert_eq!(capped(data.trim_end(), 3).unwrap().len(), 2);
        match capped(&format!("{data}\n"), 3) {
            Err(RegistryFailure::Rejected(r)) => assert_eq!(
                lines(&r),
                [
                    "the file has more than 3 lines, the most a registry file may have \
                  (reading stopped there; split the file)"
                ]
            ),
            other => panic!("{other:?}"),
        }
        // Problems found before the cap are listed after it.
        let mut bad = row(CF1, Some(1));
        bad[1] = "M4rio".to_owned();
        match capped(&csv(&[bad, row(CF2, None), row(CF3, None)]), 3) {
            Err(RegistryFailure::Rejected(r)) => {
                assert_eq!(r.total, 2);
                assert_eq!(r.problems[0].line, 0);
                assert_eq!(r.problems[1].line, 2);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_million_lines_is_the_most() {
        let mut data = csv(&[row(CF1, Some(1))]).into_bytes();
        // 2 lines so far; blank lines up to the cap are fine.
        data.extend(std::iter::repeat_n(b'\n', 999_998));
        assert_eq!(run_with(&data, 8192).unwrap().len(), 1);
        data.extend_from_slice(format!("{CF2},Anna,Bianchi,1970-01-01,,,,,,,\n").as_bytes());
        match run_with(&data, 8192) {
            Err(RegistryFailure::Rejected(r)) => assert_eq!(
                lines(&r),
                [
                    "the file has more than 1000000 lines, the most a registry file may have \
                  (reading stopped there; split the file)"
                ]
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn report_is_capped_at_100_with_the_right_total() {
        let rows: Vec<[String; 11]> = (0..250)
            .map(|i| {
                let mut r = row(CF1, Some(i));
                r[0] = "RSSMRA85T10A562".to_owned();
                r
            })
            .collect();
        let r = report(csv(&rows).as_bytes());
        assert_eq!(r.problems.len(), MAX_REPORTED);
        assert_eq!(r.total, 250);
        assert_eq!(r.problems[99].line, 101);
        let text = r.to_string();
        assert!(text.starts_with(
            "line 2, codice_fiscale: codice fiscale has 15 characters, wants 16\nline 3, "
        ));
        assert!(
            text.ends_with("\n... and 150 more (250 problems in all)"),
            "{text}"
        );
    }

    #[test]
    fn io_errors_are_reported() {
        struct Broken;
        impl std::io::Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("connection reset"))
            }
        }
        match parse_registry(BufReader::new(Broken), &rules()) {
            Err(RegistryFailure::Io(m)) => assert!(m.contains("connection reset")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn failures_convert_to_the_vault_error() {
        let r = report(b"");
        let e = Error::from(RegistryFailure::Rejected(r));
        assert!(
            matches!(&e, Error::RegistryRejected { problems: 1, first_line: 0, first_field, report }
                if first_field == "file" && report == "the file is empty"),
            "{e:?}"
        );
        let e = Error::from(RegistryFailure::Rejected(report(
            csv_with("serial", "x").as_bytes(),
        )));
        assert!(
            matches!(&e, Error::RegistryRejected { problems: 1, first_line: 2, first_field, report }
                if first_field == "serial" && report.starts_with("line 2, serial: ")),
            "{e:?}"
        );
        let e = Error::from(RegistryFailure::Io("broken pipe".into()));
        assert!(matches!(&e, Error::Storage(_)), "{e:?}");
    }

    #[test]
    fn holder_debug_leaves_personal_data_out() {
        let holders = ok(&csv(&[row(CF1, Some(1))]));
        let text = format!("{holders:?}");
        for value in [CF1, "Mario", "Rossi", "1985", "example", "333", "Via Roma"] {
            assert!(!text.contains(value), "{value} in {text}");
        }
        assert!(
            text.contains(&serial(1)),
            "cards keep their serials: {text}"
        );
        assert!(text.contains("first_line: 2"));
    }

    #[test]
    fn no_message_contains_any_field_value() {
        // Distinctive values in every field of every kind of bad line, both formats.
        let values = [
            "Zebedeo",
            "Quintilio",
            "Pappalardo",
            "Scannapieco",
            "RSSMRA85T10A562X",
            "RSSMRA85T10A56",
            "QNTPPP66",
            "1899-07-14",
            "2099-03-17",
            "1977-02-30",
            "zorro.x@@posta.it",
            "zorro@postaita",
            "+39 06 9876 5432",
            "9876543",
            "Vicolo Stretto",
            "80380000000000000777",
            "80380000000000000555",
            "4711",
            "certainly",
            "Nickname",
        ];
        let cf_q = with_check("QNTPPP66A01H501");
        let cf_z = with_check("ZBDSCN77B12F205");
        let mut csv_lines = vec![
            HEADER.to_owned(),
            // Name swapped into the serial, serial swapped into the name.
            format!("{cf_q},80380000000000000777,Pappalardo,1966-01-01,,,,,Zebedeo,2030-01-01,"),
            format!("RSSMRA85T10A562X,Quintilio,Scannapieco,1899-07-14,zorro.x@@posta.it,+39 06 9876 5432,\"Vicolo\u{1}Stretto\",certainly,4711,1977-02-30,4711"),
            format!("RSSMRA85T10A56,Zebedeo,Pappalardo,2099-03-17,zorro@postaita,9876543,Vicolo Stretto,,80380000000000000555,,80380000000000000555"),
            format!("{cf_z},Zebedeo,Scannapieco,1977-02-12,,,,,80380000000000000555,2030-01-01,"),
            format!("{cf_z},Quintilio,Scannapieco,1977-02-12,zorro@posta.it,,,,,,"),
            format!("{cf_q},\"Pappalardo\"Zebedeo,x,1966-01-01,,,,,,,"),
            format!("{cf_q},Pap\"palardo,x,1966-01-01,,,,,,,"),
            "Nickname,Zebedeo".to_owned(),
        ];
        csv_lines.push(String::new());
        let csv_data = csv_lines.join("\n");
        let json_data = [
            r#"{"codice_fiscale":"RSSMRA85T10A562X","given_names":"Zebedeo","surname":"Pappalardo","birth_date":"2099-03-17","email":"zorro.x@@posta.it","mobile":"9876543","address":"Vicolo\u0001Stretto","deceased":"certainly","Nickname":"Quintilio","cards":[{"serial":"Scannapieco","expiry":"1977-02-30","replaced_by":"4711"}]}"#.to_owned(),
            format!(r#"{{"codice_fiscale":"{cf_q}","given_names":"Quintilio","surname":"Scannapieco","birth_date":"1899-07-14","cards":[{{"serial":"80380000000000000777","expiry":"1977-02-30","Zebedeo":1}},{{"serial":"80380000000000000777","expiry":"2030-01-01"}}]}}"#),
            format!(r#"{{"codice_fiscale":"{cf_q}","given_names":"Quintilio","surname":"Scannapieco","birth_date":"1966-01-01"}}"#),
            r#"{"codice_fiscale":"RSSMRA85T10A56","given_names":Zebedeo}"#.to_owned(),
            r#"{"Pappalardo":"Zebedeo","#.to_owned(),
            r#""Scannapieco""#.to_owned(),
            r#"{"codice_fiscale":"RSSMRA85T10A56","given_names":"Zebedeo"} certainly"#.to_owned(),
        ]
        .join("\n");
        for data in [csv_data, json_data] {
            let failure = run(data.as_bytes()).unwrap_err();
            let RegistryFailure::Rejected(r) = &failure else {
                panic!("{failure:?}")
            };
            assert!(r.total >= 15, "{r}");
            let everything = format!(
                "{failure}\n{failure:?}\n{}\n{}",
                serde_json::to_string(r).unwrap(),
                Error::from(RegistryFailure::Rejected(r.clone()))
            );
            for value in values.iter().copied().chain([cf_q.as_str(), cf_z.as_str()]) {
                assert!(!everything.contains(value), "{value} leaked: {everything}");
            }
            for fragment in [
                "Zebed", "Quint", "Pappa", "Scanna", "zorro", "posta", "Vicolo", "0777", "0555",
                "1899", "2099", "1977", "87654", "QNTPP", "ZBDSC",
            ] {
                assert!(
                    !everything.contains(fragment),
                    "{fragment} leaked: {everything}"
                );
            }
        }
    }

    fn with_check(first15: &str) -> String {
        format!(
            "{first15}{}",
            codice_fiscale::check_character(first15).unwrap()
        )
    }

    #[test]
    fn a_large_generated_file_parses() {
        let n = 20_000u64;
        // Distinct codici fiscali: the index in base 26 in the six name letters.
        let cfs: Vec<String> = (0..n)
            .map(|i| {
                let mut letters = [b'A'; 6];
                let mut x = i;
                for l in letters.iter_mut().rev() {
                    *l = b'A' + u8::try_from(x % 26).unwrap();
                    x /= 26;
                }
                with_check(&format!(
                    "{}85T10A562",
                    std::str::from_utf8(&letters).unwrap()
                ))
            })
            .collect();
        let mut data = String::with_capacity(100 * 2 * n as usize);
        data.push_str("codice_fiscale;given_names;surname;birth_date;email;serial;expiry\n");
        // Two cards per holder: the second half of the file repeats the holders.
        for half in 0..2 {
            for (i, cf) in cfs.iter().enumerate() {
                let s = serial(half * n + i as u64);
                data.push_str(&format!("{cf};Mario;Rossi;1985-12-10;;{s};2030-12-31\n"));
            }
        }
        let holders = match run_with(data.as_bytes(), 8192) {
            Ok(h) => h,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(holders.len(), n as usize);
        assert!(holders.iter().all(|h| h.cards.len() == 2));
        assert_eq!(holders[7].cards[1].line, n + 2 + 7);
    }
}
