//! Block benchmark: the probe guest's sequential 1 MiB write/read MB/s and 4 KiB random
//! read IOPS on the same image file under `vireo-vmm` and under QEMU microvm with
//! virtio-blk-pci (same PCI transport, no firmware), in the same run; the host's own
//! throughput on that file as the ceiling; and exits to the VMM's userspace per request
//! for each (KVM's `kvm_userspace_exit` tracepoint counted by `perf`, less a boot-only
//! baseline; the in-kernel exits a notify through an ioeventfd costs are not traced on
//! PVM hosts); and vireo with I/O limits that never bind (`bw=`, `iops=` far above what
//! the disk does: every request still goes through the token buckets), for what the
//! limiter costs; and vireo with `--no-seccomp`, for what the per-thread syscall filters
//! cost (goal: under 2 %). Prints one table.
//!
//! `cargo bench -p vireo-e2e --bench blk` (VIREO_BENCH_RUNS=N rounds, default 3).

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use vireo_e2e::engine::{run_command, s, vmm_binary, ProbeLine};
use vireo_e2e::probe_guest::probe_guest_elf;
use vireo_e2e::qemu::{qemu_available, qemu_probe_command};

const IMAGE_MIB: u64 = 512;
const BENCH_MIB: u64 = 256;

#[derive(Default, Clone, Copy)]
struct Result {
    write: f64,
    read: f64,
    iops: f64,
    iops_qd1: f64,
    requests: f64,
    exits: Option<f64>,
}

/// Runs `cmd` under `perf stat` counting exits to userspace system-wide; returns its
/// result line and the count (None without perf or the tracepoint).
fn run(cmd: Command) -> (ProbeLine, Option<u64>) {
    let counts = std::env::temp_dir().join(format!("vireo-perf-{}.txt", std::process::id()));
    let mut perf = Command::new("perf");
    perf.args([
        "stat",
        "-a",
        "-x",
        ",",
        "-e",
        "kvm:kvm_userspace_exit",
        "-o",
        s(&counts),
        "--",
    ]);
    perf.arg(cmd.get_program()).args(cmd.get_args());
    let use_perf = Command::new("perf")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let mut to_run = if use_perf { perf } else { cmd };
    let out = run_command(&mut to_run, Duration::from_secs(300));
    let exits = std::fs::read_to_string(&counts).ok().and_then(|t| {
        t.lines()
            .find(|l| l.contains("kvm_userspace_exit"))?
            .split(',')
            .next()?
            .trim()
            .parse()
            .ok()
    });
    let _ = std::fs::remove_file(&counts);
    let line = out
        .stdout
        .lines()
        .filter_map(ProbeLine::parse)
        .find(|l| l.tag == "blk_bench" || l.tag == "POWEROFF")
        .unwrap_or_else(|| panic!("no result:\n{}\n{}", out.stdout, out.stderr));
    (line, exits)
}

fn vireo(image: &Path, cmdline: &str) -> Command {
    vireo_disk(&format!("path={},format=raw", image.display()), cmdline)
}

/// Limits a thousand times above what this disk does: the buckets' cost alone.
fn vireo_limited(image: &Path, cmdline: &str) -> Command {
    let spec = format!(
        "path={},format=raw,bw=1000G,iops=100000000",
        image.display()
    );
    vireo_disk(&spec, cmdline)
}

/// The engine without its seccomp filters: what they cost.
fn vireo_unfiltered(image: &Path, cmdline: &str) -> Command {
    let mut cmd = vireo(image, cmdline);
    cmd.arg("--no-seccomp");
    cmd
}

fn vireo_disk(spec: &str, cmdline: &str) -> Command {
    let mut cmd = Command::new(vmm_binary());
    cmd.args([
        "--kernel",
        s(&probe_guest_elf()),
        "--memory",
        "256M",
        "--disk",
        spec,
        "--cmdline",
        cmdline,
    ]);
    cmd
}

fn qemu(image: &Path, cmdline: &str) -> Command {
    let mut cmd = qemu_probe_command(&probe_guest_elf(), cmdline, 1, 256);
    cmd.args([
        "-drive",
        &format!(
            "file={},if=none,id=d0,format=raw,cache=writeback,aio=threads",
            image.display()
        ),
    ]);
    cmd.args(["-device", "virtio-blk-pci,drive=d0,disable-legacy=on"]);
    cmd
}

fn measure(make: &dyn Fn(&Path, &str) -> Command, image: &Path) -> Result {
    let bench = format!("probe.run=blk-bench probe.blk_mib={BENCH_MIB}");
    let (baseline, base_exits) = run(make(image, "probe.run=poweroff"));
    assert_eq!(baseline.tag, "POWEROFF");
    let (line, exits) = run(make(image, &bench));
    assert_eq!(line.get("ok"), Some("1"), "{line:?}");
    let f = |k: &str| line.u64(k).unwrap_or(0) as f64;
    let requests = f("requests");
    Result {
        write: f("seq_write_mib_s"),
        read: f("seq_read_mib_s"),
        iops: f("rand4k_read_iops"),
        iops_qd1: f("rand4k_qd1_read_iops"),
        requests,
        exits: exits
            .zip(base_exits)
            .map(|(e, b)| e.saturating_sub(b) as f64 / requests),
    }
}

/// The host's own throughput on the same file, with the same request sizes.
fn host(image: &Path) -> Result {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .unwrap();
    let bytes = BENCH_MIB << 20;
    let mut buf = vec![0x5au8; 1 << 20];
    let start = Instant::now();
    file.seek(SeekFrom::Start(0)).unwrap();
    for _ in 0..BENCH_MIB {
        file.write_all(&buf).unwrap();
    }
    file.sync_data().unwrap();
    let write = BENCH_MIB as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    file.seek(SeekFrom::Start(0)).unwrap();
    for _ in 0..BENCH_MIB {
        file.read_exact(&mut buf).unwrap();
    }
    let read = BENCH_MIB as f64 / start.elapsed().as_secs_f64();
    let mut sector = [0u8; 4096];
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let count = 4096;
    let start = Instant::now();
    for _ in 0..count {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        file.read_exact_at(&mut sector, (x % (bytes / 4096)) * 4096)
            .unwrap();
    }
    let iops = count as f64 / start.elapsed().as_secs_f64();
    Result {
        write,
        read,
        iops,
        iops_qd1: iops,
        requests: 0.0,
        exits: None,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::var("VIREO_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let dir = std::env::temp_dir().join(format!("vireo-blk-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let image = dir.join("bench.raw");
    // A fully written image, so no run pays for block allocation the others do not.
    {
        let mut f = std::fs::File::create(&image).unwrap();
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..IMAGE_MIB {
            f.write_all(&chunk).unwrap();
        }
        f.sync_all().unwrap();
    }
    let has_qemu = qemu_available();
    let (mut v, mut q, mut h, mut vl) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut vn = Vec::new();
    for round in 0..rounds {
        // Interleaved so that drift on this shared machine hits every column alike; the
        // runs with and without seccomp are neighbours, in turns first (ABBA), so that
        // their ratio (taken per round) carries neither drift nor the order's cache state.
        if round % 2 == 1 {
            vn.push(measure(&vireo_unfiltered, &image));
        }
        v.push(measure(&vireo, &image));
        if round % 2 == 0 {
            vn.push(measure(&vireo_unfiltered, &image));
        }
        vl.push(measure(&vireo_limited, &image));
        if has_qemu {
            q.push(measure(&qemu, &image));
        }
        h.push(host(&image));
    }
    let pick = |rs: &[Result], f: &dyn Fn(&Result) -> f64| {
        (!rs.is_empty()).then(|| median(rs.iter().map(f).collect()))
    };
    println!();
    println!("Block benchmark: probe guest (virtio-drivers), {BENCH_MIB} MiB on a {IMAGE_MIB} MiB raw file, medians of {rounds} rounds");
    println!(
        "{:<26} {:>10} {:>10} {:>12} {:>10} {:>12} {:>12} {:>12} {:>12} {:>14}",
        "",
        "vireo",
        "qemu",
        "vireo/qemu",
        "host",
        "vireo/host",
        "vireo+limit",
        "limit/free",
        "no-seccomp",
        "seccomp/off"
    );
    type Getter = fn(&Result) -> f64;
    let rows: [(&str, Getter); 4] = [
        ("seq write 1 MiB (MiB/s)", |r| r.write),
        ("seq read 1 MiB (MiB/s)", |r| r.read),
        ("rand read 4 KiB qd8 (IOPS)", |r| r.iops),
        ("rand read 4 KiB qd1 (IOPS)", |r| r.iops_qd1),
    ];
    for (name, get) in rows {
        let (vv, qq, hh, ll) = (
            pick(&v, &get).unwrap(),
            pick(&q, &get),
            pick(&h, &get).unwrap(),
            pick(&vl, &get).unwrap(),
        );
        let nn = pick(&vn, &get).unwrap();
        let paired = median(v.iter().zip(&vn).map(|(a, b)| get(a) / get(b)).collect());
        let ratio = qq
            .map(|q| format!("{:.2}x", vv / q))
            .unwrap_or_else(|| "n/a".into());
        let qs = qq
            .map(|q| format!("{q:.0}"))
            .unwrap_or_else(|| "n/a".into());
        println!(
            "{name:<26} {vv:>10.0} {qs:>10} {ratio:>12} {hh:>10.0} {:>11.0}% {ll:>12.0} {:>11.0}% {nn:>12.0} {:>13.1}%",
            100.0 * vv / hh,
            100.0 * ll / vv,
            100.0 * paired
        );
    }
    let exits = |rs: &[Result]| pick(rs, &|r: &Result| r.exits.unwrap_or(f64::NAN));
    let fmt = |e: Option<f64>| {
        e.filter(|e| !e.is_nan())
            .map(|e| format!("{e:.2}"))
            .unwrap_or_else(|| "n/a".into())
    };
    println!(
        "{:<26} {:>10} {:>10}   (requests per run: {:.0})",
        "userspace exits/request",
        fmt(exits(&v)),
        fmt(exits(&q)),
        pick(&v, &|r: &Result| r.requests).unwrap()
    );
    println!("(seccomp/off: vireo with its filters as a fraction of vireo without, the median of per-round ratios; 100% = free)");
    let _ = std::fs::remove_dir_all(&dir);
}
