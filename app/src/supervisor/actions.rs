//! What a user can do to a running VM, and the control request each becomes. The engine
//! answers some of these today; the others are refused with a message saying so, never
//! pretended. When the engine learns one (issue 8: save, restore), its arm in `Action::request` is all that changes.

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
    /// Saves the VM's state to disk and stops it.
    Save,
    /// Starts a saved VM from its state.
    Restore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{} is not supported by this engine yet (vireo-vmm's control socket has no such request)", .0.verb())]
pub struct Unsupported(pub Action);

impl Action {
    /// The request that performs this action on the engine.
    pub fn request(self) -> Result<Request, Unsupported> {
        match self {
            Action::PowerOff => Ok(Request::PowerOff {}),
            Action::Shutdown => Ok(Request::Shutdown {}),
            Action::Pause => Ok(Request::Pause {}),
            Action::Resume => Ok(Request::Resume {}),
            Action::Save => Err(Unsupported(self)),
            Action::Restore => Err(Unsupported(self)),
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
            Action::Restore => "restore",
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
            Action::Restore => "Restore",
        }
    }

    /// Whether the engine supports it, for greying out buttons.
    pub fn supported(self) -> bool {
        self.request().is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_actions_say_so() {
        assert_eq!(Action::PowerOff.request(), Ok(Request::PowerOff {}));
        assert_eq!(Action::Pause.request(), Ok(Request::Pause {}));
        assert_eq!(Action::Resume.request(), Ok(Request::Resume {}));
        assert_eq!(Action::Shutdown.request(), Ok(Request::Shutdown {}));
        for a in [Action::Save, Action::Restore] {
            let err = a.request().unwrap_err().to_string();
            assert!(
                err.starts_with(a.verb()) && err.contains("not supported by this engine yet"),
                "{err}"
            );
        }
    }
}
