//! Launch benchmark: process start → probe-guest marker, and → exit after power-off, for
//! `vireo-vmm` and QEMU microvm booting the same probe guest through PVH on this machine
//! in the same run; the engine's memory beyond guest RAM (RSS of every non-guest-RAM
//! mapping, from /proc/PID/smaps); and the probe's SHA-256 speed against the same code
//! run natively. Prints one table with ratios.
//!
//! `cargo bench -p vireo-e2e --bench launch` (VIREO_BENCH_RUNS=N to change the 20 runs).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use vireo_e2e::engine::{run_command, vmm_binary, ProbeLine};
use vireo_e2e::probe_guest::probe_guest_elf;
use vireo_e2e::qemu::{qemu_available, qemu_probe_command};

const GUEST_MIB: u64 = 256;
const SHA_MIB: u64 = 256;

struct Launch {
    marker: Duration,
    exit: Duration,
}

/// Starts `cmd`, timestamps its first `VIREO-PROBE READY` line and its exit.
fn time_launch(cmd: &mut Command) -> Launch {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("VIREO-PROBE READY") {
                let _ = tx.send(Instant::now());
            }
        }
    });
    let status = child.wait().expect("wait");
    let exit = start.elapsed();
    reader.join().unwrap();
    let marker = rx.try_recv().expect("the guest printed its marker") - start;
    assert!(status.success(), "{cmd:?} exited with {status}");
    Launch { marker, exit }
}

fn vmm_cmd(elf: &Path, cmdline: &str) -> Command {
    let mut cmd = Command::new(vmm_binary());
    cmd.arg("--kernel")
        .arg(elf)
        .args(["--memory", &format!("{GUEST_MIB}M"), "--cmdline", cmdline]);
    cmd
}

struct Stats {
    median: f64,
    min: f64,
    max: f64,
}

fn stats(mut v: Vec<f64>) -> Stats {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    Stats {
        median,
        min: v[0],
        max: v[v.len() - 1],
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// RSS (KiB) of every mapping of `pid` except the guest-RAM mapping(s), found as the
/// anonymous mappings at least as large as the guest's RAM.
fn rss_beyond_guest_ram(pid: u32, guest_bytes: u64) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("smaps readable");
    let mut total = 0;
    let mut is_guest_ram = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            let (a, b) = first.split_once('-').unwrap();
            let size =
                u64::from_str_radix(b, 16).unwrap_or(0) - u64::from_str_radix(a, 16).unwrap_or(0);
            let anonymous = line.split_whitespace().count() <= 5;
            is_guest_ram = anonymous && size >= guest_bytes;
        } else if let Some(rest) = line.strip_prefix("Rss:") {
            if !is_guest_ram {
                total += rest
                    .trim()
                    .trim_end_matches(" kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap_or(0);
            }
        }
    }
    total
}

/// Boots a guest that stays up after its marker, measures its memory, kills it.
fn measure_memory(cmd: &mut Command) -> u64 {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let ready = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains("VIREO-PROBE READY"));
    assert!(ready, "guest reached its marker");
    // Let the guest settle into its idle loop.
    std::thread::sleep(Duration::from_millis(300));
    let kib = rss_beyond_guest_ram(child.id(), GUEST_MIB << 20);
    let _ = child.kill();
    let _ = child.wait();
    kib
}

fn guest_sha_speed(cmd: &mut Command) -> f64 {
    let run = run_command(cmd, Duration::from_secs(300));
    let line = run
        .stdout
        .lines()
        .filter_map(ProbeLine::parse)
        .find(|l| l.tag == "sha256");
    line.and_then(|l| l.u64("mib_per_s"))
        .expect("sha256 line with mib_per_s") as f64
}

/// The same hashing natively, over a buffer backed by transparent huge pages as the
/// guest's RAM is (the engine asks for them), so that both sides pay the same TLB costs.
fn host_sha_speed() -> f64 {
    const HUGE: usize = 2 << 20;
    let len = (SHA_MIB << 20) as usize;
    let mut backing = vec![0u8; 0];
    backing.reserve_exact(len + HUGE);
    let offset = backing.as_ptr().align_offset(HUGE);
    // SAFETY: madvise over a range inside the allocation just reserved (untouched yet);
    // the advice does not change its contents or validity.
    unsafe {
        libc::madvise(
            backing.as_mut_ptr().add(offset).cast(),
            len,
            libc::MADV_HUGEPAGE,
        )
    };
    backing.resize(len + HUGE, 0);
    let buf = &mut backing[offset..offset + len];
    let start = Instant::now();
    // Nanoseconds since start: hash_pattern sums the deltas around each hash call.
    let result =
        vireo_cpu_bench::hash_pattern(SHA_MIB << 20, buf, || start.elapsed().as_nanos() as u64);
    (SHA_MIB as f64) / Duration::from_nanos(result.hash_ticks).as_secs_f64()
}

fn row(name: &str, vireo: &Stats, qemu: Option<&Stats>, unit: &str) {
    let q = qemu
        .map(|q| format!("{:>8.1} {:>8.1} {:>8.1}", q.median, q.min, q.max))
        .unwrap_or_else(|| format!("{:>26}", "n/a"));
    let ratio = qemu
        .map(|q| format!("{:>7.2}x", q.median / vireo.median))
        .unwrap_or_else(|| "    n/a".into());
    println!(
        "{name:<28} {:>8.1} {:>8.1} {:>8.1}   {q}   {ratio}  {unit}",
        vireo.median, vireo.min, vireo.max
    );
}

fn main() {
    let runs: usize = std::env::var("VIREO_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let elf = probe_guest_elf();
    let qemu = qemu_available();
    if !qemu {
        eprintln!("launch bench: qemu-system-x86_64 not found (installers/setup-host.sh installs it): QEMU columns are n/a");
    }
    // One warm-up each so that page cache and KVM module state are alike.
    time_launch(&mut vmm_cmd(&elf, "probe.run=poweroff"));
    if qemu {
        time_launch(&mut qemu_probe_command(
            &elf,
            "probe.run=poweroff",
            1,
            GUEST_MIB,
        ));
    }
    let (mut vm_marker, mut vm_exit, mut q_marker, mut q_exit) = (vec![], vec![], vec![], vec![]);
    for _ in 0..runs {
        // Interleaved, so drift on this shared machine hits both alike.
        let v = time_launch(&mut vmm_cmd(&elf, "probe.run=poweroff"));
        vm_marker.push(ms(v.marker));
        vm_exit.push(ms(v.exit));
        if qemu {
            let q = time_launch(&mut qemu_probe_command(
                &elf,
                "probe.run=poweroff",
                1,
                GUEST_MIB,
            ));
            q_marker.push(ms(q.marker));
            q_exit.push(ms(q.exit));
        }
    }
    let vm_mem = measure_memory(&mut vmm_cmd(&elf, "probe.run=idle")) as f64;
    let q_mem = qemu.then(|| {
        measure_memory(&mut qemu_probe_command(
            &elf,
            "probe.run=idle",
            1,
            GUEST_MIB,
        )) as f64
    });
    let sha_cmdline = format!("probe.run=selftest probe.sha_mib={SHA_MIB}");
    let vm_sha = guest_sha_speed(&mut vmm_cmd(&elf, &sha_cmdline));
    let q_sha =
        qemu.then(|| guest_sha_speed(&mut qemu_probe_command(&elf, &sha_cmdline, 1, GUEST_MIB)));
    let host_sha = host_sha_speed();

    println!();
    println!("Launch benchmark: probe guest, {GUEST_MIB} MiB, 1 vCPU, {runs} runs each, same machine and run");
    println!(
        "{:<28} {:>8} {:>8} {:>8}   {:>8} {:>8} {:>8}   {:>8}",
        "", "vireo", "min", "max", "qemu", "min", "max", "qemu/vireo"
    );
    row(
        "start -> marker (ms)",
        &stats(vm_marker),
        qemu.then(|| stats(q_marker)).as_ref(),
        "median",
    );
    row(
        "start -> exit (ms)",
        &stats(vm_exit),
        qemu.then(|| stats(q_exit)).as_ref(),
        "median",
    );
    let one = |v: f64| Stats {
        median: v,
        min: v,
        max: v,
    };
    row(
        "memory beyond RAM (KiB)",
        &one(vm_mem),
        q_mem.map(one).as_ref(),
        "RSS",
    );
    println!(
        "{:<28} {:>8.0} MiB/s in the guest under vireo = {:.1}% of native ({:.0} MiB/s); under qemu {}",
        "sha256 (same code)",
        vm_sha,
        100.0 * vm_sha / host_sha,
        host_sha,
        q_sha.map(|q| format!("{q:.0} MiB/s = {:.1}% of native", 100.0 * q / host_sha)).unwrap_or_else(|| "n/a".into())
    );
}
