//! The token's state object: what the HSM must remember besides its keys.
//!
//! One public PKCS#11 data object labelled [`STATE_LABEL`] (application `plico`) holds JSON: the share set (id, threshold, count, a digest of each issued share), whether it
//! is a development HSM, the root key's KCV, the KEK terms (id, state, KCV, creation time), the
//! audit anchor, and a generation that counts every change. It is public (readable before
//! login) so that shares can be checked and `status` answered while sealed, exactly as the
//! simulator's state file; it carries an AES-CMAC computed *inside the token* under the root
//! key, checked at every unseal, so an object edited without the PIN is refused.
//!
//! A change is a new object with the next generation, written before the old one is destroyed:
//! a crash leaves the old, or both (the higher generation wins and the other is removed at the
//! next unseal). The keys themselves are token objects (see the crate docs); nothing secret is
//! in this object.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use vault::{AuditAnchor, Error, Kcv, Result, TermState};

/// Label of the state object.
pub const STATE_LABEL: &str = "plico-state";
/// Value of the `format` field.
pub const FORMAT: &str = "plico-pkcs11-state";
/// Layout version written by this code.
pub const VERSION: u32 = 1;

/// The share set whose quorum derives the token's user PIN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareSet {
    /// Set id, 16 hex digits.
    pub id: String,
    /// Shares needed (m).
    pub threshold: u8,
    /// Shares issued (n).
    pub shares: u8,
    /// Share index → hex SHA-256 digest of the share.
    pub digests: BTreeMap<u8, String>,
}

/// One KEK term on record. Its keys are the token objects `plico-kek-<id>-<purpose>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermRecord {
    /// Term number, from 1.
    pub id: u32,
    /// Active, decrypt-only or retired.
    pub state: TermState,
    /// KCV of the term (its `code` wrapping key's check value).
    pub kcv: Kcv,
    /// Created at, seconds since the Unix epoch.
    pub created_unix: u64,
}

/// Everything in the object except its MAC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateBody {
    /// Always [`FORMAT`].
    pub format: String,
    /// Always [`VERSION`].
    pub version: u32,
    /// Incremented by every change.
    pub generation: u64,
    /// A development HSM (threshold 1 allowed).
    pub dev: bool,
    /// The current share set.
    pub share_set: ShareSet,
    /// KCV of the root key.
    pub root_kcv: Kcv,
    /// Every term, oldest first.
    pub terms: Vec<TermRecord>,
    /// The audit chain's newest checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_anchor: Option<AuditAnchor>,
}

/// The object's value: the body and its AES-CMAC (hex) under the root key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateObject {
    /// The state.
    pub body: StateBody,
    /// Hex AES-CMAC over [`StateBody::mac_input`], computed by the token.
    pub mac: String,
}

impl StateBody {
    /// The bytes the MAC covers (canonical JSON of the body).
    ///
    /// # Errors
    /// [`Error::Storage`] if the body cannot be serialised.
    pub fn mac_input(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self)
            .map_err(|e| Error::Storage(format!("cannot encode the hsm state: {e}")))
    }

    /// The active term's id.
    ///
    /// # Errors
    /// [`Error::Storage`] if no term is active (a damaged state).
    pub fn active_term(&self) -> Result<u32> {
        self.terms
            .iter()
            .find(|t| t.state == TermState::Active)
            .map(|t| t.id)
            .ok_or_else(|| Error::Storage("the token's hsm state has no active term".to_string()))
    }
}

impl StateObject {
    /// Encodes the object's value.
    ///
    /// # Errors
    /// [`Error::Storage`] if it cannot be serialised.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self)
            .map_err(|e| Error::Storage(format!("cannot encode the hsm state: {e}")))
    }

    /// Decodes an object's value.
    ///
    /// # Errors
    /// [`Error::Storage`] naming the object for anything that is not a version-1 state.
    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        let s: StateObject = serde_json::from_slice(b).map_err(|e| {
            Error::Storage(format!(
                "token object {STATE_LABEL} is not a valid hsm state: {e}"
            ))
        })?;
        if s.body.format != FORMAT || s.body.version != VERSION {
            return Err(Error::Storage(format!(
                "token object {STATE_LABEL} has format {} version {}, expected {FORMAT} version \
                 {VERSION}",
                s.body.format, s.body.version
            )));
        }
        Ok(s)
    }
}

/// One token object a vault needs, as a backup records it: how to find it, never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenObject {
    /// `CKA_LABEL`.
    pub label: String,
    /// `CKA_ID`, hex (empty for the state object, which has none).
    pub id: String,
    /// `secret_key` or `data`.
    pub class: String,
    /// The key check value on record, for a key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kcv: Option<Kcv>,
}

/// What a backup of a token-backed vault records of the token: the public facts of its state
/// object (share set id, root and term KCVs, generation, audit anchor) and the labels and ids
/// of the objects the store's wrapped keys depend on. Never key material, never a PIN: all of
/// it is readable from the token without logging in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenFacts {
    /// The token's label.
    pub token_label: String,
    /// The state object's generation.
    pub generation: u64,
    /// The share set whose quorum opens the token.
    pub share_set: String,
    /// KCV of the root key.
    pub root_kcv: Kcv,
    /// Every KEK term on record, oldest first.
    pub terms: Vec<TermRecord>,
    /// The audit anchor the token held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_anchor: Option<AuditAnchor>,
    /// The objects the vault uses: the state object, the root key, each live term's keys.
    pub objects: Vec<TokenObject>,
}

impl TokenFacts {
    /// The facts of a state body on the token labelled `token_label`.
    pub fn of(token_label: &str, body: &StateBody) -> Self {
        let mut objects = vec![
            TokenObject {
                label: STATE_LABEL.to_string(),
                id: String::new(),
                class: "data".to_string(),
                kcv: None,
            },
            TokenObject {
                label: crate::hsm::ROOT_LABEL.to_string(),
                id: body.share_set.id.clone(),
                class: "secret_key".to_string(),
                kcv: Some(body.root_kcv),
            },
        ];
        for t in body.terms.iter().filter(|t| t.state != TermState::Retired) {
            for purpose in vault::KeyPurpose::ALL {
                objects.push(TokenObject {
                    label: crate::hsm::kek_label(t.id, purpose),
                    id: hex::encode(t.id.to_be_bytes()),
                    class: "secret_key".to_string(),
                    kcv: (purpose == vault::KeyPurpose::Code).then_some(t.kcv),
                });
            }
        }
        TokenFacts {
            token_label: token_label.to_string(),
            generation: body.generation,
            share_set: body.share_set.id.clone(),
            root_kcv: body.root_kcv,
            terms: body.terms.clone(),
            audit_anchor: body.audit_anchor.clone(),
            objects,
        }
    }
}
