//! A type-0 PCI configuration space (PCI Local Bus 3.0, 6.1): the standard header, the
//! capability list, and BARs with their sizing protocol. Guest writes go through a
//! per-byte write mask, so read-only fields stay read-only whatever the guest does.

/// Standard header registers (byte offsets).
pub mod reg {
    pub const VENDOR_ID: usize = 0x00;
    pub const DEVICE_ID: usize = 0x02;
    pub const COMMAND: usize = 0x04;
    pub const STATUS: usize = 0x06;
    pub const REVISION_ID: usize = 0x08;
    pub const CLASS_PROG_IF: usize = 0x09;
    pub const HEADER_TYPE: usize = 0x0e;
    pub const BAR0: usize = 0x10;
    pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
    pub const SUBSYSTEM_ID: usize = 0x2e;
    pub const CAPABILITIES_POINTER: usize = 0x34;
    pub const INTERRUPT_LINE: usize = 0x3c;
}

/// COMMAND bits the guest may set: I/O space, memory space, bus master, INTx disable.
const COMMAND_WRITABLE: u16 = 0x0001 | 0x0002 | 0x0004 | 0x0400;
/// STATUS bit 4: a capability list is present.
const STATUS_CAPABILITIES_LIST: u16 = 1 << 4;
/// BAR low bits: memory space, 64-bit type.
const BAR_MEM_TYPE_64: u32 = 0b100;
/// Where capabilities start: right after the standard header.
const FIRST_CAPABILITY: usize = 0x40;
pub const CONFIG_SPACE_SIZE: usize = 256;
pub const NUM_BARS: usize = 6;

/// A 64-bit memory BAR (it occupies two BAR slots).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bar64 {
    /// First of its two slots (0, 2 or 4).
    pub slot: usize,
    /// Power of two, at least 4 KiB.
    pub size: u64,
}

pub struct ConfigSpace {
    bytes: [u8; CONFIG_SPACE_SIZE],
    writable: [u8; CONFIG_SPACE_SIZE],
    bars: Vec<Bar64>,
    next_capability: usize,
    last_capability: Option<usize>,
}

/// Who a function is: IDs and class.
#[derive(Debug, Clone, Copy)]
pub struct Identity {
    pub vendor_id: u16,
    pub device_id: u16,
    pub revision: u8,
    /// Class code, subclass, programming interface.
    pub class: (u8, u8, u8),
    pub subsystem_vendor_id: u16,
    pub subsystem_id: u16,
}

impl ConfigSpace {
    pub fn new(id: Identity) -> Self {
        let mut cs = Self {
            bytes: [0; CONFIG_SPACE_SIZE],
            writable: [0; CONFIG_SPACE_SIZE],
            bars: Vec::new(),
            next_capability: FIRST_CAPABILITY,
            last_capability: None,
        };
        cs.set_u16(reg::VENDOR_ID, id.vendor_id);
        cs.set_u16(reg::DEVICE_ID, id.device_id);
        cs.bytes[reg::REVISION_ID] = id.revision;
        cs.bytes[reg::CLASS_PROG_IF] = id.class.2;
        cs.bytes[reg::CLASS_PROG_IF + 1] = id.class.1;
        cs.bytes[reg::CLASS_PROG_IF + 2] = id.class.0;
        cs.set_u16(reg::SUBSYSTEM_VENDOR_ID, id.subsystem_vendor_id);
        cs.set_u16(reg::SUBSYSTEM_ID, id.subsystem_id);
        cs.writable[reg::COMMAND..reg::COMMAND + 2]
            .copy_from_slice(&COMMAND_WRITABLE.to_le_bytes());
        cs.writable[reg::INTERRUPT_LINE] = 0xff;
        cs
    }

    /// Adds a 64-bit, non-prefetchable memory BAR at slots `slot`, `slot + 1`.
    pub fn add_bar64(&mut self, slot: usize, size: u64) {
        assert!(slot + 1 < NUM_BARS && size.is_power_of_two() && size >= 0x1000);
        let off = reg::BAR0 + slot * 4;
        self.set_u32(off, BAR_MEM_TYPE_64);
        // Address bits below the size are hard-wired to zero: that is how sizing works
        // (write all ones, read back the mask).
        let mask = !(size - 1);
        self.writable[off..off + 4].copy_from_slice(&((mask as u32) & !0xf).to_le_bytes());
        self.writable[off + 4..off + 8].copy_from_slice(&((mask >> 32) as u32).to_le_bytes());
        self.bars.push(Bar64 { slot, size });
    }

    /// Appends a capability (`body` starts with its ID byte; the next-pointer byte is
    /// filled in here). `writable` masks the guest-writable bits of `body`. Returns the
    /// capability's offset in config space.
    pub fn add_capability(&mut self, body: &[u8], writable: &[u8]) -> usize {
        assert_eq!(body.len(), writable.len());
        let off = self.next_capability;
        assert!(
            off + body.len() <= CONFIG_SPACE_SIZE,
            "capabilities fit in config space"
        );
        self.bytes[off..off + body.len()].copy_from_slice(body);
        self.writable[off..off + body.len()].copy_from_slice(writable);
        self.bytes[off + 1] = 0;
        self.writable[off] = 0;
        self.writable[off + 1] = 0;
        match self.last_capability {
            Some(prev) => self.bytes[prev + 1] = off as u8,
            None => {
                self.bytes[reg::CAPABILITIES_POINTER] = off as u8;
                let status = self.u16_at(reg::STATUS) | STATUS_CAPABILITIES_LIST;
                self.set_u16(reg::STATUS, status);
            }
        }
        self.last_capability = Some(off);
        // Capabilities are dword-aligned.
        self.next_capability = (off + body.len() + 3) & !3;
        off
    }

    /// A guest read of `data.len()` bytes at `offset`. Reads past the end are all ones.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.bytes.get(offset + i).copied().unwrap_or(0xff);
        }
    }

    /// A guest write, through the write mask.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            let at = offset + i;
            if at < CONFIG_SPACE_SIZE {
                let mask = self.writable[at];
                self.bytes[at] = (self.bytes[at] & !mask) | (b & mask);
            }
        }
    }

    /// Every byte, as the guest reads it (for a snapshot).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Puts back a snapshot's bytes the way the guest wrote them (through the write
    /// mask); fails unless the result is exactly `saved`, i.e. unless this is the same
    /// kind of function with the same read-only fields.
    pub fn restore(&mut self, saved: &[u8]) -> Result<(), String> {
        if saved.len() != CONFIG_SPACE_SIZE {
            return Err(format!(
                "{} bytes of config space where a function has {CONFIG_SPACE_SIZE}",
                saved.len()
            ));
        }
        self.write(0, saved);
        match self.bytes.iter().zip(saved).position(|(a, b)| a != b) {
            None => Ok(()),
            Some(at) => Err(format!(
                "config space differs at {at:#x} (read-only there): not the same device"
            )),
        }
    }

    pub fn bars(&self) -> &[Bar64] {
        &self.bars
    }

    /// The guest-physical address BAR `bar` is programmed with.
    pub fn bar_address(&self, bar: &Bar64) -> u64 {
        let off = reg::BAR0 + bar.slot * 4;
        let low = u64::from(self.u32_at(off) & !0xf);
        let high = u64::from(self.u32_at(off + 4));
        (high << 32) | low
    }

    /// Programs a BAR the way firmware would before the OS runs.
    pub fn set_bar_address(&mut self, bar: &Bar64, addr: u64) {
        let off = reg::BAR0 + bar.slot * 4;
        self.set_u32(off, (addr as u32 & !0xf) | BAR_MEM_TYPE_64);
        self.set_u32(off + 4, (addr >> 32) as u32);
    }

    /// Whether the guest has memory decoding on (COMMAND bit 1).
    pub fn memory_enabled(&self) -> bool {
        self.u16_at(reg::COMMAND) & 0x2 != 0
    }

    pub fn u16_at(&self, off: usize) -> u16 {
        u16::from_le_bytes([self.bytes[off], self.bytes[off + 1]])
    }

    pub fn u32_at(&self, off: usize) -> u32 {
        u32::from_le_bytes(self.bytes[off..off + 4].try_into().expect("4 bytes"))
    }

    pub fn set_u16(&mut self, off: usize, v: u16) {
        self.bytes[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }

    pub fn set_u32(&mut self, off: usize, v: u32) {
        self.bytes[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cs() -> ConfigSpace {
        ConfigSpace::new(Identity {
            vendor_id: 0x1af4,
            device_id: 0x1042,
            revision: 1,
            class: (0x01, 0x00, 0x00),
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 0x40,
        })
    }

    #[test]
    fn a_snapshot_restores_what_the_guest_wrote_and_refuses_another_device() {
        let mut saved = cs();
        saved.add_bar64(0, 0x10000);
        saved.write(reg::BAR0, &0xc000_0000u32.to_le_bytes());
        saved.write(reg::COMMAND, &0x0006u16.to_le_bytes());
        let bytes = saved.bytes().to_vec();
        let mut fresh = cs();
        fresh.add_bar64(0, 0x10000);
        fresh.restore(&bytes).unwrap();
        assert_eq!(fresh.bytes(), saved.bytes());
        assert!(fresh.memory_enabled());
        // Another device (its IDs are read-only) refuses the bytes.
        let mut other = ConfigSpace::new(Identity {
            device_id: 0x1041,
            ..Identity {
                vendor_id: 0x1af4,
                device_id: 0,
                revision: 1,
                class: (0x02, 0x00, 0x00),
                subsystem_vendor_id: 0x1af4,
                subsystem_id: 0x40,
            }
        });
        other.add_bar64(0, 0x10000);
        assert!(other
            .restore(&bytes)
            .unwrap_err()
            .contains("not the same device"));
        assert!(fresh.restore(&bytes[..10]).is_err());
    }

    #[test]
    fn ids_are_read_only_and_bars_size_themselves() {
        let mut c = cs();
        c.add_bar64(0, 0x10000);
        c.write(reg::VENDOR_ID, &[0, 0]);
        let mut b = [0u8; 4];
        c.read(reg::VENDOR_ID, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x1042_1af4);
        // Sizing: write all ones, read back the mask with the type bits.
        c.write(reg::BAR0, &[0xff; 4]);
        c.write(reg::BAR0 + 4, &[0xff; 4]);
        c.read(reg::BAR0, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0xffff_0000 | BAR_MEM_TYPE_64);
        c.read(reg::BAR0 + 4, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0xffff_ffff);
        // Programming an address.
        c.write(reg::BAR0, &0xc000_0000u32.to_le_bytes());
        c.write(reg::BAR0 + 4, &0u32.to_le_bytes());
        assert_eq!(c.bar_address(&c.bars()[0]), 0xc000_0000);
    }

    #[test]
    fn capabilities_chain() {
        let mut c = cs();
        let a = c.add_capability(&[0x09, 0, 4, 0xaa], &[0, 0, 0, 0xff]);
        let b = c.add_capability(&[0x11, 0, 0, 0], &[0; 4]);
        assert_eq!(c.bytes[reg::CAPABILITIES_POINTER] as usize, a);
        assert_eq!(c.bytes[a + 1] as usize, b);
        assert_eq!(c.bytes[b + 1], 0);
        assert_ne!(c.u16_at(reg::STATUS) & STATUS_CAPABILITIES_LIST, 0);
        c.write(a + 3, &[0x55]);
        c.write(a + 1, &[0x99]); // next pointer: read-only
        assert_eq!((c.bytes[a + 3], c.bytes[a + 1] as usize), (0x55, b));
    }
}
