//! Choosing the kernel modules that go into the initramfs.
//!
//! The kernel package ships no `modules.dep` (its postinst runs `depmod`), so the image
//! builder runs `depmod -b` once on the unpacked package. From that `modules.dep` we take
//! the wanted modules and their dependencies, plus the modules named by their soft
//! dependencies (`modules.softdep`, e.g. ext4's `crypto-crc32c`, resolved through
//! `modules.alias`), so that the kernel's on-demand `request_module` finds them. Modules
//! built into the kernel (`modules.builtin`) are skipped. The subset is copied into a
//! staging root on which `depmod -b` runs again, producing the `modules.*` files for it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::apt::{self, AptError};

/// The modules the demo guest loads at boot: Vireo's virtio devices, and what later
/// features need (vsock for the agent, FUSE for shared folders, ext4 for disks, evdev
/// so that virtio-input devices show up as /dev/input/event*, the ACPI power button).
pub const DEMO_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_console",
    "virtio_rng",
    "virtio_balloon",
    "virtio_input",
    "evdev",
    "button",
    "virtio_gpu",
    "vsock",
    "vmw_vsock_virtio_transport",
    "fuse",
    "ext4",
];

#[derive(Debug, thiserror::Error)]
pub enum ModulesError {
    #[error("kernel {kernel} has no module {module} (neither a .ko nor built in)")]
    Unknown { kernel: String, module: String },
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tool(#[from] AptError),
}

/// Module names are compared with `-` and `_` taken as the same, like modprobe does.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// The module name of a path in modules.dep ("kernel/drivers/char/hw_random/virtio-rng.ko").
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file
        .strip_suffix(".ko")
        .or_else(|| file.strip_suffix(".ko.xz"))
        .or_else(|| file.strip_suffix(".ko.zst"))
        .or_else(|| file.strip_suffix(".ko.gz"))
        .unwrap_or(file);
    normalize(stem)
}

/// What one kernel's `modules.*` files say.
#[derive(Debug, Default)]
pub struct ModuleIndex {
    /// Module name → (path relative to the modules directory, dependency names).
    pub modules: BTreeMap<String, (String, Vec<String>)>,
    pub builtin: BTreeSet<String>,
    /// Module name → names (or aliases) in its softdep `pre:`/`post:` lists.
    pub softdeps: BTreeMap<String, Vec<String>>,
    /// Alias pattern → module names (only exact aliases, no wildcards, are used).
    pub aliases: BTreeMap<String, Vec<String>>,
}

impl ModuleIndex {
    /// Parses the texts of `modules.dep`, `modules.builtin`, `modules.softdep` and
    /// `modules.alias`.
    pub fn parse(dep: &str, builtin: &str, softdep: &str, alias: &str) -> Self {
        let mut index = ModuleIndex::default();
        for line in dep.lines() {
            let Some((path, deps)) = line.split_once(':') else {
                continue;
            };
            let deps = deps.split_whitespace().map(module_name).collect();
            index
                .modules
                .insert(module_name(path), (path.to_owned(), deps));
        }
        index.builtin = builtin
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(module_name)
            .collect();
        for line in softdep.lines() {
            let mut words = line.split_whitespace();
            if words.next() != Some("softdep") {
                continue;
            }
            let Some(module) = words.next() else { continue };
            let names = words
                .filter(|w| *w != "pre:" && *w != "post:")
                .map(str::to_owned)
                .collect();
            index.softdeps.insert(normalize(module), names);
        }
        for line in alias.lines() {
            let mut words = line.split_whitespace();
            if let (Some("alias"), Some(pattern), Some(module)) =
                (words.next(), words.next(), words.next())
            {
                index
                    .aliases
                    .entry(pattern.to_owned())
                    .or_default()
                    .push(normalize(module));
            }
        }
        index
    }

    /// Reads the index of an unpacked kernel's modules directory (after `depmod`).
    pub fn load(modules_dir: &Path) -> Result<Self, ModulesError> {
        let read = |name: &str| {
            let path = modules_dir.join(name);
            fs::read_to_string(&path).map_err(|source| ModulesError::Read { path, source })
        };
        Ok(Self::parse(
            &read("modules.dep")?,
            &read("modules.builtin")?,
            &read("modules.softdep").unwrap_or_default(),
            &read("modules.alias").unwrap_or_default(),
        ))
    }

    /// Resolves `wanted` to the set of module files to ship.
    pub fn select(&self, kernel: &str, wanted: &[&str]) -> Result<Selection, ModulesError> {
        let mut selection = Selection::default();
        let mut stack: Vec<String> = Vec::new();
        for name in wanted {
            let name = normalize(name);
            if self.builtin.contains(&name) {
                selection.builtin.push(name);
            } else if self.modules.contains_key(&name) {
                selection.load.push(name.clone());
                stack.push(name);
            } else {
                return Err(ModulesError::Unknown {
                    kernel: kernel.to_owned(),
                    module: name,
                });
            }
        }
        let mut seen = BTreeSet::new();
        while let Some(name) = stack.pop() {
            if !seen.insert(name.clone()) {
                continue;
            }
            let Some((path, deps)) = self.modules.get(&name) else {
                continue;
            };
            selection.files.insert(path.clone());
            stack.extend(deps.iter().cloned());
            for soft in self.softdeps.get(&name).into_iter().flatten() {
                let soft_norm = normalize(soft);
                if self.modules.contains_key(&soft_norm) {
                    stack.push(soft_norm);
                } else {
                    for target in self.aliases.get(soft.as_str()).into_iter().flatten() {
                        stack.push(target.clone());
                    }
                }
            }
        }
        Ok(selection)
    }
}

/// The modules chosen for the image.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Selection {
    /// Wanted modules that are loadable, in the order asked: what `/init` modprobes.
    pub load: Vec<String>,
    /// Wanted modules that are built into the kernel.
    pub builtin: Vec<String>,
    /// Every module file to ship, relative to the modules directory: the wanted ones,
    /// their dependencies and soft dependencies.
    pub files: BTreeSet<String>,
}

/// Runs `depmod -b <root> <kernel>` to (re)generate the `modules.*` files.
pub fn depmod(root: &Path, kernel: &str) -> Result<(), AptError> {
    apt::run(
        Command::new("depmod").arg("-b").arg(root).arg(kernel),
        "depmod",
        "kmod",
    )
    .map(drop)
}

/// Copies the selected modules of the unpacked kernel at `kernel_tree` into a staging
/// root at `staging` (`lib/modules/<kernel>/...`) and runs `depmod` on it.
pub fn stage(
    kernel_tree: &Path,
    kernel: &str,
    selection: &Selection,
    staging: &Path,
) -> Result<(), ModulesError> {
    let src_dir = kernel_tree.join("lib/modules").join(kernel);
    let dst_dir = staging.join("lib/modules").join(kernel);
    let copy = |rel: &str| -> Result<(), ModulesError> {
        let (src, dst) = (src_dir.join(rel), dst_dir.join(rel));
        if let Some(parent) = dst.parent() {
            fs::create_dir_all(parent).map_err(|source| ModulesError::Write {
                path: parent.to_owned(),
                source,
            })?;
        }
        fs::copy(&src, &dst).map_err(|source| ModulesError::Read { path: src, source })?;
        Ok(())
    };
    for file in &selection.files {
        copy(file)?;
    }
    // depmod keeps builtin modules and the load order from these.
    for file in [
        "modules.builtin",
        "modules.builtin.modinfo",
        "modules.order",
    ] {
        copy(file)?;
    }
    depmod(staging, kernel)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/lib/crc16.ko:
kernel/fs/mbcache.ko:
kernel/fs/jbd2/jbd2.ko:
kernel/crypto/crc32c_generic.ko:
kernel/arch/x86/crypto/crc32c-intel.ko:
kernel/fs/fuse/fuse.ko:
";

    fn index() -> ModuleIndex {
        ModuleIndex::parse(
            DEP,
            "kernel/drivers/tty/serial/8250/8250.ko\nkernel/fs/fuse/fuse.ko\n",
            "# comment\nsoftdep ext4 pre: crypto-crc32c\n",
            "alias crypto-crc32c crc32c_generic\nalias crypto-crc32c crc32c_intel\nalias pci:v* virtio_pci\n",
        )
    }

    #[test]
    fn resolves_dependencies_softdeps_and_dashes() {
        let sel = index()
            .select("6.1.0-test", &["virtio_pci", "virtio_rng", "ext4", "8250"])
            .unwrap();
        assert_eq!(sel.load, ["virtio_pci", "virtio_rng", "ext4"]);
        assert_eq!(sel.builtin, ["8250"]);
        let files: Vec<_> = sel.files.iter().map(String::as_str).collect();
        assert_eq!(
            files,
            [
                "kernel/arch/x86/crypto/crc32c-intel.ko",
                "kernel/crypto/crc32c_generic.ko",
                "kernel/drivers/char/hw_random/virtio-rng.ko",
                "kernel/drivers/virtio/virtio.ko",
                "kernel/drivers/virtio/virtio_pci.ko",
                "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/fs/ext4/ext4.ko",
                "kernel/fs/jbd2/jbd2.ko",
                "kernel/fs/mbcache.ko",
                "kernel/lib/crc16.ko",
            ]
        );
    }

    #[test]
    fn builtin_wins_and_unknown_is_an_error() {
        let sel = index().select("k", &["fuse"]).unwrap();
        assert!(sel.load.is_empty() && sel.files.is_empty());
        assert_eq!(sel.builtin, ["fuse"]);
        let err = index().select("6.1.0-test", &["9p"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernel 6.1.0-test has no module 9p (neither a .ko nor built in)"
        );
    }

    #[test]
    fn module_names() {
        assert_eq!(
            module_name("kernel/drivers/gpu/drm/virtio/virtio-gpu.ko"),
            "virtio_gpu"
        );
        assert_eq!(module_name("kernel/fs/ext4/ext4.ko.xz"), "ext4");
    }
}
