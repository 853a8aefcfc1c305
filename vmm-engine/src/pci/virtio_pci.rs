//! The virtio-over-PCI transport, modern interface only (virtio 1.2, 4.1): one 64-bit
//! memory BAR holding the common configuration, ISR, device configuration and
//! notification structures, plus the MSI-X table and PBA; each described by a vendor
//! capability. Queue notifications are KVM ioeventfds on the notify structure, so a
//! driver's kick wakes the device's worker without stopping a vCPU in userspace;
//! interrupts are MSI-X vectors through irqfds.

mod snapshot;

pub use snapshot::VirtioPciState;

use std::sync::atomic::{AtomicU16, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::config::{Bar64, ConfigSpace, Identity};
use super::irq::{Error as IrqError, GsiRouter};
use super::msix::{Msix, NO_VECTOR};
use super::root::PciDevice;
use crate::devices::lock;
use crate::devices::virtio::{ActiveQueue, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};

const VIRTIO_PCI_VENDOR_ID: u16 = 0x1af4;
/// Modern devices: PCI device ID 0x1040 + virtio device ID (4.1.2.1).
const VIRTIO_PCI_DEVICE_ID_BASE: u16 = 0x1040;
/// Modern devices have revision 1 and a subsystem ID of at least 0x40.
const VIRTIO_PCI_REVISION: u8 = 1;
const VIRTIO_PCI_SUBSYSTEM_ID: u16 = 0x40;

/// `struct virtio_pci_cap` (4.1.4): vendor capability, cfg_type, bar, offset, length.
const PCI_CAP_ID_VNDR: u8 = 0x09;
const VIRTIO_PCI_CAP_LEN: usize = 16;
const VIRTIO_PCI_NOTIFY_CAP_LEN: usize = 20;
const VIRTIO_PCI_CAP_COMMON_CFG: u8 = 1;
const VIRTIO_PCI_CAP_NOTIFY_CFG: u8 = 2;
const VIRTIO_PCI_CAP_ISR_CFG: u8 = 3;
const VIRTIO_PCI_CAP_DEVICE_CFG: u8 = 4;

/// BAR 0 layout: one 4 KiB page per structure.
const BAR_SLOT: usize = 0;
const BAR_SIZE: u64 = 0x8000;
const COMMON_OFFSET: u64 = 0x0000;
const ISR_OFFSET: u64 = 0x1000;
const DEVICE_CFG_OFFSET: u64 = 0x2000;
const NOTIFY_OFFSET: u64 = 0x3000;
const MSIX_TABLE_OFFSET: u64 = 0x4000;
const MSIX_PBA_OFFSET: u64 = 0x5000;
const REGION_SIZE: u64 = 0x1000;
/// Queue n is notified at NOTIFY_OFFSET + n * NOTIFY_OFF_MULTIPLIER.
const NOTIFY_OFF_MULTIPLIER: u32 = 4;

/// `struct virtio_pci_common_cfg` field offsets (4.1.4.3).
mod common {
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    pub const DEVICE_FEATURE: u64 = 0x04;
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    pub const DRIVER_FEATURE: u64 = 0x0c;
    pub const CONFIG_MSIX_VECTOR: u64 = 0x10;
    pub const NUM_QUEUES: u64 = 0x12;
    pub const DEVICE_STATUS: u64 = 0x14;
    pub const CONFIG_GENERATION: u64 = 0x15;
    pub const QUEUE_SELECT: u64 = 0x16;
    pub const QUEUE_SIZE: u64 = 0x18;
    pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
    pub const QUEUE_ENABLE: u64 = 0x1c;
    pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;
    pub const QUEUE_DESC_LO: u64 = 0x20;
    pub const QUEUE_DESC_HI: u64 = 0x24;
    pub const QUEUE_DRIVER_LO: u64 = 0x28;
    pub const QUEUE_DRIVER_HI: u64 = 0x2c;
    pub const QUEUE_DEVICE_LO: u64 = 0x30;
    pub const QUEUE_DEVICE_HI: u64 = 0x34;
}

/// Device status bits (2.1).
mod status {
    pub const FEATURES_OK: u8 = 8;
    pub const DRIVER_OK: u8 = 4;
    pub const DEVICE_NEEDS_RESET: u8 = 64;
}

/// ISR bits (4.1.4.5): a used buffer, a configuration change.
const ISR_QUEUE: u8 = 1;
const ISR_CONFIG: u8 = 2;

/// State the device's worker reaches through its `Interrupt`.
struct InterruptState {
    msix: Mutex<Msix>,
    isr: AtomicU8,
    config_vector: AtomicU16,
    queue_vectors: Vec<AtomicU16>,
}

struct InterruptLine(Arc<InterruptState>);

impl Interrupt for InterruptLine {
    fn signal_used_queue(&self, queue: u16) -> std::io::Result<()> {
        self.0.isr.fetch_or(ISR_QUEUE, Ordering::SeqCst);
        if let Some(v) = self.0.queue_vectors.get(queue as usize) {
            let vector = v.load(Ordering::Acquire);
            if vector != NO_VECTOR {
                lock(&self.0.msix).trigger(vector);
            }
        }
        Ok(())
    }

    fn signal_config_change(&self) -> std::io::Result<()> {
        self.0.isr.fetch_or(ISR_CONFIG, Ordering::SeqCst);
        let vector = self.0.config_vector.load(Ordering::Acquire);
        if vector != NO_VECTOR {
            lock(&self.0.msix).trigger(vector);
        }
        Ok(())
    }
}

pub struct VirtioPciDevice {
    config: ConfigSpace,
    msix_cap: usize,
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    vm: Arc<VmFd>,
    interrupt: Arc<InterruptState>,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    device_status: u8,
    config_generation: u8,
    queue_select: u16,
    queues: Vec<Queue>,
    notifiers: Vec<EventFd>,
    /// Where the queues' ioeventfds are registered (BAR 0's address), if anywhere.
    notify_base: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot set up the device's interrupts: {0}")]
    Interrupts(#[from] IrqError),
    #[error("cannot create a queue: {0}")]
    Queue(String),
    #[error("cannot create an eventfd: {0}")]
    EventFd(#[source] std::io::Error),
}

impl VirtioPciDevice {
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        router: Arc<GsiRouter>,
    ) -> Result<Self, Error> {
        let queue_sizes = device.queue_max_sizes().to_vec();
        let vectors = queue_sizes.len() as u16 + 1;
        let msix = Msix::new(vectors, router.clone())?;
        let virtio_type = device.device_type();
        let mut config = ConfigSpace::new(Identity {
            vendor_id: VIRTIO_PCI_VENDOR_ID,
            device_id: VIRTIO_PCI_DEVICE_ID_BASE + virtio_type as u16,
            revision: VIRTIO_PCI_REVISION,
            class: pci_class(virtio_type),
            subsystem_vendor_id: VIRTIO_PCI_VENDOR_ID,
            subsystem_id: VIRTIO_PCI_SUBSYSTEM_ID,
        });
        config.add_bar64(BAR_SLOT, BAR_SIZE);
        let cap =
            |cfg_type: u8, offset: u64, len: u64| virtio_cap(cfg_type, offset as u32, len as u32);
        let ro = [0u8; VIRTIO_PCI_CAP_LEN];
        config.add_capability(
            &cap(VIRTIO_PCI_CAP_COMMON_CFG, COMMON_OFFSET, REGION_SIZE),
            &ro,
        );
        config.add_capability(&cap(VIRTIO_PCI_CAP_ISR_CFG, ISR_OFFSET, REGION_SIZE), &ro);
        config.add_capability(
            &cap(VIRTIO_PCI_CAP_DEVICE_CFG, DEVICE_CFG_OFFSET, REGION_SIZE),
            &ro,
        );
        let mut notify = [0u8; VIRTIO_PCI_NOTIFY_CAP_LEN];
        notify[..VIRTIO_PCI_CAP_LEN].copy_from_slice(&cap(
            VIRTIO_PCI_CAP_NOTIFY_CFG,
            NOTIFY_OFFSET,
            REGION_SIZE,
        ));
        notify[2] = VIRTIO_PCI_NOTIFY_CAP_LEN as u8;
        notify[16..20].copy_from_slice(&NOTIFY_OFF_MULTIPLIER.to_le_bytes());
        config.add_capability(&notify, &[0u8; VIRTIO_PCI_NOTIFY_CAP_LEN]);
        let (body, writable) = msix.capability(
            BAR_SLOT as u8,
            MSIX_TABLE_OFFSET as u32,
            MSIX_PBA_OFFSET as u32,
        );
        let msix_cap = config.add_capability(&body, &writable);

        let mut queues = Vec::with_capacity(queue_sizes.len());
        let mut notifiers = Vec::with_capacity(queue_sizes.len());
        for size in &queue_sizes {
            queues.push(Queue::new(*size).map_err(|e| Error::Queue(e.to_string()))?);
            notifiers.push(EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?);
        }
        let interrupt = Arc::new(InterruptState {
            msix: Mutex::new(msix),
            isr: AtomicU8::new(0),
            config_vector: AtomicU16::new(NO_VECTOR),
            queue_vectors: queue_sizes
                .iter()
                .map(|_| AtomicU16::new(NO_VECTOR))
                .collect(),
        });
        Ok(Self {
            config,
            msix_cap,
            device,
            mem,
            vm: router.vm().clone(),
            interrupt,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            device_status: 0,
            config_generation: 0,
            queue_select: 0,
            queues,
            notifiers,
            notify_base: None,
        })
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_select as usize)
    }

    fn read_common(&mut self, offset: u64, data: &mut [u8]) {
        let q = self.queues.get(self.queue_select as usize);
        let value: u64 = match offset {
            common::DEVICE_FEATURE_SELECT => u64::from(self.device_feature_select),
            common::DEVICE_FEATURE => match self.device_feature_select {
                0 => self.device.device_features() & 0xffff_ffff,
                1 => self.device.device_features() >> 32,
                _ => 0,
            },
            common::DRIVER_FEATURE_SELECT => u64::from(self.driver_feature_select),
            common::DRIVER_FEATURE => match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            common::CONFIG_MSIX_VECTOR => {
                u64::from(self.interrupt.config_vector.load(Ordering::Acquire))
            }
            common::NUM_QUEUES => self.queues.len() as u64,
            common::DEVICE_STATUS => u64::from(self.device_status),
            common::CONFIG_GENERATION => u64::from(self.config_generation),
            common::QUEUE_SELECT => u64::from(self.queue_select),
            common::QUEUE_SIZE => q.map_or(0, |q| u64::from(q.size())),
            common::QUEUE_MSIX_VECTOR => self
                .interrupt
                .queue_vectors
                .get(self.queue_select as usize)
                .map_or(u64::from(NO_VECTOR), |v| {
                    u64::from(v.load(Ordering::Acquire))
                }),
            common::QUEUE_ENABLE => q.map_or(0, |q| u64::from(q.ready())),
            common::QUEUE_NOTIFY_OFF => q.map_or(0, |_| u64::from(self.queue_select)),
            common::QUEUE_DESC_LO => q.map_or(0, |q| q.desc_table() & 0xffff_ffff),
            common::QUEUE_DESC_HI => q.map_or(0, |q| q.desc_table() >> 32),
            common::QUEUE_DRIVER_LO => q.map_or(0, |q| q.avail_ring() & 0xffff_ffff),
            common::QUEUE_DRIVER_HI => q.map_or(0, |q| q.avail_ring() >> 32),
            common::QUEUE_DEVICE_LO => q.map_or(0, |q| q.used_ring() & 0xffff_ffff),
            common::QUEUE_DEVICE_HI => q.map_or(0, |q| q.used_ring() >> 32),
            _ => 0,
        };
        let bytes = value.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(i).copied().unwrap_or(0);
        }
    }

    fn write_common(&mut self, offset: u64, data: &[u8]) {
        let mut bytes = [0u8; 8];
        let n = data.len().min(8);
        bytes[..n].copy_from_slice(&data[..n]);
        let v32 = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes"));
        let v16 = v32 as u16;
        // Queue layout is frozen once the driver is running (4.1.4.3.2).
        let queue_writable = self.device_status & status::DRIVER_OK == 0;
        match offset {
            common::DEVICE_FEATURE_SELECT => self.device_feature_select = v32,
            common::DRIVER_FEATURE_SELECT => self.driver_feature_select = v32,
            common::DRIVER_FEATURE if self.device_status & status::FEATURES_OK == 0 => match self
                .driver_feature_select
            {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v32),
                1 => {
                    self.driver_features =
                        (self.driver_features & 0xffff_ffff) | (u64::from(v32) << 32)
                }
                _ => {}
            },
            common::CONFIG_MSIX_VECTOR => self
                .interrupt
                .config_vector
                .store(self.valid_vector(v16), Ordering::Release),
            common::DEVICE_STATUS => self.write_status(bytes[0]),
            common::QUEUE_SELECT => self.queue_select = v16,
            common::QUEUE_MSIX_VECTOR => {
                let vector = self.valid_vector(v16);
                if let Some(v) = self.interrupt.queue_vectors.get(self.queue_select as usize) {
                    v.store(vector, Ordering::Release);
                }
            }
            common::QUEUE_SIZE if queue_writable => {
                if let Some(q) = self.selected_queue() {
                    // try_set_size refuses sizes that are not powers of two or too big.
                    let _ = q.try_set_size(v16);
                }
            }
            common::QUEUE_ENABLE if queue_writable && v16 == 1 => {
                let mem = self.mem.clone();
                if let Some(q) = self.selected_queue() {
                    // virtio-queue validates only ready queues: mark it, check, undo.
                    q.set_ready(true);
                    if !q.is_valid(&mem) {
                        q.set_ready(false);
                        tracing::warn!("virtio-pci: driver enabled a queue whose rings are not in guest memory");
                    }
                }
            }
            common::QUEUE_DESC_LO
            | common::QUEUE_DESC_HI
            | common::QUEUE_DRIVER_LO
            | common::QUEUE_DRIVER_HI
            | common::QUEUE_DEVICE_LO
            | common::QUEUE_DEVICE_HI
                if queue_writable =>
            {
                let (lo, hi) = if offset % 8 == 0 {
                    (Some(v32), None)
                } else {
                    (None, Some(v32))
                };
                if let Some(q) = self.selected_queue() {
                    match offset & !7 {
                        common::QUEUE_DESC_LO => q.set_desc_table_address(lo, hi),
                        common::QUEUE_DRIVER_LO => q.set_avail_ring_address(lo, hi),
                        _ => q.set_used_ring_address(lo, hi),
                    }
                }
            }
            _ => {}
        }
    }

    /// A vector number the device can use, or NO_VECTOR (which the driver reads back to
    /// learn its choice was refused, 4.1.5.1.2).
    fn valid_vector(&self, v: u16) -> u16 {
        if v < lock(&self.interrupt.msix).vector_count() {
            v
        } else {
            NO_VECTOR
        }
    }

    fn write_status(&mut self, value: u8) {
        if value == 0 {
            self.reset();
            return;
        }
        let newly = value & !self.device_status;
        let mut value = value;
        if newly & status::FEATURES_OK != 0 {
            let offered = self.device.device_features();
            if self.driver_features & !offered != 0
                || self.driver_features & VIRTIO_F_VERSION_1 == 0
            {
                // Leaving FEATURES_OK clear tells the driver the subset was refused.
                value &= !status::FEATURES_OK;
            }
        }
        self.device_status = value;
        if newly & status::DRIVER_OK != 0 && value & status::FEATURES_OK != 0 {
            self.activate();
        }
    }

    fn activate(&mut self) {
        let event_idx = self.driver_features & crate::devices::virtio::VIRTIO_RING_F_EVENT_IDX != 0;
        let mut active = Vec::new();
        for (index, q) in self.queues.iter_mut().enumerate() {
            if !q.ready() {
                continue;
            }
            q.set_event_idx(event_idx);
            let notify = match self.notifiers[index].try_clone() {
                Ok(fd) => fd,
                Err(e) => return self.fail(&format!("cannot clone a notifier: {e}")),
            };
            // The device gets its own copy; ours keeps what the driver programmed, for
            // reads of the common configuration.
            let queue = match Queue::try_from(q.state()) {
                Ok(queue) => queue,
                Err(e) => return self.fail(&format!("queue {index}: {e}")),
            };
            active.push(ActiveQueue {
                index: index as u16,
                queue,
                notify,
            });
        }
        let interrupt = Arc::new(InterruptLine(self.interrupt.clone()));
        if let Err(e) =
            self.device
                .activate(self.mem.clone(), interrupt, active, self.driver_features)
        {
            self.fail(&e.to_string());
        }
    }

    /// The device cannot go on: tell the driver (DEVICE_NEEDS_RESET + config interrupt).
    fn fail(&mut self, why: &str) {
        tracing::warn!("virtio device type {}: {why}", self.device.device_type());
        self.device_status |= status::DEVICE_NEEDS_RESET;
        let _ = InterruptLine(self.interrupt.clone()).signal_config_change();
    }

    fn reset(&mut self) {
        self.device.reset();
        self.device_status = 0;
        self.driver_features = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.queue_select = 0;
        for q in &mut self.queues {
            q.reset();
        }
        for v in &self.interrupt.queue_vectors {
            v.store(NO_VECTOR, Ordering::Release);
        }
        self.interrupt
            .config_vector
            .store(NO_VECTOR, Ordering::Release);
        self.interrupt.isr.store(0, Ordering::Release);
        // Kicks that arrived before the reset must not wake a future worker.
        for n in &self.notifiers {
            let _ = n.read();
        }
    }

    fn move_notifiers(&mut self, new_base: Option<u64>) {
        if let Some(old) = self.notify_base.take() {
            for (i, fd) in self.notifiers.iter().enumerate() {
                let _ = self
                    .vm
                    .unregister_ioevent(fd, &notify_address(old, i), NoDatamatch);
            }
        }
        if let Some(base) = new_base {
            for (i, fd) in self.notifiers.iter().enumerate() {
                if let Err(e) = self
                    .vm
                    .register_ioevent(fd, &notify_address(base, i), NoDatamatch)
                {
                    // Kicks still work, through MMIO exits (`write_bar`), only slower.
                    tracing::warn!("virtio-pci: no ioeventfd for queue {i}: {e}");
                }
            }
            self.notify_base = Some(base);
        }
    }
}

fn notify_address(bar_base: u64, queue: usize) -> IoEventAddress {
    IoEventAddress::Mmio(bar_base + NOTIFY_OFFSET + queue as u64 * u64::from(NOTIFY_OFF_MULTIPLIER))
}

/// A `virtio_pci_cap` body (4.1.4).
fn virtio_cap(cfg_type: u8, offset: u32, length: u32) -> [u8; VIRTIO_PCI_CAP_LEN] {
    let mut c = [0u8; VIRTIO_PCI_CAP_LEN];
    c[0] = PCI_CAP_ID_VNDR;
    c[2] = VIRTIO_PCI_CAP_LEN as u8;
    c[3] = cfg_type;
    c[4] = BAR_SLOT as u8;
    c[8..12].copy_from_slice(&offset.to_le_bytes());
    c[12..16].copy_from_slice(&length.to_le_bytes());
    c
}

/// The PCI class QEMU gives each kind of virtio device, so guests sort them the same.
fn pci_class(virtio_type: u32) -> (u8, u8, u8) {
    use virtio_bindings::virtio_ids::*;
    match virtio_type {
        VIRTIO_ID_BLOCK => (0x01, 0x00, 0x00),
        VIRTIO_ID_NET => (0x02, 0x00, 0x00),
        VIRTIO_ID_GPU => (0x03, 0x80, 0x00),
        VIRTIO_ID_INPUT => (0x09, 0x80, 0x00),
        _ => (0xff, 0x00, 0x00),
    }
}

impl PciDevice for VirtioPciDevice {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
        let control = self.msix_cap + 2;
        if offset < control + 2 && offset + data.len() > control {
            let value = self.config.u16_at(control);
            lock(&self.interrupt.msix).set_control(value);
        }
    }

    fn read_bar(&mut self, _bar: usize, offset: u64, data: &mut [u8]) {
        match offset {
            o if o < ISR_OFFSET => self.read_common(o - COMMON_OFFSET, data),
            o if o < DEVICE_CFG_OFFSET => {
                // Reading the ISR acknowledges it (4.1.4.5.1).
                let isr = self.interrupt.isr.swap(0, Ordering::AcqRel);
                data.fill(0);
                if o == ISR_OFFSET {
                    if let Some(b) = data.first_mut() {
                        *b = isr;
                    }
                }
            }
            o if o < NOTIFY_OFFSET => self.device.read_config(o - DEVICE_CFG_OFFSET, data),
            o if o < MSIX_TABLE_OFFSET => data.fill(0),
            o if o < MSIX_PBA_OFFSET => {
                lock(&self.interrupt.msix).read_table(o - MSIX_TABLE_OFFSET, data)
            }
            o => lock(&self.interrupt.msix).read_pba(o - MSIX_PBA_OFFSET, data),
        }
    }

    fn write_bar(&mut self, _bar: usize, offset: u64, data: &[u8]) {
        match offset {
            o if o < ISR_OFFSET => self.write_common(o - COMMON_OFFSET, data),
            o if o < DEVICE_CFG_OFFSET => {}
            o if o < NOTIFY_OFFSET => {
                self.device.write_config(o - DEVICE_CFG_OFFSET, data);
            }
            o if o < MSIX_TABLE_OFFSET => {
                // A kick that did not go through an ioeventfd (none registered yet).
                let queue = ((o - NOTIFY_OFFSET) / u64::from(NOTIFY_OFF_MULTIPLIER)) as usize;
                if let Some(n) = self.notifiers.get(queue) {
                    let _ = n.write(1);
                }
            }
            o if o < MSIX_PBA_OFFSET => {
                lock(&self.interrupt.msix).write_table(o - MSIX_TABLE_OFFSET, data)
            }
            _ => {}
        }
    }

    fn bar_moved(&mut self, bar: usize, addr: Option<u64>) {
        if bar == BAR_SLOT {
            self.move_notifiers(addr);
        }
    }

    fn set_bar_address(&mut self, bar: &Bar64, addr: u64) {
        self.config.set_bar_address(bar, addr);
    }

    fn save(&mut self) -> Result<VirtioPciState, crate::devices::virtio::SaveError> {
        VirtioPciDevice::save(self)
    }

    fn restore(&mut self, state: &VirtioPciState) -> Result<(), String> {
        VirtioPciDevice::restore(self, state)
    }
}

impl Drop for VirtioPciDevice {
    fn drop(&mut self) {
        self.device.reset();
        self.move_notifiers(None);
    }
}
