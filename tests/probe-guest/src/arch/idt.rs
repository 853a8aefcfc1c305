//! The IDT and the Rust side of traps.
//!
//! The gates are written from CPL3 (the IDT page is user-writable): a 256-entry loop at
//! CPL0 would be interpreted and cost milliseconds. Traps enter at CPL0:
//! - #GP from CPL3 on an I/O, `cli`/`sti` or MSR instruction is performed by the boot
//!   stub's #GP entry, which never reaches Rust;
//! - any other exception is sent back to CPL3, to [`probe_fault`], which prints a report
//!   and powers off (at CPL3 it runs natively and may use SSE, which PVM's CPL0
//!   interpreter cannot execute);
//! - interrupt vectors (32..=255) call [`pvh_interrupt`] at CPL0, which runs the handler
//!   registered with [`set_handler`] and signals EOI. **Handlers run interpreted and must
//!   not use SSE**: keep them to a few integer operations (set a flag, count).

use core::fmt::Write;
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::arch::apic;
use crate::boot;

/// Vector of the double fault, which gets its own stack (IST 1).
const DOUBLE_FAULT: u8 = 8;
/// Vector of the general-protection fault, whose entry emulates privileged instructions.
const GENERAL_PROTECTION: u8 = 13;
/// Vector of the page fault (its report includes CR2).
const PAGE_FAULT: u64 = 14;
/// First vector that is not a CPU exception.
const FIRST_INTERRUPT: usize = 32;

/// Gate type: present, DPL 0, 64-bit interrupt gate (IF cleared on entry).
const GATE_INTERRUPT: u64 = 0x8E;

/// Registers saved by the boot stub's common trap path, lowest address first.
#[repr(C)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// An interrupt handler; runs at CPL0, interpreted, with no SSE: keep it tiny.
pub type Handler = fn(&mut TrapFrame);

/// Registered handlers for vectors 32..=255, as `fn` addresses (0: none).
static HANDLERS: [AtomicUsize; 256 - FIRST_INTERRUPT] =
    [const { AtomicUsize::new(0) }; 256 - FIRST_INTERRUPT];

/// Interrupts that arrived with no handler registered.
static UNHANDLED: AtomicUsize = AtomicUsize::new(0);

/// Writes the 256 gates. Must run before anything that can trap (port I/O included).
pub fn init() {
    let idt = boot::idt_ptr();
    for vector in 0..=255u8 {
        let handler = if vector == GENERAL_PROTECTION {
            boot::gp_entry_addr()
        } else {
            boot::isr_addr(vector)
        };
        let ist = if vector == DOUBLE_FAULT { 1 } else { 0 };
        let low = (handler & 0xFFFF)
            | (u64::from(boot::KERNEL_CS) << 16)
            | (ist << 32)
            | (GATE_INTERRUPT << 40)
            | (((handler >> 16) & 0xFFFF) << 48);
        let high = handler >> 32;
        let index = 2 * usize::from(vector);
        // SAFETY: the IDT is 512 quadwords of static, user-writable memory that only
        // this function writes; the CPU reads a gate only when that vector is raised,
        // which cannot happen for a gate still being written (no interrupts are enabled
        // and this code does not fault).
        unsafe {
            core::ptr::addr_of_mut!((*idt)[index]).write_volatile(low);
            core::ptr::addr_of_mut!((*idt)[index + 1]).write_volatile(high);
        }
    }
}

/// Registers `handler` for interrupt `vector` (32..=255).
#[allow(dead_code)] // Used by the device tests that take interrupts.
pub fn set_handler(vector: u8, handler: Handler) {
    let index = usize::from(vector)
        .checked_sub(FIRST_INTERRUPT)
        .expect("interrupt vectors start at 32");
    HANDLERS[index].store(handler as usize, Ordering::Release);
}

/// Number of interrupts that arrived without a handler.
#[allow(dead_code)]
pub fn unhandled_interrupts() -> usize {
    UNHANDLED.load(Ordering::Relaxed)
}

/// Called by the boot stub for interrupt vectors, at CPL0 on the TSS stack.
#[no_mangle]
extern "C" fn pvh_interrupt(frame: &mut TrapFrame) {
    let index = (frame.vector as usize).wrapping_sub(FIRST_INTERRUPT);
    match HANDLERS.get(index).map(|h| h.load(Ordering::Acquire)) {
        Some(0) | None => {
            UNHANDLED.fetch_add(1, Ordering::Relaxed);
        }
        Some(handler) => {
            // SAFETY: only `set_handler` stores non-zero values, and it stores `Handler`s.
            let handler = unsafe { core::mem::transmute::<usize, Handler>(handler) };
            handler(frame);
        }
    }
    apic::eoi();
}

/// Where the boot stub sends exceptions: at CPL3, on the fault stack, with the trap
/// frame (still on the kernel stack, which is user-readable). Prints one line and powers
/// off. Formats on the stack and bypasses the console lock, which the faulting code may
/// hold.
#[no_mangle]
extern "C" fn probe_fault(frame: &TrapFrame) -> ! {
    let cr2 = if frame.vector == PAGE_FAULT {
        boot::fault_cr2()
    } else {
        0
    };
    let mut line = crate::serial::StackLine::new();
    let _ = write!(
        line,
        "FAULT vector={} error=0x{:x} rip=0x{:x} cs=0x{:x} rflags=0x{:x} rsp=0x{:x} cr2=0x{:x} \
         rbp=0x{:x}",
        frame.vector,
        frame.error_code,
        frame.rip,
        frame.cs,
        frame.rflags,
        frame.rsp,
        cr2,
        frame.rbp
    );
    line.emit();
    crate::acpi::power_off()
}
