//! KVM's paravirtual clock, used only for its TSC scale: QEMU with `-cpu host` and
//! other VMMs often leave CPUID leaves 0x15/0x16/0x40000010 empty, but every KVM guest
//! can ask for a pvclock page, whose `tsc_to_system_mul`/`tsc_shift` give the TSC
//! frequency exactly (as Linux's `pvclock_tsc_khz` does).

use core::arch::x86_64::CpuidResult;
use core::cell::UnsafeCell;

use super::{cpuid, wrmsr};

/// KVM's CPUID signature, leaf 0x40000000 ebx/ecx/edx.
const KVM_SIGNATURE: &[u8; 12] = b"KVMKVMKVM\0\0\0";
/// Leaf 0x40000001 eax: KVM_FEATURE_CLOCKSOURCE2 (the MSR below exists).
const KVM_FEATURE_CLOCKSOURCE2: u32 = 1 << 3;
/// MSR_KVM_SYSTEM_TIME_NEW: physical address of the pvclock page | enable bit.
const MSR_KVM_SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;
const ENABLE: u64 = 1;

/// `struct pvclock_vcpu_time_info`.
#[repr(C, align(64))]
struct PvclockTimeInfo {
    version: u32,
    _pad0: u32,
    tsc_timestamp: u64,
    system_time: u64,
    tsc_to_system_mul: u32,
    tsc_shift: i8,
    flags: u8,
    _pad: [u8; 2],
}

/// The page the hypervisor writes; only read through volatile loads.
struct Shared(UnsafeCell<PvclockTimeInfo>);

// SAFETY: the probe has one vCPU; the hypervisor writes and the probe only reads.
unsafe impl Sync for Shared {}

static TIME_INFO: Shared = Shared(UnsafeCell::new(PvclockTimeInfo {
    version: 0,
    _pad0: 0,
    tsc_timestamp: 0,
    system_time: 0,
    tsc_to_system_mul: 0,
    tsc_shift: 0,
    flags: 0,
    _pad: [0; 2],
}));

/// TSC kHz from the pvclock scale, if this is KVM with kvmclock. `hv` is CPUID leaf
/// 0x40000000.
pub fn tsc_khz(hv: &CpuidResult) -> Option<u64> {
    let mut signature = [0u8; 12];
    signature[0..4].copy_from_slice(&hv.ebx.to_le_bytes());
    signature[4..8].copy_from_slice(&hv.ecx.to_le_bytes());
    signature[8..12].copy_from_slice(&hv.edx.to_le_bytes());
    if &signature != KVM_SIGNATURE || hv.eax < 0x4000_0001 {
        return None;
    }
    if cpuid(0x4000_0001, 0).eax & KVM_FEATURE_CLOCKSOURCE2 == 0 {
        return None;
    }
    let info = TIME_INFO.0.get();
    // The image is identity-mapped: the static's address is its physical address.
    wrmsr(MSR_KVM_SYSTEM_TIME_NEW, info as u64 | ENABLE);
    loop {
        // SAFETY: `info` points at the static, which the hypervisor updates; volatile
        // reads of plain integers, checked with the version protocol (odd = updating).
        let (v1, mul, shift, v2) = unsafe {
            let v1 = core::ptr::addr_of!((*info).version).read_volatile();
            let mul = core::ptr::addr_of!((*info).tsc_to_system_mul).read_volatile();
            let shift = core::ptr::addr_of!((*info).tsc_shift).read_volatile();
            let v2 = core::ptr::addr_of!((*info).version).read_volatile();
            (v1, mul, shift, v2)
        };
        if v1 != v2 || v1 & 1 != 0 {
            continue;
        }
        if mul == 0 {
            return None;
        }
        let khz = (1_000_000u64 << 32) / u64::from(mul);
        return Some(if shift < 0 {
            khz << -shift
        } else {
            khz >> shift
        });
    }
}
