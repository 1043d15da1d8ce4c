//! `hearth logs ID`: a job's execution log entries from the embedded queue; `--follow` keeps
//! printing output as the running job appends it, until the job is finished.

use super::queue_db::DbArgs;
use anyhow::bail;
use hearth::queue::store::{JobRecord, JobState, Store};
use hearth::queue::types::ExecutionLogEntry;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// The job id (from `hearth submit` / `hearth jobs`).
    pub id: i64,
    /// The entries as a JSON array (the frontend's `execution_logs`).
    #[arg(long, conflicts_with = "follow")]
    pub json: bool,
    /// Keep printing new output until the job is finished.
    #[arg(long, short = 'f')]
    pub follow: bool,
    #[command(flatten)]
    pub db: DbArgs,
}

fn get(store: &Store, id: i64) -> anyhow::Result<JobRecord> {
    match store.get(id)? {
        Some(j) => Ok(j),
        None => bail!("no job {id} in the queue"),
    }
}

fn finished(state: JobState) -> bool {
    !matches!(state, JobState::Queued | JobState::Processing)
}

/// What has been printed of each entry: (header printed, bytes of `out`, footer printed).
#[derive(Default, Clone)]
struct Printed {
    header: bool,
    out: usize,
    footer: bool,
}

fn print_new(entries: &[ExecutionLogEntry], printed: &mut Vec<Printed>) -> std::io::Result<()> {
    let mut w = std::io::stdout().lock();
    printed.resize(entries.len(), Printed::default());
    for (e, p) in entries.iter().zip(printed.iter_mut()) {
        if !p.header {
            writeln!(w, "=== {} {}", e.key, e.start_time)?;
            if !e.command.is_empty() {
                writeln!(w, "$ {}", e.command.join(" "))?;
            }
            p.header = true;
        }
        if e.out.len() > p.out && e.out.is_char_boundary(p.out) {
            write!(w, "{}", &e.out[p.out..])?;
            p.out = e.out.len();
        }
        if let (Some(code), false) = (e.exit_code, p.footer) {
            if !e.out.is_empty() && !e.out.ends_with('\n') {
                writeln!(w)?;
            }
            let took = e
                .duration_ms
                .map(|d| format!(", {:.1}s", d as f64 / 1000.0))
                .unwrap_or_default();
            writeln!(w, "--- {}: exit {code}{took}", e.key)?;
            p.footer = true;
        }
    }
    w.flush()
}

pub fn run(args: LogsArgs) -> anyhow::Result<ExitCode> {
    let store = args.db.open()?;
    let mut job = get(&store, args.id)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&store.logs(args.id)?)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut printed = Vec::new();
    loop {
        // Read the state first: entries written before the job finished are then all seen.
        let done = finished(job.state);
        match print_new(&store.logs(args.id)?, &mut printed) {
            Ok(()) => {}
            // `hearth logs 7 | head`: the reader is gone, which is not an error.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
            Err(e) => return Err(e.into()),
        }
        if done || !args.follow {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
        job = get(&store, args.id)?;
    }
    let _ = writeln!(
        std::io::stdout(),
        "=== job {} is {}{}",
        job.id,
        job.state.as_str(),
        job.failure_message
            .as_deref()
            .map(|m| format!(": {m}"))
            .unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}
