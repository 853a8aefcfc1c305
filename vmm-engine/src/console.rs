//! The serial console's host side: stdin into the guest's UART, the terminal in raw mode
//! while the guest owns it, and QEMU's escape `Ctrl-A x` to quit.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::lock;
use crate::devices::serial::SerialDevice;
use crate::exit::{ExitReason, ExitSender};

/// Where console input comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleInput {
    /// No input: the guest's UART never receives anything.
    None,
    /// The process's stdin. With `escapes`, `Ctrl-A x` quits and `Ctrl-A Ctrl-A` sends
    /// one Ctrl-A (for a terminal); without, bytes pass through untouched (for pipes).
    Stdin { escapes: bool },
}

const CTRL_A: u8 = 0x01;

/// Decodes the `Ctrl-A` escape: what to send to the guest, and whether to quit.
#[derive(Default)]
struct EscapeDecoder {
    after_ctrl_a: bool,
}

impl EscapeDecoder {
    fn feed(&mut self, input: &[u8], to_guest: &mut Vec<u8>) -> bool {
        for &b in input {
            if self.after_ctrl_a {
                self.after_ctrl_a = false;
                match b {
                    b'x' | b'X' => return true,
                    CTRL_A => to_guest.push(CTRL_A),
                    // An unknown escape is dropped, as QEMU does.
                    _ => {}
                }
            } else if b == CTRL_A {
                self.after_ctrl_a = true;
            } else {
                to_guest.push(b);
            }
        }
        false
    }
}

/// The running input thread.
pub struct InputThread {
    stop: EventFd,
    thread: JoinHandle<()>,
}

impl InputThread {
    pub fn stop(self) {
        let _ = self.stop.write(1);
        let _ = self.thread.join();
    }
}

const TOKEN_STDIN: u64 = 0;
const TOKEN_STOP: u64 = 1;

/// Starts feeding stdin to the UART, if asked to. Stdin that cannot be polled (a regular
/// file, /dev/null) gives the guest no input rather than an error.
pub fn spawn_input(
    input: &ConsoleInput,
    serial: Arc<Mutex<SerialDevice>>,
    exit: ExitSender,
) -> Option<InputThread> {
    let ConsoleInput::Stdin { escapes } = *input else {
        return None;
    };
    let stop = EventFd::new(libc::EFD_NONBLOCK).ok()?;
    let epoll = Epoll::new().ok()?;
    let stdin_fd = std::io::stdin().as_raw_fd();
    epoll
        .ctl(
            ControlOperation::Add,
            stdin_fd,
            EpollEvent::new(EventSet::IN, TOKEN_STDIN),
        )
        .ok()?;
    epoll
        .ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_STOP),
        )
        .ok()?;
    let stop_for_thread = stop.try_clone().ok()?;
    let thread = std::thread::Builder::new()
        .name("console-in".into())
        .stack_size(128 << 10)
        .spawn(move || input_loop(epoll, stop_for_thread, serial, exit, escapes))
        .ok()?;
    Some(InputThread { stop, thread })
}

fn input_loop(
    epoll: Epoll,
    stop: EventFd,
    serial: Arc<Mutex<SerialDevice>>,
    exit: ExitSender,
    escapes: bool,
) {
    crate::sandbox::enter(crate::sandbox::ThreadKind::Console);
    let mut events = [EpollEvent::default(); 2];
    let mut decoder = EscapeDecoder::default();
    let mut buf = [0u8; 64];
    let mut to_guest = Vec::new();
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        if events[..n].iter().any(|e| e.data() == TOKEN_STOP) {
            return;
        }
        let read = match std::io::stdin().lock().read(&mut buf) {
            Ok(0) | Err(_) => return, // EOF: the guest gets no more input.
            Ok(r) => r,
        };
        to_guest.clear();
        if escapes {
            if decoder.feed(&buf[..read], &mut to_guest) {
                exit.send(ExitReason::Stopped);
                return;
            }
        } else {
            to_guest.extend_from_slice(&buf[..read]);
        }
        if !deliver(&to_guest, &serial, &stop) {
            return;
        }
    }
}

/// Hands bytes to the UART as its FIFO drains. Returns false if asked to stop meanwhile.
fn deliver(mut bytes: &[u8], serial: &Mutex<SerialDevice>, stop: &EventFd) -> bool {
    while !bytes.is_empty() {
        let n = lock(serial).enqueue_input(bytes);
        bytes = &bytes[n..];
        if n == 0 {
            if stop.read().is_ok() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    true
}

/// Puts the terminal on stdin into raw mode and restores it when dropped.
pub struct RawTerminal {
    saved: libc::termios,
}

impl RawTerminal {
    /// Raw mode if stdin is a terminal; `None` otherwise (pipes stay as they are).
    pub fn enter() -> Option<Self> {
        let fd = std::io::stdin().as_raw_fd();
        // SAFETY: isatty only inspects the fd.
        if unsafe { libc::isatty(fd) } != 1 {
            return None;
        }
        // SAFETY: termios is plain data; tcgetattr fills it for a valid terminal fd.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `fd` is stdin, a terminal; `saved` is a valid termios to write into.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return None;
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw only edits the struct it is given.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: `raw` is a valid termios derived from the terminal's own.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return None;
        }
        Some(Self { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restores the settings read from this same terminal in `enter`.
        unsafe { libc::tcsetattr(std::io::stdin().as_raw_fd(), libc::TCSANOW, &self.saved) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctrl_a_x_quits_and_ctrl_a_ctrl_a_sends_one() {
        let mut d = EscapeDecoder::default();
        let mut out = Vec::new();
        assert!(!d.feed(b"ls\x01\x01\x01q", &mut out));
        assert_eq!(out, b"ls\x01");
        out.clear();
        // The escape may be split across reads.
        assert!(!d.feed(b"a\x01", &mut out));
        assert!(d.feed(b"x", &mut out));
        assert_eq!(out, b"a");
    }
}
