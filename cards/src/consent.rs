//! The consent form printed at the counter for the citizen to sign: what it prints about the
//! card and its holder, and its audit event.
//!
//! [`Cards::print_consent_form`] checks the identification the operator typed (as an
//! activation checks it), the card's state (`issued`: the form consents to the activation;
//! `active`: to a re-identification, e.g. after a contact change), and that the holder is not
//! registered as deceased; opens the holder's personal data, lets the caller render the form,
//! and only if it was made appends one `card.consent_form` event (purpose, `by`, the consent
//! and delegation references, the delegate's codice fiscale as an HMAC). No code is read:
//! the form never carries a digit of a PIN or PUK.

use super::card::CardState;
use super::date::Date;
use super::lifecycle::Activation;
use super::registry::Cards;
use vault::{Actor, AuditLog, Hsm};
use vault::{Error, Refusal, Result, Subject};

/// What the form consents to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsentPurpose {
    /// The card is `issued`: its activation (and the delivery of its codes).
    Activation,
    /// The card is `active`: the holder identified again (a contact changed).
    Reidentification,
}

impl ConsentPurpose {
    /// `activation` or `reidentification` (the audit event's `purpose`).
    pub fn as_str(self) -> &'static str {
        match self {
            ConsentPurpose::Activation => "activation",
            ConsentPurpose::Reidentification => "reidentification",
        }
    }
}

/// The holder's data a consent form prints. Personal data: `Debug` shows none of it.
#[derive(Clone, PartialEq, Eq)]
pub struct ConsentSubject {
    /// The card serial (the form prints it masked).
    pub serial: String,
    /// Given names and surname.
    pub holder_name: String,
    /// The holder's codice fiscale.
    pub codice_fiscale: String,
    /// What the form consents to.
    pub purpose: ConsentPurpose,
}

impl std::fmt::Debug for ConsentSubject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsentSubject")
            .field("purpose", &self.purpose)
            .finish_non_exhaustive()
    }
}

impl Cards {
    /// Makes the consent form of card `serial` for the identification `who` (see the module
    /// docs): `render` gets the holder's data and makes the form; if it fails, nothing is
    /// recorded and its error comes back as the inner `Err`.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the field of a bad identification; `Missing::Card` for an
    /// unknown card; [`Error::WrongState`] for a card neither `issued` nor `active` (an expired
    /// card is revoked on the way, as on every access); `Refusal::HolderDeceased`;
    /// [`Error::Sealed`]; store and audit errors.
    #[allow(clippy::too_many_arguments)] // as `print_counter_part`: the vault's handles and a renderer
    pub fn print_consent_form<T, E>(
        &self,
        hsm: &dyn Hsm,
        audit: &AuditLog,
        serial: &str,
        who: &Activation,
        today: Date,
        actor: &Actor,
        render: impl FnOnce(&ConsentSubject) -> std::result::Result<T, E>,
    ) -> Result<std::result::Result<T, E>> {
        who.check()?;
        let subject = {
            let _ops = self.ops_lock();
            let card = self.required_card(serial)?;
            let card = self.expire_on_access(audit, card, today, actor)?;
            let purpose = match card.state {
                CardState::Issued => ConsentPurpose::Activation,
                CardState::Active => ConsentPurpose::Reidentification,
                other => {
                    return Err(Error::WrongState {
                        subject: Subject::Card(serial.to_owned()),
                        state: other.to_string(),
                        wanted: "issued or active".to_string(),
                    })
                }
            };
            let holder = self
                .holder(&card.holder)?
                .ok_or_else(|| Error::Storage(format!("holder {} is missing", card.holder)))?;
            if holder.deceased {
                return Err(Refusal::HolderDeceased {
                    card: serial.to_owned(),
                }
                .into());
            }
            let personal = self.personal(hsm, &holder)?;
            ConsentSubject {
                serial: serial.to_owned(),
                holder_name: format!("{} {}", personal.given_names, personal.surname),
                codice_fiscale: personal.codice_fiscale.clone(),
                purpose,
            }
        };
        let made = match render(&subject) {
            Ok(made) => made,
            Err(e) => return Ok(Err(e)),
        };
        let mut event = actor
            .event("card.consent_form", serial.to_string())
            .detail("purpose", subject.purpose.as_str());
        event = match who {
            Activation::Holder { consent_ref, .. } => event
                .detail("by", "holder")
                .detail("consent_ref", consent_ref.trim()),
            Activation::Delegate {
                consent_ref,
                delegation_ref,
                codice_fiscale,
                ..
            } => {
                let cf = super::codice_fiscale::normalise(codice_fiscale).map_err(|why| {
                    Error::Invalid(format!("activation: delegate codice_fiscale: {why}"))
                })?;
                event
                    .detail("by", "delegate")
                    .detail("consent_ref", consent_ref.trim())
                    .detail("delegation_ref", delegation_ref.trim())
                    .personal("delegate_codice_fiscale", &cf)
            }
        };
        audit.append(event)?;
        Ok(Ok(made))
    }
}
