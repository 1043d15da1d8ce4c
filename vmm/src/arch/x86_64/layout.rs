//! Guest physical address layout (x86_64).

/// GDT location.
pub const GDT_START: u64 = 0x500;
/// IDT location (one empty entry).
pub const IDT_START: u64 = 0x520;
/// PVH `hvm_start_info` location.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH memory map follows the start info.
pub const PVH_MEMMAP_START: u64 = 0x7000;
/// Linux boot protocol zero page (boot_params).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack for the 64-bit Linux boot protocol.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity-mapping page tables for the 64-bit Linux boot protocol.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory (512 × 2 MiB pages).
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Maximum command line length including the NUL.
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Start of the reserved area below 1 MiB: the MP table lives in the last KiB of base memory.
pub const MPTABLE_START: u64 = 0x9fc00;
/// Kernels are loaded from 1 MiB on.
pub const HIMEM_START: u64 = 0x10_0000;
/// The 32-bit MMIO hole: [3 GiB, 4 GiB).
pub const MMIO_HOLE_START: u64 = 0xC000_0000;
/// 4 GiB.
pub const FOUR_GIB: u64 = 1 << 32;
/// Virtio-mmio device windows start here, one 4 KiB page each.
pub const MMIO_DEVICES_START: u64 = 0xD000_0000;
/// Size of one virtio-mmio window.
pub const MMIO_DEVICE_SIZE: u64 = 0x1000;
/// KVM TSS address (three pages inside the MMIO hole, below the IOAPIC/LAPIC).
pub const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
/// IOAPIC MMIO base.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// LAPIC MMIO base.
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// First IRQ handed to virtio devices (0-4 are legacy: timer, keyboard, cascade, COM2, COM1).
pub const IRQ_BASE: u32 = 5;
/// Last IRQ (the in-kernel IOAPIC has 24 pins).
pub const IRQ_MAX: u32 = 23;
