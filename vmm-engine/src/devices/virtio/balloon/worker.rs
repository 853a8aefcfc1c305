//! The balloon's worker: what each queue's buffers mean and what the host does with
//! them (virtio 1.2, 5.5.6).
//!
//! - inflateq: an array of le32 PFNs (4 KiB units) the guest gave up; the host frees
//!   the memory behind them (`madvise(MADV_DONTNEED)`: an anonymous page reads back as
//!   zero on its next touch, which the spec allows, 5.5.6.2).
//! - deflateq: PFNs the guest takes back. Nothing to do: MUST_TELL_HOST is not offered
//!   and a freed page comes back on its own when touched; counted only.
//! - statsq: the guest's statistics. The device keeps the buffer and returns it only
//!   when the host wants fresh figures: that is how it asks (5.5.6.3).
//! - reporting_vq: each descriptor is a range of free guest memory, freed like inflated
//!   pages; the guest reuses it once the buffer is used (5.5.6.6).
//!
//! Everything is the guest's word: PFNs and ranges are clipped to guest RAM and to whole
//! host pages inside them, a buffer outside guest memory is skipped and counted, and
//! no request reads more than a bounded amount of guest memory.

use std::io::Read;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{
    GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap, MemoryRegionAddress,
};

use super::stats::{BalloonStats, MAX_STATS_BYTES};
use super::{BalloonHandle, Shared, BALLOON_PAGE_BYTES, VIRTIO_BALLOON_PFN_SHIFT};
use crate::devices::virtio::worker::WorkerHandler;
use crate::devices::virtio::{drain_queue, Interrupt, QueuePosition};

/// Host page size. The engine runs on x86_64, whose base pages are 4 KiB, the balloon's
/// unit too. (On a larger-page host, madvise would refuse the unaligned ranges: pages
/// stay, nothing breaks.)
const HOST_PAGE_BYTES: u64 = 4096;
/// The most of an inflate or deflate buffer read: 1 Mi PFNs, 4 GiB of guest memory.
/// Linux sends 256 PFNs at a time; a guest posting more gets the rest ignored rather
/// than keeping the worker busy for long.
const MAX_PFN_BYTES: usize = 4 << 20;
/// Bytes read from guest memory at a time when walking a PFN array.
const PFN_CHUNK_BYTES: usize = 4096;

/// What a queue is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueRole {
    Inflate,
    Deflate,
    Stats,
    Reporting,
}

/// A queue the worker serves.
pub struct BalloonQueue {
    pub role: QueueRole,
    /// The queue's index in the device: what its interrupt is raised with.
    pub index: u16,
    pub queue: Queue,
}

/// Why one buffer could not be read. The buffer is still used (returned), with nothing
/// done for it.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("a descriptor lies outside guest memory: {0}")]
    Descriptor(#[source] virtio_queue::Error),
    #[error("cannot read the buffer: {0}")]
    Read(#[source] std::io::Error),
}

/// Why the worker stopped serving a queue for now: the ring itself is broken.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("virtio-balloon {role:?} queue: {source}")]
    Queue {
        role: QueueRole,
        #[source]
        source: virtio_queue::Error,
    },
    #[error("virtio-balloon: cannot interrupt the guest: {0}")]
    Interrupt(#[source] std::io::Error),
    #[error("virtio-balloon: no queue {0}")]
    NoSuchQueue(usize),
}

/// The worker's handler: owns the queues while the device is active.
pub struct BalloonWorker {
    mem: GuestMemoryMmap,
    interrupt: Arc<dyn Interrupt>,
    queues: Vec<BalloonQueue>,
    shared: Arc<Shared>,
    /// The statsq buffer the device holds (its head index), to return when the host
    /// asks for fresh statistics.
    held_stats: Option<u16>,
}

impl BalloonWorker {
    /// A handler for `queues` (in the order of the notifiers given to `Worker::spawn`),
    /// sharing the configuration, statistics and counters of `handle`'s device.
    pub fn new(
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn Interrupt>,
        queues: Vec<BalloonQueue>,
        handle: &BalloonHandle,
    ) -> Self {
        Self {
            mem,
            interrupt,
            queues,
            shared: handle.shared.clone(),
            held_stats: None,
        }
    }

    fn serve(&mut self, position: usize) -> Result<(), WorkerError> {
        let Self {
            mem,
            interrupt,
            queues,
            shared,
            held_stats,
        } = self;
        let (mem, shared) = (&*mem, &**shared);
        let q = queues
            .get_mut(position)
            .ok_or(WorkerError::NoSuchQueue(position))?;
        let role = q.role;
        let queue_err = |source| WorkerError::Queue { role, source };
        let notify = match role {
            QueueRole::Inflate => drain_queue(&mut q.queue, mem, |chain| {
                inflate(chain, mem, shared);
                0
            }),
            QueueRole::Deflate => drain_queue(&mut q.queue, mem, |chain| {
                deflate(chain, mem, shared);
                0
            }),
            QueueRole::Reporting => drain_queue(&mut q.queue, mem, |chain| {
                report(chain, mem, shared);
                0
            }),
            QueueRole::Stats => take_stats(&mut q.queue, mem, shared, held_stats),
        }
        .map_err(queue_err)?;
        if notify {
            interrupt
                .signal_used_queue(q.index)
                .map_err(WorkerError::Interrupt)?;
        }
        Ok(())
    }

    /// The host asked for statistics: return the held buffer, which tells the driver to
    /// post fresh ones.
    fn release_stats(&mut self) -> Result<(), WorkerError> {
        // Consume the request first; one returned buffer answers every request so far.
        let _ = self.shared.stats_request.read();
        let Some(q) = self.queues.iter_mut().find(|q| q.role == QueueRole::Stats) else {
            return Ok(());
        };
        let Some(head) = self.held_stats.take() else {
            // The driver is preparing its next buffer: that one will be fresh.
            return Ok(());
        };
        let queue_err = |source| WorkerError::Queue {
            role: QueueRole::Stats,
            source,
        };
        q.queue.add_used(&self.mem, head, 0).map_err(queue_err)?;
        if q.queue.needs_notification(&self.mem).map_err(queue_err)? {
            self.interrupt
                .signal_used_queue(q.index)
                .map_err(WorkerError::Interrupt)?;
        }
        Ok(())
    }
}

impl BalloonWorker {
    /// Where each queue stands, for a save. The statsq buffer the device holds is
    /// always the last one it popped (`take_stats` swaps each new buffer in for the
    /// old, which it returns; `release_stats` returns the held one without popping),
    /// so rewinding that queue's next_avail by one gives the buffer back to the
    /// available ring as the driver left it: the restored device pops it again and
    /// holds it, exactly as the driver expects. Returning it instead would ask the
    /// driver for statistics nobody wants, and forgetting it would leave the driver
    /// waiting forever for a buffer it never gets back, so no statistics again.
    /// The driver cannot have reused that avail ring slot meanwhile: it gets a slot
    /// back only after a queue's worth of newer buffers, and it has one stats buffer.
    pub fn positions(&self) -> Vec<QueuePosition> {
        self.queues
            .iter()
            .map(|q| {
                let mut at = QueuePosition::of(q.index, &q.queue);
                if q.role == QueueRole::Stats && self.held_stats.is_some() {
                    at.next_avail = at.next_avail.wrapping_sub(1);
                }
                at
            })
            .collect()
    }

    /// Drains the statsq once: after a restore, that takes the buffer the save left
    /// available (its figures, unchanged in guest memory, are published again).
    pub fn take_held_stats(&mut self) -> Result<(), WorkerError> {
        match self.queues.iter().position(|q| q.role == QueueRole::Stats) {
            Some(position) => self.serve(position),
            None => Ok(()),
        }
    }
}

impl WorkerHandler for BalloonWorker {
    fn queue_notified(&mut self, index: usize) -> Result<(), String> {
        self.serve(index).map_err(|e| e.to_string())
    }

    fn backend_fds(&self) -> Vec<RawFd> {
        vec![self.shared.stats_request_fd()]
    }

    fn backend_ready(&mut self, _index: usize) -> Result<(), String> {
        self.release_stats().map_err(|e| e.to_string())
    }
}

/// Drains the statsq: parses each buffer and keeps it instead of using it. The driver
/// posts one at a time; if it posts another while we hold one, the older goes back.
/// Returns whether the driver must be interrupted.
fn take_stats(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    shared: &Shared,
    held: &mut Option<u16>,
) -> Result<bool, virtio_queue::Error> {
    let mut used_any = false;
    loop {
        queue.disable_notification(mem)?;
        while let Some(chain) = queue.iter(mem)?.next() {
            let head = chain.head_index();
            match read_stats(chain, mem) {
                Ok(stats) => shared.publish_stats(stats),
                Err(e) => {
                    // Still held: returning it at once would only make the guest post
                    // again; the next host request returns it.
                    tracing::debug!("virtio-balloon stats buffer: {e}");
                    shared.invalid_requests.fetch_add(1, Ordering::Relaxed);
                }
            }
            if let Some(old) = held.replace(head) {
                queue.add_used(mem, old, 0)?;
                used_any = true;
            }
        }
        if !queue.enable_notification(mem)? {
            break;
        }
    }
    Ok(used_any && queue.needs_notification(mem)?)
}

/// Reads one statistics buffer (its first `MAX_STATS_BYTES`).
pub fn read_stats(
    chain: DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
) -> Result<BalloonStats, RequestError> {
    let mut reader = chain.reader(mem).map_err(RequestError::Descriptor)?;
    let mut buf = vec![0u8; reader.available_bytes().min(MAX_STATS_BYTES)];
    reader.read_exact(&mut buf).map_err(RequestError::Read)?;
    Ok(BalloonStats::parse(&buf))
}

fn inflate(chain: DescriptorChain<&GuestMemoryMmap>, mem: &GuestMemoryMmap, shared: &Shared) {
    let result = for_each_pfn_run(chain, mem, |first, count| {
        let in_ram = discard_range(
            mem,
            first << VIRTIO_BALLOON_PFN_SHIFT,
            count << VIRTIO_BALLOON_PFN_SHIFT,
        ) / BALLOON_PAGE_BYTES;
        shared.inflated_pages.fetch_add(in_ram, Ordering::Relaxed);
        if in_ram < count {
            shared.invalid_requests.fetch_add(1, Ordering::Relaxed);
        }
    });
    if let Err(e) = result {
        tracing::debug!("virtio-balloon inflate buffer: {e}");
        shared.invalid_requests.fetch_add(1, Ordering::Relaxed);
    }
}

fn deflate(chain: DescriptorChain<&GuestMemoryMmap>, mem: &GuestMemoryMmap, shared: &Shared) {
    let result = for_each_pfn_run(chain, mem, |first, count| {
        let mut in_ram = 0;
        for_each_ram_piece(
            mem,
            first << VIRTIO_BALLOON_PFN_SHIFT,
            count << VIRTIO_BALLOON_PFN_SHIFT,
            |_, start, end| in_ram += end - start,
        );
        let in_ram = in_ram / BALLOON_PAGE_BYTES;
        shared.deflated_pages.fetch_add(in_ram, Ordering::Relaxed);
        if in_ram < count {
            shared.invalid_requests.fetch_add(1, Ordering::Relaxed);
        }
    });
    if let Err(e) = result {
        tracing::debug!("virtio-balloon deflate buffer: {e}");
        shared.invalid_requests.fetch_add(1, Ordering::Relaxed);
    }
}

/// Free page reporting: every descriptor, whichever its direction (Linux posts them
/// device-writable), is a range of free guest memory.
fn report(chain: DescriptorChain<&GuestMemoryMmap>, mem: &GuestMemoryMmap, shared: &Shared) {
    for desc in chain {
        let len = u64::from(desc.len());
        let in_ram = discard_range(mem, desc.addr().0, len);
        shared.reported_bytes.fetch_add(in_ram, Ordering::Relaxed);
        if in_ram < len {
            shared.invalid_requests.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Reads the chain's readable bytes as an array of le32 PFNs (the first
/// `MAX_PFN_BYTES`; a trailing partial entry is ignored) and calls `run(first, count)`
/// for each run of consecutive PFNs, so that contiguous pages cost one madvise.
pub fn for_each_pfn_run(
    chain: DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    mut run: impl FnMut(u64, u64),
) -> Result<(), RequestError> {
    let mut reader = chain.reader(mem).map_err(RequestError::Descriptor)?;
    let mut left = reader.available_bytes().min(MAX_PFN_BYTES) & !3;
    let mut buf = [0u8; PFN_CHUNK_BYTES];
    let mut current: Option<(u64, u64)> = None;
    while left > 0 {
        let n = left.min(buf.len());
        reader
            .read_exact(&mut buf[..n])
            .map_err(RequestError::Read)?;
        left -= n;
        for entry in buf[..n].chunks_exact(4) {
            let pfn = u64::from(u32::from_le_bytes([entry[0], entry[1], entry[2], entry[3]]));
            match &mut current {
                Some((first, count)) if *first + *count == pfn => *count += 1,
                _ => {
                    if let Some((first, count)) = current.replace((pfn, 1)) {
                        run(first, count);
                    }
                }
            }
        }
    }
    if let Some((first, count)) = current {
        run(first, count);
    }
    Ok(())
}

/// Calls `piece(region, start, end)` for each part of guest range `[addr, addr + len)`
/// inside guest RAM, with `start..end` as offsets into `region`.
fn for_each_ram_piece(
    mem: &GuestMemoryMmap,
    addr: u64,
    len: u64,
    mut piece: impl FnMut(&GuestRegionMmap, u64, u64),
) {
    let end = addr.saturating_add(len);
    for region in mem.iter() {
        let region_start = region.start_addr().0;
        let region_end = region_start.saturating_add(region.len());
        let start = addr.max(region_start);
        let stop = end.min(region_end);
        if start < stop {
            piece(region, start - region_start, stop - region_start);
        }
    }
}

/// Gives the host memory behind guest range `[addr, addr + len)` back to the host: the
/// whole host pages inside the part of it in guest RAM (never a byte outside the
/// range). Returns how many bytes of the range are in guest RAM.
pub fn discard_range(mem: &GuestMemoryMmap, addr: u64, len: u64) -> u64 {
    let mut in_ram = 0;
    for_each_ram_piece(mem, addr, len, |region, start, end| {
        in_ram += end - start;
        // Offsets, not guest addresses: the mapping itself starts on a host page.
        let start = start.next_multiple_of(HOST_PAGE_BYTES);
        let end = end - end % HOST_PAGE_BYTES;
        if start < end {
            discard_region_range(region, start, end - start);
        }
    });
    in_ram
}

/// Frees `len` bytes at page-aligned offset `start` of `region`, which holds them.
fn discard_region_range(region: &GuestRegionMmap, start: u64, len: u64) {
    let Ok(host) = region.get_host_address(MemoryRegionAddress(start)) else {
        return;
    };
    let Ok(len) = usize::try_from(len) else {
        return;
    };
    // Anonymous memory is freed by MADV_DONTNEED. A shared file mapping (a memfd) keeps
    // its pages in the file: MADV_REMOVE punches them out of it.
    let advices: &[libc::c_int] = if region.file_offset().is_some() {
        // A private file mapping refuses MADV_REMOVE; DONTNEED drops its copies.
        &[libc::MADV_REMOVE, libc::MADV_DONTNEED]
    } else {
        &[libc::MADV_DONTNEED]
    };
    for &advice in advices {
        // SAFETY: `[host, host + len)` is page-aligned and inside the mapping of
        // `region` (the caller clipped it to the region), which `mem` keeps mapped while
        // we run. madvise only drops the pages' contents: the host never holds Rust
        // references into guest memory (vm-memory accesses it through volatile
        // pointers), so a page reading back as zero is no different from a guest write.
        let ret = unsafe { libc::madvise(host.cast(), len, advice) };
        if ret == 0 {
            return;
        }
    }
    // hugetlbfs-backed memory refuses 4 KiB ranges: the pages stay, nothing else.
    tracing::debug!(
        "virtio-balloon: madvise of {len} bytes failed: {}",
        std::io::Error::last_os_error()
    );
}

#[cfg(test)]
mod tests {
    use super::super::stats::{encode_entry, VIRTIO_BALLOON_S_MEMFREE, VIRTIO_BALLOON_S_MEMTOT};
    use super::super::Balloon;
    use super::*;
    use crate::devices::virtio::test_utils::CountingInterrupt;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    const MIB: u64 = 1 << 20;
    /// Two regions with a hole between them, 64 MiB of RAM in all.
    const LOW: (u64, u64) = (0, 32 * MIB);
    const HIGH: (u64, u64) = (48 * MIB, 32 * MIB);
    /// Where the PFN arrays and stats buffers go.
    const BUFFERS: u64 = 0x10_0000;

    fn guest_memory() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(LOW.0), LOW.1 as usize),
            (GuestAddress(HIGH.0), HIGH.1 as usize),
        ])
        .unwrap()
    }

    /// Queue `role_index` lives at `role_index * 0x1000`.
    struct Setup {
        mem: GuestMemoryMmap,
        worker: BalloonWorker,
        handle: BalloonHandle,
        interrupt: Arc<CountingInterrupt>,
        /// Each queue's used ring.
        used: Vec<GuestAddress>,
        _balloon: Balloon,
    }

    fn setup(roles: &[QueueRole]) -> Setup {
        let mem = guest_memory();
        let mut used = Vec::new();
        let queues = roles
            .iter()
            .enumerate()
            .map(|(i, &role)| {
                let mock = mock(&mem, i);
                used.push(mock.used_addr());
                BalloonQueue {
                    role,
                    index: i as u16,
                    queue: mock.create_queue().unwrap(),
                }
            })
            .collect();
        let balloon = Balloon::new(0).unwrap();
        let handle = balloon.handle();
        let interrupt = Arc::new(CountingInterrupt::default());
        let worker = BalloonWorker::new(mem.clone(), interrupt.clone(), queues, &handle);
        Setup {
            mem,
            worker,
            handle,
            interrupt,
            used,
            _balloon: balloon,
        }
    }

    /// The driver side of queue `position`. Creating it clears the rings' indexes: once
    /// per queue and test, before the device uses it.
    fn mock(mem: &GuestMemoryMmap, position: usize) -> MockSplitQueue<'_, GuestMemoryMmap> {
        MockSplitQueue::create(mem, GuestAddress(position as u64 * 0x1000), 16)
    }

    fn desc(addr: u64, len: u32, flags: u32) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, 0))
    }

    /// One chain of `parts` (addr, len, flags) at descriptor indexes 0, 1, ...
    fn chain(parts: &[(u64, u32, u32)]) -> Vec<RawDescriptor> {
        let last = parts.len() - 1;
        parts
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, flags))| {
                let (flags, next) = if i < last {
                    (flags | VRING_DESC_F_NEXT, i as u16 + 1)
                } else {
                    (flags, 0)
                };
                RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, next))
            })
            .collect()
    }

    /// Writes `pfns` at `BUFFERS` and posts them as one buffer on queue `position`.
    fn post_pfns(s: &Setup, position: usize, pfns: &[u32]) {
        let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
        s.mem.write_slice(&bytes, GuestAddress(BUFFERS)).unwrap();
        mock(&s.mem, position)
            .add_desc_chains(&[desc(BUFFERS, bytes.len() as u32, 0)], 0)
            .unwrap();
    }

    fn used_idx(s: &Setup, position: usize) -> u16 {
        s.mem
            .read_obj(GuestAddress(s.used[position].0 + 2))
            .unwrap()
    }

    /// Which of the 4 KiB pages of guest range `[addr, addr + len)` are resident.
    fn resident(mem: &GuestMemoryMmap, addr: u64, len: u64) -> Vec<bool> {
        let host = mem.get_host_address(GuestAddress(addr)).unwrap();
        let pages = (len / 4096) as usize;
        let mut vec = vec![0u8; pages];
        // SAFETY: `host` is page-aligned inside a mapping of at least `len` bytes that
        // `mem` keeps alive; `vec` has one byte per page, as mincore writes.
        let ret = unsafe { libc::mincore(host.cast(), len as usize, vec.as_mut_ptr()) };
        assert_eq!(ret, 0, "{}", std::io::Error::last_os_error());
        vec.iter().map(|b| b & 1 != 0).collect()
    }

    fn touch(mem: &GuestMemoryMmap, addr: u64, len: u64) {
        let data = vec![0x5au8; len as usize];
        mem.write_slice(&data, GuestAddress(addr)).unwrap();
    }

    #[test]
    fn inflate_frees_touched_pages_and_skips_pfns_outside_ram() {
        let mut s = setup(&[QueueRole::Inflate, QueueRole::Deflate]);
        // 1 MiB of touched pages in each region, plus neighbours that stay.
        let low = 4 * MIB;
        let high = HIGH.0 + 4 * MIB;
        touch(&s.mem, low - 4096, MIB + 8192);
        touch(&s.mem, high, MIB);
        assert!(resident(&s.mem, low, MIB).iter().all(|&r| r));
        assert!(resident(&s.mem, high, MIB).iter().all(|&r| r));

        let mut pfns: Vec<u32> = (0..256).map(|i| (low / 4096) as u32 + i).collect();
        // Not in order, and not contiguous with the first run.
        pfns.extend((0..256).rev().map(|i| (high / 4096) as u32 + i));
        // In the hole, past the end of RAM, the largest PFN.
        pfns.extend([
            (40 * MIB / 4096) as u32,
            (HIGH.0 + HIGH.1) as u32 / 4096,
            u32::MAX,
        ]);
        post_pfns(&s, 0, &pfns);
        s.worker.queue_notified(0).unwrap();

        assert_eq!(used_idx(&s, 0), 1);
        assert_eq!(s.interrupt.used(), 1);
        assert!(resident(&s.mem, low, MIB).iter().all(|&r| !r));
        assert!(resident(&s.mem, high, MIB).iter().all(|&r| !r));
        // The pages either side were not in the balloon: still there, still intact.
        assert_eq!(resident(&s.mem, low - 4096, 4096), [true]);
        assert_eq!(resident(&s.mem, low + MIB, 4096), [true]);
        let mut byte = [0u8; 1];
        s.mem
            .read_slice(&mut byte, GuestAddress(low + MIB))
            .unwrap();
        assert_eq!(byte, [0x5a]);
        // A freed page reads back as zero.
        s.mem.read_slice(&mut byte, GuestAddress(low)).unwrap();
        assert_eq!(byte, [0]);

        let c = s.handle.counters();
        assert_eq!(c.inflated_pages, 512);
        assert_eq!(c.invalid_requests, 3);

        // Deflating them back only counts them.
        post_pfns(&s, 1, &pfns[..512]);
        s.worker.queue_notified(1).unwrap();
        assert_eq!(used_idx(&s, 1), 1);
        assert_eq!(s.handle.counters().deflated_pages, 512);
    }

    #[test]
    fn hostile_inflate_buffers_are_skipped() {
        let mut s = setup(&[QueueRole::Inflate, QueueRole::Deflate]);
        touch(&s.mem, 2 * MIB, 4096);
        let q = mock(&s.mem, 0);
        // A buffer outside guest memory; one straddling the end of RAM; a huge length
        // pointing at RAM; a 3-byte buffer (no whole PFN); a write-only buffer.
        q.add_desc_chains(&[desc(HIGH.0 + HIGH.1 + 4096, 4096, 0)], 0)
            .unwrap();
        q.add_desc_chains(&[desc(LOW.1 - 8, 4096, 0)], 1).unwrap();
        q.add_desc_chains(&[desc(0, u32::MAX, 0)], 2).unwrap();
        q.add_desc_chains(&[desc(BUFFERS, 3, 0)], 3).unwrap();
        q.add_desc_chains(&[desc(BUFFERS, 4096, VRING_DESC_F_WRITE)], 4)
            .unwrap();
        s.worker.queue_notified(0).unwrap();
        assert_eq!(used_idx(&s, 0), 5);
        assert_eq!(resident(&s.mem, 2 * MIB, 4096), [true]);
        let c = s.handle.counters();
        assert_eq!(c.inflated_pages, 0);
        // The three unreadable buffers; the short and write-only ones hold no PFN.
        assert_eq!(c.invalid_requests, 3);
    }

    #[test]
    fn a_pfn_array_spanning_descriptors_is_read_as_one() {
        let mut s = setup(&[QueueRole::Inflate, QueueRole::Deflate]);
        touch(&s.mem, 8 * MIB, 3 * 4096);
        let p = (8 * MIB / 4096) as u32;
        // PFN 1 is split 2 + 2 bytes across the descriptors.
        let bytes: Vec<u8> = [p, p + 1, p + 2]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        s.mem
            .write_slice(&bytes[..6], GuestAddress(BUFFERS))
            .unwrap();
        s.mem
            .write_slice(&bytes[6..], GuestAddress(BUFFERS + 0x1000))
            .unwrap();
        mock(&s.mem, 0)
            .add_desc_chains(&chain(&[(BUFFERS, 6, 0), (BUFFERS + 0x1000, 6, 0)]), 0)
            .unwrap();
        s.worker.queue_notified(0).unwrap();
        assert_eq!(resident(&s.mem, 8 * MIB, 3 * 4096), [false; 3]);
        assert_eq!(s.handle.counters().inflated_pages, 3);
    }

    #[test]
    fn pfn_runs_coalesce() {
        let s = setup(&[QueueRole::Inflate, QueueRole::Deflate]);
        let pfns: Vec<u32> = vec![10, 11, 12, 20, 5, 6, u32::MAX - 1, u32::MAX, 0];
        let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
        s.mem.write_slice(&bytes, GuestAddress(BUFFERS)).unwrap();
        let q = mock(&s.mem, 0);
        let chain = q
            .build_desc_chain(&[desc(BUFFERS, bytes.len() as u32, 0)])
            .unwrap();
        let mut runs = Vec::new();
        for_each_pfn_run(chain, &s.mem, |f, c| runs.push((f, c))).unwrap();
        let max = u64::from(u32::MAX);
        assert_eq!(runs, [(10, 3), (20, 1), (5, 2), (max - 1, 2), (0, 1)]);
    }

    #[test]
    fn free_page_reports_free_ranges_inside_ram_only() {
        let mut s = setup(&[QueueRole::Inflate, QueueRole::Deflate, QueueRole::Reporting]);
        let a = 16 * MIB;
        let b = HIGH.0 + 2 * MIB;
        touch(&s.mem, a - 4096, 2 * MIB + 8192);
        touch(&s.mem, b, 2 * MIB);
        touch(&s.mem, HIGH.0 + HIGH.1 - 4096, 4096);
        // A 2 MiB range (Linux reports high-order pages), a misaligned one (only its
        // whole pages go), one running past the end of RAM, one in the hole, one
        // wrapping past 2^64: as Linux posts them, device-writable, in one chain.
        mock(&s.mem, 2)
            .add_desc_chains(
                &chain(&[
                    (a, 2 * MIB as u32, VRING_DESC_F_WRITE),
                    (b + 100, 8192, VRING_DESC_F_WRITE),
                    (HIGH.0 + HIGH.1 - 4096, 1 << 20, VRING_DESC_F_WRITE),
                    (40 * MIB, 4096, VRING_DESC_F_WRITE),
                    (u64::MAX - 4095, 8192, VRING_DESC_F_WRITE),
                ]),
                0,
            )
            .unwrap();
        s.worker.queue_notified(2).unwrap();
        assert_eq!(used_idx(&s, 2), 1);
        assert!(resident(&s.mem, a, 2 * MIB).iter().all(|&r| !r));
        assert_eq!(resident(&s.mem, a - 4096, 4096), [true]);
        assert_eq!(resident(&s.mem, a + 2 * MIB, 4096), [true]);
        // b + 100 .. b + 8292: only the page at b + 4096 is whole.
        assert_eq!(resident(&s.mem, b, 3 * 4096), [true, false, true]);
        assert_eq!(resident(&s.mem, HIGH.0 + HIGH.1 - 4096, 4096), [false]);
        let c = s.handle.counters();
        assert_eq!(c.reported_bytes, 2 * MIB + 8192 + 4096);
        assert_eq!(c.invalid_requests, 3);
    }

    #[test]
    fn stats_buffer_is_held_until_the_host_asks() {
        let mut s = setup(&[QueueRole::Inflate, QueueRole::Deflate, QueueRole::Stats]);
        let q = mock(&s.mem, 2);
        let mut buf: Vec<u8> = [
            (VIRTIO_BALLOON_S_MEMTOT, 1 << 30),
            (VIRTIO_BALLOON_S_MEMFREE, 77),
        ]
        .iter()
        .flat_map(|&(t, v)| encode_entry(t, v))
        .collect();
        buf.extend_from_slice(&[1, 2, 3]); // truncated garbage entry
        s.mem.write_slice(&buf, GuestAddress(BUFFERS)).unwrap();
        q.add_desc_chains(&[desc(BUFFERS, buf.len() as u32, 0)], 0)
            .unwrap();
        s.worker.queue_notified(2).unwrap();
        let stats = s.handle.stats().unwrap();
        assert_eq!(stats.total_memory, Some(1 << 30));
        assert_eq!(stats.free_memory, Some(77));
        assert_eq!(stats.swap_in, None);
        assert_eq!(used_idx(&s, 2), 0);
        assert_eq!(s.interrupt.used(), 0);

        // The host asks: the buffer goes back, with an interrupt.
        s.worker.backend_ready(0).unwrap();
        assert_eq!(used_idx(&s, 2), 1);
        assert_eq!(s.interrupt.used(), 1);
        // Asking again with nothing held does nothing.
        s.worker.backend_ready(0).unwrap();
        assert_eq!(used_idx(&s, 2), 1);

        // A buffer outside guest memory: stats unchanged, held all the same; a second
        // buffer while one is held sends the older back.
        q.add_desc_chains(&[desc(1 << 40, 100, 0)], 1).unwrap();
        q.add_desc_chains(&[desc(BUFFERS, 10, 0)], 2).unwrap();
        s.worker.queue_notified(2).unwrap();
        assert_eq!(used_idx(&s, 2), 2);
        assert_eq!(s.handle.stats().unwrap().total_memory, Some(1 << 30));
        assert_eq!(s.handle.stats().unwrap().free_memory, None);
        assert_eq!(s.handle.counters().invalid_requests, 1);
    }

    #[test]
    fn a_broken_ring_is_an_error_not_a_panic() {
        let mut s = setup(&[QueueRole::Inflate, QueueRole::Deflate]);
        // avail.idx jumps far ahead of the queue size.
        let avail_idx = GuestAddress(mock(&s.mem, 0).avail_addr().0 + 2);
        s.mem.write_obj(1000u16, avail_idx).unwrap();
        assert!(s.worker.queue_notified(0).is_err());
        assert!(s.worker.queue_notified(7).is_err());
    }
}
