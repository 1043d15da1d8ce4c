//! The agent binary's parts: PID 1 init duties, the server and its requests.

pub mod cmdline;
mod exec;
mod files;
pub mod init;
pub mod net;
pub mod ready;
pub mod reaper;
pub mod server;

use server::{AgentState, ShutdownMode, serve_connection};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Where the agent listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Vsock(u32),
    Unix(PathBuf),
}

impl std::str::FromStr for ListenAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(port) = s.strip_prefix("vsock:") {
            port.parse()
                .map(ListenAddr::Vsock)
                .map_err(|_| format!("bad vsock port in {s:?}"))
        } else if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("empty unix socket path".into());
            }
            Ok(ListenAddr::Unix(path.into()))
        } else {
            Err(format!(
                "listen address {s:?} must be vsock:PORT or unix:PATH"
            ))
        }
    }
}

/// Errors that stop the agent's server.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("listening on {addr:?}: {source}")]
    Listen {
        addr: ListenAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the child reaper: {0}")]
    Reaper(#[source] std::io::Error),
}

/// Makes this process adopt orphaned descendants (as PID 1 would), so the
/// reaper collects them when the agent runs as an ordinary host process.
pub fn become_subreaper() {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes plain integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "could not become a child subreaper");
    }
}

/// Listens on `addr` and serves connections until a client asks for shutdown.
/// `on_listening` runs once the listener is bound (e.g. the ready signal).
pub async fn serve(
    addr: ListenAddr,
    mode: ShutdownMode,
    on_listening: impl FnOnce(),
) -> Result<(), AgentError> {
    let reaper = reaper::Reaper::start().map_err(AgentError::Reaper)?;
    let (shutdown_tx, mut shutdown_rx) = mpsc::channel(1);
    let state = Arc::new(AgentState {
        reaper,
        shutdown_tx,
    });
    let listen_err = |source| AgentError::Listen {
        addr: addr.clone(),
        source,
    };
    match &addr {
        ListenAddr::Unix(path) => {
            let listener = crate::unix_socket::bind(path).map_err(listen_err)?;
            tracing::info!(path = %path.display(), "agent listening on unix socket");
            on_listening();
            loop {
                tokio::select! {
                    r = listener.accept() => match r {
                        Ok((stream, _)) => { tokio::spawn(serve_connection(stream, Arc::clone(&state), None)); }
                        Err(e) => tracing::warn!(error = %e, "accept failed"),
                    },
                    _ = shutdown_rx.recv() => break,
                }
            }
            if crate::unix_socket::abstract_name(path).is_none() {
                let _ = std::fs::remove_file(path);
            }
        }
        ListenAddr::Vsock(port) => {
            let vaddr = tokio_vsock::VsockAddr::new(libc::VMADDR_CID_ANY, *port);
            let listener = tokio_vsock::VsockListener::bind(vaddr).map_err(listen_err)?;
            tracing::info!(port, "agent listening on vsock");
            on_listening();
            loop {
                tokio::select! {
                    r = listener.accept() => match r {
                        Ok((stream, peer)) => {
                            tracing::debug!(?peer, "vsock connection");
                            // The fd stays open while serve_connection owns the stream, which
                            // is as long as the closure is used.
                            let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
                            let unsent: server::UnsentBytes =
                                Box::new(move || server::socket_unsent_bytes(fd));
                            tokio::spawn(serve_connection(stream, Arc::clone(&state), Some(unsent)));
                        }
                        Err(e) => tracing::warn!(error = %e, "accept failed"),
                    },
                    _ = shutdown_rx.recv() => break,
                }
            }
        }
    }
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    if mode == ShutdownMode::PowerOff {
        let e = init::power_off();
        tracing::error!(error = %e, "power off failed");
    }
    Ok(())
}
