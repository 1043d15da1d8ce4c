//! VM networking end to end: a booted guest gets `eth0` on a tap, reaches a public address
//! (NATed behind the host) and nothing else: not the host, not private or link-local ranges;
//! the tap goes away with the VM, and with a `hearth exec --network` killed by SIGKILL.
//! Everything runs in a network namespace of the test's own, which plays the host (hearth's
//! nftables table, IPv4 forwarding, the taps); a second one plays the internet. Needs root, /dev/kvm with hardware virtualization, the guest artifacts, and
//! `ip` and `nft` (harness/run-vm-tests.sh passes them into the emulated-SVM machine).

mod job_common;
mod net_common;

use hearth::sandbox::network::{HostNetwork, NetworkOptions, TAP_PREFIX};
use hearth::sandbox::vm::VmIsolation;
use hearth::sandbox::{Isolation, SandboxSpec};
use hearth_agent::proto::ExecSpec;
use net_common::{answer_with_peer_address, in_netns, sh};
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

/// iproute2's `ip` by absolute path: busybox's shell (the emulated-SVM machine's `sh`) would run
/// its own, much smaller `ip` applet for a bare `ip`.
fn ip_bin() -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .map(|d| PathBuf::from(d).join("ip"))
        .find(|p| {
            p.is_file() && std::fs::canonicalize(p).is_ok_and(|real| !real.ends_with("busybox"))
        })
        .map(|p| p.display().to_string())
        .expect("iproute2's ip not found in PATH")
}

/// The "internet" namespace, removed on drop.
struct Internet(String);

impl Drop for Internet {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn bind(port: u16) -> TcpListener {
    TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).expect("bind")
}

#[test]
fn a_guest_reaches_the_internet_and_nothing_private() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "needs root (namespaces, taps, nftables)"
    );
    let artifacts = job_common::vm::artifacts();
    // This thread, the runtime's threads and every child process from here on live in a fresh
    // network namespace: the host's own network and firewall stay untouched.
    // SAFETY: unshare(2) only changes this thread's namespace membership.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_NEWNET): {}",
        std::io::Error::last_os_error()
    );
    let inet = Internet(format!("hth-inet-{}", std::process::id()));
    let (i, ip) = (&inet.0, ip_bin());
    sh(&format!(
        "{ip} link set lo up
         {ip} netns add {i}; {ip} -n {i} link set lo up
         {ip} link add up0 type veth peer name eth0 netns {i}
         {ip} addr add 203.0.113.1/24 dev up0; {ip} link set up0 up
         {ip} route add 10.99.0.0/24 via 203.0.113.2
         {ip} route add 169.254.169.254/32 via 203.0.113.2
         {ip} -n {i} addr add 203.0.113.2/24 dev eth0; {ip} -n {i} link set eth0 up
         {ip} -n {i} addr add 10.99.0.2/32 dev lo; {ip} -n {i} addr add 169.254.169.254/32 dev lo
         {ip} -n {i} route add default via 203.0.113.1"
    ));
    answer_with_peer_address(in_netns(i, || bind(8080)));
    answer_with_peer_address(bind(8081));

    let net = HostNetwork::setup(NetworkOptions {
        dns: Ipv4Addr::new(203, 0, 113, 53),
        ..NetworkOptions::default()
    })
    .expect("host networking");
    let iso = VmIsolation::new(artifacts)
        .deadline(Some(Duration::from_secs(600)))
        .network(Arc::new(net));
    let spec = SandboxSpec {
        name: "vm-net".into(),
        cpus: 1,
        memory_mib: 256,
        workspace: None,
        workspace_disk_mib: 0,
        sync_back: false,
        network: true,
        ready_timeout: Duration::from_secs(300),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Asked over netlink (`ip`): /sys/class/net shows the namespace sysfs was mounted in.
    let tap = format!("{TAP_PREFIX}0");
    let tap_exists = |name: &str| {
        Command::new("ip")
            .args(["link", "show", name])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("running ip")
            .success()
    };
    let out = rt.block_on(async {
        let sb = iso.start(&spec).await.expect("VM with a network link");
        assert!(tap_exists(&tap), "{tap}: the VM's tap");
        // Each probe prints "<name> <answer or the exit status>"; blocked paths time out.
        let script = r#"
            probe() {
                echo "$1 $(timeout 4 bash -c "exec 3<>/dev/tcp/$2/$3 && head -n1 <&3" 2>/dev/null \
                    || echo "exit=$?")"
            }
            echo "mac $(cat /sys/class/net/eth0/address)"
            echo "dns $(cat /etc/resolv.conf | tr '\n' ' ')"
            probe public 203.0.113.2 8080
            probe private 10.99.0.2 8080
            probe linklocal 169.254.169.254 8080
            probe gateway 10.213.0.1 8081
            probe host 203.0.113.1 8081
        "#;
        let out = sb
            .client()
            .exec_collect(ExecSpec::script(script))
            .await
            .expect("exec through the agent");
        sb.teardown().await.expect("teardown");
        String::from_utf8_lossy(&out.stdout).into_owned()
    });
    eprintln!("guest said:\n{out}");
    let said = |what: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{what} ")))
            .unwrap_or_else(|| panic!("no {what} line in:\n{out}"))
            .trim()
            .to_string()
    };
    assert_eq!(said("mac"), "02:68:74:00:00:00");
    assert!(said("dns").contains("nameserver 203.0.113.53"), "{out}");
    assert_eq!(
        said("public"),
        "203.0.113.1",
        "public address reached, NATed"
    );
    for blocked in ["private", "linklocal", "gateway", "host"] {
        assert_eq!(
            said(blocked),
            "exit=124",
            "{blocked} must time out (dropped):\n{out}"
        );
    }
    assert!(!tap_exists(&tap), "{tap} outlived its VM");

    // A hearth killed outright (SIGKILL, no teardown) leaves no tap behind either: the kernel
    // removes a non-persistent tap with its last file descriptor.
    let mut child = Command::new(hearth_bin())
        .args(["exec", "--network", "--", "sleep", "600"])
        .env("HEARTH_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("spawning hearth exec --network");
    let since = std::time::Instant::now();
    while !tap_exists(&tap) {
        assert!(
            since.elapsed() < Duration::from_secs(300),
            "hearth exec --network made no tap in 300 s"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "hearth exec ended early"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    assert!(!tap_exists(&tap), "{tap} outlived a killed hearth");
}

fn hearth_bin() -> PathBuf {
    match std::env::var_os("HEARTH_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_hearth")),
    }
}
