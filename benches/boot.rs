//! Cold boot to agent ready: from the VMM's start (hearth: `VmBuilder::start()` in this process;
//! QEMU: spawning `qemu-system-x86_64`) to the first completed agent handshake over vsock. Same
//! kernel (HEARTH_KERNEL, PVH vmlinux), Debian rootfs (HEARTH_ROOTFS, read-only), 1 vCPU,
//! 512 MiB, same kernel parameters for both. One guest at a time, the two VMMs' boots
//! interleaved.
//!
//! `cargo bench --bench boot` (needs KVM that boots standard guests: use
//! `harness/run-benches.sh` on this project's kvm_pvm hosts). `HEARTH_BENCH_QEMU=0` benches
//! hearth alone; `HEARTH_BENCH_DMESG=1` prints the guest kernel log of one boot per VMM (the
//! boot timeline without serial-console cost, for finding where boot time goes);
//! `HEARTH_BENCH_GUEST_TIMES=1` also reports, per VMM, when the guest's agent started, had set
//! the guest up and listened, on the guest's own clock (`support::guest_clock`).

mod support;

use std::time::Duration;

use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use hearth_agent::proto::ExecSpec;

use support::{Which, boot, guest_cid, guest_clock, report, require, runtime};

fn cold_boot(c: &mut Criterion) {
    let rt = runtime();
    let vmms = Which::all();
    for &which in &vmms {
        require(which);
        if std::env::var("HEARTH_BENCH_DMESG").is_ok_and(|v| v == "1") {
            rt.block_on(print_dmesg(which));
        }
    }
    let mut group = c.benchmark_group("cold_boot_to_agent_ready");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(20)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_millis(1));
    // hearth and QEMU boots are interleaved (hearth, QEMU, QEMU, hearth, hearth, ...): load
    // swings on the shared host and the outer machine's state hit both VMMs alike. Criterion
    // times hearth's boots; the QEMU boot taken next to each one goes into QEMU's RESULT line.
    let mut samples = vec![Vec::new(); vmms.len()];
    let mut guest_times = vec![Vec::new(); vmms.len()];
    let (mut seq, mut round) = (0, 0);
    group.bench_function(Which::Hearth.name(), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let mut order: Vec<usize> = (0..vmms.len()).collect();
                round += 1;
                if round % 2 == 0 {
                    order.reverse();
                }
                for i in order {
                    seq += 1;
                    let guest = rt.block_on(boot(vmms[i], guest_cid(seq)));
                    if vmms[i] == Which::Hearth {
                        total += guest.boot;
                    }
                    samples[i].push(guest.boot.as_secs_f64() * 1000.0);
                    guest_times[i].extend(guest.guest_times);
                    guest.stop();
                }
            }
            total
        })
    });
    group.finish();
    for (which, s) in vmms.iter().zip(&samples) {
        report("cold_boot_to_agent_ready", *which, "ms", s);
    }
    for (which, t) in vmms.iter().zip(&guest_times) {
        guest_clock::report("cold_boot_to_agent_ready", *which, t);
    }
}

async fn print_dmesg(which: Which) {
    let guest = boot(which, guest_cid(999)).await;
    let out = guest
        .client
        .exec_collect(ExecSpec::argv(["dmesg"]))
        .await
        .expect("dmesg");
    println!(
        "--- {} guest kernel log (boot {:.0} ms) ---\n{}",
        which.name(),
        guest.boot.as_secs_f64() * 1000.0,
        String::from_utf8_lossy(&out.stdout)
    );
    guest.stop();
}

criterion_group! {
    name = benches;
    config = Criterion::default().nresamples(1000).without_plots();
    targets = cold_boot
}
criterion_main!(benches);
