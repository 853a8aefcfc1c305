//! The control socket: a Unix socket in the VM's runtime directory where the app (or a
//! test, or `socat`) sends `protocol::Request`s and reads `protocol::Response`s, one JSON
//! line each. One thread serves the listener and every client through one epoll loop;
//! the VM's owner stops it at teardown.
//!
//! Clients that sent `display-attach` are also subscribed to the `events::EventHub`:
//! its eventfd is in the same epoll set, and pushed events join the answers in the
//! client's outgoing queue. Every write is non-blocking; what a client does not read
//! waits in its bounded queue, and a client past the bound is disconnected, so one
//! stuck client never stalls the others or the devices.

pub mod client;
pub mod events;
pub mod protocol;

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::socket_path::{BindError, Live, SocketPath};
use events::EventHub;
use protocol::{encode_event, encode_response, parse_request, Request, Response};

/// Answers requests; the VM implements it.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, request: Request) -> Response;
    /// The display's events, if the VM has a display: `display-attach` subscribes the
    /// connection to them (the server answers that request itself, as it needs the
    /// connection to pass the framebuffer's fd).
    fn events(&self) -> Option<Arc<EventHub>> {
        None
    }
}

/// A client may not send a line longer than this (a runaway client is disconnected).
const MAX_LINE: usize = 64 << 10;
/// More clients than this are turned away.
const MAX_CLIENTS: usize = 16;
/// Bytes of answers and events one client may leave unread before it is disconnected:
/// hundreds of cursor images, thousands of damage lines.
const MAX_UNREAD: usize = 8 << 20;
const TOKEN_STOP: u64 = 0;
const TOKEN_LISTENER: u64 = 1;
const TOKEN_EVENTS: u64 = 2;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("control socket {0} is in use by another engine: stop that VM first")]
    InUse(PathBuf),
    #[error("cannot create control socket {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the control thread: {0}")]
    Thread(#[source] io::Error),
}

pub struct ControlServer {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
    /// Removed when the server stops, if still ours.
    file: SocketPath,
}

impl ControlServer {
    /// Listens on `path` (a stale socket left by a dead engine is replaced; a live one
    /// is an error) and serves requests with `handler` until stopped.
    pub fn start(path: &Path, handler: Arc<dyn Handler>) -> Result<Self, Error> {
        Self::start_with(path, Live::Refuse, handler)
    }

    /// `start`, taking over a live socket at `path` if `live` says so (a migration's
    /// destination on the same host: see `socket_path`); it moves there at once, as the
    /// VM is whole by the time the control socket opens.
    pub fn start_with(path: &Path, live: Live, handler: Arc<dyn Handler>) -> Result<Self, Error> {
        let bind_err = |source| Error::Bind {
            path: path.to_owned(),
            source,
        };
        let (listener, file) = SocketPath::bind(path, live).map_err(|e| match e {
            BindError::InUse(p) => Error::InUse(p),
            BindError::NotASocket(p) => Error::Bind {
                path: p,
                source: io::Error::new(io::ErrorKind::AlreadyExists, "not a socket"),
            },
            BindError::Io { path, source } => Error::Bind { path, source },
        })?;
        file.claim().map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::Thread)?;
        let epoll = Epoll::new().map_err(Error::Thread)?;
        epoll
            .ctl(
                ControlOperation::Add,
                stop.as_raw_fd(),
                EpollEvent::new(EventSet::IN, TOKEN_STOP),
            )
            .map_err(Error::Thread)?;
        epoll
            .ctl(
                ControlOperation::Add,
                listener.as_raw_fd(),
                EpollEvent::new(EventSet::IN, TOKEN_LISTENER),
            )
            .map_err(Error::Thread)?;
        let hub = handler.events();
        if let Some(hub) = &hub {
            epoll
                .ctl(
                    ControlOperation::Add,
                    hub.wake_fd().as_raw_fd(),
                    EpollEvent::new(EventSet::IN, TOKEN_EVENTS),
                )
                .map_err(Error::Thread)?;
        }
        let thread = std::thread::Builder::new()
            .name("control".into())
            .stack_size(256 << 10)
            .spawn(move || serve(epoll, listener, handler, hub))
            .map_err(Error::Thread)?;
        Ok(Self {
            stop,
            thread: Some(thread),
            file,
        })
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A line waiting to be written, with the fd that rides on its first byte.
struct Outgoing {
    bytes: Vec<u8>,
    sent: usize,
    fd: Option<Arc<OwnedFd>>,
}

struct Client {
    stream: UnixStream,
    pending: Vec<u8>,
    out: VecDeque<Outgoing>,
    out_bytes: usize,
    /// Whether epoll also waits for the socket to be writable (the queue is not empty).
    wants_out: bool,
    /// The client's subscription to the hub, after `display-attach`.
    subscription: Option<u64>,
}

impl Client {
    fn new(stream: UnixStream) -> Self {
        Client {
            stream,
            pending: Vec::new(),
            out: VecDeque::new(),
            out_bytes: 0,
            wants_out: false,
            subscription: None,
        }
    }

    /// Queues a line (and an fd to pass with it). False: the client is too far behind.
    fn queue(&mut self, line: String, fd: Option<Arc<OwnedFd>>) -> bool {
        self.out_bytes += line.len();
        self.out.push_back(Outgoing {
            bytes: line.into_bytes(),
            sent: 0,
            fd,
        });
        self.out_bytes <= MAX_UNREAD
    }

    /// Writes what the socket takes now. False: the connection is broken.
    fn flush(&mut self) -> bool {
        use nix::errno::Errno;
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
        while let Some(front) = self.out.front_mut() {
            let iov = [IoSlice::new(&front.bytes[front.sent..])];
            let fds: Vec<i32> = match (&front.fd, front.sent) {
                (Some(fd), 0) => vec![fd.as_raw_fd()],
                _ => Vec::new(),
            };
            let rights = [ControlMessage::ScmRights(&fds)];
            let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
            let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
            match sendmsg::<()>(self.stream.as_raw_fd(), &iov, cmsgs, flags, None) {
                Ok(n) => {
                    front.sent += n;
                    if front.sent == front.bytes.len() {
                        self.out_bytes -= front.bytes.len();
                        self.out.pop_front();
                    }
                }
                Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => continue,
                Err(_) => return false,
            }
        }
        true
    }
}

/// Everything the control thread owns.
struct Server {
    epoll: Epoll,
    handler: Arc<dyn Handler>,
    hub: Option<Arc<EventHub>>,
    clients: HashMap<u64, Client>,
}

fn serve(
    epoll: Epoll,
    listener: UnixListener,
    handler: Arc<dyn Handler>,
    hub: Option<Arc<EventHub>>,
) {
    crate::sandbox::enter(crate::sandbox::ThreadKind::Control);
    let mut server = Server {
        epoll,
        handler,
        hub,
        clients: HashMap::new(),
    };
    let mut next_token = TOKEN_EVENTS + 1;
    let mut events = vec![EpollEvent::default(); MAX_CLIENTS + 3];
    loop {
        let n = match server.epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        for event in &events[..n] {
            match event.data() {
                TOKEN_STOP => return,
                TOKEN_LISTENER => accept(&mut server, &listener, &mut next_token),
                TOKEN_EVENTS => server.push_events(),
                token => {
                    let keep = server.serve_client(token);
                    server.finish(token, keep);
                }
            }
        }
    }
}

impl Server {
    /// After serving `token`: writes what it can, and drops the client if `keep` is
    /// false or its connection broke.
    fn finish(&mut self, token: u64, keep: bool) {
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        if keep && client.flush() {
            let wants_out = !client.out.is_empty();
            if wants_out != client.wants_out {
                let set = if wants_out {
                    EventSet::IN | EventSet::OUT
                } else {
                    EventSet::IN
                };
                let _ = self.epoll.ctl(
                    ControlOperation::Modify,
                    client.stream.as_raw_fd(),
                    EpollEvent::new(set, token),
                );
                client.wants_out = wants_out;
            }
            return;
        }
        if let Some(c) = self.clients.remove(&token) {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                c.stream.as_raw_fd(),
                EpollEvent::default(),
            );
            if let (Some(hub), Some(id)) = (&self.hub, c.subscription) {
                hub.unsubscribe(id);
            }
        }
    }

    /// The hub has events: hands them to their subscribers.
    fn push_events(&mut self) {
        let Some(hub) = self.hub.clone() else { return };
        hub.acknowledge();
        let tokens: Vec<u64> = self.clients.keys().copied().collect();
        for token in tokens {
            let Some(client) = self.clients.get_mut(&token) else {
                continue;
            };
            let Some(id) = client.subscription else {
                continue;
            };
            let keep = match hub.take(id) {
                Ok(pushed) => pushed
                    .into_iter()
                    .all(|p| client.queue(encode_event(&p.event), p.fd)),
                Err(lost) => {
                    tracing::warn!("control: dropping a display client: {lost}");
                    false
                }
            };
            self.finish(token, keep);
        }
    }

    /// Reads what the client sent and answers each complete line. False: drop it.
    fn serve_client(&mut self, token: u64) -> bool {
        let Some(client) = self.clients.get_mut(&token) else {
            return false;
        };
        let mut buf = [0u8; 4096];
        loop {
            match client.stream.read(&mut buf) {
                Ok(0) => return false,
                Ok(n) => client.pending.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
        while let Some(end) = client.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = client.pending.drain(..=end).collect();
            let text = String::from_utf8_lossy(&line[..line.len() - 1]);
            if text.trim().is_empty() {
                continue;
            }
            let queued = match (parse_request(&text), &self.hub) {
                (Ok(Request::DisplayAttach {}), Some(hub)) => attach(client, hub),
                (Ok(request), _) => {
                    client.queue(encode_response(&self.handler.handle(request)), None)
                }
                (Err(error), _) => client.queue(encode_response(&error), None),
            };
            if !queued {
                return false;
            }
        }
        if client.pending.len() > MAX_LINE {
            let _ = client.stream.write_all(
                encode_response(&Response::Error {
                    message: "request line too long".into(),
                })
                .as_bytes(),
            );
            return false;
        }
        true
    }
}

/// `display-attach`: (re)subscribes the client and answers with the screen's mode and
/// memfd, then the cursor as it is.
fn attach(client: &mut Client, hub: &EventHub) -> bool {
    if let Some(old) = client.subscription.take() {
        hub.unsubscribe(old);
    }
    let (id, mode, fd, cursor) = hub.subscribe();
    client.subscription = Some(id);
    let fd = if mode.enabled { fd } else { None };
    client.queue(encode_response(&Response::Display(mode)), fd)
        && cursor.is_none_or(|c| client.queue(encode_event(&c), None))
}

fn accept(server: &mut Server, listener: &UnixListener, next_token: &mut u64) {
    while let Ok((stream, _)) = listener.accept() {
        if server.clients.len() >= MAX_CLIENTS {
            let mut s = stream;
            let _ = s.write_all(
                encode_response(&Response::Error {
                    message: "too many clients".into(),
                })
                .as_bytes(),
            );
            continue;
        }
        if stream.set_nonblocking(true).is_err() {
            continue;
        }
        let token = *next_token;
        *next_token += 1;
        if server
            .epoll
            .ctl(
                ControlOperation::Add,
                stream.as_raw_fd(),
                EpollEvent::new(EventSet::IN, token),
            )
            .is_ok()
        {
            server.clients.insert(token, Client::new(stream));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};

    struct Echo;
    impl Handler for Echo {
        fn handle(&self, request: Request) -> Response {
            match request {
                Request::Status {} => Response::Status {
                    state: "running".into(),
                    vcpus: 1,
                    memory_mib: 64,
                },
                _ => Response::Ok,
            }
        }
    }

    #[test]
    fn serves_clients_and_survives_bad_lines() {
        let path =
            std::env::temp_dir().join(format!("vireo-control-test-{}.sock", std::process::id()));
        let server = ControlServer::start(&path, Arc::new(Echo)).unwrap();
        assert!(matches!(
            ControlServer::start(&path, Arc::new(Echo)),
            Err(Error::InUse(_))
        ));
        let stream = UnixStream::connect(&path).unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut w = stream;
        w.write_all(b"{\"request\":\"status\"}\ngarbage\n\n{\"request\":\"power-off\"}\n")
            .unwrap();
        let mut line = String::new();
        for expected in [
            "\"state\":\"running\"",
            "bad request",
            "\"response\":\"ok\"",
        ] {
            line.clear();
            reader.read_line(&mut line).unwrap();
            assert!(line.contains(expected), "{line}");
        }
        drop(server);
        assert!(!path.exists(), "socket removed at teardown");
    }

    struct WithHub(Arc<EventHub>);
    impl Handler for WithHub {
        fn handle(&self, _request: Request) -> Response {
            Response::Ok
        }
        fn events(&self) -> Option<Arc<EventHub>> {
            Some(self.0.clone())
        }
    }

    /// Reads one chunk and the fds that came with it.
    fn recv_with_fds(stream: &UnixStream) -> (Vec<u8>, Vec<OwnedFd>) {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
        use std::os::fd::FromRawFd;
        let mut buf = vec![0u8; 1 << 16];
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 4]);
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::empty(),
        )
        .unwrap();
        let mut fds = Vec::new();
        for c in msg.cmsgs().unwrap() {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: the kernel just installed these fds in this process for us.
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        let n = msg.bytes;
        buf.truncate(n);
        (buf, fds)
    }

    #[test]
    fn attached_clients_get_events_and_fds_and_a_stuck_one_is_dropped() {
        use protocol::{Event, ScreenMode};
        use std::os::unix::fs::FileExt;
        const EVENTS: usize = MAX_UNREAD / (16 << 10) + 100;
        let path =
            std::env::temp_dir().join(format!("vireo-control-hub-{}.sock", std::process::id()));
        let hub = Arc::new(EventHub::new().unwrap());
        let _server = ControlServer::start(&path, Arc::new(WithHub(hub.clone()))).unwrap();
        let client = UnixStream::connect(&path).unwrap();
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        (&client)
            .write_all(b"{\"request\":\"display-attach\"}\n")
            .unwrap();
        let (line, fds) = recv_with_fds(&client);
        let text = String::from_utf8(line).unwrap();
        assert!(text.starts_with("{\"response\":\"display\""), "{text}");
        assert!(
            text.contains("\"enabled\":false") && fds.is_empty(),
            "{text}"
        );

        // A mode change carries the framebuffer's fd: the client reads what we wrote.
        let file = std::fs::File::from(
            nix::sys::memfd::memfd_create(c"test-fb", nix::sys::memfd::MFdFlags::empty()).unwrap(),
        );
        file.write_all_at(b"pixels", 0).unwrap();
        let mode = ScreenMode {
            scanout: 0,
            enabled: true,
            width: 1,
            height: 1,
            stride: 4,
            format: "B8G8R8A8".into(),
        };
        hub.publish(Event::Mode(mode), Some(Arc::new(OwnedFd::from(file))));
        let (line, fds) = recv_with_fds(&client);
        assert!(String::from_utf8_lossy(&line).starts_with("{\"event\":\"mode\""));
        assert_eq!(fds.len(), 1);
        let mut got = [0u8; 6];
        std::fs::File::from(fds.into_iter().next().unwrap())
            .read_exact_at(&mut got, 0)
            .unwrap();
        assert_eq!(&got, b"pixels");

        // A client that attaches and never reads: publishing never waits for it, and
        // it is disconnected once far enough behind; the first client reads all along.
        let reading = std::thread::spawn({
            let mut reader = BufReader::new(client.try_clone().unwrap());
            move || {
                let mut line = String::new();
                let mut cursors = 0;
                while cursors < EVENTS {
                    line.clear();
                    if reader.read_line(&mut line).unwrap() == 0 {
                        break;
                    }
                    cursors += usize::from(line.starts_with("{\"event\":\"cursor\""));
                }
                (cursors, reader)
            }
        });
        let stuck = UnixStream::connect(&path).unwrap();
        (&stuck)
            .write_all(b"{\"request\":\"display-attach\"}\n")
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let big = Event::Cursor {
            scanout: 0,
            x: 0,
            y: 0,
            hot_x: 0,
            hot_y: 0,
            visible: true,
            image: Some("A".repeat(16 << 10)),
        };
        // More than MAX_UNREAD in all, paced so that a client that reads keeps up.
        for i in 0..EVENTS {
            let start = std::time::Instant::now();
            hub.publish(big.clone(), None);
            assert!(start.elapsed() < std::time::Duration::from_millis(100));
            if i % 20 == 0 {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        }
        stuck
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut sink = Vec::new();
        let read = (&stuck).read_to_end(&mut sink);
        assert!(read.is_ok(), "the engine closed the stuck client: {read:?}");
        assert!(
            sink.len() < EVENTS * (16 << 10),
            "it did not get everything"
        );

        // The first client, which reads, got every event and still works.
        let (cursors, mut reader) = reading.join().unwrap();
        assert_eq!(cursors, EVENTS);
        let mut line = String::new();
        (&client).write_all(b"{\"request\":\"status\"}\n").unwrap();
        line.clear();
        reader.read_line(&mut line).unwrap();
        assert_eq!(line, "{\"response\":\"ok\"}\n");
    }
}
