//! The engine's Landlock rulesets (`vireo-vmm`'s `sandbox::landlock`): the threads the
//! guest talks to (vCPUs, device workers) open no file at all, and the control thread
//! only /proc, /sys, the cgroup tree and its control socket's directory, where
//! screenshots go. Which thread may open what is asked through the test-only
//! `sandbox-probe` request (an engine started with `--test-sandbox`), with seccomp off so
//! that its own refusal of `openat` outside the control thread does not hide Landlock's.

use std::path::{Path, PathBuf};
use std::time::Duration;

use vireo_e2e::engine::{doctor, spawn_probe_agent, LiveGuest};
use vireo_e2e::report;
use vireo_e2e::temp::TempDir;
use vireo_vmm::control::client::Control;
use vireo_vmm::control::protocol::{Request, Response};

/// A probe agent VM whose control socket is in `dir`/run; a file to read in `dir`/run
/// and one outside it.
struct Setup {
    dir: TempDir,
    guest: LiveGuest,
    control: Control,
    inside: PathBuf,
    outside: PathBuf,
}

fn setup(name: &str, extra: &[&str]) -> Setup {
    let dir = TempDir::new(name);
    let run = dir.0.join("run");
    std::fs::create_dir(&run).unwrap();
    let inside = run.join("inside.txt");
    let outside = dir.0.join("outside.txt");
    std::fs::write(&inside, "in").unwrap();
    std::fs::write(&outside, "out").unwrap();
    let socket = run.join("control.sock");
    let guest = spawn_probe_agent(&dir.0, &socket, extra);
    let control = Control::connect(&socket).unwrap();
    control.set_timeout(Some(Duration::from_secs(20))).unwrap();
    Setup {
        dir,
        guest,
        control,
        inside,
        outside,
    }
}

/// The errno a `thread` thread gets opening `path` (0: it opened).
fn probe(control: &mut Control, thread: &str, path: &Path) -> i32 {
    match control
        .ask(&Request::SandboxProbe {
            thread: thread.into(),
            path: path.to_string_lossy().into_owned(),
        })
        .unwrap()
    {
        Response::SandboxProbe { errno } => errno,
        other => panic!("sandbox-probe {thread} {path:?}: {other:?}"),
    }
}

fn landlock_here(test: &str) -> bool {
    if !report::require_kvm(test) {
        return false;
    }
    if !doctor()
        .get("landlock")
        .is_some_and(|l| l.starts_with("yes"))
    {
        report::skipped(test, "this kernel has no Landlock");
        return false;
    }
    true
}

#[test]
fn guest_facing_threads_open_nothing_and_the_control_thread_only_its_directory() {
    const TEST: &str =
        "landlock::guest_facing_threads_open_nothing_and_the_control_thread_only_its_directory";
    if !landlock_here(TEST) {
        return;
    }
    let mut s = setup("landlock-on", &["--no-seccomp", "--test-sandbox"]);
    let proc_stat = Path::new("/proc/self/stat");
    for thread in ["vcpu", "device"] {
        for path in [&s.inside, &s.outside, proc_stat, Path::new("/etc/passwd")] {
            assert_eq!(
                probe(&mut s.control, thread, path),
                libc::EACCES,
                "a {thread} thread opened {path:?}"
            );
        }
    }
    assert_eq!(probe(&mut s.control, "control", &s.inside), 0);
    assert_eq!(probe(&mut s.control, "control", proc_stat), 0);
    for path in [&s.outside, Path::new("/etc/passwd")] {
        assert_eq!(
            probe(&mut s.control, "control", path),
            libc::EACCES,
            "the control thread opened {path:?}"
        );
    }
    // The guest still runs: the vCPUs and the vsock worker serve it.
    assert!(matches!(
        s.control.ask(&Request::Status {}).unwrap(),
        Response::Status { .. }
    ));
    drop(s.guest);
}

#[test]
fn without_landlock_the_same_threads_open_everything() {
    const TEST: &str = "landlock::without_landlock_the_same_threads_open_everything";
    if !landlock_here(TEST) {
        return;
    }
    let mut s = setup(
        "landlock-off",
        &["--no-seccomp", "--no-landlock", "--test-sandbox"],
    );
    for thread in ["vcpu", "device", "control"] {
        for path in [&s.inside, &s.outside] {
            assert_eq!(probe(&mut s.control, thread, path), 0, "{thread} {path:?}");
        }
    }
    let log = std::fs::read_to_string(s.dir.0.join("engine.log")).unwrap();
    assert!(log.contains("--no-landlock"), "no warning: {log}");
    drop(s.guest);
}

#[test]
fn probes_are_refused_without_the_test_flag() {
    const TEST: &str = "landlock::probes_are_refused_without_the_test_flag";
    if !landlock_here(TEST) {
        return;
    }
    let mut s = setup("landlock-noflag", &[]);
    let answer = s
        .control
        .ask(&Request::SandboxProbe {
            thread: "control".into(),
            path: s.inside.to_string_lossy().into_owned(),
        })
        .unwrap();
    match answer {
        Response::Error { message } => assert!(message.contains("--test-sandbox"), "{message}"),
        other => panic!("a probe without --test-sandbox was answered: {other:?}"),
    }
    drop(s.guest);
}
