//! x86-64 glue: the instructions the probe uses and what runs at CPL0.
//!
//! Everything here runs at CPL3 unless stated. Port I/O and `cli`/`sti` are plain
//! instructions: at CPL3 they raise #GP (PVM does not honour IOPL 3) and the boot stub's
//! #GP entry performs them, so they cost one trap (~100 µs) each; `rep outsb` moves a
//! whole buffer in one trap.

pub mod apic;
pub mod idt;
pub mod kvmclock;
pub mod port;

use core::arch::asm;
use core::arch::x86_64::{__cpuid_count, CpuidResult};

/// Reads the time-stamp counter.
#[inline(always)]
pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no side effects; CR4.TSD is clear so it works at CPL3.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// `cpuid` (a VM exit: ~13 k cycles here, so callers cache what they learn).
pub fn cpuid(leaf: u32, subleaf: u32) -> CpuidResult {
    __cpuid_count(leaf, subleaf)
}

/// TSC frequency in kHz: the hypervisor timing leaf 0x40000010, else the CPU's own
/// leaves 0x15 (crystal ratio) and 0x16 (base frequency), else KVM's pvclock scale; 0
/// when nobody says.
pub fn tsc_khz() -> u64 {
    let hv = cpuid(0x4000_0000, 0);
    if hv.eax >= 0x4000_0010 {
        let timing = cpuid(0x4000_0010, 0);
        if timing.eax != 0 {
            return u64::from(timing.eax);
        }
    }
    let max = cpuid(0, 0).eax;
    if max >= 0x15 {
        let tsc = cpuid(0x15, 0);
        if tsc.eax != 0 && tsc.ebx != 0 && tsc.ecx != 0 {
            return u64::from(tsc.ecx) * u64::from(tsc.ebx) / u64::from(tsc.eax) / 1000;
        }
    }
    if max >= 0x16 {
        let freq = cpuid(0x16, 0);
        if freq.eax != 0 {
            return u64::from(freq.eax) * 1000;
        }
    }
    kvmclock::tsc_khz(&hv).unwrap_or(0)
}

/// The last resort when power-off and reset requests were ignored: a triple fault,
/// which every VMM turns into a reset (and QEMU with `-no-reboot` into an exit).
pub fn triple_fault() -> ! {
    crate::boot::mark_in_fault();
    // SAFETY: ud2 raises #UD; with the in-fault mark set, the trap path loads an empty
    // IDT and faults again, which shuts the machine down. Nothing returns here.
    unsafe { asm!("ud2", options(noreturn)) }
}

/// Enables interrupts (emulated by the #GP handler at CPL3).
#[allow(dead_code)] // Used by the device tests that take interrupts.
pub fn enable_interrupts() {
    // SAFETY: sti only changes IF; the IDT is filled before anyone enables interrupts.
    unsafe { asm!("sti", options(nomem, nostack)) };
}

/// Disables interrupts (emulated by the #GP handler at CPL3).
#[allow(dead_code)]
pub fn disable_interrupts() {
    // SAFETY: cli only changes IF.
    unsafe { asm!("cli", options(nomem, nostack)) };
}

/// Reads an MSR (performed by the #GP handler at CPL0: one trap).
#[allow(dead_code)] // Part of the MSR API the device tests use (x2APIC timer).
pub fn rdmsr(msr: u32) -> u64 {
    let (low, high): (u32, u32);
    // SAFETY: reading an MSR has no memory effects; callers only name MSRs that CPUID
    // said exist (a missing one faults, which is reported and powers off).
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") low, out("edx") high, options(nomem, nostack))
    };
    u64::from(high) << 32 | u64::from(low)
}

/// Writes an MSR (performed by the #GP handler at CPL0: one trap).
pub fn wrmsr(msr: u32, value: u64) {
    // SAFETY: callers only write MSRs whose effect they own (kvmclock's page, x2APIC
    // registers); memory the write makes the hypervisor update is set aside for it.
    unsafe {
        asm!(
            "wrmsr",
            in("ecx") msr,
            in("eax") value as u32,
            in("edx") (value >> 32) as u32,
            options(nostack),
        )
    };
}
