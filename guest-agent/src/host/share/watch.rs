//! Host-side changes to a share become cache invalidations for the guest, so that an
//! edit on the host shows in the guest at once instead of after the cache times out.
//!
//! `notify` (inotify) reports paths; the guest knows nodes. A changed path maps to the
//! node of its parent directory (the entry `name` there changed) and to its own node if
//! the guest looked it up. Events are gathered for a few milliseconds and deduplicated:
//! a guest writing a large file makes the host see one event per write.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecursiveMode, Watcher};

use super::ShareServer;
use crate::protocol::fs::{is_plain_name, FsInvalidate};

/// How long a burst of events is gathered before the invalidations go out.
const GATHER: Duration = Duration::from_millis(20);

/// Where invalidations go (the connection's writer).
pub type InvalidationSink = Arc<dyn Fn(FsInvalidate) + Send + Sync>;

/// Watches one share while it lives; dropping it stops the watch and its thread.
pub struct ShareWatch {
    _watcher: notify::RecommendedWatcher,
}

impl ShareWatch {
    pub fn start(server: Arc<ShareServer>, sink: InvalidationSink) -> notify::Result<Self> {
        let (tx, rx) = mpsc::channel::<PathBuf>();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let Ok(event) = event else { return };
                // Opens and closes after reading change nothing (and this server's
                // own opens for the guest would drop the guest's cache of every file
                // it opens); a close after writing may end writes through a mapping.
                if event.kind.is_access()
                    && event.kind != EventKind::Access(AccessKind::Close(AccessMode::Write))
                {
                    return;
                }
                for path in event.paths {
                    let _ = tx.send(path);
                }
            })?;
        watcher.watch(server.root_path(), RecursiveMode::Recursive)?;
        std::thread::Builder::new()
            .name("vireo-share-watch".into())
            .spawn(move || forward(&server, &rx, &sink))
            .map_err(notify::Error::io)?;
        Ok(Self { _watcher: watcher })
    }
}

/// Runs until the watcher (and with it the sender) is dropped.
fn forward(server: &ShareServer, rx: &Receiver<PathBuf>, sink: &InvalidationSink) {
    while let Ok(first) = rx.recv() {
        let mut paths = BTreeSet::from([first]);
        let until = Instant::now() + GATHER;
        loop {
            match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok(path) => {
                    paths.insert(path);
                }
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        let mut out = BTreeSet::new();
        for path in &paths {
            invalidations_for(server, path, &mut out);
        }
        for inv in out {
            sink(inv.into_message(server.id()));
        }
    }
}

/// An invalidation before the share id is attached; ordered so a set dedupes them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Pending {
    Entry(u64, String),
    Node(u64),
}

impl Pending {
    fn into_message(self, share: u32) -> FsInvalidate {
        match self {
            Self::Entry(parent, name) => FsInvalidate::Entry {
                share,
                parent,
                name,
            },
            Self::Node(node) => FsInvalidate::Node { share, node },
        }
    }
}

fn node_of(server: &ShareServer, path: &Path) -> Option<u64> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    server.node_for(meta.dev(), meta.ino())
}

fn invalidations_for(server: &ShareServer, path: &Path, out: &mut BTreeSet<Pending>) {
    if let Some(node) = node_of(server, path) {
        out.insert(Pending::Node(node));
    }
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    if let Some(parent) = node_of(server, parent) {
        out.insert(Pending::Node(parent));
        if let Some(name) = name.to_str().filter(|n| is_plain_name(n)) {
            out.insert(Pending::Entry(parent, name.into()));
        }
    }
}
