//! The engine's sandbox: each thread that serves the guest or a client confines itself
//! before it enters its loop, with a Landlock ruleset (`landlock`: which files it may
//! still open) and then a seccomp-bpf allowlist (`seccomp`: which syscalls it may make).
//!
//! Filters are per thread (no TSYNC): a vCPU thread installs the vCPU list before its
//! first `KVM_RUN`, a device worker the worker list before its first `epoll_wait`, the
//! control thread its list before it accepts a client. The main thread stays unfiltered:
//! it spawns `passt` and `vireo-window` (a filter would follow them across `exec`) and
//! rebuilds the whole VM on a reboot or a failed save. A filter is inherited by the
//! threads its thread creates, so threads are never created from a filtered one:
//! `spawn` hands the creation to the unfiltered spawner thread (a vCPU thread starts a
//! device's worker when the guest writes DRIVER_OK).
//!
//! A forbidden syscall raises SIGSYS; `sigsys` writes which thread kind made which
//! syscall to stderr and ends the process with status `EXIT_STATUS`.

pub mod landlock;
pub mod seccomp;
mod sigsys;
mod spawner;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::thread::{Builder, JoinHandle};
use std::time::Duration;

pub use seccomp::ThreadKind;

/// The exit status after a forbidden syscall: 128 + SIGSYS, as a shell reports a process
/// killed by that signal.
pub const EXIT_STATUS: i32 = 128 + libc::SIGSYS;

/// What the filters do with a syscall outside the list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// No filters (`--no-seccomp`, for debugging).
    Off,
    /// Kill the process, with a log line (the default).
    Enforce,
    /// Allow it and let the kernel log it (`VIREO_SECCOMP=log`, to find what a new
    /// feature needs; the kernel's audit log names the thread and the syscall).
    Log,
}

/// How the process confines its threads.
#[derive(Clone, Debug)]
pub struct Options {
    pub seccomp: Mode,
    /// Landlock rulesets where the kernel has Landlock (`--no-landlock` turns them off).
    pub landlock: bool,
    /// The directories the control thread may write in (the control socket's).
    pub runtime_dirs: Vec<PathBuf>,
    /// Accept the test-only `seccomp_trip` and `sandbox_probe` requests
    /// (`--test-sandbox`).
    pub test_requests: bool,
}

struct Sandbox {
    options: Options,
    /// The kernel's Landlock ABI, asked once here: a confined thread may not ask.
    landlock_abi: i64,
    /// `runtime_dirs` as named and as resolved, for `writable_dirs`.
    writable: Vec<PathBuf>,
}

static SANDBOX: OnceLock<Sandbox> = OnceLock::new();

/// Sets the process's sandbox up; call once from `main` before any thread starts.
/// Without a call (unit tests, the library used elsewhere) `enter` does nothing.
pub fn init(options: Options) -> io::Result<()> {
    let mode = options.seccomp;
    let landlock_abi = landlock::kernel_abi();
    if options.landlock && landlock_abi < 1 {
        tracing::warn!(
            "this kernel has no Landlock (or it is disabled): the engine's threads keep \
             their file access{}",
            if mode == Mode::Off {
                ""
            } else {
                "; seccomp still confines their syscalls"
            }
        );
    }
    if mode != Mode::Off {
        if !seccomp::kernel_supports() {
            return Err(io::Error::other(
                "this kernel has no seccomp filters (CONFIG_SECCOMP_FILTER); \
                 run with --no-seccomp to go without them",
            ));
        }
        sigsys::install()?;
        spawner::start()?;
    }
    let writable = landlock::with_resolved(&options.runtime_dirs);
    let _ = SANDBOX.set(Sandbox {
        options,
        landlock_abi,
        writable,
    });
    Ok(())
}

/// Confines the calling thread: the Landlock ruleset and then the seccomp allowlist of
/// `kind` (Landlock first: its own syscalls are in no allowlist). A thread calls it
/// once, before it serves anything.
pub fn enter(kind: ThreadKind) {
    sigsys::set_kind(kind);
    let Some(sandbox) = SANDBOX.get() else {
        return;
    };
    let options = &sandbox.options;
    if options.landlock {
        if let Err(e) = landlock::apply(kind, &options.runtime_dirs) {
            eprintln!(
                "vireo-vmm: landlock: cannot confine thread {}: {e}",
                kind.name()
            );
            std::process::exit(EXIT_STATUS);
        }
    }
    if options.seccomp == Mode::Off {
        return;
    }
    if let Err(e) = seccomp::apply(kind, options.seccomp) {
        // A thread that cannot confine itself must not serve: the filter was built and
        // checked at start, so this is a kernel refusing it.
        eprintln!(
            "vireo-vmm: seccomp: cannot filter thread {}: {e}",
            kind.name()
        );
        std::process::exit(EXIT_STATUS);
    }
}

/// Starts a thread from the unfiltered spawner thread (see the module's comment), so
/// that it does not inherit the filter of its caller.
pub fn spawn<T, F>(builder: Builder, f: F) -> io::Result<JoinHandle<T>>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    spawner::spawn(builder, f)
}

/// What test-only requests armed, a bit per kind: the low nibble asks for a forbidden
/// syscall (`seccomp_trip`), the high one for an open (`sandbox_probe`).
static ARMED: AtomicU8 = AtomicU8::new(0);
const PROBE_SHIFT: u8 = 4;

/// The armed probe's path, and its answer: the errno of the open (0: it opened).
static PROBE: Mutex<Probe> = Mutex::new(Probe {
    kind: None,
    path: None,
    errno: None,
});
static PROBE_DONE: Condvar = Condvar::new();

struct Probe {
    /// The kind asked; only its threads answer.
    kind: Option<ThreadKind>,
    path: Option<PathBuf>,
    errno: Option<i32>,
}

/// The probe bits of every kind in `ARMED`.
const PROBE_BITS: u8 = 0xf << PROBE_SHIFT;

fn test_requests_allowed(request: &str) -> Result<(), String> {
    match SANDBOX.get() {
        Some(sandbox) if sandbox.options.test_requests => Ok(()),
        _ => Err(format!(
            "{request} needs an engine started with --test-sandbox"
        )),
    }
}

/// Arms the test-only trip for `kind`: its threads make a forbidden syscall at their
/// next turn (`trip_point`). Refused unless the engine runs with `--test-sandbox`.
pub fn arm_trip(kind: ThreadKind) -> Result<(), String> {
    test_requests_allowed("seccomp_trip")?;
    ARMED.fetch_or(kind.bit(), Ordering::SeqCst);
    Ok(())
}

/// Arms the test-only probe for `kind`: the next of its threads to reach `trip_point`
/// tries to open `path` for reading. `probe_result` waits for the answer.
pub fn arm_probe(kind: ThreadKind, path: &Path) -> Result<(), String> {
    test_requests_allowed("sandbox_probe")?;
    if kind == ThreadKind::Console {
        // It waits on stdin and has no probe point.
        return Err("sandbox_probe: the console thread cannot be probed".into());
    }
    let mut probe = PROBE.lock().unwrap_or_else(|e| e.into_inner());
    probe.kind = Some(kind);
    probe.path = Some(path.to_path_buf());
    probe.errno = None;
    ARMED.fetch_or(kind.bit() << PROBE_SHIFT, Ordering::SeqCst);
    Ok(())
}

/// The armed probe's errno if a thread made it within `timeout` (the probe stays armed
/// until `disarm_probe`).
pub fn probe_answer(timeout: Duration) -> Option<i32> {
    let probe = PROBE.lock().unwrap_or_else(|e| e.into_inner());
    let (probe, _) = PROBE_DONE
        .wait_timeout_while(probe, timeout, |p| p.errno.is_none())
        .unwrap_or_else(|e| e.into_inner());
    probe.errno
}

/// Ends the armed probe, so that no later thread answers a later probe with it.
pub fn disarm_probe() {
    let mut probe = PROBE.lock().unwrap_or_else(|e| e.into_inner());
    ARMED.fetch_and(!PROBE_BITS, Ordering::SeqCst);
    probe.kind = None;
    probe.errno = None;
}

/// Where a thread of `kind` does what a test armed. One relaxed load when nothing is.
#[inline]
pub fn trip_point(kind: ThreadKind) {
    let armed = ARMED.load(Ordering::Relaxed);
    if armed != 0 {
        armed_point(kind, armed);
    }
}

#[cold]
fn armed_point(kind: ThreadKind, armed: u8) {
    if armed & kind.bit() != 0 {
        seccomp::forbidden_syscall();
    }
    let probe_bit = kind.bit() << PROBE_SHIFT;
    if armed & probe_bit != 0 && ARMED.fetch_and(!probe_bit, Ordering::SeqCst) & probe_bit != 0 {
        let mut probe = PROBE.lock().unwrap_or_else(|e| e.into_inner());
        if probe.kind != Some(kind) || probe.errno.is_some() {
            return;
        }
        let errno = match probe.path.as_deref().map(std::fs::File::open) {
            Some(Ok(_)) => 0,
            Some(Err(e)) => e.raw_os_error().unwrap_or(-1),
            None => -1,
        };
        probe.errno = Some(errno);
        PROBE_DONE.notify_all();
    }
}

/// The directories the control thread may write in, when Landlock confines it: a
/// path outside them is refused with a message before the kernel refuses it.
pub fn writable_dirs() -> Option<&'static [PathBuf]> {
    let sandbox = SANDBOX.get()?;
    let options = &sandbox.options;
    (options.landlock && sandbox.landlock_abi >= 1).then_some(sandbox.writable.as_slice())
}
