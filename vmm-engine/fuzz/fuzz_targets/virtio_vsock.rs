//! A hostile guest against virtio-vsock: arbitrary tx descriptor chains (in real guest
//! memory, through the worker's tx drain, the packet parser and the muxer) and rx
//! buffers, then a structured stream of packets straight into the connection layer
//! (REQUESTs to a host listener that accepts, RW with any length and credit, SHUTDOWN
//! flags, RST, credit, bad CIDs and types) interleaved with host clients' CONNECT lines
//! and host writes and closes. Nothing may panic or hang, the used rings never get more
//! entries than were made available, and the muxer's state stays within its caps.
//!
//! Input:
//! - byte 0: how many tx heads are available (mod 2 * QUEUE_SIZE); byte 1: how many rx
//!   buffers (mod QUEUE_SIZE + 1); byte 2: rx buffer size (x 64, + 8); byte 3: how many
//!   structured events follow.
//! - the structured events, 16 bytes each (see `structured`), first so that short
//!   inputs reach the connection layer;
//! - QUEUE_SIZE tx descriptors of 12 bytes (addr, len, flags, next, as in
//!   `virtio_blk_request`), then QUEUE_SIZE tx available-ring entries;
//! - the rest: the data area (headers and payloads the descriptors point at).
#![no_main]

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use vireo_vmm::devices::virtio::vsock::connection::BUF_ALLOC;
use vireo_vmm::devices::virtio::vsock::muxer::{Muxer, MAX_CONNECTIONS, TOKEN_LISTENER};
use vireo_vmm::devices::virtio::vsock::packet::*;
use vireo_vmm::devices::virtio::vsock::Shared;
use vireo_vmm::devices::virtio::Interrupt;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

const QUEUE_SIZE: u16 = 16;
const MEM_SIZE: u64 = 1 << 20;
const CID: u64 = 3;
/// Queue rings: tx at 0x0, rx at 0x4000, event at 0x8000 (desc, avail +0x1000, used
/// +0x2000 each); the data area after them.
const TX: u64 = 0x0;
const RX: u64 = 0x4000;
const EV: u64 = 0x8000;
const DATA_AREA: u64 = 0x10000;
/// The host port a listener serves (guest REQUESTs to it connect).
const HOST_PORT: u32 = 80;

struct CountingInterrupt(AtomicUsize);

impl Interrupt for CountingInterrupt {
    fn signal_used_queue(&self, _queue: u16) -> std::io::Result<()> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn signal_config_change(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The VM's socket and the host listener at `PATH_80`, made once per process.
struct Host {
    path: PathBuf,
    listener: UnixListener,
    port80: UnixListener,
}

fn host() -> &'static Host {
    static HOST: OnceLock<Host> = OnceLock::new();
    HOST.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("vireo-fuzz-vsock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("v.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let port80 = UnixListener::bind(format!("{}_{HOST_PORT}", path.display())).unwrap();
        port80.set_nonblocking(true).unwrap();
        Host {
            path,
            listener,
            port80,
        }
    })
}

fn take<'a>(input: &mut &'a [u8], n: usize) -> &'a [u8] {
    let n = n.min(input.len());
    let (head, rest) = input.split_at(n);
    *input = rest;
    head
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut raw = [0u8; 4];
    for (i, byte) in raw.iter_mut().enumerate() {
        *byte = b.get(at + i).copied().unwrap_or(0);
    }
    u32::from_le_bytes(raw)
}

fn queue(base: u64) -> Queue {
    let mut q = Queue::new(QUEUE_SIZE).unwrap();
    q.set_size(QUEUE_SIZE);
    q.try_set_desc_table_address(GuestAddress(base)).unwrap();
    q.try_set_avail_ring_address(GuestAddress(base + 0x1000))
        .unwrap();
    q.try_set_used_ring_address(GuestAddress(base + 0x2000))
        .unwrap();
    q.set_ready(true);
    q
}

fn write_desc(
    mem: &GuestMemoryMmap,
    table: u64,
    i: u16,
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
) {
    let entry = table + 16 * u64::from(i);
    mem.write_obj(addr, GuestAddress(entry)).unwrap();
    mem.write_obj(len, GuestAddress(entry + 8)).unwrap();
    mem.write_obj(flags, GuestAddress(entry + 12)).unwrap();
    mem.write_obj(next, GuestAddress(entry + 14)).unwrap();
}

/// One structured event: 16 bytes.
/// - b[0] % 12: 0..=7 a packet with op b[0] % 8, 8 a bad-CID packet, 9 a seqpacket
///   packet, 10 a host client CONNECTs to guest port b[2], 11 the host side writes to
///   or closes its streams (b[1] picks).
/// - b[1]: guest port (small, so packets hit live connections); b[2]: host port (80 or
///   other); b[3]: flags; b[4..8] buf_alloc; b[8..12] fwd_cnt; b[12..14] payload length.
fn structured(
    muxer: &mut Muxer,
    events: &[u8],
    clients: &mut Vec<UnixStream>,
    accepted: &mut Vec<UnixStream>,
) {
    let mut payload_in = vec![0xabu8; 64 << 10];
    let mut out = Vec::new();
    for b in events.chunks_exact(16) {
        let kind = b[0] % 12;
        let guest_port = u32::from(b[1] % 8);
        let host_port = if b[2] & 1 == 0 {
            HOST_PORT
        } else {
            u32::from(b[2])
        };
        match kind {
            0..=9 => {
                let mut h = Header {
                    src_cid: CID,
                    dst_cid: VMADDR_CID_HOST,
                    src_port: guest_port,
                    dst_port: host_port,
                    len: 0,
                    type_: VIRTIO_VSOCK_TYPE_STREAM,
                    op: u16::from(b[0] % 8),
                    flags: u32::from(b[3] % 4),
                    buf_alloc: u32_at(b, 4),
                    fwd_cnt: u32_at(b, 8),
                };
                if kind == 8 {
                    h.src_cid = u64::from(b[3]);
                }
                if kind == 9 {
                    h.type_ = VIRTIO_VSOCK_TYPE_SEQPACKET;
                }
                let len = (usize::from(u16::from_le_bytes([b[12], b[13]]))
                    % (payload_in.len() + 1))
                    .min(BUF_ALLOC as usize);
                h.len = len as u32;
                payload_in.truncate(len.max(1));
                payload_in.resize(64 << 10, 0xab);
                muxer.handle_tx(&h, &payload_in[..len]);
            }
            10 => {
                if let Ok(mut c) = UnixStream::connect(&host().path) {
                    let _ = c.write_all(format!("CONNECT {}\n", b[2]).as_bytes());
                    let _ = c.set_nonblocking(true);
                    clients.push(c);
                }
                muxer.fd_ready(TOKEN_LISTENER, EventSet::IN);
            }
            _ => {
                // The host side acts: write to, or drop, one of its streams.
                let all = clients.len() + accepted.len();
                if all > 0 {
                    let i = usize::from(b[1]) % all;
                    let s = if i < clients.len() {
                        &mut clients[i]
                    } else {
                        &mut accepted[i - clients.len()]
                    };
                    if b[3] & 1 == 0 {
                        let _ = s.write(&[b[4]; 100]);
                    } else if i < clients.len() {
                        clients.swap_remove(i);
                    } else {
                        accepted.swap_remove(i - clients.len());
                    }
                }
            }
        }
        while let Ok((s, _)) = host().port80.accept() {
            accepted.push(s);
        }
        // Every stream's events, as an edge-triggered epoll would deliver them.
        for token in 0..64u32 {
            muxer.fd_ready(16 + token, EventSet::IN | EventSet::OUT);
        }
        // What the guest would receive, into rx buffers of a size from the input.
        let room = usize::from(b[14]) * 64;
        let mut n = 0;
        while muxer.has_rx_work() && n < 4 * MAX_CONNECTIONS {
            if muxer.next_rx(room, &mut out).is_none() {
                break;
            }
            assert!(out.len() <= room, "payload beyond the rx buffer");
            n += 1;
        }
        assert!(muxer.connection_count() <= MAX_CONNECTIONS);
    }
}

fuzz_target!(|input: &[u8]| {
    let mut input = input;
    let head = take(&mut input, 4);
    let events = take(
        &mut input,
        16 * usize::from(head.get(3).copied().unwrap_or(0)),
    );
    let tx_avail = u16::from(head.first().copied().unwrap_or(1)) % (2 * QUEUE_SIZE);
    let rx_bufs = u16::from(head.get(1).copied().unwrap_or(4)) % (QUEUE_SIZE + 1);
    let rx_len = u32::from(head.get(2).copied().unwrap_or(64)) * 64 + 8;

    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
    let descs = take(&mut input, 12 * usize::from(QUEUE_SIZE));
    for i in 0..QUEUE_SIZE {
        let at = 12 * usize::from(i);
        let raw_addr = u32_at(descs, at);
        let addr = if raw_addr < 1 << 31 {
            DATA_AREA + u64::from(raw_addr) % (MEM_SIZE - DATA_AREA)
        } else {
            u64::from(raw_addr)
                .wrapping_mul(0x1_0000_0001)
                .rotate_left(raw_addr & 63)
        };
        let raw_len = u32_at(descs, at + 4);
        let len = if raw_len & 1 << 31 != 0 {
            raw_len
        } else {
            raw_len % (1 << 18)
        };
        let flags = u16::from(descs.get(at + 8).copied().unwrap_or(0));
        let next = u16::from(descs.get(at + 9).copied().unwrap_or(0));
        write_desc(&mem, TX, i, addr, len, flags, next);
    }
    let heads = take(&mut input, usize::from(QUEUE_SIZE));
    for i in 0..QUEUE_SIZE {
        let h = u16::from(heads.get(usize::from(i)).copied().unwrap_or(0));
        mem.write_obj(h, GuestAddress(TX + 0x1000 + 4 + 2 * u64::from(i)))
            .unwrap();
    }
    mem.write_obj(tx_avail, GuestAddress(TX + 0x1000 + 2))
        .unwrap();
    let data = take(&mut input, 4096);
    mem.write_slice(data, GuestAddress(DATA_AREA)).unwrap();
    // rx buffers: writable, in the upper half of memory.
    for i in 0..rx_bufs {
        let addr = MEM_SIZE / 2 + u64::from(i) * 0x4000;
        write_desc(&mem, RX, i, addr, rx_len.min(0x4000), 2, 0);
        mem.write_obj(i, GuestAddress(RX + 0x1000 + 4 + 2 * u64::from(i)))
            .unwrap();
    }
    mem.write_obj(rx_bufs, GuestAddress(RX + 0x1000 + 2))
        .unwrap();

    let interrupt = Arc::new(CountingInterrupt(AtomicUsize::new(0)));
    let listener = host().listener.try_clone().unwrap();
    let mut muxer = Muxer::new(CID, &host().path, listener).unwrap();
    let mut clients = Vec::new();
    let mut accepted = Vec::new();
    structured(&mut muxer, events, &mut clients, &mut accepted);

    // The same muxer behind the worker, with the chains from the input.
    let mut worker = vireo_vmm::devices::virtio::vsock::worker::VsockWorker {
        mem: mem.clone(),
        interrupt: interrupt.clone(),
        rxq: queue(RX),
        txq: queue(TX),
        evq: queue(EV),
        muxer,
        shared: Shared::new().unwrap(),
        event_pending: true,
        scratch: Vec::new(),
        bad_packets: 0,
    };
    let _ = worker.process_tx();
    let _ = worker.process_rx();
    let _ = worker.process_event();
    let tx_used: u16 = mem.read_obj(GuestAddress(TX + 0x2000 + 2)).unwrap();
    assert!(tx_used <= tx_avail, "tx used {tx_used} > avail {tx_avail}");
    let rx_used: u16 = mem.read_obj(GuestAddress(RX + 0x2000 + 2)).unwrap();
    assert!(rx_used <= rx_bufs, "rx used {rx_used} > avail {rx_bufs}");
    drop(worker);
    // Host clients still waiting in the listener's backlog go with their streams.
    drop(clients);
    drop(accepted);
    while let Ok((s, _)) = host().port80.accept() {
        drop(s);
    }
    while let Ok((s, _)) = host().listener.accept() {
        drop(s);
    }
});
