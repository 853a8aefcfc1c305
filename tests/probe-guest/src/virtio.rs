//! Glue for `virtio-drivers`: the [`Hal`] (identity-mapped memory) and a transport that
//! wraps its [`PciTransport`] to do two things the crate does not:
//!
//! - notify with one MMIO write: the crate's `notify` writes `queue_select` and reads
//!   `queue_notify_off` on every call, three exits instead of one; the wrapper learns each
//!   queue's notify address once, while the queue is set up;
//! - set a queue's MSI-X vector (`queue_msix_vector`) during queue setup, before
//!   `queue_enable` and DRIVER_OK, as the virtio spec's initialization sequence has it.

use alloc::alloc::{alloc_zeroed, dealloc, Layout};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, Ordering};

use virtio_drivers::device::blk::VirtIOBlk;
use virtio_drivers::transport::pci::{virtio_device_type, PciTransport};
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};
use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::pci::{Function, Pci};
use crate::phys;

/// Vendor-specific capability (virtio's structures are described by these).
const CAP_ID_VENDOR: u8 = 0x09;
/// `virtio_pci_cap.cfg_type` values.
const VIRTIO_PCI_CAP_COMMON_CFG: u8 = 1;
const VIRTIO_PCI_CAP_NOTIFY_CFG: u8 = 2;
/// Offsets in `virtio_pci_common_cfg`.
const COMMON_QUEUE_SELECT: u64 = 0x16;
const COMMON_QUEUE_MSIX_VECTOR: u64 = 0x1A;
const COMMON_QUEUE_NOTIFY_OFF: u64 = 0x1E;
/// Queues whose notify address is cached.
const MAX_QUEUES: usize = 8;

/// The probe's [`Hal`]: memory is identity-mapped, so physical and virtual addresses
/// are the same, DMA buffers come from the heap, and sharing is a no-op.
pub struct ProbeHal;

fn dma_layout(pages: usize) -> Layout {
    Layout::from_size_align(pages * PAGE_SIZE, PAGE_SIZE).expect("DMA layout")
}

// SAFETY: `dma_alloc` returns zeroed, page-aligned heap memory nothing else uses, whose
// address is its physical address (identity map below 4 GiB); `mmio_phys_to_virt` and
// `share` return the identity mapping of the address given.
unsafe impl Hal for ProbeHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        // SAFETY: the layout has a non-zero size (virtio-drivers asks for >= 1 page).
        let ptr = unsafe { alloc_zeroed(dma_layout(pages)) };
        let ptr = NonNull::new(ptr).expect("out of memory for DMA");
        (ptr.as_ptr() as PhysAddr, ptr)
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        // SAFETY: the caller passes what `dma_alloc` returned for the same page count.
        unsafe { dealloc(vaddr.as_ptr(), dma_layout(pages)) };
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        assert!(
            paddr + size as u64 <= phys::MAPPED_END,
            "BAR above the identity map"
        );
        NonNull::new(paddr as *mut u8).expect("BAR at address 0")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.as_ptr() as *mut u8 as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

/// [`PciTransport`] with one-write notifications and an optional MSI-X vector for every
/// queue it sets up.
pub struct ProbeTransport {
    inner: PciTransport,
    common_cfg: u64,
    notify_base: u64,
    notify_multiplier: u32,
    /// Notify address per queue (0: not learned; fall back to the crate's `notify`).
    notify: [u64; MAX_QUEUES],
    /// MSI-X table entry to give each queue set up, if any.
    queue_vector: Option<u16>,
}

/// `queue_msix_vector` as read back after the last write ([`NO_READBACK`] if none was
/// written; 0xFFFF, VIRTIO_MSI_NO_VECTOR, if the device refused): `VirtIOBlk` owns the
/// transport and does not lend it out, so the value is left here.
static VECTOR_READBACK: AtomicU32 = AtomicU32::new(NO_READBACK);
const NO_READBACK: u32 = u32::MAX;

/// What the device read back for the last queue MSI-X vector the probe wrote.
pub fn queue_vector_readback() -> Option<u16> {
    let value = VECTOR_READBACK.load(Ordering::Relaxed);
    (value != NO_READBACK).then_some(value as u16)
}

impl ProbeTransport {
    /// The transport for a virtio function whose BARs are assigned.
    pub fn new(
        pci: &mut Pci,
        function: &Function,
        queue_vector: Option<u16>,
    ) -> Result<Self, &'static str> {
        let inner = PciTransport::new::<ProbeHal, _>(&mut pci.root, function.df)
            .map_err(|_| "virtio_pci_transport")?;
        let (mut common_cfg, mut notify_base, mut notify_multiplier) = (None, None, 0);
        for cap in pci.root.capabilities(function.df) {
            if cap.id != CAP_ID_VENDOR {
                continue;
            }
            let cfg_type = (cap.private_header >> 8) as u8;
            let at = u16::from(cap.offset);
            let bar = pci.config_read(function.df, at + 4) as u8;
            let offset = u64::from(pci.config_read(function.df, at + 8));
            let Some(base) = function
                .bars
                .get(usize::from(bar))
                .copied()
                .flatten()
                .and_then(|b| b.memory())
            else {
                continue;
            };
            match cfg_type {
                VIRTIO_PCI_CAP_COMMON_CFG if common_cfg.is_none() => {
                    common_cfg = Some(base + offset)
                }
                VIRTIO_PCI_CAP_NOTIFY_CFG if notify_base.is_none() => {
                    notify_base = Some(base + offset);
                    notify_multiplier = pci.config_read(function.df, at + 16);
                }
                _ => {}
            }
        }
        Ok(Self {
            inner,
            common_cfg: common_cfg.ok_or("virtio_common_cfg")?,
            notify_base: notify_base.ok_or("virtio_notify_cfg")?,
            notify_multiplier,
            notify: [0; MAX_QUEUES],
            queue_vector,
        })
    }
}

impl Transport for ProbeTransport {
    fn device_type(&self) -> DeviceType {
        self.inner.device_type()
    }

    fn read_device_features(&mut self) -> u64 {
        self.inner.read_device_features()
    }

    fn write_driver_features(&mut self, driver_features: u64) {
        self.inner.write_driver_features(driver_features)
    }

    fn max_queue_size(&mut self, queue: u16) -> u32 {
        self.inner.max_queue_size(queue)
    }

    fn notify(&mut self, queue: u16) {
        match self.notify.get(usize::from(queue)) {
            Some(&addr) if addr != 0 => phys::mmio_write(addr, 16, u64::from(queue)),
            _ => self.inner.notify(queue),
        }
    }

    fn get_status(&self) -> DeviceStatus {
        self.inner.get_status()
    }

    fn set_status(&mut self, status: DeviceStatus) {
        self.inner.set_status(status)
    }

    fn set_guest_page_size(&mut self, guest_page_size: u32) {
        self.inner.set_guest_page_size(guest_page_size)
    }

    fn requires_legacy_layout(&self) -> bool {
        self.inner.requires_legacy_layout()
    }

    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        phys::mmio_write(self.common_cfg + COMMON_QUEUE_SELECT, 16, u64::from(queue));
        let notify_off = phys::mmio_read(self.common_cfg + COMMON_QUEUE_NOTIFY_OFF, 16);
        if let Some(slot) = self.notify.get_mut(usize::from(queue)) {
            *slot = self.notify_base + notify_off * u64::from(self.notify_multiplier);
        }
        if let Some(vector) = self.queue_vector {
            let at = self.common_cfg + COMMON_QUEUE_MSIX_VECTOR;
            phys::mmio_write(at, 16, u64::from(vector));
            VECTOR_READBACK.store(phys::mmio_read(at, 16) as u32, Ordering::Relaxed);
        }
        // Selects the queue again, writes the rings and enables it.
        self.inner
            .queue_set(queue, size, descriptors, driver_area, device_area)
    }

    fn queue_unset(&mut self, queue: u16) {
        self.inner.queue_unset(queue)
    }

    fn queue_used(&mut self, queue: u16) -> bool {
        self.inner.queue_used(queue)
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        self.inner.ack_interrupt()
    }

    fn read_config_generation(&self) -> u32 {
        self.inner.read_config_generation()
    }

    fn read_config_space<T: FromBytes + IntoBytes>(
        &self,
        offset: usize,
    ) -> virtio_drivers::Result<T> {
        self.inner.read_config_space(offset)
    }

    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        offset: usize,
        value: T,
    ) -> virtio_drivers::Result<()> {
        self.inner.write_config_space(offset, value)
    }
}

/// A virtio-blk device driven by the probe.
pub type Blk = VirtIOBlk<ProbeHal, ProbeTransport>;

/// The `index`-th function of the given virtio type on bus 0.
pub fn find(pci: &Pci, kind: DeviceType, index: usize) -> Option<Function> {
    pci.functions
        .iter()
        .filter(|f| virtio_device_type(&f.info) == Some(kind))
        .nth(index)
        .cloned()
}

/// Opens the `index`-th virtio-blk device; with `queue_vector`, its request queue signals
/// that MSI-X table entry (see [`queue_vector_readback`]).
pub fn open_blk(
    pci: &mut Pci,
    index: usize,
    queue_vector: Option<u16>,
) -> Result<(Blk, Function), &'static str> {
    let function = find(pci, DeviceType::Block, index).ok_or("no_such_blk_device")?;
    let transport = ProbeTransport::new(pci, &function, queue_vector)?;
    let blk = VirtIOBlk::new(transport).map_err(|_| "virtio_blk_init")?;
    Ok((blk, function))
}
