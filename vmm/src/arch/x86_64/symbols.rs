//! Function symbols of an ELF `vmlinux` (its `.symtab`; also the sized assembly entry code), to
//! name the kernel function a vCPU was in when a guest hangs: `rip 0xffffffff81a2b3c4
//! (delay_tsc+0x34)` instead of a bare address.
//! Only the section headers, the symbol table and its string table are read, with every offset
//! and size checked against the file. A bzImage or a stripped kernel has no symbols: that is an
//! error the caller reports as "no symbols", never a failure of the VM.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Errors reading kernel symbols.
#[derive(Debug, thiserror::Error)]
pub enum SymbolsError {
    /// The file could not be read.
    #[error("reading kernel symbols: {0}")]
    Io(#[from] std::io::Error),
    /// Not a little-endian ELF64 file, or a header points outside the file.
    #[error("kernel symbols: {0}")]
    Format(&'static str),
    /// The ELF file has no symbol table (stripped, or not an ELF vmlinux).
    #[error("the kernel image has no symbol table")]
    NoSymtab,
}

const SHT_SYMTAB: u32 = 2;
const STT_NOTYPE: u8 = 0;
const STT_FUNC: u8 = 2;
const SHDR_SIZE: usize = 64;
const SYM_SIZE: usize = 24;
/// Bounds on what is read: a 6.12 vmlinux's symtab is a few MiB.
const MAX_TABLE: u64 = 256 << 20;

/// A kernel's function symbols, sorted by address.
#[derive(Debug, Default)]
pub struct KernelSymbols {
    funcs: Vec<(u64, u64, String)>,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn read_range(file: &File, len: u64, offset: u64, size: u64) -> Result<Vec<u8>, SymbolsError> {
    let end = offset
        .checked_add(size)
        .ok_or(SymbolsError::Format("range overflows"))?;
    if end > len || size > MAX_TABLE {
        return Err(SymbolsError::Format("a table lies outside the file"));
    }
    let mut buf = vec![0u8; size as usize];
    file.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

impl KernelSymbols {
    /// Reads the function symbols of the ELF file at `path`.
    pub fn load(path: &Path) -> Result<Self, SymbolsError> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        let ehdr = read_range(&file, len, 0, 64)?;
        if ehdr.get(..4) != Some(b"\x7fELF") || ehdr[4] != 2 || ehdr[5] != 1 {
            return Err(SymbolsError::Format("not a little-endian ELF64 file"));
        }
        let bad = SymbolsError::Format("truncated ELF header");
        let shoff = u64_at(&ehdr, 0x28).ok_or(bad)?;
        let shentsize = u16_at(&ehdr, 0x3a).ok_or(SymbolsError::Format("e_shentsize"))?;
        let shnum = u16_at(&ehdr, 0x3c).ok_or(SymbolsError::Format("e_shnum"))?;
        if usize::from(shentsize) != SHDR_SIZE {
            return Err(SymbolsError::Format("unexpected section header size"));
        }
        let shdrs = read_range(&file, len, shoff, u64::from(shnum) * SHDR_SIZE as u64)?;
        let section = |i: usize| shdrs.get(i * SHDR_SIZE..(i + 1) * SHDR_SIZE);
        let symtab = (0..usize::from(shnum))
            .filter_map(section)
            .find(|s| u32_at(s, 4) == Some(SHT_SYMTAB))
            .ok_or(SymbolsError::NoSymtab)?;
        let field = |s: &[u8], at| u64_at(s, at).ok_or(SymbolsError::Format("section header"));
        let syms = read_range(&file, len, field(symtab, 24)?, field(symtab, 32)?)?;
        let link = u32_at(symtab, 40).ok_or(SymbolsError::Format("sh_link"))? as usize;
        let strtab = section(link).ok_or(SymbolsError::Format("symtab's string table index"))?;
        let strs = read_range(&file, len, field(strtab, 24)?, field(strtab, 32)?)?;
        Ok(Self::from_tables(&syms, &strs))
    }

    /// Builds the table from raw ELF64 symbol entries and their string table (entries whose name
    /// lies outside the string table are skipped).
    fn from_tables(syms: &[u8], strs: &[u8]) -> Self {
        let mut funcs: Vec<(u64, u64, String)> = syms
            .chunks_exact(SYM_SIZE)
            .filter_map(|s| {
                let name_at = u32_at(s, 0)? as usize;
                let value = u64_at(s, 8)?;
                let size = u64_at(s, 16)?;
                // Functions, and the assembly entry code (`asm_sysvec_apic_timer_interrupt`,
                // `entry_SYSCALL_64`): untyped but sized. Untyped markers (`_text`) have no size.
                let kind = s[4] & 0xf;
                if kind != STT_FUNC && !(kind == STT_NOTYPE && size > 0) {
                    return None;
                }
                let rest = strs.get(name_at..)?;
                let name = &rest[..rest.iter().position(|&c| c == 0)?];
                (value != 0 && !name.is_empty())
                    .then(|| (value, size, String::from_utf8_lossy(name).into_owned()))
            })
            .collect();
        funcs.sort_unstable_by_key(|f| f.0);
        Self { funcs }
    }

    /// How many function symbols there are.
    pub fn len(&self) -> usize {
        self.funcs.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.funcs.is_empty()
    }

    /// Whether `addr` lies between the first function's start and the last one's end: the
    /// kernel's text (a `rip` there is the guest kernel's, named or not).
    pub fn covers(&self, addr: u64) -> bool {
        match (self.funcs.first(), self.funcs.last()) {
            (Some(first), Some((start, size, _))) => {
                first.0 <= addr && addr < start.saturating_add((*size).max(1))
            }
            _ => false,
        }
    }

    /// `name+0xoffset` of the function containing `addr` (the nearest one below it when its size
    /// is unknown), or `None`.
    pub fn describe(&self, addr: u64) -> Option<String> {
        let i = self.funcs.partition_point(|f| f.0 <= addr).checked_sub(1)?;
        let (start, size, name) = &self.funcs[i];
        let offset = addr - start;
        if *size != 0 && offset >= *size {
            return None;
        }
        Some(format!("{name}+{offset:#x}"))
    }
}

/// How far past a host symbol an address still counts as inside it (kallsyms has no sizes;
/// kernel functions are far smaller).
pub const HOST_SYMBOL_REACH: u64 = 64 << 10;

/// Where the host's own kernel lists its symbols (with their modules).
pub const HOST_KALLSYMS: &str = "/proc/kallsyms";

/// `name+0xoffset [module]` of the host kernel text symbol nearest below `addr`, from a
/// `/proc/kallsyms`-format `table` (`None` when the table hides addresses, as it does for
/// unprivileged readers, or has no text symbol within [`HOST_SYMBOL_REACH`] below `addr`). A guest vCPU whose registers name
/// the host kernel (typically the host's `__svm_vcpu_run`, right after its VMRUN) did not get
/// there by itself: the virtualization below the host handed the guest the host's state.
pub fn describe_host_address(table: &str, addr: u64) -> Option<String> {
    let mut best: Option<(u64, &str, Option<&str>)> = None;
    for line in table.lines() {
        let mut f = line.split_whitespace();
        let (Some(a), Some(kind), Some(name)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if !matches!(kind, "t" | "T") {
            continue;
        }
        let Ok(a) = u64::from_str_radix(a, 16) else {
            continue;
        };
        if a != 0 && a <= addr && best.is_none_or(|(b, _, _)| a > b) {
            best = Some((a, name, f.next()));
        }
    }
    let (start, name, module) = best?;
    if addr - start >= HOST_SYMBOL_REACH {
        return None;
    }
    let module = module.map(|m| format!(" {m}")).unwrap_or_default();
    Some(format!("{name}+{:#x}{module}", addr - start))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sym(name_at: u32, info: u8, value: u64, size: u64) -> Vec<u8> {
        let mut s = Vec::new();
        s.extend_from_slice(&name_at.to_le_bytes());
        s.extend_from_slice(&[info, 0, 1, 0]);
        s.extend_from_slice(&value.to_le_bytes());
        s.extend_from_slice(&size.to_le_bytes());
        s
    }

    #[test]
    fn sized_assembly_entry_code_is_named_and_markers_are_not() {
        let strs = b"\0asm_sysvec_apic_timer_interrupt\0__irqentry_text_end\0";
        let mut syms = sym(1, STT_NOTYPE, 0xffff_ffff_8160_0bf0, 0x1b);
        syms.extend(sym(33, STT_NOTYPE, 0xffff_ffff_8160_0cf0, 0));
        let k = KernelSymbols::from_tables(&syms, strs);
        assert_eq!(k.len(), 1);
        // Where a vCPU stopped while an interrupt was being delivered (seen in vm_boot).
        assert_eq!(
            k.describe(0xffff_ffff_8160_0bf0).as_deref(),
            Some("asm_sysvec_apic_timer_interrupt+0x0")
        );
        assert_eq!(k.describe(0xffff_ffff_8160_0cf0), None);
    }

    #[test]
    fn addresses_map_to_the_function_that_contains_them() {
        let strs = b"\0delay_tsc\0start_kernel\0jiffies\0";
        let mut syms = sym(0, 0, 0, 0);
        syms.extend(sym(1, STT_FUNC, 0xffff_ffff_8100_1000, 0x40));
        syms.extend(sym(11, STT_FUNC, 0xffff_ffff_8100_0000, 0));
        // An object (jiffies) and a name past the string table are not functions to report.
        syms.extend(sym(24, 1, 0xffff_ffff_8100_1020, 8));
        syms.extend(sym(999, STT_FUNC, 0xffff_ffff_8100_2000, 8));
        let k = KernelSymbols::from_tables(&syms, strs);
        assert_eq!(k.len(), 2);
        assert_eq!(
            k.describe(0xffff_ffff_8100_1034).as_deref(),
            Some("delay_tsc+0x34")
        );
        assert_eq!(
            k.describe(0xffff_ffff_8100_0010).as_deref(),
            Some("start_kernel+0x10")
        );
        assert_eq!(
            k.describe(0xffff_ffff_8100_1040),
            None,
            "past delay_tsc's end"
        );
        assert_eq!(k.describe(0x1000), None, "below every symbol");
        assert!(k.covers(0xffff_ffff_8100_103f) && k.covers(0xffff_ffff_8100_0000));
        assert!(!k.covers(0xffff_ffff_8100_1040) && !k.covers(0xffff_ffff_c032_ddcc));
    }

    #[test]
    fn host_addresses_are_named_from_a_kallsyms_table() {
        let table = "ffffffff81000000 T _stext\n\
                     ffffffffc0325170 t svm_vcpu_run\t[kvm_amd]\n\
                     ffffffffc032dd30 t __svm_vcpu_run\t[kvm_amd]\n\
                     ffffffffc032e000 d some_data\t[kvm_amd]\n\
                     garbage line\n";
        assert_eq!(
            describe_host_address(table, 0xffff_ffff_c032_ddcc).as_deref(),
            Some("__svm_vcpu_run+0x9c [kvm_amd]")
        );
        assert_eq!(
            describe_host_address(table, 0xffff_ffff_8100_0010).as_deref(),
            Some("_stext+0x10")
        );
        assert_eq!(describe_host_address(table, 0x1000), None);
        assert_eq!(
            describe_host_address(table, 0xffff_ffff_c032_dd30 + HOST_SYMBOL_REACH),
            None,
            "too far past the last text symbol"
        );
        // What an unprivileged reader sees: every address zero.
        let hidden = "0000000000000000 T _stext\n0000000000000000 t __svm_vcpu_run\t[kvm_amd]\n";
        assert_eq!(describe_host_address(hidden, 0xffff_ffff_c032_ddcc), None);
    }

    #[test]
    fn non_elf_and_truncated_files_are_errors() {
        let dir = std::env::temp_dir().join(format!("hearth-syms-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("not-elf");
        std::fs::write(&p, b"MZ this is a bzImage, say").unwrap();
        assert!(matches!(
            KernelSymbols::load(&p),
            Err(SymbolsError::Io(_)) | Err(SymbolsError::Format(_))
        ));
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x28..0x30].copy_from_slice(&(1u64 << 40).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        std::fs::write(&p, &elf).unwrap();
        assert!(matches!(
            KernelSymbols::load(&p),
            Err(SymbolsError::Format(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
