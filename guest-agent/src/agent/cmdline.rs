//! Settings read from the kernel command line (`hearth.*` keys).

use std::net::Ipv4Addr;

/// Static IPv4 configuration for eth0 (`hearth.net=ADDR/PREFIX,GATEWAY`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    pub addr: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
}

/// Everything the agent reads from /proc/cmdline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestConfig {
    pub port: u32,
    pub overlay_tmpfs: bool,
    pub work_device: Option<String>,
    pub net: Option<NetConfig>,
    pub dns: Option<Ipv4Addr>,
    pub ready_pio_port: Option<u16>,
}

impl Default for GuestConfig {
    fn default() -> Self {
        Self {
            port: 1024,
            overlay_tmpfs: false,
            work_device: None,
            net: None,
            dns: None,
            ready_pio_port: None,
        }
    }
}

/// A `hearth.*` value that could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("kernel command line: bad value {value:?} for {key}: {reason}")]
pub struct CmdlineError {
    pub key: String,
    pub value: String,
    pub reason: &'static str,
}

fn bad(key: &str, value: &str, reason: &'static str) -> CmdlineError {
    CmdlineError {
        key: key.into(),
        value: value.into(),
        reason,
    }
}

fn parse_net(value: &str) -> Result<NetConfig, CmdlineError> {
    let key = "hearth.net";
    let (cidr, gw) = match value.split_once(',') {
        Some((c, g)) => (c, Some(g)),
        None => (value, None),
    };
    let (addr, prefix) = cidr
        .split_once('/')
        .ok_or_else(|| bad(key, value, "expected ADDR/PREFIX"))?;
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| bad(key, value, "bad IPv4 address"))?;
    let prefix: u8 = prefix
        .parse()
        .map_err(|_| bad(key, value, "bad prefix length"))?;
    if prefix > 32 {
        return Err(bad(key, value, "prefix length above 32"));
    }
    let gateway = match gw {
        Some(g) if !g.is_empty() => Some(
            g.parse()
                .map_err(|_| bad(key, value, "bad gateway address"))?,
        ),
        _ => None,
    };
    Ok(NetConfig {
        addr,
        prefix,
        gateway,
    })
}

/// Parses the kernel command line. Unknown keys are ignored; a malformed
/// `hearth.*` value is an error naming the key.
pub fn parse_cmdline(cmdline: &str) -> Result<GuestConfig, CmdlineError> {
    let mut cfg = GuestConfig::default();
    for word in cmdline.split_ascii_whitespace() {
        let Some((key, value)) = word.split_once('=') else {
            continue;
        };
        match key {
            "hearth.port" => {
                cfg.port = value
                    .parse()
                    .map_err(|_| bad(key, value, "not a port number"))?
            }
            "hearth.overlay" => {
                cfg.overlay_tmpfs = match value {
                    "tmpfs" => true,
                    "none" => false,
                    _ => return Err(bad(key, value, "expected tmpfs or none")),
                }
            }
            "hearth.work" => cfg.work_device = Some(value.to_string()),
            "hearth.net" => cfg.net = Some(parse_net(value)?),
            "hearth.dns" => {
                cfg.dns = Some(
                    value
                        .parse()
                        .map_err(|_| bad(key, value, "bad IPv4 address"))?,
                )
            }
            "hearth.ready" => {
                let hex = value
                    .strip_prefix("pio:0x")
                    .or_else(|| value.strip_prefix("pio:0X"));
                let hex = hex.ok_or_else(|| bad(key, value, "expected pio:0xPORT"))?;
                cfg.ready_pio_port = Some(
                    u16::from_str_radix(hex, 16).map_err(|_| bad(key, value, "bad port number"))?,
                );
            }
            _ => {}
        }
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_when_nothing_given() {
        let cfg = parse_cmdline("console=ttyS0 panic=-1 init=/sbin/hearth-agent").unwrap();
        assert_eq!(cfg, GuestConfig::default());
        assert_eq!(cfg.port, 1024);
    }

    #[test]
    fn parses_every_key() {
        let cfg = parse_cmdline(
            "console=ttyS0 hearth.port=5000 hearth.overlay=tmpfs hearth.work=/dev/vdb \
             hearth.net=10.0.2.15/24,10.0.2.2 hearth.dns=10.0.2.3 hearth.ready=pio:0x3f0",
        )
        .unwrap();
        assert_eq!(cfg.port, 5000);
        assert!(cfg.overlay_tmpfs);
        assert_eq!(cfg.work_device.as_deref(), Some("/dev/vdb"));
        assert_eq!(
            cfg.net,
            Some(NetConfig {
                addr: "10.0.2.15".parse().unwrap(),
                prefix: 24,
                gateway: Some("10.0.2.2".parse().unwrap())
            })
        );
        assert_eq!(cfg.dns, Some("10.0.2.3".parse().unwrap()));
        assert_eq!(cfg.ready_pio_port, Some(0x3f0));
    }

    #[test]
    fn net_without_gateway() {
        let cfg = parse_cmdline("hearth.net=192.168.1.2/30").unwrap();
        assert_eq!(cfg.net.unwrap().gateway, None);
    }

    #[test]
    fn rejects_bad_values_naming_the_key() {
        for bad_line in [
            "hearth.port=abc",
            "hearth.overlay=zfs",
            "hearth.net=10.0.0.1",
            "hearth.net=10.0.0.1/33",
            "hearth.dns=nope",
            "hearth.ready=0x3f0",
        ] {
            let err = parse_cmdline(bad_line).unwrap_err();
            assert!(bad_line.starts_with(&err.key), "{bad_line}: {err}");
        }
    }
}
