//! GPU benchmark: the probe guest's full-frame rate at 1920x1080 (TRANSFER_TO_HOST_2D +
//! RESOURCE_FLUSH of the whole screen, through virtio-drivers) under `vireo-vmm` and
//! under QEMU microvm with virtio-gpu-pci (headless), in the same run; the host's memcpy
//! rate over a frame as the ceiling; the latency from the guest starting a flush to the
//! damage event at a `display-attach`ed control-socket client; and what the engine (its
//! threads other than the vCPUs) and the client cost while the screen is static.
//! Prints one table.
//!
//! The latency compares the TSC the guest stamps into each frame with the host's TSC
//! when the event arrives: under KVM the guest reads the host's TSC plus the offset KVM
//! programs, which the table prints as found (the smallest difference seen; a negative
//! or huge value would mean the offset is not zero and the figure is only relative).
//!
//! `cargo bench -p vireo-e2e --bench gpu` (VIREO_BENCH_SECS=N per run, default 5).

use std::os::unix::fs::FileExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vireo_e2e::display::{field, DisplayClient};
use vireo_e2e::engine::{run_command, s, vmm_binary, LiveGuest, ProbeLine};
use vireo_e2e::probe_guest::probe_guest_elf;
use vireo_e2e::qemu::{qemu_available, qemu_probe_command};

const WIDTH: u32 = 1920;
const HEIGHT: u32 = 1080;
const FRAME_BYTES: usize = (WIDTH * HEIGHT * 4) as usize;

fn rdtsc() -> u64 {
    // SAFETY: RDTSC reads a counter; it has no memory effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

fn percentile(sorted: &[f64], p: usize) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

/// The host's memcpy rate over frame-sized buffers, in bytes per second.
fn memcpy_rate() -> f64 {
    let src = vec![0x5au8; FRAME_BYTES];
    let mut dst = vec![0u8; FRAME_BYTES];
    dst.copy_from_slice(&src);
    let rounds = 100;
    let start = Instant::now();
    for _ in 0..rounds {
        // black_box on both sides: each round is a real copy the compiler cannot drop.
        std::hint::black_box(&mut dst).copy_from_slice(std::hint::black_box(&src));
    }
    (FRAME_BYTES * rounds) as f64 / start.elapsed().as_secs_f64()
}

/// CPU seconds (user + system) the process `pid` spent so far in threads whose names
/// `count` accepts.
fn cpu_seconds(pid: u32, count: impl Fn(&str) -> bool) -> f64 {
    // SAFETY: sysconf only reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    let mut total = 0u64;
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !count(&stat[open + 1..close]) {
            continue;
        }
        // After the name: state is field 3; utime and stime are fields 14 and 15.
        let rest: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        let utime: u64 = rest.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
        let stime: u64 = rest.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
        total += utime + stime;
    }
    total as f64 / ticks
}

struct EngineRun {
    fps: f64,
    flush_p50_us: f64,
    flush_p99_us: f64,
    latency_us: Vec<f64>,
    min_offset_us: f64,
    damage_events: usize,
}

fn bench_line(lines: &[String]) -> ProbeLine {
    lines
        .iter()
        .filter_map(|l| ProbeLine::parse(l))
        .find(|p| p.tag == "gpu_bench")
        .unwrap_or_else(|| panic!("no gpu_bench line: {lines:#?}"))
}

fn socket(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "vireo-bench-gpu-{name}-{}.sock",
        std::process::id()
    ))
}

/// The probe's gpu-bench under vireo-vmm, with a client measuring damage latency.
fn engine_bench(secs: u64) -> EngineRun {
    let path = socket("frames");
    let elf = probe_guest_elf();
    let mut guest = LiveGuest::spawn(Command::new(vmm_binary()).args([
        "--kernel",
        s(&elf),
        "--memory",
        "256M",
        "--display",
        &format!("{WIDTH}x{HEIGHT}"),
        "--control-socket",
        s(&path),
        "--cmdline",
        &format!("probe.run=gpu-bench probe.gpu_secs={secs}"),
    ]));
    let mut client = DisplayClient::connect(&path, Duration::from_secs(30));
    let attach = client.ask(r#"{"request":"display-attach"}"#);
    let mut memfd = attach.fd.map(std::fs::File::from);
    let tsc_khz = {
        guest.wait_for("tsc_khz=", Duration::from_secs(60));
        let ready = guest
            .seen
            .iter()
            .filter_map(|l| ProbeLine::parse(l))
            .find_map(|p| p.u64("tsc_khz"))
            .expect("the probe reports its TSC rate");
        tsc_khz_f(ready)
    };
    let mut deltas = Vec::new();
    let mut damage_events = 0;
    let mut last_frame = 0u64;
    let end = Instant::now() + Duration::from_secs(secs + 60);
    while Instant::now() < end {
        let Some(line) = client.next_event(Duration::from_secs(5)) else {
            break;
        };
        let now = rdtsc();
        match line.json["event"].as_str() {
            Some("mode") => memfd = line.fd.map(std::fs::File::from),
            Some("damage") if field(&line.json, "width") == u64::from(WIDTH) => {
                damage_events += 1;
                let Some(fb) = &memfd else { continue };
                let mut stamp = [0u8; 16];
                if fb.read_exact_at(&mut stamp, 0).is_err() {
                    continue;
                }
                let frame = u64::from_le_bytes(stamp[..8].try_into().unwrap());
                let tsc = u64::from_le_bytes(stamp[8..].try_into().unwrap());
                // Only frames read before the next flush replaced them.
                if frame == last_frame + 1 && frame > 0 {
                    deltas.push(now as i128 - tsc as i128);
                }
                last_frame = frame;
            }
            _ => {}
        }
    }
    guest.wait_exit(Duration::from_secs(30));
    let lines = guest.kill();
    let line = bench_line(&lines);
    let min = deltas.iter().copied().min().unwrap_or(0);
    let mut latency_us: Vec<f64> = deltas
        .iter()
        .map(|&d| d as f64 * 1000.0 / tsc_khz)
        .collect();
    latency_us.sort_by(f64::total_cmp);
    EngineRun {
        fps: line.u64("fps_x100").unwrap_or(0) as f64 / 100.0,
        flush_p50_us: line.u64("flush_p50_us").unwrap_or(0) as f64,
        flush_p99_us: line.u64("flush_p99_us").unwrap_or(0) as f64,
        latency_us,
        min_offset_us: min as f64 * 1000.0 / tsc_khz,
        damage_events,
    }
}

fn tsc_khz_f(khz: u64) -> f64 {
    khz.max(1) as f64
}

/// CPU use (fraction of one core) of the engine's non-vCPU threads and of this client
/// while the guest shows a static screen, over `secs`.
fn static_cpu(secs: u64) -> (f64, f64) {
    let path = socket("static");
    let elf = probe_guest_elf();
    let mut guest = LiveGuest::spawn(Command::new(vmm_binary()).args([
        "--kernel",
        s(&elf),
        "--memory",
        "256M",
        "--display",
        &format!("{WIDTH}x{HEIGHT}"),
        "--control-socket",
        s(&path),
        "--cmdline",
        "probe.run=gpu-draw",
    ]));
    let mut client = DisplayClient::connect(&path, Duration::from_secs(30));
    client.ask(r#"{"request":"display-attach"}"#);
    guest.wait_for("VIREO-PROBE IDLE", Duration::from_secs(60));
    // Whatever the guest's setup sent is read; from now on the screen does not change.
    while client.next_event(Duration::from_millis(500)).is_some() {}
    let pid = guest.child.id();
    let not_vcpu = |name: &str| !name.starts_with("vcpu");
    let engine0 = cpu_seconds(pid, not_vcpu);
    let client0 = cpu_seconds(std::process::id(), |_| true);
    let start = Instant::now();
    let extra = client.next_event(Duration::from_secs(secs));
    let wall = start.elapsed().as_secs_f64();
    let engine = (cpu_seconds(pid, not_vcpu) - engine0) / wall;
    let me = (cpu_seconds(std::process::id(), |_| true) - client0) / wall;
    assert!(extra.is_none(), "a static screen sends no events");
    client.ask(r#"{"request":"power-off"}"#);
    guest.wait_exit(Duration::from_secs(30));
    (engine, me)
}

/// The same probe under QEMU with virtio-gpu-pci, headless.
fn qemu_bench(secs: u64) -> Option<(f64, f64, f64)> {
    if !qemu_available() {
        return None;
    }
    let elf = probe_guest_elf();
    let mut cmd = qemu_probe_command(
        &elf,
        &format!("probe.run=gpu-bench probe.gpu_secs={secs}"),
        1,
        256,
    );
    cmd.args([
        "-device",
        &format!("virtio-gpu-pci,xres={WIDTH},yres={HEIGHT}"),
    ])
    .stderr(Stdio::null());
    let run = run_command(&mut cmd, Duration::from_secs(secs + 120));
    let line = run.probe("gpu_bench")?;
    Some((
        line.u64("fps_x100")? as f64 / 100.0,
        line.u64("flush_p50_us")? as f64,
        line.u64("flush_p99_us")? as f64,
    ))
}

fn main() {
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("*** SKIPPED gpu bench: no /dev/kvm on this host ***");
        return;
    }
    let secs: u64 = std::env::var("VIREO_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let memcpy = memcpy_rate();
    let ceiling = memcpy / FRAME_BYTES as f64;
    let engine = engine_bench(secs);
    let qemu = qemu_bench(secs);
    let (engine_cpu, client_cpu) = static_cpu(3);

    let lat = &engine.latency_us;
    println!("GPU benchmark, {WIDTH}x{HEIGHT} B8G8R8A8, full-frame flushes, {secs} s per run");
    println!(
        "{:<48} {:>12} {:>12} {:>10}",
        "measure", "vireo-vmm", "QEMU", "ratio"
    );
    let ratio = |a: f64, b: Option<f64>| match b {
        Some(b) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".into(),
    };
    let q = |v: Option<f64>, digits: usize| match v {
        Some(v) => format!("{v:.digits$}"),
        None => "n/a".into(),
    };
    println!(
        "{:<48} {:>12.1} {:>12} {:>10}",
        "frames/s (guest, 1 vCPU)",
        engine.fps,
        q(qemu.map(|r| r.0), 1),
        ratio(engine.fps, qemu.map(|r| r.0))
    );
    println!(
        "{:<48} {:>12.1} {:>12} {:>10}",
        "ceiling: host memcpy of one frame, frames/s",
        ceiling,
        "",
        format!("{:.0}%", 100.0 * engine.fps / ceiling)
    );
    println!(
        "{:<48} {:>12.0} {:>12} {:>10}",
        "guest flush() round trip p50, us",
        engine.flush_p50_us,
        q(qemu.map(|r| r.1), 0),
        ratio(engine.flush_p50_us, qemu.map(|r| r.1))
    );
    println!(
        "{:<48} {:>12.0} {:>12} {:>10}",
        "guest flush() round trip p99, us",
        engine.flush_p99_us,
        q(qemu.map(|r| r.2), 0),
        ratio(engine.flush_p99_us, qemu.map(|r| r.2))
    );
    println!(
        "{:<48} {:>12.0} {:>12} {:>10}",
        "flush start -> damage at client p50, us",
        percentile(lat, 50),
        "n/a",
        ""
    );
    println!(
        "{:<48} {:>12.0} {:>12} {:>10}",
        "flush start -> damage at client p99, us",
        percentile(lat, 99),
        "n/a",
        ""
    );
    println!(
        "{:<48} {:>12} {:>12} {:>10}",
        "  (samples / damage events; smallest delta, us)",
        format!("{}/{}", lat.len(), engine.damage_events),
        format!("{:.0}", engine.min_offset_us),
        ""
    );
    println!(
        "{:<48} {:>11.2}% {:>12} {:>10}",
        "static screen: engine CPU (non-vCPU threads)",
        engine_cpu * 100.0,
        "",
        ""
    );
    println!(
        "{:<48} {:>11.2}% {:>12} {:>10}",
        "static screen: attached client CPU",
        client_cpu * 100.0,
        "",
        ""
    );
    println!("memcpy: {:.2} GB/s", memcpy / 1e9);
}
