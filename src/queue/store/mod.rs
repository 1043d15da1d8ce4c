//! The embedded queue's SQLite store: jobs and their state machine
//! (queued → processing → completed | errored | failed | canceled), execution log entries, job
//! tokens and executor heartbeat records. The HTTP server ([`super::server`]) and the CLI
//! operations (`submit`, `list`, `logs`, `cancel`) share it.

mod worker;

pub use worker::{HeartbeatIds, ResetOutcome, TokenInfo};

use crate::queue::types::{ExecutionLogEntry, Job};
use rusqlite::{Connection, OptionalExtension, params};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("creating the directory of {path}: {source}")]
    CreateDir {
        path: String,
        source: std::io::Error,
    },
    #[error("stored job {id} has an undecodable payload: {source}")]
    Payload { id: i64, source: serde_json::Error },
    #[error("encoding job: {0}")]
    Encode(serde_json::Error),
    #[error("unknown job")]
    UnknownJob,
    #[error("unknown log entry {0}")]
    UnknownEntry(i64),
    #[error("Invalid queue name(s) '{0}' found. Supported queue names are 'batches, codeintel'.")]
    InvalidQueue(String),
    #[error("store lock poisoned")]
    Poisoned,
}

/// Timing and retry policy (the original's dbworker store options for the executor queues).
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// A `processing` job whose last heartbeat is older than this is reset (25 s).
    pub stall_after: Duration,
    /// After this many resets the job is failed instead (3).
    pub max_resets: u32,
    /// `MaxNumRetries` (0 for both executor queues: markErrored is terminal).
    pub max_num_retries: u32,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            stall_after: Duration::from_secs(25),
            max_resets: 3,
            max_num_retries: 0,
        }
    }
}

/// A job's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Queued,
    Processing,
    Completed,
    Errored,
    Failed,
    Canceled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Processing => "processing",
            JobState::Completed => "completed",
            JobState::Errored => "errored",
            JobState::Failed => "failed",
            JobState::Canceled => "canceled",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        Some(match s {
            "queued" => JobState::Queued,
            "processing" => JobState::Processing,
            "completed" => JobState::Completed,
            "errored" => JobState::Errored,
            "failed" => JobState::Failed,
            "canceled" => JobState::Canceled,
            _ => return None,
        })
    }
}

/// One job row as `hearth jobs` shows it.
#[derive(Debug, Clone)]
pub struct JobRecord {
    pub id: i64,
    pub queue: String,
    pub state: JobState,
    pub worker_hostname: Option<String>,
    pub num_resets: u32,
    pub num_failures: u32,
    pub cancel: bool,
    pub failure_message: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub queued_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    /// The submitted payload (id and token not set).
    pub job: Job,
}

/// Filter for [`Store::list`].
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub queue: Option<String>,
    pub state: Option<JobState>,
    /// 0 = no limit.
    pub limit: usize,
}

/// What [`Store::cancel`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// It was queued and is now `canceled`.
    Canceled,
    /// It is running: the executor is told through `cancelIds` at its next heartbeat.
    CancelRequested,
    /// Already in a final state.
    AlreadyFinished(JobState),
}

/// The SQLite-backed queue. Cheap to clone; all clones share one connection.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    opts: StoreOptions,
}

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL,
    worker_hostname TEXT,
    num_resets INTEGER NOT NULL DEFAULT 0,
    num_failures INTEGER NOT NULL DEFAULT 0,
    cancel INTEGER NOT NULL DEFAULT 0,
    failure_message TEXT,
    queued_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    last_heartbeat_at INTEGER
);
CREATE INDEX IF NOT EXISTS jobs_state_queue ON jobs(state, queue, id);
CREATE TABLE IF NOT EXISTS execution_logs (
    job_id INTEGER NOT NULL,
    entry_id INTEGER NOT NULL,
    entry TEXT NOT NULL,
    PRIMARY KEY (job_id, entry_id)
);
CREATE TABLE IF NOT EXISTS job_tokens (
    job_id INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    repo TEXT NOT NULL,
    token TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS executors (
    hostname TEXT PRIMARY KEY,
    queues TEXT NOT NULL,
    os TEXT NOT NULL,
    architecture TEXT NOT NULL,
    executor_version TEXT NOT NULL,
    last_seen_at INTEGER NOT NULL,
    prometheus_metrics TEXT NOT NULL
);
";

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Store {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path, opts: StoreOptions) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                path: path.display().to_string(),
                source,
            })?;
        }
        let conn = Connection::open(path)?;
        Store::init(conn, opts)
    }

    /// A private in-memory store (tests).
    pub fn open_in_memory(opts: StoreOptions) -> Result<Store, StoreError> {
        Store::init(Connection::open_in_memory()?, opts)
    }

    fn init(conn: Connection, opts: StoreOptions) -> Result<Store, StoreError> {
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
            opts,
        })
    }

    pub fn options(&self) -> &StoreOptions {
        &self.opts
    }

    fn lock(&self) -> Result<MutexGuard<'_, Connection>, StoreError> {
        self.conn.lock().map_err(|_| StoreError::Poisoned)
    }

    /// Queues `job` on `queue` and returns its id. The payload's `id`, `token` and `queue` are
    /// ignored (assigned at dequeue).
    pub fn submit(&self, queue: &str, job: &Job) -> Result<i64, StoreError> {
        if !crate::config::VALID_QUEUE_NAMES.contains(&queue) {
            return Err(StoreError::InvalidQueue(queue.to_string()));
        }
        let mut stored = job.clone();
        stored.id = 0;
        stored.token = String::new();
        stored.queue = None;
        stored.version = 2;
        let payload = serde_json::to_string(&stored).map_err(StoreError::Encode)?;
        let conn = self.lock()?;
        conn.execute(
            "INSERT INTO jobs (queue, payload, state, queued_at) VALUES (?1, ?2, 'queued', ?3)",
            params![queue, payload, now_ms()],
        )?;
        Ok(conn.last_insert_rowid())
    }

    /// Jobs, newest first.
    pub fn list(&self, filter: &ListFilter) -> Result<Vec<JobRecord>, StoreError> {
        let conn = self.lock()?;
        let mut stmt = conn.prepare(
            "SELECT id, queue, state, worker_hostname, num_resets, num_failures, cancel,
                    failure_message, queued_at, started_at, finished_at, payload
             FROM jobs
             WHERE (?1 IS NULL OR queue = ?1) AND (?2 IS NULL OR state = ?2)
             ORDER BY id DESC LIMIT ?3",
        )?;
        let limit = if filter.limit == 0 {
            -1
        } else {
            filter.limit as i64
        };
        let rows = stmt.query_map(
            params![
                filter.queue.as_deref(),
                filter.state.map(JobState::as_str),
                limit
            ],
            raw_record,
        )?;
        let mut out = Vec::new();
        for row in rows {
            out.push(decode_record(row?)?);
        }
        Ok(out)
    }

    /// One job.
    pub fn get(&self, id: i64) -> Result<Option<JobRecord>, StoreError> {
        let conn = self.lock()?;
        let raw = conn
            .query_row(
                "SELECT id, queue, state, worker_hostname, num_resets, num_failures, cancel,
                        failure_message, queued_at, started_at, finished_at, payload
                 FROM jobs WHERE id = ?1",
                params![id],
                raw_record,
            )
            .optional()?;
        raw.map(decode_record).transpose()
    }

    /// A job's execution log entries in order (entry ids are positions, from 1).
    pub fn logs(&self, id: i64) -> Result<Vec<ExecutionLogEntry>, StoreError> {
        let conn = self.lock()?;
        let mut stmt =
            conn.prepare("SELECT entry FROM execution_logs WHERE job_id = ?1 ORDER BY entry_id")?;
        let rows = stmt.query_map(params![id], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for row in rows {
            let text = row?;
            out.push(
                serde_json::from_str(&text).map_err(|source| StoreError::Payload { id, source })?,
            );
        }
        Ok(out)
    }

    /// Cancels a job: a queued one at once; a running one by setting its cancel flag, which the
    /// next heartbeat returns in `cancelIds` and which makes markErrored/markFailed store
    /// `canceled`.
    pub fn cancel(&self, id: i64) -> Result<CancelOutcome, StoreError> {
        let conn = self.lock()?;
        let state: Option<String> = conn
            .query_row("SELECT state FROM jobs WHERE id = ?1", params![id], |r| {
                r.get(0)
            })
            .optional()?;
        let state = state
            .and_then(|s| JobState::parse(&s))
            .ok_or(StoreError::UnknownJob)?;
        match state {
            JobState::Queued => {
                conn.execute(
                    "UPDATE jobs SET state = 'canceled', cancel = 1, finished_at = ?2 WHERE id = ?1",
                    params![id, now_ms()],
                )?;
                Ok(CancelOutcome::Canceled)
            }
            JobState::Processing => {
                conn.execute("UPDATE jobs SET cancel = 1 WHERE id = ?1", params![id])?;
                Ok(CancelOutcome::CancelRequested)
            }
            other => Ok(CancelOutcome::AlreadyFinished(other)),
        }
    }
}

type RawRecord = (
    i64,
    String,
    String,
    Option<String>,
    u32,
    u32,
    bool,
    Option<String>,
    i64,
    Option<i64>,
    Option<i64>,
    String,
);

fn raw_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRecord> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
        r.get(11)?,
    ))
}

fn decode_record(raw: RawRecord) -> Result<JobRecord, StoreError> {
    let (id, queue, state, worker, resets, failures, cancel, msg, queued, started, finished, p) =
        raw;
    let job: Job = serde_json::from_str(&p).map_err(|source| StoreError::Payload { id, source })?;
    Ok(JobRecord {
        id,
        queue,
        state: JobState::parse(&state).unwrap_or(JobState::Failed),
        worker_hostname: worker,
        num_resets: resets,
        num_failures: failures,
        cancel,
        failure_message: msg,
        queued_at_ms: queued,
        started_at_ms: started,
        finished_at_ms: finished,
        job,
    })
}

#[cfg(test)]
mod tests;
