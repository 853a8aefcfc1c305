//! The guest-physical address map of a Vireo VM, in one place.
//!
//! ```text
//! 0x0000_0500  GDT used by the boot vCPU state
//! 0x0000_6000  PVH hvm_start_info (+ memory map, module list)
//! 0x0000_7000  Linux boot_params ("zero page") with the e820 table
//! 0x0000_9000  identity page tables for 64-bit Linux entry (PML4, PDPT, PD)
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  EBDA .. 1 MiB: reserved (legacy BIOS area); ACPI tables at 0xE0000
//! 0x0010_0000  kernel image (bzImage protected-mode part, or the ELF's own addresses)
//! ..           RAM up to 3 GiB
//! 0xC000_0000  32-bit MMIO hole (PCI BARs, ECAM, IOAPIC, LAPIC) up to 4 GiB
//! 0x1_0000_0000 RAM above 4 GiB, for VMs with more than 3 GiB
//! ```

/// Start of the boot GDT.
pub const BOOT_GDT_START: u64 = 0x500;
/// Where the PVH `hvm_start_info` goes; the memory map and module list follow it.
pub const PVH_INFO_START: u64 = 0x6000;
/// Linux `boot_params`.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Identity page tables for the 64-bit Linux entry: PML4, then PDPT, then PD.
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// Kernel command line, and the most we accept (Linux's own limit on x86 is 2048 by
/// default but the boot protocol allows the header to say more).
pub const CMDLINE_START: u64 = 0x20000;
pub const CMDLINE_MAX_SIZE: usize = 0x10000;
/// Start of the Extended BIOS Data Area: the end of usable low memory.
pub const EBDA_START: u64 = 0x9fc00;
/// Where the RSDP lives: inside the range Linux and other OSes scan (0xE0000..0xFFFFF).
pub const RSDP_START: u64 = 0xe0000;
/// The rest of the ACPI tables, after the RSDP, still below 1 MiB.
pub const ACPI_TABLES_START: u64 = 0xe1000;
pub const ACPI_TABLES_END: u64 = 0x100000;
/// Where high memory starts, and where bzImages load their protected-mode code.
pub const HIMEM_START: u64 = 0x100000;
/// Start of the 32-bit MMIO hole: RAM below 4 GiB ends here.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// The window PCI BARs are placed in (announced in the DSDT's PCI0 `_CRS`).
pub const PCI_MMIO_WINDOW_START: u64 = MMIO_HOLE_START;
pub const PCI_MMIO_WINDOW_END: u64 = 0xe000_0000;
/// ECAM (PCI Express enhanced configuration access) for bus 0, announced in the MCFG
/// table and reserved in the memory map.
pub const PCI_ECAM_START: u64 = 0xe000_0000;
pub const PCI_ECAM_SIZE: u64 = 1 << 20;
pub const FOUR_GIB: u64 = 0x1_0000_0000;
/// KVM's in-kernel IOAPIC and LAPIC.
pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const LAPIC_START: u64 = 0xfee0_0000;
/// Intel VMX needs three pages for the real-mode TSS and one for the identity map, below
/// 4 GiB and outside RAM; we put them just below the BIOS ROM area.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// Guest RAM ranges (start, length) for a VM of `mem_size` bytes: below the MMIO hole,
/// then above 4 GiB for what does not fit.
pub fn ram_ranges(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_HOLE_START {
        vec![(0, mem_size)]
    } else {
        vec![(0, MMIO_HOLE_START), (FOUR_GIB, mem_size - MMIO_HOLE_START)]
    }
}

/// e820 / PVH memory-map entry types (ACPI spec "Address Range Types").
pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

/// One entry of the memory map handed to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryMapEntry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// The memory map both boot protocols give the guest, in address order: low RAM, the
/// reserved legacy area holding our ACPI tables, the RAM ranges above 1 MiB, and the
/// PCI ECAM region (reserved, as OSes check before they use MCFG).
pub fn memory_map(mem_size: u64) -> Vec<MemoryMapEntry> {
    let mut map = vec![
        MemoryMapEntry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        MemoryMapEntry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            kind: E820_RESERVED,
        },
    ];
    for (start, len) in ram_ranges(mem_size) {
        let start_hi = start.max(HIMEM_START);
        let end = start + len;
        if end > start_hi {
            map.push(MemoryMapEntry {
                addr: start_hi,
                size: end - start_hi,
                kind: E820_RAM,
            });
        }
    }
    map.push(MemoryMapEntry {
        addr: PCI_ECAM_START,
        size: PCI_ECAM_SIZE,
        kind: E820_RESERVED,
    });
    map.sort_by_key(|e| e.addr);
    map
}

/// The end of RAM below the MMIO hole.
pub fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_HOLE_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_vm_has_one_ram_range_and_a_legacy_hole() {
        let map = memory_map(64 << 20);
        assert_eq!(map.len(), 4);
        assert_eq!(
            map[3],
            MemoryMapEntry {
                addr: PCI_ECAM_START,
                size: PCI_ECAM_SIZE,
                kind: E820_RESERVED
            }
        );
        assert_eq!(
            map[0],
            MemoryMapEntry {
                addr: 0,
                size: EBDA_START,
                kind: E820_RAM
            }
        );
        assert_eq!(map[1].kind, E820_RESERVED);
        assert_eq!(
            map[2],
            MemoryMapEntry {
                addr: HIMEM_START,
                size: (64 << 20) - HIMEM_START,
                kind: E820_RAM
            }
        );
    }

    #[test]
    fn large_vm_is_split_around_the_mmio_hole() {
        let mem = 5u64 << 30;
        assert_eq!(
            ram_ranges(mem),
            vec![(0, MMIO_HOLE_START), (FOUR_GIB, mem - MMIO_HOLE_START)]
        );
        let map = memory_map(mem);
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, mem - (HIMEM_START - EBDA_START));
        assert_eq!(map.last().unwrap().addr, FOUR_GIB);
    }
}
