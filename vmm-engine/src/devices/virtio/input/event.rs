//! Input events as virtio-input carries them: Linux evdev's (type, code, value) triples
//! (virtio 1.2, 5.8.6 "Device Operation": `struct virtio_input_event`), the evdev
//! constants the two devices use, and what each device says it can send.

/// Event types (linux/input-event-codes.h).
pub const EV_SYN: u16 = 0x00;
pub const EV_KEY: u16 = 0x01;
pub const EV_REL: u16 = 0x02;
pub const EV_ABS: u16 = 0x03;
pub const EV_LED: u16 = 0x11;
pub const EV_REP: u16 = 0x14;

/// `EV_SYN` code that ends a group of events (one key press, one pointer move).
pub const SYN_REPORT: u16 = 0;

/// The keyboard's key codes: KEY_ESC (1) through KEY_MICMUTE (248), everything below
/// BTN_MISC, so that the guest's input core classifies the device as a full keyboard.
pub const KEY_FIRST: u16 = 1;
pub const KEY_LAST: u16 = 248;

/// Pointer buttons.
pub const BTN_LEFT: u16 = 0x110;
pub const BTN_RIGHT: u16 = 0x111;
pub const BTN_MIDDLE: u16 = 0x112;
pub const BTN_SIDE: u16 = 0x113;
pub const BTN_EXTRA: u16 = 0x114;
pub const TABLET_BUTTONS: &[u16] = &[BTN_LEFT, BTN_RIGHT, BTN_MIDDLE, BTN_SIDE, BTN_EXTRA];

/// Relative axes: the wheels.
pub const REL_HWHEEL: u16 = 0x06;
pub const REL_WHEEL: u16 = 0x08;

/// Absolute axes of the tablet.
pub const ABS_X: u16 = 0x00;
pub const ABS_Y: u16 = 0x01;
/// The tablet's coordinates run 0..=ABS_MAX on both axes, whatever the screen size (as
/// QEMU's and VirtualBox's tablets): the host scales window positions into this range.
pub const ABS_MAX: u32 = 0x7fff;

/// Keyboard LEDs (sent by the guest on the status queue).
pub const LED_NUML: u16 = 0x00;
pub const LED_CAPSL: u16 = 0x01;
pub const LED_SCROLLL: u16 = 0x02;

/// `BUS_VIRTUAL` (linux/input.h): the bus type in the device IDs.
pub const BUS_VIRTUAL: u16 = 0x06;
/// Red Hat's (virtio's) PCI vendor ID, as QEMU's virtio-input devices report.
const VENDOR_VIRTIO: u16 = 0x1af4;

/// `struct virtio_input_event`: le16 type, le16 code, le32 value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InputEvent {
    pub kind: u16,
    pub code: u16,
    pub value: u32,
}

impl InputEvent {
    pub const SIZE: usize = 8;

    pub const fn new(kind: u16, code: u16, value: u32) -> Self {
        Self { kind, code, value }
    }

    /// The `SYN_REPORT` that ends a group.
    pub const fn syn() -> Self {
        Self::new(EV_SYN, SYN_REPORT, 0)
    }

    pub fn to_le_bytes(self) -> [u8; Self::SIZE] {
        let mut bytes = [0u8; Self::SIZE];
        bytes[0..2].copy_from_slice(&self.kind.to_le_bytes());
        bytes[2..4].copy_from_slice(&self.code.to_le_bytes());
        bytes[4..8].copy_from_slice(&self.value.to_le_bytes());
        bytes
    }

    pub fn from_le_bytes(bytes: [u8; Self::SIZE]) -> Self {
        Self {
            kind: u16::from_le_bytes([bytes[0], bytes[1]]),
            code: u16::from_le_bytes([bytes[2], bytes[3]]),
            value: u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
        }
    }
}

/// `struct virtio_input_absinfo`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AbsInfo {
    pub min: u32,
    pub max: u32,
    pub fuzz: u32,
    pub flat: u32,
    pub res: u32,
}

/// `struct virtio_input_devids`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DevIds {
    pub bustype: u16,
    pub vendor: u16,
    pub product: u16,
    pub version: u16,
}

/// Which of the two devices a VM with a display gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputKind {
    Keyboard,
    Tablet,
}

/// What a device tells the driver about itself through its configuration space.
#[derive(Clone, Debug)]
pub struct InputProfile {
    pub name: &'static str,
    pub serial: &'static str,
    pub ids: DevIds,
    /// Per event type, the codes the device may send.
    pub codes: Vec<(u16, Vec<u16>)>,
    /// Per absolute axis, its range.
    pub abs: Vec<(u16, AbsInfo)>,
}

impl InputProfile {
    pub fn for_kind(kind: InputKind) -> Self {
        match kind {
            InputKind::Keyboard => Self {
                name: "Vireo Virtio Keyboard",
                serial: "vireo-keyboard",
                ids: DevIds {
                    bustype: BUS_VIRTUAL,
                    vendor: VENDOR_VIRTIO,
                    product: 0x0001,
                    version: 1,
                },
                codes: vec![
                    (EV_KEY, (KEY_FIRST..=KEY_LAST).collect()),
                    (EV_LED, vec![LED_NUML, LED_CAPSL, LED_SCROLLL]),
                    // The guest repeats held keys itself; the bitmap's content is unused.
                    (EV_REP, vec![0]),
                ],
                abs: Vec::new(),
            },
            InputKind::Tablet => {
                let axis = AbsInfo {
                    min: 0,
                    max: ABS_MAX,
                    ..AbsInfo::default()
                };
                Self {
                    name: "Vireo Virtio Tablet",
                    serial: "vireo-tablet",
                    ids: DevIds {
                        bustype: BUS_VIRTUAL,
                        vendor: VENDOR_VIRTIO,
                        product: 0x0003,
                        version: 1,
                    },
                    codes: vec![
                        (EV_KEY, TABLET_BUTTONS.to_vec()),
                        (EV_REL, vec![REL_HWHEEL, REL_WHEEL]),
                        (EV_ABS, vec![ABS_X, ABS_Y]),
                    ],
                    abs: vec![(ABS_X, axis), (ABS_Y, axis)],
                }
            }
        }
    }

    /// Whether the device may send (`kind`, `code`): the host side refuses anything
    /// else, so the guest never sees an event its driver was not told about.
    pub fn supports(&self, kind: u16, code: u16) -> bool {
        kind == EV_SYN
            || self
                .codes
                .iter()
                .any(|(k, codes)| *k == kind && kind != EV_LED && codes.contains(&code))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_little_endian() {
        let e = InputEvent::new(EV_ABS, ABS_Y, 0x1234_5678);
        let bytes = e.to_le_bytes();
        assert_eq!(bytes, [3, 0, 1, 0, 0x78, 0x56, 0x34, 0x12]);
        assert_eq!(InputEvent::from_le_bytes(bytes), e);
    }

    #[test]
    fn profiles_say_what_each_device_sends() {
        let kbd = InputProfile::for_kind(InputKind::Keyboard);
        assert!(kbd.supports(EV_KEY, 30)); // KEY_A
        assert!(!kbd.supports(EV_KEY, BTN_LEFT));
        assert!(
            !kbd.supports(EV_LED, LED_CAPSL),
            "LEDs go guest to host only"
        );
        let tablet = InputProfile::for_kind(InputKind::Tablet);
        assert!(tablet.supports(EV_ABS, ABS_X));
        assert!(tablet.supports(EV_REL, REL_WHEEL));
        assert!(tablet.supports(EV_KEY, BTN_RIGHT));
        assert!(!tablet.supports(EV_KEY, 30));
    }
}
