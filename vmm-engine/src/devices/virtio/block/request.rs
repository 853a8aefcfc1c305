//! Block requests: a descriptor chain parsed into a `Request` (virtio 1.2, 5.2.6
//! "Device Operation"), and its execution against a `Disk`.
//!
//! A request is `struct virtio_blk_req { le32 type; le32 reserved; le64 sector; u8 data[];
//! u8 status; }`: a 16-byte device-readable header, data (device-readable for writes,
//! device-writable for reads), and a device-writable status byte at the very end. The
//! parser makes no assumption about how the driver split this into descriptors (virtio
//! 1.2, 2.7.4 "Message Framing"): the header and the data may share descriptors, the
//! status byte may share the last one.
//!
//! Everything the guest wrote is checked before use: each descriptor lies in guest
//! memory, readable descriptors come before writable ones, lengths add up without
//! overflow, the data goes in the direction the type needs, and sectors times 512 plus
//! the length stay within the disk. A request failing a check gets VIRTIO_BLK_S_IOERR;
//! a chain with no usable status byte cannot be answered and is returned with a used
//! length of 0.

use std::mem::{offset_of, size_of};
use std::sync::Arc;

use virtio_bindings::virtio_blk::{
    virtio_blk_discard_write_zeroes, virtio_blk_outhdr, VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

use super::disk::{Disk, SECTOR_BYTES};
use crate::devices::virtio::io_counters::IoCounters;

/// Bytes of the request header (`struct virtio_blk_outhdr`).
pub const HEADER_LEN: u64 = size_of::<virtio_blk_outhdr>() as u64;
/// Bytes of one discard / write-zeroes segment (`struct virtio_blk_discard_write_zeroes`).
pub const SEGMENT_LEN: u64 = size_of::<virtio_blk_discard_write_zeroes>() as u64;
/// The most segments one discard or write-zeroes request may carry (config space
/// `max_discard_seg`, `max_write_zeroes_seg`).
pub const MAX_SEGMENTS: u32 = 32;
/// The most sectors one segment may cover (config space `max_discard_sectors`,
/// `max_write_zeroes_sectors`): 1 GiB, so that one request cannot keep the worker busy
/// for long.
pub const MAX_SEGMENT_SECTORS: u32 = (1 << 30) / SECTOR_BYTES as u32;
/// Size of the buffer data goes through between guest memory and the disk.
const BOUNCE_LEN: usize = 128 << 10;

/// The request types this device knows (`VIRTIO_BLK_T_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestType {
    In,
    Out,
    Flush,
    GetId,
    Discard,
    WriteZeroes,
    /// Anything else: answered with VIRTIO_BLK_S_UNSUPP.
    Unsupported(u32),
}

impl RequestType {
    fn from_raw(raw: u32) -> Self {
        match raw {
            VIRTIO_BLK_T_IN => RequestType::In,
            VIRTIO_BLK_T_OUT => RequestType::Out,
            VIRTIO_BLK_T_FLUSH => RequestType::Flush,
            VIRTIO_BLK_T_GET_ID => RequestType::GetId,
            VIRTIO_BLK_T_DISCARD => RequestType::Discard,
            VIRTIO_BLK_T_WRITE_ZEROES => RequestType::WriteZeroes,
            other => RequestType::Unsupported(other),
        }
    }
}

/// `addr + n`, wrapping: a wrapped address fails the memory checks instead of
/// panicking.
fn at(addr: GuestAddress, n: u64) -> GuestAddress {
    GuestAddress(addr.0.wrapping_add(n))
}

/// A run of guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemRange {
    pub addr: GuestAddress,
    pub len: u64,
}

/// Guest memory ranges in chain order, with their total length.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Buffers {
    ranges: Vec<MemRange>,
    len: u64,
}

impl Buffers {
    pub fn ranges(&self) -> &[MemRange] {
        &self.ranges
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn push(&mut self, addr: GuestAddress, len: u64) -> Result<(), ParseError> {
        if len == 0 {
            return Ok(());
        }
        self.len = self.len.checked_add(len).ok_or(ParseError::TooLong)?;
        self.ranges.push(MemRange { addr, len });
        Ok(())
    }

    /// Removes and returns the first `n` bytes (`n <= len`).
    fn split_front(&mut self, n: u64) -> Buffers {
        debug_assert!(n <= self.len);
        let mut front = Buffers::default();
        let mut rest = Vec::new();
        let mut need = n;
        for r in self.ranges.drain(..) {
            if need == 0 {
                rest.push(r);
            } else if r.len <= need {
                need -= r.len;
                front.ranges.push(r);
            } else {
                front.ranges.push(MemRange {
                    addr: r.addr,
                    len: need,
                });
                rest.push(MemRange {
                    addr: at(r.addr, need),
                    len: r.len - need,
                });
                need = 0;
            }
        }
        front.len = n;
        self.ranges = rest;
        self.len -= n;
        front
    }

    /// Removes and returns the last byte's address (the buffers are not empty).
    fn pop_last_byte(&mut self) -> GuestAddress {
        let last = self.ranges.last_mut().expect("non-empty buffers");
        let addr = at(last.addr, last.len - 1);
        last.len -= 1;
        if last.len == 0 {
            self.ranges.pop();
        }
        self.len -= 1;
        addr
    }

    /// Copies the first `out.len()` bytes (at most `len`) out of guest memory.
    fn read_prefix(
        &self,
        mem: &GuestMemoryMmap,
        out: &mut [u8],
    ) -> Result<(), vm_memory::GuestMemoryError> {
        let mut done = 0;
        for r in &self.ranges {
            if done == out.len() {
                break;
            }
            let n = (out.len() - done).min(r.len as usize);
            mem.read_slice(&mut out[done..done + n], r.addr)?;
            done += n;
        }
        Ok(())
    }
}

/// A parsed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub request_type: RequestType,
    /// The header's `sector` (512-byte units), as the driver wrote it.
    pub sector: u64,
    /// The data between header and status, in the direction the type needs.
    pub data: Buffers,
    /// Where the status byte goes.
    pub status: GuestAddress,
}

/// What is wrong with a chain.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("the chain has no device-writable byte for the status")]
    NoStatus,
    #[error("a device-readable descriptor follows a device-writable one")]
    ReadableAfterWritable,
    #[error("a descriptor ({addr:#x}, {len} bytes) lies outside guest memory")]
    OutsideMemory { addr: u64, len: u64 },
    #[error("the chain is longer than 2^64 bytes")]
    TooLong,
    #[error("the header needs {HEADER_LEN} device-readable bytes, the chain has {0}")]
    ShortHeader(u64),
    #[error("the data of a {0:?} request goes the wrong way")]
    WrongDirection(RequestType),
    #[error("cannot read the header from guest memory")]
    Header,
}

/// A chain that cannot be served, and where (if anywhere) its status byte goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Malformed {
    pub error: ParseError,
    pub status: Option<GuestAddress>,
}

/// Parses the descriptors of one chain.
pub fn parse(
    descriptors: impl IntoIterator<Item = Descriptor>,
    mem: &GuestMemoryMmap,
) -> Result<Request, Malformed> {
    let mut readable = Buffers::default();
    let mut writable = Buffers::default();
    let mut first_error = None;
    for desc in descriptors {
        let (addr, len) = (desc.addr(), u64::from(desc.len()));
        let access = if desc.is_write_only() {
            Permissions::Write
        } else {
            Permissions::Read
        };
        if len > 0 && !mem.check_range(addr, len as usize, access) {
            first_error.get_or_insert(ParseError::OutsideMemory { addr: addr.0, len });
            // Keep collecting: the status byte may still be usable.
        }
        let pushed = if desc.is_write_only() {
            writable.push(addr, len)
        } else {
            if !writable.is_empty() {
                first_error.get_or_insert(ParseError::ReadableAfterWritable);
            }
            readable.push(addr, len)
        };
        if let Err(e) = pushed {
            first_error.get_or_insert(e);
        }
    }

    if writable.is_empty() {
        return Err(Malformed {
            error: first_error.unwrap_or(ParseError::NoStatus),
            status: None,
        });
    }
    let status = writable.pop_last_byte();
    if !mem.check_range(status, 1, Permissions::Write) {
        return Err(Malformed {
            error: ParseError::OutsideMemory {
                addr: status.0,
                len: 1,
            },
            status: None,
        });
    }
    let malformed = |error| Malformed {
        error,
        status: Some(status),
    };
    if let Some(error) = first_error {
        return Err(malformed(error));
    }

    if readable.len() < HEADER_LEN {
        return Err(malformed(ParseError::ShortHeader(readable.len())));
    }
    let header_bufs = readable.split_front(HEADER_LEN);
    let mut header = [0u8; HEADER_LEN as usize];
    header_bufs
        .read_prefix(mem, &mut header)
        .map_err(|_| malformed(ParseError::Header))?;
    let type_at = offset_of!(virtio_blk_outhdr, type_);
    let sector_at = offset_of!(virtio_blk_outhdr, sector);
    let raw_type = u32::from_le_bytes(header[type_at..type_at + 4].try_into().unwrap());
    let sector = u64::from_le_bytes(header[sector_at..sector_at + 8].try_into().unwrap());
    let request_type = RequestType::from_raw(raw_type);

    let data = match request_type {
        RequestType::In | RequestType::GetId => {
            if !readable.is_empty() {
                return Err(malformed(ParseError::WrongDirection(request_type)));
            }
            writable
        }
        RequestType::Out | RequestType::Discard | RequestType::WriteZeroes => {
            if !writable.is_empty() {
                return Err(malformed(ParseError::WrongDirection(request_type)));
            }
            readable
        }
        // A flush carries no data, and for an unknown type we cannot tell which way
        // its data goes; neither looks at it.
        RequestType::Flush | RequestType::Unsupported(_) => Buffers::default(),
    };
    Ok(Request {
        request_type,
        sector,
        data,
        status,
    })
}

/// How the driver set the device up: what requests may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestPolicy {
    /// VIRTIO_BLK_F_RO: writes, discards and write-zeroes fail.
    pub read_only: bool,
    /// VIRTIO_BLK_F_FLUSH was offered but not negotiated: every write is made durable
    /// before it completes (virtio 1.2, 5.2.6.2, first case of a stable write).
    pub write_through: bool,
    /// VIRTIO_BLK_F_DISCARD was negotiated.
    pub discard: bool,
    /// VIRTIO_BLK_F_WRITE_ZEROES was negotiated.
    pub write_zeroes: bool,
    /// The answer to VIRTIO_BLK_T_GET_ID.
    pub id: [u8; VIRTIO_BLK_ID_BYTES as usize],
}

/// Executes requests; owns the buffer data goes through.
pub struct RequestExecutor {
    policy: RequestPolicy,
    bounce: Vec<u8>,
    /// Bytes and requests served, for `stats` (the device's, shared).
    counters: Arc<IoCounters>,
}

/// The outcome of a request: its status byte and the bytes written into its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Outcome {
    status: u32,
    written: u64,
}

impl Outcome {
    fn status(status: u32) -> Self {
        Outcome { status, written: 0 }
    }
}

impl RequestExecutor {
    pub fn new(policy: RequestPolicy) -> Self {
        Self::with_counters(policy, Arc::default())
    }

    /// An executor adding what it serves to `counters`.
    pub fn with_counters(policy: RequestPolicy, counters: Arc<IoCounters>) -> Self {
        RequestExecutor {
            policy,
            bounce: Vec::new(),
            counters,
        }
    }

    pub fn policy(&self) -> &RequestPolicy {
        &self.policy
    }

    /// Serves one chain: parses, executes, writes the status byte. Returns the used
    /// length for the used ring: the bytes written into the chain (data + status), or 0
    /// for a chain that could not be answered at all.
    pub fn handle(
        &mut self,
        descriptors: impl IntoIterator<Item = Descriptor>,
        mem: &GuestMemoryMmap,
        disk: &mut Disk,
    ) -> u32 {
        let (outcome, status_addr) = match parse(descriptors, mem) {
            Ok(request) => (self.execute(&request, mem, disk), request.status),
            Err(Malformed {
                error,
                status: Some(status),
            }) => {
                tracing::debug!("virtio-blk: malformed request: {error}");
                (Outcome::status(VIRTIO_BLK_S_IOERR), status)
            }
            Err(Malformed {
                error,
                status: None,
            }) => {
                tracing::debug!("virtio-blk: unanswerable request: {error}");
                return 0;
            }
        };
        if mem.write_obj(outcome.status as u8, status_addr).is_err() {
            // Checked while parsing; only a memory map change could get here.
            return 0;
        }
        u32::try_from(outcome.written + 1).unwrap_or(u32::MAX)
    }

    fn execute(&mut self, req: &Request, mem: &GuestMemoryMmap, disk: &mut Disk) -> Outcome {
        let is_write = matches!(
            req.request_type,
            RequestType::Out | RequestType::Discard | RequestType::WriteZeroes
        );
        // virtio 1.2, 5.2.6.2: a write to a read-only device fails and writes nothing.
        if is_write && self.policy.read_only {
            return Outcome::status(VIRTIO_BLK_S_IOERR);
        }
        let outcome = match req.request_type {
            RequestType::In => self.read(req, mem, disk),
            RequestType::Out => self.write(req, mem, disk),
            RequestType::Flush => io_status(disk.backend().flush()),
            RequestType::GetId => self.get_id(req, mem),
            RequestType::Discard if self.policy.discard => self.discard_or_zero(req, mem, disk),
            RequestType::WriteZeroes if self.policy.write_zeroes => {
                self.discard_or_zero(req, mem, disk)
            }
            RequestType::Discard | RequestType::WriteZeroes | RequestType::Unsupported(_) => {
                Outcome::status(VIRTIO_BLK_S_UNSUPP)
            }
        };
        if outcome.status == VIRTIO_BLK_S_OK {
            match req.request_type {
                RequestType::In => self.counters.read(req.data.len()),
                RequestType::Out => self.counters.write(req.data.len()),
                _ => {}
            }
        }
        if is_write && outcome.status == VIRTIO_BLK_S_OK && self.policy.write_through {
            return io_status(disk.backend().flush());
        }
        outcome
    }

    /// The byte offset of an IN or OUT request, if it and its data fit the disk.
    fn data_offset(req: &Request, disk: &Disk) -> Option<u64> {
        if req.data.len() % SECTOR_BYTES != 0 {
            return None;
        }
        let offset = req.sector.checked_mul(SECTOR_BYTES)?;
        let end = offset.checked_add(req.data.len())?;
        (end <= capacity_bytes(disk)).then_some(offset)
    }

    fn bounce(&mut self) -> &mut [u8] {
        if self.bounce.is_empty() {
            self.bounce = vec![0; BOUNCE_LEN];
        }
        &mut self.bounce
    }

    fn read(&mut self, req: &Request, mem: &GuestMemoryMmap, disk: &mut Disk) -> Outcome {
        let Some(mut offset) = Self::data_offset(req, disk) else {
            return Outcome::status(VIRTIO_BLK_S_IOERR);
        };
        let mut written = 0;
        for r in req.data.ranges() {
            // The fast path: straight from the file into the guest's pages.
            if let Some(result) =
                vm_memory::GuestMemoryBackend::get_slice(mem, r.addr, r.len as usize)
                    .ok()
                    .and_then(|slice| disk.backend().read_into_guest(&slice, offset))
            {
                if let Err(e) = result {
                    tracing::warn!("virtio-blk: reading the disk at {offset}: {e}");
                    return Outcome {
                        status: VIRTIO_BLK_S_IOERR,
                        written,
                    };
                }
                offset += r.len;
                written += r.len;
                continue;
            }
            let bounce = self.bounce();
            let mut done = 0;
            while done < r.len {
                let n = (r.len - done).min(bounce.len() as u64) as usize;
                let ok = match disk.backend().read_at(&mut bounce[..n], offset) {
                    Ok(()) => mem.write_slice(&bounce[..n], at(r.addr, done)).is_ok(),
                    Err(e) => {
                        tracing::warn!("virtio-blk: reading the disk at {offset}: {e}");
                        false
                    }
                };
                if !ok {
                    return Outcome {
                        status: VIRTIO_BLK_S_IOERR,
                        written,
                    };
                }
                done += n as u64;
                offset += n as u64;
                written += n as u64;
            }
        }
        Outcome {
            status: VIRTIO_BLK_S_OK,
            written,
        }
    }

    fn write(&mut self, req: &Request, mem: &GuestMemoryMmap, disk: &mut Disk) -> Outcome {
        let Some(mut offset) = Self::data_offset(req, disk) else {
            return Outcome::status(VIRTIO_BLK_S_IOERR);
        };
        for r in req.data.ranges() {
            if let Some(result) =
                vm_memory::GuestMemoryBackend::get_slice(mem, r.addr, r.len as usize)
                    .ok()
                    .and_then(|slice| disk.backend().write_from_guest(&slice, offset))
            {
                if let Err(e) = result {
                    tracing::warn!("virtio-blk: writing the disk at {offset}: {e}");
                    return Outcome::status(VIRTIO_BLK_S_IOERR);
                }
                offset += r.len;
                continue;
            }
            let bounce = self.bounce();
            let mut done = 0;
            while done < r.len {
                let n = (r.len - done).min(bounce.len() as u64) as usize;
                let ok = mem.read_slice(&mut bounce[..n], at(r.addr, done)).is_ok()
                    && match disk.backend().write_at(&bounce[..n], offset) {
                        Ok(()) => true,
                        Err(e) => {
                            tracing::warn!("virtio-blk: writing the disk at {offset}: {e}");
                            false
                        }
                    };
                if !ok {
                    return Outcome::status(VIRTIO_BLK_S_IOERR);
                }
                done += n as u64;
                offset += n as u64;
            }
        }
        Outcome::status(VIRTIO_BLK_S_OK)
    }

    fn get_id(&self, req: &Request, mem: &GuestMemoryMmap) -> Outcome {
        // A buffer shorter than 20 bytes gets the start of the ID.
        let mut written = 0;
        for r in req.data.ranges() {
            let rest = &self.policy.id[written as usize..];
            if rest.is_empty() {
                break;
            }
            let n = rest.len().min(r.len as usize);
            if mem.write_slice(&rest[..n], r.addr).is_err() {
                return Outcome {
                    status: VIRTIO_BLK_S_IOERR,
                    written,
                };
            }
            written += n as u64;
        }
        Outcome {
            status: VIRTIO_BLK_S_OK,
            written,
        }
    }

    fn discard_or_zero(
        &mut self,
        req: &Request,
        mem: &GuestMemoryMmap,
        disk: &mut Disk,
    ) -> Outcome {
        let len = req.data.len();
        if len == 0 || len % SEGMENT_LEN != 0 || len / SEGMENT_LEN > u64::from(MAX_SEGMENTS) {
            return Outcome::status(VIRTIO_BLK_S_IOERR);
        }
        let mut raw = vec![0u8; len as usize];
        if req.data.read_prefix(mem, &mut raw).is_err() {
            return Outcome::status(VIRTIO_BLK_S_IOERR);
        }
        let sector_at = offset_of!(virtio_blk_discard_write_zeroes, sector);
        let count_at = offset_of!(virtio_blk_discard_write_zeroes, num_sectors);
        let flags_at = offset_of!(virtio_blk_discard_write_zeroes, flags);
        let segments: Vec<(u64, u32, u32)> = raw
            .chunks_exact(SEGMENT_LEN as usize)
            .map(|s| {
                (
                    u64::from_le_bytes(s[sector_at..sector_at + 8].try_into().unwrap()),
                    u32::from_le_bytes(s[count_at..count_at + 4].try_into().unwrap()),
                    u32::from_le_bytes(s[flags_at..flags_at + 4].try_into().unwrap()),
                )
            })
            .collect();

        let discard = req.request_type == RequestType::Discard;
        // virtio 1.2, 5.2.6.2: unknown flags, and unmap on a discard, are UNSUPP.
        for &(_, _, flags) in &segments {
            if flags & !VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0
                || (discard && flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0)
            {
                return Outcome::status(VIRTIO_BLK_S_UNSUPP);
            }
        }
        let capacity = capacity_bytes(disk);
        let mut ranges = Vec::with_capacity(segments.len());
        for &(sector, count, flags) in &segments {
            let range = (count <= MAX_SEGMENT_SECTORS)
                .then(|| sector.checked_mul(SECTOR_BYTES))
                .flatten()
                .map(|offset| (offset, u64::from(count) * SECTOR_BYTES))
                .filter(|&(offset, n)| offset.checked_add(n).is_some_and(|end| end <= capacity));
            let Some((offset, n)) = range else {
                return Outcome::status(VIRTIO_BLK_S_IOERR);
            };
            ranges.push((offset, n, flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0));
        }
        for (offset, n, unmap) in ranges {
            if n == 0 {
                continue;
            }
            let result = if discard {
                disk.backend().discard(offset, n)
            } else {
                disk.backend().write_zeroes(offset, n, unmap)
            };
            if let Err(e) = result {
                tracing::warn!("virtio-blk: {:?} failed: {e}", req.request_type);
                return Outcome::status(VIRTIO_BLK_S_IOERR);
            }
        }
        Outcome::status(VIRTIO_BLK_S_OK)
    }
}

/// The bytes the guest can address: whole sectors only (`capacity` counts sectors).
pub fn capacity_bytes(disk: &Disk) -> u64 {
    disk.size() / SECTOR_BYTES * SECTOR_BYTES
}

fn io_status(result: std::io::Result<()>) -> Outcome {
    match result {
        Ok(()) => Outcome::status(VIRTIO_BLK_S_OK),
        Err(e) => {
            tracing::warn!("virtio-blk: disk I/O failed: {e}");
            Outcome::status(VIRTIO_BLK_S_IOERR)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{FileExt, MetadataExt};

    use virtio_bindings::virtio_blk::{VIRTIO_BLK_T_SCSI_CMD, VIRTIO_BLK_T_ZONE_REPORT};
    use vm_memory::Address;

    use super::super::test_support::*;
    use super::*;

    const HDR: GuestAddress = GuestAddress(DATA_START);
    const DATA: GuestAddress = GuestAddress(DATA_START + 0x1000);
    const STATUS: GuestAddress = GuestAddress(DATA_START + 0x100_000);

    fn header(mem: &GuestMemoryMmap, request_type: u32, sector: u64) {
        let mut raw = [0u8; 16];
        raw[..4].copy_from_slice(&request_type.to_le_bytes());
        raw[8..].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&raw, HDR).unwrap();
    }

    fn parse_parts(mem: &GuestMemoryMmap, parts: &[Part]) -> Result<Request, Malformed> {
        parse(chain(parts, 0), mem)
    }

    #[test]
    fn well_formed_chains_in_any_framing() {
        let mem = guest_memory();
        header(&mem, VIRTIO_BLK_T_IN, 9);
        // Header, data and status each in their own descriptor.
        let r = parse_parts(
            &mem,
            &[(HDR, 16, false), (DATA, 1024, true), (STATUS, 1, true)],
        )
        .unwrap();
        assert_eq!(r.request_type, RequestType::In);
        assert_eq!(r.sector, 9);
        assert_eq!(r.data.len(), 1024);
        assert_eq!(r.status, STATUS);

        // Data and status sharing the last descriptor.
        let r = parse_parts(&mem, &[(HDR, 16, false), (DATA, 513, true)]).unwrap();
        assert_eq!(
            r.data.ranges(),
            &[MemRange {
                addr: DATA,
                len: 512
            }]
        );
        assert_eq!(r.status, DATA.unchecked_add(512));

        // An OUT whose header and data share one descriptor; zero-length descriptors
        // anywhere are ignored.
        header(&mem, VIRTIO_BLK_T_OUT, 3);
        let r = parse_parts(
            &mem,
            &[
                (HDR, 8, false),
                (DATA, 0, false),
                (HDR.unchecked_add(8), 8 + 512, false),
                (STATUS, 1, true),
            ],
        )
        .unwrap();
        assert_eq!(r.request_type, RequestType::Out);
        assert_eq!(r.sector, 3);
        assert_eq!(
            r.data.ranges(),
            &[MemRange {
                addr: HDR.unchecked_add(16),
                len: 512
            }]
        );
    }

    #[test]
    fn malformed_chains() {
        let mem = guest_memory();
        header(&mem, VIRTIO_BLK_T_IN, 0);
        let err = |parts: &[Part]| parse_parts(&mem, parts).unwrap_err();

        // Too short for the header: answered with IOERR.
        assert_eq!(
            err(&[(HDR, 8, false), (STATUS, 1, true)]),
            Malformed {
                error: ParseError::ShortHeader(8),
                status: Some(STATUS)
            }
        );
        // No status: nothing device-writable at all.
        assert_eq!(
            err(&[(HDR, 16, false), (DATA, 512, false)]),
            Malformed {
                error: ParseError::NoStatus,
                status: None
            }
        );
        assert_eq!(
            err(&[]),
            Malformed {
                error: ParseError::NoStatus,
                status: None
            }
        );
        // The status byte outside guest memory.
        let outside = GuestAddress(MEM_SIZE as u64);
        assert_eq!(err(&[(HDR, 16, false), (outside, 1, true)]).status, None);
        // Readable after writable.
        assert_eq!(
            err(&[
                (HDR, 16, false),
                (DATA, 512, true),
                (DATA, 512, false),
                (STATUS, 1, true)
            ])
            .error,
            ParseError::ReadableAfterWritable
        );
        // Data outside guest memory, or wrapping the address space.
        assert!(matches!(
            err(&[
                (HDR, 16, false),
                (GuestAddress(MEM_SIZE as u64 - 256), 512, true),
                (STATUS, 1, true)
            ]),
            Malformed {
                error: ParseError::OutsideMemory { .. },
                status: Some(STATUS)
            }
        ));
        assert!(matches!(
            err(&[
                (HDR, 16, false),
                (GuestAddress(u64::MAX - 10), 512, true),
                (STATUS, 1, true)
            ])
            .error,
            ParseError::OutsideMemory { .. }
        ));
        assert_eq!(err(&[(GuestAddress(u64::MAX), 1, true)]).status, None);
        // Wrong direction: a read whose buffer the device could only read, a write
        // whose data the device could only write.
        assert_eq!(
            err(&[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)]).error,
            ParseError::WrongDirection(RequestType::In)
        );
        header(&mem, VIRTIO_BLK_T_OUT, 0);
        assert_eq!(
            err(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]).error,
            ParseError::WrongDirection(RequestType::Out)
        );
    }

    /// Runs one request through an executor; returns (status, used length).
    fn run(
        exec: &mut RequestExecutor,
        mem: &GuestMemoryMmap,
        disk: &mut Disk,
        request_type: u32,
        sector: u64,
        data: Option<(u32, bool)>,
    ) -> (u8, u32) {
        header(mem, request_type, sector);
        mem.write_obj(0xffu8, STATUS).unwrap();
        let mut parts = vec![(HDR, 16, false)];
        if let Some((len, writable)) = data {
            parts.push((DATA, len, writable));
        }
        parts.push((STATUS, 1, true));
        let used = exec.handle(chain(&parts, 0), mem, disk);
        (mem.read_obj(STATUS).unwrap(), used)
    }

    const OK: u8 = VIRTIO_BLK_S_OK as u8;
    const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
    const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

    fn segments(mem: &GuestMemoryMmap, segs: &[(u64, u32, u32)]) -> u32 {
        for (i, &(sector, count, flags)) in segs.iter().enumerate() {
            let mut raw = [0u8; 16];
            raw[..8].copy_from_slice(&sector.to_le_bytes());
            raw[8..12].copy_from_slice(&count.to_le_bytes());
            raw[12..].copy_from_slice(&flags.to_le_bytes());
            mem.write_slice(&raw, DATA.unchecked_add(16 * i as u64))
                .unwrap();
        }
        16 * segs.len() as u32
    }

    /// Every request type against one disk; `reopen` gives a fresh view of the image
    /// to check what reached the file.
    fn all_request_types(disk: &mut Disk) {
        let mem = guest_memory();
        let mut exec = RequestExecutor::new(all_features_policy(false));
        let sectors = disk.size() / 512;

        // OUT then IN, 3 sectors, at the start and at the very end.
        let pattern: Vec<u8> = (0..1536u32).map(|i| (i % 251) as u8).collect();
        for sector in [0, sectors - 3] {
            mem.write_slice(&pattern, DATA).unwrap();
            assert_eq!(
                run(
                    &mut exec,
                    &mem,
                    disk,
                    VIRTIO_BLK_T_OUT,
                    sector,
                    Some((1536, false))
                ),
                (OK, 1)
            );
            mem.write_slice(&[0u8; 1536], DATA).unwrap();
            assert_eq!(
                run(
                    &mut exec,
                    &mem,
                    disk,
                    VIRTIO_BLK_T_IN,
                    sector,
                    Some((1536, true))
                ),
                (OK, 1537)
            );
            let mut back = vec![0u8; 1536];
            mem.read_slice(&mut back, DATA).unwrap();
            assert_eq!(back, pattern);
        }

        // Beyond capacity, overflowing sector math, unaligned lengths: IOERR, nothing read.
        for (sector, len) in [
            (sectors - 2, 1536),
            (sectors, 512),
            (u64::MAX, 512),
            (u64::MAX / 512 + 1, 512),
            (0, 100),
        ] {
            assert_eq!(
                run(
                    &mut exec,
                    &mem,
                    disk,
                    VIRTIO_BLK_T_IN,
                    sector,
                    Some((len, true))
                ),
                (IOERR, 1),
                "IN {sector} {len}"
            );
            assert_eq!(
                run(
                    &mut exec,
                    &mem,
                    disk,
                    VIRTIO_BLK_T_OUT,
                    sector,
                    Some((len, false))
                ),
                (IOERR, 1),
                "OUT {sector} {len}"
            );
        }
        // A zero-length read or write is fine.
        assert_eq!(
            run(&mut exec, &mem, disk, VIRTIO_BLK_T_IN, 0, None),
            (OK, 1)
        );

        // FLUSH.
        assert_eq!(
            run(&mut exec, &mem, disk, VIRTIO_BLK_T_FLUSH, 0, None),
            (OK, 1)
        );

        // GET_ID: 20 bytes, or as many as fit.
        assert_eq!(
            run(
                &mut exec,
                &mem,
                disk,
                VIRTIO_BLK_T_GET_ID,
                0,
                Some((20, true))
            ),
            (OK, 21)
        );
        let mut id = [0u8; 20];
        mem.read_slice(&mut id, DATA).unwrap();
        assert_eq!(&id, b"test-disk-id\0\0\0\0\0\0\0\0");
        assert_eq!(
            run(
                &mut exec,
                &mem,
                disk,
                VIRTIO_BLK_T_GET_ID,
                0,
                Some((4, true))
            ),
            (OK, 5)
        );

        // WRITE_ZEROES with and without unmap, DISCARD: the ranges read back as zeroes
        // (discard: unspecified, but our backends zero too).
        for (request_type, flags) in [
            (VIRTIO_BLK_T_WRITE_ZEROES, 0),
            (
                VIRTIO_BLK_T_WRITE_ZEROES,
                VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
            ),
            (VIRTIO_BLK_T_DISCARD, 0),
        ] {
            mem.write_slice(&pattern, DATA).unwrap();
            assert_eq!(
                run(
                    &mut exec,
                    &mem,
                    disk,
                    VIRTIO_BLK_T_OUT,
                    0,
                    Some((1536, false))
                ),
                (OK, 1)
            );
            let len = segments(&mem, &[(0, 1, flags), (2, 1, flags)]);
            assert_eq!(
                run(&mut exec, &mem, disk, request_type, 0, Some((len, false))),
                (OK, 1)
            );
            assert_eq!(
                run(
                    &mut exec,
                    &mem,
                    disk,
                    VIRTIO_BLK_T_IN,
                    0,
                    Some((1536, true))
                ),
                (OK, 1537)
            );
            let mut back = vec![0u8; 1536];
            mem.read_slice(&mut back, DATA).unwrap();
            if request_type == VIRTIO_BLK_T_WRITE_ZEROES {
                assert_eq!(&back[..512], &[0; 512][..]);
                assert_eq!(&back[1024..], &[0; 512][..]);
            }
            assert_eq!(
                &back[512..1024],
                &pattern[512..1024],
                "the middle sector stays"
            );
        }

        // Discard/write-zeroes checks: unknown flags and unmap on discard are UNSUPP;
        // ranges beyond capacity, overflowing, too long, too many segments, misshapen
        // data are IOERR.
        let len = segments(&mem, &[(0, 1, 2)]);
        assert_eq!(
            run(
                &mut exec,
                &mem,
                disk,
                VIRTIO_BLK_T_WRITE_ZEROES,
                0,
                Some((len, false))
            )
            .0,
            UNSUPP
        );
        let len = segments(&mem, &[(0, 1, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)]);
        assert_eq!(
            run(
                &mut exec,
                &mem,
                disk,
                VIRTIO_BLK_T_DISCARD,
                0,
                Some((len, false))
            )
            .0,
            UNSUPP
        );
        for segs in [
            vec![(sectors, 1, 0)],
            vec![(sectors - 1, 2, 0)],
            vec![(u64::MAX, 1, 0)],
            vec![(u64::MAX / 512, 2, 0)],
            vec![(0, MAX_SEGMENT_SECTORS + 1, 0)],
            vec![(0, 1, 0); MAX_SEGMENTS as usize + 1],
        ] {
            let len = segments(&mem, &segs);
            for t in [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES] {
                assert_eq!(
                    run(&mut exec, &mem, disk, t, 0, Some((len, false))).0,
                    IOERR,
                    "{t} {segs:?}"
                );
            }
        }
        for len in [0, 15, 17] {
            let data = (len > 0).then_some((len, false));
            assert_eq!(
                run(&mut exec, &mem, disk, VIRTIO_BLK_T_DISCARD, 0, data).0,
                IOERR
            );
        }

        // Types we do not implement.
        for t in [VIRTIO_BLK_T_SCSI_CMD, VIRTIO_BLK_T_ZONE_REPORT, 0xdead_beef] {
            assert_eq!(run(&mut exec, &mem, disk, t, 0, None), (UNSUPP, 1));
        }

        // Discard and write-zeroes the driver did not negotiate.
        let mut plain = RequestExecutor::new(RequestPolicy {
            discard: false,
            write_zeroes: false,
            ..all_features_policy(false)
        });
        let len = segments(&mem, &[(0, 1, 0)]);
        for t in [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES] {
            assert_eq!(
                run(&mut plain, &mem, disk, t, 0, Some((len, false))).0,
                UNSUPP
            );
        }
    }

    #[test]
    fn all_request_types_on_raw() {
        let img = raw_image(1 << 20);
        all_request_types(&mut open(img.as_path(), false));
    }

    #[test]
    fn all_request_types_on_qcow2() {
        let img = qcow2_image(1 << 20);
        let mut disk = open(img.as_path(), false);
        all_request_types(&mut disk);
        drop(disk);
        qemu_img(&["check", "-q"], img.as_path(), None);
    }

    #[test]
    fn read_only_disks_refuse_every_write() {
        let img = raw_image(64 << 10);
        img.as_file().write_all_at(&[0x5a; 512], 0).unwrap();
        let mut disk = open(img.as_path(), true);
        let mem = guest_memory();
        // Even an executor that believes discard was negotiated.
        let mut exec = RequestExecutor::new(all_features_policy(true));
        mem.write_slice(&[1u8; 512], DATA).unwrap();
        assert_eq!(
            run(
                &mut exec,
                &mem,
                &mut disk,
                VIRTIO_BLK_T_OUT,
                0,
                Some((512, false))
            ),
            (IOERR, 1)
        );
        let len = segments(&mem, &[(0, 1, 0)]);
        for t in [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES] {
            assert_eq!(
                run(&mut exec, &mem, &mut disk, t, 0, Some((len, false))),
                (IOERR, 1)
            );
        }
        let mut back = [0u8; 512];
        img.as_file().read_exact_at(&mut back, 0).unwrap();
        assert_eq!(back, [0x5a; 512]);
        // Reads, flushes and GET_ID still work.
        assert_eq!(
            run(
                &mut exec,
                &mem,
                &mut disk,
                VIRTIO_BLK_T_IN,
                0,
                Some((512, true))
            ),
            (OK, 513)
        );
        assert_eq!(
            run(&mut exec, &mem, &mut disk, VIRTIO_BLK_T_FLUSH, 0, None),
            (OK, 1)
        );
        assert_eq!(
            run(
                &mut exec,
                &mem,
                &mut disk,
                VIRTIO_BLK_T_GET_ID,
                0,
                Some((20, true))
            ),
            (OK, 21)
        );
    }

    #[test]
    fn discard_punches_holes_in_raw_files() {
        let img = raw_image(4 << 20);
        img.as_file().write_all_at(&vec![0xa5; 4 << 20], 0).unwrap();
        img.as_file().sync_all().unwrap();
        let blocks = || img.as_file().metadata().unwrap().blocks();
        let before = blocks();
        assert!(before >= (4 << 20) / 512, "{before}");

        let mut disk = open(img.as_path(), false);
        let mem = guest_memory();
        let mut exec = RequestExecutor::new(all_features_policy(false));
        // Discard the first 2 MiB, write-zeroes+unmap the next 1 MiB.
        let len = segments(&mem, &[(0, 4096, 0)]);
        assert_eq!(
            run(
                &mut exec,
                &mem,
                &mut disk,
                VIRTIO_BLK_T_DISCARD,
                0,
                Some((len, false))
            )
            .0,
            OK
        );
        let after_discard = blocks();
        assert!(
            after_discard <= before - 4096,
            "{before} -> {after_discard}"
        );
        let len = segments(&mem, &[(4096, 2048, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)]);
        assert_eq!(
            run(
                &mut exec,
                &mem,
                &mut disk,
                VIRTIO_BLK_T_WRITE_ZEROES,
                0,
                Some((len, false))
            )
            .0,
            OK
        );
        assert!(blocks() <= after_discard - 2048);
        // The size never changes, the rest is intact.
        assert_eq!(img.as_file().metadata().unwrap().len(), 4 << 20);
        let mut tail = [0u8; 512];
        img.as_file()
            .read_exact_at(&mut tail, (4 << 20) - 512)
            .unwrap();
        assert_eq!(tail, [0xa5; 512]);
    }

    #[test]
    fn write_through_when_flush_is_not_negotiated() {
        // A qcow2 image's metadata lives in imago's caches until flushed: with
        // write-through, each write is on disk (readable by qemu-img) at completion.
        let img = qcow2_image(1 << 20);
        let mut disk = open(img.as_path(), false);
        let mem = guest_memory();
        let mut exec = RequestExecutor::new(RequestPolicy {
            write_through: true,
            ..all_features_policy(false)
        });
        mem.write_slice(&[0x42; 512], DATA).unwrap();
        assert_eq!(
            run(
                &mut exec,
                &mem,
                &mut disk,
                VIRTIO_BLK_T_OUT,
                5,
                Some((512, false))
            )
            .0,
            OK
        );
        let raw = TempFileRaw::convert(&img);
        assert_eq!(&raw[5 * 512..6 * 512], &[0x42; 512][..]);
    }

    #[test]
    fn flush_makes_qcow2_writes_visible_on_disk() {
        let img = qcow2_image(1 << 20);
        let mut disk = open(img.as_path(), false);
        let mem = guest_memory();
        let mut exec = RequestExecutor::new(all_features_policy(false));
        mem.write_slice(&[0x17; 1024], DATA).unwrap();
        assert_eq!(
            run(
                &mut exec,
                &mem,
                &mut disk,
                VIRTIO_BLK_T_OUT,
                64,
                Some((1024, false))
            )
            .0,
            OK
        );
        assert_eq!(
            run(&mut exec, &mem, &mut disk, VIRTIO_BLK_T_FLUSH, 0, None).0,
            OK
        );
        // While we still hold the image (qemu-img -U reads past our lock).
        let raw = TempFileRaw::convert(&img);
        assert_eq!(&raw[64 * 512..66 * 512], &[0x17; 1024][..]);
        drop(disk);
    }

    /// `qemu-img convert -U -O raw` of an image, read back.
    struct TempFileRaw;
    impl TempFileRaw {
        fn convert(img: &vmm_sys_util::tempfile::TempFile) -> Vec<u8> {
            let out = vmm_sys_util::tempfile::TempFile::new().unwrap();
            let status = std::process::Command::new("qemu-img")
                .args(["convert", "-U", "-f", "qcow2", "-O", "raw"])
                .arg(img.as_path())
                .arg(out.as_path())
                .output()
                .unwrap();
            assert!(status.status.success());
            std::fs::read(out.as_path()).unwrap()
        }
    }
}
