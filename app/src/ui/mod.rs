//! The window: the library (`library_view`), the New VM wizard (`wizard`) and a window
//! per open VM display (`display_view`, an egui viewport of its own). All disk and
//! engine work is done by the backend thread (`backend`); `VireoApp::ui` drains its
//! updates once per frame and sends it commands.

pub mod activity;
pub mod backend;
pub mod display_view;
pub mod keymap;
#[cfg(test)]
mod kittest_support;
pub mod library_view;
pub mod resources_dialog;
pub mod settings_dialog;
pub mod shares_dialog;
pub mod thumbnail;
pub mod wizard;

use std::collections::HashMap;
use std::path::PathBuf;

use eframe::egui::{self, RichText, TextureHandle};

use crate::guest_link::AgentStatus;
use crate::host::HostInfo;
use crate::library::Library;
use crate::paths::Dirs;
use crate::supervisor::{Action, Programs, Supervisor};
use crate::vm_config::OnClose;
use backend::{Backend, Command, DropState, Update, VmRow};
use display_view::{DisplayView, ViewRequest};
use library_view::{Glance, LibraryCommand, LibraryView};
use resources_dialog::{ResourcesDialog, ResourcesOutcome};
use settings_dialog::{SettingsDialog, SettingsOutcome};
use wizard::{Debian12Plan, DemoImagePlan, Wizard, WizardOutcome};

/// The app id: the window class on X11 and app id on Wayland; the .desktop file
/// (`installers/deb/vireo/dev.vireo.Vireo.desktop`) and the icons have this name.
pub const APP_ID: &str = "dev.vireo.Vireo";
/// The VM window's toolbar, under the screen: the window is the screen's size plus this,
/// so the screen shows 1:1.
pub const TOOLBAR_HEIGHT: f32 = 36.0;

pub struct VireoApp {
    dirs: Dirs,
    /// The programs and images the supervisor uses (the wizard asks about the demo).
    programs: Programs,
    host: HostInfo,
    backend: Backend,
    rows: Vec<VmRow>,
    library: LibraryView,
    wizard: Option<Wizard>,
    displays: Vec<DisplayView>,
    /// The last command's outcome, shown at the bottom.
    status: Option<Result<String, String>>,
    /// Whether the library has been read once (before that, "No VMs yet" would lie).
    loaded: bool,
    ctx: egui::Context,
    /// The VM whose window to open at start (`vireo open NAME`).
    open_when_running: Option<String>,
    /// Each running VM's guest agent, as its link last reported it.
    agents: HashMap<String, AgentStatus>,
    /// Each VM's newest drop.
    drops: HashMap<String, DropState>,
    // --- Library extras (issue 7 item 1): tabs, activity, thumbnails, settings. ---
    tab: Tab,
    thumbnails: HashMap<String, TextureHandle>,
    settings: Option<SettingsDialog>,
    resources: Option<ResourcesDialog>,
    /// Where a quit stands (VMs whose choice is "save" are saved first).
    quit: Quit,
    /// Guests that were asked to shut down and did not within the wait: (id, name,
    /// the wait), each asking the user to power it off or wait more.
    shutdown_prompts: Vec<(String, String, std::time::Duration)>,
}

/// The app's quit, which may wait for saves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quit {
    /// No quit asked yet.
    Idle,
    /// Saves run on the backend; closing waits.
    Saving,
    /// The saves are done (or failed and were shown): a close goes through.
    Allowed,
}

/// What the main window shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    Library,
    Activity,
}

impl VireoApp {
    pub fn new(ctx: &egui::Context, dirs: Dirs, programs: Programs, host: HostInfo) -> VireoApp {
        let library = Library::new(&dirs);
        let programs = programs.with_user_images(dirs.images());
        let supervisor = Supervisor::new(dirs.clone(), programs.clone());
        let wake_ctx = ctx.clone();
        let backend = Backend::start(library, supervisor, host.clone(), move || {
            wake_ctx.request_repaint()
        });
        VireoApp {
            dirs,
            programs,
            host,
            backend,
            rows: Vec::new(),
            library: LibraryView::default(),
            wizard: None,
            displays: Vec::new(),
            status: None,
            loaded: false,
            ctx: ctx.clone(),
            open_when_running: None,
            agents: HashMap::new(),
            drops: HashMap::new(),
            tab: Tab::Library,
            thumbnails: HashMap::new(),
            settings: None,
            resources: None,
            quit: Quit::Idle,
            shutdown_prompts: Vec::new(),
        }
    }

    pub fn tab(&self) -> Tab {
        self.tab
    }

    /// Every VM's usage history (locked while held: the backend adds to it).
    pub fn activity(&self) -> std::sync::MutexGuard<'_, activity::Activity> {
        self.backend.activity()
    }

    /// The thumbnail textures shown, by VM id.
    pub fn thumbnails(&self) -> &HashMap<String, TextureHandle> {
        &self.thumbnails
    }

    /// The VMs as last seen (tests read it).
    pub fn rows(&self) -> &[VmRow] {
        &self.rows
    }

    pub fn status(&self) -> Option<&Result<String, String>> {
        self.status.as_ref()
    }

    pub fn loaded(&self) -> bool {
        self.loaded
    }

    /// The open VM window of `vm_id` (tests hand it what a person would pick).
    pub fn display_mut(&mut self, vm_id: &str) -> Option<&mut DisplayView> {
        self.displays.iter_mut().find(|d| d.vm_id == vm_id)
    }

    pub fn displays(&self) -> &[DisplayView] {
        &self.displays
    }

    /// The guest agent of a running VM, as its link last reported it.
    pub fn agent_status(&self, vm_id: &str) -> Option<&AgentStatus> {
        self.agents.get(vm_id)
    }

    /// The newest drop on a VM's window.
    pub fn drop_state(&self, vm_id: &str) -> Option<&DropState> {
        self.drops.get(vm_id)
    }

    /// Copies `paths` into the VM's shared folder, as dropping them on its window does
    /// (the test hook for drops: tests cannot drag files onto a window).
    pub fn drop_files(&mut self, vm_id: &str, paths: Vec<PathBuf>) {
        self.drops.remove(vm_id);
        self.backend.send(Command::Drop {
            id: vm_id.to_owned(),
            paths,
        });
    }

    fn drain(&mut self) {
        for update in self.backend.drain() {
            match update {
                Update::Snapshot(rows) => {
                    // A stopped VM's link and thumbnail are gone: they would be stale.
                    let running = |id: &String| {
                        rows.iter()
                            .any(|r| r.entry_id == *id && r.state.is_running())
                    };
                    self.agents.retain(|id, _| running(id));
                    self.thumbnails.retain(|id, _| running(id));
                    self.rows = rows;
                    self.loaded = true;
                    self.open_requested();
                }
                Update::Done(result) => self.status = Some(result),
                Update::Created { .. } => self.wizard = None,
                Update::Started { id, name } => self.open_display(&id, &name),
                Update::Agent { id, status } => {
                    self.agents.insert(id, status);
                }
                Update::Drop { id, state } => {
                    if let Some(done) = &state.finished {
                        self.status = Some(done.clone());
                    }
                    self.drops.insert(id, state);
                }
                Update::Thumbnail { id, image } => self.set_thumbnail(id, image),
                Update::ShutdownTimedOut { id, name, waited } => {
                    self.shutdown_prompts.retain(|(other, _, _)| *other != id);
                    self.shutdown_prompts.push((id, name, waited));
                }
                Update::QuitSaves(result) => {
                    // Saved: quit now. A failure is shown and the app stays; the next
                    // quit leaves the VMs that did not save running.
                    if result.is_ok() {
                        self.ctx.send_viewport_cmd(egui::ViewportCommand::Close);
                    }
                    self.status = Some(result.map_err(|e| {
                        format!("{e} — these VMs run on; quit again to leave them running")
                    }));
                    self.quit = Quit::Allowed;
                }
            }
        }
    }

    /// A guest did not shut down in time: power it off, or wait more (graceful shutdown
    /// as in VirtualBox: the guest had its chance through the ACPI button and the agent).
    fn shutdown_prompt(&mut self, ui: &mut egui::Ui) {
        let Some((id, name, waited)) = self.shutdown_prompts.first().cloned() else {
            return;
        };
        // A guest that shut down meanwhile needs no answer.
        if !self
            .rows
            .iter()
            .any(|r| r.entry_id == id && r.state.is_running())
        {
            self.shutdown_prompts.remove(0);
            return;
        }
        let mut answer = None;
        egui::Window::new("The guest has not shut down")
            .collapsible(false)
            .resizable(false)
            .anchor(egui::Align2::CENTER_CENTER, egui::Vec2::ZERO)
            .show(ui.ctx(), |ui| {
                ui.label(format!(
                    "\"{name}\" was asked to shut down {} s ago and is still running.",
                    waited.as_secs()
                ));
                ui.label(
                    RichText::new(
                        "Its system may be busy, or may ignore the power button. Powering it \
                         off now loses what its programs have not saved.",
                    )
                    .weak(),
                );
                ui.horizontal(|ui| {
                    if ui.button("Power it off").clicked() {
                        answer = Some(Command::Act(id.clone(), Action::PowerOff));
                    }
                    if ui.button("Keep waiting").clicked() {
                        answer = Some(Command::KeepWaiting(id.clone()));
                    }
                });
            });
        if let Some(command) = answer {
            self.shutdown_prompts.remove(0);
            self.backend.send(command);
        }
    }

    fn set_thumbnail(&mut self, id: String, image: egui::ColorImage) {
        let options = egui::TextureOptions::LINEAR;
        match self.thumbnails.get_mut(&id) {
            Some(texture) => texture.set(image, options),
            None => {
                let texture = self.ctx.load_texture(format!("thumb-{id}"), image, options);
                self.thumbnails.insert(id, texture);
            }
        }
    }

    /// Opens the window `vireo open NAME` asked for, once the library shows the VM.
    fn open_requested(&mut self) {
        let Some(key) = &self.open_when_running else {
            return;
        };
        let found = self.rows.iter().find(|r| {
            r.state.is_running() && (r.entry_id == *key || r.name.eq_ignore_ascii_case(key))
        });
        if let Some(row) = found {
            let (id, name) = (row.entry_id.clone(), row.name.clone());
            self.open_when_running = None;
            self.open_display(&id, &name);
        } else if self.loaded {
            self.status = Some(Err(format!("{key} is not running: start it first")));
            self.open_when_running = None;
        }
    }

    fn open_display(&mut self, id: &str, name: &str) {
        if self
            .displays
            .iter()
            .any(|d| d.vm_id == id && d.lost().is_none())
        {
            return;
        }
        self.displays.retain(|d| d.vm_id != id);
        let socket = self.dirs.runtime.join(id).join("control.sock");
        let ctx = self.ctx.clone();
        self.displays.push(DisplayView::open(
            id.to_owned(),
            format!("{name} — Vireo"),
            socket,
            move || ctx.request_repaint(),
        ));
    }

    fn handle(&mut self, command: LibraryCommand) {
        match command {
            LibraryCommand::NewVm => {
                let plan = DemoImagePlan::of(&self.programs);
                let debian = Debian12Plan::of(&self.programs, &self.dirs.vms());
                self.wizard = Some(
                    Wizard::new(self.host.clone())
                        .with_demo_image(plan)
                        .with_debian12(debian),
                );
            }
            LibraryCommand::Start(id) => self.backend.send(Command::Start(id)),
            LibraryCommand::Act(id, action) => self.act(id, action),
            LibraryCommand::OpenDisplay(id) => {
                let name = self
                    .rows
                    .iter()
                    .find(|r| r.entry_id == id)
                    .map_or(id.clone(), |r| r.name.clone());
                self.open_display(&id, &name);
            }
            LibraryCommand::Delete { id, disk } => self.backend.send(Command::Delete { id, disk }),
            LibraryCommand::Discard(id) => self.backend.send(Command::Discard(id)),
            LibraryCommand::Upgrade(id) => {
                self.status = Some(Ok("moving the VM to the new engine…".into()));
                self.backend.send(Command::Upgrade(id));
            }
            LibraryCommand::Clone { id, name } => {
                self.status = Some(Ok(format!("copying to {name}…")));
                self.backend.send(Command::Clone { id, name });
            }
            LibraryCommand::OpenSettings(id) => {
                let row = self.rows.iter().find(|r| r.entry_id == id);
                if let Some((Ok(config), saved)) =
                    row.map(|r| (r.config.clone(), r.state.is_saved()))
                {
                    let host = self.host.clone();
                    self.settings = Some(SettingsDialog::new(id, config, host, saved));
                }
            }
            LibraryCommand::OpenResources(id) => {
                let row = self.rows.iter().find(|r| r.entry_id == id);
                if let Some((Ok(config), running)) =
                    row.map(|r| (r.config.clone(), r.state.is_running()))
                {
                    let devices = (config.has_disk(), config.network);
                    self.resources = Some(ResourcesDialog::new(
                        id,
                        config.name.clone(),
                        config.resources,
                        devices,
                        self.host.cpus,
                        running,
                    ));
                }
            }
        }
    }

    /// Keyboard shortcuts of the main window (none while a form or dialog has the keys).
    fn shortcuts(&mut self, ui: &mut egui::Ui) {
        if self.wizard.is_some()
            || self.settings.is_some()
            || self.resources.is_some()
            || self.library.dialog_open()
        {
            return;
        }
        let command = |key| egui::KeyboardShortcut::new(egui::Modifiers::COMMAND, key);
        let pressed = |key| ui.input_mut(|i| i.consume_shortcut(&command(key)));
        if pressed(egui::Key::N) {
            self.handle(LibraryCommand::NewVm);
        } else if pressed(egui::Key::Num1) {
            self.tab = Tab::Library;
        } else if pressed(egui::Key::Num2) {
            self.tab = Tab::Activity;
        } else if pressed(egui::Key::R) {
            self.backend.send(Command::Refresh);
        } else if pressed(egui::Key::Q) {
            ui.ctx().send_viewport_cmd(egui::ViewportCommand::Close);
        }
    }

    fn tabs(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            ui.selectable_value(&mut self.tab, Tab::Library, "Library")
                .on_hover_text("Ctrl+1");
            ui.selectable_value(&mut self.tab, Tab::Activity, "Activity")
                .on_hover_text("Ctrl+2");
        });
        ui.separator();
    }

    /// The whole window's content (the eframe `App::ui`, and what kittest drives).
    pub fn show(&mut self, ui: &mut egui::Ui) {
        self.drain();
        if ui.input(|i| i.viewport().close_requested()) && !self.quit_requested() {
            ui.ctx()
                .send_viewport_cmd(egui::ViewportCommand::CancelClose);
        }
        self.shortcuts(ui);
        self.shutdown_prompt(ui);
        self.backend
            .set_graphs_visible(self.loaded && self.wizard.is_none() && self.tab == Tab::Activity);
        egui::Panel::bottom("status").show(ui, |ui| match &self.status {
            Some(Ok(text)) => {
                ui.label(text);
            }
            Some(Err(text)) => {
                ui.label(RichText::new(text).color(ui.visuals().error_fg_color));
            }
            None => {
                ui.label(RichText::new(self.host_summary()).weak());
            }
        });
        egui::CentralPanel::default().show(ui, |ui| {
            if let Some(wizard) = &mut self.wizard {
                let taken: Vec<String> = self.rows.iter().map(|r| r.name.clone()).collect();
                match wizard.ui(ui, &taken) {
                    Some(WizardOutcome::Create {
                        config,
                        start,
                        image,
                    }) => {
                        self.status = Some(Ok(format!("creating {}…", config.name)));
                        self.backend.send(Command::Create {
                            config,
                            start,
                            image,
                        });
                    }
                    Some(WizardOutcome::Cancel) => self.wizard = None,
                    None => {}
                }
            } else if self.loaded {
                self.tabs(ui);
                match self.tab {
                    Tab::Library => {
                        let activity = self.backend.activity();
                        let glance = Glance {
                            thumbnails: &self.thumbnails,
                            activity: &activity,
                        };
                        let commands = self.library.ui(ui, &self.rows, &glance);
                        drop(activity);
                        for command in commands {
                            self.handle(command);
                        }
                    }
                    Tab::Activity => self.backend.activity().ui(ui, &self.rows),
                }
            }
        });
        self.show_settings(ui.ctx());
        self.show_resources(ui.ctx());
        self.show_displays(ui.ctx());
    }

    fn show_settings(&mut self, ctx: &egui::Context) {
        let Some(dialog) = &mut self.settings else {
            return;
        };
        match dialog.show(ctx) {
            Some(SettingsOutcome::Save(settings)) => {
                let id = dialog.vm_id.clone();
                self.backend.send(Command::SaveSettings { id, settings });
                self.settings = None;
            }
            Some(SettingsOutcome::Cancel) => self.settings = None,
            None => {}
        }
    }

    fn show_resources(&mut self, ctx: &egui::Context) {
        let Some(dialog) = &mut self.resources else {
            return;
        };
        match dialog.show(ctx) {
            Some(ResourcesOutcome::Save(resources)) => {
                let id = dialog.vm_id.clone();
                self.backend.send(Command::SaveResources { id, resources });
                self.resources = None;
            }
            Some(ResourcesOutcome::Cancel) => self.resources = None,
            None => {}
        }
    }

    fn host_summary(&self) -> String {
        use crate::host::KvmKind;
        let kvm = match &self.host.kvm {
            KvmKind::Hardware => "hardware virtualization".to_owned(),
            KvmKind::Pvm => {
                "PVM (software virtualization: the self-test runs, stock Linux does not)".to_owned()
            }
            KvmKind::Unknown => "KVM".to_owned(),
            KvmKind::Unusable(why) => format!("KVM not usable: {why}"),
        };
        format!(
            "{} CPUs · {} MiB · {kvm}",
            self.host.cpus, self.host.memory_mib
        )
    }

    fn show_displays(&mut self, ctx: &egui::Context) {
        let mut closed = Vec::new();
        let mut actions = Vec::new();
        let mut requests = Vec::new();
        for (i, display) in self.displays.iter_mut().enumerate() {
            display.pump(ctx);
            display.agent = self.agents.get(&display.vm_id).cloned().unwrap_or_default();
            display.drop = self.drops.get(&display.vm_id).cloned();
            if let Some(row) = self.rows.iter().find(|r| r.entry_id == display.vm_id) {
                if let Ok(config) = &row.config {
                    display.clipboard = config.link.clipboard;
                    display.shares.clone_from(&config.link.shared_folders);
                }
                display.paused = row.state.is_paused();
            }
            let (w, h) = display.screen_size().unwrap_or((1024, 768));
            let builder = egui::ViewportBuilder::default()
                .with_title(&display.title)
                .with_app_id(APP_ID)
                .with_inner_size([w as f32, h as f32 + TOOLBAR_HEIGHT]);
            let id = egui::ViewportId::from_hash_of(("vm", &display.vm_id));
            ctx.show_viewport_immediate(id, builder, |ui, _class| {
                let toolbar = egui::Panel::bottom(("toolbar", &display.vm_id))
                    .exact_size(TOOLBAR_HEIGHT)
                    .show(ui, |ui| display.toolbar(ui));
                if let Some(action) = toolbar.inner {
                    actions.push((display.vm_id.clone(), action));
                }
                egui::CentralPanel::default()
                    .frame(egui::Frame::NONE)
                    .show(ui, |ui| display.ui(ui));
                display.shares_window(ui.ctx());
                if ui.input(|i| i.viewport().close_requested()) {
                    display.release_all();
                    closed.push(i);
                }
            });
            for request in display.take_requests() {
                requests.push((display.vm_id.clone(), request));
            }
        }
        for (id, action) in actions {
            self.act(id, action);
        }
        for (id, request) in requests {
            match request {
                ViewRequest::Clipboard(direction) => {
                    self.backend.send(Command::SetClipboard { id, direction })
                }
                ViewRequest::Drop(paths) => self.drop_files(&id, paths),
                ViewRequest::Screenshot => self.backend.send(Command::Screenshot(id)),
                ViewRequest::AddShare(folder) => {
                    self.status = Some(Ok(format!("sharing {}…", folder.path.display())));
                    self.backend.send(Command::AddShare { id, folder });
                }
                ViewRequest::RemoveShare(name) => {
                    self.backend.send(Command::RemoveShare { id, name })
                }
            }
        }
        for i in closed.into_iter().rev() {
            let id = self.displays[i].vm_id.clone();
            self.close_display(&id);
        }
    }

    /// Closes a VM's window, as its close button does: the VM runs on (it is in the
    /// library), or is saved if that is its `[window] on_close` choice.
    pub fn close_display(&mut self, vm_id: &str) {
        self.displays.retain(|d| d.vm_id != vm_id);
        if self.on_close(vm_id) == Some(OnClose::Save) {
            self.act(vm_id.to_owned(), Action::Save);
        }
    }

    /// Sends an action to the backend; a save (which writes all of guest memory) says
    /// so while it runs.
    fn act(&mut self, id: String, action: Action) {
        if action == Action::Save {
            let name = self.rows.iter().find(|r| r.entry_id == id);
            let name = name.map_or(id.as_str(), |r| r.name.as_str());
            self.status = Some(Ok(format!("saving {name}…")));
        }
        self.backend.send(Command::Act(id, action));
    }

    /// A running VM's `[window] on_close` choice (`None`: not running or broken).
    fn on_close(&self, id: &str) -> Option<OnClose> {
        let row = self.rows.iter().find(|r| r.entry_id == id)?;
        match (&row.config, row.state.is_running()) {
            (Ok(config), true) => Some(config.window.on_close),
            _ => None,
        }
    }

    /// Whether the app may close now. The first request with running VMs whose choice
    /// is "save" starts their saves on the backend and says no; the app closes itself
    /// once they are saved (or stays to show why one was not). Tests call this as the
    /// window's close button would.
    pub fn quit_requested(&mut self) -> bool {
        match self.quit {
            Quit::Allowed => true,
            Quit::Saving => false,
            Quit::Idle => {
                let ids: Vec<String> = self
                    .rows
                    .iter()
                    .filter(|r| self.on_close(&r.entry_id) == Some(OnClose::Save))
                    .map(|r| r.entry_id.clone())
                    .collect();
                if ids.is_empty() {
                    return true;
                }
                self.status = Some(Ok(format!("Saving {} VM(s) before quitting…", ids.len())));
                self.quit = Quit::Saving;
                self.backend.send(Command::SaveBeforeQuit(ids));
                false
            }
        }
    }

    /// Whether a quit waits for saves (the library shows "Saving…").
    pub fn saving_before_quit(&self) -> bool {
        self.quit == Quit::Saving
    }
}

impl eframe::App for VireoApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.show(ui);
    }
}

/// Opens the library window; returns when it closes. VMs keep running.
pub fn run(open: Option<String>) -> anyhow::Result<()> {
    let dirs = Dirs::from_env()?;
    let host = HostInfo::detect();
    let options = eframe::NativeOptions {
        renderer: eframe::Renderer::Glow,
        viewport: egui::ViewportBuilder::default()
            .with_title("Vireo")
            .with_app_id(APP_ID)
            .with_inner_size([760.0, 520.0]),
        ..Default::default()
    };
    eframe::run_native(
        "Vireo",
        options,
        Box::new(move |cc| {
            // Dark or light as the desktop is, and following it when it changes.
            cc.egui_ctx.set_theme(egui::ThemePreference::System);
            let mut app = VireoApp::new(&cc.egui_ctx, dirs, Programs::from_current_exe(), host);
            app.open_when_running = open;
            Ok(Box::new(app))
        }),
    )
    .map_err(|e| {
        anyhow::anyhow!("cannot open the window: {e} (is DISPLAY or WAYLAND_DISPLAY set?)")
    })
}
