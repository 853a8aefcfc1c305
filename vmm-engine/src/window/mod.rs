//! `vireo-vmm --window`: the guest's screen in a plain window, for running a VM without
//! the app. The window is a client of the engine's own control socket, exactly as the
//! app is: it attaches to the display (the framebuffer memfd, damage, mode and cursor
//! events: `control::client`), copies only damaged rectangles into a `pixels` surface,
//! shows the guest's cursor image as the host cursor, and sends keys (by physical
//! position, `keymap`), the pointer (absolute, so it moves in and out with no capture),
//! buttons and the wheel back as input requests. Closing the window powers the VM off.

pub mod keymap;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pixels::{Pixels, SurfaceTexture};
use winit::application::ApplicationHandler;
use winit::dpi::LogicalSize;
use winit::event::{ElementState, MouseButton, MouseScrollDelta, WindowEvent};
use winit::event_loop::{ActiveEventLoop, EventLoop, EventLoopProxy};
use winit::keyboard::PhysicalKey;
use winit::window::{CustomCursor, Window, WindowId};

use crate::control::client::{Control, DisplayClient, DisplayMessage, MappedFramebuffer};
use crate::control::protocol::{Event, PointerButton, Request, ScreenMode};
use virtio_gpu::PixelFormat;

/// What reaches the window's event loop from its helper threads.
pub enum UserEvent {
    Display(DisplayMessage),
    /// The display connection failed or ended: the VM stopped (or the engine let go of
    /// this window).
    DisplayLost(String),
}

#[derive(Debug, thiserror::Error)]
pub enum WindowError {
    #[error("cannot open a window: {0} (--window needs an X11 or Wayland session: is DISPLAY or WAYLAND_DISPLAY set?)")]
    EventLoop(#[source] winit::error::EventLoopError),
}

/// The window's event loop, made before the VM starts so that a host with no display
/// server fails at once, with nothing started.
pub struct WindowLoop {
    event_loop: EventLoop<UserEvent>,
}

impl WindowLoop {
    pub fn new() -> Result<Self, WindowError> {
        let event_loop = EventLoop::with_user_event()
            .build()
            .map_err(WindowError::EventLoop)?;
        Ok(Self { event_loop })
    }

    /// Shows the screen of the VM whose control socket is `socket` until the window is
    /// closed (the VM is powered off then) or the VM stops. `size` is the display's
    /// initial size, the window's until the guest sets a mode.
    pub fn run(self, socket: PathBuf, title: String, size: (u32, u32)) {
        let proxy = self.event_loop.create_proxy();
        let display_socket = socket.clone();
        let display_proxy = proxy.clone();
        std::thread::Builder::new()
            .name("window-display".into())
            .spawn(move || forward_display(&display_socket, &display_proxy))
            .ok();
        let (requests, rx) = mpsc::channel();
        let input_socket = socket.clone();
        std::thread::Builder::new()
            .name("window-input".into())
            .spawn(move || send_requests(&input_socket, rx))
            .ok();
        let mut app = App {
            title,
            size,
            requests,
            window: None,
            pixels: None,
            framebuffer: None,
            pressed: BTreeSet::new(),
            powered_off: false,
        };
        if let Err(e) = self.event_loop.run_app(&mut app) {
            tracing::error!("window: {e}");
        }
        app.power_off();
    }
}

/// How long the window waits for the engine's control socket to appear.
const CONNECT_WAIT: Duration = Duration::from_secs(30);

fn connect_with_retry<T>(mut connect: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    let deadline = Instant::now() + CONNECT_WAIT;
    loop {
        match connect() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Reads the display connection and hands every message to the event loop.
fn forward_display(socket: &std::path::Path, proxy: &EventLoopProxy<UserEvent>) {
    let (mut client, first) = match connect_with_retry(|| DisplayClient::attach(socket)) {
        Ok(attached) => attached,
        Err(e) => {
            let _ = proxy.send_event(UserEvent::DisplayLost(e.to_string()));
            return;
        }
    };
    if proxy.send_event(UserEvent::Display(first)).is_err() {
        return;
    }
    loop {
        match client.next_message() {
            Ok(message) => {
                if proxy.send_event(UserEvent::Display(message)).is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = proxy.send_event(UserEvent::DisplayLost(e.to_string()));
                return;
            }
        }
    }
}

/// Sends the window's input requests in order, off the event loop's thread.
fn send_requests(socket: &std::path::Path, rx: mpsc::Receiver<Request>) {
    let Ok(mut control) = connect_with_retry(|| Control::connect(socket)) else {
        return;
    };
    for request in rx {
        match control.ask(&request) {
            Ok(crate::control::protocol::Response::Error { message }) => {
                tracing::debug!("window: {request:?}: {message}")
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

struct App {
    title: String,
    size: (u32, u32),
    requests: mpsc::Sender<Request>,
    window: Option<Arc<Window>>,
    pixels: Option<Pixels<'static>>,
    framebuffer: Option<MappedFramebuffer>,
    /// Keys down in the guest, released when the window loses focus so none sticks.
    pressed: BTreeSet<u16>,
    powered_off: bool,
}

impl App {
    fn send(&self, request: Request) {
        let _ = self.requests.send(request);
    }

    /// Powers the VM off once, when the window goes away.
    fn power_off(&mut self) {
        if !self.powered_off {
            self.powered_off = true;
            self.send(Request::PowerOff {});
        }
    }

    fn create_window(&mut self, event_loop: &ActiveEventLoop) -> Result<(), String> {
        let attributes = Window::default_attributes()
            .with_title(self.title.clone())
            .with_inner_size(LogicalSize::new(self.size.0, self.size.1));
        let window = Arc::new(
            event_loop
                .create_window(attributes)
                .map_err(|e| e.to_string())?,
        );
        let pixels = make_pixels(&window, self.size)?;
        self.window = Some(window);
        self.pixels = Some(pixels);
        Ok(())
    }

    fn on_mode(&mut self, mode: ScreenMode, framebuffer: Option<MappedFramebuffer>) {
        self.framebuffer = framebuffer;
        let Some(pixels) = self.pixels.as_mut() else {
            return;
        };
        if mode.enabled && (mode.width, mode.height) != self.size {
            self.size = (mode.width, mode.height);
            if let Err(e) = pixels.resize_buffer(mode.width, mode.height) {
                tracing::warn!(
                    "window: cannot resize to {}x{}: {e}",
                    mode.width,
                    mode.height
                );
            }
        }
        pixels.frame_mut().fill(0);
        if mode.enabled {
            self.copy_rect(0, 0, mode.width, mode.height);
        }
    }

    /// Copies a rectangle of the guest's framebuffer into the window's, as RGBA.
    fn copy_rect(&mut self, x: u32, y: u32, width: u32, height: u32) {
        let (Some(pixels), Some(fb)) = (self.pixels.as_mut(), self.framebuffer.as_ref()) else {
            return;
        };
        let Some(format) = pixel_format(&fb.mode.format) else {
            return;
        };
        copy_damage(
            fb.bytes(),
            fb.mode.stride as usize,
            format,
            pixels.frame_mut(),
            self.size,
            (x, y, width, height),
        );
    }

    fn on_event(&mut self, event_loop: &ActiveEventLoop, event: Event) {
        match event {
            Event::Damage {
                x,
                y,
                width,
                height,
                ..
            } => {
                self.copy_rect(x, y, width, height);
                if let Some(w) = &self.window {
                    w.request_redraw();
                }
            }
            Event::Cursor {
                hot_x,
                hot_y,
                visible,
                image,
                ..
            } => self.set_cursor(event_loop, hot_x, hot_y, visible, image),
            Event::Mode(_) => {}
        }
    }

    /// The guest's cursor image becomes the host's cursor over the window.
    fn set_cursor(
        &mut self,
        event_loop: &ActiveEventLoop,
        hot_x: u32,
        hot_y: u32,
        visible: bool,
        image: Option<String>,
    ) {
        let Some(window) = &self.window else { return };
        window.set_cursor_visible(visible);
        let Some(rgba) = image.and_then(|b64| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.decode(b64).ok()
        }) else {
            return;
        };
        let side = virtio_gpu::CURSOR_WIDTH as u16;
        let (hx, hy) = (hot_x.min(63) as u16, hot_y.min(63) as u16);
        if let Ok(source) = CustomCursor::from_rgba(rgba, side, side, hx, hy) {
            window.set_cursor(event_loop.create_custom_cursor(source));
        }
    }

    fn on_key(&mut self, key: PhysicalKey, state: ElementState) {
        let PhysicalKey::Code(code) = key else { return };
        let Some(evdev) = keymap::evdev_code(code) else {
            return;
        };
        let pressed = state == ElementState::Pressed;
        if pressed {
            self.pressed.insert(evdev);
        } else {
            self.pressed.remove(&evdev);
        }
        self.send(Request::InputKey {
            code: evdev,
            pressed,
        });
    }

    fn release_all_keys(&mut self) {
        for code in std::mem::take(&mut self.pressed) {
            self.send(Request::InputKey {
                code,
                pressed: false,
            });
        }
    }
}

impl ApplicationHandler<UserEvent> for App {
    fn resumed(&mut self, event_loop: &ActiveEventLoop) {
        if self.window.is_some() {
            return;
        }
        if let Err(e) = self.create_window(event_loop) {
            tracing::error!("window: {e}");
            eprintln!("vireo-vmm: cannot show the window: {e}");
            event_loop.exit();
        }
    }

    fn user_event(&mut self, event_loop: &ActiveEventLoop, event: UserEvent) {
        match event {
            UserEvent::Display(DisplayMessage::Mode(mode, framebuffer)) => {
                self.on_mode(mode, framebuffer);
                if let Some(w) = &self.window {
                    w.request_redraw();
                }
            }
            UserEvent::Display(DisplayMessage::Event(event)) => self.on_event(event_loop, event),
            UserEvent::DisplayLost(why) => {
                // The VM is gone (or never came): nothing to power off.
                tracing::info!("window: display connection: {why}");
                self.powered_off = true;
                event_loop.exit();
            }
        }
    }

    fn window_event(&mut self, event_loop: &ActiveEventLoop, _id: WindowId, event: WindowEvent) {
        match event {
            // Closed by its user, or destroyed from outside: either way the VM goes.
            WindowEvent::CloseRequested | WindowEvent::Destroyed => {
                self.power_off();
                event_loop.exit();
            }
            WindowEvent::Resized(size) => {
                if let Some(pixels) = self.pixels.as_mut() {
                    let _ = pixels.resize_surface(size.width.max(1), size.height.max(1));
                }
            }
            WindowEvent::RedrawRequested => {
                if let Some(pixels) = &self.pixels {
                    if let Err(e) = pixels.render() {
                        tracing::warn!("window: render: {e}");
                    }
                }
            }
            WindowEvent::Focused(false) => self.release_all_keys(),
            WindowEvent::KeyboardInput { event, .. } if !event.repeat => {
                self.on_key(event.physical_key, event.state)
            }
            WindowEvent::CursorMoved { position, .. } => {
                if let Some(pixels) = &self.pixels {
                    let (x, y) = pixels
                        .window_pos_to_pixel((position.x as f32, position.y as f32))
                        .unwrap_or_else(|outside| pixels.clamp_pixel_pos(outside));
                    self.send(Request::InputPointer {
                        x: x as u32,
                        y: y as u32,
                    });
                }
            }
            WindowEvent::MouseInput { state, button, .. } => {
                let button = match button {
                    MouseButton::Left => PointerButton::Left,
                    MouseButton::Right => PointerButton::Right,
                    MouseButton::Middle => PointerButton::Middle,
                    MouseButton::Back => PointerButton::Side,
                    MouseButton::Forward => PointerButton::Extra,
                    MouseButton::Other(_) => return,
                };
                self.send(Request::InputButton {
                    button,
                    pressed: state == ElementState::Pressed,
                });
            }
            WindowEvent::MouseWheel {
                delta: MouseScrollDelta::LineDelta(dx, dy),
                ..
            } => {
                // winit: positive y scrolls up (content moves down); the request
                // counts notches down.
                self.send(Request::InputScroll {
                    dx: dx.round() as i32,
                    dy: -(dy.round() as i32),
                });
            }
            _ => {}
        }
    }
}

/// The window's GPU surface. Software Vulkan under Xvfb (lavapipe) now and then refuses
/// a new window's surface, which wgpu reports by panicking: such a refusal is retried a
/// few times before it counts.
fn make_pixels(window: &Arc<Window>, size: (u32, u32)) -> Result<Pixels<'static>, String> {
    const ATTEMPTS: u32 = 4;
    let mut last = String::new();
    for _ in 0..ATTEMPTS {
        // winit panics too, when the X window is destroyed while this runs.
        let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let inner = window.inner_size();
            let surface =
                SurfaceTexture::new(inner.width.max(1), inner.height.max(1), window.clone());
            Pixels::new(size.0, size.1, surface)
        }));
        match attempt {
            Ok(Ok(pixels)) => return Ok(pixels),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "the graphics driver refused the window's surface".into(),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(last)
}

/// The format a mode names (`control::protocol::ScreenMode::format`).
fn pixel_format(name: &str) -> Option<PixelFormat> {
    use PixelFormat::*;
    [
        B8G8R8A8, B8G8R8X8, A8R8G8B8, X8R8G8B8, R8G8B8A8, X8B8G8R8, A8B8G8R8, R8G8B8X8,
    ]
    .into_iter()
    .find(|f| crate::devices::virtio::gpu::display::format_name(*f) == name)
}

/// Copies `rect` (x, y, width, height) from a guest framebuffer (`stride` bytes a row,
/// `format`) into an RGBA frame of `size`, opaque; clipped to both.
fn copy_damage(
    src: &[u8],
    stride: usize,
    format: PixelFormat,
    dst: &mut [u8],
    size: (u32, u32),
    rect: (u32, u32, u32, u32),
) {
    let (x, y, w, h) = rect;
    let (width, height) = (size.0 as usize, size.1 as usize);
    let x0 = (x as usize).min(width);
    let y0 = (y as usize).min(height);
    let x1 = (x as usize).saturating_add(w as usize).min(width);
    let y1 = (y as usize).saturating_add(h as usize).min(height);
    for row in y0..y1 {
        let (Some(src_row), Some(dst_row)) = (
            src.get(row * stride + x0 * 4..row * stride + x1 * 4),
            dst.get_mut((row * width + x0) * 4..(row * width + x1) * 4),
        ) else {
            return;
        };
        for (s, d) in src_row.chunks_exact(4).zip(dst_row.chunks_exact_mut(4)) {
            let [r, g, b, _] = format.to_rgba([s[0], s[1], s[2], s[3]]);
            d.copy_from_slice(&[r, g, b, u8::MAX]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damage_is_copied_converted_and_clipped() {
        // A 4x2 B8G8R8X8 framebuffer with padding at the end of each row.
        let stride = 20;
        let mut src = vec![0u8; stride * 2];
        for row in 0..2 {
            for col in 0..4 {
                let at = row * stride + col * 4;
                src[at..at + 4].copy_from_slice(&[col as u8, row as u8, 0xAA, 0]);
            }
        }
        let mut dst = vec![0u8; 4 * 2 * 4];
        copy_damage(
            &src,
            stride,
            PixelFormat::B8G8R8X8,
            &mut dst,
            (4, 2),
            (1, 1, 10, 10),
        );
        // Row 0 untouched; row 1 from column 1 on: R=0xAA, G=row, B=col, opaque.
        assert!(dst[..16].iter().all(|&b| b == 0));
        assert_eq!(&dst[16..20], &[0; 4]);
        assert_eq!(&dst[20..24], &[0xAA, 1, 1, 255]);
        assert_eq!(&dst[28..32], &[0xAA, 1, 3, 255]);
    }

    #[test]
    fn every_format_name_parses_back() {
        for name in ["B8G8R8A8", "X8R8G8B8", "R8G8B8X8", "A8B8G8R8"] {
            let format = pixel_format(name).unwrap();
            assert_eq!(
                crate::devices::virtio::gpu::display::format_name(format),
                name
            );
        }
        assert!(pixel_format("RGB565").is_none());
    }
}
