//! The hardware-reduced ACPI power-management registers the FADT points at: a guest
//! powers off by writing SLP_TYP=S5|SLP_EN to SLEEP_CONTROL_REG, and resets by writing
//! RESET_VALUE to RESET_REG (ACPI 6.5, 4.8.3.7 and 4.8.3.6).

use super::PioDevice;
use crate::exit::{ExitReason, ExitSender};

/// SLEEP_CONTROL_REG; SLEEP_STATUS_REG follows it; RESET_REG after that.
pub const SLEEP_CONTROL_PORT: u16 = 0x600;
pub const SLEEP_STATUS_PORT: u16 = 0x601;
pub const RESET_PORT: u16 = 0x602;
pub const PORT_RANGE_LEN: u16 = 3;
/// The value written to RESET_REG to reset the machine.
pub const RESET_VALUE: u8 = 0x01;
/// The sleep type the DSDT's `_S5` names.
pub const S5_SLEEP_TYPE: u8 = 5;
/// SLEEP_CONTROL_REG fields: SLP_TYP in bits 2..4, SLP_EN is bit 5.
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0b111 << SLP_TYP_SHIFT;
const SLP_EN: u8 = 1 << 5;

pub struct AcpiPmDevice {
    exit: ExitSender,
}

impl AcpiPmDevice {
    pub fn new(exit: ExitSender) -> Self {
        Self { exit }
    }
}

impl PioDevice for AcpiPmDevice {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        // Nothing is ever pending: the sleep status reads as zero.
        data.fill(0);
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

    #[test]
    fn s5_powers_off_and_reset_reboots() {
        let (tx, rx) = ExitSender::channel();
        let mut dev = AcpiPmDevice::new(tx);
        dev.write(0, &[S5_SLEEP_TYPE << SLP_TYP_SHIFT]); // no SLP_EN: nothing
        dev.write(0, &[(3 << SLP_TYP_SHIFT) | SLP_EN]); // S3: not supported, ignored
        assert!(rx.try_recv().is_err());
        dev.write(0, &[0x34]);
        assert_eq!(rx.try_recv().unwrap(), ExitReason::PowerOff);
        dev.write(2, &[RESET_VALUE]);
        assert_eq!(rx.try_recv().unwrap(), ExitReason::Reboot);
    }
}
