//! The engine's seccomp filters (`vireo-vmm`'s `sandbox`): each vCPU, device worker and
//! the control thread runs under its own filter, the main thread under none; a syscall
//! outside a thread's list ends the engine at once with a line naming the thread's kind
//! and the syscall. The violation is made on purpose through the test-only
//! `seccomp_trip` control request, which only an engine started with `--test-sandbox`
//! accepts.

use std::path::Path;
use std::time::Duration;

use vireo_e2e::engine::{spawn_probe_agent, LiveGuest};
use vireo_e2e::report;
use vireo_e2e::temp::TempDir;
use vireo_vmm::control::client::Control;
use vireo_vmm::control::protocol::{Request, Response};

/// `getpgrp(2)`, the syscall `seccomp_trip` makes: in no thread's list.
const TRIP_SYSCALL: i64 = libc::SYS_getpgrp;

/// 128 + SIGSYS, as the engine ends after a forbidden syscall.
const SECCOMP_EXIT: i32 = vireo_vmm::sandbox::EXIT_STATUS;

/// The probe's agent on vsock (so a device worker runs), with a control socket; the
/// engine's stderr goes to `dir`/engine.log.
fn spawn_guest(dir: &TempDir, extra: &[&str]) -> LiveGuest {
    spawn_probe_agent(&dir.0, &dir.0.join("control.sock"), extra)
}

fn control(path: &Path) -> Control {
    let control = Control::connect(path).unwrap();
    control.set_timeout(Some(Duration::from_secs(20))).unwrap();
    control
}

/// Each thread of `pid` by name, with its seccomp mode (/proc's `Seccomp:`: 0 none,
/// 2 filter).
fn thread_modes(pid: u32) -> Vec<(String, u32)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .filter_map(|task| {
            let dir = task.ok()?.path();
            let name = std::fs::read_to_string(dir.join("comm")).ok()?;
            let status = std::fs::read_to_string(dir.join("status")).ok()?;
            let mode = status
                .lines()
                .find_map(|l| l.strip_prefix("Seccomp:"))?
                .trim()
                .parse()
                .ok()?;
            Some((name.trim().to_string(), mode))
        })
        .collect()
}

#[test]
fn every_guest_facing_thread_runs_filtered_and_trips_are_refused_without_the_test_flag() {
    if !report::require_kvm("seccomp::every_guest_facing_thread_runs_filtered") {
        return;
    }
    let dir = TempDir::new("seccomp-on");
    let guest = spawn_guest(&dir, &[]);
    let modes = thread_modes(guest.child.id());
    let mode_of = |prefix: &str| -> Vec<u32> {
        modes
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(_, mode)| *mode)
            .collect()
    };
    assert_eq!(mode_of("vcpu"), vec![2, 2], "{modes:?}");
    assert_eq!(mode_of("virtio-vsock"), vec![2], "{modes:?}");
    assert_eq!(mode_of("control"), vec![2], "{modes:?}");
    assert_eq!(mode_of("vireo-vmm"), vec![0], "the main thread: {modes:?}");

    let mut control = control(&dir.0.join("control.sock"));
    match control
        .ask(&Request::SeccompTrip {
            thread: "vcpu".into(),
        })
        .unwrap()
    {
        Response::Error { message } => assert!(message.contains("--test-sandbox"), "{message}"),
        other => panic!("a trip without --test-sandbox was accepted: {other:?}"),
    }
    assert!(matches!(
        control.ask(&Request::Status {}).unwrap(),
        Response::Status { .. }
    ));
    drop(guest);
}

#[test]
fn no_seccomp_runs_every_thread_unfiltered() {
    if !report::require_kvm("seccomp::no_seccomp_runs_every_thread_unfiltered") {
        return;
    }
    let dir = TempDir::new("seccomp-off");
    let guest = spawn_guest(&dir, &["--no-seccomp"]);
    let modes = thread_modes(guest.child.id());
    assert!(modes.iter().all(|(_, mode)| *mode == 0), "{modes:?}");
    let log = std::fs::read_to_string(dir.0.join("engine.log")).unwrap();
    assert!(log.contains("--no-seccomp"), "no warning: {log}");
}

/// The engine dies of a `kind` thread's forbidden syscall, and says so.
fn trip_ends_the_engine(kind: &str) {
    let dir = TempDir::new(&format!("seccomp-{kind}"));
    let mut guest = spawn_guest(&dir, &["--test-sandbox"]);
    let mut control = control(&dir.0.join("control.sock"));
    // The control thread dies answering; the others answer first.
    let answer = control.ask(&Request::SeccompTrip {
        thread: kind.into(),
    });
    let status = guest
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("the engine survived a forbidden syscall on {kind}: {answer:?}"));
    let log = std::fs::read_to_string(dir.0.join("engine.log")).unwrap();
    assert_eq!(status.code(), Some(SECCOMP_EXIT), "{log}");
    let line =
        format!("vireo-vmm: seccomp: thread {kind} made a forbidden syscall {TRIP_SYSCALL};");
    assert!(log.contains(&line), "no {line:?} in:\n{log}");
}

#[test]
fn a_forbidden_syscall_on_a_vcpu_ends_the_engine_with_a_clear_line() {
    if !report::require_kvm("seccomp::a_forbidden_syscall_on_a_vcpu") {
        return;
    }
    trip_ends_the_engine("vcpu");
}

#[test]
fn a_forbidden_syscall_on_a_device_worker_ends_the_engine_with_a_clear_line() {
    if !report::require_kvm("seccomp::a_forbidden_syscall_on_a_device_worker") {
        return;
    }
    trip_ends_the_engine("device");
}

#[test]
fn a_forbidden_syscall_on_the_control_thread_ends_the_engine_with_a_clear_line() {
    if !report::require_kvm("seccomp::a_forbidden_syscall_on_the_control_thread") {
        return;
    }
    trip_ends_the_engine("control");
}
