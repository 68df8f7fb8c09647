//! The SMS renderer: one message in the GSM 03.38 7-bit alphabet, at most 160 septets.
//!
//! After templating, the text is trimmed, line breaks become spaces, and characters outside
//! GSM-7 are transliterated where Italian text needs it (`À` → `A`, `’` → `'`, `•` → `*`,
//! `–` → `-`, …); any other character is an error naming its position. Characters of the
//! extension table (`€ [ ] { } ^ ~ \ |`) count two septets. A message over 160 septets is an
//! error rather than a split message, so that no code is ever cut across two SMS.

use crate::error::{Error, Result};
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
#[derive(Debug, Clone)]
pub struct SmsRenderer {
    templates: Arc<Templates>,
    issuer: Issuer,
}

impl SmsRenderer {
    /// An SMS renderer with these templates and issuer texts.
    pub fn new(templates: Arc<Templates>, issuer: Issuer) -> SmsRenderer {
        SmsRenderer { templates, issuer }
    }

    /// Renders one SMS.
    ///
    /// # Errors
    /// [`Error::Template`], [`Error::NotGsm7`], [`Error::SmsTooLong`].
    pub fn render_sms(&self, mailer: &Mailer<'_>) -> Result<SmsMessage> {
        let raw = self.templates.render(SMS, mailer, &self.issuer)?;
        to_gsm7(raw.expose_secret())
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
    for (position, c) in text.chars().enumerate() {
        let c = if c == '\n' || c == '\r' || c == '\t' {
            ' '
        } else {
            c
        };
        // Line breaks of the template collapse with neighbouring blanks into one space.
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
    Ok(SmsMessage { text: out, septets })
}

/// Septets of `c` in GSM-7: 1 in the basic table, 2 in the extension table, `None` if absent.
pub fn gsm7_septets(c: char) -> Option<usize> {
    const BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
                         ¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
    const EXTENSION: &str = "\u{c}^{}\\[~]|€";
    if c.is_ascii_alphanumeric() || c == ' ' || BASIC.contains(c) {
        Some(1)
    } else if EXTENSION.contains(c) {
        Some(2)
    } else {
        None
    }
}

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
