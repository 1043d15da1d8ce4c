//! VMM memory overhead per VM (not a timing, so a plain `harness = false` bench).
//!
//! Definition, hearth: the bench process's resident memory outside guest RAM, after a VM's agent
//! answered, minus the same before the VM was started; i.e. what one more VM costs the host
//! process besides the guest pages it touched (vCPU/event-loop threads and their stacks, device
//! state, vsock buffers, KVM run structures mapped into the process, heap). Measured for
//! `HEARTH_BENCH_VMS` (default 3) VMs alive at once, each booted after the previous one was
//! measured, so the per-VM increments are visible; the first also pays one-time costs.
//! QEMU, for comparison: the QEMU process's resident memory outside its guest RAM mapping
//! (the largest mapping, >= the guest size), for one VM. Both in RSS and PSS (PSS splits shared
//! library pages among the processes that map them). Kernel-side memory (KVM's page tables,
//! vhost threads) is counted for neither. Neither is the root filesystem's page cache: hearth
//! reads a read-only disk from a shared mapping of its image (`hearth_vmm::file_map`), whose
//! resident pages are the file's page cache, there whichever way a VMM reads it (QEMU's `preadv`
//! fills the same pages without mapping them); its resident size is printed on its own.
//!
//! `cargo bench --bench memory` (see `harness/run-benches.sh`).

mod support;

use support::{MEMORY_MIB, Which, boot, guest_cid, median, report, require, runtime};

/// (rss_kib, pss_kib) summed over the mappings of `smaps` that `keep(start, end, path)` accepts
/// (`path`: the mapped file, empty for anonymous memory).
fn smaps_sum(pid: &str, keep: impl Fn(u64, u64, &str) -> bool) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/smaps: {e}"));
    let (mut rss, mut pss) = (0, 0);
    let mut counted = false;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        if let Some((a, b)) = first.split_once('-')
            && let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16))
        {
            let path = words.nth(4).unwrap_or("");
            counted = keep(a, b, path);
            continue;
        }
        if !counted {
            continue;
        }
        let value = words
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        match first {
            "Rss:" => rss += value,
            "Pss:" => pss += value,
            _ => {}
        }
    }
    (rss, pss)
}

fn outside(ranges: &[(u64, u64)]) -> impl Fn(u64, u64) -> bool + '_ {
    move |a, b| !ranges.iter().any(|&(s, len)| a < s + len && s < b)
}

/// The root filesystem image's path as it appears in smaps.
fn rootfs_path() -> String {
    let path = std::env::var_os("HEARTH_ROOTFS").unwrap_or_default();
    std::fs::canonicalize(&path)
        .unwrap_or_else(|_| path.into())
        .to_string_lossy()
        .into_owned()
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let vms: usize = std::env::var("HEARTH_BENCH_VMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    require(Which::Hearth);
    let rt = runtime();
    let mut guests = Vec::new();
    let mut ram_ranges = Vec::new();
    let rootfs = rootfs_path();
    let overhead = |ram: &[(u64, u64)]| {
        let outside_ram = outside(ram);
        smaps_sum("self", |a, b, path| outside_ram(a, b) && path != rootfs)
    };
    let (mut base_rss, mut base_pss) = overhead(&ram_ranges);
    let (mut rss_inc, mut pss_inc) = (Vec::new(), Vec::new());
    for i in 0..vms {
        let guest = rt.block_on(boot(Which::Hearth, guest_cid(100 + i as u32)));
        let vm = guest.hearth_vm().expect("hearth guest");
        ram_ranges.extend(vm.guest_ram_host_ranges());
        let (guest_rss, _) = smaps_sum("self", |a, b, _| !outside(&ram_ranges)(a, b));
        let (disk_rss, _) = smaps_sum("self", |_, _, path| path == rootfs);
        let (rss, pss) = overhead(&ram_ranges);
        println!(
            "hearth VM {}: process RSS outside guest RAM and the rootfs mappings {rss} KiB (+{} KiB), PSS {pss} KiB (+{} KiB); guest RAM resident (all VMs) {guest_rss} KiB; rootfs page cache mapped (all VMs) {disk_rss} KiB",
            i + 1,
            rss as i64 - base_rss as i64,
            pss as i64 - base_pss as i64
        );
        rss_inc.push((rss as f64 - base_rss as f64) / 1024.0);
        pss_inc.push((pss as f64 - base_pss as f64) / 1024.0);
        (base_rss, base_pss) = (rss, pss);
        guests.push(guest);
    }
    report("vmm_overhead_rss_per_vm", Which::Hearth, "MiB", &rss_inc);
    report("vmm_overhead_pss_per_vm", Which::Hearth, "MiB", &pss_inc);
    for g in guests {
        g.stop();
    }
    idle_check();
    if support::qemu_wanted() {
        require(Which::Qemu);
        let guest = rt.block_on(boot(Which::Qemu, guest_cid(200)));
        let pid = guest.qemu_pid().expect("qemu guest").to_string();
        let ram = largest_mapping(&pid);
        assert!(
            ram.1 - ram.0 >= MEMORY_MIB << 20,
            "no QEMU mapping as large as guest RAM in /proc/{pid}/smaps"
        );
        let (rss, pss) = smaps_sum(&pid, |a, b, _| (a, b) != ram);
        let (total_rss, _) = smaps_sum(&pid, |_, _, _| true);
        println!(
            "qemu: process RSS {total_rss} KiB, outside guest RAM {rss} KiB, PSS outside guest RAM {pss} KiB"
        );
        report(
            "vmm_overhead_rss_per_vm",
            Which::Qemu,
            "MiB",
            &[rss as f64 / 1024.0],
        );
        report(
            "vmm_overhead_pss_per_vm",
            Which::Qemu,
            "MiB",
            &[pss as f64 / 1024.0],
        );
        guest.stop();
    }
    let mut m = rss_inc.clone();
    println!(
        "hearth per-VM RSS overhead median {:.2} MiB",
        median(&mut m)
    );
}

fn largest_mapping(pid: &str) -> (u64, u64) {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/maps: {e}"));
    maps.lines()
        .filter_map(|l| {
            let (a, b) = l.split_whitespace().next()?.split_once('-')?;
            Some((
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            ))
        })
        .max_by_key(|(a, b)| b - a)
        .expect("QEMU has mappings")
}

/// After every VM was stopped: the process's threads and the CPU it burns in 2 s of idleness
/// (should be ~0: nothing of a stopped VM may keep running).
fn idle_check() {
    let cpu_ticks = || {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        // `rest` starts at field 3 (state); utime and stime are fields 14 and 15.
        let f: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| {
            f.get(n - 3)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        field(14) + field(15)
    };
    let threads = std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count());
    let before = cpu_ticks();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let used = cpu_ticks() - before;
    println!("after stopping every VM: {threads} threads, {used} clock ticks of CPU in 2 s idle");
}
