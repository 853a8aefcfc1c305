//! The guest's side of the shared-folder channel: FUSE threads send requests on the
//! connection and go on at once; the connection's reader completes each one when the
//! host's answer with its id comes back. Many requests are in flight at a time, which is
//! what lets a sequential read stream instead of waiting one round trip per chunk.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::super::transport::AgentStream;
use crate::protocol::fs::{FsOp, FsReply, FsRequest};
use crate::protocol::{encode_message, Message};

/// Completes one request: the host's reply, or an errno when there is none.
pub type Done = Box<dyn FnOnce(Result<FsReply, i32>) + Send>;

/// Completes a read: the data (borrowed from the connection's buffer, where it arrived),
/// or an errno (the host's, or `EIO` for an answer that is not data).
pub type DataDone = Box<dyn FnOnce(Result<&[u8], i32>) + Send>;

enum Waiter {
    Reply(Done),
    Data(DataDone),
}

impl Waiter {
    fn fail(self, errno: i32) {
        match self {
            Self::Reply(done) => done(Err(errno)),
            Self::Data(done) => done(Err(errno)),
        }
    }
}

/// Ids of shared-folder requests have the top bit set, so they never meet the ids the
/// session numbers its time queries with (counting up from 1).
const ID_BIT: u32 = 1 << 31;

pub struct FsLink {
    writer: Arc<Mutex<AgentStream>>,
    pending: Mutex<HashMap<u32, Waiter>>,
    next: AtomicU32,
    closed: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FsLink {
    /// `writer` is the connection's writing half, shared with the session's own sends.
    pub fn new(writer: Arc<Mutex<AgentStream>>) -> Self {
        Self {
            writer,
            pending: Mutex::default(),
            next: AtomicU32::new(0),
            closed: AtomicBool::new(false),
        }
    }

    pub fn is_ours(id: u32) -> bool {
        id & ID_BIT != 0
    }

    /// Sends a request; `done` runs later on the reader's thread (or at once on failure).
    pub fn call(&self, share: u32, op: FsOp, done: Done) {
        self.send(share, op, Waiter::Reply(done));
    }

    /// Sends a request answered with data (a read): `done` gets it where it arrived.
    pub fn call_data(&self, share: u32, op: FsOp, done: DataDone) {
        self.send(share, op, Waiter::Data(done));
    }

    fn send(&self, share: u32, op: FsOp, done: Waiter) {
        if self.closed.load(Ordering::SeqCst) {
            return done.fail(libc::EIO);
        }
        let id = ID_BIT | (self.next.fetch_add(1, Ordering::Relaxed) & !ID_BIT);
        let frame = match encode_message(id, &Message::FsRequest(FsRequest { share, op })) {
            Ok(frame) => frame,
            Err(_) => return done.fail(libc::EINVAL),
        };
        lock(&self.pending).insert(id, done);
        // A close racing the insert would leave `done` behind: check again after.
        if self.closed.load(Ordering::SeqCst) {
            return self.fail(id, libc::EIO);
        }
        let written = lock(&self.writer).write_all(&frame);
        if written.is_err() {
            self.fail(id, libc::EIO);
        }
    }

    fn fail(&self, id: u32, errno: i32) {
        let done = lock(&self.pending).remove(&id);
        if let Some(done) = done {
            done.fail(errno);
        }
    }

    /// The host answered request `id`; false if no such request is waiting.
    pub fn complete(&self, id: u32, result: Result<FsReply, i32>) -> bool {
        let done = lock(&self.pending).remove(&id);
        match (done, result) {
            (Some(Waiter::Reply(done)), result) => done(result),
            (Some(Waiter::Data(done)), Ok(FsReply::Data(data))) => done(Ok(&data)),
            (Some(Waiter::Data(done)), Ok(FsReply::Errno(errno)) | Err(errno)) => done(Err(errno)),
            (Some(Waiter::Data(done)), Ok(_)) => done(Err(libc::EIO)),
            (None, _) => return false,
        }
        true
    }

    /// The host answered request `id` with `data` (an `FsReply::Data` read in place);
    /// false if no such request is waiting.
    pub fn complete_data(&self, id: u32, data: &[u8]) -> bool {
        let done = lock(&self.pending).remove(&id);
        match done {
            Some(Waiter::Data(done)) => done(Ok(data)),
            Some(Waiter::Reply(done)) => done(Ok(FsReply::Data(data.to_vec()))),
            None => return false,
        }
        true
    }

    /// The connection is gone: every waiting request fails, later ones fail at once.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let pending: Vec<Waiter> = lock(&self.pending).drain().map(|(_, d)| d).collect();
        for done in pending {
            done.fail(libc::EIO);
        }
    }

    pub fn in_flight(&self) -> usize {
        lock(&self.pending).len()
    }
}
