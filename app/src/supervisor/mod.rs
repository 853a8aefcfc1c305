//! Running VMs: one `vireo-vmm` per VM, started detached behind a monitor (`monitor`) so
//! it outlives the app, found again through its run lock and control socket (`lock`,
//! `launch::RuntimeFiles`), asked for its status and told what to do over the control
//! socket (`vireo_vmm::control::client`, `actions`). A VM whose engine died shows how it
//! ended and the last lines of its log.

pub mod actions;
pub mod launch;
pub mod lock;
pub mod monitor;

use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use vireo_vmm::control::client::Control;
use vireo_vmm::control::protocol::{Request, Response};

use crate::library::VmEntry;
use crate::paths::Dirs;
pub use actions::Action;
pub use launch::{LaunchError, Programs, RuntimeFiles};
pub use monitor::LastExit;

/// How long a control request may take before the engine counts as unresponsive.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `start` waits for the engine's control socket.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `power_off` waits for the engine to be gone.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a save may take to answer (it writes all of guest memory and syncs it).
const SAVE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a screenshot may take (the engine encodes the screen as a PNG).
const SCREENSHOT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an engine upgrade may take (the migration copies all of guest memory).
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(150);
/// Log lines shown for an engine that died.
pub const LOG_TAIL: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Library(#[from] crate::library::Error),
    #[error(transparent)]
    Paths(#[from] crate::paths::Error),
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    #[error("the VM is not running")]
    NotRunning,
    #[error("the VM is running: power it off first")]
    Running,
    #[error("the VM has no saved state")]
    NotSaved,
    #[error("cannot delete the saved state {path}: {source}")]
    Discard {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the saved state cannot be restored: {reason} (the VM stays saved; discard its \
         saved state to start it afresh)"
    )]
    RestoreRefused { reason: String },
    #[error("the VM did not move to the new engine: {0} (it runs on the old one)")]
    UpgradeFailed(String),
    #[error("the VM did not save: {0} (it runs on)")]
    SaveFailed(String),
    #[error("cannot start the VM's monitor {path}: {source}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the VM did not start: {reason}{}", tail_text(.log_tail))]
    StartFailed {
        reason: String,
        log_tail: Vec<String>,
    },
    #[error("the engine did not answer on {path} within {secs} s", secs = START_TIMEOUT.as_secs())]
    StartTimeout { path: PathBuf },
    #[error("the engine's control socket {path} does not answer: {source}")]
    Control {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the engine refused: {0}")]
    Refused(String),
    #[error("cannot write the screenshot to {path}: {source}")]
    ScreenshotWrite {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the engine gave an unexpected answer: {0}")]
    Unexpected(String),
    #[error("the VM was told to power off but still runs after {} s", STOP_TIMEOUT.as_secs())]
    StopTimeout,
    #[error(
        "the guest did not shut down within {} s (it may not handle the ACPI power button, \
         or it asked its user); `vireo stop` without --graceful powers it off",
        .0.as_secs()
    )]
    ShutdownTimeout(Duration),
}

fn tail_text(lines: &[String]) -> String {
    if lines.is_empty() {
        String::new()
    } else {
        format!("\nlast lines of its log:\n  {}", lines.join("\n  "))
    }
}

/// What the engine says about a running VM.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EngineStatus {
    /// The engine's own word ("running"; later "paused").
    pub state: String,
    pub vcpus: u8,
    pub memory_mib: u64,
}

/// A VM's state as the library shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmState {
    /// Not running; its last run (if any) ended with a power-off.
    Stopped,
    /// An engine runs it. `status` is `Err` if the engine does not answer.
    Running {
        status: Result<EngineStatus, String>,
    },
    /// Not running, its state saved (`VmEntry::snapshot_path`): the next start restores
    /// it.
    Saved {
        /// When it was saved, seconds since the epoch (the file's time).
        saved_unix: u64,
        /// Why the last start could not restore it, if one tried and the engine refused.
        refused: Option<String>,
    },
    /// Not running; the last run ended badly.
    Failed {
        exit: LastExit,
        log_tail: Vec<String>,
    },
}

impl VmState {
    /// One word for lists and `--json`.
    pub fn word(&self) -> &'static str {
        match self {
            VmState::Stopped => "stopped",
            VmState::Running { status: Ok(s) } if s.state == "paused" => "paused",
            VmState::Running { status: Ok(_) } => "running",
            VmState::Running { status: Err(_) } => "unresponsive",
            VmState::Saved { .. } => "saved",
            VmState::Failed { .. } => "failed",
        }
    }

    pub fn is_saved(&self) -> bool {
        matches!(self, VmState::Saved { .. })
    }

    pub fn is_running(&self) -> bool {
        matches!(self, VmState::Running { .. })
    }

    pub fn is_paused(&self) -> bool {
        self.word() == "paused"
    }

    /// The one of pause and resume that applies now.
    pub fn pause_or_resume(&self) -> Action {
        if self.is_paused() {
            Action::Resume
        } else {
            Action::Pause
        }
    }
}

/// Starts, watches and stops engines. One per app (or CLI command).
pub struct Supervisor {
    dirs: Dirs,
    programs: Programs,
    /// Monitors this process started: reaped when they end so none lingers as a zombie
    /// in a long-running app.
    children: Mutex<Vec<Child>>,
}

impl Supervisor {
    pub fn new(dirs: Dirs, programs: Programs) -> Supervisor {
        Supervisor {
            programs: programs.with_user_images(dirs.images()),
            dirs,
            children: Mutex::new(Vec::new()),
        }
    }

    pub fn programs(&self) -> &Programs {
        &self.programs
    }

    /// The VM's runtime directory (created 0700 if missing).
    pub fn runtime(&self, entry: &VmEntry) -> Result<RuntimeFiles, Error> {
        Ok(RuntimeFiles {
            dir: self.dirs.vm_runtime(&entry.id)?,
        })
    }

    /// Is the VM running, and what does its engine say? Never blocks for longer than
    /// `CONTROL_TIMEOUT`.
    pub fn state(&self, entry: &VmEntry) -> VmState {
        self.reap();
        let runtime = RuntimeFiles {
            dir: self.dirs.runtime.join(&entry.id),
        };
        if lock::is_held(&runtime.lock()) {
            let status = self.status(&runtime).map_err(|e| e.to_string());
            return VmState::Running { status };
        }
        let exit = LastExit::load(&entry.last_exit_path());
        if let Some(saved_unix) = saved_time(&entry.snapshot_path()) {
            // A start that tried to restore it and was refused ended after the save.
            let refused = exit
                .filter(|e| e.code == Some(vireo_vmm::exit::code::ERROR))
                .filter(|e| e.ended_unix >= saved_unix)
                .map(|_| engine_reason(&log_tail(&entry.log_path(), LOG_TAIL)));
            return VmState::Saved {
                saved_unix,
                refused,
            };
        }
        match exit {
            Some(exit) if !exit.clean() => VmState::Failed {
                exit,
                log_tail: log_tail(&entry.log_path(), LOG_TAIL),
            },
            _ => VmState::Stopped,
        }
    }

    fn status(&self, runtime: &RuntimeFiles) -> Result<EngineStatus, Error> {
        match self.ask(runtime, &Request::Status {})? {
            Response::Status {
                state,
                vcpus,
                memory_mib,
            } => Ok(EngineStatus {
                state,
                vcpus,
                memory_mib,
            }),
            other => Err(unexpected(other)),
        }
    }

    /// One request to the VM's engine.
    pub fn ask(&self, runtime: &RuntimeFiles, request: &Request) -> Result<Response, Error> {
        self.ask_with(runtime, request, CONTROL_TIMEOUT)
    }

    fn ask_with(
        &self,
        runtime: &RuntimeFiles,
        request: &Request,
        timeout: Duration,
    ) -> Result<Response, Error> {
        let path = runtime.control_socket();
        let control_err = |source| Error::Control {
            path: path.clone(),
            source,
        };
        let mut control = Control::connect(&path).map_err(control_err)?;
        control.set_timeout(Some(timeout)).map_err(control_err)?;
        match control.ask(request).map_err(control_err)? {
            Response::Error { message } => Err(Error::Refused(message)),
            answer => Ok(answer),
        }
    }

    /// Starts the VM: its monitor, detached, which runs the engine. Returns once the
    /// engine answers on its control socket, or with why it did not start (its exit
    /// reason and the end of its log).
    pub fn start(&self, entry: &VmEntry) -> Result<(), Error> {
        let config = entry.config()?;
        let runtime = self.runtime(entry)?;
        if lock::is_held(&runtime.lock()) {
            return Err(lock::LockError::Held.into());
        }
        let mut args = launch::engine_args(config, &entry.dir, &runtime, &self.programs)?;
        let snapshot = entry.snapshot_path();
        let restoring = snapshot.is_file();
        if restoring {
            args.push("--restore".into());
            args.push(snapshot.clone().into());
        }
        // A socket left by an engine that was killed would make `connect` below fail in
        // a misleading way (refused instead of absent).
        let _ = std::fs::remove_file(runtime.control_socket());
        let log = open_log(&entry.log_path()).map_err(|source| Error::Spawn {
            path: entry.log_path(),
            source,
        })?;
        let mut cmd = Command::new(&self.programs.app);
        cmd.arg("monitor")
            .arg("--lock")
            .arg(runtime.lock())
            .arg("--engine-pid")
            .arg(runtime.engine_pid())
            .arg("--last-exit")
            .arg(entry.last_exit_path())
            .arg("--engine")
            .arg(&self.programs.engine)
            .arg("--")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|source| Error::Spawn {
                path: entry.log_path(),
                source,
            })?)
            .stderr(log);
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            path: self.programs.app.clone(),
            source,
        })?;
        match self.wait_ready(entry, &runtime, child) {
            Ok(()) if restoring => {
                // Consumed: the guest runs on and its disk moves away from the snapshot
                // (the engine would refuse it again anyway).
                std::fs::remove_file(&snapshot).map_err(|source| Error::Discard {
                    path: snapshot,
                    source,
                })
            }
            // The engine refused the snapshot (it exits 1 with its reason): the VM
            // stays saved, the file untouched.
            Err(Error::StartFailed { log_tail, .. })
                if restoring
                    && LastExit::load(&entry.last_exit_path())
                        .is_some_and(|e| e.code == Some(vireo_vmm::exit::code::ERROR)) =>
            {
                Err(Error::RestoreRefused {
                    reason: engine_reason(&log_tail),
                })
            }
            other => other,
        }
    }

    /// Deletes a saved VM's state, so its next start boots afresh.
    pub fn discard(&self, entry: &VmEntry) -> Result<(), Error> {
        self.ensure_stopped(entry)?;
        let path = entry.snapshot_path();
        match std::fs::remove_file(&path) {
            Ok(()) => {
                // Since the save, only restores ran: a failure on record is one of
                // them, and it is moot now.
                let exit = entry.last_exit_path();
                if LastExit::load(&exit)
                    .is_some_and(|e| e.code == Some(vireo_vmm::exit::code::ERROR))
                {
                    let _ = std::fs::remove_file(exit);
                }
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::NotSaved),
            Err(source) => Err(Error::Discard { path, source }),
        }
    }

    fn wait_ready(
        &self,
        entry: &VmEntry,
        runtime: &RuntimeFiles,
        mut child: Child,
    ) -> Result<(), Error> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                let reason = LastExit::load(&entry.last_exit_path())
                    .map_or_else(|| "its monitor ended".to_owned(), |e| e.reason());
                return Err(Error::StartFailed {
                    reason,
                    log_tail: log_tail(&entry.log_path(), LOG_TAIL),
                });
            }
            if self.status(runtime).is_ok() {
                self.children
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.children
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(child);
                return Err(Error::StartTimeout {
                    path: runtime.control_socket(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Does `action` to the running VM.
    /// Does `action` to the running VM. A save returns once the engine has gone and
    /// the VM is saved; a failed save returns the engine's reason (the VM runs on).
    pub fn act(&self, entry: &VmEntry, action: Action) -> Result<(), Error> {
        let request = action.request(&entry.snapshot_path());
        let runtime = self.runtime(entry)?;
        if !lock::is_held(&runtime.lock()) {
            return Err(Error::NotRunning);
        }
        let answer = match action {
            // Writing all of guest memory takes longer than an ordinary request.
            Action::Save => self.ask_with(&runtime, &request, SAVE_TIMEOUT),
            _ => self.ask(&runtime, &request),
        };
        match answer {
            Ok(Response::Ok) => {}
            Err(Error::Refused(why)) if action == Action::Save => {
                return Err(Error::SaveFailed(why))
            }
            Ok(other) => return Err(unexpected(other)),
            Err(e) => return Err(e),
        }
        if action.ends_the_vm() && !self.wait_stopped(&runtime, STOP_TIMEOUT) {
            return Err(Error::StopTimeout);
        }
        if action == Action::Save && !self.state(entry).is_saved() {
            let how = LastExit::load(&entry.last_exit_path())
                .map_or_else(|| "the engine ended".to_owned(), |e| e.reason());
            return Err(Error::SaveFailed(format!(
                "the engine ended without a saved state ({how})"
            )));
        }
        Ok(())
    }

    /// After [`Action::Shutdown`]: waits up to `timeout` for the guest to power itself
    /// off (the app asks its user what next; the CLI says it).
    pub fn wait_shut_down(&self, entry: &VmEntry, timeout: Duration) -> Result<(), Error> {
        let runtime = self.runtime(entry)?;
        if self.wait_stopped(&runtime, timeout) {
            Ok(())
        } else {
            Err(Error::ShutdownTimeout(timeout))
        }
    }

    /// Whether the engine has gone within `timeout`.
    fn wait_stopped(&self, runtime: &RuntimeFiles, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while lock::is_held(&runtime.lock()) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.reap();
        true
    }

    /// Has the engine write the guest's screen to `path` (PNG); returns its size.
    pub fn screenshot(&self, entry: &VmEntry, path: &Path) -> Result<(u32, u32), Error> {
        let runtime = self.runtime(entry)?;
        if !lock::is_held(&runtime.lock()) {
            return Err(Error::NotRunning);
        }
        // Landlock lets the engine write only in its runtime directory: it writes the
        // PNG there and we move it where the user asked.
        static STAGED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = STAGED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let staged = runtime
            .dir
            .join(format!("screenshot-{}-{n}.png", std::process::id()));
        let request = Request::Screenshot {
            path: staged.to_string_lossy().into_owned(),
        };
        // The engine encodes a PNG of the whole screen: seconds on a busy host.
        let size = match self.ask_with(&runtime, &request, SCREENSHOT_TIMEOUT) {
            Ok(Response::Screenshot { width, height, .. }) => (width, height),
            failed => {
                // (A write the engine makes after our timeout goes with the runtime
                // directory when the VM stops.)
                let _ = std::fs::remove_file(&staged);
                return Err(failed.map_or_else(|e| e, unexpected));
            }
        };
        let moved = move_file(&staged, path);
        let _ = std::fs::remove_file(&staged);
        moved.map_err(|source| Error::ScreenshotWrite {
            path: path.to_owned(),
            source,
        })?;
        Ok(size)
    }

    /// The running engine's pid, as its monitor wrote it.
    fn engine_pid(runtime: &RuntimeFiles) -> Option<i32> {
        std::fs::read_to_string(runtime.engine_pid())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Whether the running VM's engine is an older build than the one installed now: a
    /// package upgrade replaced (or removed) the binary it runs. `upgrade` moves it.
    pub fn engine_outdated(&self, entry: &VmEntry) -> bool {
        let Ok(runtime) = self.runtime(entry) else {
            return false;
        };
        let Some(pid) = Self::engine_pid(&runtime) else {
            return false;
        };
        let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
            return false;
        };
        // The kernel marks a running binary whose file was replaced or removed.
        exe.to_string_lossy().ends_with(" (deleted)")
    }

    /// Moves a running VM to the engine binary installed now, without stopping it: its
    /// monitor starts the new engine and migrates the VM there (see `monitor`). Returns
    /// the new engine's pid once it answers.
    pub fn upgrade(&self, entry: &VmEntry) -> Result<i32, Error> {
        let runtime = self.runtime(entry)?;
        if !lock::is_held(&runtime.lock()) {
            return Err(Error::NotRunning);
        }
        let old = Self::engine_pid(&runtime).ok_or(Error::NotRunning)?;
        let monitor = parent_pid(old).ok_or(Error::NotRunning)?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(monitor),
            nix::sys::signal::Signal::SIGUSR1,
        )
        .map_err(|e| Error::UpgradeFailed(format!("cannot reach the VM's monitor: {e}")))?;
        let deadline = Instant::now() + UPGRADE_TIMEOUT;
        loop {
            match Self::engine_pid(&runtime) {
                Some(new) if new != old => {
                    // The new engine owns the control socket once it has the VM.
                    self.ask(&runtime, &Request::Status {})?;
                    return Ok(new);
                }
                _ if !lock::is_held(&runtime.lock()) => return Err(Error::NotRunning),
                // The monitor gave up: the old engine still runs the VM.
                _ if parent_pid(old) == Some(monitor)
                    && log_tail(&entry.log_path(), LOG_TAIL)
                        .iter()
                        .any(|l| l.contains("engine upgrade failed")) =>
                {
                    return Err(Error::UpgradeFailed(engine_reason_upgrade(&log_tail(
                        &entry.log_path(),
                        LOG_TAIL,
                    ))))
                }
                _ if Instant::now() > deadline => {
                    return Err(Error::UpgradeFailed(
                        "the VM did not move in time (see its log)".into(),
                    ))
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Deletes a stopped VM (`library::Library::delete`), refusing a running one.
    pub fn ensure_stopped(&self, entry: &VmEntry) -> Result<(), Error> {
        if self.state(entry).is_running() {
            return Err(Error::Running);
        }
        Ok(())
    }

    /// Waits for monitors of ours that have ended.
    fn reap(&self) {
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        children.retain_mut(|c| matches!(c.try_wait(), Ok(None)));
    }
}

/// A process's parent, from /proc.
fn parent_pid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// The monitor's reason for a failed upgrade, from the log.
fn engine_reason_upgrade(log_tail: &[String]) -> String {
    log_tail
        .iter()
        .rev()
        .find_map(|l| l.split_once("engine upgrade failed: ").map(|(_, why)| why))
        .unwrap_or("see the VM's log")
        .to_owned()
}

/// When the snapshot at `path` was written, if there is one.
fn saved_time(path: &Path) -> Option<u64> {
    let meta = std::fs::metadata(path)
        .ok()
        .filter(std::fs::Metadata::is_file)?;
    let modified = meta.modified().ok()?;
    Some(
        modified
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    )
}

/// The engine's own one-line reason from the end of its log (`vireo-vmm: ...`), or the
/// last line if it wrote none.
fn engine_reason(log_tail: &[String]) -> String {
    log_tail
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("vireo-vmm: "))
        .or_else(|| {
            log_tail
                .iter()
                .rev()
                .find(|l| !l.is_empty())
                .map(String::as_str)
        })
        .unwrap_or("the engine gave no reason")
        .to_owned()
}

fn unexpected(answer: Response) -> Error {
    Error::Unexpected(format!("{answer:?}"))
}

/// The log for this run: emptied at each start (the last run's is what matters).
fn open_log(path: &Path) -> std::io::Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::File::create(path)
}

/// The last `n` lines of the log (reading at most its last 64 KiB).
pub fn log_tail(path: &Path, n: usize) -> Vec<String> {
    let Ok(mut file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = file.metadata().map_or(0, |m| m.len());
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(64 << 10)));
    let lines: Vec<String> = BufReader::new(file)
        .split(b'\n')
        .map_while(Result::ok)
        .map(|l| String::from_utf8_lossy(&l).trim_end().to_owned())
        .collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

/// Moves `from` to `to`, copying where they are on different file systems (the runtime
/// directory is a tmpfs).
fn move_file(from: &Path, to: &Path) -> std::io::Result<()> {
    match std::fs::rename(from, to) {
        Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => {
            std::fs::copy(from, to)?;
            std::fs::remove_file(from)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_engines_reason_is_its_own_last_line() {
        let tail: Vec<String> = [
            "VIREO-PROBE something",
            "vireo-vmm: the disk /vms/a/disk.img changed since the VM was saved",
            "vireo monitor: engine ended: the engine could not start the VM",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            engine_reason(&tail),
            "the disk /vms/a/disk.img changed since the VM was saved"
        );
        assert_eq!(engine_reason(&tail[..1]), "VIREO-PROBE something");
        assert_eq!(engine_reason(&[]), "the engine gave no reason");
    }

    #[test]
    fn a_save_is_a_clean_end() {
        let saved = LastExit {
            code: Some(vireo_vmm::exit::code::SAVED),
            signal: None,
            ended_unix: 1,
        };
        assert!(saved.clean());
        assert_eq!(saved.reason(), "saved");
        assert_eq!(
            VmState::Saved {
                saved_unix: 1,
                refused: None
            }
            .word(),
            "saved"
        );
    }
}
