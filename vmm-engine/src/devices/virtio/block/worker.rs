//! The block device's worker: on each kick, drain the request queue (notifications off,
//! serve every chain, notifications on, again if more came) and interrupt the driver
//! when `drain_queue` says it wants to hear (EVENT_IDX).
//!
//! Requests are served synchronously, one after the other, in the worker thread.

use std::sync::{Arc, Mutex, PoisonError};

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use super::disk::Disk;
use super::request::{RequestExecutor, RequestPolicy};
use crate::devices::virtio::io_counters::IoCounters;
use crate::devices::virtio::rate_limit::RateLimiter;
use crate::devices::virtio::worker::WorkerHandler;
use crate::devices::virtio::{drain_queue_limited, Interrupt};

/// What the worker thread owns while the device is active.
pub struct BlockWorker {
    mem: GuestMemoryMmap,
    interrupt: Arc<dyn Interrupt>,
    queue: Queue,
    queue_index: u16,
    disk: Arc<Mutex<Disk>>,
    executor: RequestExecutor,
    /// The disk's I/O limits (the device's, shared with the control socket).
    limiter: Option<Arc<RateLimiter>>,
}

impl BlockWorker {
    pub fn new(
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn Interrupt>,
        queue: Queue,
        queue_index: u16,
        disk: Arc<Mutex<Disk>>,
        policy: RequestPolicy,
    ) -> Self {
        BlockWorker {
            mem,
            interrupt,
            queue,
            queue_index,
            disk,
            executor: RequestExecutor::new(policy),
            limiter: None,
        }
    }

    /// Serves requests only as fast as `limiter` lets it from now on.
    pub fn limited(mut self, limiter: Arc<RateLimiter>) -> Self {
        self.limiter = Some(limiter);
        self
    }

    /// Counts what it serves into `counters` (the device's) from now on.
    pub fn counting(mut self, counters: Arc<IoCounters>) -> Self {
        self.executor = RequestExecutor::with_counters(self.executor.policy().clone(), counters);
        self
    }

    /// Serves every available request. Returns whether the driver was interrupted.
    pub fn process_queue(&mut self) -> Result<bool, virtio_queue::Error> {
        let BlockWorker {
            mem,
            interrupt,
            queue,
            queue_index,
            disk,
            executor,
            limiter,
        } = self;
        // A worker that panicked while holding the disk left it usable: every request
        // is self-contained, so take it back rather than failing every later request.
        let mut disk = disk.lock().unwrap_or_else(PoisonError::into_inner);
        let notify = drain_queue_limited(queue, mem, limiter.as_deref(), |chain| {
            executor.handle(chain, mem, &mut disk)
        })?;
        if notify {
            if let Err(e) = interrupt.signal_used_queue(*queue_index) {
                tracing::warn!("virtio-blk: cannot interrupt the driver: {e}");
            }
        }
        Ok(notify)
    }

    /// The queue, for inspection by tests and the fuzzer.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// The queue's index in the device, as the transport numbered it.
    pub fn queue_index(&self) -> u16 {
        self.queue_index
    }
}

impl WorkerHandler for BlockWorker {
    fn queue_notified(&mut self, _index: usize) -> Result<(), String> {
        self.process_queue()
            .map(drop)
            .map_err(|e| format!("virtio-blk: broken request queue: {e}"))
    }

    /// The limiter's timer, the only backend fd: a throttled request may go.
    fn backend_fds(&self) -> Vec<std::os::fd::RawFd> {
        self.limiter.iter().map(|l| l.timer_fd()).collect()
    }

    fn backend_ready(&mut self, _index: usize) -> Result<(), String> {
        if let Some(limiter) = &self.limiter {
            limiter.timer_fired();
        }
        self.queue_notified(0)
    }
}

#[cfg(test)]
mod tests {
    use virtio_bindings::virtio_blk::VIRTIO_BLK_T_GET_ID;
    use virtio_queue::QueueT;
    use vm_memory::{Address, Bytes};

    use super::super::test_support::*;
    use super::super::QUEUE_SIZE;
    use super::*;

    fn worker(
        mem: &GuestMemoryMmap,
        driver: &Driver,
        event_idx: bool,
    ) -> (
        BlockWorker,
        Arc<CountingInterrupt>,
        vmm_sys_util::tempfile::TempFile,
    ) {
        let img = raw_image(1 << 20);
        let interrupt = Arc::new(CountingInterrupt::default());
        let mut queue = driver.queue();
        queue.set_event_idx(event_idx);
        let w = BlockWorker::new(
            mem.clone(),
            interrupt.clone(),
            queue,
            0,
            Arc::new(Mutex::new(open(img.as_path(), false))),
            all_features_policy(false),
        );
        (w, interrupt, img)
    }

    #[test]
    fn event_idx_suppresses_interrupts_the_driver_did_not_ask_for() {
        let mem = guest_memory();
        let mut driver = Driver::new(&mem);
        let (mut w, interrupt, _img) = worker(&mem, &driver, true);

        // used_event 0: interrupt when the used index moves past 0.
        driver.set_used_event(0);
        for _ in 0..3 {
            driver.request(VIRTIO_BLK_T_GET_ID, 0, Err(20));
        }
        assert!(w.process_queue().unwrap());
        assert_eq!((driver.used_idx(), interrupt.used()), (3, 1));

        // The driver did not move used_event: more completions, no interrupt.
        driver.request(VIRTIO_BLK_T_GET_ID, 0, Err(20));
        assert!(!w.process_queue().unwrap());
        assert_eq!((driver.used_idx(), interrupt.used()), (4, 1));

        // Asking again (used_event = 4) gets the next one.
        driver.set_used_event(4);
        driver.request(VIRTIO_BLK_T_GET_ID, 0, Err(20));
        assert!(w.process_queue().unwrap());
        assert_eq!((driver.used_idx(), interrupt.used()), (5, 2));

        // A kick with nothing new: no interrupt.
        assert!(!w.process_queue().unwrap());
        assert_eq!(interrupt.used(), 2);

        // The device published avail_event = the next index it will look at, so the
        // driver kicks only for new buffers.
        let avail_event_addr = driver
            .vq
            .used_addr()
            .unchecked_add(4 + 8 * u64::from(QUEUE_SIZE));
        assert_eq!(mem.read_obj::<u16>(avail_event_addr).unwrap(), 5);
    }

    #[test]
    fn without_event_idx_every_batch_interrupts() {
        let mem = guest_memory();
        let mut driver = Driver::new(&mem);
        let (mut w, interrupt, _img) = worker(&mem, &driver, false);
        for batch in 1..=3 {
            driver.request(VIRTIO_BLK_T_GET_ID, 0, Err(20));
            driver.request(VIRTIO_BLK_T_GET_ID, 0, Err(20));
            assert!(w.process_queue().unwrap());
            assert_eq!(interrupt.used(), batch);
        }
        // Nothing used, nothing signalled.
        assert!(!w.process_queue().unwrap());
        assert_eq!(interrupt.used(), 3);
    }

    #[test]
    fn unanswerable_chains_are_returned_with_length_zero() {
        let mem = guest_memory();
        let mut driver = Driver::new(&mem);
        let (mut w, interrupt, _img) = worker(&mem, &driver, false);
        let header = driver.alloc(16);
        // No writable descriptor: no status byte to answer in.
        driver.submit(&[(header, 16, false)]);
        let s = driver.request(VIRTIO_BLK_T_GET_ID, 0, Err(20));
        assert!(w.process_queue().unwrap());
        assert_eq!(driver.used(0), (0, 0));
        assert_eq!(driver.used(1).1, 21);
        assert_eq!(driver.status(&s), 0);
        assert_eq!(interrupt.used(), 1);
    }

    #[test]
    fn a_limited_worker_leaves_requests_in_the_ring_until_its_timer_fires() {
        use crate::devices::virtio::rate_limit::tests::readable;
        use crate::devices::virtio::rate_limit::{IoLimits, RateLimiter};
        let mem = guest_memory();
        let mut driver = Driver::new(&mem);
        let (w, interrupt, _img) = worker(&mem, &driver, false);
        // Two requests at once, then one a millisecond.
        let limiter = Arc::new(
            RateLimiter::new(IoLimits {
                iops: Some(1000),
                iops_burst: Some(2),
                ..IoLimits::default()
            })
            .unwrap(),
        );
        let mut w = w.limited(limiter.clone());
        for _ in 0..5 {
            driver.request(VIRTIO_BLK_T_GET_ID, 0, Err(20));
        }
        let start = std::time::Instant::now();
        assert!(w.process_queue().unwrap());
        assert_eq!(driver.used_idx(), 2);
        let fd = WorkerHandler::backend_fds(&w)[0];
        let mut rounds = 0;
        while driver.used_idx() < 5 {
            assert!(readable(fd, 1000), "the timer never fired");
            w.backend_ready(0).unwrap();
            rounds += 1;
            assert!(rounds < 100);
        }
        // Three more at 1000/s: at least 2 ms after the burst (the third may be due
        // right at the timer), and every request answered exactly once.
        assert!(start.elapsed() >= std::time::Duration::from_millis(2));
        assert_eq!(driver.used_idx(), 5);
        assert!(interrupt.used() >= 2);
    }

    #[test]
    fn an_avail_index_beyond_the_queue_is_an_error_not_a_hang() {
        let mem = guest_memory();
        let mut driver = Driver::new(&mem);
        let (mut w, interrupt, _img) = worker(&mem, &driver, true);
        driver.request(VIRTIO_BLK_T_GET_ID, 0, Err(20));
        driver.vq.avail().idx().store(QUEUE_SIZE + 1);
        assert!(w.process_queue().is_err());
        assert_eq!(interrupt.used(), 0);
        // The driver repairs its index: service resumes.
        driver.vq.avail().idx().store(1);
        assert!(w.process_queue().unwrap());
        assert_eq!(driver.used_idx(), 1);
    }
}
