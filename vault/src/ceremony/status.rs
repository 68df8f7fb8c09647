//! Cryptoperiods and the key status report (`GET /v1/sys/keys`, `plico keys status`).
//!
//! Every term and data key has a cryptoperiod by policy ([`KeyPolicy`]; NIST SP 800-57 Part 1
//! §5.3) and every data key an encryption count, checked against the AES-GCM limit of the
//! envelope ([`SEALER_LIMIT`], 2^31). The report warns when a key nears or passes its period
//! or nears its limit, and *recommends* operations (rotate, retire) in words; it never creates
//! a proposal by itself — a key operation is always asked for by an officer.

use super::job::KeyJob;
use super::proposal::Proposal;
use crate::envelope::{DataKeyId, SEALER_LIMIT};
use crate::hsm::{HsmStatus, KeyPurpose, TermId, TermState};
use crate::kcv::Kcv;
use crate::keyring::Keyring;
use serde::{Deserialize, Serialize};

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// Cryptoperiods and limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyPolicy {
    /// Days a KEK term stays active before rotation is recommended (default 365).
    pub term_period_days: u32,
    /// Days a data key is used (NIST SP 800-57: up to 2 years; default 730).
    pub data_key_period_days: u32,
    /// Days before the end of a period from which it is reported as near (default 30).
    pub warn_days_before: u32,
    /// Encryptions of one data key from which it is reported as near its limit (default
    /// 80 % of [`SEALER_LIMIT`]).
    pub warn_encryptions: u64,
}

impl Default for KeyPolicy {
    fn default() -> Self {
        KeyPolicy {
            term_period_days: 365,
            data_key_period_days: 730,
            warn_days_before: 30,
            warn_encryptions: SEALER_LIMIT / 10 * 8,
        }
    }
}

/// One KEK term in the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermStatus {
    /// The term.
    pub id: TermId,
    /// Active, decrypt-only or retired.
    pub state: TermState,
    /// KCV of its KEK.
    pub kcv: Kcv,
    /// Created, seconds since the Unix epoch.
    pub created_unix: u64,
    /// Data keys wrapped under it now.
    pub data_keys: usize,
    /// Cryptoperiod warnings.
    pub warnings: Vec<String>,
}

/// One data key in the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataKeyStatus {
    /// The key.
    pub id: DataKeyId,
    /// Its one purpose.
    pub purpose: KeyPurpose,
    /// KCV of the key.
    pub kcv: Kcv,
    /// The term it is wrapped under.
    pub term: TermId,
    /// Created, seconds since the Unix epoch.
    pub created_unix: u64,
    /// Records encrypted under it.
    pub encryptions: u64,
    /// Cryptoperiod and limit warnings.
    pub warnings: Vec<String>,
}

/// The state of the key hierarchy, for officers. No key material in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyStatus {
    /// When the report was made (Unix ms); periods are measured to this moment.
    pub now_ms: u64,
    /// The HSM provider.
    pub provider: String,
    /// True while the HSM is sealed (no key operation can run).
    pub sealed: bool,
    /// KCV of the root key.
    pub root_kcv: Kcv,
    /// The current custodian share set.
    pub share_set: String,
    /// Shares needed to unseal.
    pub threshold: u8,
    /// Shares issued.
    pub shares: u8,
    /// Every term, oldest first.
    pub terms: Vec<TermStatus>,
    /// Every data key, by id.
    pub data_keys: Vec<DataKeyStatus>,
    /// The running job, else the last one, with its progress (`done` of `total`).
    pub job: Option<KeyJob>,
    /// Proposals still open for approval.
    pub proposals: Vec<Proposal>,
    /// Every warning of the terms and data keys, in one list.
    pub warnings: Vec<String>,
    /// Operations an officer should propose, in words. Never acted on automatically.
    pub recommendations: Vec<String>,
}

/// How a key's age stands against its period: `None` when well within it.
fn period_warning(
    what: &str,
    created_unix: u64,
    period_days: u32,
    p: &KeyPolicy,
    now_ms: u64,
) -> Option<String> {
    let age_days = now_ms.saturating_sub(created_unix.saturating_mul(1000)) / DAY_MS;
    let period = u64::from(period_days);
    if age_days >= period {
        Some(format!(
            "{what} is {age_days} days old, past its {period}-day period"
        ))
    } else if age_days + u64::from(p.warn_days_before) >= period {
        Some(format!(
            "{what} is {age_days} days old, near the end of its {period}-day period"
        ))
    } else {
        None
    }
}

/// Builds the report from the HSM's status and the keyring.
pub(super) fn report(
    policy: &KeyPolicy,
    hsm: &HsmStatus,
    ring: &Keyring,
    job: Option<KeyJob>,
    proposals: Vec<Proposal>,
    now_ms: u64,
) -> KeyStatus {
    let counts = ring.count_by_term();
    let mut warnings = Vec::new();
    let mut recommendations = Vec::new();
    let job_running = job.as_ref().is_some_and(KeyJob::unfinished);
    let terms: Vec<TermStatus> = hsm
        .terms
        .iter()
        .map(|t| {
            let data_keys = counts.get(&t.id).copied().unwrap_or(0);
            let name = format!("{} (KCV {})", t.id, t.kcv);
            let mut w = Vec::new();
            match t.state {
                TermState::Active => {
                    if let Some(msg) = period_warning(
                        &name,
                        t.created_unix,
                        policy.term_period_days,
                        policy,
                        now_ms,
                    ) {
                        w.push(msg.clone());
                        recommendations.push(format!("rotate: {msg}"));
                    }
                }
                TermState::DecryptOnly if data_keys == 0 && !job_running => {
                    recommendations.push(format!(
                        "retire: {name} is decrypt-only and wraps no data key"
                    ));
                }
                TermState::DecryptOnly if !job_running => {
                    let msg = format!(
                        "{name} is decrypt-only and still wraps {data_keys} data key(s) with no \
                         rewrap running"
                    );
                    w.push(msg.clone());
                    recommendations.push(format!("rotate: {msg}; a rotation rewraps them"));
                }
                _ => {}
            }
            warnings.extend(w.iter().cloned());
            TermStatus {
                id: t.id,
                state: t.state,
                kcv: t.kcv,
                created_unix: t.created_unix,
                data_keys,
                warnings: w,
            }
        })
        .collect();
    let data_keys: Vec<DataKeyStatus> = ring
        .iter()
        .map(|r| {
            let name = format!("{} ({}, KCV {})", r.id, r.purpose, r.kcv());
            let mut w = Vec::new();
            if let Some(msg) = period_warning(
                &name,
                r.created_unix,
                policy.data_key_period_days,
                policy,
                now_ms,
            ) {
                w.push(msg);
            }
            if r.encryptions >= policy.warn_encryptions {
                w.push(format!(
                    "{name} has made {} encryptions, near its limit of {SEALER_LIMIT}",
                    r.encryptions
                ));
            }
            warnings.extend(w.iter().cloned());
            DataKeyStatus {
                id: r.id,
                purpose: r.purpose,
                kcv: r.kcv(),
                term: r.wrapped.term,
                created_unix: r.created_unix,
                encryptions: r.encryptions,
                warnings: w,
            }
        })
        .collect();
    if data_keys.iter().any(|k| !k.warnings.is_empty()) {
        recommendations.push(
            "data keys: a data key past its period or near its limit encrypts nothing new once \
             replaced; code batches past retention are shredded (plico keys propose shred)"
                .to_string(),
        );
    }
    KeyStatus {
        now_ms,
        provider: hsm.provider.clone(),
        sealed: hsm.sealed,
        root_kcv: hsm.root_kcv,
        share_set: hsm.share_set.clone(),
        threshold: hsm.threshold,
        shares: hsm.shares,
        terms,
        data_keys,
        job,
        proposals,
        warnings,
        recommendations,
    }
}
