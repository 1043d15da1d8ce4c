//! The device against a real tap in a private network namespace: the host kernel answers the
//! "guest's" ARP request, so a frame goes out through TX and a reply comes back through RX.
//! Needs root (CAP_NET_ADMIN) and /dev/net/tun, which the test suite's machines have; where
//! they are missing the test fails and says so.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::*;
use crate::devices::virtio::vsock::test_driver::DriverQueue;

const GUEST_MAC: [u8; 6] = [0x02, 0x68, 0x74, 0x00, 0x00, 0x02];
const HOST_IP: [u8; 4] = [10, 200, 0, 1];
const GUEST_IP: [u8; 4] = [10, 200, 0, 2];

/// An ARP request "who has HOST_IP? tell GUEST_IP" from GUEST_MAC, broadcast.
fn arp_request() -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[0x08, 0x06]); // ARP
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]); // Ethernet/IPv4, request
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&GUEST_IP);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&HOST_IP);
    f
}

fn run(cmd: &str) {
    let out = std::process::Command::new("sh")
        .args(["-c", cmd])
        .output()
        .expect("running sh");
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `f` on a thread of its own network namespace (threads it spawns share it).
fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: unshare(2) only changes this thread's namespace membership.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET) needs root: {}",
            std::io::Error::last_os_error()
        );
        f()
    })
    .join()
    .expect("netns thread")
}

/// Tap `name` with HOST_IP/24, up, and a device on it whose guest side has GUEST_MAC.
fn device_on_a_tap(name: &str) -> Net {
    let tap = Tap::open(name).expect("a tap (root and /dev/net/tun needed)");
    run(&format!(
        "ip addr add 10.200.0.1/24 dev {name} && ip link set {name} up"
    ));
    Net::new(Arc::new(tap), GUEST_MAC).unwrap()
}

/// The guest driver's side of an activated device.
struct Driver {
    mem: GuestMemoryMmap,
    rx: DriverQueue,
    tx: DriverQueue,
    kicks: Vec<EventFd>,
    irq: Arc<IrqTrigger>,
}

/// Activates `dev` with fresh queues in fresh guest memory, as the transport does.
fn activate(dev: &Mutex<Net>) -> Driver {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
    let rx = DriverQueue::new(0x1_0000, 0x10_0000);
    let tx = DriverQueue::new(0x2_0000, 0x60_0000);
    let kicks: Vec<EventFd> = (0..2)
        .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
        .collect();
    let irq = Arc::new(IrqTrigger::new().unwrap());
    dev.lock()
        .unwrap()
        .activate(ActivateArgs {
            mem: mem.clone(),
            queues: vec![rx.device_queue(), tx.device_queue()],
            queue_evts: kicks.iter().map(|e| e.try_clone().unwrap()).collect(),
            irq: irq.clone(),
            acked_features: VIRTIO_F_VERSION_1,
        })
        .unwrap();
    Driver {
        mem,
        rx,
        tx,
        kicks,
        irq,
    }
}

#[test]
fn an_arp_request_out_of_the_guest_gets_the_host_kernels_reply_back() {
    in_new_netns(|| {
        let net = device_on_a_tap("hthtest0");
        let stats = net.stats();
        let mut cfg = [0u8; 8];
        net.read_config(0, &mut cfg);
        assert_eq!(&cfg[..6], &GUEST_MAC);
        assert_eq!(&cfg[6..], &[0, 0], "nothing past the MAC");
        let dev = Arc::new(Mutex::new(net));
        let mut em = EventManager::<Arc<Mutex<Net>>>::new().unwrap();
        em.add_subscriber(dev.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let events = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                em.run_with_timeout(10).unwrap();
            }
        });
        let Driver {
            mem,
            mut rx,
            mut tx,
            kicks,
            irq,
        } = activate(&dev);
        for i in 0..16u16 {
            rx.push_chain(&mem, &[(rx.slot(i), 1526, VRING_DESC_F_WRITE as u16)]);
        }
        kicks[RX_QUEUE].write(1).unwrap();
        // Header and frame in separate descriptors, as Linux sends them.
        let frame = arp_request();
        let (hdr_at, frame_at) = (tx.slot(0), tx.slot(1));
        mem.write_slice(&[0u8; VNET_HDR_LEN], GuestAddress(hdr_at))
            .unwrap();
        mem.write_slice(&frame, GuestAddress(frame_at)).unwrap();
        tx.push_chain(
            &mem,
            &[
                (hdr_at, VNET_HDR_LEN as u32, 0),
                (frame_at, frame.len() as u32, 0),
            ],
        );
        kicks[TX_QUEUE].write(1).unwrap();

        let deadline = Instant::now() + Duration::from_secs(10);
        let mut reply = None;
        while reply.is_none() && Instant::now() < deadline {
            for (head, len) in rx.take_used(&mem) {
                let mut buf = vec![0u8; len as usize];
                mem.read_slice(&mut buf, GuestAddress(rx.slot(head)))
                    .unwrap();
                assert_eq!(&buf[..VNET_HDR_LEN], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
                let f = &buf[VNET_HDR_LEN..];
                // ARP reply (opcode 2) to us, sender = HOST_IP; other frames (IPv6 noise) skipped.
                if f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 2] {
                    reply = Some(f.to_vec());
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        stop.store(true, Ordering::Relaxed);
        events.join().unwrap();
        let reply = reply.expect("no ARP reply from the host kernel within 10 s");
        assert_eq!(&reply[0..6], &GUEST_MAC, "addressed to the guest");
        assert_eq!(&reply[28..32], &HOST_IP, "sender is the tap's address");
        assert_eq!(&reply[32..38], &GUEST_MAC);
        assert_eq!(tx.take_used(&mem).len(), 1, "the TX chain came back");
        assert_eq!(stats.tx_frames.load(Ordering::Relaxed), 1);
        assert!(stats.rx_frames.load(Ordering::Relaxed) >= 1);
        assert_ne!(irq.status(), 0, "the guest was interrupted");
    });
}

#[test]
fn a_frame_without_rx_buffers_waits_for_the_guest_and_is_then_delivered() {
    in_new_netns(|| {
        let dev = Arc::new(Mutex::new(device_on_a_tap("hthtest1")));
        let mut em = EventManager::<Arc<Mutex<Net>>>::new().unwrap();
        em.add_subscriber(dev.clone());
        let Driver {
            mem,
            mut rx,
            mut tx,
            kicks,
            ..
        } = activate(&dev);
        em.run_with_timeout(100).unwrap();
        // One chain with header + frame in one descriptor, no RX buffer posted.
        let mut one = vec![0u8; VNET_HDR_LEN];
        one.extend_from_slice(&arp_request());
        mem.write_slice(&one, GuestAddress(tx.slot(0))).unwrap();
        tx.push_chain(&mem, &[(tx.slot(0), one.len() as u32, 0)]);
        kicks[TX_QUEUE].write(1).unwrap();
        let until = Instant::now() + Duration::from_millis(500);
        while Instant::now() < until {
            em.run_with_timeout(50).unwrap();
        }
        assert!(rx.take_used(&mem).is_empty());
        assert!(
            dev.lock().unwrap().rx_waiting.is_some(),
            "the reply waits in the device"
        );
        rx.push_chain(&mem, &[(rx.slot(0), 1526, VRING_DESC_F_WRITE as u16)]);
        kicks[RX_QUEUE].write(1).unwrap();
        em.run_with_timeout(1000).unwrap();
        assert_eq!(rx.take_used(&mem).len(), 1, "delivered once a buffer came");
    });
}
