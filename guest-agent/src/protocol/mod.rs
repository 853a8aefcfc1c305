//! The host↔guest wire protocol, `no_std` + `alloc` so that the host, the Linux agent and
//! the probe guest share it.
//!
//! A connection is a byte stream (vsock in a guest, a Unix socket in tests) of frames
//! ([`frame`]): a 4-byte little-endian length, then an envelope ([`message`]): version
//! byte, 16-bit kind, 32-bit request id, `postcard` body. The host opens with
//! [`Message::Hello`] and the agent answers with its own; each side then sends requests
//! with ids it picks (non-zero, unique among its outstanding requests) and answers the
//! peer's requests with the same id. An unknown kind or a malformed body is answered with
//! [`Message::Error`]; only a frame over the size limit ends the connection, because the
//! stream cannot be resynchronised after it.

pub mod clipboard;
pub mod frame;
pub mod fs;
pub mod message;

pub use clipboard::{ClipboardContent, DEFAULT_CLIPBOARD_LIMIT};
pub use frame::{encode_frame, FrameDecoder, FrameError, MAX_FRAME_PAYLOAD};
pub use message::*;

/// Major version: changes only with incompatible changes.
pub const PROTOCOL_MAJOR: u16 = 1;
/// Minor version: new kinds and capability bits.
pub const PROTOCOL_MINOR: u16 = 1;

/// The vsock port the agent listens on in a guest.
pub const AGENT_VSOCK_PORT: u32 = 7000;
