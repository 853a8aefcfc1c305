//! One stream connection between a guest port and a host Unix socket (virtio 1.2,
//! 5.10.6.3 "Stream Sockets"): its state, both directions' credit (5.10.6.3.1 "Buffer
//! Space Management") and the bytes on their way to the host.
//!
//! Credit, in the spec's names: each side advertises `buf_alloc` (its receive buffer)
//! and `fwd_cnt` (payload bytes it has consumed, wrapping); a sender keeps `tx_cnt` and
//! may have at most `peer_buf_alloc - (tx_cnt - peer_fwd_cnt)` bytes unconsumed at the
//! peer. Here "consumed" means written into the host socket, so what the device buffers
//! for a connection is bounded by its own `buf_alloc`.

use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use super::packet::{Header, VIRTIO_VSOCK_TYPE_STREAM, VMADDR_CID_HOST};

/// The receive buffer the device advertises per connection: the most guest payload it
/// holds for a host socket that does not keep up (and so the most a guest may send
/// before the device forwards some).
pub const BUF_ALLOC: u32 = 256 << 10;
/// A CREDIT_UPDATE goes to the guest once this much has been consumed since the last
/// `fwd_cnt` it saw, so a sender waiting for credit is not left waiting.
pub const CREDIT_UPDATE_THRESHOLD: u32 = BUF_ALLOC / 4;

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// A host client asked for it: REQUEST sent, waiting for the guest's RESPONSE until
    /// the deadline.
    LocalInit { deadline: Instant },
    /// Both sides agreed; data flows.
    Established,
}

/// The (host port, guest port) pair that names a connection (the CIDs are fixed: this
/// device's guest and the host).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnKey {
    pub host_port: u32,
    pub guest_port: u32,
}

/// What writing guest data to the host socket did.
#[derive(Debug, PartialEq, Eq)]
pub enum Forward {
    /// Written or buffered within credit.
    Ok,
    /// The guest sent more than the credit it was given: a protocol violation.
    OverCredit,
    /// The host socket is gone (EPIPE, ECONNRESET).
    Broken,
}

/// One connection.
#[derive(Debug)]
pub struct Connection {
    pub key: ConnKey,
    pub stream: UnixStream,
    /// Its epoll token.
    pub token: u32,
    pub state: State,
    /// The guest's `buf_alloc` and `fwd_cnt`, from its latest packet.
    pub peer_buf_alloc: u32,
    pub peer_fwd_cnt: u32,
    /// Payload bytes sent to the guest.
    pub tx_cnt: u32,
    /// Payload bytes of the guest's written into the host socket.
    pub fwd_cnt: u32,
    /// The `fwd_cnt` the guest last saw in a packet from us.
    pub fwd_cnt_sent: u32,
    /// Guest payload the host socket has not taken yet (at most `BUF_ALLOC`).
    to_host: Vec<u8>,
    /// Bytes for the guest that arrived before the connection was established (after a
    /// host client's CONNECT line), delivered before anything read from the socket.
    pub early_to_guest: Vec<u8>,
    /// The socket reported readable (edge-triggered) and has not returned EAGAIN since.
    pub readable: bool,
    /// The guest will send nothing more (SHUTDOWN with F_SEND).
    pub guest_shut_send: bool,
    /// The guest will receive nothing more (SHUTDOWN with F_RECEIVE).
    pub guest_shut_recv: bool,
    /// The host side reached EOF and the guest was (or will be) told with a SHUTDOWN.
    pub host_eof: bool,
    /// The write half of the host socket is shut down.
    pub host_write_shut: bool,
    /// A CREDIT_REQUEST went to the guest and no packet has come back since.
    pub credit_requested: bool,
    /// The guest asked for a CREDIT_UPDATE, or enough was consumed to send one.
    pub credit_update_due: bool,
}

impl Connection {
    pub fn new(key: ConnKey, stream: UnixStream, token: u32, state: State) -> Self {
        Self {
            key,
            stream,
            token,
            state,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            fwd_cnt: 0,
            fwd_cnt_sent: 0,
            to_host: Vec::new(),
            early_to_guest: Vec::new(),
            readable: false,
            guest_shut_send: false,
            guest_shut_recv: false,
            host_eof: false,
            host_write_shut: false,
            credit_requested: false,
            credit_update_due: false,
        }
    }

    /// A header for a packet from the host side of this connection to the guest, with our
    /// current credit; records that the guest now knows our `fwd_cnt`.
    pub fn header(&mut self, guest_cid: u64, op: u16, flags: u32) -> Header {
        self.fwd_cnt_sent = self.fwd_cnt;
        self.credit_update_due = false;
        Header {
            src_cid: VMADDR_CID_HOST,
            dst_cid: guest_cid,
            src_port: self.key.host_port,
            dst_port: self.key.guest_port,
            len: 0,
            type_: VIRTIO_VSOCK_TYPE_STREAM,
            op,
            flags,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// Takes the guest's view of its receive buffer from any packet it sent. A CREDIT_REQUEST
    /// is answered once there is credit again: a guest whose buffer stays full is not
    /// asked over and over (each question and answer costs both sides a buffer).
    pub fn update_peer_credit(&mut self, header: &Header) {
        self.peer_buf_alloc = header.buf_alloc;
        self.peer_fwd_cnt = header.fwd_cnt;
        if self.peer_credit() > 0 {
            self.credit_requested = false;
        }
    }

    /// Payload bytes the guest has room for. A guest reporting nonsense (a `fwd_cnt`
    /// ahead of what it was sent) looks like one with a full buffer: no credit.
    pub fn peer_credit(&self) -> u32 {
        let unconsumed = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(unconsumed)
    }

    /// Whether data read from the host socket may go to the guest now.
    pub fn can_send_to_guest(&self) -> bool {
        self.state == State::Established
            && !self.guest_shut_recv
            && !self.host_eof
            && (self.readable || !self.early_to_guest.is_empty())
    }

    /// Guest payload not yet in the host socket.
    pub fn buffered_to_host(&self) -> usize {
        self.to_host.len()
    }

    /// Writes guest payload to the host socket, buffering what it does not take now
    /// (within the credit we gave; more is a violation).
    pub fn forward_to_host(&mut self, data: &[u8]) -> Forward {
        if data.len() > (BUF_ALLOC as usize).saturating_sub(self.to_host.len()) {
            return Forward::OverCredit;
        }
        if self.guest_shut_send || self.host_write_shut {
            // Data after the guest said it would send no more: a violation too.
            return Forward::OverCredit;
        }
        let mut written = 0;
        if self.to_host.is_empty() {
            match write_some(&mut self.stream, data) {
                Ok(n) => written = n,
                Err(_) => return Forward::Broken,
            }
        }
        self.to_host.extend_from_slice(&data[written..]);
        self.consumed(written);
        Forward::Ok
    }

    /// Writes buffered guest payload (the socket became writable). Err: the socket broke.
    pub fn flush_to_host(&mut self) -> io::Result<()> {
        if self.to_host.is_empty() {
            return Ok(());
        }
        let n = write_some(&mut self.stream, &self.to_host)?;
        self.to_host.drain(..n);
        if self.to_host.is_empty() {
            // The buffer may have grown to BUF_ALLOC for one slow reader; give it back.
            self.to_host.shrink_to(4096);
        }
        self.consumed(n);
        Ok(())
    }

    fn consumed(&mut self, n: usize) {
        self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
        if self.fwd_cnt.wrapping_sub(self.fwd_cnt_sent) >= CREDIT_UPDATE_THRESHOLD {
            self.credit_update_due = true;
        }
    }

    /// After the guest's SHUTDOWN with F_SEND, once everything it sent is written: the
    /// host reader sees EOF.
    pub fn shut_host_write_if_drained(&mut self) {
        if self.guest_shut_send && self.to_host.is_empty() && !self.host_write_shut {
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
            self.host_write_shut = true;
        }
    }

    /// After the guest's SHUTDOWN with F_RECEIVE: nothing more is read for it, and the
    /// host's writes fail (EPIPE) instead of filling a buffer nobody drains.
    pub fn shut_host_read(&mut self) {
        if !self.guest_shut_recv {
            let _ = self.stream.shutdown(std::net::Shutdown::Read);
            self.guest_shut_recv = true;
        }
    }

    /// Reads and drops what the host sent that the guest will never take, so that a
    /// graceful close reads as EOF on the host, not ECONNRESET (what closing a Unix
    /// socket with unread data gives its peer). Bounded: a socket buffer's worth.
    pub fn discard_unread(&mut self) {
        let mut buf = [0u8; 16 << 10];
        for _ in 0..64 {
            match self.stream.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    /// Both directions are finished: the connection can be reset and forgotten.
    pub fn finished(&self) -> bool {
        self.host_write_shut && (self.host_eof || self.guest_shut_recv)
    }

    /// Reads host bytes for the guest into `buf` (at most its length): the early bytes
    /// first, then the socket. Ok(0) is EOF; WouldBlock clears `readable`.
    pub fn read_for_guest(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.early_to_guest.is_empty() {
            let n = buf.len().min(self.early_to_guest.len());
            buf[..n].copy_from_slice(&self.early_to_guest[..n]);
            self.early_to_guest.drain(..n);
            return Ok(n);
        }
        loop {
            match self.stream.read(buf) {
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.readable = false;
                    return Err(e);
                }
                other => return other,
            }
        }
    }
}

/// One nonblocking write: Ok(bytes taken), 0 when the socket is full.
fn write_some(stream: &mut UnixStream, data: &[u8]) -> io::Result<usize> {
    loop {
        match stream.write(data) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(0),
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::vsock::packet::VIRTIO_VSOCK_OP_RW;

    fn pair() -> (Connection, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let key = ConnKey {
            host_port: 1,
            guest_port: 2,
        };
        (Connection::new(key, a, 9, State::Established), b)
    }

    #[test]
    fn peer_credit_follows_buf_alloc_and_fwd_cnt() {
        let (mut c, _peer) = pair();
        assert_eq!(c.peer_credit(), 0);
        let mut h = Header {
            buf_alloc: 1000,
            fwd_cnt: 0,
            ..Header::default()
        };
        c.update_peer_credit(&h);
        assert_eq!(c.peer_credit(), 1000);
        c.tx_cnt = 600;
        assert_eq!(c.peer_credit(), 400);
        h.fwd_cnt = 500;
        c.update_peer_credit(&h);
        assert_eq!(c.peer_credit(), 900);
        // Across the u32 wrap.
        c.tx_cnt = 10;
        h.fwd_cnt = u32::MAX - 89;
        c.update_peer_credit(&h);
        assert_eq!(c.peer_credit(), 900);
        // A guest claiming to have consumed more than it got is given nothing.
        c.tx_cnt = 10;
        h.fwd_cnt = 5000;
        c.update_peer_credit(&h);
        assert_eq!(c.peer_credit(), 0);
    }

    #[test]
    fn guest_data_is_written_buffered_and_counted() {
        let (mut c, mut peer) = pair();
        assert_eq!(c.forward_to_host(b"hello"), Forward::Ok);
        assert_eq!(c.fwd_cnt, 5);
        let mut got = [0u8; 5];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
        // Fill the socket until it buffers, then more than the credit is refused.
        let chunk = vec![7u8; 64 << 10];
        let mut sent = 0usize;
        while c.buffered_to_host() == 0 {
            assert_eq!(c.forward_to_host(&chunk), Forward::Ok);
            sent += chunk.len();
        }
        let room = BUF_ALLOC as usize - c.buffered_to_host();
        assert_eq!(c.forward_to_host(&vec![0; room + 1]), Forward::OverCredit);
        assert!(c.credit_update_due);
        // The reader drains; flushing moves the rest and counts it.
        peer.set_nonblocking(true).unwrap();
        let mut total = 0usize;
        let mut buf = vec![0u8; 1 << 20];
        while total < sent {
            match peer.read(&mut buf) {
                Ok(n) => total += n,
                Err(_) => c.flush_to_host().unwrap(),
            }
        }
        assert_eq!(c.buffered_to_host(), 0);
        assert_eq!(c.fwd_cnt as usize, sent + 5);
    }

    #[test]
    fn shutdown_send_reaches_the_host_reader_as_eof() {
        let (mut c, mut peer) = pair();
        c.forward_to_host(b"tail");
        c.guest_shut_send = true;
        c.shut_host_write_if_drained();
        let mut all = Vec::new();
        peer.read_to_end(&mut all).unwrap();
        assert_eq!(all, b"tail");
        assert!(!c.finished());
        c.guest_shut_recv = true;
        assert!(c.finished());
        // Nothing may follow the guest's own SHUTDOWN SEND.
        assert_eq!(c.forward_to_host(b"x"), Forward::OverCredit);
    }

    #[test]
    fn headers_carry_our_credit() {
        let (mut c, _peer) = pair();
        c.fwd_cnt = 77;
        c.credit_update_due = true;
        let h = c.header(3, VIRTIO_VSOCK_OP_RW, 0);
        assert_eq!((h.src_cid, h.dst_cid, h.src_port, h.dst_port), (2, 3, 1, 2));
        assert_eq!((h.buf_alloc, h.fwd_cnt), (BUF_ALLOC, 77));
        assert!(!c.credit_update_due);
    }
}
