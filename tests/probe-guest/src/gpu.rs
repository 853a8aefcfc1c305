//! `probe.run=gpu-*`: the VMM's virtio-gpu through `virtio-drivers`' driver
//! (`VirtIOGpu`), plus a small command builder of the probe's own for what that driver
//! never sends (malformed commands).
//!
//! - `gpu-draw`: sets up the framebuffer at the display's size, draws [`pattern`],
//!   flushes, reports `gpu_ready`, then idles so the host can look at the screen.
//! - `gpu-resize`: as `gpu-draw`, then polls the display info until the host offers a
//!   new size, switches to it, draws and flushes again and reports `gpu_mode`.
//! - `gpu-cursor`: as `gpu-draw`, then a 64x64 cursor ([`cursor_pixel`]) set and moved.
//! - `gpu-hostile`: malformed commands straight on the control queue, each response
//!   type reported; then a normal frame, raw and through `virtio-drivers`.
//! - `gpu-bench`: full-frame flushes for `probe.gpu_secs` seconds; frames per second.
//! - `gpu-blink`: the same with a blinking cursor's damage: an 8x16 rectangle toggled,
//!   transferred and flushed alone (through the probe's own command builder, as
//!   `virtio-drivers` only flushes whole screens).

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use virtio_drivers::device::gpu::VirtIOGpu;
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};

use crate::arch;
use crate::blk::BlkOptions;
use crate::pci::Pci;
use crate::probe;
use crate::virtio::{self, ProbeHal, ProbeTransport};

type Gpu = VirtIOGpu<ProbeHal, ProbeTransport>;

/// Seconds `gpu-bench` runs (`probe.gpu_secs`).
static BENCH_SECS: AtomicU64 = AtomicU64::new(5);
/// How long `gpu-resize` waits for the host's new size.
const RESIZE_WAIT_MS: u64 = 60_000;

pub fn set_bench_secs(secs: u64) {
    BENCH_SECS.store(secs.clamp(1, 600), Ordering::Relaxed);
}

/// `probe.gpu_period_ms`: `gpu-blink` toggles once per period instead of as fast as it
/// can (0), so a host can tell each flush's arrival on its screen apart.
static BLINK_PERIOD_MS: AtomicU64 = AtomicU64::new(0);

pub fn set_blink_period_ms(ms: u64) {
    BLINK_PERIOD_MS.store(ms.min(10_000), Ordering::Relaxed);
}

/// The test image, as B, G, R, A bytes (virtio-drivers' framebuffer is B8G8R8A8): a
/// 64x64 checkerboard of 8-pixel squares at the top left (the self-test area), then
/// gradients any pixel of which the host recomputes from its position alone.
pub fn pattern(x: u32, y: u32) -> [u8; 4] {
    if x < 64 && y < 64 {
        let v = if (x / 8 + y / 8) & 1 == 0 { 0xff } else { 0 };
        return [v, v, v, 0xff];
    }
    [((x / 4) ^ (y / 4)) as u8, y as u8, x as u8, 0xff]
}

/// The cursor image's pixel, B, G, R, A.
pub fn cursor_pixel(x: u32, y: u32) -> [u8; 4] {
    [(x * 4) as u8, (y * 4) as u8, 0x80, 0xff]
}

fn draw(fb: &mut [u8], width: u32) {
    for (i, pixel) in fb.chunks_exact_mut(4).enumerate() {
        let i = i as u32;
        pixel.copy_from_slice(&pattern(i % width, i / width));
    }
}

pub(crate) fn open(pci: &mut Pci) -> Option<Gpu> {
    let Some(function) = virtio::find(pci, DeviceType::GPU, 0) else {
        probe!("error gpu=no_device");
        return None;
    };
    let transport = match ProbeTransport::new(pci, &function, None) {
        Ok(t) => t,
        Err(error) => {
            probe!("error gpu={error}");
            return None;
        }
    };
    match Gpu::new(transport) {
        Ok(gpu) => Some(gpu),
        Err(error) => {
            probe!("error gpu=virtio_gpu_init detail=\"{error:?}\"");
            None
        }
    }
}

/// Sets up the framebuffer, draws the pattern, flushes and reports `gpu_ready`; returns
/// the driver, the size and where the framebuffer is.
fn ready(pci: &mut Pci) -> Option<(Gpu, u32, u32, *mut u8)> {
    let mut gpu = open(pci)?;
    let (edid_w, edid_h) = gpu.edid_preferred_resolution().unwrap_or((0, 0));
    let (width, height) = match gpu.resolution() {
        Ok(size) => size,
        Err(error) => {
            probe!("error gpu=display_info detail=\"{error:?}\"");
            return None;
        }
    };
    let fb_ptr = match gpu.setup_framebuffer() {
        Ok(fb) => {
            draw(fb, width);
            fb.as_mut_ptr()
        }
        Err(error) => {
            probe!("error gpu=setup_framebuffer detail=\"{error:?}\"");
            return None;
        }
    };
    if let Err(error) = gpu.flush() {
        probe!("error gpu=flush detail=\"{error:?}\"");
        return None;
    }
    probe!(
        "gpu_ready width={width} height={height} format=B8G8R8A8 edid_width={edid_w} \
         edid_height={edid_h}"
    );
    Some((gpu, width, height, fb_ptr))
}

fn idle() -> ! {
    probe!("IDLE");
    loop {
        core::hint::spin_loop();
    }
}

/// `probe.run=gpu-draw`.
pub fn draw_and_idle(pci: &mut Pci, _options: &BlkOptions, _tsc_khz: u64) {
    // The driver must live on: dropping it unsets its queues, which resets the device.
    if let Some(_gpu) = ready(pci) {
        idle();
    }
}

/// `probe.run=gpu-resize`.
pub fn resize(pci: &mut Pci, _options: &BlkOptions, tsc_khz: u64) {
    let Some((mut gpu, width, height, _)) = ready(pci) else {
        return;
    };
    let ms = tsc_khz.max(1);
    let deadline = arch::rdtsc() + RESIZE_WAIT_MS * ms;
    let (mut polls, mut config_irq) = (0u64, false);
    let size = loop {
        // The ISR's configuration bit says the host changed something (virtio 4.1.4.5);
        // the display info says what.
        config_irq |= gpu
            .ack_interrupt()
            .contains(InterruptStatus::DEVICE_CONFIGURATION_INTERRUPT);
        polls += 1;
        match gpu.resolution() {
            Ok(size) if size != (width, height) => break size,
            Ok(_) if arch::rdtsc() < deadline => {
                let until = arch::rdtsc() + 10 * ms;
                while arch::rdtsc() < until {
                    core::hint::spin_loop();
                }
            }
            Ok(_) => {
                probe!("error gpu=resize_timeout");
                return;
            }
            Err(error) => {
                probe!("error gpu=display_info detail=\"{error:?}\"");
                return;
            }
        }
    };
    // The host updates the display info before it raises the interrupt: a poll can see
    // the new size first, so give the ISR bit a moment to follow.
    let irq_deadline = arch::rdtsc() + 1000 * ms;
    while !config_irq && arch::rdtsc() < irq_deadline {
        config_irq |= gpu
            .ack_interrupt()
            .contains(InterruptStatus::DEVICE_CONFIGURATION_INTERRUPT);
    }
    match gpu.change_resolution(size.0, size.1) {
        Ok(fb) => draw(fb, size.0),
        Err(error) => {
            probe!("error gpu=change_resolution detail=\"{error:?}\"");
            return;
        }
    }
    let flushed = gpu.flush().is_ok();
    probe!(
        "gpu_mode width={} height={} config_irq={} polls={polls} flushed={}",
        size.0,
        size.1,
        u8::from(config_irq),
        u8::from(flushed)
    );
    idle();
}

/// `probe.run=gpu-cursor`.
pub fn cursor(pci: &mut Pci, _options: &BlkOptions, _tsc_khz: u64) {
    let Some((mut gpu, ..)) = ready(pci) else {
        return;
    };
    let mut image = Vec::with_capacity(64 * 64 * 4);
    for y in 0..64 {
        for x in 0..64 {
            image.extend_from_slice(&cursor_pixel(x, y));
        }
    }
    let (hot_x, hot_y) = (3, 4);
    match gpu.setup_cursor(&image, 100, 50, hot_x, hot_y) {
        Ok(()) => probe!("gpu_cursor x=100 y=50 hot_x={hot_x} hot_y={hot_y} image=1"),
        Err(error) => {
            probe!("error gpu=setup_cursor detail=\"{error:?}\"");
            return;
        }
    }
    for (x, y) in [(200, 150), (300, 250)] {
        match gpu.move_cursor(x, y) {
            Ok(()) => probe!("gpu_cursor x={x} y={y} hot_x={hot_x} hot_y={hot_y} image=0"),
            Err(error) => probe!("error gpu=move_cursor detail=\"{error:?}\""),
        }
    }
    probe!("gpu_cursor_done moves=2");
    idle();
}

/// `probe.run=gpu-bench`: each frame stamps its number and the TSC into its first 16
/// bytes (so every frame differs, and a host client can tell how long the frame took
/// to reach it), then `flush` (TRANSFER_TO_HOST_2D + RESOURCE_FLUSH of the whole
/// screen, one round trip each). Also the flush round trips' p50/p99.
pub fn bench(pci: &mut Pci, _options: &BlkOptions, tsc_khz: u64) {
    let Some((mut gpu, width, height, fb_ptr)) = ready(pci) else {
        return;
    };
    let ms = tsc_khz.max(1);
    let secs = BENCH_SECS.load(Ordering::Relaxed);
    let start = arch::rdtsc();
    let end = start + secs * 1000 * ms;
    let mut flush_ticks = Vec::new();
    let mut frame = 0u64;
    while arch::rdtsc() < end {
        frame += 1;
        let t0 = arch::rdtsc();
        // SAFETY: the framebuffer stays mapped and ours while `gpu` lives and its
        // resolution does not change; the first 16 bytes are inside it.
        unsafe {
            fb_ptr.cast::<u64>().write_unaligned(frame);
            fb_ptr.add(8).cast::<u64>().write_unaligned(t0);
        }
        if let Err(error) = gpu.flush() {
            probe!("error gpu=flush frame={frame} detail=\"{error:?}\"");
            return;
        }
        flush_ticks.push(arch::rdtsc() - t0);
    }
    let elapsed = arch::rdtsc() - start;
    flush_ticks.sort_unstable();
    let pct = |p: usize| {
        let i = (flush_ticks.len() * p / 100).min(flush_ticks.len().saturating_sub(1));
        flush_ticks.get(i).copied().unwrap_or(0) * 1000 / ms
    };
    probe!(
        "gpu_bench width={width} height={height} frames={frame} ms={} fps_x100={} \
         flush_p50_us={} flush_p99_us={}",
        elapsed / ms,
        frame * 100_000 * ms / elapsed.max(1),
        pct(50),
        pct(99)
    );
}

// --- gpu-hostile: the probe's own command builder over the same transport ---

const CMD_GET_DISPLAY_INFO: u32 = 0x0100;
const CMD_RESOURCE_CREATE_2D: u32 = 0x0101;
const CMD_RESOURCE_UNREF: u32 = 0x0102;
const CMD_SET_SCANOUT: u32 = 0x0103;
const CMD_RESOURCE_FLUSH: u32 = 0x0104;
const CMD_TRANSFER_TO_HOST_2D: u32 = 0x0105;
const CMD_RESOURCE_ATTACH_BACKING: u32 = 0x0106;
const RESP_OK_NODATA: u32 = 0x1100;
const RESP_OK_DISPLAY_INFO: u32 = 0x1101;
const FORMAT_B8G8R8A8: u32 = 1;
const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// The control queue driven by hand.
struct RawGpu {
    transport: ProbeTransport,
    controlq: VirtQueue<ProbeHal, 4>,
    /// Never used, but the device serves only when both its queues are enabled.
    _cursorq: VirtQueue<ProbeHal, 4>,
    response: Vec<u8>,
}

impl RawGpu {
    /// Initializes the device as virtio 1.2 3.1.1 says, with no optional feature.
    fn open(pci: &mut Pci) -> Result<Self, &'static str> {
        let function = virtio::find(pci, DeviceType::GPU, 0).ok_or("no_device")?;
        let mut transport = ProbeTransport::new(pci, &function, None)?;
        transport.set_status(DeviceStatus::empty());
        transport.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER);
        let offered = transport.read_device_features();
        transport.write_driver_features(offered & VIRTIO_F_VERSION_1);
        transport.set_status(
            DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::FEATURES_OK,
        );
        let controlq = VirtQueue::new(&mut transport, 0, false, false).map_err(|_| "controlq")?;
        let cursorq = VirtQueue::new(&mut transport, 1, false, false).map_err(|_| "cursorq")?;
        transport.set_status(
            DeviceStatus::ACKNOWLEDGE
                | DeviceStatus::DRIVER
                | DeviceStatus::FEATURES_OK
                | DeviceStatus::DRIVER_OK,
        );
        Ok(RawGpu {
            transport,
            controlq,
            _cursorq: cursorq,
            response: alloc::vec![0u8; 512],
        })
    }

    /// Sends one command (the 24-byte header, then `body` as little-endian words) and
    /// returns the response's type, 0 if none came back.
    fn send(&mut self, type_: u32, body: &[u32]) -> u32 {
        let mut request: Vec<u8> = [type_, 0, 0, 0, 0, 0]
            .iter()
            .chain(body)
            .flat_map(|w| w.to_le_bytes())
            .collect();
        if request.len() < 24 {
            request.resize(24, 0);
        }
        self.response.fill(0);
        match self.controlq.add_notify_wait_pop(
            &[&request],
            &mut [&mut self.response],
            &mut self.transport,
        ) {
            Ok(_) => u32::from_le_bytes([
                self.response[0],
                self.response[1],
                self.response[2],
                self.response[3],
            ]),
            Err(_) => 0,
        }
    }
}

/// The blinking rectangle of `gpu-blink`: where, and a text cursor's size.
const BLINK: [u32; 4] = [96, 96, 8, 16];

/// `probe.run=gpu-blink`: the screen drawn and shown once, then for `probe.gpu_secs` the
/// [`BLINK`] rectangle inverted, transferred and flushed, each time only that
/// rectangle (as fast as it can, or once per `probe.gpu_period_ms`); reported as
/// `gpu_bench` with `damage=8x16`.
pub fn blink(pci: &mut Pci, _options: &BlkOptions, tsc_khz: u64) {
    let mut raw = match RawGpu::open(pci) {
        Ok(raw) => raw,
        Err(error) => {
            probe!("error gpu={error}");
            return;
        }
    };
    if raw.send(CMD_GET_DISPLAY_INFO, &[]) != RESP_OK_DISPLAY_INFO {
        probe!("error gpu=display_info");
        return;
    }
    let word = |r: &[u8], at: usize| u32::from_le_bytes([r[at], r[at + 1], r[at + 2], r[at + 3]]);
    // The first pmode after the 24-byte header: x, y, width, height, enabled.
    let (width, height) = (word(&raw.response, 32), word(&raw.response, 36));
    if width < BLINK[0] + BLINK[2] || height < BLINK[1] + BLINK[3] {
        probe!("error gpu=blink_screen_too_small width={width} height={height}");
        return;
    }
    let mut fb = alloc::vec![0u8; width as usize * height as usize * 4];
    draw(&mut fb, width);
    let addr = fb.as_ptr() as u64;
    let (lo, hi) = (addr as u32, (addr >> 32) as u32);
    let full = [0, 0, width, height];
    let setup: [(u32, Vec<u32>); 5] = [
        (
            CMD_RESOURCE_CREATE_2D,
            alloc::vec![1, FORMAT_B8G8R8A8, width, height],
        ),
        (
            CMD_RESOURCE_ATTACH_BACKING,
            alloc::vec![1, 1, lo, hi, fb.len() as u32, 0],
        ),
        (CMD_SET_SCANOUT, [&full[..], &[0, 1]].concat()),
        (CMD_TRANSFER_TO_HOST_2D, [&full[..], &[0, 0, 1, 0]].concat()),
        (CMD_RESOURCE_FLUSH, [&full[..], &[1, 0]].concat()),
    ];
    for (command, body) in setup {
        if raw.send(command, &body) != RESP_OK_NODATA {
            probe!("error gpu=blink_setup command={command:#06x}");
            return;
        }
    }
    probe!("gpu_ready width={width} height={height} format=B8G8R8A8");
    let ms = tsc_khz.max(1);
    let start = arch::rdtsc();
    let end = start + BENCH_SECS.load(Ordering::Relaxed) * 1000 * ms;
    let [x, y, w, h] = BLINK;
    let offset = (u64::from(y) * u64::from(width) + u64::from(x)) * 4;
    let transfer = [x, y, w, h, offset as u32, (offset >> 32) as u32, 1, 0];
    let flush = [x, y, w, h, 1, 0];
    let mut frame = 0u64;
    let period = BLINK_PERIOD_MS.load(Ordering::Relaxed) * ms;
    while arch::rdtsc() < end {
        frame += 1;
        while arch::rdtsc() < start + frame * period {
            core::hint::spin_loop();
        }
        for row in y..y + h {
            let at = (row as usize * width as usize + x as usize) * 4;
            for byte in &mut fb[at..at + w as usize * 4] {
                *byte = !*byte;
            }
        }
        if raw.send(CMD_TRANSFER_TO_HOST_2D, &transfer) != RESP_OK_NODATA
            || raw.send(CMD_RESOURCE_FLUSH, &flush) != RESP_OK_NODATA
        {
            probe!("error gpu=blink_flush frame={frame}");
            return;
        }
    }
    let elapsed = arch::rdtsc() - start;
    probe!(
        "gpu_bench width={width} height={height} frames={frame} ms={} fps_x100={} damage={w}x{h}",
        elapsed / ms,
        frame * 100_000 * ms / elapsed.max(1),
    );
    // `fb` stays allocated: it backs the resource the host still shows.
    idle();
}

/// `probe.run=gpu-hostile`.
pub fn hostile(pci: &mut Pci, _options: &BlkOptions, _tsc_khz: u64) {
    let mut raw = match RawGpu::open(pci) {
        Ok(raw) => raw,
        Err(error) => {
            probe!("error gpu={error}");
            return;
        }
    };
    let backing = alloc::vec![0x5au8; 64 * 64 * 4];
    let addr = backing.as_ptr() as u64;
    let (lo, hi) = (addr as u32, (addr >> 32) as u32);
    let cases: [(&str, u32, Vec<u32>); 12] = [
        ("unknown_command", 0x0999, Vec::new()),
        ("short_create", CMD_RESOURCE_CREATE_2D, alloc::vec![7]),
        (
            "resource_id_zero",
            CMD_RESOURCE_CREATE_2D,
            alloc::vec![0, FORMAT_B8G8R8A8, 64, 64],
        ),
        (
            "bad_format",
            CMD_RESOURCE_CREATE_2D,
            alloc::vec![7, 999, 64, 64],
        ),
        (
            "huge_resource",
            CMD_RESOURCE_CREATE_2D,
            alloc::vec![7, FORMAT_B8G8R8A8, 65535, 65535],
        ),
        (
            "flush_unknown_resource",
            CMD_RESOURCE_FLUSH,
            alloc::vec![0, 0, 64, 64, 4242, 0],
        ),
        (
            "create_ok",
            CMD_RESOURCE_CREATE_2D,
            alloc::vec![7, FORMAT_B8G8R8A8, 64, 64],
        ),
        // Backing: one entry of 4 GiB - 1 at 0xFFFF_F000_0000, far outside guest RAM.
        (
            "huge_backing",
            CMD_RESOURCE_ATTACH_BACKING,
            alloc::vec![7, 1, 0, 0xffff, u32::MAX, 0],
        ),
        // 2^28 entries announced, one present: the device must not trust the count.
        (
            "huge_entry_count",
            CMD_RESOURCE_ATTACH_BACKING,
            alloc::vec![7, 0x1000_0000, lo, hi, 4096, 0],
        ),
        (
            "attach_ok",
            CMD_RESOURCE_ATTACH_BACKING,
            alloc::vec![7, 1, lo, hi, 64 * 64 * 4, 0],
        ),
        (
            "transfer_out_of_range",
            CMD_TRANSFER_TO_HOST_2D,
            alloc::vec![60, 60, 10, 10, 0, 0, 7, 0],
        ),
        (
            "scanout_out_of_range",
            CMD_SET_SCANOUT,
            alloc::vec![0, 0, 64, 64, 99, 7],
        ),
    ];
    let mut errors = 0;
    for (name, type_, body) in &cases {
        let resp = raw.send(*type_, body);
        if resp != RESP_OK_NODATA {
            errors += 1;
        }
        probe!("gpu_hostile case={name} resp={resp:#06x}");
    }
    // A normal frame after all that: the device must still work.
    let normal = [
        raw.send(CMD_SET_SCANOUT, &[0, 0, 64, 64, 0, 7]),
        raw.send(CMD_TRANSFER_TO_HOST_2D, &[0, 0, 64, 64, 0, 0, 7, 0]),
        raw.send(CMD_RESOURCE_FLUSH, &[0, 0, 64, 64, 7, 0]),
        raw.send(CMD_SET_SCANOUT, &[0, 0, 0, 0, 0, 0]),
        raw.send(CMD_RESOURCE_UNREF, &[7, 0]),
    ];
    let raw_ok = normal.iter().all(|&r| r == RESP_OK_NODATA);
    let info = raw.send(CMD_GET_DISPLAY_INFO, &[]);
    drop(raw);
    drop(backing);
    // And virtio-drivers' driver, from a device reset on.
    let driver_ok = ready(pci).is_some();
    probe!(
        "gpu_hostile_done cases={} errors={errors} raw_flush_ok={} display_info={info:#06x} \
         driver_ok={}",
        cases.len(),
        u8::from(raw_ok),
        u8::from(driver_ok)
    );
}
