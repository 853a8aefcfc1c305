//! Resource limits with a real engine and the probe guest: a disk's bandwidth and IOPS
//! limits and a network card's bandwidth limit as the guest measures them, a limit
//! changed over the control socket while the guest reads and writes; CPU weights,
//! limits and pinning measured from the vCPU threads' CPU time; the host memory a
//! guest's working set costs, and KSM sharing two guests' identical pages.

use std::process::Command;
use std::time::{Duration, Instant};

use vireo_e2e::engine::{connect_control, run_vmm, s, vmm_binary, LiveGuest, ProbeLine};
use vireo_e2e::probe_guest::probe_guest_elf;
use vireo_e2e::report;
use vireo_e2e::temp::TempDir;
use vireo_vmm::control::client::Control;
use vireo_vmm::control::protocol::{Request, Response};
use vireo_vmm::devices::virtio::rate_limit::IoLimits;
use vireo_vmm::resources::VmUsage;

const MIB: u64 = 1 << 20;

/// One test at a time: each measures CPU time or throughput, and the others' spinning
/// guests would take the CPUs it measures.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

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
    let _serial = serial();
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
    let _serial = serial();
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

/// A running engine's vCPU 0 thread: its CPU time so far in ns (schedstat's first field).
fn vcpu0_ns(pid: u32) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the engine runs");
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() == "vcpu0" {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap();
            return stat.split_whitespace().next().unwrap().parse().unwrap();
        }
    }
    panic!("engine {pid} has no vcpu0 thread");
}

/// Whether this host lets the engine set a CPU weight; if not, says why (loudly).
fn cpu_cgroup_usable(test: &str) -> bool {
    let elf = probe_guest_elf();
    let run = run_vmm(
        &[
            "--kernel",
            s(&elf),
            "--memory",
            "64M",
            "--cpu-weight",
            "100",
            "--cmdline",
            "probe.run=poweroff",
        ],
        Duration::from_secs(60),
    );
    if run.code() == Some(0) {
        return true;
    }
    assert!(
        run.stderr.contains("need a cgroup"),
        "the engine failed otherwise: {}",
        run.stderr
    );
    report::skipped(
        test,
        run.stderr.lines().last().unwrap_or("no usable cgroup"),
    );
    false
}

/// A CPU-bound probe guest (`idle` spins) with `flags`, its control socket in `dir`.
fn spinning_guest(dir: &TempDir, name: &str, flags: &[&str]) -> (LiveGuest, Control) {
    let socket = dir.0.join(format!("{name}.sock"));
    let elf = probe_guest_elf();
    let mut cmd = Command::new(vmm_binary());
    cmd.args(["--kernel", s(&elf), "--memory", "64M", "--control-socket"])
        .arg(&socket)
        .args(flags)
        .args(["--cmdline", "probe.run=idle"]);
    let mut guest = LiveGuest::spawn(&mut cmd);
    assert!(guest
        .wait_for("VIREO-PROBE IDLE", Duration::from_secs(60))
        .is_some());
    let control = connect_control(&socket, Duration::from_secs(10), Duration::from_secs(10));
    (guest, control)
}

/// The cgroup the engine reports, and powers it off; checks the cgroup went with it.
fn power_off(mut guest: LiveGuest, mut control: Control) {
    let cgroup = match control.ask(&Request::SetCpu {
        weight: None,
        limit: None,
        pin: None,
    }) {
        Ok(Response::Cpu { cgroup, .. }) => cgroup,
        other => panic!("set-cpu answered {other:?}"),
    };
    let _ = control.ask(&Request::PowerOff {});
    guest
        .wait_exit(Duration::from_secs(30))
        .expect("the engine ends");
    if let Some(dir) = cgroup
        .as_deref()
        .and_then(|c| c.split_once(' '))
        .map(|c| c.1)
    {
        let made = dir.contains("vireo-vmm-");
        assert!(
            !made || !std::path::Path::new(dir).exists(),
            "{dir} left behind"
        );
    }
}

#[test]
fn weights_70_and_30_split_one_core_and_a_50_percent_limit_holds() {
    const TEST: &str = "resources::weights_70_and_30_split_one_core_and_a_50_percent_limit_holds";
    if !report::require_kvm(TEST) || !cpu_cgroup_usable(TEST) {
        return;
    }
    let _serial = serial();
    let dir = TempDir::new("res-cpu");
    let pin = ["--cpu-pin", "0"];
    let (a, ca) = spinning_guest(&dir, "a", &[&["--cpu-weight", "70"], &pin[..]].concat());
    let (b, cb) = spinning_guest(&dir, "b", &[&["--cpu-weight", "30"], &pin[..]].concat());
    let (pa, pb) = (a.child.id(), b.child.id());
    // 20 s in four windows: the total is judged, each window is shown (this host is
    // shared, so the windows say how steady the split is).
    let mut windows = Vec::new();
    let (start_a, start_b) = (vcpu0_ns(pa), vcpu0_ns(pb));
    let (mut last_a, mut last_b) = (start_a, start_b);
    let start = Instant::now();
    for _ in 0..4 {
        std::thread::sleep(Duration::from_secs(5));
        let (na, nb) = (vcpu0_ns(pa), vcpu0_ns(pb));
        windows.push(100.0 * (na - last_a) as f64 / ((na - last_a) + (nb - last_b)) as f64);
        (last_a, last_b) = (na, nb);
    }
    let wall = start.elapsed().as_secs_f64();
    let (da, db) = (last_a - start_a, last_b - start_b);
    let share_a = 100.0 * da as f64 / (da + db) as f64;
    let core_busy = (da + db) as f64 / 1e9 / wall * 100.0;
    eprintln!(
        "cpu weights 70/30 on CPU 0 over {wall:.1} s: {share_a:.1} % / {:.1} % \
         (5 s windows: {}) ; the two had {core_busy:.0} % of the core",
        100.0 - share_a,
        windows
            .iter()
            .map(|w| format!("{w:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    power_off(b, cb);
    assert!(
        (65.0..=75.0).contains(&share_a),
        "weight 70 got {share_a:.1} %"
    );

    // A limit: 50 % of a core, then 20 % set while it runs.
    let busy = |pid: u32, secs: u64| {
        let (t0, c0) = (Instant::now(), vcpu0_ns(pid));
        std::thread::sleep(Duration::from_secs(secs));
        100.0 * (vcpu0_ns(pid) - c0) as f64 / 1e9 / t0.elapsed().as_secs_f64()
    };
    let mut ca = ca;
    let answer = ca
        .ask(&Request::SetCpu {
            weight: None,
            limit: Some(50),
            pin: Some(Vec::new()),
        })
        .unwrap();
    assert!(
        matches!(&answer, Response::Cpu { config, .. } if config.limit == Some(50)),
        "{answer:?}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let half = busy(pa, 5);
    ca.ask(&Request::SetCpu {
        weight: None,
        limit: Some(20),
        pin: None,
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let fifth = busy(pa, 4);
    eprintln!("cpu limit: {half:.1} % of a core at 50 %, {fifth:.1} % at 20 %");
    power_off(a, ca);
    assert!(
        (45.0..=55.0).contains(&half),
        "{half:.1} % under a 50 % limit"
    );
    assert!(
        (15.0..=25.0).contains(&fifth),
        "{fifth:.1} % under a 20 % limit"
    );
}

/// The engine's `stats` answer's VM part.
fn usage(control: &mut Control) -> VmUsage {
    match control.ask(&Request::Stats {}).unwrap() {
        Response::Stats { vm, .. } => vm,
        other => panic!("stats answered {other:?}"),
    }
}

/// A probe guest of `memory` running `cmdline` with `flags`, waited for until `ready`.
fn guest_with(
    dir: &TempDir,
    name: &str,
    memory: &str,
    flags: &[&str],
    cmdline: &str,
    ready: &str,
) -> (LiveGuest, Control) {
    let socket = dir.0.join(format!("{name}.sock"));
    let elf = probe_guest_elf();
    let mut cmd = Command::new(vmm_binary());
    cmd.args(["--kernel", s(&elf), "--memory", memory, "--control-socket"])
        .arg(&socket)
        .args(flags)
        .args(["--cmdline", cmdline]);
    let mut guest = LiveGuest::spawn(&mut cmd);
    assert!(
        guest.wait_for(ready, Duration::from_secs(60)).is_some(),
        "{name} never said {ready}: {:?}",
        guest.seen
    );
    let control = connect_control(&socket, Duration::from_secs(10), Duration::from_secs(10));
    (guest, control)
}

#[test]
fn a_2_gib_guest_that_touched_200_mib_costs_about_200_mib_and_stats_say_so() {
    const TEST: &str =
        "resources::a_2_gib_guest_that_touched_200_mib_costs_about_200_mib_and_stats_say_so";
    if !report::require_kvm(TEST) {
        return;
    }
    let _serial = serial();
    let dir = TempDir::new("res-rss");
    let (idle, mut ci) = guest_with(&dir, "idle", "2G", &[], "probe.run=idle", "IDLE");
    let base = usage(&mut ci);
    power_off(idle, ci);
    let (touch, mut ct) = guest_with(
        &dir,
        "touch",
        "2G",
        &[],
        "probe.run=touch probe.touch_mib=200",
        "TOUCHED mib=200",
    );
    let first = usage(&mut ct);
    std::thread::sleep(Duration::from_millis(500));
    let used = usage(&mut ct);
    // Cross-check the engine's own figure with /proc.
    let status = std::fs::read_to_string(format!("/proc/{}/status", touch.child.id())).unwrap();
    let proc_rss: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    power_off(touch, ct);
    let mib = |b: u64| b as f64 / MIB as f64;
    let cost = mib(used.memory.resident_bytes) - mib(base.memory.resident_bytes);
    eprintln!(
        "memory: 2 GiB guest idle {:.1} MiB resident, after touching 200 MiB {:.1} MiB \
         (/proc: {:.1}): {cost:.1} MiB for the 200; vCPU time {} ms, engine {} ms",
        mib(base.memory.resident_bytes),
        mib(used.memory.resident_bytes),
        proc_rss as f64 / 1024.0,
        used.vcpu_ns / 1_000_000,
        used.cpu_ns / 1_000_000,
    );
    assert!(mib(base.memory.resident_bytes) < 64.0, "{base:?}");
    assert!(
        (195.0..=225.0).contains(&cost),
        "{cost:.1} MiB for 200 MiB touched"
    );
    assert!(
        (used.memory.resident_bytes / 1024).abs_diff(proc_rss) < 8 * 1024,
        "{used:?} vs {proc_rss} kB"
    );
    // The guest spins: its vCPU time grows, and is part of the engine's.
    assert!(used.vcpu_ns > first.vcpu_ns, "{first:?} then {used:?}");
    assert!(
        used.cpu_ns >= used.vcpu_ns / 2 && used.cpu_ns > 0,
        "{used:?}"
    );
    assert_eq!(used.balloon_bytes, 0);
}

/// Host KSM switched on (and made quick) for a test; put back as it was when dropped.
struct KsmOn(Vec<(&'static str, String)>);

const KSM: &str = "/sys/kernel/mm/ksm";

impl KsmOn {
    fn start() -> Option<KsmOn> {
        let mut saved = Vec::new();
        for (file, value) in [
            ("pages_to_scan", "10000"),
            ("sleep_millisecs", "10"),
            ("run", "1"),
        ] {
            let path = format!("{KSM}/{file}");
            let old = std::fs::read_to_string(&path).ok()?;
            saved.push((file, old.trim().to_owned()));
            if std::fs::write(&path, value).is_err() {
                drop(KsmOn(saved));
                return None;
            }
        }
        Some(KsmOn(saved))
    }

    fn read(file: &str) -> u64 {
        std::fs::read_to_string(format!("{KSM}/{file}"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for KsmOn {
    fn drop(&mut self) {
        // `run` first, so the scanner stops before its speed goes back.
        for (file, value) in self.0.iter().rev() {
            let _ = std::fs::write(format!("{KSM}/{file}"), value);
        }
    }
}

#[test]
fn two_identical_guests_with_ksm_share_pages() {
    const TEST: &str = "resources::two_identical_guests_with_ksm_share_pages";
    if !report::require_kvm(TEST) {
        return;
    }
    let _serial = serial();
    let Some(ksm) = KsmOn::start() else {
        report::skipped(
            TEST,
            "host KSM (/sys/kernel/mm/ksm) is missing or not writable",
        );
        return;
    };
    let dir = TempDir::new("res-ksm");
    let sharing_before = KsmOn::read("pages_sharing");
    let cmdline = "probe.run=touch probe.touch_mib=64";
    let (a, mut ca) = guest_with(&dir, "a", "256M", &["--ksm"], cmdline, "TOUCHED mib=64");
    let (b, mut cb) = guest_with(&dir, "b", "256M", &["--ksm"], cmdline, "TOUCHED mib=64");
    let start = Instant::now();
    let (ua, ub) = loop {
        let (ua, ub) = (usage(&mut ca), usage(&mut cb));
        let merged = |u: &VmUsage| u.memory.ksm_merging_bytes >= 60 * MIB;
        if (merged(&ua) && merged(&ub)) || start.elapsed() > Duration::from_secs(60) {
            break (ua, ub);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let sharing = KsmOn::read("pages_sharing");
    let shared = KsmOn::read("pages_shared");
    power_off(a, ca);
    power_off(b, cb);
    drop(ksm);
    eprintln!(
        "ksm: after {:.1} s each engine has {:.1} / {:.1} MiB merged (profit {:.1} / {:.1} \
         MiB); host pages_sharing {sharing_before} -> {sharing}, pages_shared {shared}",
        start.elapsed().as_secs_f64(),
        ua.memory.ksm_merging_bytes as f64 / MIB as f64,
        ub.memory.ksm_merging_bytes as f64 / MIB as f64,
        ua.memory.ksm_profit_bytes as f64 / MIB as f64,
        ub.memory.ksm_profit_bytes as f64 / MIB as f64,
    );
    // Each guest's 64 MiB of distinct pages exist once for the two.
    for u in [ua, ub] {
        assert!(u.memory.ksm_merging_bytes >= 60 * MIB, "{u:?}");
    }
    assert!(
        sharing.saturating_sub(sharing_before) >= (60 * MIB / 4096),
        "pages_sharing {sharing_before} -> {sharing}"
    );
}

/// The probe's TCP send to a sink on 127.0.0.1 through passt with `--net net`: MiB/s
/// from the guest's own bytes and microseconds.
fn net_send_mib_s(net: &str, mib: u64) -> f64 {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let sink = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        while let Ok(n) = conn.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        total
    });
    let elf = probe_guest_elf();
    let cmdline = format!("probe.run=net-bench probe.net_port={port} probe.net_mib={mib}");
    let run = run_vmm(
        &[
            "--kernel",
            s(&elf),
            "--memory",
            "128M",
            "--net",
            net,
            "--cmdline",
            &cmdline,
        ],
        Duration::from_secs(120),
    );
    let line = run
        .probe("net_bench")
        .unwrap_or_else(|| panic!("no net_bench line:\n{}\n{}", run.stdout, run.stderr));
    assert_eq!(line.get("ok"), Some("1"), "{line:?}");
    assert_eq!(sink.join().unwrap(), mib * MIB);
    let (bytes, us) = (line.u64("bytes").unwrap(), line.u64("us").unwrap());
    bytes as f64 / MIB as f64 / (us as f64 / 1e6)
}

#[test]
fn a_network_card_limited_to_8_mib_s_sends_at_8() {
    const TEST: &str = "resources::a_network_card_limited_to_8_mib_s_sends_at_8";
    if !report::require_kvm(TEST) {
        return;
    }
    let _serial = serial();
    if std::process::Command::new("passt")
        .arg("--version")
        .output()
        .is_err()
    {
        report::skipped(
            TEST,
            "passt is not installed (installers/setup-host.sh installs it)",
        );
        return;
    }
    let free = net_send_mib_s("passt", 16);
    let limited = net_send_mib_s("passt,bw=8M", 16);
    eprintln!("net limit: TCP send unlimited {free:.1} MiB/s, bw=8M {limited:.1} MiB/s");
    assert!(
        free > 16.0,
        "unlimited sends too slow to show the limit: {free:.1}"
    );
    // The limit counts every frame both ways (headers and ACKs too), so the payload is
    // a little under 8; and on a loaded host the guest's own TCP stack may fall further
    // behind (7.16 seen once). Above the limit would be the limiter's fault.
    assert!(
        (6.4..=8.4).contains(&limited),
        "{limited:.2} MiB/s at bw=8M"
    );
}
