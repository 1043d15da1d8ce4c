//! Helpers of the networking tests (tests/network_isolation.rs, tests/vm_net.rs): shell set-up
//! scripts, threads inside a named network namespace, and a TCP server that tells each client
//! which address it came from (so a test sees whether NAT happened).
#![allow(dead_code)]

use std::io::Write;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::process::Command;

/// Runs `script` with `sh -e`; panics with its stderr when it fails.
pub fn sh(script: &str) {
    let out = Command::new("sh")
        .args(["-ec", script])
        .output()
        .expect("running sh (iproute2 and nftables needed)");
    assert!(
        out.status.success(),
        "{script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `f` on a thread that has joined the named namespace `ns` (`ip netns add`).
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("namespace file");
        // SAFETY: setns(2) with a namespace fd that stays open across the call; it only changes
        // this thread's network namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("namespace thread")
}

/// Serves `listener` on a thread of its own: every connection is answered with the address it
/// came from and a newline, then closed.
pub fn answer_with_peer_address(listener: TcpListener) {
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let peer = conn
                .peer_addr()
                .map(|a| a.ip().to_string())
                .unwrap_or_default();
            let _ = conn.write_all(format!("{peer}\n").as_bytes());
        }
    });
}
