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
//! Descriptors are a cache, not one per node: a guest may look up more files than this
//! process may open. A node remembers its parent node and name; when its descriptor was
//! dropped, it is opened again beneath its parent's (the same confined resolution) and
//! must still be the same inode, else the guest gets `ESTALE` and looks it up afresh.
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
    dir_plus_size, is_plain_name, open_flags, FsAttr, FsDirEntry, FsDirEntryPlus, FsKind, FsOp,
    FsReply, FsSetAttr, FsStatFs, FsTime, FS_MAX_IO, FS_MAX_LINK, FS_ROOT,
};
use sys::{Errno, SysResult};

/// Nodes one connection may hold (each is an open descriptor).
pub const MAX_NODES: usize = 1 << 20;
/// Open files and directories one connection may hold.
pub const MAX_HANDLES: usize = 1 << 16;
/// Node descriptors kept open per share; the least recently used are closed beyond it.
const MAX_CACHED_FDS: usize = 4096;
/// Ancestors reopened at most to reach one node (a deeper chain of evicted directories
/// is refused rather than recursed into).
const MAX_REOPEN_DEPTH: u32 = 512;
/// `Node::parent` of a node whose name is gone (unlinked, replaced): it cannot be
/// reopened.
const NO_PARENT: u64 = 0;

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
    /// `None` when evicted from the descriptor cache.
    fd: Option<Arc<OwnedFd>>,
    kind: FsKind,
    key: (u64, u64),
    /// Lookups the guest has not given back yet.
    lookups: u64,
    /// Where it was last seen, to reopen it.
    parent: u64,
    name: String,
    /// For the cache's least-recently-used eviction.
    last_use: u64,
}

enum Handle {
    File {
        fd: Arc<OwnedFd>,
        writable: bool,
    },
    /// `node`: the directory's node, which `readdirplus` looks its entries up beneath.
    Dir {
        fd: Arc<Mutex<OwnedFd>>,
        node: u64,
    },
}

struct Tables {
    nodes: HashMap<u64, Node>,
    by_key: HashMap<(u64, u64), u64>,
    next_node: u64,
    handles: HashMap<u64, Handle>,
    next_handle: u64,
    cached_fds: usize,
    clock: u64,
}

impl Tables {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Keeps `fd` for node `id` and closes the least recently used beyond the cap (in
    /// batches, so the scan is paid once per many inserts).
    fn cache_fd(&mut self, id: u64, fd: &Arc<OwnedFd>) {
        let now = self.tick();
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        node.last_use = now;
        if node.fd.is_none() {
            node.fd = Some(Arc::clone(fd));
            self.cached_fds += 1;
        }
        if self.cached_fds <= MAX_CACHED_FDS {
            return;
        }
        let mut ages: Vec<(u64, u64)> = self
            .nodes
            .iter()
            .filter(|(&n, node)| n != FS_ROOT && node.fd.is_some())
            .map(|(&n, node)| (node.last_use, n))
            .collect();
        let evict = ages.len() / 4;
        if evict == 0 {
            return;
        }
        ages.select_nth_unstable(evict - 1);
        for &(_, n) in &ages[..evict] {
            if let Some(node) = self.nodes.get_mut(&n) {
                node.fd = None;
                self.cached_fds -= 1;
            }
        }
    }

    /// The guest renamed `parent/name` to `new_parent/new_name`.
    fn renamed(
        &mut self,
        parent: u64,
        name: &str,
        new_parent: u64,
        new_name: &str,
        exchange: bool,
    ) {
        for node in self.nodes.values_mut() {
            if node.parent == parent && node.name == name {
                node.parent = new_parent;
                node.name = new_name.into();
            } else if node.parent == new_parent && node.name == new_name {
                if exchange {
                    node.parent = parent;
                    node.name = name.into();
                } else {
                    node.parent = NO_PARENT;
                }
            }
        }
    }

    /// `parent/name` is gone.
    fn unlinked(&mut self, parent: u64, name: &str) {
        for node in self.nodes.values_mut() {
            if node.parent == parent && node.name == name {
                node.parent = NO_PARENT;
            }
        }
    }
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
            cached_fds: 0,
            clock: 0,
        };
        tables.nodes.insert(
            FS_ROOT,
            Node {
                fd: Some(Arc::clone(&root)),
                kind: FsKind::Dir,
                key: key_of(&st),
                lookups: 1,
                parent: NO_PARENT,
                name: String::new(),
                last_use: 0,
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
                lock(&self.tables).unlinked(parent, &name);
                Ok(FsReply::Done)
            }
            FsOp::Rmdir { parent, name } => {
                sys::unlinkat(self.dir_fd(parent, &name)?.as_fd(), &name, true)?;
                lock(&self.tables).unlinked(parent, &name);
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
                let exchange = flags & libc::RENAME_EXCHANGE != 0;
                lock(&self.tables).renamed(parent, &name, new_parent, &new_name, exchange);
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
                    Handle::Dir { fd, .. } => sys::fsync(lock(&fd).as_fd(), data_only)?,
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
            FsOp::ReadDirPlus {
                handle,
                offset,
                max_bytes,
            } => self.readdir_plus(handle, offset, max_bytes),
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
        self.node_at_depth(node, 0)
    }

    /// The node's descriptor, reopened beneath its parent if it was evicted.
    fn node_at_depth(&self, node: u64, depth: u32) -> SysResult<(Arc<OwnedFd>, FsKind)> {
        let (parent, name, key, kind) = {
            let mut tables = lock(&self.tables);
            let now = tables.tick();
            let n = tables.nodes.get_mut(&node).ok_or(libc::ENOENT)?;
            if let Some(fd) = &n.fd {
                n.last_use = now;
                return Ok((Arc::clone(fd), n.kind));
            }
            (n.parent, n.name.clone(), n.key, n.kind)
        };
        if parent == NO_PARENT {
            return Err(libc::ESTALE);
        }
        if depth >= MAX_REOPEN_DEPTH {
            return Err(libc::ENAMETOOLONG);
        }
        let (dir, dir_kind) = self.node_at_depth(parent, depth + 1)?;
        if dir_kind != FsKind::Dir {
            return Err(libc::ESTALE);
        }
        let fd = match sys::open_beneath(dir.as_fd(), &name, libc::O_PATH, 0) {
            Ok(fd) => fd,
            Err(libc::ENOENT) => return Err(libc::ESTALE),
            Err(e) => return Err(e),
        };
        // The name may now be another file: then this node is gone. (An inode number
        // the file system reused for a file of the same kind passes: it is still a file
        // beneath the share, only a newer one.)
        let st = sys::fstat(fd.as_fd())?;
        if key_of(&st) != key || kind_of(st.st_mode) != kind {
            return Err(libc::ESTALE);
        }
        let fd = Arc::new(fd);
        lock(&self.tables).cache_fd(node, &fd);
        Ok((fd, kind))
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
            Some(Handle::Dir { fd, node }) => Ok(Handle::Dir {
                fd: Arc::clone(fd),
                node: *node,
            }),
            None => Err(libc::EBADF),
        }
    }

    fn lookup(&self, parent: u64, name: &str) -> SysResult<FsAttr> {
        let dir = self.dir_fd(parent, name)?;
        let fd = sys::open_beneath(dir.as_fd(), name, libc::O_PATH, 0)?;
        let st = sys::fstat(fd.as_fd())?;
        let fd = Arc::new(fd);
        let mut tables = lock(&self.tables);
        let key = key_of(&st);
        if let Some(&id) = tables.by_key.get(&key) {
            if let Some(node) = tables.nodes.get_mut(&id) {
                node.lookups = node.lookups.saturating_add(1);
                // Seen under this name now (a host-side rename, a hard link).
                node.parent = parent;
                node.name = name.into();
                tables.cache_fd(id, &fd);
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
                fd: None,
                kind: kind_of(st.st_mode),
                key,
                lookups: 1,
                parent,
                name: name.into(),
                last_use: 0,
            },
        );
        tables.by_key.insert(key, id);
        tables.cache_fd(id, &fd);
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
            if n.fd.is_some() {
                tables.cached_fds -= 1;
            }
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
        let mut buf = Vec::new();
        self.read_into(handle, offset, len, &mut buf)?;
        Ok(FsReply::Data(buf))
    }

    /// Appends up to `len` (at most [`FS_MAX_IO`]) bytes of the file at `offset` to
    /// `buf`: fewer only at the end of the file.
    pub fn read_into(
        &self,
        handle: u64,
        offset: u64,
        len: u32,
        buf: &mut Vec<u8>,
    ) -> SysResult<()> {
        let Handle::File { fd, .. } = self.handle_of(handle)? else {
            return Err(libc::EISDIR);
        };
        let want = len.min(FS_MAX_IO) as usize;
        buf.reserve(want);
        let mut filled = 0;
        while filled < want {
            let at = offset.checked_add(filled as u64).ok_or(libc::EINVAL)?;
            let n = sys::pread_uninit(
                fd.as_fd(),
                &mut buf.spare_capacity_mut()[..want - filled],
                at,
            )?;
            if n == 0 {
                break;
            }
            // SAFETY: pread initialised the first `n` spare bytes (`n` is at most the
            // spare length it was given).
            unsafe { buf.set_len(buf.len() + n) };
            filled += n;
        }
        Ok(())
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
        let handle = self.add_handle(Handle::Dir {
            fd: Arc::new(Mutex::new(dir)),
            node,
        })?;
        Ok(FsReply::Opened { handle })
    }

    fn readdir(&self, handle: u64, offset: u64) -> SysResult<FsReply> {
        let Handle::Dir { fd: dir, .. } = self.handle_of(handle)? else {
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

    /// Entries from `offset` with their attributes, each a counted lookup beneath the
    /// directory's node, as many as fit `max_bytes` of the guest's FUSE buffer (one at
    /// least). Names that cannot be looked up (gone since) are skipped; an empty
    /// answer is the end of the directory.
    fn readdir_plus(&self, handle: u64, offset: u64, max_bytes: u32) -> SysResult<FsReply> {
        let Handle::Dir { fd: dir, node } = self.handle_of(handle)? else {
            return Err(libc::ENOTDIR);
        };
        let dir = lock(&dir);
        let dev = sys::fstat(dir.as_fd())?.st_dev;
        let mut room = max_bytes as usize;
        let mut out = Vec::new();
        let mut offset = offset;
        while out.is_empty() {
            let raw = sys::read_dir_at(dir.as_fd(), offset)?;
            let Some(last) = raw.last() else {
                break;
            };
            offset = last.next_offset as u64;
            for entry in self.dir_entries(dev, raw) {
                let size = dir_plus_size(entry.name.len());
                if size > room && !out.is_empty() {
                    return Ok(FsReply::EntriesPlus(out));
                }
                if let Ok(attr) = self.lookup(node, &entry.name) {
                    room = room.saturating_sub(size);
                    out.push(FsDirEntryPlus {
                        name: entry.name,
                        next_offset: entry.next_offset,
                        attr,
                    });
                }
            }
        }
        Ok(FsReply::EntriesPlus(out))
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

    /// [`ShareServer::read_into`] on share `share`.
    pub fn read_into(
        &self,
        share: u32,
        handle: u64,
        offset: u64,
        len: u32,
        buf: &mut Vec<u8>,
    ) -> SysResult<()> {
        let server = lock(&self.servers).get(&share).cloned();
        server
            .ok_or(libc::ENODEV)?
            .read_into(handle, offset, len, buf)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("vireo-share-unit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn entry(server: &ShareServer, parent: u64, name: &str) -> FsAttr {
        match server.handle(FsOp::Lookup {
            parent,
            name: name.into(),
        }) {
            FsReply::Entry(a) => a,
            other => panic!("lookup {name}: {other:?}"),
        }
    }

    #[test]
    fn more_nodes_than_cached_descriptors_stay_usable() {
        let dir = scratch("evict");
        std::fs::create_dir(dir.join("d")).unwrap();
        let count = MAX_CACHED_FDS + 1000;
        for i in 0..count {
            std::fs::write(dir.join(format!("d/f{i}")), i.to_string()).unwrap();
        }
        let server = ShareServer::open(
            1,
            ShareConfig {
                name: "t".into(),
                path: dir.clone(),
                read_only: false,
            },
        )
        .unwrap();
        let d = entry(&server, FS_ROOT, "d").node;
        let nodes: Vec<u64> = (0..count)
            .map(|i| entry(&server, d, &format!("f{i}")).node)
            .collect();
        assert!(lock(&server.tables).cached_fds <= MAX_CACHED_FDS + 1);
        // The first ones were evicted: they reopen beneath their parent.
        let FsReply::Attr(a) = server.handle(FsOp::GetAttr { node: nodes[0] }) else {
            panic!("getattr of an evicted node");
        };
        assert_eq!(a.size, 1);
        // A guest rename moves the node's name along.
        let rename = FsOp::Rename {
            parent: d,
            name: "f1".into(),
            new_parent: FS_ROOT,
            new_name: "moved".into(),
            flags: 0,
        };
        assert_eq!(server.handle(rename), FsReply::Done);
        for &node in &nodes[2..] {
            server.handle(FsOp::GetAttr { node });
        }
        let FsReply::Attr(a) = server.handle(FsOp::GetAttr { node: nodes[1] }) else {
            panic!("getattr after rename");
        };
        assert_eq!(a.node, nodes[1]);
        // Replaced on the host behind the guest's back by a directory: stale.
        std::fs::remove_file(dir.join("d/f3")).unwrap();
        std::fs::create_dir(dir.join("d/f3")).unwrap();
        for &node in &nodes[4..] {
            server.handle(FsOp::GetAttr { node });
        }
        assert_eq!(
            server.handle(FsOp::GetAttr { node: nodes[3] }),
            FsReply::Errno(libc::ESTALE)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn readdir_plus_looks_entries_up_and_fits_the_buffer() {
        let dir = scratch("plus");
        for i in 0..100 {
            std::fs::write(dir.join(format!("file{i:03}")), "x".repeat(i)).unwrap();
        }
        let server = ShareServer::open(
            1,
            ShareConfig {
                name: "t".into(),
                path: dir.clone(),
                read_only: false,
            },
        )
        .unwrap();
        let FsReply::Opened { handle } = server.handle(FsOp::OpenDir { node: FS_ROOT }) else {
            panic!("opendir");
        };
        let (mut offset, mut seen) = (0, Vec::new());
        loop {
            let op = FsOp::ReadDirPlus {
                handle,
                offset,
                max_bytes: 4096,
            };
            let FsReply::EntriesPlus(entries) = server.handle(op) else {
                panic!("readdirplus");
            };
            let Some(last) = entries.last() else { break };
            offset = last.next_offset;
            let bytes: usize = entries.iter().map(|e| dir_plus_size(e.name.len())).sum();
            assert!(bytes <= 4096, "{bytes} bytes");
            seen.extend(entries);
        }
        assert_eq!(seen.len(), 100);
        for e in &seen {
            let i: usize = e.name["file".len()..].parse().unwrap();
            assert_eq!(e.attr.size, i as u64);
            // The entry is a node the guest holds a lookup of, like after a lookup.
            assert_eq!(entry(&server, FS_ROOT, &e.name).node, e.attr.node);
            assert_eq!(lock(&server.tables).nodes[&e.attr.node].lookups, 2);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
