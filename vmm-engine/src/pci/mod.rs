//! PCI: config space, the bus with its host bridge (ECAM and 0xCF8), MSI-X through KVM
//! routing and irqfds, and the virtio-pci transport that puts every virtio device on it.

pub mod config;
pub mod irq;
pub mod msix;
pub mod root;
pub mod virtio_pci;

use std::sync::{Arc, Mutex};

use crate::devices::lock;
use crate::x86_64::layout::{PCI_ECAM_SIZE, PCI_ECAM_START};

/// The PCI side of the MMIO bus, as vCPUs see it: ECAM and every device's BARs.
#[derive(Clone)]
pub struct PciMmio(pub Arc<Mutex<root::PciRoot>>);

impl PciMmio {
    /// Handles a read at `addr`; false if nothing on PCI decodes it.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        let root = lock(&self.0);
        if (PCI_ECAM_START..PCI_ECAM_START + PCI_ECAM_SIZE).contains(&addr) {
            root.ecam_read(addr - PCI_ECAM_START, data);
            true
        } else {
            root.mmio_read(addr, data)
        }
    }

    /// Handles a write at `addr`; false if nothing on PCI decodes it.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        let mut root = lock(&self.0);
        if (PCI_ECAM_START..PCI_ECAM_START + PCI_ECAM_SIZE).contains(&addr) {
            root.ecam_write(addr - PCI_ECAM_START, data);
            true
        } else {
            root.mmio_write(addr, data)
        }
    }
}
