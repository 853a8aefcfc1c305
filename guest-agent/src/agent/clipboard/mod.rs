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

use super::log;
use crate::protocol::clipboard::too_large_text;
use crate::protocol::{ClipboardContent, ClipboardFormat};

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
    /// Another program took the session clipboard (XFixes).
    SessionChanged,
}

struct Shared {
    current: Mutex<Snapshot>,
    /// The current connection's wake-up socket: one byte per new generation.
    waker: Mutex<Option<UnixStream>>,
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
                    session: session.map(|s| Box::new(s) as Box<dyn SessionClipboard>),
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
    session: Option<Box<dyn SessionClipboard>>,
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
                Command::SessionChanged => self.session_changed(),
            }
        }
    }

    fn write(&mut self, content: &ClipboardContent, origin: Origin) -> Result<(), String> {
        let limit = self.shared.limit;
        let held = match self.session.as_mut() {
            Some(session) => session.write(content, limit)?,
            None => self.entries_of(content.clone()),
        };
        self.publish_entries(held, origin);
        Ok(())
    }

    fn host_released(&mut self) {
        if lock(&self.shared.current).origin != Origin::Host {
            return;
        }
        if let Some(session) = self.session.as_mut() {
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
        let Some(session) = self.session.as_mut() else {
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
        if let Some(waker) = lock(&self.shared.waker).as_mut() {
            // A full socket already holds a wake-up; a closed one belongs to a
            // connection that is gone.
            let _ = waker.write(&[1]);
        }
    }
}
