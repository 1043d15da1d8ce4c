//! Exec round trip: `true` run by the agent in an already booted guest, from sending the exec
//! request to receiving its exit status, over hearth's in-process vsock and over QEMU's
//! vhost-vsock (same kernel, rootfs, memory, vCPUs and kernel parameters).
//!
//! `cargo bench --bench exec` (see `harness/run-benches.sh`; `HEARTH_BENCH_QEMU=0`: hearth only).

mod support;

use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use hearth_agent::proto::{ExecSpec, ExitStatus};

use support::{Which, boot, guest_cid, report, require, runtime};

fn exec_true(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("exec_round_trip_true");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5));
    for which in Which::all() {
        require(which);
        let guest = rt.block_on(boot(which, guest_cid(1)));
        let mut samples = Vec::new();
        group.bench_function(which.name(), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    let one = Instant::now();
                    let out = guest.call(
                        &rt,
                        "exec true",
                        guest.client.exec_collect(ExecSpec::argv(["true"])),
                    );
                    assert_eq!(out.info.status, ExitStatus::Code(0));
                    samples.push(one.elapsed().as_secs_f64() * 1000.0);
                }
                start.elapsed()
            })
        });
        report("exec_round_trip_true", which, "ms", &samples);
        guest.stop();
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().nresamples(1000).without_plots();
    targets = exec_true
}
criterion_main!(benches);
