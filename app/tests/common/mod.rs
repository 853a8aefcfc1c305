//! Helpers the app's kittest tests share (each test binary uses some of them).
#![allow(dead_code)]

use std::time::{Duration, Instant};

use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;

/// Steps `harness` until `done` holds, failing after `limit` with `what` in the message.
pub fn until<S>(
    harness: &mut Harness<'_, S>,
    what: &str,
    limit: Duration,
    done: impl Fn(&mut Harness<'_, S>) -> bool,
) {
    let end = Instant::now() + limit;
    loop {
        harness.step();
        if done(harness) {
            return;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Replaces the text of the field labelled `label` with `text`, as a person does: focus,
/// select all, type.
pub fn retype<S>(harness: &mut Harness<'_, S>, label: &str, text: &str) {
    harness.get_by_label(label).focus();
    harness.run();
    harness.key_press_modifiers(eframe::egui::Modifiers::COMMAND, eframe::egui::Key::A);
    harness.run();
    harness.get_by_label(label).type_text(text);
    harness.run();
}
