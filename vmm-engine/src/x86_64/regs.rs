//! The architectural state a vCPU starts in, for each boot protocol.
//!
//! - PVH: 32-bit protected mode, paging off, flat segments, `ebx` = `hvm_start_info`
//!   (Xen's "x86/HVM direct boot ABI").
//! - Linux 64-bit boot protocol: long mode with an identity map of the first GiB,
//!   `rsi` = `boot_params` (Documentation/arch/x86/boot.rst, "64-bit Boot Protocol").

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{BOOT_GDT_START, PDE_START, PDPTE_START, PML4_START};

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// Bit 1 of RFLAGS is reserved and always set.
const RFLAGS_RESERVED: u64 = 1 << 1;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// Where the 64-bit Linux entry's stack starts (grows down, below the page tables).
const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page-table entry bits: present, writable, page size (2 MiB).
const PTE_PRESENT_RW: u64 = 0x3;
const PDE_PS: u64 = 0x80;

/// How the boot vCPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMode {
    /// PVH: 32-bit entry at `entry` with `ebx` = start_info.
    Pvh { entry: u64, start_info: u64 },
    /// Linux 64-bit boot protocol: `rip` = `entry` with `rsi` = boot_params.
    Linux64 { entry: u64, boot_params: u64 },
}

/// A GDT descriptor from its flags (access byte + granularity nibble), base and limit.
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The KVM segment register a GDT descriptor at `index` describes.
fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit_raw = (entry & 0xffff) | ((entry >> 32) & 0x000f_0000);
    let g = ((entry >> 55) & 1) as u8;
    kvm_segment {
        base,
        // With the granularity bit set the limit counts 4 KiB pages.
        limit: if g == 1 {
            ((limit_raw as u32) << 12) | 0xfff
        } else {
            limit_raw as u32
        },
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: if (entry >> 47) & 1 == 1 { 0 } else { 1 },
        padding: 0,
    }
}

/// Errors setting up the boot vCPU.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing boot page tables or GDT to guest memory")]
    GuestMemory(#[source] vm_memory::GuestMemoryError),
    #[error("KVM refused the vCPU's {what}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { what, source }
}

/// Puts the boot vCPU in the state `mode` expects. Application processors keep KVM's
/// reset state and wait for INIT/SIPI from the guest.
pub fn setup_boot_vcpu(vcpu: &VcpuFd, mem: &GuestMemoryMmap, mode: EntryMode) -> Result<(), Error> {
    let mut sregs = vcpu.get_sregs().map_err(kvm("special registers"))?;
    let mut regs = kvm_regs {
        rflags: RFLAGS_RESERVED,
        ..Default::default()
    };
    match mode {
        EntryMode::Pvh { entry, start_info } => {
            let gdt = [
                gdt_entry(0, 0, 0),
                gdt_entry(0xc09b, 0, 0xfffff), // 32-bit code, 4 GiB flat
                gdt_entry(0xc093, 0, 0xfffff), // data, 4 GiB flat
                gdt_entry(0x008b, 0, 0x67),    // TSS
            ];
            load_gdt(mem, &mut sregs, &gdt)?;
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            regs.rip = entry;
            regs.rbx = start_info;
        }
        EntryMode::Linux64 { entry, boot_params } => {
            let gdt = [
                gdt_entry(0, 0, 0),
                gdt_entry(0xa09b, 0, 0xfffff), // 64-bit code
                gdt_entry(0xc093, 0, 0xfffff), // data
                gdt_entry(0x808b, 0, 0xfffff), // TSS
            ];
            load_gdt(mem, &mut sregs, &gdt)?;
            write_identity_page_tables(mem)?;
            sregs.cr3 = PML4_START;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG | X86_CR0_ET;
            sregs.efer |= EFER_LME | EFER_LMA;
            regs.rip = entry;
            regs.rsi = boot_params;
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
        }
    }
    vcpu.set_sregs(&sregs).map_err(kvm("special registers"))?;
    vcpu.set_regs(&regs).map_err(kvm("general registers"))?;
    Ok(())
}

/// State every vCPU needs, boot or not: a sane FPU, fast strings, and the local APIC's
/// LINT0/LINT1 wired as on a PC (ExtINT from the PIC, NMI).
pub fn setup_common(vcpu: &VcpuFd) -> Result<(), Error> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("FPU state"))?;
    let msrs = Msrs::from_entries(&[kvm_msr_entry {
        index: MSR_IA32_MISC_ENABLE,
        data: MISC_ENABLE_FAST_STRING,
        ..Default::default()
    }])
    .expect("one entry fits");
    vcpu.set_msrs(&msrs).map_err(kvm("MSRs"))?;
    set_lint(vcpu)
}

/// Local APIC register offsets and delivery modes (Intel SDM vol. 3, 11.5.1).
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn set_lint(vcpu: &VcpuFd) -> Result<(), Error> {
    let mut lapic = vcpu.get_lapic().map_err(kvm("local APIC"))?;
    let mut update = |offset: usize, mode: u32| {
        let mut bytes = [0u8; 4];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = lapic.regs[offset + i] as u8;
        }
        let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
        for (i, b) in value.to_le_bytes().iter().enumerate() {
            lapic.regs[offset + i] = *b as _;
        }
    };
    update(APIC_LVT0, APIC_MODE_EXTINT);
    update(APIC_LVT1, APIC_MODE_NMI);
    vcpu.set_lapic(&lapic).map_err(kvm("local APIC"))
}

fn load_gdt(mem: &GuestMemoryMmap, sregs: &mut kvm_sregs, gdt: &[u64; 4]) -> Result<(), Error> {
    for (i, entry) in gdt.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + i as u64 * 8))
            .map_err(Error::GuestMemory)?;
    }
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    // An empty IDT: the kernel installs its own before it enables interrupts.
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    let code = segment_from_gdt(gdt[1], 1);
    let data = segment_from_gdt(gdt[2], 2);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(gdt[3], 3);
    Ok(())
}

/// Identity-maps the first GiB with 2 MiB pages, enough for the kernel's own early code
/// to build its real page tables.
fn write_identity_page_tables(mem: &GuestMemoryMmap) -> Result<(), Error> {
    let write = |value: u64, addr: u64| {
        mem.write_obj(value, GuestAddress(addr))
            .map_err(Error::GuestMemory)
    };
    write(PDPTE_START | PTE_PRESENT_RW, PML4_START)?;
    write(PDE_START | PTE_PRESENT_RW, PDPTE_START)?;
    for i in 0..512u64 {
        write((i << 21) | PDE_PS | PTE_PRESENT_RW, PDE_START + i * 8)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode_to_flat_segments() {
        let code = segment_from_gdt(gdt_entry(0xa09b, 0, 0xfffff), 1);
        assert_eq!(
            (code.selector, code.l, code.g, code.present, code.type_),
            (8, 1, 1, 1, 0xb)
        );
        assert_eq!(code.limit, 0xffff_ffff);
        let code32 = segment_from_gdt(gdt_entry(0xc09b, 0, 0xfffff), 1);
        assert_eq!((code32.db, code32.l), (1, 0));
        let null = segment_from_gdt(gdt_entry(0, 0, 0), 0);
        assert_eq!(null.unusable, 1);
    }
}
