//! The virtio-gpu 2D device (virtio 1.2, 5.7 "GPU Device"), as a plain state machine.
//!
//! The device knows nothing of KVM, PCI or threads. The transport hands it one
//! descriptor chain at a time with the guest memory it lives in
//! ([`Gpu::process_control`], [`Gpu::process_cursor`]), reads and writes its
//! configuration space ([`Gpu::read_config`], [`Gpu::write_config`]) and resets it
//! ([`Gpu::reset`]). What the guest displays leaves through a [`DisplayBackend`] the engine
//! implements: it creates the [`Framebuffer`]s scanouts show (memfds, say) and receives
//! [`DisplayEvent`]s: scanouts enabled or disabled, damage rectangles after each flush,
//! cursor images and moves. The host changes a display's size with
//! [`Gpu::set_display_size`], which tells the caller to raise a configuration-change
//! interrupt. [`Gpu::save`] and [`Gpu::restore`] carry everything the driver set up
//! across a saved VM ([`GpuState`]).
//!
//! ```
//! use virtio_gpu::{
//!     DisplayBackend, DisplayEvent, Framebuffer, FramebufferId, Gpu, GpuConfig, ScanoutMode,
//!     VecFramebuffer,
//! };
//!
//! /// The engine's side: a memfd-backed framebuffer in real life.
//! struct Window;
//! impl DisplayBackend for Window {
//!     fn create_framebuffer(
//!         &mut self,
//!         _id: FramebufferId,
//!         mode: ScanoutMode,
//!     ) -> std::io::Result<Box<dyn Framebuffer>> {
//!         Ok(Box::new(VecFramebuffer::new(mode)?))
//!     }
//!     fn handle_event(&mut self, event: DisplayEvent) {
//!         // Damage → tell the app which rectangle to re-upload; cursor → set it.
//!         let _ = event;
//!     }
//! }
//!
//! let mut gpu = Gpu::new(&GpuConfig::default(), Box::new(Window)).unwrap();
//! // The transport: features, then config space reads (num_scanouts at offset 8).
//! gpu.ack_features(gpu.features());
//! let mut num_scanouts = [0u8; 4];
//! gpu.read_config(8, &mut num_scanouts);
//! assert_eq!(u32::from_le_bytes(num_scanouts), 1);
//! // The worker: `drain_queue(q, &mem, |chain| gpu.process_control(chain, &mem))`.
//! // The window was resized: raise a configuration-change interrupt if asked to.
//! assert!(gpu.set_display_size(0, 1920, 1080).unwrap());
//! ```
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
mod snapshot;

pub use config::{ConfigError, GpuConfig, ScanoutConfig, MAX_DISPLAY_HEIGHT, MAX_DISPLAY_WIDTH};
pub use device::{
    Gpu, ResizeError, CONFIG_SPACE_LEN, CONTROLQ, CURSORQ, MAX_BACKING_ENTRIES, QUEUE_SIZES,
};
pub use display::{
    CursorEvent, CursorImage, DisplayBackend, DisplayEvent, Framebuffer, FramebufferId, Rect,
    ScanoutMode, VecFramebuffer, CURSOR_HEIGHT, CURSOR_WIDTH,
};
pub use format::PixelFormat;
pub use protocol::CommandError;
pub use snapshot::{
    BackingEntry, CursorImageState, CursorState, GpuState, Pixels, ResourceState, RestoreError,
    ScanoutState, STATE_VERSION,
};
