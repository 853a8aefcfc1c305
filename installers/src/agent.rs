//! Building `vireo-agent` as a fully static binary for the guest.
//!
//! `cargo build --release -p vireo-guest-agent --bin vireo-agent --target
//! x86_64-unknown-linux-gnu` with `RUSTFLAGS=-C target-feature=+crt-static` in its own
//! target directory. With an explicit `--target`, RUSTFLAGS reach only the target's
//! crates, not build scripts and proc macros, which must stay dynamic host programs.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::elf::{self, ElfError};

pub const AGENT_PACKAGE: &str = "vireo-guest-agent";
pub const AGENT_BIN: &str = "vireo-agent";
pub const AGENT_TARGET: &str = "x86_64-unknown-linux-gnu";

#[derive(Debug, thiserror::Error)]
pub enum AgentBuildError {
    #[error("cannot run cargo ({})", cargo.to_string_lossy())]
    Spawn {
        cargo: OsString,
        #[source]
        source: std::io::Error,
    },
    #[error("building the static vireo-agent failed:\n{stderr}")]
    Build { stderr: String },
    #[error("cannot read the built agent {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the built agent {} is not a static x86-64 ELF", path.display())]
    NotElf {
        path: PathBuf,
        #[source]
        source: ElfError,
    },
    #[error(
        "the built agent {} is dynamically linked (has PT_INTERP): crt-static did not apply",
        path.display()
    )]
    Dynamic { path: PathBuf },
}

/// The static agent the `vireo` package installs beside `vireo-image`
/// (`<prefix>/bin/vireo-image` → `<prefix>/lib/vireo/vireo-agent`), if this program runs
/// from such an installation: there is no workspace to build it from there.
pub fn installed_agent() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let agent = exe.parent()?.parent()?.join("lib/vireo").join(AGENT_BIN);
    agent.is_file().then_some(agent)
}

/// The installed agent ([`installed_agent`]), checked to be static, or else one built from
/// the workspace ([`build_static_agent`]).
pub fn static_agent(workspace: &Path) -> Result<PathBuf, AgentBuildError> {
    match installed_agent() {
        Some(path) => check_static(&path).map(|()| path),
        None => build_static_agent(workspace),
    }
}

/// Builds the static agent from the workspace at `workspace` into
/// `<workspace>/target/agent-static` and returns the binary's path.
pub fn build_static_agent(workspace: &Path) -> Result<PathBuf, AgentBuildError> {
    let target_dir = workspace.join("target/agent-static");
    // Under `cargo run`/`cargo test`, CARGO names the cargo that is running us.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(&cargo)
        .args([
            "build",
            "--release",
            "-p",
            AGENT_PACKAGE,
            "--bin",
            AGENT_BIN,
        ])
        .args(["--target", AGENT_TARGET])
        .current_dir(workspace)
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        // The workspace's release profile keeps line tables; the guest needs no debug info
        // (it would triple the binary's share of the initramfs).
        .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo")
        // These would override RUSTFLAGS.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove(format!(
            "CARGO_TARGET_{}_RUSTFLAGS",
            AGENT_TARGET.to_uppercase().replace('-', "_")
        ))
        .output()
        .map_err(|source| AgentBuildError::Spawn {
            cargo: cargo.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(AgentBuildError::Build {
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    let path = target_dir
        .join(AGENT_TARGET)
        .join("release")
        .join(AGENT_BIN);
    check_static(&path)?;
    Ok(path)
}

/// Checks that `path` is an x86-64 ELF without a dynamic loader (`PT_INTERP`).
pub fn check_static(path: &Path) -> Result<(), AgentBuildError> {
    let bytes = fs::read(path).map_err(|source| AgentBuildError::Read {
        path: path.to_owned(),
        source,
    })?;
    match elf::has_interpreter(&bytes) {
        Ok(false) => Ok(()),
        Ok(true) => Err(AgentBuildError::Dynamic {
            path: path.to_owned(),
        }),
        Err(source) => Err(AgentBuildError::NotElf {
            path: path.to_owned(),
            source,
        }),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentDebError {
    #[error("cannot run {}", script.display())]
    Spawn {
        script: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("building the vireo-agent package failed:\n{stderr}")]
    Build { stderr: String },
}

/// The `vireo-agent` package for guests: the one the `vireo` package installs
/// (`<prefix>/share/vireo/vireo-agent.deb`), else one built from the workspace with
/// `installers/build-debs.sh agent` (into `target/debian`).
pub fn agent_deb() -> Result<PathBuf, AgentDebError> {
    let installed = std::env::current_exe().ok().and_then(|exe| {
        let deb = exe.parent()?.parent()?.join("share/vireo/vireo-agent.deb");
        deb.is_file().then_some(deb)
    });
    if let Some(deb) = installed {
        return Ok(deb);
    }
    let script = crate::workspace_root().join("installers/build-debs.sh");
    let out = Command::new(&script)
        .arg("agent")
        .output()
        .map_err(|source| AgentDebError::Spawn {
            script: script.clone(),
            source,
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    match stdout.lines().last() {
        Some(deb) if out.status.success() && Path::new(deb).is_file() => Ok(PathBuf::from(deb)),
        _ => Err(AgentDebError::Build {
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }),
    }
}
