//! The default queue when no `EXECUTOR_FRONTEND_URL` is set: hearth serves the `/.executors/` API
//! itself on loopback, backed by a SQLite file, and `hearth run` talks to it through the same
//! [`QueueClient`] code as to a real frontend.

use crate::config::Config;
use crate::metrics::Metrics;
use crate::queue::client::{ClientError, ClientOptions, QueueClient};
use crate::queue::server::{self, ServerError, ServerHandle, ServerState};
use crate::queue::store::{ResetOutcome, Store, StoreError, StoreOptions};

/// Errors starting the embedded queue.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error("opening the queue store {path}: {source}")]
    Store { path: String, source: StoreError },
    #[error("reconciling jobs left processing by an earlier run: {0}")]
    Reconcile(StoreError),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// A running embedded queue.
pub struct EmbeddedQueue {
    pub store: Store,
    pub server: ServerHandle,
    /// What the startup reconcile did with jobs an earlier process left `processing`.
    pub reconciled: ResetOutcome,
}

impl EmbeddedQueue {
    /// A client for this server with `config`'s executor identity and queues.
    pub fn client(
        &self,
        config: &Config,
        metrics: Option<Metrics>,
    ) -> Result<QueueClient, ClientError> {
        QueueClient::new(
            ClientOptions::from_config(config, Some(&self.server.base_url())),
            metrics,
        )
    }
}

/// Opens `config.embedded_db`, requeues (or fails, after too many resets) every job an earlier
/// process left `processing` — this process is the queue's only executor, so those jobs are
/// orphans — and serves the API on `addr` (`127.0.0.1:0` picks a free port) with
/// `config.frontend_password` as the executor secret.
pub async fn serve(
    config: &Config,
    addr: &str,
    opts: StoreOptions,
) -> Result<EmbeddedQueue, EmbeddedError> {
    let store = Store::open(&config.embedded_db, opts).map_err(|source| EmbeddedError::Store {
        path: config.embedded_db.display().to_string(),
        source,
    })?;
    let reconciled = store
        .reconcile_orphaned()
        .map_err(EmbeddedError::Reconcile)?;
    if !reconciled.requeued.is_empty() || !reconciled.failed.is_empty() {
        tracing::warn!(requeued = ?reconciled.requeued, failed = ?reconciled.failed,
            "jobs left processing by an earlier run were reconciled");
    }
    let server = server::serve(
        addr,
        ServerState {
            store: store.clone(),
            secret: Some(config.frontend_password.clone()),
        },
    )
    .await?;
    Ok(EmbeddedQueue {
        store,
        server,
        reconciled,
    })
}
