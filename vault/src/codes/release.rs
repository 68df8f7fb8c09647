//! The audited release: the only way to clear codes out of the vault.
//!
//! Code access is a capability. Every `pub` function that hands out clear codes asks for a
//! [`Release`], a receipt that only the audit chain makes ([`crate::AuditLog::commit_release`],
//! [`crate::AuditLog::durable_release`]) once the events recording the release are written and
//! durable:
//!
//! - one card's codes: [`crate::CodeVault::pending_release`] finds and decrypts them into a
//!   [`PendingCodes`], which cannot be read; [`PendingCodes::open`] gives the codes only with
//!   a receipt whose events hold a [`CODES_RELEASE_ACTION`] event for that serial. So the
//!   checks and the decryption still come before the audit write (a card whose codes are not
//!   held is refused and nothing is written), and nothing leaves before it;
//! - a print run: [`crate::CodeVault::scan_batch`] reads a whole batch only with a receipt
//!   whose events hold a [`PRINT_RUN_ACTION`] event naming that batch (detail `batch`).
//!
//! The receipt's fields are private and it has no public constructor.

use super::record::CardCodes;
use super::BatchId;
use crate::audit::NewEvent;
use crate::error::{Refusal, Result};
use std::collections::BTreeSet;
use std::fmt;

/// The audit action of a card's code release (subject: the serial).
pub const CODES_RELEASE_ACTION: &str = "card.codes_release";

/// The audit action of the start of a print run of mailers (detail `batch`: the batch id,
/// or `mixed`).
pub const PRINT_RUN_ACTION: &str = "mailers.run_start";

/// Receipt of a durable audit write that recorded code releases: what it allows is what its
/// events say. Made only by the audit chain; required by whatever hands out clear codes.
#[derive(Debug)]
pub struct Release {
    /// Serials with a `card.codes_release` event.
    cards: BTreeSet<String>,
    /// Batches with a `mailers.run_start` event (detail `batch`).
    batches: BTreeSet<String>,
    /// Whether a print run started (a run of listed serials releases each of them).
    print_run: bool,
}

impl Release {
    /// The receipt for `events`, once they are durable (called by the audit chain only).
    pub(crate) fn of(events: &[NewEvent]) -> Release {
        let mut r = Release {
            cards: BTreeSet::new(),
            batches: BTreeSet::new(),
            print_run: false,
        };
        for e in events {
            if e.action == CODES_RELEASE_ACTION {
                r.cards.insert(e.subject.clone());
            } else if e.action == PRINT_RUN_ACTION {
                r.print_run = true;
                if let Some(b) = e.details.get("batch") {
                    r.batches.insert(b.clone());
                }
            }
        }
        r
    }

    /// Whether the receipt covers the codes of card `serial`: a release of that card, or a
    /// print run (which prints the cards it lists).
    fn covers_card(&self, serial: &str) -> bool {
        self.print_run || self.cards.contains(serial)
    }

    /// Whether the receipt covers reading the whole of batch `batch`: a print run of it.
    pub(crate) fn covers_batch(&self, batch: BatchId) -> bool {
        self.batches.contains(&batch.to_string())
    }
}

/// A card's codes, decrypted for a release but not readable until the release is audited:
/// [`PendingCodes::open`] with the [`Release`] receipt. Dropping it zeroizes the codes.
pub struct PendingCodes {
    serial: String,
    codes: CardCodes,
}

impl fmt::Debug for PendingCodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PendingCodes({}, <sealed>)", self.serial)
    }
}

impl PendingCodes {
    pub(crate) fn new(serial: &str, codes: CardCodes) -> Self {
        PendingCodes {
            serial: serial.to_owned(),
            codes,
        }
    }

    /// The card's serial.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// The codes, given the receipt of the audit write that released them.
    ///
    /// # Errors
    /// [`Refusal::ReleaseNotAudited`] if `receipt` records no release of this card (the codes are
    /// dropped, zeroized).
    pub fn open(self, receipt: &Release) -> Result<CardCodes> {
        if receipt.covers_card(&self.serial) {
            Ok(self.codes)
        } else {
            Err(Refusal::ReleaseNotAudited {
                card: self.serial.clone(),
            }
            .into())
        }
    }
}
