//! The end-to-end test harness: builds the engine and the probe guest, runs guests under
//! `vireo-vmm` (and QEMU for comparisons), parses what they print, and records which
//! tests ran and which were skipped on this host (`.ci/run` reads that record).

pub mod demo_linux;
pub mod display;
pub mod engine;
pub mod in_process;
pub mod probe_guest;
pub mod qemu;
pub mod report;
pub mod temp;
pub mod vsock_host;
pub mod xvfb;

use std::path::PathBuf;

/// The workspace root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .canonicalize()
        .expect("the workspace root exists")
}
