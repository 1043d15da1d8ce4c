//! PID 1 duties: the overlay root, the standard mounts, the workspace disk,
//! resolv.conf and powering off.

use std::ffi::CString;
use std::path::Path;

/// A failed init step.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("mounting {fstype} on {target}: {source}")]
    Mount {
        fstype: String,
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{step}: {source}")]
    Step {
        step: String,
        #[source]
        source: std::io::Error,
    },
    #[error("path contains a NUL byte: {0:?}")]
    Nul(String),
}

fn cstr(s: &str) -> Result<CString, InitError> {
    CString::new(s).map_err(|_| InitError::Nul(s.into()))
}

fn step(step: impl Into<String>) -> impl FnOnce(std::io::Error) -> InitError {
    let step = step.into();
    move |source| InitError::Step { step, source }
}

/// mount(2) with string arguments.
pub fn mount(
    src: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), InitError> {
    let (csrc, ctarget, cfs) = (cstr(src)?, cstr(target)?, cstr(fstype)?);
    let cdata = data.map(cstr).transpose()?;
    let data_ptr = cdata
        .as_ref()
        .map_or(std::ptr::null(), |d| d.as_ptr().cast());
    // SAFETY: all pointers are valid NUL-terminated strings (or null for
    // data) that live until mount returns.
    let rc = unsafe {
        libc::mount(
            csrc.as_ptr(),
            ctarget.as_ptr(),
            cfs.as_ptr(),
            flags,
            data_ptr,
        )
    };
    if rc != 0 {
        return Err(InitError::Mount {
            fstype: fstype.into(),
            target: target.into(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn ensure_dir(path: &str) {
    if !Path::new(path).is_dir()
        && let Err(e) = std::fs::create_dir_all(path)
    {
        tracing::warn!(path, error = %e, "cannot create mount point");
    }
}

/// Builds an overlayfs root (read-only lower = current root, tmpfs upper)
/// and pivots into it. Must run before anything else is mounted.
pub fn overlay_root() -> Result<(), InitError> {
    let base = ["/run", "/tmp", "/mnt"]
        .into_iter()
        .find(|p| Path::new(p).is_dir())
        .ok_or_else(|| InitError::Step {
            step: "overlay root".into(),
            source: std::io::Error::other("none of /run, /tmp, /mnt exists to stage the overlay"),
        })?;
    mount("tmpfs", base, "tmpfs", 0, Some("mode=0755"))?;
    for d in ["lower", "upper", "work", "root"] {
        std::fs::create_dir(format!("{base}/{d}")).map_err(step(format!("creating {base}/{d}")))?;
    }
    let lower = format!("{base}/lower");
    mount("/", &lower, "", libc::MS_BIND, None)?;
    let opts = format!("lowerdir={lower},upperdir={base}/upper,workdir={base}/work");
    let root = format!("{base}/root");
    mount("overlay", &root, "overlay", 0, Some(&opts))?;
    std::fs::create_dir_all(format!("{root}/.oldroot")).map_err(step("creating .oldroot"))?;
    std::env::set_current_dir(&root).map_err(step("chdir to new root"))?;
    let (new, old) = (cstr(".")?, cstr(".oldroot")?);
    // SAFETY: pivot_root takes two valid NUL-terminated paths.
    if unsafe { libc::syscall(libc::SYS_pivot_root, new.as_ptr(), old.as_ptr()) } != 0 {
        return Err(step("pivot_root")(std::io::Error::last_os_error()));
    }
    let dot = cstr(".")?;
    // SAFETY: chroot takes a valid NUL-terminated path.
    if unsafe { libc::chroot(dot.as_ptr()) } != 0 {
        return Err(step("chroot")(std::io::Error::last_os_error()));
    }
    std::env::set_current_dir("/").map_err(step("chdir /"))?;
    let oldroot = cstr("/.oldroot")?;
    // SAFETY: umount2 takes a valid NUL-terminated path.
    if unsafe { libc::umount2(oldroot.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(step("detaching old root")(std::io::Error::last_os_error()));
    }
    let _ = std::fs::remove_dir("/.oldroot");
    Ok(())
}

/// Mounts /proc, /sys, /dev (+pts, shm), /tmp and /run. Failures are logged
/// and skipped: a missing /dev/pts must not keep the agent from serving.
pub fn standard_mounts() {
    let nosuid = libc::MS_NOSUID | libc::MS_NODEV;
    let table: [(&str, &str, &str, libc::c_ulong, Option<&str>); 7] = [
        ("proc", "/proc", "proc", nosuid | libc::MS_NOEXEC, None),
        ("sysfs", "/sys", "sysfs", nosuid | libc::MS_NOEXEC, None),
        (
            "devtmpfs",
            "/dev",
            "devtmpfs",
            libc::MS_NOSUID,
            Some("mode=0755"),
        ),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            libc::MS_NOSUID | libc::MS_NOEXEC,
            Some("mode=0620,ptmxmode=0666"),
        ),
        ("tmpfs", "/dev/shm", "tmpfs", nosuid, Some("mode=1777")),
        ("tmpfs", "/tmp", "tmpfs", nosuid, Some("mode=1777")),
        ("tmpfs", "/run", "tmpfs", nosuid, Some("mode=0755")),
    ];
    for (src, target, fstype, flags, data) in table {
        ensure_dir(target);
        match mount(src, target, fstype, flags, data) {
            Ok(()) => {}
            Err(InitError::Mount { source, .. }) if source.raw_os_error() == Some(libc::EBUSY) => {
                tracing::debug!(target, "already mounted");
            }
            Err(e) => tracing::warn!(error = %e, "mount failed"),
        }
    }
}

/// Mounts the ext4 workspace device at /work, waiting briefly for it to appear.
pub fn mount_workspace(device: &str) -> Result<(), InitError> {
    for _ in 0..50 {
        if Path::new(device).exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    ensure_dir("/work");
    mount(device, "/work", "ext4", 0, None)
}

/// Writes /etc/resolv.conf with one nameserver.
pub fn write_resolv_conf(dns: std::net::Ipv4Addr) -> Result<(), InitError> {
    std::fs::write("/etc/resolv.conf", format!("nameserver {dns}\n"))
        .map_err(step("writing /etc/resolv.conf"))
}

/// Flushes filesystems and powers the machine off. Only returns on failure.
pub fn power_off() -> InitError {
    // SAFETY: sync and reboot have no memory-safety preconditions.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    step("power off")(std::io::Error::last_os_error())
}
