//! Shared folders in the guest: the host announces its shares, the agent mounts each at
//! `<base>/<name>` (`/mnt/vireo/<name>`) through FUSE and forwards every operation to the
//! host ([`fuse`], [`link`]); host-side changes come back as invalidations.
//!
//! Mounts outlive a connection: while the host is away their requests fail with `EIO`,
//! and when it comes back with the same node tables (same [`ShareInfo::instance`]) they
//! simply go on. A new instance means new node ids, so the share is mounted afresh.

pub mod fuse;
pub mod link;
pub mod prefetch;

use std::collections::HashMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use fuser::{BackgroundSession, Config, INodeNo, MountOption, Notifier, SessionACL};

use super::log;
use crate::protocol::fs::{is_plain_name, FsInvalidate, FsMountResult, ShareInfo};
use fuse::{LinkSlot, ShareFs};
use link::FsLink;
use prefetch::Prefetch;

/// Where shares are mounted unless the agent is told otherwise.
pub const DEFAULT_MOUNT_BASE: &str = "/mnt/vireo";

struct Mounted {
    info: ShareInfo,
    prefetch: Arc<Prefetch>,
    path: PathBuf,
    session: BackgroundSession,
    invalidations: Sender<FsInvalidate>,
}

pub struct ShareMounts {
    base: PathBuf,
    owner: (u32, u32),
    link: LinkSlot,
    mounts: Mutex<HashMap<String, Mounted>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ShareMounts {
    /// `owner`: the guest user and group every file shows as owned by.
    pub fn new(base: PathBuf, owner: (u32, u32)) -> Self {
        Self {
            base,
            owner,
            link: Arc::new(RwLock::new(None)),
            mounts: Mutex::default(),
        }
    }

    /// A connection is up: requests go through it from now on.
    pub fn attach(&self, link: &Arc<FsLink>) {
        *self.link.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(link));
    }

    /// The connection `link` ended (a newer one may already be attached).
    pub fn detach(&self, link: &Arc<FsLink>) {
        let mut slot = self.link.write().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_some_and(|l| Arc::ptr_eq(l, link)) {
            *slot = None;
        }
    }

    /// Makes the mounts match the host's list; `dir_plus`: the host serves
    /// [`FsOp::ReadDirPlus`](crate::protocol::fs::FsOp::ReadDirPlus).
    pub fn apply(&self, shares: Vec<ShareInfo>, dir_plus: bool) -> Vec<FsMountResult> {
        let mut mounts = lock(&self.mounts);
        let wanted: Vec<&str> = shares.iter().map(|s| s.name.as_str()).collect();
        let gone: Vec<String> = mounts
            .keys()
            .filter(|name| !wanted.contains(&name.as_str()))
            .cloned()
            .collect();
        for name in gone {
            if let Some(m) = mounts.remove(&name) {
                unmount(m);
            }
        }
        let mut results = Vec::new();
        for info in shares {
            let name = info.name.clone();
            let result = match mounts.get(&name) {
                Some(m) if m.info == info => Ok(m.path.display().to_string()),
                _ => {
                    if let Some(old) = mounts.remove(&name) {
                        unmount(old);
                    }
                    self.mount(info, dir_plus).map(|m| {
                        let path = m.path.display().to_string();
                        mounts.insert(name.clone(), m);
                        path
                    })
                }
            };
            if let Err(why) = &result {
                log(format_args!("share {name}: {why}"));
            }
            results.push(FsMountResult { name, result });
        }
        results
    }

    fn mount(&self, info: ShareInfo, dir_plus: bool) -> Result<Mounted, String> {
        if !is_plain_name(&info.name) {
            return Err(format!("{:?} is not a plain name", info.name));
        }
        let path = self.base.join(&info.name);
        // A mount left by an agent that died would make the directory unusable.
        detach(&path);
        std::fs::create_dir_all(&path).map_err(|e| format!("creating {}: {e}", path.display()))?;
        let mut options = vec![
            MountOption::FSName(format!("vireo:{}", info.name)),
            MountOption::Subtype("vireo".into()),
            MountOption::DefaultPermissions,
            MountOption::NoDev,
            MountOption::NoSuid,
        ];
        options.push(if info.read_only {
            MountOption::RO
        } else {
            MountOption::RW
        });
        let mut config = Config::default();
        config.mount_options = options;
        let prefetch = Arc::new(Prefetch::default());
        config.acl = SessionACL::All;
        let fs = ShareFs {
            share: info.id,
            link: Arc::clone(&self.link),
            owner: self.owner,
            versions: fuse::Versions::default(),
            dir_plus,
            prefetch: Arc::clone(&prefetch),
        };
        let session = fuser::spawn_mount(fs, &path, &config)
            .map_err(|e| format!("mounting {}: {e}", path.display()))?;
        widen_readahead(&path);
        let (invalidations, rx) = mpsc::channel();
        let notifier = session.notifier();
        // The kernel may wait on a request this connection's reader has yet to
        // answer before it takes an invalidation: never invalidate from the reader.
        let _ = std::thread::Builder::new()
            .name("vireo-fs-inval".into())
            .spawn(move || invalidate_loop(&notifier, &rx));
        log(format_args!(
            "share {} mounted at {}{}",
            info.name,
            path.display(),
            if info.read_only { " (read-only)" } else { "" }
        ));
        Ok(Mounted {
            info,
            prefetch,
            path,
            session,
            invalidations,
        })
    }

    pub fn invalidate(&self, inv: FsInvalidate) {
        let share = match &inv {
            FsInvalidate::Entry { share, .. } | FsInvalidate::Node { share, .. } => *share,
        };
        let mounts = lock(&self.mounts);
        if let Some(m) = mounts.values().find(|m| m.info.id == share) {
            let stale = match &inv {
                FsInvalidate::Entry { parent, .. } => m.prefetch.changed_dir(*parent),
                FsInvalidate::Node { node, .. } => m.prefetch.changed_node(*node),
            };
            fuse::give_back(&self.link, share, stale);
            let _ = m.invalidations.send(inv);
        }
    }

    /// Unmounts everything (the agent is exiting).
    pub fn unmount_all(&self) {
        let all: Vec<Mounted> = lock(&self.mounts).drain().map(|(_, m)| m).collect();
        for m in all {
            unmount(m);
        }
    }
}

fn invalidate_loop(notifier: &Notifier, rx: &Receiver<FsInvalidate>) {
    while let Ok(inv) = rx.recv() {
        // ENOENT: the kernel has no such node or entry cached, which is fine.
        let _ = match inv {
            FsInvalidate::Entry { parent, name, .. } => {
                notifier.inval_entry(INodeNo(parent), name.as_ref())
            }
            FsInvalidate::Node { node, .. } => notifier.inval_inode(INodeNo(node), 0, 0),
        };
    }
}

fn unmount(m: Mounted) {
    let Mounted {
        info,
        prefetch: _,
        path,
        session,
        invalidations,
    } = m;
    drop(invalidations);
    match session.umount_and_join() {
        Ok(()) => log(format_args!("share {} unmounted", info.name)),
        Err(err) => {
            // Busy (a shell sits in it): detach it now, the kernel frees it when the
            // last user leaves.
            detach(&path);
            log(format_args!(
                "share {}: unmount failed ({err}); detached",
                info.name
            ));
        }
    }
}

/// Readahead of the mount, in KiB: the largest request (1 MiB). (Wider windows measured
/// slower here: more requests in flight scatter the host's own reads of a cold file.)
const READAHEAD_KB: u32 = 1024;

/// The kernel starts a FUSE mount with at most the default 128 KiB of readahead (what
/// it offers at init): sequential reads then go out as 128 KiB requests. The mount's
/// backing device takes a larger window through sysfs (root only; without it the
/// mount just reads in smaller requests).
fn widen_readahead(path: &Path) {
    // From the mount table, not stat(2): a stat of the mount would be a request to the
    // host, and this runs on the thread that reads the host's answers.
    let Some(dev) = mount_device(path) else {
        return;
    };
    let sysfs = format!("/sys/class/bdi/{dev}/read_ahead_kb");
    if let Err(err) = std::fs::write(&sysfs, READAHEAD_KB.to_string()) {
        log(format_args!("{sysfs}: {err}; reads stay in small requests"));
    }
}

/// `major:minor` of the newest mount at `path`, from `/proc/self/mountinfo`.
fn mount_device(path: &Path) -> Option<String> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    // Mount points are written with space, tab, newline and backslash escaped in octal.
    let mut escaped = String::new();
    for c in path.to_str()?.chars() {
        match c {
            ' ' | '\t' | '\n' | '\\' => escaped.push_str(&format!("\\{:03o}", c as u32)),
            c => escaped.push(c),
        }
    }
    table.lines().rev().find_map(|line| {
        let mut fields = line.split(' ').skip(2);
        let dev = fields.next()?;
        let point = fields.nth(1)?;
        (point == escaped).then(|| dev.to_owned())
    })
}

/// Lazily unmounts whatever is mounted at `path` (nothing: no harm).
fn detach(path: &Path) {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: `c` is a NUL-terminated path that lives across the call.
    unsafe {
        libc::umount2(c.as_ptr(), libc::MNT_DETACH);
    }
}

/// The guest's desktop user: the first account with a uid from 1000 (not `nobody`),
/// else root. Shares show as owned by it.
pub fn default_owner() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .filter_map(|line| {
            let mut f = line.split(':').skip(2);
            let uid = f.next()?.parse::<u32>().ok()?;
            let gid = f.next()?.parse::<u32>().ok()?;
            Some((uid, gid))
        })
        .find(|&(uid, _)| (1000..65534).contains(&uid))
        .unwrap_or((0, 0))
}
