//! # plico — the service: HTTP API, configuration and wiring of the crates
//!
//! This crate is the only place that knows HTTP, configuration files, tokio and TLS. The
//! vault and the HSM are synchronous and know none of it.
//!
//! - [`app`] builds the axum [`Router`] from an [`AppState`]; it opens no socket, so tests
//!   drive it with `tower::ServiceExt::oneshot`.
//! - [`serve`] runs that router on a listener, with rustls when TLS is configured, until a
//!   shutdown future resolves ([`shutdown_signal`]: SIGINT or SIGTERM), then drains in-flight
//!   requests.
//! - [`config`] reads the TOML file and `PLICO_*` environment overrides.
//! - [`api`] holds one module per resource and the single [`api::ApiError`].
//!
//! The command line (`src/main.rs` and `src/cli/`) is the binary's own and is not part of
//! this library.

pub mod api;
pub mod config;
pub mod tls;

use axum::Router;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use vault::{CodePolicy, Hsm};

/// What every request handler can reach.
///
/// Cheap to clone: the HSM is shared behind an `Arc` and chosen at start-up (the simulator
/// today, a PKCS#11 token later).
#[derive(Debug, Clone)]
pub struct AppState {
    /// The custody seam.
    pub hsm: Arc<dyn Hsm>,
    /// Lengths of PINs and PUKs accepted by this installation.
    pub codes: CodePolicy,
}

impl AppState {
    /// State over `hsm` with the default (CNS) code policy.
    pub fn new(hsm: Arc<dyn Hsm>) -> Self {
        AppState {
            hsm,
            codes: CodePolicy::default(),
        }
    }
}

/// The whole HTTP API as a router, with its limits (body size, timeout) applied to every route.
pub fn app(state: AppState) -> Router {
    api::router(state)
}

/// How long in-flight requests may take to finish once shutdown has begun.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// Plain HTTP is allowed on loopback only.
    #[error(
        "refusing to listen on {0} without tls: configure [tls] cert and key, or listen on a \
         loopback address such as 127.0.0.1"
    )]
    PlainNotLoopback(SocketAddr),
    /// The listener failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// Checks that `addr` may be listened on: any address with TLS, loopback only without.
///
/// # Errors
/// [`ServeError::PlainNotLoopback`] for a non-loopback address without TLS.
pub fn check_listen(addr: SocketAddr, tls: bool) -> Result<(), ServeError> {
    if tls || addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(ServeError::PlainNotLoopback(addr))
    }
}

/// Serves [`app`]`(state)` on `listener` until `shutdown` resolves, then stops accepting and
/// lets in-flight requests finish for up to [`SHUTDOWN_GRACE`].
///
/// With `tls` the listener speaks HTTPS only. Without it the listener must be on a loopback
/// address ([`check_listen`]), checked again here so no caller can skip it.
///
/// # Errors
/// [`ServeError::PlainNotLoopback`]; [`ServeError::Io`] if the listener fails.
pub async fn serve<F>(
    listener: std::net::TcpListener,
    state: AppState,
    tls: Option<tls::TlsConfig>,
    shutdown: F,
) -> Result<(), ServeError>
where
    F: Future<Output = ()> + Send + 'static,
{
    let addr = listener.local_addr()?;
    check_listen(addr, tls.is_some())?;
    listener.set_nonblocking(true)?;

    let handle = axum_server::Handle::new();
    let watcher = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down: no new connections, draining requests");
        watcher.graceful_shutdown(Some(SHUTDOWN_GRACE));
    });

    let service = app(state).into_make_service();
    match tls {
        Some(tls) => {
            tracing::info!(%addr, "serving https");
            axum_server::from_tcp_rustls(listener, tls.into_rustls())
                .handle(handle)
                .serve(service)
                .await?;
        }
        None => {
            tracing::info!(%addr, "serving plain http on loopback");
            axum_server::from_tcp(listener)
                .handle(handle)
                .serve(service)
                .await?;
        }
    }
    tracing::info!("server stopped");
    Ok(())
}

/// Resolves at the first SIGINT or SIGTERM.
///
/// If the signal handlers cannot be installed (which only happens when the runtime has no
/// signal driver), it logs the failure and never resolves: the process then stops only when
/// killed, which is no worse than having no graceful shutdown.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut int, mut term) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(int), Ok(term)) => (int, term),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot install signal handlers; graceful shutdown is off");
            std::future::pending::<()>().await;
            return;
        }
    };
    tokio::select! {
        _ = int.recv() => tracing::info!("received SIGINT"),
        _ = term.recv() => tracing::info!("received SIGTERM"),
    }
}
