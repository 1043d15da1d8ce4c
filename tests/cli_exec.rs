//! `hearth exec` against a local agent started with `hearth agent`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

struct LocalAgent {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl LocalAgent {
    fn start() -> LocalAgent {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_hearth"))
            .args(["agent", "--listen"])
            .arg(format!("unix:{}", socket.display()))
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "agent socket did not appear");
            std::thread::sleep(Duration::from_millis(10));
        }
        LocalAgent {
            child,
            socket,
            _dir: dir,
        }
    }

    fn exec(&self, args: &[&str]) -> Output {
        hearth_exec(&self.socket, args)
    }
}

impl Drop for LocalAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn hearth_exec(socket: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hearth"))
        .arg("exec")
        .arg("--agent")
        .arg(format!("unix:{}", socket.display()))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn streams_output_and_returns_the_exit_code() {
    let agent = LocalAgent::start();
    let out = agent.exec(&[
        "--env",
        "WHO=world",
        "--cwd",
        "/",
        "--",
        "sh",
        "-c",
        "echo hello $WHO; pwd; echo oops >&2; exit 5",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello world\n/\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");
    assert_eq!(out.status.code(), Some(5));
}

#[test]
fn signal_death_maps_to_128_plus_n_and_timeout_is_reported() {
    let agent = LocalAgent::start();
    let out = agent.exec(&["--", "sh", "-c", "kill -KILL $$"]);
    assert_eq!(out.status.code(), Some(128 + 9));
    let started = Instant::now();
    let out = agent.exec(&["--timeout", "0.5", "--", "sleep", "30"]);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(128 + 9));
    assert!(String::from_utf8_lossy(&out.stderr).contains("timed out"));
}

#[test]
fn unreachable_agent_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = hearth_exec(&dir.path().join("nope.sock"), &["--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("connecting to unix:"), "{err}");
}
