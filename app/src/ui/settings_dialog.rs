//! The Settings dialog of a stopped VM: CPUs and memory bounded by the host as in the
//! wizard, the disk's size (grow only), network on/off and the display size, each field
//! with its problems beside it, and what closing its window does. Save stays disabled
//! while anything is wrong (a saved VM's hardware is fixed until it is started or its
//! saved state discarded); the backend writes the file (`settings::apply`, which checks
//! again).

use eframe::egui::{self, Color32, RichText};

use crate::host::HostInfo;
use crate::settings::{self, Field, Settings};
use crate::vm_config::{self, OnClose, VmConfig};

const ERROR: Color32 = Color32::from_rgb(0xe0, 0x40, 0x40);

pub enum SettingsOutcome {
    Save(Settings),
    Cancel,
}

pub struct SettingsDialog {
    pub vm_id: String,
    current: VmConfig,
    host: HostInfo,
    cpus: u8,
    /// Typed text, so that what the user types is shown as typed (and checked).
    memory: String,
    disk: bool,
    disk_gib: String,
    network: bool,
    width: String,
    height: String,
    on_close: OnClose,
    /// The VM has a saved state: its hardware cannot change.
    saved: bool,
}

impl SettingsDialog {
    pub fn new(vm_id: String, current: VmConfig, host: HostInfo, saved: bool) -> SettingsDialog {
        let s = Settings::of(&current);
        SettingsDialog {
            vm_id,
            host,
            cpus: s.cpus,
            memory: s.memory_mib.to_string(),
            disk: s.disk_gib.is_some(),
            disk_gib: s.disk_gib.unwrap_or(8).to_string(),
            network: s.network,
            width: s.display.width.to_string(),
            height: s.display.height.to_string(),
            on_close: s.on_close,
            saved,
            current,
        }
    }

    /// The settings as typed, or the field that is not a number.
    fn settings(&self) -> Result<Settings, (Field, String)> {
        let number = |text: &str, field: Field, what: &str| {
            text.trim()
                .parse::<u64>()
                .map_err(|_| (field, format!("{what} must be a whole number")))
        };
        let memory_mib = number(&self.memory, Field::Memory, "memory")?;
        let disk_gib = if self.disk {
            Some(number(&self.disk_gib, Field::Disk, "the disk size")?)
        } else {
            None
        };
        let side = |text: &str| {
            number(text, Field::Display, "the display size")
                .and_then(|v| u32::try_from(v).map_err(|_| (Field::Display, "too large".into())))
        };
        Ok(Settings {
            cpus: self.cpus,
            memory_mib,
            disk_gib,
            network: self.network,
            display: vm_config::DisplaySize {
                width: side(&self.width)?,
                height: side(&self.height)?,
            },
            on_close: self.on_close,
        })
    }

    /// Every problem as (field, text).
    fn problems(&self) -> Vec<(Field, String)> {
        match self.settings() {
            Ok(s) => settings::check(&self.current, &s, &self.host, self.saved)
                .iter()
                .map(|p| (p.field(), p.to_string()))
                .collect(),
            Err(bad) => vec![bad],
        }
    }

    /// Draws the dialog as a window over `ctx`; returns the user's decision.
    pub fn show(&mut self, ctx: &egui::Context) -> Option<SettingsOutcome> {
        let mut outcome = None;
        egui::Window::new(format!("Settings of {}", self.current.name))
            .collapsible(false)
            .resizable(false)
            .anchor(egui::Align2::CENTER_CENTER, egui::Vec2::ZERO)
            .show(ctx, |ui| outcome = self.form(ui));
        if ctx.input(|i| i.key_pressed(egui::Key::Escape)) {
            outcome = Some(SettingsOutcome::Cancel);
        }
        outcome
    }

    fn form(&mut self, ui: &mut egui::Ui) -> Option<SettingsOutcome> {
        let problems = self.problems();
        let show = |ui: &mut egui::Ui, field: Field| {
            for (_, text) in problems.iter().filter(|(f, _)| *f == field) {
                ui.label(RichText::new(text).color(ERROR));
            }
        };
        let max_cpus = u8::try_from(self.host.cpus).unwrap_or(u8::MAX).max(1);
        ui.add(egui::Slider::new(&mut self.cpus, 1..=max_cpus).text("CPUs"));
        show(ui, Field::Cpus);
        self.memory_field(ui);
        show(ui, Field::Memory);
        // A Debian 12's disk is its own qcow2: no raw disk beside it.
        let system_disk = matches!(self.current.os, crate::vm_config::OsSource::Debian12 { .. });
        ui.add_enabled_ui(self.current.disk.is_none() && !system_disk, |ui| {
            ui.checkbox(&mut self.disk, "Disk");
        });
        if system_disk {
            ui.label(RichText::new("Its system disk is disk.qcow2 in its folder.").weak());
        }
        if self.disk {
            text_field(ui, "Disk size (GiB)", &mut self.disk_gib);
            if let Some(d) = self.current.disk {
                ui.label(
                    RichText::new(format!("Now {} GiB; a disk only grows.", d.size_gib)).weak(),
                );
            }
        }
        show(ui, Field::Disk);
        ui.checkbox(&mut self.network, "Network");
        ui.horizontal(|ui| {
            text_field(ui, "Display width", &mut self.width);
            text_field(ui, "height", &mut self.height);
        });
        show(ui, Field::Display);
        self.on_close_field(ui);
        show(ui, Field::Other);
        ui.separator();
        let mut outcome = None;
        ui.horizontal(|ui| {
            let ready = problems.is_empty();
            if ui.add_enabled(ready, egui::Button::new("Save")).clicked() {
                if let Ok(s) = self.settings() {
                    outcome = Some(SettingsOutcome::Save(s));
                }
            }
            if ui.button("Cancel").clicked() {
                outcome = Some(SettingsOutcome::Cancel);
            }
        });
        outcome
    }

    fn on_close_field(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            let label = ui.label("When its window closes");
            egui::ComboBox::from_id_salt("on_close")
                .selected_text(self.on_close.label())
                .show_ui(ui, |ui| {
                    for choice in OnClose::ALL {
                        ui.selectable_value(&mut self.on_close, choice, choice.label());
                    }
                })
                .response
                .labelled_by(label.id);
        });
    }

    fn memory_field(&mut self, ui: &mut egui::Ui) {
        let host_mib = self.host.memory_mib.max(vm_config::MIN_MEMORY_MIB);
        ui.horizontal(|ui| {
            text_field(ui, "Memory (MiB)", &mut self.memory);
            let mut mib = self
                .memory
                .trim()
                .parse::<u64>()
                .unwrap_or(vm_config::MIN_MEMORY_MIB);
            let slider = egui::Slider::new(&mut mib, vm_config::MIN_MEMORY_MIB..=host_mib)
                .logarithmic(true)
                .show_value(false)
                .text("of the host's");
            if ui.add(slider).changed() {
                self.memory = (mib / 64 * 64).max(vm_config::MIN_MEMORY_MIB).to_string();
            }
        });
        ui.label(
            RichText::new(format!(
                "This host has {} MiB; {} MiB is a good size.",
                self.host.memory_mib,
                self.host.recommended_memory_mib()
            ))
            .weak(),
        );
    }
}

fn text_field(ui: &mut egui::Ui, label: &str, value: &mut String) {
    let label = ui.label(label);
    ui.add(egui::TextEdit::singleline(value).desired_width(70.0))
        .labelled_by(label.id);
}
