//! Arbitrary port I/O from a guest against the legacy devices (16550, i8042, CMOS RTC,
//! ACPI sleep/reset registers and the power button's status) on the engine's port bus: no sequence of reads and writes
//! may panic, hang or grow without bound.
//!
//! Input: a stream of operations, each `[kind, port_lo, port_hi, len, data...]`; `kind`
//! even = write of `len` (1..=8) bytes, odd = read of `len` bytes.
#![no_main]

use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use vireo_vmm::devices::acpi_pm::{self, AcpiPmDevice, PowerButton};
use vireo_vmm::devices::cmos::{self, Cmos};
use vireo_vmm::devices::i8042::{self, I8042};
use vireo_vmm::devices::serial::{SerialDevice, COM1_PORT, SERIAL_PORT_LEN};
use vireo_vmm::devices::PioBus;
use vireo_vmm::exit::ExitSender;
use vmm_sys_util::eventfd::EventFd;

fuzz_target!(|input: &[u8]| {
    let (exit, exits) = ExitSender::channel();
    let mut bus = PioBus::default();
    let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    let serial = Arc::new(Mutex::new(SerialDevice::new(
        irq,
        Arc::new(Mutex::new(std::io::sink())),
    )));
    bus.insert(COM1_PORT, SERIAL_PORT_LEN, serial.clone());
    bus.insert(
        i8042::I8042_PORT,
        i8042::I8042_PORT_LEN,
        Arc::new(Mutex::new(I8042::new(exit.clone()))),
    );
    bus.insert(
        cmos::CMOS_PORT,
        cmos::CMOS_PORT_LEN,
        Arc::new(Mutex::new(Cmos::new(256 << 20))),
    );
    let button = PowerButton::new(EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"));
    // Pressed before the guest's I/O: its status register has something to give once.
    let _ = button.press();
    bus.insert(
        acpi_pm::SLEEP_CONTROL_PORT,
        acpi_pm::PORT_RANGE_LEN,
        Arc::new(Mutex::new(AcpiPmDevice::new(exit, button))),
    );

    let mut rest = input;
    while rest.len() >= 4 {
        let (kind, port, len) = (
            rest[0],
            u16::from_le_bytes([rest[1], rest[2]]),
            usize::from(rest[3] % 8) + 1,
        );
        rest = &rest[4..];
        if kind % 2 == 0 {
            let n = len.min(rest.len());
            bus.write(port, &rest[..n]);
            rest = &rest[n..];
        } else {
            let mut data = [0u8; 8];
            bus.read(port, &mut data[..len]);
        }
        // Console input may arrive at any time too.
        if kind == 0xff {
            serial.lock().unwrap().enqueue_input(b"x");
        }
    }
    // Exit requests are just messages; draining them must not block.
    while exits.try_recv().is_ok() {}
});
