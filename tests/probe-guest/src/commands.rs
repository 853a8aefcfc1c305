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
//! - `probe.run=touch`: writes `probe.touch_mib` MiB (default 200) of its RAM, each
//!   4 KiB page filled with one value of its own (the same in every guest, different
//!   between pages), then `TOUCHED mib=N` and a spin loop: the host's memory cost of a
//!   known working set, and what KSM can share between two such guests.
//! - `probe.run=pci`: enumerate PCI bus 0 (ECAM), assign the BARs, print the functions.
//! - `probe.run=blk-write|blk-verify|blk-readonly|blk-two|blk-bench|blk-msix`: the
//!   virtio-blk tests of [`crate::blk`], tuned by `probe.blk_mib`, `probe.blk_seed`,
//!   `probe.blk_dev`, `probe.blk_req_kib`, `probe.blk_qd`, `probe.blk_rand`; PCI host
//!   overrides `probe.ecam=ADDR` and `probe.pci_mmio32=FIRST-LAST`.
//! - `probe.run=counter`: the save/restore subject ([`crate::blk::counter`]): a disk
//!   pattern written, then `count N` every 20 ms and the pattern read back every 25;
//!   `probe.dirty_mib=N` first writes N MiB of memory (what a save must store).
//! - `probe.run=input`: the virtio-input devices ([`crate::input`]): what they say
//!   about themselves, then every event until Escape.
//! - `probe.run=gpu-draw|gpu-resize|gpu-cursor|gpu-hostile|gpu-bench`: virtio-gpu
//!   ([`crate::gpu`]); `probe.gpu_secs=N` sets the benchmark's length,
//!   `probe.gpu_period_ms=N` paces `gpu-blink` (one toggle per period).
//! - `probe.run=selftest-screen`: a self-test screen on virtio-gpu, live from the
//!   virtio-input devices until Escape ([`crate::screen`]).
//!
//! - `probe.run=net-dhcp|net-http|net-bench`: the virtio-net tests of [`crate::net`]
//!   (DHCP, an HTTP GET from the host, TCP throughput to the host), tuned by
//!   `probe.net_port`, `probe.net_path`, `probe.net_mib`, `probe.net_mtu`.
//! - `probe.run=vsock-echo|vsock-serve|vsock-close-early|vsock-cycles|vsock-refused|vsock-bench`:
//!   the virtio-vsock tests of [`crate::vsock`], tuned by `probe.vsock_port`,
//!   `probe.vsock_conns`, `probe.vsock_mib`, `probe.vsock_cycles`, `probe.vsock_bench_mib`,
//!   `probe.vsock_pings`, `probe.vsock_chunk_kib`, `probe.vsock_seed`.
//!
//! - `probe.run=agent`: the guest side of the Vireo agent protocol on vsock port 7000
//!   ([`crate::agent`]) until the host asks for a shutdown or reboot;
//!   `probe.agent_copy_hex=HEX` (UTF-8 text, hex-encoded) or `probe.agent_copy_kib=N` (that
//!   much of the agent's pattern text) is the guest's clipboard at start.
//!
//! Other words on the command line are ignored, so a VMM may add its own.

use alloc::vec;
use alloc::vec::Vec;

use crate::acpi::{self, Acpi};
use crate::agent::{self, AgentOptions};
use crate::arch;
use crate::blk::{self, BlkOptions};
use crate::boot;
use crate::heap;
use crate::net::{self, NetOptions, NetTest};
use crate::pci::HostOptions;
use crate::probe;
use crate::pvh::BootInfo;
use crate::vsock::{self, VsockOptions};

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
    Touch,
    Fault,
    Pci,
    BlkWrite,
    BlkVerify,
    BlkReadonly,
    BlkTwo,
    BlkBench,
    BlkMsix,
    Counter,
    Input,
    Net(NetTest),
    Vsock(vsock::Test),
    GpuDraw,
    GpuResize,
    GpuCursor,
    GpuHostile,
    GpuBench,
    GpuBlink,
    SelftestScreen,
    Agent,
}

impl Command {
    /// The device test a command runs after the discovery report, if it is one.
    fn device_test(self) -> Option<blk::DeviceTest> {
        Some(match self {
            Command::Pci => blk::pci_only,
            Command::BlkWrite => blk::write,
            Command::BlkVerify => blk::verify,
            Command::BlkReadonly => blk::readonly,
            Command::BlkTwo => blk::two,
            Command::BlkBench => blk::bench,
            Command::BlkMsix => blk::msix,
            Command::Counter => blk::counter,
            Command::Input => crate::input::run,
            Command::GpuDraw => crate::gpu::draw_and_idle,
            Command::GpuResize => crate::gpu::resize,
            Command::GpuCursor => crate::gpu::cursor,
            Command::GpuHostile => crate::gpu::hostile,
            Command::GpuBench => crate::gpu::bench,
            Command::GpuBlink => crate::gpu::blink,
            _ => return None,
        })
    }
}

/// A decimal or `0x`-prefixed hexadecimal number.
fn parse_u64(text: &str) -> Option<u64> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

#[derive(Clone, Copy, Debug)]
struct Options<'a> {
    run: Result<Command, &'a str>,
    sha_mib: u64,
    touch_mib: u64,
    blk: BlkOptions,
    net: NetOptions<'a>,
    vsock: VsockOptions,
    agent: AgentOptions<'a>,
    host: HostOptions,
}

impl<'a> Options<'a> {
    fn parse(cmdline: &'a str) -> Self {
        let mut options = Options {
            run: Ok(Command::Selftest),
            sha_mib: DEFAULT_SHA_MIB,
            touch_mib: 200,
            blk: BlkOptions::default(),
            net: NetOptions::default(),
            vsock: VsockOptions::default(),
            agent: AgentOptions::default(),
            host: HostOptions::default(),
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
                        "touch" => Ok(Command::Touch),
                        "fault" => Ok(Command::Fault),
                        "pci" => Ok(Command::Pci),
                        "blk-write" => Ok(Command::BlkWrite),
                        "blk-verify" => Ok(Command::BlkVerify),
                        "blk-readonly" => Ok(Command::BlkReadonly),
                        "blk-two" => Ok(Command::BlkTwo),
                        "blk-bench" => Ok(Command::BlkBench),
                        "blk-msix" => Ok(Command::BlkMsix),
                        "counter" => Ok(Command::Counter),
                        "input" => Ok(Command::Input),
                        "net-dhcp" => Ok(Command::Net(NetTest::Dhcp)),
                        "net-http" => Ok(Command::Net(NetTest::Http)),
                        "net-bench" => Ok(Command::Net(NetTest::Bench)),
                        "agent" => Ok(Command::Agent),
                        "vsock-echo" => Ok(Command::Vsock(vsock::Test::Echo)),
                        "vsock-serve" => Ok(Command::Vsock(vsock::Test::Serve)),
                        "vsock-close-early" => Ok(Command::Vsock(vsock::Test::CloseEarly)),
                        "vsock-cycles" => Ok(Command::Vsock(vsock::Test::Cycles)),
                        "vsock-refused" => Ok(Command::Vsock(vsock::Test::Refused)),
                        "vsock-bench" => Ok(Command::Vsock(vsock::Test::Bench)),
                        "gpu-draw" => Ok(Command::GpuDraw),
                        "gpu-resize" => Ok(Command::GpuResize),
                        "gpu-cursor" => Ok(Command::GpuCursor),
                        "gpu-hostile" => Ok(Command::GpuHostile),
                        "gpu-bench" => Ok(Command::GpuBench),
                        "gpu-blink" => Ok(Command::GpuBlink),
                        "selftest-screen" => Ok(Command::SelftestScreen),
                        other => Err(other),
                    }
                }
                "probe.sha_mib" => {
                    if let Ok(mib) = value.parse() {
                        options.sha_mib = mib;
                    }
                }
                "probe.touch_mib" => set(&mut options.touch_mib, value),
                "probe.blk_mib" => set(&mut options.blk.mib, value),
                "probe.blk_seed" => set(&mut options.blk.seed, value),
                "probe.blk_dev" => {
                    if let Some(dev) = parse_u64(value) {
                        options.blk.dev = dev as usize;
                    }
                }
                "probe.blk_req_kib" => set(&mut options.blk.req_kib, value),
                "probe.blk_qd" => {
                    if let Some(qd) = parse_u64(value) {
                        options.blk.qd = qd.clamp(1, 16) as usize;
                    }
                }
                "probe.blk_rand" => set(&mut options.blk.rand, value),
                "probe.dirty_mib" => set(&mut options.blk.dirty_mib, value),
                "probe.net_port" => {
                    if let Some(port) = parse_u64(value).and_then(|p| u16::try_from(p).ok()) {
                        options.net.port = port;
                    }
                }
                "probe.net_path" if value.starts_with('/') => options.net.path = value,
                "probe.net_mib" => set(&mut options.net.mib, value),
                "probe.net_mtu" => {
                    if let Some(mtu) = parse_u64(value) {
                        options.net.mtu = mtu as usize;
                    }
                }
                "probe.vsock_port" => {
                    if let Some(port) = parse_u64(value).and_then(|p| u32::try_from(p).ok()) {
                        options.vsock.port = port;
                    }
                }
                "probe.vsock_conns" => {
                    if let Some(n) = parse_u64(value) {
                        options.vsock.conns = n.clamp(1, 64) as usize;
                    }
                }
                "probe.vsock_mib" => set(&mut options.vsock.mib, value),
                "probe.vsock_cycles" => set(&mut options.vsock.cycles, value),
                "probe.vsock_bench_mib" => set(&mut options.vsock.bench_mib, value),
                "probe.vsock_pings" => {
                    if let Some(n) = parse_u64(value) {
                        options.vsock.pings = n.clamp(1, 1_000_000) as usize;
                    }
                }
                "probe.vsock_chunk_kib" => set(&mut options.vsock.chunk_kib, value),
                "probe.agent_copy_hex" => options.agent.copy_hex = Some(value),
                "probe.agent_copy_kib" => set(&mut options.agent.copy_kib, value),
                "probe.vsock_seed" => set(&mut options.vsock.seed, value),
                "probe.gpu_secs" => {
                    if let Some(secs) = parse_u64(value) {
                        crate::gpu::set_bench_secs(secs);
                    }
                }
                "probe.gpu_period_ms" => {
                    if let Some(ms) = parse_u64(value) {
                        crate::gpu::set_blink_period_ms(ms);
                    }
                }
                "probe.ecam" => options.host.ecam = parse_u64(value),
                "probe.pci_mmio32" => {
                    options.host.mmio32 = value.split_once('-').and_then(|(first, last)| {
                        let (first, last) = (parse_u64(first)?, parse_u64(last)?);
                        Some((u32::try_from(first).ok()?, u32::try_from(last).ok()?))
                    })
                }
                _ => {}
            }
        }
        options
    }
}

/// Sets `slot` from a number, if `value` is one.
fn set(slot: &mut u64, value: &str) {
    if let Some(number) = parse_u64(value) {
        *slot = number;
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
        Ok(command) if heap.is_some() && command.device_test().is_some() => {
            if let Some(test) = command.device_test() {
                blk::with_pci(&options.host, &options.blk, tsc_khz, test);
            }
        }
        Ok(Command::SelftestScreen) if heap.is_some() => {
            if let Some(mut pci) = crate::pci::init(&options.host, tsc_khz) {
                let discovery = crate::screen::Discovery {
                    cpus: acpi.as_ref().map_or(0, |tables| tables.cpus),
                    mem_bytes: boot_info.total_ram(),
                };
                crate::screen::run(&mut pci, &discovery, tsc_khz);
            }
        }
        Ok(Command::Net(test)) if heap.is_some() => {
            if let Some(mut pci) = crate::pci::init(&options.host, tsc_khz) {
                net::run(&mut pci, &options.net, tsc_khz, test);
            }
        }
        Ok(Command::Vsock(test)) if heap.is_some() => {
            if let Some(mut pci) = crate::pci::init(&options.host, tsc_khz) {
                vsock::run(test, &mut pci, &options.vsock, tsc_khz);
            }
        }
        Ok(Command::Agent) if heap.is_some() => {
            if let Some(mut pci) = crate::pci::init(&options.host, tsc_khz) {
                let action = agent::run(&mut pci, &options.agent, tsc_khz, boot_info.total_ram());
                if action == Some(vireo_guest_agent::protocol::PowerAction::Reboot) {
                    probe!("REBOOT");
                    acpi::reboot();
                }
            }
        }
        Ok(Command::Fault) => {
            let unmapped = crate::phys::MAPPED_END as *const u64;
            // SAFETY: deliberately not: reading above the identity map page-faults, and
            // the fault report powers the machine off; nothing runs after this read.
            let value = unsafe { unmapped.read_volatile() };
            probe!("error fault_did_not_fault value={value:#x}");
        }
        Ok(Command::Touch) if heap.is_some() => touch(options.touch_mib),
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

/// `probe.run=touch`: `mib` MiB written page by page, then a spin loop that keeps them.
fn touch(mib: u64) -> ! {
    const PAGE: usize = 4096;
    let len = (mib * vireo_cpu_bench::MIB) as usize;
    let mut buf: Vec<u64> = Vec::new();
    if buf.try_reserve_exact(len / 8).is_err() {
        probe!("error touch_alloc mib={mib}");
        loop {
            core::hint::spin_loop();
        }
    }
    buf.resize(len / 8, 0);
    for (page, words) in buf.chunks_mut(PAGE / 8).enumerate() {
        words.fill(0x5649_5245_4f00_0000 | page as u64);
    }
    probe!(
        "TOUCHED mib={mib} checksum={:#x}",
        buf.iter().step_by(PAGE / 8).fold(0u64, |a, w| a ^ w)
    );
    loop {
        core::hint::spin_loop();
    }
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
                 pm1a_cnt={:#x} s5_type={} s5_from_dsdt={} ged_port={:#x}",
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
                acpi.ged_port.unwrap_or(0),
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
