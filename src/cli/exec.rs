//! `hearth exec`: run one command through an agent, streaming its output live
//! and exiting with its exit code (128+N when killed by signal N).

use anyhow::{Context, bail};
use hearth_agent::client::{self, ExecEvent};
use hearth_agent::proto::{ExecSpec, ExitStatus, OutputStream};
use std::process::ExitCode;
use tokio::io::AsyncWriteExt;

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// Agent address: unix:PATH or vsock:CID:PORT.
    #[arg(long)]
    pub agent: String,
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
    spec.cwd = args.cwd.as_ref().map(|c| c.as_bytes().to_vec());
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
    let client = client::connect(&args.agent)
        .await
        .with_context(|| format!("connecting to {}", args.agent))?;
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
                        args.timeout.unwrap_or_default()
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
