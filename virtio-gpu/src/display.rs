//! The host side of the device: what the engine implements ([`DisplayBackend`],
//! [`Framebuffer`]) and what the device tells it ([`DisplayEvent`]).
//!
//! Each enabled scanout shows a framebuffer the engine created (backed by a memfd the
//! app maps, or a plain `Vec` in tests and headless runs). A scanout showing a whole
//! resource (what Linux and virtio-drivers do) shows that resource's own storage: the
//! device asks the display for it when the resource is first put on a scanout, and
//! TRANSFER_TO_HOST_2D writes the guest's pixels straight into it, so RESOURCE_FLUSH
//! only pushes a `Damage` event naming the rectangle that changed. A scanout showing
//! part of a resource gets a framebuffer of its own, which each flush copies into. The
//! engine never polls.

use std::io;

use serde::{Deserialize, Serialize};

use crate::format::PixelFormat;

/// The cursor image's size: the spec's cursor resources are 64x64.
pub const CURSOR_WIDTH: u32 = 64;
pub const CURSOR_HEIGHT: u32 = 64;

/// `struct virtio_gpu_rect`, in pixels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl Rect {
    pub fn new(x: u32, y: u32, width: u32, height: u32) -> Self {
        Rect {
            x,
            y,
            width,
            height,
        }
    }

    /// Whether the rectangle lies inside a `width`x`height` area; overflow-safe (a
    /// rectangle whose end does not fit in 32 bits is outside).
    pub fn is_inside(&self, width: u32, height: u32) -> bool {
        let right = self.x.checked_add(self.width);
        let bottom = self.y.checked_add(self.height);
        matches!((right, bottom), (Some(r), Some(b)) if r <= width && b <= height)
    }

    pub fn is_empty(&self) -> bool {
        self.width == 0 || self.height == 0
    }

    /// The part of `self` inside `other` (both must not overflow: call on rectangles
    /// already checked with [`Rect::is_inside`]), or `None` if they do not meet.
    pub fn intersect(&self, other: &Rect) -> Option<Rect> {
        let x = self.x.max(other.x);
        let y = self.y.max(other.y);
        let right = (self.x + self.width).min(other.x + other.width);
        let bottom = (self.y + self.height).min(other.y + other.height);
        (right > x && bottom > y).then(|| Rect::new(x, y, right - x, bottom - y))
    }
}

/// Names a framebuffer the device asked [`DisplayBackend::create_framebuffer`] for, so
/// that [`DisplayEvent::ScanoutEnabled`] can say which one a scanout shows. Never
/// reused while the device lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FramebufferId(pub u64);

/// What a scanout shows: its size and the format of its framebuffer's pixels (the
/// format of the resource the guest put on it; [`PixelFormat::to_rgba`] converts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanoutMode {
    pub width: u32,
    pub height: u32,
    pub format: PixelFormat,
}

/// Host memory a scanout's pixels are written into, row after row: a resource's storage
/// or a scanout's own copy.
pub trait Framebuffer: Send {
    /// Bytes from the start of one row to the next: at least `width * 4`.
    fn stride(&self) -> u32;
    /// The pixels: at least `stride * height` bytes (the device checks, and refuses a
    /// framebuffer that is too small).
    fn pixels(&self) -> &[u8];
    fn pixels_mut(&mut self) -> &mut [u8];
}

/// A framebuffer in a `Vec`, tightly packed: for tests and displays that copy anyway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VecFramebuffer {
    stride: u32,
    pixels: Vec<u8>,
}

impl VecFramebuffer {
    /// A zeroed framebuffer for `mode`; fails (instead of aborting) when the host has
    /// no memory for it.
    pub fn new(mode: ScanoutMode) -> io::Result<Self> {
        let stride = mode
            .width
            .checked_mul(4)
            .ok_or(io::ErrorKind::InvalidInput)?;
        let len = u64::from(stride) * u64::from(mode.height);
        let len = usize::try_from(len).map_err(|_| io::ErrorKind::OutOfMemory)?;
        let mut pixels = Vec::new();
        pixels
            .try_reserve_exact(len)
            .map_err(|_| io::ErrorKind::OutOfMemory)?;
        pixels.resize(len, 0);
        Ok(VecFramebuffer { stride, pixels })
    }
}

impl Framebuffer for VecFramebuffer {
    fn stride(&self) -> u32 {
        self.stride
    }

    fn pixels(&self) -> &[u8] {
        &self.pixels
    }

    fn pixels_mut(&mut self) -> &mut [u8] {
        &mut self.pixels
    }
}

/// The cursor's pixels, converted to RGBA (8 bits per channel, row after row).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CursorImage {
    pub width: u32,
    pub height: u32,
    /// The pixel of the image that is the pointer's position.
    pub hot_x: u32,
    pub hot_y: u32,
    pub rgba: Vec<u8>,
}

/// What the cursor queue did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CursorEvent {
    /// UPDATE_CURSOR: a new image (`None`: the guest hid the cursor) at a position.
    Update {
        scanout: u32,
        x: i32,
        y: i32,
        image: Option<CursorImage>,
    },
    /// MOVE_CURSOR: the same image at a new position.
    Move { scanout: u32, x: i32, y: i32 },
}

/// Everything the device tells the display, in the order it happens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DisplayEvent {
    /// The scanout shows a `mode` image from now on, in the framebuffer created with id
    /// `framebuffer` (sent again whenever the mode or the framebuffer changes: a page
    /// flip to another resource of the same size is a new framebuffer).
    ScanoutEnabled {
        scanout: u32,
        mode: ScanoutMode,
        framebuffer: FramebufferId,
    },
    /// The scanout shows nothing (the guest set resource 0, unref'd the resource, or
    /// reset the device); its framebuffer was dropped.
    ScanoutDisabled {
        scanout: u32,
    },
    /// The pixels in `rect` (scanout coordinates) of the scanout's framebuffer changed.
    Damage {
        scanout: u32,
        rect: Rect,
    },
    Cursor(CursorEvent),
}

/// The display the engine gives the device.
pub trait DisplayBackend: Send {
    /// A zeroed framebuffer for a `mode` image, named `id`. Called on SET_SCANOUT: for a
    /// resource shown whole, once, to become its storage (the device copies the
    /// resource's pixels in and drops its own copy); for a scanout showing part of a
    /// resource, whenever its mode changes. An error fails the guest's command with
    /// ERR_OUT_OF_MEMORY and leaves the scanout disabled.
    fn create_framebuffer(
        &mut self,
        id: FramebufferId,
        mode: ScanoutMode,
    ) -> io::Result<Box<dyn Framebuffer>>;
    /// Something happened (see [`DisplayEvent`]).
    fn handle_event(&mut self, event: DisplayEvent);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rect_bounds_are_overflow_safe() {
        assert!(Rect::new(0, 0, 640, 480).is_inside(640, 480));
        assert!(!Rect::new(1, 0, 640, 480).is_inside(640, 480));
        assert!(!Rect::new(u32::MAX, 0, 2, 1).is_inside(u32::MAX, 10));
        assert!(!Rect::new(0, u32::MAX - 1, 1, 3).is_inside(10, u32::MAX));
    }

    #[test]
    fn rect_intersection() {
        let a = Rect::new(10, 10, 100, 50);
        assert_eq!(
            a.intersect(&Rect::new(50, 0, 200, 20)),
            Some(Rect::new(50, 10, 60, 10))
        );
        assert_eq!(a.intersect(&Rect::new(110, 10, 5, 5)), None);
    }

    #[test]
    fn vec_framebuffer_is_packed_and_zeroed() {
        let mode = ScanoutMode {
            width: 3,
            height: 2,
            format: PixelFormat::B8G8R8X8,
        };
        let fb = VecFramebuffer::new(mode).unwrap();
        assert_eq!(fb.stride(), 12);
        assert_eq!(fb.pixels(), &[0u8; 24][..]);
    }
}
