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
