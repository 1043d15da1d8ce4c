//! The agent as PID 1: run it in fresh PID + mount namespaces on the host
//! (root and `unshare` required; the test fails, never skips, without them),
//! with `hearth.overlay=tmpfs`, and check the init duties through the protocol.

mod common;

use common::eventually;
use hearth_agent::client::connect;
use hearth_agent::proto::{ExecSpec, ExitStatus};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

#[tokio::test]
async fn agent_as_pid1_with_overlay_root_mounts_reaps_and_shuts_down() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test needs root (it creates PID and mount namespaces)"
    );
    let name = format!("hearth-pid1-test-{}", std::process::id());
    let probe = format!("/hearth-overlay-probe-{}", std::process::id());
    let mut ns = Command::new("unshare")
        .args([
            "--pid",
            "--fork",
            "--mount",
            "--propagation",
            "private",
            "--",
        ])
        .arg(env!("CARGO_BIN_EXE_hearth-agent"))
        .arg("--listen")
        .arg(format!("unix:@{name}"))
        .env("HEARTH_AGENT_CMDLINE", "console=ttyS0 hearth.overlay=tmpfs")
        .env("HEARTH_AGENT_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("running unshare (util-linux) failed");
    let addr = format!("unix:@{name}");
    let mut client = None;
    for _ in 0..200 {
        if let Ok(c) = connect(&addr).await {
            client = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let client = client.expect("agent in the namespace never listened");
    let script = format!(
        "set -e\n\
         echo pid1=$(tr '\\0' ' ' < /proc/1/cmdline)\n\
         grep -q '^overlay / overlay' /proc/mounts && echo overlay-root\n\
         for m in /proc /dev /tmp /run; do grep -q \" $m \" /proc/mounts && echo mounted:$m; done\n\
         touch {probe} && echo probe-written\n\
         setsid sh -c 'sleep 0.2' </dev/null >/dev/null 2>&1 &\n\
         echo orphan=$!"
    );
    let out = client.exec_collect(ExecSpec::script(script)).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let result = std::panic::catch_unwind(|| {
        assert_eq!(
            out.info.status,
            ExitStatus::Code(0),
            "{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("pid1=") && text.contains("hearth-agent"),
            "{text}"
        );
        assert!(
            text.contains("overlay-root"),
            "root is not the overlay: {text}"
        );
        for m in ["/proc", "/dev", "/tmp", "/run"] {
            assert!(
                text.contains(&format!("mounted:{m}")),
                "{m} not mounted: {text}"
            );
        }
        assert!(text.contains("probe-written"));
        // The write went to the tmpfs upper layer, not to the real root.
        assert!(
            !std::path::Path::new(&probe).exists(),
            "overlay leaked a write to the real root"
        );
    });
    let _ = std::fs::remove_file(&probe);
    if let Err(e) = result {
        let _ = ns.kill();
        std::panic::resume_unwind(e);
    }
    // The orphan is a child of PID 1 inside the namespace; a zombie would
    // show up in `ps`-like listings: ask the agent after it should be reaped.
    let orphan: u32 = text
        .lines()
        .find_map(|l| l.strip_prefix("orphan="))
        .unwrap()
        .parse()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let check = client
        .exec_collect(ExecSpec::script(format!(
            "test -e /proc/{orphan} && cat /proc/{orphan}/stat || echo gone"
        )))
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&check.stdout),
        "gone\n",
        "orphan not reaped by PID 1"
    );
    // Shutdown as PID 1: reboot(RB_POWER_OFF) in a PID namespace ends its init.
    client.shutdown().await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || ns.try_wait().unwrap().is_some()).await,
        "the namespace's PID 1 did not power off"
    );
    let status = ns.wait().unwrap();
    // reboot(RB_POWER_OFF) inside a PID namespace kills its init with SIGINT,
    // which unshare passes on: proof the agent took the power-off path.
    assert_eq!(
        status.signal(),
        Some(libc::SIGINT),
        "namespace ended with {status:?}"
    );
}

/// Where the PID-1 test's socket directory goes: the target's temporary directory unless the
/// agent's own mounts as PID 1 (`init::standard_mounts`: /proc, /sys, /dev, /tmp, /run) cover
/// it, else /var/tmp.
fn socket_base() -> &'static str {
    let target = env!("CARGO_TARGET_TMPDIR");
    let covered = ["/proc", "/sys", "/dev", "/tmp", "/run"]
        .iter()
        .any(|m| Path::new(target).starts_with(m));
    if covered { "/var/tmp" } else { target }
}

#[tokio::test]
async fn agent_as_pid1_configures_loopback_and_eth0() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test needs root (it creates namespaces)"
    );
    assert!(
        Command::new("ip")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success()),
        "this test needs iproute2's `ip` on the host to create a veth eth0"
    );
    // A private network namespace holding a veth pair "eth0"/"veth1"; `sh` creates it and
    // then execs the agent, which thereby becomes PID 1. No packets leave the
    // namespace. The socket lives on the filesystem (abstract sockets are per
    // network namespace), so no overlay root here, and not under a directory the agent mounts
    // over as PID 1 (/tmp, /run, ...): a checkout in `mktemp -d` would hide it from the agent.
    let dir = tempfile::Builder::new().tempdir_in(socket_base()).unwrap();
    let socket = dir.path().join("agent.sock");
    let mut ns = Command::new("unshare")
        .args([
            "--pid",
            "--fork",
            "--mount",
            "--propagation",
            "private",
            "--net",
            "--",
        ])
        .args([
            "sh",
            "-c",
            "ip link add eth0 type veth peer name veth1 && ip link set veth1 up && exec \"$0\" --listen \"unix:$1\"",
        ])
        .arg(env!("CARGO_BIN_EXE_hearth-agent"))
        .arg(&socket)
        .env(
            "HEARTH_AGENT_CMDLINE",
            "hearth.net=10.213.0.2/24,10.213.0.1",
        )
        .env("HEARTH_AGENT_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("running unshare (util-linux) failed");
    let addr = format!("unix:{}", socket.display());
    let mut client = None;
    for _ in 0..200 {
        if let Ok(c) = connect(&addr).await {
            client = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let Some(client) = client else {
        let _ = ns.kill();
        panic!("agent in the namespace never listened");
    };
    let out = client
        .exec_collect(ExecSpec::script(
            "echo pid1=$(tr '\\0' ' ' < /proc/1/cmdline)\n\
             echo lo-flags=$(cat /sys/class/net/lo/flags)\n\
             ip -4 -o addr show dev eth0\n\
             ip -4 route show default",
        ))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    client.shutdown().await.unwrap();
    let ended = eventually(Duration::from_secs(10), || ns.try_wait().unwrap().is_some()).await;
    if !ended {
        let _ = ns.kill();
    }
    assert!(text.contains("hearth-agent"), "{text}");
    let lo_flags = text
        .lines()
        .find_map(|l| l.strip_prefix("lo-flags=0x"))
        .expect("lo flags");
    assert_eq!(
        u32::from_str_radix(lo_flags.trim(), 16).unwrap() & 1,
        1,
        "lo is not up: {text}"
    );
    assert!(
        text.contains("inet 10.213.0.2/24"),
        "eth0 address missing: {text}"
    );
    assert!(
        text.contains("default via 10.213.0.1 dev eth0"),
        "default route missing: {text}"
    );
    assert!(ended, "agent did not power off");
}
