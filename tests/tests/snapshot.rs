//! Save state and restore (issue 8) with the probe guest: `save` on the control socket
//! writes the machine to a file and ends the engine (exit status 5); `--restore FILE`
//! with the same devices carries on exactly there. The counter guest counts on serial
//! and reads back a disk pattern it wrote before the save; the self-test screen shows the
//! same pixels after the restore and its agent answers again over vsock. Broken,
//! truncated, foreign-version and mismatched snapshots are refused with a message, and
//! a save killed half-way leaves the previous snapshot whole.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use vireo_e2e::engine::{connect_control, s, vmm_binary, LiveGuest, ProbeLine};
use vireo_e2e::probe_guest::probe_guest_elf;
use vireo_e2e::report;
use vireo_e2e::temp::TempDir;
use vireo_vmm::control::client::Control;
use vireo_vmm::control::protocol::{Request, Response};
use vireo_vmm::exit::code;

const BOOT: Duration = Duration::from_secs(60);
const MEMORY: &str = "256M";

/// The counter guest's engine arguments: 2 vCPUs, a disk, a control socket.
fn counter_args(dir: &TempDir) -> Vec<String> {
    let disk = dir.0.join("disk.img");
    if !disk.exists() {
        std::fs::File::create(&disk)
            .and_then(|f| f.set_len(16 << 20))
            .unwrap();
    }
    [
        "--kernel",
        s(&probe_guest_elf()),
        "--cpus",
        "2",
        "--memory",
        MEMORY,
        "--disk",
        &format!("path={}", disk.display()),
        "--control-socket",
        s(&dir.0.join("control.sock")),
        "--cmdline",
        "probe.run=counter probe.blk_mib=2 probe.blk_seed=77",
    ]
    .map(String::from)
    .to_vec()
}

fn spawn(args: &[String], extra: &[&str]) -> LiveGuest {
    LiveGuest::spawn(Command::new(vmm_binary()).args(args).args(extra))
}

fn control(dir: &TempDir) -> Control {
    control_at(&dir.0.join("control.sock"))
}

fn control_at(path: &Path) -> Control {
    connect_control(path, Duration::from_secs(20), Duration::from_secs(120))
}

/// Asks for a save to `path` and checks the engine ends with the saved status.
fn save(guest: &mut LiveGuest, dir: &TempDir, path: &Path) {
    let answer = control(dir)
        .ask(&Request::Save {
            path: s(path).into(),
        })
        .unwrap();
    assert_eq!(answer, Response::Ok, "save failed");
    let status = guest
        .wait_exit(Duration::from_secs(30))
        .expect("the engine ends after a save");
    assert_eq!(status.code(), Some(code::SAVED), "{:#?}", tail(&guest.seen));
}

fn tail(lines: &[String]) -> &[String] {
    &lines[lines.len().saturating_sub(15)..]
}

/// Every `count N` of a run of guests, in order. A save can cut a line in two: the
/// first engine printed its start, the restored one its end; every guest line starts
/// with `VIREO-PROBE`, so a run's first line that does not is the end of the last one.
fn counts(runs: &[&[String]]) -> Vec<u64> {
    let mut lines: Vec<String> = Vec::new();
    for run in runs {
        for (i, line) in run.iter().enumerate() {
            match lines.last_mut() {
                Some(last) if i == 0 && !line.starts_with("VIREO-PROBE") => last.push_str(line),
                _ => lines.push(line.clone()),
            }
        }
    }
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("VIREO-PROBE count "))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

/// The guest read its disk pattern back at least once, and right every time.
fn assert_disk_read_back(lines: &[String]) {
    let verified: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("blk_verified"))
        .collect();
    assert!(!verified.is_empty(), "{:#?}", tail(lines));
    assert!(
        verified.iter().all(|l| l.ends_with("ok=1")),
        "{verified:#?}"
    );
}

/// The counts go on one by one. One exception, at a save or a move: the line being
/// printed is cut, and where the restored engine's first line is not its rest (seen once
/// in about twenty runs of the 50-cycle test under load; why is an open question in the
/// closing note), the cut line reads as a decimal prefix of the count it was, and the count
/// after it follows.
fn assert_consecutive(counts: &[u64]) {
    assert!(!counts.is_empty());
    let mut expected = counts[0] + 1;
    let mut i = 1;
    while i < counts.len() {
        let n = counts[i];
        let cut = n != expected
            && expected.to_string().starts_with(&n.to_string())
            && counts.get(i + 1) == Some(&(expected + 1));
        if cut {
            // The cut line and the count after it, which the check just made.
            expected += 2;
            i += 2;
            continue;
        }
        assert_eq!(n, expected, "the count jumped: {:?}", [counts[i - 1], n]);
        expected += 1;
        i += 1;
    }
}

/// Waits until the guest has counted to at least `n`.
fn wait_count(guest: &mut LiveGuest, n: u64) {
    let deadline = guest.started.elapsed() + BOOT;
    loop {
        let last = counts(&[&guest.seen]).last().copied().unwrap_or(0);
        if last >= n {
            return;
        }
        assert!(
            guest.wait_for("count ", deadline).is_some(),
            "no count {n}: {:#?}",
            tail(&guest.seen)
        );
    }
}

#[test]
fn a_saved_vm_carries_on_counting_and_its_disk_reads_back() {
    if !report::require_kvm("snapshot::a_saved_vm_carries_on_counting_and_its_disk_reads_back") {
        return;
    }
    let dir = TempDir::new("snap-counter");
    let args = counter_args(&dir);
    let snap = dir.0.join("vm.snap");
    let mut first = spawn(&args, &[]);
    assert!(
        first
            .wait_for("counter_ready blk_written=1", BOOT)
            .is_some(),
        "{:#?}",
        first.seen
    );
    wait_count(&mut first, 30);
    // Paused, the guest counts nothing (its disk checks included); resumed, it counts on
    // from where it stopped.
    assert_eq!(control(&dir).ask(&Request::Pause {}).unwrap(), Response::Ok);
    // What the guest printed before the pause, read in full; then half a second more.
    let quiet = |guest: &mut LiveGuest, ms| {
        let until = guest.started.elapsed() + Duration::from_millis(ms);
        let _ = guest.wait_for("never printed", until);
    };
    quiet(&mut first, 200);
    let at_pause = counts(&[&first.seen]).len();
    quiet(&mut first, 500);
    assert_eq!(
        counts(&[&first.seen]).len(),
        at_pause,
        "the guest counted while paused"
    );
    assert_eq!(
        control(&dir).ask(&Request::Resume {}).unwrap(),
        Response::Ok
    );
    let resumed_from = *counts(&[&first.seen]).last().unwrap();
    wait_count(&mut first, resumed_from + 10);
    save(&mut first, &dir, &snap);
    let before = counts(&[&first.seen]);

    // Only touched pages are in the file: far less than the 256 MiB of RAM.
    let meta = std::fs::metadata(&snap).unwrap();
    let stored = meta.blocks() * 512;
    eprintln!("snapshot: {} bytes long, {stored} bytes stored", meta.len());
    assert!(meta.len() > 256 << 20);
    assert!(
        stored < 64 << 20,
        "{stored} bytes stored for a 256 MiB guest"
    );

    let started = Instant::now();
    let mut second = spawn(&args, &["--restore", s(&snap)]);
    let last = *before.last().unwrap();
    wait_count(&mut second, last + 60);
    eprintln!("restore → count {}: {:?}", last + 60, started.elapsed());
    let all = counts(&[&first.seen, &second.seen]);
    assert_consecutive(&all);
    // The restored guest never started again: no second disk write, no count 1.
    assert!(!second.seen.iter().any(|l| l.contains("counter_ready")));
    // The disk pattern written before the save reads back through the same queue.
    assert_disk_read_back(&second.seen);
    assert_eq!(
        control(&dir).ask(&Request::PowerOff {}).unwrap(),
        Response::Ok
    );
    second.wait_exit(Duration::from_secs(10)).unwrap();
}

/// One engine run with `args`, expected to refuse at once; returns its stderr.
fn refused(args: &[String], extra: &[&str]) -> String {
    let out = Command::new(vmm_binary())
        .args(args)
        .args(extra)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code::ERROR), "{stderr}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("count "),
        "a refused snapshot ran"
    );
    stderr
}

fn copy_with(snap: &Path, name: &str, change: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut bytes = std::fs::read(snap).unwrap();
    change(&mut bytes);
    let path = snap.with_file_name(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn broken_foreign_and_mismatched_snapshots_are_refused_with_a_reason() {
    if !report::require_kvm(
        "snapshot::broken_foreign_and_mismatched_snapshots_are_refused_with_a_reason",
    ) {
        return;
    }
    let dir = TempDir::new("snap-refuse");
    let args = counter_args(&dir);
    let snap = dir.0.join("vm.snap");
    let mut first = spawn(&args, &[]);
    wait_count(&mut first, 5);
    save(&mut first, &dir, &snap);

    let truncated = copy_with(&snap, "truncated.snap", |b| b.truncate(b.len() / 2));
    assert!(refused(&args, &["--restore", s(&truncated)]).contains("truncated"));
    let short = copy_with(&snap, "short.snap", |b| b.truncate(20));
    assert!(refused(&args, &["--restore", s(&short)]).contains("truncated"));
    // A flipped byte in the machine state (just past the 4 KiB header page).
    let damaged = copy_with(&snap, "damaged.snap", |b| b[4096 + 40] ^= 0x20);
    assert!(refused(&args, &["--restore", s(&damaged)]).contains("checksum"));
    // Another format version, with a header checksum to match: refused by version.
    let foreign = copy_with(&snap, "foreign.snap", |b| {
        b[8..12].copy_from_slice(&99u32.to_le_bytes());
        let crc = crc32(&b[..48]);
        b[48..52].copy_from_slice(&crc.to_le_bytes());
    });
    assert!(refused(&args, &["--restore", s(&foreign)]).contains("format 99"));
    let not_one = dir.0.join("not.snap");
    std::fs::write(&not_one, vec![7u8; 8192]).unwrap();
    assert!(refused(&args, &["--restore", s(&not_one)]).contains("not a Vireo snapshot"));

    // The VM's hardware changed: refused, naming what.
    let mut one_cpu = args.clone();
    let at = one_cpu.iter().position(|a| a == "--cpus").unwrap();
    one_cpu[at + 1] = "1".into();
    assert!(refused(&one_cpu, &["--restore", s(&snap)]).contains("vCPUs"));
    // The disk changed since the save.
    let disk = dir.0.join("disk.img");
    let mtime = std::fs::metadata(&disk).unwrap().modified().unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .unwrap()
        .set_modified(mtime + Duration::from_secs(5))
        .unwrap();
    assert!(refused(&args, &["--restore", s(&snap)]).contains("disk"));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .unwrap()
        .set_modified(mtime)
        .unwrap();

    // After all that, the real one still restores.
    let mut again = spawn(&args, &["--restore", s(&snap)]);
    let last = counts(&[&first.seen]).last().copied().unwrap();
    wait_count(&mut again, last + 5);
    assert_eq!(
        control(&dir).ask(&Request::PowerOff {}).unwrap(),
        Response::Ok
    );
    again.wait_exit(Duration::from_secs(10)).unwrap();
}

/// CRC-32 (IEEE), as the snapshot header uses.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn a_save_killed_half_way_leaves_the_previous_snapshot_whole() {
    if !report::require_kvm("snapshot::a_save_killed_half_way_leaves_the_previous_snapshot_whole") {
        return;
    }
    let dir = TempDir::new("snap-kill");
    let args = counter_args(&dir);
    let snap = dir.0.join("vm.snap");
    let mut first = spawn(&args, &[]);
    wait_count(&mut first, 5);
    save(&mut first, &dir, &snap);
    let saved = std::fs::read(&snap).unwrap();

    let mut second = spawn(&args, &["--restore", s(&snap)]);
    wait_count(&mut second, counts(&[&first.seen]).last().unwrap() + 5);
    // Ask for a save over the same file and kill the engine while it writes.
    let path = snap.clone();
    let control_path = dir.0.join("control.sock");
    let asker = std::thread::spawn(move || {
        let mut control = Control::connect(&control_path).unwrap();
        control.set_timeout(Some(Duration::from_secs(30))).unwrap();
        let _ = control.ask(&Request::Save {
            path: s(&path).into(),
        });
    });
    std::thread::sleep(Duration::from_millis(15));
    let _ = second.child.kill();
    let _ = second.child.wait();
    asker.join().unwrap();
    let now = std::fs::read(&snap).unwrap();
    // Either the save finished before the kill (a whole new snapshot) or the old one is
    // untouched; never a mix.
    if now != saved {
        eprintln!("the save finished before the kill");
    }
    let mut third = spawn(&args, &["--restore", s(&snap)]);
    wait_count(&mut third, counts(&[&first.seen]).last().unwrap() + 5);
    // The next save that completes clears what the killed one left behind.
    save(&mut third, &dir, &snap);
    let leftovers: Vec<String> = std::fs::read_dir(&dir.0)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn screenshot(dir: &TempDir, name: &str) -> (u32, u32, Vec<u8>) {
    let path = dir.0.join(name);
    let answer = control(dir)
        .ask(&Request::Screenshot {
            path: s(&path).into(),
        })
        .unwrap();
    assert!(
        matches!(answer, Response::Screenshot { .. }),
        "screenshot: {answer:?}"
    );
    let decoder = png::Decoder::new(std::fs::File::open(&path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut rgba = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut rgba).unwrap();
    rgba.truncate(info.buffer_size());
    (info.width, info.height, rgba)
}

#[test]
fn the_screen_comes_back_exactly_and_the_agent_answers_again() {
    if !report::require_kvm("snapshot::the_screen_comes_back_exactly_and_the_agent_answers_again") {
        return;
    }
    use vireo_guest_agent::host::{AgentClient, ClientConfig, Endpoint};
    use vireo_guest_agent::protocol::AGENT_VSOCK_PORT;

    let dir = TempDir::new("snap-screen");
    let args: Vec<String> = [
        "--kernel",
        s(&probe_guest_elf()),
        "--cpus",
        "2",
        "--memory",
        MEMORY,
        "--display",
        "640x480",
        "--vsock",
        &format!("cid=3,socket={}", dir.0.join("v.sock").display()),
        "--control-socket",
        s(&dir.0.join("control.sock")),
        "--cmdline",
        "probe.run=selftest-screen",
    ]
    .map(String::from)
    .to_vec();
    let snap = dir.0.join("vm.snap");
    let mut first = spawn(&args, &[]);
    assert!(
        first.wait_for("screen_ready", BOOT).is_some(),
        "{:#?}",
        first.seen
    );
    let config = ClientConfig {
        call_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(20),
        ..ClientConfig::default()
    };
    let endpoint = Endpoint::HybridVsock {
        path: dir.0.join("v.sock"),
        port: AGENT_VSOCK_PORT,
    };
    let client = AgentClient::connect(endpoint, config).expect("the probe agent answers");
    client.ping().expect("the guest answers before the save");

    assert_eq!(control(&dir).ask(&Request::Pause {}).unwrap(), Response::Ok);
    let before = screenshot(&dir, "before.png");
    save(&mut first, &dir, &snap);
    // The guest's clock stands still from the save to the restore: this gap is what
    // the agent must put right after it.
    let gap = Duration::from_secs(2);
    std::thread::sleep(gap);

    let started = Instant::now();
    let mut second = spawn(&args, &["--restore", s(&snap), "--paused"]);
    let after = screenshot(&dir, "after.png");
    eprintln!("restore → first screenshot: {:?}", started.elapsed());
    assert_eq!((after.0, after.1), (before.0, before.1));
    let differing = before
        .2
        .chunks(4)
        .zip(after.2.chunks(4))
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(differing, 0, "{differing} pixels differ after the restore");

    assert_eq!(
        control(&dir).ask(&Request::Resume {}).unwrap(),
        Response::Ok
    );
    // The vsock transport was reset: the client reconnects by itself, and the guest's
    // agent serves the new connection.
    let resumed = Instant::now();
    let answered = loop {
        match client.ping() {
            Ok(_) => break true,
            Err(_) if resumed.elapsed() < Duration::from_secs(30) => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(_) => break false,
        }
    };
    eprintln!("resume → agent answers: {:?}", resumed.elapsed());
    assert!(answered, "the restored guest's agent does not answer");
    assert_clock_put_right(&mut second, &client, gap);
    assert_eq!(
        control(&dir).ask(&Request::PowerOff {}).unwrap(),
        Response::Ok
    );
    second.wait_exit(Duration::from_secs(10)).unwrap();
}

/// After a restore the agent, reconnected, steps the guest's clock at once (by the time
/// it stood still, at least `gap`, where the TSC was restored), and the clock is then
/// the host's.
fn assert_clock_put_right(
    guest: &mut LiveGuest,
    client: &vireo_guest_agent::host::AgentClient,
    gap: Duration,
) {
    assert!(
        guest
            .wait_for("agent_time correction=Stepped", Duration::from_secs(20))
            .is_some(),
        "the restored guest's agent did not step its clock: {:#?}",
        tail(&guest.seen)
    );
    // As `wait_for` found it: somewhere in a line. The guest may have been paused (and
    // saved) half-way through printing a line, so the restored engine's first line can
    // lack the start the first engine printed: read it from the tag on.
    let line = guest
        .seen
        .iter()
        .rev()
        .find(|l| l.contains("agent_time correction=Stepped"))
        .expect("the step's line");
    let stepped = line
        .find("agent_time ")
        .and_then(|at| ProbeLine::parse(&format!("VIREO-PROBE {}", &line[at..])))
        .unwrap_or_else(|| panic!("cannot read the step's line {line:?}"));
    let offset: i64 = stepped.get("offset_ns").unwrap().parse().unwrap();
    eprintln!(
        "restore: the agent stepped the clock by {} ms",
        offset / 1_000_000
    );
    // The probe's clock counts the TSC. KVM restores the guest's TSC, so it stood still
    // from the save on; but PVM lets a guest's user-mode RDTSC read the host's own
    // TSC, so there the probe's clock ran on and the step is only what it was off by.
    if vireo_e2e::engine::host_runs_linux() {
        assert!(
            offset >= gap.as_nanos() as i64,
            "stepped by {offset} ns, less than the {gap:?} the clock stood still"
        );
    }
    let report = client.time_sync_now().expect("the agent syncs on request");
    let host_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    assert!(
        (host_now - report.guest_unix_ns).abs() < 1_000_000_000,
        "the guest's clock is {} ms off after the correction ({report:?})",
        (host_now - report.guest_unix_ns) / 1_000_000
    );
}

/// The engine's open fds and resident memory.
fn footprint(pid: u32) -> (usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    (fds, rss_kib)
}

#[test]
fn fifty_save_restore_cycles_leak_nothing() {
    if !report::require_kvm("snapshot::fifty_save_restore_cycles_leak_nothing") {
        return;
    }
    let dir = TempDir::new("snap-fifty");
    let args = counter_args(&dir);
    let snap = dir.0.join("vm.snap");
    let mut guest = spawn(&args, &[]);
    wait_count(&mut guest, 3);
    save(&mut guest, &dir, &snap);
    let mut runs = vec![guest.seen.clone()];
    let mut prints = Vec::new();
    let started = Instant::now();
    for _ in 0..50 {
        let mut guest = spawn(&args, &["--restore", s(&snap)]);
        let all: Vec<&[String]> = runs.iter().map(Vec::as_slice).collect();
        let last = *counts(&all).last().unwrap();
        wait_count(&mut guest, last + 2);
        prints.push((
            footprint(guest.child.id()),
            std::fs::metadata(&snap).unwrap().blocks(),
        ));
        save(&mut guest, &dir, &snap);
        runs.push(guest.seen.clone());
    }
    eprintln!("50 cycles in {:?}", started.elapsed());
    let all: Vec<&[String]> = runs.iter().map(Vec::as_slice).collect();
    assert_consecutive(&counts(&all));
    eprintln!("(fds, RSS KiB), snapshot blocks per cycle: {prints:?}");
    // A thread or a connection may hold an fd for an instant when the figure is taken:
    // what must not happen is a climb of the steady count, so the fewest of the last ten
    // cycles is no more than the fewest of the first ten.
    let fewest_fds = |cycles: &[((usize, u64), u64)]| cycles.iter().map(|c| c.0 .0).min().unwrap();
    assert!(
        fewest_fds(&prints[40..]) <= fewest_fds(&prints[..10]),
        "the engine's fds climbed over the cycles"
    );
    // Memory and the snapshot's stored size wander a little with what the guest was
    // doing at the save; they must not climb.
    let most = |cycles: &[((usize, u64), u64)], of: fn(&((usize, u64), u64)) -> u64| {
        cycles.iter().map(of).max().unwrap()
    };
    let rss = |c: &((usize, u64), u64)| c.0 .1;
    let blocks = |c: &((usize, u64), u64)| c.1;
    assert!(
        most(&prints[40..], rss) <= most(&prints[..10], rss) + 2048,
        "the engine's memory climbed over the cycles"
    );
    assert!(
        most(&prints[40..], blocks) <= most(&prints[..10], blocks) * 5 / 4,
        "the snapshot grew over the cycles"
    );
    let files = std::fs::read_dir(&dir.0).unwrap().count();
    // disk.img, vm.snap (the sockets are gone with their engines).
    assert_eq!(
        files,
        2,
        "{:?}",
        std::fs::read_dir(&dir.0).unwrap().collect::<Vec<_>>()
    );
}

/// The counter guest's arguments for a destination engine: the same VM, its own
/// control socket, waiting for a migration at `incoming`.
fn destination_args(dir: &TempDir, incoming: &str) -> Vec<String> {
    let mut args = counter_args(dir);
    let at = args.iter().position(|a| a == "--control-socket").unwrap();
    args[at + 1] = s(&dir.0.join("dest.sock")).into();
    args.extend(["--incoming".to_string(), incoming.to_string()]);
    args
}

fn migrate(dir: &TempDir, to: &str) -> Response {
    control(dir)
        .ask(&Request::Migrate { to: to.into() })
        .unwrap()
}

#[test]
fn a_running_vm_moves_to_another_engine_and_counts_on() {
    if !report::require_kvm("snapshot::a_running_vm_moves_to_another_engine_and_counts_on") {
        return;
    }
    let dir = TempDir::new("snap-migrate");
    // Loopback TCP: the kind of link a move between hosts would use.
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let to = format!("tcp:127.0.0.1:{port}");
    let mut source = spawn(&counter_args(&dir), &[]);
    assert!(
        source
            .wait_for("counter_ready blk_written=1", BOOT)
            .is_some(),
        "{:#?}",
        source.seen
    );
    let mut destination = spawn(&destination_args(&dir, &to), &[]);
    wait_count(&mut source, 20);
    let asked = Instant::now();
    assert_eq!(migrate(&dir, &to), Response::Ok);
    eprintln!("migration of a 256 MiB guest took {:?}", asked.elapsed());
    let status = source
        .wait_exit(Duration::from_secs(20))
        .expect("the source ends");
    assert_eq!(status.code(), Some(code::MIGRATED));
    let last = *counts(&[&source.seen]).last().unwrap();
    wait_count(&mut destination, last + 60);
    eprintln!("destination counted on: {:?}", asked.elapsed());
    assert_consecutive(&counts(&[&source.seen, &destination.seen]));
    assert!(!destination.seen.iter().any(|l| l.contains("counter_ready")));
    // The disk moved with it: the pattern written on the source reads back here.
    assert_disk_read_back(&destination.seen);
    let dest = control_at(&dir.0.join("dest.sock")).ask(&Request::PowerOff {});
    assert_eq!(dest.unwrap(), Response::Ok);
    destination.wait_exit(Duration::from_secs(10)).unwrap();
}

/// A paused VM moves paused: the user paused it and moving it (an engine upgrade is a
/// move) must not run it behind their back.
#[test]
fn a_paused_vm_moves_paused_and_counts_on_when_resumed() {
    if !report::require_kvm("snapshot::a_paused_vm_moves_paused_and_counts_on_when_resumed") {
        return;
    }
    let dir = TempDir::new("snap-migrate-paused");
    let to = format!("unix:{}", dir.0.join("mig.sock").display());
    let mut source = spawn(&counter_args(&dir), &[]);
    wait_count(&mut source, 10);
    let mut destination = spawn(&destination_args(&dir, &to), &[]);
    // The destination listens once its socket is there (a loaded host may take a while).
    let listening = dir.0.join("mig.sock");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !listening.exists() {
        assert!(Instant::now() < deadline, "the destination never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(control(&dir).ask(&Request::Pause {}).unwrap(), Response::Ok);
    assert_eq!(migrate(&dir, &to), Response::Ok);
    let status = source
        .wait_exit(Duration::from_secs(20))
        .expect("the source ends");
    assert_eq!(status.code(), Some(code::MIGRATED));
    let last = *counts(&[&source.seen]).last().unwrap();

    let mut dest = control_at(&dir.0.join("dest.sock"));
    match dest.ask(&Request::Status {}).unwrap() {
        Response::Status { state, .. } => assert_eq!(state, "paused"),
        other => panic!("{other:?}"),
    }
    let until = destination.started.elapsed() + Duration::from_millis(500);
    let _ = destination.wait_for("never printed", until);
    assert!(
        counts(&[&destination.seen]).is_empty(),
        "the moved guest ran while paused: {:?}",
        destination.seen
    );
    assert_eq!(dest.ask(&Request::Resume {}).unwrap(), Response::Ok);
    wait_count(&mut destination, last + 20);
    assert_consecutive(&counts(&[&source.seen, &destination.seen]));
    assert_eq!(dest.ask(&Request::PowerOff {}).unwrap(), Response::Ok);
    destination.wait_exit(Duration::from_secs(10)).unwrap();
}

/// An engine upgrade: the VM runs on an engine binary that a package upgrade has since
/// replaced, and moves to the new binary started with the very same flags (the same
/// control and vsock socket paths, the same disk). The destination takes the paths
/// over; the old engine leaves them to it when it exits.
#[test]
fn a_vm_moves_to_a_new_engine_build_with_the_same_flags_and_paths() {
    if !report::require_kvm(
        "snapshot::a_vm_moves_to_a_new_engine_build_with_the_same_flags_and_paths",
    ) {
        return;
    }
    let dir = TempDir::new("snap-upgrade");
    let old_binary = dir.0.join("old-vireo-vmm");
    std::fs::copy(vmm_binary(), &old_binary).unwrap();
    let vsock = dir.0.join("v.sock");
    let mut args = counter_args(&dir);
    args.extend([
        "--vsock".into(),
        format!("cid=3,socket={}", vsock.display()),
    ]);
    let mut source = LiveGuest::spawn(Command::new(&old_binary).args(&args));
    assert!(
        source
            .wait_for("counter_ready blk_written=1", BOOT)
            .is_some(),
        "{:#?}",
        source.seen
    );
    // The upgrade replaces the binary the old engine runs.
    std::fs::remove_file(&old_binary).unwrap();
    let to = format!("unix:{}", dir.0.join("upgrade.sock").display());
    let mut destination = spawn(&args, &["--incoming", &to]);
    wait_count(&mut source, 20);
    // Until the move the paths are the old engine's: `status` is answered there.
    let old_pid = source.child.id();
    assert_eq!(migrate(&dir, &to), Response::Ok);
    let status = source
        .wait_exit(Duration::from_secs(20))
        .expect("the old engine ends");
    assert_eq!(status.code(), Some(code::MIGRATED));
    let last = *counts(&[&source.seen]).last().unwrap();
    wait_count(&mut destination, last + 30);
    assert_consecutive(&counts(&[&source.seen, &destination.seen]));
    assert_disk_read_back(&destination.seen);

    // The same control path now reaches the new engine, and the vsock path is served.
    let mut control = control(&dir);
    assert!(matches!(
        control.ask(&Request::Status {}).unwrap(),
        Response::Status { .. }
    ));
    assert!(
        std::os::unix::net::UnixStream::connect(&vsock).is_ok(),
        "nobody listens on the vsock path after the move"
    );
    assert!(!dir.0.join("control.sock.incoming").exists());
    assert!(!dir.0.join("v.sock.incoming").exists());
    let new_exe = std::fs::read_link(format!("/proc/{}/exe", destination.child.id())).unwrap();
    assert_eq!(new_exe, std::fs::canonicalize(vmm_binary()).unwrap());
    assert_ne!(destination.child.id(), old_pid);
    assert_eq!(control.ask(&Request::PowerOff {}).unwrap(), Response::Ok);
    destination.wait_exit(Duration::from_secs(10)).unwrap();
    // Its sockets went with it.
    assert!(!vsock.exists() && !dir.0.join("control.sock").exists());
}

#[test]
fn a_migration_that_fails_leaves_the_vm_running_where_it_was() {
    if !report::require_kvm("snapshot::a_migration_that_fails_leaves_the_vm_running_where_it_was") {
        return;
    }
    let dir = TempDir::new("snap-migrate-fail");
    let mut source = spawn(&counter_args(&dir), &[]);
    wait_count(&mut source, 5);
    // Nobody listens there.
    let nowhere = format!("unix:{}", dir.0.join("nobody.sock").display());
    match migrate(&dir, &nowhere) {
        Response::Error { message } => assert!(message.contains("cannot reach"), "{message}"),
        other => panic!("{other:?}"),
    }
    // A destination built with other hardware refuses the VM after the whole copy.
    let to = format!("unix:{}", dir.0.join("mig.sock").display());
    let mut other = destination_args(&dir, &to);
    let at = other.iter().position(|a| a == "--cpus").unwrap();
    other[at + 1] = "1".into();
    let mut destination = spawn(&other, &[]);
    std::thread::sleep(Duration::from_millis(300));
    match migrate(&dir, &to) {
        Response::Error { message } => assert!(message.contains("vCPUs"), "{message}"),
        other => panic!("{other:?}"),
    }
    let status = destination
        .wait_exit(Duration::from_secs(10))
        .expect("the refusing destination ends");
    assert_eq!(status.code(), Some(code::ERROR));
    // The source runs on, counting without a gap, its disk lock taken back.
    let last = *counts(&[&source.seen]).last().unwrap();
    wait_count(&mut source, last + 30);
    assert_consecutive(&counts(&[&source.seen]));
    assert_disk_read_back(&source.seen);
    assert_eq!(
        control(&dir).ask(&Request::PowerOff {}).unwrap(),
        Response::Ok
    );
    source.wait_exit(Duration::from_secs(10)).unwrap();
}

/// `vireo.run` for the demo Linux: a shell counting `tick N` every 50 ms, for ever.
const LINUX_TICKS: &str =
    "vireo.run=i%3D0%3B+while+true%3B+do+i%3D%24((i%2B1))%3B+echo+tick+%24i%3B+sleep+0.05%3B+done";

/// The demo Linux counting ticks, with a control socket in `dir`.
fn linux_ticks_args(dir: &TempDir) -> Vec<String> {
    let mut args = vireo_e2e::demo_linux::boot_args(2, "512M", LINUX_TICKS);
    args.extend([
        "--control-socket".into(),
        s(&dir.0.join("control.sock")).into(),
    ]);
    args
}

/// The Linux guest `after` took over from `before` (a restore or a migration): it counts
/// on 40 ticks past where `before` stopped, with no gap, and the kernel did not boot again.
fn assert_linux_counts_on(before: &LiveGuest, after: &mut LiveGuest) {
    let last = *ticks(&[&before.seen]).last().unwrap();
    assert!(
        after
            .wait_for(&format!("tick {}", last + 40), Duration::from_secs(60))
            .is_some(),
        "{:#?}",
        tail(&after.seen)
    );
    assert_ticks_consecutive(&[&before.seen, &after.seen]);
    assert!(!after.seen.iter().any(|l| l.contains("Linux version")));
}

/// Asserts the ticks of `runs` go up by one each, with no gap and no repeat.
fn assert_ticks_consecutive(runs: &[&[String]]) {
    let all = ticks(runs);
    for pair in all.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "the guest's count jumped: {pair:?}");
    }
}

fn ticks(runs: &[&[String]]) -> Vec<u64> {
    runs.iter()
        .flat_map(|run| run.iter())
        .filter_map(|l| l.trim().strip_prefix("tick "))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

#[test]
fn a_linux_guest_counts_on_across_save_and_restore() {
    const TEST: &str = "snapshot::a_linux_guest_counts_on_across_save_and_restore";
    if !report::require_hardware_kvm(TEST) {
        return;
    }
    let dir = TempDir::new("snap-linux");
    let args = linux_ticks_args(&dir);
    let snap = dir.0.join("vm.snap");
    let mut first = spawn(&args, &[]);
    assert!(
        first
            .wait_for("tick 20", Duration::from_secs(120))
            .is_some(),
        "{:#?}",
        tail(&first.seen)
    );
    save(&mut first, &dir, &snap);
    let mut second = spawn(&args, &["--restore", s(&snap)]);
    assert_linux_counts_on(&first, &mut second);
    assert_eq!(
        control(&dir).ask(&Request::PowerOff {}).unwrap(),
        Response::Ok
    );
    second.wait_exit(Duration::from_secs(10)).unwrap();
}

#[test]
fn a_linux_guest_moves_to_another_engine_and_counts_on() {
    const TEST: &str = "snapshot::a_linux_guest_moves_to_another_engine_and_counts_on";
    if !report::require_hardware_kvm(TEST) {
        return;
    }
    let dir = TempDir::new("snap-linux-migrate");
    let args = linux_ticks_args(&dir);
    let mut source = spawn(&args, &[]);
    assert!(
        source
            .wait_for("tick 20", Duration::from_secs(120))
            .is_some(),
        "{:#?}",
        tail(&source.seen)
    );
    // The destination: the same VM with its own control socket, waiting for it.
    let to = format!("unix:{}", dir.0.join("mig.sock").display());
    let mut dest_args = args.clone();
    let at = dest_args
        .iter()
        .position(|a| a == "--control-socket")
        .unwrap();
    dest_args[at + 1] = s(&dir.0.join("dest.sock")).into();
    let mut destination = spawn(&dest_args, &["--incoming", &to]);
    std::thread::sleep(Duration::from_millis(300));
    let asked = Instant::now();
    assert_eq!(migrate(&dir, &to), Response::Ok);
    eprintln!(
        "migration of a 512 MiB Linux guest took {:?}",
        asked.elapsed()
    );
    let status = source
        .wait_exit(Duration::from_secs(20))
        .expect("the source ends");
    assert_eq!(status.code(), Some(code::MIGRATED));
    assert_linux_counts_on(&source, &mut destination);
    let dest = control_at(&dir.0.join("dest.sock")).ask(&Request::PowerOff {});
    assert_eq!(dest.unwrap(), Response::Ok);
    destination.wait_exit(Duration::from_secs(10)).unwrap();
}
