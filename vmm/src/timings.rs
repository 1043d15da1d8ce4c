//! Boot-phase timings: process start → VM created → kernel entry → agent ready.

use std::time::{Duration, Instant};

use crate::vstate::control::Stamps;

/// How long each boot phase took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BootTimings {
    /// From process start (per /proc/self/stat, 10 ms resolution) to the builder's `start()`.
    pub process_start_to_build: Option<Duration>,
    /// From `start()` until KVM VM, memory, kernel and devices were set up.
    pub build_to_vm_created: Option<Duration>,
    /// Part of `build_to_vm_created`: from `start()` until guest RAM was mapped and the KVM VM
    /// created.
    pub build_to_kvm_vm: Option<Duration>,
    /// Part of `build_to_vm_created`: loading the kernel image, on a thread of its own that
    /// runs while the KVM VM and the devices are set up (so it overlaps `build_to_kvm_vm`).
    pub kernel_load: Option<Duration>,
    /// From VM creation to vCPU 0's first KVM_RUN.
    pub vm_created_to_kernel_entry: Option<Duration>,
    /// From kernel entry to the agent's ready signal.
    pub kernel_entry_to_agent_ready: Option<Duration>,
    /// From `start()` to the agent's ready signal.
    pub build_to_agent_ready: Option<Duration>,
}

impl BootTimings {
    /// Computes the phases from the build start and the recorded stamps.
    pub fn from_stamps(process_start: Option<Instant>, build: Instant, s: &Stamps) -> Self {
        let between = |a: Option<Instant>, b: Option<Instant>| match (a, b) {
            (Some(a), Some(b)) => Some(b.saturating_duration_since(a)),
            _ => None,
        };
        Self {
            process_start_to_build: between(process_start, Some(build)),
            build_to_vm_created: between(Some(build), s.vm_created),
            build_to_kvm_vm: between(Some(build), s.kvm_vm_created),
            kernel_load: between(s.kernel_load_start, s.kernel_loaded),
            vm_created_to_kernel_entry: between(s.vm_created, s.kernel_entry),
            kernel_entry_to_agent_ready: between(s.kernel_entry, s.agent_ready),
            build_to_agent_ready: between(Some(build), s.agent_ready),
        }
    }
}

impl std::fmt::Display for BootTimings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Option<Duration>| match d {
            Some(d) => format!("{:.1} ms", d.as_secs_f64() * 1000.0),
            None => "-".into(),
        };
        write!(
            f,
            "process start→build {}, build→VM created {} (of it RAM + KVM VM {}, kernel load {}), VM created→kernel entry {}, kernel entry→agent ready {}, build→agent ready {}",
            ms(self.process_start_to_build),
            ms(self.build_to_vm_created),
            ms(self.build_to_kvm_vm),
            ms(self.kernel_load),
            ms(self.vm_created_to_kernel_entry),
            ms(self.kernel_entry_to_agent_ready),
            ms(self.build_to_agent_ready)
        )
    }
}

/// When this process started, from /proc/self/stat (field 22, clock ticks since boot) and
/// CLOCK_BOOTTIME.
pub fn process_start() -> Option<Instant> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may contain spaces; fields after it start past the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let start_ticks: u64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        return None;
    }
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
        return None;
    }
    let now = Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
    let started = Duration::from_secs_f64(start_ticks as f64 / hz as f64);
    Instant::now().checked_sub(now.checked_sub(started)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_start_is_in_the_past() {
        let s = process_start().expect("process start");
        assert!(s <= Instant::now());
        assert!(Instant::now() - s < Duration::from_secs(24 * 3600));
    }

    #[test]
    fn phases_are_differences() {
        let b = Instant::now();
        let stamps = Stamps {
            kvm_vm_created: Some(b + Duration::from_millis(1)),
            kernel_load_start: Some(b + Duration::from_millis(2)),
            kernel_loaded: Some(b + Duration::from_millis(4)),
            vm_created: Some(b + Duration::from_millis(5)),
            kernel_entry: Some(b + Duration::from_millis(7)),
            agent_ready: None,
        };
        let t = BootTimings::from_stamps(None, b, &stamps);
        assert_eq!(t.build_to_vm_created, Some(Duration::from_millis(5)));
        assert_eq!(t.build_to_kvm_vm, Some(Duration::from_millis(1)));
        assert_eq!(t.kernel_load, Some(Duration::from_millis(2)));
        assert_eq!(t.vm_created_to_kernel_entry, Some(Duration::from_millis(2)));
        assert_eq!(t.kernel_entry_to_agent_ready, None);
        assert!(t.to_string().contains("kernel entry→agent ready -"));
    }
}
