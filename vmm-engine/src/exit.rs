//! Why a VM stopped, and the process exit code each reason maps to.

use std::sync::mpsc;

/// Process exit codes of `vireo-vmm`, documented in `--help` and the README.
pub mod code {
    /// The guest powered off.
    pub const POWER_OFF: i32 = 0;
    /// The engine could not start the VM (bad flags, missing files, no KVM).
    pub const ERROR: i32 = 1;
    /// Command-line syntax error.
    pub const USAGE: i32 = 2;
    /// The guest rebooted (with `--reboot=exit`, the default).
    pub const REBOOT: i32 = 3;
    /// The guest crashed: triple fault, KVM internal error, failed VM entry.
    pub const CRASH: i32 = 4;
    /// The VM was saved to a snapshot file (`save` on the control socket).
    pub const SAVED: i32 = 5;
    /// The VM moved to another engine (`migrate` on the control socket).
    pub const MIGRATED: i32 = 6;
}

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// ACPI S5 from the guest.
    PowerOff,
    /// ACPI reset or the i8042 reset line.
    Reboot,
    /// The guest cannot go on; the text names what KVM reported.
    Crash(String),
    /// The user asked (Ctrl-A x on the console, or the owner of the VM stopped it).
    Stopped,
    /// The control socket asked for a save to this file: not an end by itself (the VM
    /// goes on if the save fails).
    SaveRequested(std::path::PathBuf),
    /// The VM's state is in this file and the VM has stopped.
    Saved(std::path::PathBuf),
    /// The control socket asked for a live migration to this endpoint (as the
    /// request wrote it); the VM goes on if it fails.
    MigrateRequested(String),
    /// The VM runs in another engine now.
    Migrated(String),
}

impl ExitReason {
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::PowerOff | ExitReason::Stopped => code::POWER_OFF,
            ExitReason::Reboot => code::REBOOT,
            ExitReason::Crash(_) => code::CRASH,
            ExitReason::Saved(_) => code::SAVED,
            ExitReason::Migrated(_) => code::MIGRATED,
            ExitReason::SaveRequested(_) | ExitReason::MigrateRequested(_) => code::ERROR,
        }
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::PowerOff => f.write_str("guest powered off"),
            ExitReason::Reboot => f.write_str("guest rebooted"),
            ExitReason::Crash(why) => write!(f, "guest crashed: {why}"),
            ExitReason::Stopped => f.write_str("stopped by the user"),
            ExitReason::SaveRequested(p) => write!(f, "asked to save to {}", p.display()),
            ExitReason::Saved(p) => write!(f, "saved to {}", p.display()),
            ExitReason::MigrateRequested(to) => write!(f, "asked to migrate to {to}"),
            ExitReason::Migrated(to) => write!(f, "migrated to {to}"),
        }
    }
}

/// Handed to devices and vCPU threads so that any of them can end the VM. The first
/// reason sent wins; the VM's owner waits on the other end.
#[derive(Debug, Clone)]
pub struct ExitSender(mpsc::Sender<ExitReason>);

impl ExitSender {
    pub fn channel() -> (ExitSender, mpsc::Receiver<ExitReason>) {
        let (tx, rx) = mpsc::channel();
        (ExitSender(tx), rx)
    }

    pub fn send(&self, reason: ExitReason) {
        // The receiver is gone only while the VM is being torn down: nothing to tell.
        let _ = self.0.send(reason);
    }
}
