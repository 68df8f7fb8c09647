//! Changes of a card's state at the counter: activation (by the holder or a delegate),
//! suspension, reactivation, revocation; expiry on access and the daily sweep; the status view;
//! and the gate every code delivery goes through.

use super::card::{CardState, Move, Reason};
use super::date::Date;
use super::registry::{encode, ActivationRecord, CardRecord, Cards};
use serde::{Deserialize, Serialize};
use std::fmt;
use vault::Actor;
use vault::Hsm;
use vault::{AuditLog, NewEvent};
use vault::{Batch, Tree};
use vault::{CardCodes, PendingCodes, CODES_RELEASE_ACTION};
use vault::{Error, Missing, Refusal, Result};

/// Who collects the card, and the documents seen at the counter.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum Activation {
    /// The holder in person.
    Holder {
        /// Identity document type (`carta_identita`, `passaporto`, `patente`, …).
        document_type: String,
        /// Its number.
        document_number: String,
        /// Reference of the signed consent form (id or hash).
        consent_ref: String,
    },
    /// A delegate (a parent for a minor is a delegate).
    Delegate {
        /// The delegate's given name(s).
        given_names: String,
        /// The delegate's surname.
        surname: String,
        /// The delegate's codice fiscale.
        codice_fiscale: String,
        /// The delegate's identity document type.
        document_type: String,
        /// Its number.
        document_number: String,
        /// Reference of the delegation form.
        delegation_ref: String,
        /// Reference of the signed consent form.
        consent_ref: String,
    },
}

impl fmt::Debug for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Activation::Holder { .. } => f.write_str("Activation::Holder(<personal>)"),
            Activation::Delegate { .. } => f.write_str("Activation::Delegate(<personal>)"),
        }
    }
}

impl Activation {
    pub(crate) fn check(&self) -> Result<()> {
        let field = |name: &str, v: &str, max: usize| -> Result<()> {
            let v = v.trim();
            if v.is_empty()
                || v.chars().count() > max
                || vault::text::check(name, v, vault::text::Kind::Line).is_err()
            {
                return Err(Error::Invalid(format!(
                    "activation: {name} must be 1 to {max} printable characters"
                )));
            }
            Ok(())
        };
        match self {
            Activation::Holder {
                document_type,
                document_number,
                consent_ref,
            } => {
                field("document_type", document_type, 40)?;
                field("document_number", document_number, 40)?;
                field("consent_ref", consent_ref, 128)
            }
            Activation::Delegate {
                given_names,
                surname,
                codice_fiscale,
                document_type,
                document_number,
                delegation_ref,
                consent_ref,
            } => {
                field("given_names", given_names, 100)?;
                field("surname", surname, 100)?;
                super::codice_fiscale::normalise(codice_fiscale).map_err(|why| {
                    Error::Invalid(format!("activation: delegate codice_fiscale: {why}"))
                })?;
                field("document_type", document_type, 40)?;
                field("document_number", document_number, 40)?;
                field("delegation_ref", delegation_ref, 128)?;
                field("consent_ref", consent_ref, 128)
            }
        }
    }
}

/// What the counter asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// issued → active, with who collects it.
    Activate(Activation),
    /// active → suspended.
    Suspend(Reason),
    /// suspended → active.
    Reactivate,
    /// → revoked; the codes are deleted.
    Revoke(Reason),
    /// active → active: the holder (or a delegate) identified again at the counter, with the
    /// same documents as an activation. Needed before codes go to a contact that changed after
    /// the last identification (rule 13).
    Reidentify(Activation),
}

impl Change {
    fn movement(&self) -> Move {
        match self {
            Change::Activate(_) => Move::Activate,
            Change::Suspend(_) => Move::Suspend,
            Change::Reactivate => Move::Reactivate,
            Change::Revoke(_) => Move::Revoke,
            Change::Reidentify(_) => Move::Reidentify,
        }
    }
}

/// A card's status as shown to the counter and the CMS. No code, no personal datum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CardStatus {
    /// Serial.
    pub serial: String,
    /// State.
    pub state: CardState,
    /// Holder id.
    pub holder: String,
    /// Expiry.
    pub expiry: Option<Date>,
    /// Replacement card.
    pub replaced_by: Option<String>,
    /// Last reason.
    pub reason: Option<Reason>,
    /// `holder` or `delegate`, once activated.
    pub activated_by: Option<String>,
    /// Activation time (Unix ms).
    pub activated_ms: Option<u64>,
    /// Last change (Unix ms).
    pub changed_ms: u64,
    /// Whether plico holds the card's codes.
    pub codes_held: bool,
    /// Delivery state of each part of the codes, `(part, state)`, from [`CardStatus::parts`]
    /// (empty until a dispatch is asked for). The state is the latest job's
    /// ([`super::outbox::JobState`]), or `needs_counter_reprint` for a dead part so flagged.
    pub delivery: Vec<(String, String)>,
    /// The same, in detail: channel, attempts, job id, times.
    pub parts: Vec<super::outbox::PartDelivery>,
    /// Every dispatch of the card, oldest first, each with all its jobs (the last one is in
    /// force unless superseded).
    pub dispatches: Vec<super::outbox::DispatchHistory>,
    /// When the holder was last identified for this card (activation or re-identification).
    pub identified_ms: Option<u64>,
}

impl Cards {
    pub(crate) fn required_card(&self, serial: &str) -> Result<CardRecord> {
        self.card(serial)?
            .ok_or_else(|| Missing::Card(serial.to_owned()).into())
    }

    /// The card, `active` on `today` (an expired card is revoked on the way, as on every
    /// access), or [`Error::WrongState`] naming its state. Called with the ops lock held.
    pub(super) fn active_card(
        &self,
        audit: &AuditLog,
        serial: &str,
        today: Date,
        actor: &Actor,
    ) -> Result<CardRecord> {
        let card = self.required_card(serial)?;
        let card = self.expire_on_access(audit, card, today, actor)?;
        if card.state != CardState::Active {
            return Err(Error::WrongState {
                subject: format!("card {serial}"),
                state: card.state.to_string(),
                wanted: "active".to_string(),
            });
        }
        Ok(card)
    }

    /// Revokes `card` if it is past expiry on `today` (in its own commit, with its event), and
    /// returns the card as it now is. Called with the ops lock held.
    /// True for a card not yet revoked whose expiry is before `today`.
    fn expired_on(card: &CardRecord, today: Date) -> bool {
        card.state != CardState::Revoked && card.expiry.is_some_and(|e| e < today)
    }

    pub(crate) fn expire_on_access(
        &self,
        audit: &AuditLog,
        card: CardRecord,
        today: Date,
        actor: &Actor,
    ) -> Result<CardRecord> {
        if !Self::expired_on(&card, today) {
            return Ok(card);
        }
        let (card, event) = self.revoked(card, Reason::Expired, self.now_ms(), actor);
        let mut b = Batch::new();
        self.codes.delete_codes_into(&card.serial, &mut b);
        b.put(Tree::Cards, card.serial.as_bytes().to_vec(), encode(&card)?);
        audit.commit(b, event.detail("implicit", "expired_on_access"))?;
        Ok(card)
    }

    /// Changes a card's state. A move its state does not allow answers
    /// [`Error::WrongState`] naming the current state, and changes nothing (except that a card
    /// found past expiry is revoked first, as on every access). Revocation deletes the codes.
    /// State, code deletion and audit event are one store batch.
    ///
    /// # Errors
    /// [`Error::Missing`] for an unknown card; [`Error::WrongState`]; [`Error::Invalid`] for
    /// a bad activation; [`Error::Refusal`] to activate a card of a deceased holder;
    /// [`Error::Sealed`]; store and audit errors.
    pub fn change(
        &self,
        hsm: &dyn Hsm,
        audit: &AuditLog,
        serial: &str,
        change: &Change,
        today: Date,
        actor: &Actor,
    ) -> Result<CardStatus> {
        if let Change::Activate(a) | Change::Reidentify(a) = change {
            a.check()?;
        }
        let _ops = self.ops_lock();
        let card = self.required_card(serial)?;
        let mut card = self.expire_on_access(audit, card, today, actor)?;
        let m = change.movement();
        let Some(to) = m.from(card.state) else {
            return Err(Error::WrongState {
                subject: format!("card {serial}"),
                state: card.state.to_string(),
                wanted: m.needs().to_string(),
            });
        };
        let now = self.now_ms();
        let mut b = Batch::new();
        // The keyring lock, once the keyring is in `b`: held until `b` is committed.
        let mut keyring = None;
        let mut event = actor
            .event(m.action(), serial.to_string())
            .detail("from", card.state.to_string())
            .detail("to", to.to_string());
        match change {
            Change::Activate(a) | Change::Reidentify(a) => {
                let holder = self
                    .holder(&card.holder)?
                    .ok_or_else(|| Error::Storage(format!("holder {} is missing", card.holder)))?;
                if holder.deceased {
                    return Err(Refusal::HolderDeceased {
                        card: serial.to_owned(),
                    }
                    .into());
                }
                let clear = zeroize::Zeroizing::new(encode(a)?);
                let (key, sealed) = self.seal(hsm, audit, serial, &clear)?;
                keyring = self.note_encryptions(&mut b)?;
                let (by, consent_ref, delegation_ref) = match a {
                    Activation::Holder { consent_ref, .. } => ("holder", consent_ref, None),
                    Activation::Delegate {
                        consent_ref,
                        delegation_ref,
                        codice_fiscale,
                        ..
                    } => {
                        let cf =
                            super::codice_fiscale::normalise(codice_fiscale).map_err(|why| {
                                Error::Invalid(format!(
                                    "activation: delegate codice_fiscale: {why}"
                                ))
                            })?;
                        event = event.personal("delegate_codice_fiscale", &cf);
                        ("delegate", consent_ref, Some(delegation_ref.clone()))
                    }
                };
                event = event
                    .detail("by", by)
                    .detail("consent_ref", consent_ref.clone());
                if let Some(d) = &delegation_ref {
                    event = event.detail("delegation_ref", d.clone());
                }
                let record = ActivationRecord {
                    by: by.to_string(),
                    consent_ref: consent_ref.clone(),
                    delegation_ref,
                    sealed,
                    key,
                    at_ms: now,
                    operator: actor.id.clone(),
                };
                if let Change::Reidentify(_) = change {
                    card.reidentified = Some(record);
                } else {
                    card.activation = Some(record);
                    card.reason = None;
                }
            }
            Change::Suspend(r) => {
                card.reason = Some(*r);
                event = event.detail("reason", r.as_str());
            }
            Change::Reactivate => card.reason = None,
            Change::Revoke(r) => {
                card.reason = Some(*r);
                event = event
                    .detail("reason", r.as_str())
                    .detail("codes", "deleted");
                self.codes.delete_codes_into(serial, &mut b);
            }
        }
        if card.state != to {
            card.changed_ms = now;
        }
        card.state = to;
        b.put(Tree::Cards, serial.as_bytes().to_vec(), encode(&card)?);
        audit.commit(b, event)?;
        drop(keyring);
        self.status_of(&card)
    }

    /// A card's status (expired cards are revoked on the way, as on every access).
    ///
    /// # Errors
    /// [`Error::Missing`]; store and audit errors.
    pub fn status(
        &self,
        audit: &AuditLog,
        serial: &str,
        today: Date,
        actor: &Actor,
    ) -> Result<CardStatus> {
        {
            // The common case, a read: shared with other reads.
            let _ops = self.ops_shared();
            let card = self.required_card(serial)?;
            if !Self::expired_on(&card, today) {
                return self.status_of(&card);
            }
        }
        // Past its expiry: revoked now, as on every access, which is a change.
        let _ops = self.ops_lock();
        let card = self.required_card(serial)?;
        let card = self.expire_on_access(audit, card, today, actor)?;
        self.status_of(&card)
    }

    fn status_of(&self, card: &CardRecord) -> Result<CardStatus> {
        let parts = self.deliveries(&card.serial)?;
        Ok(CardStatus {
            serial: card.serial.clone(),
            state: card.state,
            holder: card.holder.clone(),
            expiry: card.expiry,
            replaced_by: card.replaced_by.clone(),
            reason: card.reason,
            activated_by: card.activation.as_ref().map(|a| a.by.clone()),
            activated_ms: card.activation.as_ref().map(|a| a.at_ms),
            changed_ms: card.changed_ms,
            codes_held: self.codes.locate(&card.serial)?.is_some(),
            delivery: parts
                .iter()
                .map(|p| (p.part.as_str().to_owned(), p.shown_state().to_owned()))
                .collect(),
            parts,
            dispatches: self.dispatches_of(&card.serial)?,
            identified_ms: card.identified_ms(),
        })
    }

    /// The gate of every code delivery: the card's codes, only for an `active` card whose codes
    /// are held. Audited as `card.codes_release` (the caller renders and sends at once).
    ///
    /// # Errors
    /// [`Error::WrongState`] for a card that is not active; [`Error::Refusal`] when its codes
    /// are gone; [`Error::Missing`]; [`Error::Sealed`]; store and audit errors.
    pub fn release_codes(
        &self,
        hsm: &dyn Hsm,
        audit: &AuditLog,
        serial: &str,
        purpose: &str,
        today: Date,
        actor: &Actor,
    ) -> Result<CardCodes> {
        let _ops = self.ops_lock();
        let (pending, event) = self.release_locked(hsm, audit, serial, purpose, today, actor)?;
        let receipt = audit.commit_release(Batch::new(), vec![event])?;
        pending.open(&receipt)
    }

    /// [`Cards::release_codes`] with the ops lock held by the caller, who commits the returned
    /// `card.codes_release` event ([`AuditLog::commit_release`]) and opens the codes with its
    /// receipt: they cannot go anywhere before.
    pub(super) fn release_locked(
        &self,
        hsm: &dyn Hsm,
        audit: &AuditLog,
        serial: &str,
        purpose: &str,
        today: Date,
        actor: &Actor,
    ) -> Result<(PendingCodes, NewEvent)> {
        self.active_card(audit, serial, today, actor)?;
        let codes =
            self.codes
                .pending_release(hsm, serial)?
                .ok_or_else(|| Refusal::CodesNotHeld {
                    card: serial.to_string(),
                })?;
        let event = actor
            .event(CODES_RELEASE_ACTION, serial.to_string())
            .detail("for", purpose.to_string());
        Ok((codes, event))
    }

    /// Revokes every card past its expiry on `today` (the daily sweep), `chunk` cards a
    /// commit, each with its `card.revoke` event. Returns the cards revoked.
    ///
    /// # Errors
    /// Store and audit errors (cards revoked before the error stay revoked).
    pub fn sweep_expired(
        &self,
        audit: &AuditLog,
        today: Date,
        actor: &Actor,
    ) -> Result<Vec<String>> {
        let mut revoked = Vec::new();
        let end = today.to_string().into_bytes();
        let mut from: Vec<u8> = Vec::new();
        loop {
            let keys = self.store.keys(Tree::CardExpiry, &from, Some(&end), 500)?;
            let Some(last) = keys.last() else { break };
            from = last.clone();
            from.push(0);
            let _ops = self.ops_lock();
            let mut b = Batch::new();
            let mut events = Vec::new();
            let now = self.now_ms();
            for k in &keys {
                let Some(bar) = k.iter().position(|&c| c == b'|') else {
                    continue;
                };
                let serial = String::from_utf8_lossy(&k[bar + 1..]).into_owned();
                let Some(card) = self.card(&serial)? else {
                    continue;
                };
                if card.state == CardState::Revoked || card.expiry.is_none_or(|e| e >= today) {
                    continue;
                }
                let (card, event) = self.revoked(card, Reason::Expired, now, actor);
                self.codes.delete_codes_into(&serial, &mut b);
                b.put(Tree::Cards, serial.as_bytes().to_vec(), encode(&card)?);
                events.push(event.detail("implicit", "expiry_sweep"));
                revoked.push(serial);
            }
            if !events.is_empty() {
                audit.commit_all(b, events)?;
            }
            if keys.len() < 500 {
                break;
            }
        }
        Ok(revoked)
    }
}
