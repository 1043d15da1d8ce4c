//! `hearth test-vm [--repo R --revision REV]`: boot the default kernel + rootfs, run `uname -a`
//! through the agent, print the boot-phase timings, shut down. A quick check that this host can
//! run VM sandboxes. With `--repo`, R is first cloned at REV on the host exactly as a job's
//! repository is (`setup.git.*` through the per-job credentials proxy to
//! `<git upstream>/.executors/git/R`, see [`hearth::job::git`]), handed to the VM as its
//! workspace disk at `/work` (sized by `EXECUTOR_FIRECRACKER_DISK_SPACE`), and the guest prints
//! the commit it sees there.

use super::test_vm_clone::{self, CloneRequest, GUEST_HEAD_ARGV};
use super::vm_opts::VmOpts;
use anyhow::{Context, bail};
use hearth::config::{Config, ConfigFlags};
use hearth::sandbox::Sandbox;
use hearth::sandbox::vm::VmSandbox;
use hearth_agent::proto::{ExecSpec, ExitStatus};
use std::process::ExitCode;
use std::time::Instant;

#[derive(Debug, clap::Args)]
pub struct TestVmArgs {
    #[command(flatten)]
    pub vm: VmOpts,
    #[command(flatten)]
    pub config: ConfigFlags,
    /// Clone this repository (its name on the git server, e.g. github.com/foo/bar) into the
    /// VM's workspace at /work first.
    #[arg(long, value_name = "NAME", requires = "revision")]
    pub repo: Option<String>,
    /// The revision of --repo to fetch and check out.
    #[arg(long, value_name = "REV", requires = "repo")]
    pub revision: Option<String>,
    /// Base URL serving `/.executors/git/<repo>` for --repo (env HEARTH_GIT_UPSTREAM). Default:
    /// the frontend URL (EXECUTOR_FRONTEND_URL).
    #[arg(long, value_name = "URL")]
    pub git_upstream: Option<String>,
}

pub async fn run(args: TestVmArgs) -> anyhow::Result<ExitCode> {
    // Everything that can be wrong with the arguments or the configuration fails before a VM
    // boots or anything is fetched.
    let config = Config::from_env(&args.config)?;
    let clone = match (&args.repo, &args.revision) {
        (Some(repo), Some(revision)) => Some(CloneRequest::new(
            &config,
            repo,
            revision,
            args.git_upstream.clone(),
        )?),
        (None, None) => None,
        // clap's `requires` makes these unreachable; keep a clear message anyway.
        _ => bail!("--repo and --revision go together"),
    };
    let iso = args.vm.isolation()?;
    let a = iso.artifacts();

    let mut spec = args.vm.spec("test-vm");
    let workspace = match &clone {
        Some(c) => {
            let ws = test_vm_clone::prepare(c).await?;
            spec.workspace = Some(ws.path().to_path_buf());
            spec.workspace_disk_mib = c.disk_mib;
            println!(
                "cloned {} at {} into the workspace ({} MiB disk at /work)",
                c.repo, c.revision, c.disk_mib
            );
            Some(ws)
        }
        None => None,
    };
    println!(
        "booting {} with {} ({} vCPU, {} MiB)",
        a.kernel.display(),
        a.rootfs.display(),
        args.vm.cpus,
        args.vm.memory
    );
    let booted = iso.start_vm(&spec).await.context("booting the VM");
    let result = match booted {
        Ok(sandbox) => in_vm(sandbox, clone.as_ref()).await,
        Err(e) => Err(e),
    };
    if let Some(ws) = workspace {
        let path = ws.path().display().to_string();
        if let Err(e) = ws.remove().await {
            eprintln!("hearth: could not remove the workspace {path}: {e}");
        }
    }
    result.map(|()| ExitCode::SUCCESS)
}

/// Runs the checks in the booted VM, then shuts it down.
async fn in_vm(mut sandbox: VmSandbox, clone: Option<&CloneRequest>) -> anyhow::Result<()> {
    let t = sandbox.timings();
    println!("boot phases: {}", t.detail);
    println!(
        "agent ready (start → handshake): {:.1} ms",
        t.total.as_secs_f64() * 1e3
    );
    let mut outcome = uname(&sandbox).await;
    if let (Ok(()), Some(c)) = (&outcome, clone) {
        outcome = guest_head(&sandbox, c).await;
    }
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
    Ok(())
}

async fn uname(sandbox: &VmSandbox) -> Result<(), String> {
    let ran = Instant::now();
    let result = sandbox
        .client()
        .exec_collect(ExecSpec::argv(["uname", "-a"]))
        .await;
    match result {
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
    }
}

/// Prints the commit checked out at `/work` as the guest sees it; fails when it is not the
/// requested one (when that was given as a full commit hash).
async fn guest_head(sandbox: &VmSandbox, c: &CloneRequest) -> Result<(), String> {
    let what = GUEST_HEAD_ARGV.join(" ");
    let out = sandbox
        .client()
        .exec_collect(ExecSpec::argv(GUEST_HEAD_ARGV))
        .await
        .map_err(|e| format!("running {what}: {e}"))?;
    if out.info.status != ExitStatus::Code(0) {
        return Err(format!(
            "{what} failed in the guest ({:?}): {}",
            out.info.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let head = String::from_utf8_lossy(&out.stdout).trim().to_string();
    println!("guest /work HEAD: {head}");
    test_vm_clone::check_head(&c.revision, &head)
}
