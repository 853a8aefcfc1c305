//! Live migration between two engines (issue 8): the source sends guest memory while
//! the guest runs (pre-copy rounds over KVM's dirty-page log), then stops it, sends
//! what changed last and the machine state (`MachineState`, as a save), and ends only
//! once the destination says it runs the guest. The stream:
//!
//! ```text
//! "VIREOMIG" version:u32 memory:u64
//! ( 'P' gpa:u64 len:u32 bytes[len]          a run of whole pages
//! | 'S' len:u64 json[len] )*                the machine state, last
//! destination → source: "OK\n" or "ERR <why>\n"
//! ```
//!
//! Device workers write guest memory from this process (used rings, received frames,
//! disk reads), which KVM's log does not see: the source keeps a hash of every page as
//! sent, and once the devices have stopped re-sends every page whose hash changed.

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::MachineState;

const MAGIC: &[u8; 8] = b"VIREOMIG";
const VERSION: u32 = 1;
use super::pages::PAGE;
/// Pre-copy stops when a round finds fewer dirty pages than this (4 MiB)...
const SMALL_ENOUGH: usize = 1024;
/// ...or after this many rounds (a guest dirtying memory faster than we send it).
const MAX_ROUNDS: usize = 30;
/// How long the source waits for the destination's verdict.
const VERDICT_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Where a migration goes: `unix:PATH` or `tcp:HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(String),
}

impl std::str::FromStr for Endpoint {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.split_once(':') {
            Some(("unix", path)) if !path.is_empty() => Ok(Endpoint::Unix(path.into())),
            Some(("tcp", addr)) if addr.contains(':') => Ok(Endpoint::Tcp(addr.into())),
            _ => Err(format!(
                "{text:?} is not a migration endpoint: write unix:PATH or tcp:HOST:PORT"
            )),
        }
    }
}

/// A connected migration stream.
pub trait Stream: Read + Write + Send {
    fn set_timeout(&self, timeout: Option<std::time::Duration>) -> std::io::Result<()>;
}

impl Stream for UnixStream {
    fn set_timeout(&self, timeout: Option<std::time::Duration>) -> std::io::Result<()> {
        self.set_read_timeout(timeout)
    }
}

impl Stream for std::net::TcpStream {
    fn set_timeout(&self, timeout: Option<std::time::Duration>) -> std::io::Result<()> {
        self.set_read_timeout(timeout)
    }
}

impl Endpoint {
    pub fn connect(&self) -> std::io::Result<Box<dyn Stream>> {
        Ok(match self {
            Endpoint::Unix(path) => Box::new(UnixStream::connect(path)?),
            Endpoint::Tcp(addr) => {
                let s = std::net::TcpStream::connect(addr)?;
                s.set_nodelay(true)?;
                Box::new(s)
            }
        })
    }

    /// Listens for the source (before anyone can ask it to migrate here).
    pub fn listen(&self) -> std::io::Result<Incoming> {
        Ok(match self {
            Endpoint::Unix(path) => {
                Incoming::Unix(std::os::unix::net::UnixListener::bind(path)?, path.clone())
            }
            Endpoint::Tcp(addr) => Incoming::Tcp(std::net::TcpListener::bind(addr)?),
        })
    }
}

/// A destination's listener (`--incoming`).
pub enum Incoming {
    Unix(std::os::unix::net::UnixListener, PathBuf),
    Tcp(std::net::TcpListener),
}

impl Incoming {
    /// Waits for the one source this destination serves.
    pub fn accept(&self) -> std::io::Result<Box<dyn Stream>> {
        Ok(match self {
            Incoming::Unix(listener, _) => Box::new(listener.accept()?.0),
            Incoming::Tcp(listener) => Box::new(listener.accept()?.0),
        })
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if let Incoming::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn fold_hash(page: &[u8]) -> u64 {
    // Multiply-rotate folds over 8-byte words, four independent lanes so the multiplies
    // overlap: it only has to tell a page from its own earlier contents, fast (the last
    // pass runs with the guest stopped).
    let mut lanes = [
        0x9e37_79b9_7f4a_7c15u64,
        0xc2b2_ae3d_27d4_eb4f,
        0x1656_67b1_9e37_79f9,
        0x27d4_eb2f_1656_67c5,
    ];
    for block in page.chunks_exact(32) {
        for (lane, word) in lanes.iter_mut().zip(block.chunks_exact(8)) {
            let w = u64::from_le_bytes(word.try_into().expect("8 bytes"));
            *lane = (lane.rotate_left(5) ^ w).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }
    lanes.iter().fold(0u64, |h, &l| {
        (h.rotate_left(17) ^ l).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    })
}

/// The source side: what has been sent, per page.
pub struct Sender {
    out: BufWriter<Box<dyn Stream>>,
    mem: GuestMemoryMmap,
    /// The hash of each page as last sent (zero pages: never sent, the destination's
    /// fresh memory is zero).
    sent: Vec<u64>,
    zero_hash: u64,
    /// Guest memory is anonymous (not mapped from a snapshot file), so a page that is
    /// not resident is zero and needs no look.
    anonymous: bool,
    pub bytes_sent: u64,
}

impl Sender {
    /// Connects and announces the guest's memory size. `anonymous`: see the field.
    pub fn start(to: &Endpoint, mem: &GuestMemoryMmap, anonymous: bool) -> std::io::Result<Self> {
        let stream = to.connect()?;
        let total: u64 = mem.iter().map(|r| r.len()).sum();
        let mut out = BufWriter::with_capacity(1 << 20, stream);
        out.write_all(MAGIC)?;
        out.write_all(&VERSION.to_le_bytes())?;
        out.write_all(&total.to_le_bytes())?;
        let zero_hash = fold_hash(&[0u8; PAGE]);
        Ok(Self {
            out,
            mem: mem.clone(),
            sent: vec![zero_hash; (total as usize) / PAGE],
            zero_hash,
            anonymous,
            bytes_sent: 0,
        })
    }

    /// Each region's (guest address, bytes, index of its first page in `sent`).
    fn regions(mem: &GuestMemoryMmap) -> Vec<(u64, &[u8], usize)> {
        let mut first = 0;
        mem.iter()
            .map(|r| {
                let len = r.len() as usize;
                // SAFETY: a live mapping of `len` bytes owned by `mem`, which the slice's
                // lifetime is tied to. The guest and devices may write it while we read (pre-copy):
                // a torn page is caught later by its dirty bit or its hash.
                let bytes = unsafe { std::slice::from_raw_parts(r.as_ptr() as *const u8, len) };
                let entry = (r.start_addr().0, bytes, first);
                first += len / PAGE;
                entry
            })
            .collect()
    }

    fn send_page(&mut self, gpa: u64, page: &[u8], index: usize) -> std::io::Result<()> {
        self.out.write_all(b"P")?;
        self.out.write_all(&gpa.to_le_bytes())?;
        self.out.write_all(&(PAGE as u32).to_le_bytes())?;
        self.out.write_all(page)?;
        self.sent[index] = fold_hash(page);
        self.bytes_sent += PAGE as u64;
        Ok(())
    }

    /// Round 0: every page holding anything.
    pub fn send_all(&mut self) -> std::io::Result<usize> {
        let mut n = 0;
        let mem = self.mem.clone();
        for (gpa, bytes, first) in Self::regions(&mem) {
            let present = super::pages::may_hold_data(bytes, self.anonymous)?;
            for (i, page) in bytes.chunks(PAGE).enumerate() {
                if present[i] && !super::pages::is_zero(page) {
                    self.send_page(gpa + (i * PAGE) as u64, page, first + i)?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// Sends the pages whose bit is set in each slot's dirty `bitmaps` (one per region,
    /// KVM's layout: bit i of word w is page 64w + i).
    pub fn send_dirty(&mut self, bitmaps: &[Vec<u64>]) -> std::io::Result<usize> {
        let mut n = 0;
        let mem = self.mem.clone();
        for ((gpa, bytes, first), bitmap) in Self::regions(&mem).into_iter().zip(bitmaps) {
            let pages = bytes.len() / PAGE;
            for (w, &word) in bitmap.iter().enumerate() {
                let mut bits = word;
                while bits != 0 {
                    let i = w * 64 + bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    if i < pages {
                        let page = &bytes[i * PAGE..(i + 1) * PAGE];
                        self.send_page(gpa + (i * PAGE) as u64, page, first + i)?;
                        n += 1;
                    }
                }
            }
        }
        Ok(n)
    }

    /// With everything stopped: every page that differs from what was sent (the
    /// devices' writes, which no dirty log saw).
    pub fn send_changed(&mut self) -> std::io::Result<usize> {
        let mut n = 0;
        let mem = self.mem.clone();
        for (gpa, bytes, first) in Self::regions(&mem) {
            let present = super::pages::may_hold_data(bytes, self.anonymous)?;
            for (i, page) in bytes.chunks(PAGE).enumerate() {
                // A page gone from memory (the balloon gave it back) reads as zero now:
                // it differs only if something else was sent for it.
                let differs = if present[i] {
                    fold_hash(page) != self.sent[first + i]
                } else {
                    self.sent[first + i] != self.zero_hash
                };
                if differs {
                    self.send_page(gpa + (i * PAGE) as u64, page, first + i)?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// The machine state, then the destination's verdict.
    pub fn finish(mut self, state: &MachineState) -> Result<u64, String> {
        let json = serde_json::to_vec(state).map_err(|e| e.to_string())?;
        let io = |e: std::io::Error| format!("the migration stream broke: {e}");
        self.out.write_all(b"S").map_err(io)?;
        self.out
            .write_all(&(json.len() as u64).to_le_bytes())
            .map_err(io)?;
        self.out.write_all(&json).map_err(io)?;
        self.out.flush().map_err(io)?;
        let bytes = self.bytes_sent + json.len() as u64;
        let stream = self.out.into_inner().map_err(|e| io(e.into_error()))?;
        stream.set_timeout(Some(VERDICT_WAIT)).map_err(io)?;
        let mut verdict = String::new();
        BufReader::new(stream)
            .read_line(&mut verdict)
            .map_err(|e| format!("no answer from the destination: {e}"))?;
        match verdict.trim_end().strip_prefix("ERR ") {
            None if verdict.trim_end() == "OK" => Ok(bytes),
            Some(why) => Err(format!("the destination refused the VM: {why}")),
            None => Err("the destination ended without taking the VM".into()),
        }
    }
}

/// Whether pre-copy should stop and copy the rest with the guest stopped.
pub fn converged(round: usize, dirty: usize) -> bool {
    dirty < SMALL_ENOUGH || round >= MAX_ROUNDS
}

/// The destination side: reads pages into `mem` until the machine state comes.
pub fn receive(stream: &mut dyn Stream, mem: &GuestMemoryMmap) -> Result<MachineState, String> {
    let mut input = BufReader::with_capacity(1 << 20, stream);
    let io = |e: std::io::Error| format!("the migration stream broke: {e}");
    let mut header = [0u8; 20];
    input.read_exact(&mut header).map_err(io)?;
    if &header[..8] != MAGIC {
        return Err("the source is not a Vireo engine migrating a VM".into());
    }
    let version = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(format!(
            "the source speaks migration version {version}, this engine {VERSION}"
        ));
    }
    let total: u64 = mem.iter().map(|r| r.len()).sum();
    let theirs = u64::from_le_bytes(header[12..20].try_into().expect("8 bytes"));
    if theirs != total {
        return Err(format!(
            "the source's VM has {} MiB of memory, this one {} MiB",
            theirs >> 20,
            total >> 20
        ));
    }
    let mut page = vec![0u8; PAGE];
    loop {
        let mut tag = [0u8; 1];
        input.read_exact(&mut tag).map_err(io)?;
        match &tag {
            b"P" => {
                let mut head = [0u8; 12];
                input.read_exact(&mut head).map_err(io)?;
                let gpa = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
                let len = u32::from_le_bytes(head[8..].try_into().expect("4 bytes")) as usize;
                if len != PAGE {
                    return Err(format!("a page of {len} bytes in the stream"));
                }
                input.read_exact(&mut page).map_err(io)?;
                mem.write_slice(&page, GuestAddress(gpa))
                    .map_err(|_| format!("a page at {gpa:#x}, outside the guest's memory"))?;
            }
            b"S" => {
                let mut len = [0u8; 8];
                input.read_exact(&mut len).map_err(io)?;
                let len = u64::from_le_bytes(len);
                if len > 512 << 20 {
                    return Err(format!("a machine state of {len} bytes"));
                }
                // Grown as bytes arrive: a lying length costs nothing up front.
                let mut json = Vec::new();
                (&mut input).take(len).read_to_end(&mut json).map_err(io)?;
                if json.len() as u64 != len {
                    return Err("the stream ended inside the machine state".into());
                }
                return serde_json::from_slice(&json)
                    .map_err(|e| format!("the machine state does not parse: {e}"));
            }
            other => return Err(format!("unknown record {other:?} in the stream")),
        }
    }
}

/// Tells the source whether this destination runs the guest.
pub fn answer(stream: &mut dyn Stream, outcome: &Result<(), String>) {
    let line = match outcome {
        Ok(()) => "OK\n".to_string(),
        Err(why) => format!("ERR {}\n", why.replace('\n', " ")),
    };
    let _ = stream.write_all(line.as_bytes());
    let _ = stream.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_and_bad_ones_say_how() {
        assert_eq!(
            "unix:/tmp/m.sock".parse::<Endpoint>(),
            Ok(Endpoint::Unix("/tmp/m.sock".into()))
        );
        assert_eq!(
            "tcp:127.0.0.1:4444".parse::<Endpoint>(),
            Ok(Endpoint::Tcp("127.0.0.1:4444".into()))
        );
        for bad in ["", "unix:", "tcp:4444", "/tmp/x", "udp:1:2"] {
            assert!(bad.parse::<Endpoint>().unwrap_err().contains("unix:PATH"));
        }
    }

    #[test]
    fn the_hash_tells_a_changed_page() {
        let mut page = vec![0u8; PAGE];
        let zero = fold_hash(&page);
        page[4095] = 1;
        assert_ne!(fold_hash(&page), zero);
        page[4095] = 0;
        page[0] = 1;
        let one = fold_hash(&page);
        page[0] = 0;
        page[8] = 1;
        assert_ne!(fold_hash(&page), one);
    }
}
