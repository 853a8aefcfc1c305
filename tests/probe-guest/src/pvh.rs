//! The PVH start info (Xen's `struct hvm_start_info`, the layout Linux, QEMU and the
//! rust-vmm `linux-loader` crate share) that the loader passes in `ebx`.
//!
//! Everything the probe needs from it is copied out at once, so that the memory holding
//! it may be reused by the heap afterwards.

use crate::phys;

/// `hvm_start_info.magic`: "xEn3" with the top bit of the last byte set.
pub const START_INFO_MAGIC: u32 = 0x336e_c578;

/// Byte offsets in `struct hvm_start_info`.
mod offset {
    pub const MAGIC: u64 = 0;
    pub const VERSION: u64 = 4;
    pub const CMDLINE_PADDR: u64 = 24;
    pub const RSDP_PADDR: u64 = 32;
    /// Version 1 and later.
    pub const MEMMAP_PADDR: u64 = 40;
    pub const MEMMAP_ENTRIES: u64 = 48;
}

/// Size of `struct hvm_memmap_table_entry` (addr, size, type, reserved).
const MEMMAP_ENTRY_SIZE: u64 = 24;

/// Memory map type of usable RAM (E820 numbering).
pub const MEMMAP_RAM: u32 = 1;

/// Longest command line kept.
pub const CMDLINE_CAPACITY: usize = 1024;
/// Most memory map entries kept.
pub const MEMMAP_CAPACITY: usize = 64;

/// One memory map entry.
#[derive(Clone, Copy, Debug, Default)]
pub struct MemmapEntry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// What the start info said.
pub struct BootInfo {
    pub version: u32,
    cmdline: [u8; CMDLINE_CAPACITY],
    cmdline_len: usize,
    pub rsdp_paddr: u64,
    memmap: [MemmapEntry; MEMMAP_CAPACITY],
    memmap_len: usize,
    /// Entries beyond [`MEMMAP_CAPACITY`] that were dropped.
    pub memmap_dropped: usize,
}

/// Why the start info could not be used.
#[derive(Clone, Copy, Debug)]
pub enum Error {
    NoStartInfo,
    BadMagic(u32),
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::NoStartInfo => f.write_str("none"),
            Error::BadMagic(magic) => write!(f, "bad_magic:{magic:#x}"),
        }
    }
}

impl BootInfo {
    /// Reads the start info at `addr`.
    pub fn parse(addr: u64) -> Result<Self, Error> {
        if addr == 0 {
            return Err(Error::NoStartInfo);
        }
        let magic = phys::read_u32(addr + offset::MAGIC);
        if magic != START_INFO_MAGIC {
            return Err(Error::BadMagic(magic));
        }
        let mut info = BootInfo {
            version: phys::read_u32(addr + offset::VERSION),
            cmdline: [0; CMDLINE_CAPACITY],
            cmdline_len: 0,
            rsdp_paddr: phys::read_u64(addr + offset::RSDP_PADDR),
            memmap: [MemmapEntry::default(); MEMMAP_CAPACITY],
            memmap_len: 0,
            memmap_dropped: 0,
        };
        let cmdline = phys::read_u64(addr + offset::CMDLINE_PADDR);
        if cmdline != 0 {
            while info.cmdline_len < CMDLINE_CAPACITY {
                let byte = phys::read_u8(cmdline + info.cmdline_len as u64);
                if byte == 0 {
                    break;
                }
                info.cmdline[info.cmdline_len] = byte;
                info.cmdline_len += 1;
            }
        }
        if info.version >= 1 {
            let table = phys::read_u64(addr + offset::MEMMAP_PADDR);
            let entries = phys::read_u32(addr + offset::MEMMAP_ENTRIES) as usize;
            if table != 0 {
                for i in 0..entries {
                    let entry = table + i as u64 * MEMMAP_ENTRY_SIZE;
                    if info.memmap_len == MEMMAP_CAPACITY {
                        info.memmap_dropped = entries - i;
                        break;
                    }
                    info.memmap[info.memmap_len] = MemmapEntry {
                        addr: phys::read_u64(entry),
                        size: phys::read_u64(entry + 8),
                        kind: phys::read_u32(entry + 16),
                    };
                    info.memmap_len += 1;
                }
            }
        }
        Ok(info)
    }

    /// The command line; non-UTF-8 bytes make it empty.
    pub fn cmdline(&self) -> &str {
        core::str::from_utf8(&self.cmdline[..self.cmdline_len]).unwrap_or("")
    }

    pub fn memmap(&self) -> &[MemmapEntry] {
        &self.memmap[..self.memmap_len]
    }

    /// Total usable RAM according to the memory map.
    pub fn total_ram(&self) -> u64 {
        self.memmap()
            .iter()
            .filter(|e| e.kind == MEMMAP_RAM)
            .map(|e| e.size)
            .sum()
    }
}
