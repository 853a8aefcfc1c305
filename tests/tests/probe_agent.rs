//! The agent protocol between the host and a guest over real virtio-vsock: the probe
//! guest (`probe.run=agent`, the protocol library built `no_std`) behind `vireo-vmm`'s
//! hybrid vsock socket, reached by the host client library (`host::AgentClient`: hello,
//! info, ping, time sync, power) and by a raw protocol peer for the clipboard (grab →
//! request → data in both directions, stale serials, no echo, 10 MiB each way) and for
//! hostile input (unknown kinds, malformed bodies, requests before the hello, an oversized
//! frame, then a new connection that works).

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use vireo_cpu_bench::{fill_disk_pattern, sha256, to_hex};
use vireo_e2e::engine::{s, vmm_binary, LiveGuest, ProbeLine};
use vireo_e2e::probe_guest::probe_guest_elf;
use vireo_e2e::report;
use vireo_e2e::temp::TempDir;
use vireo_e2e::vsock_host;
use vireo_guest_agent::host::{AgentClient, ClientConfig, Endpoint};
use vireo_guest_agent::protocol::{
    decode_payload, encode_message, encode_raw_payload, error_code, kind, Capabilities,
    ClipboardData, ClipboardFormat, ClipboardGrab, ClipboardRequest, Envelope, FrameDecoder, Hello,
    Message, PowerAction, TimeCorrection, AGENT_VSOCK_PORT, NO_REPLY, PROTOCOL_MAJOR,
    PROTOCOL_MINOR,
};
use vireo_vmm::exit::code;

const BOOT: Duration = Duration::from_secs(60);
const REPLY: Duration = Duration::from_secs(20);

fn socket(dir: &TempDir) -> PathBuf {
    dir.0.join("v.sock")
}

/// The probe serving the agent protocol behind `socket`, up and listening.
fn spawn_agent(socket: &Path, extra: &str) -> LiveGuest {
    let mut guest = LiveGuest::spawn(Command::new(vmm_binary()).args([
        "--kernel",
        s(&probe_guest_elf()),
        "--memory",
        "256M",
        "--vsock",
        &format!("cid=3,socket={}", socket.display()),
        "--cmdline",
        &format!("probe.run=agent {extra}"),
    ]));
    assert!(
        guest.wait_for("agent_ready", BOOT).is_some(),
        "{:#?}",
        guest.seen
    );
    guest
}

/// The last `tag` line the guest printed, waiting for it if needed.
fn wait_line(guest: &mut LiveGuest, tag: &str) -> ProbeLine {
    let needle = format!("VIREO-PROBE {tag} ");
    if !guest.seen.iter().any(|l| l.starts_with(&needle)) {
        guest
            .wait_for(&needle, BOOT + REPLY)
            .unwrap_or_else(|| panic!("no {tag} line in {:#?}", guest.seen));
    }
    guest
        .seen
        .iter()
        .rev()
        .find_map(|l| ProbeLine::parse(l).filter(|p| p.tag == tag))
        .unwrap()
}

fn digest(data: &[u8]) -> String {
    String::from_utf8(to_hex(&sha256(data)).to_vec()).unwrap()
}

/// The probe's `pattern_text` (agent.rs), rebuilt here.
fn pattern_text(len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    fill_disk_pattern(7, 0, &mut data);
    data.iter_mut().for_each(|b| *b = b'a' + *b % 26);
    data
}

/// A host peer speaking the protocol by hand, to see every message the guest sends.
struct RawPeer {
    stream: UnixStream,
    decoder: FrameDecoder,
}

impl RawPeer {
    fn connect(socket: &Path) -> RawPeer {
        let (stream, _) = vsock_host::connect(socket, AGENT_VSOCK_PORT).expect("CONNECT 7000");
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        RawPeer {
            stream,
            decoder: FrameDecoder::new(),
        }
    }

    fn send(&mut self, id: u32, message: &Message) {
        self.stream
            .write_all(&encode_message(id, message).unwrap())
            .unwrap();
    }

    fn send_raw(&mut self, kind: u16, id: u32, body: &[u8]) {
        let payload = encode_raw_payload(kind, id, body);
        let mut frame = (payload.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&payload);
        self.stream.write_all(&frame).unwrap();
    }

    /// The next message within `limit`; `None` on timeout; panics on a closed stream.
    fn next_within(&mut self, limit: Duration) -> Option<Envelope> {
        let end = Instant::now() + limit;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            if let Some(payload) = self.decoder.next_frame().expect("frames decode") {
                return Some(decode_payload(&payload).expect("the guest's messages decode"));
            }
            if Instant::now() >= end {
                return None;
            }
            match self.stream.read(&mut buf) {
                Ok(0) => panic!("the guest closed the connection"),
                Ok(n) => self.decoder.push(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    fn next(&mut self) -> Envelope {
        self.next_within(REPLY).expect("a message from the guest")
    }

    /// Hello both ways; returns the guest's.
    fn hello(&mut self, capabilities: Capabilities) -> Hello {
        self.send(
            1,
            &Message::Hello(Hello {
                major: PROTOCOL_MAJOR,
                minor: PROTOCOL_MINOR,
                capabilities,
                software: "probe_agent test".into(),
            }),
        );
        let reply = self.next();
        assert_eq!(reply.id, 1);
        match reply.message {
            Message::Hello(hello) => hello,
            other => panic!("expected hello, got {other:?}"),
        }
    }

    /// Reads until the stream ends (the guest closed it) or `limit` passes; returns
    /// whether it ended.
    fn closed_within(&mut self, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        let mut buf = [0u8; 4096];
        while Instant::now() < end {
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return true,
            }
        }
        false
    }
}

fn expect_error(envelope: Envelope, id: u32, code: u16) {
    assert_eq!(envelope.id, id, "{envelope:?}");
    match envelope.message {
        Message::Error(e) => assert_eq!(e.code, code, "{e:?}"),
        other => panic!("expected error {code}, got {other:?}"),
    }
}

#[test]
fn host_client_hello_info_ping_time_and_shutdown() {
    if !report::require_kvm("probe_agent::host_client_hello_info_ping_time_and_shutdown") {
        return;
    }
    let dir = TempDir::new("agent-client");
    let mut guest = spawn_agent(&socket(&dir), "");
    let endpoint = Endpoint::HybridVsock {
        path: socket(&dir),
        port: AGENT_VSOCK_PORT,
    };
    let config = ClientConfig {
        call_timeout: REPLY,
        connect_timeout: REPLY,
        ..ClientConfig::default()
    };
    let client = AgentClient::connect(endpoint, config).expect("the probe agent answers");
    let hello = client.peer().expect("hello");
    assert!(hello.software.starts_with("vireo-probe-guest"), "{hello:?}");
    for cap in [
        Capabilities::INFO,
        Capabilities::POWER,
        Capabilities::TIME,
        Capabilities::CLIPBOARD,
    ] {
        assert!(hello.capabilities.contains(cap), "{hello:?}");
    }

    let info = client.info().unwrap();
    assert_eq!(info.os_pretty_name, "Vireo probe guest");
    assert_eq!(info.hostname, "vireo-probe");
    // 256 MiB of RAM, less what the memory map reserves.
    assert!(
        (200 * 1024..=256 * 1024).contains(&info.mem_total_kib),
        "{info:?}"
    );
    assert!(info.mem_available_kib > 0 && info.mem_available_kib < info.mem_total_kib);
    assert!(info.uptime_ms < 600_000, "{info:?}");

    assert!(client.ping().unwrap() < REPLY);

    // The probe's clock starts from the CMOS RTC (whole seconds, host UTC), so the first
    // sync finds it within a couple of seconds of the host (this also checks the RTC's
    // date arithmetic); a second sync right after finds it within a millisecond or so.
    let first = client.time_sync_now().unwrap();
    assert!(first.samples >= 1, "{first:?}");
    assert!(first.offset_ns.abs() < 2_500_000_000, "{first:?}");
    assert!(first.round_trip_ns < 50_000_000, "{first:?}");
    let second = client.time_sync_now().unwrap();
    assert!(
        matches!(
            second.correction,
            TimeCorrection::None | TimeCorrection::Stepped
        ),
        "{second:?}"
    );
    assert!(second.offset_ns.abs() < 5_000_000, "{second:?}");
    let host_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    assert!(
        (host_now - second.guest_unix_ns).abs() < 1_000_000_000,
        "{second:?}"
    );
    let line = wait_line(&mut guest, "agent_time");
    assert!(line.u64("samples").unwrap() >= 1);

    client.shutdown().unwrap();
    let status = guest.wait_exit(BOOT).expect("the guest powers off");
    assert_eq!(status.code(), Some(code::POWER_OFF), "{:#?}", guest.seen);
    assert!(guest
        .seen
        .iter()
        .any(|l| l.contains("agent_power action=Shutdown")));
}

#[test]
fn clipboard_both_ways_with_serials_and_no_echo() {
    if !report::require_kvm("probe_agent::clipboard_both_ways_with_serials_and_no_echo") {
        return;
    }
    let dir = TempDir::new("agent-clip");
    let guest_text = "Grüße vom Gast ✓ — 訪客";
    let hex: String = guest_text.bytes().map(|b| format!("{b:02x}")).collect();
    let mut guest = spawn_agent(&socket(&dir), &format!("probe.agent_copy_hex={hex}"));
    let mut peer = RawPeer::connect(&socket(&dir));
    let hello = peer.hello(Capabilities::CLIPBOARD);
    assert!(hello.capabilities.contains(Capabilities::CLIPBOARD));

    // The guest owns its clipboard from the start and says so after the hello.
    let grab = peer.next();
    assert_eq!(grab.id, NO_REPLY);
    let Message::ClipboardGrab(ClipboardGrab { serial, formats }) = grab.message else {
        panic!("expected the guest's grab, got {grab:?}");
    };
    assert_eq!(formats, vec![ClipboardFormat::Text]);

    // Guest → host: ask for it under its serial.
    peer.send(
        5,
        &Message::ClipboardRequest(ClipboardRequest {
            serial,
            format: ClipboardFormat::Text,
        }),
    );
    let data = peer.next();
    assert_eq!(data.id, 5);
    match data.message {
        Message::ClipboardData(d) => {
            assert_eq!(d.serial, serial);
            assert_eq!(String::from_utf8(d.data).unwrap(), guest_text);
        }
        other => panic!("expected data, got {other:?}"),
    }
    // A stale serial gets an error, not old data.
    peer.send(
        6,
        &Message::ClipboardRequest(ClipboardRequest {
            serial: serial.wrapping_add(9),
            format: ClipboardFormat::Text,
        }),
    );
    expect_error(peer.next(), 6, error_code::FAILED);

    // Host → guest: a grab; the guest asks for the text (its own first choice), gets it.
    let host_text = "héllo from the host, 主机 🖥";
    peer.send(
        NO_REPLY,
        &Message::ClipboardGrab(ClipboardGrab {
            serial: 100,
            formats: vec![ClipboardFormat::Png, ClipboardFormat::Text],
        }),
    );
    let request = peer.next();
    let Message::ClipboardRequest(ClipboardRequest {
        serial: 100,
        format,
    }) = request.message
    else {
        panic!("expected a request for serial 100, got {request:?}");
    };
    assert_eq!(format, ClipboardFormat::Text);
    peer.send(
        request.id,
        &Message::ClipboardData(ClipboardData {
            serial: 100,
            format,
            data: host_text.as_bytes().to_vec(),
        }),
    );
    let line = wait_line(&mut guest, "agent_clipboard_in");
    assert_eq!(line.u64("serial"), Some(100));
    assert_eq!(
        line.get("sha256"),
        Some(digest(host_text.as_bytes()).as_str())
    );

    // The newest grab won: the guest no longer serves its old serial.
    peer.send(
        7,
        &Message::ClipboardRequest(ClipboardRequest {
            serial,
            format: ClipboardFormat::Text,
        }),
    );
    expect_error(peer.next(), 7, error_code::FAILED);
    // And it never grabs back what it received: no message at all for 2 s.
    let mut echoes = 0;
    let quiet_until = Instant::now() + Duration::from_secs(2);
    while let Some(m) = peer.next_within(quiet_until.saturating_duration_since(Instant::now())) {
        echoes += 1;
        eprintln!("unexpected: {m:?}");
    }
    assert_eq!(echoes, 0);

    // Data for a request the guest did not make is ignored (and logged).
    peer.send(
        999,
        &Message::ClipboardData(ClipboardData {
            serial: 100,
            format: ClipboardFormat::Text,
            data: b"unasked".to_vec(),
        }),
    );
    wait_line(&mut guest, "agent_clipboard_stale");

    // 10 MiB host → guest.
    let big = pattern_text(10 << 20);
    peer.send(
        NO_REPLY,
        &Message::ClipboardGrab(ClipboardGrab {
            serial: 101,
            formats: vec![ClipboardFormat::Text],
        }),
    );
    let request = peer.next();
    assert!(matches!(
        request.message,
        Message::ClipboardRequest(ClipboardRequest { serial: 101, .. })
    ));
    peer.send(
        request.id,
        &Message::ClipboardData(ClipboardData {
            serial: 101,
            format: ClipboardFormat::Text,
            data: big.clone(),
        }),
    );
    let needle = format!(
        "agent_clipboard_in serial=101 format=text bytes={}",
        big.len()
    );
    guest
        .wait_for(&needle, BOOT + REPLY)
        .unwrap_or_else(|| panic!("no 10 MiB clipboard in {:#?}", guest.seen));
    let line = wait_line(&mut guest, "agent_clipboard_in");
    assert_eq!(line.get("sha256"), Some(digest(&big).as_str()));
    drop(guest.kill());
}

#[test]
fn ten_mib_guest_clipboard_reaches_the_host() {
    if !report::require_kvm("probe_agent::ten_mib_guest_clipboard_reaches_the_host") {
        return;
    }
    let dir = TempDir::new("agent-clip-big");
    let guest = spawn_agent(&socket(&dir), "probe.agent_copy_kib=10240");
    let mut peer = RawPeer::connect(&socket(&dir));
    peer.hello(Capabilities::CLIPBOARD);
    let grab = peer.next();
    let Message::ClipboardGrab(ClipboardGrab { serial, .. }) = grab.message else {
        panic!("expected a grab, got {grab:?}");
    };
    peer.send(
        2,
        &Message::ClipboardRequest(ClipboardRequest {
            serial,
            format: ClipboardFormat::Text,
        }),
    );
    let data = peer.next();
    assert_eq!(data.id, 2);
    let Message::ClipboardData(d) = data.message else {
        panic!("expected data");
    };
    assert_eq!(d.data.len(), 10 << 20);
    assert!(
        d.data == pattern_text(10 << 20),
        "the data differs from the pattern"
    );
    drop(guest.kill());
}

#[test]
fn hostile_messages_get_errors_and_a_new_connection_works() {
    if !report::require_kvm("probe_agent::hostile_messages_get_errors_and_a_new_connection_works") {
        return;
    }
    let dir = TempDir::new("agent-hostile");
    let mut guest = spawn_agent(&socket(&dir), "");
    let mut peer = RawPeer::connect(&socket(&dir));

    // Before the hello: refused, connection kept.
    peer.send(3, &Message::InfoRequest);
    expect_error(peer.next(), 3, error_code::NO_HELLO);
    peer.hello(Capabilities::INFO);
    // A kind from a newer peer.
    peer.send_raw(0x7f01, 9, b"whatever comes next");
    expect_error(peer.next(), 9, error_code::UNKNOWN_KIND);
    // A body that announces 200 bytes and carries 2.
    peer.send_raw(kind::PING, 10, &[200, 1, 1]);
    expect_error(peer.next(), 10, error_code::MALFORMED);
    // A message the guest never answers, sent as a request.
    peer.send(11, &Message::PowerAccepted(PowerAction::Shutdown));
    expect_error(peer.next(), 11, error_code::UNEXPECTED);
    // The connection still works.
    peer.send(12, &Message::Ping(vec![1, 2, 3]));
    let pong = peer.next();
    assert_eq!(pong.id, 12);
    assert_eq!(pong.message, Message::Pong(vec![1, 2, 3]));

    // A frame announcing 4 GiB: an error, then the guest closes the stream.
    peer.stream.write_all(&u32::MAX.to_le_bytes()).unwrap();
    let error = peer.next();
    expect_error(error, NO_REPLY, error_code::MALFORMED);
    assert!(
        peer.closed_within(REPLY),
        "the guest kept a desynchronised stream"
    );
    wait_line(&mut guest, "agent_bad_frame");

    // A new connection is served from scratch.
    let mut again = RawPeer::connect(&socket(&dir));
    again.hello(Capabilities::INFO);
    again.send(2, &Message::InfoRequest);
    assert!(matches!(again.next().message, Message::InfoReply(_)));
    // A second connection while one is open replaces it (as after a transport reset).
    let mut third = RawPeer::connect(&socket(&dir));
    third.hello(Capabilities::INFO);
    assert!(
        again.closed_within(REPLY),
        "the replaced connection stayed open"
    );
    // Only the third connection replaced one that was open: the second followed a closed one.
    assert!(
        guest.wait_for("restored=1", REPLY).is_some(),
        "{:#?}",
        guest.seen
    );
    let restored = guest
        .seen
        .iter()
        .filter(|l| l.contains("restored=1"))
        .count();
    assert_eq!(restored, 1, "{:#?}", guest.seen);
    third.send(4, &Message::Ping(vec![]));
    assert_eq!(third.next().message, Message::Pong(vec![]));
    drop(guest.kill());
}
