//! Vireo's probe guest: a freestanding PVH kernel that reports what a VMM gives it
//! (start info, ACPI, memory, CPUs) on the serial console and benchmarks the CPU.
//!
//! The boot stub ([`boot`]) reaches 64-bit mode and drops to CPL3 at once: under PVM,
//! CPL0 code is interpreted ~1000x slower while CPL3 code runs natively. From then on
//! privileged instructions trap to small CPL0 handlers (see [`arch`]).
#![no_std]
#![no_main]

extern crate alloc;

mod acpi;
mod agent;
mod arch;
mod blk;
mod boot;
mod commands;
mod gpu;
mod heap;
mod input;
mod net;
mod pci;
mod phys;
mod pvh;
mod rt;
mod rtc;
mod screen;
mod serial;
mod sync;
mod virtio;
mod vsock;

/// The CPL3 entry the boot stub `iretq`s to, on the boot user stack.
#[no_mangle]
extern "C" fn probe_main() -> ! {
    let main_tsc = arch::rdtsc();
    // Before anything that traps: even writing to the serial port goes through #GP.
    arch::idt::init();
    let tsc_khz = arch::tsc_khz();
    probe!(
        "READY entry_to_main_cycles={} tsc_khz={}",
        main_tsc.wrapping_sub(boot::boot_tsc()),
        tsc_khz
    );
    commands::run(tsc_khz)
}
