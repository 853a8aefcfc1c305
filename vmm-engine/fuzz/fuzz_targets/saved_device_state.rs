//! A saved VM is a file on disk, so each device's saved state is untrusted input on
//! restore. Arbitrary JSON goes to the `restore` of every device that parses a state of
//! its own (balloon, keyboard, tablet, network card, vsock), with valid queues: it is
//! refused with an `ActivateError` or accepted, and an accepted device runs and
//! resets. Nothing may panic.
//!
//! Input: byte 0 picks the device, the rest is JSON text (input that is not JSON is
//! no state a file could hold, and is skipped).
#![no_main]

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use vireo_vmm::devices::virtio::balloon::{self, Balloon};
use vireo_vmm::devices::virtio::input::event::InputKind;
use vireo_vmm::devices::virtio::input::Input;
use vireo_vmm::devices::virtio::net::backend::{Backend, BackendError};
use vireo_vmm::devices::virtio::net::{MacAddr, Net};
use vireo_vmm::devices::virtio::vsock::Vsock;
use vireo_vmm::devices::virtio::{ActiveQueue, Interrupt, VirtioDevice};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

const QUEUE_SIZE: u16 = 16;

struct NoInterrupt;

impl Interrupt for NoInterrupt {
    fn signal_used_queue(&self, _queue: u16) -> std::io::Result<()> {
        Ok(())
    }
    fn signal_config_change(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A network backend that never has a frame: one end of a socket pair nobody writes.
struct QuietBackend {
    ours: UnixStream,
    _theirs: UnixStream,
}

impl Backend for QuietBackend {
    fn fd(&self) -> RawFd {
        self.ours.as_raw_fd()
    }
    fn checksums_valid(&self) -> bool {
        true
    }
    fn can_send(&self) -> bool {
        true
    }
    fn send(&mut self, _frame: &[u8]) -> Result<(), BackendError> {
        Ok(())
    }
    fn flush(&mut self) -> Result<bool, BackendError> {
        Ok(true)
    }
    fn has_pending_output(&self) -> bool {
        false
    }
    fn peek_frame(&mut self) -> Result<Option<&[u8]>, BackendError> {
        Ok(None)
    }
    fn consume_frame(&mut self) {}
}

/// The vsock device's socket, bound once per process.
fn vsock_listener() -> &'static (PathBuf, UnixListener) {
    static LISTENER: OnceLock<(PathBuf, UnixListener)> = OnceLock::new();
    LISTENER.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("vireo-fuzz-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("v.sock");
        let listener = UnixListener::bind(&path).unwrap();
        (path, listener)
    })
}

fn device(pick: u8) -> (Box<dyn VirtioDevice>, u64) {
    match pick % 5 {
        0 => (Box::new(Balloon::new(0).unwrap()), balloon::FEATURES),
        1 => (Box::new(Input::new(InputKind::Keyboard).unwrap()), 0),
        2 => (Box::new(Input::new(InputKind::Tablet).unwrap()), 0),
        3 => {
            let (ours, theirs) = UnixStream::pair().unwrap();
            ours.set_nonblocking(true).unwrap();
            let backend = QuietBackend {
                ours,
                _theirs: theirs,
            };
            let net = Net::with_backend(MacAddr([0x52, 0x54, 0, 0, 0, 1]), Box::new(backend));
            let features = net.device_features();
            (Box::new(net), features)
        }
        _ => {
            let (path, listener) = vsock_listener();
            let vsock = Vsock::new(3, path.clone(), listener.try_clone().unwrap()).unwrap();
            (Box::new(vsock), 0)
        }
    }
}

/// One queue per size the device has, each on empty rings of its own.
fn queues(device: &dyn VirtioDevice) -> Vec<ActiveQueue> {
    (0..device.queue_max_sizes().len() as u16)
        .map(|index| {
            let base = u64::from(index) * 0x1000;
            let mut queue = Queue::new(QUEUE_SIZE).unwrap();
            queue.set_size(QUEUE_SIZE);
            queue.set_desc_table_address(Some(base as u32), Some(0));
            queue.set_avail_ring_address(Some((base + 0x100) as u32), Some(0));
            queue.set_used_ring_address(Some((base + 0x200) as u32), Some(0));
            queue.set_ready(true);
            ActiveQueue {
                index,
                queue,
                notify: EventFd::new(0).unwrap(),
            }
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, text)) = data.split_first() else {
        return;
    };
    let Ok(state) = serde_json::from_slice::<serde_json::Value>(text) else {
        return;
    };
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 10)]).unwrap();
    let (mut device, features) = device(pick);
    let queues = queues(device.as_ref());
    if device
        .restore(mem, Arc::new(NoInterrupt), queues, features, &state)
        .is_ok()
    {
        device.reset();
    }
});
