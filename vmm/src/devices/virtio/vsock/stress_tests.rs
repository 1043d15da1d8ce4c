//! Randomised stress through real virtqueues: a Linux-like guest streams to an irregular host
//! reader that answers with small writes (as the agent client returns credit), looking for lost
//! wake-ups and credit deadlocks between the event loop and the tokio side.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::HOST_BUF_ALLOC;
use super::packet::{Op, PacketHeader};
use super::test_driver::{Harness, guest_hdr};

/// A small deterministic generator (xorshift), so a failure can be replayed by its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn byte_at(offset: usize) -> u8 {
    (offset as u8).wrapping_mul(31).wrapping_add(3)
}

/// The guest's own receive buffer, which Linux also uses to cap the credit it spends.
const GUEST_BUF_ALLOC: u32 = 256 * 1024;
/// The host answers with a small message every this many bytes read.
const ANSWER_EVERY: usize = 256 * 1024;
const ANSWER: &[u8] = &[0x13; 13];

async fn stream_once(seed: u64, total: usize) {
    let mut h = Harness::new();
    let (guest_port, host_port) = (4100, 5100);
    let mut listener = h.handle.listen(host_port).unwrap();
    h.send(guest_hdr(guest_port, host_port, Op::Request), &[]);
    h.recv_until(|hdr, _| Op::from_wire(hdr.op) == Some(Op::Response))
        .await;
    let stream = tokio::time::timeout(Duration::from_secs(5), listener.accept())
        .await
        .unwrap()
        .unwrap();
    let (mut rd, mut wr) = tokio::io::split(stream);
    let reader = tokio::spawn(async move {
        let mut rng = Rng(seed ^ 0x9e37_79b9_7f4a_7c15);
        let (mut got, mut since_answer, mut answers) = (0usize, 0usize, 0usize);
        let mut buf = vec![0u8; 70_000];
        while got < total {
            let want = 1 + rng.below(buf.len() as u64) as usize;
            let n = rd.read(&mut buf[..want]).await.unwrap();
            assert!(n > 0, "EOF after {got} bytes");
            for (i, b) in buf[..n].iter().enumerate() {
                assert_eq!(*b, byte_at(got + i), "corrupt byte at {}", got + i);
            }
            got += n;
            since_answer += n;
            if since_answer >= ANSWER_EVERY {
                since_answer -= ANSWER_EVERY;
                wr.write_all(ANSWER).await.unwrap();
                answers += 1;
            }
            if rng.below(40) == 0 {
                tokio::time::sleep(Duration::from_micros(rng.below(3000))).await;
            }
        }
        (answers, wr)
    });
    // The guest: sends within min(host buf_alloc, its own) minus what is in flight, in packets
    // of random size, and reports what it has received of the host's answers as its fwd_cnt.
    let mut rng = Rng(seed);
    let (mut peer_alloc, mut peer_fwd) = (HOST_BUF_ALLOC, 0u32);
    let (mut sent, mut received) = (0usize, 0usize);
    let mut last_progress = Instant::now();
    let mut payload = vec![0u8; 64 * 1024];
    while sent < total {
        for (hdr, data) in h.recv() {
            assert_ne!(
                Op::from_wire(hdr.op),
                Some(Op::Rst),
                "device reset the guest"
            );
            peer_alloc = hdr.buf_alloc;
            peer_fwd = hdr.fwd_cnt;
            received += data.len();
            last_progress = Instant::now();
        }
        h.reap_tx();
        let in_flight = (sent as u32).wrapping_sub(peer_fwd);
        let credit = peer_alloc.min(GUEST_BUF_ALLOC).saturating_sub(in_flight) as usize;
        let n = credit
            .min(1 + rng.below(64 * 1024) as usize)
            .min(total - sent);
        if n > 0 && h.tx.free_count() >= 2 {
            for (i, b) in payload[..n].iter_mut().enumerate() {
                *b = byte_at(sent + i);
            }
            let mut hdr: PacketHeader = guest_hdr(guest_port, host_port, Op::Rw);
            hdr.len = n as u32;
            hdr.buf_alloc = GUEST_BUF_ALLOC;
            hdr.fwd_cnt = received as u32;
            h.send(hdr, &payload[..n]);
            sent += n;
            last_progress = Instant::now();
        } else {
            if last_progress.elapsed() > Duration::from_secs(10) {
                let state = h.handle.describe(Duration::from_secs(5)).await;
                panic!(
                    "seed {seed}: stalled at {sent} of {total} bytes (credit {credit}, peer \
                     fwd_cnt {peer_fwd})\n{}",
                    state.unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    let (answers, _wr) = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .unwrap_or_else(|_| panic!("seed {seed}: the host reader did not finish"))
        .unwrap();
    assert_eq!(answers, total / ANSWER_EVERY);
    // Every answer reaches the guest too.
    let deadline = Instant::now() + Duration::from_secs(10);
    while received < answers * ANSWER.len() {
        assert!(Instant::now() < deadline, "seed {seed}: host answers stuck");
        for (_, data) in h.recv() {
            received += data.len();
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn irregular_reader_and_answers_never_stall_the_stream() {
    for seed in 1..=6u64 {
        stream_once(seed, 12 << 20).await;
    }
}

/// An interrupt the guest does not acknowledge is raised again (a lost edge must not stall the
/// guest forever), and an acknowledged one is not: the event loop's generic re-raise
/// (`IrqTrigger::repeat_if_unacknowledged`) covers the vsock device, whose stall report shows the
/// repeat count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_interrupt_is_raised_again() {
    let mut h = Harness::new();
    let _listener = h.handle.listen(5200).unwrap();
    h.send(guest_hdr(4200, 5200, Op::Request), &[]);
    h.recv_until(|hdr, _| Op::from_wire(hdr.op) == Some(Op::Response))
        .await;
    assert_ne!(h.irq.status(), 0, "the RESPONSE raised the interrupt");
    // Not acknowledged: the irqfd is signalled again after the recheck interval.
    let _ = h.irq.irqfd().read();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let again = h.irq.irqfd().read().unwrap_or(0);
    assert!(again >= 1, "unacknowledged interrupt was not raised again");
    // Acknowledged (as the guest's handler does): quiet.
    h.irq.ack(u32::MAX);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = h.irq.irqfd().read();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        h.irq.irqfd().read().is_err(),
        "an acknowledged interrupt was raised again"
    );
    let repeats = h.irq.repeats();
    assert!(repeats >= 1);
    let state = h.handle.describe(Duration::from_secs(5)).await.unwrap();
    assert!(
        state.contains(&format!("raised again {repeats} times")),
        "{state}"
    );
}
