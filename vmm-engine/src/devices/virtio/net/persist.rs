//! What a saved network card keeps besides its queues: its configuration space. The
//! guest knows the card by its MAC (the default one is made from the engine's pid, so a
//! restored engine would pick another); the link status is what the card reports.
//!
//! No frame is kept: the driver's receive buffers stay in the receiveq until a frame
//! fills them (the worker pops them only for a frame it has, and puts them back when
//! they are too few), transmitted chains wait in the transmitq while the backend is
//! full, and what the backend held is lost with it, as on a wire.

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_net::VIRTIO_NET_S_LINK_UP;

use super::MacAddr;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetState {
    pub mac: MacAddr,
    /// The configuration space's `status` (VIRTIO_NET_S_*).
    pub status: u16,
}

impl NetState {
    /// A saved state as untrusted input: a link status this card can report.
    pub fn parse(value: &serde_json::Value) -> Result<Self, String> {
        let state = Self::deserialize(value).map_err(|e| e.to_string())?;
        if u32::from(state.status) != VIRTIO_NET_S_LINK_UP {
            return Err(format!(
                "link status {:#x}: this card only reports its link up",
                state.status
            ));
        }
        Ok(state)
    }
}
