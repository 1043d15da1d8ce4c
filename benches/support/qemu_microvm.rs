//! The QEMU that hearth is compared against, in one place for the benches and the reference VM
//! test (`tests/vm_qemu_reference.rs` includes this file): Debian's `qemu-system-x86_64`,
//! `-M microvm` with KVM and without ACPI, one vCPU, the rootfs read-only on a
//! `virtio-blk-device`, a `vhost-vsock-device`, the serial console into a file.

use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};

/// What one QEMU guest gets.
pub struct MicrovmGuest<'a> {
    pub kernel: &'a Path,
    pub rootfs: &'a Path,
    pub memory_mib: u64,
    pub vsock_cid: u32,
    /// The serial console's file.
    pub console: &'a Path,
    /// The kernel command line.
    pub append: &'a str,
}

/// `HEARTH_QEMU`, else `qemu-system-x86_64` from PATH.
pub fn qemu_binary() -> String {
    std::env::var("HEARTH_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".to_string())
}

/// The QEMU command for `guest`, its stdin and stdout closed and its stderr into `stderr`.
pub fn microvm_command(guest: &MicrovmGuest<'_>, stderr: File) -> Command {
    let mut cmd = Command::new(qemu_binary());
    cmd.args([
        "-M",
        "microvm,accel=kvm,acpi=off",
        "-cpu",
        "host",
        "-smp",
        "1",
    ])
    .arg("-m")
    .arg(guest.memory_mib.to_string())
    .args([
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ])
    .arg("-serial")
    .arg(format!("file:{}", guest.console.display()))
    .arg("-kernel")
    .arg(guest.kernel)
    .arg("-drive")
    .arg(format!(
        "id=root,file={},format=raw,if=none,readonly=on",
        guest.rootfs.display()
    ))
    .args(["-device", "virtio-blk-device,drive=root"])
    .arg("-device")
    .arg(format!("vhost-vsock-device,guest-cid={}", guest.vsock_cid))
    .arg("-append")
    .arg(guest.append)
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(stderr);
    cmd
}
