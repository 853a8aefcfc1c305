//! The monitor: a small process per running VM (`vireo monitor ...`, started detached by
//! `Supervisor::start`) that takes the VM's run lock, runs the engine with its console
//! and messages going to the VM's log, waits for it, and writes how it ended
//! (`last-exit.json`). So the app can quit and come back: the lock says the VM runs,
//! and after the engine is gone the exit record says why, with nobody left to `wait`.
//!
//! An engine upgrade (SIGUSR1, sent by `Supervisor::upgrade`): the engine binary at
//! `--engine` (a package upgrade has replaced it) is started with the same flags plus
//! `--incoming`, the running engine is asked to migrate to it, and the monitor then
//! waits for the new engine instead: the VM moves to the new build without stopping.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

use signal_hook::consts::{SIGCHLD, SIGUSR1};
use signal_hook::iterator::Signals;
use vireo_vmm::control::client::Control;
use vireo_vmm::control::protocol::{Request, Response};

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
    // Before the engine starts, so that no SIGCHLD is missed.
    let mut signals = match Signals::new([SIGCHLD, SIGUSR1]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("vireo monitor: cannot watch for signals: {e}");
            return 1;
        }
    };
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
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => {
                eprintln!("vireo monitor: cannot wait for the engine: {e}");
                return 1;
            }
        }
        if signals.wait().any(|s| s == SIGUSR1) {
            match upgrade(args, &mut child) {
                Ok(new) => {
                    child = new;
                    let _ = write_atomically(&args.engine_pid, child.id().to_string().as_bytes());
                    eprintln!("vireo monitor: the VM moved to {}", args.engine.display());
                }
                Err(why) => eprintln!("vireo monitor: the engine upgrade failed: {why}"),
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

/// How long the new engine may take to listen for the migration.
const UPGRADE_LISTEN_WAIT: Duration = Duration::from_secs(10);
/// How long the migration may take (it copies all of guest memory).
const UPGRADE_MIGRATE_WAIT: Duration = Duration::from_secs(120);

/// Moves the VM from `old` to a new engine started from `args.engine`; returns the new
/// engine once the old one has ended, having migrated. On failure the old engine runs
/// on (a failed migration leaves the VM where it was) and the new one is stopped.
fn upgrade(args: &MonitorArgs, old: &mut Child) -> Result<Child, String> {
    let control = flag_value(&args.engine_args, "--control-socket")
        .ok_or("the engine has no control socket to ask")?;
    let socket = args.lock.with_file_name("upgrade.sock");
    let _ = std::fs::remove_file(&socket);
    let to = format!("unix:{}", socket.display());
    let mut new = Command::new(&args.engine)
        .args(upgrade_args(&args.engine_args, &to))
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", args.engine.display()))?;
    let moved = migrate(old, &mut new, &socket, &control, &to);
    if moved.is_err() {
        let _ = new.kill();
        let _ = new.wait();
    }
    let _ = std::fs::remove_file(&socket);
    moved.map(|()| new)
}

/// Asks the engine at `control` to migrate to `to` (where `new` listens on `socket`) and
/// waits for it to end as migrated.
fn migrate(
    old: &mut Child,
    new: &mut Child,
    socket: &Path,
    control: &Path,
    to: &str,
) -> Result<(), String> {
    let deadline = Instant::now() + UPGRADE_LISTEN_WAIT;
    while !socket.exists() {
        if let Ok(Some(status)) = new.try_wait() {
            return Err(format!("the new engine ended at once ({status})"));
        }
        if Instant::now() > deadline {
            return Err("the new engine did not listen for the VM".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let asked = Control::connect(control)
        .and_then(|c| {
            c.set_timeout(Some(UPGRADE_MIGRATE_WAIT))?;
            Ok(c)
        })
        .and_then(|mut c| c.ask(&Request::Migrate { to: to.into() }))
        .map_err(|e| format!("cannot ask the running engine: {e}"))?;
    match asked {
        Response::Ok => {}
        Response::Error { message } => return Err(message),
        other => return Err(format!("unexpected answer {other:?}")),
    }
    let status = old
        .wait()
        .map_err(|e| format!("cannot wait for the old engine: {e}"))?;
    if status.code() == Some(vireo_vmm::exit::code::MIGRATED) {
        Ok(())
    } else {
        Err(format!(
            "the old engine ended {status} instead of handing over"
        ))
    }
}

/// The engine's flags for the new engine of an upgrade: the same VM, waiting for it at
/// `to`. A restore it was started with is done (and --incoming excludes it), and the
/// VM runs (or stays paused) as it is now.
fn upgrade_args(engine_args: &[OsString], to: &str) -> Vec<OsString> {
    let mut out = Vec::with_capacity(engine_args.len() + 2);
    let mut args = engine_args.iter();
    while let Some(arg) = args.next() {
        if arg == "--restore" {
            args.next();
        } else if arg != "--paused" {
            out.push(arg.clone());
        }
    }
    out.push("--incoming".into());
    out.push(to.into());
    out
}

/// The value after `flag` in an argument list.
fn flag_value(args: &[OsString], flag: &str) -> Option<PathBuf> {
    let at = args.iter().position(|a| a == flag)?;
    args.get(at + 1).map(PathBuf::from)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn an_upgrade_runs_the_same_vm_waiting_for_it_instead_of_restoring() {
        let engine = args(&[
            "--kernel",
            "k",
            "--restore",
            "/v/s.snap",
            "--paused",
            "--control-socket",
            "/r/c.sock",
        ]);
        assert_eq!(
            upgrade_args(&engine, "unix:/r/upgrade.sock"),
            args(&[
                "--kernel",
                "k",
                "--control-socket",
                "/r/c.sock",
                "--incoming",
                "unix:/r/upgrade.sock"
            ])
        );
        assert_eq!(
            flag_value(&engine, "--control-socket"),
            Some(PathBuf::from("/r/c.sock"))
        );
        assert_eq!(flag_value(&engine, "--vsock"), None);
    }
}
