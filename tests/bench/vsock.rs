//! vsock benchmark: the probe guest's stream throughput guest→host and host→guest
//! (MiB/s) and 64-byte ping-pong round trips (p50/p99) through `vireo-vmm`'s hybrid
//! vsock, against the host's own loopback TCP (same sizes, same patterns) as the
//! ceiling, in the same run; and the engine with `--no-seccomp`, for what its per-thread
//! syscall filters cost (goal: under 2 %). Prints one table with ratios. (The vsock
//! device has no I/O limits, so there is no limiter column here; `blk` and `net` have
//! one.)
//!
//! No QEMU column: QEMU's vsock is vhost-vsock, which needs `/dev/vhost-vsock` (root,
//! a kernel module) and has no Unix-socket host side to drive the same way.
//!
//! Each figure is the median of VIREO_BENCH_RUNS rounds (default 3), each round running
//! the guest and then the host's loopback, so both see the same machine load.
//!
//! `cargo bench -p vireo-e2e --bench vsock` (VIREO_BENCH_MIB=N MiB each way, default 256;
//! VIREO_BENCH_PINGS=N round trips, default 2000; VIREO_BENCH_CHUNK_KIB=N bytes per guest
//! send, default the probe's).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use vireo_e2e::engine::{run_command, s, vmm_binary};
use vireo_e2e::env_u64;
use vireo_e2e::probe_guest::probe_guest_elf;
use vireo_e2e::vsock_host::{Mode, Server};

const PORT: u32 = 5000;

#[derive(Clone, Copy)]
struct Figures {
    g2h_mib_s: f64,
    h2g_mib_s: f64,
    rtt_p50_us: f64,
    rtt_p99_us: f64,
}

fn vireo(mib: u64, pings: u64, chunk_kib: Option<u64>, seccomp: bool) -> Figures {
    let dir = std::env::temp_dir().join(format!("vireo-vsock-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("v.sock");
    let bytes = mib << 20;
    let servers = [
        Server::start(&socket, PORT, Mode::Sink { bytes }, false),
        Server::start(&socket, PORT + 1, Mode::Source { bytes }, false),
        Server::start(&socket, PORT + 2, Mode::Echo, false),
    ];
    let mut cmd = Command::new(vmm_binary());
    cmd.args([
        "--kernel",
        s(&probe_guest_elf()),
        "--memory",
        "256M",
        "--vsock",
        &format!("cid=3,socket={}", socket.display()),
        "--cmdline",
        &format!(
            "probe.run=vsock-bench probe.vsock_port={PORT} probe.vsock_bench_mib={mib} probe.vsock_pings={pings}{}",
            chunk_kib.map(|k| format!(" probe.vsock_chunk_kib={k}")).unwrap_or_default()
        ),
    ]);
    if !seccomp {
        cmd.arg("--no-seccomp");
    }
    let run = run_command(&mut cmd, Duration::from_secs(600));
    let line = run
        .probe("vsock_bench")
        .unwrap_or_else(|| panic!("no vsock_bench line:\n{}\n{}", run.stdout, run.stderr));
    assert_eq!(line.get("ok"), Some("1"), "{line:?}");
    drop(servers);
    let _ = std::fs::remove_dir_all(&dir);
    let f = |k: &str| line.u64(k).unwrap_or(0) as f64;
    Figures {
        g2h_mib_s: f("g2h_mib_s"),
        h2g_mib_s: f("h2g_mib_s"),
        rtt_p50_us: f("rtt_p50_ns") / 1000.0,
        rtt_p99_us: f("rtt_p99_ns") / 1000.0,
    }
}

/// Sends `bytes` from one end of a loopback TCP connection to the other and waits for
/// a one-byte answer, as the guest→host run does; MiB/s.
fn tcp_stream(bytes: u64) -> f64 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let reader = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 256 << 10];
        let mut got = 0u64;
        while got < bytes {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0);
            got += n as u64;
        }
        s.write_all(b"!").unwrap();
    });
    let mut c = TcpStream::connect(addr).unwrap();
    let chunk = vec![0x5au8; 64 << 10];
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < bytes {
        let n = chunk.len().min((bytes - sent) as usize);
        c.write_all(&chunk[..n]).unwrap();
        sent += n as u64;
    }
    let mut ack = [0u8; 1];
    c.read_exact(&mut ack).unwrap();
    let secs = start.elapsed().as_secs_f64();
    reader.join().unwrap();
    (bytes >> 20) as f64 / secs
}

/// 64-byte round trips over loopback TCP (TCP_NODELAY); (p50, p99) in µs.
fn tcp_rtt(pings: u64) -> (f64, f64) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let echo = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_nodelay(true).unwrap();
        let mut buf = [0u8; 64];
        while s.read_exact(&mut buf).is_ok() {
            s.write_all(&buf).unwrap();
        }
    });
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_nodelay(true).unwrap();
    let ping = [0xa5u8; 64];
    let mut back = [0u8; 64];
    let mut rtts = Vec::with_capacity(pings as usize);
    for _ in 0..pings {
        let start = Instant::now();
        c.write_all(&ping).unwrap();
        c.read_exact(&mut back).unwrap();
        rtts.push(start.elapsed().as_secs_f64() * 1e6);
    }
    drop(c);
    echo.join().unwrap();
    rtts.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: usize| rtts[(rtts.len() - 1) * p / 100];
    (pct(50), pct(99))
}

fn main() {
    // `cargo bench` passes `--bench`; there is nothing to filter.
    let mib = env_u64("VIREO_BENCH_MIB", 256);
    let pings = env_u64("VIREO_BENCH_PINGS", 2000);
    let chunk_kib = std::env::var("VIREO_BENCH_CHUNK_KIB")
        .ok()
        .and_then(|v| v.parse().ok());
    let runs = env_u64("VIREO_BENCH_RUNS", 3).max(1);
    let mut ours = Vec::new();
    let mut unfiltered = Vec::new();
    let mut host = Vec::new();
    for round in 0..runs {
        // With and without seccomp as neighbours, in turns first (ABBA): their ratio is
        // taken per round, so drift and the order's cache state cancel.
        if round % 2 == 1 {
            unfiltered.push(vireo(mib, pings, chunk_kib, false));
        }
        ours.push(vireo(mib, pings, chunk_kib, true));
        if round % 2 == 0 {
            unfiltered.push(vireo(mib, pings, chunk_kib, false));
        }
        // The host's loopback: both directions are the same path, measured once each.
        let (p50, p99) = tcp_rtt(pings);
        host.push(Figures {
            g2h_mib_s: tcp_stream(mib << 20),
            h2g_mib_s: tcp_stream(mib << 20),
            rtt_p50_us: p50,
            rtt_p99_us: p99,
        });
    }
    let median = |runs: &[Figures], f: fn(&Figures) -> f64| -> f64 {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let medians = |runs: &[Figures]| Figures {
        g2h_mib_s: median(runs, |f| f.g2h_mib_s),
        h2g_mib_s: median(runs, |f| f.h2g_mib_s),
        rtt_p50_us: median(runs, |f| f.rtt_p50_us),
        rtt_p99_us: median(runs, |f| f.rtt_p99_us),
    };
    let v = medians(&ours);
    let n = medians(&unfiltered);
    let (tcp_g2h, tcp_h2g, tcp_p50, tcp_p99) = (
        median(&host, |f| f.g2h_mib_s),
        median(&host, |f| f.h2g_mib_s),
        median(&host, |f| f.rtt_p50_us),
        median(&host, |f| f.rtt_p99_us),
    );

    println!();
    println!(
        "vsock: probe guest <-> host through vireo-vmm (hybrid vsock, Unix socket), {mib} MiB each way, {pings} x 64-byte round trips, median of {runs} rounds"
    );
    println!(
        "{:<28} {:>14} {:>18} {:>10} {:>12} {:>12}",
        "metric", "vireo vsock", "host TCP loopback", "ratio", "no-seccomp", "seccomp/off"
    );
    // Filtered over unfiltered, per round, then the median.
    let paired = |f: fn(&Figures) -> f64, higher_is_better: bool| -> f64 {
        let mut ratios: Vec<f64> = ours
            .iter()
            .zip(&unfiltered)
            .map(|(a, b)| {
                if higher_is_better {
                    f(a) / f(b)
                } else {
                    f(b) / f(a)
                }
            })
            .collect();
        ratios.sort_by(|a, b| a.total_cmp(b));
        ratios[ratios.len() / 2]
    };
    let row = |name: &str,
               ours: f64,
               ceiling: f64,
               off: f64,
               get: fn(&Figures) -> f64,
               higher_is_better: bool| {
        let ratio = if higher_is_better {
            ours / ceiling
        } else {
            ceiling / ours
        };
        let filtered = paired(get, higher_is_better);
        println!(
            "{name:<28} {ours:>14.1} {ceiling:>18.1} {ratio:>10.2} {off:>12.1} {:>11.1}%",
            100.0 * filtered
        );
    };
    row(
        "guest->host MiB/s",
        v.g2h_mib_s,
        tcp_g2h,
        n.g2h_mib_s,
        |f| f.g2h_mib_s,
        true,
    );
    row(
        "host->guest MiB/s",
        v.h2g_mib_s,
        tcp_h2g,
        n.h2g_mib_s,
        |f| f.h2g_mib_s,
        true,
    );
    row(
        "64 B round trip p50 us",
        v.rtt_p50_us,
        tcp_p50,
        n.rtt_p50_us,
        |f| f.rtt_p50_us,
        false,
    );
    row(
        "64 B round trip p99 us",
        v.rtt_p99_us,
        tcp_p99,
        n.rtt_p99_us,
        |f| f.rtt_p99_us,
        false,
    );
    println!("(ratio: vireo as a fraction of the host's own loopback; 1.00 = as fast as the host)");
    println!("(seccomp/off: vireo with its filters as a fraction of vireo without, the median of per-round ratios; 100% = free)");
}
