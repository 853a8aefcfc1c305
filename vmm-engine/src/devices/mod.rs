//! Legacy platform devices on the port-I/O bus, and the bus that routes vCPU exits to
//! them. Each device is a plain state machine (vm-superio style): it sees an offset and
//! bytes, never KVM.

pub mod acpi_pm;
pub mod cmos;
pub mod i8042;
pub mod serial;
pub mod virtio;

use std::sync::{Arc, Mutex};

/// A device on the port-I/O bus. `offset` is relative to the device's base port.
pub trait PioDevice: Send {
    fn read(&mut self, offset: u16, data: &mut [u8]);
    fn write(&mut self, offset: u16, data: &[u8]);
}

struct PioRange {
    base: u16,
    len: u16,
    device: Arc<Mutex<dyn PioDevice>>,
}

/// Routes port accesses to devices. Reads of unclaimed ports return all ones (a
/// floating ISA bus), writes to them are dropped, as on real hardware.
#[derive(Default)]
pub struct PioBus {
    ranges: Vec<PioRange>,
}

impl PioBus {
    pub fn insert(&mut self, base: u16, len: u16, device: Arc<Mutex<dyn PioDevice>>) {
        debug_assert!(
            self.ranges
                .iter()
                .all(|r| base + len <= r.base || r.base + r.len <= base),
            "overlapping port ranges"
        );
        self.ranges.push(PioRange { base, len, device });
    }

    fn find(&self, port: u16) -> Option<(&PioRange, u16)> {
        self.ranges
            .iter()
            .find(|r| port >= r.base && port - r.base < r.len)
            .map(|r| (r, port - r.base))
    }

    pub fn read(&self, port: u16, data: &mut [u8]) {
        match self.find(port) {
            Some((range, offset)) => lock(&range.device).read(offset, data),
            None => data.fill(0xff),
        }
    }

    pub fn write(&self, port: u16, data: &[u8]) {
        if let Some((range, offset)) = self.find(port) {
            lock(&range.device).write(offset, data);
        }
    }
}

/// Locks a device, recovering it if a previous holder panicked: device state stays
/// usable and one bad access must not take the VM down.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Latch(Vec<u8>);
    impl PioDevice for Latch {
        fn read(&mut self, offset: u16, data: &mut [u8]) {
            data.fill(self.0[offset as usize]);
        }
        fn write(&mut self, offset: u16, data: &[u8]) {
            self.0[offset as usize] = data[0];
        }
    }

    #[test]
    fn routes_by_port_and_floats_elsewhere() {
        let mut bus = PioBus::default();
        bus.insert(0x70, 2, Arc::new(Mutex::new(Latch(vec![0; 2]))));
        bus.write(0x71, &[7]);
        let mut b = [0u8; 1];
        bus.read(0x71, &mut b);
        assert_eq!(b, [7]);
        bus.read(0x72, &mut b);
        assert_eq!(b, [0xff]);
    }
}
