//! The real `vireo-agent` binary, run as a child on a Unix socket (the vsock transport
//! swapped out, as DESIGN.md's "KVM here is PVM" says), against the real host client.
//! The agent runs with a simulated clock and a recording power control, so this host's
//! clock and power are never touched.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use vireo_guest_agent::guest_info::GuestInfo;
use vireo_guest_agent::host::{AgentClient, ClientConfig, ClientError, ClientEvent, Endpoint};
use vireo_guest_agent::protocol::{
    error_code, fs::FsOp, kind, Capabilities, FsRequest, Message, TimeCorrection, PROTOCOL_MAJOR,
    PROTOCOL_MINOR,
};

const AGENT: &str = env!("CARGO_BIN_EXE_vireo-agent");

/// A scratch directory and the agent child in it; both go away on drop.
struct Agent {
    dir: PathBuf,
    child: Option<Child>,
}

impl Agent {
    fn spawn(clock_offset_ms: i64) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "vireo-agent-e2e-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut agent = Self { dir, child: None };
        agent.start(clock_offset_ms);
        agent
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }

    fn power_log(&self) -> PathBuf {
        self.dir.join("power.log")
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint::Unix(self.socket())
    }

    fn start(&mut self, clock_offset_ms: i64) {
        let _ = std::fs::remove_file(self.socket());
        let child = Command::new(AGENT)
            .arg("run")
            .arg("--transport")
            .arg(format!("unix:{}", self.socket().display()))
            .arg(format!("--fake-clock-offset-ms={clock_offset_ms}"))
            .arg("--fake-power")
            .arg(self.power_log())
            .arg("--clipboard=memory")
            .arg("--clipboard-socket")
            .arg(self.dir.join("clipboard.sock"))
            .arg("--session-socket")
            .arg(self.dir.join("session.sock"))
            .stderr(std::fs::File::create(self.dir.join("agent.log")).unwrap())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let up = wait_until(Duration::from_secs(5), || self.socket().exists());
        assert!(up, "the agent did not create its socket");
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

#[test]
fn hello_carries_version_and_capabilities() {
    let agent = Agent::spawn(0);
    let client = AgentClient::connect(agent.endpoint(), ClientConfig::default()).unwrap();
    let hello = client.peer().unwrap();
    assert_eq!(hello.major, PROTOCOL_MAJOR);
    assert!(hello.software.starts_with("vireo-agent "));
    let caps = hello.capabilities;
    for offered in [
        Capabilities::INFO,
        Capabilities::POWER,
        Capabilities::TIME,
        Capabilities::SHARED_FOLDERS,
        Capabilities::CLIPBOARD,
        Capabilities::DISPLAY,
    ] {
        assert!(caps.contains(offered));
    }
}

#[test]
fn info_matches_this_host() {
    let agent = Agent::spawn(0);
    let client = AgentClient::connect(agent.endpoint(), ClientConfig::default()).unwrap();
    let remote = client.info().unwrap();
    let local = GuestInfo::gather().unwrap();
    assert_eq!(remote.os_pretty_name, local.os_pretty_name);
    assert_eq!(remote.kernel_release, local.kernel_release);
    assert_eq!(remote.hostname, local.hostname);
    assert_eq!(remote.mem_total_kib, local.mem_total_kib);
    assert_eq!(remote.addresses, local.addresses);
    assert!(remote.uptime_ms.abs_diff(local.uptime_ms) < 5_000);
    assert!(remote.mem_available_kib <= remote.mem_total_kib);
}

#[test]
fn ping_round_trip() {
    let agent = Agent::spawn(0);
    let client = AgentClient::connect(agent.endpoint(), ClientConfig::default()).unwrap();
    let mut rtts: Vec<Duration> = (0..100).map(|_| client.ping().unwrap()).collect();
    rtts.sort();
    eprintln!(
        "ping over a Unix socket: median {:?}, max {:?}",
        rtts[50], rtts[99]
    );
    assert!(rtts[50] < Duration::from_millis(50));
}

#[test]
fn unknown_and_malformed_messages_get_errors_and_the_connection_stays_usable() {
    let agent = Agent::spawn(0);
    let client = AgentClient::connect(agent.endpoint(), ClientConfig::default()).unwrap();

    let err = client
        .request_raw(0x7e01, b"from a newer peer")
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Agent { code, .. } if code == error_code::UNKNOWN_KIND),
        "{err}"
    );
    client.ping().unwrap();

    // A ping announcing 100 bytes and carrying 2.
    let err = client.request_raw(kind::PING, &[100, 1, 2]).unwrap_err();
    assert!(
        matches!(err, ClientError::Agent { code, .. } if code == error_code::MALFORMED),
        "{err}"
    );
    client.ping().unwrap();

    // A message the agent sends but never answers (a shared-folder request is the
    // guest's to make).
    let fs = Message::FsRequest(FsRequest {
        share: 0,
        op: FsOp::GetAttr { node: 1 },
    });
    let err = client.request(&fs).unwrap_err();
    assert!(
        matches!(err, ClientError::Agent { code, .. } if code == error_code::UNEXPECTED),
        "{err}"
    );
    client.info().unwrap();
    assert_eq!(client.connections(), 1);
}

fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn oversized_frame_gets_an_error_and_a_close_without_a_big_allocation() {
    let mut agent = Agent::spawn(0);
    let mut raw = UnixStream::connect(agent.socket()).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // 4 GiB - 1 announced, then some bytes of it.
    raw.write_all(&u32::MAX.to_le_bytes()).unwrap();
    let _ = raw.write_all(&[0u8; 4096]);
    let mut answer = Vec::new();
    raw.read_to_end(&mut answer).unwrap();
    let mut decoder = vireo_guest_agent::protocol::FrameDecoder::new();
    decoder.push(&answer);
    let payload = decoder.next_frame().unwrap().expect("an error frame");
    let env = vireo_guest_agent::protocol::decode_payload(&payload).unwrap();
    assert!(
        matches!(env.message, Message::Error(ref e) if e.code == error_code::MALFORMED),
        "{env:?}"
    );
    assert!(agent.is_running());
    let rss = vm_rss_kib(agent.pid());
    assert!(rss < 64 * 1024, "agent RSS {rss} KiB");
    // And it serves the next host.
    let client = AgentClient::connect(agent.endpoint(), ClientConfig::default()).unwrap();
    client.ping().unwrap();
}

#[test]
fn client_reconnects_by_itself_when_the_agent_restarts() {
    let mut agent = Agent::spawn(0);
    let config = ClientConfig {
        call_timeout: Duration::from_secs(10),
        ..ClientConfig::default()
    };
    let client = AgentClient::connect(agent.endpoint(), config).unwrap();
    client.ping().unwrap();
    agent.kill();
    assert!(wait_until(Duration::from_secs(5), || client
        .peer()
        .is_none()));
    agent.start(0);
    let start = Instant::now();
    client.ping().unwrap();
    eprintln!(
        "reconnected and pinged {:?} after the restart",
        start.elapsed()
    );
    assert_eq!(client.connections(), 2);
    // Connection events, without the display status each connection brings.
    let events: Vec<ClientEvent> = client
        .events()
        .try_iter()
        .filter(|e| matches!(e, ClientEvent::Connected(_) | ClientEvent::Disconnected))
        .collect();
    assert!(
        matches!(
            events.as_slice(),
            [
                ClientEvent::Connected(_),
                ClientEvent::Disconnected,
                ClientEvent::Connected(_)
            ]
        ),
        "{events:?}"
    );
}

#[test]
fn time_sync_corrects_the_agents_clock() {
    let agent = Agent::spawn(-3_600_000);
    let client = AgentClient::connect(agent.endpoint(), ClientConfig::default()).unwrap();
    let report = client.time_sync_now().unwrap();
    let host_now = now_ns();
    // Either the sync on connect (stepped, an hour) or a later one (nothing left to do)
    // answered: in both cases the guest clock is now right.
    assert!(
        matches!(
            report.correction,
            TimeCorrection::Stepped | TimeCorrection::None
        ),
        "{report:?}"
    );
    let error_ms = (host_now - report.guest_unix_ns) as f64 / 1e6;
    assert!(error_ms.abs() < 50.0, "guest clock off by {error_ms} ms");
    let report = client.time_sync_now().unwrap();
    assert!(report.offset_ns.abs() < 50_000_000, "{report:?}");
}

#[test]
fn shutdown_and_reboot_run_the_power_path() {
    let agent = Agent::spawn(0);
    let client = AgentClient::connect(agent.endpoint(), ClientConfig::default()).unwrap();
    client.shutdown().unwrap();
    client.reboot().unwrap();
    let log = agent.power_log();
    assert!(wait_until(Duration::from_secs(2), || {
        std::fs::read_to_string(&log).is_ok_and(|s| s == "shutdown\nreboot\n")
    }));
}

/// A stand-in for the engine's hybrid-vsock socket: answers `CONNECT <port>` with
/// `OK 1` and relays the stream to the agent's Unix socket.
fn fake_engine(engine: &Path, agent: PathBuf) -> std::sync::mpsc::Receiver<String> {
    let listener = UnixListener::bind(engine).unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut host) = conn else { return };
            let mut line = Vec::new();
            let mut byte = [0u8; 1];
            while host.read_exact(&mut byte).is_ok() && byte[0] != b'\n' {
                line.push(byte[0]);
            }
            let _ = lines_tx.send(String::from_utf8_lossy(&line).into_owned());
            let Ok(guest) = UnixStream::connect(&agent) else {
                continue;
            };
            host.write_all(b"OK 1\n").unwrap();
            let (mut h2, mut g2) = (host.try_clone().unwrap(), guest.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut h2, &mut g2);
                let _ = g2.shutdown(std::net::Shutdown::Write);
            });
            let (mut host, mut guest) = (host, guest);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut guest, &mut host);
                let _ = host.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    lines
}

#[test]
fn hybrid_vsock_handshake_through_a_fake_engine() {
    let agent = Agent::spawn(0);
    let engine = agent.dir.join("engine-vsock.sock");
    let lines = fake_engine(&engine, agent.socket());
    let endpoint = Endpoint::HybridVsock {
        path: engine.clone(),
        port: 7000,
    };
    let client = AgentClient::connect(endpoint, ClientConfig::default()).unwrap();
    assert_eq!(lines.recv().unwrap(), "CONNECT 7000");
    client.ping().unwrap();
    assert_eq!(
        client.info().unwrap().hostname,
        GuestInfo::gather().unwrap().hostname
    );
    drop(client);

    // The CLI, through the same engine socket.
    let out = Command::new(AGENT)
        .args(["host", "--socket"])
        .arg(&engine)
        .args(["--vsock-port", "7000", "ping"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["round_trip_us"].as_u64().is_some(), "{v}");
}

fn cli(agent: &Agent, call: &str) -> serde_json::Value {
    let out = Command::new(AGENT)
        .args(["host", "--socket"])
        .arg(agent.socket())
        .arg(call)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{call}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn cli_host_subcommands() {
    let agent = Agent::spawn(0);
    let hello = cli(&agent, "hello");
    assert_eq!(
        hello["protocol"],
        format!("{PROTOCOL_MAJOR}.{PROTOCOL_MINOR}")
    );
    assert_eq!(
        hello["capabilities"],
        serde_json::json!([
            "info",
            "power",
            "time",
            "clipboard",
            "shared-folders",
            "display"
        ])
    );
    let info = cli(&agent, "info");
    assert_eq!(info["hostname"], GuestInfo::gather().unwrap().hostname);
    assert!(cli(&agent, "ping")["round_trip_us"].is_u64());
    assert!(cli(&agent, "time")["guest_unix_ns"].is_i64());
    assert_eq!(cli(&agent, "reboot")["accepted"], "reboot");
    assert!(wait_until(Duration::from_secs(2), || {
        std::fs::read_to_string(agent.power_log()).is_ok_and(|s| s == "reboot\n")
    }));

    // Nobody listening: a clear error, not a hang.
    let out = Command::new(AGENT)
        .args(["host", "--timeout-ms", "300", "--socket"])
        .arg(agent.dir.join("nothing.sock"))
        .arg("ping")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the agent"));
}

#[test]
fn info_command_still_prints_one_json_line() {
    let out = Command::new(AGENT).arg("info").output().unwrap();
    assert!(out.status.success());
    let info: GuestInfo = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info.hostname, GuestInfo::gather().unwrap().hostname);
}

/// `vireo-agent PREFIX.. ARGS..`: its output, checked for success.
fn agent_cmd(prefix: &[&std::ffi::OsStr], args: &[&str]) -> Vec<u8> {
    let out = Command::new(AGENT)
        .args(prefix)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn clipboard_without_a_session_is_the_agents_own_both_ways() {
    let agent = Agent::spawn(0);
    let local = agent.dir.join("clipboard.sock");
    let socket = agent.socket();
    let host = |args: &[&str]| {
        agent_cmd(
            &["host".as_ref(), "--socket".as_ref(), socket.as_os_str()],
            args,
        )
    };
    let guest = |args: &[&str]| {
        agent_cmd(
            &["clipboard".as_ref(), "--socket".as_ref(), local.as_os_str()],
            args,
        )
    };
    // Host → guest: the host command ends once the agent has fetched the data, which
    // lands on the guest clipboard a moment later.
    host(&["clipboard", "set", "vom Host ✓"]);
    let readable = |want: &[u8]| {
        let out = Command::new(AGENT)
            .args(["clipboard", "--socket"])
            .arg(&local)
            .arg("get")
            .output()
            .unwrap();
        out.stdout == want
    };
    assert!(
        wait_until(Duration::from_secs(5), || readable("vom Host ✓".as_bytes())),
        "{}",
        std::fs::read_to_string(agent.dir.join("agent.log")).unwrap()
    );
    // Guest → host, through a client that stays connected and hears the grab.
    let client = AgentClient::connect(agent.endpoint(), ClientConfig::default()).unwrap();
    guest(&["set", "from the guest"]);
    // The hello's grab (of the host's data) may be the one heard first: a get for it
    // races the guest's newer grab and is refused as stale; the newest one answers.
    assert!(wait_until(Duration::from_secs(5), || client
        .clipboard_get(vireo_guest_agent::protocol::ClipboardFormat::Text)
        .is_ok_and(|d| d == b"from the guest")));
    // And a new host connection (the agent serves one at a time) is told what the guest
    // holds.
    drop(client);
    assert_eq!(host(&["clipboard", "get"]), b"from the guest");
    // No PNG there: a clear error, not an empty answer.
    let out = Command::new(AGENT)
        .args(["clipboard", "--socket"])
        .arg(&local)
        .args(["get", "--format", "png"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds no png"));
    // Over the limit: refused with the reason, the clipboard unchanged.
    let big = agent.dir.join("big");
    std::fs::write(&big, vec![b'x'; (64 << 20) + 1]).unwrap();
    let out = Command::new(AGENT)
        .args(["clipboard", "--socket"])
        .arg(&local)
        .arg("set")
        .arg("--file")
        .arg(&big)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("clipboard text of 67108865 bytes is over the limit of 67108864 bytes"),
        "{err}"
    );
    assert_eq!(guest(&["get"]), b"from the guest");
}
