//! VM networking on the host: a tap per VM, addressed from a pool of /30 links, NATed to the
//! outside, isolated by the `inet hearth` nftables table ([`nftables`]).
//!
//! Cleanup needs no bookkeeping: taps are opened non-persistent by the VMM, so a tap (and its
//! address and route) disappears with the VM's file descriptor, also when the process is
//! killed; the nftables table is shared by every VM and replaced whole at start
//! ([`HostNetwork::setup`]), which is the reconcile for rules. Slot `n` of the pool is link
//! `<pool> + 4n`: the host end `+1`, the guest `+2`; a slot is taken by creating tap
//! `hearth<n>`, which the kernel refuses (EBUSY) while another VM, of any hearth process, holds
//! it.

pub mod nftables;

use hearth_agent::agent::cmdline::NetConfig;
use hearth_vmm::Tap;
use std::net::Ipv4Addr;

/// Tap names are this prefix and the slot number (`hearth0`, `hearth1`, ...).
pub const TAP_PREFIX: &str = "hearth";
/// The default pool of guest links.
pub const DEFAULT_POOL: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 213, 0, 0), 16);
/// The default resolver given to guests: guests may not reach the host or private ranges, so
/// a host-local or site resolver is out of reach; `HEARTH_VM_DNS` overrides it.
pub const DEFAULT_DNS: Ipv4Addr = Ipv4Addr::new(1, 1, 1, 1);
const SYSCTL_IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// How VM networking is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkOptions {
    /// The guest links' pool: network address and prefix length (at most /30).
    pub pool: (Ipv4Addr, u8),
    /// The resolver written to the guest's /etc/resolv.conf.
    pub dns: Ipv4Addr,
}

impl Default for NetworkOptions {
    fn default() -> Self {
        Self {
            pool: DEFAULT_POOL,
            dns: DEFAULT_DNS,
        }
    }
}

impl NetworkOptions {
    /// Defaults, with `HEARTH_VM_DNS` and `HEARTH_VM_POOL` (`A.B.C.D/N`) from the environment.
    pub fn from_env() -> Result<Self, NetworkError> {
        let mut o = Self::default();
        if let Some(v) = std::env::var("HEARTH_VM_DNS")
            .ok()
            .filter(|v| !v.is_empty())
        {
            o.dns = v.parse().map_err(|_| {
                NetworkError::Config(format!("HEARTH_VM_DNS={v}: not an IPv4 address"))
            })?;
        }
        if let Some(v) = std::env::var("HEARTH_VM_POOL")
            .ok()
            .filter(|v| !v.is_empty())
        {
            o.pool = parse_pool(&v)?;
        }
        Ok(o)
    }

    /// The `inet hearth` table for these options ([`nftables::ruleset`]).
    pub fn ruleset(&self) -> String {
        nftables::ruleset(TAP_PREFIX, self.pool.0, self.pool.1)
    }

    /// How many /30 links the pool holds.
    pub fn slots(&self) -> u32 {
        1u32 << (30 - u32::from(self.pool.1.min(30)))
    }
}

fn parse_pool(v: &str) -> Result<(Ipv4Addr, u8), NetworkError> {
    let bad = |why: &str| NetworkError::Config(format!("HEARTH_VM_POOL={v}: {why}"));
    let (addr, prefix) = v.split_once('/').ok_or_else(|| bad("expected A.B.C.D/N"))?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad("bad address"))?;
    let prefix: u8 = prefix.parse().map_err(|_| bad("bad prefix"))?;
    if !(8..=30).contains(&prefix) {
        return Err(bad("prefix must be /8 to /30"));
    }
    let mask = u32::MAX << (32 - u32::from(prefix));
    if u32::from(addr) & !mask != 0 {
        return Err(bad("host bits set"));
    }
    Ok((addr, prefix))
}

/// Errors setting up host networking or a VM's link.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("network configuration: {0}")]
    Config(String),
    #[error("VM networking needs root (CAP_NET_ADMIN) to create taps and nftables rules")]
    NotRoot,
    #[error(transparent)]
    Nft(#[from] nftables::NftError),
    #[error("enabling IPv4 forwarding ({SYSCTL_IP_FORWARD}): {0}")]
    Forwarding(#[source] std::io::Error),
    #[error("every one of the {0} guest links of the pool is in use")]
    PoolExhausted(u32),
    #[error(transparent)]
    Tap(#[from] hearth_vmm::TapError),
    #[error("configuring the host end of {tap}: {source}")]
    HostAddress {
        tap: String,
        #[source]
        source: hearth_agent::agent::net::NetError,
    },
}

/// Host networking, set up: the nftables table is loaded and forwarding is on.
#[derive(Debug)]
pub struct HostNetwork {
    opts: NetworkOptions,
}

/// One VM's link: the tap (to hand to the VM builder) and what the guest is told.
#[derive(Debug)]
pub struct GuestLink {
    pub tap: Tap,
    pub mac: [u8; 6],
    pub host: Ipv4Addr,
    pub guest: Ipv4Addr,
    pub dns: Ipv4Addr,
}

impl GuestLink {
    /// The kernel command line words the guest agent reads (`hearth.net`, `hearth.dns`).
    pub fn cmdline(&self) -> String {
        format!(
            "hearth.net={}/30,{} hearth.dns={}",
            self.guest, self.host, self.dns
        )
    }
}

impl HostNetwork {
    /// Loads (replacing any earlier copy of) the `inet hearth` table and turns on IPv4
    /// forwarding.
    pub fn setup(opts: NetworkOptions) -> Result<HostNetwork, NetworkError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(NetworkError::NotRoot);
        }
        nftables::install(&opts.ruleset())?;
        let forwarding =
            std::fs::read_to_string(SYSCTL_IP_FORWARD).map_err(NetworkError::Forwarding)?;
        if forwarding.trim() != "1" {
            std::fs::write(SYSCTL_IP_FORWARD, "1").map_err(NetworkError::Forwarding)?;
            tracing::warn!("VM networking: turned on IPv4 forwarding (net.ipv4.ip_forward=1)");
        }
        let (pool, prefix) = opts.pool;
        tracing::info!(pool = %format!("{pool}/{prefix}"), dns = %opts.dns,
            "VM networking: nftables table inet {} loaded", nftables::TABLE);
        Ok(HostNetwork { opts })
    }

    /// Takes the first free slot of the pool: creates its tap, gives the host end its address
    /// and brings it up.
    pub fn attach(&self) -> Result<GuestLink, NetworkError> {
        let slots = self.opts.slots();
        for slot in 0..slots {
            let name = format!("{TAP_PREFIX}{slot}");
            let tap = match Tap::open(&name) {
                Ok(t) => t,
                Err(hearth_vmm::TapError::Create { source, .. })
                    if source.raw_os_error() == Some(libc::EBUSY) =>
                {
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let base = u32::from(self.opts.pool.0) + 4 * slot;
            let (host, guest) = (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2));
            let cfg = NetConfig {
                addr: host,
                prefix: 30,
                gateway: None,
            };
            hearth_agent::agent::net::configure(&name, &cfg).map_err(|source| {
                NetworkError::HostAddress {
                    tap: name.clone(),
                    source,
                }
            })?;
            let s = slot.to_be_bytes();
            return Ok(GuestLink {
                tap,
                // Locally administered, unicast: 02:68:74 ("ht") and the slot.
                mac: [0x02, 0x68, 0x74, s[1], s[2], s[3]],
                host,
                guest,
                dns: self.opts.dns,
            });
        }
        Err(NetworkError::PoolExhausted(slots))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_are_parsed_strictly() {
        assert_eq!(
            parse_pool("10.99.0.0/24").unwrap(),
            (Ipv4Addr::new(10, 99, 0, 0), 24)
        );
        for bad in [
            "10.99.0.1/24",
            "10.99.0.0",
            "10.99.0.0/31",
            "x/16",
            "10.0.0.0/4",
        ] {
            assert!(parse_pool(bad).is_err(), "{bad}");
        }
        let o = NetworkOptions::default();
        assert_eq!(o.slots(), 16384);
        let small = NetworkOptions {
            pool: (Ipv4Addr::new(10, 99, 0, 0), 30),
            ..o
        };
        assert_eq!(small.slots(), 1);
    }
}
