//! Vsock packets (virtio 1.2, 5.10.6 "Device Operation"): `struct virtio_vsock_hdr`, 44
//! little-endian bytes, followed by `len` bytes of payload, read from a tx descriptor
//! chain or written into an rx one. Every length the guest gives is checked against the
//! chain it came in; nothing here trusts the guest.
//!
//! virtio-bindings has no vsock module: the constants are the spec's, named as in
//! Linux's `include/uapi/linux/virtio_vsock.h`.

use std::io::{Read, Write};

use virtio_queue::DescriptorChain;
use vm_memory::GuestMemoryMmap;

/// The host's CID: every packet the guest sends goes to it (5.10.4).
pub const VMADDR_CID_HOST: u64 = 2;

/// `virtio_vsock_hdr.type`: stream sockets, the only type offered.
pub const VIRTIO_VSOCK_TYPE_STREAM: u16 = 1;
/// Seqpacket sockets (needs VIRTIO_VSOCK_F_SEQPACKET, not offered).
pub const VIRTIO_VSOCK_TYPE_SEQPACKET: u16 = 2;

/// `virtio_vsock_hdr.op` (5.10.6).
pub const VIRTIO_VSOCK_OP_INVALID: u16 = 0;
pub const VIRTIO_VSOCK_OP_REQUEST: u16 = 1;
pub const VIRTIO_VSOCK_OP_RESPONSE: u16 = 2;
pub const VIRTIO_VSOCK_OP_RST: u16 = 3;
pub const VIRTIO_VSOCK_OP_SHUTDOWN: u16 = 4;
pub const VIRTIO_VSOCK_OP_RW: u16 = 5;
pub const VIRTIO_VSOCK_OP_CREDIT_UPDATE: u16 = 6;
pub const VIRTIO_VSOCK_OP_CREDIT_REQUEST: u16 = 7;

/// `flags` of a SHUTDOWN: the sender will receive no more data.
pub const VIRTIO_VSOCK_SHUTDOWN_F_RECEIVE: u32 = 1;
/// `flags` of a SHUTDOWN: the sender will send no more data.
pub const VIRTIO_VSOCK_SHUTDOWN_F_SEND: u32 = 2;

/// `struct virtio_vsock_event.id` (5.10.6.7): the device's connections are gone (after
/// a migration or a restore); the driver resets its sockets and re-reads the CID.
pub const VIRTIO_VSOCK_EVENT_TRANSPORT_RESET: u32 = 0;

/// Size of `struct virtio_vsock_hdr`.
pub const HDR_LEN: usize = 44;

// Field offsets in the header.
const OFF_SRC_CID: usize = 0;
const OFF_DST_CID: usize = 8;
const OFF_SRC_PORT: usize = 16;
const OFF_DST_PORT: usize = 20;
const OFF_LEN: usize = 24;
const OFF_TYPE: usize = 28;
const OFF_OP: usize = 30;
const OFF_FLAGS: usize = 32;
const OFF_BUF_ALLOC: usize = 36;
const OFF_FWD_CNT: usize = 40;

/// `struct virtio_vsock_hdr`, decoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    /// Payload bytes after the header.
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    /// The sender's receive buffer for this connection, in bytes.
    pub buf_alloc: u32,
    /// Payload bytes the sender has consumed on this connection (wrapping).
    pub fwd_cnt: u32,
}

fn le_u16(b: &[u8; HDR_LEN], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le_u32(b: &[u8; HDR_LEN], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le_u64(b: &[u8; HDR_LEN], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

impl PacketError {
    /// The header of a packet whose payload is wrong: its connection is reset.
    pub fn header(&self) -> Option<&Header> {
        match self {
            PacketError::ShortPayload { header, .. }
            | PacketError::PayloadTooLarge { header, .. } => Some(header),
            _ => None,
        }
    }
}

impl Header {
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Self {
        Header {
            src_cid: le_u64(b, OFF_SRC_CID),
            dst_cid: le_u64(b, OFF_DST_CID),
            src_port: le_u32(b, OFF_SRC_PORT),
            dst_port: le_u32(b, OFF_DST_PORT),
            len: le_u32(b, OFF_LEN),
            type_: le_u16(b, OFF_TYPE),
            op: le_u16(b, OFF_OP),
            flags: le_u32(b, OFF_FLAGS),
            buf_alloc: le_u32(b, OFF_BUF_ALLOC),
            fwd_cnt: le_u32(b, OFF_FWD_CNT),
        }
    }

    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[OFF_SRC_CID..OFF_SRC_CID + 8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[OFF_DST_CID..OFF_DST_CID + 8].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[OFF_SRC_PORT..OFF_SRC_PORT + 4].copy_from_slice(&self.src_port.to_le_bytes());
        b[OFF_DST_PORT..OFF_DST_PORT + 4].copy_from_slice(&self.dst_port.to_le_bytes());
        b[OFF_LEN..OFF_LEN + 4].copy_from_slice(&self.len.to_le_bytes());
        b[OFF_TYPE..OFF_TYPE + 2].copy_from_slice(&self.type_.to_le_bytes());
        b[OFF_OP..OFF_OP + 2].copy_from_slice(&self.op.to_le_bytes());
        b[OFF_FLAGS..OFF_FLAGS + 4].copy_from_slice(&self.flags.to_le_bytes());
        b[OFF_BUF_ALLOC..OFF_BUF_ALLOC + 4].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[OFF_FWD_CNT..OFF_FWD_CNT + 4].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// Why a tx chain is not a packet.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("the descriptor chain is not in guest memory or is malformed")]
    BadChain,
    #[error("the chain holds {have} readable bytes, less than the {HDR_LEN}-byte header")]
    ShortHeader { have: usize },
    #[error("the header says {} payload bytes but the chain holds {have}", header.len)]
    ShortPayload { header: Header, have: usize },
    #[error("a {}-byte payload is more than the {max} bytes a packet may carry", header.len)]
    PayloadTooLarge { header: Header, max: usize },
    #[error("the rx buffer holds {have} writable bytes, less than the {HDR_LEN}-byte header")]
    RxBufferTooSmall { have: usize },
    #[error("cannot write the rx buffer: {0}")]
    RxWrite(String),
}

/// Reads a tx packet: the header, and its payload into `payload` (cleared first). A
/// payload longer than `max_payload`, or than what the chain holds, is an error.
pub fn read_tx(
    chain: DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    max_payload: usize,
    payload: &mut Vec<u8>,
) -> Result<Header, PacketError> {
    payload.clear();
    let mut reader = chain.reader(mem).map_err(|_| PacketError::BadChain)?;
    let have = reader.available_bytes();
    if have < HDR_LEN {
        return Err(PacketError::ShortHeader { have });
    }
    let mut raw = [0u8; HDR_LEN];
    reader
        .read_exact(&mut raw)
        .map_err(|_| PacketError::BadChain)?;
    let header = Header::from_bytes(&raw);
    // Only RW carries a payload (5.10.6.3); other ops' `len` is meaningless and ignored.
    if header.op != VIRTIO_VSOCK_OP_RW || header.len == 0 {
        return Ok(header);
    }
    let len = header.len as usize;
    if len > max_payload {
        return Err(PacketError::PayloadTooLarge {
            header,
            max: max_payload,
        });
    }
    let have = reader.available_bytes();
    if len > have {
        return Err(PacketError::ShortPayload { header, have });
    }
    payload.resize(len, 0);
    reader
        .read_exact(payload)
        .map_err(|_| PacketError::BadChain)?;
    Ok(header)
}

/// How many payload bytes an rx chain has room for after the header; None if it cannot
/// even hold a header (or is not in guest memory).
pub fn rx_room(chain: &DescriptorChain<&GuestMemoryMmap>, mem: &GuestMemoryMmap) -> Option<usize> {
    let writer = chain.clone().writer(mem).ok()?;
    writer.available_bytes().checked_sub(HDR_LEN)
}

/// Writes `header` (its `len` set to the payload's) and `payload` into an rx chain;
/// returns the bytes written, for the used ring.
pub fn write_rx(
    chain: DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    header: &Header,
    payload: &[u8],
) -> Result<u32, PacketError> {
    let mut writer = chain.writer(mem).map_err(|_| PacketError::BadChain)?;
    let have = writer.available_bytes();
    if have < HDR_LEN + payload.len() {
        return Err(PacketError::RxBufferTooSmall { have });
    }
    let mut header = *header;
    header.len = payload.len() as u32;
    writer
        .write_all(&header.to_bytes())
        .and_then(|()| writer.write_all(payload))
        .map_err(|e| PacketError::RxWrite(e.to_string()))?;
    Ok((HDR_LEN + payload.len()) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueOwnedT, QueueT};
    use vm_memory::{Bytes, GuestAddress};

    const WRITE: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;

    fn sample() -> Header {
        Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1025,
            dst_port: 80,
            len: 5,
            type_: VIRTIO_VSOCK_TYPE_STREAM,
            op: VIRTIO_VSOCK_OP_RW,
            flags: 0,
            buf_alloc: 4096,
            fwd_cnt: 17,
        }
    }

    #[test]
    fn header_round_trips_and_is_little_endian() {
        let h = sample();
        let b = h.to_bytes();
        assert_eq!(&b[0..8], &3u64.to_le_bytes());
        assert_eq!(&b[30..32], &VIRTIO_VSOCK_OP_RW.to_le_bytes());
        assert_eq!(Header::from_bytes(&b), h);
    }

    /// Builds one chain from `descs` ((addr, len, flags)) and hands it to `f`.
    fn with_chain<R>(
        descs: &[(u64, u32, u16)],
        f: impl FnOnce(DescriptorChain<&GuestMemoryMmap>, &GuestMemoryMmap) -> R,
    ) -> R {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mock = MockSplitQueue::new(&mem, 16);
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .map(|&(a, l, fl)| RawDescriptor::from(SplitDescriptor::new(a, l, fl, 0)))
            .collect();
        mock.build_desc_chain(&raw).unwrap();
        let mut q: Queue = mock.create_queue().unwrap();
        q.set_ready(true);
        let chain = q.iter(&mem).unwrap().next().unwrap();
        // The memory must outlive the chain: put the pattern there through `f`.
        f(chain, &mem)
    }

    #[test]
    fn header_and_payload_split_over_descriptors_are_read() {
        with_chain(
            &[(0x8000, 20, 0), (0x9000, 24, 0), (0xa000, 5, 0)],
            |c, mem| {
                let b = sample().to_bytes();
                mem.write_slice(&b[..20], GuestAddress(0x8000)).unwrap();
                mem.write_slice(&b[20..], GuestAddress(0x9000)).unwrap();
                mem.write_slice(b"hello", GuestAddress(0xa000)).unwrap();
                let mut payload = Vec::new();
                let h = read_tx(c, mem, 64, &mut payload).unwrap();
                assert_eq!(h, sample());
                assert_eq!(payload, b"hello");
            },
        );
    }

    #[test]
    fn a_length_beyond_the_chain_is_an_error() {
        with_chain(&[(0x8000, 44, 0), (0xa000, 4, 0)], |c, mem| {
            mem.write_slice(&sample().to_bytes(), GuestAddress(0x8000))
                .unwrap();
            let mut payload = Vec::new();
            assert_eq!(
                read_tx(c, mem, 64, &mut payload),
                Err(PacketError::ShortPayload {
                    header: sample(),
                    have: 4
                })
            );
        });
    }

    #[test]
    fn a_payload_over_the_limit_is_refused_before_it_is_read() {
        with_chain(&[(0x8000, 44, 0), (0xa000, 4096, 0)], |c, mem| {
            let h = Header {
                len: 4000,
                ..sample()
            };
            mem.write_slice(&h.to_bytes(), GuestAddress(0x8000))
                .unwrap();
            let mut payload = Vec::new();
            assert!(matches!(
                read_tx(c, mem, 1024, &mut payload),
                Err(PacketError::PayloadTooLarge { .. })
            ));
            assert!(payload.is_empty());
        });
    }

    #[test]
    fn short_headers_and_chains_outside_memory_are_errors() {
        with_chain(&[(0x8000, 40, 0)], |c, mem| {
            assert_eq!(
                read_tx(c, mem, 64, &mut Vec::new()),
                Err(PacketError::ShortHeader { have: 40 })
            );
        });
        with_chain(&[(0xfff_0000, 44, 0)], |c, mem| {
            assert_eq!(
                read_tx(c, mem, 64, &mut Vec::new()),
                Err(PacketError::BadChain)
            );
        });
    }

    #[test]
    fn rx_packets_fill_writable_buffers_and_refuse_small_ones() {
        with_chain(&[(0x8000, 30, WRITE), (0x9000, 100, WRITE)], |c, mem| {
            assert_eq!(rx_room(&c, mem), Some(130 - HDR_LEN));
            let n = write_rx(c, mem, &sample(), b"abc").unwrap();
            assert_eq!(n as usize, HDR_LEN + 3);
            let mut b = [0u8; HDR_LEN];
            mem.read_slice(&mut b[..30], GuestAddress(0x8000)).unwrap();
            mem.read_slice(&mut b[30..], GuestAddress(0x9000)).unwrap();
            assert_eq!(Header::from_bytes(&b).len, 3);
        });
        with_chain(&[(0x8000, 40, WRITE)], |c, mem| {
            assert_eq!(rx_room(&c, mem), None);
            assert!(write_rx(c, mem, &sample(), b"").is_err());
        });
    }
}
