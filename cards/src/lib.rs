//! The card-management domain of plico: what the card management system and the counter do
//! with holders and cards, on top of the key vault.
//!
//! - holders: `registry_parse` reads holder registry files (CSV, JSON lines), checking the
//!   codice fiscale (`codice_fiscale`), e-mail and phone (`contact`) and dates (`date`);
//!   `registry` keeps holders (personal data sealed, found by keyed blind indexes only) and
//!   cards, and applies registry files all or nothing, revoking cards implicitly (deceased
//!   holder, replaced card, expiry);
//! - cards and lifecycle: `card` is the state machine; `lifecycle` the counter's changes,
//!   the expiry sweep, the status view and [`Cards::release_codes`], the only way to a card's
//!   codes (the gate no code passes for a card in the wrong state);
//! - `outbox` the durable outbox of code deliveries by SMS, e-mail and mailer: requests,
//!   jobs, claims, retries, receipts, fallback, resend and each part's state; `outbox_release`
//!   what a worker gets for one claimed job (codes, destination, name), through the audited
//!   gate; `outbox_counter` part A printed at the counter;
//! - `mailers` the mailers book: numbers, print files, voids on reprint, outcomes and the
//!   reconciliation per batch; `addressee` a holder as a mailer addresses them;
//! - `reports` the technical problem reports.
//!
//! How it uses `vault`: [`Cards`] is built over the vault's [`vault::CodeVault`] and
//! shares its store (the trees `holders`, `cards`, `jobs`, … are vault's [`vault::Tree`]
//! names), seals personal data with the vault's keyring (key purpose `holder`), and writes every
//! change with its audit events in one commit of the vault's [`vault::AuditLog`]. The
//! dependency points one way: vault does not know this crate; key ceremonies reach the cards
//! through the [`vault::CardRegistry`] trait, which [`Cards`] implements
//! (module `ceremony`), so that a forced shred revokes the cards that lose their codes in its own
//! write.

//! The modules are private; what the service uses is re-exported below, grouped as above.

mod addressee;
mod card;
mod ceremony;
mod codice_fiscale;
mod consent;
mod contact;
mod date;
mod lifecycle;
mod mailers;
mod outbox;
mod outbox_counter;
mod outbox_release;
mod registry;
mod registry_parse;
mod reports;

// Holders: registry files, the codice fiscale, contacts, dates.
pub use codice_fiscale::{
    check_character, normalise as normalise_codice_fiscale, CodiceFiscaleError,
};
pub use date::{Date, DateError};
pub use registry::{
    CardRecord, Cards, HolderView, PersonalData, RegistryOutcome, SearchKey, MAX_SEARCH,
};
pub use registry_parse::{
    normalise_name, parse_registry, CardEntry, HolderEntry, RegistryFailure, RegistryProblem,
    RegistryReport, RegistryRules,
};

// Cards and their lifecycle.
pub use card::{CardState, Move, Reason};
pub use lifecycle::{Activation, CardStatus, Change};
// The consent form printed at the counter.
pub use consent::{ConsentPurpose, ConsentSubject};

// The outbox of code deliveries.
pub use outbox::{
    Channel, DispatchHistory, DispatchPlan, DispatchRequest, Dispatched, Fallback, Job, JobState,
    OutboxPolicy, Part, PartDelivery, ReceiptOutcome, BOUNCED,
};
pub use outbox_counter::{CounterPrint, CounterSlip};
pub use outbox_release::{JobRelease, ReleaseDestination};

// The mailers book.
pub use mailers::{
    address_lines, MailerItem, MailerOutcome, MailerState, PrintJob, PrintRunRecord,
    Reconciliation, RecordedFile, Reprint, Selection, MAX_LISTED_SERIALS,
};

// Technical problem reports.
pub use reports::{Report, ReportState, ReportStep};

#[cfg(test)]
mod mailer_tests;
#[cfg(test)]
mod outbox_release_tests;
#[cfg(test)]
mod outbox_tests;
#[cfg(test)]
mod tests;
