//! The SIGSYS handler: a forbidden syscall (SECCOMP_RET_TRAP) ends the process with a
//! line that says which thread kind made which syscall. Everything here is
//! async-signal-safe: a stack buffer, `write(2)` and `exit_group(2)` (both in every
//! list).

use std::cell::Cell;
use std::io;

use super::ThreadKind;

thread_local! {
    /// The calling thread's kind, for the handler (const-initialised, no destructor: a
    /// plain thread-local read, safe in a signal handler).
    static KIND: Cell<Option<ThreadKind>> = const { Cell::new(None) };
}

pub(super) fn set_kind(kind: ThreadKind) {
    KIND.with(|k| k.set(Some(kind)));
}

pub(super) fn install() -> io::Result<()> {
    // SAFETY: a zeroed sigaction is valid; the handler has the SA_SIGINFO signature.
    let result = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut())
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Where `si_syscall` lies in a SIGSYS `siginfo_t` on x86_64: after si_signo, si_errno,
/// si_code, padding (16 bytes) and `_call_addr` (8).
const SI_SYSCALL_OFFSET: usize = 24;

extern "C" fn handler(
    _signal: libc::c_int,
    info: *mut libc::siginfo_t,
    _context: *mut libc::c_void,
) {
    // SAFETY: the kernel passes a valid siginfo_t; for SIGSYS the int at this offset is
    // the syscall's number.
    let nr = unsafe {
        info.cast::<u8>()
            .add(SI_SYSCALL_OFFSET)
            .cast::<i32>()
            .read_unaligned()
    };
    let kind = KIND.with(|k| k.get()).map_or("unknown", ThreadKind::name);
    let mut line = Line::default();
    line.push(b"vireo-vmm: seccomp: thread ");
    line.push(kind.as_bytes());
    line.push(b" made a forbidden syscall ");
    line.push_number(nr);
    line.push(b"; ending the engine (--no-seccomp turns the filters off, for debugging)\n");
    // SAFETY: write and exit_group are async-signal-safe; the buffer outlives the call.
    unsafe {
        libc::write(2, line.bytes.as_ptr().cast(), line.len);
        libc::syscall(libc::SYS_exit_group, super::EXIT_STATUS);
    }
}

/// A fixed buffer: no allocation in a signal handler.
struct Line {
    bytes: [u8; 160],
    len: usize,
}

impl Default for Line {
    fn default() -> Self {
        Self {
            bytes: [0; 160],
            len: 0,
        }
    }
}

impl Line {
    fn push(&mut self, text: &[u8]) {
        let n = text.len().min(self.bytes.len() - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&text[..n]);
        self.len += n;
    }

    fn push_number(&mut self, n: i32) {
        let mut digits = [0u8; 11];
        let mut i = digits.len();
        let mut rest = i64::from(n).unsigned_abs();
        loop {
            i -= 1;
            digits[i] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        if n < 0 {
            self.push(b"-");
        }
        self.push(&digits[i..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_written_in_decimal() {
        let mut line = Line::default();
        line.push_number(0);
        line.push(b" ");
        line.push_number(111);
        line.push(b" ");
        line.push_number(-12);
        assert_eq!(&line.bytes[..line.len], b"0 111 -12");
    }

    #[test]
    fn a_long_line_is_cut_not_overflowed() {
        let mut line = Line::default();
        for _ in 0..100 {
            line.push(b"abcdefgh");
        }
        assert_eq!(line.len, 160);
    }
}
