//! The executor's worker loop (the original's `workerutil.Worker`): up to `max_jobs` handlers,
//! dequeue whenever a slot is free (no wait after a successful dequeue, `poll_interval` after an
//! empty or failed one), heartbeats every `heartbeat_interval`, a per-job runtime deadline, and
//! the result → mark* mapping. What a job *does* is the [`JobHandler`]'s business (the job
//! runner); this module only drives the queue.

pub mod heartbeat;
pub mod running;

pub use running::{CancelReason, CancelSignal, RunningJobs};

use crate::config::{Config, EXECUTOR_VERSION};
use crate::metrics::{JobOutcome, Metrics};
use crate::queue::client::{JobRef, QueueClient};
use crate::queue::types::Job;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// How a handler failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// Non-zero exit, infrastructure trouble: markErrored.
    #[error("{0}")]
    Errored(String),
    /// Not worth retrying: markFailed.
    #[error("{0}")]
    Failed(String),
}

/// Everything a handler gets for one job.
pub struct JobContext {
    pub job: Job,
    pub job_ref: JobRef,
    /// For log entries (see `job::logs::QueueLogTransport`).
    pub client: QueueClient,
    /// Tripped by `cancelIds` or the runtime deadline; stop, tear down, flush logs, return.
    pub cancel: CancelSignal,
}

/// Runs one job. It must flush its log entries before returning: the job is marked right after,
/// and marking deletes the job token.
pub trait JobHandler: Send + Sync + 'static {
    fn handle(&self, ctx: JobContext) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// Loop tuning (from [`Config`] via [`WorkerOptions::from_config`]).
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub max_jobs: usize,
    pub poll_interval: Duration,
    pub heartbeat_interval: Duration,
    pub max_runtime_per_job: Duration,
    /// After the deadline trips the cancel signal, how long the handler may take to tear down
    /// before it is dropped.
    pub teardown_grace: Duration,
    /// Stop dequeuing after this many jobs (0 = never).
    pub num_total_jobs: u64,
    /// Stop dequeuing after this long (zero = never).
    pub max_active_time: Duration,
}

impl WorkerOptions {
    pub fn from_config(c: &Config) -> WorkerOptions {
        WorkerOptions {
            max_jobs: c.maximum_num_jobs.max(1),
            poll_interval: c.queue_poll_interval,
            heartbeat_interval: c.heartbeat_interval,
            max_runtime_per_job: c.maximum_runtime_per_job,
            teardown_grace: Duration::from_secs(60),
            num_total_jobs: c.num_total_jobs,
            max_active_time: c.max_active_time,
        }
    }
}

/// What a worker run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerSummary {
    pub dequeued: u64,
    pub completed: u64,
    pub errored: u64,
    pub failed: u64,
}

/// Go's `time.Duration` formatting for whole seconds (`30m0s`, `1h0m0s`, `45s`).
fn go_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (h, m, sec) = (s / 3600, (s % 3600) / 60, s % 60);
    if h > 0 {
        format!("{h}h{m}m{sec}s")
    } else if m > 0 {
        format!("{m}m{sec}s")
    } else if d.subsec_millis() > 0 {
        format!("{}s", d.as_secs_f64())
    } else {
        format!("{sec}s")
    }
}

/// Polls until `shutdown` resolves or a stop condition is met, then waits for running jobs.
pub async fn run<H: JobHandler>(
    client: QueueClient,
    handler: Arc<H>,
    opts: WorkerOptions,
    metrics: Option<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> WorkerSummary {
    let running = RunningJobs::default();
    let heartbeats = tokio::spawn(heartbeat::heartbeat_loop(
        client.clone(),
        running.clone(),
        heartbeat::host_telemetry(EXECUTOR_VERSION),
        metrics.clone(),
        opts.heartbeat_interval,
    ));
    let slots = Arc::new(Semaphore::new(opts.max_jobs));
    let summary = Arc::new(std::sync::Mutex::new(WorkerSummary::default()));
    let started = Instant::now();
    tokio::pin!(shutdown);
    let mut dequeued = 0u64;
    loop {
        if opts.num_total_jobs > 0 && dequeued >= opts.num_total_jobs {
            tracing::info!("Shutting down dequeue loop: NumTotalJobs dequeued");
            break;
        }
        if !opts.max_active_time.is_zero() && started.elapsed() >= opts.max_active_time {
            tracing::info!("Shutting down dequeue loop: MaxActiveTime elapsed");
            break;
        }
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = &mut shutdown => break,
        };
        let job = match client.dequeue().await {
            Ok(Some(job)) => job,
            Ok(None) | Err(_) => {
                drop(permit);
                tokio::select! {
                    _ = tokio::time::sleep(opts.poll_interval) => continue,
                    _ = &mut shutdown => break,
                }
            }
        };
        dequeued += 1;
        let job_ref = match client.job_ref(&job) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "dequeued job cannot be addressed");
                continue;
            }
        };
        let uid = job.record_uid();
        let cancel = running.add(&uid);
        let ctx = JobContext {
            job,
            job_ref: job_ref.clone(),
            client: client.clone(),
            cancel: cancel.clone(),
        };
        let (client, handler, running, metrics, summary, opts) = (
            client.clone(),
            handler.clone(),
            running.clone(),
            metrics.clone(),
            summary.clone(),
            opts.clone(),
        );
        tokio::spawn(async move {
            let _permit = permit;
            if let Some(m) = &metrics {
                m.job_started();
            }
            let begun = Instant::now();
            let result = handle_with_deadline(handler.as_ref(), ctx, &cancel, &opts).await;
            let outcome = mark(&client, &job_ref, &cancel, &opts, result).await;
            running.remove(&uid);
            if let Some(m) = &metrics {
                let ok = outcome == Outcome::Completed;
                let o = if ok {
                    JobOutcome::Succeeded
                } else {
                    JobOutcome::Failed
                };
                m.job_finished(o, begun.elapsed().as_secs_f64());
            }
            if let Ok(mut s) = summary.lock() {
                match outcome {
                    Outcome::Completed => s.completed += 1,
                    Outcome::Errored => s.errored += 1,
                    Outcome::Failed => s.failed += 1,
                }
            }
        });
    }
    // Wait for every handler to give its slot back.
    let _all = slots.acquire_many(opts.max_jobs as u32).await;
    heartbeats.abort();
    let mut out = summary.lock().map(|s| s.clone()).unwrap_or_default();
    out.dequeued = dequeued;
    out
}

async fn handle_with_deadline<H: JobHandler>(
    handler: &H,
    ctx: JobContext,
    cancel: &CancelSignal,
    opts: &WorkerOptions,
) -> Result<(), HandlerError> {
    let fut = handler.handle(ctx);
    tokio::pin!(fut);
    tokio::select! {
        r = &mut fut => return r,
        _ = tokio::time::sleep(opts.max_runtime_per_job) => cancel.trip(CancelReason::Timeout),
    }
    match tokio::time::timeout(opts.teardown_grace, &mut fut).await {
        Ok(r) => r,
        Err(_) => Err(HandlerError::Errored(
            "handler did not stop within the teardown grace period".into(),
        )),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Completed,
    Errored,
    Failed,
}

/// The original's mapping: success → markComplete; cancelled via `cancelIds` or a non-retryable
/// error → markFailed; anything else (including the deadline) → markErrored.
async fn mark(
    client: &QueueClient,
    job: &JobRef,
    cancel: &CancelSignal,
    opts: &WorkerOptions,
    result: Result<(), HandlerError>,
) -> Outcome {
    let (outcome, res) = match (result, cancel.reason()) {
        (Ok(()), None) => (Outcome::Completed, client.mark_complete(job).await),
        (Ok(()), Some(CancelReason::Canceled)) => (
            Outcome::Failed,
            client.mark_failed(job, "job was canceled").await,
        ),
        (Err(e), Some(CancelReason::Canceled)) | (Err(e @ HandlerError::Failed(_)), None) => (
            Outcome::Failed,
            client.mark_failed(job, &e.to_string()).await,
        ),
        (r, Some(CancelReason::Timeout)) => {
            let detail = r.err().map(|e| e.to_string()).unwrap_or_default();
            let msg = format!(
                "job exceeded maximum execution time of {}: {detail}",
                go_duration(opts.max_runtime_per_job)
            );
            (Outcome::Errored, client.mark_errored(job, &msg).await)
        }
        (Err(e), None) => (
            Outcome::Errored,
            client.mark_errored(job, &e.to_string()).await,
        ),
    };
    match res {
        Ok(true) => {}
        Ok(false) => tracing::warn!(job = job.id, "job was no longer ours when marking it"),
        Err(e) => tracing::error!(job = job.id, error = %e, "marking job failed"),
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::go_duration;
    use std::time::Duration;

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(Duration::from_secs(1800)), "30m0s");
        assert_eq!(go_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(go_duration(Duration::from_secs(45)), "45s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
    }
}
