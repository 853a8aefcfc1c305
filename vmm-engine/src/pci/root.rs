//! PCI bus 0: a host bridge at 00:00.0 and up to 31 devices, reached through ECAM (MMIO,
//! announced in the ACPI MCFG table) and through the legacy 0xCF8/0xCFC ports; and the
//! devices' BARs on the MMIO bus. BARs are placed as firmware would before the guest
//! runs; a guest that moves them is followed (the device is told, to move its ioeventfds).

use std::sync::{Arc, Mutex};

use super::config::{reg, Bar64, ConfigSpace, Identity};
use crate::devices::virtio::SaveError;
use crate::devices::{lock, PioDevice};

/// What a function on the bus implements.
pub trait PciDevice: Send {
    fn config(&self) -> &ConfigSpace;
    /// A guest write to config space (the device sees it to react, e.g. to MSI-X
    /// control; the mask in `ConfigSpace::write` keeps read-only bits read-only).
    fn write_config(&mut self, offset: usize, data: &[u8]);
    /// A guest access inside BAR `bar` (its slot) at `offset`.
    fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]);
    fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]);
    /// BAR `bar` now decodes at `addr` (None: decoding off). Called after the address
    /// or the memory-enable bit changed.
    fn bar_moved(&mut self, bar: usize, addr: Option<u64>);
    /// Places BAR `bar` at `addr`, as firmware does.
    fn set_bar_address(&mut self, bar: &Bar64, addr: u64);
    /// The function's state for a snapshot (a running device stops).
    fn save(&mut self) -> Result<FunctionState, SaveError>;
    /// Puts a snapshot's state back into this freshly built function.
    fn restore(&mut self, state: &FunctionState) -> Result<(), String>;
}

/// What a snapshot keeps of one function: every function on the bus is virtio.
pub type FunctionState = crate::pci::virtio_pci::VirtioPciState;

/// The bus in a snapshot: each occupied slot's function.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BusState {
    pub functions: Vec<(usize, FunctionState)>,
}

/// ECAM: 4 KiB of config space per function, 8 functions per device, 32 devices per
/// bus; we decode bus 0 only.
pub const ECAM_BUS_SIZE: u64 = 1 << 20;
const ECAM_FUNCTION_SIZE: u64 = 4096;
const DEVICES_PER_BUS: usize = 32;
/// CONFIG_ADDRESS (0xCF8) fields.
const CF8_ENABLE: u32 = 1 << 31;

/// The host bridge's identity: QEMU's generic PCIe host bridge IDs, which every OS
/// knows needs no driver.
const HOST_BRIDGE: Identity = Identity {
    vendor_id: 0x1b36,
    device_id: 0x0008,
    revision: 0,
    class: (0x06, 0x00, 0x00),
    subsystem_vendor_id: 0x1b36,
    subsystem_id: 0x0008,
};

type SharedDevice = Arc<Mutex<dyn PciDevice>>;

pub struct PciRoot {
    host_bridge: ConfigSpace,
    devices: Vec<Option<SharedDevice>>,
    /// Where each device's BARs decode now: (device, bar slot, address, size).
    decoding: Vec<(usize, usize, u64, u64)>,
    /// The 32-bit window BARs are placed in, and where the next one goes.
    window_next: u64,
    window_end: u64,
}

impl PciRoot {
    pub fn new(window_start: u64, window_end: u64) -> Self {
        let mut devices = Vec::with_capacity(DEVICES_PER_BUS);
        devices.resize_with(DEVICES_PER_BUS, || None);
        Self {
            host_bridge: ConfigSpace::new(HOST_BRIDGE),
            devices,
            decoding: Vec::new(),
            window_next: window_start,
            window_end,
        }
    }

    /// Puts `device` in the next free slot and places its BARs. Returns its device
    /// number, or None if the bus or the MMIO window is full.
    pub fn add(&mut self, device: SharedDevice) -> Option<usize> {
        let slot = (1..DEVICES_PER_BUS).find(|&d| self.devices[d].is_none())?;
        {
            let mut dev = lock(&device);
            let bars: Vec<Bar64> = dev.config().bars().to_vec();
            for bar in bars {
                let addr = self.window_next.next_multiple_of(bar.size);
                if addr + bar.size > self.window_end {
                    return None;
                }
                self.window_next = addr + bar.size;
                dev.set_bar_address(&bar, addr);
            }
            // Firmware leaves memory decoding and bus mastering on.
            dev.write_config(reg::COMMAND, &0x0006u16.to_le_bytes());
        }
        self.devices[slot] = Some(device);
        self.refresh_decoding(slot);
        Some(slot)
    }

    /// Saves every function (stopping their devices), in slot order.
    /// If one cannot be saved, those already stopped start again and the bus runs on.
    pub fn save(&mut self) -> Result<BusState, SaveError> {
        let mut functions = Vec::new();
        for (slot, dev) in self.devices.iter().enumerate() {
            let Some(dev) = dev else { continue };
            let saved = lock(dev).save();
            match saved {
                Ok(state) => functions.push((slot, state)),
                Err(e) => {
                    for (slot, state) in &functions {
                        if let Some(Err(again)) =
                            self.devices[*slot].as_ref().map(|d| lock(d).restore(state))
                        {
                            tracing::error!("PCI device 00:{slot:02x}.0 did not restart: {again}");
                        }
                    }
                    return Err(e);
                }
            }
        }
        Ok(BusState { functions })
    }

    /// Restores a bus built with the same devices in the same order as the saved one,
    /// then decodes every BAR where the guest had it.
    pub fn restore(&mut self, state: &BusState) -> Result<(), String> {
        let occupied: Vec<usize> = (0..DEVICES_PER_BUS)
            .filter(|&d| self.devices[d].is_some())
            .collect();
        let saved: Vec<usize> = state.functions.iter().map(|(slot, _)| *slot).collect();
        if occupied != saved {
            return Err(format!(
                "the saved bus has devices in slots {saved:?}, this VM in {occupied:?}"
            ));
        }
        for (slot, function) in &state.functions {
            if let Some(dev) = &self.devices[*slot] {
                lock(dev)
                    .restore(function)
                    .map_err(|e| format!("PCI device 00:{slot:02x}.0: {e}"))?;
            }
        }
        for slot in occupied {
            self.refresh_decoding(slot);
        }
        Ok(())
    }

    /// Reads config space of 00:`device`.`function` at `offset`.
    pub fn config_read(&self, device: usize, function: usize, offset: usize, data: &mut [u8]) {
        match (device, function) {
            (0, 0) => self.host_bridge.read(offset, data),
            (d, 0) if d < DEVICES_PER_BUS => match &self.devices[d] {
                Some(dev) => lock(dev).config().read(offset, data),
                None => data.fill(0xff),
            },
            _ => data.fill(0xff),
        }
    }

    pub fn config_write(&mut self, device: usize, function: usize, offset: usize, data: &[u8]) {
        if function != 0 || device >= DEVICES_PER_BUS {
            return;
        }
        if device == 0 {
            self.host_bridge.write(offset, data);
            return;
        }
        let Some(dev) = &self.devices[device] else {
            return;
        };
        lock(dev).write_config(offset, data);
        // BARs and the memory-enable bit decide where the device decodes.
        let touches = |lo: usize, hi: usize| offset < hi && offset + data.len() > lo;
        if touches(reg::BAR0, reg::BAR0 + 24) || touches(reg::COMMAND, reg::COMMAND + 2) {
            self.refresh_decoding(device);
        }
    }

    fn refresh_decoding(&mut self, device: usize) {
        let Some(dev) = self.devices[device].clone() else {
            return;
        };
        let mut dev = lock(&dev);
        let enabled = dev.config().memory_enabled();
        let bars: Vec<Bar64> = dev.config().bars().to_vec();
        for bar in bars {
            let addr = dev.config().bar_address(&bar);
            // A BAR being sized (all ones) or zero does not decode.
            let valid = enabled
                && addr != 0
                && addr.checked_add(bar.size).is_some()
                && addr & (bar.size - 1) == 0;
            let now = valid.then_some(addr);
            let before = self
                .decoding
                .iter()
                .position(|&(d, s, _, _)| d == device && s == bar.slot);
            let old = before.map(|i| self.decoding[i].2);
            if old == now {
                continue;
            }
            if let Some(i) = before {
                self.decoding.swap_remove(i);
            }
            if let Some(a) = now {
                self.decoding.push((device, bar.slot, a, bar.size));
            }
            dev.bar_moved(bar.slot, now);
        }
    }

    /// An access to ECAM at `offset` from its base.
    pub fn ecam_read(&self, offset: u64, data: &mut [u8]) {
        match decode_ecam(offset) {
            Some((d, f, reg)) => self.config_read(d, f, reg, data),
            None => data.fill(0xff),
        }
    }

    pub fn ecam_write(&mut self, offset: u64, data: &[u8]) {
        if let Some((d, f, reg)) = decode_ecam(offset) {
            self.config_write(d, f, reg, data);
        }
    }

    /// Routes an MMIO access to the BAR that decodes `addr`; false if none does.
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.bar_at(addr) {
            Some((dev, bar, offset)) => {
                lock(&dev).read_bar(bar, offset, data);
                true
            }
            None => false,
        }
    }

    pub fn mmio_write(&self, addr: u64, data: &[u8]) -> bool {
        match self.bar_at(addr) {
            Some((dev, bar, offset)) => {
                lock(&dev).write_bar(bar, offset, data);
                true
            }
            None => false,
        }
    }

    fn bar_at(&self, addr: u64) -> Option<(SharedDevice, usize, u64)> {
        let &(d, slot, base, _) = self
            .decoding
            .iter()
            .find(|&&(_, _, base, size)| addr >= base && addr - base < size)?;
        Some((self.devices[d].clone()?, slot, addr - base))
    }
}

/// ECAM offset → (device, function, register) on bus 0.
fn decode_ecam(offset: u64) -> Option<(usize, usize, usize)> {
    if offset >= ECAM_BUS_SIZE {
        return None;
    }
    let function_index = (offset / ECAM_FUNCTION_SIZE) as usize;
    Some((
        function_index / 8,
        function_index % 8,
        (offset % ECAM_FUNCTION_SIZE) as usize,
    ))
}

/// The legacy configuration mechanism #1: CONFIG_ADDRESS at 0xCF8, CONFIG_DATA at
/// 0xCFC-0xCFF.
pub struct PciConfigPorts {
    root: Arc<Mutex<PciRoot>>,
    address: u32,
}

pub const PCI_CONFIG_PORT: u16 = 0xcf8;
pub const PCI_CONFIG_PORT_LEN: u16 = 8;

impl PciConfigPorts {
    pub fn new(root: Arc<Mutex<PciRoot>>) -> Self {
        Self { root, address: 0 }
    }

    /// (device, function, register) CONFIG_ADDRESS selects, if enabled and on bus 0.
    fn target(&self, data_offset: u16) -> Option<(usize, usize, usize)> {
        if self.address & CF8_ENABLE == 0 || (self.address >> 16) & 0xff != 0 {
            return None;
        }
        let device = ((self.address >> 11) & 0x1f) as usize;
        let function = ((self.address >> 8) & 0x7) as usize;
        // Bits 11:8 extend the register number (AMD's extension, as QEMU honours it).
        let register = ((self.address & 0xfc) | ((self.address >> 16) & 0xf00)) as usize;
        Some((device, function, register + data_offset as usize))
    }
}

impl PioDevice for PciConfigPorts {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        match offset {
            0 if data.len() == 4 => data.copy_from_slice(&self.address.to_le_bytes()),
            4..=7 => match self.target(offset - 4) {
                Some((d, f, r)) => lock(&self.root).config_read(d, f, r, data),
                None => data.fill(0xff),
            },
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        match offset {
            0 if data.len() == 4 => {
                self.address = u32::from_le_bytes(data.try_into().expect("4 bytes"))
            }
            4..=7 => {
                if let Some((d, f, r)) = self.target(offset - 4) {
                    lock(&self.root).config_write(d, f, r, data);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dummy {
        cs: ConfigSpace,
        moved: Vec<(usize, Option<u64>)>,
        last_write: Option<(u64, Vec<u8>)>,
    }

    impl PciDevice for Dummy {
        fn config(&self) -> &ConfigSpace {
            &self.cs
        }
        fn write_config(&mut self, offset: usize, data: &[u8]) {
            self.cs.write(offset, data);
        }
        fn read_bar(&mut self, _bar: usize, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write_bar(&mut self, _bar: usize, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
        fn bar_moved(&mut self, bar: usize, addr: Option<u64>) {
            self.moved.push((bar, addr));
        }
        fn set_bar_address(&mut self, bar: &Bar64, addr: u64) {
            self.cs.set_bar_address(bar, addr);
        }
        fn save(&mut self) -> Result<FunctionState, SaveError> {
            Err(SaveError::Device("a test function".into()))
        }
        fn restore(&mut self, _state: &FunctionState) -> Result<(), String> {
            Err("a test function".into())
        }
    }

    fn dummy() -> Arc<Mutex<Dummy>> {
        let mut cs = ConfigSpace::new(Identity {
            vendor_id: 0x1af4,
            device_id: 0x1044,
            revision: 1,
            class: (0xff, 0, 0),
            subsystem_vendor_id: 0,
            subsystem_id: 0,
        });
        cs.add_bar64(0, 0x4000);
        Arc::new(Mutex::new(Dummy {
            cs,
            moved: Vec::new(),
            last_write: None,
        }))
    }

    #[test]
    fn devices_get_bars_and_are_found_by_ecam_ports_and_mmio() {
        let root = Arc::new(Mutex::new(PciRoot::new(0xc000_0000, 0xe000_0000)));
        let dev = dummy();
        assert_eq!(lock(&root).add(dev.clone()), Some(1));
        assert_eq!(dev.lock().unwrap().moved, vec![(0, Some(0xc000_0000))]);
        // ECAM: 00:01.0 vendor/device.
        let mut id = [0u8; 4];
        lock(&root).ecam_read(8 * ECAM_FUNCTION_SIZE, &mut id);
        assert_eq!(u32::from_le_bytes(id), 0x1044_1af4);
        // An empty slot reads all ones.
        lock(&root).ecam_read(2 * 8 * ECAM_FUNCTION_SIZE, &mut id);
        assert_eq!(id, [0xff; 4]);
        // 0xCF8/0xCFC: the host bridge's class.
        let mut ports = PciConfigPorts::new(root.clone());
        ports.write(0, &(CF8_ENABLE | 0x08).to_le_bytes());
        ports.read(4, &mut id);
        assert_eq!(id[3], 0x06);
        // MMIO inside the BAR reaches the device.
        let mut b = [0u8; 1];
        assert!(lock(&root).mmio_read(0xc000_0010, &mut b));
        assert_eq!(b, [0x10]);
        assert!(!lock(&root).mmio_read(0xc000_4000, &mut b));
    }

    #[test]
    fn a_guest_moving_a_bar_is_followed() {
        let root = Arc::new(Mutex::new(PciRoot::new(0xc000_0000, 0xe000_0000)));
        let dev = dummy();
        lock(&root).add(dev.clone());
        let bar0 = 8 * ECAM_FUNCTION_SIZE + reg::BAR0 as u64;
        lock(&root).ecam_write(bar0, &0xd000_0000u32.to_le_bytes());
        assert_eq!(
            dev.lock().unwrap().moved.last(),
            Some(&(0, Some(0xd000_0000)))
        );
        assert!(lock(&root).mmio_write(0xd000_0004, &[1]));
        assert_eq!(dev.lock().unwrap().last_write, Some((4, vec![1])));
        // Memory decoding off: the BAR no longer decodes.
        lock(&root).ecam_write(
            8 * ECAM_FUNCTION_SIZE + reg::COMMAND as u64,
            &0u16.to_le_bytes(),
        );
        assert_eq!(dev.lock().unwrap().moved.last(), Some(&(0, None)));
        assert!(!lock(&root).mmio_write(0xd000_0004, &[1]));
    }
}
