//! `hearth jobs`: list the embedded queue's jobs, newest first.

use super::queue_db::DbArgs;
use anyhow::bail;
use hearth::queue::store::{JobRecord, JobState, ListFilter};
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct JobsArgs {
    /// Only jobs in this state (queued, processing, completed, errored, failed, canceled).
    #[arg(long)]
    pub state: Option<String>,
    /// Only jobs on this queue.
    #[arg(long)]
    pub queue: Option<String>,
    /// At most this many (0: all).
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub db: DbArgs,
}

pub fn run(args: JobsArgs) -> anyhow::Result<ExitCode> {
    let state = match &args.state {
        None => None,
        Some(s) => match JobState::parse(s) {
            Some(st) => Some(st),
            None => bail!(
                "unknown state {s:?}: use queued, processing, completed, errored, failed or canceled"
            ),
        },
    };
    let store = args.db.open()?;
    let jobs = store.list(&ListFilter {
        queue: args.queue.clone(),
        state,
        limit: args.limit,
    })?;
    if args.json {
        for j in &jobs {
            println!("{}", as_json(j));
        }
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<6} {:<10} {:<11} {:<20} {:>9}  MESSAGE",
        "ID", "QUEUE", "STATE", "QUEUED (UTC)", "RUNTIME"
    );
    for j in &jobs {
        let runtime = match (j.started_at_ms, j.finished_at_ms) {
            (Some(s), Some(f)) => format!("{:.1}s", (f - s) as f64 / 1000.0),
            (Some(_), None) => "running".into(),
            _ => "-".into(),
        };
        let mut msg = j.failure_message.clone().unwrap_or_default();
        if j.cancel && j.state == JobState::Processing {
            msg = format!("cancel requested {msg}");
        }
        println!(
            "{:<6} {:<10} {:<11} {:<20} {:>9}  {}",
            j.id,
            j.queue,
            j.state.as_str(),
            utc(j.queued_at_ms),
            runtime,
            msg.lines().next().unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn as_json(j: &JobRecord) -> serde_json::Value {
    serde_json::json!({
        "id": j.id,
        "queue": j.queue,
        "state": j.state.as_str(),
        "workerHostname": j.worker_hostname,
        "numResets": j.num_resets,
        "numFailures": j.num_failures,
        "cancel": j.cancel,
        "failureMessage": j.failure_message,
        "queuedAtMs": j.queued_at_ms,
        "startedAtMs": j.started_at_ms,
        "finishedAtMs": j.finished_at_ms,
    })
}

/// `YYYY-MM-DD HH:MM:SS` for milliseconds since the epoch.
pub fn utc(ms: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(ms / 1000) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => ms.to_string(),
    }
}
