//! virtio-blk: the fuzz input is guest memory (descriptor table, available ring, request
//! headers, data buffers, status bytes) for the request queue; the device parses every chain,
//! runs it against a small in-memory disk and writes status bytes and used-ring entries.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _served = hearth_vmm::devices::virtio::block::fuzzing::fuzz_block_queue(data);
});
