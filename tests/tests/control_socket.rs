//! The control socket of a running engine: JSON lines in, one response line per request
//! out, bad requests answered with an error (the connection stays usable), and
//! balloon requests answered, and `power-off` ending the VM; `stats` counting the
//! traffic of the probe guest's disk and network card.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

use vireo_e2e::engine::{s, vmm_binary, LiveGuest, ProbeLine};
use vireo_e2e::probe_guest::probe_guest_elf;
use vireo_e2e::report;
use vireo_vmm::control::client::Control;
use vireo_vmm::control::protocol::{Request, Response};
use vireo_vmm::devices::virtio::io_counters::IoCountersSnapshot;

#[test]
fn status_errors_and_power_off() {
    const TEST: &str = "control_socket::status_errors_and_power_off";
    if !report::require_kvm(TEST) {
        return;
    }
    let socket =
        std::env::temp_dir().join(format!("vireo-control-e2e-{}.sock", std::process::id()));
    let elf = probe_guest_elf();
    let mut guest = LiveGuest::spawn(Command::new(vmm_binary()).args([
        "--kernel",
        s(&elf),
        "--cpus",
        "2",
        "--memory",
        "96M",
        "--control-socket",
        s(&socket),
        "--cmdline",
        "probe.run=idle",
    ]));
    assert!(guest
        .wait_for("VIREO-PROBE IDLE", Duration::from_secs(60))
        .is_some());
    let stream = UnixStream::connect(&socket).expect("the control socket accepts connections");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let mut ask = |line: &str| {
        writer.write_all(format!("{line}\n").as_bytes()).unwrap();
        let mut answer = String::new();
        reader.read_line(&mut answer).unwrap();
        answer
    };
    assert_eq!(
        ask(r#"{"request":"status"}"#).trim(),
        r#"{"response":"status","state":"running","vcpus":2,"memory_mib":96}"#
    );
    let bad = ask(r#"{"request":"warp-drive"}"#);
    assert!(
        bad.contains(r#""response":"error""#) && bad.contains("warp-drive"),
        "{bad}"
    );
    assert!(ask("{").contains(r#""response":"error""#));
    // The probe guest has no balloon driver: the target is kept for when one binds,
    // nothing is given back, and there are no statistics to report.
    assert_eq!(
        ask(r#"{"request":"balloon-policy","policy":"give-back-idle"}"#).trim(),
        r#"{"response":"balloon","target_mib":0,"actual_mib":0,"policy":"give-back-idle"}"#
    );
    assert!(ask(r#"{"request":"balloon-policy","policy":"auto"}"#).contains("give-back-idle"));
    // Setting a target is taking over from the engine.
    assert_eq!(
        ask(r#"{"request":"balloon-set","target_mib":32}"#).trim(),
        r#"{"response":"balloon","target_mib":32,"actual_mib":0,"policy":"fixed"}"#
    );
    assert!(
        ask(r#"{"request":"balloon-set","target_mib":4096}"#).contains("more than the VM's 96 MiB")
    );
    assert!(ask(r#"{"request":"balloon-stats"}"#).contains("has not reported"));
    assert_eq!(
        ask(r#"{"request":"power-off"}"#).trim(),
        r#"{"response":"ok"}"#
    );
    let status = guest
        .wait_exit(Duration::from_secs(30))
        .expect("the engine ended");
    assert_eq!(status.code(), Some(0));
    let deadline = Instant::now() + Duration::from_secs(5);
    while socket.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!socket.exists(), "the engine removes its socket");
}

/// The `stats` answer's disk and net counters, asked until the engine is gone.
fn stats_until_gone(
    socket: &std::path::Path,
) -> Vec<(Vec<IoCountersSnapshot>, Vec<IoCountersSnapshot>)> {
    let end = Instant::now() + Duration::from_secs(120);
    let mut control = loop {
        match Control::connect(socket) {
            Ok(c) => break c,
            Err(_) if Instant::now() < end => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("the control socket never answered: {e}"),
        }
    };
    control.set_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut seen = Vec::new();
    while let Ok(answer) = control.ask(&Request::Stats {}) {
        match answer {
            Response::Stats { disks, nets, .. } => seen.push((disks, nets)),
            other => panic!("stats answered {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    seen
}

/// Counters only grow.
fn assert_monotonic(samples: &[IoCountersSnapshot]) {
    for pair in samples.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        assert!(
            b.read_bytes >= a.read_bytes
                && b.write_bytes >= a.write_bytes
                && b.read_requests >= a.read_requests
                && b.write_requests >= a.write_requests,
            "{a:?} then {b:?}"
        );
    }
}

#[test]
fn stats_count_what_the_guest_writes_to_its_disk() {
    const TEST: &str = "control_socket::stats_count_what_the_guest_writes_to_its_disk";
    if !report::require_kvm(TEST) {
        return;
    }
    let dir = vireo_e2e::temp::TempDir::new("stats-blk");
    let disk = dir.0.join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let socket = dir.0.join("control.sock");
    let elf = probe_guest_elf();
    // 4 KiB requests: many of them, so the write lasts long enough to be watched.
    let mut guest = LiveGuest::spawn(Command::new(vmm_binary()).args([
        "--kernel",
        s(&elf),
        "--memory",
        "128M",
        "--disk",
        &format!("path={},format=raw", s(&disk)),
        "--control-socket",
        s(&socket),
        "--cmdline",
        "probe.run=blk-write probe.blk_mib=64 probe.blk_req_kib=4",
    ]));
    let seen = stats_until_gone(&socket);
    guest
        .wait_exit(Duration::from_secs(60))
        .expect("the guest ends");
    let line = guest
        .seen
        .iter()
        .find_map(|l| ProbeLine::parse(l).filter(|p| p.tag == "blk_write"))
        .unwrap_or_else(|| panic!("no blk_write line in {:?}", guest.seen));
    assert_eq!(line.get("ok"), Some("1"), "{line:?}");
    let (bytes, requests) = (line.u64("bytes").unwrap(), line.u64("requests").unwrap());
    assert!(seen.iter().all(|(d, n)| d.len() == 1 && n.is_empty()));
    let disk: Vec<IoCountersSnapshot> = seen.iter().map(|(d, _)| d[0]).collect();
    assert_monotonic(&disk);
    let last = *disk.last().expect("stats answered at least once");
    // Watched while it ran: some of the write, never more than the guest did.
    assert!(last.write_bytes > 0 && last.write_requests > 0, "{last:?}");
    assert!(
        last.write_bytes <= bytes && last.write_bytes % 512 == 0,
        "{last:?} vs {bytes}"
    );
    assert!(last.write_requests <= requests, "{last:?} vs {requests}");
    eprintln!(
        "stats: {} answers, last {last:?}; the guest wrote {bytes} bytes in {requests} requests",
        disk.len()
    );
}

#[test]
fn stats_count_what_the_guest_sends_and_receives() {
    const TEST: &str = "control_socket::stats_count_what_the_guest_sends_and_receives";
    if !report::require_kvm(TEST) {
        return;
    }
    // A sink that reads 1 MiB, then stops reading until the test has looked: the
    // guest's TCP send blocks on the full window, so the VM is alive and its counters
    // hold at least that MiB (sent) and the ACKs and DHCP answers (received).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (looked_tx, looked_rx) = std::sync::mpsc::channel::<()>();
    let (held_tx, held_rx) = std::sync::mpsc::channel::<u64>();
    let sink = std::thread::spawn(move || {
        use std::io::Read;
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 64 << 10];
        let mut total = 0u64;
        let mut held = false;
        loop {
            if !held && total >= 1 << 20 {
                held = true;
                held_tx.send(total).unwrap();
                looked_rx.recv().unwrap();
            }
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n as u64,
            }
        }
    });
    let dir = vireo_e2e::temp::TempDir::new("stats-net");
    let socket = dir.0.join("control.sock");
    let elf = probe_guest_elf();
    let mut guest = LiveGuest::spawn(Command::new(vmm_binary()).args([
        "--kernel",
        s(&elf),
        "--memory",
        "256M",
        "--net=passt",
        "--control-socket",
        s(&socket),
        "--cmdline",
        &format!("probe.run=net-bench probe.net_port={port} probe.net_mib=4"),
    ]));
    let received = held_rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the guest sends its first MiB");
    let mut control = Control::connect(&socket).unwrap();
    control.set_timeout(Some(Duration::from_secs(10))).unwrap();
    let Response::Stats { disks, nets, .. } = control.ask(&Request::Stats {}).unwrap() else {
        panic!("stats answered something else");
    };
    looked_tx.send(()).unwrap();
    assert!(disks.is_empty());
    let [net] = nets[..] else {
        panic!("one network card expected: {nets:?}")
    };
    // TCP, IP and Ethernet headers come on top of the payload the sink read.
    assert!(
        net.write_bytes >= received,
        "{net:?} vs {received} received"
    );
    // Frames, not segments: with offloads one frame carries up to 64 KiB.
    assert!(net.write_requests >= received / 65536, "{net:?}");
    assert!(net.read_requests > 0 && net.read_bytes > 0, "{net:?}");
    guest
        .wait_exit(Duration::from_secs(120))
        .expect("the guest ends");
    assert_eq!(sink.join().unwrap(), 4 << 20);
    eprintln!("stats while the sink held at {received} bytes: {net:?}");
}
