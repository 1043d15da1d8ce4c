//! The host's nftables rules for VM networking: one table, `inet hearth`, whose rules match
//! every hearth tap by its name prefix, so the same ruleset serves every VM and every hearth
//! process on the host and never needs per-VM edits. Installing it replaces the whole table in
//! one `nft` transaction (which is also the reconcile at start: whatever an earlier or crashed
//! hearth left is gone in the same step).
//!
//! What a guest may do: open connections to public IPv4 addresses, NATed behind the host.
//! What it may not: reach the host itself (any of its addresses, including its tap's gateway
//! address), another guest, private, shared, loopback, link-local, multicast or reserved
//! ranges, or use IPv6; and nothing from outside may open a connection to a guest.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// The table's name (family `inet`).
pub const TABLE: &str = "hearth";

/// Destinations no guest may reach even through the host's routes: "this network", RFC 1918,
/// shared address space (CGNAT), loopback, link-local (cloud metadata services), IETF protocol
/// assignments, benchmarking, multicast and the reserved 240/4 (with broadcast).
pub const BLOCKED_IPV4: [&str; 10] = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/3",
];

/// Errors running `nft`.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("running nft (is the nftables package installed?): {0}")]
    Spawn(#[source] std::io::Error),
    #[error("nft {what} failed: {stderr}")]
    Failed { what: &'static str, stderr: String },
}

/// The whole table for taps named `<prefix>*` and guest addresses in `pool`/`pool_prefix`.
/// The leading `add`/`delete` pair makes loading it replace an existing table atomically.
pub fn ruleset(tap_prefix: &str, pool: Ipv4Addr, pool_prefix: u8) -> String {
    let taps = format!("\"{tap_prefix}*\"");
    let blocked = BLOCKED_IPV4.join(", ");
    format!(
        "add table inet {TABLE}
delete table inet {TABLE}
table inet {TABLE} {{
    set blocked_ipv4 {{
        type ipv4_addr
        flags interval
        elements = {{ {blocked} }}
    }}
    # Guest -> this host (any of its addresses): dropped. ARP is not IP and still works.
    chain input {{
        type filter hook input priority filter - 10; policy accept;
        iifname {taps} drop
    }}
    chain forward {{
        type filter hook forward priority filter - 10; policy accept;
        iifname {taps} oifname {taps} drop
        oifname {taps} ct state established,related accept
        oifname {taps} drop
        iifname {taps} meta nfproto ipv6 drop
        iifname {taps} ip daddr @blocked_ipv4 drop
        iifname {taps} accept
    }}
    # Nothing this host sends may reach a guest unless it answers the guest.
    chain output {{
        type filter hook output priority filter - 10; policy accept;
        oifname {taps} ct state established,related accept
        oifname {taps} drop
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr {pool}/{pool_prefix} oifname != {taps} masquerade
    }}
}}
"
    )
}

fn nft(args: &[&str], stdin: Option<&str>, what: &'static str) -> Result<String, NftError> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NftError::Spawn)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).map_err(NftError::Spawn)?;
    }
    let out = child.wait_with_output().map_err(NftError::Spawn)?;
    if !out.status.success() {
        return Err(NftError::Failed {
            what,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Loads `text` (a [`ruleset`]) in one transaction.
pub fn install(text: &str) -> Result<(), NftError> {
    nft(&["-f", "-"], Some(text), "loading the hearth table").map(drop)
}

/// Checks `text` without loading it (`nft -c`).
pub fn check(text: &str) -> Result<(), NftError> {
    nft(&["-c", "-f", "-"], Some(text), "checking the hearth table").map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_names_the_taps_pool_and_every_blocked_range() {
        let text = ruleset("hearth", Ipv4Addr::new(10, 213, 0, 0), 16);
        assert!(text.starts_with("add table inet hearth\ndelete table inet hearth\n"));
        assert!(text.contains("iifname \"hearth*\" drop"));
        assert!(text.contains("ip saddr 10.213.0.0/16 oifname != \"hearth*\" masquerade"));
        for range in BLOCKED_IPV4 {
            assert!(text.contains(range), "{range}");
        }
    }
}
