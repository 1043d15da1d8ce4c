//! Child reaping that works as PID 1: one SIGCHLD-driven loop calls
//! `wait4(-1)`, hands the status (and rusage) of children we spawned to their
//! waiters, and silently reaps orphans. Spawning happens under the same lock
//! as reaping, so a child can never be reaped before it is registered.

use crate::proto::ExitStatus;
use std::collections::HashMap;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;

/// How a tracked child ended.
#[derive(Debug, Clone, Copy)]
pub struct ChildExit {
    pub status: ExitStatus,
    /// ru_maxrss from wait4 (KiB on Linux).
    pub peak_rss_kib: u64,
}

type Table = HashMap<i32, oneshot::Sender<ChildExit>>;

/// Owns every `wait` in the process.
pub struct Reaper {
    table: Mutex<Table>,
}

impl Reaper {
    /// Starts the reaping task on the current tokio runtime.
    pub fn start() -> std::io::Result<Arc<Reaper>> {
        let reaper = Arc::new(Reaper {
            table: Mutex::new(HashMap::new()),
        });
        let mut sigchld = signal(SignalKind::child())?;
        let r = Arc::clone(&reaper);
        tokio::spawn(async move {
            // The periodic tick is a safety net; SIGCHLD normally wakes us.
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    _ = sigchld.recv() => {}
                    _ = tick.tick() => {}
                }
                r.reap_all();
            }
        });
        Ok(reaper)
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // A poisoned table only means a panic elsewhere; the map is still usable.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Spawns `cmd` and registers it; the receiver yields its exit.
    pub fn spawn(
        &self,
        cmd: &mut Command,
    ) -> std::io::Result<(Child, oneshot::Receiver<ChildExit>)> {
        let mut table = self.lock();
        let child = cmd.spawn()?;
        let (tx, rx) = oneshot::channel();
        let pid =
            i32::try_from(child.id()).map_err(|_| std::io::Error::other("pid out of range"))?;
        table.insert(pid, tx);
        Ok((child, rx))
    }

    /// Reaps every child that has exited.
    pub fn reap_all(&self) {
        let mut table = self.lock();
        loop {
            let mut status: libc::c_int = 0;
            // SAFETY: an all-zero rusage is a valid value of this plain C struct.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: wait4 only writes to the two out-pointers, which point to
            // live, properly sized locals.
            let pid = unsafe { libc::wait4(-1, &mut status, libc::WNOHANG, &mut usage) };
            if pid <= 0 {
                break;
            }
            let exit = ChildExit {
                status: decode_status(status),
                peak_rss_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0),
            };
            match table.remove(&pid) {
                Some(tx) => {
                    let _ = tx.send(exit);
                }
                None => tracing::debug!(pid, ?exit, "reaped orphan"),
            }
        }
    }
}

fn decode_status(status: libc::c_int) -> ExitStatus {
    if libc::WIFSIGNALED(status) {
        ExitStatus::Signal(libc::WTERMSIG(status))
    } else {
        ExitStatus::Code(libc::WEXITSTATUS(status))
    }
}

/// Sends `sig` to the whole process group `pgid`. Errors (already gone) are ignored.
pub fn kill_group(pgid: i32, sig: i32) {
    if pgid <= 1 {
        return;
    }
    // SAFETY: kill has no memory-safety preconditions; a negative pid targets
    // the process group, and pgid > 1 so we never signal every process.
    let rc = unsafe { libc::kill(-pgid, sig) };
    if rc != 0 {
        tracing::trace!(pgid, sig, "kill on process group failed (already gone?)");
    }
}
