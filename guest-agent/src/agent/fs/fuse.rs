//! One mounted share as a FUSE file system: every operation becomes an [`FsOp`] to the
//! host, answered from the connection's reader thread, so the FUSE loop never waits for
//! the host and the kernel can keep several requests (readahead) in flight.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    Request, TimeOrNow, WriteFlags,
};

use super::link::FsLink;
use super::prefetch::Prefetch;
use crate::protocol::fs::{
    open_flags, FsAttr, FsKind, FsOp, FsReply, FsSetAttr, FsTime, FS_MAX_IO,
};

/// How long the kernel may trust an answer. Host-side changes are pushed as
/// invalidations, so this only bounds how stale a missed one can leave the guest.
const TTL: Duration = Duration::from_secs(1);

/// The current connection's link, shared by every mount (it changes on reconnect).
pub type LinkSlot = Arc<RwLock<Option<Arc<FsLink>>>>;

pub struct ShareFs {
    pub share: u32,
    pub link: LinkSlot,
    /// Who owns everything, as the guest sees it.
    pub owner: (u32, u32),
    /// What each file was when last opened, to keep its page cache on the next open.
    pub versions: Versions,
    /// The host serves [`FsOp::ReadDirPlus`]: the kernel may list with attributes, and
    /// look-ups may be answered from a directory read ahead.
    pub dir_plus: bool,
    pub prefetch: Arc<Prefetch>,
}

/// The `readdirplus` buffer of a read ahead ([`Prefetch`]): a few hundred entries per
/// request (the host stops at the end of one batch of its directory listing).
const PREFETCH_BYTES: u32 = 64 * 1024;

/// Gives the host back lookups the kernel never got.
pub fn give_back(link: &LinkSlot, share: u32, nodes: Vec<u64>) {
    if nodes.is_empty() {
        return;
    }
    let link = link.read().unwrap_or_else(|p| p.into_inner()).clone();
    if let Some(link) = link {
        for node in nodes {
            link.call(share, FsOp::Forget { node, count: 1 }, Box::new(|_| {}));
        }
    }
}

/// What a read ahead of one directory needs in its callbacks.
#[derive(Clone)]
struct ReadAhead {
    link: LinkSlot,
    share: u32,
    prefetch: Arc<Prefetch>,
    parent: u64,
    generation: u64,
}

impl ReadAhead {
    fn call(&self, op: FsOp, done: super::link::Done) {
        let link = self.link.read().unwrap_or_else(|p| p.into_inner()).clone();
        match link {
            Some(link) => link.call(self.share, op, done),
            None => done(Err(libc::EIO)),
        }
    }

    fn start(self) {
        let this = self.clone();
        self.call(
            FsOp::OpenDir { node: self.parent },
            Box::new(move |result| {
                if let Ok(FsReply::Opened { handle }) = result {
                    this.page(handle, 0);
                }
            }),
        );
    }

    fn page(self, handle: u64, offset: u64) {
        let this = self.clone();
        let op = FsOp::ReadDirPlus {
            handle,
            offset,
            max_bytes: PREFETCH_BYTES,
        };
        self.call(
            op,
            Box::new(move |result| {
                let entries = match result {
                    Ok(FsReply::EntriesPlus(entries)) if !entries.is_empty() => entries,
                    _ => return this.call(FsOp::Release { handle }, Box::new(|_| {})),
                };
                let next = entries.last().map_or(0, |e| e.next_offset);
                let (forget, more) = this.prefetch.add(this.parent, this.generation, entries);
                give_back(&this.link, this.share, forget);
                if more {
                    this.page(handle, next);
                } else {
                    this.call(FsOp::Release { handle }, Box::new(|_| {}));
                }
            }),
        );
    }
}

/// The `readdirplus` buffer asked of the host: the kernel's smallest (one page), so
/// whatever the host sends fits whatever buffer the kernel gives.
const DIR_PLUS_BYTES: u32 = 4096;

/// A file's contents as far as the guest can tell: a change on the host moves its
/// ctime (and most likely its mtime and size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Version {
    mtime_ns: i64,
    ctime_ns: i64,
    size: u64,
}

impl Version {
    fn of(a: &FsAttr) -> Self {
        Self {
            mtime_ns: a.mtime_ns,
            ctime_ns: a.ctime_ns,
            size: a.size,
        }
    }
}

/// Node id → its [`Version`] when it was last opened (dropped when the kernel forgets
/// the node, so it stays as large as the kernel's own inode cache).
#[derive(Default, Clone)]
pub struct Versions(Arc<Mutex<HashMap<u64, Version>>>);

impl Versions {
    /// Records `now` for `node` (`None`: unknown, forget it) and tells whether the
    /// node's cached pages may be kept: only when it is known unchanged since the last
    /// open.
    fn reopened(&self, node: u64, now: Option<Version>) -> bool {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match now {
            Some(v) => map.insert(node, v) == Some(v),
            None => {
                map.remove(&node);
                false
            }
        }
    }

    fn forget(&self, node: u64) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&node);
    }
}

/// A FUSE reply that can fail with an errno.
trait Fail {
    fn fail(self, errno: i32);
}

macro_rules! fail_impl {
    ($($t:ty),*) => {$(
        impl Fail for $t {
            fn fail(self, errno: i32) {
                self.error(Errno::from_i32(errno));
            }
        }
    )*};
}
fail_impl!(
    ReplyAttr,
    ReplyCreate,
    ReplyData,
    ReplyDirectory,
    ReplyDirectoryPlus,
    ReplyEmpty,
    ReplyEntry,
    ReplyOpen,
    ReplyStatfs,
    ReplyWrite
);

fn time_of(ns: i64) -> SystemTime {
    let d = Duration::from_nanos(ns.unsigned_abs());
    if ns >= 0 {
        UNIX_EPOCH + d
    } else {
        UNIX_EPOCH - d
    }
}

fn ns_of(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

fn file_type(kind: FsKind) -> FileType {
    match kind {
        FsKind::File => FileType::RegularFile,
        FsKind::Dir => FileType::Directory,
        FsKind::Symlink => FileType::Symlink,
        // Visible, never openable (the host refuses): show it as what it most likely is.
        FsKind::Other => FileType::NamedPipe,
    }
}

/// Guest `open(2)` flags to the protocol's; whatever else the guest passes stays here.
fn flags_of(flags: i32) -> u32 {
    let mut out = match flags & libc::O_ACCMODE {
        libc::O_WRONLY => open_flags::WRITE,
        libc::O_RDWR => open_flags::READ | open_flags::WRITE,
        _ => open_flags::READ,
    };
    if flags & libc::O_TRUNC != 0 && out & open_flags::WRITE != 0 {
        out |= open_flags::TRUNCATE;
    }
    if flags & libc::O_APPEND != 0 {
        out |= open_flags::APPEND;
    }
    if flags & libc::O_EXCL != 0 {
        out |= open_flags::EXCLUSIVE;
    }
    out
}

/// A host attribute as the guest sees it: owned by `owner`.
fn file_attr(owner: (u32, u32), a: &FsAttr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.node),
        size: a.size,
        blocks: a.blocks,
        atime: time_of(a.atime_ns),
        mtime: time_of(a.mtime_ns),
        ctime: time_of(a.ctime_ns),
        crtime: time_of(a.mtime_ns),
        kind: file_type(a.kind),
        perm: (a.perm & 0o7777) as u16,
        nlink: a.nlink,
        uid: owner.0,
        gid: owner.1,
        rdev: 0,
        // Tools size their buffers by this: big ones mean few, large requests.
        blksize: FS_MAX_IO,
        flags: 0,
    }
}

impl ShareFs {
    /// Sends `op`; `on` gets the reply unless it is an errno (or there is no
    /// connection), which fails the FUSE request.
    fn request<R: Fail + Send + 'static>(
        &self,
        op: FsOp,
        reply: R,
        on: impl FnOnce(R, FsReply) + Send + 'static,
    ) {
        let link = self.link.read().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(link) = link else {
            return reply.fail(libc::EIO);
        };
        link.call(
            self.share,
            op,
            Box::new(move |result| match result {
                Ok(FsReply::Errno(errno)) => reply.fail(errno),
                Ok(answer) => on(reply, answer),
                Err(errno) => reply.fail(errno),
            }),
        );
    }

    /// Sends `op` whose answer nobody waits for (forget, release).
    fn tell(&self, op: FsOp) {
        self.call(op, Box::new(|_| {}));
    }

    /// Sends `op`; `done` gets whatever comes back (`EIO` without a connection).
    fn call(&self, op: FsOp, done: super::link::Done) {
        let link = self.link.read().unwrap_or_else(|p| p.into_inner()).clone();
        match link {
            Some(link) => link.call(self.share, op, done),
            None => done(Err(libc::EIO)),
        }
    }

    fn entry_request(&self, op: FsOp, reply: ReplyEntry) {
        let owner = self.owner;
        self.request(op, reply, move |reply, answer| match answer {
            FsReply::Entry(a) => reply.entry(&TTL, &file_attr(owner, &a), Generation(0)),
            _ => reply.fail(libc::EIO),
        });
    }

    fn attr_request(&self, op: FsOp, reply: ReplyAttr) {
        let owner = self.owner;
        self.request(op, reply, move |reply, answer| match answer {
            FsReply::Attr(a) => reply.attr(&TTL, &file_attr(owner, &a)),
            _ => reply.fail(libc::EIO),
        });
    }

    /// The guest changes `parent`: read-ahead entries of it may be wrong from now on.
    fn changing(&self, parent: INodeNo) {
        give_back(&self.link, self.share, self.prefetch.changed_dir(parent.0));
    }

    fn empty_request(&self, op: FsOp, reply: ReplyEmpty) {
        self.request(op, reply, |reply, answer| match answer {
            FsReply::Done => reply.ok(),
            _ => reply.fail(libc::EIO),
        });
    }
}

fn name_of(name: &OsStr) -> Result<String, i32> {
    name.to_str().map(str::to_owned).ok_or(libc::EINVAL)
}

macro_rules! name_or_fail {
    ($name:expr, $reply:expr) => {
        match name_of($name) {
            Ok(name) => name,
            Err(errno) => return $reply.fail(errno),
        }
    };
}

impl Filesystem for ShareFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Where the kernel allows less, take what it allows.
        let _ = config
            .set_max_write(FS_MAX_IO)
            .or_else(|max| config.set_max_write(max));
        let _ = config
            .set_max_readahead(FS_MAX_IO)
            .or_else(|max| config.set_max_readahead(max));
        let _ = config.set_max_background(64);
        // Cached pages go when the host reports a changed mtime or size, as well as
        // on invalidations.
        let _ = config.add_capabilities(InitFlags::FUSE_AUTO_INVAL_DATA);
        if self.dir_plus {
            // `ls -l`: one request brings a directory's entries and their attributes,
            // instead of a lookup round trip per name. The kernel uses it where
            // lookups follow a listing.
            let _ = config.add_capabilities(
                InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO,
            );
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name_or_fail!(name, reply);
        if self.dir_plus {
            let now = Instant::now();
            let found = self.prefetch.take(parent.0, &name, now);
            give_back(&self.link, self.share, found.forget);
            if let Some(a) = found.attr {
                return reply.entry(&TTL, &file_attr(self.owner, &a), Generation(0));
            }
            if let Some(generation) = self.prefetch.missed(parent.0, now) {
                ReadAhead {
                    link: Arc::clone(&self.link),
                    share: self.share,
                    prefetch: Arc::clone(&self.prefetch),
                    parent: parent.0,
                    generation,
                }
                .start();
            }
        }
        self.entry_request(
            FsOp::Lookup {
                parent: parent.0,
                name,
            },
            reply,
        );
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.versions.forget(ino.0);
        self.tell(FsOp::Forget {
            node: ino.0,
            count: nlookup,
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.attr_request(FsOp::GetAttr { node: ino.0 }, reply);
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let time = |t: Option<TimeOrNow>| {
            t.map(|t| match t {
                TimeOrNow::Now => FsTime::Now,
                TimeOrNow::SpecificTime(t) => FsTime::UnixNs(ns_of(t)),
            })
        };
        // A chown to the owner the guest already sees changes nothing: let it pass.
        let uid = uid.filter(|&u| u != self.owner.0);
        let gid = gid.filter(|&g| g != self.owner.1);
        let set = FsSetAttr {
            mode: mode.map(|m| m & 0o7777),
            size,
            atime: time(atime),
            mtime: time(mtime),
            uid,
            gid,
        };
        self.attr_request(
            FsOp::SetAttr {
                node: ino.0,
                handle: fh.map(|h| h.0),
                set,
            },
            reply,
        );
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.request(
            FsOp::ReadLink { node: ino.0 },
            reply,
            |reply, answer| match answer {
                FsReply::Link(target) => reply.data(target.as_bytes()),
                _ => reply.fail(libc::EIO),
            },
        );
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let name = name_or_fail!(name, reply);
        self.changing(parent);
        self.entry_request(
            FsOp::Mkdir {
                parent: parent.0,
                name,
                mode: mode & !umask & 0o7777,
            },
            reply,
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name_or_fail!(name, reply);
        self.changing(parent);
        self.empty_request(
            FsOp::Unlink {
                parent: parent.0,
                name,
            },
            reply,
        );
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name_or_fail!(name, reply);
        self.changing(parent);
        self.empty_request(
            FsOp::Rmdir {
                parent: parent.0,
                name,
            },
            reply,
        );
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let name = name_or_fail!(link_name, reply);
        self.changing(parent);
        let target = name_or_fail!(target.as_os_str(), reply);
        self.entry_request(
            FsOp::Symlink {
                parent: parent.0,
                name,
                target,
            },
            reply,
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let name = name_or_fail!(name, reply);
        self.changing(parent);
        self.changing(newparent);
        let new_name = name_or_fail!(newname, reply);
        self.empty_request(
            FsOp::Rename {
                parent: parent.0,
                name,
                new_parent: newparent.0,
                new_name,
                flags: flags.bits(),
            },
            reply,
        );
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let flags = flags_of(flags.0) & !open_flags::EXCLUSIVE;
        // The file's attributes now, asked for alongside the open: the host answers
        // metadata in order, so they are here by the time the open's answer is (if
        // not, the cache is simply dropped). Unchanged since the last open, the pages
        // the guest cached stay: re-reading a file costs no round trips. Host-side
        // changes between opens are also pushed as invalidations ([`super::watch`]).
        let fresh: Arc<Mutex<Option<Version>>> = Arc::default();
        let slot = Arc::clone(&fresh);
        self.call(
            FsOp::GetAttr { node: ino.0 },
            Box::new(move |result| {
                if let Ok(FsReply::Attr(a)) = result {
                    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(Version::of(&a));
                }
            }),
        );
        let versions = self.versions.clone();
        self.request(
            FsOp::Open { node: ino.0, flags },
            reply,
            move |reply, answer| match answer {
                FsReply::Opened { handle } => {
                    let now = fresh.lock().unwrap_or_else(|p| p.into_inner()).take();
                    let keep = if versions.reopened(ino.0, now) {
                        FopenFlags::FOPEN_KEEP_CACHE
                    } else {
                        FopenFlags::empty()
                    };
                    reply.opened(FileHandle(handle), keep);
                }
                _ => reply.fail(libc::EIO),
            },
        );
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let op = FsOp::Read {
            handle: fh.0,
            offset,
            len: size.min(FS_MAX_IO),
        };
        let link = self.link.read().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(link) = link else {
            return reply.fail(libc::EIO);
        };
        // The data goes to the kernel from where it arrived: no copy on the way.
        link.call_data(
            self.share,
            op,
            Box::new(move |result| match result {
                Ok(data) => reply.data(data),
                Err(errno) => reply.fail(errno),
            }),
        );
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.request(
            FsOp::Write {
                handle: fh.0,
                offset,
                data: data.to_vec(),
            },
            reply,
            |reply, answer| match answer {
                FsReply::Written(n) => reply.written(n),
                _ => reply.fail(libc::EIO),
            },
        );
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Writes reach the host before they are acknowledged: nothing is buffered here.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.tell(FsOp::Release { handle: fh.0 });
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.empty_request(
            FsOp::Fsync {
                handle: fh.0,
                data_only: datasync,
            },
            reply,
        );
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.request(
            FsOp::OpenDir { node: ino.0 },
            reply,
            |reply, answer| match answer {
                FsReply::Opened { handle } => reply.opened(FileHandle(handle), FopenFlags::empty()),
                _ => reply.fail(libc::EIO),
            },
        );
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        self.request(
            FsOp::ReadDir {
                handle: fh.0,
                offset,
            },
            reply,
            |mut reply, answer| match answer {
                FsReply::Entries(entries) => {
                    for e in entries {
                        // Full: the kernel asks again from the last offset it got.
                        if reply.add(INodeNo(e.ino), e.next_offset, file_type(e.kind), &e.name) {
                            break;
                        }
                    }
                    reply.ok();
                }
                _ => reply.fail(libc::EIO),
            },
        );
    }

    fn readdirplus(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        let owner = self.owner;
        let (share, link) = (self.share, Arc::clone(&self.link));
        self.request(
            FsOp::ReadDirPlus {
                handle: fh.0,
                offset,
                max_bytes: DIR_PLUS_BYTES,
            },
            reply,
            move |mut reply, answer| match answer {
                FsReply::EntriesPlus(entries) => {
                    let mut left = Vec::new();
                    for e in entries {
                        let a = &e.attr;
                        // Full: the kernel asks again from the last offset it got; the
                        // host counted a lookup of every entry it sent, so the ones the
                        // kernel never saw are given back.
                        if !left.is_empty()
                            || reply.add(
                                INodeNo(a.node),
                                e.next_offset,
                                &e.name,
                                &TTL,
                                &file_attr(owner, a),
                                Generation(0),
                            )
                        {
                            left.push(a.node);
                        }
                    }
                    reply.ok();
                    let link = link.read().unwrap_or_else(|p| p.into_inner()).clone();
                    if let Some(link) = link {
                        for node in left {
                            let forget = FsOp::Forget { node, count: 1 };
                            link.call(share, forget, Box::new(|_| {}));
                        }
                    }
                }
                _ => reply.fail(libc::EIO),
            },
        );
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.tell(FsOp::Release { handle: fh.0 });
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.empty_request(
            FsOp::Fsync {
                handle: fh.0,
                data_only: datasync,
            },
            reply,
        );
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.request(FsOp::StatFs, reply, |reply, answer| match answer {
            FsReply::StatFs(s) => reply.statfs(
                s.blocks,
                s.blocks_free,
                s.blocks_avail,
                s.files,
                s.files_free,
                s.block_size,
                s.name_max,
                s.block_size,
            ),
            _ => reply.fail(libc::EIO),
        });
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let name = name_or_fail!(name, reply);
        self.changing(parent);
        let owner = self.owner;
        self.request(
            FsOp::Create {
                parent: parent.0,
                name,
                mode: mode & !umask & 0o7777,
                flags: flags_of(flags),
            },
            reply,
            move |reply, answer| match answer {
                FsReply::Created { attr, handle } => reply.created(
                    &TTL,
                    &file_attr(owner, &attr),
                    Generation(0),
                    FileHandle(handle),
                    FopenFlags::empty(),
                ),
                _ => reply.fail(libc::EIO),
            },
        );
    }
}
