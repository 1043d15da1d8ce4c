//! Store operations an executor drives through the API: dequeue (with job tokens), heartbeats,
//! execution log entries, mark*, and the resets of stalled or orphaned jobs.

use super::{JobState, Store, StoreError, now_ms};
use crate::queue::types::{ExecutionLogEntry, ExecutorTelemetry, Job};
use rusqlite::{OptionalExtension, params};

/// What a job token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    pub job_id: i64,
    pub queue: String,
    pub repo: String,
}

/// Job ids named by a heartbeat, as `(queue, id)` (single-queue heartbeats take the queue from
/// the URL).
pub type HeartbeatIds = Vec<(String, i64)>;

/// Jobs moved by a stall reset or a startup reconcile.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResetOutcome {
    pub requeued: Vec<i64>,
    pub failed: Vec<i64>,
}

const TOO_MANY_RESETS: &str = "job processor died while handling this message too many times";

impl Store {
    /// Takes the oldest queued job of `queues` for `executor`: marks it processing, owned by
    /// `executor`, and (re)creates its job token. `set_queue` fills `Job::queue` (multi-queue
    /// dequeues); `v2` selects the payload version.
    pub fn dequeue(
        &self,
        queues: &[String],
        executor: &str,
        set_queue: bool,
        v2: bool,
    ) -> Result<Option<Job>, StoreError> {
        if queues.is_empty() {
            return Ok(None);
        }
        let mut conn = self.lock()?;
        let tx = conn.transaction()?;
        let mut found = None;
        {
            let mut stmt = tx.prepare(
                "SELECT id, queue, payload FROM jobs WHERE state = 'queued' AND queue = ?1
                 ORDER BY id LIMIT 1",
            )?;
            for q in queues {
                let row: Option<(i64, String, String)> = stmt
                    .query_row(params![q], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .optional()?;
                if let Some(row) = row
                    && found.as_ref().is_none_or(|(id, _, _)| row.0 < *id)
                {
                    found = Some(row);
                }
            }
        }
        let Some((id, queue, payload)) = found else {
            return Ok(None);
        };
        let mut job: Job =
            serde_json::from_str(&payload).map_err(|source| StoreError::Payload { id, source })?;
        let now = now_ms();
        tx.execute(
            "UPDATE jobs SET state = 'processing', worker_hostname = ?2, started_at = ?3,
                 last_heartbeat_at = ?3, finished_at = NULL
             WHERE id = ?1",
            params![id, executor, now],
        )?;
        let token = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        tx.execute(
            "INSERT INTO job_tokens (job_id, queue, repo, token) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(job_id) DO UPDATE SET queue = ?2, repo = ?3, token = ?4",
            params![id, queue, job.repository_name, token],
        )?;
        tx.commit()?;
        job.id = id;
        job.token = token;
        job.queue = set_queue.then_some(queue);
        job.version = if v2 { 2 } else { 1 };
        Ok(Some(job))
    }

    /// Records an executor's heartbeat (what job-token auth checks), refreshes
    /// `last_heartbeat_at` of the named jobs it owns and returns `(known, cancel)` among them.
    pub fn heartbeat(
        &self,
        executor: &str,
        queues: &[String],
        telemetry: &ExecutorTelemetry,
        ids: &HeartbeatIds,
    ) -> Result<(HeartbeatIds, HeartbeatIds), StoreError> {
        let mut conn = self.lock()?;
        let tx = conn.transaction()?;
        let now = now_ms();
        tx.execute(
            "INSERT INTO executors (hostname, queues, os, architecture, executor_version,
                                    last_seen_at, prometheus_metrics)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT(hostname) DO UPDATE SET queues = ?2, os = ?3, architecture = ?4,
                 executor_version = ?5, last_seen_at = ?6, prometheus_metrics = ?7",
            params![
                executor,
                queues.join(","),
                telemetry.os,
                telemetry.architecture,
                telemetry.executor_version,
                now,
                telemetry.prometheus_metrics
            ],
        )?;
        let mut known = Vec::new();
        let mut cancel = Vec::new();
        {
            let mut stmt = tx.prepare(
                "UPDATE jobs SET last_heartbeat_at = ?3
                 WHERE id = ?1 AND queue = ?2 AND worker_hostname = ?4 AND state = 'processing'
                 RETURNING cancel",
            )?;
            for (queue, id) in ids {
                let flag: Option<bool> = stmt
                    .query_row(params![id, queue, now, executor], |r| r.get(0))
                    .optional()?;
                if let Some(flag) = flag {
                    known.push((queue.clone(), *id));
                    if flag {
                        cancel.push((queue.clone(), *id));
                    }
                }
            }
        }
        tx.commit()?;
        Ok((known, cancel))
    }

    /// True when `hostname` has heartbeated at least once.
    pub fn executor_exists(&self, hostname: &str) -> Result<bool, StoreError> {
        let conn = self.lock()?;
        Ok(conn
            .query_row(
                "SELECT 1 FROM executors WHERE hostname = ?1",
                params![hostname],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// The last `prometheusMetrics` text an executor sent.
    pub fn executor_metrics(&self, hostname: &str) -> Result<Option<String>, StoreError> {
        let conn = self.lock()?;
        Ok(conn
            .query_row(
                "SELECT prometheus_metrics FROM executors WHERE hostname = ?1",
                params![hostname],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Looks up a job token.
    pub fn token_info(&self, token: &str) -> Result<Option<TokenInfo>, StoreError> {
        let conn = self.lock()?;
        Ok(conn
            .query_row(
                "SELECT job_id, queue, repo FROM job_tokens WHERE token = ?1",
                params![token],
                |r| {
                    Ok(TokenInfo {
                        job_id: r.get(0)?,
                        queue: r.get(1)?,
                        repo: r.get(2)?,
                    })
                },
            )
            .optional()?)
    }

    /// Appends a log entry to a job `executor` is processing; returns its 1-based id.
    pub fn add_log_entry(
        &self,
        job_id: i64,
        executor: &str,
        entry: &ExecutionLogEntry,
    ) -> Result<i64, StoreError> {
        let text = serde_json::to_string(entry).map_err(StoreError::Encode)?;
        let mut conn = self.lock()?;
        let tx = conn.transaction()?;
        owned_processing(&tx, job_id, executor)?;
        let next: i64 = tx.query_row(
            "SELECT COALESCE(MAX(entry_id), 0) + 1 FROM execution_logs WHERE job_id = ?1",
            params![job_id],
            |r| r.get(0),
        )?;
        tx.execute(
            "INSERT INTO execution_logs (job_id, entry_id, entry) VALUES (?1, ?2, ?3)",
            params![job_id, next, text],
        )?;
        tx.commit()?;
        Ok(next)
    }

    /// Replaces entry `entry_id` of a job `executor` is processing.
    pub fn update_log_entry(
        &self,
        job_id: i64,
        executor: &str,
        entry_id: i64,
        entry: &ExecutionLogEntry,
    ) -> Result<(), StoreError> {
        let text = serde_json::to_string(entry).map_err(StoreError::Encode)?;
        let mut conn = self.lock()?;
        let tx = conn.transaction()?;
        owned_processing(&tx, job_id, executor)?;
        let n = tx.execute(
            "UPDATE execution_logs SET entry = ?3 WHERE job_id = ?1 AND entry_id = ?2",
            params![job_id, entry_id, text],
        )?;
        if n == 0 {
            return Err(StoreError::UnknownEntry(entry_id));
        }
        tx.commit()?;
        Ok(())
    }

    /// markComplete: `completed`. False when the job is not processing or not `executor`'s.
    pub fn mark_complete(&self, job_id: i64, executor: &str) -> Result<bool, StoreError> {
        self.finish(job_id, executor, Finish::Complete)
    }

    /// markErrored: `canceled` if the cancel flag is set; else `failed` once
    /// `num_failures + 1 >= max_num_retries`; else `errored`. Counts a failure unless canceled.
    pub fn mark_errored(&self, job_id: i64, executor: &str, msg: &str) -> Result<bool, StoreError> {
        self.finish(job_id, executor, Finish::Errored(msg))
    }

    /// markFailed: `canceled` if the cancel flag is set, else `failed`.
    pub fn mark_failed(&self, job_id: i64, executor: &str, msg: &str) -> Result<bool, StoreError> {
        self.finish(job_id, executor, Finish::Failed(msg))
    }

    fn finish(&self, job_id: i64, executor: &str, how: Finish<'_>) -> Result<bool, StoreError> {
        let mut conn = self.lock()?;
        let tx = conn.transaction()?;
        let row: Option<(bool, u32)> = tx
            .query_row(
                "SELECT cancel, num_failures FROM jobs
                 WHERE id = ?1 AND worker_hostname = ?2 AND state = 'processing'",
                params![job_id, executor],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((cancel, failures)) = row else {
            return Ok(false);
        };
        let (state, msg, failures) = match how {
            Finish::Complete => (JobState::Completed, None, failures),
            Finish::Failed(m) if cancel => (JobState::Canceled, Some(m), failures),
            Finish::Failed(m) => (JobState::Failed, Some(m), failures),
            Finish::Errored(m) if cancel => (JobState::Canceled, Some(m), failures),
            Finish::Errored(m) => {
                let state = if failures + 1 >= self.opts.max_num_retries {
                    JobState::Failed
                } else {
                    JobState::Errored
                };
                (state, Some(m), failures + 1)
            }
        };
        tx.execute(
            "UPDATE jobs SET state = ?2, failure_message = ?3, num_failures = ?4, finished_at = ?5
             WHERE id = ?1",
            params![job_id, state.as_str(), msg, failures, now_ms()],
        )?;
        tx.execute("DELETE FROM job_tokens WHERE job_id = ?1", params![job_id])?;
        tx.commit()?;
        Ok(true)
    }

    /// Resets `processing` jobs whose last heartbeat is older than `stall_after`: back to
    /// `queued`, or `failed` after `max_resets` resets. The server runs this periodically.
    pub fn reset_stalled(&self) -> Result<ResetOutcome, StoreError> {
        let cutoff = now_ms() - self.opts.stall_after.as_millis() as i64;
        self.reset_where(Some(cutoff))
    }

    /// Startup reconcile for the embedded queue, whose only executor is this process: every job
    /// still `processing` was orphaned by the previous process, so it is requeued (or failed
    /// after `max_resets` resets) at once instead of waiting for the stall timeout.
    pub fn reconcile_orphaned(&self) -> Result<ResetOutcome, StoreError> {
        self.reset_where(None)
    }

    fn reset_where(&self, cutoff_ms: Option<i64>) -> Result<ResetOutcome, StoreError> {
        let mut conn = self.lock()?;
        let tx = conn.transaction()?;
        let mut out = ResetOutcome::default();
        let stalled: Vec<(i64, u32)> = {
            let mut stmt = tx.prepare(
                "SELECT id, num_resets FROM jobs WHERE state = 'processing'
                 AND (?1 IS NULL OR COALESCE(last_heartbeat_at, 0) < ?1) ORDER BY id",
            )?;
            stmt.query_map(params![cutoff_ms], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?
        };
        for (id, resets) in stalled {
            if resets + 1 > self.opts.max_resets {
                tx.execute(
                    "UPDATE jobs SET state = 'failed', failure_message = ?2, finished_at = ?3,
                         num_resets = num_resets + 1 WHERE id = ?1",
                    params![id, TOO_MANY_RESETS, now_ms()],
                )?;
                out.failed.push(id);
            } else {
                tx.execute(
                    "UPDATE jobs SET state = 'queued', worker_hostname = NULL, started_at = NULL,
                         last_heartbeat_at = NULL, num_resets = num_resets + 1 WHERE id = ?1",
                    params![id],
                )?;
                out.requeued.push(id);
            }
            tx.execute("DELETE FROM job_tokens WHERE job_id = ?1", params![id])?;
        }
        tx.commit()?;
        Ok(out)
    }
}

enum Finish<'a> {
    Complete,
    Errored(&'a str),
    Failed(&'a str),
}

fn owned_processing(
    tx: &rusqlite::Transaction<'_>,
    job_id: i64,
    executor: &str,
) -> Result<(), StoreError> {
    tx.query_row(
        "SELECT 1 FROM jobs WHERE id = ?1 AND worker_hostname = ?2 AND state = 'processing'",
        params![job_id, executor],
        |_| Ok(()),
    )
    .optional()?
    .ok_or(StoreError::UnknownJob)
}
