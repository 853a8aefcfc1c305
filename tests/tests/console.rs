//! The serial console on a terminal: raw mode while the guest runs, `Ctrl-A x` quits,
//! and the terminal's settings are exactly as before when the engine exits.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vireo_e2e::engine::{s, vmm_binary};
use vireo_e2e::probe_guest::probe_guest_elf;
use vireo_e2e::report;

/// A pseudo-terminal pair: (controller, terminal).
fn openpty() -> (OwnedFd, OwnedFd) {
    let (mut controller, mut terminal) = (-1, -1);
    // SAFETY: openpty writes two fds into the locals; null name/termios/winsize are
    // allowed and mean defaults.
    let rc = unsafe {
        libc::openpty(
            &mut controller,
            &mut terminal,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty");
    // SAFETY: both fds were just opened by openpty and are owned by nobody else.
    unsafe {
        (
            OwnedFd::from_raw_fd(controller),
            OwnedFd::from_raw_fd(terminal),
        )
    }
}

fn termios(fd: &OwnedFd) -> libc::termios {
    // SAFETY: termios is plain data, filled by tcgetattr for a terminal fd.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is a valid terminal; `t` is writable.
    assert_eq!(unsafe { libc::tcgetattr(fd.as_raw_fd(), &mut t) }, 0);
    t
}

fn same(a: &libc::termios, b: &libc::termios) -> bool {
    (a.c_iflag, a.c_oflag, a.c_cflag, a.c_lflag, a.c_cc)
        == (b.c_iflag, b.c_oflag, b.c_cflag, b.c_lflag, b.c_cc)
}

#[test]
fn ctrl_a_x_quits_and_the_terminal_is_restored() {
    const TEST: &str = "console::ctrl_a_x_quits_and_the_terminal_is_restored";
    if !report::require_kvm(TEST) {
        return;
    }
    let elf = probe_guest_elf();
    let (controller, terminal) = openpty();
    let before = termios(&terminal);
    let mut child = Command::new(vmm_binary())
        .args([
            "--kernel",
            s(&elf),
            "--memory",
            "64M",
            "--cmdline",
            "probe.run=idle",
        ])
        .stdin(Stdio::from(terminal.try_clone().unwrap()))
        .stdout(Stdio::from(terminal.try_clone().unwrap()))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut console = std::fs::File::from(controller);

    // Wait for the guest to be up (its IDLE line), reading what the terminal shows.
    let mut shown = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !String::from_utf8_lossy(&shown).contains("VIREO-PROBE IDLE") {
        assert!(
            Instant::now() < deadline,
            "the guest never came up: {}",
            String::from_utf8_lossy(&shown)
        );
        let mut buf = [0u8; 4096];
        let n = console.read(&mut buf).unwrap();
        shown.extend_from_slice(&buf[..n]);
    }
    let during = termios(&terminal);
    assert!(
        !same(&before, &during),
        "the engine put the terminal in raw mode"
    );
    assert_eq!(
        during.c_lflag & (libc::ICANON | libc::ECHO | libc::ISIG),
        0,
        "raw: no line editing, echo or signals"
    );

    console.write_all(b"\x01x").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "Ctrl-A x did not end the engine");
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("stopped by the user"), "{stderr}");
    assert!(
        same(&before, &termios(&terminal)),
        "terminal settings restored on exit"
    );
}
