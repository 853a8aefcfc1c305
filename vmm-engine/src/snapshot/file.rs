//! The snapshot file: a fixed header, the machine state as JSON, then guest memory.
//!
//! ```text
//! 0     header (64 bytes, its own CRC-32), zero-padded to 4 KiB
//! 4096  state: JSON of `MachineState`, `state_len` bytes, CRC-32 in the header
//! M     guest memory, every RAM range in guest-address order (M is page aligned, so a
//!       restore maps it copy-on-write); all-zero pages are holes: the file is sparse
//! ```
//!
//! Written to a temporary file beside the target, synced, then renamed over it: a crash
//! or a kill at any point leaves the previous snapshot whole. Guest memory has no
//! checksum: verifying it would read all of it before the guest runs, which is what
//! mapping it lazily avoids; its length is checked against the file's.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::{Error, MachineState};

const MAGIC: &[u8; 8] = b"VIREOSNP";
/// Bumped on any change a reader of the previous version would misread.
pub const FORMAT_VERSION: u32 = 1;
const HEADER_LEN: usize = 64;
const STATE_OFFSET: u64 = 4096;
use super::pages::{is_zero, may_hold_data, PAGE};
/// A state larger than this is not one we wrote (the largest part, a 4K screen's
/// pixels, is ~45 MiB as base64).
const MAX_STATE_LEN: u64 = 512 << 20;

/// The fixed-size header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    version: u32,
    state_len: u64,
    state_crc: u32,
    memory_offset: u64,
    memory_len: u64,
}

impl Header {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[16..24].copy_from_slice(&self.state_len.to_le_bytes());
        b[24..28].copy_from_slice(&self.state_crc.to_le_bytes());
        b[32..40].copy_from_slice(&self.memory_offset.to_le_bytes());
        b[40..48].copy_from_slice(&self.memory_len.to_le_bytes());
        let crc = crc32fast::hash(&b[..48]);
        b[48..52].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8; HEADER_LEN], path: &Path) -> Result<Self, Error> {
        let bad = |why: &str| Error::Corrupt {
            path: path.to_owned(),
            why: why.to_owned(),
        };
        if &b[..8] != MAGIC {
            return Err(bad("it is not a Vireo snapshot (wrong magic)"));
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        if crc32fast::hash(&b[..48]) != u32_at(48) {
            return Err(bad("its header is damaged (checksum mismatch)"));
        }
        let version = u32_at(8);
        if version != FORMAT_VERSION {
            return Err(Error::Version {
                path: path.to_owned(),
                found: version,
            });
        }
        let header = Header {
            version,
            state_len: u64_at(16),
            state_crc: u32_at(24),
            memory_offset: u64_at(32),
            memory_len: u64_at(40),
        };
        if header.state_len > MAX_STATE_LEN
            || header.memory_offset % PAGE as u64 != 0
            || header.memory_offset < STATE_OFFSET + header.state_len
        {
            return Err(bad("its header describes an impossible layout"));
        }
        Ok(header)
    }
}

fn align_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

/// Writes `state` and `mem` to `path` atomically (temp file, fsync, rename, fsync of
/// the directory). `anonymous`: guest memory is anonymous (not mapped from a snapshot
/// file), so pages it never touched are skipped unread.
pub fn write(
    path: &Path,
    state: &MachineState,
    mem: &GuestMemoryMmap,
    anonymous: bool,
) -> Result<(), Error> {
    let io = |what: &'static str| {
        let path = path.to_owned();
        move |source| Error::Io { what, path, source }
    };
    let json = serde_json::to_vec(state).map_err(|e| Error::Encode(e.to_string()))?;
    let memory_len: u64 = mem.iter().map(|r| r.len()).sum();
    let header = Header {
        version: FORMAT_VERSION,
        state_len: json.len() as u64,
        state_crc: crc32fast::hash(&json),
        memory_offset: align_up(STATE_OFFSET + json.len() as u64, PAGE as u64),
        memory_len,
    };
    let temp = temp_path(path);
    let result = (|| {
        let mut file = File::create(&temp).map_err(io("create"))?;
        // The full length first, so that skipped pages are holes.
        file.set_len(header.memory_offset + memory_len)
            .map_err(io("size"))?;
        file.write_all(&header.encode()).map_err(io("write"))?;
        file.seek(SeekFrom::Start(STATE_OFFSET))
            .map_err(io("write"))?;
        file.write_all(&json).map_err(io("write"))?;
        write_memory(&file, header.memory_offset, mem, anonymous)
            .map_err(io("write guest memory to"))?;
        file.sync_all().map_err(io("sync"))?;
        std::fs::rename(&temp, path).map_err(io("rename the new snapshot onto"))?;
        sync_dir(path).map_err(io("sync the directory of"))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    } else {
        remove_stale_temps(path);
    }
    result
}

/// Temporary files of saves that were killed half-way (`.NAME.tmp-PID` of a process
/// that is gone): a finished save replaces what they were meant to.
fn remove_stale_temps(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let prefix = format!(".{}.tmp-", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    }) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = file
            .strip_prefix(&prefix)
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let alive = Path::new(&format!("/proc/{pid}")).exists();
        if !alive {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// `.NAME.tmp-PID` beside `path`.
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// Writes every non-zero page of guest memory at its offset; zero pages stay holes.
fn write_memory(
    file: &File,
    base: u64,
    mem: &GuestMemoryMmap,
    anonymous: bool,
) -> std::io::Result<()> {
    let mut offset = base;
    for region in mem.iter() {
        let len = region.len() as usize;
        // SAFETY: the region is a live mapping of `len` bytes owned by `mem`, which we
        // borrow for the whole loop; the vCPUs and device workers are stopped, so
        // nothing writes it while we read.
        let bytes = unsafe { std::slice::from_raw_parts(region.as_ptr() as *const u8, len) };
        let present = may_hold_data(bytes, anonymous)?;
        write_nonzero_runs(file, offset, bytes, &present)?;
        offset += len as u64;
    }
    Ok(())
}

/// The most one `pwrite` carries: on ext4 one huge write into a file already sized
/// with `set_len` is 5-10x slower than the same bytes in 1 MiB pieces (measured by
/// `tests/bench/snapshot.rs`: a 1 GiB guest half dirty saved in 5.7 s, 0.38 s chunked).
const WRITE_CHUNK: usize = 1 << 20;

/// Writes each run of pages holding a non-zero byte, in 1 MiB writes; pages not
/// `present` are zero without a look.
fn write_nonzero_runs(
    file: &File,
    offset: u64,
    bytes: &[u8],
    present: &[bool],
) -> std::io::Result<()> {
    let write_run = |start: usize, end: usize| -> std::io::Result<()> {
        for (i, chunk) in bytes[start..end].chunks(WRITE_CHUNK).enumerate() {
            file.write_all_at(chunk, offset + (start + i * WRITE_CHUNK) as u64)?;
        }
        Ok(())
    };
    let mut run_start: Option<usize> = None;
    for (i, page) in bytes.chunks(PAGE).enumerate() {
        let zero = !present[i] || is_zero(page);
        match (zero, run_start) {
            (false, None) => run_start = Some(i * PAGE),
            (true, Some(start)) => {
                write_run(start, i * PAGE)?;
                run_start = None;
            }
            _ => {}
        }
    }
    if let Some(start) = run_start {
        write_run(start, bytes.len())?;
    }
    Ok(())
}

/// An opened, checked snapshot: its state, and the file to map guest memory from.
pub struct Snapshot {
    pub state: MachineState,
    pub file: File,
    pub memory_offset: u64,
    pub memory_len: u64,
}

/// Opens `path` and checks everything but guest memory's contents: magic, version,
/// checksums, lengths, the state's syntax.
pub fn read(path: &Path) -> Result<Snapshot, Error> {
    let io = |what: &'static str| {
        let path = path.to_owned();
        move |source| Error::Io { what, path, source }
    };
    let mut file = File::open(path).map_err(io("open"))?;
    let mut raw = [0u8; HEADER_LEN];
    file.read_exact(&mut raw).map_err(|_| Error::Corrupt {
        path: path.to_owned(),
        why: "it is shorter than a snapshot's header (truncated?)".into(),
    })?;
    let header = Header::decode(&raw, path)?;
    let file_len = file.metadata().map_err(io("read"))?.len();
    if file_len < header.memory_offset + header.memory_len {
        return Err(Error::Corrupt {
            path: path.to_owned(),
            why: format!(
                "it is truncated: {file_len} bytes where the header needs {}",
                header.memory_offset + header.memory_len
            ),
        });
    }
    let mut json = vec![0u8; header.state_len as usize];
    file.read_exact_at(&mut json, STATE_OFFSET)
        .map_err(io("read"))?;
    if crc32fast::hash(&json) != header.state_crc {
        return Err(Error::Corrupt {
            path: path.to_owned(),
            why: "its machine state is damaged (checksum mismatch)".into(),
        });
    }
    let state: MachineState = serde_json::from_slice(&json).map_err(|e| Error::Corrupt {
        path: path.to_owned(),
        why: format!("its machine state does not parse: {e}"),
    })?;
    Ok(Snapshot {
        state,
        file,
        memory_offset: header.memory_offset,
        memory_len: header.memory_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_any_flipped_byte_is_caught() {
        let h = Header {
            version: FORMAT_VERSION,
            state_len: 1234,
            state_crc: 0xdead_beef,
            memory_offset: 8192,
            memory_len: 1 << 20,
        };
        let bytes = h.encode();
        let p = Path::new("x");
        assert_eq!(Header::decode(&bytes, p).unwrap(), h);
        for i in 0..52 {
            let mut b = bytes;
            b[i] ^= 0x40;
            assert!(
                Header::decode(&b, p).is_err(),
                "byte {i} flipped went unseen"
            );
        }
    }

    #[test]
    fn another_format_version_is_named() {
        let h = Header {
            version: FORMAT_VERSION + 1,
            state_len: 0,
            state_crc: 0,
            memory_offset: 4096,
            memory_len: 0,
        };
        match Header::decode(&h.encode(), Path::new("x")) {
            Err(Error::Version { found, .. }) => assert_eq!(found, FORMAT_VERSION + 1),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn only_non_zero_pages_are_written() {
        let dir = std::env::temp_dir().join(format!("vireo-snapfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mem");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        file.set_len(64 * PAGE as u64).unwrap();
        let mut bytes = vec![0u8; 64 * PAGE];
        bytes[3 * PAGE + 7] = 1;
        bytes[4 * PAGE] = 2;
        bytes[63 * PAGE + PAGE - 1] = 3;
        let mut present = vec![true; 64];
        write_nonzero_runs(&file, 0, &bytes, &present).unwrap();
        let mut back = vec![0u8; 64 * PAGE];
        file.read_exact_at(&mut back, 0).unwrap();
        assert_eq!(back, bytes);
        // A page said absent is a hole, whatever it holds.
        file.set_len(0).unwrap();
        file.set_len(64 * PAGE as u64).unwrap();
        present[4] = false;
        write_nonzero_runs(&file, 0, &bytes, &present).unwrap();
        bytes[4 * PAGE] = 0;
        let mut back = vec![0u8; 64 * PAGE];
        file.read_exact_at(&mut back, 0).unwrap();
        assert_eq!(back, bytes);
        // 2 pages of data: the file holds a few blocks, not 256 KiB.
        use std::os::unix::fs::MetadataExt;
        assert!(file.metadata().unwrap().blocks() * 512 <= 8 * PAGE as u64);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
