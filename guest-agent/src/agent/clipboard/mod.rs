//! The guest's clipboard, shared by every host connection and the local
//! `vireo-agent clipboard get|set` clients.
//!
//! One worker thread owns the session clipboard ([`x11`]: arboard, with XFixes telling
//! when another program copies) or, with no graphical session, nothing: then
//! [`GuestClipboard`]'s own copy *is* the guest's clipboard. Whatever the source, the
//! current content is kept here as a snapshot with a generation and an [`Origin`]: the
//! connection's [`sync::ClipboardSync`] announces guest-made generations to the host and
//! never those it set for the host, which is what keeps a copy from echoing back.

pub mod local;
pub mod sync;
pub mod x11;
pub mod x11_selection;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};

use super::desktop::remote::RemoteSession;
use super::log;
use crate::protocol::clipboard::too_large_text;
use crate::protocol::{ClipboardContent, ClipboardFormat, ClipboardSource};

/// Who made the current content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A program in the guest (or `vireo-agent clipboard set`): the host should hear of it.
    Guest,
    /// Data the host sent: never announced back to the host that owns it.
    Host,
}

/// One format's bytes, or only its size when it is over the limit (kept so that a
/// request for it gets a clear error rather than "no such format").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    Data(Vec<u8>),
    TooLarge(usize),
    /// Over the limit, in the words of the session that holds it (`vireo-agent session`
    /// keeps the bytes and says why it will not send them).
    Refused(String),
}

/// The guest clipboard as last seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub generation: u64,
    pub origin: Origin,
    pub entries: Arc<Vec<(ClipboardFormat, Payload)>>,
}

impl Snapshot {
    pub fn formats(&self) -> Vec<ClipboardFormat> {
        self.entries.iter().map(|(f, _)| *f).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The bytes of `format`, or the error text to answer with.
    pub fn data(&self, format: ClipboardFormat, limit: usize) -> Result<&[u8], LookupError> {
        match self.entries.iter().find(|(f, _)| *f == format) {
            Some((_, Payload::Data(d))) => Ok(d),
            Some((_, Payload::TooLarge(len))) => {
                Err(LookupError::TooLarge(too_large_text(format, *len, limit)))
            }
            Some((_, Payload::Refused(text))) => Err(LookupError::TooLarge(text.clone())),
            None => Err(LookupError::Absent),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupError {
    TooLarge(String),
    Absent,
}

/// Where the guest's clipboard lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipboardMode {
    /// The X session in `DISPLAY` when one answers, else [`Self::Memory`].
    Auto,
    /// The X session in `DISPLAY`; failing to reach it is an error.
    X11,
    /// No session: the agent's own copy, read and written by `vireo-agent clipboard`.
    Memory,
}

/// What a session clipboard holds, format by format.
pub type Entries = Vec<(ClipboardFormat, Payload)>;

/// The entries as content to send, or why not: a format over `limit` (its size only).
pub fn entries_to_content(entries: Entries, limit: usize) -> Result<ClipboardContent, String> {
    let mut content = ClipboardContent::default();
    for (format, payload) in entries {
        match payload {
            Payload::Data(data) => content.entries.push((format, data)),
            Payload::TooLarge(len) => return Err(too_large_text(format, len, limit)),
            Payload::Refused(text) => return Err(text),
        }
    }
    Ok(content)
}

/// A graphical session's clipboard as the worker uses it.
pub trait SessionClipboard {
    /// Everything the clipboard offers in the formats we know (empty when nobody owns
    /// it); a format over `limit` bytes only by its size.
    fn read(&mut self, limit: usize) -> Result<Entries, String>;
    /// Takes ownership with `content`, and keeps serving it until the next write.
    /// Returns the content as [`read`](Self::read) now reports it (a PNG comes back
    /// re-encoded), so that our own write is recognised when XFixes reports it.
    fn write(&mut self, content: &ClipboardContent, limit: usize) -> Result<Entries, String>;
    fn clear(&mut self) -> Result<(), String>;
}

enum Command {
    /// The host's data for its grab.
    FromHost(ClipboardContent),
    /// `vireo-agent clipboard set`: answered once the session clipboard holds it.
    FromLocal(ClipboardContent, Sender<Result<(), String>>),
    /// The host released the clipboard it owned.
    HostReleased,
    /// Another program took the agent's own session clipboard (XFixes).
    SessionChanged,
    /// A desktop session's `vireo-agent session` connected: its clipboard is the guest's
    /// while it stays (the newest session wins).
    RemoteAttached(RemoteSession),
    /// The session on this link copied or its clipboard went empty.
    RemoteChanged(u64),
    /// The session on this link went away.
    RemoteGone(u64),
}

struct Shared {
    current: Mutex<Snapshot>,
    /// The current connection's wake-up socket: one byte per new generation.
    waker: Mutex<Option<UnixStream>>,
    /// Where the clipboard lives now (told to the host).
    source: Mutex<ClipboardSource>,
    limit: usize,
}

/// Handle on the clipboard worker; cheap to share.
pub struct GuestClipboard {
    commands: Mutex<Sender<Command>>,
    shared: Arc<Shared>,
    session: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl GuestClipboard {
    /// Starts the worker (and, with a session, the XFixes watcher).
    pub fn start(mode: ClipboardMode, limit: usize) -> Result<Self, String> {
        let session: Option<x11::X11Clipboard> = match mode {
            ClipboardMode::Memory => None,
            ClipboardMode::X11 => Some(x11::X11Clipboard::open()?),
            ClipboardMode::Auto => match x11::X11Clipboard::open() {
                Ok(s) => Some(s),
                Err(why) => {
                    log(format_args!(
                        "clipboard: no X session ({why}); `vireo-agent clipboard` is the clipboard"
                    ));
                    None
                }
            },
        };
        let shared = Arc::new(Shared {
            current: Mutex::new(Snapshot {
                generation: 0,
                origin: Origin::Host,
                entries: Arc::default(),
            }),
            waker: Mutex::new(None),
            source: Mutex::new(if session.is_some() {
                ClipboardSource::AgentDisplay
            } else {
                ClipboardSource::AgentCopy
            }),
            limit,
        });
        let (tx, rx) = mpsc::channel();
        let has_session = session.is_some();
        if let Some(session) = &session {
            let watcher_tx = tx.clone();
            session.watch(move || watcher_tx.send(Command::SessionChanged).is_ok())?;
            // What the session holds already (before the agent started).
            let _ = tx.send(Command::SessionChanged);
        }
        let worker_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("vireo-clipboard".into())
            .spawn(move || {
                let mut worker = Worker {
                    shared: worker_shared,
                    base: session.map(|s| Box::new(s) as Box<dyn SessionClipboard>),
                    remote: None,
                    remote_fresh: false,
                };
                worker.run(rx);
            })
            .map_err(|e| format!("cannot start the clipboard thread: {e}"))?;
        Ok(Self {
            commands: Mutex::new(tx),
            shared,
            session: has_session,
        })
    }

    /// Whether a graphical session's clipboard is behind this (else the agent's copy).
    pub fn has_session(&self) -> bool {
        self.session
    }

    pub fn limit(&self) -> usize {
        self.shared.limit
    }

    /// Where the clipboard lives now.
    pub fn source(&self) -> ClipboardSource {
        *lock(&self.shared.source)
    }

    /// A desktop session's clipboard takes over (an older one stands down).
    pub fn attach_remote(&self, remote: RemoteSession) {
        self.send(Command::RemoteAttached(remote));
    }

    pub fn remote_changed(&self, link: u64) {
        self.send(Command::RemoteChanged(link));
    }

    pub fn remote_gone(&self, link: u64) {
        self.send(Command::RemoteGone(link));
    }

    pub fn snapshot(&self) -> Snapshot {
        lock(&self.shared.current).clone()
    }

    /// The connection being served: woken (one byte on `waker`) at each new generation.
    pub fn set_waker(&self, waker: UnixStream) {
        let _ = waker.set_nonblocking(true);
        *lock(&self.shared.waker) = Some(waker);
    }

    fn send(&self, command: Command) {
        // The worker never exits while a handle lives; a failed send only loses data.
        let _ = lock(&self.commands).send(command);
    }

    /// The host's data for its grab: becomes the guest's clipboard.
    pub fn set_from_host(&self, content: ClipboardContent) {
        self.send(Command::FromHost(content));
    }

    pub fn host_released(&self) {
        self.send(Command::HostReleased);
    }

    /// A local `vireo-agent clipboard set`: waits until the clipboard holds it.
    pub fn set_from_local(&self, content: ClipboardContent) -> Result<(), String> {
        content.check_limit(self.shared.limit)?;
        let (tx, rx) = mpsc::channel();
        self.send(Command::FromLocal(content, tx));
        rx.recv()
            .unwrap_or_else(|_| Err("the clipboard thread stopped".into()))
    }
}

struct Worker {
    shared: Arc<Shared>,
    /// The agent's own X session, if it has one.
    base: Option<Box<dyn SessionClipboard>>,
    /// A desktop session's clipboard: while connected, it is the one used.
    remote: Option<RemoteSession>,
    /// The remote has not reported its clipboard yet.
    remote_fresh: bool,
}

impl Worker {
    fn run(&mut self, commands: Receiver<Command>) {
        while let Ok(command) = commands.recv() {
            match command {
                Command::FromHost(content) => {
                    if let Err(why) = self.write(&content, Origin::Host) {
                        log(format_args!("clipboard: cannot set the host's data: {why}"));
                    }
                }
                Command::FromLocal(content, done) => {
                    let _ = done.send(self.write(&content, Origin::Guest));
                }
                Command::HostReleased => self.host_released(),
                Command::SessionChanged if self.remote.is_none() => self.session_changed(),
                Command::SessionChanged => {}
                Command::RemoteAttached(remote) => self.remote_attached(remote),
                Command::RemoteChanged(link) if self.is_current(link) => self.remote_changed(),
                Command::RemoteGone(link) if self.is_current(link) => self.remote_gone(),
                Command::RemoteChanged(_) | Command::RemoteGone(_) => {}
            }
        }
    }

    /// The clipboard in use: a connected desktop session's, else the agent's own.
    fn session(&mut self) -> Option<&mut (dyn SessionClipboard + 'static)> {
        match &mut self.remote {
            Some(remote) => Some(remote),
            None => self.base.as_deref_mut(),
        }
    }

    fn is_current(&self, link: u64) -> bool {
        self.remote.as_ref().is_some_and(|r| r.link == link)
    }

    fn write(&mut self, content: &ClipboardContent, origin: Origin) -> Result<(), String> {
        let limit = self.shared.limit;
        let written = self.session().map(|s| s.write(content, limit));
        let held = match written {
            Some(Ok(held)) => held,
            // A desktop session that fails us is dropped: the agent's copy keeps the data.
            Some(Err(why)) if self.remote.is_some() => {
                log(format_args!("clipboard: the desktop session failed: {why}"));
                self.remote_gone();
                return self.write(content, origin);
            }
            Some(Err(why)) => return Err(why),
            None => self.entries_of(content.clone()),
        };
        self.publish_entries(held, origin);
        Ok(())
    }

    fn set_source(&mut self, source: ClipboardSource) {
        *lock(&self.shared.source) = source;
        self.wake();
    }

    fn remote_attached(&mut self, remote: RemoteSession) {
        if let Some(older) = self.remote.take() {
            log(format_args!(
                "clipboard: the session of uid {} stands down for uid {}'s",
                older.uid, remote.uid
            ));
            older.stand_down();
        }
        self.set_source(ClipboardSource::UserSession { uid: remote.uid });
        self.remote = Some(remote);
        self.remote_fresh = true;
    }

    /// The session reported its clipboard. Its first report, when empty, takes what the
    /// agent holds instead (a copy made before the session logged in survives it).
    fn remote_changed(&mut self) {
        if let Some(remote) = &self.remote {
            remote.take_change();
        }
        let fresh = std::mem::take(&mut self.remote_fresh);
        let current = lock(&self.shared.current).clone();
        if fresh && !current.is_empty() && self.remote_is_empty() {
            let held = (*current.entries).clone();
            if let Ok(content) = entries_to_content(held, self.shared.limit) {
                let limit = self.shared.limit;
                if let Some(Err(why)) = self.session().map(|s| s.write(&content, limit)) {
                    log(format_args!(
                        "clipboard: cannot hand the session our copy: {why}"
                    ));
                }
                return;
            }
        }
        self.session_changed();
    }

    fn remote_is_empty(&self) -> bool {
        self.remote.as_ref().is_some_and(RemoteSession::is_empty)
    }

    fn remote_gone(&mut self) {
        if let Some(remote) = self.remote.take() {
            log(format_args!(
                "clipboard: the session of uid {} is gone: back to the agent's {}",
                remote.uid,
                if self.base.is_some() {
                    "display"
                } else {
                    "own copy"
                }
            ));
        }
        self.remote_fresh = false;
        let source = match self.base {
            Some(_) => ClipboardSource::AgentDisplay,
            None => ClipboardSource::AgentCopy,
        };
        self.set_source(source);
    }

    fn host_released(&mut self) {
        if lock(&self.shared.current).origin != Origin::Host {
            return;
        }
        if let Some(session) = self.session() {
            if let Err(why) = session.clear() {
                log(format_args!("clipboard: cannot clear: {why}"));
            }
        }
        self.publish_entries(Vec::new(), Origin::Host);
    }

    /// Reads what another program put on the session clipboard. Our own writes come back
    /// here too (XFixes reports every owner change): equal content is not news.
    fn session_changed(&mut self) {
        let limit = self.shared.limit;
        let Some(session) = self.session() else {
            return;
        };
        // An owner that was busy (or gone) can fail a read: try again before giving
        // this copy up.
        let mut tries = 0;
        let entries = loop {
            match session.read(limit) {
                Ok(content) => break content,
                Err(why) if tries < 2 => {
                    log(format_args!(
                        "clipboard: reading the session clipboard: {why}; again"
                    ));
                    tries += 1;
                }
                Err(why) => {
                    log(format_args!(
                        "clipboard: cannot read the session clipboard: {why}"
                    ));
                    return;
                }
            }
        };
        if *lock(&self.shared.current).entries == entries {
            return;
        }
        self.publish_entries(entries, Origin::Guest);
    }

    fn entries_of(&self, content: ClipboardContent) -> Entries {
        content
            .entries
            .into_iter()
            .map(|(format, data)| {
                let payload = if data.len() > self.shared.limit {
                    Payload::TooLarge(data.len())
                } else {
                    Payload::Data(data)
                };
                (format, payload)
            })
            .collect()
    }

    fn publish_entries(&mut self, entries: Entries, origin: Origin) {
        {
            let mut current = lock(&self.shared.current);
            current.generation += 1;
            current.origin = origin;
            current.entries = Arc::new(entries);
        }
        self.wake();
    }

    /// Wakes the host connection to look at the clipboard again.
    fn wake(&self) {
        if let Some(waker) = lock(&self.shared.waker).as_mut() {
            // A full socket already holds a wake-up; a closed one belongs to a
            // connection that is gone.
            let _ = waker.write(&[1]);
        }
    }
}
