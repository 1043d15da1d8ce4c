//! The embedded queue's SQLite file for `hearth submit|jobs|logs|cancel`.

use anyhow::Context;
use hearth::config::{Config, ConfigFlags};
use hearth::queue::store::{Store, StoreOptions};
use std::path::PathBuf;

#[derive(Debug, Clone, clap::Args)]
pub struct DbArgs {
    /// The embedded queue's SQLite file. Default: $HEARTH_QUEUE_DB, else
    /// $XDG_STATE_HOME/hearth/queue.sqlite or ~/.local/state/hearth/queue.sqlite.
    #[arg(long, value_name = "PATH")]
    pub db: Option<PathBuf>,
}

impl DbArgs {
    /// Opens (creating if needed) the store `hearth run` uses with the same environment.
    pub fn open(&self) -> anyhow::Result<Store> {
        let flags = ConfigFlags {
            db: self.db.clone(),
            ..ConfigFlags::default()
        };
        let config = Config::from_env(&flags)?;
        if !config.is_embedded() {
            tracing::warn!(
                "EXECUTOR_FRONTEND_URL is set: this command works on the local embedded queue \
                 only, not on the frontend's"
            );
        }
        Store::open(&config.embedded_db, StoreOptions::default())
            .with_context(|| format!("opening the queue {}", config.embedded_db.display()))
    }
}
