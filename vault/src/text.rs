//! Clean text: the one place that decides which characters of free text a person may be shown
//! (security rule 22).
//!
//! Free text from input (report titles and texts, comments, reasons, labels, names) ends up
//! on a terminal, a page or a PDF. A control character there is an injection: ESC starts
//! terminal escape sequences (colours, cursor moves, a new window title), BEL rings, CR
//! overwrites the line already shown, and the bidirectional overrides and isolates
//! (U+202A–U+202E, U+2066–U+2069) make text read in another order than it is stored.
//!
//! [`check`] refuses such text on input, naming the field and the character's position (never
//! repeating the text); [`escape`] makes stored or received text safe to print, for text that
//! was stored before the check existed, or that comes from elsewhere. Both use [`is_unsafe`].
//! Multi-line text ([`Kind::MultiLine`]) may hold newlines and tabs; a single line may not.

use std::borrow::Cow;
use std::fmt::Write as _;

/// What a text field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One line: a title, a name, a label, a reason.
    Line,
    /// Several lines: a report's text, a comment. Newline and tab are allowed.
    MultiLine,
}

/// True if `c` must not reach a reader as it is: C0 controls (but newline and tab in
/// multi-line text), DEL, C1 controls, and the bidirectional embeddings, overrides and
/// isolates.
pub fn is_unsafe(c: char, kind: Kind) -> bool {
    match c {
        '\n' | '\t' => kind == Kind::Line,
        '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' => true,
        c => c.is_control(),
    }
}

/// Why a text was refused: the field and the 1-based position of the first unsafe character.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: must not contain control or bidirectional-override characters (U+{code:04X} at character {position})")]
pub struct Unsafe {
    /// The field.
    pub field: String,
    /// The position of the first unsafe character, counted in characters from 1.
    pub position: usize,
    /// Its code point (control characters are never secrets, so it can be named).
    pub code: u32,
}

/// Refuses `text` if it holds an unsafe character ([`is_unsafe`]).
///
/// # Errors
/// [`Unsafe`] naming `field` and the first unsafe character's position.
pub fn check(field: &str, text: &str, kind: Kind) -> Result<(), Unsafe> {
    match text.chars().enumerate().find(|(_, c)| is_unsafe(*c, kind)) {
        Some((i, c)) => Err(Unsafe {
            field: field.to_owned(),
            position: i + 1,
            code: u32::from(c),
        }),
        None => Ok(()),
    }
}

/// `text` safe to print: every unsafe character ([`is_unsafe`]) written as `\u{…}` (so a
/// reader sees that something was there, and what). Borrowed when nothing needed escaping.
pub fn escape(text: &str, kind: Kind) -> Cow<'_, str> {
    if !text.chars().any(|c| is_unsafe(c, kind)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if is_unsafe(c, kind) {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn refuses_controls_and_bidi_overrides() {
        for bad in [
            "a\u{1b}[31m",
            "bell\u{7}",
            "over\rwrite",
            "\u{202E}gnp.exe",
            "x\u{2066}",
            "del\u{7f}",
            "c1\u{9b}",
        ] {
            assert!(check("title", bad, Kind::MultiLine).is_err(), "{bad:?}");
            assert!(!escape(bad, Kind::MultiLine)
                .chars()
                .any(|c| is_unsafe(c, Kind::MultiLine)));
        }
        let e = check("title", "ab\u{1b}", Kind::Line).unwrap_err();
        assert_eq!((e.position, e.code), (3, 0x1b));
        assert!(e.to_string().starts_with("title: "), "{e}");
    }

    #[test]
    fn newlines_and_tabs_only_in_multi_line_text() {
        assert!(check("text", "one\n\ttwo", Kind::MultiLine).is_ok());
        assert!(check("title", "one\ntwo", Kind::Line).is_err());
        assert_eq!(escape("a\nb", Kind::Line), "a\\u{a}b");
        assert_eq!(escape("a\nb", Kind::MultiLine), "a\nb");
        assert_eq!(escape("\u{1b}[2J", Kind::Line), "\\u{1b}[2J");
        assert!(matches!(escape("Zoë Ș", Kind::Line), Cow::Borrowed(_)));
    }
}
