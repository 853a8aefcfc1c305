//! The desktop-session part of the agent, split as spice-vdagent splits it: the system
//! agent (root, no display) listens on a local socket ([`server`]); `vireo-agent session`
//! runs as the desktop user inside the graphical session ([`client`]), owns that
//! session's clipboard and connects to it. While a session is connected its clipboard is
//! the guest's ([`remote`] is the worker's view of it); when it goes, the agent's own
//! copy takes over again. [`link`] is the wire, [`peer`] who may connect.

pub mod client;
pub mod link;
pub mod peer;
pub mod remote;
pub mod server;

/// Where the system agent listens and `vireo-agent session` connects by default (the
/// systemd unit's `RuntimeDirectory=vireo-agent`).
pub const DEFAULT_SOCKET: &str = "/run/vireo-agent/session.sock";

/// Whether this machine has a virtio vsock device (virtio id 19), as a Vireo VM does:
/// the autostarted session part has nothing to do elsewhere (the service's own check).
pub fn has_virtio_vsock() -> bool {
    std::fs::read_dir("/sys/bus/virtio/devices")
        .into_iter()
        .flatten()
        .flatten()
        .any(|d| {
            std::fs::read_to_string(d.path().join("device")).is_ok_and(|id| id.trim() == "0x0013")
        })
}
