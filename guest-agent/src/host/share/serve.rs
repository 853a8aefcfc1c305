//! The shares of one connection: their servers, their change watches, and the threads
//! that serve the guest's requests. Several requests are served at once (the guest
//! pipelines its reads), answers go back in whatever order they finish.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use super::watch::{InvalidationSink, ShareWatch};
use super::{ShareConfig, ShareOpenError, ShareServer, ShareSet};
use crate::protocol::fs::{data_reply_frame, FsOp, FsReply, FsRequest, ShareInfo};
use crate::protocol::{encode_message, Message, NO_REPLY};

/// Threads serving one connection's requests.
const WORKERS: usize = 4;
/// Requests queued beyond the busy workers; past this the connection's reader waits,
/// which pushes back on the guest instead of growing memory.
const QUEUE: usize = 64;

/// Writes one whole frame on the connection.
pub type FrameSink = Arc<dyn Fn(&[u8]) + Send + Sync>;

fn send(sink: &FrameSink, id: u32, message: &Message) {
    if let Ok(frame) = encode_message(id, message) {
        sink(&frame);
    }
}

static INSTANCE: AtomicU64 = AtomicU64::new(0);

pub struct ConnShares {
    set: Arc<ShareSet>,
    queue: SyncSender<(u32, FsRequest)>,
    watches: Mutex<Vec<ShareWatch>>,
    send: FrameSink,
    /// Identifies this connection's node tables to the agent ([`ShareInfo::instance`]).
    instance: u64,
}

impl ConnShares {
    /// Starts the workers; they end when this is dropped.
    pub fn start(send: FrameSink) -> Self {
        let (queue, rx) = mpsc::sync_channel(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        let set = Arc::new(ShareSet::default());
        for _ in 0..WORKERS {
            let (rx, set, send) = (Arc::clone(&rx), Arc::clone(&set), Arc::clone(&send));
            let _ = std::thread::Builder::new()
                .name("vireo-share".into())
                .spawn(move || work(&rx, &set, &send));
        }
        // Unique per process and per connection; the pid keeps two host processes
        // serving one agent in turn apart.
        let instance = (u64::from(std::process::id()) << 32)
            | (INSTANCE.fetch_add(1, Ordering::Relaxed) & 0xffff_ffff);
        Self {
            set,
            queue,
            watches: Mutex::default(),
            send,
            instance,
        }
    }

    /// Opens and watches a share under id `id`.
    pub fn add(&self, id: u32, config: ShareConfig) -> Result<(), ShareOpenError> {
        let server = Arc::new(ShareServer::open(id, config)?);
        let send = Arc::clone(&self.send);
        let sink: InvalidationSink =
            Arc::new(move |inv| self::send(&send, NO_REPLY, &Message::FsInvalidate(inv)));
        match ShareWatch::start(Arc::clone(&server), sink) {
            Ok(watch) => super::lock(&self.watches).push(watch),
            // Serving still works; host-side changes then show when the guest's cache
            // times out (1 s).
            Err(err) => eprintln!(
                "vireo-host: cannot watch {} for changes: {err}",
                server.root_path().display()
            ),
        }
        self.set.insert(server);
        Ok(())
    }

    /// The shares as the agent is told about them.
    pub fn infos(&self) -> Vec<ShareInfo> {
        self.set
            .servers()
            .iter()
            .map(|s| ShareInfo {
                id: s.id(),
                name: s.config().name.clone(),
                read_only: s.config().read_only,
                instance: self.instance,
            })
            .collect()
    }

    /// Serves a request from the guest: metadata at once on the caller's thread (a
    /// `stat` waits on exactly this round trip, a hop to a worker would only add to it),
    /// data and sync to the workers, where a slow disk holds up nothing else. Blocks
    /// while the workers' queue is full.
    pub fn submit(&self, id: u32, request: FsRequest) {
        let to_workers = matches!(
            request.op,
            FsOp::Read { .. }
                | FsOp::Write { .. }
                | FsOp::Fsync { .. }
                | FsOp::ReadDir { .. }
                | FsOp::ReadDirPlus { .. }
        );
        if !to_workers {
            let reply = self.set.handle(request.share, request.op);
            return send(&self.send, id, &Message::FsReply(reply));
        }
        match self.queue.try_send((id, request)) {
            Ok(()) => {}
            Err(TrySendError::Full(item)) => {
                let _ = self.queue.send(item);
            }
            Err(TrySendError::Disconnected(_)) => {
                send(&self.send, id, &Message::FsReply(FsReply::Errno(libc::EIO)));
            }
        }
    }
}

fn work(rx: &Mutex<Receiver<(u32, FsRequest)>>, set: &ShareSet, sink: &FrameSink) {
    loop {
        let next = super::lock(rx).recv();
        let Ok((id, FsRequest { share, op })) = next else {
            return;
        };
        match op {
            // The hot path: the file is read straight into the frame that is sent.
            FsOp::Read {
                handle,
                offset,
                len,
            } => match data_reply_frame(id, |buf| set.read_into(share, handle, offset, len, buf)) {
                Ok((frame, start)) => sink(&frame[start..]),
                Err(errno) => send(sink, id, &Message::FsReply(FsReply::Errno(errno))),
            },
            op => send(sink, id, &Message::FsReply(set.handle(share, op))),
        }
    }
}
