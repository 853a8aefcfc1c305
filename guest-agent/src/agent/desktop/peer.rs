//! Which local processes may own the session clipboard, decided from the peer's
//! credentials (`SO_PEERCRED`: the kernel's word, not the client's).
//!
//! - root is accepted: it could replace the agent anyway;
//! - when logind runs (its session directory exists), a user is accepted only while it
//!   owns an active graphical session (`ACTIVE=1`, `TYPE=x11|wayland|mir`), the rule
//!   spice-vdagentd applies through sd-login: the user in front of the screen;
//! - without logind, any user is: there is no better word on who is at the screen.
//!
//! The newest accepted session wins (the server tells an older one to stand down), which
//! follows a user switch: the new session's autostart connects last.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// Where logind keeps one file per session (the files sd-login reads).
pub const LOGIND_SESSIONS: &str = "/run/systemd/sessions";

#[derive(Debug, Clone)]
pub struct PeerRule {
    /// logind's session directory (a test's stand-in).
    pub sessions_dir: PathBuf,
}

impl Default for PeerRule {
    fn default() -> Self {
        Self {
            sessions_dir: PathBuf::from(LOGIND_SESSIONS),
        }
    }
}

impl PeerRule {
    /// The peer's uid if it may connect, else why not.
    pub fn check(&self, stream: &UnixStream) -> Result<u32, String> {
        let cred = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
            .map_err(|e| format!("SO_PEERCRED: {e}"))?;
        let uid = cred.uid();
        if uid == 0 {
            return Ok(uid);
        }
        match active_graphical_owners(&self.sessions_dir) {
            None => Ok(uid),
            Some(owners) if owners.contains(&uid) => Ok(uid),
            Some(_) => Err(format!(
                "uid {uid} (pid {}) owns no active graphical session",
                cred.pid()
            )),
        }
    }
}

/// The uids owning an active graphical session, or `None` when logind is not running.
fn active_graphical_owners(dir: &Path) -> Option<Vec<u32>> {
    let entries = std::fs::read_dir(dir).ok()?;
    let owners = entries
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|text| active_graphical_owner(&text))
        .collect();
    Some(owners)
}

/// One session file (`KEY=value` lines): its owner, if it is active and graphical.
fn active_graphical_owner(text: &str) -> Option<u32> {
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
    };
    let graphical = matches!(value("TYPE"), Some("x11" | "wayland" | "mir"));
    if value("ACTIVE") != Some("1") || !graphical {
        return None;
    }
    value("UID")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_active_graphical_sessions_count() {
        let file =
            |active, kind| format!("# comment\nUID=1000\nUSER=ann\nACTIVE={active}\nTYPE={kind}\n");
        assert_eq!(active_graphical_owner(&file(1, "x11")), Some(1000));
        assert_eq!(active_graphical_owner(&file(1, "wayland")), Some(1000));
        assert_eq!(active_graphical_owner(&file(0, "x11")), None);
        assert_eq!(active_graphical_owner(&file(1, "tty")), None);
        assert_eq!(active_graphical_owner("ACTIVE=1\nTYPE=x11\nUID=x\n"), None);
    }

    #[test]
    fn no_logind_means_no_list() {
        assert_eq!(
            active_graphical_owners(Path::new("/nonexistent/vireo")),
            None
        );
    }
}
