//! Assembling the demo guest's initramfs: a gzip-compressed newc cpio archive.
//!
//! Layout: `/init` (assets/guest/demo-init.sh), busybox at `/bin/busybox` with a symlink
//! per applet at the path busybox itself lists (`busybox --list-full`),
//! `/usr/bin/vireo-agent`, the staged kernel modules under `/lib/modules/<kernel>/`, the
//! module load list `/etc/vireo/modules`, and `/dev/console` (the kernel opens it for
//! PID 1 before anything mounts devtmpfs).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cpio::{CpioError, CpioWriter};

/// The demo guest's `/init`.
pub const INIT_SCRIPT: &str = include_str!("../../assets/guest/demo-init.sh");

/// Mount points and other empty directories of the root file system.
const EMPTY_DIRS: &[&str] = &[
    "dev",
    "proc",
    "sys",
    "run",
    "tmp",
    "root",
    "mnt",
    "etc",
    "etc/vireo",
    "bin",
    "sbin",
    "usr",
    "usr/bin",
    "usr/sbin",
    "lib",
    "var",
];

/// `/dev/console`: character device 5:1.
const CONSOLE_MAJOR: u32 = 5;
const CONSOLE_MINOR: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot list busybox's applets with {}", busybox.display())]
    Applets {
        busybox: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Cpio(#[from] CpioError),
}

/// What goes into the initramfs.
pub struct Contents<'a> {
    /// The static busybox binary.
    pub busybox: &'a Path,
    /// The static `vireo-agent` binary.
    pub agent: &'a Path,
    /// A root holding `lib/modules/<kernel>/` (modules and their `modules.*` files).
    pub modules_root: &'a Path,
    /// Modules `/init` loads, in order.
    pub load_modules: &'a [String],
}

/// Busybox's applets as relative paths ("bin/sh", "usr/bin/awk").
pub fn busybox_applets(busybox: &Path) -> Result<Vec<String>, InitramfsError> {
    let applets_err = |source| InitramfsError::Applets {
        busybox: busybox.to_owned(),
        source,
    };
    let out = Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(applets_err)?;
    if !out.status.success() {
        return Err(applets_err(io::Error::other(
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().trim_start_matches('/').to_owned())
        // `linuxrc` at the root would shadow nothing useful; our /init is the init.
        .filter(|l| !l.is_empty() && l != "linuxrc" && l != "bin/busybox")
        .collect())
}

/// Writes the gzip-compressed archive to `out`.
pub fn write(contents: &Contents<'_>, out: impl Write) -> Result<(), InitramfsError> {
    let read = |path: &Path| {
        fs::read(path).map_err(|source| InitramfsError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let gz = flate2::write::GzEncoder::new(out, flate2::Compression::default());
    let mut cpio = CpioWriter::new(gz);

    for dir in EMPTY_DIRS {
        cpio.dir(dir, 0o755)?;
    }
    cpio.char_device("dev/console", 0o600, CONSOLE_MAJOR, CONSOLE_MINOR)?;
    cpio.file("init", 0o755, INIT_SCRIPT.as_bytes())?;

    cpio.file("bin/busybox", 0o755, &read(contents.busybox)?)?;
    for applet in busybox_applets(contents.busybox)? {
        // Relative targets keep the links valid wherever the tree is unpacked.
        let depth = applet.matches('/').count();
        cpio.symlink(&applet, &format!("{}bin/busybox", "../".repeat(depth)))?;
    }
    cpio.file("usr/bin/vireo-agent", 0o755, &read(contents.agent)?)?;

    let mut list = String::from("# Modules /init loads, written by vireo-image.\n");
    for module in contents.load_modules {
        list.push_str(module);
        list.push('\n');
    }
    cpio.file("etc/vireo/modules", 0o644, list.as_bytes())?;

    add_tree(&mut cpio, contents.modules_root, Path::new("lib"))?;

    cpio.finish()?.finish().map_err(CpioError::Io)?;
    Ok(())
}

/// Adds `root/rel` and everything below it (directories and regular files), sorted so
/// that the archive is reproducible. `lib` itself is already in the archive.
fn add_tree<W: Write>(
    cpio: &mut CpioWriter<W>,
    root: &Path,
    rel: &Path,
) -> Result<(), InitramfsError> {
    let dir = root.join(rel);
    let read_err = |source| InitramfsError::Read {
        path: dir.clone(),
        source,
    };
    let mut entries: Vec<_> = fs::read_dir(&dir)
        .map_err(read_err)?
        .collect::<Result<_, _>>()
        .map_err(read_err)?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let rel = rel.join(entry.file_name());
        let name = rel.to_string_lossy();
        let path = entry.path();
        let file_type = entry.file_type().map_err(|source| InitramfsError::Read {
            path: path.clone(),
            source,
        })?;
        if file_type.is_dir() {
            cpio.dir(&name, 0o755)?;
            add_tree(cpio, root, &rel)?;
        } else {
            let data = fs::read(&path).map_err(|source| InitramfsError::Read { path, source })?;
            cpio.file(&name, 0o644, &data)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The init script parses as busybox sh (`sh -n`).
    #[test]
    fn init_script_parses() {
        let shells: [&[&str]; 2] = [&["busybox", "sh", "-n"], &["sh", "-n"]];
        let dir = std::env::temp_dir().join(format!("vireo-init-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let script = dir.join("init");
        fs::write(&script, INIT_SCRIPT).unwrap();
        let mut checked = false;
        for shell in shells {
            let Ok(out) = Command::new(shell[0])
                .args(&shell[1..])
                .arg(&script)
                .output()
            else {
                println!("skipped `{}`: not installed", shell.join(" "));
                continue;
            };
            assert!(
                out.status.success(),
                "{}: {}",
                shell.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
            checked = true;
        }
        fs::remove_dir_all(&dir).unwrap();
        assert!(checked, "no shell to check the init script with");
        assert!(INIT_SCRIPT.starts_with("#!/bin/sh\n"));
        assert!(INIT_SCRIPT.contains("echo \"VIREO-GUEST USERSPACE READY\""));
        assert!(INIT_SCRIPT.contains("poweroff -f"));
    }

    /// The `vireo.run=` decoding of the init script, run by the host's sh.
    #[test]
    fn run_argument_decoding() {
        let start = INIT_SCRIPT.find("\trun=$(echo").unwrap();
        let end = INIT_SCRIPT[start..].find("\tsh -c").unwrap() + start;
        let decode = format!(
            "run=\"$1\"\n{}printf '%s' \"$run\"",
            &INIT_SCRIPT[start..end]
        );
        for (encoded, decoded) in [
            ("nproc", "nproc"),
            ("cat+/proc/meminfo", "cat /proc/meminfo"),
            ("echo+1%2B1=2+%25", "echo 1+1=2 %"),
        ] {
            // The guest's own shell: dash's printf %b knows no \xHH escapes, busybox's
            // does (installers/setup-host.sh installs busybox-static).
            let out = Command::new("busybox")
                .args(["sh", "-c", &decode, "sh", encoded])
                .output()
                .expect("busybox runs (installers/setup-host.sh installs busybox-static)");
            assert_eq!(String::from_utf8_lossy(&out.stdout), decoded);
        }
    }
}
