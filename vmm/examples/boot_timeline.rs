//! Boots one guest and prints the boot-phase timings and the console log: the tool used to find
//! where guest boot time goes (see BENCHMARKS.md). Needs /dev/kvm that boots standard guests.
//!
//! ```sh
//! HEARTH_KERNEL=... HEARTH_ROOTFS=... cargo run -p hearth-vmm --example boot_timeline -- \
//!     [--no-rootfs] [--mem MIB] [--runs N] [CMDLINE EXTRA...]
//! ```
//!
//! With `HEARTH_AGENT_LOG=debug` among the extra parameters it prints the agent's side of each
//! boot too: when (since the kernel's start) the agent started, had set up the guest and listened.
//!
//! With debugfs mounted (`mount -t debugfs none /sys/kernel/debug`) it also prints the VM's
//! KVM counters (exits by kind, page faults) at agent ready.

use std::time::Duration;

use hearth_vmm::VmBuilder;

fn main() {
    let kernel = std::env::var_os("HEARTH_KERNEL").expect("HEARTH_KERNEL is not set");
    let rootfs = std::env::var_os("HEARTH_ROOTFS").expect("HEARTH_ROOTFS is not set");
    let mut mem = 512;
    let mut runs = 1;
    let mut extra = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--mem" => mem = args.next().and_then(|v| v.parse().ok()).expect("--mem MIB"),
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            _ => extra.push(a),
        }
    }
    let log = std::env::temp_dir().join("hearth-boot-timeline.log");
    for run in 0..runs {
        let mut b = VmBuilder::new()
            .kernel(&kernel)
            .rootfs(&rootfs, true)
            .memory_mib(mem)
            .console_log(&log)
            .deadline(Duration::from_secs(300));
        for e in &extra {
            b = b.cmdline_extra(e.clone());
        }
        let mut vm = b.start().expect("VM start");
        let ready = vm.wait_ready(Duration::from_secs(240));
        let ranges: Vec<String> = vm
            .guest_ram_host_ranges()
            .iter()
            .map(|(a, l)| format!("{a:#x}+{l:#x} (mod 2 MiB: {:#x})", a % (2 << 20)))
            .collect();
        println!(
            "run {run}: ready {ready:?}; {}; guest RAM at {}; {}",
            vm.timings(),
            ranges.join(", "),
            anon_huge_kib(&vm.guest_ram_host_ranges())
        );
        if let Some(stats) = kvm_debugfs_stats() {
            println!("run {run}: KVM stats at agent ready: {stats}");
        }
        vm.kill();
        drop(vm);
        // The agent's own timeline (with HEARTH_AGENT_LOG=debug among the kernel parameters).
        let console = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = console.lines().find(|l| l.contains("signalling ready")) {
            println!("run {run}: agent: {}", line.trim());
        }
        println!("run {run}: after the VM was dropped: {}", vm_size());
    }
    println!("--- console of the last run ---");
    print!("{}", std::fs::read_to_string(&log).unwrap_or_default());
}

/// The non-zero KVM debugfs counters of this process's VM (exits by kind, page faults, ...),
/// when debugfs is mounted: exit counts do not depend on how loaded the machine is, timings do.
fn kvm_debugfs_stats() -> Option<String> {
    let prefix = format!("{}-", std::process::id());
    let dir = std::fs::read_dir("/sys/kernel/debug/kvm")
        .ok()?
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().starts_with(&prefix))?
        .path();
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        if let Ok(v) = std::fs::read_to_string(e.path())
            && let Ok(n) = v.trim().parse::<u64>()
            && n != 0
        {
            out.push(format!("{}={n}", e.file_name().to_string_lossy()));
        }
    }
    Some(out.join(" "))
}

/// The process's VmSize line: guest RAM that is not unmapped after a VM shows up here.
fn vm_size() -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmSize:"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// AnonHugePages (KiB) of the smaps entries overlapping `ranges`: whether guest RAM got THP.
fn anon_huge_kib(ranges: &[(u64, u64)]) -> String {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let (mut inside, mut huge, mut rss) = (false, 0u64, 0u64);
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-')
            && let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16))
        {
            inside = ranges.iter().any(|&(s, l)| a < s + l && s < b);
            continue;
        }
        let v = line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        if inside && first == "AnonHugePages:" {
            huge += v;
        }
        if inside && first == "Rss:" {
            rss += v;
        }
    }
    format!("guest RAM resident {rss} KiB, of it in huge pages {huge} KiB")
}
