//! The CPUID the guest sees: what KVM supports on this host, with each vCPU's topology
//! filled in and the few bits that must not leak through cleared.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// CPUID.1:ECX bit 31: "running under a hypervisor".
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.7.0:EDX bit 29: IA32_ARCH_CAPABILITIES. PVM does not emulate the MSR
/// consistently (QEMU needs `-cpu host,-arch-capabilities` here too), so it is hidden.
const LEAF7_EDX_ARCH_CAPABILITIES: u32 = 1 << 29;
/// KVM's paravirtual leaves, and the "timing information" leaf (TSC and LAPIC bus
/// frequency in kHz) that guests such as the probe read to convert TSC ticks to time.
const KVM_CPUID_SIGNATURE: u32 = 0x4000_0000;
const HYPERVISOR_TIMING_LEAF: u32 = 0x4000_0010;
/// KVM's LAPIC timer runs at a 1 GHz bus clock.
const KVM_APIC_BUS_KHZ: u32 = 1_000_000;

/// Adjusts KVM's supported CPUID for vCPU `index` of `count`.
pub fn for_vcpu(supported: &CpuId, index: u8, count: u8, tsc_khz: Option<u32>) -> CpuId {
    let mut entries: Vec<kvm_cpuid_entry2> = supported.as_slice().to_vec();
    for entry in entries.iter_mut() {
        match entry.function {
            1 => {
                // Initial APIC ID in EBX[31:24], logical processor count in EBX[23:16].
                entry.ebx =
                    (entry.ebx & 0x0000_ffff) | (u32::from(index) << 24) | (u32::from(count) << 16);
                entry.ecx |= LEAF1_ECX_HYPERVISOR;
                // HTT: the count in EBX[23:16] is valid.
                entry.edx |= 1 << 28;
            }
            4 => {
                // Cores per package - 1 in EAX[31:26]: each vCPU is a core of one package.
                entry.eax = (entry.eax & 0x03ff_ffff) | ((u32::from(count) - 1) << 26);
            }
            7 if entry.index == 0 => entry.edx &= !LEAF7_EDX_ARCH_CAPABILITIES,
            0xb | 0x1f => {
                // Extended topology: EDX is this vCPU's x2APIC ID. Level 0 = SMT (1 thread
                // per core), level 1 = core (all vCPUs); ECX[15:8] is the level type.
                entry.edx = u32::from(index);
                match entry.index {
                    0 => {
                        entry.eax = 0;
                        entry.ebx = 1;
                        entry.ecx = 1 << 8;
                    }
                    1 => {
                        entry.eax = bits_for(count);
                        entry.ebx = u32::from(count);
                        entry.ecx = (2 << 8) | 1;
                    }
                    level => {
                        entry.eax = 0;
                        entry.ebx = 0;
                        entry.ecx = level;
                    }
                }
            }
            KVM_CPUID_SIGNATURE if tsc_khz.is_some() => {
                entry.eax = entry.eax.max(HYPERVISOR_TIMING_LEAF)
            }
            _ => {}
        }
    }
    if let Some(khz) = tsc_khz {
        entries.retain(|e| e.function != HYPERVISOR_TIMING_LEAF);
        entries.push(kvm_cpuid_entry2 {
            function: HYPERVISOR_TIMING_LEAF,
            eax: khz,
            ebx: KVM_APIC_BUS_KHZ,
            ..Default::default()
        });
    }
    CpuId::from_entries(&entries).expect("no more entries than KVM returned plus one")
}

/// How many APIC-ID bits address `count` cores.
fn bits_for(count: u8) -> u32 {
    u32::from(count.max(1)).next_power_of_two().trailing_zeros()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    #[test]
    fn topology_and_hidden_bits() {
        let mut leaf7 = entry(7, 0);
        leaf7.edx = LEAF7_EDX_ARCH_CAPABILITIES | 1;
        let supported = CpuId::from_entries(&[
            entry(1, 0),
            leaf7,
            entry(0xb, 0),
            entry(0xb, 1),
            entry(KVM_CPUID_SIGNATURE, 0),
        ])
        .unwrap();
        let cpuid = for_vcpu(&supported, 2, 3, Some(2_000_000));
        let get = |f: u32, i: u32| {
            *cpuid
                .as_slice()
                .iter()
                .find(|e| e.function == f && e.index == i)
                .unwrap()
        };
        assert_eq!(get(1, 0).ebx >> 24, 2);
        assert_ne!(get(1, 0).ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_eq!(get(7, 0).edx, 1);
        assert_eq!(get(0xb, 1).ebx, 3);
        assert_eq!(get(0xb, 1).eax, 2);
        assert_eq!(get(0xb, 0).edx, 2);
        assert_eq!(get(HYPERVISOR_TIMING_LEAF, 0).eax, 2_000_000);
        assert_eq!(get(KVM_CPUID_SIGNATURE, 0).eax, HYPERVISOR_TIMING_LEAF);
    }
}
