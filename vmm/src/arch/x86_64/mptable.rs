//! Intel MultiProcessor Specification 1.4 table: tells a kernel without ACPI about the CPUs, the
//! IOAPIC and how ISA IRQs are wired to it.

use vm_memory::{Bytes, GuestAddress};

use super::layout::{IOAPIC_ADDR, IRQ_MAX, LAPIC_ADDR, MPTABLE_START};
use crate::devices::virtio::GuestMemory;

/// Errors writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// Too many vCPUs for one IOAPIC id space.
    #[error("too many vCPUs for the MP table: {0} (max 254)")]
    TooManyCpus(u8),
    /// The table does not fit below 640 KiB.
    #[error("MP table of {0} bytes does not fit in the reserved area")]
    TooLarge(usize),
    /// Writing guest memory failed.
    #[error("writing the MP table to guest memory: {0}")]
    Write(#[source] vm_memory::GuestMemoryError),
}

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IOINT: u8 = 3;
const ENTRY_LOCALINT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const FLOATING_LEN: usize = 16;
const HEADER_LEN: usize = 44;
/// Room reserved for the MP table: the last KiB below 640 KiB.
const MAX_SIZE: usize = 0x400;

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b))
        .wrapping_neg()
}

/// Serializes the MP floating pointer plus configuration table for `ncpus` CPUs, to be placed at
/// `base`.
pub fn build(ncpus: u8, base: u32) -> Result<Vec<u8>, MptableError> {
    if ncpus == 0 || ncpus > 254 {
        return Err(MptableError::TooManyCpus(ncpus));
    }
    let ioapic_id = ncpus + 1;
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..ncpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, cpu, APIC_VERSION, flags]);
        // Signature: family 6 model 0x5?; feature flags FPU|APIC.
        entries.extend_from_slice(&0x600u32.to_le_bytes());
        entries.extend_from_slice(&0x201u32.to_le_bytes());
        entries.extend_from_slice(&[0u8; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    count += 1;
    for irq in 0..=IRQ_MAX as u8 {
        // type, irq type, flags (u16: conforms to bus), source bus, source irq, dest apic, pin
        entries.extend_from_slice(&[ENTRY_IOINT, INT_TYPE_INT, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_LOCALINT, INT_TYPE_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[ENTRY_LOCALINT, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_len = HEADER_LEN + entries.len();
    let total = FLOATING_LEN + table_len;
    if total > MAX_SIZE {
        return Err(MptableError::TooLarge(total));
    }
    let table_addr = base + FLOATING_LEN as u32;

    let mut floating = Vec::with_capacity(FLOATING_LEN);
    floating.extend_from_slice(b"_MP_");
    floating.extend_from_slice(&table_addr.to_le_bytes());
    floating.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]); // length/16, spec rev, checksum, features
    floating[10] = checksum(&floating);

    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&(table_len as u16).to_le_bytes());
    header.extend_from_slice(&[4, 0]); // spec rev, checksum
    header.extend_from_slice(b"HEARTH  ");
    header.extend_from_slice(b"HEARTHVM    ");
    header.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    header.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    header.extend_from_slice(&count.to_le_bytes());
    header.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    header.extend_from_slice(&[0, 0, 0, 0]); // extended table length, checksum, reserved
    let mut table = header;
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut out = floating;
    out.extend_from_slice(&table);
    Ok(out)
}

/// Writes the MP table for `ncpus` CPUs at [`MPTABLE_START`].
pub fn setup(mem: &GuestMemory, ncpus: u8) -> Result<(), MptableError> {
    let bytes = build(ncpus, MPTABLE_START as u32)?;
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START))
        .map_err(MptableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_and_counts_are_valid() {
        for n in [1u8, 2, 8] {
            let t = build(n, 0x9fc00).unwrap();
            assert_eq!(&t[0..4], b"_MP_");
            assert_eq!(sum(&t[..16]), 0);
            let table = &t[16..];
            assert_eq!(&table[0..4], b"PCMP");
            let len = u16::from_le_bytes([table[4], table[5]]) as usize;
            assert_eq!(len, table.len());
            assert_eq!(sum(table), 0);
            let count = u16::from_le_bytes([table[34], table[35]]);
            assert_eq!(count as usize, n as usize + 2 + 24 + 2);
            assert_eq!(u32::from_le_bytes([t[4], t[5], t[6], t[7]]), 0x9fc10);
        }
    }

    #[test]
    fn rejects_bad_cpu_counts() {
        assert!(build(0, 0).is_err());
        assert!(build(255, 0).is_err());
        // 32 CPUs do not fit into 1 KiB.
        assert!(matches!(build(40, 0), Err(MptableError::TooLarge(_))));
    }
}
