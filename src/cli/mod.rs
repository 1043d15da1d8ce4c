//! Command-line interface: one module per subcommand.

mod agent;
mod cancel;
mod exec;
mod isolation;
mod jobs;
mod logs;
mod queue_db;
mod run;
mod submit;
mod test_vm;
mod test_vm_clone;
mod validate;
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
    /// The executor daemon: dequeue jobs (embedded queue unless EXECUTOR_FRONTEND_URL is set) and
    /// run them in sandboxes.
    Run(run::RunArgs),
    /// Queue a job (Sourcegraph Job JSON) in the embedded queue; prints its id.
    Submit(submit::SubmitArgs),
    /// List the embedded queue's jobs.
    Jobs(jobs::JobsArgs),
    /// Show a job's execution log entries.
    Logs(logs::LogsArgs),
    /// Cancel a job in the embedded queue.
    Cancel(cancel::CancelArgs),
    /// Check configuration, KVM, guest artifacts, git and the queue/frontend.
    Validate(validate::ValidateArgs),
    /// Boot the default kernel + rootfs, run `uname -a` in it, print the boot timings; with
    /// --repo R --revision REV, clone R into the VM's workspace at /work first.
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
        Command::Run(args) => runtime.block_on(run::run(args)),
        Command::Submit(args) => submit::run(args),
        Command::Jobs(args) => jobs::run(args),
        Command::Logs(args) => logs::run(args),
        Command::Cancel(args) => cancel::run(args),
        Command::Validate(args) => runtime.block_on(validate::run(args)),
        Command::TestVm(args) => runtime.block_on(test_vm::run(args)),
    }
}
