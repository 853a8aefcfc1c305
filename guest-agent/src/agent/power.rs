//! Graceful shutdown and reboot, behind a trait so that tests never power off this host.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use crate::protocol::PowerAction;

#[derive(Debug, thiserror::Error)]
pub enum PowerError {
    #[error("cannot run {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} exited with {status}")]
    Failed {
        program: String,
        status: std::process::ExitStatus,
    },
    #[error("cannot record the power action in {}", path.display())]
    Record {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub trait PowerControl: Send + Sync {
    fn power(&self, action: PowerAction) -> Result<(), PowerError>;
}

/// The guest's own graceful path: `systemctl poweroff|reboot` when systemd runs (it
/// stops the services in order), else busybox's `poweroff|reboot`, which signals init.
#[derive(Debug, Default)]
pub struct SystemPower;

impl SystemPower {
    /// The command for `action` on a system whose root is `root`.
    pub fn command_for(root: &Path, action: PowerAction) -> (String, Vec<String>) {
        let verb = match action {
            PowerAction::Shutdown => "poweroff",
            PowerAction::Reboot => "reboot",
        };
        // sd_booted(3): systemd is PID 1 exactly when this directory exists.
        if root.join("run/systemd/system").is_dir() {
            ("systemctl".into(), vec![verb.into()])
        } else {
            (verb.into(), Vec::new())
        }
    }
}

impl PowerControl for SystemPower {
    fn power(&self, action: PowerAction) -> Result<(), PowerError> {
        let (program, args) = Self::command_for(Path::new("/"), action);
        let status = Command::new(&program)
            .args(&args)
            .status()
            .map_err(|source| PowerError::Spawn {
                program: program.clone(),
                source,
            })?;
        if status.success() {
            Ok(())
        } else {
            Err(PowerError::Failed { program, status })
        }
    }
}

/// Records the actions instead of running them: in memory, and as lines in a file when
/// one is given (the binary's hidden `--fake-power FILE`, for end-to-end tests).
#[derive(Debug, Default)]
pub struct RecordingPower {
    actions: Mutex<Vec<PowerAction>>,
    file: Option<PathBuf>,
}

impl RecordingPower {
    pub fn to_file(path: PathBuf) -> Self {
        Self {
            actions: Mutex::default(),
            file: Some(path),
        }
    }

    pub fn actions(&self) -> Vec<PowerAction> {
        self.actions.lock().map(|a| a.clone()).unwrap_or_default()
    }
}

impl PowerControl for RecordingPower {
    fn power(&self, action: PowerAction) -> Result<(), PowerError> {
        if let Ok(mut actions) = self.actions.lock() {
            actions.push(action);
        }
        if let Some(path) = &self.file {
            let line = match action {
                PowerAction::Shutdown => "shutdown\n",
                PowerAction::Reboot => "reboot\n",
            };
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| f.write_all(line.as_bytes()))
                .map_err(|source| PowerError::Record {
                    path: path.clone(),
                    source,
                })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_or_busybox_command() {
        let dir = std::env::temp_dir().join(format!("vireo-power-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(
            SystemPower::command_for(&dir, PowerAction::Shutdown),
            ("poweroff".into(), vec![])
        );
        std::fs::create_dir_all(dir.join("run/systemd/system")).unwrap();
        assert_eq!(
            SystemPower::command_for(&dir, PowerAction::Reboot),
            ("systemctl".into(), vec!["reboot".into()])
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn recording_power_writes_lines() {
        let path = std::env::temp_dir().join(format!("vireo-power-log-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let power = RecordingPower::to_file(path.clone());
        power.power(PowerAction::Shutdown).unwrap();
        power.power(PowerAction::Reboot).unwrap();
        assert_eq!(
            power.actions(),
            vec![PowerAction::Shutdown, PowerAction::Reboot]
        );
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "shutdown\nreboot\n"
        );
        std::fs::remove_file(&path).unwrap();
    }
}
