//! virtio-balloon (virtio 1.2, 5.5 "Traditional Memory Balloon Device"): the host asks
//! the guest to give pages back (`num_pages`), the driver lists the pages it gave on
//! the inflateq and the host frees them; the guest reports memory statistics on the
//! statsq and free memory on the reporting_vq.
//!
//! - `stats`: the statistics buffer and `BalloonStats`.
//! - `policy`: who sets the target: the user, or the engine giving idle memory back.
//! - `worker`: the worker thread's handler: each queue's requests, freeing guest pages.
//!
//! The host side (the control socket) never touches the device, which lives inside the
//! PCI transport behind a lock: it keeps a `BalloonHandle` (from `Balloon::handle`),
//! which shares the configuration fields, the statistics and, while the device is
//! active, the interrupt with the device.
//!
//! Queues exist only for negotiated features, in the spec's order (5.5.2, and what
//! Linux does: a queue whose feature is not negotiated takes no index): inflateq 0,
//! deflateq 1, then statsq if VIRTIO_BALLOON_F_STATS_VQ, then reporting_vq if
//! VIRTIO_BALLOON_F_REPORTING. So `activate` maps queue indexes to roles by the acked
//! features. free_page_vq (free page hinting, for migration) is not offered.

pub mod persist;
pub mod policy;
pub mod stats;
pub mod worker;

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_ids::VIRTIO_ID_BALLOON;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::worker::{kick_each, Worker};
use super::{
    ActivateError, ActiveQueue, DeviceState, Interrupt, SaveError, VirtioDevice,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};
use persist::BalloonState;
pub use stats::BalloonStats;
use worker::{BalloonQueue, BalloonWorker, QueueRole};

// Feature bits (virtio 1.2, 5.5.3). virtio-bindings has no virtio_balloon module.
/// The driver tells the host before it reuses deflated pages. Not offered: deflating
/// needs nothing from the host here (freed anonymous pages come back zeroed).
pub const VIRTIO_BALLOON_F_MUST_TELL_HOST: u32 = 0;
/// A statsq is present.
pub const VIRTIO_BALLOON_F_STATS_VQ: u32 = 1;
/// The guest may take pages back from the balloon when it runs out of memory, so a
/// target too large for the guest slows it down instead of killing its processes.
pub const VIRTIO_BALLOON_F_DEFLATE_ON_OOM: u32 = 2;
/// A free_page_vq is present (free page hinting). Not offered.
pub const VIRTIO_BALLOON_F_FREE_PAGE_HINT: u32 = 3;
/// The driver fills free pages with `poison_val`. Not offered: discarded pages come
/// back zero, so a poisoning guest must not report them (Linux then turns reporting
/// off by itself).
pub const VIRTIO_BALLOON_F_PAGE_POISON: u32 = 4;
/// A reporting_vq is present (free page reporting).
pub const VIRTIO_BALLOON_F_REPORTING: u32 = 5;

/// Balloon PFNs are in 4 KiB units whatever the guest's page size (5.5.6, footnote).
pub const VIRTIO_BALLOON_PFN_SHIFT: u32 = 12;
/// Bytes per balloon page.
pub const BALLOON_PAGE_BYTES: u64 = 1 << VIRTIO_BALLOON_PFN_SHIFT;

/// What the device offers.
pub const FEATURES: u64 = VIRTIO_F_VERSION_1
    | VIRTIO_RING_F_EVENT_IDX
    | 1 << VIRTIO_BALLOON_F_STATS_VQ
    | 1 << VIRTIO_BALLOON_F_DEFLATE_ON_OOM
    | 1 << VIRTIO_BALLOON_F_REPORTING;

/// The size of every queue. Linux puts 256 PFNs in one inflate buffer and one buffer
/// per queue at a time, except reporting (up to 32 ranges per request).
pub const QUEUE_SIZE: u16 = 128;
/// inflateq, deflateq, statsq, reporting_vq: the most the driver can enable.
const QUEUE_SIZES: &[u16] = &[QUEUE_SIZE; 4];

/// `struct virtio_balloon_config` (5.5.4): four le32 fields.
pub mod config {
    /// Pages the host wants in the balloon. Device-written.
    pub const NUM_PAGES: u64 = 0;
    /// Pages in the balloon. Driver-written.
    pub const ACTUAL: u64 = 4;
    /// Free page hinting command (read-only; 0 = VIRTIO_BALLOON_CMD_ID_STOP, as no
    /// hinting is offered).
    pub const FREE_PAGE_HINT_CMD_ID: u64 = 8;
    /// The driver's page poison value. Driver-written.
    pub const POISON_VAL: u64 = 12;
    /// Size of the configuration space.
    pub const SIZE: u64 = 16;
}

/// Errors of the host-side API.
#[derive(Debug, thiserror::Error)]
pub enum BalloonError {
    #[error("cannot interrupt the guest about the new balloon target: {0}")]
    Interrupt(#[source] std::io::Error),
    #[error("the guest's balloon driver is not running")]
    NotActive,
    #[error("the guest's balloon driver does not report memory statistics")]
    NoStatsQueue,
    #[error("cannot ask the balloon device for statistics: {0}")]
    Request(#[source] std::io::Error),
    #[error("the guest did not report memory statistics within {0:?}")]
    StatsTimeout(Duration),
}

/// What the device did since it was created (host-side figures for the control socket).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonCounters {
    /// PFNs the guest put in the balloon that were in guest RAM (and freed).
    pub inflated_pages: u64,
    /// PFNs the guest took back out of the balloon.
    pub deflated_pages: u64,
    /// Bytes of free memory the guest reported and the host freed.
    pub reported_bytes: u64,
    /// PFNs or ranges outside guest RAM, and buffers that were not readable: the
    /// guest's bugs (or hostility), skipped.
    pub invalid_requests: u64,
}

/// The last statistics and who waits for new ones.
#[derive(Default)]
struct StatsSlot {
    /// The last buffer's statistics; `None` until the guest reported once.
    last: Option<BalloonStats>,
    /// Counts buffers received, so a waiter knows when a new one came.
    generation: u64,
    /// Whether the active driver negotiated (and enabled) the statsq.
    has_queue: bool,
}

/// The state the device and its handles share.
struct Shared {
    num_pages: AtomicU32,
    actual: AtomicU32,
    poison_val: AtomicU32,
    /// The interrupt of the active device; `None` while inactive.
    interrupt: Mutex<Option<Arc<dyn Interrupt>>>,
    stats: Mutex<StatsSlot>,
    stats_arrived: Condvar,
    /// Written by the host to make the worker return the statsq buffer it holds, which
    /// asks the guest for fresh statistics (5.5.6.3).
    stats_request: EventFd,
    inflated_pages: AtomicU64,
    deflated_pages: AtomicU64,
    reported_bytes: AtomicU64,
    invalid_requests: AtomicU64,
}

impl Shared {
    fn lock_stats(&self) -> MutexGuard<'_, StatsSlot> {
        // A panic while holding it (none is expected) leaves plain data behind.
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_interrupt(&self) -> MutexGuard<'_, Option<Arc<dyn Interrupt>>> {
        self.interrupt.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The worker received a statsq buffer.
    fn publish_stats(&self, stats: BalloonStats) {
        let mut slot = self.lock_stats();
        slot.last = Some(stats);
        slot.generation = slot.generation.wrapping_add(1);
        self.stats_arrived.notify_all();
    }

    fn stats_request_fd(&self) -> RawFd {
        self.stats_request.as_raw_fd()
    }
}

/// The host side of a balloon device: cheap to clone, usable from any thread, before,
/// during and after the driver runs.
#[derive(Clone)]
pub struct BalloonHandle {
    shared: Arc<Shared>,
}

impl BalloonHandle {
    /// Sets the number of 4 KiB pages the host wants the guest to give up, and tells
    /// the driver (a configuration change interrupt) if it runs.
    pub fn set_target_pages(&self, pages: u32) -> Result<(), BalloonError> {
        self.shared.num_pages.store(pages, Ordering::SeqCst);
        // Clone the interrupt out so the transport's lock is never taken under ours.
        let interrupt = self.shared.lock_interrupt().clone();
        match interrupt {
            Some(interrupt) => interrupt
                .signal_config_change()
                .map_err(BalloonError::Interrupt),
            None => Ok(()),
        }
    }

    /// Sets the balloon's target size in bytes, rounded down to whole pages (and capped
    /// at the 2^32 - 1 pages the configuration field holds).
    pub fn set_target_bytes(&self, bytes: u64) -> Result<(), BalloonError> {
        let pages = (bytes >> VIRTIO_BALLOON_PFN_SHIFT).min(u64::from(u32::MAX));
        self.set_target_pages(pages as u32)
    }

    /// The target, in pages.
    pub fn target_pages(&self) -> u32 {
        self.shared.num_pages.load(Ordering::SeqCst)
    }

    /// The target, in bytes.
    pub fn target_bytes(&self) -> u64 {
        u64::from(self.target_pages()) << VIRTIO_BALLOON_PFN_SHIFT
    }

    /// Pages in the balloon, as the driver last reported (`actual`).
    pub fn actual_pages(&self) -> u32 {
        self.shared.actual.load(Ordering::SeqCst)
    }

    /// Bytes in the balloon, as the driver last reported.
    pub fn actual_bytes(&self) -> u64 {
        u64::from(self.actual_pages()) << VIRTIO_BALLOON_PFN_SHIFT
    }

    /// Whether a driver is running the device.
    pub fn is_active(&self) -> bool {
        self.shared.lock_interrupt().is_some()
    }

    /// The statistics of the guest's last report; `None` if it never reported.
    pub fn stats(&self) -> Option<BalloonStats> {
        self.shared.lock_stats().last
    }

    /// Asks the guest for fresh statistics without waiting for them (they show in
    /// `stats` when they come).
    pub fn request_stats(&self) -> Result<(), BalloonError> {
        if !self.shared.lock_stats().has_queue {
            return Err(self.no_stats_reason());
        }
        self.shared
            .stats_request
            .write(1)
            .map_err(BalloonError::Request)
    }

    /// Asks the guest for fresh statistics and waits up to `timeout` for them.
    pub fn refresh_stats(&self, timeout: Duration) -> Result<BalloonStats, BalloonError> {
        let deadline = Instant::now() + timeout;
        let mut slot = self.shared.lock_stats();
        if !slot.has_queue {
            return Err(self.no_stats_reason());
        }
        let seen = slot.generation;
        self.shared
            .stats_request
            .write(1)
            .map_err(BalloonError::Request)?;
        loop {
            if slot.generation != seen {
                if let Some(stats) = slot.last {
                    return Ok(stats);
                }
            }
            if !slot.has_queue {
                // The device was reset meanwhile.
                return Err(self.no_stats_reason());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(BalloonError::StatsTimeout(timeout));
            }
            slot = self
                .shared
                .stats_arrived
                .wait_timeout(slot, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn no_stats_reason(&self) -> BalloonError {
        if self.is_active() {
            BalloonError::NoStatsQueue
        } else {
            BalloonError::NotActive
        }
    }

    /// What the device did so far.
    pub fn counters(&self) -> BalloonCounters {
        let s = &self.shared;
        BalloonCounters {
            inflated_pages: s.inflated_pages.load(Ordering::Relaxed),
            deflated_pages: s.deflated_pages.load(Ordering::Relaxed),
            reported_bytes: s.reported_bytes.load(Ordering::Relaxed),
            invalid_requests: s.invalid_requests.load(Ordering::Relaxed),
        }
    }
}

enum State {
    Inactive,
    Activated(Worker<BalloonWorker>),
}

/// The balloon device.
pub struct Balloon {
    shared: Arc<Shared>,
    state: State,
}

impl Balloon {
    /// A balloon whose target is `initial_target_pages` (usually 0: the guest boots
    /// with all its memory). Fails only if an eventfd cannot be created.
    pub fn new(initial_target_pages: u32) -> std::io::Result<Self> {
        let shared = Shared {
            num_pages: AtomicU32::new(initial_target_pages),
            actual: AtomicU32::new(0),
            poison_val: AtomicU32::new(0),
            interrupt: Mutex::new(None),
            stats: Mutex::new(StatsSlot::default()),
            stats_arrived: Condvar::new(),
            stats_request: EventFd::new(libc::EFD_NONBLOCK)?,
            inflated_pages: AtomicU64::new(0),
            deflated_pages: AtomicU64::new(0),
            reported_bytes: AtomicU64::new(0),
            invalid_requests: AtomicU64::new(0),
        };
        Ok(Self {
            shared: Arc::new(shared),
            state: State::Inactive,
        })
    }

    /// The host-side handle; keep it outside the PCI bus.
    pub fn handle(&self) -> BalloonHandle {
        BalloonHandle {
            shared: self.shared.clone(),
        }
    }

    /// `activate`, and for a restore (`retake_stats`) taking the statsq buffer the save
    /// left available (`BalloonWorker::positions`) again before the worker starts.
    fn start(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn Interrupt>,
        queues: Vec<ActiveQueue>,
        acked_features: u64,
        retake_stats: bool,
    ) -> Result<(), ActivateError> {
        if matches!(self.state, State::Activated(_)) {
            return Err(ActivateError::AlreadyActive);
        }
        let roles = queue_roles(acked_features);
        let mut notifiers = Vec::with_capacity(queues.len());
        let mut served = Vec::with_capacity(queues.len());
        for q in queues {
            let Some(&role) = roles.get(usize::from(q.index)) else {
                // A queue no negotiated feature gives a role: nothing will be served
                // there; the driver's kicks on it are not listened to.
                tracing::warn!(
                    "virtio-balloon: the driver enabled queue {}, which its features do not give",
                    q.index
                );
                continue;
            };
            notifiers.push(q.notify);
            served.push(BalloonQueue {
                role,
                index: q.index,
                queue: q.queue,
            });
        }
        for required in [QueueRole::Inflate, QueueRole::Deflate] {
            if !served.iter().any(|q| q.role == required) {
                return Err(ActivateError::QueueCount {
                    got: served.len(),
                    needed: 2,
                });
            }
        }
        let has_stats_queue = served.iter().any(|q| q.role == QueueRole::Stats);
        // Discard stale requests from the host made while the device was inactive.
        let _ = self.shared.stats_request.read();
        let mut handler = BalloonWorker::new(mem, interrupt.clone(), served, &self.handle());
        if retake_stats {
            // Before the worker runs, so that the handle's first refresh after a
            // restore returns this buffer and waits for fresh figures.
            if let Err(e) = handler.take_held_stats() {
                tracing::warn!("virtio-balloon: {e}");
            }
        }
        let worker =
            Worker::spawn("virtio-balloon", notifiers, handler).map_err(ActivateError::Worker)?;
        self.shared.lock_stats().has_queue = has_stats_queue;
        *self.shared.lock_interrupt() = Some(interrupt);
        self.state = State::Activated(worker);
        Ok(())
    }

    /// No driver runs the device any more: the handle stops interrupting and waiting.
    fn detach_driver(&self) {
        *self.shared.lock_interrupt() = None;
        let mut slot = self.shared.lock_stats();
        slot.has_queue = false;
        // Wake waiters: they find the queue gone.
        self.shared.stats_arrived.notify_all();
    }

    fn config_bytes(&self) -> [u8; config::SIZE as usize] {
        let s = &self.shared;
        let mut bytes = [0u8; config::SIZE as usize];
        for (offset, value) in [
            (config::NUM_PAGES, s.num_pages.load(Ordering::SeqCst)),
            (config::ACTUAL, s.actual.load(Ordering::SeqCst)),
            (config::FREE_PAGE_HINT_CMD_ID, 0),
            (config::POISON_VAL, s.poison_val.load(Ordering::SeqCst)),
        ] {
            let at = offset as usize;
            bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
        }
        bytes
    }
}

/// Assigns each enabled queue its role: queues of features the driver did not accept
/// take no index (5.5.2).
fn queue_roles(acked_features: u64) -> Vec<QueueRole> {
    let mut roles = vec![QueueRole::Inflate, QueueRole::Deflate];
    if acked_features & 1 << VIRTIO_BALLOON_F_STATS_VQ != 0 {
        roles.push(QueueRole::Stats);
    }
    if acked_features & 1 << VIRTIO_BALLOON_F_REPORTING != 0 {
        roles.push(QueueRole::Reporting);
    }
    roles
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BALLOON
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn device_features(&self) -> u64 {
        FEATURES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let bytes = self.config_bytes();
        let Some(start) = usize::try_from(offset).ok().filter(|&o| o < bytes.len()) else {
            return;
        };
        let n = data.len().min(bytes.len() - start);
        data[..n].copy_from_slice(&bytes[start..start + n]);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Byte by byte, so a partial write changes only the bytes written (legacy
        // drivers wrote `actual` one byte at a time, 5.5.6.1).
        for (i, &byte) in data.iter().enumerate() {
            let Some(at) = offset.checked_add(i as u64) else {
                return;
            };
            let field = match at & !3 {
                config::ACTUAL => &self.shared.actual,
                config::POISON_VAL => &self.shared.poison_val,
                // num_pages and free_page_hint_cmd_id are the device's; the rest is
                // outside the configuration space.
                _ => continue,
            };
            let shift = (at & 3) * 8;
            let _ = field.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                Some(v & !(0xff << shift) | u32::from(byte) << shift)
            });
        }
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn Interrupt>,
        queues: Vec<ActiveQueue>,
        acked_features: u64,
    ) -> Result<(), ActivateError> {
        self.start(mem, interrupt, queues, acked_features, false)
    }

    fn reset(&mut self) {
        if let State::Activated(worker) = std::mem::replace(&mut self.state, State::Inactive) {
            worker.stop();
        }
        self.detach_driver();
        // A new driver starts with an empty balloon (a rebooted guest knows nothing of
        // the old one); the host's target stays.
        self.shared.actual.store(0, Ordering::SeqCst);
        self.shared.poison_val.store(0, Ordering::SeqCst);
    }

    /// Inflate, deflate and reporting buffers are served whole on each kick; the one
    /// buffer the device keeps is the statsq's (`BalloonWorker::positions`).
    fn save(&mut self) -> Result<DeviceState, SaveError> {
        let State::Activated(worker) = std::mem::replace(&mut self.state, State::Inactive) else {
            return Err(SaveError::WorkerLost);
        };
        let handler = worker.stop();
        self.detach_driver();
        let handler = handler.ok_or(SaveError::WorkerLost)?;
        let s = &self.shared;
        let state = BalloonState {
            num_pages: s.num_pages.load(Ordering::SeqCst),
            actual: s.actual.load(Ordering::SeqCst),
            poison_val: s.poison_val.load(Ordering::SeqCst),
            last_stats: s.lock_stats().last,
            counters: self.handle().counters(),
        };
        Ok(DeviceState {
            queues: handler.positions(),
            device: serde_json::to_value(state)
                .map_err(|e| SaveError::Device(format!("virtio-balloon state: {e}")))?,
        })
    }

    /// Puts the configuration, statistics and counters back, then activates, taking
    /// the statsq buffer the save rewound again.
    fn restore(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn Interrupt>,
        queues: Vec<ActiveQueue>,
        acked_features: u64,
        state: &serde_json::Value,
    ) -> Result<(), ActivateError> {
        if matches!(self.state, State::Activated(_)) {
            return Err(ActivateError::AlreadyActive);
        }
        let state = BalloonState::parse(state)
            .map_err(|e| ActivateError::BadState(format!("virtio-balloon: {e}")))?;
        let s = &self.shared;
        s.num_pages.store(state.num_pages, Ordering::SeqCst);
        s.actual.store(state.actual, Ordering::SeqCst);
        s.poison_val.store(state.poison_val, Ordering::SeqCst);
        s.lock_stats().last = state.last_stats;
        let c = state.counters;
        s.inflated_pages.store(c.inflated_pages, Ordering::Relaxed);
        s.deflated_pages.store(c.deflated_pages, Ordering::Relaxed);
        s.reported_bytes.store(c.reported_bytes, Ordering::Relaxed);
        s.invalid_requests
            .store(c.invalid_requests, Ordering::Relaxed);
        kick_each(&queues).map_err(ActivateError::Worker)?;
        self.start(mem, interrupt, queues, acked_features, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::CountingInterrupt;
    use crate::devices::virtio::QueuePosition;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::{Bytes, GuestAddress};

    fn read_u32(dev: &Balloon, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        dev.read_config(offset, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn config_space_reads_and_writes() {
        let mut dev = Balloon::new(7).unwrap();
        assert_eq!(read_u32(&dev, config::NUM_PAGES), 7);
        assert_eq!(read_u32(&dev, config::ACTUAL), 0);

        // The driver writes actual and poison_val; num_pages and the command ID are
        // read-only.
        dev.write_config(config::ACTUAL, &1234u32.to_le_bytes());
        dev.write_config(config::POISON_VAL, &0xaa55_aa55u32.to_le_bytes());
        dev.write_config(config::NUM_PAGES, &99u32.to_le_bytes());
        dev.write_config(config::FREE_PAGE_HINT_CMD_ID, &5u32.to_le_bytes());
        assert_eq!(read_u32(&dev, config::ACTUAL), 1234);
        assert_eq!(dev.handle().actual_pages(), 1234);
        assert_eq!(dev.handle().actual_bytes(), 1234 * 4096);
        assert_eq!(read_u32(&dev, config::POISON_VAL), 0xaa55_aa55);
        assert_eq!(read_u32(&dev, config::NUM_PAGES), 7);
        assert_eq!(read_u32(&dev, config::FREE_PAGE_HINT_CMD_ID), 0);

        // Byte writes, as a legacy driver does, change only their byte.
        dev.write_config(config::ACTUAL + 1, &[0x01]);
        assert_eq!(read_u32(&dev, config::ACTUAL), 1234 & !0xff00 | 0x0100);

        // A whole-space read, reads across fields and past the end.
        let mut all = [0xffu8; 20];
        dev.read_config(0, &mut all);
        assert_eq!(&all[0..4], &7u32.to_le_bytes());
        assert_eq!(&all[16..], &[0; 4]);
        let mut cross = [0u8; 4];
        dev.read_config(2, &mut cross);
        assert_eq!(cross, [0, 0, 0xd2, 0x01]);
        let mut past = [0xffu8; 8];
        dev.read_config(14, &mut past);
        assert_eq!(past, [0x55, 0xaa, 0, 0, 0, 0, 0, 0]);
        dev.read_config(u64::MAX, &mut past);
        assert_eq!(past, [0; 8]);
        // Writes past the end, or wrapping, are ignored.
        dev.write_config(u64::MAX - 1, &[1, 2, 3, 4]);
        dev.write_config(16, &[1, 2, 3, 4]);
        assert_eq!(read_u32(&dev, config::NUM_PAGES), 7);

        // A reset empties the balloon but keeps the host's target.
        dev.reset();
        assert_eq!(read_u32(&dev, config::ACTUAL), 0);
        assert_eq!(read_u32(&dev, config::POISON_VAL), 0);
        assert_eq!(read_u32(&dev, config::NUM_PAGES), 7);
    }

    #[test]
    fn features_and_queues() {
        let dev = Balloon::new(0).unwrap();
        assert_eq!(dev.device_type(), 5);
        let f = dev.device_features();
        assert_ne!(f & VIRTIO_F_VERSION_1, 0);
        assert_ne!(f & VIRTIO_RING_F_EVENT_IDX, 0);
        assert_ne!(f & 1 << VIRTIO_BALLOON_F_STATS_VQ, 0);
        assert_ne!(f & 1 << VIRTIO_BALLOON_F_DEFLATE_ON_OOM, 0);
        assert_ne!(f & 1 << VIRTIO_BALLOON_F_REPORTING, 0);
        assert_eq!(f & 1 << VIRTIO_BALLOON_F_MUST_TELL_HOST, 0);
        assert_eq!(f & 1 << VIRTIO_BALLOON_F_FREE_PAGE_HINT, 0);
        assert_eq!(f & 1 << VIRTIO_BALLOON_F_PAGE_POISON, 0);
        assert_eq!(dev.queue_max_sizes().len(), 4);

        use QueueRole::*;
        assert_eq!(queue_roles(0), [Inflate, Deflate]);
        assert_eq!(
            queue_roles(1 << VIRTIO_BALLOON_F_REPORTING),
            [Inflate, Deflate, Reporting]
        );
        assert_eq!(queue_roles(FEATURES), [Inflate, Deflate, Stats, Reporting]);
    }

    #[test]
    fn target_before_activation_needs_no_interrupt() {
        let dev = Balloon::new(0).unwrap();
        let h = dev.handle();
        h.set_target_bytes(10 << 20).unwrap();
        assert_eq!(h.target_pages(), 2560);
        assert_eq!(read_u32(&dev, config::NUM_PAGES), 2560);
        h.set_target_bytes(u64::MAX).unwrap();
        assert_eq!(h.target_pages(), u32::MAX);
        // Not a whole page: rounded down.
        h.set_target_bytes(4095).unwrap();
        assert_eq!(h.target_pages(), 0);
        assert!(!h.is_active());
        assert!(matches!(h.request_stats(), Err(BalloonError::NotActive)));
        assert!(h.stats().is_none());
    }

    struct Driver {
        mem: GuestMemoryMmap,
        interrupt: Arc<CountingInterrupt>,
        kicks: Vec<EventFd>,
    }

    /// A device activated with `n` mock queues (at 0, 0x1000, ...) and `features`.
    fn activate(dev: &mut Balloon, n: u16, features: u64) -> Driver {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mut queues = Vec::new();
        let mut kicks = Vec::new();
        for i in 0..n {
            let mock = MockSplitQueue::create(&mem, GuestAddress(u64::from(i) * 0x1000), 16);
            let mut queue: Queue = mock.create_queue().unwrap();
            queue.set_ready(true);
            let notify = EventFd::new(0).unwrap();
            kicks.push(notify.try_clone().unwrap());
            queues.push(ActiveQueue {
                index: i,
                queue,
                notify,
            });
        }
        let interrupt = Arc::new(CountingInterrupt::default());
        dev.activate(mem.clone(), interrupt.clone(), queues, features)
            .unwrap();
        Driver {
            mem,
            interrupt,
            kicks,
        }
    }

    #[test]
    fn a_target_change_raises_a_config_interrupt_while_active() {
        let mut dev = Balloon::new(0).unwrap();
        let h = dev.handle();
        let d = activate(&mut dev, 2, VIRTIO_F_VERSION_1);
        assert!(h.is_active());
        h.set_target_pages(100).unwrap();
        assert_eq!(d.interrupt.config(), 1);
        assert_eq!(read_u32(&dev, config::NUM_PAGES), 100);
        h.set_target_bytes(1 << 30).unwrap();
        assert_eq!(d.interrupt.config(), 2);
        assert_eq!(read_u32(&dev, config::NUM_PAGES), 1 << 18);
        // Without a stats queue there are no statistics to ask for.
        assert!(matches!(h.request_stats(), Err(BalloonError::NoStatsQueue)));
        dev.reset();
        h.set_target_pages(5).unwrap();
        assert_eq!(d.interrupt.config(), 2);
        assert!(!h.is_active());
    }

    #[test]
    fn activation_needs_inflate_and_deflate_and_can_repeat_after_reset() {
        let mut dev = Balloon::new(0).unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mock = MockSplitQueue::new(&mem, 16);
        let queue: Queue = mock.create_queue().unwrap();
        let only_one = vec![ActiveQueue {
            index: 0,
            queue,
            notify: EventFd::new(0).unwrap(),
        }];
        let err = dev
            .activate(
                mem,
                Arc::new(CountingInterrupt::default()),
                only_one,
                FEATURES,
            )
            .unwrap_err();
        assert!(matches!(err, ActivateError::QueueCount { .. }), "{err}");
        // Queue 3 without REPORTING has no role: ignored, the device still runs.
        let _d = activate(&mut dev, 4, VIRTIO_F_VERSION_1);
        assert!(dev.handle().is_active());
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        assert!(matches!(
            dev.activate(mem, Arc::new(CountingInterrupt::default()), Vec::new(), 0),
            Err(ActivateError::AlreadyActive)
        ));
        dev.reset();
        let _d = activate(&mut dev, 4, FEATURES);
        assert!(dev.handle().is_active());
        dev.reset();
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The driver's four queues (at 0, 0x1000, ...), kept across a save and restore.
    struct Rings<'m> {
        mem: &'m GuestMemoryMmap,
        mocks: Vec<MockSplitQueue<'m, GuestMemoryMmap>>,
    }

    impl<'m> Rings<'m> {
        fn new(mem: &'m GuestMemoryMmap) -> Self {
            let mocks = (0..4u64)
                .map(|i| MockSplitQueue::create(mem, GuestAddress(i * 0x1000), 16))
                .collect();
            Rings { mem, mocks }
        }

        /// Queues for the device, positioned at `at` (`None`: from the start), and the
        /// kicks that go with them.
        fn queues(&self, at: Option<&[QueuePosition]>) -> (Vec<ActiveQueue>, Vec<EventFd>) {
            let mut kicks = Vec::new();
            let queues = self
                .mocks
                .iter()
                .enumerate()
                .map(|(i, mock)| {
                    let mut queue: Queue = mock.create_queue().unwrap();
                    if let Some(at) = at {
                        queue.set_next_avail(at[i].next_avail);
                        queue.set_next_used(at[i].next_used);
                    }
                    let notify = EventFd::new(0).unwrap();
                    kicks.push(notify.try_clone().unwrap());
                    ActiveQueue {
                        index: i as u16,
                        queue,
                        notify,
                    }
                })
                .collect();
            (queues, kicks)
        }

        /// Posts one readable buffer at `addr` holding `bytes` as descriptor `desc` of
        /// queue `queue`.
        fn post(&self, queue: usize, desc: u16, addr: u64, bytes: &[u8]) {
            self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
            let d = RawDescriptor::from(SplitDescriptor::new(addr, bytes.len() as u32, 0, 0));
            self.mocks[queue].add_desc_chains(&[d], desc).unwrap();
        }

        fn used_idx(&self, queue: usize) -> u16 {
            self.mocks[queue].used().idx().load()
        }
    }

    fn pfns(list: &[u32]) -> Vec<u8> {
        list.iter().flat_map(|p| p.to_le_bytes()).collect()
    }

    fn memtot(bytes: u64) -> Vec<u8> {
        stats::encode_entry(stats::VIRTIO_BALLOON_S_MEMTOT, bytes).to_vec()
    }

    /// Inflation, a target, `actual` and a statistics buffer held by the device; save,
    /// the state through JSON, a new device restored: the handle reads the same
    /// target, actual, statistics and counters, the held statistics buffer is held
    /// again (a refresh returns it, and only it), and the inflateq carries on without
    /// serving anything twice.
    #[test]
    fn a_restored_balloon_keeps_its_target_actual_stats_and_held_buffer() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let rings = Rings::new(&mem);
        let mut dev = Balloon::new(0).unwrap();
        let h = dev.handle();
        let (queues, kicks) = rings.queues(None);
        dev.activate(
            mem.clone(),
            Arc::new(CountingInterrupt::default()),
            queues,
            FEATURES,
        )
        .unwrap();
        h.set_target_pages(64).unwrap();
        dev.write_config(config::ACTUAL, &32u32.to_le_bytes());
        rings.post(0, 0, 0x10000, &pfns(&[100, 101, 102]));
        kicks[0].write(1).unwrap();
        rings.post(2, 0, 0x11000, &memtot(1 << 30));
        kicks[2].write(1).unwrap();
        wait_for("inflation", || rings.used_idx(0) == 1);
        wait_for("statistics", || h.stats().is_some());
        assert_eq!(rings.used_idx(2), 0, "the stats buffer is held");

        let saved = dev.save().unwrap();
        assert!(!h.is_active());
        let saved: DeviceState =
            serde_json::from_str(&serde_json::to_string(&saved).unwrap()).unwrap();
        let at: Vec<(u16, u16)> = saved
            .queues
            .iter()
            .map(|q| (q.next_avail, q.next_used))
            .collect();
        assert_eq!(at, [(1, 1), (0, 0), (0, 0), (0, 0)], "statsq rewound");

        let mut dev = Balloon::new(0).unwrap();
        let h = dev.handle();
        let (queues, kicks) = rings.queues(Some(&saved.queues));
        let interrupt = Arc::new(CountingInterrupt::default());
        dev.restore(mem.clone(), interrupt, queues, FEATURES, &saved.device)
            .unwrap();
        assert_eq!((h.target_pages(), h.actual_pages()), (64, 32));
        assert_eq!(read_u32(&dev, config::NUM_PAGES), 64);
        assert_eq!(read_u32(&dev, config::ACTUAL), 32);
        assert_eq!(h.stats().unwrap().total_memory, Some(1 << 30));
        assert_eq!(h.counters().inflated_pages, 3);

        // The host asks: the buffer held before the save comes back (head 0), the
        // driver posts a fresh one.
        let fresh = std::thread::scope(|s| {
            let waiter = s.spawn(|| h.refresh_stats(Duration::from_secs(5)));
            wait_for("the held buffer", || rings.used_idx(2) == 1);
            let used = rings.mocks[2].used().ring().ref_at(0).unwrap().load();
            assert_eq!(used.id(), 0);
            rings.post(2, 1, 0x12000, &memtot(2 << 30));
            kicks[2].write(1).unwrap();
            waiter.join().unwrap()
        });
        assert_eq!(fresh.unwrap().total_memory, Some(2 << 30));
        assert_eq!(rings.used_idx(2), 1);

        rings.post(0, 1, 0x13000, &pfns(&[110]));
        kicks[0].write(1).unwrap();
        wait_for("the next inflation", || rings.used_idx(0) == 2);
        assert_eq!(h.counters().inflated_pages, 4);
        dev.reset();
    }

    #[test]
    fn a_malformed_saved_state_is_an_error() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let rings = Rings::new(&mem);
        let good = serde_json::json!({
            "num_pages": 1, "actual": 0, "poison_val": 0, "last_stats": null,
            "counters": {"inflated_pages": 0, "deflated_pages": 0,
                         "reported_bytes": 0, "invalid_requests": 0},
        });
        let mut negative = good.clone();
        negative["actual"] = serde_json::json!(-1);
        let mut too_big = good.clone();
        too_big["num_pages"] = serde_json::json!(1u64 << 32);
        let mut extra = good.clone();
        extra["held"] = serde_json::json!(true);
        let mut missing = good.clone();
        missing.as_object_mut().unwrap().remove("counters");
        for bad in [serde_json::Value::Null, negative, too_big, extra, missing] {
            let mut dev = Balloon::new(0).unwrap();
            let (queues, _) = rings.queues(None);
            let result = dev.restore(
                mem.clone(),
                Arc::new(CountingInterrupt::default()),
                queues,
                FEATURES,
                &bad,
            );
            assert!(matches!(result, Err(ActivateError::BadState(_))), "{bad}");
            assert!(!dev.handle().is_active());
            assert_eq!(dev.handle().target_pages(), 0);
        }
        let mut dev = Balloon::new(0).unwrap();
        let (queues, _) = rings.queues(None);
        dev.restore(
            mem.clone(),
            Arc::new(CountingInterrupt::default()),
            queues,
            FEATURES,
            &good,
        )
        .unwrap();
        assert_eq!(dev.handle().target_pages(), 1);
        dev.reset();
    }

    /// The statsq protocol end to end through the worker thread: the driver posts a
    /// buffer, the device keeps it; the host asks, the device returns it, the driver
    /// posts a fresh one, the host gets it.
    #[test]
    fn stats_round_trip_through_the_worker() {
        let mut dev = Balloon::new(0).unwrap();
        let h = dev.handle();
        let d = activate(&mut dev, 4, FEATURES);
        let stats_queue_addr = GuestAddress(0x2000);
        let mock = MockSplitQueue::create(&d.mem, stats_queue_addr, 16);

        let post = |desc_index: u16, buf: u64, entries: &[(u16, u64)]| {
            let bytes: Vec<u8> = entries
                .iter()
                .flat_map(|&(t, v)| stats::encode_entry(t, v))
                .collect();
            d.mem.write_slice(&bytes, GuestAddress(buf)).unwrap();
            let desc = RawDescriptor::from(SplitDescriptor::new(buf, bytes.len() as u32, 0, 0));
            mock.add_desc_chains(&[desc], desc_index).unwrap();
            d.kicks[2].write(1).unwrap();
        };

        post(0, 0x10000, &[(stats::VIRTIO_BALLOON_S_MEMTOT, 1 << 30)]);
        let deadline = Instant::now() + Duration::from_secs(5);
        while h.stats().is_none() {
            assert!(Instant::now() < deadline, "no stats");
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(h.stats().unwrap().total_memory, Some(1 << 30));
        // Kept, not used yet.
        assert_eq!(mock.used().idx().load(), 0);

        // The host asks; the "driver" answers when it sees the buffer used.
        let driver = std::thread::scope(|s| {
            let waiter = s.spawn(|| h.refresh_stats(Duration::from_secs(5)));
            let deadline = Instant::now() + Duration::from_secs(5);
            while mock.used().idx().load() == 0 {
                assert!(Instant::now() < deadline, "buffer not returned");
                std::thread::sleep(Duration::from_millis(2));
            }
            post(
                1,
                0x11000,
                &[
                    (stats::VIRTIO_BALLOON_S_MEMTOT, 1 << 30),
                    (stats::VIRTIO_BALLOON_S_MEMFREE, 1 << 29),
                ],
            );
            waiter.join().unwrap()
        });
        let fresh = driver.unwrap();
        assert_eq!(fresh.free_memory, Some(1 << 29));
        assert!(d.interrupt.used() >= 1);

        // With no driver answering, a refresh times out rather than hanging.
        let err = h.refresh_stats(Duration::from_millis(50)).unwrap_err();
        assert!(matches!(err, BalloonError::StatsTimeout(_)), "{err}");
        dev.reset();
        assert!(matches!(
            h.refresh_stats(Duration::from_millis(50)),
            Err(BalloonError::NotActive)
        ));
        // The last statistics outlive the driver.
        assert_eq!(h.stats().unwrap().free_memory, Some(1 << 29));
    }

    /// The give-back-idle policy against a driver that answers every stats request
    /// with what its "guest" has available: idle, the balloon grows; busy, it shrinks.
    #[test]
    fn the_autopilot_takes_idle_memory_and_gives_it_back_when_needed() {
        use std::sync::atomic::AtomicBool;
        const MIB: u64 = 1 << 20;
        let mut dev = Balloon::new(0).unwrap();
        let h = dev.handle();
        let d = activate(&mut dev, 4, FEATURES);
        let mock = MockSplitQueue::create(&d.mem, GuestAddress(0x2000), 16);
        let available = AtomicU64::new(1536 * MIB);
        let done = AtomicBool::new(false);
        let pilot = policy::Autopilot::start(
            h.clone(),
            2048 * MIB,
            policy::BalloonPolicy::GiveBackIdle,
            Duration::from_millis(20),
        )
        .unwrap();
        let target_mib = || h.target_bytes() / MIB;
        let wait_for = |what: &str, ok: &dyn Fn(u64) -> bool| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !ok(target_mib()) {
                assert!(Instant::now() < deadline, "{what}: target {}", target_mib());
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        /// Ends the driver's loop however the scenario ends (a failed assert too).
        struct Done<'a>(&'a AtomicBool);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Release);
            }
        }
        std::thread::scope(|s| {
            s.spawn(|| {
                let _done = Done(&done);
                // Idle: 1.5 GiB available of 2, reserve 512 MiB: half the surplus.
                wait_for("inflating", &|t| t >= 512);
                assert_eq!(target_mib(), 512);
                // The guest gets busy: 200 MiB available, 312 short of the reserve.
                available.store(200 * MIB, Ordering::Release);
                wait_for("deflating", &|t| t < 512);
                assert_eq!(target_mib(), 200);
                // The user takes over: nothing moves any more, and the thread sleeps
                // (ten periods pass without a wake).
                pilot.set_policy(policy::BalloonPolicy::Fixed);
                std::thread::sleep(Duration::from_millis(50));
                available.store(2000 * MIB, Ordering::Release);
                let wakes = pilot.wakes();
                std::thread::sleep(Duration::from_millis(200));
                assert_eq!(target_mib(), 200);
                assert_eq!(pilot.wakes(), wakes, "the thread woke while Fixed");
                // The policy back on: the thread wakes for it, and then every period.
                // (The target stays: this driver never fills the balloon, and the
                // policy does not grow one the guest has not filled.)
                pilot.set_policy(policy::BalloonPolicy::GiveBackIdle);
                let deadline = Instant::now() + Duration::from_secs(10);
                while pilot.wakes() < wakes + 3 {
                    assert!(Instant::now() < deadline, "the thread stayed asleep");
                    std::thread::sleep(Duration::from_millis(5));
                }
            });
            // The driver, here (the mock queue stays on one thread): a fresh buffer
            // each time the device hands one back.
            let mut posted = 0u16;
            let mut seen = u16::MAX;
            while !done.load(Ordering::Acquire) {
                let used = mock.used().idx().load();
                if used != seen {
                    seen = used;
                    let buf = 0x10000 + u64::from(posted % 8) * 0x100;
                    let avail = available.load(Ordering::Acquire);
                    let bytes = stats::encode_entry(stats::VIRTIO_BALLOON_S_AVAIL, avail);
                    d.mem.write_slice(&bytes, GuestAddress(buf)).unwrap();
                    let desc =
                        RawDescriptor::from(SplitDescriptor::new(buf, bytes.len() as u32, 0, 0));
                    mock.add_desc_chains(&[desc], posted % 16).unwrap();
                    posted = posted.wrapping_add(1);
                    d.kicks[2].write(1).unwrap();
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        drop(pilot);
        dev.reset();
    }
}
