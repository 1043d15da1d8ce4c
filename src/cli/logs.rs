//! `hearth logs ID`: a job's execution log entries from the embedded queue.

use super::queue_db::DbArgs;
use anyhow::bail;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// The job id (from `hearth submit` / `hearth jobs`).
    pub id: i64,
    /// The entries as a JSON array (the frontend's `execution_logs`).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub db: DbArgs,
}

pub fn run(args: LogsArgs) -> anyhow::Result<ExitCode> {
    let store = args.db.open()?;
    let Some(job) = store.get(args.id)? else {
        bail!("no job {} in the queue", args.id);
    };
    let entries = store.logs(args.id)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(ExitCode::SUCCESS);
    }
    for e in &entries {
        let exit = e
            .exit_code
            .map(|c| format!("exit {c}"))
            .unwrap_or_else(|| "running".into());
        let took = e
            .duration_ms
            .map(|d| format!(", {:.1}s", d as f64 / 1000.0))
            .unwrap_or_default();
        println!("=== {} ({exit}{took}) {}", e.key, e.start_time);
        if !e.command.is_empty() {
            println!("$ {}", e.command.join(" "));
        }
        if !e.out.is_empty() {
            print!("{}", e.out);
            if !e.out.ends_with('\n') {
                println!();
            }
        }
    }
    println!(
        "--- job {} is {}{}",
        job.id,
        job.state.as_str(),
        job.failure_message
            .as_deref()
            .map(|m| format!(": {m}"))
            .unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}
