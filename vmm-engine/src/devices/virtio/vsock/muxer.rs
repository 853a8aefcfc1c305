//! The host side of hybrid vsock (the Firecracker / Cloud Hypervisor design): one Unix
//! listener at PATH for host-initiated connections, and `PATH_<port>` for
//! guest-initiated ones; every connection a nonblocking Unix stream in the worker's
//! epoll (edge-triggered, with the handler's own tokens).
//!
//! - A host client connects to PATH and writes `CONNECT <port>\n`; the muxer sends the
//!   guest a REQUEST from a fresh host port to `<port>`; on the guest's RESPONSE the
//!   client reads `OK <host port>\n` and then has a byte stream. A RST, or no answer in
//!   `CONNECT_TIMEOUT`, closes the client's socket.
//! - A guest REQUEST to the host (CID 2) port P connects to `PATH_P`: RESPONSE if a
//!   listener accepts, RST if none does.
//!
//! Packets for the guest (`next_rx`) are produced only when the rx queue has a buffer,
//! so nothing is buffered on their way to the guest but a queue of payload-less control
//! packets, bounded by the connection count. Everything the guest sends is checked:
//! wrong CIDs are dropped, unknown connections and protocol violations get a RST, and
//! connections are capped per VM.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::timerfd::TimerFd;

use super::connection::{ConnKey, Connection, Forward, State};
use super::packet::*;
use crate::devices::virtio::worker::FdRegistry;

/// The most connections (established or being set up) one VM may have: what a guest
/// can make the host hold is bounded by this times `connection::BUF_ALLOC`.
pub const MAX_CONNECTIONS: usize = 256;
/// Host clients that connected to PATH but have not sent their CONNECT line yet.
pub const MAX_PENDING_CLIENTS: usize = 64;
/// How long a host client waits for the guest to accept (and to write its CONNECT).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// The longest CONNECT line (`CONNECT 4294967295\n` is 19 bytes).
const MAX_CONNECT_LINE: usize = 64;
/// Control packets (RST to strangers) beyond this are dropped: a guest flooding bad
/// packets does not grow host memory.
const MAX_CONTROL_QUEUE: usize = 2 * MAX_CONNECTIONS + 256;
/// The largest payload of one packet to the guest (its rx buffers usually limit it more).
const MAX_RX_PAYLOAD: usize = 256 << 10;
/// Host ports for host-initiated connections start here (as Firecracker's do), away
/// from the ports guests connect to.
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// The timer ticks this often while anything waits for a deadline.
const TIMER_TICK: Duration = Duration::from_millis(250);

/// The listener's and the timer's tokens in the worker's epoll.
pub const TOKEN_LISTENER: u32 = 0;
pub const TOKEN_TIMER: u32 = 1;
const FIRST_STREAM_TOKEN: u32 = 16;

/// What the muxer counted: the guest's mistakes, for logs and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MuxerCounters {
    /// Packets with the wrong source or destination CID: dropped.
    pub bad_cid: u64,
    /// RSTs sent for protocol violations, unknown connections, refused requests.
    pub resets_sent: u64,
    /// Control packets dropped because the queue was full.
    pub control_dropped: u64,
}

/// A payload-less packet waiting for an rx buffer.
#[derive(Debug)]
enum Control {
    /// For a live connection: its header is built when sent, with fresh credit.
    Conn { key: ConnKey, op: u16, flags: u32 },
    /// For a connection that no longer exists (or never did).
    Raw(Header),
}

/// A host client that has not finished its CONNECT line.
#[derive(Debug)]
struct Client {
    stream: UnixStream,
    line: Vec<u8>,
    deadline: Instant,
}

/// What an epoll token stands for.
#[derive(Clone, Copy, Debug)]
enum Slot {
    Client,
    Conn(ConnKey),
}

/// The host side of one vsock device.
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    timer: TimerFd,
    timer_armed: bool,
    registry: Option<FdRegistry>,
    conns: BTreeMap<ConnKey, Connection>,
    clients: HashMap<u32, Client>,
    tokens: HashMap<u32, Slot>,
    next_token: u32,
    next_local_port: u32,
    control: VecDeque<Control>,
    /// Where the data round-robin goes on from.
    cursor: Option<ConnKey>,
    pub counters: MuxerCounters,
}

impl Muxer {
    /// A muxer for the guest `guest_cid`, serving `listener` (bound at `uds_path`).
    pub fn new(guest_cid: u64, uds_path: &Path, listener: UnixListener) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        Ok(Self {
            guest_cid,
            uds_path: uds_path.to_owned(),
            listener,
            timer: TimerFd::new()?,
            timer_armed: false,
            registry: None,
            conns: BTreeMap::new(),
            clients: HashMap::new(),
            tokens: HashMap::new(),
            next_token: FIRST_STREAM_TOKEN,
            next_local_port: FIRST_LOCAL_PORT,
            control: VecDeque::new(),
            cursor: None,
            counters: MuxerCounters::default(),
        })
    }

    /// Registers the listener and the timer in the worker's epoll; from now on streams
    /// are registered as they come.
    pub fn attach(&mut self, registry: FdRegistry) -> io::Result<()> {
        registry.add(self.listener.as_raw_fd(), TOKEN_LISTENER, EventSet::IN)?;
        registry.add(self.timer.as_raw_fd(), TOKEN_TIMER, EventSet::IN)?;
        self.registry = Some(registry);
        Ok(())
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    pub fn pending_clients(&self) -> usize {
        self.clients.len()
    }

    /// Forgets every connection (a transport reset, 5.10.6.7): their host sockets close.
    pub fn reset_connections(&mut self) {
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            self.remove(key);
        }
        self.control.clear();
    }

    // ---- the guest's packets (tx queue) ----

    /// Handles one packet from the guest (`payload` is its RW data).
    pub fn handle_tx(&mut self, header: &Header, payload: &[u8]) {
        if header.src_cid != self.guest_cid || header.dst_cid != VMADDR_CID_HOST {
            // Not from our guest, or not to the host: nothing to answer (5.10.6.6).
            self.counters.bad_cid += 1;
            return;
        }
        let key = ConnKey {
            host_port: header.dst_port,
            guest_port: header.src_port,
        };
        if header.type_ != VIRTIO_VSOCK_TYPE_STREAM {
            if header.op != VIRTIO_VSOCK_OP_RST {
                self.reply_rst(header);
            }
            return;
        }
        match header.op {
            VIRTIO_VSOCK_OP_REQUEST => self.guest_connect(key, header),
            VIRTIO_VSOCK_OP_RST => self.remove(key),
            op => {
                let Some(conn) = self.conns.get_mut(&key) else {
                    self.reply_rst(header);
                    return;
                };
                conn.update_peer_credit(header);
                match op {
                    VIRTIO_VSOCK_OP_RESPONSE => self.guest_accepted(key),
                    VIRTIO_VSOCK_OP_RW => {
                        let result = if conn.state == State::Established {
                            conn.forward_to_host(payload)
                        } else {
                            Forward::OverCredit
                        };
                        if result != Forward::Ok {
                            self.reset(key);
                        } else {
                            self.finish_if_done(key);
                        }
                    }
                    VIRTIO_VSOCK_OP_SHUTDOWN => {
                        conn.guest_shut_send |= header.flags & VIRTIO_VSOCK_SHUTDOWN_F_SEND != 0;
                        if header.flags & VIRTIO_VSOCK_SHUTDOWN_F_RECEIVE != 0 {
                            conn.shut_host_read();
                        }
                        conn.shut_host_write_if_drained();
                        self.finish_if_done(key);
                    }
                    VIRTIO_VSOCK_OP_CREDIT_UPDATE => {}
                    VIRTIO_VSOCK_OP_CREDIT_REQUEST => conn.credit_update_due = true,
                    _ => self.reset(key),
                }
            }
        }
    }

    /// A packet whose payload could not be read (too long, or beyond its chain): its
    /// connection is reset, or the guest told there is none.
    pub fn reject(&mut self, header: &Header) {
        if header.src_cid != self.guest_cid || header.dst_cid != VMADDR_CID_HOST {
            self.counters.bad_cid += 1;
            return;
        }
        let key = ConnKey {
            host_port: header.dst_port,
            guest_port: header.src_port,
        };
        if self.conns.contains_key(&key) {
            self.reset(key);
        } else {
            self.reply_rst(header);
        }
    }

    /// The guest asks for host port `key.host_port`: connect to `PATH_<port>`.
    fn guest_connect(&mut self, key: ConnKey, header: &Header) {
        if self.conns.contains_key(&key) {
            // A REQUEST for a connection that exists: ignored, as Linux does.
            return;
        }
        if self.conns.len() >= MAX_CONNECTIONS {
            self.reply_rst(header);
            return;
        }
        let mut path = self.uds_path.clone().into_os_string();
        path.push(format!("_{}", key.host_port));
        let stream = match connect_nonblocking(Path::new(&path)) {
            Ok(s) => s,
            Err(_) => {
                self.reply_rst(header);
                return;
            }
        };
        let token = self.alloc_token();
        let mut conn = Connection::new(key, stream, token, State::Established);
        conn.update_peer_credit(header);
        if self.register(&conn.stream, token).is_err() {
            self.reply_rst(header);
            return;
        }
        self.tokens.insert(token, Slot::Conn(key));
        self.conns.insert(key, conn);
        self.push_control(Control::Conn {
            key,
            op: VIRTIO_VSOCK_OP_RESPONSE,
            flags: 0,
        });
    }

    /// The guest accepted a host client's connection.
    fn guest_accepted(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if !matches!(conn.state, State::LocalInit { .. }) {
            self.reset(key);
            return;
        }
        conn.state = State::Established;
        let line = format!("OK {}\n", key.host_port);
        // A fresh socket's buffer takes a line this short whole; anything else means
        // the client is gone.
        if !matches!(conn.stream.write(line.as_bytes()), Ok(n) if n == line.len()) {
            self.reset(key);
        }
    }

    // ---- host fds ----

    /// An fd registered with `token` has `events`.
    pub fn fd_ready(&mut self, token: u32, events: EventSet) {
        match token {
            TOKEN_LISTENER => self.accept_clients(),
            TOKEN_TIMER => self.timer_tick(),
            _ => match self.tokens.get(&token).copied() {
                Some(Slot::Client) => self.client_readable(token),
                Some(Slot::Conn(key)) => self.conn_event(key, events),
                None => {}
            },
        }
    }

    fn conn_event(&mut self, key: ConnKey, events: EventSet) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if events.intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP) {
            conn.readable = true;
        }
        if events.intersects(EventSet::OUT | EventSet::HANG_UP | EventSet::ERROR) {
            if conn.flush_to_host().is_err() {
                self.reset(key);
                return;
            }
            conn.shut_host_write_if_drained();
        }
        if events.contains(EventSet::ERROR) && conn.buffered_to_host() != 0 {
            self.reset(key);
            return;
        }
        self.finish_if_done(key);
    }

    fn accept_clients(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            if self.clients.len() >= MAX_PENDING_CLIENTS || stream.set_nonblocking(true).is_err() {
                continue;
            }
            let token = self.alloc_token();
            if self.register(&stream, token).is_err() {
                continue;
            }
            self.tokens.insert(token, Slot::Client);
            self.clients.insert(
                token,
                Client {
                    stream,
                    line: Vec::new(),
                    deadline: Instant::now() + CONNECT_TIMEOUT,
                },
            );
            self.arm_timer();
            // Edge-triggered: a line that is already there must be read now.
            self.client_readable(token);
        }
    }

    /// Reads a client's CONNECT line; once whole, turns the client into a connection.
    fn client_readable(&mut self, token: u32) {
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        let mut buf = [0u8; MAX_CONNECT_LINE];
        let newline = loop {
            if let Some(at) = client.line.iter().position(|&b| b == b'\n') {
                break at;
            }
            let room = MAX_CONNECT_LINE - client.line.len();
            if room == 0 {
                self.drop_client(token);
                return;
            }
            match client.stream.read(&mut buf[..room]) {
                Ok(0) => {
                    self.drop_client(token);
                    return;
                }
                Ok(n) => client.line.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.drop_client(token);
                    return;
                }
            }
        };
        let Some(client) = self.clients.remove(&token) else {
            return;
        };
        let port = parse_connect_line(&client.line[..newline]);
        let Some(guest_port) = port else {
            self.unregister(&client.stream);
            self.tokens.remove(&token);
            return;
        };
        if self.conns.len() >= MAX_CONNECTIONS {
            self.unregister(&client.stream);
            self.tokens.remove(&token);
            return;
        }
        let host_port = self.alloc_local_port();
        let key = ConnKey {
            host_port,
            guest_port,
        };
        let mut conn = Connection::new(
            key,
            client.stream,
            token,
            State::LocalInit {
                deadline: Instant::now() + CONNECT_TIMEOUT,
            },
        );
        conn.early_to_guest = client.line[newline + 1..].to_vec();
        // More may wait in the socket: the edge that announced it has passed.
        conn.readable = true;
        self.tokens.insert(token, Slot::Conn(key));
        self.conns.insert(key, conn);
        self.push_control(Control::Conn {
            key,
            op: VIRTIO_VSOCK_OP_REQUEST,
            flags: 0,
        });
        self.arm_timer();
    }

    fn drop_client(&mut self, token: u32) {
        if let Some(client) = self.clients.remove(&token) {
            self.unregister(&client.stream);
        }
        self.tokens.remove(&token);
    }

    fn arm_timer(&mut self) {
        if !self.timer_armed && self.timer.reset(TIMER_TICK, Some(TIMER_TICK)).is_ok() {
            self.timer_armed = true;
        }
    }

    /// Closes clients and guest connections whose deadline passed.
    fn timer_tick(&mut self) {
        // Nonblocking in effect: epoll said it is readable.
        let _ = self.timer.wait();
        self.expire(Instant::now());
    }

    /// Everything with a deadline before `now` is given up.
    pub fn expire(&mut self, now: Instant) {
        let late_clients: Vec<u32> = self
            .clients
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(&t, _)| t)
            .collect();
        for token in late_clients {
            self.drop_client(token);
        }
        let late: Vec<ConnKey> = self
            .conns
            .values()
            .filter(|c| matches!(c.state, State::LocalInit { deadline } if deadline <= now))
            .map(|c| c.key)
            .collect();
        for key in late {
            // The guest may still answer: the RST tells it the request is void.
            self.reset(key);
        }
        let waiting = !self.clients.is_empty()
            || self
                .conns
                .values()
                .any(|c| matches!(c.state, State::LocalInit { .. }));
        if !waiting && self.timer_armed && self.timer.clear().is_ok() {
            self.timer_armed = false;
        }
    }

    // ---- packets for the guest (rx queue) ----

    /// Whether `next_rx` has something to send (so an rx buffer is worth taking).
    pub fn has_rx_work(&self) -> bool {
        !self.control.is_empty()
            || self.conns.values().any(|c| {
                c.credit_update_due
                    || (c.can_send_to_guest() && (c.peer_credit() > 0 || !c.credit_requested))
            })
    }

    /// The next packet for the guest, whose payload (if any) is left in `payload`, for an
    /// rx buffer with room for `room` payload bytes. None: nothing to send after all.
    pub fn next_rx(&mut self, room: usize, payload: &mut Vec<u8>) -> Option<Header> {
        payload.clear();
        while let Some(control) = self.control.pop_front() {
            match control {
                Control::Raw(header) => return Some(header),
                Control::Conn { key, op, flags } => {
                    if let Some(conn) = self.conns.get_mut(&key) {
                        return Some(conn.header(self.guest_cid, op, flags));
                    }
                }
            }
        }
        let guest_cid = self.guest_cid;
        if let Some(conn) = self.conns.values_mut().find(|c| c.credit_update_due) {
            return Some(conn.header(guest_cid, VIRTIO_VSOCK_OP_CREDIT_UPDATE, 0));
        }
        // Data, round-robin from after the connection served last.
        let keys: Vec<ConnKey> = match self.cursor {
            Some(cursor) => self
                .conns
                .range(cursor..)
                .skip(1)
                .chain(self.conns.range(..=cursor))
                .filter(|(_, c)| c.can_send_to_guest())
                .map(|(k, _)| *k)
                .collect(),
            None => self
                .conns
                .iter()
                .filter(|(_, c)| c.can_send_to_guest())
                .map(|(k, _)| *k)
                .collect(),
        };
        for key in keys {
            if let Some(header) = self.data_for_guest(key, room, payload) {
                self.cursor = Some(key);
                return Some(header);
            }
        }
        None
    }

    /// Reads what connection `key` may send the guest now.
    fn data_for_guest(
        &mut self,
        key: ConnKey,
        room: usize,
        payload: &mut Vec<u8>,
    ) -> Option<Header> {
        let guest_cid = self.guest_cid;
        let conn = self.conns.get_mut(&key)?;
        let credit = conn.peer_credit() as usize;
        if credit == 0 {
            if conn.credit_requested {
                return None;
            }
            // Ask the guest how much room it has (5.10.6.3.1).
            conn.credit_requested = true;
            return Some(conn.header(guest_cid, VIRTIO_VSOCK_OP_CREDIT_REQUEST, 0));
        }
        let want = room.min(credit).min(MAX_RX_PAYLOAD);
        if want == 0 {
            return None;
        }
        payload.resize(want, 0);
        match conn.read_for_guest(payload) {
            Ok(0) => {
                payload.clear();
                conn.host_eof = true;
                conn.readable = false;
                if conn.finished() {
                    self.reset(key);
                    return self.control.pop_back().and_then(|c| match c {
                        Control::Raw(h) => Some(h),
                        Control::Conn { .. } => None,
                    });
                }
                Some(conn.header(
                    guest_cid,
                    VIRTIO_VSOCK_OP_SHUTDOWN,
                    VIRTIO_VSOCK_SHUTDOWN_F_SEND,
                ))
            }
            Ok(n) => {
                payload.truncate(n);
                conn.tx_cnt = conn.tx_cnt.wrapping_add(n as u32);
                Some(conn.header(guest_cid, VIRTIO_VSOCK_OP_RW, 0))
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                payload.clear();
                None
            }
            Err(_) => {
                payload.clear();
                self.reset(key);
                self.control.pop_back().and_then(|c| match c {
                    Control::Raw(h) => Some(h),
                    Control::Conn { .. } => None,
                })
            }
        }
    }

    // ---- helpers ----

    /// Both directions are done: RST to the guest, and the connection is forgotten.
    fn finish_if_done(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.get_mut(&key).filter(|c| c.finished()) {
            conn.discard_unread();
            self.reset(key);
        }
    }

    /// Ends a connection with a RST to the guest.
    fn reset(&mut self, key: ConnKey) {
        if let Some(mut conn) = self.conns.remove(&key) {
            let header = conn.header(self.guest_cid, VIRTIO_VSOCK_OP_RST, 0);
            self.forget(conn);
            self.counters.resets_sent += 1;
            self.push_control(Control::Raw(header));
        }
    }

    /// Forgets a connection without telling the guest (it sent the RST).
    fn remove(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.remove(&key) {
            self.forget(conn);
        }
    }

    fn forget(&mut self, conn: Connection) {
        self.unregister(&conn.stream);
        self.tokens.remove(&conn.token);
        if self.cursor == Some(conn.key) {
            self.cursor = None;
        }
        // Dropping the stream closes the host's side.
    }

    /// A RST answering `header` (the guest's packet), for a connection we do not have.
    fn reply_rst(&mut self, header: &Header) {
        self.counters.resets_sent += 1;
        self.push_control(Control::Raw(Header {
            src_cid: VMADDR_CID_HOST,
            dst_cid: self.guest_cid,
            src_port: header.dst_port,
            dst_port: header.src_port,
            len: 0,
            type_: VIRTIO_VSOCK_TYPE_STREAM,
            op: VIRTIO_VSOCK_OP_RST,
            flags: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
        }));
    }

    fn push_control(&mut self, control: Control) {
        if self.control.len() >= MAX_CONTROL_QUEUE {
            self.counters.control_dropped += 1;
            return;
        }
        self.control.push_back(control);
    }

    fn alloc_token(&mut self) -> u32 {
        loop {
            let token = self.next_token;
            self.next_token = self.next_token.checked_add(1).unwrap_or(FIRST_STREAM_TOKEN);
            if !self.tokens.contains_key(&token) {
                return token;
            }
        }
    }

    fn alloc_local_port(&mut self) -> u32 {
        loop {
            let port = self.next_local_port;
            self.next_local_port = match self.next_local_port.checked_add(1) {
                Some(p) if p != u32::MAX => p,
                _ => FIRST_LOCAL_PORT,
            };
            if !self.conns.keys().any(|k| k.host_port == port) {
                return port;
            }
        }
    }

    fn register(&self, stream: &UnixStream, token: u32) -> io::Result<()> {
        match &self.registry {
            Some(r) => r.add(
                stream.as_raw_fd(),
                token,
                EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED,
            ),
            None => Ok(()),
        }
    }

    fn unregister(&self, stream: &UnixStream) {
        if let Some(r) = &self.registry {
            let _ = r.remove(stream.as_raw_fd());
        }
    }
}

/// `CONNECT <port>` (a trailing CR tolerated) → the port.
fn parse_connect_line(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    let line = line.strip_suffix('\r').unwrap_or(line);
    let port = line.strip_prefix("CONNECT ")?;
    port.trim().parse().ok()
}

/// A nonblocking connect: a listener whose backlog is full refuses (EAGAIN) instead of
/// stalling the device's worker.
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    connect(fd.as_raw_fd(), &addr)?;
    Ok(UnixStream::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::vsock::connection::BUF_ALLOC;

    const CID: u64 = 3;

    struct Env {
        dir: PathBuf,
        muxer: Muxer,
    }

    impl Env {
        fn new(name: &str) -> Env {
            let dir = std::env::temp_dir().join(format!("vireo-mux-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("v.sock");
            let listener = UnixListener::bind(&path).unwrap();
            let muxer = Muxer::new(CID, &path, listener).unwrap();
            Env { dir, muxer }
        }
        fn path(&self) -> PathBuf {
            self.dir.join("v.sock")
        }
        /// Everything the muxer would put in rx buffers of 64 KiB.
        fn drain_rx(&mut self) -> Vec<(Header, Vec<u8>)> {
            let mut out = Vec::new();
            let mut payload = Vec::new();
            while self.muxer.has_rx_work() {
                match self.muxer.next_rx(64 << 10, &mut payload) {
                    Some(h) => out.push((h, payload.clone())),
                    None => break,
                }
            }
            out
        }
    }

    impl Drop for Env {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn guest(op: u16, guest_port: u32, host_port: u32) -> Header {
        Header {
            src_cid: CID,
            dst_cid: VMADDR_CID_HOST,
            src_port: guest_port,
            dst_port: host_port,
            len: 0,
            type_: VIRTIO_VSOCK_TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 64 << 10,
            fwd_cnt: 0,
        }
    }

    fn ops(packets: &[(Header, Vec<u8>)]) -> Vec<u16> {
        packets.iter().map(|(h, _)| h.op).collect()
    }

    #[test]
    fn guest_connect_to_a_host_listener_and_data_both_ways() {
        let mut env = Env::new("g2h");
        let host = UnixListener::bind(format!("{}_5000", env.path().display())).unwrap();
        env.muxer
            .handle_tx(&guest(VIRTIO_VSOCK_OP_REQUEST, 1234, 5000), &[]);
        let rx = env.drain_rx();
        assert_eq!(ops(&rx), [VIRTIO_VSOCK_OP_RESPONSE]);
        assert_eq!((rx[0].0.src_port, rx[0].0.dst_port), (5000, 1234));
        let (mut peer, _) = host.accept().unwrap();
        let mut rw = guest(VIRTIO_VSOCK_OP_RW, 1234, 5000);
        rw.len = 5;
        env.muxer.handle_tx(&rw, b"hello");
        let mut got = [0u8; 5];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
        // Host → guest: the edge marks it readable, the muxer reads it for the guest.
        peer.write_all(b"world").unwrap();
        let key = ConnKey {
            host_port: 5000,
            guest_port: 1234,
        };
        let token = env.muxer.conns[&key].token;
        env.muxer.fd_ready(token, EventSet::IN);
        let rx = env.drain_rx();
        assert_eq!(ops(&rx), [VIRTIO_VSOCK_OP_RW]);
        assert_eq!(rx[0].1, b"world");
        assert_eq!(rx[0].0.fwd_cnt, 5);
        // The host closes: the guest gets SHUTDOWN SEND; the guest's RST ends it.
        drop(peer);
        env.muxer
            .fd_ready(token, EventSet::IN | EventSet::READ_HANG_UP);
        let rx = env.drain_rx();
        assert_eq!(ops(&rx), [VIRTIO_VSOCK_OP_SHUTDOWN]);
        assert_eq!(rx[0].0.flags, VIRTIO_VSOCK_SHUTDOWN_F_SEND);
        env.muxer
            .handle_tx(&guest(VIRTIO_VSOCK_OP_RST, 1234, 5000), &[]);
        assert_eq!(env.muxer.connection_count(), 0);
        assert!(env.drain_rx().is_empty());
    }

    #[test]
    fn no_listener_means_rst() {
        let mut env = Env::new("nolisten");
        env.muxer
            .handle_tx(&guest(VIRTIO_VSOCK_OP_REQUEST, 1, 9999), &[]);
        let rx = env.drain_rx();
        assert_eq!(ops(&rx), [VIRTIO_VSOCK_OP_RST]);
        assert_eq!(
            (rx[0].0.src_port, rx[0].0.dst_port, rx[0].0.dst_cid),
            (9999, 1, CID)
        );
    }

    #[test]
    fn host_client_connect_ok_and_refusal() {
        let mut env = Env::new("h2g");
        let mut client = UnixStream::connect(env.path()).unwrap();
        client.write_all(b"CONNECT 52\nearly").unwrap();
        env.muxer.fd_ready(TOKEN_LISTENER, EventSet::IN);
        let rx = env.drain_rx();
        assert_eq!(ops(&rx), [VIRTIO_VSOCK_OP_REQUEST]);
        let req = rx[0].0;
        assert_eq!((req.dst_cid, req.dst_port), (CID, 52));
        assert!(req.src_port >= FIRST_LOCAL_PORT);
        // The guest accepts: the client reads OK, then the early bytes reach the guest.
        let mut resp = guest(VIRTIO_VSOCK_OP_RESPONSE, 52, req.src_port);
        resp.buf_alloc = 4096;
        env.muxer.handle_tx(&resp, &[]);
        let mut line = [0u8; 32];
        let n = client.read(&mut line).unwrap();
        assert_eq!(
            std::str::from_utf8(&line[..n]).unwrap(),
            format!("OK {}\n", req.src_port)
        );
        let rx = env.drain_rx();
        assert_eq!(ops(&rx), [VIRTIO_VSOCK_OP_RW]);
        assert_eq!(rx[0].1, b"early");
        // A second client whose connection the guest refuses is closed.
        let mut second = UnixStream::connect(env.path()).unwrap();
        second.write_all(b"CONNECT 53\n").unwrap();
        env.muxer.fd_ready(TOKEN_LISTENER, EventSet::IN);
        let req = env.drain_rx()[0].0;
        env.muxer
            .handle_tx(&guest(VIRTIO_VSOCK_OP_RST, 53, req.src_port), &[]);
        let mut buf = [0u8; 8];
        assert_eq!(second.read(&mut buf).unwrap(), 0);
    }

    #[test]
    fn an_unanswered_request_times_out_and_closes_the_client() {
        let mut env = Env::new("timeout");
        let mut client = UnixStream::connect(env.path()).unwrap();
        client.write_all(b"CONNECT 7\n").unwrap();
        env.muxer.fd_ready(TOKEN_LISTENER, EventSet::IN);
        assert_eq!(ops(&env.drain_rx()), [VIRTIO_VSOCK_OP_REQUEST]);
        env.muxer.expire(Instant::now() + CONNECT_TIMEOUT * 2);
        assert_eq!(env.muxer.connection_count(), 0);
        assert_eq!(ops(&env.drain_rx()), [VIRTIO_VSOCK_OP_RST]);
        let mut buf = [0u8; 8];
        assert_eq!(client.read(&mut buf).unwrap(), 0);
    }

    #[test]
    fn bad_connect_lines_close_the_client() {
        let mut env = Env::new("badline");
        for line in [&b"HELLO 1\n"[..], b"CONNECT x\n", &[b'a'; 100]] {
            let mut client = UnixStream::connect(env.path()).unwrap();
            client.write_all(line).unwrap();
            env.muxer.fd_ready(TOKEN_LISTENER, EventSet::IN);
            // Closed: EOF, or a reset when the muxer left bytes unread.
            let mut buf = [0u8; 8];
            assert!(matches!(client.read(&mut buf), Ok(0) | Err(_)), "{line:?}");
        }
        assert_eq!(env.muxer.pending_clients(), 0);
        assert!(env.drain_rx().is_empty());
    }

    #[test]
    fn hostile_packets_get_rst_or_nothing_and_never_grow_memory() {
        let mut env = Env::new("hostile");
        // Wrong source CID: dropped silently.
        let mut h = guest(VIRTIO_VSOCK_OP_RW, 1, 2);
        h.src_cid = 99;
        env.muxer.handle_tx(&h, b"");
        assert_eq!(env.muxer.counters.bad_cid, 1);
        // Wrong destination CID.
        let mut h = guest(VIRTIO_VSOCK_OP_REQUEST, 1, 2);
        h.dst_cid = 7;
        env.muxer.handle_tx(&h, b"");
        assert_eq!(env.muxer.counters.bad_cid, 2);
        // Seqpacket: RST.
        let mut h = guest(VIRTIO_VSOCK_OP_REQUEST, 1, 2);
        h.type_ = VIRTIO_VSOCK_TYPE_SEQPACKET;
        env.muxer.handle_tx(&h, b"");
        // Data on no connection: RST. A RST for none: nothing.
        env.muxer.handle_tx(&guest(VIRTIO_VSOCK_OP_RW, 5, 6), b"zz");
        env.muxer.handle_tx(&guest(VIRTIO_VSOCK_OP_RST, 5, 6), b"");
        assert_eq!(
            ops(&env.drain_rx()),
            [VIRTIO_VSOCK_OP_RST, VIRTIO_VSOCK_OP_RST]
        );
        // A flood of REQUESTs to nowhere: the control queue stays bounded.
        for port in 0..10_000 {
            env.muxer
                .handle_tx(&guest(VIRTIO_VSOCK_OP_REQUEST, port, 1), b"");
        }
        assert!(env.muxer.control.len() <= MAX_CONTROL_QUEUE);
        assert!(env.muxer.counters.control_dropped > 0);
        env.drain_rx();
    }

    #[test]
    fn connections_are_capped_and_data_beyond_credit_resets() {
        let mut env = Env::new("caps");
        let host = UnixListener::bind(format!("{}_80", env.path().display())).unwrap();
        host.set_nonblocking(true).unwrap();
        let mut accepted = Vec::new();
        for port in 0..MAX_CONNECTIONS as u32 + 5 {
            env.muxer
                .handle_tx(&guest(VIRTIO_VSOCK_OP_REQUEST, port, 80), &[]);
            while let Ok((s, _)) = host.accept() {
                accepted.push(s);
            }
        }
        assert_eq!(env.muxer.connection_count(), MAX_CONNECTIONS);
        let rx = env.drain_rx();
        assert_eq!(
            rx.iter()
                .filter(|(h, _)| h.op == VIRTIO_VSOCK_OP_RST)
                .count(),
            5
        );
        // Nobody reads connection 0's host side: once BUF_ALLOC is buffered, more is a
        // violation and the connection is reset.
        let chunk = vec![1u8; 64 << 10];
        let mut rw = guest(VIRTIO_VSOCK_OP_RW, 0, 80);
        rw.len = chunk.len() as u32;
        let key = ConnKey {
            host_port: 80,
            guest_port: 0,
        };
        let mut sent = 0usize;
        while env.muxer.conns.contains_key(&key) {
            env.muxer.handle_tx(&rw, &chunk);
            sent += chunk.len();
            assert!(sent <= 64 << 20, "never reset");
        }
        assert!(env.muxer.counters.resets_sent >= 6);
        assert!(sent >= BUF_ALLOC as usize);
    }

    /// Packets that make no sense on a connection reset it: a RESPONSE to a connection
    /// the guest asked for, data after the guest's own SHUTDOWN SEND, an unknown op.
    #[test]
    fn protocol_violations_reset_the_connection() {
        let mut env = Env::new("violations");
        let _host = UnixListener::bind(format!("{}_84", env.path().display())).unwrap();
        let connect = |env: &mut Env, port: u32| {
            env.muxer
                .handle_tx(&guest(VIRTIO_VSOCK_OP_REQUEST, port, 84), &[]);
            assert_eq!(ops(&env.drain_rx()), [VIRTIO_VSOCK_OP_RESPONSE]);
        };
        connect(&mut env, 1);
        env.muxer
            .handle_tx(&guest(VIRTIO_VSOCK_OP_RESPONSE, 1, 84), &[]);
        assert_eq!(ops(&env.drain_rx()), [VIRTIO_VSOCK_OP_RST]);

        connect(&mut env, 2);
        let mut sd = guest(VIRTIO_VSOCK_OP_SHUTDOWN, 2, 84);
        sd.flags = VIRTIO_VSOCK_SHUTDOWN_F_SEND;
        env.muxer.handle_tx(&sd, &[]);
        assert_eq!(env.muxer.connection_count(), 1);
        let mut rw = guest(VIRTIO_VSOCK_OP_RW, 2, 84);
        rw.len = 1;
        env.muxer.handle_tx(&rw, b"x");
        assert_eq!(ops(&env.drain_rx()), [VIRTIO_VSOCK_OP_RST]);

        connect(&mut env, 3);
        env.muxer.handle_tx(&guest(99, 3, 84), &[]);
        assert_eq!(ops(&env.drain_rx()), [VIRTIO_VSOCK_OP_RST]);
        assert_eq!(env.muxer.connection_count(), 0);
        // A REQUEST for a connection that exists is ignored, not a second connection.
        connect(&mut env, 4);
        env.muxer
            .handle_tx(&guest(VIRTIO_VSOCK_OP_REQUEST, 4, 84), &[]);
        assert!(env.drain_rx().is_empty());
        assert_eq!(env.muxer.connection_count(), 1);
    }

    #[test]
    fn a_packet_with_a_bad_payload_resets_its_connection() {
        let mut env = Env::new("reject");
        let _host = UnixListener::bind(format!("{}_83", env.path().display())).unwrap();
        env.muxer
            .handle_tx(&guest(VIRTIO_VSOCK_OP_REQUEST, 5, 83), &[]);
        assert_eq!(ops(&env.drain_rx()), [VIRTIO_VSOCK_OP_RESPONSE]);
        let mut rw = guest(VIRTIO_VSOCK_OP_RW, 5, 83);
        rw.len = 1 << 30;
        env.muxer.reject(&rw);
        assert_eq!(env.muxer.connection_count(), 0);
        assert_eq!(ops(&env.drain_rx()), [VIRTIO_VSOCK_OP_RST]);
        // For no connection: a RST all the same; with a foreign CID: nothing.
        env.muxer.reject(&rw);
        rw.src_cid = 42;
        env.muxer.reject(&rw);
        assert_eq!(ops(&env.drain_rx()), [VIRTIO_VSOCK_OP_RST]);
    }

    #[test]
    fn guest_shutdown_both_ways_flushes_then_resets() {
        let mut env = Env::new("shut");
        let host = UnixListener::bind(format!("{}_81", env.path().display())).unwrap();
        env.muxer
            .handle_tx(&guest(VIRTIO_VSOCK_OP_REQUEST, 9, 81), &[]);
        env.drain_rx();
        let (mut peer, _) = host.accept().unwrap();
        let mut rw = guest(VIRTIO_VSOCK_OP_RW, 9, 81);
        rw.len = 3;
        env.muxer.handle_tx(&rw, b"bye");
        let mut sd = guest(VIRTIO_VSOCK_OP_SHUTDOWN, 9, 81);
        sd.flags = VIRTIO_VSOCK_SHUTDOWN_F_SEND | VIRTIO_VSOCK_SHUTDOWN_F_RECEIVE;
        env.muxer.handle_tx(&sd, &[]);
        let mut all = Vec::new();
        peer.read_to_end(&mut all).unwrap();
        assert_eq!(all, b"bye");
        assert_eq!(env.muxer.connection_count(), 0);
        assert_eq!(ops(&env.drain_rx()), [VIRTIO_VSOCK_OP_RST]);
    }

    #[test]
    fn no_credit_means_a_credit_request_not_data() {
        let mut env = Env::new("credit");
        let host = UnixListener::bind(format!("{}_82", env.path().display())).unwrap();
        let mut req = guest(VIRTIO_VSOCK_OP_REQUEST, 4, 82);
        req.buf_alloc = 4;
        env.muxer.handle_tx(&req, &[]);
        env.drain_rx();
        let (mut peer, _) = host.accept().unwrap();
        peer.write_all(b"abcdefgh").unwrap();
        let key = ConnKey {
            host_port: 82,
            guest_port: 4,
        };
        let token = env.muxer.conns[&key].token;
        env.muxer.fd_ready(token, EventSet::IN);
        let rx = env.drain_rx();
        assert_eq!(
            ops(&rx),
            [VIRTIO_VSOCK_OP_RW, VIRTIO_VSOCK_OP_CREDIT_REQUEST]
        );
        assert_eq!(rx[0].1, b"abcd");
        // An answer that still has no room does not start a question-answer loop.
        let mut full = guest(VIRTIO_VSOCK_OP_CREDIT_UPDATE, 4, 82);
        full.buf_alloc = 4;
        env.muxer.handle_tx(&full, &[]);
        assert!(env.drain_rx().is_empty());
        // The guest consumed them: the rest follows.
        let mut upd = guest(VIRTIO_VSOCK_OP_CREDIT_UPDATE, 4, 82);
        upd.buf_alloc = 4;
        upd.fwd_cnt = 4;
        env.muxer.handle_tx(&upd, &[]);
        let rx = env.drain_rx();
        assert_eq!(rx[0].1, b"efgh");
        // A CREDIT_REQUEST from the guest is answered.
        env.muxer
            .handle_tx(&guest(VIRTIO_VSOCK_OP_CREDIT_REQUEST, 4, 82), &[]);
        let rx = env.drain_rx();
        assert_eq!(ops(&rx), [VIRTIO_VSOCK_OP_CREDIT_UPDATE]);
    }
}
