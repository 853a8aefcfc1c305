//! What the probe does, chosen on the kernel command line:
//!
//! - `probe.run=selftest` (default): discovery report, the SHA-256 benchmark, power-off.
//! - `probe.run=poweroff`: discovery report, power-off.
//! - `probe.run=reboot`: reset through the FADT's RESET_REG.
//! - `probe.run=reboot-i8042`: reset through the i8042's reset line (command 0xFE).
//! - `probe.run=triple-fault`: shut the machine down with a triple fault, as a crashing
//!   kernel would.
//! - `probe.run=idle`: discovery report, then `IDLE` and a spin loop that never ends
//!   (for measuring a running VMM from outside: memory, threads).
//! - `probe.run=fault`: touch unmapped memory, to exercise the fault report (a `FAULT`
//!   line with vector 14, then power-off).
//! - `probe.sha_mib=N`: benchmark size in MiB (default 256).
//!
//! Other words on the command line are ignored, so a VMM may add its own.

use alloc::vec;

use crate::acpi::{self, Acpi};
use crate::arch;
use crate::boot;
use crate::heap;
use crate::probe;
use crate::pvh::BootInfo;

/// Default benchmark size.
const DEFAULT_SHA_MIB: u64 = 256;
/// CPUID.(EAX=7,ECX=0):EBX bit 29: SHA extensions.
const CPUID_7_EBX_SHA: u32 = 1 << 29;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Command {
    Selftest,
    PowerOff,
    Reboot,
    RebootI8042,
    TripleFault,
    Idle,
    Fault,
}

#[derive(Clone, Copy, Debug)]
struct Options<'a> {
    run: Result<Command, &'a str>,
    sha_mib: u64,
}

impl<'a> Options<'a> {
    fn parse(cmdline: &'a str) -> Self {
        let mut options = Options {
            run: Ok(Command::Selftest),
            sha_mib: DEFAULT_SHA_MIB,
        };
        for word in cmdline.split_ascii_whitespace() {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            match key {
                "probe.run" => {
                    options.run = match value {
                        "selftest" => Ok(Command::Selftest),
                        "poweroff" => Ok(Command::PowerOff),
                        "reboot" => Ok(Command::Reboot),
                        "reboot-i8042" => Ok(Command::RebootI8042),
                        "triple-fault" => Ok(Command::TripleFault),
                        "idle" => Ok(Command::Idle),
                        "fault" => Ok(Command::Fault),
                        other => Err(other),
                    }
                }
                "probe.sha_mib" => {
                    if let Ok(mib) = value.parse() {
                        options.sha_mib = mib;
                    }
                }
                _ => {}
            }
        }
        options
    }
}

/// Runs the command the command line asks for; never returns.
pub fn run(tsc_khz: u64) -> ! {
    let boot_info = match BootInfo::parse(boot::start_info_addr()) {
        Ok(info) => info,
        Err(error) => {
            probe!(
                "error start_info={error} addr={:#x}",
                boot::start_info_addr()
            );
            acpi::power_off();
        }
    };
    let options = Options::parse(boot_info.cmdline());
    let acpi = Acpi::discover(boot_info.rsdp_paddr);
    if let Ok(tables) = acpi {
        tables.install();
    }

    match options.run {
        Ok(Command::Reboot) => {
            probe!("REBOOT");
            acpi::reboot();
        }
        Ok(Command::RebootI8042) => {
            probe!("REBOOT i8042");
            acpi::reboot_by_i8042();
        }
        Ok(Command::TripleFault) => {
            probe!("TRIPLE-FAULT");
            arch::triple_fault();
        }
        _ => {}
    }

    report_discovery(&boot_info, &acpi);
    let heap = heap::init(boot_info.memmap());
    match heap {
        Some(region) => probe!("heap start={:#x} size={:#x}", region.start, region.size),
        None => probe!("error heap=none"),
    }

    match options.run {
        Ok(Command::Selftest) if heap.is_some() => sha256_bench(options.sha_mib, tsc_khz),
        Ok(Command::Fault) => {
            let unmapped = crate::phys::MAPPED_END as *const u64;
            // SAFETY: deliberately not: reading above the identity map page-faults, and
            // the fault report powers the machine off; nothing runs after this read.
            let value = unsafe { unmapped.read_volatile() };
            probe!("error fault_did_not_fault value={value:#x}");
        }
        Ok(Command::Idle) => {
            probe!("IDLE");
            loop {
                core::hint::spin_loop();
            }
        }
        Ok(_) => {}
        Err(unknown) => probe!("error unknown_command=\"{unknown}\""),
    }
    probe!("POWEROFF");
    acpi::power_off()
}

fn report_discovery(boot_info: &BootInfo, acpi: &Result<Acpi, acpi::Error>) {
    probe!("cmdline=\"{}\"", boot_info.cmdline());
    probe!(
        "start_info addr={:#x} version={} rsdp_paddr={:#x}",
        boot::start_info_addr(),
        boot_info.version,
        boot_info.rsdp_paddr
    );
    match acpi {
        Ok(acpi) => {
            probe!("cpus={}", acpi.cpus);
            let (reset, reset_value) = acpi.reset.unwrap_or_default();
            probe!(
                "acpi rsdp={:#x} revision={} root={:#x} madt={:#x} fadt={:#x} checksums_ok={} \
                 hw_reduced={} sleep_control={} sleep_status={} reset={} reset_value={:#x} \
                 pm1a_cnt={:#x} s5_type={} s5_from_dsdt={}",
                acpi.rsdp,
                acpi.revision,
                acpi.root,
                acpi.madt,
                acpi.fadt,
                u8::from(acpi.checksums_ok),
                u8::from(acpi.hw_reduced),
                acpi.sleep_control,
                acpi.sleep_status,
                reset,
                reset_value,
                acpi.pm1a_cnt,
                acpi.s5_type,
                u8::from(acpi.s5_from_dsdt),
            );
        }
        Err(error) => probe!("cpus=0 error acpi={error}"),
    }
    for (index, entry) in boot_info.memmap().iter().enumerate() {
        probe!(
            "memmap index={index} addr={:#x} size={:#x} type={}",
            entry.addr,
            entry.size,
            entry.kind
        );
    }
    if boot_info.memmap_dropped != 0 {
        probe!("error memmap_dropped={}", boot_info.memmap_dropped);
    }
    probe!("mem_total_ram={}", boot_info.total_ram());
}

/// Hashes `mib` MiB of the shared pattern and reports the hashing speed. The buffer is
/// the whole stream when it fits in half the heap, else it is refilled chunk by chunk
/// (the digest is the same either way; only hashing is timed).
fn sha256_bench(mib: u64, tsc_khz: u64) {
    let total = mib * vireo_cpu_bench::MIB;
    let half_heap = (heap::free() as u64 / 2) & !(vireo_cpu_bench::MIB - 1);
    let chunk = total.min(half_heap.max(64 << 10)).max(1);
    let mut buf = vec![0u8; chunk as usize];
    let result = vireo_cpu_bench::hash_pattern(total, &mut buf, arch::rdtsc);
    let sha_ni = arch::cpuid(7, 0).ebx & CPUID_7_EBX_SHA != 0;
    let hex = vireo_cpu_bench::to_hex(&result.digest);
    probe!(
        "sha256 bytes={} chunk={} cycles={} mib_per_s={} sha_ni={} digest={}",
        result.bytes,
        chunk,
        result.hash_ticks,
        vireo_cpu_bench::mib_per_s(result.bytes, result.hash_ticks, tsc_khz * 1000),
        u8::from(sha_ni),
        core::str::from_utf8(&hex).unwrap_or_default(),
    );
}
