//! A writer for "newc" cpio archives (`070701`), the format the Linux kernel unpacks as
//! an initramfs (Documentation/driver-api/early-userspace/buffer-format.rst).
//!
//! Each entry is a 110-byte ASCII header (the magic and thirteen 8-digit hex fields), the
//! NUL-terminated name padded to a multiple of four bytes, then the data padded likewise.
//! The archive ends with an entry named `TRAILER!!!`. The kernel needs no parent
//! directory to come before a file, but we write them first anyway, as `cpio` does.

use std::io::{self, Write};

/// `S_IFMT` file types, as stored in the header's `mode` field.
pub const S_IFDIR: u32 = 0o040_000;
pub const S_IFREG: u32 = 0o100_000;
pub const S_IFLNK: u32 = 0o120_000;
pub const S_IFCHR: u32 = 0o020_000;

const MAGIC: &[u8; 6] = b"070701";
const TRAILER: &str = "TRAILER!!!";
const HEADER_LEN: usize = 110;

#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    #[error("cpio entry name {0:?} is empty, absolute or has a NUL byte")]
    BadName(String),
    #[error("cpio entry {name:?} is {len} bytes, more than the format's 4 GiB")]
    TooLarge { name: String, len: usize },
    #[error("writing the cpio archive")]
    Io(#[from] io::Error),
}

/// Writes a newc archive entry by entry; call [`CpioWriter::finish`] to add the trailer.
pub struct CpioWriter<W: Write> {
    out: W,
    written: u64,
    next_ino: u32,
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> Self {
        CpioWriter {
            out,
            written: 0,
            // Inode 0 is avoided: some readers treat it as "no inode".
            next_ino: 1,
        }
    }

    /// A directory; `name` is relative ("usr/bin"), as in every initramfs.
    pub fn dir(&mut self, name: &str, perm: u32) -> Result<(), CpioError> {
        self.entry(name, S_IFDIR | perm, 2, (0, 0), b"")
    }

    /// A regular file with `data` as its contents.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> Result<(), CpioError> {
        self.entry(name, S_IFREG | perm, 1, (0, 0), data)
    }

    /// A symbolic link to `target`.
    pub fn symlink(&mut self, name: &str, target: &str) -> Result<(), CpioError> {
        self.entry(name, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes())
    }

    /// A character device node with the given major and minor numbers.
    pub fn char_device(
        &mut self,
        name: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), CpioError> {
        self.entry(name, S_IFCHR | perm, 1, (major, minor), b"")
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> Result<(), CpioError> {
        if name.is_empty() || name.starts_with('/') || name.contains('\0') {
            return Err(CpioError::BadName(name.to_owned()));
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.raw_entry(name, ino, mode, nlink, rdev, data)
    }

    fn raw_entry(
        &mut self,
        name: &str,
        ino: u32,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> Result<(), CpioError> {
        let too_large = |len| CpioError::TooLarge {
            name: name.to_owned(),
            len,
        };
        let filesize = u32::try_from(data.len()).map_err(|_| too_large(data.len()))?;
        let namesize = u32::try_from(name.len() + 1).map_err(|_| too_large(name.len()))?;
        // ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor
        // namesize check: all 8 hex digits. mtime 0 keeps the image reproducible.
        let fields = [
            ino, mode, 0, 0, nlink, 0, filesize, 0, 0, rdev.0, rdev.1, namesize, 0,
        ];
        let mut header = Vec::with_capacity(HEADER_LEN + name.len() + 4);
        header.extend_from_slice(MAGIC);
        for field in fields {
            header.extend_from_slice(format!("{field:08X}").as_bytes());
        }
        header.extend_from_slice(name.as_bytes());
        header.push(0);
        self.write(&header)?;
        self.pad()?;
        self.write(data)?;
        self.pad()
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), CpioError> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> Result<(), CpioError> {
        let pad = (4 - (self.written % 4) as usize) % 4;
        self.write(&[0; 3][..pad])
    }

    /// Writes the trailer entry and returns the underlying writer.
    pub fn finish(mut self) -> Result<W, CpioError> {
        self.raw_entry(TRAILER, 0, 0, 1, (0, 0), b"")?;
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    /// One entry read back: (name, mode, rdev major, rdev minor, data).
    pub(crate) type Entry = (String, u32, u32, u32, Vec<u8>);

    /// A minimal newc reader, for the round trip.
    pub(crate) fn read_archive(mut buf: &[u8]) -> Vec<Entry> {
        let mut entries = Vec::new();
        let mut offset = 0usize;
        let align = |n: usize| n.div_ceil(4) * 4;
        loop {
            assert_eq!(&buf[..6], MAGIC, "bad magic at offset {offset}");
            let field = |i: usize| {
                let s = std::str::from_utf8(&buf[6 + i * 8..6 + (i + 1) * 8]).unwrap();
                u32::from_str_radix(s, 16).unwrap() as usize
            };
            let (mode, filesize, rmaj, rmin, namesize) =
                (field(1), field(6), field(9), field(10), field(11));
            let name_end = HEADER_LEN + namesize;
            let name = std::str::from_utf8(&buf[HEADER_LEN..name_end - 1])
                .unwrap()
                .to_owned();
            assert_eq!(buf[name_end - 1], 0);
            let data_start = align(offset + name_end) - offset;
            let data = buf[data_start..data_start + filesize].to_vec();
            let next = align(offset + data_start + filesize) - offset;
            offset += next;
            buf = &buf[next..];
            if name == TRAILER {
                assert!(buf.is_empty());
                return entries;
            }
            entries.push((name, mode as u32, rmaj as u32, rmin as u32, data));
        }
    }

    fn sample() -> Vec<u8> {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("bin", 0o755).unwrap();
        w.file("bin/busybox", 0o755, b"\x7fELF pretend").unwrap();
        w.symlink("bin/sh", "busybox").unwrap();
        w.dir("dev", 0o755).unwrap();
        w.char_device("dev/console", 0o600, 5, 1).unwrap();
        w.file("init", 0o755, b"#!/bin/sh\necho hi\n").unwrap();
        w.file("empty", 0o644, b"").unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn round_trip() {
        let archive = sample();
        assert_eq!(archive.len() % 4, 0);
        let entries = read_archive(&archive);
        let names: Vec<_> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/busybox",
                "bin/sh",
                "dev",
                "dev/console",
                "init",
                "empty"
            ]
        );
        assert_eq!(entries[1].1, S_IFREG | 0o755);
        assert_eq!(entries[1].4, b"\x7fELF pretend");
        assert_eq!(entries[2].1, S_IFLNK | 0o777);
        assert_eq!(entries[2].4, b"busybox");
        assert_eq!(
            (entries[4].1, entries[4].2, entries[4].3),
            (S_IFCHR | 0o600, 5, 1)
        );
        assert_eq!(entries[5].4, b"#!/bin/sh\necho hi\n");
        assert!(entries[6].4.is_empty());
    }

    #[test]
    fn rejects_bad_names() {
        let mut w = CpioWriter::new(Vec::new());
        assert!(matches!(
            w.file("/abs", 0o644, b""),
            Err(CpioError::BadName(_))
        ));
        assert!(matches!(w.file("", 0o644, b""), Err(CpioError::BadName(_))));
        assert!(matches!(
            w.file("a\0b", 0o644, b""),
            Err(CpioError::BadName(_))
        ));
    }

    /// GNU cpio (Debian's `cpio` package) lists and extracts what we wrote.
    #[test]
    fn gnu_cpio_reads_it() {
        if Command::new("cpio").arg("--version").output().is_err() {
            println!("skipped: GNU cpio not installed (apt-get install cpio)");
            return;
        }
        let dir = std::env::temp_dir().join(format!("vireo-cpio-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let run = |args: &[&str]| {
            let mut child = Command::new("cpio")
                .args(args)
                .current_dir(&dir)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(&sample()).unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        };
        let listed = run(&["-t", "--quiet"]);
        assert_eq!(
            listed.lines().collect::<Vec<_>>(),
            [
                "bin",
                "bin/busybox",
                "bin/sh",
                "dev",
                "dev/console",
                "init",
                "empty"
            ]
        );
        // Extract everything but the device node (mknod needs privileges some hosts lack).
        run(&[
            "-i",
            "--quiet",
            "-d",
            "--no-absolute-filenames",
            "init",
            "bin/*",
        ]);
        assert_eq!(
            std::fs::read(dir.join("init")).unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
        assert_eq!(
            std::fs::read_link(dir.join("bin/sh")).unwrap().to_str(),
            Some("busybox")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
