//! The Resources dialog: a VM's CPU weight and limit and its disk and network caps,
//! each typed as a number (empty: none), checked as typed. Open for a running VM too:
//! the backend writes `[resources]` and applies what changed to the engine at once.

use eframe::egui::{self, Color32, RichText};

use crate::resources::Resources;

const ERROR: Color32 = Color32::from_rgb(0xe0, 0x40, 0x40);

pub enum ResourcesOutcome {
    Save(Resources),
    Cancel,
}

pub struct ResourcesDialog {
    pub vm_id: String,
    name: String,
    host_cpus: u32,
    running: bool,
    cpu_weight: String,
    cpu_limit: String,
    disk: Option<String>,
    net: Option<String>,
    give_back_idle_memory: bool,
}

impl ResourcesDialog {
    /// For the VM `name` with `current` resources; `disk`/`net`: it has them.
    pub fn new(
        vm_id: String,
        name: String,
        current: Resources,
        (disk, net): (bool, bool),
        host_cpus: u32,
        running: bool,
    ) -> ResourcesDialog {
        let text = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
        ResourcesDialog {
            vm_id,
            name,
            host_cpus,
            running,
            cpu_weight: text(current.cpu_weight.map(u64::from)),
            cpu_limit: text(current.cpu_limit_percent.map(u64::from)),
            disk: disk.then(|| text(current.disk_mib_s)),
            net: net.then(|| text(current.net_mib_s)),
            give_back_idle_memory: current.give_back_idle_memory,
        }
    }

    /// The resources as typed, or what is not a number.
    fn resources(&self) -> Result<Resources, String> {
        fn number<T: std::str::FromStr>(text: &str, what: &str) -> Result<Option<T>, String> {
            let text = text.trim();
            if text.is_empty() {
                return Ok(None);
            }
            text.parse()
                .map(Some)
                .map_err(|_| format!("{what} must be a whole number, or empty for none"))
        }
        let optional = |text: &Option<String>, what| match text {
            Some(t) => number(t, what),
            None => Ok(None),
        };
        Ok(Resources {
            cpu_weight: number(&self.cpu_weight, "the CPU weight")?,
            cpu_limit_percent: number(&self.cpu_limit, "the CPU limit")?,
            disk_mib_s: optional(&self.disk, "the disk cap")?,
            net_mib_s: optional(&self.net, "the network cap")?,
            give_back_idle_memory: self.give_back_idle_memory,
        })
    }

    fn problems(&self) -> Vec<String> {
        match self.resources() {
            Ok(r) => r
                .check(self.host_cpus)
                .iter()
                .map(ToString::to_string)
                .collect(),
            Err(why) => vec![why],
        }
    }

    pub fn show(&mut self, ctx: &egui::Context) -> Option<ResourcesOutcome> {
        let mut outcome = None;
        egui::Window::new(format!("Resources of {}", self.name))
            .collapsible(false)
            .resizable(false)
            .anchor(egui::Align2::CENTER_CENTER, egui::Vec2::ZERO)
            .show(ctx, |ui| outcome = self.form(ui));
        if ctx.input(|i| i.key_pressed(egui::Key::Escape)) {
            outcome = Some(ResourcesOutcome::Cancel);
        }
        outcome
    }

    fn form(&mut self, ui: &mut egui::Ui) -> Option<ResourcesOutcome> {
        let hint = |ui: &mut egui::Ui, text: &str| {
            ui.label(RichText::new(text).weak());
        };
        field(ui, "CPU weight", &mut self.cpu_weight, "100");
        hint(
            ui,
            "Its share against other VMs when the host is busy: 200 gets twice what 100 gets.",
        );
        field(ui, "CPU limit (%)", &mut self.cpu_limit, "none");
        hint(
            ui,
            &format!(
                "At most this much of one host CPU, even when the host is idle \
                 (this host: up to {}).",
                100 * self.host_cpus.max(1)
            ),
        );
        if let Some(disk) = &mut self.disk {
            field(ui, "Disk cap (MiB/s)", disk, "none");
        }
        if let Some(net) = &mut self.net {
            field(ui, "Network cap (MiB/s)", net, "none");
        }
        ui.checkbox(
            &mut self.give_back_idle_memory,
            "Give idle memory back to the host",
        );
        hint(
            ui,
            "The guest keeps a quarter of its memory free; what it does not use goes back \
             (it needs the guest's balloon driver).",
        );
        let problems = self.problems();
        for p in &problems {
            ui.label(RichText::new(p).color(ERROR));
        }
        hint(
            ui,
            if self.running {
                "The VM is running: a change takes effect at once."
            } else {
                "A change takes effect when the VM starts."
            },
        );
        ui.separator();
        let mut outcome = None;
        ui.horizontal(|ui| {
            if ui
                .add_enabled(problems.is_empty(), egui::Button::new("Apply"))
                .clicked()
            {
                if let Ok(r) = self.resources() {
                    outcome = Some(ResourcesOutcome::Save(r));
                }
            }
            if ui.button("Cancel").clicked() {
                outcome = Some(ResourcesOutcome::Cancel);
            }
        });
        outcome
    }
}

fn field(ui: &mut egui::Ui, label: &str, value: &mut String, hint: &str) {
    ui.horizontal(|ui| {
        let label = ui.label(label);
        ui.add(
            egui::TextEdit::singleline(value)
                .hint_text(hint)
                .desired_width(80.0),
        )
        .labelled_by(label.id);
    });
}

#[cfg(test)]
mod tests {
    use egui_kittest::kittest::{NodeT, Queryable};
    use egui_kittest::Harness;

    use super::*;
    use crate::ui::kittest_support::retype;

    type State = (ResourcesDialog, Option<Resources>);

    fn harness(disk: bool, net: bool) -> Harness<'static, State> {
        let current = Resources {
            cpu_weight: Some(70),
            ..Resources::default()
        };
        let dialog = ResourcesDialog::new("vm".into(), "Web".into(), current, (disk, net), 2, true);
        let mut harness = Harness::new_ui_state(
            |ui, (dialog, saved): &mut State| {
                if let Some(ResourcesOutcome::Save(r)) = dialog.show(ui.ctx()) {
                    *saved = Some(r);
                }
            },
            (dialog, None),
        );
        harness.set_size(egui::vec2(700.0, 500.0));
        harness.run();
        harness
    }

    fn save_enabled(harness: &Harness<'static, State>) -> bool {
        !harness.get_by_label("Apply").accesskit_node().is_disabled()
    }

    #[test]
    fn typed_values_are_checked_and_saved() {
        let mut harness = harness(true, false);
        harness.get_by_label_contains("takes effect at once");
        assert!(harness.query_by_label("Network cap (MiB/s)").is_none());
        retype(&mut harness, "CPU limit (%)", "300");
        harness.get_by_label("the CPU limit is 1 to 200 percent (100 per host CPU)");
        assert!(!save_enabled(&harness));
        retype(&mut harness, "CPU limit (%)", "half");
        harness.get_by_label("the CPU limit must be a whole number, or empty for none");
        retype(&mut harness, "CPU limit (%)", "50");
        retype(&mut harness, "Disk cap (MiB/s)", "20");
        retype(&mut harness, "CPU weight", "");
        harness
            .get_by_label("Give idle memory back to the host")
            .click();
        harness.run();
        assert!(save_enabled(&harness));
        harness.get_by_label("Apply").click();
        harness.run();
        assert_eq!(
            harness.state().1,
            Some(Resources {
                cpu_weight: None,
                cpu_limit_percent: Some(50),
                disk_mib_s: Some(20),
                net_mib_s: None,
                give_back_idle_memory: true,
            })
        );
    }
}
