//! What the UI's kittests share.

use eframe::egui;
use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;

/// Replaces the text of the field labelled `label` with `text` (empty: cleared).
pub fn retype<S>(harness: &mut Harness<'_, S>, label: &str, text: &str) {
    harness.get_by_label(label).focus();
    harness.run();
    harness.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::A);
    harness.run();
    if text.is_empty() {
        harness.key_press(egui::Key::Backspace);
    } else {
        harness.get_by_label(label).type_text(text);
    }
    harness.run();
}
