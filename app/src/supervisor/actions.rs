//! What a user can do to a running VM, and the control request each becomes. Starting a
//! saved VM is not one of these: `Supervisor::start` restores it.

use std::path::Path;

use vireo_vmm::control::protocol::Request;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Ends the VM at once, as pulling the plug.
    PowerOff,
    /// Asks the guest to shut down (the ACPI power button).
    Shutdown,
    Pause,
    Resume,
    /// Saves the VM's state to disk and stops it (the next start restores it).
    Save,
}

impl Action {
    /// The request that performs this action on the engine; `snapshot` is where a save
    /// goes (`VmEntry::snapshot_path`, absolute: the engine does not share our cwd).
    pub fn request(self, snapshot: &Path) -> Request {
        match self {
            Action::PowerOff => Request::PowerOff {},
            Action::Shutdown => Request::Shutdown {},
            Action::Pause => Request::Pause {},
            Action::Resume => Request::Resume {},
            Action::Save => Request::Save {
                path: snapshot.to_string_lossy().into_owned(),
            },
        }
    }

    /// The word for messages and buttons.
    pub fn verb(self) -> &'static str {
        match self {
            Action::PowerOff => "power off",
            Action::Shutdown => "shut down",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Save => "save",
        }
    }

    /// The button's text.
    pub fn label(self) -> &'static str {
        match self {
            Action::PowerOff => "Power off",
            Action::Shutdown => "Shut down",
            Action::Pause => "Pause",
            Action::Resume => "Resume",
            Action::Save => "Save",
        }
    }

    /// Whether the engine is gone once the action is done (the caller waits for it).
    pub fn ends_the_vm(self) -> bool {
        matches!(self, Action::PowerOff | Action::Save)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_become_requests() {
        let snap = Path::new("/vms/a/saved-state.snap");
        assert_eq!(Action::PowerOff.request(snap), Request::PowerOff {});
        assert_eq!(Action::Pause.request(snap), Request::Pause {});
        assert_eq!(Action::Resume.request(snap), Request::Resume {});
        assert_eq!(Action::Shutdown.request(snap), Request::Shutdown {});
        assert_eq!(
            Action::Save.request(snap),
            Request::Save {
                path: "/vms/a/saved-state.snap".into()
            }
        );
    }
}
