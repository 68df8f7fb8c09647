//! Code batches over HTTP: streaming upload of manufacturer files, generation of codes for
//! cards that came without them, the batch list, and the import recipient. No answer here ever
//! carries a code: the vault's batch records hold none, and problems name lines and fields.
//!
//! | method and path              | roles                                        | answer            |
//! |------------------------------|----------------------------------------------|-------------------|
//! | `POST /v1/batches`           | manufacturer                                 | [`BatchAnswer`]   |
//! | `GET /v1/batches`            | admin, manufacturer, cms, officer, auditor   | a page of batches |
//! | `GET /v1/batches/{id}`       | admin, manufacturer, cms, officer, auditor   | [`BatchView`]     |
//! | `POST /v1/generate`          | cms                                          | [`BatchAnswer`]   |
//! | `GET /v1/import/recipient`   | manufacturer, admin                          | `{recipient}`     |
//!
//! A manufacturer sees only the batches its own account uploaded (another's is `404`, as if
//! it did not exist): batch records name serial ranges and conflicts, which are the
//! manufacturer's business and its competitors' curiosity.
//!
//! # Upload
//!
//! `POST /v1/batches?manufacturer=NAME[&expected_cards=N][&sha256=HEX]` with the file as the
//! raw body (`curl --data-binary @file`; any content type but multipart; age-encrypted files
//! are recognised and decrypted by the vault). The body is never held whole: chunks go
//! from axum's body stream through a bounded channel (16 chunks; the streaming is shared with
//! registry uploads) to a blocking reader that feeds [`vault::import_file`] on tokio's
//! blocking pool. The size limit (`[import] max_upload_bytes`) is checked against
//! `Content-Length` before anything is read, and again on every chunk (`413 body_too_large`);
//! a body that stalls for [`super::UPLOAD_IDLE_TIMEOUT`] is abandoned (`408 timeout`). A body
//! that breaks off (the client went away) makes the reader fail, never end: the vault then
//! abandons the batch and nothing of it stays.
//!
//! The answer comes once the outcome is durable:
//!
//! | outcome          | status | meaning                                                      |
//! |------------------|--------|--------------------------------------------------------------|
//! | `committed`      | 201    | stored and visible (`Location: /v1/batches/{id}`)            |
//! | `already_stored` | 200    | this very file was stored before: the first batch            |
//! | `quarantined`    | 409    | complete, but serials already in the vault: held back        |
//! | `rejected`       | 422    | bad lines, count or hash mismatch, repeated serials          |
//!
//! The 409 and 422 answers carry the [`ApiError`] shape (`error.code` is the outcome) besides
//! the batch fields, so that a client that knows only the error shape still reads them right.
//!
//! # Generation
//!
//! `POST /v1/generate` with `{"range": {"first": "…", "count": N}}` or `{"serials": [...]}`,
//! and `"weak_filter"` (default `true`). The JSON body is read under [`GENERATE_BODY_LIMIT`]
//! within [`super::REQUEST_TIMEOUT`]; the generation itself may take longer, and is answered
//! like an upload.
//!
//! Uploads and generations take a slot of `[import] max_concurrent` (`503 busy` beyond).

use super::extract::{page_limit, parse_json, query};
use super::upload::{self, check_upload_type, content_length, too_large};
use super::{blocking, ApiError, Caller, Endpoint, ErrorCode};
use crate::AppState;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};
use vault::Role;
use vault::WeakFilter;
use vault::{generate_batch, GenerateRequest, SerialSet};
use vault::{import_file, ImportContext, ImportOutcome, ImportRequest};
use vault::{BatchId, BatchRecord, BatchSource, BatchState, RunInfo};

const UPLOAD: &[Role] = &[Role::Manufacturer];
const READ: &[Role] = &[
    Role::Admin,
    Role::Manufacturer,
    Role::Cms,
    Role::Officer,
    Role::Auditor,
];
const GENERATE: &[Role] = &[Role::Cms];
const RECIPIENT: &[Role] = &[Role::Manufacturer, Role::Admin];

/// What the size limit of batch uploads is called in the configuration.
const LIMIT_SETTING: &str = "[import] max_upload_bytes";

/// Largest JSON body of `POST /v1/generate`: a list of about a million 20-digit serials.
pub const GENERATE_BODY_LIMIT: usize = 32 * 1024 * 1024;

/// Batches per page when the caller does not say, and the most it may ask for.
pub const DEFAULT_PAGE: usize = 100;
/// The most batches one page may hold.
pub const MAX_PAGE: usize = 1000;

pub(super) fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint::new(Method::POST, "/v1/batches", post(upload))
            .roles(UPLOAD)
            .bulk(),
        Endpoint::new(Method::GET, "/v1/batches", get(list)).roles(READ),
        Endpoint::new(Method::GET, "/v1/batches/{id}", get(show)).roles(READ),
        Endpoint::new(Method::POST, "/v1/generate", post(generate))
            .roles(GENERATE)
            .bulk(),
        Endpoint::new(Method::GET, "/v1/import/recipient", get(recipient)).roles(RECIPIENT),
    ]
}

/// A batch as the API shows it: its record without the content id (a keyed hash of the file,
/// of no use to a client) and, like the record, without any code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchView {
    /// The batch id, e.g. `b000042`.
    pub id: String,
    /// `staging`, `committed`, `quarantined`, `rejected`, `shredded`, `discarded` or
    /// `duplicate` (an upload of a file stored before: see `duplicate_of`).
    pub state: BatchState,
    /// `import` or `generated`.
    pub source: BatchSource,
    /// The manufacturer the upload named (empty for generated batches).
    pub manufacturer: String,
    /// Cards stored.
    pub cards: u64,
    /// Whether the cards carry a signature PIN/PUK pair.
    pub signature_pairs: bool,
    /// Bytes of the file (after age decryption).
    pub bytes: u64,
    /// The data key the codes are sealed under.
    pub data_key: Option<u32>,
    /// That key's check value.
    pub data_key_kcv: Option<String>,
    /// The sorted runs: serial range, cards and segments of each.
    pub runs: Vec<RunInfo>,
    /// The account that started it.
    pub actor: String,
    /// That account's role.
    pub role: String,
    /// The request it came with.
    pub request_id: String,
    /// Start, Unix ms.
    pub started_ms: u64,
    /// End, Unix ms (0 while staging).
    pub finished_ms: u64,
    /// Line problems (rejected) or conflicting serials (quarantined); never a code.
    pub problems: Vec<String>,
    /// All problems found (more than listed beyond 100).
    pub problems_total: u64,
    /// For a `duplicate` upload: the batch that holds the same file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate_of: Option<String>,
}

impl From<&BatchRecord> for BatchView {
    fn from(r: &BatchRecord) -> Self {
        BatchView {
            id: r.id.to_string(),
            state: r.state,
            source: r.source,
            manufacturer: r.manufacturer.clone(),
            cards: r.cards,
            signature_pairs: r.signature_pairs,
            bytes: r.bytes,
            data_key: r.data_key,
            data_key_kcv: r.data_key_kcv.clone(),
            runs: r.runs.clone(),
            actor: r.actor.clone(),
            role: r.role.clone(),
            request_id: r.request_id.clone(),
            started_ms: r.started_ms,
            finished_ms: r.finished_ms,
            problems: r.problems.clone(),
            problems_total: r.problems_total,
            duplicate_of: r.duplicate_of.clone(),
        }
    }
}

/// The error part of a 409 or 422 answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeError {
    /// `quarantined` or `rejected`.
    pub code: String,
    /// What happened, for people.
    pub message: String,
}

/// The answer of an upload or a generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchAnswer {
    /// `committed`, `already_stored`, `quarantined` or `rejected`.
    pub outcome: String,
    /// The batch id (for `already_stored`, the first upload's batch).
    pub batch: String,
    /// The batch's state.
    pub state: BatchState,
    /// Cards stored (0 when rejected).
    pub cards: u64,
    /// Sorted runs written.
    pub runs: usize,
    /// Bytes of the file.
    pub bytes: u64,
    /// Time this request took, from its start to the durable outcome, in ms.
    pub elapsed_ms: u64,
    /// Line problems or conflicting serials (never a code).
    pub problems: Vec<String>,
    /// All problems found.
    pub problems_total: u64,
    /// For 409 and 422: the error shape of the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<OutcomeError>,
}

fn answer(outcome: &ImportOutcome, started: Instant) -> Response {
    let r = outcome.record();
    let kind = outcome.kind();
    let (status, error) = match outcome {
        ImportOutcome::Committed(_) => (StatusCode::CREATED, None),
        ImportOutcome::AlreadyStored(_) => (StatusCode::OK, None),
        ImportOutcome::Quarantined(_) => (
            ErrorCode::Quarantined.status(),
            Some((
                ErrorCode::Quarantined,
                format!(
                    "batch {} is quarantined: {} of its serials are already in the vault; nothing \
                 was overwritten. Next step: check the listed serials with the manufacturer; \
                 for a corrected file an officer proposes discarding this batch (`plico keys \
                 propose discard --batch {}`), a second officer approves, then upload the \
                 corrected file",
                    r.id, r.problems_total, r.id
                ),
            )),
        ),
        ImportOutcome::Rejected(_) => (
            ErrorCode::Rejected.status(),
            Some((
                ErrorCode::Rejected,
                format!(
                    "batch {} is rejected: {} problem(s); nothing was stored",
                    r.id, r.problems_total
                ),
            )),
        ),
    };
    let body = BatchAnswer {
        outcome: kind.to_owned(),
        batch: r.id.to_string(),
        state: r.state,
        cards: r.cards,
        runs: r.runs.len(),
        bytes: r.bytes,
        elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        problems: r.problems.clone(),
        problems_total: r.problems_total,
        error: error.map(|(code, message)| OutcomeError {
            code: code.as_str().to_owned(),
            message,
        }),
    };
    let mut res = (status, Json(body)).into_response();
    if status == StatusCode::CREATED {
        if let Ok(v) = HeaderValue::from_str(&format!("/v1/batches/{}", r.id)) {
            res.headers_mut().insert(header::LOCATION, v);
        }
    }
    res
}

// ---------------------------------------------------------------------------------------------
// Upload
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadParams {
    manufacturer: Option<String>,
    expected_cards: Option<u64>,
    sha256: Option<String>,
}

fn parse_sha256(hex_text: &str) -> Result<[u8; 32], ApiError> {
    let mut out = [0u8; 32];
    if hex_text.len() != 64 || hex::decode_to_slice(hex_text, &mut out).is_err() {
        return Err(ApiError::bad_request(
            "sha256: expected 64 hexadecimal digits",
        ));
    }
    Ok(out)
}

async fn upload(
    State(state): State<AppState>,
    caller: Caller,
    params: Result<Query<UploadParams>, axum::extract::rejection::QueryRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let params = query(params)?;
    let Some(manufacturer) = params.manufacturer else {
        return Err(ApiError::bad_request(
            "manufacturer: required (query parameter `manufacturer`)",
        ));
    };
    vault::check_manufacturer(&manufacturer)?;
    let expected_sha256 = params.sha256.as_deref().map(parse_sha256).transpose()?;
    check_upload_type(request.headers())?;
    let limit = state.bulk.max_upload_bytes;
    if content_length(request.headers()).is_some_and(|n| n > limit) {
        return Err(too_large(limit, LIMIT_SETTING));
    }
    let slot = state.bulk.slot()?;

    let import_request = ImportRequest {
        manufacturer: manufacturer.clone(),
        expected_cards: params.expected_cards,
        expected_sha256,
        actor: caller.account.id.clone(),
        role: caller.account.role.as_str().to_owned(),
        request_id: caller.request_id.clone(),
    };
    let (tx, reader) = upload::channel();
    let job_state = state.clone();
    let import = blocking(move || {
        // Held by the job, not the handler: if the client goes away, the slot is free only
        // once the abandoned batch has been removed.
        let _slot = slot;
        let s = &job_state;
        let ctx = ImportContext {
            vault: &s.codes,
            hsm: &*s.hsm,
            audit: &s.audit,
            rules: &s.import_rules,
        };
        import_file(ctx, reader, &import_request, &|_| {})
    });
    let body = request.into_body();
    let idle = state.bulk.idle_timeout;
    let (pumped, imported) = tokio::join!(upload::pump(body, tx, limit, idle), import);
    if let Err(e) = pumped {
        tracing::warn!(by = %caller.account.id, limit, problem = ?e, "batch upload abandoned");
        return Err(e.answer(limit, LIMIT_SETTING, idle));
    }
    let outcome = imported?;
    let r = outcome.record();
    tracing::info!(
        batch = %r.id,
        outcome = outcome.kind(),
        cards = r.cards,
        bytes = r.bytes,
        manufacturer = %manufacturer,
        by = %caller.account.id,
        elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "batch upload handled"
    );
    Ok(answer(&outcome, started))
}

// ---------------------------------------------------------------------------------------------
// Generation
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RangeBody {
    first: String,
    count: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GenerateBody {
    #[serde(default)]
    serials: Option<Vec<String>>,
    #[serde(default)]
    range: Option<RangeBody>,
    #[serde(default = "weak_filter_default")]
    weak_filter: bool,
}

fn weak_filter_default() -> bool {
    true
}

/// Reads a whole (small enough) body: at most `limit` bytes within `within`.
pub(super) async fn read_body(
    body: Body,
    limit: usize,
    within: Duration,
) -> Result<Vec<u8>, ApiError> {
    let read = async {
        let mut stream = body.into_data_stream();
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|_| ApiError::bad_request("could not read the request body"))?;
            if out.len() + chunk.len() > limit {
                return Err(ApiError::body_too_large(limit));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    };
    tokio::time::timeout(within, read)
        .await
        .unwrap_or_else(|_| Err(ApiError::from_status(StatusCode::REQUEST_TIMEOUT)))
}

async fn generate(
    State(state): State<AppState>,
    caller: Caller,
    request: Request,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    if content_length(&parts.headers).is_some_and(|n| n > GENERATE_BODY_LIMIT as u64) {
        return Err(ApiError::body_too_large(GENERATE_BODY_LIMIT));
    }
    let bytes = read_body(body, GENERATE_BODY_LIMIT, super::REQUEST_TIMEOUT).await?;
    let req: GenerateBody = parse_json(&parts.headers, &bytes)?;
    drop(bytes);
    let serials = match (req.serials, req.range) {
        (Some(list), None) => SerialSet::List(list),
        (None, Some(r)) => SerialSet::Range {
            first: r.first,
            count: r.count,
        },
        _ => {
            return Err(ApiError::bad_request(
                "request body: give either `serials` (a list) or `range` ({first, count})",
            ))
        }
    };
    let slot = state.bulk.slot()?;
    let gen_request = GenerateRequest {
        serials,
        filter: if req.weak_filter {
            WeakFilter::STRICT
        } else {
            WeakFilter::NONE
        },
        actor: caller.account.id.clone(),
        role: caller.account.role.as_str().to_owned(),
        request_id: caller.request_id.clone(),
    };
    let job_state = state.clone();
    let outcome = blocking(move || {
        let _slot = slot;
        let s = &job_state;
        let ctx = ImportContext {
            vault: &s.codes,
            hsm: &*s.hsm,
            audit: &s.audit,
            rules: &s.import_rules,
        };
        generate_batch(ctx, &gen_request, &|_| {})
    })
    .await?;
    let r = outcome.record();
    tracing::info!(
        batch = %r.id,
        outcome = outcome.kind(),
        cards = r.cards,
        by = %caller.account.id,
        elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "codes generated"
    );
    Ok(answer(&outcome, started))
}

// ---------------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PageParams {
    after: Option<String>,
    limit: Option<usize>,
}

/// A page of batches.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchPage {
    /// The batches, by ascending id.
    pub batches: Vec<BatchView>,
    /// The `after` of the next page; absent at the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// Whether `caller` may see `record`: everyone allowed on the route, but a manufacturer only
/// its own uploads.
fn visible(caller: &Caller, record: &BatchRecord) -> bool {
    caller.account.role != Role::Manufacturer || record.actor == caller.account.id
}

fn batch_id(text: &str) -> Result<BatchId, ApiError> {
    crate::ids::batch_id(text).map_err(|e| ApiError::bad_request(format!("batch id: {e}")))
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    params: Result<Query<PageParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<BatchPage>, ApiError> {
    let p = query(params)?;
    let limit = page_limit(p.limit, DEFAULT_PAGE, MAX_PAGE)?;
    let after = p.after.as_deref().map(batch_id).transpose()?;
    let codes = state.codes.clone();
    let audit = state.audit.clone();
    let event = caller.event("batch.list", "batches");
    let (records, next) = blocking(move || {
        audit.append(event)?;
        let mut out = Vec::new();
        let mut cursor = after;
        loop {
            let page = codes.batches(cursor, limit)?;
            let full = page.len() == limit;
            for r in page {
                cursor = Some(r.id);
                if visible(&caller, &r) {
                    out.push(r);
                    if out.len() == limit {
                        return Ok((out, cursor));
                    }
                }
            }
            if !full {
                return Ok((out, None));
            }
        }
    })
    .await?;
    Ok(Json(BatchPage {
        batches: records.iter().map(BatchView::from).collect(),
        next: next.map(|id| id.to_string()),
    }))
}

async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<BatchView>, ApiError> {
    let id = batch_id(&id)?;
    let codes = state.codes.clone();
    let audit = state.audit.clone();
    let event = caller.event("batch.show", id.to_string());
    let record = blocking(move || {
        let record = codes.batch(id)?.filter(|r| visible(&caller, r));
        let Some(record) = record else {
            return Err(vault::Missing::Batch(id).into());
        };
        audit.append(event)?;
        Ok(record)
    })
    .await?;
    Ok(Json(BatchView::from(&record)))
}

/// `GET /v1/import/recipient`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recipient {
    /// The age X25519 recipient (`age1…`) to encrypt batch files to.
    pub recipient: String,
}

async fn recipient(
    State(state): State<AppState>,
    _caller: Caller,
) -> Result<Json<Recipient>, ApiError> {
    let s = state.clone();
    let recipient = blocking(move || s.codes.import_recipient(&*s.hsm, &s.audit)).await?;
    Ok(Json(Recipient { recipient }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sha256_must_be_64_hex_digits() {
        assert!(parse_sha256(&"ab".repeat(32)).is_ok());
        assert!(parse_sha256("abc").is_err());
        assert!(parse_sha256(&"zz".repeat(32)).is_err());
    }
}
