//! Command-line interface: one module per subcommand.

mod agent;
mod exec;
mod test_vm;
mod vm_opts;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// hearth: run commands in minimal KVM sandboxes.
#[derive(Debug, Parser)]
#[command(name = "hearth", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command through a guest agent and stream its output.
    Exec(exec::ExecArgs),
    /// Run the guest agent locally as an ordinary process (no VM).
    Agent(agent::AgentArgs),
    /// Boot the default kernel + rootfs, run `uname -a` in it, print the boot timings.
    TestVm(test_vm::TestVmArgs),
}

/// Runs the chosen subcommand; returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match cli.command {
        Command::Exec(args) => runtime.block_on(exec::run(args)),
        Command::Agent(args) => runtime.block_on(agent::run(args)),
        Command::TestVm(args) => runtime.block_on(test_vm::run(args)),
    }
}
