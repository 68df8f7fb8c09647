//! The card-management domain of plico: what the card management system and the counter do
//! with holders and cards, on top of the key vault.
//!
//! - holders: [`registry_parse`] reads holder registry files (CSV, JSON lines), checking the
//!   codice fiscale ([`codice_fiscale`]), e-mail and phone ([`contact`]) and dates ([`date`]);
//!   [`registry`] keeps holders (personal data sealed, found by keyed blind indexes only) and
//!   cards, and applies registry files all or nothing, revoking cards implicitly (deceased
//!   holder, replaced card, expiry);
//! - cards and lifecycle: [`card`] is the state machine; [`lifecycle`] the counter's changes,
//!   the expiry sweep, the status view and [`Cards::release_codes`], the only way to a card's
//!   codes (the gate no code passes for a card in the wrong state);
//! - [`outbox`] the durable outbox of code deliveries by SMS, e-mail and mailer: requests,
//!   jobs, claims, retries, receipts, fallback, resend and each part's state; [`outbox_release`]
//!   what a worker gets for one claimed job (codes, destination, name), through the audited
//!   gate; [`outbox_counter`] part A printed at the counter;
//! - [`mailers`] the mailers book: numbers, print files, voids on reprint, outcomes and the
//!   reconciliation per batch; [`addressee`] a holder as a mailer addresses them;
//! - [`reports`] the technical problem reports.
//!
//! How it uses `vault`: [`Cards`] is built over the vault's [`vault::codes::CodeVault`] and
//! shares its store (the trees `holders`, `cards`, `jobs`, … are vault's [`vault::store::Tree`]
//! names), seals personal data with the vault's keyring (key purpose `holder`), and writes every
//! change with its audit events in one commit of the vault's [`vault::audit::AuditLog`]. The
//! dependency points one way: vault does not know this crate; key ceremonies reach the cards
//! through the [`vault::ceremony::CardRegistry`] trait, which [`Cards`] implements
//! ([`ceremony`]), so that a forced shred revokes the cards that lose their codes in its own
//! write.

pub mod addressee;
pub mod card;
pub mod ceremony;
pub mod codice_fiscale;
pub mod contact;
pub mod date;
pub mod lifecycle;
pub mod mailers;
pub mod outbox;
pub mod outbox_counter;
pub mod outbox_release;
pub mod registry;
pub mod registry_parse;
pub mod reports;

pub use card::{CardState, Move, Reason};
pub use lifecycle::{Activation, CardStatus, Change};
pub use mailers::{
    MailerItem, MailerOutcome, MailerState, PrintJob, PrintRunRecord, Reconciliation, RecordedFile,
    Reprint, Selection,
};
pub use outbox::{
    Channel, DispatchHistory, DispatchPlan, DispatchRequest, Dispatched, Fallback, Job, JobState,
    OutboxPolicy, Part, PartDelivery, ReceiptOutcome,
};
pub use outbox_counter::{CounterPrint, CounterSlip};
pub use registry::{Cards, HolderView, PersonalData, RegistryOutcome, SearchKey};

#[cfg(test)]
mod mailer_tests;
#[cfg(test)]
mod outbox_release_tests;
#[cfg(test)]
mod outbox_tests;
#[cfg(test)]
mod tests;
