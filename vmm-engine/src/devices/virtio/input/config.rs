//! The virtio-input configuration space (virtio 1.2, 5.8.4): the driver writes `select`
//! and `subsel`, then reads `size` and the `u` union the device filled in for that
//! question (the device's name, serial, IDs, property bits, event codes per type, or an
//! absolute axis's range).

use virtio_bindings::virtio_input::{
    virtio_input_config_select_VIRTIO_INPUT_CFG_ABS_INFO as CFG_ABS_INFO,
    virtio_input_config_select_VIRTIO_INPUT_CFG_EV_BITS as CFG_EV_BITS,
    virtio_input_config_select_VIRTIO_INPUT_CFG_ID_DEVIDS as CFG_ID_DEVIDS,
    virtio_input_config_select_VIRTIO_INPUT_CFG_ID_NAME as CFG_ID_NAME,
    virtio_input_config_select_VIRTIO_INPUT_CFG_ID_SERIAL as CFG_ID_SERIAL,
    virtio_input_config_select_VIRTIO_INPUT_CFG_PROP_BITS as CFG_PROP_BITS,
};

use super::event::InputProfile;

/// Offsets in `struct virtio_input_config`.
const SELECT: usize = 0;
const SUBSEL: usize = 1;
const SIZE: usize = 2;
/// The union follows five reserved bytes.
const UNION: usize = 8;
/// The union holds 128 bytes.
const UNION_LEN: usize = 128;
/// The whole structure.
pub const CONFIG_LEN: usize = UNION + UNION_LEN;

/// The configuration space of one input device.
pub struct InputConfig {
    profile: InputProfile,
    select: u8,
    subsel: u8,
}

impl InputConfig {
    pub fn new(profile: InputProfile) -> Self {
        Self {
            profile,
            select: 0,
            subsel: 0,
        }
    }

    pub fn profile(&self) -> &InputProfile {
        &self.profile
    }

    /// Reads `data.len()` bytes at `offset`; bytes past the structure read as zero.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        let bytes = self.bytes();
        for (i, out) in data.iter_mut().enumerate() {
            *out = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|at| bytes.get(at).copied())
                .unwrap_or(0);
        }
    }

    /// Only `select` and `subsel` are writable (5.8.4: the rest is the device's answer).
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, &byte) in data.iter().enumerate() {
            match offset.checked_add(i as u64) {
                Some(o) if o == SELECT as u64 => self.select = byte,
                Some(o) if o == SUBSEL as u64 => self.subsel = byte,
                _ => {}
            }
        }
    }

    /// The structure as it reads for the current `select`/`subsel`.
    fn bytes(&self) -> [u8; CONFIG_LEN] {
        let mut out = [0u8; CONFIG_LEN];
        out[SELECT] = self.select;
        out[SUBSEL] = self.subsel;
        let size = self.answer(&mut out[UNION..]);
        out[SIZE] = size as u8;
        out
    }

    /// Fills the union for the current question; returns its size (0: no such thing).
    fn answer(&self, u: &mut [u8]) -> usize {
        let p = &self.profile;
        match u32::from(self.select) {
            CFG_ID_NAME if self.subsel == 0 => copy_str(u, p.name),
            CFG_ID_SERIAL if self.subsel == 0 => copy_str(u, p.serial),
            CFG_ID_DEVIDS if self.subsel == 0 => {
                let ids = [p.ids.bustype, p.ids.vendor, p.ids.product, p.ids.version];
                for (chunk, v) in u.chunks_exact_mut(2).zip(ids) {
                    chunk.copy_from_slice(&v.to_le_bytes());
                }
                8
            }
            // No input properties (a tablet is a pointer, not a touchscreen or pad).
            CFG_PROP_BITS => 0,
            CFG_EV_BITS => match p.codes.iter().find(|(k, _)| *k == u16::from(self.subsel)) {
                Some((_, codes)) => bitmap(u, codes),
                None => 0,
            },
            CFG_ABS_INFO => match p
                .abs
                .iter()
                .find(|(axis, _)| *axis == u16::from(self.subsel))
            {
                Some((_, info)) => {
                    let fields = [info.min, info.max, info.fuzz, info.flat, info.res];
                    for (chunk, v) in u.chunks_exact_mut(4).zip(fields) {
                        chunk.copy_from_slice(&v.to_le_bytes());
                    }
                    20
                }
                None => 0,
            },
            _ => 0,
        }
    }
}

/// A string, unterminated as the spec has it, cut to the union's length.
fn copy_str(u: &mut [u8], s: &str) -> usize {
    let n = s.len().min(u.len());
    u[..n].copy_from_slice(&s.as_bytes()[..n]);
    n
}

/// Sets bit `code` for each code; returns the bytes up to the highest one set (codes
/// beyond the union's 1024 bits cannot be announced and are left out).
fn bitmap(u: &mut [u8], codes: &[u16]) -> usize {
    let mut size = 0;
    for &code in codes {
        let byte = usize::from(code / 8);
        if let Some(slot) = u.get_mut(byte) {
            *slot |= 1 << (code % 8);
            size = size.max(byte + 1);
        }
    }
    size
}

#[cfg(test)]
mod tests {
    use super::super::event::*;
    use super::*;

    fn ask(config: &mut InputConfig, select: u32, subsel: u16) -> Vec<u8> {
        config.write(SELECT as u64, &[select as u8, subsel as u8]);
        let mut size = [0u8];
        config.read(SIZE as u64, &mut size);
        let mut u = vec![0u8; usize::from(size[0])];
        config.read(UNION as u64, &mut u);
        u
    }

    fn has_bit(bitmap: &[u8], code: u16) -> bool {
        bitmap
            .get(usize::from(code / 8))
            .is_some_and(|b| b & (1 << (code % 8)) != 0)
    }

    #[test]
    fn keyboard_answers_as_a_linux_driver_asks() {
        let mut c = InputConfig::new(InputProfile::for_kind(InputKind::Keyboard));
        assert_eq!(ask(&mut c, CFG_ID_NAME, 0), b"Vireo Virtio Keyboard");
        assert_eq!(ask(&mut c, CFG_ID_SERIAL, 0), b"vireo-keyboard");
        assert_eq!(
            ask(&mut c, CFG_ID_DEVIDS, 0),
            [0x06, 0, 0xf4, 0x1a, 1, 0, 1, 0]
        );
        let keys = ask(&mut c, CFG_EV_BITS, EV_KEY);
        assert_eq!(keys.len(), 32, "KEY_LAST 248 is in byte 31");
        assert!(has_bit(&keys, 30) && has_bit(&keys, KEY_LAST) && !has_bit(&keys, 0));
        assert!(!ask(&mut c, CFG_EV_BITS, EV_REP).is_empty());
        assert!(has_bit(&ask(&mut c, CFG_EV_BITS, EV_LED), LED_CAPSL));
        assert!(ask(&mut c, CFG_EV_BITS, EV_ABS).is_empty());
        assert!(ask(&mut c, CFG_PROP_BITS, 0).is_empty());
    }

    #[test]
    fn tablet_has_buttons_wheels_and_two_absolute_axes() {
        let mut c = InputConfig::new(InputProfile::for_kind(InputKind::Tablet));
        let keys = ask(&mut c, CFG_EV_BITS, EV_KEY);
        assert!(TABLET_BUTTONS.iter().all(|&b| has_bit(&keys, b)));
        assert!(has_bit(&ask(&mut c, CFG_EV_BITS, EV_REL), REL_WHEEL));
        let abs = ask(&mut c, CFG_EV_BITS, EV_ABS);
        assert!(has_bit(&abs, ABS_X) && has_bit(&abs, ABS_Y));
        let x = ask(&mut c, CFG_ABS_INFO, ABS_X);
        assert_eq!(x.len(), 20);
        assert_eq!(u32::from_le_bytes(x[4..8].try_into().unwrap()), ABS_MAX);
        assert!(ask(&mut c, CFG_ABS_INFO, 0x2f).is_empty());
    }

    #[test]
    fn answers_are_read_only_and_out_of_range_reads_are_zero() {
        let mut c = InputConfig::new(InputProfile::for_kind(InputKind::Keyboard));
        c.write(SELECT as u64, &[CFG_ID_NAME as u8]);
        c.write(SIZE as u64, &[0xff]);
        c.write(UNION as u64, b"evil");
        let mut size = [0u8];
        c.read(SIZE as u64, &mut size);
        assert_eq!(usize::from(size[0]), "Vireo Virtio Keyboard".len());
        let mut beyond = [0xaau8; 4];
        c.read(CONFIG_LEN as u64 - 2, &mut beyond);
        assert_eq!(beyond, [0; 4]);
        c.read(u64::MAX, &mut beyond);
        assert_eq!(beyond, [0; 4]);
        assert!(ask(&mut c, 0x7f, 0).is_empty(), "unknown select");
    }
}
