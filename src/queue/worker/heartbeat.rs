//! The heartbeat loop: every interval (5 s) report the running jobs and executor facts (with the
//! Prometheus text of the executor's metrics), drop ids the frontend no longer knows from the
//! running set, and trip the cancel signal of every id in `cancelIds`.

use super::running::RunningJobs;
use crate::metrics::Metrics;
use crate::queue::client::QueueClient;
use crate::queue::types::ExecutorTelemetry;
use std::time::Duration;

/// Host facts for heartbeats (`os`/`architecture` as Go names them).
pub fn host_telemetry(executor_version: &str) -> ExecutorTelemetry {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    ExecutorTelemetry {
        os: std::env::consts::OS.to_string(),
        architecture: arch.to_string(),
        executor_version: executor_version.to_string(),
        ..Default::default()
    }
}

/// One heartbeat round; returns the ids cancelled by the frontend.
pub async fn beat_once(
    client: &QueueClient,
    running: &RunningJobs,
    telemetry: &ExecutorTelemetry,
    metrics: Option<&Metrics>,
) -> Result<Vec<String>, crate::queue::client::ClientError> {
    let ids = running.ids();
    let mut t = telemetry.clone();
    if let Some(m) = metrics {
        t.prometheus_metrics = m.render();
    }
    let res = client.heartbeat(&ids, &t).await?;
    for id in &ids {
        if !res.known_ids.contains(id) {
            tracing::warn!(job = %id, "Removed unknown job from running set");
            running.remove(id);
        }
    }
    let mut cancelled = Vec::new();
    for id in &res.cancel_ids {
        if running.cancel(id) {
            tracing::info!(job = %id, "Found jobs to cancel");
            cancelled.push(id.clone());
        }
    }
    Ok(cancelled)
}

/// Runs [`beat_once`] every `interval` until the task is aborted.
pub async fn heartbeat_loop(
    client: QueueClient,
    running: RunningJobs,
    telemetry: ExecutorTelemetry,
    metrics: Option<Metrics>,
    interval: Duration,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = beat_once(&client, &running, &telemetry, metrics.as_ref()).await {
            tracing::warn!(error = %e, "heartbeat failed");
        }
    }
}
