//! What the VM window's toolbar says about the guest agent, feature by feature.

use vireo_guest_agent::protocol::{Capabilities, ClipboardSource};

/// One agent feature as the user sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Feature {
    Working,
    /// Turned off in the VM's settings.
    Off,
    /// No agent answers, or the agent does not offer it.
    NotInstalled,
    Error(String),
}

impl Feature {
    pub fn word(&self) -> &str {
        match self {
            Feature::Working => "working",
            Feature::Off => "off",
            Feature::NotInstalled => "not installed",
            Feature::Error(_) => "error",
        }
    }

    /// The word the toolbar shows after the feature's name (the default fonts have no
    /// check marks).
    pub fn sign(&self) -> &'static str {
        match self {
            Feature::Working => "ok",
            Feature::Off => "off",
            Feature::NotInstalled => "n/a",
            Feature::Error(_) => "error",
        }
    }

    /// The hover text: the word, and for an error its reason.
    pub fn detail(&self) -> String {
        match self {
            Feature::Error(why) => format!("error: {why}"),
            other => other.word().to_owned(),
        }
    }

    fn offered(caps: Capabilities, cap: Capabilities) -> Feature {
        if caps.contains(cap) {
            Feature::Working
        } else {
            Feature::NotInstalled
        }
    }
}

/// The agent of one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentStatus {
    /// An agent answered the hello and the connection is up.
    pub connected: bool,
    pub clipboard: Feature,
    pub folders: Feature,
    pub time: Feature,
    pub mouse: Feature,
    /// The agent says the guest drives the absolute tablet: the pointer needs no capture.
    pub absolute_pointer: bool,
    /// Where the agent says the guest's clipboard lives (a desktop session, or its own
    /// copy when no session runs `vireo-agent session`).
    pub clipboard_source: Option<ClipboardSource>,
}

impl Default for AgentStatus {
    fn default() -> Self {
        AgentStatus::no_agent()
    }
}

impl AgentStatus {
    pub fn no_agent() -> AgentStatus {
        AgentStatus {
            connected: false,
            clipboard: Feature::NotInstalled,
            folders: Feature::NotInstalled,
            time: Feature::NotInstalled,
            mouse: Feature::NotInstalled,
            absolute_pointer: false,
            clipboard_source: None,
        }
    }

    /// What an agent offering `caps` does, before it has said more (the mouse works once
    /// it reports the tablet in use).
    pub fn offered(caps: Capabilities) -> AgentStatus {
        AgentStatus {
            connected: true,
            clipboard: Feature::offered(caps, Capabilities::CLIPBOARD),
            folders: Feature::offered(caps, Capabilities::SHARED_FOLDERS),
            time: Feature::offered(caps, Capabilities::TIME),
            mouse: Feature::NotInstalled,
            absolute_pointer: false,
            clipboard_source: None,
        }
    }

    /// The clipboard's hover text: its state and, while it works, where in the guest
    /// copies land.
    pub fn clipboard_detail(&self) -> String {
        let detail = self.clipboard.detail();
        match (&self.clipboard, self.clipboard_source) {
            (Feature::Working, Some(ClipboardSource::UserSession { uid })) => {
                format!("{detail}, with the desktop session of guest user {uid}")
            }
            (Feature::Working, Some(ClipboardSource::AgentDisplay)) => {
                format!("{detail}, with the X display of the guest agent")
            }
            (Feature::Working, Some(ClipboardSource::AgentCopy)) => format!(
                "{detail}, but no desktop session in the guest runs `vireo-agent session`: \
                 the guest's clipboard is `vireo-agent clipboard get|set`"
            ),
            _ => detail,
        }
    }

    /// The features by name, in toolbar order.
    pub fn features(&self) -> [(&'static str, &Feature); 4] {
        [
            ("Clipboard", &self.clipboard),
            ("Folders", &self.folders),
            ("Time", &self.time),
            ("Mouse", &self.mouse),
        ]
    }

    /// One line: `clipboard working, folders not installed, ...` (the app's log).
    pub fn summary(&self) -> String {
        self.features()
            .iter()
            .map(|(name, f)| format!("{} {}", name.to_lowercase(), f.detail()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_become_features() {
        let probe = Capabilities::INFO
            .union(Capabilities::POWER)
            .union(Capabilities::TIME)
            .union(Capabilities::CLIPBOARD);
        let status = AgentStatus::offered(probe);
        assert_eq!(
            status.summary(),
            "clipboard working, folders not installed, time working, mouse not installed"
        );
        assert!(status.connected && !status.absolute_pointer);
        let none = AgentStatus::no_agent();
        assert!(none
            .features()
            .iter()
            .all(|(_, f)| **f == Feature::NotInstalled));
        assert_eq!(Feature::Error("x".into()).detail(), "error: x");
    }

    #[test]
    fn the_clipboards_detail_says_where_copies_land() {
        let mut status = AgentStatus::offered(Capabilities::CLIPBOARD);
        assert_eq!(status.clipboard_detail(), "working");
        status.clipboard_source = Some(ClipboardSource::UserSession { uid: 1000 });
        assert!(status
            .clipboard_detail()
            .contains("desktop session of guest user 1000"));
        status.clipboard_source = Some(ClipboardSource::AgentCopy);
        assert!(status.clipboard_detail().contains("vireo-agent clipboard"));
        status.clipboard = Feature::Error("too big".into());
        assert_eq!(status.clipboard_detail(), "error: too big");
    }
}
