//! The network card's worker: moves frames between the guest's queues and the backend.
//!
//! - transmitq kicked: with notifications off, take each chain, strip the
//!   `virtio_net_hdr_v1`, complete a partial checksum (NEEDS_CSUM), hand the frame to the
//!   backend; when the backend's buffer is full, leave the remaining chains in the ring
//!   and wait for the backend's fd to be writable (no frame is dropped, memory stays
//!   bounded).
//! - backend readable: for each frame, take receive buffers (several with MRG_RXBUF,
//!   `num_buffers` in the header; else one that must hold it all); when the guest has
//!   posted none, stop reading the backend and ask for a kick on receiveq (the frame
//!   waits in the backend, not dropped).
//!
//! The backend's fd sits in an epoll set of its own whose fd the shared worker loop waits
//! on: that lets this worker switch between waiting for input, for output, both or
//! neither, which the generic loop (always EPOLLIN) does not offer.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_HDR_F_DATA_VALID,
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE,
};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::backend::{Backend, BackendError, ETH_HLEN, MAX_FRAME_LEN};
use crate::devices::virtio::io_counters::IoCounters;
use crate::devices::virtio::rate_limit::RateLimiter;
use crate::devices::virtio::worker::WorkerHandler;
use crate::devices::virtio::{chain_bytes, Interrupt, QueuePosition};

/// `virtio_net_hdr_v1`: with VIRTIO_F_VERSION_1 the header always has `num_buffers`.
pub const NET_HDR_LEN: usize = 12;
/// Offsets in `virtio_net_hdr_v1`.
const HDR_FLAGS: usize = 0;
const HDR_GSO_TYPE: usize = 1;
const HDR_CSUM_START: usize = 6;
const HDR_CSUM_OFFSET: usize = 8;
const HDR_NUM_BUFFERS: usize = 10;

/// Queue indexes (virtio 1.2, 5.1.2: receiveq1, transmitq1).
pub const RX_QUEUE: u16 = 0;
pub const TX_QUEUE: u16 = 1;

/// What happened to frames, for logs and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetCounters {
    pub tx_frames: u64,
    /// Frames from the guest that were malformed: shorter than an Ethernet header,
    /// longer than `MAX_FRAME_LEN`, a GSO type we did not offer, a checksum position
    /// outside the frame, or buffers outside guest memory.
    pub tx_dropped: u64,
    pub rx_frames: u64,
    /// Frames from the backend that the guest's buffers could not hold.
    pub rx_dropped: u64,
}

/// The worker's state while the device is active.
pub struct NetWorker {
    mem: GuestMemoryMmap,
    interrupt: Arc<dyn Interrupt>,
    rx: Queue,
    tx: Queue,
    backend: Box<dyn Backend>,
    /// Negotiated: a frame may span several receive buffers.
    mergeable_rx: bool,
    /// Frames from the backend are marked DATA_VALID.
    data_valid: bool,
    /// The guest has no receive buffer for the backend's next frame: stop reading until
    /// it kicks receiveq.
    rx_waiting: bool,
    /// The backend's buffer is full: chains wait in the tx ring for EPOLLOUT.
    tx_blocked: bool,
    /// The backend failed (passt exited): frames from the guest are dropped.
    backend_dead: bool,
    /// Holds the backend's fd with the interest below.
    epoll: Epoll,
    interest: EventSet,
    /// Reused buffer for one transmitted frame with its header.
    tx_frame: Vec<u8>,
    pub counters: NetCounters,
    /// Bytes and frames each way, for the control socket's `stats` (the device's).
    io: Arc<IoCounters>,
    /// The card's I/O limits, on both directions together (the device's).
    limiter: Option<Arc<RateLimiter>>,
    /// The limiter refused a frame: neither direction moves until its timer fires.
    throttled: bool,
}

impl NetWorker {
    pub fn new(
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn Interrupt>,
        rx: Queue,
        tx: Queue,
        backend: Box<dyn Backend>,
        acked_features: u64,
    ) -> std::io::Result<Self> {
        let epoll = Epoll::new()?;
        let interest = EventSet::IN;
        epoll.ctl(
            ControlOperation::Add,
            backend.fd(),
            EpollEvent::new(interest, 0),
        )?;
        Ok(NetWorker {
            mergeable_rx: acked_features & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0,
            data_valid: acked_features & (1 << VIRTIO_NET_F_GUEST_CSUM) != 0
                && backend.checksums_valid(),
            mem,
            interrupt,
            rx,
            tx,
            backend,
            rx_waiting: false,
            tx_blocked: false,
            backend_dead: false,
            epoll,
            interest,
            tx_frame: Vec::with_capacity(NET_HDR_LEN + MAX_FRAME_LEN),
            counters: NetCounters::default(),
            io: Arc::default(),
            limiter: None,
            throttled: false,
        })
    }

    /// Counts frames into `io` (the device's) from now on.
    pub fn counting(mut self, io: Arc<IoCounters>) -> Self {
        self.io = io;
        self
    }

    /// Moves frames only as fast as `limiter` lets it from now on.
    pub fn limited(mut self, limiter: Arc<RateLimiter>) -> Self {
        self.limiter = Some(limiter);
        self
    }

    /// Whether the limiter lets a frame of `bytes` through now (if not, it armed its
    /// timer and the worker waits for it).
    fn admit(&mut self, bytes: u64) -> bool {
        let ok = self.limiter.as_ref().is_none_or(|l| l.admit(bytes));
        self.throttled |= !ok;
        ok
    }

    /// Where the receiveq and the transmitq stand.
    pub fn positions(&self) -> [QueuePosition; 2] {
        [
            QueuePosition::of(RX_QUEUE, &self.rx),
            QueuePosition::of(TX_QUEUE, &self.tx),
        ]
    }

    /// Gives the backend back (the device keeps it across a reset).
    pub fn into_backend(self) -> Box<dyn Backend> {
        self.backend
    }

    /// Takes frames from the transmit queue until it is empty or the backend is full.
    pub fn process_tx(&mut self) -> Result<(), virtio_queue::Error> {
        // A handle of our own: the chains borrow it while `transmit` borrows `self`.
        let mem = self.mem.clone();
        let mut used_any = false;
        'drain: loop {
            self.tx.disable_notification(&self.mem)?;
            loop {
                if !self.backend_dead && !self.backend.can_send() {
                    match self.backend.flush() {
                        Ok(_) if self.backend.can_send() => {}
                        Ok(_) => {
                            // Notifications stay off: EPOLLOUT brings us back.
                            self.tx_blocked = true;
                            break 'drain;
                        }
                        Err(e) => self.backend_failed(&e),
                    }
                }
                let Some(chain) = self.tx.iter(&mem)?.next() else {
                    break;
                };
                let frame_bytes = chain_bytes(&chain).saturating_sub(NET_HDR_LEN as u64);
                if !self.admit(frame_bytes) {
                    // Back in the ring, notifications off: the limiter's timer brings
                    // us back.
                    self.tx.go_to_previous_position();
                    break 'drain;
                }
                let head = chain.head_index();
                self.transmit(chain);
                self.tx.add_used(&mem, head, 0)?;
                used_any = true;
            }
            self.tx_blocked = false;
            if !self.tx.enable_notification(&self.mem)? {
                break;
            }
        }
        if !self.backend_dead {
            if let Err(e) = self.backend.flush() {
                self.backend_failed(&e);
            }
        }
        if used_any && self.tx.needs_notification(&self.mem)? {
            self.signal(TX_QUEUE);
        }
        Ok(())
    }

    /// One chain from the transmit queue: read it, check it, send the frame.
    fn transmit(&mut self, chain: DescriptorChain<&GuestMemoryMmap>) {
        let frame = &mut self.tx_frame;
        frame.clear();
        let mut ok = true;
        for desc in chain.readable() {
            let len = desc.len() as usize;
            if frame.len() + len > NET_HDR_LEN + MAX_FRAME_LEN {
                ok = false;
                break;
            }
            let at = frame.len();
            frame.resize(at + len, 0);
            if self.mem.read_slice(&mut frame[at..], desc.addr()).is_err() {
                ok = false;
                break;
            }
        }
        if !ok || !prepare_tx_frame(frame) {
            self.counters.tx_dropped += 1;
            return;
        }
        if self.backend_dead {
            self.counters.tx_dropped += 1;
            return;
        }
        let len = (frame.len() - NET_HDR_LEN) as u64;
        match self.backend.send(&frame[NET_HDR_LEN..]) {
            Ok(()) => {
                self.counters.tx_frames += 1;
                self.io.write(len);
            }
            Err(e) => {
                self.counters.tx_dropped += 1;
                self.backend_failed(&e);
            }
        }
    }

    /// Moves frames from the backend into receive buffers until either runs out.
    pub fn process_rx(&mut self) -> Result<(), virtio_queue::Error> {
        let mut used_any = false;
        while !self.rx_waiting && !self.backend_dead && !self.throttled {
            let frame = match self.backend.peek_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    self.backend_failed(&e);
                    break;
                }
            };
            // Charged before we know the guest has room: a frame that waits for
            // buffers is charged again when it goes (a small overcharge, never under).
            // (The limiter's fields, not `admit`: the frame still borrows the backend.)
            let len = frame.len() as u64;
            if !self.limiter.as_ref().is_none_or(|l| l.admit(len)) {
                self.throttled = true;
                break;
            }
            let flags = if self.data_valid {
                VIRTIO_NET_HDR_F_DATA_VALID as u8
            } else {
                0
            };
            let outcome = if self.mergeable_rx {
                receive_mergeable(&mut self.rx, &self.mem, frame, flags)?
            } else {
                receive_whole(&mut self.rx, &self.mem, frame, flags)?
            };
            match outcome {
                Received::Done => {
                    self.counters.rx_frames += 1;
                    self.io.read(frame.len() as u64);
                    used_any = true;
                    self.backend.consume_frame();
                }
                Received::Dropped => {
                    self.counters.rx_dropped += 1;
                    used_any = true;
                    self.backend.consume_frame();
                }
                Received::NoBuffers => self.rx_waiting = true,
                Received::Retry => self.rx.disable_notification(&self.mem)?,
            }
        }
        if used_any && self.rx.needs_notification(&self.mem)? {
            self.signal(RX_QUEUE);
        }
        Ok(())
    }

    fn signal(&self, queue: u16) {
        if let Err(e) = self.interrupt.signal_used_queue(queue) {
            tracing::warn!("virtio-net: cannot interrupt the driver: {e}");
        }
    }

    fn backend_failed(&mut self, e: &BackendError) {
        if !self.backend_dead {
            tracing::warn!(
                "virtio-net: the network backend stopped ({e}); the guest's network is down"
            );
            self.backend_dead = true;
        }
    }

    /// Waits on the backend for what we need next: input unless the guest has no
    /// buffers, output while something is buffered; nothing once it has failed.
    fn update_interest(&mut self) {
        let mut want = EventSet::empty();
        if !self.backend_dead {
            if !self.rx_waiting && !self.throttled {
                want |= EventSet::IN;
            }
            if self.tx_blocked || self.backend.has_pending_output() {
                want |= EventSet::OUT;
            }
        }
        if want == self.interest {
            return;
        }
        let fd = self.backend.fd();
        // A dead backend's fd leaves the set: its hang-up would otherwise wake us forever.
        let result = if self.backend_dead {
            self.epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default())
        } else {
            self.epoll
                .ctl(ControlOperation::Modify, fd, EpollEvent::new(want, 0))
        };
        match result {
            Ok(()) => self.interest = want,
            Err(e) => tracing::warn!("virtio-net: cannot wait on the backend: {e}"),
        }
    }

    /// The limiter may let frames through again: both directions go on.
    fn limit_timer_fired(&mut self) -> Result<(), String> {
        if let Some(limiter) = &self.limiter {
            limiter.timer_fired();
        }
        self.throttled = false;
        let result = self.process_tx().and_then(|()| self.process_rx());
        self.after(result)
    }

    fn after(&mut self, result: Result<(), virtio_queue::Error>) -> Result<(), String> {
        self.update_interest();
        result.map_err(|e| format!("virtio-net: broken queue: {e}"))
    }
}

impl WorkerHandler for NetWorker {
    fn queue_notified(&mut self, index: usize) -> Result<(), String> {
        let result = if index == usize::from(RX_QUEUE) {
            // New receive buffers: stop asking for kicks, deliver what waits.
            self.rx_waiting = false;
            self.rx
                .disable_notification(&self.mem)
                .and_then(|()| self.process_rx())
        } else {
            let tx = self.process_tx();
            // A guest that sends is alive: look for receive buffers again even without
            // a receiveq kick. Some drivers miss kicks (virtio-drivers 0.13 compares
            // avail_event without wrapping, so after 65536 buffers it stops kicking).
            if self.rx_waiting {
                self.rx_waiting = false;
                tx.and_then(|()| self.process_rx())
            } else {
                tx
            }
        };
        self.after(result)
    }

    /// The backend (through our own epoll), then the limiter's timer.
    fn backend_fds(&self) -> Vec<RawFd> {
        let mut fds = vec![self.epoll.as_raw_fd()];
        fds.extend(self.limiter.iter().map(|l| l.timer_fd()));
        fds
    }

    fn backend_ready(&mut self, index: usize) -> Result<(), String> {
        if index == 1 {
            return self.limit_timer_fired();
        }
        let mut events = [EpollEvent::default(); 1];
        let n = self.epoll.wait(0, &mut events).unwrap_or(0);
        let ready = if n == 1 {
            events[0].event_set()
        } else {
            EventSet::empty()
        };
        if ready.intersects(EventSet::HANG_UP | EventSet::ERROR) && !ready.contains(EventSet::IN) {
            self.backend_failed(&BackendError::Closed);
        }
        let mut result = Ok(());
        if ready.contains(EventSet::OUT) && !self.backend_dead {
            match self.backend.flush() {
                Ok(_) if self.tx_blocked && self.backend.can_send() => result = self.process_tx(),
                Ok(_) => {}
                Err(e) => self.backend_failed(&e),
            }
        }
        if ready.contains(EventSet::IN) {
            result = result.and_then(|()| self.process_rx());
        }
        self.after(result)
    }
}

/// Checks a transmitted frame (header + frame) and completes its checksum if the guest
/// left it partial. Returns false for a frame to drop.
pub fn prepare_tx_frame(buf: &mut [u8]) -> bool {
    if buf.len() < NET_HDR_LEN + ETH_HLEN || buf.len() > NET_HDR_LEN + MAX_FRAME_LEN {
        return false;
    }
    // No GSO feature was offered: a segmentation request is the guest's mistake.
    if u32::from(buf[HDR_GSO_TYPE]) != VIRTIO_NET_HDR_GSO_NONE {
        return false;
    }
    if u32::from(buf[HDR_FLAGS]) & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
        let start = usize::from(u16::from_le_bytes([
            buf[HDR_CSUM_START],
            buf[HDR_CSUM_START + 1],
        ]));
        let offset = usize::from(u16::from_le_bytes([
            buf[HDR_CSUM_OFFSET],
            buf[HDR_CSUM_OFFSET + 1],
        ]));
        if !complete_checksum(&mut buf[NET_HDR_LEN..], start, offset) {
            return false;
        }
    }
    true
}

/// VIRTIO_NET_HDR_F_NEEDS_CSUM (virtio 1.2, 5.1.6.2): the 16-bit field at `start +
/// offset` holds the pseudo-header sum; the checksum is the ones' complement of the
/// ones'-complement sum from `start` to the end of the frame, that field included. As
/// Linux's `skb_checksum_help`, a result of 0 goes out as 0xFFFF (UDP's "no checksum"
/// is 0, and both mean the same to TCP).
pub fn complete_checksum(frame: &mut [u8], start: usize, offset: usize) -> bool {
    let Some(field) = start.checked_add(offset) else {
        return false;
    };
    if start >= frame.len() || field + 2 > frame.len() {
        return false;
    }
    let sum = ones_complement_sum(&frame[start..]);
    let checksum = match !sum {
        0 => 0xffff,
        c => c,
    };
    frame[field..field + 2].copy_from_slice(&checksum.to_be_bytes());
    true
}

/// The 16-bit ones'-complement sum of `data` (RFC 1071), folded.
pub fn ones_complement_sum(data: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    let mut chunks = data.chunks_exact(2);
    for pair in &mut chunks {
        sum += u64::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u64::from(*last) << 8;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// What became of a frame offered to the receive queue.
#[derive(Debug, PartialEq, Eq)]
enum Received {
    Done,
    /// The buffers could not hold it (or were broken); they went back to the guest.
    Dropped,
    /// No buffers (enough): the frame stays with the backend, no chain was taken, and
    /// the driver was asked to kick receiveq when it adds one.
    NoBuffers,
    /// As `NoBuffers`, but the driver added buffers meanwhile: try again.
    Retry,
}

/// Out of buffers with `taken` chains popped for a frame: ask for a kick on the next
/// buffer (EVENT_IDX: avail_event = the index after the last one seen, which is why the
/// chains are put back only afterwards), then put them back for the next attempt.
fn out_of_buffers(
    rx: &mut Queue,
    mem: &GuestMemoryMmap,
    taken: usize,
) -> Result<Received, virtio_queue::Error> {
    let more = rx.enable_notification(mem)?;
    for _ in 0..taken {
        rx.go_to_previous_position();
    }
    Ok(if more {
        Received::Retry
    } else {
        Received::NoBuffers
    })
}

/// The writable parts of a chain, bounded by what a frame can use.
fn writable_regions(chain: DescriptorChain<&GuestMemoryMmap>) -> (u16, Vec<(GuestAddress, usize)>) {
    let head = chain.head_index();
    let mut regions = Vec::new();
    let mut total = 0usize;
    for desc in chain.writable() {
        if total >= NET_HDR_LEN + MAX_FRAME_LEN {
            break;
        }
        let len = (desc.len() as usize).min(NET_HDR_LEN + MAX_FRAME_LEN - total);
        regions.push((desc.addr(), len));
        total += len;
    }
    (head, regions)
}

/// Writes `parts` (concatenated) into `regions`, returning the bytes written; stops at a
/// region outside guest memory.
fn write_regions(
    mem: &GuestMemoryMmap,
    regions: &[(GuestAddress, usize)],
    parts: &mut [&[u8]],
) -> usize {
    let mut written = 0;
    for &(addr, len) in regions {
        let mut at = 0;
        while at < len {
            let Some(part) = parts.iter_mut().find(|p| !p.is_empty()) else {
                return written;
            };
            let n = part.len().min(len - at);
            if mem
                .write_slice(&part[..n], GuestAddress(addr.0.wrapping_add(at as u64)))
                .is_err()
            {
                return written;
            }
            *part = &part[n..];
            at += n;
            written += n;
        }
    }
    written
}

fn rx_header(flags: u8, num_buffers: u16) -> [u8; NET_HDR_LEN] {
    let mut hdr = [0u8; NET_HDR_LEN];
    hdr[HDR_FLAGS] = flags;
    hdr[HDR_GSO_TYPE] = VIRTIO_NET_HDR_GSO_NONE as u8;
    hdr[HDR_NUM_BUFFERS..].copy_from_slice(&num_buffers.to_le_bytes());
    hdr
}

/// Without MRG_RXBUF: one chain holds header and frame (virtio 1.2, 5.1.6.3.1), and
/// `num_buffers` is 1.
fn receive_whole(
    rx: &mut Queue,
    mem: &GuestMemoryMmap,
    frame: &[u8],
    flags: u8,
) -> Result<Received, virtio_queue::Error> {
    let Some(chain) = rx.iter(mem)?.next() else {
        return out_of_buffers(rx, mem, 0);
    };
    let (head, regions) = writable_regions(chain);
    let capacity: usize = regions.iter().map(|r| r.1).sum();
    if capacity < NET_HDR_LEN + frame.len() {
        rx.add_used(mem, head, 0)?;
        return Ok(Received::Dropped);
    }
    let hdr = rx_header(flags, 1);
    let written = write_regions(mem, &regions, &mut [&hdr, frame]);
    rx.add_used(mem, head, written as u32)?;
    Ok(if written == NET_HDR_LEN + frame.len() {
        Received::Done
    } else {
        Received::Dropped
    })
}

/// With MRG_RXBUF: as many chains as the frame needs, each filled in order, the count
/// in the first one's header (virtio 1.2, 5.1.6.4). If the guest has not posted enough,
/// none is taken.
fn receive_mergeable(
    rx: &mut Queue,
    mem: &GuestMemoryMmap,
    frame: &[u8],
    flags: u8,
) -> Result<Received, virtio_queue::Error> {
    let needed = NET_HDR_LEN + frame.len();
    let mut chains = Vec::new();
    let mut capacity = 0usize;
    while capacity < needed {
        // `iter` refuses an avail index more than a queue ahead, so this loop takes at
        // most a queue's worth of chains.
        let Some(chain) = rx.iter(mem)?.next() else {
            return out_of_buffers(rx, mem, chains.len());
        };
        let (head, regions) = writable_regions(chain);
        capacity += regions.iter().map(|r| r.1).sum::<usize>();
        chains.push((head, regions));
    }
    let num_buffers = u16::try_from(chains.len()).unwrap_or(u16::MAX);
    let hdr = rx_header(flags, num_buffers);
    let mut parts: [&[u8]; 2] = [&hdr, frame];
    let mut total = 0;
    for (head, regions) in &chains {
        let written = write_regions(mem, regions, &mut parts);
        total += written;
        rx.add_used(mem, *head, written as u32)?;
    }
    Ok(if total == needed {
        Received::Done
    } else {
        Received::Dropped
    })
}

#[cfg(test)]
mod tests {
    use super::super::passt::fake_passt;
    use super::*;
    use crate::devices::virtio::test_utils::CountingInterrupt;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;

    const QSIZE: u16 = 16;

    /// Guest memory, the two queues as a driver sets them up, and a worker on a fake
    /// passt whose other end is `peer`.
    ///
    /// virtio-queue 0.18's `MockSplitQueue::create` computes the avail ring's end from
    /// its entry count, not its size in bytes, so the used ring overlaps it: with 16
    /// entries, used elements land on avail entries 10 and up. Tests keep at most 8
    /// chains outstanding per queue.
    struct Rig<'a> {
        mem: &'a GuestMemoryMmap,
        rxq: MockSplitQueue<'a, GuestMemoryMmap>,
        txq: MockSplitQueue<'a, GuestMemoryMmap>,
        worker: NetWorker,
        peer: UnixStream,
        interrupt: Arc<CountingInterrupt>,
        /// Next free guest address for buffers.
        next: u64,
        /// Descriptors used so far in each queue (the mock's table is written directly).
        rx_desc: u16,
        tx_desc: u16,
        rx_avail: u16,
        tx_avail: u16,
    }

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap()
    }

    impl<'a> Rig<'a> {
        fn new(mem: &'a GuestMemoryMmap, features: u64) -> Self {
            let rxq = MockSplitQueue::create(mem, GuestAddress(0x1000), QSIZE);
            let txq = MockSplitQueue::create(mem, GuestAddress(0x8000), QSIZE);
            let mut rx: Queue = rxq.create_queue().unwrap();
            let mut tx: Queue = txq.create_queue().unwrap();
            rx.set_ready(true);
            tx.set_ready(true);
            let (passt, peer) = fake_passt();
            peer.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            let interrupt = Arc::new(CountingInterrupt::default());
            let worker = NetWorker::new(
                mem.clone(),
                interrupt.clone(),
                rx,
                tx,
                Box::new(passt),
                features,
            )
            .unwrap();
            Rig {
                mem,
                rxq,
                txq,
                worker,
                peer,
                interrupt,
                next: 0x10_0000,
                rx_desc: 0,
                tx_desc: 0,
                rx_avail: 0,
                tx_avail: 0,
            }
        }

        fn alloc(&mut self, len: usize) -> u64 {
            let at = self.next;
            self.next += (len as u64 + 0xfff) & !0xfff;
            at
        }

        /// Posts one chain made of `bufs` (address, length, writable).
        fn post(&mut self, is_rx: bool, bufs: &[(u64, u32, bool)]) {
            let (q, next_desc, avail) = if is_rx {
                (&self.rxq, &mut self.rx_desc, &mut self.rx_avail)
            } else {
                (&self.txq, &mut self.tx_desc, &mut self.tx_avail)
            };
            let first = *next_desc;
            for (i, &(addr, len, write)) in bufs.iter().enumerate() {
                let mut flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
                let idx = (first + i as u16) % QSIZE;
                let next = (idx + 1) % QSIZE;
                if i + 1 < bufs.len() {
                    flags |= virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
                }
                let desc = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
                q.desc_table().store(idx, desc).unwrap();
            }
            *next_desc = (first + bufs.len() as u16) % QSIZE;
            q.avail()
                .ring()
                .ref_at(usize::from(*avail % QSIZE))
                .unwrap()
                .store(first);
            *avail = avail.wrapping_add(1);
            q.avail().idx().store(*avail);
        }

        fn transmit(&mut self, hdr: [u8; NET_HDR_LEN], frame: &[u8]) {
            let h = self.alloc(NET_HDR_LEN);
            let f = self.alloc(frame.len());
            self.mem.write_slice(&hdr, GuestAddress(h)).unwrap();
            self.mem.write_slice(frame, GuestAddress(f)).unwrap();
            self.post(
                false,
                &[
                    (h, NET_HDR_LEN as u32, false),
                    (f, frame.len() as u32, false),
                ],
            );
        }

        fn rx_buffer(&mut self, len: u32) -> u64 {
            let a = self.alloc(len as usize);
            self.post(true, &[(a, len, true)]);
            a
        }

        fn used(&self, is_rx: bool, i: u16) -> (u32, u32) {
            let q = if is_rx { &self.rxq } else { &self.txq };
            let e = q.used().ring().ref_at(usize::from(i)).unwrap().load();
            (e.id(), e.len())
        }

        fn used_idx(&self, is_rx: bool) -> u16 {
            let q = if is_rx { &self.rxq } else { &self.txq };
            q.used().idx().load()
        }

        fn read_frame_from_peer(&mut self) -> Vec<u8> {
            let mut len = [0u8; 4];
            self.peer.read_exact(&mut len).unwrap();
            let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
            self.peer.read_exact(&mut frame).unwrap();
            frame
        }

        fn send_from_peer(&mut self, frame: &[u8]) {
            self.peer
                .write_all(&(frame.len() as u32).to_be_bytes())
                .unwrap();
            self.peer.write_all(frame).unwrap();
        }

        /// Waits until the backend's socket is readable, then runs the worker on it.
        fn backend_ready(&mut self) {
            let mut events = [EpollEvent::default(); 1];
            let n = self.worker.epoll.wait(5000, &mut events).unwrap();
            assert_eq!(n, 1, "backend not ready");
            self.worker.backend_ready(0).unwrap();
        }
    }

    fn ethernet(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
            .collect()
    }

    const ALL: u64 = (1 << VIRTIO_NET_F_MRG_RXBUF) | (1 << VIRTIO_NET_F_GUEST_CSUM);

    #[test]
    fn transmitted_frames_come_out_length_prefixed() {
        let mem = memory();
        let mut rig = Rig::new(&mem, ALL);
        let a = ethernet(60, 1);
        let b = ethernet(1514, 2);
        rig.transmit([0; NET_HDR_LEN], &a);
        rig.transmit([0; NET_HDR_LEN], &b);
        rig.worker.queue_notified(usize::from(TX_QUEUE)).unwrap();
        assert_eq!(rig.read_frame_from_peer(), a);
        assert_eq!(rig.read_frame_from_peer(), b);
        assert_eq!(rig.used_idx(false), 2);
        assert_eq!(rig.used(false, 0), (0, 0));
        assert_eq!(rig.worker.counters.tx_frames, 2);
        assert_eq!(rig.interrupt.used_on(1), 1);
    }

    #[test]
    fn malformed_transmit_chains_are_dropped_and_counted() {
        let mem = memory();
        let mut rig = Rig::new(&mem, ALL);
        // Shorter than an Ethernet header.
        rig.transmit([0; NET_HDR_LEN], &[1, 2, 3]);
        // A GSO request nobody offered.
        let mut gso = [0u8; NET_HDR_LEN];
        gso[HDR_GSO_TYPE] = 1;
        rig.transmit(gso, &ethernet(100, 0));
        // A checksum position beyond the frame.
        let mut bad_csum = [0u8; NET_HDR_LEN];
        bad_csum[HDR_FLAGS] = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
        bad_csum[HDR_CSUM_START..HDR_CSUM_START + 2].copy_from_slice(&90u16.to_le_bytes());
        bad_csum[HDR_CSUM_OFFSET..HDR_CSUM_OFFSET + 2].copy_from_slice(&16u16.to_le_bytes());
        rig.transmit(bad_csum, &ethernet(100, 0));
        // A buffer outside guest memory.
        rig.post(false, &[(0xfff_0000, 200, false)]);
        // Longer than any frame.
        let big = rig.alloc(NET_HDR_LEN + MAX_FRAME_LEN + 1);
        rig.post(
            false,
            &[(big, (NET_HDR_LEN + MAX_FRAME_LEN + 1) as u32, false)],
        );
        // A good one last: it still goes out.
        let good = ethernet(64, 9);
        rig.transmit([0; NET_HDR_LEN], &good);
        rig.worker.queue_notified(usize::from(TX_QUEUE)).unwrap();
        assert_eq!(rig.read_frame_from_peer(), good);
        assert_eq!(rig.worker.counters.tx_dropped, 5);
        assert_eq!(rig.worker.counters.tx_frames, 1);
        assert_eq!(rig.used_idx(false), 6, "every chain goes back to the guest");
    }

    /// An IPv4/UDP frame whose checksum is computed from scratch here (pseudo-header
    /// included), to check the device's completion against.
    fn udp_frame(payload: &[u8]) -> (Vec<u8>, u16, usize, u16) {
        let mut f = vec![0u8; 14 + 20 + 8];
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let ip_len = (20 + 8 + payload.len()) as u16;
        f[14] = 0x45;
        f[16..18].copy_from_slice(&ip_len.to_be_bytes());
        f[22] = 64;
        f[23] = 17;
        f[26..30].copy_from_slice(&[10, 0, 2, 15]);
        f[30..34].copy_from_slice(&[192, 0, 2, 1]);
        f[34..36].copy_from_slice(&4321u16.to_be_bytes());
        f[36..38].copy_from_slice(&53u16.to_be_bytes());
        f[38..40].copy_from_slice(&(8 + payload.len() as u16).to_be_bytes());
        f.extend_from_slice(payload);
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&f[26..34]);
        pseudo.extend_from_slice(&[0, 17]);
        pseudo.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
        let pseudo_sum = ones_complement_sum(&pseudo);
        pseudo.extend_from_slice(&f[34..]);
        let full = !ones_complement_sum(&pseudo);
        (f, pseudo_sum, 34, full)
    }

    #[test]
    fn a_partial_checksum_is_completed_before_passt_sees_it() {
        let mem = memory();
        let mut rig = Rig::new(&mem, ALL);
        let (mut frame, pseudo_sum, l4, expected) = udp_frame(b"hello, passt: odd length");
        // What Linux hands the device: the pseudo-header sum in the checksum field.
        frame[40..42].copy_from_slice(&pseudo_sum.to_be_bytes());
        let mut hdr = [0u8; NET_HDR_LEN];
        hdr[HDR_FLAGS] = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
        hdr[HDR_CSUM_START..HDR_CSUM_START + 2].copy_from_slice(&(l4 as u16).to_le_bytes());
        hdr[HDR_CSUM_OFFSET..HDR_CSUM_OFFSET + 2].copy_from_slice(&6u16.to_le_bytes());
        rig.transmit(hdr, &frame);
        rig.worker.queue_notified(usize::from(TX_QUEUE)).unwrap();
        let out = rig.read_frame_from_peer();
        assert_eq!(u16::from_be_bytes([out[40], out[41]]), expected);
        assert_eq!(&out[..40], &frame[..40]);
        assert_eq!(&out[42..], &frame[42..]);
        // A receiver's check: the sum over pseudo-header and segment is all ones.
        let mut check = out[26..34].to_vec();
        check.extend_from_slice(&[0, 17]);
        check.extend_from_slice(&out[38..40]);
        check.extend_from_slice(&out[34..]);
        assert_eq!(ones_complement_sum(&check), 0xffff);
    }

    #[test]
    fn a_known_ipv4_header_checksum() {
        // The IPv4 header example from Wikipedia's "Internet checksum" (0xb861).
        let mut hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert!(complete_checksum(&mut hdr, 0, 10));
        assert_eq!(&hdr[10..12], &[0xb8, 0x61]);
        assert!(!complete_checksum(&mut hdr, 19, 0), "field past the end");
        assert!(!complete_checksum(&mut hdr, 20, 0), "start past the end");
        assert!(!complete_checksum(&mut hdr, usize::MAX, 2), "overflow");
    }

    #[test]
    fn a_frame_spans_mergeable_buffers_with_num_buffers() {
        let mem = memory();
        let mut rig = Rig::new(&mem, ALL);
        let bufs: Vec<u64> = (0..4).map(|_| rig.rx_buffer(1000)).collect();
        let frame = ethernet(2500, 3);
        rig.send_from_peer(&frame);
        rig.backend_ready();
        // 12 + 2500 bytes: 1000 + 1000 + 512.
        assert_eq!(rig.used_idx(true), 3);
        assert_eq!(rig.used(true, 0), (0, 1000));
        assert_eq!(rig.used(true, 1), (1, 1000));
        assert_eq!(rig.used(true, 2), (2, 512));
        let mut hdr = [0u8; NET_HDR_LEN];
        mem.read_slice(&mut hdr, GuestAddress(bufs[0])).unwrap();
        assert_eq!(hdr[HDR_FLAGS], VIRTIO_NET_HDR_F_DATA_VALID as u8);
        assert_eq!(u16::from_le_bytes([hdr[10], hdr[11]]), 3);
        let mut got = vec![0u8; 2500];
        mem.read_slice(&mut got[..988], GuestAddress(bufs[0] + 12))
            .unwrap();
        mem.read_slice(&mut got[988..1988], GuestAddress(bufs[1]))
            .unwrap();
        mem.read_slice(&mut got[1988..], GuestAddress(bufs[2]))
            .unwrap();
        assert_eq!(got, frame);
        assert_eq!(rig.worker.counters.rx_frames, 1);
        assert_eq!(rig.interrupt.used_on(0), 1);
    }

    #[test]
    fn a_frame_waits_for_buffers_instead_of_being_dropped() {
        let mem = memory();
        let mut rig = Rig::new(&mem, ALL);
        // One buffer, a frame needing two: nothing is taken.
        rig.rx_buffer(1000);
        let frame = ethernet(1500, 4);
        rig.send_from_peer(&frame);
        rig.backend_ready();
        assert_eq!(rig.used_idx(true), 0);
        assert!(rig.worker.rx_waiting);
        assert!(
            !rig.worker.interest.contains(EventSet::IN),
            "not reading meanwhile"
        );
        // The guest posts another and kicks: the frame arrives in both.
        rig.rx_buffer(1000);
        rig.worker.queue_notified(usize::from(RX_QUEUE)).unwrap();
        assert_eq!(rig.used_idx(true), 2);
        assert_eq!(rig.used(true, 0), (0, 1000));
        assert_eq!(rig.used(true, 1), (1, 512));
        assert_eq!(rig.worker.counters.rx_dropped, 0);
        assert!(rig.worker.interest.contains(EventSet::IN));
    }

    #[test]
    fn a_limited_card_holds_frames_both_ways_until_its_timer_fires() {
        use crate::devices::virtio::rate_limit::tests::readable;
        use crate::devices::virtio::rate_limit::{IoLimits, RateLimiter};
        let mem = memory();
        let mut rig = Rig::new(&mem, ALL);
        let limiter = Arc::new(
            RateLimiter::new(IoLimits {
                iops: Some(100),
                iops_burst: Some(2),
                ..IoLimits::default()
            })
            .unwrap(),
        );
        rig.worker.limiter = Some(limiter.clone());
        let frames: Vec<Vec<u8>> = (0..3).map(|i| ethernet(100, i)).collect();
        for f in &frames {
            rig.transmit([0; NET_HDR_LEN], f);
        }
        // Two frames a burst (half the bucket, one frame, is then enough at 100/s).
        rig.worker.queue_notified(usize::from(TX_QUEUE)).unwrap();
        assert_eq!(rig.used_idx(false), 2);
        assert!(rig.worker.throttled);
        // A frame from the network waits too: the worker stops reading its backend.
        rig.rx_buffer(2048);
        rig.send_from_peer(&ethernet(200, 9));
        assert!(!rig.worker.interest.contains(EventSet::IN));
        assert!(readable(limiter.timer_fd(), 1000), "the timer never fired");
        rig.worker.backend_ready(1).unwrap();
        assert_eq!(rig.used_idx(false), 3, "the held frame went");
        for f in &frames {
            assert_eq!(&rig.read_frame_from_peer(), f);
        }
        // The received frame needs one more token: the next timer lets it in.
        let mut rounds = 0;
        while rig.used_idx(true) == 0 {
            if readable(limiter.timer_fd(), 1000) {
                rig.worker.backend_ready(1).unwrap();
            } else {
                rig.backend_ready();
            }
            rounds += 1;
            assert!(rounds < 10, "the received frame never arrived");
        }
        assert_eq!(rig.worker.counters.rx_frames, 1);
        assert!(rig.worker.interest.contains(EventSet::IN));
    }

    #[test]
    fn without_mergeable_buffers_each_holds_a_whole_frame() {
        let mem = memory();
        let mut rig = Rig::new(&mem, 0);
        let small = rig.rx_buffer(100);
        let big = rig.rx_buffer(2000);
        rig.send_from_peer(&ethernet(500, 5));
        rig.send_from_peer(&ethernet(60, 6));
        rig.backend_ready();
        // The first frame does not fit the first buffer: dropped, buffer returned
        // empty; the second fits the next one.
        assert_eq!(rig.used_idx(true), 2);
        assert_eq!(rig.used(true, 0), (0, 0));
        assert_eq!(rig.used(true, 1), (1, 72));
        assert_eq!(rig.worker.counters.rx_dropped, 1);
        let mut hdr = [0u8; NET_HDR_LEN];
        mem.read_slice(&mut hdr, GuestAddress(big)).unwrap();
        assert_eq!(hdr[HDR_FLAGS], 0, "GUEST_CSUM not negotiated");
        assert_eq!(u16::from_le_bytes([hdr[10], hdr[11]]), 1);
        let mut got = vec![0u8; 60];
        mem.read_slice(&mut got, GuestAddress(big + 12)).unwrap();
        assert_eq!(got, ethernet(60, 6));
        let _ = small;
    }

    #[test]
    fn receive_chains_outside_memory_or_read_only_are_not_a_panic() {
        let mem = memory();
        let mut rig = Rig::new(&mem, ALL);
        rig.post(true, &[(0xfff_0000, 4096, true)]);
        let ro = rig.alloc(4096);
        rig.post(true, &[(ro, 4096, false)]);
        let ok = rig.rx_buffer(4096);
        rig.send_from_peer(&ethernet(100, 7));
        rig.send_from_peer(&ethernet(100, 8));
        rig.backend_ready();
        // Frame 1 went to the chain outside memory: nothing landed, dropped, the chain
        // returned empty. Frame 2 needed more than the read-only chain (no capacity) and
        // took the good one too: two buffers, all bytes in the second.
        assert_eq!(rig.used_idx(true), 3);
        assert_eq!(rig.used(true, 0), (0, 0));
        assert_eq!(rig.used(true, 1), (1, 0));
        assert_eq!(rig.used(true, 2), (2, 112));
        assert_eq!(rig.worker.counters.rx_dropped, 1);
        assert_eq!(rig.worker.counters.rx_frames, 1);
        let mut got = vec![0u8; 100];
        mem.read_slice(&mut got, GuestAddress(ok + 12)).unwrap();
        assert_eq!(got, ethernet(100, 8));
    }

    #[test]
    fn a_full_backend_leaves_chains_in_the_ring_until_it_drains() {
        let mem = memory();
        let mut rig = Rig::new(&mem, ALL);
        // Shrink the socket so a few frames fill it.
        let fd = rig.worker.backend.fd();
        let size: libc::c_int = 4096;
        // SAFETY: setsockopt reads one int through a valid pointer.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        // Eight two-descriptor chains: no descriptor reused while in flight, and no
        // more than the mock's rings hold (see `Rig`).
        const FRAMES: u16 = QSIZE / 2;
        let frame = ethernet(60_000, 1);
        for _ in 0..FRAMES {
            rig.transmit([0; NET_HDR_LEN], &frame);
        }
        rig.worker.queue_notified(usize::from(TX_QUEUE)).unwrap();
        let used_before = rig.used_idx(false);
        assert!(
            used_before < FRAMES,
            "the backend cannot take 8 x 60 kB at once"
        );
        assert!(rig.worker.tx_blocked);
        assert!(rig.worker.interest.contains(EventSet::OUT));
        // passt reads (in a thread of its own): the worker flushes on EPOLLOUT, takes
        // the rest of the ring, and every frame arrives, in order.
        let mut peer = std::mem::replace(&mut rig.peer, UnixStream::pair().unwrap().0);
        let reader = std::thread::spawn(move || {
            let mut frames = Vec::new();
            for _ in 0..FRAMES {
                let mut len = [0u8; 4];
                peer.read_exact(&mut len).unwrap();
                let mut f = vec![0u8; u32::from_be_bytes(len) as usize];
                peer.read_exact(&mut f).unwrap();
                frames.push(f);
            }
            frames
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while rig.used_idx(false) < FRAMES || rig.worker.backend.has_pending_output() {
            assert!(std::time::Instant::now() < deadline, "stuck");
            let mut events = [EpollEvent::default(); 1];
            if rig.worker.epoll.wait(100, &mut events).unwrap() == 1 {
                rig.worker.backend_ready(0).unwrap();
            }
        }
        let frames = reader.join().unwrap();
        assert!(frames.iter().all(|f| *f == frame));
        assert_eq!(rig.worker.counters.tx_dropped, 0);
        assert!(!rig.worker.tx_blocked);
        assert!(!rig.worker.interest.contains(EventSet::OUT));
    }

    #[test]
    fn a_vanished_backend_drops_frames_but_serves_the_ring() {
        let mem = memory();
        let mut rig = Rig::new(&mem, ALL);
        // passt exits (shutdown rather than close: another test forking meanwhile may
        // hold a copy of the fd).
        rig.peer.shutdown(std::net::Shutdown::Both).unwrap();
        rig.backend_ready();
        assert!(rig.worker.backend_dead);
        rig.transmit([0; NET_HDR_LEN], &ethernet(100, 0));
        rig.worker.queue_notified(usize::from(TX_QUEUE)).unwrap();
        assert_eq!(rig.used_idx(false), 1);
        assert_eq!(rig.worker.counters.tx_dropped, 1);
        assert_eq!(rig.worker.interest, EventSet::empty());
    }
}
