//! The engine's sandbox: each thread that serves the guest or a client confines itself
//! with a seccomp-bpf allowlist of its own (`seccomp`) before it enters its loop.
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

pub mod seccomp;
mod sigsys;
mod spawner;

use std::io;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;
use std::thread::{Builder, JoinHandle};

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

struct Sandbox {
    mode: Mode,
    /// Accept the test-only `seccomp_trip` control request (`--test-seccomp`).
    trips_allowed: bool,
}

static SANDBOX: OnceLock<Sandbox> = OnceLock::new();

/// Sets the process's sandbox up; call once from `main` before any thread starts.
/// Without a call (unit tests, the library used elsewhere) `enter` does nothing.
pub fn init(mode: Mode, trips_allowed: bool) -> io::Result<()> {
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
    let _ = SANDBOX.set(Sandbox {
        mode,
        trips_allowed,
    });
    Ok(())
}

/// Confines the calling thread to the allowlist of `kind`. A thread calls it once,
/// before it serves anything.
pub fn enter(kind: ThreadKind) {
    sigsys::set_kind(kind);
    let Some(sandbox) = SANDBOX.get() else {
        return;
    };
    if sandbox.mode == Mode::Off {
        return;
    }
    if let Err(e) = seccomp::apply(kind, sandbox.mode) {
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

/// Kinds asked to make a forbidden syscall by `seccomp_trip` (a bit per kind).
static TRIPS: AtomicU8 = AtomicU8::new(0);

/// Arms the test-only trip for `kind`: its threads make a forbidden syscall at their
/// next turn (`trip_point`). Refused unless the engine runs with `--test-seccomp`.
pub fn arm_trip(kind: ThreadKind) -> Result<(), String> {
    match SANDBOX.get() {
        Some(sandbox) if sandbox.trips_allowed => {
            TRIPS.fetch_or(kind.bit(), Ordering::SeqCst);
            Ok(())
        }
        _ => Err("seccomp_trip needs an engine started with --test-seccomp".into()),
    }
}

/// Where a thread of `kind` makes the armed forbidden syscall. One relaxed load when
/// nothing is armed.
#[inline]
pub fn trip_point(kind: ThreadKind) {
    if TRIPS.load(Ordering::Relaxed) & kind.bit() != 0 {
        seccomp::forbidden_syscall();
    }
}
