//! Network benchmark: the probe guest (virtio-drivers' net driver + smoltcp, polled)
//! through passt to the host's loopback, under `vireo-vmm --net passt` and under QEMU
//! microvm with `-netdev stream` to the same passt binary and `virtio-net-pci`
//! (modern-only, no firmware), in the same run:
//!
//! - TCP guest → host: `net_mib` MiB to a sink on 127.0.0.1 (`probe.run=net-bench`);
//! - HTTP host → guest: a GET of `HTTP_MIB` MiB from a server on 127.0.0.1
//!   (`probe.run=net-http`), digest checked;
//! - exits to the VMM's userspace per MiB sent (KVM's `kvm_userspace_exit` tracepoint
//!   counted by `perf`, less a boot-only baseline), when perf is there.
//!
//! `cargo bench -p vireo-e2e --bench net` (VIREO_BENCH_RUNS=N rounds, default 3).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vireo_e2e::engine::{run_command, s, vmm_binary, ProbeLine};
use vireo_e2e::probe_guest::probe_guest_elf;
use vireo_e2e::qemu::{qemu_available, qemu_probe_command};

const SEND_MIB: u64 = 256;
const HTTP_MIB: usize = 32;

#[derive(Default, Clone, Copy)]
struct Result {
    send: f64,
    http: f64,
    exits_per_mib: Option<f64>,
}

/// How a VMM is started for one run: the command, and whatever must outlive it (QEMU's
/// passt).
trait Vmm {
    fn command(&self, cmdline: &str) -> (Command, Option<Child>);
}

struct Vireo;

impl Vmm for Vireo {
    fn command(&self, cmdline: &str) -> (Command, Option<Child>) {
        let mut cmd = Command::new(vmm_binary());
        cmd.args([
            "--kernel",
            s(&probe_guest_elf()),
            "--memory",
            "256M",
            "--net",
            "--cmdline",
            cmdline,
        ]);
        (cmd, None)
    }
}

struct Qemu {
    /// passt started as root runs as nobody and makes its socket after that: in the
    /// world-writable temporary directory, not in a directory of ours.
    socket: PathBuf,
}

impl Vmm for Qemu {
    fn command(&self, cmdline: &str) -> (Command, Option<Child>) {
        let socket = &self.socket;
        let _ = std::fs::remove_file(socket);
        let passt = Command::new("passt")
            .args([
                "--foreground",
                "--quiet",
                "--one-off",
                "--socket",
                s(socket),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("passt runs (installers/setup-host.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "passt made no socket");
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut cmd = qemu_probe_command(&probe_guest_elf(), cmdline, 1, 256);
        cmd.args([
            "-netdev",
            &format!(
                "stream,id=n0,server=off,addr.type=unix,addr.path={}",
                socket.display()
            ),
            "-device",
            "virtio-net-pci,netdev=n0,disable-legacy=on",
        ]);
        (cmd, Some(passt))
    }
}

/// Runs `cmd` under `perf stat` counting exits to userspace system-wide when perf is
/// there; returns the line tagged `tag` and the count.
fn run(cmd: Command, tag: &str) -> (ProbeLine, Option<u64>) {
    let counts = std::env::temp_dir().join(format!("vireo-net-perf-{}.txt", std::process::id()));
    let use_perf = Command::new("perf")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let mut to_run = if use_perf {
        let mut perf = Command::new("perf");
        perf.args([
            "stat",
            "-a",
            "-x",
            ",",
            "-e",
            "kvm:kvm_userspace_exit",
            "-o",
        ])
        .arg(&counts)
        .arg("--")
        .arg(cmd.get_program())
        .args(cmd.get_args());
        perf
    } else {
        cmd
    };
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
        .find(|l| l.tag == tag)
        .unwrap_or_else(|| panic!("no {tag} line:\n{}\n{}", out.stdout, out.stderr));
    (line, exits)
}

fn run_vmm(vmm: &dyn Vmm, cmdline: &str, tag: &str) -> (ProbeLine, Option<u64>) {
    let (cmd, mut companion) = vmm.command(cmdline);
    let result = run(cmd, tag);
    if let Some(passt) = companion.as_mut() {
        let _ = passt.kill();
        let _ = passt.wait();
    }
    result
}

/// A sink on 127.0.0.1 for one connection.
fn sink() -> (u16, std::thread::JoinHandle<u64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let thread = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0;
        while let Ok(n) = conn.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        total
    });
    (port, thread)
}

/// An HTTP/1.0 server on 127.0.0.1 answering one GET with `body`.
fn http_server(body: &'static [u8]) -> (u16, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let thread = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        let head = format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
        let _ = conn.write_all(head.as_bytes());
        let _ = conn.write_all(body);
    });
    (port, thread)
}

fn measure(vmm: &dyn Vmm, body: &'static [u8], digest: &str) -> Result {
    let (baseline, base_exits) = run_vmm(vmm, "probe.run=net-dhcp", "net_dhcp");
    assert_eq!(baseline.get("ok"), Some("1"), "{baseline:?}");

    let (port, sink) = sink();
    let (line, exits) = run_vmm(
        vmm,
        &format!("probe.run=net-bench probe.net_port={port} probe.net_mib={SEND_MIB}"),
        "net_bench",
    );
    assert_eq!(line.get("ok"), Some("1"), "{line:?}");
    assert_eq!(sink.join().unwrap(), SEND_MIB << 20);
    let send = line.u64("mib_per_s").unwrap_or(0) as f64;

    let (port, server) = http_server(body);
    let (http, _) = run_vmm(
        vmm,
        &format!("probe.run=net-http probe.net_port={port} probe.net_path=/bench.bin"),
        "net_http",
    );
    server.join().unwrap();
    assert_eq!(http.get("ok"), Some("1"), "{http:?}");
    assert_eq!(http.get("digest"), Some(digest), "{http:?}");
    Result {
        send,
        http: http.u64("mib_per_s").unwrap_or(0) as f64,
        exits_per_mib: exits
            .zip(base_exits)
            .map(|(e, b)| e.saturating_sub(b) as f64 / SEND_MIB as f64),
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
    let socket = std::env::temp_dir().join(format!("vireo-net-bench-{}.sock", std::process::id()));
    let mut body = vec![0u8; HTTP_MIB << 20];
    vireo_cpu_bench::fill_pattern(&mut body, 0);
    let digest =
        String::from_utf8(vireo_cpu_bench::to_hex(&vireo_cpu_bench::sha256(&body)).to_vec())
            .unwrap();
    let body: &'static [u8] = Box::leak(body.into_boxed_slice());
    let has_qemu = qemu_available() && passt_installed();
    let qemu = Qemu {
        socket: socket.clone(),
    };
    let (mut v, mut q) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        // Interleaved so that drift on this shared machine hits both columns alike.
        v.push(measure(&Vireo, body, &digest));
        if has_qemu {
            q.push(measure(&qemu, body, &digest));
        }
    }
    let pick = |rs: &[Result], f: &dyn Fn(&Result) -> f64| {
        (!rs.is_empty()).then(|| median(rs.iter().map(f).collect()))
    };
    println!();
    println!(
        "Network benchmark: probe guest (virtio-drivers + smoltcp, MTU 65520) through passt to 127.0.0.1, medians of {rounds} rounds"
    );
    println!(
        "{:<34} {:>10} {:>10} {:>12}",
        "", "vireo", "qemu", "vireo/qemu"
    );
    type Getter = fn(&Result) -> f64;
    let rows: [(String, Getter); 3] = [
        (format!("TCP guest->host {SEND_MIB} MiB (MiB/s)"), |r| {
            r.send
        }),
        (format!("HTTP host->guest {HTTP_MIB} MiB (MiB/s)"), |r| {
            r.http
        }),
        ("userspace exits/MiB sent".into(), |r| {
            r.exits_per_mib.unwrap_or(f64::NAN)
        }),
    ];
    for (name, get) in rows {
        let vv = pick(&v, &get).unwrap();
        let qq = pick(&q, &get);
        let fmt = |x: f64| {
            if x.is_nan() {
                "n/a".to_owned()
            } else {
                format!("{x:.1}")
            }
        };
        let ratio = qq
            .filter(|q| !q.is_nan() && *q != 0.0 && !vv.is_nan())
            .map(|q| format!("{:.2}x", vv / q))
            .unwrap_or_else(|| "n/a".into());
        println!(
            "{name:<34} {:>10} {:>10} {ratio:>12}",
            fmt(vv),
            qq.map(fmt).unwrap_or_else(|| "n/a".into())
        );
    }
    let _ = std::fs::remove_file(&socket);
}

fn passt_installed() -> bool {
    Command::new("passt")
        .arg("--help")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}
