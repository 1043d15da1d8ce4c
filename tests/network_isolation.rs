//! The VM network isolation rules, exactly as hearth loads them, checked without a VM: network
//! namespaces stand in for the host ("router", with hearth's nftables table and two links named
//! like hearth taps), two guests and "the internet" (a public address plus a private and a
//! link-local one behind it). Real TCP connections show what gets through. Needs root and
//! iproute2 + nftables (the test suite installs them); fails, never skips, without them.
//! The same rules on real taps and a booted guest: `vm_net` (VM suite).

mod net_common;

use hearth::sandbox::network::{TAP_PREFIX, nftables};
use net_common::{answer_with_peer_address, in_netns, sh};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

/// Namespace names, unique per test process.
struct Names {
    router: String,
    guest1: String,
    guest2: String,
    inet: String,
}

fn names() -> Names {
    let p = std::process::id();
    Names {
        router: format!("hth-r-{p}"),
        guest1: format!("hth-g1-{p}"),
        guest2: format!("hth-g2-{p}"),
        inet: format!("hth-i-{p}"),
    }
}

impl Drop for Names {
    fn drop(&mut self) {
        for ns in [&self.router, &self.guest1, &self.guest2, &self.inet] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A server in `ns` on `port` that answers every connection with the peer address it saw.
fn serve(ns: &str, port: u16) {
    let listener = in_netns(ns, move || {
        TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).expect("bind")
    });
    answer_with_peer_address(listener);
}

/// From `ns`: Some(what the server said) when a connection to `to` was made, None on timeout.
fn connect(ns: &str, to: SocketAddr) -> Option<String> {
    in_netns(ns, move || {
        let mut s = match TcpStream::connect_timeout(&to, Duration::from_millis(1500)) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return None,
            Err(e) => panic!("connecting to {to}: {e} (expected success or a silent drop)"),
        };
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut said = String::new();
        s.read_to_string(&mut said).expect("reading the answer");
        Some(said.trim_end().to_string())
    })
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn guests_reach_public_addresses_only_and_nothing_reaches_them() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "needs root (network namespaces, nftables)"
    );
    let n = names();
    let (r, g1, g2, i) = (&n.router, &n.guest1, &n.guest2, &n.inet);
    let (t1, t2) = (format!("{TAP_PREFIX}7"), format!("{TAP_PREFIX}8"));
    sh(&format!(
        "for ns in {r} {g1} {g2} {i}; do ip netns add $ns; ip -n $ns link set lo up; done
         ip -n {r} link add {t1} type veth peer name eth0 netns {g1}
         ip -n {r} link add {t2} type veth peer name eth0 netns {g2}
         ip -n {r} link add up0 type veth peer name eth0 netns {i}
         ip -n {r} addr add 10.213.0.29/30 dev {t1}; ip -n {r} link set {t1} up
         ip -n {r} addr add 10.213.0.33/30 dev {t2}; ip -n {r} link set {t2} up
         ip -n {r} addr add 203.0.113.1/24 dev up0; ip -n {r} link set up0 up
         ip -n {r} route add 10.99.0.0/24 via 203.0.113.2
         ip -n {r} route add 169.254.169.254/32 via 203.0.113.2
         ip netns exec {r} sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward'
         ip -n {g1} addr add 10.213.0.30/30 dev eth0; ip -n {g1} link set eth0 up
         ip -n {g1} route add default via 10.213.0.29
         ip -n {g2} addr add 10.213.0.34/30 dev eth0; ip -n {g2} link set eth0 up
         ip -n {g2} route add default via 10.213.0.33
         ip -n {i} addr add 203.0.113.2/24 dev eth0; ip -n {i} link set eth0 up
         ip -n {i} addr add 10.99.0.2/32 dev lo; ip -n {i} addr add 169.254.169.254/32 dev lo
         ip -n {i} route add 10.213.0.0/16 via 203.0.113.1"
    ));
    for ns in [r, g2, i] {
        serve(ns, 8080);
    }
    let (inet, private, metadata) = (
        addr("203.0.113.2:8080"),
        addr("10.99.0.2:8080"),
        addr("169.254.169.254:8080"),
    );

    // Without the rules everything is routable: the checks below are not vacuous.
    assert_eq!(connect(g1, private).as_deref(), Some("10.213.0.30"));
    assert!(
        connect(g1, addr("10.213.0.34:8080")).is_some(),
        "guest to guest, no rules"
    );

    let text = nftables::ruleset(TAP_PREFIX, Ipv4Addr::new(10, 213, 0, 0), 16);
    let load = |t: &str| {
        let mut child = Command::new("ip")
            .args(["netns", "exec", r, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("nft");
        child.stdin.take().unwrap().write_all(t.as_bytes()).unwrap();
        assert!(child.wait().unwrap().success(), "nft -f failed");
    };
    load(&text);
    load(&text); // loading twice replaces the table (the reconcile at start), no error

    assert_eq!(
        connect(g1, inet).as_deref(),
        Some("203.0.113.1"),
        "a public address is reachable, NATed behind the host"
    );
    assert_eq!(
        connect(g1, private),
        None,
        "private range through the host's route"
    );
    assert_eq!(connect(g1, metadata), None, "link-local (cloud metadata)");
    assert_eq!(
        connect(g1, addr("10.213.0.29:8080")),
        None,
        "the host's tap address"
    );
    assert_eq!(
        connect(g1, addr("203.0.113.1:8080")),
        None,
        "the host's other address"
    );
    assert_eq!(connect(g1, addr("10.213.0.34:8080")), None, "another guest");
    assert_eq!(
        connect(g1, addr("10.213.0.33:8080")),
        None,
        "another guest's gateway"
    );
    assert_eq!(
        connect(i, addr("10.213.0.34:8080")),
        None,
        "the internet to a guest"
    );
    assert_eq!(
        connect(g2, inet).as_deref(),
        Some("203.0.113.1"),
        "the second guest is served too"
    );
}
