//! Linux's early boot under `vireo-vmm`, checkable on any KVM host: on PVM the kernel is
//! interpreted and stops where PVM cannot go on (FXSAVE/XRSTOR), but its own log shows
//! what it made of our boot parameters. Used for the demo Linux's kernel and the full
//! Debian 12 image's.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use vireo_vmm::boot::DEFAULT_CMDLINE;
use vireo_vmm::x86_64::layout::{self, E820_RAM};

use crate::engine::{s, vmm_binary, LiveGuest};

/// Interpreted kernel code is slow and CI machines are shared: be generous.
const EARLY_BOOT_DEADLINE: Duration = Duration::from_secs(600);

/// The kernel's own e820 line for one entry of our memory map.
fn e820_line(e: &layout::MemoryMapEntry) -> String {
    let kind = if e.kind == E820_RAM {
        "usable"
    } else {
        "reserved"
    };
    format!(
        "BIOS-e820: [mem {:#018x}-{:#018x}] {kind}",
        e.addr,
        e.addr + e.size - 1
    )
}

/// Boots `kernel` (an ELF with the PVH note) with a disk, 3 vCPUs and 1 GiB, checks
/// the kernel's early log (banner, command line, our e820 map, our ACPI tables and no
/// ACPI complaints, 3 CPUs), and prints how far it got under `label`. With `run_on` it
/// first lets the kernel run on to wherever it stops (up to two more minutes on PVM).
pub fn check(kernel: &Path, label: &str, run_on: bool) {
    let user_cmdline = "earlyprintk=serial console=ttyS0 loglevel=8";
    // With a disk attached, so its PCI function and MSI-X are in the machine the
    // kernel sees (on PVM it stops before PCI enumeration; the MCFG table is checked).
    let disk = std::env::temp_dir().join(format!("vireo-early-disk-{}.raw", std::process::id()));
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let disk_arg = format!("path={}", disk.display());
    let mut guest = LiveGuest::spawn(Command::new(vmm_binary()).args([
        "--disk",
        &disk_arg,
        "--kernel",
        s(kernel),
        "--cpus",
        "3",
        "--memory",
        "1G",
        "--cmdline",
        user_cmdline,
    ]));

    let mut expected = vec![
        "Linux version 6.".to_owned(),
        format!("Command line: {DEFAULT_CMDLINE} {user_cmdline}"),
    ];
    expected.extend(layout::memory_map(1 << 30).iter().map(e820_line));
    for table in [
        "RSDP 0x00000000000E0000",
        "XSDT",
        "FACP",
        "DSDT",
        "APIC",
        "MCFG",
    ] {
        expected.push(format!("ACPI: {table}"));
    }
    expected.push("smpboot: Allowing 3 CPUs, 0 hotplug CPUs".to_owned());
    let mut reached = Vec::new();
    for needle in &expected {
        match guest.wait_for(needle, EARLY_BOOT_DEADLINE) {
            Some(at) => reached.push((needle.clone(), at)),
            None => {
                let seen = guest.kill();
                panic!(
                    "the kernel never printed {needle:?}; its log:\n{}",
                    seen.join("\n")
                );
            }
        }
    }
    // Let it run on to wherever it stops (on PVM: the first FXSAVE/XRSTOR) or to the end
    // of the deadline, and record how far it got.
    let status = guest.wait_exit(Duration::from_secs(if run_on { 120 } else { 0 }));
    let elapsed = guest.started.elapsed();
    let log = guest.kill();
    let acpi_errors: Vec<&String> = log
        .iter()
        .filter(|l| {
            l.contains("ACPI Error") || l.contains("ACPI BIOS Error") || l.contains("ACPI Warning")
        })
        .collect();
    assert!(
        acpi_errors.is_empty(),
        "the kernel complained about our ACPI tables: {acpi_errors:?}"
    );
    let last_kernel_line = log
        .iter()
        .rev()
        .find(|l| l.starts_with('['))
        .cloned()
        .unwrap_or_default();
    let _ = writeln!(
        std::io::stderr(),
        "\nLinux early boot ({label}, 3 vCPUs, 1 GiB): 'smpboot: Allowing 3 CPUs' after {:.1} s; \
         {} kernel log lines in {:.1} s; last: {last_kernel_line}{}",
        reached.last().unwrap().1.as_secs_f64(),
        log.len(),
        elapsed.as_secs_f64(),
        match status {
            Some(status) => format!(" (engine exit: {status})"),
            None => " (still running: killed)".to_owned(),
        },
    );
}
