//! A test-only [`Isolation`]: the guest agent (`hearth agent --listen unix:…`) as a plain host
//! process in a private mount namespace where the job's workspace is bind-mounted at `/work`, so
//! steps see the same paths as in a VM. No other isolation (needs root for the mount namespace).
//! The hearth binary is opened before the bind mount hides `/work` (it may live under it) and
//! executed through `/proc/self/fd/3`.

use hearth::sandbox::{
    BoxFuture, Isolation, IsolationKind, Sandbox, SandboxError, SandboxSpec, StartTimings,
};
use hearth_agent::client::Client;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const LAUNCH: &str = r#"exec 3<"$1" || exit 1
mkdir -p /work && mount --bind "$2" /work || exit 1
exec /proc/self/fd/3 agent --listen "unix:$3""#;

pub struct LocalAgent {
    pub bin: PathBuf,
    pub sock_dir: PathBuf,
}

impl LocalAgent {
    pub fn new(sock_dir: PathBuf) -> LocalAgent {
        std::fs::create_dir_all(&sock_dir).unwrap();
        LocalAgent {
            bin: PathBuf::from(env!("CARGO_BIN_EXE_hearth")),
            sock_dir,
        }
    }
}

struct LocalSandbox {
    child: Mutex<Option<tokio::process::Child>>,
    client: Client,
    sock: PathBuf,
    total: Duration,
}

impl Isolation for LocalAgent {
    fn kind(&self) -> IsolationKind {
        IsolationKind::Process
    }

    fn start<'a>(
        &'a self,
        spec: &'a SandboxSpec,
    ) -> BoxFuture<'a, Result<Box<dyn Sandbox>, SandboxError>> {
        Box::pin(async move {
            let started = Instant::now();
            let ws = spec
                .workspace
                .clone()
                .ok_or_else(|| SandboxError::Config("no workspace".into()))?;
            let sock = self.sock_dir.join(format!("{}.sock", spec.name));
            let mut child = tokio::process::Command::new("unshare")
                .args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
                .arg(LAUNCH)
                .arg("sh")
                .arg(&self.bin)
                .arg(&ws)
                .arg(&sock)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| SandboxError::Start(format!("spawning the agent: {e}")))?;
            let deadline = started + spec.ready_timeout;
            let client = loop {
                if sock.exists()
                    && let Ok(c) =
                        hearth_agent::client::connect(&format!("unix:{}", sock.display())).await
                {
                    break c;
                }
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(SandboxError::Start(format!("the agent exited: {status}")));
                }
                if Instant::now() > deadline {
                    let _ = child.kill().await;
                    let _ = std::fs::remove_file(&sock);
                    return Err(SandboxError::NotReady("no agent socket".into()));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            };
            Ok(Box::new(LocalSandbox {
                child: Mutex::new(Some(child)),
                client,
                sock,
                total: started.elapsed(),
            }) as Box<dyn Sandbox>)
        })
    }
}

impl Sandbox for LocalSandbox {
    fn kind(&self) -> IsolationKind {
        IsolationKind::Process
    }

    fn client(&self) -> &Client {
        &self.client
    }

    fn timings(&self) -> StartTimings {
        StartTimings {
            total: self.total,
            detail: String::new(),
        }
    }

    fn log_path(&self) -> Option<PathBuf> {
        None
    }

    fn teardown(self: Box<Self>) -> BoxFuture<'static, Result<(), SandboxError>> {
        Box::pin(async move {
            let child = self.child.lock().unwrap().take();
            if let Some(mut child) = child {
                let _ = child.kill().await;
            }
            let _ = std::fs::remove_file(&self.sock);
            Ok(())
        })
    }
}
