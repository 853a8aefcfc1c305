//! The library's live thumbnail of a running VM's screen: a thread per VM attached to the
//! engine's display (the memfd framebuffer and its damage events, as the VM window reads
//! them) that scales the screen down on its own thread, at most twice a second and only
//! after damage arrived, so a static screen costs nothing.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eframe::egui::{Color32, ColorImage};
use vireo_vmm::control::client::{DisplayClient, DisplayMessage, MappedFramebuffer};
use vireo_vmm::control::protocol::Event;
use vireo_vmm::devices::virtio::gpu::display::format_name;
use virtio_gpu::PixelFormat;

/// The thumbnail's width; its height follows the screen's aspect.
pub const WIDTH: u32 = 160;
/// At most one new thumbnail per this long.
pub const INTERVAL: Duration = Duration::from_millis(500);

/// A running watcher; it ends by itself when the display goes (the VM stopped).
pub struct Watcher {
    alive: Arc<AtomicBool>,
}

impl Watcher {
    /// Starts watching the display behind `socket`; each new thumbnail goes to `send`.
    pub fn start(
        vm_id: &str,
        socket: PathBuf,
        send: impl Fn(ColorImage) + Send + 'static,
    ) -> Watcher {
        let alive = Arc::new(AtomicBool::new(true));
        let flag = alive.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("thumb-{vm_id}"))
            .spawn(move || {
                // Any error ends the watcher: the backend starts another while the VM runs.
                let _ = watch(&socket, &send);
                flag.store(false, Ordering::Release);
            });
        if spawned.is_err() {
            alive.store(false, Ordering::Release);
        }
        Watcher { alive }
    }

    pub fn alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }
}

fn watch(socket: &std::path::Path, send: &dyn Fn(ColorImage)) -> std::io::Result<()> {
    let (mut client, first) = DisplayClient::attach(socket)?;
    let mut framebuffer = match first {
        DisplayMessage::Mode(_, fb) => fb,
        DisplayMessage::Event(_) => None,
    };
    // A first picture at once; then only after damage.
    let mut dirty = true;
    let mut last_sent: Option<Instant> = None;
    loop {
        if dirty {
            let due = last_sent.map_or(Duration::ZERO, |t| INTERVAL.saturating_sub(t.elapsed()));
            if due.is_zero() {
                if let Some(image) = framebuffer.as_ref().and_then(downscale) {
                    send(image);
                }
                last_sent = Some(Instant::now());
                dirty = false;
                client.set_read_timeout(None)?;
            } else {
                client.set_read_timeout(Some(due))?;
            }
        }
        match client.next_message() {
            Ok(DisplayMessage::Mode(_, fb)) => {
                framebuffer = fb;
                dirty = true;
            }
            Ok(DisplayMessage::Event(Event::Damage { .. })) => dirty = true,
            Ok(DisplayMessage::Event(_)) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
    }
}

/// The screen scaled to `WIDTH` wide by sampling the nearest source pixel (a thumbnail
/// needs no filtering; this touches only the pixels it keeps). `None` for an unknown
/// format or a screen smaller than the thumbnail's height allows.
pub fn downscale(fb: &MappedFramebuffer) -> Option<ColorImage> {
    let format = pixel_format(&fb.mode.format)?;
    let (w, h, stride) = (fb.mode.width, fb.mode.height, fb.mode.stride as usize);
    if w == 0 || h == 0 {
        return None;
    }
    let tw = WIDTH.min(w);
    let th = (u64::from(h) * u64::from(tw) / u64::from(w)).max(1) as u32;
    let bytes = fb.bytes();
    let mut pixels = Vec::with_capacity((tw * th) as usize);
    for ty in 0..th {
        let sy = (u64::from(ty) * u64::from(h) / u64::from(th)) as usize;
        for tx in 0..tw {
            let sx = (u64::from(tx) * u64::from(w) / u64::from(tw)) as usize;
            let at = sy * stride + sx * 4;
            let s = bytes.get(at..at + 4)?;
            let [r, g, b, _] = format.to_rgba([s[0], s[1], s[2], s[3]]);
            pixels.push(Color32::from_rgb(r, g, b));
        }
    }
    Some(ColorImage::new([tw as usize, th as usize], pixels))
}

fn pixel_format(name: &str) -> Option<PixelFormat> {
    use PixelFormat::*;
    [
        B8G8R8A8, B8G8R8X8, A8R8G8B8, X8R8G8B8, R8G8B8A8, X8B8G8R8, A8B8G8R8, R8G8B8X8,
    ]
    .into_iter()
    .find(|f| format_name(*f) == name)
}
