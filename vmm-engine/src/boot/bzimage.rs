//! Linux bzImage, 64-bit boot protocol (Documentation/arch/x86/boot.rst): the
//! protected-mode kernel goes to 1 MiB, `boot_params` (the "zero page") carries the setup
//! header, command line, initrd and e820 map, and the vCPU enters at `load + 0x200` in
//! long mode.

use std::fs::File;

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::{BzImage, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{load_initrd, BootSource, Error};
use crate::x86_64::layout::{self, CMDLINE_START, HIMEM_START, RSDP_START, ZERO_PAGE_START};
use crate::x86_64::regs::EntryMode;

/// Boot protocol 2.12 introduced `xloadflags` and is the oldest with a 64-bit entry we
/// can rely on.
const MIN_BOOT_PROTOCOL: u16 = 0x020c;
/// `xloadflags` bit 0: the kernel has the legacy 64-bit entry at `load + 0x200`.
const XLF_KERNEL_64: u16 = 1;
const KERNEL_64_ENTRY_OFFSET: u64 = 0x200;
/// `type_of_loader` 0xff: "undefined" boot loader.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
const BOOT_FLAG_MAGIC: u16 = 0xaa55;
const HDRS_MAGIC: u32 = 0x5372_6448;
/// `loadflags` bit 0: protected-mode code loaded at 1 MiB.
const LOADED_HIGH: u8 = 1;
/// `loadflags` bit 7: may use the heap below the setup code (unused, but harmless).
const CAN_USE_HEAP: u8 = 0x80;

pub(super) fn load(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    source: &BootSource,
    cmdline_len: usize,
) -> Result<EntryMode, Error> {
    let path = &source.kernel;
    let mut file = File::open(path).map_err(|source| Error::KernelUnreadable {
        path: path.clone(),
        source,
    })?;
    let loaded =
        BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(|e| {
            Error::Load {
                path: path.clone(),
                detail: e.to_string(),
            }
        })?;
    let mut hdr = loaded
        .setup_header
        .ok_or_else(|| Error::NotAKernel(path.clone()))?;
    if hdr.version < MIN_BOOT_PROTOCOL || hdr.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(Error::OldBzImage {
            path: path.clone(),
            version: hdr.version,
        });
    }

    hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    hdr.boot_flag = BOOT_FLAG_MAGIC;
    hdr.header = HDRS_MAGIC;
    hdr.loadflags |= LOADED_HIGH | CAN_USE_HEAP;
    hdr.cmd_line_ptr = CMDLINE_START as u32;
    hdr.cmdline_size = cmdline_len as u32;
    if let Some(initrd) = &source.initrd {
        let placed = load_initrd(mem, mem_size, initrd, u64::from(hdr.initrd_addr_max) + 1)?;
        hdr.ramdisk_image = placed.addr as u32;
        hdr.ramdisk_size = placed.size as u32;
    }

    let mut params = boot_params {
        hdr,
        acpi_rsdp_addr: RSDP_START,
        ..Default::default()
    };
    let map = layout::memory_map(mem_size);
    for (slot, e) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    params.e820_entries = map.len() as u8;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))?;
    Ok(EntryMode::Linux64 {
        entry: loaded.kernel_load.0 + KERNEL_64_ENTRY_OFFSET,
        boot_params: ZERO_PAGE_START,
    })
}
