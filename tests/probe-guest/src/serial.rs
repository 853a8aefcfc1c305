//! The serial console: line-buffered output on COM1, one `rep outsb` per line.
//!
//! Every line starts with `VIREO-PROBE ` so that a host can pick the probe's lines out of
//! anything else on the console. The 16550 is not polled (LSR): the VMMs this probe
//! runs under (Vireo's engine, QEMU) accept bytes at once, and each port access from
//! CPL3 costs a trap, so a whole line goes out as one string write.

use core::fmt::{self, Write};

use crate::arch::port;
use crate::sync::SpinLock;

/// COM1's data register.
const COM1: u16 = 0x3F8;
/// The prefix of every line.
pub const PREFIX: &[u8] = b"VIREO-PROBE ";
/// Longest line sent in one piece; longer lines go out in several writes.
const LINE_CAPACITY: usize = 512;

/// A line being assembled.
pub struct LineBuf {
    bytes: [u8; LINE_CAPACITY],
    len: usize,
}

impl LineBuf {
    const fn new() -> Self {
        Self {
            bytes: [0; LINE_CAPACITY],
            len: 0,
        }
    }

    fn flush(&mut self) {
        port::outsb(COM1, &self.bytes[..self.len]);
        self.len = 0;
    }

    fn push(&mut self, byte: u8) {
        if self.len == LINE_CAPACITY {
            self.flush();
        }
        self.bytes[self.len] = byte;
        self.len += 1;
        if byte == b'\n' {
            self.flush();
        }
    }
}

impl Write for LineBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        s.bytes().for_each(|b| self.push(b));
        Ok(())
    }
}

static CONSOLE: SpinLock<LineBuf> = SpinLock::new(LineBuf::new());

/// Writes one protocol line: the prefix, `args`, a newline. Used through [`probe!`].
pub fn line(args: fmt::Arguments<'_>) {
    let mut console = CONSOLE.lock();
    let _ = console.write_str(core::str::from_utf8(PREFIX).unwrap_or_default());
    let _ = console.write_fmt(args);
    let _ = console.write_str("\n");
}

/// A line formatted on the stack and written directly, bypassing the console lock: for
/// the fault and panic paths, which may interrupt a half-written line.
pub struct StackLine {
    inner: LineBuf,
}

impl StackLine {
    pub fn new() -> Self {
        // A line the trap cut off is still in the console's buffer, not on the wire, so
        // this line starts cleanly.
        let mut inner = LineBuf::new();
        PREFIX.iter().for_each(|&b| inner.push(b));
        Self { inner }
    }

    /// Sends the line.
    pub fn emit(mut self) {
        self.inner.push(b'\n');
    }
}

impl Write for StackLine {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.inner.write_str(s)
    }
}

/// Prints one `VIREO-PROBE ...` line.
#[macro_export]
macro_rules! probe {
    ($($arg:tt)*) => {
        $crate::serial::line(format_args!($($arg)*))
    };
}
