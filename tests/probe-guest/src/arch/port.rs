//! Port I/O. At CPL3 each instruction traps to the #GP entry, which performs it.

use core::arch::asm;

/// Writes a byte to `port`.
pub fn outb(port: u16, value: u8) {
    // SAFETY: port writes cannot break memory safety of this program; the ports the
    // probe touches (serial, ACPI registers from the FADT, i8042, debug exit) are chosen
    // by the caller.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack)) };
}

/// Writes a 16-bit word to `port`.
pub fn outw(port: u16, value: u16) {
    // SAFETY: as for `outb`.
    unsafe { asm!("out dx, ax", in("dx") port, in("ax") value, options(nomem, nostack)) };
}

/// Writes a 32-bit word to `port`.
pub fn outl(port: u16, value: u32) {
    // SAFETY: as for `outb`.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack)) };
}

/// Reads a byte from `port`.
#[allow(dead_code)] // Part of the port API the device tests use.
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as for `outb`.
    unsafe { asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack)) };
    value
}

/// Reads a 32-bit word from `port`.
#[allow(dead_code)]
pub fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: as for `outb`.
    unsafe { asm!("in eax, dx", in("dx") port, out("eax") value, options(nomem, nostack)) };
    value
}

/// Writes all of `bytes` to `port` with one `rep outsb`: one trap at CPL3, and one VM
/// exit for the whole buffer in KVM's string-I/O path.
pub fn outsb(port: u16, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    // SAFETY: reads `bytes.len()` bytes from a valid slice; DF is clear per the ABI.
    unsafe {
        asm!(
            "rep outsb",
            in("dx") port,
            inout("rsi") bytes.as_ptr() => _,
            inout("rcx") bytes.len() => _,
            options(nostack, readonly),
        )
    };
}
