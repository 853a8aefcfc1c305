//! Ten boots of the probe guest with a passt network card in one process, through the
//! library: each gets a DHCP lease and powers off, and afterwards the process has the
//! same fds and threads as after the first boot and no child process (every passt was
//! killed and reaped). Alone in its test binary so that no other test's fds, threads or
//! children blur the count.

use vireo_e2e::in_process::{self, Holdings};
use vireo_e2e::probe_guest::probe_guest_elf;
use vireo_e2e::report;
use vireo_vmm::boot::BootSource;
use vireo_vmm::devices::virtio::net::NetConfig;
use vireo_vmm::{ExitReason, VmConfig};

#[test]
fn ten_boots_with_passt_leak_nothing() {
    const TEST: &str = "net_teardown::ten_boots_with_passt_leak_nothing";
    if !report::require_kvm(TEST) {
        return;
    }
    let config = VmConfig {
        memory: 128 << 20,
        net: Some("passt".parse::<NetConfig>().unwrap()),
        ..VmConfig::new(BootSource {
            kernel: probe_guest_elf(),
            initrd: None,
            cmdline: "probe.run=net-dhcp".into(),
        })
    };
    let boot = |i: usize| {
        let (reason, text) = in_process::boot(&config);
        assert_eq!(reason, ExitReason::PowerOff, "boot {i}: {text}");
        assert!(text.contains("net_dhcp ok=1"), "boot {i}: {text}");
    };
    boot(0);
    let first = Holdings::now();
    assert_eq!(
        first.children,
        Vec::<String>::new(),
        "passt left after the first boot"
    );
    for i in 1..10 {
        boot(i);
    }
    assert_eq!(
        Holdings::now(),
        first,
        "fds, threads, children after 10 boots"
    );
}
