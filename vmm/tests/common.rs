//! Shared helpers for the Linux-boot tests (`vm_*`): artifact lookup with clear failures.
#![allow(dead_code)]

use std::path::PathBuf;

/// Path from an artifact variable; panics with the reason when unset or missing.
pub fn artifact(var: &str) -> PathBuf {
    let v = std::env::var_os(var).unwrap_or_else(|| {
        panic!("{var} is not set: build the guest artifacts with `eval \"$(harness/artifacts.sh)\"` or run harness/run-vm-tests.sh")
    });
    let p = PathBuf::from(v);
    assert!(p.is_file(), "{var}={} does not exist", p.display());
    p
}

/// Panics unless /dev/kvm can be opened.
pub fn require_kvm() {
    if let Err(e) = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        panic!(
            "this test needs /dev/kvm with hardware virtualization (use harness/run-vm-tests.sh): {e}"
        );
    }
}

/// A per-test scratch directory.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hearth-vm-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
