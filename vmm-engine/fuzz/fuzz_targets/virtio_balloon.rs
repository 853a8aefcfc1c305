//! Arbitrary descriptor chains from a guest against the virtio-balloon worker: PFN
//! arrays on the inflate and deflate queues, statistics buffers (held, released on host
//! requests), free page reports, with descriptors, PFNs and ranges all from the input,
//! over real guest memory with a hole in it (so every madvise really happens). Nothing
//! may panic, hang, touch host memory outside the guest's, or hand the driver back more
//! used entries than it made available.
//!
//! Input:
//! - byte 0, the acked features: bit 0 EVENT_IDX, bit 1 STATS_VQ, bit 2 REPORTING.
//! - bytes 1-2 (le16, mod 4 KiB): length of the data blob that follows, copied to the
//!   data area (PFN arrays, statistics entries).
//! - then operations, each `[op, ndesc, ndesc x descriptor]`: op bits 0-1 pick the
//!   queue (mod the number of queues), bit 2 asks the host for statistics after it,
//!   bit 3 corrupts the avail index instead of posting a chain. A descriptor is 10
//!   bytes: addr (le32: below 2^31 an offset into the data area, else shifted left 8
//!   to reach past guest memory), len (le32, mod 64 KiB unless its top bit is set),
//!   flags (u8), next (u8).
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vireo_vmm::devices::virtio::balloon::worker::{BalloonQueue, BalloonWorker, QueueRole};
use vireo_vmm::devices::virtio::balloon::Balloon;
use vireo_vmm::devices::virtio::worker::WorkerHandler;
use vireo_vmm::devices::virtio::Interrupt;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const QUEUE_SIZE: u16 = 16;
/// Each queue's rings: descriptor table, avail ring at +0x100, used ring at +0x200.
const QUEUE_STRIDE: u64 = 0x400;
const DATA_AREA: u64 = 0x1000;
/// Guest RAM: [0, 256 KiB) and [384 KiB, 512 KiB).
const LOW_END: u64 = 256 << 10;
const HIGH: (u64, u64) = (384 << 10, 128 << 10);

struct NoInterrupt;

impl Interrupt for NoInterrupt {
    fn signal_used_queue(&self, _queue: u16) -> std::io::Result<()> {
        Ok(())
    }
    fn signal_config_change(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The driver's view of one queue.
struct DriverQueue {
    base: u64,
    avail_idx: u16,
    next_desc: u16,
    /// The avail index was corrupted: the used index is no longer checked against it.
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
    let mut roles = vec![QueueRole::Inflate, QueueRole::Deflate];
    if features & 2 != 0 {
        roles.push(QueueRole::Stats);
    }
    if features & 4 != 0 {
        roles.push(QueueRole::Reporting);
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
    for (i, &role) in roles.iter().enumerate() {
        let d = DriverQueue {
            base: i as u64 * QUEUE_STRIDE,
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
        queues.push(BalloonQueue {
            role,
            index: i as u16,
            queue: q,
        });
        driver.push(d);
    }
    let balloon = Balloon::new(0).expect("balloon");
    let handle = balloon.handle();
    let mut worker = BalloonWorker::new(mem.clone(), Arc::new(NoInterrupt), queues, &handle);

    while let Some(&[op, ndesc]) = take(&mut input, 2) {
        let position = usize::from(op & 3) % driver.len();
        let d = &mut driver[position];
        if op & 8 != 0 {
            // A hostile avail index, possibly far ahead of the ring.
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
        // The device never uses more than the driver made available.
        let used: u16 = mem.read_obj(GuestAddress(d.used() + 2)).unwrap();
        assert!(
            d.hostile || d.avail_idx.wrapping_sub(used) < 0x8000,
            "used {used} > avail {}",
            d.avail_idx
        );
    }
    let _ = handle.counters();
    let _ = handle.stats();
});
