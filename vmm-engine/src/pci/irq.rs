//! Guest interrupts for PCI devices: KVM's GSI routing table (MSI routes alongside the
//! default IOAPIC/PIC pins) and MSI-X vectors delivered through irqfds.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;

use crate::devices::lock;

/// GSIs 0-23 are the IOAPIC's pins; MSI routes take the numbers after them.
const FIRST_MSI_GSI: u32 = 24;
const IOAPIC_PINS: u32 = 24;
const PIC_PINS: u32 = 16;

/// An MSI message as the guest programs it (address and data).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MsiMessage {
    pub address_lo: u32,
    pub address_hi: u32,
    pub data: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("KVM refused the interrupt routing table: {0}")]
    SetRouting(#[source] kvm_ioctls::Error),
    #[error("KVM refused an irqfd: {0}")]
    Irqfd(#[source] kvm_ioctls::Error),
    #[error("out of interrupt routes")]
    NoGsi,
}

/// Owns KVM's GSI routing table for a VM. `KVM_SET_GSI_ROUTING` replaces the whole
/// table, so every change rewrites it: the default irqchip routes (so the legacy
/// serial IRQ keeps working) plus every MSI route.
pub struct GsiRouter {
    vm: Arc<VmFd>,
    msi: Mutex<(u32, BTreeMap<u32, MsiMessage>)>,
}

impl GsiRouter {
    pub fn new(vm: Arc<VmFd>) -> Self {
        Self {
            vm,
            msi: Mutex::new((FIRST_MSI_GSI, BTreeMap::new())),
        }
    }

    pub fn vm(&self) -> &Arc<VmFd> {
        &self.vm
    }

    /// Reserves a GSI with a (not yet meaningful) MSI route.
    pub fn allocate(&self) -> Result<u32, Error> {
        let mut state = lock(&self.msi);
        let gsi = state.0;
        if gsi as usize >= kvm_bindings::KVM_MAX_IRQ_ROUTES {
            return Err(Error::NoGsi);
        }
        state.0 += 1;
        state.1.insert(gsi, MsiMessage::default());
        self.commit(&state.1)?;
        Ok(gsi)
    }

    /// Points `gsi` at the guest's MSI message.
    pub fn set_msi(&self, gsi: u32, msg: MsiMessage) -> Result<(), Error> {
        let mut state = lock(&self.msi);
        if state.1.insert(gsi, msg) == Some(msg) {
            return Ok(());
        }
        self.commit(&state.1)
    }

    fn commit(&self, msi: &BTreeMap<u32, MsiMessage>) -> Result<(), Error> {
        let mut entries = Vec::with_capacity((PIC_PINS + IOAPIC_PINS) as usize + msi.len());
        // KVM's own default: GSI n drives PIC pin n (n < 16) and IOAPIC pin n.
        for gsi in 0..IOAPIC_PINS {
            if gsi < PIC_PINS {
                let chip = if gsi < 8 {
                    KVM_IRQCHIP_PIC_MASTER
                } else {
                    KVM_IRQCHIP_PIC_SLAVE
                };
                entries.push(irqchip_entry(gsi, chip, gsi % 8));
            }
            entries.push(irqchip_entry(gsi, KVM_IRQCHIP_IOAPIC, gsi));
        }
        for (&gsi, m) in msi {
            let mut e = kvm_irq_routing_entry {
                gsi,
                type_: KVM_IRQ_ROUTING_MSI,
                ..Default::default()
            };
            e.u.msi.address_lo = m.address_lo;
            e.u.msi.address_hi = m.address_hi;
            e.u.msi.data = m.data;
            entries.push(e);
        }
        let routing = KvmIrqRouting::from_entries(&entries).map_err(|_| Error::NoGsi)?;
        self.vm.set_gsi_routing(&routing).map_err(Error::SetRouting)
    }
}

fn irqchip_entry(gsi: u32, irqchip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip.irqchip = irqchip;
    e.u.irqchip.pin = pin;
    e
}
