//! Ten boots of the probe guest with a passt network card in one process, through the
//! library: each gets a DHCP lease and powers off, and afterwards the process has the
//! same fds and threads as after the first boot and no child process (every passt was
//! killed and reaped). Alone in its test binary so that no other test's fds, threads or
//! children blur the count.

use std::sync::{Arc, Mutex};

use vireo_e2e::probe_guest::probe_guest_elf;
use vireo_e2e::report;
use vireo_vmm::boot::BootSource;
use vireo_vmm::console::ConsoleInput;
use vireo_vmm::devices::virtio::net::NetConfig;
use vireo_vmm::{Console, ExitReason, VmConfig};

fn count_entries(dir: &str) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// Processes whose parent is this one, zombies included.
fn children() -> Vec<String> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let status = std::fs::read_to_string(e.path().join("status")).ok()?;
            let ppid = status.lines().find_map(|l| l.strip_prefix("PPid:"))?.trim();
            (ppid == me).then(|| status.lines().next().unwrap_or("").to_owned())
        })
        .collect()
}

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
        assert!(text.contains("net_dhcp ok=1"), "boot {i}: {text}");
    };
    boot(0);
    let (fds, threads) = (
        count_entries("/proc/self/fd"),
        count_entries("/proc/self/task"),
    );
    assert_eq!(children(), Vec::<String>::new(), "after the first boot");
    for i in 1..10 {
        boot(i);
    }
    assert_eq!(count_entries("/proc/self/fd"), fds, "fds after 10 boots");
    assert_eq!(
        count_entries("/proc/self/task"),
        threads,
        "threads after 10 boots"
    );
    assert_eq!(children(), Vec::<String>::new(), "after 10 boots");
}
