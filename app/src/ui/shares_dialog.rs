//! The VM window's "Shared folders" dialog: the folders the guest sees under
//! `/mnt/vireo/`, one more added while it runs (a folder picker, or a folder handed in
//! by a test), one removed. The app turns the requests into backend commands, which write
//! `vm.toml` and serve the new folder to the guest's agent at once.

use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver};

use eframe::egui;

use super::display_view::ViewRequest;
use crate::guest_link::DROP_SHARE;
use crate::vm_config::SharedFolder;

#[derive(Default)]
pub struct SharesDialog {
    pub open: bool,
    /// Whether a folder added next is read-only in the guest.
    read_only: bool,
    /// The folder picker's answer, while it is open.
    picking: Option<Receiver<Option<PathBuf>>>,
}

impl SharesDialog {
    /// Draws the dialog (if open) listing `shares`; returns what the user asked.
    pub fn show(&mut self, ctx: &egui::Context, shares: &[SharedFolder]) -> Vec<ViewRequest> {
        let mut asked = Vec::new();
        if let Some(chosen) = self.picking.as_ref().and_then(|rx| rx.try_recv().ok()) {
            self.picking = None;
            if let Some(path) = chosen {
                asked.push(ViewRequest::AddShare(SharedFolder::for_path(
                    path,
                    self.read_only,
                )));
            }
        }
        // A closed egui::Window is still painted while it fades out, and at opacity 0 it
        // comes out as a black rectangle over the guest's screen on some GL surfaces
        // (seen on Xvfb): a closed dialog is not shown at all.
        if !self.open {
            return asked;
        }
        let mut open = self.open;
        egui::Window::new("Shared folders")
            .open(&mut open)
            .resizable(false)
            .show(ctx, |ui| self.contents(ui, shares, &mut asked));
        self.open = open;
        asked
    }

    fn contents(
        &mut self,
        ui: &mut egui::Ui,
        shares: &[SharedFolder],
        asked: &mut Vec<ViewRequest>,
    ) {
        ui.label(format!(
            "Files dropped on this window: /mnt/vireo/{DROP_SHARE} in the guest"
        ));
        ui.separator();
        if shares.is_empty() {
            ui.label("No other folders are shared.");
        }
        egui::Grid::new("shares").striped(true).show(ui, |ui| {
            for share in shares {
                ui.label(format!("/mnt/vireo/{}", share.name));
                ui.label(share.path.display().to_string());
                ui.label(if share.read_only {
                    "read-only"
                } else {
                    "read-write"
                });
                if ui.button(format!("Remove {}", share.name)).clicked() {
                    asked.push(ViewRequest::RemoveShare(share.name.clone()));
                }
                ui.end_row();
            }
        });
        ui.separator();
        ui.horizontal(|ui| {
            ui.checkbox(&mut self.read_only, "Read-only");
            let add = ui.add_enabled(self.picking.is_none(), egui::Button::new("Add folder…"));
            if add.clicked() {
                self.pick(ui.ctx());
            }
        });
    }

    /// Opens the desktop's folder picker on a thread (it blocks until answered).
    fn pick(&mut self, ctx: &egui::Context) {
        let (tx, chosen) = mpsc::channel();
        let ctx = ctx.clone();
        let spawned = std::thread::Builder::new()
            .name("folder-dialog".into())
            .spawn(move || {
                let _ = tx.send(rfd::FileDialog::new().pick_folder());
                ctx.request_repaint();
            });
        if spawned.is_ok() {
            self.picking = Some(chosen);
        }
    }
}
