//! The session clipboard of a connected `vireo-agent session`, as the clipboard worker
//! uses it ([`SessionClipboard`]): reads become `ClipboardRequest`s for the session's
//! newest grab, writes `ClipboardData`, clears `ClipboardRelease`, each a request with a
//! timeout whose answer the connection's reader thread hands over.

use std::collections::HashMap;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use super::link;
use crate::agent::clipboard::{Entries, Payload, SessionClipboard};
use crate::protocol::clipboard::format_name;
use crate::protocol::{
    error_code, ClipboardContent, ClipboardData, ClipboardFormat, ClipboardGrab, ClipboardRelease,
    ClipboardRequest, ErrorReply, Message, NO_REPLY,
};

/// How long the session may take to answer one request (64 MiB over a local socket
/// takes well under a second; a session that stops answering is given up).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One session connection, shared by its reader thread and the clipboard worker.
pub struct LinkConn {
    writer: Mutex<UnixStream>,
    /// Our requests waiting for their answer, by id.
    pending: Mutex<HashMap<u32, Sender<Message>>>,
    /// The session's newest grab (`None`: its clipboard is empty).
    grab: Mutex<Option<ClipboardGrab>>,
    /// A change is queued for the worker already: a burst of grabs is read once.
    change_queued: AtomicBool,
    next_id: AtomicU32,
}

impl LinkConn {
    pub fn new(writer: UnixStream) -> Self {
        Self {
            writer: Mutex::new(writer),
            pending: Mutex::default(),
            grab: Mutex::default(),
            change_queued: AtomicBool::new(false),
            next_id: AtomicU32::new(1),
        }
    }

    /// The session copied; true when the worker must be told (none queued yet).
    pub fn on_grab(&self, grab: ClipboardGrab) -> bool {
        *lock(&self.grab) = Some(grab);
        !self.change_queued.swap(true, Ordering::SeqCst)
    }

    /// The session's clipboard went empty; only a release of its newest grab counts.
    pub fn on_release(&self, release: ClipboardRelease) -> bool {
        let mut grab = lock(&self.grab);
        if grab.as_ref().is_some_and(|g| g.serial != release.serial) {
            return false;
        }
        *grab = None;
        !self.change_queued.swap(true, Ordering::SeqCst)
    }

    /// An answer from the session: to whoever waits for it, else dropped.
    pub fn deliver(&self, id: u32, message: Message) {
        if let Some(waiter) = lock(&self.pending).remove(&id) {
            let _ = waiter.send(message);
        }
    }

    pub fn send(&self, id: u32, message: &Message) -> Result<(), String> {
        link::send(&mut *lock(&self.writer), id, message).map_err(|e| e.to_string())
    }

    /// Hangs up; requests still waiting fail at once rather than time out.
    pub fn shutdown(&self) {
        let _ = lock(&self.writer).shutdown(Shutdown::Both);
        lock(&self.pending).clear();
    }

    fn call(&self, message: &Message) -> Result<Message, String> {
        let id = match self.next_id.fetch_add(1, Ordering::SeqCst) {
            NO_REPLY => self.next_id.fetch_add(1, Ordering::SeqCst),
            id => id,
        };
        let (tx, rx) = mpsc::channel();
        lock(&self.pending).insert(id, tx);
        let answer = self.send(id, message).and_then(|()| {
            rx.recv_timeout(CALL_TIMEOUT)
                .map_err(|_| "the session did not answer".to_string())
        });
        lock(&self.pending).remove(&id);
        answer
    }
}

/// The clipboard of the session on link number `link`, owned by `uid`.
pub struct RemoteSession {
    pub link: u64,
    pub uid: u32,
    pub conn: std::sync::Arc<LinkConn>,
}

impl RemoteSession {
    /// A newer session took over: say so, then hang up.
    pub fn stand_down(&self) {
        let error = ErrorReply {
            code: error_code::BUSY,
            in_reply_to_kind: 0,
            text: "a newer desktop session owns the clipboard now".into(),
        };
        let _ = self.conn.send(NO_REPLY, &Message::Error(error));
        self.conn.shutdown();
    }

    /// The session's clipboard is empty (its last word was a release, or nothing yet).
    pub fn is_empty(&self) -> bool {
        lock(&self.conn.grab).is_none()
    }

    /// Worker side of the coalescing: the next grab queues a change again.
    pub fn take_change(&self) {
        self.conn.change_queued.store(false, Ordering::SeqCst);
    }

    fn fetch(&self, serial: u32, format: ClipboardFormat, limit: usize) -> Result<Payload, String> {
        let request = Message::ClipboardRequest(ClipboardRequest { serial, format });
        match self.conn.call(&request)? {
            Message::ClipboardData(d) if d.serial == serial && d.format == format => {
                if d.data.len() > limit {
                    Ok(Payload::TooLarge(d.data.len()))
                } else {
                    Ok(Payload::Data(d.data))
                }
            }
            Message::Error(e) if e.code == error_code::TOO_LARGE => Ok(Payload::Refused(e.text)),
            Message::Error(e) => Err(format!("the session: {}", e.text)),
            other => Err(format!(
                "the session answered a {} request with kind {:#06x}",
                format_name(format),
                other.kind()
            )),
        }
    }

    fn expect_pong(&self, message: &Message) -> Result<(), String> {
        match self.conn.call(message)? {
            Message::Pong(_) => Ok(()),
            Message::Error(e) => Err(format!("the session: {}", e.text)),
            other => Err(format!(
                "the session answered with kind {:#06x}",
                other.kind()
            )),
        }
    }
}

impl Drop for RemoteSession {
    fn drop(&mut self) {
        self.conn.shutdown();
    }
}

impl SessionClipboard for RemoteSession {
    fn read(&mut self, limit: usize) -> Result<Entries, String> {
        let Some(grab) = lock(&self.conn.grab).clone() else {
            return Ok(Vec::new());
        };
        let mut entries: Entries = Vec::new();
        for format in grab.formats {
            if entries.iter().any(|(f, _)| *f == format) {
                continue;
            }
            let payload = self.fetch(grab.serial, format, limit)?;
            entries.push((format, payload));
        }
        Ok(entries)
    }

    fn write(&mut self, content: &ClipboardContent, limit: usize) -> Result<Entries, String> {
        // The session's X clipboard takes one format at a time: the owner's first.
        let Some((format, data)) = content.entries.first() else {
            self.clear()?;
            return Ok(Vec::new());
        };
        content.check_limit(limit)?;
        let message = Message::ClipboardData(ClipboardData {
            serial: 0,
            format: *format,
            data: data.clone(),
        });
        self.expect_pong(&message)?;
        Ok(vec![(*format, Payload::Data(data.clone()))])
    }

    fn clear(&mut self) -> Result<(), String> {
        self.expect_pong(&Message::ClipboardRelease(ClipboardRelease { serial: 0 }))
    }
}
