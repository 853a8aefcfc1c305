//! 50 boots of the probe guest in one process, through the library: each powers off, and
//! the process has the same fds and threads after the 50th boot as after the first.
//! Alone in its test binary so that no other test's fds or threads blur the count.

use vireo_e2e::in_process::{self, Holdings};
use vireo_e2e::probe_guest::probe_guest_elf;
use vireo_e2e::report;
use vireo_vmm::boot::BootSource;
use vireo_vmm::{ExitReason, VmConfig};

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
    let boot = |i: usize| {
        let (reason, text) = in_process::boot(&config);
        assert_eq!(reason, ExitReason::PowerOff, "boot {i}: {text}");
        assert!(text.contains("VIREO-PROBE READY"), "boot {i}: {text}");
    };
    boot(0);
    // This is the only test in its binary, so nothing else opens fds or starts threads.
    let first = Holdings::now();
    for i in 1..50 {
        boot(i);
    }
    assert_eq!(
        Holdings::now(),
        first,
        "fds, threads, children after 50 boots"
    );
}
