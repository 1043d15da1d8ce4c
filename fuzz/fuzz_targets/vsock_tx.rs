//! virtio-vsock: the fuzz input is guest memory (descriptor tables, available rings, packet
//! headers and payloads) for the TX and RX queues; the muxer parses every chain, routes packets,
//! accepts connections on a listener, and writes answers and host data into the RX queue.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _reach = hearth_vmm::devices::virtio::vsock::fuzzing::fuzz_tx_queue(data);
});
