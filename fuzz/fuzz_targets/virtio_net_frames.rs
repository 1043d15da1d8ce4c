//! virtio-net: the fuzz input is guest memory (both queues' descriptor tables and available
//! rings, every buffer); the device copies each TX chain's frame out and a frame into each RX
//! chain, and writes used-ring entries.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _moved = hearth_vmm::devices::virtio::net::fuzzing::fuzz_net_queues(data);
});
