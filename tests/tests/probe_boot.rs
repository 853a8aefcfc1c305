//! The probe guest under `vireo-vmm`: boots with 1 and 4 vCPUs and 64 MiB and 2 GiB,
//! finds what the engine built (vCPUs from the ACPI MADT, the PVH memory map), powers off
//! and reboots with the documented exit statuses. (50 boots in one process: fifty_boots.rs.)

use std::time::Duration;

use vireo_e2e::engine::{run_vmm, s, ProbeLine, Run};
use vireo_e2e::probe_guest::probe_guest_elf;
use vireo_e2e::report;
use vireo_vmm::exit::code;
use vireo_vmm::x86_64::layout;

const DEADLINE: Duration = Duration::from_secs(60);

fn boot_probe(cpus: u32, memory: &str, cmdline: &str, extra: &[&str]) -> Run {
    let elf = probe_guest_elf();
    let cpus = cpus.to_string();
    let mut args = vec![
        "--kernel",
        s(&elf),
        "--cpus",
        &cpus,
        "--memory",
        memory,
        "--cmdline",
        cmdline,
    ];
    args.extend_from_slice(extra);
    run_vmm(&args, DEADLINE)
}

fn assert_memmap_matches(run: &Run, mem_bytes: u64) {
    let found: Vec<(u64, u64, u32)> = run
        .probe_lines()
        .iter()
        .filter(|l| l.tag == "memmap")
        .map(|l| {
            (
                l.u64("addr").unwrap(),
                l.u64("size").unwrap(),
                l.u64("type").unwrap() as u32,
            )
        })
        .collect();
    let built: Vec<(u64, u64, u32)> = layout::memory_map(mem_bytes)
        .iter()
        .map(|e| (e.addr, e.size, e.kind))
        .collect();
    assert_eq!(
        found, built,
        "the guest's memory map is the one the engine built"
    );
}

#[test]
fn boots_with_1_and_4_vcpus_in_64m_and_2g() {
    if !report::require_kvm("probe_boot::boots_with_1_and_4_vcpus_in_64m_and_2g") {
        return;
    }
    for (cpus, memory, bytes) in [
        (1, "64M", 64u64 << 20),
        (4, "64M", 64 << 20),
        (1, "2G", 2 << 30),
        (4, "2G", 2 << 30),
    ] {
        let run = boot_probe(cpus, memory, "probe.run=poweroff", &[]);
        assert_eq!(
            run.code(),
            Some(code::POWER_OFF),
            "{cpus} vCPUs, {memory}: {}\n{}",
            run.stdout,
            run.stderr
        );
        assert!(run.probe("READY").is_some(), "marker line: {}", run.stdout);
        let cpus_line = run.probe("cpus").expect("cpus line");
        assert_eq!(
            cpus_line.u64("cpus"),
            Some(u64::from(cpus)),
            "vCPUs found in the MADT"
        );
        assert_memmap_matches(&run, bytes);
        let cmdline = run.probe("cmdline").expect("cmdline line");
        assert!(cmdline.get("cmdline").is_some());
        assert!(
            run.stdout.contains("probe.run=poweroff"),
            "the guest saw our command line"
        );
    }
}

#[test]
fn selftest_hashes_like_the_host() {
    if !report::require_kvm("probe_boot::selftest_hashes_like_the_host") {
        return;
    }
    let run = boot_probe(1, "256M", "probe.run=selftest probe.sha_mib=16", &[]);
    assert_eq!(
        run.code(),
        Some(code::POWER_OFF),
        "{}\n{}",
        run.stdout,
        run.stderr
    );
    let sha: ProbeLine = run.probe("sha256").expect("sha256 line");
    let mut buf = vec![0u8; 1 << 20];
    let host = vireo_cpu_bench::hash_pattern(16 << 20, &mut buf, || 0);
    let host_hex = vireo_cpu_bench::to_hex(&host.digest);
    assert_eq!(
        sha.get("digest").unwrap().as_bytes(),
        &host_hex[..],
        "guest and host hash the same bytes"
    );
    assert_eq!(sha.u64("bytes"), Some(16 << 20));
}

#[test]
fn reboot_exits_with_its_own_status_or_restarts() {
    if !report::require_kvm("probe_boot::reboot_exits_with_its_own_status_or_restarts") {
        return;
    }
    let run = boot_probe(2, "64M", "probe.run=reboot", &[]);
    assert_eq!(
        run.code(),
        Some(code::REBOOT),
        "{}\n{}",
        run.stdout,
        run.stderr
    );
    assert!(run.stderr.contains("guest rebooted"));

    // With --reboot=restart the engine boots the guest again and again until stopped.
    let elf = probe_guest_elf();
    let mut guest = vireo_e2e::engine::LiveGuest::spawn(
        std::process::Command::new(vireo_e2e::engine::vmm_binary()).args([
            "--kernel",
            s(&elf),
            "--memory",
            "64M",
            "--reboot",
            "restart",
            "--cmdline",
            "probe.run=reboot",
        ]),
    );
    for boot in 0..3 {
        assert!(
            guest.wait_for("VIREO-PROBE READY", DEADLINE).is_some(),
            "boot {boot} reached the marker"
        );
    }
    guest.kill();
}

#[test]
fn keyboard_controller_reset_reboots() {
    if !report::require_kvm("probe_boot::keyboard_controller_reset_reboots") {
        return;
    }
    let run = boot_probe(1, "64M", "probe.run=reboot-i8042", &[]);
    assert_eq!(
        run.code(),
        Some(code::REBOOT),
        "{}\n{}",
        run.stdout,
        run.stderr
    );
    assert!(run.stdout.contains("VIREO-PROBE REBOOT i8042"));
}

/// A guest that triple-faults ends the engine with the crash status and a message that
/// names what KVM reported (a shutdown exit on hardware KVM; PVM's interpreter reports
/// the fault it could not deliver as an internal error).
#[test]
fn triple_fault_is_a_named_crash() {
    if !report::require_kvm("probe_boot::triple_fault_is_a_named_crash") {
        return;
    }
    let run = boot_probe(1, "64M", "probe.run=triple-fault", &[]);
    assert_eq!(
        run.code(),
        Some(code::CRASH),
        "{}\n{}",
        run.stdout,
        run.stderr
    );
    assert!(run.stdout.contains("VIREO-PROBE TRIPLE-FAULT"));
    let line = run
        .stderr
        .lines()
        .find(|l| l.contains("guest crashed"))
        .expect("a crash line");
    assert!(
        line.contains("triple fault") || line.contains("KVM internal error"),
        "{line}"
    );
    assert!(line.contains("rip 0x"), "the message says where: {line}");
}
