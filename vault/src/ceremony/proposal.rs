//! Proposals: one key operation asked for by one officer, waiting for a second.
//!
//! A proposal is a small JSON record in [`Tree::KeyProposals`], keyed by its id (u64 BE). It
//! holds no secret: the operation names terms, batches and counts, and the KCVs of the keys
//! it names. The shares a rekey needs travel with the approval call and are never stored.
//!
//! ```text
//! open ──approve──▶ running ──▶ done | failed        (a job, or the HSM call, ends it)
//!   │  └──approve (immediate op)──▶ done | failed
//!   ├──window passes──▶ lapsed
//!   └──withdraw──▶ withdrawn
//! ```

use super::impact::Impact;
use crate::codes::BatchId;
use crate::error::{Error, Result};
use crate::hsm::TermId;
use crate::kcv::Kcv;
use crate::store::{Batch, Tree};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Most characters in a proposal's reason.
pub const REASON_MAX_CHARS: usize = 500;

/// A proposal's id: allocated in order, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ProposalId(pub u64);

impl ProposalId {
    /// Its key in [`Tree::KeyProposals`] and [`Tree::KeyJobs`].
    pub fn key(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }

    /// Parses the form shown by `Display` (`kp000042`), or a bare number.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the text's problem.
    pub fn parse(text: &str) -> Result<ProposalId> {
        let digits = text.strip_prefix("kp").unwrap_or(text);
        digits.parse::<u64>().map(ProposalId).map_err(|_| {
            Error::Invalid(format!(
                "proposal id `{text}`: expected kp followed by digits"
            ))
        })
    }
}

impl std::str::FromStr for ProposalId {
    type Err = Error;

    /// The same as [`ProposalId::parse`].
    fn from_str(text: &str) -> Result<Self> {
        Self::parse(text)
    }
}

impl fmt::Display for ProposalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "kp{:06}", self.0)
    }
}

/// A key operation that needs two officers. The names are persisted: never rename them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Operation {
    /// A new KEK term becomes active; a job then rewraps every data key under it.
    Rotate,
    /// Destroy a decrypt-only term that no data key is wrapped under any more.
    Retire {
        /// The term.
        term: TermId,
    },
    /// A new root key and a new set of custodian shares; needs a quorum of current shares,
    /// given with the approval.
    Rekey {
        /// Shares to issue (n).
        shares: u8,
        /// Shares needed to unseal (m).
        threshold: u8,
    },
    /// Crypto-shred a committed batch: its codes become unrecoverable, in copies of the store
    /// taken before too (destroy its segments and key, rotate, rewrap, retire old terms).
    Shred {
        /// The batch.
        batch: BatchId,
        /// Shred although cards of the batch still need their codes (issued, active or
        /// suspended): they are revoked with reason `codes_destroyed` and their unsent
        /// dispatch jobs cancelled, in the destroying write. Absent in records written
        /// before issue 14 (false).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        force: bool,
    },
    /// Discard a quarantined batch, destroyed as a shred is, so that the manufacturer can
    /// upload a corrected file (the upload itself is the import flow's).
    DiscardQuarantined {
        /// The batch.
        batch: BatchId,
    },
}

impl Operation {
    /// A short persisted name (`rotate`, `retire`, `rekey`, `shred`, `discard_quarantined`).
    pub fn name(&self) -> &'static str {
        match self {
            Operation::Rotate => "rotate",
            Operation::Retire { .. } => "retire",
            Operation::Rekey { .. } => "rekey",
            Operation::Shred { .. } => "shred",
            Operation::DiscardQuarantined { .. } => "discard_quarantined",
        }
    }

    /// True for the operations carried out by a durable job after approval (rotate, shred,
    /// discard); retire and rekey are done within the approval call.
    pub fn is_job(&self) -> bool {
        matches!(
            self,
            Operation::Rotate | Operation::Shred { .. } | Operation::DiscardQuarantined { .. }
        )
    }

    /// The batch the operation destroys, if any.
    pub fn batch(&self) -> Option<BatchId> {
        match self {
            Operation::Shred { batch, .. } | Operation::DiscardQuarantined { batch } => {
                Some(*batch)
            }
            _ => None,
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operation::Rotate => f.write_str("rotate"),
            Operation::Retire { term } => write!(f, "retire {term}"),
            Operation::Rekey { shares, threshold } => {
                write!(f, "rekey to {threshold} of {shares} shares")
            }
            Operation::Shred {
                batch,
                force: false,
            } => write!(f, "shred batch {batch}"),
            Operation::Shred { batch, force: true } => write!(f, "shred batch {batch} (forced)"),
            Operation::DiscardQuarantined { batch } => {
                write!(f, "discard quarantined batch {batch}")
            }
        }
    }
}

/// Where a proposal is. The names are persisted: never rename them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProposalState {
    /// Waiting for a second officer's approval.
    Open,
    /// Approved; its job is running (rotate, shred, discard).
    Running,
    /// Carried out.
    Done,
    /// Approved, attempted and failed; `outcome` says why. Propose again.
    Failed,
    /// Not approved within the window.
    Lapsed,
    /// Withdrawn by an officer before approval.
    Withdrawn,
}

impl fmt::Display for ProposalState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProposalState::Open => "open",
            ProposalState::Running => "running",
            ProposalState::Done => "done",
            ProposalState::Failed => "failed",
            ProposalState::Lapsed => "lapsed",
            ProposalState::Withdrawn => "withdrawn",
        })
    }
}

/// One proposal as stored and shown. No secret in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// Its id.
    pub id: ProposalId,
    /// What is to be done.
    pub op: Operation,
    /// Why, in the proposer's words.
    pub reason: String,
    /// Account id of the proposing officer.
    pub proposer: String,
    /// When it was proposed (Unix ms).
    pub proposed_ms: u64,
    /// Approval must come before this moment (Unix ms).
    pub expires_ms: u64,
    /// Its state.
    pub state: ProposalState,
    /// KCV of the key the operation names when proposed: the term's KEK (retire), the
    /// batch's data key (shred, discard), the active term's KEK (rotate), the root key (rekey).
    pub kcv: Option<Kcv>,
    /// Account id of the approving officer (or of the officer who withdrew it).
    pub approver: Option<String>,
    /// When it was approved or withdrawn (Unix ms).
    pub decided_ms: Option<u64>,
    /// When it reached done, failed or lapsed (Unix ms).
    pub finished_ms: Option<u64>,
    /// What came of it: the new term and its KCV, the new share set, the error…
    pub outcome: Option<String>,
    /// What it will do, computed when proposed and shown to the approver: the cards that lose
    /// their codes, the dispatch jobs cancelled, every key and term rotated or destroyed.
    /// `None` in records written before issue 14.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub impact: Option<Impact>,
}

impl Proposal {
    /// True when it can still be approved at `now_ms`.
    pub fn approvable(&self, now_ms: u64) -> bool {
        self.state == ProposalState::Open && now_ms < self.expires_ms
    }

    /// Serialises the record.
    ///
    /// # Errors
    /// [`Error::Storage`] if it cannot be encoded.
    pub fn encode(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|e| Error::Storage(format!("encoding {}: {e}", self.id)))
    }

    /// Reads a stored record.
    ///
    /// # Errors
    /// [`Error::Storage`] naming the damage.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes)
            .map_err(|e| Error::Storage(format!("a key proposal in the store is damaged: {e}")))
    }

    /// Adds the write of this record to `batch`.
    ///
    /// # Errors
    /// As [`Proposal::encode`].
    pub fn save_into(&self, batch: &mut Batch) -> Result<()> {
        batch.put(Tree::KeyProposals, self.id.key().to_vec(), self.encode()?);
        Ok(())
    }
}

/// Checks a proposal's reason: present, at most [`REASON_MAX_CHARS`], no control characters.
///
/// # Errors
/// [`Error::Invalid`] naming the problem.
pub fn check_reason(reason: &str) -> Result<String> {
    let r = reason.trim();
    if r.is_empty() {
        return Err(Error::Invalid(
            "reason: say why the key operation is needed".into(),
        ));
    }
    if r.chars().count() > REASON_MAX_CHARS {
        return Err(Error::Invalid(format!(
            "reason: at most {REASON_MAX_CHARS} characters"
        )));
    }
    crate::text::check("reason", r, crate::text::Kind::Line)
        .map_err(|e| Error::Invalid(e.to_string()))?;
    Ok(r.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_operations_print_parse_and_persist() {
        assert_eq!(ProposalId(42).to_string(), "kp000042");
        assert_eq!(ProposalId::parse("kp000042").unwrap(), ProposalId(42));
        assert_eq!(ProposalId::parse("7").unwrap(), ProposalId(7));
        assert!(ProposalId::parse("kpx").is_err());
        let op = Operation::Retire { term: TermId(3) };
        let json = serde_json::to_string(&op).unwrap();
        assert_eq!(json, r#"{"op":"retire","term":3}"#);
        assert_eq!(serde_json::from_str::<Operation>(&json).unwrap(), op);
        assert_eq!(
            serde_json::to_string(&Operation::Rotate).unwrap(),
            r#"{"op":"rotate"}"#
        );
    }

    #[test]
    fn a_record_written_before_impacts_and_force_still_reads() {
        // A proposal record as issue 8 wrote it: no `impact`, a shred without `force`.
        let old = br#"{"id":7,"op":{"op":"shred","batch":42},"reason":"past retention",
            "proposer":"a000002","proposed_ms":1,"expires_ms":2,"state":"open",
            "kcv":"DC95C0","approver":null,"decided_ms":null,"finished_ms":null,
            "outcome":null}"#;
        let p = Proposal::decode(old).unwrap();
        assert_eq!(
            p.op,
            Operation::Shred {
                batch: BatchId(42),
                force: false
            }
        );
        assert_eq!(p.impact, None);
        assert_eq!(p.kcv.unwrap().to_string(), "DC95C0");
        // And is written back in the same form (no new field while there is nothing to say).
        let again = String::from_utf8(p.encode().unwrap()).unwrap();
        assert!(
            !again.contains("force") && !again.contains("impact"),
            "{again}"
        );
        let forced = Operation::Shred {
            batch: BatchId(42),
            force: true,
        };
        let json = serde_json::to_string(&forced).unwrap();
        assert_eq!(json, r#"{"op":"shred","batch":42,"force":true}"#);
        assert_eq!(forced.to_string(), "shred batch b000042 (forced)");
    }

    #[test]
    fn reasons_are_checked() {
        assert_eq!(check_reason("  term 1 is old ").unwrap(), "term 1 is old");
        assert!(check_reason(" ").is_err());
        assert!(check_reason("a\u{7}b").is_err());
        assert!(check_reason(&"x".repeat(REASON_MAX_CHARS + 1)).is_err());
    }
}
