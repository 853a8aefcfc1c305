//! The library window's list: every VM with its name, OS and state, and what can be
//! done to it. Broken configs are listed with their reason and no actions; a VM whose
//! engine died shows how it ended and the end of its log. Deleting asks first, and
//! deleting the disk is a separate, unticked choice. A running VM shows a live
//! thumbnail of its screen and what it costs (CPU, memory); a stopped one can be cloned
//! (asking for the copy's name) and have its settings changed. A saved VM says when it
//! was saved (and why its last restore was refused, if it was); Start restores it, and
//! "Discard saved state" (asking first) lets it boot afresh.

use std::collections::HashMap;

use eframe::egui::{self, Color32, RichText, TextureHandle};

use super::activity::Activity;
use super::backend::VmRow;
use crate::host::HostInfo;
use crate::library::DiskChoice;
use crate::supervisor::{Action, VmState};
use crate::vm_config;

/// What the user asked for in the list; the app turns each into a backend command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LibraryCommand {
    NewVm,
    Start(String),
    Act(String, Action),
    OpenDisplay(String),
    Delete {
        id: String,
        disk: DiskChoice,
    },
    Clone {
        id: String,
        name: String,
    },
    OpenSettings(String),
    /// CPU weight and limit, disk and network caps: running or not.
    OpenResources(String),
    /// Deletes a saved VM's saved state (confirmed).
    Discard(String),
    /// Moves a running VM to the engine installed now.
    Upgrade(String),
}

/// What the rows show besides the configs: thumbnails and recent usage.
pub struct Glance<'a> {
    pub thumbnails: &'a HashMap<String, TextureHandle>,
    pub activity: &'a Activity,
}

/// A clone waiting for the copy's name.
#[derive(Debug, Clone)]
struct PendingClone {
    id: String,
    source: String,
    name: String,
}

/// A delete waiting for the user's confirmation.
#[derive(Debug, Clone)]
struct PendingDelete {
    id: String,
    name: String,
    delete_disk: bool,
}

/// A discard of saved state waiting for the user's confirmation: (id, name).
type PendingDiscard = (String, String);

#[derive(Default)]
pub struct LibraryView {
    pending_delete: Option<PendingDelete>,
    pending_clone: Option<PendingClone>,
    pending_discard: Option<PendingDiscard>,
}

impl LibraryView {
    /// Whether a dialog of the list is open (keyboard shortcuts wait).
    pub fn dialog_open(&self) -> bool {
        self.pending_delete.is_some()
            || self.pending_clone.is_some()
            || self.pending_discard.is_some()
    }

    pub fn ui(
        &mut self,
        ui: &mut egui::Ui,
        rows: &[VmRow],
        glance: &Glance<'_>,
    ) -> Vec<LibraryCommand> {
        let mut commands = Vec::new();
        if rows.is_empty() {
            ui.vertical_centered(|ui| {
                ui.add_space(60.0);
                ui.label(RichText::new("No VMs yet").heading());
                ui.add_space(12.0);
                if ui
                    .add(egui::Button::new(RichText::new("New VM").size(20.0)))
                    .clicked()
                {
                    commands.push(LibraryCommand::NewVm);
                }
            });
        } else {
            ui.horizontal(|ui| {
                ui.heading("Virtual machines");
                if ui.button("New VM").clicked() {
                    commands.push(LibraryCommand::NewVm);
                }
            });
            ui.separator();
            egui::ScrollArea::vertical().show(ui, |ui| {
                for row in rows {
                    self.row_ui(ui, row, glance, &mut commands);
                    ui.separator();
                }
            });
        }
        self.confirm_delete(ui, &mut commands);
        self.confirm_discard(ui, &mut commands);
        self.ask_clone_name(ui, rows, &mut commands);
        commands
    }

    fn row_ui(
        &mut self,
        ui: &mut egui::Ui,
        row: &VmRow,
        glance: &Glance<'_>,
        commands: &mut Vec<LibraryCommand>,
    ) {
        let config = match &row.config {
            Ok(c) => c,
            Err(reason) => {
                ui.label(RichText::new(&row.name).strong());
                ui.label(
                    RichText::new(format!("broken: {reason}"))
                        .color(Color32::from_rgb(0xe0, 0x40, 0x40)),
                );
                return;
            }
        };
        ui.horizontal(|ui| {
            if row.state.is_running() {
                if let Some(texture) = glance.thumbnails.get(&row.entry_id) {
                    ui.add(
                        egui::Image::new(texture)
                            .fit_to_exact_size(texture.size_vec2())
                            .alt_text(format!("screen of {}", config.name)),
                    );
                }
            }
            ui.vertical(|ui| {
                ui.horizontal(|ui| {
                    ui.label(RichText::new(&config.name).strong());
                    ui.label(config.os.label());
                    ui.label(format!("{} CPU · {} MiB", config.cpus, config.memory_mib));
                    if let Some(caps) = config.resources.summary() {
                        ui.label(RichText::new(caps).weak())
                            .on_hover_text("Resources: its share of the host");
                    }
                    ui.label(state_text(&row.state));
                });
                if row.state.is_running() {
                    let latest = glance
                        .activity
                        .history(&row.entry_id)
                        .and_then(|h| h.latest().copied());
                    if let Some((cpu, rss)) = latest.map(|u| u.glance()) {
                        ui.label(format!(
                            "CPU {cpu} % · memory {rss} of {} MiB",
                            config.memory_mib
                        ));
                    }
                }
                self.actions_ui(ui, row, config, commands);
            });
        });
        if let VmState::Saved {
            saved_unix,
            refused,
        } = &row.state
        {
            ui.label(RichText::new(format!("Saved {}.", ago(*saved_unix))).weak());
            if let Some(why) = refused {
                ui.label(
                    RichText::new(format!("Its saved state cannot be restored: {why}"))
                        .color(Color32::from_rgb(0xe0, 0x40, 0x40)),
                );
            }
        }
        if row.engine_outdated {
            ui.horizontal(|ui| {
                ui.label(
                    RichText::new("Vireo was updated: this VM still runs on the old engine.")
                        .color(Color32::from_rgb(0xd0, 0x90, 0x20)),
                );
                if ui
                    .button("Move to the new engine")
                    .on_hover_text(
                        "The VM moves without stopping (a live migration on this computer).",
                    )
                    .clicked()
                {
                    commands.push(LibraryCommand::Upgrade(row.entry_id.clone()));
                }
            });
        }
        if let VmState::Failed { exit, log_tail } = &row.state {
            egui::CollapsingHeader::new(format!("Why it stopped: {}", exit.reason()))
                .id_salt(("log", &row.entry_id))
                .show(ui, |ui| {
                    for line in log_tail {
                        ui.monospace(line);
                    }
                });
        }
    }

    fn actions_ui(
        &mut self,
        ui: &mut egui::Ui,
        row: &VmRow,
        config: &vm_config::VmConfig,
        commands: &mut Vec<LibraryCommand>,
    ) {
        ui.horizontal_wrapped(|ui| {
            let id = &row.entry_id;
            if row.state.is_running() {
                if ui.button("Open display").clicked() {
                    commands.push(LibraryCommand::OpenDisplay(id.clone()));
                }
                for action in [row.state.pause_or_resume(), Action::Save, Action::Shutdown] {
                    action_button(ui, id, action, commands);
                }
                action_button(ui, id, Action::PowerOff, commands);
                if ui.button("Resources").clicked() {
                    commands.push(LibraryCommand::OpenResources(id.clone()));
                }
            } else {
                if ui.button("Start").clicked() {
                    commands.push(LibraryCommand::Start(id.clone()));
                }
                if row.state.is_saved() && ui.button("Discard saved state").clicked() {
                    self.pending_discard = Some((id.clone(), config.name.clone()));
                }
                if ui.button("Settings").clicked() {
                    commands.push(LibraryCommand::OpenSettings(id.clone()));
                }
                if ui.button("Resources").clicked() {
                    commands.push(LibraryCommand::OpenResources(id.clone()));
                }
                if ui.button("Clone").clicked() {
                    self.pending_clone = Some(PendingClone {
                        id: id.clone(),
                        source: config.name.clone(),
                        name: format!("{} copy", config.name),
                    });
                }
                if ui.button("Delete").clicked() {
                    self.pending_delete = Some(PendingDelete {
                        id: id.clone(),
                        name: config.name.clone(),
                        delete_disk: false,
                    });
                }
            }
        });
    }

    fn ask_clone_name(
        &mut self,
        ui: &mut egui::Ui,
        rows: &[VmRow],
        commands: &mut Vec<LibraryCommand>,
    ) {
        let Some(pending) = &mut self.pending_clone else {
            return;
        };
        let taken: Vec<String> = rows.iter().map(|r| r.name.clone()).collect();
        let probe = vm_config::VmConfig {
            name: pending.name.clone(),
            os: vm_config::OsSource::SelfTest,
            cpus: 1,
            memory_mib: vm_config::MIN_MEMORY_MIB,
            disk: None,
            network: false,
            display: vm_config::DisplaySize::default(),
            mac: None,
            link: Default::default(),
            window: Default::default(),
            resources: Default::default(),
        };
        let unlimited = HostInfo {
            cpus: u32::MAX,
            memory_mib: u64::MAX,
            kvm: crate::host::KvmKind::Unknown,
        };
        let problem = vm_config::check(&probe, &unlimited, &taken)
            .into_iter()
            .find(|p| p.field() == vm_config::Field::Name);
        let mut close = false;
        egui::Window::new("Clone VM")
            .collapsible(false)
            .resizable(false)
            .anchor(egui::Align2::CENTER_CENTER, egui::Vec2::ZERO)
            .show(ui.ctx(), |ui| {
                ui.label(format!(
                    "A copy of \"{}\", its disk included.",
                    pending.source
                ));
                let label = ui.label("Name of the copy");
                let field = ui
                    .text_edit_singleline(&mut pending.name)
                    .labelled_by(label.id);
                if let Some(p) = &problem {
                    ui.label(
                        RichText::new(p.to_string()).color(Color32::from_rgb(0xe0, 0x40, 0x40)),
                    );
                }
                let enter = field.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
                ui.horizontal(|ui| {
                    let ok = problem.is_none();
                    if ui
                        .add_enabled(ok, egui::Button::new("Make the copy"))
                        .clicked()
                        || (enter && ok)
                    {
                        commands.push(LibraryCommand::Clone {
                            id: pending.id.clone(),
                            name: pending.name.trim().to_owned(),
                        });
                        close = true;
                    }
                    if ui.button("Cancel").clicked() {
                        close = true;
                    }
                });
            });
        if close || ui.input(|i| i.key_pressed(egui::Key::Escape)) {
            self.pending_clone = None;
        }
    }

    fn confirm_discard(&mut self, ui: &mut egui::Ui, commands: &mut Vec<LibraryCommand>) {
        let Some((id, name)) = &self.pending_discard else {
            return;
        };
        let mut close = false;
        egui::Window::new("Discard saved state")
            .collapsible(false)
            .resizable(false)
            .anchor(egui::Align2::CENTER_CENTER, egui::Vec2::ZERO)
            .show(ui.ctx(), |ui| {
                ui.label(format!("Discard the saved state of \"{name}\"?"));
                ui.label(
                    RichText::new(
                        "Its next start boots afresh; what its programs had not written \
                         to its disk is lost.",
                    )
                    .weak(),
                );
                ui.horizontal(|ui| {
                    if ui.button("Discard").clicked() {
                        commands.push(LibraryCommand::Discard(id.clone()));
                        close = true;
                    }
                    if ui.button("Keep it").clicked() {
                        close = true;
                    }
                });
            });
        if close || ui.input(|i| i.key_pressed(egui::Key::Escape)) {
            self.pending_discard = None;
        }
    }

    fn confirm_delete(&mut self, ui: &mut egui::Ui, commands: &mut Vec<LibraryCommand>) {
        let Some(pending) = &mut self.pending_delete else {
            return;
        };
        let mut close = false;
        egui::Window::new("Delete VM")
            .collapsible(false)
            .resizable(false)
            .anchor(egui::Align2::CENTER_CENTER, egui::Vec2::ZERO)
            .show(ui.ctx(), |ui| {
                ui.label(format!("Delete \"{}\"?", pending.name));
                ui.checkbox(&mut pending.delete_disk, "Also delete its disk");
                if !pending.delete_disk {
                    ui.label(
                        RichText::new("Its disk, if it has one, is kept in kept-disks/.").weak(),
                    );
                }
                ui.horizontal(|ui| {
                    if ui.button("Delete for good").clicked() {
                        commands.push(LibraryCommand::Delete {
                            id: pending.id.clone(),
                            disk: if pending.delete_disk {
                                DiskChoice::Delete
                            } else {
                                DiskChoice::Keep
                            },
                        });
                        close = true;
                    }
                    if ui.button("Keep it").clicked() {
                        close = true;
                    }
                });
            });
        if close {
            self.pending_delete = None;
        }
    }
}

fn action_button(ui: &mut egui::Ui, id: &str, action: Action, commands: &mut Vec<LibraryCommand>) {
    if ui.button(action.label()).clicked() {
        commands.push(LibraryCommand::Act(id.to_owned(), action));
    }
}

/// "3 minutes ago" for a time in seconds since the epoch.
pub fn ago(unix: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    match now.saturating_sub(unix) {
        s if s < 60 => "just now".to_owned(),
        s if s < 3600 => format!("{} minute(s) ago", s / 60),
        s if s < 86400 => format!("{} hour(s) ago", s / 3600),
        s => format!("{} day(s) ago", s / 86400),
    }
}

/// The state column.
pub fn state_text(state: &VmState) -> String {
    match state {
        VmState::Running { status: Err(e) } => format!("unresponsive: {e}"),
        VmState::Failed { exit, .. } => format!("failed: {}", exit.reason()),
        other => other.word().to_owned(),
    }
}
