//! The SMS renderer: one message in the GSM 03.38 7-bit alphabet, at most 160 septets.
//!
//! After templating, the text is trimmed, line breaks become spaces, and characters outside
//! GSM-7 are transliterated where Italian text needs it (`À` → `A`, `’` → `'`, `•` → `*`,
//! `–` → `-`, …); any other character is an error naming its position. Characters of the
//! extension table (`€ [ ] { } ^ ~ \ |`) count two septets. A message over 160 septets is an
//! error rather than a split message, so that no code is ever cut across two SMS.
//!
//! The template is rendered once per *shape* of mailer and filled in per message (see
//! [`super::prepared`]); the text is then made GSM-7 as above, so the message and its errors
//! are those of [`SmsRenderer::render_sms_direct`], which templates every message.

use crate::error::{Error, Result};
use crate::render::prepared::{Escape, PreparedText, ShapeCache, Values};
use crate::render::templates::{Issuer, Templates, SMS};
use crate::render::{Mailer, Rendered, Renderer};
use crate::secret::SecretText;
use std::fmt;
use std::sync::Arc;

/// Septets in one SMS of the GSM 7-bit alphabet.
pub const MAX_SEPTETS: usize = 160;

/// A rendered SMS.
///
/// # Security
/// The text holds digits: zeroized on drop, redacted in `Debug`.
pub struct SmsMessage {
    /// The message, only GSM-7 characters.
    pub text: SecretText,
    /// Its length in septets (≤ 160).
    pub septets: usize,
}

impl fmt::Debug for SmsMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SmsMessage(<redacted>, {} septets)", self.septets)
    }
}

/// Renders SMS from the `sms.txt` template.
///
/// Clones share the prepared shapes; the renderer is meant to be shared (`Arc`) by every
/// thread that renders SMS.
#[derive(Debug, Clone)]
pub struct SmsRenderer {
    templates: Arc<Templates>,
    issuer: Issuer,
    shapes: Arc<ShapeCache<PreparedText>>,
}

impl SmsRenderer {
    /// An SMS renderer with these templates and issuer texts.
    pub fn new(templates: Arc<Templates>, issuer: Issuer) -> SmsRenderer {
        SmsRenderer {
            templates,
            issuer,
            shapes: Arc::default(),
        }
    }

    /// Renders one SMS: through the prepared text of its shape when it can (see
    /// [`super::prepared`]), else as [`SmsRenderer::render_sms_direct`]. The output is the
    /// same either way.
    ///
    /// # Errors
    /// [`Error::Template`], [`Error::NotGsm7`], [`Error::SmsTooLong`].
    pub fn render_sms(&self, mailer: &Mailer<'_>) -> Result<SmsMessage> {
        match self.render_prepared(mailer) {
            Some(raw) => to_gsm7(raw.expose_secret()),
            None => self.render_sms_direct(mailer),
        }
    }

    /// Renders one SMS by templating it for this mailer: the reference for the prepared
    /// path, and the path of templates that do not print the per-mailer values as they are.
    ///
    /// # Errors
    /// As [`SmsRenderer::render_sms`].
    pub fn render_sms_direct(&self, mailer: &Mailer<'_>) -> Result<SmsMessage> {
        let raw = self.templates.render(SMS, mailer, &self.issuer)?;
        to_gsm7(raw.expose_secret())
    }

    /// True if `mailer` renders through the prepared text of its shape (preparing it if it
    /// is the first of its shape); false if it takes the direct path.
    pub fn is_prepared(&self, mailer: &Mailer<'_>) -> bool {
        self.shape(mailer).is_some() && Values::of(mailer).is_some()
    }

    fn shape(&self, mailer: &Mailer<'_>) -> Option<Arc<PreparedText>> {
        self.shapes.get(mailer, || {
            PreparedText::prepare(&self.templates, &self.issuer, SMS, Escape::None, mailer)
        })
    }

    /// The templated text (before GSM-7), digits in place; `None` for the direct path.
    fn render_prepared(&self, mailer: &Mailer<'_>) -> Option<SecretText> {
        let shape = self.shape(mailer)?;
        shape.fill(&Values::of(mailer)?, mailer.codes)
    }
}

impl Renderer for SmsRenderer {
    fn channel(&self) -> &'static str {
        "sms"
    }

    fn render(&self, mailer: &Mailer<'_>) -> Result<Rendered> {
        self.render_sms(mailer).map(Rendered::Sms)
    }
}

/// Transliterates `text` to GSM-7 and counts its septets.
///
/// # Errors
/// [`Error::NotGsm7`] for a character with no GSM-7 form, [`Error::SmsTooLong`] over 160.
pub fn to_gsm7(text: &str) -> Result<SmsMessage> {
    let text = text.trim();
    let mut out = SecretText::with_capacity(text.len());
    let mut septets = 0;
    let mut last_space = false;
    // Characters kept as they are are copied in runs, `text[run..at]`, not one by one.
    let mut run = 0;
    for (position, (at, c)) in text.char_indices().enumerate() {
        let blank = c == '\n' || c == '\r' || c == '\t';
        let c = if blank { ' ' } else { c };
        // Line breaks of the template collapse with neighbouring blanks into one space.
        if c == ' ' && last_space {
            out.push_str(&text[run..at]);
            run = at + 1;
            continue;
        }
        last_space = c == ' ';
        let (kept, n) = match gsm7_septets(c) {
            Some(n) => (!blank, n),
            None => {
                let t = transliterate(c).ok_or(Error::NotGsm7 {
                    code: u32::from(c),
                    position,
                })?;
                out.push_str(&text[run..at]);
                out.push(t);
                run = at + c.len_utf8();
                septets += gsm7_septets(t).unwrap_or(1);
                continue;
            }
        };
        if !kept {
            // A line break or tab (one byte) becomes a space.
            out.push_str(&text[run..at]);
            out.push(' ');
            run = at + 1;
        }
        septets += n;
    }
    out.push_str(&text[run..]);
    if septets > MAX_SEPTETS {
        return Err(Error::SmsTooLong { septets });
    }
    Ok(SmsMessage { text: out, septets })
}

/// Septets of `c` in GSM-7: 1 in the basic table, 2 in the extension table, `None` if absent.
pub fn gsm7_septets(c: char) -> Option<usize> {
    if c.is_ascii() {
        // Most characters of a message: one table look-up.
        return match ASCII_SEPTETS[c as usize] {
            0 => None,
            n => Some(usize::from(n)),
        };
    }
    if BASIC.contains(c) {
        Some(1)
    } else if EXTENSION.contains(c) {
        Some(2)
    } else {
        None
    }
}

/// The basic table of GSM 03.38.
const BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
                     ¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
/// The extension table (two septets each: escape and character).
const EXTENSION: &str = "\u{c}^{}\\[~]|€";

/// Septets of each ASCII character (0: not in GSM-7), made from [`BASIC`] and [`EXTENSION`]:
/// in UTF-8 a byte below 0x80 is always a whole ASCII character.
const ASCII_SEPTETS: [u8; 128] = {
    let mut table = [0u8; 128];
    let ext = EXTENSION.as_bytes();
    let mut i = 0;
    while i < ext.len() {
        if ext[i] < 0x80 {
            table[ext[i] as usize] = 2;
        }
        i += 1;
    }
    let basic = BASIC.as_bytes();
    let mut i = 0;
    while i < basic.len() {
        if basic[i] < 0x80 {
            table[basic[i] as usize] = 1;
        }
        i += 1;
    }
    table
};

/// A GSM-7 stand-in for characters common in Italian names and texts.
fn transliterate(c: char) -> Option<char> {
    Some(match c {
        'À' | 'Á' | 'Â' | 'Ã' => 'A',
        'á' | 'â' | 'ã' => 'a',
        'È' | 'Ê' | 'Ë' => 'E',
        'ê' | 'ë' => 'e',
        'Ì' | 'Í' | 'Î' | 'Ï' => 'I',
        'í' | 'î' | 'ï' => 'i',
        'Ò' | 'Ó' | 'Ô' | 'Õ' => 'O',
        'ó' | 'ô' | 'õ' => 'o',
        'Ù' | 'Ú' | 'Û' => 'U',
        'ú' | 'û' => 'u',
        'ç' => 'Ç',
        'ý' | 'ÿ' => 'y',
        'Ý' => 'Y',
        '’' | '‘' | '`' | '´' => '\'',
        '“' | '”' | '«' | '»' => '"',
        '–' | '—' | '‐' | '‑' => '-',
        '•' | '·' => '*',
        '\u{a0}' => ' ',
        '…' => '.',
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn italian_text_becomes_gsm7() {
        let m = to_gsm7("Niccolò D’Àlessio è là: ÈÌÒÙ àèéìòù É").unwrap();
        assert_eq!(
            m.text.expose_secret(),
            "Niccolò D'Alessio è là: EIOU àèéìòù É"
        );
        assert_eq!(m.septets, 37);
        assert_eq!(to_gsm7("€ [x]").unwrap().septets, 8);
        assert_eq!(to_gsm7(" a\n  b \n").unwrap().text.expose_secret(), "a b");
        let e = to_gsm7("ok 你").unwrap_err();
        assert!(
            matches!(
                e,
                Error::NotGsm7 {
                    code: 0x4F60,
                    position: 3
                }
            ),
            "{e}"
        );
    }

    /// `to_gsm7` one character at a time, as it was first written.
    fn to_gsm7_reference(text: &str) -> Result<(String, usize)> {
        let mut out = String::new();
        let mut septets = 0;
        let mut last_space = false;
        for (position, c) in text.trim().chars().enumerate() {
            let c = if c == '\n' || c == '\r' || c == '\t' {
                ' '
            } else {
                c
            };
            if c == ' ' && last_space {
                continue;
            }
            last_space = c == ' ';
            let c = if gsm7_septets(c).is_some() {
                c
            } else {
                transliterate(c).ok_or(Error::NotGsm7 {
                    code: u32::from(c),
                    position,
                })?
            };
            septets += gsm7_septets(c).unwrap_or(1);
            out.push(c);
        }
        if septets > MAX_SEPTETS {
            return Err(Error::SmsTooLong { septets });
        }
        Ok((out, septets))
    }

    #[test]
    fn runs_are_copied_as_characters_would_be() {
        let pieces = [
            "a",
            " ",
            "  ",
            "\n",
            "\r\n",
            "\t",
            " \n ",
            "À",
            "’",
            "€",
            "[x]",
            "è",
            "\u{a0}",
            "\u{a0} ",
            " \u{a0}",
            "…",
            "Ç",
            "ç",
            "你",
            "`",
            "PIN 24680",
            "•",
        ];
        let mut n = 0;
        for a in pieces {
            for b in pieces {
                for c in pieces {
                    for text in [
                        format!("{a}{b}{c}"),
                        format!("x{a}y{b}z{c}w"),
                        format!(" {a}{b}\n{c} "),
                    ] {
                        let got =
                            to_gsm7(&text).map(|m| (m.text.expose_secret().to_owned(), m.septets));
                        match (got, to_gsm7_reference(&text)) {
                            (Ok(g), Ok(r)) => assert_eq!(g, r, "{text:?}"),
                            (Err(g), Err(r)) => {
                                assert_eq!(g.to_string(), r.to_string(), "{text:?}")
                            }
                            (g, r) => panic!("{text:?}: {g:?} {r:?}"),
                        }
                        n += 1;
                    }
                }
            }
        }
        assert!(n > 10_000);
    }

    #[test]
    fn ascii_table_agrees_with_the_alphabet() {
        for c in (0..0x3000).filter_map(char::from_u32) {
            let slow = if BASIC.contains(c) {
                Some(1)
            } else if EXTENSION.contains(c) {
                Some(2)
            } else {
                None
            };
            assert_eq!(gsm7_septets(c), slow, "{c:?}");
        }
        assert_eq!(gsm7_septets('a'), Some(1));
        assert_eq!(gsm7_septets('['), Some(2));
        assert_eq!(gsm7_septets('`'), None);
        assert_eq!(gsm7_septets('\t'), None);
    }

    #[test]
    fn length_limit_counts_extension_characters_twice() {
        assert_eq!(to_gsm7(&"a".repeat(160)).unwrap().septets, 160);
        assert!(matches!(
            to_gsm7(&"a".repeat(161)),
            Err(Error::SmsTooLong { septets: 161 })
        ));
        let s = format!("{}€", "a".repeat(159));
        assert!(matches!(
            to_gsm7(&s),
            Err(Error::SmsTooLong { septets: 161 })
        ));
    }
}
