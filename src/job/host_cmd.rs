//! Commands the runner runs on the host (git, for the workspace), each streamed into its own log
//! entry as the original does: a clean environment (only `HOME`, `PATH`, `USER`, `DOCKER_HOST`
//! forwarded, plus the spec's), stdout/stderr as `stdout: ` / `stderr: ` lines, the exit code
//! recorded, and the whole process group killed on cancellation and after exit (so nothing a
//! command spawned outlives it).

use crate::job::logs::LogSink;
use crate::queue::worker::{CancelReason, CancelSignal};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Host variables a host command inherits (the original's list).
const FORWARDED_HOST_ENV: [&str; 4] = ["HOME", "PATH", "USER", "DOCKER_HOST"];

/// After the command exits, how long to keep reading pipes still held by its descendants.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// Why a command did not succeed. The texts are the original's (Go's context errors included),
/// since they end up in the job's failure message.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("starting command: {0}")]
    Start(#[source] std::io::Error),
    #[error("waiting for command: {0}")]
    Wait(#[source] std::io::Error),
    #[error("command failed with exit code {0}")]
    Failed(i32),
    #[error("{}", canceled_text(*.0))]
    Canceled(CancelReason),
}

/// Go's `context.Canceled` / `context.DeadlineExceeded` texts.
pub fn canceled_text(reason: CancelReason) -> &'static str {
    match reason {
        CancelReason::Canceled => "context canceled",
        CancelReason::Timeout => "context deadline exceeded",
    }
}

/// One host command.
#[derive(Debug, Clone)]
pub struct HostCommand {
    pub key: String,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
}

/// Copies a pipe into the log entry through `push`.
async fn pump<R: AsyncRead + Unpin>(pipe: Option<R>, push: impl Fn(&[u8])) {
    let Some(mut pipe) = pipe else { return };
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => push(&buf[..n]),
        }
    }
}

/// Kills the command's process group when dropped: after it exits, when it is cancelled, and
/// when the job's future is dropped mid-command.
struct GroupGuard(Option<i32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        let Some(pgid) = self.0.filter(|p| *p > 1) else {
            return;
        };
        // SAFETY: killpg takes plain integers; the group is the one created for this command
        // (process_group(0) made the child its leader), and ESRCH when it is gone is harmless.
        unsafe {
            libc::killpg(pgid, libc::SIGKILL);
        }
    }
}

/// Runs `cmd` with its output in a new log entry `cmd.key`. A tripped `cancel` kills the
/// command's process group at once (exit code -1 recorded, like Go's killed processes); once
/// tripped, no further command starts (nor gets an entry).
pub async fn run_logged(
    sink: &LogSink,
    cmd: &HostCommand,
    cancel: &CancelSignal,
) -> Result<(), CommandError> {
    if let Some(reason) = cancel.reason() {
        return Err(CommandError::Canceled(reason));
    }
    let entry = sink.open(&cmd.key, cmd.argv.clone());
    let Some((program, args)) = cmd.argv.split_first() else {
        entry.finish(0);
        return Err(CommandError::Start(std::io::Error::other("empty command")));
    };
    let mut command = tokio::process::Command::new(program);
    command.args(args).env_clear();
    for name in FORWARDED_HOST_ENV {
        if let Ok(v) = std::env::var(name) {
            command.env(name, v);
        }
    }
    command
        .envs(cmd.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(dir) = &cmd.cwd {
        command.current_dir(dir);
    }
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            // The original records exit code 0 when a command cannot start.
            entry.finish(0);
            return Err(CommandError::Start(e));
        }
    };
    let group = GroupGuard(child.id().and_then(|p| i32::try_from(p).ok()));
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let outcome = {
        let pipes = async {
            tokio::join!(
                pump(stdout, |b| entry.stdout(b)),
                pump(stderr, |b| entry.stderr(b))
            );
        };
        tokio::pin!(pipes);
        let run = async {
            let status = child.wait().await;
            // Descendants may still hold the pipes: read what they write for a while.
            let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, &mut pipes).await;
            status
        };
        tokio::select! {
            status = run => Some(status),
            _ = cancel.tripped() => None,
        }
    };
    drop(group);
    match outcome {
        None => {
            let _ = child.wait().await;
            entry.finish(-1);
            let reason = cancel.reason().unwrap_or(CancelReason::Canceled);
            Err(CommandError::Canceled(reason))
        }
        Some(Err(e)) => {
            entry.finish(-1);
            Err(CommandError::Wait(e))
        }
        Some(Ok(status)) => {
            let code = status.code().unwrap_or(-1);
            entry.finish(code);
            if code == 0 {
                Ok(())
            } else if let Some(reason) = cancel.reason() {
                Err(CommandError::Canceled(reason))
            } else {
                Err(CommandError::Failed(code))
            }
        }
    }
}
