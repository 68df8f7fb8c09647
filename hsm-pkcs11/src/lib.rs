//! # hsm-pkcs11 — plico's HSM on a real PKCS#11 token
//!
//! [`Pkcs11Hsm`] implements [`vault::Hsm`] on any PKCS#11 token (a network HSM such as Thales
//! Luna, Utimaco or nShield; SoftHSM2 in tests) through `cryptoki`:
//!
//! ```text
//! custodian shares ──combine──▶ secret ──HKDF──▶ token user PIN ──C_Login──▶ token
//!                                                   root key   (AES-256, CMAC of the state object)
//!                                                   KEK terms  (5 AES-256 wrapping keys each, one per purpose)
//!                                                     └─ RFC 5649 (C_WrapKey / C_UnwrapKey) ─▶ data keys, stored wrapped
//! ```
//!
//! - [`token`]: the module context, the token found by label, the session pool, the mechanism.
//! - [`state`]: the public state object (share set, terms, anchor, generation), CMAC'd.
//! - [`hsm`]: the HSM itself: init, unseal, data keys, rotate, retire, rekey, seal.
//! - [`testing`]: a throw-away SoftHSM2 token for tests and benches.
//!
//! It does not keep any key outside the token except the data keys the host needs for envelope
//! encryption (as the trait requires); the wrapped-key format is the simulator's, so the
//! algorithm ("RFC5649"), not the mechanism number, is what a stored key depends on.

pub mod hsm;
pub mod state;
pub mod testing;
pub mod token;

pub use hsm::{InitOptions, InitReport, Pkcs11Hsm};
pub use state::TokenFacts;
pub use token::{Pkcs11Config, WrapMechanism};
