//! Ran or skipped: every end-to-end test says which, in a line `.ci/run` can check and a
//! person can see. Skip lines go straight to stderr (past the test harness's capture)
//! so they are loud in every run.

use std::io::Write;
use std::path::PathBuf;

use crate::repo_root;

/// Where outcomes are appended, one line each: `RAN <test>` or `SKIPPED <test>: <why>`.
pub fn results_file() -> PathBuf {
    std::env::var_os("VIREO_E2E_RESULTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/e2e-results.log"))
}

fn append(line: &str) {
    let path = results_file();
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    {
        // One write per line: `writeln!` may split it into several, and the test threads
        // of a binary append at once (a line once landed in the middle of another).
        let _ = f.write_all(format!("{line}\n").as_bytes());
    }
}

/// Records that `test` ran for real.
pub fn ran(test: &str) {
    append(&format!("RAN {test}"));
}

/// Records and announces that `test` could not run on this host.
pub fn skipped(test: &str, why: &str) {
    append(&format!("SKIPPED {test}: {why}"));
    let _ = writeln!(std::io::stderr(), "\n*** SKIPPED {test}: {why} ***\n");
}

/// Whether this host has a KVM device at all.
pub fn host_has_kvm() -> bool {
    std::path::Path::new("/dev/kvm").exists()
}

/// For tests that need KVM: records `test` as ran and returns true, or skips it loudly
/// on a host without `/dev/kvm` and returns false.
pub fn require_kvm(test: &str) -> bool {
    if host_has_kvm() {
        ran(test);
        true
    } else {
        skipped(test, "no /dev/kvm on this host");
        false
    }
}

/// For tests that boot a stock Linux to userspace: they need hardware virtualization
/// (on a PVM host the kernel is interpreted and does not finish booting).
pub fn require_hardware_kvm(test: &str) -> bool {
    if host_has_kvm() && crate::engine::host_runs_linux() {
        ran(test);
        true
    } else {
        skipped(
            test,
            "PVM host: booting a stock kernel needs hardware virtualization (VT-x/AMD-V)",
        );
        false
    }
}
