//! Clipboard benchmark over the Unix transport, on this host: the real `vireo-agent` on a
//! private Xvfb, driven by the real host client. Each row is a latency, p50 and p99 in
//! ms, from the first call to the content being readable on the other side:
//!
//! - host set → readable in the guest session: `clipboard_set` until another X client
//!   (arboard, in this process) pastes the new content from the agent;
//! - guest copy → host has it: another X client copies, until `clipboard_get` returns it
//!   (XFixes event, the agent's read, grab, request, data);
//! - the same host set with no session (`--clipboard memory`), read through the agent's
//!   local socket: the agent and protocol without X;
//! - the desktop-session split: the system agent without `DISPLAY` and
//!   `vireo-agent session` on the Xvfb connected to it (one more local hop), 1 KiB and
//!   1 MiB, against the direct-`DISPLAY` agent's same rows above;
//! - baseline in the same run: a protocol ping's round trip on the same connection;
//! - over real virtio-vsock (where /dev/kvm exists): the host client through `vireo-vmm`'s
//!   hybrid vsock socket to the probe guest's agent (`probe.run=agent`): host set → the
//!   probe has the data (its `agent_clipboard_in` line on the serial console), guest copy →
//!   host has it (the probe's grab at connect, fetched with `clipboard_get`), and a ping.
//!
//! Goal (issue 6): host set → guest readable ≤ 50 ms p99.
//!
//! `cargo bench -p vireo-e2e --bench clipboard` (VIREO_BENCH_ROUNDS=N, default 200 for
//! small content, a tenth of that for 1 MiB and images).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arboard::{Clipboard, ImageData};
use vireo_e2e::engine::{s, vmm_binary, LiveGuest};
use vireo_e2e::probe_guest::probe_guest_elf;
use vireo_e2e::xvfb::Xvfb;
use vireo_guest_agent::agent::clipboard::local;
use vireo_guest_agent::host::{AgentClient, ClientConfig, ClientEvent, Endpoint};
use vireo_guest_agent::protocol::{
    ClipboardContent, ClipboardFormat, ClipboardSource, ClipboardStatus, Message,
};

const GOAL_P99_MS: f64 = 50.0;
const TIMEOUT: Duration = Duration::from_secs(10);

fn agent_binary() -> PathBuf {
    vireo_e2e::release_binary("vireo-guest-agent", "vireo-agent")
}

struct Agent {
    child: Child,
    /// `vireo-agent session`, for the desktop-session rows.
    session: Option<Child>,
    dir: PathBuf,
}

/// Where the agent's clipboard is.
enum Mode<'a> {
    Display(&'a str),
    Memory,
    /// No `DISPLAY` for the agent; a session part on this one.
    Session(&'a str),
}

impl Agent {
    fn start(name: &str, mode: Mode<'_>) -> Self {
        let dir =
            std::env::temp_dir().join(format!("vireo-clip-bench-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = Command::new(agent_binary());
        cmd.arg("run")
            .arg(format!("--transport=unix:{}", dir.join("a.sock").display()))
            .arg("--clipboard-socket")
            .arg(dir.join("c.sock"))
            .arg("--fake-clock-offset-ms=0")
            .env_remove("WAYLAND_DISPLAY")
            .stderr(Stdio::null());
        cmd.arg("--session-socket").arg(dir.join("s.sock"));
        // No logind stand-in: any user may connect (we are that user anyway).
        cmd.arg("--logind-sessions").arg(dir.join("no-logind"));
        match mode {
            Mode::Display(d) => cmd.arg("--clipboard=x11").env("DISPLAY", d),
            Mode::Memory | Mode::Session(_) => cmd.arg("--clipboard=memory").env_remove("DISPLAY"),
        };
        let child = cmd.spawn().unwrap();
        let start = Instant::now();
        while !dir.join("a.sock").exists() {
            assert!(start.elapsed() < TIMEOUT, "the agent did not start");
            std::thread::sleep(Duration::from_millis(5));
        }
        let session = match mode {
            Mode::Session(display) => Some(
                Command::new(agent_binary())
                    .arg("session")
                    .arg("--socket")
                    .arg(dir.join("s.sock"))
                    .env("DISPLAY", display)
                    .env_remove("WAYLAND_DISPLAY")
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap(),
            ),
            _ => None,
        };
        Self {
            child,
            session,
            dir,
        }
    }

    /// Waits until the agent says the session's clipboard is the guest's.
    fn wait_session(client: &AgentClient) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match client.events().recv_timeout(left) {
                Ok(ClientEvent::Message(Message::ClipboardStatus(ClipboardStatus {
                    source: ClipboardSource::UserSession { .. },
                }))) => return,
                Ok(_) => {}
                Err(_) => panic!("the session part did not connect"),
            }
        }
    }

    fn client(&self) -> AgentClient {
        AgentClient::connect(
            Endpoint::Unix(self.dir.join("a.sock")),
            ClientConfig::default(),
        )
        .unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut session) = self.session.take() {
            let _ = session.kill();
            let _ = session.wait();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `ready` until it holds; the time that took.
fn until(start: Instant, mut ready: impl FnMut() -> bool) -> Duration {
    while !ready() {
        assert!(start.elapsed() < TIMEOUT, "not readable within {TIMEOUT:?}");
    }
    start.elapsed()
}

fn percentiles(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
        samples[i].as_secs_f64() * 1e3
    };
    (at(0.50), at(0.99))
}

fn image(side: usize, seed: u8) -> ImageData<'static> {
    let bytes: Vec<u8> = (0..side * side * 4)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 0x03)
        .collect();
    ImageData {
        width: side,
        height: side,
        bytes: bytes.into(),
    }
}

fn png_of(image: &ImageData<'_>) -> Vec<u8> {
    let mut png = Vec::new();
    let mut encoder = png::Encoder::new(&mut png, image.width as u32, image.height as u32);
    encoder.set_color(png::ColorType::Rgba);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(&image.bytes).unwrap();
    writer.finish().unwrap();
    png
}

fn host_set_text(
    client: &AgentClient,
    x: &mut Clipboard,
    rounds: usize,
    size: usize,
) -> Vec<Duration> {
    (0..rounds)
        .map(|i| {
            let mut text = format!("vireo {i} ");
            text.extend(std::iter::repeat_n('x', size.saturating_sub(text.len())));
            let start = Instant::now();
            client
                .clipboard_set(ClipboardContent::text(text.clone()))
                .unwrap();
            until(start, || x.get_text().is_ok_and(|t| t == text))
        })
        .collect()
}

fn host_set_png(client: &AgentClient, x: &mut Clipboard, rounds: usize) -> Vec<Duration> {
    (0..rounds)
        .map(|i| {
            let image = image(256, i as u8);
            let png = png_of(&image);
            let start = Instant::now();
            client.clipboard_set(ClipboardContent::png(png)).unwrap();
            until(start, || {
                x.get_image().is_ok_and(|got| got.bytes == image.bytes)
            })
        })
        .collect()
}

fn guest_copy_text(client: &AgentClient, x: &mut Clipboard, rounds: usize) -> Vec<Duration> {
    (0..rounds)
        .map(|i| {
            let text = format!("from the guest session {i}");
            let start = Instant::now();
            x.set_text(text.clone()).unwrap();
            until(start, || {
                client.guest_clipboard().is_some_and(|_| {
                    client.clipboard_get(ClipboardFormat::Text).ok()
                        == Some(text.clone().into_bytes())
                })
            })
        })
        .collect()
}

fn memory_host_set(client: &AgentClient, socket: &std::path::Path, rounds: usize) -> Vec<Duration> {
    (0..rounds)
        .map(|i| {
            let text = format!("memory {i}");
            let start = Instant::now();
            client
                .clipboard_set(ClipboardContent::text(text.clone()))
                .unwrap();
            until(start, || {
                local::get(socket, ClipboardFormat::Text).is_ok_and(|t| t == text.as_bytes())
            })
        })
        .collect()
}

/// The probe guest behind `vireo-vmm`'s hybrid vsock: rows for host set → guest has it,
/// and for the guest's clipboard reaching the host, over real virtio-vsock.
fn probe_rows(rounds: usize) -> Vec<(&'static str, usize, (f64, f64), bool)> {
    let dir = std::env::temp_dir().join(format!("vireo-clip-bench-{}-probe", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("v.sock");
    let mut guest = LiveGuest::spawn(Command::new(vmm_binary()).args([
        "--kernel",
        s(&probe_guest_elf()),
        "--memory",
        "256M",
        "--vsock",
        &format!("cid=3,socket={}", socket.display()),
        "--cmdline",
        "probe.run=agent probe.agent_copy_kib=1",
    ]));
    assert!(guest.wait_for("agent_ready", TIMEOUT * 6).is_some());
    let endpoint = Endpoint::HybridVsock {
        path: socket.clone(),
        port: vireo_guest_agent::protocol::AGENT_VSOCK_PORT,
    };
    let client = AgentClient::connect(endpoint, ClientConfig::default()).expect("probe agent");
    let ping: Vec<Duration> = (0..rounds).map(|_| client.ping().unwrap()).collect();
    // The probe grabbed 1 KiB at connect; each get is a request → data round over vsock.
    let guest_copy: Vec<Duration> = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            let data = client.clipboard_get(ClipboardFormat::Text);
            assert_eq!(data.map(|d| d.len()).ok(), Some(1024));
            start.elapsed()
        })
        .collect();
    let host_set: Vec<Duration> = (0..rounds)
        .map(|i| {
            let text = format!("vireo probe {i}");
            let start = Instant::now();
            let serial = client
                .clipboard_set(ClipboardContent::text(text.clone()))
                .unwrap();
            let needle = format!(
                "agent_clipboard_in serial={serial} format=text bytes={}",
                text.len()
            );
            guest
                .wait_for(&needle, guest.started.elapsed() + TIMEOUT)
                .expect("the probe got the host's clipboard");
            start.elapsed()
        })
        .collect();
    drop(client);
    drop(guest);
    let _ = std::fs::remove_dir_all(&dir);
    vec![
        (
            "probe vsock: ping round trip",
            rounds,
            percentiles(ping),
            false,
        ),
        (
            "probe vsock: host set → guest has it",
            rounds,
            percentiles(host_set),
            true,
        ),
        (
            "probe vsock: guest clipboard → host",
            rounds,
            percentiles(guest_copy),
            false,
        ),
    ]
}

fn main() {
    let rounds: usize = std::env::var("VIREO_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let few = (rounds / 10).max(5);
    // The direct-DISPLAY against desktop-session comparison (issue 10).
    let compare = (rounds / 4).max(5);
    let xvfb = Xvfb::start(1280, 800);
    // This process is the other X client; arboard reads DISPLAY when it connects.
    // Set before any thread of ours starts, so nothing reads the environment meanwhile.
    std::env::set_var("DISPLAY", &xvfb.display);
    let agent = Agent::start("x11", Mode::Display(&xvfb.display));
    let client = agent.client();
    let mut x = Clipboard::new().expect("arboard on the private Xvfb");

    let ping: Vec<Duration> = (0..rounds).map(|_| client.ping().unwrap()).collect();
    let mut rows = vec![
        (
            "ping round trip (baseline)",
            rounds,
            percentiles(ping),
            false,
        ),
        (
            "host set → X readable, 16 B",
            rounds,
            percentiles(host_set_text(&client, &mut x, rounds, 16)),
            true,
        ),
        (
            "host set → X readable, 1 KiB",
            compare,
            percentiles(host_set_text(&client, &mut x, compare, 1 << 10)),
            true,
        ),
        (
            "host set → X readable, 1 MiB",
            compare,
            percentiles(host_set_text(&client, &mut x, compare, 1 << 20)),
            true,
        ),
        (
            "host set → X readable, PNG 256²",
            few,
            percentiles(host_set_png(&client, &mut x, few)),
            true,
        ),
        (
            "X copy → host has it, text",
            rounds,
            percentiles(guest_copy_text(&client, &mut x, rounds)),
            false,
        ),
    ];
    drop(client);
    drop(agent);

    let split = Agent::start("session", Mode::Session(&xvfb.display));
    let client = split.client();
    Agent::wait_session(&client);
    rows.push((
        "session part: host set → X, 1 KiB",
        compare,
        percentiles(host_set_text(&client, &mut x, compare, 1 << 10)),
        true,
    ));
    rows.push((
        "session part: host set → X, 1 MiB",
        compare,
        percentiles(host_set_text(&client, &mut x, compare, 1 << 20)),
        true,
    ));
    rows.push((
        "session part: X copy → host, text",
        compare,
        percentiles(guest_copy_text(&client, &mut x, compare)),
        false,
    ));
    drop(client);
    drop(split);

    let memory = Agent::start("memory", Mode::Memory);
    let client = memory.client();
    let socket = memory.dir.join("c.sock");
    rows.push((
        "host set → readable, no session",
        rounds,
        percentiles(memory_host_set(&client, &socket, rounds)),
        true,
    ));

    drop(client);
    drop(memory);
    if std::path::Path::new("/dev/kvm").exists() {
        rows.extend(probe_rows(rounds));
    } else {
        println!("*** SKIPPED the probe-guest rows: no /dev/kvm");
    }

    println!();
    println!("clipboard over the Unix transport (vireo-agent on a private Xvfb), ms");
    println!(
        "{:<38} {:>6} {:>9} {:>9} {:>14}",
        "", "rounds", "p50", "p99", "goal p99≤50"
    );
    for (name, n, (p50, p99), goal) in rows {
        let verdict = match (goal, p99 <= GOAL_P99_MS) {
            (false, _) => "",
            (true, true) => "met",
            (true, false) => "MISSED",
        };
        println!("{name:<38} {n:>6} {p50:>9.2} {p99:>9.2} {verdict:>14}");
    }
}
