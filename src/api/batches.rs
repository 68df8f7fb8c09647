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
//! from axum's body stream through a bounded channel ([`UPLOAD_QUEUE`] chunks) to a blocking
//! reader that feeds [`vault::import::import_file`] on tokio's blocking pool. The size limit
//! (`[import] max_upload_bytes`) is checked against `Content-Length` before anything is read,
//! and again on every chunk (`413 body_too_large`); a body that stalls for
//! [`super::UPLOAD_IDLE_TIMEOUT`] is abandoned (`408 timeout`). A body that breaks off (the
//! client went away) makes the reader fail, never end: the vault then abandons the batch and
//! nothing of it stays.
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

use super::extract::parse_json;
use super::{blocking, ApiError, Caller, Endpoint};
use crate::AppState;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use vault::codes::{BatchId, BatchRecord, BatchSource, BatchState, RunInfo};
use vault::generate::WeakFilter;
use vault::import::generation::{generate_batch, GenerateRequest, SerialSet};
use vault::import::{import_file, ImportContext, ImportOutcome, ImportRequest};
use vault::Role;

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

/// Chunks of an upload queued between the body stream and the importer. With hyper's chunks
/// of at most a few hundred KiB this bounds what an upload holds in memory to a few MiB.
pub const UPLOAD_QUEUE: usize = 16;

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
    /// `staging`, `committed`, `quarantined` or `rejected`.
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
            StatusCode::CONFLICT,
            Some(format!(
                "batch {} is quarantined: {} of its serials are already in the vault; nothing \
                 was overwritten",
                r.id, r.problems_total
            )),
        ),
        ImportOutcome::Rejected(_) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some(format!(
                "batch {} is rejected: {} problem(s); nothing was stored",
                r.id, r.problems_total
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
        error: error.map(|message| OutcomeError {
            code: kind.to_owned(),
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

/// What travels from the body stream to the importer.
#[derive(Debug)]
enum Chunk {
    Data(Bytes),
    /// The body ended normally: the reader may report end of file.
    End,
    /// The body failed; the reader fails with this message.
    Failed(&'static str),
}

/// A blocking [`Read`] over the chunks of an upload. It reports end of file only after
/// [`Chunk::End`]: a channel closed without it (the handler went away) is an error, so a
/// cut upload can never look like a short, complete file.
struct ChannelReader {
    rx: mpsc::Receiver<Chunk>,
    current: Bytes,
    ended: bool,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.current.is_empty() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Chunk::Data(b)) => self.current = b,
                Some(Chunk::End) => self.ended = true,
                Some(Chunk::Failed(why)) => return Err(std::io::Error::other(why)),
                None => {
                    return Err(std::io::Error::other(
                        "the upload stopped before its end (the connection closed)",
                    ))
                }
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

/// Why the body did not arrive whole.
#[derive(Debug)]
enum PumpError {
    TooLarge,
    Stalled,
    Broken,
}

/// Moves the body into the channel, chunk by chunk, checking the size limit and the idle
/// timeout. Returns `Ok` when the body ended, or when the importer stopped reading early (it
/// then has its own answer).
async fn pump(
    body: Body,
    tx: mpsc::Sender<Chunk>,
    limit: u64,
    idle: Duration,
) -> Result<u64, PumpError> {
    let mut stream = body.into_data_stream();
    let mut total = 0u64;
    loop {
        let next = match tokio::time::timeout(idle, stream.next()).await {
            Ok(next) => next,
            Err(_) => {
                let _ = tx.send(Chunk::Failed("the upload stalled")).await;
                return Err(PumpError::Stalled);
            }
        };
        match next {
            None => {
                let _ = tx.send(Chunk::End).await;
                return Ok(total);
            }
            Some(Err(e)) => {
                tracing::info!(error = %e, "upload body broke off");
                let _ = tx.send(Chunk::Failed("the upload broke off")).await;
                return Err(PumpError::Broken);
            }
            Some(Ok(bytes)) => {
                total = total.saturating_add(bytes.len() as u64);
                if total > limit {
                    let _ = tx
                        .send(Chunk::Failed("the upload is larger than the limit"))
                        .await;
                    return Err(PumpError::TooLarge);
                }
                if tx.send(Chunk::Data(bytes)).await.is_err() {
                    // The importer has finished (a file it refused early): its answer counts.
                    return Ok(total);
                }
            }
        }
    }
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("the upload is larger than the limit of {limit} bytes ([import] max_upload_bytes)"),
    )
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Refuses a multipart body (`curl -F`): the file must be the body itself. Any other type is
/// read as the file (`curl --data-binary` says `application/x-www-form-urlencoded` but sends
/// the bytes unchanged).
fn check_upload_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let mime = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    if mime.starts_with("multipart/") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "content-type {mime}: send the file itself as the body, not a form (with curl, \
                 --data-binary @FILE)"
            ),
        ));
    }
    Ok(())
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

fn query<T>(q: Result<Query<T>, axum::extract::rejection::QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(t)| t).map_err(|e| {
        ApiError::bad_request(format!(
            "query string: {}",
            e.body_text()
                .trim_start_matches("Failed to deserialize query string: ")
        ))
    })
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
    vault::import::check_manufacturer(&manufacturer)?;
    let expected_sha256 = params.sha256.as_deref().map(parse_sha256).transpose()?;
    check_upload_type(request.headers())?;
    let limit = state.bulk.max_upload_bytes;
    if content_length(request.headers()).is_some_and(|n| n > limit) {
        return Err(too_large(limit));
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
    let (tx, rx) = mpsc::channel(UPLOAD_QUEUE);
    let reader = ChannelReader {
        rx,
        current: Bytes::new(),
        ended: false,
    };
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
    let (pumped, imported) = tokio::join!(pump(body, tx, limit, state.bulk.idle_timeout), import);
    match pumped {
        Err(PumpError::TooLarge) => {
            tracing::warn!(by = %caller.account.id, limit, "upload refused: larger than the limit");
            return Err(too_large(limit));
        }
        Err(PumpError::Stalled) => {
            tracing::warn!(by = %caller.account.id, "upload abandoned: it stalled");
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                format!(
                    "the upload sent nothing for {} seconds and was abandoned",
                    state.bulk.idle_timeout.as_secs()
                ),
            ));
        }
        Err(PumpError::Broken) => {
            return Err(ApiError::bad_request(
                "the upload broke off before its end; nothing was stored",
            ));
        }
        Ok(_) => {}
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
struct GenerateBody {
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
async fn read_body(body: Body, limit: usize, within: Duration) -> Result<Vec<u8>, ApiError> {
    let read = async {
        let mut stream = body.into_data_stream();
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|_| ApiError::bad_request("could not read the request body"))?;
            if out.len() + chunk.len() > limit {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    format!("request body is larger than {limit} bytes"),
                ));
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
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body is larger than {GENERATE_BODY_LIMIT} bytes"),
        ));
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
    if text.len() > 24 {
        return Err(ApiError::bad_request(
            "batch id: expected b followed by digits",
        ));
    }
    Ok(BatchId::parse(text)?)
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    params: Result<Query<PageParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<BatchPage>, ApiError> {
    let p = query(params)?;
    let limit = match p.limit {
        None => DEFAULT_PAGE,
        Some(n) if (1..=MAX_PAGE).contains(&n) => n,
        Some(n) => {
            return Err(ApiError::bad_request(format!(
                "limit: between 1 and {MAX_PAGE}, got {n}"
            )))
        }
    };
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
            return Err(vault::Error::NotFound(format!("batch {id}")));
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

    /// A reader over `chunks`, whose sender is gone once they are queued.
    fn reader(chunks: Vec<Chunk>) -> ChannelReader {
        let (tx, rx) = mpsc::channel(chunks.len().max(1));
        for c in chunks {
            tx.try_send(c).unwrap();
        }
        ChannelReader {
            rx,
            current: Bytes::new(),
            ended: false,
        }
    }

    #[test]
    fn the_reader_ends_only_at_the_end_marker() {
        let mut r = reader(vec![
            Chunk::Data(Bytes::from_static(b"ab")),
            Chunk::Data(Bytes::from_static(b"c")),
            Chunk::End,
        ]);
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        assert_eq!(s, "abc");

        let mut r = reader(vec![Chunk::Data(Bytes::from_static(b"ab"))]);
        let mut s = Vec::new();
        let e = r.read_to_end(&mut s).unwrap_err();
        assert!(e.to_string().contains("connection closed"), "{e}");

        let mut r = reader(vec![
            Chunk::Data(Bytes::from_static(b"ab")),
            Chunk::Failed("the upload broke off"),
        ]);
        assert!(r.read_to_end(&mut Vec::new()).is_err());
    }

    #[test]
    fn sha256_must_be_64_hex_digits() {
        assert!(parse_sha256(&"ab".repeat(32)).is_ok());
        assert!(parse_sha256("abc").is_err());
        assert!(parse_sha256(&"zz".repeat(32)).is_err());
    }
}
