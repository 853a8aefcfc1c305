//! The boot stub: the PVH entry note, static page tables, GDT, TSS and IDT storage, the
//! 32-bit entry that reaches 64-bit CPL3 Rust, and the CPL0 trap entry points.
//!
//! Under PVM every instruction executed at CPL0 is interpreted (~2,400 cycles each), so
//! everything that can be static data is (page tables, GDT, TSS and its descriptor,
//! computed by the linker script), the IDT is filled later from CPL3
//! ([`crate::arch::idt::init`]), and the CPL0 path from entry to `iretq` is ~40
//! instructions.
//!
//! Memory is identity-mapped: the first 4 GiB with 2 MiB pages, every page writable and
//! user-accessible (U/S), because the whole probe runs at CPL3 and only traps run at CPL0.

use core::arch::global_asm;

/// The kernel code selector of the GDT below (0x10 kernel data, 0x18 user data, 0x20
/// user code, 0x28 TSS; user data before user code is the order `sysret` expects).
pub const KERNEL_CS: u16 = 0x08;

extern "C" {
    /// TSC at the first instruction of the PVH entry.
    static pvh_boot_tsc: u64;
    /// Physical address of `struct hvm_start_info`, from `ebx` at entry.
    static pvh_start_info: u32;
    /// Bit 0 set while an exception is being reported: a second one resets.
    static mut pvh_in_fault: u64;
    /// CR2 saved by the trap path for exceptions.
    static pvh_fault_cr2: u64;
    /// The IDT (256 16-byte gates), in user-writable memory.
    static mut pvh_idt: [u64; 512];
    /// First of 256 trap entry stubs, 16 bytes apart: stub `n` handles vector `n`.
    static pvh_isr_table: [u8; 0];
    /// The #GP entry that emulates port I/O and cli/sti for CPL3.
    static pvh_gp_entry: [u8; 0];
}

/// Makes the next exception reset the machine (see [`crate::arch::triple_fault`]).
pub fn mark_in_fault() {
    // SAFETY: a plain word in user-writable static memory, only otherwise written by
    // the trap path (which sets the same bit).
    unsafe { core::ptr::addr_of_mut!(pvh_in_fault).write_volatile(1) };
}

/// CR2 at the last exception (the page-fault address), saved at CPL0 for the report.
pub fn fault_cr2() -> u64 {
    // SAFETY: written by the trap path at CPL0 before it enters the fault report.
    unsafe { core::ptr::addr_of!(pvh_fault_cr2).read_volatile() }
}

/// TSC value recorded by the very first instruction of the kernel.
pub fn boot_tsc() -> u64 {
    // SAFETY: written once by the boot stub before Rust code runs, read-only afterwards.
    unsafe { core::ptr::addr_of!(pvh_boot_tsc).read() }
}

/// Physical (= virtual) address of the PVH start info the loader passed.
pub fn start_info_addr() -> u64 {
    // SAFETY: as for `boot_tsc`.
    u64::from(unsafe { core::ptr::addr_of!(pvh_start_info).read() })
}

/// The IDT storage, for [`crate::arch::idt`] to fill.
pub fn idt_ptr() -> *mut [u64; 512] {
    core::ptr::addr_of_mut!(pvh_idt)
}

/// Address of the entry stub for `vector`.
pub fn isr_addr(vector: u8) -> u64 {
    let base = core::ptr::addr_of!(pvh_isr_table) as u64;
    base + 16 * u64::from(vector)
}

/// Address of the #GP entry.
pub fn gp_entry_addr() -> u64 {
    core::ptr::addr_of!(pvh_gp_entry) as u64
}

global_asm!(
    r#"
    /* ---- PVH ELF note: Xen's XEN_ELFNOTE_PHYS32_ENTRY (18). An ELF64 loader reads
       the entry as 8 bytes. */
    .section .note.pvh, "a", @note
    .balign 4
    .long 4
    .long 8
    .long 18
    .asciz "Xen"
    .balign 4
    .quad pvh_entry32
    .balign 4

    /* ---- 32-bit entry: protected mode, paging off, ebx = &hvm_start_info. */
    .section .text.boot, "ax", @progbits
    .code32
    .globl pvh_entry32
pvh_entry32:
    rdtsc
    movl %eax, pvh_boot_tsc
    movl %edx, pvh_boot_tsc + 4
    movl %ebx, pvh_start_info
    movl $pvh_pml4, %eax
    movl %eax, %cr3
    /* CR4: PAE | OSFXSR | OSXMMEXCPT (SSE for the CPL3 code). */
    movl $0x620, %eax
    movl %eax, %cr4
    /* EFER.LME */
    movl $0xC0000080, %ecx
    rdmsr
    orl $0x100, %eax
    wrmsr
    /* CR0: PG | NE | ET | MP | PE (EM clear: SSE allowed). */
    movl $0x80000033, %eax
    movl %eax, %cr0
    lgdt pvh_gdt_ptr
    ljmp $0x08, $pvh_entry64

    .code64
pvh_entry64:
    movl $0x10, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movl $pvh_kstack_top, %esp
    movw $0x28, %ax
    ltr %ax
    lidt pvh_idt_ptr
    /* x2APIC: IA32_APIC_BASE |= EN | EXTD. Only CPL0 can write MSRs. */
    movl $0x1B, %ecx
    rdmsr
    orl $0xC00, %eax
    wrmsr
    /* Drop to CPL3 with interrupts off (IF is emulated by the #GP handler). The stack
       is entered as if by a call: rsp + 8 aligned to 16, as the ABI expects. */
    pushq $0x1B
    pushq $pvh_ustack_top - 8
    pushq $0x2
    pushq $0x23
    pushq $probe_main
    iretq

    /* ---- #GP: perform the privileged instructions CPL3 code uses, since PVM does not
       honour IOPL 3: in/out (EC, ED, EE, EF, 66-prefixed), rep outsb (F3 6E), cli/sti
       (FA/FB: flip IF in the saved frame), rdmsr/wrmsr (0F 32/0F 30). Then step over
       the instruction. Anything else, or a #GP at CPL0, is a real fault.
       Frame: err, rip, cs, rflags, rsp, ss. */
    .section .text, "ax", @progbits
    .balign 16
    .globl pvh_gp_entry
pvh_gp_entry:
    testb $3, 16(%rsp)
    jz 90f
    pushq %rbx
    /* now: 8 err, 16 rip, 24 cs, 32 rflags */
    movq 16(%rsp), %rbx
    movzbl (%rbx), %ebx
    cmpl $0xF3, %ebx
    je 30f
    cmpl $0x0F, %ebx
    je 40f
    cmpl $0xEE, %ebx
    jne 1f
    outb %al, %dx
    jmp 81f
1:  cmpl $0xEC, %ebx
    jne 1f
    inb %dx, %al
    jmp 81f
1:  cmpl $0xEF, %ebx
    jne 1f
    outl %eax, %dx
    jmp 81f
1:  cmpl $0xED, %ebx
    jne 1f
    inl %dx, %eax
    jmp 81f
1:  cmpl $0xFA, %ebx
    jne 1f
    andq $~0x200, 32(%rsp)
    jmp 81f
1:  cmpl $0xFB, %ebx
    jne 1f
    orq $0x200, 32(%rsp)
    jmp 81f
1:  cmpl $0x66, %ebx
    jne 89f
    movq 16(%rsp), %rbx
    movzbl 1(%rbx), %ebx
    cmpl $0xEF, %ebx
    jne 1f
    outw %ax, %dx
    jmp 82f
1:  cmpl $0xED, %ebx
    jne 89f
    inw %dx, %ax
    jmp 82f
30: movq 16(%rsp), %rbx
    cmpb $0x6E, 1(%rbx)
    jne 89f
    rep outsb
    jmp 82f
40: movq 16(%rsp), %rbx
    movzbl 1(%rbx), %ebx
    cmpl $0x30, %ebx
    jne 1f
    wrmsr
    jmp 82f
1:  cmpl $0x32, %ebx
    jne 89f
    rdmsr
    jmp 82f
81: movl $1, %ebx
    jmp 88f
82: movl $2, %ebx
88: addq %rbx, 16(%rsp)
    popq %rbx
    addq $8, %rsp
    iretq
89: popq %rbx
90: pushq $13
    jmp pvh_trap_common

    /* ---- Entry stubs, 16 bytes each: push a zero error code where the CPU does not
       push one, push the vector, join the common path. */
    .balign 16
    .globl pvh_isr_table
pvh_isr_table:
    .set vec, 0
    .rept 256
    .balign 16
    .if vec == 8 || (vec >= 10 && vec <= 14) || vec == 17 || vec == 21 || vec == 29 || vec == 30
    .else
    pushq $0
    .endif
    pushq $vec
    jmp pvh_trap_common
    .set vec, vec + 1
    .endr

    /* ---- Common trap path: save the GPRs (a TrapFrame). PVM's interpreter executes
       no SSE at CPL0, so nothing here or in what it calls may touch XMM registers.
       Exceptions leave CPL0 at once: `iretq` to `probe_fault` at CPL3 (native speed, SSE
       allowed) on its own stack, with the frame (user-readable) as its argument. A fault
       while reporting one resets the machine (triple fault: empty IDT, then int3). */
    .balign 16
pvh_trap_common:
    pushq %rax
    pushq %rbx
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %rbp
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, %rdi
    cld
    cmpq $32, 120(%rsp)
    jae 1f
    btsq $0, pvh_in_fault
    jc 2f
    movq %cr2, %rax
    movq %rax, pvh_fault_cr2
    pushq $0x1B
    pushq $pvh_fault_stack_top - 8
    pushq $0x2
    pushq $0x23
    pushq $probe_fault
    iretq
2:  lidt pvh_no_idt_ptr
    int3
1:  call pvh_interrupt
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rbp
    popq %rdi
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rbx
    popq %rax
    addq $16, %rsp
    iretq

    /* ---- Static tables. */
    .section .data.boot, "aw", @progbits
    .balign 4096
pvh_pml4:
    .quad pvh_pdpt + 0x7
    .fill 511, 8, 0
pvh_pdpt:
    .quad pvh_pd + 0x0000 + 0x7
    .quad pvh_pd + 0x1000 + 0x7
    .quad pvh_pd + 0x2000 + 0x7
    .quad pvh_pd + 0x3000 + 0x7
    .fill 508, 8, 0
pvh_pd:
    /* 2048 x 2 MiB: present | writable | user | page size */
    .set page, 0
    .rept 2048
    .quad (page << 21) | 0x87
    .set page, page + 1
    .endr
    .globl pvh_idt
pvh_idt:
    .fill 512, 8, 0

    .balign 16
pvh_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF    /* 0x08 kernel code, 64-bit */
    .quad 0x00CF92000000FFFF    /* 0x10 kernel data */
    .quad 0x00CFF2000000FFFF    /* 0x18 user data, DPL 3 */
    .quad 0x00AFFA000000FFFF    /* 0x20 user code, 64-bit, DPL 3 */
    .quad __tss_desc_lo         /* 0x28 TSS */
    .quad __tss_desc_hi
pvh_gdt_end:
pvh_gdt_ptr:
    .word pvh_gdt_end - pvh_gdt - 1
    .quad pvh_gdt
pvh_idt_ptr:
    .word 4095
    .quad pvh_idt
pvh_no_idt_ptr:
    .word 0
    .quad 0
    .globl pvh_in_fault
pvh_in_fault:
    .quad 0
    .globl pvh_fault_cr2
pvh_fault_cr2:
    .quad 0

    .balign 16
    .globl pvh_tss
pvh_tss:
    .long 0
    .quad pvh_kstack_top        /* rsp0: traps from CPL3 */
    .quad 0
    .quad 0
    .quad 0
    .quad pvh_ist1_top          /* ist1: double fault */
    .fill 6, 8, 0
    .quad 0
    .word 0
    .word 104                   /* no I/O bitmap */

    .globl pvh_boot_tsc
pvh_boot_tsc:
    .quad 0
    .globl pvh_start_info
pvh_start_info:
    .long 0

    .section .bss.boot, "aw", @nobits
    .balign 4096
    .space 16384
pvh_kstack_top:
    .space 8192
pvh_ist1_top:
    .space 262144
pvh_ustack_top:
    .space 65536
pvh_fault_stack_top:
    "#,
    options(att_syntax)
);
