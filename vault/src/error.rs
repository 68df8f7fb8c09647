//! The vault's one error type.
//!
//! Messages are lower-case and name the thing at fault (a field, a key id, a term), never
//! secret bytes. Every cryptographic failure is the single opaque [`Error::Integrity`]: a caller
//! learns that a blob did not verify, never which check failed.

use crate::policy::CodeError;

/// Errors of the vault and of [`crate::Hsm`] providers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A ciphertext, envelope or wrapped key did not verify (tampered, moved to another card or
    /// key, or damaged). Deliberately says nothing more.
    #[error("integrity check failed")]
    Integrity,

    /// The HSM holds no keys until it is unsealed with custodian shares.
    #[error("the hsm is sealed")]
    Sealed,

    /// A custodian share was refused; the message says why (corrupted, foreign, duplicate…).
    #[error("share refused: {0}")]
    Share(String),

    /// Bad input: a field that does not satisfy its rules. The message names the field and
    /// what is wrong, never a secret value.
    #[error("invalid: {0}")]
    Invalid(String),

    /// The operation is not allowed in the current state (a term still in use, a threshold
    /// below 2 without dev mode, an encryption limit reached…).
    #[error("refused: {0}")]
    Refused(String),

    /// The caller may not do this, whatever the state: a role that does not hold the right, or
    /// an officer approving their own key-ceremony proposal (dual control).
    #[error("forbidden: {0}")]
    Forbidden(String),

    /// A change that the current state of its subject does not allow (a card's lifecycle).
    /// Nothing was changed; the message names the current state.
    #[error("{subject} is {state}; this needs {wanted}")]
    WrongState {
        /// What was to change (`card 8039…`).
        subject: String,
        /// Its current state.
        state: String,
        /// The states the change starts from.
        wanted: String,
    },

    /// A named key term or data key does not exist.
    #[error("not found: {0}")]
    NotFound(String),

    /// Persistent state could not be read or written; the message names the file.
    #[error("storage: {0}")]
    Storage(String),

    /// A PIN or PUK did not satisfy the code policy.
    #[error(transparent)]
    Code(#[from] CodeError),

    /// The platform's cryptographic library failed in a way that is not an integrity failure
    /// (for example the random generator).
    #[error("crypto provider failure: {0}")]
    Provider(&'static str),
}

/// Result alias for the vault.
pub type Result<T, E = Error> = std::result::Result<T, E>;
