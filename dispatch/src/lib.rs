//! # dispatch — rendering mailers and delivering them
//!
//! This crate turns a card's codes into what reaches its holder:
//!
//! - [`plan`]: delivery plans (`whole`, `counter(2)+sms`, …) and the cut of a card's codes into
//!   the parts each channel carries;
//! - [`render`]: the [`Renderer`] trait with a print renderer (PDF, streamed page by page through
//!   [`PdfWriter`]), an e-mail renderer (text + HTML) and an SMS renderer (GSM-7, ≤ 160);
//!   texts come from [minijinja](https://docs.rs/minijinja) templates that an operator can
//!   override from a directory, layout constants from a serde [`Layout`].
//!
//! - [`courier`]: the async [`Courier`] trait and its couriers: SMTP (lettre over this crate's
//!   own pool with TCP_NODELAY and a cap on connections), Kannel's `sendsms` (reqwest), and an
//!   insecure spool directory for `--dev`; a retry policy (backoff with full jitter) and a
//!   per-channel rate limit (governor). Couriers send once; retrying, job state and
//!   delivery-report callbacks belong to the service and the vault's outbox.
//!
//! It never depends on `vault`: codes cross from the vault to this crate in one visible place,
//! the service crate, by building [`Codes`] from the vault's `expose_secret()` bytes.
//!
//! ## Secrets
//!
//! Clear digits live only in zeroizing buffers ([`secret`]): fixed-size [`Digits`], and
//! [`SecretBuf`], a `Zeroizing<Vec<u8>>` that wipes its old allocation whenever it grows (a
//! plain `Vec` would leave a copy behind on reallocation). Templates never see a digit: they
//! receive placeholders that are replaced by the digits only after templating, directly into a
//! `SecretBuf`. Every type that carries codes has a redacted `Debug` and no `Display` or
//! `Serialize`.

#![deny(missing_docs)]

pub mod bulk;
pub mod courier;
pub mod error;
mod lock;
pub mod plan;
pub mod render;
pub mod secret;

pub use courier::{
    ConfigError, Courier, Destination, FailureReason, FailureScope, IdempotencyKey, Message,
    Outgoing, SendError, Sent,
};
pub use error::{Error, LayoutError, Result};
pub use plan::{Channel, Part, PartCodes, PartName, Plan, UnknownPart};
pub use render::consent::{render_consent_form, ConsentForm, FormLang, FormPurpose, Identified};
pub use render::email::{EmailMessage, EmailRenderer};
pub use render::layout::Layout;
pub use render::pdf::{PageStream, PdfWriter, PrintRenderer};
pub use render::sms::{SmsMessage, SmsRenderer};
pub use render::templates::{Issuer, Templates};
pub use render::{mask_serial, Addressee, Mailer, Rendered, Renderer};
pub use secret::{Codes, Digits, SecretBuf, SecretText};
