//! x86-64 specifics: the address map, CPUID, the boot vCPU's state, and saving and
//! restoring the CPU and irqchip state KVM keeps.

pub mod cpuid;
pub mod layout;
pub mod regs;
pub mod snapshot;
