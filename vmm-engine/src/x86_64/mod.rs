//! x86-64 specifics: the address map, CPUID and the boot vCPU's state.

pub mod cpuid;
pub mod layout;
pub mod regs;
