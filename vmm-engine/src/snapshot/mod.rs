//! Save state and restore (issue 8): the whole machine in one file (`file`), taken with
//! the vCPUs stopped and every device's worker stopped at a request boundary, and put
//! back into a VM built from the same configuration, its memory mapped from the file
//! copy-on-write so the guest runs before all of it is read.
//!
//! A snapshot only fits the hardware it was taken with: `Hardware` records it and a
//! restore refuses any difference, naming it; each disk's size and modification time
//! are recorded after the devices flushed, so a disk changed since is refused too (the
//! guest's caches would no longer match it).

pub mod file;
pub mod migrate;
mod pages;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vm_memory::mmap::MmapRegion;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use crate::config::VmConfig;
use crate::devices::cmos::CmosSnapshot;
use crate::devices::serial::SerialSnapshot;
use crate::pci::root::BusState;
use crate::x86_64::layout;
use crate::x86_64::snapshot::{VcpuState, VmState};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} cannot be restored: {why}")]
    Corrupt { path: PathBuf, why: String },
    #[error(
        "{path} was written in snapshot format {found}; this engine reads format {}: \
         start the VM afresh (discarding the saved state), or restore it with the Vireo that saved it",
        file::FORMAT_VERSION
    )]
    Version { path: PathBuf, found: u32 },
    #[error("the saved state does not fit this VM: {0}; start it afresh (discarding the saved state) or set it back")]
    Mismatch(String),
    #[error("cannot encode the machine state: {0}")]
    Encode(String),
    #[error("cannot map the saved guest memory: {0}")]
    Memory(String),
}

/// What the VM was built with: a restore needs exactly the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hardware {
    pub vcpus: u8,
    pub memory: u64,
    /// Each disk's image and whether the guest saw it read-only.
    pub disks: Vec<(PathBuf, bool)>,
    pub net: bool,
    pub vsock_cid: Option<u64>,
    /// The display the VM was started with (the guest's mode is in the GPU's state).
    pub display: Option<(u32, u32)>,
}

impl Hardware {
    pub fn of(config: &VmConfig) -> Self {
        Self {
            vcpus: config.vcpus,
            memory: config.memory,
            disks: config
                .disks
                .iter()
                .map(|d| (d.path.clone(), d.readonly))
                .collect(),
            net: config.net.is_some(),
            vsock_cid: config.vsock.as_ref().map(|v| v.cid),
            display: config.display.map(|d| (d.width, d.height)),
        }
    }

    /// Every difference between `self` (saved) and `now`, in words.
    pub fn differences(&self, now: &Hardware) -> Vec<String> {
        let mut out = Vec::new();
        let mut differ = |what: &str, saved: String, now: String| {
            if saved != now {
                out.push(format!("{what}: saved with {saved}, now {now}"));
            }
        };
        differ("vCPUs", self.vcpus.to_string(), now.vcpus.to_string());
        differ(
            "memory",
            format!("{} MiB", self.memory >> 20),
            format!("{} MiB", now.memory >> 20),
        );
        differ(
            "disks",
            format!("{:?}", self.disks),
            format!("{:?}", now.disks),
        );
        differ("network card", self.net.to_string(), now.net.to_string());
        differ(
            "vsock CID",
            format!("{:?}", self.vsock_cid),
            format!("{:?}", now.vsock_cid),
        );
        differ(
            "display",
            format!("{:?}", self.display),
            format!("{:?}", now.display),
        );
        out
    }
}

/// A disk image as it was right after the save flushed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskStamp {
    pub path: PathBuf,
    pub len: u64,
    pub mtime_ns: i128,
}

impl DiskStamp {
    pub fn of(path: &Path) -> std::io::Result<Self> {
        let m = std::fs::metadata(path)?;
        Ok(Self {
            path: path.to_owned(),
            len: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        })
    }
}

/// The legacy devices with state worth keeping (the i8042 and the ACPI registers hold
/// none between two accesses).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LegacyState {
    pub serial: SerialSnapshot,
    pub cmos: CmosSnapshot,
}

/// Everything but guest memory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MachineState {
    pub hardware: Hardware,
    pub disks: Vec<DiskStamp>,
    pub vcpus: Vec<VcpuState>,
    pub vm: VmState,
    pub legacy: LegacyState,
    pub bus: BusState,
    /// Unix time of the save, for people and the app.
    pub saved_at: u64,
    /// The guest was paused when it was captured: a migration's destination keeps it
    /// paused (moving a paused VM to a new engine must not run it). A restore from a
    /// file runs the guest, as the user who starts a saved VM expects.
    #[serde(default)]
    pub paused: bool,
}

impl MachineState {
    /// Refuses a snapshot that does not fit `config`, or whose disks changed since.
    pub fn check_fits(&self, config: &VmConfig) -> Result<(), Error> {
        let diffs = self.hardware.differences(&Hardware::of(config));
        if !diffs.is_empty() {
            return Err(Error::Mismatch(diffs.join("; ")));
        }
        if self.vcpus.len() != usize::from(config.vcpus) {
            return Err(Error::Mismatch(format!(
                "{} saved vCPUs for {} configured",
                self.vcpus.len(),
                config.vcpus
            )));
        }
        for saved in &self.disks {
            let now = DiskStamp::of(&saved.path).map_err(|e| {
                Error::Mismatch(format!("disk {} cannot be read: {e}", saved.path.display()))
            })?;
            if now != *saved {
                return Err(Error::Mismatch(format!(
                    "disk {} changed since the save ({} bytes then, {} now, modified since)",
                    saved.path.display(),
                    saved.len,
                    now.len
                )));
            }
        }
        Ok(())
    }
}

/// Guest RAM mapped from the snapshot file, private and copy-on-write: pages are read
/// when the guest first touches them, and its writes never reach the file.
pub fn map_memory(snapshot: &file::Snapshot, memory: u64) -> Result<GuestMemoryMmap, Error> {
    let ranges = layout::ram_ranges(memory);
    let total: u64 = ranges.iter().map(|(_, len)| len).sum();
    if total != snapshot.memory_len {
        return Err(Error::Mismatch(format!(
            "{} MiB of saved memory for {} MiB of RAM",
            snapshot.memory_len >> 20,
            total >> 20
        )));
    }
    let mut regions = Vec::with_capacity(ranges.len());
    let mut offset = snapshot.memory_offset;
    for (start, len) in ranges {
        let file = snapshot
            .file
            .try_clone()
            .map_err(|e| Error::Memory(e.to_string()))?;
        let mapping = MmapRegion::build(
            Some(FileOffset::new(file, offset)),
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_NORESERVE,
        )
        .map_err(|e| Error::Memory(e.to_string()))?;
        let region = GuestRegionMmap::new(mapping, GuestAddress(start))
            .ok_or_else(|| Error::Memory("region past the end of the address space".into()))?;
        regions.push(region);
        offset += len;
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| Error::Memory(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::BootSource;

    fn config() -> VmConfig {
        VmConfig {
            vcpus: 2,
            memory: 256 << 20,
            ..VmConfig::new(BootSource {
                kernel: "/k".into(),
                initrd: None,
                cmdline: String::new(),
            })
        }
    }

    #[test]
    fn hardware_differences_are_named() {
        let saved = Hardware::of(&config());
        assert!(saved.differences(&Hardware::of(&config())).is_empty());
        let now = Hardware::of(&VmConfig {
            vcpus: 4,
            memory: 512 << 20,
            ..config()
        });
        let diffs = saved.differences(&now).join("; ");
        assert!(diffs.contains("vCPUs: saved with 2, now 4"), "{diffs}");
        assert!(
            diffs.contains("memory: saved with 256 MiB, now 512 MiB"),
            "{diffs}"
        );
    }

    #[test]
    fn a_disk_stamp_changes_with_the_disk() {
        let dir = std::env::temp_dir().join(format!("vireo-stamp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let disk = dir.join("d.img");
        std::fs::write(&disk, [0u8; 512]).unwrap();
        let before = DiskStamp::of(&disk).unwrap();
        assert_eq!(DiskStamp::of(&disk).unwrap(), before);
        let file = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
        file.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(3))
            .unwrap();
        assert_ne!(DiskStamp::of(&disk).unwrap(), before);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
