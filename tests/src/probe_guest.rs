//! Builds the probe guest (`tests/probe-guest/`) for the tests that boot it.
//!
//! The guest is its own cargo workspace with its own target, rustflags and link script
//! (`tests/probe-guest/.cargo/config.toml`, `build.rs`), so it is built by a nested
//! `cargo build` run from its directory, once per test process. Concurrent test
//! processes are serialized by cargo's lock on the shared target directory.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use crate::repo_root;

/// Builds the probe guest (release) if needed and returns the path of its ELF.
///
/// Panics with cargo's output if the build fails: every test that needs the guest
/// would fail anyway, and the compiler's message is what the reader needs.
pub fn probe_guest_elf() -> PathBuf {
    static ELF: OnceLock<PathBuf> = OnceLock::new();
    ELF.get_or_init(build).clone()
}

/// Environment variables cargo sets for the outer build or test run that would change
/// the nested build: its target, flags, wrappers, or which package it thinks it builds.
fn is_outer_build_setting(key: &OsStr) -> bool {
    let Some(key) = key.to_str() else {
        return false;
    };
    // Settings a user chose for all of cargo (registry, network, terminal) still apply.
    const KEEP: &[&str] = &[
        "CARGO_HOME",
        "CARGO_NET_",
        "CARGO_HTTP_",
        "CARGO_REGISTRIES_",
        "CARGO_TERM_",
    ];
    if KEEP.iter().any(|keep| key.starts_with(keep)) {
        return false;
    }
    key.starts_with("CARGO_")
        || key.starts_with("__CARGO")
        || matches!(
            key,
            "RUSTFLAGS"
                | "RUSTDOCFLAGS"
                | "RUSTC"
                | "RUSTDOC"
                | "RUSTC_WRAPPER"
                | "RUSTC_WORKSPACE_WRAPPER"
                | "RUSTC_LINKER"
                | "TARGET"
                | "HOST"
                | "OUT_DIR"
                | "PROFILE"
                | "OPT_LEVEL"
                | "DEBUG"
        )
}

fn build() -> PathBuf {
    let root = repo_root();
    let dir = root.join("tests").join("probe-guest");
    let target_dir = root.join("target").join("probe-guest");
    // The cargo that runs these tests, so the guest builds with the same toolchain.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(&dir)
        .arg("build")
        .arg("--release")
        .arg("--manifest-path")
        .arg(dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    for (key, _) in std::env::vars_os() {
        if is_outer_build_setting(&key) {
            command.env_remove(&key);
        }
    }
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo to build the probe guest: {e}"));
    assert!(
        output.status.success(),
        "building the probe guest failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let elf = target_dir
        .join("x86_64-unknown-linux-gnu")
        .join("release")
        .join("vireo-probe-guest");
    assert!(
        elf.is_file(),
        "the probe guest build did not produce {}",
        elf.display()
    );
    elf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outer_build_settings_are_dropped_and_user_settings_kept() {
        for key in [
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_TARGET",
            "CARGO_ENCODED_RUSTFLAGS",
            "RUSTFLAGS",
            "RUSTC_WRAPPER",
            "CARGO_PKG_NAME",
            "CARGO_MANIFEST_DIR",
        ] {
            assert!(is_outer_build_setting(OsStr::new(key)), "{key}");
        }
        for key in [
            "CARGO_HOME",
            "CARGO_NET_OFFLINE",
            "PATH",
            "HOME",
            "RUSTUP_TOOLCHAIN",
        ] {
            assert!(!is_outer_build_setting(OsStr::new(key)), "{key}");
        }
    }
}
