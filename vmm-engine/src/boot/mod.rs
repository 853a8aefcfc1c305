//! Direct kernel boot: recognise the kernel, load it, its initrd and command line into
//! guest memory, and say how the boot vCPU must start.
//!
//! Two formats: an ELF with Xen's PVH entry note (`vmlinux`, the probe guest, any PVH
//! kernel) and a Linux bzImage (64-bit boot protocol). Both get the same memory map
//! (`x86_64::layout::memory_map`) and find the ACPI tables through the RSDP.

mod bzimage;
mod pvh;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::x86_64::layout::{self, CMDLINE_MAX_SIZE, CMDLINE_START};
use crate::x86_64::regs::EntryMode;

/// What the kernel command line starts with; the user's `--cmdline` is appended.
/// ttyS0 is our 16550; `panic=1` turns a kernel panic into a reboot (a distinct exit
/// code) instead of a hang. (No i8042 options: the FADT says there is no 8042, so the
/// kernel does not probe for a keyboard controller.)
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 panic=1";

/// What to boot.
#[derive(Debug, Clone)]
pub struct BootSource {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
}

/// The kernel formats we boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// ELF with a PVH entry note.
    PvhElf,
    /// Linux bzImage.
    BzImage,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read kernel {path}: {source}")]
    KernelUnreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is not a kernel: expected a Linux bzImage or an ELF with a PVH entry note")]
    NotAKernel(PathBuf),
    #[error("{0} is an ELF file but not a kernel (a 64-bit x86 executable linked at fixed addresses); pass a vmlinux or a bzImage")]
    ElfNotAKernel(PathBuf),
    #[error("{0} is an ELF file but has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); boot its bzImage instead, or a kernel built with CONFIG_PVH=y")]
    NoPvhNote(PathBuf),
    #[error("{path} is a bzImage too old or not 64-bit (boot protocol {version:#x}, 2.12+ with a 64-bit entry needed)")]
    OldBzImage { path: PathBuf, version: u16 },
    #[error("loading kernel {path}: {detail}")]
    Load { path: PathBuf, detail: String },
    #[error("cannot read initrd {path}: {source}")]
    InitrdUnreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("initrd {path} ({size} bytes) does not fit in guest memory below {limit:#x}: give the VM more memory")]
    InitrdTooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("kernel command line is {0} bytes; at most {max} fit", max = CMDLINE_MAX_SIZE - 1)]
    CmdlineTooLong(usize),
    #[error("writing boot data to guest memory: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
}

/// Looks at the first bytes of `path` to tell which format it is.
pub fn detect_format(path: &Path) -> Result<KernelFormat, Error> {
    let unreadable = |source| Error::KernelUnreadable {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(unreadable)?;
    let mut head = vec![0u8; 0x210];
    let n = read_up_to(&mut file, &mut head).map_err(unreadable)?;
    head.truncate(n);
    if head.starts_with(b"\x7fELF") {
        check_elf_kernel(path, &head)?;
        Ok(KernelFormat::PvhElf)
    } else if head.len() >= 0x206 && &head[0x202..0x206] == b"HdrS" {
        Ok(KernelFormat::BzImage)
    } else {
        Err(Error::NotAKernel(path.to_owned()))
    }
}

/// ELF header fields (System V ABI, "ELF Header").
const EI_CLASS: usize = 4;
const ELFCLASS64: u8 = 2;
const E_TYPE: usize = 16;
const E_MACHINE: usize = 18;
const ET_EXEC: u16 = 2;
const EM_X86_64: u16 = 62;

/// A bootable ELF is a 64-bit x86 executable linked at fixed addresses; a program such
/// as /bin/true (position-independent, ET_DYN) is not a kernel.
fn check_elf_kernel(path: &Path, head: &[u8]) -> Result<(), Error> {
    let u16_at = |off: usize| {
        head.get(off..off + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let is_kernel = head.get(EI_CLASS) == Some(&ELFCLASS64)
        && u16_at(E_TYPE) == Some(ET_EXEC)
        && u16_at(E_MACHINE) == Some(EM_X86_64);
    if is_kernel {
        Ok(())
    } else {
        Err(Error::ElfNotAKernel(path.to_owned()))
    }
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Loads `source` into `mem` (a VM of `mem_size` bytes) and returns how the boot vCPU
/// starts. The ACPI tables must already be at `layout::RSDP_START`.
pub fn load(mem: &GuestMemoryMmap, mem_size: u64, source: &BootSource) -> Result<EntryMode, Error> {
    let cmdline = full_cmdline(&source.cmdline);
    if cmdline.len() >= CMDLINE_MAX_SIZE {
        return Err(Error::CmdlineTooLong(cmdline.len()));
    }
    let mut bytes = cmdline.into_bytes();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_START))?;
    match detect_format(&source.kernel)? {
        KernelFormat::PvhElf => pvh::load(mem, mem_size, source, bytes.len()),
        KernelFormat::BzImage => bzimage::load(mem, mem_size, source, bytes.len()),
    }
}

/// The default command line with the user's appended.
pub fn full_cmdline(user: &str) -> String {
    let user = user.trim();
    if user.is_empty() {
        DEFAULT_CMDLINE.to_owned()
    } else {
        format!("{DEFAULT_CMDLINE} {user}")
    }
}

/// Where an initrd was put.
struct InitrdPlacement {
    addr: u64,
    size: u64,
}

/// Reads the initrd into the top of low RAM (below `max_addr`), page-aligned, where the
/// kernel will not decompress over it.
fn load_initrd(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    path: &Path,
    max_addr: u64,
) -> Result<InitrdPlacement, Error> {
    let unreadable = |source| Error::InitrdUnreadable {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(unreadable)?;
    let size = file.metadata().map_err(unreadable)?.len();
    let limit = layout::low_ram_end(mem_size).min(max_addr);
    let too_large = || Error::InitrdTooLarge {
        path: path.to_owned(),
        size,
        limit,
    };
    let addr = limit.checked_sub(size).ok_or_else(too_large)? & !0xfff;
    // Leave the first 16 MiB to the kernel image and its decompression.
    if addr < 16 << 20 {
        return Err(too_large());
    }
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(Error::GuestMemory)?;
    Ok(InitrdPlacement { addr, size })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn temp_file(bytes: &[u8]) -> (tempfile_path::TempPath, PathBuf) {
        let t = tempfile_path::TempPath::new();
        std::fs::File::create(&t.0)
            .unwrap()
            .write_all(bytes)
            .unwrap();
        let p = t.0.clone();
        (t, p)
    }

    /// A self-deleting temp path, to keep the dependency list short.
    mod tempfile_path {
        pub struct TempPath(pub std::path::PathBuf);
        impl TempPath {
            pub fn new() -> Self {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let n = N.fetch_add(1, Ordering::Relaxed);
                Self(
                    std::env::temp_dir()
                        .join(format!("vireo-boot-test-{}-{n}", std::process::id())),
                )
            }
        }
        impl Drop for TempPath {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn detects_formats_and_rejects_other_files() {
        let mut exec = vec![0u8; 64];
        exec[..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
        exec[E_TYPE] = ET_EXEC as u8;
        exec[E_MACHINE] = EM_X86_64 as u8;
        let (_a, elf) = temp_file(&exec);
        assert_eq!(detect_format(&elf).unwrap(), KernelFormat::PvhElf);
        exec[E_TYPE] = 3; // ET_DYN: a position-independent program
        let (_p, pie) = temp_file(&exec);
        assert!(matches!(detect_format(&pie), Err(Error::ElfNotAKernel(_))));
        let mut bz = vec![0u8; 0x400];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        let (_b, bz) = temp_file(&bz);
        assert_eq!(detect_format(&bz).unwrap(), KernelFormat::BzImage);
        let (_c, text) = temp_file(b"#!/bin/sh\necho hi\n");
        assert!(matches!(detect_format(&text), Err(Error::NotAKernel(_))));
        let missing = PathBuf::from("/nonexistent/vmlinuz");
        assert!(matches!(
            detect_format(&missing),
            Err(Error::KernelUnreadable { .. })
        ));
    }

    #[test]
    fn user_cmdline_is_appended() {
        assert_eq!(full_cmdline(""), DEFAULT_CMDLINE);
        assert_eq!(full_cmdline(" quiet "), format!("{DEFAULT_CMDLINE} quiet"));
    }
}
