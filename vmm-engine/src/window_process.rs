//! `vireo-vmm --window`: the window is a process of its own (`vireo-window`, next to the
//! engine's binary), a client of the VM's control socket like the app. So the engine's
//! binary carries no GPU or windowing stack (its memory stays small), and a window that
//! crashes does not take the VM with it.
//!
//! The engine starts the window, runs the VM, and watches both ends: the window closing
//! powers the VM off (through the control socket); the VM ending closes the display
//! connection, which ends the window (and the engine reaps it).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::control::client::Control;
use crate::control::protocol::Request;

/// The window binary's name, looked up next to the engine's own.
pub const WINDOW_BINARY: &str = "vireo-window";
/// How long the window may take to go after the VM ended.
const WINDOW_EXIT_WAIT: Duration = Duration::from_secs(5);
/// How long a power-off request waits for the control socket to appear.
const CONTROL_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum WindowError {
    #[error("--window needs an X11 or Wayland session, and DISPLAY and WAYLAND_DISPLAY are unset: run it in your desktop session, or under xvfb-run")]
    NoDisplayServer,
    #[error("cannot find {} next to vireo-vmm ({}): build both with `cargo build --release -p vireo-vmm`", WINDOW_BINARY, .0.display())]
    NoBinary(PathBuf),
    #[error("cannot start {}: {source}", .binary.display())]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The running window and the thread that watches it.
pub struct WindowProcess {
    child: Arc<Mutex<Child>>,
    vm_done: Arc<AtomicBool>,
    watcher: Option<JoinHandle<()>>,
}

impl WindowProcess {
    /// Where the window binary should be: beside the running engine.
    pub fn binary() -> PathBuf {
        std::env::current_exe()
            .map(|exe| exe.with_file_name(WINDOW_BINARY))
            .unwrap_or_else(|_| PathBuf::from(WINDOW_BINARY))
    }

    /// Checks what a window needs before anything starts, so that a user error stops
    /// the engine with nothing running.
    pub fn check(binary: &Path) -> Result<(), WindowError> {
        let has = |var: &str| std::env::var_os(var).is_some_and(|v| !v.is_empty());
        if !has("DISPLAY") && !has("WAYLAND_DISPLAY") {
            return Err(WindowError::NoDisplayServer);
        }
        if !binary.is_file() {
            return Err(WindowError::NoBinary(binary.to_owned()));
        }
        Ok(())
    }

    /// Starts the window on the VM whose control socket is (or will be) `socket`.
    pub fn spawn(
        binary: &Path,
        socket: &Path,
        title: &str,
        size: (u32, u32),
    ) -> Result<Self, WindowError> {
        let child = Command::new(binary)
            .arg("--socket")
            .arg(socket)
            .args([
                "--title",
                title,
                "--size",
                &format!("{}x{}", size.0, size.1),
            ])
            .stdin(Stdio::null())
            .spawn()
            .map_err(|source| WindowError::Spawn {
                binary: binary.to_owned(),
                source,
            })?;
        let child = Arc::new(Mutex::new(child));
        let vm_done = Arc::new(AtomicBool::new(false));
        let watcher = {
            let (child, vm_done, socket) = (child.clone(), vm_done.clone(), socket.to_owned());
            std::thread::Builder::new()
                .name("window-watch".into())
                .spawn(move || watch(&child, &vm_done, &socket))
                .map_err(|source| WindowError::Spawn {
                    binary: binary.to_owned(),
                    source,
                })?
        };
        Ok(Self {
            child,
            vm_done,
            watcher: Some(watcher),
        })
    }

    /// The VM has ended: lets the window go (its display connection is closed now), and
    /// ends it if it lingers.
    pub fn finish(mut self) {
        self.vm_done.store(true, Ordering::SeqCst);
        if let Some(watcher) = self.watcher.take() {
            let _ = watcher.join();
        }
        let deadline = Instant::now() + WINDOW_EXIT_WAIT;
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Waits for the window to close while the VM runs; when it does, powers the VM off.
fn watch(child: &Mutex<Child>, vm_done: &AtomicBool, socket: &Path) {
    loop {
        if vm_done.load(Ordering::SeqCst) {
            return;
        }
        let exited = child
            .lock()
            .map(|mut c| matches!(c.try_wait(), Ok(Some(_))))
            .unwrap_or(true);
        if exited {
            power_off(socket, vm_done);
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Asks the VM to power off (the window went away), unless it ended already.
fn power_off(socket: &Path, vm_done: &AtomicBool) {
    let deadline = Instant::now() + CONTROL_WAIT;
    while !vm_done.load(Ordering::SeqCst) && Instant::now() < deadline {
        if let Ok(mut control) = Control::connect(socket) {
            let _ = control.ask(&Request::PowerOff {});
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
