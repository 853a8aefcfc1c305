//! Helpers the app's kittest tests share.

use std::time::{Duration, Instant};

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
