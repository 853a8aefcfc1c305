//! The monitor: a small process per running VM (`vireo monitor ...`, started detached by
//! `Supervisor::start`) that takes the VM's run lock, runs the engine with its console
//! and messages going to the VM's log, waits for it, and writes how it ended
//! (`last-exit.json`). So the app can quit and come back: the lock says the VM runs,
//! and after the engine is gone the exit record says why, with nobody left to `wait`.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::lock::RunLock;
use crate::vm_config::write_atomically;

/// What the monitor is told (the `vireo monitor` arguments).
#[derive(Debug, Clone)]
pub struct MonitorArgs {
    pub lock: PathBuf,
    pub engine_pid: PathBuf,
    pub last_exit: PathBuf,
    pub engine: PathBuf,
    pub engine_args: Vec<OsString>,
}

/// How the engine's last run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastExit {
    /// The engine's exit status, if it exited.
    pub code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// Seconds since the epoch.
    pub ended_unix: u64,
}

impl LastExit {
    fn from_status(status: ExitStatus) -> LastExit {
        LastExit {
            code: status.code(),
            signal: status.signal(),
            ended_unix: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }

    /// Whether the guest powered off (or was powered off, or saved): nothing to report.
    pub fn clean(&self) -> bool {
        use vireo_vmm::exit::code;
        matches!(self.code, Some(code::POWER_OFF | code::SAVED))
    }

    /// The engine's exit status in words (`vireo-vmm --help` documents them).
    pub fn reason(&self) -> String {
        use vireo_vmm::exit::code;
        match (self.code, self.signal) {
            (Some(code::POWER_OFF), _) => "powered off".into(),
            (Some(code::ERROR), _) => "the engine could not start the VM".into(),
            (Some(code::REBOOT), _) => "the guest rebooted".into(),
            (Some(code::CRASH), _) => "the guest crashed".into(),
            (Some(code::SAVED), _) => "saved".into(),
            (Some(c), _) => format!("the engine exited with status {c}"),
            (None, Some(s)) => format!(
                "the engine was killed by signal {s} ({})",
                nix::sys::signal::Signal::try_from(s).map_or("unknown", |s| s.as_str())
            ),
            (None, None) => "the engine ended for an unknown reason".into(),
        }
    }

    pub fn load(path: &Path) -> Option<LastExit> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }
}

/// Runs the monitor; returns its exit status. Its stdout and stderr are the VM's log,
/// which the engine inherits.
pub fn run(args: &MonitorArgs) -> i32 {
    // Its own session: a terminal closing or a Ctrl-C in the shell that ran `vireo
    // start` does not reach the VM.
    let _ = nix::unistd::setsid();
    let lock = match RunLock::acquire(&args.lock, Duration::from_secs(1)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("vireo monitor: {e}");
            return 1;
        }
    };
    let _ = std::fs::remove_file(&args.last_exit);
    if let Err(e) = lock.inherit_to_children() {
        eprintln!("vireo monitor: cannot pass the run lock to the engine: {e}");
        return 1;
    }
    let mut child = match Command::new(&args.engine)
        .args(&args.engine_args)
        .stdin(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vireo monitor: cannot start {}: {e}", args.engine.display());
            record(
                args,
                LastExit {
                    code: Some(vireo_vmm::exit::code::ERROR),
                    signal: None,
                    ended_unix: 0,
                },
            );
            return 1;
        }
    };
    let _ = write_atomically(&args.engine_pid, child.id().to_string().as_bytes());
    let status = loop {
        match child.wait() {
            Ok(s) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("vireo monitor: cannot wait for the engine: {e}");
                return 1;
            }
        }
    };
    let _ = std::fs::remove_file(&args.engine_pid);
    let exit = LastExit::from_status(status);
    eprintln!("vireo monitor: engine ended: {}", exit.reason());
    record(args, exit);
    drop(lock);
    0
}

fn record(args: &MonitorArgs, exit: LastExit) {
    let json = serde_json::to_vec(&exit).unwrap_or_default();
    if let Err(e) = write_atomically(&args.last_exit, &json) {
        eprintln!(
            "vireo monitor: cannot write {}: {e}",
            args.last_exit.display()
        );
    }
}
