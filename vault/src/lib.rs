//! # vault — PIN/PUK records under an HSM-style key hierarchy
//!
//! The vault owns everything that touches a code or a key on the host side:
//!
//! - [`secret`]: the secret carriers [`Pin`], [`Puk`], [`DataKey`], [`Plaintext`] — zeroized on
//!   drop, redacted in `Debug`, never `Display` or `Serialize`;
//! - [`policy`]: the code policy (digits only, lengths by configuration);
//! - [`hsm`]: the [`Hsm`] trait, the custody seam; root key and KEK terms stay behind it;
//! - [`keyring`]: data keys, stored wrapped under a KEK term, each with a [`Kcv`];
//! - [`envelope`]: the stored layout of one encrypted record (AES-256-GCM, AAD bound to the card
//!   serial, the data-key id and the purpose);
//! - [`store`]: the store seam (sled on disk, in-memory and fault-injecting doubles), atomic
//!   multi-tree batches;
//! - [`account`]: accounts, roles, bearer tokens and passwords;
//! - [`audit`]: the tamper-evident audit chain, written in the same batch as each change;
//! - [`ceremony`]: key ceremonies under dual control — proposals, approvals, the rotate /
//!   rewrap / retire / shred jobs, rekey, cryptoperiods and the key status report;
//! - [`codes`]: the code vault — batches laid out as sorted encrypted segments, committed all
//!   or nothing, found by serial;
//! - [`import`]: manufacturer files (parsing, age decryption) into the code vault;
//! - [`generate`]: uniform code generation by rejection sampling, in parallel.
//!
//! ```text
//! custodian shares ─▶ unseal key ─▶ root key ─▶ KEK terms ─▶ data keys ─▶ records
//! └──────────────── inside the Hsm ────────────────────────┘   (wrapped)   (envelopes)
//! ```
//!
//! What it does not do: networking, async, HTTP, configuration files. It is synchronous and is
//! called from the service through one `spawn_blocking` helper. It has no HSM of its own: the
//! software HSM lives in the `hsm-sim` crate, which depends on this one.

pub mod account;
pub mod audit;
pub mod ceremony;
pub mod codes;
pub mod envelope;
pub mod error;
pub mod generate;
pub mod hsm;
#[cfg(test)]
mod hsm_double;
pub mod import;
pub mod kcv;
pub mod keyring;
pub mod policy;
pub mod secret;
pub mod store;
pub mod text;

pub use account::{Account, AccountView, Accounts, Actor, Role};
pub use envelope::{DataKeyId, Envelope, Opener, Sealer};
pub use error::{Error, Result};
pub use hsm::{
    AuditAnchor, Hsm, HsmStatus, KeyPurpose, RekeyOutcome, ShareDelivery, TermId, TermInfo,
    TermState, UnsealProgress, WrappedKey,
};
pub use kcv::Kcv;
pub use keyring::{DataKeyRecord, Keyring, RewrapReport};
pub use policy::{CodeError, CodeKind, CodePolicy, LengthBounds};
pub use secret::{DataKey, FreshDataKey, Pin, Plaintext, Puk, KEY_LEN};
