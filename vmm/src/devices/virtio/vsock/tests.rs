//! Device tests through real virtqueues in guest memory, with the test acting as the guest
//! driver and the device running on its own event-loop thread.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress};

use super::packet::{
    HDR_LEN, HOST_CID, Op, PacketHeader, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};
use super::test_driver::{GUEST_CID, Harness, RawDesc, guest_hdr};
use super::{HOST_BUF_ALLOC, Vsock, VsockError, VsockStream};
use crate::devices::virtio::{TYPE_VSOCK, VIRTIO_F_VERSION_1, VirtioDevice};

fn op(h: &PacketHeader) -> Option<Op> {
    Op::from_wire(h.op)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Host connects to guest port `port`; the test guest answers RESPONSE.
async fn host_connect(h: &mut Harness, port: u32) -> (VsockStream, u32) {
    let handle = h.handle.clone();
    let connect = tokio::spawn(async move { handle.connect(port).await });
    let pkts = h.recv_until(|hdr, _| op(hdr) == Some(Op::Request)).await;
    let req = pkts.last().unwrap().0;
    assert_eq!(
        (req.src_cid, req.dst_cid, req.dst_port),
        (HOST_CID, GUEST_CID, port)
    );
    assert_eq!(req.type_, TYPE_STREAM);
    assert_eq!(req.buf_alloc, HOST_BUF_ALLOC);
    assert!(
        req.src_port >= 1 << 30,
        "ephemeral host port {}",
        req.src_port
    );
    h.send(guest_hdr(port, req.src_port, Op::Response), &[]);
    let stream = connect.await.unwrap().unwrap();
    assert_eq!(
        (stream.local_port(), stream.peer_port()),
        (req.src_port, port)
    );
    (stream, req.src_port)
}

/// Guest connects from `guest_port` to a host listener on `port`.
async fn guest_connect(h: &mut Harness, guest_port: u32, port: u32) -> VsockStream {
    let mut listener = h.handle.listen(port).unwrap();
    h.send(guest_hdr(guest_port, port, Op::Request), &[]);
    let pkts = h.recv_until(|hdr, _| op(hdr) == Some(Op::Response)).await;
    let resp = pkts.last().unwrap().0;
    assert_eq!(
        (resp.src_port, resp.dst_port, resp.buf_alloc),
        (port, guest_port, HOST_BUF_ALLOC)
    );
    let stream = tokio::time::timeout(Duration::from_secs(5), listener.accept())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (stream.local_port(), stream.peer_port()),
        (port, guest_port)
    );
    stream
}

fn rw(guest_port: u32, host_port: u32, len: usize, fwd_cnt: u32) -> PacketHeader {
    let mut hdr = guest_hdr(guest_port, host_port, Op::Rw);
    hdr.len = u32::try_from(len).unwrap();
    hdr.fwd_cnt = fwd_cnt;
    hdr
}

#[tokio::test]
async fn host_connect_then_data_both_ways() {
    let mut h = Harness::new();
    let (mut stream, host_port) = host_connect(&mut h, 1234).await;

    stream.write_all(b"ping from host").await.unwrap();
    let pkts = h.recv_until(|hdr, _| op(hdr) == Some(Op::Rw)).await;
    let (hdr, data) = pkts.iter().find(|(h, _)| op(h) == Some(Op::Rw)).unwrap();
    assert_eq!(data, b"ping from host");
    assert_eq!((hdr.src_port, hdr.dst_port), (host_port, 1234));

    // The guest was interrupted for its used buffers.
    assert_ne!(h.irq.status() & 1, 0);
    assert!(h.irq.irqfd().read().unwrap() > 0);

    h.send(rw(1234, host_port, 15, 14), b"pong from guest");
    let mut buf = [0u8; 15];
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pong from guest");
}

#[tokio::test]
async fn no_interrupt_while_the_driver_suppresses_them() {
    let mut h = Harness::new();
    let (mut stream, _) = host_connect(&mut h, 1234).await;
    let settle = || std::thread::sleep(Duration::from_millis(50));
    settle();
    h.irq.ack(u32::MAX);
    let _ = h.irq.irqfd().read();

    h.rx.suppress_interrupts(&h.mem, true);
    stream.write_all(b"while draining").await.unwrap();
    let pkts = h.recv_until(|hdr, _| op(hdr) == Some(Op::Rw)).await;
    assert!(pkts.iter().any(|(_, d)| d == b"while draining"));
    settle();
    assert_eq!(h.irq.status(), 0, "interrupt raised although suppressed");
    assert!(
        h.irq.irqfd().read().is_err(),
        "irqfd signalled although suppressed"
    );

    h.rx.suppress_interrupts(&h.mem, false);
    stream.write_all(b"after draining").await.unwrap();
    h.recv_until(|hdr, _| op(hdr) == Some(Op::Rw)).await;
    assert_ne!(h.irq.status() & 1, 0);
    assert!(h.irq.irqfd().read().unwrap() > 0);
}

#[tokio::test]
async fn malformed_rx_buffers_are_returned_empty_and_skipped() {
    let mut h = Harness::without_rx_buffers();
    let write = VRING_DESC_F_WRITE as u16;
    let slot = h.rx.slot(63);
    // Device-readable RX buffer, a buffer too small for a header, one outside guest memory.
    let bad = [
        h.rx.push_chain(&h.mem, &[(slot, 4096, 0)]),
        h.rx.push_chain(&h.mem, &[(slot, 10, write)]),
        h.rx.push_chain(&h.mem, &[(0xffff_ffff_0000, 4096, write)]),
    ];
    h.fill_rx();
    let handle = h.handle.clone();
    let _connect = tokio::spawn(async move { handle.connect(42).await });
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut used = Vec::new();
    while used.len() < 4 {
        assert!(std::time::Instant::now() < deadline, "got only {used:?}");
        used.extend(h.rx.take_used(&h.mem));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(&used[..3], &[(bad[0], 0), (bad[1], 0), (bad[2], 0)]);
    assert_eq!(
        used[3].1, HDR_LEN as u32,
        "REQUEST lands in the first good buffer"
    );
}

#[tokio::test]
async fn host_to_guest_bulk_respects_guest_credit() {
    let mut h = Harness::new();
    let (mut stream, host_port) = host_connect(&mut h, 77).await;
    // Small guest buffer so credit matters: 64 KiB.
    let guest_buf: u32 = 64 * 1024;
    let mut credit = guest_hdr(77, host_port, Op::CreditUpdate);
    credit.buf_alloc = guest_buf;
    h.send(credit, &[]);

    let total = 1 << 20;
    let data = pattern(total, 7);
    let expect = data.clone();
    let writer = tokio::spawn(async move {
        stream.write_all(&data).await.unwrap();
        stream.shutdown().await.unwrap();
        stream
    });
    let mut got: Vec<u8> = Vec::new();
    let mut announced_fwd: u32 = 0;
    let mut saw_shutdown = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !saw_shutdown {
        assert!(
            std::time::Instant::now() < deadline,
            "stalled at {} bytes",
            got.len()
        );
        let pkts = h.recv();
        for (hdr, payload) in &pkts {
            match op(hdr) {
                Some(Op::Rw) => {
                    got.extend_from_slice(payload);
                    let in_flight = got.len() as u32 - announced_fwd;
                    assert!(
                        in_flight <= guest_buf,
                        "device overran guest credit: {in_flight}"
                    );
                }
                Some(Op::Shutdown) => {
                    assert_eq!(hdr.flags, SHUTDOWN_SEND);
                    saw_shutdown = true;
                }
                Some(Op::CreditRequest) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        if !pkts.is_empty() {
            // The guest application consumed everything: tell the device.
            announced_fwd = got.len() as u32;
            let mut upd = guest_hdr(77, host_port, Op::CreditUpdate);
            upd.buf_alloc = guest_buf;
            upd.fwd_cnt = announced_fwd;
            h.send(upd, &[]);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(got.len(), total);
    assert!(got == expect, "payload corrupted");
    let _stream = writer.await.unwrap();
}

#[tokio::test]
async fn guest_to_host_bulk_follows_host_credit() {
    let mut h = Harness::new();
    let stream = guest_connect(&mut h, 4000, 5000).await;
    let total = 3 * HOST_BUF_ALLOC as usize + 12345;
    let data = pattern(total, 3);
    let expect = data.clone();
    let reader = tokio::spawn(async move {
        let mut stream = stream;
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.unwrap();
        got
    });
    let (mut peer_alloc, mut peer_fwd) = (HOST_BUF_ALLOC, 0u32);
    let mut sent = 0usize;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while sent < total {
        assert!(std::time::Instant::now() < deadline, "stalled at {sent}");
        for (hdr, _) in h.recv() {
            assert_ne!(op(&hdr), Some(Op::Rst), "device reset an honest sender");
            peer_alloc = hdr.buf_alloc;
            peer_fwd = hdr.fwd_cnt;
        }
        h.reap_tx();
        let credit = peer_alloc - (sent as u32 - peer_fwd);
        let n = (credit as usize).min(64 * 1024).min(total - sent);
        if n > 0 && h.tx.free_count() >= 2 {
            h.send(rw(4000, 5000, n, 0), &data[sent..sent + n]);
            sent += n;
        } else {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let mut shut = guest_hdr(4000, 5000, Op::Shutdown);
    shut.flags = SHUTDOWN_SEND | SHUTDOWN_RCV;
    h.send(shut, &[]);
    let got = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.len(), total);
    assert!(got == expect, "payload corrupted");
    // The guest closed both ways: the device answers RST and forgets the connection.
    h.recv_until(|hdr, _| op(hdr) == Some(Op::Rst)).await;
    h.wait_device(|d| d.connection_count() == 0).await;
}

#[tokio::test]
async fn stalled_reader_stalls_guest_then_credit_update_resumes() {
    let mut h = Harness::new();
    let mut stream = guest_connect(&mut h, 4001, 5001).await;
    // Fill exactly the advertised buffer; the host does not read.
    let chunk = pattern(64 * 1024, 9);
    for _ in 0..(HOST_BUF_ALLOC as usize / chunk.len()) {
        while h.tx.free_count() < 2 {
            h.reap_tx();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        h.send(rw(4001, 5001, chunk.len(), 0), &chunk);
    }
    // Everything is accepted, nothing is reset, and no credit is handed back while unread.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let pkts = h.recv();
    assert!(
        pkts.is_empty(),
        "unexpected packets while stalled: {pkts:?}"
    );
    // The host reads half: the guest learns about the freed space once half of its window
    // (min(our buf_alloc, its 256 KiB)) has been consumed.
    let mut buf = vec![0u8; HOST_BUF_ALLOC as usize / 2];
    stream.read_exact(&mut buf).await.unwrap();
    assert!(buf[..chunk.len()] == chunk[..]);
    let pkts = h
        .recv_until(|hdr, _| op(hdr) == Some(Op::CreditUpdate))
        .await;
    let upd = pkts
        .iter()
        .find(|(h, _)| op(h) == Some(Op::CreditUpdate))
        .unwrap()
        .0;
    assert!(
        upd.fwd_cnt >= 128 * 1024 && upd.fwd_cnt <= HOST_BUF_ALLOC / 2,
        "{upd:?}"
    );
    assert_eq!(upd.buf_alloc, HOST_BUF_ALLOC);
}

/// Linux caps the credit it uses at its own `buf_alloc`: a guest with a 64 KiB buffer stops after
/// 64 KiB although we advertise more. Draining that must still produce a CREDIT_UPDATE.
#[tokio::test]
async fn guest_capping_credit_at_its_own_buffer_is_not_stalled() {
    let mut h = Harness::new();
    let listener_port = 5003;
    let mut listener = h.handle.listen(listener_port).unwrap();
    let mut req = guest_hdr(4003, listener_port, Op::Request);
    req.buf_alloc = 64 * 1024;
    h.send(req, &[]);
    h.recv_until(|hdr, _| op(hdr) == Some(Op::Response)).await;
    let mut stream = listener.accept().await.unwrap();
    let data = pattern(64 * 1024, 4);
    let mut sent_total = 0usize;
    for round in 0..4u32 {
        // The guest uses exactly its own window, then waits for credit.
        let mut hdr = rw(4003, listener_port, data.len(), 0);
        hdr.buf_alloc = 64 * 1024;
        h.send(hdr, &data);
        sent_total += data.len();
        let mut buf = vec![0u8; data.len()];
        stream.read_exact(&mut buf).await.unwrap();
        assert!(buf == data);
        let pkts = h
            .recv_until(|hdr, _| op(hdr) == Some(Op::CreditUpdate))
            .await;
        let upd = pkts
            .iter()
            .rev()
            .find(|(h, _)| op(h) == Some(Op::CreditUpdate))
            .unwrap()
            .0;
        assert_eq!(upd.fwd_cnt as usize, sent_total, "round {round}");
    }
}

#[tokio::test]
async fn credit_overrun_resets_and_never_buffers_beyond_buf_alloc() {
    let mut h = Harness::new();
    let mut stream = guest_connect(&mut h, 4002, 5002).await;
    let chunk = pattern(64 * 1024, 1);
    let n_chunks = HOST_BUF_ALLOC as usize / chunk.len();
    for _ in 0..n_chunks {
        while h.tx.free_count() < 2 {
            h.reap_tx();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        h.send(rw(4002, 5002, chunk.len(), 0), &chunk);
    }
    // One byte beyond the credit the device advertised.
    h.send(rw(4002, 5002, 1, 0), b"!");
    h.recv_until(|hdr, _| op(hdr) == Some(Op::Rst)).await;
    let mut got = Vec::new();
    stream.read_to_end(&mut got).await.unwrap();
    assert_eq!(
        got.len(),
        HOST_BUF_ALLOC as usize,
        "excess byte must not be buffered"
    );
    assert!(stream.write_all(b"x").await.is_err());
}

#[tokio::test]
async fn guest_connect_to_port_without_listener_gets_rst() {
    let mut h = Harness::new();
    h.send(guest_hdr(4100, 9999, Op::Request), &[]);
    let pkts = h.recv_until(|hdr, _| op(hdr) == Some(Op::Rst)).await;
    let rst = pkts.last().unwrap().0;
    assert_eq!(
        (rst.src_port, rst.dst_port, rst.dst_cid),
        (9999, 4100, GUEST_CID)
    );
    assert!(pkts.iter().all(|(h, _)| op(h) != Some(Op::Response)));
    assert_eq!(h.dev.lock().unwrap().connection_count(), 0);
}

#[tokio::test]
async fn guest_rst_refuses_host_connect_and_silence_times_out() {
    let mut h = Harness::new();
    let handle = h.handle.clone();
    let connect = tokio::spawn(async move { handle.connect(1111).await });
    let pkts = h.recv_until(|hdr, _| op(hdr) == Some(Op::Request)).await;
    let req = pkts.last().unwrap().0;
    h.send(guest_hdr(1111, req.src_port, Op::Rst), &[]);
    let err = connect.await.unwrap().unwrap_err();
    assert!(
        matches!(err, VsockError::ConnectionRefused { port: 1111 }),
        "{err}"
    );

    let handle = h.handle.clone();
    let connect = tokio::spawn(async move {
        handle
            .connect_timeout(2222, Duration::from_millis(100))
            .await
    });
    let err = connect.await.unwrap().unwrap_err();
    assert!(
        matches!(err, VsockError::TimedOut { port: 2222, .. }),
        "{err}"
    );
    // The abandoned half-open connection is reset towards the guest and forgotten.
    let pkts = h
        .recv_until(|hdr, _| op(hdr) == Some(Op::Rst) && hdr.dst_port == 2222)
        .await;
    assert!(
        pkts.iter()
            .any(|(h, _)| op(h) == Some(Op::Request) && h.dst_port == 2222)
    );
    h.wait_device(|d| d.connection_count() == 0).await;
}

#[tokio::test]
async fn host_drop_and_half_close() {
    let mut h = Harness::new();
    let (mut stream, host_port) = host_connect(&mut h, 88).await;
    stream.write_all(b"last words").await.unwrap();
    stream.shutdown().await.unwrap();
    let pkts = h.recv_until(|hdr, _| op(hdr) == Some(Op::Shutdown)).await;
    let ops: Vec<_> = pkts.iter().filter_map(|(h, _)| op(h)).collect();
    assert_eq!(
        ops,
        vec![Op::Rw, Op::Shutdown],
        "data must precede SHUTDOWN"
    );
    assert_eq!(pkts[1].0.flags, SHUTDOWN_SEND);
    assert!(stream.write_all(b"more").await.is_err());
    // Half-closed: the guest can still send and the host still reads.
    h.send(rw(88, host_port, 5, 10), b"reply");
    let mut buf = [0u8; 5];
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"reply");
    drop(stream);
    let pkts = h.recv_until(|hdr, _| op(hdr) == Some(Op::Shutdown)).await;
    assert_eq!(pkts.last().unwrap().0.flags, SHUTDOWN_RCV);
    h.send(guest_hdr(88, host_port, Op::Rst), &[]);
    h.wait_device(|d| d.connection_count() == 0).await;
}

#[tokio::test]
async fn guest_shutdown_gives_eof_after_data() {
    let mut h = Harness::new();
    let mut stream = guest_connect(&mut h, 4200, 5200).await;
    h.send(rw(4200, 5200, 3, 0), b"abc");
    let mut shut = guest_hdr(4200, 5200, Op::Shutdown);
    shut.flags = SHUTDOWN_SEND;
    h.send(shut, &[]);
    let mut got = Vec::new();
    stream.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"abc");
    // Guest still receives.
    stream.write_all(b"still here").await.unwrap();
    let pkts = h.recv_until(|hdr, _| op(hdr) == Some(Op::Rw)).await;
    assert!(pkts.iter().any(|(_, d)| d == b"still here"));
}

#[tokio::test]
async fn malformed_tx_chains_are_dropped_and_device_keeps_working() {
    let mut h = Harness::new();
    let base = h.tx.slot(60);
    let good = guest_hdr(4300, 5300, Op::Request).to_bytes();
    h.mem.write_slice(&good, GuestAddress(base)).unwrap();
    let mut long = guest_hdr(4300, 5300, Op::Rw);
    long.len = 1000;
    h.mem
        .write_slice(&long.to_bytes(), GuestAddress(base + 0x1000))
        .unwrap();
    let mut huge = guest_hdr(4300, 5300, Op::Rw);
    huge.len = u32::MAX;
    h.mem
        .write_slice(&huge.to_bytes(), GuestAddress(base + 0x2000))
        .unwrap();
    let next = VRING_DESC_F_NEXT as u16;
    let write = VRING_DESC_F_WRITE as u16;
    let hdr_len = HDR_LEN as u32;
    let cases: Vec<(u16, Vec<RawDesc>)> = vec![
        // Header descriptor shorter than a header.
        (60, vec![(60, base, 20, 0, 0)]),
        // Device-writable descriptor in the TX queue.
        (60, vec![(60, base, hdr_len, write, 0)]),
        // len field larger than the data buffer.
        (
            61,
            vec![
                (61, base + 0x1000, hdr_len, next, 62),
                (62, base + 0x3000, 10, 0, 0),
            ],
        ),
        // len field beyond any limit.
        (61, vec![(61, base + 0x2000, hdr_len, 0, 0)]),
        // Address outside guest memory.
        (60, vec![(60, 0xffff_ffff_0000, hdr_len, 0, 0)]),
        // Address that overflows.
        (60, vec![(60, u64::MAX - 10, hdr_len, 0, 0)]),
        // Next index beyond the queue.
        (61, vec![(61, base + 0x1000, hdr_len, next, 500)]),
        // Descriptor chained to itself (bounded by the queue size).
        (61, vec![(61, base + 0x1000, hdr_len, next, 61)]),
        // Indirect table with a bogus length.
        (63, vec![(63, base, 7, 4, 0)]),
    ];
    let n = cases.len();
    for (i, (head, descs)) in cases.into_iter().enumerate() {
        h.tx.push_raw(&h.mem, head, &descs);
        h.kick(1);
        // Wait for each chain to be returned so descriptors can be reused by the next case.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while h.reap_tx() == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "case {i}: chain not returned"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    // A head index beyond the queue cannot even be returned; it is skipped.
    h.tx.push_raw(&h.mem, 1000, &[]);
    h.kick(1);
    // None of them produced a connection or a response.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let pkts = h.recv();
    assert!(
        pkts.iter().all(|(h, _)| op(h) != Some(Op::Response)),
        "{pkts:?}"
    );
    assert_eq!(
        h.dev.lock().unwrap().connection_count(),
        0,
        "after {n} hostile chains"
    );
    // The device still works.
    let mut stream = guest_connect(&mut h, 4301, 5301).await;
    h.send(rw(4301, 5301, 2, 0), b"ok");
    let mut buf = [0u8; 2];
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ok");
}

#[tokio::test]
async fn wrong_cids_and_types_are_not_accepted() {
    let mut h = Harness::new();
    let _listener = h.handle.listen(5400).unwrap();
    let mut spoofed = guest_hdr(4400, 5400, Op::Request);
    spoofed.src_cid = 99;
    h.send(spoofed, &[]);
    let mut seqpacket = guest_hdr(4401, 5400, Op::Request);
    seqpacket.type_ = 2;
    h.send(seqpacket, &[]);
    let pkts = h.recv_until(|hdr, _| op(hdr) == Some(Op::Rst)).await;
    assert!(pkts.iter().all(|(h, _)| op(h) != Some(Op::Response)));
    assert_eq!(pkts.last().unwrap().0.dst_port, 4401);
    assert_eq!(h.dev.lock().unwrap().connection_count(), 0);
}

#[tokio::test]
async fn listener_rules_and_device_reset() {
    let mut h = Harness::new();
    let listener = h.handle.listen(6000).unwrap();
    assert!(matches!(
        h.handle.listen(6000),
        Err(VsockError::AddrInUse { port: 6000 })
    ));
    drop(listener);
    let mut stream = guest_connect(&mut h, 4500, 6000).await;
    assert!(h.dev.lock().unwrap().reset());
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await.unwrap();
    assert!(buf.is_empty());
    assert!(stream.write_all(b"x").await.is_err());
    assert_eq!(h.dev.lock().unwrap().connection_count(), 0);
}

#[test]
fn config_space_features_and_cid_validation() {
    let (dev, _handle) = Vsock::new(0x0102_0304).unwrap();
    assert_eq!(dev.device_type(), TYPE_VSOCK);
    assert_eq!(dev.queue_max_sizes().len(), 3);
    assert_ne!(dev.avail_features() & VIRTIO_F_VERSION_1, 0);
    let mut b = [0xffu8; 8];
    dev.read_config(0, &mut b);
    assert_eq!(b, [4, 3, 2, 1, 0, 0, 0, 0]);
    let mut b = [0xffu8; 4];
    dev.read_config(2, &mut b);
    assert_eq!(b, [2, 1, 0, 0]);
    let mut b = [0xffu8; 4];
    dev.read_config(6, &mut b);
    assert_eq!(b, [0, 0, 0, 0]);
    let mut b = [0xffu8; 2];
    dev.read_config(u64::MAX, &mut b);
    assert_eq!(b, [0, 0]);
    for bad in [0, 1, 2, u64::from(u32::MAX), u64::MAX] {
        assert!(matches!(
            Vsock::new(bad),
            Err(VsockError::InvalidCid { .. })
        ));
    }
}

#[tokio::test]
async fn dropped_device_fails_waiters() {
    let (dev, handle) = Vsock::new(3).unwrap();
    let mut listener = handle.listen(7000).unwrap();
    let h2 = handle.clone();
    let connect = tokio::spawn(async move { h2.connect(7001).await });
    tokio::time::sleep(Duration::from_millis(10)).await;
    drop(dev);
    assert!(matches!(
        listener.accept().await,
        Err(VsockError::DeviceGone)
    ));
    assert!(matches!(
        connect.await.unwrap(),
        Err(VsockError::DeviceGone)
    ));
    assert!(matches!(handle.listen(7002), Err(VsockError::DeviceGone)));
}

/// A connection whose device goes away (the VM stopped: a guest crash, a triple fault) is not a
/// clean end of stream: the host reads what arrived, then an error naming the device, never EOF
/// (an EOF read as "the agent closed the connection" hid a guest triple fault in the vm_agent
/// tests). Writes fail the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_device_fails_established_streams_instead_of_eof() {
    let mut h = Harness::new();
    let (mut stream, host_port) = host_connect(&mut h, 1024).await;
    h.send(rw(1024, host_port, 5, 0), b"hello");
    let mut buf = [0u8; 5];
    stream.read_exact(&mut buf).await.unwrap();
    h.send(rw(1024, host_port, 3, 0), b"end");
    h.wait_device(|d| d.describe().contains("queued 3 rx_cnt 8"))
        .await;
    drop(h);
    let mut rest = Vec::new();
    let err = stream.read_to_end(&mut rest).await.unwrap_err();
    assert_eq!(rest, b"end", "bytes received before the end are still read");
    assert_eq!(err.kind(), std::io::ErrorKind::NotConnected, "{err}");
    assert!(err.to_string().contains("the VM stopped"), "{err}");
    let err = stream.write_all(b"x").await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotConnected, "{err}");
}

/// 100 MiB guest→host and 32 MiB host→guest through the device, checking integrity and timing.
/// Slow in debug builds: `cargo test --release -p hearth-vmm vsock_throughput -- --ignored
/// --nocapture`.
#[tokio::test]
#[ignore = "throughput measurement; run in release"]
async fn vsock_throughput() {
    let mut h = Harness::new();
    let stream = guest_connect(&mut h, 4600, 6600).await;
    let total = 100usize << 20;
    let chunk = pattern(64 * 1024, 5);
    let reader = tokio::spawn(async move {
        let mut stream = stream;
        let mut buf = vec![0u8; 256 * 1024];
        let (mut n, mut sum) = (0usize, 0u64);
        loop {
            let k = stream.read(&mut buf).await.unwrap();
            if k == 0 {
                break;
            }
            sum = buf[..k]
                .iter()
                .fold(sum, |s, &b| s.wrapping_add(u64::from(b)));
            n += k;
        }
        (n, sum, stream)
    });
    let start = std::time::Instant::now();
    let (mut peer_alloc, mut peer_fwd) = (HOST_BUF_ALLOC, 0u32);
    let mut sent = 0usize;
    while sent < total {
        for (hdr, _) in h.recv() {
            peer_alloc = hdr.buf_alloc;
            peer_fwd = hdr.fwd_cnt;
        }
        h.reap_tx();
        let credit = peer_alloc - ((sent as u32).wrapping_sub(peer_fwd));
        let n = (credit as usize).min(chunk.len()).min(total - sent);
        if n > 0 && h.tx.free_count() >= 2 {
            h.send(rw(4600, 6600, n, 0), &chunk[..n]);
            sent += n;
        } else {
            tokio::task::yield_now().await;
        }
    }
    let mut shut = guest_hdr(4600, 6600, Op::Shutdown);
    shut.flags = SHUTDOWN_SEND;
    h.send(shut, &[]);
    let (n, sum, mut stream) = reader.await.unwrap();
    let secs = start.elapsed().as_secs_f64();
    let per_chunk = chunk
        .iter()
        .fold(0u64, |s, &b| s.wrapping_add(u64::from(b)));
    assert_eq!(n, total);
    assert_eq!(sum, per_chunk.wrapping_mul((total / chunk.len()) as u64));
    println!(
        "guest->host: {} MiB in {secs:.3}s = {:.0} MiB/s",
        total >> 20,
        (total >> 20) as f64 / secs
    );

    // host -> guest, guest consuming immediately with a 256 KiB buffer.
    let total = 32usize << 20;
    let writer = tokio::spawn(async move {
        let buf = vec![0x33u8; 256 * 1024];
        for _ in 0..total / buf.len() {
            stream.write_all(&buf).await.unwrap();
        }
        stream.shutdown().await.unwrap();
        stream
    });
    let start = std::time::Instant::now();
    let (mut got, mut done) = (0usize, false);
    while !done {
        let pkts = h.recv();
        for (hdr, d) in &pkts {
            match op(hdr) {
                Some(Op::Rw) => got += d.len(),
                Some(Op::Shutdown) => done = true,
                _ => {}
            }
        }
        if !pkts.is_empty() {
            let mut upd = guest_hdr(4600, 6600, Op::CreditUpdate);
            upd.fwd_cnt = got as u32;
            h.send(upd, &[]);
            h.reap_tx();
        }
        tokio::task::yield_now().await;
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(got, total);
    println!(
        "host->guest: {} MiB in {secs:.3}s = {:.0} MiB/s",
        total >> 20,
        (total >> 20) as f64 / secs
    );
    drop(writer.await.unwrap());
}

#[test]
fn tx_processing_is_budgeted_per_wakeup() {
    use super::muxer::Muxer;
    use super::shared::BackendShared;
    use super::test_driver::DriverQueue;
    let mem = vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap();
    let mut driver = DriverQueue::new(0x1_0000, 0x10_0000);
    let mut queue = driver.device_queue();
    for port in 0..5 {
        let slot = driver.slot(port);
        mem.write_slice(
            &guest_hdr(100 + u32::from(port), 9, Op::Rst).to_bytes(),
            GuestAddress(slot),
        )
        .unwrap();
        driver.push_chain(&mem, &[(slot, HDR_LEN as u32, 0)]);
    }
    let mut muxer = Muxer::new(GUEST_CID, BackendShared::new().unwrap());
    assert_eq!(muxer.process_tx(&mem, &mut queue, 2), (2, true));
    assert_eq!(muxer.process_tx(&mem, &mut queue, 2), (2, true));
    assert_eq!(muxer.process_tx(&mem, &mut queue, 2), (1, false));
    assert_eq!(driver.take_used(&mem).len(), 5);
}

#[tokio::test]
async fn silent_guest_after_host_close_is_reset_by_the_timer() {
    let mut h = Harness::new();
    let (stream, host_port) = host_connect(&mut h, 99).await;
    drop(stream);
    let pkts = h.recv_until(|hdr, _| op(hdr) == Some(Op::Shutdown)).await;
    assert_eq!(pkts.last().unwrap().0.flags, SHUTDOWN_RCV | SHUTDOWN_SEND);
    let closed_at = std::time::Instant::now();
    // The guest never answers and nothing else happens: the timer alone must end it.
    let pkts = h.recv_until(|hdr, _| op(hdr) == Some(Op::Rst)).await;
    let waited = closed_at.elapsed();
    assert_eq!(pkts.last().unwrap().0.src_port, host_port);
    assert!(
        waited >= Duration::from_millis(1900),
        "RST after only {waited:?}"
    );
    h.wait_device(|d| d.connection_count() == 0).await;
}
