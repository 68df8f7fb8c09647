//! The crate's one error type.
//!
//! Messages are lower-case and name the plan, template, field or position that is wrong; they
//! never carry a digit of a code (templates never see digits, and no error is built from a
//! rendered text).

use std::path::PathBuf;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while planning or rendering a mailer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A delivery plan's text does not parse. The text is not repeated: a plan carries no
    /// secret, but a field filled in by mistake might (the fuzz target `plan` checks that no
    /// refusal repeats a digit run of the text).
    #[error("delivery plan: {reason} at character {at}")]
    PlanSyntax {
        /// Character position (0-based) where parsing failed.
        at: usize,
        /// What was expected there.
        reason: &'static str,
    },
    /// `counter(N)` with an N that does not leave digits for both parts.
    #[error("delivery plan: counter digits must be at least 1 and less than the shortest code ({shortest} digits), got {n}")]
    CounterDigits {
        /// The N of `counter(N)`.
        n: usize,
        /// Length of the shortest code of the card.
        shortest: usize,
    },
    /// A code is not made of ASCII digits, or is empty or too long.
    #[error("{field}: a code must be 1 to {max} ASCII digits (got {len} characters{nondigit})", nondigit = if *.non_digit { ", not all digits" } else { "" })]
    BadCode {
        /// Which code ("pin", "puk", "signature pin", "signature puk").
        field: &'static str,
        /// Its length.
        len: usize,
        /// Whether a non-digit was found.
        non_digit: bool,
        /// The longest code accepted.
        max: usize,
    },
    /// A part's digit ranges do not fit the codes it is cut from.
    #[error("part {part}: digit range does not fit the {field}")]
    PartRange {
        /// The part's name.
        part: &'static str,
        /// Which code.
        field: &'static str,
    },
    /// A template does not compile or does not render.
    #[error("template {name}: {detail}")]
    Template {
        /// Template name (e.g. `sms.txt`).
        name: String,
        /// minijinja's message (it names the line; templates hold no digit).
        detail: String,
    },
    /// A template override directory or file could not be read.
    #[error("template directory {path}: {source}")]
    TemplateDir {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A mailer cannot be laid out: its name or address does not fit the page (see
    /// [`LayoutError`]). Bulk runs set such a mailer aside and go on.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// A character has no GSM-7 form and no transliteration.
    #[error("sms: character U+{code:04X} at position {position} is not in GSM-7")]
    NotGsm7 {
        /// The Unicode scalar value.
        code: u32,
        /// Character position in the message (0-based).
        position: usize,
    },
    /// The SMS is longer than one 160-septet message.
    #[error("sms: {septets} septets, more than the 160 of one message")]
    SmsTooLong {
        /// Septets counted (extension characters count 2).
        septets: usize,
    },
    /// The e-mail subject template used a code placeholder.
    #[error("template {name}: a code may not appear in an e-mail subject")]
    CodeInSubject {
        /// Template name.
        name: String,
    },
    /// A print file was finished without a page.
    #[error("pdf: a print file needs at least one page")]
    NoPages,
    /// Writing the PDF failed.
    #[error("pdf output: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// The layout problem, if this error is about the mailer's own name or address (not the
    /// templates, the plan or the output).
    pub fn layout(&self) -> Option<&LayoutError> {
        match self {
            Error::Layout(e) => Some(e),
            _ => None,
        }
    }
}

/// Why one mailer cannot be laid out. The message names the field (`holder name`,
/// `address line 2`) and never its text: a name or address is personal data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LayoutError {
    /// A character of the name or address has no glyph in the embedded fonts (they cover
    /// Latin, Greek and Cyrillic).
    #[error("{field}: character U+{code:04X} at position {position} cannot be printed (no glyph in the embedded fonts)")]
    Unprintable {
        /// Which text (`holder name`, `address line 2`).
        field: String,
        /// The Unicode scalar value.
        code: u32,
        /// Character position in the text (0-based).
        position: usize,
    },
    /// A word of the name or address is wider than the envelope window, so the line cannot be
    /// wrapped to fit.
    #[error("{field}: a word is wider than the envelope window")]
    TooWide {
        /// Which text.
        field: String,
    },
    /// The name and address, wrapped to the window, take more lines than it holds.
    #[error("address: {lines} lines do not fit the envelope window (room for {room})")]
    TooManyLines {
        /// Lines needed after wrapping.
        lines: usize,
        /// Lines the window holds.
        room: usize,
    },
}
