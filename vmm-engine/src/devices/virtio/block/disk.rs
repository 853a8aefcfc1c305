//! Disk image backends behind one trait: raw files (and block devices) with positioned
//! reads and writes, and qcow2 through the `imago` crate (by QEMU's block-layer
//! maintainers; built with its `sync` feature, so every call is a plain blocking call in
//! the device's worker thread, no async runtime).
//!
//! `Disk::open` turns a `DiskConfig` into an open, locked image: it takes QEMU's image
//! locks (`lock`), checks the format against the file's first bytes, and refuses qcow2
//! features it cannot serve faithfully (backing files, external data files, unknown
//! incompatible features) with a message saying what to do.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use imago::file::File as ImagoFile;
use imago::format::drivers::FormatDriverInstance;
use imago::qcow2::Qcow2;
use imago::{DenyImplicitOpenGate, FormatAccess, FormatDriverBuilder, Mapping, StorageOpenOptions};
use nix::errno::Errno;
use nix::fcntl::{fallocate, FallocateFlags};
use vm_memory::VolatileSlice;

use super::config::{DiskConfig, DiskFormat};
use super::lock::{ImageLock, LockError};

/// The first bytes of every qcow2 image ("QFI\xfb"; qcow2 specification, "Header").
pub const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";
/// Offset and size of the qcow2 header's `backing_file_offset` field.
const QCOW2_BACKING_FILE_OFFSET: usize = 8;
/// The largest zero buffer written when the file system cannot zero a range by itself.
const ZERO_CHUNK: usize = 1 << 20;

/// What a disk image can do. Offsets and lengths are in bytes; the caller keeps every
/// access within `size()`.
pub trait DiskBackend: Send {
    /// The disk's size in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`.
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every completed write durable: after it returns, the data survives a host
    /// crash (fdatasync, and for qcow2 the metadata caches first).
    fn flush(&mut self) -> io::Result<()>;
    /// The guest no longer needs the range: free its space if the backend can. Contents
    /// afterwards are unspecified (virtio 1.2, 5.2.6.2: the device MAY deallocate).
    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()>;
    /// The range reads as zeroes afterwards; with `unmap` its space may be freed.
    fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> io::Result<()>;
    /// The size in bytes of the units the backend frees space in (a hint for the guest).
    fn discard_granularity(&self) -> u64;
    /// Reads straight into guest memory, when the backend can (a raw file: one `pread`
    /// into the guest's pages, no bounce buffer). `None`: it cannot; use `read_at`.
    fn read_into_guest(
        &mut self,
        _dst: &VolatileSlice<'_, ()>,
        _offset: u64,
    ) -> Option<io::Result<()>> {
        None
    }
    /// Writes straight from guest memory, when the backend can. `None`: use `write_at`.
    fn write_from_guest(
        &mut self,
        _src: &VolatileSlice<'_, ()>,
        _offset: u64,
    ) -> Option<io::Result<()>> {
        None
    }
}

/// Why a disk image could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cannot open disk image {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("disk image {path} is not a regular file or block device")]
    NotAFile { path: PathBuf },
    #[error("disk image {path}: {source}")]
    Lock {
        path: PathBuf,
        #[source]
        source: LockError,
    },
    #[error("disk image {path} is a {found} image but format={given} was given: drop format= or correct it")]
    FormatMismatch {
        path: PathBuf,
        given: DiskFormat,
        found: DiskFormat,
    },
    #[error(
        "disk image {path} has a backing file, which Vireo does not open; \
         make a standalone copy with `qemu-img convert -O qcow2 {path} NEW.qcow2`"
    )]
    Qcow2BackingFile { path: PathBuf },
    #[error(
        "disk image {path}: {source}; if it uses qcow2 features Vireo does not support, \
         convert it with `qemu-img convert -O qcow2 {path} NEW.qcow2`"
    )]
    Qcow2 {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("disk image {path} is smaller than one 512-byte sector")]
    Empty { path: PathBuf },
}

/// An open disk image, locked against other engines and QEMU while it lives.
pub struct Disk {
    backend: Box<dyn DiskBackend>,
    format: DiskFormat,
    read_only: bool,
    lock: Option<ImageLock>,
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disk")
            .field("format", &self.format)
            .field("read_only", &self.read_only)
            .field("size", &self.backend.size())
            .finish()
    }
}

impl Disk {
    /// Opens and locks the image `config` names.
    pub fn open(config: &DiskConfig) -> Result<Disk, DiskError> {
        let path = &config.path;
        let open_err = |source| DiskError::Open {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(!config.readonly)
            .open(path)
            .map_err(open_err)?;
        let file_type = file.metadata().map_err(open_err)?.file_type();
        if !(file_type.is_file() || file_type.is_block_device()) {
            return Err(DiskError::NotAFile { path: path.clone() });
        }
        // Lock before reading anything, so what we read is not changing under us.
        let lock =
            ImageLock::acquire(&file, !config.readonly).map_err(|source| DiskError::Lock {
                path: path.clone(),
                source,
            })?;

        let mut head = [0u8; 16];
        let found = match file.read_exact_at(&mut head, 0) {
            Ok(()) if head[..4] == QCOW2_MAGIC => DiskFormat::Qcow2,
            Ok(()) => DiskFormat::Raw,
            // Shorter than a qcow2 header: it can only be raw.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => DiskFormat::Raw,
            Err(e) => return Err(open_err(e)),
        };
        if let Some(given) = config.format {
            if given != found {
                return Err(DiskError::FormatMismatch {
                    path: path.clone(),
                    given,
                    found,
                });
            }
        }

        let backend: Box<dyn DiskBackend> = match found {
            DiskFormat::Raw => Box::new(RawDisk::new(file).map_err(open_err)?),
            DiskFormat::Qcow2 => {
                let backing = &head[QCOW2_BACKING_FILE_OFFSET..QCOW2_BACKING_FILE_OFFSET + 8];
                if backing.iter().any(|&b| b != 0) {
                    return Err(DiskError::Qcow2BackingFile { path: path.clone() });
                }
                file.seek(SeekFrom::Start(0)).map_err(open_err)?;
                Box::new(
                    Qcow2Disk::open(file, path, !config.readonly).map_err(|source| {
                        DiskError::Qcow2 {
                            path: path.clone(),
                            source,
                        }
                    })?,
                )
            }
        };
        if backend.size() < SECTOR_BYTES {
            return Err(DiskError::Empty { path: path.clone() });
        }
        Ok(Disk {
            backend,
            format: found,
            read_only: config.readonly,
            lock,
        })
    }

    /// A disk over any backend, unlocked (tests, fuzzing, images the caller locked).
    pub fn from_backend(
        backend: Box<dyn DiskBackend>,
        format: DiskFormat,
        read_only: bool,
    ) -> Disk {
        Disk {
            backend,
            format,
            read_only,
            lock: None,
        }
    }

    /// Lets another engine open and lock the image (see `ImageLock::release`).
    pub fn release_lock(&mut self) {
        if let Some(lock) = &mut self.lock {
            lock.release();
        }
    }

    /// Takes the image's lock again after `release_lock`.
    pub fn take_lock_again(&mut self) -> Result<(), super::lock::LockError> {
        match &mut self.lock {
            Some(lock) => lock.take_again(),
            None => Ok(()),
        }
    }

    pub fn format(&self) -> DiskFormat {
        self.format
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    pub fn size(&self) -> u64 {
        self.backend.size()
    }

    pub fn discard_granularity(&self) -> u64 {
        self.backend.discard_granularity()
    }

    pub fn backend(&mut self) -> &mut dyn DiskBackend {
        self.backend.as_mut()
    }
}

/// 512: the unit of `capacity` and of request sectors (virtio 1.2, 5.2.4, 5.2.6).
pub const SECTOR_BYTES: u64 = 512;

/// A raw image: the guest's bytes at the same offsets in a file or block device.
#[derive(Debug)]
pub struct RawDisk {
    file: File,
    size: u64,
}

impl RawDisk {
    /// Serves `file` (open for reading, and for writing unless the disk is read-only).
    pub fn new(mut file: File) -> io::Result<RawDisk> {
        // Seeking to the end also sizes block devices, whose metadata length is 0.
        let size = file.seek(SeekFrom::End(0))?;
        Ok(RawDisk { file, size })
    }

    fn fallocate(&self, flags: FallocateFlags, offset: u64, len: u64) -> Result<(), Errno> {
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(Errno::EINVAL);
        };
        fallocate(&self.file, flags, offset, len)
    }

    fn write_zero_buffers(&self, mut offset: u64, len: u64) -> io::Result<()> {
        let zeroes = vec![0u8; ZERO_CHUNK.min(len as usize)];
        let end = offset + len;
        while offset < end {
            let n = (end - offset).min(zeroes.len() as u64) as usize;
            self.file.write_all_at(&zeroes[..n], offset)?;
            offset += n as u64;
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Direction {
    Read,
    Write,
}

/// `pread`/`pwrite` between `file` at `offset` and a slice of guest memory, looping over
/// short transfers. Reading past the end of the file is an error (the caller checked the
/// range against the disk's size, so it means the file shrank under us).
fn positional_io(
    file: &File,
    slice: &VolatileSlice<'_, ()>,
    offset: u64,
    direction: Direction,
) -> io::Result<()> {
    let guard = slice.ptr_guard_mut();
    let base = guard.as_ptr();
    let len = slice.len();
    let mut done = 0usize;
    while done < len {
        let at = i64::try_from(offset + done as u64)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: `base..base + len` is guest memory that `slice` describes and `guard`
        // keeps mapped for this call; the kernel reads or writes at most `len - done`
        // bytes from `base + done`. Guest memory may change under us (the guest owns
        // it), which is fine for a byte copy done by the kernel.
        let n = unsafe {
            match direction {
                Direction::Read => {
                    libc::pread(file.as_raw_fd(), base.add(done).cast(), len - done, at)
                }
                Direction::Write => {
                    libc::pwrite(file.as_raw_fd(), base.add(done).cast(), len - done, at)
                }
            }
        };
        match n {
            0 => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            n if n < 0 => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            n => done += n as usize,
        }
    }
    Ok(())
}

/// File systems without hole punching or zero ranges answer these; anything else is a
/// real error.
fn is_unsupported(e: Errno) -> bool {
    matches!(e, Errno::EOPNOTSUPP | Errno::ENOSYS | Errno::ENODEV)
}

impl DiskBackend for RawDisk {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn read_into_guest(
        &mut self,
        dst: &VolatileSlice<'_, ()>,
        offset: u64,
    ) -> Option<io::Result<()>> {
        Some(positional_io(&self.file, dst, offset, Direction::Read))
    }

    fn write_from_guest(
        &mut self,
        src: &VolatileSlice<'_, ()>,
        offset: u64,
    ) -> Option<io::Result<()>> {
        Some(positional_io(&self.file, src, offset, Direction::Write))
    }

    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        // KEEP_SIZE: punching the tail must not shrink the disk.
        match self.fallocate(
            FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        ) {
            Ok(()) => Ok(()),
            // A discard is a hint: a file system that cannot free space just keeps it.
            Err(e) if is_unsupported(e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        // A punched hole reads as zeroes on every file system that can punch one.
        let flags = if unmap {
            FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE
        } else {
            FallocateFlags::FALLOC_FL_ZERO_RANGE | FallocateFlags::FALLOC_FL_KEEP_SIZE
        };
        match self.fallocate(flags, offset, len) {
            Ok(()) => Ok(()),
            Err(e) if is_unsupported(e) => self.write_zero_buffers(offset, len),
            Err(e) => Err(e.into()),
        }
    }

    fn discard_granularity(&self) -> u64 {
        // The page size is what every Linux file system punches holes in at least.
        4096
    }
}

/// A qcow2 image (version 2 or 3) through imago.
pub struct Qcow2Disk {
    image: FormatAccess<ImagoFile>,
    cluster_size: u64,
}

impl std::fmt::Debug for Qcow2Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2Disk")
            .field("size", &self.image.size())
            .field("cluster_size", &self.cluster_size)
            .finish()
    }
}

impl Qcow2Disk {
    /// Opens the qcow2 image in `file` (`path` is for messages and relative names).
    /// Images that reference other files (a backing file, an external data file) are
    /// refused: following such references would open files the user never named.
    pub fn open(file: File, path: &Path, writable: bool) -> io::Result<Qcow2Disk> {
        let storage = ImagoFile::from_open_file(
            file,
            StorageOpenOptions::new().write(writable).filename(path),
        )?;
        let qcow2 = Qcow2::<ImagoFile>::builder(storage)
            .write(writable)
            .open(DenyImplicitOpenGate::default())?;
        // qcow2 v3 zeroes and frees whole clusters; v2 images have no zero clusters and
        // report none, and 64 KiB is qemu-img's default cluster size.
        let cluster_size = qcow2.zero_granularity().unwrap_or(64 << 10);
        let disk = Qcow2Disk {
            image: FormatAccess::new(qcow2),
            cluster_size,
        };
        if writable {
            disk.create_l2_tables()?;
        }
        Ok(disk)
    }

    /// Gives every part of the disk its L2 table before the guest runs.
    ///
    /// Why: when imago allocates an L2 table it writes the L1 entry at once, while the
    /// new table's refcount may still sit in its refblock cache; an engine killed in
    /// between leaves an L1 entry pointing at a cluster with refcount 0, which
    /// `qemu-img check` calls corruption. Data-cluster allocations only change cached L2
    /// entries and refblocks, which imago writes back refblocks first. So with every L2
    /// table made here (and flushed), a `kill -9` can at worst leak clusters.
    /// Cost: one cluster per L2 table (with 64 KiB clusters, 64 KiB per 512 MiB of disk).
    fn create_l2_tables(&self) -> io::Result<()> {
        let size = self.image.size();
        let l2_coverage = self.cluster_size * (self.cluster_size / 8);
        let mut offset = 0;
        let mut created = false;
        while offset < size {
            let (mapping, _) = self.image.get_mapping(offset, self.cluster_size)?;
            if let Mapping::Zero {
                explicit: false, ..
            } = mapping
            {
                // An explicit zero cluster reads the same as an unallocated one (there
                // is no backing file) but needs the L2 table to exist.
                let len = self.cluster_size.min(size - offset);
                match self.image.write_zeroes(offset, len) {
                    Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                        // Version 2 images have no zero clusters: allocate one of zeroes.
                        self.image.write(&vec![0u8; len as usize], offset)?;
                    }
                    other => other?,
                }
                created = true;
            }
            offset += l2_coverage;
        }
        if created {
            self.image.flush()?;
            self.image.sync()?;
        }
        Ok(())
    }
}

impl DiskBackend for Qcow2Disk {
    fn size(&self) -> u64 {
        self.image.size()
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.image.read(buf, offset)
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.image.write(buf, offset)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Write back imago's L2/refcount caches, then make the file durable.
        self.image.flush()?;
        self.image.sync()
    }

    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        match self.image.discard_to_any(offset, len) {
            Err(e) if e.kind() == io::ErrorKind::Unsupported => Ok(()),
            other => other,
        }
    }

    fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        let result = if unmap {
            // Frees whole clusters and zeroes the partial ones at either end.
            self.image.discard_to_zero(offset, len)
        } else {
            // Zero clusters where possible, written zeroes elsewhere.
            self.image.write_zeroes(offset, len)
        };
        match result {
            // Version 2 images have no zero clusters: write the zeroes out.
            Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                let zeroes = vec![0u8; ZERO_CHUNK.min(len as usize)];
                let end = offset + len;
                let mut at = offset;
                while at < end {
                    let n = (end - at).min(zeroes.len() as u64) as usize;
                    self.image.write(&zeroes[..n], at)?;
                    at += n as u64;
                }
                Ok(())
            }
            other => other,
        }
    }

    fn discard_granularity(&self) -> u64 {
        self.cluster_size
    }
}

#[cfg(test)]
mod tests {
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use vmm_sys_util::tempfile::TempFile;

    use super::super::test_support::{qcow2_image, qemu_img, raw_image};
    use super::*;

    fn config(path: &Path, format: Option<DiskFormat>, readonly: bool) -> DiskConfig {
        DiskConfig {
            path: path.to_owned(),
            format,
            readonly,
            id: None,
            limits: Default::default(),
        }
    }

    fn qemu_io(args: &[&str], path: &Path) {
        // Another test of this process forking (qemu-img) may briefly hold a copy of a
        // descriptor we just closed, and with it the image's lock: wait that out.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let out = Command::new("qemu-io")
                .args(args)
                .arg(path)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            if stderr.contains("Failed to get") && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(20));
                continue;
            }
            assert!(
                out.status.success() && stderr.is_empty(),
                "qemu-io {args:?}: {stderr}"
            );
            return;
        }
    }

    fn convert_to_raw(path: &Path) -> Vec<u8> {
        let out = TempFile::new().unwrap();
        let status = Command::new("qemu-img")
            .args(["convert", "-U", "-f", "qcow2", "-O", "raw"])
            .arg(path)
            .arg(out.as_path())
            .output()
            .unwrap();
        assert!(status.status.success());
        std::fs::read(out.as_path()).unwrap()
    }

    #[test]
    fn qcow2_written_by_us_is_clean_for_qemu_img() {
        for options in [
            &["-o", "compat=1.1"][..],
            &["-o", "compat=0.10"],
            &["-o", "cluster_size=4096"],
        ] {
            let img = TempFile::new().unwrap();
            let mut args = vec!["create", "-q", "-f", "qcow2"];
            args.extend_from_slice(options);
            qemu_img(&args, img.as_path(), Some(8 << 20));

            let mut model = vec![0u8; 8 << 20];
            let mut disk =
                Disk::open(&config(img.as_path(), Some(DiskFormat::Qcow2), false)).unwrap();
            assert_eq!((disk.format(), disk.size()), (DiskFormat::Qcow2, 8 << 20));
            // Writes inside one cluster, across cluster boundaries, at the end.
            for (offset, len, byte) in [
                (0u64, 512usize, 1u8),
                (65536 - 1024, 4096, 2),
                (3 << 20, 200 << 10, 3),
                ((8 << 20) - 512, 512, 4),
            ] {
                let buf = vec![byte; len];
                disk.backend().write_at(&buf, offset).unwrap();
                model[offset as usize..offset as usize + len].copy_from_slice(&buf);
            }
            // Zeroes, with and without unmap, and a discard that only frees whole
            // clusters (so the model keeps what it cannot promise).
            disk.backend()
                .write_zeroes(3 << 20, 64 << 10, false)
                .unwrap();
            model[3 << 20..(3 << 20) + (64 << 10)].fill(0);
            disk.backend()
                .write_zeroes((3 << 20) + (64 << 10), 64 << 10, true)
                .unwrap();
            model[(3 << 20) + (64 << 10)..(3 << 20) + (128 << 10)].fill(0);
            let mut back = vec![0u8; 8 << 20];
            disk.backend().read_at(&mut back, 0).unwrap();
            assert!(back == model, "{options:?}: our read-back differs");
            disk.backend().flush().unwrap();
            drop(disk);

            let check = qemu_img(&["check"], img.as_path(), None);
            assert!(
                String::from_utf8_lossy(&check.stdout).contains("No errors were found"),
                "{options:?}: {}",
                String::from_utf8_lossy(&check.stdout)
            );
            assert!(
                convert_to_raw(img.as_path()) == model,
                "{options:?}: qemu-img sees other data"
            );
        }
    }

    #[test]
    fn qcow2_written_by_qemu_reads_back() {
        let img = qcow2_image(4 << 20);
        qemu_io(
            &[
                "-c",
                "write -P 0x61 0 64k",
                "-c",
                "write -P 0x62 1000k 8k",
                "-c",
                "write -z 0 4k",
                "-c",
                "write -P 0x63 4092k 4k",
            ],
            img.as_path(),
        );
        let mut expected = vec![0u8; 4 << 20];
        expected[4 << 10..64 << 10].fill(0x61);
        expected[1000 << 10..1008 << 10].fill(0x62);
        expected[4092 << 10..].fill(0x63);
        let mut disk = Disk::open(&config(img.as_path(), None, true)).unwrap();
        let mut back = vec![0u8; 4 << 20];
        disk.backend().read_at(&mut back, 0).unwrap();
        assert!(back == expected);

        // A compressed image (zlib clusters) reads the same.
        let compressed = TempFile::new().unwrap();
        let status = Command::new("qemu-img")
            .args(["convert", "-c", "-O", "qcow2"])
            .arg(img.as_path())
            .arg(compressed.as_path())
            .output()
            .unwrap();
        assert!(status.status.success());
        let mut disk = Disk::open(&config(compressed.as_path(), None, true)).unwrap();
        back.fill(0xee);
        disk.backend().read_at(&mut back, 0).unwrap();
        assert!(back == expected);
    }

    #[test]
    fn format_detection_and_mismatch() {
        let raw = raw_image(1 << 20);
        let qcow2 = qcow2_image(1 << 20);
        assert_eq!(
            Disk::open(&config(raw.as_path(), None, true))
                .unwrap()
                .format(),
            DiskFormat::Raw
        );
        assert_eq!(
            Disk::open(&config(qcow2.as_path(), None, true))
                .unwrap()
                .format(),
            DiskFormat::Qcow2
        );
        let err = Disk::open(&config(raw.as_path(), Some(DiskFormat::Qcow2), true)).unwrap_err();
        assert!(
            matches!(
                err,
                DiskError::FormatMismatch {
                    found: DiskFormat::Raw,
                    ..
                }
            ),
            "{err}"
        );
        let err = Disk::open(&config(qcow2.as_path(), Some(DiskFormat::Raw), true)).unwrap_err();
        assert!(
            err.to_string()
                .contains("is a qcow2 image but format=raw was given"),
            "{err}"
        );
    }

    #[test]
    fn unusable_images_are_refused_with_what_to_do() {
        // A backing file.
        let base = qcow2_image(1 << 20);
        let overlay = TempFile::new().unwrap();
        let status = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(base.as_path())
            .arg(overlay.as_path())
            .output()
            .unwrap();
        assert!(status.status.success());
        let err = Disk::open(&config(overlay.as_path(), None, false)).unwrap_err();
        assert!(matches!(err, DiskError::Qcow2BackingFile { .. }), "{err}");
        assert!(err.to_string().contains("qemu-img convert"), "{err}");

        // A qcow2 image with an unknown incompatible feature bit (bit 63).
        let odd = qcow2_image(1 << 20);
        odd.as_file().write_all_at(&[0x80], 72).unwrap();
        let err = Disk::open(&config(odd.as_path(), None, false)).unwrap_err();
        assert!(matches!(err, DiskError::Qcow2 { .. }), "{err}");

        // Missing, a directory, empty.
        let err = Disk::open(&config(Path::new("/nonexistent/x.img"), None, false)).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/x.img"), "{err}");
        let err = Disk::open(&config(Path::new("/tmp"), None, true)).unwrap_err();
        assert!(matches!(err, DiskError::NotAFile { .. }), "{err}");
        let empty = raw_image(100);
        let err = Disk::open(&config(empty.as_path(), None, false)).unwrap_err();
        assert!(matches!(err, DiskError::Empty { .. }), "{err}");
    }

    #[test]
    fn raw_zeroes_and_discards_keep_the_size() {
        let img = raw_image(1 << 20);
        let mut disk = Disk::open(&config(img.as_path(), Some(DiskFormat::Raw), false)).unwrap();
        disk.backend().write_at(&[9u8; 8192], 0).unwrap();
        disk.backend().write_zeroes(0, 4096, false).unwrap();
        disk.backend().discard((1 << 20) - 4096, 4096).unwrap();
        let mut back = [0xffu8; 8192];
        disk.backend().read_at(&mut back, 0).unwrap();
        assert_eq!(&back[..4096], &[0; 4096][..]);
        assert_eq!(&back[4096..], &[9; 4096][..]);
        assert_eq!(img.as_file().metadata().unwrap().len(), 1 << 20);
        // Past the end is an error, not a short read.
        assert!(disk.backend().read_at(&mut back, (1 << 20) - 512).is_err());
    }

    /// A QEMU virtual machine (created, never started: `-S`) with `path` as its
    /// virtio-blk disk, the way a user runs an image; killed when dropped.
    struct QemuVm(Child);

    impl QemuVm {
        fn command(path: &Path, format: DiskFormat, read_only: bool) -> Command {
            let mut cmd = Command::new("qemu-system-x86_64");
            cmd.args([
                "-S",
                "-M",
                "q35",
                "-accel",
                "tcg",
                "-nodefaults",
                "-display",
                "none",
            ])
            .args(["-monitor", "none", "-serial", "none", "-drive"])
            .arg(format!(
                "file={},format={format},if=none,id=d0,readonly={}",
                path.display(),
                if read_only { "on" } else { "off" }
            ))
            .args(["-device", "virtio-blk-pci,drive=d0"]);
            cmd
        }

        fn start(path: &Path, format: DiskFormat, read_only: bool) -> Self {
            wait_until_free(path);
            let child = Self::command(path, format, read_only)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("qemu-system-x86_64 (Debian package qemu-system-x86)");
            QemuVm(child)
        }
    }

    impl Drop for QemuVm {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// Runs QEMU on `path` (it must fail to open it); returns its error output.
    fn qemu_refusal(path: &Path, format: DiskFormat, read_only: bool) -> String {
        let out = QemuVm::command(path, format, read_only)
            .arg("-no-shutdown")
            .args(["-action", "reboot=shutdown"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "QEMU opened an image we run");
        stderr
    }

    /// Waits until a QEMU started on `path` has taken all its locks (QEMU takes them in
    /// steps while it starts), then returns why we cannot open the image.
    /// Waits out copies of a Disk we just dropped: a concurrent test's fork holds a copy
    /// of its fd, and so its locks, until the child execs. Under load that can outlast
    /// QEMU's start, which then fails, or (its locks read as QEMU's) fools
    /// `wait_until_held`.
    fn wait_until_free(path: &Path) {
        let file = File::open(path).unwrap();
        let start = Instant::now();
        while super::super::lock::in_use_by_others(&file).unwrap() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{path:?} stayed locked after its Disk was dropped"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn wait_until_held(path: &Path, readonly: bool, qemu_writes: bool) -> DiskError {
        use super::super::lock::{is_locked_by_others, RAW_LOCK_PERM_BASE, RAW_LOCK_SHARED_BASE};
        let file = File::open(path).unwrap();
        // Byte 201: "does not share write", which every QEMU VM takes; byte 101:
        // "writes", which a writable one takes.
        let mut bytes = vec![RAW_LOCK_SHARED_BASE + 1];
        if qemu_writes {
            bytes.push(RAW_LOCK_PERM_BASE + 1);
        }
        let start = Instant::now();
        // Only look: taking a lock, even briefly, would make QEMU fail to start.
        while !bytes
            .iter()
            .all(|&b| is_locked_by_others(&file, b).unwrap())
        {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "QEMU never locked {path:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Disk::open(&config(path, None, readonly)).expect_err("opened an image QEMU runs")
    }

    #[test]
    fn qemu_refuses_images_we_run() {
        for (make, format) in [
            (raw_image as fn(u64) -> TempFile, DiskFormat::Raw),
            (qcow2_image, DiskFormat::Qcow2),
        ] {
            let img = make(1 << 20);
            let disk = Disk::open(&config(img.as_path(), None, false)).unwrap();
            // A QEMU VM, writable or read-only, and qemu-io.
            let stderr = qemu_refusal(img.as_path(), format, false);
            assert!(stderr.contains("Failed to get \"write\" lock"), "{stderr}");
            let stderr = qemu_refusal(img.as_path(), format, true);
            assert!(
                stderr.contains("Failed to get shared \"write\" lock"),
                "{stderr}"
            );
            let out = Command::new("qemu-io")
                .args(["-f", format.name(), "-c", "read 0 512"])
                .arg(img.as_path())
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains("Failed to get \"write\" lock"), "{stderr}");
            if format == DiskFormat::Qcow2 {
                // qemu-img info reads qcow2 metadata: refused too (for raw it reads
                // nothing and QEMU lets it through even for its own VMs).
                let out = Command::new("qemu-img")
                    .arg("info")
                    .arg(img.as_path())
                    .output()
                    .unwrap();
                let stderr = String::from_utf8_lossy(&out.stderr);
                assert!(
                    stderr.contains("Failed to get shared \"write\" lock"),
                    "{stderr}"
                );
            }
            drop(disk);
            qemu_io(&["-f", format.name(), "-c", "read 0 512"], img.as_path());

            // Read-only: QEMU may read along, but not write.
            let disk = Disk::open(&config(img.as_path(), None, true)).unwrap();
            qemu_io(
                &["-r", "-f", format.name(), "-c", "read 0 512"],
                img.as_path(),
            );
            let stderr = qemu_refusal(img.as_path(), format, false);
            assert!(stderr.contains("Failed to get \"write\" lock"), "{stderr}");
            drop(disk);
        }
    }

    #[test]
    fn we_refuse_images_qemu_runs() {
        for (make, format) in [
            (raw_image as fn(u64) -> TempFile, DiskFormat::Raw),
            (qcow2_image, DiskFormat::Qcow2),
        ] {
            let img = make(1 << 20);
            let qemu = QemuVm::start(img.as_path(), format, false);
            let err = wait_until_held(img.as_path(), true, true);
            assert!(
                matches!(
                    err,
                    DiskError::Lock {
                        source: LockError::Busy("write"),
                        ..
                    }
                ),
                "{err}"
            );
            assert!(Disk::open(&config(img.as_path(), None, false)).is_err());
            drop(qemu);
            drop(Disk::open(&config(img.as_path(), None, false)).unwrap());

            // A read-only QEMU VM: we may read along, not write.
            let qemu = QemuVm::start(img.as_path(), format, true);
            let err = wait_until_held(img.as_path(), false, false);
            assert!(matches!(err, DiskError::Lock { .. }), "{err}");
            Disk::open(&config(img.as_path(), None, true)).unwrap();
            drop(qemu);
        }
    }
}
