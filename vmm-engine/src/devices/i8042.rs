//! The i8042 keyboard controller, for its one job here: the CPU reset line (command 0xFE
//! on port 0x64) that Linux's `reboot=k` and many boot loaders use.

use vm_superio::{I8042Device, Trigger};

use super::PioDevice;
use crate::exit::{ExitReason, ExitSender};

/// Data port 0x60 .. command/status port 0x64.
pub const I8042_PORT: u16 = 0x60;
pub const I8042_PORT_LEN: u16 = 5;

pub struct ResetLine(ExitSender);

impl Trigger for ResetLine {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.send(ExitReason::Reboot);
        Ok(())
    }
}

pub struct I8042(I8042Device<ResetLine>);

impl I8042 {
    pub fn new(exit: ExitSender) -> Self {
        Self(I8042Device::new(ResetLine(exit)))
    }
}

impl PioDevice for I8042 {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        data.fill(self.0.read(offset as u8));
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        for b in data {
            let Ok(()) = self.0.write(offset as u8, *b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_reboots() {
        let (tx, rx) = ExitSender::channel();
        let mut dev = I8042::new(tx);
        dev.write(4, &[0xaa]);
        assert!(rx.try_recv().is_err());
        dev.write(4, &[0xfe]);
        assert_eq!(rx.try_recv().unwrap(), ExitReason::Reboot);
    }
}
