//! The EDID 1.4 block GET_EDID answers with (VESA E-EDID Release A, Revision 2): a
//! digital display named "Vireo" whose first detailed timing descriptor is the
//! scanout's preferred mode, so the guest's mode list puts the host window's size
//! first. One 128-byte base block: every mode this device reports fits a detailed
//! timing descriptor (12-bit sizes, hence [`crate::MAX_DISPLAY_WIDTH`]), so no
//! extension block is needed.

/// Bytes of an EDID block.
pub const EDID_BLOCK_LEN: usize = 128;
/// The monitor name descriptor's text.
pub const MONITOR_NAME: &str = "Vireo";
/// The three-letter manufacturer (PNP) id.
pub const MANUFACTURER_ID: [u8; 3] = *b"VRO";
/// The largest width or height a detailed timing descriptor holds (12 bits).
pub const MAX_DTD_ACTIVE: u32 = 4095;

const HEADER: [u8; 8] = [0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00];
/// Offsets in the base block.
const MANUFACTURER_AT: usize = 8;
const PRODUCT_AT: usize = 10;
const SERIAL_AT: usize = 12;
const WEEK_AT: usize = 16;
const VERSION_AT: usize = 18;
const VIDEO_INPUT_AT: usize = 20;
const SCREEN_SIZE_AT: usize = 21;
const GAMMA_AT: usize = 23;
const FEATURES_AT: usize = 24;
const CHROMA_AT: usize = 25;
const ESTABLISHED_AT: usize = 35;
const STANDARD_AT: usize = 38;
const DESCRIPTOR_AT: [usize; 4] = [54, 72, 90, 108];
const DESCRIPTOR_LEN: usize = 18;
const EXTENSIONS_AT: usize = 126;
const CHECKSUM_AT: usize = 127;

/// Digital input, 8 bits per primary, DisplayPort.
const VIDEO_INPUT_DIGITAL_8BPC_DP: u8 = 0xa5;
/// Gamma 2.2, stored as (gamma * 100) - 100.
const GAMMA_2_2: u8 = 120;
/// sRGB is the default colour space; the preferred timing is the native mode.
const FEATURE_SRGB: u8 = 1 << 2;
const FEATURE_PREFERRED_IS_NATIVE: u8 = 1 << 1;
/// 640x480@60 (byte 35 bit 5), 800x600@60 (byte 35 bit 0), 1024x768@60 (byte 36 bit 3):
/// fallback modes every driver knows.
const ESTABLISHED_TIMINGS: [u8; 3] = [0x21, 0x08, 0x00];
/// Display descriptor tags.
const TAG_RANGE_LIMITS: u8 = 0xfd;
const TAG_MONITOR_NAME: u8 = 0xfc;
const TAG_DUMMY: u8 = 0x10;
/// Detailed timing flags: digital separate sync, hsync positive, vsync negative (the
/// CVT reduced-blanking polarities).
const DTD_DIGITAL_SEPARATE_HSYNC_POS: u8 = 0x1a;

/// Reduced blanking, as QEMU's EDID generator uses (CVT-RB-like).
const H_FRONT: u32 = 48;
const H_SYNC: u32 = 32;
const H_BLANK: u32 = 160;
const V_FRONT: u32 = 3;
const V_SYNC: u32 = 5;
const V_BLANK: u32 = 30;
/// The refresh rate offered, lowered for modes whose pixel clock would not fit the
/// descriptor's 16 bits of 10 kHz.
const REFRESH_HZ: u64 = 60;
const MAX_PIXEL_CLOCK_HZ: u64 = 65_535 * 10_000;
/// Pixels per inch assumed for the physical size.
const DPI: u32 = 96;

/// The timing of the preferred mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub width: u32,
    pub height: u32,
    /// Pixel clock in units of 10 kHz.
    pub clock_10khz: u16,
    pub refresh_hz: u32,
}

impl Timing {
    /// The timing for a `width`x`height` mode (each clamped to 1..=[`MAX_DTD_ACTIVE`]).
    pub fn new(width: u32, height: u32) -> Self {
        let width = width.clamp(1, MAX_DTD_ACTIVE);
        let height = height.clamp(1, MAX_DTD_ACTIVE);
        let total = u64::from(width + H_BLANK) * u64::from(height + V_BLANK);
        let refresh = REFRESH_HZ.min(MAX_PIXEL_CLOCK_HZ / total).max(1);
        let clock = (total * refresh / 10_000).min(65_535) as u16;
        Timing {
            width,
            height,
            clock_10khz: clock,
            refresh_hz: refresh as u32,
        }
    }

    fn h_freq_khz(&self) -> u64 {
        u64::from(self.clock_10khz) * 10 / u64::from(self.width + H_BLANK)
    }
}

fn size_mm(pixels: u32) -> u32 {
    pixels * 254 / (DPI * 10)
}

/// The detailed timing descriptor of `t` (bytes 0-17 of a descriptor).
fn detailed_timing(t: &Timing) -> [u8; DESCRIPTOR_LEN] {
    let (w_mm, h_mm) = (size_mm(t.width).min(4095), size_mm(t.height).min(4095));
    let hi = |v: u32| ((v >> 8) & 0xf) as u8;
    let mut d = [0u8; DESCRIPTOR_LEN];
    d[0..2].copy_from_slice(&t.clock_10khz.to_le_bytes());
    d[2] = t.width as u8;
    d[3] = H_BLANK as u8;
    d[4] = hi(t.width) << 4 | hi(H_BLANK);
    d[5] = t.height as u8;
    d[6] = V_BLANK as u8;
    d[7] = hi(t.height) << 4 | hi(V_BLANK);
    d[8] = H_FRONT as u8;
    d[9] = H_SYNC as u8;
    d[10] = ((V_FRONT & 0xf) << 4 | (V_SYNC & 0xf)) as u8;
    d[11] = (((H_FRONT >> 8) & 3) << 6
        | ((H_SYNC >> 8) & 3) << 4
        | ((V_FRONT >> 4) & 3) << 2
        | ((V_SYNC >> 4) & 3)) as u8;
    d[12] = w_mm as u8;
    d[13] = h_mm as u8;
    d[14] = hi(w_mm) << 4 | hi(h_mm);
    d[17] = DTD_DIGITAL_SEPARATE_HSYNC_POS;
    d
}

/// A display descriptor: 5 bytes of tag, 13 of payload.
fn display_descriptor(tag: u8, payload: [u8; 13]) -> [u8; DESCRIPTOR_LEN] {
    let mut d = [0u8; DESCRIPTOR_LEN];
    d[3] = tag;
    d[5..].copy_from_slice(&payload);
    d
}

/// Range limits that include the preferred mode and the established timings.
fn range_limits(t: &Timing) -> [u8; DESCRIPTOR_LEN] {
    let h_khz = t.h_freq_khz();
    let clock_10mhz = u64::from(t.clock_10khz).div_ceil(1000).max(3);
    let mut p = [0x20u8; 13];
    p[0] = (t.refresh_hz.min(50)) as u8; // min vertical Hz
    p[1] = 75; // max vertical Hz
    p[2] = h_khz.min(30) as u8; // min horizontal kHz
    p[3] = (h_khz + 1).clamp(160, 255) as u8; // max horizontal kHz
    p[4] = clock_10mhz.min(255) as u8; // max pixel clock, 10 MHz units
    p[5] = 0x01; // range limits only: no timing formula
    p[6] = 0x0a;
    display_descriptor(TAG_RANGE_LIMITS, p)
}

fn monitor_name() -> [u8; DESCRIPTOR_LEN] {
    let mut p = [0x20u8; 13];
    p[..MONITOR_NAME.len()].copy_from_slice(MONITOR_NAME.as_bytes());
    p[MONITOR_NAME.len()] = b'\n';
    display_descriptor(TAG_MONITOR_NAME, p)
}

/// The manufacturer id: three letters of 5 bits each ('A' = 1), big-endian.
fn manufacturer() -> [u8; 2] {
    let code = MANUFACTURER_ID
        .iter()
        .fold(0u16, |acc, c| acc << 5 | u16::from(c - b'A' + 1));
    code.to_be_bytes()
}

/// sRGB primaries and D65 white point, as 10-bit binary fractions.
fn chromaticity() -> [u8; 10] {
    let [rx, ry, gx, gy, bx, by, wx, wy]: [u16; 8] = [655, 338, 307, 614, 154, 61, 320, 337];
    let lo = |v: u16| (v & 3) as u8;
    let hi = |v: u16| (v >> 2) as u8;
    [
        lo(rx) << 6 | lo(ry) << 4 | lo(gx) << 2 | lo(gy),
        lo(bx) << 6 | lo(by) << 4 | lo(wx) << 2 | lo(wy),
        hi(rx),
        hi(ry),
        hi(gx),
        hi(gy),
        hi(bx),
        hi(by),
        hi(wx),
        hi(wy),
    ]
}

/// The EDID of scanout number `serial` whose preferred mode is `width`x`height`.
pub fn generate(width: u32, height: u32, serial: u32) -> [u8; EDID_BLOCK_LEN] {
    let t = Timing::new(width, height);
    let mut e = [0u8; EDID_BLOCK_LEN];
    e[..8].copy_from_slice(&HEADER);
    e[MANUFACTURER_AT..MANUFACTURER_AT + 2].copy_from_slice(&manufacturer());
    e[PRODUCT_AT..PRODUCT_AT + 2].copy_from_slice(&1u16.to_le_bytes());
    e[SERIAL_AT..SERIAL_AT + 4].copy_from_slice(&serial.to_le_bytes());
    e[WEEK_AT] = 1;
    e[WEEK_AT + 1] = (2026 - 1990) as u8;
    e[VERSION_AT] = 1;
    e[VERSION_AT + 1] = 4;
    e[VIDEO_INPUT_AT] = VIDEO_INPUT_DIGITAL_8BPC_DP;
    e[SCREEN_SIZE_AT] = (size_mm(t.width) / 10).clamp(1, 255) as u8;
    e[SCREEN_SIZE_AT + 1] = (size_mm(t.height) / 10).clamp(1, 255) as u8;
    e[GAMMA_AT] = GAMMA_2_2;
    e[FEATURES_AT] = FEATURE_SRGB | FEATURE_PREFERRED_IS_NATIVE;
    e[CHROMA_AT..CHROMA_AT + 10].copy_from_slice(&chromaticity());
    e[ESTABLISHED_AT..ESTABLISHED_AT + 3].copy_from_slice(&ESTABLISHED_TIMINGS);
    // Standard timings unused: 0x01 0x01 each.
    e[STANDARD_AT..STANDARD_AT + 16].fill(0x01);
    let descriptors = [
        detailed_timing(&t),
        range_limits(&t),
        monitor_name(),
        display_descriptor(TAG_DUMMY, [0; 13]),
    ];
    for (at, d) in DESCRIPTOR_AT.iter().zip(descriptors) {
        e[*at..*at + DESCRIPTOR_LEN].copy_from_slice(&d);
    }
    e[EXTENSIONS_AT] = 0;
    e[CHECKSUM_AT] = checksum(&e[..CHECKSUM_AT]);
    e
}

/// The byte that makes the block's sum 0 mod 256.
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |acc, b| acc.wrapping_add(*b))
        .wrapping_neg()
}

/// Whether `block` is a base block with the right header and checksum.
pub fn is_valid(block: &[u8]) -> bool {
    block.len() >= EDID_BLOCK_LEN
        && block[..8] == HEADER
        && block[..EDID_BLOCK_LEN]
            .iter()
            .fold(0u8, |acc, b| acc.wrapping_add(*b))
            == 0
}

/// The preferred mode (first detailed timing) of a valid EDID: width, height, refresh.
pub fn preferred_mode(block: &[u8]) -> Option<(u32, u32, u32)> {
    if !is_valid(block) {
        return None;
    }
    let d = &block[DESCRIPTOR_AT[0]..DESCRIPTOR_AT[0] + DESCRIPTOR_LEN];
    let clock_hz = u64::from(u16::from_le_bytes([d[0], d[1]])) * 10_000;
    if clock_hz == 0 {
        return None;
    }
    let width = u32::from(d[2]) | u32::from(d[4] >> 4) << 8;
    let h_blank = u32::from(d[3]) | u32::from(d[4] & 0xf) << 8;
    let height = u32::from(d[5]) | u32::from(d[7] >> 4) << 8;
    let v_blank = u32::from(d[6]) | u32::from(d[7] & 0xf) << 8;
    let total = u64::from(width + h_blank) * u64::from(height + v_blank);
    let refresh = (clock_hz as f64 / total as f64).round() as u32;
    Some((width, height, refresh))
}

/// The text of the monitor name descriptor, if any.
pub fn monitor_name_of(block: &[u8]) -> Option<String> {
    DESCRIPTOR_AT.iter().find_map(|&at| {
        let d = block.get(at..at + DESCRIPTOR_LEN)?;
        (d[..3] == [0, 0, 0] && d[3] == TAG_MONITOR_NAME).then(|| {
            let text = &d[5..];
            let end = text.iter().position(|&c| c == b'\n').unwrap_or(text.len());
            String::from_utf8_lossy(&text[..end]).into_owned()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_block_is_valid_and_names_the_preferred_mode() {
        let e = generate(1920, 1080, 0);
        assert!(is_valid(&e));
        assert_eq!(preferred_mode(&e), Some((1920, 1080, 60)));
        assert_eq!(monitor_name_of(&e).as_deref(), Some("Vireo"));
        assert_eq!((e[18], e[19]), (1, 4), "EDID 1.4");
        assert_eq!(e[126], 0, "no extension blocks");
        // "VRO": V=22, R=18, O=15 → 0b0_10110_10010_01111.
        assert_eq!(u16::from_be_bytes([e[8], e[9]]), 22 << 10 | 18 << 5 | 15);
        // The range limits descriptor is there and includes 60 Hz.
        let r = &e[72..90];
        assert_eq!(r[3], TAG_RANGE_LIMITS);
        assert!(r[5] <= 60 && r[6] >= 60);
        // Pixel clock (in 10 MHz units) covers the mode's.
        assert!(u32::from(r[9]) * 1000 >= u32::from(u16::from_le_bytes([e[54], e[55]])));
    }

    #[test]
    fn odd_and_large_modes_round_trip() {
        for (w, h) in [(1, 1), (1024, 768), (1366, 768), (3840, 2160), (4095, 4095)] {
            let e = generate(w, h, 3);
            let (pw, ph, hz) = preferred_mode(&e).unwrap();
            assert_eq!((pw, ph), (w, h));
            assert!((1..=60).contains(&hz), "{w}x{h}@{hz}");
            assert!(is_valid(&e));
        }
        // Too large for a descriptor: clamped, still valid.
        let e = generate(10_000, 5000, 0);
        assert_eq!(preferred_mode(&e).map(|m| (m.0, m.1)), Some((4095, 4095)));
    }

    #[test]
    fn a_corrupted_block_is_refused() {
        let mut e = generate(800, 600, 0);
        e[60] ^= 1;
        assert!(!is_valid(&e));
        assert_eq!(preferred_mode(&e), None);
    }
}
