//! virtio-net under `vireo-vmm` with the passt backend, driven by the probe guest's
//! third-party `virtio-drivers` net driver and `smoltcp`: a DHCP lease from passt; an
//! HTTP GET of 4 MiB from a server this test runs on 127.0.0.1 (reached through the
//! gateway address, which passt maps to the host's loopback), checked by SHA-256; TCP to
//! a sink on the host; passt ends with the VM (power-off or `kill -9`); a host without
//! passt, bad `--net` specs and TAP without CAP_NET_ADMIN get one clear line each.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

use vireo_e2e::engine::{run_command, run_vmm, s, vmm_binary, LiveGuest, ProbeLine, Run};
use vireo_e2e::probe_guest::probe_guest_elf;
use vireo_e2e::report;
use vireo_vmm::exit::code;

const DEADLINE: Duration = Duration::from_secs(120);
/// The file the guest downloads.
const HTTP_BYTES: usize = 4 << 20;

fn boot_args(net: Option<&str>, cmdline: &str) -> Vec<String> {
    let elf = probe_guest_elf();
    let mut args = vec![
        "--kernel".to_owned(),
        s(&elf).to_owned(),
        "--memory".into(),
        "256M".into(),
    ];
    if let Some(net) = net {
        args.push(format!("--net={net}"));
    }
    args.push("--cmdline".into());
    args.push(cmdline.to_owned());
    args
}

fn boot(net: Option<&str>, cmdline: &str) -> Run {
    let args = boot_args(net, cmdline);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_vmm(&args, DEADLINE)
}

fn probe_line(run: &Run, tag: &str) -> ProbeLine {
    assert_eq!(
        run.code(),
        Some(code::POWER_OFF),
        "{}\n{}",
        run.stdout,
        run.stderr
    );
    run.probe(tag)
        .unwrap_or_else(|| panic!("no {tag} line in:\n{}", run.stdout))
}

/// The 4 MiB body: the CPU benchmark's pattern, so that its digest is known.
fn http_body() -> Vec<u8> {
    let mut body = vec![0u8; HTTP_BYTES];
    vireo_cpu_bench::fill_pattern(&mut body, 0);
    body
}

/// A one-file HTTP/1.0 server on 127.0.0.1 for `connections` requests; returns its port
/// and the paths it was asked for.
fn serve_http(body: Vec<u8>, connections: usize) -> (u16, std::thread::JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let mut paths = Vec::new();
        for _ in 0..connections {
            let Ok((mut conn, _)) = listener.accept() else {
                break;
            };
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let text = String::from_utf8_lossy(&request).into_owned();
            let path = text.split_whitespace().nth(1).unwrap_or("").to_owned();
            let (status, content): (&str, &[u8]) = if path == "/file.bin" {
                ("200 OK", &body)
            } else {
                ("404 Not Found", b"no such file\n")
            };
            let head = format!(
                "HTTP/1.0 {status}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n\r\n",
                content.len()
            );
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(content);
            paths.push(path);
        }
        paths
    });
    (port, server)
}

/// A TCP sink on 127.0.0.1 for one connection; returns its port and the byte count.
fn serve_sink() -> (u16, std::thread::JoinHandle<u64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let sink = std::thread::spawn(move || {
        let (mut conn, _): (TcpStream, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n as u64,
            }
        }
    });
    (port, sink)
}

#[test]
fn dhcp_lease_from_passt() {
    if !report::require_kvm("probe_net::dhcp_lease_from_passt") {
        return;
    }
    let line = probe_line(
        &boot(Some("passt,mac=52:54:00:12:34:56"), "probe.run=net-dhcp"),
        "net_dhcp",
    );
    assert_eq!(line.get("ok"), Some("1"), "{line:?}");
    let address = line.get("address").unwrap();
    let gateway = line.get("gateway").unwrap();
    assert!(
        address.contains('/'),
        "an address with its prefix: {line:?}"
    );
    assert!(gateway.parse::<std::net::Ipv4Addr>().is_ok(), "{line:?}");
    assert!(line.get("dns").is_some(), "{line:?}");
    // The MAC the user chose is the one the guest reads from the config space.
    let run = boot(Some("mac=52:54:00:12:34:57"), "probe.run=net-dhcp");
    let dev = probe_line(&run, "net_dev");
    assert_eq!(dev.get("mac"), Some("52:54:00:12:34:57"), "{dev:?}");
}

#[test]
fn http_get_of_4_mib_from_the_host_matches_its_digest() {
    if !report::require_kvm("probe_net::http_get_of_4_mib_from_the_host_matches_its_digest") {
        return;
    }
    let body = http_body();
    let digest = vireo_cpu_bench::to_hex(&vireo_cpu_bench::sha256(&body));
    let digest = String::from_utf8(digest.to_vec()).unwrap();
    let (port, server) = serve_http(body, 1);
    let line = probe_line(
        &boot(
            Some("passt"),
            &format!("probe.run=net-http probe.net_port={port} probe.net_path=/file.bin"),
        ),
        "net_http",
    );
    assert_eq!(server.join().unwrap(), vec!["/file.bin".to_owned()]);
    assert_eq!(line.get("status"), Some("200"), "{line:?}");
    assert_eq!(line.u64("bytes"), Some(HTTP_BYTES as u64), "{line:?}");
    assert_eq!(line.get("digest"), Some(digest.as_str()), "{line:?}");
    assert_eq!(line.get("ok"), Some("1"), "{line:?}");
    eprintln!(
        "net-http: {} MiB/s over {} us",
        line.get("mib_per_s").unwrap_or("?"),
        line.get("us").unwrap_or("?")
    );
}

#[test]
fn tcp_from_guest_to_a_host_sink_arrives_whole() {
    if !report::require_kvm("probe_net::tcp_from_guest_to_a_host_sink_arrives_whole") {
        return;
    }
    let (port, sink) = serve_sink();
    let line = probe_line(
        &boot(
            Some("passt"),
            &format!("probe.run=net-bench probe.net_port={port} probe.net_mib=16"),
        ),
        "net_bench",
    );
    assert_eq!(line.get("ok"), Some("1"), "{line:?}");
    assert_eq!(sink.join().unwrap(), 16 << 20);
}

/// The passt children of process `pid` (from /proc: parent and command name).
fn passt_children(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{child}/status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
        };
        // Debian's passt execs passt.avx2 where the CPU has AVX2: same process.
        if field("Name:").is_some_and(|n| n.starts_with("passt"))
            && field("PPid:").and_then(|p| p.parse::<u32>().ok()) == Some(pid)
        {
            found.push(child);
        }
    }
    found
}

/// Kills an engine a failed assertion would otherwise leave running.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill has no memory-safety preconditions; a reaped pid is harmless here
        // (the test still holds the child, so the pid is not reused).
        unsafe { libc::kill(self.0 as libc::pid_t, libc::SIGKILL) };
    }
}

/// Whether process `pid` still exists (a zombie counts: someone failed to reap it).
fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn wait_gone(pid: u32, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    while alive(pid) {
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

#[test]
fn passt_ends_with_the_vm() {
    if !report::require_kvm("probe_net::passt_ends_with_the_vm") {
        return;
    }
    // Power-off (through the control socket, so that the VM is still up while passt
    // is looked for): the engine kills and reaps passt at teardown.
    let socket = std::env::temp_dir().join(format!("vireo-net-e2e-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&socket);
    let mut args = boot_args(Some("passt"), "probe.run=idle");
    args.extend(["--control-socket".to_owned(), s(&socket).to_owned()]);
    let mut guest = LiveGuest::spawn(Command::new(vmm_binary()).args(&args));
    let _kill = KillOnDrop(guest.child.id());
    assert!(
        guest.wait_for("IDLE", DEADLINE).is_some(),
        "{:?}",
        guest.seen
    );
    let passt = passt_children(guest.child.id());
    assert_eq!(passt.len(), 1, "one passt per VM: {passt:?}");
    let mut control = UnixStream::connect(&socket).expect("the control socket accepts");
    control.write_all(b"{\"request\":\"power-off\"}\n").unwrap();
    let status = guest.wait_exit(DEADLINE).expect("the engine ends");
    assert_eq!(status.code(), Some(code::POWER_OFF));
    assert!(!alive(passt[0]), "passt {} outlived the VM", passt[0]);
    let _ = std::fs::remove_file(&socket);

    // kill -9 of the engine: the parent-death signal takes passt down.
    let args = boot_args(Some("passt"), "probe.run=idle");
    let mut guest = LiveGuest::spawn(Command::new(vmm_binary()).args(&args));
    let _kill = KillOnDrop(guest.child.id());
    assert!(
        guest.wait_for("IDLE", DEADLINE).is_some(),
        "{:?}",
        guest.seen
    );
    let passt = passt_children(guest.child.id());
    assert_eq!(passt.len(), 1, "{passt:?}");
    guest.kill();
    assert!(
        wait_gone(passt[0], Duration::from_secs(10)),
        "passt {} outlived a killed engine",
        passt[0]
    );
}

/// Asserts the run failed with status 1 and one line containing `hint`.
fn assert_one_line_error(run: &Run, status: i32, hint: &str) {
    assert_eq!(run.code(), Some(status), "stderr: {}", run.stderr);
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "one line expected, got: {:?}", run.stderr);
    assert!(lines[0].starts_with("vireo-vmm: "), "{}", lines[0]);
    assert!(
        lines[0].contains(hint),
        "{:?} should mention {hint:?}",
        lines[0]
    );
}

#[test]
fn a_host_without_passt_is_told_to_install_it() {
    let args = boot_args(Some("passt"), "probe.run=net-dhcp");
    let run = run_command(
        Command::new(vmm_binary())
            .args(&args)
            .env("PATH", "/nonexistent-vireo-path"),
        DEADLINE,
    );
    assert_one_line_error(&run, 1, "apt-get install passt");
    report::ran("probe_net::a_host_without_passt_is_told_to_install_it");
}

#[test]
fn bad_net_specs_get_one_line_each() {
    for (spec, hint) in [
        ("slirp", "use passt, tap=NAME, mac=MAC"),
        ("bridge=br0", "unknown key \"bridge\""),
        ("passt,tap=tap0", "either passt or tap=NAME"),
        ("mac=52:54:00:12:34", "six hex bytes"),
        ("mac=01:00:5e:00:00:01", "multicast"),
        ("tap=", "needs an interface name"),
        ("tap=a-much-too-long-name", "longer than 15 bytes"),
    ] {
        let run = run_vmm(&["--kernel", "k", &format!("--net={spec}")], DEADLINE);
        assert_one_line_error(&run, 2, hint);
        assert!(run.stderr.contains("--net"), "{}", run.stderr);
    }
    report::ran("probe_net::bad_net_specs_get_one_line_each");
}

/// TAP needs CAP_NET_ADMIN: run the engine as root with every capability dropped.
#[test]
fn tap_without_cap_net_admin_is_a_clear_error() {
    const TEST: &str = "probe_net::tap_without_cap_net_admin_is_a_clear_error";
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 || !report::host_has_kvm() {
        report::skipped(TEST, "needs root (to drop capabilities) and /dev/kvm");
        return;
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        report::skipped(TEST, "no /dev/net/tun on this host");
        return;
    }
    let args = boot_args(Some("tap=vireo-nocap0"), "probe.run=poweroff");
    let run = run_command(
        Command::new("setpriv")
            .args(["--inh-caps=-all", "--bounding-set=-all", "--"])
            .arg(vmm_binary())
            .args(&args),
        DEADLINE,
    );
    assert_one_line_error(&run, 1, "CAP_NET_ADMIN");
    report::ran(TEST);
}

/// A TAP interface made beforehand and up (as a user's bridge set-up has it; root here
/// has CAP_NET_ADMIN): the engine attaches to it and the guest's DHCP requests come out
/// of it.
#[test]
fn tap_backend_carries_the_guests_frames() {
    const TEST: &str = "probe_net::tap_backend_carries_the_guests_frames";
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0
        || !report::host_has_kvm()
        || !std::path::Path::new("/dev/net/tun").exists()
    {
        report::skipped(
            TEST,
            "needs root (CAP_NET_ADMIN), /dev/net/tun and /dev/kvm",
        );
        return;
    }
    let name = format!("vireot{}", std::process::id() % 100_000);
    let ip = |args: &[&str]| {
        let status = Command::new("ip").args(args).status().unwrap();
        assert!(status.success(), "ip {args:?}");
    };
    ip(&["tuntap", "add", &name, "mode", "tap"]);
    struct DeleteTap(String);
    impl Drop for DeleteTap {
        fn drop(&mut self) {
            let _ = Command::new("ip")
                .args(["tuntap", "del", &self.0, "mode", "tap"])
                .status();
        }
    }
    let _delete = DeleteTap(name.clone());
    ip(&["link", "set", &name, "up"]);
    let stats = format!("/sys/class/net/{name}/statistics/rx_packets");
    let rx = || -> u64 {
        std::fs::read_to_string(&stats)
            .map(|t| t.trim().parse().unwrap_or(0))
            .unwrap_or(0)
    };
    let before = rx();
    let run = boot(Some(&format!("tap={name}")), "probe.run=net-dhcp");
    // Nobody answers DHCP on this link: the probe gives up after 10 s and powers off.
    let line = probe_line(&run, "net_dhcp");
    assert_eq!(line.get("ok"), Some("0"), "{line:?}");
    assert!(rx() > before, "no frame from the guest reached {name}");
    report::ran(TEST);
}
