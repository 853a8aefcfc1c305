//! One thread per vCPU: `KVM_RUN` in a loop, port I/O and MMIO exits routed to the
//! devices, everything else that ends the guest turned into an `ExitReason`.
//!
//! Stopping: the VM's owner sets `stop` and sends `VCPU_KICK_SIGNAL` to the thread until
//! it ends; the signal makes a blocked `KVM_RUN` return `EINTR`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::thread::JoinHandle;

use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::devices::PioBus;
use crate::exit::{ExitReason, ExitSender};
use crate::pause::Pauser;
use crate::pci::PciMmio;

/// The real-time signal that kicks a vCPU thread out of `KVM_RUN`.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Nothing to do: being delivered is the point (KVM_RUN returns EINTR).
}

/// Installs the kick handler once per process.
pub fn install_kick_handler() -> std::io::Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = register_signal_handler(kick_signal(), on_kick)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()));
    });
    result
}

/// What a vCPU thread needs besides its fd.
pub struct VcpuContext {
    pub pio: Arc<PioBus>,
    pub mmio: PciMmio,
    pub exit: ExitSender,
    pub stop: Arc<AtomicBool>,
    pub pauser: Arc<Pauser>,
}

/// Runs `vcpu` on a new thread named `vcpu<index>`.
pub fn spawn(index: u8, vcpu: VcpuFd, ctx: VcpuContext) -> std::io::Result<JoinHandle<VcpuFd>> {
    std::thread::Builder::new()
        .name(format!("vcpu{index}"))
        // The run loop needs little stack; only touched pages cost memory.
        .stack_size(256 << 10)
        .spawn(move || {
            // Pinned (if asked) from the thread itself, which knows its kernel id.
            crate::resources::cpu::vcpu_started(usize::from(index));
            crate::sandbox::enter(crate::sandbox::ThreadKind::Vcpu);
            run(index, vcpu, ctx)
        })
}

/// Tells the VM's owner if a vCPU thread ends without saying why (a panic in exit
/// handling): the owner must never wait on a VM that has lost a vCPU.
struct EndGuard<'a> {
    exit: &'a ExitSender,
    index: u8,
    armed: bool,
}

impl Drop for EndGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.exit.send(ExitReason::Crash(format!(
                "vCPU {} thread ended unexpectedly",
                self.index
            )));
        }
    }
}

/// Runs the vCPU until it is stopped, and hands its fd back (a save reads its state).
fn run(index: u8, mut vcpu: VcpuFd, ctx: VcpuContext) -> VcpuFd {
    let mut guard = EndGuard {
        exit: &ctx.exit,
        index,
        armed: true,
    };
    run_loop(index, &mut vcpu, &ctx);
    ctx.pauser.vcpu_ended();
    guard.armed = false;
    vcpu
}

fn run_loop(index: u8, vcpu: &mut VcpuFd, ctx: &VcpuContext) {
    while !ctx.stop.load(Ordering::Acquire) {
        ctx.pauser.park_if_paused();
        crate::sandbox::trip_point(crate::sandbox::ThreadKind::Vcpu);
        if ctx.stop.load(Ordering::Acquire) {
            break;
        }
        let outcome = match vcpu.run() {
            Ok(exit) => handle_exit(exit, ctx),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Outcome::Continue,
            Err(e) => Outcome::Stop(ExitReason::Crash(format!("KVM_RUN failed: {e}"))),
        };
        if let Outcome::Stop(reason) = outcome {
            let reason = match reason {
                ExitReason::Crash(why) => {
                    ExitReason::Crash(format!("{why} on vCPU {index}{}", where_it_stopped(vcpu)))
                }
                other => other,
            };
            tracing::debug!("vcpu{index}: {reason}");
            ctx.exit.send(reason);
            break;
        }
    }
}

/// Where a crashed vCPU was, and KVM's own detail for an internal error: what a person
/// needs to tell a guest bug from a KVM limitation (PVM cannot emulate FXSAVE/XRSTOR,
/// for instance, and reports that as an emulation failure).
fn where_it_stopped(vcpu: &mut VcpuFd) -> String {
    let mut text = String::new();
    let run = vcpu.get_kvm_run();
    if run.exit_reason == kvm_bindings::KVM_EXIT_INTERNAL_ERROR {
        // SAFETY: the exit reason says the `internal` member of the union is the live one.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let what = match internal.suberror {
            kvm_bindings::KVM_INTERNAL_ERROR_EMULATION => "instruction emulation failed",
            kvm_bindings::KVM_INTERNAL_ERROR_SIMUL_EX => "exception while delivering an exception",
            kvm_bindings::KVM_INTERNAL_ERROR_DELIVERY_EV => "event delivery failed",
            _ => "other",
        };
        text.push_str(&format!(", suberror {} ({what})", internal.suberror));
    }
    if let Ok(regs) = vcpu.get_regs() {
        text.push_str(&format!(", rip {:#x}", regs.rip));
    }
    text
}

/// Finishes the I/O a stopped vCPU was in the middle of (`x86_64::snapshot::
/// complete_pending_io`), serving any further exits it makes on the buses, so that a
/// capture sees the instruction done. An exit that would end the VM (the guest powering
/// off in that instant) is sent on as usual.
pub fn complete_pending_io(
    fd: &mut VcpuFd,
    ctx: &VcpuContext,
) -> Result<(), crate::x86_64::snapshot::SnapshotError> {
    crate::x86_64::snapshot::complete_pending_io(fd, |exit| {
        if let Outcome::Stop(reason) = handle_exit(exit, ctx) {
            ctx.exit.send(reason);
        }
    })
}

enum Outcome {
    Continue,
    Stop(ExitReason),
}

fn handle_exit(exit: VcpuExit<'_>, ctx: &VcpuContext) -> Outcome {
    match exit {
        // String I/O (`rep outsb`) arrives as one exit with all its bytes: devices on
        // our bus are byte-wide and consume each byte in turn.
        VcpuExit::IoOut(port, data) => ctx.pio.write(port, data),
        VcpuExit::IoIn(port, data) => ctx.pio.read(port, data),
        // MMIO is PCI's (ECAM and BARs); elsewhere reads float high and writes drop.
        VcpuExit::MmioRead(addr, data) => {
            if !ctx.mmio.read(addr, data) {
                data.fill(0xff);
            }
        }
        VcpuExit::MmioWrite(addr, data) => {
            if !ctx.mmio.write(addr, data) {
                tracing::trace!("mmio write to unclaimed {addr:#x}");
            }
        }
        // The in-kernel LAPIC handles HLT; an interrupted run just goes round again.
        VcpuExit::Hlt | VcpuExit::Intr => {}
        VcpuExit::Shutdown => {
            return Outcome::Stop(ExitReason::Crash("triple fault (KVM_EXIT_SHUTDOWN)".into()))
        }
        VcpuExit::SystemEvent(kind, _) => {
            return Outcome::Stop(match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::PowerOff,
                KVM_SYSTEM_EVENT_RESET => ExitReason::Reboot,
                KVM_SYSTEM_EVENT_CRASH => {
                    ExitReason::Crash("guest reported a crash (KVM_SYSTEM_EVENT_CRASH)".into())
                }
                other => ExitReason::Crash(format!("unknown KVM system event {other}")),
            })
        }
        VcpuExit::InternalError => {
            return Outcome::Stop(ExitReason::Crash(
                "KVM internal error (KVM_EXIT_INTERNAL_ERROR)".into(),
            ))
        }
        VcpuExit::FailEntry(reason, cpu) => {
            return Outcome::Stop(ExitReason::Crash(format!(
                "VM entry failed (KVM_EXIT_FAIL_ENTRY, hardware reason {reason:#x} on CPU {cpu})"
            )))
        }
        other => return Outcome::Stop(ExitReason::Crash(format!("unexpected KVM exit {other:?}"))),
    }
    Outcome::Continue
}

/// Stops and joins vCPU threads: sets `stop`, then kicks each live thread until it has
/// ended (a kick that lands just before a thread enters `KVM_RUN` is lost, so one is not
/// enough).
/// Stops every vCPU thread and returns their fds in `threads`' order (`None` for a
/// thread that panicked).
pub fn stop_all(threads: Vec<JoinHandle<VcpuFd>>, stop: &AtomicBool) -> Vec<Option<VcpuFd>> {
    stop.store(true, Ordering::Release);
    let mut fds: Vec<Option<VcpuFd>> = threads.iter().map(|_| None).collect();
    let mut live: Vec<(usize, JoinHandle<VcpuFd>)> = threads.into_iter().enumerate().collect();
    while !live.is_empty() {
        for (_, t) in &live {
            if !t.is_finished() {
                // ESRCH just means it ended between the check and the kick.
                let _ = t.kill(kick_signal());
            }
        }
        let (done, running): (Vec<_>, Vec<_>) =
            live.into_iter().partition(|(_, t)| t.is_finished());
        for (i, t) in done {
            match t.join() {
                Ok(fd) => fds[i] = Some(fd),
                Err(_) => tracing::error!("a vCPU thread panicked"),
            }
        }
        live = running;
        if !live.is_empty() {
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
    }
    fds
}
