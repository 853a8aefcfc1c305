//! The envelope and the typed messages.
//!
//! A frame's payload is an envelope: `version: u8`, `kind: u16 LE`, `id: u32 LE`, then the
//! body, the message's fields in `postcard` encoding. The kind is outside the body so a
//! peer can skip a body it does not know and answer it with an [`ErrorReply`] naming the
//! kind: a newer peer never causes a disconnect loop.
//!
//! Kinds are grouped in families (high byte): 0x00 control, 0x01 info, 0x02 power,
//! 0x03 time, 0x04 clipboard, 0x05 shared folders, 0x06 display/mouse.

use alloc::string::String;
use alloc::vec::Vec;
use core::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::frame::{FrameError, FRAME_HEADER_LEN, MAX_FRAME_PAYLOAD};
pub use super::fs::{FsInvalidate, FsReply, FsRequest, FsShares, FsSharesReply};

/// Layout version of the envelope itself (not of the message set: see [`Hello`]).
pub const ENVELOPE_VERSION: u8 = 1;
/// `version` + `kind` + `id`.
pub const ENVELOPE_HEADER_LEN: usize = 7;

/// Request id for messages that expect no reply (events).
pub const NO_REPLY: u32 = 0;

/// Message kinds on the wire.
pub mod kind {
    // 0x00: control.
    pub const HELLO: u16 = 0x0001;
    pub const ERROR: u16 = 0x0002;
    pub const PING: u16 = 0x0003;
    pub const PONG: u16 = 0x0004;
    // 0x01: guest info.
    pub const INFO_REQUEST: u16 = 0x0101;
    pub const INFO_REPLY: u16 = 0x0102;
    // 0x02: power.
    pub const POWER_REQUEST: u16 = 0x0201;
    pub const POWER_ACCEPTED: u16 = 0x0202;
    // 0x03: time.
    pub const TIME_QUERY: u16 = 0x0301;
    pub const TIME_REPLY: u16 = 0x0302;
    pub const TIME_SYNC_NOW: u16 = 0x0303;
    pub const TIME_SYNC_REPORT: u16 = 0x0304;
    // 0x04: clipboard.
    pub const CLIPBOARD_GRAB: u16 = 0x0401;
    pub const CLIPBOARD_REQUEST: u16 = 0x0402;
    pub const CLIPBOARD_DATA: u16 = 0x0403;
    pub const CLIPBOARD_RELEASE: u16 = 0x0404;
    /// Agent → host (protocol 1.1): where the guest clipboard lives now.
    pub const CLIPBOARD_STATUS: u16 = 0x0405;
    // 0x05: shared folders (`super::super::fs`).
    pub const FS_REQUEST: u16 = 0x0501;
    pub const FS_REPLY: u16 = 0x0502;
    pub const FS_SHARES: u16 = 0x0503;
    pub const FS_SHARES_REPLY: u16 = 0x0504;
    pub const FS_INVALIDATE: u16 = 0x0505;
    // 0x06: display and mouse.
    pub const DISPLAY_STATUS: u16 = 0x0601;
    pub const DISPLAY_STATUS_REQUEST: u16 = 0x0602;
    pub const DISPLAY_RESIZE: u16 = 0x0603;
}

/// Error codes carried by [`ErrorReply`]; a `u16` on the wire so a code from a newer peer
/// is still readable.
pub mod error_code {
    /// The kind is unknown to the receiver (a newer peer).
    pub const UNKNOWN_KIND: u16 = 1;
    /// The body (or envelope) did not decode.
    pub const MALFORMED: u16 = 2;
    /// Major protocol version mismatch; the sender closes after this.
    pub const UNSUPPORTED_VERSION: u16 = 3;
    /// A request other than hello arrived before the hello.
    pub const NO_HELLO: u16 = 4;
    /// The receiver does not offer the capability the request needs.
    pub const NOT_SUPPORTED: u16 = 5;
    /// The operation was attempted and failed (text says why).
    pub const FAILED: u16 = 6;
    /// The kind is known but is not a request the receiver answers.
    pub const UNEXPECTED: u16 = 7;
    /// The operation is already in progress.
    pub const BUSY: u16 = 8;
    /// The data is over the receiver's size limit (clipboard: 64 MiB by default).
    pub const TOO_LARGE: u16 = 9;
}

/// Per-feature capability bits advertised in [`Hello`]. Bits a peer does not know are
/// kept as received and ignored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Capabilities(pub u32);

impl Capabilities {
    pub const INFO: Self = Self(1 << 0);
    pub const POWER: Self = Self(1 << 1);
    pub const TIME: Self = Self(1 << 2);
    pub const CLIPBOARD: Self = Self(1 << 3);
    pub const SHARED_FOLDERS: Self = Self(1 << 4);
    pub const DISPLAY: Self = Self(1 << 5);
    /// The host serves [`FsOp::ReadDirPlus`](super::fs::FsOp::ReadDirPlus): the guest
    /// may ask for entries with their attributes (`ls -l` in one go).
    pub const SHARE_DIR_PLUS: Self = Self(1 << 6);

    pub const NONE: Self = Self(0);

    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Names of the known bits that are set, for logs and the CLI.
    pub fn names(self) -> Vec<&'static str> {
        [
            (Self::INFO, "info"),
            (Self::POWER, "power"),
            (Self::TIME, "time"),
            (Self::CLIPBOARD, "clipboard"),
            (Self::SHARED_FOLDERS, "shared-folders"),
            (Self::DISPLAY, "display"),
            (Self::SHARE_DIR_PLUS, "share-dir-plus"),
        ]
        .into_iter()
        .filter(|(bit, _)| self.contains(*bit))
        .map(|(_, name)| name)
        .collect()
    }
}

/// First message each way: the host sends it as a request, the agent answers with its
/// own. Versioning: a different `major` is incompatible (answered with
/// `UNSUPPORTED_VERSION`, then closed); a higher `minor` only adds kinds and capability
/// bits, which the older side answers with `UNKNOWN_KIND` or ignores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub major: u16,
    pub minor: u16,
    pub capabilities: Capabilities,
    /// Free text such as "vireo-agent 0.1.0", for logs.
    pub software: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// One of [`error_code`].
    pub code: u16,
    /// The kind of the message this answers (0 when the envelope did not decode).
    pub in_reply_to_kind: u16,
    pub text: String,
}

/// Everything the agent reports about the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestInfo {
    /// `PRETTY_NAME` from os-release, or `Linux <kernel release>` when there is none (as
    /// in a busybox initramfs).
    pub os_pretty_name: String,
    /// `uname -r`.
    pub kernel_release: String,
    pub hostname: String,
    /// Time since boot, in milliseconds (first field of `/proc/uptime`).
    pub uptime_ms: u64,
    /// `MemTotal` from `/proc/meminfo`, in KiB.
    pub mem_total_kib: u64,
    /// `MemAvailable` from `/proc/meminfo` in KiB (estimated from `MemFree`, `Buffers` and
    /// `Cached` on kernels older than 3.14).
    pub mem_available_kib: u64,
    /// Addresses of all interfaces except loopback, in `getifaddrs` order.
    pub addresses: Vec<InterfaceAddress>,
}

/// One IPv4 or IPv6 address of a network interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterfaceAddress {
    pub interface: String,
    pub address: IpAddr,
    /// Prefix length from the netmask, when the interface reports one.
    pub prefix_len: Option<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PowerAction {
    Shutdown,
    Reboot,
}

/// The host's answer to a [`Message::TimeQuery`]: its wall clock when it answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeReply {
    /// Nanoseconds since the Unix epoch (UTC).
    pub host_unix_ns: i64,
}

/// What a time sync did to the guest clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TimeCorrection {
    /// Within tolerance: nothing done.
    None,
    /// Drift handed to the kernel to slew away gradually.
    Slewed,
    /// Clock set at once (big offset, or after a restore).
    Stepped,
    /// No usable sample (every round trip too long or unanswered).
    NoSample,
}

/// The agent's answer to [`Message::TimeSyncNow`], also what it logs per sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeSyncReport {
    /// Host time minus guest time before the correction, from the best sample.
    pub offset_ns: i64,
    /// Round trip of the best sample.
    pub round_trip_ns: u64,
    pub correction: TimeCorrection,
    /// Samples taken and samples rejected for a long round trip or no answer.
    pub samples: u8,
    pub rejected: u8,
    /// Guest wall clock after the correction.
    pub guest_unix_ns: i64,
}

/// Clipboard formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClipboardFormat {
    /// UTF-8 text.
    Text,
    /// A PNG image.
    Png,
}

/// "I own the clipboard now and offer these formats". Each side numbers its grabs with
/// its own serial; a request or data message names the serial it concerns, so a stale
/// grab never echoes back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClipboardGrab {
    pub serial: u32,
    pub formats: Vec<ClipboardFormat>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClipboardRequest {
    /// The grab serial of the peer that owns the clipboard.
    pub serial: u32,
    pub format: ClipboardFormat,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClipboardData {
    pub serial: u32,
    pub format: ClipboardFormat,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClipboardRelease {
    pub serial: u32,
}

/// Where the guest's clipboard lives: the agent sends it after the hello and whenever it
/// changes (a desktop session's `vireo-agent session` came or went).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClipboardSource {
    /// No graphical session: the agent's own copy, reached by `vireo-agent clipboard`.
    AgentCopy,
    /// The X session of the agent's own `DISPLAY`.
    AgentDisplay,
    /// A desktop user's session, through its `vireo-agent session`.
    UserSession { uid: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClipboardStatus {
    pub source: ClipboardSource,
}

/// What the guest's display side reports: sent by the agent after the hello, and as the
/// answer to [`Message::DisplayStatusRequest`] and [`Message::DisplayResize`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DisplayStatus {
    /// The guest drives the absolute tablet, so the host pointer needs no capture.
    pub absolute_pointer: bool,
    /// Name of that tablet (`/proc/bus/input/devices`), when there is one.
    pub pointer_device: Option<String>,
    /// The guest's screen size, when it could be read.
    pub screen: Option<ScreenSize>,
    /// Where the screen size came from.
    pub screen_source: ScreenSource,
    /// A graphical session exists that takes [`Message::DisplayResize`].
    pub can_resize: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScreenSize {
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScreenSource {
    /// Nothing reported a size.
    None,
    /// The X session (RandR, through `xrandr`).
    X11,
    /// A DRM connector's current mode (sysfs), no session.
    Drm,
    /// The fbdev console (sysfs `virtual_size`), no session.
    Framebuffer,
}

/// Every message this version knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Hello(Hello),
    Error(ErrorReply),
    /// Echoed back in the pong.
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    InfoRequest,
    InfoReply(GuestInfo),
    PowerRequest(PowerAction),
    /// The agent starts the graceful path after sending this.
    PowerAccepted(PowerAction),
    /// Agent → host: "what time is it?".
    TimeQuery,
    TimeReply(TimeReply),
    /// Host → agent: "sync now"; answered with a report once the sync is done.
    TimeSyncNow,
    TimeSyncReport(TimeSyncReport),
    ClipboardGrab(ClipboardGrab),
    ClipboardRequest(ClipboardRequest),
    ClipboardData(ClipboardData),
    ClipboardRelease(ClipboardRelease),
    /// Agent → host event (protocol 1.1).
    ClipboardStatus(ClipboardStatus),
    FsRequest(FsRequest),
    FsReply(FsReply),
    FsShares(FsShares),
    FsSharesReply(FsSharesReply),
    FsInvalidate(FsInvalidate),
    DisplayStatus(DisplayStatus),
    /// Host → agent: answered with a [`Message::DisplayStatus`].
    DisplayStatusRequest,
    /// Host → agent: set the session's screen to this size (xrandr); answered with the
    /// new [`Message::DisplayStatus`] or an error.
    DisplayResize(ScreenSize),
}

/// An envelope whose kind is known and whose body decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub id: u32,
    pub message: Message,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("payload of {0} bytes is shorter than the envelope header")]
    Truncated(usize),
    #[error("envelope version {0} is not {ENVELOPE_VERSION}")]
    EnvelopeVersion(u8),
    /// A well-formed envelope of a kind this side does not know: reply `UNKNOWN_KIND`.
    #[error("unknown message kind {kind:#06x}")]
    UnknownKind { id: u32, kind: u16 },
    #[error("body of message kind {kind:#06x} does not decode: {reason}")]
    Malformed { id: u32, kind: u16, reason: String },
}

impl DecodeError {
    /// The id and kind to answer with an error reply, when the envelope header was read.
    pub fn reply_to(&self) -> (u32, u16) {
        match *self {
            Self::UnknownKind { id, kind } | Self::Malformed { id, kind, .. } => (id, kind),
            Self::Truncated(_) | Self::EnvelopeVersion(_) => (NO_REPLY, 0),
        }
    }

    /// The error reply a receiver sends back for this failure.
    pub fn to_error_reply(&self) -> ErrorReply {
        let (_, kind) = self.reply_to();
        let code = match self {
            Self::UnknownKind { .. } => error_code::UNKNOWN_KIND,
            _ => error_code::MALFORMED,
        };
        ErrorReply {
            code,
            in_reply_to_kind: kind,
            text: alloc::format!("{self}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("cannot encode message body: {0}")]
    Body(postcard::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

impl Message {
    pub fn kind(&self) -> u16 {
        match self {
            Self::Hello(_) => kind::HELLO,
            Self::Error(_) => kind::ERROR,
            Self::Ping(_) => kind::PING,
            Self::Pong(_) => kind::PONG,
            Self::InfoRequest => kind::INFO_REQUEST,
            Self::InfoReply(_) => kind::INFO_REPLY,
            Self::PowerRequest(_) => kind::POWER_REQUEST,
            Self::PowerAccepted(_) => kind::POWER_ACCEPTED,
            Self::TimeQuery => kind::TIME_QUERY,
            Self::TimeReply(_) => kind::TIME_REPLY,
            Self::TimeSyncNow => kind::TIME_SYNC_NOW,
            Self::TimeSyncReport(_) => kind::TIME_SYNC_REPORT,
            Self::ClipboardGrab(_) => kind::CLIPBOARD_GRAB,
            Self::ClipboardRequest(_) => kind::CLIPBOARD_REQUEST,
            Self::ClipboardData(_) => kind::CLIPBOARD_DATA,
            Self::ClipboardRelease(_) => kind::CLIPBOARD_RELEASE,
            Self::ClipboardStatus(_) => kind::CLIPBOARD_STATUS,
            Self::FsRequest(_) => kind::FS_REQUEST,
            Self::FsReply(_) => kind::FS_REPLY,
            Self::FsShares(_) => kind::FS_SHARES,
            Self::FsSharesReply(_) => kind::FS_SHARES_REPLY,
            Self::FsInvalidate(_) => kind::FS_INVALIDATE,
            Self::DisplayStatus(_) => kind::DISPLAY_STATUS,
            Self::DisplayStatusRequest => kind::DISPLAY_STATUS_REQUEST,
            Self::DisplayResize(_) => kind::DISPLAY_RESIZE,
        }
    }

    /// Appends the body to `out` (one buffer for the whole frame: no copies of a
    /// megabyte file chunk).
    fn encode_body_into(&self, out: Vec<u8>) -> Result<Vec<u8>, postcard::Error> {
        fn enc<T: Serialize>(m: &T, out: Vec<u8>) -> Result<Vec<u8>, postcard::Error> {
            postcard::to_extend(m, out)
        }
        match self {
            Self::Hello(m) => enc(m, out),
            Self::Error(m) => enc(m, out),
            Self::Ping(m) | Self::Pong(m) => enc(m, out),
            Self::InfoRequest
            | Self::TimeQuery
            | Self::TimeSyncNow
            | Self::DisplayStatusRequest => Ok(out),
            Self::InfoReply(m) => enc(m, out),
            Self::PowerRequest(m) | Self::PowerAccepted(m) => enc(m, out),
            Self::TimeReply(m) => enc(m, out),
            Self::TimeSyncReport(m) => enc(m, out),
            Self::ClipboardGrab(m) => enc(m, out),
            Self::ClipboardRequest(m) => enc(m, out),
            Self::ClipboardData(m) => enc(m, out),
            Self::ClipboardRelease(m) => enc(m, out),
            Self::ClipboardStatus(m) => enc(m, out),
            Self::FsRequest(m) => enc(m, out),
            Self::FsReply(m) => enc(m, out),
            Self::FsShares(m) => enc(m, out),
            Self::FsSharesReply(m) => enc(m, out),
            Self::FsInvalidate(m) => enc(m, out),
            Self::DisplayStatus(m) => enc(m, out),
            Self::DisplayResize(m) => enc(m, out),
        }
    }

    fn decode_body(kind: u16, body: &[u8]) -> Result<Option<Self>, postcard::Error> {
        Ok(Some(match kind {
            kind::HELLO => Self::Hello(body_of(body)?),
            kind::ERROR => Self::Error(body_of(body)?),
            kind::PING => Self::Ping(body_of(body)?),
            kind::PONG => Self::Pong(body_of(body)?),
            kind::INFO_REQUEST => {
                body_of::<()>(body)?;
                Self::InfoRequest
            }
            kind::INFO_REPLY => Self::InfoReply(body_of(body)?),
            kind::POWER_REQUEST => Self::PowerRequest(body_of(body)?),
            kind::POWER_ACCEPTED => Self::PowerAccepted(body_of(body)?),
            kind::TIME_QUERY => {
                body_of::<()>(body)?;
                Self::TimeQuery
            }
            kind::TIME_REPLY => Self::TimeReply(body_of(body)?),
            kind::TIME_SYNC_NOW => {
                body_of::<()>(body)?;
                Self::TimeSyncNow
            }
            kind::TIME_SYNC_REPORT => Self::TimeSyncReport(body_of(body)?),
            kind::CLIPBOARD_GRAB => Self::ClipboardGrab(body_of(body)?),
            kind::CLIPBOARD_REQUEST => Self::ClipboardRequest(body_of(body)?),
            kind::CLIPBOARD_DATA => Self::ClipboardData(body_of(body)?),
            kind::CLIPBOARD_RELEASE => Self::ClipboardRelease(body_of(body)?),
            kind::CLIPBOARD_STATUS => Self::ClipboardStatus(body_of(body)?),
            kind::FS_REQUEST => Self::FsRequest(body_of(body)?),
            kind::FS_REPLY => Self::FsReply(body_of(body)?),
            kind::FS_SHARES => Self::FsShares(body_of(body)?),
            kind::FS_SHARES_REPLY => Self::FsSharesReply(body_of(body)?),
            kind::FS_INVALIDATE => Self::FsInvalidate(body_of(body)?),
            kind::DISPLAY_STATUS => Self::DisplayStatus(body_of(body)?),
            kind::DISPLAY_STATUS_REQUEST => {
                body_of::<()>(body)?;
                Self::DisplayStatusRequest
            }
            kind::DISPLAY_RESIZE => Self::DisplayResize(body_of(body)?),
            _ => return Ok(None),
        }))
    }
}

/// Decodes a body that must be consumed exactly: trailing bytes mean the peer and we
/// disagree on the layout, which is a malformed message, not something to guess about.
fn body_of<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, postcard::Error> {
    let (value, rest) = postcard::take_from_bytes(body)?;
    if rest.is_empty() {
        Ok(value)
    } else {
        Err(postcard::Error::DeserializeBadEncoding)
    }
}

/// Builds a frame payload (envelope) from raw parts; also used to send kinds this version
/// does not model (tests of the unknown-kind path).
pub fn encode_raw_payload(kind: u16, id: u32, body: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(ENVELOPE_HEADER_LEN + body.len());
    payload.push(ENVELOPE_VERSION);
    payload.extend_from_slice(&kind.to_le_bytes());
    payload.extend_from_slice(&id.to_le_bytes());
    payload.extend_from_slice(body);
    payload
}

/// Encodes a message as a complete frame (length prefix included).
pub fn encode_message(id: u32, message: &Message) -> Result<Vec<u8>, EncodeError> {
    let mut frame = Vec::with_capacity(FRAME_HEADER_LEN + ENVELOPE_HEADER_LEN + 64);
    frame.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    frame.push(ENVELOPE_VERSION);
    frame.extend_from_slice(&message.kind().to_le_bytes());
    frame.extend_from_slice(&id.to_le_bytes());
    let mut frame = message.encode_body_into(frame).map_err(EncodeError::Body)?;
    let len = frame.len() - FRAME_HEADER_LEN;
    if len > MAX_FRAME_PAYLOAD {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME_PAYLOAD,
        }
        .into());
    }
    // The check above keeps the length within u32.
    frame[..FRAME_HEADER_LEN].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(frame)
}

/// Decodes a frame payload into an envelope.
pub fn decode_payload(payload: &[u8]) -> Result<Envelope, DecodeError> {
    let Some((header, body)) = payload.split_first_chunk::<ENVELOPE_HEADER_LEN>() else {
        return Err(DecodeError::Truncated(payload.len()));
    };
    if header[0] != ENVELOPE_VERSION {
        return Err(DecodeError::EnvelopeVersion(header[0]));
    }
    let kind = u16::from_le_bytes([header[1], header[2]]);
    let id = u32::from_le_bytes([header[3], header[4], header[5], header[6]]);
    match Message::decode_body(kind, body) {
        Ok(Some(message)) => Ok(Envelope { id, message }),
        Ok(None) => Err(DecodeError::UnknownKind { id, kind }),
        Err(err) => Err(DecodeError::Malformed {
            id,
            kind,
            reason: alloc::format!("{err}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::FrameDecoder;
    use alloc::vec;

    fn samples() -> Vec<Message> {
        vec![
            Message::Hello(Hello {
                major: 1,
                minor: 0,
                capabilities: Capabilities::INFO.union(Capabilities::TIME),
                software: "test".into(),
            }),
            Message::Error(ErrorReply {
                code: error_code::FAILED,
                in_reply_to_kind: kind::INFO_REQUEST,
                text: "no".into(),
            }),
            Message::Ping(vec![1, 2, 3]),
            Message::Pong(vec![]),
            Message::InfoRequest,
            Message::InfoReply(GuestInfo {
                os_pretty_name: "Debian".into(),
                kernel_release: "6.1.0".into(),
                hostname: "h".into(),
                uptime_ms: 5,
                mem_total_kib: 10,
                mem_available_kib: 4,
                addresses: vec![InterfaceAddress {
                    interface: "eth0".into(),
                    address: "10.0.2.15".parse().unwrap(),
                    prefix_len: Some(24),
                }],
            }),
            Message::PowerRequest(PowerAction::Reboot),
            Message::PowerAccepted(PowerAction::Shutdown),
            Message::TimeQuery,
            Message::TimeReply(TimeReply { host_unix_ns: -5 }),
            Message::TimeSyncNow,
            Message::TimeSyncReport(TimeSyncReport {
                offset_ns: 3_600_000_000_000,
                round_trip_ns: 100,
                correction: TimeCorrection::Stepped,
                samples: 3,
                rejected: 1,
                guest_unix_ns: 1,
            }),
            Message::ClipboardGrab(ClipboardGrab {
                serial: 7,
                formats: vec![ClipboardFormat::Text, ClipboardFormat::Png],
            }),
            Message::ClipboardRequest(ClipboardRequest {
                serial: 7,
                format: ClipboardFormat::Text,
            }),
            Message::ClipboardData(ClipboardData {
                serial: 7,
                format: ClipboardFormat::Text,
                data: b"hi".to_vec(),
            }),
            Message::ClipboardRelease(ClipboardRelease { serial: 7 }),
            Message::ClipboardStatus(ClipboardStatus {
                source: ClipboardSource::UserSession { uid: 1000 },
            }),
            Message::FsRequest(FsRequest {
                share: 0,
                op: crate::protocol::fs::FsOp::Write {
                    handle: 1,
                    offset: 2,
                    data: vec![9; 1000],
                },
            }),
            Message::FsReply(FsReply::Data(vec![1, 2, 3])),
            Message::FsShares(FsShares {
                shares: vec![crate::protocol::fs::ShareInfo {
                    id: 3,
                    name: "docs".into(),
                    read_only: true,
                    instance: 77,
                }],
            }),
            Message::FsSharesReply(FsSharesReply {
                results: vec![crate::protocol::fs::FsMountResult {
                    name: "docs".into(),
                    result: Err("no /dev/fuse".into()),
                }],
            }),
            Message::FsInvalidate(FsInvalidate::Entry {
                share: 3,
                parent: 1,
                name: "x".into(),
            }),
            Message::DisplayStatus(DisplayStatus {
                absolute_pointer: true,
                pointer_device: Some("Vireo Virtio Tablet".into()),
                screen: Some(ScreenSize {
                    width: 1280,
                    height: 800,
                }),
                screen_source: ScreenSource::X11,
                can_resize: true,
            }),
            Message::DisplayStatusRequest,
            Message::DisplayResize(ScreenSize {
                width: 1024,
                height: 768,
            }),
        ]
    }

    #[test]
    fn every_message_round_trips_through_a_frame() {
        let mut dec = FrameDecoder::new();
        for (i, msg) in samples().into_iter().enumerate() {
            dec.push(&encode_message(i as u32, &msg).unwrap());
            let payload = dec.next_frame().unwrap().unwrap();
            let env = decode_payload(&payload).unwrap();
            assert_eq!(env.id, i as u32);
            assert_eq!(env.message, msg);
        }
    }

    #[test]
    fn kinds_are_distinct() {
        let kinds: Vec<u16> = samples().iter().map(Message::kind).collect();
        for (i, k) in kinds.iter().enumerate() {
            assert!(!kinds[i + 1..].contains(k), "kind {k:#x} used twice");
        }
    }

    #[test]
    fn unknown_kind_keeps_its_id_for_the_error_reply() {
        let payload = encode_raw_payload(0x7f01, 42, b"whatever a newer peer sends");
        let err = decode_payload(&payload).unwrap_err();
        assert_eq!(
            err,
            DecodeError::UnknownKind {
                id: 42,
                kind: 0x7f01
            }
        );
        assert_eq!(err.reply_to(), (42, 0x7f01));
        assert_eq!(err.to_error_reply().code, error_code::UNKNOWN_KIND);
    }

    #[test]
    fn malformed_and_trailing_bodies_are_errors() {
        // A ping body announcing 200 bytes but carrying 1.
        let payload = encode_raw_payload(kind::PING, 3, &[200, 1, 1]);
        assert!(matches!(
            decode_payload(&payload),
            Err(DecodeError::Malformed { id: 3, .. })
        ));
        let payload = encode_raw_payload(kind::INFO_REQUEST, 4, &[0]);
        assert!(matches!(
            decode_payload(&payload),
            Err(DecodeError::Malformed { id: 4, .. })
        ));
        assert_eq!(decode_payload(&[1, 2]), Err(DecodeError::Truncated(2)));
        assert_eq!(
            decode_payload(&[9, 1, 0, 0, 0, 0, 0]),
            Err(DecodeError::EnvelopeVersion(9))
        );
    }

    #[test]
    fn huge_announced_vec_length_does_not_allocate_it() {
        // varint 0xFFFF_FFFF as a Vec<u8> length with no data behind it.
        let payload = encode_raw_payload(kind::PING, 1, &[0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(matches!(
            decode_payload(&payload),
            Err(DecodeError::Malformed { .. })
        ));
    }

    #[test]
    fn capability_names() {
        let caps = Capabilities::INFO
            .union(Capabilities::POWER)
            .union(Capabilities(1 << 30));
        assert_eq!(caps.names(), vec!["info", "power"]);
        assert!(caps.contains(Capabilities::POWER));
        assert!(!caps.contains(Capabilities::CLIPBOARD));
    }
}
