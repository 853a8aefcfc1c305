//! What the device's worker needs of the host side of the card: a nonblocking fd to wait
//! on, complete Ethernet frames out (buffered, with back-pressure), and frames in, one at
//! a time, kept until the guest has room for them.

use std::io;
use std::os::fd::RawFd;

/// The largest frame either way: a 64 KiB IP packet (passt's DHCP announces an MTU of
/// 65520) plus the Ethernet header. Anything longer is dropped (from the guest) or a
/// protocol error (from passt).
pub const MAX_FRAME_LEN: usize = 65535 + ETH_HLEN;
/// An Ethernet header: a shorter frame cannot be sent anywhere.
pub const ETH_HLEN: usize = 14;

/// Why a backend stopped working.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("the backend closed the connection")]
    Closed,
    #[error("the backend sent a frame of {0} bytes, more than the {MAX_FRAME_LEN} a frame can be")]
    FrameTooLong(usize),
    #[error("backend I/O failed: {0}")]
    Io(#[from] io::Error),
}

/// The host side of the network card.
pub trait Backend: Send {
    /// The fd to wait on: readable when `peek_frame` may have a frame, writable when
    /// `flush` may make progress.
    fn fd(&self) -> RawFd;
    /// Whether the frames this backend hands in carry correct checksums, so that the
    /// guest may skip checking them (VIRTIO_NET_HDR_F_DATA_VALID).
    fn checksums_valid(&self) -> bool;
    /// Whether `send` can take a frame of any size now. When it cannot, the caller
    /// stops taking frames from the guest and waits for the fd to be writable.
    fn can_send(&self) -> bool;
    /// Takes one complete frame (checksums filled in), writing what it can at once and
    /// keeping the rest; only called when `can_send` says so.
    fn send(&mut self, frame: &[u8]) -> Result<(), BackendError>;
    /// Writes what `send` kept. Returns whether nothing is left.
    fn flush(&mut self) -> Result<bool, BackendError>;
    /// Whether `send` kept bytes that `flush` has not written yet.
    fn has_pending_output(&self) -> bool;
    /// The next frame from the network without taking it (the guest may have no buffer
    /// for it yet), or `None` when nothing has arrived.
    fn peek_frame(&mut self) -> Result<Option<&[u8]>, BackendError>;
    /// Takes the frame `peek_frame` returned.
    fn consume_frame(&mut self);
}

/// Retries a syscall interrupted by a signal (vCPU kicks use real-time signals, and
/// only the vCPU threads block them).
pub(crate) fn retry_eintr<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}
