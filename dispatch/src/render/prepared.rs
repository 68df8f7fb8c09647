//! Prepared texts: e-mail and SMS templates rendered once per *shape*, filled in per message.
//!
//! What a message's text depends on, besides the codes, is the holder's name, the serial texts
//! and the mailer number (per-mailer values) and its **shape**: the [`crate::Part`] (name, index,
//! count, digit ranges, channels), whether the card has a signature pair and whether the
//! mailer has a number (templates and issuer are fixed per renderer). So, as for print pages
//! (see [`super::pdf`]), each template is rendered once a shape with placeholders for the codes
//! **and** for `holder.name`, `card.serial_masked`, `card.serial_last4` and `number`, cut at
//! its placeholders into a `PreparedText`, and cached by the renderer (`ShapeCache`).
//! A message then only copies the static pieces and the values into a [`SecretText`] sized
//! once: no templating per message.
//!
//! Everything here is internal to the renderers; this module documents how they work.
//!
//! ## The same bytes as the direct path
//!
//! In a template that minijinja auto-escapes (`email.html`), a value is written escaped
//! exactly as minijinja escapes it ([`minijinja::HtmlEscape`], the function its auto-escape
//! calls: `< > & " ' /`); elsewhere as it is.
//!
//! At preparation, the probe mailers (names with accents and every HTML special character,
//! short and long; serials of different forms; numbers 0, 7 and a large one; the same as for
//! print pages) are rendered both ways, codes left as placeholders on both sides. If the texts differ (a template that
//! applies a filter to a value, marks it `safe`, or branches on it), the shape is not
//! preparable and its messages take the direct path. A mailer whose values a template could
//! treat differently from the probes' (an empty value, a blank at either end, a control
//! character, the placeholder mark) takes the direct path too, so that its output and its
//! errors are exactly the direct path's.
//!
//! A prepared text holds no digit and no personal data.

use crate::lock::{read_lock, write_lock};
use crate::plan::{Part, PartCodes};
use crate::render::templates::{
    code_digits, Issuer, Templates, LAST4_TAG, MARK, MASKED_TAG, NAME_TAG, NUMBER_TAG, PIN_TAG,
    PUK_TAG, SIG_PIN_TAG, SIG_PUK_TAG,
};
use crate::render::{mask_serial, serial_last4, Addressee, Mailer};
use crate::secret::SecretText;
use std::borrow::Cow;
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, RwLock};

/// Shapes cached by a renderer; more (never seen in practice) are rendered the direct way.
const MAX_SHAPES: usize = 64;

/// Probe mailers of the preparation check, for print pages ([`super::pdf`]) as for e-mail and
/// SMS texts: (name, serial, number). Together they hold every character minijinja's HTML
/// escaping changes, accented and typographic letters, upper and lower case, and values of
/// different lengths and forms (serials of 16, 9 and 20 characters, the 9 masked with no
/// visible head; numbers 0, 7 and a large one), so that a filter, a `safe` mark or a test on a
/// value shows.
const PROBES: [(&str, &str, u64); 4] = [
    ("Ada D'Lì <b>&amp;</b> \"Zoë\"", "1111222233334444", 0),
    (
        "Maria Giuseppina Ànnunziata Dell’Òlmo Ùbaldini di Castelfranchi Sforza & Figli / X",
        "987654321",
        1_234_567_890_123,
    ),
    ("Ada Lì", "1111222233334444", 7),
    (
        "Maria Giuseppina Ànnunziata Dell’Òlmo Ùbaldini di Castelfranchi Sforza",
        "98765432109876543210",
        1_234_567_890_123,
    ),
];

/// The probe check of a shape: true if, for every probe mailer (the shape of `mailer` with a
/// probe's values), `fill` (the prepared text with the probe's values filled in, code
/// placeholders left as they are) gives what template `name` renders for it directly, codes
/// left as placeholders on both sides (no digit is read here). False if either side fails.
pub(crate) fn probes_agree(
    templates: &Templates,
    issuer: &Issuer,
    name: &str,
    mailer: &Mailer<'_>,
    mut fill: impl FnMut(&Mailer<'_>) -> Option<String>,
) -> bool {
    PROBES.iter().all(|&(probe_name, serial, number)| {
        let who = Addressee {
            name: probe_name.to_owned(),
            address: Vec::new(),
        };
        let probe = Mailer {
            addressee: &who,
            card_serial: serial,
            codes: mailer.codes,
            number: mailer.number.map(|_| number),
        };
        let Ok(direct) = templates.render_placeholders(name, &probe, issuer) else {
            return false;
        };
        fill(&probe).is_some_and(|filled| filled == direct)
    })
}

/// How values are written into a template's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Escape {
    /// As they are (`.txt` templates).
    None,
    /// HTML-escaped as minijinja's auto-escape does (`.html` templates).
    Html,
}

/// What a template's output (a print page's, an e-mail's or an SMS's) depends on besides
/// per-mailer values and codes.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ShapeKey {
    part: Part,
    /// The card has a signature pair and the part has its digits.
    pub(crate) signature: bool,
    /// The mailer has a number.
    pub(crate) number: bool,
}

impl ShapeKey {
    pub(crate) fn of(m: &Mailer<'_>) -> ShapeKey {
        let part = &m.codes.part;
        ShapeKey {
            part: part.clone(),
            signature: m.codes.signature.is_some() && part.signature_digits.is_some(),
            number: m.number.is_some(),
        }
    }
}

/// The prepared shapes of a renderer (`None`: not preparable), shared by every thread that
/// renders with it (print pages, e-mail and SMS texts).
pub(crate) struct ShapeCache<T>(RwLock<Vec<(ShapeKey, Option<Arc<T>>)>>);

impl<T> Default for ShapeCache<T> {
    fn default() -> ShapeCache<T> {
        ShapeCache(RwLock::new(Vec::new()))
    }
}

impl<T> fmt::Debug for ShapeCache<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = read_lock(&self.0).len();
        write!(f, "ShapeCache({n} shapes)")
    }
}

impl<T> ShapeCache<T> {
    /// The prepared shape of `mailer`, prepared now by `prepare` if it is the first of its
    /// shape; `None` if the shape is not preparable (or the cache is full).
    pub(crate) fn get(
        &self,
        mailer: &Mailer<'_>,
        prepare: impl FnOnce() -> Option<T>,
    ) -> Option<Arc<T>> {
        let key = ShapeKey::of(mailer);
        {
            let cache = read_lock(&self.0);
            if let Some((_, p)) = cache.iter().find(|(k, _)| *k == key) {
                return p.clone();
            }
            if cache.len() >= MAX_SHAPES {
                return None;
            }
        }
        // Prepared outside the lock; two threads may prepare the same shape, the first wins.
        let prepared = prepare().map(Arc::new);
        let mut cache = write_lock(&self.0);
        if let Some((_, p)) = cache.iter().find(|(k, _)| *k == key) {
            return p.clone();
        }
        if cache.len() < MAX_SHAPES {
            cache.push((key, prepared.clone()));
        }
        prepared
    }
}

/// A piece of a prepared text.
#[derive(Clone, Copy)]
enum Piece {
    /// Static text: a range of [`PreparedText::text`].
    Text(usize, usize),
    /// A per-mailer value (its tag).
    Value(u8),
    /// A code (its tag).
    Code(u8),
}

/// One template's output for one shape, cut at its placeholders.
pub(crate) struct PreparedText {
    /// The static text, placeholders removed.
    text: String,
    pieces: Vec<Piece>,
    escape: Escape,
    /// How many times each value is printed: name, masked serial, last four, number.
    uses: [usize; 4],
}

impl fmt::Debug for PreparedText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PreparedText({} bytes, {} pieces)",
            self.text.len(),
            self.pieces.len()
        )
    }
}

fn value_index(tag: u8) -> Option<usize> {
    match tag {
        NAME_TAG => Some(0),
        MASKED_TAG => Some(1),
        LAST4_TAG => Some(2),
        NUMBER_TAG => Some(3),
        _ => None,
    }
}

impl PreparedText {
    /// Prepares template `name` for the shape of `mailer` (reading neither its digits nor its
    /// personal values); `None` if the template cannot be rendered with placeholders or does
    /// not print the per-mailer values as they are (the probe check).
    pub(crate) fn prepare(
        templates: &Templates,
        issuer: &Issuer,
        name: &str,
        escape: Escape,
        mailer: &Mailer<'_>,
    ) -> Option<PreparedText> {
        let shape = templates.render_shape(name, mailer, issuer).ok()?;
        let prepared = PreparedText::parse(&shape, escape)?;
        let agree = probes_agree(templates, issuer, name, mailer, |probe| {
            prepared.fill_marks(&Values::of(probe)?)
        });
        if !agree {
            return None;
        }
        Some(prepared)
    }

    /// Cuts a shape's text at its placeholders; `None` for a mark without a known tag (a
    /// filter changed a placeholder).
    fn parse(shape: &str, escape: Escape) -> Option<PreparedText> {
        let mut p = PreparedText {
            text: String::with_capacity(shape.len()),
            pieces: Vec::new(),
            escape,
            uses: [0; 4],
        };
        let mut split = shape.split(MARK);
        p.push_text(split.next().unwrap_or(""));
        for piece in split {
            let tag = piece.bytes().next()?;
            match tag {
                PIN_TAG | PUK_TAG | SIG_PIN_TAG | SIG_PUK_TAG => p.pieces.push(Piece::Code(tag)),
                _ => {
                    p.uses[value_index(tag)?] += 1;
                    p.pieces.push(Piece::Value(tag));
                }
            }
            // The tag is one ASCII byte, so index 1 is a character boundary.
            p.push_text(piece.get(1..)?);
        }
        Some(p)
    }

    fn push_text(&mut self, s: &str) {
        if !s.is_empty() {
            let start = self.text.len();
            self.text.push_str(s);
            self.pieces.push(Piece::Text(start, self.text.len()));
        }
    }

    /// True if the text has a code placeholder.
    pub(crate) fn has_codes(&self) -> bool {
        self.pieces.iter().any(|p| matches!(p, Piece::Code(_)))
    }

    fn slice(&self, r: Range<usize>) -> &str {
        // Ranges are made by `push_text` at character boundaries.
        self.text.get(r).unwrap_or("")
    }

    /// The text with `v` filled in and the code placeholders left as they are (for the probe
    /// check and for texts without codes); `None` if a value is missing.
    pub(crate) fn fill_marks(&self, v: &Values<'_>) -> Option<String> {
        let v = v.escaped(self.escape);
        let mut out = String::with_capacity(self.text.len() + v.bytes(&self.uses) + 16);
        for piece in &self.pieces {
            match *piece {
                Piece::Text(a, b) => out.push_str(self.slice(a..b)),
                Piece::Value(tag) => out.push_str(v.text(tag)?),
                Piece::Code(tag) => {
                    out.push(MARK);
                    out.push(char::from(tag));
                }
            }
        }
        Some(out)
    }

    /// The text with `v` and the digits of `codes` filled in, into a zeroizing text allocated
    /// once; `None` if a value or a code is missing (the direct path then reports it).
    pub(crate) fn fill(&self, v: &Values<'_>, codes: &PartCodes) -> Option<SecretText> {
        let v = v.escaped(self.escape);
        let mut size = self.text.len() + v.bytes(&self.uses);
        for piece in &self.pieces {
            if let Piece::Code(tag) = *piece {
                size += code_digits(codes, tag)?.len();
            }
        }
        let mut out = SecretText::with_capacity(size);
        for piece in &self.pieces {
            match *piece {
                Piece::Text(a, b) => out.push_str(self.slice(a..b)),
                Piece::Value(tag) => out.push_str(v.text(tag)?),
                Piece::Code(tag) => {
                    for &b in code_digits(codes, tag)?.expose_secret() {
                        out.push(char::from(b));
                    }
                }
            }
        }
        Some(out)
    }
}

/// A mailer's per-mailer values, as templates print them.
pub(crate) struct Values<'a> {
    name: Cow<'a, str>,
    masked: Cow<'a, str>,
    last4: Cow<'a, str>,
    number: Option<Cow<'a, str>>,
}

/// A value a template treats as it treats the probes' values: not empty, no blank at either
/// end, no control character (tab, line break…), no placeholder mark.
fn plain(s: &str) -> bool {
    !s.is_empty() && s.trim().len() == s.len() && !s.chars().any(|c| c.is_control() || c == MARK)
}

/// `s` escaped as minijinja's HTML auto-escape writes a string (it escapes only strings with
/// one of these bytes, with [`minijinja::HtmlEscape`]).
fn escape_html(s: &str) -> Cow<'_, str> {
    if s.bytes()
        .any(|b| matches!(b, b'<' | b'>' | b'&' | b'"' | b'\'' | b'/'))
    {
        Cow::Owned(minijinja::HtmlEscape(s).to_string())
    } else {
        Cow::Borrowed(s)
    }
}

impl<'a> Values<'a> {
    /// The values of `m`; `None` if one of them must take the direct path (see [`plain`]).
    pub(crate) fn of(m: &Mailer<'a>) -> Option<Values<'a>> {
        let name = m.addressee.name.as_str();
        let masked = mask_serial(m.card_serial);
        let last4 = serial_last4(m.card_serial);
        if !(plain(name) && plain(&masked) && plain(&last4)) {
            return None;
        }
        Some(Values {
            name: Cow::Borrowed(name),
            masked: Cow::Owned(masked),
            last4: Cow::Owned(last4),
            number: m.number.map(|n| Cow::Owned(n.to_string())),
        })
    }

    /// The values as a template with `escape` prints them.
    fn escaped(&self, escape: Escape) -> Values<'_> {
        fn e(s: &str, escape: Escape) -> Cow<'_, str> {
            match escape {
                Escape::None => Cow::Borrowed(s),
                Escape::Html => escape_html(s),
            }
        }
        Values {
            name: e(&self.name, escape),
            masked: e(&self.masked, escape),
            last4: e(&self.last4, escape),
            // Digits only: minijinja writes a number as it is.
            number: self.number.as_ref().map(|n| Cow::Borrowed(n.as_ref())),
        }
    }

    fn text(&self, tag: u8) -> Option<&str> {
        match tag {
            NAME_TAG => Some(&self.name),
            MASKED_TAG => Some(&self.masked),
            LAST4_TAG => Some(&self.last4),
            NUMBER_TAG => self.number.as_deref(),
            _ => None,
        }
    }

    /// Bytes of the values in a text that prints them `uses` times.
    fn bytes(&self, uses: &[usize; 4]) -> usize {
        uses[0] * self.name.len()
            + uses[1] * self.masked.len()
            + uses[2] * self.last4.len()
            + uses[3] * self.number.as_ref().map_or(0, |n| n.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_escaping_is_minijinjas() {
        let mut env = minijinja::Environment::new();
        env.add_template("t.html", "{{ v }}").unwrap();
        let t = env.get_template("t.html").unwrap();
        for s in [
            "D'Aragona",
            "<b>Zoë</b> & Co",
            "\"x\" / y",
            "plain Niccolò",
            "&amp;&#x27;",
            "a>b<c",
        ] {
            let direct = t.render(minijinja::context! { v => s }).unwrap();
            assert_eq!(escape_html(s), direct, "{s}");
        }
        assert!(matches!(escape_html("Ada Lì"), Cow::Borrowed(_)));
    }

    #[test]
    fn values_that_templates_could_treat_differently_are_not_plain() {
        for s in [
            "",
            " Ada",
            "Ada ",
            "Ada\tNeri",
            "Ada\nNeri",
            "Ada\u{E000}n",
            "\u{a0}Ada",
        ] {
            assert!(!plain(s), "{s:?}");
        }
        for s in ["Ada", "Niccolò D’Aragona", "D'Aragona <&>\"/", "A  B"] {
            assert!(plain(s), "{s:?}");
        }
    }

    #[test]
    fn parse_refuses_a_changed_placeholder() {
        assert!(PreparedText::parse("x \u{E000}N y", Escape::None).is_none());
        assert!(PreparedText::parse("x \u{E000}", Escape::None).is_none());
        let p = PreparedText::parse("\u{E000}n: \u{E000}P/\u{E000}l", Escape::None).unwrap();
        assert_eq!(p.uses, [1, 0, 1, 0]);
        assert!(p.has_codes());
    }
}
