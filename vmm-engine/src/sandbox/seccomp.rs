//! The allowlists, one per thread kind, as seccomp-bpf programs (`seccompiler`).
//!
//! The lists were collected by running the e2e suite with the engine under `strace -f`
//! (`VIREO_VMM_BINARY` naming a wrapper script) and keeping, per thread name, what each
//! thread made after its `seccomp` call. `VIREO_SECCOMP=log` lets the kernel log the
//! misses instead (where the kernel has audit: the log names the thread). A feature that
//! needs a syscall gets it on its thread kind only.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::Mode;

/// The kinds of threads that confine themselves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// A vCPU: `KVM_RUN` and the exits it routes to the devices (which may start or
    /// stop a device's worker).
    Vcpu,
    /// A virtio device's worker: queues, disk images, sockets, timers.
    Device,
    /// The control socket's thread: clients' requests (pause, screenshots, cgroups...).
    Control,
    /// The console's input thread: stdin to the serial port.
    Console,
}

impl ThreadKind {
    pub const ALL: [ThreadKind; 4] = [Self::Vcpu, Self::Device, Self::Control, Self::Console];

    /// The name the log line and `seccomp_trip` use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Vcpu => "vcpu",
            Self::Device => "device",
            Self::Control => "control",
            Self::Console => "console",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    pub(super) fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// Whether the kernel takes seccomp filters whose answer is SIGSYS (what a violation
/// raises): `SECCOMP_GET_ACTION_AVAIL` fails without CONFIG_SECCOMP_FILTER.
pub fn kernel_supports() -> bool {
    const SECCOMP_GET_ACTION_AVAIL: libc::c_ulong = 2;
    let action: u32 = libc::SECCOMP_RET_TRAP;
    // SAFETY: the kernel reads one u32 from `action`, which outlives the call.
    unsafe { libc::syscall(libc::SYS_seccomp, SECCOMP_GET_ACTION_AVAIL, 0, &action) == 0 }
}

/// The syscall `seccomp_trip` makes: in no list, harmless when allowed (`--no-seccomp`).
pub const TRIP_SYSCALL: libc::c_long = libc::SYS_getpgrp;

pub(super) fn forbidden_syscall() {
    // SAFETY: getpgrp takes no arguments and touches no memory.
    unsafe { libc::syscall(TRIP_SYSCALL) };
}

/// Installs the filters of `kind` on the calling thread, as `sandbox::enter` does (public
/// for the `seccomp_cost` bench, which times syscalls under them).
pub fn apply(kind: ThreadKind, mode: Mode) -> Result<(), String> {
    if kind != ThreadKind::Control {
        let refuse = refuse_opens()?;
        seccompiler::apply_filter(refuse).map_err(|e| e.to_string())?;
    }
    let program = program(kind, mode)?;
    seccompiler::apply_filter(&program).map_err(|e| e.to_string())
}

/// `openat` fails with EACCES instead of killing: glibc's allocator reads
/// /proc/sys/vm/overcommit_memory from whichever thread first trims a heap, and copes
/// with a refusal; no other file is opened by these kinds. Stacked under the allowlist
/// (the kernel takes the stricter answer: an errno over allow).
fn refuse_opens() -> Result<&'static BpfProgram, String> {
    static PROGRAM: OnceLock<Result<BpfProgram, String>> = OnceLock::new();
    PROGRAM
        .get_or_init(|| {
            let rules = [(libc::SYS_openat, Vec::new()), (libc::SYS_open, Vec::new())];
            let filter = SeccompFilter::new(
                rules.into_iter().collect(),
                SeccompAction::Allow,
                SeccompAction::Errno(libc::EACCES as u32),
                TargetArch::x86_64,
            )
            .map_err(|e| e.to_string())?;
            filter
                .try_into()
                .map_err(|e: seccompiler::BackendError| e.to_string())
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// The compiled program of each kind and mode, built once.
fn program(kind: ThreadKind, mode: Mode) -> Result<BpfProgram, String> {
    static CACHE: OnceLock<[Result<BpfProgram, String>; 8]> = OnceLock::new();
    let all = CACHE.get_or_init(|| {
        let build = |i: usize| {
            let kind = ThreadKind::ALL[i % 4];
            let mismatch = if i < 4 {
                SeccompAction::Trap
            } else {
                SeccompAction::Log
            };
            compile(kind, mismatch)
        };
        std::array::from_fn(build)
    });
    let index = kind as usize + if mode == Mode::Log { 4 } else { 0 };
    all[index].clone()
}

/// Compiles the list of `kind`, with `mismatch` for a syscall outside it.
pub fn compile(kind: ThreadKind, mismatch: SeccompAction) -> Result<BpfProgram, String> {
    let filter = SeccompFilter::new(
        rules(kind),
        mismatch,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| e.to_string())?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())
}

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

fn rules(kind: ThreadKind) -> Rules {
    let mut rules = Rules::new();
    allow(&mut rules, COMMON);
    match kind {
        ThreadKind::Vcpu => {
            allow(&mut rules, VCPU);
            rules.insert(libc::SYS_ioctl, ioctls(&vcpu_ioctls()));
        }
        ThreadKind::Device => {
            allow(&mut rules, DEVICE);
            rules.insert(libc::SYS_ioctl, ioctls(&[FIONBIO, FIONREAD]));
        }
        ThreadKind::Control => {
            allow(&mut rules, CONTROL);
            rules.insert(libc::SYS_ioctl, ioctls(&control_ioctls()));
        }
        ThreadKind::Console => {
            rules.insert(libc::SYS_ioctl, ioctls(&[libc::TCGETS]));
        }
    }
    rules
}

fn allow(rules: &mut Rules, syscalls: &[libc::c_long]) {
    for &nr in syscalls {
        rules.insert(nr, Vec::new());
    }
}

/// `ioctl` only with one of `requests` (the second argument).
fn ioctls(requests: &[u64]) -> Vec<SeccompRule> {
    requests
        .iter()
        .map(|&request| {
            let request =
                SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, request)
                    .expect("a valid argument index");
            SeccompRule::new(vec![request]).expect("a rule with one condition")
        })
        .collect()
}

const FIONBIO: u64 = libc::FIONBIO;
const FIONREAD: u64 = libc::FIONREAD;

fn kvm_io(nr: u32) -> u64 {
    vmm_sys_util::ioctl::ioctl_expr(vmm_sys_util::ioctl::_IOC_NONE, kvm_bindings::KVMIO, nr, 0)
        as u64
}

/// A KVM ioctl number carrying a `T` in direction `dir` (`_IOC_READ`/`_IOC_WRITE`).
fn kvm_ioc<T>(dir: u32, nr: u32) -> u64 {
    let size = std::mem::size_of::<T>() as u32;
    vmm_sys_util::ioctl::ioctl_expr(dir, kvm_bindings::KVMIO, nr, size) as u64
}

fn kvm_ior<T>(nr: u32) -> u64 {
    kvm_ioc::<T>(vmm_sys_util::ioctl::_IOC_READ, nr)
}

fn kvm_iow<T>(nr: u32) -> u64 {
    kvm_ioc::<T>(vmm_sys_util::ioctl::_IOC_WRITE, nr)
}

/// The control thread's: sockets, and KVM's clock, which a pause holds and a resume
/// puts back.
fn control_ioctls() -> Vec<u64> {
    use kvm_bindings::kvm_clock_data;
    vec![
        FIONBIO,
        kvm_ior::<kvm_clock_data>(0x7c), // KVM_GET_CLOCK
        kvm_iow::<kvm_clock_data>(0x7b), // KVM_SET_CLOCK
    ]
}

/// The KVM requests a vCPU thread makes: `KVM_RUN`, the registers of a crash report,
/// and the VM-wide ones a device's (re)configuration makes from a vCPU's MMIO write
/// (irqfds, ioeventfds, MSI routes).
fn vcpu_ioctls() -> Vec<u64> {
    use kvm_bindings::{
        kvm_ioeventfd, kvm_irq_level, kvm_irq_routing, kvm_irqfd, kvm_msi, kvm_regs,
    };
    vec![
        kvm_io(0x80),                     // KVM_RUN
        kvm_ior::<kvm_regs>(0x81),        // KVM_GET_REGS
        kvm_iow::<kvm_irqfd>(0x76),       // KVM_IRQFD
        kvm_iow::<kvm_ioeventfd>(0x79),   // KVM_IOEVENTFD
        kvm_iow::<kvm_irq_routing>(0x6a), // KVM_SET_GSI_ROUTING
        kvm_iow::<kvm_irq_level>(0x61),   // KVM_IRQ_LINE
        kvm_iow::<kvm_msi>(0xa5),         // KVM_SIGNAL_MSI
        FIONBIO,
    ]
}

use libc::*;

/// Every kind: memory (the allocator), locks, eventfds and epoll, time, logging to
/// stderr, signals (the vCPU kick, SIGSYS's return), thread exit.
const COMMON: &[c_long] = &[
    SYS_read,
    SYS_write,
    SYS_readv,
    SYS_writev,
    SYS_close,
    SYS_futex,
    SYS_mmap,
    SYS_munmap,
    SYS_mremap,
    SYS_mprotect,
    SYS_madvise,
    SYS_brk,
    SYS_rt_sigprocmask,
    SYS_rt_sigreturn,
    SYS_sigaltstack,
    SYS_sched_yield,
    SYS_sched_getaffinity,
    SYS_clock_gettime,
    SYS_clock_nanosleep,
    SYS_nanosleep,
    SYS_gettid,
    SYS_getpid,
    SYS_getrandom,
    SYS_epoll_wait,
    SYS_epoll_pwait,
    SYS_epoll_ctl,
    SYS_eventfd2,
    SYS_fcntl,
    SYS_poll,
    SYS_ppoll,
    SYS_restart_syscall,
    SYS_rseq,
    SYS_tgkill,
    SYS_exit,
    SYS_exit_group,
    // Refused with EACCES outside the control thread (`refuse_opens`).
    SYS_openat,
];

/// A vCPU thread: a device started by the guest gets its epoll and eventfds here.
const VCPU: &[c_long] = &[
    SYS_epoll_create1,
    SYS_dup,
    SYS_timerfd_create,
    SYS_timerfd_settime,
];

/// A device worker: disk images (positioned and vectored I/O, sync, discard, locks),
/// sockets (vsock's host side connects, passt's and TAP's frames), rate-limit timers,
/// balloon `madvise`, the GPU's memfd.
const DEVICE: &[c_long] = &[
    SYS_pread64,
    SYS_pwrite64,
    SYS_preadv,
    SYS_pwritev,
    SYS_preadv2,
    SYS_pwritev2,
    SYS_lseek,
    SYS_fsync,
    SYS_fdatasync,
    SYS_fallocate,
    SYS_ftruncate,
    SYS_fstat,
    SYS_statx,
    SYS_newfstatat,
    SYS_openat,
    SYS_socket,
    SYS_connect,
    SYS_accept4,
    SYS_sendmsg,
    SYS_recvmsg,
    SYS_sendto,
    SYS_recvfrom,
    SYS_shutdown,
    SYS_getsockopt,
    SYS_setsockopt,
    SYS_epoll_create1,
    SYS_timerfd_create,
    SYS_timerfd_settime,
    SYS_timerfd_gettime,
    SYS_memfd_create,
    SYS_dup,
];

/// The control thread: clients (accept, SCM_RIGHTS), screenshots (PNG written and
/// renamed), `set-cpu` (cgroup files, affinity), `stats` (/proc), pause (the vCPU kick,
/// KVM's clock), the balloon's waits.
const CONTROL: &[c_long] = &[
    SYS_accept4,
    SYS_sendmsg,
    SYS_recvmsg,
    SYS_sendto,
    SYS_recvfrom,
    SYS_shutdown,
    SYS_getsockopt,
    SYS_openat,
    SYS_fstat,
    SYS_statx,
    SYS_newfstatat,
    SYS_lseek,
    SYS_rename,
    SYS_renameat,
    SYS_renameat2,
    SYS_unlink,
    SYS_unlinkat,
    SYS_mkdir,
    SYS_mkdirat,
    SYS_rmdir,
    SYS_fsync,
    SYS_fdatasync,
    SYS_ftruncate,
    SYS_memfd_create,
    SYS_getdents64,
    SYS_sched_setaffinity,
    SYS_getrusage,
    SYS_dup,
    SYS_timerfd_settime,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ioctl_numbers_are_kvms() {
        // As strace names them on this host.
        let vcpu = vcpu_ioctls();
        assert!(vcpu.contains(&0xae80), "KVM_RUN");
        assert!(vcpu.contains(&0x4040_ae79), "KVM_IOEVENTFD");
        assert!(vcpu.contains(&0x4008_ae6a), "KVM_SET_GSI_ROUTING");
        let control = control_ioctls();
        assert!(control.contains(&0x8030_ae7c), "KVM_GET_CLOCK");
        assert!(control.contains(&0x4030_ae7b), "KVM_SET_CLOCK");
    }

    /// Forks; the child installs `kind`'s filter (SIGSYS left at its default: death),
    /// makes `syscall` and exits 0. The signal that ended it, if any.
    fn child_makes(kind: ThreadKind, syscall: impl Fn()) -> Option<i32> {
        let program = program(kind, Mode::Enforce).unwrap();
        let refuse = refuse_opens().unwrap().clone();
        // SAFETY: the child only makes syscalls (no allocation, no locks) and _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let ok = seccompiler::apply_filter(&refuse).is_ok()
                && seccompiler::apply_filter(&program).is_ok();
            syscall();
            // SAFETY: ends the child without running the parent's atexit handlers.
            unsafe { libc::_exit(if ok { 0 } else { 3 }) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        if libc::WIFSIGNALED(status) {
            return Some(libc::WTERMSIG(status));
        }
        assert_eq!(
            libc::WEXITSTATUS(status),
            0,
            "the child failed (3: a filter was refused, 4: open was not refused with EACCES)"
        );
        None
    }

    #[test]
    fn a_listed_syscall_passes_and_an_unlisted_one_raises_sigsys() {
        for kind in ThreadKind::ALL {
            // SAFETY: getpid takes no arguments.
            let listed = child_makes(kind, || unsafe {
                libc::syscall(libc::SYS_getpid);
            });
            assert_eq!(listed, None, "{kind:?}");
            let unlisted = child_makes(kind, forbidden_syscall);
            assert_eq!(unlisted, Some(libc::SIGSYS), "{kind:?}");
        }
    }

    #[test]
    fn a_vcpu_may_run_kvm_but_not_make_other_ioctls() {
        // SAFETY: KVM_RUN on a bad fd fails with EBADF after the filter let it through.
        let run = child_makes(ThreadKind::Vcpu, || unsafe {
            libc::ioctl(-1, 0xae80);
        });
        assert_eq!(run, None);
        // SAFETY: TCGETS on a bad fd; the filter stops it first.
        let tty = child_makes(ThreadKind::Vcpu, || unsafe {
            libc::ioctl(-1, libc::TCGETS);
        });
        assert_eq!(tty, Some(libc::SIGSYS));
    }

    #[test]
    fn opening_a_file_outside_the_control_thread_fails_instead_of_killing() {
        let opened = child_makes(ThreadKind::Device, || {
            // SAFETY: a NUL-terminated path; the result is checked below via exit code.
            let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY) };
            let errno = std::io::Error::last_os_error().raw_os_error();
            if fd >= 0 || errno != Some(libc::EACCES) {
                // SAFETY: ends the child at once.
                unsafe { libc::_exit(4) };
            }
        });
        assert_eq!(opened, None);
    }
}
