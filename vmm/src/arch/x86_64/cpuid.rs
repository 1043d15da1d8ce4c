//! CPUID the guest sees: what KVM supports on this host, with per-vCPU topology fixed up and the
//! hypervisor bit set; and the XCR0 a vCPU starts with, which follows from it.

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm};

/// Host CPUID as supported by KVM, plus the TSC-deadline timer when KVM emulates it (KVM
/// leaves that bit to the VMM). Without it the guest calibrates its LAPIC timer against the PIT
/// at boot (LAPIC_CAL_LOOPS jiffies) and programs it through more exits afterwards; QEMU's
/// `-cpu host` exposes it too.
pub fn supported(kvm: &Kvm) -> Result<CpuId, kvm_ioctls::Error> {
    let mut cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)?;
    if kvm.check_extension(Cap::TscDeadlineTimer) {
        enable_tsc_deadline(&mut cpuid);
    }
    Ok(cpuid)
}

/// Sets CPUID.1:ECX.TSC_DEADLINE.
pub fn enable_tsc_deadline(cpuid: &mut CpuId) {
    for e in cpuid.as_mut_slice() {
        if e.function == LEAF_FEATURES {
            e.ecx |= ECX_TSC_DEADLINE;
        }
    }
}

const LEAF_FEATURES: u32 = 0x1;
const LEAF_PERFMON: u32 = 0xa;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const ECX_HYPERVISOR: u32 = 1 << 31;
const ECX_TSC_DEADLINE: u32 = 1 << 24;
const EDX_HTT: u32 = 1 << 28;

/// Filters `cpuid` for vCPU `cpu_id` of `ncpus`: APIC ids, logical processor count, hypervisor
/// bit, no architectural performance monitoring.
pub fn filter_for_vcpu(cpuid: &mut CpuId, cpu_id: u8, ncpus: u8) {
    for e in cpuid.as_mut_slice() {
        match e.function {
            LEAF_FEATURES => {
                e.ebx =
                    (e.ebx & 0x0000_ffff) | (u32::from(ncpus) << 16) | (u32::from(cpu_id) << 24);
                e.ecx |= ECX_HYPERVISOR;
                if ncpus > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_PERFMON => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => e.edx = u32::from(cpu_id),
            _ => {}
        }
    }
}

const LEAF_EXT_FEATURES: u32 = 0x7;
const LEAF_XSAVE: u32 = 0xd;
const ECX_XSAVE: u32 = 1 << 26;
const ECX_AVX: u32 = 1 << 28;
const EBX_AVX512F: u32 = 1 << 16;
const XFEATURE_X87: u64 = 1 << 0;
const XFEATURE_SSE: u64 = 1 << 1;
const XFEATURE_YMM: u64 = 1 << 2;
/// AVX-512: opmask, ZMM_Hi256 and Hi16_ZMM, enabled together or not at all.
const XFEATURE_AVX512: u64 = (1 << 5) | (1 << 6) | (1 << 7);

fn entry(cpuid: &CpuId, function: u32, index: u32) -> Option<&kvm_bindings::kvm_cpuid_entry2> {
    cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == function && e.index == index)
}

/// The XCR0 each vCPU starts with: the register state components every x86-64 Linux enables
/// when `cpuid` advertises them (x87, SSE, AVX, AVX-512), `None` without XSAVE.
///
/// Architecturally XCR0 starts at 1 (x87) and the guest kernel writes its own value with
/// XSETBV, which exits to KVM; the kernel then reads CPUID leaf 0xD for the size of its XSAVE
/// area, which KVM computes from the XCR0 it knows. Starting from the value Linux writes changes
/// nothing where XSETBV exits. It matters where it does not: QEMU's software SVM (the test
/// harness, `harness/README.md`) runs a nested guest's XSETBV without the intercept, so KVM kept
/// XCR0 = 1, loaded it again on every VM entry and reported an XSAVE size for x87 state alone;
/// the guest kernel found the sizes inconsistent ("XSAVE consistency problem", a WARN) and
/// turned XSAVE and AVX off. PKRU, AMX and later components depend on the guest kernel's
/// configuration and stay the guest's own choice.
pub fn initial_xcr0(cpuid: &CpuId) -> Option<u64> {
    let features = entry(cpuid, LEAF_FEATURES, 0)?;
    if features.ecx & ECX_XSAVE == 0 {
        return None;
    }
    let leaf = entry(cpuid, LEAF_XSAVE, 0)?;
    let supported = u64::from(leaf.eax) | (u64::from(leaf.edx) << 32);
    let mut xcr0 = XFEATURE_X87 | (supported & XFEATURE_SSE);
    let avx = features.ecx & ECX_AVX != 0 && supported & XFEATURE_YMM != 0;
    if avx && xcr0 & XFEATURE_SSE != 0 {
        xcr0 |= XFEATURE_YMM;
        let avx512f = entry(cpuid, LEAF_EXT_FEATURES, 0).is_some_and(|e| e.ebx & EBX_AVX512F != 0);
        if avx512f && supported & XFEATURE_AVX512 == XFEATURE_AVX512 {
            xcr0 |= XFEATURE_AVX512;
        }
    }
    Some(xcr0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn sets_apic_id_and_hypervisor_bit() {
        let entries = [
            kvm_cpuid_entry2 {
                function: 1,
                ebx: 0xff00_0800,
                edx: EDX_HTT,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xa,
                eax: 7,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 1,
                edx: 9,
                ..Default::default()
            },
        ];
        let mut c = CpuId::from_entries(&entries).unwrap();
        filter_for_vcpu(&mut c, 3, 4);
        let s = c.as_slice();
        assert_eq!(s[0].ebx >> 24, 3);
        assert_eq!((s[0].ebx >> 16) & 0xff, 4);
        assert_eq!(s[0].ebx & 0xffff, 0x0800);
        assert_ne!(s[0].ecx & ECX_HYPERVISOR, 0);
        assert_eq!(s[1].eax, 0);
        assert_eq!(s[2].edx, 3);
        filter_for_vcpu(&mut c, 0, 1);
        assert_eq!(c.as_slice()[0].edx & EDX_HTT, 0);
        enable_tsc_deadline(&mut c);
        assert_ne!(c.as_slice()[0].ecx & ECX_TSC_DEADLINE, 0);
        assert_eq!(c.as_slice()[1].ecx, 0);
    }

    fn leaves(ecx1: u32, ebx7: u32, xsave: u64) -> CpuId {
        let entries = [
            kvm_cpuid_entry2 {
                function: 1,
                ecx: ecx1,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 7,
                ebx: ebx7,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xd,
                eax: xsave as u32,
                edx: (xsave >> 32) as u32,
                ..Default::default()
            },
            // Sub-leaf 1 of 0xD must not be taken for sub-leaf 0.
            kvm_cpuid_entry2 {
                function: 0xd,
                index: 1,
                eax: 0xffff_ffff,
                ..Default::default()
            },
        ];
        CpuId::from_entries(&entries).unwrap()
    }

    #[test]
    fn initial_xcr0_is_what_linux_enables_of_the_advertised_state() {
        let xsave_avx = ECX_XSAVE | ECX_AVX;
        // No XSAVE: XCR0 is not set at all.
        assert_eq!(initial_xcr0(&leaves(ECX_AVX, 0, 0x7)), None);
        // The harness's CPU: x87, SSE, AVX and PKRU advertised; PKRU left to the guest.
        assert_eq!(initial_xcr0(&leaves(xsave_avx, 0, 0x207)), Some(0x7));
        // AVX state without the AVX feature bit (or the reverse): x87 and SSE only.
        assert_eq!(initial_xcr0(&leaves(ECX_XSAVE, 0, 0x7)), Some(0x3));
        assert_eq!(initial_xcr0(&leaves(xsave_avx, 0, 0x3)), Some(0x3));
        // AVX-512 only with AVX512F and all three of its components.
        assert_eq!(
            initial_xcr0(&leaves(xsave_avx, EBX_AVX512F, 0x2e7)),
            Some(0xe7)
        );
        assert_eq!(
            initial_xcr0(&leaves(xsave_avx, EBX_AVX512F, 0x67)),
            Some(0x7)
        );
        assert_eq!(initial_xcr0(&leaves(xsave_avx, 0, 0xe7)), Some(0x7));
        // Without leaf 0xD: nothing to go by.
        let no_leaf = CpuId::from_entries(&[kvm_cpuid_entry2 {
            function: 1,
            ecx: xsave_avx,
            ..Default::default()
        }])
        .unwrap();
        assert_eq!(initial_xcr0(&no_leaf), None);
    }
}
