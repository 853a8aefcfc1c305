//! Reads and writes of physical memory. The first 4 GiB are identity-mapped and
//! user-accessible, so a physical address below 4 GiB is a valid pointer at CPL3.
//!
//! Firmware tables and device registers are not Rust objects; these functions are the
//! one place that turns their addresses into pointers. Unaligned access is fine on x86.

/// End of the identity mapping the boot stub builds.
pub const MAPPED_END: u64 = 4 << 30;

fn ptr<T>(addr: u64) -> *mut T {
    assert!(
        addr.checked_add(core::mem::size_of::<T>() as u64)
            .is_some_and(|end| end <= MAPPED_END),
        "physical address {addr:#x} is not mapped"
    );
    addr as *mut T
}

pub fn read_u8(addr: u64) -> u8 {
    // SAFETY: `ptr` checked that the address is inside the identity map, where every
    // page is mapped; volatile because firmware tables and registers are not Rust memory.
    unsafe { ptr::<u8>(addr).read_volatile() }
}

pub fn read_u32(addr: u64) -> u32 {
    // SAFETY: as for `read_u8`; x86 allows unaligned access.
    unsafe { ptr::<u32>(addr).read_unaligned() }
}

pub fn read_u64(addr: u64) -> u64 {
    // SAFETY: as for `read_u32`.
    unsafe { ptr::<u64>(addr).read_unaligned() }
}

/// MMIO read of the given width (8, 16, 32 or 64 bits; others read 0): volatile, so that
/// polling a device register really reads it every time.
pub fn mmio_read(addr: u64, bits: u8) -> u64 {
    // SAFETY: as for `mmio_write`.
    unsafe {
        match bits {
            8 => u64::from(ptr::<u8>(addr).read_volatile()),
            16 => u64::from(ptr::<u16>(addr).read_volatile()),
            32 => u64::from(ptr::<u32>(addr).read_volatile()),
            64 => ptr::<u64>(addr).read_volatile(),
            _ => 0,
        }
    }
}

/// MMIO write of the given width (8, 16, 32 or 64 bits; others are ignored).
pub fn mmio_write(addr: u64, bits: u8, value: u64) {
    // SAFETY: the address is inside the identity map (checked by `ptr`); the caller
    // took it from a firmware table that names it a register. Volatile, naturally sized.
    unsafe {
        match bits {
            8 => ptr::<u8>(addr).write_volatile(value as u8),
            16 => ptr::<u16>(addr).write_volatile(value as u16),
            32 => ptr::<u32>(addr).write_volatile(value as u32),
            64 => ptr::<u64>(addr).write_volatile(value),
            _ => {}
        }
    }
}
