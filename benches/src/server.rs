//! The service on a loopback port for the HTTP benchmarks: `plico::serve` on its own tokio
//! runtime with 2 worker threads (as the service on this 2-core machine), stopped at the end.

use plico::AppState;

/// A running service.
pub(crate) struct Server {
    /// `http://127.0.0.1:PORT`.
    pub(crate) base: String,
    runtime: tokio::runtime::Runtime,
    stop: tokio::sync::oneshot::Sender<()>,
    served: tokio::task::JoinHandle<Result<(), plico::ServeError>>,
}

impl Server {
    /// Serves `state` on a fresh loopback port.
    pub(crate) fn start(state: AppState) -> anyhow::Result<Server> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("plico-server")
            .enable_all()
            .build()?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let base = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = runtime.spawn(async move {
            plico::serve(listener, state, None, async {
                let _ = stopped.await;
            })
            .await
        });
        Ok(Server {
            base,
            runtime,
            stop,
            served,
        })
    }

    /// Stops the service and waits for it.
    pub(crate) fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.runtime.block_on(self.served);
    }
}

/// A load generator's runtime: one thread of its own.
pub(crate) fn client_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// A fresh development vault under `work` (a simulated HSM in `hsm/`, a sled store in
/// `store/`) with the service's state unsealed by `bench`, with no cap on sensitive calls per
/// account (a bench drives far more than a person would).
pub(crate) struct Fresh {
    /// The simulated HSM.
    pub(crate) hsm: std::sync::Arc<hsm_sim::SimulatedHsm>,
    /// The store.
    pub(crate) store: std::sync::Arc<dyn vault::Store>,
    /// The service's state, unsealed.
    pub(crate) state: AppState,
}

/// Opens a [`Fresh`] vault with `settings` (its `sensitive_per_minute` lifted).
pub(crate) fn fresh_unsealed(
    work: &std::path::Path,
    settings: plico::Settings,
) -> anyhow::Result<Fresh> {
    let hsm = super::dev_hsm(&work.join("hsm"))?;
    let store: std::sync::Arc<dyn vault::Store> =
        std::sync::Arc::new(vault::SledStore::open(&work.join("store"))?);
    let settings = plico::Settings {
        sensitive_per_minute: std::num::NonZeroU32::MAX,
        ..settings
    };
    let state = AppState::with_settings(hsm.clone(), store.clone(), &settings)?;
    state.unsealed(&bench_actor("admin"), "bench")?;
    Ok(Fresh { hsm, store, state })
}

/// The bench's actor in `role` (for the setup's audited calls).
pub(crate) fn bench_actor(role: &str) -> vault::Actor {
    vault::Actor {
        id: "bench".into(),
        role: role.into(),
        request_id: String::new(),
    }
}
