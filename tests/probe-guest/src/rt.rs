//! The runtime pieces a freestanding binary supplies itself: the C memory functions the
//! compiler calls, the panic handler, and the personality symbol the prebuilt `alloc`
//! refers to.

use core::arch::asm;
use core::fmt::Write;

/// Copies `n` bytes forward with `rep movsb` (fast on CPUs with ERMS; plain Rust loops
/// here could be turned back into a call to `memcpy` itself).
#[no_mangle]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees `n` valid bytes at both pointers, not overlapping.
    unsafe {
        asm!(
            "rep movsb",
            inout("rdi") dest => _,
            inout("rsi") src => _,
            inout("rcx") n => _,
            options(nostack, preserves_flags),
        )
    };
    dest
}

/// Copies `n` possibly overlapping bytes: forward when the destination is below the
/// source, else backward (`std; rep movsb; cld`).
#[no_mangle]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dest as usize) <= (src as usize) || (dest as usize) >= (src as usize).wrapping_add(n) {
        // SAFETY: a forward copy is correct when the destination starts below the source
        // or past its end; the caller guarantees the ranges are valid.
        return unsafe { memcpy(dest, src, n) };
    }
    if n == 0 {
        return dest;
    }
    // SAFETY: the caller guarantees `n` valid bytes at both; copying from the last byte
    // down reads every overlapping byte before overwriting it. DF is restored.
    unsafe {
        asm!(
            "std",
            "rep movsb",
            "cld",
            inout("rdi") dest.add(n - 1) => _,
            inout("rsi") src.add(n - 1) => _,
            inout("rcx") n => _,
            options(nostack),
        )
    };
    dest
}

/// Fills `n` bytes with `c` using `rep stosb`.
#[no_mangle]
pub unsafe extern "C" fn memset(dest: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees `n` writable bytes at `dest`.
    unsafe {
        asm!(
            "rep stosb",
            inout("rdi") dest => _,
            inout("rcx") n => _,
            in("al") c as u8,
            options(nostack, preserves_flags),
        )
    };
    dest
}

/// Compares `n` bytes. Volatile reads keep LLVM from recognising the loop as `memcmp`
/// and calling this function from itself.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: the caller guarantees `n` readable bytes at both pointers.
        let (x, y) = unsafe { (a.add(i).read_volatile(), b.add(i).read_volatile()) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

/// `memcmp` that only says equal (0) or not.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as `memcmp`.
    unsafe { memcmp(a, b, n) }
}

/// Referenced by the prebuilt `alloc`; never called with `panic = "abort"`.
#[no_mangle]
pub extern "C" fn rust_eh_personality() {}

/// Referenced by the prebuilt `alloc`'s landing pads (`format!` pulls them in); never
/// reached with `panic = "abort"`, where nothing unwinds.
#[no_mangle]
pub extern "C" fn _Unwind_Resume() -> ! {
    crate::arch::triple_fault()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    // Formatted on the stack and sent directly: the panic may have happened while the
    // console lock was held.
    let mut line = crate::serial::StackLine::new();
    let _ = write!(line, "PANIC {}", info.message());
    if let Some(location) = info.location() {
        let _ = write!(line, " at {}:{}", location.file(), location.line());
    }
    line.emit();
    crate::acpi::power_off()
}
