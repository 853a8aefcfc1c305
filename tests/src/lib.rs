//! The end-to-end test harness: builds the engine and the probe guest, runs guests under
//! `vireo-vmm` (and QEMU for comparisons), parses what they print, and records which
//! tests ran and which were skipped on this host (`.ci/run` reads that record).

pub mod debian12;
pub mod demo_linux;
pub mod display;
pub mod engine;
pub mod in_process;
pub mod linux_early;
pub mod packaging;
pub mod probe_guest;
pub mod qemu;
pub mod report;
pub mod temp;
pub mod vsock_host;
pub mod xvfb;

use std::path::PathBuf;

/// A benchmark's numeric setting from the environment (`VIREO_BENCH_*`), or `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The workspace root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .canonicalize()
        .expect("the workspace root exists")
}

/// Builds binary `bin` of workspace package `package` (release, as benchmarks run) once
/// per process and returns its path.
pub fn release_binary(package: &str, bin: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let path = repo_root().join("target/release").join(bin);
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if !built.iter().any(|b| b == bin) {
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--release", "-p", package, "--bin", bin])
            .current_dir(repo_root())
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building {bin} failed");
        built.push(bin.to_owned());
    }
    path
}
