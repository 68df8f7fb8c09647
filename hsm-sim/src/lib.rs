//! # hsm-sim — a software HSM for plico
//!
//! [`SimulatedHsm`] implements [`vault::Hsm`] the way a payment HSM or HashiCorp Vault's barrier
//! would, in software:
//!
//! ```text
//! custodian shares ──combine──▶ unseal secret ──HKDF──▶ unseal key
//!   (Shamir m-of-n, GF(2^8))                              │ AES-256-GCM
//!                                                          ▼
//!                                                     root key ──AES-256-GCM──▶ KEK terms
//!                                                                                 │ HKDF per purpose
//!                                                                                 ▼
//!                                                                 AES-KWP (RFC 5649) ─▶ data keys
//! ```
//!
//! - [`shamir`]: splitting and combining over GF(2^8), constant-time arithmetic.
//! - [`share`]: the text form of a custodian share, with its index, set id and check value.
//! - [`state`]: the state file (root key and terms, sealed), written atomically.
//! - [`sim`]: the HSM itself: unseal, data keys, rotate, retire, rekey, seal.
//!
//! It does not talk to hardware; a PKCS#11 provider would implement the same trait. Keys leave
//! it only as data keys (which the host needs for envelope encryption) and only ever in wrapped
//! form for storage; the root key and KEKs never leave.

pub mod shamir;
pub mod share;
pub mod sim;
pub mod state;

pub use sim::{FaultHook, FaultPoint, InitOptions, InitReport, SimulatedHsm};
