//! Rendering a mailer: one part of a card's codes, for one holder, on one channel.
//!
//! A [`Mailer`] names the addressee, the card and the [`PartCodes`] to render; a [`Renderer`]
//! turns it into a [`Rendered`] output. Three renderers share the seam:
//!
//! - [`pdf::PrintRenderer`]: one A4 page a mailer, streamed into print files by
//!   [`pdf::PdfWriter`] (the renderer's `render` makes a one-page PDF, e.g. for the counter);
//! - [`email::EmailRenderer`]: subject, text and HTML bodies (no sending);
//! - [`sms::SmsRenderer`]: one GSM-7 message of at most 160 septets.
//!
//! Each renderer templates once per *shape* of mailer and fills in the per-mailer values and
//! the codes per mailer (print pages in [`pdf`], e-mail and SMS texts in [`prepared`]).
//!
//! Texts come from [`templates::Templates`]; positions and sizes of the page from
//! [`layout::Layout`].
//!
//! ## How digits stay out of templates
//!
//! The template context holds placeholders (a private-use character and a tag) in place of the
//! codes. After templating, the templates module copies the text into a
//! [`crate::secret::SecretText`] sized once, putting the digits in place of the placeholders. So minijinja's
//! own buffers and values never hold a digit, and a template error cannot echo one.

pub mod consent;
pub mod email;
mod font;
pub mod layout;
pub mod marks;
pub mod pdf;
mod pdfa;
pub mod prepared;
pub mod sms;
pub mod templates;

use crate::error::Result;
use crate::plan::PartCodes;
use crate::secret::SecretBuf;
use std::fmt;

/// The holder a mailer is addressed to: the name and the postal address lines.
#[derive(Clone, PartialEq, Eq)]
pub struct Addressee {
    /// Full name as printed (e.g. `Niccolò D’Aragona`).
    pub name: String,
    /// Postal address lines after the name (street, postcode and town, …).
    pub address: Vec<String>,
}

impl fmt::Debug for Addressee {
    // Personal data: shown by size only, like the codes, so that a debug log of a job does not
    // turn into a copy of the registry.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Addressee(<personal data>, {} address lines)",
            self.address.len()
        )
    }
}

/// What a renderer renders: one part of one card's codes for one addressee.
#[derive(Clone, Copy)]
pub struct Mailer<'a> {
    /// The holder.
    pub addressee: &'a Addressee,
    /// The card serial in full; renderers print only [`mask_serial`] of it.
    pub card_serial: &'a str,
    /// The digits of this part.
    pub codes: &'a PartCodes,
    /// The mailer number (for print-file reconciliation), if one is assigned.
    pub number: Option<u64>,
}

impl fmt::Debug for Mailer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mailer")
            .field("addressee", self.addressee)
            .field("card_serial", &mask_serial(self.card_serial))
            .field("codes", self.codes)
            .field("number", &self.number)
            .finish()
    }
}

/// A rendered mailer, ready for a courier.
///
/// # Security
/// Every variant holds codes in zeroizing buffers and has a redacted `Debug`.
#[derive(Debug)]
pub enum Rendered {
    /// A complete PDF document.
    Pdf(SecretBuf),
    /// An e-mail message.
    Email(email::EmailMessage),
    /// An SMS.
    Sms(sms::SmsMessage),
}

/// Turns a [`Mailer`] into a message for one channel.
///
/// Implementations are cheap to share (`Arc<dyn Renderer>`) and are called from rayon workers.
pub trait Renderer: Send + Sync + fmt::Debug {
    /// The channel's name: `"print"`, `"email"` or `"sms"`.
    fn channel(&self) -> &'static str;

    /// Renders one mailer.
    ///
    /// # Errors
    /// Template errors, text that the channel cannot carry (no glyph in the embedded fonts for print, GSM-7 for
    /// SMS), an address that does not fit the window, an SMS over 160 septets.
    ///
    /// # Security
    /// The output holds the digits; it is zeroized on drop.
    fn render(&self, mailer: &Mailer<'_>) -> Result<Rendered>;
}

/// Masks a card serial for print and messages: the first four and last four characters stay,
/// every other character becomes `•`, in groups of four (`8039 •••• •••• 1234`).
///
/// Serials shorter than 12 characters keep only their last quarter visible (at least half of
/// any serial is always hidden). Blanks in the input are ignored.
pub fn mask_serial(serial: &str) -> String {
    let chars: Vec<char> = serial.chars().filter(|c| !c.is_whitespace()).collect();
    let len = chars.len();
    let (head, tail) = if len >= 12 { (4, 4) } else { (0, len / 4) };
    let mut out = String::with_capacity(len * 4);
    for (i, c) in chars.iter().enumerate() {
        if i > 0 && i % 4 == 0 {
            out.push(' ');
        }
        out.push(if i < head || i >= len - tail {
            *c
        } else {
            '•'
        });
    }
    out
}

/// The last four characters of the serial, for messages that show only those.
pub(crate) fn serial_last4(serial: &str) -> String {
    let chars: Vec<char> = serial.chars().filter(|c| !c.is_whitespace()).collect();
    let len = chars.len();
    if len >= 12 {
        chars[len - 4..].iter().collect()
    } else {
        chars[len - len / 4..].iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_masked() {
        assert_eq!(mask_serial("8039000012341234"), "8039 •••• •••• 1234");
        assert_eq!(
            mask_serial("80380001 00123456 7890"),
            "8038 •••• •••• •••• 7890"
        );
        assert_eq!(mask_serial("12345678"), "•••• ••78");
        assert_eq!(mask_serial("123"), "•••");
        assert_eq!(mask_serial(""), "");
        assert_eq!(serial_last4("8039000012341234"), "1234");
        assert_eq!(serial_last4("12345678"), "78");
    }
}
