//! Boots one guest and prints the boot-phase timings and the console log: the tool used to find
//! where guest boot time goes (see BENCHMARKS.md). Needs /dev/kvm that boots standard guests.
//!
//! ```sh
//! HEARTH_KERNEL=... HEARTH_ROOTFS=... cargo run -p hearth-vmm --example boot_timeline -- \
//!     [--mem MIB] [--runs N] [--probe-zeroing] [--trace-exits] [--exit-timeline] [--profile]
//!     [CMDLINE EXTRA...]
//! ```
//!
//! With `HEARTH_AGENT_LOG=debug` among the extra parameters it prints the agent's side of each
//! boot too: when (since the kernel's start) the agent started, had set up the guest and listened.
//!
//! With debugfs mounted (`mount -t debugfs none /sys/kernel/debug`) it also prints the VM's
//! KVM counters (exits by kind, page faults) at agent ready.
//!
//! `--trace-exits` records the host kernel's `kvm:kvm_exit`/`kvm:kvm_entry` tracepoints from
//! the start of each boot to agent ready (needs tracefs: `mount -t tracefs none
//! /sys/kernel/tracing`) and prints the exits by reason with the host's time for them, the
//! guest's own run time, and the guest addresses that exited most (`exit_trace.rs`).
//! `--exit-timeline` (implies `--trace-exits`) also prints the boot as a timeline of the guest
//! functions that exited: when the guest reached each stage, also before its clock started.
//! `--profile` (implies `--trace-exits`) prints, after the last run, where the guest was at the
//! exits for the host's interrupts of all runs: a sampling profile of the guest's own work.
//!
//! `--probe-zeroing` measures, before the first boot and twice after every boot, what putting
//! the kernel's `PT_LOAD` segments into fresh memory mapped like guest RAM costs this process,
//! split into the host kernel's first-touch zeroing (`MADV_POPULATE_WRITE`) and the copy
//! (`pread`, and the load's own copy from a mapping of the file): under QEMU's TCG the first
//! zeroing of pages a guest had run code from is many times slower (BENCHMARKS.md, "Recycled
//! pages"), and `pread` copies a byte per emulated `rep movsb` step ("Copies from mappings").

use std::time::Duration;

use hearth_vmm::VmBuilder;
use hearth_vmm::arch::x86_64::symbols::KernelSymbols;

mod exit_trace;

fn main() {
    let kernel = std::env::var_os("HEARTH_KERNEL").expect("HEARTH_KERNEL is not set");
    let rootfs = std::env::var_os("HEARTH_ROOTFS").expect("HEARTH_ROOTFS is not set");
    let mut mem = 512;
    let mut runs = 1;
    let mut probe = false;
    let mut trace_exits = false;
    let mut timeline = false;
    let mut profile = false;
    let mut samples = Vec::new();
    let mut extra = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--mem" => mem = args.next().and_then(|v| v.parse().ok()).expect("--mem MIB"),
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--probe-zeroing" => probe = true,
            "--trace-exits" => trace_exits = true,
            "--exit-timeline" => {
                trace_exits = true;
                timeline = true;
            }
            "--profile" => {
                trace_exits = true;
                profile = true;
            }
            _ => extra.push(a),
        }
    }
    let log = std::env::temp_dir().join("hearth-boot-timeline.log");
    if probe {
        println!("before the first boot: {}", zeroing_probe(&kernel));
    }
    // Kernel function names for the exit sites (none for a bzImage or a stripped vmlinux).
    let symbols = trace_exits
        .then(|| KernelSymbols::load(std::path::Path::new(&kernel)).ok())
        .flatten();
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
        let trace = trace_exits.then(exit_trace::ExitTrace::start);
        let mut vm = b.start().expect("VM start");
        let ready = vm.wait_ready(Duration::from_secs(240));
        match trace.map(|t| t.and_then(exit_trace::ExitTrace::finish)) {
            Some(Ok(text)) => {
                let summary = exit_trace::ExitSummary::parse(&text);
                for line in summary.report(symbols.as_ref(), 25).lines() {
                    println!("run {run}: {line}");
                }
                if profile {
                    samples.extend(summary.interrupt_samples(symbols.as_ref()));
                }
                if timeline {
                    for line in summary.timeline(symbols.as_ref()).lines() {
                        println!("run {run}: timeline: {line}");
                    }
                }
            }
            Some(Err(e)) => println!("run {run}: no exit trace: {e}"),
            None => {}
        }
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
        if probe {
            for i in 1..=2 {
                println!("run {run}: zeroing probe {i}: {}", zeroing_probe(&kernel));
            }
        }
    }
    if profile {
        print!(
            "--- guest profile (interrupt exits, all runs) ---\n{}",
            exit_trace::profile(&samples, 60)
        );
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

/// `(file offset, guest-physical address, size in the file)` of the ELF64 `PT_LOAD` segments.
fn pt_loads(file: &std::fs::File) -> Vec<(u64, u64, usize)> {
    use linux_loader::elf::{Elf64_Ehdr, Elf64_Phdr, PT_LOAD};
    use std::os::unix::fs::FileExt;
    use vm_memory::ByteValued;
    let mut eh = Elf64_Ehdr::default();
    file.read_exact_at(eh.as_mut_slice(), 0)
        .expect("ELF header");
    assert_eq!(
        &eh.e_ident[..4],
        b"\x7fELF",
        "HEARTH_KERNEL is not an ELF vmlinux"
    );
    (0..u64::from(eh.e_phnum))
        .filter_map(|i| {
            let mut ph = Elf64_Phdr::default();
            let at = eh.e_phoff + i * u64::from(eh.e_phentsize);
            file.read_exact_at(ph.as_mut_slice(), at)
                .expect("program header");
            (ph.p_type == PT_LOAD).then_some((ph.p_offset, ph.p_paddr, ph.p_filesz as usize))
        })
        .collect()
}

/// Maps 512 MiB the way guest RAM is mapped (`GuestRam`: 2 MiB-aligned, `MADV_HUGEPAGE`), then
/// for the kernel's `PT_LOAD` ranges times the host kernel's first-touch zeroing
/// (`MADV_POPULATE_WRITE`), one `pread` copy into the now resident pages, a second one, and the
/// copy the kernel load makes (`hearth_vmm::file_map`: 8-byte words from a mapping of the file,
/// the mapping's page faults included).
fn zeroing_probe(kernel: &std::ffi::OsStr) -> String {
    use std::os::unix::io::AsRawFd;
    use std::time::Instant;
    let file = std::fs::File::open(kernel).expect("open HEARTH_KERNEL");
    let size = 512usize << 20;
    let ram = hearth_vmm::vstate::memory::GuestRam::new(&[(vm_memory::GuestAddress(0), size)])
        .expect("mapping 512 MiB like guest RAM");
    let base = ram.host_ranges()[0].0 as usize;
    let (mut zero, mut copy, mut again, mut mapped, mut bytes) = (0.0, 0.0, 0.0, 0.0, 0);
    for (off, paddr, len) in pt_loads(&file) {
        assert!(paddr as usize + len <= size, "segment outside 512 MiB");
        let dst = base + paddr as usize;
        let page = dst & !4095;
        let span = (dst + len).next_multiple_of(4096) - page;
        let t0 = Instant::now();
        // SAFETY: every address used below lies in [base, base + size), inside `ram`'s mapping,
        // which lives until the end of the function.
        let populated = unsafe { libc::madvise(page as *mut _, span, libc::MADV_POPULATE_WRITE) };
        assert_eq!(populated, 0, "MADV_POPULATE_WRITE (Linux 5.14+)");
        let t1 = Instant::now();
        let read = || {
            // SAFETY: as above; the kernel file is read into [dst, dst + len).
            let n = unsafe { libc::pread(file.as_raw_fd(), dst as *mut _, len, off as i64) };
            assert_eq!(n, len as isize, "short pread");
        };
        read();
        let t2 = Instant::now();
        read();
        let t3 = Instant::now();
        let map = hearth_vmm::file_map::FileMap::new(&file, off, len)
            .expect("mapping the kernel")
            .expect("segment inside the file");
        // SAFETY: as above; the mapping holds `len` bytes, and guest RAM is not a file mapping.
        unsafe { hearth_vmm::file_map::copy_words(dst as *mut u8, map.as_ptr(), len) };
        drop(map);
        zero += (t1 - t0).as_secs_f64() * 1000.0;
        copy += (t2 - t1).as_secs_f64() * 1000.0;
        again += (t3 - t2).as_secs_f64() * 1000.0;
        mapped += t3.elapsed().as_secs_f64() * 1000.0;
        bytes += len;
    }
    // Unmapped here: no clone of its memory was taken.
    drop(ram);
    format!(
        "{bytes} bytes into fresh memory: zeroing on first touch {zero:.0} ms, pread copy {copy:.0} ms, pread copy again {again:.0} ms, copy from a mapping {mapped:.0} ms"
    )
}
