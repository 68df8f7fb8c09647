//! The HTTP API: the route table, the limits every route gets, and the one way handlers reach
//! the synchronous vault and HSM.
//!
//! Each resource lives in its own module and lists its endpoints as [`Endpoint`] rows: method,
//! path, handler and an [`Access`] level. [`router`] folds the rows into one axum router, so
//! per-route authorisation (accounts and roles) can be enforced at that single fold, from the
//! table, without touching the handlers.
//!
//! Every route is wrapped, outermost first, in: request tracing, a rewrite of bare error
//! responses into the JSON error shape of [`ApiError`], a request body size limit
//! ([`BODY_LIMIT`]) and a request timeout ([`REQUEST_TIMEOUT`]).
//!
//! Handlers never call the vault or the HSM directly on the async runtime: they go through
//! [`blocking`], which runs the call on tokio's blocking pool and maps its error.

pub mod error;
mod extract;
mod health;
mod status;
mod unseal;

pub use error::ApiError;

use crate::AppState;
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use axum::Router;
use std::time::Duration;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use tracing::Level;

/// Largest request body accepted, in bytes. Shares and, later, API calls are small; bulk
/// uploads will get their own streaming routes with their own limit.
pub const BODY_LIMIT: usize = 64 * 1024;

/// Longest a request may take before the client gets `408`.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Who may call an endpoint.
///
/// There are no accounts yet: every endpoint is [`Access::Public`]. Roles (manufacturer,
/// cms, operator, officer, auditor) become further variants, checked in [`router`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Access {
    /// Anyone who can reach the listener: probes, seal status, and unseal (where the share
    /// itself is the credential).
    Public,
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
    handler: MethodRouter<AppState>,
}

impl Endpoint {
    fn new(
        method: Method,
        path: &'static str,
        access: Access,
        handler: MethodRouter<AppState>,
    ) -> Self {
        Endpoint {
            method,
            path,
            access,
            handler,
        }
    }
}

/// Every endpoint of the API, resource by resource.
pub fn endpoints() -> Vec<Endpoint> {
    [
        health::endpoints(),
        status::endpoints(),
        unseal::endpoints(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Builds the router from [`endpoints`] and applies the limits to every route.
pub fn router(state: AppState) -> Router {
    let mut routes = Router::new();
    for e in endpoints() {
        routes = routes.route(e.path, guard(e.access, e.handler));
    }
    routes
        .fallback(no_such_endpoint)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(RequestBodyLimitLayer::new(BODY_LIMIT))
        .layer(axum::middleware::map_response(json_errors))
        .layer(
            // A sealed `/readyz` answers 503 on every probe: not an error worth a log line.
            // Failures that matter are logged where they happen (see `ApiError`).
            TraceLayer::new_for_http().on_failure(DefaultOnFailure::new().level(Level::DEBUG)),
        )
        .with_state(state)
}

/// Wraps a handler in the check its access level needs. Public endpoints need none; role
/// checks become `route_layer`s here.
fn guard(access: Access, handler: MethodRouter<AppState>) -> MethodRouter<AppState> {
    match access {
        Access::Public => handler,
    }
}

/// Runs a synchronous vault or HSM call on the blocking pool.
///
/// The one way handlers reach the vault: the async workers never block on key operations or
/// disk, and every domain error goes through [`ApiError`]'s mapping.
///
/// # Errors
/// The call's own error, mapped; `500 internal` if the task panicked or was cancelled (the
/// panic payload is not logged: it could quote anything the call held).
pub async fn blocking<T, F>(f: F) -> Result<T, ApiError>
where
    F: FnOnce() -> vault::Result<T> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
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
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
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
