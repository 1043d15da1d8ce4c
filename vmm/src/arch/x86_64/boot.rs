//! Kernel loading and the boot information handed to it: PVH `hvm_start_info` or the Linux
//! zero page (`boot_params`), the command line and the e820 memory map.

use std::fs::File;
use std::io::{Seek, SeekFrom};

use linux_loader::loader::bootparam::{boot_params, setup_header};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{Cmdline, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::kernel_reader::KernelReader;
use super::layout::{
    CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START, MPTABLE_START, PVH_INFO_START, PVH_MEMMAP_START,
    ZERO_PAGE_START,
};
use crate::devices::virtio::GuestMemory;

/// Errors loading a kernel or writing boot information.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file could not be read.
    #[error("reading kernel image: {0}")]
    KernelFile(#[source] std::io::Error),
    /// Neither an ELF nor a bzImage, or a loader error.
    #[error("loading kernel (tried ELF, then bzImage): {0}")]
    Load(linux_loader::loader::Error),
    /// A bzImage that cannot be entered in 64-bit mode.
    #[error(
        "bzImage does not support the 64-bit entry point (boot protocol >= 2.06 with XLF_KERNEL_64 needed)"
    )]
    BzImageNot64Bit,
    /// The command line is invalid or too long.
    #[error("kernel command line: {0}")]
    Cmdline(String),
    /// Writing boot information into guest memory failed.
    #[error("writing {what} to guest memory: {source}")]
    Write {
        /// Which structure.
        what: &'static str,
        /// The memory error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// How the kernel is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootProtocol {
    /// PVH: 32-bit protected mode, no paging, `rbx` = start info.
    Pvh,
    /// Linux 64-bit boot protocol: long mode with identity-mapped page tables, `rsi` = zero page.
    Linux64,
}

/// Where and how the loaded kernel is entered.
#[derive(Debug, Clone, Copy)]
pub struct KernelEntry {
    /// Entry protocol.
    pub protocol: BootProtocol,
    /// Entry point address.
    pub entry: GuestAddress,
    /// The bzImage setup header, when the kernel was a bzImage.
    pub setup_header: Option<setup_header>,
}

const XLF_KERNEL_64: u16 = 1;

/// Loads an ELF vmlinux (PVH when the note is present) or a bzImage into guest memory.
pub fn load_kernel(mem: &GuestMemory, kernel: &mut File) -> Result<KernelEntry, BootError> {
    let mut kernel = KernelReader::with_host_threads(kernel);
    kernel
        .seek(SeekFrom::Start(0))
        .map_err(BootError::KernelFile)?;
    match Elf::load(mem, None, &mut kernel, Some(GuestAddress(HIMEM_START))) {
        Ok(res) => {
            let (protocol, entry) = match res.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(addr) => (BootProtocol::Pvh, addr),
                _ => (BootProtocol::Linux64, res.kernel_load),
            };
            Ok(KernelEntry {
                protocol,
                entry,
                setup_header: None,
            })
        }
        Err(linux_loader::loader::Error::Elf(
            linux_loader::loader::elf::Error::InvalidElfMagicNumber,
        )) => {
            let res = BzImage::load(mem, Some(GuestAddress(HIMEM_START)), &mut kernel, None)
                .map_err(BootError::Load)?;
            let hdr = res.setup_header.ok_or(BootError::BzImageNot64Bit)?;
            if hdr.version < 0x0206 || hdr.xloadflags & XLF_KERNEL_64 == 0 {
                return Err(BootError::BzImageNot64Bit);
            }
            Ok(KernelEntry {
                protocol: BootProtocol::Linux64,
                entry: GuestAddress(res.kernel_load.0 + 0x200),
                setup_header: Some(hdr),
            })
        }
        Err(e) => Err(BootError::Load(e)),
    }
}

/// One e820 / PVH memory map entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemRange {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
}

const E820_RAM: u32 = 1;

/// Usable RAM as the guest should see it: base memory below the MP table, then everything from
/// 1 MiB up in each guest memory region.
pub fn e820_ram(mem: &GuestMemory) -> Vec<MemRange> {
    let mut out = vec![MemRange {
        addr: 0,
        size: MPTABLE_START,
    }];
    for region in mem.iter() {
        let start = region.start_addr().0.max(HIMEM_START);
        let end = region.start_addr().0 + region.len();
        if end > start {
            out.push(MemRange {
                addr: start,
                size: end - start,
            });
        }
    }
    out
}

/// Writes the command line at [`CMDLINE_START`].
pub fn write_cmdline(mem: &GuestMemory, cmdline: &Cmdline) -> Result<usize, BootError> {
    let c = cmdline
        .as_cstring()
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    let bytes = c.as_bytes_with_nul();
    if bytes.len() > CMDLINE_MAX_SIZE {
        return Err(BootError::Cmdline(format!(
            "{} bytes, max {CMDLINE_MAX_SIZE}",
            bytes.len()
        )));
    }
    mem.write_slice(bytes, GuestAddress(CMDLINE_START))
        .map_err(|source| BootError::Write {
            what: "command line",
            source,
        })?;
    Ok(bytes.len())
}

const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;

/// Writes the PVH start info and its memory map.
pub fn write_pvh_info(mem: &GuestMemory, ram: &[MemRange]) -> Result<(), BootError> {
    // struct hvm_start_info (version 1): magic, version, flags, nr_modules, modlist_paddr,
    // cmdline_paddr, rsdp_paddr, memmap_paddr, memmap_entries, reserved.
    let mut info = Vec::with_capacity(56);
    info.extend_from_slice(&XEN_HVM_START_MAGIC.to_le_bytes());
    info.extend_from_slice(&1u32.to_le_bytes());
    info.extend_from_slice(&0u32.to_le_bytes());
    info.extend_from_slice(&0u32.to_le_bytes());
    info.extend_from_slice(&0u64.to_le_bytes());
    info.extend_from_slice(&CMDLINE_START.to_le_bytes());
    info.extend_from_slice(&0u64.to_le_bytes());
    info.extend_from_slice(&PVH_MEMMAP_START.to_le_bytes());
    info.extend_from_slice(&(ram.len() as u32).to_le_bytes());
    info.extend_from_slice(&0u32.to_le_bytes());
    mem.write_slice(&info, GuestAddress(PVH_INFO_START))
        .map_err(|source| BootError::Write {
            what: "PVH start info",
            source,
        })?;
    // struct hvm_memmap_table_entry: addr, size, type, reserved.
    let mut map = Vec::with_capacity(ram.len() * 24);
    for r in ram {
        map.extend_from_slice(&r.addr.to_le_bytes());
        map.extend_from_slice(&r.size.to_le_bytes());
        map.extend_from_slice(&E820_RAM.to_le_bytes());
        map.extend_from_slice(&0u32.to_le_bytes());
    }
    mem.write_slice(&map, GuestAddress(PVH_MEMMAP_START))
        .map_err(|source| BootError::Write {
            what: "PVH memory map",
            source,
        })
}

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;

/// Writes the Linux boot protocol zero page.
pub fn write_zero_page(
    mem: &GuestMemory,
    ram: &[MemRange],
    cmdline_len: usize,
    header: Option<setup_header>,
) -> Result<(), BootError> {
    let mut params = boot_params::default();
    if let Some(h) = header {
        params.hdr = h;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    if params.hdr.kernel_alignment == 0 {
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    for (i, r) in ram.iter().take(params.e820_table.len()).enumerate() {
        params.e820_table[i].addr = r.addr;
        params.e820_table[i].size = r.size;
        params.e820_table[i].r#type = E820_RAM;
    }
    params.e820_entries = ram.len().min(params.e820_table.len()) as u8;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))
        .map_err(|source| BootError::Write {
            what: "zero page",
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_skips_the_legacy_hole() {
        let mem = super::super::create_guest_memory(64 << 20).unwrap();
        let ram = e820_ram(&mem);
        assert_eq!(
            ram[0],
            MemRange {
                addr: 0,
                size: MPTABLE_START
            }
        );
        assert_eq!(
            ram[1],
            MemRange {
                addr: HIMEM_START,
                size: (64 << 20) - HIMEM_START
            }
        );
    }

    #[test]
    fn pvh_info_has_magic_and_memmap() {
        let mem = super::super::create_guest_memory(64 << 20).unwrap();
        let ram = e820_ram(&mem);
        write_pvh_info(&mem, &ram).unwrap();
        let magic: u32 = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(magic, XEN_HVM_START_MAGIC);
        let entries: u32 = mem.read_obj(GuestAddress(PVH_INFO_START + 48)).unwrap();
        assert_eq!(entries, 2);
        let size1: u64 = mem
            .read_obj(GuestAddress(PVH_MEMMAP_START + 24 + 8))
            .unwrap();
        assert_eq!(size1, (64 << 20) - HIMEM_START);
    }

    #[test]
    fn garbage_kernel_is_rejected() {
        let mem = super::super::create_guest_memory(16 << 20).unwrap();
        let mut f = tempfile_with(b"definitely not a kernel image, just some bytes");
        assert!(load_kernel(&mem, &mut f).is_err());
    }

    fn tempfile_with(data: &[u8]) -> File {
        use std::io::Write;
        let path = std::env::temp_dir().join(format!("hearth-vmm-test-{}", std::process::id()));
        let mut f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.write_all(data).unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }
}
