//! The virtio-gpu 2D device (virtio 1.2, 5.7 "GPU Device"), as a plain state machine.
//!
//! The device knows nothing of KVM, PCI or threads. The transport hands it one
//! descriptor chain at a time with the guest memory it lives in
//! ([`Gpu::process_control`], [`Gpu::process_cursor`]), reads and writes its
//! configuration space ([`Gpu::read_config`], [`Gpu::write_config`]) and resets it
//! ([`Gpu::reset`]). What the guest displays leaves through a [`DisplayBackend`] the engine
//! implements: it creates each scanout's [`Framebuffer`] (a memfd, say) and receives
//! [`DisplayEvent`]s: scanouts enabled or disabled, damage rectangles after each flush,
//! cursor images and moves. The host changes a display's size with
//! [`Gpu::set_display_size`], which tells the caller to raise a configuration-change
//! interrupt.
//!
//! Everything in a chain is untrusted: every command is bounds-checked and answered
//! with the spec's error responses; nothing the guest sends can panic the device, make
//! it read outside guest memory or allocate more host memory than its configured cap.

mod chain;
mod config;
mod device;
mod display;
pub mod edid;
mod format;
pub mod protocol;
mod resource;

pub use config::{ConfigError, GpuConfig, ScanoutConfig, MAX_DISPLAY_HEIGHT, MAX_DISPLAY_WIDTH};
pub use device::{
    Gpu, ResizeError, CONFIG_SPACE_LEN, CONTROLQ, CURSORQ, MAX_BACKING_ENTRIES, QUEUE_SIZES,
};
pub use display::{
    CursorEvent, CursorImage, DisplayBackend, DisplayEvent, Framebuffer, Rect, ScanoutMode,
    VecFramebuffer, CURSOR_HEIGHT, CURSOR_WIDTH,
};
pub use format::PixelFormat;
pub use protocol::CommandError;
