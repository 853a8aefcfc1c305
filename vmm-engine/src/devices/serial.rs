//! COM1: vm-superio's 16550A on port 0x3F8, IRQ 4, its interrupt line an eventfd that
//! KVM's irqfd turns into an IOAPIC interrupt.

use std::io::{self, Write};

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::PioDevice;

pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_IRQ: u32 = 4;
/// The 16550 decodes eight registers.
pub const SERIAL_PORT_LEN: u16 = 8;

/// Raises a guest interrupt by signalling an irqfd.
pub struct IrqTrigger(pub std::sync::Arc<EventFd>);

impl Trigger for IrqTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Collects the bytes of one port-I/O exit and writes them in one go: vm-superio flushes
/// after every byte, and a `rep outsb` line would otherwise cost a syscall per byte.
pub struct BatchedOutput {
    sink: ConsoleSink,
    pending: Vec<u8>,
}

/// Where console output goes; shared so that it outlives one boot of a rebooting guest.
pub type ConsoleSink = std::sync::Arc<std::sync::Mutex<dyn Write + Send>>;

impl BatchedOutput {
    pub fn new(sink: ConsoleSink) -> Self {
        Self {
            sink,
            pending: Vec::with_capacity(256),
        }
    }

    fn push_out(&mut self) {
        if !self.pending.is_empty() {
            // A closed console (the reader went away) must not stop the guest: output is
            // dropped, as a real UART with nothing attached would.
            let mut sink = super::lock(&self.sink);
            let _ = sink.write_all(&self.pending).and_then(|_| sink.flush());
            drop(sink);
            self.pending.clear();
        }
    }
}

impl Write for BatchedOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub type Uart = Serial<IrqTrigger, NoEvents, BatchedOutput>;

/// The port-I/O face of the UART.
pub struct SerialDevice {
    uart: Uart,
    /// Kept to rebuild the UART from a snapshot.
    interrupt: std::sync::Arc<EventFd>,
    out: ConsoleSink,
}

/// The UART's registers and receive FIFO in a snapshot (vm-superio's `SerialState`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SerialSnapshot {
    pub registers: [u8; 9],
    pub in_buffer: Vec<u8>,
}

impl SerialDevice {
    pub fn new(interrupt: EventFd, out: ConsoleSink) -> Self {
        let interrupt = std::sync::Arc::new(interrupt);
        Self {
            uart: Serial::new(
                IrqTrigger(interrupt.clone()),
                BatchedOutput::new(out.clone()),
            ),
            interrupt,
            out,
        }
    }

    pub fn save(&self) -> SerialSnapshot {
        let s = self.uart.state();
        SerialSnapshot {
            registers: [
                s.baud_divisor_low,
                s.baud_divisor_high,
                s.interrupt_enable,
                s.interrupt_identification,
                s.line_control,
                s.line_status,
                s.modem_control,
                s.modem_status,
                s.scratch,
            ],
            in_buffer: s.in_buffer,
        }
    }

    /// Rebuilds the UART from a snapshot (raising the interrupt it had pending).
    pub fn restore(&mut self, saved: &SerialSnapshot) -> Result<(), String> {
        let [baud_divisor_low, baud_divisor_high, interrupt_enable, interrupt_identification, line_control, line_status, modem_control, modem_status, scratch] =
            saved.registers;
        let state = vm_superio::serial::SerialState {
            baud_divisor_low,
            baud_divisor_high,
            interrupt_enable,
            interrupt_identification,
            line_control,
            line_status,
            modem_control,
            modem_status,
            scratch,
            in_buffer: saved.in_buffer.clone(),
        };
        self.uart = Serial::from_state(
            &state,
            IrqTrigger(self.interrupt.clone()),
            vm_superio::serial::NoEvents,
            BatchedOutput::new(self.out.clone()),
        )
        .map_err(|e| format!("serial port: {e:?}"))?;
        Ok(())
    }

    /// Queues console input for the guest; returns how many bytes fit in the FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let room = self.uart.fifo_capacity().min(bytes.len());
        if room == 0 {
            return 0;
        }
        match self.uart.enqueue_raw_bytes(&bytes[..room]) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("serial input dropped: {e:?}");
                0
            }
        }
    }
}

impl PioDevice for SerialDevice {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        for b in data.iter_mut() {
            *b = self.uart.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        for b in data {
            if let Err(e) = self.uart.write(offset as u8, *b) {
                tracing::warn!("serial write: {e:?}");
            }
        }
        self.uart.writer_mut().push_out();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_string_write_comes_out_whole_and_input_reaches_the_guest() {
        let out = Shared::default();
        let mut dev =
            SerialDevice::new(EventFd::new(0).unwrap(), Arc::new(Mutex::new(out.clone())));
        dev.write(0, b"hello\n");
        assert_eq!(&*out.0.lock().unwrap(), b"hello\n");
        assert_eq!(dev.enqueue_input(b"ok"), 2);
        let mut lsr = [0u8];
        dev.read(5, &mut lsr);
        assert_eq!(lsr[0] & 1, 1, "data ready");
        let mut byte = [0u8];
        dev.read(0, &mut byte);
        assert_eq!(byte, [b'o']);
    }
}
