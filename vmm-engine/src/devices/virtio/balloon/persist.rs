//! What a saved balloon keeps besides its queues: the configuration space (the host's
//! target, the driver's `actual` and poison value), the guest's last statistics and the
//! host-side counters, so that a `BalloonHandle` reads the same after a restore.
//!
//! The statsq buffer the device holds is not in here: it stays in the queue (see
//! `BalloonWorker::positions`) and the restored device takes it again.

use serde::{Deserialize, Serialize};

use super::{BalloonCounters, BalloonStats};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonState {
    /// Pages the host wants in the balloon.
    pub num_pages: u32,
    /// Pages in the balloon, as the driver last said.
    pub actual: u32,
    pub poison_val: u32,
    /// The guest's last statistics report, if it sent one.
    pub last_stats: Option<BalloonStats>,
    pub counters: BalloonCounters,
}

impl BalloonState {
    /// A saved state as untrusted input. Every field's whole range is a value the
    /// device could have held, so parsing is all the checking there is.
    pub fn parse(value: &serde_json::Value) -> Result<Self, String> {
        Self::deserialize(value).map_err(|e| e.to_string())
    }
}
