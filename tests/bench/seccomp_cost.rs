//! What the engine's seccomp filters cost, measured so that the guest's noisy throughput
//! does not hide it (the `blk` and `vsock` benches' with/without columns scatter by more
//! than the 2 % goal on this shared machine):
//!
//! 1. each guest-facing thread kind's filters (`vireo_vmm::sandbox::seccomp::apply`),
//!    timed on a thread of this process that installs them against one that does not, on
//!    the syscalls that kind makes most and on one of the highest-numbered it allows
//!    (dearest where a filter tests the numbers in order): nanoseconds added per syscall;
//! 2. how many syscalls the engine makes in the vsock and block benchmarks' guest runs
//!    (`perf stat`, tracepoint `raw_syscalls:sys_enter`, the whole process), less a run
//!    that only boots and powers off, and how long that work took;
//! 3. their product over that time: an upper bound on the share of the run the filters
//!    take. It prices every syscall at the dearest kind's cost (the unfiltered main
//!    thread's too) and adds them up as if none ran in parallel with guest work.
//!
//! `cargo bench -p vireo-e2e --bench seccomp_cost` (VIREO_BENCH_MIB=N MiB for vsock each
//! way and for the disk, default 256).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use vireo_e2e::engine::{run_command, s, vmm_binary};
use vireo_e2e::env_u64;
use vireo_e2e::probe_guest::probe_guest_elf;
use vireo_e2e::vsock_host::{Mode, Server};
use vireo_vmm::sandbox::seccomp::{self, ThreadKind};
use vireo_vmm::sandbox::Mode as Filtering;

const PORT: u32 = 5000;
/// `_IO(KVMIO, 0x80)`: what a vCPU thread calls once per exit.
const KVM_RUN: libc::c_ulong = 0xae80;
const ITERATIONS: u32 = 200_000;
const BATCHES: usize = 9;

/// The syscalls timed for a kind: one round of them, and how many it makes.
struct Mix {
    label: &'static str,
    per_round: u32,
    round: fn(&Fds),
}

struct Fds {
    event: OwnedFd,
    epoll: OwnedFd,
}

impl Fds {
    fn new() -> Fds {
        // SAFETY: plain fd-creating syscalls; each result is checked before it is owned.
        let (event, epoll) = unsafe {
            let e = libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC);
            let p = libc::epoll_create1(libc::EPOLL_CLOEXEC);
            assert!(e >= 0 && p >= 0, "eventfd/epoll_create1 failed");
            (OwnedFd::from_raw_fd(e), OwnedFd::from_raw_fd(p))
        };
        Fds { event, epoll }
    }
}

fn vcpu_round(_: &Fds) {
    // A bad fd: the filter checks the request, then the kernel answers EBADF at once.
    // SAFETY: ioctl on fd -1 touches no memory.
    unsafe { libc::ioctl(-1, KVM_RUN, 0) };
}

fn dearest_round(_: &Fds) {
    // pwritev2, the highest-numbered syscall of a worker's hot path, on a bad fd.
    // SAFETY: no iovecs are passed, and fd -1 is refused before anything is read.
    unsafe {
        libc::syscall(
            libc::SYS_pwritev2,
            -1,
            std::ptr::null::<libc::iovec>(),
            0,
            0,
            0,
            0,
        )
    };
}

fn device_round(fds: &Fds) {
    let one = 1u64.to_ne_bytes();
    let mut back = [0u8; 8];
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 4];
    // SAFETY: the buffers outlive each call and their lengths are passed with them; the
    // fds are open for as long as `fds` lives.
    unsafe {
        libc::write(fds.event.as_raw_fd(), one.as_ptr().cast(), one.len());
        libc::read(fds.event.as_raw_fd(), back.as_mut_ptr().cast(), back.len());
        libc::epoll_wait(fds.epoll.as_raw_fd(), events.as_mut_ptr(), 4, 0);
    }
}

/// Nanoseconds per syscall of one batch of `mix`.
fn time_batch(mix: &Mix, fds: &Fds) -> f64 {
    let start = Instant::now();
    for _ in 0..ITERATIONS {
        (mix.round)(fds);
    }
    start.elapsed().as_nanos() as f64 / f64::from(ITERATIONS * mix.per_round)
}

/// A thread that times batches of `mix` when asked, under `kind`'s filters if given
/// (a filter is per thread: this process stays unfiltered).
fn timer_thread(
    mix: &'static Mix,
    kind: Option<ThreadKind>,
) -> (mpsc::Sender<()>, mpsc::Receiver<f64>) {
    let (ask, asked) = mpsc::channel::<()>();
    let (tell, told) = mpsc::channel::<f64>();
    std::thread::spawn(move || {
        let fds = Fds::new();
        if let Some(kind) = kind {
            // What the engine's thread of this kind installs (for all but the control
            // thread, two stacked filters: the open refusal and the allowlist).
            seccomp::apply(kind, Filtering::Enforce).expect("the filters install");
        }
        for () in asked {
            if tell.send(time_batch(mix, &fds)).is_err() {
                break;
            }
        }
    });
    (ask, told)
}

/// (unfiltered, filtered) ns per syscall of `mix`: the best of `BATCHES` on each of two
/// threads, one under `kind`'s filters, their batches taking turns so that neither
/// side has the warm caches or the quiet moment to itself.
fn filter_cost(kind: ThreadKind, mix: &'static Mix) -> (f64, f64) {
    let plain = timer_thread(mix, None);
    let filtered = timer_thread(mix, Some(kind));
    let batch = |(ask, told): &(mpsc::Sender<()>, mpsc::Receiver<f64>)| {
        ask.send(()).expect("the timing thread");
        told.recv().expect("the timing thread")
    };
    let (mut before, mut after) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..BATCHES {
        before = before.min(batch(&plain));
        after = after.min(batch(&filtered));
    }
    (before, after)
}

/// A guest run under `perf stat`: (syscalls the engine made, seconds it ran).
fn count_syscalls(args: &[String]) -> (u64, f64) {
    let counts = std::env::temp_dir().join(format!("vireo-seccomp-{}.txt", std::process::id()));
    let mut perf = Command::new("perf");
    perf.args(["stat", "-x", ",", "-e", "raw_syscalls:sys_enter", "-o"])
        .arg(&counts)
        .arg("--")
        .arg(vmm_binary())
        .args(args);
    let run = run_command(&mut perf, Duration::from_secs(600));
    assert!(
        run.status.is_some_and(|s| s.success()),
        "the engine under perf failed:\n{}\n{}",
        run.stdout,
        run.stderr
    );
    let text = std::fs::read_to_string(&counts).unwrap_or_default();
    let _ = std::fs::remove_file(&counts);
    let syscalls = text
        .lines()
        .find(|l| l.contains("raw_syscalls:sys_enter"))
        .and_then(|l| l.split(',').next()?.trim().parse().ok())
        .unwrap_or_else(|| panic!("perf counted no syscalls (is tracefs there?):\n{text}"));
    (syscalls, run.elapsed.as_secs_f64())
}

fn engine_args(devices: &[String], cmdline: &str) -> Vec<String> {
    let mut args: Vec<String> = [
        "--kernel",
        s(&probe_guest_elf()),
        "--memory",
        "256M",
        "--cmdline",
        cmdline,
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    args.extend(devices.iter().cloned());
    args
}

/// (syscalls, seconds) of a workload less those of a run that only boots.
fn workload(devices: &[String], cmdline: &str) -> (u64, f64) {
    let (boot_calls, boot_secs) = count_syscalls(&engine_args(devices, "probe.run=poweroff"));
    let (calls, secs) = count_syscalls(&engine_args(devices, cmdline));
    (
        calls.saturating_sub(boot_calls),
        (secs - boot_secs).max(1e-3),
    )
}

fn vsock_workload(dir: &Path, mib: u64) -> (u64, f64) {
    let socket = dir.join("v.sock");
    let bytes = mib << 20;
    let _servers = [
        Server::start(&socket, PORT, Mode::Sink { bytes }, false),
        Server::start(&socket, PORT + 1, Mode::Source { bytes }, false),
        Server::start(&socket, PORT + 2, Mode::Echo, false),
    ];
    workload(
        &["--vsock".into(), format!("cid=3,socket={}", socket.display())],
        &format!(
            "probe.run=vsock-bench probe.vsock_port={PORT} probe.vsock_bench_mib={mib} probe.vsock_pings=2000"
        ),
    )
}

fn blk_workload(dir: &Path, mib: u64) -> (u64, f64) {
    let image = dir.join("bench.raw");
    let file = std::fs::File::create(&image).unwrap();
    // Twice the bench's size, written out, as the blk bench has it.
    file.set_len(2 * (mib << 20)).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for i in 0..2 * mib {
        std::os::unix::fs::FileExt::write_all_at(&file, &zeros, i << 20).unwrap();
    }
    file.sync_all().unwrap();
    workload(
        &[
            "--disk".into(),
            format!("path={},format=raw", image.display()),
        ],
        &format!("probe.run=blk-bench probe.blk_mib={mib}"),
    )
}

fn main() {
    static VCPU: Mix = Mix {
        label: "ioctl(KVM_RUN)",
        per_round: 1,
        round: vcpu_round,
    };
    static DEVICE: Mix = Mix {
        label: "eventfd write+read, epoll_wait",
        per_round: 3,
        round: device_round,
    };
    println!();
    println!(
        "seccomp cost: ns per syscall on a thread without and one with its kind's filters, batches in turns (best of {BATCHES} x {ITERATIONS})"
    );
    println!(
        "{:<8} {:<32} {:>12} {:>12} {:>10}",
        "kind", "syscalls timed", "unfiltered", "filtered", "added"
    );
    let mut dearest = 0.0f64;
    static DEAREST: Mix = Mix {
        label: "pwritev2 (bad fd)",
        per_round: 1,
        round: dearest_round,
    };
    for (kind, mix) in [
        (ThreadKind::Vcpu, &VCPU),
        (ThreadKind::Device, &DEVICE),
        (ThreadKind::Device, &DEAREST),
    ] {
        let (before, after) = filter_cost(kind, mix);
        let added = (after - before).max(0.0);
        dearest = dearest.max(added);
        println!(
            "{:<8} {:<32} {:>10.1}ns {:>10.1}ns {:>8.1}ns",
            kind.name(),
            mix.label,
            before,
            after,
            added
        );
    }

    let mib = env_u64("VIREO_BENCH_MIB", 256);
    let dir = std::env::temp_dir().join(format!("vireo-seccomp-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    println!();
    println!(
        "the engine's syscalls in each workload (less a boot-only run), at {dearest:.1} ns each (goal: under 2 %)"
    );
    println!(
        "{:<44} {:>12} {:>9} {:>12} {:>14}",
        "workload", "syscalls", "seconds", "syscalls/s", "filters' share"
    );
    for (label, (calls, secs)) in [
        (
            format!("vsock: {mib} MiB each way, 2000 pings"),
            vsock_workload(&dir, mib),
        ),
        (
            format!("blk: {mib} MiB write+read, 4 KiB random"),
            blk_workload(&dir, mib),
        ),
    ] {
        let share = calls as f64 * dearest * 1e-9 / secs * 100.0;
        println!(
            "{:<44} {:>12} {:>9.2} {:>12.0} {:>13.3}%",
            label,
            calls,
            secs,
            calls as f64 / secs,
            share
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
