//! `probe.run=input`: the VMM's virtio-input devices through `virtio-drivers`' driver.
//! Reports what each device says about itself (name, IDs, event bitmaps, axis ranges)
//! the way Linux's driver reads it, then prints every event the host sends until Escape
//! is pressed on a keyboard (or a minute passes), so the host can check that what it
//! injected arrives, in order, as the right evdev codes.

use alloc::vec::Vec;

use virtio_drivers::device::input::VirtIOInput;
use virtio_drivers::transport::DeviceType;

use crate::blk::BlkOptions;
use crate::pci::Pci;
use crate::probe;
use crate::virtio::{self, ProbeHal, ProbeTransport};

type Input = VirtIOInput<ProbeHal, ProbeTransport>;

const EV_SYN: u16 = 0x00;
const EV_KEY: u8 = 0x01;
const EV_REL: u8 = 0x02;
const EV_ABS: u8 = 0x03;
const KEY_ESC: u16 = 1;
const ABS_X: u8 = 0;
/// How long the probe waits for the host's events.
const LISTEN_MS: u64 = 60_000;
/// How long the probe goes on reading after Escape.
const ESCAPE_GRACE_MS: u64 = 500;

/// Bits set in a bitmap.
fn count_bits(bitmap: &[u8]) -> u32 {
    bitmap.iter().map(|b| b.count_ones()).sum()
}

pub(crate) fn has_bit(bitmap: &[u8], bit: u16) -> bool {
    bitmap
        .get(usize::from(bit / 8))
        .is_some_and(|b| b & (1 << (bit % 8)) != 0)
}

/// Opens every virtio-input function and reports it; returns the devices and whether
/// each is a keyboard.
fn open_all(pci: &mut Pci) -> Vec<(Input, bool)> {
    let mut devices = Vec::new();
    for index in 0.. {
        let Some(function) = virtio::find(pci, DeviceType::Input, index) else {
            break;
        };
        let transport = match ProbeTransport::new(pci, &function, None) {
            Ok(t) => t,
            Err(error) => {
                probe!("error input={error} index={index}");
                continue;
            }
        };
        let Ok(mut input) = Input::new(transport) else {
            probe!("error input=virtio_input_init index={index}");
            continue;
        };
        let name = input.name().unwrap_or_default();
        let serial = input.serial_number().unwrap_or_default();
        let ids = input.ids().unwrap_or_default();
        let keys = input.ev_bits(EV_KEY).unwrap_or_default();
        let rel = input.ev_bits(EV_REL).unwrap_or_default();
        let abs = input.ev_bits(EV_ABS).unwrap_or_default();
        let abs_x_max = if has_bit(&abs, u16::from(ABS_X)) {
            input.abs_info(ABS_X).map(|info| info.max).unwrap_or(0)
        } else {
            0
        };
        // Linux's rule of thumb: keys below BTN_MISC make a keyboard.
        let keyboard = has_bit(&keys, 30) && has_bit(&keys, KEY_ESC);
        probe!(
            "input_dev index={index} bdf={} name=\"{name}\" serial=\"{serial}\" bustype={:#x} \
             vendor={:#x} product={:#x} version={} keys={} rel={} abs={} abs_x_max={} kind={}",
            function.df,
            ids.bustype,
            ids.vendor,
            ids.product,
            ids.version,
            count_bits(&keys),
            count_bits(&rel),
            count_bits(&abs),
            abs_x_max,
            if keyboard { "keyboard" } else { "pointer" },
        );
        devices.push((input, keyboard));
    }
    devices
}

/// `probe.run=input`.
pub fn run(pci: &mut Pci, _options: &BlkOptions, tsc_khz: u64) {
    let mut devices = open_all(pci);
    probe!("input_ready devices={}", devices.len());
    if devices.is_empty() {
        return;
    }
    let ms = tsc_khz.max(1);
    let mut deadline = crate::arch::rdtsc() + LISTEN_MS * ms;
    let (mut events, mut groups, mut escape) = (0u64, 0u64, false);
    loop {
        let mut idle = true;
        for (index, (device, keyboard)) in devices.iter_mut().enumerate() {
            while let Some(event) = device.pop_pending_event() {
                idle = false;
                if event.event_type == EV_SYN {
                    groups += 1;
                    continue;
                }
                events += 1;
                probe!(
                    "input_event dev={index} type={} code={} value={}",
                    event.event_type,
                    event.code,
                    event.value as i32
                );
                let is_escape = event.event_type == u16::from(EV_KEY) && event.code == KEY_ESC;
                if *keyboard && is_escape && event.value == 1 && !escape {
                    // Each device has its own queue: what the host sent to the others
                    // before Escape may still be on its way. Keep reading a moment.
                    escape = true;
                    deadline = crate::arch::rdtsc() + ESCAPE_GRACE_MS * ms;
                }
            }
        }
        if idle && crate::arch::rdtsc() > deadline {
            if escape {
                probe!("input_done events={events} groups={groups} ok=1");
            } else {
                probe!("input_done events={events} groups={groups} ok=0 error=timeout");
            }
            return;
        }
        core::hint::spin_loop();
    }
}
