//! The simulated HSM's state file, and how it is written.
//!
//! Everything the HSM must remember lives in one JSON file, `hsm-state.json`:
//!
//! - the share set: id, threshold, count, and a digest of each issued share;
//! - the root key, sealed (AES-256-GCM) under the unseal key derived from the shares;
//! - the KEK terms: id, state, KCV, and — for terms that are not retired — the KEK sealed
//!   (AES-256-GCM) under the root key, with the term id in the AAD;
//! - a MAC (HMAC-SHA256 under a key derived from the root key) over all of the above, checked at
//!   every unseal, so a state file edited by someone without the shares is refused.
//!
//! Nothing in the file is usable without a quorum of shares. It is replaced atomically: write
//! `hsm-state.json.tmp`, fsync it, rename it over the old file, fsync the directory. A crash at
//! any point leaves the old file or the new one; a stale `.tmp` is removed at the next open.

use crate::sim::FaultPoint;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use vault::{Error, Kcv, Result, TermState};

/// Value of the `format` field.
pub const FORMAT: &str = "plico-hsm-state";
/// Layout version written by this code.
pub const VERSION: u32 = 1;

/// The share set that currently unseals the HSM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareSet {
    /// Set id, 16 hex digits.
    pub id: String,
    /// Shares needed (m).
    pub threshold: u8,
    /// Shares issued (n).
    pub shares: u8,
    /// Share index → hex SHA-256 digest of the share (see `Share::digest`).
    pub digests: BTreeMap<u8, String>,
}

/// One KEK term on record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermRecord {
    /// Term number, from 1.
    pub id: u32,
    /// Active, decrypt-only or retired.
    pub state: TermState,
    /// KCV of the KEK.
    pub kcv: Kcv,
    /// Created at, seconds since the Unix epoch.
    pub created_unix: u64,
    /// `nonce | ciphertext | tag` of the KEK under the root key, hex; absent once retired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_kek: Option<String>,
}

/// Everything in the file except its MAC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateBody {
    /// Always [`FORMAT`].
    pub format: String,
    /// Always [`VERSION`].
    pub version: u32,
    /// Incremented by every write.
    pub generation: u64,
    /// A development HSM (threshold 1 allowed).
    pub dev: bool,
    /// The current share set.
    pub share_set: ShareSet,
    /// KCV of the root key.
    pub root_kcv: Kcv,
    /// `nonce | ciphertext | tag` of the root key under the unseal key, hex.
    pub sealed_root: String,
    /// Every term, oldest first.
    pub terms: Vec<TermRecord>,
    /// The audit chain's newest checkpoint, as the host last reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_anchor: Option<vault::AuditAnchor>,
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateFile {
    /// The contents.
    pub body: StateBody,
    /// HMAC-SHA256 over the canonical JSON of `body`, hex.
    pub mac: String,
}

impl StateBody {
    /// The bytes the MAC covers: the body's JSON, in field order.
    pub fn mac_input(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self)
            .map_err(|e| Error::Storage(format!("cannot encode hsm state: {e}")))
    }
}

impl StateFile {
    /// Reads and parses the state file in `dir`.
    ///
    /// # Errors
    /// [`Error::Storage`] naming the file: missing, unreadable, not JSON of this format, or of
    /// another version.
    pub fn load(dir: &Path, name: &str) -> Result<StateFile> {
        let path = dir.join(name);
        let bytes = fs::read(&path)
            .map_err(|e| Error::Storage(format!("cannot read {}: {e}", path.display())))?;
        let file: StateFile = serde_json::from_slice(&bytes).map_err(|e| {
            Error::Storage(format!(
                "{} is not a valid hsm state file: {e}",
                path.display()
            ))
        })?;
        if file.body.format != FORMAT || file.body.version != VERSION {
            return Err(Error::Storage(format!(
                "{} has format {:?} version {}, this build reads {FORMAT:?} version {VERSION}",
                path.display(),
                file.body.format,
                file.body.version
            )));
        }
        Ok(file)
    }

    /// Replaces the state file atomically (see the module docs), calling `fault` at each step
    /// so crash tests can stop the process there. Returns whether the directory fsync after the
    /// rename also succeeded (the new state is in effect either way).
    ///
    /// # Errors
    /// [`Error::Storage`] naming the file and the step that failed, for any failure before the
    /// rename; the old file is then intact and still the state.
    pub fn write_atomic(&self, dir: &Path, name: &str, fault: &dyn Fn(FaultPoint)) -> Result<bool> {
        let io = |what: &str, e: std::io::Error| {
            Error::Storage(format!("{what} {}: {e}", dir.join(name).display()))
        };
        let bytes = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::Storage(format!("cannot encode hsm state: {e}")))?;
        let tmp = dir.join(format!("{name}.tmp"));
        fault(FaultPoint::BeforeWrite);
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io("cannot create temporary file for", e))?;
        let half = bytes.len() / 2;
        f.write_all(&bytes[..half])
            .map_err(|e| io("cannot write", e))?;
        fault(FaultPoint::TempHalfWritten);
        f.write_all(&bytes[half..])
            .map_err(|e| io("cannot write", e))?;
        fault(FaultPoint::TempWritten);
        f.sync_all().map_err(|e| io("cannot fsync", e))?;
        drop(f);
        fault(FaultPoint::TempSynced);
        fs::rename(&tmp, dir.join(name)).map_err(|e| io("cannot rename temporary file onto", e))?;
        fault(FaultPoint::Renamed);
        // From here the new state is the state: the rename is visible to every later open. A
        // failed directory fsync only weakens durability against power loss; answering `Err`
        // now would tell the caller (say, custodians after a rekey) that nothing changed when
        // the new state is already in effect. So it is returned as `Ok(false)`.
        let synced = File::open(dir).and_then(|d| d.sync_all()).is_ok();
        fault(FaultPoint::Committed);
        Ok(synced)
    }

    /// Removes a temporary file left by a crash in the middle of [`StateFile::write_atomic`].
    ///
    /// # Errors
    /// [`Error::Storage`] if it exists and cannot be removed.
    pub fn remove_leftover(dir: &Path, name: &str) -> Result<bool> {
        let tmp = dir.join(format!("{name}.tmp"));
        match fs::remove_file(&tmp) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::Storage(format!(
                "cannot remove {}: {e}",
                tmp.display()
            ))),
        }
    }
}
