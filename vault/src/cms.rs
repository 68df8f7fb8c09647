//! Card lifecycle and the holder registry (issue 5): what the card management system and the
//! counter do with cards, and the gate no code passes for a card in the wrong state.
//!
//! - [`registry_parse`] reads holder registry files (CSV, JSON lines), checking the codice
//!   fiscale ([`codice_fiscale`]), e-mail and phone ([`contact`]) and dates ([`date`]);
//! - [`registry`] keeps holders (personal data sealed, found by keyed blind indexes only) and
//!   cards, and applies registry files all or nothing, revoking cards implicitly (deceased
//!   holder, replaced card, expiry);
//! - [`card`] is the state machine; [`lifecycle`] the counter's changes, the expiry sweep, the
//!   status view and [`registry::Cms::release_codes`], the only way to a card's codes;
//! - [`mailers`] printed mailers: numbers, print files, voids on reprint, outcomes and the
//!   reconciliation per batch;
//! - [`outbox`] the durable outbox of code deliveries by SMS, e-mail and mailer: requests,
//!   jobs, claims, retries, receipts, fallback, resend and each part's state; [`outbox_release`]
//!   what a worker gets for one claimed job (codes, destination, name), through the audited gate;
//! - [`reports`] the technical problem reports.

pub mod addressee;
pub mod card;
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
pub use registry::{Cms, HolderView, PersonalData, RegistryOutcome, SearchKey};

#[cfg(test)]
mod mailer_tests;
#[cfg(test)]
mod outbox_release_tests;
#[cfg(test)]
mod outbox_tests;
#[cfg(test)]
mod tests;
