//! `hearth cancel ID`: cancel a queued job at once, or ask the executor running it to stop.

use super::queue_db::DbArgs;
use hearth::queue::store::{CancelOutcome, StoreError};
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct CancelArgs {
    /// The job id.
    pub id: i64,
    #[command(flatten)]
    pub db: DbArgs,
}

pub fn run(args: CancelArgs) -> anyhow::Result<ExitCode> {
    let store = args.db.open()?;
    match store.cancel(args.id) {
        Ok(CancelOutcome::Canceled) => println!("job {} canceled", args.id),
        Ok(CancelOutcome::CancelRequested) => println!(
            "job {} is running: cancel requested (the executor stops it at its next heartbeat)",
            args.id
        ),
        Ok(CancelOutcome::AlreadyFinished(state)) => {
            println!("job {} already finished: {}", args.id, state.as_str());
            return Ok(ExitCode::from(1));
        }
        Err(StoreError::UnknownJob) => {
            eprintln!("hearth: no job {} in the queue", args.id);
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(e.into()),
    }
    Ok(ExitCode::SUCCESS)
}
