//! `--cancel-on-stdin-eof`: how the app stops a build it may not signal. Run through
//! pkexec the builder is root and the user's app cannot kill it; it can close the pipe
//! it gave as stdin. A thread here waits for that; when it comes before the build is
//! done, the builder's process group (debootstrap, cp, mkfs...) gets SIGTERM, the output
//! directory is removed, and the builder exits with status 130.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::getpgrp;

/// Held while a cancel cleans up, and by `settle` for good once the build has ended:
/// a cancel and a finished build never both happen.
static ENDING: Mutex<()> = Mutex::new(());

/// Starts the watcher for `out`. Call after the password line was read from stdin.
pub fn on_stdin_eof(out: PathBuf) -> anyhow::Result<()> {
    // The SIGTERM sent to the group reaches the builder too: caught, not fatal.
    signal_hook::flag::register(
        signal_hook::consts::SIGTERM,
        Arc::new(AtomicBool::new(false)),
    )
    .context("catching SIGTERM")?;
    std::thread::Builder::new()
        .name("stdin-eof".into())
        .spawn(move || {
            let _ = io::copy(&mut io::stdin().lock(), &mut io::sink());
            let _ending = ENDING.lock().unwrap_or_else(|p| p.into_inner());
            let _ = killpg(getpgrp(), Signal::SIGTERM);
            remove(&out);
            eprintln!(
                "vireo-image: stdin closed: build cancelled, {} removed",
                out.display()
            );
            std::process::exit(130);
        })
        .context("starting the stdin watcher")?;
    Ok(())
}

/// Called as the builder ends: waits for a cancel that has begun (which exits), or
/// keeps one from beginning.
pub fn settle() {
    std::mem::forget(ENDING.lock().unwrap_or_else(|p| p.into_inner()));
}

/// Removes `out`, again while the killed children's last writes land.
fn remove(out: &std::path::Path) {
    for _ in 0..50 {
        match std::fs::remove_dir_all(out) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}
