//! Image locking, compatible with QEMU's: a running engine holds its image so that a
//! second engine, QEMU, or `qemu-img` refuses to write it (or, for a writer, to open it
//! at all), and the engine refuses an image one of them holds.
//!
//! QEMU's file-posix driver (block/file-posix.c, `raw_apply_lock_bytes` and
//! `raw_check_lock_bytes`) takes shared open-file-description locks (`F_OFD_SETLK`,
//! `F_RDLCK`) on single bytes of the image file: byte `RAW_LOCK_PERM_BASE + i` (100 + i)
//! while it *uses* permission bit `i`, byte `RAW_LOCK_SHARED_BASE + i` (200 + i) while it
//! *refuses to share* permission `i`. Before using a permission it checks (`F_OFD_GETLK`
//! for a write lock) that nobody holds the "refuses to share" byte of it; before refusing
//! to share one, that nobody holds its "uses" byte. We take and check the same bytes, so
//! the check works both ways: QEMU honours our locks as its own (it fails with `Failed to
//! get shared "write" lock`), and we see QEMU's. The locks are advisory: they stop
//! programs that check them (QEMU, qemu-img, libvirt, Vireo), not a plain `dd`.
//!
//! Checked against QEMU 7.2 (Debian 12) in `disk`'s tests: a QEMU VM with a writable
//! virtio-blk disk holds bytes 100, 101 and 201 of a raw image (plus 103 and 203 for a
//! qcow2 image, which it may grow); a read-only one holds 100 and 201. We hold the same
//! bytes, plus 103/203 on raw images too (nobody resizes a disk under a running
//! guest). Both directions refuse: QEMU (VM, qemu-io, and qemu-img on qcow2) fails with
//! "Failed to get (shared) \"write\" lock", and we fail with `LockError::Busy`. One
//! QEMU rule applies to us as to QEMU's own VMs: `qemu-img info` on a *raw* image reads
//! no data and checks no lock, so it succeeds.
//!
//! OFD locks belong to the open file description, so a lock taken through a dup of the
//! image's fd lasts until the last fd of that description is closed, and the test
//! ignores our own locks.

use std::fs::File;
use std::io;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};

/// Offsets of QEMU's lock bytes (block/file-posix.c).
pub(super) const RAW_LOCK_PERM_BASE: i64 = 100;
pub(super) const RAW_LOCK_SHARED_BASE: i64 = 200;

/// QEMU's block-layer permissions (include/block/block-common.h, `BLK_PERM_*`), as bit
/// numbers: the lock byte of a permission is its base plus this number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Permission {
    /// `BLK_PERM_CONSISTENT_READ`: reads see what the image holds.
    ConsistentRead = 0,
    /// `BLK_PERM_WRITE`: the guest may change the image.
    Write = 1,
    /// `BLK_PERM_RESIZE`: the file may grow (a qcow2 image does on allocation).
    Resize = 3,
}

impl Permission {
    /// The name QEMU prints for it (`bdrv_perm_names`).
    fn name(self) -> &'static str {
        match self {
            Permission::ConsistentRead => "consistent read",
            Permission::Write => "write",
            Permission::Resize => "resize",
        }
    }
}

/// A held image lock; dropping it (with every other fd of the same open file) releases it.
#[derive(Debug)]
pub struct ImageLock {
    file: File,
    writable: bool,
    held: bool,
}

/// Why an image could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "the image is in use by another program (a running Vireo VM, QEMU or qemu-img): \
         it holds the \"{0}\" lock; stop that program first"
    )]
    Busy(&'static str),
    #[error("cannot lock the image: {0}")]
    Io(#[source] io::Error),
}

impl ImageLock {
    /// Locks `file` the way QEMU locks an image it runs a guest on: read-write (uses
    /// read, write and resize; shares neither write nor resize) or read-only (uses read;
    /// still shares neither write nor resize, as QEMU does for a read-only drive, so
    /// that nobody changes the image under the guest). Two read-only users can share an
    /// image; a writer excludes everybody else.
    ///
    /// Returns `Ok(None)` when the file system does not do OFD locks (some network file
    /// systems); QEMU then runs unlocked too, with a warning.
    pub fn acquire(file: &File, writable: bool) -> Result<Option<ImageLock>, LockError> {
        let file = file.try_clone().map_err(LockError::Io)?;
        let used: &[Permission] = if writable {
            &[
                Permission::ConsistentRead,
                Permission::Write,
                Permission::Resize,
            ]
        } else {
            &[Permission::ConsistentRead]
        };
        let unshared = [Permission::Write, Permission::Resize];

        // Take first, then check, as QEMU does (`RAW_PL_PREPARE`): two openers racing
        // each see the other's bytes instead of both passing the check.
        let bytes: Vec<i64> = used
            .iter()
            .map(|&p| RAW_LOCK_PERM_BASE + p as i64)
            .chain(unshared.iter().map(|&p| RAW_LOCK_SHARED_BASE + p as i64))
            .collect();
        for &offset in &bytes {
            match set_lock(&file, libc::F_RDLCK, offset) {
                Ok(()) => {}
                Err(Errno::EOPNOTSUPP | Errno::ENOLCK) => {
                    tracing::warn!(
                        "the image's file system does not support OFD locks: running it unlocked"
                    );
                    release(&file, &bytes);
                    return Ok(None);
                }
                Err(e) => {
                    release(&file, &bytes);
                    return Err(LockError::Io(e.into()));
                }
            }
        }
        let conflict = used
            .iter()
            .map(|&p| (p, RAW_LOCK_SHARED_BASE + p as i64))
            .chain(unshared.iter().map(|&p| (p, RAW_LOCK_PERM_BASE + p as i64)))
            .find_map(|(p, offset)| match is_locked_by_others(&file, offset) {
                Ok(false) => None,
                Ok(true) => Some(LockError::Busy(p.name())),
                Err(e) => Some(e),
            });
        if let Some(e) = conflict {
            // The caller's fd shares this open file description and may stay open:
            // leave nothing behind on it.
            release(&file, &bytes);
            return Err(e);
        }
        Ok(Some(ImageLock {
            file,
            writable,
            held: true,
        }))
    }

    /// Lets another program take the image (a live migration's destination opening it
    /// once this engine has stopped using it); `take_again` undoes it.
    pub fn release(&mut self) {
        if self.held {
            release(&self.file, &lock_bytes(self.writable));
            self.held = false;
        }
    }

    /// Takes the lock again after `release` (a migration that failed: this engine runs
    /// the guest on); fails if someone else took the image meanwhile.
    pub fn take_again(&mut self) -> Result<(), LockError> {
        if self.held {
            return Ok(());
        }
        if let Some(again) = ImageLock::acquire(&self.file, self.writable)? {
            // Its locks are on the same open file description as ours; closing our
            // duplicate fd (dropping the old value) releases nothing.
            *self = again;
        }
        self.held = true;
        Ok(())
    }
}

/// The lock bytes an opener takes (its permissions, and those it does not share).
fn lock_bytes(writable: bool) -> Vec<i64> {
    let used: &[Permission] = if writable {
        &[
            Permission::ConsistentRead,
            Permission::Write,
            Permission::Resize,
        ]
    } else {
        &[Permission::ConsistentRead]
    };
    used.iter()
        .map(|&p| RAW_LOCK_PERM_BASE + p as i64)
        .chain(
            [Permission::Write, Permission::Resize]
                .iter()
                .map(|&p| RAW_LOCK_SHARED_BASE + p as i64),
        )
        .collect()
}

/// Whether another program holds any of QEMU's lock bytes on `file`, without taking
/// any lock (taking one, even briefly, could make that program fail to open the
/// image). For "is this image in use?" questions.
pub fn in_use_by_others(file: &File) -> Result<bool, LockError> {
    for base in [RAW_LOCK_PERM_BASE, RAW_LOCK_SHARED_BASE] {
        for p in [
            Permission::ConsistentRead,
            Permission::Write,
            Permission::Resize,
        ] {
            if is_locked_by_others(file, base + p as i64)? {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

fn lock_of(kind: libc::c_int, offset: i64) -> libc::flock {
    libc::flock {
        l_type: kind as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: offset,
        l_len: 1,
        // Must be 0 for OFD locks (fcntl(2)).
        l_pid: 0,
    }
}

fn set_lock(file: &File, kind: libc::c_int, offset: i64) -> Result<(), Errno> {
    fcntl(file, FcntlArg::F_OFD_SETLK(&lock_of(kind, offset))).map(drop)
}

fn release(file: &File, bytes: &[i64]) {
    for &offset in bytes {
        // Unlocking a byte never conflicts; an error here would leave at worst a stale
        // shared lock until the file is closed.
        let _ = set_lock(file, libc::F_UNLCK, offset);
    }
}

/// QEMU's `qemu_lock_fd_test(fd, off, 1, true)`: would a write lock on the byte conflict?
pub(super) fn is_locked_by_others(file: &File, offset: i64) -> Result<bool, LockError> {
    let mut probe = lock_of(libc::F_WRLCK, offset);
    fcntl(file, FcntlArg::F_OFD_GETLK(&mut probe)).map_err(|e| LockError::Io(e.into()))?;
    Ok(probe.l_type != libc::F_UNLCK as libc::c_short)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;
    use vmm_sys_util::tempfile::TempFile;

    fn open(path: &std::path::Path) -> File {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap()
    }

    #[test]
    fn a_writer_excludes_everyone_readers_share() {
        let tmp = TempFile::new().unwrap();
        let (a, b) = (open(tmp.as_path()), open(tmp.as_path()));

        let writer = ImageLock::acquire(&a, true).unwrap().unwrap();
        assert!(matches!(
            ImageLock::acquire(&b, true),
            Err(LockError::Busy(_))
        ));
        assert!(matches!(
            ImageLock::acquire(&b, false),
            Err(LockError::Busy("write"))
        ));
        assert!(in_use_by_others(&b).unwrap());
        drop(writer);
        drop(a);
        // A concurrent fork in this test process (other tests run qemu-img) keeps a copy
        // of `a`, and its lock, until the child execs: wait that out.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while in_use_by_others(&b).unwrap() {
            assert!(
                std::time::Instant::now() < deadline,
                "the lock outlived its file"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }

        // Once the writer is gone, two readers coexist but keep a writer out.
        let c = open(tmp.as_path());
        let _r1 = ImageLock::acquire(&b, false).unwrap().unwrap();
        let _r2 = ImageLock::acquire(&c, false).unwrap().unwrap();
        let d = open(tmp.as_path());
        assert!(matches!(
            ImageLock::acquire(&d, true),
            Err(LockError::Busy(_))
        ));
    }

    #[test]
    fn messages_say_what_to_do() {
        let msg = LockError::Busy("write").to_string();
        assert!(msg.contains("stop that program"), "{msg}");
    }
}
