//! `hearth submit JOB.json`: queue a job in the embedded queue; prints its id.

use super::queue_db::DbArgs;
use anyhow::Context;
use hearth::queue::types::Job;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    /// The job as the frontend would send it (Sourcegraph Job JSON, v1 or v2); `-` reads stdin.
    pub job: PathBuf,
    /// Queue to put it on.
    #[arg(long, default_value = "batches", value_parser = ["batches", "codeintel"])]
    pub queue: String,
    #[command(flatten)]
    pub db: DbArgs,
}

pub fn run(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let text = if args.job.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the job from stdin")?;
        s
    } else {
        std::fs::read_to_string(&args.job)
            .with_context(|| format!("reading {}", args.job.display()))?
    };
    let job: Job = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a valid job", args.job.display()))?;
    let store = args.db.open()?;
    let id = store.submit(&args.queue, &job)?;
    println!("{id}");
    Ok(ExitCode::SUCCESS)
}
