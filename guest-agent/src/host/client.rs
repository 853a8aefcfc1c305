//! The host-side client: connects, says hello, answers the agent's time queries, and
//! reconnects by itself (bounded backoff) whenever the connection drops.
//!
//! One worker thread owns the reading half of the connection; callers write their
//! request under a lock and wait on a channel registered under the request's id, which
//! the worker completes when the answer with that id arrives.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::clipboard::{ClipboardEvent, HostClipboard};
use super::share::serve::{ConnShares, FrameSink};
use super::share::ShareConfig;
use super::transport::{connect, Endpoint};
use crate::protocol::fs::{is_plain_name, FsMountResult};
use crate::protocol::{
    decode_payload, encode_message, error_code, Capabilities, EncodeError, ErrorReply,
    FrameDecoder, FsShares, GuestInfo, Hello, Message, PowerAction, TimeReply, TimeSyncReport,
    PROTOCOL_MAJOR, PROTOCOL_MINOR,
};
use crate::util::{error_chain, system_now_ns};

/// What the host offers the agent: it answers time queries, shares a clipboard, takes
/// display status reports and serves shared folders.
pub const HOST_CAPABILITIES: Capabilities = Capabilities::TIME
    .union(Capabilities::CLIPBOARD)
    .union(Capabilities::DISPLAY)
    .union(Capabilities::SHARED_FOLDERS)
    .union(Capabilities::SHARE_DIR_PLUS);

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// How long a call waits for a connection and then for its answer.
    pub call_timeout: Duration,
    /// How long [`AgentClient::connect`] waits for the first connection.
    pub connect_timeout: Duration,
    /// Reconnection backoff: starts at `backoff_min`, doubles up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Delay before answering each time query: a test knob that simulates a slow host.
    pub time_reply_delay: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            time_reply_delay: Duration::ZERO,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the agent: {0}")]
    Unreachable(String),
    #[error("no connection to the agent within {0:?}")]
    NotConnected(Duration),
    #[error("the agent did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the connection dropped before the answer came")]
    Disconnected,
    #[error("writing the request failed")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error("agent error {code}: {text}")]
    Agent { code: u16, text: String },
    #[error("the agent answered with message kind {0:#06x}")]
    Unexpected(u16),
    #[error("the agent does not offer {0}")]
    NotOffered(&'static str),
    #[error("share: {0}")]
    Share(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Clipboard(String),
}

/// Things that happen without a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    Connected(Hello),
    Disconnected,
    /// The agent's answer to the shares announced on a connection (after each connect
    /// and each [`AgentClient::add_share`]).
    SharesMounted(Vec<FsMountResult>),
    /// A message from the agent that answers no call (a display status, an error for an
    /// id we no longer wait for).
    Message(Message),
    Clipboard(ClipboardEvent),
}

#[derive(Default)]
struct ConnState {
    writer: Option<UnixStream>,
    peer: Option<Hello>,
    last_error: Option<String>,
}

pub(super) struct Shared {
    pub(super) clipboard: HostClipboard,
    endpoint: Endpoint,
    config: ClientConfig,
    state: Mutex<ConnState>,
    changed: Condvar,
    pending: Mutex<HashMap<u32, Sender<Message>>>,
    next_id: AtomicU32,
    connections: AtomicU64,
    /// Every message received from the agent (tests count them to spot chatter).
    received: AtomicU64,
    stop: AtomicBool,
    events: SyncSender<ClientEvent>,
    /// Shares to export on every connection, in the order added (index + 1 = share id).
    shares: Mutex<Vec<ShareConfig>>,
    /// The current connection's share servers, when the agent offers shared folders.
    conn_shares: Mutex<Option<Arc<ConnShares>>>,
    /// Announcements one at a time, each with the full list as it is when sent, so the
    /// last one the agent sees is the newest.
    announcing: Mutex<()>,
}

/// Room offered to each socket read: a whole 1 MiB file chunk in one or two reads.
const READ_ROOM: usize = 512 * 1024;

/// Events queue up to this many; beyond, new ones are dropped (nobody is reading).
const EVENT_QUEUE: usize = 256;

pub struct AgentClient {
    shared: Arc<Shared>,
    events: Receiver<ClientEvent>,
    worker: Option<JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves plain data behind: keep going.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl AgentClient {
    /// Starts the client and waits for the first connection and hello.
    pub fn connect(endpoint: Endpoint, config: ClientConfig) -> Result<Self, ClientError> {
        let client = Self::start(endpoint, config);
        let timeout = client.shared.config.connect_timeout;
        match client.wait_connected(timeout) {
            Ok(_) => Ok(client),
            Err(_) => {
                let why = lock(&client.shared.state)
                    .last_error
                    .clone()
                    .unwrap_or_else(|| format!("no hello within {timeout:?}"));
                Err(ClientError::Unreachable(why))
            }
        }
    }

    /// Starts the client without waiting: it connects (and reconnects) in the background.
    pub fn start(endpoint: Endpoint, config: ClientConfig) -> Self {
        Self::start_with(endpoint, config, Vec::new())
    }

    /// Like [`start`](Self::start), exporting `shares` from the first connection on (one
    /// announcement with all of them, instead of one per [`add_share`](Self::add_share)).
    pub fn start_sharing(
        endpoint: Endpoint,
        config: ClientConfig,
        shares: Vec<ShareConfig>,
    ) -> Result<Self, ClientError> {
        for (i, share) in shares.iter().enumerate() {
            check_share(share)?;
            if shares[..i].iter().any(|s| s.name == share.name) {
                return Err(ClientError::Share(format!(
                    "{} is shared twice",
                    share.name
                )));
            }
        }
        Ok(Self::start_with(endpoint, config, shares))
    }

    fn start_with(endpoint: Endpoint, config: ClientConfig, shares: Vec<ShareConfig>) -> Self {
        let (events_tx, events) = mpsc::sync_channel(EVENT_QUEUE);
        let shared = Arc::new(Shared {
            clipboard: HostClipboard::default(),
            endpoint,
            config,
            state: Mutex::default(),
            changed: Condvar::new(),
            pending: Mutex::default(),
            next_id: AtomicU32::new(1),
            connections: AtomicU64::new(0),
            received: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            events: events_tx,
            shares: Mutex::new(shares),
            conn_shares: Mutex::default(),
            announcing: Mutex::default(),
        });
        let worker_shared = Arc::clone(&shared);
        let worker = std::thread::Builder::new()
            .name("vireo-agent-client".into())
            .spawn(move || Shared::run(&worker_shared))
            .ok();
        Self {
            shared,
            events,
            worker,
        }
    }

    pub fn events(&self) -> &Receiver<ClientEvent> {
        &self.events
    }

    /// Successful connections (hello done) so far: a reconnect makes it grow.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Messages received from the agent so far, the hellos included.
    pub fn messages_received(&self) -> u64 {
        self.shared.received.load(Ordering::SeqCst)
    }

    /// The agent's hello on the current connection.
    pub fn peer(&self) -> Option<Hello> {
        lock(&self.shared.state).peer.clone()
    }

    /// Waits until a connection is up and returns the agent's hello.
    pub fn wait_connected(&self, timeout: Duration) -> Result<Hello, ClientError> {
        self.shared.wait_connected(timeout)
    }

    /// Sends a message and waits for the answer carrying its id; an error message from
    /// the agent becomes [`ClientError::Agent`].
    pub fn request(&self, message: &Message) -> Result<Message, ClientError> {
        let frame_for = |id| encode_message(id, message);
        self.request_frame(frame_for)
    }

    /// Sends a message of any kind with a raw body (kinds this version does not model,
    /// malformed bodies), and waits for the answer.
    pub fn request_raw(&self, kind: u16, body: &[u8]) -> Result<Message, ClientError> {
        self.request_frame(|id| {
            Ok(crate::protocol::encode_frame(
                &crate::protocol::encode_raw_payload(kind, id, body),
            )?)
        })
    }

    fn request_frame(
        &self,
        frame_for: impl FnOnce(u32) -> Result<Vec<u8>, EncodeError>,
    ) -> Result<Message, ClientError> {
        self.shared.request_frame(frame_for)
    }

    pub(super) fn shared(&self) -> &Shared {
        &self.shared
    }

    pub(super) fn config(&self) -> &ClientConfig {
        &self.shared.config
    }

    pub(super) fn require_capability(
        &self,
        cap: Capabilities,
        name: &'static str,
    ) -> Result<(), ClientError> {
        self.require(cap, name)
    }

    /// Writes a message that expects no answer (id 0).
    pub(super) fn send_unsolicited(&self, message: &Message) -> Result<(), ClientError> {
        self.wait_connected(self.shared.config.call_timeout)?;
        let frame = encode_message(crate::protocol::NO_REPLY, message)?;
        let mut state = lock(&self.shared.state);
        match state.writer.as_mut() {
            Some(w) => Ok(w.write_all(&frame)?),
            None => Err(ClientError::Disconnected),
        }
    }

    fn require(&self, cap: Capabilities, name: &'static str) -> Result<(), ClientError> {
        let hello = self.wait_connected(self.shared.config.call_timeout)?;
        if hello.capabilities.contains(cap) {
            Ok(())
        } else {
            Err(ClientError::NotOffered(name))
        }
    }

    pub fn info(&self) -> Result<GuestInfo, ClientError> {
        self.require(Capabilities::INFO, "guest info")?;
        match self.request(&Message::InfoRequest)? {
            Message::InfoReply(info) => Ok(info),
            other => Err(ClientError::Unexpected(other.kind())),
        }
    }

    /// Round trip of a ping carrying a few bytes that must come back unchanged.
    pub fn ping(&self) -> Result<Duration, ClientError> {
        let payload = system_now_ns().to_le_bytes().to_vec();
        let start = Instant::now();
        match self.request(&Message::Ping(payload.clone()))? {
            Message::Pong(echo) if echo == payload => Ok(start.elapsed()),
            other => Err(ClientError::Unexpected(other.kind())),
        }
    }

    /// Asks the agent to sync its clock now; returns once it has.
    pub fn time_sync_now(&self) -> Result<TimeSyncReport, ClientError> {
        self.require(Capabilities::TIME, "time sync")?;
        match self.request(&Message::TimeSyncNow)? {
            Message::TimeSyncReport(report) => Ok(report),
            other => Err(ClientError::Unexpected(other.kind())),
        }
    }

    /// Exports a host folder to the guest, now (when connected: returns where the guest
    /// mounted it) and on every later connection. Share ids are the order of adding.
    pub fn add_share(&self, config: ShareConfig) -> Result<Option<String>, ClientError> {
        check_share(&config)?;
        let conn = {
            // Held until the live connection has it too, so a connection starting
            // meanwhile cannot miss it (see `start_shares`).
            let mut shares = lock(&self.shared.shares);
            if shares.iter().any(|s| s.name == config.name) {
                return Err(ClientError::Share(format!(
                    "{} is already shared",
                    config.name
                )));
            }
            shares.push(config.clone());
            let id = shares.len() as u32;
            let conn = lock(&self.shared.conn_shares).clone();
            let Some(conn) = conn else {
                return Ok(None);
            };
            conn.add(id, config.clone())
                .map_err(|e| ClientError::Share(error_chain(&e).to_string()))?;
            conn
        };
        let results = self.shared.announce(&conn)?;
        match results.into_iter().find(|r| r.name == config.name) {
            Some(FsMountResult {
                result: Ok(path), ..
            }) => Ok(Some(path)),
            Some(FsMountResult {
                result: Err(why), ..
            }) => Err(ClientError::Share(why)),
            None => Err(ClientError::Share("the agent did not mount it".into())),
        }
    }

    pub fn shutdown(&self) -> Result<(), ClientError> {
        self.power(PowerAction::Shutdown)
    }

    pub fn reboot(&self) -> Result<(), ClientError> {
        self.power(PowerAction::Reboot)
    }

    fn power(&self, action: PowerAction) -> Result<(), ClientError> {
        self.require(Capabilities::POWER, "power control")?;
        match self.request(&Message::PowerRequest(action))? {
            Message::PowerAccepted(a) if a == action => Ok(()),
            other => Err(ClientError::Unexpected(other.kind())),
        }
    }
}

impl Drop for AgentClient {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(w) = lock(&self.shared.state).writer.as_ref() {
            // Unblocks the worker's read.
            let _ = w.shutdown(std::net::Shutdown::Both);
        }
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

impl Shared {
    /// Waits until a connection is up and returns the agent's hello.
    pub fn wait_connected(&self, timeout: Duration) -> Result<Hello, ClientError> {
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.state);
        loop {
            if let (Some(_), Some(peer)) = (&state.writer, &state.peer) {
                return Ok(peer.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClientError::NotConnected(timeout));
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn request_frame(
        &self,
        frame_for: impl FnOnce(u32) -> Result<Vec<u8>, EncodeError>,
    ) -> Result<Message, ClientError> {
        let timeout = self.config.call_timeout;
        let deadline = Instant::now() + timeout;
        self.wait_connected(timeout)?;
        let id = self.fresh_id();
        let frame = frame_for(id)?;
        let (tx, rx) = mpsc::channel();
        lock(&self.pending).insert(id, tx);
        let written = {
            let mut state = lock(&self.state);
            match state.writer.as_mut() {
                Some(w) => w.write_all(&frame).map_err(ClientError::from),
                None => Err(ClientError::Disconnected),
            }
        };
        if let Err(err) = written {
            lock(&self.pending).remove(&id);
            return Err(err);
        }
        let answer = rx.recv_timeout(deadline.saturating_duration_since(Instant::now()));
        lock(&self.pending).remove(&id);
        match answer {
            Ok(Message::Error(ErrorReply { code, text, .. })) => {
                Err(ClientError::Agent { code, text })
            }
            Ok(message) => Ok(message),
            Err(RecvTimeoutError::Timeout) => Err(ClientError::Timeout(timeout)),
            Err(RecvTimeoutError::Disconnected) => Err(ClientError::Disconnected),
        }
    }

    fn fresh_id(&self) -> u32 {
        loop {
            // Zero means "no reply expected": skip it when the counter wraps.
            let id = self.next_id.fetch_add(1, Ordering::SeqCst);
            if id != 0 {
                return id;
            }
        }
    }

    /// A connection to an agent that offers shared folders: serve the configured shares
    /// and tell the agent about them (from another thread: the worker must keep reading
    /// to receive the answer).
    fn start_shares(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let send: FrameSink = Arc::new(move |frame: &[u8]| {
            if let Some(shared) = weak.upgrade() {
                shared.write_frame(frame);
            }
        });
        let conn = Arc::new(ConnShares::start(send));
        {
            let shares = lock(&self.shares);
            for (i, config) in shares.iter().enumerate() {
                if let Err(err) = conn.add(i as u32 + 1, config.clone()) {
                    eprintln!("vireo-host: {}", error_chain(&err));
                }
            }
            *lock(&self.conn_shares) = Some(Arc::clone(&conn));
        }
        let shared = Arc::clone(self);
        let _ = std::thread::Builder::new()
            .name("vireo-share-announce".into())
            .spawn(move || {
                if let Err(err) = shared.announce(&conn) {
                    lock(&shared.state).last_error = Some(error_chain(&err).to_string());
                }
            });
    }

    fn announce(&self, conn: &ConnShares) -> Result<Vec<FsMountResult>, ClientError> {
        let _one_at_a_time = lock(&self.announcing);
        let message = Message::FsShares(FsShares {
            shares: conn.infos(),
        });
        match self.request_frame(|id| encode_message(id, &message))? {
            Message::FsSharesReply(reply) => {
                self.emit(ClientEvent::SharesMounted(reply.results.clone()));
                Ok(reply.results)
            }
            other => Err(ClientError::Unexpected(other.kind())),
        }
    }

    fn emit(&self, event: ClientEvent) {
        let _ = self.events.try_send(event);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// The worker: connect, serve, and on any failure start again after a backoff.
    fn run(self: &Arc<Self>) {
        let mut backoff = self.config.backoff_min;
        while !self.stopped() {
            match self.handshake() {
                Ok((stream, decoder, hello)) => {
                    backoff = self.config.backoff_min;
                    self.serve(stream, decoder, hello);
                }
                Err(why) => {
                    lock(&self.state).last_error = Some(why);
                    // Sleep in slices so that dropping the client is not held up.
                    let until = Instant::now() + backoff;
                    while !self.stopped() && Instant::now() < until {
                        std::thread::sleep(Duration::from_millis(10).min(backoff));
                    }
                    backoff = (backoff * 2).min(self.config.backoff_max);
                }
            }
        }
    }

    /// Connects and exchanges hellos; returns the stream, the decoder with any bytes that
    /// followed the agent's hello, and the hello.
    fn handshake(&self) -> Result<(UnixStream, FrameDecoder, Hello), String> {
        let timeout = self.config.connect_timeout;
        let mut stream = connect(&self.endpoint, timeout).map_err(|e| chain(&e))?;
        crate::agent::transport::set_big_buffers(std::os::fd::AsFd::as_fd(&stream));
        let id = self.fresh_id();
        let hello = Message::Hello(Hello {
            major: PROTOCOL_MAJOR,
            minor: PROTOCOL_MINOR,
            capabilities: HOST_CAPABILITIES,
            software: concat!("vireo-host ", env!("CARGO_PKG_VERSION")).into(),
        });
        let frame = encode_message(id, &hello).map_err(|e| e.to_string())?;
        stream.write_all(&frame).map_err(|e| chain(&e))?;
        stream
            .set_read_timeout(Some(timeout))
            .map_err(|e| chain(&e))?;
        let mut decoder = FrameDecoder::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = stream.read(&mut buf).map_err(|e| chain(&e))?;
            if n == 0 {
                return Err("the agent closed the connection during the hello".into());
            }
            decoder.push(&buf[..n]);
            while let Some(payload) = decoder.next_frame().map_err(|e| e.to_string())? {
                match decode_payload(&payload) {
                    Ok(env) if env.id == id => match env.message {
                        Message::Hello(peer) if peer.major == PROTOCOL_MAJOR => {
                            stream.set_read_timeout(None).map_err(|e| chain(&e))?;
                            return Ok((stream, decoder, peer));
                        }
                        Message::Hello(peer) => {
                            return Err(format!(
                                "the agent speaks protocol {}.{}, we speak {PROTOCOL_MAJOR}.{PROTOCOL_MINOR}",
                                peer.major, peer.minor
                            ))
                        }
                        Message::Error(e) => {
                            return Err(format!("the agent refused the hello: {}", e.text))
                        }
                        other => {
                            return Err(format!(
                                "the agent answered the hello with kind {:#06x}",
                                other.kind()
                            ))
                        }
                    },
                    // Anything before the hello's answer is not ours to handle yet.
                    _ => continue,
                }
            }
        }
    }

    fn serve(self: &Arc<Self>, stream: UnixStream, mut decoder: FrameDecoder, hello: Hello) {
        let Ok(writer) = stream.try_clone() else {
            return;
        };
        // The worker writes answers to time queries itself: if the agent stopped reading
        // while we both write, the timeout breaks the stall instead of hanging the worker.
        let _ = writer.set_write_timeout(Some(self.config.call_timeout));
        // Before the connection is published, so that a caller that sees it connected
        // finds its share servers too (`add_share`).
        if hello.capabilities.contains(Capabilities::SHARED_FOLDERS) {
            self.start_shares();
        }
        self.clipboard.reset();
        {
            let mut state = lock(&self.state);
            state.writer = Some(writer);
            state.peer = Some(hello.clone());
            state.last_error = None;
        }
        self.connections.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_all();
        self.emit(ClientEvent::Connected(hello));
        if self.stopped() {
            // Drop raced the connection: the writer was not there to shut down.
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }

        let mut reader = stream;
        'conn: loop {
            // Frames that came with the hello first, then whatever arrives.
            loop {
                match decoder.next_frame_with(|p| self.on_payload(p)) {
                    Ok(Some(())) => {}
                    Ok(None) => break,
                    Err(err) => {
                        lock(&self.state).last_error = Some(err.to_string());
                        break 'conn;
                    }
                }
            }
            match decoder.fill_with(READ_ROOM, |room| reader.read(room)) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    lock(&self.state).last_error = Some(e.to_string());
                    break;
                }
            }
        }
        {
            let mut state = lock(&self.state);
            state.writer = None;
            state.peer = None;
        }
        // Ends the share workers and watches; the next connection starts afresh.
        lock(&self.conn_shares).take();
        // Dropping the senders wakes every waiting call with `Disconnected`.
        lock(&self.pending).clear();
        self.changed.notify_all();
        self.emit(ClientEvent::Disconnected);
    }

    fn reply(&self, id: u32, message: &Message) {
        if let Ok(frame) = encode_message(id, message) {
            self.write_frame(&frame);
        }
    }

    fn write_frame(&self, frame: &[u8]) {
        if let Some(w) = lock(&self.state).writer.as_mut() {
            // A failed write shows up as a failed read in the worker: nothing to do.
            let _ = w.write_all(frame);
        }
    }

    fn on_payload(&self, payload: &[u8]) {
        self.received.fetch_add(1, Ordering::SeqCst);
        let env = match decode_payload(payload) {
            Ok(env) => env,
            Err(err) => {
                let (id, _) = err.reply_to();
                self.reply(id, &Message::Error(err.to_error_reply()));
                return;
            }
        };
        let id = env.id;
        match env.message {
            Message::TimeQuery => {
                if !self.config.time_reply_delay.is_zero() {
                    std::thread::sleep(self.config.time_reply_delay);
                }
                let reply = TimeReply {
                    host_unix_ns: system_now_ns(),
                };
                self.reply(id, &Message::TimeReply(reply));
            }
            Message::Ping(data) => self.reply(id, &Message::Pong(data)),
            Message::FsRequest(request) => {
                let conn = lock(&self.conn_shares).clone();
                match conn {
                    Some(conn) => conn.submit(id, request),
                    None => self.reply(
                        id,
                        &Message::FsReply(crate::protocol::fs::FsReply::Errno(libc::ENODEV)),
                    ),
                }
            }
            m @ (Message::Hello(_)
            | Message::Error(_)
            | Message::Pong(_)
            | Message::InfoReply(_)
            | Message::PowerAccepted(_)
            | Message::TimeSyncReport(_)
            | Message::FsSharesReply(_)
            | Message::TimeReply(_)
            | Message::ClipboardData(_)
            | Message::ClipboardStatus(_)
            | Message::DisplayStatus(_)) => {
                let waiter = lock(&self.pending).remove(&id);
                match waiter {
                    Some(tx) => {
                        let _ = tx.send(m);
                    }
                    None => self.emit(ClientEvent::Message(m)),
                }
            }
            m @ (Message::ClipboardGrab(_)
            | Message::ClipboardRequest(_)
            | Message::ClipboardRelease(_)) => {
                let (reply, event) = self.clipboard.on_message(m);
                if let Some(reply) = reply {
                    self.reply(id, &reply);
                }
                if let Some(ClipboardEvent::HostDataSent { serial }) = event {
                    self.clipboard.mark_sent(serial);
                }
                if let Some(event) = event {
                    self.emit(ClientEvent::Clipboard(event));
                }
            }
            m @ (Message::InfoRequest
            | Message::PowerRequest(_)
            | Message::TimeSyncNow
            | Message::FsReply(_)
            | Message::FsShares(_)
            | Message::FsInvalidate(_)
            | Message::DisplayStatusRequest
            | Message::DisplayResize(_)) => self.reply(
                id,
                &Message::Error(ErrorReply {
                    code: error_code::UNEXPECTED,
                    in_reply_to_kind: m.kind(),
                    text: "the host does not answer this message".into(),
                }),
            ),
        }
    }
}

/// Fails now, not at the next connection, for a share that cannot be exported.
fn check_share(config: &ShareConfig) -> Result<(), ClientError> {
    if !is_plain_name(&config.name) {
        return Err(ClientError::Share(format!(
            "bad share name {:?}",
            config.name
        )));
    }
    super::share::ShareServer::open(0, config.clone())
        .map(drop)
        .map_err(|e| ClientError::Share(error_chain(&e).to_string()))
}

fn chain(err: &dyn std::error::Error) -> String {
    error_chain(err).to_string()
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;
    use std::path::PathBuf;

    use super::*;
    use crate::protocol::{decode_payload, encode_frame, encode_raw_payload, Envelope};

    fn socket_path(name: &str) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("vireo-client-{}-{name}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        path
    }

    /// Reads frames from `stream` until one decodes; returns it.
    fn read_envelope(stream: &mut UnixStream, decoder: &mut FrameDecoder) -> Envelope {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(p) = decoder.next_frame().unwrap() {
                return decode_payload(&p).unwrap();
            }
            let n = stream.read(&mut buf).unwrap();
            assert!(n > 0, "closed");
            decoder.push(&buf[..n]);
        }
    }

    /// A hand-written agent: answers every connection's hello with `major`, then runs
    /// `then` on the first connection, and keeps that connection open until `release`
    /// is dropped. The listener lives as long as the test process.
    fn fake_agent(
        path: &PathBuf,
        major: u16,
        release: Receiver<()>,
        then: impl FnOnce(&mut UnixStream, &mut FrameDecoder) + Send + 'static,
    ) -> Receiver<()> {
        let listener = UnixListener::bind(path).unwrap();
        let (done_tx, done) = mpsc::channel();
        std::thread::spawn(move || {
            let mut then = Some(then);
            let mut kept = Vec::new();
            for stream in listener.incoming() {
                let mut stream = stream.unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                let mut decoder = FrameDecoder::new();
                let hello = read_envelope(&mut stream, &mut decoder);
                assert!(
                    matches!(hello.message, Message::Hello(ref h) if h.capabilities == HOST_CAPABILITIES)
                );
                let answer = Message::Hello(Hello {
                    major,
                    minor: 9,
                    capabilities: Capabilities::INFO,
                    software: "fake agent".into(),
                });
                stream
                    .write_all(&encode_message(hello.id, &answer).unwrap())
                    .unwrap();
                if let Some(then) = then.take() {
                    then(&mut stream, &mut decoder);
                    let _ = done_tx.send(());
                    let _ = release.recv();
                }
                kept.push(stream);
            }
        });
        done
    }

    #[test]
    fn host_answers_unknown_kinds_and_time_queries_from_a_newer_agent() {
        let path = socket_path("newer");
        let (release_tx, release) = mpsc::channel();
        let done = fake_agent(&path, PROTOCOL_MAJOR, release, |stream, decoder| {
            let frame = encode_frame(&encode_raw_payload(0x7a01, 77, b"new")).unwrap();
            stream.write_all(&frame).unwrap();
            let reply = read_envelope(stream, decoder);
            assert_eq!(reply.id, 77);
            assert!(
                matches!(reply.message, Message::Error(ref e) if e.code == error_code::UNKNOWN_KIND && e.in_reply_to_kind == 0x7a01)
            );
            stream
                .write_all(&encode_message(78, &Message::TimeQuery).unwrap())
                .unwrap();
            let reply = read_envelope(stream, decoder);
            assert_eq!(reply.id, 78);
            let Message::TimeReply(t) = reply.message else {
                panic!("{reply:?}")
            };
            assert!((t.host_unix_ns - system_now_ns()).abs() < 1_000_000_000);
        });
        let client =
            AgentClient::connect(Endpoint::Unix(path.clone()), ClientConfig::default()).unwrap();
        // A panic in the fake agent shows up as a closed channel here.
        done.recv_timeout(Duration::from_secs(5)).unwrap();
        // The fake agent offers info only.
        assert!(matches!(
            client.time_sync_now(),
            Err(ClientError::NotOffered(_))
        ));
        drop(release_tx);
        drop(client);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn agent_of_another_major_version_is_refused() {
        let path = socket_path("major");
        // Released at once: every reconnection attempt meets the same refusal.
        let (_, release) = mpsc::channel();
        let _done = fake_agent(&path, PROTOCOL_MAJOR + 1, release, |_, _| {});
        let config = ClientConfig {
            connect_timeout: Duration::from_millis(500),
            ..ClientConfig::default()
        };
        let err = AgentClient::connect(Endpoint::Unix(path.clone()), config)
            .err()
            .expect("refused");
        let expected = format!("speaks protocol {}.9", PROTOCOL_MAJOR + 1);
        assert!(err.to_string().contains(&expected), "{err}");
        std::fs::remove_file(&path).unwrap();
    }
}
