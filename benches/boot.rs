//! Cold boot to agent ready: from the VMM's start (hearth: `VmBuilder::start()` in this process;
//! QEMU: spawning `qemu-system-x86_64`) to the first completed agent handshake over vsock. Same
//! kernel (HEARTH_KERNEL, PVH vmlinux), Debian rootfs (HEARTH_ROOTFS, read-only), 1 vCPU,
//! 512 MiB, same kernel parameters for both. One guest at a time.
//!
//! `cargo bench --bench boot` (needs KVM that boots standard guests: use
//! `harness/run-benches.sh` on this project's kvm_pvm hosts). `HEARTH_BENCH_QEMU=0` benches
//! hearth alone; `HEARTH_BENCH_DMESG=1` prints the guest kernel log of one boot per VMM (the
//! boot timeline without serial-console cost, for finding where boot time goes).

mod support;

use std::time::Duration;

use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use hearth_agent::proto::ExecSpec;

use support::{Which, boot, guest_cid, report, require, runtime};

fn cold_boot(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("cold_boot_to_agent_ready");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_millis(1));
    for which in Which::all() {
        require(which);
        let mut samples = Vec::new();
        let mut seq = 0;
        if std::env::var("HEARTH_BENCH_DMESG").is_ok_and(|v| v == "1") {
            rt.block_on(print_dmesg(which));
        }
        group.bench_function(which.name(), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    seq += 1;
                    let guest = rt.block_on(boot(which, guest_cid(seq)));
                    total += guest.boot;
                    samples.push(guest.boot.as_secs_f64() * 1000.0);
                    guest.stop();
                }
                total
            })
        });
        report("cold_boot_to_agent_ready", which, "ms", &samples);
    }
    group.finish();
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
