//! Saving and restoring the device: [`Gpu::save`] turns everything the driver set up
//! into a [`GpuState`] (serde), [`Gpu::restore`] rebuilds it in a fresh device.
//!
//! A state is a file on disk by the time it is restored, so it is as untrusted as a
//! guest's request: every size, id, rectangle and backing entry is checked, the memory
//! it makes the device hold is charged against the same cap as the guest's commands,
//! and anything wrong is a [`RestoreError`], never a panic.
//!
//! Restoring goes through the [`DisplayBackend`](crate::DisplayBackend) as the guest's
//! own SET_SCANOUTs did: the display creates its framebuffers anew, gets the pixels and
//! hears `ScanoutEnabled` and `Damage` for each scanout (and the cursor), so clients
//! see the screen that was saved.

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use vm_memory::GuestMemory;

use crate::config::{check_size, ConfigError};
use crate::device::{Cursor, Gpu, MAX_BACKING_ENTRIES};
use crate::display::{CursorEvent, CursorImage, DisplayEvent, Rect, CURSOR_HEIGHT, CURSOR_WIDTH};
use crate::format::{PixelFormat, BYTES_PER_PIXEL};
use crate::protocol::{CommandError, MemEntry};
use crate::resource::{Backing, Resource};

/// The layout of [`GpuState`]; a state of another version is refused.
pub const STATE_VERSION: u32 = 1;

/// Everything the driver set up, as [`Gpu::save`] found it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuState {
    pub version: u32,
    /// The features the driver accepted.
    pub acked_features: u64,
    /// `events_read` of the configuration space: display changes the driver has not
    /// acknowledged yet.
    pub events_read: u32,
    /// The SET_SCANOUT counter resources' `last_shown` refer to.
    pub show_clock: u64,
    /// One per scanout the device has, in order.
    pub scanouts: Vec<ScanoutState>,
    /// Every resource, by increasing id.
    pub resources: Vec<ResourceState>,
    pub cursor: CursorState,
}

/// One display.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScanoutState {
    /// The size the host wants (display info, EDID).
    pub preferred_width: u32,
    pub preferred_height: u32,
    /// The resource shown (0: the scanout is off, and `rect` is all zeros) and which
    /// part of it.
    pub resource_id: u32,
    pub rect: Rect,
}

/// A 2D resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceState {
    pub id: u32,
    /// The virtio format number (`VIRTIO_GPU_FORMAT_*`).
    pub format: u32,
    pub width: u32,
    pub height: u32,
    /// The guest memory backing it, as attached (`None`: detached).
    pub backing: Option<Vec<BackingEntry>>,
    /// When a scanout last showed it (on the `show_clock`; 0: never).
    pub last_shown: u64,
    /// Its host copy of the pixels, `width * 4` bytes per row.
    pub pixels: Pixels,
}

/// One run of guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackingEntry {
    pub addr: u64,
    pub len: u32,
}

/// The cursor: where it is, and what it shows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CursorState {
    pub scanout: u32,
    pub x: i32,
    pub y: i32,
    /// `None`: hidden.
    pub image: Option<CursorImageState>,
}

/// The image UPDATE_CURSOR made: 64x64, RGBA.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CursorImageState {
    /// The resource it came from.
    pub resource_id: u32,
    pub hot_x: u32,
    pub hot_y: u32,
    pub rgba: Pixels,
}

/// Raw pixel bytes, serialized as one base64 string (a 1280x800 screen is 5.5 MB of
/// JSON, not a 4-million-element array); all-zero pixels (a resource the guest never
/// filled) as the empty string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pixels {
    /// `len` zero bytes.
    Zero,
    Bytes(Vec<u8>),
}

impl Pixels {
    fn new(bytes: Vec<u8>) -> Self {
        if bytes.iter().all(|&b| b == 0) {
            Pixels::Zero
        } else {
            Pixels::Bytes(bytes)
        }
    }

    /// The bytes, if they are `len` long (zero ones are any length).
    fn checked(&self, len: u64) -> Option<Option<&[u8]>> {
        match self {
            Pixels::Zero => Some(None),
            Pixels::Bytes(b) if b.len() as u64 == len => Some(Some(b)),
            Pixels::Bytes(_) => None,
        }
    }

    /// Bytes held (none for zero pixels).
    fn held(&self) -> usize {
        match self {
            Pixels::Zero => 0,
            Pixels::Bytes(b) => b.len(),
        }
    }
}

impl Serialize for Pixels {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Pixels::Zero => s.serialize_str(""),
            Pixels::Bytes(b) => {
                s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(b))
            }
        }
    }
}

impl<'de> Deserialize<'de> for Pixels {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text.is_empty() {
            return Ok(Pixels::Zero);
        }
        // Bounded by the input: base64 decodes to less than it reads.
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map(Pixels::Bytes)
            .map_err(serde::de::Error::custom)
    }
}

/// Why a state was refused. The device is left reset.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("the state is version {0}, this device reads version {STATE_VERSION}")]
    Version(u32),
    #[error("the state has {saved} scanouts, the device {configured}")]
    ScanoutCount { saved: usize, configured: usize },
    #[error("scanout {scanout}: {source}")]
    DisplaySize {
        scanout: usize,
        #[source]
        source: ConfigError,
    },
    #[error("feature bits {0:#x} are not the device's")]
    Features(u64),
    #[error("events_read {0:#x} has bits of no event")]
    Events(u32),
    #[error("resource id {0} is zero or appears twice")]
    ResourceId(u32),
    #[error("resource {id}: unknown format {format}")]
    Format { id: u32, format: u32 },
    #[error("resource {id}: {width}x{height} is no size")]
    Size { id: u32, width: u32, height: u32 },
    #[error("resource {id}: {got} bytes of pixels where {width}x{height} needs {needed}")]
    PixelLength {
        id: u32,
        width: u32,
        height: u32,
        needed: u64,
        got: usize,
    },
    #[error("resource {id}: {entries} backing entries, more than {MAX_BACKING_ENTRIES}")]
    TooManyEntries { id: u32, entries: usize },
    #[error("resource {id}: {source}")]
    Resource {
        id: u32,
        #[source]
        source: CommandError,
    },
    #[error("scanout {scanout}: {source}")]
    Scanout {
        scanout: usize,
        #[source]
        source: CommandError,
    },
    #[error("scanout {0} is off but has a rectangle")]
    OffScanoutRect(usize),
    #[error("the cursor: {0}")]
    Cursor(String),
}

impl Gpu {
    /// Everything the driver set up: resources with their pixels and backing, scanouts,
    /// cursor, pending events. Pixels are copied: a 1280x800 screen is 4 MB.
    pub fn save(&self) -> GpuState {
        let mut ids: Vec<u32> = self.resources.keys().copied().collect();
        ids.sort_unstable();
        let resources = ids
            .into_iter()
            .filter_map(|id| Some(save_resource(id, self.resources.get(&id)?)))
            .collect();
        GpuState {
            version: STATE_VERSION,
            acked_features: self.acked_features,
            events_read: self.events_read,
            show_clock: self.show_clock,
            scanouts: self
                .scanouts
                .iter()
                .map(|s| ScanoutState {
                    preferred_width: s.preferred.0,
                    preferred_height: s.preferred.1,
                    resource_id: s.resource_id,
                    rect: s.rect,
                })
                .collect(),
            resources,
            cursor: save_cursor(&self.cursor),
        }
    }

    /// Makes the device what `state` says, as if its driver had set it up: the display
    /// gets framebuffers, pixels and events for each scanout and the cursor. Guest
    /// memory is where backing entries must lie. The device is reset first, and again
    /// if the state is refused (with the host's display sizes as they were; otherwise
    /// they come from the state).
    pub fn restore<M: GuestMemory>(
        &mut self,
        state: &GpuState,
        mem: &M,
    ) -> Result<(), RestoreError> {
        self.reset();
        let sizes: Vec<(u32, u32)> = self.scanouts.iter().map(|s| s.preferred).collect();
        let restored = self.rebuild(state, mem);
        if restored.is_err() {
            self.reset();
            for (scanout, size) in self.scanouts.iter_mut().zip(sizes) {
                scanout.preferred = size;
            }
        }
        restored
    }

    fn rebuild<M: GuestMemory>(&mut self, state: &GpuState, mem: &M) -> Result<(), RestoreError> {
        self.restore_config(state)?;
        // The resources scanouts show come first: showing one needs room for a moment
        // (its pixels move into the display's framebuffer), which the guest had when it
        // showed it, maybe before it made the others.
        let shown: Vec<u32> = state.scanouts.iter().map(|s| s.resource_id).collect();
        let (first, rest): (Vec<_>, Vec<_>) =
            state.resources.iter().partition(|r| shown.contains(&r.id));
        for r in first {
            self.restore_resource(r, mem)?;
        }
        for (i, s) in state.scanouts.iter().enumerate() {
            self.restore_scanout(i, s)?;
        }
        for r in rest {
            self.restore_resource(r, mem)?;
        }
        // Showing the scanouts again moved the clock: put back the saved one.
        for r in &state.resources {
            if let Some(res) = self.resources.get_mut(&r.id) {
                res.last_shown = r.last_shown;
            }
        }
        let latest = state.resources.iter().map(|r| r.last_shown).max();
        self.show_clock = state.show_clock.max(latest.unwrap_or(0));
        self.restore_cursor(&state.cursor)
    }

    /// Version, scanout count and sizes, features, events.
    fn restore_config(&mut self, state: &GpuState) -> Result<(), RestoreError> {
        if state.version != STATE_VERSION {
            return Err(RestoreError::Version(state.version));
        }
        if state.scanouts.len() != self.scanouts.len() {
            return Err(RestoreError::ScanoutCount {
                saved: state.scanouts.len(),
                configured: self.scanouts.len(),
            });
        }
        for (i, s) in state.scanouts.iter().enumerate() {
            check_size(s.preferred_width, s.preferred_height)
                .map_err(|source| RestoreError::DisplaySize { scanout: i, source })?;
        }
        if state.acked_features & !self.features() != 0 {
            return Err(RestoreError::Features(state.acked_features));
        }
        let events = virtio_bindings::virtio_gpu::VIRTIO_GPU_EVENT_DISPLAY;
        if state.events_read & !events != 0 {
            return Err(RestoreError::Events(state.events_read));
        }
        for (scanout, s) in self.scanouts.iter_mut().zip(&state.scanouts) {
            scanout.preferred = (s.preferred_width, s.preferred_height);
        }
        self.acked_features = state.acked_features;
        self.events_read = state.events_read;
        Ok(())
    }

    /// One resource, charged against the memory cap before anything is allocated.
    fn restore_resource<M: GuestMemory>(
        &mut self,
        r: &ResourceState,
        mem: &M,
    ) -> Result<(), RestoreError> {
        let id = r.id;
        if id == 0 || self.resources.contains_key(&id) {
            return Err(RestoreError::ResourceId(id));
        }
        let format = PixelFormat::from_raw(r.format).ok_or(RestoreError::Format {
            id,
            format: r.format,
        })?;
        let (width, height) = (r.width, r.height);
        if width == 0 || height == 0 {
            return Err(RestoreError::Size { id, width, height });
        }
        let needed = Resource::cost(width, height) - crate::resource::RESOURCE_OVERHEAD;
        let pixels = r.pixels.checked(needed).ok_or(RestoreError::PixelLength {
            id,
            width,
            height,
            needed,
            got: r.pixels.held(),
        })?;
        let entries = r.backing.as_deref().map(|b| b.len()).unwrap_or(0);
        if entries > MAX_BACKING_ENTRIES as usize {
            return Err(RestoreError::TooManyEntries { id, entries });
        }
        let fail = |source| RestoreError::Resource { id, source };
        let backing = r
            .backing
            .as_deref()
            .map(|entries| restore_backing(entries, mem))
            .transpose()
            .map_err(fail)?;
        let backing_cost = backing.as_ref().map_or(0, |b| Backing::cost(b.entries()));
        let cost = Resource::cost(width, height).saturating_add(backing_cost);
        self.charge(cost).map_err(fail)?;
        let mut resource = Resource::new(format, width, height).map_err(|e| {
            self.uncharge(cost);
            fail(e)
        })?;
        if let Some(pixels) = pixels {
            resource.load_pixels(pixels);
        }
        resource.backing = backing;
        self.resources.insert(id, resource);
        Ok(())
    }

    /// Shows what the scanout showed, through the same path as SET_SCANOUT: the
    /// display makes the framebuffer and hears the mode and the damage.
    fn restore_scanout(&mut self, i: usize, s: &ScanoutState) -> Result<(), RestoreError> {
        if s.resource_id == 0 {
            if s.rect != Rect::default() {
                return Err(RestoreError::OffScanoutRect(i));
            }
            return Ok(());
        }
        // `i` is below the scanout count, which the protocol caps at 16.
        self.set_scanout(i as u32, s.resource_id, s.rect)
            .map_err(|source| RestoreError::Scanout { scanout: i, source })
    }

    fn restore_cursor(&mut self, c: &CursorState) -> Result<(), RestoreError> {
        if c.scanout as usize >= self.scanouts.len() {
            return Err(RestoreError::Cursor(format!("no scanout {}", c.scanout)));
        }
        let image = c.image.as_ref().map(restore_cursor_image).transpose()?;
        self.cursor = Cursor {
            scanout: c.scanout,
            x: c.x,
            y: c.y,
            image: image.clone(),
        };
        if let Some((_, image)) = image {
            self.display_event(DisplayEvent::Cursor(CursorEvent::Update {
                scanout: c.scanout,
                x: c.x,
                y: c.y,
                image: Some(image),
            }));
        }
        Ok(())
    }
}

fn save_resource(id: u32, r: &Resource) -> ResourceState {
    ResourceState {
        id,
        format: r.format.raw(),
        width: r.width,
        height: r.height,
        backing: r.backing.as_ref().map(|b| {
            b.runs()
                .map(|(addr, len)| BackingEntry { addr, len })
                .collect()
        }),
        last_shown: r.last_shown,
        pixels: Pixels::new(r.packed_pixels()),
    }
}

fn save_cursor(c: &Cursor) -> CursorState {
    CursorState {
        scanout: c.scanout,
        x: c.x,
        y: c.y,
        image: c.image.as_ref().map(|(id, i)| CursorImageState {
            resource_id: *id,
            hot_x: i.hot_x,
            hot_y: i.hot_y,
            rgba: Pixels::new(i.rgba.clone()),
        }),
    }
}

/// The backing, each entry checked to lie in guest memory.
fn restore_backing<M: GuestMemory>(
    entries: &[BackingEntry],
    mem: &M,
) -> Result<Backing, CommandError> {
    let entries: Vec<MemEntry> = entries
        .iter()
        .map(|e| MemEntry {
            addr: e.addr,
            length: e.len,
        })
        .collect();
    Backing::new(&entries, mem)
}

/// A 64x64 RGBA image with its hot spot inside.
fn restore_cursor_image(c: &CursorImageState) -> Result<(u32, CursorImage), RestoreError> {
    if c.hot_x >= CURSOR_WIDTH || c.hot_y >= CURSOR_HEIGHT {
        return Err(RestoreError::Cursor(format!(
            "hot spot ({}, {}) outside the image",
            c.hot_x, c.hot_y
        )));
    }
    let len = CURSOR_WIDTH * CURSOR_HEIGHT * BYTES_PER_PIXEL;
    let rgba = match c.rgba.checked(u64::from(len)) {
        Some(Some(bytes)) => bytes.to_vec(),
        Some(None) => vec![0; len as usize],
        None => {
            return Err(RestoreError::Cursor(format!(
                "the image is not {len} bytes"
            )))
        }
    };
    let image = CursorImage {
        width: CURSOR_WIDTH,
        height: CURSOR_HEIGHT,
        hot_x: c.hot_x,
        hot_y: c.hot_y,
        rgba,
    };
    Ok((c.resource_id, image))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{GpuConfig, ScanoutConfig};
    use crate::device::tests::*;
    use crate::display::ScanoutMode;
    use crate::protocol::*;

    fn two_scanouts() -> GpuConfig {
        GpuConfig {
            scanouts: vec![
                ScanoutConfig {
                    width: 1280,
                    height: 800,
                },
                ScanoutConfig {
                    width: 320,
                    height: 200,
                },
            ],
            ..GpuConfig::default()
        }
    }

    /// A cursor resource (5) of pattern pixels, at 0x28_0000 in guest memory.
    const CURSOR_BACKING: [(u64, u32); 1] = [(0x28_0000, 64 * 64 * 4)];
    /// Resource 2 (32x32), shown in part on scanout 1.
    const SMALL_BACKING: [(u64, u32); 1] = [(0x38_0000, 32 * 32 * 4)];
    const VIEW: Rect = Rect {
        x: 8,
        y: 8,
        width: 16,
        height: 16,
    };

    /// Writes the guest images every resource's backing holds.
    fn guest_images(d: &Driver) {
        write_image(&d.mem, 64, 32, &ENTRIES);
        write_image(&d.mem, 64, 64, &CURSOR_BACKING);
        write_image(&d.mem, 32, 32, &SMALL_BACKING);
    }

    /// What a Linux guest leaves behind: scanout 0 shows resource 1 whole with part of
    /// it transferred; scanout 1 shows part of resource 2; resource 3 is black and has
    /// no backing; a cursor that moved since; a display resize not acknowledged yet.
    fn busy_device() -> Driver {
        let mut d = Driver::new(two_scanouts());
        setup(&mut d);
        guest_images(&d);
        let part = Rect::new(8, 4, 16, 8);
        let ok = VIRTIO_GPU_RESP_OK_NODATA;
        for request in [
            transfer(1, part, 4 * 64 * 4 + 8 * 4),
            flush(1, part),
            create_2d(2, B8G8R8A8, 32, 32),
            attach(2, &SMALL_BACKING),
            transfer(2, Rect::new(0, 0, 32, 32), 0),
            set_scanout(1, 2, VIEW),
            create_2d(3, B8G8R8X8, 16, 16),
            create_2d(5, B8G8R8A8, 64, 64),
            attach(5, &CURSOR_BACKING),
            transfer(5, Rect::new(0, 0, 64, 64), 0),
        ] {
            assert_eq!(d.cmd(&request), ok, "{request:?}");
        }
        d.cursor_cmd(&cursor(VIRTIO_GPU_CMD_UPDATE_CURSOR, 0, 100, 50, 5, (3, 4)));
        d.cursor_cmd(&cursor(VIRTIO_GPU_CMD_MOVE_CURSOR, 0, 110, 60, 0, (0, 0)));
        assert!(d.gpu.set_display_size(0, 1024, 768).unwrap());
        d
    }

    /// A fresh device on fresh guest memory holding the same images (a restored VM's
    /// memory comes back on its own).
    fn fresh() -> Driver {
        let d = Driver::new(two_scanouts());
        guest_images(&d);
        d
    }

    fn display_info(d: &mut Driver) -> Vec<u8> {
        d.send(&req(VIRTIO_GPU_CMD_GET_DISPLAY_INFO, &[]), 1024)
    }

    #[test]
    fn a_saved_device_comes_back_the_same_through_json() {
        let mut d = busy_device();
        let state = d.gpu.save();
        let json = serde_json::to_string(&state).unwrap();
        let back: GpuState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, state);
        assert_eq!(back.resources[2].pixels, Pixels::Zero, "black is free");

        let mut e = fresh();
        e.gpu.restore(&back, &e.mem).unwrap();
        assert_eq!(e.pixels(0), d.pixels(0));
        assert_eq!(e.pixels(1), d.pixels(1));
        assert_eq!(pixel_at(&e.pixels(1), 64, 0, 0), pattern(8, 8));
        assert_eq!(display_info(&mut e), display_info(&mut d));
        assert_eq!(e.gpu.events_read(), d.gpu.events_read());
        assert_eq!(e.gpu.used_host_memory(), d.gpu.used_host_memory());
        assert_eq!(e.gpu.save(), state, "nothing lost or added");

        // The display heard each scanout's mode and damage, and the cursor.
        let events = e.events();
        let mode = ScanoutMode {
            width: 64,
            height: 32,
            format: PixelFormat::B8G8R8X8,
        };
        assert!(events.contains(&DisplayEvent::ScanoutEnabled {
            scanout: 0,
            mode,
            framebuffer: crate::FramebufferId(1)
        }));
        for (scanout, rect) in [(0, Rect::new(0, 0, 64, 32)), (1, Rect::new(0, 0, 16, 16))] {
            assert!(events.contains(&DisplayEvent::Damage { scanout, rect }));
        }
        let Some(DisplayEvent::Cursor(CursorEvent::Update {
            scanout: 0,
            x: 110,
            y: 60,
            image: Some(image),
        })) = events.last()
        else {
            panic!("{events:?}");
        };
        assert_eq!((image.hot_x, image.hot_y), (3, 4));
        assert_eq!(Some(image), d.gpu.cursor.image.as_ref().map(|(_, i)| i));

        // The driver carries on: the rest of resource 1 arrives and is flushed.
        let full = Rect::new(0, 0, 64, 32);
        assert_eq!(e.cmd(&transfer(1, full, 0)), VIRTIO_GPU_RESP_OK_NODATA);
        assert_eq!(e.cmd(&flush(1, full)), VIRTIO_GPU_RESP_OK_NODATA);
        assert_eq!(
            e.events(),
            vec![DisplayEvent::Damage {
                scanout: 0,
                rect: full
            }]
        );
        let px = e.pixels(0);
        for (x, y) in [(0, 0), (63, 0), (17, 11), (63, 31)] {
            assert_eq!(pixel_at(&px, 256, x, y), pattern(x as u32, y as u32));
        }
        still_works(&mut e);
    }

    #[test]
    fn a_1280x800_screen_is_a_few_megabytes_of_json() {
        let mut d = Driver::new(GpuConfig::default());
        let backing = [(0x10_0000, 1280 * 800 * 4)];
        d.mem =
            vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(vm_memory::GuestAddress(0), 8 << 20)])
                .unwrap();
        write_image(&d.mem, 1280, 800, &backing);
        let full = Rect::new(0, 0, 1280, 800);
        for request in [
            create_2d(1, B8G8R8X8, 1280, 800),
            attach(1, &backing),
            set_scanout(0, 1, full),
            transfer(1, full, 0),
        ] {
            assert_eq!(d.cmd(&request), VIRTIO_GPU_RESP_OK_NODATA);
        }
        let json = serde_json::to_vec(&d.gpu.save()).unwrap();
        // base64 of 4,096,000 bytes is 5,461,336 characters; the rest is small.
        assert!(json.len() < 5_462_000, "{} bytes", json.len());
        let state: GpuState = serde_json::from_slice(&json).unwrap();
        let mut e = Driver::new(GpuConfig::default());
        e.mem = d.mem.clone();
        e.gpu.restore(&state, &e.mem).unwrap();
        assert_eq!(e.pixels(0), d.pixels(0));
    }

    /// Restoring `state` fails, leaves the device reset and usable.
    fn refused(state: &GpuState) -> RestoreError {
        let mut e = fresh();
        let err = e.gpu.restore(state, &e.mem).unwrap_err();
        assert_eq!(e.gpu.used_host_memory(), 0, "{err}");
        assert!(e.gpu.scanout_mode(0).is_none() && e.gpu.scanout_mode(1).is_none());
        assert_eq!(framebuffers(&e).1, 0, "{err}: framebuffers left");
        assert_eq!(e.gpu.display_size(0), Some((1280, 800)));
        e.gpu.ack_features(e.gpu.features());
        still_works(&mut e);
        err
    }

    /// What the error must mention, and how the state is spoilt.
    type Corruption = (&'static str, fn(&mut GpuState));

    #[test]
    fn corrupt_states_are_refused() {
        let good = busy_device().gpu.save();
        let cases: Vec<Corruption> = vec![
            ("version 2", |s| s.version = 2),
            ("1 scanouts", |s| {
                s.scanouts.pop();
            }),
            ("0x768", |s| s.scanouts[0].preferred_width = 0),
            ("feature bits", |s| s.acked_features |= 1 << 40),
            ("events_read", |s| s.events_read = 2),
            ("8191 bytes of pixels", |s| {
                s.resources[0].pixels = Pixels::Bytes(vec![1; 64 * 32 * 4 - 1])
            }),
            ("id 2 is zero or appears twice", |s| {
                let copy = s.resources[1].clone();
                s.resources.push(copy);
            }),
            ("id 0 is zero", |s| s.resources[2].id = 0),
            ("unknown format 99", |s| s.resources[0].format = 99),
            ("0x16 is no size", |s| s.resources[2].width = 0),
            ("18446744073709551615 more bytes", |s| {
                s.resources[2].width = u32::MAX;
                s.resources[2].height = u32::MAX;
            }),
            ("1073742080 more bytes", |s| {
                s.resources[2].width = 16384;
                s.resources[2].height = 16384;
            }),
            ("outside guest memory", |s| {
                s.resources[0].backing = Some(vec![BackingEntry {
                    addr: u64::MAX - 10,
                    len: 4096,
                }])
            }),
            ("131073 backing entries", |s| {
                let entry = BackingEntry {
                    addr: 0x1000,
                    len: 1,
                };
                s.resources[0].backing = Some(vec![entry; MAX_BACKING_ENTRIES as usize + 1]);
            }),
            ("x: 1, y: 0, width: 64, height: 32 } is not inside", |s| {
                s.scanouts[0].rect = Rect::new(1, 0, 64, 32)
            }),
            ("x: 4294967295", |s| {
                s.scanouts[1].rect = Rect::new(u32::MAX, 0, 2, 2)
            }),
            ("0x0", |s| s.scanouts[1].rect = Rect::default()),
            ("77 does not name", |s| s.scanouts[1].resource_id = 77),
            ("scanout 1 is off", |s| s.scanouts[1].resource_id = 0),
            ("no scanout 2", |s| s.cursor.scanout = 2),
            ("hot spot (64, 4)", |s| {
                s.cursor.image.as_mut().unwrap().hot_x = 64
            }),
            ("not 16384 bytes", |s| {
                s.cursor.image.as_mut().unwrap().rgba = Pixels::Bytes(vec![1; 5])
            }),
        ];
        // Each refused for its own reason (the message says which).
        for (reason, corrupt) in cases {
            let mut state = good.clone();
            corrupt(&mut state);
            let err = refused(&state).to_string();
            assert!(err.contains(reason), "{err:?} is not about {reason:?}");
        }
    }

    #[test]
    fn corrupt_json_is_an_error() {
        let good = serde_json::to_value(busy_device().gpu.save()).unwrap();
        let mut bad_base64 = good.clone();
        bad_base64["resources"][0]["pixels"] = "not base64!".into();
        let mut unknown = good.clone();
        unknown["scanouts"][0]["extra"] = 1.into();
        let mut negative = good.clone();
        negative["resources"][0]["width"] = (-1).into();
        for value in [bad_base64, unknown, negative, serde_json::Value::Null] {
            assert!(GpuState::deserialize(&value).is_err(), "{value:.80}");
        }
    }

    /// The restore fuzz target's seed is a state the device accepts (as configured
    /// there), so that the fuzzer starts from deep inside restore.
    #[test]
    fn the_fuzz_seed_is_a_state_the_device_accepts() {
        let seed = include_str!("../fuzz/seeds/virtio_gpu_restore/two_scanouts_and_a_cursor.json");
        let state: GpuState = serde_json::from_str(seed).unwrap();
        let config = GpuConfig {
            scanouts: vec![
                ScanoutConfig {
                    width: 640,
                    height: 480,
                },
                ScanoutConfig {
                    width: 320,
                    height: 200,
                },
            ],
            max_host_memory: 8 << 20,
        };
        let mut d = Driver::new(config);
        d.gpu.restore(&state, &d.mem).unwrap();
        assert_eq!(d.gpu.display_size(0), Some((1024, 768)));
        assert_eq!(pixel_at(&d.pixels(0), 16, 3, 1), [29, 30, 31, 32]);
        assert_eq!(d.gpu.save(), state);
    }
}
