//! Resource limits with a real engine and the probe guest: a disk's bandwidth and IOPS
//! limits as the guest measures them, and a limit changed over the control socket while
//! the guest reads and writes.

use std::process::Command;
use std::time::{Duration, Instant};

use vireo_e2e::engine::{connect_control, run_vmm, s, vmm_binary, LiveGuest, ProbeLine};
use vireo_e2e::probe_guest::probe_guest_elf;
use vireo_e2e::report;
use vireo_e2e::temp::TempDir;
use vireo_vmm::control::protocol::{Request, Response};
use vireo_vmm::devices::virtio::rate_limit::IoLimits;

const MIB: u64 = 1 << 20;

/// A sparse raw image of `mib` MiB in `dir`.
fn image(dir: &TempDir, mib: u64) -> std::path::PathBuf {
    let path = dir.0.join("disk.raw");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(mib * MIB)
        .unwrap();
    path
}

/// Runs the probe's block benchmark on `disk` (a `--disk` value) and returns its line.
fn blk_bench(disk: &str, mib: u64, rand: u64) -> ProbeLine {
    let elf = probe_guest_elf();
    let cmdline = format!("probe.run=blk-bench probe.blk_mib={mib} probe.blk_rand={rand}");
    let run = run_vmm(
        &[
            "--kernel",
            s(&elf),
            "--memory",
            "128M",
            "--disk",
            disk,
            "--cmdline",
            &cmdline,
        ],
        Duration::from_secs(120),
    );
    let line = run
        .probe("blk_bench")
        .unwrap_or_else(|| panic!("no blk_bench line:\n{}\n{}", run.stdout, run.stderr));
    assert_eq!(line.get("ok"), Some("1"), "{line:?}");
    line
}

#[test]
fn a_disk_limited_to_20_mib_s_measures_20_and_iops_hold_too() {
    const TEST: &str = "resources::a_disk_limited_to_20_mib_s_measures_20_and_iops_hold_too";
    if !report::require_kvm(TEST) {
        return;
    }
    let dir = TempDir::new("res-blk-limit");
    let img = image(&dir, 64);
    let path = format!("path={},format=raw", s(&img));

    // The same run unlimited, so that the limit is what holds the figure down.
    let free = blk_bench(&path, 64, 256);
    let limited = blk_bench(&format!("{path},bw=20M"), 64, 256);
    let (w, r) = (
        limited.u64("seq_write_mib_s").unwrap(),
        limited.u64("seq_read_mib_s").unwrap(),
    );
    let iops_free = free.u64("rand4k_read_iops").unwrap();
    let iops = blk_bench(&format!("{path},iops=2000,iops_burst=20"), 8, 1000)
        .u64("rand4k_read_iops")
        .unwrap();
    eprintln!(
        "blk limit: unlimited write {} read {} MiB/s, bw=20M write {w} read {r} MiB/s; \
         4 KiB random reads unlimited {iops_free}/s, iops=2000,iops_burst=20 {iops}/s",
        free.u64("seq_write_mib_s").unwrap(),
        free.u64("seq_read_mib_s").unwrap(),
    );
    assert!(
        free.u64("seq_read_mib_s").unwrap() > 40,
        "unlimited reads too slow to show a 20 MiB/s limit: {free:?}"
    );
    assert!((18..=22).contains(&w), "write {w} MiB/s under bw=20M");
    assert!((18..=22).contains(&r), "read {r} MiB/s under bw=20M");
    assert!(iops_free > 3000, "unlimited random reads: {iops_free}/s");
    assert!((1800..=2200).contains(&iops), "{iops} IOPS under iops=2000");
}

/// Disk bytes (both ways) per second between two samples.
fn rate(a: (Instant, u64), b: (Instant, u64)) -> f64 {
    (b.1 - a.1) as f64 / MIB as f64 / (b.0 - a.0).as_secs_f64()
}

#[test]
fn a_limit_changed_while_running_takes_effect() {
    const TEST: &str = "resources::a_limit_changed_while_running_takes_effect";
    if !report::require_kvm(TEST) {
        return;
    }
    let dir = TempDir::new("res-blk-change");
    let img = image(&dir, 64);
    let socket = dir.0.join("control.sock");
    let elf = probe_guest_elf();
    let mut guest = LiveGuest::spawn(Command::new(vmm_binary()).args([
        "--kernel",
        s(&elf),
        "--memory",
        "128M",
        "--disk",
        &format!("path={},format=raw,bw=4M", s(&img)),
        "--control-socket",
        s(&socket),
        "--cmdline",
        "probe.run=blk-bench probe.blk_mib=64 probe.blk_rand=16",
    ]));
    let mut control = connect_control(&socket, Duration::from_secs(60), Duration::from_secs(10));
    let sample = |control: &mut vireo_vmm::control::client::Control| match control
        .ask(&Request::Stats {})
        .unwrap()
    {
        Response::Stats { disks, .. } => {
            (Instant::now(), disks[0].read_bytes + disks[0].write_bytes)
        }
        other => panic!("stats answered {other:?}"),
    };
    // Past the first burst, then 1.5 s at the old limit.
    let wait_for = |control: &mut vireo_vmm::control::client::Control, bytes: u64| loop {
        let s = sample(control);
        if s.1 >= bytes {
            return s;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let before_a = wait_for(&mut control, MIB);
    std::thread::sleep(Duration::from_millis(1500));
    let before_b = sample(&mut control);

    let answer = control
        .ask(&Request::SetLimits {
            disk: Some(0),
            net: None,
            limits: IoLimits {
                bw: Some(40 * MIB),
                ..IoLimits::default()
            },
        })
        .unwrap();
    assert!(
        matches!(answer, Response::Limits { limits } if limits.bw == Some(40 * MIB)),
        "{answer:?}"
    );
    std::thread::sleep(Duration::from_millis(200));
    let after_a = sample(&mut control);
    std::thread::sleep(Duration::from_millis(1000));
    let after_b = sample(&mut control);
    // Mistakes are answered, and change nothing.
    let wrong = control
        .ask(&Request::SetLimits {
            disk: Some(3),
            net: None,
            limits: IoLimits::default(),
        })
        .unwrap();
    assert!(
        matches!(&wrong, Response::Error { message } if message.contains("no disk 3")),
        "{wrong:?}"
    );
    guest
        .wait_exit(Duration::from_secs(60))
        .expect("the guest finishes its benchmark");
    let line = guest
        .seen
        .iter()
        .find_map(|l| ProbeLine::parse(l).filter(|p| p.tag == "blk_bench"))
        .unwrap_or_else(|| panic!("no blk_bench line in {:?}", guest.seen));
    assert_eq!(line.get("ok"), Some("1"), "{line:?}");

    let (before, after) = (rate(before_a, before_b), rate(after_a, after_b));
    eprintln!("limit change: {before:.1} MiB/s at bw=4M, then {after:.1} MiB/s at bw=40M");
    assert!((3.4..=4.6).contains(&before), "{before:.2} MiB/s at bw=4M");
    assert!((34.0..=46.0).contains(&after), "{after:.2} MiB/s at bw=40M");
}
