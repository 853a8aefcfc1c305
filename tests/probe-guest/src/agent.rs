//! The probe guest's side of the Vireo agent protocol, over virtio-vsock: what
//! `vireo-agent run` does in a Linux guest, for hosts where Linux cannot run (PVM), with
//! the same `no_std` protocol library (`vireo-guest-agent`'s `protocol`).
//!
//! It listens on the agent's port (7000), answers the host's hello (capabilities: info,
//! power, time, clipboard), info, ping and power requests, syncs its own clock with the
//! host and keeps a clipboard. A second connection replaces the first, as after a vsock
//! transport reset: that counts as "restored" (the time sync steps the clock at once and
//! the clipboard state starts over).
//!
//! Clipboard rules (the protocol's, after spice-vdagent): a grab says "I own the
//! clipboard, in these formats, under this serial"; the newest grab wins, so a grab from
//! the host ends the probe's ownership and the other way round. The probe asks for the
//! host's data at once (`ClipboardRequest` naming the host's serial), keeps it as its
//! clipboard and never grabs it back, so nothing echoes. The host asks for the probe's
//! data naming the probe's serial; a stale serial gets an error.
//!
//! Everything the host sends is decoded by the protocol library (frame size cap, typed
//! bodies); an unknown kind or a malformed body is answered with an error, an oversized
//! frame closes the connection. The `agent_*` serial lines say what happened, with a
//! SHA-256 of any clipboard data so the host can check it byte for byte.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use vireo_cpu_bench::{sha256, to_hex};
use vireo_guest_agent::protocol::{
    decode_payload, encode_message, error_code, kind, Capabilities, ClipboardData, ClipboardFormat,
    ClipboardGrab, ClipboardRequest, ErrorReply, FrameDecoder, GuestInfo, Hello, Message,
    PowerAction, TimeCorrection, TimeSyncReport, AGENT_VSOCK_PORT, NO_REPLY, PROTOCOL_MAJOR,
    PROTOCOL_MINOR,
};
use virtio_drivers::device::socket::{VsockAddr, VsockEvent, VsockEventType};
use virtio_drivers::transport::DeviceType;

use crate::arch;
use crate::boot;
use crate::pci::Pci;
use crate::probe;
use crate::rtc;
use crate::virtio;
use crate::vsock::{insufficient, Sock};

/// What the probe offers in its hello.
const CAPABILITIES: Capabilities = Capabilities::INFO
    .union(Capabilities::POWER)
    .union(Capabilities::TIME)
    .union(Capabilities::CLIPBOARD);
/// Largest piece handed to the driver per send (one tx packet).
const SEND_CHUNK: usize = 64 << 10;
/// A credit update goes to the device after consuming this much.
const CREDIT_UPDATE_AFTER: usize = 64 << 10;
/// Time sync: queries per round, the longest round trip kept, how long a query may go
/// unanswered, the offset below which the clock is left alone, and the period.
const TIME_QUERIES: u8 = 4;
const MAX_ROUND_TRIP_NS: u64 = 50_000_000;
const QUERY_TIMEOUT_MS: u64 = 500;
const TOLERANCE_NS: i64 = 1_000_000;
const SYNC_PERIOD_MS: u64 = 10_000;

/// What the agent tells its caller (the self-test screen or the `agent` command).
#[derive(Debug)]
pub enum Event {
    Connected,
    Disconnected,
    /// The host's clipboard arrived (it owns it now).
    ClipboardFromHost(ClipboardFormat, Vec<u8>),
    /// The host asked for a shutdown or reboot; the acceptance has been sent.
    Power(PowerAction),
}

/// The probe's wall clock: the RTC at boot plus the TSC since, plus what time syncs added.
struct GuestClock {
    base_ns: i128,
    base_tsc: u64,
    tsc_khz: u64,
    correction_ns: i128,
}

impl GuestClock {
    fn new(tsc_khz: u64) -> Self {
        Self {
            base_ns: i128::from(rtc::unix_seconds()) * 1_000_000_000,
            base_tsc: arch::rdtsc(),
            tsc_khz: tsc_khz.max(1),
            correction_ns: 0,
        }
    }

    fn now_ns(&self) -> i64 {
        let ticks = arch::rdtsc().wrapping_sub(self.base_tsc);
        let elapsed = i128::from(ticks) * 1_000_000 / i128::from(self.tsc_khz);
        (self.base_ns + elapsed + self.correction_ns) as i64
    }

    fn step(&mut self, offset_ns: i64) {
        self.correction_ns += i128::from(offset_ns);
    }
}

/// One time-sync round: up to [`TIME_QUERIES`] queries, one at a time.
struct TimeRound {
    /// The query in flight: request id, guest time and TSC when sent.
    pending: Option<(u32, i64, u64)>,
    sent: u8,
    rejected: u8,
    /// (offset, round trip) of each accepted sample.
    samples: Vec<(i64, u64)>,
    force_step: bool,
}

/// What a connection knows.
struct Conn {
    peer: VsockAddr,
    decoder: FrameDecoder,
    out: Vec<u8>,
    out_start: usize,
    host: Option<Hello>,
    next_id: u32,
    unacked: usize,
    round: Option<TimeRound>,
    next_sync_tsc: Option<u64>,
    report_to: Vec<u32>,
    /// Our request for the host's clipboard: (request id, host serial).
    clipboard_request: Option<(u32, u32)>,
    restored: bool,
    frames: u64,
}

/// The probe's clipboard.
#[derive(Default)]
struct Clipboard {
    /// What the probe owns: its serial, format and data.
    own: Option<(u32, ClipboardFormat, Vec<u8>)>,
    next_serial: u32,
    /// The host's current grab.
    host_serial: Option<u32>,
}

pub struct Agent {
    sock: Sock,
    port: u32,
    conn: Option<Conn>,
    clock: GuestClock,
    clipboard: Clipboard,
    events: Vec<Event>,
    rx: Vec<u8>,
    mem_total: u64,
}

fn hex_digest(data: &[u8]) -> String {
    String::from(core::str::from_utf8(&to_hex(&sha256(data))).unwrap_or("?"))
}

fn format_name(format: ClipboardFormat) -> &'static str {
    match format {
        ClipboardFormat::Text => "text",
        ClipboardFormat::Png => "png",
    }
}

impl Agent {
    /// Opens the vsock device and listens on the agent port; `None` without a device.
    pub fn open(pci: &mut Pci, tsc_khz: u64, mem_total: u64) -> Option<Agent> {
        virtio::find(pci, DeviceType::Socket, 0)?;
        let mut sock = Sock::open(pci, tsc_khz)?;
        sock.mgr.listen(AGENT_VSOCK_PORT);
        probe!("agent_listening port={AGENT_VSOCK_PORT}");
        Some(Agent {
            sock,
            port: AGENT_VSOCK_PORT,
            conn: None,
            clock: GuestClock::new(tsc_khz),
            clipboard: Clipboard::default(),
            events: Vec::new(),
            rx: vec![0; 64 << 10],
            mem_total,
        })
    }

    pub fn connected(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| c.host.is_some())
    }

    /// Makes `data` the guest's clipboard and announces it to the host.
    pub fn copy(&mut self, format: ClipboardFormat, data: Vec<u8>) {
        self.clipboard.next_serial = self.clipboard.next_serial.wrapping_add(1);
        let serial = self.clipboard.next_serial;
        probe!(
            "agent_clipboard_copy serial={serial} format={} bytes={} sha256={}",
            format_name(format),
            data.len(),
            hex_digest(&data)
        );
        self.clipboard.own = Some((serial, format, data));
        self.clipboard.host_serial = None;
        self.announce_grab();
    }

    /// Tells a connected host what the probe owns, if anything.
    fn announce_grab(&mut self) {
        let Some((serial, format, _)) = &self.clipboard.own else {
            return;
        };
        let grab = Message::ClipboardGrab(ClipboardGrab {
            serial: *serial,
            formats: vec![*format],
        });
        if let Some(conn) = self.conn.as_mut().filter(|c| c.host.is_some()) {
            conn.send(NO_REPLY, &grab);
        }
    }

    /// Does everything that is due: sends what is queued, takes what arrived, answers it,
    /// runs the time sync. Returns what the caller should know.
    pub fn poll(&mut self) -> Vec<Event> {
        self.flush_out();
        while let Ok(Some(event)) = self.sock.mgr.poll() {
            self.on_vsock_event(event);
        }
        self.tick_time();
        self.flush_out();
        core::mem::take(&mut self.events)
    }

    /// Polls until nothing is left to send (or a second has passed): before a power-off.
    pub fn drain(&mut self) {
        let start = arch::rdtsc();
        let limit = self.sock.tsc_khz.max(1) * 1000;
        while self
            .conn
            .as_ref()
            .is_some_and(|c| c.out_start < c.out.len())
            && arch::rdtsc().wrapping_sub(start) < limit
        {
            self.poll();
        }
    }

    fn on_vsock_event(&mut self, event: VsockEvent) {
        if event.destination.port != self.port {
            return;
        }
        let peer = event.source;
        match event.event_type {
            VsockEventType::ConnectionRequest => self.accept(peer),
            VsockEventType::Received { .. } if self.is_peer(peer) => self.receive(),
            VsockEventType::Disconnected { .. } if self.is_peer(peer) => {
                let _ = self.sock.mgr.force_close(peer, self.port);
                self.drop_conn("peer_closed");
            }
            VsockEventType::Disconnected { .. } => {
                let _ = self.sock.mgr.force_close(peer, self.port);
            }
            _ => {}
        }
    }

    fn is_peer(&self, peer: VsockAddr) -> bool {
        self.conn.as_ref().is_some_and(|c| c.peer == peer)
    }

    fn accept(&mut self, peer: VsockAddr) {
        // A new connection while one is open: the host lost the old one (a restore's
        // transport reset, or it restarted). Start over, as the Linux agent does.
        let restored = self.conn.is_some();
        if let Some(old) = self.conn.take() {
            let _ = self.sock.mgr.force_close(old.peer, self.port);
            probe!("agent_replaced old_port={}", old.peer.port);
        }
        if restored {
            self.clipboard.host_serial = None;
        }
        probe!(
            "agent_connected peer_cid={} peer_port={} restored={}",
            peer.cid,
            peer.port,
            u8::from(restored)
        );
        self.conn = Some(Conn {
            peer,
            decoder: FrameDecoder::new(),
            out: Vec::new(),
            out_start: 0,
            host: None,
            next_id: 0,
            unacked: 0,
            round: None,
            next_sync_tsc: None,
            report_to: Vec::new(),
            clipboard_request: None,
            restored,
            frames: 0,
        });
    }

    fn drop_conn(&mut self, why: &str) {
        if let Some(conn) = self.conn.take() {
            probe!("agent_disconnected reason={why} frames={}", conn.frames);
            self.events.push(Event::Disconnected);
        }
    }

    fn receive(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let peer = conn.peer;
        loop {
            let n = self
                .sock
                .mgr
                .recv(peer, self.port, &mut self.rx)
                .unwrap_or_default();
            if n == 0 {
                break;
            }
            conn.decoder.push(&self.rx[..n]);
            conn.unacked += n;
            if conn.unacked >= CREDIT_UPDATE_AFTER {
                let _ = self.sock.mgr.update_credit(peer, self.port);
                conn.unacked = 0;
            }
        }
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return;
            };
            match conn.decoder.next_frame() {
                Ok(Some(payload)) => {
                    conn.frames += 1;
                    self.on_payload(&payload);
                }
                Ok(None) => break,
                Err(error) => {
                    // The stream cannot be resynchronised: say why and close.
                    probe!("agent_bad_frame error=\"{error}\"");
                    conn.send(
                        NO_REPLY,
                        &Message::Error(ErrorReply {
                            code: error_code::MALFORMED,
                            in_reply_to_kind: 0,
                            text: format!("{error}"),
                        }),
                    );
                    self.flush_out();
                    let _ = self.sock.mgr.force_close(peer, self.port);
                    self.drop_conn("bad_frame");
                    return;
                }
            }
        }
    }

    fn on_payload(&mut self, payload: &[u8]) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let envelope = match decode_payload(payload) {
            Ok(envelope) => envelope,
            Err(error) => {
                let (id, kind) = error.reply_to();
                probe!("agent_decode_error kind={kind:#06x} id={id}");
                conn.send(id, &Message::Error(error.to_error_reply()));
                return;
            }
        };
        let (id, message) = (envelope.id, envelope.message);
        if conn.host.is_none() && !matches!(message, Message::Hello(_) | Message::Error(_)) {
            conn.error(id, message.kind(), error_code::NO_HELLO, "hello first");
            return;
        }
        match message {
            Message::Hello(hello) => self.on_hello(id, hello),
            Message::Error(error) => self.on_error(id, &error),
            Message::Ping(data) => conn.send(id, &Message::Pong(data)),
            Message::InfoRequest => {
                let info = Message::InfoReply(self.info());
                if let Some(conn) = self.conn.as_mut() {
                    conn.send(id, &info);
                }
            }
            Message::PowerRequest(action) => {
                probe!("agent_power action={action:?}");
                conn.send(id, &Message::PowerAccepted(action));
                self.events.push(Event::Power(action));
            }
            Message::TimeSyncNow => {
                conn.report_to.push(id);
                if conn.round.is_none() {
                    conn.next_sync_tsc = Some(arch::rdtsc());
                }
            }
            Message::TimeReply(reply) => self.on_time_reply(id, reply.host_unix_ns),
            Message::ClipboardGrab(grab) => self.on_host_grab(grab),
            Message::ClipboardRequest(request) => self.on_host_request(id, request),
            Message::ClipboardData(data) => self.on_host_data(id, data),
            Message::ClipboardRelease(release) => {
                if self.clipboard.host_serial == Some(release.serial) {
                    self.clipboard.host_serial = None;
                    probe!("agent_clipboard_release serial={}", release.serial);
                }
            }
            other @ (Message::Pong(_)
            | Message::InfoReply(_)
            | Message::PowerAccepted(_)
            | Message::TimeQuery
            | Message::TimeSyncReport(_)) => conn.error(
                id,
                other.kind(),
                error_code::UNEXPECTED,
                "the probe agent does not answer this message",
            ),
            // Shared folders, display, and whatever later versions add.
            other => conn.error(
                id,
                other.kind(),
                error_code::NOT_SUPPORTED,
                "the probe agent does not offer this feature",
            ),
        }
    }

    fn on_hello(&mut self, id: u32, hello: Hello) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        if hello.major != PROTOCOL_MAJOR {
            conn.error(
                id,
                kind::HELLO,
                error_code::UNSUPPORTED_VERSION,
                "the probe agent speaks another major version",
            );
            return;
        }
        probe!(
            "agent_hello software=\"{}\" major={} minor={} capabilities={:#x}",
            hello.software.escape_debug(),
            hello.major,
            hello.minor,
            hello.capabilities.0
        );
        let first = conn.host.is_none();
        let time = hello.capabilities.contains(Capabilities::TIME);
        let clipboard = hello.capabilities.contains(Capabilities::CLIPBOARD);
        conn.host = Some(hello);
        conn.send(
            id,
            &Message::Hello(Hello {
                major: PROTOCOL_MAJOR,
                minor: PROTOCOL_MINOR,
                capabilities: CAPABILITIES,
                software: concat!("vireo-probe-guest ", env!("CARGO_PKG_VERSION")).into(),
            }),
        );
        if first {
            if time {
                conn.next_sync_tsc = Some(arch::rdtsc());
            }
            self.events.push(Event::Connected);
            if clipboard {
                self.announce_grab();
            }
        }
    }

    fn on_error(&mut self, id: u32, error: &ErrorReply) {
        probe!(
            "agent_error_in id={id} kind={:#06x} code={} text=\"{}\"",
            error.in_reply_to_kind,
            error.code,
            error.text.escape_debug()
        );
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        if conn.clipboard_request.is_some_and(|(req, _)| req == id) {
            conn.clipboard_request = None;
        }
        if let Some(round) = conn.round.as_mut() {
            if round.pending.is_some_and(|(req, ..)| req == id) {
                round.pending = None;
                round.rejected += 1;
            }
        }
    }

    fn info(&self) -> GuestInfo {
        let ticks = arch::rdtsc().saturating_sub(boot::boot_tsc());
        GuestInfo {
            os_pretty_name: "Vireo probe guest".into(),
            kernel_release: env!("CARGO_PKG_VERSION").into(),
            hostname: "vireo-probe".into(),
            uptime_ms: ticks / self.sock.tsc_khz.max(1),
            mem_total_kib: self.mem_total / 1024,
            mem_available_kib: crate::heap::free() as u64 / 1024,
            addresses: Vec::new(),
        }
    }

    fn on_host_grab(&mut self, grab: ClipboardGrab) {
        // The newest grab wins: the probe's own clipboard is no longer the clipboard.
        self.clipboard.own = None;
        self.clipboard.host_serial = Some(grab.serial);
        let wanted = [ClipboardFormat::Text, ClipboardFormat::Png]
            .into_iter()
            .find(|f| grab.formats.contains(f));
        probe!(
            "agent_clipboard_grab serial={} formats={}",
            grab.serial,
            grab.formats.len()
        );
        let (Some(format), Some(conn)) = (wanted, self.conn.as_mut()) else {
            return;
        };
        let id = conn.fresh_id();
        conn.clipboard_request = Some((id, grab.serial));
        conn.send(
            id,
            &Message::ClipboardRequest(ClipboardRequest {
                serial: grab.serial,
                format,
            }),
        );
    }

    fn on_host_request(&mut self, id: u32, request: ClipboardRequest) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        match &self.clipboard.own {
            Some((serial, format, data))
                if *serial == request.serial && *format == request.format =>
            {
                probe!(
                    "agent_clipboard_out serial={serial} bytes={} sha256={}",
                    data.len(),
                    hex_digest(data)
                );
                conn.send(
                    id,
                    &Message::ClipboardData(ClipboardData {
                        serial: *serial,
                        format: *format,
                        data: data.clone(),
                    }),
                );
            }
            _ => conn.error(
                id,
                kind::CLIPBOARD_REQUEST,
                error_code::FAILED,
                "the guest does not own the clipboard under that serial in that format",
            ),
        }
    }

    fn on_host_data(&mut self, id: u32, data: ClipboardData) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let expected = conn.clipboard_request.take_if(|(req, _)| *req == id);
        let current = expected.is_some_and(|(_, serial)| {
            serial == data.serial && self.clipboard.host_serial == Some(serial)
        });
        if !current {
            probe!("agent_clipboard_stale id={id} serial={}", data.serial);
            return;
        }
        probe!(
            "agent_clipboard_in serial={} format={} bytes={} sha256={}",
            data.serial,
            format_name(data.format),
            data.data.len(),
            hex_digest(&data.data)
        );
        self.events
            .push(Event::ClipboardFromHost(data.format, data.data));
    }

    fn on_time_reply(&mut self, id: u32, host_ns: i64) {
        let now = self.clock.now_ns();
        let Some(round) = self.conn.as_mut().and_then(|c| c.round.as_mut()) else {
            return;
        };
        let Some((_, t0, _)) = round.pending.take_if(|(req, ..)| *req == id) else {
            return;
        };
        let round_trip = now.saturating_sub(t0).max(0) as u64;
        if round_trip > MAX_ROUND_TRIP_NS {
            round.rejected += 1;
            return;
        }
        // NTP's estimate: the host read its clock halfway through the round trip.
        let midpoint = t0 + (round_trip / 2) as i64;
        round
            .samples
            .push((host_ns.saturating_sub(midpoint), round_trip));
    }

    fn tick_time(&mut self) {
        let tsc_khz = self.sock.tsc_khz.max(1);
        let now_tsc = arch::rdtsc();
        let Some(conn) = self.conn.as_mut().filter(|c| c.host.is_some()) else {
            return;
        };
        if conn.round.is_none() && conn.next_sync_tsc.is_some_and(|t| t <= now_tsc) {
            conn.round = Some(TimeRound {
                pending: None,
                sent: 0,
                rejected: 0,
                samples: Vec::new(),
                force_step: conn.restored,
            });
            conn.restored = false;
        }
        let Some(round) = conn.round.as_mut() else {
            return;
        };
        if let Some((_, _, sent_tsc)) = round.pending {
            if now_tsc.wrapping_sub(sent_tsc) / tsc_khz > QUERY_TIMEOUT_MS {
                round.pending = None;
                round.rejected += 1;
            } else {
                return;
            }
        }
        if round.sent < TIME_QUERIES {
            round.sent += 1;
            let id = conn.fresh_id();
            let t0 = self.clock.now_ns();
            if let Some(round) = conn.round.as_mut() {
                round.pending = Some((id, t0, now_tsc));
            }
            conn.send(id, &Message::TimeQuery);
            return;
        }
        let Some(round) = conn.round.take() else {
            return;
        };
        conn.next_sync_tsc = Some(now_tsc + SYNC_PERIOD_MS * tsc_khz);
        let best = round.samples.iter().min_by_key(|(_, rtt)| *rtt).copied();
        let correction = match best {
            None => TimeCorrection::NoSample,
            Some((offset, _)) if round.force_step || offset.abs() > TOLERANCE_NS => {
                self.clock.step(offset);
                TimeCorrection::Stepped
            }
            Some(_) => TimeCorrection::None,
        };
        let (offset_ns, round_trip_ns) = best.unwrap_or((0, 0));
        let report = TimeSyncReport {
            offset_ns,
            round_trip_ns,
            correction,
            samples: round.sent,
            rejected: round.rejected,
            guest_unix_ns: self.clock.now_ns(),
        };
        probe!(
            "agent_time correction={:?} offset_ns={offset_ns} round_trip_ns={round_trip_ns} samples={} rejected={}",
            correction,
            round.sent,
            round.rejected
        );
        for id in core::mem::take(&mut conn.report_to) {
            conn.send(id, &Message::TimeSyncReport(report));
        }
    }

    /// Hands queued bytes to the driver as far as the host's credit goes.
    fn flush_out(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        while conn.out_start < conn.out.len() {
            let end = conn.out.len().min(conn.out_start + SEND_CHUNK);
            match self
                .sock
                .mgr
                .send(conn.peer, self.port, &conn.out[conn.out_start..end])
            {
                Ok(()) => conn.out_start = end,
                Err(e) if insufficient(&e) => break,
                Err(_) => {
                    let peer = conn.peer;
                    let _ = self.sock.mgr.force_close(peer, self.port);
                    self.drop_conn("send_failed");
                    return;
                }
            }
        }
        if conn.out_start == conn.out.len() {
            conn.out.clear();
            conn.out_start = 0;
        }
    }
}

impl Conn {
    fn fresh_id(&mut self) -> u32 {
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.next_id
    }

    fn send(&mut self, id: u32, message: &Message) {
        match encode_message(id, message) {
            Ok(frame) => self.out.extend_from_slice(&frame),
            Err(error) => probe!(
                "agent_encode_error kind={:#06x} error=\"{error}\"",
                message.kind()
            ),
        }
    }

    fn error(&mut self, id: u32, kind: u16, code: u16, text: &str) {
        probe!("agent_error_out id={id} kind={kind:#06x} code={code}");
        self.send(
            id,
            &Message::Error(ErrorReply {
                code,
                in_reply_to_kind: kind,
                text: text.into(),
            }),
        );
    }
}

/// What `probe.agent_*` set for `probe.run=agent`.
#[derive(Clone, Copy, Debug, Default)]
pub struct AgentOptions<'a> {
    /// Text the probe copies at start (hex-encoded bytes, so any UTF-8 fits a word).
    pub copy_hex: Option<&'a str>,
    /// Or that many KiB of [`pattern_text`], which the host can rebuild to check it.
    pub copy_kib: u64,
}

/// `len` bytes of lowercase letters from `vireo-cpu-bench`'s disk pattern (seed 7): text
/// (so valid UTF-8) that the host rebuilds with the same function to check a transfer.
pub fn pattern_text(len: u64) -> Vec<u8> {
    let mut data = vec![0u8; len as usize];
    vireo_cpu_bench::fill_disk_pattern(7, 0, &mut data);
    data.iter_mut().for_each(|b| *b = b'a' + *b % 26);
    data
}

fn from_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// `probe.run=agent`: serves the host until it asks for a shutdown or reboot, which it
/// returns.
pub fn run(
    pci: &mut Pci,
    options: &AgentOptions<'_>,
    tsc_khz: u64,
    mem_total: u64,
) -> Option<PowerAction> {
    let Some(mut agent) = Agent::open(pci, tsc_khz, mem_total) else {
        probe!("error agent=no_vsock_device");
        return None;
    };
    if let Some(hex) = options.copy_hex {
        match from_hex(hex) {
            Some(data) => agent.copy(ClipboardFormat::Text, data),
            None => probe!("error agent_copy_hex=not_hex"),
        }
    } else if options.copy_kib > 0 {
        agent.copy(ClipboardFormat::Text, pattern_text(options.copy_kib * 1024));
    }
    probe!("agent_ready");
    loop {
        for event in agent.poll() {
            if let Event::Power(action) = event {
                agent.drain();
                return Some(action);
            }
        }
        if crate::acpi::power_button_pressed() {
            probe!("power_button");
            agent.drain();
            return Some(PowerAction::Shutdown);
        }
        core::hint::spin_loop();
    }
}
