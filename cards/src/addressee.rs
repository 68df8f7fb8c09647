//! The name and postal address of one card's holder, as a mailer prints them: for the
//! counter's single page (the bulk path gets them from [`super::PrintJob`]).

use super::mailers::address_lines;
use super::registry::Cards;
use vault::Hsm;
use vault::Result;

impl Cards {
    /// The holder of card `serial` as a mailer addresses them: the name (given names and
    /// surname) and the postal address lines (none if no address is registered). `None` when
    /// the card is not in the registry or its holder is missing.
    ///
    /// # Security
    /// Personal data in clear: render it at once and drop it. Not audited here; the caller's
    /// code release ([`Cards::release_codes`]) is.
    ///
    /// # Errors
    /// [`vault::Error::Sealed`]; store errors; a holder record that does not open.
    pub fn addressee_of(
        &self,
        hsm: &dyn Hsm,
        serial: &str,
    ) -> Result<Option<(String, Vec<String>)>> {
        let Some(card) = self.card(serial)? else {
            return Ok(None);
        };
        let Some(holder) = self.holder(&card.holder)? else {
            return Ok(None);
        };
        let personal = self.personal(hsm, &holder)?;
        let name = format!("{} {}", personal.given_names, personal.surname);
        let lines = personal
            .address
            .as_deref()
            .map(address_lines)
            .unwrap_or_default();
        Ok(Some((name, lines)))
    }
}
