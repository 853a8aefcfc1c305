//! Local APIC in x2APIC mode (enabled by the boot stub at CPL0). MSR access needs CPL0,
//! so these functions are for trap handlers.

use core::arch::asm;

/// x2APIC end-of-interrupt register.
const X2APIC_EOI: u32 = 0x80B;

/// Signals end of interrupt. CPL0 only (called from the trap path).
pub fn eoi() {
    // SAFETY: writing 0 to the x2APIC EOI MSR acknowledges the in-service interrupt;
    // the boot stub enabled x2APIC mode, so the MSR exists.
    unsafe {
        asm!("wrmsr", in("ecx") X2APIC_EOI, in("eax") 0u32, in("edx") 0u32, options(nomem, nostack))
    };
}
