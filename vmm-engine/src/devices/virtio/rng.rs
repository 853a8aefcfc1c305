//! virtio-rng (virtio 1.2, 5.4 "Entropy Device"): one queue; every writable buffer the
//! driver posts is filled from the host's `getrandom`.

use std::sync::Arc;

use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestMemoryMmap};

use super::worker::{Worker, WorkerHandler};
use super::{
    drain_queue, ActivateError, ActiveQueue, DeviceState, Interrupt, SaveError, VirtioDevice,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};

const QUEUE_SIZES: &[u16] = &[256];
/// The most one request gets: a guest asking for gigabytes gets them a chunk at a time.
const MAX_BYTES_PER_REQUEST: usize = 64 << 10;

/// Serves the request queue.
struct RngQueue {
    queue: Queue,
    mem: GuestMemoryMmap,
    interrupt: Arc<dyn Interrupt>,
}

impl WorkerHandler for RngQueue {
    fn queue_notified(&mut self, _index: usize) -> Result<(), String> {
        let mut buf = vec![0u8; 4096];
        let mem = self.mem.clone();
        let notify = drain_queue(&mut self.queue, &mem, |chain| {
            fill_chain(chain, &mem, &mut buf)
        })
        .map_err(|e| format!("virtio-rng queue: {e}"))?;
        if notify {
            self.interrupt
                .signal_used_queue(0)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// Fills the chain's writable buffers; returns how many bytes it wrote. A buffer outside
/// guest memory ends the chain there.
fn fill_chain(
    chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    buf: &mut [u8],
) -> u32 {
    let mut written = 0usize;
    for desc in chain.writable() {
        let mut left = (desc.len() as usize).min(MAX_BYTES_PER_REQUEST - written);
        let mut addr = desc.addr();
        while left > 0 {
            let n = left.min(buf.len());
            if getrandom(&mut buf[..n]).is_err() || mem.write_slice(&buf[..n], addr).is_err() {
                return written as u32;
            }
            written += n;
            left -= n;
            addr = vm_memory::GuestAddress(addr.0 + n as u64);
        }
        if written >= MAX_BYTES_PER_REQUEST {
            break;
        }
    }
    written as u32
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`, which
        // getrandom writes at most `len` bytes into.
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        } else {
            filled += n as usize;
        }
    }
    Ok(())
}

/// The entropy device.
#[derive(Default)]
pub struct Rng {
    worker: Option<Worker<RngQueue>>,
}

impl Rng {
    pub fn new() -> Self {
        Self::default()
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn device_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // No configuration space (5.4.4).
        data.fill(0);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn Interrupt>,
        mut queues: Vec<ActiveQueue>,
        _acked: u64,
    ) -> Result<(), ActivateError> {
        if self.worker.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        if queues.len() != 1 {
            return Err(ActivateError::QueueCount {
                got: queues.len(),
                needed: 1,
            });
        }
        let q = queues.remove(0);
        let handler = RngQueue {
            queue: q.queue,
            mem,
            interrupt,
        };
        self.worker = Some(
            Worker::spawn("virtio-rng", vec![q.notify], handler).map_err(ActivateError::Worker)?,
        );
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(w) = self.worker.take() {
            w.stop();
        }
    }

    fn save(&mut self) -> Result<DeviceState, SaveError> {
        let handler = super::worker::stop_for_save(&mut self.worker)?;
        Ok(DeviceState::queues_only([(0, &handler.queue)]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::CountingInterrupt;
    use std::time::{Duration, Instant};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::QueueT;
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EventFd;

    /// The driver side from virtio-queue's mock: post one writable buffer, kick, and
    /// check it came back used, full of (non-zero) entropy, with an interrupt.
    #[test]
    fn fills_posted_buffers_and_interrupts() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mock = MockSplitQueue::new(&mem, 16);
        let buf_addr = 0x8000u64;
        let desc = RawDescriptor::from(SplitDescriptor::new(
            buf_addr,
            512,
            virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16,
            0,
        ));
        mock.build_desc_chain(&[desc]).unwrap();
        let mut queue: Queue = mock.create_queue().unwrap();
        queue.set_ready(true);
        let interrupt = Arc::new(CountingInterrupt::default());
        let notify = EventFd::new(0).unwrap();
        let kick = notify.try_clone().unwrap();
        let mut rng = Rng::new();
        rng.activate(
            mem.clone(),
            interrupt.clone(),
            vec![ActiveQueue {
                index: 0,
                queue,
                notify,
            }],
            VIRTIO_F_VERSION_1,
        )
        .unwrap();
        kick.write(1).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while interrupt.used() == 0 {
            assert!(Instant::now() < deadline, "no interrupt");
            std::thread::sleep(Duration::from_millis(5));
        }
        let used_len: u32 = mem.read_obj(GuestAddress(mock.used_addr().0 + 8)).unwrap();
        assert_eq!(used_len, 512);
        let mut got = [0u8; 512];
        mem.read_slice(&mut got, GuestAddress(buf_addr)).unwrap();
        assert!(got.iter().any(|&b| b != 0));
        rng.reset();
        // Activating again after a reset works.
        assert!(rng.worker.is_none());
    }

    #[test]
    fn a_buffer_outside_guest_memory_is_not_a_panic() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mock = MockSplitQueue::new(&mem, 16);
        let desc = RawDescriptor::from(SplitDescriptor::new(
            0xfff_0000,
            4096,
            virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16,
            0,
        ));
        mock.build_desc_chain(&[desc]).unwrap();
        let mut queue: Queue = mock.create_queue().unwrap();
        queue.set_ready(true);
        let mut handler = RngQueue {
            queue,
            mem: mem.clone(),
            interrupt: Arc::new(CountingInterrupt::default()),
        };
        handler.queue_notified(0).unwrap();
        let used_len: u32 = mem.read_obj(GuestAddress(mock.used_addr().0 + 8)).unwrap();
        assert_eq!(used_len, 0);
    }

    /// A guest that claims more available buffers than the queue holds gets an error,
    /// not a device that spins forever.
    #[test]
    fn an_avail_index_far_ahead_is_an_error() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mock = MockSplitQueue::new(&mem, 16);
        let mut queue: Queue = mock.create_queue().unwrap();
        queue.set_ready(true);
        // avail.idx (at avail ring + 2) far beyond the 16 entries the queue has.
        mem.write_obj(100u16, GuestAddress(mock.avail_addr().0 + 2))
            .unwrap();
        let mut handler = RngQueue {
            queue,
            mem: mem.clone(),
            interrupt: Arc::new(CountingInterrupt::default()),
        };
        assert!(handler.queue_notified(0).is_err());
    }
}
