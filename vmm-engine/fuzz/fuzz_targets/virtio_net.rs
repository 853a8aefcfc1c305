//! Arbitrary descriptor chains from a guest against the virtio-net worker: transmitted
//! frames with any `virtio_net_hdr_v1` (flags, GSO type, checksum start and offset from
//! the input, so partial checksums are completed anywhere), receive chains of any shape
//! for frames of any length up to the largest, with or without MRG_RXBUF, over guest
//! memory with a hole in it. Nothing may panic, hang, touch host memory outside the
//! guest's, send the backend a frame that is not a whole Ethernet frame, or hand the
//! driver back more used entries than it made available.
//!
//! Input:
//! - byte 0, the acked features: bit 0 EVENT_IDX, bit 1 MRG_RXBUF, bit 2 GUEST_CSUM.
//! - bytes 1-2 (le16, mod 4 KiB): length of the data blob that follows, copied to the
//!   data area (headers and frames the descriptors point at).
//! - then operations, each `[op, ndesc, ndesc x descriptor]`: op bit 0 picks the queue
//!   (0 receiveq, 1 transmitq), bit 1 queues a frame from the backend of length
//!   `ndesc * 263` first, bit 2 runs the backend handler after the kick, bit 3 corrupts
//!   the avail index instead of posting a chain. A descriptor is 10 bytes: addr (le32:
//!   below 2^31 an offset into the data area, else shifted left 8 to reach past guest
//!   memory), len (le32, mod 64 KiB unless its top bit is set), flags (u8), next (u8).
#![no_main]

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use vireo_vmm::devices::virtio::net::backend::{Backend, BackendError, ETH_HLEN, MAX_FRAME_LEN};
use vireo_vmm::devices::virtio::net::worker::NetWorker;
use vireo_vmm::devices::virtio::worker::WorkerHandler;
use vireo_vmm::devices::virtio::Interrupt;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// `VRING_DESC_F_INDIRECT` (virtio 1.2, 2.7.5.3).
const VRING_DESC_F_INDIRECT: u16 = 4;
use vmm_sys_util::eventfd::EventFd;

const QUEUE_SIZE: u16 = 16;
/// Each queue's rings: descriptor table, avail ring at +0x100, used ring at +0x200; in
/// the high range, where no direct descriptor (nor a zeroed one, at address 0) reaches.
const QUEUE_STRIDE: u64 = 0x400;
const RINGS: u64 = HIGH.0;
const DATA_AREA: u64 = 0x1000;
/// Guest RAM: [0, 256 KiB) and [384 KiB, 512 KiB).
const LOW_END: u64 = 256 << 10;
const HIGH: (u64, u64) = (384 << 10, 128 << 10);
/// VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_GUEST_CSUM.
const MRG_RXBUF: u64 = 1 << 15;
const GUEST_CSUM: u64 = 1 << 1;

struct NoInterrupt;

impl Interrupt for NoInterrupt {
    fn signal_used_queue(&self, _queue: u16) -> std::io::Result<()> {
        Ok(())
    }
    fn signal_config_change(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A backend in memory: frames to the guest from a queue, frames from the guest
/// checked and counted; its fd an eventfd that is always readable and writable.
struct MemoryBackend {
    fd: EventFd,
    /// Frames the fuzz input queues for the guest; `current` is the one peeked.
    incoming: Arc<Mutex<VecDeque<Vec<u8>>>>,
    current: Option<Vec<u8>>,
    sent: usize,
}

impl Backend for MemoryBackend {
    fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
    fn checksums_valid(&self) -> bool {
        true
    }
    fn can_send(&self) -> bool {
        // Some back-pressure too: every eighth frame finds the backend full.
        self.sent % 8 != 7
    }
    fn send(&mut self, frame: &[u8]) -> Result<(), BackendError> {
        assert!(
            (ETH_HLEN..=MAX_FRAME_LEN).contains(&frame.len()),
            "a frame of {} bytes reached the backend",
            frame.len()
        );
        self.sent += 1;
        Ok(())
    }
    fn flush(&mut self) -> Result<bool, BackendError> {
        if self.sent % 8 == 7 {
            self.sent += 1;
        }
        Ok(true)
    }
    fn has_pending_output(&self) -> bool {
        false
    }
    fn peek_frame(&mut self) -> Result<Option<&[u8]>, BackendError> {
        if self.current.is_none() {
            self.current = self.incoming.lock().unwrap().pop_front();
        }
        Ok(self.current.as_deref())
    }
    fn consume_frame(&mut self) {
        self.current = None;
    }
}

struct DriverQueue {
    base: u64,
    avail_idx: u16,
    next_desc: u16,
    hostile: bool,
}

impl DriverQueue {
    fn avail(&self) -> u64 {
        self.base + 0x100
    }
    fn used(&self) -> u64 {
        self.base + 0x200
    }
}

fn take<'a>(input: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if input.len() < n {
        return None;
    }
    let (head, rest) = input.split_at(n);
    *input = rest;
    Some(head)
}

fuzz_target!(|input: &[u8]| {
    let mut input = input;
    let Some(&[features]) = take(&mut input, 1) else {
        return;
    };
    let event_idx = features & 1 != 0;
    let mut acked = 0;
    if features & 2 != 0 {
        acked |= MRG_RXBUF;
    }
    if features & 4 != 0 {
        acked |= GUEST_CSUM;
    }
    let mem = GuestMemoryMmap::<()>::from_ranges(&[
        (GuestAddress(0), LOW_END as usize),
        (GuestAddress(HIGH.0), HIGH.1 as usize),
    ])
    .expect("guest memory");
    let blob_len = match take(&mut input, 2) {
        Some(b) => usize::from(u16::from_le_bytes([b[0], b[1]])) % 4096,
        None => return,
    };
    let blob_len = blob_len.min(input.len());
    let blob = take(&mut input, blob_len).unwrap_or_default();
    mem.write_slice(blob, GuestAddress(DATA_AREA))
        .expect("data area");

    let mut driver = Vec::new();
    let mut queues = Vec::new();
    for i in 0..2u64 {
        let d = DriverQueue {
            base: RINGS + i * QUEUE_STRIDE,
            avail_idx: 0,
            next_desc: 0,
            hostile: false,
        };
        let mut q = Queue::new(QUEUE_SIZE).expect("queue");
        q.set_size(QUEUE_SIZE);
        q.set_desc_table_address(Some(d.base as u32), Some(0));
        q.set_avail_ring_address(Some(d.avail() as u32), Some(0));
        q.set_used_ring_address(Some(d.used() as u32), Some(0));
        q.set_event_idx(event_idx);
        q.set_ready(true);
        queues.push(q);
        driver.push(d);
    }
    let tx = queues.pop().unwrap();
    let rx = queues.pop().unwrap();
    let fd = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    fd.write(1).expect("eventfd");
    let incoming = Arc::new(Mutex::new(VecDeque::new()));
    let backend = MemoryBackend {
        fd,
        incoming: incoming.clone(),
        current: None,
        sent: 0,
    };
    let mut worker = NetWorker::new(
        mem.clone(),
        Arc::new(NoInterrupt),
        rx,
        tx,
        Box::new(backend),
        acked,
    )
    .expect("worker");

    // An indirect table lives in memory the device writes and the input fills, so its
    // descriptors may point anywhere, the rings included: the device's (correct) writes
    // there scribble the indices checked below, which then say nothing.
    let mut indirect_seen = false;
    while let Some(&[op, ndesc]) = take(&mut input, 2) {
        let position = usize::from(op & 1);
        if op & 2 != 0 {
            let len = (usize::from(ndesc) * 263).min(MAX_FRAME_LEN);
            incoming.lock().unwrap().push_back(vec![ndesc; len]);
        }
        let d = &mut driver[position];
        if op & 8 != 0 {
            d.hostile = true;
            d.avail_idx = d.avail_idx.wrapping_add(u16::from(ndesc));
            mem.write_obj(d.avail_idx, GuestAddress(d.avail() + 2))
                .unwrap();
        } else {
            let ndesc = u16::from(ndesc % 4) + 1;
            let head = d.next_desc;
            for _ in 0..ndesc {
                let Some(b) = take(&mut input, 10) else {
                    break;
                };
                let addr = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                let addr = if addr < 1 << 31 {
                    DATA_AREA + u64::from(addr) % (LOW_END - DATA_AREA)
                } else {
                    u64::from(addr) << 8
                };
                let len = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
                let len = if len & 1 << 31 != 0 {
                    len
                } else {
                    len % (64 << 10)
                };
                let slot = d.base + u64::from(d.next_desc) * 16;
                mem.write_obj(addr, GuestAddress(slot)).unwrap();
                mem.write_obj(len, GuestAddress(slot + 8)).unwrap();
                indirect_seen |= u16::from(b[8]) & VRING_DESC_F_INDIRECT != 0;
                mem.write_obj(u16::from(b[8]), GuestAddress(slot + 12))
                    .unwrap();
                mem.write_obj(u16::from(b[9]) % QUEUE_SIZE, GuestAddress(slot + 14))
                    .unwrap();
                d.next_desc = (d.next_desc + 1) % QUEUE_SIZE;
            }
            let entry = d.avail() + 4 + u64::from(d.avail_idx % QUEUE_SIZE) * 2;
            mem.write_obj(head, GuestAddress(entry)).unwrap();
            d.avail_idx = d.avail_idx.wrapping_add(1);
            mem.write_obj(d.avail_idx, GuestAddress(d.avail() + 2))
                .unwrap();
        }
        // Broken rings are reported as errors: fine, as long as they return.
        let _ = worker.queue_notified(position);
        if op & 4 != 0 {
            let _ = worker.backend_ready(0);
        }
        for d in &driver {
            let used: u16 = mem.read_obj(GuestAddress(d.used() + 2)).unwrap();
            assert!(
                d.hostile || indirect_seen || d.avail_idx.wrapping_sub(used) < 0x8000,
                "used {used} > avail {}",
                d.avail_idx
            );
        }
    }
});
