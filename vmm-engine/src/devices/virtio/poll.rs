//! Busy-polling a queue for a moment after serving it, with the driver's notifications
//! suppressed (virtio 1.2, 2.7.10 "Available Buffer Notification Suppression").
//!
//! A driver that waits for each answer before sending the next request (virtio-drivers'
//! gpu sends TRANSFER_TO_HOST_2D, waits, then RESOURCE_FLUSH) pays twice per request if
//! the worker sleeps in between: the notify is a VM exit (~30 µs on PVM), and the
//! worker's wake-up is a scheduler round trip. Looking at the ring for a few tens of
//! microseconds catches the next request as soon as it is written, and because the
//! device says it needs no notification meanwhile, the driver skips the exit. The
//! window is short and only follows work, so an idle device still costs no CPU.
//!
//! On a host with more runnable threads than cores, looking costs more than it saves
//! (the vCPU that would write the next request may be waiting for the very core the
//! worker spins on), so [`Poller`] adapts the window the way QEMU's `poll-grow` and
//! `poll-shrink` do: it grows when the driver's notification came soon after the worker
//! gave up looking, and shrinks (to nothing) when it came late.

use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Bytes before `avail_event` in the used ring: flags, idx, then `size` elements of 8.
fn avail_event_addr(queue: &Queue) -> Option<GuestAddress> {
    let offset = 4 + 8 * u64::from(queue.size());
    queue.used_ring().checked_add(offset).map(GuestAddress)
}

/// The `avail_event` that asks for no notification: ahead of `next_avail` in the ring's
/// wrapping index space, so the spec's test (`vring_need_event`) does not fire for a
/// ring's worth of buffers, and numerically above it (virtio-drivers 0.13 compares
/// `avail_idx >= avail_event + 1` without wrapping). Just below the wrap no value is
/// both: the driver may then notify once, which costs an exit and is otherwise harmless.
fn far_ahead(next_avail: u16) -> u16 {
    if next_avail < 0x8000 {
        next_avail + 0x7fff
    } else {
        0xfffe
    }
}

/// Tells the driver not to notify `queue`.
fn suppress(queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<(), virtio_queue::Error> {
    if !queue.event_idx_enabled() {
        return queue.disable_notification(mem);
    }
    let addr = avail_event_addr(queue).ok_or(virtio_queue::Error::AddressOverflow)?;
    let value = far_ahead(queue.next_avail());
    mem.store(value.to_le(), addr, Ordering::Relaxed)
        .map_err(virtio_queue::Error::GuestMemory)
}

/// Spins up to `window` waiting for the driver to make another chain available on
/// `queue` (notifications suppressed meanwhile). Returns `true` as soon as one is, with
/// notifications still suppressed (the caller drains the queue, which turns them back
/// on); `false` if none came, with notifications on again and the ring checked once more
/// after that, so that a chain added just before is never left unnoticed.
pub fn poll_queue(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    window: Duration,
) -> Result<bool, virtio_queue::Error> {
    suppress(queue, mem)?;
    // The suppression is visible before we look at the ring.
    fence(Ordering::SeqCst);
    let deadline = Instant::now() + window;
    loop {
        if queue.avail_idx(mem, Ordering::Acquire)?.0 != queue.next_avail() {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return queue.enable_notification(mem);
        }
        std::hint::spin_loop();
    }
}

/// The smallest window worth spinning for; below it, the worker does not look at all.
const MIN_WINDOW: Duration = Duration::from_micros(4);

/// Polls a queue for an adaptive window of at most `max`.
pub struct Poller {
    max: Duration,
    window: Duration,
    /// When the last look gave up (the worker then slept until a notification).
    gave_up_at: Option<Instant>,
}

impl Poller {
    pub fn new(max: Duration) -> Self {
        Poller {
            max,
            window: max,
            gave_up_at: None,
        }
    }

    /// How long the next look lasts.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// The worker was woken by the driver's notification: a notification that came
    /// within `max` of giving up means a longer look would have caught the request.
    pub fn woken(&mut self) {
        let Some(at) = self.gave_up_at.take() else {
            return;
        };
        self.window = if at.elapsed() <= self.max {
            (self.window * 2).clamp(MIN_WINDOW, self.max)
        } else if self.window / 2 >= MIN_WINDOW {
            self.window / 2
        } else {
            Duration::ZERO
        };
    }

    /// [`poll_queue`] for the current window.
    pub fn poll(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, virtio_queue::Error> {
        let more = poll_queue(queue, mem, self.window)?;
        if !more {
            self.gave_up_at = Some(Instant::now());
        }
        Ok(more)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::QueueOwnedT;
    use vm_memory::Address;

    fn avail_event(queue: &Queue, mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(avail_event_addr(queue).unwrap()).unwrap()
    }

    /// Linux's `vring_need_event`: must the driver notify, going from `old` to `new`?
    fn need_event(event: u16, new: u16, old: u16) -> bool {
        new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
    }

    #[test]
    fn the_driver_is_told_not_to_notify_while_the_device_looks() {
        for next in [0u16, 5, 0x7fff, 0x8000, 0xfe00] {
            let ahead = far_ahead(next);
            for added in 1..=256u16 {
                let new = next.wrapping_add(added);
                assert!(
                    !need_event(ahead, new, new.wrapping_sub(1)),
                    "{next} {added}"
                );
            }
            if next < 0x8000 {
                assert!(next + 256 < ahead.wrapping_add(1), "virtio-drivers' test");
            }
        }
    }

    #[test]
    fn a_chain_added_during_the_window_is_found_and_none_is_missed_after() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let mock = MockSplitQueue::new(&mem, 16);
        let mut queue: Queue = mock.create_queue().unwrap();
        queue.set_event_idx(true);
        queue.set_ready(true);
        // Nothing comes: notifications are on again, asking for the next chain.
        assert!(!poll_queue(&mut queue, &mem, Duration::from_micros(50)).unwrap());
        assert_eq!(avail_event(&queue, &mem), queue.next_avail());

        // A chain arrives while the device looks: written now, but only published (the
        // avail index) by another thread, as a vCPU would.
        let desc = RawDescriptor::from(Descriptor::new(0x8000, 16, 0, 0));
        mock.add_desc_chains(&[desc], 0).unwrap();
        let avail_idx = mock.avail_addr().checked_add(2).unwrap();
        mem.write_obj(0u16, avail_idx).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(2));
                mem.write_obj(1u16, avail_idx).unwrap();
            });
            assert!(poll_queue(&mut queue, &mem, Duration::from_secs(5)).unwrap());
        });
        assert_eq!(avail_event(&queue, &mem), far_ahead(0));
        assert!(queue.iter(&mem).unwrap().next().is_some());
    }

    #[test]
    fn the_window_grows_when_a_notification_comes_soon_and_shrinks_when_late() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let mock = MockSplitQueue::new(&mem, 16);
        let mut queue: Queue = mock.create_queue().unwrap();
        queue.set_event_idx(true);
        queue.set_ready(true);
        // Long enough that a loaded host does not make "right after" late.
        let max = Duration::from_millis(100);
        let mut poller = Poller::new(max);
        // Nothing comes; the notification comes late: half the window, down to none.
        let mut expected = max;
        while expected >= MIN_WINDOW {
            assert!(!poller.poll(&mut queue, &mem).unwrap());
            std::thread::sleep(max + Duration::from_millis(10));
            poller.woken();
            expected /= 2;
            let want = if expected >= MIN_WINDOW {
                expected
            } else {
                Duration::ZERO
            };
            assert_eq!(poller.window(), want);
        }
        // With no window the poll gives up at once; a notification right after grows it.
        assert!(!poller.poll(&mut queue, &mem).unwrap());
        poller.woken();
        assert_eq!(poller.window(), MIN_WINDOW);
        assert!(!poller.poll(&mut queue, &mem).unwrap());
        poller.woken();
        assert_eq!(poller.window(), MIN_WINDOW * 2);
        // A wake-up without a look before (another queue, say) changes nothing.
        poller.woken();
        assert_eq!(poller.window(), MIN_WINDOW * 2);
    }
}
