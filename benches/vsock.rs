//! vsock throughput through the agent, both directions, in an already booted guest:
//! - host→guest: a 16 MiB file uploaded (`put_files`, tar stream) into the guest's tmpfs;
//! - guest→host: 16 MiB of stdout (`head -c 16777216 /dev/zero`) collected by the host.
//!
//! These are agent-level numbers (framing, credit, tar, the guest's pipes and tmpfs included),
//! over hearth's in-process vsock and over QEMU's vhost-vsock with the same guest.
//! `cargo bench --bench vsock` (see `harness/run-benches.sh`; `HEARTH_BENCH_QEMU=0`: hearth only).

mod support;

use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use hearth_agent::proto::{ExecSpec, ExitStatus};

use support::{Which, boot, guest_cid, report, require, runtime};

const BYTES: usize = 16 << 20;

fn throughput(c: &mut Criterion) {
    let rt = runtime();
    let local = tempfile::tempdir().expect("tempdir");
    let payload: Vec<u8> = (0..BYTES)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(local.path().join("payload.bin"), &payload).expect("write payload");
    let mut group = c.benchmark_group("vsock_throughput");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_millis(1))
        .throughput(Throughput::Bytes(BYTES as u64));
    for which in Which::all() {
        require(which);
        let guest = rt.block_on(boot(which, guest_cid(2)));
        let client = &guest.client;
        let mut up = Vec::new();
        group.bench_function(format!("host_to_guest/{}", which.name()), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    guest.call(
                        &rt,
                        "put_files",
                        client.put_files(local.path(), "/tmp/bench-upload"),
                    );
                    let d = t.elapsed();
                    total += d;
                    up.push(BYTES as f64 / d.as_secs_f64() / f64::from(1 << 20));
                    let out = guest.call(
                        &rt,
                        "rm",
                        client.exec_collect(ExecSpec::argv(["rm", "-rf", "/tmp/bench-upload"])),
                    );
                    assert_eq!(out.info.status, ExitStatus::Code(0));
                }
                total
            })
        });
        report("vsock_host_to_guest", which, "MiB/s", &up);
        let mut down = Vec::new();
        group.bench_function(format!("guest_to_host/{}", which.name()), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    let out = guest.call(
                        &rt,
                        "exec head",
                        client.exec_collect(ExecSpec::argv([
                            "head",
                            "-c",
                            &BYTES.to_string(),
                            "/dev/zero",
                        ])),
                    );
                    let d = t.elapsed();
                    assert_eq!(out.info.status, ExitStatus::Code(0));
                    assert_eq!(out.stdout.len(), BYTES);
                    total += d;
                    down.push(BYTES as f64 / d.as_secs_f64() / f64::from(1 << 20));
                }
                total
            })
        });
        report("vsock_guest_to_host", which, "MiB/s", &down);
        guest.stop();
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().nresamples(1000).without_plots();
    targets = throughput
}
criterion_main!(benches);
