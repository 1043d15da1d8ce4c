//! `hearth agent`: run the guest agent as an ordinary local process (for
//! trying `hearth exec` without a VM, and for tests).

use anyhow::Context;
use hearth_agent::agent::{ListenAddr, become_subreaper, serve, server::ShutdownMode};
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// Where to listen: unix:PATH or vsock:PORT.
    #[arg(long)]
    pub listen: String,
}

pub async fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    let addr: ListenAddr = args.listen.parse().map_err(anyhow::Error::msg)?;
    become_subreaper();
    serve(addr, ShutdownMode::Exit, || {
        eprintln!("hearth: agent listening on {}", args.listen)
    })
    .await
    .context("running the agent")?;
    Ok(ExitCode::SUCCESS)
}
