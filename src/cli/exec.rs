//! `hearth exec`: run one command through an agent, streaming its output live
//! and exiting with its exit code (128+N when killed by signal N). Without `--agent` it boots a
//! VM for the command (`--workspace DIR` becomes the guest's `/work` and changes come back).

use super::vm_opts::VmOpts;
use anyhow::{Context, bail};
use hearth::sandbox::Sandbox;
use hearth_agent::client::{self, Client, ExecEvent};
use hearth_agent::proto::{ExecSpec, ExitStatus, OutputStream};
use std::path::PathBuf;
use std::process::ExitCode;
use tokio::io::AsyncWriteExt;

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// Agent address: unix:PATH or vsock:CID:PORT. Without it, a VM is booted for the command.
    #[arg(long, conflicts_with_all = ["workspace", "kernel", "rootfs", "cpus", "memory", "disk_mib"])]
    pub agent: Option<String>,
    /// VM mode: host directory that becomes the guest's /work (default working directory);
    /// what the command leaves there is copied back when it ends.
    #[arg(long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// VM mode: size of the /work disk in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 1024)]
    pub disk_mib: u64,
    #[command(flatten)]
    pub vm: VmOpts,
    /// Working directory in the guest.
    #[arg(long)]
    pub cwd: Option<String>,
    /// Environment variable for the command (repeatable).
    #[arg(long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Timeout in seconds; the process group is killed when it expires.
    #[arg(long)]
    pub timeout: Option<f64>,
    /// Run the words as one shell script line (`sh -c`) instead of argv.
    #[arg(long)]
    pub shell: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

fn build_spec(args: &ExecArgs) -> anyhow::Result<ExecSpec> {
    let mut spec = if args.shell {
        ExecSpec::script(args.command.join(" "))
    } else {
        ExecSpec::argv(args.command.iter().map(|s| s.as_bytes().to_vec()))
    };
    for kv in &args.env {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--env {kv:?} is not K=V"))?;
        spec.env
            .push((k.as_bytes().to_vec(), v.as_bytes().to_vec()));
    }
    spec.cwd = match (&args.cwd, &args.workspace) {
        (Some(c), _) => Some(c.as_bytes().to_vec()),
        (None, Some(_)) => Some(b"/work".to_vec()),
        (None, None) => None,
    };
    if let Some(t) = args.timeout {
        if !(t.is_finite() && t > 0.0) {
            bail!("--timeout must be a positive number of seconds");
        }
        spec.timeout_ms = Some((t * 1000.0).ceil() as u64);
    }
    Ok(spec)
}

pub async fn run(args: ExecArgs) -> anyhow::Result<ExitCode> {
    let spec = build_spec(&args)?;
    if let Some(addr) = &args.agent {
        let client = client::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        return stream_exec(&client, spec, args.timeout).await;
    }
    let iso = args.vm.isolation()?;
    let mut sandbox_spec = args.vm.spec("exec");
    if let Some(dir) = &args.workspace {
        let dir =
            std::fs::canonicalize(dir).with_context(|| format!("--workspace {}", dir.display()))?;
        sandbox_spec.workspace = Some(dir);
        sandbox_spec.workspace_disk_mib = args.disk_mib;
        sandbox_spec.sync_back = true;
    }
    let mut sandbox = iso
        .start_vm(&sandbox_spec)
        .await
        .context("booting the VM")?;
    tracing::info!(timings = %sandbox.timings().detail, "VM ready");
    let result = stream_exec(sandbox.client(), spec, args.timeout).await;
    if result.is_err() {
        sandbox.keep_console_log();
    }
    let log = sandbox.console_log().to_path_buf();
    let stopped = sandbox.shutdown().await;
    match (result, stopped) {
        (Ok(code), Ok(exit)) => {
            tracing::info!(%exit, "VM stopped");
            Ok(code)
        }
        (Ok(_), Err(e)) => Err(e).context("stopping the VM"),
        (Err(e), _) => Err(e.context(format!("console log: {}", log.display()))),
    }
}

/// Runs `spec` through `client`, streaming its output to ours; returns its exit code.
async fn stream_exec(
    client: &Client,
    spec: ExecSpec,
    timeout: Option<f64>,
) -> anyhow::Result<ExitCode> {
    let mut stream = client.exec(spec).await.context("starting the command")?;
    let handle = stream.handle();
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    loop {
        let event = tokio::select! {
            ev = stream.next() => ev.context("running the command")?,
            _ = tokio::signal::ctrl_c() => {
                handle.cancel().await.context("cancelling")?;
                continue;
            }
        };
        match event {
            Some(ExecEvent::Started { pid }) => tracing::debug!(pid, "started"),
            Some(ExecEvent::Output {
                stream: OutputStream::Stdout,
                data,
            }) => {
                stdout.write_all(&data).await?;
                stdout.flush().await?;
            }
            Some(ExecEvent::Output {
                stream: OutputStream::Stderr,
                data,
            }) => {
                stderr.write_all(&data).await?;
                stderr.flush().await?;
            }
            Some(ExecEvent::Exited(info)) => {
                tracing::info!(?info, "exited");
                if info.timed_out {
                    eprintln!(
                        "hearth: command timed out after {:?}s",
                        timeout.unwrap_or_default()
                    );
                }
                let code = match info.status {
                    ExitStatus::Code(c) => c,
                    ExitStatus::Signal(s) => 128 + s,
                };
                return Ok(ExitCode::from(u8::try_from(code & 0xff).unwrap_or(1)));
            }
            None => bail!("the agent ended the command without an exit status"),
        }
    }
}
