//! `hearth test-vm`: boot the default kernel + rootfs, run `uname -a` through the agent, print
//! the boot-phase timings, shut down. A quick check that this host can run VM sandboxes.

use super::vm_opts::VmOpts;
use anyhow::{Context, bail};
use hearth::sandbox::Sandbox;
use hearth_agent::proto::{ExecSpec, ExitStatus};
use std::process::ExitCode;
use std::time::Instant;

#[derive(Debug, clap::Args)]
pub struct TestVmArgs {
    #[command(flatten)]
    pub vm: VmOpts,
}

pub async fn run(args: TestVmArgs) -> anyhow::Result<ExitCode> {
    let iso = args.vm.isolation()?;
    let a = iso.artifacts();
    println!(
        "booting {} with {} ({} vCPU, {} MiB)",
        a.kernel.display(),
        a.rootfs.display(),
        args.vm.cpus,
        args.vm.memory
    );
    let spec = args.vm.spec("test-vm");
    let mut sandbox = iso.start_vm(&spec).await.context("booting the VM")?;
    let t = sandbox.timings();
    println!("boot phases: {}", t.detail);
    println!(
        "agent ready (start → handshake): {:.1} ms",
        t.total.as_secs_f64() * 1e3
    );
    let ran = Instant::now();
    let result = sandbox
        .client()
        .exec_collect(ExecSpec::argv(["uname", "-a"]))
        .await;
    let outcome = match result {
        Ok(out) if out.info.status == ExitStatus::Code(0) => {
            print!("{}", String::from_utf8_lossy(&out.stdout));
            println!(
                "uname -a ran in {:.1} ms",
                ran.elapsed().as_secs_f64() * 1e3
            );
            Ok(())
        }
        Ok(out) => Err(format!(
            "uname -a failed ({:?}): {}",
            out.info.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("running uname -a: {e}")),
    };
    if outcome.is_err() {
        sandbox.keep_console_log();
    }
    let log = sandbox.console_log().to_path_buf();
    let stop = Instant::now();
    let exit = sandbox.shutdown().await.context("shutting the VM down")?;
    println!(
        "VM stopped: {exit} ({:.1} ms after the shutdown request)",
        stop.elapsed().as_secs_f64() * 1e3
    );
    if let Err(e) = outcome {
        bail!("{e}\nconsole log: {}", log.display());
    }
    Ok(ExitCode::SUCCESS)
}
