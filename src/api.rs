//! The HTTP API: the route table, the limits every route gets, and the one way handlers reach
//! the synchronous vault and HSM.
//!
//! Each resource lives in its own module and lists its endpoints as [`Endpoint`] rows: method,
//! path, handler, an [`Access`] rule, a [`RateClass`] and a [`BodyClass`]. [`router`] folds the rows into one
//! axum router and enforces authorisation at that single fold, from the table, without
//! touching the handlers ([`auth`]): a role-protected route checks the bearer token (401),
//! the role (403), that the audit key is there (503 while sealed) and the per-account rate
//! of sensitive routes (429), then hands the handler a [`Caller`].
//!
//! Every route is wrapped, outermost first, in: a fresh request id ([`RequestId`], returned
//! as `x-request-id` and written into audit events), request tracing, a rewrite of bare error
//! responses into the JSON error shape of [`ApiError`], and — for [`BodyClass::Small`] routes,
//! all but the bulk ones — a request body size limit ([`BODY_LIMIT`]) and a request timeout
//! ([`REQUEST_TIMEOUT`]). [`BodyClass::Bulk`] routes (batch upload, generation, registry
//! upload) read their body themselves under their own limits ([`BulkLimits`]: the upload size
//! from `[import] max_upload_bytes` or `[registry] max_upload_bytes`, an idle timeout between
//! chunks) and may run as long as their work.
//!
//! Handlers never call the vault or the HSM directly on the async runtime: they go through
//! [`blocking`], which runs the call on tokio's blocking pool and maps its error.

pub mod accounts;
pub mod audit;
pub mod auth;
mod backup;
pub mod batches;
pub mod bounces;
pub mod cards;
pub mod dispatch;
pub mod dlr;
#[cfg(test)]
mod docs;
pub mod error;
mod extract;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod health;
pub mod holders;
pub mod keys;
pub mod mailers;
mod metrics;
pub mod openapi;
pub mod registry;
pub mod reports;
mod seal;
mod status;
mod unseal;
mod upload;

pub use auth::{Caller, RateLimits, RequestId};
pub use error::{ApiError, ErrorCode};
pub use unseal::{UnsealLimits, UnsealRate};

use crate::AppState;
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use axum::Router;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use tracing::Level;
use vault::Role;

/// Largest request body accepted, in bytes, on [`BodyClass::Small`] routes. Bulk uploads have
/// their own limit ([`BulkLimits`]).
pub const BODY_LIMIT: usize = 64 * 1024;

/// Longest a request may take before the client gets `408`.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Who may call an endpoint: the one rule each row of the route table declares.
///
/// A row starts [`Access::Undeclared`]: forgetting to declare a rule is representable, and
/// [`check_rules`] (run by the route-table test) names every such row, while [`router`] lets
/// nobody call it (`403 no_access_rule`) — an omission fails closed, never open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Access {
    /// No rule was declared: refused to everyone, and reported by [`check_rules`].
    Undeclared,
    /// Anyone who can reach the listener, without a token. Only for the probes, the seal
    /// status and unseal: custodians are not accounts (they must be able to unseal before
    /// any account can be checked — the audit key is locked until then), and for unseal the
    /// share itself is the credential. Also the SMS gateway's delivery reports (`/v1/dlr`):
    /// the gateway has no account, and the route checks a shared secret of its own. And the
    /// OpenAPI description (`/v1/openapi.json`): the shape of the API, no data.
    Public,
    /// An enabled account with a bearer token and one of these roles. Needs the audit key (an
    /// unsealed HSM): every such call may write audit events.
    Roles(&'static [Role]),
    /// The metrics scraper: the scrape token of `[metrics] token_file` as a bearer token, no
    /// account (accounts can be checked only while unsealed, and metrics must be read while
    /// sealed). Without a configured token, refused to everyone (`401`).
    ScrapeToken,
}

/// How a route is rate-limited per account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RateClass {
    /// Only the global limits (body size, timeout).
    #[default]
    Normal,
    /// Reveals a secret (a token, later a code), sends a code, or reveals a holder's personal
    /// data (a registry search): limited per account to `[limits] sensitive_per_minute`,
    /// answering `429` beyond.
    Sensitive,
}

/// How a route's request body and duration are limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyClass {
    /// At most [`BODY_LIMIT`] bytes, and the whole request within [`REQUEST_TIMEOUT`].
    #[default]
    Small,
    /// Bulk work (batch upload, generation): the handler reads the body itself under its own
    /// size limit and an idle timeout, and the answer comes when the work is durable, however
    /// long that takes.
    Bulk,
}

/// The limits of bulk routes ([`BodyClass::Bulk`]), from `[import]`.
#[derive(Debug, Clone)]
pub struct BulkLimits {
    /// Largest batch upload accepted, in bytes (`[import] max_upload_bytes`).
    pub max_upload_bytes: u64,
    /// Largest registry upload accepted, in bytes (`[registry] max_upload_bytes`).
    pub registry_max_upload_bytes: u64,
    /// Longest wait for the next chunk of an upload before it is abandoned.
    pub idle_timeout: Duration,
    slots: Arc<Semaphore>,
}

/// How long an upload may stall between two chunks before it is abandoned (`408`).
pub const UPLOAD_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

impl BulkLimits {
    /// Limits of `max_upload_bytes` per batch upload and `concurrent` bulk jobs at once (at
    /// least 1); registry uploads get the default limit until the caller sets its own.
    pub fn new(max_upload_bytes: u64, concurrent: u32) -> Self {
        let slots = usize::try_from(concurrent.max(1)).unwrap_or(1);
        BulkLimits {
            max_upload_bytes,
            registry_max_upload_bytes: crate::DEFAULT_REGISTRY_MAX_UPLOAD_BYTES,
            idle_timeout: UPLOAD_IDLE_TIMEOUT,
            slots: Arc::new(Semaphore::new(slots)),
        }
    }

    /// A slot for one bulk job, held until the permit is dropped.
    ///
    /// # Errors
    /// `503 busy` (with `Retry-After`) when every slot is taken.
    pub fn slot(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.slots.clone().try_acquire_owned().map_err(|_| {
            let mut e = ApiError::new(
                ErrorCode::Busy,
                "as many imports, generations and registry uploads as allowed are running; retry \
                 later",
            );
            e.set_retry_after(30);
            e
        })
    }
}

/// One row of the route table.
#[derive(Debug)]
pub struct Endpoint {
    /// The HTTP method.
    pub method: Method,
    /// The path, in axum's syntax.
    pub path: &'static str,
    /// Who may call it.
    pub access: Access,
    /// Its rate limit class.
    pub rate: RateClass,
    /// How its body and duration are limited.
    pub body: BodyClass,
    handler: MethodRouter<AppState>,
}

impl Endpoint {
    /// A row with no access rule yet ([`Access::Undeclared`]); declare one with
    /// [`Endpoint::public`] or [`Endpoint::roles`].
    pub fn new(method: Method, path: &'static str, handler: MethodRouter<AppState>) -> Self {
        Endpoint {
            method,
            path,
            access: Access::Undeclared,
            rate: RateClass::Normal,
            body: BodyClass::Small,
            handler,
        }
    }

    /// Callable without a token (see [`Access::Public`] for which endpoints may be).
    pub fn public(mut self) -> Self {
        self.access = Access::Public;
        self
    }

    /// Callable by accounts with one of `roles`.
    pub fn roles(mut self, roles: &'static [Role]) -> Self {
        self.access = Access::Roles(roles);
        self
    }

    /// Callable with the metrics scrape token only ([`Access::ScrapeToken`]).
    pub fn scrape_token(mut self) -> Self {
        self.access = Access::ScrapeToken;
        self
    }

    /// Rate-limited per account as [`RateClass::Sensitive`].
    pub fn sensitive(mut self) -> Self {
        self.rate = RateClass::Sensitive;
        self
    }

    /// A bulk route ([`BodyClass::Bulk`]): no global body limit or request timeout; the
    /// handler enforces its own.
    pub fn bulk(mut self) -> Self {
        self.body = BodyClass::Bulk;
        self
    }
}

/// Every endpoint of the API, resource by resource.
pub fn endpoints() -> Vec<Endpoint> {
    [
        health::endpoints(),
        status::endpoints(),
        unseal::endpoints(),
        accounts::endpoints(),
        audit::endpoints(),
        batches::endpoints(),
        registry::endpoints(),
        holders::endpoints(),
        cards::endpoints(),
        dispatch::endpoints(),
        dlr::endpoints(),
        bounces::endpoints(),
        mailers::endpoints(),
        reports::endpoints(),
        keys::endpoints(),
        seal::endpoints(),
        backup::endpoints(),
        openapi::endpoints(),
        metrics::endpoints(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The rows of `endpoints` that declare no usable rule (undeclared, or an empty role list;
/// a sensitive route that is public, which cannot be limited per account), as
/// `"METHOD path: why"`.
pub fn check_rules(endpoints: &[Endpoint]) -> Vec<String> {
    endpoints
        .iter()
        .filter_map(|e| {
            let why = match (e.access, e.rate) {
                (Access::Undeclared, _) => "declares no access rule",
                (Access::Roles([]), _) => "allows an empty list of roles",
                (Access::Public | Access::ScrapeToken, RateClass::Sensitive) => {
                    "is sensitive but has no account: it cannot be rate-limited per account"
                }
                _ => return None,
            };
            Some(format!("{} {}: {why}", e.method, e.path))
        })
        .collect()
}

/// Builds the router from [`endpoints`] and applies the limits to every route; the browser
/// console ([`crate::console::router`]) is mounted beside it, under `/`, with its own layers
/// (it never reads a bearer token, and the API never reads its session cookie). Every request
/// of both is counted by its route template ([`crate::metrics::track`]).
pub fn router(state: AppState) -> Router {
    let metrics = state.metrics.clone();
    router_from(state.clone(), endpoints())
        .merge(crate::console::router(state))
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            crate::metrics::track,
        ))
}

/// Builds a router from the given rows (the route table, or a test's own): each route gets
/// the check its [`Access`] needs and the limits of its [`BodyClass`], then every route gets
/// a request id.
pub fn router_from(state: AppState, endpoints: Vec<Endpoint>) -> Router {
    for problem in check_rules(&endpoints) {
        tracing::error!(endpoint = %problem, "route table: endpoint refused to every caller");
    }
    let mut routes = Router::new();
    for e in endpoints {
        let handler = guard(&state, &e);
        let handler = match e.body {
            BodyClass::Small => handler
                .layer::<_, Infallible>(TimeoutLayer::with_status_code(
                    StatusCode::REQUEST_TIMEOUT,
                    REQUEST_TIMEOUT,
                ))
                .layer::<_, Infallible>(RequestBodyLimitLayer::new(BODY_LIMIT)),
            BodyClass::Bulk => handler,
        };
        routes = routes.route(e.path, handler);
    }
    routes
        .fallback(no_such_endpoint)
        .layer(axum::middleware::map_response(json_errors))
        .layer(
            // A sealed `/readyz` answers 503 on every probe: not an error worth a log line.
            // Failures that matter are logged where they happen (see `ApiError`).
            TraceLayer::new_for_http().on_failure(DefaultOnFailure::new().level(Level::DEBUG)),
        )
        .layer(axum::middleware::from_fn(auth::request_id))
        .with_state(state)
}

/// Wraps a handler in the check its access level needs: none for public endpoints, the
/// bearer-token, role, seal and rate checks for role-protected ones, and a refusal for a row
/// without a usable rule.
fn guard(state: &AppState, e: &Endpoint) -> MethodRouter<AppState> {
    let handler = e.handler.clone();
    match (e.access, e.rate) {
        (Access::Public, RateClass::Normal) => handler,
        (Access::ScrapeToken, RateClass::Normal) => handler.route_layer(
            axum::middleware::from_fn_with_state(state.clone(), crate::metrics::authorize_scrape),
        ),
        (Access::Roles(roles), rate) if !roles.is_empty() => {
            let rule = auth::Rule {
                state: state.clone(),
                roles,
                rate,
                path: e.path,
            };
            handler.route_layer(axum::middleware::from_fn_with_state(rule, auth::authorize))
        }
        _ => handler.route_layer(axum::middleware::from_fn(auth::no_rule)),
    }
}

/// Vault calls ([`blocking`]) running at once, at most, in the whole process; a call beyond
/// them waits as a future, holding no thread, until one ends.
///
/// Without a bound, every call waiting on a flush or a lock takes a thread of tokio's
/// blocking pool (up to 512), and each such thread keeps allocator pages of its own: measured
/// with `plico-bench soak` on a loaded 2-core machine, 270 threads and 1.3 GiB resident after
/// a few minutes, against 150 MiB before the load came. 32 calls at once still fill a group
/// commit of the audit chain (one flush for all of them) and keep both cores busy.
pub const MAX_VAULT_CALLS: usize = 32;

/// The permits of [`MAX_VAULT_CALLS`].
static VAULT_CALLS: Semaphore = Semaphore::const_new(MAX_VAULT_CALLS);

/// Runs a synchronous vault or HSM call on the blocking pool, at most [`MAX_VAULT_CALLS`] at
/// once.
///
/// The one way handlers reach the vault: the async workers never block on key operations or
/// disk, and every domain error goes through [`ApiError`]'s mapping. The call holds its
/// permit until it returns, even if the request that made it is gone (a client that hung up
/// does not free a thread that is still working).
///
/// # Errors
/// The call's own error, mapped; `500 internal` if the task panicked or was cancelled (the
/// panic payload is not logged: it could quote anything the call held).
pub async fn blocking<T, F>(f: F) -> Result<T, ApiError>
where
    F: FnOnce() -> vault::Result<T> + Send + 'static,
    T: Send + 'static,
{
    // The semaphore is never closed, so `acquire` cannot fail.
    let Ok(permit) = VAULT_CALLS.acquire().await else {
        return Err(ApiError::internal());
    };
    let call = move || {
        let _permit = permit;
        f()
    };
    match tokio::task::spawn_blocking(call).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(join) => {
            tracing::error!(
                panicked = join.is_panic(),
                "a blocking vault call did not complete"
            );
            Err(ApiError::internal())
        }
    }
}

async fn no_such_endpoint() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such endpoint")
}

/// Gives error responses made outside the handlers (body limit, timeout, method not allowed)
/// the same JSON shape as [`ApiError`].
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let allow = response.headers().get(header::ALLOW).cloned();
    let mut rewritten = ApiError::from_status(status).into_response();
    if let Some(allow) = allow {
        rewritten.headers_mut().insert(header::ALLOW, allow);
    }
    rewritten
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn vault_calls_run_at_most_max_vault_calls_at_once() {
        static RUNNING: AtomicUsize = AtomicUsize::new(0);
        static PEAK: AtomicUsize = AtomicUsize::new(0);
        let calls: Vec<_> = (0..4 * MAX_VAULT_CALLS)
            .map(|i| {
                tokio::spawn(blocking(move || {
                    let now = RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
                    PEAK.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                    RUNNING.fetch_sub(1, Ordering::SeqCst);
                    Ok(i)
                }))
            })
            .collect();
        let mut done = 0;
        for (i, call) in calls.into_iter().enumerate() {
            assert_eq!(call.await.unwrap().unwrap(), i);
            done += 1;
        }
        assert_eq!(done, 4 * MAX_VAULT_CALLS);
        let peak = PEAK.load(Ordering::SeqCst);
        assert!(
            (2..=MAX_VAULT_CALLS).contains(&peak),
            "{peak} calls ran at once"
        );
    }
}
