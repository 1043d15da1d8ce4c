//! x86_64 boot protocol and CPU state.

pub mod boot;
pub mod cpuid;
pub mod kernel_reader;
pub mod layout;
pub mod mptable;
pub mod regs;
pub mod symbols;

use vm_memory::{GuestAddress, GuestMemoryBackend};

use crate::devices::virtio::GuestMemory;
use crate::vstate::memory::{GuestRam, MemoryError};

/// Builds the guest memory: RAM below the 32-bit MMIO hole, the rest above 4 GiB, each region
/// mapped 2 MiB-aligned on the host (see [`GuestRam`]).
pub fn create_guest_memory(mem_bytes: u64) -> Result<GuestRam, MemoryError> {
    GuestRam::new(&ram_ranges(mem_bytes))
}

/// The RAM ranges of a guest with `mem_bytes` of memory.
pub fn ram_ranges(mem_bytes: u64) -> Vec<(GuestAddress, usize)> {
    let hole = layout::MMIO_HOLE_START;
    if mem_bytes <= hole {
        vec![(GuestAddress(0), mem_bytes as usize)]
    } else {
        vec![
            (GuestAddress(0), hole as usize),
            (GuestAddress(layout::FOUR_GIB), (mem_bytes - hole) as usize),
        ]
    }
}

/// The end of guest RAM (exclusive), for sanity checks.
pub fn ram_end(mem: &GuestMemory) -> u64 {
    mem.last_addr().0 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_splits_around_the_mmio_hole() {
        assert_eq!(ram_ranges(256 << 20), vec![(GuestAddress(0), 256 << 20)]);
        let r = ram_ranges(4 << 30);
        assert_eq!(r[0], (GuestAddress(0), 0xC000_0000));
        assert_eq!(r[1], (GuestAddress(1 << 32), 1 << 30));
    }
}
