//! A tap device: the host end of a VM's network link. Opened non-persistent, so the interface
//! exists exactly as long as its file descriptor: when the VM (or the whole process, even by
//! SIGKILL) goes away, the kernel removes the interface and whatever addresses and routes it
//! had. Frames carry no packet-information prefix and no virtio-net header (`IFF_NO_PI`, no
//! `IFF_VNET_HDR`): the device strips and adds those, so no guest-chosen offload request ever
//! reaches the host kernel.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// `_IOW('T', 202, int)`, from `<linux/if_tun.h>`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
/// Longest interface name, without the NUL (`IFNAMSIZ` - 1).
pub const MAX_NAME_LEN: usize = 15;

/// Why a tap could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name is empty, too long or holds a byte an interface name cannot.
    #[error("bad tap name {0:?}: 1-15 bytes of [A-Za-z0-9_.-]")]
    BadName(String),
    /// `/dev/net/tun` could not be opened (no `tun` module, or no access).
    #[error("opening /dev/net/tun: {0}")]
    OpenTun(#[source] io::Error),
    /// TUNSETIFF failed: EBUSY when another process holds a tap of that name, EPERM without
    /// CAP_NET_ADMIN.
    #[error("creating tap {name}: {source}")]
    Create {
        /// The name asked for.
        name: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// An open, non-blocking tap device.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    name: String,
}

/// Whether `name` is a usable interface name (what `ip link` accepts, minus the odd bytes).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

impl Tap {
    /// Creates (or attaches to an unused persistent) tap `name` in the calling thread's network
    /// namespace.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        if !valid_name(name) {
            return Err(TapError::BadName(name.into()));
        }
        const TUN: &CStr = c"/dev/net/tun";
        // SAFETY: the path is a NUL-terminated constant; the result is checked.
        let raw = unsafe {
            libc::open(
                TUN.as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(TapError::OpenTun(io::Error::last_os_error()));
        }
        // SAFETY: `raw` was just returned by open(2) and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: ifreq is a plain C struct/union for which all-zero is valid.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        req.ifr_ifru.ifru_flags = IFF_TAP | IFF_NO_PI;
        // SAFETY: TUNSETIFF reads and updates the ifreq, which lives across the call; the name
        // is NUL-terminated (at most 15 bytes were copied into the 16-byte zeroed array).
        if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, &mut req) } < 0 {
            return Err(TapError::Create {
                name: name.into(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(Tap {
            fd,
            name: name.into(),
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one frame; `WouldBlock` when none is queued.
    pub fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the call's duration.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Writes one frame; `WouldBlock` when the interface's queue is full.
    pub fn write_frame(&self, frame: &[u8]) -> io::Result<usize> {
        // SAFETY: `frame` is valid for reads of `frame.len()` bytes for the call's duration.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_any_system_call() {
        for bad in ["", "sixteen-bytes-xx", "a b", "tap/0", "tap\n"] {
            assert!(
                matches!(Tap::open(bad), Err(TapError::BadName(_))),
                "{bad:?}"
            );
        }
        assert!(valid_name("hth-0.a_b"));
        assert!(valid_name("fifteen-bytes-x"));
    }
}
