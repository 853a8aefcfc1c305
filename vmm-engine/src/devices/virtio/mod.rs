//! Virtio device models, and the contract between them and the transport
//! (`pci::virtio_pci`). A device sees queues, features, its configuration space and an
//! `Interrupt` to raise; it never sees PCI, MSI-X or KVM (virtio 1.2, 2 "Basic
//! Facilities of a Virtio Device").
//!
//! Life of a device: the transport reads `device_features`, `queue_max_sizes` and the
//! config space while the driver negotiates; when the driver sets DRIVER_OK the
//! transport calls `activate`, handing over guest memory, the interrupt and every queue
//! the driver enabled (each with the eventfd KVM signals when the driver kicks it); the
//! device moves them into its worker thread (`worker`). `reset` (the driver writing 0 to
//! device_status) stops the worker and returns the device to its inactive state.
//!
//! Saving a VM (`crate::snapshot`): with the vCPUs parked, the transport calls `save`,
//! which stops the worker at a request boundary (requests in flight are completed
//! first) and returns where each queue stands plus what else the device keeps
//! ([`DeviceState`]). A restore builds the device as at start-up and calls `restore`
//! instead of `activate`, with each queue already positioned where the save left it.

pub mod balloon;
pub mod block;
pub mod gpu;
pub mod input;
pub mod io_counters;
pub mod net;
pub mod poll;
pub mod quiesce;
pub mod rate_limit;
pub mod rng;
#[cfg(test)]
pub mod test_utils;
pub mod vsock;
pub mod worker;

use std::io;
use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Feature bits every modern device offers (virtio 1.2, 6 "Reserved Feature Bits").
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
/// Used-buffer and available-buffer notification suppression through the rings' event
/// fields: on a host where an exit costs ~30 µs this is what batching rests on.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

/// How a device interrupts the driver. The transport implements it (MSI-X vectors
/// through KVM irqfds); tests implement it with counters.
pub trait Interrupt: Send + Sync {
    /// The device put buffers in the used ring of queue `queue`.
    fn signal_used_queue(&self, queue: u16) -> io::Result<()>;
    /// The device's configuration space changed.
    fn signal_config_change(&self) -> io::Result<()>;
}

/// A queue the driver enabled, as handed to the device on activation.
pub struct ActiveQueue {
    /// Index of the queue in the device (0 = first).
    pub index: u16,
    pub queue: Queue,
    /// Signalled (by KVM's ioeventfd) when the driver notifies this queue.
    pub notify: EventFd,
}

/// Where a queue the device served stood when it was saved: the next available entry it
/// would have read and the next used entry it would have written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueuePosition {
    pub index: u16,
    pub next_avail: u16,
    pub next_used: u16,
}

impl QueuePosition {
    pub fn of(index: u16, queue: &Queue) -> Self {
        Self {
            index,
            next_avail: queue.next_avail(),
            next_used: queue.next_used(),
        }
    }
}

/// What an active device hands over when it is saved.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DeviceState {
    /// Every queue the device was serving.
    pub queues: Vec<QueuePosition>,
    /// The device's own state beyond its queues (config space values, held buffers,
    /// host-side resources), in whatever shape the device chose; `Null` for none.
    pub device: serde_json::Value,
}

impl DeviceState {
    /// Queue positions and nothing else: a device whose whole state is in guest memory.
    pub fn queues_only<'a>(queues: impl IntoIterator<Item = (u16, &'a Queue)>) -> Self {
        Self {
            queues: queues
                .into_iter()
                .map(|(i, q)| QueuePosition::of(i, q))
                .collect(),
            device: serde_json::Value::Null,
        }
    }
}

/// Why a device could not be saved.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error("the device's worker ended abnormally, so its queues are lost")]
    WorkerLost,
    #[error("{0}")]
    Device(String),
}

/// Why a device refused to activate.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("the driver enabled {got} queues where the device needs {needed}")]
    QueueCount { got: usize, needed: usize },
    #[error("the device is already active")]
    AlreadyActive,
    #[error("cannot start the device's worker: {0}")]
    Worker(#[source] io::Error),
    #[error("{0}")]
    Backend(String),
    #[error("the saved device state does not fit this device: {0}")]
    BadState(String),
}

/// The `N` queues a device needs, in order, from what the transport handed over on
/// activation; any other count is the driver's mistake.
pub fn exact_queues<const N: usize>(
    queues: Vec<ActiveQueue>,
) -> Result<[ActiveQueue; N], ActivateError> {
    queues
        .try_into()
        .map_err(|q: Vec<ActiveQueue>| ActivateError::QueueCount {
            got: q.len(),
            needed: N,
        })
}

/// What every virtio device model implements.
pub trait VirtioDevice: Send {
    /// The virtio device ID (`virtio_bindings::virtio_ids::VIRTIO_ID_*`).
    fn device_type(&self) -> u32;
    /// The largest size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Every feature bit the device offers, transport-independent ones included
    /// (`VIRTIO_F_VERSION_1`, `VIRTIO_RING_F_EVENT_IDX`, ...).
    fn device_features(&self) -> u64;
    /// Reads the device-specific configuration space. Out-of-range bytes read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific configuration space. Read-only or out-of-range bytes
    /// are ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts serving `queues` with the features the driver accepted.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn Interrupt>,
        queues: Vec<ActiveQueue>,
        acked_features: u64,
    ) -> Result<(), ActivateError>;
    /// Stops serving and forgets the driver's state (virtio 1.2, 2.4 "Device Reset").
    fn reset(&mut self);
    /// Stops serving at a request boundary and returns the state `restore` needs; the
    /// device is then inactive (as after `reset`, but nothing is said to the driver).
    /// Only called on an active device, with the vCPUs parked.
    fn save(&mut self) -> Result<DeviceState, SaveError>;
    /// Starts serving again from `state` (what `save` returned, `device` part): like
    /// `activate`, with `queues` already positioned where the save left them. Devices
    /// whose whole state is in the queues just activate.
    fn restore(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn Interrupt>,
        queues: Vec<ActiveQueue>,
        acked_features: u64,
        state: &serde_json::Value,
    ) -> Result<(), ActivateError> {
        if !state.is_null() {
            return Err(ActivateError::BadState(
                "this device keeps no state beyond its queues".into(),
            ));
        }
        worker::kick_each(&queues).map_err(ActivateError::Worker)?;
        self.activate(mem, interrupt, queues, acked_features)
    }
}

/// Drains queue `queue` the way virtio 1.2 2.7.10 describes for notification
/// suppression: with notifications off, hand every available chain to `handle` (which
/// returns the bytes it wrote into the chain), publish each in the used ring, then turn
/// notifications back on and go round again if the driver added buffers meanwhile.
/// Returns whether the driver must be interrupted (always when anything was used,
/// unless EVENT_IDX says the driver asked not to be).
///
/// A malformed chain or ring is the guest's fault: `handle` reports such chains with a
/// length of 0 (or the device's error status); a broken ring ends the drain with an
/// error, and the caller resets the device.
pub fn drain_queue(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    handle: impl FnMut(virtio_queue::DescriptorChain<&GuestMemoryMmap>) -> u32,
) -> Result<bool, virtio_queue::Error> {
    drain_queue_limited(queue, mem, None, handle)
}

/// `drain_queue` under an I/O limit: each chain is first offered to `limiter` (its
/// cost: the bytes of all its descriptors); one it refuses goes back to the ring and the
/// drain stops, notifications left off, until the limiter's timer brings the worker
/// back.
pub fn drain_queue_limited(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    limiter: Option<&rate_limit::RateLimiter>,
    mut handle: impl FnMut(virtio_queue::DescriptorChain<&GuestMemoryMmap>) -> u32,
) -> Result<bool, virtio_queue::Error> {
    let mut used_any = false;
    'drain: loop {
        queue.disable_notification(mem)?;
        // `iter` (unlike `pop_descriptor_chain`) fails on an avail index more than a
        // queue's worth ahead: a guest lying about it must not spin us forever.
        while let Some(chain) = queue.iter(mem)?.next() {
            if let Some(limiter) = limiter {
                if !limiter.admit(chain_bytes(&chain)) {
                    queue.go_to_previous_position();
                    break 'drain;
                }
            }
            let head = chain.head_index();
            let len = handle(chain);
            queue.add_used(mem, head, len)?;
            used_any = true;
        }
        if !queue.enable_notification(mem)? {
            break;
        }
    }
    Ok(used_any && queue.needs_notification(mem)?)
}

/// The bytes a chain's descriptors cover (what an I/O limit charges for it).
pub fn chain_bytes(chain: &virtio_queue::DescriptorChain<&GuestMemoryMmap>) -> u64 {
    chain
        .clone()
        .map(|d| u64::from(d.len()))
        .fold(0, u64::saturating_add)
}
