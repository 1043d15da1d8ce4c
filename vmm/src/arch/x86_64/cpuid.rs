//! CPUID the guest sees: what KVM supports on this host, with per-vCPU topology fixed up and the
//! hypervisor bit set.

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
}
