//! PVH boot ("x86/HVM direct boot ABI"): the ELF is loaded at its physical addresses,
//! and the vCPU enters its PVH entry point in 32-bit protected mode with `ebx` pointing
//! at an `hvm_start_info` that carries the command line, the memory map, the initrd as
//! module 0 and the RSDP address.

use std::fs::File;

use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{load_initrd, BootSource, Error};
use crate::x86_64::layout::{self, CMDLINE_START, HIMEM_START, PVH_INFO_START, RSDP_START};
use crate::x86_64::regs::EntryMode;

/// `hvm_start_info.magic` ("xEn3" with the top bit flipped).
const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
/// Version 1 adds the memory map and the RSDP address.
const START_INFO_VERSION: u32 = 1;
const MODLIST_START: u64 = PVH_INFO_START + 0x40;
const MEMMAP_START: u64 = PVH_INFO_START + 0x80;
const MEMMAP_END: u64 = layout::ZERO_PAGE_START;

pub(super) fn load(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    source: &BootSource,
    _cmdline_len: usize,
) -> Result<EntryMode, Error> {
    let path = &source.kernel;
    let mut file = File::open(path).map_err(|source| Error::KernelUnreadable {
        path: path.clone(),
        source,
    })?;
    let loaded = Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(|e| {
        Error::Load {
            path: path.clone(),
            detail: e.to_string(),
        }
    })?;
    let entry = match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => addr.0,
        _ => return Err(Error::NoPvhNote(path.clone())),
    };

    let mut start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: START_INFO_VERSION,
        cmdline_paddr: CMDLINE_START,
        rsdp_paddr: RSDP_START,
        ..Default::default()
    };
    if let Some(initrd) = &source.initrd {
        // The ELF's own top is a lower bound: never place the initrd over the kernel.
        let placed = load_initrd(mem, mem_size, initrd, u64::MAX)?;
        if placed.addr < loaded.kernel_end {
            return Err(Error::InitrdTooLarge {
                path: initrd.clone(),
                size: placed.size,
                limit: placed.addr,
            });
        }
        let module = hvm_modlist_entry {
            paddr: placed.addr,
            size: placed.size,
            ..Default::default()
        };
        mem.write_obj(module, GuestAddress(MODLIST_START))?;
        start_info.nr_modules = 1;
        start_info.modlist_paddr = MODLIST_START;
    }

    let map = layout::memory_map(mem_size);
    let entry_size = std::mem::size_of::<hvm_memmap_table_entry>() as u64;
    assert!(
        MEMMAP_START + map.len() as u64 * entry_size <= MEMMAP_END,
        "memory map fits its page"
    );
    for (i, e) in map.iter().enumerate() {
        let entry = hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        };
        mem.write_obj(entry, GuestAddress(MEMMAP_START + i as u64 * entry_size))?;
    }
    start_info.memmap_paddr = MEMMAP_START;
    start_info.memmap_entries = map.len() as u32;
    mem.write_obj(start_info, GuestAddress(PVH_INFO_START))?;
    Ok(EntryMode::Pvh {
        entry,
        start_info: PVH_INFO_START,
    })
}
