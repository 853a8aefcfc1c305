//! A hostile driver against a virtio-input device: arbitrary configuration-space writes
//! and reads, arbitrary descriptor chains on the event queue (buffers too short, not
//! writable, outside guest memory) while the host sends events, and arbitrary status
//! queue chains (LED events or garbage). Nothing may panic, hang, write outside guest
//! memory, or let the backlog grow past its bound.
//!
//! Input: byte 0 picks the device (bit 0: tablet), then operations `[op, ...]`:
//! - op % 4 == 0: config write `[offset, len, len bytes]`, then a read of 16 bytes there;
//! - op % 4 == 1: post an event-queue chain, `[ndesc, ndesc x descriptor]`;
//! - op % 4 == 2: post a status-queue chain, `[ndesc, ndesc x descriptor]`;
//! - op % 4 == 3: the host sends a group of `op >> 2` (1..=63) events.
//!
//! A descriptor is 10 bytes: addr (le32, an offset into the data area, or past memory when the
//! top bit is set), len (le32, mod 4 KiB unless the top bit is set), flags, next.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vireo_vmm::devices::virtio::input::event::{InputEvent, InputKind, EV_KEY, EV_REL, REL_WHEEL};
use vireo_vmm::devices::virtio::input::{Input, InputQueues, MAX_BACKLOG};
use vireo_vmm::devices::virtio::{Interrupt, VirtioDevice};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const QUEUE_SIZE: u16 = 16;
const MEM_SIZE: u64 = 256 << 10;
/// The event queue's rings at 0, the status queue's at 0x1000; data from 0x4000.
const EVENTQ_BASE: u64 = 0;
const STATUSQ_BASE: u64 = 0x1000;
const DATA_AREA: u64 = 0x4000;

struct NoInterrupt;

impl Interrupt for NoInterrupt {
    fn signal_used_queue(&self, _queue: u16) -> std::io::Result<()> {
        Ok(())
    }
    fn signal_config_change(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The driver's side of one queue: descriptor table at base, avail at +0x100, used at
/// +0x200.
struct DriverQueue {
    base: u64,
    avail_idx: u16,
    next_desc: u16,
}

impl DriverQueue {
    fn queue(&self) -> Queue {
        let mut q = Queue::new(QUEUE_SIZE).unwrap();
        q.set_size(QUEUE_SIZE);
        q.set_desc_table_address(Some(self.base as u32), Some(0));
        q.set_avail_ring_address(Some((self.base + 0x100) as u32), Some(0));
        q.set_used_ring_address(Some((self.base + 0x200) as u32), Some(0));
        q.set_ready(true);
        q
    }

    /// Writes the descriptors and makes the first available.
    fn post(&mut self, mem: &GuestMemoryMmap, descs: &[[u8; 10]]) {
        let head = self.next_desc;
        for d in descs {
            let raw_addr = u32::from_le_bytes([d[0], d[1], d[2], d[3]]);
            let addr = if raw_addr & 0x8000_0000 != 0 {
                u64::from(raw_addr) << 8
            } else {
                // Into the data area: a buffer over the rings themselves would let the
                // device's (correct) writes scribble the indices this target checks.
                DATA_AREA + u64::from(raw_addr) % (MEM_SIZE - DATA_AREA)
            };
            let raw_len = u32::from_le_bytes([d[4], d[5], d[6], d[7]]);
            let len = if raw_len & 0x8000_0000 != 0 {
                raw_len
            } else {
                raw_len % 4096
            };
            let slot = self.base + 16 * u64::from(self.next_desc % QUEUE_SIZE);
            let _ = mem.write_obj(addr, GuestAddress(slot));
            let _ = mem.write_obj(len, GuestAddress(slot + 8));
            let _ = mem.write_obj(u16::from(d[8]), GuestAddress(slot + 12));
            let _ = mem.write_obj(u16::from(d[9]) % QUEUE_SIZE, GuestAddress(slot + 14));
            self.next_desc = self.next_desc.wrapping_add(1) % QUEUE_SIZE;
        }
        let ring = self.base + 0x100 + 4 + 2 * u64::from(self.avail_idx % QUEUE_SIZE);
        let _ = mem.write_obj(head, GuestAddress(ring));
        self.avail_idx = self.avail_idx.wrapping_add(1);
        let _ = mem.write_obj(self.avail_idx, GuestAddress(self.base + 0x102));
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

fn descriptors(input: &mut &[u8]) -> Option<Vec<[u8; 10]>> {
    let n = usize::from(*take(input, 1)?.first()? % 4) + 1;
    (0..n)
        .map(|_| take(input, 10).map(|d| d.try_into().unwrap()))
        .collect()
}

fuzz_target!(|input: &[u8]| {
    let mut input = input;
    let Some(&[device]) = take(&mut input, 1) else {
        return;
    };
    let kind = if device & 1 == 0 {
        InputKind::Keyboard
    } else {
        InputKind::Tablet
    };
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
    let mut input_device = Input::new(kind).unwrap();
    let handle = input_device.handle();
    let mut eventq = DriverQueue {
        base: EVENTQ_BASE,
        avail_idx: 0,
        next_desc: 0,
    };
    let mut statusq = DriverQueue {
        base: STATUSQ_BASE,
        avail_idx: 0,
        next_desc: 0,
    };
    let mut queues = InputQueues::new(
        mem.clone(),
        Arc::new(NoInterrupt),
        eventq.queue(),
        statusq.queue(),
        &handle,
    );
    let event = match kind {
        InputKind::Keyboard => InputEvent::new(EV_KEY, 30, 1),
        InputKind::Tablet => InputEvent::new(EV_REL, REL_WHEEL, 1),
    };
    while let Some(&[op]) = take(&mut input, 1) {
        match op % 4 {
            0 => {
                let Some(&[offset, len]) = take(&mut input, 2) else {
                    return;
                };
                let Some(data) = take(&mut input, usize::from(len % 16)) else {
                    return;
                };
                input_device.write_config(u64::from(offset), data);
                let mut out = [0u8; 16];
                input_device.read_config(u64::from(offset), &mut out);
            }
            1 | 2 => {
                let Some(descs) = descriptors(&mut input) else {
                    return;
                };
                if op % 4 == 1 {
                    eventq.post(&mem, &descs);
                    let _ = queues.deliver();
                } else {
                    statusq.post(&mem, &descs);
                    let _ = queues.read_status();
                }
            }
            _ => {
                let group = vec![event; usize::from(op >> 2).max(1)];
                let _ = handle.send(&group);
                let _ = queues.deliver();
            }
        }
    }
    // The backlog bound holds whatever the driver did, and the device never used more
    // buffers than the driver made available.
    assert!(handle.backlog() <= MAX_BACKLOG);
    for q in [&eventq, &statusq] {
        let used: u16 = mem.read_obj(GuestAddress(q.base + 0x202)).unwrap();
        assert!(used <= q.avail_idx, "used {used} > avail {}", q.avail_idx);
    }
});
