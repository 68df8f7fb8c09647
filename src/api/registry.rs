//! The holder registry over HTTP: the CMS uploads registry files (holders and their cards).
//!
//! | method and path       | roles | answer             |
//! |-----------------------|-------|--------------------|
//! | `POST /v1/registry`   | cms   | [`RegistryAnswer`] |
//!
//! The file (CSV or JSON lines, `docs/formats.md`) is the raw body (`curl --data-binary
//! @holders.csv`; any content type but multipart). Like a batch upload it is streamed, never
//! held whole as bytes: chunks go through a bounded channel to
//! [`cards::parse_registry`] on the blocking pool, under
//! `[registry] max_upload_bytes` (default 64 MiB; checked against `Content-Length`, then on
//! every chunk: `413 body_too_large`) and the upload idle timeout (`408 timeout`). The parsed
//! holders are then applied all or nothing by [`cards::Cards::import_registry`], which also
//! revokes cards implicitly (deceased holder, replaced card, card past expiry). A registry
//! upload takes one slot of `[import] max_concurrent`, like batch uploads and generations.
//!
//! | outcome             | status | meaning                                                   |
//! |---------------------|--------|-----------------------------------------------------------|
//! | `applied`           | 200    | every holder and card of the file is stored               |
//! | `rejected`          | 422    | bad lines: `problems` lists line, field and what is wrong |
//! | `registry_conflict` | 409    | an entry contradicts the vault (a card of another holder…) |
//!
//! Nothing is applied unless the answer is `applied`. The 422 answer carries the API's error
//! shape (`error.code` is `rejected`) besides the problems; the 409 is a plain error whose
//! message names the line.
//!
//! # Security
//! A registry file is personal data. No answer, log line or audit event of this module holds
//! a field of it: the parser's problems name a line, a field and what is wrong, never a
//! value; the log gets counts only. A refused file is an audit event (`registry.import`,
//! outcome `refused`) with the number of problems; an applied one is audited by the vault.

use super::batches::OutcomeError;
use super::upload::{self, check_upload_type, content_length, too_large};
use super::{blocking, ApiError, Caller, Endpoint, ErrorCode};
use crate::AppState;
use axum::extract::{Request, State};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Json;
use cards::{parse_registry, RegistryFailure, RegistryProblem, RegistryReport, RegistryRules};
use cards::{Reason, RegistryOutcome};
use serde::{Deserialize, Serialize};
use std::io::BufReader;
use std::time::Instant;
use vault::Outcome;
use vault::Role;

const IMPORT: &[Role] = &[Role::Cms];

/// What the size limit of registry uploads is called in the configuration.
const LIMIT_SETTING: &str = "[registry] max_upload_bytes";

pub(super) fn endpoints() -> Vec<Endpoint> {
    vec![Endpoint::new(Method::POST, "/v1/registry", post(import))
        .roles(IMPORT)
        .bulk()]
}

/// A card the upload revoked implicitly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedCard {
    /// The card serial.
    pub serial: String,
    /// Why: `deceased`, `replaced` or `expired`.
    pub reason: Reason,
}

/// The answer of a registry upload. Holds no personal datum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryAnswer {
    /// `applied` or `rejected`.
    pub outcome: String,
    /// Holders new to the registry.
    pub holders_created: u64,
    /// Holders already known, whose data the file replaced.
    pub holders_updated: u64,
    /// Cards new to the registry.
    pub cards_created: u64,
    /// Cards revoked implicitly by the file.
    pub revoked: Vec<RevokedCard>,
    /// For a rejected file: line, field and what is wrong (never a value), at most 100.
    pub problems: Vec<RegistryProblem>,
    /// All problems found.
    pub problems_total: u64,
    /// Time this request took, in ms.
    pub elapsed_ms: u64,
    /// For 422: the error shape of the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<OutcomeError>,
}

fn elapsed_ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn applied(o: &RegistryOutcome, started: Instant) -> RegistryAnswer {
    RegistryAnswer {
        outcome: "applied".to_owned(),
        holders_created: o.holders_created,
        holders_updated: o.holders_updated,
        cards_created: o.cards_created,
        revoked: o
            .revoked
            .iter()
            .map(|(serial, reason)| RevokedCard {
                serial: serial.clone(),
                reason: *reason,
            })
            .collect(),
        problems: Vec::new(),
        problems_total: 0,
        elapsed_ms: elapsed_ms(started),
        error: None,
    }
}

fn rejected(report: RegistryReport, started: Instant) -> RegistryAnswer {
    RegistryAnswer {
        outcome: "rejected".to_owned(),
        holders_created: 0,
        holders_updated: 0,
        cards_created: 0,
        revoked: Vec::new(),
        error: Some(OutcomeError {
            code: ErrorCode::Rejected.as_str().to_owned(),
            message: format!(
                "registry file rejected: {} problem(s); nothing was applied",
                report.total
            ),
        }),
        problems: report.problems,
        problems_total: report.total,
        elapsed_ms: elapsed_ms(started),
    }
}

/// What the blocking job of an upload ended with.
enum Job {
    Applied(RegistryOutcome),
    Rejected(RegistryReport),
    /// The body could not be read whole (the pump says why).
    Unread,
    /// An entry contradicts the vault ([`vault::Refusal::CardOfAnotherHolder`]).
    Conflict(vault::Error),
}

async fn import(
    State(state): State<AppState>,
    caller: Caller,
    request: Request,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    check_upload_type(request.headers())?;
    let limit = state.bulk.registry_max_upload_bytes;
    if content_length(request.headers()).is_some_and(|n| n > limit) {
        return Err(too_large(limit, LIMIT_SETTING));
    }
    let slot = state.bulk.slot()?;
    let (tx, reader) = upload::channel();
    let job_state = state.clone();
    let job_caller = caller.clone();
    let job = blocking(move || {
        let _slot = slot;
        let s = &job_state;
        let today = s.cms.today();
        let rules = RegistryRules {
            serial: s.import_rules.serial,
            today,
        };
        let entries = match parse_registry(BufReader::new(reader), &rules) {
            Ok(entries) => entries,
            Err(RegistryFailure::Rejected(report)) => {
                s.audit.append(
                    job_caller
                        .event("registry.import", "registry")
                        .outcome(Outcome::Refused)
                        .detail("refused", "rejected")
                        .detail("problems", report.total.to_string()),
                )?;
                return Ok(Job::Rejected(report));
            }
            Err(_) => return Ok(Job::Unread),
        };
        match s
            .cms
            .import_registry(&*s.hsm, &s.audit, &entries, today, &job_caller.actor())
        {
            Ok(outcome) => Ok(Job::Applied(outcome)),
            // An entry that contradicts what the vault holds.
            Err(e @ vault::Error::Refusal(vault::Refusal::CardOfAnotherHolder { .. })) => {
                s.audit.append(
                    job_caller
                        .event("registry.import", "registry")
                        .outcome(Outcome::Refused)
                        .detail("refused", "conflict")
                        .detail("holders", entries.len().to_string()),
                )?;
                Ok(Job::Conflict(e))
            }
            Err(e) => Err(e),
        }
    });
    let idle = state.bulk.idle_timeout;
    let (pumped, job) = tokio::join!(upload::pump(request.into_body(), tx, limit, idle), job);
    if let Err(e) = pumped {
        tracing::warn!(by = %caller.account.id, limit, problem = ?e, "registry upload abandoned");
        return Err(e.answer(limit, LIMIT_SETTING, idle));
    }
    match job? {
        Job::Applied(o) => {
            tracing::info!(
                holders_created = o.holders_created,
                holders_updated = o.holders_updated,
                cards_created = o.cards_created,
                revoked = o.revoked.len(),
                by = %caller.account.id,
                elapsed_ms = elapsed_ms(started),
                "registry file applied"
            );
            Ok(Json(applied(&o, started)).into_response())
        }
        Job::Rejected(report) => {
            tracing::info!(
                problems = report.total,
                by = %caller.account.id,
                "registry file rejected"
            );
            Ok((
                ErrorCode::Rejected.status(),
                Json(rejected(report, started)),
            )
                .into_response())
        }
        Job::Conflict(e) => {
            tracing::info!(by = %caller.account.id, "registry file contradicts the vault");
            Err(ApiError::from(e))
        }
        Job::Unread => Err(ApiError::bad_request(
            "the upload broke off before its end; nothing was applied",
        )),
    }
}
