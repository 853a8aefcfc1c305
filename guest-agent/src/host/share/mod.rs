//! The host side of shared folders: serves the guest's file-system requests on one
//! exported folder, confined beneath it.
//!
//! The guest is hostile, so it never names a host path. A node id maps to an `O_PATH`
//! descriptor this server opened; a lookup resolves exactly one plain name beneath its
//! parent's descriptor with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS)` and `O_NOFOLLOW`, so `..`, absolute or relative symlinks and
//! renames racing the check cannot lead outside the root: the host never follows a
//! symlink for the guest (the guest reads the link and resolves it in its own tree).
//! Files are opened through the node's own descriptor, never by path again.
//!
//! One [`ShareServer`] lives as long as one connection: node and handle ids mean nothing
//! to another connection's mount.

pub mod serve;
pub mod sys;
pub mod watch;

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::protocol::fs::{
    is_plain_name, open_flags, FsAttr, FsDirEntry, FsKind, FsOp, FsReply, FsSetAttr, FsStatFs,
    FsTime, FS_MAX_IO, FS_MAX_LINK, FS_ROOT,
};
use sys::{Errno, SysResult};

/// Nodes one connection may hold (each is an open descriptor).
pub const MAX_NODES: usize = 1 << 20;
/// Open files and directories one connection may hold.
pub const MAX_HANDLES: usize = 1 << 16;

/// A folder to export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareConfig {
    /// The guest mounts it at `/mnt/vireo/<name>`.
    pub name: String,
    pub path: PathBuf,
    pub read_only: bool,
}

impl std::str::FromStr for ShareConfig {
    type Err = String;

    /// `NAME=DIR` or `NAME=DIR,ro`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, rest) = s
            .split_once('=')
            .ok_or_else(|| format!("share {s:?} is not NAME=DIR[,ro]"))?;
        let (path, read_only) = match rest.strip_suffix(",ro") {
            Some(path) => (path, true),
            None => (rest.strip_suffix(",rw").unwrap_or(rest), false),
        };
        if !is_plain_name(name) || path.is_empty() {
            return Err(format!("share {s:?}: bad name or empty folder"));
        }
        Ok(Self {
            name: name.into(),
            path: path.into(),
            read_only,
        })
    }
}

struct Node {
    fd: Arc<OwnedFd>,
    kind: FsKind,
    key: (u64, u64),
    /// Lookups the guest has not given back yet.
    lookups: u64,
}

enum Handle {
    File { fd: Arc<OwnedFd>, writable: bool },
    Dir(Arc<Mutex<OwnedFd>>),
}

struct Tables {
    nodes: HashMap<u64, Node>,
    by_key: HashMap<(u64, u64), u64>,
    next_node: u64,
    handles: HashMap<u64, Handle>,
    next_handle: u64,
}

pub struct ShareServer {
    id: u32,
    config: ShareConfig,
    /// The canonical root path, for the change watcher (never for serving).
    root_path: PathBuf,
    root: Arc<OwnedFd>,
    tables: Mutex<Tables>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot export {path}: {source}")]
pub struct ShareOpenError {
    path: String,
    #[source]
    source: std::io::Error,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn kind_of(mode: u32) -> FsKind {
    match mode & libc::S_IFMT {
        libc::S_IFREG => FsKind::File,
        libc::S_IFDIR => FsKind::Dir,
        libc::S_IFLNK => FsKind::Symlink,
        _ => FsKind::Other,
    }
}

fn ns(sec: i64, nsec: i64) -> i64 {
    sec.saturating_mul(1_000_000_000).saturating_add(nsec)
}

fn attr_of(node: u64, st: &libc::stat) -> FsAttr {
    FsAttr {
        node,
        kind: kind_of(st.st_mode),
        perm: st.st_mode & 0o7777,
        size: st.st_size.max(0) as u64,
        blocks: st.st_blocks.max(0) as u64,
        nlink: st.st_nlink.try_into().unwrap_or(u32::MAX),
        atime_ns: ns(st.st_atime, st.st_atime_nsec),
        mtime_ns: ns(st.st_mtime, st.st_mtime_nsec),
        ctime_ns: ns(st.st_ctime, st.st_ctime_nsec),
    }
}

fn key_of(st: &libc::stat) -> (u64, u64) {
    (st.st_dev, st.st_ino)
}

impl ShareServer {
    /// Opens the folder (the host's own configuration: its path may contain symlinks).
    pub fn open(id: u32, config: ShareConfig) -> Result<Self, ShareOpenError> {
        let err = |source| ShareOpenError {
            path: config.path.display().to_string(),
            source,
        };
        let root_path = config.path.canonicalize().map_err(err)?;
        let dir = std::fs::File::open(&root_path).map_err(err)?;
        if !dir.metadata().map_err(err)?.is_dir() {
            return Err(err(std::io::Error::from_raw_os_error(libc::ENOTDIR)));
        }
        sys::raise_fd_limit();
        let root = Arc::new(OwnedFd::from(dir));
        let st = sys::fstat(root.as_fd()).map_err(|e| err(std::io::Error::from_raw_os_error(e)))?;
        let mut tables = Tables {
            nodes: HashMap::new(),
            by_key: HashMap::new(),
            next_node: FS_ROOT + 1,
            handles: HashMap::new(),
            next_handle: 1,
        };
        tables.nodes.insert(
            FS_ROOT,
            Node {
                fd: Arc::clone(&root),
                kind: FsKind::Dir,
                key: key_of(&st),
                lookups: 1,
            },
        );
        tables.by_key.insert(key_of(&st), FS_ROOT);
        Ok(Self {
            id,
            config,
            root_path,
            root,
            tables: Mutex::new(tables),
        })
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn config(&self) -> &ShareConfig {
        &self.config
    }

    pub fn root_path(&self) -> &Path {
        &self.root_path
    }

    /// The node id the guest knows a host inode by, if it looked it up.
    pub fn node_for(&self, dev: u64, ino: u64) -> Option<u64> {
        lock(&self.tables).by_key.get(&(dev, ino)).copied()
    }

    /// Serves one request; every failure is an errno for the guest.
    pub fn handle(&self, op: FsOp) -> FsReply {
        match self.dispatch(op) {
            Ok(reply) => reply,
            Err(errno) => FsReply::Errno(errno),
        }
    }

    fn dispatch(&self, op: FsOp) -> SysResult<FsReply> {
        if self.config.read_only && is_write(&op) {
            return Err(libc::EROFS);
        }
        match op {
            FsOp::Lookup { parent, name } => self.lookup(parent, &name).map(FsReply::Entry),
            FsOp::Forget { node, count } => {
                self.forget(node, count);
                Ok(FsReply::Done)
            }
            FsOp::GetAttr { node } => self.getattr(node).map(FsReply::Attr),
            FsOp::SetAttr { node, handle, set } => {
                self.setattr(node, handle, set).map(FsReply::Attr)
            }
            FsOp::ReadLink { node } => self.readlink(node),
            FsOp::Mkdir { parent, name, mode } => {
                let dir = self.dir_fd(parent, &name)?;
                sys::mkdirat(dir.as_fd(), &name, mode)?;
                self.lookup(parent, &name).map(FsReply::Entry)
            }
            FsOp::Unlink { parent, name } => {
                sys::unlinkat(self.dir_fd(parent, &name)?.as_fd(), &name, false)?;
                Ok(FsReply::Done)
            }
            FsOp::Rmdir { parent, name } => {
                sys::unlinkat(self.dir_fd(parent, &name)?.as_fd(), &name, true)?;
                Ok(FsReply::Done)
            }
            FsOp::Symlink {
                parent,
                name,
                target,
            } => {
                if target.is_empty() || target.len() > FS_MAX_LINK {
                    return Err(libc::ENAMETOOLONG);
                }
                sys::symlinkat(&target, self.dir_fd(parent, &name)?.as_fd(), &name)?;
                self.lookup(parent, &name).map(FsReply::Entry)
            }
            FsOp::Rename {
                parent,
                name,
                new_parent,
                new_name,
                flags,
            } => {
                if flags & !(libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE) != 0 {
                    return Err(libc::EINVAL);
                }
                let from = self.dir_fd(parent, &name)?;
                let to = self.dir_fd(new_parent, &new_name)?;
                sys::renameat2(from.as_fd(), &name, to.as_fd(), &new_name, flags)?;
                Ok(FsReply::Done)
            }
            FsOp::Open { node, flags } => self.open_file(node, flags),
            FsOp::Create {
                parent,
                name,
                mode,
                flags,
            } => self.create(parent, &name, mode, flags),
            FsOp::Read {
                handle,
                offset,
                len,
            } => self.read(handle, offset, len),
            FsOp::Write {
                handle,
                offset,
                data,
            } => self.write(handle, offset, &data),
            FsOp::Fsync { handle, data_only } => {
                match self.handle_of(handle)? {
                    Handle::File { fd, .. } => sys::fsync(fd.as_fd(), data_only)?,
                    Handle::Dir(dir) => sys::fsync(lock(&dir).as_fd(), data_only)?,
                }
                Ok(FsReply::Done)
            }
            FsOp::Release { handle } => {
                lock(&self.tables)
                    .handles
                    .remove(&handle)
                    .ok_or(libc::EBADF)?;
                Ok(FsReply::Done)
            }
            FsOp::OpenDir { node } => self.opendir(node),
            FsOp::ReadDir { handle, offset } => self.readdir(handle, offset),
            FsOp::StatFs => {
                let st = sys::fstatvfs(self.root.as_fd())?;
                Ok(FsReply::StatFs(FsStatFs {
                    blocks: st.f_blocks,
                    blocks_free: st.f_bfree,
                    blocks_avail: st.f_bavail,
                    files: st.f_files,
                    files_free: st.f_ffree,
                    block_size: st.f_bsize.try_into().unwrap_or(4096),
                    name_max: st.f_namemax.try_into().unwrap_or(255),
                }))
            }
        }
    }

    fn node(&self, node: u64) -> SysResult<(Arc<OwnedFd>, FsKind)> {
        let tables = lock(&self.tables);
        let n = tables.nodes.get(&node).ok_or(libc::ENOENT)?;
        Ok((Arc::clone(&n.fd), n.kind))
    }

    /// The descriptor of directory `parent`, once `name` is known to be one plain
    /// component.
    fn dir_fd(&self, parent: u64, name: &str) -> SysResult<Arc<OwnedFd>> {
        if !is_plain_name(name) {
            return Err(if name.len() > crate::protocol::fs::FS_MAX_NAME {
                libc::ENAMETOOLONG
            } else {
                libc::EINVAL
            });
        }
        let (fd, kind) = self.node(parent)?;
        if kind != FsKind::Dir {
            return Err(libc::ENOTDIR);
        }
        Ok(fd)
    }

    fn handle_of(&self, handle: u64) -> SysResult<Handle> {
        match lock(&self.tables).handles.get(&handle) {
            Some(Handle::File { fd, writable }) => Ok(Handle::File {
                fd: Arc::clone(fd),
                writable: *writable,
            }),
            Some(Handle::Dir(dir)) => Ok(Handle::Dir(Arc::clone(dir))),
            None => Err(libc::EBADF),
        }
    }

    fn lookup(&self, parent: u64, name: &str) -> SysResult<FsAttr> {
        let dir = self.dir_fd(parent, name)?;
        let fd = sys::open_beneath(dir.as_fd(), name, libc::O_PATH, 0)?;
        let st = sys::fstat(fd.as_fd())?;
        let mut tables = lock(&self.tables);
        let key = key_of(&st);
        if let Some(&id) = tables.by_key.get(&key) {
            if let Some(node) = tables.nodes.get_mut(&id) {
                node.lookups = node.lookups.saturating_add(1);
                return Ok(attr_of(id, &st));
            }
        }
        if tables.nodes.len() >= MAX_NODES {
            return Err(libc::ENFILE);
        }
        let id = tables.next_node;
        tables.next_node += 1;
        tables.nodes.insert(
            id,
            Node {
                fd: Arc::new(fd),
                kind: kind_of(st.st_mode),
                key,
                lookups: 1,
            },
        );
        tables.by_key.insert(key, id);
        Ok(attr_of(id, &st))
    }

    fn forget(&self, node: u64, count: u64) {
        if node == FS_ROOT {
            return;
        }
        let mut tables = lock(&self.tables);
        let Some(n) = tables.nodes.get_mut(&node) else {
            return;
        };
        n.lookups = n.lookups.saturating_sub(count);
        if n.lookups == 0 {
            let key = n.key;
            tables.nodes.remove(&node);
            if tables.by_key.get(&key) == Some(&node) {
                tables.by_key.remove(&key);
            }
        }
    }

    fn getattr(&self, node: u64) -> SysResult<FsAttr> {
        let (fd, _) = self.node(node)?;
        Ok(attr_of(node, &sys::fstat(fd.as_fd())?))
    }

    fn setattr(&self, node: u64, handle: Option<u64>, set: FsSetAttr) -> SysResult<FsAttr> {
        // Everything belongs to the host user; the guest cannot give it away.
        if set.uid.is_some() || set.gid.is_some() {
            return Err(libc::EPERM);
        }
        let (fd, kind) = self.node(node)?;
        if !matches!(kind, FsKind::File | FsKind::Dir) {
            return Err(libc::EPERM);
        }
        if let Some(mode) = set.mode {
            sys::chmod(fd.as_fd(), mode)?;
        }
        if let Some(size) = set.size {
            if kind != FsKind::File {
                return Err(libc::EISDIR);
            }
            match handle.map(|h| self.handle_of(h)) {
                Some(Ok(Handle::File { fd, writable: true })) => sys::ftruncate(fd.as_fd(), size)?,
                _ => sys::ftruncate(sys::reopen(fd.as_fd(), libc::O_WRONLY)?.as_fd(), size)?,
            }
        }
        let time = |t: Option<FsTime>| {
            t.map(|t| match t {
                FsTime::Now => None,
                FsTime::UnixNs(ns) => Some(ns),
            })
        };
        if set.atime.is_some() || set.mtime.is_some() {
            sys::set_times(fd.as_fd(), time(set.atime), time(set.mtime))?;
        }
        self.getattr(node)
    }

    fn readlink(&self, node: u64) -> SysResult<FsReply> {
        let (fd, kind) = self.node(node)?;
        if kind != FsKind::Symlink {
            return Err(libc::EINVAL);
        }
        let target = sys::readlink(fd.as_fd())?;
        String::from_utf8(target)
            .map(FsReply::Link)
            .map_err(|_| libc::EILSEQ)
    }

    fn open_flags_of(flags: u32) -> SysResult<(i32, bool)> {
        if flags & !open_flags::ALL != 0 {
            return Err(libc::EINVAL);
        }
        let read = flags & open_flags::READ != 0;
        let write = flags & open_flags::WRITE != 0;
        let mut os = match (read, write) {
            (_, false) => libc::O_RDONLY,
            (false, true) => libc::O_WRONLY,
            (true, true) => libc::O_RDWR,
        };
        if flags & open_flags::TRUNCATE != 0 {
            if !write {
                return Err(libc::EINVAL);
            }
            os |= libc::O_TRUNC;
        }
        if flags & open_flags::APPEND != 0 {
            os |= libc::O_APPEND;
        }
        Ok((os, write))
    }

    fn add_handle(&self, handle: Handle) -> SysResult<u64> {
        let mut tables = lock(&self.tables);
        if tables.handles.len() >= MAX_HANDLES {
            return Err(libc::EMFILE);
        }
        let id = tables.next_handle;
        tables.next_handle += 1;
        tables.handles.insert(id, handle);
        Ok(id)
    }

    fn open_file(&self, node: u64, flags: u32) -> SysResult<FsReply> {
        let (os, writable) = Self::open_flags_of(flags)?;
        if flags & open_flags::EXCLUSIVE != 0 {
            return Err(libc::EINVAL);
        }
        if writable && self.config.read_only {
            return Err(libc::EROFS);
        }
        let (fd, kind) = self.node(node)?;
        match kind {
            FsKind::File => {}
            FsKind::Dir => return Err(libc::EISDIR),
            FsKind::Symlink => return Err(libc::ELOOP),
            // A fifo would block the server; devices are not the guest's business.
            FsKind::Other => return Err(libc::EACCES),
        }
        let file = sys::reopen(fd.as_fd(), os)?;
        let handle = self.add_handle(Handle::File {
            fd: Arc::new(file),
            writable,
        })?;
        Ok(FsReply::Opened { handle })
    }

    fn create(&self, parent: u64, name: &str, mode: u32, flags: u32) -> SysResult<FsReply> {
        let (mut os, writable) = Self::open_flags_of(flags)?;
        if flags & open_flags::EXCLUSIVE != 0 {
            os |= libc::O_EXCL;
        }
        let dir = self.dir_fd(parent, name)?;
        let file = sys::open_beneath(dir.as_fd(), name, os | libc::O_CREAT, mode)?;
        let created = sys::fstat(file.as_fd())?;
        if kind_of(created.st_mode) != FsKind::File {
            return Err(libc::EISDIR);
        }
        let attr = self.lookup(parent, name)?;
        let handle = self.add_handle(Handle::File {
            fd: Arc::new(file),
            writable,
        })?;
        Ok(FsReply::Created { attr, handle })
    }

    fn read(&self, handle: u64, offset: u64, len: u32) -> SysResult<FsReply> {
        let Handle::File { fd, .. } = self.handle_of(handle)? else {
            return Err(libc::EISDIR);
        };
        let mut buf = vec![0u8; len.min(FS_MAX_IO) as usize];
        let mut filled = 0;
        while filled < buf.len() {
            let n = sys::pread(fd.as_fd(), &mut buf[filled..], offset + filled as u64)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        buf.truncate(filled);
        Ok(FsReply::Data(buf))
    }

    fn write(&self, handle: u64, offset: u64, data: &[u8]) -> SysResult<FsReply> {
        if data.len() > FS_MAX_IO as usize {
            return Err(libc::EINVAL);
        }
        let Handle::File { fd, writable } = self.handle_of(handle)? else {
            return Err(libc::EISDIR);
        };
        if !writable {
            return Err(libc::EBADF);
        }
        let end = offset.checked_add(data.len() as u64).ok_or(libc::EFBIG)?;
        let mut done = 0;
        while done < data.len() {
            let n = sys::pwrite(fd.as_fd(), &data[done..], offset + done as u64)?;
            if n == 0 {
                return Err(libc::EIO);
            }
            done += n;
        }
        debug_assert!(offset + done as u64 == end);
        Ok(FsReply::Written(done as u32))
    }

    fn opendir(&self, node: u64) -> SysResult<FsReply> {
        let (fd, kind) = self.node(node)?;
        if kind != FsKind::Dir {
            return Err(libc::ENOTDIR);
        }
        let dir = sys::reopen(fd.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY)?;
        let handle = self.add_handle(Handle::Dir(Arc::new(Mutex::new(dir))))?;
        Ok(FsReply::Opened { handle })
    }

    fn readdir(&self, handle: u64, offset: u64) -> SysResult<FsReply> {
        let Handle::Dir(dir) = self.handle_of(handle)? else {
            return Err(libc::ENOTDIR);
        };
        let dir = lock(&dir);
        let dev = sys::fstat(dir.as_fd())?.st_dev;
        let mut offset = offset;
        loop {
            let raw = sys::read_dir_at(dir.as_fd(), offset)?;
            let Some(last) = raw.last() else {
                return Ok(FsReply::Entries(Vec::new()));
            };
            offset = last.next_offset as u64;
            let entries = self.dir_entries(dev, raw);
            if !entries.is_empty() {
                return Ok(FsReply::Entries(entries));
            }
        }
    }

    /// The entries the guest may see: not `.`/`..` (the guest kernel makes its own), not
    /// names that are not UTF-8 (the protocol carries text).
    fn dir_entries(&self, dev: u64, raw: Vec<sys::RawDirEntry>) -> Vec<FsDirEntry> {
        let tables = lock(&self.tables);
        raw.into_iter()
            .filter_map(|e| {
                let name = String::from_utf8(e.name).ok()?;
                if !is_plain_name(&name) {
                    return None;
                }
                let kind = match e.d_type {
                    libc::DT_REG => FsKind::File,
                    libc::DT_DIR => FsKind::Dir,
                    libc::DT_LNK => FsKind::Symlink,
                    _ => FsKind::Other,
                };
                // A node id where the guest knows the inode, else a number that is not
                // any node id (the top bit): `d_ino` only has to be stable.
                let ino = tables
                    .by_key
                    .get(&(dev, e.ino))
                    .copied()
                    .unwrap_or(e.ino | 1 << 63);
                Some(FsDirEntry {
                    ino,
                    name,
                    kind,
                    next_offset: e.next_offset as u64,
                })
            })
            .collect()
    }

    /// Descriptor of the root, for tests that check nothing escaped.
    pub fn root_fd(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }
}

/// Operations a read-only share refuses. Opens are checked by their flags.
fn is_write(op: &FsOp) -> bool {
    matches!(
        op,
        FsOp::SetAttr { .. }
            | FsOp::Mkdir { .. }
            | FsOp::Unlink { .. }
            | FsOp::Rmdir { .. }
            | FsOp::Symlink { .. }
            | FsOp::Rename { .. }
            | FsOp::Create { .. }
            | FsOp::Write { .. }
    )
}

/// All shares of one connection, by share id.
#[derive(Default)]
pub struct ShareSet {
    servers: Mutex<HashMap<u32, Arc<ShareServer>>>,
}

impl ShareSet {
    pub fn insert(&self, server: Arc<ShareServer>) {
        lock(&self.servers).insert(server.id(), server);
    }

    pub fn servers(&self) -> Vec<Arc<ShareServer>> {
        let mut all: Vec<_> = lock(&self.servers).values().cloned().collect();
        all.sort_by_key(|s| s.id());
        all
    }

    /// Serves a request for any share; an unknown share is `ENODEV`.
    pub fn handle(&self, share: u32, op: FsOp) -> FsReply {
        let server = lock(&self.servers).get(&share).cloned();
        match server {
            Some(server) => server.handle(op),
            None => FsReply::Errno(libc::ENODEV),
        }
    }
}

/// The errno of a failed reply, for tests.
pub fn errno_of(reply: &FsReply) -> Option<Errno> {
    match reply {
        FsReply::Errno(e) => Some(*e),
        _ => None,
    }
}
