//! One host connection, as a state machine free of I/O: payloads and clock ticks in,
//! frames to send and a power action to run out. [`super::serve_connection`] drives it
//! over a socket; tests can drive it directly.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::clipboard::sync::{ClipboardSync, Outgoing};
use super::fs::link::FsLink;
use super::timesync::{SyncRound, TimeSyncConfig};
use super::{log, AgentServices};
use crate::guest_info::GuestInfo;
use crate::protocol::fs::data_reply_payload;
use crate::protocol::{
    decode_payload, encode_message, error_code, kind, Capabilities, ErrorReply, FrameError,
    FsReply, FsSharesReply, Hello, Message, PowerAction, TimeCorrection, TimeSyncReport, NO_REPLY,
    PROTOCOL_MAJOR, PROTOCOL_MINOR,
};
use crate::util::error_chain;

/// What this agent offers.
pub const AGENT_CAPABILITIES: Capabilities = Capabilities::INFO
    .union(Capabilities::POWER)
    .union(Capabilities::TIME)
    .union(Capabilities::CLIPBOARD)
    .union(Capabilities::DISPLAY);

pub struct Session<'a> {
    services: &'a AgentServices,
    /// The connection replaced an earlier one (a transport reset: the VM was restored),
    /// so the first sync steps the clock whatever the offset.
    restored: bool,
    peer: Option<Hello>,
    next_id: u32,
    round: Option<SyncRound>,
    next_round_at: Option<Instant>,
    /// Ids of `TimeSyncNow` requests to answer when the round ends.
    report_to: Vec<u32>,
    outbox: Vec<Vec<u8>>,
    power: Option<PowerAction>,
    close: bool,
    last_report: Option<TimeSyncReport>,
    /// This connection's shared-folder channel.
    fs_link: Option<Arc<FsLink>>,
    clipboard: ClipboardSync,
}

impl<'a> Session<'a> {
    pub fn new(services: &'a AgentServices, restored: bool) -> Self {
        Self {
            services,
            restored,
            peer: None,
            next_id: 1,
            round: None,
            next_round_at: None,
            report_to: Vec::new(),
            outbox: Vec::new(),
            power: None,
            close: false,
            last_report: None,
            fs_link: None,
            clipboard: ClipboardSync::default(),
        }
    }

    pub fn set_fs_link(&mut self, link: Arc<FsLink>) {
        self.fs_link = Some(link);
    }

    fn capabilities(&self) -> Capabilities {
        if self.services.shares.is_some() {
            AGENT_CAPABILITIES.union(Capabilities::SHARED_FOLDERS)
        } else {
            AGENT_CAPABILITIES
        }
    }

    fn config(&self) -> &TimeSyncConfig {
        &self.services.time_sync
    }

    /// The host's hello, once received.
    pub fn peer(&self) -> Option<&Hello> {
        self.peer.as_ref()
    }

    pub fn last_report(&self) -> Option<TimeSyncReport> {
        self.last_report
    }

    /// Frames to write, in order.
    pub fn take_outbox(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.outbox)
    }

    /// A power action accepted: run it once the acceptance has been written.
    pub fn take_power(&mut self) -> Option<PowerAction> {
        self.power.take()
    }

    /// The connection must be closed once the outbox is written.
    pub fn should_close(&self) -> bool {
        self.close
    }

    /// When [`tick`](Self::tick) must run next.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.round {
            Some(round) => round.deadline(self.config()),
            None => self.next_round_at,
        }
    }

    fn send(&mut self, id: u32, message: &Message) {
        match encode_message(id, message) {
            Ok(frame) => self.outbox.push(frame),
            // Only an over-64-MiB message gets here; say so instead of dropping silently.
            Err(err) => {
                log(format_args!("cannot encode {:#06x}: {err}", message.kind()));
                self.send_error(id, message.kind(), error_code::FAILED, err.to_string());
            }
        }
    }

    fn send_error(&mut self, id: u32, in_reply_to_kind: u16, code: u16, text: String) {
        let reply = Message::Error(ErrorReply {
            code,
            in_reply_to_kind,
            text,
        });
        if let Ok(frame) = encode_message(id, &reply) {
            self.outbox.push(frame);
        }
    }

    fn send_all(&mut self, messages: Vec<Outgoing>) {
        for (id, message) in messages {
            self.send(id, &message);
        }
    }

    fn fresh_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        id
    }

    /// The frame decoder failed: the stream is out of sync, so say why and close.
    pub fn on_frame_error(&mut self, err: FrameError) {
        log(format_args!("closing the connection: {err}"));
        self.send_error(NO_REPLY, 0, error_code::MALFORMED, err.to_string());
        self.close = true;
    }

    pub fn on_payload(&mut self, payload: &[u8], now: Instant) {
        // The bulk of a shared folder's traffic: read data, handed on where it lies.
        if let Some((id, data)) = data_reply_payload(payload) {
            if self.peer.is_some() && self.complete_fs_data(id, data) {
                return;
            }
        }
        let envelope = match decode_payload(payload) {
            Ok(envelope) => envelope,
            Err(err) => {
                let (id, _) = err.reply_to();
                self.outbox
                    .extend(encode_message(id, &Message::Error(err.to_error_reply())));
                return;
            }
        };
        let id = envelope.id;
        let message = envelope.message;
        if self.peer.is_none() && !matches!(message, Message::Hello(_) | Message::Error(_)) {
            self.send_error(
                id,
                message.kind(),
                error_code::NO_HELLO,
                "hello first".into(),
            );
            return;
        }
        match message {
            Message::Hello(hello) => self.on_hello(id, hello, now),
            // A refused shared-folder request fails its FUSE request.
            Message::Error(_) if self.complete_fs(id, Err(libc::EIO)) => {}
            // Errors are never answered, so two peers cannot bounce errors forever.
            Message::Error(err) => {
                log(format_args!(
                    "host error for request {id} (kind {:#06x}): code {}: {}",
                    err.in_reply_to_kind, err.code, err.text
                ));
                if err.in_reply_to_kind == kind::CLIPBOARD_REQUEST {
                    self.clipboard.on_error(id);
                }
            }
            Message::Ping(data) => self.send(id, &Message::Pong(data)),
            Message::InfoRequest => match GuestInfo::gather() {
                Ok(info) => self.send(id, &Message::InfoReply(info)),
                Err(err) => {
                    let text = error_chain(&err).to_string();
                    self.send_error(id, kind::INFO_REQUEST, error_code::FAILED, text);
                }
            },
            Message::PowerRequest(action) => {
                log(format_args!("host asks for {action:?}"));
                self.send(id, &Message::PowerAccepted(action));
                self.power = Some(action);
            }
            Message::TimeSyncNow => {
                if !self.host_has(Capabilities::TIME) {
                    self.send_error(
                        id,
                        kind::TIME_SYNC_NOW,
                        error_code::NOT_SUPPORTED,
                        "the host did not offer the time capability in its hello".into(),
                    );
                    return;
                }
                self.report_to.push(id);
                if self.round.is_none() {
                    self.next_round_at = Some(now);
                    self.tick(now);
                }
            }
            Message::TimeReply(reply) => {
                let t1 = self.services.clock.now_unix_ns();
                let config = self.services.time_sync.clone();
                let matched = self
                    .round
                    .as_mut()
                    .is_some_and(|r| r.reply(&config, id, reply.host_unix_ns, t1, now));
                if matched {
                    self.tick(now);
                }
            }
            Message::FsReply(reply) => {
                if !self.complete_fs(id, Ok(reply)) {
                    log(format_args!(
                        "host answered unknown shared-folder request {id}"
                    ));
                }
            }
            Message::FsShares(shares) => match (&self.services.shares, &self.fs_link) {
                (Some(mounts), Some(link)) => {
                    mounts.attach(link);
                    let dir_plus = self.host_has(Capabilities::SHARE_DIR_PLUS);
                    let results = mounts.apply(shares.shares, dir_plus);
                    self.send(id, &Message::FsSharesReply(FsSharesReply { results }));
                }
                _ => self.send_error(
                    id,
                    kind::FS_SHARES,
                    error_code::NOT_SUPPORTED,
                    "this agent does not mount shared folders".into(),
                ),
            },
            Message::FsInvalidate(inv) => {
                if let Some(mounts) = &self.services.shares {
                    mounts.invalidate(inv);
                }
            }
            Message::ClipboardGrab(grab) => {
                let fetch_id = self.fresh_id();
                let out = self.clipboard.on_grab(grab, fetch_id);
                self.send_all(out);
            }
            Message::ClipboardRequest(request) => {
                let clipboard = &self.services.clipboard;
                let (id, reply) = self.clipboard.on_request(id, request, clipboard);
                self.send(id, &reply);
            }
            Message::ClipboardData(data) => {
                self.clipboard.on_data(id, data, &self.services.clipboard);
            }
            Message::ClipboardRelease(release) => {
                self.clipboard.on_release(release, &self.services.clipboard);
            }
            Message::DisplayStatusRequest => {
                let status = self.services.display.status();
                self.send(id, &Message::DisplayStatus(status));
            }
            Message::DisplayResize(size) => match self.services.display.resize(size) {
                Ok(()) => {
                    let status = self.services.display.status();
                    self.send(id, &Message::DisplayStatus(status));
                }
                Err(err) => {
                    let text = error_chain(&err).to_string();
                    self.send_error(id, kind::DISPLAY_RESIZE, error_code::FAILED, text);
                }
            },
            other @ (Message::Pong(_)
            | Message::InfoReply(_)
            | Message::PowerAccepted(_)
            | Message::TimeQuery
            | Message::FsRequest(_)
            | Message::FsSharesReply(_)
            | Message::TimeSyncReport(_)
            | Message::ClipboardStatus(_)
            | Message::DisplayStatus(_)) => self.send_error(
                id,
                other.kind(),
                error_code::UNEXPECTED,
                "the agent does not answer this message".into(),
            ),
        }
    }

    /// Hands the host's answer to the shared-folder request `id`, if it is one.
    fn complete_fs(&self, id: u32, result: Result<FsReply, i32>) -> bool {
        FsLink::is_ours(id)
            && self
                .fs_link
                .as_ref()
                .is_some_and(|l| l.complete(id, result))
    }

    /// Like [`complete_fs`](Self::complete_fs) for an answer read in place.
    fn complete_fs_data(&self, id: u32, data: &[u8]) -> bool {
        FsLink::is_ours(id)
            && self
                .fs_link
                .as_ref()
                .is_some_and(|l| l.complete_data(id, data))
    }

    fn host_has(&self, caps: Capabilities) -> bool {
        self.peer
            .as_ref()
            .is_some_and(|p| p.capabilities.contains(caps))
    }

    fn on_hello(&mut self, id: u32, hello: Hello, now: Instant) {
        if hello.major != PROTOCOL_MAJOR {
            self.send_error(
                id,
                kind::HELLO,
                error_code::UNSUPPORTED_VERSION,
                format!(
                    "agent speaks protocol {PROTOCOL_MAJOR}.{PROTOCOL_MINOR}, host {}.{}",
                    hello.major, hello.minor
                ),
            );
            self.close = true;
            return;
        }
        log(format_args!(
            "host hello: {} protocol {}.{}, capabilities {:?}",
            hello.software,
            hello.major,
            hello.minor,
            hello.capabilities.names()
        ));
        let first = self.peer.is_none();
        self.peer = Some(hello);
        self.send(
            id,
            &Message::Hello(Hello {
                major: PROTOCOL_MAJOR,
                minor: PROTOCOL_MINOR,
                capabilities: self.capabilities(),
                software: concat!("vireo-agent ", env!("CARGO_PKG_VERSION")).into(),
            }),
        );
        if first && self.host_has(Capabilities::CLIPBOARD) {
            let out = self.clipboard.on_hello(&self.services.clipboard);
            self.send_all(out);
        }
        if first && self.host_has(Capabilities::DISPLAY) {
            let status = self.services.display.status();
            self.send(NO_REPLY, &Message::DisplayStatus(status));
        }
        // Sync at once on connect (and at once after a reset, when `restored`).
        if first && self.host_has(Capabilities::TIME) {
            self.next_round_at = Some(now);
            self.tick(now);
        }
    }

    /// Advances time sync: times out a query, sends the next one, ends a round, starts a
    /// round that is due.
    pub fn tick(&mut self, now: Instant) {
        if self.host_has(Capabilities::CLIPBOARD) {
            let out = self.clipboard.poll(&self.services.clipboard);
            self.send_all(out);
        }
        let config = self.services.time_sync.clone();
        if self.round.is_none() && self.next_round_at.is_some_and(|t| t <= now) {
            self.round = Some(SyncRound::new(self.restored));
        }
        let Some(round) = self.round.as_mut() else {
            return;
        };
        round.tick(&config, now);
        if round.wants_query(&config) {
            let id = self.fresh_id();
            let t0 = self.services.clock.now_unix_ns();
            if let Some(round) = self.round.as_mut() {
                round.query_sent(id, now, t0);
            }
            self.send(id, &Message::TimeQuery);
        } else if round.is_done(&config) {
            let decision = round.decide(&config);
            let forced = round.force_step;
            self.round = None;
            self.next_round_at = Some(now + config.interval);
            self.finish_round(decision, forced);
        }
    }

    fn finish_round(&mut self, decision: super::timesync::Decision, forced: bool) {
        let clock = &self.services.clock;
        let (offset_ns, round_trip) = decision
            .best
            .map_or((0, Duration::ZERO), |s| (s.offset_ns, s.round_trip));
        let applied = match decision.correction {
            TimeCorrection::Stepped => clock.step(offset_ns).map(|()| "stepped"),
            TimeCorrection::Slewed => clock.slew(offset_ns).map(|()| "slewing"),
            TimeCorrection::None => Ok("within tolerance, left"),
            TimeCorrection::NoSample => Ok("no usable sample, left"),
        };
        let correction = match applied {
            Ok(what) => {
                log(format_args!(
                    "time: {what} the clock{} (offset {:+.3} ms, round trip {} µs, {}/{} samples rejected)",
                    if forced && decision.correction == TimeCorrection::Stepped { " after a transport reset" } else { "" },
                    offset_ns as f64 / 1e6,
                    round_trip.as_micros(),
                    decision.rejected,
                    decision.taken,
                ));
                decision.correction
            }
            Err(err) => {
                log(format_args!(
                    "time: cannot correct an offset of {:+.3} ms: {}",
                    offset_ns as f64 / 1e6,
                    error_chain(&err)
                ));
                TimeCorrection::None
            }
        };
        if decision.best.is_some() {
            // Only a round with a sample ends the forced step after a restore.
            self.restored = false;
        }
        let report = TimeSyncReport {
            offset_ns,
            round_trip_ns: u64::try_from(round_trip.as_nanos()).unwrap_or(u64::MAX),
            correction,
            samples: decision.taken,
            rejected: decision.rejected,
            guest_unix_ns: clock.now_unix_ns(),
        };
        self.last_report = Some(report);
        for id in std::mem::take(&mut self.report_to) {
            self.send(id, &Message::TimeSyncReport(report));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::agent::clipboard::{ClipboardMode, GuestClipboard};
    use crate::agent::clock::SimulatedClock;
    use crate::agent::display::DisplayProbe;
    use crate::agent::power::RecordingPower;
    use crate::protocol::{ClipboardData, ClipboardFormat, ClipboardGrab, DEFAULT_CLIPBOARD_LIMIT};
    use crate::protocol::{Envelope, FrameDecoder};

    fn services() -> AgentServices {
        AgentServices {
            clock: Arc::new(SimulatedClock::default()),
            power: Arc::new(RecordingPower::default()),
            time_sync: TimeSyncConfig::default(),
            shares: None,
            clipboard: Arc::new(
                GuestClipboard::start(ClipboardMode::Memory, DEFAULT_CLIPBOARD_LIMIT).unwrap(),
            ),
            display: DisplayProbe::default(),
        }
    }

    fn payload(id: u32, message: &Message) -> Vec<u8> {
        let frame = encode_message(id, message).unwrap();
        frame[crate::protocol::frame::FRAME_HEADER_LEN..].to_vec()
    }

    fn sent(session: &mut Session<'_>) -> Vec<Envelope> {
        let mut decoder = FrameDecoder::new();
        for frame in session.take_outbox() {
            decoder.push(&frame);
        }
        let mut out = Vec::new();
        while let Some(p) = decoder.next_frame().unwrap() {
            out.push(decode_payload(&p).unwrap());
        }
        out
    }

    fn hello(major: u16, capabilities: Capabilities) -> Message {
        Message::Hello(Hello {
            major,
            minor: 7,
            capabilities,
            software: "test host".into(),
        })
    }

    fn error_code_of(env: &Envelope) -> u16 {
        match &env.message {
            Message::Error(e) => e.code,
            other => panic!("not an error: {other:?}"),
        }
    }

    #[test]
    fn requests_before_the_hello_are_refused() {
        let services = services();
        let mut session = Session::new(&services, false);
        session.on_payload(&payload(5, &Message::Ping(vec![1])), Instant::now());
        let out = sent(&mut session);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].id, 5);
        assert_eq!(error_code_of(&out[0]), error_code::NO_HELLO);
        assert!(!session.should_close());
    }

    #[test]
    fn other_major_version_is_refused_and_closed() {
        let services = services();
        let mut session = Session::new(&services, false);
        session.on_payload(
            &payload(1, &hello(PROTOCOL_MAJOR + 1, Capabilities::TIME)),
            Instant::now(),
        );
        let out = sent(&mut session);
        assert_eq!(error_code_of(&out[0]), error_code::UNSUPPORTED_VERSION);
        assert!(session.should_close());
        assert!(session.peer().is_none());
    }

    #[test]
    fn newer_minor_hello_is_answered_and_time_sync_starts() {
        let services = services();
        let mut session = Session::new(&services, false);
        session.on_payload(
            &payload(1, &hello(PROTOCOL_MAJOR, Capabilities(u32::MAX))),
            Instant::now(),
        );
        let out = sent(&mut session);
        assert!(matches!(
            &out[0],
            Envelope { id: 1, message: Message::Hello(h) } if h.capabilities == AGENT_CAPABILITIES
        ));
        // The guest's clipboard state (empty) and display status follow, as events.
        assert!(matches!(
            out[1],
            Envelope { id: 0, message: Message::ClipboardRelease(r) } if r.serial == 0
        ));
        assert!(matches!(
            out[2],
            Envelope {
                id: 0,
                message: Message::ClipboardStatus(_)
            }
        ));
        assert!(matches!(
            out[3],
            Envelope {
                id: 0,
                message: Message::DisplayStatus(_)
            }
        ));
        // The first time query follows at once, with an id of the agent's own.
        assert!(matches!(out[4].message, Message::TimeQuery));
        assert_ne!(out[4].id, 0);
    }

    #[test]
    fn clipboard_grab_is_fetched_and_display_requests_answered() {
        let services = services();
        let mut session = Session::new(&services, false);
        let now = Instant::now();
        session.on_payload(&payload(1, &hello(PROTOCOL_MAJOR, HOST_CLIPBOARD)), now);
        sent(&mut session);
        let grab = ClipboardGrab {
            serial: 3,
            formats: vec![ClipboardFormat::Text],
        };
        session.on_payload(&payload(0, &Message::ClipboardGrab(grab)), now);
        let out = sent(&mut session);
        let [Envelope {
            id,
            message: Message::ClipboardRequest(request),
        }] = &out[..]
        else {
            panic!("{out:?}")
        };
        assert_eq!(request.serial, 3);
        let data = ClipboardData {
            serial: 3,
            format: ClipboardFormat::Text,
            data: b"from the host".to_vec(),
        };
        session.on_payload(&payload(*id, &Message::ClipboardData(data)), now);
        let deadline = Instant::now() + Duration::from_secs(5);
        while services.clipboard.snapshot().generation == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let snapshot = services.clipboard.snapshot();
        assert_eq!(
            snapshot.data(ClipboardFormat::Text, DEFAULT_CLIPBOARD_LIMIT),
            Ok(&b"from the host"[..])
        );
        // Its own data is not announced back.
        session.tick(now);
        assert!(sent(&mut session).is_empty());

        session.on_payload(&payload(8, &Message::DisplayStatusRequest), now);
        let out = sent(&mut session);
        assert!(matches!(
            out[..],
            [Envelope {
                id: 8,
                message: Message::DisplayStatus(_)
            }]
        ));
        // A status is the agent's to send, not the host's.
        let status = services.display.status();
        session.on_payload(&payload(9, &Message::DisplayStatus(status)), now);
        assert_eq!(
            error_code_of(&sent(&mut session)[0]),
            error_code::UNEXPECTED
        );
    }

    const HOST_CLIPBOARD: Capabilities = Capabilities::CLIPBOARD;

    #[test]
    fn host_without_time_gets_no_queries_and_an_error_for_sync_now() {
        let services = services();
        let mut session = Session::new(&services, false);
        let now = Instant::now();
        session.on_payload(&payload(1, &hello(PROTOCOL_MAJOR, Capabilities::NONE)), now);
        session.tick(now + Duration::from_secs(60));
        assert_eq!(sent(&mut session).len(), 1);
        assert_eq!(session.deadline(), None);
        session.on_payload(&payload(2, &Message::TimeSyncNow), now);
        assert_eq!(
            error_code_of(&sent(&mut session)[0]),
            error_code::NOT_SUPPORTED
        );
    }

    #[test]
    fn power_is_accepted_then_handed_out_once() {
        let services = services();
        let mut session = Session::new(&services, false);
        let now = Instant::now();
        session.on_payload(&payload(1, &hello(PROTOCOL_MAJOR, Capabilities::NONE)), now);
        session.on_payload(
            &payload(9, &Message::PowerRequest(PowerAction::Reboot)),
            now,
        );
        let out = sent(&mut session);
        assert_eq!(out[1].id, 9);
        assert_eq!(out[1].message, Message::PowerAccepted(PowerAction::Reboot));
        assert_eq!(session.take_power(), Some(PowerAction::Reboot));
        assert_eq!(session.take_power(), None);
    }

    #[test]
    fn oversized_frame_closes_with_an_error() {
        let services = services();
        let mut session = Session::new(&services, false);
        session.on_frame_error(FrameError::TooLarge {
            len: 1 << 31,
            max: 1 << 26,
        });
        assert_eq!(error_code_of(&sent(&mut session)[0]), error_code::MALFORMED);
        assert!(session.should_close());
    }
}
