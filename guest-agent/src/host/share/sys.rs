//! The system calls the share server needs, each behind a safe wrapper that returns a
//! Linux errno on failure. Everything is relative to a directory descriptor: no host path
//! built from guest input is ever resolved from `/`.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// A failed call's errno.
pub type Errno = i32;
pub type SysResult<T> = Result<T, Errno>;

fn last_errno() -> Errno {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn cstring(s: &str) -> SysResult<CString> {
    CString::new(s).map_err(|_| libc::EINVAL)
}

/// `openat2(dir, name, flags, mode)` confined beneath `dir`: no `..` escape, no symlink
/// (so not even a symlink inside the share is followed: the guest resolves its own), no
/// `/proc` magic link.
pub fn open_beneath(dir: BorrowedFd<'_>, name: &str, flags: i32, mode: u32) -> SysResult<OwnedFd> {
    let name = cstring(name)?;
    let mut how: libc::open_how = open_how_zeroed();
    how.flags = (flags | libc::O_CLOEXEC | libc::O_NOFOLLOW) as u64;
    how.mode = if flags & libc::O_CREAT != 0 {
        u64::from(mode & 0o7777)
    } else {
        0
    };
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    loop {
        // SAFETY: `name` is a NUL-terminated string and `how` a valid `open_how` of the
        // size passed; both outlive the call. The kernel returns a new descriptor or -1.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                name.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd >= 0 {
            // SAFETY: openat2 just returned this descriptor; nothing else owns it.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
        }
        match last_errno() {
            // RESOLVE_BENEATH fails with EAGAIN when a rename raced the walk: retry.
            libc::EAGAIN | libc::EINTR => continue,
            e => return Err(e),
        }
    }
}

fn open_how_zeroed() -> libc::open_how {
    // SAFETY: open_how is plain integers; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

/// Opens the file an `O_PATH` descriptor refers to, with real access flags. Going through
/// our own `/proc/self/fd/N` names that very inode: no path is resolved again, so a
/// rename between the lookup and the open cannot redirect it.
pub fn reopen(fd: BorrowedFd<'_>, flags: i32) -> SysResult<OwnedFd> {
    let path = cstring(&format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
    // SAFETY: `path` is NUL-terminated and lives across the call.
    let new = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) };
    if new < 0 {
        return Err(last_errno());
    }
    // SAFETY: open just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// `/proc/self/fd/N` of a descriptor, for the calls that have no `fd`-only form
/// (`chmod`, `utimensat` on an `O_PATH` descriptor).
fn proc_path(fd: BorrowedFd<'_>) -> SysResult<CString> {
    cstring(&format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

pub fn fstat(fd: BorrowedFd<'_>) -> SysResult<libc::stat> {
    // SAFETY: all-zero is a valid `stat`; the kernel fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: an empty NUL-terminated path with AT_EMPTY_PATH stats `fd` itself; `st` is
    // a valid out pointer.
    let rc = unsafe {
        libc::fstatat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            &mut st,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc < 0 {
        return Err(last_errno());
    }
    Ok(st)
}

pub fn fstatvfs(fd: BorrowedFd<'_>) -> SysResult<libc::statvfs> {
    // SAFETY: all-zero is a valid `statvfs`; the kernel fills it.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out pointer.
    if unsafe { libc::fstatvfs(fd.as_raw_fd(), &mut st) } < 0 {
        return Err(last_errno());
    }
    Ok(st)
}

fn check(rc: libc::c_int) -> SysResult<()> {
    if rc < 0 {
        Err(last_errno())
    } else {
        Ok(())
    }
}

pub fn mkdirat(dir: BorrowedFd<'_>, name: &str, mode: u32) -> SysResult<()> {
    let name = cstring(name)?;
    // SAFETY: `name` is NUL-terminated and lives across the call.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode & 0o7777) })
}

pub fn unlinkat(dir: BorrowedFd<'_>, name: &str, remove_dir: bool) -> SysResult<()> {
    let name = cstring(name)?;
    let flags = if remove_dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: `name` is NUL-terminated and lives across the call.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) })
}

pub fn symlinkat(target: &str, dir: BorrowedFd<'_>, name: &str) -> SysResult<()> {
    let (target, name) = (cstring(target)?, cstring(name)?);
    // SAFETY: both strings are NUL-terminated and live across the call.
    check(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) })
}

pub fn renameat2(
    old_dir: BorrowedFd<'_>,
    old: &str,
    new_dir: BorrowedFd<'_>,
    new: &str,
    flags: u32,
) -> SysResult<()> {
    let (old, new) = (cstring(old)?, cstring(new)?);
    // SAFETY: both names are NUL-terminated and live across the call.
    check(unsafe {
        libc::renameat2(
            old_dir.as_raw_fd(),
            old.as_ptr(),
            new_dir.as_raw_fd(),
            new.as_ptr(),
            flags,
        )
    })
}

/// The target of the symlink an `O_PATH | O_NOFOLLOW` descriptor refers to.
pub fn readlink(fd: BorrowedFd<'_>) -> SysResult<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: an empty path reads the link `fd` refers to; `buf` is writable for its
    // length.
    let n = unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(last_errno());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

pub fn chmod(fd: BorrowedFd<'_>, mode: u32) -> SysResult<()> {
    let path = proc_path(fd)?;
    // SAFETY: `path` is NUL-terminated and lives across the call.
    check(unsafe { libc::chmod(path.as_ptr(), mode & 0o7777) })
}

/// Sets access and modification times (`None`: leave, `Some(None)`: now).
pub fn set_times(
    fd: BorrowedFd<'_>,
    atime: Option<Option<i64>>,
    mtime: Option<Option<i64>>,
) -> SysResult<()> {
    fn spec(t: Option<Option<i64>>) -> libc::timespec {
        let (sec, nsec) = match t {
            None => (0, libc::UTIME_OMIT),
            Some(None) => (0, libc::UTIME_NOW),
            Some(Some(ns)) => (ns.div_euclid(1_000_000_000), ns.rem_euclid(1_000_000_000)),
        };
        libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        }
    }
    let path = proc_path(fd)?;
    let times = [spec(atime), spec(mtime)];
    // SAFETY: `path` is NUL-terminated, `times` two valid timespecs; both outlive the call.
    check(unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), times.as_ptr(), 0) })
}

pub fn ftruncate(fd: BorrowedFd<'_>, size: u64) -> SysResult<()> {
    let size = libc::off_t::try_from(size).map_err(|_| libc::EFBIG)?;
    // SAFETY: plain call on a descriptor we own.
    check(unsafe { libc::ftruncate(fd.as_raw_fd(), size) })
}

pub fn fsync(fd: BorrowedFd<'_>, data_only: bool) -> SysResult<()> {
    // SAFETY: plain calls on a descriptor we own.
    check(unsafe {
        if data_only {
            libc::fdatasync(fd.as_raw_fd())
        } else {
            libc::fsync(fd.as_raw_fd())
        }
    })
}

/// `pread` into memory that need not be initialised; returns the bytes read (which are
/// then initialised).
pub fn pread_uninit(
    fd: BorrowedFd<'_>,
    buf: &mut [std::mem::MaybeUninit<u8>],
    offset: u64,
) -> SysResult<usize> {
    let offset = libc::off_t::try_from(offset).map_err(|_| libc::EINVAL)?;
    loop {
        // SAFETY: `buf` is writable for its length; the kernel only writes to it.
        let n = unsafe { libc::pread(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), offset) };
        if n >= 0 {
            return Ok(n as usize);
        }
        if last_errno() != libc::EINTR {
            return Err(last_errno());
        }
    }
}

pub fn pwrite(fd: BorrowedFd<'_>, buf: &[u8], offset: u64) -> SysResult<usize> {
    let offset = libc::off_t::try_from(offset).map_err(|_| libc::EINVAL)?;
    loop {
        // SAFETY: `buf` is readable for its length.
        let n = unsafe { libc::pwrite(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), offset) };
        if n >= 0 {
            return Ok(n as usize);
        }
        if last_errno() != libc::EINTR {
            return Err(last_errno());
        }
    }
}

/// One `linux_dirent64` record.
pub struct RawDirEntry {
    pub ino: u64,
    pub next_offset: i64,
    pub d_type: u8,
    pub name: Vec<u8>,
}

/// Reads directory records starting at `offset` (a `d_off` cookie or 0), one
/// `getdents64` batch.
pub fn read_dir_at(dir: BorrowedFd<'_>, offset: u64) -> SysResult<Vec<RawDirEntry>> {
    let offset = libc::off_t::try_from(offset).map_err(|_| libc::EINVAL)?;
    // SAFETY: plain call on a descriptor we own.
    if unsafe { libc::lseek(dir.as_raw_fd(), offset, libc::SEEK_SET) } < 0 {
        return Err(last_errno());
    }
    let mut buf = vec![0u8; 32 * 1024];
    // SAFETY: `buf` is writable for its length.
    let n = unsafe {
        libc::syscall(
            libc::SYS_getdents64,
            dir.as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(last_errno());
    }
    Ok(parse_dirents(&buf[..n as usize]))
}

/// Parses `linux_dirent64` records: `d_ino: u64`, `d_off: i64`, `d_reclen: u16`,
/// `d_type: u8`, then the NUL-terminated name. The kernel wrote them, but a short or
/// odd record still ends the parse instead of reading past the buffer.
fn parse_dirents(mut buf: &[u8]) -> Vec<RawDirEntry> {
    let mut out = Vec::new();
    while buf.len() >= 19 {
        let ino = u64::from_ne_bytes(buf[0..8].try_into().unwrap_or_default());
        let next_offset = i64::from_ne_bytes(buf[8..16].try_into().unwrap_or_default());
        let reclen = usize::from(u16::from_ne_bytes([buf[16], buf[17]]));
        if reclen < 19 || reclen > buf.len() {
            break;
        }
        let d_type = buf[18];
        let raw_name = &buf[19..reclen];
        let len = raw_name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(raw_name.len());
        out.push(RawDirEntry {
            ino,
            next_offset,
            d_type,
            name: raw_name[..len].to_vec(),
        });
        buf = &buf[reclen..];
    }
    out
}

/// Raises this process's open-file limit as far as it may go: every node a guest has
/// looked up holds an `O_PATH` descriptor (the guest kernel keeps lookups until memory
/// pressure makes it forget them). With the privilege to (root), the hard limit itself
/// goes up to the kernel's `nr_open`; otherwise the soft limit goes up to the hard one.
pub fn raise_fd_limit() {
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<libc::rlim_t>().ok());
    // SAFETY: all-zero is a valid rlimit; getrlimit fills it.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `lim` is a valid out pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    if let Some(max) = nr_open.filter(|&m| m > lim.rlim_max) {
        let wanted = libc::rlimit {
            rlim_cur: max,
            rlim_max: max,
        };
        // SAFETY: `wanted` is a valid rlimit; failing (no privilege) changes nothing.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) } == 0 {
            return;
        }
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid rlimit.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirent_parse_stops_at_a_bad_record() {
        let mut rec = Vec::new();
        rec.extend_from_slice(&5u64.to_ne_bytes());
        rec.extend_from_slice(&9i64.to_ne_bytes());
        rec.extend_from_slice(&24u16.to_ne_bytes());
        rec.push(libc::DT_REG);
        rec.extend_from_slice(b"abc\0\0");
        let mut two = rec.clone();
        two.extend_from_slice(&rec[..20]);
        let got = parse_dirents(&two);
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].ino, got[0].next_offset), (5, 9));
        assert_eq!(got[0].name, b"abc");
    }
}
