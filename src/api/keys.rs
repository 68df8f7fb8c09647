//! `/v1/sys/keys` and `/v1/keys/proposals`: key ceremonies under dual control, and the runner
//! of their jobs.
//!
//! | method and path                              | who              | body                        | answer                          |
//! |----------------------------------------------|------------------|-----------------------------|---------------------------------|
//! | `GET /v1/sys/keys`                           | officer, auditor |                             | the key status report           |
//! | `POST /v1/keys/proposals`                    | officer          | `{op, …, reason}`           | `201 {proposal}`                |
//! | `GET /v1/keys/proposals`                     | officer, auditor |                             | `{proposals: [...]}`            |
//! | `GET /v1/keys/proposals/{id}`                | officer, auditor |                             | `{proposal}`                    |
//! | `POST /v1/keys/proposals/{id}/approve`       | officer          | none, or `{shares?, expect_kcv?}` | `200`/`202 {proposal, job?, rekey?}` |
//! | `POST /v1/keys/proposals/{id}/withdraw`      | officer          |                             | `{proposal}`                    |
//!
//! The operation is the JSON of [`Operation`] with the reason beside it:
//! `{"op": "retire", "term": 3, "reason": "…"}`. The vault checks the role again, refuses the
//! proposer's own approval (`403 forbidden`), a lapsed proposal (`409 refused`, the proposal is
//! marked lapsed), a proposal no longer open (`409 wrong_state`) and an operation the state does
//! not allow (`409 refused`, or `404` for an unknown term or batch).
//!
//! A proposal carries its `impact`: the cards a shred leaves without codes (by state, active
//! first, serials listed up to 20 a state), the dispatch jobs it cancels, and every key and
//! term it rotates or destroys with their KCVs. A shred of a batch whose cards still need
//! their codes needs `"force": true` (`409 refused` otherwise). An approval may carry
//! `"expect_kcv": "DC95C0"`: on a mismatch it is refused (`409 refused`) and nothing changes.
//!
//! An approval that starts a job (rotate, shred, discard) answers `202` with the proposal and
//! the job, and the job runs on a blocking thread ([`KeyRunner`]); its progress is in
//! `GET /v1/sys/keys`. Retire and rekey are done within the approval and answer `200`.
//!
//! **Rekey shares.** The approval of a rekey carries a quorum of the *current* shares in its
//! body (`{"shares": ["plico-share:v1:…", …]}`); they are used once, in memory, and never
//! stored, logged or audited, and an error that would quote one is replaced by a plain
//! message. The *new* shares never travel over HTTP: the server writes them, before the HSM
//! commits, one file each (mode 0600, fsync'd, never overwriting) into
//! `[keys] rekey_share_dir`/`<proposal id>/share-<i>-of-<n>.txt` — as `plico init` writes the
//! first ones — and the answer names the files, the new share set and the new root KCV only.
//! So a lost answer, a proxy or a client log can lose or reveal nothing: the shares are on the
//! ceremony medium of the server's host, where the custodians collect them. Without a share
//! directory a rekey is refused when proposed. Every answer of these routes has
//! `Cache-Control: no-store`.

use super::extract::parse_json;
use super::{blocking, ApiError, Caller, Endpoint};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vault::lock;
use vault::Kcv;
use vault::{Ceremonies, JobPhase, KeyJob, KeyStatus, Operation, Proposal, ProposalId};
use vault::{Hsm, Role};
use zeroize::Zeroize;

const OFFICER: &[Role] = &[Role::Officer];
const READERS: &[Role] = &[Role::Officer, Role::Auditor];

pub(super) fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint::new(Method::GET, "/v1/sys/keys", get(status)).roles(READERS),
        Endpoint::new(Method::POST, "/v1/keys/proposals", post(propose)).roles(OFFICER),
        Endpoint::new(Method::GET, "/v1/keys/proposals", get(list)).roles(READERS),
        Endpoint::new(Method::GET, "/v1/keys/proposals/{id}", get(show)).roles(READERS),
        // Takes custodian shares (a rekey): limited per account like other secret-bearing calls.
        Endpoint::new(
            Method::POST,
            "/v1/keys/proposals/{id}/approve",
            post(approve),
        )
        .roles(OFFICER)
        .sensitive(),
        Endpoint::new(
            Method::POST,
            "/v1/keys/proposals/{id}/withdraw",
            post(withdraw),
        )
        .roles(OFFICER),
    ]
}

/// One proposal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProposalView {
    /// The proposal.
    pub proposal: Proposal,
}

/// Every proposal, newest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProposalList {
    /// The proposals.
    pub proposals: Vec<Proposal>,
}

/// The answer of an approval.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Approved {
    /// The proposal as it then stands (`running` for a job, `done` for retire and rekey).
    pub proposal: Proposal,
    /// The job the approval started (rotate, shred, discard), with its progress so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<KeyJob>,
    /// Where the new shares of a rekey were written (never the shares).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rekey: Option<RekeyHandOut>,
}

/// What a rekey made, without a secret: the new share set, and the files holding its shares
/// on the server's host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RekeyHandOut {
    /// The new share set's id.
    pub share_set: String,
    /// Shares issued.
    pub shares: u8,
    /// Shares needed to unseal.
    pub threshold: u8,
    /// KCV of the new root key.
    pub root_kcv: Kcv,
    /// The folder holding the share files (on the server's host).
    pub share_dir: String,
    /// The share files, one per custodian.
    pub share_files: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct ApproveRequest {
    #[serde(default)]
    shares: Vec<SecretString>,
    /// The KCV the approver expects the named key to have (from the ceremony log).
    #[serde(default)]
    expect_kcv: Option<String>,
}

/// A JSON answer never cached on the way: key reports name keys, rekey answers name share files.
fn no_store(status: StatusCode, body: impl Serialize) -> Response {
    let mut res = (status, Json(body)).into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

fn proposal_id(text: &str) -> Result<ProposalId, ApiError> {
    crate::ids::proposal_id(text).map_err(|e| ApiError::bad_request(format!("proposal id: {e}")))
}

async fn status(State(state): State<AppState>, _caller: Caller) -> Result<Response, ApiError> {
    let keys = state.keys.clone();
    let clock = state.clock.clone();
    let hsm = state.hsm.clone();
    let report: KeyStatus = blocking(move || keys.status(&*hsm, clock.now_ms())).await?;
    Ok(no_store(StatusCode::OK, report))
}

/// Reads `{"op": …, …, "reason": "…"}`: the reason apart, the rest as an [`Operation`]. Errors
/// name the field, never quote the body.
pub(super) fn parse_proposal(body: serde_json::Value) -> Result<(Operation, String), ApiError> {
    let serde_json::Value::Object(mut map) = body else {
        return Err(ApiError::bad_request(
            "request body: expected a JSON object {\"op\": …, \"reason\": …}",
        ));
    };
    let reason = match map.remove("reason") {
        Some(serde_json::Value::String(r)) => r,
        Some(_) => return Err(ApiError::bad_request("reason: expected a string")),
        None => return Err(ApiError::bad_request("missing field `reason`")),
    };
    let op_name = match map.get("op") {
        Some(serde_json::Value::String(o)) => o.clone(),
        Some(_) => return Err(ApiError::bad_request("op: expected a string")),
        None => return Err(ApiError::bad_request("missing field `op`")),
    };
    let allowed: &[&str] = match op_name.as_str() {
        "rotate" => &["op"],
        "retire" => &["op", "term"],
        "rekey" => &["op", "shares", "threshold"],
        "shred" => &["op", "batch", "force"],
        "discard_quarantined" => &["op", "batch"],
        _ => {
            return Err(ApiError::invalid(
                "op: unknown operation; expected rotate, retire, rekey, shred or \
                 discard_quarantined",
            ))
        }
    };
    if let Some(extra) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        // A field of another operation is named; any other key is not repeated: it is the
        // client's text and could be a value (the fuzz target `api_json` checks for echoes).
        const FIELDS: [&str; 6] = ["op", "term", "shares", "threshold", "batch", "force"];
        return Err(ApiError::bad_request(
            match FIELDS.into_iter().find(|f| *f == extra.as_str()) {
                Some(field) => format!("unknown field `{field}` for op {op_name}"),
                None => format!(
                    "a field other than {} and reason for op {op_name}",
                    allowed.join(", ")
                ),
            },
        ));
    }
    let op: Operation = serde_json::from_value(serde_json::Value::Object(map)).map_err(|_| {
        ApiError::bad_request(format!(
            "op {op_name}: expected {}",
            match op_name.as_str() {
                "retire" => "`term`: a term number",
                "rekey" => "`shares` and `threshold`: numbers from 1 to 255",
                "shred" => "`batch`: a batch number, and `force`: true or false",
                "discard_quarantined" => "`batch`: a batch number",
                _ => "no other field",
            }
        ))
    })?;
    Ok((op, reason))
}

async fn propose(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: serde_json::Value = parse_json(&headers, &body)?;
    let (op, reason) = parse_proposal(body)?;
    if matches!(op, Operation::Rekey { .. }) && state.key_runner.share_dir.is_none() {
        return Err(vault::Refusal::NoShareDir.into());
    }
    let keys = state.keys.clone();
    let clock = state.clock.clone();
    let hsm = state.hsm.clone();
    let actor = caller.actor();
    let p = blocking(move || keys.propose(&*hsm, &actor, op, &reason, clock.now_ms())).await?;
    tracing::info!(proposal = %p.id, op = p.op.name(), by = %caller.account.id, "key operation proposed");
    Ok(no_store(StatusCode::CREATED, ProposalView { proposal: p }))
}

async fn list(State(state): State<AppState>, _caller: Caller) -> Result<Response, ApiError> {
    let keys = state.keys.clone();
    let clock = state.clock.clone();
    let proposals = blocking(move || keys.list(clock.now_ms())).await?;
    Ok(no_store(StatusCode::OK, ProposalList { proposals }))
}

async fn show(
    State(state): State<AppState>,
    _caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = proposal_id(&id)?;
    let keys = state.keys.clone();
    let clock = state.clock.clone();
    let p = blocking(move || {
        keys.lapse_expired(clock.now_ms())?;
        keys.get(id)?
            .ok_or(vault::Error::Missing(vault::Missing::Proposal(id)))
    })
    .await?;
    Ok(no_store(StatusCode::OK, ProposalView { proposal: p }))
}

async fn withdraw(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = proposal_id(&id)?;
    let keys = state.keys.clone();
    let clock = state.clock.clone();
    let actor = caller.actor();
    let p = blocking(move || keys.withdraw(&actor, id, clock.now_ms())).await?;
    tracing::info!(proposal = %p.id, by = %caller.account.id, "key proposal withdrawn");
    Ok(no_store(StatusCode::OK, ProposalView { proposal: p }))
}

async fn approve(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id = proposal_id(&id)?;
    let ApproveRequest { shares, expect_kcv } = read_approval(&headers, body)?;
    let expect_kcv = expect_kcv
        .map(|k| {
            k.trim().parse::<Kcv>().map_err(|_| {
                ApiError::bad_request("expect_kcv: expected the key check value, 6 hex digits")
            })
        })
        .transpose()?;
    let keys = state.keys.clone();
    let clock = state.clock.clone();
    let actor = caller.actor();
    let rekey = blocking({
        let keys = keys.clone();
        move || {
            keys.get(id)?
                .map(|p| matches!(p.op, Operation::Rekey { .. }))
                .ok_or(vault::Error::Missing(vault::Missing::Proposal(id)))
        }
    })
    .await?;
    if rekey {
        return approve_rekey(state, caller, id, shares, expect_kcv).await;
    }
    if !shares.is_empty() {
        return Err(ApiError::bad_request(format!(
            "{id} is not a rekey: send no shares to approve it"
        )));
    }
    let hsm = state.hsm.clone();
    let p = blocking(move || keys.approve_expecting(&*hsm, &actor, id, expect_kcv, clock.now_ms()))
        .await?;
    tracing::info!(proposal = %p.id, op = p.op.name(), by = %caller.account.id, state = %p.state, "key operation approved");
    if p.op.is_job() {
        state.key_runner.spawn(&state);
        let keys = state.keys.clone();
        let job = blocking(move || Ok(keys.jobs()?.into_iter().find(|j| j.id == id))).await?;
        return Ok(no_store(
            StatusCode::ACCEPTED,
            Approved {
                proposal: p,
                job,
                rekey: None,
            },
        ));
    }
    Ok(no_store(
        StatusCode::OK,
        Approved {
            proposal: p,
            job: None,
            rekey: None,
        },
    ))
}

/// An approval's body: its shares (none for an empty body) and the expected KCV. The raw body
/// is zeroized after parsing; errors are by position, never quoting it.
fn read_approval(headers: &HeaderMap, body: Bytes) -> Result<ApproveRequest, ApiError> {
    let mut raw: Vec<u8> = body.into();
    if raw.iter().all(u8::is_ascii_whitespace) {
        raw.zeroize();
        return Ok(ApproveRequest::default());
    }
    let parsed = parse_json::<ApproveRequest>(headers, &raw);
    raw.zeroize();
    parsed
}

async fn approve_rekey(
    state: AppState,
    caller: Caller,
    id: ProposalId,
    shares: Vec<SecretString>,
    expect_kcv: Option<Kcv>,
) -> Result<Response, ApiError> {
    if shares.is_empty() {
        return Err(ApiError::bad_request(format!(
            "{id} is a rekey: send a quorum of the current shares, {{\"shares\": [...]}}"
        )));
    }
    let Some(root) = state.key_runner.share_dir.clone() else {
        return Err(vault::Refusal::NoShareDir.into());
    };
    let keys = state.keys.clone();
    let clock = state.clock.clone();
    let hsm = state.hsm.clone();
    let actor = caller.actor();
    let dir = root.join(id.to_string());
    let given = shares.clone();
    let dev_share = state.key_runner.dev_share.clone();
    let result = blocking(move || {
        let before = hsm.status().share_set;
        // `serve --dev` keeps its share beside the data to unseal itself: a rekey that stays
        // in dev mode (threshold 1) replaces it, so the next start unseals again. The new
        // share goes to `dev-share.txt.new` before the HSM commits, over the old one after.
        let dev_next = match (&dev_share, keys.get(id)?.map(|p| p.op)) {
            (Some(f), Some(Operation::Rekey { threshold: 1, .. })) if hsm.status().dev => {
                Some((f.clone(), pending_dev_share(f)))
            }
            _ => None,
        };
        let mut written: Vec<PathBuf> = Vec::new();
        let mut deliver = |new: &[SecretString]| {
            write_share_files(&dir, new, &mut written)?;
            if let (Some((_, next)), Some(first)) = (&dev_next, new.first()) {
                write_dev_share(next, first)?;
            }
            Ok(())
        };
        let res = keys.approve_rekey_expecting(
            &*hsm,
            &actor,
            id,
            &shares,
            &mut deliver,
            expect_kcv,
            clock.now_ms(),
        );
        drop(shares);
        if res.is_err() && hsm.status().share_set == before {
            // The rekey did not happen: shares written for it would never open anything.
            for f in &written {
                let _ = std::fs::remove_file(f);
            }
            let _ = std::fs::remove_dir(&dir);
            if let Some((_, next)) = &dev_next {
                let _ = std::fs::remove_file(next);
            }
        } else if let Some((file, next)) = &dev_next {
            // Done: the new dev share replaces the old one (a crash before this rename is
            // repaired by `serve --dev`, which tries the pending file when the old one fails).
            if let Err(e) = std::fs::rename(next, file).and_then(|()| sync_parent(file)) {
                tracing::error!(error = %e, file = %next.display(), "cannot move the new dev share into place; serve --dev tries it at the next start");
            } else {
                tracing::warn!(file = %file.display(), "dev share replaced by the rekey (--dev)");
            }
        }
        let st = hsm.status();
        res.map(|p| (p, written, dir, st))
    })
    .await;
    let (p, written, dir, st) = match result {
        Ok(ok) => ok,
        Err(e) => return Err(scrub(e, &given)),
    };
    drop(given);
    tracing::info!(
        proposal = %p.id,
        by = %caller.account.id,
        share_set = %st.share_set,
        shares = st.shares,
        threshold = st.threshold,
        root_kcv = %st.root_kcv,
        dir = %dir.display(),
        "rekey done; new share files written"
    );
    Ok(no_store(
        StatusCode::OK,
        Approved {
            proposal: p,
            job: None,
            rekey: Some(RekeyHandOut {
                share_set: st.share_set,
                shares: st.shares,
                threshold: st.threshold,
                root_kcv: st.root_kcv,
                share_dir: dir.display().to_string(),
                share_files: written.iter().map(|f| f.display().to_string()).collect(),
            }),
        },
    ))
}

/// Writes each new share to its own file in `dir` (created 0700): mode 0600, created new
/// (never overwriting), fsync'd, then the directory fsync'd. Called by the HSM before it
/// commits the rekey. Errors name files, never a share.
fn write_share_files(
    dir: &std::path::Path,
    shares: &[SecretString],
    written: &mut Vec<PathBuf>,
) -> vault::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let io = |what: &std::path::Path, e: std::io::Error| {
        vault::Error::from(vault::Refusal::ShareFileUnwritable {
            path: what.display().to_string(),
            error: e.to_string(),
        })
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io(dir, e))?;
    }
    let n = shares.len();
    for (i, share) in shares.iter().enumerate() {
        let path = dir.join(format!("share-{}-of-{n}.txt", i + 1));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        written.push(path.clone());
        f.write_all(share.expose_secret().as_bytes())
            .and_then(|()| f.write_all(b"\n"))
            .and_then(|()| f.sync_all())
            .map_err(|e| io(&path, e))?;
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(dir, e))?;
    Ok(())
}

/// Where a rekey of a dev HSM puts its new dev share until the HSM has committed.
pub fn pending_dev_share(file: &std::path::Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".new");
    PathBuf::from(name)
}

/// Writes `share` to `path` (mode 0600, replacing a leftover), fsync'd with its directory.
fn write_dev_share(path: &std::path::Path, share: &SecretString) -> vault::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |e: std::io::Error| {
        vault::Error::from(vault::Refusal::ShareFileUnwritable {
            path: path.display().to_string(),
            error: e.to_string(),
        })
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(share.expose_secret().as_bytes())
        .and_then(|()| f.write_all(b"\n"))
        .and_then(|()| f.sync_all())
        .and_then(|()| sync_parent(path))
        .map_err(io)
}

fn sync_parent(path: &std::path::Path) -> std::io::Result<()> {
    match path.parent() {
        Some(d) => std::fs::File::open(d).and_then(|d| d.sync_all()),
        None => Ok(()),
    }
}

/// `e` as an API error, its message replaced by a plain one should it quote a piece of any
/// of `shares` (a last guard: the HSM's messages are built not to).
fn scrub(e: ApiError, shares: &[SecretString]) -> ApiError {
    if shares.iter().any(|s| echoes(e.message(), s)) {
        return e.with_message("share refused: a share is not valid");
    }
    e
}

/// True if `message` holds 24 characters in a row of `share` (longer than any public part
/// of a share: its prefix, its set id).
fn echoes(message: &str, share: &SecretString) -> bool {
    const WINDOW: usize = 24;
    let s = share.expose_secret().trim();
    if s.len() < WINDOW {
        return !s.is_empty() && message.contains(s);
    }
    s.as_bytes()
        .windows(WINDOW)
        .any(|w| std::str::from_utf8(w).is_ok_and(|w| message.contains(w)))
}

/// Chunks a runner asks [`Ceremonies::step`] for at a time, between looks at the stop flag.
const STEP_CHUNKS: usize = 8;
/// Rewrap chunks between two progress lines in the log.
const LOG_EVERY_CHUNKS: u64 = 64;
/// How long a job interrupted by an error waits before [`crate::key_jobs`] tries again.
const RETRY_AFTER: Duration = Duration::from_secs(30);

/// Runs the unfinished key job on a blocking thread, one at a time, with log lines (start,
/// each phase, progress every [`LOG_EVERY_CHUNKS`] chunks, end) that name proposals, terms,
/// KCVs and counts — never key bytes. Stops between chunks at shutdown ([`KeyRunner::stop`]);
/// the job carries on at the next start.
#[derive(Debug)]
pub struct KeyRunner {
    running: Arc<AtomicBool>,
    stop: AtomicBool,
    pause: Duration,
    retry_at: Mutex<Option<Instant>>,
    /// Where the new shares of a rekey are written (`[keys] rekey_share_dir`).
    pub share_dir: Option<PathBuf>,
    /// `serve --dev`: the dev share file, replaced by a rekey that stays in dev mode.
    pub dev_share: Option<PathBuf>,
}

/// Clears the running flag when the runner's thread ends, however it ends.
struct Running(Arc<AtomicBool>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl KeyRunner {
    /// A runner pausing `pause` after each rewrap chunk, with no rekey share directory.
    pub fn new(pause: Duration) -> Self {
        KeyRunner {
            running: Arc::new(AtomicBool::new(false)),
            stop: AtomicBool::new(false),
            pause,
            retry_at: Mutex::new(None),
            share_dir: None,
            dev_share: None,
        }
    }

    /// The same runner writing rekey shares under `dir`.
    pub fn with_share_dir(&self, dir: PathBuf) -> Self {
        let mut r = KeyRunner::new(self.pause);
        r.share_dir = Some(dir);
        r.dev_share = self.dev_share.clone();
        r
    }

    /// The same runner replacing the dev share `file` on a rekey that stays in dev mode
    /// (`serve --dev` only).
    pub fn with_dev_share(&self, file: PathBuf) -> Self {
        let mut r = KeyRunner::new(self.pause);
        r.share_dir = self.share_dir.clone();
        r.dev_share = Some(file);
        r
    }

    /// True while a thread of this runner is running the job.
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    /// Asks the running job to stop after its current chunk (at shutdown).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// False while a job interrupted by an error waits before it is tried again.
    pub fn retry_due(&self) -> bool {
        let at = lock(&self.retry_at);
        at.is_none_or(|t| Instant::now() >= t)
    }

    /// Runs the unfinished job of `state` to its end on a blocking thread, unless this runner
    /// is already running one. Returns whether it started a thread. Must be called from
    /// within the tokio runtime.
    pub fn spawn(&self, state: &AppState) -> bool {
        if self.running.swap(true, Ordering::SeqCst) {
            return false;
        }
        let guard = Running(self.running.clone());
        let keys = state.keys.clone();
        let hsm = state.hsm.clone();
        let runner = state.key_runner.clone();
        tokio::task::spawn_blocking(move || {
            let _guard = guard;
            match run_job(&keys, &*hsm, &runner) {
                Ok(_) => {
                    *lock(&runner.retry_at) = None;
                }
                Err(e) => {
                    *lock(&runner.retry_at) = Some(Instant::now() + RETRY_AFTER);
                    let sealed = matches!(e, vault::Error::Sealed);
                    tracing::warn!(
                        error = %e,
                        sealed,
                        "key job interrupted; it carries on from its last chunk later"
                    );
                }
            }
        });
        true
    }
}

/// Carries the unfinished job on to its end (or until `runner` is told to stop), logging.
fn run_job(keys: &Ceremonies, hsm: &dyn Hsm, runner: &KeyRunner) -> vault::Result<Option<KeyJob>> {
    let started = Instant::now();
    let mut announced = false;
    let mut last_phase: Option<JobPhase> = None;
    let mut chunks: u64 = 0;
    loop {
        if runner.stop.load(Ordering::SeqCst) {
            let job = keys.job()?;
            if let Some(j) = job.as_ref().filter(|j| j.unfinished()) {
                tracing::info!(proposal = %j.id, done = j.done, total = j.total, "key job stopped for shutdown; it carries on at the next start");
            }
            return Ok(job);
        }
        let mut progressed = false;
        let job = keys.step(hsm, STEP_CHUNKS, &mut |j: &KeyJob| {
            progressed = true;
            if !announced {
                announced = true;
                tracing::info!(proposal = %j.id, op = j.op.name(), phase = ?j.phase, "key job running");
            }
            if last_phase != Some(j.phase) {
                last_phase = Some(j.phase);
                let target_kcv = j.target_kcv.map(|k| k.to_string()).unwrap_or_default();
                tracing::info!(
                    proposal = %j.id,
                    phase = ?j.phase,
                    target = ?j.target.map(|t| t.0),
                    target_kcv = %target_kcv,
                    done = j.done,
                    total = j.total,
                    "key job phase"
                );
            }
            if j.phase == JobPhase::Rewrap && j.done > 0 {
                chunks += 1;
                if chunks % LOG_EVERY_CHUNKS == 0 {
                    tracing::info!(proposal = %j.id, done = j.done, total = j.total, "key job rewrapping");
                }
                if !runner.pause.is_zero() {
                    std::thread::sleep(runner.pause);
                }
            }
        })?;
        match job {
            Some(j) if j.unfinished() => {
                if !progressed {
                    // Another thread holds the job (an approval's first phases): it, or the
                    // next look of `key_jobs`, carries on.
                    return Ok(Some(j));
                }
            }
            Some(j) => {
                if announced {
                    tracing::info!(
                        proposal = %j.id,
                        op = j.op.name(),
                        state = ?j.state,
                        rewrapped = j.done,
                        retired = j.retired.len(),
                        seconds = started.elapsed().as_secs_f64(),
                        "key job finished"
                    );
                }
                return Ok(Some(j));
            }
            None => return Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ErrorCode;

    #[test]
    fn proposals_parse_with_their_reason_and_nothing_else() {
        let (op, r) =
            parse_proposal(serde_json::json!({"op": "retire", "term": 3, "reason": "old"}))
                .unwrap();
        assert_eq!(
            op,
            Operation::Retire {
                term: vault::TermId(3)
            }
        );
        assert_eq!(r, "old");
        let e = parse_proposal(serde_json::json!({"op": "rotate"})).unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        let e = parse_proposal(serde_json::json!({"op": "rotate", "term": 1, "reason": "x"}))
            .unwrap_err();
        assert!(e.message().contains("term"), "{}", e.message());
        let e = parse_proposal(serde_json::json!({"op": "melt", "reason": "x"})).unwrap_err();
        assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let e = parse_proposal(serde_json::json!({"op": "rekey", "shares": "five", "reason": "x"}))
            .unwrap_err();
        assert!(!e.message().contains("five"), "{}", e.message());
    }

    /// The fuzz target `api_json`'s echo check: a key the proposal does not know was quoted back
    /// (``unknown field `…` ``), and a key is the client's text: a code or a share can be
    /// pasted there. Only plico's own field names are named.
    #[test]
    fn an_unknown_key_of_a_proposal_is_not_repeated() {
        for key in ["80380000123456", "plico-share:v1:00112233445566", "tERm"] {
            let mut body = serde_json::json!({"op": "retire", "term": 2, "reason": "x"});
            body[key] = serde_json::json!(1);
            let e = parse_proposal(body).unwrap_err();
            assert_eq!(e.status(), StatusCode::BAD_REQUEST);
            assert!(!e.message().contains(key), "{key}: {}", e.message());
            assert!(e.message().contains("term"), "{}", e.message());
        }
    }

    #[test]
    fn a_message_quoting_a_share_is_scrubbed() {
        let share = SecretString::from(
            "plico-share:v1:0011223344556677:1:2:3:00112233445566778899aabbccddeeff:0badc0de"
                .to_owned(),
        );
        let e = ApiError::new(
            ErrorCode::ShareRefused,
            "share refused: 33445566778899aabbccddeeff is odd",
        );
        let s = scrub(e, std::slice::from_ref(&share));
        assert!(!s.message().contains("33445566"));
        let fine = ApiError::new(ErrorCode::ShareRefused, "set 0011223344556677");
        assert_eq!(scrub(fine.clone(), &[share]), fine);
    }
}
