//! The library window's list: every VM with its name, OS and state, and what can be
//! done to it. Broken configs are listed with their reason and no actions; a VM whose
//! engine died shows how it ended and the end of its log. Deleting asks first, and
//! deleting the disk is a separate, unticked choice.

use eframe::egui::{self, Color32, RichText};

use super::backend::VmRow;
use crate::library::DiskChoice;
use crate::supervisor::{Action, VmState};

/// What the user asked for in the list; the app turns each into a backend command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LibraryCommand {
    NewVm,
    Start(String),
    Act(String, Action),
    OpenDisplay(String),
    Delete { id: String, disk: DiskChoice },
}

/// A delete waiting for the user's confirmation.
#[derive(Debug, Clone)]
struct PendingDelete {
    id: String,
    name: String,
    delete_disk: bool,
}

#[derive(Default)]
pub struct LibraryView {
    pending_delete: Option<PendingDelete>,
}

impl LibraryView {
    pub fn ui(&mut self, ui: &mut egui::Ui, rows: &[VmRow]) -> Vec<LibraryCommand> {
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
                    self.row_ui(ui, row, &mut commands);
                    ui.separator();
                }
            });
        }
        self.confirm_delete(ui, &mut commands);
        commands
    }

    fn row_ui(&mut self, ui: &mut egui::Ui, row: &VmRow, commands: &mut Vec<LibraryCommand>) {
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
            ui.label(RichText::new(&config.name).strong());
            ui.label(config.os.label());
            ui.label(format!("{} CPU · {} MiB", config.cpus, config.memory_mib));
            ui.label(state_text(&row.state));
        });
        ui.horizontal(|ui| {
            let id = &row.entry_id;
            if row.state.is_running() {
                if ui.button("Open display").clicked() {
                    commands.push(LibraryCommand::OpenDisplay(id.clone()));
                }
                for action in [row.state.pause_or_resume(), Action::Save, Action::Shutdown] {
                    action_button(ui, id, action, commands);
                }
                action_button(ui, id, Action::PowerOff, commands);
            } else {
                if ui.button("Start").clicked() {
                    commands.push(LibraryCommand::Start(id.clone()));
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
    let button = ui.add_enabled(action.supported(), egui::Button::new(action.label()));
    let button = match action.request() {
        Ok(_) => button,
        Err(why) => button.on_disabled_hover_text(why.to_string()),
    };
    if button.clicked() {
        commands.push(LibraryCommand::Act(id.to_owned(), action));
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
