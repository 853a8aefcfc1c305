//! A VM's screen in a window: a client of the engine's display (`display-attach`: the
//! framebuffer memfd mapped read-only, then mode, damage and cursor events), read on a
//! thread of its own; each frame the UI copies only the damaged rectangles into the
//! texture. Keys go to the guest by physical position as evdev codes, the pointer as
//! absolute tablet positions in guest pixels, both on an input thread, so nothing in
//! `ui` waits on the engine.
//!
//! The guest agent's state (from the VM's guest link, through the backend) shows in the
//! toolbar, feature by feature. While the agent does not say the guest uses the tablet,
//! a click captures the pointer (confined to the window, Right Ctrl releases it); files
//! dropped on the window become a request the app hands to the backend.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::{Duration, Instant};

use eframe::egui::{
    self, Color32, ColorImage, Rect, RichText, Sense, TextureHandle, TextureOptions,
};
use vireo_vmm::control::client::{Control, DisplayClient, DisplayMessage, MappedFramebuffer};
use vireo_vmm::control::protocol::{Event, PointerButton, Request, ScreenMode};
use vireo_vmm::devices::virtio::gpu::display::format_name;
use virtio_gpu::PixelFormat;

use super::backend::DropState;
use super::keymap::evdev_code;
use super::shares_dialog::SharesDialog;
use crate::guest_link::{AgentStatus, Feature};
use crate::supervisor::Action;
use crate::vm_config::{ClipboardDirection, SharedFolder};

/// evdev code of Right Ctrl, the key that releases a captured pointer.
const KEY_RIGHTCTRL: u16 = 97;

/// evdev codes of the Ctrl+Alt+Del chord.
const KEY_LEFTCTRL: u16 = 29;
const KEY_LEFTALT: u16 = 56;
const KEY_DELETE: u16 = 111;

/// What the display thread passes on.
enum Incoming {
    Message(DisplayMessage),
    /// The connection ended: the VM stopped, or the engine let go.
    Lost(String),
}

/// A rectangle of the guest's screen, in its pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Damage {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

pub struct DisplayView {
    pub vm_id: String,
    pub title: String,
    incoming: Receiver<Incoming>,
    input: Sender<Request>,
    framebuffer: Option<MappedFramebuffer>,
    format: Option<PixelFormat>,
    texture: Option<TextureHandle>,
    /// Rectangles damaged since the last frame, uploaded at the start of the next.
    damage: Vec<Damage>,
    lost: Option<String>,
    /// evdev codes held down in the guest, released when the window loses focus.
    pressed: BTreeSet<u16>,
    last_pointer: Option<(u32, u32)>,
    /// The guest's cursor, drawn where the host pointer is (the tablet puts the guest's
    /// there too), so it follows with no lag.
    cursor: GuestCursor,
    scaling: Scaling,
    fullscreen: bool,
    /// Offer the window's size to the guest as its display mode.
    pub resize_guest: bool,
    resize: ResizeRequest,
    /// Bytes uploaded to the texture so far (tests read it).
    pub uploaded_bytes: u64,
    /// The guest agent as the VM's link last reported it (the app sets it each frame).
    pub agent: AgentStatus,
    /// The VM's clipboard direction setting (the app sets it each frame).
    pub clipboard: ClipboardDirection,
    /// Whether the VM is paused (the toolbar then offers Resume).
    pub paused: bool,
    /// The newest drop's copy, if any (the app sets it each frame).
    pub drop: Option<DropState>,
    /// The pointer is confined to the window (no agent-driven tablet in the guest).
    captured: bool,
    /// What the user asked of the app in this frame.
    requests: Vec<ViewRequest>,
    /// The VM's shared folders (the app sets them each frame) and their dialog.
    pub shares: Vec<SharedFolder>,
    shares_dialog: SharesDialog,
}

/// What the VM window asks of the app (which passes it to the backend).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewRequest {
    Clipboard(ClipboardDirection),
    /// The toolbar's Screenshot: the screen to a PNG in the VM's folder.
    Screenshot,
    /// Share one more host folder with the guest (it is mounted at once if it runs).
    AddShare(SharedFolder),
    /// Stop sharing the folder of this name.
    RemoveShare(String),
    /// Files and folders dropped on the window.
    Drop(Vec<PathBuf>),
}

impl DisplayView {
    /// Connects to the display of the VM whose control socket is `socket`; `wake` is
    /// called when something arrives (the UI's repaint request).
    pub fn open(
        vm_id: String,
        title: String,
        socket: PathBuf,
        wake: impl Fn() + Send + 'static,
    ) -> DisplayView {
        let (tx, incoming) = mpsc::channel();
        let display_socket = socket.clone();
        std::thread::Builder::new()
            .name(format!("display-{vm_id}"))
            .spawn(move || read_display(&display_socket, &tx, &wake))
            .ok();
        let (input, requests) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("input-{vm_id}"))
            .spawn(move || send_input(&socket, &requests))
            .ok();
        DisplayView {
            vm_id,
            title,
            incoming,
            input,
            framebuffer: None,
            format: None,
            texture: None,
            damage: Vec::new(),
            lost: None,
            pressed: BTreeSet::new(),
            last_pointer: None,
            cursor: GuestCursor::default(),
            scaling: Scaling::Fit,
            fullscreen: false,
            resize_guest: true,
            resize: ResizeRequest::default(),
            uploaded_bytes: 0,
            agent: AgentStatus::no_agent(),
            shares: Vec::new(),
            shares_dialog: SharesDialog::default(),
            clipboard: ClipboardDirection::default(),
            paused: false,
            drop: None,
            captured: false,
            requests: Vec::new(),
        }
    }

    /// The guest's screen size, once the guest set a mode.
    pub fn screen_size(&self) -> Option<(u32, u32)> {
        self.framebuffer
            .as_ref()
            .map(|f| (f.mode.width, f.mode.height))
    }

    /// Why the display is gone, if it is.
    pub fn lost(&self) -> Option<&str> {
        self.lost.as_deref()
    }

    /// Whether the pointer is captured (confined to the window).
    pub fn captured(&self) -> bool {
        self.captured
    }

    /// What the user asked for since the last call.
    pub fn take_requests(&mut self) -> Vec<ViewRequest> {
        std::mem::take(&mut self.requests)
    }

    /// The shared-folders dialog, in the VM window's viewport (while it is open).
    pub fn shares_window(&mut self, ctx: &egui::Context) {
        let asked = self.shares_dialog.show(ctx, &self.shares);
        self.requests.extend(asked);
    }

    /// Shares `path` as the folder picker would have (tests cannot drive the desktop's
    /// picker).
    pub fn share_folder(&mut self, path: PathBuf, read_only: bool) {
        self.requests
            .push(ViewRequest::AddShare(SharedFolder::for_path(
                path, read_only,
            )));
    }

    /// Takes what the display thread received and uploads the damage.
    pub fn pump(&mut self, ctx: &egui::Context) {
        while let Ok(incoming) = self.incoming.try_recv() {
            match incoming {
                Incoming::Message(DisplayMessage::Mode(mode, mapped)) => {
                    self.set_mode(ctx, &mode, mapped)
                }
                Incoming::Message(DisplayMessage::Event(Event::Damage {
                    x,
                    y,
                    width,
                    height,
                    ..
                })) => self.damage.push(Damage {
                    x,
                    y,
                    width,
                    height,
                }),
                Incoming::Message(DisplayMessage::Event(Event::Cursor {
                    hot_x,
                    hot_y,
                    visible,
                    image,
                    ..
                })) => self.set_cursor(ctx, hot_x, hot_y, visible, image.as_deref()),
                // The client turns mode events into `DisplayMessage::Mode` (with the memfd).
                Incoming::Message(DisplayMessage::Event(Event::Mode(_))) => {}
                Incoming::Lost(why) => {
                    self.lost = Some(why);
                    self.framebuffer = None;
                }
            }
        }
        self.upload_damage();
    }

    fn set_mode(
        &mut self,
        ctx: &egui::Context,
        mode: &ScreenMode,
        mapped: Option<MappedFramebuffer>,
    ) {
        self.damage.clear();
        self.framebuffer = mapped;
        self.format = pixel_format(&mode.format);
        let Some(image) = self.framebuffer.as_ref().and_then(|fb| {
            convert(
                fb,
                self.format?,
                Damage {
                    x: 0,
                    y: 0,
                    width: mode.width,
                    height: mode.height,
                },
            )
        }) else {
            self.texture = None;
            return;
        };
        self.uploaded_bytes += (image.pixels.len() * 4) as u64;
        self.texture = Some(ctx.load_texture(
            format!("screen-{}", self.vm_id),
            image,
            TextureOptions::LINEAR,
        ));
    }

    fn upload_damage(&mut self) {
        let (Some(fb), Some(format), Some(texture)) =
            (&self.framebuffer, self.format, &mut self.texture)
        else {
            self.damage.clear();
            return;
        };
        // The framebuffer holds the newest pixels: a rectangle inside another one
        // damaged since the last frame needs no upload of its own (a guest flushing
        // faster than the screen refreshes would otherwise cost a full upload per flush).
        for rect in coalesce(std::mem::take(&mut self.damage)) {
            let Some(rect) = clip(rect, fb.mode.width, fb.mode.height) else {
                continue;
            };
            if let Some(image) = convert(fb, format, rect) {
                self.uploaded_bytes += (image.pixels.len() * 4) as u64;
                texture.set_partial(
                    [rect.x as usize, rect.y as usize],
                    image,
                    TextureOptions::LINEAR,
                );
            }
        }
    }

    /// Draws the screen scaled to fit, and forwards input over it.
    pub fn ui(&mut self, ui: &mut egui::Ui) {
        self.take_dropped(ui);
        self.draw_drop(ui);
        if let Some(why) = &self.lost {
            ui.label(format!("The display is gone: {why}"));
            return;
        }
        let (Some(texture), Some((w, h))) = (&self.texture, self.screen_size()) else {
            ui.label("Waiting for the guest's screen…");
            return;
        };
        let texture = texture.id();
        let scaling = self.scaling;
        if self.resize_guest && scaling != Scaling::Native {
            let area = ui.max_rect().size() * ui.ctx().pixels_per_point();
            let wanted = (area.x.round() as u32, area.y.round() as u32);
            if let Some((width, height)) = self.resize.settle(wanted, (w, h), Instant::now()) {
                self.send(Request::DisplayResize { width, height });
            }
            if self.resize.waiting() {
                // Look again once the size has settled; otherwise no frame is drawn for it.
                ui.ctx().request_repaint_after(RESIZE_SETTLE);
            }
        }
        let response = if scaling == Scaling::Native {
            egui::ScrollArea::both()
                .show(ui, |ui| {
                    let size = egui::vec2(w as f32, h as f32);
                    ui.add(egui::Image::new((texture, size)).sense(Sense::click_and_drag()))
                })
                .inner
        } else {
            let rect = place(scaling, ui.max_rect(), (w, h));
            let image = egui::Image::new((texture, rect.size())).sense(Sense::click_and_drag());
            ui.put(rect, image)
        };
        if response.hovered() {
            let scale = response.rect.size() / egui::vec2(w as f32, h as f32);
            self.draw_cursor(ui, scale);
        }
        self.forward_input(ui, response.rect, (w, h), response.hovered());
    }

    /// The cursor the guest set (`Event::Cursor`): a new image when it carries one.
    fn set_cursor(
        &mut self,
        ctx: &egui::Context,
        hot_x: u32,
        hot_y: u32,
        visible: bool,
        image: Option<&str>,
    ) {
        self.cursor.visible = visible;
        self.cursor.hot = egui::vec2(hot_x as f32, hot_y as f32);
        if let Some(image) = image.and_then(cursor_image) {
            match &mut self.cursor.texture {
                Some(t) => t.set(image, TextureOptions::LINEAR),
                None => {
                    self.cursor.texture = Some(ctx.load_texture(
                        format!("cursor-{}", self.vm_id),
                        image,
                        TextureOptions::LINEAR,
                    ))
                }
            }
        }
    }

    /// Over the screen the host pointer is hidden and the guest's image drawn in its
    /// place (none if the guest hid its cursor); the default arrow until the guest sets one.
    fn draw_cursor(&self, ui: &egui::Ui, scale: egui::Vec2) {
        let Some(texture) = &self.cursor.texture else {
            return;
        };
        ui.ctx().set_cursor_icon(egui::CursorIcon::None);
        let Some(pos) = ui.input(|i| i.pointer.hover_pos()) else {
            return;
        };
        if self.cursor.visible {
            let rect =
                Rect::from_min_size(pos - self.cursor.hot * scale, texture.size_vec2() * scale);
            let uv = Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0));
            ui.painter().image(texture.id(), rect, uv, Color32::WHITE);
        }
    }

    /// Files dropped on the window (or hovering over it, to say what a drop does).
    fn take_dropped(&mut self, ui: &egui::Ui) {
        let (dropped, hovering) = ui.input(|i| {
            let paths: Vec<PathBuf> = i
                .raw
                .dropped_files
                .iter()
                .map(|f| f.path().to_owned())
                .filter(|p| !p.as_os_str().is_empty())
                .collect();
            (paths, !i.raw.hovered_files.is_empty())
        });
        if !dropped.is_empty() {
            self.requests.push(ViewRequest::Drop(dropped));
        }
        if hovering {
            let rect = ui.max_rect();
            ui.painter()
                .rect_filled(rect, 0.0, Color32::from_black_alpha(160));
            ui.painter().text(
                rect.center(),
                egui::Align2::CENTER_CENTER,
                "Drop to copy into the VM's shared folder",
                egui::FontId::proportional(22.0),
                Color32::WHITE,
            );
        }
    }

    /// The newest drop's progress (or outcome), over the bottom of the screen.
    fn draw_drop(&self, ui: &egui::Ui) {
        let Some(drop) = &self.drop else { return };
        let p = drop.progress;
        let text = match &drop.finished {
            Some(Ok(done)) => done.clone(),
            Some(Err(why)) => format!("copy failed: {why}"),
            None => format!(
                "copying {} of {} files into the shared folder…",
                p.files_done, p.files_total
            ),
        };
        let fraction = if p.bytes_total == 0 {
            1.0
        } else {
            p.bytes_done as f32 / p.bytes_total as f32
        };
        egui::Area::new(ui.scope_id().with("drop"))
            .anchor(egui::Align2::CENTER_BOTTOM, egui::vec2(0.0, -8.0))
            .show(ui.ctx(), |ui| {
                egui::Frame::popup(ui.style()).show(ui, |ui| {
                    ui.set_width(420.0);
                    if drop.finished.is_none() {
                        ui.add(egui::ProgressBar::new(fraction).show_percentage());
                    }
                    ui.label(text);
                });
            });
    }

    /// Confines the pointer to the window until Right Ctrl (or focus loss) releases it.
    fn capture(&mut self, ctx: &egui::Context, on: bool) {
        if self.captured != on {
            self.captured = on;
            let grab = if on {
                egui::CursorGrab::Confined
            } else {
                egui::CursorGrab::None
            };
            ctx.send_viewport_cmd(egui::ViewportCommand::CursorGrab(grab));
        }
    }

    fn forward_input(&mut self, ui: &egui::Ui, rect: Rect, (w, h): (u32, u32), hovered: bool) {
        let events = ui.input(|i| i.events.clone());
        for event in events {
            match event {
                egui::Event::Key {
                    key,
                    physical_key,
                    pressed,
                    repeat,
                    ..
                } => {
                    let code = evdev_code(physical_key.unwrap_or(key));
                    if self.captured && code == Some(KEY_RIGHTCTRL) {
                        // The release key is the host's, not the guest's.
                        if pressed {
                            self.capture(ui.ctx(), false);
                        }
                        continue;
                    }
                    if let Some(code) = code {
                        if pressed && !repeat {
                            self.pressed.insert(code);
                        } else if !pressed {
                            self.pressed.remove(&code);
                        }
                        self.send(Request::InputKey { code, pressed });
                    }
                }
                egui::Event::WindowFocused(false) => {
                    self.release_all();
                    self.capture(ui.ctx(), false);
                }
                egui::Event::PointerMoved(pos) if hovered => {
                    let at = guest_point(rect, (w, h), pos);
                    if self.last_pointer != Some(at) {
                        self.last_pointer = Some(at);
                        self.send(Request::InputPointer { x: at.0, y: at.1 });
                    }
                }
                egui::Event::PointerButton {
                    pos,
                    button,
                    pressed,
                    ..
                } if (hovered && rect.contains(pos)) || !pressed => {
                    // (`hovered`: not a click on a menu or popup drawn over the screen.)
                    if pressed && !self.agent.absolute_pointer {
                        self.capture(ui.ctx(), true);
                    }
                    let at = guest_point(rect, (w, h), pos);
                    self.send(Request::InputPointer { x: at.0, y: at.1 });
                    if let Some(button) = pointer_button(button) {
                        self.send(Request::InputButton { button, pressed });
                    }
                }
                egui::Event::MouseWheel { delta, .. } if hovered => {
                    let (dx, dy) = (delta.x.signum() as i32, -delta.y.signum() as i32);
                    if dx != 0 || dy != 0 {
                        self.send(Request::InputScroll { dx, dy });
                    }
                }
                _ => {}
            }
        }
    }

    /// The toolbar under the screen; returns the action the user asked for.
    pub fn toolbar(&mut self, ui: &mut egui::Ui) -> Option<Action> {
        let mut asked = None;
        ui.horizontal(|ui| {
            let pause_or_resume = if self.paused {
                Action::Resume
            } else {
                Action::Pause
            };
            for action in [
                pause_or_resume,
                Action::Save,
                Action::Shutdown,
                Action::PowerOff,
            ] {
                if ui.button(action.label()).clicked() {
                    asked = Some(action);
                }
            }
            ui.separator();
            if ui
                .button("Screenshot")
                .on_hover_text("Saves the guest's screen as a PNG in the VM's screenshots folder")
                .clicked()
            {
                self.requests.push(ViewRequest::Screenshot);
            }
            if ui
                .selectable_label(self.shares_dialog.open, "Shared folders")
                .clicked()
            {
                self.shares_dialog.open = !self.shares_dialog.open;
            }
            if ui.button("Send Ctrl+Alt+Del").clicked() {
                self.send_chord(&[KEY_LEFTCTRL, KEY_LEFTALT, KEY_DELETE]);
            }
            // How the screen is shown: a menu, so the toolbar fits a small guest's window.
            ui.menu_button("View", |ui| self.view_menu(ui));
            ui.separator();
            self.agent_status(ui);
            if self.captured {
                ui.label(
                    RichText::new("Press Right Ctrl to release the pointer")
                        .color(ui.visuals().warn_fg_color),
                );
            }
            if let Some(why) = &self.lost {
                ui.label(why);
            }
        });
        asked
    }

    /// Scaling, the guest's display following the window, fullscreen.
    fn view_menu(&mut self, ui: &mut egui::Ui) {
        for (mode, label) in [
            (Scaling::Fit, "Fit"),
            (Scaling::Native, "1:1"),
            (Scaling::Fill, "Fill"),
        ] {
            ui.radio_value(&mut self.scaling, mode, label);
        }
        ui.separator();
        ui.checkbox(&mut self.resize_guest, "Resize guest with the window");
        let mut fullscreen = self.fullscreen;
        if ui.checkbox(&mut fullscreen, "Fullscreen").changed() {
            self.fullscreen = fullscreen;
            ui.ctx()
                .send_viewport_cmd(egui::ViewportCommand::Fullscreen(fullscreen));
        }
    }

    /// The agent's features: clipboard (a menu with its direction), folders, time, mouse.
    fn agent_status(&mut self, ui: &mut egui::Ui) {
        let clipboard = self.agent.clipboard.clone();
        let detail = self.agent.clipboard_detail();
        let menu = ui
            .menu_button(format!("Clipboard {}", clipboard.sign()), |ui| {
                ui.label(format!("Clipboard: {detail}"));
                ui.separator();
                for direction in ClipboardDirection::ALL {
                    if ui
                        .radio(self.clipboard == direction, direction.label())
                        .clicked()
                    {
                        self.requests.push(ViewRequest::Clipboard(direction));
                        ui.close();
                    }
                }
            })
            .response;
        menu.on_hover_text(format!("Clipboard: {detail}"));
        for (name, feature) in &self.agent.features()[1..] {
            let text = RichText::new(format!("{name} {}", feature.sign()));
            let text = match feature {
                Feature::Error(_) => text.color(ui.visuals().error_fg_color),
                _ => text,
            };
            ui.label(text)
                .on_hover_text(format!("{name}: {}", feature.detail()));
        }
    }

    /// Presses `codes` in order and releases them in reverse, as a person would.
    fn send_chord(&self, codes: &[u16]) {
        for &code in codes {
            self.send(Request::InputKey {
                code,
                pressed: true,
            });
        }
        for &code in codes.iter().rev() {
            self.send(Request::InputKey {
                code,
                pressed: false,
            });
        }
    }

    /// Key-up for every key still down, so nothing sticks when focus leaves.
    pub fn release_all(&mut self) {
        for code in std::mem::take(&mut self.pressed) {
            self.send(Request::InputKey {
                code,
                pressed: false,
            });
        }
    }

    fn send(&self, request: Request) {
        // The input thread ends with the display; a lost VM needs no input.
        let _ = self.input.send(request);
    }
}

/// How long the window's size must stay the same before the guest is offered it: a
/// window being dragged larger would otherwise change the guest's mode at every step.
pub const RESIZE_SETTLE: Duration = Duration::from_millis(300);

/// The window-size-to-guest-mode negotiation: each size is offered once, after it has
/// settled, and only if the guest does not already have it.
#[derive(Debug, Default)]
pub struct ResizeRequest {
    /// The size seen last and since when.
    seen: Option<((u32, u32), Instant)>,
    /// The size offered last.
    offered: Option<(u32, u32)>,
}

impl ResizeRequest {
    /// Whether a size is waiting to settle (and be offered).
    pub fn waiting(&self) -> bool {
        self.seen
            .is_some_and(|(size, _)| self.offered != Some(size))
    }

    /// Returns the size to offer now, if any.
    pub fn settle(
        &mut self,
        wanted: (u32, u32),
        current: (u32, u32),
        now: Instant,
    ) -> Option<(u32, u32)> {
        if wanted == current || wanted.0 < 64 || wanted.1 < 64 {
            self.seen = None;
            return None;
        }
        match self.seen {
            Some((size, since)) if size == wanted => {
                if now.duration_since(since) >= RESIZE_SETTLE && self.offered != Some(wanted) {
                    self.offered = Some(wanted);
                    return Some(wanted);
                }
                None
            }
            _ => {
                self.seen = Some((wanted, now));
                None
            }
        }
    }
}

/// How the guest's screen fills the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scaling {
    /// As large as fits with its proportions kept, centred.
    Fit,
    /// One guest pixel to one window pixel, scrolled if the window is smaller.
    Native,
    /// Stretched over the whole window.
    Fill,
}

/// Where a `w`x`h` screen goes in `area` (`Fit` and `Fill`; `Native` scrolls instead).
/// Offsets are whole pixels so that a 1:1 screen is not blurred by filtering.
pub fn place(scaling: Scaling, area: Rect, (w, h): (u32, u32)) -> Rect {
    let screen = egui::vec2(w as f32, h as f32);
    let size = match scaling {
        Scaling::Fill => area.size(),
        Scaling::Native => screen,
        Scaling::Fit => {
            let scale = (area.width() / screen.x)
                .min(area.height() / screen.y)
                .max(0.05);
            screen * scale
        }
    };
    let offset = ((area.size() - size) / 2.0).max(egui::Vec2::ZERO).floor();
    Rect::from_min_size(area.min + offset, size)
}

#[derive(Default)]
struct GuestCursor {
    texture: Option<TextureHandle>,
    hot: egui::Vec2,
    visible: bool,
}

/// The cursor image of a `cursor` event: 64x64 RGBA, base64. It comes from the guest
/// through the engine: anything else is ignored.
pub fn cursor_image(base64_rgba: &str) -> Option<ColorImage> {
    use base64::Engine as _;
    const SIDE: usize = 64;
    // Base64 of 16 KiB is under 22 KiB: do not decode an arbitrarily long string.
    if base64_rgba.len() > 4 * (SIDE * SIDE * 4).div_ceil(3) {
        return None;
    }
    let rgba = base64::engine::general_purpose::STANDARD
        .decode(base64_rgba)
        .ok()?;
    (rgba.len() == SIDE * SIDE * 4).then(|| ColorImage::from_rgba_unmultiplied([SIDE, SIDE], &rgba))
}

/// Where `pos` (window points) falls on the guest's screen drawn in `rect`, clamped.
pub fn guest_point(rect: Rect, (w, h): (u32, u32), pos: egui::Pos2) -> (u32, u32) {
    let fx = ((pos.x - rect.left()) / rect.width()).clamp(0.0, 1.0);
    let fy = ((pos.y - rect.top()) / rect.height()).clamp(0.0, 1.0);
    let x = ((fx * w as f32) as u32).min(w.saturating_sub(1));
    let y = ((fy * h as f32) as u32).min(h.saturating_sub(1));
    (x, y)
}

fn pointer_button(button: egui::PointerButton) -> Option<PointerButton> {
    Some(match button {
        egui::PointerButton::Primary => PointerButton::Left,
        egui::PointerButton::Secondary => PointerButton::Right,
        egui::PointerButton::Middle => PointerButton::Middle,
        egui::PointerButton::Extra1 => PointerButton::Side,
        egui::PointerButton::Extra2 => PointerButton::Extra,
    })
}

/// The format a mode names.
fn pixel_format(name: &str) -> Option<PixelFormat> {
    use PixelFormat::*;
    [
        B8G8R8A8, B8G8R8X8, A8R8G8B8, X8R8G8B8, R8G8B8A8, X8B8G8R8, A8B8G8R8, R8G8B8X8,
    ]
    .into_iter()
    .find(|f| format_name(*f) == name)
}

/// The rectangles of `damage` not inside another one (duplicates kept once), largest
/// first.
pub fn coalesce(mut damage: Vec<Damage>) -> Vec<Damage> {
    damage.sort_by_key(|d| std::cmp::Reverse(u64::from(d.width) * u64::from(d.height)));
    let mut kept: Vec<Damage> = Vec::with_capacity(damage.len());
    for d in damage {
        if !kept.iter().any(|k| contains(k, &d)) {
            kept.push(d);
        }
    }
    kept
}

fn contains(outer: &Damage, inner: &Damage) -> bool {
    let right = |d: &Damage| u64::from(d.x) + u64::from(d.width);
    let bottom = |d: &Damage| u64::from(d.y) + u64::from(d.height);
    outer.x <= inner.x
        && outer.y <= inner.y
        && right(outer) >= right(inner)
        && bottom(outer) >= bottom(inner)
}

/// `rect` cut to a `width`x`height` screen; `None` if nothing is left.
pub fn clip(rect: Damage, width: u32, height: u32) -> Option<Damage> {
    let x0 = rect.x.min(width);
    let y0 = rect.y.min(height);
    let x1 = rect.x.saturating_add(rect.width).min(width);
    let y1 = rect.y.saturating_add(rect.height).min(height);
    (x1 > x0 && y1 > y0).then_some(Damage {
        x: x0,
        y: y0,
        width: x1 - x0,
        height: y1 - y0,
    })
}

/// The pixels of `rect` (already clipped) as an opaque RGBA image.
fn convert(fb: &MappedFramebuffer, format: PixelFormat, rect: Damage) -> Option<ColorImage> {
    let rect = clip(rect, fb.mode.width, fb.mode.height)?;
    let bytes = fb.bytes();
    let stride = fb.mode.stride as usize;
    let mut pixels = Vec::with_capacity(rect.width as usize * rect.height as usize);
    for row in rect.y..rect.y + rect.height {
        let start = row as usize * stride + rect.x as usize * 4;
        let src = bytes.get(start..start + rect.width as usize * 4)?;
        pixels.extend(src.chunks_exact(4).map(|s| {
            let [r, g, b, _] = format.to_rgba([s[0], s[1], s[2], s[3]]);
            Color32::from_rgb(r, g, b)
        }));
    }
    Some(ColorImage::new(
        [rect.width as usize, rect.height as usize],
        pixels,
    ))
}

fn read_display(socket: &std::path::Path, tx: &Sender<Incoming>, wake: &dyn Fn()) {
    let (mut client, first) = match DisplayClient::attach(socket) {
        Ok(attached) => attached,
        Err(e) => {
            let _ = tx.send(Incoming::Lost(format!("cannot attach to the display: {e}")));
            wake();
            return;
        }
    };
    let mut next: std::io::Result<DisplayMessage> = Ok(first);
    loop {
        match next {
            Ok(message) => {
                if tx.send(Incoming::Message(message)).is_err() {
                    return; // The window closed.
                }
            }
            Err(e) => {
                let why = if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    "the VM stopped".to_owned()
                } else {
                    e.to_string()
                };
                let _ = tx.send(Incoming::Lost(why));
                wake();
                return;
            }
        }
        wake();
        next = client.next_message();
    }
}

fn send_input(socket: &std::path::Path, requests: &Receiver<Request>) {
    let mut control = None;
    for request in requests {
        if control.is_none() {
            control = Control::connect(socket).ok();
        }
        let Some(c) = control.as_mut() else { continue };
        if c.ask(&request).is_err() {
            control = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damage_inside_other_damage_is_uploaded_once() {
        let d = |x, y, width, height| Damage {
            x,
            y,
            width,
            height,
        };
        let full = d(0, 0, 1920, 1080);
        assert_eq!(coalesce(vec![full, full, full]), vec![full]);
        assert_eq!(coalesce(vec![d(10, 10, 8, 8), full]), vec![full]);
        let (a, b) = (d(0, 0, 10, 10), d(5, 5, 10, 10));
        assert_eq!(
            coalesce(vec![a, b]),
            vec![a, b],
            "overlapping, neither inside"
        );
        assert_eq!(coalesce(vec![d(u32::MAX, 0, u32::MAX, 1), a]).len(), 2);
        assert_eq!(coalesce(vec![]), vec![]);
    }

    #[test]
    fn damage_is_clipped_to_the_screen() {
        let d = |x, y, width, height| Damage {
            x,
            y,
            width,
            height,
        };
        assert_eq!(clip(d(10, 10, 100, 100), 50, 40), Some(d(10, 10, 40, 30)));
        assert_eq!(clip(d(60, 0, 10, 10), 50, 40), None);
        assert_eq!(clip(d(u32::MAX, 0, u32::MAX, 1), 50, 40), None);
        assert_eq!(clip(d(0, 0, 0, 5), 50, 40), None);
    }

    #[test]
    fn cursor_images_are_64x64_rgba_or_ignored() {
        use base64::Engine as _;
        let encode = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        let image = cursor_image(&encode(&[0xff; 64 * 64 * 4])).unwrap();
        assert_eq!(image.size, [64, 64]);
        assert!(cursor_image(&encode(&[0xff; 64 * 64 * 4 - 1])).is_none());
        assert!(cursor_image(&encode(&[0xff; 64 * 64 * 8])).is_none());
        assert!(cursor_image("not base64!").is_none());
        assert!(cursor_image("").is_none());
    }

    #[test]
    fn a_window_size_is_offered_once_settled_and_once_only() {
        let t0 = Instant::now();
        let later = |ms| t0 + Duration::from_millis(ms);
        let mut r = ResizeRequest::default();
        assert_eq!(
            r.settle((1024, 768), (1024, 768), t0),
            None,
            "the guest has it"
        );
        assert_eq!(r.settle((800, 600), (1024, 768), t0), None);
        assert_eq!(
            r.settle((810, 600), (1024, 768), later(100)),
            None,
            "still moving"
        );
        assert_eq!(r.settle((810, 600), (1024, 768), later(300)), None);
        assert_eq!(
            r.settle((810, 600), (1024, 768), later(400)),
            Some((810, 600))
        );
        assert_eq!(
            r.settle((810, 600), (1024, 768), later(900)),
            None,
            "offered once"
        );
        assert_eq!(
            r.settle((10, 600), (1024, 768), later(2000)),
            None,
            "too small"
        );
    }

    #[test]
    fn screens_are_placed_by_scaling_mode() {
        let area = Rect::from_min_size(egui::pos2(0.0, 0.0), egui::vec2(1024.0, 768.0));
        // The window is the screen's size: Fit is 1:1 from the corner.
        assert_eq!(place(Scaling::Fit, area, (1024, 768)), area);
        // Twice as large and wider: scaled by 2 on both axes, centred on whole pixels.
        let big = Rect::from_min_size(egui::pos2(0.0, 0.0), egui::vec2(2200.0, 1536.0));
        let fit = place(Scaling::Fit, big, (1024, 768));
        assert_eq!(fit.size(), egui::vec2(2048.0, 1536.0));
        assert_eq!(fit.min, egui::pos2(76.0, 0.0));
        assert_eq!(place(Scaling::Fill, big, (1024, 768)), big);
        let small = Rect::from_min_size(egui::pos2(0.0, 0.0), egui::vec2(500.0, 500.0));
        assert_eq!(
            place(Scaling::Fit, small, (1000, 500)).size(),
            egui::vec2(500.0, 250.0)
        );
        assert_eq!(
            place(Scaling::Fit, small, (1000, 500)).min,
            egui::pos2(0.0, 125.0)
        );
    }

    #[test]
    fn pointer_positions_scale_to_guest_pixels() {
        let rect = Rect::from_min_size(egui::pos2(100.0, 50.0), egui::vec2(512.0, 384.0));
        assert_eq!(
            guest_point(rect, (1024, 768), egui::pos2(100.0, 50.0)),
            (0, 0)
        );
        assert_eq!(
            guest_point(rect, (1024, 768), egui::pos2(356.0, 242.0)),
            (512, 384)
        );
        assert_eq!(
            guest_point(rect, (1024, 768), egui::pos2(9999.0, -5.0)),
            (1023, 0)
        );
    }
}
