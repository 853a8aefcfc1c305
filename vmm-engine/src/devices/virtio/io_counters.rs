//! Traffic counters a device keeps for the control socket's `stats`: bytes and requests
//! (frames, for a network card) in each direction since the VM started. The worker
//! thread adds with relaxed atomics; readers get a snapshot. They survive device resets
//! (the device owns them, not its worker), so a guest rebooting does not zero them.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

#[derive(Debug, Default)]
pub struct IoCounters {
    read_bytes: AtomicU64,
    read_requests: AtomicU64,
    write_bytes: AtomicU64,
    write_requests: AtomicU64,
}

/// The counters at one moment. For a disk, read is guest ← disk; for a network card,
/// read is received (host → guest) and write transmitted (guest → host).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoCountersSnapshot {
    pub read_bytes: u64,
    pub read_requests: u64,
    pub write_bytes: u64,
    pub write_requests: u64,
}

impl IoCounters {
    pub fn read(&self, bytes: u64) {
        self.read_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.read_requests.fetch_add(1, Ordering::Relaxed);
    }

    pub fn write(&self, bytes: u64) {
        self.write_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.write_requests.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> IoCountersSnapshot {
        IoCountersSnapshot {
            read_bytes: self.read_bytes.load(Ordering::Relaxed),
            read_requests: self.read_requests.load(Ordering::Relaxed),
            write_bytes: self.write_bytes.load(Ordering::Relaxed),
            write_requests: self.write_requests.load(Ordering::Relaxed),
        }
    }
}
