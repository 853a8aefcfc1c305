//! The shares of one connection: their servers, their change watches, and the threads
//! that serve the guest's requests. Several requests are served at once (the guest
//! pipelines its reads), answers go back in whatever order they finish.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use super::watch::{InvalidationSink, ShareWatch};
use super::{ShareConfig, ShareOpenError, ShareServer, ShareSet};
use crate::protocol::fs::{FsReply, FsRequest, ShareInfo};
use crate::protocol::{Message, NO_REPLY};

/// Threads serving one connection's requests.
const WORKERS: usize = 4;
/// Requests queued beyond the busy workers; past this the connection's reader waits,
/// which pushes back on the guest instead of growing memory.
const QUEUE: usize = 64;

/// Sends a message with an id on the connection.
pub type ReplySink = Arc<dyn Fn(u32, &Message) + Send + Sync>;

static INSTANCE: AtomicU64 = AtomicU64::new(0);

pub struct ConnShares {
    set: Arc<ShareSet>,
    queue: SyncSender<(u32, FsRequest)>,
    watches: Mutex<Vec<ShareWatch>>,
    send: ReplySink,
    /// Identifies this connection's node tables to the agent ([`ShareInfo::instance`]).
    instance: u64,
}

impl ConnShares {
    /// Starts the workers; they end when this is dropped.
    pub fn start(send: ReplySink) -> Self {
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
            Arc::new(move |inv| send(NO_REPLY, &Message::FsInvalidate(inv)));
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

    /// Queues a request from the guest; blocks while the queue is full.
    pub fn submit(&self, id: u32, request: FsRequest) {
        match self.queue.try_send((id, request)) {
            Ok(()) => {}
            Err(TrySendError::Full(item)) => {
                let _ = self.queue.send(item);
            }
            Err(TrySendError::Disconnected(_)) => {
                (self.send)(id, &Message::FsReply(FsReply::Errno(libc::EIO)));
            }
        }
    }
}

fn work(rx: &Mutex<Receiver<(u32, FsRequest)>>, set: &ShareSet, send: &ReplySink) {
    loop {
        let next = super::lock(rx).recv();
        let Ok((id, request)) = next else {
            return;
        };
        let reply = set.handle(request.share, request.op);
        send(id, &Message::FsReply(reply));
    }
}
