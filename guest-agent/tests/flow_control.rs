//! Large output without loss, and bounded memory on both sides thanks to the
//! per-exec credit window.

mod common;

use common::{TestAgent, proc_status_kib};
use hearth_agent::client::ExecEvent;
use hearth_agent::proto::{DEFAULT_WINDOW, ExecSpec, ExitStatus, OutputStream};
use std::time::{Duration, Instant};

/// Bytes a process has written so far (from /proc/PID/io).
fn bytes_written(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("wchar: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn hundred_mib_of_output_no_loss_bounded_memory() {
    let agent = TestAgent::start();
    let client = agent.client().await;
    let our_hwm_before = proc_status_kib(std::process::id(), "VmHWM");
    // 11_650_844 fixed-width lines of 9 bytes = 104_857_596 bytes (~100 MiB),
    // each line distinct, so a lost, duplicated or reordered chunk is detected.
    let lines: u64 = 11_650_844;
    let mut stream = client
        .exec(ExecSpec::argv(["seq", "-w", "1", &lines.to_string()]))
        .await
        .unwrap();
    let started = Instant::now();
    let (mut next_expected, mut total, mut partial) = (1u64, 0u64, Vec::<u8>::new());
    let info = loop {
        match stream.next().await.unwrap().unwrap() {
            ExecEvent::Started { .. } => {}
            ExecEvent::Output {
                stream: OutputStream::Stdout,
                data,
            } => {
                total += data.len() as u64;
                partial.extend_from_slice(&data);
                let mut consumed = 0;
                for line in partial.split_inclusive(|b| *b == b'\n') {
                    if line.last() != Some(&b'\n') {
                        break;
                    }
                    let n: u64 = std::str::from_utf8(&line[..line.len() - 1])
                        .unwrap()
                        .parse()
                        .unwrap();
                    assert_eq!(n, next_expected, "line out of order or lost");
                    next_expected += 1;
                    consumed += line.len();
                }
                partial.drain(..consumed);
            }
            ExecEvent::Output {
                stream: OutputStream::Stderr,
                data,
            } => {
                panic!("unexpected stderr {:?}", String::from_utf8_lossy(&data))
            }
            ExecEvent::Exited(info) => break info,
        }
    };
    let elapsed = started.elapsed();
    assert_eq!(info.status, ExitStatus::Code(0));
    assert!(partial.is_empty());
    assert_eq!(next_expected, lines + 1);
    assert_eq!(total, lines * 9);
    let agent_hwm = proc_status_kib(agent.pid(), "VmHWM");
    let our_hwm_after = proc_status_kib(std::process::id(), "VmHWM");
    eprintln!(
        "100 MiB: {:.2}s ({:.0} MiB/s); agent VmHWM {} KiB; test process VmHWM {} -> {} KiB",
        elapsed.as_secs_f64(),
        total as f64 / 1048576.0 / elapsed.as_secs_f64(),
        agent_hwm,
        our_hwm_before,
        our_hwm_after
    );
    assert!(
        agent_hwm < 48 * 1024,
        "agent peak RSS {agent_hwm} KiB is not bounded"
    );
    assert!(
        our_hwm_after.saturating_sub(our_hwm_before) < 48 * 1024,
        "host client peak RSS grew by {} KiB",
        our_hwm_after - our_hwm_before
    );
}

#[tokio::test]
async fn unread_output_stops_the_producer() {
    let agent = TestAgent::start();
    let client = agent.client().await;
    let size: u64 = 64 * 1024 * 1024;
    let mut stream = client
        .exec(ExecSpec::argv([
            "head",
            "-c",
            &size.to_string(),
            "/dev/zero",
        ]))
        .await
        .unwrap();
    let pid = match stream.next().await.unwrap().unwrap() {
        ExecEvent::Started { pid } => pid,
        other => panic!("unexpected {other:?}"),
    };
    let mut total = 0u64;
    if let ExecEvent::Output { data, .. } = stream.next().await.unwrap().unwrap() {
        total += data.len() as u64;
    }
    // Stop reading: the agent may only send what the window allows, then it
    // stops reading the pipe and the child blocks in write().
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let written = bytes_written(pid);
    let limit = u64::from(DEFAULT_WINDOW) + 1024 * 1024; // window + pipe buffer + a chunk in flight
    eprintln!("paused consumer: child wrote {written} bytes of {size} (limit {limit})");
    assert!(
        written <= limit,
        "child wrote {written} bytes while the host was not reading"
    );
    assert!(written < size);
    // Count the rest without keeping it (the other test measures our RSS).
    let info = loop {
        match stream.next().await.unwrap().unwrap() {
            ExecEvent::Output { data, .. } => total += data.len() as u64,
            ExecEvent::Exited(info) => break info,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(total, size);
    assert_eq!(info.status, ExitStatus::Code(0));
}

/// A child that exits with output still in its pipe while the host holds back credit for longer
/// than the agent's drain-idle limit (2 s): all of the output must still arrive. (The idle clock
/// used to keep running while the agent waited for credit, so the moment credit came back the
/// "pipes stayed quiet after exit" timer raced the pending output and could drop it.)
#[tokio::test]
async fn output_left_in_the_pipe_survives_a_slow_consumer() {
    let agent = TestAgent::start();
    let client = agent.client().await;
    let size = 40_000usize; // fits in a pipe, so the child exits before the agent read it all
    let mut spec = ExecSpec::argv(["head", "-c", &size.to_string(), "/dev/zero"]);
    spec.window = hearth_agent::proto::MIN_WINDOW;
    let mut stream = client.exec(spec).await.unwrap();
    // Let the child finish and the agent use up its small window, then wait past the idle limit.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let mut total = 0usize;
    let info = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match stream.next().await.unwrap().unwrap() {
                ExecEvent::Started { .. } => {}
                ExecEvent::Output { data, .. } => total += data.len(),
                ExecEvent::Exited(info) => break info,
            }
        }
    })
    .await
    .expect("exec did not finish");
    assert_eq!(info.status, ExitStatus::Code(0));
    assert_eq!(total, size, "output lost after the child exited");
}
