//! Minimal network set-up with ioctls (no `ip` binary needed in the guest):
//! bring interfaces up, set an IPv4 address/netmask, add a default route.

use super::cmdline::NetConfig;
use std::ffi::CString;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A failed network configuration step.
#[derive(Debug, thiserror::Error)]
#[error("network set-up: {step} on {iface}: {source}")]
pub struct NetError {
    step: &'static str,
    iface: String,
    #[source]
    source: std::io::Error,
}

fn err(step: &'static str, iface: &str) -> NetError {
    NetError {
        step,
        iface: iface.into(),
        source: std::io::Error::last_os_error(),
    }
}

fn control_socket(iface: &str) -> Result<OwnedFd, NetError> {
    // SAFETY: plain socket(2) call; the returned fd is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(err("socket", iface));
    }
    // SAFETY: fd is a freshly created descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ifreq_for(iface: &str) -> Result<libc::ifreq, NetError> {
    // SAFETY: ifreq is a plain C struct/union for which all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = iface.as_bytes();
    if name.len() >= req.ifr_name.len() {
        return Err(NetError {
            step: "name",
            iface: iface.into(),
            source: std::io::Error::other("interface name too long"),
        });
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name) {
        *dst = *src as libc::c_char;
    }
    Ok(req)
}

fn sockaddr(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size on Linux; this is
    // the standard reinterpretation the socket ioctls expect.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// Sets IFF_UP on `iface`.
pub fn link_up(iface: &str) -> Result<(), NetError> {
    let sock = control_socket(iface)?;
    let mut req = ifreq_for(iface)?;
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read/write the ifreq we pass, which is
    // a valid, initialised struct that outlives the calls.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(err("get flags", iface));
        }
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(err("set flags", iface));
        }
    }
    Ok(())
}

fn prefix_mask(prefix: u8) -> Ipv4Addr {
    let bits = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    };
    Ipv4Addr::from(bits)
}

/// Assigns the address, brings the interface up and adds the default route.
pub fn configure(iface: &str, cfg: &NetConfig) -> Result<(), NetError> {
    let sock = control_socket(iface)?;
    let mut req = ifreq_for(iface)?;
    req.ifr_ifru.ifru_addr = sockaddr(cfg.addr);
    // SAFETY: the ioctls read the ifreq we pass, valid for the call's duration.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFADDR, &req) } < 0 {
        return Err(err("set address", iface));
    }
    req.ifr_ifru.ifru_netmask = sockaddr(prefix_mask(cfg.prefix));
    // SAFETY: as above.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFNETMASK, &req) } < 0 {
        return Err(err("set netmask", iface));
    }
    link_up(iface)?;
    if let Some(gw) = cfg.gateway {
        let dev = CString::new(iface).map_err(|_| NetError {
            step: "name",
            iface: iface.into(),
            source: std::io::Error::other("NUL in interface name"),
        })?;
        // SAFETY: rtentry is a plain C struct for which all-zero is valid.
        let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
        rt.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
        rt.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
        rt.rt_gateway = sockaddr(gw);
        rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
        rt.rt_dev = dev.as_ptr() as *mut libc::c_char;
        // SAFETY: SIOCADDRT reads the rtentry and the device name it points
        // to; both live until after the call returns.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCADDRT, &rt) } < 0 {
            return Err(err("add default route", iface));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::prefix_mask;

    #[test]
    fn masks() {
        assert_eq!(
            prefix_mask(24),
            "255.255.255.0".parse::<std::net::Ipv4Addr>().unwrap()
        );
        assert_eq!(prefix_mask(0), std::net::Ipv4Addr::UNSPECIFIED);
        assert_eq!(prefix_mask(32), std::net::Ipv4Addr::BROADCAST);
        assert_eq!(
            prefix_mask(30),
            "255.255.255.252".parse::<std::net::Ipv4Addr>().unwrap()
        );
    }
}
