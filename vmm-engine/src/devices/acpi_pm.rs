//! The hardware-reduced ACPI power-management registers the FADT points at: a guest
//! powers off by writing SLP_TYP=S5|SLP_EN to SLEEP_CONTROL_REG, and resets by writing
//! RESET_VALUE to RESET_REG (ACPI 6.5, 4.8.3.7 and 4.8.3.6).
//!
//! And the power button: hardware-reduced ACPI has no fixed power-button event, so, as
//! ACPI 6.5 §5.6.9 has it, a Generic Event Device (the DSDT's `\_SB_.GED_`) raises
//! [`GED_IRQ`]; its `_EVT` reads [`GED_STATUS_PORT`] (reading clears it) and notifies the
//! power button device (`\_SB_.PWRB`, PNP0C0C), which Linux turns into KEY_POWER.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use super::PioDevice;
use crate::exit::{ExitReason, ExitSender};

/// SLEEP_CONTROL_REG; SLEEP_STATUS_REG follows it; RESET_REG after that; then the GED's
/// event status.
pub const SLEEP_CONTROL_PORT: u16 = 0x600;
pub const SLEEP_STATUS_PORT: u16 = 0x601;
pub const RESET_PORT: u16 = 0x602;
pub const GED_STATUS_PORT: u16 = 0x603;
pub const PORT_RANGE_LEN: u16 = 4;
/// The GED's interrupt: an IOAPIC pin nothing else uses (COM1 has 4), edge-triggered.
pub const GED_IRQ: u32 = 5;
/// GED status bit: the power button was pressed.
pub const GED_POWER_BUTTON: u8 = 1 << 0;
/// The value written to RESET_REG to reset the machine.
pub const RESET_VALUE: u8 = 0x01;
/// The sleep type the DSDT's `_S5` names.
pub const S5_SLEEP_TYPE: u8 = 5;
/// SLEEP_CONTROL_REG fields: SLP_TYP in bits 2..4, SLP_EN is bit 5.
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0b111 << SLP_TYP_SHIFT;
const SLP_EN: u8 = 1 << 5;

/// Presses the power button from outside the guest (the control socket's `shutdown`).
#[derive(Clone)]
pub struct PowerButton {
    pending: Arc<AtomicU8>,
    irq: Arc<EventFd>,
}

impl PowerButton {
    /// `irq` must be wired to [`GED_IRQ`].
    pub fn new(irq: EventFd) -> Self {
        Self {
            pending: Arc::default(),
            irq: Arc::new(irq),
        }
    }

    /// Latches the event and raises the GED's interrupt; the guest decides what follows.
    pub fn press(&self) -> std::io::Result<()> {
        self.pending.fetch_or(GED_POWER_BUTTON, Ordering::AcqRel);
        self.irq.write(1)
    }
}

pub struct AcpiPmDevice {
    exit: ExitSender,
    button: PowerButton,
}

impl AcpiPmDevice {
    pub fn new(exit: ExitSender, button: PowerButton) -> Self {
        Self { exit, button }
    }
}

impl PioDevice for AcpiPmDevice {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        // The sleep status is never pending; the GED's events are read once.
        data.fill(0);
        if offset == GED_STATUS_PORT - SLEEP_CONTROL_PORT {
            if let Some(first) = data.first_mut() {
                *first = self.button.pending.swap(0, Ordering::AcqRel);
            }
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            0 if value & SLP_EN != 0
                && (value & SLP_TYP_MASK) >> SLP_TYP_SHIFT == S5_SLEEP_TYPE =>
            {
                self.exit.send(ExitReason::PowerOff)
            }
            2 if value == RESET_VALUE => self.exit.send(ExitReason::Reboot),
            _ => tracing::debug!("acpi pm: ignored write {value:#x} at offset {offset}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn button() -> PowerButton {
        PowerButton::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())
    }

    #[test]
    fn the_power_button_raises_the_irq_and_reads_once() {
        let (tx, _rx) = ExitSender::channel();
        let button = button();
        let mut dev = AcpiPmDevice::new(tx, button.clone());
        let status = |dev: &mut AcpiPmDevice| {
            let mut b = [0xffu8];
            dev.read(3, &mut b);
            b[0]
        };
        assert_eq!(status(&mut dev), 0);
        button.press().unwrap();
        assert_eq!(button.irq.read().unwrap(), 1);
        assert_eq!(status(&mut dev), GED_POWER_BUTTON);
        assert_eq!(status(&mut dev), 0, "reading clears it");
        // The sleep status beside it always reads 0.
        let mut b = [0xffu8];
        dev.read(1, &mut b);
        assert_eq!(b, [0]);
    }

    #[test]
    fn s5_powers_off_and_reset_reboots() {
        let (tx, rx) = ExitSender::channel();
        let mut dev = AcpiPmDevice::new(tx, button());
        dev.write(0, &[S5_SLEEP_TYPE << SLP_TYP_SHIFT]); // no SLP_EN: nothing
        dev.write(0, &[(3 << SLP_TYP_SHIFT) | SLP_EN]); // S3: not supported, ignored
        assert!(rx.try_recv().is_err());
        dev.write(0, &[0x34]);
        assert_eq!(rx.try_recv().unwrap(), ExitReason::PowerOff);
        dev.write(2, &[RESET_VALUE]);
        assert_eq!(rx.try_recv().unwrap(), ExitReason::Reboot);
    }
}
