//! The embedded `/.executors/` API server (axum on loopback): the same routes, auth, status codes
//! and JSON as the Sourcegraph frontend, backed by [`crate::queue::store::Store`]. A background
//! task resets jobs whose heartbeats stopped.

mod auth;
mod handlers;
mod reply;

use crate::queue::store::Store;
use axum::Router;
use axum::routing::{get, post};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Server errors.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("binding {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("reading the bound address: {0}")]
    LocalAddr(std::io::Error),
}

/// Shared by all handlers.
#[derive(Clone)]
pub struct ServerState {
    pub store: Store,
    /// `executors.accessToken`; `None` makes executor routes answer 500 "not configured".
    pub secret: Option<String>,
}

const JOB_OPERATIONS: [&str; 5] = [
    "addExecutionLogEntry",
    "updateExecutionLogEntry",
    "markComplete",
    "markErrored",
    "markFailed",
];

/// The router with every `/.executors/` route the executor uses.
pub fn router(state: ServerState) -> Router {
    let mut r = Router::new()
        .route("/.executors/queue/dequeue", post(handlers::dequeue_multi))
        .route(
            "/.executors/queue/heartbeat",
            post(handlers::heartbeat_multi),
        )
        .route(
            "/.executors/queue/{queue}/dequeue",
            post(handlers::dequeue_single),
        )
        .route(
            "/.executors/queue/{queue}/heartbeat",
            post(handlers::heartbeat_single),
        )
        .route("/.executors/test/auth", get(handlers::test_auth));
    for op in JOB_OPERATIONS {
        r = r.route(
            &format!("/.executors/queue/{{queue}}/{op}"),
            post(move |state, path, headers, body| {
                handlers::job_operation(op, state, path, headers, body)
            }),
        );
    }
    r.with_state(state)
}

/// A running server; [`ServerHandle::shutdown`] stops it.
pub struct ServerHandle {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    serve: JoinHandle<()>,
    reaper: JoinHandle<()>,
}

impl ServerHandle {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR` for the queue client.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, lets in-flight requests finish (at most 2 s), stops the stall reaper.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.reaper.abort();
        let abort = self.serve.abort_handle();
        if tokio::time::timeout(Duration::from_secs(2), &mut self.serve)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.reaper.abort();
        self.serve.abort();
    }
}

/// Binds `addr` (e.g. `127.0.0.1:0`) and serves. Stalled `processing` jobs are reset every
/// `stall_after / 5` (at most every second).
pub async fn serve(addr: &str, state: ServerState) -> Result<ServerHandle, ServerError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind {
            addr: addr.to_string(),
            source,
        })?;
    let local = listener.local_addr().map_err(ServerError::LocalAddr)?;
    let (tx, rx) = oneshot::channel::<()>();
    let store = state.store.clone();
    let app = router(state);
    let serve = tokio::spawn(async move {
        let shutdown = async move {
            let _ = rx.await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "embedded queue server stopped");
        }
    });
    let period =
        (store.options().stall_after / 5).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let reaper = tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            match store.reset_stalled() {
                Ok(out) if !out.requeued.is_empty() || !out.failed.is_empty() => {
                    tracing::warn!(requeued = ?out.requeued, failed = ?out.failed, "reset stalled jobs");
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "resetting stalled jobs"),
            }
        }
    });
    tracing::info!(%local, "embedded queue server listening");
    Ok(ServerHandle {
        addr: local,
        stop: Some(tx),
        serve,
        reaper,
    })
}
