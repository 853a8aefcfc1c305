//! `probe.run=selftest-screen`: a self-test screen a person can read, drawn through
//! `virtio-drivers`' gpu driver and kept live from its input drivers.
//!
//! The screen shows the probe's name, the discovery basics (CPUs, memory), every PCI
//! function with its state (the gpu, keyboard and tablet are opened and say ok or FAIL;
//! other virtio functions are listed as found), a solid status swatch (green when the
//! gpu, a keyboard and a tablet all work, else red), an uptime clock, the last keys
//! typed and the pointer's position. Then it polls the input devices: the hardware
//! cursor follows the tablet, and only the lines that changed are redrawn (the clock
//! once a second, the keys line after a key, the pointer line after a move).
//!
//! `virtio-drivers`' `VirtIOGpu` owns the control queue and offers only a whole-frame
//! `flush` (TRANSFER_TO_HOST_2D + RESOURCE_FLUSH of the full screen), so a redraw
//! rewrites only the changed line's pixels but flushes the whole frame, and only when
//! something changed. Every serial line that reports a change is printed after the
//! flush that shows it, so a host that reads the line may take a screenshot at once.
//! Escape on the keyboard ends the loop (`screen_done`) and the probe powers off.
//!
//! With a virtio-vsock device the screen also runs the guest side of the agent protocol
//! ([`crate::agent`]): an agent line says whether a host is connected, a clipboard line
//! shows the clipboard the host sent, and Enter copies the letters typed since the last
//! Enter to the host's clipboard. A host's shutdown or reboot request ends the loop too.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::{self, Write};

use vireo_guest_agent::protocol::{ClipboardFormat, PowerAction};
use virtio_drivers::device::gpu::VirtIOGpu;
use virtio_drivers::device::input::VirtIOInput;
use virtio_drivers::transport::pci::bus::DeviceFunction;
use virtio_drivers::transport::pci::virtio_device_type;
use virtio_drivers::transport::DeviceType;

use crate::agent::{self, Agent};
use crate::arch;
use crate::boot;
use crate::input::has_bit;
use crate::pci::Pci;
use crate::probe;
use crate::virtio::{self, ProbeHal, ProbeTransport};

type Gpu = VirtIOGpu<ProbeHal, ProbeTransport>;
type Input = VirtIOInput<ProbeHal, ProbeTransport>;

/// What discovery found, for the screen's first line.
pub struct Discovery {
    /// Enabled CPUs in the MADT (0 if ACPI was not found).
    pub cpus: u32,
    /// Bytes of RAM in the memory map.
    pub mem_bytes: u64,
}

// Colours as 0xRRGGBB.
const BACKGROUND: u32 = 0x10_20_40;
const TEXT: u32 = 0xd0_d8_e0;
/// The title's colour: the host looks for it in the title's region.
const TITLE: u32 = 0xff_ff_ff;
const GOOD: u32 = 0x40_e0_40;
const BAD: u32 = 0xff_50_50;
const FOUND: u32 = 0xe0_c0_40;
const SWATCH_OK: u32 = 0x00_c0_00;
const SWATCH_FAIL: u32 = 0xc0_00_00;

/// font8x8 glyphs are 8x8; drawn at twice that so they are legible on a 1024x768 screen.
const SCALE: u32 = 2;
const CELL: u32 = 8 * SCALE;
/// A text line's pitch: the glyph cell plus 4 pixels of spacing.
const LINE: u32 = CELL + 4;
const MARGIN: u32 = 24;
const SWATCH_W: u32 = 96;
const SWATCH_H: u32 = 32;
const LABEL_COLUMNS: u32 = 11;

const TITLE_TEXT: &str = "Vireo probe guest \u{2014} self-test";

const EV_SYN: u16 = 0x00;
const EV_KEY: u16 = 0x01;
const EV_ABS: u16 = 0x03;
const KEY_ESC: u16 = 1;
const KEY_ENTER: u16 = 28;
const KEY_SPACE: u16 = 57;
const ABS_X: u16 = 0;
const ABS_Y: u16 = 1;
/// How many keys the keys line remembers (it shows as many as fit).
const KEY_HISTORY: usize = 64;
/// Bytes of clipboard text the clipboard line shows.
const MAX_CLIPBOARD_SHOWN: usize = 32;

/// The cursor image is 64x64 (virtio-gpu's cursor size); the arrow's tip is its hot spot.
const CURSOR_SIZE: u32 = 64;
const CURSOR_HOT: (u32, u32) = (0, 0);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rect {
    x: u32,
    y: u32,
    w: u32,
    h: u32,
}

impl fmt::Display for Rect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "x={} y={} width={} height={}",
            self.x, self.y, self.w, self.h
        )
    }
}

/// `rgb` as the framebuffer's B, G, R, A bytes.
fn bgra(rgb: u32) -> [u8; 4] {
    [rgb as u8, (rgb >> 8) as u8, (rgb >> 16) as u8, 0xff]
}

/// The 8x8 glyph of `c`: one byte per row, bit 0 the leftmost pixel. ASCII from
/// font8x8's table, the em dash of the title drawn here (the table is ASCII only),
/// anything else as `?`.
fn glyph(c: char) -> [u8; 8] {
    match c {
        '\u{2014}' => [0, 0, 0, 0xff, 0, 0, 0, 0],
        c if c.is_ascii() => font8x8::legacy::BASIC_LEGACY[c as usize],
        _ => font8x8::legacy::BASIC_LEGACY[usize::from(b'?')],
    }
}

/// The framebuffer as pixels, clipped to the screen.
struct Canvas<'a> {
    px: &'a mut [u8],
    width: u32,
    height: u32,
}

impl Canvas<'_> {
    fn fill(&mut self, rect: Rect, rgb: u32) {
        let colour = bgra(rgb);
        let x_end = (rect.x + rect.w).min(self.width);
        let y_end = (rect.y + rect.h).min(self.height);
        if rect.x >= x_end {
            return;
        }
        for y in rect.y..y_end {
            let start = ((y * self.width + rect.x) * 4) as usize;
            let end = ((y * self.width + x_end) * 4) as usize;
            for pixel in self.px[start..end].chunks_exact_mut(4) {
                pixel.copy_from_slice(&colour);
            }
        }
    }

    /// Draws `text` with its cells' background; returns the x after it.
    fn text(&mut self, x: u32, y: u32, text: &str, fg: u32, bg: u32) -> u32 {
        let (fg, bg) = (bgra(fg), bgra(bg));
        let mut at = x;
        for c in text.chars() {
            let rows = glyph(c);
            for (gy, bits) in rows.iter().enumerate() {
                for gx in 0..8u32 {
                    let colour = if bits & (1 << gx) != 0 { fg } else { bg };
                    for sy in 0..SCALE {
                        for sx in 0..SCALE {
                            self.put(at + gx * SCALE + sx, y + gy as u32 * SCALE + sy, colour);
                        }
                    }
                }
            }
            at += CELL;
        }
        at
    }

    fn put(&mut self, x: u32, y: u32, colour: [u8; 4]) {
        if x < self.width && y < self.height {
            let at = ((y * self.width + x) * 4) as usize;
            self.px[at..at + 4].copy_from_slice(&colour);
        }
    }
}

/// The framebuffer `VirtIOGpu::setup_framebuffer` allocated, kept as a raw pointer
/// because the driver's `flush` needs `&mut` the driver while the probe draws.
struct Screen {
    gpu: Gpu,
    fb: *mut u8,
    len: usize,
    width: u32,
    height: u32,
    flushes: u64,
}

impl Screen {
    fn canvas(&mut self) -> Canvas<'_> {
        // SAFETY: `fb`/`len` are the framebuffer `setup_framebuffer` returned; its DMA
        // allocation lives inside `self.gpu` until the driver is dropped or the
        // resolution changes (this module does neither while `self` lives), the driver
        // keeps no reference into it (the device only reads it on a flush), and the
        // returned slice borrows `self` mutably, so there is one writer at a time.
        let px = unsafe { core::slice::from_raw_parts_mut(self.fb, self.len) };
        Canvas {
            px,
            width: self.width,
            height: self.height,
        }
    }

    fn flush(&mut self) -> bool {
        self.flushes += 1;
        match self.gpu.flush() {
            Ok(()) => true,
            Err(error) => {
                probe!("error screen=flush detail=\"{error:?}\"");
                false
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    Fail,
    Found,
}

impl Status {
    fn word(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Fail => "FAIL",
            Status::Found => "found",
        }
    }

    fn colour(self) -> u32 {
        match self {
            Status::Ok => GOOD,
            Status::Fail => BAD,
            Status::Found => FOUND,
        }
    }
}

/// A row of the device list.
struct DeviceRow {
    df: DeviceFunction,
    /// One word (the serial line's `kind`).
    kind: String,
    status: Status,
}

/// The tablet's axis ranges.
#[derive(Clone, Copy)]
struct Axes {
    x: (u32, u32),
    y: (u32, u32),
}

enum Kind {
    Keyboard,
    Tablet(Axes),
    /// Neither: listed, but its events are read and dropped.
    Other,
}

struct InputDevice {
    df: DeviceFunction,
    device: Input,
    kind: Kind,
}

/// Opens every virtio-input function and tells keyboards (Escape and `A` keys, as
/// Linux's rule of thumb) from tablets (an ABS_X axis). Failures become FAIL rows.
fn open_inputs(pci: &mut Pci, failed: &mut Vec<DeviceFunction>) -> Vec<InputDevice> {
    let mut devices = Vec::new();
    for index in 0.. {
        let Some(function) = virtio::find(pci, DeviceType::Input, index) else {
            break;
        };
        let opened = ProbeTransport::new(pci, &function, None)
            .ok()
            .and_then(|t| Input::new(t).ok());
        let Some(mut device) = opened else {
            probe!("error screen=input_init bdf={}", function.df);
            failed.push(function.df);
            continue;
        };
        let keys = device.ev_bits(EV_KEY as u8).unwrap_or_default();
        let abs = device.ev_bits(EV_ABS as u8).unwrap_or_default();
        let kind = if has_bit(&keys, 30) && has_bit(&keys, KEY_ESC) {
            Kind::Keyboard
        } else if has_bit(&abs, ABS_X) && has_bit(&abs, ABS_Y) {
            let x = device.abs_info(ABS_X as u8);
            let y = device.abs_info(ABS_Y as u8);
            match (x, y) {
                (Ok(x), Ok(y)) => Kind::Tablet(Axes {
                    x: (x.min, x.max),
                    y: (y.min, y.max),
                }),
                _ => {
                    probe!("error screen=abs_info bdf={}", function.df);
                    failed.push(function.df);
                    continue;
                }
            }
        } else {
            Kind::Other
        };
        devices.push(InputDevice {
            df: function.df,
            device,
            kind,
        });
    }
    devices
}

/// One word for a virtio device type.
fn virtio_kind(kind: DeviceType) -> &'static str {
    match kind {
        DeviceType::Network => "net",
        DeviceType::Block => "blk",
        DeviceType::Console => "console",
        DeviceType::EntropySource => "rng",
        DeviceType::MemoryBalloon | DeviceType::MemoryBallooning => "balloon",
        DeviceType::GPU => "gpu",
        DeviceType::Input => "input",
        DeviceType::Socket => "vsock",
        DeviceType::Sound => "sound",
        _ => "virtio",
    }
}

/// The rows of the device list, in bus order.
fn device_rows(pci: &Pci, inputs: &[InputDevice], failed: &[DeviceFunction]) -> Vec<DeviceRow> {
    let mut rows = Vec::new();
    for function in &pci.functions {
        let (kind, status) = match virtio_device_type(&function.info) {
            // The screen is on it: the gpu works if the probe got this far.
            Some(DeviceType::GPU) => (String::from("gpu"), Status::Ok),
            Some(DeviceType::Input) => match inputs.iter().find(|d| d.df == function.df) {
                Some(d) => {
                    let word = match d.kind {
                        Kind::Keyboard => "keyboard",
                        Kind::Tablet(_) => "tablet",
                        Kind::Other => "input",
                    };
                    (String::from(word), Status::Ok)
                }
                None if failed.contains(&function.df) => (String::from("input"), Status::Fail),
                None => (String::from("input"), Status::Found),
            },
            Some(other) => (String::from(virtio_kind(other)), Status::Found),
            // Class 6, subclass 0: the PCIe host bridge every bus 0 starts with.
            None if (function.info.class, function.info.subclass) == (6, 0) => {
                (String::from("host-bridge"), Status::Found)
            }
            None => {
                let mut word = String::new();
                let _ = write!(
                    word,
                    "pci-{:04x}:{:04x}",
                    function.info.vendor_id, function.info.device_id
                );
                (word, Status::Found)
            }
        };
        rows.push(DeviceRow {
            df: function.df,
            kind,
            status,
        });
    }
    rows
}

/// The character a key types on a US layout, for letters, digits and space.
fn key_char(code: u16) -> Option<char> {
    const ROWS: [(u16, &[u8]); 4] = [
        (2, b"1234567890"),
        (16, b"qwertyuiop"),
        (30, b"asdfghjkl"),
        (44, b"zxcvbnm"),
    ];
    if code == KEY_SPACE {
        return Some(' ');
    }
    ROWS.iter().find_map(|&(first, chars)| {
        let i = usize::from(code.checked_sub(first)?);
        chars.get(i).map(|&b| char::from(b))
    })
}

/// A key as the keys line shows it: the character, `SPC`, or `#code`.
fn key_token(code: u16) -> String {
    let mut token = String::new();
    match key_char(code) {
        Some(' ') => token.push_str("SPC"),
        Some(c) => token.push(c),
        None => {
            let _ = write!(token, "#{code}");
        }
    }
    token
}

/// Scales a tablet value in `min..=max` to a pixel in `0..size`, rounding to nearest.
fn scale(value: u32, (min, max): (u32, u32), size: u32) -> u32 {
    let range = u64::from(max.saturating_sub(min));
    if range == 0 || size == 0 {
        return 0;
    }
    let v = u64::from(value.clamp(min, max) - min);
    ((v * u64::from(size - 1) + range / 2) / range) as u32
}

/// The cursor: a white arrow with a black outline, its tip at (0, 0), as B, G, R, A
/// (transparent around it).
fn cursor_image() -> Vec<u8> {
    // The arrow: a triangle with corners (0,0), (13,13), (0,19), and a slanted tail.
    let inside = |x: i32, y: i32| {
        let head = (0..=19).contains(&y) && x >= 0 && x <= y && x <= (19 - y) * 2;
        let tail = (12..=24).contains(&y) && {
            let left = 4 + (y - 12) / 2;
            (left..left + 4).contains(&x)
        };
        head || tail
    };
    let mut image = Vec::with_capacity((CURSOR_SIZE * CURSOR_SIZE * 4) as usize);
    for y in 0..CURSOR_SIZE as i32 {
        for x in 0..CURSOR_SIZE as i32 {
            let pixel = if !inside(x, y) {
                [0, 0, 0, 0]
            } else if inside(x - 1, y) && inside(x + 1, y) && inside(x, y - 1) && inside(x, y + 1) {
                [0xff, 0xff, 0xff, 0xff]
            } else {
                [0, 0, 0, 0xff]
            };
            image.extend_from_slice(&pixel);
        }
    }
    image
}

/// Where the changing lines are.
struct Layout {
    title: Rect,
    swatch: Rect,
    clock: Rect,
    keys: Rect,
    pointer: Rect,
    agent: Rect,
    clipboard: Rect,
}

/// The text of the changing lines.
struct Lines {
    keys: Vec<u16>,
    pointer: Option<(u32, u32)>,
    agent: String,
    clipboard: String,
}

/// How many characters fit after the label of a changing line.
fn key_columns(line: Rect) -> u32 {
    (line.w / CELL).saturating_sub(LABEL_COLUMNS)
}

/// `text` after a `LABEL_COLUMNS`-wide label.
fn draw_line(canvas: &mut Canvas<'_>, rect: Rect, label: &str, value: &str) {
    canvas.fill(rect, BACKGROUND);
    canvas.text(rect.x, rect.y, label, TEXT, BACKGROUND);
    canvas.text(
        rect.x + LABEL_COLUMNS * CELL,
        rect.y,
        value,
        TEXT,
        BACKGROUND,
    );
}

fn clock_text(seconds: Option<u64>) -> String {
    let mut text = String::new();
    match seconds {
        Some(s) => {
            let _ = write!(text, "{:02}:{:02}", s / 60, s % 60);
        }
        None => text.push_str("unknown (no TSC frequency)"),
    }
    text
}

/// The last keys, as many as fit in `columns`, oldest dropped first.
fn keys_text(keys: &[u16], columns: u32) -> String {
    let mut text = String::new();
    for &code in keys.iter().rev() {
        let token = key_token(code);
        let needed = token.chars().count() + usize::from(!text.is_empty());
        if (text.chars().count() + needed) as u32 > columns {
            break;
        }
        if !text.is_empty() {
            text.insert(0, ' ');
        }
        text.insert_str(0, &token);
    }
    if text.is_empty() {
        text.push_str("(type something)");
    }
    text
}

fn pointer_text(pointer: Option<(u32, u32)>) -> String {
    let mut text = String::new();
    match pointer {
        Some((x, y)) => {
            let _ = write!(text, "{x}, {y}");
        }
        None => text.push_str("(move the pointer)"),
    }
    text
}

fn agent_text(agent: Option<&Agent>) -> String {
    match agent {
        None => "no vsock device".into(),
        Some(agent) if agent.connected() => "host connected".into(),
        Some(_) => "waiting for the host on vsock port 7000".into(),
    }
}

/// The clipboard line: where it came from and the text (control characters escaped), or
/// what an image is.
fn clipboard_text(origin: &str, format: ClipboardFormat, data: &[u8]) -> String {
    let mut text = String::new();
    let _ = write!(text, "{origin}: ");
    match format {
        ClipboardFormat::Text => {
            let shown = String::from_utf8_lossy(&data[..data.len().min(MAX_CLIPBOARD_SHOWN)]);
            for c in shown.chars() {
                if c.is_control() {
                    let _ = write!(text, "{}", c.escape_default());
                } else {
                    text.push(c);
                }
            }
            if data.len() > MAX_CLIPBOARD_SHOWN {
                let _ = write!(text, "... ({} bytes)", data.len());
            }
        }
        ClipboardFormat::Png => {
            let _ = write!(text, "PNG image, {} bytes", data.len());
        }
    }
    text
}

/// Draws the whole screen; returns where the changing lines are.
fn draw_all(
    canvas: &mut Canvas<'_>,
    discovery: &Discovery,
    rows: &[DeviceRow],
    swatch_rgb: u32,
    clock: &str,
    lines: &Lines,
) -> Layout {
    let (width, height) = (canvas.width, canvas.height);
    canvas.fill(
        Rect {
            x: 0,
            y: 0,
            w: width,
            h: height,
        },
        BACKGROUND,
    );
    let line_w = width.saturating_sub(2 * MARGIN);
    let line = |y: u32| Rect {
        x: MARGIN,
        y,
        w: line_w,
        h: CELL,
    };
    let mut y = MARGIN;
    let title_end = canvas.text(MARGIN, y, TITLE_TEXT, TITLE, BACKGROUND);
    let title = Rect {
        x: MARGIN,
        y,
        w: title_end - MARGIN,
        h: CELL,
    };
    let swatch = Rect {
        x: width.saturating_sub(MARGIN + SWATCH_W),
        y: MARGIN / 2,
        w: SWATCH_W,
        h: SWATCH_H,
    };
    canvas.fill(swatch, swatch_rgb);
    // Its label, left of it (the swatch itself stays one solid colour for the host).
    let label_x = swatch.x.saturating_sub(7 * CELL);
    if label_x > title_end {
        canvas.text(label_x, y, "status", TEXT, BACKGROUND);
    }
    // A rule under the title, up to the swatch.
    canvas.fill(
        Rect {
            x: MARGIN,
            y: y + CELL + 3,
            w: swatch.x.saturating_sub(MARGIN + CELL),
            h: 2,
        },
        TEXT,
    );
    y += 2 * LINE;

    let mut text = String::new();
    let _ = write!(
        text,
        "CPUs {}   memory {} MiB   screen {}x{}",
        discovery.cpus,
        discovery.mem_bytes >> 20,
        width,
        height
    );
    canvas.text(MARGIN, y, &text, TEXT, BACKGROUND);
    y += LINE;
    text.clear();
    let _ = write!(text, "PCI bus 0: {} functions", rows.len());
    canvas.text(MARGIN, y, &text, TEXT, BACKGROUND);
    y += LINE;
    // Rows that fit above the eight lines that follow them (blank, uptime, keys, pointer,
    // agent, clipboard, blank, help), so the changing lines stay on screen however many functions there
    // are; the rest are summed up in one row (the `screen_device` lines list them all).
    let room = (height.saturating_sub(y + 8 * LINE + MARGIN) / LINE) as usize;
    let shown = if rows.len() <= room {
        rows.len()
    } else {
        room.saturating_sub(1)
    };
    // Bus order; when not all fit, the opened devices (ok or FAIL) first.
    let mut order: Vec<&DeviceRow> = rows.iter().collect();
    if shown < rows.len() {
        order.sort_by_key(|row| row.status == Status::Found);
    }
    for row in &order[..shown] {
        text.clear();
        let _ = write!(text, "  {}  {:<16}", row.df, row.kind);
        let x = canvas.text(MARGIN, y, &text, TEXT, BACKGROUND);
        canvas.text(x, y, row.status.word(), row.status.colour(), BACKGROUND);
        y += LINE;
    }
    if shown < rows.len() {
        text.clear();
        let _ = write!(text, "  ... and {} more", rows.len() - shown);
        canvas.text(MARGIN, y, &text, TEXT, BACKGROUND);
        y += LINE;
    }
    y += LINE;
    let clock_rect = line(y);
    draw_line(canvas, clock_rect, "uptime", clock);
    y += LINE;
    let keys = line(y);
    draw_line(
        canvas,
        keys,
        "keys",
        &keys_text(&lines.keys, key_columns(keys)),
    );
    y += LINE;
    let pointer = line(y);
    draw_line(canvas, pointer, "pointer", &pointer_text(lines.pointer));
    y += LINE;
    let agent = line(y);
    draw_line(canvas, agent, "agent", &lines.agent);
    y += LINE;
    let clipboard = line(y);
    draw_line(canvas, clipboard, "clipboard", &lines.clipboard);
    y += 2 * LINE;
    canvas.text(
        MARGIN,
        y,
        "Type, move the pointer; Enter copies the line to the host, Escape powers off.",
        TEXT,
        BACKGROUND,
    );
    Layout {
        title,
        swatch,
        clock: clock_rect,
        keys,
        pointer,
        agent,
        clipboard,
    }
}

/// `probe.run=selftest-screen`.
pub fn run(pci: &mut Pci, discovery: &Discovery, tsc_khz: u64) {
    let Some(mut gpu) = crate::gpu::open(pci) else {
        probe!("screen_done keys=0 moves=0 redraws=0 ok=0 error=no_gpu");
        return;
    };
    let (width, height) = match gpu.resolution() {
        Ok(size) => size,
        Err(error) => {
            probe!("error screen=display_info detail=\"{error:?}\"");
            return;
        }
    };
    let (fb, len) = match gpu.setup_framebuffer() {
        Ok(fb) => (fb.as_mut_ptr(), fb.len()),
        Err(error) => {
            probe!("error screen=setup_framebuffer detail=\"{error:?}\"");
            return;
        }
    };
    if len < (width as usize) * (height as usize) * 4 {
        probe!("error screen=framebuffer_too_small len={len}");
        return;
    }
    let mut screen = Screen {
        gpu,
        fb,
        len,
        width,
        height,
        flushes: 0,
    };

    let mut failed = Vec::new();
    let mut inputs = open_inputs(pci, &mut failed);
    let rows = device_rows(pci, &inputs, &failed);
    let has = |want: fn(&Kind) -> bool| inputs.iter().any(|d| want(&d.kind));
    let all_ok = failed.is_empty()
        && has(|k| matches!(k, Kind::Keyboard))
        && has(|k| matches!(k, Kind::Tablet(_)));
    let swatch_rgb = if all_ok { SWATCH_OK } else { SWATCH_FAIL };

    let ticks_per_sec = tsc_khz * 1000;
    let uptime = || {
        let ticks = arch::rdtsc().saturating_sub(boot::boot_tsc());
        (ticks_per_sec != 0).then(|| ticks / ticks_per_sec)
    };
    let mut second = uptime();
    let mut agent = Agent::open(pci, tsc_khz, discovery.mem_bytes);
    let mut lines = Lines {
        keys: Vec::new(),
        pointer: None,
        agent: agent_text(agent.as_ref()),
        clipboard: "(none)".into(),
    };
    let layout = draw_all(
        &mut screen.canvas(),
        discovery,
        &rows,
        swatch_rgb,
        &clock_text(second),
        &lines,
    );
    let mut ok = screen.flush();
    // The cursor starts in the middle of the screen; the tablet moves it.
    let (hot_x, hot_y) = CURSOR_HOT;
    if let Err(error) =
        screen
            .gpu
            .setup_cursor(&cursor_image(), width / 2, height / 2, hot_x, hot_y)
    {
        probe!("error screen=setup_cursor detail=\"{error:?}\"");
        ok = false;
    }

    for row in &rows {
        probe!(
            "screen_device bdf={} kind={} status={}",
            row.df,
            row.kind,
            row.status.word()
        );
    }
    for (name, rect, rgb) in [
        ("title", layout.title, TITLE),
        ("swatch", layout.swatch, swatch_rgb),
        ("clock", layout.clock, TEXT),
        ("keys", layout.keys, TEXT),
        ("pointer", layout.pointer, TEXT),
    ] {
        probe!("screen_region name={name} {rect} rgb={rgb:#08x} background={BACKGROUND:#08x}");
    }
    let failures = rows.iter().filter(|r| r.status == Status::Fail).count();
    probe!(
        "screen_ready width={width} height={height} devices={} failed={failures} status={} \
         cursor_hot_x={hot_x} cursor_hot_y={hot_y}",
        rows.len(),
        if all_ok { "ok" } else { "fail" }
    );

    let key_columns = key_columns(layout.keys);
    let (mut typed, mut moves, mut redraws) = (0u64, 0u64, 0u64);
    // Axis values of the tablet's current event group, applied at its SYN_REPORT.
    let (mut abs_x, mut abs_y) = (None, None);
    let mut new_keys: Vec<u16> = Vec::new();
    // Letters typed since the last Enter: what Enter copies.
    let mut typed_line = String::new();
    loop {
        let mut escape = false;
        let mut power = None;
        let (mut agent_changed, mut clipboard_changed) = (false, false);
        if let Some(agent) = agent.as_mut() {
            for event in agent.poll() {
                match event {
                    agent::Event::Connected | agent::Event::Disconnected => agent_changed = true,
                    agent::Event::ClipboardFromHost(format, data) => {
                        lines.clipboard = clipboard_text("from host", format, &data);
                        clipboard_changed = true;
                    }
                    agent::Event::Power(action) => power = Some(action),
                }
            }
            if agent_changed {
                lines.agent = agent_text(Some(agent));
            }
        }
        if crate::acpi::power_button_pressed() {
            probe!("power_button");
            power = Some(PowerAction::Shutdown);
        }
        let mut moved = None;
        for input in &mut inputs {
            while let Some(event) = input.device.pop_pending_event() {
                match (&input.kind, event.event_type) {
                    (Kind::Keyboard, EV_KEY) if event.value == 1 => {
                        if event.code == KEY_ESC {
                            escape = true;
                        } else {
                            new_keys.push(event.code);
                        }
                        if event.code == KEY_ENTER {
                            let text = core::mem::take(&mut typed_line).into_bytes();
                            lines.clipboard =
                                clipboard_text("copied", ClipboardFormat::Text, &text);
                            clipboard_changed = true;
                            if let Some(agent) = agent.as_mut() {
                                agent.copy(ClipboardFormat::Text, text);
                            }
                        } else if let Some(c) = key_char(event.code) {
                            typed_line.push(c);
                        }
                    }
                    (Kind::Tablet(_), EV_ABS) if event.code == ABS_X => abs_x = Some(event.value),
                    (Kind::Tablet(_), EV_ABS) if event.code == ABS_Y => abs_y = Some(event.value),
                    (Kind::Tablet(axes), EV_SYN) if abs_x.is_some() || abs_y.is_some() => {
                        let (old_x, old_y) = lines.pointer.unwrap_or((width / 2, height / 2));
                        let x = abs_x.take().map_or(old_x, |v| scale(v, axes.x, width));
                        let y = abs_y.take().map_or(old_y, |v| scale(v, axes.y, height));
                        if lines.pointer != Some((x, y)) {
                            moved = Some((x, y));
                            lines.pointer = Some((x, y));
                        }
                    }
                    _ => {}
                }
            }
        }
        let now = uptime();
        let tick = now != second;
        second = now;

        if tick || !new_keys.is_empty() || moved.is_some() || agent_changed || clipboard_changed {
            let mut canvas = screen.canvas();
            if agent_changed {
                draw_line(&mut canvas, layout.agent, "agent", &lines.agent);
                redraws += 1;
            }
            if clipboard_changed {
                draw_line(&mut canvas, layout.clipboard, "clipboard", &lines.clipboard);
                redraws += 1;
            }
            if tick {
                draw_line(&mut canvas, layout.clock, "uptime", &clock_text(now));
                redraws += 1;
            }
            if !new_keys.is_empty() {
                lines.keys.extend_from_slice(&new_keys);
                let excess = lines.keys.len().saturating_sub(KEY_HISTORY);
                lines.keys.drain(..excess);
                let text = keys_text(&lines.keys, key_columns);
                draw_line(&mut canvas, layout.keys, "keys", &text);
                redraws += 1;
            }
            if moved.is_some() {
                draw_line(
                    &mut canvas,
                    layout.pointer,
                    "pointer",
                    &pointer_text(lines.pointer),
                );
                redraws += 1;
            }
            ok &= screen.flush();
        }
        for code in new_keys.drain(..) {
            typed += 1;
            match key_char(code) {
                Some(' ') => probe!("screen_key code={code} char=space"),
                Some(c) => probe!("screen_key code={code} char={c}"),
                None => probe!("screen_key code={code} char=none"),
            }
        }
        if let Some((x, y)) = moved {
            if let Err(error) = screen.gpu.move_cursor(x, y) {
                probe!("error screen=move_cursor detail=\"{error:?}\"");
                ok = false;
            }
            moves += 1;
            probe!("screen_pointer x={x} y={y}");
        }
        if clipboard_changed {
            probe!(
                "screen_clipboard text=\"{}\"",
                lines.clipboard.escape_debug()
            );
        }
        if escape || power.is_some() {
            if let Some(agent) = agent.as_mut() {
                agent.drain();
            }
            probe!(
                "screen_done keys={typed} moves={moves} redraws={redraws} flushes={} ok={}",
                screen.flushes,
                u8::from(ok && all_ok)
            );
            if power == Some(PowerAction::Reboot) {
                probe!("REBOOT");
                crate::acpi::reboot();
            }
            return;
        }
        core::hint::spin_loop();
    }
}
