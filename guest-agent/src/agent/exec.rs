//! Runs one Exec request: spawns the child in its own session/process group,
//! streams stdout/stderr under the client's credit window, handles signals,
//! cancel and timeout, and reports the exit.

use super::reaper::{ChildExit, Reaper, kill_group};
use crate::outbox::Outbox;
use crate::proto::{
    ErrorCode, ExecSpec, ExitInfo, MAX_CHUNK, MIN_WINDOW, Message, OutputStream, Program,
    RequestId, data_cost, piece_to_send,
};
use std::ffi::OsStr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;

/// Control messages the connection forwards to a running exec.
#[derive(Debug)]
pub enum ExecControl {
    Credit(u32),
    Signal(i32),
    Cancel,
}

/// After the main process exits, stop draining pipes held open by escaped
/// descendants once they have been quiet this long (while credit is available).
const DRAIN_IDLE: Duration = Duration::from_secs(2);

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Finds the shell for scripts: bash when present, else /bin/sh.
fn script_shell() -> &'static str {
    ["/bin/bash", "/usr/bin/bash"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("/bin/sh")
}

fn build_command(spec: &ExecSpec) -> Result<Command, String> {
    let mut cmd = match &spec.program {
        Program::Argv(argv) => {
            let (first, rest) = argv.split_first().ok_or("argv is empty")?;
            let mut c = Command::new(OsStr::from_bytes(first));
            c.args(rest.iter().map(|a| OsStr::from_bytes(a)));
            c
        }
        Program::Script(script) => {
            let mut c = Command::new(script_shell());
            c.arg("-c").arg(OsStr::from_bytes(script));
            c
        }
    };
    cmd.env_clear().env("PATH", DEFAULT_PATH).env(
        "HOME",
        if spec.uid.unwrap_or(0) == 0 {
            "/root"
        } else {
            "/"
        },
    );
    for (k, v) in &spec.env {
        if k.is_empty() || k.contains(&b'=') {
            return Err(format!(
                "invalid environment variable name {:?}",
                String::from_utf8_lossy(k)
            ));
        }
        cmd.env(OsStr::from_bytes(k), OsStr::from_bytes(v));
    }
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(OsStr::from_bytes(cwd));
    }
    if let Some(gid) = spec.gid {
        cmd.gid(gid);
    }
    if let Some(uid) = spec.uid {
        cmd.uid(uid);
    }
    cmd.stdin(if spec.stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    // SAFETY: the closure runs in the forked child before exec and only calls
    // setsid, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(cmd)
}

fn program_name(spec: &ExecSpec) -> String {
    match &spec.program {
        Program::Argv(argv) => argv
            .first()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .unwrap_or_default(),
        Program::Script(_) => script_shell().to_string(),
    }
}

/// Kills the process group when the exec task ends early (client gone, task aborted).
struct GroupGuard {
    pgid: i32,
    armed: bool,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed {
            kill_group(self.pgid, libc::SIGKILL);
        }
    }
}

fn receiver(fd: Option<impl Into<OwnedFd>>) -> Option<pipe::Receiver> {
    let fd: OwnedFd = fd?.into();
    match pipe::Receiver::from_owned_fd(fd) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(error = %e, "cannot register output pipe");
            None
        }
    }
}

/// Runs the exec to completion, reporting through `out`.
pub async fn run_exec(
    id: RequestId,
    spec: ExecSpec,
    mut ctl: mpsc::UnboundedReceiver<ExecControl>,
    out: Outbox,
    reaper: Arc<Reaper>,
) {
    if spec.window < MIN_WINDOW {
        let message = format!(
            "window {} is below the minimum of {MIN_WINDOW}",
            spec.window
        );
        out.send(Message::Error {
            id,
            code: ErrorCode::BadRequest,
            message,
        })
        .await;
        return;
    }
    let mut cmd = match build_command(&spec) {
        Ok(c) => c,
        Err(message) => {
            out.send(Message::Error {
                id,
                code: ErrorCode::BadRequest,
                message,
            })
            .await;
            return;
        }
    };
    let started = Instant::now();
    let (mut child, exit_rx) = match reaper.spawn(&mut cmd) {
        Ok(c) => c,
        Err(e) => {
            let message = format!("cannot start {:?}: {e}", program_name(&spec));
            out.send(Message::Error {
                id,
                code: ErrorCode::SpawnFailed,
                message,
            })
            .await;
            return;
        }
    };
    let pid = child.id();
    let pgid = pid as i32;
    let mut guard = GroupGuard { pgid, armed: true };
    tracing::debug!(id, pid, "exec started");
    if !out.send(Message::Started { id, pid }).await {
        return;
    }
    if let (Some(data), Some(stdin)) = (spec.stdin, child.stdin.take()) {
        match pipe::Sender::from_owned_fd(OwnedFd::from(stdin)) {
            Ok(mut w) => {
                tokio::spawn(async move {
                    // EPIPE when the child does not read its stdin is fine.
                    let _ = w.write_all(&data).await;
                });
            }
            Err(e) => tracing::warn!(error = %e, "cannot register stdin pipe"),
        }
    }
    let mut stdout = receiver(child.stdout.take());
    let mut stderr = receiver(child.stderr.take());
    let mut credit: u64 = u64::from(spec.window);
    // A timeout too large to represent is no timeout.
    let deadline = spec
        .timeout_ms
        .and_then(|ms| tokio::time::Instant::now().checked_add(Duration::from_millis(ms)));
    let mut exit_rx = exit_rx;
    let mut exited: Option<(ChildExit, Duration)> = None;
    let (mut timed_out, mut cancelled) = (false, false);
    let mut drain_deadline = tokio::time::Instant::now();
    let mut buf_out = vec![0u8; MAX_CHUNK];
    let mut buf_err = vec![0u8; MAX_CHUNK];
    loop {
        if exited.is_some() && stdout.is_none() && stderr.is_none() {
            break;
        }
        // Read only what can go out as one message, and wait for a full one's credit
        // (`piece_to_send`): short reads on a low credit would shrink the client's grants too.
        let want = piece_to_send(credit, MAX_CHUNK, u64::from(spec.window)).unwrap_or(0);
        let timer_on = deadline.is_some() && exited.is_none() && !timed_out;
        let far = tokio::time::Instant::now() + Duration::from_secs(86400);
        tokio::select! {
            r = read_some(&mut stdout, &mut buf_out[..want]), if stdout.is_some() && want > 0 => {
                match r {
                    Some(n) => {
                        credit -= data_cost(n);
                        drain_deadline = tokio::time::Instant::now() + DRAIN_IDLE;
                        let data = buf_out[..n].to_vec();
                        if !out.send(Message::Output { id, stream: OutputStream::Stdout, data }).await { return; }
                    }
                    None => stdout = None,
                }
            }
            r = read_some(&mut stderr, &mut buf_err[..want]), if stderr.is_some() && want > 0 => {
                match r {
                    Some(n) => {
                        credit -= data_cost(n);
                        drain_deadline = tokio::time::Instant::now() + DRAIN_IDLE;
                        let data = buf_err[..n].to_vec();
                        if !out.send(Message::Output { id, stream: OutputStream::Stderr, data }).await { return; }
                    }
                    None => stderr = None,
                }
            }
            c = ctl.recv() => match c {
                Some(ExecControl::Credit(n)) => {
                    credit = credit.saturating_add(u64::from(n));
                    // Waiting for credit is not silence: the idle clock starts now.
                    drain_deadline = tokio::time::Instant::now() + DRAIN_IDLE;
                }
                Some(ExecControl::Signal(sig)) => kill_group(pgid, sig),
                Some(ExecControl::Cancel) => {
                    if exited.is_none() {
                        cancelled = true;
                        kill_group(pgid, libc::SIGKILL);
                    }
                }
                None => {
                    tracing::debug!(id, pid, "client gone; killing process group");
                    return; // guard kills the group
                }
            },
            r = &mut exit_rx, if exited.is_none() => {
                let Ok(exit) = r else { return };
                exited = Some((exit, started.elapsed()));
                // Background jobs left in the group would hold the pipes open.
                kill_group(pgid, libc::SIGKILL);
                guard.armed = false;
                drain_deadline = tokio::time::Instant::now() + DRAIN_IDLE;
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or(far)), if timer_on => {
                timed_out = true;
                kill_group(pgid, libc::SIGKILL);
            }
            _ = tokio::time::sleep_until(drain_deadline), if exited.is_some() && want > 0 => {
                // On a loaded machine this timer can come due together with output that is
                // already in a pipe (the select then picks either): only real silence counts.
                if pending_bytes(&stdout) > 0 || pending_bytes(&stderr) > 0 {
                    drain_deadline = tokio::time::Instant::now() + DRAIN_IDLE;
                    continue;
                }
                tracing::debug!(id, "output pipes stayed open after exit; closing them");
                break;
            }
        }
    }
    let Some((exit, wall)) = exited else { return };
    let info = ExitInfo {
        status: exit.status,
        wall_time_us: u64::try_from(wall.as_micros()).unwrap_or(u64::MAX),
        peak_rss_kib: exit.peak_rss_kib,
        timed_out,
        cancelled,
    };
    tracing::debug!(id, pid, ?info, "exec finished");
    out.send(Message::Exited { id, info }).await;
}

/// Bytes waiting in an output pipe (0 when closed or unknown).
fn pending_bytes(r: &Option<pipe::Receiver>) -> usize {
    let Some(r) = r else { return 0 };
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer, which points to a live local; the
    // fd is owned by the receiver and open for the duration of the call.
    let rc = unsafe { libc::ioctl(r.as_raw_fd(), libc::FIONREAD, &mut n) };
    if rc == 0 {
        usize::try_from(n).unwrap_or(0)
    } else {
        0
    }
}

/// Reads once; `None` on EOF or error (the stream is finished either way).
async fn read_some(r: &mut Option<pipe::Receiver>, buf: &mut [u8]) -> Option<usize> {
    let r = r.as_mut()?;
    match r.read(buf).await {
        Ok(0) | Err(_) => None,
        Ok(n) => Some(n),
    }
}
