//! 50 boots of the probe guest in one process, through the library: each powers off, and
//! the process has the same fds and threads after the 50th boot as after the first.
//! Alone in its test binary so that no other test's fds or threads blur the count.

use std::sync::{Arc, Mutex};

use vireo_e2e::probe_guest::probe_guest_elf;
use vireo_e2e::report;
use vireo_vmm::boot::BootSource;
use vireo_vmm::console::ConsoleInput;
use vireo_vmm::{Console, ExitReason, VmConfig};

fn count_entries(dir: &str) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// 50 boots in this process through the library: every boot powers off, and the
/// process's fds and threads are the same after the 50th as after the first.
#[test]
fn fifty_boots_in_one_process_leak_nothing() {
    const TEST: &str = "fifty_boots::fifty_boots_in_one_process_leak_nothing";
    if !report::require_kvm(TEST) {
        return;
    }
    let config = VmConfig {
        vcpus: 2,
        memory: 64 << 20,
        ..VmConfig::new(BootSource {
            kernel: probe_guest_elf(),
            initrd: None,
            cmdline: "probe.run=poweroff".into(),
        })
    };
    let output = Arc::new(Mutex::new(Vec::<u8>::new()));
    let console = Console {
        output: output.clone(),
        input: ConsoleInput::None,
    };
    let boot = |i: usize| {
        output.lock().unwrap().clear();
        let reason = vireo_vmm::run(&config, &console).expect("the VM starts");
        let text = String::from_utf8_lossy(&output.lock().unwrap()).into_owned();
        assert_eq!(reason, ExitReason::PowerOff, "boot {i}: {text}");
        assert!(text.contains("VIREO-PROBE READY"), "boot {i}: {text}");
    };
    boot(0);
    // This is the only test in its binary, so nothing else opens fds or starts threads.
    let (fds, threads) = (
        count_entries("/proc/self/fd"),
        count_entries("/proc/self/task"),
    );
    for i in 1..50 {
        boot(i);
    }
    assert_eq!(count_entries("/proc/self/fd"), fds, "fds after 50 boots");
    assert_eq!(
        count_entries("/proc/self/task"),
        threads,
        "threads after 50 boots"
    );
}
